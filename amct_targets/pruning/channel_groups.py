"""Which layers can lose output channels, and every Const that changes when they do.

From a Conv2D or MatMul, the output is followed through ops that keep channels in place

    layer -> [BiasAdd | Add/AddV2/Mul/Sub(Const) | FusedBatchNorm* | Relu | Relu6 | LeakyRelu
              | Elu | Sigmoid | Tanh | Identity | MaxPool | AvgPool | Pad | Mean(axes 1,2)]*

to the ops that read the channels as an input dimension:

    Conv2D (weights HWIO, axis 2)
    DepthwiseConv2dNative (HWCM, axis 2; its output channels c*M+m shrink too, so the walk
        goes on past it)
    MatMul after Mean over [1, 2] (rows = channels) or after a Flatten Reshape (rows
        (h*W + w)*C + c, NHWC order)

Anything else on the way (a residual Add of two tensors, a Concat, a graph output, an op
this walk does not know) leaves the layer unpruned, with a reason naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from amct_targets.graph.layout import LAYOUTS, Layer, resolve_layer
from amct_targets.graph.model import Model, node_name
from amct_targets.graph.pattern import GraphIndex
from amct_targets.graph.run import static_shapes

UNARY_OPS = frozenset({"Relu", "Relu6", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "Identity"})
NONZERO_AT_ZERO = frozenset({"Sigmoid"})  # f(0) != 0: a zeroed channel still feeds consumers
CONST_OPERAND_OPS = frozenset({"BiasAdd", "Add", "AddV2", "Mul", "Sub"})
FUSED_BN_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
POOL_OPS = frozenset({"MaxPool", "AvgPool"})
PAD_OPS = frozenset({"Pad", "MirrorPad"})
LAYER_OPS = ("Conv2D", "MatMul")
OUTPUT_SIDE_ROLES = frozenset({"weights", "channel_const", "depthwise"})

Steps = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ConstEdit:
    """One Const that changes when `ChannelGroup.layer` loses output channels.

    `role`: "weights" (the layer's filters, output axis), "channel_const" (bias, BN, Mul/Add/
    Sub operand on the path), "depthwise" (a depthwise kernel's input axis), "consumer" (a
    Conv2D's input axis), "rows" (a MatMul's input rows), "reshape" (the flattened size in a
    Flatten's shape; `axis` is the element, -1 for a scalar Const).
    `steps` map the layer's channel indices to this Const's: ("depthwise", M) sends c to
    c*M..c*M+M-1, ("flatten", H*W) sends c to every (h*W + w)*C + c.
    """

    const: str
    reader: str
    role: str
    axis: int
    steps: Steps = ()

    def indices(self, kept: np.ndarray, channels: int) -> tuple[np.ndarray, int]:
        """(indices along `axis` that stay, size of `axis` before pruning)."""
        return expand_channels(kept, channels, self.steps)


@dataclass(frozen=True)
class ChannelGroup:
    """A prunable layer and every Const its output channels reach.

    `consumers`: the ops whose input channels shrink. `zero_preserving`: zeroing the
    output-side Consts (`output_side_edits`) makes the pruned channels reach every consumer
    as exact zeros, so a mask-trained model equals the pruned one (False after a Sigmoid or
    an Add/Sub of a non-zero scalar).
    """

    layer: str
    op: str
    channels: int
    weights: str
    edits: tuple[ConstEdit, ...]
    consumers: tuple[str, ...]
    zero_preserving: bool
    cout_axes: tuple[int, ...] = ()   # the layer weight's output-channel axes (layout table)

    @property
    def output_side_edits(self) -> tuple[ConstEdit, ...]:
        return tuple(e for e in self.edits if e.role in OUTPUT_SIDE_ROLES)


def expand_channels(kept: np.ndarray, channels: int, steps: Steps) -> tuple[np.ndarray, int]:
    idx, size = np.asarray(kept, dtype=np.int64).reshape(-1), channels
    for kind, k in steps:
        if kind == "depthwise":
            idx = (idx[:, None] * k + np.arange(k)[None, :]).reshape(-1)
        elif kind == "flatten":
            idx = (np.arange(k)[:, None] * size + idx[None, :]).reshape(-1)
        else:
            raise ValueError(f"unknown channel step {kind!r}")
        size *= k
    return idx, size


def _attr(node, key: str, kind: str, default):
    value = node.attr.get(key)
    return default if value is None else getattr(value, kind)


def _nhwc(node) -> bool:
    return _attr(node, "data_format", "s", b"NHWC").decode() in ("", "NHWC")


@dataclass
class _Front:
    """A tensor on the path: its node, channel steps so far, channels C, flattened positions."""

    node: str
    steps: Steps
    channels: int
    positions: int = 1


class _Refused(Exception):
    pass


class _Walk:
    def __init__(self, model: Model, index: GraphIndex, shapes, layouts):
        self.model, self.index, self.shapes, self.layouts = model, index, shapes, layouts
        self.outputs = set(model.output_nodes)
        self.zero_ok = True  # of the group being followed

    # -- helpers ---------------------------------------------------------------------------
    def _const(self, node, reader, what: str) -> np.ndarray:
        """The value of Const `node`; refuses when it is not a Const."""
        if node is None or node.op != "Const":
            producer = f"{node.op} '{node.name}'" if node is not None else "nothing"
            raise _Refused(f"{what} of {reader.op} '{reader.name}' is not a Const "
                           f"(produced by {producer}); left unpruned")
        return self.index.const_value(node)

    def _private_const(self, node, reader, what: str):
        """(Const `node`, its value) for a Const that will be edited: refuses when it is not
        a Const or another op reads it too."""
        value = self._const(node, reader, what)
        users = sorted(set(self.index.consumers[node.name]))
        if len(users) > 1:
            raise _Refused(f"{what} Const '{node.name}' of {reader.op} '{reader.name}' is "
                           f"shared by {len(users)} ops ({', '.join(users)}); left unpruned")
        return node, value

    def _channel_axis(self, value: np.ndarray, front: _Front, const, reader) -> int | None:
        """Axis of a per-channel operand to slice, None for a scalar; refuses other shapes."""
        if value.size == 1:
            return None
        if (front.positions == 1 and value.ndim >= 1 and value.shape[-1] == front.channels
                and value.size == front.channels):
            return value.ndim - 1
        raise _Refused(f"Const '{const.name}' of {reader.op} '{reader.name}' has shape "
                       f"{list(value.shape)}, not per-channel for {front.channels} channels; "
                       "left unpruned")

    def _shape(self, name: str):
        return self.shapes.get(name)

    # -- the walk --------------------------------------------------------------------------
    def follow(self, node, layer: Layer) -> ChannelGroup:
        """The group of a Conv2D/MatMul layer (one output axis): every Const its channels
        reach, or _Refused with the reason."""
        (out_axis,) = layer.cout_axes
        channels = layer.out_channels
        edits = [ConstEdit(layer.weight, layer.name, "weights", out_axis)]
        consumers: list[str] = []
        self.zero_ok = True
        queue, seen = [_Front(layer.name, (), channels)], set()
        while queue:
            front = queue.pop(0)
            if front.node in seen:
                raise _Refused(f"output reaches '{front.node}' twice; left unpruned")
            seen.add(front.node)
            if front.node in self.outputs:
                where = ("is a graph output" if front.node == layer.name
                         else f"reaches graph output '{front.node}'")
                raise _Refused(f"output {where}; left unpruned")
            users = list(dict.fromkeys(self.index.consumers[front.node]))
            for user in (self.index.nodes[u] for u in users):
                step = self._step(user, front)
                edits += step[0]
                if step[1] is not None:
                    queue.append(step[1])
                if step[2]:
                    consumers.append(user.name)
                self.zero_ok &= user.op not in NONZERO_AT_ZERO
        return ChannelGroup(layer.name, layer.op, channels, layer.weight, tuple(edits),
                            tuple(consumers), self.zero_ok, layer.cout_axes)

    def _step(self, user, front: _Front):
        """(edits, next front or None, is a consumer) for `user` reading `front`."""
        inputs = self.index.data_inputs(user)
        reads = [k for k, i in enumerate(inputs) if node_name(i) == front.node]
        if any(i.split(":")[1] != "0" for i in inputs if ":" in i and node_name(i) == front.node):
            raise _Refused(f"{user.op} '{user.name}' reads a non-data output of "
                           f"'{front.node}'; left unpruned")
        if not reads:
            return [], None, False  # a control dependency carries no channels
        if len(reads) != 1:
            raise _Refused(f"output reaches {user.op} '{user.name}' on {len(reads)} inputs; "
                           "left unpruned")
        pos, op = reads[0], user.op
        passed = _Front(user.name, front.steps, front.channels, front.positions)
        if op in UNARY_OPS:
            return [], passed, False
        if op in CONST_OPERAND_OPS:
            return self._const_operand(user, front, pos), passed, False
        if op in FUSED_BN_OPS and pos == 0 and front.positions == 1:
            return self._fused_bn(user, front), passed, False
        if op in POOL_OPS and _nhwc(user):
            if list(user.attr["ksize"].list.i)[3:] == [1] and \
                    list(user.attr["strides"].list.i)[3:] == [1]:
                return [], passed, False
        if op in PAD_OPS and pos == 0 and front.positions == 1:
            pads = self._const(self.index.producer(user, 1), user, "paddings")
            if pads.ndim == 2 and list(pads[-1]) == [0, 0]:  # the channel axis is not padded
                return [], passed, False
        if op == "Mean" and pos == 0 and front.positions == 1:
            return self._mean(user, front)
        if op == "Shape" and self._batch_only(user):
            return [], None, False
        layout = self.layouts.get(op)
        if layout is not None and op in ("Conv2D", "DepthwiseConv2dNative") \
                and pos == layout.act_index \
                and front.positions == 1 and _nhwc(user):
            weights, value = self._private_const(
                self.index.producer(user, layout.weight_index), user, "weights")
            cin_axis, cout_axes = layout.axes(user)
            if value.shape[cin_axis] != front.channels:
                raise _Refused(f"{op} '{user.name}' expects {value.shape[cin_axis]} input "
                               f"channels, not {front.channels}; left unpruned")
            if cin_axis not in cout_axes:
                return [ConstEdit(weights.name, user.name, "consumer", cin_axis,
                                  front.steps)], None, True
            # depthwise: each input channel c owns the outputs c*M .. c*M + M-1
            multiplier = int(np.prod([value.shape[a] for a in cout_axes])) // front.channels
            nxt = _Front(user.name, front.steps + (("depthwise", multiplier),),
                         front.channels * multiplier)
            return [ConstEdit(weights.name, user.name, "depthwise", cin_axis, front.steps)], \
                nxt, True
        if layout is not None and op == "MatMul" and pos == layout.act_index and \
                not _attr(user, "transpose_a", "b", False):
            return self._matmul(user, front, layout), None, True
        if op == "Reshape" and pos == 0 and front.positions == 1:
            return self._flatten(user, front)
        if op in ("ConcatV2", "Concat", "Pack"):
            raise _Refused(f"output reaches {op} '{user.name}', whose other inputs are not "
                           "pruned consistently; left unpruned")
        raise _Refused(f"output reaches {op} '{user.name}', which channel pruning cannot "
                       "follow; left unpruned")

    def _const_operand(self, user, front: _Front, pos: int) -> list[ConstEdit]:
        if user.op == "BiasAdd" and (pos != 0 or not _nhwc(user)):
            raise _Refused(f"BiasAdd '{user.name}' is not NHWC with the bias second; "
                           "left unpruned")
        other = self.index.producer(user, 1 - pos)
        if other is None or other.op != "Const":
            if user.op in ("Add", "AddV2"):
                raise _Refused(f"output reaches residual Add '{user.name}' whose other input is "
                               "not pruned consistently; left unpruned")
            raise _Refused(f"output reaches {user.op} '{user.name}' whose other input "
                           f"'{other.name if other else '?'}' is not a Const; left unpruned")
        value = self._const(other, user, "operand")
        axis = self._channel_axis(value, front, other, user)
        if axis is None:  # a scalar operand applies to every channel alike and stays
            if user.op != "Mul" and np.any(value != 0):
                self.zero_ok = False  # x + s: a zeroed channel arrives as s, not 0
            return []
        self._private_const(other, user, "operand")
        return [ConstEdit(other.name, user.name, "channel_const", axis, front.steps)]

    def _fused_bn(self, user, front: _Front) -> list[ConstEdit]:
        if _attr(user, "is_training", "b", True) or not _nhwc(user):
            raise _Refused(f"{user.op} '{user.name}' is in training mode or not NHWC; "
                           "left unpruned")
        used = [c for c in self.index.consumers[user.name]
                if any(node_name(i) == user.name and not i.endswith(":0") and ":" in i
                       for i in self.index.nodes[c].input)]
        if used:
            raise _Refused(f"batch statistics of {user.op} '{user.name}' are used by "
                           f"'{used[0]}'; left unpruned")
        edits = []
        for k, label in enumerate(("scale", "offset", "mean", "variance"), start=1):
            const = self.index.producer(user, k)
            axis = self._channel_axis(self._const(const, user, label), front, const, user)
            if axis is not None:
                self._private_const(const, user, label)
                edits.append(ConstEdit(const.name, user.name, "channel_const", axis,
                                       front.steps))
        return edits

    def _mean(self, user, front: _Front):
        axes = self._const(self.index.producer(user, 1), user, "axes")
        rank = len(self._shape(front.node) or ())
        spatial = {int(a) % rank for a in np.asarray(axes).reshape(-1)} if rank else set()
        if rank != 4 or not spatial or not spatial <= {1, 2}:
            raise _Refused(f"Mean '{user.name}' does not reduce over height/width only "
                           f"(axes {np.asarray(axes).reshape(-1).tolist()}); left unpruned")
        return [], _Front(user.name, front.steps, front.channels), False

    def _batch_only(self, shape_node) -> bool:
        """A Shape read only by StridedSlice [0:1] (Flatten's batch size) ignores channels."""
        users = [self.index.nodes[c] for c in self.index.consumers[shape_node.name]]
        for user in users:
            if user.op != "StridedSlice":
                return False
            begin, end = (self.index.const_value(self.index.producer(user, k)) for k in (1, 2))
            if begin is None or end is None or begin.reshape(-1).tolist() != [0] \
                    or end.reshape(-1).tolist() != [1]:
                return False
        return bool(users)

    def _matmul(self, user, front: _Front, layout) -> list[ConstEdit]:
        shape = self._shape(front.node)
        if front.positions == 1 and (shape is None or len(shape) != 2):
            raise _Refused(f"MatMul '{user.name}' reads a rank-{len(shape or ())} tensor, not "
                           "a Flatten or spatial Mean output; left unpruned")
        weights, value = self._private_const(self.index.producer(user, layout.weight_index),
                                             user, "weights")
        axis = layout.axes(user)[0]
        rows = front.channels * front.positions
        if value.ndim != 2 or value.shape[axis] != rows:
            raise _Refused(f"MatMul '{user.name}' weights {list(value.shape)} do not have "
                           f"{rows} input rows; left unpruned")
        steps = front.steps + ((("flatten", front.positions),) if front.positions > 1 else ())
        return [ConstEdit(weights.name, user.name, "rows", axis, steps)]

    def _flatten(self, user, front: _Front):
        shape = self._shape(front.node)
        if shape is None or len(shape) != 4 or None in shape[1:3] or shape[3] != front.channels:
            raise _Refused(f"Reshape '{user.name}' reads a tensor of unknown or non-NHWC shape "
                           f"{shape}; left unpruned")
        positions = int(shape[1] * shape[2])
        flat = positions * front.channels
        target = self.index.producer(user, 1)
        edit = None
        if target is not None and target.op == "Const":
            const, value = self._private_const(target, user, "shape")
            if value.reshape(-1).size == 2 and int(value.reshape(-1)[1]) == flat:
                edit = ConstEdit(const.name, user.name, "reshape", 1)
        elif (target is not None and target.op == "Pack"
              and len(self.index.data_inputs(target)) == 2):
            size = self.index.producer(target, 1)
            if size is not None and size.op == "Const":
                const, value = self._private_const(size, target, "flattened size")
                if value.size == 1 and int(value.reshape(-1)[0]) == flat:
                    edit = ConstEdit(const.name, target.name, "reshape", -1)
        if edit is None:
            raise _Refused(f"Reshape '{user.name}' is not a Flatten to [N, {flat}]; "
                           "left unpruned")
        steps = front.steps + (("flatten", positions),)
        edit = ConstEdit(edit.const, edit.reader, edit.role, edit.axis, steps)
        return [edit], _Front(user.name, front.steps, front.channels, positions), False


def _layer(index: GraphIndex, node, layouts):
    """The layout-resolved candidate layer, or why its output channels cannot be pruned."""
    if node.op == "Conv2D" and not _nhwc(node):
        return "data_format is not NHWC"
    if node.op == "MatMul" and _attr(node, "transpose_a", "b", False):
        return "transpose_a=True"
    return resolve_layer(index, node, layouts)


def prunable_layers(model: Model, layouts: Mapping = LAYOUTS
                    ) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """({layer: ChannelGroup} for every Conv2D/MatMul whose output channels can be removed,
    {layer: reason} for the others), both in graph order."""
    index = GraphIndex(model.graph_def)
    walk = _Walk(model, index, static_shapes(model.graph_def, model.source), layouts)
    groups: dict[str, ChannelGroup] = {}
    skipped: dict[str, str] = {}
    for node in model.graph_def.node:
        if node.op not in LAYER_OPS:
            continue
        found = _layer(index, node, layouts)
        if isinstance(found, str):
            skipped[node.name] = found
            continue
        try:
            groups[node.name] = walk.follow(node, found)
        except _Refused as refused:
            skipped[node.name] = str(refused)
    return groups, skipped
