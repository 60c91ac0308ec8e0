"""Canonical form of a frozen graph, by TensorFlow's own grappler.

Constant folding turns Keras 3's decomposed batch-norm arithmetic (rsqrt(var+eps)*gamma, ...)
into single per-channel constants, and the dependency optimizer removes Identity and NoOp
nodes between ops, so rewrites match one shape of graph. Remapper and layout optimizers stay
off: they would produce fused ops (_FusedConv2D) that neither AMCT nor ATC reads.
"""
from __future__ import annotations

from amct_targets.graph.model import Model

GRAPPLER_OPTIMIZERS = ("function", "constfold", "dependency", "debug_stripper")


def run_grappler(graph_def, fetch_nodes, optimizers=GRAPPLER_OPTIMIZERS):
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(add_shapes=True),
                                                      graph=graph)
    fetches = meta_graph_pb2.CollectionDef()
    fetches.node_list.value.extend(fetch_nodes)
    meta_graph.collection_def["train_op"].CopyFrom(fetches)

    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(optimizers)
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    rewrite.min_graph_nodes = -1  # optimize small graphs too
    optimized = tf_optimizer.OptimizeGraph(config, meta_graph)
    for node in optimized.node:  # shape annotations from add_shapes are not part of the model
        node.attr.pop("_output_shapes", None)
    return optimized


def canonicalize(model: Model) -> Model:
    """Return the model with its graph constant-folded and stripped of Identity/NoOp chains.

    Inputs and outputs keep their names: grappler preserves fetched nodes, and placeholders
    are never folded.
    """
    fetch = sorted(set(model.output_nodes) | set(model.input_names))
    optimized = run_grappler(model.graph_def, fetch)
    return model.replace(graph_def=optimized)
