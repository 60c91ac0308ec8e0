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

from amct_targets.calibration.stats import ActivationStats, batch_summary_tensors, \
    k_for_percentile
from amct_targets.errors import ConfigError
from amct_targets.graph.model import Model
from amct_targets.graph.run import GraphRunner
from amct_targets.quant.algorithms import StatsRequest

SUMMARY_KEYS = ("count", "min", "max", "top", "bottom", "hist")
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


def merge_requests(requests: Sequence[StatsRequest]) -> StatsRequest:
    """One request serving several layers that read the same tensor."""
    return StatsRequest(percentile=min(r.percentile for r in requests),
                        bins=max(r.bins for r in requests))


def _elements_per_sample(tensor) -> int | None:
    dims = tensor.shape.as_list()[1:] if tensor.shape.rank else None
    if dims is None or any(d is None for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1


def calibrate(model: Model, requests: Mapping[str, StatsRequest],
              data: Sequence[Mapping[str, np.ndarray]], *, ops,
              extra_fetches: Sequence[str] = (),
              progress: Callable[[str], None] = lambda m: None):
    """Run every batch once; return ({tensor: ActivationStats}, first batch's extra fetches).

    An earlier pass may have left custom ops (AscendQuant, FastSoftmax, ...): the graph runs
    with them expanded through the op registry `ops`."""
    batch_samples = len(next(iter(data[0].values())))
    total_batches = len(data)
    tensors = sorted(requests)
    ks, bins = {}, {}

    def extend(graph):
        outputs = {}
        for name in tensors:
            x = graph.get_tensor_by_name(name)
            per_sample = _elements_per_sample(x)
            request = requests[name]
            ks[name] = (k_for_percentile(per_sample * batch_samples * total_batches,
                                         request.percentile) if per_sample else UNKNOWN_SIZE_K)
            bins[name] = max(1, request.bins)
            size = per_sample * batch_samples if per_sample else None
            summary = batch_summary_tensors(x, ks[name], bins[name], size_hint=size)
            outputs[name] = [summary[key] for key in SUMMARY_KEYS]
        return outputs

    runner = GraphRunner(model.graph_def, model.input_names, (), ops=ops, extend=extend,
                         where=model.source)
    flat = [t for name in tensors for t in runner.extra[name]]
    extra = [runner.tensor(t) for t in extra_fetches]
    run_first = runner.function(flat + extra)
    run_rest = runner.function(flat) if extra else run_first
    stats = {name: ActivationStats(bins=bins[name], k=ks[name]) for name in tensors}
    first_extra: list[np.ndarray] = []
    width = len(SUMMARY_KEYS)
    for index, batch in enumerate(data):
        progress(f"calibration batch {index + 1}/{total_batches}")
        results = (run_first if index == 0 else run_rest)(*[batch[n] for n in model.input_names])
        for position, name in enumerate(tensors):
            chunk = results[position * width:(position + 1) * width]
            stats[name].update(dict(zip(SUMMARY_KEYS, chunk)))
        if index == 0 and extra:
            first_extra = results[len(flat):]
        del results
    return stats, dict(zip(extra_fetches, first_extra))
