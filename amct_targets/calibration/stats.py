"""Activation statistics whose memory does not grow with the number of calibration batches.

AMCT's IFMR keeps every activation of every batch. Here the graph computes, per batch and per
tensor, a summary of O(bins + k) numbers (count, min, max, the k largest and k smallest
values, a histogram over the batch's [min, max]); `ActivationStats` merges the summaries.
The k extreme values make IFMR's percentiles exact; the histogram carries its MSE search and
HFMG. `histogram_quant_mse` is the quantization error both compute from the histogram.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLT_EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class QuantParams:
    """Activation quantization: q = clip(rint(x / scale) + offset, -2^(b-1), 2^(b-1) - 1).

    `clip_min`/`clip_max` are the dequantized ends of the integer range."""

    scale: float
    offset: int
    clip_min: float
    clip_max: float


def quant_params(scale: float, offset: int, num_bits: int) -> QuantParams:
    """QuantParams with the clip range AMCT reports for `scale`, `offset`."""
    half = 2 ** (num_bits - 1)
    return QuantParams(scale=float(scale), offset=int(offset),
                       clip_min=float(-(half + offset) * scale),
                       clip_max=float((half - 1 - offset) * scale))


def k_for_percentile(n: int, p: float) -> int:
    """AMCT's index of a percentile: the k-th largest value with k = n - int(p*n), k >= 1."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"percentile {p} is outside (0, 1]")
    if 1.0 - p < FLT_EPSILON:
        return 1
    return max(1, int(n) - int(p * n))


HIST_SAMPLE_LIMIT = 1 << 20  # histogram elements per tensor and batch


def histogram_stride(size: int | None, channels: int | None) -> int:
    """Stride of the systematic sample the histogram is built from.

    Min, max and the k extreme values always see every element; the histogram only shapes
    IFMR's MSE search and HFMG's window, where a uniform sample of 1M values per batch is
    as good as all of them and several times cheaper. The stride is coprime with the channel
    count, so every channel is sampled."""
    if not size or size <= HIST_SAMPLE_LIMIT:
        return 1
    stride = -(-size // HIST_SAMPLE_LIMIT)
    while channels and np.gcd(stride, channels) != 1:
        stride += 1
    return int(stride)


TOPK_SPLIT_MIN = 1 << 16   # tensors smaller than this take one plain top-k


def row_split(shape, k: int, size: int | None) -> int | None:
    """Columns of the free reshape [-1, cols] (cols = a product of trailing static dims) that
    makes the row-maxima top-k cheapest (rows + k * cols values to rank), or None when a plain
    top-k is as good (a small tensor, no static trailing dims, fewer rows than k)."""
    dims = shape.as_list() if shape.rank else None
    if not dims or len(dims) < 2 or not size or size < TOPK_SPLIT_MIN:
        return None
    best, cols = None, 1
    for d in reversed(dims[1:]):
        if d is None:
            break
        cols *= d
        rows = size // cols
        cost = rows + k * cols
        if rows >= k and (best is None or cost < best[0]):
            best = (cost, cols)
    return None if best is None or best[0] >= size else best[1]


def summary_plan(shape, k: int, size_hint: int | None = None) -> tuple[int, int | None]:
    """(histogram stride, row-split columns or None) of a tensor of static `shape`
    (`size_hint`: its size a batch when the shape is not fully known): the static choices of
    `batch_summary_tensors`."""
    size = shape.num_elements() if shape.is_fully_defined() else size_hint
    channels = shape[-1] if shape.rank else None
    return histogram_stride(size, channels), row_split(shape, int(k), size)


def _row_extremes(flat, cols):
    """(rows, row maxima, row minima) of `flat` seen as rows of `cols` (an int or an int32
    scalar tensor)."""
    import tensorflow as tf

    rows = tf.reshape(flat, [-1, cols])
    return rows, tf.reduce_max(rows, axis=1), tf.reduce_min(rows, axis=1)


def extreme_values(flat, kept, split, largest: bool):
    """The `kept` largest (descending) or smallest (ascending) values of `flat`, exactly.

    One top-k over millions of values runs on one thread and dominated calibration. With
    the tensor seen as rows (`split` = _row_extremes), the k extremes of the whole lie in the
    k rows with the most extreme row maxima (any value among them is at least the k-th row
    maximum, which k values reach): a top-k over the row maxima, a gather of k rows and one
    top-k over those k * cols values give the same values."""
    import tensorflow as tf

    sign = 1.0 if largest else -1.0
    if split is None:
        return sign * tf.math.top_k(sign * flat, kept, sorted=True).values
    rows, row_max, row_min = split
    extreme = row_max if largest else -row_min
    take = tf.minimum(kept, tf.shape(extreme)[0])
    chosen = tf.gather(rows, tf.math.top_k(extreme, take, sorted=False).indices)
    return sign * tf.math.top_k(sign * tf.reshape(chosen, [-1]), kept, sorted=True).values


def batch_summary_tensors(x, k: int, bins: int, size_hint: int | None = None) -> dict:
    """In-graph summary of one batch of tensor `x` (see the module docstring for the keys).

    `top` holds the min(k, size) largest values in descending order, `bottom` the smallest in
    ascending order; `hist` counts over [min, max], or over [min, min + max(1, |min|)] when
    min == max, which puts every value in bin 0.

    A large tensor is read twice in full (its row maxima and row minima); min and max are the
    extremes of those (the same values, NaN included), the histogram sees a 1M-value sample
    and the top-k only k rows."""
    stride, cols = summary_plan(x.shape, k, size_hint)
    return summary_ops(x, k, bins, stride, cols)


def summary_ops(x, k, bins, stride, cols=None) -> dict:
    """The ops of `batch_summary_tensors` with its static choices given: `k`, `bins`, the
    histogram `stride` and the row-split `cols` (None: a plain top-k) may each be a Python
    int or an int32 scalar tensor, so one traced function serves tensors of every shape."""
    import tensorflow as tf

    flat = tf.reshape(tf.cast(x, tf.float32), [-1])
    count = tf.size(flat, out_type=tf.int64)
    sample = flat[::stride] if tf.is_tensor(stride) or stride > 1 else flat
    kept = tf.minimum(tf.cast(k, tf.int32), tf.size(flat))
    nonempty = count > 0
    split = None if cols is None else _row_extremes(flat, cols)
    smallest, largest = (flat, flat) if split is None else (split[2], split[1])
    # An empty batch would give min = +inf; 0 keeps the histogram op well defined.
    low = tf.where(nonempty, tf.reduce_min(smallest), 0.0)
    high = tf.where(nonempty, tf.reduce_max(largest), 0.0)
    hist_high = tf.where(high > low, high, low + tf.maximum(1.0, tf.abs(low)))
    # inf or NaN activations (data far out of range) are reported, never histogrammed: the
    # histogram kernel would index out of bounds. A range wider than float32 (-3e38..3e38)
    # is histogrammed at half scale, which is exact and moves no value to another bin.
    finite = tf.math.is_finite(low) & tf.math.is_finite(high) & tf.reduce_all(
        tf.math.is_finite(sample))
    wide = ~tf.math.is_finite(hist_high - low)

    # No tf.cond: in an imported graph each one is a functional If with two branch functions,
    # slow to build and run 50 times over. Non-finite data is zeroed before the histogram
    # kernel sees it (the summary says `finite` false and the counts are not used).
    factor = tf.where(wide, 0.5, 1.0)
    safe = tf.where(finite, sample * factor, tf.zeros_like(sample))
    limits = tf.where(finite, tf.stack([low, hist_high]) * factor, tf.constant([0.0, 1.0]))
    bins = tf.cast(bins, tf.int32)
    hist = tf.histogram_fixed_width(safe, limits, nbins=bins, dtype=tf.int64)
    bottom = extreme_values(flat, kept, split, largest=False)
    return {
        "count": count,
        "finite": finite,
        "min": low,
        "max": high,
        "top": extreme_values(flat, kept, split, largest=True),
        # After a ReLU nothing is below 0 and IFMR clamps min0 to 0 anyway: the batch
        # minimum stands for every bottom value (as before; the values are then exact).
        "bottom": tf.where(low < 0.0, bottom, tf.fill([kept], low)),
        "hist": tf.where(finite, hist, tf.zeros_like(hist)),
    }


def rebin_histogram(counts: np.ndarray, low: float, high: float,
                    edges: np.ndarray) -> np.ndarray:
    """Counts over [low, high] (equal bins) moved onto `edges`, values uniform within a bin."""
    bins = len(edges) - 1
    if high <= low:  # a point mass at `low`
        out = np.zeros(bins)
        width = edges[-1] - edges[0]
        index = int((low - edges[0]) / width * bins) if width > 0 else 0
        out[min(max(index, 0), bins - 1)] = counts.sum()
        return out
    cumulative = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    return np.diff(np.interp(edges, np.linspace(low, high, len(counts) + 1), cumulative))


class ActivationStats:
    """Merged batch summaries of one tensor; holds O(bins + k) numbers whatever the batch count.

    `kth_largest(j)` / `kth_smallest(j)` are exact for j <= k. The histogram has `bins` equal
    bins over the running [min, max]; when a batch widens the range, the merged counts are
    re-binned onto the union range by linear interpolation of the cumulative counts."""

    def __init__(self, bins: int, k: int):
        if bins < 1 or k < 1:
            raise ValueError(f"ActivationStats needs bins >= 1 and k >= 1 (got {bins}, {k})")
        self.bins, self.k = int(bins), int(k)
        self._count = 0
        self._top = np.empty(0, np.float32)     # descending
        self._bottom = np.empty(0, np.float32)  # ascending
        self._hist = np.zeros(self.bins)
        self._low = self._high = 0.0            # the histogram's range = [min, max]

    def update(self, summary: dict) -> None:
        """Merge one batch summary (numpy values of `batch_summary_tensors`)."""
        n = int(summary["count"])
        if n == 0:
            return
        if not bool(summary.get("finite", True)):
            raise ValueError("the tensor holds infinite or NaN values")
        low, high = float(summary["min"]), float(summary["max"])
        counts = np.asarray(summary["hist"], dtype=np.float64)
        if counts.shape != (self.bins,):
            raise ValueError(f"batch histogram has {counts.size} bins; these stats use {self.bins}")
        top = np.asarray(summary["top"], np.float32)
        bottom = np.asarray(summary["bottom"], np.float32)
        self._top = np.sort(np.concatenate([self._top, top]))[::-1][:self.k].copy()
        self._bottom = np.sort(np.concatenate([self._bottom, bottom]))[:self.k].copy()
        if self._count == 0:
            self._low, self._high, self._hist = low, high, counts.copy()
        else:
            new_low, new_high = min(self._low, low), max(self._high, high)
            edges = np.linspace(new_low, new_high, self.bins + 1)
            if (new_low, new_high) != (self._low, self._high):
                self._hist = rebin_histogram(self._hist, self._low, self._high, edges)
            if (low, high) != (new_low, new_high):
                counts = rebin_histogram(counts, low, high, edges)
            self._hist = self._hist + counts
            self._low, self._high = new_low, new_high
        self._count += n

    @property
    def count(self) -> int:
        return self._count

    @property
    def min(self) -> float:
        self._require_data()
        return self._low

    @property
    def max(self) -> float:
        self._require_data()
        return self._high

    @property
    def stored_numbers(self) -> int:
        """How many numbers these stats hold: 5 scalars + bins + at most 2k."""
        return 5 + self._hist.size + self._top.size + self._bottom.size

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts float64 [bins], edges [bins + 1]); all edges equal when min == max."""
        self._require_data()
        return self._hist.copy(), np.linspace(self._low, self._high, self.bins + 1)

    def kth_largest(self, k: int) -> float:
        return float(self._extreme(self._top, k, "largest"))

    def kth_smallest(self, k: int) -> float:
        return float(self._extreme(self._bottom, k, "smallest"))

    def _extreme(self, values: np.ndarray, k: int, which: str) -> np.float32:
        self._require_data()
        if not 1 <= k <= self._count:
            raise ValueError(f"k={k} is outside 1..{self._count} (the number of values seen)")
        if k > values.size:
            raise ValueError(f"the {k}-th {which} value is needed, but these stats keep only the "
                             f"{self.k} {which}; build them with k >= {k}")
        return values[k - 1]

    def _require_data(self) -> None:
        if self._count == 0:
            raise ValueError("no calibration data: ActivationStats has not been updated")


def _error_integral(u: np.ndarray, kmin: np.ndarray, kmax: np.ndarray) -> np.ndarray:
    """J(u) = integral from kmin - 1/2 to u of (t - clip(rint(t), kmin, kmax))^2 dt.

    Inside the grid each unit period adds 1/12; outside it the error grows as (t - end)^2.
    (Cubes are written as products: numpy's ** 3 goes through pow and is several times
    slower.)"""
    inside = np.clip(u, kmin - 0.5, kmax + 0.5)
    period = np.floor(inside + 0.5)
    rest = inside - period
    below = np.minimum(u - kmin, -0.5)
    above = np.maximum(u - kmax, 0.5)
    return ((period - kmin) / 12.0
            + (rest * rest * rest + below * below * below + above * above * above + 0.125) / 3.0)


def histogram_quant_mse(counts: np.ndarray, edges: np.ndarray, scales, offsets,
                        num_bits: int = 8) -> np.ndarray:
    """Mean squared error of quantize-dequantize, (clip(rint(x/s) + o) - o) * s vs x, over the
    histogram with values uniform within each bin; one result per (scale, offset) pair.

    Integrating the error over each bin (rather than using its center) keeps the result
    right when a bin is wide compared with a quantization step. Zero-width bins are point
    masses. With density d_i = count_i / width_i, sum_i d_i (J(e_i+1) - J(e_i)) is one dot
    product of J at the edges, so a candidate costs O(bins)."""
    counts = np.asarray(counts, np.float64)
    edges = np.asarray(edges, np.float64)
    scales = np.asarray(scales, np.float64).reshape(-1, 1)
    offsets = np.asarray(offsets, np.float64).reshape(-1, 1)
    half = 2 ** (num_bits - 1)
    kmin, kmax = -half - offsets, half - 1 - offsets   # dequantized levels are k * s
    widths = np.diff(edges)
    wide = widths > 0
    density = np.where(wide, counts / np.where(wide, widths, 1.0), 0.0)
    weights = np.zeros(edges.size)
    weights[:-1] -= density
    weights[1:] += density
    loss = (_error_integral(edges / scales, kmin, kmax) @ weights) * scales[:, 0] ** 3
    points = ~wide & (counts > 0)
    if points.any():
        low = edges[:-1][points]
        error = low - np.clip(np.rint(low / scales), kmin, kmax) * scales
        loss = loss + (error ** 2 * counts[points]).sum(axis=1)
    total = counts.sum()
    return loss / (total if total > 0 else 1.0)
