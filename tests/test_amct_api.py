"""amct_targets.amct_tensorflow in-process on small tf.compat.v1 graphs: calibration numbers
against the reference algorithms, the simple .cfg config, AMCT's FAQ errors, logging levels,
approximate calibration, QAT conversion, and the shared float-fallback search."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
amct = pytest.importorskip("amct_targets.amct_tensorflow")

from amct_targets.amct_tensorflow.record import LayerRecord, read_record, write_record  # noqa
from amct_targets.approx.kernel import ref_fast_softmax  # noqa: E402
from amct_targets.calibration.arq import arq  # noqa: E402
from amct_targets.calibration.ifmr import ifmr_exact  # noqa: E402
from amct_targets.errors import ConfigError  # noqa: E402
from amct_targets.accuracy.search import search_fallback  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """AMCT writes ./amct_log/ in the working directory: keep it out of the checkout."""
    monkeypatch.chdir(tmp_path)
W1 = RNG.normal(size=(8, 6)).astype(np.float32)
B1 = RNG.normal(size=6).astype(np.float32)
W2 = RNG.normal(size=(6, 3)).astype(np.float32)


def mlp_graph_def(softmax: bool = False):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="x")
        h = tf.nn.bias_add(tf.matmul(x, tf.constant(W1), name="fc1"), tf.constant(B1),
                           name="fc1/BiasAdd")
        h = tf.nn.relu(h, name="relu")
        y = tf.matmul(h, tf.constant(W2), name="fc2")
        if softmax:
            tf.nn.softmax(y * 3.0, name="prob")
    return graph.as_graph_def()


def imported(graph_def):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    return graph


def calibrate(tmp_path, batches, **config):
    graph = imported(mlp_graph_def())
    amct.create_quant_config(str(tmp_path / "config.json"), graph, batch_num=len(batches),
                             **config)
    variables = amct.quantize_model(graph, str(tmp_path / "config.json"),
                                    str(tmp_path / "record.txt"))
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.variables_initializer(variables))
        for batch in batches:
            sess.run("fc2:0", {"x:0": batch})
        counts = sess.run(variables)
    return graph, counts


def test_quantize_model_writes_the_reference_algorithms_numbers(tmp_path):
    batches = [RNG.normal(size=(16, 8)).astype(np.float32) for _ in range(3)]
    graph, counts = calibrate(tmp_path, batches)
    assert list(counts) == [3, 3]
    record = read_record(tmp_path / "record.txt")
    assert set(record) == {"fc1", "fc2"}
    expected = ifmr_exact(np.concatenate(batches))
    assert record["fc1"].offset_d == expected.offset
    assert math.isclose(record["fc1"].scale_d, expected.scale, rel_tol=0.02)
    assert np.allclose(record["fc1"].scale_w, arq(W1, None).scale, rtol=1e-7)
    with tf.compat.v1.Session(graph=graph) as sess:   # the outputs stay float
        sess.run(tf.compat.v1.global_variables_initializer())
        x = batches[0]
        out = sess.run("fc2:0", {"x:0": x})
    assert np.allclose(out, np.maximum(x @ W1 + B1, 0) @ W2, atol=1e-4)


def test_save_model_round_trips_through_stock_tensorflow(tmp_path):
    batches = [RNG.normal(size=(32, 8)).astype(np.float32)]
    calibrate(tmp_path, batches)
    pb = tmp_path / "model.pb"
    pb.write_bytes(mlp_graph_def().SerializeToString())
    amct.save_model(str(pb), ["fc2"], str(tmp_path / "record.txt"), str(tmp_path / "out/m"))
    deploy = tf.compat.v1.GraphDef()
    deploy.ParseFromString((tmp_path / "out" / "m_quantized.pb").read_bytes())
    assert sum(n.op == "AscendQuant" for n in deploy.node) == 2
    with tf.compat.v1.Session(graph=imported(deploy)) as sess:
        out = sess.run("fc2:0", {"x:0": batches[0]})     # the output keeps its name
    ref = np.maximum(batches[0] @ W1 + B1, 0) @ W2
    assert np.max(np.abs(out - ref)) < 0.05 * np.max(np.abs(ref))
    mapping = json.loads((tmp_path / "out" / "m_quant.json").read_text())
    assert mapping == {"fc1/ascend_quant": "x", "fc1/ascend_dequant": "fc1/BiasAdd",
                       "fc2/ascend_quant": "relu", "fc2": "fc2"}


def test_simple_cfg_config_sets_algorithms_per_layer(tmp_path):
    cfg = tmp_path / "quant.cfg"
    cfg.write_text("""
        batch_num: 2
        activation_offset: true
        skip_layers: "fc2"
        common_config { arq_quantize { channel_wise: false }
                        hfmg_quantize { num_of_bins: 1024 asymmetric: true } }
        override_layer_configs { layer_name: "fc1"
          calibration_config { arq_quantize { channel_wise: false }
            ifmr_quantize { search_range_start: 0.8 search_range_end: 1.2 search_step: 0.02
                            max_percentile: 0.99 min_percentile: 0.99 asymmetric: false } } }
    """)
    amct.create_quant_config(str(tmp_path / "c.json"), imported(mlp_graph_def()),
                             config_defination=str(cfg))
    config = json.loads((tmp_path / "c.json").read_text())
    assert config["batch_num"] == 2 and "fc2" not in config
    act = config["fc1"]["activation_quant_params"]
    assert act["act_algo"] == "ifmr" and act["search_range"] == [0.8, 1.2]
    assert act["asymmetric"] is False and act["max_percentile"] == 0.99
    bad = tmp_path / "bad.cfg"
    bad.write_text("nuq_config { mapping_file: 'x' }")
    with pytest.raises(ConfigError, match="nuq_config.*not supported yet"):
        amct.create_quant_config(str(tmp_path / "d.json"), imported(mlp_graph_def()),
                                 config_defination=str(bad))


def test_faq_errors_are_clear_messages(tmp_path):
    pb = tmp_path / "model.pb"
    pb.write_bytes(mlp_graph_def().SerializeToString())
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="empty.txt is empty.*run exactly batch_num batches"):
        amct.save_model(str(pb), ["fc2"], str(tmp_path / "empty.txt"), str(tmp_path / "o"))
    nan = {"fc1": LayerRecord(float("nan"), 0, (0.1,) * 1, (0,))}
    write_record(tmp_path / "nan.txt", nan)
    with pytest.raises(ConfigError, match="layer 'fc1': scale nan is not a positive finite"):
        amct.save_model(str(pb), ["fc2"], str(tmp_path / "nan.txt"), str(tmp_path / "o"))
    tiny = {"fc1": LayerRecord(1e-12, 0, (1e-12,), (0,))}
    write_record(tmp_path / "tiny.txt", tiny)
    with pytest.raises(ConfigError, match="layer 'fc1': the bias quantized to int32 overflows"):
        amct.convert_model(str(pb), ["fc2"], str(tmp_path / "tiny.txt"), str(tmp_path / "o"))
    other = {"conv9": LayerRecord(0.1, 0, (0.1,), (0,))}
    write_record(tmp_path / "other.txt", other)
    with pytest.raises(ConfigError, match="layer 'conv9' of the record cannot be quantized"):
        amct.convert_model(str(pb), ["fc2"], str(tmp_path / "other.txt"), str(tmp_path / "o"))
    assert not (tmp_path / "o_quantized.pb").exists()


def test_set_logging_level_filters_console_and_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    amct.set_logging_level(print_level="error", save_level="debug")
    try:
        calibrate(tmp_path, [RNG.normal(size=(4, 8)).astype(np.float32)])
        assert "INFO - [AMCT]" not in capsys.readouterr().out
        log = (tmp_path / "amct_log" / "amct_tensorflow.log").read_text()
        assert " - DEBUG - [AMCT]:[AMCT]: calibration: tensor x:0 batch 1/1" in log
        with pytest.raises(ConfigError, match="print_level='loud'"):
            amct.set_logging_level(print_level="loud")
    finally:
        amct.set_logging_level()


def test_approximation_replaces_softmax_with_fitted_fast_softmax(tmp_path):
    graph = imported(mlp_graph_def(softmax=True))
    amct.create_approximation_calibrator(graph)
    data = RNG.normal(size=(64, 8)).astype(np.float32)
    logits_name = graph.get_operation_by_name("prob").inputs[0].name
    with tf.compat.v1.Session(graph=graph) as sess:
        for i in range(2):
            reference, logits = sess.run(["prob:0", logits_name],
                                         {"x:0": data[i * 32:(i + 1) * 32]})
    amct.save_approximation_graph(graph, ["prob"], str(tmp_path / "m"))
    approx = tf.compat.v1.GraphDef()
    approx.ParseFromString((tmp_path / "m_approximation.pb").read_bytes())
    assert [n.op for n in approx.node if n.name == "prob"] == ["FastSoftmax"]
    assert not [n for n in approx.node if "amct_approximation_dump" in n.name]
    with tf.compat.v1.Session(graph=imported(approx)) as sess:
        fast = sess.run("prob:0", {"x:0": data[32:]})
    params = {n.name: n for n in approx.node}["prob"].attr
    expected = ref_fast_softmax(logits, params["a"].f, params["b"].f, params["clip_value"].f)
    assert np.max(np.abs(fast - expected)) < 1e-6     # the op library's kernel
    assert np.max(np.abs(fast - reference)) < 0.05    # the approximation on wide logits


def test_convert_qat_model_matches_the_fake_quant_graph(tmp_path):
    w = RNG.normal(size=(3, 3, 2, 4)).astype(np.float32)
    wmax = np.abs(w).reshape(-1, 4).max(axis=0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 2], name="x")
        xq = tf.quantization.fake_quant_with_min_max_vars(x, tf.constant(-1.0),
                                                          tf.constant(2.0), name="act_fq")
        wq = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            tf.constant(w), tf.constant(-wmax), tf.constant(wmax), narrow_range=True,
            name="w_fq")
        tf.nn.relu(tf.nn.conv2d(xq, wq, 1, "SAME", name="conv"), name="out")
    pb = tmp_path / "qat.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    data = RNG.uniform(-1.5, 2.5, size=(4, 6, 6, 2)).astype(np.float32)
    with tf.compat.v1.Session(graph=graph) as sess:
        reference = sess.run("out:0", {"x:0": data})
    amct.convert_qat_model(str(pb), ["out"], str(tmp_path / "q"),
                           record_file=str(tmp_path / "r.txt"))
    record = read_record(tmp_path / "r.txt")
    assert record["conv"].offset_d == -43       # zero point 85 of [-1, 2] on 0..255, - 128
    assert np.allclose(record["conv"].scale_w, wmax / 127, rtol=1e-6)
    deploy = tf.compat.v1.GraphDef()
    deploy.ParseFromString((tmp_path / "q_quantized.pb").read_bytes())
    assert not [n for n in deploy.node if n.op.startswith("FakeQuant")]
    with tf.compat.v1.Session(graph=imported(deploy)) as sess:
        out = sess.run("out:0", {"x:0": data})
    assert np.max(np.abs(out - reference)) < 1e-4 * np.max(np.abs(reference))


def test_binary_search_fallback_finds_the_smallest_float_prefix():
    ranked = ["a", "b", "c", "d", "e", "f", "g"]
    calls = []

    def evaluate(float_layers):
        calls.append(len(float_layers))
        return len(float_layers) >= 3, 1.0 / (1 + len(float_layers))

    result = search_fallback(ranked, evaluate, initial=(False, 1.0), try_all=False)
    assert result.ok and result.float_layers == ["a", "b", "c"]
    assert calls == [3, 1, 2]         # ceil(log2(7)) trials, all float never tried
    never = search_fallback(ranked, lambda f: (False, 1.0), initial=(False, 1.0),
                            try_all=False)
    assert not never.ok and never.float_layers == ranked and len(never.history) == 3


EVALUATOR = '''
import numpy as np
import tensorflow as tf
from amct_targets.amct_tensorflow.common.auto_calibration import AutoCalibrationEvaluatorBase

DATA = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)


class MlpEvaluator(AutoCalibrationEvaluatorBase):
    def calibration(self, graph, outputs):
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(outputs, {"x:0": DATA[:32]})

    def evaluate(self, graph, outputs):
        with tf.compat.v1.Session(graph=graph) as sess:
            return float(np.mean(sess.run(outputs, {"x:0": DATA})[0]))

    def metric_eval(self, original, new):
        return abs(original - new) < 0.5, abs(original - new)
'''


def test_cli_evaluator_and_convert_commands(tmp_path, monkeypatch):
    from amct_targets.cli import main

    monkeypatch.chdir(tmp_path)
    pb = tmp_path / "model.pb"
    pb.write_bytes(mlp_graph_def().SerializeToString())
    (tmp_path / "evaluator.py").write_text(EVALUATOR)
    assert main(["amct", "calibration", "--model", str(pb), "--outputs", "fc2:0",
                 "--save_path", "auto/mlp", "--evaluator", "evaluator.py"]) == 0
    assert (tmp_path / "auto" / "mlp_quantized.pb").is_file()
    assert (tmp_path / "auto" /
            "accuracy_based_auto_calibration_ranking_information.json").is_file()
    assert (tmp_path / "amct_log" / "accuracy_based_auto_calibration_record.json").is_file()
    # convert: a float model has no fake quant node -> one clear error, exit 1
    assert main(["amct", "convert", "--model", str(pb), "--outputs", "fc2",
                 "--save_path", "q/mlp"]) == 1
    assert not (tmp_path / "q").exists()
