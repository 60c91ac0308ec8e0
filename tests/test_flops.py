"""graph/flops.py: exact FLOPs (2 x MACs + bias adds) and parameters, checked by hand."""
from __future__ import annotations

import numpy as np
import pytest

from amct_targets.errors import ModelError
from amct_targets.graph.flops import Totals, conv2d_flops, count_layers, percent_cut, total
from amct_targets.graph.load import model_from_graph_def


def _model(build, outputs=("output",)):
    """A frozen tf.compat.v1 graph from `build(tf, rng)`, not canonicalized."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        build(tf, np.random.default_rng(0))
    return model_from_graph_def(graph.as_graph_def(), outputs=list(outputs), canonical=False)


def _const(tf, rng, *shape, name=None):
    return tf.constant(rng.normal(0, 0.1, shape).astype(np.float32), name=name)


def _conv_model(size, cin, cout, k, stride, padding, bias):
    def build(tf, rng):
        x = tf.compat.v1.placeholder(tf.float32, [None, size, size, cin], name="input")
        y = tf.nn.conv2d(x, _const(tf, rng, k, k, cin, cout, name="w"), strides=stride,
                         padding=padding, name="conv")
        if bias:
            y = tf.nn.bias_add(y, _const(tf, rng, cout, name="b"), name="bias")
        tf.identity(y, name="output")
    return _model(build)


def test_conv_64_to_64_3x3_on_8x8_is_2_x_8_x_8_x_64_x_64_x_9():
    cost = count_layers(_conv_model(8, 64, 64, 3, 1, "SAME", bias=False))["conv"]
    assert cost.flops == 2 * 8 * 8 * 64 * 64 * 9 == 4_718_592
    assert cost.params == 64 * 64 * 9
    assert cost.input_shape == (1, 8, 8, 64) and cost.output_shape == (1, 8, 8, 64)
    assert (cost.op, cost.weights, cost.bias) == ("Conv2D", "w", None)
    assert conv2d_flops((8, 8), (3, 3, 64, 64)) == cost.flops


def test_bias_adds_one_flop_per_output_and_its_parameters():
    cost = count_layers(_conv_model(8, 64, 64, 3, 1, "SAME", bias=True))["conv"]
    assert cost.flops == 2 * 8 * 8 * 64 * 64 * 9 + 8 * 8 * 64
    assert cost.params == 64 * 64 * 9 + 64
    assert cost.bias == "b"


@pytest.mark.parametrize("padding, out", [("SAME", 5), ("VALID", 4)])
def test_strided_conv_counts_the_output_positions_of_its_padding(padding, out):
    # 9x9 input, 3x3 kernel, stride 2: SAME -> ceil(9/2) = 5, VALID -> (9-3)//2 + 1 = 4.
    cost = count_layers(_conv_model(9, 3, 16, 3, 2, padding, bias=False))["conv"]
    assert cost.output_shape == (1, out, out, 16)
    assert cost.flops == 2 * out * out * 16 * 3 * 3 * 3
    assert cost.params == 3 * 3 * 3 * 16


def test_depthwise_conv_is_kh_kw_macs_per_output():
    def build(tf, rng):
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 8], name="input")
        y = tf.nn.depthwise_conv2d(x, _const(tf, rng, 3, 3, 8, 2, name="w"), [1, 1, 1, 1],
                                   "SAME", name="dw")
        tf.identity(y, name="output")

    (name, cost), = count_layers(_model(build)).items()
    assert cost.op == "DepthwiseConv2dNative" and cost.output_shape == (1, 8, 8, 16)
    assert cost.flops == 2 * 8 * 8 * 16 * 3 * 3 == 18_432
    assert cost.params == 3 * 3 * 8 * 2


@pytest.mark.parametrize("transpose_b", [False, True])
def test_matmul_with_bias(transpose_b):
    def build(tf, rng):
        x = tf.compat.v1.placeholder(tf.float32, [None, 128], name="input")
        w = _const(tf, rng, *((10, 128) if transpose_b else (128, 10)), name="w")
        y = tf.matmul(x, w, transpose_b=transpose_b, name="dense")
        tf.identity(tf.nn.bias_add(y, _const(tf, rng, 10, name="b")), name="output")

    cost = count_layers(_model(build))["dense"]
    assert cost.flops == 2 * 128 * 10 + 10
    assert cost.params == 128 * 10 + 10 and cost.output_shape == (1, 10)


def test_batch_matmul_with_const_operand_and_transpose_conv():
    def build(tf, rng):
        x = tf.compat.v1.placeholder(tf.float32, [None, 5, 32], name="input")
        bmm = tf.linalg.matmul(x, _const(tf, rng, 32, 8, name="w"), name="bmm")
        image = tf.compat.v1.placeholder(tf.float32, [1, 4, 4, 16], name="image")
        up = tf.nn.conv2d_transpose(image, _const(tf, rng, 3, 3, 8, 16, name="f"), [1, 8, 8, 8],
                                    strides=2, padding="SAME", name="up")
        tf.identity(bmm, name="output")
        tf.identity(up, name="output2")

    costs = count_layers(_model(build, outputs=("output", "output2")))
    assert costs["bmm"].op == "BatchMatMulV2"
    assert costs["bmm"].flops == 2 * 5 * 8 * 32 and costs["bmm"].params == 32 * 8
    up = costs["up"]
    assert up.op == "Conv2DBackpropInput" and up.output_shape == (1, 8, 8, 8)
    # every out_backprop element (4x4x16) scattered into 3x3x8 outputs
    assert up.flops == 2 * 4 * 4 * 16 * 3 * 3 * 8 and up.params == 3 * 3 * 8 * 16
    assert up.input_shape == (1, 4, 4, 16)
    assert total(costs) == Totals(params=256 + 1152, flops=2560 + 36864)


def test_shared_weights_count_once_and_activation_matmuls_are_not_layers():
    def build(tf, rng):
        x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 8], name="input")
        w = _const(tf, rng, 3, 3, 8, 8, name="w")
        a = tf.nn.conv2d(x, w, 1, "SAME", name="a")
        b = tf.nn.conv2d(a, w, 1, "SAME", name="b")
        flat = tf.reshape(b, [-1, 16, 8])
        gram = tf.linalg.matmul(flat, flat, transpose_a=True, name="gram")
        tf.identity(gram, name="output")

    costs = count_layers(_model(build))
    assert list(costs) == ["a", "b"]
    assert total(costs) == Totals(params=3 * 3 * 8 * 8, flops=2 * 2 * 4 * 4 * 8 * 3 * 3 * 8)


def test_unknown_spatial_size_needs_input_shapes():
    def build(tf, rng):
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="input")
        tf.identity(tf.nn.conv2d(x, _const(tf, rng, 3, 3, 3, 4), 1, "SAME", name="conv"),
                    name="output")

    model = _model(build)
    with pytest.raises(ModelError, match=r"input 'input' has shape \(-1,-1,-1,3\)"):
        count_layers(model)
    cost = count_layers(model, input_shapes={"input": (1, 6, 6, 3)})["conv"]
    assert cost.flops == 2 * 6 * 6 * 4 * 27


def test_percent_cut():
    assert percent_cut(3, 1) == 66.67
    assert percent_cut(0, 0) == 0.0


def test_graph_tensorflow_cannot_import_is_a_clear_error():
    from tensorflow.core.framework import node_def_pb2

    model = _conv_model(8, 4, 4, 3, 1, "SAME", bias=False)
    graph_def = model.copy_graph_def()
    graph_def.node.append(node_def_pb2.NodeDef(name="q", op="VendorOpNobodyRegistered", input=["conv"]))
    with pytest.raises(ModelError, match="cannot count FLOPs .*TensorFlow cannot import this graph: Op type not registered"):
        count_layers(model.replace(graph_def=graph_def))
