"""Charts as inline SVG, drawn by matplotlib from the report's numbers.

matplotlib's SVG backend (no pyplot: no global figure state, no display needed) writes text
as <text> elements (`svg.fonttype: none`), so a chart is a few kilobytes and stays
searchable; a fixed `svg.hashsalt` per chart makes the output byte-identical across runs.
Each SVG is cleaned for inlining in HTML: no XML prolog, DOCTYPE, namespaces or metadata (no
URL of any kind), and ids prefixed per chart so several charts can share one page.
"""
from __future__ import annotations

import io
import math
import re
from typing import Iterable

from markupsafe import Markup, escape

from amct_targets.report.view import PERCENT_METRICS, AutoCalibration, Curve, QuantLayer

BLUE, ORANGE, RED, GREY = "#3b6ea8", "#d9822b", "#c23b22", "#8a8f98"
RC = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e5e8",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "text.usetex": False,
}
MAX_LABEL = 42
POOR_SQNR_DB, FAIR_SQNR_DB = 15.0, 25.0
CHAR_INCHES = 0.068  # mean advance of a DejaVu Sans character at 8.5 pt, plus a margin
_ID = re.compile(r'<([A-Za-z]+) id="([^"]+)"')  # a tag's id: `<` in text is always escaped


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _layer_figure(labels: list[str]):
    """A figure with one row per layer. Margins come from the longest label: constrained
    layout measures every tick label twice, seconds for a few hundred layers."""
    from matplotlib.figure import Figure

    width, height = 8.6, 0.9 + 0.2 * len(labels)
    label_inches = 0.25 + CHAR_INCHES * max(len(t.replace("\\$", "$")) for t in labels)
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=min(label_inches / width, 0.5), right=0.98,
                        top=1 - 0.35 / height, bottom=0.6 / height, wspace=0.06)
    return fig


def _log_axis_in_decades(axis, values: Iterable[float]) -> None:
    """Log scale whose limits are whole decades, labelled only at powers of ten (matplotlib
    labels the minor ticks of a span under one decade, and they overlap)."""
    from matplotlib.ticker import NullFormatter

    finite = [v for v in values if v > 0 and math.isfinite(v)]
    axis.axes.set_xscale("log")
    axis.set_minor_formatter(NullFormatter())
    if finite:
        low = math.floor(math.log10(min(finite)))
        high = max(math.ceil(math.log10(max(finite))), low + 1)
        axis.axes.set_xlim(10.0 ** low, 10.0 ** high)


def render_svg(fig, key: str) -> Markup:
    """`fig` as an SVG element ready to inline; `key` makes its ids unique on the page."""
    import matplotlib

    prefix = "c-" + re.sub(r"[^A-Za-z0-9_-]", "_", key)
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": prefix}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None,
                                                    "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text, count=2)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = text.replace("xlink:href=", "href=")
    referenced = set(re.findall(r'(?:url\(#|href="#)([^)"]+)', text))

    def rename(match: re.Match) -> str:
        tag, name = match.groups()
        return f'<{tag} id="{prefix}-{name}"' if name in referenced else f"<{tag}"

    text = _ID.sub(rename, text)
    for name in referenced:
        text = text.replace(f"url(#{name})", f"url(#{prefix}-{name})")
        text = text.replace(f'href="#{name}"', f'href="#{prefix}-{name}"')
    text = text.replace("<g >", "<g>")
    # Whitespace and no-op rotations matplotlib writes: about a third of the bytes.
    text = re.sub(r'\s*transform="rotate\(-0 [^"]*\)"', "", text)
    text = re.sub(r"\s*\n\s*", " ", text)
    text = re.sub(r">\s+<", "><", text)
    text = text.replace(' "/>', '"/>')
    while "<g></g>" in text:
        text = text.replace("<g></g>", "")
    text = text.replace("<svg ", f'<svg class="chart" role="img" aria-label="{escape(key)}" ', 1)
    # matplotlib escapes every text and attribute it writes, so the result is markup.
    return Markup(text)


def label(text: str, limit: int = MAX_LABEL) -> str:
    """A name as chart text: its tail when long, and no mathtext (`$` stays literal)."""
    if len(text) > limit:
        text = "…" + text[-(limit - 1):]
    return text.replace("$", r"\$")  # every `$` escaped: matplotlib never enters mathtext


def layer_label(layer: QuantLayer, limit: int = MAX_LABEL) -> str:
    """`#index name-tail`: the index matches the layer table's first column."""
    return f"#{layer.index} " + label(layer.layer, limit)


def fidelity_color(sqnr_db: float) -> str:
    """Red below 15 dB (noise over ~18% of the signal's RMS), orange below 25 dB (~6%)."""
    if math.isnan(sqnr_db):
        return GREY
    return RED if sqnr_db < POOR_SQNR_DB else ORANGE if sqnr_db < FAIR_SQNR_DB else BLUE


def layer_fidelity(layers: Iterable[QuantLayer]) -> Markup | None:
    """SQNR and 1 - cosine per quantized layer, horizontal bars coloured by SQNR."""
    rows = [q for q in layers if q.status == "quantized" and
            (q.sqnr_db is not None or q.cosine is not None)]
    if not rows:
        return None
    import matplotlib

    names = [layer_label(q) for q in rows]
    sqnr = [q.sqnr_db if q.sqnr_db is not None else math.nan for q in rows]
    distance = [max(1.0 - q.cosine, 1e-12) if q.cosine is not None else math.nan for q in rows]
    colors = [fidelity_color(s) for s in sqnr]
    with matplotlib.rc_context(RC):
        fig = _layer_figure(names)
        left, right = fig.subplots(1, 2, sharey=True, width_ratios=[1.15, 1])
        positions = list(range(len(rows)))
        for ax in (left, right):
            ax.grid(axis="y", visible=False)
        left.barh(positions, sqnr, color=colors, height=0.7)
        left.set_yticks(positions, names)
        left.set_ylim(len(rows) - 0.5, -0.5)
        left.set_xlabel("SQNR (dB), higher is better")
        left.set_title("output SQNR vs float")
        right.barh(positions, distance, color=colors, height=0.7)
        _log_axis_in_decades(right.xaxis, distance)
        right.set_xlabel("1 − cosine (log), lower is better")
        right.set_title("output cosine distance vs float")
        return render_svg(fig, "layer-fidelity")


def activation_histogram(layer: QuantLayer) -> Markup | None:
    """The calibration histogram of a layer's input with the chosen clip range shaded."""
    histogram = layer.histogram
    if not histogram:
        return None
    import matplotlib

    edges, counts = histogram["edges"], histogram["counts"]
    low, high = histogram["clip_min"], histogram["clip_max"]
    from matplotlib.figure import Figure

    with matplotlib.rc_context(RC):
        # Fixed margins (the axis labels are fixed strings; the title starts at the figure's
        # edge): constrained layout took half of this chart's time, and a build draws five.
        fig = Figure(figsize=(4.2, 2.3))
        fig.subplots_adjust(left=0.15, right=0.97, top=0.86, bottom=0.2)
        ax = fig.subplots()
        ax.stairs(counts, edges, fill=True, color=BLUE, alpha=0.85)
        if any(c > 0 for c in counts):
            ax.set_yscale("log")
        for bound in (low, high):
            if bound is not None:
                ax.axvline(bound, color=RED, linewidth=1.2, linestyle="--")
        if low is not None:
            ax.axvspan(min(edges[0], low), low, color=RED, alpha=0.08)
        if high is not None:
            ax.axvspan(high, max(edges[-1], high), color=RED, alpha=0.08)
        fig.text(0.01, 0.97, layer_label(layer, 44), ha="left", va="top",
                 fontsize=RC["axes.titlesize"])
        ax.set_xlabel("activation value (dashed: clip range)")
        ax.set_ylabel("count")
        return render_svg(fig, f"histogram-{layer.index}")


def weight_scales(layers: Iterable[QuantLayer]) -> Markup | None:
    """Per layer, the range of its weight scales (per-channel min to max), log axis."""
    rows = [q for q in layers if q.scale_w_min is not None and q.scale_w_max is not None
            and q.scale_w_min > 0 and q.scale_w_max > 0]
    if not rows:
        return None
    import matplotlib

    names = [layer_label(q) for q in rows]
    with matplotlib.rc_context(RC):
        fig = _layer_figure(names)
        ax = fig.subplots()
        positions = list(range(len(rows)))
        ax.hlines(positions, [q.scale_w_min for q in rows], [q.scale_w_max for q in rows],
                  color=BLUE, linewidth=4)
        ax.plot([q.scale_w_min for q in rows], positions, "|", color=BLUE, markersize=9)
        ax.plot([q.scale_w_max for q in rows], positions, "|", color=BLUE, markersize=9)
        _log_axis_in_decades(ax.xaxis, [q.scale_w_min for q in rows] +
                             [q.scale_w_max for q in rows])
        ax.grid(axis="y", visible=False)
        ax.set_yticks(positions, names)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("weight scale (log): per-channel minimum to maximum")
        ax.set_title("weight scale ranges")
        return render_svg(fig, "weight-scales")


def training_curve(curve: Curve) -> Markup | None:
    """Loss (left axis) and validation metric (right axis) per epoch; the best epoch marked."""
    if not any(v is not None for v in curve.loss + curve.val_metric):
        return None
    import matplotlib

    nan = math.nan
    with matplotlib.rc_context(RC):
        fig = _figure(4.4, 2.5)
        ax = fig.subplots()
        handles = []
        if any(v is not None for v in curve.loss):
            epochs = curve.epochs[:len(curve.loss)]
            handles += ax.plot(epochs, [nan if v is None else v for v in curve.loss], "o-",
                               color=BLUE, markersize=3, label="training loss")
            ax.set_ylabel("loss")
        if any(v is not None for v in curve.val_metric):
            other = ax.twinx()
            other.grid(False)
            other.spines["right"].set_visible(True)
            epochs = curve.epochs[:len(curve.val_metric)]
            handles += other.plot(epochs, [nan if v is None else v for v in curve.val_metric],
                                  "s-", color=ORANGE, markersize=3,
                                  label=f"validation {label(curve.val_metric_name, 30)}")
            percent = " (%)" if curve.val_metric_name in PERCENT_METRICS else ""
            other.set_ylabel(label(curve.val_metric_name, 30) + percent)
        if curve.best_epoch is not None:
            handles.append(ax.axvline(curve.best_epoch, color=GREY, linestyle=":",
                                      label=f"best epoch {curve.best_epoch}"))
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(label(curve.pass_name, 40), loc="left")
        fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=3,
                   frameon=False)
        return render_svg(fig, f"curve-{curve.pass_name}")


def auto_calibration_search(auto: AutoCalibration) -> Markup | None:
    """The metric at each step of the search against the number of layers kept in float."""
    points = [(len(h["float_layers"]), h["metric"], h["met"]) for h in auto.history
              if h["metric"] is not None]
    if not points:
        return None
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = _figure(4.4, 2.4)
        ax = fig.subplots()
        ax.plot([p[0] for p in points], [p[1] for p in points], ":", color=GREY)
        for step, (count, metric, met) in enumerate(points, 1):
            ax.plot(count, metric, "o", color=BLUE if met else RED, markersize=5)
            ax.annotate(str(step), (count, metric), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        ax.margins(x=0.15, y=0.2)
        ax.set_xlabel("layers kept in float (blue: budget met)")
        ax.set_ylabel(label(auto.metric, 30) + (" (%)" if auto.unit else ""))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title("auto-calibration search", loc="left")
        return render_svg(fig, "auto-calibration")
