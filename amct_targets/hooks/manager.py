"""The plugin manager: built-in plugins, entry-point discovery, `--plugin`, validation, calls.

Built-in features are plugins registered through the same hooks as third-party ones
(datasette's DEFAULT_PLUGINS). Installed plugins come from the entry-point group
`amct_targets`; AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD turns that off for hermetic builds, and
AMCT_TARGETS_TRACE_PLUGINS prints every hook call to stderr (pluggy's own tracing). Hooks are
called through pluggy (`pm.hook.<name>(...)`); when an implementation raises, the plugin is
found from the traceback and named in one short message.

Importing this module (and loading the plugins) imports no TensorFlow.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pluggy

from amct_targets.errors import AmctError, PluginError, describe
from amct_targets.graph.ops import OpRegistry
from amct_targets.hooks import Registry, specs
from amct_targets.passes.base import PassRegistry
from amct_targets.quant.algorithms import QuantizerRegistry

PROJECT = "amct_targets"
ENTRY_POINT_GROUP = "amct_targets"
DISABLE_AUTOLOAD_ENV = "AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "AMCT_TARGETS_TRACE_PLUGINS"
TRACE_PREFIX = "[amct-targets trace]"

DEFAULT_PLUGINS = (
    "amct_targets.capabilities",
    "amct_targets.profiles",
    "amct_targets.graph.layout",
    "amct_targets.graph.loaders",
    "amct_targets.deploy.ascend_ops",
    "amct_targets.approx.ops",
    "amct_targets.calibration.ifmr",
    "amct_targets.calibration.hfmg",
    "amct_targets.calibration.arq",
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
REGISTRATION_HOOKS = ("register_capabilities", "register_targets", "register_ops",
                      "register_quantizers", "register_passes")


class CapabilityRegistry(Registry):
    """Handed to `register_capabilities`: the closed set of capability keys, with meanings."""

    def __init__(self) -> None:
        self.descriptions: dict[str, str] = {}
        self.owners: dict[str, str] = {}

    def add(self, key: str, description: str) -> None:
        plugin = self.current_plugin
        if not isinstance(key, str) or not key:
            raise PluginError(f"plugin '{plugin}' declared a capability key that is not a "
                              "non-empty string")
        if key in self.descriptions and self.owners[key] != plugin:
            raise PluginError(f"capability '{key}' is declared twice: by plugin "
                              f"'{self.owners[key]}' and by plugin '{plugin}'")
        self.descriptions[key] = str(description)
        self.owners[key] = plugin

    def __contains__(self, key: str) -> bool:
        return key in self.descriptions


class TargetRegistry(Registry):
    """Handed to `register_targets`: folders and files of device profiles."""

    def __init__(self) -> None:
        self.sources: list[tuple[Path, str]] = []  # (path, plugin name)

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
    ops: OpRegistry
    quantizers: QuantizerRegistry
    origins: dict[str, str] = field(default_factory=dict)  # plugin name -> "builtin"/dist name

    def call(self, hook_name: str, **kwargs):
        """Call a hook through pluggy (see `call_hook`)."""
        return call_hook(self.pm, hook_name, **kwargs)


def _impl_plugins(pm: pluggy.PluginManager, hook_name: str) -> dict:
    """{id of an implementation's code object: plugin name} for one hook (by identity:
    code objects of identical source in two plugins compare equal)."""
    return {id(impl.function.__code__): impl.plugin_name
            for impl in getattr(pm.hook, hook_name).get_hookimpls()
            if hasattr(impl.function, "__code__")}


def plugin_in_stack(pm: pluggy.PluginManager, hook_name: str) -> str:
    """The plugin whose `hook_name` implementation is running now (the innermost one)."""
    codes = _impl_plugins(pm, hook_name)
    frame = inspect.currentframe()
    while frame is not None:
        if id(frame.f_code) in codes:
            return codes[id(frame.f_code)]
        frame = frame.f_back
    return "<unknown>"


def plugin_in_traceback(pm: pluggy.PluginManager, hook_name: str, tb) -> str | None:
    """The plugin whose `hook_name` implementation a traceback went through (innermost)."""
    codes = _impl_plugins(pm, hook_name)
    found = None
    while tb is not None:
        if id(tb.tb_frame.f_code) in codes:
            found = codes[id(tb.tb_frame.f_code)]
        tb = tb.tb_next
    return found


def call_hook(pm: pluggy.PluginManager, hook_name: str, **kwargs):
    """`pm.hook.<hook_name>(**kwargs)`; an implementation that raises (anything but an
    AmctError or Ctrl-C, SystemExit included) becomes a PluginError naming its plugin."""
    try:
        return getattr(pm.hook, hook_name)(**kwargs)
    except (AmctError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: B036 - a plugin's SystemExit must not end the tool
        plugin = plugin_in_traceback(pm, hook_name, exc.__traceback__) or "<unknown>"
        raise PluginError(f"plugin '{plugin}' failed in hook {hook_name}: "
                          f"{describe(exc)}") from None


def _register(pm: pluggy.PluginManager, plugin, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{name}' is invalid: {describe(exc)}") from None
    except ValueError as exc:  # pluggy: already registered under another name
        raise PluginError(f"plugin '{name}' cannot be registered: {describe(exc)}") from None


def _import_plugin(module_name: str, how: str):
    try:
        return importlib.import_module(module_name)
    except (AmctError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: B036 - SystemExit at import is a broken plugin too
        raise PluginError(f"plugin '{module_name}' ({how}) cannot be imported: "
                          f"{describe(exc)}") from None


def _trace(pm: pluggy.PluginManager) -> None:
    """AMCT_TARGETS_TRACE_PLUGINS: pluggy's tracing plus the implementations in call order."""
    def write(message: str) -> None:
        sys.stderr.write(f"{TRACE_PREFIX} {message}")

    pm.trace.root.setwriter(write)
    pm.enable_tracing()

    def before(hook_name, hook_impls, kwargs):
        for impl in reversed(hook_impls):  # pluggy calls the last-registered first
            print(f"{TRACE_PREFIX} {hook_name} -> {impl.plugin_name}", file=sys.stderr)

    pm.add_hookcall_monitoring(before, lambda outcome, hook_name, hook_impls, kwargs: None)


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
            except (AmctError, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: B036
                raise PluginError(f"installed plugin '{ep.name}' (entry point {ep.value}) "
                                  f"cannot be loaded: {describe(exc)}; uninstall it or set "
                                  f"{DISABLE_AUTOLOAD_ENV}=1") from None
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
        raise PluginError(f"plugin '{name}' is invalid: {describe(exc)}") from None
    if os.environ.get(TRACE_ENV):
        _trace(pm)
    plugins = Plugins(pm, PassRegistry(), CapabilityRegistry(), TargetRegistry(), OpRegistry(),
                      QuantizerRegistry(), origins)
    registries = {"register_capabilities": plugins.capabilities,
                  "register_targets": plugins.targets, "register_ops": plugins.ops,
                  "register_quantizers": plugins.quantizers, "register_passes": plugins.passes}
    for hook_name in REGISTRATION_HOOKS:
        registry = registries[hook_name]
        registry.attribute_to(functools.partial(plugin_in_stack, pm, hook_name))
        try:
            call_hook(pm, hook_name, registry=registry)
        finally:
            registry.attribute_to(None)
    return plugins


@functools.lru_cache(maxsize=1)
def default_plugins() -> Plugins:
    """The built-in plugins alone (no installed or --plugin ones), loaded once per process:
    what library functions use when no session's registries are handed to them."""
    return load_plugins((), autoload=False)


def default_ops() -> OpRegistry:
    return default_plugins().ops
