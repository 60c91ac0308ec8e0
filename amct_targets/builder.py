"""Build: load once, plan every target before any work, run each plan, emit atomically.

Every target's folder is written inside one staging folder under the output folder and
renamed into place only when all targets succeeded, so an error leaves no partial output.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from amct_targets import output
from amct_targets.accuracy.control import run_governed
from amct_targets.accuracy.evaluate import evaluate_build
from amct_targets.accuracy.inputs import add_accuracy_inputs
from amct_targets.config import load_build_config
from amct_targets.data import as_input_arrays, load_training
from amct_targets.deploy import atc as atc_mod
from amct_targets.errors import AmctError, ConfigError, ModelError, PluginError, describe
from amct_targets.graph.load import load_model
from amct_targets.graph.model import Model
from amct_targets.passes.base import PassContext
from amct_targets.planner import Plan, guarded, make_plan, pass_options
from amct_targets.report.html import write_index, write_target_report
from amct_targets.retrain.train import TrainingData
from amct_targets.safe_io import require_file_or_folder
from amct_targets.shared import PassMemo

REPORT_NAME, SCRIPT_NAME, HTML_NAME, INDEX_NAME = ("report.json", "atc.sh", "report.html",
                                                   "index.html")


@dataclass
class TargetBuild:
    target: str
    folder: Path
    report: dict


def input_sha256(source: Any, model: Model) -> str:
    """Hash of the input as given: file bytes, SavedModel folder files, or the frozen graph."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()
    return model.sha256()


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    return stem


def run_plan(session, model: Model, profile, plan: Plan, config, data, folder: Path,
             memo: PassMemo | None = None):
    """Run the RUN steps of `plan`; returns (model, pass entries for the report). With a
    `memo` (one per build), a pass another target already ran on the same input is replayed
    (shared.py)."""
    entries = []
    for step in plan.steps:
        entry = {"name": step.name, "plugin": step.plugin, "status": "skipped",
                 "reason": step.reason, "layers": [], "seconds": 0.0}
        if step.warnings:
            entry["warnings"] = list(step.warnings)
        if step.status == "RUN":
            registered = session.plugins.passes.get(step.name)
            ctx = PassContext(profile=profile, config=pass_options(config, step.name),
                              calibration=data.get("calibration"), training=data.get("training"),
                              artifacts_dir=folder, build_config=config or {},
                              progress=lambda msg, n=step.name: session.progress(
                                  f"{profile.name}: {n}: {msg}"),
                              ops=session.plugins.ops, quantizers=session.plugins.quantizers)
            started = time.perf_counter()
            key = memo.key(registered, model, ctx, _shared_scope(registered, model, ctx)) \
                if memo is not None else None
            shared = memo.get(key) if memo is not None else None
            if shared is not None:
                session.progress(f"{profile.name}: {step.name}: same input as for "
                                 f"{shared.target}, result reused")
                model = memo.replay(shared, ctx.report, folder)
                entry["shared_from"] = shared.target
            else:
                session.progress(f"{profile.name}: running {step.name}")
                before = memo.listing(folder) if key is not None else {}
                model = _apply_pass(session, registered, model, ctx, profile, folder)
                if key is not None:
                    memo.put(key, profile.name, model, ctx.report, folder, before)
            entry.update(status="ran", layers=ctx.report.layers,
                         seconds=round(time.perf_counter() - started, 3))
            if ctx.report.metrics:
                entry["metrics"] = ctx.report.metrics
            if ctx.report.notes:
                entry["notes"] = ctx.report.notes
            if ctx.report.warnings:
                entry["warnings"] = entry.get("warnings", []) + ctx.report.warnings
            if ctx.report.artifacts:
                entry["artifacts"] = dict(ctx.report.artifacts)
        entries.append(entry)
    return model, entries


def _shared_scope(registered, model: Model, ctx: PassContext):
    """The pass's `shared_key(model, ctx)` (None when it has none: it runs per target)."""
    method = getattr(registered.impl, "shared_key", None)
    return None if method is None else guarded(registered, "shared_key", method, model, ctx)


def _apply_pass(session, registered, model: Model, ctx: PassContext, profile,
                folder: Path) -> Model:
    """`registered.impl.apply(model, ctx)`, wrapped: any failure (SystemExit included) is one
    PluginError naming the pass; a plugin's pass works on a private copy of the model and may
    not edit it in place (the next pass or target would see the edit)."""
    builtin = session.plugins.origins.get(registered.plugin) == "builtin"
    given = model if builtin else model.replace(graph_def=model.copy_graph_def())
    before = None if builtin else given.serialize()
    where = f"pass '{registered.name}' (plugin '{registered.plugin}')"
    try:
        result = registered.impl.apply(given, ctx)
    except (AmctError, KeyboardInterrupt):
        raise
    except OSError as exc:
        if output.is_write_failure(exc, folder):
            raise  # the output folder's fault, not the plugin's: build() says so
        raise PluginError(f"{where} failed on target {profile.name}: {describe(exc)}") from None
    except BaseException as exc:  # noqa: B036 - a plugin may not end or crash the tool
        raise PluginError(f"{where} failed on target {profile.name}: {describe(exc)}") from None
    if not isinstance(result, Model):
        raise PluginError(f"{where} returned {type(result).__name__}, not a Model")
    if before is not None and given.serialize() != before:
        raise PluginError(f"{where} changed the graph of its input model in place; a pass must "
                          "edit model.copy_graph_def() and return model.replace(graph_def=...)")
    return result


def check_graph(session, graph_def, profile, input_specs) -> list:
    """Every `check_model` implementation's findings, in one list."""
    from amct_targets.deploy.check import Finding

    findings = []
    for result in session.plugins.call("check_model", graph_def=graph_def, profile=profile,
                                       input_specs=input_specs, ops=session.plugins.ops):
        items = list(result)
        if not all(isinstance(f, Finding) for f in items):
            raise PluginError("a check_model implementation returned something other than a "
                              "list of amct_targets.deploy.check.Finding")
        findings += items
    return findings


def atc_flags(session, profile, plan, model) -> list[str]:
    """Every `atc_options` implementation's flags, validated: lists of --flag strings."""
    flags = []
    for result in session.plugins.call("atc_options", profile=profile, plan=plan, model=model):
        if isinstance(result, (str, bytes)) or not all(isinstance(f, str) for f in result):
            raise PluginError(f"an atc_options implementation returned {result!r:.80}; it must "
                              "return a list of '--flag=value' strings")
        flags += list(result)
    return flags


def _static_pb(model: Model):
    """The model as emitted: static batch for ATC, its notes, its .pb bytes and their sha256."""
    model, notes = atc_mod.static_batch(model)
    data = model.serialize()
    return model, notes, data, hashlib.sha256(data).hexdigest()


def emit_target(session, source_model: Model, profile, plan: Plan, config, data, staging: Path,
                final_dir: Path, sha: str, memo: PassMemo | None = None) -> TargetBuild:
    folder = staging / profile.name
    folder.mkdir()
    run = functools.partial(run_plan, memo=memo)
    model, entries, auto, evaluation = run_governed(run, session, source_model, profile, plan,
                                                    config, data, folder)
    model, notes, pb_bytes, pb_sha = (memo or PassMemo()).finish(model, _static_pb)
    stem = _safe_stem(source_model.name)
    pb_name = f"{stem}.pb"
    (folder / pb_name).write_bytes(pb_bytes)
    findings = check_graph(session, model.graph_def, profile, model.inputs)
    extra = atc_flags(session, profile, plan, model)
    final = final_dir / profile.name
    # Paths relative to the target folder: atc.sh changes into its own folder first, so the
    # output folder can be copied to the Ascend host and run from anywhere.
    argv = atc_mod.atc_argv(profile, model, pb_name, stem, extra)
    script = folder / SCRIPT_NAME
    script.write_text(atc_mod.atc_script(argv, profile), encoding="utf-8")
    script.chmod(0o755)
    report = {
        "target": profile.name,
        "display_name": profile.display_name,
        "soc_version": profile.soc_version,
        "input": source_model.source,
        "input_sha256": sha,
        "pb_sha256": pb_sha,
        "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape or [])}
                   for s in model.inputs],
        "outputs": list(model.outputs),
        "passes": entries,
        "artifacts": {"pb": pb_name, "atc_script": SCRIPT_NAME, "report": REPORT_NAME,
                      **{k: v for e in entries for k, v in e.get("artifacts", {}).items()}},
        "atc_command": atc_mod.shell_command(argv),
        "atc_argv": argv,
        "checks": [f.to_json() for f in findings],
        "notes": list(source_model.notes) + notes,
        "metrics": {"nodes_before": len(source_model.graph_def.node),
                    "nodes_after": len(model.graph_def.node),
                    "check_errors": sum(f.severity == "error" for f in findings),
                    "check_warnings": sum(f.severity == "warning" for f in findings)},
    }
    if "evaluation" in data:
        started = time.perf_counter()
        if evaluation is None:
            session.progress(f"{profile.name}: evaluating on {data['evaluation'].samples} "
                             "samples")
            evaluation = evaluate_build(source_model, model, data["evaluation"],
                                        session.plugins.ops)
        report["evaluation"] = {**evaluation,
                                "seconds": round(time.perf_counter() - started, 3)}
    if auto is not None:
        report["auto_calibration"] = auto
        report["artifacts"].update(auto.get("artifacts", {}))
    session.plugins.call("build_finished", report=report, target_dir=folder)
    report["artifacts"]["report_html"] = HTML_NAME
    (folder / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_target_report(report, folder)   # after the dump: the page shows what report.json holds
    return TargetBuild(profile.name, final, report)


def prepare_inputs(session, model_source, *, calib, train, config, input_shapes, outputs,
                   loss=None, optimizer=None, strategy=None, evaluation=None, evaluator=None,
                   planning=False):
    config, where = load_build_config(config)
    if isinstance(model_source, (str, os.PathLike)):
        require_file_or_folder(model_source, "model: a frozen .pb, SavedModel folder or "
                               ".keras/.h5 file", ModelError)
    model = load_model(model_source, outputs=outputs, input_shapes=input_shapes,
                       plugins=session.plugins)
    data = {}
    if calib is not None:
        data["calibration"] = as_input_arrays(calib, model, "calibration data",
                                              str(calib) if isinstance(calib, (str, os.PathLike))
                                              else "calibration data")
    if train is not None:
        data["training"] = TrainingData(load_training(train, model, str(train) if isinstance(
            train, (str, os.PathLike)) else "training data"), loss, optimizer, strategy)
    add_accuracy_inputs(session, model, config, where, data, evaluation, evaluator, calib,
                        planning=planning)
    held_out = data.get("evaluation")
    if "training" in data and held_out is not None and held_out.labels is not None:
        # Labelled --eval data is the retraining passes' validation set (no split of --train).
        data["training"].validation = {**held_out.inputs, "y": held_out.labels}
    return model, config, where, data


def build(session, model_source, targets: Iterable[str], *, calib=None, train=None,
          config: str | Mapping | None = None, output_dir="amct_out",
          input_shapes: Mapping | None = None, outputs=None, loss=None, optimizer=None,
          strategy=None, evaluation=None, evaluator=None) -> list[TargetBuild]:
    profiles = session.profiles.select(list(targets))
    if not profiles:
        raise ConfigError("no target given; use --target NAME (repeatable) or --target all")
    out = Path(output_dir)
    output.refuse_overlap({"model": model_source, "calibration data": calib,
                           "training data": train, "build config": config,
                           "evaluation data": evaluation}, out, [p.name for p in profiles])
    model, config, where, data = prepare_inputs(session, model_source, calib=calib, train=train,
                                                config=config, input_shapes=input_shapes,
                                                outputs=outputs, loss=loss,
                                                optimizer=optimizer, strategy=strategy,
                                                evaluation=evaluation, evaluator=evaluator)
    given = {kind: kind in data for kind in ("calibration", "training")}
    plans = {p.name: make_plan(model, p, session.plugins, config, data=given, config_source=where)
             for p in profiles}
    sha = input_sha256(model_source, model)
    # About what the build writes: one .pb per target (at most the input's size) and reports.
    needed = (len(model.serialize()) + (1 << 16)) * len(profiles)
    with output.cleanup_on_sigterm():
        created = output.make_output_dir(out)
        output.remove_stale_staging(out, session.progress)
        try:
            staging = output.create_staging(out)
        except OSError as exc:
            output.remove_created(created)
            if output.is_write_failure(exc, out):
                raise output.write_failure(exc, out, needed) from None
            raise output.OutputError(f"{out}: cannot write to the output folder "
                                     f"({exc.strerror}); choose another with --output") from None
        try:
            results = []
            memo = PassMemo(config) if len(profiles) > 1 else None
            for index, profile in enumerate(profiles, 1):
                session.progress(f"[{index}/{len(profiles)}] building for {profile.name}")
                results.append(emit_target(session, model, profile, plans[profile.name],
                                           config, data, staging, out.resolve(), sha, memo))
            write_index([r.report for r in results], staging)
            output.replace_targets(staging, out, [r.target for r in results] + [INDEX_NAME])
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            output.remove_created(created)
            if output.is_write_failure(exc, out):
                raise output.write_failure(exc, out, needed) from None
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            output.remove_created(created)
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return results
