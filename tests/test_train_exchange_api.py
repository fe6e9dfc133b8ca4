"""The pluggable exchange: ``ParameterAveraging(exchange=...)`` takes an Exchange object, every
fit hands it one FitPlan; and a socket worker's memory (WorkerMemory) without Spark."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sparkbatch.data import DataSet
from sparkbatch.nn import SGD, Dense, Network, Output
from sparkbatch.train import (
    Exchange,
    FitPlan,
    FitRunner,
    ParameterAveraging,
    SocketExchange,
    SparkExchange,
    SparkNetwork,
)
from sparkbatch.train.model import ModelAccess
from sparkbatch.train.socket_exchange import WorkerMemory


def _data(n: int = 240, seed: int = 3) -> DataSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return DataSet(x, np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)])


def _network() -> Network:
    return Network([Dense(4, 6, "tanh"), Output(6, 2)], SGD(0.3), seed=0)


def test_names_resolve_once_to_exchange_objects():
    assert isinstance(ParameterAveraging().exchanger, SparkExchange)
    socket = ParameterAveraging(exchange="socket", exchange_port=1234).exchanger
    assert isinstance(socket, SocketExchange) and socket.port == 1234
    mine = SparkExchange(aggregation_depth=3)
    assert ParameterAveraging(exchange=mine).exchanger is mine
    with pytest.raises(ValueError, match="or an Exchange"):
        ParameterAveraging(exchange=object())  # type: ignore[arg-type]


class _Recording(Exchange):
    """Runs every plan through SparkExchange and keeps what it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.plans: list[tuple[int, int, Any, bool, list[str]]] = []

    def run(self, runner: FitRunner, plan: FitPlan) -> None:
        labels = [r.label for r in plan.rounds]
        self.plans.append((plan.epochs, plan.workers, plan.loader, plan.exported, labels))
        SparkExchange().run(runner, plan)


@pytest.mark.spark
@pytest.mark.parametrize("approach", ["export", "direct"])
def test_an_exchange_object_gets_one_plan_per_fit_and_trains_as_its_name_does(sc, approach):
    rdd = sc.parallelize(_data().split(40), 2)
    settings = dict(batch_size_per_worker=20, averaging_frequency=2, workers=2, approach=approach)
    recording = _Recording()
    ours = SparkNetwork(sc, _network(), ParameterAveraging(exchange=recording, **settings))
    ours.fit(rdd, epochs=2)
    theirs = SparkNetwork(sc, _network(), ParameterAveraging(**settings)).fit(rdd, epochs=2)
    np.testing.assert_allclose(ours.model.params(), theirs.params(), rtol=0, atol=1e-6)
    [(epochs, workers, loader, exported, labels)] = recording.plans
    assert (epochs, workers) == (2, 2)
    assert (loader is None) == (approach == "direct") and exported == (approach == "export")
    assert labels == [f"epoch {e}/2, round {r}/3" for e in (1, 2) for r in (1, 2, 3)]
    assert len(ours.stats.rounds) == 6 and ours.model.epoch == 2


class _CopyingModel:
    """A model whose params() are copies: averages cannot be received into its buffers."""

    def __init__(self) -> None:
        self._params = np.zeros(3)
        self.iteration = self.epoch = 0

    def params(self) -> np.ndarray:
        return self._params.copy()

    def set_params(self, values: np.ndarray) -> None:
        self._params[...] = values

    def updater_state(self) -> np.ndarray:
        return np.zeros(0)

    def set_updater_state(self, values: np.ndarray) -> None:
        pass

    def fit_batch(self, batch: Any) -> float:
        return 0.0

    def output(self, features: Any) -> np.ndarray:
        return np.zeros((len(features), 1))

    def score(self, batch: Any) -> float:
        return 0.0

    def to_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _CopyingModel:
        return cls()


def test_a_worker_whose_model_copies_its_params_sets_every_average_received_by_tcp():
    access = ModelAccess(_CopyingModel())
    memory = WorkerMemory(access, save_updater=False, index=0, slots=None)
    assert memory.receive == [] and not memory.receive_is_model
    header = {"iteration": 0, "updater_steps": 0, "epoch": 0, "round": 0, "shared": False}
    assert memory.start(header, [np.full(3, 1.0)]) is False
    np.testing.assert_array_equal(access.model.params(), [1, 1, 1])
    spare = memory.receive  # the next answer is received into the first one's arrays
    np.copyto(spare[0], 2.0)
    memory.start(dict(header, round=1), spare)
    np.testing.assert_array_equal(access.model.params(), [2, 2, 2])
    assert memory.outgoing(None, shared=False) == []
    [sent] = memory.outgoing(access.model.params(), shared=False)
    np.testing.assert_array_equal(sent, [2, 2, 2])


def test_a_worker_whose_model_lends_its_buffers_receives_averages_in_place():
    net = _network()
    access = ModelAccess(net)
    memory = WorkerMemory(access, save_updater=True, index=1, slots=None)
    assert memory.receive_is_model and memory.receive[0] is not None
    average = np.full_like(net.params(), 0.5)
    np.copyto(memory.receive[0], average)  # as recv_message writes into them
    header = {"iteration": 7, "updater_steps": 7, "epoch": 1, "round": 0, "shared": False}
    memory.start(header, memory.receive)
    np.testing.assert_array_equal(net.params(), average)
    assert (net.iteration, net.epoch) == (7, 1)
    assert memory.move_into_slot(dict(header, shared=True), memory.receive) is not None
    assert not memory.in_slot  # no slots here: nothing to move into
