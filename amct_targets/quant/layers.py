"""Which layers of a frozen graph can be quantized for a target, and why the others cannot.

The quantizable TF op types and their attribute constraints come from the profile's
`quantizable_ops` (ASCEND_FACTS 4), where each layer takes its activation and weight from the
layer-layout table (graph/layout.py); nothing here knows an op type's layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from amct_targets.graph.layout import LAYOUTS, Layer, resolve_layer
from amct_targets.graph.model import Model
from amct_targets.graph.pattern import GraphIndex

# Activation ops between a Softmax and the layer that reads it (see `claimed_layers`).
SHAPE_ONLY_OPS = ("Identity", "Reshape", "ExpandDims", "Squeeze")


@dataclass(frozen=True)
class QuantLayer:
    """A layer to quantize: the layout-resolved layer and the target's rule for its op."""

    layer: Layer
    channel_wise: bool              # the profile's rule: per-channel weights allowed

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def op(self) -> str:
        return self.layer.op

    @property
    def act_input(self) -> str:
        return self.layer.act_input

    @property
    def act_index(self) -> int:
        return self.layer.act_index

    @property
    def weight_index(self) -> int | None:
        return self.layer.weight_index

    @property
    def weight_node(self) -> str | None:
        return self.layer.weight

    @property
    def channel_axes(self) -> tuple[int, ...]:
        return self.layer.cout_axes

    @property
    def input_channels(self) -> int:
        return self.layer.in_channels


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
        ok = all(v == want for v in got) if isinstance(got, list) else got == want
        if not ok:
            return f"{key}={got} (the target quantizes {node.op} only with {key}={want})"
    return None


def int8_profile_scope(model: Model, profile, layouts: Mapping = LAYOUTS) -> dict:
    """What of `profile` the INT8 layer choice reads: its quantizable_ops rules, and its
    name when a skip reason will name it (a layer op the target does not list)."""
    rules = profile.data.get("quantizable_ops", {})
    named = any(n.op in layouts and n.op not in rules for n in model.graph_def.node)
    return {"quantizable_ops": rules, "name": profile.name if named else None}


def find_layers(model: Model, profile, *, layouts: Mapping = LAYOUTS, skip_layers=(),
                skip_layer_types=(), min_input_channels: int = 0
                ) -> tuple[list[QuantLayer], list[Skipped]]:
    """Layers to quantize and layers left in float (with a reason each), in graph order."""
    index = GraphIndex(model.graph_def)
    rules = profile.data.get("quantizable_ops", {})
    layers, skipped = [], []
    kept = {n.split("'")[1]: n for n in model.notes if n.startswith("Einsum '")}
    for node in model.graph_def.node:
        if node.op == "Einsum":  # kept by the load-time rewrite: AMCT quantizes no Einsum
            skipped.append(Skipped(node.name, node.op, kept.get(node.name, "an Einsum") +
                                   "; only its MatMul/BatchMatMul form quantizes (give static "
                                   "sizes but the batch with --input-shape)"))
            continue
        if node.op not in rules and node.op not in layouts:
            continue
        found = _qualify(node, index, rules, layouts, skip_layers, skip_layer_types, profile)
        if isinstance(found, Layer) and min_input_channels and node.op in ("Conv2D", "MatMul") \
                and found.in_channels < min_input_channels:
            found = (f"only {found.in_channels} input channel(s), below min_input_channels="
                     f"{min_input_channels}: INT8 gains nothing after channel padding")
        if isinstance(found, Layer):
            layers.append(QuantLayer(found, bool(rules[node.op].get("channel_wise", True))))
        else:
            skipped.append(Skipped(node.name, node.op, found))
    return layers, skipped


def _qualify(node, index: GraphIndex, rules, layouts, skip_layers, skip_layer_types,
             profile) -> Layer | str:
    if node.name in skip_layers:
        return "skipped by config (skip_layers)"
    if node.op in skip_layer_types:
        return f"skipped by config (skip_layer_types: {node.op})"
    if node.op not in rules:
        return f"{profile.name} does not list {node.op} in quantizable_ops"
    layout = layouts.get(node.op)
    if layout is None:
        return f"{node.op} has no registered layer layout; left in float"
    violation = _violations(node, rules[node.op].get("attrs", {}))
    if violation:
        return f"unsupported attribute {violation}"
    dtype = node.attr.get("T")
    if dtype is not None and dtype.type != 1:  # DT_FLOAT
        return "not a float32 layer"
    if layout.weight_index is None and node.attr.get("data_format") is not None and \
            node.attr["data_format"].s not in (b"", b"NHWC"):
        return f"data_format {node.attr['data_format'].s.decode()}; only NHWC pools quantize"
    found = resolve_layer(index, node, layouts)
    if isinstance(found, str) and layout.weight_index is not None:
        producer = index.producer(node, layout.weight_index)
        if producer is not None and producer.op != "Const" and _reads_inputs(index, producer):
            return (f"both operands are activations ({node.op} of two tensors, e.g. attention "
                    "scores or values): AMCT quantizes such a layer only with symmetric INT8 "
                    "on both inputs, which this build does not emit; left in float")
    return found


def _reads_inputs(index: GraphIndex, start) -> bool:
    """Whether a model input (Placeholder) reaches `start`: an activation, not a weight
    computed from Consts."""
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op in ("Placeholder", "PlaceholderWithDefault"):
            return True
        stack.extend(index.nodes.get(i.split(":")[0].lstrip("^")) for i in node.input)
    return False


def claimed_layers(model: Model, config: Mapping[str, Any], layouts: Mapping = LAYOUTS
                   ) -> list[str]:
    """Layers quantization would change, for the planner's conflict check.

    Besides the compute layers, a Softmax feeding (through shape-only ops) the activation
    input of a layer with Const weights gets an AscendQuant on its output, and a Softmax named
    with quant_enable true is claimed as asked: fast_softmax may not replace either (AMCT: no
    quantization and approximation on one layer).
    """
    skip = set(config.get("skip_layers", ()))
    index = GraphIndex(model.graph_def)
    names = []
    for node in model.graph_def.node:
        layout = layouts.get(node.op)
        if layout is None or layout.weight_index is None or node.name in skip:
            continue
        names.append(node.name)
        if not isinstance(resolve_layer(index, node, layouts), Layer) or \
                (config.get(node.name) or {}).get("quant_enable") is False:
            continue
        producer = index.producer(node, layout.act_index)
        while producer is not None and producer.op in SHAPE_ONLY_OPS:
            producer = index.producer(producer, 0)
        if producer is not None and producer.op == "Softmax":
            names.append(producer.name)
    names += [n.name for n in model.graph_def.node if n.op == "Softmax"
              and (config.get(n.name) or {}).get("quant_enable") is True]
    return list(dict.fromkeys(names))
