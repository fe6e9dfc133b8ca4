"""The Model protocol: the built-in models implement it, a model of only its required members
trains on Spark with both exchanges (the defaults of the optional members work), and a model
that lacks members is refused at construction, naming them."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from sparkbatch.data import DataSet, load
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import SGD, Dense, Graph, Network, Output
from sparkbatch.spark import batch_and_export
from sparkbatch.train import Model, ModelAccess, ParameterAveraging, SparkNetwork
from sparkbatch.train.model import OPTIONAL, REQUIRED

EXCHANGES = ["spark", "socket"]


class LinearSoftmax:
    """Softmax regression by SGD with momentum in plain numpy: the Model protocol's required
    members and nothing else (float64 parameters, a non-empty updater state)."""

    def __init__(self, n_in: int, n_out: int, lr: float = 0.5, seed: int = 0) -> None:
        self.n_in, self.n_out, self.lr, self.seed = n_in, n_out, lr, seed
        rng = np.random.default_rng(seed)
        self._params = rng.normal(scale=0.1, size=n_in * n_out + n_out)
        self._velocity = np.zeros_like(self._params)
        self.iteration = 0
        self.epoch = 0

    def params(self) -> np.ndarray:
        return self._params

    def set_params(self, values: np.ndarray) -> None:
        self._params[...] = np.asarray(values).reshape(-1)

    def updater_state(self) -> np.ndarray:
        return self._velocity

    def set_updater_state(self, values: np.ndarray) -> None:
        self._velocity[...] = np.asarray(values).reshape(-1)

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        split = self.n_in * self.n_out
        return self._params[:split].reshape(self.n_in, self.n_out), self._params[split:]

    def output(self, features: Any) -> np.ndarray:
        w, b = self._weights()
        z = np.asarray(features, np.float64) @ w + b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def score(self, batch: DataSet) -> float:
        p = self.output(batch.features)
        return float(-np.mean(np.sum(batch.labels * np.log(p + 1e-12), axis=1)))

    def fit_batch(self, batch: DataSet) -> float:
        x = np.asarray(batch.features, np.float64)
        y = np.asarray(batch.labels, np.float64)
        score = self.score(batch)
        delta = (self.output(x) - y) / len(x)
        gradient = np.concatenate([(x.T @ delta).reshape(-1), delta.sum(axis=0)])
        self._velocity *= 0.9
        self._velocity += gradient
        self._params -= self.lr * self._velocity
        self.iteration += 1
        return score

    def to_config(self) -> dict[str, Any]:
        return {"n_in": self.n_in, "n_out": self.n_out, "lr": self.lr, "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinearSoftmax:
        return cls(**config)


class CopyingLinearSoftmax(LinearSoftmax):
    """Its params() and updater_state() are copies, not views (allowed, if slower): every
    average then reaches it through set_params."""

    def params(self) -> np.ndarray:
        return self._params.copy()

    def updater_state(self) -> np.ndarray:
        return self._velocity.copy()


def _data(n: int, seed: int = 0) -> DataSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3] + 0.3 * x[:, 3:], axis=1)]
    return DataSet(x, y)


def _export(sc, tmp_path, n: int, batch: int) -> str:
    out = str(tmp_path / "files")
    batch_and_export(sc.parallelize(_data(n).split(50), 2), out, batch)
    return out


def _graph() -> Graph:
    return Graph(
        ["a", "b"],
        {"h": (Dense(4, 5, "tanh"), "a"), "o1": (Output(5, 2), "h"), "o2": (Output(3, 3), "b")},
        ["o1", "o2"],
        SGD(0.1),
    )


# --- the protocol and its access ------------------------------------------------------------


def test_the_built_in_models_implement_the_protocol_and_its_optional_members():
    network = Network([Dense(4, 8, "tanh"), Output(8, 3)], SGD(0.1))
    graph = _graph()
    flat = {
        "updater_steps",
        "reset_updater",
        "dropout_stream",
        "device",
        "to",
        "use_buffers",
        "last_score",
        "score_parts",
    }
    for model, own in ((network, {"num_outputs"}), (graph, {"output_widths", "outputs"})):
        assert isinstance(model, Model)
        access = ModelAccess(model)
        assert access.optional == flat | own
        assert access.device == "cpu" and access.can_move and access.can_use_buffers
        own_buffers = access.own_buffers(True)
        assert own_buffers[0] is model.params() and own_buffers[1] is model.updater_state()
    assert not ModelAccess(network).several_outputs
    assert ModelAccess(network).output_widths == [3]
    assert ModelAccess(network).output_names is None
    assert ModelAccess(graph).several_outputs
    assert ModelAccess(graph).output_widths == [2, 3]
    assert ModelAccess(graph).output_names == ("o1", "o2")
    access = pickle.loads(pickle.dumps(ModelAccess(graph)))  # travels, if it has to
    assert access.optional == ModelAccess(graph).optional and access.several_outputs


def test_every_optional_member_is_documented_with_its_default():
    import sparkbatch.train.model as module

    for member in [*REQUIRED, *OPTIONAL]:
        assert f"``{member.removesuffix('()')}" in module.__doc__, member


def test_without_optional_members_the_access_applies_the_defaults():
    model = LinearSoftmax(4, 3)
    assert isinstance(model, Model)
    access = ModelAccess(model)
    assert access.optional == frozenset()
    model.iteration = 7
    assert access.updater_steps == 7  # the iteration stands for it
    access.updater_steps = 3  # nothing to set
    assert access.updater_steps == 7 and not hasattr(model, "updater_steps")
    model.updater_state()[:] = 1.0
    access.reset_updater()  # set_updater_state(zeros)
    assert not model.updater_state().any()
    access.set_dropout_stream(2)
    access.record_score(0.5)
    assert not hasattr(model, "dropout_stream") and not hasattr(model, "last_score")
    assert access.device == "cpu" and not access.can_move
    access.to("cpu")
    with pytest.raises(TypeError, match="cannot move to 'cuda'.*worker_device='cpu'"):
        access.to("cuda")
    assert not access.can_use_buffers
    with pytest.raises(TypeError, match="no use_buffers"):
        access.use_buffers(np.zeros(15), np.zeros(15))
    own = access.own_buffers(True)  # views: averages go straight into them
    assert own[0] is model.params() and own[1] is model.updater_state()
    assert ModelAccess(CopyingLinearSoftmax(4, 3)).own_buffers(True) == []  # copies: set_params
    assert not access.several_outputs
    assert access.output_widths == [None] and access.output_names is None


class _Partial:
    """Parameters and a step, and nothing else the protocol requires."""

    def params(self) -> np.ndarray:
        return np.zeros(3)

    def fit_batch(self, batch: Any) -> float:
        return 0.0


class _SeveralOutputsWithoutParts(LinearSoftmax):
    output_widths = [3, 3]


def test_a_model_lacking_members_is_refused_at_construction_naming_every_one():
    with pytest.raises(TypeError, match="Model protocol") as info:
        SparkNetwork(None, _Partial())
    assert str(info.value) == (
        "model must implement the Model protocol (sparkbatch.train.Model): _Partial lacks "
        "set_params(), updater_state(), set_updater_state(), output(), score(), to_config(), "
        "from_config(), iteration, epoch"
    )
    with pytest.raises(TypeError, match=r"lacks score_parts\(\) \(it lists output_widths\)"):
        SparkNetwork(None, _SeveralOutputsWithoutParts(4, 3))
    with pytest.raises(TypeError, match="worker_device='cuda'.*has no to"):
        SparkNetwork(None, LinearSoftmax(4, 3), ParameterAveraging(worker_device="cuda"))
    spark_net = SparkNetwork(None, LinearSoftmax(4, 3))
    with pytest.raises(TypeError, match="lacks set_params"):
        spark_net.model = _Partial()  # a new model is checked as the first was
    assert isinstance(spark_net.model, LinearSoftmax)


def test_the_averaging_settings_are_not_called_master():
    settings = ParameterAveraging(averaging_frequency=3)
    spark_net = SparkNetwork(None, LinearSoftmax(4, 3), settings)
    assert spark_net.averaging is settings and not hasattr(spark_net, "master")


# --- a model of only the required members, on Spark ---------------------------------------


@pytest.mark.spark
@pytest.mark.parametrize("save_updater", [True, False], ids=["save-updater", "fresh-updater"])
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_one_worker_frequency_one_equals_fitting_it_locally(sc, tmp_path, exchange, save_updater):
    directory = _export(sc, tmp_path, 200, 20)
    master = ParameterAveraging(
        batch_size_per_worker=20,
        averaging_frequency=1,
        workers=1,
        shuffle=False,
        save_updater=save_updater,
        exchange=exchange,
    )
    distributed = SparkNetwork(sc, LinearSoftmax(4, 3), master).fit(directory, epochs=2)
    local = LinearSoftmax(4, 3)
    for _ in range(2):
        for url in minibatch_files(directory):
            if not save_updater:  # every round starts from a fresh updater: the default reset
                local.set_updater_state(np.zeros_like(local.updater_state()))
            local.fit_batch(load(url))
        local.epoch += 1
    np.testing.assert_allclose(distributed.params(), local.params(), rtol=0, atol=1e-12)
    if save_updater:
        np.testing.assert_allclose(distributed.updater_state(), local.updater_state(), atol=1e-12)
    assert distributed.iteration == local.iteration == 20
    assert distributed.epoch == local.epoch == 2


@pytest.mark.spark
@pytest.mark.parametrize("model_class", [LinearSoftmax, CopyingLinearSoftmax])
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_model_of_only_the_required_members_trains_and_evaluates(sc, exchange, model_class):
    rdd = sc.parallelize(_data(400).split(50), 2)
    master = ParameterAveraging(
        batch_size_per_worker=25, averaging_frequency=2, workers=2, exchange=exchange
    )
    spark_net = SparkNetwork(sc, model_class(4, 3), master)
    before = spark_net.score(rdd)
    model = spark_net.fit(rdd, epochs=3)
    assert model is spark_net.model and model.epoch == 3
    # 16 minibatches an epoch: 4 rounds of two workers fitting two each
    assert model.iteration == 3 * 4 * 2
    rounds = spark_net.stats.rounds
    assert len(rounds) == 3 * 4 and all(r.workers == 2 for r in rounds)
    after = spark_net.score(rdd)
    assert np.isfinite(after) and after < 0.5 * before
    data = _data(400)
    assert after == pytest.approx(model.score(data), rel=1e-9)
    evaluation = spark_net.evaluate(rdd)
    assert evaluation.num_examples == 400 and evaluation.num_classes == 3
    assert evaluation.accuracy() > 0.85
