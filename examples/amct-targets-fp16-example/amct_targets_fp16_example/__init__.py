"""amct-targets example plugin: capability `fp16_weight_storage`, profile `example-npu`, and
the pass `round_weights_fp16` that needs that capability."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from amct_targets import hookimpl
from amct_targets.passes.base import CompressionPass

WEIGHT_CONSUMERS = {"Conv2D": 1, "DepthwiseConv2dNative": 1, "MatMul": 1}


class RoundWeightsFp16(CompressionPass):
    name = "round_weights_fp16"
    summary = "Round float32 Conv/MatMul weights to the nearest FP16 value"
    requires = ("fp16_weight_storage",)
    stage = "graph"
    after = ("fold_bn",)
    config_schema = {"type": "object", "properties": {}, "additionalProperties": False}

    def layers(self, model, config):
        return [node.name for node in model.graph_def.node if node.op in WEIGHT_CONSUMERS]

    def apply(self, model, ctx):
        from tensorflow.python.framework import tensor_util

        graph_def = model.copy_graph_def()
        nodes = {node.name: node for node in graph_def.node}
        total, worst = 0, 0.0
        for node in graph_def.node:
            if node.op not in WEIGHT_CONSUMERS:
                continue
            weight = nodes.get(node.input[WEIGHT_CONSUMERS[node.op]].split(":")[0])
            if weight is None or weight.op != "Const":
                continue
            value = tensor_util.MakeNdarray(weight.attr["value"].tensor)
            if value.dtype != np.float32:
                continue
            rounded = value.astype(np.float16).astype(np.float32)
            change = float(np.max(np.abs(rounded - value))) if value.size else 0.0
            weight.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(rounded))
            total += value.size
            worst = max(worst, change)
            ctx.report.layers.append({"layer": node.name, "weights": int(value.size),
                                      "max_abs_change": change})
        ctx.report.metrics.update(weights_rounded=int(total), max_abs_change=worst)
        return model.replace(graph_def=graph_def)


@hookimpl
def register_capabilities(registry):
    registry.add("fp16_weight_storage", "The chip keeps weights in FP16 (example plugin)")


@hookimpl
def register_targets(registry):
    registry.add_dir(Path(str(resources.files("amct_targets_fp16_example.targets"))))


@hookimpl
def register_passes(registry):
    registry.add(RoundWeightsFp16())
