"""What a compression pass is, what it is given, and the registry passes are added to.

A pass is any object with the attributes of `CompressionPass` (subclassing it is the easy
way). Built-in and third-party passes reach the planner the same way: a plugin's
`register_passes(registry)` hook calls `registry.add(pass_object)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from amct_targets.errors import PluginError
from amct_targets.graph.model import Model
from amct_targets.hooks import Registry

# prepare (canonical rewrites such as Conv+BN folding) -> retrain -> graph rewrites
STAGES = ("prepare", "retrain", "graph")
DATA_KINDS = {"calibration": "--calib", "training": "--train"}


class CompressionPass:
    """Base class for passes. Override the class attributes and `apply`."""

    name: str = ""
    summary: str = ""
    requires: tuple[str, ...] = ()       # capability keys the target must have
    stage: str = "graph"
    after: tuple[str, ...] = ()          # run after these passes when they run
    before: tuple[str, ...] = ()         # run before these passes when they run
    needs: tuple[str, ...] = ()          # data kinds: "calibration", "training"
    enabled_by_default: bool = False
    exclusive_with: tuple[str, ...] = ()  # passes that may not change the same layer
    config_schema: Mapping[str, Any] = {"type": "object"}

    def layers(self, model: Model, config: Mapping[str, Any]) -> list[str]:
        """Names of the layers this pass would change; used to find conflicting requests."""
        return []

    def shared_key(self, model: Model, ctx: "PassContext") -> Any:
        """What of the target profile `apply` reads, as a JSON-able value, when its result
        depends on nothing else but the model, its options, the build's data and config:
        targets of one build with equal values then share one run (shared.py). None (the
        default): the pass runs for every target."""
        return None

    def apply(self, model: Model, ctx: "PassContext") -> Model:
        raise PluginError(f"pass '{self.name}' does not implement apply()")


@dataclass
class PassReport:
    """What a pass did, filled in by the pass through its context."""

    layers: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown beside the plan's warnings
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # key -> file in the target folder


@dataclass
class PassContext:
    """Everything a pass may use: the target, its own config, data, progress and a folder."""

    profile: Any
    config: Mapping[str, Any]
    calibration: Any = None
    training: Any = None
    artifacts_dir: Path | None = None
    progress: Callable[[str], None] = lambda message: None
    report: PassReport = field(default_factory=PassReport)
    build_config: Mapping[str, Any] = field(default_factory=dict)  # the whole build config
    ops: Any = None          # the OpRegistry (register_ops): expanders, ATC, layer layouts
    quantizers: Any = None   # the QuantizerRegistry (register_quantizers)

    @property
    def layouts(self):
        """{op type: LayerLayout} of every registered op with a weight layout."""
        return self.ops.layouts


def _check_config_schema(pass_obj, plugin: str) -> None:
    import jsonschema

    schema = getattr(pass_obj, "config_schema", None) or {"type": "object"}
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise PluginError(f"plugin '{plugin}': pass '{pass_obj.name}' has an invalid "
                          f"config_schema: {str(exc.message)[:200]}") from None
    if not isinstance(schema, Mapping) or schema.get("type", "object") != "object":
        raise PluginError(f"plugin '{plugin}': pass '{pass_obj.name}': config_schema must "
                          "describe an object (the pass's section of the build config)")


@dataclass(frozen=True)
class RegisteredPass:
    impl: Any
    plugin: str  # name of the plugin that registered it

    @property
    def name(self) -> str:
        return self.impl.name


class PassRegistry(Registry):
    """Handed to `register_passes`; collects passes and refuses ill-formed or duplicate ones."""

    def __init__(self) -> None:
        self._passes: dict[str, RegisteredPass] = {}

    def add(self, pass_obj: Any) -> None:
        plugin = self.current_plugin
        name = getattr(pass_obj, "name", "")
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a pass without a name")
        for attr in ("summary", "requires", "stage", "apply"):
            if not hasattr(pass_obj, attr):
                raise PluginError(f"plugin '{plugin}': pass '{name}' has no '{attr}'")
        if pass_obj.stage not in STAGES:
            raise PluginError(f"plugin '{plugin}': pass '{name}' has stage '{pass_obj.stage}'; "
                              f"expected one of {list(STAGES)}")
        for attr in ("requires", "after", "before", "needs", "exclusive_with"):
            value = getattr(pass_obj, attr, ())
            if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
                raise PluginError(f"plugin '{plugin}': pass '{name}': {attr} must be a tuple of "
                                  f"names, got {value!r:.80}")
        _check_config_schema(pass_obj, plugin)
        unknown = set(getattr(pass_obj, "needs", ())) - set(DATA_KINDS)
        if unknown:
            raise PluginError(f"plugin '{plugin}': pass '{name}' needs unknown data "
                              f"{sorted(unknown)}; expected some of {sorted(DATA_KINDS)}")
        if name in self._passes:
            raise PluginError(f"pass '{name}' is registered twice: by plugin "
                              f"'{self._passes[name].plugin}' and by plugin '{plugin}'")
        self._passes[name] = RegisteredPass(pass_obj, plugin)

    def get(self, name: str) -> RegisteredPass | None:
        return self._passes.get(name)

    def __iter__(self):
        return iter(sorted(self._passes.values(), key=lambda p: p.name))

    def __len__(self) -> int:
        return len(self._passes)

    def names(self) -> list[str]:
        return sorted(self._passes)
