"""Filter pruning (AMCT BalancedL2Norm) with retraining, then physical removal: the
`prune_channels` work.

Rank each prunable layer's output filters by balanced L2 norm, keep `1 - prune_ratio` of them
(rounded to the profile's `channel_pruning.channel_align` multiple when `ascend_optimized`),
retrain with the pruned channels masked (weights, bias and every per-channel Const on the
path, so the masked model equals the pruned one), then remove the channels from the frozen
graph and shrink every consumer (pruning/surgery.py). Layers whose output reaches a residual
Add, a Concat or a graph output are left whole, with the reason.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from amct_targets.graph.flops import count_layers, percent_cut, total
from amct_targets.graph.layout import LAYOUTS
from amct_targets.graph.model import Model
from amct_targets.graph.pattern import GraphIndex
from amct_targets.pruning.channel_groups import prunable_layers
from amct_targets.pruning.ranking import balanced_l2_norm_scores, kept_channels
from amct_targets.pruning.surgery import prune_output_channels, zero_pruned_channels
from amct_targets.retrain.recover import retrain
from amct_targets.retrain.trainable import TrainableGraph

DEFAULTS = {"learning_rate": 1e-3}


def _mask(edit, kept, channels, shape) -> np.ndarray:
    indices, size = edit.indices(kept, channels)
    mask = np.zeros(size, np.float32)
    mask[indices] = 1.0
    axis = edit.axis % len(shape) if len(shape) else 0
    return mask.reshape([-1 if a == axis else 1 for a in range(len(shape))]) if shape else mask


def plan_pruning(model, config: Mapping[str, Any], align: int | None,
                 layouts: Mapping = LAYOUTS):
    """({layer: kept indices}, groups, {layer: reason}) for this model and config."""
    groups, reasons = prunable_layers(model, layouts)
    index = GraphIndex(model.graph_def)
    ratio = float(config.get("prune_ratio", 0.3))
    skip = set(config.get("skip_layers", ()))
    kept, chosen = {}, {}
    for layer, group in groups.items():
        if layer in skip:
            reasons[layer] = "skipped by config (skip_layers)"
            continue
        if not group.zero_preserving:
            reasons[layer] = ("a pruned channel would not reach its consumers as zeros "
                              "(Sigmoid or non-zero shift on the path); left unpruned")
            continue
        weights = index.const_value(index.nodes[group.weights])
        scores = balanced_l2_norm_scores(weights, group.cout_axes)
        keep = kept_channels(scores, ratio, align)
        if len(keep) == group.channels:
            reasons[layer] = (f"{group.channels} channels: rounding the kept count to a multiple "
                              f"of {align} keeps them all")
            continue
        kept[layer], chosen[layer] = keep, group
    return kept, chosen, reasons


def _reestimate(model: Model, masked: Model, masks, ctx) -> Model:
    """The masked model with every BN-folded layer re-normalised to the float model's
    channel statistics, pruned channels to zero (retrain/renorm.py)."""
    from amct_targets.retrain.renorm import reestimate_in_pass, with_consts

    return with_consts(masked, reestimate_in_pass(model, masked, ctx, scan=masked,
                                                  const_masks=masks))


def prune(model: Model, ctx) -> Model:
    align = None
    if ctx.config.get("ascend_optimized", True):
        align = ctx.profile.capability("channel_pruning").params.get("channel_align")
    kept, groups, reasons = plan_pruning(model, ctx.config, align, ctx.layouts)
    before = count_layers(model, layouts=ctx.layouts)
    if not kept:
        ctx.report.layers.extend({"layer": k, "status": "kept", "reason": v}
                                 for k, v in reasons.items())
        ctx.report.notes.append("no layer can be pruned; the model is unchanged")
        return model
    masked = zero_pruned_channels(model, kept, groups)
    index = GraphIndex(masked.graph_def)
    masks = {}
    for layer, group in groups.items():
        for edit in group.output_side_edits:
            shape = index.const_value(index.nodes[edit.const]).shape
            masks[edit.const] = _mask(edit, kept[layer], group.channels, shape)
    if ctx.config.get("bn_reestimation", True):
        masked = _reestimate(model, masked, masks, ctx)
    trainable, _history = retrain(
        ctx, "prune_channels", lambda: TrainableGraph(masked, sorted(groups), const_masks=masks),
        masked, DEFAULTS, reference_model=model, what="pruning retraining")
    trained = zero_pruned_channels(trainable.export(), kept, groups)
    pruned = prune_output_channels(trained, kept, groups)
    after = count_layers(pruned, layouts=ctx.layouts)
    for name, cost in before.items():
        entry = {"layer": name, "op": cost.op, "params_before": cost.params,
                 "params_after": after[name].params if name in after else 0,
                 "flops_before": cost.flops,
                 "flops_after": after[name].flops if name in after else 0}
        if name in kept:
            entry.update(status="pruned", channels_before=groups[name].channels,
                         channels_after=int(len(kept[name])))
        else:
            default = ("depthwise: its channels follow the layer that feeds it"
                       if cost.op == "DepthwiseConv2dNative"
                       else f"{cost.op} output channels cannot be pruned here")
            entry.update(status="kept", reason=reasons.get(name, default))
        ctx.report.layers.append(entry)
    t_before, t_after = total(before), total(after)
    ctx.report.metrics.update(
        pruned_layers=len(kept), params_before=t_before.params, params_after=t_after.params,
        flops_before=t_before.flops, flops_after=t_after.flops,
        flops_cut_percent=percent_cut(t_before.flops, t_after.flops),
        params_cut_percent=percent_cut(t_before.params, t_after.params))
    return pruned
