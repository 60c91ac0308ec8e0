"""The FastSoftmax op in the deploy .pb: its NodeDef and its simulation expander.

    FastSoftmax(x; T=float, a, b, clip_value, axis=-1)      see approx/kernel.py

The node replaces a Softmax under the same name, so its consumers are unchanged. Stock
TensorFlow has no FastSoftmax kernel: `expand_fast_softmax` rewrites each node into stock ops
computing exactly `ref_fast_softmax` (same float32 operations in the same order), the last
one keeping the node's name. The expander and ATC's acceptance of the op are registered
through the `register_ops` hook, as deploy/ascend_ops.py registers the AMCT ops.

    m = Max(x, axis, keep_dims)      z = Sub(x, m)        t = Maximum(z, -clip_value)
    p = ((t * b + a) * t + 1) * t + 1                     (Mul, AddV2; Horner)
    s = Cast(Sum(Cast(p, double), axis, keep_dims), float)
    y = RealDiv(p, s)

The row sum is accumulated in float64 and rounded once to float32: the result then does not
depend on the summation order (TensorFlow's vectorized reduction and NumPy's pairwise sum
differ in the last bit of a float32 sum), so the simulation equals the NumPy reference bit
for bit. Every other step is one correctly rounded float32 operation in both.
"""
from __future__ import annotations

import numpy as np

from amct_targets.approx.kernel import FastSoftmaxParams
from amct_targets.errors import ModelError
from amct_targets.graph.nodes import (DT_DOUBLE, DT_FLOAT, DT_INT32, attr_value, float_type,
                                      make_node, type_attr)
from amct_targets.graph.ops import AtcAcceptance, ExpansionBuilder, OpSpec
from amct_targets.hooks import hookimpl

OP_TYPE = "FastSoftmax"


def fast_softmax_node(name: str, inputs: list[str], params: FastSoftmaxParams,
                      axis: int = -1):
    """A FastSoftmax NodeDef; `inputs` is the Softmax's input list (data, then controls)."""
    return make_node(name, OP_TYPE, inputs, T=float_type(), a=attr_value(f=params.a),
                     b=attr_value(f=params.b), clip_value=attr_value(f=params.clip_value),
                     axis=attr_value(i=int(axis)))


def node_params(node) -> tuple[FastSoftmaxParams, int]:
    """(params, axis) read back from a FastSoftmax NodeDef."""
    for key in ("a", "b", "clip_value"):
        if key not in node.attr:
            raise ModelError(f"node '{node.name}' ({OP_TYPE}) has no '{key}' attribute")
    axis = int(node.attr["axis"].i) if "axis" in node.attr else -1
    return FastSoftmaxParams(node.attr["a"].f, node.attr["b"].f, node.attr["clip_value"].f), axis


def expand_fast_softmax(node, e: ExpansionBuilder) -> None:
    """Rebuild one FastSoftmax node from stock ops (its simulation expander)."""
    if "T" in node.attr and node.attr["T"].type != DT_FLOAT:
        raise ModelError(f"node '{node.name}' ({OP_TYPE}): only T=float32 can be simulated")
    params, axis = node_params(node)
    if len(e.inputs) != 1:
        raise ModelError(f"node '{node.name}' ({OP_TYPE}) has {len(e.inputs)} data inputs, "
                         "not 1")
    reduce = {"Tidx": type_attr(DT_INT32), "keep_dims": attr_value(b=True)}
    axis_c = e.const("axis", np.array([axis], np.int32))
    x = e.inputs[0]
    z = e.op("z", "Sub", [x, e.op("max", "Max", [x, axis_c], **reduce)])
    t = e.op("t", "Maximum", [z, e.const("neg_clip", np.float32(-np.float32(params.clip_value)))])
    one = e.const("one", np.float32(1.0))
    p = e.op("tb_a", "AddV2", [e.op("tb", "Mul", [t, e.const("b", np.float32(params.b))]),
                               e.const("a", np.float32(params.a))])
    p = e.op("t2_1", "AddV2", [e.op("t2", "Mul", [p, t]), one])
    p = e.op("p", "AddV2", [e.op("t3", "Mul", [p, t]), one])
    p64 = e.op("p64", "Cast", [p], SrcT=float_type(), DstT=type_attr(DT_DOUBLE))
    sum64 = e.op("sum64", "Sum", [p64, axis_c], **reduce, T=type_attr(DT_DOUBLE))
    total = e.op("sum", "Cast", [sum64], SrcT=type_attr(DT_DOUBLE), DstT=float_type())
    e.op("normalize", "RealDiv", [p, total])


ATC_SOURCE = ("FastSoftmax is the op AMCT's approximate calibration writes for ATC "
              "(ASCEND_FACTS 6); accelerated on the Atlas inference series (Ascend 310P)")


@hookimpl
def register_ops(registry):
    registry.add(OpSpec(OP_TYPE, expand=expand_fast_softmax, atc=AtcAcceptance(True, ATC_SOURCE),
                        summary="AMCT approximate calibration: clipped-cubic Softmax"))
