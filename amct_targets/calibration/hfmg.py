"""HFMG: AMCT's histogram-based activation calibration (ASCEND_FACTS 3).

The merged histogram (num_of_bins bins over [min, max]) is searched for the [left, right] bin
window whose quantization onto 2^b levels loses least (L2, values outside the window clipped
to its ends). The search narrows progressively: from the full range, each step tries moving
the left edge in or the right edge in by `step` bins and keeps the better; the answer is the
best window seen along that path. The window is widened to contain 0 so that zero is
exactly representable, as IFMR's max0 >= 0 >= min0.

step = max(1, num_of_bins // 512) bins, so the path has at most ~512 steps (or num_of_bins)
and each step costs two vectorized O(num_of_bins) loss evaluations.
"""
from __future__ import annotations

import numpy as np

from amct_targets.calibration.stats import (
    FLT_EPSILON, ActivationStats, QuantParams, histogram_quant_mse, quant_params, rebin_histogram,
)
from amct_targets.hooks import hookimpl

MAX_STEPS = 512  # each step moves an edge by num_of_bins // 512 bins


def window_quantizer(clip_min: float, clip_max: float, asymmetric: bool = True,
                     num_bits: int = 8) -> tuple[float, int]:
    """(scale, offset) quantizing [clip_min, clip_max] (widened to contain 0), as IFMR does."""
    clip_min, clip_max = min(clip_min, 0.0), max(clip_max, 0.0)
    half = 2 ** (num_bits - 1)
    if asymmetric:
        scale = (clip_max - clip_min) / (2 ** num_bits - 1)
        scale = scale if scale >= FLT_EPSILON else 1.0
        return scale, int(-np.rint(clip_min / scale) - half)
    limit = half if -clip_min > clip_max else half - 1
    scale = max(-clip_min, clip_max) / limit
    return (scale if scale >= FLT_EPSILON else 1.0), 0


def _quantizers(edges, windows, asymmetric, num_bits):
    pairs = [window_quantizer(edges[left], edges[right], asymmetric, num_bits)
             for left, right in windows]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], np.float64)


def hfmg(stats: ActivationStats, *, num_of_bins: int = 4096, asymmetric: bool = True,
         num_bits: int = 8) -> QuantParams:
    """HFMG on merged statistics (built with `num_of_bins` bins; other counts are re-binned)."""
    if num_of_bins < 2:
        raise ValueError(f"HFMG num_of_bins={num_of_bins}: need at least 2")
    counts, edges = stats.histogram()
    low, high = float(edges[0]), float(edges[-1])
    if high <= low:  # every value equal: quantize [min(v, 0), max(v, 0)] directly
        return quant_params(*window_quantizer(low, high, asymmetric, num_bits), num_bits)
    if counts.size != num_of_bins:
        edges = np.linspace(low, high, num_of_bins + 1)
        counts = rebin_histogram(counts, low, high, edges)
    # Counts left of each edge: moving an edge past empty bins removes nothing, which breaks
    # ties between the two moves.
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])

    def losses(windows):
        scales, offsets = _quantizers(edges, windows, asymmetric, num_bits)
        return histogram_quant_mse(counts, edges, scales, offsets, num_bits)

    step = max(1, num_of_bins // MAX_STEPS)
    left, right = 0, num_of_bins
    path, path_loss = [(left, right)], [float(losses([(left, right)])[0])]
    while right - left > step:
        moves = [(left + step, right), (left, right - step)]
        loss_in_left, loss_in_right = losses(moves)
        removed_left = cumulative[left + step] - cumulative[left]
        removed_right = cumulative[right] - cumulative[right - step]
        take_left = (loss_in_left < loss_in_right
                     or (loss_in_left == loss_in_right and removed_left <= removed_right))
        left, right = moves[0] if take_left else moves[1]
        path.append((left, right))
        path_loss.append(float(loss_in_left if take_left else loss_in_right))
    best_left, best_right = path[int(np.argmin(path_loss))]
    scale, offset = window_quantizer(edges[best_left], edges[best_right], asymmetric, num_bits)
    return quant_params(scale, offset, num_bits)


# --- registration (register_quantizers) -------------------------------------------------------

HFMG_BINS = (1024, 2048, 4096, 8192)
PARAMS_SCHEMA = {"num_of_bins": {"enum": list(HFMG_BINS)}}
DEFAULTS = {"num_of_bins": 4096}


def _statistics(params):
    from amct_targets.quant.algorithms import StatsRequest

    return StatsRequest(percentile=1.0, bins=int(params["num_of_bins"]))


def _compute(stats, params) -> QuantParams:
    return hfmg(stats, num_of_bins=int(params["num_of_bins"]), asymmetric=params["asymmetric"],
                num_bits=params["num_bits"])


@hookimpl
def register_quantizers(registry):
    from amct_targets.quant.algorithms import ActivationAlgorithm

    registry.add_activation(ActivationAlgorithm(
        "hfmg", PARAMS_SCHEMA, DEFAULTS, _statistics, _compute,
        summary="AMCT HFMG: histogram window with the least L2 quantization loss"))
