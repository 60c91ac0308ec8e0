"""AMCT-compatible quantization config (JSON) and record file (protobuf text).

The `quantize` section of the build config *is* an AMCT quant config: global keys
(`version`, `batch_num`, `activation_offset`, `do_fusion`, `skip_fusion_layers`, ...) plus one
mapping per layer name (`quant_enable`, `activation_quant_params`, `weight_quant_params`).
`amct_config: FILE.json` reads an AMCT JSON file as the base. Priority: layer > global >
the algorithm's defaults. Activation and weight parameters are validated against the schema
of the algorithm they name (quant/algorithms.py registry): an unknown option or layer name
is an error that suggests the closest known names.

Imports no TensorFlow (the planner validates sections before any work).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from amct_targets.config import check_known, schema_error, split_amct_section
from amct_targets.errors import ConfigError
from amct_targets.quant.algorithms import QuantizerRegistry

GLOBAL_SCHEMA = {
    "version": {"type": "integer"},
    "batch_num": {"type": "integer", "minimum": 1, "maximum": 100000},
    "batch_size": {"type": "integer", "minimum": 1},
    "activation_offset": {"type": "boolean"},
    "joint_quant": {"type": "boolean"},
    "do_fusion": {"type": "boolean"},
    "skip_fusion_layers": {"type": "array", "items": {"type": "string"}},
    "skip_layers": {"type": "array", "items": {"type": "string"}},
    "skip_layer_types": {"type": "array", "items": {"type": "string"}},
    "act_algo": {"type": "string"},
    "wts_algo": {"type": "string"},
    "min_input_channels": {"type": "integer", "minimum": 0},
    "metrics_samples": {"type": "integer", "minimum": 1, "maximum": 4096},
    "amct_config": {"type": "string"},
}
LAYER_KEYS = ("quant_enable", "activation_quant_params", "weight_quant_params")
# The planner's structural check; QuantSettings does the rest, with the algorithm registry.
SECTION_SCHEMA = {"type": "object", "properties": GLOBAL_SCHEMA}


@dataclass
class QuantSettings:
    """The resolved quantization settings of one build."""

    globals: dict[str, Any]
    layers: dict[str, dict] = field(default_factory=dict)
    where: str = "passes.quantize"
    quantizers: QuantizerRegistry | None = None

    @classmethod
    def from_section(cls, section: Mapping[str, Any], quantizers: QuantizerRegistry, *,
                     layer_names: Iterable[str] | None = None,
                     layer_candidates: Iterable[str] | None = None,
                     extra_keys: Iterable[str] = (),
                     where: str = "passes.quantize") -> "QuantSettings":
        """Validate `section` (and the AMCT file it names). `layer_names`, when given, are the
        node names of the model: per-layer entries and skip_layers must name one of them (the
        closest of `layer_candidates`, the model's layers, are suggested). `extra_keys` are
        global keys another pass owns (qat's training options)."""
        extra = set(extra_keys)
        algo_keys = {k for a in quantizers.activations.values() for k in a.params_schema}
        global_keys = set(GLOBAL_SCHEMA) | algo_keys | extra
        globals_, layers, where = split_amct_section(section, global_keys, where,
                                                     "quantization", layer_keys=LAYER_KEYS)
        own = {k: v for k, v in globals_.items() if k in GLOBAL_SCHEMA}
        error = schema_error({"type": "object", "properties": GLOBAL_SCHEMA}, own)
        if error:
            raise ConfigError(f"{where}: {error}")
        settings = cls({k: v for k, v in globals_.items() if k not in extra}, layers, where,
                       quantizers)
        for name in layers:
            settings.activation_params(name)   # validate every override up front
            settings.weight_params(name)
        settings.activation_params(None)
        if layer_names is not None:
            names = set(layer_names)
            for layer in list(layers) + list(globals_.get("skip_layers", [])):
                check_known(layer, names, where, "layer", "(no node of the model has this name)",
                            candidates=layer_candidates or names)
        return settings

    @property
    def batch_num(self) -> int:
        return int(self.globals.get("batch_num", 1))

    def enabled(self, layer: str) -> bool:
        return bool(self.layers.get(layer, {}).get("quant_enable", True))

    def _entry(self, layer: str | None, key: str) -> dict:
        return dict(self.layers.get(layer, {}).get(key) or {}) if layer is not None else {}

    def activation_params(self, layer: str | None) -> dict:
        """Every activation parameter of `layer` (None: the globals alone), resolved."""
        registry = self.quantizers
        given = self._entry(layer, "activation_quant_params")
        label = f"{layer}.activation_quant_params" if layer else "activation parameters"
        for key in given:
            check_known(key, registry.activation_keys(), self.where, "option", f"of {label}")
        name = given.get("act_algo", self.globals.get("act_algo", "ifmr"))
        check_known(name, registry.activations, self.where, "act_algo", f"in {label}")
        algorithm = registry.activations[name]
        params = {"num_bits": 8, "act_algo": name,
                  "asymmetric": bool(self.globals.get("activation_offset", True)),
                  **algorithm.defaults,
                  **{k: v for k, v in self.globals.items() if k in algorithm.params_schema},
                  **{k: v for k, v in given.items() if k in algorithm.params_schema
                     or k in ("num_bits", "act_algo", "asymmetric")}}
        schema = {"type": "object", "properties": {
            "num_bits": {"const": 8}, "act_algo": {"type": "string"},
            "asymmetric": {"type": "boolean"}, **algorithm.params_schema}}
        error = schema_error(schema, params)
        if error is None and algorithm.check is not None:
            error = algorithm.check(params)
        if error:
            raise ConfigError(f"{self.where}: {label}: {error}")
        return params

    def weight_params(self, layer: str | None, default_channel_wise: bool = True,
                      op: str | None = None) -> dict:
        registry = self.quantizers
        given = self._entry(layer, "weight_quant_params")
        label = f"{layer}.weight_quant_params" if layer else "weight parameters"
        for key in given:
            check_known(key, registry.weight_keys(), self.where, "option", f"of {label}")
        name = given.get("wts_algo", self.globals.get("wts_algo", "arq_quantize"))
        check_known(name, registry.weights, self.where, "wts_algo", f"in {label}")
        algorithm = registry.weights[name]
        params = {"num_bits": 8, "wts_algo": name, "channel_wise": default_channel_wise,
                  **algorithm.defaults, **given}
        schema = {"type": "object", "properties": {
            "num_bits": {"const": 8}, "wts_algo": {"type": "string"},
            "channel_wise": {"type": "boolean"}, **algorithm.params_schema}}
        error = schema_error(schema, params)
        if error:
            raise ConfigError(f"{self.where}: {label}: {error}")
        if op is not None and params["channel_wise"] and not default_channel_wise:
            raise ConfigError(f"{self.where}: {label}.channel_wise: must be false for {op} "
                              "(AMCT quantizes FC/MatMul weights per tensor)")
        return params


def amct_config_json(settings: QuantSettings, layers, resolved: Mapping[str, dict]) -> str:
    """The effective AMCT JSON config: globals then one entry per quantizable layer, each
    with the parameters of the algorithms it uses."""
    config = {"version": int(settings.globals.get("version", 1)),
              "batch_num": settings.batch_num,
              "activation_offset": bool(settings.globals.get("activation_offset", True)),
              "joint_quant": bool(settings.globals.get("joint_quant", False)),
              "do_fusion": bool(settings.globals.get("do_fusion", True)),
              "skip_fusion_layers": list(settings.globals.get("skip_fusion_layers", []))}
    for layer in layers:
        config[layer.name] = {"quant_enable": settings.enabled(layer.name),
                              "activation_quant_params": dict(resolved[layer.name]["activation"]),
                              "weight_quant_params": dict(resolved[layer.name]["weight"])}
    return json.dumps(config, indent=4) + "\n"


def _float(value: float) -> str:
    return f"{float(value):.9g}"


def record_text(records: Mapping[str, Mapping[str, Any]]) -> str:
    """AMCT's record file: `record { key: "<layer>" value { scale_d offset_d scale_w offset_w } }`."""
    lines = []
    for layer, rec in records.items():
        lines.append("record {")
        lines.append(f'  key: "{layer}"')
        lines.append("  value {")
        lines.append(f"    scale_d: {_float(rec['scale_d'])}")
        lines.append(f"    offset_d: {int(rec['offset_d'])}")
        lines += [f"    scale_w: {_float(s)}" for s in rec["scale_w"]]
        lines += ["    offset_w: 0" for _ in rec["scale_w"]]
        lines.append("  }")
        lines.append("}")
    return "\n".join(lines) + "\n"

