"""`accuracy_based_auto_calibration`: quantize, and keep the most sensitive layers in float
until the user's `metric_eval` accepts the model.

1. The float model's metric: `evaluator.evaluate` on the imported `model_file`.
2. Calibration: `quantize_model` on a fresh import, `evaluator.calibration` runs the batches
   and so writes `record_file`; the first batch's model inputs are kept for step 4.
3. Every layer quantized: `save_model`, `evaluator.evaluate` on the deploy graph.
4. Sensitivity ('CosineSimilarity'): per layer, 0.5 + 0.5 * cos(float output, output with
   only that layer quantized), on the kept inputs; ranked least similar first.
5. If step 3 failed, accuracy/search.py's binary search (shared with the build's accuracy budget) ('BinarySearch') over how
   many of the most sensitive layers stay float, each trial a deploy model evaluated by the
   evaluator.

Writes, as AMCT: `<save_dir>_quantized.pb` and `_quant.json`, and beside them
`accuracy_based_auto_calibration_final_config.json` (config_file with quant_enable false on
the float layers) and `accuracy_based_auto_calibration_ranking_information.json` ([[layer,
similarity], ...] ascending); `./amct_log/accuracy_based_auto_calibration_record.json`, a JSON
list of the trials, each {"roll_back_config": {layer: quantized?}, "metric_eval": [ok, loss]}
(AMCT writes the same objects one after another, which json.load cannot read).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from amct_targets.amct_tensorflow import analysis
from amct_targets.amct_tensorflow.calibration import quantize_model
from amct_targets.amct_tensorflow.common.auto_calibration import AutoCalibrationEvaluatorBase
from amct_targets.amct_tensorflow.log import LOG_DIR, LOGGER, fail
from amct_targets.amct_tensorflow.quant_config import read_quant_config
from amct_targets.amct_tensorflow.record import read_record, write_record
from amct_targets.amct_tensorflow.save import layer_quants, write_deploy_model
from amct_targets.errors import ConfigError
from amct_targets.graph.load import read_graph_def
from amct_targets.graph.model import node_name
from amct_targets.accuracy.search import search_fallback
from amct_targets.quant.int8 import layer_output, similarity
from amct_targets.quant.rewrite import quantize_graph

RANKING_FILE = "accuracy_based_auto_calibration_ranking_information.json"
FINAL_CONFIG_FILE = "accuracy_based_auto_calibration_final_config.json"
HISTORY_FILE = "accuracy_based_auto_calibration_record.json"


def _import(graph_def):
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    return graph


def _metric_eval(evaluator, original, new, what: str) -> tuple[bool, float]:
    result = evaluator.metric_eval(original, new)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise fail(ConfigError(f"evaluator.metric_eval returned {result!r:.80} for {what}; it "
                               "must return (bool: requirement met, float: loss)"))
    return bool(result[0]), float(result[1])


def _capture_inputs(graph, layers: list[str]) -> dict:
    """Keep the first batch fed to the model's placeholders while calibration runs."""
    import tensorflow as tf

    kept: dict = {}
    placeholders = [op for op in graph.get_operations() if op.type == "Placeholder"]
    with graph.as_default():
        for op in placeholders:
            def keep(value, name=op.name):
                kept.setdefault(name, np.array(value))
                return np.int64(0)
            capture = tf.numpy_function(keep, [op.outputs[0]], tf.int64, stateful=True,
                                        name=f"{op.name}/amct_keep_batch")
            for layer in layers:
                graph.get_operation_by_name(layer)._add_control_input(capture.op)
    return kept


def _run(graph_def, batch: dict, fetches: list[str]) -> list[np.ndarray]:
    """Run `graph_def` (Ascend ops expanded) in a tf.compat.v1 Session: works whether the
    user's script runs eagerly or has disabled eager execution."""
    import tensorflow as tf

    from amct_targets.graph.run import expand_custom_ops

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(expand_custom_ops(graph_def, analysis.ops()), name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetches, {f"{k}:0": v for k, v in batch.items()})


def layer_sensitivity(model, quants, batch: dict) -> dict[str, float]:
    """{layer: 0.5 + 0.5 cos(float output, output with only this layer quantized)}."""
    from amct_targets.graph.pattern import GraphIndex

    index = GraphIndex(model.graph_def)
    names = [layer_output(index, q.layer) for q in quants]
    reference = dict(zip(names, _run(model.graph_def, batch, names)))
    result = {}
    for q, name in zip(quants, names):
        single, _ = quantize_graph(model, [q])
        value = _run(single.graph_def, batch, [f"{q.layer.name}/ascend_dequant:0"])[0]
        cosine, _ = similarity(reference[name], value)
        result[q.layer.name] = 0.5 + 0.5 * cosine
    return result


def accuracy_based_auto_calibration(model_file, outputs, record_file, config_file, save_dir,
                                    evaluator, strategy="BinarySearch",
                                    sensitivity="CosineSimilarity"):
    """AMCT's accuracy-based automatic calibration (see the module docstring)."""
    if not isinstance(evaluator, AutoCalibrationEvaluatorBase):
        raise fail(ConfigError("evaluator must be an instance of a subclass of amct_targets."
                               "amct_tensorflow.common.auto_calibration."
                               "AutoCalibrationEvaluatorBase"))
    if strategy != "BinarySearch":
        raise fail(ConfigError(f"strategy={strategy!r}: only 'BinarySearch' is supported"))
    if sensitivity != "CosineSimilarity":
        raise fail(ConfigError(f"sensitivity={sensitivity!r}: only 'CosineSimilarity' is "
                               "supported"))
    outputs = [node_name(getattr(o, "name", o)) for o in outputs]
    tensors = [f"{o}:0" for o in outputs]
    graph_def = read_graph_def(model_file)
    config = read_quant_config(config_file)
    original = evaluator.evaluate(_import(graph_def), tensors)
    if not _metric_eval(evaluator, original, original, "the original model")[0]:
        raise fail(ConfigError("metric_eval(original, original) does not meet the requirement; "
                               "check the evaluator's metric_eval()"))
    calib_graph = _import(graph_def)
    quantize_model(calib_graph, config_file, record_file)
    layers = [name for name, value in config.items() if isinstance(value, dict)
              and value.get("quant_enable", True)]
    kept = _capture_inputs(calib_graph, [n for n in layers if n in
                                         {op.name for op in calib_graph.get_operations()}])
    evaluator.calibration(calib_graph, tensors)
    if not Path(record_file).exists():
        raise fail(ConfigError(f"evaluator.calibration did not finish the calibration: the "
                               f"record file {record_file} was not written; it must run "
                               f"batch_num={config.get('batch_num', 1)} batches through the "
                               "outputs after global_variables_initializer"))
    records = read_record(record_file)
    save_dir = str(save_dir)
    folder = Path(save_dir).parent
    write_deploy_model(model_file, outputs, record_file, save_dir, "auto calibration")
    quant_graph = read_graph_def(Path(f"{save_dir}_quantized.pb"), importable=False)
    global_metric = evaluator.evaluate(_import(quant_graph), tensors)
    global_ok, global_loss = _metric_eval(evaluator, original, global_metric, "all layers")
    LOGGER.logi(f"all {len(records)} layer(s) quantized -> metric_eval ({global_ok}, "
                f"{global_loss:.6g})")
    model = analysis.analysis_model(graph_def, outputs,
                                    skip_fusion={k for k, r in records.items() if r.skip_fusion})
    quants = layer_quants(model, records, f"record file {record_file}")
    ranking = layer_sensitivity(model, quants, kept)
    ranked = sorted(ranking, key=lambda name: ranking[name])
    history = [{"roll_back_config": {name: True for name in records},
                "metric_eval": [global_ok, global_loss]}]
    saved_metric, float_layers = global_metric, ()
    if not global_ok:
        scratch = Path(tempfile.mkdtemp(prefix="amct_auto_calibration_", dir=folder))
        metrics = {}

        def evaluate(float_set):
            subset = {k: v for k, v in records.items() if k not in float_set}
            record = scratch / "record.txt"
            write_record(record, subset)
            prefix = scratch / f"trial{len(metrics)}"
            write_deploy_model(model_file, outputs, str(record), str(prefix), "auto calibration",
                               verbose=False)
            graph = _import(read_graph_def(Path(f"{prefix}_quantized.pb"), importable=False))
            metric = evaluator.evaluate(graph, tensors)
            ok, loss = _metric_eval(evaluator, original, metric, f"{len(float_set)} float layers")
            metrics[frozenset(float_set)] = metric
            history.append({"roll_back_config": {n: n not in float_set for n in records},
                            "metric_eval": [ok, loss]})
            LOGGER.logi(f"fine search: {len(float_set)} layer(s) in float -> metric_eval "
                        f"({ok}, {loss:.6g})")
            return ok, loss

        try:
            search = search_fallback(ranked, lambda layers: evaluate(frozenset(layers)),
                                     initial=(False, math.inf), try_all=False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        float_layers = search.float_layers
        if not search.ok:
            _write_reports(folder, ranking, history, None, config)
            for suffix in ("_quantized.pb", "_quant.json"):
                Path(f"{save_dir}{suffix}").unlink(missing_ok=True)
            LOGGER.logi(f"Accuracy of original model is {original}")
            LOGGER.logi(f"Accuracy of global quantized model is {global_metric}")
            LOGGER.logi("No quantized model are generated due to all quant layers are roll "
                        "backed, the accuracy target may be too difficult to achieve.")
            return
        saved_metric = metrics[frozenset(float_layers)]
        final = {k: v for k, v in records.items() if k not in float_layers}
        final_record = folder / "record_final.txt"
        write_record(final_record, final)
        write_deploy_model(model_file, outputs, str(final_record), save_dir,
                           "auto calibration")
        final_record.unlink()
    _write_reports(folder, ranking, history, set(float_layers), config)
    LOGGER.logi(f"Accuracy of original model is {original}")
    LOGGER.logi(f"Accuracy of global quantized model is {global_metric}")
    LOGGER.logi(f"Accuracy of saved model is {saved_metric}")
    LOGGER.logi(f"Layers kept in float: {list(float_layers)}")
    LOGGER.logi(f"The generated model is stored in dir: {folder}")
    LOGGER.logi(f"The records file is stored in dir: {Path(record_file).parent}")


def _write_reports(folder: Path, ranking, history, float_layers, config) -> None:
    ordered = sorted(ranking.items(), key=lambda item: item[1])
    (folder / RANKING_FILE).write_text(json.dumps([[k, v] for k, v in ordered], indent=4) + "\n",
                                       encoding="utf-8")
    log_dir = Path.cwd() / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / HISTORY_FILE).write_text(json.dumps(history, indent=4) + "\n", encoding="utf-8")
    if float_layers is not None:
        final = json.loads(json.dumps(config))
        for name in ranking:
            if isinstance(final.get(name), dict):
                final[name]["quant_enable"] = name not in float_layers
        (folder / FINAL_CONFIG_FILE).write_text(json.dumps(final, indent=4) + "\n",
                                                encoding="utf-8")
