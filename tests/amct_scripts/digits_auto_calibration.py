"""An AMCT accuracy-based auto-calibration client script written like AMCT's sample
(mobilenet_v2_accuracy_based_auto_calibration.py): a TFRecord evaluation pipeline and an
evaluator subclass. The only AMCT-specific change is the import line."""
import argparse
import os

import numpy as np
import tensorflow as tf

import amct_targets.amct_tensorflow as amct  # was: import amct_tensorflow as amct
from amct_targets.amct_tensorflow.common.auto_calibration import \
    AutoCalibrationEvaluatorBase  # was: from amct_tensorflow.common.auto_calibration import ...

tf.compat.v1.disable_eager_execution()
PATH = os.path.realpath('./')
OUTPUTS = os.path.join(PATH, 'outputs/accuracy_based_auto_calibration')
INPUT_TENSOR = 'input:0'


def parse_example(serialized):
    features = tf.io.parse_single_example(serialized, {
        'image/encoded': tf.io.FixedLenFeature([], tf.string),
        'image/class/label': tf.io.FixedLenFeature([], tf.int64)})
    image = tf.cast(tf.io.decode_jpeg(features['image/encoded'], channels=1), tf.float32) / 255.
    return tf.image.resize(image, [16, 16]), features['image/class/label']


class DigitsEvaluator(AutoCalibrationEvaluatorBase):
    """Calibrates on the first batches of the TFRecord file and evaluates on all of it."""

    def __init__(self, dataset, batch_num, batch_size, metric, max_loss):
        self.dataset = dataset
        self.batch_num = batch_num
        self.batch_size = batch_size
        self.metric = metric
        self.max_loss = max_loss

    def _batches(self, graph):
        with graph.as_default():
            data = tf.data.TFRecordDataset([self.dataset]).map(parse_example)
            data = data.batch(self.batch_size)
            return tf.compat.v1.data.make_one_shot_iterator(data).get_next()

    def calibration(self, graph, outputs):
        next_batch = self._batches(graph)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(self.batch_num):
                images, _ = sess.run(next_batch)
                sess.run(outputs, feed_dict={INPUT_TENSOR: images})

    def evaluate(self, graph, outputs):
        next_batch = self._batches(graph)
        hits, confidence, total = 0, 0.0, 0
        with tf.compat.v1.Session(graph=graph) as sess:
            while True:
                try:
                    images, labels = sess.run(next_batch)
                except tf.errors.OutOfRangeError:
                    break
                prob = sess.run(outputs, feed_dict={INPUT_TENSOR: images})[0]
                hits += int(np.sum(np.argmax(prob, -1) == labels))
                confidence += float(np.sum(prob[np.arange(len(labels)), labels]))
                total += len(labels)
        if self.metric == 'top1':
            return 100.0 * hits / total
        return 100.0 * confidence / total   # mean probability of the true class, in %

    def metric_eval(self, original_metric, new_metric):
        loss = original_metric - new_metric
        return loss < self.max_loss, loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--model', required=True)
    parser.add_argument('--dataset', required=True)
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--metric', default='top1', choices=['top1', 'confidence'])
    parser.add_argument('--max_loss', type=float, default=0.5)
    args = parser.parse_args()

    tf.compat.v1.reset_default_graph()
    with tf.io.gfile.GFile(args.model, mode='rb') as model:
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(model.read())
    tf.import_graph_def(graph_def, name='')
    graph = tf.compat.v1.get_default_graph()
    config_file = os.path.join(OUTPUTS, 'config.json')
    batch_num = 2
    amct.create_quant_config(config_file, graph, batch_num=batch_num)
    record_file = os.path.join(OUTPUTS, 'record.txt')
    evaluator = DigitsEvaluator(args.dataset, batch_num, args.batch_size, args.metric,
                                args.max_loss)
    amct.accuracy_based_auto_calibration(
        args.model, ['prob'], record_file, config_file, os.path.join(OUTPUTS, 'digits'),
        evaluator, strategy='BinarySearch', sensitivity='CosineSimilarity')


if __name__ == '__main__':
    main()
