"""`qat`: quantization-aware training ending in the same deploy .pb as `quantize`
(retrain/qat.py). A declaration only: importing it imports no TensorFlow."""
from __future__ import annotations

from typing import Any, Mapping

from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.quant.config import SECTION_SCHEMA, QuantSettings
from amct_targets.retrain.options import TRAIN_OPTIONS_SCHEMA

QAT_SCHEMA = {**SECTION_SCHEMA,
              "properties": {**SECTION_SCHEMA["properties"], **TRAIN_OPTIONS_SCHEMA}}


class QuantizationAwareTraining(CompressionPass):
    name = "qat"
    summary = "INT8 quantization-aware training (ARQ weights, ULQ learnable clipping)"
    requires = ("qat",)
    needs = ("training",)
    stage = "retrain"
    after = ("prune_channels", "sparsify_4of2", "decompose")
    enabled_by_default = False
    exclusive_with = ("fast_softmax",)
    config_schema = QAT_SCHEMA

    def check_config(self, config: Mapping[str, Any], model, plugins) -> None:
        names = layers = None
        if model is not None:
            names = [n.name for n in model.graph_def.node]
            layers = [n.name for n in model.graph_def.node if n.op in plugins.ops.layouts]
        QuantSettings.from_section(config, plugins.quantizers, layer_names=names,
                                   layer_candidates=layers, extra_keys=TRAIN_OPTIONS_SCHEMA,
                                   where="passes.qat")

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        from amct_targets.quant.layers import claimed_layers

        return claimed_layers(model, config)

    def shared_key(self, model, ctx: PassContext):
        from amct_targets.quant.layers import int8_profile_scope

        return int8_profile_scope(model, ctx.profile, ctx.layouts)

    def apply(self, model, ctx: PassContext):
        from amct_targets.retrain.qat import quantization_aware_training

        return quantization_aware_training(model, ctx)


@hookimpl
def register_passes(registry):
    registry.add(QuantizationAwareTraining())


@hookimpl
def adjust_plan(plan, profile, config):
    """When quantization-aware training runs, it produces the INT8 model: no PTQ after it."""
    qat, ptq = plan.step("qat"), plan.step("quantize")
    if qat is not None and ptq is not None and qat.status == "RUN" and ptq.status == "RUN":
        ptq.status, ptq.reason = "SKIP", "qat produces the INT8 model (same deploy format)"
