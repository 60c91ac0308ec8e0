"""The model zoo's CI subset (benchmarks/model_zoo.py runs the whole zoo): a ViT from Keras
layers, a grouped-conv net and an AvgPool net, BN statistics from photo crops, each built for
every target. Every compute op of each emitted .pb is INT8 or listed in report.json as float
with its reason; the ATC check finds no error; the simulated INT8 model stays close to float
on held-out crops."""
from __future__ import annotations

import numpy as np
import pytest

import amct_targets as at
from zoo_small import (avgpool_net, compute_op_status, grouped_conv_net, photo_crops,
                       set_bn_statistics, sqnr_cosine, tiny_vit)

pytestmark = pytest.mark.filterwarnings("ignore")

# Thresholds a little under what these builds measure (see docs/zoo.md), so a regression in
# calibration, folding or the rewrites fails here.
CASES = {
    "tiny_vit": (tiny_vit, 25.0),
    "grouped_conv_net": (grouped_conv_net, 25.0),
    "avgpool_net": (avgpool_net, 25.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_zoo_subset_builds_for_every_target_int8_or_reported(name, tmp_path):
    from amct_targets.graph.load import read_graph_def

    builder, min_sqnr = CASES[name]
    model = set_bn_statistics(builder(image=32), photo_crops(32, 32, seed=7))
    calib, held_out = photo_crops(32, 32, seed=1), photo_crops(16, 32, seed=2)
    reference = np.asarray(model(held_out, training=False))
    reports = at.build(model, "all", calib=calib, output_dir=tmp_path / "out")
    assert sorted(reports) == sorted(at.list_targets())
    for target, report in reports.items():
        pb = tmp_path / "out" / target / report["artifacts"]["pb"]
        status = compute_op_status(read_graph_def(pb, importable=False), report)
        assert status["unreported"] == [], (target, status["unreported"])
        assert status["int8"], target
        assert [c for c in report["checks"] if c["severity"] == "error"] == [], target
        sqnr, cosine = sqnr_cosine(reference, at.load_simulation(pb)(held_out))
        assert sqnr > min_sqnr and cosine > 0.99, (target, sqnr, cosine)
    if name == "tiny_vit":
        reasons = [r for _, op, r in status["reported"] if op.startswith("BatchMatMul")]
        assert len(reasons) == 4 and all("both operands are activations" in r for r in reasons)
    if name == "grouped_conv_net":
        fold = next(p for p in report["passes"] if p["name"] == "fold_bn")
        assert [x for x in fold["layers"] if x["status"] != "folded"] == []
    if name == "avgpool_net":
        pools = [n for n in status["int8"] if "average_pooling" in n]
        assert len(pools) == 4, status
