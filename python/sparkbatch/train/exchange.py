"""``Exchange``: how the workers' parameters meet, round after round.

A fit is a :class:`~sparkbatch.train.plan.FitPlan` (its rounds, and who fits what in each) run
through an exchange with a :class:`~sparkbatch.train.runner.FitRunner` (the driver's side: what
every round starts from, and averaging each round's results into the model). Three exchanges come
with sparkbatch, named by ``ParameterAveraging(exchange=...)``:

* :class:`~sparkbatch.train.spark_exchange.SparkExchange` ("spark"): a Spark job per round,
  the parameters broadcast and the results summed by ``treeAggregate``;
* :class:`~sparkbatch.train.socket_exchange.SocketExchange` ("socket"): one barrier job per
  fit, every worker averaging through a server on the driver after every round;
* :class:`~sparkbatch.train.ring_exchange.RingExchange` ("ring"): one barrier job per fit, the
  workers summing among themselves by ring all-reduce after every round, worker 0 sending the
  sum to the driver.

``ParameterAveraging`` also takes an :class:`Exchange` object itself.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import FitPlan
    from .runner import FitRunner

__all__ = ["Exchange"]


class Exchange(abc.ABC):
    """How a fit's workers run and their parameters meet (see the module's docstring)."""

    #: A short name, as ``ParameterAveraging(exchange=...)`` takes it.
    name: str = ""

    @abc.abstractmethod
    def run(self, runner: FitRunner, plan: FitPlan) -> None:
        """Fit every round of ``plan`` in order: the workers of round ``g`` start from
        ``runner.state(plan, g)``, fit their items of the round (``plan.round_view(g)`` or
        ``plan.worker_view()``, with ``runner.worker_setup(plan)``), and their summed results
        go to ``runner.finish(plan, g, result, timing)`` before round ``g + 1`` starts."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
