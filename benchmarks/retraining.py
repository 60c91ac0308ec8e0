"""Retraining passes on the digits models: QAT, channel pruning, 4:2, combined 4:2 + QAT.

    python benchmarks/retraining.py

For the plain CNN and the MobileNetV2-style network of benchmarks/digits_models.py (fixed
seeds): held-out accuracy of fp32, post-training quantization, QAT, pruning at ratio 0.3
(with its FLOPs cut), 4:2 sparsity (with the count of groups of 4 along Cin holding more
than 2 non-zeros, read from the emitted .pb) and combined 4:2 + QAT on ascend910b; and the
wall time of each retraining over plain Keras `fit` of the same model, data, epochs and
batch size. Results: benchmarks/results/retraining.json and retraining.md.
"""
from __future__ import annotations

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

RUNS = {
    "ptq": ("ascend310", {"quantize": {"batch_num": 4}}),
    "qat": ("ascend310", {"qat": {"enabled": True, "epochs": 2, "learning_rate": 2e-5}}),
    "prune_0.3": ("ascend310", {"prune_channels": {"enabled": True, "prune_ratio": 0.3,
                                                   "ascend_optimized": False, "epochs": 10,
                                                   "learning_rate": 1e-3}}),
    "4of2": ("ascend910b", {"sparsify_4of2": {"enabled": True, "epochs": 30,
                                              "learning_rate": 3e-3}}),
    "4of2+qat": ("ascend910b", {"sparsify_4of2": {"enabled": True, "epochs": 30,
                                                  "learning_rate": 3e-3},
                                "qat": {"enabled": True, "epochs": 2, "learning_rate": 2e-5}}),
}


def keras_fit_seconds(model, x, y, epochs: int) -> float:
    """Plain Keras fit of a copy of `model` on the same data (the reference wall time)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(optimizer=keras.optimizers.Adam(1e-4),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    started = time.perf_counter()
    copy.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return time.perf_counter() - started


def sparsity_violations(pb: Path, report) -> int:
    from tensorflow.python.framework import tensor_util

    from amct_targets.graph.load import read_graph_def
    from amct_targets.graph.layout import LAYOUTS
    from amct_targets.pruning.sparse_4of2 import groups_over_limit

    nodes = {n.name: n for n in read_graph_def(pb, importable=False).node}
    entry = next(p for p in report["passes"] if p["name"] == "sparsify_4of2")
    bad = 0
    for layer in (e["layer"] for e in entry["layers"] if e["status"] == "4:2"):
        node = nodes[layer]
        source = nodes.get(f"{layer}/weight_int8") or nodes[node.input[1].split(":")[0]]
        bad += groups_over_limit(tensor_util.MakeNdarray(source.attr["value"].tensor),
                                 LAYOUTS[node.op].axes(node)[0])
    return bad


def run_model(name: str) -> dict:
    import amct_targets as at
    from digits_models import accuracy, trained

    model, (x_train, y_train, x_test, y_test) = trained(name)
    fp32 = accuracy(model.predict(x_test, verbose=0, batch_size=128), y_test)
    row = {"fp32_accuracy": fp32}
    for run, (target, passes) in RUNS.items():
        out = Path(tempfile.mkdtemp(prefix="amct-retrain-"))
        started = time.perf_counter()
        report = at.build(model, target, calib=x_train[:CALIB],
                          train={"image": x_train, "y": y_train},
                          config={"passes": passes}, output_dir=out)[target]
        seconds = time.perf_counter() - started
        pb = out / target / report["artifacts"]["pb"]
        logits = at.load_simulation(pb)(x_test)
        result = {"accuracy": accuracy(logits, y_test), "build_seconds": round(seconds, 2),
                  "drop_points": round(100 * (fp32 - accuracy(logits, y_test)), 3)}
        ran = {p["name"]: p for p in report["passes"] if p["status"] == "ran"}
        train_seconds = sum(p.get("metrics", {}).get("train_seconds", 0) for p in ran.values())
        epochs = sum(cfg.get("epochs", 0) for cfg in passes.values())
        if epochs:
            reference = keras_fit_seconds(model, x_train, y_train, epochs)
            result.update(train_seconds=round(train_seconds, 2),
                          keras_fit_seconds=round(reference, 2),
                          train_over_keras_fit=round(train_seconds / reference, 3))
        if "prune_channels" in ran:
            metrics = ran["prune_channels"]["metrics"]
            result.update(flops_cut_percent=metrics["flops_cut_percent"],
                          params_cut_percent=metrics["params_cut_percent"],
                          pruned_layers=metrics["pruned_layers"])
        if "sparsify_4of2" in ran:
            result["groups_over_2_nonzeros_in_pb"] = sparsity_violations(pb, report)
            result["sparse_layers"] = ran["sparsify_4of2"]["metrics"]["sparse_layers"]
            result["atc_has_sparsity_flag"] = "--sparsity=1" in report["atc_argv"]
        row[run] = result
        print(name, run, json.dumps(result), flush=True)
    return row


def markdown(results: dict) -> str:
    lines = ["# Retraining passes on the digits models", "", results["environment"], "",
             "| model | run | accuracy | drop (pts) | FLOPs cut | 4:2 violations in .pb | "
             "retrain s | Keras fit s | ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["models"].items():
        lines.append(f"| {name} | fp32 | {row['fp32_accuracy']:.4f} | | | | | | |")
        for run in RUNS:
            r = row[run]
            lines.append(
                f"| {name} | {run} | {r['accuracy']:.4f} | {r['drop_points']:.2f} | "
                f"{str(r.get('flops_cut_percent', '')) + ('%' if 'flops_cut_percent' in r else '')}"
                f" | {r.get('groups_over_2_nonzeros_in_pb', '')} | {r.get('train_seconds', '')} | "
                f"{r.get('keras_fit_seconds', '')} | {r.get('train_over_keras_fit', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import tensorflow as tf

    results = {"environment": f"TensorFlow {tf.__version__}, Python {platform.python_version()}, "
                              f"{platform.machine()}, {os.cpu_count()} cores; test split 450 "
                              "digits, 1347 training samples",
               "models": {name: run_model(name) for name in ("digits_cnn", "digits_mobilenet")}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retraining.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "retraining.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
