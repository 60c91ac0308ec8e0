"""INT8 post-training quantization: amct-targets against TFLite's full-integer PTQ.

    python benchmarks/quantization.py [--suite digits,scale,cost,memory]

- digits: accuracy and logits SQNR of fp32, ours (simulated INT8) and TFLite INT8 on the
  held-out digits split, same model, same calibration samples, for a plain CNN and a
  MobileNetV2-style network.
- scale: logits SQNR against fp32 on Keras Applications MobileNetV2 and ResNet50
  (weights=None; BN statistics set from real data), ours and TFLite side by side.
- cost: PTQ end-to-end on ResNet50 (batch_num 4 x 32 x 224x224x3) over the bare fp32
  forward passes of the same batches, and over the TFLite converter's time; peak RSS of PTQ
  over fp32 inference's (each in its own process).
- memory: peak RSS of calibration with 4 and with 32 batches (it must not grow with them).

Results: benchmarks/results/quantization.json and quantization.md (suites merge into them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
CALIB_SAMPLES, BATCH_NUM = 128, 4


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = np.sum((ref - actual.astype(np.float64)) ** 2)
    return float(10 * np.log10(np.sum(ref ** 2) / noise)) if noise > 0 else float("inf")


def frozen_concrete(keras_model, batch=None):
    import tensorflow as tf

    spec = tf.TensorSpec((batch,) + tuple(keras_model.inputs[0].shape[1:]), tf.float32)
    return tf.function(lambda x: keras_model(x, training=False)).get_concrete_function(spec)


def tflite_int8(keras_model, calib: np.ndarray):
    """TFLite full-integer PTQ (int8 ops, float I/O); returns (predict fn, convert seconds)."""
    import tensorflow as tf

    from tensorflow.python.framework.convert_to_constants import \
        convert_variables_to_constants_v2

    concrete = convert_variables_to_constants_v2(frozen_concrete(keras_model, 1))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    started = time.perf_counter()
    flatbuffer = converter.convert()
    seconds = time.perf_counter() - started
    interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=2)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def predict(x):
        rows = []
        for sample in x:
            interpreter.set_tensor(inp["index"], sample[None].astype(np.float32))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"])[0].copy())
        return np.stack(rows)

    return predict, seconds


def ours_int8(keras_model, calib: np.ndarray, target="ascend310", config=None):
    """amct-targets PTQ through the public API; returns (predict fn, report, seconds)."""
    import amct_targets as at

    out = Path(tempfile.mkdtemp(prefix="amct-bench-"))
    config = config or {"passes": {"quantize": {"batch_num": BATCH_NUM}}}
    started = time.perf_counter()
    reports = at.build(keras_model, target, calib=calib, config=config, output_dir=out)
    seconds = time.perf_counter() - started
    report = reports[target]
    run = at.load_simulation(out / target / report["artifacts"]["pb"])
    return (lambda x: np.concatenate([run(x[i:i + 64]) for i in range(0, len(x), 64)])), \
        report, seconds


def suite_digits() -> dict:
    from digits_models import accuracy, trained

    rows = {}
    for name in ("digits_cnn", "digits_mobilenet"):
        model, (x_train, _, x_test, y_test) = trained(name)
        calib = x_train[:CALIB_SAMPLES]
        fp32 = model.predict(x_test, verbose=0, batch_size=128)
        ours, report, _ = ours_int8(model, calib)
        tflite, _ = tflite_int8(model, calib)
        ours_logits, tflite_logits = ours(x_test), tflite(x_test)
        quant = next(p for p in report["passes"] if p["name"] == "quantize")
        rows[name] = {
            "test_samples": int(len(x_test)), "calib_samples": CALIB_SAMPLES,
            "fp32_accuracy": accuracy(fp32, y_test),
            "ours_accuracy": accuracy(ours_logits, y_test),
            "tflite_accuracy": accuracy(tflite_logits, y_test),
            "ours_sqnr_db": sqnr_db(fp32, ours_logits),
            "tflite_sqnr_db": sqnr_db(fp32, tflite_logits),
            "ours_layers_int8": quant["metrics"]["quantized"],
            "ours_layers_float": quant["metrics"]["float"],
        }
        r = rows[name]
        r["ours_drop_points"] = round(100 * (r["fp32_accuracy"] - r["ours_accuracy"]), 3)
        r["tflite_drop_points"] = round(100 * (r["fp32_accuracy"] - r["tflite_accuracy"]), 3)
        print(name, json.dumps(r), flush=True)
    return rows


def imagenet_like_inputs(count: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """Real images: digits upsampled to size x size x 3, scaled like ImageNet preprocessing."""
    import tensorflow as tf

    from digits_models import digits_data

    x_train, _, _, _ = digits_data(seed=seed)  # 8x8x1; resize only the samples used
    images = np.concatenate([np.repeat(tf.image.resize(x_train[i:i + 32], (size, size)).numpy(),
                                       3, axis=-1) for i in range(0, count, 32)])[:count]
    return (images * 2.0 - 1.0).astype(np.float32)


def application(name: str, data: np.ndarray):
    """Keras Applications model, weights=None, BN moving statistics set from `data`."""
    import keras

    keras.utils.set_random_seed(0)
    build = {"mobilenet_v2": keras.applications.MobileNetV2,
             "resnet50": keras.applications.ResNet50}[name]
    model = build(weights=None, input_shape=data.shape[1:], classifier_activation=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # one training-mode pass sets moving stats to batch stats
    model(data, training=True)
    return model


def suite_scale() -> dict:
    rows = {}
    inputs = imagenet_like_inputs(CALIB_SAMPLES + 64)
    calib, evaluation = inputs[:CALIB_SAMPLES], inputs[CALIB_SAMPLES:]
    for name in ("mobilenet_v2", "resnet50"):
        model = application(name, calib[:32])
        fp32 = model.predict(evaluation, verbose=0, batch_size=32)
        ours, report, _ = ours_int8(model, calib)
        tflite, _ = tflite_int8(model, calib)
        quant = next(p for p in report["passes"] if p["name"] == "quantize")
        rows[name] = {"eval_samples": int(len(evaluation)), "calib_samples": CALIB_SAMPLES,
                      "ours_sqnr_db": sqnr_db(fp32, ours(evaluation)),
                      "tflite_sqnr_db": sqnr_db(fp32, tflite(evaluation)),
                      "ours_layers_int8": quant["metrics"]["quantized"],
                      "ours_layers_float": quant["metrics"]["float"]}
        print(name, json.dumps(rows[name]), flush=True)
    return rows


def prepared_resnet50() -> Path:
    """ResNet50 with BN statistics set from data, saved once, so the measured child processes
    only load it (the BN-setting training pass would otherwise dominate their peak RSS)."""
    from digits_models import CACHE

    path = CACHE / "resnet50_bn_from_data.keras"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        application("resnet50", imagenet_like_inputs(32)).save(path)
    return path


def _child(mode: str, batches: int) -> dict:
    """Run one measured job in a fresh process; returns its JSON line."""
    run = subprocess.run([sys.executable, __file__, "--child", mode, "--batches", str(batches)],
                         capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def child(mode: str, batches: int) -> None:
    """Inside the child process: build ResNet50, then time one job and report peak RSS."""
    import tensorflow as tf

    from amct_targets.graph.load import load_model
    from amct_targets.graph.run import GraphRunner
    from amct_targets.hooks.manager import default_ops

    import keras

    data = imagenet_like_inputs(32 * batches)
    model = keras.models.load_model(prepared_resnet50(), compile=False)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"mode": mode, "batches": batches}
    if mode == "fp32":
        frozen = load_model(model)
        run = GraphRunner(frozen.graph_def, list(frozen.input_names), list(frozen.outputs),
                          ops=default_ops())
        run(data[:32])  # warm-up, as calibration's first batch also pays graph set-up
        started = time.perf_counter()
        for i in range(batches):
            run(data[32 * i:32 * (i + 1)])
        result["seconds"] = time.perf_counter() - started
    elif mode == "tflite":
        _, result["seconds"] = tflite_int8(model, data[:32 * batches])
    else:
        config = {"passes": {"quantize": {"batch_num": batches, "batch_size": 32}}}
        _, report, result["seconds"] = ours_int8(model, data, config=config)
        quant = next(p for p in report["passes"] if p["name"] == "quantize")
        result["quantize_seconds"] = quant["seconds"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rss_before_job_mb"] = baseline_rss / 1024
    print(json.dumps(result))
    del tf


def suite_cost() -> dict:
    prepared_resnet50()
    fp32 = _child("fp32", BATCH_NUM)
    ours = _child("ours", BATCH_NUM)
    tflite = _child("tflite", BATCH_NUM)
    return {"fp32": fp32, "ours": ours, "tflite": tflite,
            "ours_over_fp32_forward": ours["seconds"] / fp32["seconds"],
            "quantize_pass_over_fp32_forward": ours["quantize_seconds"] / fp32["seconds"],
            "ours_over_tflite_convert": ours["seconds"] / tflite["seconds"],
            "peak_rss_ours_over_fp32": ours["peak_rss_mb"] / fp32["peak_rss_mb"]}


def suite_memory() -> dict:
    prepared_resnet50()
    small, large = _child("ours", 4), _child("ours", 32)
    return {"batches_4": small, "batches_32": large,
            "peak_rss_growth_mb": large["peak_rss_mb"] - small["peak_rss_mb"]}


def markdown(results: dict) -> str:
    lines = ["# INT8 PTQ: amct-targets vs TFLite full-integer PTQ", "",
             f"{results.get('environment', '')}", ""]
    digits = results.get("digits")
    if digits:
        lines += ["## Digits models (same model, same 128 calibration samples)", "",
                  "| model | fp32 acc | ours acc | TFLite acc | ours drop (pts) | TFLite drop "
                  "(pts) | ours SQNR dB | TFLite SQNR dB | ours INT8/float layers |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in digits.items():
            lines.append(f"| {name} | {r['fp32_accuracy']:.4f} | {r['ours_accuracy']:.4f} | "
                         f"{r['tflite_accuracy']:.4f} | {r['ours_drop_points']:.2f} | "
                         f"{r['tflite_drop_points']:.2f} | {r['ours_sqnr_db']:.2f} | "
                         f"{r['tflite_sqnr_db']:.2f} | {r['ours_layers_int8']}/"
                         f"{r['ours_layers_float']} |")
        lines.append("")
    scale = results.get("scale")
    if scale:
        lines += ["## Output fidelity at scale (logits SQNR vs fp32, 64 inputs)", "",
                  "| model | ours SQNR dB | TFLite SQNR dB | ours INT8/float layers |",
                  "|---|---:|---:|---:|"]
        for name, r in scale.items():
            lines.append(f"| {name} | {r['ours_sqnr_db']:.2f} | {r['tflite_sqnr_db']:.2f} | "
                         f"{r['ours_layers_int8']}/{r['ours_layers_float']} |")
        lines.append("")
    cost = results.get("cost")
    if cost:
        lines += ["## Cost: ResNet50, 4 batches of 32x224x224x3", "",
                  "| measure | value |", "|---|---:|",
                  f"| fp32 forward of the 4 batches (s) | {cost['fp32']['seconds']:.2f} |",
                  f"| ours, PTQ end-to-end (s) | {cost['ours']['seconds']:.2f} |",
                  f"| ours, quantize pass alone (s) | {cost['ours']['quantize_seconds']:.2f} |",
                  f"| TFLite converter (s) | {cost['tflite']['seconds']:.2f} |",
                  f"| ours end-to-end / fp32 forward | {cost['ours_over_fp32_forward']:.2f}x |",
                  f"| quantize pass / fp32 forward | "
                  f"{cost['quantize_pass_over_fp32_forward']:.2f}x |",
                  f"| ours / TFLite converter | {cost['ours_over_tflite_convert']:.2f}x |",
                  f"| peak RSS ours / fp32 inference | {cost['peak_rss_ours_over_fp32']:.2f}x |",
                  "", "Each measurement runs in its own process that loads the saved model; "
                  "peak RSS is that process's high-water mark.", ""]
    memory = results.get("memory")
    if memory:
        lines += ["## Calibration memory: ResNet50, 32-sample batches", "",
                  "| batches | RSS before the job (MB) | peak RSS (MB) | peak minus before (MB) |",
                  "|---:|---:|---:|---:|"]
        for n in ("4", "32"):
            m = memory[f"batches_{n}"]
            lines.append(f"| {n} | {m['rss_before_job_mb']:.0f} | {m['peak_rss_mb']:.0f} | "
                         f"{m['peak_rss_mb'] - m['rss_before_job_mb']:.0f} |")
        lines += ["", "RSS before the job includes the model and the calibration data (32 x "
                  "19 MB batches); what calibration itself adds does not grow with the batch "
                  "count.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", default="digits,scale,cost,memory")
    parser.add_argument("--child")
    parser.add_argument("--batches", type=int, default=BATCH_NUM)
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite quantization.md from quantization.json")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batches)
        return
    import tensorflow as tf

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "quantization.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.markdown_only:
        (RESULTS / "quantization.md").write_text(markdown(results) + "\n")
        return
    results["environment"] = (f"TensorFlow {tf.__version__}, Python {platform.python_version()}, "
                              f"{platform.machine()}, {os.cpu_count()} cores")
    suites = {"digits": suite_digits, "scale": suite_scale, "cost": suite_cost,
              "memory": suite_memory}
    for name in args.suite.split(","):
        results[name] = suites[name]()
        path.write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "quantization.md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
