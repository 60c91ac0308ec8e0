"""The Ascend ops AMCT writes into a quantized .pb (ASCEND_FACTS 4): NodeDef builders, the
deq_scale packing, NumPy references of the tf_adapter CPU kernels, and simulation expanders
that rewrite each op into stock TensorFlow ops with the same float32 numerics.

    AscendQuant(x; scale=1/scale_d, offset=offset_d, dst_type)
        q = clip(round(x * scale) + offset, -2^(b-1), 2^(b-1) - 1); y = q - offset
    AscendWeightQuant(x int8, offset_w int8)            y = x - offset_w
    AscendDequant(x, deq_scale uint64; ksize, format)  y = x * deq, with the shift-N path
                                                        (see ref_ascend_dequant)
    AscendAntiQuant(x; scale, offset)                   y = x * scale

Kernel details followed here (Ascend/tensorflow tf_adapter/kernels/aicore/amct_*.cc):
- AscendQuant takes its bit width from dst_type (INT4 -> 4, INT8 -> 8), not from quant_bits.
  The kernel calls C `round` (ties away from zero, ASCEND_FACTS 9), and so do the reference
  and the simulation here. Whether the AI Core rounds ties the same way is not documented;
  the two differ only on exact ties.
- AscendDequant multiplies x by ksize[0]*ksize[1] first and divides by it at the end (an
  AvgPool output times the window area is the int32 sum the device shifts). Only the shift-N
  path makes that differ from x * deq.
- AscendAntiQuant's CPU kernel computes x * scale and ignores `offset`: in the TF graph the
  tensor it reads already holds q - offset_d (AscendQuant's output). GE's device op is
  (x + offset) * scale on the raw int8; the two agree when offset is 0.
"""
from __future__ import annotations

import numpy as np

from amct_targets.errors import ModelError
from amct_targets.graph.nodes import (DT_BOOL, DT_FLOAT, DT_INT8, attr_value, const_node,
                                      const_value, float_type, make_node, type_attr)
from amct_targets.graph.ops import AtcAcceptance, ExpansionBuilder, OpSpec
from amct_targets.hooks import hookimpl

__all__ = ["const_node"]  # re-exported: rewrites build their Consts through this module

DEQ_BITS, SHIFT_BITS, OFFSET_BITS = 0, 32, 40     # bit positions inside a deq_scale uint64
MAX_SHIFT_N = 16                                   # ASCEND_FACTS 3: N in [1, 16] when used
INT16_MIN, INT16_MAX = -32768, 32767               # the shift-N path saturates to int16
DST_BITS = {"INT4": 4, "INT8": 8}


# --- deq_scale packing -----------------------------------------------------------------------

def pack_deq_scale(deq: np.ndarray, shift_n: np.ndarray | int = 0,
                   offset_w: np.ndarray | int = 0) -> np.ndarray:
    """uint64 per channel: bits [31:0] float32 deq, [39:32] shift N, [47:40] offset_w (int8)."""
    deq = np.asarray(deq, np.float32)
    shift = np.broadcast_to(np.asarray(shift_n, np.int64), deq.shape)
    offset = np.broadcast_to(np.asarray(offset_w, np.int64), deq.shape)
    if shift.size and (shift.min() < 0 or shift.max() > MAX_SHIFT_N):
        raise ValueError(f"shift_n must be in [0, {MAX_SHIFT_N}]")
    if offset.size and (offset.min() < -128 or offset.max() > 127):
        raise ValueError("offset_w must fit int8")
    return (deq.view(np.uint32).astype(np.uint64)
            | (shift.astype(np.uint64) << np.uint64(SHIFT_BITS))
            | (offset.astype(np.int8).view(np.uint8).astype(np.uint64) << np.uint64(OFFSET_BITS)))


def unpack_deq_scale(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(deq float32, shift N int64, offset_w int8), each of `packed`'s shape."""
    packed = np.asarray(packed, np.uint64)
    deq = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    shift = ((packed >> np.uint64(SHIFT_BITS)) & np.uint64(0xFF)).astype(np.int64)
    offset = ((packed >> np.uint64(OFFSET_BITS)) & np.uint64(0xFF)).astype(np.uint8).view(np.int8)
    return deq, shift, offset


# --- NodeDef builders ------------------------------------------------------------------------

def ascend_quant_node(name: str, input_name: str, scale_d: float, offset_d: int,
                      num_bits: int = 8) -> "NodeDef":
    """AscendQuant with AMCT's attributes: scale = 1/scale_d, offset = offset_d."""
    if f"INT{num_bits}" not in DST_BITS:
        raise ValueError(f"AscendQuant supports {sorted(DST_BITS.values())} bits, not {num_bits}")
    if not scale_d > 0:
        raise ValueError(f"AscendQuant '{name}': scale_d must be positive, got {scale_d}")
    return make_node(name, "AscendQuant", [input_name], T=float_type(),
                     dst_type=attr_value(s=f"INT{num_bits}".encode()),
                     quant_bits=attr_value(i=num_bits),
                     scale=attr_value(f=1.0 / scale_d),
                     offset=attr_value(f=float(offset_d)))


def ascend_weight_quant_node(name: str, weight_const_name: str,
                             offset_const_name: str) -> "NodeDef":
    return make_node(name, "AscendWeightQuant", [weight_const_name, offset_const_name],
                     T=float_type(), dst_type=attr_value(s=b"INT8"))


def ascend_dequant_node(name: str, input_name: str, deq_const_name: str,
                        ksize: tuple[int, int] = (1, 1),
                        data_format: str = "NHWC") -> "NodeDef":
    return make_node(name, "AscendDequant", [input_name, deq_const_name], T=float_type(),
                     ksize=attr_value(ints=ksize),
                     data_format=attr_value(s=data_format.encode()))


def ascend_anti_quant_node(name: str, input_name: str, scale: float,
                           offset: float = 0.0) -> "NodeDef":
    """AscendAntiQuant with the raw attributes (the TF kernel computes x * scale)."""
    return make_node(name, "AscendAntiQuant", [input_name], T=float_type(),
                     scale=attr_value(f=float(scale)),
                     offset=attr_value(f=float(offset)))


# --- NumPy references of the CPU kernels (float32 like the kernels) ---------------------------

def round_half_away(x) -> np.ndarray:
    """C `round`: to the nearest integer, ties away from zero (exact in float32)."""
    x = np.asarray(x, np.float32)
    whole = np.floor(np.abs(x))
    up = (np.abs(x) - whole) >= np.float32(0.5)   # the fraction is exact in float32
    return (np.sign(x) * (whole + up)).astype(np.float32)


def ref_ascend_quant(x, scale: float, offset: float, num_bits: int = 8) -> np.ndarray:
    """`scale`, `offset` are the op's attributes (scale = 1/scale_d)."""
    half = np.float32(2 ** (num_bits - 1))
    offset = np.float32(offset)
    q = round_half_away(np.asarray(x, np.float32) * np.float32(scale)) + offset
    return np.clip(q, -half, half - 1) - offset


def ref_ascend_weight_quant(x, offset_w) -> np.ndarray:
    return np.asarray(x, np.int8).astype(np.float32) - np.asarray(offset_w, np.int8).astype(
        np.float32)


def _decode(packed, data_format: str) -> tuple[np.ndarray, np.ndarray]:
    """(deq, shift N) shaped to broadcast like the kernel: one value when deq_scale has one
    element, else per channel along the last axis (NHWC) or axis 1 of a 4-D NCHW tensor."""
    deq, shift, _ = unpack_deq_scale(np.asarray(packed, np.uint64).ravel())
    if deq.size <= 1:
        return deq.reshape(()), shift.reshape(())
    shape = (deq.size, 1, 1) if data_format == "NCHW" else (deq.size,)
    return deq.reshape(shape), shift.reshape(shape)


def ref_ascend_dequant(x, packed, ksize=(1, 1), data_format: str = "NHWC") -> np.ndarray:
    """y = t * deq * 2^N / area with t = x * area, floored by 2^N and saturated to int16 when
    N > 0 (area = ksize[0] * ksize[1]). The kernel does the last two steps in double."""
    deq, shift = _decode(packed, data_format)
    area = int(ksize[0]) * int(ksize[1])
    t = np.asarray(x, np.float32) * np.float32(area)
    shifted = np.clip(np.floor(t.astype(np.float64) / 2.0 ** shift), INT16_MIN, INT16_MAX)
    t = np.where(shift > 0, shifted.astype(np.float32), t)
    return ((t * deq).astype(np.float64) * 2.0 ** shift / area).astype(np.float32)


def ref_ascend_anti_quant(x, scale: float, offset: float = 0.0) -> np.ndarray:
    """The TF CPU kernel: x * scale (`offset` is not applied, see the module docstring)."""
    return np.asarray(x, np.float32) * np.float32(scale)


# --- simulation expanders (registered through register_ops) ---------------------------------

def _build_quant(node, e: ExpansionBuilder) -> None:
    _require_float(node)
    dst = node.attr["dst_type"].s.decode() if "dst_type" in node.attr else "INT8"
    if dst not in DST_BITS:
        raise ModelError(f"node '{node.name}' (AscendQuant): dst_type {dst!r} is not INT4/INT8")
    half = 2 ** (DST_BITS[dst] - 1)
    offset = float(node.attr["offset"].f)
    scaled = _times_constant(e, "mul", e.inputs[0], "scale", node.attr["scale"].f)
    # C round (ties away from zero) in two exact float32 steps: sign(x) * floor(|x| + c),
    # c the largest float32 below 1/2 (checked against the reference on every float32 up to
    # 2^24; above that every float32 is an integer and |x| + c rounds back to |x|).
    magnitude = e.op("abs", "Abs", [scaled])
    whole = e.op("floor", "Floor", [e.op("add_half", "AddV2", [
        magnitude, e.const("below_half", np.nextafter(np.float32(0.5), np.float32(0)))])])
    rounded = e.op("round", "Mul", [e.op("sign", "Sign", [scaled]), whole])
    # clip(r + offset, -half, half - 1) - offset as one clip: r and offset are integers, so
    # both forms are exact (a rounded r beyond 2^24 lands on the same bound either way).
    e.op("clip", "ClipByValue", [rounded, e.const("min", np.float32(-half - offset)),
                                 e.const("max", np.float32(half - 1 - offset))])


def _build_weight_quant(node, e: ExpansionBuilder) -> None:
    _require_float(node)
    to_float = {"SrcT": type_attr(DT_INT8), "DstT": float_type()}
    weights = e.op("weight", "Cast", [e.inputs[0]], **to_float)
    offset = e.op("offset_w", "Cast", [e.inputs[1]], **to_float)
    e.op("sub", "Sub", [weights, offset])


def _const_input(node, index: int, by_name) -> np.ndarray:
    ref = node.input[index]
    producer = by_name.get(ref.split(":")[0])
    if producer is None or producer.op != "Const":
        kind = producer.op if producer is not None else "missing"
        raise ModelError(f"node '{node.name}' ({node.op}): input '{ref}' is a {kind} node, not "
                         "a Const; the simulation decodes deq_scale when it expands the graph")
    return const_value(producer)


def _build_dequant(node, e: ExpansionBuilder) -> None:
    _require_float(node)
    packed = _const_input(node, 1, e.nodes)
    if packed.dtype != np.uint64:
        raise ModelError(f"node '{node.name}' (AscendDequant): deq_scale is {packed.dtype}, "
                         "not uint64")
    data_format = node.attr["data_format"].s.decode() if "data_format" in node.attr else "NHWC"
    ksize = list(node.attr["ksize"].list.i) if "ksize" in node.attr else [1, 1]
    area = int(np.prod(ksize[:2])) if ksize else 1
    deq, shift = _decode(packed, data_format)
    t = e.inputs[0]
    if area != 1:
        t = _times_constant(e, "area", t, "area_factor", area)
    if np.any(shift > 0):
        # x / 2^N and x * 2^-N are both exact, as is the kernel's double division.
        down = e.op("down", "Mul", [t, e.const("inv_pow2n", (2.0 ** -shift).astype(np.float32))])
        shifted = e.op("clip", "ClipByValue", [
            e.op("floor", "Floor", [down]), e.const("int16_min", np.float32(INT16_MIN)),
            e.const("int16_max", np.float32(INT16_MAX))])
        t = shifted if np.all(shift > 0) else e.op(
            "select", "SelectV2", [e.const("shifted", shift > 0), shifted, t])
    y = _times_constant(e, "deq", t, "deq_scale", deq)
    if np.any(shift > 0):
        two_pow_n = e.const("two_pow_n", (2.0 ** shift).astype(np.float32))
        y = e.op("pow2n", "Mul", [y, two_pow_n])
    if area != 1:
        # Double rounding through the kernel's double is innocuous for one division. DivNoNan
        # (= RealDiv for a non-zero divisor): Grappler folds (y * deq) / 9 into y * (deq / 9).
        e.op("per_area", "DivNoNan", [y, e.const("area_divisor", np.float32(area))])


def _build_anti_quant(node, e: ExpansionBuilder) -> None:
    _require_float(node)
    _times_constant(e, "mul", e.inputs[0], "scale", node.attr["scale"].f)


def _times_constant(e: ExpansionBuilder, part: str, x: str, const_part: str, factor) -> str:
    """x * factor, one float32 multiply that Grappler cannot merge with a neighbouring constant
    factor: constant folding and the arithmetic optimizer rewrite (x * a) * b into x * (a * b)
    (e.g. an AvgPool area and deq, or deq and a Mul by a constant after the AscendDequant),
    which moves the last bit. MulNoNan stays out of such chains and equals Mul for non-zero
    factors; a zero factor keeps Mul (MulNoNan would turn inf * 0 into 0)."""
    factor = np.asarray(factor, np.float32)
    op = "MulNoNan" if np.all(factor != 0) else "Mul"
    return e.op(part, op, [x, e.const(const_part, factor)])


def _require_float(node) -> None:
    if "T" in node.attr and node.attr["T"].type != DT_FLOAT:
        raise ModelError(f"node '{node.name}' ({node.op}): only T=float32 can be simulated, "
                         "like the tf_adapter CPU kernel")


ATC_SOURCE = ("AMCT's deploy ops: ATC maps AscendQuant / AscendWeightQuant / AscendDequant / "
              "AscendAntiQuant of an AMCT-quantized TF model to INT8 kernels (ASCEND_FACTS 4; "
              "Ascend/tensorflow tf_adapter amct_*.cc)")
EXPANDERS = {"AscendQuant": _build_quant, "AscendWeightQuant": _build_weight_quant,
             "AscendDequant": _build_dequant, "AscendAntiQuant": _build_anti_quant}


@hookimpl
def register_ops(registry):
    for op_type, expand in EXPANDERS.items():
        registry.add(OpSpec(op_type, expand=expand, atc=AtcAcceptance(True, ATC_SOURCE),
                            summary="AMCT deploy op"))
