"""Per-conv decisions of the `decompose` pass: eligible or not (and why), order, rank, factors.

Rank methods (config `rank_method`):
- "evbmf" (default, AMCT): EVBMF on the unfolding's singular values, clipped to
  [L/(d+1), L/d], then `round_rank` to a multiple of `rank_multiple`.
- "energy": the smallest r keeping `energy` of the squared singular values, then the same
  rounding (no clip: the energy is the user's accuracy budget).
- `rank: N` forces N for every decomposed conv, used as given (neither clipped nor rounded).
Every rank is capped at the unfolding's full rank, and a conv is decomposed only when the two
convs at that rank need fewer FLOPs than the original.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from amct_targets.decomposition.conv import (
    H_FIRST, MIN_SIZE_DEFAULTS, ConvGeometry, choose_mode, eligibility_reason, factor_weights,
    max_rank, relative_error, split_flops, unfold,
)
from amct_targets.decomposition.rank import (
    amct_rank_range, energy_rank, evbmf, evbmf_search_size, round_rank,
)
from amct_targets.decomposition.svd import leading_svd
from amct_targets.errors import ConfigError
from amct_targets.graph.flops import LayerCost, conv2d_flops, percent_cut
from amct_targets.graph.layout import LAYOUTS, Layer, resolve_layer
from amct_targets.graph.model import Model
from amct_targets.graph.pattern import GraphIndex

CONV_TYPES = ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "Conv3D")
RANK_METHODS = ("evbmf", "energy")
SVD_METHODS = ("auto", "exact", "randomized")


@dataclass(frozen=True)
class DecomposeSettings:
    """The `decompose` section of the build config, with AMCT's defaults."""

    rank_method: str = "evbmf"
    energy: float = 0.95
    rank: int | None = None
    rank_multiple: int = 16
    skip_layers: frozenset = frozenset()
    min_size: Mapping[str, int] = field(default_factory=lambda: dict(MIN_SIZE_DEFAULTS))
    svd: str = "auto"

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "DecomposeSettings":
        config = dict(config or {})
        method = config.get("rank_method", "evbmf")
        if method not in RANK_METHODS:
            raise ConfigError(f"passes.decompose.rank_method: '{method}' is not one of "
                              f"{list(RANK_METHODS)}")
        energy = config.get("energy", 0.95)
        if not isinstance(energy, (int, float)) or not 0 < energy <= 1:
            raise ConfigError(f"passes.decompose.energy: {energy!r} is not in (0, 1]")
        rank = config.get("rank")
        multiple = config.get("rank_multiple", 16)
        for key, value in (("rank", rank), ("rank_multiple", multiple)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"passes.decompose.{key}: {value!r} is not a positive integer")
        svd = config.get("svd", "auto")
        if svd not in SVD_METHODS:
            raise ConfigError(f"passes.decompose.svd: '{svd}' is not one of {list(SVD_METHODS)}")
        min_size = dict(MIN_SIZE_DEFAULTS, **(config.get("min_size") or {}))
        return cls(method, float(energy), rank, multiple,
                   frozenset(config.get("skip_layers", ())), min_size, svd)


@dataclass
class LayerPlan:
    """A conv to split: its node, order, rank, the two kernels and its report entry."""

    name: str
    mode: str
    rank: int
    first: np.ndarray
    last: np.ndarray
    record: dict


def _attr(node, key: str, kind: str, default):
    value = node.attr.get(key)
    return default if value is None else getattr(value, kind)


def _node_reason(index: GraphIndex, node, costs: Mapping[str, LayerCost],
                 settings: DecomposeSettings, layouts: Mapping) -> str | None:
    """Reasons that come from the graph, before the kernel is looked at."""
    if node.name in settings.skip_layers:
        return "skipped by config (skip_layers)"
    if node.op != "Conv2D":
        return f"{node.op}: AMCT decomposes Conv2D only"
    fmt = _attr(node, "data_format", "s", b"NHWC").decode()
    if fmt != "NHWC":
        return f"data_format {fmt}; only NHWC is decomposed"
    layer = resolve_layer(index, node, layouts)
    if not isinstance(layer, Layer):
        return layer
    if node.name not in costs:
        return "no static shape for this conv"
    return None


def _choose_rank(svd, matrix_shape, geometry: ConvGeometry, full: int,
                 settings: DecomposeSettings) -> tuple[int | None, dict]:
    """(rank, what the report says about how it was chosen); rank None when the energy
    method needs more components than were computed (more than could cut FLOPs)."""
    kh, kw, cin, cout = geometry.kernel
    if settings.rank is not None:
        return min(settings.rank, full), {"rank_method": "forced"}
    if settings.rank_method == "energy":
        estimate = energy_rank(svd.s, settings.energy, svd.total_energy)
        info = {"rank_method": "energy", "energy": settings.energy, "rank_estimate": estimate}
        if estimate is None:
            return None, info
        return min(round_rank(estimate, settings.rank_multiple), full), info
    result = evbmf(svd.s, matrix_shape, svd.total_energy)
    low, high = amct_rank_range((kh, kw), (cin, cout))
    clipped = min(max(float(result.rank), low), high)
    info = {"rank_method": "evbmf", "rank_estimate": result.rank,
            "rank_range": [round(low, 2), round(high, 2)], "noise_sigma2": float(result.sigma2)}
    return min(round_rank(clipped, settings.rank_multiple), full), info


def plan_layer(name: str, kernel: np.ndarray, geometry: ConvGeometry,
               settings: DecomposeSettings) -> tuple[LayerPlan | None, dict]:
    """The split of one eligible conv kernel, or None with the reason in the record."""
    mode = choose_mode(geometry)
    kh, kw, cin, cout = geometry.kernel
    full = max_rank(geometry.kernel, mode)
    before = conv2d_flops(geometry.output_hw, geometry.kernel)
    # The split costs the same per kept component, so ranks above this never cut FLOPs.
    useful = (before - 1) // sum(split_flops(geometry, mode, 1))
    if settings.rank is not None:
        wanted = min(settings.rank, full)
    elif settings.rank_method == "energy":
        wanted = min(useful + 1, full)
    else:
        wanted = min(evbmf_search_size((kh, kw), (cin, cout), settings.rank_multiple), full)
    # float16 / bfloat16 kernels are factored in float32 and the factors cast back.
    work = kernel if kernel.dtype in (np.float32, np.float64) else kernel.astype(np.float32)
    matrix = unfold(work, mode)
    svd = leading_svd(matrix, wanted, method=settings.svd)
    rank, info = _choose_rank(svd, matrix.shape, geometry, full, settings)
    k1, k2 = (f"{kh}x1", f"1x{kw}") if mode == H_FIRST else (f"1x{kw}", f"{kh}x1")
    record = {"mode": f"{k1} then {k2}", "rank": rank, **info, "svd": svd.method}
    if rank is None:
        record["reason"] = (f"energy {settings.energy} needs rank > {wanted}; ranks above "
                            f"{useful} would not cut FLOPs")
        return None, record
    first_flops, last_flops = split_flops(geometry, mode, rank)
    params_after = (kh * cin + kw * cout) * rank if mode == H_FIRST else \
        (kw * cin + kh * cout) * rank
    record.update(conv_flops_before=before, conv_flops_after=first_flops + last_flops,
                  conv_params_before=kh * kw * cin * cout, conv_params_after=params_after)
    if rank > useful:
        record["reason"] = (f"rank {rank} would not cut FLOPs ({first_flops + last_flops} >= "
                            f"{before} for the conv)")
        return None, record
    record["reconstruction_error"] = round(relative_error(svd, rank), 6)
    record["conv_flops_cut_pct"] = percent_cut(before, first_flops + last_flops)
    first, last = factor_weights(svd, rank, geometry.kernel, mode, kernel.dtype)
    return LayerPlan(name, mode, rank, first, last, record), record


def plan_model(model: Model, costs: Mapping[str, LayerCost], settings: DecomposeSettings,
               progress=lambda message: None, layouts: Mapping = LAYOUTS
               ) -> tuple[list[LayerPlan], list[dict]]:
    """(plans for the convs to split, report records for every conv), in graph order."""
    index = GraphIndex(model.graph_def)
    plans, records = [], []
    for node in model.graph_def.node:
        if node.op not in CONV_TYPES:
            continue
        record = {"layer": node.name, "op": node.op}
        reason = _node_reason(index, node, costs, settings, layouts)
        kernel = None
        if reason is None:
            kernel = index.const_value(index.nodes[resolve_layer(index, node, layouts).weight])
            geometry = conv_geometry(node, costs[node.name], kernel.shape)
            record.update(kernel=list(geometry.kernel), strides=list(geometry.strides),
                          padding=_attr(node, "padding", "s", b"").decode())
            reason = eligibility_reason(geometry, dict(settings.min_size))
        if reason is not None:
            records.append({**record, "status": "skipped", "eligible": False, "reason": reason})
            continue
        progress(f"decomposing {node.name} {list(geometry.kernel)}")
        plan, details = plan_layer(node.name, kernel, geometry, settings)
        record.update(details, eligible=True)
        record["status"] = "skipped" if plan is None else "decomposed"
        if plan is not None:
            plan.record = record  # the rewrite adds the first conv's name
            plans.append(plan)
        records.append(record)
    return plans, records


def conv_geometry(node, cost: LayerCost, kernel_shape) -> ConvGeometry:
    """The geometry of a Conv2D node from its attrs and its statically inferred shapes."""
    strides = list(node.attr["strides"].list.i) if "strides" in node.attr else []
    dilations = list(node.attr["dilations"].list.i) if "dilations" in node.attr else []
    strides = strides or [1, 1, 1, 1]
    dilations = dilations or [1, 1, 1, 1]
    return ConvGeometry(kernel=tuple(int(d) for d in kernel_shape),
                        strides=(int(strides[1]), int(strides[2])),
                        dilations=(int(dilations[1]), int(dilations[2])),
                        input_hw=(cost.input_shape[1], cost.input_shape[2]),
                        output_hw=(cost.output_shape[1], cost.output_shape[2]),
                        input_channels=cost.input_shape[3])
