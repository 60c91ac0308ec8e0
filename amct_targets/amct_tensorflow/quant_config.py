"""`create_quant_config`: AMCT's JSON quantization config for the layers of a graph, from
the keyword arguments or from a simple config (`.cfg`, protobuf text of
`calibration_config_tf.proto`, ASCEND_FACTS 2). Priority in a .cfg: override_layer_configs
> override_layer_types > common_config.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from amct_targets.amct_tensorflow import analysis, prototext
from amct_targets.amct_tensorflow.log import LOGGER, fail
from amct_targets.errors import ConfigError
from amct_targets.quant.config import QuantSettings, amct_config_json
from amct_targets.quant.int8 import Int8Selection, select_int8_layers

CFG_GLOBALS = ("batch_num", "activation_offset", "joint_quant", "do_fusion")
CFG_LISTS = ("skip_layers", "skip_layer_types", "skip_fusion_layers")
CFG_SECTIONS = ("common_config", "override_layer_types", "override_layer_configs")
# Fields of calibration_config_tf.proto this implementation does not have yet.
CFG_NOT_YET = {
    "nuq_config": "non-uniform weight quantization (NUQ) is not implemented",
    "tensor_quantize": "quantizing arbitrary tensors (tensor_quantize) is not implemented",
    "fakequant_precision_mode": "FORCE_FP16_QUANT scales are not implemented",
    "skip_approximation_layers": "give approximation options to create_approximation_calibrator",
}


def _graph_def(graph, what: str):
    import tensorflow as tf

    if not isinstance(graph, tf.Graph):
        raise fail(ConfigError(f"{what}: 'graph' must be a tf.Graph (the graph the model was "
                               f"imported into), got {type(graph).__name__}"))
    return graph.as_graph_def()


def _calibration_config(cfg: Mapping[str, list], where: str) -> tuple[dict, dict]:
    """(activation_quant_params, weight_quant_params) of one CalibrationConfig message."""
    act: dict[str, Any] = {}
    weight: dict[str, Any] = {"wts_algo": "arq_quantize"}
    for key in cfg:
        if key not in ("arq_quantize", "ifmr_quantize", "hfmg_quantize"):
            raise ConfigError(f"{where}: unknown field '{key}' (a calibration config holds "
                              "arq_quantize and ifmr_quantize or hfmg_quantize)")
    arq = prototext.one(cfg, "arq_quantize", where, {})
    for key, values in arq.items():
        if key == "channel_wise":
            weight["channel_wise"] = bool(values[-1])
        elif key == "quant_bits" and values[-1] != 8:
            raise ConfigError(f"{where}: arq_quantize.quant_bits {values[-1]}: only 8 is supported")
        elif key not in ("quant_bits",):
            raise ConfigError(f"{where}: unknown field arq_quantize.{key}")
    if "ifmr_quantize" in cfg and "hfmg_quantize" in cfg:
        raise ConfigError(f"{where}: give ifmr_quantize or hfmg_quantize, not both")
    for algo in ("ifmr_quantize", "hfmg_quantize"):
        if algo not in cfg:
            continue
        act["act_algo"] = algo.split("_")[0]
        params = prototext.one(cfg, algo, where, {})
        rng = [params.pop("search_range_start", [0.7])[-1], params.pop("search_range_end",
                                                                        [1.3])[-1]]
        if algo == "ifmr_quantize":
            act["search_range"] = [float(v) for v in rng]
        for key, values in params.items():
            value = values[-1]
            if key == "dst_type":
                if value != "INT8":
                    raise ConfigError(f"{where}: {algo}.dst_type {value}: only INT8 is "
                                      "supported here")
            elif key in ("max_percentile", "min_percentile", "search_step"):
                act[key] = float(value)
            elif key in ("asymmetric",):
                act[key] = bool(value)
            elif key == "num_of_bins":
                act[key] = int(value)
            else:
                raise ConfigError(f"{where}: unknown field {algo}.{key}")
    return act, weight


def read_simple_config(path: str | Path) -> tuple[dict, dict]:
    """(global section, {'common': (act, weight), 'types': {op: ...}, 'layers': {name: ...}})
    of a .cfg simple config."""
    path = Path(path)
    where = f"config_defination {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    fields = prototext.parse(text, where)
    known = set(CFG_GLOBALS) | set(CFG_LISTS) | set(CFG_SECTIONS)
    for key in fields:
        if key in CFG_NOT_YET:
            raise ConfigError(f"{where}: field '{key}' is not supported yet: "
                              f"{CFG_NOT_YET[key]}")
        if key not in known:
            raise ConfigError(f"{where}: unknown field '{key}' (known: {sorted(known)})")
    section = {k: prototext.one(fields, k, where) for k in CFG_GLOBALS if k in fields}
    section.update({k: [str(v) for v in fields[k]] for k in CFG_LISTS if k in fields})
    overrides: dict[str, Any] = {"common": ({}, {"wts_algo": "arq_quantize"}),
                                 "types": {}, "layers": {}}
    if "common_config" in fields:
        overrides["common"] = _calibration_config(fields["common_config"][-1],
                                                  f"{where}: common_config")
    for kind, key, table in (("override_layer_types", "layer_type", "types"),
                             ("override_layer_configs", "layer_name", "layers")):
        for entry in fields.get(kind, []):
            name = prototext.one(entry, key, where)
            if not isinstance(name, str) or "calibration_config" not in entry:
                raise ConfigError(f"{where}: every {kind} entry needs {key} and "
                                  "calibration_config")
            overrides[table][name] = _calibration_config(entry["calibration_config"][-1],
                                                         f"{where}: {kind} '{name}'")
    return section, overrides


def select_layers(model, section: Mapping[str, Any], where: str) -> Int8Selection:
    """The quantizable layers of `model` under an AMCT config section."""
    names = [n.name for n in model.graph_def.node]
    layouts = analysis.ops().layouts
    settings = QuantSettings.from_section(
        section, analysis.quantizers(), layer_names=names,
        layer_candidates=[n.name for n in model.graph_def.node if n.op in layouts],
        where=where)
    return select_int8_layers(model, analysis.profile(), settings, layouts)


def _with_overrides(selection: Int8Selection, section: dict, overrides: dict) -> dict:
    """The section with one entry per layer from the .cfg's common/type/layer configs."""
    out = dict(section)
    for layer in selection.layers:
        act, weight = overrides["layers"].get(
            layer.name, overrides["types"].get(layer.op, overrides["common"]))
        weight = dict(weight)
        if not layer.channel_wise:
            weight["channel_wise"] = False
        out[layer.name] = {"quant_enable": True, "activation_quant_params": dict(act),
                           "weight_quant_params": weight}
    return out


def create_quant_config(config_file: str, graph, skip_layers: Iterable[str] | None = None,
                        batch_num: int = 1, activation_offset: bool = True,
                        config_defination: str | None = None) -> None:
    """Write AMCT's JSON quantization config for every quantizable layer of `graph`."""
    graph_def = _graph_def(graph, "create_quant_config")
    overrides = None
    if config_defination is not None:
        section, overrides = read_simple_config(config_defination)
        where = f"config_defination {config_defination}"
    else:
        if not isinstance(batch_num, int) or isinstance(batch_num, bool) or batch_num < 1:
            raise fail(ConfigError(f"create_quant_config: batch_num={batch_num!r}; it must be "
                                   "a positive integer"))
        section = {"batch_num": batch_num, "activation_offset": bool(activation_offset),
                   "skip_layers": [str(s) for s in (skip_layers or [])]}
        where = "create_quant_config"
    model = analysis.analysis_model(graph_def, do_fusion=section.get("do_fusion", True),
                                    skip_fusion=section.get("skip_fusion_layers", ()))
    try:
        selection = select_layers(model, section, where)
        if overrides is not None:
            selection = select_layers(model, _with_overrides(selection, section, overrides),
                                      where)
    except ConfigError as exc:
        raise fail(exc) from None
    if section.get("joint_quant"):
        LOGGER.logw("joint_quant: true has no effect here: Add/Eltwise layers are not "
                    "quantized yet (see docs/amct.md)")
    if not selection.layers:
        LOGGER.logw("create_quant_config: the graph has no quantizable layer (Conv2D, "
                    "DepthwiseConv2dNative, Conv2DBackpropInput, MatMul, BatchMatMul, AvgPool "
                    "with Const weights)")
    for entry in selection.float_layers:
        LOGGER.logd(f"layer {entry['layer']} ({entry['op']}) is not quantized: "
                    f"{entry['reason']}")
    text = amct_config_json(selection.settings, selection.layers, selection.params)
    path = Path(config_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(ConfigError(f"config_file {path}: cannot write it ({exc.strerror})")) from None
    LOGGER.logi(f"Create quant config file {path} success with {len(selection.layers)} "
                "quantizable layer(s).")


def read_quant_config(config_file: str | Path) -> dict:
    """The JSON config written by create_quant_config (or edited by the user)."""
    path = Path(config_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(ConfigError(f"config_file {path} does not exist; write it with "
                               "create_quant_config first")) from None
    except (OSError, ValueError) as exc:
        raise fail(ConfigError(f"config_file {path}: not a readable JSON file ({exc})")) \
            from None
    if not isinstance(data, dict):
        raise fail(ConfigError(f"config_file {path}: the top level must be a JSON object"))
    return data
