"""Model loading: frozen .pb, SavedModel, .keras, .h5 and in-memory Keras to one frozen graph."""
from __future__ import annotations

import numpy as np
import pytest

from amct_targets.errors import ModelError
from amct_targets.graph.load import VARIABLE_OPS, load_model, parse_input_shapes


@pytest.fixture(scope="module")
def keras_model():
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2), name="pixels")
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    bn = model.layers[2]
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 4).astype("float32"), rng.normal(0, .2, 4).astype(
        "float32"), rng.normal(0, .2, 4).astype("float32"), rng.uniform(.5, 2, 4).astype("float32")])
    return model


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(2).random((5, 6, 6, 2), dtype=np.float32)


def run_model(model, x):
    import tensorflow as tf

    def _import():
        tf.compat.v1.import_graph_def(model.graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    fn = wrapped.prune(wrapped.graph.get_tensor_by_name(f"{model.inputs[0].name}:0"),
                       wrapped.graph.get_tensor_by_name(model.outputs[0]))
    return fn(tf.constant(x)).numpy()


def assert_frozen_and_equal(model, keras_model, x):
    assert not [n for n in model.graph_def.node if n.op in VARIABLE_OPS]
    assert [s.name for s in model.inputs] == ["pixels"]
    assert model.inputs[0].shape == (None, 6, 6, 2)
    assert model.inputs[0].dtype == "float32"
    expected = keras_model(x, training=False).numpy()
    np.testing.assert_allclose(run_model(model, x), expected, rtol=1e-5, atol=1e-6)


def test_in_memory_keras_model(keras_model, sample):
    assert_frozen_and_equal(load_model(keras_model), keras_model, sample)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_files(tmp_path, keras_model, sample, suffix):
    path = tmp_path / f"model{suffix}"
    keras_model.save(path)
    model = load_model(path)
    assert model.name == "model"
    assert_frozen_and_equal(model, keras_model, sample)


def test_saved_model_folder(tmp_path, keras_model, sample):
    keras_model.export(tmp_path / "sm", verbose=False)
    assert_frozen_and_equal(load_model(tmp_path / "sm"), keras_model, sample)


def test_frozen_pb_round_trip(tmp_path, keras_model, sample):
    frozen = load_model(keras_model)
    path = tmp_path / "m.pb"
    path.write_bytes(frozen.serialize())
    again = load_model(path)
    assert again.outputs == frozen.outputs
    assert_frozen_and_equal(again, keras_model, sample)


def test_grappler_canonicalization_turns_keras_batchnorm_into_constants(keras_model):
    model = load_model(keras_model)
    ops = [n.op for n in model.graph_def.node]
    assert "Rsqrt" not in ops and "ReadVariableOp" not in ops
    assert ops.count("Mul") == 1 and ops.count("AddV2") == 1


def test_outputs_flag_selects_and_validates(tmp_path, keras_model):
    frozen = load_model(keras_model)
    path = tmp_path / "m.pb"
    path.write_bytes(frozen.serialize())
    relu = next(n.name for n in frozen.graph_def.node if n.op == "Relu")
    assert load_model(path, outputs=[relu]).outputs == (f"{relu}:0",)
    with pytest.raises(ModelError, match="output 'nope' is not a node"):
        load_model(path, outputs=["nope"])


def test_input_shapes_are_parsed_and_checked(keras_model):
    assert parse_input_shapes("pixels:4,6,6,2;b:1") == {"pixels": (4, 6, 6, 2), "b": (1,)}
    model = load_model(keras_model, input_shapes={"pixels": (4, 6, 6, 2)})
    assert model.inputs[0].shape == (4, 6, 6, 2)
    with pytest.raises(ModelError, match="does not fit input 'pixels'"):
        load_model(keras_model, input_shapes={"pixels": (4, 7, 6, 2)})
    with pytest.raises(ModelError, match="inputs are"):
        load_model(keras_model, input_shapes={"other": (1, 6, 6, 2)})
    for bad in ("pixels", "pixels:a,b", "pixels:0,6,6,2"):
        with pytest.raises(ModelError, match="--input-shape"):
            parse_input_shapes(bad)


def test_corrupt_pb_is_one_clear_error(tmp_path):
    path = tmp_path / "broken.pb"
    path.write_bytes(b"\x00\xffthis is not a graph\x13\x37" * 10)
    with pytest.raises(ModelError, match=f"{path}: not a TensorFlow GraphDef"):
        load_model(path)


def test_non_frozen_pb_is_refused_naming_the_variable(tmp_path):
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        w = tf.compat.v1.get_variable("weights", [3, 2])
        tf.matmul(x, w, name="y")
    path = tmp_path / "unfrozen.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(ModelError, match="not frozen: node 'weights' is a variable op"):
        load_model(path)


def test_unreadable_saved_model_is_one_clear_error(tmp_path):
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable SavedModel"):
        load_model(folder)
    with pytest.raises(ModelError, match="not a SavedModel"):
        load_model(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "absent.pb")
