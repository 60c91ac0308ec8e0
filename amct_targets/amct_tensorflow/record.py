"""AMCT's record file (protobuf text, ASCEND_FACTS 2):

    record {
      key: "<layer>"
      value { scale_d: 0.0235 offset_d: -128 scale_w: 0.01 ... offset_w: 0 ... skip_fusion: false }
    }

`read_record` checks what save_model / convert_model need, with AMCT's FAQ errors as clear
messages: an empty record (the calibration batches were not run), NaN or infinite scales,
an offset outside int8, scale_w and offset_w of different lengths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from amct_targets.amct_tensorflow import prototext
from amct_targets.errors import ConfigError


@dataclass(frozen=True)
class LayerRecord:
    scale_d: float
    offset_d: int
    scale_w: tuple[float, ...]
    offset_w: tuple[int, ...]
    skip_fusion: bool = False


def _float(value: float) -> str:
    return f"{float(value):.9g}"


def record_text(records: Mapping[str, LayerRecord]) -> str:
    lines = []
    for layer, rec in records.items():
        lines += ["record {", f'  key: "{layer}"', "  value {",
                  f"    scale_d: {_float(rec.scale_d)}", f"    offset_d: {int(rec.offset_d)}"]
        lines += [f"    scale_w: {_float(s)}" for s in rec.scale_w]
        lines += [f"    offset_w: {int(o)}" for o in rec.offset_w]
        lines += [f"    skip_fusion: {'true' if rec.skip_fusion else 'false'}", "  }", "}"]
    return "\n".join(lines) + "\n"


def write_record(path: str | Path, records: Mapping[str, LayerRecord]) -> None:
    path = Path(path)
    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(record_text(records), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"record file {path}: cannot write it ({exc.strerror})") from None


def read_record(path: str | Path) -> dict[str, LayerRecord]:
    """{layer: LayerRecord} of an AMCT record file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"record file {path} does not exist: run quantize_model and then "
                          "batch_num inference batches (session.run on the model's outputs) "
                          "before save_model, or give convert_model a record you wrote") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"record file {path}: cannot read it ({exc})") from None
    fields = prototext.parse(text, f"record file {path}")
    unknown = sorted(set(fields) - {"record", "prune_record"})
    if unknown:
        raise ConfigError(f"record file {path}: unknown field '{unknown[0]}'; an AMCT record "
                          "holds 'record { key: ... value { ... } }' entries")
    entries = fields.get("record", [])
    if not entries:
        raise ConfigError(f"record file {path} is empty: no layer has quantization factors. "
                          "The calibration did not finish: after quantize_model, run exactly "
                          "batch_num batches (the batch_num of the quant config) through the "
                          "model's outputs in one session, then call save_model")
    records = {}
    for entry in entries:
        layer = prototext.one(entry, "key", str(path))
        values = entry.get("value") or [{}]
        if not isinstance(layer, str) or not isinstance(values[-1], dict):
            raise ConfigError(f"record file {path}: every record needs key: \"<layer>\" and "
                              "value { ... }")
        records[layer] = _layer_record(values[-1], layer, path)
    return records


def _layer_record(value: dict, layer: str, path: Path) -> LayerRecord:
    where = f"record file {path}: layer '{layer}'"
    for key in ("scale_d", "offset_d", "scale_w"):
        if key not in value:
            raise ConfigError(f"{where} has no {key}")
    scale_d = float(prototext.one(value, "scale_d", where))
    offset_d = prototext.one(value, "offset_d", where)
    scale_w = tuple(float(s) for s in value["scale_w"])
    offset_w = tuple(int(o) for o in value.get("offset_w", [0] * len(scale_w)))
    bad = [s for s in (scale_d, *scale_w) if not math.isfinite(s) or s <= 0]
    if bad:
        raise ConfigError(f"{where}: scale {bad[0]} is not a positive finite number (NaN or "
                          "inf scales come from NaN/inf activations or weights): check the "
                          "calibration data's preprocessing and the model's weights, or add "
                          "the layer to skip_layers")
    if not isinstance(offset_d, int) or not -128 <= offset_d <= 127:
        raise ConfigError(f"{where}: offset_d {offset_d} is not an int8 value")
    if len(offset_w) != len(scale_w):
        raise ConfigError(f"{where}: {len(scale_w)} scale_w but {len(offset_w)} offset_w")
    if any(offset_w):
        raise ConfigError(f"{where}: offset_w must be 0 (AMCT quantizes weights symmetrically)")
    return LayerRecord(scale_d, offset_d, scale_w, offset_w,
                       bool(prototext.one(value, "skip_fusion", where, False)))
