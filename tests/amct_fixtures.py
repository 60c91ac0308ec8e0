"""Models and data for the AMCT drop-in tests, made the way AMCT users have them: a TF 1
style graph (variables read through Identity, FusedBatchNormV3, Relu6, AvgPool, MatMul)
trained in a tf.compat.v1 session on scikit-learn's digits and frozen with
convert_variables_to_constants into a .pb; digits images written as JPEG files and as a
TFRecord file; AMCT's .bin calibration folders.

    python tests/amct_fixtures.py OUT_DIR   writes digits.pb, jpeg/, eval.tfrecord, bin/
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

INPUT, LOGITS, PROB = "input", "logits/BiasAdd", "prob"


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    x = np.kron(x, np.ones((1, 2, 2, 1), np.float32))   # 16x16: room for two strided layers
    return x, data.target.astype(np.int64)


def _bn(tf, x, name, training, channels):
    with tf.compat.v1.variable_scope(name):
        gamma = tf.compat.v1.get_variable("gamma", [channels], initializer=tf.ones_initializer())
        beta = tf.compat.v1.get_variable("beta", [channels], initializer=tf.zeros_initializer())
        mean = tf.compat.v1.get_variable("moving_mean", [channels], trainable=False,
                                         initializer=tf.zeros_initializer())
        var = tf.compat.v1.get_variable("moving_variance", [channels], trainable=False,
                                        initializer=tf.ones_initializer())
        if not training:
            return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=1e-3,
                                                    is_training=False, name="FusedBatchNorm")[0]
        y, m, v = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3,
                                                   is_training=True)
        updates = [tf.compat.v1.assign(mean, 0.9 * mean + 0.1 * m),
                   tf.compat.v1.assign(var, 0.9 * var + 0.1 * v)]
        for u in updates:
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, u)
        return y


def build(tf, training: bool):
    init = tf.compat.v1.glorot_uniform_initializer(seed=1)
    x = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 1], name=INPUT)
    w1 = tf.compat.v1.get_variable("conv1/weights", [3, 3, 1, 16], initializer=init)
    h = tf.nn.conv2d(x, w1, 1, "SAME", name="conv1/Conv2D")
    h = tf.nn.relu6(_bn(tf, h, "conv1/BatchNorm", training, 16), name="conv1/Relu6")
    w2 = tf.compat.v1.get_variable("dw/depthwise_weights", [3, 3, 16, 1], initializer=init)
    h = tf.nn.depthwise_conv2d(h, w2, [1, 2, 2, 1], "SAME", name="dw/depthwise")
    h = tf.nn.relu(_bn(tf, h, "dw/BatchNorm", training, 16), name="dw/Relu")
    w3 = tf.compat.v1.get_variable("conv2/weights", [3, 3, 16, 32], initializer=init)
    b3 = tf.compat.v1.get_variable("conv2/biases", [32], initializer=tf.zeros_initializer())
    h = tf.nn.bias_add(tf.nn.conv2d(h, w3, 2, "SAME", name="conv2/Conv2D"), b3,
                       name="conv2/BiasAdd")
    h = tf.nn.relu(h, name="conv2/Relu")
    h = tf.nn.avg_pool2d(h, 4, 1, "VALID", name="pool/AvgPool")
    h = tf.reshape(h, [-1, 32], name="flatten")
    w4 = tf.compat.v1.get_variable("logits/weights", [32, 10], initializer=init)
    b4 = tf.compat.v1.get_variable("logits/biases", [10], initializer=tf.zeros_initializer())
    logits = tf.nn.bias_add(tf.matmul(h, w4, name="logits/MatMul"), b4, name=LOGITS)
    tf.nn.softmax(logits, name=PROB)
    return x, logits


def train_and_freeze(path: Path, steps: int = 300) -> Path:
    import tensorflow as tf

    x_all, y_all = digits()
    train_graph = tf.Graph()
    with train_graph.as_default():
        tf.compat.v1.set_random_seed(0)
        x, logits = build(tf, training=True)
        y = tf.compat.v1.placeholder(tf.int64, [None])
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y,
                                                                             logits=logits))
        with tf.control_dependencies(tf.compat.v1.get_collection(
                tf.compat.v1.GraphKeys.UPDATE_OPS)):
            step = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss)
        saver = tf.compat.v1.train.Saver()
        rng = np.random.default_rng(0)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                batch = rng.choice(len(x_all) - 297, 64)
                sess.run(step, {x: x_all[batch], y: y_all[batch]})
            values = {v.op.name: sess.run(v) for v in tf.compat.v1.global_variables()
                      if "Adam" not in v.op.name and "power" not in v.op.name}
    eval_graph = tf.Graph()
    with eval_graph.as_default():
        build(tf, training=False)
        with tf.compat.v1.Session() as sess:
            for v in tf.compat.v1.global_variables():
                v.load(values[v.op.name], sess)
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, eval_graph.as_graph_def(), [PROB])
    del saver
    path.write_bytes(frozen.SerializeToString())
    return path


def write_data(out: Path) -> None:
    """Test digits (the last 297) as JPEG files, as a TFRecord, and as AMCT .bin batches."""
    import tensorflow as tf

    x_all, y_all = digits()
    x, y = x_all[-297:], y_all[-297:]
    jpeg = out / "jpeg"
    jpeg.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(out / "eval.tfrecord")) as writer:
        for i, (image, label) in enumerate(zip(x, y)):
            encoded = tf.io.encode_jpeg(tf.constant((image * 255).round().astype(np.uint8)),
                                        quality=100).numpy()
            (jpeg / f"{i:04d}_{label}.jpg").write_bytes(encoded)
            example = tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[int(label)]))}))
            writer.write(example.SerializeToString())
    bins = out / "bin"
    bins.mkdir(exist_ok=True)
    for i in range(2):
        x[i * 32:(i + 1) * 32].astype(np.float32).tofile(bins / f"batch_{i}.bin")


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    train_and_freeze(target / "digits.pb")
    write_data(target)
