"""`decompose`: AMCT tensor decomposition of Conv2D kernels into two low-rank convs.

Each eligible kh x kw Conv2D (Const weights, group 1, dilation 1, stride < 3, kh and kw > 2,
and not too small; ASCEND_FACTS section 5) becomes a kh x 1 conv into a 1 x kw conv (or the
other order, whichever needs fewer FLOPs) from a truncated SVD of its unfolded kernel, at the
rank EVBMF estimates and AMCT clips and rounds. The output shape is unchanged; at full rank
so is the output. Chip-independent: every profile has `tensor_decomposition`.

Accuracy drops until the model is fine-tuned (AMCT suggests ~0.1x the original learning rate);
`decompose_model` is the pure function a retraining pass reuses.
"""
from __future__ import annotations

from typing import Any, Mapping

from amct_targets.decomposition.conv import MIN_SIZE_DEFAULTS
from amct_targets.decomposition.plan import RANK_METHODS, SVD_METHODS, DecomposeSettings, \
    plan_model
from amct_targets.decomposition.rewrite import split_convs
from amct_targets.graph.flops import count_layers, percent_cut, total
from amct_targets.graph.model import Model
from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.retrain.train import TRAIN_OPTIONS_SCHEMA, fit, options
from amct_targets.retrain.trainable import TrainableGraph

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
FINE_TUNE_DEFAULTS = {"epochs": 5, "learning_rate": 2e-4}  # AMCT: ~0.1x the original rate


def _sums(costs, names) -> tuple[int, int]:
    totals = total([costs[n] for n in names if n in costs])
    return totals.params, totals.flops


def decompose_model(model: Model, config: Mapping[str, Any] | None = None, *,
                    progress=lambda message: None) -> tuple[Model, list[dict], dict]:
    """Decompose every eligible conv of `model`; returns (new model, per-layer records, metrics).

    The input model is not changed. Records hold every conv: "decomposed" with rank, order,
    params/FLOPs before and after and the reconstruction error, or "skipped" with a reason.
    FLOPs and params follow `amct_targets.graph.flops` (bias included, batch 1).
    """
    settings = DecomposeSettings.from_config(config)
    before = count_layers(model)
    plans, records = plan_model(model, before, settings, progress)
    new_model = model
    if plans:
        new_model = model.replace(graph_def=split_convs(model.copy_graph_def(), plans))
    after = count_layers(new_model) if plans else before
    eligible_before, eligible_after = [], []
    for record in records:
        if not record.get("eligible"):
            continue
        name = record["layer"]
        parts = [record["first"], name] if record["status"] == "decomposed" else [name]
        eligible_before.append(name)
        eligible_after += parts
        params_b, flops_b = _sums(before, [name])
        params_a, flops_a = _sums(after, parts)
        record.update(params_before=params_b, params_after=params_a,
                      flops_before=flops_b, flops_after=flops_a)
    params_eb, flops_eb = _sums(before, eligible_before)
    params_ea, flops_ea = _sums(after, eligible_after)
    model_b, model_a = total(before), total(after)
    metrics = {
        "decomposed": len(plans),
        "eligible": len(eligible_before),
        "skipped": len(records) - len(plans),
        "eligible_flops_before": flops_eb, "eligible_flops_after": flops_ea,
        "eligible_flops_cut_pct": percent_cut(flops_eb, flops_ea),
        "eligible_params_before": params_eb, "eligible_params_after": params_ea,
        "eligible_params_cut_pct": percent_cut(params_eb, params_ea),
        "model_flops_before": model_b.flops, "model_flops_after": model_a.flops,
        "model_flops_cut_pct": percent_cut(model_b.flops, model_a.flops),
        "model_params_before": model_b.params, "model_params_after": model_a.params,
        "model_params_cut_pct": percent_cut(model_b.params, model_a.params),
    }
    return new_model, records, metrics


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

    def layers(self, model: Model, config: Mapping[str, Any]) -> list[str]:
        settings = DecomposeSettings.from_config(_own(config))
        plans, _ = plan_model(model, count_layers(model), settings)
        return [plan.name for plan in plans]

    def apply(self, model: Model, ctx: PassContext) -> Model:
        new_model, records, metrics = decompose_model(model, _own(ctx.config),
                                                      progress=ctx.progress)
        ctx.report.layers.extend(records)
        ctx.report.metrics.update(metrics)
        if not metrics["decomposed"]:
            ctx.report.notes.append("no conv decomposed; the model is unchanged")
        elif ctx.training is not None and ctx.config.get("fine_tune", True):
            new_model = self._fine_tune(new_model, ctx)
        else:
            ctx.report.notes.append("not fine-tuned (no training data): accuracy may drop; "
                                    "give --train to fine-tune the decomposed model")
        ctx.progress(f"decompose: {metrics['decomposed']} conv(s) split, eligible FLOPs "
                     f"-{metrics['eligible_flops_cut_pct']}%")
        return new_model


    @staticmethod
    def _fine_tune(model: Model, ctx: PassContext) -> Model:
        """Retrain every weighted layer of the decomposed model (AMCT's decompose_graph flow)."""
        names = list(count_layers(model))
        opts = options(ctx.config, FINE_TUNE_DEFAULTS)
        ctx.progress(f"decompose: fine-tuning {len(names)} layers for {opts['epochs']} epochs")
        trainable, history = fit(lambda: TrainableGraph(model, names), model, ctx.training,
                                 opts, progress=ctx.progress)
        ctx.report.metrics.update(fine_tune_loss=[round(x, 5) for x in history["loss"]],
                                  train_steps=history["steps"], train_seconds=history["seconds"])
        return trainable.export()


_NOT_DECOMPOSE_KEYS = {"enabled", "force", "fine_tune", *TRAIN_OPTIONS_SCHEMA}


def _own(config: Mapping[str, Any] | None) -> dict:
    """The decomposition options, without the planner's and the fine-tuning keys."""
    return {k: v for k, v in (config or {}).items() if k not in _NOT_DECOMPOSE_KEYS}


@hookimpl
def register_passes(registry):
    registry.add(Decompose())
