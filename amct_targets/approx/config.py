"""The `fast_softmax` section of the build config, in AMCT's approximation config shape.

Global keys `batch_num`, `batch_size`, `skip_approximation_layers` (and `version`), plus one
mapping per Softmax node name: `{approximate_enable: bool, approximate_algo: "FastSoftmax"}`
and optionally `approximate_params: {a, b, clip_value}` to deploy given parameters instead of
fitting them. `amct_config: FILE.json` reads such a file (e.g. an earlier build's
approx_config.json) as the base; the section's own keys override it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from amct_targets.approx.kernel import ALGO, MAX_CLIP_VALUE, FastSoftmaxParams, invalid_reason
from amct_targets.config import split_amct_section
from amct_targets.errors import ConfigError

GLOBAL_KEYS = frozenset({"version", "batch_num", "batch_size", "skip_approximation_layers",
                         "amct_config"})

PARAMS_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"},
                   "clip_value": {"type": "number", "exclusiveMinimum": 0,
                                  "maximum": MAX_CLIP_VALUE}},
    "required": ["a", "b", "clip_value"],
    "additionalProperties": False,
}
LAYER_SCHEMA = {
    "type": "object",
    "description": "per-Softmax AMCT entry",
    "properties": {"approximate_enable": {"type": "boolean"},
                   "approximate_algo": {"const": ALGO},
                   "approximate_params": PARAMS_SCHEMA},
    "additionalProperties": False,
}
SECTION_SCHEMA = {
    "type": "object",
    "properties": {
        "version": {"type": "integer"},
        "batch_num": {"type": "integer", "minimum": 1},
        "batch_size": {"type": "integer", "minimum": 1},
        "skip_approximation_layers": {"type": "array", "items": {"type": "string"}},
        "amct_config": {"type": "string"},
    },
    "additionalProperties": LAYER_SCHEMA,
}


@dataclass
class ApproxSettings:
    """The resolved approximation settings of one build."""

    globals: dict[str, Any]
    layers: dict[str, dict] = field(default_factory=dict)
    where: str = "passes.fast_softmax"

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "ApproxSettings":
        globals_, layers, where = split_amct_section(section, GLOBAL_KEYS, "passes.fast_softmax",
                                                     "approximation")
        settings = cls(globals_, layers, where)
        for name in layers:
            settings._check_layer(name)
        return settings

    def _check_layer(self, name: str) -> None:
        entry = self.layers[name]
        unknown = sorted(set(entry) - set(LAYER_SCHEMA["properties"]))
        if unknown:
            raise ConfigError(f"{self.where}: {name}.{unknown[0]}: unknown per-layer option; "
                              f"expected {sorted(LAYER_SCHEMA['properties'])}")
        if entry.get("approximate_algo", ALGO) != ALGO:
            raise ConfigError(f"{self.where}: {name}.approximate_algo: only {ALGO!r} exists, "
                              f"got {entry['approximate_algo']!r}")
        params = self.fixed_params(name)
        reason = invalid_reason(params) if params is not None else None
        if reason:
            raise ConfigError(f"{self.where}: {name}.approximate_params: {reason}")

    @property
    def batch_num(self) -> int:
        return int(self.globals.get("batch_num", 1))

    @property
    def skip_layers(self) -> list[str]:
        return list(self.globals.get("skip_approximation_layers", []))

    def skip_reason(self, layer: str) -> str | None:
        """Why the config leaves `layer` a Softmax, or None."""
        if layer in self.skip_layers:
            return "skipped by config (skip_approximation_layers)"
        if not self.layers.get(layer, {}).get("approximate_enable", True):
            return "approximate_enable: false in the config"
        return None

    def fixed_params(self, layer: str) -> FastSoftmaxParams | None:
        given = self.layers.get(layer, {}).get("approximate_params")
        if given is None:
            return None
        try:
            return FastSoftmaxParams.rounded(float(given["a"]), float(given["b"]),
                                             float(given["clip_value"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{self.where}: {layer}.approximate_params: needs numbers a, b "
                              "and clip_value") from None


def amct_config_json(settings: ApproxSettings, fitted: Mapping[str, FastSoftmaxParams],
                     skipped: list[str]) -> str:
    """AMCT-style approximation config: globals, then one entry per float32 Softmax."""
    config: dict[str, Any] = {"version": int(settings.globals.get("version", 1)),
                              "batch_num": settings.batch_num,
                              "skip_approximation_layers": settings.skip_layers}
    for layer, params in fitted.items():
        config[layer] = {"approximate_enable": True, "approximate_algo": ALGO,
                         "approximate_params": params.to_json()}
    for layer in skipped:
        config[layer] = {"approximate_enable": False, "approximate_algo": ALGO}
    return json.dumps(config, indent=4) + "\n"
