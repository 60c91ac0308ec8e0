"""Exact FLOP and parameter counts of the weighted layers of a frozen GraphDef.

A *layer* is one compute op whose weights are a Const: Conv2D, DepthwiseConv2dNative,
Conv2DBackpropInput (the filter), MatMul and BatchMatMul{,V2,V3} (either operand). Shapes come
from TensorFlow's own shape inference: the graph is imported with the model's input shapes,
an unknown batch dimension taken as 1.

Conventions (used by every pass that reports FLOPs):
- `flops` = 2 x multiply-accumulates of the op (one multiply + one add per MAC), plus one add
  per output element when a Const bias is added straight after the op (a `BiasAdd`, or an
  `Add`/`AddV2` of a per-channel Const, the op's only consumer).
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
from amct_targets.graph.model import Model, node_name

CONV_OPS = ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput")
MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
COUNTED_OPS = CONV_OPS + MATMUL_OPS
BIAS_OPS = ("BiasAdd", "Add", "AddV2")


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


def count_layers(model: Model, input_shapes: Mapping[str, tuple[int, ...]] | None = None
                 ) -> dict[str, LayerCost]:
    """{op name: LayerCost} for every weighted op of `model`, in graph order.

    `input_shapes` ({input name: shape}) overrides the model's input shapes. An input with an
    unknown dimension other than the batch is a ModelError (FLOPs depend on it).
    """
    graph = _import_with_shapes(model, dict(input_shapes or {}))
    nodes = {n.name: n for n in model.graph_def.node}
    consumers: dict[str, list[str]] = {}
    for node in model.graph_def.node:
        for inp in node.input:
            if not inp.startswith("^"):
                consumers.setdefault(node_name(inp), []).append(node.name)
    costs = {}
    for node in model.graph_def.node:
        if node.op not in COUNTED_OPS:
            continue
        op = graph.get_operation_by_name(node.name)
        found = _weights_and_input(node, nodes, op)
        if found is None:
            continue
        weights, w_shape, x_shape = found
        out_shape = _known(op.outputs[0].shape, node)
        macs = _macs(node, op, w_shape, x_shape, out_shape)
        params, flops, bias = int(np.prod(w_shape)), 2 * macs, None
        bias_node = _bias_of(node, nodes, consumers, out_shape)
        if bias_node is not None:
            bias = bias_node
            params += int(out_shape[-1])
            flops += int(np.prod(out_shape))
        costs[node.name] = LayerCost(node.op, params, flops, x_shape, out_shape, weights, bias)
    return costs


def _import_with_shapes(model: Model, input_shapes: dict):
    import tensorflow as tf

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
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
    except (ValueError, TypeError, tf.errors.OpError) as exc:  # e.g. Ascend op types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot count FLOPs: TensorFlow cannot import the graph "
                         f"(its shapes come from TensorFlow's shape inference): {first}") \
            from None
    return graph


def _known(shape, node) -> tuple[int, ...]:
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        raise ModelError(f"cannot count FLOPs of {node.op} '{node.name}': TensorFlow infers an "
                         f"incomplete shape {dims}; give the input shapes (--input-shape)")
    return tuple(int(d) for d in dims)


def _const_shape(node) -> tuple[int, ...]:
    return tuple(int(d.size) for d in node.attr["value"].tensor.tensor_shape.dim)


def _weights_and_input(node, nodes, op):
    """(weight Const name, weight shape, activation input shape), or None without Const weights."""
    data = [i for i in node.input if not i.startswith("^")]
    producers = [nodes.get(node_name(i)) for i in data]
    if node.op in ("Conv2D", "DepthwiseConv2dNative"):
        w_index, x_index = 1, 0
    elif node.op == "Conv2DBackpropInput":
        w_index, x_index = 1, 2
    else:  # MatMul family: the Const operand is the weights
        consts = [k for k in (1, 0) if producers[k] is not None and producers[k].op == "Const"]
        if len(consts) != 1:
            return None  # two activations, or two constants (folded away by grappler)
        w_index = consts[0]
        x_index = 1 - w_index
    weights = producers[w_index]
    if weights is None or weights.op != "Const":
        return None
    return weights.name, _const_shape(weights), _known(op.inputs[x_index].shape, node)


def _attr(node, key: str, kind: str, default):
    value = node.attr.get(key)
    return default if value is None else getattr(value, kind)


def _macs(node, op, w_shape, x_shape, out_shape) -> int:
    out = int(np.prod(out_shape))
    if node.op == "Conv2D":
        return out * w_shape[0] * w_shape[1] * w_shape[2]
    if node.op == "DepthwiseConv2dNative":
        return out * w_shape[0] * w_shape[1]
    if node.op == "Conv2DBackpropInput":
        return int(np.prod(x_shape)) * w_shape[0] * w_shape[1] * w_shape[2]
    if node.op == "MatMul":
        a_shape = _known(op.inputs[0].shape, node)
        return out * (a_shape[0] if _attr(node, "transpose_a", "b", False) else a_shape[1])
    x = _known(op.inputs[0].shape, node)  # BatchMatMul: contracted dim from x
    return out * (x[-2] if _attr(node, "adj_x", "b", False) else x[-1])


def _bias_of(node, nodes, consumers, out_shape) -> str | None:
    """The Const of a per-channel bias add that is the op's only consumer, or None."""
    users = consumers.get(node.name, [])
    if len(users) != 1 or nodes[users[0]].op not in BIAS_OPS or not out_shape:
        return None
    add = nodes[users[0]]
    data = [i for i in add.input if not i.startswith("^")]
    if len(data) != 2:
        return None
    if add.op == "BiasAdd" and node_name(data[0]) != node.name:
        return None
    other = [i for i in data if node_name(i) != node.name]
    if len(other) != 1:
        return None
    const = nodes.get(node_name(other[0]))
    if const is None or const.op != "Const":
        return None
    shape = _const_shape(const)
    channels = out_shape[-1]
    if int(np.prod(shape)) != channels or (shape and shape[-1] != channels):
        return None
    return const.name
