"""The Ascend op library (amct_targets/deploy/oplib): real builds with the system compiler,
real TF sessions on imported deploy graphs, bit for bit against the NumPy references and the
stock-op expansion of load_simulation.

Why bit-exactness holds: the kernels repeat the references' float32/double steps one by one
(compiled without FMA contraction), and Conv2D/MatMul/AvgPool are the same TF kernels in both
paths, fed identical tensors.
"""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
from oplib_support import (LIBRARY_NAME, PARAMS, assert_same, attr, float_op,
                           native_and_simulated, placeholder, python_process, run_session)
from tensorflow.core.framework import attr_value_pb2, graph_pb2, types_pb2

from amct_targets.approx import FastSoftmaxParams, invalid_reason, ref_fast_softmax
from amct_targets.approx.ops import fast_softmax_node
from amct_targets.deploy import ascend_ops as ops
from amct_targets.deploy.oplib import load_ascend_op_library
from amct_targets.simulate import load_simulation


# --- loading ----------------------------------------------------------------------------------

def test_second_call_in_a_process_neither_builds_nor_loads_again(oplib, monkeypatch):
    monkeypatch.setenv("CXX", str(oplib.cxx))
    monkeypatch.setenv("AMCT_TARGETS_CACHE_DIR", str(oplib.cache))
    mtime = oplib.library().stat().st_mtime_ns
    start = time.perf_counter()
    assert load_ascend_op_library() is oplib.module
    assert time.perf_counter() - start < 0.05
    assert oplib.library().stat().st_mtime_ns == mtime
    assert oplib.compiler_runs() == 1
    # Once loaded, the process keeps its library: another cache folder is not even looked at.
    monkeypatch.setenv("AMCT_TARGETS_CACHE_DIR", str(oplib.cache.parent / "elsewhere"))
    assert load_ascend_op_library() is oplib.module
    assert not (oplib.cache.parent / "elsewhere").exists()


@pytest.mark.parametrize("cxx, reason", [
    ("/bin/false", "(exit status 1, log: "),
    ("no-such-compiler-amct", "(not found)"),
])
def test_without_a_working_compiler_it_warns_once_and_returns_none(tmp_path, cxx, reason):
    code = ("from tensorflow.python.framework import op_def_registry as r\n"
            "import amct_targets, amct_targets.deploy.ascend_ops, amct_targets.deploy.oplib as o\n"
            "assert r.get('AscendQuant') is None  # nothing loads at import\n"
            "assert o.load_ascend_op_library() is None\n"
            "assert o.load_ascend_op_library() is None\n"
            "assert r.get('AscendQuant') is None\n"
            "print('ok')\n")
    proc = python_process(code, {"CXX": cxx, "AMCT_TARGETS_CACHE_DIR": str(tmp_path / "cache")})
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and out == "ok\n", err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"amct-targets: cannot build the Ascend op library with compiler "
                               f"'{cxx}' {reason}")
    assert lines[0].endswith("run through the stock-op expansion of amct_targets.load_simulation "
                             "instead")
    assert not list((tmp_path / "cache").glob(f"oplib/*/{LIBRARY_NAME}"))


def test_op_defs_match_tf_adapter_and_old_amct_nodes_get_its_defaults(oplib, tmp_path):
    from tensorflow.python.framework import op_def_registry

    # tf_adapter/ops/aicore/amct_ops.cc (Ascend/tensorflow): attr -> default (None: required).
    expected = {
        "AscendQuant": {"T": None, "dst_type": b"INT8", "quant_bits": 8, "scale": None,
                        "offset": None},
        "AscendWeightQuant": {"T": None, "dst_type": b"INT8"},
        "AscendDequant": {"T": None, "ksize": None, "data_format": b"NHWC"},
        "AscendAntiQuant": {"T": None, "scale": None, "offset": None},
        "FastSoftmax": {"T": types_pb2.DT_FLOAT, "a": None, "b": None, "clip_value": None,
                        "axis": -1},
    }
    for op_type, attrs in expected.items():
        op_def = op_def_registry.get(op_type)
        found = {}
        for attr in op_def.attr:
            kind = attr.default_value.WhichOneof("value")
            found[attr.name] = getattr(attr.default_value, kind) if kind else None
        assert found == attrs, op_type
    quant = {a.name: a for a in op_def_registry.get("AscendQuant").attr}
    assert list(quant["dst_type"].allowed_values.list.s) == [b"INT4", b"INT8"]
    assert list(quant["T"].allowed_values.list.type) == [
        types_pb2.DT_HALF, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE]
    weight = op_def_registry.get("AscendWeightQuant")
    assert [(a.name, a.type) for a in weight.input_arg] == [("x", types_pb2.DT_INT8),
                                                            ("offset_w", types_pb2.DT_INT8)]
    dequant = op_def_registry.get("AscendDequant")
    assert [a.type for a in dequant.input_arg][1] == types_pb2.DT_UINT64
    # An AscendQuant as older AMCT/tf_adapter wrote it (no dst_type): INT8 by default.
    old = ops.ascend_quant_node("q", "x", 0.5, 0)
    del old.attr["dst_type"]
    x = np.array([[100.0, -100.0, 0.25, -1.25]], np.float32)
    native, simulated = native_and_simulated(tmp_path, [placeholder("x", (1, 4)), old],
                                             {"x": x}, "q")
    assert_same(native, simulated, [[127, -128, 1, -3]])


# --- AscendQuant ------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_quant_random_and_exact_ties(oplib, tmp_path, bits):
    rng = np.random.default_rng(bits)
    half = 2 ** (bits - 1)
    # scale_d = 0.5: x * 2 of a quarter-multiple is an integer or an exact .5 tie.
    ties = (rng.integers(-4 * half, 4 * half, size=(4, 50)) / 4).astype(np.float32)
    ties[0, :8] = [0.25, 0.75, -0.25, -1.25, 1.75, -2.75, np.inf, -np.inf]
    scale_d, offset_d = (0.5, -3) if bits == 8 else (0.5, 2)
    random = (rng.standard_normal((4, 50)) * half * 0.3).astype(np.float32)
    for x, sd in ((ties, scale_d), (random, 0.0371 if bits == 8 else 0.61)):
        nodes = [placeholder("x", x.shape), ops.ascend_quant_node("q", "x", sd, offset_d, bits)]
        native, simulated = native_and_simulated(tmp_path, nodes, {"x": x}, "q")
        with np.errstate(invalid="ignore"):  # inf - inf in round_half_away, then clamped
            reference = ops.ref_ascend_quant(x, np.float32(1 / sd), offset_d, bits)
        assert_same(native, simulated, reference)
        if x is ties:  # both clamps taken
            assert (native.min() + offset_d, native.max() + offset_d) == (-half, half - 1)
    # ties really round away from zero: 0.25 * 2 = 0.5 -> 1, -1.25 * 2 = -2.5 -> -3
    native, _ = native_and_simulated(
        tmp_path, [placeholder("x", (1, 4)), ops.ascend_quant_node("q", "x", 0.5, 0, bits)],
        {"x": np.float32([[0.25, 0.75, -0.25, -1.25]])}, "q")
    np.testing.assert_array_equal(native, [[1, 2, -1, -3]])


def test_empty_input_and_bad_shapes_are_invalid_argument_errors(oplib, tmp_path):
    import tensorflow as tf

    cases = [
        ([placeholder("x", (-1, 4)), ops.ascend_quant_node("q", "x", 0.5, 0)],
         {"x": np.zeros((0, 4), np.float32)}, "q", "AscendQuant 'q': input x is empty"),
        ([placeholder("x", (2, 3)), ops.const_node("deq", ops.pack_deq_scale(np.ones(4))),
          ops.ascend_dequant_node("d", "x", "deq")], {"x": np.ones((2, 3), np.float32)}, "d",
         "AscendDequant 'd': 4 per-channel deq_scale values need as many channels"),
        ([placeholder("x", (2, 3)), ops.const_node("deq", ops.pack_deq_scale(np.ones(3))),
          ops.ascend_dequant_node("d", "x", "deq", data_format="NCHW")],
         {"x": np.ones((2, 3), np.float32)}, "d", "need a 4-D NCHW input"),
        ([placeholder("w", (3, 4), types_pb2.DT_INT8),
          ops.const_node("o", np.zeros(3, np.int8)), ops.ascend_weight_quant_node("wq", "w", "o")],
         {"w": np.ones((3, 4), np.int8)}, "wq", "offset_w of shape [3] does not broadcast"),
        (dequant_nodes(ops.pack_deq_scale(np.float32(1)), (2, 3), ksize=(0, 2)),
         {"x": np.ones((2, 3), np.float32)}, "d",
         "AscendDequant 'd': ksize must start with two positive entries (the pooling window, "
         "[1, 1] after a Conv or MatMul), got [0, 2]"),
        ([placeholder("x", (2, 5)), fast_softmax_node("s", ["x"], FastSoftmaxParams(
            0.4, 0.06, 2.5), axis=2)], {"x": np.ones((2, 5), np.float32)}, "s",
         "FastSoftmax 's': axis 2 is out of range"),
    ]
    for nodes, feeds, fetch, message in cases:
        pb = tmp_path / "bad.pb"
        pb.write_bytes(graph_pb2.GraphDef(node=nodes).SerializeToString())
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            run_session(pb, feeds, [fetch])


# --- AscendWeightQuant, AscendAntiQuant --------------------------------------------------------

@pytest.mark.parametrize("offset_shape", [(1,), (1, 1, 1, 6), (6,), (1, 1, 5, 1)])
def test_weight_quant_per_tensor_and_per_channel(oplib, tmp_path, offset_shape):
    rng = np.random.default_rng(len(offset_shape))
    w = rng.integers(-128, 128, size=(3, 3, 5, 6)).astype(np.int8)
    offset = rng.integers(-128, 128, size=offset_shape).astype(np.int8)
    nodes = [placeholder("w", w.shape, types_pb2.DT_INT8), ops.const_node("o", offset),
             ops.ascend_weight_quant_node("wq", "w", "o")]
    native, simulated = native_and_simulated(tmp_path, nodes, {"w": w}, "wq")
    assert_same(native, simulated, ops.ref_ascend_weight_quant(w, offset))
    assert native.max() - native.min() > 255 or offset.size == 1  # offsets did vary


def test_anti_quant_is_x_times_scale(oplib, tmp_path):
    x = np.concatenate([np.arange(-128, 128), np.random.default_rng(0).standard_normal(256)])
    x = x.astype(np.float32).reshape(2, 16, 16)
    nodes = [placeholder("x", x.shape), ops.ascend_anti_quant_node("aq", "x", 6 / 255, 3.0)]
    native, simulated = native_and_simulated(tmp_path, nodes, {"x": x}, "aq")
    assert_same(native, simulated, ops.ref_ascend_anti_quant(x, 6 / 255, 3.0))


# --- AscendDequant ----------------------------------------------------------------------------

def dequant_nodes(packed, shape, **kw):
    return [placeholder("x", shape), ops.const_node("deq", packed),
            ops.ascend_dequant_node("d", "x", "deq", **kw)]


def test_dequant_per_tensor_and_per_channel_nhwc_and_2d(oplib, tmp_path):
    rng = np.random.default_rng(7)
    for shape, channels in (((2, 5, 5, 4), 4), ((2, 5, 5, 4), 1), ((6, 10), 10), ((6, 10), 1)):
        x = rng.integers(-2**22, 2**22, size=shape).astype(np.float32)
        packed = ops.pack_deq_scale(rng.uniform(1e-6, 1e-2, channels).astype(np.float32))
        native, simulated = native_and_simulated(tmp_path, dequant_nodes(packed, shape),
                                                 {"x": x}, "d")
        assert_same(native, simulated, ops.ref_ascend_dequant(x, packed))


def test_dequant_shift_n_floors_and_saturates_to_int16(oplib, tmp_path):
    rng = np.random.default_rng(8)
    x = rng.integers(-2_000_000, 2_000_000, size=(2, 3, 3, 3)).astype(np.float32)
    x.flat[:4] = [-9, 9, -262144, 262151]
    deq = np.array([0.003, 0.0007, 0.0123], np.float32)
    for packed in (ops.pack_deq_scale(deq, shift_n=np.array([0, 3, 16])),
                   ops.pack_deq_scale(deq, shift_n=4),
                   ops.pack_deq_scale(np.float32(0.25), shift_n=2)):
        native, simulated = native_and_simulated(tmp_path, dequant_nodes(packed, x.shape),
                                                 {"x": x}, "d")
        assert_same(native, simulated, ops.ref_ascend_dequant(x, packed))
    assert native.flat[0] == -3.0     # floor(-9 / 4) * 0.25 * 4 = -12 * 0.25
    saturated = np.float32(np.float32(32767 * np.float32(0.25)) * 4)
    assert (native == saturated).sum() == (np.floor(x / 4) >= 32767).sum() > 0


def test_dequant_nchw_per_channel_with_shift(oplib, tmp_path):
    rng = np.random.default_rng(9)
    x = rng.integers(-300_000, 300_000, size=(2, 3, 4, 5)).astype(np.float32)
    packed = ops.pack_deq_scale(np.array([0.01, 0.002, 0.0301], np.float32),
                                shift_n=np.array([0, 1, 5]))
    native, simulated = native_and_simulated(
        tmp_path, dequant_nodes(packed, x.shape, data_format="NCHW"), {"x": x}, "d")
    assert_same(native, simulated, ops.ref_ascend_dequant(x, packed, data_format="NCHW"))
    for c in range(3):   # channel c of axis 1 has deq[c] and shift[c]
        np.testing.assert_array_equal(native[:, c], ops.ref_ascend_dequant(x[:, c], packed[c]))


def test_avgpool_between_quant_and_dequant_uses_the_window_area(oplib, tmp_path):
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((2, 6, 6, 3)) * 4).astype(np.float32)
    for ksize, channels in (((2, 2), 1), ((3, 3), 3)):
        packed = ops.pack_deq_scale(rng.uniform(0.01, 0.1, channels).astype(np.float32))
        window = attr(list=attr_value_pb2.AttrValue.ListValue(i=[1, *ksize, 1]))
        nodes = [placeholder("x", x.shape), ops.ascend_quant_node("q", "x", 0.05, 4),
                 float_op("pool", "AvgPool", ["q"], ksize=window, strides=window,
                          padding=attr(s=b"VALID"), data_format=attr(s=b"NHWC")),
                 ops.const_node("deq", packed),
                 ops.ascend_dequant_node("d", "pool", "deq", ksize=ksize)]
        pb = tmp_path / "pool.pb"
        pb.write_bytes(graph_pb2.GraphDef(node=nodes).SerializeToString())
        pooled, native = run_session(pb, {"x": x}, ["pool", "d"])
        simulated = load_simulation(pb)(x)
        assert not np.array_equal(pooled, np.round(pooled))   # fractional pool outputs
        assert_same(native, simulated, ops.ref_ascend_dequant(pooled, packed, ksize=ksize))


# --- FastSoftmax ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, axis", [((50, 37), -1), ((4, 9, 6), 1), ((7, 3, 5), 0)])
def test_fast_softmax_rows_along_any_axis(oplib, tmp_path, shape, axis):
    assert invalid_reason(PARAMS) is None
    x = (np.random.default_rng(len(shape) + axis).standard_normal(shape) * 3).astype(np.float32)
    nodes = [placeholder("x", shape), fast_softmax_node("s", ["x"], PARAMS, axis=axis)]
    native, simulated = native_and_simulated(tmp_path, nodes, {"x": x}, "s")
    reference = ref_fast_softmax(x, PARAMS.a, PARAMS.b, PARAMS.clip_value, axis)
    assert_same(native, simulated, reference)
    assert np.abs(native.sum(axis=axis) - 1).max() < 1e-5
    assert (x - x.max(axis=axis, keepdims=True) < -PARAMS.clip_value).any()  # clamps taken
