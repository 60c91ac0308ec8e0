"""BalancedL2Norm filter ranking and AMCT's kept-channel count (ASCEND_FACTS section 5).

A filter is everything one output channel is computed from: the weight sliced at one index
of its output-channel axes (the layer-layout table: `W[:, :, :, o]` of a Conv2D,
`W[:, :, c, m]` of a DepthwiseConv2dNative, output channel `c*M + m`, `W[:, o]` of a MatMul).

"Balanced" here means each layer's L2 norms are divided by the layer's mean filter norm, so a
score of 1.0 is an average filter of its layer whatever the layer's fan-in or weight scale. The
order inside a layer is the plain L2 order (so `kept_channels` keeps the same filters either
way); the common scale is what lets a caller compare or threshold filters across layers.
"""
from __future__ import annotations

import math

import numpy as np

from amct_targets.graph.layout import channels_first

_EPS = 1e-9  # n * ratio like 100 * 0.29 = 28.999999999999996 still counts as 29 pruned


def filter_l2_norms(weights: np.ndarray, cout_axes: tuple[int, ...]) -> np.ndarray:
    """The L2 norm of each output filter of `weights` (output channels on `cout_axes`, from
    the layer-layout table), as float64 [out channels] in C order over those axes."""
    rows = channels_first(np.asarray(weights, dtype=np.float64), tuple(cout_axes))
    return np.sqrt(np.sum(rows * rows, axis=1))


def balanced_l2_norm_scores(weights: np.ndarray, cout_axes: tuple[int, ...]) -> np.ndarray:
    """Filter L2 norms divided by their mean (see the module docstring); all zeros when every
    filter is zero."""
    norms = filter_l2_norms(weights, cout_axes)
    mean = float(np.mean(norms)) if norms.size else 0.0
    return norms / mean if mean > 0 else np.zeros_like(norms)


def kept_count(channels: int, prune_ratio: float, align: int | None = None) -> int:
    """How many of `channels` output channels stay.

    Without `align`: `channels - floor(channels * prune_ratio)` (AMCT: 20 at 0.25 keeps 15).
    With `align` (AMCT's `ascend_optimized` uses 16): that count rounded to the nearest
    multiple of `align` (halves round up, towards keeping more), at least `align`, and never
    more than `channels` (20 at 0.25 keeps 16; 8 at 0.5 keeps all 8).
    """
    if channels < 1:
        raise ValueError(f"a layer needs at least one output channel, got {channels}")
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    keep = channels - math.floor(channels * prune_ratio + _EPS)
    if align:
        if align < 1:
            raise ValueError(f"align must be a positive integer, got {align}")
        keep = max(align, math.floor(keep / align + 0.5) * align)
    return max(1, min(keep, channels))


def kept_channels(scores: np.ndarray, prune_ratio: float, align: int | None = None
                  ) -> np.ndarray:
    """Sorted indices of the channels to keep: the `kept_count` highest `scores`.

    Ties keep the lower channel index, so the result is deterministic."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = kept_count(scores.size, prune_ratio, align)
    order = np.argsort(-scores, kind="stable")  # highest first; equal scores by index
    return np.sort(order[:keep]).astype(np.int64)


def mask_for(kept: np.ndarray, channels: int) -> np.ndarray:
    """float32 [channels]: 1 for a kept output channel, 0 for a pruned one."""
    mask = np.zeros(channels, np.float32)
    mask[np.asarray(kept, dtype=np.int64)] = 1.0
    return mask
