"""Running frozen graphs. Every import, prune and run of the package goes through here:
custom op types are expanded through the op registry first (so plugin ops run too), feeds
are checked against the graph's placeholders before TensorFlow sees them (a wrong rank would
abort the process inside a kernel), and grappler (whose constant folding can abort the
process on graphs it did not expect, and whose first-call optimization costs seconds on
graphs already canonical) stays off while the tool runs a graph.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Sequence

import numpy as np

from amct_targets.errors import ConfigError, ModelError, first_line
from amct_targets.graph.model import node_name, tensor_name
from amct_targets.graph.set_aside import SET_ASIDE_BYTES

MAX_EXPANSION_ROUNDS = 4   # an expander may emit another registered op, which expands next
CAPTURED_CONST_BYTES = SET_ASIDE_BYTES   # Consts this large enter a function captured
# Their dtypes (numpy's own): float, int, uint, bool (TF's DataType numbers).
CAPTURED_DTYPES = frozenset({1, 2, 3, 4, 5, 6, 9, 10, 17, 19, 22, 23})


def _first_line(exc: BaseException) -> str:
    return first_line(str(exc)) or type(exc).__name__


def unknown_op_nodes(graph_def, ops) -> list[tuple[str, str]]:
    """(op type, node) of every node whose op type neither TensorFlow nor an expander knows."""
    from tensorflow.python.framework import op_def_registry

    expanders = ops.expanders
    return [(n.op, n.name) for n in graph_def.node
            if n.op not in expanders and op_def_registry.get(n.op) is None]


def expand_custom_ops(graph_def, ops, where: str = "<graph>"):
    """The graph with every node of a registered op type rebuilt from stock TensorFlow ops
    (same numerics); a ModelError names the first node nothing can run."""
    from tensorflow.core.framework import graph_pb2

    from amct_targets.graph.ops import ExpansionBuilder

    for _ in range(MAX_EXPANSION_ROUNDS):
        unknown = unknown_op_nodes(graph_def, ops)
        if unknown:
            op, node = unknown[0]
            raise ModelError(f"{where}: node '{node}' has op type {op}, which stock TensorFlow "
                             "cannot run and no plugin registers a simulation expander for "
                             "(register_ops)")
        expanders = ops.expanders
        if not any(n.op in expanders for n in graph_def.node):
            return graph_def
        out = graph_pb2.GraphDef()
        out.CopyFrom(graph_def)
        del out.node[:]
        by_name = {n.name: n for n in graph_def.node}
        taken = set(by_name)
        for node in graph_def.node:
            expand = expanders.get(node.op)
            if expand is None:
                out.node.add().CopyFrom(node)
                continue
            builder = ExpansionBuilder(node, by_name, taken, scope=f"{node.op.lower()}_sim")
            try:
                expand(node, builder)
            except ModelError:
                raise
            except Exception as exc:  # a plugin's expander: name the op and its owner
                owner = ops.owner(node.op, "expand") or "?"
                raise ModelError(f"{where}: the simulation expander of {node.op} (plugin "
                                 f"'{owner}') failed on node '{node.name}': "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from None
            out.node.extend(builder.finish())
        graph_def = out
    raise ModelError(f"{where}: simulation expanders keep emitting registered ops after "
                     f"{MAX_EXPANSION_ROUNDS} rounds; an expander must end in stock ops")


def import_graph(graph_def, where: str = "<graph>"):
    """A tf.Graph holding `graph_def` (stock ops only); ModelError when TF refuses it."""
    import tensorflow as tf

    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
    except (ValueError, TypeError, tf.errors.OpError) as exc:
        raise ModelError(f"{where}: TensorFlow cannot import this graph: "
                         f"{_first_line(exc)}") from None
    return graph


def static_shapes(graph_def, where: str = "<graph>") -> dict[str, tuple | None]:
    """Output 0's static shape of every node, by TensorFlow's shape inference."""
    shapes = {}
    for op in import_graph(graph_def, where).get_operations():
        shape = op.outputs[0].shape if op.outputs else None
        shapes[op.name] = None if shape is None or shape.rank is None else tuple(shape.as_list())
    return shapes


@contextlib.contextmanager
def tool_run_options():
    """Grappler off while the tool runs its own graphs; restored afterwards.

    The graphs the tool runs are already canonical (constant-folded at load), and grappler
    would spend seconds optimizing each new function on its first call (ResNet50: 1-2.5 s
    of a 2 s batch) for no faster steady state (measured: 2.08 s per 224x32 batch either
    way); its constant folding also aborted the process on some quantized graphs
    (MulConvPushDown)."""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({
            "disable_meta_optimizer": before.get("disable_meta_optimizer", False)})


def check_feed(array, tensor, what: str) -> np.ndarray:
    """`array` as the dtype of placeholder `tensor`, or a ConfigError when its rank or a known
    dimension does not fit (checked here: TensorFlow would abort inside a kernel)."""
    import tensorflow as tf

    array = np.asarray(array)
    shape = tensor.shape
    name = node_name(tensor.name)
    if shape.rank is not None:
        want = shape.as_list()
        if array.ndim != len(want) or any(w is not None and w != g
                                          for w, g in zip(want, array.shape)):
            text = ",".join("-1" if d is None else str(d) for d in want)
            raise ConfigError(f"{what} for input '{name}' has shape {list(array.shape)}; the "
                              f"graph expects ({text})")
    dtype = tf.as_dtype(tensor.dtype).as_numpy_dtype
    if array.dtype.kind not in "biuf":
        raise ConfigError(f"{what} for input '{name}' has dtype {array.dtype}; the graph "
                          f"expects {np.dtype(dtype).name}")
    if array.dtype.kind == "f" and np.dtype(dtype).kind in "iub" and \
            not np.array_equal(array, np.round(array)):
        raise ConfigError(f"{what} for input '{name}' holds fractions; the graph expects "
                          f"{np.dtype(dtype).name}")
    return array.astype(dtype, copy=False)


class GraphRunner:
    """A frozen graph imported once into a TF function, run on numpy arrays.

    `feeds` are input node names; `fetches` tensor names. `extend(graph)` may add ops to the
    imported graph and return more tensors to fetch (calibration summaries). Call
    `runner(*arrays)` for the default fetches or `runner.function(tensors)` for others.
    """

    def __init__(self, graph_def, feeds: Sequence[str], fetches: Sequence[str] = (), *, ops,
                 extend: Callable | None = None, where: str = "<graph>"):
        import tensorflow as tf

        graph_def = expand_custom_ops(graph_def, ops, where)
        self.where = where
        extra = {}

        def build():
            tf.compat.v1.import_graph_def(graph_def, name="")
            if extend is not None:
                extra["value"] = extend(tf.compat.v1.get_default_graph())

        try:
            with tool_run_options():   # as in compile_graph: nested call ops keep this config
                wrapped = tf.compat.v1.wrap_function(build, [])
        except (ValueError, TypeError, tf.errors.OpError) as exc:
            raise ModelError(f"{where}: TensorFlow cannot import this graph: "
                             f"{_first_line(exc)}") from None
        self.graph = wrapped.graph
        self._wrapped = wrapped
        self.extra = extra.get("value")
        self.feeds = [self.tensor(tensor_name(f)) for f in feeds]
        self.fetch_names = [tensor_name(f) for f in fetches]
        self._default = self.function([self.tensor(t) for t in self.fetch_names]) \
            if fetches else None

    def tensor(self, name: str):
        try:
            return self.graph.get_tensor_by_name(tensor_name(name))
        except (KeyError, ValueError):
            raise ModelError(f"{self.where}: no tensor '{name}' in the graph") from None

    def function(self, fetch_tensors: Sequence) -> Callable:
        """fn(*arrays) -> list of numpy arrays of `fetch_tensors` (any tensors of the graph)."""
        import tensorflow as tf

        pruned = self._wrapped.prune(self.feeds, list(fetch_tensors))
        feeds = self.feeds

        return _checked_runner(pruned, feeds, self.where)

    def __call__(self, *arrays) -> list[np.ndarray]:
        return self._default(*arrays)

    def run_dict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{fetch tensor name: value} for a batch given as {input name: array}."""
        arrays = [batch[node_name(t.name)] for t in self.feeds]
        return dict(zip(self.fetch_names, self(*arrays)))


def _large_consts(graph_def) -> dict:
    """Consts of at least CAPTURED_CONST_BYTES outside any control dependency (a Const with
    a control input may live in a loop frame, so it stays where it is)."""
    return {n.name: n for n in graph_def.node if n.op == "Const" and
            not any(i.startswith("^") for i in n.input) and
            n.attr["dtype"].type in CAPTURED_DTYPES and
            n.attr["value"].tensor.ByteSize() >= CAPTURED_CONST_BYTES}


def import_into_function(graph_def, name: str = "", input_map=None) -> None:
    """Import `graph_def` into the function being traced, its large Consts (the weights)
    captured as eager tensors: TF copies an embedded Const's value at every stage of a
    function's life (traced graph, function library, instantiated kernels); a captured
    tensor is one copy, handed to each call by reference. Same values, same ops."""
    import tensorflow as tf

    from amct_targets.graph.nodes import const_value
    from amct_targets.graph.set_aside import with_stand_ins

    large = _large_consts(graph_def)
    mapping = dict(input_map or {})
    if large:
        graph = tf.compat.v1.get_default_graph()
        for node in large.values():
            with tf.init_scope():   # an eager tensor, outside the traced graph
                value = tf.constant(const_value(node))
            mapping.setdefault(tensor_name(node.name), graph.capture(value))
        graph_def = with_stand_ins(graph_def, large)
    tf.compat.v1.import_graph_def(graph_def, name=name, input_map=mapping)


def compile_graph(graph_def, feeds: Sequence[str], extend: Callable, *, ops,
                  where: str = "<graph>") -> Callable:
    """fn(*arrays) -> numpy values of the flat tensor list `extend(graph, tensor)` returns;
    `tensor(name)` is the graph's tensor of that name, the argument that carries an input
    array for an input placeholder's.

    Unlike `GraphRunner.function`, nothing is pruned out of an imported graph (TF's prune
    copies every op in Python, seconds on a ResNet): the graph is imported inside a function
    whose arguments feed the inputs, with the fetches known up front; TF's function runtime
    drops what they do not need. For calibration and the per-layer metrics."""
    import tensorflow as tf

    graph_def = expand_custom_ops(graph_def, ops, where)
    by_name = {n.name: n for n in graph_def.node}
    specs = []
    for index, name in enumerate(feeds):
        node = by_name.get(node_name(name))
        if node is None or node.op != "Placeholder":
            raise ModelError(f"{where}: no input placeholder '{name}' in the graph")
        shape = tf.TensorShape(node.attr["shape"].shape) if "shape" in node.attr else None
        specs.append(tf.TensorSpec(shape, tf.as_dtype(node.attr["dtype"].type),
                                   name=f"amct_feed_{index}"))
    placeholders = []

    def body(*args):
        import_into_function(graph_def, input_map={tensor_name(f): a
                                                   for f, a in zip(feeds, args)})
        graph = tf.compat.v1.get_default_graph()
        placeholders.extend(graph.get_tensor_by_name(tensor_name(f)) for f in feeds)
        mapped = {tensor_name(f): a for f, a in zip(feeds, args)}

        def tensor(name):
            name = tensor_name(name)
            return mapped[name] if name in mapped else graph.get_tensor_by_name(name)

        return list(extend(graph, tensor))

    try:
        # Traced with grappler off too: a nested TF function's call op keeps the config of
        # its tracing, and grappler would optimize each nested function on its first run.
        with tool_run_options():
            wrapped = tf.compat.v1.wrap_function(body, specs)
    except (ValueError, TypeError, tf.errors.OpError) as exc:
        raise ModelError(f"{where}: TensorFlow cannot import this graph: "
                         f"{_first_line(exc)}") from None

    return _checked_runner(wrapped, placeholders, where)


def _checked_runner(function: Callable, tensors: Sequence, where: str) -> Callable:
    """fn(*arrays) -> numpy results of `function`, each array checked against its input
    tensor first (rank, sizes, dtype), TensorFlow's run errors as one ModelError."""
    import tensorflow as tf

    def run(*arrays):
        if len(arrays) != len(tensors):
            raise ConfigError(f"{where}: {len(arrays)} input arrays for {len(tensors)} inputs")
        checked = [check_feed(a, t, "data") for a, t in zip(arrays, tensors)]
        try:
            with tool_run_options():
                results = function(*[tf.constant(a) for a in checked])
        except tf.errors.OpError as exc:
            raise ModelError(f"{where}: TensorFlow could not run the graph on this "
                             f"data: {_first_line(exc)}") from None
        return [r.numpy() for r in results]

    return run
