"""Filter pruning surgery: physically remove output channels of Conv2D / MatMul layers.

`prunable_layers(model)` finds, for every layer, the Consts its output channels reach (see
`channel_groups`); `prune_output_channels(model, kept)` slices them all:

    layer weights (output axis), bias / BN / per-channel Mul, Add, Sub on the path,
    depthwise kernels (input axis; their outputs c*M+m shrink and are followed too),
    consumer Conv2D input axis, MatMul rows (channels, or (h, w, c) after a Flatten),
    the Flatten's shape Const (flattened size set to H*W*K).

Node names and graph order stay; the input model is not changed. `zero_pruned_channels`
gives the masked original (pruned channels zeroed in place, shapes unchanged): what the
retraining pass computes with `mask_for` masks, and what the pruned model must equal.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from tensorflow.python.framework import tensor_util

from amct_targets.errors import ConfigError
from amct_targets.graph.model import Model
from amct_targets.graph.pattern import GraphIndex
from amct_targets.pruning.channel_groups import ChannelGroup, ConstEdit, prunable_layers
from amct_targets.pruning.ranking import mask_for

__all__ = ["ChannelGroup", "ConstEdit", "mask_for", "prunable_layers",
           "prune_output_channels", "zero_pruned_channels"]


def _checked_kept(layer: str, kept, group: ChannelGroup) -> np.ndarray:
    idx = np.asarray(kept).reshape(-1)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ConfigError(f"kept channels of '{layer}' must be integer indices, got {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size == 0:
        raise ConfigError(f"'{layer}': at least one output channel must stay")
    if np.any(idx < 0) or np.any(idx >= group.channels):
        raise ConfigError(f"'{layer}': kept channel indices must be in [0, {group.channels}), "
                          f"got {idx.min()}..{idx.max()}")
    if np.any(np.diff(idx) <= 0):
        raise ConfigError(f"'{layer}': kept channel indices must be sorted and unique")
    return idx


def _plan(model: Model, kept: Mapping[str, np.ndarray],
          groups: Mapping[str, ChannelGroup] | None, output_side_only: bool
          ) -> dict[str, list[tuple[ConstEdit, np.ndarray, int]]]:
    """{Const name: [(edit, kept indices on its axis, axis size before)]} over all layers."""
    if groups is None:
        groups, skipped = prunable_layers(model)
    else:
        skipped = {}
    plan: dict[str, list] = {}
    for layer in sorted(kept):
        if layer not in groups:
            why = skipped.get(layer, "not a Conv2D/MatMul layer of this model")
            raise ConfigError(f"cannot prune output channels of '{layer}': {why}")
        group = groups[layer]
        idx = _checked_kept(layer, kept[layer], group)
        edits = group.output_side_edits if output_side_only else group.edits
        for edit in edits:
            axis_idx, size = edit.indices(idx, group.channels)
            plan.setdefault(edit.const, []).append((edit, axis_idx, size))
    return plan


def _sliced(value: np.ndarray, edits) -> np.ndarray:
    for edit, idx, size in edits:
        if edit.role == "reshape":
            value = value.copy()
            flat = value.reshape(-1)
            flat[0 if edit.axis < 0 else edit.axis] = idx.size
            continue
        if value.shape[edit.axis] != size:
            raise ValueError(f"Const '{edit.const}' axis {edit.axis} has "
                             f"{value.shape[edit.axis]} entries, expected {size}")
        value = np.take(value, idx, axis=edit.axis)
    return value


def _zeroed(value: np.ndarray, edits) -> np.ndarray:
    value = value.copy()
    for edit, idx, size in edits:
        shape = [1] * value.ndim
        shape[edit.axis] = size
        value = value * mask_for(idx, size).astype(value.dtype).reshape(shape)
    return value


def _rewrite(model: Model, plan, change) -> Model:
    graph_def = model.copy_graph_def()
    index = GraphIndex(graph_def)
    for node in graph_def.node:
        if node.name in plan:
            value = index.const_value(node)
            new = np.asarray(change(value, plan[node.name])).astype(value.dtype)
            node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(new))
        node.attr.pop("_output_shapes", None)  # shapes from before pruning would be stale
    return model.replace(graph_def=graph_def)


def prune_output_channels(model: Model, kept: Mapping[str, np.ndarray],
                          groups: Mapping[str, ChannelGroup] | None = None) -> Model:
    """A new Model with only the `kept[layer]` output channels (sorted indices) of each layer.

    `groups` (from `prunable_layers(model)`) saves the graph walk when the caller has it.
    Raises ConfigError naming the layer when it is not prunable or the indices are invalid.
    """
    return _rewrite(model, _plan(model, kept, groups, False), _sliced)


def zero_pruned_channels(model: Model, kept: Mapping[str, np.ndarray],
                         groups: Mapping[str, ChannelGroup] | None = None) -> Model:
    """A new Model of the same shapes whose pruned channels are zeroed on the output side
    (layer weights, bias/BN/Mul/Add/Sub Consts, depthwise kernels). For groups with
    `zero_preserving` it computes exactly what `prune_output_channels` does."""
    return _rewrite(model, _plan(model, kept, groups, True), _zeroed)
