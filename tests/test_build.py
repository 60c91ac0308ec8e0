"""Build and emit: folders per target, atc.sh quoting, report.json, atomicity, determinism."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess

import numpy as np
import pytest

import amct_targets as at
from amct_targets.errors import AmctError, ConfigError, PluginError
from plugin_fixtures import DATA_PASS, FLAG_PLUGIN, RAISING_PASS, write_plugin


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_all_targets_writes_independent_folders(tmp_path, demo_pb, demo_calib):
    out = tmp_path / "out"
    reports = at.build(demo_pb, ["all"], calib=demo_calib, output_dir=out)
    assert sorted(reports) == ["ascend310", "ascend310p", "ascend910", "ascend910b"]
    assert sorted(p.name for p in out.iterdir()) == sorted(reports) + ["index.html"]
    for target, report in reports.items():
        folder = out / target
        assert sorted(p.name for p in folder.iterdir()) == ["atc.sh", "digits_cnn.pb",
                                                            "quant_config.json", "record.txt",
                                                            "report.html", "report.json"]
        on_disk = json.loads((folder / "report.json").read_text())
        assert on_disk == json.loads(json.dumps(report))
        for key in ("target", "soc_version", "input_sha256", "passes", "artifacts",
                    "atc_command", "checks", "metrics"):
            assert key in on_disk
        assert on_disk["soc_version"] == at.load_target(target).soc_version
        assert on_disk["input_sha256"] == sha(demo_pb)
        assert on_disk["artifacts"] == {"pb": "digits_cnn.pb", "atc_script": "atc.sh",
                                        "report": "report.json", "record": "record.txt",
                                        "quant_config": "quant_config.json",
                                        "report_html": "report.html"}
        assert on_disk["checks"] == []
        fold = on_disk["passes"][0]
        assert (fold["name"], fold["status"]) == ("fold_bn", "ran")
        assert fold["metrics"]["folded"] == 3 and fold["metrics"]["left"] == 0
        assert isinstance(fold["seconds"], float)
        assert os.access(folder / "atc.sh", os.X_OK)


def test_atc_command_for_each_chip(tmp_path, demo_pb):
    out = tmp_path / "out"
    report = at.build(demo_pb, "ascend310p", output_dir=out)["ascend310p"]
    assert report["atc_argv"] == [
        "atc", "--model=digits_cnn.pb", "--framework=3",
        "--output=digits_cnn", "--soc_version=Ascend310P3",
        "--input_shape=image:1,8,8,1", "--input_format=NHWC", "--out_nodes=Identity:0",
        "--precision_mode=force_fp16"]
    assert any("batch dimension set to 1" in note for note in report["notes"])


def test_input_shape_flag_sets_the_atc_input_shape(tmp_path, demo_pb):
    report = at.build(demo_pb, "ascend310", output_dir=tmp_path / "o",
                      input_shapes={"image": (16, 8, 8, 1)})["ascend310"]
    assert "--input_shape=image:16,8,8,1" in report["atc_argv"]
    assert report["notes"] == []


@pytest.mark.parametrize("dirname", ["with space", "quote'and\"double", "semi;colon",
                                     "dollar$(touch PWNED)", "back`tick`", "-dash"])
def test_atc_script_keeps_hostile_paths_literal_and_the_folder_relocatable(tmp_path, demo_pb,
                                                                        dirname):
    out = tmp_path / dirname
    at.build(demo_pb, "ascend310", output_dir=out)
    script = (out / "ascend310" / "atc.sh").read_text()
    assert str(tmp_path) not in script          # nothing absolute: the folder can move
    argv = shlex.split(script.strip().splitlines()[-1])
    assert argv[1] == "--model=digits_cnn.pb" and argv[3] == "--output=digits_cnn"
    # Move the folder, then run the script from elsewhere with a fake `atc` that prints its
    # working folder, whether the model is there, and its arguments one per line.
    moved = tmp_path / "host" / dirname
    moved.parent.mkdir()
    (out / "ascend310").rename(moved)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "atc"
    fake.write_text('#!/bin/sh\npwd\n[ -f digits_cnn.pb ] && echo model-found\n'
                    'for a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["sh", str(moved / "atc.sh")], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == str(moved.resolve()) and lines[1] == "model-found"
    assert lines[2:] == argv[1:]
    report = json.loads((moved / "report.json").read_text())
    assert str(tmp_path) not in json.dumps(report["artifacts"]) + report["atc_command"]
    assert not (tmp_path / "PWNED").exists()


def test_same_build_twice_gives_identical_files(tmp_path, demo_pb, demo_calib):
    first = tmp_path / "a"
    second = tmp_path / "b"
    at.build(demo_pb, "ascend910b", calib=demo_calib, output_dir=first)
    at.build(demo_pb, "ascend910b", calib=demo_calib, output_dir=second)
    assert sha(first / "ascend910b" / "digits_cnn.pb") == sha(second / "ascend910b" /
                                                             "digits_cnn.pb")
    # rebuild into the same folder replaces it with the same bytes
    before = sha(first / "ascend910b" / "digits_cnn.pb")
    at.build(demo_pb, "ascend910b", calib=demo_calib, output_dir=first)
    assert sha(first / "ascend910b" / "digits_cnn.pb") == before
    assert sorted(p.name for p in first.iterdir()) == ["ascend910b", "index.html"]


def test_input_is_never_modified(tmp_path, demo_pb):
    before = sha(demo_pb)
    at.build(demo_pb, "all", output_dir=tmp_path / "o")
    assert sha(demo_pb) == before


def test_folded_model_computes_what_the_input_computed(tmp_path, demo_pb, demo_calib):
    out = tmp_path / "o"
    at.build(demo_pb, "ascend310", output_dir=out)
    x = np.load(demo_calib)["image"]
    original = at.load_simulation(demo_pb)(x)
    folded = at.load_simulation(out / "ascend310" / "digits_cnn.pb")(x)
    assert np.max(np.abs(folded - original)) / np.max(np.abs(original)) <= 1e-5


def test_failing_pass_leaves_no_partial_output(tmp_path, monkeypatch, demo_pb):
    module = write_plugin(tmp_path, "raising_plugin", RAISING_PASS, monkeypatch)
    out = tmp_path / "new" / "out"
    with pytest.raises(PluginError) as info:
        at.build(demo_pb, ["ascend310", "ascend910"], output_dir=out, plugins=[module])
    assert "pass 'boom' (plugin 'raising_plugin') failed on target ascend310" in str(info.value)
    assert "kaboom" in str(info.value)
    assert not (tmp_path / "new").exists()


def test_failure_keeps_an_earlier_good_output(tmp_path, monkeypatch, demo_pb):
    out = tmp_path / "out"
    at.build(demo_pb, "ascend310", output_dir=out)
    good = sha(out / "ascend310" / "digits_cnn.pb")
    module = write_plugin(tmp_path, "raising_plugin", RAISING_PASS, monkeypatch)
    with pytest.raises(PluginError):
        at.build(demo_pb, "ascend310", output_dir=out, plugins=[module])
    assert sorted(p.name for p in out.iterdir()) == ["ascend310", "index.html"]
    assert sha(out / "ascend310" / "digits_cnn.pb") == good


def test_unwritable_output_is_one_clear_error(tmp_path, demo_pb):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(AmctError, match="cannot create the output folder.*is a file"):
        at.build(demo_pb, "ascend310", output_dir=blocker / "out")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("make,message", [
    (lambda d: d.__setitem__("image", np.zeros((4, 9, 9, 1), "float32")), "does not fit"),
    (lambda d: d.__setitem__("image", np.full((4, 8, 8, 1), np.nan, "float32")), "NaN"),
    (lambda d: d.__setitem__("image", np.zeros((4, 8, 8), "float32")), "rank 3"),
    (lambda d: d.update(image=np.zeros((4, 8, 8, 1)), other=np.zeros(3)), "do not match"),
])
def test_bad_calibration_data_is_refused_before_any_work(tmp_path, demo_pb, make, message):
    data = {}
    make(data)
    path = tmp_path / "calib.npz"
    np.savez(path, **data)
    with pytest.raises(ConfigError, match=message) as info:
        at.build(demo_pb, "ascend310", calib=path, output_dir=tmp_path / "o")
    assert str(path) in str(info.value)
    assert not (tmp_path / "o").exists()


def test_pickled_calibration_data_is_not_loaded(tmp_path, demo_pb):
    path = tmp_path / "calib.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="without pickled objects"):
        at.build(demo_pb, "ascend310", calib=path, output_dir=tmp_path / "o")


def test_calibration_from_python_batches_and_datasets(tmp_path, monkeypatch, demo_pb):
    import tensorflow as tf

    module = write_plugin(tmp_path, "data_pass_plugin", DATA_PASS, monkeypatch)
    x = np.random.default_rng(0).random((10, 8, 8, 1), dtype=np.float32)
    for calib in ([x[:4], x[4:]], tf.data.Dataset.from_tensor_slices(x).batch(3), {"image": x}):
        report = at.build(demo_pb, "ascend310", calib=calib, output_dir=tmp_path / "o",
                          plugins=[module])["ascend310"]
        entry = next(p for p in report["passes"] if p["name"] == "count_nodes")
        assert entry["status"] == "ran" and entry["metrics"]["samples"] == 10


def test_plugin_atc_options_and_build_finished_hooks(tmp_path, monkeypatch, demo_pb):
    module = write_plugin(tmp_path, "flag_plugin", FLAG_PLUGIN, monkeypatch)
    report = at.build(demo_pb, "ascend310", output_dir=tmp_path / "o",
                      plugins=[module])["ascend310"]
    assert report["atc_argv"][-1] == "--log=info"
    assert report["atc_argv"].count("--soc_version=Ascend310") == 1
    assert not any("ShouldBeIgnored" in a for a in report["atc_argv"])
    import flag_plugin

    assert flag_plugin.SEEN == [("ascend310", ["atc.sh", "digits_cnn.pb"])]
