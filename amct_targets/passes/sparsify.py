"""`sparsify_4of2`: 4:2 structured sparsity (AMCT L1SelectivePrune, n_out_of_m M4N2).

Along the input-channel axis, in every group of 4 consecutive weights (Cin padded with zeros
to a multiple of 4), keep the 2 of largest |w|. Weight shapes do not change. The masks are
held during retraining; `update_freq` 0 selects them once before training, N > 0 selects
them again from the current weights every N steps. The emitted .pb carries the zeros, and
ATC's `--sparsity=1` (the profile's capability flag) packs them on chips that gain from it.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from amct_targets.graph.pattern import GraphIndex
from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.retrain.train import TRAIN_OPTIONS_SCHEMA, fit, options
from amct_targets.retrain.trainable import TrainableGraph

# op type -> axis of the weight holding input channels (ASCEND_FACTS 5: MatMul, Conv2D,
# Conv2DBackpropInput).
CIN_AXIS = {"Conv2D": 2, "MatMul": 0, "Conv2DBackpropInput": 3}
GROUP, KEEP = 4, 2


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


def eligible_layers(model, config) -> tuple[list[str], list[dict]]:
    index = GraphIndex(model.graph_def)
    skip = set(config.get("skip_layers", ()))
    layers, left = [], []
    for node in model.graph_def.node:
        if node.op not in CIN_AXIS:
            continue
        weight = index.producer(node, 1)
        reason = None
        if node.name in skip:
            reason = "skipped by config (skip_layers)"
        elif node.op == "MatMul" and node.attr["transpose_a"].b:
            reason = "MatMul with transpose_a=True is not a 4:2 layer"
        elif node.op == "MatMul" and node.attr["transpose_b"].b:
            reason = "MatMul with transpose_b=True: Cin is not axis 0 of the weight"
        elif weight is None or weight.op != "Const":
            reason = "weights are not a Const"
        elif len(index.consumers.get(weight.name, [])) > 1:
            reason = f"weight Const '{weight.name}' is shared"
        if reason:
            left.append({"layer": node.name, "op": node.op, "status": "dense", "reason": reason})
        else:
            layers.append(node.name)
    return layers, left


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
        "skip_layers": {"type": "array", "items": {"type": "string"}},
        **TRAIN_OPTIONS_SCHEMA}}

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        return eligible_layers(model, config)[0]

    def apply(self, model, ctx: PassContext):
        import tensorflow as tf

        names, left = eligible_layers(model, ctx.config)
        index = GraphIndex(model.graph_def)
        ops = {n: index.nodes[n].op for n in names}
        weights = {n: index.const_value(index.producer(index.nodes[n], 1)) for n in names}
        initial = {n: mask_4of2(weights[n], CIN_AXIS[ops[n]]) for n in names}

        holder = {}  # the trainable view, created by fit() inside the strategy's scope

        def build():
            trainable = TrainableGraph(model, names)
            trainable.masks = {n: tf.Variable(initial[n], trainable=False,
                                              aggregation=tf.VariableAggregation.MEAN)
                               for n in names}
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
            for layer in trainable.layers:
                trainable.masks[layer.name].assign(
                    mask_4of2(values[layer.weight_const], CIN_AXIS[ops[layer.name]]))

        opts = options(ctx.config, {"epochs": 2, "learning_rate": 1e-4})
        trainable, history = fit(build, model, ctx.training, opts, transform=transform,
                                 progress=ctx.progress,
                                 every_n_steps=(freq, update_masks) if freq else None)
        final = {n: trainable.masks[n].numpy() for n in names}
        sparse = trainable.export(lambda name, w: w * final[name])
        sparse_index = GraphIndex(sparse.graph_def)
        masks = dict(model.metadata.get("weight_masks", {}))
        for name in names:
            layer = next(l for l in trainable.layers if l.name == name)
            value = sparse_index.const_value(sparse_index.nodes[layer.weight_const])
            masks[layer.weight_const] = final[name]
            ctx.report.layers.append({
                "layer": name, "op": ops[name], "status": "4:2",
                "weights": int(value.size), "zeros": int(value.size - np.count_nonzero(value)),
                "groups_over_2_nonzeros": groups_over_limit(value, CIN_AXIS[ops[name]])})
        ctx.report.layers.extend(left)
        ctx.report.metrics.update(
            sparse_layers=len(names), dense_layers=len(left),
            groups_over_2_nonzeros=sum(e.get("groups_over_2_nonzeros", 0)
                                       for e in ctx.report.layers),
            train_loss=[round(x, 5) for x in history["loss"]], train_steps=history["steps"],
            train_seconds=history["seconds"])
        return sparse.replace(metadata={**model.metadata, "weight_masks": masks})


@hookimpl
def register_passes(registry):
    registry.add(Sparsify4of2())
