"""Device profiles: load YAML, resolve `extends:`, validate against the JSON Schema, look up.

Profiles come, in this order (a later one with the same name replaces an earlier one), from:
the built-in `targets/` folder, plugins (`register_targets`), the folders in
AMCT_TARGETS_PATH, and `--targets-dir` folders.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema

from amct_targets.errors import ProfileError
from amct_targets.hooks import hookimpl
from amct_targets.safe_io import PROFILE_MAX_BYTES, load_yaml, read_text, schema_message

TARGETS_PATH_ENV = "AMCT_TARGETS_PATH"
REQUIRED_CONCRETE = ("display_name", "family", "soc_version", "soc_versions", "capabilities",
                     "quantizable_ops", "atc")


def builtin_targets_dir() -> Path:
    return Path(str(resources.files("amct_targets.targets")))


@hookimpl
def register_targets(registry):
    registry.add_dir(builtin_targets_dir())


def _schema() -> dict:
    text = resources.files("amct_targets.schemas").joinpath("device_profile.schema.json")
    return json.loads(text.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Capability:
    key: str
    supported: bool
    reason: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceProfile:
    """A validated, merged profile. `data` is the merged mapping; `path` the file it came from."""

    name: str
    path: Path
    data: Mapping[str, Any]
    origin: str = "builtin"

    @property
    def display_name(self) -> str:
        return self.data.get("display_name", self.name)

    @property
    def soc_version(self) -> str:
        return self.data["soc_version"]

    @property
    def abstract(self) -> bool:
        return bool(self.data.get("abstract", False))

    def capability(self, key: str) -> Capability:
        raw = self.data.get("capabilities", {}).get(key, False)
        if isinstance(raw, bool):
            supported, params, reason = raw, {}, ""
        else:
            supported = raw.get("supported", True)
            reason = raw.get("reason", "")
            params = {k: v for k, v in raw.items() if k not in ("supported", "reason", "source")}
        if not supported and not reason:
            reason = f"{self.display_name} does not support '{key}' (profile {self.path.name})"
        return Capability(key, supported, reason, params)

    def supported_capabilities(self) -> list[str]:
        return sorted(k for k in self.data.get("capabilities", {}) if self.capability(k).supported)

    @property
    def atc(self) -> Mapping[str, Any]:
        return self.data.get("atc", {})

    def to_json(self) -> dict:
        caps = {}
        for key in sorted(self.data.get("capabilities", {})):
            cap = self.capability(key)
            caps[key] = {"supported": cap.supported, **({"reason": cap.reason} if cap.reason else {}),
                         **dict(cap.params)}
        return {"name": self.name, "display_name": self.display_name,
                "family": self.data.get("family", ""), "soc_version": self.soc_version,
                "soc_versions": list(self.data.get("soc_versions", [])),
                "compute": self.data.get("compute", {}), "capabilities": caps,
                "path": str(self.path), "origin": self.origin}


def _read_yaml(path: Path) -> dict:
    text = read_text(path, "profile", ProfileError, PROFILE_MAX_BYTES)
    data = load_yaml(text, path, "profile", ProfileError)
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a YAML mapping with at least `name:`")
    return data


def _validate(data: Mapping, path: Path, schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise ProfileError(f"{path}: {schema_message(error)}; see the schema "
                           "amct_targets/schemas/device_profile.schema.json")


def _merge(base: Mapping, override: Mapping) -> dict:
    """Deep merge of mappings; lists and scalars in `override` replace those in `base`."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class ProfileSet:
    """All profiles found in the given sources, resolved and validated."""

    def __init__(self, sources: Iterable[tuple[Path, str]], capability_keys: Iterable[str]):
        self.capability_keys = set(capability_keys)
        self._raw: dict[str, tuple[dict, Path, str]] = {}
        schema = _schema()
        for source, origin in sources:
            files = sorted(source.glob("*.yaml")) if source.is_dir() else [source]
            if not source.exists():
                raise ProfileError(f"{source}: profile folder or file does not exist "
                                   f"(from {origin}); check --targets-dir / {TARGETS_PATH_ENV}")
            for path in files:
                data = _read_yaml(path)
                _validate(data, path, schema)
                if data["name"] != path.stem:
                    raise ProfileError(f"{path}: $.name: '{data['name']}' must equal the file "
                                       f"name '{path.stem}'")
                self._raw[data["name"]] = (data, path, origin)
        self._resolved: dict[str, DeviceProfile] = {}
        for name in sorted(self._raw):
            self._resolve(name, ())
        self.schema = schema

    def _resolve(self, name: str, chain: tuple[str, ...]) -> DeviceProfile:
        if name in self._resolved:
            return self._resolved[name]
        data, path, origin = self._raw[name]
        if name in chain:
            raise ProfileError(f"{path}: $.extends: profiles extend each other in a cycle: "
                               f"{' -> '.join(chain + (name,))}")
        merged = dict(data)
        parent_name = data.get("extends")
        if parent_name:
            if parent_name not in self._raw:
                raise ProfileError(f"{path}: $.extends: no profile named '{parent_name}'; "
                                   f"known: {', '.join(sorted(self._raw))}")
            parent = self._resolve(parent_name, chain + (name,))
            base = {k: v for k, v in parent.data.items() if k not in ("abstract", "name")}
            merged = _merge(base, data)
        if not merged.get("abstract"):
            missing = [k for k in REQUIRED_CONCRETE if k not in merged]
            if missing:
                raise ProfileError(f"{path}: $: missing required field(s) {missing} (directly or "
                                   "through `extends:`); add them or mark the profile abstract")
            if merged["soc_version"] not in merged["soc_versions"]:
                raise ProfileError(f"{path}: $.soc_version: '{merged['soc_version']}' is not one "
                                   f"of $.soc_versions {merged['soc_versions']}")
        for key in merged.get("capabilities", {}):
            if key not in self.capability_keys:
                raise ProfileError(f"{path}: $.capabilities.{key}: unknown capability key; known "
                                   f"keys: {', '.join(sorted(self.capability_keys))} (a plugin "
                                   "may declare more with register_capabilities)")
        profile = DeviceProfile(name, path, merged, origin)
        self._resolved[name] = profile
        return profile

    def targets(self) -> list[DeviceProfile]:
        """Concrete (non-abstract) profiles, sorted by name."""
        return [p for n, p in sorted(self._resolved.items()) if not p.abstract]

    def get(self, name: str) -> DeviceProfile:
        profile = self._resolved.get(name)
        if profile is None or profile.abstract:
            known = ", ".join(p.name for p in self.targets())
            raise ProfileError(f"unknown target '{name}'; known targets: {known} (add your own "
                               f"with --targets-dir DIR or {TARGETS_PATH_ENV})")
        return profile

    def select(self, names: Iterable[str]) -> list[DeviceProfile]:
        """Resolve target names; `all` means every concrete profile. Keeps order, no repeats."""
        chosen: list[DeviceProfile] = []
        for name in names:
            for profile in (self.targets() if name == "all" else [self.get(name)]):
                if profile not in chosen:
                    chosen.append(profile)
        return chosen


def user_profile_dirs(extra_dirs: Iterable[str | os.PathLike] = ()) -> list[tuple[Path, str]]:
    sources = [(Path(p), TARGETS_PATH_ENV)
               for p in os.environ.get(TARGETS_PATH_ENV, "").split(os.pathsep) if p]
    sources += [(Path(p), "--targets-dir") for p in extra_dirs]
    return sources
