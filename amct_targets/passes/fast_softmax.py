"""`fast_softmax`: AMCT approximate calibration, Softmax -> FastSoftmax (approx/approximate.py).
A declaration only: importing it imports no TensorFlow.

Quantization and approximation of the same layer are refused by the planner (the passes are
`exclusive_with` each other; `layers()` names the Softmax nodes this pass would replace).
"""
from __future__ import annotations

from typing import Any, Mapping

from amct_targets.approx.config import SECTION_SCHEMA, ApproxSettings
from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext


class FastSoftmaxPass(CompressionPass):
    name = "fast_softmax"
    summary = "approximate calibration: Softmax -> FastSoftmax (clipped cubic exp, fitted)"
    requires = ("fast_softmax",)
    needs = ("calibration",)
    stage = "graph"
    after = ("fold_bn",)
    before = ("quantize",)
    enabled_by_default = False
    exclusive_with = ("quantize",)
    config_schema = SECTION_SCHEMA

    def check_config(self, config: Mapping[str, Any], model, plugins) -> None:
        settings = ApproxSettings.from_section(config)
        if model is not None:
            from amct_targets.approx.approximate import check_names

            check_names(settings, model)

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        from amct_targets.approx.approximate import eligible_softmax

        return eligible_softmax(model, config)

    def apply(self, model, ctx: PassContext):
        from amct_targets.approx.approximate import approximate

        return approximate(model, ctx)


@hookimpl
def register_passes(registry):
    registry.add(FastSoftmaxPass())
