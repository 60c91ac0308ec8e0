"""Canonical form of a frozen graph, by TensorFlow's own grappler, then two rewrites.

1. Function calls are inlined by grappler's function optimizer, so nothing hides inside a
   PartitionedCall (ATC would need a side file for them). Keras marks some calls for XLA
   (`_XlaMustCompile`, `_noinline`: grouped convolutions), which the inliner skips; those
   marks are dropped first, since the frozen graph is never XLA-compiled.
2. Constant folding turns Keras 3's decomposed batch-norm arithmetic (rsqrt(var+eps)*gamma,
   ...) into single per-channel constants, and the dependency optimizer removes Identity and
   NoOp nodes between ops, so rewrites match one shape of graph. Remapper and layout
   optimizers stay off: they would produce fused ops (_FusedConv2D) that neither AMCT nor
   ATC reads.
3. Grouped Conv2D -> depthwise or Split + Conv2D per group + ConcatV2 (graph/grouped_conv.py)
   and Einsum -> Transpose/Reshape + BatchMatMulV2 (graph/einsum.py): the forms AMCT's
   quantization rules and the layer-layout table know.
"""
from __future__ import annotations

from amct_targets.graph.model import Model

GRAPPLER_OPTIMIZERS = ("function", "constfold", "dependency", "debug_stripper")


class _Handoff:
    """Serialized bytes given to TF's OptimizeGraph (which calls SerializeToString on what it
    gets) without this module keeping a reference: only one copy lives during the call."""

    def __init__(self, data: bytes):
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf method name
        data, self.data = self.data, None
        return data


def run_grappler(graph_def, fetch_nodes, optimizers=GRAPPLER_OPTIMIZERS):
    """`graph_def` optimized by grappler. Given in a one-item list (which is emptied), the
    GraphDef is the caller's to give away: it is dropped as soon as the meta graph holds it,
    and only one serialized copy of the weights is alive while grappler runs. The graph goes
    to grappler as it is (no import into a Python Graph first: grappler infers shapes itself,
    and the import cost a second on a ResNet50 for the same result)."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    from amct_targets.memory import release

    if isinstance(graph_def, list):
        graph_def = graph_def.pop()
    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.graph_def.CopyFrom(graph_def)
    del graph_def   # a protobuf's memory goes only with its last reference, not with Clear()
    add_default_attrs(meta_graph.graph_def)
    fetches = meta_graph_pb2.CollectionDef()
    fetches.node_list.value.extend(fetch_nodes)
    meta_graph.collection_def["train_op"].CopyFrom(fetches)

    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(optimizers)
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    rewrite.min_graph_nodes = -1  # optimize small graphs too
    if getattr(tf_optimizer, "is_oss", False):   # TF serializes the meta graph: do it first
        meta_graph = _Handoff(meta_graph.SerializeToString())
    release()
    optimized = tf_optimizer.OptimizeGraph(config, meta_graph)
    del meta_graph
    for node in optimized.node:  # shape annotations are not part of the model
        node.attr.pop("_output_shapes", None)
    return optimized


def add_default_attrs(graph_def) -> None:
    """Give every node of a registered op the attrs its OpDef defaults (SavedModels are
    written with defaults stripped), in place, as importing the graph into TensorFlow would:
    the rewrites read attrs such as `dilations` and `data_format` directly."""
    from tensorflow.python.framework import op_def_registry

    for node in graph_def.node:
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            continue
        for attr in op_def.attr:
            if attr.HasField("default_value") and attr.name not in node.attr:
                node.attr[attr.name].CopyFrom(attr.default_value)


# Marks that keep grappler's inliner away: XLA compilation (Keras's grouped convs) and
# `_noinline` (set on the functions Keras compiles with XLA).
XLA_ATTRS = ("_XlaMustCompile", "_xla_compile_id", "_XlaScope", "_XlaInternalScope",
             "_noinline")
CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


def drop_xla_marks(graph_def, in_place=False):
    """A copy of `graph_def` (or `graph_def` itself, `in_place`) whose function calls and
    functions carry no XLA compile marks."""
    if not in_place:
        graph_def = type(graph_def).FromString(graph_def.SerializeToString())
    bodies = [graph_def.node] + [f.node_def for f in graph_def.library.function]
    for nodes in bodies:
        for node in nodes:
            for key in XLA_ATTRS:
                node.attr.pop(key, None)
    for function in graph_def.library.function:
        for key in XLA_ATTRS:
            function.attr.pop(key, None)
    return graph_def


def canonicalize(model: Model) -> Model:
    """Return the model with its functions inlined, its graph constant-folded and stripped of
    Identity/NoOp chains, grouped convs and Einsums in matmul / AMCT form.

    Inputs and outputs keep their names: grappler preserves fetched nodes, and placeholders
    are never folded. What was rewritten is in `model.notes`.
    """
    return canonicalize_owned([model], owned=False)


def canonicalize_owned(box: list, owned: bool = True) -> Model:
    """`canonicalize(box.pop())` for a loader's own intermediate model, given in a one-item
    list that is emptied so that nothing else holds it: its GraphDef is edited in place and
    dropped as soon as TensorFlow holds a copy (one copy of the weights fewer at the peak)."""
    from amct_targets.graph.einsum import einsum_to_matmul
    from amct_targets.graph.grouped_conv import split_grouped_convs
    from amct_targets.graph.set_aside import restore_weights, set_aside_weights
    from amct_targets.memory import release

    model = box.pop()
    fetch = sorted(set(model.output_nodes) | set(model.input_names))
    graph = [model.graph_def]
    model = model.replace(graph_def=None)
    if owned:
        release()   # what the loader dropped before handing over (TF functions, Keras)
    if any(n.op in CALL_OPS for n in graph[0].node):
        graph = [drop_xla_marks(graph.pop(), in_place=owned)]
    light, aside = set_aside_weights(graph.pop(), fetch)   # weights grappler cannot touch
    optimized = run_grappler([light], fetch)
    restore_weights(optimized, aside)
    del aside
    if not any(n.op in CALL_OPS for n in optimized.node):
        optimized.ClearField("library")   # every call inlined: ATC needs no function library
    optimized, grouped = split_grouped_convs(optimized, model.source)
    optimized, einsums = einsum_to_matmul(optimized, model.source)
    return model.replace(graph_def=optimized, notes=tuple(model.notes) + tuple(grouped + einsums))
