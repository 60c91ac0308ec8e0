"""Run an emitted .pb in stock TensorFlow for accuracy simulation.

Custom op types (AscendQuant, AscendDequant, FastSoftmax, a plugin's ops, ...) are expanded
into stock TF ops by the expanders of the op registry (`register_ops`) before import; a graph
with an op type that neither TensorFlow nor an expander knows is refused with the node's name.
Inputs are checked against the graph's placeholders (rank, static sizes but the batch, dtype)
first.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping

import numpy as np

from amct_targets.errors import ConfigError
from amct_targets.graph.load import default_outputs, placeholder_specs, read_graph_def
from amct_targets.graph.model import tensor_name
from amct_targets.graph.run import GraphRunner


def free_batch_dimension(graph_def):
    """The graph with each Placeholder's leading dimension unknown: an emitted .pb carries the
    static batch its atc command uses (1 by default), simulation takes any batch size."""
    for node in graph_def.node:
        if node.op == "Placeholder" and "shape" in node.attr and \
                not node.attr["shape"].shape.unknown_rank and node.attr["shape"].shape.dim:
            node.attr["shape"].shape.dim[0].size = -1
    return graph_def


def load_simulation(pb: str | os.PathLike, outputs=None, *, ops=None) -> Callable:
    """A callable running `pb`: array (single input) or {input name: array} -> array or dict.

    `ops` is the op registry (default: the built-in plugins' ops)."""
    if ops is None:
        from amct_targets.hooks.manager import default_ops

        ops = default_ops()
    graph_def = free_batch_dimension(read_graph_def(pb, importable=False))
    specs = placeholder_specs(graph_def)
    fetches = list(outputs or default_outputs(graph_def))   # result keys: as the user named them
    runner = GraphRunner(graph_def, [s.name for s in specs], [tensor_name(f) for f in fetches],
                         ops=ops, where=str(pb))

    def run(inputs):
        if isinstance(inputs, Mapping):
            missing = [s.name for s in specs if s.name not in inputs]
            unknown = sorted(set(inputs) - {s.name for s in specs})
            if missing or unknown:
                raise ConfigError(f"{pb}: inputs are {[s.name for s in specs]}; got "
                                  f"{sorted(inputs)}" + (f" (no data for {missing})"
                                                         if missing else ""))
            args = [inputs[s.name] for s in specs]
        else:
            if len(specs) != 1:
                raise ConfigError(f"{pb}: the model has {len(specs)} inputs; pass a dict "
                                  f"keyed by {[s.name for s in specs]}")
            args = [inputs]
        results = runner(*[np.asarray(a) for a in args])
        if isinstance(inputs, Mapping) or len(results) > 1:
            return dict(zip(fetches, results))
        return results[0]

    run.inputs = specs
    run.outputs = fetches
    return run
