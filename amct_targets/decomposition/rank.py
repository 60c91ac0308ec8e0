"""How many components a decomposed conv keeps: EVBMF or energy, then AMCT's rank rules.

EVBMF is the empirical variational Bayesian matrix factorization of Nakajima, Sugiyama,
Babacan and Tomioka ("Global analytic solution of fully-observed variational Bayesian matrix
factorization", JMLR 14, 2013): the noise variance sigma^2 minimizes a one-dimensional
objective of the singular values, and the rank is the number of singular values above the
EVB threshold sigma * sqrt(M * (1 + tau) * (1 + alpha / tau)).

AMCT then clips the estimate to [L/(d+1), L/d], with L = min(kh, kw) * min(Cin, Cout) and
d = 6 (4 when min(Cin, Cout) >= 256), and rounds it to a multiple of 16 (ASCEND_FACTS 5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# tau-bar = 2.5129 sqrt(alpha) solves the EVB threshold equation (Nakajima et al. 2013, eq. 30).
TAU_BAR_FACTOR = 2.5129
GRID_POINTS = 256
GOLDEN_STEPS = 80


@dataclass(frozen=True)
class EvbmfResult:
    rank: int        # singular values above the EVB threshold
    sigma2: float    # estimated noise variance of one matrix entry
    threshold: float  # the singular-value threshold


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    a = x - (1.0 + alpha)
    return 0.5 * (a + np.sqrt(np.maximum(a * a - 4.0 * alpha, 0.0)))


def _objective(sigma2: float, s2: np.ndarray, residual: float, L: int, M: int,
               xbar: float) -> float:
    """The EVB free energy as a function of sigma^2 (constants dropped).

    Singular values not in `s2` (their squares summing to `residual`) are below the threshold
    for every sigma^2 searched, so they contribute only psi0(x) = x - log x.
    """
    alpha = L / M
    x = s2 / (M * sigma2)
    above = x > xbar
    value = float(np.sum(x - np.log(x)))
    if np.any(above):
        t = _tau(x[above], alpha)
        value += float(np.sum(np.log(t + 1.0) + alpha * np.log(t / alpha + 1.0) - t))
    value += residual / (M * sigma2) + (L - s2.size) * math.log(sigma2)
    return value


def evbmf(singular_values: np.ndarray, shape: tuple[int, int],
          total_energy: float | None = None) -> EvbmfResult:
    """EVBMF rank and noise variance from the leading singular values of an `shape` matrix.

    `singular_values`: descending, all of them or the leading ones only. `total_energy`: the
    squared Frobenius norm of the matrix, needed when only the leading values are given.
    With H of L values given, the search keeps sigma^2 >= s_H^2 / (M xbar), where the missing
    values are surely below the threshold; the estimate is then exact unless it is >= H - 1.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    L, M = sorted(int(d) for d in shape)
    H = s.size
    s2 = s * s
    energy = float(np.sum(s2)) if total_energy is None else float(total_energy)
    if H == 0 or energy <= 0.0 or s[0] <= 0.0:
        return EvbmfResult(0, 0.0, 0.0)
    residual = max(energy - float(np.sum(s2)), 0.0)
    alpha = L / M
    tau_bar = TAU_BAR_FACTOR * math.sqrt(alpha)
    xbar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    upper = energy / (L * M)
    # Bounds of the minimizer (Nakajima et al. 2013, Theorem 13), where the values are known.
    e_h = min(math.ceil(L / (1.0 + alpha)) - 1, L)
    lower = 0.0
    if e_h < H:
        tail = energy - float(np.sum(s2[:e_h]))
        lower = max(s2[e_h] / (M * xbar), tail / (M * (L - e_h)))
    if H < L:
        lower = max(lower, s2[-1] / (M * xbar))
    lower = max(lower, upper * 1e-12)
    if lower >= upper:
        sigma2 = upper
    else:
        sigma2 = _minimize_log(lambda v: _objective(v, s2, residual, L, M, xbar), lower, upper)
    threshold = math.sqrt(M * sigma2 * xbar)
    return EvbmfResult(int(np.sum(s > threshold)), sigma2, threshold)


def _minimize_log(f, lower: float, upper: float) -> float:
    """Global minimum of f on [lower, upper]: a log-spaced grid, then golden section."""
    grid = np.geomspace(lower, upper, GRID_POINTS)
    values = [f(v) for v in grid]
    k = int(np.argmin(values))
    a, b = math.log(grid[max(k - 1, 0)]), math.log(grid[min(k + 1, GRID_POINTS - 1)])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(GOLDEN_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(math.exp(d))
    best = math.exp((a + b) / 2.0)
    return best if f(best) <= values[k] else float(grid[k])


def energy_rank(singular_values: np.ndarray, energy: float,
                total_energy: float | None = None) -> int | None:
    """Smallest r whose leading r squared singular values keep `energy` of the total.

    None when the given leading values do not reach it (only some were computed)."""
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    total_sq = float(np.sum(s2)) if total_energy is None else float(total_energy)
    if total_sq <= 0.0:
        return 0
    kept = np.cumsum(s2) / total_sq
    reached = np.nonzero(kept >= energy * (1.0 - 1e-12))[0]
    return int(reached[0]) + 1 if reached.size else None


def amct_rank_range(kernel_hw: tuple[int, int], channels: tuple[int, int]) -> tuple[float, float]:
    """AMCT's clip interval [L/(d+1), L/d] for a conv's rank."""
    min_c = min(channels)
    budget = min(kernel_hw) * min_c
    d = 4 if min_c >= 256 else 6
    return budget / (d + 1), budget / d


def round_rank(rank: float, multiple: int = 16) -> int:
    """AMCT's rounding: down to a multiple of `multiple` (at least one multiple), plus one more
    multiple when rounding down lost more than 10% of `rank`."""
    rounded = max(multiple, int(math.floor(rank / multiple)) * multiple)
    if rounded < 0.9 * rank:
        rounded += multiple
    return rounded


def evbmf_search_size(kernel_hw: tuple[int, int], channels: tuple[int, int],
                      multiple: int = 16) -> int:
    """Leading singular values EVBMF needs for an exact AMCT rank: the clip's upper end,
    two more (see `evbmf`), and room for the rounding."""
    _, high = amct_rank_range(kernel_hw, channels)
    return int(math.ceil(high)) + 2 + multiple
