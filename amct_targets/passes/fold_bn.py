"""`fold_bn`: fold inference BatchNorm into the compute op before it (graph/fold_bn.py).
A declaration only: importing it imports no TensorFlow.

AMCT's `do_fusion: false` and `skip_fusion_layers` (in the quantize section or an AMCT
config) reach this pass's section through the config adapter (config.py
`normalize_build_config`) before planning.
"""
from __future__ import annotations

from typing import Any, Mapping

from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext


class FoldBatchNorm(CompressionPass):
    name = "fold_bn"
    summary = "Fold inference BatchNorm (fused or Keras Mul+Add) into the Conv/MatMul before it"
    requires = ("bn_fusion",)
    stage = "prepare"  # AMCT fuses before quantizing and before retraining
    enabled_by_default = True
    config_schema = {"type": "object", "additionalProperties": False, "properties": {
        "skip_layers": {"type": "array", "items": {"type": "string"},
                        "description": "BN or conv node names to leave unfolded"}}}

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        from amct_targets.graph.fold_bn import fold_batch_norm

        _, folded, _ = fold_batch_norm(model, frozenset(config.get("skip_layers", ())))
        return [record["into"] for record in folded]

    def shared_key(self, model, ctx: PassContext):
        return {}   # reads nothing of the target profile

    def apply(self, model, ctx: PassContext):
        from amct_targets.graph.fold_bn import fold_batch_norm

        new_model, folded, left = fold_batch_norm(
            model, frozenset(ctx.config.get("skip_layers", ())), ctx.layouts)
        ctx.report.layers.extend(folded + left)
        ctx.report.metrics["folded"] = len(folded)
        ctx.report.metrics["left"] = len(left)
        ctx.progress(f"folded {len(folded)} BatchNorm, left {len(left)}")
        return new_model


@hookimpl
def register_passes(registry):
    registry.add(FoldBatchNorm())
