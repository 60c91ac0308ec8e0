"""Quantization-aware training (the `qat` pass's work), ending in the same deploy .pb as
post-training quantization.

Weights: ARQ-style symmetric fake quantization per output channel (the layout table's output
axes) or per tensor (`arq_retrain`). Activations: learnable clipping (`ulq_quantize`): a
FakeQuantWithMinMaxVars whose min/max are variables, initialised by the layer's activation
algorithm (IFMR) on training samples and trained with straight-through gradients. Sparsity
masks that travel with the model (`Model.weight_masks`, from 4:2 or pruning) stay applied,
so 4:2 + QAT is AMCT's combined compression. The trained float graph is then finished
exactly as post-training quantization (quant/int8.py).
"""
from __future__ import annotations

import numpy as np

from amct_targets.graph.model import Model
from amct_targets.quant.calibrate import batches, calibrate
from amct_targets.quant.config import QuantSettings
from amct_targets.quant.int8 import finish_int8, quantize_weights, select_int8_layers
from amct_targets.quant.rewrite import LayerQuant
from amct_targets.retrain.recover import retrain
from amct_targets.retrain.train import TRAIN_OPTIONS_SCHEMA
from amct_targets.retrain.trainable import TrainableGraph

INIT_SAMPLES = 256
QAT_DEFAULTS = {"learning_rate": 1e-4}


def fake_quant_weights(cout_axes: tuple[int, ...], channel_wise: bool):
    """A TF transform: symmetric 8-bit fake quantization, per output channel when asked."""
    import tensorflow as tf

    def per_last_axis(weights):
        axes = list(range(len(weights.shape) - 1))
        m = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(weights), axis=axes), 1e-12))
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            weights, -m, m, num_bits=8, narrow_range=True)

    def transform(weights):
        if not channel_wise:
            m = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(weights)), 1e-12))
            return tf.quantization.fake_quant_with_min_max_vars(weights, -m, m, num_bits=8,
                                                                narrow_range=True)
        rank = len(weights.shape)
        axes = sorted(a % rank for a in cout_axes)
        perm = [a for a in range(rank) if a not in axes] + axes
        moved = tf.transpose(weights, perm)
        shape = tf.shape(moved)
        flat = tf.reshape(moved, tf.concat([shape[:rank - len(axes)], [-1]], 0))
        restored = tf.reshape(per_last_axis(flat), shape)
        return tf.transpose(restored, np.argsort(perm).tolist())

    return transform


def nudged_quant_params(low: float, high: float) -> tuple[float, int]:
    """(scale_d, offset_d) of FakeQuantWithMinMaxVars' 8-bit grid over [low, high]."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low < 1e-12:
        return 1.0, -128
    scale = (high - low) / 255.0
    zero_point = int(np.clip(np.floor(-low / scale + 0.5), 0, 255))
    return float(scale), zero_point - 128


def quantization_aware_training(model: Model, ctx) -> Model:
    config = {k: v for k, v in ctx.config.items() if k not in TRAIN_OPTIONS_SCHEMA}
    settings = QuantSettings.from_section(config, ctx.quantizers, where="passes.qat")
    selection = select_int8_layers(model, ctx.profile, settings, ctx.layouts)
    layers = selection.layers
    if not layers:
        ctx.report.layers.extend(selection.float_layers)
        ctx.report.notes.append("no layer to quantize; the model is unchanged")
        return model
    if ctx.calibration is not None:
        # the ranges post-training quantization would compute: epoch 0 is the PTQ model
        data = batches(ctx.calibration, settings.batch_num, settings.globals.get("batch_size"),
                       "calibration data")
        start = "post-training quantization on the calibration data"
    else:
        data = [ctx.training.first_inputs(model, INIT_SAMPLES)]
        start = f"ranges from the first {INIT_SAMPLES} training samples (no calibration data)"
    ctx.progress(f"initialising activation ranges: {start}")
    stats, _ = calibrate(model, selection.stats_requests(ctx.quantizers), data, ops=ctx.ops)
    ranges, ptq_params = {}, {}
    for layer in layers:
        act = selection.params[layer.name]["activation"]
        params = ctx.quantizers.activations[act["act_algo"]].compute(stats[layer.act_input], act)
        ranges[layer.name] = (params.clip_min, params.clip_max)
        ptq_params[layer.name] = (float(params.scale), int(params.offset))
    masks = dict(model.weight_masks)
    by_name = {layer.name: layer for layer in layers}
    quantizers = {layer.name: fake_quant_weights(
        layer.channel_axes, selection.params[layer.name]["weight"]["channel_wise"])
        for layer in layers}

    def apply_mask(name, weights):
        if weights is None:
            return None
        mask = masks.get(by_name[name].weight_node)
        return weights if mask is None else weights * mask

    def transform(name, weights):
        return quantizers[name](apply_mask(name, weights))

    trainable, history = retrain(
        ctx, "qat", lambda: TrainableGraph(model, [q.layer for q in layers], act_ranges=ranges),
        model, QAT_DEFAULTS, transform=transform, what="quantization-aware training")
    # No trained epoch beat the start on validation: keep exactly the PTQ result
    keep_start = history.get("best_epoch") == 0
    ctx.report.metrics["qat_start"] = _start_record(start, history, keep_start)
    trained = model if keep_start else trainable.export(apply_mask)
    learned = trainable.activation_ranges()
    values = trainable.values()
    quants = []
    for layer in layers:
        scale_d, offset_d = ptq_params[layer.name] if keep_start else nudged_quant_params(
            *learned[layer.name])
        weights = apply_mask(layer.name, values.get(layer.weight_node))
        result = quantize_weights(selection, ctx.quantizers, layer, weights)
        quants.append(LayerQuant(layer, scale_d, offset_d, np.asarray(result.scale, np.float32),
                                 result.quantized))
        if not keep_start:
            selection.params[layer.name]["activation"]["act_algo"] = "ulq_quantize"
    return finish_int8(trained, selection, quants, ctx, data[0], stats)


def _start_record(start: str, history, keep_start: bool) -> dict:
    """report.json metrics["qat_start"]: where QAT started and whether training beat it."""
    record = {"ranges": start, "kept": "start (no trained epoch was better on validation)"
              if keep_start else "trained"}
    if "val_metric" in history:
        record.update(start_val_metric=round(history["val_metric"][0], 6),
                      kept_val_metric=round(history["val_metric"][history["best_epoch"]], 6))
    return record
