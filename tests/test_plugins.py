"""Hooks and plugins: built-ins through the same hooks, entry points, --plugin, validation,
the example plugin installed for real, and meta-tests over hooks and capability keys."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import amct_targets as at
from amct_targets.capabilities import BUILTIN_CAPABILITIES
from amct_targets.errors import PluginError
from amct_targets.graph.load import read_graph_def
from amct_targets.hooks.manager import DEFAULT_PLUGINS, load_plugins
from conftest import REPO, run_cli_subprocess
from plugin_fixtures import BAD_HOOK, RAISING_PASS, UNKNOWN_HOOK, write_plugin

def test_every_capability_key_is_documented_and_used_by_a_profile():
    readme = (REPO / "README.md").read_text()
    used = set()
    for profile in at.load_target("ascend310"), at.load_target("ascend910b"):
        used |= set(profile.data["capabilities"])
    for key in BUILTIN_CAPABILITIES:
        assert f"`{key}`" in readme, f"capability {key} is not documented in README.md"
        assert key in used, f"capability {key} is used by no built-in profile"


def test_builtin_passes_come_through_the_same_hooks():
    plugins = load_plugins(autoload=False)
    assert plugins.passes.get("fold_bn").plugin == "amct_targets.passes.fold_bn"
    assert all(plugins.origins[name] == "builtin" for name in DEFAULT_PLUGINS)
    hooked = {impl.plugin_name for impl in plugins.pm.hook.register_passes.get_hookimpls()}
    assert "amct_targets.passes.fold_bn" in hooked


def test_adjust_plan_hook_can_change_a_plan(tmp_path, monkeypatch, demo_pb):
    module = write_plugin(tmp_path, "adjuster", '''
from amct_targets import hookimpl

@hookimpl
def adjust_plan(plan, profile, config):
    for step in plan.steps:
        if step.name == "fold_bn" and profile.name == "ascend910":
            step.status, step.reason = "SKIP", "site policy: keep BN on 910"
''', monkeypatch)
    assert at.plan(demo_pb, "ascend910", plugins=[module]).steps[0].reason == \
        "site policy: keep BN on 910"
    assert at.plan(demo_pb, "ascend310", plugins=[module]).steps[0].status == "RUN"


def test_plugin_with_a_bad_hook_signature_is_named(tmp_path, monkeypatch):
    module = write_plugin(tmp_path, "bad_hook_plugin", BAD_HOOK, monkeypatch)
    with pytest.raises(PluginError, match="plugin 'bad_hook_plugin' is invalid"):
        load_plugins([module], autoload=False)


def test_plugin_implementing_an_unknown_hook_is_named(tmp_path, monkeypatch):
    module = write_plugin(tmp_path, "unknown_hook_plugin", UNKNOWN_HOOK, monkeypatch)
    with pytest.raises(PluginError, match="plugin 'unknown_hook_plugin' is invalid.*"
                                          "register_everything"):
        load_plugins([module], autoload=False)


def test_plugin_that_cannot_be_imported_is_named(tmp_path, monkeypatch):
    module = write_plugin(tmp_path, "broken_import", "import no_such_module_here\n", monkeypatch)
    with pytest.raises(PluginError, match="plugin 'broken_import' \\(--plugin\\) cannot be "
                                          "imported: ModuleNotFoundError"):
        load_plugins([module], autoload=False)


def test_duplicate_pass_names_name_both_plugins(tmp_path, monkeypatch):
    one = write_plugin(tmp_path, "boom_one", RAISING_PASS, monkeypatch)
    two = write_plugin(tmp_path, "boom_two", RAISING_PASS, monkeypatch)
    # pluggy calls the newest registration first
    with pytest.raises(PluginError, match="'boom' is registered twice: by plugin 'boom_two' "
                                          "and by plugin 'boom_one'"):
        load_plugins([one, two], autoload=False)


def test_trace_switch_prints_hook_calls(tmp_path, demo_pb):
    run = run_cli_subprocess("plan", demo_pb, "--target", "ascend310",
                             env={"AMCT_TARGETS_TRACE_PLUGINS": "1"})
    assert run.returncode == 0, run.stderr
    assert "[amct-targets trace] register_passes -> amct_targets.passes.fold_bn" in run.stderr
    assert "[amct-targets trace] adjust_plan -> amct_targets.passes.qat" in run.stderr
    assert "[amct-targets trace] build_finished" not in run.stderr  # plan builds nothing


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install the example plugin package (a real wheel build) into a private folder."""
    target = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(target),
                          str(REPO / "examples" / "amct-targets-fp16-example")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert list(target.glob("amct_targets_fp16_example-*.dist-info"))
    return target


def example_env(site, autoload=True):
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env["AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD"] = "" if autoload else "1"
    return env


def test_installed_example_plugin_is_found_through_its_entry_point(installed_example):
    run = run_cli_subprocess("passes", "--target", "example-npu", "--json",
                             env=example_env(installed_example))
    assert run.returncode == 0, run.stderr
    rows = {row["name"]: row for row in json.loads(run.stdout)}
    example = rows["round_weights_fp16"]
    assert example["plugin"] == "fp16_example"
    assert example["origin"] == "amct-targets-fp16-example 0.1.0"
    assert example["requires"] == ["fp16_weight_storage"] and example["supported"] is True
    off = run_cli_subprocess("passes", "--json", env=example_env(installed_example, False))
    assert "round_weights_fp16" not in {r["name"] for r in json.loads(off.stdout)}


def test_example_pass_runs_on_its_profile_and_is_skipped_elsewhere(installed_example, tmp_path,
                                                                   demo_pb):
    config = tmp_path / "config.yaml"
    config.write_text("passes:\n  round_weights_fp16: {enabled: true}\n")
    out = tmp_path / "out"
    run = run_cli_subprocess("build", demo_pb, "--target", "example-npu", "--target",
                             "ascend310", "--config", config, "--output", out, "--json",
                             env=example_env(installed_example))
    assert run.returncode == 0, run.stderr
    reports = {r["target"]: r for r in json.loads(run.stdout)["targets"]}
    ran = next(p for p in reports["example-npu"]["passes"] if p["name"] == "round_weights_fp16")
    assert ran["status"] == "ran"
    assert ran["metrics"]["weights_rounded"] > 500
    assert 0 < ran["metrics"]["max_abs_change"] < 1e-3
    skipped = next(p for p in reports["ascend310"]["passes"]
                   if p["name"] == "round_weights_fp16")
    assert skipped["status"] == "skipped"
    assert skipped["reason"] == ("Ascend 310 does not support 'fp16_weight_storage' "
                                 "(profile ascend310.yaml)")
    assert reports["example-npu"]["soc_version"] == "Ascend310P3"  # inherited by extends
    assert reports["example-npu"]["checks"] == []   # ATC accepts the plugin's op there
    # the plugin's op runs in `simulate` through its registered expander
    pb = out / "example-npu" / "digits_cnn.pb"
    nodes = read_graph_def(pb, importable=False).node
    assert sum(n.op == "ExampleFp16Weight" for n in nodes) == 4
    images = np.load(REPO / "amct_targets" / "demo" / "digits_calib.npz")["image"][:16]
    np.savez(tmp_path / "x.npz", image=images)
    run = run_cli_subprocess("simulate", pb, "--input", tmp_path / "x.npz", "--output",
                             tmp_path / "y.npz", env=example_env(installed_example))
    assert run.returncode == 0, run.stderr
    fp16 = next(iter(np.load(tmp_path / "y.npz").values()))
    fp32 = at.load_simulation(demo_pb)(images)
    assert np.max(np.abs(fp16 - fp32)) < 1e-2 * np.max(np.abs(fp32))
    assert np.array_equal(fp16.argmax(-1), fp32.argmax(-1))
    ok = run_cli_subprocess("check", pb, "--target", "example-npu",
                            env=example_env(installed_example))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = run_cli_subprocess("check", pb, "--target", "ascend310",
                                 env=example_env(installed_example))
    assert refused.returncode == 3
    assert "unsupported-op" in refused.stdout and "ExampleFp16Weight" in refused.stdout


def test_plugin_capability_keys_and_targets(tmp_path, monkeypatch):
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "lidar.yaml").write_text("name: lidar\nextends: ascend310p\n"
                                       "capabilities: {point_cloud_ops: true}\n")
    module = write_plugin(tmp_path, "lidar_plugin", f'''
from amct_targets import hookimpl

@hookimpl
def register_capabilities(registry):
    registry.add("point_cloud_ops", "chip runs point-cloud kernels")

@hookimpl
def register_targets(registry):
    registry.add_dir({str(boards)!r})
''', monkeypatch)
    with pytest.raises(at.ProfileError, match="capabilities.point_cloud_ops: unknown capability"):
        at.list_targets(targets_dirs=[boards])
    assert "lidar" in at.list_targets(plugins=[module])
    profile = at.load_target("lidar", plugins=[module])
    assert profile.origin == "lidar_plugin"
    assert profile.capability("point_cloud_ops").supported
