"""Empirical bias correction (Nagel et al. 2019, section 4.2; AIMET's bias correction):
quantization shifts the mean of a layer's output; subtracting the shift from the layer's bias
puts it back. For each quantized layer with a Const bias,

    shift_c = mean over samples and positions of (quantized output - float output)[..., c]

measured on calibration data with both models run on the same inputs (the quantized model on
its own, already quantized, upstream activations: the correction covers the error that reached
the layer too). The corrected float model is quantized again by the caller.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from amct_targets.accuracy.sensitivity import governed_layers
from amct_targets.graph.layout import bias_of
from amct_targets.graph.model import Model
from amct_targets.graph.nodes import set_const_value
from amct_targets.graph.pattern import GraphIndex
from amct_targets.graph.run import GraphRunner


def correct_biases(float_model: Model, compressed: Model, sample: Mapping[str, np.ndarray],
                   ops) -> tuple[Model, list[dict], dict[str, tuple[str, np.ndarray]]]:
    """`float_model` with the bias of every quantized layer corrected, one entry per
    corrected layer (largest |shift| relative to the output's std), and {layer: (bias Const,
    original value)} to undo the correction of a layer that falls back to float."""
    index = GraphIndex(float_model.graph_def)
    layers = [g for g in governed_layers(float_model, compressed) if g.kind == "quantize"
              and bias_of(index, g.name) is not None]
    if not layers:
        return float_model, [], {}
    ref_run = GraphRunner(float_model.graph_def, float_model.input_names,
                          [g.reference for g in layers], ops=ops, where=float_model.source)
    got_run = GraphRunner(compressed.graph_def, compressed.input_names,
                          [g.compressed for g in layers], ops=ops, where=compressed.source)
    reference, got = ref_run.run_dict(sample), got_run.run_dict(sample)
    graph_def = float_model.copy_graph_def()
    nodes = {n.name: n for n in graph_def.node}
    entries, originals = [], {}
    for g in layers:
        ref, out = reference[g.reference], got[g.compressed]
        channels = ref.shape[-1]
        shift = (out.astype(np.float64) - ref).reshape(-1, channels).mean(axis=0)
        const = nodes[bias_of(index, g.name)[1]]
        bias = index.const_value(index.nodes[const.name])
        originals[g.name] = (const.name, bias)
        set_const_value(const, (bias.astype(np.float64) - shift.reshape(bias.shape))
                        .astype(bias.dtype))
        spread = float(ref.std()) or 1.0
        entries.append({"layer": g.name,
                        "max_shift_over_std": round(float(np.abs(shift).max()) / spread, 6)})
    return float_model.replace(graph_def=graph_def), entries, originals


def restore_biases(model: Model, originals: Mapping[str, tuple[str, np.ndarray]],
                   layers) -> Model:
    """`model` with the original bias of each of `layers` put back (a float layer needs no
    correction: its output is the float model's again)."""
    wanted = {originals[name][0]: originals[name][1] for name in layers if name in originals}
    if not wanted:
        return model
    graph_def = model.copy_graph_def()
    for node in graph_def.node:
        if node.name in wanted:
            set_const_value(node, wanted[node.name])
    return model.replace(graph_def=graph_def)
