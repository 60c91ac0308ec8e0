"""Per-channel affine ops after a channel ConcatV2 move into its branches (AMCT folds
"group conv (Split + Convs + Concat on C) + BN").

    ConcatV2(x_0 .. x_{n-1}, axis=C) -> Mul(s) / Add(t) / BiasAdd(t) / FusedBatchNorm
becomes
    ConcatV2(Op(x_0, s[0:c_0]), ..., Op(x_{n-1}, s[...:C]))

with each branch's slice of the per-channel constant (a FusedBatchNorm in inference mode
becomes its Mul + Add). The ConcatV2 takes the affine op's name, so consumers are unchanged;
the branch ops then fold into the convs before them like any BN.
"""
from __future__ import annotations

import numpy as np

from amct_targets.graph.model import node_name
from amct_targets.graph.nodes import const_node, const_value, make_node
from amct_targets.graph.pattern import GraphIndex
from amct_targets.graph.run import static_shapes

AFFINE_OPS = ("Mul", "Add", "AddV2", "BiasAdd")
FUSED_BN = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
LAYER_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")


def _channel_concat(index: GraphIndex, node, shapes):
    """(concat node, channels per input) when `node`'s data input 0 (or either input of a
    commutative op) is a ConcatV2 over the last axis that only `node` reads."""
    for position, ref in enumerate(index.data_inputs(node)[:2]):
        concat = index.nodes.get(node_name(ref))
        if concat is None or concat.op != "ConcatV2" or ":" in ref.replace(":0", ""):
            continue
        if node.op in ("BiasAdd", *FUSED_BN) and position != 0:
            continue
        if index.consumers.get(concat.name, []) != [node.name]:
            continue
        inputs = index.data_inputs(concat)
        axis = index.const_value(index.nodes.get(node_name(inputs[-1])))
        rank = len(shapes.get(concat.name) or ())
        if axis is None or rank == 0 or int(axis) % rank != rank - 1:
            continue
        if not all(_is_layer_output(index, i) for i in inputs[:-1]):
            continue   # only a concat of convolutions (a group conv) folds this way
        sizes = [(shapes.get(node_name(i)) or (None,))[-1] for i in inputs[:-1]]
        if any(s is None for s in sizes) or ":" in "".join(i.replace(":0", "") for i in inputs
                                                           if i.startswith(concat.name)):
            continue
        return concat, position, [int(s) for s in sizes]
    return None


def _is_layer_output(index, ref: str) -> bool:
    """A compute op's output, or its output after a bias add and other affine ops already
    pushed into the branch."""
    producer = index.nodes.get(node_name(ref))
    while producer is not None and producer.op in AFFINE_OPS:
        producer = index.producer(producer, 0)
    return producer is not None and producer.op in LAYER_OPS


def _per_channel(index, node, position, channels: int):
    """[(op, values)] the affine node applies per channel, or None."""
    if node.op in FUSED_BN:
        if node.attr["is_training"].b or node.attr["data_format"].s not in (b"", b"NHWC"):
            return None
        params = [index.const_value(index.producer(node, k)) for k in range(1, 5)]
        if any(p is None or p.size != channels for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
        eps = node.attr["epsilon"].f if "epsilon" in node.attr else 1e-4
        scale = gamma / np.sqrt(var + np.float64(np.float32(eps)))
        return [("Mul", scale.astype(np.float32)), ("AddV2", (beta - mean * scale).astype(
            np.float32))]
    other = index.const_value(index.producer(node, 1 - position))
    if other is None:
        return None
    if other.size == 1:
        return [(node.op, np.full(channels, other.reshape(()), other.dtype))]
    if other.size == channels and other.shape[-1] == channels:
        return [(node.op, other.reshape(-1))]
    return None


def push_affine_through_concat(graph_def):
    """(new graph, count) with every matching affine op moved into the concat's branches."""
    moved = 0
    while True:
        if not any(n.op == "ConcatV2" for n in graph_def.node):
            return graph_def, moved
        index = GraphIndex(graph_def)
        shapes = None
        target = None
        for node in graph_def.node:
            if node.op not in AFFINE_OPS + FUSED_BN:
                continue
            shapes = shapes if shapes is not None else static_shapes(graph_def)
            found = _channel_concat(index, node, shapes)
            side_outputs = any(i.startswith(f"{node.name}:") and not i.endswith(":0")
                               for user in index.consumers.get(node.name, [])
                               for i in index.nodes[user].input)
            if found is None or side_outputs:
                continue
            concat, position, sizes = found
            ops = _per_channel(index, node, position, sum(sizes))
            if ops is not None:
                target = (node, concat, sizes, ops)
                break
        if target is None:
            return graph_def, moved
        graph_def = _rewrite(graph_def, index, *target)
        moved += 1


def _rewrite(graph_def, index, node, concat, sizes, ops):
    taken = set(index.nodes)
    added, branches = [], []
    start = 0
    inputs = index.data_inputs(concat)
    for k, (ref, size) in enumerate(zip(inputs[:-1], sizes)):
        x = ref
        for step, (op, values) in enumerate(ops):
            name = f"{concat.name}/branch_{k}/{node.name.split('/')[-1]}_{step}"
            while name in taken:
                name += "_"
            taken.add(name)
            added += [const_node(f"{name}/value", values[start:start + size]),
                      make_node(name, op, [x, f"{name}/value"], T=concat.attr["T"])]
            if op == "BiasAdd":
                added[-1].attr["data_format"].s = b"NHWC"
            x = name
        branches.append(x)
        start += size
    removed = {node.name}
    # parameters only the affine node read go too
    for ref in index.data_inputs(node):
        producer = index.nodes.get(node_name(ref))
        if producer is not None and producer.op == "Const" and \
                set(index.consumers.get(producer.name, [])) == {node.name}:
            removed.add(producer.name)
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    del out.node[:]
    for original in graph_def.node:
        if original.name in removed:
            continue
        if original.name == concat.name:
            out.node.extend(added)
            renamed = out.node.add()
            renamed.CopyFrom(original)
            renamed.name = node.name
            del renamed.input[:]
            renamed.input.extend(branches + [inputs[-1]] +
                                 [i for i in original.input if i.startswith("^")] +
                                 [i for i in node.input if i.startswith("^")])
            continue
        out.node.add().CopyFrom(original)
    return out
