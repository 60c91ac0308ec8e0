"""Rewrite a float graph into AMCT's deploy form, layer by layer (ASCEND_FACTS 4):

    x -> AscendQuant(scale=1/scale_d, offset=offset_d) --\\
    int8 Const -> AscendWeightQuant -----------------> Conv2D/MatMul/... -> [BiasAdd(round(b/deq))]
                                                        -> AscendDequant(deq_scale uint64) -> ...

Float Conv on (q - offset_d) x int8 weights equals the chip's int32 accumulation, so the same
graph is the ATC input and, with the Ascend ops expanded, the accuracy simulation. A Relu6
whose only consumers are AscendQuant nodes clipping at <= 6 becomes a Relu, as AMCT does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import graph_pb2

from amct_targets.deploy import ascend_ops
from amct_targets.graph.layout import bias_of
from amct_targets.graph.model import Model, node_name, tensor_name
from amct_targets.graph.nodes import input_slot
from amct_targets.graph.pattern import GraphIndex
from amct_targets.quant.layers import QuantLayer

INT32_MAX = 2 ** 31 - 1


@dataclass(frozen=True)
class LayerQuant:
    """The numbers one layer is quantized with."""

    layer: QuantLayer
    scale_d: float
    offset_d: int
    scale_w: np.ndarray        # float32, per output channel or shape (1,)
    weights_int8: np.ndarray | None   # None for a layer without weights (AvgPool)


def _rewire(graph_def, old: str, new: str, skip: set[str]) -> None:
    """Make every data consumer of tensor `old:0` read `new:0` instead (except `skip`)."""
    for node in graph_def.node:
        if node.name in skip:
            continue
        for i, inp in enumerate(node.input):
            if inp in (old, f"{old}:0"):
                node.input[i] = new


def _deq(layer_quant: LayerQuant) -> np.ndarray:
    return (np.float32(layer_quant.scale_d) * layer_quant.scale_w.astype(np.float32)).astype(
        np.float32)


def quantize_graph(model: Model, quants: list[LayerQuant]) -> tuple[Model, list[str]]:
    """The deploy model, and notes (e.g. Relu6 rewrites)."""
    graph_def = model.copy_graph_def()
    index = GraphIndex(graph_def)
    outputs = list(model.outputs)
    new_nodes, replaced, rewires = [], set(), []
    for q in quants:
        layer = q.layer
        node = index.nodes[layer.name]
        deq = _deq(q)
        quant_name = f"{layer.name}/ascend_quant"
        new_nodes.append(ascend_ops.ascend_quant_node(quant_name, layer.act_input, q.scale_d,
                                                      q.offset_d))
        node.input[input_slot(node, layer.act_index)] = quant_name
        last = layer.name
        if layer.weight_node is None:
            # A pool (ASCEND_FACTS 9): it averages q - offset_d; AscendDequant multiplies by
            # scale_d (scale_w = 1, no shift) and carries the pool's window as ksize.
            ksize = tuple(node.attr["ksize"].list.i)[1:3]
            deq_const, dequant = f"{layer.name}/deq_scale", f"{layer.name}/ascend_dequant"
            new_nodes += [ascend_ops.const_node(deq_const, ascend_ops.pack_deq_scale(deq)),
                          ascend_ops.ascend_dequant_node(dequant, last, deq_const, ksize=ksize)]
            rewires.append((last, dequant))
            outputs = [tensor_name(dequant) if o == tensor_name(last) else o for o in outputs]
            continue
        int8_name, offset_name = f"{layer.name}/weight_int8", f"{layer.name}/weight_offset"
        weight_quant = f"{layer.name}/ascend_weight_quant"
        new_nodes += [ascend_ops.const_node(int8_name, q.weights_int8),
                      ascend_ops.const_node(offset_name, np.zeros(1, np.int8)),
                      ascend_ops.ascend_weight_quant_node(weight_quant, int8_name, offset_name)]
        node.input[input_slot(node, layer.weight_index)] = weight_quant
        bias_node = bias_of(index, layer.name)
        if bias_node is not None:
            bias_add, bias_const = bias_node
            bias = index.const_value(index.nodes[bias_const]).astype(np.float64)
            bias_q = np.clip(np.rint(bias / deq.astype(np.float64)), -INT32_MAX - 1, INT32_MAX)
            bias_q_name = f"{layer.name}/bias_int32"
            new_nodes.append(ascend_ops.const_node(bias_q_name, bias_q.astype(np.float32)))
            bias_add.input[list(bias_add.input).index(_input_ref(bias_add, bias_const))] = \
                bias_q_name
            last = bias_add.name
            replaced.add(bias_const)
        deq_const, dequant = f"{layer.name}/deq_scale", f"{layer.name}/ascend_dequant"
        new_nodes += [ascend_ops.const_node(deq_const, ascend_ops.pack_deq_scale(deq)),
                      ascend_ops.ascend_dequant_node(dequant, last, deq_const)]
        rewires.append((last, dequant))
        outputs = [tensor_name(dequant) if o == tensor_name(last) else o for o in outputs]
    graph_def.node.extend(new_nodes)
    # Rewire only now, so the AscendQuant of a later layer reading `last` is rewired too.
    for last, dequant in rewires:
        _rewire(graph_def, last, dequant, skip={dequant})
    _drop_unused_consts(graph_def, replaced | {q.layer.weight_node for q in quants})
    notes = _relu6_to_relu(graph_def, quants)
    # A protobuf keeps the memory of deleted nodes (the float weights) until it dies: a
    # fresh copy holds only the int8 graph.
    graph_def = graph_pb2.GraphDef.FromString(graph_def.SerializeToString())
    return model.replace(graph_def=graph_def, outputs=tuple(outputs)), notes


def _input_ref(node, producer: str) -> str:
    return next(i for i in node.input if node_name(i) == producer)


def _drop_unused_consts(graph_def: graph_pb2.GraphDef, candidates: set[str]) -> None:
    used = {node_name(i) for n in graph_def.node for i in n.input}
    keep = [n for n in graph_def.node if n.name in used or n.name not in candidates]
    del graph_def.node[:]
    graph_def.node.extend(keep)


def _relu6_to_relu(graph_def: graph_pb2.GraphDef, quants: list[LayerQuant]) -> list[str]:
    index = GraphIndex(graph_def)
    clip_max = {f"{q.layer.name}/ascend_quant": (127 - q.offset_d) * q.scale_d for q in quants}
    notes = []
    for node in graph_def.node:
        if node.op != "Relu6":
            continue
        consumers = index.consumers.get(node.name, [])
        if consumers and all(c in clip_max and clip_max[c] <= 6.0 * (1 + 1e-6)
                             for c in consumers):
            node.op = "Relu"
            notes.append(f"{node.name}: Relu6 before AscendQuant rewritten to Relu (the "
                         "quantization range already clips at 6)")
    return notes
