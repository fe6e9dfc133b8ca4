"""``SparkExchange`` (``exchange="spark"``, DL4J's way): a Spark job per averaging round.

One round:

1. the driver broadcasts the parameters (and, with ``save_updater``, the updater state) once;
2. every worker (:class:`FitRound`) sets them on its model (built once per Python worker from
   the model's configuration), fits its minibatches of the round (reading its own files,
   ``prefetch`` ahead), and returns its parameters;
3. ``treeAggregate`` sums the workers' results with the native in-place add (or, where the
   round's job computes some partitions only, ``runJob`` collects them and the driver sums),
   the runner averages the sum into the model, and the broadcast is destroyed.

Measured per round (:class:`~sparkbatch.train.stats.RoundStats`): ``distribute_bytes``, the
broadcast arrays' bytes times the workers that fitted (each reads a copy); ``aggregate_bytes``,
the result arrays' bytes times the workers that sent them; one step, ``"treeAggregate"`` (or
``"collect"``), from the slowest worker's end of fitting to the job's end (where no worker
reported when it ended, the job's end minus the fitting time, i.e. 0).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .._jobs import JobDescription
from .exchange import Exchange
from .runner import RoundTiming
from .stats import AggregationStep, PhaseTiming
from .worker import RoundResult, WorkerSetup, combine, start_round

if TYPE_CHECKING:
    from .plan import FitPlan
    from .runner import FitRunner

__all__ = ["SparkExchange", "FitRound"]


class SparkExchange(Exchange):
    """A Spark job per round: broadcast, fit, ``treeAggregate`` of depth ``aggregation_depth``.

    Works on any cluster; each round pays Spark's job and task start-up and moves the
    parameters through the JVM.
    """

    name = "spark"

    def __init__(self, aggregation_depth: int = 2) -> None:
        self.aggregation_depth = aggregation_depth

    def __repr__(self) -> str:
        return f"SparkExchange(aggregation_depth={self.aggregation_depth})"

    def run(self, runner: FitRunner, plan: FitPlan) -> None:
        sc = runner.sc
        setup = runner.worker_setup(plan)
        jobs = JobDescription(sc)
        try:
            for g, planned in enumerate(plan.rounds):
                start = time.time()
                jobs.set(f"sparkbatch fit: {planned.label}")
                counters, arrays = runner.state(plan, g)
                state = arrays[1] if len(arrays) > 1 else None
                weights = sc.broadcast(dict(counters, params=arrays[0], state=state))
                broadcast_end = time.time()
                sent_bytes = sum(int(a.nbytes) for a in arrays)
                view = plan.round_view(g)
                fit = FitRound(setup, weights, round_index=runner.round)
                try:
                    result = self._job(view, fit)
                finally:
                    weights.destroy()
                job_end = time.time()
                plan.round_done(g)
                job_s = job_end - broadcast_end
                timing = RoundTiming(
                    start, broadcast_end - start, job_s, job_end, True, exchange=self.name
                )
                if result is not None:
                    step = "treeAggregate" if view.partitions is None else "collect"
                    timing = _measured(result, timing, job_end, sent_bytes, step, setup)
                runner.finish(plan, g, result, timing)
        finally:
            jobs.restore()

    def _job(self, view: Any, fit: FitRound) -> RoundResult | None:
        """Run ``fit`` on the round's workers: the sum of their results."""
        fitted = view.map(fit)
        if view.partitions is None:
            return fitted.treeAggregate(None, combine, combine, self.aggregation_depth)
        results = fitted.context.runJob(fitted, lambda results: results, view.partitions)
        return functools.reduce(combine, results, None)


def _measured(
    result: RoundResult,
    timing: RoundTiming,
    job_end: float,
    sent_bytes: int,
    step: str,
    setup: WorkerSetup,
) -> RoundTiming:
    """``timing`` of a round whose job ended at ``job_end`` with ``result``: the slowest
    worker's fitting as ``fit_s`` (with ``collect_stats``; else the job's wall time stays),
    the bytes moved (``sent_bytes`` broadcast to each worker) and the aggregation's ``step``,
    from the slowest worker's end of fitting to the job's end."""
    fits = [p for p in result.phases if p.phase == "fit"]
    fit_s = timing.fit_s
    if setup.collect_stats and fits:
        fit_s = max(p.seconds for p in fits)
    fit_end = max((p.end for p in fits), default=job_end - timing.fit_s)
    # an executor's clock may run ahead of or behind the driver's: keep within the job
    seconds = min(max(0.0, job_end - fit_end), timing.fit_s)
    returned = 0
    if result.params is not None:
        returned = result.params.nbytes + (0 if result.state is None else result.state.nbytes)
    aggregate_bytes = int(returned) * result.workers
    return dataclasses.replace(
        timing,
        fit_s=fit_s,
        distribute_bytes=sent_bytes * result.workers,
        aggregate_bytes=aggregate_bytes,
        steps=(AggregationStep(step, seconds, aggregate_bytes),),
    )


class FitRound:
    """One worker's part of a round: set the broadcast parameters, fit ``items`` (file URLs,
    or minibatches where ``setup.loader`` is None), return the result."""

    def __init__(self, setup: WorkerSetup, weights: Any, *, round_index: int) -> None:
        self.setup = setup
        self.weights = weights  # Broadcast of {"params", "state", "iteration", "epoch", ...}
        self.round_index = round_index

    def __call__(self, index: int, items: Any) -> Iterator[RoundResult]:
        items = list(items)
        if not items:
            return iter(())
        setup = self.setup
        worker = f"worker {index}"
        start = time.time()
        weights = self.weights.value
        access = setup.model()
        model = access.model
        start_round(access, weights, weights["params"], weights["state"], setup.save_updater, index)
        fit_start = time.time()
        context = f"round {self.round_index} (epoch {weights['epoch']}), {worker}"
        fitted = setup.fit_round(model, items, context, copy=True)
        if fitted.error is not None:
            # NOTE [deterministic errors] (worker.py): the driver raises it, Spark does not
            # retry it.
            return iter([RoundResult.nothing_fitted(error=fitted.error)])
        end = time.time()
        params = fitted.params
        if params is None:
            if not fitted.skipped:
                return iter(())
            return iter([RoundResult.nothing_fitted(skipped=fitted.skipped)])
        # The fit's end always (the aggregation's time is measured from the slowest worker's);
        # the runner records the phases with collect_stats only.
        phases = [PhaseTiming(self.round_index, worker, "fit", fit_start, end)]
        if setup.collect_stats:
            phases.insert(0, PhaseTiming(self.round_index, worker, "broadcast", start, fit_start))
        result = RoundResult(
            params=params,
            state=np.array(model.updater_state(), copy=True) if setup.save_updater else None,
            score_sum=fitted.score_sum,
            batches=fitted.batches,
            examples=fitted.examples,
            workers=1,
            max_batches=fitted.batches,
            phases=phases,
            skipped=fitted.skipped,
        )
        return iter([result])
