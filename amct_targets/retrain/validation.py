"""What retraining measures itself against: a validation set, a metric, the loss's input.

- The validation set is the one passed in (`TrainingData.validation`, e.g. `--eval` data with
  labels) or a deterministic, class-stratified split of the training arrays
  (`validation_split`, `seed`). A `tf.data.Dataset` without one gives up its first batches.
- The metric is top-1 when the labels are class indices or one-hot rows of a multi-class
  output, else the validation loss (lower is better).
- `from_logits` is read from the graph: an output produced by Softmax (through Identity,
  Reshape, Squeeze) holds probabilities; anything else is taken as logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from amct_targets.graph.model import Model, node_name

LABEL_KEY = "y"
PASS_THROUGH = ("Identity", "Reshape", "Squeeze", "ExpandDims", "IdentityN", "StopGradient",
                "CheckNumerics", "Snapshot")
PROBABILITY_OPS = ("Softmax",)


def output_producer(model: Model) -> str | None:
    """The op type that computes the first output, looked through pass-through ops."""
    nodes = {n.name: n for n in model.graph_def.node}
    node = nodes.get(node_name(model.outputs[0]))
    for _ in range(64):
        if node is None or node.op not in PASS_THROUGH or not node.input:
            break
        node = nodes.get(node_name(node.input[0]))
    return node.op if node is not None else None


def resolve_from_logits(model: Model, opts: Mapping[str, Any]) -> tuple[bool, str, str | None]:
    """(from_logits, a note for the report, a warning when the user's value contradicts the
    graph). An explicit `from_logits` wins; unset, the graph decides."""
    op = output_producer(model)
    inferred = op not in PROBABILITY_OPS
    output = node_name(model.outputs[0])
    seen = (f"output '{output}' is computed by {op}: "
            + ("probabilities" if not inferred else "logits (no Softmax at the output)"))
    if opts.get("loss") == "mse":
        return bool(opts.get("from_logits") or False), "loss mse: from_logits unused", None
    if "from_logits" in opts.get("explicit", ()) and opts.get("from_logits") is not None:
        given = bool(opts["from_logits"])
        if given == inferred:
            return given, f"from_logits {str(given).lower()} (set in the config; {seen})", None
        return given, f"from_logits {str(given).lower()} (set in the config)", (
            f"from_logits: {str(given).lower()} contradicts the graph: {seen}, so the loss "
            f"expects from_logits: {str(inferred).lower()}; remove the option unless the "
            "graph's output really is something else")
    return inferred, f"from_logits {str(inferred).lower()} (inferred: {seen})", None


@dataclass
class Split:
    """Training and validation arrays ({input: array, "y": labels}) and where they came from."""

    train: Any                  # a mapping of arrays or a tf.data.Dataset
    validation: Any             # a mapping of arrays, a tf.data.Dataset, or None
    source: str                 # how the validation set was obtained, for the report
    samples: int | None         # validation samples (None: unknown)


def _take(data: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[rows] for k, v in data.items()}


def split_training(data: Any, validation: Any, fraction: float, seed: int,
                   batch_size: int) -> Split:
    """The training data minus a validation part, or the data and the given validation set."""
    if validation is not None:
        count = len(validation[LABEL_KEY]) if isinstance(validation, Mapping) else None
        return Split(data, validation, "the validation data passed in", count)
    if isinstance(data, Mapping):
        labels = np.asarray(data[LABEL_KEY])
        rng = np.random.default_rng(seed)
        if labels.ndim == 1 and labels.dtype.kind in "iub":
            classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        else:
            classes = [np.arange(len(labels))]
        held = []
        for rows in classes:
            count = int(round(fraction * len(rows)))
            held.append(rng.permutation(rows)[:count])
        held_rows = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
        if len(held_rows) == 0 or len(held_rows) == len(labels):
            return Split(data, None, f"none ({len(labels)} samples are too few to split)", None)
        keep = np.setdiff1d(np.arange(len(labels)), held_rows)
        return Split(_take(data, keep), _take(data, held_rows),
                     f"{fraction:g} of the training data (stratified, seed {seed})",
                     int(len(held_rows)))
    batches = int(data.cardinality()) if hasattr(data, "cardinality") else -1
    if batches < 2:
        return Split(data, None, "none (a dataset of unknown length; pass validation data)",
                     None)
    held = max(1, int(round(fraction * batches)))
    return Split(data.skip(held), data.take(held),
                 f"the first {held} of {batches} batches of the training dataset", None)


def is_classification(labels: np.ndarray | None, output_shape) -> bool:
    """Top-1 makes sense: class indices, or one-hot rows, of an output with several classes."""
    classes = output_shape[-1] if output_shape else None
    if classes is not None and classes < 2:
        return False
    if labels is None:
        return classes is not None
    if labels.dtype.kind in "iub":
        return True
    return labels.ndim >= 2 and classes is not None and labels.shape[-1] == classes and bool(
        np.all((labels == 0) | (labels == 1)))


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose largest output is the label (class index or one-hot row)."""
    predicted = np.argmax(outputs, axis=-1)
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and labels.shape == outputs.shape and outputs.shape[-1] > 1:
        labels = np.argmax(labels, axis=-1)
    return float(np.mean(predicted == labels.reshape(predicted.shape)))
