"""The Ascend op types in stock TensorFlow after `import amct_targets.amct_tensorflow`.

First choice: the real op library (deploy/oplib: C++ CPU kernels built against this
TensorFlow at first use and cached), so `tf.import_graph_def` + `Session.run` run a deploy
.pb as AMCT's own op library does. Where it cannot be built (no compiler), a warning says so
once and `tf.import_graph_def` is wrapped: a graph with Ascend op types that TensorFlow does
not know is imported with those nodes expanded into stock ops of the same numerics (the
expansion `load_simulation` uses; each expansion ends in a node of the original name, so
tensor names stay valid).
"""
from __future__ import annotations

import functools

_patched = False


def _expanding(import_graph_def):
    @functools.wraps(import_graph_def)
    def wrapper(graph_def, *args, **kwargs):
        from tensorflow.python.framework import op_def_registry

        from amct_targets.amct_tensorflow import analysis
        from amct_targets.graph.run import expand_custom_ops

        ops = analysis.ops()
        if any(n.op in ops.expanders and op_def_registry.get(n.op) is None
               for n in graph_def.node):
            graph_def = expand_custom_ops(graph_def, ops, "import_graph_def")
        return import_graph_def(graph_def, *args, **kwargs)

    return wrapper


def install() -> bool:
    """Load the op library, else install the expansion fallback. True when the real ops
    are registered."""
    global _patched
    from amct_targets.deploy.oplib import load_ascend_op_library

    if load_ascend_op_library() is not None:
        return True
    if not _patched:
        import tensorflow as tf
        from tensorflow.python.framework import importer

        wrapped = _expanding(importer.import_graph_def)
        tf.compat.v1.import_graph_def = wrapped
        tf.graph_util.import_graph_def = wrapped
        importer.import_graph_def = wrapped
        _patched = True
    return False
