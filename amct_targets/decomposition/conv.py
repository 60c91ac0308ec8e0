"""Splitting one kh x kw Conv2D into a kh x 1 and a 1 x kw conv (or the other order).

With the HWIO kernel W[kh, kw, Cin, Cout], the "h first" mode unfolds it to
M[(kh, Cin), (kw, Cout)] = U S V^T; keeping rank r,

    first[kh, 1, Cin, r]  = (U_r sqrt(S_r)) reshaped,  strides (sh, 1), padding along h only
    last [1, kw, r, Cout] = (V_r sqrt(S_r)) reshaped,  strides (1, sw), padding along w only

and sum_r first[a, 0, i, r] * last[0, b, r, o] is the best rank-r approximation of W[a, b, i, o]
for this unfolding. The padding of a SAME (or VALID, or EXPLICIT) kxk conv depends per axis
only on that axis's size, kernel and stride, so splitting the axes this way gives the same
output shape, and at full rank the same output (the first conv has no bias: its zero padding
along w equals the zero-padded input). The "w first" mode swaps the roles of h and w.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amct_targets.decomposition.svd import Svd
from amct_targets.graph.flops import conv2d_flops

H_FIRST, W_FIRST = "h_first", "w_first"
# AMCT's code-level size filter (ASCEND_FACTS 5), overridable in the pass config `min_size`.
MIN_SIZE_DEFAULTS = {"product": 16, "kernel": 7, "channels": 64}


@dataclass(frozen=True)
class ConvGeometry:
    """What decides a Conv2D's decomposition: kernel, strides and the NHWC shapes around it."""

    kernel: tuple[int, int, int, int]     # kh, kw, Cin, Cout (HWIO)
    strides: tuple[int, int]              # sh, sw
    dilations: tuple[int, int]
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    input_channels: int                   # channels of the input tensor (Cin x groups)

    @property
    def budget(self) -> int:
        """AMCT's L = min(kh, kw) * min(Cin, Cout)."""
        kh, kw, cin, cout = self.kernel
        return min(kh, kw) * min(cin, cout)


def eligibility_reason(g: ConvGeometry, min_size: dict | None = None) -> str | None:
    """Why AMCT would not decompose this conv (its documented and code-level conditions)."""
    limits = dict(MIN_SIZE_DEFAULTS, **(min_size or {}))
    kh, kw, cin, cout = g.kernel
    if g.input_channels != cin:
        groups = g.input_channels // cin if cin and g.input_channels % cin == 0 else "?"
        return (f"group convolution ({groups} groups: input has {g.input_channels} channels, "
                f"the kernel {cin}); AMCT decomposes only group = 1")
    if g.dilations != (1, 1):
        return f"dilation {list(g.dilations)}; AMCT decomposes only dilation 1"
    if max(g.strides) >= 3:
        return f"stride {list(g.strides)}; AMCT decomposes only stride < 3"
    if kh <= 2 or kw <= 2:
        return f"kernel {kh}x{kw}; AMCT needs kernel height and width > 2"
    min_k, min_c = min(kh, kw), min(cin, cout)
    if min_k * min_c < limits["product"]:
        return (f"min(kh, kw) * min(Cin, Cout) = {min_k}*{min_c} = {min_k * min_c} "
                f"< {limits['product']}: too small to gain")
    if min_k < limits["kernel"] and min_c < limits["channels"]:
        return (f"min(kh, kw) = {min_k} < {limits['kernel']} and min(Cin, Cout) = {min_c} "
                f"< {limits['channels']}: too small to gain")
    return None


def split_flops(g: ConvGeometry, mode: str, rank: int) -> tuple[int, int]:
    """FLOPs (2 x MACs, no bias) of the (first, last) convs of `mode` at `rank`."""
    kh, kw, cin, cout = g.kernel
    (h, w), (ho, wo) = g.input_hw, g.output_hw
    if mode == H_FIRST:  # first keeps the width (1-wide kernel, stride 1 along w)
        return (conv2d_flops((ho, w), (kh, 1, cin, rank)),
                conv2d_flops((ho, wo), (1, kw, rank, cout)))
    return (conv2d_flops((h, wo), (1, kw, cin, rank)),
            conv2d_flops((ho, wo), (kh, 1, rank, cout)))


def choose_mode(g: ConvGeometry) -> str:
    """The order with fewer FLOPs for this conv's shapes (the cost is linear in the rank).

    For stride 1 this depends only on Cout < Cin and kh <= kw, as AMCT's mode does (its exact
    rule is not public): the longer kernel axis goes with the smaller channel count. Ties give
    h first, the order of the overview's 64x64x3x3 -> 3x1 then 1x3 example."""
    return W_FIRST if sum(split_flops(g, W_FIRST, 1)) < sum(split_flops(g, H_FIRST, 1)) \
        else H_FIRST


def unfold(kernel: np.ndarray, mode: str) -> np.ndarray:
    """The kernel as the matrix whose rank-r SVD gives the two convs of `mode`."""
    kh, kw, cin, cout = kernel.shape
    if mode == H_FIRST:
        return kernel.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)
    return kernel.transpose(1, 2, 0, 3).reshape(kw * cin, kh * cout)


def max_rank(kernel_shape: tuple[int, int, int, int], mode: str) -> int:
    kh, kw, cin, cout = kernel_shape
    return min(kh * cin, kw * cout) if mode == H_FIRST else min(kw * cin, kh * cout)


def factor_weights(svd: Svd, rank: int, kernel_shape: tuple[int, int, int, int], mode: str,
                   dtype) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) HWIO kernels of the rank-`rank` split, singular values shared evenly."""
    kh, kw, cin, cout = kernel_shape
    root = np.sqrt(svd.s[:rank])
    left = svd.u[:, :rank] * root              # [(k1, Cin), r]
    right = svd.vt[:rank].T * root             # [(k2, Cout), r]
    k1, k2 = (kh, kw) if mode == H_FIRST else (kw, kh)
    first = left.reshape(k1, cin, rank)
    last = right.reshape(k2, cout, rank).transpose(0, 2, 1)
    if mode == H_FIRST:
        first, last = first[:, None], last[None]   # [kh,1,Cin,r], [1,kw,r,Cout]
    else:
        first, last = first[None], last[:, None]   # [1,kw,Cin,r], [kh,1,r,Cout]
    return first.astype(dtype), last.astype(dtype)


def relative_error(svd: Svd, rank: int) -> float:
    """||W - W_r|| / ||W|| (Frobenius) of the rank-`rank` approximation.

    W_r is the projection of W onto the leading left singular vectors, so
    ||W - W_r||^2 = ||W||^2 - sum of the kept squared singular values."""
    if svd.total_energy <= 0.0:
        return 0.0
    kept = float(np.sum(svd.s[:rank] ** 2))
    return float(np.sqrt(max(svd.total_energy - kept, 0.0) / svd.total_energy))
