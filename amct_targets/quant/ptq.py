"""Post-training INT8 quantization (the `quantize` pass's work).

Calibrate on `batch_num` batches (every layer's statistics in the same forward passes), the
registered weight algorithm (ARQ) per layer, the registered activation algorithm (IFMR, HFMG,
...) per layer, then `finish_int8`: AscendQuant / AscendWeightQuant / AscendDequant, AMCT's
record file and JSON config.
"""
from __future__ import annotations

import numpy as np

from amct_targets.graph.model import Model
from amct_targets.graph.pattern import GraphIndex
from amct_targets.quant.calibrate import batches, calibrate
from amct_targets.quant.config import QuantSettings
from amct_targets.quant.int8 import finish_int8, quantize_weights, select_int8_layers
from amct_targets.quant.rewrite import LayerQuant


def post_training_quantize(model: Model, ctx) -> Model:
    settings = QuantSettings.from_section(ctx.config, ctx.quantizers)
    selection = select_int8_layers(model, ctx.profile, settings, ctx.layouts)
    if not selection.layers:
        ctx.report.layers.extend(selection.float_layers)
        ctx.report.metrics.update(quantized=0, float=len(selection.float_layers))
        ctx.report.notes.append("no layer to quantize; the model is unchanged")
        return model
    data = batches(ctx.calibration, settings.batch_num, settings.globals.get("batch_size"),
                   "calibration data")
    stats, _ = calibrate(model, selection.stats_requests(ctx.quantizers), data, ops=ctx.ops,
                         progress=ctx.progress)
    index = GraphIndex(model.graph_def)
    quants = []
    for layer in selection.layers:
        act = selection.params[layer.name]["activation"]
        params = ctx.quantizers.activations[act["act_algo"]].compute(stats[layer.act_input], act)
        weights = index.const_value(index.nodes[layer.weight_node])
        result = quantize_weights(selection, ctx.quantizers, layer, weights)
        quants.append(LayerQuant(layer, float(params.scale), int(params.offset),
                                 np.asarray(result.scale, np.float32), result.quantized))
    return finish_int8(model, selection, quants, ctx, data[0], stats)
