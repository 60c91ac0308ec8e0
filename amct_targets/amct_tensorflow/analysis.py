"""The view of a user's graph that AMCT's functions work on, computed the same way from a live
tf.Graph (create_quant_config, quantize_model) and from a .pb file (save_model), so layer
names and activation tensors agree between them:

1. a Const read through an Identity (`w/read` in TF 1 frozen graphs) is read directly;
2. BatchNorm after a Conv/Depthwise/MatMul (+BiasAdd) is folded into the weights and a
   BiasAdd named like the BN (graph/fold_bn.py), unless `do_fusion` is false or the layer
   is in `skip_fusion_layers`: the BN's output tensor keeps its name and value.

The quantizable layers and their rules come from the `ascend310p` profile (the op table is
the same for every shipped profile) and the registered layer layouts.
"""
from __future__ import annotations

import functools
from typing import Iterable

from amct_targets.graph.model import Model, node_name, tensor_name

PROFILE = "ascend310p"


@functools.lru_cache(maxsize=1)
def session():
    """The plugin set (op registry, quantizers) and profiles, loaded once per process."""
    from amct_targets.session import Session

    return Session.create(quiet=True)


def profile():
    return session().profiles.get(PROFILE)


def quantizers():
    return session().plugins.quantizers


def ops():
    return session().plugins.ops


def bypass_const_identities(graph_def):
    """A copy of `graph_def` where inputs reading Identity(Const) read the Const itself;
    Identities left without readers are dropped."""
    from tensorflow.core.framework import graph_pb2

    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    by_name = {n.name: n for n in out.node}
    alias = {}
    for node in out.node:
        if node.op == "Identity" and node.input:
            source = by_name.get(node_name(node.input[0]))
            if source is not None and source.op == "Const" and ":" not in node.input[0]:
                alias[node.name] = source.name
    if not alias:
        return out
    for node in out.node:
        for i, inp in enumerate(node.input):
            if inp.startswith("^"):
                continue
            name = node_name(inp)
            if name in alias and inp in (name, f"{name}:0"):
                node.input[i] = alias[name]
    used = {node_name(i) for n in out.node for i in n.input}
    keep = [n for n in out.node if n.name not in alias or n.name in used]
    del out.node[:]
    out.node.extend(keep)
    return out


def analysis_model(graph_def, outputs: Iterable[str] = (), *, do_fusion: bool = True,
                   skip_fusion: Iterable[str] = (), where: str = "<graph>") -> Model:
    """The Model the AMCT functions find layers in (see the module docstring)."""
    from amct_targets.graph.fold_bn import fold_batch_norm
    from amct_targets.graph.load import placeholder_specs

    graph_def = bypass_const_identities(graph_def)
    model = Model(graph_def, placeholder_specs(graph_def),
                  tuple(tensor_name(o) for o in outputs), source=where)
    if not do_fusion:
        return model
    folded, _, _ = fold_batch_norm(model, frozenset(skip_fusion), ops().layouts)
    return folded


def subgraph_nodes(graph_def, outputs: Iterable[str]) -> set[str]:
    """Names of the nodes `outputs` depend on (data and control inputs)."""
    by_name = {n.name: n for n in graph_def.node}
    seen, stack = set(), [node_name(o) for o in outputs]
    while stack:
        name = stack.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        stack.extend(node_name(i) for i in by_name[name].input)
    return seen
