"""Rebuild the bundled demo model and calibration set (needs scikit-learn).

    python -m amct_targets.demo.make_demo

Trains a small CNN (Conv+BN+ReLU, depthwise Conv+BN, Dense) on scikit-learn's digits with
fixed seeds, freezes it and writes digits_cnn.pb and digits_calib.npz beside this file.
"""
from __future__ import annotations

import numpy as np

from amct_targets.demo import demo_paths


def digits_split(seed: int = 0):
    """Digits as float32 NHWC in [0, 1]: (x_train, y_train, x_test, y_test), 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed,
                                                        stratify=y)
    return x_train, y_train, x_test, y_test


def build_demo_model():
    import keras

    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def main() -> None:
    import keras

    from amct_targets.graph.load import model_from_keras

    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = digits_split()
    model = build_demo_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    frozen = model_from_keras(model, "digits_cnn (make_demo)", "digits_cnn")
    pb_path, calib_path = demo_paths()
    pb_path.write_bytes(frozen.serialize())
    np.savez(calib_path, image=x_train[:64])
    print(f"test accuracy {accuracy:.4f}; wrote {pb_path.name} ({pb_path.stat().st_size} bytes) "
          f"and {calib_path.name}")


if __name__ == "__main__":
    main()
