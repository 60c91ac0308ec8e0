"""Folding inference BatchNorm into the Conv2D / DepthwiseConv2dNative / MatMul before it
(the `fold_bn` pass's work).

AMCT fuses Conv+BN before quantizing, so the quantized weights are the BN-scaled ones
(ASCEND_FACTS section 3 "Fusion"). The BN may be a FusedBatchNorm{,V2,V3} node or, for Keras 3
after grappler, `Mul(x, c)` then `Add(., d)`; a lone `Mul` by a per-channel or scalar Const and
a lone `Add` of a Const after a compute op fold the same way. With s the per-channel scale and
t the shift, `W' = W*s` along the output channel and `b' = b*s + t`; the result is
`compute -> BiasAdd(b')`, and the BiasAdd takes the name of the last node folded so consumers
and graph outputs keep working.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.python.framework import tensor_util

from amct_targets.graph.concat_affine import push_affine_through_concat
from amct_targets.graph.layout import LAYOUTS, Layer, per_channel_shape, resolve_layer
from amct_targets.graph.model import Model, node_name
from amct_targets.graph.pattern import GraphIndex, OpPattern

COMPUTE_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")
FUSED_BN_OPS = "FusedBatchNorm|FusedBatchNormV2|FusedBatchNormV3"
_NOT_COMPUTE = "not a " + "/".join(COMPUTE_OPS)


def _compute() -> OpPattern:
    # Where the weight enters and which axes are channels: the layer-layout table.
    return OpPattern("|".join(COMPUTE_OPS), name="compute")


def _heads(top: OpPattern) -> list[tuple[str, OpPattern]]:
    """The BN shapes that can follow `top`, longest first; the last node is captured as `head`."""
    const = lambda name: OpPattern("Const", name=name)  # noqa: E731
    return [
        ("FusedBatchNorm", OpPattern(FUSED_BN_OPS, name="head", inputs=[
            top, const("gamma"), const("beta"), const("mean"), const("variance")])),
        ("Mul+Add", OpPattern("Add|AddV2", name="head", commutative=True, inputs=[
            OpPattern("Mul", name="mul", commutative=True, inputs=[top, const("scale")]),
            const("shift")])),
        ("Mul", OpPattern("Mul", name="head", commutative=True, inputs=[top, const("scale")])),
        ("Add", OpPattern("Add|AddV2", name="head", commutative=True,
                          inputs=[top, const("shift")])),
    ]


# A BN folds into a compute op with Const weights, optionally already followed by a Const bias.
_BIASED = OpPattern("BiasAdd|Add|AddV2", name="bias", commutative=True,
                    inputs=[_compute(), OpPattern("Const", name="bias_value")])
FOLD_PATTERNS = _heads(_BIASED) + _heads(_compute())
# BN-like nodes that are reported when no fold pattern takes them.
CANDIDATE_PATTERNS = [
    ("FusedBatchNorm", OpPattern(FUSED_BN_OPS, name="head")),
    ("Mul+Add", OpPattern("Add|AddV2", name="head", commutative=True, inputs=[
        OpPattern("Mul", name="mul", commutative=True,
                  inputs=[OpPattern("*", name="x"), OpPattern("Const")]),
        OpPattern("Const")])),
]


def _attr(node, key: str, kind: str, default):
    """An attr value without `node.attr[key]`, which would insert an empty attr."""
    value = node.attr.get(key)
    return default if value is None else getattr(value, kind)


def _layout_reason(nodes) -> str | None:
    """Why a BN (or the ops before it) cannot fold for its mode or layout, or None."""
    for node in nodes:
        # FusedBatchNorm's op-def default is is_training=true (it matters if defaults are stripped).
        if _attr(node, "is_training", "b", node.op.startswith("FusedBatchNorm")):
            return "is_training=True: a training-mode BN normalizes with batch statistics"
        fmt = _attr(node, "data_format", "s", b"NHWC").decode()
        if fmt not in ("", "NHWC"):
            return f"{node.op} '{node.name}' has data_format {fmt}; only NHWC folds"
    return None


def _kind(kind: str, head) -> str:
    return head.op if kind == "FusedBatchNorm" else kind


def _per_channel(value: np.ndarray, channels: int, out_rank: int, what: str):
    """`value` as float64 [channels], or a reason when it does not broadcast per channel."""
    if value.size == 1 and value.ndim <= out_rank:
        return np.full(channels, float(value.reshape(())), np.float64)
    if value.ndim <= out_rank and value.shape[-1] == channels and value.size == channels:
        return value.reshape(channels).astype(np.float64)
    return (f"{what} Const shape {list(value.shape)} is not per-output-channel "
            f"({channels} channels)")


def _fold_reason(index: GraphIndex, model: Model, kind: str, m: dict) -> str | None:
    """Why match `m` cannot fold, or None when it can. `m["layer"]` is the compute op's
    layout-resolved layer, or the reason it does not qualify (weights not a private float
    Const)."""
    head, compute = m["head"], m["compute"]
    chain = [compute] + [m[k] for k in ("bias", "mul") if k in m] + [head]
    reason = _layout_reason(chain)
    if reason:
        return reason
    if kind == "FusedBatchNorm":
        stats = {f"{head.name}:{k}" for k in range(1, 6)}
        extra = sorted({c for c in index.consumers[head.name] if stats & set(index.nodes[c].input)})
        extra += sorted(stats & set(model.outputs))
        if extra:
            return f"outputs other than 0 (batch statistics) are used by '{extra[0]}'"
    for node, nxt in zip(chain, chain[1:]):
        others = sorted(set(index.consumers[node.name]) - {nxt.name})
        if others:
            return f"{node.op} '{node.name}' also feeds '{others[0]}', not only the BN"
        if node.name in model.output_nodes:
            return f"{node.op} '{node.name}' is a graph output"
    layer = m["layer"]
    return layer if isinstance(layer, str) else None


def _scale_shift(index: GraphIndex, kind: str, m: dict, channels: int, out_rank: int):
    """(scale, shift, bias) as float64 [channels], or a reason string."""
    value = lambda name: index.const_value(m[name])  # noqa: E731
    ones, zeros = np.ones(channels), np.zeros(channels)
    if kind == "FusedBatchNorm":
        params = [_per_channel(value(k), channels, 1, k)
                  for k in ("gamma", "beta", "mean", "variance")]
        if any(isinstance(p, str) for p in params):
            return next(p for p in params if isinstance(p, str))
        gamma, beta, mean, var = params
        eps = _attr(m["head"], "epsilon", "f", 1e-4)
        scale = gamma / np.sqrt(var + np.float64(np.float32(eps)))
        parts = [scale, beta - mean * scale]
    else:
        parts = [_per_channel(value("scale"), channels, out_rank, "Mul") if "scale" in m else ones,
                 _per_channel(value("shift"), channels, out_rank, "Add") if "shift" in m else zeros]
    parts.append(_per_channel(value("bias_value"), channels, out_rank, "bias")
                 if "bias" in m else zeros)
    reasons = [p for p in parts if isinstance(p, str)]
    return reasons[0] if reasons else tuple(parts)


def _scaled_weights(layer: Layer, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    shape = per_channel_shape(weights.shape, layer.cout_axes)
    return (weights.astype(np.float64) * scale.reshape(shape)).astype(weights.dtype)


def _unique_name(names: set[str], base: str) -> str:
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}_{k}"
    return name


def _rewrite(graph_def: graph_pb2.GraphDef, index: GraphIndex, plans) -> graph_pb2.GraphDef:
    """Scale each plan's weights in place; return the graph with each BN chain after the
    compute op replaced by one BiasAdd named like the chain's last node."""
    replace: dict[str, list[node_def_pb2.NodeDef]] = {}
    removed: set[str] = set()
    taken = set(index.nodes)
    for m, (scale, shift, bias) in plans:
        compute, head, weights = m["compute"], m["head"], m["weights"]
        w = index.const_value(weights)
        weights.attr["value"].tensor.CopyFrom(
            tensor_util.make_tensor_proto(_scaled_weights(m["layer"], w, scale)))
        chain = [m[k] for k in ("bias", "mul", "head") if k in m]
        removed |= {n.name for n in chain}
        bias_name = _unique_name(taken, f"{head.name}/folded_bias")
        taken.add(bias_name)
        bias_const = node_def_pb2.NodeDef(name=bias_name, op="Const", device=compute.device)
        bias_const.attr["dtype"].type = weights.attr["dtype"].type
        bias_const.attr["value"].tensor.CopyFrom(
            tensor_util.make_tensor_proto((bias * scale + shift).astype(w.dtype)))
        bias_add = node_def_pb2.NodeDef(name=head.name, op="BiasAdd", device=compute.device)
        controls = sorted({i for n in chain for i in n.input if i.startswith("^")})
        bias_add.input.extend([compute.name, bias_name] + controls)
        bias_add.attr["T"].CopyFrom(compute.attr["T"])
        bias_add.attr["data_format"].s = b"NHWC"
        replace[head.name] = [bias_const, bias_add]
    # Consts that only the removed nodes read (BN parameters, old biases) go too.
    sources = {node_name(i) for name in removed for i in index.data_inputs(index.nodes[name])}
    removed |= {src for src in sources
                if index.nodes[src].op == "Const" and set(index.consumers[src]) <= removed}
    nodes = []
    for node in graph_def.node:  # keep graph order: the new pair takes the head's place
        if node.name in replace:
            nodes += replace[node.name]
        elif node.name not in removed:
            nodes.append(node)
    out = graph_pb2.GraphDef(version=graph_def.version)
    for field in ("versions", "library", "debug_info"):
        if graph_def.HasField(field):
            getattr(out, field).CopyFrom(getattr(graph_def, field))
    out.node.extend(nodes)
    return out


def _input_reason(index: GraphIndex, m: dict) -> str:
    """Why a BN-like node matched no fold pattern."""
    head = m["head"]
    reason = _layout_reason([head])
    if reason:
        return reason
    if head.op.startswith("FusedBatchNorm"):
        params = [index.producer(head, i) for i in range(1, 5)]
        for label, p in zip(("gamma", "beta", "mean", "variance"), params):
            if p is None or p.op != "Const":
                return f"{label} is not a Const (produced by {p.op if p else 'nothing'})"
    x = m.get("x") or index.producer(head, 0)
    if x is None:
        return "input has no producer"
    if x.op in ("BiasAdd", "Add", "AddV2"):
        inner = [index.producer(x, i) for i in (0, 1)]
        if not any(p is not None and p.op == "Const" for p in inner):
            names = ", ".join(f"'{p.name}'" for p in inner if p is not None)
            return (f"input is the residual {x.op} '{x.name}' of two tensors ({names}); a "
                    "BatchNorm after a sum folds into no single conv")
        compute = next((p for p in inner if p is not None and p.op in COMPUTE_OPS), None)
        if compute is not None:
            return f"weights of {compute.op} '{compute.name}' are not a Const"
    if x.op in COMPUTE_OPS:
        return f"weights of {x.op} '{x.name}' are not a Const"
    return f"input is produced by {x.op} '{x.name}', {_NOT_COMPUTE}"


def _scalar_operand(index: GraphIndex, m: dict) -> bool:
    const = m.get("scale", m.get("shift"))
    value = index.const_value(const) if const is not None else None
    return value is not None and value.size == 1


def _fold_round(graph_def: graph_pb2.GraphDef, model: Model, skip: frozenset = frozenset(),
                layouts: Mapping = LAYOUTS):
    """Fold every non-overlapping BN once; return (new graph, folded records, left records).

    `graph_def` is edited (weights scaled): pass a copy."""
    index = GraphIndex(graph_def)
    folded, left, plans = [], {}, []
    seen, claimed, reported = set(), set(), set()
    for kind, pattern in FOLD_PATTERNS:
        for m in index.match(pattern):
            head = m["head"]
            m["layer"] = resolve_layer(index, m["compute"], layouts)
            if isinstance(m["layer"], Layer):
                m["weights"] = index.nodes[m["layer"].weight]
            names = {m[k].name for k in ("compute", "bias", "mul", "head") if k in m}
            if head.name in seen or names & claimed:
                continue  # taken by a longer pattern, or folds in a later round
            seen.add(head.name)
            layer = m.get("mul", head).name
            if names & skip or layer in skip:
                reason = "skipped by config (skip_layers / quantize skip_fusion_layers)"
            else:
                reason = _fold_reason(index, model, kind, m)
            if reason is None:
                compute = m["layer"]
                parts = _scale_shift(index, kind, m, compute.out_channels,
                                     compute.layout.weight_rank)
                reason = parts if isinstance(parts, str) else None
            if reason is not None:
                if kind in ("Mul", "Add") and _scalar_operand(index, m):
                    continue   # x * c or x + c alone (e.g. hard-swish's x + 3) is no BatchNorm
                if layer not in reported:  # a refused Mul+Add is not reported again as a Mul
                    left[head.name] = {"layer": layer, "kind": _kind(kind, head),
                                       "status": "skipped", "reason": reason}
                reported |= {head.name, layer}
                continue
            claimed |= names
            plans.append((m, parts))
            folded.append({"layer": layer, "into": m["compute"].name,
                           "kind": _kind(kind, head), "status": "folded",
                           "output": head.name})
    for kind, pattern in CANDIDATE_PATTERNS:
        for m in index.match(pattern):
            if m["head"].name not in seen:
                seen.add(m["head"].name)
                x = m.get("x") or index.producer(m.get("mul", m["head"]), 0)
                if kind == "Mul+Add" and x is not None and x.op == "Placeholder":
                    continue  # input preprocessing (Keras Rescaling/Normalization), no BN
                left[m["head"].name] = {"layer": m.get("mul", m["head"]).name,
                                        "kind": _kind(kind, m["head"]), "status": "skipped",
                                        "reason": _input_reason(index, m)}
    new_graph = _rewrite(graph_def, index, plans) if plans else graph_def
    order = {name: k for k, name in enumerate(index.nodes)}
    folded.sort(key=lambda record: order[record["output"]])
    return new_graph, folded, [left[name] for name in index.nodes if name in left]


def fold_batch_norm(model: Model, skip: frozenset = frozenset(), layouts: Mapping = LAYOUTS
                    ) -> tuple[Model, list[dict], list[dict]]:
    """Fold every foldable BN of `model`; return (new model, folded records, left-alone records).

    `skip`: names of BN, Mul/Add or compute nodes to leave alone.
    Rounds repeat until nothing folds, so chains like Conv -> Add(c) -> Mul(c) fold fully.
    The input model is not changed.
    """
    graph_def, _ = push_affine_through_concat(model.copy_graph_def())
    folded: list[dict] = []
    while True:
        graph_def, done, left = _fold_round(graph_def, model, skip, layouts)
        folded += done
        if not done:
            return model.replace(graph_def=graph_def), folded, left
