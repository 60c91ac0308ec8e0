"""Calibration forward passes: every layer's activation statistics in the same passes.

One TF function computes, per distinct activation tensor, a small summary (min, max, the k
extreme values, a histogram); numpy merges the summaries batch by batch, so memory is one
batch's activations plus O(bins + k) numbers per tensor, whatever the batch count.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from amct_targets.calibration.stats import ActivationStats, batch_summary_tensors, \
    k_for_percentile
from amct_targets.errors import ConfigError
from amct_targets.graph.model import Model

IFMR_BINS = 8192  # histogram resolution behind IFMR's MSE search (bin << quantization step)
SUMMARY_KEYS = ("count", "min", "max", "top", "bottom", "hist")


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


def _elements_per_sample(tensor) -> int | None:
    dims = tensor.shape.as_list()[1:] if tensor.shape.rank else None
    if dims is None or any(d is None for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1


def calibrate(model: Model, tensors: Sequence[str], params: Mapping[str, dict],
              data: Sequence[Mapping[str, np.ndarray]], extra_fetches: Sequence[str] = (),
              progress: Callable[[str], None] = lambda m: None):
    """Run every batch once; return ({tensor: ActivationStats}, first batch's extra fetches).

    `params[tensor]` gives `k_percentile` (max of the layers' percentiles) and `bins`.
    """
    import tensorflow as tf

    batch_samples = len(next(iter(data[0].values())))
    total_batches = len(data)

    from amct_targets.simulate import expand_ascend_ops

    graph_def = expand_ascend_ops(model.graph_def)  # an earlier pass may have left Ascend ops

    def build():
        tf.compat.v1.import_graph_def(graph_def, name="")
        graph = tf.compat.v1.get_default_graph()
        outputs = {}
        for name in tensors:
            x = graph.get_tensor_by_name(name)
            per_sample = _elements_per_sample(x)
            p = params[name]["percentile"]
            k = (k_for_percentile(per_sample * batch_samples * total_batches, p)
                 if per_sample else 4096)
            params[name]["k"] = k
            size = per_sample * batch_samples if per_sample else None
            summary = batch_summary_tensors(x, k, params[name]["bins"], size_hint=size)
            outputs[name] = [summary[key] for key in SUMMARY_KEYS]
        return outputs

    wrapped = tf.compat.v1.wrap_function(build, [])
    graph = wrapped.graph
    feeds = [graph.get_tensor_by_name(f"{s.name}:0") for s in model.inputs]
    summary_fetches = wrapped.structured_outputs
    flat = [t for name in tensors for t in summary_fetches[name]]
    extra = [graph.get_tensor_by_name(t) for t in extra_fetches]
    run_first = wrapped.prune(feeds, flat + extra)
    run_rest = wrapped.prune(feeds, flat) if extra else run_first
    stats = {name: ActivationStats(bins=params[name]["bins"], k=params[name]["k"])
             for name in tensors}
    first_extra: list[np.ndarray] = []
    width = len(SUMMARY_KEYS)
    for index, batch in enumerate(data):
        progress(f"calibration batch {index + 1}/{total_batches}")
        args = [tf.constant(batch[s.name]) for s in model.inputs]
        results = (run_first if index == 0 else run_rest)(*args)
        for position, name in enumerate(tensors):
            chunk = results[position * width:(position + 1) * width]
            stats[name].update({key: value.numpy() for key, value in zip(SUMMARY_KEYS, chunk)})
        if index == 0 and extra:
            first_extra = [r.numpy() for r in results[len(flat):]]
        del results
    return stats, dict(zip(extra_fetches, first_extra))
