"""Calibration and training data: read `.npz`/`.npy` (nothing unpickled) or Python objects, and
check them against the model's inputs before any work."""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from amct_targets.errors import ConfigError
from amct_targets.graph.model import Model, TensorSpec
from amct_targets.safe_io import read_array_file

LABEL_KEY = "y"


def read_arrays(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz (by key) or .npy (key ''): a regular file whose array headers fit
    its size, without object dtypes (nothing unpickled)."""
    return read_array_file(path, what, ConfigError)


def as_input_arrays(source: Any, model: Model, what: str, where: str,
                    allow_extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Map data to the model's inputs, checking shape, dtype and finiteness.

    `source`: path, array, {name: array}. A single-input model accepts any one key.
    """
    if isinstance(source, (str, os.PathLike)):
        arrays = read_arrays(source, what)
    elif isinstance(source, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
    elif isinstance(source, np.ndarray) or not hasattr(source, "__iter__"):
        arrays = {"": np.asarray(source)}
    else:
        arrays = _concat_batches(source, what, where)
    extras = {k: arrays.pop(k) for k in allow_extra if k in arrays}
    specs = list(model.inputs)
    if len(specs) == 1 and len(arrays) == 1:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    names = {s.name for s in specs}
    unknown = sorted(set(arrays) - names)
    missing = sorted(names - set(arrays))
    if unknown or missing:
        raise ConfigError(f"{where}: {what} keys {sorted(arrays)} do not match the model's "
                          f"inputs {sorted(names)}" + (f"; missing {missing}" if missing else ""))
    result = {spec.name: _check_array(arrays[spec.name], spec, what, where) for spec in specs}
    lengths = {len(a) for a in result.values()}
    if len(lengths) > 1:
        raise ConfigError(f"{where}: {what} arrays have different sample counts {sorted(lengths)}")
    result.update(extras)
    return result


def _concat_batches(batches, what: str, where: str) -> dict[str, np.ndarray]:
    """Batches from an iterable or tf.data.Dataset: arrays, or {name: array} each."""
    collected: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        items = batch.items() if isinstance(batch, Mapping) else [("", batch)]
        for key, value in items:
            collected.setdefault(str(key), []).append(np.asarray(value))
    if not collected:
        raise ConfigError(f"{where}: the {what} iterable yielded no batches")
    return {key: np.concatenate(parts) for key, parts in collected.items()}


def _check_array(array: np.ndarray, spec: TensorSpec, what: str, where: str) -> np.ndarray:
    label = f"{where}: {what} for input '{spec.name}'"
    if array.dtype.kind not in "biuf":
        raise ConfigError(f"{label}: dtype {array.dtype} is not numeric")
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise ConfigError(f"{label}: shape {array.shape} has rank {array.ndim}; the input "
                              f"expects ({spec.shape_text()}) with the batch dimension first")
        for got, want in zip(array.shape[1:], spec.shape[1:]):
            if want is not None and got != want:
                raise ConfigError(f"{label}: shape {array.shape} does not fit the input's "
                                  f"({spec.shape_text()})")
    if len(array) == 0:
        raise ConfigError(f"{label}: no samples")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ConfigError(f"{label}: {bad} value(s) are NaN or infinite; clean the data")
    if np.dtype(spec.dtype).kind in "iub":
        return _as_integer(array, np.dtype(spec.dtype), label)
    return array.astype(spec.dtype) if spec.dtype in ("float16", "float32", "float64") else array


def _as_integer(array: np.ndarray, dtype: np.dtype, label: str) -> np.ndarray:
    """Token ids, masks, segment ids: fed as they are, never scaled or calibrated as floats;
    only whole values that the input's integer dtype holds."""
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ConfigError(f"{label}: the input is {dtype.name} but the data holds fractions; "
                          f"store whole numbers (ids, masks) as integers")
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise ConfigError(f"{label}: values {low}..{high} do not fit the input's "
                              f"{dtype.name}")
    return array.astype(dtype)


def load_training(source: Any, model: Model, where: str) -> dict[str, np.ndarray]:
    """Training data: the model's inputs plus labels under key `y`, checked against the
    model's first output (what the retraining loss compares them with) before any work."""
    if isinstance(source, (str, os.PathLike)):
        arrays = read_arrays(source, "training")
    elif isinstance(source, Mapping):
        arrays = dict(source)
    else:
        return source  # a tf.data.Dataset or iterable is taken as it is
    if LABEL_KEY not in arrays:
        raise ConfigError(f"{where}: training data has no labels; store them under key "
                          f"'{LABEL_KEY}' beside the inputs")
    data = as_input_arrays(arrays, model, "training data", where, allow_extra=(LABEL_KEY,))
    first = next(v for k, v in data.items() if k != LABEL_KEY)
    check_labels(np.asarray(data[LABEL_KEY]), len(first), model, where)
    return data


def check_labels(labels: np.ndarray, samples: int, model: Model, where: str) -> None:
    """Labels are numeric, one per sample, finite, and fit the first output: either its shape
    (one-hot or regression targets) or class indices in [0, classes)."""
    label = f"{where}: labels '{LABEL_KEY}'"
    if labels.dtype.kind not in "biuf":
        raise ConfigError(f"{label}: dtype {labels.dtype} is not numeric; store class indices "
                          "as integers (or one-hot/target values as floats)")
    if labels.ndim == 0 or len(labels) != samples:
        count = 1 if labels.ndim == 0 else len(labels)
        raise ConfigError(f"{where}: {count} labels for {samples} samples")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise ConfigError(f"{label}: NaN or infinite values; clean the labels")
    shape = output_shape(model)
    if not shape:
        return  # rank unknown (or a scalar output): nothing to compare against
    output, given, wanted = model.outputs[0], labels.shape[1:], shape[1:]
    if _fits(given, wanted):
        return
    index_shapes = (wanted[:-1], wanted[:-1] + (1,)) if wanted and wanted[-1] != 1 else ()
    if any(_fits(given, candidate) for candidate in index_shapes):
        classes = wanted[-1]
        if labels.dtype.kind == "f" and not np.all(labels == np.floor(labels)):
            raise ConfigError(f"{label}: shape {labels.shape} means class indices, but some "
                              "values are not whole numbers")
        if classes is not None:
            bad = np.flatnonzero((labels < 0) | (labels >= classes))
            if bad.size:
                index = np.unravel_index(bad[0], labels.shape)
                raise ConfigError(
                    f"{label}: {bad.size} label(s) outside [0, {classes}) (e.g. "
                    f"{labels[index]} at index {index[0]}); the model's output '{output}' has "
                    f"{classes} classes")
        return
    expected = ", ".join(str(d if d is not None else "?") for d in wanted)
    raise ConfigError(f"{label}: shape {labels.shape} fits neither class indices nor the "
                      f"model's output '{output}' of shape (N, {expected})")


def _fits(given: tuple, wanted: tuple) -> bool:
    return len(given) == len(wanted) and all(w is None or g == w for g, w in zip(given, wanted))


def output_shape(model: Model) -> tuple[int | None, ...] | None:
    """Static shape of the model's first output, by TensorFlow's shape inference."""
    import tensorflow as tf

    try:
        with tf.Graph().as_default() as graph:
            tf.compat.v1.import_graph_def(model.graph_def, name="")
            shape = graph.get_tensor_by_name(model.outputs[0]).shape
    except (ValueError, KeyError, TypeError, IndexError, tf.errors.OpError):
        return None
    return None if shape.rank is None else tuple(shape.as_list())
