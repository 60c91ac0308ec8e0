"""`quantize`: INT8 PTQ in AMCT's deploy format, its record/config, simulation and report."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import amct_targets as at
from amct_targets.deploy import ascend_ops
from amct_targets.errors import ConfigError
from amct_targets.graph.load import read_graph_def


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    from amct_targets.demo import demo_paths

    pb, calib = demo_paths()
    out = tmp_path_factory.mktemp("q")
    report = at.build(pb, "ascend310", calib=calib, output_dir=out,
                      config={"passes": {"quantize": {"batch_num": 2}}})["ascend310"]
    return out / "ascend310", report


def quant_entry(report):
    return next(p for p in report["passes"] if p["name"] == "quantize")


def test_deploy_pb_uses_amct_op_types(demo_build):
    folder, report = demo_build
    graph_def = read_graph_def(folder / "digits_cnn.pb", importable=False)
    ops = [n.op for n in graph_def.node]
    quantized = [e["layer"] for e in quant_entry(report)["layers"] if e["status"] == "quantized"]
    assert len(quantized) == 4  # conv, depthwise, conv, dense of the demo
    for kind in ("AscendQuant", "AscendWeightQuant", "AscendDequant"):
        assert ops.count(kind) == 4
    nodes = {n.name: n for n in graph_def.node}
    for layer in quantized:
        weights = nodes[f"{layer}/weight_int8"]
        assert weights.attr["dtype"].type == 6  # DT_INT8
        deq = nodes[f"{layer}/deq_scale"]
        assert deq.attr["dtype"].type == 23  # DT_UINT64
        quant = nodes[f"{layer}/ascend_quant"]
        assert quant.attr["quant_bits"].i == 8
        entry = next(e for e in quant_entry(report)["layers"] if e["layer"] == layer)
        assert quant.attr["scale"].f == pytest.approx(1.0 / entry["scale_d"], rel=1e-6)
        assert quant.attr["offset"].f == entry["offset_d"]
    assert report["checks"] == []  # the ATC check accepts the Ascend ops


def test_relu6_before_ascend_quant_becomes_relu(demo_build):
    folder, report = demo_build
    graph_def = read_graph_def(folder / "digits_cnn.pb", importable=False)
    assert "Relu6" not in [n.op for n in graph_def.node]
    assert any("Relu6 before AscendQuant rewritten to Relu" in n
               for n in quant_entry(report)["notes"])


def test_simulated_int8_accuracy_on_held_out_digits(demo_build, demo_pb):
    from amct_targets.demo.make_demo import digits_split

    folder, _ = demo_build
    _, _, x_test, y_test = digits_split()
    fp32 = at.load_simulation(demo_pb)(x_test)
    int8 = at.load_simulation(folder / "digits_cnn.pb")(x_test)
    fp32_acc = np.mean(np.argmax(fp32, 1) == y_test)
    int8_acc = np.mean(np.argmax(int8, 1) == y_test)
    assert fp32_acc >= 0.97
    assert fp32_acc - int8_acc <= 0.01
    noise = np.sum((fp32 - int8) ** 2)
    assert 10 * np.log10(np.sum(fp32 ** 2) / noise) > 20.0


def test_report_gives_scales_and_per_layer_fidelity(demo_build):
    _, report = demo_build
    entry = quant_entry(report)
    assert entry["metrics"]["quantized"] == 4 and entry["metrics"]["float"] == 0
    for layer in entry["layers"]:
        assert layer["scale_d"] > 0 and -128 <= layer["offset_d"] <= 127
        assert 0 < layer["scale_w_min"] <= layer["scale_w_max"]
        assert layer["cosine"] > 0.99 and layer["sqnr_db"] > 15
    dense = next(layer for layer in entry["layers"] if layer["op"] == "MatMul")
    assert dense["channel_wise"] is False and dense["scale_w_min"] == dense["scale_w_max"]
    conv = next(layer for layer in entry["layers"] if layer["op"] == "Conv2D")
    assert conv["channel_wise"] is True


def test_record_file_matches_the_report_in_amct_text_format(demo_build):
    folder, report = demo_build
    text = (folder / "record.txt").read_text()
    blocks = re.findall(r'record \{\n  key: "([^"]+)"\n  value \{\n(.*?)\n  \}\n\}', text, re.S)
    entries = {e["layer"]: e for e in quant_entry(report)["layers"]}
    assert [key for key, _ in blocks] == list(entries)
    for key, body in blocks:
        scale_d = float(re.search(r"scale_d: (\S+)", body).group(1))
        offset_d = int(re.search(r"offset_d: (\S+)", body).group(1))
        scale_w = [float(v) for v in re.findall(r"scale_w: (\S+)", body)]
        assert scale_d == pytest.approx(entries[key]["scale_d"], rel=1e-8)
        assert offset_d == entries[key]["offset_d"]
        assert min(scale_w) == pytest.approx(entries[key]["scale_w_min"], rel=1e-8)
        assert re.findall(r"offset_w: (\S+)", body) == ["0"] * len(scale_w)


def test_amct_json_config_round_trip(demo_build, tmp_path, demo_pb, demo_calib):
    folder, report = demo_build
    config = json.loads((folder / "quant_config.json").read_text())
    assert config["version"] == 1 and config["batch_num"] == 2
    assert config["activation_offset"] is True and config["do_fusion"] is True
    layers = [k for k, v in config.items() if isinstance(v, dict)]
    first, second = layers[0], layers[1]
    assert config[first]["activation_quant_params"]["act_algo"] == "ifmr"
    assert config[first]["activation_quant_params"]["search_range"] == [0.7, 1.3]
    assert config[first]["weight_quant_params"] == {"num_bits": 8, "wts_algo": "arq_quantize",
                                                    "channel_wise": True}
    # Edit it as an AMCT user would, and feed it back as the quantize section.
    config[first]["quant_enable"] = False
    config[second]["activation_quant_params"] = {"act_algo": "hfmg", "num_of_bins": 1024}
    edited = tmp_path / "amct.json"
    edited.write_text(json.dumps(config))
    rebuilt = at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=tmp_path / "o",
                       config={"passes": {"quantize": {"amct_config": str(edited)}}})
    layers_report = {e["layer"]: e for e in quant_entry(rebuilt["ascend310"])["layers"]}
    assert layers_report[first]["status"] == "float"
    assert layers_report[first]["reason"] == "quant_enable: false in the config"
    assert layers_report[second]["act_algo"] == "hfmg"


def test_skip_layers_and_min_input_channels_leave_layers_in_float(tmp_path, demo_pb,
                                                                   demo_calib):
    report = at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=tmp_path / "o",
                      config={"passes": {"quantize": {"min_input_channels": 8}}})["ascend310"]
    layers = quant_entry(report)["layers"]
    first_conv = next(e for e in layers if e["op"] == "Conv2D")
    assert first_conv["status"] == "float"
    assert first_conv["reason"].startswith("only 1 input channel(s), below min_input_channels=8")
    skip = [e["layer"] for e in layers if e["status"] == "quantized"][0]
    report = at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=tmp_path / "p",
                      config={"passes": {"quantize": {"skip_layers": [skip]}}})["ascend310"]
    entry = next(e for e in quant_entry(report)["layers"] if e["layer"] == skip)
    assert entry == {"layer": skip, "op": entry["op"], "status": "float",
                     "reason": "skipped by config (skip_layers)"}


def test_do_fusion_false_turns_bn_folding_off(demo_pb, demo_calib):
    plan = at.plan(demo_pb, "ascend310", calib=demo_calib,
                   config={"passes": {"quantize": {"do_fusion": False}}})
    assert (plan.steps[0].name, plan.steps[0].status) == ("fold_bn", "SKIP")
    assert plan.steps[0].reason == "do_fusion: false in the quantize config"


@pytest.mark.parametrize("section,message", [
    ({"batch_num": 100}, "batch_num=100 batches"),
    ({"conv": {"activation_quant_params": {"search_range": [1.3, 0.7]}}}, "search_range"),
    ({"conv": {"activation_quant_params": {"max_percentile": 0.4}}}, "max_percentile"),
    ({"act_algo": "kl"}, "act_algo"),
])
def test_bad_quantization_config_is_one_clear_error(tmp_path, demo_pb, demo_calib, section,
                                                    message):
    with pytest.raises((ConfigError, at.PlanError)) as info:
        at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=tmp_path / "o",
                 config={"passes": {"quantize": section}})
    assert message in str(info.value)
    assert not (tmp_path / "o").exists()


def test_one_conv_layer_matches_the_numpy_reference_of_the_amct_kernels(tmp_path):
    """Deploy graph of a single Conv2D+BiasAdd, simulated, against the kernels in NumPy."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    weights = rng.normal(0, 0.3, (3, 3, 4, 8)).astype(np.float32)
    bias = rng.normal(0, 0.1, 8).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 4], name="x")
        y = tf.nn.bias_add(tf.nn.conv2d(x, weights, 1, "SAME", name="conv"), bias, name="bias")
        tf.identity(y, name="out")
    pb = tmp_path / "conv.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    calib = rng.normal(0, 1, (16, 6, 6, 4)).astype(np.float32)
    report = at.build(pb, "ascend310", calib=calib, output_dir=tmp_path / "o")["ascend310"]
    layer = quant_entry(report)["layers"][0]
    deployed = tmp_path / "o" / "ascend310" / "conv.pb"
    nodes = {n.name: n for n in read_graph_def(deployed, importable=False).node}
    from tensorflow.python.framework import tensor_util

    w_int8 = tensor_util.MakeNdarray(nodes["conv/weight_int8"].attr["value"].tensor)
    packed = tensor_util.MakeNdarray(nodes["conv/deq_scale"].attr["value"].tensor)
    bias_q = tensor_util.MakeNdarray(nodes["conv/bias_int32"].attr["value"].tensor)
    quant = nodes["conv/ascend_quant"]
    x = rng.normal(0, 1, (4, 6, 6, 4)).astype(np.float32)
    q = ascend_ops.ref_ascend_quant(x, quant.attr["scale"].f, quant.attr["offset"].f)
    acc = tf.nn.conv2d(q.astype(np.float64), ascend_ops.ref_ascend_weight_quant(
        w_int8, np.zeros(1, np.int8)).astype(np.float64), 1, "SAME").numpy()
    expected = ascend_ops.ref_ascend_dequant((acc + bias_q).astype(np.float32), packed)
    simulated = at.load_simulation(deployed)(x)
    np.testing.assert_allclose(simulated, expected, rtol=1e-5, atol=1e-5)
    # and the integer semantics hold: weights are int8 and every q - offset is an integer
    assert w_int8.dtype == np.int8 and np.all(q == np.rint(q))
    assert layer["sqnr_db"] > 25


def test_conv_feeding_a_conv_and_a_residual_add_reads_the_dequantized_value(tmp_path):
    """Regression: a layer whose input is another layer's (bias) output, with that output also
    used by a residual Add, must read the AscendDequant result, not the raw accumulator."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 8], name="x")
        w1 = rng.normal(0, 0.3, (3, 3, 8, 8)).astype(np.float32)
        w2 = rng.normal(0, 0.3, (1, 1, 8, 8)).astype(np.float32)
        a = tf.nn.bias_add(tf.nn.conv2d(x, w1, 1, "SAME", name="conv1"),
                           rng.normal(0, 0.1, 8).astype(np.float32), name="bias1")
        b = tf.nn.conv2d(a, w2, 1, "SAME", name="conv2")
        tf.identity(tf.add(a, b, name="residual"), name="out")
    pb = tmp_path / "res.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    calib = rng.normal(0, 1, (32, 6, 6, 8)).astype(np.float32)
    report = at.build(pb, "ascend310", calib=calib, output_dir=tmp_path / "o")["ascend310"]
    assert [e["status"] for e in quant_entry(report)["layers"]] == ["quantized", "quantized"]
    x = rng.normal(0, 1, (8, 6, 6, 8)).astype(np.float32)
    reference = at.load_simulation(pb)(x)
    simulated = at.load_simulation(tmp_path / "o" / "ascend310" / "res.pb")(x)
    sqnr = 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - simulated) ** 2))
    assert sqnr > 25
    assert all(e["sqnr_db"] > 25 for e in quant_entry(report)["layers"])


def test_avgpool_is_quantized_with_its_window_as_dequant_ksize(tmp_path):
    """ASCEND_FACTS 9: AscendQuant before the pool, the pool on q - offset, AscendDequant
    after it with ksize = the window and deq_scale = scale_d (scale_w 1, no shift)."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 4], name="x")
        pooled = tf.nn.avg_pool2d(tf.nn.relu(x), 3, 2, "SAME", name="pool")
        tf.identity(pooled, name="out")
    pb = tmp_path / "pool.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    calib = rng.normal(0, 1, (32, 6, 6, 4)).astype(np.float32)
    report = at.build(pb, "ascend310", calib=calib, output_dir=tmp_path / "o")["ascend310"]
    (entry,) = quant_entry(report)["layers"]
    assert (entry["layer"], entry["op"], entry["status"]) == ("pool", "AvgPool", "quantized")
    assert entry["scale_w_min"] == entry["scale_w_max"] == 1.0 and not entry["channel_wise"]
    deployed = tmp_path / "o" / "ascend310" / "pool.pb"
    nodes = {n.name: n for n in read_graph_def(deployed, importable=False).node}
    dequant = nodes["pool/ascend_dequant"]
    assert list(dequant.attr["ksize"].list.i) == [3, 3]
    from tensorflow.python.framework import tensor_util

    deq, shift, _ = ascend_ops.unpack_deq_scale(
        tensor_util.MakeNdarray(nodes["pool/deq_scale"].attr["value"].tensor))
    assert deq.tolist() == [np.float32(entry["scale_d"])] and shift.tolist() == [0]
    samples = rng.normal(0, 1, (4, 6, 6, 4)).astype(np.float32)
    run = at.load_simulation(deployed, outputs=["pool/ascend_quant", "pool", "out"])
    out = run({"x": samples})
    quant = nodes["pool/ascend_quant"]
    q = ascend_ops.ref_ascend_quant(np.maximum(samples, 0), quant.attr["scale"].f,
                                    quant.attr["offset"].f)
    np.testing.assert_array_equal(out["pool/ascend_quant"], q)      # the AscendQuant kernel
    # the pool of integers q - offset_d, then the AscendDequant kernel, bit for bit
    window = tf.nn.avg_pool2d(q, 3, 2, "SAME").numpy()
    np.testing.assert_array_equal(out["pool"], window)
    np.testing.assert_array_equal(out["out"], ascend_ops.ref_ascend_dequant(
        window, tensor_util.MakeNdarray(nodes["pool/deq_scale"].attr["value"].tensor), (3, 3)))
    reference = at.load_simulation(pb)(samples)
    sqnr = 10 * np.log10(np.sum(reference ** 2) / np.sum((out["out"] - reference) ** 2))
    assert sqnr > 30 and entry["sqnr_db"] > 30
