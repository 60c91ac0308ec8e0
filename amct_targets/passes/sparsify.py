"""`sparsify_4of2`: 4:2 structured sparsity with retraining (pruning/sparse_4of2.py).
A declaration only: importing it imports no TensorFlow."""
from __future__ import annotations

from typing import Any, Mapping

from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.retrain.options import TRAIN_OPTIONS_SCHEMA


class Sparsify4of2(CompressionPass):
    name = "sparsify_4of2"
    summary = "4:2 structured sparsity along Cin with retraining (ATC --sparsity=1)"
    requires = ("sparsity_4of2",)
    needs = ("training",)
    stage = "retrain"
    before = ("qat",)
    enabled_by_default = False
    exclusive_with = ("prune_channels",)
    config_schema = {"type": "object", "properties": {
        "update_freq": {"type": "integer", "minimum": 0},
        "bn_reestimation": {"type": "boolean"},
        "skip_layers": {"type": "array", "items": {"type": "string"}},
        **TRAIN_OPTIONS_SCHEMA}, "additionalProperties": False}

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        from amct_targets.pruning.sparse_4of2 import eligible_layers

        return [layer.name for layer in eligible_layers(model, config)[0]]

    def shared_key(self, model, ctx: PassContext):
        return {}   # reads nothing of the target profile

    def apply(self, model, ctx: PassContext):
        from amct_targets.pruning.sparse_4of2 import sparsify

        return sparsify(model, ctx)


@hookimpl
def register_passes(registry):
    registry.add(Sparsify4of2())
