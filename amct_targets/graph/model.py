"""`Model`: a frozen GraphDef plus the names, dtypes and shapes of its inputs and outputs.

Importing this module does not import TensorFlow (the planner and the CLI's listing commands
use `Model` in type hints only); the GraphDef class is loaded when a graph is copied.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from tensorflow.core.framework import graph_pb2


@dataclass(frozen=True)
class TensorSpec:
    """One graph input: the Placeholder node's name, its dtype and its shape (None = unknown)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None

    def shape_text(self) -> str:
        """The shape as ATC writes it (`-1` for an unknown dimension)."""
        dims = self.shape if self.shape is not None else ()
        return ",".join("-1" if d is None else str(d) for d in dims)


def tensor_name(name: str) -> str:
    """`node` -> `node:0`; `node:1` stays."""
    return name if ":" in name else f"{name}:0"


def node_name(name: str) -> str:
    """`^node`, `node:1` -> `node`."""
    return name.lstrip("^").split(":")[0]


def _frozen_masks(masks: Mapping[str, "np.ndarray"] | None) -> Mapping[str, "np.ndarray"]:
    return MappingProxyType(dict(masks or {}))


@dataclass(frozen=True)
class Model:
    """A frozen graph with its interface. Passes return a new Model; they never mutate one.

    `outputs` are tensor names (`node:0`). `source` says where the model came from, for
    messages and the report. `notes` say what loading rewrote. `weight_masks` ({weight Const name: 0/1 array of its shape})
    are sparsity masks a pass fixed (4:2, pruning) that later retraining must keep: they
    travel with the model from pass to pass.
    """

    graph_def: "graph_pb2.GraphDef"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    source: str = "<memory>"
    name: str = "model"
    weight_masks: Mapping[str, "np.ndarray"] = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = ()   # what loading changed (inlined calls, rewritten ops)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_masks", _frozen_masks(self.weight_masks))

    def replace(self, **changes) -> "Model":
        return dataclasses.replace(self, **changes)

    def serialize(self) -> bytes:
        """Deterministic bytes of the GraphDef (same graph -> same bytes)."""
        return self.graph_def.SerializeToString(deterministic=True)

    def sha256(self) -> str:
        return hashlib.sha256(self.serialize()).hexdigest()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_nodes(self) -> tuple[str, ...]:
        return tuple(node_name(t) for t in self.outputs)

    def copy_graph_def(self) -> "graph_pb2.GraphDef":
        """A deep copy of the GraphDef for a pass to edit."""
        copy = type(self.graph_def)()
        copy.CopyFrom(self.graph_def)
        return copy
