"""`decompose`: AMCT tensor decomposition, kxk Conv2D -> kx1 + 1xk low-rank convs
(decomposition/apply.py). Chip-independent. A declaration only: importing it imports no
TensorFlow."""
from __future__ import annotations

from typing import Any, Mapping

from amct_targets.decomposition.conv import MIN_SIZE_DEFAULTS
from amct_targets.decomposition.plan import RANK_METHODS, SVD_METHODS
from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.retrain.options import TRAIN_OPTIONS_SCHEMA

CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "rank_method": {"enum": list(RANK_METHODS),
                        "description": "evbmf (AMCT, default) or energy"},
        "energy": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                   "description": "share of squared singular values kept (energy method; "
                                  "default 0.95)"},
        "rank": {"type": "integer", "minimum": 1,
                 "description": "force this rank on every decomposed conv (not rounded)"},
        "rank_multiple": {"type": "integer", "minimum": 1,
                          "description": "ranks are rounded to a multiple of this (16)"},
        "skip_layers": {"type": "array", "items": {"type": "string"},
                        "description": "Conv2D node names to leave alone"},
        "min_size": {"type": "object", "additionalProperties": False, "properties": {
            key: {"type": "integer", "minimum": 0} for key in MIN_SIZE_DEFAULTS},
            "description": "AMCT's size filter: skip when min(k)*min(C) < product, or when "
                           "min(k) < kernel and min(C) < channels (16, 7, 64)"},
        "svd": {"enum": list(SVD_METHODS),
                "description": "auto (default), exact or randomized"},
        "fine_tune": {"type": "boolean",
                      "description": "retrain after decomposing when training data is given "
                                     "(default true)"},
        **TRAIN_OPTIONS_SCHEMA,
    },
    "additionalProperties": False,
}


class Decompose(CompressionPass):
    name = "decompose"
    summary = "Tensor decomposition: split kxk Conv2D into kx1 + 1xk low-rank convs (EVBMF rank)"
    requires = ("tensor_decomposition",)
    # A retrain-stage pass: after Conv+BN folding (prepare), before qat fine-tunes and
    # quantizes the decomposed model, and before the graph-stage quantize.
    stage = "retrain"
    after = ("fold_bn",)
    before = ("qat", "quantize")
    enabled_by_default = False
    config_schema = CONFIG_SCHEMA

    def check_config(self, config: Mapping[str, Any], model, plugins) -> None:
        from amct_targets.decomposition.apply import own_options
        from amct_targets.decomposition.plan import DecomposeSettings

        DecomposeSettings.from_config(own_options(config))

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        from amct_targets.decomposition.apply import own_options
        from amct_targets.decomposition.plan import DecomposeSettings, plan_model
        from amct_targets.graph.flops import count_layers

        settings = DecomposeSettings.from_config(own_options(config))
        plans, _ = plan_model(model, count_layers(model), settings)
        return [plan.name for plan in plans]

    def shared_key(self, model, ctx: PassContext):
        return {}   # reads nothing of the target profile

    def apply(self, model, ctx: PassContext):
        from amct_targets.decomposition.apply import decompose

        return decompose(model, ctx)


@hookimpl
def register_passes(registry):
    registry.add(Decompose())
