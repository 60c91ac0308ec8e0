"""`amct-targets amct calibration|convert`: AMCT's command line (`amct_tensorflow
calibration|convert`, ASCEND_FACTS 1) on amct_targets.amct_tensorflow.

    amct-targets amct calibration --model x.pb --outputs "T:0" --input_shape "input:32,224,224,3"
        --data_type float32 --data_dir DIR --save_path out/model [--batch_num N]
        [--calibration_config F.cfg]
    amct-targets amct calibration --model x.pb --outputs "T:0" --save_path out/model
        --evaluator evaluator.py [--calibration_config F.cfg]
    amct-targets amct convert --model qat.pb --outputs "T:0" --save_path out/model
        [--record_file F]

Data folders hold one raw .bin file per batch (sorted by name), of the input's shape and
`--data_type`; several inputs: `--input_shape "a:1,8;b:1,4"` and `--data_dir "dirA;dirB"`
(and `--data_type "float32;int32"`). With `--evaluator`, the file must define an instance
`evaluator` of an AutoCalibrationEvaluatorBase subclass, or exactly one such subclass taking no
arguments; accuracy_based_auto_calibration then runs. Writes `<save_path>_quantized.pb`,
`<save_path>_quant.json`, and `config.json` + `record.txt` beside them.

This module imports no TensorFlow until a command runs (the CLI's listing stays fast).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from amct_targets.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("amct", help="AMCT's command line: calibration (PTQ) and convert (QAT)")
    commands = p.add_subparsers(dest="amct_command", required=True)
    c = commands.add_parser("calibration", help="post-training quantization of a frozen .pb")
    c.add_argument("--model", required=True, help="frozen .pb")
    c.add_argument("--outputs", required=True, help='output tensors, e.g. "prob:0;aux:0"')
    c.add_argument("--save_path", required=True, help="prefix of the files written")
    c.add_argument("--input_shape", help='"input:32,224,224,3[;input2:...]"')
    c.add_argument("--data_type", help='numpy dtype of each input\'s .bin files, ";"-separated')
    c.add_argument("--data_dir", help='folder of .bin batches per input, ";"-separated')
    group = c.add_mutually_exclusive_group()
    group.add_argument("--batch_num", type=int, help="calibration batches (default 1)")
    group.add_argument("--calibration_config", help="simple config (.cfg, protobuf text)")
    c.add_argument("--evaluator", help="Python file with the auto-calibration evaluator")
    v = commands.add_parser("convert", help="a TF QAT .pb (FakeQuantWithMinMaxVars) to deploy")
    v.add_argument("--model", required=True)
    v.add_argument("--outputs", required=True)
    v.add_argument("--save_path", required=True)
    v.add_argument("--record_file", help="also write the derived record here")


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def _inputs(args) -> list[tuple[str, tuple[int, ...], str, list[Path]]]:
    """(tensor name, shape, dtype, sorted .bin files) per input."""
    import numpy as np

    shapes, dirs = _split(args.input_shape), _split(args.data_dir)
    types = _split(args.data_type) or ["float32"]
    if not shapes or not dirs:
        raise ConfigError("amct calibration: give --input_shape and --data_dir (or --evaluator)")
    if len(dirs) != len(shapes):
        raise ConfigError(f"--data_dir names {len(dirs)} folder(s) for {len(shapes)} input(s) "
                          "of --input_shape; separate them with ';' in the same order")
    if len(types) == 1:
        types = types * len(shapes)
    if len(types) != len(shapes):
        raise ConfigError(f"--data_type gives {len(types)} type(s) for {len(shapes)} inputs")
    result = []
    for spec, folder, dtype in zip(shapes, dirs, types):
        name, _, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(","))
            np.dtype(dtype)
        except (ValueError, TypeError):
            raise ConfigError(f"--input_shape '{spec}' / --data_type '{dtype}': expected "
                              "name:d1,d2,... with positive sizes and a numpy dtype") from None
        if not name or any(d <= 0 for d in shape):
            raise ConfigError(f"--input_shape '{spec}': expected name:d1,d2,... (sizes > 0)")
        files = sorted(Path(folder).glob("*.bin"))
        if not files:
            raise ConfigError(f"--data_dir {folder}: no .bin file (one raw file per batch)")
        result.append((name if ":" in name else f"{name}:0", shape, dtype, files))
    return result


def _read_bin(path: Path, shape, dtype):
    import numpy as np

    data = np.fromfile(path, dtype=dtype)
    if data.size != int(np.prod(shape)):
        raise ConfigError(f"{path}: {data.size} {dtype} values; --input_shape needs "
                          f"{int(np.prod(shape))} ({','.join(map(str, shape))})")
    return data.reshape(shape)


def _load_evaluator(path: str):
    from amct_targets.amct_tensorflow.common.auto_calibration import \
        AutoCalibrationEvaluatorBase

    spec = importlib.util.spec_from_file_location("amct_user_evaluator", path)
    if spec is None or not Path(path).is_file():
        raise ConfigError(f"--evaluator {path}: no such Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = getattr(module, "evaluator", None)
    if isinstance(instance, AutoCalibrationEvaluatorBase):
        return instance
    classes = [v for v in vars(module).values() if isinstance(v, type)
               and issubclass(v, AutoCalibrationEvaluatorBase)
               and v is not AutoCalibrationEvaluatorBase]
    if len(classes) != 1:
        raise ConfigError(f"--evaluator {path}: define `evaluator = YourEvaluator(...)` (an "
                          "AutoCalibrationEvaluatorBase subclass instance); found "
                          f"{len(classes)} subclass(es) and no instance")
    return classes[0]()


def calibration(args) -> int:
    import tensorflow as tf

    import amct_targets.amct_tensorflow as amct
    from amct_targets.graph.load import read_graph_def

    if args.evaluator and (args.data_dir or args.input_shape or args.data_type):
        raise ConfigError("--evaluator cannot be combined with --input_shape, --data_type or "
                          "--data_dir (the evaluator feeds the data)")
    outputs = _split(args.outputs)
    prefix = Path(args.save_path)
    config_file, record_file = prefix.parent / "config.json", prefix.parent / "record.txt"
    graph_def = read_graph_def(args.model)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    amct.create_quant_config(str(config_file), graph, batch_num=args.batch_num or 1,
                             config_defination=args.calibration_config)
    if args.evaluator:
        amct.accuracy_based_auto_calibration(args.model, outputs, str(record_file),
                                             str(config_file), str(prefix),
                                             _load_evaluator(args.evaluator))
        return 0
    inputs = _inputs(args)
    import json
    batch_num = int(json.loads(config_file.read_text())["batch_num"])
    for name, _, _, files in inputs:
        if len(files) < batch_num:
            raise ConfigError(f"--data_dir for '{name}' holds {len(files)} .bin file(s); "
                              f"batch_num={batch_num} needs one per batch")
    amct.quantize_model(graph, str(config_file), str(record_file))
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.variables_initializer(graph.get_collection("variables")))
        fetches = [graph.get_tensor_by_name(o if ":" in o else f"{o}:0") for o in outputs]
        for index in range(batch_num):
            feed = {name: _read_bin(files[index], shape, dtype)
                    for name, shape, dtype, files in inputs}
            sess.run(fetches, feed)
    amct.save_model(args.model, outputs, str(record_file), str(prefix))
    return 0


def convert(args) -> int:
    import amct_targets.amct_tensorflow as amct

    amct.convert_qat_model(args.model, _split(args.outputs), args.save_path,
                           record_file=args.record_file)
    return 0


def cmd_amct(args) -> int:
    return calibration(args) if args.amct_command == "calibration" else convert(args)
