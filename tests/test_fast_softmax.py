"""`fast_softmax`: AMCT approximate calibration, Softmax -> FastSoftmax, on real TF graphs.

The graph under test has two Softmax nodes at the scales they have in trained networks:
`probs` over 10 classifier logits (std 4.0) and `attention` over 8x8 scaled dot-product
scores (std 2.7; rows of 8).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import amct_targets as at
from amct_targets.approx import SoftmaxRowSample, invalid_reason, ref_fast_softmax
from amct_targets.approx.kernel import exp_poly
from amct_targets.approx.ops import node_params
from amct_targets.errors import ConfigError, PlanError
from amct_targets.graph.load import read_graph_def

PLUGIN = "amct_targets.passes.fast_softmax"  # explicit until it is a DEFAULT_PLUGIN
ON = {"enabled": True}
NO_QUANT = {"quantize": {"enabled": False}}  # quantize would also run on ascend310p

# Measured on 4096 held-out samples (seed 1): max abs error 0.069 (probs) and 0.081
# (attention), mean 0.0062 and 0.0071. The floor is the kernel's, not the fit's: with
# p(0) = p'(0) = 1 the best non-decreasing cubic is >= 0.023 away from exp somewhere on
# [-c, 0] (c ~ 3), and a row's normalization adds up the errors of its near-max entries.
# A 1e-2 max error is out of reach of this kernel; the thresholds leave ~20% room.
MAX_ABS_ERROR, MEAN_ABS_ERROR = 0.1, 0.01


def softmax_graph_pb(path, seed: int = 0, feed_matmul: bool = False):
    """Frozen graph: features[N,32] -> logits (MatMul+BiasAdd) -> Softmax `probs`, and
    tokens[N,8,4] -> q k^T / 2 -> Softmax `attention` -> attention @ tokens -> `context`.
    `feed_matmul` adds `head` = BatchMatMulV2(attention, Const[8,3]), a quantizable layer
    whose activation input is the Softmax output."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 32], name="features")
        w = rng.normal(0, 0.7, (32, 10)).astype(np.float32)
        logits = tf.nn.bias_add(tf.matmul(x, w), rng.normal(0, 0.5, 10).astype(np.float32),
                                name="logits")
        tf.nn.softmax(logits, name="probs")
        tokens = tf.reshape(x, [-1, 8, 4])
        q = tf.matmul(tokens, rng.normal(0, 0.8, (4, 4)).astype(np.float32))
        k = tf.matmul(tokens, rng.normal(0, 0.8, (4, 4)).astype(np.float32))
        scores = tf.multiply(tf.matmul(q, k, adjoint_b=True), 0.5, name="scores")
        attention = tf.nn.softmax(scores, name="attention")
        tf.reshape(tf.matmul(attention, tokens), [-1, 32], name="context")
        if feed_matmul:
            tf.matmul(attention, rng.normal(0, 1, (8, 3)).astype(np.float32), name="head")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def features(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, 32)).astype(np.float32)


def entry(report, name="fast_softmax"):
    return next(p for p in report["passes"] if p["name"] == name)


def build(pb, out, section=None, target="ascend310p", calib=None, extra=None):
    others = NO_QUANT if extra is None else extra
    config = {"passes": {"fast_softmax": {**ON, **(section or {})}, **others}}
    return at.build(pb, target, calib=features(256, 0) if calib is None else calib,
                    output_dir=out, config=config, plugins=[PLUGIN])[target]


@pytest.fixture(scope="module")
def graph_pb(tmp_path_factory):
    return softmax_graph_pb(tmp_path_factory.mktemp("g") / "attn.pb")


@pytest.fixture(scope="module")
def approximated(graph_pb, tmp_path_factory):
    out = tmp_path_factory.mktemp("fs")
    report = build(graph_pb, out, {"batch_num": 4})
    return out / "ascend310p", report


# --- planning --------------------------------------------------------------------------------

def test_plan_runs_on_ascend310p_only_when_enabled_with_calibration(graph_pb):
    config = {"passes": {"fast_softmax": ON}}
    step = at.plan(graph_pb, "ascend310p", config=config, calib=features(8, 0),
                   plugins=[PLUGIN]).step("fast_softmax")
    assert (step.status, step.reason) == ("RUN", "target supports fast_softmax")
    with pytest.raises(at.PlanError, match="pass 'fast_softmax' is enabled in the build config "
                       "but needs calibration data; give it with --calib F.npz"):
        at.plan(graph_pb, "ascend310p", config=config, plugins=[PLUGIN])
    default = at.plan(graph_pb, "ascend310p", calib=features(8, 0), plugins=[PLUGIN])
    assert default.step("fast_softmax").status == "SKIP"  # changes numerics: off by default
    names = [s.name for s in default.steps]
    assert names.index("fast_softmax") < names.index("quantize")


@pytest.mark.parametrize("target", ["ascend310", "ascend910", "ascend910b"])
def test_plan_skips_elsewhere_with_the_profiles_reason_and_force_warns(graph_pb, target):
    reason = at.load_target(target).capability("fast_softmax").reason
    assert "310P" in reason
    plan = at.plan(graph_pb, target, config={"passes": {"fast_softmax": ON}},
                   calib=features(8, 0), plugins=[PLUGIN])
    assert (plan.step("fast_softmax").status, plan.step("fast_softmax").reason) == ("SKIP",
                                                                                    reason)
    forced = at.plan(graph_pb, target, calib=features(8, 0), plugins=[PLUGIN],
                     config={"passes": {"fast_softmax": {**ON, "force": True}}})
    step = forced.step("fast_softmax")
    assert (step.status, step.reason) == ("RUN", "forced")
    assert step.warnings == [f"forced although the target lacks it: {reason}"]


@pytest.mark.parametrize("section,message", [
    ({"skip_approximation_layers": ["prob"]}, "'prob' is not a Softmax node of the model"),
    ({"logits": {"approximate_enable": False}}, "'logits' is not a Softmax node"),
    ({"probs": {"approximate_algo": "FastExp"}}, "passes.fast_softmax.probs.approximate_algo"),
    ({"probs": {"approximate_params": {"a": 1.0, "b": 0.0, "clip_value": 3.0}}},
     "decreases somewhere on [-3, 0]"),
    ({"batch_num": 0}, "passes.fast_softmax.batch_num"),
])
def test_bad_config_is_one_clear_error_before_any_work(graph_pb, tmp_path, section, message):
    with pytest.raises((ConfigError, PlanError)) as info:
        build(graph_pb, tmp_path / "o", section, calib=features(8, 0))
    assert message in str(info.value)
    assert not (tmp_path / "o").exists()


# --- the deploy .pb --------------------------------------------------------------------------

def test_deploy_pb_has_fast_softmax_nodes_with_the_fitted_attrs(approximated, graph_pb):
    folder, report = approximated
    original = {n.name: n for n in read_graph_def(graph_pb).node}
    deployed = {n.name: n for n in read_graph_def(folder / "attn.pb", importable=False).node}
    assert [n.op for n in deployed.values()].count("Softmax") == 0
    layers = {e["layer"]: e for e in entry(report)["layers"]}
    assert sorted(layers) == ["attention", "probs"]
    for name, layer in layers.items():
        node = deployed[name]
        assert node.op == "FastSoftmax" and list(node.input) == list(original[name].input)
        assert node.attr["T"].type == 1 and node.attr["axis"].i == -1  # DT_FLOAT
        params, _ = node_params(node)
        assert (params.a, params.b, params.clip_value) == (layer["a"], layer["b"],
                                                           layer["clip_value"])
        assert invalid_reason(params) is None  # non-decreasing, positive p on [-c, 0]
        t = np.linspace(-params.clip_value, 0, 1001)
        assert np.all(np.diff(exp_poly(t, params.a, params.b)) >= 0)
        assert exp_poly(-params.clip_value, params.a, params.b) > 0
    assert report["checks"] == []


def test_simulation_error_against_float_softmax_on_held_out_inputs(approximated, graph_pb):
    folder, _ = approximated
    held_out = features(4096, 1)
    names = ["probs", "attention"]
    reference = at.load_simulation(graph_pb, outputs=names)({"features": held_out})
    simulated = at.load_simulation(folder / "attn.pb", outputs=names)({"features": held_out})
    for name in names:
        error = np.abs(simulated[name] - reference[name])
        assert error.max() < MAX_ABS_ERROR, name
        assert error.mean() < MEAN_ABS_ERROR and error.mean() < error.max() / 8, name
        np.testing.assert_allclose(simulated[name].sum(-1), 1.0, atol=2e-6)
    # the classifier's decisions are kept
    agree = np.mean(simulated["probs"].argmax(-1) == reference["probs"].argmax(-1))
    assert agree >= 0.995


def test_expander_equals_the_numpy_reference_bit_for_bit(approximated):
    folder, _ = approximated
    deployed = {n.name: n for n in read_graph_def(folder / "attn.pb", importable=False).node}
    x = features(2048, 2) * np.random.default_rng(3).uniform(0.1, 4, (2048, 1)).astype(
        np.float32)  # wide range of scales, incl. rows clipped almost everywhere
    run = at.load_simulation(folder / "attn.pb", outputs=["logits", "scores", "probs",
                                                          "attention"])
    out = run({"features": x})
    for name, source in (("probs", "logits"), ("attention", "scores")):
        params, axis = node_params(deployed[name])
        expected = ref_fast_softmax(out[source], params.a, params.b, params.clip_value, axis)
        np.testing.assert_array_equal(out[name], expected)


def test_report_gives_params_and_errors_and_the_amct_config(approximated):
    folder, report = approximated
    fs = entry(report)
    assert fs["status"] == "ran"
    for layer in fs["layers"]:
        assert layer["status"] == "approximated" and layer["approximate_algo"] == "FastSoftmax"
        assert 0 < layer["clip_value"] <= 4 and layer["fitted"] is True
        assert 0 < layer["mean_abs_error"] < layer["max_abs_error"] < MAX_ABS_ERROR
    rows = {e["layer"]: e["rows"] for e in fs["layers"]}
    assert rows == {"probs": 256, "attention": 256 * 8}  # every calibration row measured
    assert fs["metrics"] == {"approximated": 2, "skipped": 0,
                             "max_abs_error": max(e["max_abs_error"] for e in fs["layers"]),
                             "max_mean_abs_error": max(e["mean_abs_error"]
                                                       for e in fs["layers"])}
    assert report["artifacts"]["approx_config"] == "approx_config.json"
    config = json.loads((folder / "approx_config.json").read_text())
    assert config["batch_num"] == 4 and config["skip_approximation_layers"] == []
    for layer in fs["layers"]:
        assert config[layer["layer"]] == {
            "approximate_enable": True, "approximate_algo": "FastSoftmax",
            "approximate_params": {k: layer[k] for k in ("a", "b", "clip_value")}}


def test_amct_config_fed_back_reproduces_the_same_pb(approximated, graph_pb, tmp_path):
    folder, _ = approximated
    report = build(graph_pb, tmp_path / "o", {"amct_config": str(folder / "approx_config.json")})
    assert all(e["fitted"] is False for e in entry(report)["layers"])
    assert (tmp_path / "o" / "ascend310p" / "attn.pb").read_bytes() == \
        (folder / "attn.pb").read_bytes()


@pytest.mark.parametrize("section,reason", [
    ({"skip_approximation_layers": ["attention"]}, "skipped by config (skip_approximation_layers)"),
    ({"attention": {"approximate_enable": False, "approximate_algo": "FastSoftmax"}},
     "approximate_enable: false in the config"),
])
def test_layers_skipped_by_config_stay_softmax_with_the_reason(graph_pb, tmp_path, section,
                                                               reason):
    report = build(graph_pb, tmp_path / "o", section)
    ops = {n.name: n.op for n in read_graph_def(tmp_path / "o" / "ascend310p" / "attn.pb",
                                                importable=False).node}
    assert (ops["attention"], ops["probs"]) == ("Softmax", "FastSoftmax")
    layers = {e["layer"]: e for e in entry(report)["layers"]}
    assert layers["attention"] == {"layer": "attention", "op": "Softmax", "status": "skipped",
                                   "reason": reason}
    assert entry(report)["metrics"]["approximated"] == 1
    config = json.loads((tmp_path / "o" / "ascend310p" / "approx_config.json").read_text())
    assert config["attention"] == {"approximate_enable": False,
                                   "approximate_algo": "FastSoftmax"}


def test_atc_check_accepts_the_emitted_pb_with_input_shapes(approximated):
    folder, _ = approximated
    assert at.check(folder / "attn.pb", "ascend310p", input_shapes={"features": (1, 32)}) == []
    # the emitted .pb carries the static shapes its atc command uses: check agrees with build
    assert at.check(folder / "attn.pb", "ascend310p") == []


# --- bounded memory --------------------------------------------------------------------------

def test_row_sample_holds_the_same_number_of_values_after_4_and_32_batches():
    rng = np.random.default_rng(0)
    samples = {}
    for count in (4, 32):
        sample = SoftmaxRowSample(8, seed_name="attention", value_budget=8 * 2048)
        for _ in range(count):  # batches of 64 x (8 x 8) attention scores ~N(0, 2)
            sample.update(rng.normal(0, 2, (64, 8, 8)).astype(np.float32))
        samples[count] = sample
    assert samples[4].capacity == samples[32].capacity == 2048
    assert samples[4].values == samples[32].values == 2048 * 8
    assert (samples[4].rows_seen, samples[32].rows_seen) == (2048, 16384)
    # a uniform sample of all 32 batches: the kept keys are the 2048 smallest of 16384
    assert samples[32].keys.max() == pytest.approx(2048 / 16384, rel=0.1)
    assert np.all(samples[32].rows.max(axis=1) == 0)


def test_fit_is_deterministic_and_the_sample_is_a_fixed_seeded_choice(graph_pb, tmp_path):
    first = build(graph_pb, tmp_path / "a", {"batch_num": 2})
    second = build(graph_pb, tmp_path / "b", {"batch_num": 2})
    assert entry(first)["layers"] == entry(second)["layers"]
    assert (tmp_path / "a" / "ascend310p" / "attn.pb").read_bytes() == \
        (tmp_path / "b" / "ascend310p" / "attn.pb").read_bytes()


def test_fit_keeps_p_close_to_exp_when_every_calibration_row_is_confident():
    """A confident classifier's calibration rows put every non-max entry far below -c; the
    fit must still approximate exp where held-out near-ties land (the probe rows)."""
    from amct_targets.approx import fit_fast_softmax

    rng = np.random.default_rng(0)
    rows = np.concatenate([np.zeros((512, 1)), rng.uniform(-25, -9, (512, 9))], axis=1)
    ties = np.stack([np.zeros(81), np.linspace(-4, 0, 81)], axis=1).astype(np.float32)
    exact = np.exp(ties) / np.exp(ties).sum(-1, keepdims=True)

    def tie_error(p):
        return np.abs(ref_fast_softmax(ties, p.a, p.b, p.clip_value) - exact).max()

    result = fit_fast_softmax(rows)
    assert result.max_abs_error < 1e-3  # nothing to get wrong on these rows
    assert invalid_reason(result.params) is None
    assert tie_error(result.params) < 0.03  # measured 0.0266
    assert tie_error(fit_fast_softmax(rows, probe_weight=0).params) > 0.1  # 0.156 unguided


# --- with quantization -----------------------------------------------------------------------

def test_quantize_and_fast_softmax_on_the_same_softmax_are_refused(tmp_path):
    """Needs the quantize pass's layers() to also name the Softmax nodes it would quantize
    (the Softmax feeding the activation input of a quantized layer, and any Softmax named in
    the quantize section with quant_enable true), as proposed in the fast_softmax report.
    Until quantize.layers() does, this test is an expected failure (xfail)."""
    from amct_targets.graph.load import load_model
    from amct_targets.passes.quantize import Quantize

    pb = softmax_graph_pb(tmp_path / "head.pb", feed_matmul=True)
    if "attention" not in Quantize().layers(load_model(pb), {}):
        pytest.xfail("quantize.layers() does not yet claim the Softmax feeding a quantized "
                     "layer (proposal in the fast_softmax report)")
    with pytest.raises(PlanError) as info:
        at.plan(pb, "ascend310p", calib=features(8, 0), plugins=[PLUGIN],
                config={"passes": {"fast_softmax": ON}})
    assert str(info.value).startswith("passes 'fast_softmax' and 'quantize' are both enabled "
                                      "for layer 'attention'")
    with pytest.raises(PlanError, match="for layer 'probs'"):  # named in the quantize section
        at.plan(softmax_graph_pb(tmp_path / "plain.pb"), "ascend310p", calib=features(8, 0),
                plugins=[PLUGIN], config={"passes": {"fast_softmax": ON,
                                                     "quantize": {"probs": {"quant_enable":
                                                                            True}}}})
    # excluding the layer from either pass resolves it
    plan = at.plan(pb, "ascend310p", calib=features(8, 0), plugins=[PLUGIN],
                   config={"passes": {"fast_softmax": {
                       **ON, "skip_approximation_layers": ["attention"]}}})
    assert plan.step("fast_softmax").status == plan.step("quantize").status == "RUN"


def test_quantize_after_fast_softmax_calibrates_the_approximated_graph(graph_pb, tmp_path):
    """Needs quantize's calibration to import the graph through simulate.expand_ascend_ops
    (proposal in the fast_softmax report); until then an expected failure (xfail)."""
    try:
        report = build(graph_pb, tmp_path / "o", extra={})
    except at.PluginError as exc:
        if "Op type not registered 'FastSoftmax'" in str(exc):
            pytest.xfail("quant/calibrate.py imports the graph without expanding FastSoftmax")
        raise
    assert entry(report)["metrics"]["approximated"] == 2
    assert entry(report, "quantize")["metrics"]["quantized"] >= 1
    ops = [n.op for n in read_graph_def(tmp_path / "o" / "ascend310p" / "attn.pb",
                                        importable=False).node]
    assert ops.count("FastSoftmax") == 2 and "AscendQuant" in ops
