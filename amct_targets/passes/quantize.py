"""`quantize`: INT8 post-training quantization in AMCT's deploy format (quant/ptq.py).

A declaration only: importing it imports no TensorFlow, so listing and planning stay fast.
"""
from __future__ import annotations

from typing import Any, Mapping

from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.quant.config import SECTION_SCHEMA, QuantSettings


class Quantize(CompressionPass):
    name = "quantize"
    summary = "INT8 post-training quantization, AMCT deploy format (ARQ weights, IFMR/HFMG)"
    requires = ("int8",)
    needs = ("calibration",)
    stage = "graph"
    after = ("fold_bn",)
    enabled_by_default = True
    exclusive_with = ("fast_softmax",)
    config_schema = SECTION_SCHEMA

    def check_config(self, config: Mapping[str, Any], model, plugins) -> None:
        names = layers = None
        if model is not None:
            names = [n.name for n in model.graph_def.node]
            layers = [n.name for n in model.graph_def.node if n.op in plugins.ops.layouts]
        QuantSettings.from_section(config, plugins.quantizers, layer_names=names,
                                   layer_candidates=layers)

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        from amct_targets.quant.layers import claimed_layers

        return claimed_layers(model, config)

    def shared_key(self, model, ctx: PassContext):
        from amct_targets.quant.layers import int8_profile_scope

        return int8_profile_scope(model, ctx.profile, ctx.layouts)

    def apply(self, model, ctx: PassContext):
        from amct_targets.quant.ptq import post_training_quantize

        return post_training_quantize(model, ctx)


@hookimpl
def register_passes(registry):
    registry.add(Quantize())
