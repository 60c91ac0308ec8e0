"""The graph rewrite of the `decompose` pass.

    x -> Conv2D 'conv' (W kh x kw) -> BiasAdd ...
becomes
    x -> Conv2D 'conv/decomposed/first' (kh x 1 or 1 x kw, no bias)
      -> Conv2D 'conv' (1 x kw or kh x 1) -> BiasAdd ...

The last conv keeps the original name, so the bias, every consumer, graph outputs and later
passes' layer names keep working. The old weight Const goes (the planner refuses shared ones).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.python.framework import tensor_util

from amct_targets.decomposition.conv import H_FIRST
from amct_targets.decomposition.plan import LayerPlan
from amct_targets.graph.model import node_name


def _unique_name(taken: set[str], base: str) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _const(name: str, value: np.ndarray, like) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="Const", device=like.device)
    node.attr["dtype"].type = like.attr["dtype"].type
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))
    return node


def _conv(name: str, inputs: Iterable[str], original, strides, explicit) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="Conv2D", device=original.device)
    node.input.extend(inputs)
    for key, value in original.attr.items():
        if key != "_output_shapes":  # the shapes of the split convs differ
            node.attr[key].CopyFrom(value)
    del node.attr["strides"].list.i[:]
    node.attr["strides"].list.i.extend([1, strides[0], strides[1], 1])
    if explicit is not None:
        del node.attr["explicit_paddings"].list.i[:]
        node.attr["explicit_paddings"].list.i.extend(explicit)
    return node


def _explicit_split(original, mode: str):
    """(first, last) explicit_paddings for an EXPLICIT-padded conv, else (None, None)."""
    padding = original.attr["padding"].s if "padding" in original.attr else b""
    if padding != b"EXPLICIT":
        return None, None
    pads = list(original.attr["explicit_paddings"].list.i)  # NHWC: [0,0, t,b, l,r, 0,0]
    along_h = [0, 0, pads[2], pads[3], 0, 0, 0, 0]
    along_w = [0, 0, 0, 0, pads[4], pads[5], 0, 0]
    return (along_h, along_w) if mode == H_FIRST else (along_w, along_h)


def split_convs(graph_def: graph_pb2.GraphDef, plans: list[LayerPlan]) -> graph_pb2.GraphDef:
    """A new GraphDef with each planned conv replaced by its two convs (input not changed)."""
    nodes = {n.name: n for n in graph_def.node}
    taken = set(nodes)
    replaced: dict[str, list[node_def_pb2.NodeDef]] = {}
    removed: set[str] = set()
    for plan in plans:
        conv = nodes[plan.name]
        data = [i for i in conv.input if not i.startswith("^")]
        controls = [i for i in conv.input if i.startswith("^")]
        weights = nodes[node_name(data[1])]
        removed.add(weights.name)
        sh, sw = list(conv.attr["strides"].list.i)[1:3] if "strides" in conv.attr else (1, 1)
        first_strides, last_strides = ((sh, 1), (1, sw)) if plan.mode == H_FIRST \
            else ((1, sw), (sh, 1))
        first_pads, last_pads = _explicit_split(conv, plan.mode)
        first_w = _unique_name(taken, f"{conv.name}/decomposed/first_weights")
        first = _unique_name(taken, f"{conv.name}/decomposed/first")
        last_w = _unique_name(taken, f"{conv.name}/decomposed/last_weights")
        replaced[conv.name] = [
            _const(first_w, plan.first, weights),
            _conv(first, [data[0], first_w] + controls, conv, first_strides, first_pads),
            _const(last_w, plan.last, weights),
            _conv(conv.name, [first, last_w], conv, last_strides, last_pads),
        ]
        plan.record["first"] = first
    out = graph_pb2.GraphDef(version=graph_def.version)
    for field in ("versions", "library", "debug_info"):
        if graph_def.HasField(field):
            getattr(out, field).CopyFrom(getattr(graph_def, field))
    for node in graph_def.node:  # graph order: the new nodes take the conv's place
        if node.name in replaced:
            out.node.extend(replaced[node.name])
        elif node.name not in removed:
            out.node.append(node)
    return out
