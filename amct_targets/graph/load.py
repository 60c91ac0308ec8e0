"""Load any supported model into one frozen `Model`.

`load_model` asks the `load_model` hook (first result wins): plugins may add input formats;
the built-in loaders (graph/loaders.py) take frozen `.pb`, SavedModel folders, `.keras`/`.h5`
files, in-memory Keras models and `Model`s. Each ends as a frozen GraphDef (variables turned
into Consts by TensorFlow's own `convert_variables_to_constants_v2`), canonicalized by
grappler. The helpers here are what the loaders are made of.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from amct_targets.errors import ModelError, PluginError
from amct_targets.graph.canonicalize import canonicalize, canonicalize_owned
from amct_targets.graph.model import Model, TensorSpec, node_name, tensor_name
from amct_targets.safe_io import require_regular_file

if TYPE_CHECKING:  # pragma: no cover
    from tensorflow.core.framework import graph_pb2

# Op types that mean a graph still holds variables (not frozen).
VARIABLE_OPS = frozenset({
    "Variable", "VariableV2", "VarHandleOp", "ReadVariableOp", "AssignVariableOp",
    "Assign", "AssignAdd", "AssignSub", "VarIsInitializedOp", "ResourceGather",
    "AssignAddVariableOp", "AssignSubVariableOp",
})
# Nodes that are never a model output even when nothing consumes them.
_NOT_OUTPUTS = frozenset({"Const", "NoOp", "Placeholder", "Assert", "SaveV2", "RestoreV2",
                          "PlaceholderWithDefault"})


@dataclass(frozen=True)
class LoadOptions:
    """What `load_model` implementations are asked for besides the source."""

    outputs: tuple[str, ...] | None = None          # output tensor names, None: infer
    input_shapes: Mapping[str, tuple[int, ...]] | None = None


def read_graph_def(path: str | os.PathLike, importable: bool = True) -> "graph_pb2.GraphDef":
    """Parse a binary GraphDef file; a clear ModelError if it is not one.

    `importable` also imports it into TensorFlow (off for graphs with Ascend op types, which
    stock TensorFlow does not know)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import graph_pb2

    path = Path(path)
    try:
        if path.exists():  # a FIFO or device would hang or exhaust the read
            require_regular_file(path, "frozen .pb model", ModelError)
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file; give the path of a frozen .pb, a SavedModel "
                         "folder or a .keras/.h5 file") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror})") from None
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(f"{path}: not a TensorFlow GraphDef (the file is corrupt or in another "
                         "format); export a frozen graph with convert_variables_to_constants_v2 "
                         "or pass the SavedModel folder") from None
    if not graph_def.node or any(not n.op or not n.name for n in graph_def.node):
        raise ModelError(f"{path}: not a TensorFlow GraphDef (no nodes, or nodes without an op); "
                         "the file is corrupt or in another format")
    if importable:
        _check_importable(graph_def, str(path))
    return graph_def


def _check_importable(graph_def: "graph_pb2.GraphDef", where: str) -> None:
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    from amct_targets.deploy.oplib import OP_TYPES

    deploy = next((n for n in graph_def.node if n.op in OP_TYPES
                   and op_def_registry.get(n.op) is None), None)
    if deploy is not None:
        raise ModelError(f"{where}: node '{deploy.name}' ({deploy.op}) is an Ascend deploy op: "
                         "this .pb is already an AMCT deploy graph (a build's or AMCT's output), "
                         "not a float model; build from the float model it came from, or check "
                         "it for a chip with `amct-targets check PB --target T`")
    try:
        with tf.Graph().as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
    except (ValueError, TypeError, tf.errors.OpError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{where}: TensorFlow cannot import this graph: {first}") from None


def variable_nodes(graph_def: "graph_pb2.GraphDef") -> list[str]:
    return [n.name for n in graph_def.node if n.op in VARIABLE_OPS]


def placeholder_specs(graph_def: "graph_pb2.GraphDef") -> tuple[TensorSpec, ...]:
    from tensorflow.python.framework import dtypes

    specs = []
    for node in graph_def.node:
        if node.op != "Placeholder":
            continue
        dtype = dtypes.as_dtype(node.attr["dtype"].type).name if "dtype" in node.attr else "float32"
        shape = None
        if "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
            shape = tuple(None if d.size < 0 else int(d.size) for d in node.attr["shape"].shape.dim)
        specs.append(TensorSpec(node.name, dtype, shape))
    return tuple(specs)


def default_outputs(graph_def: "graph_pb2.GraphDef") -> tuple[str, ...]:
    """Tensors of nodes that nothing consumes, in graph order."""
    consumed = {node_name(i) for n in graph_def.node for i in n.input}
    return tuple(tensor_name(n.name) for n in graph_def.node
                 if n.name not in consumed and n.op not in _NOT_OUTPUTS)


def _select_outputs(graph_def, outputs, where) -> tuple[str, ...]:
    if not outputs:
        found = default_outputs(graph_def)
        if not found:
            raise ModelError(f"{where}: cannot tell the graph's outputs; pass --outputs NAME[,NAME]")
        return found
    names = {n.name for n in graph_def.node}
    for out in outputs:
        if node_name(out) not in names:
            raise ModelError(f"{where}: output '{out}' is not a node of the graph; "
                             "check --outputs against the node names")
    return tuple(tensor_name(o) for o in outputs)


def model_from_graph_def(graph_def: "graph_pb2.GraphDef", *, outputs=None, where="<graph>",
                         name="model", require_frozen=True, canonical=True,
                         consume=False) -> Model:
    """`consume`: the caller holds no other reference to `graph_def` (canonicalization drops
    it as soon as TensorFlow holds a copy)."""
    if require_frozen:
        variables = variable_nodes(graph_def)
        if variables:
            raise ModelError(f"{where}: the graph is not frozen: node '{variables[0]}' is a "
                             f"variable op ({len(variables)} in all); freeze it first "
                             "(convert_variables_to_constants_v2) or pass the SavedModel folder")
    model = Model(graph_def, placeholder_specs(graph_def),
                  _select_outputs(graph_def, outputs, where), source=where, name=name)
    if not canonical or not consume:
        return canonicalize(model) if canonical else model
    box = [model]
    del model, graph_def
    return canonicalize_owned(box)


def _freeze_concrete_function(concrete_fn, where, name) -> Model:
    """The frozen graph of `concrete_fn`, not yet canonical; TF's frozen function is dropped
    before returning, so only the GraphDef holds the weights."""
    from amct_targets.graph.set_aside import freeze_without_weights, restore_values

    try:
        frozen, aside = freeze_without_weights(concrete_fn)
    except Exception as exc:  # TensorFlow raises many types here; all mean "cannot freeze"
        raise ModelError(f"{where}: TensorFlow could not freeze the model: {exc}") from None
    graph_def = frozen.graph.as_graph_def()
    restore_values(graph_def, aside)
    inputs = [t for t in frozen.inputs if t.dtype.name != "resource"]
    input_names = [t.op.name for t in inputs]
    outputs = [t.name for t in frozen.outputs]
    del frozen, inputs, aside
    specs = {s.name: s for s in placeholder_specs(graph_def)}
    return Model(graph_def, tuple(specs[n] for n in input_names), tuple(outputs), source=where,
                 name=name)


def model_from_keras(keras_model, where="<keras model>", name=None) -> Model:
    """Freeze a Keras model called with its own input structure: one tensor, a list, or a
    dict (keras-hub's `token_ids`/`padding_mask`/...); inputs are named by their dict key,
    else by their Input layer's name."""
    return canonicalize_owned([_frozen_keras(keras_model, where, name)])


def _frozen_keras(keras_model, where, name) -> Model:
    import tensorflow as tf

    try:
        structure = keras_model.input
    except (AttributeError, ValueError):   # a Sequential never called has .inputs only
        try:
            structure = keras_model.inputs or None
        except (AttributeError, ValueError):
            structure = None
        if isinstance(structure, (list, tuple)) and len(structure) == 1:
            structure = structure[0]
    if structure is None:
        raise ModelError(f"{where}: the Keras model has no defined inputs; build it (call it "
                         "once or give it an Input layer) before compressing") from None
    flat = tf.nest.flatten(structure)
    names = [t.name for t in flat]
    if isinstance(structure, Mapping) and len(structure) == len(flat):
        names = [str(key) for key in sorted(structure)]  # tf.nest's order of a dict
    specs = [tf.TensorSpec(shape=t.shape, dtype=tf.as_dtype(t.dtype),
                           name=_clean_name(n, i)) for i, (n, t) in enumerate(zip(names, flat))]
    if len({s.name for s in specs}) != len(specs):
        specs = [tf.TensorSpec(s.shape, s.dtype, f"{s.name}_{i}") for i, s in enumerate(specs)]

    def forward(*args):
        return keras_model(tf.nest.pack_sequence_as(structure, list(args)), training=False)

    concrete = tf.function(forward).get_concrete_function(*specs)
    return _freeze_concrete_function(concrete, where, name or keras_model.name or "model")


def _clean_name(name: str, index: int) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name.split(":")[0])
    return cleaned if cleaned and cleaned[0].isalpha() else f"input_{index}"


def model_from_saved_model(path: Path, signature: str | None = None) -> Model:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # corrupt protobufs, missing variables, unknown ops ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable SavedModel: {first}") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise ModelError(f"{path}: the SavedModel has no serving signature; export it with "
                         "tf.saved_model.save(..., signatures=...) or model.export()")
    key = signature or ("serving_default" if "serving_default" in signatures
                        else sorted(signatures)[0])
    if key not in signatures:
        raise ModelError(f"{path}: no signature '{key}'; it has {sorted(signatures)}")
    box = [_freeze_concrete_function(signatures[key], str(path), path.name)]
    del loaded, signatures   # TF's variables: the frozen GraphDef holds the weights now
    return canonicalize_owned(box)


def load_model(source: Any, *, outputs=None, input_shapes: Mapping | None = None,
               plugins=None) -> Model:
    """Load `source` (path, Keras model, Model, or anything a plugin loads) as a canonical
    frozen Model through the `load_model` hook. `input_shapes` ({input name: shape}) fixes
    unknown dimensions for ATC."""
    if plugins is None:
        from amct_targets.hooks.manager import default_plugins

        plugins = default_plugins()
    options = LoadOptions(tuple(outputs) if outputs else None,
                          dict(input_shapes) if input_shapes else None)
    model = plugins.call("load_model", source=source, options=options)
    if model is None:
        raise ModelError(f"cannot load a model from a {type(source).__name__}; give a path to a "
                         "frozen .pb, SavedModel folder or .keras/.h5 file, or a Keras model "
                         "(or install a plugin that loads this format)")
    if not isinstance(model, Model):
        raise PluginError(f"a load_model implementation returned {type(model).__name__}, not an "
                          "amct_targets.graph.Model")
    if input_shapes:
        model = apply_input_shapes(model, input_shapes)
        model = _rewrite_einsums_with_shapes(model, {s.name: s for s in model.inputs})
    return model


def load_builtin(source: Any, options: LoadOptions) -> Model | None:
    """The built-in formats (see graph/loaders.py); None for anything else."""
    outputs = options.outputs
    if isinstance(source, Model):
        model = source
    elif isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), outputs)
    elif hasattr(source, "inputs") and hasattr(source, "get_config"):
        model = model_from_keras(source)
    else:
        return None
    if outputs:
        model = model.replace(outputs=_select_outputs(model.graph_def, outputs, model.source))
    return model


def _load_path(path: Path, outputs) -> Model:
    if path.is_dir():
        if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
            raise ModelError(f"{path}: a folder but not a SavedModel (no saved_model.pb in it)")
        model = model_from_saved_model(path)
        if outputs:
            model = model.replace(outputs=_select_outputs(model.graph_def, outputs, str(path)))
        return model
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        # The Keras model lives only in _frozen_keras's frame, the frozen model only in
        # canonicalize_owned's: each copy of the weights goes as soon as the next exists.
        model = canonicalize_owned([_frozen_keras(_load_keras(path), str(path), path.stem)])
        if outputs:
            model = model.replace(outputs=_select_outputs(model.graph_def, outputs, str(path)))
        return model
    return model_from_graph_def(read_graph_def(path), outputs=outputs, where=str(path),
                                name=path.stem, consume=True)


def _load_keras(path: Path):
    import keras

    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises ValueError, OSError, TypeError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: Keras cannot load this model: {first}") from None


def parse_input_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """ATC syntax `name:1,224,224,3;name2:1,10` -> {name: shape}."""
    shapes = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, dims = part.rpartition(":")
        if not sep or not name:
            raise ModelError(f"--input-shape '{part}': expected NAME:D1,D2,... "
                             "(several separated by ';')")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ModelError(f"--input-shape '{part}': dimensions must be integers") from None
        if any(d <= 0 for d in shape):
            raise ModelError(f"--input-shape '{part}': every dimension must be positive "
                             "(ATC rejects 0 and dynamic sizes here)")
        shapes[name] = shape
    return shapes


def apply_input_shapes(model: Model, input_shapes: Mapping[str, tuple[int, ...]]) -> Model:
    specs = {s.name: s for s in model.inputs}
    single = len(specs) == 1
    updated = dict(specs)
    for name, shape in input_shapes.items():
        key = name if name in specs else (next(iter(specs)) if single and not name else None)
        if key is None:
            raise ModelError(f"--input-shape names input '{name}', but the model's inputs are "
                             f"{sorted(specs)}")
        spec = specs[key]
        if spec.shape is not None:
            ok = len(spec.shape) == len(shape) and all(
                d is None or d == s for d, s in zip(spec.shape, shape))
            if not ok:
                raise ModelError(f"--input-shape {name}:{','.join(map(str, shape))} does not fit "
                                 f"input '{key}' of shape ({spec.shape_text()})")
        updated[key] = TensorSpec(spec.name, spec.dtype, tuple(shape))
    return model.replace(inputs=tuple(updated[s.name] for s in model.inputs))


def _rewrite_einsums_with_shapes(model: Model, specs: Mapping[str, TensorSpec]) -> Model:
    """Einsums the load-time rewrite kept for dynamic sizes (keras-hub's `(None, None)` token
    inputs), rewritten again now that the given shapes fix every size but the batch, which
    stays dynamic so calibration and simulation take any batch."""
    if not any(n.op == "Einsum" for n in model.graph_def.node):
        return model
    from amct_targets.graph.einsum import einsum_to_matmul

    graph_def = model.copy_graph_def()
    for node in graph_def.node:
        spec = specs.get(node.name)
        if node.op == "Placeholder" and spec is not None and spec.shape:
            dims = node.attr["shape"].shape
            dims.unknown_rank = False
            del dims.dim[:]
            for i, size in enumerate(spec.shape):
                dims.dim.add().size = -1 if i == 0 or size is None else int(size)
    rewritten, notes = einsum_to_matmul(graph_def, model.source)
    kept = [n for n in model.notes if not n.startswith("Einsum '")]
    return model.replace(graph_def=rewritten, notes=tuple(kept + notes))
