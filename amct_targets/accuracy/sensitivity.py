"""Per-layer sensitivity, as AMCT's 'CosineSimilarity' (ASCEND_FACTS 3): each governed layer's
output in the compressed model against the same tensor of the float model, both run on the
same inputs; sensitivity = 0.5 + 0.5 * cosine (lower: the layer loses more).

Governed layers are found in the compressed graph itself:
- a quantized layer L has an AscendDequant `L/ascend_dequant` standing for L's output after
  its Const bias (what quant/rewrite.py writes);
- an approximated Softmax keeps its name with op type FastSoftmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from amct_targets.graph.layout import bias_of
from amct_targets.graph.model import Model, tensor_name
from amct_targets.graph.pattern import GraphIndex
from amct_targets.graph.run import GraphRunner
from amct_targets.quant.int8 import similarity

DEQUANT_SUFFIX = "/ascend_dequant"


@dataclass(frozen=True)
class GovernedLayer:
    name: str
    kind: str          # "quantize" | "fast_softmax"
    reference: str     # tensor in the float model
    compressed: str    # tensor in the compressed model


def governed_layers(float_model: Model, compressed: Model) -> list[GovernedLayer]:
    """Quantized layers and FastSoftmax nodes of `compressed` that `float_model` holds in
    float, in graph order."""
    index = GraphIndex(float_model.graph_def)
    found = []
    for node in compressed.graph_def.node:
        if node.op == "AscendDequant" and node.name.endswith(DEQUANT_SUFFIX):
            layer = node.name[:-len(DEQUANT_SUFFIX)]
            if layer not in index.nodes:
                continue
            bias = bias_of(index, layer)
            reference = tensor_name(bias[0].name if bias else layer)
            found.append(GovernedLayer(layer, "quantize", reference, tensor_name(node.name)))
        elif node.op == "FastSoftmax" and node.name in index.nodes and \
                index.nodes[node.name].op == "Softmax":
            found.append(GovernedLayer(node.name, "fast_softmax", tensor_name(node.name),
                                       tensor_name(node.name)))
    return found


def layer_sensitivity(float_model: Model, compressed: Model, sample: Mapping[str, np.ndarray],
                      ops) -> dict[str, tuple[GovernedLayer, float]]:
    """{layer: (governed layer, 0.5 + 0.5 * cosine)} on `sample` inputs."""
    layers = governed_layers(float_model, compressed)
    if not layers:
        return {}
    ref_run = GraphRunner(float_model.graph_def, float_model.input_names,
                          sorted({g.reference for g in layers}), ops=ops,
                          where=float_model.source)
    got_run = GraphRunner(compressed.graph_def, compressed.input_names,
                          sorted({g.compressed for g in layers}), ops=ops,
                          where=compressed.source)
    reference, got = ref_run.run_dict(sample), got_run.run_dict(sample)
    return {g.name: (g, 0.5 + 0.5 * similarity(reference[g.reference], got[g.compressed])[0])
            for g in layers}


def ranking(sensitivity: Mapping[str, tuple[GovernedLayer, float]]) -> list[str]:
    """Layer names, most sensitive (lowest similarity) first; ties in name order."""
    return sorted(sensitivity, key=lambda name: (sensitivity[name][1], name))
