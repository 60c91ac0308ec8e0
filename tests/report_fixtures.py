"""Report fields that builds do not write yet (evaluation, histograms, training history,
model_stats, auto-calibration), added to a real report.json in the documented shapes so the
HTML report's sections for them are rendered and tested.
"""
from __future__ import annotations

import copy

import numpy as np

QUANT_PASSES = ("quantize", "qat")


def quant_pass(report: dict) -> dict:
    return next(p for p in report["passes"]
                if p["name"] in QUANT_PASSES and p["status"] == "ran")


def activation_histogram(seed: int, bins: int = 64) -> dict:
    """A long-tailed activation sample's histogram with a clip range inside its extremes."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([np.abs(rng.normal(0.0, 1.0, 20000)), rng.uniform(4.0, 9.0, 12)])
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
            "clip_min": 0.0, "clip_max": float(np.quantile(values, 0.9999))}


def with_new_fields(report: dict, *, float_layer: bool = True) -> dict:
    """A copy of `report` with every field the HTML report renders when present."""
    report = copy.deepcopy(report)
    layers = quant_pass(report)["layers"]
    quantized = [e for e in layers if e["status"] == "quantized"]
    fallback = []
    if float_layer:
        entry = quantized.pop()
        reason = "auto-calibration: kept in float (most sensitive, cosine 0.981)"
        for key in ("scale_d", "offset_d", "scale_w_min", "scale_w_max", "cosine", "sqnr_db",
                    "act_algo", "channel_wise", "histogram"):
            entry.pop(key, None)
        entry.update(status="float", reason=reason)
        fallback.append({"layer": entry["layer"], "sensitivity": 0.981, "reason": reason})
    for seed, entry in enumerate(sorted(quantized, key=lambda e: e["sqnr_db"])[:2]):
        entry["histogram"] = activation_histogram(seed)
    output = report.get("outputs", ["Identity:0"])[0]
    report["evaluation"] = {
        "samples": 450, "labels": True, "float": {"top1": 0.9911}, "compressed": {"top1": 0.9867},
        "outputs": {output: {"top1_agreement": 0.9933, "sqnr_db": 31.4, "cosine": 0.99964}}}
    for entry in report["passes"]:
        if entry["status"] == "ran" and any(k in entry.get("metrics", {})
                                            for k in ("train_loss", "fine_tune_loss")):
            entry["metrics"]["history"] = {
                "epoch": [1, 2, 3, 4], "loss": [0.41, 0.12, 0.07, 0.08],
                "val_metric": [0.951, 0.978, 0.987, 0.984], "val_metric_name": "top1",
                "best_epoch": 3}
    report["model_stats"] = {"params_before": 121994, "params_after": 65306,
                             "flops_before": 3715402, "flops_after": 1646330,
                             "pb_bytes_before": 492031, "pb_bytes_after": 131828}
    report["auto_calibration"] = {
        "budget": {"metric": "top1", "max_drop": 0.5}, "initial": 0.9800, "final": 0.9867,
        "met": True,
        "cures": [{"name": "cross_layer_equalization", "metric_after": 0.9822,
                   "layers": [quantized[0]["layer"], quantized[1]["layer"]]},
                  {"name": "bias_correction", "metric_after": 0.9844, "layers": []}],
        "history": [{"float_layers": [], "metric": 0.9844, "met": False},
                    {"float_layers": [f["layer"] for f in fallback], "metric": 0.9867,
                     "met": True}],
        "fallback_layers": fallback}
    return report
