"""The accuracy budget of the build config, and the evaluator objects that judge it.

    accuracy: {metric: top1, max_drop: 0.5}             top-1 may drop 0.5 points (labels)
    accuracy: {metric: top1_agreement, min: 99.0}       argmax agrees with float on 99 % of samples
    accuracy: {metric: cosine, min: 0.999}              every output's cosine against float
    accuracy: {metric: sqnr_db, min: 25}                every output's SQNR against float, dB

top1 and top1_agreement are in percent (points) here and fractions in report.json; with
several outputs the worst output counts. Users whose metric is none of these give an evaluator
object (`at.build(..., evaluator=...)`) with AMCT's `AutoCalibrationEvaluatorBase` methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from amct_targets.errors import ConfigError

METRICS = ("top1", "top1_agreement", "cosine", "sqnr_db")
CURES = ("cross_layer_equalization", "bias_correction")
PERCENT = ("top1", "top1_agreement")
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Budget:
    metric: str
    max_drop: float | None = None   # points of top-1
    min: float | None = None
    cures: tuple[str, ...] = CURES  # tried in this order before layers fall back to float

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, where: str) -> "Budget | None":
        """The budget of `accuracy:` (already schema-checked), or None when absent."""
        if not section:
            return None
        metric = section.get("metric")
        label = f"{where}: accuracy"
        cures = tuple(c for c in CURES if c in section.get("cures", CURES))
        if metric not in METRICS:
            raise ConfigError(f"{label}.metric: {metric!r} is not one of {list(METRICS)}")
        if metric == "top1":
            if "max_drop" not in section or "min" in section:
                raise ConfigError(f"{label}: metric top1 takes max_drop (allowed loss in points, "
                                  "e.g. {metric: top1, max_drop: 0.5}), not min")
            return cls(metric, max_drop=float(section["max_drop"]), cures=cures)
        if "min" not in section or "max_drop" in section:
            raise ConfigError(f"{label}: metric {metric} takes min (e.g. {{metric: {metric}, "
                              f"min: {_example(metric)}}}), not max_drop")
        value = float(section["min"])
        if metric == "top1_agreement" and not 0 <= value <= 100:
            raise ConfigError(f"{label}.min: top1_agreement is in percent, 0..100; got {value}")
        if metric == "cosine" and not -1 <= value <= 1:
            raise ConfigError(f"{label}.min: a cosine lies in [-1, 1]; got {value}")
        return cls(metric, min=value, cures=cures)

    @property
    def needs_labels(self) -> bool:
        return self.metric == "top1"

    def to_json(self) -> dict:
        key = "max_drop" if self.max_drop is not None else "min"
        return {"metric": self.metric, key: self.max_drop if self.max_drop is not None
                else self.min, "cures": list(self.cures)}

    def describe(self) -> str:
        if self.max_drop is not None:
            return f"top-1 drops at most {self.max_drop:g} points"
        unit = " %" if self.metric in PERCENT else " dB" if self.metric == "sqnr_db" else ""
        return f"{self.metric} at least {self.min:g}{unit}"

    def value(self, evaluation: Mapping[str, Any]) -> float:
        """The budget's metric of a compressed model's `evaluation` (fraction for top-1
        style metrics, as in report.json; the worst output counts)."""
        if self.metric == "top1":
            return float(evaluation["compressed"]["top1"])
        values = []
        for entry in evaluation["outputs"].values():
            value = entry.get(self.metric)
            if self.metric == "sqnr_db" and entry.get("identical"):
                value = float("inf")
            if value is None:
                raise ConfigError(f"accuracy budget: metric {self.metric} is undefined for this "
                                  "model's outputs (top1_agreement needs outputs with a class "
                                  "axis); choose cosine or sqnr_db")
            values.append(float(value))
        return min(values)

    def check(self, evaluation: Mapping[str, Any]) -> tuple[bool, float]:
        """(met, loss): loss is the top-1 drop in points, or how far the metric lies below
        `min` (percent for top1_agreement; negative: margin left)."""
        if self.metric == "top1":
            drop = (float(evaluation["float"]["top1"]) - self.value(evaluation)) * 100.0
            return drop <= self.max_drop + TOLERANCE, drop
        value = self.value(evaluation)
        if self.metric in PERCENT:
            value *= 100.0
        loss = self.min - value
        return loss <= TOLERANCE, loss


def _example(metric: str) -> str:
    return {"top1_agreement": "99.0", "cosine": "0.999", "sqnr_db": "25"}[metric]


class AccuracyEvaluator:
    """An evaluator for auto-calibration, as AMCT's `AutoCalibrationEvaluatorBase`.

    `graph` is a `tf.Graph` holding the model with stock TensorFlow ops only (the Ascend ops
    of a compressed model expanded with the kernels' numerics), `outputs` the names of its
    output tensors; run it with `tf.compat.v1.Session(graph=graph)` and feed its inputs by
    name (e.g. `{"image:0": x}`)."""

    def calibration(self, graph, outputs) -> None:
        """Run calibration batches through `graph` (the float model); the tool records the
        inputs fed and calibrates on them when no calibration data is given."""
        raise NotImplementedError("this evaluator has no calibration(); give calibration "
                                  "data (--calib / calib=)")

    def evaluate(self, graph, outputs) -> Any:
        """The metric of the model in `graph` (anything `metric_eval` accepts)."""
        raise NotImplementedError

    def metric_eval(self, original_metric, new_metric) -> tuple[bool, float]:
        """(whether `new_metric` meets the requirement against `original_metric`, loss)."""
        raise NotImplementedError


def check_evaluator(evaluator: Any) -> None:
    missing = [m for m in ("evaluate", "metric_eval") if not callable(getattr(evaluator, m,
                                                                              None))]
    if missing:
        raise ConfigError(f"evaluator {type(evaluator).__name__} has no {' or '.join(missing)}"
                          "(); subclass amct_targets.AccuracyEvaluator and implement "
                          "calibration, evaluate and metric_eval")
