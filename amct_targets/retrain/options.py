"""The retraining options every retraining pass accepts in its config section (no TF).

`epochs` is a maximum: retraining stops early when the validation metric (then the validation
loss on a tie) has not improved for `patience` epochs, or, with `stop_at_budget`, as soon as
the metric is back within the accuracy budget; the best epoch's weights are kept. `from_logits` unset means inferred from the graph (a Softmax output: probabilities).
`distillation` is the weight of the float model's soft targets in the loss (0: labels only;
classifiers only, retrain/distill.py), `distillation_temperature` their temperature.
"""
from __future__ import annotations

from typing import Any, Mapping

TRAIN_OPTIONS_SCHEMA = {
    "epochs": {"type": "integer", "minimum": 1, "maximum": 10000},
    "patience": {"type": "integer", "minimum": 1, "maximum": 10000},
    "validation_split": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
    "learning_rate": {"type": "number", "exclusiveMinimum": 0},
    "lr_schedule": {"enum": ["cosine", "constant"]},
    "optimizer": {"enum": ["adam", "sgd", "rmsprop"]},
    "loss": {"enum": ["sparse_categorical_crossentropy", "categorical_crossentropy", "mse"]},
    "from_logits": {"type": "boolean"},
    "seed": {"type": "integer"},
    "stop_at_budget": {"type": "boolean"},
    "distillation": {"type": "number", "minimum": 0, "maximum": 1},
    "distillation_temperature": {"type": "number", "exclusiveMinimum": 0},
}
# Chosen on benchmarks/digits_models.py's digits_cnn, verified untouched on three other
# families (benchmarks/results/retraining.md). distillation 0.5 / temperature 4: the lowest
# summed validation loss at the kept epochs over qat, prune+qat, 4:2, 4:2+qat on digits_cnn
# among weights {0, 0.5, 1} x T {1, 2, 4} (docs/retrain.md).
TRAIN_DEFAULTS = {"epochs": 30, "patience": 5, "validation_split": 0.2, "batch_size": 32,
                  "learning_rate": 1e-4, "lr_schedule": "cosine", "optimizer": "adam",
                  "loss": "sparse_categorical_crossentropy", "from_logits": None, "seed": 0,
                  "distillation": 0.5, "distillation_temperature": 4.0,
                  "stop_at_budget": False}
# Points of top-1 the retrained model may stay below the float model's validation top-1
# when the build config has no `accuracy: {metric: top1, max_drop: ...}`.
DEFAULT_MAX_DROP = 0.5


def options(section: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict:
    """The pass's training options: its section over its own defaults over TRAIN_DEFAULTS.

    `explicit` lists the keys the user set (an explicit `from_logits` wins over the graph)."""
    resolved = dict(TRAIN_DEFAULTS)
    resolved.update(defaults or {})
    given = {k: v for k, v in section.items() if k in TRAIN_OPTIONS_SCHEMA}
    resolved.update(given)
    resolved["explicit"] = sorted(given)
    return resolved


def max_drop_points(build_config: Mapping[str, Any] | None) -> tuple[float, str]:
    """(points, where it came from): the build config's top-1 budget, else the default."""
    budget = (build_config or {}).get("accuracy")
    if isinstance(budget, Mapping) and budget.get("metric", "top1") == "top1" and isinstance(
            budget.get("max_drop"), (int, float)) and not isinstance(budget["max_drop"], bool):
        return float(budget["max_drop"]), "accuracy.max_drop"
    return DEFAULT_MAX_DROP, "default"
