"""Calibration's k extreme values through the row-maxima split (stats.extreme_values) are the
values a plain sort gives, for static and dynamic batch sizes, ties and point masses."""
from __future__ import annotations

import numpy as np
import pytest

from amct_targets.calibration.stats import row_split


class Shape:
    """A static shape as row_split reads it (TensorShape's rank and as_list)."""

    def __init__(self, dims):
        self.rank = None if dims is None else len(dims)
        self.dims = dims

    def as_list(self):
        return self.dims


def _extremes(x: np.ndarray, k: int, dynamic: bool):
    import tensorflow as tf

    from amct_targets.calibration.stats import _row_extremes, extreme_values, row_split

    shape = (None,) + x.shape[1:] if dynamic else x.shape

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def run(t):
        flat = tf.reshape(t, [-1])
        kept = tf.minimum(k, tf.size(flat))
        cols = row_split(t.shape, k, x.size)
        split = None if cols is None else _row_extremes(flat, cols)
        return (extreme_values(flat, kept, split, largest=True),
                extreme_values(flat, kept, split, largest=False))

    top, bottom = run(tf.constant(x))
    return top.numpy(), bottom.numpy()


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("k", [1, 7, 103])
def test_split_extremes_equal_a_full_sort(k, dynamic):
    rng = np.random.default_rng(k)
    x = rng.standard_t(3, size=(4, 28, 28, 32)).astype(np.float32)
    x[1, 3, 5, 7] = 90.0   # outliers in one row
    x[1, 3, 6, 2] = 80.0
    x[2, 0, 0, 0] = -70.0
    assert row_split(Shape(list(x.shape)), k, x.size) is not None
    top, bottom = _extremes(x, k, dynamic)
    flat = np.sort(x.ravel())
    np.testing.assert_array_equal(top, flat[::-1][:k])
    np.testing.assert_array_equal(bottom, flat[:k])


def test_ties_and_a_point_mass():
    x = np.zeros((2, 64, 64, 8), np.float32)
    x[0, :3] = 5.0      # 3 x 64 x 8 values tie at the top
    top, bottom = _extremes(x, 50, dynamic=True)
    np.testing.assert_array_equal(top, np.full(50, 5.0, np.float32))
    np.testing.assert_array_equal(bottom, np.zeros(50, np.float32))


def test_small_or_shapeless_tensors_take_a_plain_top_k():
    assert row_split(Shape([None, 10]), 4, 1000) is None          # small
    assert row_split(Shape(None), 4, 1 << 20) is None             # unknown rank
    assert row_split(Shape([None, None, 8]), 4, 1 << 20) == 8     # trailing static dims only
    assert row_split(Shape([1, 1 << 20]), 10, 1 << 20) is None    # one row: fewer rows than k
