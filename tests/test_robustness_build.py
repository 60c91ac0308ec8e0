"""Issue 9, the build-side items, reproduced with real files and real processes: extreme data,
search bounds, simulate inputs, asked-for work that cannot happen, unknown layers and options,
AMCT JSON types, check agreeing with build, and plugins that misbehave in every way observed.
Each one is exit 1 with one `amct-targets: error:` line, no traceback, nothing written.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli_subprocess
from test_robustness_io import assert_one_error, tree_sha

DEMO = REPO / "amct_targets" / "demo"
PB, CALIB = DEMO / "digits_cnn.pb", DEMO / "digits_calib.npz"


def _calib() -> np.ndarray:
    return np.load(CALIB)["image"]


def _config(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def earlier_build(tmp_path_factory):
    """A good build whose folder every failing build below must leave exactly as it was."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    run = run_cli_subprocess("build", PB, "--target", "ascend310", "--calib", CALIB,
                             "--output", out)
    assert run.returncode == 0, run.stderr
    return out


def _build_fails(tmp_path, earlier, *args, fragments=()):
    before = tree_sha(earlier)
    run = run_cli_subprocess("build", *args, "--output", earlier)
    assert_one_error(run, *fragments)
    assert tree_sha(earlier) == before
    assert not list(earlier.parent.glob(".amct-staging-*"))
    return run


# --- 4: finite data that overflows float32 inside the model -----------------------------------

def test_calibration_data_scaled_by_1e38_is_one_error_not_a_crash(tmp_path, earlier_build):
    data = tmp_path / "huge.npz"
    np.savez(data, image=_calib() * np.float32(1e38))
    _build_fails(tmp_path, earlier_build, PB, "--target", "ascend310", "--calib", data,
                 fragments=("infinite or NaN", "scale the calibration data"))


# --- 8: every option that sizes a search is bounded -------------------------------------------

@pytest.mark.parametrize("step", ["0.000000001", "1e-9"])  # YAML 1.2 exponent form too
def test_a_tiny_search_step_is_refused_before_any_work(tmp_path, earlier_build, step):
    config = _config(tmp_path, f"passes:\n  quantize:\n    search_step: {step}\n")
    _build_fails(tmp_path, earlier_build, PB, "--target", "ascend310", "--calib", CALIB,
                 "--config", config, fragments=("search_step", "at most 10000"))


# --- 11: simulate validates its inputs; TensorFlow never aborts the process -------------------

@pytest.mark.parametrize("shape, shown", [((8, 8, 1), "[8, 8, 1]"),
                                          ((2, 10, 10, 1), "[2, 10, 10, 1]")])
def test_simulate_with_a_wrong_rank_or_spatial_size_is_one_error(tmp_path, shape, shown):
    data = tmp_path / "bad.npz"
    np.savez(data, image=np.zeros(shape, np.float32))
    run = run_cli_subprocess("simulate", PB, "--input", data, "--output", tmp_path / "r.npz")
    assert_one_error(run, "input 'image'", shown, "(-1,8,8,1)")
    assert not (tmp_path / "r.npz").exists()


def _low_rank_conv_pb(tmp_path: Path) -> tuple[Path, Path]:
    """A frozen .pb with a 3x3 64->64 conv of rank 4 (so decompose splits it), then a
    Mul by a constant, the pattern grappler's MulConvPushDown aborted the process on."""
    script = f'''
import numpy as np, keras
from amct_targets.graph.load import load_model
keras.utils.set_random_seed(0)
x = keras.Input((8, 8, 64), name="image")
y = keras.layers.Conv2D(64, 3, padding="same", name="conv", use_bias=True)(x)
y = keras.layers.Rescaling(0.5, name="scale")(y)
y = keras.layers.Conv2D(8, 1, name="head")(keras.layers.ReLU()(y))
m = keras.Model(x, keras.layers.GlobalAveragePooling2D()(y))
rng = np.random.default_rng(0)
k = np.einsum("hwir,ro->hwio", rng.normal(0, .2, (3, 3, 64, 4)), rng.normal(0, .2, (4, 64)))
m.get_layer("conv").set_weights([k.astype("float32"), np.zeros(64, "float32")])
open(r"{tmp_path / 'lowrank.pb'}", "wb").write(load_model(m).serialize())
np.savez(r"{tmp_path / 'calib.npz'}", image=rng.normal(0, 1, (16, 8, 8, 64)).astype("float32"))
'''
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    return tmp_path / "lowrank.pb", tmp_path / "calib.npz"


def test_simulate_after_decompose_and_quantize_runs_in_a_fresh_process(tmp_path):
    pb, calib = _low_rank_conv_pb(tmp_path)
    config = _config(tmp_path, "passes:\n  decompose: {enabled: true}\n")
    out = tmp_path / "out"
    run = run_cli_subprocess("build", pb, "--target", "ascend310", "--calib", calib,
                             "--config", config, "--output", out, "--json")
    assert run.returncode == 0, run.stderr
    (report,) = json.loads(run.stdout)["targets"]
    ran = {p["name"]: p for p in report["passes"] if p["status"] == "ran"}
    assert ran["decompose"]["metrics"]["decomposed"] == 1
    assert ran["quantize"]["metrics"]["quantized"] >= 3
    sim = run_cli_subprocess("simulate", out / "ascend310" / "lowrank.pb", "--input", calib,
                             "--output", tmp_path / "sim.npz")
    assert sim.returncode == 0, sim.stderr[-3000:]
    assert "Check failed" not in sim.stderr
    (result,) = np.load(tmp_path / "sim.npz").values()
    assert result.shape == (16, 8) and np.isfinite(result).all()


# --- 12, 13, 15: config mistakes are named before any work ------------------------------------

@pytest.mark.parametrize("text, fragments", [
    ("passes:\n  prune_channels: {enabled: true}\n",
     ("pass 'prune_channels'", "--train F.npz")),
    ("passes:\n  quantize:\n    skip_layers: [conv_1x]\n",
     ("unknown layer 'conv_1x'", "known: ", "digits_cnn_1/conv2d_1_2/convolution")),
    ("passes:\n  quantize:\n    batch_nums: 2\n",
     ("unknown quantization option 'batch_nums'", "did you mean 'batch_num'")),
    ("passes:\n  quantize:\n    digits_cnn_1/logits_1/MatMull:\n      activation_quant_params: "
     "{act_algo: hfmg}\n", ("digits_cnn_1/logits_1/MatMull", "digits_cnn_1/logits_1/MatMul")),
])
def test_config_mistakes_name_the_option_or_layer(tmp_path, earlier_build, text, fragments):
    config = _config(tmp_path, text)
    _build_fails(tmp_path, earlier_build, PB, "--target", "ascend310", "--calib", CALIB,
                 "--config", config, fragments=fragments)


def test_amct_config_json_is_type_checked(tmp_path, earlier_build):
    amct = tmp_path / "quant.json"
    amct.write_text('{"batch_num": "four"}', encoding="utf-8")
    config = _config(tmp_path, f"passes:\n  quantize:\n    amct_config: {amct}\n")
    _build_fails(tmp_path, earlier_build, PB, "--target", "ascend310", "--calib", CALIB,
                 "--config", config, fragments=(f"{amct}", "batch_num", "'four'", "integer"))


# --- 16: check agrees with build on the build's own output ------------------------------------

def test_check_on_the_builds_own_output_agrees_with_the_build(earlier_build):
    for target in ("ascend310",):
        report = json.loads((earlier_build / target / "report.json").read_text())
        assert report["metrics"]["check_errors"] == 0
        run = run_cli_subprocess("check", earlier_build / target / "digits_cnn.pb",
                                 "--target", target)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "0 error(s)" in run.stdout


# --- 17: plugins that raise, exit, print a novel, return garbage, or mutate ------------------

PLUGIN_TEMPLATE = '''
import sys
from amct_targets import hookimpl
from amct_targets.passes.base import CompressionPass


class Bad(CompressionPass):
    name, summary, enabled_by_default = "bad", "misbehaves", True
    after = ("fold_bn",)

    def apply(self, model, ctx):
        return model

    {body}


@hookimpl
def register_passes(registry):
    registry.add(Bad())
'''

BAD_PLUGINS = {
    "layers_raises": ("exclusive_with = ('fold_bn',)\n\n    def layers(self, model, config):\n"
                      "        raise KeyError('nope')",
                      ("plugin 'bad_layers_raises'", "KeyError")),
    "bad_schema": ("config_schema = {'type': 'objekt'}",
                   ("plugin 'bad_bad_schema'", "config_schema")),
    "exit_in_apply": ("def apply(self, model, ctx):\n        sys.exit(0)",
                      ("plugin 'bad_exit_in_apply'", "SystemExit")),
    "novel": ("def apply(self, model, ctx):\n        raise RuntimeError('line\\n' * 31)",
              ("plugin 'bad_novel'", "RuntimeError: line")),
}


@pytest.mark.parametrize("kind", sorted(BAD_PLUGINS))
def test_misbehaving_plugin_is_one_error_naming_it(tmp_path, earlier_build, kind):
    body, fragments = BAD_PLUGINS[kind]
    module = f"bad_{kind}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_TEMPLATE.format(body=body), encoding="utf-8")
    before = tree_sha(earlier_build)
    run = run_cli_subprocess("build", PB, "--target", "ascend310", "--plugin", module,
                             "--output", earlier_build, env={"PYTHONPATH": str(tmp_path)})
    assert_one_error(run, *fragments)
    assert len(run.stderr) < 400
    assert tree_sha(earlier_build) == before


def test_plugin_exiting_at_import_is_one_error(tmp_path, earlier_build):
    (tmp_path / "exits_on_import.py").write_text("raise SystemExit(0)\n", encoding="utf-8")
    run = run_cli_subprocess("build", PB, "--target", "ascend310", "--plugin",
                             "exits_on_import", "--output", earlier_build,
                             env={"PYTHONPATH": str(tmp_path)})
    assert_one_error(run, "exits_on_import")


def test_plugin_atc_options_as_a_string_is_refused(tmp_path, earlier_build):
    (tmp_path / "stringy.py").write_text(
        "from amct_targets import hookimpl\n\n@hookimpl\ndef atc_options(profile, plan, model):"
        "\n    return '--log=info'\n", encoding="utf-8")
    run = run_cli_subprocess("build", PB, "--target", "ascend310", "--plugin", "stringy",
                             "--output", earlier_build, env={"PYTHONPATH": str(tmp_path)})
    assert_one_error(run, "atc_options", "list of '--flag=value' strings")


def test_a_pass_that_mutates_its_input_is_refused_and_cannot_leak(tmp_path, earlier_build):
    """The pass runs on a private copy; an in-place edit is caught before anything is written,
    so no target's .pb ever carries another target's edit."""
    (tmp_path / "mutator.py").write_text(PLUGIN_TEMPLATE.format(body=(
        "def apply(self, model, ctx):\n"
        "        node = model.graph_def.node.add()\n"
        "        node.name, node.op = 'leak_' + ctx.profile.name, 'NoOp'\n"
        "        return model")), encoding="utf-8")
    before = tree_sha(earlier_build)
    run = run_cli_subprocess("build", PB, "--target", "ascend310", "--target", "ascend910",
                             "--plugin", "mutator", "--output", earlier_build,
                             env={"PYTHONPATH": str(tmp_path)})
    assert_one_error(run, "pass 'bad' (plugin 'mutator')", "in place", "copy_graph_def()")
    assert tree_sha(earlier_build) == before


# --- 19: usability --------------------------------------------------------------------------

def test_version_and_plan_for_all_and_repeated_targets():
    from amct_targets import __version__

    version = run_cli_subprocess("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"amct-targets {__version__}"
    every = run_cli_subprocess("plan", PB, "--target", "all", "--json")
    assert every.returncode == 0, every.stderr
    plans = json.loads(every.stdout)
    targets = [p["target"] for p in (plans["plans"] if isinstance(plans, dict) else plans)]
    assert targets == ["ascend310", "ascend310p", "ascend910", "ascend910b"]
    two = run_cli_subprocess("plan", PB, "--target", "ascend310", "--target", "ascend910b",
                             "--json")
    plans = json.loads(two.stdout)
    assert [p["target"] for p in (plans["plans"] if isinstance(plans, dict) else plans)] == [
        "ascend310", "ascend910b"]


def test_python_api_build_prints_no_tensorflow_log_lines(tmp_path):
    script = (f"import amct_targets as at\nat.build(r'{PB}', 'ascend310', calib=r'{CALIB}', "
              f"output_dir=r'{tmp_path / 'o'}')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    noisy = [line for line in run.stderr.splitlines()
             if "tensorflow" in line.lower() or line[:5] in ("I0000", "W0000", "E0000")]
    assert noisy == [], noisy


def test_progress_lines_name_each_pass_once(tmp_path):
    """Progress shows on a terminal; `script` gives the build a real pty."""
    import shutil

    if shutil.which("script") is None:
        pytest.skip("util-linux `script` is not installed")
    command = (f"{sys.executable} -m amct_targets build {PB} --target ascend310 "
               f"--calib {CALIB} --output {tmp_path / 'o'}")
    run = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout
    import re

    assert not re.search(r"\b(\w+): \1:", run.stdout), run.stdout
    assert "fold_bn" in run.stdout
