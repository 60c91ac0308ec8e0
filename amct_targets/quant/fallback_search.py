"""Which layers to keep in float so that a quantized model meets an accuracy requirement.

A plain function interface, shared by AMCT's `accuracy_based_auto_calibration`
(amct_tensorflow/auto_calibration.py) and any accuracy budget of the normal build:

    binary_search_fallback(ranked, evaluate) -> FallbackSearch

`ranked` lists the quantized layers most sensitive first; `evaluate(float_layers)` builds and
scores the model with those layers kept in float and returns (requirement met, loss). With
all layers quantized known to fail, the search finds the smallest n such that keeping the n
most sensitive layers in float passes, assuming that keeping more layers in float never hurts
(AMCT's 'BinarySearch' strategy): ceil(log2(N)) evaluations. Keeping every layer in float is
never evaluated: it is the float model, and the result then says so (`all_float`).
Imports no TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass(frozen=True)
class Trial:
    float_layers: tuple[str, ...]
    ok: bool
    loss: float


@dataclass
class FallbackSearch:
    float_layers: tuple[str, ...]      # the layers to keep in float
    ok: bool                           # a tried configuration met the requirement
    trials: list[Trial] = field(default_factory=list)

    @property
    def all_float(self) -> bool:
        return not self.ok


def binary_search_fallback(ranked: Sequence[str],
                           evaluate: Callable[[frozenset[str]], tuple[bool, float]]
                           ) -> FallbackSearch:
    """Smallest prefix of `ranked` to keep in float (see the module docstring)."""
    ranked = list(dict.fromkeys(ranked))
    trials: list[Trial] = []
    low, high = 1, len(ranked)   # n = 0 (everything quantized) is known to fail
    while low < high:
        middle = (low + high) // 2
        chosen = tuple(ranked[:middle])
        ok, loss = evaluate(frozenset(chosen))
        trials.append(Trial(chosen, bool(ok), float(loss)))
        if ok:
            high = middle
        else:
            low = middle + 1
    passed = [t for t in trials if t.ok and len(t.float_layers) == high]
    if passed:
        return FallbackSearch(passed[-1].float_layers, True, trials)
    return FallbackSearch(tuple(ranked), False, trials)
