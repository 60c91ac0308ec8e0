"""Where a zoo model's INT8 error comes from: SQNR against float, block by block, for ours
and for TFLite, on the same held-out crops.

    python benchmarks/zoo_blocks.py --model EfficientNetB0 --layers '(project_bn|_add|top_bn)$'

The model, its calibration and held-out data are model_zoo.py's (`prepare` phase, weight
seed `--seed`). Ours: the ascend310 build's deploy .pb, run in TensorFlow with the Ascend op
library (`amct_targets.amct_tensorflow`), each Keras layer matched to the last node of its
name scope that a node outside the scope reads (the AscendDequant of a quantized layer).
TFLite: model_zoo's full-integer conversion, interpreted with
`experimental_preserve_all_tensors`, each layer matched to the tensor of the same name scope
and shape, dequantized (the last layer: the interpreter's float output). Float: the Keras
model's layer outputs.
Results: benchmarks/results/zoo_blocks_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import model_zoo  # noqa: E402  (puts tests/ on the path)
from zoo_small import sqnr_cosine  # noqa: E402


def scope_pattern(layer: str) -> re.Pattern:
    return re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/")


def ours_tensors(pb: Path, layers: list[str], held_out: np.ndarray) -> dict:
    import tensorflow as tf

    import amct_targets.amct_tensorflow  # noqa: F401  (registers the Ascend ops)

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(pb.read_bytes())
    consumers: dict[str, set[str]] = {}
    for node in graph_def.node:
        for source in node.input:
            consumers.setdefault(source.lstrip("^").split(":")[0], set()).add(node.name)
    chosen = {}
    for layer in layers:  # the layer's output: the last node of its scope read from outside
        inside = scope_pattern(layer)
        exits = [n.name for n in graph_def.node if inside.search(n.name) and n.op != "Const"
                 and any(not inside.search(c) for c in consumers.get(n.name, ()))]
        chosen[layer] = exits[-1] if exits else None
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
        feed = next(n.name for n in graph_def.node if n.op == "Placeholder") + ":0"
        fetch = {k: graph.get_tensor_by_name(v + ":0") for k, v in chosen.items() if v}
        with tf.compat.v1.Session(graph=graph) as session:  # the .pb has a static batch of 1
            runs = [session.run(fetch, {feed: held_out[i:i + 1]}) for i in range(len(held_out))]
    return {k: (chosen[k], np.concatenate([r[k] for r in runs])) for k in fetch}


def tflite_tensors(flatbuffer: bytes, layers: list[str], shapes: dict,
                   held_out: np.ndarray, final: str) -> dict:
    """`final`: the model's last layer, read from the interpreter's (float) output, since
    TFLite names the tensors after a fused activation by the signature, not the layer."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=flatbuffer,
                                      experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = interpreter.get_tensor_details()
    chosen = {}
    for layer in layers:
        found = [d for d in details if scope_pattern(layer).search(d["name"].split(";")[0])
                 and list(d["shape"][1:]) == list(shapes[layer][1:])]
        if found:
            chosen[layer] = found[-1]
    if final in layers:
        chosen[final] = interpreter.get_output_details()[0]
    source = interpreter.get_input_details()[0]
    values = {k: [] for k in chosen}
    for i in range(len(held_out)):
        interpreter.set_tensor(source["index"], held_out[i:i + 1])
        interpreter.invoke()
        for layer, d in chosen.items():
            value = interpreter.get_tensor(d["index"]).astype(np.float64)
            scale, zero = d["quantization"]
            values[layer].append((value - zero) * scale if scale else value)
    return {k: (chosen[k]["name"].split(";")[0], np.concatenate(v)) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="EfficientNetB0", choices=[  # saved as .keras
        n for n, v in model_zoo.ZOO.items() if v[0] in ("keras.applications", "zoo_small")])
    parser.add_argument("--layers", default=r"(project_bn|_add|top_bn)$",
                        help="regex over the Keras layer names to compare")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import amct_targets as at

    work = Path(tempfile.mkdtemp(prefix=f"zoo_blocks_{args.model}_"))
    try:
        prep = model_zoo.phase_prepare(args.model, work, args.seed)
        model = keras.models.load_model(work / prep["source"], compile=False)
        layers = [layer.name for layer in model.layers if re.search(args.layers, layer.name)]
        if not layers:  # before any build or conversion
            sys.exit(f"zoo_blocks: no layer of {args.model} matches --layers {args.layers!r}; "
                     f"its layers include {[x.name for x in model.layers[1:8]]}")
        at.build(str(work / prep["source"]), "ascend310", calib=work / "calib.npz",
                 output_dir=work / "out")
        flatbuffer = model_zoo.tflite_int8(work, prep["source"])
        held_out = model_zoo._load_npz(work / "held_out.npz")
        probe = keras.Model(model.inputs, [model.get_layer(n).output for n in layers])
        reference = dict(zip(layers, (np.asarray(t) for t in probe(held_out, training=False))))
        ours = ours_tensors(work / "out" / "ascend310" / "model.pb", layers, held_out)
        tflite = tflite_tensors(flatbuffer, layers, {k: v.shape for k, v in reference.items()},
                                held_out, model.layers[-1].name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sqnr_db = lambda k, got: round(sqnr_cosine(reference[k], got[k][1])[0], 2)  # noqa: E731
    rows = [{"layer": k, "ours_db": sqnr_db(k, ours) if k in ours else None,
             "tflite_db": sqnr_db(k, tflite) if k in tflite else None,
             "ours_node": ours.get(k, (None,))[0],
             "tflite_tensor": tflite.get(k, (None,))[0]} for k in layers]
    out = HERE / "results" / f"zoo_blocks_{args.model}"
    meta = {"model": args.model, "seed": args.seed, "held_out": len(held_out),
            "layers": args.layers, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [f"# {args.model}: SQNR vs float per block, ours (ascend310) and TFLite INT8", "",
             f"Weight seed {args.seed}, {len(held_out)} held-out crops. Reproduce: `python "
             f"benchmarks/zoo_blocks.py --model {args.model} --layers '{args.layers}'"
             f"{f' --seed {args.seed}' if args.seed else ''}`.", "",
             "| layer | ours dB | TFLite dB | ours - TFLite |", "|---|---:|---:|---:|"]
    for r in rows:
        both = r["ours_db"] is not None and r["tflite_db"] is not None
        diff = f"{r['ours_db'] - r['tflite_db']:+.2f}" if both else ""
        lines.append(f"| {r['layer']} | {r['ours_db']} | {r['tflite_db']} | {diff} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
