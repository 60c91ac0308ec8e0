"""Evaluation of a build: the float model and the compressed deploy graph on the same
evaluation set (`--eval F.npz`: inputs keyed like `--calib`, optional labels under `y`).

The compressed side runs the graph that is written as the target's .pb (custom Ascend ops
expanded into stock TensorFlow ops with the kernels' numerics, batch dimension freed), so the
numbers are those of what ATC gets. Outputs are matched by position: quantization may move a
graph output onto an AscendDequant node, the report keys each output by the float model's name.

    report["evaluation"] = {
        "samples": 450, "labels": true,
        "float": {"top1": 0.9933}, "compressed": {"top1": 0.9889},     # fractions; null w/o labels
        "outputs": {"logits:0": {"top1_agreement": 0.991, "sqnr_db": 28.4, "cosine": 0.9993}}}
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from amct_targets.data import LABEL_KEY, as_input_arrays, check_labels, output_shape, \
    read_arrays
from amct_targets.errors import describe
from amct_targets.graph.model import Model, tensor_name
from amct_targets.graph.run import GraphRunner
from amct_targets.quant.int8 import similarity

EVAL_BATCH = 256   # samples per forward pass: memory stays one batch's activations


@dataclass
class EvalData:
    """Evaluation inputs keyed by the model's input names, and labels as class indices."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    where: str
    reference: list | None = None     # the float model's outputs, computed once per build

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, count: int) -> dict[str, np.ndarray]:
        return {k: v[:count] for k, v in self.inputs.items()}


def load_eval(source: Any, model: Model, where: str) -> EvalData:
    """`source`: .npz/.npy path, {name: array} (labels under `y`), or one array; checked
    against the model's inputs and first output before any work."""
    if isinstance(source, (str, os.PathLike)):
        arrays = read_arrays(source, "evaluation")
    elif isinstance(source, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
    else:
        arrays = {"": np.asarray(source)}
    data = as_input_arrays(arrays, model, "evaluation data", where, allow_extra=(LABEL_KEY,))
    labels = data.pop(LABEL_KEY, None)
    inputs = data
    if labels is not None:
        labels = np.asarray(labels)
        samples = len(next(iter(inputs.values())))
        check_labels(labels, samples, model, where)
        shape = output_shape(model)
        if shape and labels.ndim == len(shape) and labels.ndim >= 2 and labels.shape[-1] > 1:
            labels = np.argmax(labels, axis=-1)   # one-hot
        labels = labels.reshape(samples, *labels.shape[1:])
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
    return EvalData(inputs, labels, where)


def run_graph(graph_def, input_names: Sequence[str], outputs: Sequence[str],
              inputs: Mapping[str, np.ndarray], ops, where: str) -> list[np.ndarray]:
    """Every output of `graph_def` on `inputs`, batch by batch, concatenated."""
    from amct_targets.simulate import free_batch_dimension
    from tensorflow.core.framework import graph_pb2

    free = graph_pb2.GraphDef()
    free.CopyFrom(graph_def)
    runner = GraphRunner(free_batch_dimension(free), list(input_names),
                         [tensor_name(o) for o in outputs], ops=ops, where=where)
    total = len(next(iter(inputs.values())))
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, total, EVAL_BATCH):
        batch = [np.asarray(inputs[name])[start:start + EVAL_BATCH] for name in input_names]
        for index, value in enumerate(runner(*batch)):
            parts[index].append(value)
    return [np.concatenate(p) for p in parts]


def model_outputs(model: Model, data: EvalData, ops) -> list[np.ndarray]:
    """The float model's outputs on the evaluation set (computed once, then cached)."""
    if data.reference is None:
        data.reference = run_graph(model.graph_def, model.input_names, model.outputs,
                                   data.inputs, ops, model.source)
    return data.reference


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def compare(names: Sequence[str], reference: Sequence[np.ndarray],
            compressed: Sequence[np.ndarray], labels: np.ndarray | None) -> dict:
    """The `evaluation` section from float and compressed outputs (same order as `names`).
    An identical output has SQNR null (infinite) and `identical: true`."""
    outputs = {}
    for name, ref, got in zip(names, reference, compressed):
        cosine, sqnr = similarity(ref, got)
        entry: dict[str, Any] = {"top1_agreement": None, "sqnr_db": _finite(sqnr),
                                 "cosine": float(cosine)}
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            entry["top1_agreement"] = float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1)))
        if not math.isfinite(sqnr):
            entry["identical"] = True
        outputs[name] = entry
    result = {"samples": int(len(reference[0])) if reference else 0,
              "labels": labels is not None, "float": {"top1": None},
              "compressed": {"top1": None}, "outputs": outputs}
    if labels is not None and reference and reference[0].ndim >= 2:
        result["float"]["top1"] = top1(reference[0], labels)
        result["compressed"]["top1"] = top1(compressed[0], labels)
    return result


def evaluate_build(float_model: Model, compressed: Model, data: EvalData, ops) -> dict:
    """The report's `evaluation` section; a failure is recorded in it (`error`), never raised:
    a metric does not kill a build."""
    try:
        reference = model_outputs(float_model, data, ops)
        got = run_graph(compressed.graph_def, compressed.input_names, compressed.outputs,
                        data.inputs, ops, compressed.source)
        return compare(list(float_model.outputs), reference, got, data.labels)
    except Exception as exc:  # noqa: BLE001 - a report metric never kills a build
        return {"samples": data.samples, "labels": data.labels is not None,
                "error": f"evaluation failed: {describe(exc)}"}


def summary_line(evaluation: Mapping[str, Any]) -> str:
    """One line for the CLI: samples, top-1 float -> compressed, the worst output's fidelity."""
    if evaluation.get("error"):
        return f"evaluation: {evaluation['error']}"
    parts = [f"{evaluation.get('samples', 0)} samples"]
    before, after = (evaluation.get("float") or {}).get("top1"), \
        (evaluation.get("compressed") or {}).get("top1")
    if before is not None and after is not None:
        parts.append(f"top-1 {before * 100:.2f}% -> {after * 100:.2f}% "
                     f"({(after - before) * 100:+.2f} points)")
    outputs = list((evaluation.get("outputs") or {}).values())
    agreements = [o["top1_agreement"] for o in outputs if o.get("top1_agreement") is not None]
    if agreements:
        parts.append(f"agreement {min(agreements) * 100:.2f}%")
    if outputs:
        parts.append(f"cosine {min(o['cosine'] for o in outputs):.6f}")
        sqnrs = [o["sqnr_db"] for o in outputs if o.get("sqnr_db") is not None]
        parts.append(f"SQNR {min(sqnrs):.1f} dB" if sqnrs else "SQNR inf (identical)")
    return "evaluation: " + "; ".join(parts)


def auto_calibration_line(section: Mapping[str, Any]) -> str:
    """One line for the CLI: the budget, met or not, what the cures and the search did."""
    text = section.get("budget_text", "budget")
    if section.get("met") is None:
        return f"accuracy ({text}): {section.get('error') or section.get('note') or 'not judged'}"
    kept = [c["name"] for c in section.get("cures", []) if c.get("kept")]
    fallback = section.get("fallback_layers", [])
    parts = [f"accuracy ({text}): {'met' if section['met'] else 'MISSED'}"]
    if kept:
        parts.append(f"cures kept: {', '.join(kept)}")
    if fallback:
        parts.append(f"{len(fallback)} layer(s) kept float: "
                     + ", ".join(f["layer"] for f in fallback[:5])
                     + (", ..." if len(fallback) > 5 else ""))
    return "; ".join(parts)
