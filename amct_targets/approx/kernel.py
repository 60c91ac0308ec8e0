"""The FastSoftmax kernel: definition, parameter validity and its NumPy reference.

Softmax is shift-invariant, so with z = x - max(x) <= 0 along the axis

    t = max(z, -clip_value)                                   clip
    p(t) = 1 + t + a t^2 + b t^3 = 1 + t (1 + t (a + t b))    cubic, evaluated by Horner
    FastSoftmax(x) = p(t) / sum(p(t))                         normalize

Entries below -clip_value contribute p(-clip_value) (clamped), not 0: the result stays a
continuous, non-decreasing function of each input, there is no compare/select in the kernel,
and the fit sees the clamped entries, so it trades p(-clip_value) against their number (it
drives p(-clip_value) towards 0 when an axis holds many entries far below its maximum).

`valid` parameters make p non-decreasing and positive on [-clip_value, 0]: softmax's ordering
of entries is kept and the row sum is >= p(0) = 1, so the division is always defined. With
p'(0) = 1 fixed, a non-decreasing p can reach p(-c) >= 0 only for c <= 4 (maximizing
1 - c + a c^2 - b c^3 under b >= a^2/3 gives 1 - c/4), which bounds clip_value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALGO = "FastSoftmax"
# The fit keeps p(-clip_value) >= MIN_TAIL: every entry keeps a positive weight, well above
# the ~5e-7 float32 evaluation error of p near -4, yet small enough that 1000 clamped entries
# add only 1% to a row sum. Validity accepts half of it (float32 rounding of a and b moves
# p(-clip_value) by < 3e-7), and a slope down to -SLOPE_TOLERANCE for the same reason.
MIN_TAIL = 1e-5
MAX_CLIP_VALUE = 4.0      # p non-decreasing with p(-c) >= 0 needs c <= 4 (see above)
SLOPE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FastSoftmaxParams:
    """One layer's parameters, float32-exact (they are the op's float attributes)."""

    a: float
    b: float
    clip_value: float

    @classmethod
    def rounded(cls, a: float, b: float, clip_value: float) -> "FastSoftmaxParams":
        """Round to float32, the precision of the FastSoftmax attributes."""
        return cls(float(np.float32(a)), float(np.float32(b)), float(np.float32(clip_value)))

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "clip_value": self.clip_value}


def min_slope(a: float, b: float, clip_value: float) -> float:
    """min of p'(t) = 1 + 2 a t + 3 b t^2 over t in [-clip_value, 0], exactly."""
    candidates = [1.0, 1.0 - 2.0 * a * clip_value + 3.0 * b * clip_value ** 2]
    if b > 0 and -clip_value <= -a / (3.0 * b) <= 0:
        candidates.append(1.0 - a * a / (3.0 * b))
    return min(candidates)


def exp_poly(t, a: float, b: float):
    """p(t) = 1 + t + a t^2 + b t^3 in float64 (fitting and validity checks)."""
    t = np.asarray(t, np.float64)
    return 1.0 + t * (1.0 + t * (a + t * b))


def invalid_reason(params: FastSoftmaxParams) -> str | None:
    """Why `params` do not give a non-decreasing positive p on [-clip_value, 0], or None."""
    a, b, c = params.a, params.b, params.clip_value
    if not all(np.isfinite([a, b, c])):
        return "a, b and clip_value must be finite"
    if not 0 < c <= MAX_CLIP_VALUE:
        return f"clip_value must be in (0, {MAX_CLIP_VALUE:g}], got {c:g}"
    if min_slope(a, b, c) < -SLOPE_TOLERANCE:
        return f"p(t) = 1 + t + {a:g} t^2 + {b:g} t^3 decreases somewhere on [-{c:g}, 0]"
    tail = float(exp_poly(-c, a, b))
    if tail < MIN_TAIL / 2:
        return f"p(-clip_value) = {tail:.3g} is not positive enough (>= {MIN_TAIL / 2:g})"
    return None


def ref_fast_softmax(x, a: float, b: float, clip_value: float, axis: int = -1) -> np.ndarray:
    """The kernel in float32, op by op in the order of the simulation expander."""
    x = np.asarray(x, np.float32)
    z = x - x.max(axis=axis, keepdims=True)
    t = np.maximum(z, np.float32(-np.float32(clip_value)))
    p = t * np.float32(b) + np.float32(a)
    p = p * t + np.float32(1.0)
    p = p * t + np.float32(1.0)
    # float64 accumulation, one rounding: independent of the summation order (see ops.py)
    total = p.astype(np.float64).sum(axis=axis, keepdims=True).astype(np.float32)
    return p / total
