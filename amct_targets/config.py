"""The build config (`--config`, YAML or JSON): read safely and validate against its schema."""
from __future__ import annotations

import difflib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema

from amct_targets.errors import ConfigError
from amct_targets.safe_io import CONFIG_MAX_BYTES, load_yaml, read_json, read_text, schema_message


def _schema() -> dict:
    text = resources.files("amct_targets.schemas").joinpath("build_config.schema.json")
    return json.loads(text.read_text(encoding="utf-8"))


def load_build_config(source: str | os.PathLike | Mapping[str, Any] | None) -> tuple[dict, str]:
    """Returns (config, where) where `where` names the source in messages."""
    if source is None:
        return {}, "config"
    if isinstance(source, Mapping):
        config, where = dict(source), "config"
    else:
        path = Path(source)
        text = read_text(path, "build config", ConfigError, CONFIG_MAX_BYTES)
        config = load_yaml(text, path, "build config", ConfigError)  # JSON is YAML too
        where = str(path)
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: the build config must be a mapping with a `passes:` key")
    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(f"{where}: {schema_message(error)}")
    return normalize_build_config(config, where), where


def normalize_build_config(config: Mapping[str, Any], where: str = "config") -> dict:
    """The one adapter from AMCT's config vocabulary to the passes': AMCT keeps its fusion
    switches in the quant config (`do_fusion`, `skip_fusion_layers`, also inside the
    `amct_config` file it names); here they become the `fold_bn` section's `enabled` and
    `skip_layers`, so every pass reads only its own section."""
    config = dict(config)
    passes = dict(config.get("passes") or {})
    quant = passes.get("quantize") or {}
    if not isinstance(quant, Mapping):
        return config
    merged, _ = merge_amct_section(quant, f"{where}: passes.quantize", "quantization")
    fold = dict(passes.get("fold_bn") or {})
    if merged.get("do_fusion") is False and "enabled" not in fold:
        fold.update(enabled=False, disabled_reason="do_fusion: false in the quantize config")
    skip = list(merged.get("skip_fusion_layers") or [])
    if skip:
        fold["skip_layers"] = sorted(set(fold.get("skip_layers", [])) | set(map(str, skip)))
    if fold:
        passes["fold_bn"] = fold
        config["passes"] = passes
    return config


def merge_amct_section(section: Mapping[str, Any], where: str, what: str) -> tuple[dict, str]:
    """A pass section merged over the AMCT JSON file it names in `amct_config` (if any).

    Returns (merged mapping, where), `where` being the file when one was read. Per-layer
    mappings merge key by key; anything else in the section replaces the file's value.
    """
    merged: dict[str, Any] = {}
    if section.get("amct_config"):
        path = Path(section["amct_config"])
        loaded = read_json(path, f"AMCT {what} config", ConfigError, CONFIG_MAX_BYTES)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: an AMCT {what} config must be a JSON object")
        merged.update(loaded)
        where = str(path)
    for key, value in section.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged, where


def split_amct_section(section: Mapping[str, Any], global_keys, where: str, what: str,
                       layer_keys: Iterable[str] | None = None
                       ) -> tuple[dict, dict[str, dict], str]:
    """(global options, {layer: options}, where) of an AMCT-style section: known global
    keys, and one mapping per layer name; anything else is an unknown option (with the
    closest known options suggested). `layer_keys`, when given, are the keys a layer's
    mapping may hold."""
    merged, where = merge_amct_section(section, where, what)
    layers = {k: dict(v) for k, v in merged.items()
              if k not in global_keys and isinstance(v, Mapping)}
    for key in merged:
        if key not in global_keys and key not in layers:
            check_known(key, global_keys, where, f"{what} option")
    if layer_keys is not None:
        for layer, entry in layers.items():
            for key in entry:
                check_known(key, layer_keys, where, "per-layer option", f"of layer '{layer}'")
    return {k: v for k, v in merged.items() if k in global_keys}, layers, where


def check_known(name: Any, known: Iterable[str], where: str, what: str, context: str = "",
                candidates: Iterable[str] | None = None) -> None:
    """A ConfigError naming `name` and the closest of `candidates` (default: `known`) unless
    `name` is one of `known`."""
    known = sorted(str(k) for k in known)
    if name in known:
        return
    text = str(name)
    if candidates is not None:
        known = sorted(str(k) for k in candidates)
    close = difflib.get_close_matches(text, known, n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
            f"known: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}" if known
            else "nothing is known here")
    where_part = f" {context}" if context else ""
    raise ConfigError(f"{where}: unknown {what} {text[:80]!r}{where_part}; {hint}")


def schema_error(schema: Mapping[str, Any], instance: Any) -> str | None:
    """The best JSON-Schema error of `instance` as 'path: message' (kept short), or None."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    path = ".".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    return f"{path}: {message}" if path else message
