"""AMCT client scripts (tests/amct_scripts/, written like AMCT's samples, changed only in the
import line) run in subprocesses on a TF 1 style frozen digits CNN, with JPEG files, a
TFRecord evaluation set and AMCT .bin folders (tests/amct_fixtures.py). Checked: the files
AMCT documents, their formats, and that the quantized model keeps the float predictions."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "amct_scripts"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - (DEBUG|INFO|WARNING|ERROR) - "
                      r"\[AMCT\]:\[AMCT\]: \S")


def _env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def run(args, cwd: Path, check: bool = True, **env) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=_env(**env),
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("amct_fixtures")
    run([ROOT / "tests" / "amct_fixtures.py", folder], folder)
    return folder


def _ascend_ops(pb: Path) -> dict[str, int]:
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(pb.read_bytes())
    counts: dict[str, int] = {}
    for node in graph_def.node:
        if node.op.startswith("Ascend"):
            counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def test_ptq_sample_script_runs_unchanged_and_keeps_predictions(fixtures, tmp_path):
    from amct_targets.amct_tensorflow.record import read_record

    result = run([SCRIPTS / "digits_calibration.py", "--model", fixtures / "digits.pb",
                  "--jpeg_dir", fixtures / "jpeg", "--batch_num", "2"], tmp_path)
    out = tmp_path / "outputs" / "calibration"
    for name in ("config.json", "record.txt", "digits_quant.json", "digits_quantized.pb"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["batch_num"] == 2 and config["activation_offset"] is True
    layers = {k for k, v in config.items() if isinstance(v, dict)}
    assert layers == {"conv1/Conv2D", "dw/depthwise", "conv2/Conv2D", "pool/AvgPool",
                      "logits/MatMul"}
    assert config["logits/MatMul"]["weight_quant_params"]["channel_wise"] is False
    assert config["conv1/Conv2D"]["activation_quant_params"]["act_algo"] == "ifmr"
    record = read_record(out / "record.txt")
    assert set(record) == layers
    assert len(record["conv1/Conv2D"].scale_w) == 16 and len(record["logits/MatMul"].scale_w) == 1
    assert record["pool/AvgPool"].scale_w == (1.0,)
    # The images are in [0, 1]: IFMR on them keeps the whole range (no clipping needed).
    assert record["conv1/Conv2D"].offset_d == -128
    assert 1.0 / 255 <= record["conv1/Conv2D"].scale_d <= 1.3 / 255
    mapping = json.loads((out / "digits_quant.json").read_text())
    assert mapping["conv1/Conv2D/ascend_dequant"] == "conv1/BatchNorm/FusedBatchNorm"
    assert mapping["conv1/Conv2D/ascend_quant"] == "input"
    assert _ascend_ops(out / "digits_quantized.pb") == {
        "AscendQuant": 5, "AscendWeightQuant": 4, "AscendDequant": 5}
    log = (tmp_path / "amct_log" / "amct_tensorflow.log").read_text().splitlines()
    assert log and all(LOG_LINE.match(line) for line in log)
    assert "INFO - [AMCT]:[AMCT]: Calibration finished after 2 batch(es)" in result.stdout
    top1_float = float(re.search(r"Origin Model Prediction: top1 ([\d.]+)", result.stdout)[1])
    top1_quant = float(re.search(r"Quantized Model Prediction: top1 ([\d.]+)",
                                 result.stdout)[1])
    agreement, max_diff = map(float, re.search(
        r"top1 agreement ([\d.]+) max prob diff ([\d.]+)", result.stdout).groups())
    assert top1_float > 0.8
    assert top1_quant >= top1_float - 0.02
    assert agreement >= 0.97
    assert max_diff < 0.25


def test_deploy_pb_runs_in_stock_tf_like_the_simulation(fixtures, tmp_path):
    import amct_targets

    run([SCRIPTS / "digits_calibration.py", "--model", fixtures / "digits.pb",
         "--jpeg_dir", fixtures / "jpeg"], tmp_path)
    pb = tmp_path / "outputs" / "calibration" / "digits_quantized.pb"
    x = np.fromfile(fixtures / "bin" / "batch_1.bin", np.float32).reshape(32, 16, 16, 1)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "import amct_targets.amct_tensorflow as amct\n"
            "g = tf.compat.v1.GraphDef(); g.ParseFromString(open(sys.argv[1], 'rb').read())\n"
            "graph = tf.Graph()\n"
            "with graph.as_default(): tf.compat.v1.import_graph_def(g, name='')\n"
            "with tf.compat.v1.Session(graph=graph) as s:\n"
            "    np.save(sys.argv[3], s.run('prob:0', {'input:0': np.load(sys.argv[2])}))\n"
            "print('op library', amct.OP_LIBRARY_LOADED)\n")
    kernels = run(["-c", code, pb, tmp_path / "x.npy", tmp_path / "y.npy"], tmp_path)
    assert "op library True" in kernels.stdout
    simulated = amct_targets.load_simulation(pb)(x)
    assert np.max(np.abs(np.load(tmp_path / "y.npy") - simulated)) < 1e-6
    # Without a compiler: one warning, then import_graph_def expands the Ascend ops.
    fallback = run(["-c", code, pb, tmp_path / "x.npy", tmp_path / "z.npy"], tmp_path,
                   CXX="/nonexistent/g++", AMCT_TARGETS_CACHE_DIR=str(tmp_path / "cache"))
    assert "op library False" in fallback.stdout
    assert fallback.stderr.count("cannot build the Ascend op library") == 1
    assert np.max(np.abs(np.load(tmp_path / "z.npy") - simulated)) < 1e-6


def test_auto_calibration_sample_keeps_sensitive_layers_float(fixtures, tmp_path):
    result = run([SCRIPTS / "digits_auto_calibration.py", "--model", fixtures / "digits.pb",
                  "--dataset", fixtures / "eval.tfrecord", "--metric", "confidence",
                  "--max_loss", "0.05"], tmp_path)
    out = tmp_path / "outputs" / "accuracy_based_auto_calibration"
    ranking = json.loads((out / "accuracy_based_auto_calibration_ranking_information.json")
                         .read_text())
    assert len(ranking) == 5
    sims = [s for _, s in ranking]
    assert sims == sorted(sims) and all(0.5 <= s <= 1.0 for s in sims)
    history = json.loads((tmp_path / "amct_log" /
                          "accuracy_based_auto_calibration_record.json").read_text())
    assert all(set(h["roll_back_config"]) == {n for n, _ in ranking} for h in history)
    assert all(history[0]["roll_back_config"].values())
    assert history[0]["metric_eval"][0] is False and history[0]["metric_eval"][1] >= 0.05
    final = json.loads((out / "accuracy_based_auto_calibration_final_config.json").read_text())
    floats = [n for n, _ in ranking if not final[n]["quant_enable"]]
    assert 1 <= len(floats) < 5
    assert floats == [n for n, _ in ranking][:len(floats)]   # the least similar go first
    passed = [h for h in history if {k for k, v in h["roll_back_config"].items() if not v}
              == set(floats)]
    assert passed and passed[-1]["metric_eval"][0] is True
    assert passed[-1]["metric_eval"][1] < 0.05
    assert _ascend_ops(out / "digits_quantized.pb")["AscendQuant"] == 5 - len(floats)
    original = float(re.search(r"Accuracy of original model is ([\d.]+)", result.stdout)[1])
    saved = float(re.search(r"Accuracy of saved model is ([\d.]+)", result.stdout)[1])
    assert original - saved < 0.05
    assert (out / "record.txt").is_file() and (out / "digits_quant.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith("amct_auto_calibration_")]


def test_auto_calibration_accepts_the_global_model_when_it_meets_the_metric(fixtures, tmp_path):
    result = run([SCRIPTS / "digits_auto_calibration.py", "--model", fixtures / "digits.pb",
                  "--dataset", fixtures / "eval.tfrecord", "--metric", "top1",
                  "--max_loss", "2.0"], tmp_path)
    out = tmp_path / "outputs" / "accuracy_based_auto_calibration"
    history = json.loads((tmp_path / "amct_log" /
                          "accuracy_based_auto_calibration_record.json").read_text())
    assert len(history) == 1 and history[0]["metric_eval"][0] is True
    final = json.loads((out / "accuracy_based_auto_calibration_final_config.json").read_text())
    assert all(v["quant_enable"] for v in final.values() if isinstance(v, dict))
    assert _ascend_ops(out / "digits_quantized.pb")["AscendQuant"] == 5
    assert "Accuracy of saved model is" in result.stdout


def test_cli_calibration_reads_bin_folders(fixtures, tmp_path):
    from amct_targets.amct_tensorflow.record import read_record

    args = ["-m", "amct_targets", "amct", "calibration", "--model", fixtures / "digits.pb",
            "--outputs", "prob:0", "--input_shape", "input:32,16,16,1", "--data_type",
            "float32", "--data_dir", fixtures / "bin", "--save_path", tmp_path / "out" / "digits",
            "--batch_num", "2"]
    run(args, tmp_path)
    out = tmp_path / "out"
    assert len(read_record(out / "record.txt")) == 5
    assert (out / "digits_quantized.pb").is_file() and (out / "digits_quant.json").is_file()
    bad = run(args[:9] + ["input:16,16,16,1"] + args[10:], tmp_path, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "batch_0.bin: 8192 float32 values; --input_shape needs 4096" in bad.stderr
    mixed = run(args + ["--evaluator", "e.py"], tmp_path, check=False)
    assert mixed.returncode == 1
    assert "--evaluator cannot be combined with --input_shape" in mixed.stderr
