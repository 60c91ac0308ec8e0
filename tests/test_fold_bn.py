"""fold_bn: BatchNorm folded into the conv / matmul before it, checked on real TF graphs."""
from __future__ import annotations

import numpy as np
import pytest

from amct_targets.graph.load import load_model, model_from_graph_def
from amct_targets.passes.base import PassContext, PassRegistry
from amct_targets.graph.fold_bn import fold_batch_norm
from amct_targets.hooks.manager import default_ops
from amct_targets.passes.fold_bn import FoldBatchNorm, register_passes
from models import (bn_nodes, random_feeds, randomize_bn, relative_error, run_graph,
                          shared_weight_graph, small_bn_cnn, tf1_fused_bn_graph)

MAX_REL_ERROR = 1e-5


@pytest.fixture(scope="module")
def small_cnn():
    keras_model = small_bn_cnn(seed=0)
    return keras_model, load_model(keras_model)


@pytest.fixture(scope="module")
def tf1_model():
    return model_from_graph_def(tf1_fused_bn_graph(seed=0), outputs=["output"], where="tf1")


def _keras_bn_layers(keras_model) -> int:
    import keras

    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in keras_model.layers)


def test_small_cnn_folds_all_four_bns_within_1e5(small_cnn):
    keras_model, model = small_cnn
    folded_model, folded, left = fold_batch_norm(model)
    assert len(folded) == 4 and left == []
    assert len(bn_nodes(model.graph_def)) == 4
    assert bn_nodes(folded_model.graph_def) == []
    ops = [n.op for n in folded_model.graph_def.node]
    assert ops.count("BiasAdd") == 4 and "Mul" not in ops and "AddV2" not in ops
    op_of = {n.name: n.op for n in folded_model.graph_def.node}
    assert {op_of[r["into"]] for r in folded} == {"Conv2D", "DepthwiseConv2dNative", "MatMul"}
    feeds = random_feeds(model, batch=8, seed=1)
    assert relative_error(model, folded_model, feeds) <= MAX_REL_ERROR
    # Against Keras itself, so the reference does not depend on how TF runs the graph.
    (image,) = feeds.values()
    expected = np.asarray(keras_model(image, training=False))
    (got,) = run_graph(folded_model.graph_def, feeds, folded_model.outputs)
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) <= MAX_REL_ERROR


def test_tf1_fused_bn_v3_folds_two_and_leaves_the_one_on_the_input(tf1_model):
    folded_model, folded, left = fold_batch_norm(tf1_model)
    assert [(r["layer"], r["into"], r["kind"]) for r in folded] == [
        ("bn_conv", "conv", "FusedBatchNormV3"), ("bn_dw", "dw", "FusedBatchNormV3")]
    assert len(left) == 1 and left[0]["layer"] == "bn_in"
    assert "Placeholder 'input'" in left[0]["reason"]
    assert bn_nodes(folded_model.graph_def) == ["bn_in"]
    nodes = {n.name: n for n in folded_model.graph_def.node}
    assert nodes["bn_conv"].op == "BiasAdd" and list(nodes["bn_conv"].input)[0] == "conv"
    assert "conv_bias" not in nodes  # the old bias went into the folded one
    assert nodes["conv_w"].attr["dtype"].type == 1  # DT_FLOAT kept
    feeds = random_feeds(tf1_model, seed=2)
    assert relative_error(tf1_model, folded_model, feeds) <= MAX_REL_ERROR


def test_bn_that_is_a_graph_output_keeps_its_name():
    model = model_from_graph_def(tf1_fused_bn_graph(seed=3), outputs=["bn_dw"], canonical=False)
    folded_model, folded, _ = fold_batch_norm(model)
    assert [r["layer"] for r in folded] == ["bn_conv", "bn_dw"]
    assert folded_model.outputs == ("bn_dw:0",)
    assert relative_error(model, folded_model, random_feeds(model, seed=3)) <= MAX_REL_ERROR


def test_input_model_is_not_mutated_and_folding_is_deterministic(small_cnn, tf1_model):
    for model in (small_cnn[1], tf1_model):
        before = model.serialize()
        first, _, _ = fold_batch_norm(model)
        second, _, _ = fold_batch_norm(model)
        assert model.serialize() == before
        assert first.serialize() == second.serialize() != before


def test_shared_weights_are_left_alone_with_reason():
    model = model_from_graph_def(shared_weight_graph(seed=0), outputs=["output"])
    folded_model, folded, left = fold_batch_norm(model)
    assert folded == []
    assert [r["layer"] for r in left] == ["bn_a", "bn_b"]
    assert all("'shared_w' is shared by 2 ops" in r["reason"] for r in left)
    assert folded_model.serialize() == model.serialize()


@pytest.mark.parametrize("attr, value, reason", [
    ("is_training", True, "is_training=True"),
    ("is_training", None, "is_training=True"),  # stripped attr: the op default is true
    ("data_format", b"NCHW", "data_format NCHW"),
])
def test_training_or_nchw_bn_is_left_alone(attr, value, reason):
    graph_def = tf1_fused_bn_graph(seed=0)
    bn = next(n for n in graph_def.node if n.name == "bn_conv")
    if value is None:
        del bn.attr[attr]
    elif isinstance(value, bool):
        bn.attr[attr].b = value
    else:
        bn.attr[attr].s = value
    model = model_from_graph_def(graph_def, outputs=["output"], canonical=False)
    _, folded, left = fold_batch_norm(model)
    assert [r["layer"] for r in folded] == ["bn_dw"]
    assert [r["layer"] for r in left] == ["bn_in", "bn_conv"]
    assert reason in left[1]["reason"]


def _elementwise_graph():
    """Branches that exercise the lone Mul / Add forms, operand order and refusals."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    const = lambda *shape, name=None: tf.constant(  # noqa: E731
        rng.uniform(0.5, 1.5, shape).astype(np.float32), name=name)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 6, 6, 3], name="input")
        conv = lambda name: tf.nn.conv2d(x, const(3, 3, 3, 4), 1, "SAME", name=name)  # noqa
        tf.multiply(tf.constant(0.5), conv("conv_a"), name="scalar_mul")          # Mul, Const first
        tf.add(const(1, 1, 1, 4), conv("conv_d"), name="add_bias")                 # Add -> BiasAdd
        tf.multiply(conv("conv_c"), const(6, 6, 4), name="spatial_mul")            # not per channel
        y = conv("conv_e")
        tf.nn.relu(y, name="relu_e")
        # conv_e feeds relu_e too, so its BN cannot fold
        tf.add(tf.multiply(y, const(4), name="shared_mul"), const(4), name="shared_bn")
        flat = tf.reshape(x, [2, 108])
        mm = tf.matmul(flat, const(5, 108), transpose_b=True, name="mm")
        mm = tf.nn.bias_add(mm, const(5), name="mm_bias")
        tf.add(const(5), tf.multiply(const(5), mm, name="mm_mul"), name="mm_bn")  # Mul+Add
    outputs = ["scalar_mul", "add_bias", "spatial_mul", "relu_e", "shared_bn", "mm_bn"]
    return model_from_graph_def(graph.as_graph_def(), outputs=outputs, canonical=False)


def test_lone_mul_and_add_fold_and_non_channel_constants_stay():
    model = _elementwise_graph()
    folded_model, folded, left = fold_batch_norm(model)
    assert {(r["layer"], r["into"], r["kind"]) for r in folded} == {
        ("scalar_mul", "conv_a", "Mul"), ("add_bias", "conv_d", "Add"),
        ("mm_mul", "mm", "Mul+Add")}
    reasons = {r["layer"]: r["reason"] for r in left}
    assert set(reasons) == {"spatial_mul", "shared_mul"}
    assert "shape [6, 6, 4] is not per-output-channel" in reasons["spatial_mul"]
    assert "'conv_e' also feeds 'relu_e'" in reasons["shared_mul"]
    ops = {n.name: n.op for n in folded_model.graph_def.node}
    assert ops["scalar_mul"] == ops["add_bias"] == ops["mm_bn"] == "BiasAdd"
    assert "mm_mul" not in ops and "mm_bias" not in ops
    assert relative_error(model, folded_model, random_feeds(model, seed=4)) <= MAX_REL_ERROR


def test_pass_reports_layers_and_registers_through_the_hook(tf1_model):
    registry = PassRegistry()
    register_passes(registry)
    fold = registry.get("fold_bn").impl
    assert isinstance(fold, FoldBatchNorm) and fold.requires == ("bn_fusion",)
    assert fold.stage == "prepare" and fold.enabled_by_default
    assert fold.layers(tf1_model, {}) == ["conv", "dw"]
    ctx = PassContext(profile=None, config={}, ops=default_ops())
    result = fold.apply(tf1_model, ctx)
    assert ctx.report.metrics == {"folded": 2, "left": 1}
    assert [(r["layer"], r["status"]) for r in ctx.report.layers] == [
        ("bn_conv", "folded"), ("bn_dw", "folded"), ("bn_in", "skipped")]
    assert result.sha256() == fold_batch_norm(tf1_model)[0].sha256()


def _application_check(keras_model, batch: int, seed: int):
    randomize_bn(keras_model, seed)
    model = load_model(keras_model)
    folded_model, folded, left = fold_batch_norm(model)
    assert left == []
    assert len(folded) == _keras_bn_layers(keras_model)
    assert bn_nodes(folded_model.graph_def) == []
    error = relative_error(model, folded_model, random_feeds(model, batch=batch, seed=seed))
    assert error <= MAX_REL_ERROR


def test_mobilenet_v2_folds_every_bn_within_1e5():
    import keras

    _application_check(keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classifier_activation=None),
        batch=2, seed=5)


@pytest.mark.slow
def test_resnet50_folds_every_bn_within_1e5():
    import keras

    _application_check(keras.applications.ResNet50(weights=None, classifier_activation=None),
                       batch=2, seed=6)


def test_bn_after_residual_add_gets_its_true_reason_and_hard_swish_is_no_bn():
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8, 4), name="image")
    a = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(x)
    b = keras.layers.Conv2D(4, 1, name="conv_b")(x)
    s = keras.layers.Add(name="residual")([a, b])
    s = keras.layers.BatchNormalization(name="bn_after_add")(s)
    s = keras.layers.Activation("hard_swish", name="hswish")(s)
    y = keras.layers.GlobalAveragePooling2D()(s)
    keras_model = keras.Model(x, keras.layers.Dense(3, name="head")(y))
    randomize_bn(keras_model, seed=1)
    folded_model, folded, left = fold_batch_norm(load_model(keras_model))
    assert folded == []
    assert len(left) == 1, left
    assert left[0]["layer"].startswith("bn_after_add") or "bn_after_add" in left[0]["layer"]
    assert "residual" in left[0]["reason"] and "sum" in left[0]["reason"]
    assert "non-Const" not in left[0]["reason"]
