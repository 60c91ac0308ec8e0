"""Weights set aside while grappler canonicalizes a graph (graph/canonicalize.py).

Grappler copies its input graph several times over (the parsed meta graph, the item, each
optimizer's output, the serialized result): with the weights in it, a VGG16's 200 MB of
weights cost over 1.5 GB at the peak. Most weight tensors are nothing grappler's optimizers
here (function, constfold, dependency, debug_stripper) can read or change, so they wait
outside as their original NodeDefs, a Placeholder of the same dtype and shape standing in,
and go back in place afterwards. A weight is set aside only when all of these hold:

- it is a Const of at least SET_ASIDE_BYTES with no control input and not fetched;
- every reader is a Conv2D, depthwise conv or (batch) MatMul reading it as its second
  operand, whose first operand depends on a graph input (never folded), and whose output no
  Mul reads (constfold's MulConvPushDown rewrites a conv's weights); or every reader is an
  Identity (a frozen variable read) whose readers all are such layers: constfold folds each
  Identity into a Const of its own name holding the same tensor, which the stand-in, named
  after the Identity, becomes again;
- its values are not all equal (constfold simplifies products with all-zeros or all-ones).

Anything else (biases, folded batch-norm arithmetic, shape constants) stays in the graph.
"""
from __future__ import annotations

SET_ASIDE_BYTES = 1 << 16
WEIGHT_READERS = frozenset({"Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul",
                            "BatchMatMulV2", "BatchMatMulV3"})
INPUT_OPS = frozenset({"Placeholder", "PlaceholderWithDefault"})
# Float weights only while freezing: shape functions read integer Consts (shapes, sizes).
FLOAT_TYPES = frozenset({1, 2, 14, 19})   # DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF


def _data_inputs(node) -> list[str]:
    return [i.split(":")[0] for i in node.input if not i.startswith("^")]


def _input_dependent(graph_def) -> set[str]:
    """Nodes that read a graph input through data edges (constfold never folds them)."""
    readers: dict[str, list[str]] = {}
    for node in graph_def.node:
        for name in _data_inputs(node):
            readers.setdefault(name, []).append(node.name)
    found = {n.name for n in graph_def.node if n.op in INPUT_OPS}
    todo = list(found)
    while todo:
        for reader in readers.get(todo.pop(), ()):
            if reader not in found:
                found.add(reader)
                todo.append(reader)
    return found


def _uniform(node) -> bool:
    import numpy as np
    from tensorflow.python.framework import tensor_util

    values = tensor_util.MakeNdarray(node.attr["value"].tensor)
    return values.size < 2 or not bool(np.any(values != values.flat[0]))


def set_aside_weights(graph_def, fetch) -> tuple[object, dict]:
    """(graph_def with the weights grappler cannot touch replaced by Placeholders,
    {stand-in name: original Const NodeDef}); the graph itself when there is none."""
    from tensorflow.core.framework import graph_pb2

    readers: dict[str, list] = {}
    for node in graph_def.node:
        for slot, name in enumerate(_data_inputs(node)):
            readers.setdefault(name, []).append((node, slot))
    dependent = _input_dependent(graph_def)
    fetched = set(fetch)

    def weight_use(reader, slot) -> bool:
        return (reader.op in WEIGHT_READERS and slot == 1 and
                _data_inputs(reader)[0] in dependent and
                not any(x.op == "Mul" for x, _ in readers.get(reader.name, [])))

    def identity_read(reader) -> bool:
        uses = readers.get(reader.name, [])
        return (reader.op == "Identity" and len(reader.input) == 1 and
                reader.name not in fetched and bool(uses) and
                all(weight_use(r, slot) for r, slot in uses))

    aside, dropped = {}, set()
    for node in graph_def.node:
        if node.op != "Const" or node.name in fetched or node.input or \
                node.attr["value"].tensor.ByteSize() < SET_ASIDE_BYTES:
            continue
        uses = readers.get(node.name, [])
        if uses and all(weight_use(r, slot) for r, slot in uses) and not _uniform(node):
            aside[node.name] = node
        elif uses and all(identity_read(r) for r, _ in uses) and not _uniform(node):
            aside.update((r.name, node) for r, _ in uses)
            dropped.add(node.name)
    if not aside:
        return graph_def, {}
    return with_stand_ins(graph_def, aside, dropped), aside


def with_stand_ins(graph_def, consts: dict, dropped=frozenset()):
    """A copy of `graph_def` where each node named in `consts` is a Placeholder of the dtype
    and shape of the Const NodeDef it maps to, and the nodes in `dropped` are gone."""
    from tensorflow.core.framework import graph_pb2

    light = graph_pb2.GraphDef()
    light.versions.CopyFrom(graph_def.versions)
    light.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in dropped:
            continue
        if node.name not in consts:
            light.node.add().CopyFrom(node)
            continue
        const = consts[node.name]
        stub = light.node.add(name=node.name, op="Placeholder", device=const.device)
        stub.attr["dtype"].CopyFrom(const.attr["dtype"])
        stub.attr["shape"].shape.CopyFrom(const.attr["value"].tensor.tensor_shape)
    return light


def restore_weights(graph_def, aside: dict) -> None:
    """Put the set-aside Consts back in place of their stand-ins (in place)."""
    for node in graph_def.node:
        original = aside.get(node.name)
        if original is None:
            continue
        if node.op != "Placeholder":   # an invariant of the rules above, checked
            raise RuntimeError(f"grappler rewrote the stand-in of weight '{node.name}' "
                               f"into a {node.op}")
        if node.input:   # an invariant of the rules above, checked
            raise RuntimeError(f"grappler gave the stand-in of weight '{node.name}' inputs")
        name = node.name
        node.CopyFrom(original)
        node.name = name   # a folded Identity keeps its own name


def freeze_without_weights(concrete_fn) -> tuple[object, dict]:
    """(TF's frozen function of `concrete_fn`, {Const name: its TensorProto}).

    `convert_variables_to_constants_v2` in its three steps, the large Consts emptied between
    the second and the third: TF's third step imports the frozen graph and prunes it into a
    function (two more graphs), which only needs their dtypes and shapes. `restore_values`
    puts the tensors back into the function's GraphDef. Without those private steps (another
    TF), the plain conversion, nothing set aside."""
    from tensorflow.core.framework import graph_pb2, tensor_pb2
    from tensorflow.python.framework import convert_to_constants as convert

    steps = [getattr(convert, name, None) for name in (
        "_FunctionConverterDataInEager", "_replace_variables_by_constants",
        "_construct_concrete_function")]
    if not all(steps):
        return convert.convert_variables_to_constants_v2(concrete_fn), {}
    data = steps[0](func=concrete_fn, lower_control_flow=True, aggressive_inlining=False)
    graph_def, converted = steps[1](converter_data=data)
    del data
    light, aside, tensor = graph_pb2.GraphDef(), {}, None
    light.versions.CopyFrom(graph_def.versions)
    light.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        tensor = node.attr["value"].tensor if node.op == "Const" else None
        if tensor is None or tensor.dtype not in FLOAT_TYPES or \
                tensor.ByteSize() < SET_ASIDE_BYTES:
            light.node.add().CopyFrom(node)
            continue
        aside[node.name] = kept = tensor_pb2.TensorProto()
        kept.CopyFrom(tensor)
        stub = light.node.add(name=node.name, op=node.op, device=node.device)
        stub.input.extend(node.input)
        for key in node.attr:
            if key != "value":
                stub.attr[key].CopyFrom(node.attr[key])
        stub.attr["value"].tensor.dtype = tensor.dtype
        stub.attr["value"].tensor.tensor_shape.CopyFrom(tensor.tensor_shape)
    del graph_def, tensor   # the converted graph's own copy of the weights
    try:
        return steps[2](concrete_fn, light, converted), aside
    except Exception:  # noqa: BLE001 - a shape function wanted a value: the plain way
        return convert.convert_variables_to_constants_v2(concrete_fn), {}


def restore_values(graph_def, aside: dict) -> None:
    """The tensors `freeze_without_weights` set aside, back into their Consts (in place)."""
    for node in graph_def.node:
        if node.op == "Const" and node.name in aside:
            node.attr["value"].tensor.CopyFrom(aside[node.name])
