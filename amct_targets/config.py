"""The build config (`--config`, YAML or JSON): read safely and validate against its schema."""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from amct_targets.errors import ConfigError


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
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the build config ({exc.strerror})") from None
        try:
            config = yaml.safe_load(text)  # JSON is YAML too
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}:" if mark else ""
            raise ConfigError(f"{path}:{line} not valid YAML/JSON: "
                              f"{getattr(exc, 'problem', None) or exc}") from None
        where = str(path)
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: the build config must be a mapping with a `passes:` key")
    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(f"{where}: {error.json_path}: {error.message}")
    return config, where
