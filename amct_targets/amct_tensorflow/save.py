"""`save_model` / `convert_model`: the deploy .pb from a float .pb and a record file.

The layers named in the record are rewritten into AMCT's op format by the same rewrite the
`quantize` pass uses (quant/rewrite.py: AscendQuant, int8 weights behind AscendWeightQuant,
int32 bias, AscendDequant with the packed deq_scale); the graph is cut to `outputs`, whose
node names are kept (an output that was a quantized layer's BiasAdd is now its
AscendDequant, renamed to the original name). Writes

    <save_path>_quantized.pb   the deploy model (runs in stock TF after the import)
    <save_path>_quant.json     {quantized-model node: original node it stands for}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from amct_targets.amct_tensorflow import analysis
from amct_targets.amct_tensorflow.log import LOGGER, fail
from amct_targets.amct_tensorflow.record import LayerRecord, read_record
from amct_targets.errors import AmctError, ConfigError, ModelError
from amct_targets.graph.layout import bias_of, per_channel_shape
from amct_targets.graph.model import Model, node_name, tensor_name
from amct_targets.graph.pattern import GraphIndex
from amct_targets.quant.layers import find_layers
from amct_targets.quant.rewrite import INT32_MAX, LayerQuant, quantize_graph


def _output_names(outputs, what: str) -> list[str]:
    if isinstance(outputs, str):
        outputs = [outputs]
    names = [node_name(getattr(o, "name", o)) for o in (outputs or [])]
    if not names:
        raise fail(ConfigError(f"{what}: 'outputs' must list the model's output node names"))
    return names


def _int8_weights(weights: np.ndarray, layer, scale_w: np.ndarray) -> np.ndarray:
    if scale_w.size == 1:
        broadcast = scale_w.reshape((1,) * weights.ndim)
    else:
        shape = per_channel_shape(weights.shape, layer.channel_axes)
        if int(np.prod(shape)) != scale_w.size:
            raise ConfigError(f"layer '{layer.name}': the record has {scale_w.size} scale_w "
                              f"values; the weight has {int(np.prod(shape))} output channels")
        broadcast = scale_w.reshape(shape)
    return np.clip(np.rint(weights.astype(np.float32) / broadcast), -128, 127).astype(np.int8)


def _check_bias(index: GraphIndex, layer, rec: LayerRecord, scale_w: np.ndarray) -> None:
    bias = bias_of(index, layer.name)
    if bias is None:
        return
    values = index.const_value(index.nodes[bias[1]]).astype(np.float64).ravel()
    deq = np.float64(np.float32(rec.scale_d)) * scale_w.astype(np.float64)
    quantized = np.abs(values / np.broadcast_to(deq, values.shape))
    if np.any(quantized > INT32_MAX):
        channel = int(np.argmax(quantized))
        raise ConfigError(
            f"layer '{layer.name}': the bias quantized to int32 overflows (channel {channel}: "
            f"bias {values[channel]:.6g} / deq_scale {deq.ravel()[channel % deq.size]:.3g} is "
            f"beyond {INT32_MAX}). scale_d * scale_w is too small for this bias: add "
            f"'{layer.name}' to skip_layers (create_quant_config) and quantize again")


def layer_quants(model: Model, records: dict[str, LayerRecord], where: str
                 ) -> list[LayerQuant]:
    layers, skipped = find_layers(model, analysis.profile(), layouts=analysis.ops().layouts)
    by_name = {q.name: q for q in layers}
    reasons = {s.name: s.reason for s in skipped}
    index = GraphIndex(model.graph_def)
    quants = []
    for name, rec in records.items():
        layer = by_name.get(name)
        if layer is None:
            why = reasons.get(name, "no node of the model has this name")
            raise ConfigError(f"{where}: layer '{name}' of the record cannot be quantized in "
                              f"this model ({why}); was the record made for another model?")
        scale_w = np.asarray(rec.scale_w, np.float32)
        weights = None
        if layer.weight_node is not None:
            _check_bias(index, layer, rec, scale_w)
            weights = _int8_weights(index.const_value(index.nodes[layer.weight_node]), layer,
                                    scale_w)
        quants.append(LayerQuant(layer, float(np.float32(rec.scale_d)), rec.offset_d, scale_w,
                                 weights))
    return quants


def _rename(graph_def, old: str, new: str) -> None:
    for node in graph_def.node:
        if node.name == old:
            node.name = new
        for i, inp in enumerate(node.input):
            if node_name(inp) == old:
                prefix = "^" if inp.startswith("^") else ""
                node.input[i] = prefix + new + (inp[len(prefix) + len(old):])


def keep_output_names(deployed: Model, wanted: list[str]) -> Model:
    """Give each requested output its original node name back (see the module docstring)."""
    graph_def = deployed.copy_graph_def()
    taken = {n.name for n in graph_def.node}
    for original, current in zip(wanted, deployed.outputs):
        current_node = node_name(current)
        if current_node == original:
            continue
        moved = f"{original}_int32"
        while moved in taken:
            moved += "_"
        taken.add(moved)
        _rename(graph_def, original, moved)
        _rename(graph_def, current_node, original)
    return deployed.replace(graph_def=graph_def,
                            outputs=tuple(tensor_name(o) for o in wanted))


def quant_mapping(model: Model, quants: list[LayerQuant]) -> dict[str, str]:
    """{deploy node: original node whose tensor it stands for}."""
    index = GraphIndex(model.graph_def)
    mapping = {}
    for q in quants:
        mapping[f"{q.layer.name}/ascend_quant"] = node_name(q.layer.act_input)
        bias = bias_of(index, q.layer.name) if q.layer.weight_node is not None else None
        mapping[f"{q.layer.name}/ascend_dequant"] = bias[0].name if bias else q.layer.name
    return mapping


def write_deploy_model(pb_model: str, outputs: Iterable[str], record_file: str,
                       save_path: str, what: str, verbose: bool = True) -> Path:
    import tensorflow as tf

    from amct_targets.graph.load import read_graph_def

    names = _output_names(outputs, what)
    try:
        records = read_record(record_file)
        graph_def = read_graph_def(pb_model)
        missing = [n for n in names if n not in {node.name for node in graph_def.node}]
        if missing:
            raise ModelError(f"{what}: output '{missing[0]}' is not a node of {pb_model}")
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, names)
        skip = {name for name, rec in records.items() if rec.skip_fusion}
        model = analysis.analysis_model(graph_def, names, skip_fusion=skip, where=pb_model)
        quants = layer_quants(model, records, f"record file {record_file}")
        deployed, notes = quantize_graph(model, quants)
    except AmctError as exc:
        raise fail(exc) from None
    log = LOGGER.logi if verbose else LOGGER.logd
    for note in notes:
        log(note)
    raw_outputs = deployed.outputs
    deployed = keep_output_names(deployed, names)
    mapping = quant_mapping(model, quants)
    for original, current in zip(names, raw_outputs):
        if node_name(current) in mapping:
            mapping[original] = mapping.pop(node_name(current))
    prefix = Path(f"{save_path}")
    pb_path = prefix.parent / f"{prefix.name}_quantized.pb"
    json_path = prefix.parent / f"{prefix.name}_quant.json"
    try:
        pb_path.parent.mkdir(parents=True, exist_ok=True)
        pb_path.write_bytes(deployed.serialize())
        json_path.write_text(json.dumps(mapping, indent=4) + "\n", encoding="utf-8")
    except OSError as exc:
        raise fail(ConfigError(f"save_path {save_path}: cannot write the model "
                               f"({exc.strerror})")) from None
    log(f"{len(quants)} layer(s) quantized; the quantized model is {pb_path}")
    log(f"Quant info file (quantized node -> original node) is {json_path}")
    return pb_path


def save_model(pb_model: str, outputs, record_file: str, save_path: str) -> None:
    """AMCT's save_model: the deploy model from `pb_model` and the calibrated record."""
    write_deploy_model(pb_model, outputs, record_file, save_path, "save_model")


def convert_model(pb_model: str, outputs, record_file: str, save_path: str) -> None:
    """AMCT's convert_model: the deploy model from a record the user computed."""
    write_deploy_model(pb_model, outputs, record_file, save_path, "convert_model")


def save_model_ascend(pb_model: str, outputs, record_file: str, save_path: str) -> None:
    """The online-inference variant: the same deploy model."""
    write_deploy_model(pb_model, outputs, record_file, save_path, "save_model_ascend")
