"""Ascend op NodeDefs, deq_scale packing, and the simulation expansion against the NumPy
references of the tf_adapter CPU kernels.

Why the simulation must match the references bit for bit, also on random data: every step is
either elementwise float32 arithmetic (Mul, Round, AddV2, Floor, RealDiv: IEEE-exact, so NumPy
and TensorFlow give the same bits) or a Conv2D/MatMul/BiasAdd over integer values whose sums
stay below 2^24, which float32 adds exactly in any order.
"""
from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2

from amct_targets.deploy import ascend_ops as ops  # registers the expanders
from amct_targets.errors import ModelError
from amct_targets.hooks.manager import default_ops
from amct_targets.simulate import load_simulation


def _attr(**kw):
    return attr_value_pb2.AttrValue(**kw)


def _op(name, op, inputs, **attrs):
    node = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _placeholder(name, shape, dtype=types_pb2.DT_FLOAT):
    from tensorflow.core.framework import tensor_shape_pb2

    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
    return _op(name, "Placeholder", [], dtype=_attr(type=dtype),
               shape=_attr(shape=tensor_shape_pb2.TensorShapeProto(dim=dims)))


def _float_op(name, op, inputs, **attrs):
    return _op(name, op, inputs, T=_attr(type=types_pb2.DT_FLOAT), **attrs)


def _run(tmp_path, nodes, feed):
    graph_def = graph_pb2.GraphDef(node=nodes)
    path = tmp_path / "model.pb"
    path.write_bytes(graph_def.SerializeToString())
    return load_simulation(path)(feed)


def _conv2d_same(x, w):
    kh, kw = w.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)))
    patches = sliding_window_view(padded, (kh, kw), axis=(1, 2))   # N, H, W, C, kh, kw
    return np.einsum("nhwcij,ijco->nhwo", patches.astype(np.float64), w.astype(np.float64))


def _conv_graph(scale_d, offset_d, w_int8, bias, packed):
    return [
        _placeholder("x", (2, 5, 5, w_int8.shape[2])),
        ops.ascend_quant_node("conv/quant", "x", scale_d, offset_d),
        ops.const_node("conv/w_int8", w_int8),
        ops.const_node("conv/w_offset", np.zeros(1, np.int8)),
        ops.ascend_weight_quant_node("conv/wq", "conv/w_int8", "conv/w_offset"),
        _float_op("conv", "Conv2D", ["conv/quant", "conv/wq"], padding=_attr(s=b"SAME"),
                  strides=_attr(list=attr_value_pb2.AttrValue.ListValue(i=[1, 1, 1, 1]))),
        ops.const_node("conv/bias", bias),
        _float_op("conv/bias_add", "BiasAdd", ["conv", "conv/bias"]),
        ops.const_node("conv/deq", packed),
        ops.ascend_dequant_node("conv/dequant", "conv/bias_add", "conv/deq"),
        _float_op("relu", "Relu", ["conv/dequant"]),   # a consumer of the expanded node's name
    ]


def _conv_reference(x, scale_d, offset_d, w_int8, bias, packed):
    attr_scale = np.float32(1.0 / scale_d)
    q = ops.ref_ascend_quant(x, attr_scale, offset_d)
    w = ops.ref_ascend_weight_quant(w_int8, np.zeros(1, np.int8))
    acc = (_conv2d_same(q, w) + bias).astype(np.float32)
    return np.maximum(ops.ref_ascend_dequant(acc, packed), 0)


def test_expanders_and_atc_acceptance_are_registered_for_every_ascend_op():
    ops = default_ops()
    ascend = {"AscendQuant", "AscendWeightQuant", "AscendDequant", "AscendAntiQuant"}
    assert ascend <= set(ops.expanders)
    assert all(ops.atc_acceptance(op, "ascend310").accepted for op in ascend)
    assert {ops.owner(op, "expand") for op in ascend} == {"amct_targets.deploy.ascend_ops"}


def test_conv_chain_is_integer_exact_with_half_ties(tmp_path):
    rng = np.random.default_rng(1)
    # scale_d = 0.5 -> x * 2 is an integer or an exact .5 tie; |x * 2| up to 300 also clips.
    x = (rng.integers(-600, 600, size=(2, 5, 5, 3)) / 4).astype(np.float32)
    x.flat[:6] = [0.25, 0.75, -0.25, -1.25, 63.75, -64.25]
    w_int8 = rng.integers(-128, 128, size=(3, 3, 3, 4)).astype(np.int8)
    bias = rng.integers(-5000, 5000, size=4).astype(np.float32)
    packed = ops.pack_deq_scale(rng.uniform(1e-4, 1e-2, 4).astype(np.float32))
    got = _run(tmp_path, _conv_graph(0.5, -3, w_int8, bias, packed), x)
    np.testing.assert_array_equal(got, _conv_reference(x, 0.5, -3, w_int8, bias, packed))


def test_round_ties_away_from_zero_and_clips_like_the_kernel():
    x = np.array([0.25, 0.75, -0.25, -1.25, 100.0, -100.0], np.float32)
    # C round: x * 2 = .5, 1.5, -.5, -2.5 -> 1, 2, -1, -3; +-200 clip to 127 - (-3), -128 - (-3).
    np.testing.assert_array_equal(ops.ref_ascend_quant(x, 2.0, -3),
                                  [1, 2, -1, -3, 130, -125])


def test_round_half_away_is_exact_next_to_ties():
    # 0.49999997 + 0.5 rounds to 1.0 in float32: a floor(x + 0.5) rounding would get it wrong.
    x = np.array([0.49999997, -0.49999997, 2.5, -2.5, 1.5000001, 8388607.5, -0.0], np.float32)
    np.testing.assert_array_equal(ops.round_half_away(x), [0, 0, 3, -3, 2, 8388608, 0])


def test_simulated_quant_rounds_ties_away_from_zero(tmp_path):
    x = np.array([[0.25, 0.75, -0.25, -1.25, 0.24999999, -0.24999999, 63.75, -64.25]],
                 np.float32)
    nodes = [_placeholder("x", (1, 8)), ops.ascend_quant_node("q", "x", 0.5, 0)]
    got = _run(tmp_path, nodes, x)
    np.testing.assert_array_equal(got, [[1, 2, -1, -3, 0, 0, 127, -128]])
    np.testing.assert_array_equal(got, ops.ref_ascend_quant(x, 2.0, 0))


@pytest.mark.parametrize("offset", [-128, -3, 0, 5, 127])
def test_simulated_quant_equals_the_kernel_next_to_every_tie(tmp_path, offset):
    # The expansion rounds as sign(x) * floor(|x| + 0.49999997) and clips once with the
    # offset folded into the bounds; the reference rounds and clips as the C++ kernel does.
    ties = np.arange(-300, 301, dtype=np.float32) + np.float32(0.5)
    near = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)),
                           np.nextafter(ties, np.float32(-np.inf))])
    special = np.array([0.49999997, -0.49999997, 8388609.0, -8388609.0, 16777217.0, 3e38,
                        -3e38, np.inf, -np.inf, 0.0, -0.0], np.float32)
    wide = np.random.default_rng(offset + 200).standard_cauchy(20000).astype(np.float32) * 50
    x = np.concatenate([near, special, wide]).reshape(1, -1)
    nodes = [_placeholder("x", x.shape), ops.ascend_quant_node("q", "x", 1.0, offset)]
    got = _run(tmp_path, nodes, x)
    want = ops.ref_ascend_quant(x, 1.0, offset)
    np.testing.assert_array_equal(got, want)
    assert got.min() == -128 - offset and got.max() == 127 - offset


def test_conv_chain_random_data_bit_identical(tmp_path):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 5, 5, 3)) * 3).astype(np.float32)
    w_int8 = rng.integers(-128, 128, size=(3, 3, 3, 4)).astype(np.int8)
    bias = rng.integers(-20000, 20000, size=4).astype(np.float32)
    packed = ops.pack_deq_scale(rng.uniform(1e-5, 1e-3, 4).astype(np.float32))
    got = _run(tmp_path, _conv_graph(0.0371, 7, w_int8, bias, packed), x)
    want = _conv_reference(x, 0.0371, 7, w_int8, bias, packed)
    assert np.max(np.abs(got - want)) == 0


def test_matmul_chain_per_tensor_deq_bit_identical(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    w_int8 = rng.integers(-128, 128, size=(16, 8)).astype(np.int8)
    bias = rng.integers(-3000, 3000, size=8).astype(np.float32)
    packed = ops.pack_deq_scale(np.array([0.00123], np.float32))
    nodes = [
        _placeholder("x", (5, 16)),
        ops.ascend_quant_node("fc/quant", "x", 0.021, -128),
        ops.const_node("fc/w_int8", w_int8), ops.const_node("fc/w_offset", np.zeros(1, np.int8)),
        ops.ascend_weight_quant_node("fc/wq", "fc/w_int8", "fc/w_offset"),
        _float_op("fc", "MatMul", ["fc/quant", "fc/wq"]),
        ops.const_node("fc/bias", bias),
        _float_op("fc/bias_add", "BiasAdd", ["fc", "fc/bias"]),
        ops.const_node("fc/deq", packed),
        ops.ascend_dequant_node("fc/dequant", "fc/bias_add", "fc/deq"),
    ]
    got = _run(tmp_path, nodes, x)
    q = ops.ref_ascend_quant(x, np.float32(1 / 0.021), -128)
    acc = (q.astype(np.float64) @ w_int8.astype(np.float64) + bias).astype(np.float32)
    np.testing.assert_array_equal(got, ops.ref_ascend_dequant(acc, packed))


def _dequant_graph(packed, shape, ksize=(1, 1)):
    return [_placeholder("x", shape), ops.const_node("deq", packed),
            ops.ascend_dequant_node("dequant", "x", "deq", ksize=ksize)]


def test_dequant_shift_n_floors_and_saturates_to_int16(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(-2_000_000, 2_000_000, size=(2, 3, 3, 3)).astype(np.float32)
    deq = np.array([0.003, 0.0007, 0.0123], np.float32)
    packed = ops.pack_deq_scale(deq, shift_n=np.array([0, 3, 16]))
    want = ops.ref_ascend_dequant(x, packed)
    np.testing.assert_array_equal(_run(tmp_path, _dequant_graph(packed, x.shape), x), want)
    # Channel 1 (N = 3): floor(x / 8) saturates at 32767 for |x| >= 262144.
    big = x[..., 1] >= 262144
    assert big.any()
    np.testing.assert_array_equal(want[..., 1][big],
                                  np.float32(np.float32(32767 * deq[1]) * 8))
    assert ops.ref_ascend_dequant(np.float32([-9]), ops.pack_deq_scale(1.0, shift_n=2)) == -12


def test_dequant_all_channels_shifted_and_avgpool_area(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(-300_000, 300_000, size=(1, 4, 4, 2)).astype(np.float32)
    packed = ops.pack_deq_scale(np.array([0.01, 0.02], np.float32), shift_n=4)
    np.testing.assert_array_equal(_run(tmp_path, _dequant_graph(packed, x.shape), x),
                                  ops.ref_ascend_dequant(x, packed))
    # AvgPool outputs are not integers; x * 4 * deq / 4 goes through the kernel's double.
    pooled = (rng.standard_normal((1, 4, 4, 2)) * 1000).astype(np.float32)
    packed = ops.pack_deq_scale(np.float32(0.0137))
    got = _run(tmp_path, _dequant_graph(packed, pooled.shape, ksize=(2, 2)), pooled)
    np.testing.assert_array_equal(got, ops.ref_ascend_dequant(pooled, packed, ksize=(2, 2)))


def test_dequant_area_9_per_channel_is_not_reassociated_by_grappler(tmp_path):
    # A 3x3 AvgPool: (x * 9) * deq / 9 must keep its roundings; Grappler folds a chain of Mul
    # and RealDiv by constants into x * (9 * deq) / 9 or t * (deq / 9), 1 ulp off.
    rng = np.random.default_rng(6)
    pooled = (rng.standard_normal((2, 6, 6, 3)) * 100).astype(np.float32)
    packed = ops.pack_deq_scale(rng.uniform(0.01, 0.1, 3).astype(np.float32))
    got = _run(tmp_path, _dequant_graph(packed, pooled.shape, ksize=(3, 3)), pooled)
    np.testing.assert_array_equal(got, ops.ref_ascend_dequant(pooled, packed, ksize=(3, 3)))


def test_a_constant_mul_after_dequant_or_anti_quant_is_not_merged_into_it(tmp_path):
    # Grappler rewrites (t * deq) * c into t * (deq * c); the kernel rounds t * deq first.
    rng = np.random.default_rng(7)
    x = rng.integers(-2**20, 2**20, size=(4, 8, 8, 6)).astype(np.float32)
    packed = ops.pack_deq_scale(rng.uniform(1e-4, 1e-2, 6).astype(np.float32))
    c = rng.uniform(0.5, 2, 6).astype(np.float32)
    nodes = _dequant_graph(packed, x.shape) + [ops.const_node("c", c),
                                               _float_op("scaled", "Mul", ["dequant", "c"])]
    np.testing.assert_array_equal(_run(tmp_path, nodes, x),
                                  ops.ref_ascend_dequant(x, packed) * c)
    nodes = [_placeholder("x", x.shape), ops.ascend_anti_quant_node("aq", "x", 0.0123),
             ops.const_node("c", c), _float_op("scaled", "Mul", ["aq", "c"])]
    np.testing.assert_array_equal(_run(tmp_path, nodes, x),
                                  ops.ref_ascend_anti_quant(x, 0.0123) * c)


def test_anti_quant_is_x_times_scale(tmp_path):
    x = np.arange(-128, 128, dtype=np.float32).reshape(16, 16)
    nodes = [_placeholder("x", x.shape), ops.ascend_anti_quant_node("aq", "x", 6 / 255, 0.0)]
    got = _run(tmp_path, nodes, x)
    np.testing.assert_array_equal(got, x * np.float32(6 / 255))
    np.testing.assert_array_equal(got, ops.ref_ascend_anti_quant(x, 6 / 255))


def test_dequant_with_non_const_deq_scale_is_refused_by_name(tmp_path):
    nodes = [_placeholder("x", (2, 3)), _placeholder("deq", (3,), types_pb2.DT_UINT64),
             ops.ascend_dequant_node("my_dequant", "x", "deq")]
    with pytest.raises(ModelError, match="my_dequant.*'deq' is a Placeholder node, not a Const"):
        _run(tmp_path, nodes, {"x": np.zeros((2, 3)), "deq": np.zeros(3, np.uint64)})


def test_pack_unpack_round_trip_is_bit_exact():
    rng = np.random.default_rng(6)
    bits = rng.integers(0, 2 ** 32, size=64, dtype=np.uint64).astype(np.uint32)
    deq = bits.view(np.float32)                      # any float32 bits, NaNs included
    shift = rng.integers(0, 17, size=64)
    offset = rng.integers(-128, 128, size=64).astype(np.int8)
    got_deq, got_shift, got_offset = ops.unpack_deq_scale(ops.pack_deq_scale(deq, shift, offset))
    np.testing.assert_array_equal(got_deq.view(np.uint32), bits)
    np.testing.assert_array_equal(got_shift, shift)
    np.testing.assert_array_equal(got_offset, offset)


def test_packed_low_bits_hold_the_float32_deq():
    packed = ops.pack_deq_scale(np.array([6 / 255], np.float32), shift_n=5, offset_w=-1)
    assert packed.dtype == np.uint64
    assert int(packed[0]) & 0xFFFFFFFF == int(np.float32(6 / 255).view(np.uint32))
    assert (int(packed[0]) >> 32) & 0xFF == 5 and (int(packed[0]) >> 40) & 0xFF == 0xFF


def test_node_defs_carry_amct_attributes():
    node = ops.ascend_quant_node("q", "x", scale_d=6 / 255, offset_d=-128)
    assert node.op == "AscendQuant" and list(node.input) == ["x"]
    assert node.attr["scale"].f == np.float32(255 / 6) and node.attr["offset"].f == -128
    assert node.attr["dst_type"].s == b"INT8" and node.attr["quant_bits"].i == 8
    assert node.attr["T"].type == types_pb2.DT_FLOAT
    deq = ops.ascend_dequant_node("d", "conv", "deq", ksize=(3, 3))
    assert list(deq.attr["ksize"].list.i) == [3, 3] and deq.attr["data_format"].s == b"NHWC"
    const = ops.const_node("c", np.array([1, 2], np.uint64))
    assert const.attr["dtype"].type == types_pb2.DT_UINT64


def test_int4_quant_clips_to_minus_8_and_7(tmp_path):
    x = np.float32([-3.0, -1.1, 0.26, 0.75, 2.0, 9.0])
    nodes = [_placeholder("x", x.shape), ops.ascend_quant_node("q", "x", 0.25, 2, num_bits=4)]
    got = _run(tmp_path, nodes, x)
    # x * 4 + 2 = -10, -2.4, 3.04, 5, 10, 38 -> rint, clip to [-8, 7], minus the offset 2.
    np.testing.assert_array_equal(got, [-10, -4, 1, 3, 5, 5])
    np.testing.assert_array_equal(got, ops.ref_ascend_quant(x, 4.0, 2, num_bits=4))


def test_nchw_dequant_scales_axis_1(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2) - 6
    packed = ops.pack_deq_scale(np.float32([0.5, 0.25, 2.0]))
    nodes = [_placeholder("x", x.shape), ops.const_node("deq", packed),
             ops.ascend_dequant_node("dequant", "x", "deq", data_format="NCHW")]
    got = _run(tmp_path, nodes, x)
    np.testing.assert_array_equal(got, x * np.float32([0.5, 0.25, 2.0]).reshape(1, 3, 1, 1))
    np.testing.assert_array_equal(got, ops.ref_ascend_dequant(x, packed, data_format="NCHW"))
