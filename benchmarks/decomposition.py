"""Tensor decomposition (`decompose`): FLOPs cut and accuracy on digits, and the cost of
decomposing large kernels.

    python benchmarks/decomposition.py [--suite digits,timing] [--skip-2048] [--threads N]

- digits: a CNN with 3x3 convs of width 64 and 128 on the digits upsampled to 16x16x1
  (fixed seeds; the trained Keras model is cached in benchmarks/.cache/). Each variant is a
  real `at.build` for ascend310 (fold_bn, then decompose); accuracy is the built .pb run by
  `at.load_simulation` on the held-out split, without and with fine-tuning (the same build
  given the training split: 5 epochs at 2e-4, the pass's defaults).
- timing: wall time and peak memory to decompose one kernel (unfold, SVD, EVBMF rank,
  factors, reconstruction error: `plan_layer`), each in a fresh process with N BLAS threads
  (default 1: the machine's 2 cores are shared, and oversubscribed BLAS threads only slow
  LAPACK down). AMCT's reference figures (E5-2699 v4): (1024,1024,3,3) 16 s;
  (2048,2048,5,5) 430 s and about 32 GB.

Results: benchmarks/results/decomposition.json and decomposition.md (suites merge).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
PLUGIN = "amct_targets.passes.decompose"
MODEL_NAME, SIZE, EPOCHS = "digits_decompose_cnn", 16, 30
VARIANTS = [  # (label, decompose config or None for the baseline)
    ("fp32 (fold_bn only)", None),
    ("decompose, EVBMF (AMCT default)", {}),
    ("decompose, energy 0.95", {"rank_method": "energy", "energy": 0.95}),
    ("decompose, energy 0.90", {"rank_method": "energy", "energy": 0.90}),
]
TIMING_KERNELS = [  # (kh, kw, Cin, Cout, svd method)
    (3, 3, 512, 512, "auto"), (3, 3, 512, 512, "exact"),
    (3, 3, 1024, 1024, "auto"), (3, 3, 1024, 1024, "exact"),
    (5, 5, 1024, 1024, "auto"),
    (5, 5, 2048, 2048, "auto"),
]
AMCT_REFERENCE = {(3, 3, 1024, 1024): "16 s", (5, 5, 2048, 2048): "430 s, ~32 GB"}
FEATURE_MAP = 14  # spatial size of the conv in the timing runs (only the FLOP check uses it)


def build_cnn():
    import keras

    layers = keras.layers
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = inputs
    for i, (width, pool) in enumerate([(64, False), (64, False), (64, True), (128, False),
                                       (128, False)]):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if pool:
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


def trained_cnn():
    """(Keras model, (x_train, y_train, x_test, y_test)), trained once and cached."""
    import keras

    from digits_models import CACHE, SEED, digits_data

    data = digits_data(size=SIZE, channels=1)
    path = CACHE / f"{MODEL_NAME}.keras"
    if path.exists():
        return keras.models.load_model(path, compile=False), data
    keras.utils.set_random_seed(SEED)
    model = build_cnn()
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data[0], data[1], epochs=EPOCHS, batch_size=32, verbose=0, shuffle=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model, data


def digits_suite() -> dict:
    import amct_targets as at
    from digits_models import accuracy

    keras_model, (x_train, y_train, x_test, y_test) = trained_cnn()
    keras_acc = accuracy(np.asarray(keras_model(x_test, training=False)), y_test)
    rows, layers = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, options) in enumerate(VARIANTS):
            passes = {"decompose": {"enabled": True, **options}} if options is not None else {}
            out = Path(tmp) / str(k)
            started = time.perf_counter()
            report = at.build(keras_model, "ascend310", config={"passes": passes},
                              output_dir=out, plugins=[PLUGIN])["ascend310"]
            seconds = time.perf_counter() - started
            run = at.load_simulation(out / "ascend310" / report["artifacts"]["pb"])
            acc = accuracy(np.asarray(run(x_test)), y_test)
            entry = next(p for p in report["passes"] if p["name"] == "decompose")
            metrics = entry.get("metrics", {})
            tuned = None
            if options is not None and metrics.get("decomposed"):
                # the same build with training data: decompose, then fine-tune (5 epochs)
                tuned_report = at.build(keras_model, "ascend310", config={"passes": passes},
                                        train={"image": x_train, "y": y_train},
                                        output_dir=out / "tuned")["ascend310"]
                tuned = accuracy(np.asarray(at.load_simulation(
                    out / "tuned" / "ascend310" / tuned_report["artifacts"]["pb"])(x_test)),
                    y_test)
            rows.append({"variant": label, "config": options, "accuracy": acc,
                         "accuracy_finetuned": tuned, "build_seconds": round(seconds, 2),
                         **metrics})
            if options is not None:
                layers += [{"variant": label, **{key: r.get(key) for key in (
                    "layer", "kernel", "status", "mode", "rank", "rank_estimate",
                    "reconstruction_error", "flops_before", "flops_after", "reason")}}
                    for r in entry["layers"]]
            print(json.dumps({"variant": label, "accuracy": acc,
                              "eligible_flops_cut_pct": metrics.get("eligible_flops_cut_pct")}),
                  flush=True)
    return {"model": f"{MODEL_NAME}: digits {SIZE}x{SIZE}x1, 5 Conv3x3+BN+ReLU (64, 64, 64, "
                     f"128, 128 filters), max-pool after the 3rd, GAP, Dense 10; Adam 2e-3, "
                     f"{EPOCHS} epochs, seed 0",
            "test_samples": int(len(y_test)), "keras_accuracy": keras_acc,
            "variants": rows, "layers": layers}


def time_kernel(kh: int, kw: int, cin: int, cout: int, svd: str) -> dict:
    """Runs inside the child process: decompose one random kernel, report time and memory."""
    import resource
    import tracemalloc

    from amct_targets.decomposition.conv import ConvGeometry
    from amct_targets.decomposition.plan import DecomposeSettings, plan_layer

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((kh, kw, cin, cout), dtype=np.float32) * 0.02
    geometry = ConvGeometry((kh, kw, cin, cout), (1, 1), (1, 1), (FEATURE_MAP, FEATURE_MAP),
                            (FEATURE_MAP, FEATURE_MAP), cin)
    tracemalloc.start()
    started = time.perf_counter()
    plan, record = plan_layer("conv", kernel, geometry, DecomposeSettings(svd=svd))
    seconds = time.perf_counter() - started
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kernel": [kh, kw, cin, cout], "svd": record["svd"], "requested_svd": svd,
            "seconds": round(seconds, 2), "rank": record["rank"],
            "reconstruction_error": record.get("reconstruction_error"),
            "kernel_mb": round(kernel.nbytes / 2**20, 1),
            "peak_traced_mb": round(traced_peak / 2**20, 1),
            "peak_rss_mb": round(peak_rss / 1024, 1),
            "rss_before_mb": round(base_rss / 1024, 1),
            "decomposed": plan is not None}


def timing_suite(threads: int, skip_2048: bool) -> list[dict]:
    env = dict(os.environ)
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    rows = []
    for kh, kw, cin, cout, svd in TIMING_KERNELS:
        if skip_2048 and cin >= 2048:
            continue
        spec = f"{kh},{kw},{cin},{cout},{svd}"
        run = subprocess.run([sys.executable, __file__, "--time-kernel", spec], env=env,
                             capture_output=True, text=True, timeout=3600)
        if run.returncode != 0:
            raise RuntimeError(f"timing {spec} failed:\n{run.stderr[-2000:]}")
        row = json.loads(run.stdout.strip().splitlines()[-1])
        row["blas_threads"] = threads
        row["amct_reference"] = AMCT_REFERENCE.get((kh, kw, cin, cout))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _fmt(value, spec=",") -> str:
    return "—" if value is None else format(value, spec)


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["# Tensor decomposition (`decompose`) benchmark", "",
             f"TensorFlow {env['tensorflow']}, Keras {env['keras']}, NumPy {env['numpy']}, "
             f"Python {env['python']}, {env['machine']}, {env['cpus']} CPUs (shared).", ""]
    digits = results.get("digits")
    if digits:
        lines += [
            "## Digits CNN: FLOPs cut and accuracy before and after fine-tuning", "",
            f"{digits['model']}. Accuracy on the {digits['test_samples']} held-out digits of "
            "the .pb that `at.build` (ascend310, no calibration data) writes, run by "
            f"`at.load_simulation`; Keras fp32: {digits['keras_accuracy']:.4f}. FLOPs are "
            "2 x MACs plus bias adds (`amct_targets.graph.flops`, batch 1); *eligible* = the "
            "Conv2D layers that pass AMCT's conditions (4 of 5 here: the first conv has 1 "
            "input channel). Fine-tuned: the same build given the training split (the pass "
            "retrains every weighted layer, 5 epochs at 2e-4, about 0.1x the original rate as "
            "AMCT advises).", "",
            "| variant | decomposed | eligible FLOPs before -> after | eligible cut | "
            "model FLOPs cut | model params cut | accuracy (no fine-tuning) | "
            "accuracy (fine-tuned) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in digits["variants"]:
            if r["config"] is None:
                lines.append(f"| {r['variant']} | — | — | — | — | — | {r['accuracy']:.4f} | — |")
                continue
            lines.append(
                f"| {r['variant']} | {r['decomposed']}/{r['eligible']} | "
                f"{_fmt(r['eligible_flops_before'])} -> {_fmt(r['eligible_flops_after'])} | "
                f"{r['eligible_flops_cut_pct']:.2f}% | {r['model_flops_cut_pct']:.2f}% | "
                f"{r['model_params_cut_pct']:.2f}% | {r['accuracy']:.4f} | "
                f"{_fmt(r['accuracy_finetuned'], '.4f')} |")
        lines += ["", "Per layer:", "",
                  "| variant | layer | kernel (HWIO) | order | rank (estimate) | "
                  "FLOPs before -> after | rel. error ‖W−W_r‖/‖W‖ |",
                  "|---|---|---|---|---:|---:|---:|"]
        for r in digits["layers"]:
            if r["status"] != "decomposed":
                lines.append(f"| {r['variant']} | {r['layer']} | {r['kernel']} | — | — | — | "
                             f"skipped: {r['reason']} |")
                continue
            lines.append(
                f"| {r['variant']} | {r['layer']} | {r['kernel']} | {r['mode']} | "
                f"{r['rank']} ({r['rank_estimate']}) | {r['flops_before']:,} -> "
                f"{r['flops_after']:,} | {r['reconstruction_error']:.3f} |")
        lines.append("")
    timing = results.get("timing")
    if timing:
        threads = timing[0]["blas_threads"]
        lines += [
            "## Cost of decomposing one large kernel", "",
            "Unfold + SVD + EVBMF rank + factors + reconstruction error (`plan_layer`) on a "
            "Gaussian float32 kernel, each in a fresh process with "
            f"{threads} BLAS thread(s). `auto` uses the randomized range finder (float32, 2 "
            "power iterations) when the unfolding is larger than 1024; `exact` is LAPACK's "
            "full SVD. Memory: peak of NumPy allocations (tracemalloc, kernel included) and "
            "the process's peak RSS (TensorFlow and NumPy loaded: "
            f"{timing[0]['rss_before_mb']:.0f} MB before the kernel exists). Random "
            "kernels are the hardest case for the randomized SVD's error.", "",
            "| kernel (kh,kw,Cin,Cout) | SVD | time (s) | rank | rel. error | kernel (MB) | "
            "peak NumPy (MB) | peak RSS (MB) | AMCT (E5-2699 v4) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in timing:
            lines.append(
                f"| {tuple(r['kernel'])} | {r['svd']} | {r['seconds']:.2f} | {r['rank']} | "
                f"{_fmt(r['reconstruction_error'], '.4f')} | {r['kernel_mb']:.0f} | "
                f"{r['peak_traced_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{r['amct_reference'] or '—'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="digits,timing")
    parser.add_argument("--skip-2048", action="store_true",
                        help="leave out the (5,5,2048,2048) timing (a few minutes)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for timing")
    parser.add_argument("--time-kernel", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_kernel:
        *dims, svd = args.time_kernel.split(",")
        print(json.dumps(time_kernel(*map(int, dims), svd)))
        return
    import keras
    import tensorflow as tf

    path = RESULTS / "decomposition.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["environment"] = {"tensorflow": tf.__version__, "keras": keras.__version__,
                              "numpy": np.__version__, "python": platform.python_version(),
                              "machine": platform.machine(), "cpus": os.cpu_count()}
    suites = set(args.suite.split(","))
    if "digits" in suites:
        results["digits"] = digits_suite()
    if "timing" in suites:
        results["timing"] = timing_suite(args.threads, args.skip_2048)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "decomposition.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
