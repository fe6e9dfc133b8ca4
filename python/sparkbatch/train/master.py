"""``ParameterAveraging``: the configuration of DL4J's parameter-averaging training master, and
how an epoch of minibatch files is cut into averaging rounds.

One round hands every worker ``averaging_frequency`` minibatch files (of
``batch_size_per_worker`` examples each when they were exported by sparkbatch); the workers fit
them from the broadcast parameters and the driver averages what they return. DL4J's flaw of
silently dropping the data a worker gets beyond ``averaging_frequency`` minibatches is not
repeated: every file of an epoch is fitted exactly once, and the epoch's last round takes what is
left, spread over as many workers as it fills.

Examples
--------
>>> master = ParameterAveraging(batch_size_per_worker=32, averaging_frequency=2)
>>> plan_rounds([f"f{i}" for i in range(7)], workers=2, averaging_frequency=2, shuffle=False)
[[['f0', 'f1'], ['f2', 'f3']], [['f4', 'f5'], ['f6']]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._arguments import check_int, check_optional_int
from .._finite import check_mode
from .exchange import Exchange
from .ring_exchange import RingExchange
from .socket_exchange import SocketExchange
from .spark_exchange import SparkExchange

__all__ = ["ParameterAveraging", "plan_rounds"]

_REPARTITION = ("always", "never", "balanced")
_APPROACH = ("export", "direct")
_EXCHANGE = ("spark", "socket", "ring")


@dataclass(frozen=True)
class ParameterAveraging:
    """How :class:`~sparkbatch.train.SparkNetwork` trains: DL4J's
    ``ParameterAveragingTrainingMaster``, with Python names and safer defaults.

    Parameters
    ----------
    batch_size_per_worker : int
        Examples per minibatch a worker fits (and per exported file).
    averaging_frequency : int
        Minibatches each worker fits between two averagings.
    workers : int, optional
        Workers per round; default ``sc.defaultParallelism``.
    prefetch : int
        Minibatch files a worker loads ahead on a background thread (0: none); quick loads
        (cached local files) are done inline, where the thread cannot pay.
    save_updater : bool
        Average and keep the updater state (momentum, Adam moments) across rounds; without it
        every round starts the workers from a fresh updater. (DL4J's default is effectively
        False; True trains better.)
    repartition : "always", "never" or "balanced"
        For ``approach="direct"``: deal the minibatches round-robin over ``workers``
        partitions, so that every worker gets an equal share ("always" and "balanced" both do
        this; DL4J's "Always" repartitions without balancing), or keep the RDD's partitions as
        the workers ("never"). Files are always dealt evenly. The direct approach keeps the
        RDD's order every epoch (``shuffle`` applies to files); it shuffles the minibatches
        once per fit into a partition per worker and round, so that a round reads only its
        own (DL4J's scans the whole RDD every round).
    approach : "export" or "direct"
        How ``fit(rdd)`` trains: "export" first writes the RDD as minibatch files under
        ``export_dir`` (removed afterwards) and trains from them, as DL4J does by default;
        "direct" trains from the RDD's partitions, without files (Spark's shuffle files hold
        them meanwhile).
    collect_stats : bool
        Keep per-worker timings of every phase (broadcast, load, fit) for
        :attr:`SparkNetwork.stats` and its HTML report; round totals are always kept.
    export_dir : str, optional
        Base URL for the export approach's temporary files; on a cluster it must be storage
        every executor reaches (``hdfs://``, ``s3://``, a shared mount). Default: the driver's
        temporary directory, which suits local Spark and one-machine clusters.
    shuffle : bool
        Shuffle the order of the files every epoch (seeded by ``seed`` and the epoch).
    seed : int
        Seeds the shuffles.
    aggregation_depth : int
        Depth of the ``treeAggregate`` that sums the workers' results.
    eval_batch_size : int
        Examples per batch when evaluating or scoring (DL4J's default 64).
    worker_device : "cpu", "cuda" or "auto"
        Where workers fit: "cuda" moves each worker's model to its GPU (an error where none is
        visible), "auto" uses a GPU where one is visible. The driver's averaging stays on the
        CPU either way. Needs a model with ``to(device)``, as :class:`sparkbatch.nn.Network`.
    storage_options : mapping, optional
        fsspec options for the files (credentials, endpoint).
    exchange : "spark", "socket", "ring" or Exchange
        How the workers' parameters meet: a name, or an :class:`~sparkbatch.train.Exchange` object
        (the names stand for :class:`~sparkbatch.train.SparkExchange`,
        :class:`~sparkbatch.train.SocketExchange` and :class:`~sparkbatch.train.RingExchange` with
        ``aggregation_depth``, or ``exchange_host`` and ``exchange_port``, as given here). "spark"
        (DL4J's way, the default): every round is a Spark job; the parameters are broadcast and the
        results summed by ``treeAggregate``. Works on any cluster, but each round pays Spark's job
        and task start-up and moves the parameters through the JVM. "socket": every fit is one
        barrier job whose tasks run all of its rounds, sending their parameters to a server on the
        driver over TCP after every ``averaging_frequency`` minibatches and going on from the
        average it sends back (the same arithmetic, several times faster on small rounds). Needs
        every worker scheduled at once (``workers`` at most the executors' task slots, no dynamic
        allocation) and the executors able to reach the driver; with ``approach="direct"`` each
        worker holds its share of the minibatches in memory for the whole fit. Workers on the
        driver's machine exchange through shared memory (``/dev/shm``). A failed task fails the job,
        which is submitted again as often as Spark retries a task; every worker resumes at the first
        round not yet averaged, so no example is lost or counted twice. "ring": one barrier job per
        fit too, but the workers sum their parameters among themselves by ring all-reduce over TCP
        (each sends and receives about twice the parameters per round, however many workers there
        are) and only worker 0 sends each round's sum to the driver: for many workers or large
        models (see docs/scaling.md). Needs the executors able to reach each other and the driver on
        any port; failures are retried as with "socket".
    exchange_host : str, optional
        For "socket" and "ring": the address executors connect to the driver at; default
        127.0.0.1 on a local master, else ``spark.driver.host``.
    exchange_port : int
        For "socket" and "ring": the driver's port (0: any free port).
    non_finite : "raise" or "skip"
        What a worker does with a minibatch holding NaN or infinity in its features, labels or
        masks: fail the fit with a :class:`~sparkbatch.errors.NonFiniteError` naming the
        minibatch (its file, or its RDD partition and examples), or skip it; skipped
        minibatches are counted in :attr:`SparkNetwork.stats` (``skipped``, and per round).
        Either way a non-finite score, gradient or average stops the fit with a
        :class:`~sparkbatch.errors.DivergenceError` naming the round and the worker.
    """

    batch_size_per_worker: int = 16
    averaging_frequency: int = 5
    workers: int | None = None
    prefetch: int = 2
    save_updater: bool = True
    repartition: str = "always"
    approach: str = "export"
    collect_stats: bool = False
    export_dir: str | None = None
    shuffle: bool = True
    seed: int = 0
    aggregation_depth: int = 2
    eval_batch_size: int = 64
    worker_device: str = "cpu"
    storage_options: Mapping[str, Any] | None = field(default=None, compare=False)
    exchange: str | Exchange = "spark"
    exchange_host: str | None = None
    exchange_port: int = 0
    non_finite: str = "raise"

    def __post_init__(self) -> None:
        checked = {
            name: check_int(name, getattr(self, name))
            for name in (
                "batch_size_per_worker",
                "averaging_frequency",
                "aggregation_depth",
                "eval_batch_size",
            )
        }
        checked["workers"] = check_optional_int("workers", self.workers)
        checked["prefetch"] = check_int("prefetch", self.prefetch, minimum=0)
        checked["seed"] = check_int("seed", self.seed, minimum=None)
        checked["exchange_port"] = check_int("exchange_port", self.exchange_port, minimum=0)
        for name, value in checked.items():  # numpy integers become ints
            object.__setattr__(self, name, value)
        check_mode(self.non_finite)
        if self.repartition not in _REPARTITION:
            raise ValueError(f"repartition must be one of {_REPARTITION}, got {self.repartition!r}")
        if self.worker_device not in ("cpu", "cuda", "auto"):
            raise ValueError(
                f"worker_device must be 'cpu', 'cuda' or 'auto', got {self.worker_device!r}"
            )
        if self.approach not in _APPROACH:
            raise ValueError(f"approach must be one of {_APPROACH}, got {self.approach!r}")
        if not isinstance(self.exchange, Exchange) and self.exchange not in _EXCHANGE:
            raise ValueError(
                f"exchange must be one of {_EXCHANGE} or an Exchange, got {self.exchange!r}"
            )
        if self.exchange_port >= 65536:
            raise ValueError(f"exchange_port must be in 0..65535, got {self.exchange_port}")
        object.__setattr__(self, "_exchanger", self._resolve_exchange())

    @property
    def exchanger(self) -> Exchange:
        """The :class:`~sparkbatch.train.Exchange` that ``exchange`` names (or is), resolved
        once, here: nothing else looks at the name."""
        return self._exchanger  # type: ignore[attr-defined]

    def _resolve_exchange(self) -> Exchange:
        if isinstance(self.exchange, Exchange):
            return self.exchange
        if self.exchange == "socket":
            return SocketExchange(host=self.exchange_host, port=self.exchange_port)
        if self.exchange == "ring":
            return RingExchange(host=self.exchange_host, port=self.exchange_port)
        return SparkExchange(aggregation_depth=self.aggregation_depth)


def plan_rounds(
    files: Sequence[str],
    workers: int,
    averaging_frequency: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
) -> list[list[list[str]]]:
    """Cut one epoch of ``files`` into rounds; each round is a list of per-worker file lists.

    A full round gives ``averaging_frequency`` files to each of ``workers`` workers; the last
    round spreads what is left as evenly as it can (workers left without files sit it out).
    """
    order = list(files)
    if shuffle:
        permutation = np.random.default_rng([seed, epoch]).permutation(len(order))
        order = [order[i] for i in permutation]
    per_round = workers * averaging_frequency
    rounds = []
    for start in range(0, len(order), per_round):
        chunk = order[start : start + per_round]
        bounds = np.linspace(0, len(chunk), min(workers, len(chunk)) + 1).round().astype(int)
        rounds.append([chunk[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a])
    return rounds
