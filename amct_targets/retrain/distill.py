"""Knowledge distillation from the float model (Hinton et al. 2015) for every retraining pass.

The teacher is the target's model before its first retraining pass (the float model the
accuracy budget is measured against); the student is the compressed trainable view. Per
sample the loss is

    (1 - distillation) * label loss + distillation * T^2 * KL(softmax(t/T) || softmax(s/T))

with t, s the teacher's and student's logits (log-probabilities when the output is a Softmax:
the same distribution, so the same loss) and T `distillation_temperature`. The T^2 factor keeps
the gradient scale of the soft term independent of T (Hinton et al.; Keras'
`keras.distillation.LogitsDistillation` uses the same KL at T = 3 by default). NNCF and
ModelOpt recommend distillation for compression-aware training; here it applies to classifiers
(top-1 metric) only.

The teacher's outputs on the training arrays are computed once before training (one forward
pass), so a training step costs what it cost without distillation; a `tf.data.Dataset` gets
them per step instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

PROBABILITY_FLOOR = 1e-7


@dataclass
class Distillation:
    """What the training step needs to add the soft-target term."""

    weight: float               # `distillation`: share of the soft-target term in the loss
    temperature: float          # `distillation_temperature`
    probabilities: bool         # the outputs are probabilities (a Softmax), not logits
    teacher: Any                # the teacher's amct Model
    outputs: np.ndarray | None = None   # teacher outputs on the training arrays, row-aligned

    def teacher_forward(self):
        """A callable features -> teacher outputs (for datasets, inside the training step)."""
        from amct_targets.retrain.trainable import TrainableGraph

        graph = TrainableGraph(self.teacher, [])
        return lambda features: graph.forward(features)[0][0]


def _as_logits(outputs, probabilities: bool):
    import tensorflow as tf

    if not probabilities:
        return outputs
    return tf.math.log(tf.clip_by_value(outputs, PROBABILITY_FLOOR, 1.0))


def soft_target_loss(teacher, student, temperature: float, probabilities: bool):
    """Per-sample T^2 * KL(softmax(teacher/T) || softmax(student/T)) (TF tensors)."""
    import tensorflow as tf

    t = _as_logits(tf.cast(teacher, student.dtype), probabilities) / temperature
    s = _as_logits(student, probabilities) / temperature
    log_p = tf.nn.log_softmax(t, axis=-1)
    log_q = tf.nn.log_softmax(s, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)
    return (temperature ** 2) * tf.reshape(kl, [-1])


def mixed_loss(label_loss, distillation: Distillation):
    """loss(labels, outputs, teacher outputs) -> per-sample mixed loss."""
    import tensorflow as tf

    weight = float(distillation.weight)

    def loss(labels, outputs, teacher):
        hard = tf.reshape(label_loss(labels, outputs), [-1])
        soft = soft_target_loss(teacher, outputs, distillation.temperature,
                                distillation.probabilities)
        return (1.0 - weight) * hard + weight * soft

    return loss


def teacher_outputs(teacher_model, data: Mapping[str, np.ndarray], batch_size: int = 256
                    ) -> np.ndarray:
    """The teacher's first output on the arrays `data` ({input: array, ...}), in row order."""
    import tensorflow as tf

    from amct_targets.retrain.trainable import TrainableGraph

    graph = TrainableGraph(teacher_model, [])
    names = [s.name for s in teacher_model.inputs]

    @tf.function
    def run(features):
        return graph.forward(features)[0][0]

    count = len(np.asarray(data[names[0]]))
    size = min(batch_size, count)
    chunks = []
    for start in range(0, count, size):
        # every chunk padded to `size` rows: one trace of the imported graph
        feed = {}
        for n in names:
            rows = np.asarray(data[n][start:start + size])
            pad = size - len(rows)
            feed[n] = tf.constant(np.concatenate([rows, np.repeat(rows[-1:], pad, 0)])
                                  if pad else rows)
        out = run(feed if len(names) > 1 else feed[names[0]]).numpy()
        chunks.append(out[:size - pad] if pad else out)
    return np.concatenate(chunks).astype(np.float32)
