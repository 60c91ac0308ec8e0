"""amct-targets example plugin: everything a third-party plugin can add, in one module.

- capability `fp16_weight_storage` (register_capabilities) and a profile `example-npu` that
  has it (register_targets);
- a pass `round_weights_fp16` (register_passes) that requires the capability: it stores the
  weights of every Conv2D / DepthwiseConv2dNative / MatMul as an FP16 Const read through its
  own op, `ExampleFp16Weight` (FP16 in, FP32 out);
- that op's simulation expander and ATC acceptance (register_ops), so calibration, `simulate`
  and `check` work on graphs that contain it.

The pass runs before `quantize`: a layer whose weights are FP16 stays in float and the
quantize report says why ("weights come from ExampleFp16Weight ..., not a Const").
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from amct_targets import hookimpl
from amct_targets.graph.nodes import DT_FLOAT, DT_HALF, make_node, type_attr
from amct_targets.graph.ops import AtcAcceptance, OpSpec
from amct_targets.passes.base import CompressionPass

OP_TYPE = "ExampleFp16Weight"
LAYER_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")


class RoundWeightsFp16(CompressionPass):
    name = "round_weights_fp16"
    summary = "Store float32 Conv/MatMul weights as FP16 (op ExampleFp16Weight)"
    requires = ("fp16_weight_storage",)
    stage = "graph"
    after = ("fold_bn",)
    before = ("quantize",)
    config_schema = {"type": "object", "properties": {}, "additionalProperties": False}

    def layers(self, model, config):
        return [node.name for node in model.graph_def.node if node.op in LAYER_OPS]

    def apply(self, model, ctx):
        from amct_targets.graph.layout import Layer, resolve_layer
        from amct_targets.graph.nodes import const_node
        from amct_targets.graph.pattern import GraphIndex

        graph_def = model.copy_graph_def()
        index = GraphIndex(graph_def)
        total, worst = 0, 0.0
        added = []
        for node in list(graph_def.node):
            if node.op not in LAYER_OPS:
                continue
            layer = resolve_layer(index, node, ctx.layouts)  # where the weight enters
            if not isinstance(layer, Layer) or \
                    index.const_value(index.nodes[layer.weight]).dtype != np.float32:
                continue
            value = index.const_value(index.nodes[layer.weight])
            half = value.astype(np.float16)
            change = float(np.max(np.abs(half.astype(np.float32) - value))) if value.size else 0.0
            stored = f"{layer.weight}/fp16"
            added += [const_node(stored, half),
                      make_node(f"{layer.weight}/decode", OP_TYPE, [stored],
                                SrcT=type_attr(DT_HALF), DstT=type_attr(DT_FLOAT))]
            slot = [i for i, name in enumerate(node.input) if not name.startswith("^")][
                layer.weight_index]
            node.input[slot] = f"{layer.weight}/decode"
            total += value.size
            worst = max(worst, change)
            ctx.report.layers.append({"layer": node.name, "weights": int(value.size),
                                      "max_abs_change": change})
        used = {name.split(":")[0].lstrip("^") for n in graph_def.node for name in n.input}
        kept = [n for n in graph_def.node if n.op != "Const" or n.name in used]
        del graph_def.node[:]
        graph_def.node.extend(kept + added)
        ctx.report.metrics.update(weights_rounded=int(total), max_abs_change=worst)
        return model.replace(graph_def=graph_def)


def expand_fp16_weight(node, builder):
    """Stock-TF equivalent of ExampleFp16Weight: a Cast from half to float."""
    builder.op("cast", "Cast", [builder.inputs[0]], SrcT=type_attr(DT_HALF),
               DstT=type_attr(DT_FLOAT))


@hookimpl
def register_capabilities(registry):
    registry.add("fp16_weight_storage", "The chip keeps weights in FP16 (example plugin)")


@hookimpl
def register_targets(registry):
    registry.add_dir(Path(str(resources.files("amct_targets_fp16_example.targets"))))


@hookimpl
def register_ops(registry):
    registry.add(OpSpec(OP_TYPE, expand=expand_fp16_weight,
                        atc=AtcAcceptance(True, "example plugin: the example NPU's compiler "
                                          "decodes FP16 weights", targets=("example-npu",)),
                        summary="FP16 weight storage, decoded to FP32 (example plugin)"))


@hookimpl
def register_passes(registry):
    registry.add(RoundWeightsFp16())
