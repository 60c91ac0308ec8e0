"""The one table of layer layouts: where each compute op type takes its activation and its
weight, which weight axes hold input and output channels, and whether a node qualifies as a
layer whose weights a pass may edit (with the reason when it does not).

Every pass that reads or edits weights (fold_bn, quantize, qat, prune_channels,
sparsify_4of2, decompose) and the FLOP counter use this table; adding an op type is one
entry here, or one `OpSpec(layout=...)` from a plugin's `register_ops`.

    op type                 activation  weight  weight layout   in axis  out axes
    Conv2D                  0           1       HWIO            2        (3,)
    DepthwiseConv2dNative   0           1       HWCM            2        (2, 3)  out = c*M + m
    Conv2DBackpropInput     2           1       HW[out][in]     3        (2,)
    MatMul                  0           1       [in, out]       0        (1,)    transpose_b swaps
    BatchMatMul{,V2,V3}     0           1       [in, out] 2-D   0        (1,)    adj_y swaps
    AvgPool                 0           -       (no weight)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from amct_targets.graph.model import node_name, tensor_name
from amct_targets.graph.ops import OpSpec
from amct_targets.hooks import hookimpl


@dataclass(frozen=True)
class LayerLayout:
    """Where one op type takes its activation and weight (see the module table)."""

    op: str
    act_index: int
    weight_index: int | None          # None: the op has no weight (AvgPool)
    cin_axis: int | None = None       # weight axis of the input channels
    cout_axes: tuple[int, ...] = ()   # weight axes of the output channels, in C order
    weight_rank: int | None = None
    swap_attr: str | None = None      # a bool attr that swaps the in and out axes
    macs_per: str = "output"          # MACs = elements of "output" (or "input") x
                                      # weight elements per channel on that side

    def axes(self, node) -> tuple[int | None, tuple[int, ...]]:
        """(input-channel axis, output-channel axes) of `node`'s weight."""
        value = node.attr.get(self.swap_attr) if self.swap_attr else None
        if value is not None and value.b:
            return self.cout_axes[0], (self.cin_axis,)
        return self.cin_axis, self.cout_axes


LAYOUTS: dict[str, LayerLayout] = {layout.op: layout for layout in (
    LayerLayout("Conv2D", 0, 1, 2, (3,), 4),
    LayerLayout("DepthwiseConv2dNative", 0, 1, 2, (2, 3), 4),
    LayerLayout("Conv2DBackpropInput", 2, 1, 3, (2,), 4, macs_per="input"),
    LayerLayout("MatMul", 0, 1, 0, (1,), 2, swap_attr="transpose_b"),
    LayerLayout("BatchMatMul", 0, 1, 0, (1,), 2, swap_attr="adj_y"),
    LayerLayout("BatchMatMulV2", 0, 1, 0, (1,), 2, swap_attr="adj_y"),
    LayerLayout("BatchMatMulV3", 0, 1, 0, (1,), 2, swap_attr="adj_y"),
    LayerLayout("AvgPool", 0, None),
)}


@hookimpl
def register_ops(registry):
    for layout in LAYOUTS.values():
        registry.add(OpSpec(layout.op, layout=layout))


@dataclass(frozen=True)
class Layer:
    """A node that qualifies as a layer: its activation input and its private weight Const."""

    name: str
    op: str
    layout: LayerLayout
    act_input: str                      # tensor name feeding the activation
    weight: str | None                  # weight Const node name (None: no weight)
    weight_shape: tuple[int, ...] = ()
    cin_axis: int | None = None
    cout_axes: tuple[int, ...] = ()

    @property
    def act_index(self) -> int:
        return self.layout.act_index

    @property
    def weight_index(self) -> int | None:
        return self.layout.weight_index

    @property
    def out_channels(self) -> int:
        return int(np.prod([self.weight_shape[a] for a in self.cout_axes])) if self.weight else 0

    @property
    def in_channels(self) -> int:
        return int(self.weight_shape[self.cin_axis]) if self.weight else 0


def resolve_layer(index, node, layouts: Mapping[str, LayerLayout] = LAYOUTS) -> Layer | str:
    """`node` as a Layer, or the reason it is not one whose weights can be edited: no known
    layout, weights not a Const, a weight Const shared with other ops, non-float weights, a
    weight of the wrong rank."""
    layout = layouts.get(node.op)
    if layout is None:
        return f"{node.op} has no known weight layout"
    data = index.data_inputs(node)
    needed = max(layout.act_index, layout.weight_index or 0) + 1
    if len(data) < needed:
        return f"{node.op} '{node.name}' has {len(data)} data inputs, expected {needed}"
    act_input = tensor_name(data[layout.act_index])
    if layout.weight_index is None:
        return Layer(node.name, node.op, layout, act_input, None)
    producer = index.producer(node, layout.weight_index)
    if producer is None or producer.op != "Const":
        kind = f"{producer.op} '{producer.name}'" if producer is not None else "nothing"
        return f"weights come from {kind}, not a Const"
    users = sorted(set(index.consumers.get(producer.name, [])))
    if len(users) > 1:
        shown = ", ".join(users[:3]) + (", ..." if len(users) > 3 else "")
        return f"weight Const '{producer.name}' is shared by {len(users)} ops ({shown})"
    value = index.const_value(producer)
    if not np.issubdtype(value.dtype, np.floating):
        return f"weights are {value.dtype}, not float"
    if layout.weight_rank is not None and value.ndim != layout.weight_rank:
        return (f"the weight has rank {value.ndim}; {node.op} layers need a "
                f"{layout.weight_rank}-D weight")
    cin_axis, cout_axes = layout.axes(node)
    return Layer(node.name, node.op, layout, act_input, producer.name,
                 tuple(int(d) for d in value.shape), cin_axis, cout_axes)


def iter_layers(index, layouts: Mapping[str, LayerLayout] = LAYOUTS,
                weighted_only: bool = True) -> Iterator[tuple[object, Layer | str]]:
    """(node, Layer or reason) for every node whose op type has a layout, in graph order."""
    for node in index.graph_def.node:
        layout = layouts.get(node.op)
        if layout is None or (weighted_only and layout.weight_index is None):
            continue
        yield node, resolve_layer(index, node, layouts)


def bias_of(index, layer: str) -> tuple[object, str] | None:
    """(add node, bias Const name) when `layer`'s only consumer is a BiasAdd/Add/AddV2 of a
    per-channel Const ([C] or [1, ..., C]) that nothing else reads; else None."""
    consumers = index.consumers.get(layer, [])
    if len(consumers) != 1:
        return None
    node = index.nodes[consumers[0]]
    if node.op not in ("BiasAdd", "Add", "AddV2"):
        return None
    inputs = index.data_inputs(node)
    if len(inputs) != 2 or inputs.count(layer) + inputs.count(f"{layer}:0") != 1:
        return None
    if node.op == "BiasAdd" and node_name(inputs[0]) != layer:
        return None
    other = inputs[1] if node_name(inputs[0]) == layer else inputs[0]
    const = index.nodes.get(node_name(other))
    if const is None or const.op != "Const" or len(index.consumers.get(const.name, [])) != 1:
        return None
    value = index.const_value(const)
    if value.ndim == 0 or any(d != 1 for d in value.shape[:-1]):
        return None
    return node, const.name


def channels_first(weights: np.ndarray, cout_axes: tuple[int, ...]) -> np.ndarray:
    """The weight as [output channels, rest], channels flattened in C order over `cout_axes`."""
    axes = tuple(a % weights.ndim for a in cout_axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"channel axes {cout_axes} repeat an axis of a {weights.ndim}-D weight")
    moved = np.moveaxis(weights, axes, tuple(range(len(axes))))
    return moved.reshape(int(np.prod([weights.shape[a] for a in axes])), -1)


def per_channel_shape(weight_shape: tuple[int, ...], cout_axes: tuple[int, ...]) -> list[int]:
    """A shape that broadcasts a per-output-channel vector (C order over `cout_axes`) onto a
    weight of `weight_shape`."""
    axes = sorted(a % len(weight_shape) for a in cout_axes)
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise ValueError(f"output-channel axes {cout_axes} are not contiguous")
    return [weight_shape[a] if a in axes else 1 for a in range(len(weight_shape))]


def layer_macs(layer: Layer, act_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one layer: each output element (each input element for a
    transposed conv) takes the weight elements of one output (input) channel."""
    weight_size = int(np.prod(layer.weight_shape))
    if layer.layout.macs_per == "input":
        return int(np.prod(act_shape)) * weight_size // layer.in_channels
    return int(np.prod(out_shape)) * weight_size // layer.out_channels
