"""The HTML reports, opened in a real browser (Debian's headless chromium).

Each page records script errors in <html data-js-errors> (its own window.onerror), the
number of resources it fetched in data-resources and the sorts applied from `?sort=` in
data-sorted; `chromium --dump-dom` shows them after the load event.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import amct_targets as at
from amct_targets.report import (ReportError, regenerate, render_index, render_target,
                                 write_index, write_target_report)
from report_fixtures import QUANT_PASSES, with_new_fields

TARGETS = ["ascend310", "ascend910b"]
PWN = 'document.documentElement.setAttribute("data-pwned", "1")'
HOSTILE_LAYERS = [f"conv<script>{PWN}</script>",
                  "dw\"'><img src=x onerror='document.title=1'>",
                  "$\\alpha$ & <b>bold</b> \"quoted\""]


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium not found: install Debian's browser with `apt-get install -y chromium`"
    return path


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """The bundled demo built for two targets (a real build), with the HTML written."""
    from amct_targets.demo import demo_paths

    pb, calib = demo_paths()
    out = tmp_path_factory.mktemp("demo")
    reports = at.build(pb, TARGETS, calib=calib, output_dir=out)
    for target in TARGETS:
        write_target_report(reports[target], out / target)
    write_index([reports[t] for t in TARGETS], out)
    return out


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """Pruning then QAT on the demo (one epoch each), plus the fields later builds add."""
    from amct_targets.demo import demo_paths
    from amct_targets.demo.make_demo import digits_split

    pb, calib = demo_paths()
    x_train, y_train, _, _ = digits_split()
    out = tmp_path_factory.mktemp("retrained")
    config = {"passes": {"prune_channels": {"enabled": True, "epochs": 1,
                                            "ascend_optimized": False},
                         "qat": {"enabled": True, "epochs": 1}}}
    report = at.build(pb, "ascend310p", calib=calib, config=config, output_dir=out,
                      train={"image": x_train[:256], "y": y_train[:256]})["ascend310p"]
    rich = with_new_fields(report)
    (out / "ascend310p" / "report.json").write_text(json.dumps(rich), encoding="utf-8")
    write_target_report(rich, out / "ascend310p")
    write_index([rich], out)
    return out, report, rich


class Page(HTMLParser):
    """What a test needs from a dumped DOM: <html> attributes, ids, tables, charts."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root: dict = {}
        self.ids: list[str] = []
        self.tables: dict[str, list[tuple[dict, list[str]]]] = {}
        self.headers: dict[str, list[dict]] = {}
        self.charts: list[str] = []
        self.links: list[str] = []
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "html":
            self.root = attrs
        elif tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table], self.headers[self._table] = [], []
        elif tag == "th" and self._table is not None:
            self.headers[self._table].append(attrs)
        elif tag == "tr" and self._table is not None:
            self._row = (attrs, [])
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "svg" and "chart" in attrs.get("class", ""):
            self.charts.append(attrs.get("aria-label", ""))
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row[1]:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def column(self, table: str, key: int | str) -> list[str]:
        """The cells' text of a column, by position or by its header's data-key."""
        if isinstance(key, str):
            key = [h.get("data-key") for h in self.headers[table]].index(key)
        return [cells[key] for _, cells in self.tables[table]]


def open_page(chromium: str, page: Path, query: str = "", tmp: Path | None = None) -> Page:
    """Load `page` in headless chromium and parse the DOM after the load event."""
    profile = (tmp or page.parent) / ".chromium-profile"
    run = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={profile}", "--dump-dom",
                          page.resolve().as_uri() + query],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = Page(run.stdout)
    assert dom.root.get("data-ready") == "1", run.stdout[:2000]
    assert dom.root.get("data-js-errors", "") == ""
    assert dom.root.get("data-resources") == "0"  # nothing fetched: no file, no network
    return dom


def quant_layers(report: dict) -> list[dict]:
    return [layer for p in report["passes"] if p["name"] in QUANT_PASSES
            and p["status"] == "ran" for layer in p["layers"]]


def test_target_pages_load_without_errors_and_list_every_quantized_layer(build, chromium):
    for target in TARGETS:
        report = json.loads((build / target / "report.json").read_text())
        dom = open_page(chromium, build / target / "report.html", tmp=build)
        rows = dom.tables["layers"]
        quantized = [e["layer"] for e in quant_layers(report) if e["status"] == "quantized"]
        assert len(quantized) == 4
        assert [attrs["data-layer"] for attrs, _ in rows] == quantized
        assert all(attrs["data-status"] == "quantized" for attrs, _ in rows)
        assert dom.column("layers", "sqnr_db") == [f"{e['sqnr_db']:.2f}"
                                                   for e in quant_layers(report)]
        assert dom.column("passes", 1) == [p["name"] for p in report["passes"]]
        assert dom.column("passes", 2) == ["RUN" if p["status"] == "ran" else "SKIP"
                                           for p in report["passes"]]
        assert "layer-fidelity" in dom.charts and "weight-scales" in dom.charts
        assert len(dom.ids) == len(set(dom.ids)), "duplicate element ids (inlined SVG ids?)"
        assert report["atc_command"] in (build / target / "report.html").read_text()


def test_clicking_a_header_sorts_the_layer_table(build, chromium):
    report = json.loads((build / "ascend310" / "report.json").read_text())
    layers = quant_layers(report)
    page = build / "ascend310" / "report.html"
    dom = open_page(chromium, page, "?sort=layers:sqnr_db:asc", tmp=build)
    assert dom.root["data-sorted"] == "layers:sqnr_db:asc"
    by_sqnr = [e["layer"] for e in sorted(layers, key=lambda e: e["sqnr_db"])]
    assert [a["data-layer"] for a, _ in dom.tables["layers"]] == by_sqnr
    assert by_sqnr != [e["layer"] for e in layers]  # the order really changed
    assert {h["data-key"]: h.get("aria-sort") for h in dom.headers["layers"]}["sqnr_db"] == \
        "ascending"
    dom = open_page(chromium, page, "?sort=layers:layer:desc", tmp=build)
    assert [a["data-layer"] for a, _ in dom.tables["layers"]] == sorted(
        (e["layer"] for e in layers), key=str.lower, reverse=True)


def test_float_layers_sort_last_both_ways_and_show_their_reason(retrained, chromium):
    out, _, rich = retrained
    page = out / "ascend310p" / "report.html"
    layers = quant_layers(rich)
    (floating,) = [e for e in layers if e["status"] == "float"]
    quantized = [e for e in layers if e["status"] == "quantized"]
    for direction in ("asc", "desc"):
        dom = open_page(chromium, page, f"?sort=layers:cosine:{direction}", tmp=out)
        order = [a["data-layer"] for a, _ in dom.tables["layers"]]
        assert order == [e["layer"] for e in sorted(
            quantized, key=lambda e: e["cosine"], reverse=direction == "desc")] + [
            floating["layer"]]
    assert dom.column("layers", "status")[-1] == "float"
    assert dom.column("layers", "reason") == [""] * len(quantized) + [floating["reason"]]


def test_pages_reference_nothing_outside_the_file(build, retrained):
    out, _, _ = retrained
    pages = [build / "index.html", *(build / t / "report.html" for t in TARGETS),
             out / "ascend310p" / "report.html"]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "http:" not in text and "https:" not in text
        assert " src=" not in text and "<link" not in text and "@import" not in text
        assert "url(" not in text.replace("url(#", "")
        assert text.count("<script") == 2  # the error recorder and the page script, inline


def test_index_has_one_row_per_target_with_links_passes_and_check_status(build, chromium):
    dom = open_page(chromium, build / "index.html", tmp=build)
    rows = dom.tables["targets"]
    assert [attrs["data-target"] for attrs, _ in rows] == TARGETS
    assert [link for link in dom.links] == [f"{t}/report.html" for t in TARGETS]
    assert all((build / link).is_file() for link in dom.links)
    assert dom.column("targets", "passes") == ["fold_bn, quantize"] * 2
    assert dom.column("targets", "int8") == ["4", "4"]
    expected = []
    for target in TARGETS:
        checks = json.loads((build / target / "report.json").read_text())["checks"]
        errors = sum(c["severity"] == "error" for c in checks)
        warnings = len(checks) - errors
        expected.append(f"error {errors}" if errors else f"warning {warnings}" if warnings
                        else "ok")
    assert dom.column("targets", "check") == expected
    dom = open_page(chromium, build / "index.html", "?sort=targets:target:desc", tmp=build)
    assert [attrs["data-target"] for attrs, _ in dom.tables["targets"]] == TARGETS[::-1]


def test_new_report_fields_render_evaluation_histograms_curves_stats_autocalibration(
        retrained, chromium):
    out, report, rich = retrained
    assert [p["name"] for p in report["passes"] if p["status"] == "ran"] == \
        ["fold_bn", "prune_channels", "qat"]
    dom = open_page(chromium, out / "ascend310p" / "report.html", tmp=out)
    assert dom.tables["evaluation-top1"] == [({}, ["float", "99.11"]),
                                             ({}, ["compressed", "98.67"]),
                                             ({}, ["change (points)", "-0.44"])]
    assert dom.tables["evaluation-outputs"][0][1] == ["Identity:0", "99.33", "31.40",
                                                      "0.999640"]
    with_histogram = [e for e in quant_layers(rich) if "histogram" in e]
    assert len(with_histogram) >= 2
    assert sorted(c for c in dom.charts if c.startswith("histogram-")) == sorted(
        f"histogram-{quant_layers(rich).index(e) + 1}" for e in with_histogram)
    assert {"curve-prune_channels", "curve-qat", "auto-calibration"} <= set(dom.charts)
    stats = {cells[0]: cells[1:4] for _, cells in dom.tables["model-stats"]}
    assert stats["parameters"] == ["121,994", "65,306", "-46.5"]
    assert stats[".pb size"] == ["480.5 KB", "128.7 KB", "-73.2"]
    assert dom.column("search-history", 3) == ["missed", "met"]
    assert dom.column("cures", 0) == ["cross_layer_equalization", "bias_correction"]
    (fallback,) = dom.tables["fallback"]
    assert fallback[1][:2] == [quant_layers(rich)[-1]["layer"], "0.981"]
    index = open_page(chromium, out / "index.html", tmp=out)
    assert [index.column("targets", key) for key in ("float_top1", "top1", "change",
                                                      "agreement")] == \
        [["99.11"], ["98.67"], ["-0.44"], ["99.33"]]


def test_reports_without_the_new_fields_render_curves_from_pass_losses(retrained, tmp_path,
                                                                       chromium):
    _, report, _ = retrained
    (tmp_path / "ascend310p").mkdir()
    write_target_report(report, tmp_path / "ascend310p")
    dom = open_page(chromium, tmp_path / "ascend310p" / "report.html")
    assert {"curve-prune_channels", "curve-qat"} <= set(dom.charts)
    assert "evaluation-top1" not in dom.tables and "fallback" not in dom.tables
    stats = {cells[0]: cells[1:4] for _, cells in dom.tables["model-stats"]}
    prune = next(p for p in report["passes"] if p["name"] == "prune_channels")["metrics"]
    assert stats["parameters"][:2] == [f"{prune['params_before']:,}",
                                       f"{prune['params_after']:,}"]


@pytest.mark.parametrize("report", [
    {},
    {"target": "old", "passes": [{"name": "quantize", "status": "ran"}]},
    {"target": "odd", "passes": [{"name": "quantize", "status": "ran", "metrics": {
        "history": {"loss": [1.0, None, "x"]}}, "layers": [
        {"layer": "a", "status": "quantized", "sqnr_db": float("nan"), "cosine": "high",
         "histogram": {"edges": [0, 1], "counts": [1, 2]}}]}],
     "evaluation": {"outputs": {"y": None}}, "auto_calibration": {"history": [{}]},
     "model_stats": {"params_before": 10}, "checks": [{"severity": "error"}]},
], ids=["empty", "old", "malformed"])
def test_incomplete_or_malformed_reports_still_render(report, tmp_path, chromium):
    write_target_report(report, tmp_path)
    write_index([report], tmp_path)
    for page in ("report.html", "index.html"):
        open_page(chromium, tmp_path / page)


def hostile_report(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report["display_name"] = f"Ascend <i>310</i> \"'<script>{PWN}</script>"
    report["target"] = "evil\"><script>alert(1)</script>"
    report["notes"] = [f"<img src=x onerror='{PWN}'>"]
    report["atc_command"] += " --op_select_implmode='</pre><script>x()</script>'"
    layers = quant_layers(report)
    for layer, name in zip(layers, HOSTILE_LAYERS):
        layer["layer"] = name
    layers[-1]["status"], layers[-1]["reason"] = "float", f"<script>{PWN}</script>"
    report["checks"] = [{"severity": "warning", "code": "<b>", "node": HOSTILE_LAYERS[0],
                         "message": "</td></tr></table><script>x()</script>"}]
    return report


def test_hostile_names_are_escaped(build):
    report = hostile_report(json.loads((build / "ascend310" / "report.json").read_text()))
    for html in (render_target(report), render_index([report])):
        assert html.count("<script") == 2 and "<img" not in html and "<b>" not in html
        assert "<i>" not in html and "</table><script>" not in html
    html = render_target(report)
    assert "conv&lt;script&gt;document.documentElement" in html
    assert "dw&#34;&#39;&gt;&lt;img src=x" in html
    assert "--op_select_implmode=&#39;&lt;/pre&gt;&lt;script&gt;x()&lt;/script&gt;&#39;" in html
    assert 'href="evil%22%3E%3Cscript%3Ealert%281%29%3C/script%3E/report.html"' in \
        render_index([report])


def test_hostile_names_show_as_text_in_the_browser(build, tmp_path, chromium):
    report = hostile_report(json.loads((build / "ascend310" / "report.json").read_text()))
    write_target_report(report, tmp_path)
    dom = open_page(chromium, tmp_path / "report.html")
    assert "data-pwned" not in dom.root
    assert [a["data-layer"] for a, _ in dom.tables["layers"]][:3] == HOSTILE_LAYERS
    assert dom.column("layers", "layer")[:3] == HOSTILE_LAYERS
    assert dom.column("findings", 3) == ["</td></tr></table><script>x()</script>"]


def test_rendering_is_deterministic_and_regenerated_from_report_json(build, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(build, folder, ignore=shutil.ignore_patterns("*.html", ".chromium*"))
    run = subprocess.run([sys.executable, "-m", "amct_targets.report", str(folder)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(folder / t / "report.html") for t in TARGETS] + [
        str(folder / "index.html")]
    for name in ("index.html", *(f"{t}/report.html" for t in TARGETS)):
        assert (folder / name).read_bytes() == (build / name).read_bytes(), name


def test_regenerating_a_folder_without_reports_is_one_clear_error(tmp_path):
    run = subprocess.run([sys.executable, "-m", "amct_targets.report", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert run.stderr == (f"amct-targets: error: {tmp_path}: no <target>/report.json in this "
                          "folder; give the --output folder of an amct-targets build\n")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "report.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"t/report.json: cannot read the report \(Expecting "
                                          "property name"):
        regenerate(tmp_path)


def test_screenshot_of_a_target_page(retrained, chromium, tmp_path):
    from PIL import Image

    out, _, _ = retrained
    png = tmp_path / "page.png"
    run = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=1200,1600", f"--screenshot={png}",
                          (out / "ascend310p" / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 1600)
    # a rendered page, not a blank or error screen: text, badges and chart colours
    assert len(image.getcolors(maxcolors=1 << 20)) > 200
