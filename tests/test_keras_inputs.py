"""Multi-input and dict-input Keras models: loaded from memory, `.keras` and SavedModel with
their inputs named (dict key or Input name), calibrated from an .npz keyed by input name,
integer inputs (token ids) fed as integers, never quantized, and the INT8 model close to float."""
from __future__ import annotations

import numpy as np
import pytest

import amct_targets as at
from amct_targets.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")


def two_input_model():
    import keras

    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 3), name="image")
    extra = keras.Input((6,), name="extra")
    x = keras.layers.Conv2D(8, 3, activation="relu")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    y = keras.layers.Dense(8, activation="relu")(extra)
    out = keras.layers.Dense(4)(keras.layers.Concatenate()([x, y]))
    return keras.Model([image, extra], out, name="two_inputs")


def dict_input_model():
    """keras-hub's backbone shape: a dict of int token ids and an int mask in, float out."""
    import keras

    keras.utils.set_random_seed(4)
    token_ids = keras.Input((6,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((6,), dtype="int32", name="padding_mask")
    x = keras.layers.Embedding(50, 16)(token_ids)
    x = x * keras.ops.expand_dims(keras.ops.cast(padding_mask, "float32"), -1)
    x = keras.layers.Dense(16, activation="relu")(x)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, out,
                       name="dict_inputs")


def _data(kind: str, samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "two":
        return {"image": rng.uniform(0, 1, (samples, 8, 8, 3)).astype(np.float32),
                "extra": rng.normal(0, 1, (samples, 6)).astype(np.float32)}
    mask = (rng.uniform(size=(samples, 6)) < 0.8).astype(np.int64)
    return {"token_ids": rng.integers(0, 50, (samples, 6)),  # int64 as numpy makes them
            "padding_mask": mask}


def _source(keras_model, how: str, tmp_path):
    if how == "memory":
        return keras_model
    if how == "keras":
        path = tmp_path / f"{keras_model.name}.keras"
        keras_model.save(path)
        return path
    path = tmp_path / f"{keras_model.name}_saved"
    keras_model.export(str(path), verbose=False)
    return path


@pytest.mark.parametrize("how", ["memory", "keras", "saved_model"])
@pytest.mark.parametrize("kind", ["two", "dict"])
def test_multi_and_dict_inputs_build_with_named_npz(kind, how, tmp_path):
    from amct_targets.graph.load import placeholder_specs, read_graph_def

    keras_model = two_input_model() if kind == "two" else dict_input_model()
    calib, held_out = _data(kind, 32, 0), _data(kind, 16, 1)
    calib_path = tmp_path / "calib.npz"
    np.savez(calib_path, **calib)
    reports = at.build(_source(keras_model, how, tmp_path), "ascend310", calib=calib_path,
                       output_dir=tmp_path / "out")
    report = reports["ascend310"]
    pb = tmp_path / "out" / "ascend310" / report["artifacts"]["pb"]
    graph_def = read_graph_def(pb, importable=False)
    specs = {s.name: s.dtype for s in placeholder_specs(graph_def)}
    assert specs == ({"image": "float32", "extra": "float32"} if kind == "two"
                     else {"token_ids": "int32", "padding_mask": "int32"})
    quant_inputs = {n.input[0].split(":")[0] for n in graph_def.node if n.op == "AscendQuant"}
    assert not quant_inputs & set(specs) or kind == "two"   # int inputs never quantized
    assert len([n for n in graph_def.node if n.op == "AscendDequant"]) == \
        (3 if kind == "two" else 2)
    simulate = at.load_simulation(pb)
    quantized = np.asarray(next(iter(simulate(held_out).values())))
    reference = np.asarray(keras_model({k: v for k, v in held_out.items()} if kind == "dict"
                                       else [held_out["image"], held_out["extra"]]))
    noise = np.sum((quantized - reference) ** 2)
    sqnr = 10 * np.log10(np.sum(reference ** 2) / noise)
    assert sqnr > 25.0, sqnr


def test_fractional_data_for_an_integer_input_is_refused(tmp_path):
    data = _data("dict", 4, 0)
    data["token_ids"] = data["token_ids"] + 0.5
    with pytest.raises(ConfigError, match="token_ids.*int32 but the data holds fractions"):
        at.build(dict_input_model(), "ascend310", calib=data, output_dir=tmp_path / "out")


def test_npz_keys_must_name_every_input(tmp_path):
    data = _data("two", 4, 0)
    data["image_typo"] = data.pop("image")
    with pytest.raises(ConfigError, match=r"missing \['image'\]"):
        at.build(two_input_model(), "ascend310", calib=data, output_dir=tmp_path / "out")


def _dynamic_projection_model():
    """keras-hub's projection: EinsumDense `abc,cde->abde` on (batch, tokens, dim), both dynamic."""
    import keras

    keras.utils.set_random_seed(5)
    tokens = keras.Input((None, 16), name="tokens")
    x = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 8))(tokens)
    return keras.Model(tokens, keras.layers.Reshape((-1, 16))(x), name="projection")


def test_einsum_projection_becomes_matmul_once_input_shape_fixes_the_tokens():
    from amct_targets.graph.load import load_model
    from amct_targets.graph.run import GraphRunner
    from amct_targets.hooks.manager import default_ops

    keras_model = _dynamic_projection_model()
    dynamic = load_model(keras_model)
    assert [n.op for n in dynamic.graph_def.node].count("Einsum") == 1
    assert any("two dynamic sizes" in n for n in dynamic.notes)
    fixed = load_model(keras_model, input_shapes={"tokens": (1, 6, 16)})
    ops = [n.op for n in fixed.graph_def.node]
    assert "Einsum" not in ops and ops.count("MatMul") == 1
    x = np.random.default_rng(0).normal(size=(5, 6, 16)).astype(np.float32)  # batch free
    got = GraphRunner(fixed.graph_def, fixed.input_names, list(fixed.outputs),
                      ops=default_ops())(x)[0]
    np.testing.assert_allclose(got, np.asarray(keras_model(x)), rtol=1e-5, atol=1e-5)


def test_an_einsum_left_in_the_graph_is_reported_float_with_its_reason(tmp_path):
    keras_model = _dynamic_projection_model()
    calib = np.random.default_rng(0).normal(size=(4, 6, 16)).astype(np.float32)
    report = at.build(keras_model, "ascend310", calib=calib, output_dir=tmp_path / "out",
                      input_shapes={"tokens": (1, 6, 16)})["ascend310"]
    quantize = next(p for p in report["passes"] if p["name"] == "quantize")
    assert [x["op"] for x in quantize["layers"] if x["status"] == "quantized"] == ["MatMul"]
    from amct_targets.graph.load import load_model
    from amct_targets.quant.layers import find_layers

    model = load_model(keras_model)
    _, skipped = find_layers(model, at.load_target("ascend310"))
    assert [(s.op, "two dynamic sizes" in s.reason and "--input-shape" in s.reason)
            for s in skipped] == [("Einsum", True)]


def test_input_rescaling_is_not_reported_as_an_unfolded_batchnorm():
    """Keras Applications' Rescaling(scale, offset) on the image is x * c + d on a Placeholder:
    preprocessing, not a BatchNorm, so fold_bn lists nothing (it listed it as 'left')."""
    import keras

    from amct_targets.graph.fold_bn import fold_batch_norm
    from amct_targets.graph.load import load_model

    keras.utils.set_random_seed(6)
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(image)
    x = keras.layers.Conv2D(4, 3)(x)
    model = load_model(keras.Model(image, x))
    _, folded, left = fold_batch_norm(model)
    assert (folded, left) == ([], [])


def test_a_sequential_model_with_an_input_that_was_never_called_loads():
    """Keras 3: `.input` raises on a Sequential never called; its Input layer still names it."""
    import keras

    from amct_targets.graph.load import load_model

    keras.utils.set_random_seed(0)
    seq = keras.Sequential([keras.Input((8, 8, 1), name="image"), keras.layers.Conv2D(4, 3),
                            keras.layers.Flatten(), keras.layers.Dense(3)], name="seq")
    model = load_model(seq)
    assert [s.name for s in model.inputs] == ["image"]
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    from models import run_graph

    (got,) = run_graph(model.graph_def, {"image": x}, model.outputs)
    assert np.max(np.abs(got - np.asarray(seq(x)))) < 1e-5
