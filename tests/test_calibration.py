"""ARQ, the bounded-memory activation statistics, IFMR (streamed vs AMCT's in-memory version)
and HFMG."""
from __future__ import annotations

import numpy as np
import pytest

from amct_targets.calibration import (
    ActivationStats, arq, batch_summary_tensors, hfmg, ifmr, ifmr_exact, k_for_percentile,
)
from amct_targets.calibration.hfmg import window_quantizer
from amct_targets.calibration.ifmr import percentile_values
from amct_targets.calibration.stats import histogram_quant_mse, quant_params


def _summaries(batches, k, bins):
    """Per-batch summaries computed by the in-graph ops (eager), as numpy."""
    import tensorflow as tf

    for batch in batches:
        summary = batch_summary_tensors(tf.constant(batch), k, bins)
        yield {key: value.numpy() for key, value in summary.items()}


def _stats(batches, k, bins):
    stats = ActivationStats(bins=bins, k=k)
    for summary in _summaries(batches, k, bins):
        stats.update(summary)
    return stats


def _dequant_mse(x, params):
    q = np.clip(np.rint(x / params.scale) + params.offset, -128, 127)
    return float(np.mean(((q - params.offset) * params.scale - x) ** 2))


# --- ARQ ---------------------------------------------------------------------------------------

def test_arq_per_channel_scales_and_rounding():
    # HWIO (1, 1, 3, 3); column j is output channel j. Values are exact in binary.
    w = np.array([[7.9375, -8.0, 1e-6],
                  [-3.0, 1.0, 0.0],
                  [0.09375, 0.03125, -1e-6]], np.float32).reshape(1, 1, 3, 3)
    result = arq(w, channel_axes=(3,))
    # ch0: 7.9375/127 = 1/16. ch1: |min| 8 > max 1, so 8/128 = 1/16 (not 8/127).
    # ch2: 1e-6/127 < FLT_EPSILON, so the scale becomes 1.
    np.testing.assert_array_equal(result.scale, np.float32([0.0625, 0.0625, 1.0]))
    assert result.scale.dtype == np.float32 and result.quantized.dtype == np.int8
    np.testing.assert_array_equal(result.offset, np.zeros(3, np.int8))
    # 0.09375*16 = 1.5 -> 2 and 0.03125*16 = 0.5 -> 0: rint ties to even.
    np.testing.assert_array_equal(result.quantized.reshape(3, 3),
                                  [[127, -128, 0], [-48, 16, 0], [2, 0, 0]])


def test_arq_per_tensor_uses_the_128_rule():
    w = np.array([7.9375, -8.0, 1.0, 0.5], np.float32)
    result = arq(w, channel_axes=None)
    np.testing.assert_array_equal(result.scale, np.float32([0.0625]))
    np.testing.assert_array_equal(result.quantized, [127, -128, 16, 8])
    all_zero = arq(np.zeros((2, 2), np.float32), None)
    np.testing.assert_array_equal(all_zero.scale, [1.0])
    np.testing.assert_array_equal(all_zero.quantized, np.zeros((2, 2), np.int8))


def test_arq_depthwise_channel_index_is_c_times_m_plus_m():
    c_in, mult = 2, 3
    w = np.zeros((3, 3, c_in, mult), np.float32)
    for c in range(c_in):
        for m in range(mult):
            w[1, 1, c, m] = (c * mult + m + 1) * 127 / 64   # scale (c*M + m + 1) / 64
            w[0, 0, c, m] = -(c * mult + m + 1) / 64         # quantizes to -1
    result = arq(w, channel_axes=(2, 3))
    np.testing.assert_allclose(result.scale, np.arange(1, 7) / 64, rtol=1e-7)
    assert (result.quantized[1, 1] == 127).all() and (result.quantized[0, 0] == -1).all()


def test_arq_conv2d_backprop_input_quantizes_per_axis_2():
    w = np.ones((2, 2, 3, 5), np.float32) * np.float32([1, 2, 4]).reshape(1, 1, 3, 1)
    result = arq(w, channel_axes=(2,))
    np.testing.assert_array_equal(result.scale, np.float32([1, 2, 4]) / np.float32(127))
    assert (result.quantized == 127).all()


# --- statistics ----------------------------------------------------------------------------

def test_batch_summary_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    x[0, 0, :2] = x[2, 6, 4]                      # duplicates among the extremes
    summary = next(_summaries([x], k=10, bins=16))
    flat = np.sort(x.ravel())
    assert summary["count"] == 105 and summary["count"].dtype == np.int64
    assert summary["min"] == flat[0] and summary["max"] == flat[-1]
    np.testing.assert_array_equal(summary["top"], flat[::-1][:10])
    np.testing.assert_array_equal(summary["bottom"], flat[:10])
    np.testing.assert_array_equal(summary["hist"],
                                  np.histogram(x, bins=16, range=(flat[0], flat[-1]))[0])
    small = next(_summaries([np.float32([3, 3, 3])], k=10, bins=4))  # k > size, min == max
    np.testing.assert_array_equal(small["top"], [3, 3, 3])
    np.testing.assert_array_equal(small["hist"], [3, 0, 0, 0])


def test_one_summary_function_serves_every_shape_with_the_same_numbers():
    """The calibration function's summaries go through at most two traces (with and
    without the row split) whatever the shapes, and give what the ops built in place give."""
    import tensorflow as tf

    from amct_targets.calibration.stats import batch_summary_tensors
    from amct_targets.quant.calibrate import _summary_function

    rng = np.random.default_rng(3)
    shapes = [(4, 56, 56, 64), (4, 28, 28, 128), (4, 14, 14, 256), (4, 300), (4, 9, 9, 5),
              (2, 1024, 1024)]
    arrays = [rng.standard_t(3, size=s).astype(np.float32) for s in shapes]
    arrays.append(rng.standard_normal((4, 20, 20, 16)).astype(np.float16))
    summarize = _summary_function()
    for x in arrays:
        for k, bins in ((1, 64), (103, 2048)):
            size = int(np.prod(x.shape[1:])) * x.shape[0]
            graph = tf.function(lambda t, k=k, bins=bins: (
                summarize(t, k, bins, size), batch_summary_tensors(t, k, bins, size)),
                autograph=False, input_signature=[tf.TensorSpec((None,) + x.shape[1:],
                                                                tf.as_dtype(x.dtype))])
            shared, direct = graph(tf.constant(x))
            for key in direct:
                np.testing.assert_array_equal(shared[key].numpy(), direct[key].numpy())
    assert [f.experimental_get_tracing_count() for f in summarize.traced] == [1, 1]


def test_k_for_percentile_follows_amct():
    assert k_for_percentile(1_000_000, 0.999999) == 1
    assert k_for_percentile(262_144, 0.9999) == 27
    assert k_for_percentile(10, 1.0) == 1
    assert k_for_percentile(5, 0.6) == 2


def test_merged_histogram_keeps_every_count_and_exact_extremes():
    first = np.linspace(0, 1, 1001, dtype=np.float32)
    second = np.linspace(1, 3, 500, dtype=np.float32)
    stats = _stats([first, second], k=4, bins=30)
    counts, edges = stats.histogram()
    assert counts.sum() == pytest.approx(1501, abs=1e-9)
    assert edges[0] == 0 and edges[-1] == 3
    # [0, 1] maps onto whole merged bins, so its mass stays there exactly.
    assert counts[:10].sum() == pytest.approx(1000 + 1000 / 1001, rel=1e-6)
    assert stats.kth_largest(2) == second[-2]
    # No batch went below 0: the summaries skip the bottom-k pass and keep each batch's
    # minimum, which is all IFMR needs (it clamps min0 to <= 0).
    assert stats.kth_smallest(4) == 0.0
    with pytest.raises(ValueError, match="keep only the 4 largest; build them with k >= 5"):
        stats.kth_largest(5)


def test_memory_does_not_grow_with_batch_count():
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal(512).astype(np.float32) * (1 + i) for i in range(32)]

    def numbers_held(stats):
        return sum(v.size if isinstance(v, np.ndarray) else 1 for v in vars(stats).values())

    after_4 = ActivationStats(bins=256, k=8)
    after_32 = ActivationStats(bins=256, k=8)
    for i, summary in enumerate(_summaries(batches, k=8, bins=256)):
        if i < 4:
            after_4.update(summary)
        after_32.update(summary)
    assert numbers_held(after_4) == numbers_held(after_32) == 5 + 256 + 2 * 8
    assert after_4.stored_numbers == after_32.stored_numbers == 5 + 256 + 16
    assert after_32.count == 32 * 512


# --- IFMR ----------------------------------------------------------------------------------

DISTRIBUTIONS = {
    "relu_half_normal": lambda rng, n: np.abs(rng.standard_normal(n)),
    "gaussian": lambda rng, n: rng.standard_normal(n) * 2 + 0.3,
    "student_t3_heavy_tail": lambda rng, n: rng.standard_t(3, n),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("percentile", [0.999999, 0.9999])
def test_streaming_ifmr_matches_in_memory_ifmr(name, percentile):
    rng = np.random.default_rng(len(name))
    batches = [DISTRIBUTIONS[name](rng, 8192).astype(np.float32) for _ in range(32)]
    x = np.concatenate(batches)
    k = k_for_percentile(x.size, percentile)            # 1 or 27 of 262144 values
    stats = _stats(batches, k=32, bins=8192)
    top, bottom = percentile_values(x, percentile, percentile)
    assert stats.kth_largest(k) == top
    # exact where values go below 0; for non-negative data only the clamp to 0 matters
    assert stats.kth_smallest(k) == bottom if x.min() < 0 else min(stats.kth_smallest(k), 0) == 0
    for asymmetric in (True, False):
        kwargs = dict(max_percentile=percentile, min_percentile=percentile,
                      asymmetric=asymmetric)
        streamed, exact = ifmr(stats, **kwargs), ifmr_exact(x, **kwargs)
        assert streamed.scale == pytest.approx(exact.scale, rel=0.01)
        assert abs(streamed.offset - exact.offset) <= 1


def test_ifmr_degenerate_data_gets_scale_one():
    stats = _stats([np.zeros(100, np.float32)] * 3, k=4, bins=64)
    for algo, data in ((ifmr, stats), (ifmr_exact, np.zeros(300, np.float32))):
        assert algo(data) == quant_params(1.0, -128, 8)
        assert algo(data, asymmetric=False) == quant_params(1.0, 0, 8)


def test_ifmr_asks_for_more_extremes_when_k_is_too_small():
    stats = _stats([np.arange(1000, dtype=np.float32)], k=2, bins=64)
    with pytest.raises(ValueError, match="k >= 10"):
        ifmr(stats, max_percentile=0.99)


def test_histogram_mse_matches_elementwise_mse_on_fine_bins():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 3, 200_000)
    counts, edges = np.histogram(x, bins=4096, range=(-1, 3))
    scale, offset = window_quantizer(-1, 2.5)
    mse = histogram_quant_mse(counts, edges, [scale], [offset])[0]
    assert mse == pytest.approx(_dequant_mse(x, quant_params(scale, offset, 8)), rel=0.01)


# --- HFMG ----------------------------------------------------------------------------------

def test_hfmg_clips_outliers_and_beats_min_max():
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal(125_000).astype(np.float32) for _ in range(8)]
    batches[2][:2] = [25.0, 30.0]
    batches[5][:2] = [-27.0, -22.0]
    x = np.concatenate(batches).astype(np.float64)
    params = hfmg(_stats(batches, k=1, bins=4096), num_of_bins=4096)
    assert -22 < params.clip_min < -4 and 4 < params.clip_max < 22
    min_max = quant_params(*window_quantizer(x.min(), x.max()), 8)
    assert _dequant_mse(x, params) < 0.5 * _dequant_mse(x, min_max)


def test_histogram_sample_stride_covers_every_channel():
    from amct_targets.calibration.stats import HIST_SAMPLE_LIMIT, histogram_stride

    assert histogram_stride(HIST_SAMPLE_LIMIT, 64) == 1
    stride = histogram_stride(32 * 56 * 56 * 256, 256)  # 25.7M values: about 1M sampled
    assert stride == 25 and np.gcd(stride, 256) == 1
    assert histogram_stride(32 * 112 * 112 * 64, 64) == 25  # 24.5 -> 25, odd: coprime with 64
    assert histogram_stride(40 * (1 << 20), 40) == 41  # 40 shares factors with 40: next is 41
