"""AMCT approximate calibration, Softmax -> FastSoftmax (ASCEND_FACTS 6): the `fast_softmax`
pass's work.

    Softmax(x)  ==>  FastSoftmax(x; a, b, clip_value, axis=-1)   same node name

FastSoftmax replaces exp with a clipped cubic, p(t) = 1 + t + a t^2 + b t^3 on
t = max(x - max(x), -clip_value), normalized by the row sum (approx/kernel.py). Only the
Atlas inference series (Ascend 310P) runs it faster; other targets skip the pass with the
profile's reason unless `force: true`.

1. Calibration (`batch_num` batches): every float32 Softmax's input is fetched from the frozen
   graph batch by batch and folded into a fixed-size uniform sample of its rows
   (approx/sample.py); memory does not grow with the number of batches.
2. Fit per layer (approx/fit.py): (a, b) by constrained least squares of the normalized
   output's error for each clip value on a grid, then the clip value with the smallest max
   abs error on the sample, guarded by fixed probe rows so that p stays close to exp where
   the calibration rows have no entries. `approximate_params` in the config skips the fit.
3. A second pass over the same batches measures each layer's max and mean abs error of
   FastSoftmax (the float32 NumPy reference of the kernel) against the graph's own Softmax
   output on all of the calibration data, streaming.
4. Each Softmax becomes a FastSoftmax node under the same name (approx/ops.py, which also
   registers its simulation expander through `register_ops`). Writes the AMCT-style
   `approx_config.json`.

Quantization and approximation of the same layer are refused by the planner (the passes are
`exclusive_with` each other; `layers()` names the Softmax nodes this pass would replace).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from tensorflow.core.framework import types_pb2

from amct_targets.approx.config import ApproxSettings, amct_config_json
from amct_targets.approx.fit import fit_fast_softmax
from amct_targets.approx.kernel import ALGO, FastSoftmaxParams, ref_fast_softmax
from amct_targets.approx.ops import fast_softmax_node
from amct_targets.approx.sample import SoftmaxRowSample
from amct_targets.errors import ConfigError, ModelError
from amct_targets.graph.model import Model, tensor_name
from amct_targets.graph.run import GraphRunner
from amct_targets.quant.calibrate import batches

CONFIG_FILE = "approx_config.json"


def softmax_nodes(model: Model) -> list:
    """Every Softmax NodeDef of the graph, in graph order."""
    return [n for n in model.graph_def.node if n.op == "Softmax"]


def _is_float32(node) -> bool:
    return "T" not in node.attr or node.attr["T"].type == types_pb2.DT_FLOAT


def check_names(settings: ApproxSettings, model: Model) -> None:
    """Every layer the config names must be a Softmax of the model (catches typos)."""
    softmaxes = {n.name for n in softmax_nodes(model)}
    for name in list(settings.skip_layers) + list(settings.layers):
        if name not in softmaxes:
            known = ", ".join(sorted(softmaxes)) or "none"
            raise ConfigError(f"{settings.where}: '{name}' is not a Softmax node of the model "
                              f"(its Softmax nodes: {known})")


@dataclass
class _ErrorStats:
    """Streaming max and mean of |FastSoftmax - Softmax| over every calibration entry."""

    max_abs: float = 0.0
    total: float = 0.0
    count: int = 0
    rows: int = 0

    def update(self, error: np.ndarray) -> None:
        if error.size:
            self.max_abs = max(self.max_abs, float(error.max()))
            self.total += float(error.sum(dtype=np.float64))
            self.count += int(error.size)
            self.rows += int(error.size // max(error.shape[-1], 1))

    @property
    def mean_abs(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass
class _Layer:
    node: Any
    params: FastSoftmaxParams | None = None
    fitted: bool = True
    sample: SoftmaxRowSample | None = None
    errors: _ErrorStats = field(default_factory=_ErrorStats)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def input(self) -> str:
        return tensor_name([i for i in self.node.input if not i.startswith("^")][0])


def eligible_softmax(model: Model, config: Mapping[str, Any]) -> list[str]:
    """The Softmax nodes the pass would replace (the planner's conflict check)."""
    settings = ApproxSettings.from_section(config)
    check_names(settings, model)
    return [n.name for n in softmax_nodes(model)
            if _is_float32(n) and settings.skip_reason(n.name) is None]


def approximate(model: Model, ctx) -> Model:
    """Replace every eligible Softmax of `model` by a fitted FastSoftmax (the pass's work)."""
    settings = ApproxSettings.from_section(ctx.config)
    check_names(settings, model)
    layers, skipped, disabled = [], [], []
    for node in softmax_nodes(model):
        reason = settings.skip_reason(node.name)
        if reason:
            disabled.append(node.name)
        elif not _is_float32(node):
            reason = "not a float32 Softmax (FastSoftmax is float32 only)"
        if reason:
            skipped.append({"layer": node.name, "op": "Softmax", "status": "skipped",
                            "reason": reason})
            continue
        fixed = settings.fixed_params(node.name)
        layers.append(_Layer(node, fixed, fitted=fixed is None))
    if not layers:
        ctx.report.layers.extend(skipped)
        ctx.report.metrics.update(approximated=0, skipped=len(skipped))
        ctx.report.notes.append("no Softmax to approximate; the model is unchanged")
        return model
    data = batches(ctx.calibration, settings.batch_num, settings.globals.get("batch_size"),
                   "calibration data")
    run = _runner(model, layers, ctx.ops)
    if any(layer.fitted for layer in layers):
        _sample(layers, data, run, ctx)
    for layer in layers:
        if layer.params is None:
            if layer.sample is None or not len(layer.sample.rows):
                raise ModelError(f"Softmax '{layer.name}': the calibration data gave no "
                                 "row with a finite maximum to fit FastSoftmax to")
            ctx.progress(f"fitting {layer.name}")
            layer.params = fit_fast_softmax(layer.sample.rows).params
    _measure(layers, data, run, ctx)
    deployed = _rewrite(model, layers)
    _report(layers, skipped, model, ctx)
    if ctx.artifacts_dir is not None:
        fitted = {layer.name: layer.params for layer in layers}
        (ctx.artifacts_dir / CONFIG_FILE).write_text(
            amct_config_json(settings, fitted, disabled), encoding="utf-8")
        ctx.report.artifacts["approx_config"] = CONFIG_FILE
    return deployed


def _runner(model: Model, layers: list[_Layer], ops):
    """A function batch -> {tensor: array} fetching every Softmax's input and output."""
    fetches = sorted({layer.input for layer in layers} |
                     {tensor_name(layer.name) for layer in layers})
    return GraphRunner(model.graph_def, model.input_names, fetches, ops=ops,
                       where=model.source).run_dict


def _sample(layers, data, run, ctx) -> None:
    for index, batch in enumerate(data):
        ctx.progress(f"calibration batch {index + 1}/{len(data)}")
        values = run(batch)
        for layer in layers:
            if not layer.fitted:
                continue
            x = values[layer.input]
            if layer.sample is None:
                layer.sample = SoftmaxRowSample(x.shape[-1], seed_name=layer.name)
            layer.sample.update(x)


def _measure(layers, data, run, ctx) -> None:
    for index, batch in enumerate(data):
        ctx.progress(f"error measurement batch {index + 1}/{len(data)}")
        values = run(batch)
        for layer in layers:
            p = layer.params
            fast = ref_fast_softmax(values[layer.input], p.a, p.b, p.clip_value)
            layer.errors.update(np.abs(fast - values[tensor_name(layer.name)]))


def _rewrite(model: Model, layers: list[_Layer]) -> Model:
    by_name = {layer.name: layer for layer in layers}
    graph_def = model.copy_graph_def()
    for node in graph_def.node:
        layer = by_name.get(node.name)
        if layer is not None:
            replacement = fast_softmax_node(node.name, list(node.input), layer.params)
            replacement.device = node.device
            node.CopyFrom(replacement)
    return model.replace(graph_def=graph_def)


def _report(layers, skipped, model, ctx) -> None:
    for layer in layers:
        entry = {"layer": layer.name, "op": "Softmax", "status": "approximated",
                 "approximate_algo": ALGO, **layer.params.to_json(),
                 "fitted": layer.fitted,
                 "max_abs_error": layer.errors.max_abs,
                 "mean_abs_error": layer.errors.mean_abs,
                 "rows": layer.errors.rows}
        if layer.sample is not None:
            entry.update(row_length=layer.sample.row_length,
                         sampled_rows=len(layer.sample.rows))
        ctx.report.layers.append(entry)
    ctx.report.layers.extend(skipped)
    order = {node.name: i for i, node in enumerate(model.graph_def.node)}
    ctx.report.layers.sort(key=lambda entry: order.get(entry["layer"], len(order)))
    ctx.report.metrics.update(
        approximated=len(layers), skipped=len(skipped),
        max_abs_error=max(layer.errors.max_abs for layer in layers),
        max_mean_abs_error=max(layer.errors.mean_abs for layer in layers))
    ctx.report.notes.append(
        f"{len(layers)} Softmax node(s) replaced by {ALGO} (op type FastSoftmax, same "
        "names); amct_targets.load_simulation runs it with stock TensorFlow ops")
