"""Every extension point of amct-targets, one hook each (pluggy project `amct_targets`).

Built-in passes, profiles and checks are plugins that implement these same hooks.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("amct_targets")


@hookspec
def register_passes(registry):
    """Add compression passes with `registry.add(pass_object)` (see passes/base.py)."""


@hookspec
def register_targets(registry):
    """Add device profiles with `registry.add_dir(folder)` or `registry.add_file(path)`."""


@hookspec
def register_capabilities(registry):
    """Declare capability keys a profile may use with `registry.add(key, description)`."""


@hookspec
def adjust_plan(plan, profile, config):
    """Change a finished `plan` in place (reorder, mark steps RUN/SKIP with a reason)."""


@hookspec
def atc_options(profile, plan, model):
    """Return a list of extra `--flag=value` strings for the atc command, or None."""


@hookspec
def check_model(graph_def, profile, input_specs):
    """Return a list of `Finding`s about ATC readiness of `graph_def` for `profile`, or None."""


@hookspec
def build_finished(report, target_dir):
    """Observe a finished build for one target: `report` is the report.json dict."""
