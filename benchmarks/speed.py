"""Speed: every ratio of issue 12 in one run, whole processes side by side.

    python benchmarks/speed.py [--label after] [--code DIR] [--suites all,ptq,cost,cli,retrain]

`--code DIR` runs the measured amct-targets processes with PYTHONPATH=DIR (e.g. an export of
main, for the "before" column); `--label` names the column the run fills in
benchmarks/results/speed.json (columns merge) and speed.md.

Models: Keras Applications ResNet50 (weights=None) with BatchNorm statistics set by a few
training-mode forward passes over crops of sklearn's sample photos, frozen to .pb once
(benchmarks/.cache). Every measurement is its own process; its wall time is measured from
here and its peak RSS read by GNU time (%M).

- all: `--target all` over a one-target build (ResNet50 160x160, 4 calibration batches of 16).
- ptq: the one-target build over a plain TF process that loads the .pb and runs the same 4
  batches, and over a process running TFLite's INT8 converter on the same .pb and samples.
- cost: ResNet50 224x224, 4 batches of 32: the quantize pass (report.json seconds) over the
  bare fp32 forward passes of the same batches (a plain TF process, and the same with the
  pool allocator the build uses); peak RSS of the build over fp32 inference.
The measured processes of the all, ptq and cost suites run in turn 3 times; every number is
the median of the 3 (the runs are kept in speed.json).
- cli: `targets`, `passes`, `--help`, `--version` over `python -c "import tensorflow"`.
- retrain: QAT / channel pruning / 4:2 pass seconds over a plain Keras fit of the same model,
  data, epochs and batch size (ResNet50 at 64x64, 10 classes, 256 samples, 2 epochs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from amct_targets.quiet import POOL_ALLOCATOR   # no TensorFlow import

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "speed"
RESULTS = HERE / "results"
TARGET = "ascend310"
RETRAIN = {"qat": ("ascend310", {"qat": {"enabled": True}}),
           "prune": ("ascend310", {"prune_channels": {"enabled": True, "prune_ratio": 0.3}}),
           "4of2": ("ascend910b", {"sparsify_4of2": {"enabled": True}})}
TRAIN_SAMPLES, TRAIN_EPOCHS, TRAIN_BATCH, TRAIN_SIZE = 256, 2, 32, 64


# --- data and models ---------------------------------------------------------------------------

def photo_crops(count: int, size: int, seed: int) -> np.ndarray:
    """`count` random size x size crops of sklearn's two sample photos, scaled to [-1, 1]."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        image = images[i % len(images)]
        side = int(rng.integers(size, min(image.shape[:2]) + 1))
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        crop = image[top:top + side, left:left + side]
        index = (np.arange(size) * side // size)
        crops.append(crop[index][:, index])
    return (np.stack(crops).astype(np.float32) / 127.5 - 1.0)


def resnet50(size: int, classes: int = 1000):
    """ResNet50, weights=None, BN moving statistics from 3 training-mode passes over crops."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3),
                                        classes=classes, classifier_activation=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.5
    for seed in range(3):
        model(photo_crops(16, size, 100 + seed), training=True)
    return model


def frozen_pb(model, path: Path) -> None:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import \
        convert_variables_to_constants_v2

    spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32, name="input")
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())


def prepare() -> dict:
    """Frozen ResNet50s and their data, made once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    files = {}
    for size, samples in ((160, 64), (224, 128)):
        pb, npz = CACHE / f"resnet50_{size}.pb", CACHE / f"calib_{size}.npz"
        if not pb.exists():
            frozen_pb(resnet50(size), pb)
        if not npz.exists():
            np.savez(npz, input=photo_crops(samples, size, seed=size))
        files[size] = (pb, npz)
    keras_file = CACHE / f"resnet50_{TRAIN_SIZE}_10.keras"
    pb, train = CACHE / f"resnet50_{TRAIN_SIZE}_10.pb", CACHE / f"train_{TRAIN_SIZE}.npz"
    if not keras_file.exists():
        model = resnet50(TRAIN_SIZE, classes=10)
        model.save(keras_file)
        frozen_pb(model, pb)
        x = photo_crops(TRAIN_SAMPLES, TRAIN_SIZE, seed=7)
        y = (np.arange(TRAIN_SAMPLES) % 10).astype(np.int64)
        np.savez(train, input=x, y=y)
    files["train"] = (keras_file, pb, train)
    return files


# --- measured processes --------------------------------------------------------------------------

def run(argv: list[str], code: str | None = None, cwd: str | None = None,
        env_extra: dict | None = None) -> dict:
    """Run one process; its wall seconds, peak RSS (MB, GNU time's %M: the measured process
    is forked from the small `time` process, so no parent's pages count) and last stdout
    line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    if code:
        env["PYTHONPATH"] = code
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name] + argv,
                              capture_output=True, text=True, env=env, cwd=cwd)
        seconds = time.perf_counter() - started
        peak_kb = int(Path(rss.name).read_text().split()[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(peak_kb / 1024, 1),
            "stdout": lines[-1] if lines else ""}


def child(argv: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child"] + argv


def amct(args: list[str], code: str | None) -> dict:
    return run([sys.executable, "-m", "amct_targets"] + args, code, cwd=code)


def build(pb, npz, targets, batch, code, config=None, data_flag="--calib") -> tuple[dict, dict]:
    out = Path(tempfile.mkdtemp(prefix="speed-"))
    cfg = out.parent / f"{out.name}.json"
    cfg.write_text(json.dumps(config or {"passes": {"quantize": {"batch_num": 4,
                                                                  "batch_size": batch}}}))
    argv = ["build", str(pb), data_flag, str(npz), "--config", str(cfg), "--output", str(out)]
    for target in targets:
        argv += ["--target", target]
    result = amct(argv, code)
    reports = {t.name: json.loads((t / "report.json").read_text())
               for t in out.iterdir() if (t / "report.json").exists()}
    subprocess.run(["rm", "-rf", str(out), str(cfg)], check=True)
    return result, reports


def pass_seconds(report: dict, name: str) -> float:
    return next(p["seconds"] for p in report["passes"] if p["name"] == name)


def child_plain_tf(pb: str, npz: str, batch: str, warm: str) -> None:
    """Load the .pb, run its batches (after one warm-up batch when `warm`); print seconds."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(Path(pb).read_bytes())
    data = np.load(npz)["input"]
    output = [n.name for n in graph_def.node if n.op == "Identity"][-1]
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    fn = wrapped.prune("input:0", f"{output}:0")
    size = int(batch)
    if warm == "1":
        fn(tf.constant(data[:size]))
    started = time.perf_counter()
    for i in range(4):
        fn(tf.constant(data[i * size:(i + 1) * size])).numpy()
    print(json.dumps({"forward_seconds": time.perf_counter() - started}))


def child_tflite(pb: str, npz: str) -> None:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(Path(pb).read_bytes())
    output = [n.name for n in graph_def.node if n.op == "Identity"][-1]
    data = np.load(npz)["input"]
    converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
        pb, ["input"], [output], input_shapes={"input": [1] + list(data.shape[1:])})
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([data[i:i + 1]] for i in range(len(data)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    print(json.dumps({"bytes": len(converter.convert())}))


def child_fit(keras_file: str, npz: str) -> None:
    import keras

    model = keras.models.load_model(keras_file, compile=False)
    data = np.load(npz)
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    started = time.perf_counter()
    model.fit(data["input"], data["y"], epochs=TRAIN_EPOCHS, batch_size=TRAIN_BATCH, verbose=0)
    print(json.dumps({"fit_seconds": time.perf_counter() - started}))


# --- suites ------------------------------------------------------------------------------------

REPEATS = 3   # measured processes run in turn this many times; ratios use the medians


def median_runs(measures: dict, repeats: int = REPEATS) -> dict[str, list]:
    """{name: [result of each repeat]}: the measures run in turn (a, b, a, b, ...), so slow
    phases of this shared machine hit them alike."""
    runs: dict[str, list] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            runs[name].append(measure())
    return runs


def median(values) -> float:
    return float(np.median([float(v) for v in values]))


def processes(results: list[dict]) -> dict:
    """Median seconds and peak RSS of repeated runs of one measured process, and the runs."""
    return {"seconds": median(r["seconds"] for r in results),
            "peak_rss_mb": median(r["peak_rss_mb"] for r in results), "runs": results}


def suite_all(files, code) -> dict:
    pb, npz = files[160]
    runs = median_runs({"one": lambda: build(pb, npz, [TARGET], 16, code),
                        "all": lambda: build(pb, npz, ["all"], 16, code)})
    one = processes([r[0] for r in runs["one"]])
    every = processes([r[0] for r in runs["all"]])
    return {"one_target": one, "all_targets": every, "targets": sorted(runs["all"][0][1]),
            "quantize_pass_seconds_one": median(pass_seconds(r[1][TARGET], "quantize")
                                                for r in runs["one"]),
            "all_over_one": every["seconds"] / one["seconds"],
            "all_over_one_peak_rss": every["peak_rss_mb"] / one["peak_rss_mb"]}


def suite_ptq(files, code) -> dict:
    pb, npz = files[160]
    runs = median_runs({"plain": lambda: run(child(["plain_tf", str(pb), str(npz), "16", "0"])),
                        "one": lambda: build(pb, npz, [TARGET], 16, code)[0],
                        "tflite": lambda: run(child(["tflite", str(pb), str(npz)]))})
    plain, one, tflite = (processes(runs[n]) for n in ("plain", "one", "tflite"))
    return {"plain_tf": plain, "one_target": one, "tflite": tflite,
            "build_over_plain_tf": one["seconds"] / plain["seconds"],
            "build_over_tflite": one["seconds"] / tflite["seconds"]}


def suite_cost(files, code) -> dict:
    """The quantize pass over the bare forward passes of a plain TF process (default CPU
    allocator), and over the same process with the pool allocator the build uses
    (TF_CPU_ALLOCATOR_USE_BFC, see amct_targets/quiet.py): the second is the floor of the
    same runtime, the first what a user's own TF script costs."""
    pb, npz = files[224]
    fp32_args = child(["plain_tf", str(pb), str(npz), "32", "1"])
    runs = median_runs({
        "fp32": lambda: run(fp32_args),
        "fp32_pool": lambda: run(fp32_args, env_extra={POOL_ALLOCATOR: "true"}),
        "build": lambda: build(pb, npz, [TARGET], 32, code)})
    forward = median(json.loads(r["stdout"])["forward_seconds"] for r in runs["fp32"])
    pool = median(json.loads(r["stdout"])["forward_seconds"] for r in runs["fp32_pool"])
    quantize = median(pass_seconds(r[1][TARGET], "quantize") for r in runs["build"])
    fp32_rss = median(r["peak_rss_mb"] for r in runs["fp32"])
    build_rss = median(r[0]["peak_rss_mb"] for r in runs["build"])
    return {"fp32": {"peak_rss_mb": fp32_rss, "runs": runs["fp32"]},
            "fp32_pool": {"runs": runs["fp32_pool"]},
            "fp32_forward_seconds": forward, "fp32_pool_forward_seconds": pool,
            "build": {"peak_rss_mb": build_rss, "runs": [r[0] for r in runs["build"]]},
            "quantize_pass_seconds": quantize, "quantize_runs": [
                pass_seconds(r[1][TARGET], "quantize") for r in runs["build"]],
            "quantize_over_forward": quantize / forward,
            "quantize_over_pool_forward": quantize / pool,
            "peak_rss_over_fp32": build_rss / fp32_rss}


def suite_cli(files, code) -> dict:
    bare = [run([sys.executable, "-c", "import tensorflow"]) for _ in range(3)]
    floor = min(r["seconds"] for r in bare)
    rows = {"import_tensorflow_seconds": floor}
    for name, args in (("targets", ["targets"]), ("passes", ["passes"]), ("help", ["--help"]),
                       ("version", ["--version"])):
        best = min(amct(args, code)["seconds"] for _ in range(3))
        rows[name] = {"seconds": best, "over_import_tensorflow": best / floor}
    return rows


def suite_retrain(files, code) -> dict:
    keras_file, pb, npz = files["train"]
    fit = run(child(["fit", str(keras_file), str(npz)]))
    reference = json.loads(fit["stdout"])["fit_seconds"]
    rows = {"keras_fit_seconds": reference, "epochs": TRAIN_EPOCHS, "samples": TRAIN_SAMPLES}
    for name, (target, passes) in RETRAIN.items():
        section = dict(next(iter(passes.values())), epochs=TRAIN_EPOCHS, batch_size=TRAIN_BATCH)
        config = {"passes": {next(iter(passes)): section}}
        result, reports = build(pb, npz, [target], TRAIN_BATCH, code, config, "--train")
        seconds = pass_seconds(reports[target], next(iter(passes)))
        rows[name] = {"pass_seconds": seconds, "over_keras_fit": seconds / reference,
                      "process": result}
    return rows


SUITES = {"cli": suite_cli, "all": suite_all, "ptq": suite_ptq, "cost": suite_cost,
          "retrain": suite_retrain}


# --- report -------------------------------------------------------------------------------------

RATIOS = [  # (label, goal, suite, path in the suite's result)
    ("--target all / one target (wall)", "<= 1.3", "all", ("all_over_one",)),
    ("--target all / one target (peak RSS)", "<= 1.3", "all", ("all_over_one_peak_rss",)),
    ("one-target build / plain TF process (160, 4x16)", "<= 1.5", "ptq",
     ("build_over_plain_tf",)),
    ("one-target build / TFLite INT8 converter process", "< 1", "ptq", ("build_over_tflite",)),
    ("quantize pass / fp32 forward (224, 4x32)", "<= 1.5", "cost", ("quantize_over_forward",)),
    ("quantize pass / fp32 forward, same pool allocator (224, 4x32)", "(floor)", "cost",
     ("quantize_over_pool_forward",)),
    ("build peak RSS / fp32 inference peak RSS (224)", "<= 1.3", "cost",
     ("peak_rss_over_fp32",)),
    ("`targets` / import tensorflow", "<= 0.25", "cli", ("targets", "over_import_tensorflow")),
    ("`passes` / import tensorflow", "<= 0.25", "cli", ("passes", "over_import_tensorflow")),
    ("`--help` / import tensorflow", "<= 0.25", "cli", ("help", "over_import_tensorflow")),
    ("`--version` / import tensorflow", "<= 0.25", "cli", ("version", "over_import_tensorflow")),
    ("QAT pass / Keras fit", "<= 1.3", "retrain", ("qat", "over_keras_fit")),
    ("channel pruning pass / Keras fit", "<= 1.3", "retrain", ("prune", "over_keras_fit")),
    ("4:2 pass / Keras fit", "<= 1.3", "retrain", ("4of2", "over_keras_fit")),
]
SECONDS = [  # (label, suite, path)
    ("one-target build, ResNet50 160 (s)", "all", ("one_target", "seconds")),
    ("`--target all` build (s)", "all", ("all_targets", "seconds")),
    ("quantize pass in the one-target build, 160 (s)", "all", ("quantize_pass_seconds_one",)),
    ("plain TF process, load .pb + 4x16 (s)", "ptq", ("plain_tf", "seconds")),
    ("TFLite INT8 converter process (s)", "ptq", ("tflite", "seconds")),
    ("fp32 forward 4x32 at 224, in process (s)", "cost", ("fp32_forward_seconds",)),
    ("fp32 forward 4x32 at 224, pool allocator (s)", "cost", ("fp32_pool_forward_seconds",)),
    ("quantize pass, 224 4x32 (s)", "cost", ("quantize_pass_seconds",)),
    ("build peak RSS, 224 (MB)", "cost", ("build", "peak_rss_mb")),
    ("fp32 inference peak RSS, 224 (MB)", "cost", ("fp32", "peak_rss_mb")),
    ("python -c 'import tensorflow' (s)", "cli", ("import_tensorflow_seconds",)),
    ("Keras fit, ResNet50 64x64, 256 samples, 2 epochs (s)", "retrain", ("keras_fit_seconds",)),
]


def _get(column: dict, suite: str, path: tuple):
    value = column.get(suite)
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def markdown(results: dict) -> str:
    labels = [label for label in ("before", "after") if label in results["columns"]] + sorted(
        set(results["columns"]) - {"before", "after"})
    head = "| measure | goal | " + " | ".join(labels) + " |"
    rule = "|---|---|" + "---:|" * len(labels)
    lines = ["# Speed: shared work across targets, PTQ near the floor, instant CLI, retraining",
             "", results.get("environment", ""), "",
             "Every number is a whole process (wall time measured by the parent, peak RSS by GNU "
             "time's %M) except the pass seconds (report.json) and the in-process fp32 forward "
             "and Keras fit times. Each column is one run; the same reference measured in two "
             "runs (e.g. the Keras fit) shows the run-to-run noise of this shared 2-core "
             "machine. Reproduce: `python benchmarks/speed.py --label after` (and `--label "
             "before --code DIR` with an export of main).", "",
             "## Ratios", "", head, rule]
    for label, goal, suite, path in RATIOS:
        cells = [_get(results["columns"][c], suite, path) for c in labels]
        lines.append(f"| {label} | {goal} | " + " | ".join(
            "-" if v is None else f"{v:.2f}x" for v in cells) + " |")
    lines += ["", "## Measurements", "", "| measure | " + " | ".join(labels) + " |",
              "|---|" + "---:|" * len(labels)]
    for label, suite, path in SECONDS:
        cells = [_get(results["columns"][c], suite, path) for c in labels]
        lines.append(f"| {label} | " + " | ".join(
            "-" if v is None else f"{v:.2f}" for v in cells) + " |")
    for c in labels:
        note = results["columns"][c].get("code")
        if note:
            lines += ["", f"`{c}`: {note}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    parser.add_argument("--label", default="after")
    parser.add_argument("--code", help="PYTHONPATH of the measured amct-targets processes")
    parser.add_argument("--note", default="", help="what --code is (for the Markdown)")
    parser.add_argument("--suites", default="cli,all,ptq,cost,retrain")
    parser.add_argument("--markdown-only", action="store_true")
    args = parser.parse_args()
    if args.child:
        {"plain_tf": child_plain_tf, "tflite": child_tflite, "fit": child_fit,
         "prepare": prepare}[
            args.child[0]](*args.child[1:])
        return
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "speed.json"
    results = json.loads(path.read_text()) if path.exists() else {"columns": {}}
    if not args.markdown_only:
        code = str(Path(args.code).resolve()) if args.code else str(HERE.parent)
        # Models are made in a child: this process stays small (no TensorFlow here).
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "prepare"],
                       check=True)
        files = prepare()
        version = subprocess.run([sys.executable, "-c", "import tensorflow as tf;"
                                  "print(tf.__version__)"], capture_output=True, text=True,
                                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        results["environment"] = (f"TensorFlow {version.stdout.strip()}, Python "
                                  f"{platform.python_version()}, {platform.machine()}, "
                                  f"{os.cpu_count()} cores")
        column = results["columns"].setdefault(args.label, {})
        column["code"] = args.note or code
        for name in args.suites.split(","):
            print(f"suite {name} ...", flush=True)
            column[name] = SUITES[name](files, code)
            print(json.dumps(column[name]), flush=True)
            path.write_text(json.dumps(results, indent=2) + "\n")
            (RESULTS / "speed.md").write_text(markdown(results))
    (RESULTS / "speed.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
