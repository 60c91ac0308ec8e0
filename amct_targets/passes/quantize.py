"""`quantize`: INT8 post-training quantization in AMCT's deploy format.

Calibrate on `batch_num` batches (every layer's statistics in the same forward passes),
ARQ per-channel weights, IFMR or HFMG activations per layer, then rewrite the graph with
AscendQuant / AscendWeightQuant / AscendDequant. Writes AMCT's record file and JSON config.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from amct_targets.calibration.arq import arq
from amct_targets.calibration.hfmg import hfmg
from amct_targets.calibration.ifmr import ifmr
from amct_targets.graph.model import Model, tensor_name
from amct_targets.graph.pattern import GraphIndex
from amct_targets.hooks import hookimpl
from amct_targets.passes.base import CompressionPass, PassContext
from amct_targets.quant.calibrate import IFMR_BINS, batches, calibrate
from amct_targets.quant.config import SECTION_SCHEMA, QuantSettings, amct_config_json, \
    record_text
from amct_targets.quant.layers import IMPLEMENTED, OP_LAYOUT, find_layers
from amct_targets.quant.rewrite import LayerQuant, quantize_graph

RECORD_FILE, CONFIG_FILE = "record.txt", "quant_config.json"
DEFAULT_METRICS_SAMPLES = 8  # per-layer fidelity on the first 8 calibration samples


def similarity(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(cosine similarity, SQNR in dB) of `actual` against `reference`."""
    ref = reference.astype(np.float64).ravel()
    act = actual.astype(np.float64).ravel()
    denom = np.linalg.norm(ref) * np.linalg.norm(act)
    cosine = float(ref @ act / denom) if denom > 0 else 1.0
    noise = float(np.sum((ref - act) ** 2))
    signal = float(np.sum(ref ** 2))
    sqnr = float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)
    return cosine, sqnr


def _layer_output(index: GraphIndex, layer: str) -> str:
    """The float tensor the quantized layer's AscendDequant stands for (after a Const bias)."""
    bias = index.bias_add_of(layer)
    return tensor_name(bias[0].name if bias else layer)


def _activation_params(layers, settings):
    """Per-layer resolved params, and per activation tensor what calibration must collect."""
    resolved, tensors = {}, {}
    for layer in layers:
        act = settings.activation_params(layer.name)
        weight = settings.weight_params(layer.name, layer.channel_wise, layer.op)
        resolved[layer.name] = {"activation": act, "weight": weight}
        entry = tensors.setdefault(layer.act_input, {"percentile": 1.0, "bins": 0})
        entry["percentile"] = min(entry["percentile"], act["max_percentile"],
                                  act["min_percentile"])
        entry["bins"] = max(entry["bins"], act["num_of_bins"] if act["act_algo"] == "hfmg"
                            else IFMR_BINS)
    return resolved, tensors


def layer_metrics(deployed: Model, quants, batch, float_out, outputs, samples):
    """Each layer's output in the simulated INT8 model against float, on calibration data."""
    from amct_targets.simulate import expand_ascend_ops, graph_runner

    names = [f"{q.layer.name}/ascend_dequant:0" for q in quants]
    run = graph_runner(expand_ascend_ops(deployed.graph_def), list(deployed.input_names), names)
    simulated = run(*[batch[name][:samples] for name in deployed.input_names])
    return {q.layer.name: similarity(float_out[outputs[q.layer.name]][:samples], sim)
            for q, sim in zip(quants, simulated)}


def finish_int8(model: Model, quants, resolved, settings, layers, float_layers, ctx,
                batch, float_out=None) -> Model:
    """Rewrite `model` with `quants`, report each layer, write the record and the config.

    Shared by post-training quantization and quantization-aware training. `float_out` holds
    the float layer outputs on `batch` when calibration already fetched them.
    """
    from amct_targets.simulate import expand_ascend_ops, graph_runner

    samples = int(settings.globals.get("metrics_samples", DEFAULT_METRICS_SAMPLES))
    index = GraphIndex(model.graph_def)
    outputs = {q.layer.name: _layer_output(index, q.layer.name) for q in quants}
    if float_out is None:
        fetches = sorted(set(outputs.values()))
        run = graph_runner(expand_ascend_ops(model.graph_def), list(model.input_names), fetches)
        float_out = dict(zip(fetches, run(*[batch[n][:samples] for n in model.input_names])))
    deployed, notes = quantize_graph(model, quants)
    fidelity = layer_metrics(deployed, quants, batch, float_out, outputs, samples)
    for q in quants:
        cosine, sqnr = fidelity[q.layer.name]
        ctx.report.layers.append({
            "layer": q.layer.name, "op": q.layer.op, "status": "quantized",
            "act_algo": resolved[q.layer.name]["activation"]["act_algo"],
            "scale_d": q.scale_d, "offset_d": q.offset_d,
            "scale_w_min": float(q.scale_w.min()), "scale_w_max": float(q.scale_w.max()),
            "channel_wise": bool(q.scale_w.size > 1), "cosine": cosine, "sqnr_db": sqnr})
    ctx.report.layers.extend(float_layers)
    order = {node.name: i for i, node in enumerate(model.graph_def.node)}
    ctx.report.layers.sort(key=lambda entry: order.get(entry["layer"], len(order)))
    ctx.report.notes.extend(notes)
    cosines = [m[0] for m in fidelity.values()]
    sqnrs = [m[1] for m in fidelity.values() if np.isfinite(m[1])]
    ctx.report.metrics.update(quantized=len(quants), float=len(float_layers),
                              min_cosine=round(min(cosines), 6),
                              mean_sqnr_db=round(float(np.mean(sqnrs)), 2) if sqnrs else None)
    if ctx.artifacts_dir is not None:
        records = {q.layer.name: {"scale_d": q.scale_d, "offset_d": q.offset_d,
                                  "scale_w": q.scale_w.tolist()} for q in quants}
        (ctx.artifacts_dir / RECORD_FILE).write_text(record_text(records), encoding="utf-8")
        (ctx.artifacts_dir / CONFIG_FILE).write_text(
            amct_config_json(settings, layers, resolved), encoding="utf-8")
        ctx.report.artifacts.update(record=RECORD_FILE, quant_config=CONFIG_FILE)
    return deployed


def select_layers(model: Model, ctx: PassContext, settings: QuantSettings):
    """(layers to quantize, float-layer report entries) per profile rules and config."""
    g = settings.globals
    layers, skipped = find_layers(model, ctx.profile, skip_layers=set(g.get("skip_layers", [])),
                                  skip_layer_types=set(g.get("skip_layer_types", [])),
                                  min_input_channels=int(g.get("min_input_channels", 0)))
    disabled = [layer for layer in layers if not settings.enabled(layer.name)]
    float_layers = [{"layer": s.name, "op": s.op, "status": "float", "reason": s.reason}
                    for s in skipped]
    float_layers += [{"layer": d.name, "op": d.op, "status": "float",
                      "reason": "quant_enable: false in the config"} for d in disabled]
    return [layer for layer in layers if settings.enabled(layer.name)], float_layers


SHAPE_ONLY_OPS = ("Identity", "Reshape", "ExpandDims", "Squeeze")


def claimed_layers(model: Model, config: Mapping[str, Any]) -> list[str]:
    """Layers quantization would change, for the planner's conflict check.

    Besides the compute layers, a Softmax feeding (through shape-only ops) the activation
    input of a layer with Const weights gets an AscendQuant on its output, and a Softmax named
    with quant_enable true is claimed as asked: fast_softmax may not replace either (AMCT: no
    quantization and approximation on one layer).
    """
    skip = set(config.get("skip_layers", ()))
    names = [n.name for n in model.graph_def.node if n.op in IMPLEMENTED and n.name not in skip]
    index = GraphIndex(model.graph_def)
    for layer in list(names):
        node = index.nodes[layer]
        act_index, weight_index, _ = OP_LAYOUT[node.op]
        weights = index.producer(node, weight_index)
        if weights is None or weights.op != "Const" or \
                (config.get(layer) or {}).get("quant_enable") is False:
            continue
        producer = index.producer(node, act_index)
        while producer is not None and producer.op in SHAPE_ONLY_OPS:
            producer = index.producer(producer, 0)
        if producer is not None and producer.op == "Softmax":
            names.append(producer.name)
    names += [n.name for n in model.graph_def.node if n.op == "Softmax"
              and (config.get(n.name) or {}).get("quant_enable") is True]
    return list(dict.fromkeys(names))


class Quantize(CompressionPass):
    name = "quantize"
    summary = "INT8 post-training quantization, AMCT deploy format (ARQ weights, IFMR/HFMG)"
    requires = ("int8",)
    needs = ("calibration",)
    stage = "graph"
    after = ("fold_bn",)
    enabled_by_default = True
    exclusive_with = ("fast_softmax",)
    config_schema = SECTION_SCHEMA

    def layers(self, model: Model, config: Mapping[str, Any]) -> list[str]:
        return claimed_layers(model, config)

    def apply(self, model: Model, ctx: PassContext) -> Model:
        settings = QuantSettings.from_section(ctx.config)
        g = settings.globals
        layers, float_layers = select_layers(model, ctx, settings)
        if not layers:
            ctx.report.layers.extend(float_layers)
            ctx.report.metrics.update(quantized=0, float=len(float_layers))
            ctx.report.notes.append("no layer to quantize; the model is unchanged")
            return model
        resolved, tensors = _activation_params(layers, settings)
        data = batches(ctx.calibration, settings.batch_num, g.get("batch_size"),
                       "calibration data")
        index = GraphIndex(model.graph_def)
        outputs = {layer.name: _layer_output(index, layer.name) for layer in layers}
        stats, float_out = calibrate(model, sorted(tensors), tensors, data,
                                     extra_fetches=sorted(set(outputs.values())),
                                     progress=ctx.progress)
        quants = []
        for layer in layers:
            act = resolved[layer.name]["activation"]
            if act["act_algo"] == "hfmg":
                params = hfmg(stats[layer.act_input], num_of_bins=act["num_of_bins"],
                              asymmetric=act["asymmetric"])
            else:
                params = ifmr(stats[layer.act_input], max_percentile=act["max_percentile"],
                              min_percentile=act["min_percentile"],
                              search_range=tuple(act["search_range"]),
                              search_step=act["search_step"], asymmetric=act["asymmetric"])
            weights = index.const_value(index.nodes[layer.weight_node])
            channel_wise = resolved[layer.name]["weight"]["channel_wise"]
            result = arq(weights, layer.channel_axes if channel_wise else None)
            quants.append(LayerQuant(layer, float(params.scale), int(params.offset),
                                     result.scale.astype(np.float32), result.quantized))
        return finish_int8(model, quants, resolved, settings, layers, float_layers, ctx,
                           data[0], float_out)


@hookimpl
def register_passes(registry):
    registry.add(Quantize())


@hookimpl
def adjust_plan(plan, profile, config):
    """AMCT's `do_fusion: false` in the quantize section turns Conv+BN fusion off."""
    section = ((config or {}).get("passes") or {}).get("quantize") or {}
    step = plan.step("fold_bn")
    if step is not None and section.get("do_fusion") is False and step.status == "RUN":
        step.status, step.reason = "SKIP", "do_fusion: false in the quantize config"
