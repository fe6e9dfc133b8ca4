"""The self-contained HTML report of :class:`~sparkbatch.train.TrainingStats`.

The successor of DL4J's ``StatsUtils.exportStatsAsHtml``: :func:`render_html` draws the totals,
the score per round with the epochs marked, the driver's time per phase and a timeline with one
row per worker from a :class:`~sparkbatch.train.TrainingStats` (or its
:meth:`~sparkbatch.train.TrainingStats.to_dict` output, for example read back from JSON), and
:func:`write_html` writes it to any fsspec URL. :meth:`TrainingStats.render_html` and
:meth:`TrainingStats.to_html` call them. The numbers come from :mod:`sparkbatch.train.stats`;
this module only draws them.

NOTE [HTML report]: one file, no JavaScript, no network access, no external CSS or fonts; the
charts are inline SVG written here, tooltips are SVG ``<title>`` elements, and every piece of text
goes through :func:`html.escape`. A timeline with more than ``_MAX_BARS`` bars is downsampled to a
fixed number of columns per worker, each coloured by the phase that takes most of its time, and
the page says so.

Examples
--------
>>> from sparkbatch.train import PhaseTiming, TrainingStats
>>> stats = TrainingStats()
>>> stats.add_phases([PhaseTiming(0, "driver", "broadcast", 0.0, 0.5)])
>>> page = render_html(stats.to_dict(), title="one broadcast")
>>> page == stats.render_html(title="one broadcast")
True
>>> page.startswith("<!DOCTYPE html>") and "<script" not in page
True
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from sparkbatch.storage import open_output

from .stats import PhaseTiming, RoundStats, TrainingStats, format_duration

__all__ = ["render_html", "write_html"]

_MAX_BARS = 5000  # timeline bars drawn one by one up to this count, downsampled beyond it
_PHASE_COLOURS = {
    "broadcast": "#4e79a7",
    "load": "#f28e2b",
    "fit": "#59a14f",
    "aggregate": "#e15759",
    "average": "#b07aa1",
    "other": "#bab0ac",
}
_EXTRA_COLOURS = ("#edc948", "#76b7b2", "#ff9da7", "#9c755f", "#86bcb6", "#d37295", "#8cd17d")
_WIDTH = 900  # every chart's width in SVG units (pixels)
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .8em;text-align:right}
th{border-bottom:1px solid #888}td:first-child,th:first-child{text-align:left}
.totals td{font-size:1.1em}.note{color:#555;font-style:italic}
.swatch{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}
svg text{font-size:11px;fill:#333}
"""


def render_html(
    stats: TrainingStats | Mapping[str, Any], *, title: str = "sparkbatch training"
) -> str:
    """The HTML report of ``stats`` (statistics or their ``to_dict()`` output) as a string."""
    if not isinstance(stats, TrainingStats):
        stats = TrainingStats.from_dict(stats)
    body = [f"<h1>{_esc(title)}</h1>", _totals_table(stats)]
    if stats.rounds:
        body += ["<h2>Score per round</h2>", _score_chart(stats.rounds)]
        body += ["<h2>Time per phase (driver)</h2>", _phase_breakdown(stats)]
    else:
        body.append('<p class="note">No rounds recorded.</p>')
    body.append("<h2>Timeline</h2>")
    body.append(
        _timeline(stats.phases) if stats.phases else '<p class="note">No phase timings.</p>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_html(
    stats: TrainingStats | Mapping[str, Any],
    url: str | os.PathLike[str],
    *,
    title: str = "sparkbatch training",
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write :func:`render_html`'s report to ``url`` (any fsspec URL), atomically."""
    data = render_html(stats, title=title).encode("utf-8")
    with open_output(url, storage_options=storage_options) as f:
        f.write(data)


# --- formatting ----------------------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ticks(lo: float, hi: float, *, integer: bool = False, target: int = 6) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (steps of 1, 2, 2.5 or 5 times a power of 10)."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - first) / step - 1e-9)
    return [first + k * step for k in range(count + 1)]


def _tick_label(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = next(d for d in range(12) if abs(step * 10**d - round(step * 10**d)) < 1e-6)
    return f"{value:.{decimals}f}" if abs(value) >= step * 1e-9 else "0"


def _natural_key(name: str) -> tuple[int, list[Any]]:
    parts: list[Any] = [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
    return (0 if name == "driver" else 1, parts)


def _colours(names: Iterable[str]) -> dict[str, str]:
    out = dict(_PHASE_COLOURS)
    extra = iter(_EXTRA_COLOURS * 8)
    for name in names:
        if name not in out:
            out[name] = next(extra, "#777777")
    return out


def _legend(names: Iterable[str], colours: Mapping[str, str]) -> str:
    items = "".join(
        f'<span class="swatch" style="background:{colours[n]}"></span>{_esc(n)}' for n in names
    )
    return f"<p>{items}</p>"


# --- HTML and SVG ---------------------------------------------------------------------------------


def _totals_table(stats: TrainingStats) -> str:
    final = f"{stats.rounds[-1].score:.6g}" if stats.rounds else "-"
    rows = [
        ("rounds", f"{len(stats.rounds)} in {len({r.epoch for r in stats.rounds})} epoch(s)"),
        ("examples", f"{stats.examples:,}"),
        ("wall time", format_duration(stats.total_seconds)),
        ("examples/s", f"{stats.examples_per_second:,.1f}"),
        ("final score", final),
        ("broadcast + aggregate", f"{100 * stats.overhead_fraction():.1f} % of wall time"),
        ("timeline rows", str(len({p.worker for p in stats.phases}))),
    ]
    if stats.skipped:
        rows.insert(2, ("skipped minibatches", f"{stats.skipped:,} (NaN or infinity)"))
    cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="totals">{cells}</table>'


def _score_chart(rounds: list[RoundStats]) -> str:
    height, left, right, top, bottom = 320, 70, 20, 20, 45
    plot_w, plot_h = _WIDTH - left - right, height - top - bottom
    xs = [r.round for r in rounds]
    finite = [r.score for r in rounds if math.isfinite(r.score)]
    xt = _ticks(min(xs), max(xs), integer=True)
    yt = _ticks(min(finite), max(finite)) if finite else [0.0, 1.0]
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * plot_h

    out = [f'<svg width="{_WIDTH}" height="{height}" role="img" aria-label="score per round">']
    out.append(_axes(left, top, plot_w, plot_h))
    for t in xt:
        x = px(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 5}" '
            f'stroke="#333"/><text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
            f"{_tick_label(t, xt)}</text>"
        )
    for t in yt:
        y = py(t)
        out.append(
            f'<line x1="{left - 5}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
            f'stroke="#e4e4e4"/><text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_tick_label(t, yt)}</text>"
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">round</text>'
        f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">score</text>'
    )
    # Epoch boundaries: a dashed line before the first round of every epoch but the first;
    # labels only where there is room for them.
    last_label = -1e9
    for prev, r in zip(rounds[:-1], rounds[1:], strict=True):
        if r.epoch != prev.epoch:
            x = px(r.round - 0.5)
            out.append(
                f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                f'stroke="#999" stroke-dasharray="4 3"><title>epoch {r.epoch} starts at round '
                f"{r.round}</title></line>"
            )
            if x - last_label > 60:
                out.append(f'<text x="{x + 3:.1f}" y="{top + 11}">epoch {r.epoch}</text>')
                last_label = x
    # The score line, broken where a score is not finite.
    segment: list[str] = []
    segments = []
    for r in rounds:
        if math.isfinite(r.score):
            segment.append(f"{px(r.round):.1f},{py(r.score):.1f}")
        elif segment:
            segments.append(segment)
            segment = []
    if segment:
        segments.append(segment)
    for seg in segments:
        out.append(
            f'<polyline fill="none" stroke="#4e79a7" stroke-width="1.5" points="{" ".join(seg)}"/>'
        )
    if len(rounds) <= 200:
        for r in rounds:
            if math.isfinite(r.score):
                out.append(
                    f'<circle cx="{px(r.round):.1f}" cy="{py(r.score):.1f}" r="2.5" '
                    f'fill="#4e79a7"><title>round {r.round} (epoch {r.epoch}): score '
                    f"{r.score:.6g}, {r.examples} examples, {r.workers} workers, "
                    f"{format_duration(r.seconds)}</title></circle>"
                )
    out.append("</svg>")
    return "\n".join(out)


def _axes(left: float, top: float, plot_w: float, plot_h: float) -> str:
    return (
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#333"/>'
    )


def _phase_breakdown(stats: TrainingStats) -> str:
    by_phase = stats.seconds_by_phase()
    total = stats.total_seconds
    colours = _colours(by_phase)
    height, left = 34, 10
    plot_w = _WIDTH - 2 * left
    out = [f'<svg width="{_WIDTH}" height="{height}" role="img" aria-label="time per phase">']
    x = float(left)
    for name, seconds in by_phase.items():
        w = plot_w * seconds / total if total > 0 else 0.0
        share = 100 * seconds / total if total > 0 else 0.0
        out.append(
            f'<rect x="{x:.1f}" y="4" width="{w:.1f}" height="24" fill="{colours[name]}">'
            f"<title>{_esc(name)}: {format_duration(seconds)} ({share:.1f} %)</title></rect>"
        )
        x += w
    out.append("</svg>")
    rows = "".join(
        f"<tr><td>{_esc(n)}</td><td>{s:.3f}</td><td>{100 * s / total if total > 0 else 0:.1f}"
        "</td></tr>"
        for n, s in by_phase.items()
    )
    table = f"<table><tr><th>phase</th><th>seconds</th><th>%</th></tr>{rows}</table>"
    return "\n".join(out) + "\n" + _legend(by_phase, colours) + "\n" + table


def _timeline(phases: list[PhaseTiming]) -> str:
    workers = sorted({p.worker for p in phases}, key=_natural_key)
    names = list(dict.fromkeys(p.phase for p in phases))
    colours = _colours(names)
    t0 = min(p.start for p in phases)
    t1 = max(p.end for p in phases)
    longest = max(len(w) for w in workers)
    left = min(260, 7 * min(longest, 36) + 16)
    right, top, row_h, bottom = 20, 10, 18, 40
    plot_w = _WIDTH - left - right
    height = top + row_h * len(workers) + bottom
    xt = _ticks(0.0, max(t1 - t0, 1e-3))
    scale = plot_w / (xt[-1] - xt[0])
    row_of = {w: i for i, w in enumerate(workers)}
    note = ""
    if len(phases) <= _MAX_BARS:
        bars = [
            (
                row_of[p.worker],
                p.phase,
                p.start - t0,
                p.end - t0,
                f"{p.worker}\n{p.phase}, round {p.round}: {format_duration(p.seconds)} "
                f"(from {p.start - t0:.3f} s to {p.end - t0:.3f} s)",
            )
            for p in phases
        ]
    else:
        columns = max(50, min(plot_w, _MAX_BARS // len(workers)))
        bars = _downsample(phases, workers, names, t0, xt[-1], columns)
        note = (
            f'<p class="note">The timeline holds {len(phases):,} intervals, more than '
            f"{_MAX_BARS:,}: it is downsampled to {columns} columns per row, each coloured by "
            f"the phase that takes most of its time ({len(bars):,} bars drawn).</p>"
        )
    out = [f'<svg width="{_WIDTH}" height="{height}" role="img" aria-label="timeline">']
    for i, w in enumerate(workers):
        y = top + i * row_h
        if i % 2:
            out.append(
                f'<rect x="{left}" y="{y}" width="{plot_w}" height="{row_h}" fill="#f4f4f4"/>'
            )
        label = w if len(w) <= 36 else w[:35] + "\u2026"
        out.append(
            f'<text x="{left - 6}" y="{y + row_h - 5}" text-anchor="end">{_esc(label)}'
            f"<title>{_esc(w)}</title></text>"
        )
    for row, phase, start, end, tip in bars:
        out.append(
            f'<rect x="{left + start * scale:.2f}" y="{top + row * row_h + 2}" '
            f'width="{max(0.5, (end - start) * scale):.2f}" height="{row_h - 4}" '
            f'fill="{colours[phase]}"><title>{_esc(tip)}</title></rect>'
        )
    axis_y = top + row_h * len(workers)
    out.append(_axes(left, top, plot_w, axis_y - top))
    for t in xt:
        x = left + t * scale
        out.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="#333"/>'
            f'<text x="{x:.1f}" y="{axis_y + 17}" text-anchor="middle">{_tick_label(t, xt)}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">'
        "seconds since the first interval</text></svg>"
    )
    return "\n".join([note, *out, _legend(names, colours), _worker_table(phases, workers, names)])


def _occupancy(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Summed length of the intervals ``[starts, ends)`` inside each bin between ``edges``.

    ``G(x) = sum_i (min(x, e_i) - s_i)^+`` is evaluated at the edges with sorted starts and ends
    and their prefix sums, so the cost is ``O((n + bins) log n)``, not ``O(n * bins)``.
    """
    s, e = np.sort(starts), np.sort(ends)
    cs = np.concatenate([[0.0], np.cumsum(s)])
    ce = np.concatenate([[0.0], np.cumsum(e)])
    ks = np.searchsorted(s, edges, side="right")
    ke = np.searchsorted(e, edges, side="right")
    g = edges * ks - cs[ks] - (edges * ke - ce[ke])
    return np.diff(g)


def _downsample(
    phases: list[PhaseTiming],
    workers: list[str],
    names: list[str],
    t0: float,
    span: float,
    columns: int,
) -> list[tuple[int, str, float, float, str]]:
    """Per worker, colour each of ``columns`` time bins by its dominant phase; merge runs."""
    edges = np.linspace(0.0, span, columns + 1)
    width = span / columns
    by_key: dict[tuple[str, str], list[PhaseTiming]] = {}
    for p in phases:
        by_key.setdefault((p.worker, p.phase), []).append(p)
    bars = []
    for row, worker in enumerate(workers):
        occupancy = np.zeros((len(names), columns))
        for k, name in enumerate(names):
            items = by_key.get((worker, name))
            if items:
                starts = np.array([p.start - t0 for p in items])
                ends = np.array([p.end - t0 for p in items])
                occupancy[k] = _occupancy(starts, ends, edges)
        dominant = occupancy.argmax(axis=0)
        busy = occupancy.sum(axis=0) >= 0.5 * width
        c = 0
        while c < columns:
            if not busy[c]:
                c += 1
                continue
            end = c
            while end + 1 < columns and busy[end + 1] and dominant[end + 1] == dominant[c]:
                end += 1
            name = names[dominant[c]]
            a, b = edges[c], edges[end + 1]
            tip = f"{worker}\nmostly {name}, from {a:.3f} s to {b:.3f} s (downsampled)"
            bars.append((row, name, float(a), float(b), tip))
            c = end + 1
    return bars


def _worker_table(phases: list[PhaseTiming], workers: list[str], names: list[str]) -> str:
    totals: dict[tuple[str, str], float] = {}
    for p in phases:
        totals[(p.worker, p.phase)] = totals.get((p.worker, p.phase), 0.0) + p.seconds
    head = "".join(f"<th>{_esc(n)} (s)</th>" for n in names)
    rows = "".join(
        f"<tr><td>{_esc(w)}</td>"
        + "".join(f"<td>{totals.get((w, n), 0.0):.3f}</td>" for n in names)
        + "</tr>"
        for w in workers
    )
    return f"<table><tr><th>worker</th>{head}</tr>{rows}</table>"
