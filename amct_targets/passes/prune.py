"""`prune_channels`: filter pruning with retraining, channels physically removed
(pruning/filter_prune.py). A declaration only: importing it imports no TensorFlow."""
from __future__ import annotations

from typing import Any, Mapping

from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.retrain.options import TRAIN_OPTIONS_SCHEMA


class PruneChannels(CompressionPass):
    name = "prune_channels"
    summary = "Filter pruning (BalancedL2Norm, prune_ratio, Ascend channel alignment) + retrain"
    requires = ("channel_pruning",)
    needs = ("training",)
    stage = "retrain"
    before = ("qat",)
    enabled_by_default = False
    exclusive_with = ("sparsify_4of2",)
    config_schema = {"type": "object", "properties": {
        "prune_ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "ascend_optimized": {"type": "boolean"},
        "bn_reestimation": {"type": "boolean"},
        "skip_layers": {"type": "array", "items": {"type": "string"}},
        **TRAIN_OPTIONS_SCHEMA}, "additionalProperties": False}

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        from amct_targets.pruning.filter_prune import plan_pruning

        return sorted(plan_pruning(model, config, None)[0])

    def shared_key(self, model, ctx: PassContext):
        return {"channel_pruning": dict(ctx.profile.capability("channel_pruning").params)}

    def apply(self, model, ctx: PassContext):
        from amct_targets.pruning.filter_prune import prune

        return prune(model, ctx)


@hookimpl
def register_passes(registry):
    registry.add(PruneChannels())
