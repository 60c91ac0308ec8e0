"""Whole deploy graphs through the Ascend op library: a hand-built quantized conv chain
against the NumPy references, and .pb files emitted by `amct_targets.build`, each run in a
stock TF session and through load_simulation's expansion, bit for bit."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from oplib_support import (PARAMS, assert_same, attr, float_op, placeholder, run_session)
from tensorflow.core.framework import attr_value_pb2, graph_pb2

import amct_targets as at
from amct_targets.approx import ref_fast_softmax
from amct_targets.approx.ops import fast_softmax_node
from amct_targets.deploy import ascend_ops as ops
from amct_targets.simulate import load_simulation


# --- a whole quantized chain ------------------------------------------------------------------

def conv2d_same(x, w):
    """Float64 NHWC convolution, SAME padding: exact for these integer operands."""
    kh, kw = w.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)))
    patches = sliding_window_view(padded, (kh, kw), axis=(1, 2))   # N, H, W, C, kh, kw
    return np.einsum("nhwcij,ijco->nhwo", patches.astype(np.float64), w.astype(np.float64))


def test_conv_dequant_pool_fast_softmax_chain(oplib, tmp_path):
    """quant -> int8 conv -> bias -> dequant (per channel, shift N on two channels) -> relu
    -> quant -> 2x2 AvgPool -> dequant(ksize) -> FastSoftmax over the channels."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((2, 6, 6, 3)) * 3).astype(np.float32)
    x.flat[:4] = [0.25, -1.25, 0.75, -0.25]   # exact ties at scale_d = 0.5
    w = rng.integers(-128, 128, size=(3, 3, 3, 4)).astype(np.int8)
    bias = rng.integers(-5000, 5000, size=4).astype(np.float32)
    deq1 = ops.pack_deq_scale(rng.uniform(1e-4, 1e-3, 4).astype(np.float32),
                              shift_n=np.array([0, 2, 0, 7]))
    deq2 = ops.pack_deq_scale(np.float32(0.05))
    window = attr(list=attr_value_pb2.AttrValue.ListValue(i=[1, 2, 2, 1]))
    nodes = [
        placeholder("x", x.shape), ops.ascend_quant_node("q1", "x", 0.5, -3),
        ops.const_node("w", w), ops.const_node("w_offset", np.zeros(1, np.int8)),
        ops.ascend_weight_quant_node("wq", "w", "w_offset"),
        float_op("conv", "Conv2D", ["q1", "wq"], padding=attr(s=b"SAME"),
                 strides=attr(list=attr_value_pb2.AttrValue.ListValue(i=[1, 1, 1, 1]))),
        ops.const_node("bias", bias), float_op("bias_add", "BiasAdd", ["conv", "bias"]),
        ops.const_node("deq1", deq1), ops.ascend_dequant_node("dq1", "bias_add", "deq1"),
        float_op("relu", "Relu", ["dq1"]), ops.ascend_quant_node("q2", "relu", 0.05, 0),
        float_op("pool", "AvgPool", ["q2"], ksize=window, strides=window,
                 padding=attr(s=b"VALID"), data_format=attr(s=b"NHWC")),
        ops.const_node("deq2", deq2), ops.ascend_dequant_node("dq2", "pool", "deq2", (2, 2)),
        fast_softmax_node("probs", ["dq2"], PARAMS),
    ]
    pb = tmp_path / "chain.pb"
    pb.write_bytes(graph_pb2.GraphDef(node=nodes).SerializeToString())
    pooled, native = run_session(pb, {"x": x}, ["pool", "probs"])
    simulated = load_simulation(pb)(x)
    q1 = ops.ref_ascend_quant(x, np.float32(2.0), -3)
    acc = (conv2d_same(q1, ops.ref_ascend_weight_quant(w, np.zeros(1, np.int8))) + bias)
    relu = np.maximum(ops.ref_ascend_dequant(acc.astype(np.float32), deq1), 0)
    q2 = ops.ref_ascend_quant(relu, np.float32(1 / 0.05), 0)
    pool_f64 = q2.reshape(2, 3, 2, 3, 2, 4).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(pooled - pool_f64).max() < 1e-5      # TF's pool on the reference's q2
    dq2 = ops.ref_ascend_dequant(pooled, deq2, ksize=(2, 2))
    reference = ref_fast_softmax(dq2, PARAMS.a, PARAMS.b, PARAMS.clip_value)
    assert_same(native, simulated, reference)
    assert len(np.unique(q2)) > 10 and (q2 == 127).any()   # a real spread, clamped at the top


# --- deploy graphs made by the package --------------------------------------------------------

def test_quantized_demo_deploy_pb_runs_in_stock_tf(oplib, tmp_path, demo_pb, demo_calib):
    report = at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=tmp_path / "out",
                      config={"passes": {"quantize": {"batch_num": 2}}})["ascend310"]
    pb = tmp_path / "out" / "ascend310" / report["artifacts"]["pb"]
    types = [n.op for n in graph_pb2.GraphDef.FromString(pb.read_bytes()).node]
    assert [types.count(t) for t in ("AscendQuant", "AscendWeightQuant", "AscendDequant")] == \
        [4, 4, 4]
    simulation = load_simulation(pb)
    images = np.load(demo_calib)["image"]
    (name,) = [s.name for s in simulation.inputs]
    fetches = [o.split(":")[0] for o in simulation.outputs]
    native = run_session(pb, {name: images}, fetches, any_batch=True)
    simulated = simulation({name: images})
    for fetch, value in zip(simulation.outputs, native):
        np.testing.assert_array_equal(value, simulated[fetch])
    assert np.abs(native[0]).max() > 0


def test_quantized_matmul_and_fast_softmax_chain_from_the_build(oplib, tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(11)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 32], name="features")
        logits = tf.nn.bias_add(tf.matmul(x, rng.normal(0, 0.7, (32, 10)).astype(np.float32)),
                                rng.normal(0, 0.5, 10).astype(np.float32), name="logits")
        tf.nn.softmax(logits, name="probs")
    src = tmp_path / "softmax.pb"
    src.write_bytes(graph.as_graph_def().SerializeToString())
    calib = rng.normal(0, 1, (256, 32)).astype(np.float32)
    report = at.build(src, "ascend310p", calib=calib, output_dir=tmp_path / "out",
                      config={"passes": {"fast_softmax": {"enabled": True},
                                         "quantize": {"batch_num": 1}}},
                      plugins=["amct_targets.passes.fast_softmax"])["ascend310p"]
    pb = tmp_path / "out" / "ascend310p" / report["artifacts"]["pb"]
    types = {n.op for n in graph_pb2.GraphDef.FromString(pb.read_bytes()).node}
    assert {"AscendQuant", "AscendWeightQuant", "AscendDequant", "FastSoftmax"} <= types
    held_out = rng.normal(0, 1, (64, 32)).astype(np.float32)
    (native,) = run_session(pb, {"features": held_out}, ["probs"], any_batch=True)
    simulated = load_simulation(pb, outputs=["probs:0"])(held_out)
    np.testing.assert_array_equal(native, simulated)
    assert np.abs(native.sum(axis=1) - 1).max() < 1e-5
