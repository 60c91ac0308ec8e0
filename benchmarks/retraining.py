"""Retraining defaults on four digits model families: QAT, pruning 0.3 + QAT, 4:2, 4:2 + QAT.

    python benchmarks/retraining.py [--models a,b] [--runs qat,4of2] [--out NAME]
        [--set '{"distillation": 0}'] [--max-drop 0]   # overrides: for tuning on digits_cnn

Every run uses the passes with `enabled: true` only (prune_channels also `prune_ratio: 0.3`,
its default), so it measures the defaults of amct_targets/retrain/options.py and the passes,
chosen on `digits_cnn` and verified untouched on the other families of
benchmarks/digits_models.py (fixed seeds, cached under benchmarks/.cache/). Per family and
technique: held-out test accuracy (450 digits) of the float model and of the emitted .pb, the
drop in points, the epochs retraining ran (early stopping), the epoch kept, and the wall time
of the retraining over a plain Keras `fit` of the same model on the same training part of the
split, with the same validation data, batch size and number of epochs.
Results: benchmarks/results/retraining.json and retraining.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
CALIB = 128
FAMILIES = ("digits_cnn", "digits_cnn_narrow", "digits_cnn_softmax", "digits_mobilenet")
TUNED_ON = "digits_cnn"

RUNS = {
    "ptq": ("ascend310", {"quantize": {"enabled": True}}),
    "qat": ("ascend310", {"qat": {"enabled": True}}),
    "prune_0.3+qat": ("ascend310", {"prune_channels": {"enabled": True, "prune_ratio": 0.3},
                                    "qat": {"enabled": True}}),
    "4of2": ("ascend910b", {"sparsify_4of2": {"enabled": True}}),
    "4of2+qat": ("ascend910b", {"sparsify_4of2": {"enabled": True}, "qat": {"enabled": True}}),
}
RETRAINING = ("prune_channels", "sparsify_4of2", "qat")


def keras_fit_seconds(model, x, y, epochs: int, learning_rate: float, probabilities: bool
                      ) -> float:
    """Plain Keras fit of a copy of `model` on the training part of the same split, with the
    same validation data (the reference wall time)."""
    import keras

    from amct_targets.retrain.options import TRAIN_DEFAULTS as D
    from amct_targets.retrain.validation import split_training

    split = split_training({"image": x, "y": y}, None, D["validation_split"], D["seed"],
                           D["batch_size"])
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities),
                 metrics=["accuracy"])
    started = time.perf_counter()
    copy.fit(split.train["image"], split.train["y"], epochs=epochs, batch_size=D["batch_size"],
             validation_data=(split.validation["image"], split.validation["y"]), verbose=0)
    return time.perf_counter() - started


def run_model(name: str, runs, override: dict | None = None, budget: float | None = None
              ) -> dict:
    import amct_targets as at
    from digits_models import MODELS, accuracy, trained

    probabilities = MODELS[name][4]
    model, (x_train, y_train, x_test, y_test) = trained(name)
    fp32 = accuracy(model.predict(x_test, verbose=0, batch_size=128), y_test)
    row = {"fp32_accuracy": fp32, "outputs_probabilities": probabilities}
    for run in runs:
        target, passes = RUNS[run]
        override = override or {}
        per_pass = set(override) <= set(RETRAINING)   # {pass: {...}} or one flat section
        passes = {k: {**v, **(override.get(k, {}) if per_pass else override)}
                  if k in RETRAINING else v for k, v in passes.items()}
        config = {"passes": passes}
        if budget is not None:
            config["accuracy"] = {"metric": "top1", "max_drop": budget}
        out = Path(tempfile.mkdtemp(prefix="amct-retrain-"))
        started = time.perf_counter()
        try:
            report = at.build(model, target, calib=x_train[:CALIB],
                              train={"image": x_train, "y": y_train},
                              config=config, output_dir=out)[target]
        except at.AmctError as exc:
            row[run] = {"error": str(exc)}
            print(name, run, "ERROR", exc, flush=True)
            continue
        seconds = time.perf_counter() - started
        pb = out / target / report["artifacts"]["pb"]
        acc = accuracy(at.load_simulation(pb)(x_test), y_test)
        result = {"accuracy": acc, "drop_points": round(100 * (fp32 - acc), 3),
                  "build_seconds": round(seconds, 2)}
        ran = {p["name"]: p for p in report["passes"] if p["status"] == "ran"}
        trained_passes = [ran[p] for p in RETRAINING if p in ran]
        if trained_passes:
            epochs = sum(p["metrics"]["epochs_run"] for p in trained_passes)
            train_seconds = sum(p["metrics"]["train_seconds"] for p in trained_passes)
            reference = sum(keras_fit_seconds(
                model, x_train, y_train, p["metrics"]["epochs_run"], 1e-4, probabilities)
                for p in trained_passes)
            result.update(
                epochs_run={p["name"]: p["metrics"]["epochs_run"] for p in trained_passes},
                chosen_epoch={p["name"]: p["metrics"].get("chosen_epoch")
                              for p in trained_passes},
                from_logits={p["name"]: p["metrics"]["from_logits"] for p in trained_passes},
                val_top1={p["name"]: p["metrics"]["history"]["val_metric"][
                    p["metrics"]["chosen_epoch"]] for p in trained_passes},
                val_loss={p["name"]: p["metrics"]["history"]["val_loss"][
                    p["metrics"]["chosen_epoch"]] for p in trained_passes},
                distillation={p["name"]: p["metrics"].get("distillation", {}).get("weight")
                              for p in trained_passes},
                qat_start=ran.get("qat", {}).get("metrics", {}).get("qat_start"),
                epochs_total=epochs, train_seconds=round(train_seconds, 2),
                keras_fit_seconds=round(reference, 2),
                train_over_keras_fit=round(train_seconds / reference, 3),
                warnings=[w for p in trained_passes for w in p.get("warnings", [])])
        if "prune_channels" in ran:
            result["flops_cut_percent"] = ran["prune_channels"]["metrics"]["flops_cut_percent"]
        if "sparsify_4of2" in ran:
            result["sparse_layers"] = ran["sparsify_4of2"]["metrics"]["sparse_layers"]
        row[run] = result
        print(name, run, json.dumps(result), flush=True)
    return row


def markdown(results: dict) -> str:
    lines = ["# Retraining defaults on four digits model families", "", results["environment"],
             "", f"Defaults chosen on `{TUNED_ON}`, the other three untouched. Every pass "
             "`enabled: true` only. Drop: float minus compressed test top-1, in points. Epochs: "
             "run per retraining pass (early stopping; `epochs` is a maximum), the kept epoch in "
             "brackets. Ratio: retraining wall time over a plain Keras `fit` of the same model, "
             "training part, validation data and epochs. PTQ: `quantize` defaults on the "
             f"first {CALIB} training digits; `qat` starts from the same calibration (epoch 0 "
             "is the PTQ model).", ""] + ([
                 f"Overrides (tuning run, not the defaults): `{json.dumps(results['overrides'])}`",
                 ""] if results.get("overrides", {}).get("set") or results.get(
                     "overrides", {}).get("max_drop") is not None else []) + [
             "| family | run | test top-1 | drop (pts) | QAT - PTQ (pts) | epochs run [kept] | "
             "retrain s | Keras fit s | ratio | FLOPs cut |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["models"].items():
        lines.append(f"| {name} | float | {row['fp32_accuracy']:.4f} | | | | | | | |")
        for run in RUNS:
            r = row.get(run)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {name} | {run} | error: {r['error'][:120]} | | | | | | | |")
                continue
            vs_ptq = ""
            if run == "qat" and "accuracy" in row.get("ptq", {}):
                vs_ptq = f"{100 * (r['accuracy'] - row['ptq']['accuracy']):+.2f}"
            epochs = ", ".join(f"{k.replace('sparsify_', '').replace('_channels', '')} "
                               f"{v} [{r['chosen_epoch'][k]}]"
                               for k, v in r.get("epochs_run", {}).items())
            cut = f"{r['flops_cut_percent']}%" if "flops_cut_percent" in r else ""
            lines.append(
                f"| {name} | {run} | {r['accuracy']:.4f} | {r['drop_points']:.2f} | {vs_ptq} | "
                f"{epochs} | {r.get('train_seconds', '')} | {r.get('keras_fit_seconds', '')} | "
                f"{r.get('train_over_keras_fit', '')} | {cut} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import tensorflow as tf

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--out", default="retraining")
    parser.add_argument("--set", default="{}", help="JSON merged into every retraining pass's "
                        "section (for choosing defaults on the tuning family only)")
    parser.add_argument("--max-drop", type=float, default=None,
                        help="accuracy.max_drop of the build config (default: none)")
    args = parser.parse_args()
    runs = args.runs.split(",")
    results = {"environment": f"TensorFlow {tf.__version__}, Python "
                              f"{platform.python_version()}, {platform.machine()}, "
                              f"{os.cpu_count()} cores (shared); test split 450 digits, 1347 "
                              "training samples (80% trained on, 20% validation)",
               "tuned_on": TUNED_ON,
               "overrides": {"set": json.loads(args.set), "max_drop": args.max_drop},
               "models": {name: run_model(name, runs, json.loads(args.set), args.max_drop)
                          for name in args.models.split(",")}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
