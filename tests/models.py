"""Small real TensorFlow models shared by the tests (and the benchmarks).

Builders are deterministic: the same call gives the same weights.
"""
from __future__ import annotations

import numpy as np


def randomize_bn(keras_model, seed: int = 0):
    """Give every BatchNormalization layer non-trivial statistics, so folding it changes weights.

    gamma ~ U(0.5, 1.5), beta ~ N(0, 0.2), moving_mean ~ N(0, 0.2), moving_variance ~ U(0.5, 2).
    Returns the model (changed in place).
    """
    import keras

    rng = np.random.default_rng(seed)
    for layer in keras_model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            kind = weight.path.split("/")[-1]
            if kind == "gamma":
                values.append(rng.uniform(0.5, 1.5, shape))
            elif kind == "beta":
                values.append(rng.normal(0.0, 0.2, shape))
            elif kind == "moving_mean":
                values.append(rng.normal(0.0, 0.2, shape))
            elif kind == "moving_variance":
                values.append(rng.uniform(0.5, 2.0, shape))
            else:
                raise ValueError(f"unexpected BatchNormalization weight {weight.path}")
        layer.set_weights([v.astype("float32") for v in values])
    return keras_model


def small_bn_cnn(seed: int = 0):
    """Keras 3 functional CNN on 8x8x1 with 4 foldable BNs.

    Conv2D(+bias)+BN+ReLU, DepthwiseConv2D(+bias)+BN, Conv2D(no bias)+BN, Flatten, Dense+BN.
    Biases are random (Keras's zero biases would be removed by grappler at load).
    """
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    bias = keras.initializers.RandomNormal(stddev=0.2, seed=seed)  # zero biases get pruned
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(4, 3, padding="same", bias_initializer=bias, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2,
                               bias_initializer=bias, name="dw2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False, name="conv3")(x)
    x = layers.BatchNormalization(name="bn3")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(5, bias_initializer=bias, name="dense4")(x)
    outputs = layers.BatchNormalization(name="bn4")(x)
    model = keras.Model(inputs, outputs, name="small_bn_cnn")
    return randomize_bn(model, seed)


def _bn_params(rng, channels: int):
    return (rng.uniform(0.5, 1.5, channels).astype(np.float32),   # gamma
            rng.normal(0.0, 0.2, channels).astype(np.float32),    # beta
            rng.normal(0.0, 0.2, channels).astype(np.float32),    # mean
            rng.uniform(0.5, 2.0, channels).astype(np.float32))   # variance


def tf1_fused_bn_graph(seed: int = 0):
    """A frozen tf.compat.v1 GraphDef with three FusedBatchNormV3 nodes.

    input[1,8,8,3] -> bn_in (FusedBatchNormV3 on the input: not foldable) -> conv (Conv2D)
    -> conv_bias (BiasAdd) -> bn_conv (FusedBatchNormV3) -> relu -> dw (DepthwiseConv2dNative,
    multiplier 2) -> bn_dw (FusedBatchNormV3) -> output (Identity).
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 8, 8, 3], name="input")
        gamma, beta, mean, var = (tf.constant(v) for v in _bn_params(rng, 3))
        x, _, _ = v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=1e-3,
                                         is_training=False, name="bn_in")
        w = tf.constant(rng.normal(0, 0.3, (3, 3, 3, 4)).astype(np.float32), name="conv_w")
        x = tf.nn.conv2d(x, w, strides=1, padding="SAME", name="conv")
        b = tf.constant(rng.normal(0, 0.1, 4).astype(np.float32), name="conv_b")
        x = tf.nn.bias_add(x, b, name="conv_bias")
        gamma, beta, mean, var = (tf.constant(v) for v in _bn_params(rng, 4))
        x, _, _ = v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=1e-3,
                                         is_training=False, name="bn_conv")
        x = tf.nn.relu(x, name="relu")
        dw = tf.constant(rng.normal(0, 0.3, (3, 3, 4, 2)).astype(np.float32), name="dw_w")
        x = tf.nn.depthwise_conv2d(x, dw, strides=[1, 1, 1, 1], padding="SAME", name="dw")
        gamma, beta, mean, var = (tf.constant(v) for v in _bn_params(rng, 8))
        x, _, _ = v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=1e-3,
                                         is_training=False, name="bn_dw")
        tf.identity(x, name="output")
    return graph.as_graph_def()


def shared_weight_graph(seed: int = 0):
    """Two Conv2D nodes reading one weight Const, each followed by a FusedBatchNormV3.

    Folding either BN into the shared weights would change the other branch, so both stay.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 6, 6, 2], name="input")
        w = tf.constant(rng.normal(0, 0.3, (3, 3, 2, 3)).astype(np.float32), name="shared_w")
        outs = []
        for branch in ("a", "b"):
            y = tf.nn.conv2d(x, w, strides=1, padding="SAME", name=f"conv_{branch}")
            gamma, beta, mean, var = (tf.constant(v) for v in _bn_params(rng, 3))
            y, _, _ = v1.nn.fused_batch_norm(y, gamma, beta, mean, var, epsilon=1e-3,
                                             is_training=False, name=f"bn_{branch}")
            outs.append(y)
        tf.add(outs[0], outs[1], name="output")
    return graph.as_graph_def()


def unoptimized_session_config():
    """Session options with grappler and graph-level constant folding off.

    Otherwise the session itself pushes BN multiplies into conv weights, and comparing a
    folded graph with the original would compare two folded graphs.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    config.graph_options.optimizer_options.opt_level = config_pb2.OptimizerOptions.L0
    config.graph_options.optimizer_options.do_constant_folding = False
    return config


def run_graph(graph_def, feeds: dict, outputs) -> list[np.ndarray]:
    """Run a frozen GraphDef on CPU, unoptimized: feeds {placeholder name: array}, outputs
    tensor names."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph, config=unoptimized_session_config()) as session:
        fetches = [graph.get_tensor_by_name(t if ":" in t else f"{t}:0") for t in outputs]
        feed = {graph.get_tensor_by_name(f"{k}:0"): v for k, v in feeds.items()}
        return session.run(fetches, feed)


def random_feeds(model, batch: int = 1, seed: int = 0) -> dict:
    """Random normal inputs for every input of `model` (unknown dims -> `batch`)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model.inputs:
        shape = tuple(batch if d is None else d for d in (spec.shape or ()))
        feeds[spec.name] = rng.normal(0, 1, shape).astype(spec.dtype)
    return feeds


def relative_error(model_a, model_b, feeds: dict) -> float:
    """max |b - a| / max |a| over all outputs of two models with the same interface."""
    outs_a = run_graph(model_a.graph_def, feeds, model_a.outputs)
    outs_b = run_graph(model_b.graph_def, feeds, model_b.outputs)
    diff = max(float(np.max(np.abs(b - a))) for a, b in zip(outs_a, outs_b))
    scale = max(float(np.max(np.abs(a))) for a in outs_a)
    return diff / scale


AFFINE_AFTER = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BiasAdd")


def bn_nodes(graph_def) -> list[str]:
    """Names of BatchNorm-like nodes: every FusedBatchNorm*, and every Mul/Add/AddV2 with a
    Const operand that reads a Conv2D/DepthwiseConv2dNative/MatMul/BiasAdd output directly
    (one per decomposed Keras BN: its Mul, or its Add when grappler already moved the Mul
    into the conv weights)."""
    nodes = {n.name: n for n in graph_def.node}
    found = []
    for node in graph_def.node:
        if node.op.startswith("FusedBatchNorm"):
            found.append(node.name)
        elif node.op in ("Mul", "Add", "AddV2"):
            ops = [nodes[i.split(":")[0]].op for i in node.input if not i.startswith("^")]
            if "Const" in ops and any(op in AFFINE_AFTER for op in ops):
                found.append(node.name)
    return found
