"""Judging a compressed candidate: the `accuracy:` budget on the evaluation set, or the
user's evaluator object (AMCT's evaluate / metric_eval) on a stock-TensorFlow graph."""
from __future__ import annotations

import math
from typing import Any

from amct_targets.accuracy.budget import CURES, Budget
from amct_targets.accuracy.evaluate import EvalData, compare, model_outputs, run_graph
from amct_targets.errors import describe
from amct_targets.graph.model import Model, tensor_name


class ScoringFailed(Exception):
    """The metric could not be computed; the build goes on without the search."""


def stock_graph(model: Model, ops):
    """(tf.Graph of `model` with custom ops expanded and the batch freed, output names)."""
    from tensorflow.core.framework import graph_pb2

    from amct_targets.graph.run import expand_custom_ops, import_graph
    from amct_targets.simulate import free_batch_dimension

    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(model.graph_def)
    graph_def = expand_custom_ops(free_batch_dimension(graph_def), ops, model.source)
    return import_graph(graph_def, model.source), [tensor_name(o) for o in model.outputs]


class Scorer:
    """score(model) -> (ok, loss, value, evaluation or None) against the float model."""

    def __init__(self, float_model: Model, ops, *, budget: Budget | None = None,
                 data: EvalData | None = None, evaluator: Any = None):
        self.float_model, self.ops = float_model, ops
        self.budget, self.data, self.evaluator = budget, data, evaluator
        self._original = None

    @property
    def cures(self) -> tuple[str, ...]:
        return self.budget.cures if self.budget is not None else CURES

    def text(self) -> str:
        return self.budget.describe() if self.evaluator is None else \
            f"{type(self.evaluator).__name__}.metric_eval"

    def describe(self) -> dict:
        budget = self.budget.to_json() if self.evaluator is None else {
            "metric": "evaluator", "evaluator": type(self.evaluator).__name__}
        return {"budget": budget, "budget_text": self.text()}

    def reference(self):
        return model_outputs(self.float_model, self.data, self.ops)

    def score(self, model: Model) -> tuple[bool, float, Any, dict | None]:
        try:
            if self.evaluator is not None:
                return self._score_evaluator(model)
            got = run_graph(model.graph_def, model.input_names, model.outputs,
                            self.data.inputs, self.ops, model.source)
            evaluation = compare(list(self.float_model.outputs), self.reference(), got,
                                 self.data.labels)
            ok, loss = self.budget.check(evaluation)
            return ok, loss, self.budget.value(evaluation), evaluation
        except Exception as exc:  # noqa: BLE001 - a metric failure never kills a build
            raise ScoringFailed(describe(exc)) from None

    def _score_evaluator(self, model: Model):
        if self._original is None:
            graph, outputs = stock_graph(self.float_model, self.ops)
            self._original = self.evaluator.evaluate(graph, outputs)
        graph, outputs = stock_graph(model, self.ops)
        new = self.evaluator.evaluate(graph, outputs)
        verdict = self.evaluator.metric_eval(self._original, new)
        if not (isinstance(verdict, (tuple, list)) and len(verdict) == 2):
            raise TypeError(f"metric_eval returned {verdict!r:.60}; it must return "
                            "(bool, loss)")
        ok, loss = bool(verdict[0]), float(verdict[1])
        value = float(new) if isinstance(new, (int, float)) and math.isfinite(new) \
            else repr(new)[:80]
        return ok, loss, value, None
