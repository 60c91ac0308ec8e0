"""Render report.json dicts to self-contained HTML pages with Jinja2.

Pages inline their CSS, JavaScript and SVG charts: nothing is fetched, so a report opens on
an offline Ascend host or from an e-mail attachment. Autoescaping is on for every template:
layer names, profile strings and paths come from user files and are shown as text only.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from markupsafe import Markup

from amct_targets.errors import AmctError
from amct_targets.report import charts
from amct_targets.report.view import TargetView, number, target_view

TARGET_PAGE, INDEX_PAGE, REPORT_JSON = "report.html", "index.html", "report.json"
DASH = "–"


class ReportError(AmctError):
    """A build folder has no report to render, or a report.json cannot be read."""


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("amct_targets.report", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(num=format_number, count=format_count, size=format_bytes,
                       cell=format_cell, sortkey=sort_key,
                       breakable=breakable)
    assets = resources.files("amct_targets.report") / "templates"
    # Static assets are read as-is, never parsed as templates, and inlined verbatim.
    env.globals.update(style=Markup((assets / "report.css").read_text(encoding="utf-8")),
                       script=Markup((assets / "report.js").read_text(encoding="utf-8")),
                       DASH=DASH)
    return env


def format_number(value: Any, spec: str = ".4g") -> str:
    value = number(value)
    return DASH if value is None else format(value, spec)


def format_count(value: Any) -> str:
    value = number(value)
    return DASH if value is None else f"{value:,.0f}"


def format_bytes(value: Any) -> str:
    value = number(value)
    if value is None:
        return DASH
    if abs(value) < 1024:
        return f"{value:,.0f} B"
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if abs(value) < 1024 or unit == "GB":
            break
    return f"{value:,.1f} {unit}"


def format_cell(value: Any) -> str:
    """Any JSON value of a pass's layer entry as short text."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format_number(value, ".6g")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value):
        text = ", ".join(format_cell(v) for v in value[:12])
        return text + (", …" if len(value) > 12 else "")
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)[:200]
    return str(value)


def breakable(name: Any) -> Markup:
    """A layer name, escaped, that may wrap after each `/` (<wbr> adds no text)."""
    return Markup("/<wbr>").join(str(name).split("/"))


def sort_key(value: Any) -> str:
    """The `data-v` attribute a sortable cell sorts by: a number, or "" (sorts last)."""
    value = number(value)
    return "" if value is None or math.isnan(value) else repr(value)


_CHARTS: dict[str, Any] = {}   # repr of a chart's inputs -> its SVG (bounded, see _chart)
CHART_CACHE_SIZE = 64


def _chart(draw, *args):
    """draw(*args), remembered by the repr of its (dataclass) inputs: the targets of a
    `--target all` build that share a pass show the same charts, drawn once (matplotlib
    takes about half a second a chart)."""
    key = f"{draw.__name__}:{args!r}"
    if key not in _CHARTS:
        if len(_CHARTS) >= CHART_CACHE_SIZE:
            _CHARTS.pop(next(iter(_CHARTS)))
        _CHARTS[key] = draw(*args)
    return _CHARTS[key]


def target_charts(view: TargetView) -> dict:
    return {"fidelity": _chart(charts.layer_fidelity, view.quant_layers),
            "weights": _chart(charts.weight_scales, view.quant_layers),
            "histograms": [(layer, _chart(charts.activation_histogram, layer))
                           for layer in view.histogram_layers],
            "curves": [(curve, _chart(charts.training_curve, curve)) for curve in view.curves],
            "search": (_chart(charts.auto_calibration_search, view.auto_calibration)
                       if view.auto_calibration else None)}


def render_target(report: Mapping[str, Any]) -> str:
    """The HTML of one target's page."""
    view = target_view(report)
    return environment().get_template("target.html.j2").render(
        view=view, charts=target_charts(view))


def render_index(reports: list[Mapping[str, Any]]) -> str:
    """The HTML of the page over every target of a build."""
    views = [target_view(r) for r in reports]
    inputs = sorted({(v.input, v.input_sha256) for v in views})
    return environment().get_template("index.html.j2").render(
        views=views, inputs=inputs, page=TARGET_PAGE)


def write_target_report(report: dict, target_dir: Path) -> Path:
    """Write `target_dir/report.html` from a target's report dict; returns its path."""
    path = Path(target_dir) / TARGET_PAGE
    path.write_text(render_target(report), encoding="utf-8")
    return path


def write_index(reports: list[dict], out_dir: Path) -> Path:
    """Write `out_dir/index.html` over the targets' report dicts; returns its path."""
    path = Path(out_dir) / INDEX_PAGE
    path.write_text(render_index(reports), encoding="utf-8")
    return path


def load_reports(out_dir: Path) -> list[tuple[Path, dict]]:
    """(target folder, report dict) of every `OUT/<target>/report.json`, by folder name."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ReportError(f"{out_dir}: no such build folder; give the --output folder of "
                          "an amct-targets build")
    found = []
    for path in sorted(out_dir.glob(f"*/{REPORT_JSON}")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(f"{path}: cannot read the report ({exc}); rebuild the target "
                              "or restore the file") from None
        if not isinstance(report, dict):
            raise ReportError(f"{path}: expected a JSON object, got "
                              f"{type(report).__name__}; rebuild the target")
        found.append((path.parent, report))
    if not found:
        raise ReportError(f"{out_dir}: no <target>/{REPORT_JSON} in this folder; give the "
                          "--output folder of an amct-targets build")
    return found


def regenerate(out_dir: Path) -> list[Path]:
    """Rewrite every target's report.html and the index of a build folder from report.json."""
    found = load_reports(out_dir)
    written = [write_target_report(report, folder) for folder, report in found]
    written.append(write_index([report for _, report in found], Path(out_dir)))
    return written
