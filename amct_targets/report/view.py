"""What the HTML pages show, read from a report.json dict alone.

Every field is optional here: reports from older builds, skipped passes and plugin passes
lack most of them, and a missing field hides its section instead of failing the page.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

QUANT_PASSES = ("quantize", "qat")
RETRAIN_LOSS_KEYS = ("train_loss", "fine_tune_loss")  # per-epoch losses before `history`
PERCENT_METRICS = ("top1", "top1_agreement")


def number(value: Any) -> float | None:
    """`value` as a finite float, or None (missing, text, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def as_percent(value: Any) -> float | None:
    """A top-1 style value in percent: fractions in [0, 1] are scaled, larger values kept."""
    value = number(value)
    if value is None:
        return None
    return value * 100.0 if abs(value) <= 1.0 else value


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def _dict(value: Any) -> dict:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass
class PassView:
    name: str
    status: str            # "RUN" or "SKIP", as the plan prints it
    reason: str
    seconds: float | None
    plugin: str
    metrics: dict
    notes: list[str]
    warnings: list[str]
    layers: list[dict]
    columns: list[str]     # union of the layers' keys, in first-seen order
    numeric: set[str]      # the columns whose values are all numbers (sorted as numbers)
    history: dict          # metrics["history"] of a retraining pass, or {}


@dataclass
class QuantLayer:
    index: int
    layer: str
    op: str
    pass_name: str
    status: str
    reason: str
    act_algo: str
    scale_d: float | None
    offset_d: float | None
    scale_w_min: float | None
    scale_w_max: float | None
    cosine: float | None
    sqnr_db: float | None
    histogram: dict | None


@dataclass
class StatRow:
    what: str
    before: float | None
    after: float | None
    unit: str = ""

    @property
    def change_percent(self) -> float | None:
        if self.before in (None, 0) or self.after is None:
            return None
        return (self.after - self.before) / self.before * 100.0


@dataclass
class Curve:
    pass_name: str
    epochs: list[int]
    loss: list[float | None]
    val_metric: list[float | None]
    val_metric_name: str
    best_epoch: int | None


@dataclass
class Evaluation:
    samples: int | None
    labels: bool
    float_top1: float | None           # percent
    compressed_top1: float | None      # percent
    outputs: list[dict]                # name, top1_agreement (percent), sqnr_db, cosine
    error: str = ""                    # the evaluation failed (the build went on)

    @property
    def change_points(self) -> float | None:
        """Compressed minus float top-1, in points (negative: the compressed model is worse)."""
        if self.float_top1 is None or self.compressed_top1 is None:
            return None
        return self.compressed_top1 - self.float_top1


@dataclass
class AutoCalibration:
    metric: str
    unit: str              # "%" for top-1 style metrics (shown in percent), else ""
    budget: str
    initial: float | None
    final: float | None
    met: bool | None
    cures: list[dict]
    history: list[dict]
    fallback_layers: list[dict]
    message: str = ""      # why nothing was calibrated (no governed step, metric failed)


@dataclass
class TargetView:
    target: str
    display_name: str
    soc_version: str
    input: str
    input_sha256: str
    pb_sha256: str
    inputs: list[dict]
    outputs: list[str]
    atc_command: str
    artifacts: dict
    passes: list[PassView]
    quant_layers: list[QuantLayer]
    evaluation: Evaluation | None
    stats: list[StatRow]
    stats_source: str
    curves: list[Curve]
    auto_calibration: AutoCalibration | None
    checks: list[dict]
    notes: list[str]
    summary: dict = field(default_factory=dict)

    @property
    def histogram_layers(self) -> list[QuantLayer]:
        return [q for q in self.quant_layers if q.histogram]

    @property
    def ran(self) -> list[PassView]:
        return [p for p in self.passes if p.status == "RUN"]


def target_view(report: Mapping[str, Any]) -> TargetView:
    report = _dict(report)
    passes = [_pass_view(p) for p in _list(report.get("passes")) if isinstance(p, Mapping)]
    view = TargetView(
        target=str(report.get("target") or "target"),
        display_name=str(report.get("display_name") or ""),
        soc_version=str(report.get("soc_version") or ""),
        input=str(report.get("input") or ""),
        input_sha256=str(report.get("input_sha256") or ""),
        pb_sha256=str(report.get("pb_sha256") or ""),
        inputs=[_dict(i) for i in _list(report.get("inputs"))],
        outputs=[str(o) for o in _list(report.get("outputs"))],
        atc_command=str(report.get("atc_command") or ""),
        artifacts={str(k): str(v) for k, v in _dict(report.get("artifacts")).items()},
        passes=passes,
        quant_layers=_quant_layers(passes),
        evaluation=_evaluation(report.get("evaluation")),
        stats=[], stats_source="",
        curves=[c for c in (_curve(p) for p in passes) if c is not None],
        auto_calibration=_auto_calibration(report.get("auto_calibration")),
        checks=[_dict(c) for c in _list(report.get("checks"))],
        notes=[str(n) for n in _list(report.get("notes"))],
    )
    view.stats, view.stats_source = _model_stats(report, passes)
    view.summary = _summary(view, _dict(report.get("metrics")))
    return view


def _pass_view(entry: Mapping[str, Any]) -> PassView:
    layers = [_dict(layer) for layer in _list(entry.get("layers")) if isinstance(layer, Mapping)]
    columns: list[str] = []
    for layer in layers:
        columns += [k for k in layer if k not in columns and k != "histogram"]
    numeric = {c for c in columns if all(
        layer.get(c) is None or number(layer.get(c)) is not None for layer in layers)}
    status = str(entry.get("status") or "")
    return PassView(
        name=str(entry.get("name") or "?"),
        status="RUN" if status in ("ran", "RUN") else "SKIP",
        reason=str(entry.get("reason") or ""),
        seconds=number(entry.get("seconds")),
        plugin=str(entry.get("plugin") or ""),
        metrics={str(k): v for k, v in _dict(entry.get("metrics")).items() if k != "history"},
        notes=[str(n) for n in _list(entry.get("notes"))],
        warnings=[str(w) for w in _list(entry.get("warnings"))],
        layers=layers, columns=columns, numeric=numeric,
        history=_dict(_dict(entry.get("metrics")).get("history")))


def _quant_layers(passes: list[PassView]) -> list[QuantLayer]:
    """Layers of the passes that quantize (every layer: INT8 ones and the float ones)."""
    rows: list[QuantLayer] = []
    for entry in passes:
        if entry.status != "RUN":
            continue
        if entry.name not in QUANT_PASSES and not any(
                layer.get("status") == "quantized" for layer in entry.layers):
            continue
        for layer in entry.layers:
            histogram = _histogram(layer.get("histogram"))
            rows.append(QuantLayer(
                index=len(rows) + 1, layer=str(layer.get("layer") or ""),
                op=str(layer.get("op") or ""), pass_name=entry.name,
                status=str(layer.get("status") or ""), reason=str(layer.get("reason") or ""),
                act_algo=str(layer.get("act_algo") or ""),
                scale_d=number(layer.get("scale_d")), offset_d=number(layer.get("offset_d")),
                scale_w_min=number(layer.get("scale_w_min")),
                scale_w_max=number(layer.get("scale_w_max")),
                cosine=number(layer.get("cosine")), sqnr_db=number(layer.get("sqnr_db")),
                histogram=histogram))
    return rows


def _histogram(value: Any) -> dict | None:
    """{"edges", "counts", "clip_min", "clip_max"} when well formed (len(edges) = counts + 1)."""
    value = _dict(value)
    edges = [number(e) for e in _list(value.get("edges"))]
    counts = [number(c) for c in _list(value.get("counts"))]
    if not counts or len(edges) != len(counts) + 1 or None in edges or None in counts:
        return None
    return {"edges": edges, "counts": counts, "clip_min": number(value.get("clip_min")),
            "clip_max": number(value.get("clip_max"))}


def _evaluation(value: Any) -> Evaluation | None:
    if not isinstance(value, Mapping):
        return None
    outputs = []
    for name, metrics in _dict(value.get("outputs")).items():
        metrics = _dict(metrics)
        outputs.append({"name": str(name),
                        "top1_agreement": as_percent(metrics.get("top1_agreement")),
                        "sqnr_db": number(metrics.get("sqnr_db")),
                        "cosine": number(metrics.get("cosine"))})
    samples = number(value.get("samples"))
    return Evaluation(samples=int(samples) if samples is not None else None,
                      labels=bool(value.get("labels")),
                      float_top1=as_percent(_dict(value.get("float")).get("top1")),
                      compressed_top1=as_percent(_dict(value.get("compressed")).get("top1")),
                      outputs=outputs, error=str(value.get("error") or ""))


def _curve(entry: PassView) -> Curve | None:
    """Per-epoch loss and validation metric of a retraining pass (`history`, or older losses)."""
    if entry.status != "RUN":
        return None
    history = entry.history
    if history:
        loss = [number(v) for v in _list(history.get("loss"))]
        name = str(history.get("val_metric_name") or "validation metric")
        scale = as_percent if name in PERCENT_METRICS else number
        val = [scale(v) for v in _list(history.get("val_metric"))]
        epochs = [int(e) for e in _list(history.get("epoch")) if number(e) is not None]
        if len(epochs) != max(len(loss), len(val)):
            epochs = list(range(1, max(len(loss), len(val)) + 1))
        best = number(history.get("best_epoch"))
        return Curve(entry.name, epochs, loss, val, name, int(best) if best is not None else None)
    for key in RETRAIN_LOSS_KEYS:
        losses = [number(v) for v in _list(entry.metrics.get(key))]
        if losses:
            return Curve(entry.name, list(range(1, len(losses) + 1)), losses, [], "", None)
    return None


def _auto_calibration(value: Any) -> AutoCalibration | None:
    if not isinstance(value, Mapping):
        return None
    budget = _dict(value.get("budget"))
    metric = str(budget.get("metric") or "metric")
    percent = metric in PERCENT_METRICS
    scale = as_percent if percent else number
    if number(budget.get("max_drop")) is not None:
        text = f"{metric} drops at most {budget['max_drop']:g} points"
    elif number(budget.get("min")) is not None:
        text = f"{metric} at least {budget['min']:g}"
    else:
        text = metric
    met = value.get("met")
    return AutoCalibration(
        metric=metric, unit="%" if percent else "", budget=text,
        initial=scale(value.get("initial")), final=scale(value.get("final")),
        met=met if isinstance(met, bool) else None,
        cures=[{"name": str(c.get("name") or ""), "metric_after": scale(c.get("metric_after")),
                "layers": [str(x) for x in _list(c.get("layers"))],
                "kept": c.get("kept") if isinstance(c.get("kept"), bool) else None,
                "note": str(c.get("note") or "")}
               for c in map(_dict, _list(value.get("cures")))],
        history=[{"step": i, "float_layers": [str(x) for x in _list(h.get("float_layers"))],
                  "metric": scale(h.get("metric")), "met": h.get("met") is True}
                 for i, h in enumerate(map(_dict, _list(value.get("history"))), 1)],
        fallback_layers=[{"layer": str(f.get("layer") or ""),
                          "sensitivity": number(f.get("sensitivity")),
                          "reason": str(f.get("reason") or "")}
                         for f in map(_dict, _list(value.get("fallback_layers")))],
        message=str(value.get("error") or value.get("note") or ""))


def _model_stats(report: Mapping, passes: list[PassView]) -> tuple[list[StatRow], str]:
    """Params, FLOPs, .pb size before and after: `model_stats`, else the passes' totals."""
    metrics = _dict(report.get("metrics"))
    nodes = StatRow("graph nodes", number(metrics.get("nodes_before")),
                    number(metrics.get("nodes_after")))
    stats = _dict(report.get("model_stats"))
    if stats:
        rows = [StatRow(what, number(stats.get(f"{key}_before")),
                        number(stats.get(f"{key}_after")), unit)
                for what, key, unit in (("parameters", "params", ""), ("FLOPs", "flops", ""),
                                        (".pb size", "pb_bytes", "bytes"))]
        return [r for r in rows + [nodes] if r.before is not None or r.after is not None], \
            "model_stats"
    rows = []
    for what, keys in (("parameters", ("params", "model_params")),
                       ("FLOPs", ("flops", "model_flops"))):
        before = after = None
        for entry in passes:
            for key in keys:
                if before is None and number(entry.metrics.get(f"{key}_before")) is not None:
                    before = number(entry.metrics[f"{key}_before"])
                if number(entry.metrics.get(f"{key}_after")) is not None:
                    after = number(entry.metrics[f"{key}_after"])
        if before is not None:
            rows.append(StatRow(what, before, after))
    source = "totals reported by the passes that change them" if rows else ""
    rows.append(nodes)
    return [r for r in rows if r.before is not None or r.after is not None], source


def _summary(view: TargetView, metrics: Mapping) -> dict:
    """The one-line facts the index page shows for a target."""
    quantized = [q for q in view.quant_layers if q.status == "quantized"]
    cosines = [q.cosine for q in quantized if q.cosine is not None]
    sqnrs = [q.sqnr_db for q in quantized if q.sqnr_db is not None]
    errors = sum(c.get("severity") == "error" for c in view.checks)
    warnings = sum(c.get("severity") == "warning" for c in view.checks)
    if not view.checks and "check_errors" in metrics:
        errors, warnings = int(metrics.get("check_errors") or 0), int(
            metrics.get("check_warnings") or 0)
    return {"ran": [p.name for p in view.ran],
            "skipped": sum(p.status == "SKIP" for p in view.passes),
            "quantized": len(quantized),
            "float": sum(q.status == "float" for q in view.quant_layers),
            "min_cosine": min(cosines) if cosines else None,
            "mean_sqnr_db": sum(sqnrs) / len(sqnrs) if sqnrs else None,
            "check_errors": errors, "check_warnings": warnings}
