"""Fit one layer's FastSoftmax parameters (a, b, clip_value) to sampled Softmax rows.

For each clip_value c on a grid, (a, b) minimize the squared error of the *normalized*
output, linearized in the error of p: with e = exp(z), S = sum(e), y = e / S and
d = p(t) - e = (1 + t - e) + a t^2 + b t^3, a row's output error is to first order

    r_i = (d_i - y_i sum_j d_j) / S,

affine in (a, b). So each c is a 2-variable convex least-squares problem under the kernel's
validity constraints (p non-decreasing on [-c, 0], p(-c) >= MIN_TAIL), solved exactly by
enumerating the optimum's possible positions: inside the feasible set, along one boundary
curve (the line p'(-c) = 0, the line p(-c) = MIN_TAIL, the parabola b = a^2 / 3 where p' has
a double root) or at a corner. Then c is the grid value whose float32 kernel has the
smallest max abs error against the float64 softmax (ties: smaller mean error on the sample,
then larger c). Deterministic, NumPy only.

Calibration rows need not cover the rows met in deployment: a confident classifier's
calibration rows have every non-max entry far below -c, so they pin p down only at 0 and at
-c, and the fit is free to be poor in between, where a held-out near-tie lands. A fixed probe
set of two-entry rows [0, delta], delta in [-8, 0], keeps p close to exp over the whole
range: it enters the least squares with weight PROBE_WEIGHT (per row, relative to the
sample's rows) and the choice of c through max(sample max error, PROBE_SELECT_WEIGHT * probe
max error). Where the data are informative their errors dominate both; where they are not,
the probe decides. (Digits transformer benchmark, per-op max error on held-out rows: the
classifier Softmax goes from 0.215 to 0.037, the narrow first attention layer from 0.024 to
0.034; PROBE_SELECT_WEIGHT 1 would cost it 0.044, and 0 lets the classifier pick c = 0.4.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amct_targets.approx.kernel import MIN_TAIL, FastSoftmaxParams, invalid_reason, \
    min_slope, ref_fast_softmax

CLIP_GRID = tuple(round(0.25 + 0.05 * i, 2) for i in range(75))  # 0.25 .. 3.95
PROBE_ROWS = np.stack([np.zeros(161), np.linspace(-8.0, 0.0, 161)], axis=1)  # [0, delta]
PROBE_WEIGHT = 0.1
PROBE_SELECT_WEIGHT = 0.25
_FEASIBLE_EPS = 1e-12


@dataclass(frozen=True)
class FitResult:
    params: FastSoftmaxParams
    max_abs_error: float    # on the sampled rows the parameters were fitted to
    mean_abs_error: float
    probe_max_abs_error: float  # on the probe rows [0, delta]


def _feasible(x: np.ndarray, c: float) -> bool:
    a, b = float(x[0]), float(x[1])
    tail = 1.0 - c + a * c * c - b * c ** 3
    return bool(np.all(np.isfinite(x))) and min_slope(a, b, c) >= -_FEASIBLE_EPS and \
        tail >= MIN_TAIL - _FEASIBLE_EPS


def _line_minimum(H, g, normal, rhs):
    """argmin of 1/2 x'Hx - g'x on the line normal'x = rhs (None if flat along it)."""
    x0 = normal * rhs / (normal @ normal)
    d = np.array([-normal[1], normal[0]])
    curvature = d @ H @ d
    if curvature <= 1e-300:
        return None
    return x0 + d * ((g @ d - d @ H @ x0) / curvature)


def _candidates(H: np.ndarray, g: np.ndarray, c: float) -> list[np.ndarray]:
    slope_end = (np.array([-2.0 * c, 3.0 * c * c]), -1.0)  # p'(-c) >= 0
    tail = (np.array([c * c, -c ** 3]), MIN_TAIL - 1.0 + c)  # p(-c) >= MIN_TAIL
    out = [np.linalg.lstsq(H, g, rcond=None)[0]]
    for normal, rhs in (slope_end, tail):
        point = _line_minimum(H, g, normal, rhs)
        if point is not None:
            out.append(point)
    # On the parabola b = a^2/3: d/da f(a, a^2/3) = 0 is a cubic in a.
    for a in np.roots([2.0 * H[1, 1] / 9.0, H[0, 1], H[0, 0] - 2.0 * g[1] / 3.0, -g[0]]):
        if abs(a.imag) < 1e-9:
            out.append(np.array([a.real, a.real ** 2 / 3.0]))
    out.append(np.array([1.0 / c, 1.0 / (3.0 * c * c)]))  # the slope line touches the parabola
    for a in np.roots([c ** 3 / 3.0, -c * c, tail[1]]):  # tail line meets the parabola
        if abs(a.imag) < 1e-9:
            out.append(np.array([a.real, a.real ** 2 / 3.0]))
    corner = np.stack([slope_end[0], tail[0]])
    if abs(np.linalg.det(corner)) > 1e-12:
        out.append(np.linalg.solve(corner, [slope_end[1], tail[1]]))
    return out


def _normal_equations(z: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, g) of the mean over rows of the squared linearized output error (see above)."""
    e = np.exp(z)
    s = e.sum(axis=-1, keepdims=True)
    y = e / s
    t = np.maximum(z, -c)

    def normalized(f):
        return ((f - y * f.sum(axis=-1, keepdims=True)) / s).ravel()

    u, v, w = normalized(1.0 + t - e), normalized(t * t), normalized(t ** 3)
    design = np.stack([v, w], axis=1)
    return design.T @ design / len(z), -(design.T @ u) / len(z)


def fit_ab(z: np.ndarray, c: float, probe_weight: float = PROBE_WEIGHT
           ) -> tuple[float, float] | None:
    """(a, b) for clip value `c` on rows `z` (float64, max 0 per row); None if infeasible."""
    H, g = _normal_equations(z, c)
    if probe_weight:
        H_probe, g_probe = _normal_equations(PROBE_ROWS, c)
        H, g = H + probe_weight * H_probe, g + probe_weight * g_probe
    best, best_value = None, np.inf
    for x in _candidates(H, g, c):
        if _feasible(x, c):
            value = 0.5 * x @ H @ x - g @ x
            if value < best_value:
                best, best_value = x, value
    return None if best is None else (float(best[0]), float(best[1]))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fit_fast_softmax(rows: np.ndarray, clip_grid=CLIP_GRID,
                     probe_weight: float = PROBE_WEIGHT) -> FitResult:
    """Fit on `rows` (n x L Softmax inputs, any shift); raises ValueError on no rows.

    `probe_weight` 0 fits the sample alone: the probe rows are then only measured."""
    x = np.asarray(rows, np.float64)
    if x.ndim != 2 or not x.size:
        raise ValueError("FastSoftmax needs at least one sampled row to fit")
    z = x - x.max(axis=-1, keepdims=True)
    reference, probe_reference = _softmax(z), _softmax(PROBE_ROWS)
    z32, probe32 = z.astype(np.float32), PROBE_ROWS.astype(np.float32)
    best, best_key, best_errors = None, None, None
    for c in sorted(clip_grid, reverse=True):  # ties go to the larger clip value
        ab = fit_ab(z, c, probe_weight)
        if ab is None:
            continue
        params = FastSoftmaxParams.rounded(ab[0], ab[1], c)
        if invalid_reason(params) is not None:
            continue
        error = np.abs(ref_fast_softmax(z32, params.a, params.b, params.clip_value) - reference)
        probe = float(np.abs(ref_fast_softmax(probe32, params.a, params.b, params.clip_value)
                             - probe_reference).max())
        errors = (float(error.max()), float(error.mean()), probe)
        guard = PROBE_SELECT_WEIGHT * probe if probe_weight else 0.0
        key = (max(errors[0], guard), errors[1])
        if best_key is None or key < best_key:
            best, best_key, best_errors = params, key, errors
    if best is None:
        raise ValueError("no clip value on the grid admits valid FastSoftmax parameters")
    return FitResult(best, *best_errors)
