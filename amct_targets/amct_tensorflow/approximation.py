"""AMCT's approximate calibration (Softmax -> FastSoftmax, ASCEND_FACTS 6) in the user's graph.

`create_approximation_calibrator(graph, config_defination=None)` gives every float32
Softmax a `tf.numpy_function` on its input (a control input of the Softmax), which folds the
rows into a bounded uniform sample (approx/sample.py). The user runs the calibration data
through the model. `save_approximation_graph(graph, outputs, save_path, config_defination)`
fits FastSoftmax's (a, b, clip_value) per layer on the sample (approx/fit.py), writes the
graph cut to `outputs` without the dump ops and with each Softmax replaced under the same
name to `<save_path>_approximation.pb`.

config_defination: a .cfg with `batch_num` and `skip_approximation_layers` (Softmax names).
"""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from amct_targets.amct_tensorflow import prototext
from amct_targets.amct_tensorflow.log import LOGGER, fail
from amct_targets.amct_tensorflow.quant_config import _graph_def
from amct_targets.approx.fit import fit_fast_softmax
from amct_targets.approx.ops import fast_softmax_node
from amct_targets.approx.sample import SoftmaxRowSample
from amct_targets.errors import ConfigError
from amct_targets.graph.model import node_name

DUMP_SUFFIX = "/amct_approximation_dump"
_SAMPLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _skip_layers(config_defination) -> set[str]:
    if config_defination is None:
        return set()
    path = Path(config_defination)
    where = f"config_defination {path}"
    try:
        fields = prototext.parse(path.read_text(encoding="utf-8"), where)
    except OSError as exc:
        raise fail(ConfigError(f"{where}: cannot read it ({exc.strerror or exc})")) from None
    unknown = sorted(set(fields) - {"batch_num", "skip_approximation_layers"})
    if unknown:
        raise fail(ConfigError(f"{where}: field '{unknown[0]}' is not an approximation option "
                               "(known: batch_num, skip_approximation_layers)"))
    return {str(v) for v in fields.get("skip_approximation_layers", [])}


def _softmaxes(graph, skip: set[str]) -> list:
    import tensorflow as tf

    found = [op for op in graph.get_operations() if op.type == "Softmax"]
    names = {op.name for op in found}
    for name in skip - names:
        raise fail(ConfigError(f"skip_approximation_layers: '{name}' is not a Softmax of the "
                               f"graph (its Softmax nodes: {sorted(names)[:5]})"))
    return [op for op in found if op.name not in skip and op.inputs[0].dtype == tf.float32]


def create_approximation_calibrator(graph, config_defination=None) -> None:
    """Insert the dump ops that sample every Softmax's input (see the module docstring)."""
    import tensorflow as tf

    _graph_def(graph, "create_approximation_calibrator")
    skip = _skip_layers(config_defination)
    samples = _SAMPLES.setdefault(graph, {})
    with graph.as_default():
        for op in _softmaxes(graph, skip):
            if op.name in samples:
                continue
            x = op.inputs[0]
            sample = SoftmaxRowSample(int(x.shape[-1]), seed_name=op.name)
            samples[op.name] = sample

            def dump(value, sample=sample):
                sample.update(value)
                return np.int64(sample.rows_seen)
            dumped = tf.numpy_function(dump, [x], tf.int64, stateful=True,
                                       name=f"{op.name}{DUMP_SUFFIX}")
            op._add_control_input(dumped.op)
    LOGGER.logi(f"create_approximation_calibrator: {len(samples)} Softmax layer(s) will be "
                "sampled; run the calibration data through the model, then call "
                "save_approximation_graph")


def save_approximation_graph(graph, outputs, save_path, config_defination=None) -> None:
    """Fit FastSoftmax per sampled Softmax and write `<save_path>_approximation.pb`."""
    import tensorflow as tf

    graph_def = _graph_def(graph, "save_approximation_graph")
    samples = _SAMPLES.get(graph, {})
    skip = _skip_layers(config_defination)
    if not samples:
        raise fail(ConfigError("save_approximation_graph: this graph has no approximation "
                               "calibrator; call create_approximation_calibrator(graph) and "
                               "run the calibration data first"))
    names = [node_name(getattr(o, "name", o)) for o in ([outputs] if isinstance(outputs, str)
                                                         else outputs)]
    dumps = {f"{name}{DUMP_SUFFIX}" for name in samples}
    params = {}
    for name, sample in samples.items():
        if name in skip:
            continue
        if not len(sample.rows):
            raise fail(ConfigError(f"Softmax '{name}': no calibration data reached it; run the "
                                   "calibration batches through the outputs before "
                                   "save_approximation_graph"))
        params[name] = fit_fast_softmax(sample.rows).params
        LOGGER.logi(f"{name}: FastSoftmax a={params[name].a:.6g} b={params[name].b:.6g} "
                    f"clip_value={params[name].clip_value:.6g}")
    for node in graph_def.node:
        del_inputs = [i for i in node.input if i.startswith("^") and i[1:] in dumps]
        for inp in del_inputs:
            node.input.remove(inp)
        if node.name in params:
            replacement = fast_softmax_node(node.name, list(node.input), params[node.name])
            replacement.device = node.device
            node.CopyFrom(replacement)
    try:
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, names)
    except (AssertionError, ValueError) as exc:
        raise fail(ConfigError(f"save_approximation_graph: outputs {names}: {exc}")) from None
    prefix = Path(str(save_path))
    path = prefix.parent / f"{prefix.name}_approximation.pb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph_def.SerializeToString(deterministic=True))
    LOGGER.logi(f"{len(params)} Softmax layer(s) replaced by FastSoftmax; the model is {path}")
