"""Which layers of a frozen graph can be quantized for a target, and why the others cannot.

The quantizable TF op types and their attribute constraints come from the profile's
`quantizable_ops` (ASCEND_FACTS 4), never from code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amct_targets.graph.model import Model, node_name, tensor_name
from amct_targets.graph.pattern import GraphIndex

# Where activation and weight enter each op type, and which weight axes are output channels.
OP_LAYOUT = {
    "Conv2D": (0, 1, (3,)),
    "DepthwiseConv2dNative": (0, 1, (2, 3)),
    "Conv2DBackpropInput": (2, 1, (2,)),
    "MatMul": (0, 1, (1,)),
    "BatchMatMul": (0, 1, (1,)),
    "BatchMatMulV2": (0, 1, (1,)),
}
IMPLEMENTED = frozenset(OP_LAYOUT)


@dataclass(frozen=True)
class QuantLayer:
    """A layer to quantize: its node, where data and weights enter, the weight Const."""

    name: str
    op: str
    act_input: str           # tensor name feeding the activation input
    act_index: int
    weight_index: int
    weight_node: str
    channel_axes: tuple[int, ...]
    channel_wise: bool
    input_channels: int


@dataclass(frozen=True)
class Skipped:
    name: str
    op: str
    reason: str


def _attr_value(node, key):
    value = node.attr.get(key)
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind == "list":
        return list(value.list.i) or list(value.list.s)
    return getattr(value, kind) if kind else None


def _violations(node, rule_attrs: dict) -> str | None:
    for key, want in (rule_attrs or {}).items():
        got = _attr_value(node, key)
        if got is None:
            continue  # attr absent: TF's default (1 / false) applies
        if isinstance(got, list):
            ok = all(v == want for v in got)
        else:
            ok = got == want
        if not ok:
            return f"{key}={got} (the target quantizes {node.op} only with {key}={want})"
    return None


def find_layers(model: Model, profile, *, skip_layers=(), skip_layer_types=(),
                min_input_channels: int = 0) -> tuple[list[QuantLayer], list[Skipped]]:
    """Layers to quantize and layers left in float (with a reason each), in graph order."""
    index = GraphIndex(model.graph_def)
    rules = profile.data.get("quantizable_ops", {})
    layers, skipped = [], []
    for node in model.graph_def.node:
        if node.op not in rules and node.op not in IMPLEMENTED:
            continue
        reason = _reason(node, index, rules, skip_layers, skip_layer_types, profile)
        if reason is None:
            act_index, weight_index, axes = OP_LAYOUT[node.op]
            data_inputs = index.data_inputs(node)
            weights = index.const_value(index.producer(node, weight_index))
            cin = _input_channels(node.op, weights)
            if min_input_channels and node.op in ("Conv2D", "MatMul") and \
                    cin < min_input_channels:
                reason = (f"only {cin} input channel(s), below min_input_channels="
                          f"{min_input_channels}: INT8 gains nothing after channel padding")
            else:
                rule = rules[node.op]
                layers.append(QuantLayer(
                    node.name, node.op, tensor_name(data_inputs[act_index]), act_index, weight_index,
                    node_name(data_inputs[weight_index]), axes,
                    bool(rule.get("channel_wise", True)), cin))
                continue
        skipped.append(Skipped(node.name, node.op, reason))
    return layers, skipped


def _input_channels(op: str, weights: np.ndarray) -> int:
    if op == "Conv2DBackpropInput":
        return int(weights.shape[3])
    if op in ("MatMul", "BatchMatMul", "BatchMatMulV2"):
        return int(weights.shape[0])
    return int(weights.shape[2])


def _reason(node, index: GraphIndex, rules, skip_layers, skip_layer_types, profile) -> str | None:
    if node.name in skip_layers:
        return "skipped by config (skip_layers)"
    if node.op in skip_layer_types:
        return f"skipped by config (skip_layer_types: {node.op})"
    if node.op not in rules:
        return f"{profile.name} does not list {node.op} in quantizable_ops"
    if node.op not in IMPLEMENTED:
        return (f"{node.op} quantization is not implemented yet (its AscendDequant ksize "
                "convention is unverified); left in float")
    violation = _violations(node, rules[node.op].get("attrs", {}))
    if violation:
        return f"unsupported attribute {violation}"
    dtype = node.attr.get("T")
    if dtype is not None and dtype.type != 1:  # DT_FLOAT
        return "not a float32 layer"
    _, weight_index, _ = OP_LAYOUT[node.op]
    producer = index.producer(node, weight_index)
    if producer is None or producer.op != "Const":
        kind = producer.op if producer is not None else "nothing"
        return f"weights come from {kind}, not a Const (AMCT quantizes constant weights only)"
    weights = index.const_value(producer)
    if node.op.startswith("BatchMatMul") and weights.ndim != 2:
        return f"constant second input has rank {weights.ndim}; the target needs a 2-D weight"
    if len([c for c in index.consumers.get(producer.name, [])]) > 1:
        return f"weight Const '{producer.name}' is shared with other layers"
    return None
