"""IFMR: AMCT's activation calibration (ASCEND_FACTS 3), with AMCT's defaults.

    max0 = k-th largest value, k = N - int(max_percentile * N) (>= 1); min0 likewise from the
           smallest; then max0 >= 0 and min0 <= 0 so that zero is representable
    candidates = arange(start, end, step) * max0
    asymmetric: s = (cand - min0) / (2^b - 1), offset = -rint(min0 / s) - 2^(b-1)
    symmetric:  cand = c * max(|max0|, |min0|), s = cand / (2^(b-1) - 1), offset 0
                (/ 2^(b-1) when |min0| > |max0|, as AMCT does)
    pick the candidate whose quantize-dequantize
        (clip(rint(x / s) + offset, -2^(b-1), 2^(b-1) - 1) - offset) * s
    has the least mean squared error against x.

`ifmr` runs on merged `ActivationStats` (exact percentiles, MSE from the histogram), so no
activation is kept; `ifmr_exact` is AMCT's in-memory version, the reference for tests.

Degenerate data (max0 = min0 = 0, e.g. all zeros): every candidate scale is 0 and is replaced
by 1 (AMCT's scale < FLT_EPSILON rule), so the result is scale 1.0 with offset
-rint(0 / 1) - 2^(b-1) = -128 for 8 bits asymmetric, and offset 0 symmetric.
"""
from __future__ import annotations

import numpy as np

from amct_targets.calibration.stats import (
    FLT_EPSILON, ActivationStats, QuantParams, histogram_quant_mse, k_for_percentile,
    quant_params,
)
from amct_targets.hooks import hookimpl


def _check(max_percentile, min_percentile, search_range, search_step, num_bits) -> None:
    for name, p in (("max_percentile", max_percentile), ("min_percentile", min_percentile)):
        if not 0.5 < p <= 1.0:
            raise ValueError(f"IFMR {name}={p}: it must be in (0.5, 1]")
    start, end = search_range
    if not 0 < start < end:
        raise ValueError(f"IFMR search_range={tuple(search_range)}: need 0 < start < end")
    if not 0 < search_step <= end - start:
        raise ValueError(f"IFMR search_step={search_step}: it must be in (0, end - start]")
    if not 2 <= num_bits <= 16:
        raise ValueError(f"IFMR num_bits={num_bits}: expected 2 to 16")


def candidates(max0: float, min0: float, search_range=(0.7, 1.3), search_step=0.01,
               asymmetric: bool = True, num_bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(scales, offsets) of IFMR's candidates for percentile values `max0` >= 0 >= `min0`.

    np.arange like AMCT's torch.arange: with the defaults it yields 61 ratios, the last one
    1.3 up to rounding, because (1.3 - 0.7) / 0.01 is a hair above 60."""
    ratios = np.arange(search_range[0], search_range[1], search_step)
    half = 2 ** (num_bits - 1)
    if asymmetric:
        scales = (ratios * max0 - min0) / (2 ** num_bits - 1)
    else:
        limit = half if abs(min0) > abs(max0) else half - 1
        scales = ratios * max(abs(max0), abs(min0)) / limit
    scales = np.where(scales < FLT_EPSILON, 1.0, scales)
    offsets = -np.rint(min0 / scales) - half if asymmetric else np.zeros_like(scales)
    return scales, offsets


def ifmr(stats: ActivationStats, *, max_percentile: float = 0.999999,
         min_percentile: float = 0.999999, search_range=(0.7, 1.3), search_step: float = 0.01,
         asymmetric: bool = True, num_bits: int = 8) -> QuantParams:
    """IFMR on streamed statistics: exact percentiles, MSE from the merged histogram."""
    _check(max_percentile, min_percentile, search_range, search_step, num_bits)
    n = stats.count
    max0 = max(stats.kth_largest(k_for_percentile(n, max_percentile)), 0.0)
    min0 = min(stats.kth_smallest(k_for_percentile(n, min_percentile)), 0.0)
    scales, offsets = candidates(max0, min0, search_range, search_step, asymmetric, num_bits)
    counts, edges = stats.histogram()
    losses = histogram_quant_mse(counts, edges, scales, offsets, num_bits)
    best = int(np.argmin(losses))  # the first of equal losses, as torch.argmin
    return quant_params(scales[best], int(offsets[best]), num_bits)


def percentile_values(x: np.ndarray, max_percentile: float = 0.999999,
                      min_percentile: float = 0.999999) -> tuple[float, float]:
    """(k-th largest, k-th smallest) of all of `x`, exactly, with AMCT's k."""
    flat = np.asarray(x, np.float32).ravel()
    n = flat.size
    k_max, k_min = k_for_percentile(n, max_percentile), k_for_percentile(n, min_percentile)
    return (float(np.partition(flat, n - k_max)[n - k_max]),
            float(np.partition(flat, k_min - 1)[k_min - 1]))


def ifmr_exact(x: np.ndarray, *, max_percentile: float = 0.999999,
               min_percentile: float = 0.999999, search_range=(0.7, 1.3),
               search_step: float = 0.01, asymmetric: bool = True,
               num_bits: int = 8) -> QuantParams:
    """IFMR as AMCT runs it: all of `x` in memory, MSE over every element (float64)."""
    _check(max_percentile, min_percentile, search_range, search_step, num_bits)
    flat = np.asarray(x, np.float32).ravel()
    if flat.size == 0:
        raise ValueError("IFMR: no calibration data")
    top, bottom = percentile_values(flat, max_percentile, min_percentile)
    max0, min0 = max(top, 0.0), min(bottom, 0.0)
    scales, offsets = candidates(max0, min0, search_range, search_step, asymmetric, num_bits)
    values = flat.astype(np.float64)
    half = 2 ** (num_bits - 1)
    losses = np.empty(len(scales))
    for i, (s, o) in enumerate(zip(scales, offsets)):
        q = np.clip(np.rint(values / s) + o, -half, half - 1)
        losses[i] = np.mean(((q - o) * s - values) ** 2)
    best = int(np.argmin(losses))
    return quant_params(scales[best], int(offsets[best]), num_bits)


# --- registration (register_quantizers) -------------------------------------------------------

IFMR_BINS = 8192        # histogram resolution behind the MSE search (bin << quantization step)
MAX_CANDIDATES = 10000  # (end - start) / search_step: bounds the search's time and memory
PARAMS_SCHEMA = {
    "max_percentile": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 1},
    "min_percentile": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 1},
    "search_range": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                     "minItems": 2, "maxItems": 2},
    "search_step": {"type": "number", "exclusiveMinimum": 0},
}
DEFAULTS = {"max_percentile": 0.999999, "min_percentile": 0.999999, "search_range": [0.7, 1.3],
            "search_step": 0.01}


def _check_params(params) -> str | None:
    start, end = params["search_range"]
    if not 0 < start < end:
        return f"search_range: need 0 < start < end, got {list(params['search_range'])}"
    step = params["search_step"]
    if not 0 < step <= end - start:
        return f"search_step: must be in (0, {end - start:g}] (the search range's width)"
    if (end - start) / step > MAX_CANDIDATES:
        return (f"search_step: {step:g} makes {(end - start) / step:.0f} candidates; at most "
                f"{MAX_CANDIDATES} are searched (use a step >= {(end - start) / MAX_CANDIDATES:g})")
    return None


def _statistics(params):
    from amct_targets.quant.algorithms import StatsRequest

    return StatsRequest(percentile=min(params["max_percentile"], params["min_percentile"]),
                        bins=IFMR_BINS)


def _compute(stats, params) -> QuantParams:
    return ifmr(stats, max_percentile=params["max_percentile"],
                min_percentile=params["min_percentile"],
                search_range=tuple(params["search_range"]), search_step=params["search_step"],
                asymmetric=params["asymmetric"], num_bits=params["num_bits"])


@hookimpl
def register_quantizers(registry):
    from amct_targets.quant.algorithms import ActivationAlgorithm

    registry.add_activation(ActivationAlgorithm(
        "ifmr", PARAMS_SCHEMA, DEFAULTS, _statistics, _compute, check=_check_params,
        summary="AMCT IFMR: percentile range searched for the least quantization MSE"))
