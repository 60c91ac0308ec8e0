"""The build's accuracy inputs, checked before any work: evaluation data (`--eval`), the
`accuracy:` budget of the build config, the user's evaluator object; and calibration data
recorded from the evaluator's `calibration(graph, outputs)` when none is given."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from amct_targets.accuracy.budget import Budget, check_evaluator
from amct_targets.accuracy.evaluate import load_eval
from amct_targets.accuracy.scoring import Scorer
from amct_targets.errors import ConfigError, describe
from amct_targets.graph.model import Model


def add_accuracy_inputs(session, model: Model, config: dict, where: str, data: dict,
                        evaluation: Any, evaluator: Any, calib: Any, *,
                        planning: bool = False) -> None:
    """Fill `data["evaluation"]` (EvalData) and `data["scorer"]` (when a budget or an
    evaluator is given); a ConfigError for a budget that cannot be measured. `planning`:
    only validate the budget (a plan runs nothing)."""
    budget = Budget.from_config(config.get("accuracy"), where)
    if planning:
        return
    if evaluation is not None:
        label = str(evaluation) if isinstance(evaluation, (str, os.PathLike)) \
            else "evaluation data"
        data["evaluation"] = load_eval(evaluation, model, label)
    if evaluator is not None:
        check_evaluator(evaluator)
        if calib is None:
            data["calibration"] = record_calibration(evaluator, model, session.plugins.ops)
        data["scorer"] = Scorer(model, session.plugins.ops, evaluator=evaluator)
        return
    if budget is None:
        return
    if "evaluation" not in data and "training" in data and budget.needs_labels:
        return   # the budget governs retraining alone, on its validation split of --train
    if "evaluation" not in data:
        raise ConfigError(f"{where}: accuracy: the budget ({budget.describe()}) is measured on "
                          "evaluation data; give --eval F.npz (inputs keyed like --calib, "
                          "labels under 'y') or at.build(..., eval=...)")
    if budget.needs_labels and data["evaluation"].labels is None:
        raise ConfigError(f"{data['evaluation'].where}: the evaluation data has no labels, and "
                          f"{where}: accuracy uses metric top1; store the labels under key "
                          "'y', or budget top1_agreement / cosine / sqnr_db with min")
    data["scorer"] = Scorer(model, session.plugins.ops, budget=budget,
                            data=data["evaluation"])


def record_calibration(evaluator, model: Model, ops) -> dict[str, np.ndarray]:
    """Calibration data from `evaluator.calibration(graph, outputs)`: the float graph with
    each input recorded as it is fed (AMCT runs its calibration batches the same way)."""
    import tensorflow as tf

    from amct_targets.graph.run import expand_custom_ops

    graph_def = expand_custom_ops(model.copy_graph_def(), ops, model.source)
    # The user feeds the inputs by their names: those go to new placeholders whose values are
    # recorded, then fed into the model's own (renamed) placeholders through input_map.
    renamed = {name: f"{name}/amct_fed" for name in model.input_names}
    for node in graph_def.node:
        if node.name in renamed:
            node.name = renamed[node.name]
        for i, inp in enumerate(node.input):
            base, _, port = inp.lstrip("^").partition(":")
            if base in renamed:
                node.input[i] = ("^" if inp.startswith("^") else "") + renamed[base] + \
                    (f":{port}" if port else "")
    fed: dict[str, list[np.ndarray]] = {name: [] for name in model.input_names}
    graph = tf.Graph()
    with graph.as_default():
        mapping = {}
        for spec in model.inputs:
            shape = [None] + list(spec.shape[1:]) if spec.shape else None
            placeholder = tf.compat.v1.placeholder(spec.dtype, shape, name=spec.name)

            def keep(value, name=spec.name):
                fed[name].append(np.array(value))
                return value

            recorded = tf.numpy_function(keep, [placeholder], placeholder.dtype)
            recorded.set_shape(placeholder.shape)
            mapping[f"{renamed[spec.name]}:0"] = recorded
        tf.compat.v1.import_graph_def(graph_def, input_map=mapping, name="")
    outputs = list(model.outputs)
    try:
        evaluator.calibration(graph, outputs)
    except NotImplementedError as exc:
        raise ConfigError(str(exc) or "the evaluator has no calibration(); give calibration "
                          "data (--calib / calib=)") from None
    except Exception as exc:  # noqa: BLE001 - the user's code: name it
        raise ConfigError(f"evaluator {type(evaluator).__name__}.calibration failed: "
                          f"{describe(exc)}") from None
    if not all(fed.values()):
        raise ConfigError(f"evaluator {type(evaluator).__name__}.calibration fed no data to "
                          f"the inputs {[n for n, v in fed.items() if not v]}; run the graph "
                          "on calibration batches (session.run(outputs, feed_dict=...))")
    return {name: np.concatenate(parts) for name, parts in fed.items()}
