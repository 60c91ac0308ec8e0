"""Evaluation in the build (`--eval`), the accuracy budget (`accuracy:`), cross-layer
equalization, bias correction, and AMCT-style auto-calibration, on real TensorFlow graphs.

CI-fast tests use the bundled demo model and untrained outlier CNNs; the tests marked slow
train the outlier digits CNNs of benchmarks/outlier_models.py (seconds each)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import amct_targets as at  # noqa: E402
from amct_targets.accuracy.search import search_fallback  # noqa: E402
from amct_targets.errors import ConfigError  # noqa: E402

BUDGET = {"metric": "top1", "max_drop": 0.5}


def digits_eval(count: int = 450):
    from amct_targets.demo.make_demo import digits_split

    x_train, _, x_test, y_test = digits_split(0)
    return x_train, x_test[:count], y_test[:count]


# --- the search: a plain function ---------------------------------------------------------

def test_search_finds_the_shortest_prefix_in_log_trials():
    ranked = [f"layer{i}" for i in range(16)]
    calls = []

    def trial(float_layers):
        calls.append(list(float_layers))
        ok = len(float_layers) >= 5
        return ok, max(0.0, 5 - len(float_layers))

    result = search_fallback(ranked, trial)
    assert result.float_layers == ranked[:5] and result.ok and result.loss == 0.0
    assert [len(c) for c in calls] == [0, 8, 4, 6, 5]
    assert result.roll_back_config(ranked, result.float_layers)["layer4"] is False
    assert result.roll_back_config(ranked, result.float_layers)["layer5"] is True


def test_search_runs_nothing_when_the_budget_already_holds_and_tries_all_float_last():
    assert search_fallback(["a", "b"], lambda f: (_ for _ in ()).throw(AssertionError),
                           initial=(True, 0.1)).history == []
    result = search_fallback(["a", "b", "c"], lambda f: (len(f) == 3, 3.0 - len(f)),
                             initial=(False, 3.0))
    assert result.float_layers == ["a", "b", "c"] and [len(t.float_layers)
                                                       for t in result.history] == [1, 2, 3]


# --- config and inputs: one clear error before any work ----------------------------------

@pytest.mark.parametrize("section, words", [
    ({"metric": "top1", "min": 90}, "metric top1 takes max_drop"),
    ({"metric": "cosine", "max_drop": 1}, "metric cosine takes min"),
    ({"metric": "f1", "min": 1}, "accuracy.metric"),
    ({"metric": "cosine", "min": 2}, "a cosine lies in [-1, 1]"),
    ({"metric": "top1_agreement", "min": 0.99, "cures": ["dropout"]}, "accuracy.cures"),
])
def test_bad_budget_is_one_clear_error(section, words, demo_pb, demo_calib, tmp_path):
    with pytest.raises(ConfigError) as info:
        at.build(demo_pb, "ascend310", calib=demo_calib, config={"accuracy": section},
                 eval={"image": np.zeros((4, 8, 8, 1), np.float32)},
                 output_dir=tmp_path / "out")
    assert words in str(info.value)
    assert not (tmp_path / "out").exists()


def test_budget_without_eval_or_labels_fails_before_any_work(demo_pb, demo_calib, tmp_path):
    with pytest.raises(ConfigError, match="give --eval F.npz"):
        at.build(demo_pb, "ascend310", calib=demo_calib, config={"accuracy": BUDGET},
                 output_dir=tmp_path / "out")
    _, x, _ = digits_eval(20)
    with pytest.raises(ConfigError, match="no labels, and config: accuracy uses metric top1"):
        at.build(demo_pb, "ascend310", calib=demo_calib, config={"accuracy": BUDGET},
                 eval={"image": x}, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plan_validates_the_budget_but_needs_no_eval(cli, demo_pb, tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"accuracy": BUDGET}))
    bad.write_text(json.dumps({"accuracy": {"metric": "top1"}}))
    assert cli("plan", demo_pb, "--target", "ascend310", "--config", good).code == 0
    result = cli("plan", demo_pb, "--target", "ascend310", "--config", bad)
    assert result.code == 1 and "accuracy: metric top1 takes max_drop" in result.err


# --- evaluation in the build ----------------------------------------------------------------

def test_cli_build_with_eval_reports_and_prints_the_evaluation(cli, demo_pb, demo_calib,
                                                                tmp_path):
    _, x, y = digits_eval()
    np.savez(tmp_path / "eval.npz", image=x, y=y)
    result = cli("build", demo_pb, "--target", "ascend310", "--calib", demo_calib,
                 "--eval", tmp_path / "eval.npz", "--output", tmp_path / "out")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "ascend310" / "report.json").read_text())
    evaluation = report["evaluation"]
    assert evaluation["samples"] == 450 and evaluation["labels"] is True
    assert evaluation["float"]["top1"] > 0.95
    assert abs(evaluation["float"]["top1"] - evaluation["compressed"]["top1"]) < 0.02
    (output, metrics), = evaluation["outputs"].items()
    assert output.endswith(":0")
    assert metrics["top1_agreement"] > 0.97 and metrics["cosine"] > 0.99
    assert metrics["sqnr_db"] > 15
    assert "evaluation: 450 samples; top-1 " in result.out and "points)" in result.out
    html = (tmp_path / "out" / "ascend310" / "report.html").read_text()
    assert 'id="evaluation-top1"' in html


def test_eval_without_labels_reports_agreement_only(demo_pb, demo_calib, tmp_path):
    _, x, _ = digits_eval(64)
    report = at.build(demo_pb, "ascend310", calib=demo_calib, eval=x,
                      output_dir=tmp_path / "out")["ascend310"]
    evaluation = report["evaluation"]
    assert evaluation["labels"] is False and evaluation["compressed"]["top1"] is None
    assert next(iter(evaluation["outputs"].values()))["top1_agreement"] > 0.9


def _untrained_outlier(tmp_path, softmax=False):
    import keras
    import outlier_models as om

    keras.utils.set_random_seed(3)
    model = om.build((8, 16), softmax)
    rng = np.random.default_rng(3)
    for layer in model.layers:   # nonzero biases: zero ones are pruned when the model loads
        if layer.get_weights():
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape).astype("float32")])
    model = om.make_outlier(model)
    path = tmp_path / "outlier.keras"
    model.save(path)
    return path


def test_equalization_preserves_the_function_and_spreads_the_outlier(tmp_path):
    from amct_targets.accuracy.equalize import equalize
    from amct_targets.graph.load import load_model
    from amct_targets.graph.run import GraphRunner
    from amct_targets.hooks.manager import default_ops

    model = load_model(str(_untrained_outlier(tmp_path)))
    equalized, pairs = equalize(model)
    assert [p["layers"][0].split("/")[-2] for p in pairs] == ["conv1_1"]
    assert pairs[0]["range_ratio_before"] > 500 and pairs[0]["range_ratio_after"] < 5
    x = digits_eval(64)[1]
    run = [GraphRunner(m.graph_def, m.input_names, m.outputs, ops=default_ops())(x)[0]
           for m in (model, equalized)]
    assert np.max(np.abs(run[0] - run[1])) <= 1e-4 * np.max(np.abs(run[0]))


def test_budget_on_agreement_is_met_by_equalization_on_an_outlier_cnn(tmp_path):
    path = _untrained_outlier(tmp_path)
    x_train, x, _ = digits_eval(200)
    plain = at.build(path, "ascend310", calib=x_train[:64], eval=x,
                     output_dir=tmp_path / "plain")["ascend310"]
    budget = at.build(path, "ascend310", calib=x_train[:64], eval=x,
                      config={"accuracy": {"metric": "cosine", "min": 0.999}},
                      output_dir=tmp_path / "out")["ascend310"]
    before = next(iter(plain["evaluation"]["outputs"].values()))["cosine"]
    after = next(iter(budget["evaluation"]["outputs"].values()))["cosine"]
    auto = budget["auto_calibration"]
    assert before < 0.99 and after >= 0.999 and auto["met"] is True
    assert auto["cures"][0]["name"] == "cross_layer_equalization" and auto["cures"][0]["kept"]
    assert auto["fallback_layers"] == [] and auto["initial"] == pytest.approx(before)


def test_bias_correction_then_fallback_search_when_equalization_is_off(tmp_path):
    path = _untrained_outlier(tmp_path)
    x_train, x, _ = digits_eval(200)
    report = at.build(path, "ascend310", calib=x_train[:64], eval=x, output_dir=tmp_path / "o",
                      config={"accuracy": {"metric": "cosine", "min": 0.999,
                                           "cures": ["bias_correction"]}})["ascend310"]
    auto = report["auto_calibration"]
    (cure,) = auto["cures"]
    assert cure["name"] == "bias_correction" and len(cure["layers"]) == 3
    assert all(np.isfinite(s["max_shift_over_std"]) for s in cure["shifts"])
    assert auto["met"] is True and auto["final"] >= 0.999
    assert 1 <= len(auto["fallback_layers"]) < 3
    assert [r["sensitivity"] for r in auto["ranking"]] == sorted(
        r["sensitivity"] for r in auto["ranking"])
    assert auto["history"][-1]["met"] is True


def test_evaluator_that_fails_never_kills_the_build(demo_pb, demo_calib, tmp_path):
    class Broken(at.AccuracyEvaluator):
        def evaluate(self, graph, outputs):
            raise RuntimeError("metric server down")

        def metric_eval(self, original, new):
            return True, 0.0

    report = at.build(demo_pb, "ascend310", calib=demo_calib, evaluator=Broken(),
                      output_dir=tmp_path / "out")["ascend310"]
    assert "metric server down" in report["auto_calibration"]["error"]
    assert report["auto_calibration"]["met"] is None
    assert any(p["name"] == "quantize" and p["status"] == "ran" for p in report["passes"])


# --- trained outlier CNNs (slow) ------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_outlier(tmp_path_factory):
    import outlier_models as om

    folder = tmp_path_factory.mktemp("outlier")
    path, (x_train, _, x_test, y_test) = om.trained("cnn_logits", folder)
    return path, {"image": x_train[:128]}, {"image": x_test, "y": y_test}


@pytest.mark.slow
def test_outlier_cnn_ptq_collapses_and_the_budget_recovers_it_with_equalization(
        trained_outlier, tmp_path):
    path, calib, ev = trained_outlier
    plain = at.build(path, "ascend310p", calib=calib, eval=ev,
                     output_dir=tmp_path / "plain")["ascend310p"]["evaluation"]
    assert plain["float"]["top1"] > 0.97 and plain["compressed"]["top1"] < 0.2
    report = at.build(path, "ascend310p", calib=calib, eval=ev, config={"accuracy": BUDGET},
                      output_dir=tmp_path / "out")["ascend310p"]
    auto, evaluation = report["auto_calibration"], report["evaluation"]
    assert auto["met"] is True and auto["fallback_layers"] == []
    assert [c["name"] for c in auto["cures"] if c["kept"]] == ["cross_layer_equalization"]
    assert (evaluation["float"]["top1"] - evaluation["compressed"]["top1"]) * 100 <= 0.5
    assert not (tmp_path / "out" / "ascend310p" /
                "accuracy_based_auto_calibration_record.json").exists()


@pytest.mark.slow
def test_fallback_search_keeps_the_outlier_conv_float_and_writes_amct_files(
        trained_outlier, tmp_path):
    path, calib, ev = trained_outlier
    report = at.build(path, "ascend310p", calib=calib, eval=ev,
                      config={"accuracy": {**BUDGET, "cures": []}},
                      output_dir=tmp_path / "out")["ascend310p"]
    auto = report["auto_calibration"]
    assert auto["met"] is True and auto["cures"] == []
    (fallback,) = auto["fallback_layers"]
    assert "conv2" in fallback["layer"] and fallback["sensitivity"] < 0.9
    assert (report["evaluation"]["float"]["top1"] -
            report["evaluation"]["compressed"]["top1"]) * 100 <= 0.5
    folder = tmp_path / "out" / "ascend310p"
    ranking = json.loads((folder / auto["artifacts"]["ranking_information"]).read_text())
    assert ranking[0][0] == fallback["layer"]
    assert [r[1] for r in ranking] == sorted(r[1] for r in ranking)
    final = json.loads((folder / auto["artifacts"]["final_config"]).read_text())
    assert final[fallback["layer"]]["quant_enable"] is False
    assert sum(1 for k, v in final.items() if isinstance(v, dict) and v["quant_enable"]) == 2
    text = (folder / auto["artifacts"]["record"]).read_text()
    decoder, records, at_char = json.JSONDecoder(), [], 0
    while text[at_char:].strip():
        record, end = decoder.raw_decode(text, at_char)
        records.append(record)
        at_char = end + len(text[end:]) - len(text[end:].lstrip())
    assert records[-1]["metric_eval"][0] is True
    assert records[-1]["roll_back_config"][fallback["layer"]] is False
    quantize = next(p for p in report["passes"] if p["name"] == "quantize")
    entry = next(e for e in quantize["layers"] if e["layer"] == fallback["layer"])
    assert entry["status"] == "float" and entry["reason"].startswith("auto-calibration: rank 1")


@pytest.mark.slow
def test_budget_governs_fast_softmax_softmax_stays_when_its_cost_is_over_budget(tmp_path):
    import outlier_models as om

    path, (x_train, _, x_test, y_test) = om.trained("cnn_softmax", tmp_path, outlier=False)
    passes = {"quantize": {"enabled": False}, "fast_softmax": {"enabled": True}}
    ev = {"image": x_test, "y": y_test}
    plain = at.build(path, "ascend310p", calib=x_train[:128], eval=ev,
                     config={"passes": passes}, output_dir=tmp_path / "plain")["ascend310p"]
    cosine = next(iter(plain["evaluation"]["outputs"].values()))["cosine"]
    assert 0.999 < cosine < 0.9999999
    report = at.build(path, "ascend310p", calib=x_train[:128], eval=ev,
                      config={"passes": passes,
                              "accuracy": {"metric": "cosine", "min": 0.9999999}},
                      output_dir=tmp_path / "out")["ascend310p"]
    auto = report["auto_calibration"]
    assert auto["met"] is True and [f["kind"] for f in auto["fallback_layers"]] == \
        ["fast_softmax"]
    output = next(iter(report["evaluation"]["outputs"].values()))
    assert output["cosine"] == pytest.approx(1.0, abs=1e-9)
    fast = next(p for p in report["passes"] if p["name"] == "fast_softmax")
    assert fast["layers"][0]["status"] == "skipped"
    assert fast["layers"][0]["reason"].startswith("auto-calibration:")


@pytest.mark.slow
def test_user_evaluator_records_calibration_and_judges_the_budget(trained_outlier, tmp_path):
    import tensorflow as tf

    path, calib, ev = trained_outlier

    class TopOne(at.AccuracyEvaluator):
        def _run(self, graph, outputs, x):
            with tf.compat.v1.Session(graph=graph) as session:
                return session.run(outputs[0], {"image:0": x})

        def calibration(self, graph, outputs):
            self._run(graph, outputs, calib["image"])

        def evaluate(self, graph, outputs):
            return float(np.mean(np.argmax(self._run(graph, outputs, ev["image"]), -1)
                                 == ev["y"]))

        def metric_eval(self, original, new):
            return (original - new) * 100 <= 0.5, (original - new) * 100

    report = at.build(path, "ascend310p", evaluator=TopOne(),
                      output_dir=tmp_path / "out")["ascend310p"]
    auto = report["auto_calibration"]
    assert auto["budget"]["evaluator"] == "TopOne" and auto["met"] is True
    assert auto["initial"] < 0.2 and auto["final"] > 0.97
