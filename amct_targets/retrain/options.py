"""The retraining options every retraining pass accepts in its config section (no TF)."""
from __future__ import annotations

from typing import Any, Mapping

TRAIN_OPTIONS_SCHEMA = {
    "epochs": {"type": "integer", "minimum": 1, "maximum": 10000},
    "batch_size": {"type": "integer", "minimum": 1},
    "learning_rate": {"type": "number", "exclusiveMinimum": 0},
    "lr_schedule": {"enum": ["cosine", "constant"]},
    "optimizer": {"enum": ["adam", "sgd", "rmsprop"]},
    "loss": {"enum": ["sparse_categorical_crossentropy", "categorical_crossentropy", "mse"]},
    "from_logits": {"type": "boolean"},
    "seed": {"type": "integer"},
}
TRAIN_DEFAULTS = {"epochs": 2, "batch_size": 32, "learning_rate": 1e-4, "lr_schedule": "cosine",
                  "optimizer": "adam",
                  "loss": "sparse_categorical_crossentropy", "from_logits": True, "seed": 0}


def options(section: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict:
    """The pass's training options: its section over its own defaults over TRAIN_DEFAULTS."""
    resolved = dict(TRAIN_DEFAULTS)
    resolved.update(defaults or {})
    resolved.update({k: v for k, v in section.items() if k in TRAIN_OPTIONS_SCHEMA})
    return resolved
