"""amct-targets: target-aware compression of TensorFlow models for Huawei Ascend NPUs.

The public Python API (a contract, see DESIGN.md):

    import amct_targets as at
    at.list_targets(); at.load_target("ascend310p")
    at.plan(model, "ascend310p", config=None)
    at.build(model, ["ascend310", "ascend910b"], calib=None, train=None, config=None,
             output_dir="amct_out")
    at.check("model.pb", "ascend310")
    at.load_simulation("model.pb")
"""
from __future__ import annotations

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from typing import Any, Iterable, Mapping  # noqa: E402

from amct_targets.errors import (  # noqa: E402
    AmctError, ConfigError, ModelError, PlanError, PluginError, ProfileError,
)
from amct_targets.hooks import hookimpl  # noqa: E402

__version__ = "0.1.0"
__all__ = ["list_targets", "load_target", "plan", "build", "check", "load_simulation",
           "hookimpl", "AmctError", "ConfigError", "ModelError", "PlanError", "PluginError",
           "ProfileError", "__version__"]


def _session(plugins: Iterable[str] = (), targets_dirs: Iterable[str] = (), quiet=True):
    from amct_targets.session import Session

    return Session.create(plugins=plugins, targets_dirs=targets_dirs, quiet=quiet)


def list_targets(*, plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()) -> list[str]:
    """Names of every device profile that can be a target."""
    return [p.name for p in _session(plugins, targets_dirs).profiles.targets()]


def load_target(name: str, *, plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()):
    """The validated, merged DeviceProfile called `name`."""
    return _session(plugins, targets_dirs).profiles.get(name)


def plan(model: Any, target: str, config: str | Mapping | None = None, *, calib: Any = None,
         train: Any = None, plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()):
    """The Plan for `model` on `target`: each pass RUN or SKIP with its reason."""
    from amct_targets.builder import prepare_inputs
    from amct_targets.planner import make_plan

    session = _session(plugins, targets_dirs)
    profile = session.profiles.get(target)
    loaded, cfg, where, data = prepare_inputs(session, model, calib=calib, train=train,
                                              config=config, input_shapes=None, outputs=None)
    given = {kind: kind in data for kind in ("calibration", "training")}
    return make_plan(loaded, profile, session.plugins, cfg, data=given, config_source=where)


def build(model: Any, target_or_targets: str | Iterable[str], calib: Any = None,
          train: Any = None, config: str | Mapping | None = None,
          output_dir: str | _os.PathLike = "amct_out", *, input_shapes: Mapping | None = None,
          outputs: Iterable[str] | None = None, plugins: Iterable[str] = (),
          targets_dirs: Iterable[str] = (), progress: bool = False, loss: Any = None,
          optimizer: Any = None, strategy: Any = None) -> dict[str, dict]:
    """Compress `model` for each target; returns {target: report dict}.

    Retraining passes use `train` ({input: array, "y": labels}, an .npz path, or a
    tf.data.Dataset of (inputs, labels)), and optionally a `loss` callable, a Keras
    `optimizer` (copied for each retraining) and a `tf.distribute` `strategy`.
    """
    from amct_targets.builder import build as run_build

    targets = [target_or_targets] if isinstance(target_or_targets, str) else list(target_or_targets)
    session = _session(plugins, targets_dirs, quiet=not progress)
    results = run_build(session, model, targets, calib=calib, train=train, config=config,
                        output_dir=output_dir, input_shapes=input_shapes,
                        outputs=list(outputs) if outputs else None, loss=loss,
                        optimizer=optimizer, strategy=strategy)
    return {r.target: r.report for r in results}


def load_simulation(pb: str | _os.PathLike, outputs: Iterable[str] | None = None):
    """A callable that runs `pb` in stock TensorFlow (Ascend ops expanded into stock ops)."""
    from amct_targets.simulate import load_simulation as _load

    return _load(pb, outputs)


def check(pb: str | _os.PathLike, target: str, *, input_shapes: Mapping | None = None,
          plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()) -> list:
    """ATC-readiness findings (severity, code, node, message) for a .pb on a target."""
    from amct_targets.builder import check_graph
    from amct_targets.graph.load import placeholder_specs, read_graph_def
    from amct_targets.graph.model import Model
    from amct_targets.graph.load import apply_input_shapes

    session = _session(plugins, targets_dirs)
    profile = session.profiles.get(target)
    graph_def = read_graph_def(pb, importable=False)
    specs = placeholder_specs(graph_def)
    if input_shapes:
        specs = apply_input_shapes(Model(graph_def, specs, ()), input_shapes).inputs
    return check_graph(session, graph_def, profile, specs)
