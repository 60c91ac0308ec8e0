"""Small real plugin modules written to disk and loaded with --plugin in tests."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

DATA_PASS = '''
from amct_targets import hookimpl
from amct_targets.passes.base import CompressionPass


class CountNodes(CompressionPass):
    """Needs calibration data; records how many calibration samples it saw."""
    name = "count_nodes"
    summary = "Count graph nodes and calibration samples"
    requires = ("int8",)
    needs = ("calibration",)
    enabled_by_default = True
    after = ("fold_bn",)
    config_schema = {"type": "object", "properties": {"limit": {"type": "integer",
                     "minimum": 1}}}

    def apply(self, model, ctx):
        samples = len(next(iter(ctx.calibration.values())))
        ctx.report.metrics.update(nodes=len(model.graph_def.node), samples=samples)
        return model


class EarlyRetrain(CompressionPass):
    name = "early_retrain"
    summary = "A retrain-stage pass that does nothing but must come first"
    stage = "retrain"
    enabled_by_default = True

    def apply(self, model, ctx):
        return model


@hookimpl
def register_passes(registry):
    registry.add(CountNodes())
    registry.add(EarlyRetrain())
'''

CONFLICT_PASSES = '''
from amct_targets import hookimpl
from amct_targets.passes.base import CompressionPass


class _Touch(CompressionPass):
    enabled_by_default = True
    def layers(self, model, config):
        return [n.name for n in model.graph_def.node if n.op in self.ops]
    def apply(self, model, ctx):
        return model


class TouchConvs(_Touch):
    name, summary, ops, exclusive_with = "touch_convs", "claims convs", ("Conv2D",), ("touch_all",)


class TouchAll(_Touch):
    name, summary, ops = "touch_all", "claims convs and matmuls", ("Conv2D", "MatMul")


class TouchMatmul(_Touch):
    name, summary, ops, exclusive_with = "touch_matmul", "claims matmuls", ("MatMul",), ("touch_convs",)


@hookimpl
def register_passes(registry):
    for cls in (TouchConvs, TouchAll, TouchMatmul):
        registry.add(cls())
'''

RAISING_PASS = '''
from amct_targets import hookimpl
from amct_targets.passes.base import CompressionPass


class Boom(CompressionPass):
    name, summary, enabled_by_default = "boom", "raises", True
    def apply(self, model, ctx):
        raise RuntimeError("kaboom")


@hookimpl
def register_passes(registry):
    registry.add(Boom())
'''

BAD_HOOK = '''
from amct_targets import hookimpl

@hookimpl
def register_passes(registry, unexpected_argument):
    pass
'''

UNKNOWN_HOOK = '''
from amct_targets import hookimpl

@hookimpl
def register_everything(registry):
    pass
'''

FLAG_PLUGIN = '''
from amct_targets import hookimpl

@hookimpl
def atc_options(profile, plan, model):
    return ["--log=info", "--soc_version=ShouldBeIgnored"]

SEEN = []

@hookimpl
def build_finished(report, target_dir):
    SEEN.append((report["target"], sorted(p.name for p in target_dir.iterdir())))
'''


def write_plugin(folder: Path, module: str, source: str, monkeypatch) -> str:
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    sys.modules.pop(module, None)
    return module
