"""Approximate calibration (Softmax -> FastSoftmax) on a small Keras transformer classifier.

Run from the repository root (after `pip install -e '.[test]'`):

    python benchmarks/fast_softmax.py

Model: scikit-learn digits, each 8x8 image read as a sequence of 8 tokens (its rows) of 8
features; Dense(32) token embedding, two post-norm transformer blocks with
keras.layers.MultiHeadAttention (4 heads, key_dim 8) and a ReLU feed-forward, Flatten (keeps
the token positions), Dense(10, softmax). Trained once with fixed seeds and cached in
benchmarks/.cache/digits_transformer.keras (git-ignored; delete it to retrain).

Build: amct-targets for ascend310p with `fast_softmax` enabled, calibration = the first 128
training samples (batch_num 1). `quantize` is disabled so that the numbers measure the
approximation alone. Measured on the held-out split (450 images):
- per Softmax layer, max and mean |FastSoftmax - Softmax| of the layer's output, fetched from
  the float frozen graph and from the simulated deploy graph (end to end: the second block
  also sees the first block's approximation), and the pass's own per-op numbers on the
  calibration data;
- task accuracy of the float graph and of the simulated deploy graph.

Writes benchmarks/results/fast_softmax.json and benchmarks/results/fast_softmax.md.
"""
from __future__ import annotations

import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
CACHE = HERE / ".cache" / "digits_transformer.keras"
SEED, EPOCHS, CALIB_SAMPLES = 0, 60, 128
PLUGIN = "amct_targets.passes.fast_softmax"  # explicit until it is a built-in plugin


def digits_tokens():
    """(x_train, y_train, x_test, y_test): images as [N, 8 tokens, 8 features] in [0, 1]."""
    from amct_targets.demo.make_demo import digits_split

    x_train, y_train, x_test, y_test = digits_split(SEED)
    return (x_train.reshape(-1, 8, 8), y_train, x_test.reshape(-1, 8, 8), y_test)


def build_transformer():
    import keras

    layers = keras.layers
    inputs = keras.Input((8, 8), name="tokens")
    x = layers.Dense(32, name="embed")(inputs)
    for block in (1, 2):
        attention = layers.MultiHeadAttention(num_heads=4, key_dim=8, name=f"mha{block}")(x, x)
        x = layers.LayerNormalization(name=f"ln{block}a")(layers.Add()([x, attention]))
        ffn = layers.Dense(64, activation="relu", name=f"ffn{block}a")(x)
        ffn = layers.Dense(32, name=f"ffn{block}b")(ffn)
        x = layers.LayerNormalization(name=f"ln{block}b")(layers.Add()([x, ffn]))
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(10, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="digits_transformer")


def trained_transformer(data):
    import keras

    if CACHE.exists():
        return keras.models.load_model(CACHE, compile=False)
    keras.utils.set_random_seed(SEED)
    model = build_transformer()
    x_train, y_train, _, _ = data
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, shuffle=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    model.save(CACHE)
    return model


def softmax_census(graph_def) -> dict:
    """What the frozen graph holds where Keras put softmaxes."""
    by_name = {n.name: n for n in graph_def.node}
    ops = collections.Counter(n.op for n in graph_def.node)
    softmaxes = [n for n in graph_def.node if n.op == "Softmax"]
    return {"op_counts": {k: ops[k] for k in ("Softmax", "Exp", "Einsum", "BatchMatMulV2")
                          if ops[k]},
            "softmax_nodes": [{"name": n.name,
                               "input_op": by_name[n.input[0].split(":")[0]].op}
                              for n in softmaxes]}


def run_benchmark() -> dict:
    import keras
    import tensorflow as tf

    import amct_targets as at
    from amct_targets.graph.load import load_model

    data = digits_tokens()
    x_train, y_train, x_test, y_test = data
    model = trained_transformer(data)
    keras_acc = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))

    work = Path(tempfile.mkdtemp(prefix="amct-fs-bench-"))
    frozen = load_model(model)  # the float graph the build starts from
    float_pb = work / "float.pb"
    float_pb.write_bytes(frozen.serialize())
    census = softmax_census(frozen.graph_def)
    names = [s["name"] for s in census["softmax_nodes"]]

    config = {"passes": {"fast_softmax": {"enabled": True, "batch_num": 1},
                         "quantize": {"enabled": False}}}
    started = time.perf_counter()
    report = at.build(model, "ascend310p", calib=x_train[:CALIB_SAMPLES], config=config,
                      output_dir=work / "out", plugins=[PLUGIN])["ascend310p"]
    build_seconds = time.perf_counter() - started
    deploy_pb = work / "out" / "ascend310p" / report["artifacts"]["pb"]
    entry = next(p for p in report["passes"] if p["name"] == "fast_softmax")
    by_layer = {e["layer"]: e for e in entry["layers"]}

    outputs = list(frozen.outputs)
    reference = at.load_simulation(float_pb, outputs=names + outputs)({frozen.input_names[0]:
                                                                       x_test})
    simulated = at.load_simulation(deploy_pb, outputs=names + outputs)({frozen.input_names[0]:
                                                                        x_test})
    layers = []
    for name in names:
        error = np.abs(simulated[name] - reference[name])
        fitted = by_layer[name]
        layers.append({
            "layer": name, "row_length": fitted.get("row_length"),
            "a": fitted["a"], "b": fitted["b"], "clip_value": fitted["clip_value"],
            "calib_max_abs_error": fitted["max_abs_error"],
            "calib_mean_abs_error": fitted["mean_abs_error"],
            "heldout_max_abs_error": float(error.max()),
            "heldout_mean_abs_error": float(error.mean()),
            "heldout_rows": int(error.size // error.shape[-1]),
        })
    probs_float, probs_fast = reference[outputs[0]], simulated[outputs[0]]
    float_acc = float(np.mean(probs_float.argmax(-1) == y_test))
    fast_acc = float(np.mean(probs_fast.argmax(-1) == y_test))
    top2 = np.sort(probs_float, axis=-1)[:, -2:]
    changed = [{"index": int(i), "label": int(y_test[i]),
                "float_prediction": int(probs_float[i].argmax()),
                "fast_softmax_prediction": int(probs_fast[i].argmax()),
                "float_top2_margin": float(top2[i, 1] - top2[i, 0])}
               for i in np.flatnonzero(probs_float.argmax(-1) != probs_fast.argmax(-1))]
    return {
        "environment": (f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python "
                        f"{platform.python_version()}, {platform.machine()}, "
                        f"{os.cpu_count()} cores"),
        "model": {"name": "digits_transformer", "params": int(model.count_params()),
                  "keras_layers": [layer.__class__.__name__ for layer in model.layers],
                  "frozen_graph": census},
        "data": {"train_samples": int(len(x_train)), "test_samples": int(len(x_test)),
                 "calib_samples": CALIB_SAMPLES, "seed": SEED, "epochs": EPOCHS},
        "accuracy": {"keras": keras_acc, "float_graph": float_acc, "fast_softmax": fast_acc,
                     "change_points": round(100 * (fast_acc - float_acc), 3),
                     "changed_predictions": len(changed), "changed": changed},
        "layers": layers,
        "pass": {"metrics": entry["metrics"], "seconds": entry["seconds"]},
        "build_seconds": round(build_seconds, 2),
        "check_findings": sorted({f["code"] + ": " + f["message"].split(";")[0]
                                  for f in report["checks"]}),
    }


def markdown(r: dict) -> str:
    acc = r["accuracy"]
    lines = ["# Approximate calibration (`fast_softmax`): Softmax -> FastSoftmax", "",
             f"{r['environment']}. Model: Keras transformer classifier on scikit-learn digits "
             f"(8 tokens x 8 features, 2 MultiHeadAttention blocks, {r['model']['params']} "
             f"parameters), {r['data']['train_samples']} train / {r['data']['test_samples']} "
             f"held-out images, calibration = {r['data']['calib_samples']} training samples. "
             "Target ascend310p, `quantize` off. Errors are |FastSoftmax - Softmax| of each "
             "Softmax layer's output: *held-out* from the float frozen graph vs the simulated "
             "deploy graph (end to end), *calib* the pass's per-op numbers on the calibration "
             "data.", "",
             "| Softmax layer | row length | a | b | clip_value | held-out max | held-out mean "
             "| calib max | calib mean |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for layer in r["layers"]:
        lines.append(f"| `{layer['layer']}` | {layer['row_length']} | {layer['a']:.5f} | "
                     f"{layer['b']:.5f} | {layer['clip_value']:.2f} | "
                     f"{layer['heldout_max_abs_error']:.4f} | "
                     f"{layer['heldout_mean_abs_error']:.5f} | "
                     f"{layer['calib_max_abs_error']:.4f} | "
                     f"{layer['calib_mean_abs_error']:.5f} |")
    lines += ["", "| accuracy | float graph | FastSoftmax (simulated) | change (points) | "
              "changed predictions |", "|---|---:|---:|---:|---:|",
              f"| held-out digits | {acc['float_graph']:.4f} | {acc['fast_softmax']:.4f} | "
              f"{acc['change_points']:+.2f} | {acc['changed_predictions']} |", "",
              *[f"- Changed prediction: image {c['index']} (label {c['label']}), float graph "
                f"{c['float_prediction']} -> FastSoftmax {c['fast_softmax_prediction']}; the float "
                f"graph's top-2 probabilities differ by only {c['float_top2_margin']:.3f} there "
                "(a near-tie)." for c in acc["changed"]],
              f"- Keras model accuracy: {acc['keras']:.4f}; build time "
              f"{r['build_seconds']:.1f} s (pass {r['pass']['seconds']:.2f} s).",
              f"- Frozen graph: {r['model']['frozen_graph']['op_counts']}; each "
              "MultiHeadAttention softmax is one `Softmax` op on the last axis (input op: "
              + ", ".join(sorted({s['input_op'] for s in
                                  r['model']['frozen_graph']['softmax_nodes']})) + ")."]
    if r["check_findings"]:
        lines.append("- ATC check of the deploy .pb (not caused by FastSoftmax): "
                     + "; ".join(r["check_findings"]))
    return "\n".join(lines)


def main() -> None:
    results = run_benchmark()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fast_softmax.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "fast_softmax.md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
