"""The plugin manager: built-in plugins, entry-point discovery, `--plugin`, validation.

Built-in features are plugins registered through the same hooks as third-party ones
(datasette's DEFAULT_PLUGINS). Installed plugins come from the entry-point group
`amct_targets`; AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD turns that off for hermetic builds, and
AMCT_TARGETS_TRACE_PLUGINS prints every hook call to stderr.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pluggy

from amct_targets.errors import PluginError
from amct_targets.hooks import specs
from amct_targets.passes.base import PassRegistry

PROJECT = "amct_targets"
ENTRY_POINT_GROUP = "amct_targets"
DISABLE_AUTOLOAD_ENV = "AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "AMCT_TARGETS_TRACE_PLUGINS"

DEFAULT_PLUGINS = (
    "amct_targets.capabilities",
    "amct_targets.profiles",
    "amct_targets.deploy.check",
    "amct_targets.deploy.atc",
    "amct_targets.passes.fold_bn",
    "amct_targets.passes.quantize",
    "amct_targets.passes.fast_softmax",
    "amct_targets.passes.qat",
    "amct_targets.passes.sparsify",
    "amct_targets.passes.prune",
    "amct_targets.passes.decompose",
)


class CapabilityRegistry:
    """Handed to `register_capabilities`: the closed set of capability keys, with meanings."""

    def __init__(self) -> None:
        self.descriptions: dict[str, str] = {}
        self.owners: dict[str, str] = {}
        self.current_plugin = "<unknown>"

    def add(self, key: str, description: str) -> None:
        if key in self.descriptions and self.owners[key] != self.current_plugin:
            raise PluginError(f"capability '{key}' is declared twice: by plugin "
                              f"'{self.owners[key]}' and by plugin '{self.current_plugin}'")
        self.descriptions[key] = description
        self.owners[key] = self.current_plugin

    def __contains__(self, key: str) -> bool:
        return key in self.descriptions


class TargetRegistry:
    """Handed to `register_targets`: folders and files of device profiles."""

    def __init__(self) -> None:
        self.sources: list[tuple[Path, str]] = []  # (path, plugin name)
        self.current_plugin = "<unknown>"

    def add_dir(self, folder) -> None:
        self.sources.append((Path(folder), self.current_plugin))

    def add_file(self, path) -> None:
        self.sources.append((Path(path), self.current_plugin))


@dataclass
class Plugins:
    """The loaded plugin set and what its registration hooks produced."""

    pm: pluggy.PluginManager
    passes: PassRegistry
    capabilities: CapabilityRegistry
    targets: TargetRegistry
    origins: dict[str, str] = field(default_factory=dict)  # plugin name -> "builtin"/dist name

    def call_each(self, hook_name: str, **kwargs) -> list[tuple[str, object]]:
        """Call every implementation of a hook; (plugin name, result) for non-None results."""
        return call_impls(self.pm, hook_name, kwargs)


def call_impls(pm: pluggy.PluginManager, hook_name: str, kwargs: dict, on_impl=None) -> list:
    """Call each implementation of `hook_name` in registration order, naming the plugin
    that raises. AMCT_TARGETS_TRACE_PLUGINS prints each call to stderr."""
    trace = bool(os.environ.get(TRACE_ENV))
    results = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order
        if on_impl is not None:
            on_impl(impl.plugin_name)
        if trace:
            print(f"[amct-targets trace] {hook_name} -> {impl.plugin_name}", file=sys.stderr)
        try:
            result = impl.function(**{name: kwargs[name] for name in impl.argnames})
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin '{impl.plugin_name}' failed in hook {hook_name}: "
                              f"{type(exc).__name__}: {exc}") from exc
        if result is not None:
            results.append((impl.plugin_name, result))
    return results


def _register(pm: pluggy.PluginManager, plugin, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{name}' is invalid: {exc}") from None
    except ValueError as exc:  # pluggy: already registered under another name
        raise PluginError(f"plugin '{name}' cannot be registered: {exc}") from None


def _import_plugin(module_name: str, how: str):
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(f"plugin '{module_name}' ({how}) cannot be imported: "
                          f"{type(exc).__name__}: {exc}") from exc


def load_plugins(extra: Iterable[str] = (), autoload: bool | None = None) -> Plugins:
    """Build the plugin manager: built-ins, installed entry points, then `extra` modules."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(specs)
    origins: dict[str, str] = {}
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        origins[module_name] = "builtin"
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                         key=lambda e: e.name):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"installed plugin '{ep.name}' (entry point {ep.value}) "
                                  f"cannot be loaded: {type(exc).__name__}: {exc}; uninstall "
                                  f"it or set {DISABLE_AUTOLOAD_ENV}=1") from exc
            _register(pm, plugin, ep.name)
            dist = getattr(ep, "dist", None)
            origins[ep.name] = f"{dist.name} {dist.version}" if dist else "entry point"
    for module_name in extra:
        if pm.has_plugin(module_name):
            continue
        _register(pm, _import_plugin(module_name, "--plugin"), module_name)
        origins[module_name] = "--plugin"
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin '{name}' is invalid: {exc}") from None
    plugins = Plugins(pm, PassRegistry(), CapabilityRegistry(), TargetRegistry(), origins)
    for hook_name, registry in (("register_capabilities", plugins.capabilities),
                                ("register_targets", plugins.targets),
                                ("register_passes", plugins.passes)):
        call_impls(pm, hook_name, {"registry": registry},
                   on_impl=lambda name, reg=registry: setattr(reg, "current_plugin", name))
    return plugins
