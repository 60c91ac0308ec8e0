"""decompose: AMCT tensor decomposition of Conv2D kernels, checked on real TF graphs."""
from __future__ import annotations

import numpy as np
import pytest

import amct_targets as at
from amct_targets.decomposition import (
    H_FIRST, W_FIRST, ConvGeometry, DecomposeSettings, LayerPlan, amct_rank_range, choose_mode,
    energy_rank, evbmf, factor_weights, leading_svd, round_rank, unfold,
)
from amct_targets.decomposition.rewrite import split_convs
from amct_targets.graph.flops import count_layers, percent_cut
from amct_targets.graph.load import model_from_graph_def
from amct_targets.decomposition.apply import decompose_model
from amct_targets.passes.decompose import Decompose
from models import random_feeds, randomize_bn, run_graph

PLUGIN = "amct_targets.passes.decompose"
MAX_REL_ERROR = 1e-5


def _graph_model(build, outputs=("output",)):
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        build(tf, np.random.default_rng(0))
    return model_from_graph_def(graph.as_graph_def(), outputs=list(outputs), canonical=False)


def _conv_model(kernel, *, size=(8, 8), stride=1, padding="SAME", bias=True):
    """input[N, h, w, Cin] -> Conv2D 'conv' (Const `kernel`) [-> BiasAdd] -> output."""
    def build(tf, rng):
        cin, cout = kernel.shape[2], kernel.shape[3]
        x = tf.compat.v1.placeholder(tf.float32, [None, *size, cin], name="input")
        y = tf.nn.conv2d(x, tf.constant(kernel, name="w"), strides=stride, padding=padding,
                         name="conv")
        if bias:
            y = tf.nn.bias_add(y, tf.constant(rng.normal(0, 0.1, cout).astype(np.float32)),
                               name="bias")
        tf.nn.relu(y, name="output")
    return _graph_model(build)


def _kernel(shape, seed=0):
    return np.random.default_rng(seed).normal(0, 0.1, shape).astype(np.float32)


def _max_rel_error(model_a, model_b, seed=1) -> float:
    feeds = random_feeds(model_a, batch=2, seed=seed)
    (a,), (b,) = (run_graph(m.graph_def, feeds, m.outputs) for m in (model_a, model_b))
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _conv_ops(model) -> dict:
    return {n.name: n for n in model.graph_def.node if n.op == "Conv2D"}


@pytest.mark.parametrize("mode", [H_FIRST, W_FIRST])
@pytest.mark.parametrize("stride", [1, 2, (2, 1)])
@pytest.mark.parametrize("padding", ["SAME", "VALID", [[0, 0], [1, 2], [2, 0], [0, 0]]])
def test_full_rank_split_reproduces_the_conv_output(mode, stride, padding):
    # Odd, non-square input and a 3x5 kernel so a swapped axis or padding would show.
    kernel = _kernel((3, 5, 6, 7))
    model = _conv_model(kernel, size=(9, 10), stride=stride, padding=padding)
    matrix = unfold(kernel.astype(np.float64), mode)
    full = min(matrix.shape)
    svd = leading_svd(matrix, full, method="exact")
    first, last = factor_weights(svd, full, kernel.shape, mode, np.float32)
    assert first.shape == ((3, 1, 6, full) if mode == H_FIRST else (1, 5, 6, full))
    assert last.shape == ((1, 5, full, 7) if mode == H_FIRST else (3, 1, full, 7))
    plan = LayerPlan("conv", mode, full, first, last, {})
    split = model.replace(graph_def=split_convs(model.graph_def, [plan]))
    assert sorted(_conv_ops(split)) == ["conv", "conv/decomposed/first"]
    assert _max_rel_error(model, split) < MAX_REL_ERROR


@pytest.mark.parametrize("stride, padding", [(1, "SAME"), (2, "SAME"), (1, "VALID"),
                                             (2, "VALID")])
def test_pass_is_exact_on_a_kernel_of_lower_rank(stride, padding):
    # W of rank 16 in the (kh*Cin) x (kw*Cout) unfolding: rank 16 loses nothing.
    rng = np.random.default_rng(3)
    left, right = rng.normal(0, 0.1, (3 * 64, 16)), rng.normal(0, 0.1, (16, 3 * 64))
    kernel = (left @ right).reshape(3, 64, 3, 64).transpose(0, 2, 1, 3).astype(np.float32)
    model = _conv_model(kernel, size=(11, 11), stride=stride, padding=padding)
    new, records, metrics = decompose_model(model, {"rank": 16})
    (record,) = records
    assert record["status"] == "decomposed" and record["rank"] == 16
    assert record["reconstruction_error"] < 1e-6
    assert _max_rel_error(model, new) < MAX_REL_ERROR
    # The FLOPs the planner predicted are the FLOPs TensorFlow's shapes give afterwards.
    costs = count_layers(new)
    assert costs["conv/decomposed/first"].flops + costs["conv"].flops == record["flops_after"]
    assert record["conv_flops_after"] + costs["conv"].output_shape[1] ** 2 * 64 == \
        record["flops_after"]


def test_overview_example_64x64x3x3_at_rank_32_cuts_two_thirds():
    """AMCT's overview: 64*64*3*3 -> 32*64*3*1 + 64*32*1*3 saves 1 - 12288/36864 = 66.7%."""
    model = _conv_model(_kernel((3, 3, 64, 64)), bias=False)
    new, (record,), metrics = decompose_model(model, {"rank": 32})
    convs = _conv_ops(new)
    nodes = {n.name: n for n in new.graph_def.node}
    weight = lambda conv: tuple(d.size for d in nodes[convs[conv].input[1]].attr[  # noqa: E731
        "value"].tensor.tensor_shape.dim)
    assert weight("conv/decomposed/first") == (3, 1, 64, 32)  # PyTorch order: 32x64x3x1
    assert weight("conv") == (1, 3, 32, 64)                   # PyTorch order: 64x32x1x3
    assert record["mode"] == "3x1 then 1x3"
    assert record["params_before"] == 36864 and record["params_after"] == 12288
    assert record["flops_before"] == 2 * 8 * 8 * 36864
    assert 3 * record["flops_after"] == record["flops_before"]  # exactly one third left
    assert metrics["eligible_flops_cut_pct"] == metrics["model_flops_cut_pct"] == 66.67
    # AMCT's own rank rule lands on 32 too: the clip [192/7, 192/6] rounds to 32.
    _, (default,), _ = decompose_model(model)
    assert default["rank_method"] == "evbmf" and default["rank"] == 32
    assert default["rank_range"] == [27.43, 32.0]


def test_evbmf_recovers_the_rank_of_low_rank_plus_noise():
    rng = np.random.default_rng(0)
    L, M, true_rank, sigma = 120, 200, 10, 0.1
    u, _ = np.linalg.qr(rng.normal(size=(L, true_rank)))
    v, _ = np.linalg.qr(rng.normal(size=(M, true_rank)))
    signal = np.linspace(3.0, 8.0, true_rank) * sigma * np.sqrt(M)
    y = (u * signal) @ v.T + sigma * rng.normal(size=(L, M))
    s = np.linalg.svd(y, compute_uv=False)
    result = evbmf(s, y.shape)
    assert result.rank == true_rank
    assert result.sigma2 == pytest.approx(sigma ** 2, rel=0.1)
    # From the leading 40 values and the total energy (the randomized SVD path): same answer.
    truncated = evbmf(s[:40], y.shape, total_energy=float(np.sum(y * y)))
    assert truncated.rank == true_rank
    assert truncated.sigma2 == pytest.approx(result.sigma2, rel=1e-3)
    assert evbmf(s, y.T.shape).rank == true_rank  # orientation does not matter
    # Pure noise has no component above the threshold.
    assert evbmf(np.linalg.svd(sigma * rng.normal(size=(L, M)), compute_uv=False),
                 (L, M)).rank == 0


def test_randomized_svd_matches_exact_on_a_decaying_spectrum():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(600, 600)))
    v, _ = np.linalg.qr(rng.normal(size=(500, 500)))
    s = np.exp(-np.arange(500) / 30.0)
    matrix = (u[:, :500] * s) @ v.T
    exact = leading_svd(matrix, 60, method="exact")
    fast = leading_svd(matrix, 60, method="randomized")
    assert fast.method == "randomized"
    np.testing.assert_allclose(fast.s[:30], exact.s[:30], rtol=1e-5)
    np.testing.assert_allclose(fast.s, exact.s, rtol=2e-3)
    approx = (fast.u * fast.s) @ fast.vt
    best = (exact.u * exact.s) @ exact.vt
    assert np.linalg.norm(matrix - approx) <= 1.01 * np.linalg.norm(matrix - best)


def test_amct_rank_clip_and_rounding():
    assert amct_rank_range((3, 3), (64, 64)) == (192 / 7, 32.0)           # d = 6
    assert amct_rank_range((3, 5), (512, 256)) == (768 / 5, 192.0)       # d = 4 from 256
    assert [round_rank(r) for r in (5, 16, 20, 30, 40, 100, 200)] == \
        [16, 16, 32, 32, 48, 96, 192]
    assert round_rank(30, 8) == 24 + 8 and round_rank(100, 8) == 96
    s = np.array([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert energy_rank(s, 0.7) == 1 and energy_rank(s, 0.9) == 2 and energy_rank(s, 1.0) == 4
    assert energy_rank(s[:2], 0.99, total_energy=22.0) is None


def test_order_puts_the_longer_kernel_axis_on_the_smaller_channel_count():
    geometry = lambda k, cin, cout: ConvGeometry((*k, cin, cout), (1, 1), (1, 1),  # noqa: E731
                                                 (16, 16), (16, 16), cin)
    assert choose_mode(geometry((3, 5), 128, 64)) == H_FIRST   # 3*128 + 5*64 < 5*128 + 3*64
    assert choose_mode(geometry((3, 5), 64, 128)) == W_FIRST
    assert choose_mode(geometry((3, 3), 64, 128)) == H_FIRST   # tie: the overview's order


def _mixed_model():
    """Convs that hit each reason, plus one that is decomposed."""
    def build(tf, rng):
        w = lambda *shape, name: tf.constant(  # noqa: E731
            rng.normal(0, 0.05, shape).astype(np.float32), name=name)
        x = tf.compat.v1.placeholder(tf.float32, [None, 12, 12, 64], name="input")
        ok = tf.nn.conv2d(x, w(3, 3, 64, 64, name="w_ok"), 1, "SAME", name="ok")
        point = tf.nn.conv2d(ok, w(1, 1, 64, 64, name="w_point"), 1, "SAME", name="pointwise")
        narrow = tf.nn.conv2d(point, w(3, 3, 64, 32, name="w_narrow"), 1, "SAME", name="narrow")
        big = tf.nn.conv2d(narrow, w(7, 7, 32, 16, name="w_big"), 1, "SAME", name="big7x7")
        strided = tf.nn.conv2d(ok, w(3, 3, 64, 64, name="w_s3"), 3, "SAME", name="stride3")
        dilated = tf.nn.conv2d(ok, w(3, 3, 64, 64, name="w_dil"), 1, "SAME", dilations=2,
                               name="dilated")
        grouped = tf.nn.conv2d(ok, w(3, 3, 32, 64, name="w_grp"), 1, "SAME", name="grouped")
        depthwise = tf.nn.depthwise_conv2d(ok, w(3, 3, 64, 1, name="w_dw"), [1, 1, 1, 1], "SAME",
                                           name="depthwise")
        skipped = tf.nn.conv2d(ok, w(3, 3, 64, 64, name="w_skip"), 1, "SAME", name="skipme")
        dynamic = tf.nn.conv2d(ok, tf.identity(w(3, 3, 64, 64, name="w_dyn")), 1, "SAME",
                               name="dynamic_weights")
        outs = [big, strided, dilated, grouped, depthwise, skipped, dynamic]
        tf.identity(tf.add_n([tf.reduce_mean(o, axis=[1, 2, 3]) for o in outs]), name="output")
    return _graph_model(build)


def test_every_conv_left_alone_has_its_reason():
    model = _mixed_model()
    _, records, metrics = decompose_model(model, {"skip_layers": ["skipme"]})
    by_layer = {r["layer"]: r for r in records}
    expected = {
        "pointwise": "kernel 1x1; AMCT needs kernel height and width > 2",
        "narrow": "min(kh, kw) = 3 < 7 and min(Cin, Cout) = 32 < 64",
        "stride3": "stride [3, 3]; AMCT decomposes only stride < 3",
        "dilated": "dilation [2, 2]; AMCT decomposes only dilation 1",
        "grouped": "group convolution (2 groups",
        "depthwise": "DepthwiseConv2dNative: AMCT decomposes Conv2D only",
        "skipme": "skipped by config (skip_layers)",
        "dynamic_weights": "weights come from Identity 'Identity', not a Const",
    }
    for layer, reason in expected.items():
        assert by_layer[layer]["status"] == "skipped" and reason in by_layer[layer]["reason"]
    assert {r["layer"] for r in records if r["status"] == "decomposed"} == {"ok", "big7x7"}
    assert by_layer["big7x7"]["mode"] == "7x1 then 1x7"  # 7x7, 32 -> 16: min(k) = 7 passes
    assert all("reason" in r for r in records if r["status"] != "decomposed")
    assert metrics["decomposed"] == 2 and metrics["eligible"] == 2
    # A rank that does not cut FLOPs leaves an eligible conv alone, with the numbers.
    _, records, _ = decompose_model(model, {"rank": 96, "skip_layers": ["big7x7"]})
    ok = next(r for r in records if r["layer"] == "ok")
    assert ok["status"] == "skipped" and ok["eligible"]
    # 12x12 map: 2*144*96*(3*64 + 3*64) = 2*144*9*64*64 -- break-even is not a cut.
    assert ok["reason"] == "rank 96 would not cut FLOPs (10616832 >= 10616832 for the conv)"
    # Stricter AMCT size thresholds are configurable.
    _, records, _ = decompose_model(model, {"min_size": {"channels": 128}})
    ok = next(r for r in records if r["layer"] == "ok")
    assert "min(Cin, Cout) = 64 < 128" in ok["reason"]


def test_layers_names_the_convs_it_would_decompose():
    model = _mixed_model()
    assert Decompose().layers(model, {"enabled": True}) == ["ok", "big7x7", "skipme"]
    assert Decompose().layers(model, {"skip_layers": ["skipme", "ok"]}) == ["big7x7"]


def test_deterministic_and_input_untouched():
    model = _mixed_model()
    before = model.serialize()
    first, records_a, metrics_a = decompose_model(model, {})
    second, records_b, metrics_b = decompose_model(model, {})
    assert model.serialize() == before
    assert first.serialize() == second.serialize() != before
    assert records_a == records_b and metrics_a == metrics_b


def test_energy_method_rounds_the_energy_rank():
    model = _conv_model(_kernel((3, 3, 64, 64)))
    _, (record,), _ = decompose_model(model, {"rank_method": "energy", "energy": 0.5})
    assert record["rank_method"] == "energy"
    assert record["rank"] == round_rank(record["rank_estimate"])
    assert record["status"] == "decomposed"
    # Random weights need most components for 99.9%: more than could cut FLOPs (96, see below).
    _, (record,), _ = decompose_model(model, {"rank_method": "energy", "energy": 0.999})
    assert record["status"] == "skipped" and record["rank_estimate"] is None
    assert record["reason"] == "energy 0.999 needs rank > 96; ranks above 95 would not cut FLOPs"


def test_settings_reject_bad_values():
    from amct_targets.errors import ConfigError

    for bad in ({"rank_method": "svd"}, {"energy": 0}, {"rank": 0}, {"svd": "lapack"}):
        with pytest.raises(ConfigError):
            DecomposeSettings.from_config(bad)


def _build_model():
    """A Keras CNN with a 64->64 3x3 conv and a BN that fold_bn folds into it first."""
    import keras

    keras.utils.set_random_seed(0)
    bias = keras.initializers.RandomNormal(stddev=0.2, seed=0)  # zero biases get pruned
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(64, 3, padding="same", bias_initializer=bias, name="stem")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False, name="body")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return randomize_bn(keras.Model(inputs, keras.layers.Dense(10, name="logits")(x)), seed=0)


def test_pass_runs_on_every_target_when_enabled(tmp_path):
    keras_model = _build_model()
    targets = at.list_targets(plugins=[PLUGIN])
    assert len(targets) >= 4
    config = {"passes": {"decompose": {"enabled": True}}}
    reports = at.build(keras_model, targets, config=config, output_dir=tmp_path,
                       plugins=[PLUGIN])
    for target, report in reports.items():
        names = [p["name"] for p in report["passes"]]
        assert names.index("fold_bn") < names.index("decompose") < names.index("quantize")
        assert "qat" not in names or names.index("decompose") < names.index("qat")
        fold = next(p for p in report["passes"] if p["name"] == "fold_bn")
        assert fold["metrics"]["folded"] == 1
        entry = next(p for p in report["passes"] if p["name"] == "decompose")
        assert entry["status"] == "ran", (target, entry["reason"])
        (record,) = [r for r in entry["layers"] if r["status"] == "decomposed"]
        assert record["kernel"] == [3, 3, 64, 64] and record["rank"] == 32
        assert record["conv_flops_cut_pct"] == 66.67
        # With the folded BN's bias add (8*8*64 FLOPs) counted before and after:
        assert entry["metrics"]["eligible_flops_cut_pct"] == percent_cut(
            2 * 64 * 36864 + 4096, 2 * 64 * 12288 + 4096) == 66.61
    plan = at.plan(keras_model, targets[0], plugins=[PLUGIN])
    step = next(s for s in plan.steps if s.name == "decompose")
    assert step.status == "SKIP" and "off by default" in step.reason
    with pytest.raises(at.ConfigError, match="passes.decompose"):
        at.plan(keras_model, targets[0], plugins=[PLUGIN],
                config={"passes": {"decompose": {"enabled": True, "rnak": 3}}})
