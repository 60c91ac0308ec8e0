"""NodeDef construction shared by every rewrite: Consts of any dtype, ops with attributes.

TensorFlow's protobuf modules are imported when a node is built, not at import: op plugins
that only register themselves stay free of TensorFlow until a graph is touched.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# TensorFlow DataType enum values (tensorflow/core/framework/types.proto; stable).
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT8, DT_BOOL, DT_INT64, DT_HALF = 1, 2, 3, 6, 10, 9, 19


def attr_value(**value) -> Any:
    """An AttrValue: attr_value(f=1.0), (i=3), (s=b"NHWC"), (b=True), (type=DT_FLOAT),
    (ints=[1, 1]) for a list of ints."""
    from tensorflow.core.framework import attr_value_pb2

    if "ints" in value:
        return attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(
            i=[int(v) for v in value["ints"]]))
    return attr_value_pb2.AttrValue(**value)


def type_attr(dtype: int) -> Any:
    return attr_value(type=dtype)


def float_type() -> Any:
    return type_attr(DT_FLOAT)


def make_node(name: str, op: str, inputs: list[str], **attrs) -> Any:
    """A NodeDef; `attrs` values are AttrValue protos."""
    from tensorflow.core.framework import node_def_pb2

    node = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def const_node(name: str, value) -> Any:
    """A Const of any dtype (int8, uint64, float32, ...) holding `value`."""
    from tensorflow.python.framework import tensor_util

    proto = tensor_util.make_tensor_proto(np.asarray(value))
    return make_node(name, "Const", [], dtype=type_attr(proto.dtype),
                     value=attr_value(tensor=proto))


def set_const_value(node, value: np.ndarray) -> None:
    """Replace a Const node's value in place (dtype follows `value`)."""
    from tensorflow.python.framework import tensor_util

    proto = tensor_util.make_tensor_proto(np.asarray(value))
    node.attr["dtype"].type = proto.dtype
    node.attr["value"].tensor.CopyFrom(proto)


def const_value(node) -> np.ndarray:
    from tensorflow.python.framework import tensor_util

    return tensor_util.MakeNdarray(node.attr["value"].tensor)


def attr(node, key: str, kind: str, default):
    """An attr's value without `node.attr[key]`, which would insert an empty attr."""
    value = node.attr.get(key)
    return default if value is None else getattr(value, kind)


def data_inputs(node) -> list[str]:
    return [i for i in node.input if not i.startswith("^")]


def input_slot(node, data_index: int) -> int:
    """Position in node.input of the `data_index`-th data (non-control) input."""
    return [i for i, inp in enumerate(node.input) if not inp.startswith("^")][data_index]


def unique_name(taken: set[str], base: str) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is free; marks it taken."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name
