"""Leading singular triplets of a weight unfolding: exact for small matrices, randomized for
large ones.

The randomized path is the range finder of Halko, Martinsson and Tropp ("Finding structure
with randomness", SIAM Review 53, 2011, Algorithms 4.4 and 5.1): a Gaussian test matrix, `q`
power iterations re-orthonormalized by QR, then the small projected problem. It needs only
matrix products and QRs of n x (k + p) panels, so a 1024x1024x5x5 kernel (a 5120 x 5120
unfolding) takes seconds where a full LAPACK SVD takes minutes. The seed is fixed, so the
result is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_MAX_DIM = 1024       # full SVD up to this smaller dimension
EXACT_MAX_FRACTION = 0.5   # ... or when more than this fraction of the spectrum is needed
POWER_ITERATIONS = 2
SEED = 0


@dataclass(frozen=True)
class Svd:
    u: np.ndarray            # [m, k], orthonormal columns
    s: np.ndarray            # [k], descending
    vt: np.ndarray           # [k, n], orthonormal rows
    total_energy: float      # squared Frobenius norm of the whole matrix
    method: str              # "exact" or "randomized"


def _canonical_signs(u: np.ndarray, vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip each pair so the largest |entry| of u's column is positive (platform-independent)."""
    if u.size == 0:
        return u, vt
    rows = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[rows, np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    return u * signs, vt * signs[:, None]


def _squared_norm(a: np.ndarray, rows: int = 1024) -> float:
    """||a||_F^2 accumulated in float64, a block of rows at a time (no full float64 copy)."""
    return float(sum(np.sum(np.square(a[i:i + rows], dtype=np.float64))
                     for i in range(0, a.shape[0], rows)))


def leading_svd(matrix: np.ndarray, k: int, method: str = "auto", seed: int = SEED,
                oversample: int | None = None) -> Svd:
    """The `k` leading singular triplets of `matrix` (float64 results).

    `method`: "exact" (LAPACK, float64), "randomized" (float32 products), or "auto" (exact
    when the matrix is small or most of the spectrum is asked for)."""
    m, n = matrix.shape
    small = min(m, n)
    k = max(0, min(int(k), small))
    total_energy = _squared_norm(matrix)
    if method == "auto":
        exact = small <= EXACT_MAX_DIM or k > EXACT_MAX_FRACTION * small
        method = "exact" if exact else "randomized"
    if method == "exact":
        u, s, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
        u, vt = _canonical_signs(u[:, :k], vt[:k])
        return Svd(u, s[:k], vt, total_energy, "exact")
    if method != "randomized":
        raise ValueError(f"unknown SVD method '{method}'; expected exact, randomized or auto")
    return _randomized(np.asarray(matrix, dtype=np.float32), k, seed, oversample, total_energy)


def _randomized(a: np.ndarray, k: int, seed: int, oversample: int | None,
                total_energy: float) -> Svd:
    """Halko et al.'s range finder with `POWER_ITERATIONS` QR-stabilized power iterations on
    the float32 matrix `a`; the small projected problem is solved in float64."""
    m, n = a.shape
    p = oversample if oversample is not None else max(16, k // 10)
    width = min(k + p, min(m, n))
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((n, width), dtype=np.float32)
    q, _ = np.linalg.qr(a @ omega)
    for _ in range(POWER_ITERATIONS):
        z, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ z)
    b = (q.T @ a).astype(np.float64)              # [width, n]: a projected on range(q)
    q = q.astype(np.float64)
    # SVD of the short, wide b through the eigenpairs of b b^T (width x width).
    eigvals, eigvecs = np.linalg.eigh(b @ b.T)
    order = np.argsort(eigvals)[::-1][:k]
    s = np.sqrt(np.maximum(eigvals[order], 0.0))
    ub = eigvecs[:, order]
    safe = np.where(s > s[0] * 1e-12, s, np.inf) if s.size else s
    vt = (ub.T @ b) / safe[:, None]
    u = q @ ub
    u, vt = _canonical_signs(u, vt)
    return Svd(u, s, vt, total_energy, "randomized")
