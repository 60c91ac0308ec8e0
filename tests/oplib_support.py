"""Shared by the op-library tests: one real build of the library per test session, and
graphs run both ways (the library's kernels in a TF session, the stock-op expansion)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from conftest import REPO
from tensorflow.core.framework import (attr_value_pb2, graph_pb2, node_def_pb2,
                                       tensor_shape_pb2, types_pb2)

from amct_targets.approx import FastSoftmaxParams
from amct_targets.deploy.oplib import LIBRARY_NAME, OP_TYPES, load_ascend_op_library
from amct_targets.graph.run import expand_custom_ops
from amct_targets.hooks.manager import default_ops
from amct_targets.simulate import free_batch_dimension, load_simulation

# Valid FastSoftmax parameters (p non-decreasing and positive on [-2.5, 0]).
PARAMS = FastSoftmaxParams.rounded(0.4, 0.06, 2.5)
# A script standing in for the compiler: counts its runs, then is g++.
COUNTING_CXX = '#!/bin/sh\necho run >> "{count}"\nexec g++ "$@"\n'
LOAD_SCRIPT = ("import time; from amct_targets.deploy.oplib import load_ascend_op_library as load;"
               "t = time.perf_counter(); m = load(); print(m is not None, time.perf_counter() - t)")


def python_process(code: str, env: dict) -> subprocess.Popen:
    """`python -c code` on this checkout, with `env` added to the environment."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    return subprocess.Popen([sys.executable, "-c", code], env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@dataclass
class Built:
    module: ModuleType      # what load_ascend_op_library() returned in this process
    cache: Path             # AMCT_TARGETS_CACHE_DIR of the build
    count_file: Path        # one line per compiler run
    cxx: Path               # the counting compiler script (CXX)
    seconds: list[float]    # each building process's load_ascend_op_library() time

    def compiler_runs(self) -> int:
        return len(self.count_file.read_text().split()) if self.count_file.exists() else 0

    def library(self) -> Path:
        (path,) = self.cache.glob(f"oplib/*/{LIBRARY_NAME}")
        return path


def build_and_load(root, monkeypatch) -> Built:
    """Two processes ask for the library at once on an empty cache in `root`: one compiles,
    the other waits and loads; then this process loads the cached file without compiling."""
    cache, count = root / "cache", root / "compiler_runs"
    cxx = root / "counting-g++"
    cxx.write_text(COUNTING_CXX.format(count=count))
    cxx.chmod(0o755)
    env = {"CXX": str(cxx), "AMCT_TARGETS_CACHE_DIR": str(cache)}
    procs = [python_process(LOAD_SCRIPT, env) for _ in range(2)]
    results = [p.communicate(timeout=1800) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0 and out.startswith("True"), err
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    module = load_ascend_op_library()
    assert module is not None
    built = Built(module, cache, count, cxx, [float(out.split()[1]) for out, _ in results])
    assert built.compiler_runs() == 1
    return built


# --- graphs -----------------------------------------------------------------------------------

def attr(**kw):
    return attr_value_pb2.AttrValue(**kw)


def placeholder(name, shape, dtype=types_pb2.DT_FLOAT):
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
    return node_def_pb2.NodeDef(name=name, op="Placeholder", attr={
        "dtype": attr(type=dtype), "shape": attr(shape=tensor_shape_pb2.TensorShapeProto(
            dim=dims))})


def float_op(name, op, inputs, **attrs):
    return node_def_pb2.NodeDef(name=name, op=op, input=inputs,
                                attr={"T": attr(type=types_pb2.DT_FLOAT), **attrs})


def run_session(pb, feeds: dict, fetches: list[str], any_batch=False) -> list[np.ndarray]:
    """Stock TensorFlow: import the .pb and run it, the Ascend ops on the library's kernels.
    `any_batch`: free the static batch of an emitted .pb (its atc command's, 1 by default)."""
    import tensorflow as tf

    graph_def = graph_pb2.GraphDef.FromString(pb.read_bytes())
    if any_batch:
        graph_def = free_batch_dimension(graph_def)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run([f"{f}:0" for f in fetches], {f"{k}:0": v for k, v in feeds.items()})


def native_and_simulated(tmp_path, nodes, feeds: dict, fetch: str):
    """(library kernels, stock-op expansion) outputs of the same .pb file."""
    pb = tmp_path / "model.pb"
    graph_def = graph_pb2.GraphDef(node=nodes)
    pb.write_bytes(graph_def.SerializeToString())
    # load_simulation expands every registered op even now that TensorFlow knows them
    expanded = expand_custom_ops(graph_def, default_ops())
    assert not {n.op for n in expanded.node} & set(OP_TYPES)
    (native,) = run_session(pb, feeds, [fetch])
    simulated = load_simulation(pb, outputs=[f"{fetch}:0"])(feeds)[f"{fetch}:0"]
    return native, simulated


def assert_same(native, simulated, reference):
    np.testing.assert_array_equal(native, reference)
    np.testing.assert_array_equal(native, simulated)
    assert native.dtype == simulated.dtype == np.float32
