"""The retraining loop shared by qat, prune_channels, sparsify_4of2 and decompose.

Training data: {input name: array, "y": labels} (from `--train F.npz`) or, from Python, a
`tf.data.Dataset` of (inputs, labels). Loss and optimizer come from the pass's build-config
section, or from Python objects. Any `tf.distribute` strategy works: variables are created in
its scope and each step runs through `strategy.run`, so retraining scales to several devices
and workers on TensorFlow's own engine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from amct_targets.errors import ConfigError
from amct_targets.retrain.options import TRAIN_DEFAULTS, TRAIN_OPTIONS_SCHEMA, options

__all__ = ["TRAIN_DEFAULTS", "TRAIN_OPTIONS_SCHEMA", "TrainingData", "fit", "options"]

@dataclass
class TrainingData:
    """What the user gave for retraining."""

    data: Any                      # {input: array, "y": labels} or tf.data.Dataset
    loss: Any = None               # callable(y_true, y_pred) -> per-sample or mean loss
    optimizer: Any = None          # Keras optimizer (cloned per run) or a factory
    strategy: Any = None           # tf.distribute.Strategy

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


def _dataset(training: TrainingData, model, opts):
    import tensorflow as tf

    if isinstance(training.data, Mapping):
        inputs = tuple(training.data[s.name] for s in model.inputs)
        features = inputs[0] if len(inputs) == 1 else {s.name: training.data[s.name]
                                                       for s in model.inputs}
        count = len(training.data["y"])
        return (tf.data.Dataset.from_tensor_slices((features, training.data["y"]))
                .shuffle(count, seed=opts["seed"], reshuffle_each_iteration=True)
                .batch(opts["batch_size"]))
    dataset = training.data
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ConfigError("training dataset must yield (inputs, labels) pairs")
    first = spec[0] if not isinstance(spec[0], Mapping) else next(iter(spec[0].values()))
    rank = len(model.inputs[0].shape or ())
    if first.shape.rank is not None and first.shape.rank == rank - 1:
        dataset = dataset.batch(opts["batch_size"])  # an unbatched dataset of samples
    return dataset


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


def _loss(training: TrainingData, opts) -> Callable:
    import tensorflow as tf

    if training.loss is not None:
        return training.loss
    if opts["loss"] == "mse":
        return lambda y, p: tf.reduce_mean(tf.square(tf.cast(y, p.dtype) - p), axis=-1)
    if opts["loss"] == "categorical_crossentropy":
        return lambda y, p: tf.keras.losses.categorical_crossentropy(
            y, p, from_logits=opts["from_logits"])
    return lambda y, p: tf.keras.losses.sparse_categorical_crossentropy(
        y, p, from_logits=opts["from_logits"])


def fit(trainable_factory: Callable, model, training: TrainingData, opts: Mapping[str, Any], *,
        transform=None, progress: Callable[[str], None] = lambda m: None,
        every_n_steps: tuple[int, Callable] | None = None):
    """Build the trainable view in the strategy's scope and train it.

    Returns (trainable, history) with history = {"loss": per-epoch mean, "steps", "seconds"}.
    `every_n_steps=(n, fn)` calls fn(trainable) every n steps (mask updates).
    """
    import tensorflow as tf

    strategy = training.strategy or tf.distribute.get_strategy()
    tf.random.set_seed(opts["seed"])
    local = _dataset(training, model, opts)
    batches = int(local.cardinality())
    total_steps = batches * opts["epochs"] if batches > 0 else None
    with strategy.scope():
        trainable = trainable_factory()
        optimizer = _optimizer(training, opts, total_steps)
        optimizer.build(trainable.trainable)
    loss_fn = _loss(training, opts)
    replicas = strategy.num_replicas_in_sync

    def replica_step(features, labels):
        outputs, reads = trainable.forward(features, transform)
        per_sample = loss_fn(labels, outputs[0])
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
    history, steps, started = [], 0, time.perf_counter()
    for epoch in range(opts["epochs"]):
        losses = []
        for features, labels in dataset:
            losses.append(float(train_step(features, labels)))
            steps += 1
            if every_n_steps and steps % every_n_steps[0] == 0:
                every_n_steps[1](trainable)
            if steps % 20 == 0:
                progress(f"epoch {epoch + 1}/{opts['epochs']} step {steps} loss {losses[-1]:.4f}")
        if not losses:
            raise ConfigError("the training data yielded no batch")
        history.append(float(np.mean(losses)))
        progress(f"epoch {epoch + 1}/{opts['epochs']} done, mean loss {history[-1]:.4f}")
    return trainable, {"loss": history, "steps": steps,
                       "seconds": round(time.perf_counter() - started, 3)}
