"""ARQ: AMCT's weight quantization (ASCEND_FACTS 3).

Symmetric, per tensor or per output channel:

    scale = max(|max|, |min|) / 127      (/128 when the largest magnitude is negative)
    scale < FLT_EPSILON -> 1             (an all-zero channel keeps a usable scale)
    q     = clip(rint(w / scale), -128, 127)  as int8, offset 0

Everything is float32, as the device kernel computes it, so the int8 weights are
reproducible bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amct_targets.graph.layout import channels_first
from amct_targets.hooks import hookimpl

FLT_EPSILON = np.finfo(np.float32).eps


@dataclass(frozen=True)
class ArqResult:
    """Quantized weights: `quantized` has the weights' shape, `scale`/`offset` one per channel."""

    scale: np.ndarray      # float32, shape (1,) per tensor or (channels,)
    offset: np.ndarray     # int8 zeros, shape of scale (ARQ is symmetric)
    quantized: np.ndarray  # int8, shape of the weights


def arq(weights: np.ndarray, channel_axes: tuple[int, ...] | None,
        num_bits: int = 8) -> ArqResult:
    """Quantize `weights` with ARQ.

    `channel_axes=None` is per tensor (scale shape (1,)). Otherwise one scale per index of the
    product of those axes, flattened in C order: (3,) for Conv2D HWIO, (2,) for a
    Conv2DBackpropInput [H, W, out, in] filter, (2, 3) for DepthwiseConv2dNative HWCM, whose
    output channel c*M + m gets scale index c*M + m.
    """
    if not 2 <= num_bits <= 8:
        raise ValueError(f"ARQ num_bits={num_bits}: int8 storage holds 2 to 8 bits")
    w = np.asarray(weights, dtype=np.float32)
    if w.size == 0:
        raise ValueError("ARQ: the weight tensor is empty")
    qmax = np.float32(2 ** (num_bits - 1) - 1)
    qmin = np.float32(-(2 ** (num_bits - 1)))
    if channel_axes is None:
        rows = w.reshape(1, -1)
    else:
        if not channel_axes:
            raise ValueError("ARQ channel_axes=(): pass None for per-tensor quantization")
        axes = tuple(a % w.ndim for a in channel_axes)
        rows = channels_first(w, axes)
    w_max = rows.max(axis=1)
    w_min = rows.min(axis=1)
    # The negative end can use the extra code -128 when it is the larger magnitude.
    negative = -w_min > w_max
    scale = np.where(negative, -w_min / -qmin, np.maximum(np.abs(w_max), np.abs(w_min)) / qmax)
    scale = scale.astype(np.float32)
    scale[scale < FLT_EPSILON] = np.float32(1.0)
    if channel_axes is None:
        broadcast = scale.reshape((1,) * w.ndim)
    else:
        # Undo the channels-first flattening: scale laid out on w's channel axes, 1 elsewhere.
        per_axis = scale.reshape([w.shape[a] for a in axes] + [1] * (w.ndim - len(axes)))
        broadcast = np.moveaxis(per_axis, tuple(range(len(axes))), axes)
    quantized = np.clip(np.rint(w / broadcast), qmin, qmax).astype(np.int8)
    return ArqResult(scale=scale, offset=np.zeros(scale.shape, np.int8), quantized=quantized)


# --- registration (register_quantizers) -------------------------------------------------------

def _compute(weights, channel_axes, params):
    from amct_targets.quant.algorithms import WeightQuant

    result = arq(weights, channel_axes, num_bits=int(params.get("num_bits", 8)))
    return WeightQuant(result.scale, result.offset, result.quantized)


@hookimpl
def register_quantizers(registry):
    from amct_targets.quant.algorithms import WeightAlgorithm

    registry.add_weight(WeightAlgorithm(
        "arq_quantize", {}, {}, _compute,
        summary="AMCT ARQ: symmetric max-abs scales, per tensor or per output channel"))
