"""The command line as a user meets it: exit codes, one-line errors, JSON, progress, demo."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli_subprocess


def test_demo_build_for_every_target_is_the_main_command(tmp_path):
    run = run_cli_subprocess("build", "--target", "all", "--output", tmp_path / "demo")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # not a terminal: no progress, and TensorFlow's banner is silenced
    for target in ("ascend310", "ascend310p", "ascend910", "ascend910b"):
        assert f"{target}: {tmp_path / 'demo' / target / 'digits_cnn.pb'}" in run.stdout
        assert (tmp_path / "demo" / target / "report.json").exists()
    assert "--soc_version=Ascend910B1" in run.stdout
    assert "fold_bn: folded=3, left=0" in run.stdout


@pytest.mark.parametrize("args,message", [
    (["build", "--target", "ascend999"], "unknown target 'ascend999'; known targets: ascend310"),
    (["build", "NOFILE.pb", "--target", "ascend310"], "NOFILE.pb: no such file"),
    (["plan", "BROKEN", "--target", "ascend310"], "BROKEN: not a TensorFlow GraphDef"),
    (["targets", "--plugin", "no_such_plugin_module"],
     "plugin 'no_such_plugin_module' (--plugin) cannot be imported"),
    (["build", "--target", "ascend310", "--config", "CONFIG"], "CONFIG: $.passes: 3 is not"),
    (["build", "--target", "ascend310", "--input-shape", "image:1,9,9,1"],
     "does not fit input 'image'"),
])
def test_user_errors_are_one_line_exit_1_no_traceback(tmp_path, args, message):
    (tmp_path / "BROKEN").write_bytes(b"\x08\x96\x01 not a graph at all")
    (tmp_path / "CONFIG").write_text("passes: 3\n")
    args = [str(tmp_path / a) if a in ("BROKEN", "NOFILE.pb", "CONFIG") else a for a in args]
    message = message.replace("BROKEN", str(tmp_path / "BROKEN")).replace(
        "NOFILE.pb", str(tmp_path / "NOFILE.pb")).replace("CONFIG", str(tmp_path / "CONFIG"))
    run = run_cli_subprocess(*args, "--output" if args[0] == "build" else "--json",
                             *([tmp_path / "out"] if args[0] == "build" else []), cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("amct-targets: error: ")
    assert message in run.stderr
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_invalid_profile_in_targets_dir_names_file_and_field(tmp_path):
    (tmp_path / "board.yaml").write_text("name: board\nextends: ascend310\n"
                                         "atc: {precision_mode: fastest}\n")
    run = run_cli_subprocess("targets", "--targets-dir", tmp_path)
    assert run.returncode == 1
    assert f"{tmp_path / 'board.yaml'}: $.atc.precision_mode: 'fastest' is not one of" in run.stderr


def test_usage_errors_exit_2(cli):
    assert cli("build").code == 2           # --target is required
    assert cli("frobnicate").code == 2


def test_targets_and_passes_json(cli):
    targets = cli("targets", "--json").json()
    assert [t["name"] for t in targets] == ["ascend310", "ascend310p", "ascend910", "ascend910b"]
    a2 = targets[3]
    assert a2["capabilities"]["sparsity_4of2"]["supported"] is True
    assert a2["compute"]["fp16_tflops"]["source"]
    passes = cli("passes", "--target", "ascend310", "--json").json()
    fold = next(p for p in passes if p["name"] == "fold_bn")
    assert fold == {"name": "fold_bn", "summary": fold["summary"],
                         "plugin": "amct_targets.passes.fold_bn", "origin": "builtin",
                         "stage": "prepare", "requires": ["bn_fusion"], "needs": [],
                         "enabled_by_default": True, "supported": True}
    by_name = {p["name"]: p for p in passes}
    assert sorted(by_name) == ["decompose", "fast_softmax", "fold_bn", "prune_channels", "qat",
                               "quantize", "sparsify_4of2"]
    assert by_name["quantize"]["requires"] == ["int8"]
    assert by_name["quantize"]["needs"] == ["calibration"]
    assert by_name["sparsify_4of2"]["supported"] is False
    assert "gain" in by_name["sparsify_4of2"]["reason"]


def test_build_json_is_machine_readable_and_quiet(cli, tmp_path, demo_pb):
    result = cli("build", demo_pb, "--target", "ascend310", "--target", "ascend910b",
                 "--output", tmp_path / "o", "--json")
    assert result.code == 0 and result.err == ""
    data = result.json()
    assert [t["target"] for t in data["targets"]] == ["ascend310", "ascend910b"]


def test_progress_is_shown_on_a_terminal(tmp_path, demo_pb):
    main_fd, replica_fd = pty.openpty()
    run = subprocess.run([sys.executable, "-m", "amct_targets", "build", str(demo_pb),
                          "--target", "all", "--output", str(tmp_path / "o")],
                         stdout=subprocess.PIPE, stderr=replica_fd, timeout=600)
    os.close(replica_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    terminal = b"".join(chunks).decode()
    assert run.returncode == 0
    assert "amct-targets: [1/4] building for ascend310" in terminal
    assert "amct-targets: [4/4] building for ascend910b" in terminal
    assert "running fold_bn" in terminal


def test_simulate_runs_a_pb_on_npz_inputs(cli, tmp_path, demo_pb, demo_calib):
    result = cli("simulate", demo_pb, "--input", demo_calib, "--output", tmp_path / "y.npz")
    assert result.code == 0, result.err
    logits = np.load(tmp_path / "y.npz")["Identity_0"]
    assert logits.shape == (64, 10)
    from amct_targets.demo.make_demo import digits_split

    x_train, y_train, _, _ = digits_split()
    np.testing.assert_array_equal(np.load(demo_calib)["image"], x_train[:64])
    accuracy = np.mean(np.argmax(logits, 1) == y_train[:64])
    assert accuracy >= 0.95


def test_module_and_console_script_are_the_same_entry(tmp_path):
    run = subprocess.run(["amct-targets", "targets", "--json"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)) == 4
