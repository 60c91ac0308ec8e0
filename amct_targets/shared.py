"""Work shared across the targets of one build (`--target all`): a pass result memo.

A pass whose `shared_key(model, ctx)` returns a JSON-able value (not None) declares that its
result depends only on its input model, its options, the build's data and config, and that
value (the parts of the target profile it reads). The builder then runs it once per distinct

    sha256(input model, pass name, plugin, effective options, build config, shared_key)

and gives every later target with the same key the same output Model, a copy of the report
entry and byte copies of the files the pass wrote into its target folder. Passes without a
`shared_key` (third-party passes, unless they declare one) run per target as before.

Because a pass's output model is the object the next pass receives, a chain of shared passes
(fold_bn -> quantize) keeps hitting: the digest of a model already seen is remembered by
identity and never recomputed.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amct_targets.graph.model import Model


@dataclass
class SharedResult:
    """One pass's result as the first target that ran it left it."""

    target: str
    model: Model
    layers: list
    notes: list
    metrics: dict
    artifacts: dict
    files: dict[str, bytes]     # path relative to the target folder -> bytes


def _files(folder: Path | None) -> dict[str, int]:
    if folder is None or not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()}


class PassMemo:
    """The results of shared passes during one build (held in memory until it ends)."""

    def __init__(self, build_config: Any = None):
        self._results: dict[str, SharedResult] = {}
        self._finished: dict[int, tuple[Model, tuple]] = {}
        self._digests: dict[int, tuple[Model, str]] = {}
        self._config = json.dumps(build_config or {}, sort_keys=True, default=repr)

    def digest(self, model: Model) -> str:
        """sha256 of everything a Model holds; remembered per model object."""
        known = self._digests.get(id(model))
        if known is not None and known[0] is model:
            return known[1]
        h = hashlib.sha256(model.serialize())
        h.update(repr((model.inputs, model.outputs, model.source, model.name,
                       model.notes)).encode())
        for name in sorted(model.weight_masks):
            mask = model.weight_masks[name]
            h.update(f"{name}\0{mask.dtype}\0{mask.shape}\0".encode())
            h.update(mask.tobytes())
        self._digests[id(model)] = (model, h.hexdigest())
        return self._digests[id(model)][1]

    def key(self, registered, model: Model, ctx, scope: Any) -> str | None:
        """The memo key of running `registered` on `model` with `ctx`, None when unshared."""
        if scope is None:
            return None
        parts = [self.digest(model), registered.name, registered.plugin,
                 json.dumps(dict(ctx.config), sort_keys=True, default=repr), self._config,
                 json.dumps(scope, sort_keys=True, default=repr)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def get(self, key: str | None) -> SharedResult | None:
        return self._results.get(key) if key is not None else None

    def listing(self, folder: Path | None) -> dict[str, int]:
        """What `folder` holds before a pass runs (to find the files the pass writes)."""
        return _files(folder)

    def put(self, key: str | None, target: str, model: Model, report, folder: Path | None,
            before: dict[str, int]) -> None:
        if key is None:
            return
        after = _files(folder)
        written = sorted(p for p, stamp in after.items() if before.get(p) != stamp)
        self._results[key] = SharedResult(
            target, model, copy.deepcopy(report.layers), list(report.notes),
            copy.deepcopy(report.metrics), dict(report.artifacts),
            {p: (folder / p).read_bytes() for p in written})

    def finish(self, model: Model, make) -> tuple:
        """make(model), remembered per Model object: targets whose passes ended on the same
        (shared) model emit the same .pb without serializing it again."""
        known = self._finished.get(id(model))
        if known is None or known[0] is not model:
            known = self._finished[id(model)] = (model, tuple(make(model)))
        return known[1]

    @staticmethod
    def replay(result: SharedResult, report, folder: Path | None) -> Model:
        """Give a later target the shared result: its report entry and its files."""
        report.layers.extend(copy.deepcopy(result.layers))
        report.notes.extend(result.notes)
        report.metrics.update(copy.deepcopy(result.metrics))
        report.artifacts.update(result.artifacts)
        if folder is not None:
            for relative, data in result.files.items():
                path = folder / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        return result.model
