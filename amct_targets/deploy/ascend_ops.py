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

from typing import Callable

import numpy as np
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2
from tensorflow.python.framework import tensor_util

from amct_targets import simulate
from amct_targets.errors import ModelError

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

def _node(name: str, op: str, inputs: list[str], **attrs) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _type(dtype: int = types_pb2.DT_FLOAT) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=dtype)


def const_node(name: str, value: np.ndarray) -> node_def_pb2.NodeDef:
    """A Const of any dtype (int8, uint64, float32, ...) holding `value`."""
    proto = tensor_util.make_tensor_proto(np.asarray(value))
    return _node(name, "Const", [], dtype=_type(proto.dtype),
                 value=attr_value_pb2.AttrValue(tensor=proto))


def ascend_quant_node(name: str, input_name: str, scale_d: float, offset_d: int,
                      num_bits: int = 8) -> node_def_pb2.NodeDef:
    """AscendQuant with AMCT's attributes: scale = 1/scale_d, offset = offset_d."""
    if f"INT{num_bits}" not in DST_BITS:
        raise ValueError(f"AscendQuant supports {sorted(DST_BITS.values())} bits, not {num_bits}")
    if not scale_d > 0:
        raise ValueError(f"AscendQuant '{name}': scale_d must be positive, got {scale_d}")
    return _node(name, "AscendQuant", [input_name], T=_type(),
                 dst_type=attr_value_pb2.AttrValue(s=f"INT{num_bits}".encode()),
                 quant_bits=attr_value_pb2.AttrValue(i=num_bits),
                 scale=attr_value_pb2.AttrValue(f=1.0 / scale_d),
                 offset=attr_value_pb2.AttrValue(f=float(offset_d)))


def ascend_weight_quant_node(name: str, weight_const_name: str,
                             offset_const_name: str) -> node_def_pb2.NodeDef:
    return _node(name, "AscendWeightQuant", [weight_const_name, offset_const_name], T=_type(),
                 dst_type=attr_value_pb2.AttrValue(s=b"INT8"))


def ascend_dequant_node(name: str, input_name: str, deq_const_name: str,
                        ksize: tuple[int, int] = (1, 1),
                        data_format: str = "NHWC") -> node_def_pb2.NodeDef:
    return _node(name, "AscendDequant", [input_name, deq_const_name], T=_type(),
                 ksize=attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(
                     i=[int(k) for k in ksize])),
                 data_format=attr_value_pb2.AttrValue(s=data_format.encode()))


def ascend_anti_quant_node(name: str, input_name: str, scale: float,
                           offset: float = 0.0) -> node_def_pb2.NodeDef:
    """AscendAntiQuant with the raw attributes (the TF kernel computes x * scale)."""
    return _node(name, "AscendAntiQuant", [input_name], T=_type(),
                 scale=attr_value_pb2.AttrValue(f=float(scale)),
                 offset=attr_value_pb2.AttrValue(f=float(offset)))


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


# --- simulation expanders --------------------------------------------------------------------

class _Expansion:
    """Builds the stock-op replacement of one node; the last node added takes its name."""

    def __init__(self, node: node_def_pb2.NodeDef, taken: set[str]):
        self.node, self.taken, self.nodes = node, taken, []
        data = [i for i in node.input if not i.startswith("^")]
        self.inputs, self.controls = data, [i for i in node.input if i.startswith("^")]

    def _name(self, part: str) -> str:
        name = f"{self.node.name}/ascend_sim/{part}"
        if name in self.taken:
            raise ModelError(f"node '{self.node.name}': cannot expand it for simulation, "
                             f"the graph already has a node '{name}'")
        self.taken.add(name)
        return name

    def const(self, part: str, value) -> str:
        self.nodes.append(const_node(self._name(part), np.asarray(value)))
        return self.nodes[-1].name

    def op(self, part: str, op: str, inputs: list[str], **attrs) -> str:
        if "SrcT" not in attrs:  # every op used here but Cast has a T attribute
            attrs.setdefault("T", _type())
        self.nodes.append(_node(self._name(part), op, inputs, **attrs))
        return self.nodes[-1].name

    def finish(self) -> list[node_def_pb2.NodeDef]:
        last = self.nodes[-1]
        self.taken.discard(last.name)
        last.name = self.node.name
        last.input.extend(self.controls)
        return self.nodes


def _expander(op_type: str, build: Callable) -> Callable:
    def expand(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
        out = graph_pb2.GraphDef()
        out.CopyFrom(graph_def)
        del out.node[:]
        by_name = {n.name: n for n in graph_def.node}
        taken = set(by_name)
        for node in graph_def.node:
            if node.op != op_type:
                out.node.add().CopyFrom(node)
                continue
            if "T" in node.attr and node.attr["T"].type != types_pb2.DT_FLOAT:
                raise ModelError(f"node '{node.name}' ({op_type}): only T=float32 can be "
                                 "simulated, like the tf_adapter CPU kernel")
            expansion = _Expansion(node, taken)
            build(expansion, node, by_name)
            out.node.extend(expansion.finish())
        return out

    expand.__name__ = f"expand_{op_type}"
    expand.__doc__ = f"Every {op_type} node of a GraphDef replaced by stock TensorFlow ops."
    return expand


def _build_quant(e: _Expansion, node, by_name) -> None:
    dst = node.attr["dst_type"].s.decode() if "dst_type" in node.attr else "INT8"
    if dst not in DST_BITS:
        raise ModelError(f"node '{node.name}' (AscendQuant): dst_type {dst!r} is not INT4/INT8")
    half = 2 ** (DST_BITS[dst] - 1)
    offset = e.const("offset", np.float32(node.attr["offset"].f))
    scaled = e.op("mul", "Mul", [e.inputs[0], e.const("scale", np.float32(node.attr["scale"].f))])
    # C round (ties away from zero) from exact float32 steps: sign(x) * (floor|x| + (frac >= .5))
    magnitude = e.op("abs", "Abs", [scaled])
    whole = e.op("floor", "Floor", [magnitude])
    fraction = e.op("fraction", "Sub", [magnitude, whole])
    up = e.op("up", "Cast", [e.op("half", "GreaterEqual", [fraction, e.const(
        "one_half", np.float32(0.5))])], SrcT=_type(types_pb2.DT_BOOL), DstT=_type())
    rounded = e.op("round", "Mul", [e.op("sign", "Sign", [scaled]),
                                    e.op("whole_up", "AddV2", [whole, up])])
    shifted = e.op("add", "AddV2", [rounded, offset])
    clipped = e.op("clip", "ClipByValue", [shifted, e.const("min", np.float32(-half)),
                                           e.const("max", np.float32(half - 1))])
    e.op("sub", "Sub", [clipped, offset])


def _build_weight_quant(e: _Expansion, node, by_name) -> None:
    to_float = {"SrcT": _type(types_pb2.DT_INT8), "DstT": _type()}
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
    return tensor_util.MakeNdarray(producer.attr["value"].tensor)


def _build_dequant(e: _Expansion, node, by_name) -> None:
    packed = _const_input(node, 1, by_name)
    if packed.dtype != np.uint64:
        raise ModelError(f"node '{node.name}' (AscendDequant): deq_scale is {packed.dtype}, "
                         "not uint64")
    data_format = node.attr["data_format"].s.decode() if "data_format" in node.attr else "NHWC"
    ksize = list(node.attr["ksize"].list.i) if "ksize" in node.attr else [1, 1]
    area = int(np.prod(ksize[:2])) if ksize else 1
    deq, shift = _decode(packed, data_format)
    t = e.inputs[0]
    if area != 1:
        t = e.op("area", "Mul", [t, e.const("area_factor", np.float32(area))])
    if np.any(shift > 0):
        # x / 2^N and x * 2^-N are both exact, as is the kernel's double division.
        down = e.op("down", "Mul", [t, e.const("inv_pow2n", (2.0 ** -shift).astype(np.float32))])
        shifted = e.op("clip", "ClipByValue", [
            e.op("floor", "Floor", [down]), e.const("int16_min", np.float32(INT16_MIN)),
            e.const("int16_max", np.float32(INT16_MAX))])
        t = shifted if np.all(shift > 0) else e.op(
            "select", "SelectV2", [e.const("shifted", shift > 0), shifted, t])
    y = e.op("deq", "Mul", [t, e.const("deq_scale", deq.astype(np.float32))])
    if np.any(shift > 0):
        two_pow_n = e.const("two_pow_n", (2.0 ** shift).astype(np.float32))
        y = e.op("pow2n", "Mul", [y, two_pow_n])
    if area != 1:
        # Double rounding through the kernel's double is innocuous for one division.
        e.op("per_area", "RealDiv", [y, e.const("area_divisor", np.float32(area))])


def _build_anti_quant(e: _Expansion, node, by_name) -> None:
    e.op("mul", "Mul", [e.inputs[0], e.const("scale", np.float32(node.attr["scale"].f))])


expand_ascend_quant = _expander("AscendQuant", _build_quant)
expand_ascend_weight_quant = _expander("AscendWeightQuant", _build_weight_quant)
expand_ascend_dequant = _expander("AscendDequant", _build_dequant)
expand_ascend_anti_quant = _expander("AscendAntiQuant", _build_anti_quant)

simulate.EXPANDERS.update({
    "AscendQuant": expand_ascend_quant,
    "AscendWeightQuant": expand_ascend_weight_quant,
    "AscendDequant": expand_ascend_dequant,
    "AscendAntiQuant": expand_ascend_anti_quant,
})
