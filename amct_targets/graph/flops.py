"""Exact FLOP and parameter counts of the weighted layers of a frozen GraphDef.

A *layer* is one compute op of the layer-layout table (graph/layout.py) whose weight is a
Const: Conv2D, DepthwiseConv2dNative, Conv2DBackpropInput (the filter), MatMul and
BatchMatMul{,V2,V3} with a 2-D Const second operand. Shapes come from TensorFlow's own shape
inference: the graph is imported with the model's input shapes, an unknown batch dimension
taken as 1.

Conventions (used by every pass that reports FLOPs):
- `flops` = 2 x multiply-accumulates of the op (one multiply + one add per MAC), plus one add
  per output element when a Const bias is added straight after the op (a `BiasAdd`, or an
  `Add`/`AddV2` of a per-channel Const, the op's only consumer: `layout.bias_of`).
- `params` = elements of the weight Const, plus the elements of that bias Const.
- Conv2D: MACs = output elements x kh x kw x filter input channels (so grouped convs count
  right). DepthwiseConv2dNative: output elements x kh x kw. Conv2DBackpropInput: every
  element of `out_backprop` is scattered into kh x kw x (filter's output channels) outputs,
  cropped ones included. MatMul / BatchMatMul: output elements x the contracted dimension.

    costs = count_layers(model)          # {op name: LayerCost}, graph order
    total(costs).flops                   # the model's weighted-layer FLOPs
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from amct_targets.errors import ModelError
from amct_targets.graph.layout import LAYOUTS, Layer, bias_of, layer_macs
from amct_targets.graph.model import Model
from amct_targets.graph.pattern import GraphIndex
from amct_targets.graph.run import import_graph


@dataclass(frozen=True)
class LayerCost:
    """Cost of one weighted op (see the module docstring for the conventions)."""

    op: str                          # op type, e.g. "Conv2D"
    params: int                      # weight elements (+ bias elements)
    flops: int                       # 2 x MACs (+ one per output element with a bias)
    input_shape: tuple[int, ...]     # the activation input (out_backprop for a transpose conv)
    output_shape: tuple[int, ...]
    weights: str                     # name of the weight Const
    bias: str | None = None          # name of the bias Const counted with the layer


@dataclass(frozen=True)
class Totals:
    params: int
    flops: int


def conv2d_flops(output_hw: tuple[int, int], kernel_hwio: tuple[int, int, int, int],
                 batch: int = 1) -> int:
    """FLOPs (2 x MACs, no bias) of an NHWC Conv2D with this output size and HWIO kernel."""
    kh, kw, cin, cout = kernel_hwio
    return 2 * batch * int(output_hw[0]) * int(output_hw[1]) * kh * kw * cin * cout


def total(costs: Mapping[str, LayerCost] | Iterable[LayerCost]) -> Totals:
    """Sum of `costs`; a weight or bias Const shared by several layers counts once."""
    items = costs.values() if isinstance(costs, Mapping) else costs
    params: dict[str, int] = {}
    flops = 0
    for cost in items:
        flops += cost.flops
        weight_size = cost.params
        if cost.bias is not None:
            bias_size = _bias_size(cost)
            params[cost.bias] = bias_size
            weight_size -= bias_size
        params[cost.weights] = weight_size
    return Totals(params=sum(params.values()), flops=flops)


def percent_cut(before: int, after: int) -> float:
    """100 x (1 - after / before), rounded to 2 decimals (0 when `before` is 0)."""
    return round(100.0 * (1.0 - after / before), 2) if before else 0.0


def _bias_size(cost: LayerCost) -> int:
    # The bias is per output channel: the last dimension of the output.
    return int(cost.output_shape[-1]) if cost.output_shape else 1


def count_layers(model: Model, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                 layouts: Mapping = LAYOUTS) -> dict[str, LayerCost]:
    """{op name: LayerCost} for every weighted op of `model`, in graph order.

    `input_shapes` ({input name: shape}) overrides the model's input shapes. An input with an
    unknown dimension other than the batch is a ModelError (FLOPs depend on it). Where each
    op takes its weight and which axes are its channels come from the layer-layout table.
    """
    graph = _import_with_shapes(model, dict(input_shapes or {}))
    index = GraphIndex(model.graph_def)
    costs = {}
    for node in model.graph_def.node:
        layout = layouts.get(node.op)
        if layout is None or layout.weight_index is None:
            continue
        weights = index.producer(node, layout.weight_index)
        if weights is None or weights.op != "Const":
            continue   # two activations (attention scores): not a weighted layer
        w_shape = tuple(int(d.size) for d in weights.attr["value"].tensor.tensor_shape.dim)
        if layout.weight_rank is not None and len(w_shape) != layout.weight_rank:
            continue
        op = graph.get_operation_by_name(node.name)
        cin_axis, cout_axes = layout.axes(node)
        layer = Layer(node.name, node.op, layout, "", weights.name, w_shape, cin_axis, cout_axes)
        x_shape = _known(op.inputs[layout.act_index].shape, node)
        out_shape = _known(op.outputs[0].shape, node)
        params, flops, bias = int(np.prod(w_shape)), 2 * layer_macs(layer, x_shape, out_shape), None
        bias_node = _bias_of(node, index, out_shape)
        if bias_node is not None:
            bias = bias_node
            params += int(out_shape[-1])
            flops += int(np.prod(out_shape))
        costs[node.name] = LayerCost(node.op, params, flops, x_shape, out_shape, weights.name, bias)
    return costs


def _import_with_shapes(model: Model, input_shapes: dict):
    graph_def = model.copy_graph_def()
    specs = {spec.name: spec for spec in model.inputs}
    placeholders = {n.name: n for n in graph_def.node if n.op == "Placeholder"}
    for name, spec in specs.items():
        shape = input_shapes.get(name, spec.shape)
        if shape is None:
            raise ModelError(f"cannot count FLOPs: input '{name}' has an unknown rank; give its "
                             "shape (--input-shape)")
        shape = tuple(shape)
        if any(d is None for d in shape[1:]):
            text = ",".join("-1" if d is None else str(d) for d in shape)
            raise ModelError(f"cannot count FLOPs: input '{name}' has shape ({text}), unknown "
                             "beyond the batch dimension; give its shape (--input-shape)")
        shape = tuple(1 if d is None else int(d) for d in shape)
        node = placeholders.get(name)
        if node is not None:
            node.attr["shape"].shape.Clear()
            for d in shape:
                node.attr["shape"].shape.dim.add().size = d
    try:
        return import_graph(graph_def)
    except ModelError as exc:  # e.g. Ascend op types
        raise ModelError(f"cannot count FLOPs (its shapes come from TensorFlow's shape "
                         f"inference): {exc}") from None


def _known(shape, node) -> tuple[int, ...]:
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        raise ModelError(f"cannot count FLOPs of {node.op} '{node.name}': TensorFlow infers an "
                         f"incomplete shape {dims}; give the input shapes (--input-shape)")
    return tuple(int(d) for d in dims)


def _bias_of(node, index: GraphIndex, out_shape) -> str | None:
    """The Const of a per-channel bias add that is the op's only consumer, or None."""
    found = bias_of(index, node.name) if out_shape else None
    if found is None:
        return None
    value = index.const_value(index.nodes[found[1]])
    return found[1] if value.size == out_shape[-1] else None
