"""Models trained on scikit-learn's handwritten digits, with fixed seeds, cached on disk.

- `digits_cnn`: a plain CNN on 8x8x1 digits (Conv+BN+ReLU, depthwise, Dense).
- `digits_mobilenet`: a MobileNetV2-style network (inverted residual blocks with depthwise
  convs, Relu6, residual Adds) on digits upsampled to 32x32x3.
- `digits_cnn_narrow`: another depth, width and seed (two narrow convs, a wider Dense).
- `digits_cnn_softmax`: the plain CNN's architecture ending in a Softmax (probabilities out),
  trained with another seed.

Trained Keras models are cached under benchmarks/.cache/ (git-ignored); delete it to retrain.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
SEED = 0


def digits_data(size: int = 8, channels: int = 1, seed: int = SEED):
    """(x_train, y_train, x_test, y_test), float32 NHWC in [0, 1], stratified 75/25 split."""
    from amct_targets.demo.make_demo import digits_split

    x_train, y_train, x_test, y_test = digits_split(seed)
    if size != 8 or channels != 1:
        import tensorflow as tf

        def resize(x):
            up = tf.image.resize(x, (size, size), method="bilinear").numpy()
            return np.repeat(up, channels, axis=-1).astype("float32")

        x_train, x_test = resize(x_train), resize(x_test)
    return x_train, y_train, x_test, y_test


def build_cnn():
    import keras

    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def build_cnn_narrow():
    import keras

    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(24, 3, padding="same")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(96, activation="relu")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn_narrow")


def build_cnn_softmax():
    import keras

    base = build_cnn()
    outputs = keras.layers.Softmax(name="probabilities")(base.output)
    return keras.Model(base.input, outputs, name="digits_cnn_softmax")


def _inverted_residual(x, expand: int, out: int, stride: int, name: str):
    import keras

    cin = x.shape[-1]
    y = keras.layers.Conv2D(cin * expand, 1, use_bias=False, name=f"{name}_expand")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_expand_bn")(y)
    y = keras.layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                     name=f"{name}_dw")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(y)
    y = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = keras.layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_project_bn")(y)
    if stride == 1 and cin == out:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def build_mobilenet():
    import keras

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    for i, (expand, out, stride) in enumerate([(1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2),
                                               (4, 32, 1)]):
        x = _inverted_residual(x, expand, out, stride, f"block{i}")
    x = keras.layers.Conv2D(128, 1, use_bias=False, name="head")(x)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.ReLU(6.0, name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_mobilenet")


# name: (builder, data arguments, epochs, seed, the model outputs probabilities)
MODELS = {
    "digits_cnn": (build_cnn, {"size": 8, "channels": 1}, 40, SEED, False),
    "digits_mobilenet": (build_mobilenet, {"size": 32, "channels": 3}, 40, SEED, False),
    "digits_cnn_narrow": (build_cnn_narrow, {"size": 8, "channels": 1}, 40, 1, False),
    "digits_cnn_softmax": (build_cnn_softmax, {"size": 8, "channels": 1}, 40, 2, True),
}


def trained(name: str):
    """(keras model, data tuple) for `name`, trained once with fixed seeds and cached."""
    import keras

    build, data_args, epochs, seed, probabilities = MODELS[name]
    data = digits_data(**data_args)
    path = CACHE / f"{name}.keras"
    if path.exists():
        return keras.models.load_model(path, compile=False), data
    keras.utils.set_random_seed(seed)
    model = build()
    x_train, y_train, _, _ = data
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities))
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model, data


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))
