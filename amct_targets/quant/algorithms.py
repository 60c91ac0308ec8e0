"""Quantization algorithms as registered plugins (`register_quantizers`).

An activation algorithm (AMCT's `act_algo`: ifmr, hfmg, ...) declares the JSON Schema of its
`activation_quant_params` keys with their defaults, the statistics it needs from calibration
(`StatsRequest`: exact extreme values for a percentile, a histogram of so many bins) and the
function that turns the merged statistics into a scale and offset. A weight algorithm
(`wts_algo`: arq_quantize, ...) declares its parameters and the function that turns a weight
array into int8 values with per-tensor or per-channel scales. A new algorithm is one module
with one `register_quantizers` implementation; the quantize and qat passes, the config
validation and the AMCT config writer pick it up from the registry.

This module imports no TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from amct_targets.errors import PluginError
from amct_targets.hooks import Registry

# Keys every activation / weight entry may carry, whatever the algorithm (AMCT's JSON).
COMMON_ACTIVATION_KEYS = {
    "num_bits": {"const": 8},
    "act_algo": {"type": "string"},
    "asymmetric": {"type": "boolean"},
}
COMMON_WEIGHT_KEYS = {
    "num_bits": {"const": 8},
    "wts_algo": {"type": "string"},
    "channel_wise": {"type": "boolean"},
}


@dataclass(frozen=True)
class StatsRequest:
    """What calibration must collect for one activation tensor."""

    percentile: float = 1.0    # the k-th extreme values for AMCT's k at this percentile
    bins: int = 0              # histogram bins over [min, max] (0: no histogram)


@dataclass(frozen=True)
class WeightQuant:
    """int8 weights with their scales: `quantized` has the weight's shape, `scale`/`offset`
    one value per tensor (shape (1,)) or per output channel."""

    scale: Any        # float32 array
    offset: Any       # int8 array of scale's shape
    quantized: Any    # int8 array


@dataclass(frozen=True)
class ActivationAlgorithm:
    """An `act_algo`: `compute(stats, params) -> QuantParams` (calibration/stats.py), where
    `params` holds the common keys (num_bits, asymmetric) and this algorithm's keys."""

    name: str
    params_schema: Mapping[str, Any]            # JSON Schema per parameter key
    defaults: Mapping[str, Any]
    statistics: Callable[[Mapping[str, Any]], StatsRequest]
    compute: Callable[[Any, Mapping[str, Any]], Any]
    check: Callable[[Mapping[str, Any]], str | None] | None = None   # cross-key rules
    summary: str = ""


@dataclass(frozen=True)
class WeightAlgorithm:
    """A `wts_algo`: `compute(weights, channel_axes or None, params) -> WeightQuant`."""

    name: str
    params_schema: Mapping[str, Any]
    defaults: Mapping[str, Any]
    compute: Callable[[Any, Any, Mapping[str, Any]], WeightQuant]
    summary: str = ""


@dataclass
class QuantizerRegistry(Registry):
    """Handed to `register_quantizers`."""

    activations: dict[str, ActivationAlgorithm] = field(default_factory=dict)
    weights: dict[str, WeightAlgorithm] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def _add(self, kind: str, table: dict, algorithm, cls) -> None:
        plugin = self.current_plugin
        if not isinstance(algorithm, cls) or not algorithm.name:
            raise PluginError(f"plugin '{plugin}' registered a {kind} algorithm that is not an "
                              f"amct_targets.quant.algorithms.{cls.__name__} with a name")
        owner = self.owners.get((kind, algorithm.name))
        if owner is not None:
            raise PluginError(f"{kind} algorithm '{algorithm.name}' is registered twice: by "
                              f"plugin '{owner}' and by plugin '{plugin}'")
        clash = sorted(set(algorithm.params_schema) & set(
            COMMON_ACTIVATION_KEYS if kind == "activation" else COMMON_WEIGHT_KEYS))
        if clash:
            raise PluginError(f"plugin '{plugin}': {kind} algorithm '{algorithm.name}' redefines "
                              f"the common key(s) {clash}")
        table[algorithm.name] = algorithm
        self.owners[(kind, algorithm.name)] = plugin

    def add_activation(self, algorithm: ActivationAlgorithm) -> None:
        self._add("activation", self.activations, algorithm, ActivationAlgorithm)

    def add_weight(self, algorithm: WeightAlgorithm) -> None:
        self._add("weight", self.weights, algorithm, WeightAlgorithm)

    def activation_keys(self) -> set[str]:
        """Every key an activation_quant_params entry may hold, across algorithms."""
        keys = set(COMMON_ACTIVATION_KEYS)
        for algorithm in self.activations.values():
            keys |= set(algorithm.params_schema)
        return keys

    def weight_keys(self) -> set[str]:
        keys = set(COMMON_WEIGHT_KEYS)
        for algorithm in self.weights.values():
            keys |= set(algorithm.params_schema)
        return keys

    def __hash__(self) -> int:  # registries are compared by identity
        return id(self)
