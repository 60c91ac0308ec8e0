"""Meta-tests of the extension points: every hookspec has a scenario in which a real plugin
implements it, the implementation is really called (counted by the plugin itself), and what
it returns changes the result; every hookspec is documented (docstring with its parameters and
return value, and a row in the README's hook table).

A new hookspec without a scenario here fails `test_every_hookspec_has_a_scenario`.
"""
from __future__ import annotations

import inspect
import json
import re
import sys

import numpy as np
import pytest

import amct_targets as at
from amct_targets.hooks import specs
from conftest import REPO
from plugin_fixtures import write_plugin

HOOK_NAMES = sorted(name for name, fn in inspect.getmembers(specs, inspect.isfunction)
                    if hasattr(fn, "amct_targets_spec"))
COUNTER = '''
CALLS = []
'''


def calls(module: str) -> list:
    return sys.modules[module].CALLS


def scenario_register_passes(tmp_path, monkeypatch, demo_pb, demo_calib):
    module = write_plugin(tmp_path, "meta_passes", COUNTER + '''
from amct_targets import hookimpl
from amct_targets.passes.base import CompressionPass

class CountNodes(CompressionPass):
    name, summary, enabled_by_default, after = "count_nodes", "counts nodes", True, ("fold_bn",)
    def apply(self, model, ctx):
        ctx.report.metrics["nodes"] = len(model.graph_def.node)
        return model

@hookimpl
def register_passes(registry):
    CALLS.append("register_passes")
    registry.add(CountNodes())
''', monkeypatch)
    report = at.build(demo_pb, "ascend310", output_dir=tmp_path / "o", plugins=[module])
    entry = next(p for p in report["ascend310"]["passes"] if p["name"] == "count_nodes")
    assert entry["status"] == "ran" and entry["metrics"]["nodes"] > 10
    return module


def scenario_register_targets(tmp_path, monkeypatch, demo_pb, demo_calib):
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "meta-board.yaml").write_text("name: meta-board\nextends: ascend310\n")
    module = write_plugin(tmp_path, "meta_targets", COUNTER + f'''
from amct_targets import hookimpl

@hookimpl
def register_targets(registry):
    CALLS.append("register_targets")
    registry.add_dir({str(boards)!r})
''', monkeypatch)
    assert "meta-board" in at.list_targets(plugins=[module])
    assert at.load_target("meta-board", plugins=[module]).origin == module
    return module


def scenario_register_capabilities(tmp_path, monkeypatch, demo_pb, demo_calib):
    boards = tmp_path / "caps"
    boards.mkdir()
    (boards / "lidar.yaml").write_text("name: lidar\nextends: ascend310p\n"
                                       "capabilities: {point_cloud_ops: true}\n")
    module = write_plugin(tmp_path, "meta_caps", COUNTER + '''
from amct_targets import hookimpl

@hookimpl
def register_capabilities(registry):
    CALLS.append("register_capabilities")
    registry.add("point_cloud_ops", "chip runs point-cloud kernels")
''', monkeypatch)
    with pytest.raises(at.ProfileError, match="unknown capability key"):
        at.load_target("lidar", targets_dirs=[boards])
    assert at.load_target("lidar", plugins=[module], targets_dirs=[boards]).capability(
        "point_cloud_ops").supported
    return module


OP_PLUGIN = COUNTER + '''
import numpy as np
from amct_targets import hookimpl
from amct_targets.graph.ops import AtcAcceptance, OpSpec

def expand_triple(node, builder):
    CALLS.append("expand")
    builder.op("times", "Mul", [builder.inputs[0], builder.const("three", np.float32(3))])

@hookimpl
def register_ops(registry):
    CALLS.append("register_ops")
    registry.add(OpSpec("MetaTriple", expand=expand_triple,
                        atc=AtcAcceptance(True, "meta test", targets=("ascend310",))))
'''


def _triple_graph(path):
    from amct_targets.graph.nodes import attr_value, float_type, make_node

    from tensorflow.core.framework import graph_pb2, tensor_shape_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                   for d in (1, 4)])
    graph = graph_pb2.GraphDef(node=[
        make_node("x", "Placeholder", [], dtype=float_type(), shape=attr_value(shape=shape)),
        make_node("y", "MetaTriple", ["x"], T=float_type())])
    path.write_bytes(graph.SerializeToString())
    return path


def scenario_register_ops(tmp_path, monkeypatch, demo_pb, demo_calib):
    module = write_plugin(tmp_path, "meta_ops", OP_PLUGIN, monkeypatch)
    pb = _triple_graph(tmp_path / "triple.pb")
    with pytest.raises(at.ModelError, match="op type MetaTriple"):
        at.load_simulation(pb)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(at.load_simulation(pb, plugins=[module])(x), 3 * x)
    assert "expand" in calls(module)
    assert not [f for f in at.check(pb, "ascend310", plugins=[module]) if f.severity == "error"]
    codes = {f.code for f in at.check(pb, "ascend910", plugins=[module])}
    assert "unsupported-op" in codes   # declared for ascend310 only
    return module


def scenario_register_quantizers(tmp_path, monkeypatch, demo_pb, demo_calib):
    module = write_plugin(tmp_path, "meta_quant", COUNTER + '''
from amct_targets import hookimpl
from amct_targets.calibration.stats import quant_params
from amct_targets.quant.algorithms import ActivationAlgorithm, StatsRequest

def minmax(stats, params):
    CALLS.append("compute")
    low, high = min(stats.min, 0.0), max(stats.max, 0.0)
    scale = (high - low) / 255 if high > low else 1.0
    return quant_params(scale, int(round(-low / scale)) - 128, 8)

@hookimpl
def register_quantizers(registry):
    CALLS.append("register_quantizers")
    registry.add_activation(ActivationAlgorithm(
        "minmax", {"margin": {"type": "number"}}, {"margin": 0.0},
        lambda params: StatsRequest(percentile=1.0, bins=16), minmax))
''', monkeypatch)
    config = {"passes": {"quantize": {"act_algo": "minmax"}}}
    with pytest.raises(at.ConfigError, match="unknown act_algo 'minmax'"):
        at.plan(demo_pb, "ascend310", config=config, calib=demo_calib)
    report = at.build(demo_pb, "ascend310", calib=demo_calib, config=config,
                      output_dir=tmp_path / "q", plugins=[module])["ascend310"]
    layers = [e for p in report["passes"] if p["name"] == "quantize" for e in p["layers"]
              if e["status"] == "quantized"]
    assert layers and all(e["act_algo"] == "minmax" for e in layers)
    assert calls(module).count("compute") == len(layers)
    return module


LOADER_PLUGIN = COUNTER + '''
from pathlib import Path
from amct_targets import hookimpl

@hookimpl
def load_model(source, options):
    if not str(source).endswith(".pbtxt"):
        return None
    CALLS.append("load_model")
    from google.protobuf import text_format
    from tensorflow.core.framework import graph_pb2
    from amct_targets.graph.load import model_from_graph_def
    graph = text_format.Parse(Path(source).read_text(), graph_pb2.GraphDef())
    return model_from_graph_def(graph, outputs=options.outputs, where=str(source),
                                name=Path(source).stem)
'''


def scenario_load_model(tmp_path, monkeypatch, demo_pb, demo_calib):
    from google.protobuf import text_format

    from amct_targets.graph.load import read_graph_def

    module = write_plugin(tmp_path, "meta_loader", LOADER_PLUGIN, monkeypatch)
    text = tmp_path / "digits.pbtxt"
    text.write_text(text_format.MessageToString(read_graph_def(demo_pb)))
    with pytest.raises(at.ModelError):
        at.plan(text, "ascend310")
    report = at.build(text, "ascend310", calib=demo_calib, output_dir=tmp_path / "l",
                      plugins=[module])["ascend310"]
    assert report["artifacts"]["pb"] == "digits.pb"
    assert [p["status"] for p in report["passes"] if p["name"] == "quantize"] == ["ran"]
    return module


def scenario_adjust_plan(tmp_path, monkeypatch, demo_pb, demo_calib):
    module = write_plugin(tmp_path, "meta_adjust", COUNTER + '''
from amct_targets import hookimpl

@hookimpl
def adjust_plan(plan, profile, config):
    CALLS.append(profile.name)
    if profile.name == "ascend910":
        plan.step("fold_bn").status, plan.step("fold_bn").reason = "SKIP", "site policy"
''', monkeypatch)
    assert at.plan(demo_pb, "ascend910", plugins=[module]).step("fold_bn").reason == \
        "site policy"
    assert at.plan(demo_pb, "ascend310", plugins=[module]).step("fold_bn").status == "RUN"
    return module


def scenario_atc_options(tmp_path, monkeypatch, demo_pb, demo_calib):
    module = write_plugin(tmp_path, "meta_flags", COUNTER + '''
from amct_targets import hookimpl

@hookimpl
def atc_options(profile, plan, model):
    CALLS.append(profile.name)
    return ["--log=info", "--soc_version=ShouldBeIgnored"]
''', monkeypatch)
    report = at.build(demo_pb, "ascend310", output_dir=tmp_path / "f",
                      plugins=[module])["ascend310"]
    assert "--log=info" in report["atc_argv"]
    assert "--soc_version=Ascend310" in report["atc_argv"]
    assert "--soc_version=ShouldBeIgnored" not in report["atc_argv"]
    return module


def scenario_check_model(tmp_path, monkeypatch, demo_pb, demo_calib):
    module = write_plugin(tmp_path, "meta_check", COUNTER + '''
from amct_targets import hookimpl
from amct_targets.deploy.check import Finding

@hookimpl
def check_model(graph_def, profile, input_specs, ops):
    CALLS.append(len(graph_def.node))
    return [Finding("warning", "site-rule", "", f"{len(input_specs)} input(s) checked")]
''', monkeypatch)
    findings = at.check(demo_pb, "ascend310", plugins=[module])
    assert [f.message for f in findings if f.code == "site-rule"] == ["1 input(s) checked"]
    return module


def scenario_build_finished(tmp_path, monkeypatch, demo_pb, demo_calib):
    module = write_plugin(tmp_path, "meta_finished", COUNTER + '''
from amct_targets import hookimpl

@hookimpl
def build_finished(report, target_dir):
    CALLS.append((report["target"], sorted(p.name for p in target_dir.iterdir())))
    report["meta_finished"] = {"seen": True}
''', monkeypatch)
    report = at.build(demo_pb, ["ascend310", "ascend910"], output_dir=tmp_path / "b",
                      plugins=[module])
    assert sorted(target for target, _ in calls(module)) == ["ascend310", "ascend910"]
    assert all("atc.sh" in files for _, files in calls(module))
    saved = json.loads((tmp_path / "b" / "ascend310" / "report.json").read_text())
    assert saved["meta_finished"] == {"seen": True} and report["ascend310"]["meta_finished"]
    return module


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items()
             if name.startswith("scenario_")}


def test_every_hookspec_has_a_scenario():
    assert sorted(SCENARIOS) == HOOK_NAMES


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hook_is_called_for_real_and_changes_the_result(hook, tmp_path, monkeypatch, demo_pb,
                                                        demo_calib):
    module = SCENARIOS[hook](tmp_path, monkeypatch, demo_pb, demo_calib)
    plugin = sys.modules[module]
    implemented = [name for name in HOOK_NAMES if callable(getattr(plugin, name, None))]
    assert implemented == [hook], f"scenario plugin must implement exactly {hook}"
    assert plugin.CALLS, f"the plugin's {hook} implementation was never called"


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hook_is_documented_in_its_spec_and_the_readme(hook):
    fn = getattr(specs, hook)
    doc = inspect.getdoc(fn) or ""
    for arg in inspect.signature(fn).parameters:
        assert re.search(rf":param {arg}:", doc), f"{hook}: argument {arg} undocumented"
    assert ":return:" in doc, f"{hook}: return value undocumented"
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"^\| `{hook}\(", readme, re.M), f"{hook} has no row in README's table"
