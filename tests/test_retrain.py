"""Retraining passes on the bundled digits CNN: QAT, 4:2 sparsity, combined, tf.distribute."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import amct_targets as at
from amct_targets.graph.load import read_graph_def
from amct_targets.graph.layout import LAYOUTS
from amct_targets.pruning.sparse_4of2 import groups_over_limit, mask_4of2
from conftest import run_cli_subprocess


@pytest.fixture(scope="module")
def digits():
    from amct_targets.demo.make_demo import digits_split

    return digits_split()


@pytest.fixture(scope="module")
def fp32_accuracy(digits, demo_pb_module):
    _, _, x_test, y_test = digits
    return float(np.mean(at.load_simulation(demo_pb_module)(x_test).argmax(1) == y_test))


@pytest.fixture(scope="module")
def demo_pb_module():
    from amct_targets.demo import demo_paths

    return demo_paths()[0]


def accuracy(pb, digits):
    _, _, x_test, y_test = digits
    return float(np.mean(at.load_simulation(pb)(x_test).argmax(1) == y_test))


def step(report, name):
    return next(p for p in report["passes"] if p["name"] == name)


def consts(pb):
    from tensorflow.python.framework import tensor_util

    graph_def = read_graph_def(pb, importable=False)
    return graph_def, {n.name: tensor_util.MakeNdarray(n.attr["value"].tensor)
                       for n in graph_def.node if n.op == "Const"}


def test_mask_4of2_keeps_the_two_largest_of_each_group_of_four():
    w = np.array([[0.1, -0.9, 0.3, 0.2, 5.0, 0.0]], np.float32).T  # MatMul [in=6, out=1]
    mask = mask_4of2(w, 0)
    assert mask[:, 0].tolist() == [0, 1, 1, 0, 1, 1]  # padded group [5, 0, pad, pad]
    conv = np.random.default_rng(0).normal(size=(3, 3, 10, 4)).astype(np.float32)
    masked = conv * mask_4of2(conv, 2)
    assert groups_over_limit(masked, 2) == 0
    # dense: the two full groups of 4 exceed 2 non-zeros; the last (2 values + 2 pad) does not
    assert groups_over_limit(conv, 2) == 3 * 3 * 4 * 2
    assert np.count_nonzero(masked) == 3 * 3 * 4 * (2 + 2 + 2)  # Cin 10 -> groups 4,4,2(+pad)


def test_qat_emits_the_ptq_deploy_format_and_keeps_accuracy(tmp_path, demo_pb_module, digits,
                                                            fp32_accuracy):
    x_train, y_train, _, _ = digits
    report = at.build(demo_pb_module, "ascend310", train={"image": x_train, "y": y_train},
                      config={"passes": {"qat": {"enabled": True, "epochs": 1}}},
                      output_dir=tmp_path)["ascend310"]
    assert step(report, "qat")["status"] == "ran"
    assert step(report, "quantize")["status"] == "skipped"
    pb = tmp_path / "ascend310" / "digits_cnn.pb"
    graph_def, values = consts(pb)
    ops = [n.op for n in graph_def.node]
    assert ops.count("AscendQuant") == ops.count("AscendDequant") == 4
    assert (tmp_path / "ascend310" / "record.txt").read_text().count("record {") == 4
    layers = [e for e in step(report, "qat")["layers"] if e["status"] == "quantized"]
    assert {e["act_algo"] for e in layers} == {"ulq_quantize"}
    assert accuracy(pb, digits) >= fp32_accuracy - 0.01
    assert report["checks"] == []


def test_4of2_runs_only_on_atlas_a2_and_emits_valid_groups(tmp_path, demo_pb_module, digits,
                                                           fp32_accuracy):
    x_train, y_train, _, _ = digits
    config = {"passes": {"sparsify_4of2": {"enabled": True, "epochs": 3,
                                           "learning_rate": 1e-3}}}
    reports = at.build(demo_pb_module, ["ascend910b", "ascend310p"],
                       train={"image": x_train, "y": y_train}, config=config,
                       output_dir=tmp_path)
    skipped = step(reports["ascend310p"], "sparsify_4of2")
    assert skipped["status"] == "skipped" and "gains nothing" in skipped["reason"]
    assert "--sparsity=1" not in reports["ascend310p"]["atc_argv"]
    ran = step(reports["ascend910b"], "sparsify_4of2")
    assert ran["status"] == "ran" and ran["metrics"]["sparse_layers"] == 3
    assert "--sparsity=1" in reports["ascend910b"]["atc_argv"]
    pb = tmp_path / "ascend910b" / "digits_cnn.pb"
    graph_def, values = consts(pb)
    nodes = {n.name: n for n in graph_def.node}
    checked = 0
    for layer in (e["layer"] for e in ran["layers"] if e["status"] == "4:2"):
        node = nodes[layer]
        weight = values[node.input[1]]  # float weights: no calibration, so no quantize
        assert groups_over_limit(weight, LAYOUTS[node.op].axes(node)[0]) == 0
        checked += 1
    assert checked == 3
    assert accuracy(pb, digits) >= fp32_accuracy - 0.03


def test_4of2_can_be_forced_on_a_chip_without_gain(tmp_path, demo_pb_module,
                                                                digits):
    x_train, y_train, _, _ = digits
    plan = at.plan(demo_pb_module, "ascend310", train={"image": x_train, "y": y_train},
                   config={"passes": {"sparsify_4of2": {"enabled": True, "force": True}}})
    forced = plan.step("sparsify_4of2")
    assert forced.status == "RUN"
    assert forced.warnings[0].startswith("forced although the target lacks it: Ascend 310")


def test_combined_4of2_then_qat_keeps_sparsity_in_int8_weights(tmp_path, demo_pb_module, digits,
                                                               fp32_accuracy):
    x_train, y_train, _, _ = digits
    config = {"passes": {"sparsify_4of2": {"enabled": True, "epochs": 3, "learning_rate": 1e-3},
                         "qat": {"enabled": True, "epochs": 2, "learning_rate": 1e-4}}}
    report = at.build(demo_pb_module, "ascend910b", train={"image": x_train, "y": y_train},
                      config=config, output_dir=tmp_path)["ascend910b"]
    assert [p["name"] for p in report["passes"] if p["status"] == "ran"] == \
        ["fold_bn", "sparsify_4of2", "qat"]
    pb = tmp_path / "ascend910b" / "digits_cnn.pb"
    graph_def, values = consts(pb)
    nodes = {n.name: n for n in graph_def.node}
    sparse = [e["layer"] for e in step(report, "sparsify_4of2")["layers"]
              if e["status"] == "4:2"]
    for layer in sparse:
        int8 = values[f"{layer}/weight_int8"]
        assert int8.dtype == np.int8
        assert groups_over_limit(int8, LAYOUTS[nodes[layer].op].axes(nodes[layer])[0]) == 0
    assert "--sparsity=1" in report["atc_argv"]
    assert accuracy(pb, digits) >= fp32_accuracy - 0.03


def test_retraining_from_the_cli_with_train_npz_shows_progress_only_on_a_terminal(
        tmp_path, demo_pb_module, digits):
    x_train, y_train, _, _ = digits
    np.savez(tmp_path / "train.npz", image=x_train[:256], y=y_train[:256])
    (tmp_path / "c.yaml").write_text("passes:\n  qat: {enabled: true, epochs: 1}\n")
    run = run_cli_subprocess("build", demo_pb_module, "--target", "ascend310", "--train",
                             tmp_path / "train.npz", "--config", tmp_path / "c.yaml",
                             "--output", tmp_path / "o", "--json")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    report = json.loads(run.stdout)["targets"][0]
    metrics = step(report, "qat")["metrics"]
    # 256 samples: 50 held out for validation (20% of each class), 206 in 7 batches of 32
    assert metrics["epochs_run"] == 1 and metrics["train_steps"] == 7
    assert metrics["history"]["validation_samples"] == 50


def test_missing_labels_in_train_npz_is_one_clear_error(tmp_path, demo_pb_module, digits):
    x_train, _, _, _ = digits
    np.savez(tmp_path / "train.npz", image=x_train[:64])
    with pytest.raises(at.ConfigError, match="training data has no labels; store them under "
                                             "key 'y'"):
        at.build(demo_pb_module, "ascend310", train=tmp_path / "train.npz",
                 config={"passes": {"qat": {"enabled": True}}}, output_dir=tmp_path / "o")


MIRRORED = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import amct_targets as at
    from amct_targets.demo import demo_paths
    from amct_targets.demo.make_demo import digits_split
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x_train, y_train, x_test, y_test = digits_split()
    dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(64)
    pb = demo_paths()[0]
    report = at.build(pb, "ascend310", train=dataset, strategy=strategy,
                      optimizer=keras.optimizers.Adam(1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      config={"passes": {"qat": {"enabled": True, "epochs": 1}}},
                      output_dir=sys.argv[1])["ascend310"]
    qat = next(p for p in report["passes"] if p["name"] == "qat")
    logits = at.load_simulation(sys.argv[1] + "/ascend310/digits_cnn.pb")(x_test)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "status": qat["status"],
                      "steps": qat["metrics"]["train_steps"],
                      "accuracy": float(np.mean(logits.argmax(1) == y_test))}))
''')


def test_qat_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["status"] == "ran"
    assert result["steps"] == 22 - 4  # 22 global batches of 64, the first 4 for validation
    assert result["accuracy"] >= 0.96


def test_channel_pruning_removes_channels_and_reports_exact_flops(tmp_path, demo_pb_module,
                                                                  digits, fp32_accuracy):
    from amct_targets.graph.flops import count_layers, total
    from amct_targets.graph.load import load_model

    x_train, y_train, _, _ = digits
    # distillation: 0 keeps this test on the label loss it was written for: with the default
    # (0.5, T 4) this hard cut of the demo CNN ends at 91.1% test top-1 instead of 93.1%
    # (docs/retrain.md, known limits)
    config = {"passes": {"prune_channels": {"enabled": True, "prune_ratio": 0.3,
                                            "ascend_optimized": False, "epochs": 10,
                                            "learning_rate": 3e-3, "distillation": 0}}}
    report = at.build(demo_pb_module, "ascend310", train={"image": x_train, "y": y_train},
                      config=config, output_dir=tmp_path)["ascend310"]
    entry = step(report, "prune_channels")
    pruned = {e["op"] + str(e["channels_before"]): e["channels_after"]
              for e in entry["layers"] if e["status"] == "pruned"}
    assert pruned == {"Conv2D16": 12, "Conv2D32": 23}  # 16 - floor(4.8), 32 - floor(9.6)
    depthwise = next(e for e in entry["layers"] if e["op"] == "DepthwiseConv2dNative")
    assert depthwise["status"] == "kept" and depthwise["flops_after"] < depthwise["flops_before"]
    emitted = load_model(tmp_path / "ascend310" / "digits_cnn.pb")
    costs = count_layers(emitted)
    assert total(costs).flops == entry["metrics"]["flops_after"]
    assert entry["metrics"]["flops_cut_percent"] >= 25
    weights = [c for c in costs.values() if c.op == "Conv2D"]
    assert sorted(c.output_shape[-1] for c in weights) == [12, 23]
    # 10 epochs at most bring validation top-1 to 97.0% of a 99.5% budget: the pass says so
    history = entry["metrics"]["history"]
    assert history["val_metric"][history["best_epoch"]] < history["target_metric"]
    assert history["epochs_run"] == 10 and history["stopped"].startswith("epochs")
    assert any(w.startswith("retraining did not bring the validation top1 back within the "
                            "budget (99.50%, default)") for w in entry["warnings"])
    assert accuracy(tmp_path / "ascend310" / "digits_cnn.pb", digits) >= fp32_accuracy - 0.06


def test_ascend_optimized_aligns_kept_channels_to_the_profile_multiple(demo_pb_module, digits):
    from amct_targets.pruning.filter_prune import plan_pruning
    from amct_targets.graph.load import load_model

    align = at.load_target("ascend910").capability("channel_pruning").params["channel_align"]
    kept, _, reasons = plan_pruning(load_model(demo_pb_module), {"prune_ratio": 0.3}, align)
    assert align == 16
    assert [len(k) for k in kept.values()] == [16]  # 32 channels: 23 kept -> 16 with align
    assert any(r.startswith("16 channels: rounding the kept count to a multiple of 16")
               for r in reasons.values())


def test_channel_pruning_and_4of2_on_the_same_layer_are_refused_before_work(
        tmp_path, demo_pb_module, digits):
    x_train, y_train, _, _ = digits
    with pytest.raises(at.PlanError, match="passes 'prune_channels' and 'sparsify_4of2' are "
                                           "both enabled for layer"):
        at.build(demo_pb_module, "ascend910b", train={"image": x_train, "y": y_train},
                 config={"passes": {"prune_channels": {"enabled": True},
                                    "sparsify_4of2": {"enabled": True}}},
                 output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_decompose_fine_tunes_through_the_retraining_machinery(tmp_path, digits):
    import keras

    x_train, y_train, x_test, y_test = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    config = {"passes": {"decompose": {"enabled": True, "rank": 16, "epochs": 3,
                                       "learning_rate": 3e-3}}}
    plain = at.build(model, "ascend310", config=config, output_dir=tmp_path / "a")["ascend310"]
    tuned = at.build(model, "ascend310", config=config, train={"image": x_train, "y": y_train},
                     output_dir=tmp_path / "b")["ascend310"]
    assert step(plain, "decompose")["metrics"]["decomposed"] == 1
    assert "not fine-tuned (no training data)" in step(plain, "decompose")["notes"][-1]
    metrics = step(tuned, "decompose")["metrics"]
    assert metrics["train_steps"] == 3 * 43  # 1347 samples, batches of 32
    assert metrics["fine_tune_loss"][-1] < metrics["fine_tune_loss"][0]
    pb = tuned["artifacts"]["pb"]
    assert accuracy(tmp_path / "b" / "ascend310" / pb, digits) > \
        accuracy(tmp_path / "a" / "ascend310" / pb, digits) + 0.2
