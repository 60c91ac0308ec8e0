"""Grouped Conv2D -> the forms AMCT and ATC quantize: a depthwise conv, or Split + one
Conv2D per group + ConcatV2 (AMCT's group-conv form).

A grouped Conv2D reads an input with G times the kernel's input channels (Keras `groups=G`;
the kernel is [kh, kw, Cin/G, Cout] and output channel o belongs to group o // (Cout/G)).

    groups == Cin, one input channel per group  ->  DepthwiseConv2dNative with the kernel
        reshaped to [kh, kw, Cin, Cout/Cin] (output c*M + m is group c's m-th output)
    otherwise  ->  Split(G, axis 3) -> Conv2D per group with the kernel's output-channel
        slice [..., g*Cout/G : (g+1)*Cout/G] -> ConcatV2(axis 3)

The last node takes the conv's name, so BiasAdd / BatchNorm / consumers are unchanged;
fold_bn pushes per-channel affine ops through the ConcatV2 into the groups.
"""
from __future__ import annotations

import numpy as np

from amct_targets.graph.nodes import (DT_INT32, attr_value, const_node, const_value, make_node,
                                      type_attr)
from amct_targets.graph.run import static_shapes

_CONV_ATTRS = ("T", "strides", "padding", "explicit_paddings", "dilations", "data_format")


def _copy_attrs(node, target, keys=_CONV_ATTRS) -> None:
    for key in keys:
        if key in node.attr:
            target.attr[key].CopyFrom(node.attr[key])


def _groups(node, nodes: dict, shapes: dict):
    """(groups, kernel Const) when `node` is a grouped NHWC Conv2D with a Const kernel."""
    if node.op != "Conv2D" or node.attr["data_format"].s not in (b"", b"NHWC"):
        return None
    data = [i for i in node.input if not i.startswith("^")]
    kernel = nodes.get(data[1].split(":")[0])
    shape = shapes.get(data[0].split(":")[0]) if ":" not in data[0] or \
        data[0].endswith(":0") else None
    if kernel is None or kernel.op != "Const" or not shape or shape[-1] is None:
        return None
    cin = int(kernel.attr["value"].tensor.tensor_shape.dim[2].size)
    channels = int(shape[-1])
    if channels == cin or cin == 0 or channels % cin:
        return None
    return channels // cin, kernel


def _depthwise(node, kernel, groups: int, taken: set[str]) -> list:
    w = const_value(kernel)
    kh, kw, _, cout = w.shape
    weights = f"{node.name}/depthwise_weights"
    taken.add(weights)
    conv = make_node(node.name, "DepthwiseConv2dNative",
                     [node.input[0], weights] + [i for i in node.input if i.startswith("^")])
    _copy_attrs(node, conv)
    return [const_node(weights, w.reshape(kh, kw, groups, cout // groups)), conv]


def _split_concat(node, kernel, groups: int, taken: set[str]) -> list:
    w = const_value(kernel)
    per_group = w.shape[3] // groups
    axis = f"{node.name}/group_axis"
    split = f"{node.name}/group_split"
    taken.update({axis, split})
    built = [const_node(axis, np.array(3, np.int32)),
             make_node(split, "Split", [axis, node.input[0]], T=node.attr["T"],
                       num_split=attr_value(i=groups))]
    outputs = []
    for g in range(groups):
        weights, conv_name = f"{node.name}/group_{g}/weights", f"{node.name}/group_{g}"
        taken.update({weights, conv_name})
        conv = make_node(conv_name, "Conv2D", [f"{split}:{g}" if g else split, weights])
        _copy_attrs(node, conv)
        built += [const_node(weights, w[..., g * per_group:(g + 1) * per_group]), conv]
        outputs.append(conv_name)
    concat = make_node(node.name, "ConcatV2", outputs + [axis] +
                       [i for i in node.input if i.startswith("^")],
                       T=node.attr["T"], N=attr_value(i=groups), Tidx=type_attr(DT_INT32))
    return built + [concat]


def split_grouped_convs(graph_def, where: str = "<graph>"):
    """(new graph, notes): every grouped Conv2D rewritten (see the module docstring)."""
    if not any(n.op == "Conv2D" for n in graph_def.node):
        return graph_def, []
    nodes = {n.name: n for n in graph_def.node}
    found = {}
    shapes = None
    for node in graph_def.node:
        if node.op == "Conv2D":
            shapes = shapes if shapes is not None else static_shapes(graph_def, where)
            grouped = _groups(node, nodes, shapes)
            if grouped is not None:
                found[node.name] = grouped
    if not found:
        return graph_def, []
    taken = set(nodes)
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    del out.node[:]
    notes = []
    replaced_kernels = set()
    for node in graph_def.node:
        if node.name not in found:
            out.node.add().CopyFrom(node)
            continue
        groups, kernel = found[node.name]
        cin = int(kernel.attr["value"].tensor.tensor_shape.dim[2].size)
        if cin == 1:
            out.node.extend(_depthwise(node, kernel, groups, taken))
            notes.append(f"grouped Conv2D '{node.name}' ({groups} groups, one channel each) "
                         "rewritten as DepthwiseConv2dNative")
        else:
            out.node.extend(_split_concat(node, kernel, groups, taken))
            notes.append(f"grouped Conv2D '{node.name}' ({groups} groups) rewritten as Split + "
                         f"{groups} Conv2D + ConcatV2 (AMCT's group-conv form)")
        replaced_kernels.add(kernel.name)
    used = {i.lstrip("^").split(":")[0] for n in out.node for i in n.input}
    kept = [n for n in out.node if n.name not in replaced_kernels or n.name in used]
    del out.node[:]
    out.node.extend(kept)
    return out, notes
