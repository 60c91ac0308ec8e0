"""AMCT-compatible quantization config (JSON) and record file (protobuf text).

The `quantize` section of the build config *is* an AMCT quant config: global keys
(`version`, `batch_num`, `activation_offset`, `do_fusion`, `skip_fusion_layers`, ...) plus one
mapping per layer name (`quant_enable`, `activation_quant_params`, `weight_quant_params`).
`amct_config: FILE.json` reads an AMCT JSON file as the base. Priority: layer > global.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from amct_targets.config import split_amct_section
from amct_targets.errors import ConfigError

GLOBAL_KEYS = {"version", "batch_num", "batch_size", "activation_offset", "joint_quant",
               "do_fusion", "skip_fusion_layers", "skip_layers", "skip_layer_types",
               "act_algo", "num_of_bins", "min_input_channels", "amct_config", "enabled",
               "force", "metrics_samples"}
ACT_DEFAULTS = {"num_bits": 8, "max_percentile": 0.999999, "min_percentile": 0.999999,
                "search_range": [0.7, 1.3], "search_step": 0.01, "act_algo": "ifmr"}
HFMG_BINS = (1024, 2048, 4096, 8192)

SECTION_SCHEMA = {
    "type": "object",
    "properties": {
        "version": {"type": "integer"},
        "batch_num": {"type": "integer", "minimum": 1},
        "batch_size": {"type": "integer", "minimum": 1},
        "activation_offset": {"type": "boolean"},
        "joint_quant": {"type": "boolean"},
        "do_fusion": {"type": "boolean"},
        "skip_fusion_layers": {"type": "array", "items": {"type": "string"}},
        "skip_layers": {"type": "array", "items": {"type": "string"}},
        "skip_layer_types": {"type": "array", "items": {"type": "string"}},
        "act_algo": {"enum": ["ifmr", "hfmg"]},
        "num_of_bins": {"enum": list(HFMG_BINS)},
        "min_input_channels": {"type": "integer", "minimum": 0},
        "metrics_samples": {"type": "integer", "minimum": 1},
        "amct_config": {"type": "string"},
    },
    "additionalProperties": {
        "type": "object",
        "description": "per-layer AMCT entry",
        "properties": {
            "quant_enable": {"type": "boolean"},
            "activation_quant_params": {
                "type": "object",
                "properties": {
                    "num_bits": {"const": 8},
                    "max_percentile": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 1},
                    "min_percentile": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 1},
                    "search_range": {"type": "array", "items": {"type": "number",
                                                                "exclusiveMinimum": 0},
                                     "minItems": 2, "maxItems": 2},
                    "search_step": {"type": "number", "exclusiveMinimum": 0},
                    "act_algo": {"enum": ["ifmr", "hfmg"]},
                    "num_of_bins": {"enum": list(HFMG_BINS)},
                    "asymmetric": {"type": "boolean"},
                }},
            "weight_quant_params": {
                "type": "object",
                "properties": {
                    "num_bits": {"const": 8},
                    "wts_algo": {"const": "arq_quantize"},
                    "channel_wise": {"type": "boolean"},
                }},
        },
    },
}


@dataclass
class QuantSettings:
    """The resolved quantization settings of one build."""

    globals: dict[str, Any]
    layers: dict[str, dict] = field(default_factory=dict)
    where: str = "passes.quantize"

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "QuantSettings":
        globals_, layers, where = split_amct_section(section, GLOBAL_KEYS, "passes.quantize",
                                                     "quantization")
        settings = cls(globals_, layers, where)
        for name, entry in layers.items():
            settings.activation_params(name)  # validate every override up front
        return settings

    @property
    def batch_num(self) -> int:
        return int(self.globals.get("batch_num", 1))

    def enabled(self, layer: str) -> bool:
        return bool(self.layers.get(layer, {}).get("quant_enable", True))

    def activation_params(self, layer: str) -> dict:
        params = dict(ACT_DEFAULTS)
        params["asymmetric"] = bool(self.globals.get("activation_offset", True))
        if "act_algo" in self.globals:
            params["act_algo"] = self.globals["act_algo"]
        params["num_of_bins"] = int(self.globals.get("num_of_bins", 4096))
        params.update(self.layers.get(layer, {}).get("activation_quant_params", {}))
        start, end = params["search_range"]
        if not 0 < start < end:
            raise ConfigError(f"{self.where}: {layer}.activation_quant_params.search_range: "
                              f"need 0 < start < end, got {params['search_range']}")
        if not 0 < params["search_step"] <= end - start:
            raise ConfigError(f"{self.where}: {layer}.activation_quant_params.search_step: "
                              f"must be in (0, {end - start:g}]")
        return params

    def weight_params(self, layer: str, default_channel_wise: bool, op: str) -> dict:
        params = {"num_bits": 8, "wts_algo": "arq_quantize", "channel_wise": default_channel_wise}
        params.update(self.layers.get(layer, {}).get("weight_quant_params", {}))
        if params["channel_wise"] and op in ("MatMul", "BatchMatMul", "BatchMatMulV2",
                                              "AvgPool"):
            raise ConfigError(f"{self.where}: {layer}.weight_quant_params.channel_wise: must be "
                              f"false for {op} (AMCT quantizes FC/MatMul weights per tensor)")
        return params


def amct_config_json(settings: QuantSettings, layers, resolved: Mapping[str, dict]) -> str:
    """The effective AMCT JSON config: globals then one entry per quantizable layer."""
    config = {"version": int(settings.globals.get("version", 1)),
              "batch_num": settings.batch_num,
              "activation_offset": bool(settings.globals.get("activation_offset", True)),
              "joint_quant": bool(settings.globals.get("joint_quant", False)),
              "do_fusion": bool(settings.globals.get("do_fusion", True)),
              "skip_fusion_layers": list(settings.globals.get("skip_fusion_layers", []))}
    for layer in layers:
        act = dict(resolved[layer.name]["activation"])
        if act["act_algo"] == "ifmr":
            act.pop("num_of_bins", None)
        else:
            for key in ("max_percentile", "min_percentile", "search_range", "search_step"):
                act.pop(key, None)
        config[layer.name] = {"quant_enable": settings.enabled(layer.name),
                              "activation_quant_params": act,
                              "weight_quant_params": resolved[layer.name]["weight"]}
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
