"""Build memory: weights set aside while TF freezes and grappler canonicalizes, weights
captured (not embedded) in the functions that run graphs. Each saving must leave every
byte of the result as it was: compared here against the plain path on real graphs."""
from __future__ import annotations

import numpy as np
import pytest

from amct_targets.graph import set_aside
from amct_targets.graph.canonicalize import canonicalize, canonicalize_owned
from amct_targets.graph.load import model_from_graph_def
from models import shared_weight_graph, small_bn_cnn, tf1_fused_bn_graph

NEVER = 1 << 40


def _bytes(model) -> bytes:
    return model.graph_def.SerializeToString(deterministic=True)


def _canonical_both_ways(monkeypatch, model):
    monkeypatch.setattr(set_aside, "SET_ASIDE_BYTES", 1)
    light, aside = set_aside.set_aside_weights(model.graph_def, model.output_nodes)
    with_aside = _bytes(canonicalize(model))
    monkeypatch.setattr(set_aside, "SET_ASIDE_BYTES", NEVER)
    return aside, with_aside, _bytes(canonicalize(model))


def _conv_mul_zero_graph():
    """A conv read by a Mul (MulConvPushDown), a MatMul of all-zero weights (folded), an
    Identity-read MatMul weight, a directly read one, and one read both ways (kept)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 6, 2], name="input")
        w = tf.constant(rng.normal(size=(3, 3, 2, 4)).astype(np.float32), name="conv_w")
        y = tf.nn.conv2d(x, w, strides=1, padding="SAME", name="conv")
        y = tf.multiply(y, tf.constant(rng.uniform(1, 2, 4).astype(np.float32)), name="scale")
        flat = tf.reshape(y, [1, -1])
        zeros = tf.constant(np.zeros((144, 5), np.float32), name="zero_w")
        dense = tf.constant(rng.normal(size=(144, 5)).astype(np.float32), name="dense_w")
        direct = tf.constant(rng.normal(size=(144, 5)).astype(np.float32), name="direct_w")
        mixed = tf.constant(rng.normal(size=(144, 5)).astype(np.float32), name="mixed_w")
        out = tf.matmul(flat, zeros) + tf.matmul(flat, tf.identity(dense, name="dense_read")) \
            + tf.matmul(flat * 2.0, direct) + tf.matmul(flat, mixed) \
            + tf.matmul(flat, tf.identity(mixed, name="mixed_read"))
        tf.identity(out, name="output")
    return graph.as_graph_def()


@pytest.mark.parametrize("make", [tf1_fused_bn_graph, shared_weight_graph,
                                  _conv_mul_zero_graph])
def test_set_aside_leaves_the_canonical_graph_byte_identical(monkeypatch, make):
    model = model_from_graph_def(make(), outputs=["output"], canonical=False)
    aside, with_aside, plain = _canonical_both_ways(monkeypatch, model)
    assert with_aside == plain
    if make is _conv_mul_zero_graph:
        # the conv (a Mul reads it), the zero and the mixed-read weights stay
        assert set(aside) == {"dense_read", "direct_w"}


def test_set_aside_of_keras_variable_reads(monkeypatch):
    model = model_from_graph_def(_frozen_small_cnn(), outputs=None, canonical=False)
    aside, with_aside, plain = _canonical_both_ways(monkeypatch, model)
    assert aside, "the frozen Keras reads (Const -> Identity -> Conv2D/MatMul) go aside"
    assert all(n.endswith("ReadVariableOp") for n in aside)
    assert with_aside == plain


def _frozen_small_cnn(threshold: int = NEVER):
    from amct_targets.graph.load import _frozen_keras

    old, set_aside.SET_ASIDE_BYTES = set_aside.SET_ASIDE_BYTES, threshold
    try:
        return _frozen_keras(small_bn_cnn(seed=3), "small", "small").graph_def
    finally:
        set_aside.SET_ASIDE_BYTES = old


def test_freezing_with_weights_aside_gives_the_same_frozen_graph():
    plain = _frozen_small_cnn()
    aside = _frozen_small_cnn(threshold=1)
    assert aside.SerializeToString(deterministic=True) == \
        plain.SerializeToString(deterministic=True)


def test_canonicalize_owned_takes_the_model_out_of_its_list():
    model = model_from_graph_def(shared_weight_graph(), outputs=["output"], canonical=False)
    box = [model]
    owned = canonicalize_owned(box)
    assert box == []
    assert _bytes(owned) == _bytes(canonicalize(model))


def test_functions_capture_large_weights_instead_of_embedding_them(monkeypatch):
    """compile_graph: same results; the function's graph holds no large Const."""
    import tensorflow as tf

    from amct_targets.graph import run
    from amct_targets.hooks.manager import default_plugins

    rng = np.random.default_rng(1)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 200], name="x")
        w = tf.constant(rng.normal(size=(200, 300)).astype(np.float32), name="w")
        tf.nn.relu(tf.matmul(x, w), name="y")
    graph_def = graph.as_graph_def()
    ops = default_plugins().ops
    seen = {}

    def extend(g, tensor):
        seen["consts"] = [o.get_attr("value").ByteSize() for o in g.get_operations()
                          if o.type == "Const"]
        return [tensor("y")]

    feed = rng.normal(size=(4, 200)).astype(np.float32)
    captured = run.compile_graph(graph_def, ["x"], extend, ops=ops)(feed)[0]
    assert max(seen["consts"], default=0) < run.CAPTURED_CONST_BYTES
    monkeypatch.setattr(run, "CAPTURED_CONST_BYTES", NEVER)
    embedded = run.compile_graph(graph_def, ["x"], extend, ops=ops)(feed)[0]
    assert max(seen["consts"]) >= 200 * 300 * 4
    np.testing.assert_array_equal(captured, embedded)
    weights = next(tf.make_ndarray(n.attr["value"].tensor) for n in graph_def.node
                   if n.name == "w")
    np.testing.assert_allclose(captured, np.maximum(feed @ weights, 0), rtol=1e-5, atol=1e-4)


POOL_PROBE = """
import gc, json, os, sys
from amct_targets.quiet import import_tensorflow_quietly
import_tensorflow_quietly()
import tensorflow as tf
x = tf.zeros([512, 512])
try:
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
except ValueError:   # the default allocator keeps no statistics
    peak = None
print(json.dumps({"peak": peak, "env": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"),
                  "frozen": gc.get_freeze_count()}))
"""


@pytest.mark.parametrize("user_value", [None, "false"])
def test_tool_import_uses_the_pool_allocator_unless_the_user_chose(user_value):
    """The pool allocator (docs/speed.md) is on when the tool imports TensorFlow, the variable
    does not leak to child processes, a user's own setting wins; TF's import-time objects
    are frozen out of the garbage collector."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if user_value is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = user_value
    out = subprocess.run([sys.executable, "-c", POOL_PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["env"] == user_value
    assert probe["frozen"] > 100_000
    if user_value is None:
        assert probe["peak"] >= 512 * 512 * 4    # the pool's statistics: it is in use
    else:
        assert probe["peak"] is None


def test_fidelity_sums_match_float64_numpy():
    """The per-layer fidelity's float32 row sums, added in float64, give the float64 sums to
    1e-6 relative, on a conv-like activation whose simulated twin is 99.99% similar."""
    import tensorflow as tf

    from amct_targets.quant.int8 import _pair_sums, _pair_sums_function

    rng = np.random.default_rng(3)
    ref = np.maximum(rng.standard_t(4, size=(8, 28, 28, 96)), 0).astype(np.float32) * 7.0
    act = (ref + rng.normal(scale=0.05, size=ref.shape)).astype(np.float32)
    got = [float(v) for v in _pair_sums(tf.constant(ref), tf.constant(act))]
    r, a = ref.astype(np.float64).ravel(), act.astype(np.float64).ravel()
    want = [r @ a, r @ r, a @ a, np.sum((r - a) ** 2)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    cosine = got[0] / np.sqrt(got[1] * got[2])
    assert abs(cosine - want[0] / np.sqrt(want[1] * want[2])) < 1e-9
    # The fidelity's one traced function gives the same numbers for every shape.
    pair_sums = _pair_sums_function()
    for x, y in ((ref, act), (ref[:2, :5], act[:2, :5]), (ref[0, 0], act[0, 0])):
        shared = [float(v) for v in pair_sums(tf.constant(x), tf.constant(y))]
        assert shared == [float(v) for v in _pair_sums(tf.constant(x), tf.constant(y))]


def test_nested_functions_of_tool_graphs_run_without_grappler():
    """A TF function called inside a tool graph (the calibration summaries, the fidelity
    sums) keeps the session config of its tracing in its call op: it must say grappler off,
    or grappler optimizes every nested function on the first run (seconds on a ResNet)."""
    import tensorflow as tf

    from amct_targets.graph import run
    from amct_targets.hooks.manager import default_plugins

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        tf.nn.relu(x, name="y")
    square_sum = tf.function(lambda t: tf.reduce_sum(t * t), autograph=False)
    seen = {}

    def extend(g, tensor):
        seen["graph"] = g
        return [square_sum(tensor("y"))]

    fn = run.compile_graph(graph.as_graph_def(), ["x"], extend, ops=default_plugins().ops)
    assert float(fn(np.array([[1, -2, 3, 4]], np.float32))[0]) == 26.0
    calls = [o for o in seen["graph"].get_operations() if "PartitionedCall" in o.type]
    assert calls
    for op in calls:
        config = tf.compat.v1.ConfigProto.FromString(op.get_attr("config_proto"))
        assert config.graph_options.rewrite_options.disable_meta_optimizer
