"""train.TorchModel: a torch module trained by parameter averaging equals plain torch training
(one worker at frequency 1, both exchanges), its optimiser's state is averaged with
save_updater (Adam, SGD with momentum), and its flat buffers, configuration and errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sparkbatch.data import DataSet, load  # noqa: E402
from sparkbatch.data.manifest import minibatch_files  # noqa: E402
from sparkbatch.errors import CudaUnavailableError, DivergenceError, NonFiniteError  # noqa: E402
from sparkbatch.spark import batch_and_export  # noqa: E402
from sparkbatch.train import ModelAccess, ParameterAveraging, SparkNetwork, plan_rounds  # noqa: E402
from sparkbatch.train.torch_model import TorchModel  # noqa: E402


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def with_batch_norm() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3)
    )


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.3),
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9),
    "sgd-dampening-decay": lambda ps: torch.optim.SGD(
        ps, lr=0.2, momentum=0.8, dampening=0.3, weight_decay=0.01
    ),
    "sgd-nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.05, amsgrad=True, weight_decay=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=0.1),
}


def _data(n: int, seed: int = 0) -> DataSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3] + 0.3 * x[:, 3:], axis=1)]
    return DataSet(x, y)


def _model(optimizer: str = "adam", module=mlp, **kwargs) -> TorchModel:
    return TorchModel(
        module, torch.nn.CrossEntropyLoss(), OPTIMIZERS[optimizer], dtype="float64", **kwargs
    )


def _plain(model: TorchModel, optimizer: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A plain torch copy of ``model``'s module (same weights, own memory) and its optimiser."""
    module = mlp().double()
    module.load_state_dict(model.module.state_dict())
    return module, OPTIMIZERS[optimizer](list(module.parameters()))


def _step(module, optimizer, batch: DataSet) -> float:
    x = torch.from_numpy(np.array(batch.features, np.float64))
    y = torch.from_numpy(np.array(batch.labels, np.float64))
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(module(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _flat(module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy()


def _flat_state(module, optimizer) -> np.ndarray:
    """The optimiser's state in TorchModel's layout: per parameter, its tensors by key."""
    parts = []
    for p in module.parameters():
        state = optimizer.state[p]
        parts += [
            state[k].reshape(-1) for k in sorted(state) if k != "step" and state[k] is not None
        ]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def _export(sc, tmp_path, n: int, batch: int) -> list[str]:
    out = str(tmp_path / "files")
    batch_and_export(sc.parallelize(_data(n).split(batch), 2), out, batch)
    return minibatch_files(out)


# --- on Spark -------------------------------------------------------------------------------


@pytest.mark.spark
@pytest.mark.parametrize(
    ("exchange", "optimizer", "save_updater"),
    [("spark", "adam", True), ("socket", "adam", True), ("socket", "sgd-momentum", False)],
)
def test_one_worker_frequency_one_equals_plain_torch(
    sc, tmp_path, exchange, optimizer, save_updater
):
    files = _export(sc, tmp_path, 60, 20)
    settings = ParameterAveraging(
        batch_size_per_worker=20,
        averaging_frequency=1,
        workers=1,
        shuffle=False,
        save_updater=save_updater,
        exchange=exchange,
    )
    model = _model(optimizer)
    module, opt = _plain(model, optimizer)
    SparkNetwork(sc, model, settings).fit(files, epochs=2)
    for _ in range(2):
        for url in files:
            if not save_updater:  # every round starts from a fresh optimiser
                opt = OPTIMIZERS[optimizer](list(module.parameters()))
            _step(module, opt, load(url))
    np.testing.assert_allclose(model.params(), _flat(module), rtol=0, atol=1e-6)
    if save_updater:
        np.testing.assert_allclose(model.updater_state(), _flat_state(module, opt), atol=1e-6)
        assert model.updater_steps == 6
    assert model.iteration == 6 and model.epoch == 2


@pytest.mark.spark
@pytest.mark.parametrize(("optimizer", "exchange"), [("adam", "spark"), ("sgd-momentum", "socket")])
def test_the_optimizer_state_is_averaged_with_save_updater(sc, tmp_path, optimizer, exchange):
    files = _export(sc, tmp_path, 80, 10)  # 8 files: 2 rounds of 2 workers fitting 2 each
    settings = ParameterAveraging(
        batch_size_per_worker=10,
        averaging_frequency=2,
        workers=2,
        shuffle=False,
        save_updater=True,
        exchange=exchange,
    )
    model = _model(optimizer)
    start = np.array(model.params(), copy=True)
    SparkNetwork(sc, model, settings).fit(files, epochs=1)

    # By hand: each worker starts a round from the average of the last (the first from a fresh
    # optimiser; the second from the averaged state, Adam's step count 2), fits its files, and
    # the round's parameters and state are the workers' means.
    params, state, steps = start, None, 0
    for worker_files in plan_rounds(files, 2, 2, shuffle=False):
        results = []
        for mine in worker_files:
            module, opt = _plain(model, optimizer)
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(
                    torch.from_numpy(params.copy()), module.parameters()
                )
            if state is not None:
                _load_state(module, opt, state, steps)
            for url in mine:
                _step(module, opt, load(url))
            results.append((_flat(module).copy(), _flat_state(module, opt).copy()))
        params = np.mean([r[0] for r in results], axis=0)
        state = np.mean([r[1] for r in results], axis=0)
        steps += 2
    np.testing.assert_allclose(model.params(), params, rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.updater_state(), state, rtol=0, atol=1e-9)
    assert np.abs(state).max() > 0.01  # the state carried something to average
    assert model.updater_steps == model.iteration == 4


def _load_state(module, optimizer, flat: np.ndarray, steps: int) -> None:
    """Give a plain optimiser the state ``flat`` (in TorchModel's layout) after ``steps``."""
    zeros = [torch.zeros_like(p) for p in module.parameters()]
    for p, z in zip(module.parameters(), zeros, strict=True):
        p.grad = z
    saved = [p.detach().clone() for p in module.parameters()]
    optimizer.step()  # creates the state's tensors
    offset = 0
    with torch.no_grad():
        for p, before in zip(module.parameters(), saved, strict=True):
            p.copy_(before)
            p.grad = None
            state = optimizer.state[p]
            for key in sorted(state):
                if key == "step":
                    state[key].fill_(steps)
                    continue
                n = state[key].numel()
                state[key].copy_(torch.from_numpy(flat[offset : offset + n]).view_as(state[key]))
                offset += n
    assert offset == flat.size


# --- on one machine -------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_steps_equal_plain_torch_and_the_state_moves_between_models(optimizer):
    batches = _data(100).split(20)
    model = _model(optimizer)
    module, opt = _plain(model, optimizer)
    for batch in batches[:3]:
        assert model.fit_batch(batch) == pytest.approx(_step(module, opt, batch), abs=1e-12)
    np.testing.assert_allclose(model.params(), _flat(module), rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.updater_state(), _flat_state(module, opt), atol=1e-12)
    # Another model given the parameters, the state and the step count steps as this one does.
    other = _model(optimizer, seed=5)
    other.set_params(model.params())
    other.set_updater_state(model.updater_state())
    other.updater_steps = model.updater_steps
    for batch in batches[3:]:
        model.fit_batch(batch)
        other.fit_batch(batch)
        _step(module, opt, batch)
    np.testing.assert_allclose(other.params(), _flat(module), rtol=0, atol=1e-12)
    np.testing.assert_allclose(other.params(), model.params(), rtol=0, atol=0)
    # A reset optimiser steps as a new one does.
    model.reset_updater()
    assert model.updater_steps == 0 and not model.updater_state().any()
    fresh = OPTIMIZERS[optimizer](list(module.parameters()))
    model.fit_batch(batches[0])
    _step(module, fresh, batches[0])
    np.testing.assert_allclose(model.params(), _flat(module), rtol=0, atol=1e-12)


def test_params_and_updater_state_are_views_of_the_module():
    model = _model("adam")
    access = ModelAccess(model)
    assert access.own_buffers(True)  # averages land in the model without set_params
    first = model.module[0]
    model.params()[:24] = np.arange(24)
    np.testing.assert_array_equal(first.weight.detach().numpy().reshape(-1), np.arange(24))
    model.fit_batch(_data(20))
    state = model.updater_state()
    state[:] = 0.5
    exp_avg = model.optimizer.state[first.weight]["exp_avg"]
    assert torch.all(exp_avg == 0.5)
    # kept in given host arrays (parameter averaging's shared memory)
    params, held = np.zeros_like(model.params()), np.zeros_like(state)
    before = model.params().copy()
    model.use_buffers(params, held)
    np.testing.assert_array_equal(params, before)
    assert np.all(held == 0.5) and np.shares_memory(model.params(), params)
    model.fit_batch(_data(20))
    assert not np.array_equal(params, before) and not np.all(held == 0.5)


def test_batch_norm_statistics_are_averaged_with_the_parameters():
    model = _model("sgd", module=with_batch_norm)
    weights = sum(p.numel() for p in model.module.parameters())
    assert model.params().size == weights + 12  # running mean and variance of 6 features
    before = model.params()[weights:].copy()
    model.fit_batch(_data(20))
    bn = model.module[1]
    assert not np.array_equal(model.params()[weights:], before)
    np.testing.assert_array_equal(model.params()[weights : weights + 6], bn.running_mean.numpy())
    assert int(bn.num_batches_tracked) == 1  # an integer buffer: the worker's own


def test_the_configuration_rebuilds_the_model_and_pickling_keeps_its_state():
    model = _model("adam", num_outputs=3)
    config = json.loads(json.dumps(model.to_config(), sort_keys=True))
    assert config["dtype"] == "float64" and config["updater"]["type"] == "Adam"
    rebuilt = TorchModel.from_config(config)
    np.testing.assert_array_equal(rebuilt.params(), model.params())  # the factory, seeded
    assert rebuilt.num_outputs == 3 and rebuilt.to_config() == model.to_config()
    instance = TorchModel(mlp().double(), torch.nn.MSELoss(), OPTIMIZERS["sgd"])
    again = TorchModel.from_config(instance.to_config())
    np.testing.assert_array_equal(again.params(), instance.params())
    batches = _data(60).split(20)
    model.fit_batch(batches[0])
    copy = pickle.loads(pickle.dumps(model))
    assert (copy.iteration, copy.updater_steps) == (1, 1)
    for batch in batches[1:]:
        model.fit_batch(batch)
        copy.fit_batch(batch)
    np.testing.assert_array_equal(copy.params(), model.params())
    np.testing.assert_array_equal(
        copy.output(batches[0].features), model.output(batches[0].features)
    )
    with pytest.raises(ValueError, match="not a TorchModel configuration"):
        TorchModel.from_config({"format": "sparkbatch.nn.Network"})


def test_a_nan_loss_is_a_divergence_error_and_the_parameters_stay():
    model = TorchModel(mlp, lambda out, y: (out * float("nan")).mean(), OPTIMIZERS["adam"])
    before = model.params().copy()
    with pytest.raises(DivergenceError, match="iteration 0: training diverged: the score is nan"):
        model.fit_batch(_data(20))
    np.testing.assert_array_equal(model.params(), before)
    assert model.iteration == 0
    # A finite loss whose gradient is not (sqrt at 0): no step either, as in the built-in network
    model = TorchModel(
        mlp,
        lambda out, y: torch.sqrt((out - out.detach()).pow(2).sum()) + out.mean(),
        OPTIMIZERS["adam"],
    )
    before = model.params().copy()
    with pytest.raises(DivergenceError, match="the gradient holds nan at parameter '0.weight'"):
        model.fit_batch(_data(20))
    np.testing.assert_array_equal(model.params(), before)
    for p in model.module.parameters():  # finite, though their float32 sums overflow
        p.grad = torch.full_like(p, 3e38)
    assert model._non_finite_gradient() is None
    bad = _data(20)
    bad.features[3, 1] = np.nan
    with pytest.raises(NonFiniteError):
        _model("adam").fit_batch(bad)
    # float64 data beyond a float32 module's range: the minibatch's fault, as in the Network
    huge = DataSet(bad.features.astype(np.float64), bad.labels)
    huge.features[3, 1] = 1e300
    float32 = TorchModel(mlp, torch.nn.CrossEntropyLoss(), OPTIMIZERS["adam"])
    with pytest.raises(NonFiniteError, match="features hold values beyond float32's range: 1e"):
        float32.fit_batch(huge)


def test_what_cannot_be_trained_is_refused_naming_it():
    with pytest.raises(ValueError, match="LBFGS's state cannot be laid flat"):
        TorchModel(mlp, torch.nn.MSELoss(), lambda ps: torch.optim.LBFGS(ps))
    with pytest.raises(TypeError, match="returned a int, not a torch.nn.Module"):
        TorchModel(lambda: 3, torch.nn.MSELoss(), OPTIMIZERS["sgd"])
    if not torch.cuda.is_available():
        with pytest.raises(CudaUnavailableError, match="cannot move to 'cuda'"):
            TorchModel(mlp, torch.nn.MSELoss(), OPTIMIZERS["sgd"], device="cuda")
    masked = DataSet(np.ones((2, 4, 3)), np.ones((2, 3, 3)), labels_mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match="labels mask: build the TorchModel with use_masks=True"):
        _model().fit_batch(masked)


def test_masks_reach_the_module_and_the_loss_with_use_masks():
    class Steps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, mask):
            return self.w * x * mask[:, None, :]

    def loss(out, y, mask):
        return ((out - y) ** 2).sum() / mask.sum()

    model = TorchModel(Steps, loss, OPTIMIZERS["sgd"], dtype="float64", use_masks=True)
    mask = np.array([[1.0, 1.0, 0.0]])
    batch = DataSet(
        np.full((1, 1, 3), 2.0), np.zeros((1, 1, 3)), features_mask=mask, labels_mask=mask
    )
    assert model.score(batch) == pytest.approx(4.0)  # two unmasked steps of 2², over 2
    np.testing.assert_array_equal(model.output(batch.features, features_mask=mask), [[[2, 2, 0]]])


def test_importing_the_packages_does_not_import_torch():
    code = (
        "import sys, sparkbatch, sparkbatch.train, sparkbatch.data, sparkbatch.spark\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import sparkbatch.train

    assert sparkbatch.train.TorchModel is TorchModel  # named, it is imported
