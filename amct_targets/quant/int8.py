"""INT8 finishing shared by post-training quantization and quantization-aware training:
choose the layers (`select_int8_layers`), then rewrite the graph into AMCT's deploy form,
report every layer with its fidelity against float, and write the record and the config
(`finish_int8`). The passes in passes/quantize.py and passes/qat.py are thin over this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from amct_targets.errors import describe
from amct_targets.graph.layout import bias_of
from amct_targets.graph.model import Model, tensor_name
from amct_targets.graph.pattern import GraphIndex
from amct_targets.memory import release
from amct_targets.quant.algorithms import StatsRequest
from amct_targets.quant.calibrate import merge_requests
from amct_targets.quant.config import QuantSettings, amct_config_json, record_text
from amct_targets.quant.layers import QuantLayer, find_layers
from amct_targets.quant.rewrite import LayerQuant, quantize_graph

RECORD_FILE, CONFIG_FILE = "record.txt", "quant_config.json"
DEFAULT_METRICS_SAMPLES = 8   # per-layer fidelity on the first 8 calibration samples
HISTOGRAM_LAYERS, HISTOGRAM_BINS = 5, 64   # histograms kept for the report's worst layers


@dataclass
class Int8Selection:
    """The layers to quantize with their resolved parameters, and those left in float."""

    settings: QuantSettings
    layers: list[QuantLayer]
    float_layers: list[dict]
    params: dict[str, dict] = field(default_factory=dict)   # layer -> {activation, weight}

    def stats_requests(self, quantizers) -> dict[str, StatsRequest]:
        """{activation tensor: what calibration must collect}, merged over its readers."""
        wanted: dict[str, list[StatsRequest]] = {}
        for layer in self.layers:
            act = self.params[layer.name]["activation"]
            algorithm = quantizers.activations[act["act_algo"]]
            wanted.setdefault(layer.act_input, []).append(algorithm.statistics(act))
        return {tensor: merge_requests(requests) for tensor, requests in wanted.items()}


def select_int8_layers(model: Model, profile, settings: QuantSettings, layouts
                       ) -> Int8Selection:
    """Layers to quantize per the profile's rules and the config, with their parameters."""
    g = settings.globals
    layers, skipped = find_layers(model, profile, layouts=layouts,
                                  skip_layers=set(g.get("skip_layers", [])),
                                  skip_layer_types=set(g.get("skip_layer_types", [])),
                                  min_input_channels=int(g.get("min_input_channels", 0)))
    float_layers = [{"layer": s.name, "op": s.op, "status": "float", "reason": s.reason}
                    for s in skipped]
    float_layers += [{"layer": q.name, "op": q.op, "status": "float",
                      "reason": "quant_enable: false in the config"}
                     for q in layers if not settings.enabled(q.name)]
    chosen = [q for q in layers if settings.enabled(q.name)]
    params = {q.name: {"activation": settings.activation_params(q.name),
                       "weight": settings.weight_params(q.name, q.channel_wise, q.op)}
              for q in chosen}
    return Int8Selection(settings, chosen, float_layers, params)


def quantize_weights(selection: Int8Selection, quantizers, layer: QuantLayer,
                     weights: np.ndarray | None):
    """The weight algorithm's result for one layer (per channel when allowed); a layer
    without weights (AvgPool) has scale_w = 1."""
    from amct_targets.quant.algorithms import WeightQuant

    if weights is None:
        return WeightQuant(np.ones(1, np.float32), np.zeros(1, np.int8), None)
    params = selection.params[layer.name]["weight"]
    algorithm = quantizers.weights[params["wts_algo"]]
    axes = layer.channel_axes if params["channel_wise"] else None
    return algorithm.compute(weights, axes, params)


def layer_output(index: GraphIndex, layer: QuantLayer) -> str:
    """The float tensor a quantized layer's AscendDequant stands for (after a Const bias,
    which a layer with weights takes into its int32 accumulator)."""
    bias = bias_of(index, layer.name) if layer.weight_node is not None else None
    return tensor_name(bias[0].name if bias else layer.name)


def similarity(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(cosine similarity, SQNR in dB) of `actual` against `reference`."""
    ref = reference.astype(np.float64).ravel()
    act = actual.astype(np.float64).ravel()
    norms = np.linalg.norm(ref), np.linalg.norm(act)
    if norms[0] > 0 and norms[1] > 0:
        cosine = float(ref @ act / (norms[0] * norms[1]))
    else:   # both zero: identical; one zero (a layer quantized to nothing): unrelated
        cosine = 1.0 if norms[0] == norms[1] else 0.0
    noise = float(np.sum((ref - act) ** 2))
    signal = float(np.sum(ref ** 2))
    sqnr = float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)
    return cosine, sqnr


def _pair_sums(reference, actual, width=None) -> list:
    """ref.act, ref.ref, act.act and |ref - act|^2 over all elements.

    Products and row sums (rows of the last axis, a few thousand values at most; `width`
    when given, possibly a tensor) are float32, the sum of the row sums float64: the same
    numbers to ~1e-7 relative as float64 throughout, at a third of the cost (casting every
    activation to float64 took half the fidelity run)."""
    import tensorflow as tf

    dtype = tf.float64 if tf.float64 in (reference.dtype, actual.dtype) else tf.float32
    if width is None:
        width = _row_width(reference)
    ref = tf.reshape(tf.cast(reference, dtype), [-1, width])
    act = tf.reshape(tf.cast(actual, dtype), [-1, width])
    diff = ref - act
    return [tf.reduce_sum(tf.cast(tf.reduce_sum(part, axis=1), tf.float64))
            for part in (ref * act, ref * ref, act * act, diff * diff)]


def _row_width(tensor) -> int:
    last = tensor.shape[-1] if tensor.shape.rank else None
    return int(last) if last else 1


def _pair_sums_function():
    """pair_sums(reference, actual): `_pair_sums` through one TF function for float32 pairs
    of any shape (the row width an argument), traced once instead of once per distinct
    shape; other dtypes build their ops in place."""
    import tensorflow as tf

    tensor = tf.TensorSpec(None, tf.float32)
    traced = tf.function(_pair_sums, autograph=False, input_signature=[
        tensor, tensor, tf.TensorSpec([], tf.int32)])

    def pair_sums(reference, actual) -> list:
        if reference.dtype == actual.dtype == tf.float32:
            return traced(reference, actual, _row_width(reference))
        return _pair_sums(reference, actual)

    return pair_sums


def layer_fidelity(model: Model, deployed: Model, quants, sample: Mapping[str, np.ndarray],
                   ops) -> dict[str, tuple[float, float]]:
    """Each layer's output in the simulated INT8 model against float, both run on the same
    `sample` inputs (whole tensors compared, whatever their rank).

    One function holds both graphs (the simulated one imported under `sim/`, fed by the float
    graph's inputs) and reduces each pair of layer outputs to four float64 sums in the graph,
    so neither model's activations ever reach numpy and the graph is imported once."""
    from amct_targets.graph.run import compile_graph, expand_custom_ops, import_into_function

    index = GraphIndex(model.graph_def)
    float_names = [layer_output(index, q.layer) for q in quants]
    sim_names = [f"{q.layer.name}/ascend_dequant:0" for q in quants]
    sim_graph = expand_custom_ops(deployed.graph_def, ops, model.source)

    def extend(graph, tensor):
        import_into_function(sim_graph, name="sim", input_map={
            tensor_name(n): tensor(n) for n in deployed.input_names})
        sums = []
        for f, s in zip(float_names, sim_names):
            sums += pair_sums(tensor(f), graph.get_tensor_by_name(f"sim/{s}"))
        return sums

    pair_sums = _pair_sums_function()   # the sum ops are built once, not once per layer

    run = compile_graph(model.graph_def, model.input_names, extend, ops=ops,
                        where=model.source)
    names = [q.layer.name for q in quants]
    values = run(*[sample[n] for n in model.input_names])
    del run
    release()   # both imported graphs and their kernels
    result = {}
    for position, name in enumerate(names):
        dot, ref2, act2, noise = (float(v) for v in values[4 * position:4 * position + 4])
        denom = np.sqrt(ref2) * np.sqrt(act2)
        cosine = dot / denom if denom > 0 else 1.0
        sqnr = float("inf") if noise == 0 else 10.0 * np.log10(max(ref2, 1e-30) / noise)
        result[name] = (float(cosine), float(sqnr))
    return result


def _histogram(stats, clip_min: float, clip_max: float) -> dict:
    counts, edges = stats.histogram()
    if counts.size > HISTOGRAM_BINS and counts.size % HISTOGRAM_BINS == 0:
        counts = counts.reshape(HISTOGRAM_BINS, -1).sum(axis=1)
        edges = edges[::len(edges) // HISTOGRAM_BINS]
    return {"edges": [float(e) for e in edges], "counts": [float(c) for c in counts],
            "clip_min": float(clip_min), "clip_max": float(clip_max)}


def finish_int8(model: Model, selection: Int8Selection, quants: list[LayerQuant], ctx,
                sample: Mapping[str, np.ndarray], stats: Mapping[str, Any] | None = None
                ) -> Model:
    """Rewrite `model` with `quants`, report each layer, write the record and the config.

    The per-layer fidelity is a report metric: when it cannot be computed the build goes on
    and the report says why."""
    settings = selection.settings
    samples = int(settings.globals.get("metrics_samples", DEFAULT_METRICS_SAMPLES))
    sample = {k: np.asarray(v)[:samples] for k, v in sample.items()}
    deployed, notes = quantize_graph(model, quants)
    try:
        fidelity = layer_fidelity(model, deployed, quants, sample, ctx.ops)
    except Exception as exc:  # noqa: BLE001 - a report metric never kills a build
        fidelity = {}
        ctx.report.notes.append(f"per-layer fidelity not measured: {describe(exc)}")
    entries = []
    for q in quants:
        act = selection.params[q.layer.name]["activation"]
        entry = {"layer": q.layer.name, "op": q.layer.op, "status": "quantized",
                 "act_algo": act["act_algo"], "scale_d": q.scale_d, "offset_d": q.offset_d,
                 "scale_w_min": float(q.scale_w.min()), "scale_w_max": float(q.scale_w.max()),
                 "channel_wise": bool(q.scale_w.size > 1)}
        if q.layer.name in fidelity:
            entry["cosine"], entry["sqnr_db"] = fidelity[q.layer.name]
        entries.append(entry)
    if stats:
        by_name = {q.layer.name: q for q in quants}
        worst = sorted((e for e in entries if "cosine" in e), key=lambda e: e["cosine"])
        for entry in worst[:HISTOGRAM_LAYERS]:
            q = by_name[entry["layer"]]
            entry["histogram"] = _histogram(stats[q.layer.act_input],
                                            -(128 + q.offset_d) * q.scale_d,
                                            (127 - q.offset_d) * q.scale_d)
    ctx.report.layers.extend(entries + selection.float_layers)
    order = {node.name: i for i, node in enumerate(model.graph_def.node)}
    ctx.report.layers.sort(key=lambda entry: order.get(entry["layer"], len(order)))
    ctx.report.notes.extend(notes)
    cosines = [m[0] for m in fidelity.values()]
    sqnrs = [m[1] for m in fidelity.values() if np.isfinite(m[1])]
    ctx.report.metrics.update(quantized=len(quants), float=len(selection.float_layers),
                              min_cosine=round(min(cosines), 6) if cosines else None,
                              mean_sqnr_db=round(float(np.mean(sqnrs)), 2) if sqnrs else None)
    if ctx.artifacts_dir is not None:
        records = {q.layer.name: {"scale_d": q.scale_d, "offset_d": q.offset_d,
                                  "scale_w": q.scale_w.tolist()} for q in quants}
        (ctx.artifacts_dir / RECORD_FILE).write_text(record_text(records), encoding="utf-8")
        (ctx.artifacts_dir / CONFIG_FILE).write_text(
            amct_config_json(settings, selection.layers, selection.params), encoding="utf-8")
        ctx.report.artifacts.update(record=RECORD_FILE, quant_config=CONFIG_FILE)
    return deployed
