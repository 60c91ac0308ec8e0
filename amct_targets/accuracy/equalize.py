"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"; AIMET's CLE):

    layer1 (Const W1) -> [bias b1] -> Relu -> [MaxPool]* -> layer2 (Const W2)

ReLU and max-pooling commute with a positive per-channel scale, so dividing layer1's output
channel c (its weights and bias) by s_c and multiplying layer2's input channel c by s_c leaves
the float function unchanged. With r1_c, r2_c the ranges of W1's output channel and W2's input
channel, s_c = sqrt(r1_c / r2_c) makes both ranges sqrt(r1_c * r2_c): one outlier channel (a
weight range 1000x the others, and the activation range behind it) is spread over both layers,
so per-tensor activation and per-channel weight quantization both keep their resolution.
A chain of layers is equalized pair by pair, a few sweeps (each sweep moves ranges closer).

Every intermediate node must have a single reader; the weight axes come from the layer
layouts (graph/layout.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amct_targets.graph.layout import LAYOUTS, Layer, bias_of, per_channel_shape, \
    resolve_layer
from amct_targets.graph.model import Model, node_name
from amct_targets.graph.nodes import set_const_value
from amct_targets.graph.pattern import GraphIndex

POSITIVE_HOMOGENEOUS = ("Relu", "MaxPool")
SWEEPS = 4


@dataclass(frozen=True)
class Pair:
    first: Layer
    bias: str | None       # layer1's bias Const
    second: Layer


def _single_reader(index: GraphIndex, name: str) -> str | None:
    readers = index.consumers.get(name, [])
    return readers[0] if len(readers) == 1 else None


def find_pairs(model: Model, layouts=LAYOUTS) -> list[Pair]:
    """Every layer1 -> [bias] -> Relu -> [MaxPool]* -> layer2 chain of the graph."""
    index = GraphIndex(model.graph_def)
    outputs = {node_name(o) for o in model.outputs}
    pairs = []
    for node in model.graph_def.node:
        first = resolve_layer(index, node, layouts) if node.op in layouts else None
        if not isinstance(first, Layer) or first.weight is None or len(first.cout_axes) != 1:
            continue
        bias = bias_of(index, node.name)
        last = bias[0].name if bias else node.name
        seen_relu = False
        while True:
            if last in outputs:
                break
            reader = _single_reader(index, last)
            if reader is None:
                break
            reader_node = index.nodes[reader]
            if reader_node.op in POSITIVE_HOMOGENEOUS:
                seen_relu = seen_relu or reader_node.op == "Relu"
                last = reader
                continue
            second = resolve_layer(index, reader_node, layouts) \
                if reader_node.op in layouts else None
            if seen_relu and isinstance(second, Layer) and second.weight is not None and \
                    second.cin_axis is not None and node_name(second.act_input) == last and \
                    second.in_channels == first.out_channels:
                pairs.append(Pair(first, bias[1] if bias else None, second))
            break
    return pairs


def _ranges(weights: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(weights), axis, 0)
    return moved.reshape(moved.shape[0], -1).max(axis=1)


def equalize(model: Model, layouts=LAYOUTS) -> tuple[Model, list[dict]]:
    """The equalized model and one report entry per pair (layers, largest range ratio
    before and after); the model is returned unchanged when no pair exists."""
    pairs = find_pairs(model, layouts)
    if not pairs:
        return model, []
    graph_def = model.copy_graph_def()
    index = GraphIndex(graph_def)
    values = {}
    for pair in pairs:
        for name in (pair.first.weight, pair.second.weight, pair.bias):
            if name is not None and name not in values:
                values[name] = index.const_value(index.nodes[name]).astype(np.float64)
    before = {id(p): _imbalance(values, p) for p in pairs}
    for _ in range(SWEEPS):
        for pair in pairs:
            w1, w2 = values[pair.first.weight], values[pair.second.weight]
            r1 = _ranges(w1, pair.first.cout_axes[0])
            r2 = _ranges(w2, pair.second.cin_axis)
            scale = np.ones_like(r1)
            usable = (r1 > 0) & (r2 > 0)
            scale[usable] = np.sqrt(r1[usable] / r2[usable])
            values[pair.first.weight] = w1 / scale.reshape(
                per_channel_shape(w1.shape, pair.first.cout_axes))
            values[pair.second.weight] = w2 * scale.reshape(
                per_channel_shape(w2.shape, (pair.second.cin_axis,)))
            if pair.bias is not None:
                bias = values[pair.bias]
                values[pair.bias] = bias / scale.reshape(bias.shape)
    for name, value in values.items():
        node = index.nodes[name]
        set_const_value(node, value.astype(index.const_value(node).dtype))
    entries = [{"layers": [p.first.name, p.second.name],
                "range_ratio_before": round(before[id(p)], 4),
                "range_ratio_after": round(_imbalance(values, p), 4)} for p in pairs]
    return model.replace(graph_def=graph_def), entries


def _imbalance(values, pair: Pair) -> float:
    """Largest over smallest nonzero output-channel range of layer1's weight."""
    r1 = _ranges(values[pair.first.weight], pair.first.cout_axes[0])
    nonzero = r1[r1 > 0]
    return float(nonzero.max() / nonzero.min()) if nonzero.size else 1.0
