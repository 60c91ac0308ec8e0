"""A trainable view over a frozen graph: chosen weight Consts become variables.

The frozen GraphDef is imported inside a `tf.function` with `input_map` replacing each
weight (and bias) Const by a tensor computed from a variable, through a per-layer transform
(a sparsity mask, fake quantization, ...). Activation fake quantization is a
`FakeQuantWithMinMaxVars` node inserted in the GraphDef, whose min/max Consts are mapped to
variables, so its clipping range is learned (ULQ-style) with straight-through gradients.
Gradients come from `tf.gradients` (graph-mode), which differentiates imported ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from tensorflow.core.framework import attr_value_pb2, node_def_pb2

from amct_targets.errors import ModelError
from amct_targets.graph.layout import LAYOUTS, Layer, bias_of, resolve_layer
from amct_targets.graph.model import Model, tensor_name
from amct_targets.graph.nodes import input_slot
from amct_targets.graph.pattern import GraphIndex

# A transform maps (layer name, weight tensor) -> the tensor the layer computes with.
WeightTransform = Callable[[str, object], object]


@dataclass(frozen=True)
class TrainedLayer:
    """One layer whose weights train: its compute node, weight Const and bias Const (if any)."""

    name: str
    weight_const: str
    bias_const: str | None


def _const_float(name: str, value: float) -> node_def_pb2.NodeDef:
    from tensorflow.python.framework import tensor_util

    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = 1
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(np.float32(value)))
    return node


class TrainableGraph:
    """Variables for the weights (and biases) of `layers`; optional activation fake quant.

    Build it inside `strategy.scope()` when training with a tf.distribute strategy.
    `layers` are layout-resolved `Layer`s or node names (resolved with `layouts`).
    `act_ranges` ({layer: (min, max)}) inserts a learnable fake quantization on each of
    those layers' activation input.
    """

    def __init__(self, model: Model, layers: Sequence[Layer | str], *,
                 act_ranges: Mapping[str, tuple[float, float]] | None = None,
                 const_masks: Mapping[str, np.ndarray] | None = None,
                 layouts: Mapping = LAYOUTS):
        import tensorflow as tf

        self.model = model
        # {weight or bias Const: 0/1 mask}: held during training and applied on export
        self.const_masks = {k: np.asarray(v, np.float32) for k, v in (const_masks or {}).items()}
        graph_def = model.copy_graph_def()
        index = GraphIndex(graph_def)
        self.layers: list[TrainedLayer] = []
        resolved: dict[str, Layer] = {}
        for item in layers:
            layer = item if isinstance(item, Layer) else resolve_layer(
                index, index.nodes[item], layouts)
            if not isinstance(layer, Layer) or layer.weight is None:
                raise ModelError(f"layer '{item}' cannot be retrained: {layer}")
            resolved[layer.name] = layer
            bias = bias_of(index, layer.name)
            self.layers.append(TrainedLayer(layer.name, layer.weight, bias[1] if bias else None))
        self.act_ranges = dict(act_ranges or {})
        for name, (low, high) in sorted(self.act_ranges.items()):
            node = index.nodes[name]
            slot = input_slot(node, resolved[name].act_index)
            fq = node_def_pb2.NodeDef(name=f"{name}/amct_act_fq", op="FakeQuantWithMinMaxVars")
            fq.input.extend([node.input[slot], f"{name}/amct_act_min", f"{name}/amct_act_max"])
            fq.attr["num_bits"].CopyFrom(attr_value_pb2.AttrValue(i=8))
            fq.attr["narrow_range"].CopyFrom(attr_value_pb2.AttrValue(b=False))
            node.input[slot] = fq.name
            graph_def.node.extend([fq, _const_float(f"{name}/amct_act_min", low),
                                   _const_float(f"{name}/amct_act_max", high)])
        self.graph_def = graph_def
        values = {n.name: index.const_value(n) for n in graph_def.node if n.op == "Const"}
        self.variables: dict[str, tf.Variable] = {}
        for layer in self.layers:
            for const in filter(None, (layer.weight_const, layer.bias_const)):
                self.variables[const] = tf.Variable(values[const].astype(np.float32),
                                                    name=const.replace("/", "_"),
                                                    aggregation=tf.VariableAggregation.MEAN)
        for name, (low, high) in sorted(self.act_ranges.items()):
            for suffix, value in (("min", low), ("max", high)):
                key = f"{name}/amct_act_{suffix}"
                self.variables[key] = tf.Variable(np.float32(value), name=key.replace("/", "_"),
                                                  aggregation=tf.VariableAggregation.MEAN)
        self.order = sorted(self.variables)

    @property
    def trainable(self) -> list:
        return [self.variables[k] for k in self.order]

    def forward(self, inputs, transform: WeightTransform | None = None):
        """(outputs, reads): model outputs and the variable reads, for tf.gradients."""
        import tensorflow as tf

        reads = {k: self.variables[k].read_value() for k in self.order}
        mapped = {k: (v * self.const_masks[k] if k in self.const_masks else v)
                  for k, v in reads.items()}
        if transform is not None:
            for layer in self.layers:
                mapped[layer.weight_const] = transform(layer.name, reads[layer.weight_const])
        feed = inputs if isinstance(inputs, Mapping) else {self.model.inputs[0].name: inputs}
        input_map = {tensor_name(k): v for k, v in feed.items()}
        input_map.update({tensor_name(k): v for k, v in mapped.items()})
        outputs = tf.graph_util.import_graph_def(self.graph_def, input_map=input_map,
                                                 return_elements=list(self.model.outputs),
                                                 name="amct_train")
        return outputs, [reads[k] for k in self.order]

    def values(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.variables.items()}

    def export(self, transform_np: Callable[[str, np.ndarray], np.ndarray] | None = None
               ) -> Model:
        """The frozen float model with trained weights (through `transform_np`), no fake quant."""
        from tensorflow.python.framework import tensor_util

        graph_def = self.model.copy_graph_def()
        values = self.values()
        by_weight = {layer.weight_const: layer.name for layer in self.layers}
        for node in graph_def.node:
            if node.name in values and node.op == "Const":
                value = values[node.name]
                if node.name in self.const_masks:
                    value = value * self.const_masks[node.name]
                if transform_np is not None and node.name in by_weight:
                    value = transform_np(by_weight[node.name], value)
                node.attr["value"].tensor.CopyFrom(
                    tensor_util.make_tensor_proto(value.astype(np.float32)))
        return self.model.replace(graph_def=graph_def)

    def activation_ranges(self) -> dict[str, tuple[float, float]]:
        values = self.values()
        return {name: (float(values[f"{name}/amct_act_min"]),
                       float(values[f"{name}/amct_act_max"])) for name in self.act_ranges}
