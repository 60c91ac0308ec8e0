"""`quantize_model`: calibration ops inside the user's own tf.Graph.

For each activation tensor a quantized layer reads, one `tf.numpy_function` op takes the
tensor, folds the batch into bounded-memory statistics (calibration/stats.py
`ActivationStats`: the k extreme values AMCT's percentile needs, a histogram) and returns
the number of batches seen, which an `assign` stores in a counter variable. The layer op
gets a control input on that assign, so the ordinary `session.run(outputs, feed_dict)` of
the user's script runs the statistics too, with the model's outputs unchanged (float).
When every tensor has seen `batch_num` batches, the registered activation algorithm of each
layer (IFMR / HFMG, quant/algorithms.py) and the weight algorithm (ARQ) give the scales,
written to the record file in AMCT's format.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from amct_targets.amct_tensorflow import analysis
from amct_targets.amct_tensorflow.log import LOGGER, fail
from amct_targets.amct_tensorflow.quant_config import (
    _graph_def, read_quant_config, select_layers,
)
from amct_targets.amct_tensorflow.record import LayerRecord, write_record
from amct_targets.calibration.stats import ActivationStats, histogram_stride, k_for_percentile
from amct_targets.errors import AmctError, ConfigError
from amct_targets.graph.pattern import GraphIndex
from amct_targets.quant.int8 import quantize_weights


def batch_summary(x: np.ndarray, k: int, bins: int) -> dict:
    """The numpy twin of calibration.stats.batch_summary_tensors for one batch."""
    flat = np.asarray(x, np.float32).ravel()
    if flat.size == 0:
        return {"count": 0}
    finite = bool(np.isfinite(flat).all())
    low, high = float(flat.min()), float(flat.max())
    kept = min(int(k), flat.size)
    top = np.sort(np.partition(flat, flat.size - kept)[flat.size - kept:])[::-1]
    bottom = np.sort(np.partition(flat, kept - 1)[:kept])
    hist = np.zeros(bins, np.int64)
    if finite:
        stride = histogram_stride(flat.size, x.shape[-1] if np.ndim(x) else None)
        sample = flat[::stride]
        hist_high = high if high > low else low + max(1.0, abs(low))
        hist = np.histogram(sample, bins=bins, range=(low, hist_high))[0]
    return {"count": flat.size, "finite": finite, "min": low, "max": high, "top": top,
            "bottom": bottom, "hist": hist}


class Calibrator:
    """The Python side of the inserted ops of one quantize_model call."""

    def __init__(self, selection, record_file: str, batch_num: int, weights: dict,
                 skip_fusion: set[str]):
        self.selection = selection
        self.record_file = record_file
        self.batch_num = batch_num
        self.weights = weights
        self.skip_fusion = skip_fusion
        self.requests = selection.stats_requests(analysis.quantizers())
        self.stats: dict[str, ActivationStats] = {}
        self.batches = {tensor: 0 for tensor in self.requests}
        self.written = False
        self._lock = threading.Lock()

    def update(self, tensor: str, x: np.ndarray) -> np.int64:
        with self._lock:
            if self.batches[tensor] >= self.batch_num:
                return np.int64(self.batches[tensor])
            request = self.requests[tensor]
            if tensor not in self.stats:
                k = k_for_percentile(max(1, np.size(x)) * self.batch_num, request.percentile)
                self.stats[tensor] = ActivationStats(bins=max(1, request.bins), k=k)
            summary = batch_summary(x, self.stats[tensor].k, self.stats[tensor].bins)
            if summary["count"] and not summary["finite"]:
                raise fail(ConfigError(
                    f"calibration batch {self.batches[tensor] + 1}: tensor '{tensor}' holds "
                    "NaN or infinite values; check the preprocessing of the calibration data"))
            self.stats[tensor].update(summary)
            self.batches[tensor] += 1
            LOGGER.logd(f"calibration: tensor {tensor} batch {self.batches[tensor]}/"
                        f"{self.batch_num}")
            if not self.written and all(n >= self.batch_num for n in self.batches.values()):
                self.write()
            return np.int64(self.batches[tensor])

    def write(self) -> None:
        quantizers = analysis.quantizers()
        records = {}
        for layer in self.selection.layers:
            stats = self.stats.get(layer.act_input)
            if stats is None or stats.count == 0:
                raise fail(ConfigError(f"calibration: layer '{layer.name}' saw no data (its "
                                       f"input '{layer.act_input}' was empty in every batch)"))
            act = self.selection.params[layer.name]["activation"]
            params = quantizers.activations[act["act_algo"]].compute(stats, act)
            weight = quantize_weights(self.selection, quantizers, layer,
                                      self.weights.get(layer.name))
            scale_w = np.asarray(weight.scale, np.float64).ravel()
            records[layer.name] = LayerRecord(float(params.scale), int(params.offset),
                                              tuple(float(s) for s in scale_w),
                                              tuple(0 for _ in scale_w),
                                              layer.name in self.skip_fusion)
        write_record(self.record_file, records)
        self.written = True
        LOGGER.logi(f"Calibration finished after {self.batch_num} batch(es): {len(records)} "
                    f"layer(s) written to the record file {self.record_file}")


def quantize_model(graph, config_file: str, record_file: str, calib_outputs=None) -> list:
    """Insert the calibration ops into `graph`; return the variables they use (exclude them
    when restoring a checkpoint; initialize them with global_variables_initializer)."""
    import tensorflow as tf

    graph_def = _graph_def(graph, "quantize_model")
    config = read_quant_config(config_file)
    skip_fusion = set(config.get("skip_fusion_layers", []))
    do_fusion = bool(config.get("do_fusion", True))
    model = analysis.analysis_model(graph_def, do_fusion=do_fusion, skip_fusion=skip_fusion)
    try:
        selection = select_layers(model, config, f"config_file {config_file}")
    except AmctError as exc:
        raise fail(exc) from None
    listed = {k for k, v in config.items() if isinstance(v, dict)}
    selection.layers = [q for q in selection.layers if q.name in listed]
    if calib_outputs:
        needed = analysis.subgraph_nodes(graph_def, [getattr(o, "name", o)
                                                      for o in calib_outputs])
        selection.layers = [q for q in selection.layers if q.name in needed]
    if not selection.layers:
        raise fail(ConfigError(f"quantize_model: no layer of config_file {config_file} has "
                               "quant_enable true and is quantizable in this graph"))
    index = GraphIndex(model.graph_def)
    weights = {q.name: index.const_value(index.nodes[q.weight_node])
               for q in selection.layers if q.weight_node is not None}
    skip = skip_fusion if do_fusion else {q.name for q in selection.layers}
    calibrator = Calibrator(selection, str(Path(record_file)), selection.settings.batch_num,
                            weights, skip)
    readers: dict[str, list[str]] = {}
    for layer in selection.layers:
        readers.setdefault(layer.act_input, []).append(layer.name)
    variables = []
    with graph.as_default():
        for tensor_name, layers in readers.items():
            scope = f"{layers[0]}/amct_calibration"
            x = graph.get_tensor_by_name(tensor_name)
            with tf.name_scope(scope):
                counter = tf.compat.v1.Variable(np.int64(0), trainable=False, name="batch_count")
                seen = tf.numpy_function(
                    lambda value, name=tensor_name: calibrator.update(name, value), [x],
                    tf.int64, stateful=True, name="activation_statistics")
                assign = tf.compat.v1.assign(counter, tf.reshape(seen, []), name="update")
            for layer in layers:
                graph.get_operation_by_name(layer)._add_control_input(assign.op)
            variables.append(counter)
    LOGGER.logi(f"quantize_model: {len(selection.layers)} layer(s) to calibrate over "
                f"{calibrator.batch_num} batch(es); the record file {record_file} is written "
                "when the last batch has run")
    return variables


__all__ = ["quantize_model", "batch_summary", "Calibrator"]
