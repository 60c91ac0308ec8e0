"""The op registry: what amct-targets knows about each op type, filled by `register_ops`.

Per op type a plugin may declare (each field optional, each set by one plugin only):

- `expand`: its simulation expander, a function `(node, builder) -> None` that rebuilds
  `node` from stock TensorFlow ops with `builder.op(...)` / `builder.const(...)`; the last op
  built takes the node's name, so consumers and graph outputs are untouched. Every graph
  run (calibration, metrics, `simulate`, `load_simulation`) expands such ops first.
- `atc`: whether ATC accepts the op in a TensorFlow model, with the source of that fact,
  for every target or for the listed ones. The ATC check accepts an op when the profile's
  `atc.tf_ops` lists it or the registry says ATC accepts it for that target.
- `layout`: where the op takes its activation and weight and which weight axes are input and
  output channels (graph/layout.py); every pass that edits weights reads it from here.

The Ascend deploy ops (deploy/ascend_ops.py), FastSoftmax (approx/ops.py) and the layouts of
the stock compute ops (graph/layout.py) register through the same hook as a plugin's ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from amct_targets.errors import ModelError, PluginError
from amct_targets.hooks import Registry


@dataclass(frozen=True)
class AtcAcceptance:
    """Whether ATC compiles this op type from a TensorFlow graph, and where that is stated."""

    accepted: bool
    source: str
    targets: tuple[str, ...] = ()    # profile names this applies to; () = every target

    def applies_to(self, profile_name: str) -> bool:
        return not self.targets or profile_name in self.targets


@dataclass(frozen=True)
class OpSpec:
    """What one plugin declares about one op type (see the module docstring)."""

    op_type: str
    expand: Callable[[Any, "ExpansionBuilder"], None] | None = None
    atc: AtcAcceptance | None = None
    layout: Any = None        # a graph.layout.LayerLayout
    summary: str = ""


_FIELDS = ("expand", "atc", "layout")


class OpRegistry(Registry):
    """Handed to `register_ops`: `registry.add(OpSpec(...))`, one entry per op type."""

    def __init__(self) -> None:
        self._specs: dict[str, OpSpec] = {}
        self._owners: dict[tuple[str, str], str] = {}   # (op type, field) -> plugin

    def add(self, spec: OpSpec) -> None:
        plugin = self.current_plugin
        if not isinstance(spec, OpSpec) or not spec.op_type or not isinstance(spec.op_type, str):
            raise PluginError(f"plugin '{plugin}' registered an op that is not an "
                              "amct_targets.graph.ops.OpSpec with an op_type")
        if spec.expand is not None and not callable(spec.expand):
            raise PluginError(f"plugin '{plugin}': op {spec.op_type}: expand is not callable")
        merged = self._specs.get(spec.op_type, OpSpec(spec.op_type))
        changes = {}
        for name in _FIELDS:
            value = getattr(spec, name)
            if value is None:
                continue
            owner = self._owners.get((spec.op_type, name))
            if owner is not None and owner != plugin:
                raise PluginError(f"op {spec.op_type}: its {name} is declared twice, by plugin "
                                  f"'{owner}' and by plugin '{plugin}'")
            self._owners[(spec.op_type, name)] = plugin
            changes[name] = value
        if spec.summary:
            changes["summary"] = spec.summary
        self._specs[spec.op_type] = replace(merged, **changes)

    def get(self, op_type: str) -> OpSpec | None:
        return self._specs.get(op_type)

    def owner(self, op_type: str, what: str) -> str | None:
        return self._owners.get((op_type, what))

    @property
    def expanders(self) -> dict[str, Callable]:
        return {t: s.expand for t, s in sorted(self._specs.items()) if s.expand is not None}

    @property
    def layouts(self) -> dict[str, Any]:
        return {t: s.layout for t, s in sorted(self._specs.items()) if s.layout is not None}

    def atc_acceptance(self, op_type: str, profile_name: str) -> AtcAcceptance | None:
        spec = self._specs.get(op_type)
        if spec is None or spec.atc is None or not spec.atc.applies_to(profile_name):
            return None
        return spec.atc

    def __iter__(self):
        return iter(sorted(self._specs.values(), key=lambda s: s.op_type))

    def __len__(self) -> int:
        return len(self._specs)


@dataclass
class ExpansionBuilder:
    """Builds the stock-op replacement of one node. Names are `<node>/<scope>/<part>`; the
    last op built takes the node's own name (its consumers read it unchanged)."""

    node: Any                     # the NodeDef being replaced
    nodes: Mapping[str, Any]      # every NodeDef of the graph by name (read-only)
    taken: set[str]
    scope: str = "sim"
    built: list = field(default_factory=list)

    @property
    def inputs(self) -> list[str]:
        return [i for i in self.node.input if not i.startswith("^")]

    @property
    def controls(self) -> list[str]:
        return [i for i in self.node.input if i.startswith("^")]

    def _name(self, part: str) -> str:
        name = f"{self.node.name}/{self.scope}/{part}"
        if name in self.taken:
            raise ModelError(f"node '{self.node.name}' ({self.node.op}): cannot expand it for "
                             f"simulation, the graph already has a node '{name}'")
        self.taken.add(name)
        return name

    def const(self, part: str, value) -> str:
        """A Const of `value` (any numpy dtype); returns its name."""
        import numpy as np

        from amct_targets.graph.nodes import const_node

        self.built.append(const_node(self._name(part), np.asarray(value)))
        return self.built[-1].name

    def op(self, part: str, op: str, inputs: list[str], **attrs) -> str:
        """A stock op; `attrs` are AttrValue protos. Ops without `SrcT` get `T: float32`
        unless `T` is given. Returns its name."""
        from amct_targets.graph.nodes import float_type, make_node

        if "SrcT" not in attrs:
            attrs.setdefault("T", float_type())
        self.built.append(make_node(self._name(part), op, inputs, **attrs))
        return self.built[-1].name

    def finish(self) -> list:
        if not self.built:
            raise PluginError(f"the simulation expander of op {self.node.op} built no node for "
                              f"'{self.node.name}'")
        last = self.built[-1]
        self.taken.discard(last.name)
        last.name = self.node.name
        last.input.extend(self.controls)
        return self.built
