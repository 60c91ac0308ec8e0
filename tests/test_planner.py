"""Planner: order, capability gating with the profile's reason, data needs, conflicts."""
from __future__ import annotations

import pytest

import amct_targets as at
from amct_targets.errors import ConfigError, PlanError
from plugin_fixtures import CONFLICT_PASSES, DATA_PASS, write_plugin


def statuses(plan):
    return [(s.name, s.status) for s in plan.steps]


def test_demo_plan_runs_fold_bn_everywhere_and_quantize_with_calibration(demo_pb, demo_calib):
    for target in at.list_targets():
        plan = at.plan(demo_pb, target)
        assert statuses(plan) == [("fold_bn", "RUN"), ("decompose", "SKIP"),
                                  ("prune_channels", "SKIP"),
                                  ("sparsify_4of2", "SKIP"), ("qat", "SKIP"),
                                  ("fast_softmax", "SKIP"), ("quantize", "SKIP")]
        assert plan.step("quantize").reason == "needs calibration data; give it with --calib F.npz"
        assert plan.soc_version == at.load_target(target).soc_version
        calibrated = at.plan(demo_pb, target, calib=demo_calib)
        assert statuses(calibrated)[-1] == ("quantize", "RUN")


def test_order_is_stage_then_after_then_name(tmp_path, monkeypatch, demo_pb):
    module = write_plugin(tmp_path, "data_pass_plugin", DATA_PASS, monkeypatch)
    plan = at.plan(demo_pb, "ascend310", calib={"image": __import__("numpy").zeros((2, 8, 8, 1))},
                   plugins=[module])
    # prepare < retrain < graph; sparsify_4of2 declares before=qat; ties by name
    assert [s.name for s in plan.steps] == ["fold_bn", "decompose", "early_retrain",
                                            "prune_channels", "sparsify_4of2", "qat",
                                            "count_nodes", "fast_softmax", "quantize"]


def test_pass_needing_calibration_is_skipped_with_that_reason(tmp_path, monkeypatch, demo_pb):
    module = write_plugin(tmp_path, "data_pass_plugin", DATA_PASS, monkeypatch)
    step = at.plan(demo_pb, "ascend310", plugins=[module]).step("count_nodes")
    assert step.status == "SKIP"
    assert step.reason == "needs calibration data; give it with --calib F.npz"


def test_capability_gating_uses_the_profiles_reason(tmp_path, demo_pb):
    config = tmp_path / "c.yaml"
    config.write_text("passes: {fold_bn: {enabled: true}}\n")
    board = tmp_path / "boards"
    board.mkdir()
    (board / "nobn.yaml").write_text(
        "name: nobn\nextends: ascend310\ncapabilities:\n  bn_fusion:\n    supported: false\n"
        "    reason: this board keeps BatchNorm separate\n")
    plan = at.plan(demo_pb, "nobn", config=config, targets_dirs=[board])
    assert statuses(plan)[0] == ("fold_bn", "SKIP")
    assert plan.steps[0].reason == "this board keeps BatchNorm separate"
    forced = at.plan(demo_pb, "nobn", config={"passes": {"fold_bn": {"force": True}}},
                     targets_dirs=[board])
    assert statuses(forced)[0] == ("fold_bn", "RUN")
    assert "this board keeps BatchNorm separate" in forced.steps[0].warnings[0]


def test_disabled_pass_is_skipped_with_reason(demo_pb):
    plan = at.plan(demo_pb, "ascend310", config={"passes": {"fold_bn": {"enabled": False}}})
    assert plan.steps[0].status == "SKIP"
    assert plan.steps[0].reason == "disabled in the build config"


def test_unknown_pass_in_config_is_named(demo_pb):
    with pytest.raises(PlanError, match="passes.fold_everything: no such pass"):
        at.plan(demo_pb, "ascend310", config={"passes": {"fold_everything": {"enabled": True}}})


def test_pass_options_are_validated_against_the_pass_schema(tmp_path, monkeypatch, demo_pb):
    module = write_plugin(tmp_path, "data_pass_plugin", DATA_PASS, monkeypatch)
    with pytest.raises(ConfigError, match=r"passes.count_nodes.limit: 0 is less than"):
        at.plan(demo_pb, "ascend310", config={"passes": {"count_nodes": {"limit": 0}}},
                plugins=[module])


def test_bad_build_config_file_names_the_field(tmp_path, demo_pb):
    config = tmp_path / "c.json"
    config.write_text('{"passes": {"fold_bn": {"enabled": "yes"}}}')
    with pytest.raises(ConfigError) as info:
        at.plan(demo_pb, "ascend310", config=config)
    assert str(config) in str(info.value) and "fold_bn" in str(info.value)


def test_conflicting_passes_on_the_same_layer_fail_before_work(tmp_path, monkeypatch, demo_pb):
    module = write_plugin(tmp_path, "conflict_plugin", CONFLICT_PASSES, monkeypatch)
    with pytest.raises(PlanError) as info:
        at.plan(demo_pb, "ascend310", plugins=[module])
    message = str(info.value)
    assert "'touch_all' and 'touch_convs'" in message
    assert "layer '" in message
    # touch_matmul excludes touch_convs, but the demo's only MatMul is not a Conv2D: no clash
    plan = at.plan(demo_pb, "ascend310", plugins=[module],
                   config={"passes": {"touch_all": {"enabled": False}}})
    assert plan.step("touch_matmul").status == "RUN"
    assert plan.step("touch_convs").status == "RUN"


def test_plan_cli_prints_run_and_skip_with_reasons(cli, demo_pb, tmp_path):
    result = cli("plan", demo_pb, "--target", "ascend310p")
    assert result.code == 0
    assert "plan for ascend310p (soc_version Ascend310P3):" in result.out
    lines = [line.split() for line in result.out.splitlines()[1:]]
    assert lines[0] == ["1.", "RUN", "fold_bn", "target", "supports", "bn_fusion"]
    assert lines[-1][:3] == ["7.", "SKIP", "quantize"]
    assert result.out.splitlines()[-1].endswith("needs calibration data; give it with --calib F.npz")
    as_json = cli("plan", demo_pb, "--target", "ascend310p", "--json").json()
    assert as_json["steps"][0]["status"] == "RUN"
