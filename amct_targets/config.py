"""The build config (`--config`, YAML or JSON): read safely and validate against its schema."""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

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
    return config, where


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


def split_amct_section(section: Mapping[str, Any], global_keys, where: str, what: str
                       ) -> tuple[dict, dict[str, dict], str]:
    """(global options, {layer: options}, where) of an AMCT-style section: known global
    keys, and one mapping per layer name; anything else is an unknown option."""
    merged, where = merge_amct_section(section, where, what)
    layers = {k: dict(v) for k, v in merged.items()
              if k not in global_keys and isinstance(v, Mapping)}
    unknown = [k for k in merged if k not in global_keys and k not in layers]
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown {what} option")
    return {k: v for k, v in merged.items() if k in global_keys}, layers, where
