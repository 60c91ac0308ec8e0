"""Benchmark of the fold_bn pass: BN nodes before/after, folds, error and time on real models.

Run from the repository root (after `pip install -e '.[test]'`):

    python benchmarks/bn_fusion.py

Writes benchmarks/results/bn_fusion.json and benchmarks/results/bn_fusion.md. Keras models
get random BN statistics (tests/models.py: randomize_bn), so folding changes every weight.
The error is max |folded - original| / max |original| over all outputs for 8 random inputs
(seed 0), with both graphs run by a Session that has grappler off, so the original is not
folded by TensorFlow itself.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # shared builders

from amct_targets.graph.load import load_model, model_from_graph_def
from amct_targets.graph.fold_bn import fold_batch_norm
from models import (bn_nodes, randomize_bn, small_bn_cnn,  # noqa: E402
                    tf1_fused_bn_graph, unoptimized_session_config)

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = 8
SEED = 0
FOLD_REPEATS = 3


def _keras_bn_layers(keras_model) -> int:
    import keras

    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in keras_model.layers)


def _models():
    """(name, loaded Model, BN layers in the source) for each benchmark model."""
    import keras

    apps = [
        ("MobileNetV2 224 (Keras Applications)", lambda: keras.applications.MobileNetV2(
            input_shape=(224, 224, 3), weights=None, classifier_activation=None)),
        ("ResNet50 224 (Keras Applications)", lambda: keras.applications.ResNet50(
            weights=None, classifier_activation=None)),
    ]
    for name, build in apps:
        keras_model = randomize_bn(build(), SEED)
        yield name, load_model(keras_model), _keras_bn_layers(keras_model)
    graph_def = tf1_fused_bn_graph(SEED)
    yield ("TF1 FusedBatchNormV3 graph",
           model_from_graph_def(graph_def, outputs=["output"], where="tf1_fused_bn_graph"),
           sum(n.op.startswith("FusedBatchNorm") for n in graph_def.node))
    keras_model = small_bn_cnn(SEED)
    yield "small Keras CNN (8x8x1)", load_model(keras_model), _keras_bn_layers(keras_model)


def _run(model, samples: list[dict]) -> list[list[np.ndarray]]:
    """Outputs of `model` for each feed dict, from one unoptimized Session."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(model.graph_def, name="")
    fetches = [graph.get_tensor_by_name(t) for t in model.outputs]
    with tf.compat.v1.Session(graph=graph, config=unoptimized_session_config()) as session:
        return [session.run(fetches, {graph.get_tensor_by_name(f"{k}:0"): v
                                      for k, v in feed.items()}) for feed in samples]


def _samples(model) -> list[dict]:
    rng = np.random.default_rng(SEED)
    return [{spec.name: rng.normal(0, 1, tuple(1 if d is None else d for d in spec.shape))
             .astype(spec.dtype) for spec in model.inputs} for _ in range(SAMPLES)]


def measure(name: str, model, source_bn: int) -> dict:
    times = []
    for _ in range(FOLD_REPEATS):
        start = time.perf_counter()
        folded_model, folded, left = fold_batch_norm(model)
        times.append(time.perf_counter() - start)
    samples = _samples(model)
    original, new = _run(model, samples), _run(folded_model, samples)
    diff = max(float(np.max(np.abs(b - a))) for o, f in zip(original, new) for a, b in zip(o, f))
    scale = max(float(np.max(np.abs(a))) for o in original for a in o)
    kinds: dict[str, int] = {}
    for record in folded:
        kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
    return {
        "model": name,
        "bn_in_source": source_bn,
        "bn_nodes_before": len(bn_nodes(model.graph_def)),
        "bn_nodes_after": len(bn_nodes(folded_model.graph_def)),
        "folded": len(folded),
        "folded_kinds": dict(sorted(kinds.items())),
        "left": len(left),
        "left_reasons": [f"{r['layer']}: {r['reason']}" for r in left],
        "graph_nodes_before": len(model.graph_def.node),
        "graph_nodes_after": len(folded_model.graph_def.node),
        "max_rel_error": diff / scale,
        "max_abs_output": scale,
        "fold_seconds": min(times),
        "deterministic": folded_model.serialize() == fold_batch_norm(model)[0].serialize(),
    }


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# BN fusion (`fold_bn`) benchmark",
        "",
        f"TensorFlow {env['tensorflow']}, Keras {env['keras']}, Python {env['python']}, "
        f"{env['machine']}. Error: max |folded - original| / max |original| over all outputs, "
        f"{SAMPLES} random N(0,1) inputs (seed {SEED}), grappler off when running. "
        f"Fold time: best of {FOLD_REPEATS}. BN nodes: FusedBatchNorm* nodes plus Mul/Add with a "
        "Const reading a Conv2D/DepthwiseConv2dNative/MatMul/BiasAdd output.",
        "",
        "| model | BN in source | BN nodes before | BN nodes after | folded | left | "
        "max rel. error | fold time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bn_in_source']} | {r['bn_nodes_before']} | "
                     f"{r['bn_nodes_after']} | {r['folded']} | {r['left']} | "
                     f"{r['max_rel_error']:.2e} | {r['fold_seconds']:.3f} |")
    lines.append("")
    for r in rows:
        kinds = ", ".join(f"{k}: {v}" for k, v in r["folded_kinds"].items())
        lines.append(f"- **{r['model']}**: folded kinds {kinds}; graph nodes "
                     f"{r['graph_nodes_before']} -> {r['graph_nodes_after']}"
                     + "".join(f"; left {reason}" for reason in r["left_reasons"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    import keras
    import tensorflow as tf

    env = {"tensorflow": tf.__version__, "keras": keras.__version__,
           "python": platform.python_version(), "machine": platform.machine()}
    rows = []
    for name, model, source_bn in _models():
        rows.append(measure(name, model, source_bn))
        print(json.dumps({k: rows[-1][k] for k in ("model", "folded", "left", "max_rel_error",
                                                    "fold_seconds")}), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bn_fusion.json").write_text(
        json.dumps({"environment": env, "samples": SAMPLES, "seed": SEED, "results": rows},
                   indent=2) + "\n")
    (RESULTS / "bn_fusion.md").write_text(markdown(rows, env))
    print(markdown(rows, env))


if __name__ == "__main__":
    main()
