"""An AMCT PTQ client script written like AMCT's sample (mobilenet_v2_calibration.py),
ported to TF 2 graph mode: the only AMCT-specific change is the import line."""
import argparse
import os

import numpy as np
import tensorflow as tf

import amct_targets.amct_tensorflow as amct  # was: import amct_tensorflow as amct

tf.compat.v1.disable_eager_execution()
PATH = os.path.realpath('./')
OUTPUTS = os.path.join(PATH, 'outputs/calibration')
INPUT_TENSOR = 'input:0'
OUTPUT_TENSOR = 'prob:0'


def load_pb(model_name):
    """Load the frozen model into the default graph."""
    with tf.io.gfile.GFile(model_name, mode='rb') as model:
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(model.read())
    tf.import_graph_def(graph_def, name='')


def load_images(jpeg_dir):
    """Decode every JPEG of the folder with tf.io (label = the file name's suffix)."""
    names = sorted(f for f in os.listdir(jpeg_dir) if f.endswith('.jpg'))
    with tf.Graph().as_default():
        path = tf.compat.v1.placeholder(tf.string, [])
        image = tf.cast(tf.io.decode_jpeg(tf.io.read_file(path), channels=1), tf.float32) / 255.
        image = tf.image.resize(image, [16, 16])
        with tf.compat.v1.Session() as sess:
            images = np.stack([sess.run(image, {path: os.path.join(jpeg_dir, n)}) for n in names])
    labels = np.array([int(n.split('_')[1].split('.')[0]) for n in names])
    return images, labels


def run(model_file, images):
    tf.compat.v1.reset_default_graph()
    load_pb(model_file)
    with tf.compat.v1.Session() as sess:
        return sess.run(tf.compat.v1.get_default_graph().get_tensor_by_name(OUTPUT_TENSOR),
                        feed_dict={INPUT_TENSOR: images})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--model', required=True)
    parser.add_argument('--jpeg_dir', required=True)
    parser.add_argument('--batch_num', type=int, default=1)
    args = parser.parse_args()
    images, labels = load_images(args.jpeg_dir)
    calibration, test = images[:32 * args.batch_num], images

    # Phase 0: the original model's accuracy
    original = run(args.model, test)
    print('Origin Model Prediction: top1 %.4f' % np.mean(np.argmax(original, -1) == labels))

    # Phase 1: quantize the model
    tf.compat.v1.reset_default_graph()
    load_pb(args.model)
    graph = tf.compat.v1.get_default_graph()
    config_path = os.path.join(OUTPUTS, 'config.json')
    amct.create_quant_config(config_file=config_path, graph=graph, skip_layers=[],
                             batch_num=args.batch_num)
    record_path = os.path.join(OUTPUTS, 'record.txt')
    amct.quantize_model(graph=graph, config_file=config_path, record_file=record_path)
    output_tensor = graph.get_tensor_by_name(OUTPUT_TENSOR)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for i in range(args.batch_num):
            sess.run(output_tensor, feed_dict={INPUT_TENSOR: calibration[i * 32:(i + 1) * 32]})
    amct.save_model(pb_model=args.model, outputs=['prob'], record_file=record_path,
                    save_path=os.path.join(OUTPUTS, 'digits'))

    # Phase 2: reload and test the quantized model
    quantized = run(os.path.join(OUTPUTS, 'digits_quantized.pb'), test)
    print('Quantized Model Prediction: top1 %.4f' % np.mean(np.argmax(quantized, -1) == labels))
    print('top1 agreement %.4f max prob diff %.4f' % (
        np.mean(np.argmax(quantized, -1) == np.argmax(original, -1)),
        np.max(np.abs(quantized - original))))


if __name__ == '__main__':
    main()
