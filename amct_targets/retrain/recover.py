"""Retraining that recovers: what every retraining pass calls instead of a bare `fit`.

1. `from_logits` from the graph (an explicit option wins; a contradiction is a warning).
2. A validation set: the one passed in, else a deterministic split of the training data.
3. The budget: the float model's validation top-1 (measured once per target, on the input of
   the first retraining pass) minus `accuracy.max_drop` points of the build config, else
   0.5. Training stops after `patience` epochs without improvement (metric, then loss), or
   after `epochs`, or with `stop_at_budget` once the metric is back within the budget; the
   best epoch is kept. A kept epoch outside the budget is a warning.
4. When every trained epoch is worse than the compressed model before training by more than
   the budget, retraining did harm: a RetrainError names the pass (exit 1, no output).
5. The report: metrics["history"] (per epoch: loss, validation metric; the chosen epoch),
   epochs run, the validation source and the `from_logits` decision.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from amct_targets.errors import RetrainError
from amct_targets.retrain.options import max_drop_points, options
from amct_targets.retrain.train import Monitor, batched, fit, loss_function
from amct_targets.retrain.trainable import TrainableGraph
from amct_targets.retrain.validation import (LABEL_KEY, is_classification,
                                             resolve_from_logits, split_training, top1)

EVAL_BATCH = 256


def _output_shape(model):
    from amct_targets.data import output_shape

    try:
        return output_shape(model)
    except Exception:  # noqa: BLE001 - an unknown shape only means "cannot tell"
        return None


def _labels_of(validation) -> np.ndarray | None:
    return np.asarray(validation[LABEL_KEY]) if isinstance(validation, Mapping) else None


def make_evaluator(model, validation, training, opts, classification: bool, transform=None
                   ) -> Callable[[Any], tuple[float, float]]:
    """evaluate(trainable) -> (top-1 or validation loss, validation loss) on `validation`."""
    import tensorflow as tf

    loss_fn = loss_function(training, opts)
    pipeline = batched(validation, model, EVAL_BATCH)
    functions: dict = {}

    def evaluate(trainable) -> tuple[float, float]:
        if id(trainable) not in functions:
            @tf.function
            def step(features, labels):
                outputs = trainable.forward(features, transform)[0][0]
                return outputs, tf.reshape(loss_fn(labels, outputs), [-1])
            functions[id(trainable)] = step
        outputs, losses, labels = [], [], []
        for features, batch_labels in pipeline:
            out, loss = functions[id(trainable)](features, batch_labels)
            outputs.append(out.numpy())
            losses.append(loss.numpy())
            labels.append(np.asarray(batch_labels))
        loss = float(np.mean(np.concatenate(losses)))
        if not classification:
            return loss, loss
        return top1(np.concatenate(outputs), np.concatenate(labels)), loss

    return evaluate


def retrain(ctx, pass_name: str, factory: Callable, model, defaults: Mapping[str, Any], *,
            transform=None, every_n_steps=None, reference_model=None, what: str = "retraining"):
    """Train the trainable view `factory()` builds over `model` and keep its best epoch.

    `pass_name` names the pass in errors. `reference_model`: the model before this pass's compression (default `model`): the float
    reference when this is the target's first retraining pass. Returns (trainable, history)
    and fills ctx.report (metrics, notes, warnings).
    """
    opts = options(ctx.config, defaults)
    where = f"passes.{pass_name}"
    from_logits, logits_note, contradiction = resolve_from_logits(model, opts)
    opts["from_logits"] = from_logits
    training = ctx.training
    if training.loss is not None:
        logits_note = "loss given in Python; from_logits unused"
        contradiction = None
    split = split_training(training.data, training.validation, opts["validation_split"],
                           opts["seed"], opts["batch_size"])
    monitor = None
    record: dict[str, Any] = {"validation": split.source, "validation_samples": split.samples}
    start = reference_model if reference_model is not None else model
    key = (getattr(ctx.profile, "name", ""), split.source)
    # the float model: the budget's reference and the distillation teacher
    teacher = training.teachers.setdefault(key, {"model": start, "outputs": None})
    labels = _labels_of(split.validation if split.validation is not None else split.train)
    classification = opts["loss"] != "mse" and is_classification(labels, _output_shape(model))
    if split.validation is not None:
        name = "top1" if classification else "val_loss"
        evaluate_plain = make_evaluator(model, split.validation, training, opts,
                                        classification)
        evaluate = make_evaluator(model, split.validation, training, opts, classification,
                                  transform)
        if key not in training.references:
            training.references[key] = evaluate_plain(TrainableGraph(teacher["model"], []))[0]
        reference = training.references[key]
        points, budget_source = max_drop_points(ctx.build_config)
        target = reference - points / 100.0 if classification else reference
        # stop_at_budget: stop as soon as the metric is back within the budget (a validation
        # split the float model was trained on meets it after one epoch, before the loss
        # has converged); by default only patience stops training early
        monitor = Monitor(evaluate, classification,
                          target if opts["stop_at_budget"] else None, opts["patience"])
        record.update(val_metric_name=name, reference_metric=round(reference, 6),
                      target_metric=round(target, 6), budget_points=points if classification
                      else None, budget_source=budget_source)
    distill, distill_seconds = _distillation(opts, classification, teacher, split.train)
    ctx.progress(f"{what}: at most {opts['epochs']} epochs; {logits_note}")
    trainable, history = fit(factory, model, training, opts, transform=transform,
                             progress=ctx.progress, every_n_steps=every_n_steps,
                             data=split.train, monitor=monitor, distill=distill)
    history["seconds"] = round(history["seconds"] + distill_seconds, 3)
    ctx.report.metrics["distillation"] = _distillation_record(distill, opts, classification,
                                                              distill_seconds)
    epochs_run = len(history["loss"])
    if monitor is not None:
        _refuse_harm(history, record, where, what, monitor, opts)
    _report(ctx, history, record, epochs_run, opts, logits_note, contradiction, split)
    return trainable, history


def _distillation(opts, classification: bool, teacher: dict, train_data):
    """(Distillation or None, seconds spent on the teacher's outputs). The outputs on the
    training part are computed once per target and split, and reused by its later passes."""
    import time

    from amct_targets.retrain.distill import Distillation, teacher_outputs

    if not classification or not opts["distillation"]:
        return None, 0.0
    distill = Distillation(float(opts["distillation"]), float(opts["distillation_temperature"]),
                           not opts["from_logits"], teacher["model"])
    started = time.perf_counter()
    if isinstance(train_data, Mapping):
        if teacher["outputs"] is None:
            teacher["outputs"] = teacher_outputs(teacher["model"], train_data)
        distill.outputs = teacher["outputs"]
    return distill, time.perf_counter() - started


def _distillation_record(distill, opts, classification: bool, seconds: float) -> dict:
    if distill is None:
        why = "not a classifier (top-1 metric)" if not classification else "distillation: 0"
        return {"weight": 0.0, "reason": why}
    return {"weight": distill.weight, "temperature": distill.temperature,
            "teacher": "the model before the target's first retraining pass (float)",
            "teacher_outputs": "precomputed" if distill.outputs is not None else "per step",
            "teacher_seconds": round(seconds, 3)}


def _refuse_harm(history, record, where, what, monitor: Monitor, opts) -> None:
    start, trained = history["val_metric"][0], history["val_metric"][1:]
    best = max(trained) if monitor.higher_is_better else min(trained)
    if record["val_metric_name"] == "top1":
        # Harm, not noise: worse by more than the budget and than two standard errors of
        # top-1 on this many validation samples (2 of 270 samples is 0.74 points).
        samples = max(1, record["validation_samples"] or 1)
        noise = 2.0 * np.sqrt(max(start * (1.0 - start), 1.0 / samples) / samples)
        worse = best < start - max(record["budget_points"] / 100.0, noise)
        text = f"validation top-1 {100 * start:.2f}% before, at best {100 * best:.2f}% after"
    else:
        worse = best > start
        text = f"validation loss {start:.5g} before, at best {best:.5g} after"
    if worse:
        raise RetrainError(
            f"{where}: {what} made the model worse than where it started ({text}, "
            f"{len(trained)} epoch(s), learning_rate {opts['learning_rate']:g}, from_logits "
            f"{str(opts['from_logits']).lower()}); check the loss (from_logits), lower "
            "learning_rate, or check that the labels match the model's output")


def _report(ctx, history, record, epochs_run, opts, logits_note, contradiction, split) -> None:
    metrics = ctx.report.metrics
    metrics.update(train_loss=[round(x, 5) for x in history["loss"]],
                   train_steps=history["steps"], train_seconds=history["seconds"],
                   epochs_run=epochs_run, epochs_max=opts["epochs"],
                   from_logits=opts["from_logits"])
    ctx.report.notes.append(logits_note)
    if contradiction:
        ctx.report.warnings.append(contradiction)
    if "val_metric" not in history:
        ctx.report.notes.append(f"no validation set ({split.source}): trained "
                                f"{epochs_run} epoch(s), the last kept")
        metrics["history"] = {"epoch": list(range(1, epochs_run + 1)),
                              "loss": metrics["train_loss"], "epochs_run": epochs_run}
        return
    best = history["best_epoch"]
    metrics["chosen_epoch"] = best
    metrics["history"] = {
        "epoch": list(range(0, epochs_run + 1)),
        "loss": [None] + metrics["train_loss"],
        "val_metric": [round(v, 6) for v in history["val_metric"]],
        "val_loss": [round(v, 6) for v in history["val_loss"]],
        "best_epoch": best, "epochs_run": epochs_run, "stopped": history["stopped"],
        **record}
    chosen = history["val_metric"][best]
    shown = (lambda v: f"{100 * v:.2f}%") if record["val_metric_name"] == "top1" else (
        lambda v: f"{v:.5g}")
    ctx.report.notes.append(
        f"validation on {split.source}: {record['val_metric_name']} {shown(history['val_metric'][0])}"
        f" before retraining, {shown(chosen)} at epoch {best} (kept) of {epochs_run} run; "
        f"float model {shown(record['reference_metric'])}; stopped: {history['stopped']}")
    if not monitor_met(chosen, record):
        ctx.report.warnings.append(
            f"retraining did not bring the validation {record['val_metric_name']} back within "
            f"the budget ({shown(record['target_metric'])}, {record['budget_source']}): "
            f"{shown(chosen)} after {epochs_run} epoch(s); raise epochs or learning_rate")


def monitor_met(chosen: float, record) -> bool:
    if record["val_metric_name"] == "top1":
        return chosen >= record["target_metric"] - 1e-9
    return chosen <= record["target_metric"] + 1e-12
