"""Statistics of parameter-averaging training: sums, a summary and a JSON round trip.

The successor of DL4J's ``SparkTrainingStats``. Training records one :class:`RoundStats` per
averaging round (measured on the driver) and any number of :class:`PhaseTiming` intervals
(measured where the work ran: the driver or an executor); :class:`TrainingStats` holds both, sums
them up (:meth:`TrainingStats.summary`) and round-trips through JSON
(:meth:`TrainingStats.to_dict`). :mod:`sparkbatch.train.report` draws them as a self-contained
HTML page (:meth:`TrainingStats.to_html`).

NOTE [wall time]: :attr:`TrainingStats.total_seconds` is the wall-clock span from the first
round's start to the last round's end. Every share (``seconds_by_phase``, ``overhead_fraction``,
examples per second) is taken of that span, so the phases and ``"other"`` (driver bookkeeping in a
round, and any gap between rounds) add up to it. Executors' clocks are not synchronised with the
driver's: on a real cluster the timeline's bars can be shifted by the machines' clock skew.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PhaseTiming", "RoundStats", "TrainingStats"]

FORMAT_NAME = "sparkbatch.train.stats"
FORMAT_VERSION = 1
ROUND_PHASES = ("broadcast", "fit", "aggregate")  # the driver's phases kept in RoundStats


@dataclass(frozen=True)
class PhaseTiming:
    """One interval of work by one worker in one round.

    Parameters
    ----------
    round : int
        Global round number (0-based).
    worker : str
        Who did the work, e.g. ``"driver"`` or ``"executor 1 / partition 3"``; one timeline row.
    phase : str
        ``"broadcast"``, ``"load"``, ``"fit"``, ``"aggregate"``, ``"average"`` or any other name.
    start, end : float
        Seconds on the :func:`time.time` clock of the machine that did the work.
    """

    round: int
    worker: str
    phase: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if not self.end >= self.start:
            raise ValueError(
                f"PhaseTiming end must not be before start, got start={self.start!r}, "
                f"end={self.end!r} ({self.worker!r}, {self.phase!r}, round {self.round})"
            )

    @property
    def seconds(self) -> float:
        """Duration of the interval."""
        return self.end - self.start


@dataclass(frozen=True)
class RoundStats:
    """One averaging round as the driver saw it.

    ``broadcast_s`` is the driver's time creating the broadcast. ``fit_s`` is the slowest
    worker's fitting (loading included) when per-worker timings are collected
    (``collect_stats=True``), else the whole Spark job's wall time (fitting plus scheduling and
    returning results). ``aggregate_s`` is the rest of the round: with per-worker timings, all
    that is not broadcast or fitting (scheduling, moving and summing results, averaging).
    ``start`` and ``end`` bound the whole round (:func:`time.time`). ``score`` is the mean
    score of the minibatches the ``workers`` fitted, over ``examples`` examples; ``skipped``
    counts the minibatches they skipped for holding NaN or infinity (``non_finite="skip"``).
    """

    epoch: int
    round: int
    rounds_in_epoch: int
    score: float
    examples: int
    workers: int
    start: float
    end: float
    broadcast_s: float
    fit_s: float
    aggregate_s: float
    skipped: int = 0

    def __post_init__(self) -> None:
        if not self.end >= self.start:
            raise ValueError(
                f"RoundStats end must not be before start, got start={self.start!r}, "
                f"end={self.end!r} (round {self.round})"
            )

    @property
    def seconds(self) -> float:
        """Wall-clock duration of the round."""
        return self.end - self.start


@dataclass
class TrainingStats:
    """Rounds and phase timings of one training run; sums, JSON and an HTML report.

    See NOTE [wall time] in this module for what the totals and shares are taken of.

    Examples
    --------
    >>> stats = TrainingStats()
    >>> for r, score in enumerate([0.75, 0.5]):
    ...     stats.add_round(RoundStats(epoch=0, round=r, rounds_in_epoch=2, score=score,
    ...         examples=64, workers=2, start=2.0 * r, end=2.0 * r + 2.0,
    ...         broadcast_s=0.25, fit_s=1.5, aggregate_s=0.125))
    >>> stats.add_phases([PhaseTiming(0, "executor 1", "fit", 0.25, 1.5)])
    >>> stats.total_seconds, stats.examples_per_second
    (4.0, 32.0)
    >>> stats.seconds_by_phase()
    {'broadcast': 0.5, 'fit': 3.0, 'aggregate': 0.25, 'other': 0.25}
    >>> stats.overhead_fraction()
    0.1875
    >>> print(stats.summary())
    rounds      2 (1 epoch)
    examples    128 (32.0 examples/s)
    wall time   4.00 s
    score       0.75 -> 0.5
    phase       seconds      %
    broadcast      0.50   12.5
    fit            3.00   75.0
    aggregate      0.25    6.2
    other          0.25    6.2
    >>> TrainingStats.from_dict(stats.to_dict()) == stats
    True
    >>> "<svg" in stats.render_html()
    True
    """

    rounds: list[RoundStats] = field(default_factory=list)
    phases: list[PhaseTiming] = field(default_factory=list)
    #: Minibatches skipped for holding NaN or infinity (``non_finite="skip"``) over the whole
    #: training, those of rounds in which nothing was left to fit included.
    skipped: int = 0

    def add_round(self, r: RoundStats) -> None:
        """Append the statistics of one finished round."""
        if not isinstance(r, RoundStats):
            raise TypeError(f"add_round expects a RoundStats, got {type(r).__name__}")
        self.rounds.append(r)

    def add_phases(self, phases: Iterable[PhaseTiming]) -> None:
        """Append phase timings (from the driver or collected from the executors)."""
        phases = list(phases)
        for p in phases:
            if not isinstance(p, PhaseTiming):
                raise TypeError(f"add_phases expects PhaseTiming items, got {type(p).__name__}")
        self.phases.extend(phases)

    @property
    def scores(self) -> np.ndarray:
        """Score of every round, in the order the rounds were added (float64)."""
        return np.array([r.score for r in self.rounds], dtype=np.float64)

    @property
    def examples(self) -> int:
        """Examples fitted over all rounds."""
        return sum(r.examples for r in self.rounds)

    @property
    def total_seconds(self) -> float:
        """Wall-clock seconds from the first round's start to the last round's end (0 if none)."""
        if not self.rounds:
            return 0.0
        return max(r.end for r in self.rounds) - min(r.start for r in self.rounds)

    @property
    def examples_per_second(self) -> float:
        """Examples over :attr:`total_seconds` (0 when no time has passed)."""
        total = self.total_seconds
        return self.examples / total if total > 0 else 0.0

    def seconds_by_phase(self) -> dict[str, float]:
        """Driver seconds per phase summed over the rounds, plus ``"other"`` for the rest.

        ``"other"`` is :attr:`total_seconds` minus the three phases (never below 0).
        """
        out = {
            "broadcast": sum(r.broadcast_s for r in self.rounds),
            "fit": sum(r.fit_s for r in self.rounds),
            "aggregate": sum(r.aggregate_s for r in self.rounds),
        }
        out["other"] = max(0.0, self.total_seconds - sum(out.values()))
        return out

    def overhead_fraction(self) -> float:
        """Share of the wall time spent broadcasting and aggregating (0 when no time passed).

        The price of parameter averaging: time in which no worker fits. A high value asks for a
        larger ``averaging_frequency``.
        """
        total = self.total_seconds
        if total <= 0:
            return 0.0
        by_phase = self.seconds_by_phase()
        return (by_phase["broadcast"] + by_phase["aggregate"]) / total

    def summary(self) -> str:
        """A short plain-text table: rounds, examples, speed, score, time per phase."""
        if not self.rounds:
            return "no rounds recorded"
        epochs = len({r.epoch for r in self.rounds})
        scores = self.scores
        total = self.total_seconds
        lines = [
            f"{'rounds':<11} {len(self.rounds)} ({epochs} epoch{'s' if epochs != 1 else ''})",
            f"{'examples':<11} {self.examples} ({self.examples_per_second:.1f} examples/s)",
            f"{'wall time':<11} {format_duration(total)}",
            f"{'score':<11} {scores[0]:.4g} -> {scores[-1]:.4g}",
        ]
        if self.skipped:
            lines.append(f"{'skipped':<11} {self.skipped} minibatches (NaN or infinity)")
        lines += [f"{'phase':<11} {'seconds':>7} {'%':>6}"]
        for name, seconds in self.seconds_by_phase().items():
            share = 100.0 * seconds / total if total > 0 else 0.0
            lines.append(f"{name:<11} {seconds:>7.2f} {share:>6.1f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (strict JSON: non-finite numbers become ``"nan"``, ``"inf"``)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "rounds": [_record(r) for r in self.rounds],
            "phases": [_record(p) for p in self.phases],
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingStats:
        """Rebuild statistics from :meth:`to_dict`'s output (for example after ``json.loads``)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"from_dict expects a mapping, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"expected training statistics with format {FORMAT_NAME!r} version "
                f"{FORMAT_VERSION}, got format {data.get('format')!r} version "
                f"{data.get('version')!r}"
            )
        return cls(
            rounds=[_from_record(RoundStats, r, i) for i, r in enumerate(data.get("rounds", []))],
            phases=[_from_record(PhaseTiming, p, i) for i, p in enumerate(data.get("phases", []))],
            skipped=int(data.get("skipped", 0)),
        )

    def render_html(self, *, title: str = "sparkbatch training") -> str:
        """The HTML report as a string (see :meth:`to_html`)."""
        from .report import render_html  # the report draws statistics: it imports this module

        return render_html(self, title=title)

    def to_html(
        self,
        url: str | os.PathLike[str],
        *,
        title: str = "sparkbatch training",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        """Write a self-contained HTML report to ``url`` (any fsspec URL), atomically.

        The page shows the totals, the score per round with the epochs marked, the time per
        phase and a timeline with one row per worker. It loads nothing from anywhere: no
        scripts, no style sheets, no fonts (NOTE [HTML report] in :mod:`sparkbatch.train.report`).
        """
        from .report import write_html

        write_html(self, url, title=title, storage_options=storage_options)


# --- JSON records --------------------------------------------------------------------------------


def _record(obj: Any) -> dict[str, Any]:
    out = dataclasses.asdict(obj)
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = repr(value)  # "nan", "inf", "-inf": float() reads them back
    return out


def _from_record(cls: type, record: Any, index: int) -> Any:
    name = cls.__name__
    if not isinstance(record, Mapping):
        raise ValueError(f"{name} {index}: expected an object, got {type(record).__name__}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in record:
            if f.default is not dataclasses.MISSING:  # added later: older records lack it
                continue
            raise ValueError(f"{name} {index}: missing field {f.name!r}")
        convert = {"int": int, "float": float, "str": str}[f.type]
        try:
            values[f.name] = convert(record[f.name])
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{name} {index}: field {f.name!r} must be {f.type}, got {record[f.name]!r}"
            ) from e
    return cls(**values)


# --- formatting ----------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``seconds`` as people read a duration: ``"250.0 ms"``, ``"4.00 s"``, ``"2 min 5 s"``.

    >>> format_duration(0.25), format_duration(4.0), format_duration(125.0), format_duration(7500)
    ('250.0 ms', '4.00 s', '2 min 5 s', '2 h 5 min')
    """
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {seconds % 60:.0f} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
