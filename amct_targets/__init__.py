"""amct-targets: target-aware compression of TensorFlow models for Huawei Ascend NPUs.

The public Python API (a contract, see DESIGN.md):

    import amct_targets as at
    at.list_targets(); at.load_target("ascend310p")
    at.plan(model, "ascend310p", config=None)
    at.build(model, ["ascend310", "ascend910b"], calib=None, train=None, config=None,
             output_dir="amct_out", eval=None, evaluator=None)
    at.AccuracyEvaluator   # AMCT's AutoCalibrationEvaluatorBase, for at.build(evaluator=...)
    at.check("model.pb", "ascend310")
    at.load_simulation("model.pb")
"""
from __future__ import annotations

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from typing import Any, Iterable, Mapping  # noqa: E402

from amct_targets.errors import (  # noqa: E402
    AmctError, ConfigError, ModelError, PlanError, PluginError, ProfileError, RetrainError,
)
from amct_targets.accuracy.budget import AccuracyEvaluator  # noqa: E402
from amct_targets.hooks import hookimpl  # noqa: E402

__version__ = "0.1.0"
__all__ = ["list_targets", "load_target", "plan", "build", "check", "load_simulation",
           "hookimpl", "AmctError", "ConfigError", "ModelError", "PlanError", "PluginError",
           "ProfileError", "RetrainError", "AccuracyEvaluator", "__version__"]


def list_targets(*, plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()) -> list[str]:
    """Names of every device profile that can be a target."""
    from amct_targets.api import session

    return [p.name for p in session(plugins, targets_dirs).profiles.targets()]


def load_target(name: str, *, plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()):
    """The validated, merged DeviceProfile called `name`."""
    from amct_targets.api import session

    return session(plugins, targets_dirs).profiles.get(name)


def plan(model: Any, target: str, config: str | Mapping | None = None, *, calib: Any = None,
         train: Any = None, plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()):
    """The Plan for `model` on `target`: each pass RUN or SKIP with its reason."""
    from amct_targets.api import plan_targets

    return plan_targets(model, [target], config, calib=calib, train=train, plugins=plugins,
                        targets_dirs=targets_dirs)[0]


def build(model: Any, target_or_targets: str | Iterable[str], calib: Any = None,
          train: Any = None, config: str | Mapping | None = None,
          output_dir: str | _os.PathLike = "amct_out", *, input_shapes: Mapping | None = None,
          outputs: Iterable[str] | None = None, plugins: Iterable[str] = (),
          targets_dirs: Iterable[str] = (), progress: bool = False, loss: Any = None,
          optimizer: Any = None, strategy: Any = None, eval: Any = None,  # noqa: A002
          evaluator: Any = None) -> dict[str, dict]:
    """Compress `model` for each target; returns {target: report dict}.

    `eval` (an .npz path, {input: array, "y": labels} or one array) adds each report's
    `evaluation` (float vs the simulated deploy graph) and lets the build config's
    `accuracy:` budget be met; `evaluator` (an `AccuracyEvaluator`) judges the budget with
    the user's own metric instead.

    Retraining passes use `train` ({input: array, "y": labels}, an .npz path, or a
    tf.data.Dataset of (inputs, labels)), and optionally a `loss` callable, a Keras
    `optimizer` (copied for each retraining) and a `tf.distribute` `strategy`.
    """
    from amct_targets.api import build as run_build

    return run_build(model, target_or_targets, calib, train, config, output_dir,
                     input_shapes=input_shapes, outputs=outputs, plugins=plugins,
                     targets_dirs=targets_dirs, progress=progress, loss=loss,
                     optimizer=optimizer, strategy=strategy, eval=eval, evaluator=evaluator)


def load_simulation(pb: str | _os.PathLike, outputs: Iterable[str] | None = None, *,
                    plugins: Iterable[str] = ()):
    """A callable that runs `pb` in stock TensorFlow (custom ops expanded into stock ops)."""
    from amct_targets.api import load_simulation as load

    return load(pb, outputs, plugins=plugins)


def check(pb: str | _os.PathLike, target: str, *, input_shapes: Mapping | None = None,
          plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()) -> list:
    """ATC-readiness findings (severity, code, node, message) for a .pb on a target."""
    from amct_targets.api import check as run_check

    return run_check(pb, target, input_shapes=input_shapes, plugins=plugins,
                     targets_dirs=targets_dirs)
