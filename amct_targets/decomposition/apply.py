"""AMCT tensor decomposition of Conv2D kernels into two low-rank convs (the `decompose`
pass's work).

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

from amct_targets.decomposition.plan import DecomposeSettings, plan_model
from amct_targets.decomposition.rewrite import split_convs
from amct_targets.graph.flops import count_layers, percent_cut, total
from amct_targets.graph.layout import LAYOUTS, Layer, iter_layers
from amct_targets.graph.model import Model
from amct_targets.graph.pattern import GraphIndex
from amct_targets.retrain.train import TRAIN_OPTIONS_SCHEMA, fit, options
from amct_targets.retrain.trainable import TrainableGraph

FINE_TUNE_DEFAULTS = {"epochs": 5, "learning_rate": 2e-4}  # AMCT: ~0.1x the original rate


def _sums(costs, names) -> tuple[int, int]:
    totals = total([costs[n] for n in names if n in costs])
    return totals.params, totals.flops


def decompose_model(model: Model, config: Mapping[str, Any] | None = None, *,
                    progress=lambda message: None, layouts: Mapping = LAYOUTS
                    ) -> tuple[Model, list[dict], dict]:
    """Decompose every eligible conv of `model`; returns (new model, per-layer records, metrics).

    The input model is not changed. Records hold every conv: "decomposed" with rank, order,
    params/FLOPs before and after and the reconstruction error, or "skipped" with a reason.
    FLOPs and params follow `amct_targets.graph.flops` (bias included, batch 1).
    """
    settings = DecomposeSettings.from_config(config)
    before = count_layers(model, layouts=layouts)
    plans, records = plan_model(model, before, settings, progress, layouts)
    new_model = model
    if plans:
        new_model = model.replace(graph_def=split_convs(model.copy_graph_def(), plans))
    after = count_layers(new_model, layouts=layouts) if plans else before
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


def decompose(model: Model, ctx) -> Model:
    """The `decompose` pass's work: split, report, fine-tune when training data is given."""
    new_model, records, metrics = decompose_model(model, own_options(ctx.config),
                                                  progress=ctx.progress, layouts=ctx.layouts)
    ctx.report.layers.extend(records)
    ctx.report.metrics.update(metrics)
    if not metrics["decomposed"]:
        ctx.report.notes.append("no conv decomposed; the model is unchanged")
    elif ctx.training is not None and ctx.config.get("fine_tune", True):
        new_model = _fine_tune(new_model, ctx)
    else:
        ctx.report.notes.append("not fine-tuned (no training data): accuracy may drop; "
                                "give --train to fine-tune the decomposed model")
    ctx.progress(f"{metrics['decomposed']} conv(s) split, eligible FLOPs "
                 f"-{metrics['eligible_flops_cut_pct']}%")
    return new_model


def _fine_tune(model: Model, ctx) -> Model:
    """Retrain every weighted layer of the decomposed model (AMCT's decompose_graph flow)."""
    index = GraphIndex(model.graph_def)
    layers = [layer for _node, layer in iter_layers(index, ctx.layouts) if isinstance(layer, Layer)]
    opts = options(ctx.config, FINE_TUNE_DEFAULTS)
    ctx.progress(f"fine-tuning {len(layers)} layers for {opts['epochs']} epochs")
    trainable, history = fit(lambda: TrainableGraph(model, layers), model, ctx.training,
                             opts, progress=ctx.progress)
    ctx.report.metrics.update(fine_tune_loss=[round(x, 5) for x in history["loss"]],
                              train_steps=history["steps"], train_seconds=history["seconds"])
    return trainable.export()


_NOT_DECOMPOSE_KEYS = {"fine_tune", *TRAIN_OPTIONS_SCHEMA}


def own_options(config: Mapping[str, Any] | None) -> dict:
    """The decomposition options, without the planner's and the fine-tuning keys."""
    return {k: v for k, v in (config or {}).items() if k not in _NOT_DECOMPOSE_KEYS}
