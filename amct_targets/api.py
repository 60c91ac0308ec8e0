"""The Python API's implementation (the contract is `amct_targets/__init__.py`)."""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from amct_targets.quiet import import_tensorflow_quietly


def session(plugins: Iterable[str] = (), targets_dirs: Iterable[str] = (), quiet: bool = True):
    from amct_targets.session import Session

    return Session.create(plugins=plugins, targets_dirs=targets_dirs, quiet=quiet)


def plan_targets(model: Any, targets: str | Iterable[str], config=None, *, calib=None,
                 train=None, plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()):
    """Plans for one or more targets ('all' for every one); the model is loaded once."""
    from amct_targets.builder import prepare_inputs
    from amct_targets.errors import ConfigError
    from amct_targets.planner import make_plan

    import_tensorflow_quietly()
    current = session(plugins, targets_dirs)
    profiles = current.profiles.select([targets] if isinstance(targets, str) else list(targets))
    if not profiles:
        raise ConfigError("no target given; use --target NAME (repeatable) or --target all")
    loaded, cfg, where, data = prepare_inputs(current, model, calib=calib, train=train,
                                              config=config, input_shapes=None, outputs=None,
                                              planning=True)
    given = {kind: kind in data for kind in ("calibration", "training")}
    return [make_plan(loaded, profile, current.plugins, cfg, data=given, config_source=where)
            for profile in profiles]


def build(model, targets, calib=None, train=None, config=None, output_dir="amct_out", *,
          input_shapes=None, outputs=None, plugins=(), targets_dirs=(), progress=False,
          loss=None, optimizer=None, strategy=None, eval=None,  # noqa: A002 - the contract
          evaluator=None) -> dict[str, dict]:
    from amct_targets.builder import build as run_build

    import_tensorflow_quietly()
    targets = [targets] if isinstance(targets, str) else list(targets)
    current = session(plugins, targets_dirs, quiet=not progress)
    results = run_build(current, model, targets, calib=calib, train=train, config=config,
                        output_dir=output_dir, input_shapes=input_shapes,
                        outputs=list(outputs) if outputs else None, loss=loss,
                        optimizer=optimizer, strategy=strategy, evaluation=eval,
                        evaluator=evaluator)
    return {r.target: r.report for r in results}


def check(pb: str | os.PathLike, target: str, *, input_shapes: Mapping | None = None,
          plugins: Iterable[str] = (), targets_dirs: Iterable[str] = ()) -> list:
    from amct_targets.builder import check_graph
    from amct_targets.graph.load import apply_input_shapes, placeholder_specs, read_graph_def
    from amct_targets.graph.model import Model

    import_tensorflow_quietly()
    current = session(plugins, targets_dirs)
    profile = current.profiles.get(target)
    graph_def = read_graph_def(pb, importable=False)
    specs = placeholder_specs(graph_def)
    if input_shapes:
        specs = apply_input_shapes(Model(graph_def, specs, ()), input_shapes).inputs
    return check_graph(current, graph_def, profile, specs)


def load_simulation(pb: str | os.PathLike, outputs=None, *, plugins: Iterable[str] = ()):
    from amct_targets.simulate import load_simulation as load

    import_tensorflow_quietly()
    return load(pb, outputs, ops=session(plugins).plugins.ops)
