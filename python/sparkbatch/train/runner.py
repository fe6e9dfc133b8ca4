"""``FitRunner``: the driver's side of a fit, whichever exchange moves the parameters.

An :class:`~sparkbatch.train.Exchange` asks the runner what the workers start round ``g`` from
(:meth:`FitRunner.state`) and hands it every round's summed results
(:meth:`FitRunner.finish`), which the runner averages into the model (in place, with the
native kernel), checks, records in :class:`~sparkbatch.train.TrainingStats` and logs; the last
round of an epoch ends the epoch. When the exchange asks for the workers' setup
(:meth:`FitRunner.worker_setup`, once per fit) the runner records the fit's configuration in
the statistics too: the model (:func:`describe_model`), the averaging settings
(:func:`describe_averaging`), Spark, and the fit's data, epochs, rounds and workers, which the
HTML report shows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _native
from .._finite import check_params
from ..data import PreprocessingLoader
from .model import ModelAccess
from .stats import AggregationStep, PhaseTiming, RoundStats, TrainingStats
from .worker import RoundResult, WorkerSetup

if TYPE_CHECKING:
    from pyspark import SparkContext

    from .master import ParameterAveraging
    from .plan import FitPlan

__all__ = ["FitRunner", "RoundTiming", "describe_averaging", "describe_model"]

log = logging.getLogger("sparkbatch.train")


@dataclass(frozen=True)
class RoundTiming:
    """When a round began (``start``, seconds since the epoch), how long the parameters took
    to reach the workers (``broadcast_s``) and the slowest worker to fit (``fit_s``), and when
    the driver began summing and averaging (``aggregate_start``). ``driver_broadcast``: the
    driver spent ``broadcast_s`` itself (a Spark broadcast), which ``collect_stats`` records
    as a driver phase. What the ``exchange`` (its name) moved: ``distribute_bytes`` to the
    workers at the round's start and ``aggregate_bytes`` back, each summed over the workers,
    and the aggregation's ``steps`` (see :class:`~sparkbatch.train.stats.RoundStats`)."""

    start: float
    broadcast_s: float
    fit_s: float
    aggregate_start: float
    driver_broadcast: bool = False
    distribute_bytes: int = 0
    aggregate_bytes: int = 0
    steps: tuple[AggregationStep, ...] = ()
    exchange: str = ""


class FitRunner:
    """Runs one fit of ``access``'s model on the driver, as ``settings`` configure; rounds are
    numbered on from ``first_round`` (:attr:`round` is the next one's number) and recorded in
    ``stats``."""

    def __init__(
        self,
        sc: SparkContext,
        settings: ParameterAveraging,
        access: ModelAccess,
        stats: TrainingStats,
        *,
        first_round: int,
    ) -> None:
        self.sc = sc
        self.settings = settings
        self.access = access
        self.stats = stats
        #: The number of the next round averaged, counted over every fit of the model.
        self.round = first_round
        self._described: FitPlan | None = None

    def worker_setup(self, plan: FitPlan) -> WorkerSetup:
        """What every worker task of ``plan`` needs; the first call for a plan records the
        fit's configuration in the statistics (:meth:`describe`)."""
        if self._described is not plan:
            self.describe(plan)
            self._described = plan
        return worker_setup(self.access, self.settings, plan.loader, plan.exported)

    def describe(self, plan: FitPlan) -> None:
        """Record the configuration of the fit ``plan`` is about to run in the statistics: the
        model, the averaging settings and Spark (replacing an earlier fit's) and the fit's data,
        epochs, rounds and workers (appended to ``stats.fits``)."""
        stats, sc = self.stats, self.sc
        stats.set_configuration("model", describe_model(self.access.model))
        stats.set_configuration("averaging", describe_averaging(self.settings))
        stats.set_configuration(
            "spark",
            {
                "master": sc.master,
                "application": sc.appName,
                "default parallelism": sc.defaultParallelism,
                "Spark version": sc.version,
            },
        )
        if plan.loader is None:
            source = "RDD partitions (approach='direct')"
        elif plan.exported:
            source = "RDD exported to minibatch files (approach='export')"
        elif isinstance(plan.loader, PreprocessingLoader):  # fit(..., preprocessor=) of files
            source = (
                f"minibatch files read by {type(plan.loader.loader).__name__}, preprocessed by "
                f"{_name(plan.loader.preprocessor)}"
            )
        else:
            source = f"minibatch files read by {type(plan.loader).__name__}"
        if plan.preprocessor is not None:  # fit(rdd, preprocessor=)
            source += f", preprocessed by {_name(plan.preprocessor)}"
        per_epoch: dict[int, int] = {}
        for planned in plan.rounds:
            per_epoch[planned.epoch] = planned.count
        stats.add_fit(
            {
                "source": source,
                "epochs": plan.epochs,
                "first epoch": plan.rounds[0].epoch if plan.rounds else self.access.model.epoch,
                "rounds per epoch": sorted(set(per_epoch.values())),
                "workers": plan.workers,
                "first round": self.round,
            }
        )

    def state(self, plan: FitPlan, g: int) -> tuple[dict[str, Any], list[np.ndarray]]:
        """What a worker about to fit round ``g`` of ``plan`` starts from: its counters
        (iteration, updater_steps, epoch) and arrays (the parameters, and with
        ``save_updater`` the updater state; the model's own buffers, not copies)."""
        model = self.access.model
        counters = {
            "iteration": model.iteration,
            "updater_steps": self.access.updater_steps,
            "epoch": plan.rounds[min(g, len(plan.rounds) - 1)].epoch,
        }
        arrays = [model.params()]
        if self.settings.save_updater:
            arrays.append(model.updater_state())
        return counters, arrays

    def finish(
        self, plan: FitPlan, g: int, result: RoundResult | None, timing: RoundTiming
    ) -> None:
        """Round ``g`` of ``plan`` has ended with the workers' summed ``result`` (None: no
        worker had data): raise a worker's error, or average it into the model and record it;
        the last round of an epoch ends the epoch."""
        planned = plan.rounds[g]
        if result is not None:
            if result.error is not None:  # a worker's NonFiniteError or DivergenceError
                raise result.error
            self._apply(result, planned.epoch, planned.count, planned.label, timing)
        if planned.ends_epoch:
            self.access.model.epoch += 1

    def _apply(
        self, result: RoundResult, epoch: int, rounds_in_epoch: int, label: str, t: RoundTiming
    ) -> None:
        """Average the round's summed ``result`` into the model and record the round."""
        m = self.settings
        access = self.access
        model = access.model
        self.stats.skipped += result.skipped
        if result.params is None:  # every worker skipped all its minibatches: no average
            log.warning("%s: nothing fitted, %d minibatches skipped", label, result.skipped)
            return
        average_start = time.time()
        check_params(
            result.params,
            f"round {self.round} (epoch {epoch}; {label} of this fit)",
            f"the sum of the {result.workers} workers' parameters holds",
            "the model keeps its parameters of before this round",
        )
        # A CPU network's buffers take the average directly; any other Model (a GPU network's
        # params() is a host copy) gets it averaged in place into the sum, then set.
        own = access.own_buffers(m.save_updater)
        if own:
            _native.nn_average([result.params], own[0], result.workers)
        else:
            _native.nn_average([result.params], result.params, result.workers)
            model.set_params(result.params)
        if m.save_updater and result.state is not None:
            if own:
                _native.nn_average([result.state], own[1], result.workers)
            else:
                _native.nn_average([result.state], result.state, result.workers)
                model.set_updater_state(result.state)
        average_s = time.time() - average_start
        if m.save_updater:
            access.updater_steps += result.max_batches  # before iteration: its default
        model.iteration += result.max_batches
        score = result.score_sum / result.batches
        access.record_score(score)
        self._record(result, epoch, rounds_in_epoch, label, score, t, average_start, average_s)
        self.round += 1

    def _record(
        self,
        result: RoundResult,
        epoch: int,
        rounds_in_epoch: int,
        label: str,
        score: float,
        t: RoundTiming,
        average_start: float,
        average_s: float,
    ) -> None:
        """Add the round's RoundStats (and with ``collect_stats`` its phases: the workers',
        and the driver's broadcast, aggregation and averaging) to the statistics."""
        end = time.time()
        aggregate_s = max(0.0, (end - t.start) - t.broadcast_s - t.fit_s)
        self.stats.add_round(
            RoundStats(
                epoch=epoch,
                round=self.round,
                rounds_in_epoch=rounds_in_epoch,
                score=score,
                examples=result.examples,
                workers=result.workers,
                start=t.start,
                end=end,
                broadcast_s=t.broadcast_s,
                fit_s=min(t.fit_s, end - t.start),
                aggregate_s=aggregate_s,
                skipped=result.skipped,
                minibatches=result.batches,
                distribute_bytes=t.distribute_bytes,
                aggregate_bytes=t.aggregate_bytes,
                average_s=min(average_s, aggregate_s),  # a part of aggregate_s
                steps=tuple(t.steps),
                exchange=t.exchange,
            )
        )
        if self.settings.collect_stats:
            self.stats.add_phases(result.phases)
            split = min(max(average_start, t.aggregate_start), end)
            phases = [
                PhaseTiming(self.round, "driver", "aggregate", t.aggregate_start, split),
                PhaseTiming(self.round, "driver", "average", split, end),
            ]
            if t.driver_broadcast:
                phases.insert(
                    0,
                    PhaseTiming(
                        self.round, "driver", "broadcast", t.start, t.start + t.broadcast_s
                    ),
                )
            self.stats.add_phases(phases)
        log.info("%s: score %.6f over %d examples", label, score, result.examples)
        if result.skipped:
            log.warning("%s: %d minibatches skipped (NaN or infinity)", label, result.skipped)


def worker_setup(
    access: ModelAccess, settings: ParameterAveraging, loader: Any, exported: bool = False
) -> WorkerSetup:
    """What every worker task needs to build ``access``'s model and fit (or evaluate) the
    items read by ``loader``, as ``settings`` configure."""
    model = access.model
    return WorkerSetup(
        type(model),
        json.dumps(model.to_config(), sort_keys=True),
        batch_size=settings.batch_size_per_worker,
        save_updater=settings.save_updater,
        loader=loader,
        storage_options=settings.storage_options,
        prefetch=settings.prefetch,
        collect_stats=settings.collect_stats,
        device=settings.worker_device,
        non_finite=settings.non_finite,
        exported=exported,
    )


def describe_model(model: Any) -> dict[str, Any]:
    """What the report shows of ``model``: its class, ``repr`` (where the class defines one),
    parameter count (the size of ``params()``), and from ``to_config()`` its dtype, updater and
    layers (a Network's ``layers``; a Graph's ``vertices``, each with its name and inputs).

    Examples
    --------
    >>> from sparkbatch.nn import SGD, Dense, Network, Output
    >>> info = describe_model(Network([Dense(4, 8, "tanh"), Output(8, 2)], SGD(0.5)))
    >>> info["class"], info["parameters"], info["updater"], [l["type"] for l in info["layers"]]
    ('sparkbatch.nn.network.Network', 58, 'SGD(learning_rate=0.5)', ['Dense', 'Output'])
    """
    cls = type(model)
    out: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "parameters": int(np.size(model.params())),
    }
    if cls.__repr__ is not object.__repr__:
        out["summary"] = repr(model)[:500]
    config = model.to_config()
    if not isinstance(config, Mapping):
        return out
    if isinstance(config.get("dtype"), str):
        out["dtype"] = config["dtype"]
    updater = config.get("updater")
    if isinstance(updater, Mapping) and isinstance(updater.get("type"), str):
        settings = ", ".join(
            f"{k}={v}" for k, v in updater.items() if k != "type" and v is not None
        )
        out["updater"] = f"{updater['type']}({settings})"
    layers = config.get("layers")
    vertices = config.get("vertices")
    if isinstance(layers, list):
        out["layers"] = [_jsonable(layer) for layer in layers if isinstance(layer, Mapping)]
    elif isinstance(vertices, list):  # [name, op config, input names]
        out["layers"] = [
            {"name": str(v[0]), "inputs": [str(i) for i in v[2]], **_jsonable(v[1])}
            for v in vertices
            if isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[1], Mapping)
        ]
    return out


def describe_averaging(settings: ParameterAveraging) -> dict[str, Any]:
    """``settings``' fields as plain values for the report (``storage_options``, which may hold
    credentials, left out; an Exchange object as its ``repr``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        if f.name == "storage_options":
            continue
        value = getattr(settings, f.name)
        out[f.name] = (
            value if value is None or isinstance(value, (str, int, float)) else repr(value)
        )
    return out


def _name(preprocessor: Any) -> str:
    """A preprocessor's name for the report: a function's own, else its class's."""
    name = getattr(preprocessor, "__qualname__", None)
    return name if isinstance(name, str) else type(preprocessor).__name__


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A layer's configuration with its values as plain JSON (others as their ``repr``)."""
    return {
        str(k): json.loads(json.dumps(v, default=repr, allow_nan=True)) for k, v in config.items()
    }
