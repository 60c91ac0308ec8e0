"""Digits CNNs with one outlier channel, for the accuracy-budget benchmark and tests.

A small CNN is trained on scikit-learn's digits with a fixed seed; then one output channel of
a convolution is made 1000x larger, function-preservingly: the conv's kernel and bias of that
channel are multiplied by 1000 and the next conv's input weights of that channel divided by
1000, through the ReLU between them (ReLU(1000 x) = 1000 ReLU(x)). The float model computes
the same function (up to float rounding); per-tensor INT8 activations and per-channel INT8
weights of the next conv lose the other channels.

    VARIANTS["cnn_logits"]   seed 0, conv 16 -> conv 32, logits out (the model tuned on)
    VARIANTS["cnn_softmax"]  seed 1, conv 24 -> conv 48 -> conv 32, Softmax out (held out)
    VARIANTS["cnn_dense"]    seed 2, conv 16 -> conv 32, outlier channel of conv2 read by the
                             Dense layer through Flatten: no conv -> ReLU -> conv pair, so
                             equalization does not apply (held out)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SCALE = 1000.0
VARIANTS = {
    "cnn_logits": {"seed": 0, "convs": (16, 32), "softmax": False, "epochs": 30},
    "cnn_softmax": {"seed": 1, "convs": (24, 48, 32), "softmax": True, "epochs": 30},
    "cnn_dense": {"seed": 2, "convs": (16, 32), "softmax": False, "epochs": 30,
                  "outlier": ("conv2", "logits")},
}


def digits(seed: int = 0):
    """(x_train, y_train, x_test, y_test): 8x8x1 float32 in [0, 1], stratified 75/25."""
    from amct_targets.demo.make_demo import digits_split

    return digits_split(seed)


def build(convs, softmax: bool):
    import keras

    inputs = keras.Input((8, 8, 1), name="image")
    x = inputs
    for i, width in enumerate(convs, 1):
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i == 2:
            x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(10, name="logits")(x)
    if softmax:
        x = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, x, name="outlier_cnn")


def make_outlier(model, first: str = "conv1", second: str = "conv2", channel: int = 0,
                 scale: float = SCALE):
    """Scale `first`'s output `channel` by `scale` and `second`'s input `channel` by 1/scale."""
    kernel, bias = model.get_layer(first).get_weights()
    kernel[..., channel] *= scale
    bias[channel] *= scale
    model.get_layer(first).set_weights([kernel, bias])
    kernel2, bias2 = model.get_layer(second).get_weights()
    if kernel2.ndim == 4:
        kernel2[:, :, channel, :] /= scale
    else:   # a Dense after Flatten (NHWC): input index = position * channels + channel
        channels = kernel.shape[-1]
        kernel2.reshape(-1, channels, kernel2.shape[-1])[:, channel, :] /= scale
    model.get_layer(second).set_weights([kernel2, bias2])
    return model


def trained(name: str, folder: Path, outlier: bool = True):
    """(path of the saved .keras model, data) for variant `name`, trained with its seed."""
    import keras

    spec = VARIANTS[name]
    data = digits(0)
    path = Path(folder) / f"{name}{'_outlier' if outlier else ''}.keras"
    if path.exists():
        return path, data
    keras.utils.set_random_seed(spec["seed"])
    model = build(spec["convs"], spec["softmax"])
    x_train, y_train, _, _ = data
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=not spec["softmax"]))
    model.fit(x_train, y_train, epochs=spec["epochs"], batch_size=32, verbose=0, shuffle=True)
    if outlier:
        make_outlier(model, *spec.get("outlier", ("conv1", "conv2")))
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path, data


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))
