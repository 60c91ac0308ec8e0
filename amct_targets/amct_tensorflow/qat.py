"""`convert_qat_model`: a TF quantization-aware-trained .pb (FakeQuantWithMinMaxVars on
activations, FakeQuantWithMinMaxVars(PerChannel) on weights) to AMCT's deploy .pb.

TF's fake quant nudges [min, max] so that zero is a level: scale = (max - min) / (qmax -
qmin), zero point zp = clamp(round(qmin - min / scale), qmin, qmax). The levels are (k - zp +
qmin) * scale, so AscendQuant's q = round(x / scale) + offset_d with offset_d = zp - qmin - 128
gives the same int8 levels. Weights are fake-quantized here with their min/max and must be
symmetric (the int8 values round(w / scale) stay in [-128, 127]), as AMCT requires. A layer
whose activation and weights both come through fake quant nodes is quantized; the fake quant
nodes are removed and every other layer stays float. Then save_model's rewrite runs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from amct_targets.amct_tensorflow import analysis
from amct_targets.amct_tensorflow.log import LOGGER, fail
from amct_targets.amct_tensorflow.record import LayerRecord, write_record
from amct_targets.amct_tensorflow.save import write_deploy_model
from amct_targets.errors import ConfigError
from amct_targets.graph.load import read_graph_def
from amct_targets.graph.model import node_name
from amct_targets.graph.pattern import GraphIndex
from amct_targets.quant.layers import find_layers

FAKE_QUANT_OPS = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel")


def nudge(low: np.ndarray, high: np.ndarray, num_bits: int, narrow: bool):
    """(scale, zero point, qmin) of TF's fake quant for [low, high]."""
    qmin, qmax = (1 if narrow else 0), 2 ** num_bits - 1
    scale = (high.astype(np.float32) - low.astype(np.float32)) / np.float32(qmax - qmin)
    zero = np.clip(np.round(qmin - low / scale), qmin, qmax)
    return scale.astype(np.float32), zero.astype(np.int64), qmin


def _fake_quant(w: np.ndarray, scale, zero, qmin, num_bits: int, narrow: bool) -> np.ndarray:
    qmax = 2 ** num_bits - 1
    low, high = (qmin - zero) * scale, (qmax - zero) * scale
    clipped = np.clip(w, low, high)
    return (np.round((clipped - low) / scale) * scale + low).astype(np.float32)


def _attrs(node) -> tuple[int, bool]:
    bits = node.attr["num_bits"].i if "num_bits" in node.attr else 8
    narrow = node.attr["narrow_range"].b if "narrow_range" in node.attr else False
    return int(bits or 8), bool(narrow)


def strip_fake_quant(graph_def, where: str):
    """(graph without fake quant nodes, {tensor the node read: params}, fake-quantized weights
    written into their Consts)."""
    index = GraphIndex(graph_def)
    params = {}
    for node in list(graph_def.node):
        if node.op not in FAKE_QUANT_OPS:
            continue
        data = index.data_inputs(node)
        low, high = (index.const_value(index.producer(node, i)) for i in (1, 2))
        if low is None or high is None:
            raise ConfigError(f"{where}: fake quant node '{node.name}': min and max must be "
                              "Const (freeze the QAT graph first)")
        bits, narrow = _attrs(node)
        if bits != 8:
            raise ConfigError(f"{where}: fake quant node '{node.name}' has num_bits={bits}; "
                              "only 8-bit models convert to AMCT's INT8 deploy format")
        scale, zero, qmin = nudge(np.asarray(low), np.asarray(high), bits, narrow)
        source = index.producer(node, 0)
        while source is not None and source.op == "Identity":
            source = index.producer(source, 0)
        if source is not None and source.op == "Const":
            value = index.const_value(source)
            source.attr["value"].tensor.CopyFrom(__import__(
                "tensorflow").make_tensor_proto(_fake_quant(value, scale, zero, qmin, bits,
                                                            narrow)))
        params[node.name] = (data[0], scale, zero - qmin - 128, source is not None
                             and source.op == "Const")
    for node in graph_def.node:
        for i, inp in enumerate(node.input):
            name = node_name(inp)
            if name in params and not inp.startswith("^"):
                node.input[i] = params[name][0]
    kept = [n for n in graph_def.node if n.name not in params]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    return graph_def, params


def convert_qat_model(pb_model, outputs, save_path, record_file=None) -> None:
    """AMCT's convert_qat_model: `<save_path>_quantized.pb` from a TF QAT .pb."""
    import tensorflow as tf

    where = f"convert_qat_model {pb_model}"
    graph_def = read_graph_def(pb_model)
    if not any(n.op in FAKE_QUANT_OPS for n in graph_def.node):
        raise fail(ConfigError(f"{where}: no FakeQuantWithMinMaxVars(PerChannel) node; only "
                               "TF QAT models with these fake quant ops convert"))
    original_index = GraphIndex(graph_def)
    try:
        copy = type(graph_def)()
        copy.CopyFrom(graph_def)
        stripped, params = strip_fake_quant(copy, where)
    except ConfigError as exc:
        raise fail(exc) from None
    by_input = {}
    model = analysis.analysis_model(stripped, outputs=[node_name(getattr(o, "name", o))
                                                       for o in outputs])
    layers, _ = find_layers(model, analysis.profile(), layouts=analysis.ops().layouts)
    for name, (source, scale, offset, on_const) in params.items():
        by_input[name] = (scale, offset, on_const)
    records = {}
    for layer in layers:
        original = original_index.nodes[layer.name]
        act_fq = original_index.producer(original, layer.act_index)
        weight_fq = original_index.producer(original, layer.weight_index) \
            if layer.weight_index is not None else None
        while weight_fq is not None and weight_fq.op == "Identity":
            weight_fq = original_index.producer(weight_fq, 0)
        if act_fq is None or act_fq.name not in by_input or (
                layer.weight_index is not None and (weight_fq is None
                                                    or weight_fq.name not in by_input)):
            LOGGER.logi(f"{layer.name}: no fake quant on its input and weights; left float")
            continue
        scale_d, offset_d, _ = by_input[act_fq.name]
        if layer.weight_index is None:
            scale_w = np.ones(1, np.float32)
        else:
            scale_w, offset_w, _ = by_input[weight_fq.name]
            if not np.all(np.isin(offset_w, (0, -1))):
                raise fail(ConfigError(f"{where}: weights of '{layer.name}' are fake-quantized "
                                       "asymmetrically; AMCT deploys symmetric int8 weights "
                                       "(use narrow_range or a symmetric min/max)"))
        records[layer.name] = LayerRecord(float(np.ravel(scale_d)[0]),
                                          int(np.ravel(offset_d)[0]),
                                          tuple(float(s) for s in np.ravel(scale_w)),
                                          tuple(0 for _ in np.ravel(scale_w)))
    if not records:
        raise fail(ConfigError(f"{where}: no layer has fake quant nodes on both its input and "
                               "its weights"))
    with tempfile.TemporaryDirectory(prefix="amct_qat_") as scratch:
        pb = Path(scratch) / "stripped.pb"
        pb.write_bytes(stripped.SerializeToString())
        record = Path(record_file) if record_file else Path(scratch) / "record.txt"
        write_record(record, records)
        write_deploy_model(str(pb), outputs, str(record), save_path, "convert_qat_model")
    del tf
