"""Run an emitted .pb in stock TensorFlow for accuracy simulation.

Ascend op types (AscendQuant, AscendDequant, ...) are expanded into stock TF ops by the
expanders in `EXPANDERS` before import; a graph with an op type that neither TensorFlow nor
an expander knows is refused with the node's name.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping

import numpy as np

from amct_targets.errors import ModelError
from amct_targets.graph.load import default_outputs, placeholder_specs, read_graph_def

# op type -> function(graph_def) -> graph_def with those nodes expanded into stock ops.
EXPANDERS: dict[str, Callable] = {}


def _unknown_ops(graph_def) -> list[tuple[str, str]]:
    from tensorflow.python.framework import op_def_registry

    return [(n.op, n.name) for n in graph_def.node
            if op_def_registry.get(n.op) is None and n.op not in EXPANDERS]


def expand_ascend_ops(graph_def, where: str = "<graph>"):
    """The graph with every Ascend op replaced by stock TF ops (same numerics)."""
    import amct_targets.approx.ops  # noqa: F401  (registers the FastSoftmax expander)
    import amct_targets.deploy.ascend_ops  # noqa: F401  (registers the expanders)

    unknown = _unknown_ops(graph_def)
    if unknown:
        op, node = unknown[0]
        raise ModelError(f"{where}: node '{node}' has op type {op}, which stock TensorFlow "
                         "cannot run and amct-targets has no simulation expansion for")
    for op_type in sorted({n.op for n in graph_def.node} & set(EXPANDERS)):
        graph_def = EXPANDERS[op_type](graph_def)
    return graph_def


def graph_runner(graph_def, feeds: list[str], fetches: list[str]) -> Callable:
    """A function (*arrays) -> list of arrays running `graph_def` (stock ops only)."""
    import tensorflow as tf

    def _import():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    graph = wrapped.graph
    fn = wrapped.prune([graph.get_tensor_by_name(f"{f}:0" if ":" not in f else f) for f in feeds],
                       [graph.get_tensor_by_name(t if ":" in t else f"{t}:0") for t in fetches])

    def run(*arrays):
        return [r.numpy() for r in fn(*[tf.constant(a) for a in arrays])]

    return run


def load_simulation(pb: str | os.PathLike, outputs=None) -> Callable:
    """A callable running `pb`: array (single input) or {input name: array} -> array or dict."""
    graph_def = expand_ascend_ops(read_graph_def(pb, importable=False), str(pb))
    specs = placeholder_specs(graph_def)
    fetches = list(outputs or default_outputs(graph_def))
    fn = graph_runner(graph_def, [s.name for s in specs], fetches)

    def run(inputs):
        if isinstance(inputs, Mapping):
            missing = [s.name for s in specs if s.name not in inputs]
            if missing:
                raise ModelError(f"{pb}: no data for input(s) {missing}")
            args = [np.asarray(inputs[s.name], dtype=s.dtype) for s in specs]
        else:
            if len(specs) != 1:
                raise ModelError(f"{pb}: the model has {len(specs)} inputs; pass a dict "
                                 f"keyed by {[s.name for s in specs]}")
            args = [np.asarray(inputs, dtype=specs[0].dtype)]
        results = fn(*args)
        if isinstance(inputs, Mapping) or len(results) > 1:
            return dict(zip(fetches, results))
        return results[0]

    run.inputs = specs
    run.outputs = fetches
    return run
