"""Retraining that recovers: validation split, from_logits from the graph, best epoch, early
stop within the budget, a loud failure when retraining harms, metrics.history."""
from __future__ import annotations

import json

import numpy as np
import pytest

import amct_targets as at
from amct_targets.graph.load import load_model
from amct_targets.retrain.options import options
from amct_targets.retrain.validation import resolve_from_logits, split_training, top1
from conftest import run_cli_subprocess


@pytest.fixture(scope="module")
def digits():
    from amct_targets.demo.make_demo import digits_split

    return digits_split()


def small_cnn(softmax: bool, seed: int = 3):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(10, name="logits")(x)
    if softmax:
        x = keras.layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def softmax_model(digits):
    """A digits CNN whose output is a Softmax (probabilities), trained with fixed seeds."""
    import keras

    x_train, y_train, _, _ = digits
    model = small_cnn(softmax=True)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False))
    model.fit(x_train, y_train, epochs=12, batch_size=32, verbose=0)
    return model


def step(report, name):
    return next(p for p in report["passes"] if p["name"] == name)


def test_from_logits_is_read_from_the_graph_and_an_explicit_contradiction_is_a_warning():
    probs = load_model(small_cnn(softmax=True))
    logits = load_model(small_cnn(softmax=False))
    value, note, warning = resolve_from_logits(probs, options({}))
    assert value is False and warning is None
    assert "inferred" in note and "is computed by Softmax: probabilities" in note
    value, note, warning = resolve_from_logits(logits, options({}))
    assert value is True and "logits (no Softmax at the output)" in note and warning is None
    value, note, warning = resolve_from_logits(probs, options({"from_logits": True}))
    assert value is True and "set in the config" in note
    assert warning.startswith("from_logits: true contradicts the graph")
    assert resolve_from_logits(logits, options({"from_logits": True}))[2] is None


def test_validation_split_is_deterministic_stratified_and_disjoint(digits):
    x_train, y_train, _, _ = digits
    data = {"image": x_train, "y": y_train}
    first = split_training(data, None, 0.2, 0, 32)
    again = split_training(data, None, 0.2, 0, 32)
    assert np.array_equal(first.validation["y"], again.validation["y"])
    assert first.samples == 269 and len(first.train["y"]) == 1347 - 269
    counts = np.bincount(first.validation["y"], minlength=10)
    assert counts.min() >= 26 and counts.max() <= 28  # 20% of each class (133..137 samples)
    rows = {x.tobytes() for x in first.validation["image"]}
    assert not rows & {x.tobytes() for x in first.train["image"]}
    given = split_training(data, {"image": x_train[:10], "y": y_train[:10]}, 0.2, 0, 32)
    assert given.source == "the validation data passed in" and given.train is data
    assert top1(np.eye(3)[[0, 2, 1]], np.array([0, 2, 2])) == pytest.approx(2 / 3)


def test_qat_on_a_softmax_model_infers_probabilities_and_keeps_accuracy(tmp_path, digits,
                                                                        softmax_model):
    x_train, y_train, x_test, y_test = digits
    fp32 = float(np.mean(softmax_model.predict(x_test, verbose=0).argmax(1) == y_test))
    report = at.build(softmax_model, "ascend310", train={"image": x_train, "y": y_train},
                      config={"passes": {"qat": {"enabled": True}}},
                      output_dir=tmp_path)["ascend310"]
    qat = step(report, "qat")
    assert qat["metrics"]["from_logits"] is False
    assert any("from_logits false (inferred" in n for n in qat["notes"])
    history = qat["metrics"]["history"]
    assert history["val_metric_name"] == "top1" and history["validation_samples"] == 269
    run = history["epochs_run"]
    assert history["epoch"] == list(range(run + 1)) and len(history["val_metric"]) == run + 1
    assert history["loss"][0] is None and len(history["loss"]) == run + 1
    assert 1 <= run <= 30 and 0 <= history["best_epoch"] <= run
    assert history["val_metric"][history["best_epoch"]] >= history["target_metric"]
    pb = tmp_path / "ascend310" / report["artifacts"]["pb"]
    accuracy = float(np.mean(at.load_simulation(pb)(x_test).argmax(1) == y_test))
    assert fp32 >= 0.95 and accuracy >= fp32 - 0.01
    html = (tmp_path / "ascend310" / "report.html").read_text()
    assert 'id="retraining"' in html


def test_retraining_that_harms_the_model_fails_loudly_with_no_output(tmp_path, digits,
                                                                     softmax_model):
    """Probabilities trained as logits (an explicit from_logits: true) at a rate that ruins
    the model: the build refuses it instead of emitting a worse model with exit 0."""
    x_train, y_train, _, _ = digits
    softmax_model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "train.npz", image=x_train, y=y_train)
    (tmp_path / "c.yaml").write_text(
        "passes:\n  qat: {enabled: true, from_logits: true, learning_rate: 0.1}\n")
    run = run_cli_subprocess("build", tmp_path / "m.keras", "--target", "ascend310",
                             "--train", tmp_path / "train.npz", "--config", tmp_path / "c.yaml",
                             "--output", tmp_path / "o")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "passes.qat: quantization-aware training made the model worse than where it " \
           "started" in run.stderr
    assert "from_logits true" in run.stderr
    assert not (tmp_path / "o" / "ascend310").exists()


def test_early_stop_keeps_the_best_epoch_and_honours_the_config_budget(tmp_path, digits):
    """4:2 on the bundled CNN: a budget of 0 points asks for the float validation top-1
    exactly (`stop_at_budget`: stop once it is reached); patience 2 stops once two epochs
    bring nothing better."""
    from amct_targets.demo import demo_paths

    x_train, y_train, _, _ = digits
    config = {"accuracy": {"metric": "top1", "max_drop": 0.0},
              "passes": {"sparsify_4of2": {"enabled": True, "epochs": 6, "patience": 2,
                                           "learning_rate": 1e-3, "stop_at_budget": True}}}
    report = at.build(demo_paths()[0], "ascend910b", train={"image": x_train, "y": y_train},
                      config=config, output_dir=tmp_path)["ascend910b"]
    metrics = step(report, "sparsify_4of2")["metrics"]
    history = metrics["history"]
    assert history["budget_points"] == 0.0 and history["budget_source"] == "accuracy.max_drop"
    assert history["target_metric"] == history["reference_metric"]
    best, run = history["best_epoch"], history["epochs_run"]
    assert metrics["chosen_epoch"] == best and metrics["epochs_run"] == run <= 6
    values = history["val_metric"]
    assert values[best] == max(values)
    if "within the budget" in history["stopped"]:
        assert values[run] >= history["target_metric"] > max(values[:run])
    elif "patience" in history["stopped"]:
        assert run - best == 2 and max(values) < history["target_metric"]
    else:
        assert run == 6
    saved = json.loads((tmp_path / "ascend910b" / "report.json").read_text())
    assert step(saved, "sparsify_4of2")["metrics"]["history"] == history
