"""Filter pruning: BalancedL2Norm ranking and the channel surgery, on real TF graphs.

The equivalence check: zeroing a pruned channel's filter and every per-channel Const after it
(bias, BN shift, ...) makes it output relu(0) = 0, so removing it must not change the outputs.
"""
from __future__ import annotations

import numpy as np
import pytest

from amct_targets.errors import ConfigError
from amct_targets.graph.load import load_model, model_from_graph_def
from amct_targets.graph.pattern import GraphIndex
from amct_targets.graph.layout import LAYOUTS
from amct_targets.pruning import (balanced_l2_norm_scores, filter_l2_norms, kept_channels,
                                  kept_count, mask_for, prunable_layers, prune_output_channels,
                                  zero_pruned_channels)
from models import random_feeds, randomize_bn, run_graph

MAX_REL_ERROR = 1e-5


# -- models ------------------------------------------------------------------------------------
def _keras(build, seed: int = 0):
    """A Keras 3 functional model from `build(layers, inputs, bias_init) -> outputs`, with
    random biases (grappler drops zero ones) and random BN statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    bias = keras.initializers.RandomNormal(stddev=0.2, seed=seed)
    inputs = keras.Input((8, 8, 3), name="image")
    model = keras.Model(inputs, build(keras.layers, inputs, bias))
    return load_model(randomize_bn(model, seed))


def conv_conv(L, x, b):
    x = L.Conv2D(6, 3, padding="same", activation="relu", bias_initializer=b, name="c1")(x)
    return L.Conv2D(4, 3, padding="same", bias_initializer=b, name="c2")(x)


def conv_bn_relu_conv(L, x, b):
    x = L.Conv2D(6, 3, padding="same", bias_initializer=b, name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    return L.Conv2D(4, 3, padding="same", bias_initializer=b, name="c2")(x)


def conv_depthwise_conv(L, x, b):
    x = L.Conv2D(6, 3, padding="same", activation="relu", bias_initializer=b, name="c1")(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, bias_initializer=b,
                          name="dw")(x)
    x = L.BatchNormalization(name="bn_dw")(x)
    return L.Conv2D(4, 1, bias_initializer=b, name="c2")(x)


def conv_flatten_dense(L, x, b):
    x = L.Conv2D(8, 3, padding="same", activation="relu", bias_initializer=b, name="c1")(x)
    x = L.Conv2D(4, 3, padding="valid", activation="relu", bias_initializer=b, name="c2")(x)
    x = L.Flatten(name="flat")(x)
    return L.Dense(5, bias_initializer=b, name="fc")(x)


def conv_gap_dense(L, x, b):
    x = L.Conv2D(6, 3, padding="same", activation="relu", bias_initializer=b, name="c1")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return L.Dense(5, bias_initializer=b, name="fc")(x)


def residual(L, x, b):
    x = L.Conv2D(4, 3, padding="same", activation="relu", bias_initializer=b, name="c1")(x)
    y = L.Conv2D(4, 3, padding="same", bias_initializer=b, name="c2")(x)
    x = L.Add(name="block2_add")([x, y])
    return L.Conv2D(3, 1, bias_initializer=b, name="c3")(x)


def tf1_graph(seed: int = 0):
    """Raw TF1 ops: conv -> FusedBatchNormV3 -> Relu6 -> Pad -> MaxPool -> conv2 -> Mean[1,2]
    -> fc1 (MatMul, transpose_b) -> BiasAdd -> Relu -> fc2 (MatMul) -> output."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.normal(0, 0.5, shape).astype(np.float32)  # noqa: E731
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        x = tf.nn.conv2d(x, tf.constant(f32(3, 3, 3, 6), name="conv_w"), 1, "SAME", name="conv")
        x, _, _ = v1.nn.fused_batch_norm(
            x, tf.constant(rng.uniform(0.5, 1.5, 6).astype(np.float32)), tf.constant(f32(6)),
            tf.constant(f32(6)), tf.constant(rng.uniform(0.5, 2, 6).astype(np.float32)),
            epsilon=1e-3, is_training=False, name="bn")
        x = tf.nn.relu6(x, name="relu6")
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], name="pad")
        x = tf.nn.max_pool2d(x, 2, 2, "VALID", name="pool")
        x = tf.nn.conv2d(x, tf.constant(f32(3, 3, 6, 5), name="conv2_w"), 1, "SAME",
                         name="conv2")
        x = tf.reduce_mean(x, axis=[1, 2], name="gap")
        x = tf.matmul(x, tf.constant(f32(7, 5), name="fc1_w"), transpose_b=True, name="fc1")
        x = tf.nn.relu(tf.nn.bias_add(x, tf.constant(f32(7), name="fc1_b"), name="fc1_bias"))
        x = tf.matmul(x, tf.constant(f32(7, 2), name="fc2_w"), name="fc2")
        tf.identity(x, name="output")
    return model_from_graph_def(graph.as_graph_def(), outputs=["output"], where="tf1")


# -- helpers -----------------------------------------------------------------------------------
def _node(model, keras_name: str, op: str) -> str:
    """The node of op `op` made by Keras layer `keras_name` (`functional/c1_1/convolution`)."""
    found = [n.name for n in model.graph_def.node if n.op == op
             and any(part.rsplit("_", 1)[0] == keras_name for part in n.name.split("/"))]
    assert len(found) == 1, (keras_name, op, found)
    return found[0]


def _const(model, name: str) -> np.ndarray:
    index = GraphIndex(model.graph_def)
    return index.const_value(index.nodes[name])


def _weights_of(model, layer: str) -> np.ndarray:
    index = GraphIndex(model.graph_def)
    return index.const_value(index.producer(index.nodes[layer], 1))


def _rel_error(reference, candidate, feeds) -> float:
    outs_a = run_graph(reference.graph_def, feeds, reference.outputs)
    outs_b = run_graph(candidate.graph_def, feeds, candidate.outputs)
    diff = max(float(np.max(np.abs(b - a))) for a, b in zip(outs_a, outs_b))
    return diff / max(float(np.max(np.abs(a))) for a in outs_a)


def _lowest_half_pruned(model, layer: str) -> np.ndarray:
    w = _weights_of(model, layer)
    node = {n.name: n for n in model.graph_def.node}[layer]
    return kept_channels(balanced_l2_norm_scores(w, LAYOUTS[node.op].axes(node)[1]), 0.5)


# -- (a) equivalence with the masked original, (b) exact shapes --------------------------------
EQUIVALENCE_CASES = {
    "conv->conv": (conv_conv, ["c1"]),
    "conv->BN(Mul/Add)->relu->conv": (conv_bn_relu_conv, ["c1"]),
    "conv->depthwise->BN->conv": (conv_depthwise_conv, ["c1"]),
    "conv->Flatten->Dense": (conv_flatten_dense, ["c1", "c2"]),
    "conv->MaxPool->GlobalAveragePooling->Dense": (conv_gap_dense, ["c1"]),
}


@pytest.mark.parametrize("case", list(EQUIVALENCE_CASES))
def test_pruned_model_equals_masked_original_within_1e5(case):
    build, layers = EQUIVALENCE_CASES[case]
    model = _keras(build)
    groups, skipped = prunable_layers(model)
    kept = {}
    for keras_name in layers:
        layer = _node(model, keras_name, "Conv2D")
        assert layer in groups, skipped.get(layer)
        assert groups[layer].zero_preserving
        kept[layer] = _lowest_half_pruned(model, layer)
    before = model.serialize()
    pruned = prune_output_channels(model, kept)
    masked = zero_pruned_channels(model, kept)
    assert model.serialize() == before
    assert [n.name for n in pruned.graph_def.node] == [n.name for n in model.graph_def.node]
    feeds = random_feeds(model, batch=3, seed=1)
    assert _rel_error(masked, pruned, feeds) <= MAX_REL_ERROR
    assert _rel_error(model, masked, feeds) > 1e-3  # the pruned channels did matter
    assert prune_output_channels(model, kept).serialize() == pruned.serialize()


def test_masked_original_is_the_hand_zeroed_conv_weights_and_bias():
    model = _keras(conv_conv)
    layer = _node(model, "c1", "Conv2D")
    kept = {layer: np.array([1, 2, 5])}
    masked = zero_pruned_channels(model, kept)
    bias_name = _node(model, "c1", "BiasAdd")
    index = GraphIndex(model.graph_def)
    bias_const = index.producer(index.nodes[bias_name], 1).name
    w, b = _weights_of(model, layer).copy(), _const(model, bias_const).copy()
    w[..., [0, 3, 4]] = 0
    b[[0, 3, 4]] = 0
    np.testing.assert_array_equal(_weights_of(masked, layer), w)
    np.testing.assert_array_equal(_const(masked, bias_const), b)
    np.testing.assert_array_equal(mask_for(kept[layer], 6), [0, 1, 1, 0, 0, 1])


def test_depthwise_chain_and_flatten_rows_have_the_expected_shapes():
    model = _keras(conv_depthwise_conv)
    c1, c2 = _node(model, "c1", "Conv2D"), _node(model, "c2", "Conv2D")
    dw = _node(model, "dw", "DepthwiseConv2dNative")
    kept = np.array([0, 2, 3, 5])
    pruned = prune_output_channels(model, {c1: kept})
    assert _weights_of(pruned, c1).shape == (3, 3, 3, 4)
    assert _weights_of(pruned, dw).shape == (3, 3, 4, 2)
    assert _weights_of(pruned, c2).shape == (1, 1, 8, 4)
    np.testing.assert_array_equal(_weights_of(pruned, c2)[0, 0],  # rows c*2+m of kept c
                                  _weights_of(model, c2)[0, 0][[0, 1, 4, 5, 6, 7, 10, 11]])
    shapes = {e.const: _const(pruned, e.const).shape
              for e in prunable_layers(model)[0][c1].edits if e.role == "channel_const"}
    assert sorted(shapes.values()) == [(4,), (8,), (8,), (8,)]  # c1 bias; dw bias, BN mul, add

    model = _keras(conv_flatten_dense)
    c2, fc = _node(model, "c2", "Conv2D"), _node(model, "fc", "MatMul")
    pruned = prune_output_channels(model, {c2: np.array([0, 3])})
    assert _weights_of(pruned, c2).shape == (3, 3, 8, 2)
    assert _weights_of(pruned, fc).shape == (6 * 6 * 2, 5)
    rows = (np.arange(36)[:, None] * 4 + np.array([0, 3])[None, :]).reshape(-1)
    np.testing.assert_array_equal(_weights_of(pruned, fc), _weights_of(model, fc)[rows])
    reshape = [e for e in prunable_layers(model)[0][c2].edits if e.role == "reshape"]
    assert [int(_const(pruned, e.const).reshape(-1)[0]) for e in reshape] == [72]


def test_tf1_fused_bn_pad_pool_mean_and_matmul_layers_prune_exactly():
    model = tf1_graph()
    groups, skipped = prunable_layers(model)
    assert sorted(groups) == ["conv", "conv2", "fc1"]
    assert skipped == {"fc2": "output reaches graph output 'output'; left unpruned"}
    assert groups["fc1"].consumers == ("fc2",)
    kept = {"conv": np.array([0, 1, 4]), "conv2": np.array([1, 2, 3, 4]),
            "fc1": np.array([0, 1, 4])}
    pruned = prune_output_channels(model, kept)
    shapes = {name: _const(pruned, name).shape for name in ("conv_w", "conv2_w", "fc1_w",
                                                              "fc1_b", "fc2_w")}
    assert shapes == {"conv_w": (3, 3, 3, 3), "conv2_w": (3, 3, 3, 4), "fc1_w": (3, 4),
                      "fc1_b": (3,), "fc2_w": (3, 2)}
    bn = GraphIndex(pruned.graph_def).nodes["bn"]
    assert [_const(pruned, i).shape for i in bn.input[1:]] == [(3,)] * 4
    feeds = random_feeds(model, batch=2, seed=4)
    assert _rel_error(zero_pruned_channels(model, kept), pruned, feeds) <= MAX_REL_ERROR


def test_flatten_with_a_const_shape_gets_the_new_flattened_size():
    import tensorflow as tf

    rng = np.random.default_rng(5)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 2], name="input")
        w = tf.constant(rng.normal(0, 1, (3, 3, 2, 4)).astype(np.float32), name="conv_w")
        x = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", name="conv"))
        x = tf.reshape(x, tf.constant([-1, 64], name="flat_shape"), name="flat")
        fc = tf.constant(rng.normal(0, 1, (64, 3)).astype(np.float32), name="fc_w")
        tf.identity(tf.matmul(x, fc, name="fc"), name="output")
    model = model_from_graph_def(graph.as_graph_def(), outputs=["output"], canonical=False)
    kept = {"conv": np.array([1, 3])}
    pruned = prune_output_channels(model, kept)
    assert _const(pruned, "flat_shape").tolist() == [-1, 32]
    assert _const(pruned, "fc_w").shape == (32, 3)
    feeds = random_feeds(model, batch=2, seed=5)
    assert _rel_error(zero_pruned_channels(model, kept), pruned, feeds) <= MAX_REL_ERROR


# -- (c) what is left unpruned -----------------------------------------------------------------
def test_residual_add_leaves_both_convs_unpruned_with_the_reason():
    model = _keras(residual)
    groups, skipped = prunable_layers(model)
    add = _node(model, "block2_add", "AddV2")
    c1, c2, c3 = (_node(model, n, "Conv2D") for n in ("c1", "c2", "c3"))
    expected = (f"output reaches residual Add '{add}' whose other input is not pruned "
                "consistently; left unpruned")
    assert skipped[c1] == expected and skipped[c2] == expected
    assert list(groups) == [] and "graph output" in skipped[c3]
    with pytest.raises(ConfigError, match="block2_add"):
        prune_output_channels(model, {c2: np.array([0, 1])})


def _tf1_branches(middle):
    """input -> conv (4 filters) -> middle(x) -> conv_out (1x1, 2 filters) -> output."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4, 4, 2], name="input")
        w = tf.constant(rng.normal(0, 1, (3, 3, 2, 4)).astype(np.float32), name="conv_w")
        x = middle(tf, tf.nn.conv2d(x, w, 1, "SAME", name="conv"))
        w = tf.constant(rng.normal(0, 1, (1, 1, x.shape[-1], 2)).astype(np.float32))
        tf.identity(tf.nn.conv2d(x, w, 1, "SAME", name="conv_out"), name="output")
    return model_from_graph_def(graph.as_graph_def(), outputs=["output"], canonical=False)


def test_sigmoid_or_scalar_add_on_the_path_is_prunable_but_not_zero_preserving():
    cases = [(lambda tf, x: tf.sigmoid(x), False),        # sigmoid(0) = 0.5
             (lambda tf, x: tf.add(x, 0.5), False),       # 0 + 0.5
             (lambda tf, x: tf.nn.relu(x * 2.0), True)]   # relu(0 * 2) = 0
    for middle, zero_preserving in cases:
        group = prunable_layers(_tf1_branches(middle))[0]["conv"]
        assert group.consumers == ("conv_out",)
        assert group.zero_preserving is zero_preserving


def test_concat_and_shared_consumer_weights_leave_the_layer_unpruned():
    concat = _tf1_branches(lambda tf, x: tf.concat([x, tf.nn.relu(x)], axis=3, name="cat"))
    assert prunable_layers(concat)[1]["conv"] == (
        "output reaches ConcatV2 'cat', whose other inputs are not pruned consistently; "
        "left unpruned")

    def shared(tf, x):
        w = tf.constant(np.ones((1, 1, 4, 4), np.float32), name="shared_w")
        return tf.nn.conv2d(tf.nn.conv2d(x, w, 1, "SAME", name="a"), w, 1, "SAME", name="b")

    skipped = prunable_layers(_tf1_branches(shared))[1]
    assert skipped["conv"].startswith("weights Const 'shared_w' of Conv2D 'a' is shared by 2 ops")
    assert skipped["a"] == "weight Const 'shared_w' is shared by 2 ops (a, b)"


def test_invalid_kept_indices_are_refused():
    model = tf1_graph()
    for bad in ([], [1, 0], [0, 0], [6], [-1]):
        with pytest.raises(ConfigError, match="'conv'"):
            prune_output_channels(model, {"conv": np.array(bad, dtype=np.int64)})


# -- (d) ranking and AMCT's kept-channel counts ------------------------------------------------
def test_amct_example_20_channels_at_025_keeps_15_or_16_aligned():
    assert kept_count(20, 0.25) == 15
    assert kept_count(20, 0.25, align=16) == 16
    assert [kept_count(n, 0.3) for n in (10, 64, 100)] == [7, 45, 70]
    assert kept_count(100, 0.29) == 71  # 100 * 0.29 = 28.999999999999996
    assert [kept_count(n, 0.3, 16) for n in (64, 100, 8, 30)] == [48, 64, 8, 16]
    assert kept_count(30, 0.2, 16) == 30  # 24 rounds to 32, more than the 30 there are
    assert kept_count(40, 0.4, 16) == 32  # 24 is halfway between 16 and 32: keep more


def test_kept_channels_are_the_highest_balanced_l2_norms_sorted():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (3, 3, 2, 20)) * np.arange(1, 21)  # filter o has norm ~ (o + 1)
    scores = balanced_l2_norm_scores(w, (3,))
    np.testing.assert_allclose(np.mean(scores), 1.0)
    np.testing.assert_allclose(scores * np.mean(filter_l2_norms(w, (3,))),
                               np.sqrt(np.sum(w ** 2, axis=(0, 1, 2))))
    order = np.argsort(scores)
    np.testing.assert_array_equal(kept_channels(scores, 0.25), np.sort(order[5:]))
    np.testing.assert_array_equal(kept_channels(scores, 0.25, align=16), np.sort(order[4:]))
    dw = np.zeros((3, 3, 2, 3))
    dw[:, :, 1, 2] = 1.0  # output channel 1*3 + 2 = 5
    assert np.argmax(filter_l2_norms(dw, LAYOUTS["DepthwiseConv2dNative"].cout_axes)) == 5
    fc = np.diag([1.0, 2.0, 3.0])[:, :2]  # [in 3, out 2]
    np.testing.assert_allclose(filter_l2_norms(fc, LAYOUTS["MatMul"].cout_axes), [1.0, 2.0])
    transposed = LAYOUTS["MatMul"].cin_axis   # transpose_b: outputs on the input axis
    np.testing.assert_allclose(filter_l2_norms(fc.T, (transposed,)), [1.0, 2.0])


# -- (e) parameters and FLOPs before and after --------------------------------------------------
def _params_and_flops(model) -> tuple[int, int]:
    """Weights + biases of Conv2D/Depthwise/MatMul layers; FLOPs = 2 * multiply-adds per
    image (a private counter: amct_targets.graph.flops did not exist yet)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(model.graph_def, name="")
    index = GraphIndex(model.graph_def)
    params = flops = 0
    for node in model.graph_def.node:
        if node.op in ("Conv2D", "DepthwiseConv2dNative", "MatMul"):
            w = index.const_value(index.producer(node, 1))
            out = graph.get_operation_by_name(node.name).outputs[0].shape.as_list()
            positions = int(np.prod(out[1:-1])) if len(out) == 4 else 1
            params += w.size
            flops += 2 * positions * w.size  # each weight is one multiply-add per position
        elif node.op == "BiasAdd":
            params += index.const_value(index.producer(node, 1)).size
    return params, flops


def test_params_and_flops_before_and_after_are_the_hand_counted_numbers():
    model = _keras(conv_flatten_dense)
    c1, c2 = _node(model, "c1", "Conv2D"), _node(model, "c2", "Conv2D")
    # c1 3x3x3x8 on 8x8 SAME, c2 3x3x8x4 VALID -> 6x6x4, Flatten 144, Dense 5; all with bias.
    assert _params_and_flops(model) == (
        216 + 8 + 288 + 4 + 720 + 5,
        2 * 64 * 216 + 2 * 36 * 288 + 2 * 720)  # (1241, 49824)
    pruned = prune_output_channels(model, {c1: kept_channels(np.arange(8.0), 0.25),
                                           c2: kept_channels(np.arange(4.0), 0.25)})
    assert _params_and_flops(pruned) == (
        162 + 6 + 162 + 3 + 540 + 5,
        2 * 64 * 162 + 2 * 36 * 162 + 2 * 540)  # (878, 33480)
