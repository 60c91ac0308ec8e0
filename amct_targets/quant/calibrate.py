"""Calibration forward passes: every layer's activation statistics in the same passes.

One TF function computes, per distinct activation tensor, a small summary (min, max, the k
extreme values, a histogram); numpy merges the summaries batch by batch, so memory is one
batch's activations plus O(bins + k) numbers per tensor, whatever the batch count. What each
tensor needs (the percentile of its extremes, the histogram's bins) comes from the
activation algorithms of the layers reading it (`StatsRequest`).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from amct_targets.calibration.stats import ActivationStats, k_for_percentile, summary_ops, \
    summary_plan
from amct_targets.errors import ConfigError
from amct_targets.graph.model import Model
from amct_targets.graph.run import compile_graph
from amct_targets.memory import release
from amct_targets.quant.algorithms import StatsRequest

SUMMARY_KEYS = ("count", "finite", "min", "max", "top", "bottom", "hist")
UNKNOWN_SIZE_K = 4096   # extreme values kept when a tensor's size is not static


def batches(arrays: Mapping[str, np.ndarray], batch_num: int, batch_size: int | None,
            where: str) -> list[dict[str, np.ndarray]]:
    """Split calibration arrays into `batch_num` batches of `batch_size` samples."""
    total = len(next(iter(arrays.values())))
    size = batch_size or total // batch_num
    if size < 1 or size * batch_num > total:
        raise ConfigError(f"{where}: batch_num={batch_num} batches of {size or 0} sample(s) need "
                          f"{max(batch_num, size * batch_num)} calibration samples; the data "
                          f"has {total}. Give more data or lower batch_num / batch_size")
    return [{k: v[i * size:(i + 1) * size] for k, v in arrays.items()}
            for i in range(batch_num)]


def _largest_input(batch: Mapping[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(v))) if np.size(v) and np.asarray(v).dtype.kind == "f"
               else 0.0 for v in batch.values())


def merge_requests(requests: Sequence[StatsRequest]) -> StatsRequest:
    """One request serving several layers that read the same tensor."""
    return StatsRequest(percentile=min(r.percentile for r in requests),
                        bins=max(r.bins for r in requests))


def _elements_per_sample(tensor) -> int | None:
    dims = tensor.shape.as_list()[1:] if tensor.shape.rank else None
    if dims is None or any(d is None for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1


def _summary_function():
    """summarize(x, k, bins, size) -> `batch_summary_tensors(x, k, bins, size)`, through one
    TF function whose arguments carry the tensor (any shape, as float32) and its static
    choices (k, bins, the histogram stride, the row-split columns) as int32 scalars. It is
    traced twice at most (with and without the row split) instead of once per distinct
    shape: a ResNet50's 50 calibrated tensors had 10 traces, 0.55 s of building the
    calibration function. The ops, and so the statistics, are the same."""
    import tensorflow as tf

    scalar = tf.TensorSpec([], tf.int32)
    tensor = tf.TensorSpec(None, tf.float32)
    plain = tf.function(lambda x, k, bins, stride: summary_ops(x, k, bins, stride),
                        input_signature=[tensor, scalar, scalar, scalar], autograph=False)
    split = tf.function(lambda x, k, bins, stride, cols: summary_ops(x, k, bins, stride, cols),
                        input_signature=[tensor, scalar, scalar, scalar, scalar],
                        autograph=False)

    def summarize(x, k: int, bins: int, size: int | None) -> dict:
        stride, cols = summary_plan(x.shape, k, size)
        if x.dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        if cols is None:
            return plain(x, k, bins, stride)
        return split(x, k, bins, stride, cols)

    summarize.traced = (plain, split)
    return summarize


def calibrate(model: Model, requests: Mapping[str, StatsRequest],
              data: Sequence[Mapping[str, np.ndarray]], *, ops,
              progress: Callable[[str], None] = lambda m: None):
    """Run every batch once; return ({tensor: ActivationStats}, {}) (the second item is kept
    for callers of the former first-batch extra fetches).

    An earlier pass may have left custom ops (AscendQuant, FastSoftmax, ...): the graph runs
    with them expanded through the op registry `ops`."""
    batch_samples = len(next(iter(data[0].values())))
    total_batches = len(data)
    tensors = sorted(requests)
    ks, bins = {}, {}
    summarize = _summary_function()

    def extend(_graph, tensor):
        outputs = []
        for name in tensors:
            x = tensor(name)
            per_sample = _elements_per_sample(x)
            request = requests[name]
            ks[name] = (k_for_percentile(per_sample * batch_samples * total_batches,
                                         request.percentile) if per_sample else UNKNOWN_SIZE_K)
            bins[name] = max(1, request.bins)
            size = per_sample * batch_samples if per_sample else None
            summary = summarize(x, ks[name], bins[name], size)
            outputs += [summary[key] for key in SUMMARY_KEYS]
        return outputs

    # One function for every batch, its fetches known when the graph is imported (no prune).
    run = compile_graph(model.graph_def, model.input_names, extend, ops=ops, where=model.source)
    stats = {name: ActivationStats(bins=bins[name], k=ks[name]) for name in tensors}
    width = len(SUMMARY_KEYS)
    for index, batch in enumerate(data):
        progress(f"calibration batch {index + 1}/{total_batches}")
        results = run(*[batch[n] for n in model.input_names])
        for position, name in enumerate(tensors):
            chunk = dict(zip(SUMMARY_KEYS, results[position * width:(position + 1) * width]))
            if not bool(chunk["finite"]):
                raise ConfigError(f"calibration batch {index + 1}: tensor '{name}' becomes "
                                  "infinite or NaN on this data (values far out of range, "
                                  f"up to {_largest_input(batch):.3g} in the inputs?); scale "
                                  "the calibration data like the training data")
            stats[name].update(chunk)
        del results
    del run
    release()   # the function's graph and kernels, before the next step builds its own
    return stats, {}
