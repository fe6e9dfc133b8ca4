"""The self-contained HTML report of :class:`~sparkbatch.train.TrainingStats`.

The successor of DL4J's ``StatsUtils.exportStatsAsHtml``, meant to be what a person opens instead
of reading logs: :func:`render_html` draws, from a :class:`~sparkbatch.train.TrainingStats` (or
its :meth:`~sparkbatch.train.TrainingStats.to_dict` output, for example read back from JSON), the
totals; the configuration (model, averaging settings, Spark, and every fit's data, epochs, rounds
and workers); the held-out evaluation when there is one (accuracy, a per-class table and a
heat-mapped confusion matrix, or a per-column regression table; a note where the model was
trained on after it); the score per round with the epochs marked; the throughput per round; the
driver's time per phase, with what the exchange moved and each aggregation step's time (where
measured); and a timeline with one row per worker. :func:`write_html` writes it
to any fsspec URL. :meth:`TrainingStats.render_html` and :meth:`TrainingStats.to_html` call
them. The numbers come from :mod:`sparkbatch.train.stats`; this module only draws them.

NOTE [HTML report]: one file, no JavaScript, no network access, no external CSS or fonts; the
charts are inline SVG written here, tooltips are SVG ``<title>`` elements, and every piece of text
goes through :func:`html.escape`. A timeline with more than ``_MAX_BARS`` bars is downsampled to a
fixed number of columns per worker, each coloured by the phase that takes most of its time, and
the page says so. Each chart's plot area has its own background colour (``PLOT_BACKGROUNDS``),
which is how the browser test finds it in a screenshot.

NOTE [score scale]: the first rounds' scores are often far above the rest, and a linear axis
over all of them leaves the later progress a flat line. When every score is positive and they
span more than a decade (``_LOG_SPAN``) the axis is logarithmic; otherwise, when the first tenth
of the rounds spreads the scores over more than ``_ZOOM_FACTOR`` times the range of the rest, the
axis shows the range of the rest and marks the first rounds' points at its top edge; else it is
linear over every score. The chart and a note under it say which.

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

from .stats import PhaseTiming, RoundStats, TrainingStats, format_bytes, format_duration

__all__ = ["PLOT_BACKGROUNDS", "render_html", "write_html"]

#: The background colour of each chart's plot area: light, and different for every chart.
PLOT_BACKGROUNDS = {"score": "#f4f7fb", "throughput": "#f3f9f8", "timeline": "#fbf7f4"}
_SCORE_COLOUR = "#4e79a7"
_THROUGHPUT_COLOUR = "#2a9d8f"
_HEAT = (31, 78, 121)  # the confusion matrix's darkest cell (#1f4e79): a whole row there
_COMPACT_CLASSES = 20  # a confusion matrix of more classes is drawn as small squares
_LOG_SPAN = 10.0  # scores spanning more than this factor are drawn on a log axis
_ZOOM_FACTOR = 3.0  # ... else zoomed when the first rounds widen the range more than this

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
h3{font-size:1em;margin:.2em 0}
.cards{display:flex;flex-wrap:wrap;gap:.5em 3em;align-items:flex-start}
.cards>div{max-width:100%}.kv td:first-child{color:#555}.kv td{text-align:left}
.layers td,.layers th{text-align:left;font-size:.9em}
.confusion td{min-width:2.6em;text-align:center;border:1px solid #fff}
.confusion th{font-weight:normal;font-size:.9em;border:0}
.confusion th.rotate{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left}
.confusion.compact td{min-width:0;width:var(--cell);height:var(--cell);padding:0;border:0}
.confusion.compact th{font-size:.7em;padding:0 .2em}.confusion.compact th.rotate{padding:0}
"""


def render_html(
    stats: TrainingStats | Mapping[str, Any], *, title: str = "sparkbatch training"
) -> str:
    """The HTML report of ``stats`` (statistics or their ``to_dict()`` output) as a string."""
    if not isinstance(stats, TrainingStats):
        stats = TrainingStats.from_dict(stats)
    body = [f"<h1>{_esc(title)}</h1>", _totals_table(stats)]
    if stats.configuration or stats.fits:
        body += ["<h2>Configuration</h2>", _configuration(stats)]
    if stats.evaluation is not None:
        body.append("<h2>Evaluation</h2>")
        if _trained_after(stats.evaluation, stats):  # said first, before the figures
            after = stats.evaluation["after rounds"]
            more = len(stats.rounds) - after
            body.append(
                f'<p class="note">Evaluated after {after} of the {len(stats.rounds)} rounds: '
                f"the model was trained {more} more round{'s' if more > 1 else ''} after it, so "
                "these figures are not those of the final model.</p>"
            )
        body.append(_evaluation(stats.evaluation))
    if stats.rounds:
        body += ["<h2>Score per round</h2>", _score_chart(stats.rounds)]
        body += ["<h2>Throughput per round</h2>", _throughput_chart(stats.rounds)]
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
    moved = stats.bytes_by_phase()
    if any(moved.values()):
        rows.insert(
            6,
            (
                "bytes moved",
                f"{format_bytes(moved['distribute'])} to the workers, "
                f"{format_bytes(moved['aggregate'])} back",
            ),
        )
    if stats.exchanges:
        rows.insert(6, ("exchange", ", ".join(stats.exchanges)))
    if stats.skipped:
        rows.insert(2, ("skipped minibatches", f"{stats.skipped:,} (NaN or infinity)"))
    ev = stats.evaluation
    if ev and ev.get("examples"):
        if ev.get("kind") == "classification":
            held_out = ("held-out accuracy", f"{_fraction(ev['accuracy'])}")
        else:
            mse = [v for v in ev["mse"] if isinstance(v, (int, float)) and math.isfinite(v)]
            name = "held-out MSE" if len(ev["mse"]) == 1 else "held-out MSE (column mean)"
            held_out = (name, _fraction(sum(mse) / len(mse)) if mse else "-")
        value = f"{held_out[1]} on {ev['examples']:,} examples"
        if _trained_after(ev, stats):
            value += f", after {ev['after rounds']} of the {len(stats.rounds)} rounds"
        rows.insert(5, (held_out[0] + _of_output(ev), value))
    cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="totals">{cells}</table>'


def _of_output(ev: Mapping[str, Any]) -> str:
    """The words ``of output 'name'`` (after a space) where ``ev`` is the evaluation of one of
    a Graph's outputs, else nothing."""
    return f" of output {ev['output']!r}" if "output" in ev else ""


def _trained_after(ev: Mapping[str, Any], stats: TrainingStats) -> bool:
    """Whether rounds were recorded after the evaluation ``ev`` was made (its figures are of
    an earlier model than the final score's); unknown for statistics written before the
    evaluation kept its round count."""
    after = ev.get("after rounds")
    return isinstance(after, int) and after < len(stats.rounds)


def _kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_value(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v)
    return str(v)


#: Layer settings shown in their own columns (the rest go to "settings").
_LAYER_COLUMNS = ("name", "type", "inputs", "n_in", "n_out", "activation", "loss")


def _layers_table(layers: list[Any]) -> str:
    rows = []
    graph = any(isinstance(layer, Mapping) and "name" in layer for layer in layers)
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            continue
        shape = ""
        if "n_in" in layer or "n_out" in layer:
            shape = f"{_value(layer.get('n_in'))} \u2192 {_value(layer.get('n_out'))}"
        settings = ", ".join(
            f"{k}={_value(v)}"
            for k, v in layer.items()
            if k not in _LAYER_COLUMNS and v not in (None, 0, 0.0, False, "", [], {})
        )
        first = [layer.get("name", ""), _value(layer.get("inputs"))] if graph else [i]
        cells = [*first, layer.get("type", "?"), shape]
        cells += [layer.get("activation", ""), layer.get("loss", ""), settings]
        rows.append("<tr>" + "".join(f"<td>{_esc(_value(c))}</td>" for c in cells) + "</tr>")
    head = ["vertex", "inputs"] if graph else ["#"]
    head += ["type", "in \u2192 out", "activation", "loss", "settings"]
    header = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return f'<table class="layers"><tr>{header}</tr>{"".join(rows)}</table>'


def _configuration(stats: TrainingStats) -> str:
    """Model, averaging settings and Spark side by side, then one row per fit (its data)."""
    config = stats.configuration
    cards = []
    model = config.get("model")
    if model:
        rows = [(k, v) for k, v in model.items() if k != "layers"]
        layers = model.get("layers")
        table = _layers_table(layers) if isinstance(layers, list) and layers else ""
        cards.append(f"<div><h3>Model</h3>{_kv_table(rows)}{table}</div>")
    averaging = config.get("averaging")
    if averaging:
        cards.append(
            f"<div><h3>Averaging (ParameterAveraging)</h3>{_kv_table(averaging.items())}</div>"
        )
    for name, values in config.items():
        if name not in ("model", "averaging") and values:
            cards.append(
                f"<div><h3>{_esc(name.capitalize())}</h3>{_kv_table(values.items())}</div>"
            )
    out = [f'<div class="cards">{"".join(cards)}</div>'] if cards else []
    if stats.fits:
        out += ["<h3>Data</h3>", _fits_table(stats)]
    return "\n".join(out)


def _spread(values: list[int]) -> str:
    """One value, or the range ``a\u2013b`` when the epochs differ; "-" when not counted."""
    if not values or max(values) == 0:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}\u2013{hi:,}"


def _fits_table(stats: TrainingStats) -> str:
    """A row per fit: what it read and how, and per epoch the minibatches and examples its
    rounds fitted (measured)."""
    firsts = [int(f.get("first round", 0)) for f in stats.fits] + [math.inf]
    rows = []
    for n, fit in enumerate(stats.fits):
        mine = [r for r in stats.rounds if firsts[n] <= r.round < firsts[n + 1]]
        by_epoch: dict[int, list[RoundStats]] = {}
        for r in mine:
            by_epoch.setdefault(r.epoch, []).append(r)
        minibatches = [sum(r.minibatches for r in e) for e in by_epoch.values()]
        examples = [sum(r.examples for r in e) for e in by_epoch.values()]
        cells = [
            n + 1,
            fit.get("source"),
            fit.get("epochs"),
            fit.get("rounds per epoch"),
            fit.get("workers"),
            _spread(minibatches),
            _spread(examples),
            fit.get("first round"),
        ]
        rows.append("<tr>" + "".join(f"<td>{_esc(_value(c))}</td>" for c in cells) + "</tr>")
    head = ["fit", "data", "epochs", "rounds/epoch", "workers", "minibatches/epoch"]
    head += ["examples/epoch", "first round"]
    header = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return f'<table class="layers"><tr>{header}</tr>{"".join(rows)}</table>'


def _heat(share: float) -> str:
    """White (0) to the darkest heat colour (1)."""
    share = min(1.0, max(0.0, share)) if math.isfinite(share) else 0.0
    r, g, b = (round(255 + (c - 255) * share) for c in _HEAT)
    return f"#{r:02x}{g:02x}{b:02x}"


def _evaluation(ev: Mapping[str, Any]) -> str:
    if not ev.get("examples"):
        return '<p class="note">The evaluation saw no examples.</p>'
    if ev.get("kind") == "regression":
        return _regression(ev)
    rows = [("output", ev["output"])] if "output" in ev else []  # one of a Graph's outputs
    rows += [("examples", ev["examples"]), ("accuracy", _fraction(ev["accuracy"]))]
    if int(ev.get("top_n", 1)) > 1:
        rows.append((f"top-{ev['top_n']} accuracy", _fraction(ev["top_n_accuracy"])))
    rows += [
        ("precision (macro)", _fraction(ev["macro_precision"])),
        ("recall (macro)", _fraction(ev["macro_recall"])),
        ("F1 (macro)", _fraction(ev["macro_f1"])),
    ]
    classes = ev["classes"]
    per_class = "".join(
        f"<tr><td>{_esc(c)}</td><td>{_fraction(p)}</td><td>{_fraction(r)}</td>"
        f"<td>{_fraction(f)}</td><td>{n:,}</td></tr>"
        for c, p, r, f, n in zip(
            classes, ev["precision"], ev["recall"], ev["f1"], ev["count"], strict=True
        )
    )
    table = (
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
        f"<th>examples</th></tr>{per_class}</table>"
    )
    cards = [
        f"<div><h3>Overall</h3>{_kv_table(rows)}</div>",
        f"<div><h3>Per class</h3>{table}</div>",
    ]
    confusion = ev.get("confusion")
    if confusion is None:
        cards.append(
            f'<div><p class="note">{len(classes):,} classes: the confusion matrix is not '
            "kept.</p></div>"
        )
    else:
        cards.append(f"<div><h3>Confusion matrix</h3>{_confusion(classes, confusion)}</div>")
    return f'<div class="cards">{"".join(cards)}</div>'


def _fraction(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _confusion(classes: list[str], confusion: list[list[int]]) -> str:
    """Rows actual, columns predicted; each cell shaded by its share of its row. Beyond
    ``_COMPACT_CLASSES`` classes the cells are small squares without their counts (in their
    tooltips) and the columns are numbered, so that the matrix fits the page's width."""
    n = len(classes)
    compact = n > _COMPACT_CLASSES
    if compact:  # every 5th (10th) column numbered, written upwards as the names are
        every = 5 if n <= 50 else 10
        head = "".join(
            f'<th class="rotate" title="{_esc(c)}">{i + 1 if (i + 1) % every == 0 else ""}</th>'
            for i, c in enumerate(classes)
        )
        classes_shown = [f"{i + 1}. {c}" for i, c in enumerate(classes)]
    else:
        head = "".join(f'<th class="rotate">{_esc(c)}</th>' for c in classes)
        classes_shown = classes
    rows = []
    for name, shown, row in zip(classes, classes_shown, confusion, strict=True):
        total = sum(row)
        cells = []
        for predicted, count in zip(classes, row, strict=True):
            share = count / total if total else 0.0
            ink = "#fff" if share > 0.55 else "#222"
            cells.append(
                f'<td style="background:{_heat(share)};color:{ink}" title="actual {_esc(name)}, '
                f'predicted {_esc(predicted)}: {count:,} ({100 * share:.1f} % of the row)">'
                f"{'' if compact else f'{count:,}'}</td>"
            )
        rows.append(f"<tr><th>{_esc(shown)}</th>{''.join(cells)}</tr>")
    size = f' style="--cell:{max(6, min(14, 720 // n))}px"' if compact else ""
    kind = f'confusion compact"{size}' if compact else 'confusion"'
    counts = " (its count in its tooltip; columns numbered as the rows)" if compact else ""
    return (
        f'<table class="{kind}><tr><th>actual \u2193 predicted \u2192</th>{head}</tr>'
        f"{''.join(rows)}</table>"
        f'<p class="note">Each cell is shaded by its share of the actual class\'s examples'
        f"{counts}.</p>"
    )


def _regression(ev: Mapping[str, Any]) -> str:
    figures = [ev["mse"], ev["mae"], ev["rmse"], ev["r2"]]
    columns = list(zip(ev["columns"], *figures, strict=True))
    finite = [[v for v in f if isinstance(v, (int, float)) and math.isfinite(v)] for f in figures]
    means = [sum(f) / len(f) if f else float("nan") for f in finite]
    rows = "".join(
        f"<tr><td>{_esc(c)}</td>" + "".join(f"<td>{_fraction(v)}</td>" for v in vals) + "</tr>"
        for c, *vals in [*columns, ("average", *means)]
    )
    return (
        f"<p>{ev['examples']:,} examples{_esc(_of_output(ev))}.</p><table><tr><th>column</th>"
        f"<th>MSE</th><th>MAE</th><th>RMSE</th><th>R\u00b2</th></tr>{rows}</table>"
    )


class _YAxis:
    """A vertical axis from ``lo`` to ``hi`` (linear, or logarithmic with ``log``) and its
    ticks; :meth:`frac` places a value (0 at the bottom, 1 at the top; outside: clipped)."""

    def __init__(self, lo: float, hi: float, *, log: bool = False) -> None:
        self.log = log
        if log:
            first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            last = max(last, first + 1)
            self.lo, self.hi = 10.0**first, 10.0**last
            every = max(1, math.ceil((last - first) / 8))
            ticks = [10.0**k for k in range(first, last + 1, every)]
            if last - first <= 2:  # few decades: 2 and 5 between them too
                ticks += [m * 10.0**k for k in range(first, last) for m in (2, 5)]
            self.ticks = sorted(ticks)
        else:
            self.ticks = _ticks(lo, hi)
            self.lo, self.hi = self.ticks[0], self.ticks[-1]

    def frac(self, value: float) -> float:
        if self.log:
            value = max(value, self.lo * 1e-3)
            f = math.log10(value / self.lo) / math.log10(self.hi / self.lo)
        else:
            f = (value - self.lo) / (self.hi - self.lo)
        return min(1.0, max(0.0, f))

    def label(self, value: float) -> str:
        return f"{value:g}" if self.log else _tick_label(value, self.ticks)


class _RoundChart:
    """An SVG chart with the rounds along x (each round's slot one unit wide), ``axis`` up,
    the plot area filled with ``PLOT_BACKGROUNDS[name]`` and the epochs marked."""

    left, right, top, bottom = 70, 20, 22, 45

    def __init__(
        self, name: str, rounds: list[RoundStats], axis: _YAxis, y_label: str, height: int = 300
    ) -> None:
        self.rounds, self.axis, self.height = rounds, axis, height
        self.plot_w = _WIDTH - self.left - self.right
        self.plot_h = height - self.top - self.bottom
        xs = [r.round for r in rounds]
        self.x0, self.x1 = min(xs) - 0.5, max(xs) + 0.5
        self.slot = self.plot_w / (self.x1 - self.x0)
        self.out = [
            f'<svg width="{_WIDTH}" height="{height}" role="img" aria-label="{_esc(y_label)} '
            f'per round"><rect x="{self.left}" y="{self.top}" width="{self.plot_w}" '
            f'height="{self.plot_h}" fill="{PLOT_BACKGROUNDS[name]}"/>'
        ]
        self._grid(y_label)
        self._epochs()

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) * self.slot

    def py(self, y: float) -> float:
        return self.top + (1.0 - self.axis.frac(y)) * self.plot_h

    def clipped(self, y: float) -> bool:
        return not self.axis.lo <= y <= self.axis.hi

    def _grid(self, y_label: str) -> None:
        left, top, plot_w, plot_h = self.left, self.top, self.plot_w, self.plot_h
        out = self.out
        xt = [
            t for t in _ticks(self.x0 + 0.5, self.x1 - 0.5, integer=True) if self.x0 < t < self.x1
        ]
        for t in xt:
            x = self.px(t)
            out.append(
                f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 5}" '
                f'stroke="#333"/><text x="{x:.1f}" y="{top + plot_h + 18}" '
                f'text-anchor="middle">{_tick_label(t, xt)}</text>'
            )
        for t in self.axis.ticks:
            y = self.py(t)
            out.append(
                f'<line x1="{left - 5}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                f'stroke="#dde1e6"/><text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">'
                f"{self.axis.label(t)}</text>"
            )
        out.append(_axes(left, top, plot_w, plot_h))
        out.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{self.height - 6}" text-anchor="middle">'
            f'round</text><text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{_esc(y_label)}</text>'
        )

    def _epochs(self) -> None:
        """A dashed line before the first round of every epoch but the first; labels only
        where there is room for them."""
        top, plot_h = self.top, self.plot_h
        last_label = -1e9
        rounds = self.rounds
        for prev, r in zip(rounds[:-1], rounds[1:], strict=True):
            if r.epoch != prev.epoch:
                x = self.px(r.round - 0.5)
                self.out.append(
                    f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                    f'stroke="#999" stroke-dasharray="4 3"><title>epoch {r.epoch} starts at '
                    f"round {r.round}</title></line>"
                )
                if x - last_label > 60:
                    self.out.append(f'<text x="{x + 3:.1f}" y="{top - 6}">epoch {r.epoch}</text>')
                    last_label = x

    def svg(self) -> str:
        return "\n".join([*self.out, "</svg>"])


def _score_scale(rounds: list[RoundStats]) -> tuple[_YAxis, str, str]:
    """The score axis, its label and a note saying which scale and why (NOTE [score scale])."""
    finite = np.array([r.score for r in rounds if math.isfinite(r.score)], dtype=np.float64)
    if finite.size == 0:
        return _YAxis(0.0, 1.0), "score", "No finite score to draw."
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi / lo > _LOG_SPAN:
        note = (
            f"Log scale: the scores span {math.log10(hi / lo):.1f} decades ({lo:.4g} to {hi:.4g})."
        )
        return _YAxis(lo, hi, log=True), "score (log scale)", note
    k = max(1, math.ceil(finite.size / 10))
    if finite.size >= 5:
        rest = finite[k:]
        r_lo, r_hi = float(rest.min()), float(rest.max())
        if hi - lo > _ZOOM_FACTOR * (r_hi - r_lo) and finite[:k].max() > r_hi:
            axis = _YAxis(r_lo, r_hi)
            first = "round" if k == 1 else f"{k} rounds"
            note = (
                f"Zoomed in on the scores after the first {first}: the y axis spans "
                f"{axis.lo:.4g} to {axis.hi:.4g}; points outside it (the first rounds' scores, "
                f"up to {hi:.4g}) are drawn at its edge as triangles."
            )
            return axis, "score (zoomed)", note
    return _YAxis(lo, hi), "score", f"Linear scale, {lo:.4g} to {hi:.4g}."


def _score_chart(rounds: list[RoundStats]) -> str:
    axis, y_label, note = _score_scale(rounds)
    chart = _RoundChart("score", rounds, axis, y_label, height=320)
    out = chart.out
    # The score line, broken where a score is not finite.
    segment: list[str] = []
    segments = []
    for r in rounds:
        if math.isfinite(r.score):
            segment.append(f"{chart.px(r.round):.1f},{chart.py(r.score):.1f}")
        elif segment:
            segments.append(segment)
            segment = []
    if segment:
        segments.append(segment)
    for seg in segments:
        out.append(
            f'<polyline fill="none" stroke="{_SCORE_COLOUR}" stroke-width="1.5" '
            f'points="{" ".join(seg)}"/>'
        )
    many = len(rounds) > 200
    for r in rounds:
        if not math.isfinite(r.score) or (many and not chart.clipped(r.score)):
            continue
        x, y = chart.px(r.round), chart.py(r.score)
        tip = (
            f"<title>round {r.round} (epoch {r.epoch}): score {r.score:.6g}, {r.examples} "
            f"examples, {r.workers} workers, {format_duration(r.seconds)}</title>"
        )
        if chart.clipped(r.score):  # outside the zoomed axis: a triangle at its edge
            d = 7 if y <= chart.top + 1 else -7
            points = f"{x - 5:.1f},{y + d:.1f} {x + 5:.1f},{y + d:.1f} {x:.1f},{y:.1f}"
            out.append(f'<polygon points="{points}" fill="{_SCORE_COLOUR}">{tip}</polygon>')
        else:
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{_SCORE_COLOUR}">{tip}</circle>'
            )
    return chart.svg() + f'\n<p class="note">{_esc(note)}</p>'


def _throughput_chart(rounds: list[RoundStats]) -> str:
    speeds = [r.examples_per_second for r in rounds]
    seconds = sum(r.seconds for r in rounds)
    mean = sum(r.examples for r in rounds) / seconds if seconds > 0 else 0.0
    chart = _RoundChart("throughput", rounds, _YAxis(0.0, max(speeds)), "examples/s", height=260)
    out = chart.out
    base = chart.py(0.0)
    if len(rounds) <= 200:
        width = max(1.0, min(24.0, 0.8 * chart.slot))
        for r, v in zip(rounds, speeds, strict=True):
            y = chart.py(v)
            out.append(
                f'<rect x="{chart.px(r.round) - width / 2:.1f}" y="{y:.1f}" width="{width:.1f}" '
                f'height="{max(0.0, base - y):.1f}" fill="{_THROUGHPUT_COLOUR}"><title>round '
                f"{r.round} (epoch {r.epoch}): {v:,.1f} examples/s ({r.examples:,} examples in "
                f"{format_duration(r.seconds)}, {r.workers} workers)</title></rect>"
            )
    else:
        points = " ".join(
            f"{chart.px(r.round):.1f},{chart.py(v):.1f}"
            for r, v in zip(rounds, speeds, strict=True)
        )
        out.append(
            f'<polyline fill="none" stroke="{_THROUGHPUT_COLOUR}" stroke-width="1.5" '
            f'points="{points}"/>'
        )
    y = chart.py(mean)
    out.append(
        f'<line x1="{chart.left}" y1="{y:.1f}" x2="{chart.left + chart.plot_w}" y2="{y:.1f}" '
        f'stroke="#333" stroke-dasharray="6 4"><title>all rounds: {mean:,.1f} examples/s'
        f"</title></line>"
    )
    note = (
        f"Examples per second of each round's wall time (broadcast, fitting and averaging); "
        f"dashed: all rounds together, {mean:,.1f} examples/s."
    )
    return chart.svg() + f'\n<p class="note">{_esc(note)}</p>'


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
    return (
        "\n".join(out) + "\n" + _legend(by_phase, colours) + "\n" + table + _exchange_table(stats)
    )


def _exchange_table(stats: TrainingStats) -> str:
    """Per round, what the exchange moved and how long each step took: the parameters'
    distribution (the broadcast phase), each aggregation step, the driver's averaging; as the
    total and the median and most of a round. Empty for statistics without these figures."""
    rounds = stats.rounds
    if not any(r.distribute_bytes or r.aggregate_bytes or r.steps or r.average_s for r in rounds):
        return ""
    # name -> per round (seconds, bytes), bytes None where the row moves nothing
    rows: dict[str, list[tuple[float, int | None]]] = {
        "distribute": [(r.broadcast_s, r.distribute_bytes) for r in rounds]
    }
    for r in rounds:
        for step in r.steps:
            rows.setdefault(f"step: {step.name}", []).append((step.seconds, step.bytes))
    rows["average (driver)"] = [(r.average_s, None) for r in rounds]
    head = (
        "<tr><th>exchange</th><th>seconds</th><th>median round</th><th>slowest round</th>"
        "<th>bytes</th><th>bytes a round</th></tr>"
    )
    cells = []
    for name, values in rows.items():
        seconds = np.array([v[0] for v in values], dtype=np.float64)
        moved = [v[1] for v in values if v[1] is not None]
        total_bytes = format_bytes(sum(moved)) if moved else "-"
        per_round = format_bytes(sum(moved) / len(moved)) if moved else "-"
        cells.append(
            f"<tr><td>{_esc(name)}</td><td>{seconds.sum():.3f}</td>"
            f"<td>{format_duration(float(np.median(seconds)))}</td>"
            f"<td>{format_duration(float(seconds.max()))}</td>"
            f"<td>{_esc(total_bytes)}</td><td>{_esc(per_round)}</td></tr>"
        )
    exchange = ", ".join(stats.exchanges) or "unknown"
    note = (
        f'<p class="note">What the exchange ({_esc(exchange)}) moved and each step\'s time, over '
        f"{len(rounds):,} rounds (bytes summed over the workers).</p>"
    )
    return "\n" + note + f'<table class="exchange">{head}{"".join(cells)}</table>'


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
    out = [
        f'<svg width="{_WIDTH}" height="{height}" role="img" aria-label="timeline">'
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{row_h * len(workers)}" '
        f'fill="{PLOT_BACKGROUNDS["timeline"]}"/>'
    ]
    for i, w in enumerate(workers):
        y = top + i * row_h
        if i % 2:
            out.append(
                f'<rect x="{left}" y="{y}" width="{plot_w}" height="{row_h}" fill="#000" '
                'fill-opacity="0.03"/>'
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
