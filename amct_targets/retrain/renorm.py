"""Batch-norm re-estimation for a compressed model whose BatchNorms were folded (AdaBN).

Sparsifying or pruning shifts every later layer's output statistics; with the BatchNorms
folded into the weights (fold_bn runs before retraining) nothing re-normalises them, and the
compressed model can start retraining near chance. Re-estimating BN statistics on a few
hundred samples before fine-tuning is standard practice (AdaBN, Li et al. 2016; NNCF runs
"batchnorm_adaptation" before its sparsity, pruning and QAT training by default).

With folded BNs it becomes: for every layer with a per-channel bias (the folded BN's shift),
in one forward pass over `samples` (one batch), normalise the post-bias output y of each
channel to the float model's mean and standard deviation, exactly as a BatchNorm in training
mode with gamma = float std, beta = float mean would (later layers see earlier layers already
re-normalised), then fold that affine map into the layer:

    a = std_float / sqrt(var_compressed + eps),  W' = W * a,  b' = (b - mean_compressed) * a + mean_float

per output channel (zeros of a sparsity mask stay zeros). The layers computing the model's
output are left alone (no BN follows a classifier head).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from tensorflow.core.framework import attr_value_pb2, node_def_pb2

from amct_targets.graph.layout import Layer, bias_of, resolve_layer
from amct_targets.graph.model import Model, node_name, tensor_name
from amct_targets.graph.pattern import GraphIndex

EPSILON = 1e-3           # Keras BatchNormalization's default


def _node(name: str, op: str, inputs: Sequence[str], **attrs) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op)
    node.input.extend(inputs)
    node.attr["T"].CopyFrom(attr_value_pb2.AttrValue(type=1))
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _const(name: str, value: np.ndarray) -> node_def_pb2.NodeDef:
    from tensorflow.python.framework import tensor_util

    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = 1 if value.dtype == np.float32 else 3
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))
    return node


def eligible(model: Model, layers: Sequence[Layer]) -> list[tuple[Layer, str, str]]:
    """(layer, its post-bias node, bias Const) for the layers re-estimation applies to:
    a per-channel bias Const, channels last, not the layer computing the model output."""
    from amct_targets.retrain.validation import PASS_THROUGH, PROBABILITY_OPS

    index = GraphIndex(model.graph_def)
    output_side = set()
    node = index.nodes.get(node_name(model.outputs[0]))
    while node is not None:
        output_side.add(node.name)
        if node.op not in PASS_THROUGH + PROBABILITY_OPS + ("BiasAdd", "Add", "AddV2") \
                or not node.input:
            break
        node = index.nodes.get(node_name(node.input[0]))
    found = []
    for layer in layers:
        node = index.nodes[layer.name]
        bias = bias_of(index, layer.name)
        layout = node.attr["data_format"].s.decode() if "data_format" in node.attr else ""
        # the output has the weight's rank (dense, 2-D and 3-D convolutions), channels last
        if (bias is None or len(layer.weight_shape) not in (2, 4, 5)
                or layer.name in output_side or (layout and not layout.endswith("C"))):
            continue
        found.append((layer, bias[0].name, bias[1]))
    return found


def statistics(model: Model, targets: Sequence[tuple[Layer, str, str]], reference: Mapping,
               samples: Mapping[str, np.ndarray], ops) -> dict[str, tuple]:
    """{post-bias node: (mean, variance)} per channel of `model` on `samples`, every target's
    output re-normalised in flight to `reference` ({node: (mean, std)}), one batch."""
    from amct_targets.graph.run import compile_graph

    graph_def = model.copy_graph_def()
    rewire, fetches = {}, []
    for layer, out, _bias in targets:
        p = f"{out}/amct_renorm"
        mean_f, std_f = reference[out]
        axes = np.arange(len(layer.weight_shape) - 1, dtype=np.int32)
        keep = attr_value_pb2.AttrValue(b=True)
        tidx = attr_value_pb2.AttrValue(type=3)
        graph_def.node.extend([
            _const(f"{p}/axes", axes),
            _node(f"{p}/mean", "Mean", [out, f"{p}/axes"], keep_dims=keep, Tidx=tidx),
            _node(f"{p}/centered", "Sub", [out, f"{p}/mean"]),
            _node(f"{p}/square", "Square", [f"{p}/centered"]),
            _node(f"{p}/var", "Mean", [f"{p}/square", f"{p}/axes"], keep_dims=keep, Tidx=tidx),
            _const(f"{p}/eps", np.float32(EPSILON)),
            _node(f"{p}/var_eps", "AddV2", [f"{p}/var", f"{p}/eps"]),
            _node(f"{p}/inv", "Rsqrt", [f"{p}/var_eps"]),
            _node(f"{p}/normed", "Mul", [f"{p}/centered", f"{p}/inv"]),
            _const(f"{p}/gamma", np.asarray(std_f, np.float32)),
            _const(f"{p}/beta", np.asarray(mean_f, np.float32)),
            _node(f"{p}/scaled", "Mul", [f"{p}/normed", f"{p}/gamma"]),
            _node(f"{p}/out", "AddV2", [f"{p}/scaled", f"{p}/beta"])])
        rewire[out] = f"{p}/out"
        fetches += [f"{p}/mean", f"{p}/var"]
    inserted = {n.name for n in graph_def.node if "/amct_renorm/" in n.name}
    for node in graph_def.node:
        if node.name in inserted:
            continue
        for i, name in enumerate(node.input):
            if not name.startswith("^") and node_name(name) in rewire and (
                    ":" not in name or name.endswith(":0")):
                node.input[i] = rewire[node_name(name)]
    feeds = [s.name for s in model.inputs]
    run = compile_graph(graph_def, feeds, lambda graph, tensor: [tensor(f) for f in fetches],
                        ops=ops, where="batch-norm re-estimation")
    values = run(*[np.asarray(samples[n]) for n in feeds])
    return {out: (values[2 * i].reshape(-1), values[2 * i + 1].reshape(-1))
            for i, (_layer, out, _bias) in enumerate(targets)}


def float_statistics(model: Model, targets, samples: Mapping[str, np.ndarray], ops
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{post-bias node: (mean, std)} per channel of the float model on `samples`."""
    from amct_targets.graph.run import compile_graph

    feeds = [s.name for s in model.inputs]
    fetches = [tensor_name(out) for _layer, out, _bias in targets]
    run = compile_graph(model.graph_def, feeds,
                        lambda graph, tensor: [tensor(f) for f in fetches], ops=ops,
                        where="batch-norm re-estimation (float model)")
    values = run(*[np.asarray(samples[n]) for n in feeds])
    result = {}
    for (_layer, out, _bias), value in zip(targets, values):
        flat = value.reshape(-1, value.shape[-1])
        result[out] = (flat.mean(axis=0), flat.std(axis=0))
    return result


def reestimate(float_model: Model, compressed: Model, layers: Sequence[Layer],
               samples: Mapping[str, np.ndarray], ops, base: Model | None = None,
               const_masks: Mapping[str, np.ndarray] | None = None
               ) -> tuple[dict[str, np.ndarray], dict]:
    """({weight or bias Const: new value}, a report record): the statistics are measured on
    `compressed`, the scaled weights are `base`'s (default `compressed`; the dense weights
    when a mask is applied on top, so pruned weights keep their scaled values). A channel
    whose bias is masked out in `const_masks` (a pruned filter) is re-normalised to zero."""
    targets = eligible(compressed, layers)
    if not targets:
        return {}, {"layers": 0}
    reference = float_statistics(float_model, targets, samples, ops)
    for _layer, out, bias in targets:
        if bias in (const_masks or {}):
            keep = (np.asarray(const_masks[bias]).reshape(-1) != 0).astype(np.float32)
            reference[out] = (reference[out][0] * keep, reference[out][1] * keep)
    measured = statistics(compressed, targets, reference, samples, ops)
    index = GraphIndex((base or compressed).graph_def)
    values: dict[str, np.ndarray] = {}
    scales = []
    for layer, out, bias in targets:
        mean_c, var_c = measured[out]
        mean_f, std_f = reference[out]
        a = (std_f / np.sqrt(var_c + EPSILON)).astype(np.float32)
        weight = index.const_value(index.nodes[layer.weight]).astype(np.float32)
        b = index.const_value(index.nodes[bias]).astype(np.float32)
        shape = [1] * weight.ndim
        axes = sorted(x % weight.ndim for x in layer.cout_axes)
        for axis in axes:
            shape[axis] = weight.shape[axis]
        values[layer.weight] = weight * a.reshape(shape)
        values[bias] = ((b.reshape(-1) - mean_c) * a + mean_f).reshape(b.shape)
        scales.append(a)
    every = np.concatenate(scales)
    return values, {"layers": len(targets), "samples": int(len(next(iter(samples.values())))),
                    "scale_min": round(float(every.min()), 4),
                    "scale_max": round(float(every.max()), 4)}


RENORM_SAMPLES = 256   # samples of --train for the batch-norm re-estimation (one batch)


def reestimate_in_pass(float_model: Model, compressed: Model, ctx, *, scan: Model,
                       **options) -> dict[str, np.ndarray]:
    """`reestimate` over every weighted layer of `scan`, on the first RENORM_SAMPLES
    training samples; the record goes to the pass's `bn_reestimation` metric. For the
    retraining passes that mask weights (4:2, channel pruning)."""
    index = GraphIndex(scan.graph_def)
    every = [found for node in scan.graph_def.node
             if isinstance(found := resolve_layer(index, node, ctx.layouts), Layer)
             and found.weight is not None]
    samples = ctx.training.first_inputs(float_model, RENORM_SAMPLES)
    values, record = reestimate(float_model, compressed, every, samples, ctx.ops, **options)
    ctx.report.metrics["bn_reestimation"] = record
    return values


def with_consts(model: Model, values: Mapping[str, np.ndarray]) -> Model:
    """`model` with the Consts named in `values` replaced."""
    from tensorflow.python.framework import tensor_util

    graph_def = model.copy_graph_def()
    for node in graph_def.node:
        if node.name in values:
            node.attr["value"].tensor.CopyFrom(
                tensor_util.make_tensor_proto(np.asarray(values[node.name], np.float32)))
    return model.replace(graph_def=graph_def)
