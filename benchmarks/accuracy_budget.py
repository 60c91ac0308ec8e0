"""Accuracy budget benchmark: outlier-channel digits CNNs, plain PTQ vs `accuracy: {metric:
top1, max_drop: 0.5}` (cures, then AMCT-style fallback), what cross-layer equalization alone
achieves, the fallback search alone (cures off), the budget over fast_softmax, and the cost of
`--eval` (a build with it over one without).

    PYTHONPATH=$PWD python benchmarks/accuracy_budget.py      # writes results/accuracy_budget.*

Models (benchmarks/outlier_models.py): `cnn_logits` (seed 0, the model the cures and the search
were developed on) and `cnn_softmax` (seed 1, another depth and width, Softmax output: held
out) and `cnn_dense` (seed 2, the outlier channel read by the Dense layer through Flatten,
where equalization does not apply: held out). Calibration: the first 128 training images;
evaluation: the 450 test images.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
CACHE = HERE / ".cache" / "outlier"
TARGET = "ascend310p"
CALIB = 128
REPEATS = 3
BUDGET = {"metric": "top1", "max_drop": 0.5}


def _build(at, path, calib, ev=None, config=None):
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        reports = at.build(str(path), TARGET, calib=calib, eval=ev, config=config,
                           output_dir=out)
        return reports[TARGET], time.perf_counter() - started


def _top1(report):
    return round(report["evaluation"]["compressed"]["top1"] * 100, 2)


def _float_layers(report):
    return [f["layer"] for f in report.get("auto_calibration", {}).get("fallback_layers", [])]


def _cure(report, name):
    for cure in report.get("auto_calibration", {}).get("cures", []):
        if cure["name"] == name and cure.get("metric_after") is not None:
            return round(cure["metric_after"] * 100, 2)
    return None


def measure_variant(at, name: str) -> dict:
    import outlier_models as om

    path, (x_train, _, x_test, y_test) = om.trained(name, CACHE)
    calib = {"image": x_train[:CALIB]}
    ev = {"image": x_test, "y": y_test}
    plain, _ = _build(at, path, calib, ev)
    budget, budget_s = _build(at, path, calib, ev, {"accuracy": BUDGET})
    search, search_s = _build(at, path, calib, ev, {"accuracy": {**BUDGET, "cures": []}})
    cle, _ = _build(at, path, calib, ev,
                    {"accuracy": {**BUDGET, "cures": ["cross_layer_equalization"]}})
    clean_path, _ = om.trained(name, CACHE, outlier=False)
    clean, _ = _build(at, clean_path, calib, ev)
    return {
        "model": name, "spec": om.VARIANTS[name],
        "float_top1": round(plain["evaluation"]["float"]["top1"] * 100, 2),
        "clean_ptq_top1": _top1(clean),
        "plain_ptq_top1": _top1(plain),
        "budget": {"top1": _top1(budget), "met": budget["auto_calibration"]["met"],
                   "float_layers": _float_layers(budget),
                   "cures_kept": [c["name"] for c in budget["auto_calibration"]["cures"]
                                  if c.get("kept")],
                   "seconds": round(budget_s, 2)},
        "cle_alone_top1": _cure(cle, "cross_layer_equalization"),
        "search_alone": {"top1": _top1(search), "met": search["auto_calibration"]["met"],
                         "float_layers": _float_layers(search),
                         "trials": len(search["auto_calibration"]["history"]),
                         "seconds": round(search_s, 2)},
    }


def measure_fast_softmax(at) -> dict:
    """The budget over fast_softmax alone: cosine of the Softmax output against float."""
    import outlier_models as om

    path, (x_train, _, x_test, y_test) = om.trained("cnn_softmax", CACHE, outlier=False)
    calib = {"image": x_train[:CALIB]}
    ev = {"image": x_test, "y": y_test}
    passes = {"quantize": {"enabled": False}, "fast_softmax": {"enabled": True}}
    plain, _ = _build(at, path, calib, ev, {"passes": passes})
    strict = {"metric": "cosine", "min": 0.9999999}
    governed, _ = _build(at, path, calib, ev, {"passes": passes, "accuracy": strict})
    output = next(iter(plain["evaluation"]["outputs"].values()))
    final = next(iter(governed["evaluation"]["outputs"].values()))
    return {"model": "cnn_softmax (no outlier)", "budget": strict,
            "fast_softmax_cosine": output["cosine"], "fast_softmax_top1": _top1(plain),
            "governed_cosine": final["cosine"], "governed_top1": _top1(governed),
            "softmax_kept": _float_layers(governed)}


def measure_eval_cost(at) -> dict:
    import outlier_models as om

    path, (x_train, _, x_test, y_test) = om.trained("cnn_logits", CACHE, outlier=False)
    calib = {"image": x_train[:CALIB]}
    ev = {"image": x_test, "y": y_test}
    _build(at, path, calib)   # warm-up: imports, first TF function traces
    without = min(_build(at, path, calib)[1] for _ in range(REPEATS))
    with_eval = min(_build(at, path, calib, ev)[1] for _ in range(REPEATS))
    return {"samples": len(x_test), "repeats": REPEATS, "build_seconds": round(without, 3),
            "build_with_eval_seconds": round(with_eval, 3),
            "ratio": round(with_eval / without, 3)}


def markdown(result: dict) -> str:
    lines = ["# Accuracy budget: outlier-channel digits CNNs", "",
             f"Target {TARGET}; calibration {CALIB} training images; evaluation 450 test "
             "images (top-1 %, simulated deploy .pb). Budget `{metric: top1, max_drop: 0.5}`.",
             "`cnn_logits` is the model the cures were developed on; `cnn_softmax` (another "
             "seed, depth and width, Softmax output) and `cnn_dense` (another seed, the "
             "outlier channel read by the Dense layer through Flatten: no conv -> ReLU -> conv "
             "pair, equalization does not apply) are held out.", "",
             "| model | float | PTQ without outlier | plain PTQ | CLE alone | budget: top-1 | "
             "budget: layers float | budget: cures kept | search alone (no cures): top-1 / "
             "layers float / trials |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in result["variants"]:
        b, s = v["budget"], v["search_alone"]
        lines.append(f"| {v['model']} | {v['float_top1']} | {v['clean_ptq_top1']} | "
                     f"{v['plain_ptq_top1']} | {v['cle_alone_top1']} | {b['top1']} | "
                     f"{len(b['float_layers'])} | {', '.join(b['cures_kept']) or '-'} | "
                     f"{s['top1']} / {len(s['float_layers'])} ({', '.join(s['float_layers'])})"
                     f" / {s['trials']} |")
    f = result["fast_softmax"]
    lines += ["", "## The budget over fast_softmax", "",
              f"{f['model']}, quantize off, fast_softmax on, budget `{json.dumps(f['budget'])}`:",
              "", "| | output cosine | top-1 |", "|---|---|---|",
              f"| FastSoftmax everywhere | {f['fast_softmax_cosine']:.9f} | "
              f"{f['fast_softmax_top1']} |",
              f"| governed (Softmax kept: {', '.join(f['softmax_kept']) or '-'}) | "
              f"{f['governed_cosine']:.9f} | {f['governed_top1']} |"]
    e = result["eval_cost"]
    lines += ["", "## Cost of --eval", "",
              f"Best of {e['repeats']} builds of cnn_logits (no outlier), {e['samples']} "
              "evaluation samples:", "", "| build | seconds |", "|---|---|",
              f"| without --eval | {e['build_seconds']} |",
              f"| with --eval | {e['build_with_eval_seconds']} |",
              f"| ratio | {e['ratio']} |", "",
              f"Machine: {result['machine']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    import amct_targets as at

    result = {"target": TARGET, "machine": f"{platform.machine()} {platform.system()}, "
              f"python {platform.python_version()}",
              "variants": [measure_variant(at, name) for name in ("cnn_logits", "cnn_softmax", "cnn_dense")],
              "fast_softmax": measure_fast_softmax(at),
              "eval_cost": measure_eval_cost(at)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accuracy_budget.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "accuracy_budget.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
