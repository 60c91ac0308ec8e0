"""The FastSoftmax op in the deploy .pb: its NodeDef and its simulation expander.

    FastSoftmax(x; T=float, a, b, clip_value, axis=-1)      see approx/kernel.py

The node replaces a Softmax under the same name, so its consumers are unchanged. Stock
TensorFlow has no FastSoftmax kernel: `expand_fast_softmax` rewrites each node into stock ops
computing exactly `ref_fast_softmax` (same float32 operations in the same order), the last
one keeping the node's name. Importing this module registers the expander in
`amct_targets.simulate.EXPANDERS`, the same way deploy/ascend_ops.py registers the AMCT ops.

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
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2

from amct_targets import simulate
from amct_targets.approx.kernel import FastSoftmaxParams
from amct_targets.deploy.ascend_ops import const_node
from amct_targets.errors import ModelError

OP_TYPE = "FastSoftmax"
SIM_SCOPE = "fast_softmax_sim"


def fast_softmax_node(name: str, inputs: list[str], params: FastSoftmaxParams,
                      axis: int = -1) -> node_def_pb2.NodeDef:
    """A FastSoftmax NodeDef; `inputs` is the Softmax's input list (data, then controls)."""
    node = node_def_pb2.NodeDef(name=name, op=OP_TYPE, input=list(inputs))
    node.attr["T"].CopyFrom(attr_value_pb2.AttrValue(type=types_pb2.DT_FLOAT))
    node.attr["a"].CopyFrom(attr_value_pb2.AttrValue(f=params.a))
    node.attr["b"].CopyFrom(attr_value_pb2.AttrValue(f=params.b))
    node.attr["clip_value"].CopyFrom(attr_value_pb2.AttrValue(f=params.clip_value))
    node.attr["axis"].CopyFrom(attr_value_pb2.AttrValue(i=int(axis)))
    return node


def node_params(node: node_def_pb2.NodeDef) -> tuple[FastSoftmaxParams, int]:
    """(params, axis) read back from a FastSoftmax NodeDef."""
    for key in ("a", "b", "clip_value"):
        if key not in node.attr:
            raise ModelError(f"node '{node.name}' ({OP_TYPE}) has no '{key}' attribute")
    axis = int(node.attr["axis"].i) if "axis" in node.attr else -1
    return FastSoftmaxParams(node.attr["a"].f, node.attr["b"].f, node.attr["clip_value"].f), axis


def _type(dtype: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=dtype)


def _op(name: str, op: str, inputs: list[str], **attrs) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
    if op != "Cast":
        node.attr["T"].CopyFrom(_type(types_pb2.DT_FLOAT))
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _expansion(node: node_def_pb2.NodeDef, taken: set[str]) -> list[node_def_pb2.NodeDef]:
    if "T" in node.attr and node.attr["T"].type != types_pb2.DT_FLOAT:
        raise ModelError(f"node '{node.name}' ({OP_TYPE}): only T=float32 can be simulated")
    params, axis = node_params(node)
    data = [i for i in node.input if not i.startswith("^")]
    controls = [i for i in node.input if i.startswith("^")]
    if len(data) != 1:
        raise ModelError(f"node '{node.name}' ({OP_TYPE}) has {len(data)} data inputs, not 1")

    def name(part: str) -> str:
        full = f"{node.name}/{SIM_SCOPE}/{part}"
        if full in taken:
            raise ModelError(f"node '{node.name}': cannot expand it for simulation, the graph "
                             f"already has a node '{full}'")
        taken.add(full)
        return full

    reduce = {"Tidx": _type(types_pb2.DT_INT32), "keep_dims": attr_value_pb2.AttrValue(b=True)}
    to_double = {"SrcT": _type(types_pb2.DT_FLOAT), "DstT": _type(types_pb2.DT_DOUBLE)}
    to_float = {"SrcT": _type(types_pb2.DT_DOUBLE), "DstT": _type(types_pb2.DT_FLOAT)}
    nodes = [const_node(name("axis"), np.array([axis], np.int32)),
             const_node(name("neg_clip"), np.float32(-np.float32(params.clip_value))),
             const_node(name("a"), np.float32(params.a)),
             const_node(name("b"), np.float32(params.b)),
             const_node(name("one"), np.float32(1.0))]
    axis_c, neg_clip, a, b, one = (n.name for n in nodes)
    chain = [("max", "Max", [data[0], axis_c], reduce),
             ("z", "Sub", [data[0], "{max}"], {}),
             ("t", "Maximum", ["{z}", neg_clip], {}),
             ("tb", "Mul", ["{t}", b], {}),
             ("tb_a", "AddV2", ["{tb}", a], {}),
             ("t2", "Mul", ["{tb_a}", "{t}"], {}),
             ("t2_1", "AddV2", ["{t2}", one], {}),
             ("t3", "Mul", ["{t2_1}", "{t}"], {}),
             ("p", "AddV2", ["{t3}", one], {}),
             ("p64", "Cast", ["{p}"], to_double),
             ("sum64", "Sum", ["{p64}", axis_c], {**reduce, "T": _type(types_pb2.DT_DOUBLE)}),
             ("sum", "Cast", ["{sum64}"], to_float)]
    made: dict[str, str] = {}
    for part, op, inputs, attrs in chain:
        made[part] = name(part)
        nodes.append(_op(made[part], op, [i.format(**made) for i in inputs], **attrs))
    nodes.append(_op(node.name, "RealDiv", [made["p"], made["sum"]] + controls))
    return nodes


def expand_fast_softmax(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
    """Every FastSoftmax node of a GraphDef replaced by stock TensorFlow ops."""
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    del out.node[:]
    taken = {n.name for n in graph_def.node}
    for node in graph_def.node:
        if node.op == OP_TYPE:
            out.node.extend(_expansion(node, taken))
        else:
            out.node.add().CopyFrom(node)
    return out


simulate.EXPANDERS[OP_TYPE] = expand_fast_softmax
