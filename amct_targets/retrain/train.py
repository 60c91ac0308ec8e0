"""The retraining loop shared by qat, prune_channels, sparsify_4of2 and decompose.

Training data: {input name: array, "y": labels} (from `--train F.npz`) or, from Python, a
`tf.data.Dataset` of (inputs, labels). Loss and optimizer come from the pass's build-config
section, or from Python objects. Any `tf.distribute` strategy works: variables are created in
its scope and each step runs through `strategy.run`, so retraining scales to several devices
and workers on TensorFlow's own engine.

With a `Monitor`, every epoch ends with a validation pass: the best epoch's variables (epoch 0
is the compressed model before any step) are kept, and training stops early when the metric
reaches the monitor's target or has not improved for `patience` epochs (retrain/recover.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from amct_targets.errors import ConfigError
from amct_targets.retrain.options import TRAIN_DEFAULTS, TRAIN_OPTIONS_SCHEMA, options

__all__ = ["TRAIN_DEFAULTS", "TRAIN_OPTIONS_SCHEMA", "Monitor", "TrainingData", "fit", "options"]


@dataclass
class TrainingData:
    """What the user gave for retraining."""

    data: Any                      # {input: array, "y": labels} or tf.data.Dataset
    loss: Any = None               # callable(y_true, y_pred) -> per-sample or mean loss
    optimizer: Any = None          # Keras optimizer (cloned per run) or a factory
    strategy: Any = None           # tf.distribute.Strategy
    validation: Any = None         # {input: array, "y": labels} or Dataset; None: split `data`
    # float validation metric per (target, validation source): every retraining pass of a
    # target measures its budget against the model before the first of them
    references: dict = field(default_factory=dict)
    # the same key -> {"model": the model before the first retraining pass (the distillation
    # teacher), "outputs": its outputs on the training part of the split, once computed}
    teachers: dict = field(default_factory=dict)

    def first_inputs(self, model, count: int) -> dict[str, np.ndarray]:
        """Up to `count` input samples (for calibrating initial quantization ranges)."""
        if isinstance(self.data, Mapping):
            return {s.name: np.asarray(self.data[s.name][:count]) for s in model.inputs}
        collected: list = []
        for inputs, _labels in self.data:
            collected.append(inputs)
            if sum(len(np.asarray(c if not isinstance(c, Mapping) else next(iter(c.values()))))
                   for c in collected) >= count:
                break
        if isinstance(collected[0], Mapping):
            return {k: np.concatenate([np.asarray(c[k]) for c in collected])[:count]
                    for k in collected[0]}
        return {model.inputs[0].name: np.concatenate([np.asarray(c) for c in collected])[:count]}


@dataclass
class Monitor:
    """Validation after every epoch: `evaluate(trainable) -> (metric, validation loss)`."""

    evaluate: Callable[[Any], tuple[float, float]]
    higher_is_better: bool
    target: float | None       # stop once the metric reaches it (after at least one epoch)
    patience: int

    def better(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        """Metric first; on a tie (top-1 on a few hundred samples) the lower loss wins."""
        if a[0] != b[0]:
            return (a[0] > b[0]) == self.higher_is_better
        return a[1] < b[1]

    def reached(self, metric: float) -> bool:
        if self.target is None:
            return False
        return metric >= self.target if self.higher_is_better else metric <= self.target


def batched(data, model, batch_size: int, shuffle_seed: int | None = None,
            teacher: np.ndarray | None = None):
    """A tf.data pipeline of (features, labels) batches from arrays or a dataset; with
    `teacher` (outputs row-aligned with the arrays) the labels are (labels, teacher)."""
    import tensorflow as tf

    if isinstance(data, Mapping):
        inputs = tuple(data[s.name] for s in model.inputs)
        features = inputs[0] if len(inputs) == 1 else {s.name: data[s.name]
                                                       for s in model.inputs}
        labels = data["y"] if teacher is None else (data["y"], teacher)
        dataset = tf.data.Dataset.from_tensor_slices((features, labels))
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(data["y"]), seed=shuffle_seed,
                                      reshuffle_each_iteration=True)
        return dataset.batch(batch_size)
    spec = data.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ConfigError("training dataset must yield (inputs, labels) pairs")
    first = spec[0] if not isinstance(spec[0], Mapping) else next(iter(spec[0].values()))
    rank = len(model.inputs[0].shape or ())
    if first.shape.rank is not None and first.shape.rank == rank - 1:
        data = data.batch(batch_size)  # an unbatched dataset of samples
    return data


def _optimizer(training: TrainingData, opts, total_steps: int | None):
    import keras

    given = training.optimizer
    if given is None:
        cls = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
               "rmsprop": keras.optimizers.RMSprop}[opts["optimizer"]]
        rate = opts["learning_rate"]
        if opts["lr_schedule"] == "cosine" and total_steps:
            rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=total_steps)
        return cls(learning_rate=rate)
    if callable(given) and not hasattr(given, "apply_gradients"):
        return given()
    return given.__class__.from_config(given.get_config())  # a fresh copy per retraining


def loss_function(training: TrainingData, opts) -> Callable:
    import tensorflow as tf

    if training.loss is not None:
        return training.loss
    from_logits = bool(opts["from_logits"]) if opts["from_logits"] is not None else True
    if opts["loss"] == "mse":
        return lambda y, p: tf.reduce_mean(tf.square(tf.cast(y, p.dtype) - p), axis=-1)
    if opts["loss"] == "categorical_crossentropy":
        return lambda y, p: tf.keras.losses.categorical_crossentropy(
            y, p, from_logits=from_logits)
    return lambda y, p: tf.keras.losses.sparse_categorical_crossentropy(
        y, p, from_logits=from_logits)


def _state(trainable) -> dict:
    """Every variable whose value defines the trained model (weights, ranges, moving masks)."""
    state = dict(trainable.variables)
    state.update({f"mask:{k}": v for k, v in getattr(trainable, "masks", {}).items()})
    return state


def fit(trainable_factory: Callable, model, training: TrainingData, opts: Mapping[str, Any], *,
        transform=None, progress: Callable[[str], None] = lambda m: None,
        every_n_steps: tuple[int, Callable] | None = None, data: Any = None,
        monitor: Monitor | None = None, distill=None):
    """Build the trainable view in the strategy's scope and train it.

    Returns (trainable, history): history has "loss" (mean per epoch run), "steps", "seconds",
    and with a monitor "val_metric" and "val_loss" per epoch from 0, "best_epoch",
    "stopped" (why). The trainable holds the best epoch's values. `data` overrides
    `training.data` (the training part of a split). `every_n_steps=(n, fn)` calls
    fn(trainable) every n steps (mask updates). `distill` (retrain/distill.py) mixes the
    label loss with the soft targets of the float model.
    """
    import tensorflow as tf

    strategy = training.strategy or tf.distribute.get_strategy()
    tf.random.set_seed(opts["seed"])
    from amct_targets.retrain.distill import mixed_loss

    source = training.data if data is None else data
    precomputed = distill is not None and distill.outputs is not None and isinstance(
        source, Mapping)
    local = batched(source, model, opts["batch_size"], shuffle_seed=opts["seed"],
                    teacher=distill.outputs if precomputed else None)
    batches = int(local.cardinality())
    total_steps = batches * opts["epochs"] if batches > 0 else None
    with strategy.scope():
        trainable = trainable_factory()
        optimizer = _optimizer(training, opts, total_steps)
        optimizer.build(trainable.trainable)
    loss_fn = loss_function(training, opts)
    replicas = strategy.num_replicas_in_sync
    mixed = mixed_loss(loss_fn, distill) if distill is not None else None
    teacher_forward = None if mixed is None or precomputed else distill.teacher_forward()

    def step_loss(labels, outputs, features):
        if mixed is None:
            return loss_fn(labels, outputs)
        if teacher_forward is None:
            labels, teacher = labels
        else:
            teacher = tf.stop_gradient(teacher_forward(features))
        return mixed(labels, outputs, teacher)

    def replica_step(features, labels):
        outputs, reads = trainable.forward(features, transform)
        per_sample = step_loss(labels, outputs[0], features)
        loss = tf.reduce_mean(per_sample) / replicas
        grads = tf.gradients(loss, reads)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, trainable.trainable)
                                   if g is not None])
        return loss

    @tf.function
    def train_step(features, labels):
        per_replica = strategy.run(replica_step, args=(features, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    dataset = strategy.experimental_distribute_dataset(local)
    started = time.perf_counter()
    history: dict[str, Any] = {"loss": [], "steps": 0}
    state = _state(trainable)
    best = None
    if monitor is not None:
        best = (monitor.evaluate(trainable), 0, {k: v.numpy() for k, v in state.items()})
        history.update(val_metric=[best[0][0]], val_loss=[best[0][1]], best_epoch=0,
                       stopped=f"epochs: reached the maximum of {opts['epochs']}")
        progress(f"before retraining: validation {best[0][0]:.4f}")
    steps = 0
    for epoch in range(1, opts["epochs"] + 1):
        losses = []
        for features, labels in dataset:
            losses.append(float(train_step(features, labels)))
            steps += 1
            if every_n_steps and steps % every_n_steps[0] == 0:
                every_n_steps[1](trainable)
            if steps % 20 == 0:
                progress(f"epoch {epoch}/{opts['epochs']} step {steps} loss {losses[-1]:.4f}")
        if not losses:
            raise ConfigError("the training data yielded no batch")
        history["loss"].append(float(np.mean(losses)))
        history["steps"] = steps
        if monitor is None:
            progress(f"epoch {epoch}/{opts['epochs']} done, mean loss {history['loss'][-1]:.4f}")
            continue
        measured = monitor.evaluate(trainable)
        history["val_metric"].append(measured[0])
        history["val_loss"].append(measured[1])
        progress(f"epoch {epoch}/{opts['epochs']} done, mean loss {history['loss'][-1]:.4f}, "
                 f"validation {measured[0]:.4f}")
        if monitor.better(measured, best[0]):
            best = (measured, epoch, {k: v.numpy() for k, v in state.items()})
            history["best_epoch"] = epoch
        if monitor.reached(measured[0]):
            history["stopped"] = "the validation metric is back within the budget"
            break
        if epoch - best[1] >= monitor.patience:
            history["stopped"] = f"no improvement for {monitor.patience} epochs (patience)"
            break
    if best is not None and best[1] != len(history["loss"]):
        for key, variable in state.items():
            variable.assign(best[2][key])
    history["seconds"] = round(time.perf_counter() - started, 3)
    return trainable, history
