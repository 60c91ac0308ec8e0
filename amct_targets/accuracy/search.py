"""AMCT's accuracy-based auto-calibration search (ASCEND_FACTS 3, strategy 'BinarySearch'):
binary search over how many of the most sensitive layers to keep in float.

A plain function, independent of graphs and builds, so every front end shares it (the build's
`accuracy:` budget, the AMCT drop-in's `accuracy_based_auto_calibration`):

    result = search_fallback(ranked, trial)
    ranked: layer names, most sensitive first
    trial(float_layers) -> (ok, loss): build and evaluate the model with `float_layers` kept
        in float; ok means the budget holds
    result.float_layers: the shortest prefix of `ranked` found to meet the budget

Assumes what AMCT assumes: keeping more layers in float does not make the model worse, and
the model with every layer in float meets the budget (it is the float model). The search
evaluates that last model only when every shorter prefix failed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass
class Trial:
    float_layers: list[str]
    ok: bool
    loss: float


@dataclass
class SearchResult:
    float_layers: list[str]
    ok: bool                 # the final trial met the budget
    loss: float | None
    history: list[Trial] = field(default_factory=list)

    def roll_back_config(self, ranked: Sequence[str], float_layers: Sequence[str]
                         ) -> dict[str, bool]:
        """AMCT's record form: {layer: quant_enable} over every ranked layer."""
        kept = set(float_layers)
        return {name: name not in kept for name in ranked}


def search_fallback(ranked: Sequence[str], trial: Callable[[list[str]], tuple[bool, float]],
                    *, initial: tuple[bool, float] | None = None,
                    try_all: bool = True) -> SearchResult:
    """The fewest most-sensitive layers to keep in float so that `trial` says ok.

    `initial`: the (ok, loss) of the model with nothing in float when the caller has it
    already (no trial is run for it). `try_all=False`: every layer in float is the float
    model, never tried (AMCT's BinarySearch); when nothing less passes the result is every
    layer with ok False. Trials: about log2(len(ranked)) + 1."""
    ranked = list(ranked)
    history: list[Trial] = []

    def run(count: int) -> tuple[bool, float]:
        layers = ranked[:count]
        ok, loss = trial(list(layers))
        history.append(Trial(list(layers), bool(ok), float(loss)))
        return bool(ok), float(loss)

    ok, loss = initial if initial is not None else run(0)
    if ok:
        return SearchResult([], True, loss, history)
    low, high = 0, len(ranked)       # low fails; high is assumed to pass until tried
    results = {0: (ok, loss)}
    while high - low > 1:
        middle = (low + high) // 2
        results[middle] = run(middle)
        if results[middle][0]:
            high = middle
        else:
            low = middle
    if high not in results:
        if not try_all and high == len(ranked):
            return SearchResult(ranked, False, None, history)
        results[high] = run(high)
    ok, loss = results[high]
    return SearchResult(ranked[:high], ok, loss, history)
