"""Bounded-memory statistics of one Softmax's input: a uniform sample of whole rows.

Why rows, not a histogram of z = x - max(x): the error FastSoftmax makes on an entry
depends on the rest of its row through the normalization (the row sum), which a histogram of
z loses. A reservoir of whole rows keeps that joint structure and stays a uniform sample of
every row seen, whatever the number of calibration batches.

Sampling is bottom-k ("priority") reservoir sampling: each row gets a random key from a
generator seeded by the layer name, and the `capacity` rows with the smallest keys are kept.
Memory is `capacity` rows (at most `VALUE_BUDGET` float32 values) once the sample is full.
Same data in the same order -> the same sample.
"""
from __future__ import annotations

import zlib

import numpy as np

VALUE_BUDGET = 1 << 18    # float32 values kept per layer (1 MiB)
MIN_ROWS = 64             # even for very long rows, sample at least this many


class SoftmaxRowSample:
    """Uniform sample of the rows (last axis) of a Softmax input across all batches."""

    def __init__(self, row_length: int, seed_name: str = "", value_budget: int = VALUE_BUDGET):
        self.row_length = int(row_length)
        self.capacity = max(MIN_ROWS, value_budget // max(self.row_length, 1))
        self.rows = np.zeros((0, self.row_length), np.float32)
        self.keys = np.zeros((0,), np.float64)
        self.rows_seen = 0
        self._rng = np.random.default_rng(zlib.crc32(seed_name.encode("utf-8")))

    @property
    def values(self) -> int:
        """Number of float values held (bounded by capacity * row_length)."""
        return int(self.rows.size)

    def update(self, x: np.ndarray) -> None:
        """Add every row of `x` (any shape whose last axis is the Softmax axis)."""
        x = np.asarray(x, np.float32)
        if x.shape[-1] != self.row_length:
            raise ValueError(f"rows of length {x.shape[-1]}, expected {self.row_length}")
        batch = x.reshape(-1, self.row_length)
        keys = self._rng.random(len(batch))
        self.rows_seen += len(batch)
        if len(self.keys) >= self.capacity:  # only rows that beat the current k-th key enter
            entering = keys < self.keys.max()
            batch, keys = batch[entering], keys[entering]
        # Rows are stored shifted (max 0): the fit needs only z = x - max(x).
        batch = batch - batch.max(axis=-1, keepdims=True)
        defined = ~np.isnan(batch).any(axis=-1)  # a row of only -inf has no softmax to fit
        batch, keys = batch[defined], keys[defined]
        keys = np.concatenate([self.keys, keys])
        rows = np.concatenate([self.rows, batch])
        if len(keys) > self.capacity:
            keep = np.argpartition(keys, self.capacity - 1)[:self.capacity]
            keep = keep[np.argsort(keys[keep], kind="stable")]
            keys, rows = keys[keep], rows[keep]
        self.keys, self.rows = keys, np.ascontiguousarray(rows)
