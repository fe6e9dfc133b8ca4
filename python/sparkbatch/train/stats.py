"""Statistics of parameter-averaging training: sums, a summary and a JSON round trip.

The successor of DL4J's ``SparkTrainingStats``. Training records one :class:`RoundStats` per
averaging round (measured on the driver) and any number of :class:`PhaseTiming` intervals
(measured where the work ran: the driver or an executor); :class:`TrainingStats` holds both, sums
them up (:meth:`TrainingStats.summary`) and round-trips through JSON
(:meth:`TrainingStats.to_dict`). Beside the timings it keeps what a person needs to read them:
the configuration of every fit (the model, the averaging settings, Spark, the data; recorded by
:class:`~sparkbatch.train.runner.FitRunner`) and the figures of the last held-out evaluation
(:meth:`TrainingStats.set_evaluation`), all as plain JSON-able values.
:mod:`sparkbatch.train.report` draws them as a self-contained HTML page
(:meth:`TrainingStats.to_html`).

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

from ..evaluation import Evaluation, RegressionEvaluation

__all__ = ["AggregationStep", "PhaseTiming", "RoundStats", "TrainingStats"]

FORMAT_NAME = "sparkbatch.train.stats"
FORMAT_VERSION = 1
ROUND_PHASES = ("broadcast", "fit", "aggregate", "average")  # the driver's, per RoundStats
#: A confusion matrix of more classes than this is not kept (nor drawn); per-class figures are.
MAX_CONFUSION_CLASSES = 100
#: The evaluation figures that are floats (or lists of floats): non-finite ones are written as
#: strings in JSON and read back as floats.
_EVALUATION_FLOATS = frozenset(
    ["accuracy", "top_n_accuracy", "precision", "recall", "f1", "mse", "mae", "rmse", "r2"]
    + ["macro_precision", "macro_recall", "macro_f1"]
)


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
class AggregationStep:
    """One step of a round's aggregation: its ``name`` (``"treeAggregate"``, ``"receive"``,
    ...), the ``seconds`` it took and the ``bytes`` it moved (summed over every sender).

    What a step's time covers is the exchange's to say: see ``RoundStats.steps``.
    """

    name: str
    seconds: float
    bytes: int


@dataclass(frozen=True)
class RoundStats:
    """One averaging round as the driver saw it.

    ``broadcast_s`` is the driver's time creating the broadcast. ``fit_s`` is the slowest
    worker's fitting (loading included) when per-worker timings are collected
    (``collect_stats=True``), else the whole Spark job's wall time (fitting plus scheduling and
    returning results). ``aggregate_s`` is the rest of the round: with per-worker timings, all
    that is not broadcast or fitting (scheduling, moving and summing results, averaging).
    ``start`` and ``end`` bound the whole round (:func:`time.time`). ``score`` is the mean
    score of the minibatches the ``workers`` fitted, over ``examples`` examples in
    ``minibatches`` minibatches (0 in statistics written before they were counted); ``skipped``
    counts the minibatches they skipped for holding NaN or infinity (``non_finite="skip"``).

    What the ``exchange`` (``"spark"``, ``"socket"``, ...) moved: ``distribute_bytes``, the
    parameters (and updater state) sent to the workers at the round's start, summed over the
    workers (0 where they stay on the workers); ``aggregate_bytes``, what the workers sent back
    to be summed, summed over every sender; ``steps``, the aggregation's steps in order, each
    with its time and bytes (:class:`AggregationStep`). ``average_s`` is the driver's time
    averaging the sum into the model and checking it, a part of ``aggregate_s``. All five are 0
    or empty in statistics written before they were measured.
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
    minibatches: int = 0
    distribute_bytes: int = 0
    aggregate_bytes: int = 0
    average_s: float = 0.0
    steps: tuple[AggregationStep, ...] = ()
    exchange: str = ""

    def __post_init__(self) -> None:
        if not all(isinstance(s, AggregationStep) for s in self.steps):
            raise TypeError(f"RoundStats steps must be AggregationSteps, got {self.steps!r}")
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.end >= self.start:
            raise ValueError(
                f"RoundStats end must not be before start, got start={self.start!r}, "
                f"end={self.end!r} (round {self.round})"
            )

    @property
    def seconds(self) -> float:
        """Wall-clock duration of the round."""
        return self.end - self.start

    @property
    def examples_per_second(self) -> float:
        """Examples over the round's wall-clock duration (0 when no time has passed)."""
        seconds = self.seconds
        return self.examples / seconds if seconds > 0 else 0.0


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
    ...         broadcast_s=0.25, fit_s=1.5, aggregate_s=0.125, average_s=0.0625,
    ...         distribute_bytes=464, aggregate_bytes=464, exchange="spark",
    ...         steps=(AggregationStep("treeAggregate", 0.0625, 464),)))
    >>> stats.add_phases([PhaseTiming(0, "executor 1", "fit", 0.25, 1.5)])
    >>> stats.total_seconds, stats.examples_per_second
    (4.0, 32.0)
    >>> stats.seconds_by_phase()
    {'broadcast': 0.5, 'fit': 3.0, 'aggregate': 0.125, 'average': 0.125, 'other': 0.25}
    >>> stats.overhead_fraction()
    0.1875
    >>> stats.bytes_by_phase()
    {'distribute': 928, 'aggregate': 928}
    >>> stats.steps_by_name()
    {'treeAggregate': AggregationStep(name='treeAggregate', seconds=0.125, bytes=928)}
    >>> print(stats.summary())
    rounds      2 (1 epoch)
    examples    128 (32.0 examples/s)
    wall time   4.00 s
    score       0.75 -> 0.5
    exchange    spark
    phase       seconds      %
    broadcast      0.50   12.5
    fit            3.00   75.0
    aggregate      0.12    3.1
    average        0.12    3.1
    other          0.25    6.2
    moved           bytes  a round
    distribute      928 B    464 B
    aggregate       928 B    464 B
    step          seconds     bytes
    treeAggregate    0.12     928 B
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
    #: What was trained and how, by section (``"model"``, ``"averaging"``, ``"spark"``): plain
    #: JSON-able values, those of the latest fit (:meth:`set_configuration`).
    configuration: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: One entry per fit, in order: where its data came from, its epochs, rounds and workers,
    #: and ``"first round"``, the number of its first round (:meth:`add_fit`).
    fits: list[dict[str, Any]] = field(default_factory=list)
    #: The figures of the latest held-out evaluation (:meth:`set_evaluation`), with the
    #: rounds recorded when it was made (``"after rounds"``) and, where SparkNetwork
    #: evaluated one of a Graph's outputs, its name (``"output"``); or None.
    evaluation: dict[str, Any] | None = None

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

    def set_configuration(self, section: str, values: Mapping[str, Any]) -> None:
        """Keep ``values`` (JSON-able: numbers, strings, lists, mappings) as the configuration
        ``section`` (e.g. ``"model"``), replacing an earlier fit's."""
        if not isinstance(section, str) or not section:
            raise ValueError(f"section must be a non-empty str, got {section!r}")
        if not isinstance(values, Mapping):
            raise TypeError(
                f"configuration {section!r} must be a mapping, got {type(values).__name__}"
            )
        self.configuration[section] = _plain(values, f"configuration {section!r}")

    def add_fit(self, values: Mapping[str, Any]) -> None:
        """Append the description of a fit that starts (JSON-able values; see :attr:`fits`)."""
        if not isinstance(values, Mapping):
            raise TypeError(f"add_fit expects a mapping, got {type(values).__name__}")
        self.fits.append(_plain(values, f"fit {len(self.fits)}"))

    def set_evaluation(self, evaluation: Evaluation | RegressionEvaluation) -> None:
        """Keep the figures of ``evaluation`` (a held-out evaluation) for the report.

        The figures are copied, not the object: accuracy, top-N accuracy, per-class precision,
        recall, F1 and counts and the confusion matrix (up to ``MAX_CONFUSION_CLASSES``
        classes) of an :class:`~sparkbatch.evaluation.Evaluation`; MSE, MAE, RMSE and R² per
        column of a :class:`~sparkbatch.evaluation.RegressionEvaluation`. ``"after rounds"``
        is the number of rounds recorded so far, so that the report can say when the model
        was trained on after it was evaluated (its figures then describe an earlier model).

        Examples
        --------
        >>> import numpy as np
        >>> from sparkbatch.evaluation import Evaluation
        >>> ev = Evaluation(labels=["no", "yes"])
        >>> ev.eval(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
        >>> stats = TrainingStats()
        >>> stats.set_evaluation(ev)
        >>> stats.evaluation["confusion"], stats.evaluation["count"]
        ([[1, 0], [1, 1]], [1, 2])
        """
        self.evaluation = {**evaluation_figures(evaluation), "after rounds": len(self.rounds)}

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

        ``"average"`` (the driver averaging the sum into the model) is split out of
        ``"aggregate"``, which keeps the rest of each round's ``aggregate_s``. ``"other"`` is
        :attr:`total_seconds` minus the four phases (never below 0).
        """
        out = {
            "broadcast": sum(r.broadcast_s for r in self.rounds),
            "fit": sum(r.fit_s for r in self.rounds),
            "aggregate": sum(max(0.0, r.aggregate_s - r.average_s) for r in self.rounds),
            "average": sum(r.average_s for r in self.rounds),
        }
        out["other"] = max(0.0, self.total_seconds - sum(out.values()))
        return out

    def bytes_by_phase(self) -> dict[str, int]:
        """Bytes moved over all rounds: ``"distribute"`` (parameters sent to the workers at
        the rounds' starts) and ``"aggregate"`` (what the workers sent back), each summed over
        the workers (0 where not measured)."""
        return {
            "distribute": sum(r.distribute_bytes for r in self.rounds),
            "aggregate": sum(r.aggregate_bytes for r in self.rounds),
        }

    def steps_by_name(self) -> dict[str, AggregationStep]:
        """Every aggregation step's seconds and bytes summed over the rounds, by name, in the
        order the steps first appear."""
        seconds: dict[str, float] = {}
        moved: dict[str, int] = {}
        for r in self.rounds:
            for step in r.steps:
                seconds[step.name] = seconds.get(step.name, 0.0) + step.seconds
                moved[step.name] = moved.get(step.name, 0) + step.bytes
        return {name: AggregationStep(name, seconds[name], moved[name]) for name in seconds}

    @property
    def exchanges(self) -> list[str]:
        """The exchanges' names the rounds were recorded with, in order of first use."""
        return list(dict.fromkeys(r.exchange for r in self.rounds if r.exchange))

    def overhead_fraction(self) -> float:
        """Share of the wall time spent broadcasting, aggregating and averaging (0 when no time
        passed).

        The price of parameter averaging: time in which no worker fits. A high value asks for a
        larger ``averaging_frequency``.
        """
        total = self.total_seconds
        if total <= 0:
            return 0.0
        by_phase = self.seconds_by_phase()
        return (by_phase["broadcast"] + by_phase["aggregate"] + by_phase["average"]) / total

    def summary(self) -> str:
        """A short plain-text table: rounds, examples, speed, score, the exchange, time per
        phase and, where measured, the bytes moved and the aggregation's steps."""
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
        if self.exchanges:
            lines.append(f"{'exchange':<11} {', '.join(self.exchanges)}")
        lines += [f"{'phase':<11} {'seconds':>7} {'%':>6}"]
        for name, seconds in self.seconds_by_phase().items():
            share = 100.0 * seconds / total if total > 0 else 0.0
            lines.append(f"{name:<11} {seconds:>7.2f} {share:>6.1f}")
        moved = self.bytes_by_phase()
        if any(moved.values()):
            lines.append(f"{'moved':<11} {'bytes':>9} {'a round':>8}")
            for name, count in moved.items():
                per_round = format_bytes(count / len(self.rounds))
                lines.append(f"{name:<11} {format_bytes(count):>9} {per_round:>8}")
        steps = self.steps_by_name()
        if steps:
            width = max(11, *(len(name) for name in steps))
            lines.append(f"{'step':<{width}} {'seconds':>7} {'bytes':>9}")
            for step in steps.values():
                seconds, moved_by = f"{step.seconds:.2f}", format_bytes(step.bytes)
                lines.append(f"{step.name:<{width}} {seconds:>7} {moved_by:>9}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (strict JSON: non-finite numbers become ``"nan"``, ``"inf"``)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "rounds": [_record(r) for r in self.rounds],
            "phases": [_record(p) for p in self.phases],
            "skipped": self.skipped,
            "configuration": _strict(self.configuration),
            "fits": _strict(self.fits),
            "evaluation": _strict(self.evaluation),
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
        # configuration, fits and evaluation came later: older statistics lack them
        configuration = data.get("configuration", {})
        if not isinstance(configuration, Mapping) or not all(
            isinstance(v, Mapping) for v in configuration.values()
        ):
            raise ValueError(f"configuration must map sections to objects, got {configuration!r}")
        fits = data.get("fits", [])
        if not isinstance(fits, list) or not all(isinstance(f, Mapping) for f in fits):
            raise ValueError(f"fits must be a list of objects, got {fits!r}")
        evaluation = data.get("evaluation")
        if evaluation is not None:
            if not isinstance(evaluation, Mapping) or evaluation.get("kind") not in (
                "classification",
                "regression",
            ):
                raise ValueError(
                    "evaluation must be an object of kind 'classification' or 'regression', "
                    f"got {evaluation!r}"
                )
            evaluation = {
                k: _floats(v) if k in _EVALUATION_FLOATS else v for k, v in evaluation.items()
            }
        return cls(
            rounds=[_from_record(RoundStats, r, i) for i, r in enumerate(data.get("rounds", []))],
            phases=[_from_record(PhaseTiming, p, i) for i, p in enumerate(data.get("phases", []))],
            skipped=int(data.get("skipped", 0)),
            configuration={k: dict(v) for k, v in configuration.items()},
            fits=[dict(f) for f in fits],
            evaluation=None if evaluation is None else dict(evaluation),
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

        The page shows the totals, the configuration (model, averaging settings, Spark, the
        data of every fit), the held-out evaluation when there is one, the score per round
        (on a log or zoomed axis where that shows the progress) and the throughput per round
        with the epochs marked, the time per phase and a timeline with one row per worker. It
        loads nothing from anywhere: no scripts, no style sheets, no fonts (NOTE [HTML report]
        in :mod:`sparkbatch.train.report`).
        """
        from .report import write_html

        write_html(self, url, title=title, storage_options=storage_options)


# --- JSON records --------------------------------------------------------------------------------


def _record(obj: Any) -> dict[str, Any]:
    out = dataclasses.asdict(obj)
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = repr(value)  # "nan", "inf", "-inf": float() reads them back
        elif key == "steps":
            out[key] = [_record(step) for step in getattr(obj, key)]
    return out


def _steps(records: Any) -> tuple[AggregationStep, ...]:
    if not isinstance(records, list):
        raise TypeError(f"expected a list of steps, got {type(records).__name__}")
    return tuple(_from_record(AggregationStep, s, i) for i, s in enumerate(records))


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
        convert = {"int": int, "float": float, "str": str}.get(f.type, _steps)
        try:
            values[f.name] = convert(record[f.name])
        except (TypeError, ValueError) as e:
            if convert is _steps:  # the step's own error names it
                raise ValueError(f"{name} {index}: field {f.name!r}: {e}") from e
            raise ValueError(
                f"{name} {index}: field {f.name!r} must be {f.type}, got {record[f.name]!r}"
            ) from e
    return cls(**values)


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON-able data (dicts with str keys, lists, str, int, float, bool,
    None); numpy scalars and arrays become numbers and lists. Anything else is a TypeError
    naming ``where``."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} must hold plain JSON-able values (numbers, strings, lists, mappings), "
        f"got {type(value).__name__}"
    )


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float as its ``repr`` (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def _floats(value: Any) -> Any:
    """:func:`_strict` undone for a figure: ``"nan"``, ``"inf"``, ``"-inf"`` back to floats."""
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def evaluation_figures(evaluation: Evaluation | RegressionEvaluation) -> dict[str, Any]:
    """The figures of ``evaluation`` as a plain dict (see :meth:`TrainingStats.set_evaluation`).

    Classification: ``kind``, ``examples``, ``classes`` (names), ``accuracy``, ``top_n``,
    ``top_n_accuracy``, per class ``precision``, ``recall``, ``f1`` and ``count`` (examples
    of the class), their macro averages ``macro_precision``, ``macro_recall``, ``macro_f1``,
    and ``confusion`` (rows actual, columns predicted; None beyond ``MAX_CONFUSION_CLASSES``
    classes). Regression: ``kind``, ``examples``, ``columns`` (names) and per column ``mse``,
    ``mae``, ``rmse`` and ``r2``. An evaluation of nothing has ``examples`` 0 and nothing else.
    """
    if isinstance(evaluation, Evaluation):
        n = evaluation.num_classes
        if n is None or evaluation.num_examples == 0:
            return {"kind": "classification", "examples": 0}
        cm = evaluation.confusion_matrix()
        classes = range(n)
        return {
            "kind": "classification",
            "examples": evaluation.num_examples,
            "classes": [str(c) for c in classes]
            if evaluation.label_names is None
            else list(evaluation.label_names),
            "accuracy": evaluation.accuracy(),
            "top_n": evaluation.top_n,
            "top_n_accuracy": evaluation.top_n_accuracy(),
            "precision": [evaluation.precision(c) for c in classes],
            "recall": [evaluation.recall(c) for c in classes],
            "f1": [evaluation.f1(c) for c in classes],
            "count": cm.sum(axis=1).tolist(),
            "macro_precision": evaluation.precision(),
            "macro_recall": evaluation.recall(),
            "macro_f1": evaluation.f1(),
            "confusion": cm.tolist() if n <= MAX_CONFUSION_CLASSES else None,
        }
    if isinstance(evaluation, RegressionEvaluation):
        k = evaluation.num_columns
        if k is None or evaluation.num_examples == 0:
            return {"kind": "regression", "examples": 0}
        columns = range(k)
        return {
            "kind": "regression",
            "examples": evaluation.num_examples,
            "columns": [str(c) for c in columns]
            if evaluation.column_names is None
            else list(evaluation.column_names),
            "mse": [evaluation.mean_squared_error(c) for c in columns],
            "mae": [evaluation.mean_absolute_error(c) for c in columns],
            "rmse": [evaluation.root_mean_squared_error(c) for c in columns],
            "r2": [evaluation.r2(c) for c in columns],
        }
    raise TypeError(
        f"set_evaluation expects an Evaluation or RegressionEvaluation, "
        f"got {type(evaluation).__name__}"
    )


# --- formatting ----------------------------------------------------------------------------------


def format_bytes(count: float) -> str:
    """``count`` bytes as people read a size (powers of 1000): ``"928 B"``, ``"4.6 MB"``.

    >>> format_bytes(928), format_bytes(4_600_000), format_bytes(12.5e9)
    ('928 B', '4.6 MB', '12.5 GB')
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


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
