"""The planner: which registered passes run for a target, in what order, and why not.

Order is deterministic: stage (retrain before graph), then `after`/`before` constraints,
ties broken by name. A pass runs only if it is enabled (config, or on by default), the
target profile has every capability it requires (or it is forced, which warns), and the
data it needs was given. Conflicting requests fail here, before any work.
"""
from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import jsonschema

from amct_targets.config import check_known
from amct_targets.errors import AmctError, ConfigError, PlanError, PluginError, describe
from amct_targets.graph.model import Model
from amct_targets.passes.base import DATA_KINDS, STAGES, RegisteredPass

RUN, SKIP = "RUN", "SKIP"
# Keys every pass section may hold; the planner reads them, passes ignore them.
RESERVED_KEYS = {"enabled": {"type": "boolean"}, "force": {"type": "boolean"},
                 "disabled_reason": {"type": "string", "maxLength": 200}}


@dataclass
class PlanStep:
    name: str
    plugin: str
    stage: str
    status: str                     # RUN | SKIP
    reason: str
    requires: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        data["requires"] = list(self.requires)
        return data


@dataclass
class Plan:
    target: str
    soc_version: str
    steps: list[PlanStep]

    def running(self) -> list[PlanStep]:
        return [s for s in self.steps if s.status == RUN]

    def step(self, name: str) -> PlanStep | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_json(self) -> dict:
        return {"target": self.target, "soc_version": self.soc_version,
                "steps": [s.to_json() for s in self.steps]}

    def render(self) -> str:
        lines = [f"plan for {self.target} (soc_version {self.soc_version}):"]
        width = max((len(s.name) for s in self.steps), default=4)
        for index, step in enumerate(self.steps, 1):
            lines.append(f"  {index}. {step.status:<4} {step.name:<{width}}  {step.reason}")
            lines += [f"         warning: {w}" for w in step.warnings]
        return "\n".join(lines)


def pass_section(config: Mapping[str, Any] | None, name: str) -> dict:
    """The build config's section for one pass (empty when absent), reserved keys included."""
    return dict(((config or {}).get("passes") or {}).get(name) or {})


def pass_options(config: Mapping[str, Any] | None, name: str) -> dict:
    """What the pass itself is given: its section without the planner's reserved keys."""
    return {k: v for k, v in pass_section(config, name).items() if k not in RESERVED_KEYS}


def order_passes(passes: list[RegisteredPass]) -> list[RegisteredPass]:
    """Topological order by stage, after/before, ties by name; a cycle is a PlanError."""
    by_name = {p.name: p for p in passes}
    edges: dict[str, set[str]] = {name: set() for name in by_name}
    for p in passes:
        for other in getattr(p.impl, "after", ()):
            if other in by_name:
                edges[other].add(p.name)
        for other in getattr(p.impl, "before", ()):
            if other in by_name:
                edges[p.name].add(other)
    for a in passes:  # stage order is a constraint like any other
        for b in passes:
            if STAGES.index(a.impl.stage) < STAGES.index(b.impl.stage):
                edges[a.name].add(b.name)
    indegree = {name: 0 for name in by_name}
    for targets in edges.values():
        for t in targets:
            indegree[t] += 1
    ready = [(STAGES.index(by_name[n].impl.stage), n) for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        _, name = heapq.heappop(ready)
        ordered.append(by_name[name])
        for t in sorted(edges[name]):
            indegree[t] -= 1
            if indegree[t] == 0:
                heapq.heappush(ready, (STAGES.index(by_name[t].impl.stage), t))
    if len(ordered) != len(passes):
        stuck = sorted(n for n, d in indegree.items() if d > 0)
        raise PlanError(f"passes {stuck} have after/before constraints that form a cycle; "
                        "fix the plugins' ordering declarations")
    return ordered


def validate_pass_config(registered: RegisteredPass, options: Mapping, where: str,
                         model: Model | None = None, plugins=None) -> None:
    """The pass's section against its `config_schema` (unknown options named with the
    closest known ones), then the pass's own `check_config(section, model, plugins)`."""
    schema = dict(getattr(registered.impl, "config_schema", None) or {"type": "object"})
    properties = dict(schema.get("properties", {}))
    properties.update(RESERVED_KEYS)
    schema["properties"] = properties
    label = f"{where}: passes.{registered.name}"
    if schema.get("additionalProperties") is False:
        for key in options:
            check_known(key, properties, label, "option")
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(options)))
    if error is not None:
        path = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        raise ConfigError(f"{label}{path}: {message}")
    check = getattr(registered.impl, "check_config", None)
    if check is not None and plugins is not None:
        own = {k: v for k, v in options.items() if k not in RESERVED_KEYS}
        guarded(registered, "check_config", check, own, model, plugins)


def guarded(registered: RegisteredPass, what: str, method, *args):
    """Call a pass's method; anything but an AmctError (SystemExit included) becomes one
    PluginError naming the pass and its plugin."""
    try:
        return method(*args)
    except (AmctError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: B036 - a plugin may not end or crash the tool
        raise PluginError(f"pass '{registered.name}' (plugin '{registered.plugin}') failed in "
                          f"{what}(): {describe(exc)}") from None


def make_plan(model: Model | None, profile, plugins, config: Mapping | None = None, *,
              data: Mapping[str, bool] | None = None, config_source: str = "config") -> Plan:
    """Plan the registered passes for `profile`. `data` says which data kinds were given."""
    data = dict(data or {})
    requested = (config or {}).get("passes") or {}
    unknown = sorted(set(requested) - set(plugins.passes.names()))
    if unknown:
        raise PlanError(f"{config_source}: passes.{unknown[0]}: no such pass; registered passes: "
                        f"{', '.join(plugins.passes.names())} (install or --plugin the plugin "
                        "that provides it)")
    steps = []
    for registered in order_passes(list(plugins.passes)):
        impl = registered.impl
        options = pass_section(config, registered.name)
        validate_pass_config(registered, options, config_source, model, plugins)
        steps.append(_decide(registered, impl, options, profile, data))
    plan = Plan(profile.name, profile.soc_version, steps)
    plugins.call("adjust_plan", plan=plan, profile=profile, config=config or {})
    if model is not None:
        _check_conflicts(plan, plugins, model, config)
    return plan


def _decide(registered, impl, options, profile, data) -> PlanStep:
    step = PlanStep(registered.name, registered.plugin, impl.stage, SKIP, "",
                    tuple(impl.requires))
    enabled = options.get("enabled", bool(getattr(impl, "enabled_by_default", False)))
    if not enabled:
        if "enabled" in options:
            step.reason = options.get("disabled_reason") or "disabled in the build config"
        else:
            step.reason = (f"off by default; enable it with passes: {{{registered.name}: "
                           "{enabled: true}} in --config")
        return step
    missing = [c for c in impl.requires if not profile.capability(c).supported]
    if missing:
        reason = profile.capability(missing[0]).reason
        if not options.get("force"):
            step.reason = reason
            return step
        step.warnings.append(f"forced although the target lacks it: {reason}")
    for kind in getattr(impl, "needs", ()):
        if not data.get(kind):
            if options.get("enabled") is True:
                raise PlanError(f"pass '{registered.name}' is enabled in the build config but "
                                f"needs {kind} data; give it with {DATA_KINDS[kind]} F.npz (or "
                                "disable the pass)")
            step.reason = f"needs {kind} data; give it with {DATA_KINDS[kind]} F.npz"
            return step
    step.status = RUN
    step.reason = "forced" if missing else (
        f"target supports {', '.join(impl.requires)}" if impl.requires else "no requirements")
    return step


def _check_conflicts(plan: Plan, plugins, model: Model, config) -> None:
    running = {s.name: plugins.passes.get(s.name) for s in plan.running()}
    pairs = sorted({tuple(sorted((name, other)))
                    for name, registered in running.items()
                    for other in getattr(registered.impl, "exclusive_with", ())
                    if other in running})
    layers: dict[str, set[str]] = {}
    for pair in pairs:
        for name in pair:
            if name not in layers:
                found = guarded(running[name], "layers", running[name].impl.layers, model,
                                pass_options(config, name))
                if isinstance(found, (str, bytes)) or not all(isinstance(n, str) for n in found):
                    raise PluginError(f"pass '{name}' (plugin '{running[name].plugin}'): "
                                      "layers() must return a list of node names")
                layers[name] = set(found)
        shared = sorted(layers[pair[0]] & layers[pair[1]])
        if shared:
            raise PlanError(f"passes '{pair[0]}' and '{pair[1]}' are both enabled for layer "
                            f"'{shared[0]}' ({len(shared)} layer(s) in all), which is not "
                            "allowed; disable one of them or exclude the layer in its config")
