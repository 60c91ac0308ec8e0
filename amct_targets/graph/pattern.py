"""A small op-pattern matcher over a GraphDef, in the style of tf2onnx's OpTypePattern.

A rewrite declares the subgraph first, e.g.

    OpPattern("Mul", name="mul", inputs=[OpPattern("Conv2D|MatMul", name="conv"), CONST])

then loops over `GraphIndex.match(pattern)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from amct_targets.graph.model import node_name

if TYPE_CHECKING:  # pragma: no cover
    from tensorflow.core.framework import graph_pb2, node_def_pb2


@dataclass(frozen=True)
class OpPattern:
    """`op` is `A|B` or `*`; `inputs` None matches any inputs; `name` captures the node."""

    op: str
    inputs: tuple["OpPattern", ...] | None = None
    name: str | None = None
    commutative: bool = False

    def __init__(self, op, inputs=None, name=None, commutative=False):
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "inputs", None if inputs is None else tuple(inputs))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "commutative", commutative)

    def accepts(self, op_type: str) -> bool:
        return self.op == "*" or op_type in self.op.split("|")


class GraphIndex:
    """Read-only lookups over a GraphDef: nodes by name, consumers, constant values (a layer's
    bias: graph/layout.py `bias_of`)."""

    def __init__(self, graph_def: "graph_pb2.GraphDef"):
        self.graph_def = graph_def
        self.nodes: dict[str, node_def_pb2.NodeDef] = {n.name: n for n in graph_def.node}
        self.consumers: dict[str, list[str]] = {n.name: [] for n in graph_def.node}
        for node in graph_def.node:
            for inp in node.input:
                self.consumers.setdefault(node_name(inp), []).append(node.name)

    def producer(self, node: "node_def_pb2.NodeDef", index: int) -> "node_def_pb2.NodeDef | None":
        """The node feeding data input `index` of `node` (control inputs excluded)."""
        data_inputs = [i for i in node.input if not i.startswith("^")]
        if index >= len(data_inputs):
            return None
        return self.nodes.get(node_name(data_inputs[index]))

    def data_inputs(self, node) -> list[str]:
        return [i for i in node.input if not i.startswith("^")]

    def const_value(self, node: "node_def_pb2.NodeDef | None") -> np.ndarray | None:
        if node is None or node.op != "Const":
            return None
        from tensorflow.python.framework import tensor_util

        return tensor_util.MakeNdarray(node.attr["value"].tensor)

    def match(self, pattern: OpPattern) -> Iterator[dict[str, "node_def_pb2.NodeDef"]]:
        """Every match of `pattern` rooted at some node, in graph order."""
        for node in self.graph_def.node:
            captured: dict[str, node_def_pb2.NodeDef] = {}
            if self._match(node, pattern, captured):
                yield captured

    def _match(self, node, pattern: OpPattern, captured) -> bool:
        if node is None or not pattern.accepts(node.op):
            return False
        if pattern.name and pattern.name in captured and captured[pattern.name] is not node:
            return False
        trial = dict(captured)
        if pattern.name:
            trial[pattern.name] = node
        if pattern.inputs is not None:
            producers = [self.nodes.get(node_name(i)) for i in self.data_inputs(node)]
            if len(producers) < len(pattern.inputs):
                return False
            orders = [list(range(len(pattern.inputs)))]
            if pattern.commutative and len(pattern.inputs) == 2:
                orders.append([1, 0])
            for order in orders:
                attempt = dict(trial)
                if all(self._match(producers[i], sub, attempt)
                       for i, sub in zip(order, pattern.inputs)):
                    trial = attempt
                    break
            else:
                return False
        captured.clear()
        captured.update(trial)
        return True


CONST = OpPattern("Const")
ANY = OpPattern("*")
