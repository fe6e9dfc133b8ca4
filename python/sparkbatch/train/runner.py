"""``FitRunner``: the driver's side of a fit, whichever exchange moves the parameters.

An :class:`~sparkbatch.train.Exchange` asks the runner what the workers start round ``g`` from
(:meth:`FitRunner.state`) and hands it every round's summed results
(:meth:`FitRunner.finish`), which the runner averages into the model (in place, with the
native kernel), checks, records in :class:`~sparkbatch.train.TrainingStats` and logs; the last
round of an epoch ends the epoch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _native
from .._finite import check_params
from .model import ModelAccess
from .stats import PhaseTiming, RoundStats, TrainingStats
from .worker import RoundResult, WorkerSetup

if TYPE_CHECKING:
    from pyspark import SparkContext

    from .master import ParameterAveraging
    from .plan import FitPlan

__all__ = ["FitRunner", "RoundTiming"]

log = logging.getLogger("sparkbatch.train")


@dataclass(frozen=True)
class RoundTiming:
    """When a round began (``start``, seconds since the epoch), how long the parameters took
    to reach the workers (``broadcast_s``) and the slowest worker to fit (``fit_s``), and when
    the driver began summing and averaging (``aggregate_start``). ``driver_broadcast``: the
    driver spent ``broadcast_s`` itself (a Spark broadcast), which ``collect_stats`` records
    as a driver phase."""

    start: float
    broadcast_s: float
    fit_s: float
    aggregate_start: float
    driver_broadcast: bool = False


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

    def worker_setup(self, plan: FitPlan) -> WorkerSetup:
        """What every worker task of ``plan`` needs."""
        return worker_setup(self.access, self.settings, plan.loader, plan.exported)

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
        if m.save_updater:
            access.updater_steps += result.max_batches  # before iteration: its default
        model.iteration += result.max_batches
        score = result.score_sum / result.batches
        access.record_score(score)
        self._record(result, epoch, rounds_in_epoch, label, score, t)
        self.round += 1

    def _record(
        self,
        result: RoundResult,
        epoch: int,
        rounds_in_epoch: int,
        label: str,
        score: float,
        t: RoundTiming,
    ) -> None:
        end = time.time()
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
                aggregate_s=max(0.0, (end - t.start) - t.broadcast_s - t.fit_s),
                skipped=result.skipped,
            )
        )
        if self.settings.collect_stats:
            self.stats.add_phases(result.phases)
            phases = [PhaseTiming(self.round, "driver", "aggregate", t.aggregate_start, end)]
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
