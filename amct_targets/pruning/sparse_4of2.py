"""4:2 structured sparsity (AMCT L1SelectivePrune, n_out_of_m M4N2): the `sparsify_4of2` work.

Along the input-channel axis (the layout table's), in every group of 4 consecutive weights
(Cin padded with zeros to a multiple of 4), keep the 2 of largest |w|. Weight shapes do not
change. The masks are held during retraining; `update_freq` 0 selects them once before
training, N > 0 selects them again from the current weights every N steps. The result
carries the masks (`Model.weight_masks`) so later retraining (QAT) keeps them, and the .pb
carries the zeros that ATC's `--sparsity=1` packs on chips that gain from it.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from amct_targets.graph.layout import LAYOUTS, Layer, resolve_layer
from amct_targets.graph.model import Model
from amct_targets.graph.pattern import GraphIndex
from amct_targets.retrain.recover import retrain
from amct_targets.retrain.trainable import TrainableGraph

SPARSE_OPS = ("Conv2D", "MatMul", "Conv2DBackpropInput")   # AMCT's 4:2 layer types
GROUP, KEEP = 4, 2
DEFAULTS = {"learning_rate": 1e-3}   # chosen on digits_cnn with BN re-estimation + distillation


def mask_4of2(weights: np.ndarray, cin_axis: int) -> np.ndarray:
    """1/0 mask keeping the 2 largest |w| of each group of 4 along `cin_axis`."""
    moved = np.moveaxis(np.abs(weights), cin_axis, -1)
    cin = moved.shape[-1]
    padded = np.concatenate([moved, np.zeros(moved.shape[:-1] + (-cin % GROUP,))], axis=-1)
    groups = padded.reshape(padded.shape[:-1] + (-1, GROUP))
    # stable order: ties keep the lower index, so masks are deterministic
    order = np.argsort(-groups, axis=-1, kind="stable")
    mask = np.zeros_like(groups)
    np.put_along_axis(mask, order[..., :KEEP], 1.0, axis=-1)
    mask = mask.reshape(padded.shape)[..., :cin]
    return np.moveaxis(mask, -1, cin_axis).astype(np.float32)


def groups_over_limit(weights: np.ndarray, cin_axis: int) -> int:
    """How many groups of 4 along Cin have more than 2 non-zeros (0 for a valid 4:2 weight)."""
    moved = np.moveaxis(weights, cin_axis, -1)
    cin = moved.shape[-1]
    padded = np.concatenate([moved, np.zeros(moved.shape[:-1] + (-cin % GROUP,))], axis=-1)
    nonzero = np.count_nonzero(padded.reshape(padded.shape[:-1] + (-1, GROUP)), axis=-1)
    return int(np.sum(nonzero > KEEP))


def eligible_layers(model: Model, config: Mapping[str, Any], layouts: Mapping = LAYOUTS
                    ) -> tuple[list[Layer], list[dict]]:
    """(layers to sparsify, report entries of the layers left dense with a reason each)."""
    index = GraphIndex(model.graph_def)
    skip = set(config.get("skip_layers", ()))
    layers, left = [], []
    for node in model.graph_def.node:
        if node.op not in SPARSE_OPS:
            continue
        if node.name in skip:
            found = "skipped by config (skip_layers)"
        elif node.op == "MatMul" and node.attr["transpose_a"].b:
            found = "MatMul with transpose_a=True is not a 4:2 layer"
        else:
            found = resolve_layer(index, node, layouts)
        if isinstance(found, Layer):
            layers.append(found)
        else:
            left.append({"layer": node.name, "op": node.op, "status": "dense", "reason": found})
    return layers, left


def _reestimate(model: Model, layers, masks, ctx) -> Model:
    """The dense model with every BN-folded layer's weights and bias re-estimated for the
    masked model (retrain/renorm.py); training starts from it."""
    from amct_targets.retrain.renorm import reestimate_in_pass, with_consts

    index = GraphIndex(model.graph_def)
    masked = with_consts(model, {layer.weight: index.const_value(index.nodes[layer.weight])
                                 * masks[layer.name] for layer in layers})
    return with_consts(model, reestimate_in_pass(model, masked, ctx, scan=model, base=model))


def sparsify(model: Model, ctx) -> Model:
    import tensorflow as tf

    layers, left = eligible_layers(model, ctx.config, ctx.layouts)
    by_name = {layer.name: layer for layer in layers}
    index = GraphIndex(model.graph_def)
    initial = {layer.name: mask_4of2(index.const_value(index.nodes[layer.weight]),
                                     layer.cin_axis) for layer in layers}
    dense = model
    if ctx.config.get("bn_reestimation", True):
        model = _reestimate(model, layers, initial, ctx)
    holder = {}  # the trainable view, created by fit() inside the strategy's scope

    def build():
        trainable = TrainableGraph(model, layers)
        trainable.masks = {n: tf.Variable(initial[n], trainable=False,
                                          aggregation=tf.VariableAggregation.MEAN)
                           for n in initial}
        holder["trainable"] = trainable
        return trainable

    freq = int(ctx.config.get("update_freq", 0))

    def transform(name, w):
        masked = w * holder["trainable"].masks[name]
        if not freq:
            return masked
        # Masks that move (update_freq > 0) need pruned weights to keep learning:
        # straight-through gradient (SR-STE), so a weight can win its group back.
        return w + tf.stop_gradient(masked - w)

    def update_masks(trainable):
        values = trainable.values()
        for trained in trainable.layers:
            trainable.masks[trained.name].assign(
                mask_4of2(values[trained.weight_const], by_name[trained.name].cin_axis))

    trainable, _history = retrain(ctx, "sparsify_4of2", build, model, DEFAULTS,
                                  transform=transform, what="4:2 retraining",
                                  reference_model=dense,
                                  every_n_steps=(freq, update_masks) if freq else None)
    final = {n: trainable.masks[n].numpy() for n in initial}
    sparse = trainable.export(lambda name, w: w * final[name])
    sparse_index = GraphIndex(sparse.graph_def)
    masks = dict(model.weight_masks)
    for layer in layers:
        value = sparse_index.const_value(sparse_index.nodes[layer.weight])
        masks[layer.weight] = final[layer.name]
        ctx.report.layers.append({
            "layer": layer.name, "op": layer.op, "status": "4:2",
            "weights": int(value.size), "zeros": int(value.size - np.count_nonzero(value)),
            "groups_over_2_nonzeros": groups_over_limit(value, layer.cin_axis)})
    ctx.report.layers.extend(left)
    ctx.report.metrics.update(
        sparse_layers=len(layers), dense_layers=len(left),
        groups_over_2_nonzeros=sum(e.get("groups_over_2_nonzeros", 0)
                                   for e in ctx.report.layers))
    return sparse.replace(weight_masks=masks)
