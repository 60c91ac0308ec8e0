"""The README's code blocks run as written (issue 9, item 20), so the README cannot drift from
the code: the set-up build, the command synopsis against each command's --help, the shell
example, the Python example, every YAML block, the plugin pass example, the layout and the
benchmark list. Only names the README leaves to the reader (`model.pb`, `keras_model`,
`calibration_arrays`, `images`) are supplied, by real files and a real Keras model.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, run_cli_subprocess

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
DEMO = REPO / "amct_targets" / "demo"


def blocks(lang: str, containing: str = "") -> list[str]:
    found = [body for kind, body in BLOCKS if kind == lang and containing in body]
    assert found, f"README has no ```{lang} block containing {containing!r}"
    return found


def test_setup_commands_are_the_ci_commands_and_the_demo_build_runs(tmp_path):
    (setup,) = blocks("sh", "pip install -e .")
    commands = [line for line in setup.splitlines() if line and not line.startswith("#")]
    assert commands[1] == "pip install -e '.[test]' && pytest"
    assert commands[1] in (REPO / ".ci" / "run").read_text()
    build = commands[0].split("&&", 1)[1].split()
    assert build[:2] == ["amct-targets", "build"]
    run = run_cli_subprocess(*build[1:], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for target in ("ascend310", "ascend310p", "ascend910", "ascend910b"):
        assert (tmp_path / "out" / "demo" / target / "digits_cnn.pb").is_file()


def _synopsis() -> dict[str, str]:
    (block,) = blocks("sh", "amct-targets targets")
    lines, joined = block.splitlines(), []
    for line in lines:
        line = line.split("#", 1)[0].rstrip()
        if line.startswith("amct-targets "):
            joined.append(line)
        elif line.strip() and joined:
            joined[-1] += " " + line.strip()
    return {line.split()[1]: line for line in joined if line.split()[1] != "amct"}


@pytest.mark.parametrize("command", ["targets", "passes", "plan", "build", "check", "simulate"])
def test_every_flag_in_the_synopsis_is_in_the_commands_help(command):
    synopsis = _synopsis()
    assert set(synopsis) == {"targets", "passes", "plan", "build", "check", "simulate"}
    flags = set(re.findall(r"--[a-z][a-z-]*", synopsis[command]))
    run = run_cli_subprocess(command, "--help")
    assert run.returncode == 0, run.stderr
    missing = sorted(f for f in flags if f not in run.stdout)
    assert missing == [], f"README lists {missing} for `{command}`; --help does not"


def test_the_shell_example_prints_what_the_readme_shows(tmp_path):
    (block,) = blocks("sh", "$ amct-targets plan")
    shutil.copy(DEMO / "digits_cnn.pb", tmp_path / "model.pb")
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    shown = [line for line in block.splitlines() if line and not line.startswith("$ ")]
    plan = run_cli_subprocess(*shlex.split(commands[0])[1:], cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == shown
    build = run_cli_subprocess(*shlex.split(commands[1])[1:], cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "out" / "ascend910b" / "model.pb").is_file()


def test_the_python_example_runs_as_written(tmp_path):
    (example,) = blocks("python", "at.load_simulation")
    shutil.copy(DEMO / "digits_cnn.pb", tmp_path / "model.pb")
    preamble = textwrap.dedent(f"""
        import numpy as np, keras
        keras.utils.set_random_seed(0)
        keras_model = keras.Sequential([keras.Input((8, 8, 1), name="image"),
                                        keras.layers.Conv2D(8, 3, name="conv"),
                                        keras.layers.BatchNormalization(name="bn"),
                                        keras.layers.ReLU(), keras.layers.Flatten(),
                                        keras.layers.Dense(10, name="logits")], name="my_cnn")
        calibration_arrays = np.load(r"{DEMO / 'digits_calib.npz'}")["image"]
        images = calibration_arrays[:5]
        """)
    epilogue = "\nassert findings == [] and logits.shape == (5, 10), (findings, logits.shape)\n"
    script = tmp_path / "example.py"
    script.write_text(preamble + example + epilogue, encoding="utf-8")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "RUN  fold_bn" in run.stdout
    assert (tmp_path / "out" / "ascend310" / "my_cnn.pb").is_file()


def test_every_yaml_block_is_a_valid_config_or_profile(tmp_path, monkeypatch):
    from amct_targets.config import load_build_config

    monkeypatch.chdir(tmp_path)     # the examples name files relative to where the user is
    (tmp_path / "quant.json").write_text('{"batch_num": 2}', encoding="utf-8")
    checked = 0
    for body in blocks("yaml"):
        data = yaml.safe_load(body)
        if "passes" in data:
            path = tmp_path / f"config{checked}.yaml"
            path.write_text(body, encoding="utf-8")
            config, _ = load_build_config(str(path))
            assert set(config["passes"]) == set(data["passes"])
        else:
            folder = tmp_path / f"profiles{checked}"
            folder.mkdir()
            (folder / f"{data['name']}.yaml").write_text(body, encoding="utf-8")
            run = run_cli_subprocess("plan", DEMO / "digits_cnn.pb", "--target", data["name"],
                                     "--targets-dir", folder)
            assert run.returncode == 0, run.stderr
            assert data["soc_version"] in run.stdout
        checked += 1
    assert checked >= 3


def test_the_quantize_config_example_builds(tmp_path):
    (body,) = blocks("yaml", "amct_config")
    data = yaml.safe_load(body)
    quant = data["passes"]["quantize"]
    # Its layer names are placeholders for the reader's model: use the demo's.
    quant["skip_layers"] = ["digits_cnn_1/conv2d_1_2/convolution"]
    quant["digits_cnn_1/logits_1/MatMul"] = quant.pop("model/dense/MatMul")
    quant["min_input_channels"] = 1
    amct = tmp_path / "quant.json"
    amct.write_text('{"batch_num": 2, "activation_offset": true}', encoding="utf-8")
    quant["amct_config"] = str(amct)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "out"
    run = run_cli_subprocess("build", DEMO / "digits_cnn.pb", "--target", "ascend310",
                             "--calib", DEMO / "digits_calib.npz", "--config", config,
                             "--output", out)
    assert run.returncode == 0, run.stderr
    assert "float=1" in run.stdout


def test_the_plugin_pass_example_is_a_working_plugin(tmp_path):
    (example,) = blocks("python", "class MyPass(CompressionPass)")
    (tmp_path / "my_plugin.py").write_text(example, encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text("passes:\n  my_pass: {enabled: true, ratio: 0.5}\n", encoding="utf-8")
    run = run_cli_subprocess("build", DEMO / "digits_cnn.pb", "--target", "ascend310",
                             "--calib", DEMO / "digits_calib.npz", "--plugin", "my_plugin",
                             "--config", config, "--output", tmp_path / "out", "--json",
                             env={"PYTHONPATH": str(tmp_path)})
    assert run.returncode == 0, run.stderr

    (report,) = json.loads(run.stdout)["targets"]
    mine = next(p for p in report["passes"] if p["name"] == "my_pass")
    assert mine["status"] == "ran"
    assert mine["layers"] == [{"layer": "conv1", "status": "changed"}]


def test_layout_and_benchmark_lists_name_files_that_exist():
    (layout,) = blocks("", "amct_targets/\n")
    parent = REPO
    for line in layout.splitlines():
        match = re.match(r"(\s*)([\w.-]+/?)\s", line + " ")
        if not match or not match.group(2).strip():
            continue
        name = match.group(2)
        base = REPO if not match.group(1) else REPO / "amct_targets"
        if not match.group(1) and name in ("amct_targets/", "targets/", "examples/",
                                            "benchmarks/", "tests/"):
            assert (REPO / name).exists(), name
        elif match.group(1) and len(match.group(1)) == 2:
            assert (base / name).exists(), f"README layout lists amct_targets/{name}"
    (bench,) = blocks("sh", "python benchmarks/")
    for script in re.findall(r"python (benchmarks/\S+\.py)", bench):
        assert (REPO / script).is_file(), script
    del parent


def test_the_activation_algorithm_example_is_a_working_plugin(tmp_path):
    """The README's `minmax` act_algo, loaded with --plugin: the record's scale and offset are
    exactly min/max of the first layer's calibration input (the image, whose data we know)."""
    (example,) = blocks("python", "def minmax(stats, params)")
    (tmp_path / "my_minmax.py").write_text(example, encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text("passes:\n  quantize:\n    act_algo: minmax\n    batch_num: 1\n",
                      encoding="utf-8")
    out = tmp_path / "out"
    run = run_cli_subprocess("build", DEMO / "digits_cnn.pb", "--target", "ascend310",
                             "--calib", DEMO / "digits_calib.npz", "--plugin", "my_minmax",
                             "--config", config, "--output", out, "--json",
                             env={"PYTHONPATH": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    quant = json.loads((out / "ascend310" / "quant_config.json").read_text())
    layers = [v for v in quant.values() if isinstance(v, dict) and "activation_quant_params"
              in v]
    assert layers and all(v["activation_quant_params"]["act_algo"] == "minmax" for v in layers)
    record = (out / "ascend310" / "record.txt").read_text()
    images = np.load(DEMO / "digits_calib.npz")["image"]
    (report,) = json.loads(run.stdout)["targets"]
    first = next(p for p in report["passes"] if p["name"] == "quantize")["layers"][0]["layer"]
    block = record[record.index(f'key: "{first}"'):]
    scale = float(re.search(r"scale_d: ([0-9.e+-]+)", block).group(1))
    offset = int(re.search(r"offset_d: (-?\d+)", block).group(1))
    batch = images[:len(images) // 1]
    low, high = min(float(batch.min()), 0.0), max(float(batch.max()), 0.0)
    assert scale == pytest.approx((high - low) / 255, rel=1e-6)
    assert offset == int(round(-128 - low / scale))
    bad = tmp_path / "bad.yaml"
    bad.write_text("passes:\n  quantize:\n    act_algo: minmaxx\n", encoding="utf-8")
    wrong = run_cli_subprocess("build", DEMO / "digits_cnn.pb", "--target", "ascend310",
                               "--calib", DEMO / "digits_calib.npz", "--plugin", "my_minmax",
                               "--config", bad, "--output", tmp_path / "o2",
                               env={"PYTHONPATH": str(tmp_path)})
    assert wrong.returncode == 1 and "minmax" in wrong.stderr


def test_the_amct_calibration_synopsis_matches_its_help():
    (block,) = blocks("sh", "amct-targets amct calibration")
    text = block[block.index("amct-targets amct calibration"):block.index("amct-targets amct convert")]
    flags = set(re.findall(r"--[a-z][a-z_]*", text.split("#", 1)[0]))
    assert {"--model", "--outputs", "--input_shape", "--data_dir", "--save_path"} <= flags
    run = run_cli_subprocess("amct", "calibration", "--help")
    assert run.returncode == 0, run.stderr
    assert sorted(f for f in flags if f not in run.stdout) == []
