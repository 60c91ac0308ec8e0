"""`qat`: quantization-aware training, ending in the same deploy .pb as post-training quantization.

Weights: ARQ-style per-channel symmetric fake quantization (`arq_retrain`). Activations:
learnable clipping (`ulq_quantize`): a FakeQuantWithMinMaxVars whose min/max are variables,
initialised by IFMR on training samples and trained with straight-through gradients. Masks
left by a sparsity pass (model.metadata["weight_masks"]) stay applied, so 4:2 + QAT is AMCT's
combined compression. The trained float graph is then rewritten with AscendQuant /
AscendWeightQuant / AscendDequant and the record file written, exactly as `quantize` does.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from amct_targets.calibration.arq import arq
from amct_targets.calibration.ifmr import ifmr
from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.passes.quantize import (_activation_params, claimed_layers, finish_int8,
                                          select_layers)
from amct_targets.quant.calibrate import calibrate
from amct_targets.quant.config import SECTION_SCHEMA, QuantSettings
from amct_targets.quant.rewrite import LayerQuant
from amct_targets.retrain.train import TRAIN_OPTIONS_SCHEMA, fit, options
from amct_targets.retrain.trainable import TrainableGraph

INIT_SAMPLES = 256
QAT_SCHEMA = {**SECTION_SCHEMA,
              "properties": {**SECTION_SCHEMA["properties"], **TRAIN_OPTIONS_SCHEMA}}
TRAIN_KEYS = set(TRAIN_OPTIONS_SCHEMA)


def fake_quant_weights(op: str, channel_wise: bool):
    """A TF transform: symmetric 8-bit fake quantization, per output channel when asked."""
    import tensorflow as tf

    def transform(weights):
        if not channel_wise:
            m = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(weights)), 1e-12))
            return tf.quantization.fake_quant_with_min_max_vars(weights, -m, m, num_bits=8,
                                                                narrow_range=True)
        if op == "DepthwiseConv2dNative":
            shape = tf.shape(weights)
            flat = tf.reshape(weights, tf.concat([shape[:2], [-1]], 0))
            return tf.reshape(_per_last_axis(flat), shape)
        if op == "Conv2DBackpropInput":  # output channels are axis 2 of [H, W, out, in]
            swapped = tf.transpose(weights, [0, 1, 3, 2])
            return tf.transpose(_per_last_axis(swapped), [0, 1, 3, 2])
        return _per_last_axis(weights)

    def _per_last_axis(weights):
        axes = list(range(len(weights.shape) - 1))
        m = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(weights), axis=axes), 1e-12))
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            weights, -m, m, num_bits=8, narrow_range=True)

    return transform


def nudged_quant_params(low: float, high: float) -> tuple[float, int]:
    """(scale_d, offset_d) of FakeQuantWithMinMaxVars' 8-bit grid over [low, high]."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low < 1e-12:
        return 1.0, -128
    scale = (high - low) / 255.0
    zero_point = int(np.clip(np.floor(-low / scale + 0.5), 0, 255))
    return float(scale), zero_point - 128


class QuantizationAwareTraining(CompressionPass):
    name = "qat"
    summary = "INT8 quantization-aware training (ARQ weights, ULQ learnable clipping)"
    requires = ("qat",)
    needs = ("training",)
    stage = "retrain"
    after = ("prune_channels", "sparsify_4of2", "decompose")
    enabled_by_default = False
    exclusive_with = ("fast_softmax",)
    config_schema = QAT_SCHEMA

    def layers(self, model, config: Mapping[str, Any]) -> list[str]:
        return claimed_layers(model, config)

    def apply(self, model, ctx: PassContext):
        settings = QuantSettings.from_section({k: v for k, v in ctx.config.items()
                                               if k not in TRAIN_KEYS})
        layers, float_layers = select_layers(model, ctx, settings)
        if not layers:
            ctx.report.layers.extend(float_layers)
            ctx.report.notes.append("no layer to quantize; the model is unchanged")
            return model
        resolved, tensors = _activation_params(layers, settings)
        first = ctx.training.first_inputs(model, INIT_SAMPLES)
        ctx.progress("initialising activation ranges (IFMR on training samples)")
        stats, _ = calibrate(model, sorted(tensors), tensors, [first])
        ranges = {}
        for layer in layers:
            params = ifmr(stats[layer.act_input])
            ranges[layer.name] = (params.clip_min, params.clip_max)
        masks = dict(model.metadata.get("weight_masks", {}))
        by_name = {layer.name: layer for layer in layers}
        quantizers = {layer.name: fake_quant_weights(
            layer.op, resolved[layer.name]["weight"]["channel_wise"]) for layer in layers}

        def transform(name, weights):
            mask = masks.get(by_name[name].weight_node)
            if mask is not None:
                weights = weights * mask
            return quantizers[name](weights)

        opts = options(ctx.config, {"epochs": 2, "learning_rate": 2e-5})
        trainable, history = fit(
            lambda: TrainableGraph(model, [l.name for l in layers],
                                   weight_index={l.name: l.weight_index for l in layers},
                                   act_ranges=ranges,
                                   act_index={l.name: l.act_index for l in layers}),
            model, ctx.training, opts, transform=transform, progress=ctx.progress)

        def apply_mask(name, weights):
            mask = masks.get(by_name[name].weight_node)
            return weights if mask is None else weights * mask

        trained = trainable.export(apply_mask)
        learned = trainable.activation_ranges()
        values = trainable.values()
        quants = []
        for layer in layers:
            scale_d, offset_d = nudged_quant_params(*learned[layer.name])
            weights = apply_mask(layer.name, values[layer.weight_node])
            channel_wise = resolved[layer.name]["weight"]["channel_wise"]
            result = arq(weights, layer.channel_axes if channel_wise else None)
            quants.append(LayerQuant(layer, scale_d, offset_d, result.scale.astype(np.float32),
                                     result.quantized))
            resolved[layer.name]["activation"]["act_algo"] = "ulq_quantize"
        ctx.report.metrics.update(train_loss=[round(x, 5) for x in history["loss"]],
                                  train_steps=history["steps"],
                                  train_seconds=history["seconds"])
        deployed = finish_int8(trained, quants, resolved, settings, layers, float_layers, ctx,
                               first)
        return deployed.replace(metadata={**model.metadata, "quantized": True})


@hookimpl
def register_passes(registry):
    registry.add(QuantizationAwareTraining())


@hookimpl
def adjust_plan(plan, profile, config):
    """When quantization-aware training runs, it produces the INT8 model: no PTQ after it."""
    qat, ptq = plan.step("qat"), plan.step("quantize")
    if qat is not None and ptq is not None and qat.status == "RUN" and ptq.status == "RUN":
        ptq.status, ptq.reason = "SKIP", "qat produces the INT8 model (same deploy format)"
