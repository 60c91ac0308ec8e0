"""Real inputs and small real architectures for the model zoo (benchmarks/model_zoo.py) and
its CI subset (tests/test_zoo.py): natural-image crops, BatchNorm statistics set by
training-mode forward passes over them, a ViT built from Keras layers, a grouped-conv net and
an AvgPool net; plus the walk of an emitted .pb that says which compute ops run in INT8.

Builders are deterministic: the same call gives the same weights.
"""
from __future__ import annotations

import numpy as np

# Compute op types whose INT8-or-reported status the zoo and the tests check.
COMPUTE_OPS = frozenset({"Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul",
                         "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "AvgPool", "Conv3D",
                         "Einsum"})


def photo_crops(count: int, size: int, seed: int = 0, scale: str = "unit") -> np.ndarray:
    """`count` random crops of scikit-learn's two sample photos (china.jpg, flower.jpg), each a
    square of a random side in [size, 3*size] resized to `size` x `size`, randomly flipped.
    `scale`: "unit" -> [0, 1], "symmetric" -> [-1, 1], "raw" -> [0, 255] (models that carry
    their own preprocessing)."""
    import tensorflow as tf
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(size, min(3 * size, *photo.shape[:2]) + 1))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = photo[top:top + side, left:left + side].astype(np.float32)
        crop = tf.image.resize(crop, (size, size), antialias=True).numpy()
        crops.append(crop[:, ::-1] if rng.uniform() < 0.5 else crop)
    raw = np.clip(np.stack(crops), 0.0, 255.0).astype(np.float32)
    return {"unit": raw / 255.0, "symmetric": raw / 127.5 - 1.0, "raw": raw}[scale]


def _batchnorm_layers(model):
    layers = []
    for layer in getattr(model, "_flatten_layers", lambda: model.layers)():
        if type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization"):
            layers.append(layer)
    return layers


def set_bn_statistics(model, images, seed: int = 0, batch: int = 32):
    """Give every BatchNorm a random affine (gamma ~ U(0.5, 1.5), beta ~ N(0, 0.2)) and the
    moving mean/variance of its input on `images`: a training-mode forward pass with
    momentum 0 stores each BN's batch statistics, which are exactly what that BN sees in
    inference mode once the BNs before it hold theirs. Returns the model (changed in place)."""
    rng = np.random.default_rng(seed)
    layers = _batchnorm_layers(model)
    saved = []
    for layer in layers:
        weights = layer.get_weights()
        names = [w.path.split("/")[-1] if hasattr(w, "path") else w.name.split("/")[-1]
                 for w in layer.weights]
        for i, name in enumerate(names):
            if name.startswith("gamma"):
                weights[i] = rng.uniform(0.5, 1.5, weights[i].shape).astype(np.float32)
            elif name.startswith("beta"):
                weights[i] = rng.normal(0.0, 0.2, weights[i].shape).astype(np.float32)
        layer.set_weights(weights)
        saved.append(layer.momentum)
        layer.momentum = 0.0
    try:
        model(images[:batch], training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return model


def tiny_vit(image: int = 32, patch: int = 4, dim: int = 48, heads: int = 3, depth: int = 2,
             classes: int = 10, seed: int = 0):
    """A ViT from Keras layers: patch Conv2D, class-free mean pooling, pre-norm blocks of
    MultiHeadAttention and a GELU MLP, LayerNormalization."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image, image, 3), name="image")
    x = keras.layers.Conv2D(dim, patch, strides=patch, name="patch_embed")(inputs)
    tokens = (image // patch) ** 2
    x = keras.layers.Reshape((tokens, dim))(x)
    x = x + keras.layers.Embedding(tokens, dim)(keras.ops.arange(tokens))
    for i in range(depth):
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln1_{i}")(x)
        y = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"mha_{i}")(y, y)
        x = x + y
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln2_{i}")(x)
        y = keras.layers.Dense(2 * dim, activation="gelu", name=f"mlp1_{i}")(y)
        x = x + keras.layers.Dense(dim, name=f"mlp2_{i}")(y)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_out")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x), name="tiny_vit")


def grouped_conv_net(image: int = 32, groups: int = 4, classes: int = 10, seed: int = 0):
    """ResNeXt-style: Conv2D(groups>1) + BN + ReLU blocks, one with groups == channels."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image, image, 3), name="image")
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for filters, g in ((32, groups), (64, groups), (64, 64)):
        y = keras.layers.Conv2D(filters, 3, padding="same", groups=g, use_bias=False)(x)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
        y = keras.layers.Conv2D(filters, 1, use_bias=False)(y)
        y = keras.layers.BatchNormalization()(y)
        x = keras.layers.ReLU()(y if x.shape[-1] != filters else keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x), name="grouped_conv_net")


def avgpool_net(image: int = 32, classes: int = 10, seed: int = 0):
    """NASNet-flavoured: conv + BN cells joined by 3x3 stride-1 and 2x2 stride-2 AvgPools."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image, image, 3), name="image")
    x = keras.layers.Conv2D(24, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for filters in (32, 48):
        y = keras.layers.AveragePooling2D(3, strides=1, padding="same")(x)
        y = keras.layers.Conv2D(filters, 1, use_bias=False)(y)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
        z = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        z = keras.layers.ReLU()(keras.layers.BatchNormalization()(z))
        x = keras.layers.AveragePooling2D(2)(keras.layers.Add()([y, z]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x), name="avgpool_net")


def compute_op_status(graph_def, report: dict) -> dict[str, list]:
    """Each compute op of an emitted .pb: "int8" when its activation comes from an
    AscendQuant (and, with a weight, the weight from an AscendWeightQuant); "reported" when
    report.json lists it as float with a reason; else "unreported". Returns
    {"int8": [names], "reported": [(name, op, reason)], "unreported": [(name, op)]}."""
    nodes = {n.name: n for n in graph_def.node}
    float_reasons = {}
    for entry in report.get("passes", []):
        for layer in entry.get("layers") or []:
            if isinstance(layer, dict) and layer.get("status") == "float":
                float_reasons[layer["layer"]] = layer.get("reason", "")
    status = {"int8": [], "reported": [], "unreported": []}
    for node in graph_def.node:
        if node.op not in COMPUTE_OPS:
            continue
        producers = [nodes.get(i.split(":")[0].lstrip("^")) for i in node.input
                     if not i.startswith("^")]
        ops = [p.op if p is not None else None for p in producers]
        weighted = node.op != "AvgPool"
        act = 2 if node.op == "Conv2DBackpropInput" else 0
        if len(ops) > act and ops[act] == "AscendQuant" and \
                (not weighted or "AscendWeightQuant" in ops or ops.count("AscendQuant") == 2):
            status["int8"].append(node.name)
        elif node.name in float_reasons and float_reasons[node.name]:
            status["reported"].append((node.name, node.op, float_reasons[node.name]))
        else:
            status["unreported"].append((node.name, node.op))
    return status


def sqnr_cosine(reference, actual) -> tuple[float, float]:
    """SQNR (dB) and cosine of `actual` against `reference`, over all elements."""
    ref = np.asarray(reference, np.float64).ravel()
    act = np.asarray(actual, np.float64).ravel()
    noise = float(np.sum((ref - act) ** 2))
    sqnr = float("inf") if noise == 0 else 10.0 * np.log10(float(np.sum(ref ** 2)) / noise)
    denom = float(np.linalg.norm(ref) * np.linalg.norm(act))
    return sqnr, (float(ref @ act / denom) if denom else 1.0)
