"""Work shared across targets (shared.py): a target's output from a `--target all` build is
byte-identical to its one-target build, and the shared passes really ran once."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import amct_targets as at

TARGETS = ("ascend310", "ascend310p", "ascend910", "ascend910b")


def _normalized_report(path: Path, out: Path) -> dict:
    """report.json without what differs between any two builds: pass seconds, the output
    folder's path, and the `shared_from` mark itself."""
    report = json.loads(path.read_text().replace(str(out.resolve()), "OUT"))
    for entry in report["passes"]:
        entry.pop("seconds")
        entry.pop("shared_from", None)
    return report


def _compare(all_out: Path, one_outs: dict[str, Path]) -> None:
    for target, one_out in one_outs.items():
        a, b = all_out / target, one_out / target
        files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
        files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
        assert files_a == files_b, target
        for name in files_a:
            if name == "report.html":   # a rendering of report.json, seconds included
                continue
            if name == "report.json":
                assert _normalized_report(a / name, all_out) == \
                    _normalized_report(b / name, one_out), target
                continue
            data_a, data_b = (a / name).read_bytes(), (b / name).read_bytes()
            if name == "atc.sh":        # names the final output folder
                data_a = data_a.replace(str(all_out.resolve()).encode(), b"OUT")
                data_b = data_b.replace(str(one_out.resolve()).encode(), b"OUT")
            assert data_a == data_b, f"{target}/{name} differs"


def _build_both(tmp_path, model, calib, config=None):
    reports = at.build(model, "all", calib=calib, config=config, output_dir=tmp_path / "all")
    assert sorted(reports) == sorted(TARGETS)
    ones = {}
    for target in TARGETS:
        ones[target] = tmp_path / f"one_{target}"
        at.build(model, target, calib=calib, config=config, output_dir=ones[target])
    _compare(tmp_path / "all", ones)
    return reports


def _shared(reports, target, name):
    entry = next(p for p in reports[target]["passes"] if p["name"] == name)
    return entry.get("shared_from")


def test_demo_all_targets_byte_identical_to_one_target_builds(tmp_path, demo_pb, demo_calib):
    reports = _build_both(tmp_path, demo_pb, demo_calib)
    first = TARGETS[0]
    assert _shared(reports, first, "quantize") is None
    for target in TARGETS[1:]:
        assert _shared(reports, target, "fold_bn") == first
        assert _shared(reports, target, "quantize") == first
        assert (tmp_path / "all" / target / "record.txt").read_bytes() == \
            (tmp_path / "all" / first / "record.txt").read_bytes()


def test_small_bn_model_with_calibration_byte_identical(tmp_path):
    from models import small_bn_cnn

    model = small_bn_cnn(seed=3)
    calib = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32)
    config = {"passes": {"quantize": {"batch_num": 2, "act_algo": "hfmg"}}}
    reports = _build_both(tmp_path, model, calib, config)
    for target in TARGETS[1:]:
        assert _shared(reports, target, "quantize") == TARGETS[0]


def test_a_pass_without_shared_key_runs_for_every_target(tmp_path, demo_pb, demo_calib):
    """A pass that declares no shared_key (the CompressionPass default) is not shared."""
    from amct_targets.passes.base import CompressionPass

    assert CompressionPass().shared_key(None, None) is None
    reports = at.build(demo_pb, ["ascend310", "ascend910"], calib=demo_calib,
                       config={"passes": {"quantize": {"enabled": False}}},
                       output_dir=tmp_path / "out")
    assert _shared(reports, "ascend910", "fold_bn") == "ascend310"
    assert all(_shared(reports, t, "quantize") is None for t in reports)


@pytest.mark.parametrize("scope", [{}, {"quantizable_ops": {"Conv2D": {}}, "name": None}])
def test_memo_key_changes_with_model_options_and_scope(scope, demo_pb):
    from amct_targets.graph.load import load_model
    from amct_targets.passes.base import PassContext, RegisteredPass
    from amct_targets.shared import PassMemo

    model = load_model(str(demo_pb))
    memo = PassMemo({"passes": {}})
    registered = RegisteredPass(CompressionPassStub(), "builtin")
    ctx = PassContext(profile=None, config={"a": 1})
    key = memo.key(registered, model, ctx, scope)
    assert key == memo.key(registered, model, PassContext(profile=None, config={"a": 1}), scope)
    assert key != memo.key(registered, model, PassContext(profile=None, config={"a": 2}), scope)
    assert key != memo.key(registered, model, ctx, {"other": 1})
    assert key != memo.key(registered, model.replace(name="other"), ctx, scope)
    assert memo.key(registered, model, ctx, None) is None


class CompressionPassStub:
    name = "stub"
