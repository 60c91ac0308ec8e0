"""The build's accuracy control for one target: run the plan, and when the compressed model
misses the accuracy budget, cure it.

1. The steps before the first governed step (`quantize`, `fast_softmax`) run once; their
   result is the float model the governed steps start from.
2. The governed steps run; the result is judged (budget on `--eval`, or the user's evaluator).
3. Cures that keep every layer INT8, each kept only when it lowers the loss:
   cross-layer equalization (equalize.py), then bias correction (bias_correction.py).
4. AMCT's auto-calibration: rank the governed layers by sensitivity (sensitivity.py), binary
   search how many of the most sensitive stay float (search.py): a quantized layer gets
   `quant_enable: false`, a Softmax joins `skip_approximation_layers`.

Every attempt runs the governed steps into a scratch folder; the chosen attempt's files move
into the target folder, with AMCT's three auto-calibration files when the search ran.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from amct_targets.accuracy.bias_correction import correct_biases, restore_biases
from amct_targets.accuracy.equalize import equalize
from amct_targets.accuracy.scoring import Scorer, ScoringFailed
from amct_targets.accuracy.search import search_fallback
from amct_targets.accuracy.sensitivity import layer_sensitivity, ranking

GOVERNED = ("quantize", "fast_softmax")
RANKING_FILE = "accuracy_based_auto_calibration_ranking_information.json"
FINAL_CONFIG_FILE = "accuracy_based_auto_calibration_final_config.json"
RECORD_FILE = "accuracy_based_auto_calibration_record.json"
SAMPLES = 64          # calibration samples for sensitivity and bias correction
SCRATCH = ".autocal-"


@dataclass
class Attempt:
    model: Any
    entries: list
    folder: Path
    ok: bool
    loss: float
    value: Any
    evaluation: dict | None


def run_governed(run_plan: Callable, session, model, profile, plan, config, data,
                 folder: Path) -> tuple[Any, list, dict | None, dict | None]:
    """(compressed model, pass entries, `auto_calibration` section or None, the final
    model's `evaluation` when the budget computed it)."""
    scorer: Scorer | None = data.get("scorer")
    first = next((i for i, s in enumerate(plan.steps)
                  if s.name in GOVERNED and s.status == "RUN"), None)
    if scorer is None or first is None:
        result, entries = run_plan(session, model, profile, plan, config, data, folder)
        note = None if scorer is None else {
            **scorer.describe(), "met": None,
            "note": "no quantize or fast_softmax step runs for this target: nothing to "
                    "calibrate"}
        return result, entries, note, None
    head = replace(plan, steps=plan.steps[:first])
    tail = replace(plan, steps=plan.steps[first:])
    base, head_entries = run_plan(session, model, profile, head, config, data, folder)
    counter = iter(range(1 << 30))

    def attempt(start, cfg) -> Attempt:
        scratch = folder / f"{SCRATCH}{next(counter)}"
        scratch.mkdir()
        result, entries = run_plan(session, start, profile, tail, cfg, data, scratch)
        try:
            ok, loss, value, evaluation = scorer.score(result)
        except ScoringFailed as exc:
            failed.append((Attempt(result, entries, scratch, False, math.inf, None, None),
                           str(exc)))
            raise
        return Attempt(result, entries, scratch, ok, loss, value, evaluation)

    failed: list[tuple[Attempt, str]] = []

    try:
        try:
            current = attempt(base, config)
        except ScoringFailed:
            current, error = failed[0]
            section = {**scorer.describe(), "met": None,
                       "error": f"the accuracy metric failed, nothing was calibrated: {error}"}
            _adopt(current.folder, folder)
            return current.model, head_entries + current.entries, section, None
        first_attempt = current
        section = {**scorer.describe(), "initial": current.value, "initial_loss": current.loss,
                   "cures": [], "history": [], "fallback_layers": []}
        try:
            if not current.ok:
                session.progress(f"{profile.name}: {scorer.text()} missed "
                                 f"(loss {current.loss:.4g}); trying cures")
                current, base = _cures(session, profile, base, current, config, data, attempt,
                                       section, scorer)
            if not current.ok:
                current = _search(session, profile, base, current, first_attempt, config,
                                  data, attempt, section, folder)
        except ScoringFailed as exc:
            section["error"] = f"the accuracy metric failed while curing: {exc}"
        section.update(final=current.value, final_loss=current.loss, met=current.ok)
        _adopt(current.folder, folder)
    finally:
        for scratch in folder.glob(f"{SCRATCH}*"):
            shutil.rmtree(scratch, ignore_errors=True)
    section.pop("_bias_originals", None)
    _mark_fallbacks(current.entries, section, scorer)
    return current.model, head_entries + current.entries, section, current.evaluation


def _adopt(scratch: Path, folder: Path) -> None:
    """Move the chosen attempt's files (record, configs) into the target folder."""
    for name in os.listdir(scratch):
        os.replace(scratch / name, folder / name)


def _cures(session, profile, base, current: Attempt, config, data, attempt, section,
           scorer):
    """Cross-layer equalization, then bias correction (those the budget lists); each kept
    when it lowers the loss. Returns (best attempt, the float model it starts from)."""
    ops = session.plugins.ops
    for name in scorer.cures:
        if current.ok:
            break
        if name == "cross_layer_equalization":
            cured, changes = equalize(base, ops.layouts)
            layers = sorted({n for p in changes for n in p["layers"]})
            cure = {"name": name, "layers": layers, "pairs": changes}
            empty = "no layer -> ReLU [-> MaxPool] -> layer pair with Const weights"
        else:
            calibration = data.get("calibration") or {}
            sample = {k: v[:SAMPLES] for k, v in calibration.items()}
            cured, changes, originals = (correct_biases(base, current.model, sample, ops)
                                         if sample else (base, [], {}))
            cure = {"name": name, "layers": [e["layer"] for e in changes], "shifts": changes}
            empty = "no quantized layer with a Const bias"
        if changes:
            tried = attempt(cured, config)
            cure.update(metric_after=tried.value, loss_after=tried.loss, met=tried.ok,
                        kept=tried.loss < current.loss)
            if cure["kept"]:
                current, base = tried, cured
                if name == "bias_correction":
                    section["_bias_originals"] = originals
        else:
            cure.update(kept=False, note=empty)
        section["cures"].append(cure)
    return current, base


def _search(session, profile, base, current: Attempt, first: Attempt, config, data,
            attempt, section, folder: Path) -> Attempt:
    calibration = data.get("calibration") or {}
    sample = {k: v[:SAMPLES] for k, v in calibration.items()}
    sensitivity = layer_sensitivity(base, current.model, sample, session.plugins.ops)
    ranked = ranking(sensitivity)
    kinds = {name: g.kind for name, (g, _) in sensitivity.items()}
    tried: dict[tuple, Attempt] = {(): current}

    def trial(float_layers: list[str]) -> tuple[bool, float]:
        session.progress(f"{profile.name}: auto-calibration: {len(float_layers)} layer(s) "
                         "in float")
        start = restore_biases(base, section.get("_bias_originals", {}), float_layers)
        result = attempt(start, with_fallback(config, float_layers, kinds))
        tried[tuple(float_layers)] = result
        return result.ok, result.loss

    result = search_fallback(ranked, trial, initial=(current.ok, current.loss))
    chosen = tried[tuple(result.float_layers)]
    section["history"] = [{"float_layers": t.float_layers, "metric": tried[
        tuple(t.float_layers)].value, "loss": t.loss, "met": t.ok} for t in result.history]
    rank = {name: i for i, name in enumerate(ranked, 1)}
    section["ranking"] = [{"layer": n, "kind": kinds[n], "sensitivity": sensitivity[n][1]}
                          for n in ranked]
    section["fallback_layers"] = [
        {"layer": n, "kind": kinds[n], "sensitivity": sensitivity[n][1],
         "reason": f"rank {rank[n]} of {len(ranked)} by sensitivity (0.5 + 0.5 cosine "
                   f"{sensitivity[n][1]:.6f}); kept {_kept_as(kinds[n])} to meet "
                   f"{section['budget_text']}"} for n in result.float_layers]
    _write_artifacts(folder, ranked, sensitivity, result, first, chosen, kinds, section)
    return chosen


def _kept_as(kind: str) -> str:
    return "in float" if kind == "quantize" else "a Softmax"


def with_fallback(config, float_layers, kinds) -> dict:
    """The build config with `float_layers` kept float: quant_enable false for quantized
    layers, skip_approximation_layers for Softmax layers."""
    config = copy.deepcopy(dict(config or {}))
    passes = config.setdefault("passes", {})
    quant = [n for n in float_layers if kinds[n] == "quantize"]
    soft = [n for n in float_layers if kinds[n] == "fast_softmax"]
    if quant:
        section = dict(passes.get("quantize") or {})
        for name in quant:
            section[name] = {**(section.get(name) or {}), "quant_enable": False}
        passes["quantize"] = section
    if soft:
        section = dict(passes.get("fast_softmax") or {})
        skip = list(section.get("skip_approximation_layers") or [])
        section["skip_approximation_layers"] = skip + [n for n in soft if n not in skip]
        passes["fast_softmax"] = section
    return config


def _write_artifacts(folder: Path, ranked, sensitivity, result, first: Attempt,
                     chosen: Attempt, kinds, section) -> None:
    """AMCT's files: ranking [[layer, similarity]] ascending; the final quant config (the
    first attempt's config with quant_enable per layer); the search record (one JSON object
    per step, concatenated, as AMCT writes it)."""
    ranking_info = [[n, sensitivity[n][1]] for n in ranked]
    (folder / RANKING_FILE).write_text(json.dumps(ranking_info, indent=4) + "\n",
                                       encoding="utf-8")
    final = {}
    initial_config = first.folder / "quant_config.json"
    if initial_config.is_file():
        final = json.loads(initial_config.read_text(encoding="utf-8"))
    kept = set(result.float_layers)
    for name in ranked:
        if kinds[name] == "quantize":
            final.setdefault(name, {})["quant_enable"] = name not in kept
        else:
            final[name] = {"approximate_enable": name not in kept,
                           "approximate_algo": "FastSoftmax"}
    (folder / FINAL_CONFIG_FILE).write_text(json.dumps(final, indent=4) + "\n",
                                            encoding="utf-8")
    records = [json.dumps({"roll_back_config": result.roll_back_config(ranked, t.float_layers),
                           "metric_eval": [t.ok, t.loss]}, indent=4) for t in result.history]
    (folder / RECORD_FILE).write_text("".join(records) + "\n", encoding="utf-8")
    section["artifacts"] = {"ranking_information": RANKING_FILE,
                            "final_config": FINAL_CONFIG_FILE, "record": RECORD_FILE}


def _mark_fallbacks(entries: list, section: dict, scorer) -> None:
    """The pass entries say why a layer fell back, instead of 'quant_enable: false'."""
    reasons = {f["layer"]: "auto-calibration: " + f["reason"]
               for f in section.get("fallback_layers", [])}
    for entry in entries:
        for layer in entry.get("layers", []):
            if isinstance(layer, dict) and layer.get("layer") in reasons:
                layer["reason"] = reasons[layer["layer"]]
