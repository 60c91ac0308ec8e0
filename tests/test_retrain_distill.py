"""Retraining that recovers, round 2: distillation from the float model, batch-norm
re-estimation before 4:2 retraining, QAT that starts from (and keeps, when training cannot
beat it) the post-training quantization result."""
from __future__ import annotations

import numpy as np
import pytest

import amct_targets as at
from amct_targets.graph.fold_bn import fold_batch_norm
from amct_targets.graph.layout import Layer, resolve_layer
from amct_targets.graph.load import load_model
from amct_targets.graph.pattern import GraphIndex
from amct_targets.hooks.manager import default_plugins
from amct_targets.retrain.distill import (Distillation, mixed_loss, soft_target_loss,
                                          teacher_outputs)


def _kl(teacher_logits, student_logits, temperature):
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    p = softmax(np.asarray(teacher_logits, np.float64) / temperature)
    q = softmax(np.asarray(student_logits, np.float64) / temperature)
    return temperature ** 2 * np.sum(p * np.log(p / q), axis=-1)


def test_soft_target_loss_is_t2_scaled_kl_and_equal_for_logits_and_probabilities():
    import tensorflow as tf

    teacher = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], np.float32)
    student = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    for temperature in (1.0, 4.0):
        got = soft_target_loss(tf.constant(teacher), tf.constant(student), temperature,
                               False).numpy()
        np.testing.assert_allclose(got, _kl(teacher, student, temperature), rtol=1e-4)
    # [2, 0, -1] vs uniform at T = 1: sum p log(3p), p = softmax([2, 0, -1]): 0.574346 nats
    assert abs(float(soft_target_loss(tf.constant(teacher), tf.constant(student), 1.0,
                                      False)[0]) - 0.574346) < 1e-5
    # a Softmax output: the same distributions, so the same loss
    probs = tf.nn.softmax(tf.constant(teacher)), tf.nn.softmax(tf.constant(student))
    np.testing.assert_allclose(soft_target_loss(*probs, 1.0, True).numpy(),
                               _kl(teacher, student, 1.0), rtol=1e-4)
    # identical outputs: no soft-target loss
    assert np.allclose(soft_target_loss(tf.constant(teacher), tf.constant(teacher), 2.0,
                                        False).numpy(), 0.0, atol=1e-6)


def test_mixed_loss_weights_labels_and_soft_targets():
    import tensorflow as tf

    teacher = tf.constant([[3.0, 0.0, 0.0]])
    student = tf.constant([[0.0, 1.0, 0.0]])
    labels = tf.constant([0])

    def label_loss(y, p):
        return tf.keras.losses.sparse_categorical_crossentropy(y, p, from_logits=True)

    hard = float(label_loss(labels, student)[0])          # -log softmax([0,1,0])[0]
    assert abs(hard - (np.log(2 + np.e) - 0.0)) < 1e-5
    soft = float(_kl([[3.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], 1.0)[0])
    for weight, expected in ((0.0, hard), (1.0, soft), (0.5, 0.5 * hard + 0.5 * soft)):
        mix = mixed_loss(label_loss, Distillation(weight, 1.0, False, None))
        assert abs(float(mix(labels, student, teacher)[0]) - expected) < 1e-5


@pytest.fixture(scope="module")
def bn_model():
    """Conv+BN+ReLU, Conv+BN+ReLU, Dense on digits, trained briefly with fixed seeds."""
    import keras

    from amct_targets.demo.make_demo import digits_split

    x_train, y_train, x_test, y_test = digits_split()
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(24, 3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0)
    return model, (x_train, y_train, x_test, y_test)


def test_teacher_outputs_match_the_float_model_across_padded_chunks(bn_model):
    keras_model, (x_train, _, _, _) = bn_model
    model = load_model(keras_model)
    x = x_train[:300]                              # 256 + a padded chunk of 44
    got = teacher_outputs(model, {"image": x}, batch_size=256)
    assert got.shape == (300, 10)
    np.testing.assert_allclose(got, keras_model.predict(x, verbose=0), atol=1e-4)


def test_bn_reestimation_restores_float_channel_statistics_and_keeps_zeros(bn_model):
    """After 4:2 masks, every BN-folded layer's post-bias output has the float model's
    per-channel mean and std again (on the samples used), the classifier head is left
    alone, and the 4:2 zeros stay zeros."""
    from amct_targets.pruning.sparse_4of2 import groups_over_limit, mask_4of2
    from amct_targets.retrain.renorm import (eligible, float_statistics, reestimate,
                                             with_consts)

    keras_model, (x_train, _, _, _) = bn_model
    ops = default_plugins().ops
    folded, records, _ = fold_batch_norm(load_model(keras_model), layouts=ops.layouts)
    assert len(records) == 2
    index = GraphIndex(folded.graph_def)
    layers = [found for node in folded.graph_def.node
              if isinstance(found := resolve_layer(index, node, ops.layouts), Layer)]
    assert [layer.op for layer in layers] == ["Conv2D", "Conv2D", "MatMul"]
    masks = {layer.weight: mask_4of2(index.const_value(index.nodes[layer.weight]),
                                     layer.cin_axis) for layer in layers}
    masked = with_consts(folded, {w: index.const_value(index.nodes[w]) * m
                                  for w, m in masks.items()})
    samples = {"image": x_train[:256]}
    values, record = reestimate(folded, masked, layers, samples, ops)
    assert record["layers"] == 2 and record["samples"] == 256   # the Dense head left alone
    targets = eligible(masked, layers)
    assert [t[0].op for t in targets] == ["Conv2D", "Conv2D"]
    fixed = with_consts(masked, values)
    want = float_statistics(folded, targets, samples, ops)
    before = float_statistics(masked, targets, samples, ops)
    got = float_statistics(fixed, targets, samples, ops)
    for _layer, out, _bias in targets:
        np.testing.assert_allclose(got[out][0], want[out][0], atol=2e-3)
        np.testing.assert_allclose(got[out][1], want[out][1], rtol=2e-3, atol=2e-3)
    # the second conv's statistics were off before (its input and its weights changed)
    second = targets[1][1]
    assert np.max(np.abs(before[second][1] - want[second][1])) > 0.05
    fixed_index = GraphIndex(fixed.graph_def)
    for layer in layers[:2]:
        weight = fixed_index.const_value(fixed_index.nodes[layer.weight])
        assert groups_over_limit(weight, layer.cin_axis) == 0
        assert np.count_nonzero(weight) == np.count_nonzero(masks[layer.weight] * weight)


@pytest.mark.slow
def test_4of2_starts_from_reestimated_statistics_and_keeps_exact_2_of_4(tmp_path, bn_model):
    keras_model, (x_train, y_train, x_test, y_test) = bn_model
    report = at.build(keras_model, "ascend910b", train={"image": x_train, "y": y_train},
                      config={"passes": {"sparsify_4of2": {"enabled": True, "epochs": 2}}},
                      output_dir=tmp_path)["ascend910b"]
    entry = next(p for p in report["passes"] if p["name"] == "sparsify_4of2")
    metrics = entry["metrics"]
    assert metrics["bn_reestimation"]["layers"] == 2
    assert metrics["groups_over_2_nonzeros"] == 0
    assert metrics["distillation"]["weight"] == 0.5
    assert metrics["distillation"]["teacher_outputs"] == "precomputed"
    # by default only patience (or the maximum) stops training, not the budget
    history = metrics["history"]
    assert history["stopped"] in ("epochs: reached the maximum of 2",
                                  "no improvement for 5 epochs (patience)")
    assert history["epochs_run"] == 2
    sparse = [layer for layer in entry["layers"] if layer.get("status") == "4:2"]
    assert len(sparse) == 3 and all(layer["groups_over_2_nonzeros"] == 0 for layer in sparse)
    # Cin 16 and 24*64 (the Dense): exactly half the weights are zeros; Cin 1: none
    assert [layer["zeros"] * 2 == layer["weights"] for layer in sparse] == [False, True, True]


@pytest.mark.slow
def test_qat_that_cannot_beat_ptq_emits_exactly_the_ptq_model(tmp_path, bn_model):
    """A learning rate that ruins every trained epoch (and a budget wide enough not to call
    it harm): QAT keeps its start, which is post-training quantization on the same
    calibration data, so the emitted .pb is the PTQ .pb."""
    keras_model, (x_train, y_train, x_test, y_test) = bn_model
    calib = x_train[:128]
    ptq = at.build(keras_model, "ascend310", calib=calib, output_dir=tmp_path / "ptq")
    qat = at.build(keras_model, "ascend310", calib=calib,
                   train={"image": x_train, "y": y_train},
                   config={"accuracy": {"metric": "top1", "max_drop": 100},
                           "passes": {"qat": {"enabled": True, "learning_rate": 1.0,
                                              "epochs": 1}}},
                   output_dir=tmp_path / "qat")
    entry = next(p for p in qat["ascend310"]["passes"] if p["name"] == "qat")
    start = entry["metrics"]["qat_start"]
    assert start["ranges"] == "post-training quantization on the calibration data"
    assert start["kept"].startswith("start") and entry["metrics"]["chosen_epoch"] == 0
    assert start["kept_val_metric"] == start["start_val_metric"]
    ptq_pb = tmp_path / "ptq" / "ascend310" / ptq["ascend310"]["artifacts"]["pb"]
    qat_pb = tmp_path / "qat" / "ascend310" / qat["ascend310"]["artifacts"]["pb"]
    np.testing.assert_array_equal(at.load_simulation(qat_pb)(x_test),
                                  at.load_simulation(ptq_pb)(x_test))


def test_bn_reestimation_keeps_a_pruned_channel_at_zero(bn_model):
    """A filter whose bias is masked out (pruning) is re-normalised to zero, not to the
    float channel's statistics; the other channels still get the float statistics."""
    from amct_targets.retrain.renorm import eligible, float_statistics, reestimate, with_consts

    keras_model, (x_train, _, _, _) = bn_model
    ops = default_plugins().ops
    folded, _, _ = fold_batch_norm(load_model(keras_model), layouts=ops.layouts)
    index = GraphIndex(folded.graph_def)
    layers = [found for node in folded.graph_def.node
              if isinstance(found := resolve_layer(index, node, ops.layouts), Layer)]
    (first, out, bias), (second, out2, _) = eligible(folded, layers)
    weight = index.const_value(index.nodes[first.weight])
    keep = np.ones(16, np.float32)
    keep[[0, 5]] = 0.0
    masked = with_consts(folded, {first.weight: weight * keep,
                                  bias: index.const_value(index.nodes[bias]) * keep})
    samples = {"image": x_train[:256]}
    values, _ = reestimate(folded, masked, layers, samples, ops, const_masks={bias: keep})
    assert np.all(values[first.weight][..., [0, 5]] == 0) and np.all(values[bias][[0, 5]] == 0)
    got = float_statistics(with_consts(masked, values), [(first, out, bias)], samples, ops)
    want = float_statistics(folded, [(first, out, bias)], samples, ops)
    assert np.all(got[out][0][[0, 5]] == 0) and np.all(got[out][1][[0, 5]] == 0)
    live = keep == 1
    np.testing.assert_allclose(got[out][1][live], want[out][1][live], rtol=2e-3, atol=2e-3)
