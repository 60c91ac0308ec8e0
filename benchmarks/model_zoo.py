"""The model zoo: real architectures nobody here wrote, built for every target.

    python benchmarks/model_zoo.py [--models a,b,...] [--targets all] [--memory]

Per model (random weights, BatchNorm statistics set by a training-mode pass over crops of
scikit-learn's sample photos; keras-hub backbones built from configs, no presets):
- build ok for every target, wall time and peak RSS of the build process;
- compute ops (Conv2D, DepthwiseConv2dNative, MatMul, BatchMatMul*, AvgPool, ...) INT8 / total in
  each emitted .pb, and any compute op neither INT8 nor reported as float with a reason;
- BatchNorms folded / left (with the reasons), ATC-check errors and warnings;
- SQNR and cosine of the simulated INT8 .pb against float on held-out crops;
- TFLite full-integer PTQ (int8 builtins, float I/O) on the same calibration data: its SQNR;
- ours - TFLite in dB with a paired bootstrap 95% interval over the held-out samples (is the
  difference more than which crops were drawn?).
Each model runs under `flock /tmp/amct-heavy.lock` (one heavy job at a time on a shared
machine), each of its phases in its own process: `prepare` builds and saves the model and
data, `ours` runs amct-targets on the saved file, `tflite` runs the TFLite converter on it. `--memory` adds a one-target build
of VGG16 to compare with the all-target build and the TFLite converter.

Results: benchmarks/results/model_zoo.json and model_zoo.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
RESULTS = HERE / "results"
CALIB, HELD_OUT = 32, 256
BOOTSTRAP = 2000  # paired resamples of the held-out samples for the ours - TFLite interval
LOCK = "/tmp/amct-heavy.lock"

# name: (source, builder, input size, pixel scale the model expects)
ZOO = {
    "MobileNetV2": ("keras.applications", "MobileNetV2", 96, "symmetric"),
    "MobileNetV3Small": ("keras.applications", "MobileNetV3Small", 96, "raw"),
    "ResNet50V2": ("keras.applications", "ResNet50V2", 64, "symmetric"),
    "EfficientNetB0": ("keras.applications", "EfficientNetB0", 64, "raw"),
    "DenseNet121": ("keras.applications", "DenseNet121", 64, "unit"),
    "NASNetMobile": ("keras.applications", "NASNetMobile", 96, "symmetric"),
    "ConvNeXtTiny": ("keras.applications", "ConvNeXtTiny", 64, "raw"),
    "RegNetX002": ("tf_keras.applications", "RegNetX002", 64, "raw"),
    "VGG16": ("keras.applications", "VGG16", 96, "symmetric"),
    "Xception": ("keras.applications", "Xception", 96, "symmetric"),
    "keras_hub_ViT": ("keras_hub", "ViTBackbone", 32, "symmetric"),
    "keras_hub_BERT": ("keras_hub", "BertBackbone", 16, "tokens"),
    "tiny_vit": ("zoo_small", "tiny_vit", 32, "unit"),
    "grouped_conv_net": ("zoo_small", "grouped_conv_net", 32, "unit"),
    "avgpool_net": ("zoo_small", "avgpool_net", 32, "unit"),
}
BERT = dict(vocabulary_size=1000, num_layers=2, num_heads=2, hidden_dim=64,
            intermediate_dim=128, max_sequence_length=32, dropout=0.0)
VIT = dict(image_shape=(32, 32, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=64,
           mlp_dim=128)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_data(name: str, samples: int, seed: int):
    from zoo_small import photo_crops

    source, _, size, scale = ZOO[name]
    if scale == "tokens":
        rng = np.random.default_rng(seed)
        mask = np.ones((samples, size), np.int32)
        for row, length in enumerate(rng.integers(size // 2, size + 1, samples)):
            mask[row, length:] = 0
        return {"token_ids": rng.integers(1, BERT["vocabulary_size"], (samples, size))
                .astype(np.int32) * mask, "padding_mask": mask,
                "segment_ids": (np.arange(size)[None] >= size // 2).astype(np.int32)
                .repeat(samples, 0) * mask}
    return photo_crops(samples, size, seed=seed, scale=scale)


def build_model(name: str, seed: int = 0):
    from zoo_small import set_bn_statistics

    source, builder, size, _ = ZOO[name]
    if source == "zoo_small":
        import zoo_small

        return set_bn_statistics(getattr(zoo_small, builder)(image=size, seed=seed),
                                 make_data(name, 64, seed=7))
    if source == "keras_hub":
        import keras
        import keras_hub

        keras.utils.set_random_seed(seed)
        return (keras_hub.models.BertBackbone(**BERT) if builder == "BertBackbone"
                else keras_hub.models.ViTBackbone(**VIT))
    module = __import__(source.split(".")[0])
    module.utils.set_random_seed(seed)
    model = getattr(module.applications, builder)(weights=None, input_shape=(size, size, 3),
                                                  classes=10)
    return set_bn_statistics(model, make_data(name, 64, seed=7))


def phase_prepare(name: str, work: Path, seed: int = 0) -> dict:
    model = build_model(name, seed)
    calib, held_out = make_data(name, CALIB, 1), make_data(name, HELD_OUT, 2)
    as_dict = lambda d: d if isinstance(d, dict) else {"x": d}  # noqa: E731
    reference = model(held_out, training=False)
    import tensorflow as tf

    flat = [np.asarray(t) for t in tf.nest.flatten(reference)]
    np.savez(work / "calib.npz", **as_dict(calib))
    np.savez(work / "held_out.npz", **as_dict(held_out))
    np.savez(work / "reference.npz", *flat)
    if ZOO[name][0].startswith("tf_keras"):
        tf.saved_model.save(model, str(work / "model_saved"))
        source = work / "model_saved"
    else:
        model.save(work / "model.keras")
        source = work / "model.keras"
    return {"source": source.name, "params": int(model.count_params())}


def _load_npz(path: Path):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays["x"] if list(arrays) == ["x"] else arrays


def _input_shapes(name: str, calib) -> dict | None:
    if isinstance(calib, dict):
        return {k: (1,) + v.shape[1:] for k, v in calib.items()}
    return None


def phase_ours(name: str, work: Path, targets: str, source: str) -> dict:
    import amct_targets as at
    from amct_targets.graph.load import read_graph_def
    from zoo_small import compute_op_status, sqnr_cosine

    calib = _load_npz(work / "calib.npz")
    out = work / f"out_{targets}"
    start = time.perf_counter()
    reports = at.build(str(work / source), "all" if targets == "all" else targets,
                       calib=work / "calib.npz", output_dir=out,
                       input_shapes=_input_shapes(name, calib))
    result = {"seconds": round(time.perf_counter() - start, 1),
              "peak_rss_mb": round(peak_rss_mb()), "targets": {}}
    held_out = _load_npz(work / "held_out.npz")
    reference = _reference_parts(work)
    flat_reference = np.concatenate([r.ravel() for r in reference])
    noise = {}
    for target, report in reports.items():
        pb = out / target / report["artifacts"]["pb"]
        graph_def = read_graph_def(pb, importable=False)
        status = compute_op_status(graph_def, report)
        fold = next(p for p in report["passes"] if p["name"] == "fold_bn")
        left = [f"{x['layer']}: {x['reason']}" for x in fold.get("layers") or []
                if isinstance(x, dict) and x.get("status") not in ("folded", None)]
        folded = [x for x in fold.get("layers") or [] if isinstance(x, dict)
                  and x.get("status") == "folded"]
        simulate = at.load_simulation(pb, report["outputs"])  # the model's output order
        outputs = simulate(held_out)
        values = list(outputs.values()) if isinstance(outputs, dict) else [outputs]
        sqnr, cosine = sqnr_cosine(flat_reference,
                                   np.concatenate([np.ravel(v) for v in values]))
        noise[target] = per_sample_noise(reference, values)
        result["targets"][target] = {
            "compute_ops": sum(len(v) for v in status.values()),
            "int8": len(status["int8"]),
            "float_reported": [f"{n} ({op}): {r}" for n, op, r in status["reported"]],
            "unreported": [f"{n} ({op})" for n, op in status["unreported"]],
            "bn_folded": len(folded), "bn_left": left,
            "atc_errors": [c for c in report["checks"] if c.get("severity") == "error"],
            "atc_warnings": len([c for c in report["checks"]
                                 if c.get("severity") == "warning"]),
            "sqnr_db": round(sqnr, 2), "cosine": round(cosine, 6)}
    np.savez(work / "noise_ours.npz", **noise)
    return result


def _reference_parts(work: Path) -> list[np.ndarray]:
    """The float outputs, one array per model output (leading axis: held-out sample)."""
    with np.load(work / "reference.npz") as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def per_sample_noise(reference: list[np.ndarray], outputs) -> np.ndarray:
    """Squared error per held-out sample, summed over every output's elements."""
    return sum(((np.asarray(r, np.float64) - np.asarray(o, np.float64).reshape(r.shape)) ** 2)
               .reshape(len(r), -1).sum(axis=1) for r, o in zip(reference, outputs))


def paired_difference(noise_ours: np.ndarray, noise_tflite: np.ndarray) -> dict:
    """ours - TFLite SQNR (dB) and its paired bootstrap 95% interval: both tools' errors on
    the same resampled held-out samples. The signal cancels: the difference is
    10 log10(sum TFLite noise / sum our noise)."""
    def diff(a, b):
        with np.errstate(divide="ignore"):
            return 10.0 * (np.log10(b) - np.log10(a))

    draws = np.random.default_rng(0).integers(0, len(noise_ours),
                                              (BOOTSTRAP, len(noise_ours)))
    spread = diff(noise_ours[draws].sum(axis=1), noise_tflite[draws].sum(axis=1))
    low, high = np.percentile(spread, [2.5, 97.5])
    return {"ours_minus_tflite_db": round(float(diff(noise_ours.sum(), noise_tflite.sum())), 2),
            "ci95_db": [round(float(low), 2), round(float(high), 2)]}


def tflite_int8(work: Path, source: str) -> bytes:
    """TFLite full-integer PTQ of the saved model (int8 builtins, float I/O), calibrated on
    the same samples as ours, one at a time as `representative_dataset`."""
    import tensorflow as tf

    calib = _load_npz(work / "calib.npz")
    saved = work / source
    if source.endswith(".keras"):
        import keras

        saved = work / "tflite_saved"
        keras.models.load_model(work / source, compile=False).export(str(saved), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    count = len(next(iter(calib.values()))) if isinstance(calib, dict) else len(calib)

    def representative():
        for i in range(count):
            if isinstance(calib, dict):
                yield {k: v[i:i + 1] for k, v in calib.items()}
            else:
                yield [calib[i:i + 1]]

    converter.representative_dataset = representative
    return converter.convert()


def phase_tflite(name: str, work: Path, source: str) -> dict:
    import tensorflow as tf
    from zoo_small import sqnr_cosine

    held_out = _load_npz(work / "held_out.npz")
    start = time.perf_counter()
    flatbuffer = tflite_int8(work, source)
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    runner = interpreter.get_signature_runner()
    names = list(runner.get_input_details())
    outputs = []
    for i in range(len(next(iter(held_out.values())) if isinstance(held_out, dict)
                       else held_out)):
        feeds = ({k: v[i:i + 1] for k, v in held_out.items()} if isinstance(held_out, dict)
                 else {names[0]: held_out[i:i + 1]})
        result = runner(**feeds)
        outputs.append([result[k] for k in sorted(result)])
    per_output = [np.concatenate([o[j] for o in outputs]) for j in range(len(outputs[0]))]
    reference = _reference_parts(work)
    sqnr, cosine = sqnr_cosine(np.concatenate([r.ravel() for r in reference]),
                               np.concatenate([v.ravel() for v in per_output]))
    np.savez(work / "noise_tflite.npz", noise=per_sample_noise(reference, per_output))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(rss), "sqnr_db": round(sqnr, 2),
            "cosine": round(cosine, 6)}


def child(args) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.phase == "all":
        result = run_model(args.model, args.targets, args.memory, args.timeout, args.seed,
                           args.keep_work)
        print("RESULT " + json.dumps(result, default=str))
        return
    work = Path(args.work)
    if args.phase == "prepare":
        result = phase_prepare(args.model, work, args.seed)
    elif args.phase == "tflite":
        result = phase_tflite(args.model, work, args.source)
    else:
        result = phase_ours(args.model, work, args.targets, args.source)
    print("RESULT " + json.dumps(result, default=str))


def run_phase(model: str, phase: str, work: Path, timeout: int, **extra) -> dict:
    """One phase in its own process (its own peak RSS); the caller holds the heavy lock."""
    argv = ["timeout", str(timeout), sys.executable, __file__, "--child", "--model", model,
            "--phase", phase, "--work", str(work)]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {done.returncode}: {tail[:400]}"}


def run_model(name: str, targets: str, memory: bool, timeout: int, seed: int = 0,
              keep_work: bool = False) -> dict:
    """All phases of one model, inside one hold of the heavy lock; the work folder (model,
    data, builds: up to a GB) is removed afterwards unless `keep_work`."""
    work = Path(tempfile.mkdtemp(prefix=f"zoo_{name}_"))
    try:
        entry = _run_phases(name, work, targets, memory, timeout, seed)
    finally:
        if keep_work:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if keep_work:
        entry["work"] = str(work)
    return entry


def _run_phases(name, work: Path, targets, memory, timeout, seed) -> dict:
    entry = {"model": name, "input": ZOO[name][2], "seed": seed}
    prep = run_phase(name, "prepare", work, timeout, seed=seed)
    entry["prepare"] = prep
    if "error" in prep:
        return entry
    entry["ours"] = run_phase(name, "ours", work, timeout, targets=targets,
                              source=prep["source"])
    if memory:
        entry["ours_one_target"] = run_phase(name, "ours", work, timeout, targets="ascend310",
                                             source=prep["source"])
    entry["tflite"] = run_phase(name, "tflite", work, timeout, source=prep["source"])
    if "targets" in entry["ours"] and "error" not in entry["tflite"]:
        with np.load(work / "noise_ours.npz") as ours, np.load(work / "noise_tflite.npz") as tfl:
            entry["vs_tflite"] = {t: paired_difference(ours[t], tfl["noise"]) for t in ours.files}
    return entry


def run_locked(name: str, args) -> dict:
    argv = ["flock", LOCK, sys.executable, __file__, "--child", "--model", name, "--phase",
            "all", "--targets", args.targets, "--timeout", str(args.timeout),
            "--seed", str(args.seed)]
    if args.keep_work:
        argv.append("--keep-work")
    if args.memory and name == "VGG16":
        argv.append("--memory")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"model": name, "input": ZOO[name][2],
            "prepare": {"error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}}


def summary_row(entry: dict) -> dict:
    ours, tfl = entry.get("ours", {}), entry.get("tflite", {})
    if "targets" not in ours:
        return {"build": "FAILED " + str(ours.get("error") or entry["prepare"].get("error"))}
    per = list(ours["targets"].values())
    return {"build": f"ok {len(per)} targets", "seconds": ours["seconds"],
            "peak_rss_mb": ours["peak_rss_mb"],
            "int8": f"{min(t['int8'] for t in per)}/{per[0]['compute_ops']}",
            "float_reported": len(per[0]["float_reported"]),
            "unreported": max(len(t["unreported"]) for t in per),
            "bn": f"{per[0]['bn_folded']} folded / {len(per[0]['bn_left'])} left",
            "atc_errors": sum(len(t["atc_errors"]) for t in per),
            "sqnr_db": min(t["sqnr_db"] for t in per), "cosine": min(t["cosine"] for t in per),
            "tflite_sqnr_db": tfl.get("sqnr_db", tfl.get("error")),
            "tflite_peak_rss_mb": tfl.get("peak_rss_mb"),
            "vs_tflite": _worst_target_difference(entry)}


def _worst_target_difference(entry: dict) -> str | None:
    """'+d [lo, hi]' for the target with the lowest SQNR (the one the table shows)."""
    targets, compared = entry["ours"]["targets"], entry.get("vs_tflite") or {}
    worst = min(targets, key=lambda t: targets[t]["sqnr_db"])
    if worst not in compared:
        return None
    low, high = compared[worst]["ci95_db"]
    return f"{compared[worst]['ours_minus_tflite_db']:+.2f} [{low:+.2f}, {high:+.2f}]"


def _grouped(findings: list[str]) -> str:
    """'layer: reason' findings as 'N x reason' with the node names in the reason elided, most
    frequent first."""
    import re
    from collections import Counter

    counts = Counter(re.sub(r"'[^']*'", "'...'", f.split(": ", 1)[-1]) for f in findings)
    return "; ".join(f"{n} x {reason}" for reason, n in counts.most_common())


def write_results(entries: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_zoo.json").write_text(json.dumps(entries, indent=1, default=str) + "\n")
    lines = ["# Model zoo: every architecture built for every target", "",
             "Random weights, BN statistics from training-mode passes over photo crops; "
             f"{CALIB} calibration and {HELD_OUT} held-out samples; SQNR/cosine of the "
             "simulated INT8 model vs float (worst target); ours - TFLite with its paired "
             f"bootstrap 95% interval ({BOOTSTRAP} resamples of the held-out samples). "
             "Reproduce: `python benchmarks/model_zoo.py --memory`.", "",
             "| model | input | build | s | peak RSS MB | INT8/compute ops | float (reported) | "
             "unreported | BN | ATC errors | SQNR dB | cosine | TFLite SQNR dB | "
             "ours - TFLite dB [95% CI] | TFLite peak MB |", "|" + "---|" * 15]
    for entry in entries:
        row = summary_row(entry)
        cells = [entry["model"], entry["input"], row.get("build"), row.get("seconds"),
                 row.get("peak_rss_mb"), row.get("int8"), row.get("float_reported"),
                 row.get("unreported"), row.get("bn"), row.get("atc_errors"),
                 row.get("sqnr_db"), row.get("cosine"), row.get("tflite_sqnr_db"),
                 row.get("vs_tflite"), row.get("tflite_peak_rss_mb")]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    lines += ["", "## Float compute ops and BatchNorms left, with the report's reasons", ""]
    for entry in entries:
        targets = entry.get("ours", {}).get("targets", {})
        if not targets:
            continue
        first = next(iter(targets.values()))
        reasons, bn = _grouped(first["float_reported"]), _grouped(first["bn_left"])
        if reasons or bn:
            lines.append(f"- **{entry['model']}**: float: {reasons or 'none'}; BN left: "
                         f"{bn or 'none'}")
    memory = [e for e in entries if "ours_one_target" in e]
    if memory:
        lines += ["", "## Memory (peak RSS of the build process, MB)", "",
                  "| model | one target | all targets | all/one | TFLite converter | "
                  "one/TFLite |", "|---|---|---|---|---|---|"]
        for e in memory:
            one, every = e["ours_one_target"].get("peak_rss_mb"), e["ours"].get("peak_rss_mb")
            tfl = e["tflite"].get("peak_rss_mb")
            ratio = lambda a, b: f"{a / b:.2f}" if a and b else ""  # noqa: E731
            lines.append(f"| {e['model']} | {one} | {every} | {ratio(every, one)} | {tfl} | "
                         f"{ratio(one, tfl)} |")
    (RESULTS / "model_zoo.md").write_text("\n".join(lines) + "\n")


def run_seeds(args) -> None:
    """The models again with weight seed `args.seed`: ours and TFLite's SQNR per seed, merged
    with the seed-0 rows of model_zoo.json, in model_zoo_seeds.json / .md."""
    path = RESULTS / "model_zoo_seeds.json"
    rows = {(r["model"], r["seed"]): r for r in
            (json.loads(path.read_text()) if path.exists() else [])}

    def row(entry: dict, seed: int) -> dict:
        summary = summary_row(entry)
        return {"model": entry["model"], "seed": seed, "sqnr_db": summary.get("sqnr_db"),
                "tflite_sqnr_db": summary.get("tflite_sqnr_db"),
                "vs_tflite": summary.get("vs_tflite")}

    if (RESULTS / "model_zoo.json").exists():
        for entry in json.loads((RESULTS / "model_zoo.json").read_text()):
            rows[(entry["model"], 0)] = row(entry, 0)  # seed 0 is always the zoo table
    for name in args.models.split(","):
        rows[(name, args.seed)] = row(run_locked(name, args), args.seed)
        print(json.dumps(rows[(name, args.seed)]), flush=True)
    ordered = sorted(rows.values(), key=lambda r: (list(ZOO).index(r["model"]), r["seed"]))
    path.write_text(json.dumps(ordered, indent=1) + "\n")
    lines = ["# Model zoo over weight seeds: ours vs TFLite INT8 SQNR (dB, worst target)", "",
             f"{HELD_OUT} held-out samples; the interval is a paired bootstrap over them. Seed 0 "
             "is the zoo table (model_zoo.md). Reproduce: `python benchmarks/model_zoo.py "
             "--models NAME --seed N`.", "",
             "| model | seed | ours | TFLite | ours - TFLite [95% CI] |", "|---|---|---|---|---|"]
    for r in ordered:
        both = all(isinstance(r[k], (int, float)) for k in ("sqnr_db", "tflite_sqnr_db"))
        diff = r.get("vs_tflite") or (f"{r['sqnr_db'] - r['tflite_sqnr_db']:+.2f}" if both
                                      else "")
        lines.append(f"| {r['model']} | {r['seed']} | {r['sqnr_db']} | {r['tflite_sqnr_db']} | "
                     f"{diff} |")
    (RESULTS / "model_zoo_seeds.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--targets", default="all")
    parser.add_argument("--memory", action="store_true", help="one-target VGG16 build too")
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--keep-work", action="store_true",
                        help="keep each model's work folder (printed; recorded as 'work')")
    parser.add_argument("--seed", type=int, default=0,
                        help="weight seed of the models; the zoo table is seed 0, other seeds "
                        "go to model_zoo_seeds.json/md (is a result more than one draw?)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.seed:
        return run_seeds(args)
    entries = []
    previous = {}
    if (RESULTS / "model_zoo.json").exists():
        previous = {e["model"]: e for e in json.loads((RESULTS / "model_zoo.json").read_text())}
    for name in args.models.split(","):
        entries.append(run_locked(name, args))
        print(json.dumps({name: summary_row(entries[-1])}), flush=True)
        merged = dict(previous, **{e["model"]: e for e in entries})
        write_results([merged[n] for n in ZOO if n in merged])


if __name__ == "__main__":
    main()
