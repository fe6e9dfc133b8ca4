"""``TorchModel``: a ``torch.nn.Module`` trained by parameter averaging, as the built-in network is.

:class:`TorchModel` implements the :class:`~sparkbatch.train.Model` protocol for a PyTorch
module, a loss function and an optimiser, so that ``SparkNetwork(sc, TorchModel(...),
ParameterAveraging(...))`` fits it on Spark's executors with either exchange, averaging its
parameters (and with ``save_updater`` its optimiser's state) exactly as it averages a
:class:`~sparkbatch.nn.Network`'s.

NOTE [flat torch buffers]: the module's parameters and its persistent floating-point buffers
(BatchNorm's running mean and variance) are views of ONE flat tensor (``param.data`` is pointed at
a slice of it), so :meth:`TorchModel.params` hands out that memory itself (``flat.numpy()``) and
an average written into it is the module's next step's weights, with no copy. The buffers are
averaged with the weights (DL4J keeps BatchNorm's global mean and variance among a layer's
parameters, and averages them so): the driver's model, which fits nothing itself, otherwise
would evaluate with running statistics that never moved. Integer buffers (BatchNorm's
``num_batches_tracked``), buffers of another dtype and non-persistent buffers stay each worker's
own.

The optimiser's per-parameter state (SGD's ``momentum_buffer``, Adam's ``exp_avg`` and
``exp_avg_sq``, RMSprop's ``square_avg``, ...) is laid out the same way, in one flat state tensor
whose slices the optimiser's state dict holds. The layout is learnt once, by one step of the
optimiser on zero gradients (the parameters are restored after it). The step counters (Adam's
``step``) are not averaged: they are :attr:`TorchModel.updater_steps`, which the driver carries
from round to round as it does the built-in network's, and they are set on every parameter's
state before a step that needs it. A step from a fresh optimiser (``updater_steps`` 0) runs on
an empty state, so the optimiser initialises it as a new one would (SGD's first momentum is the
gradient itself, Adagrad's sum its initial value), and its state is then moved into the flat
tensor. An optimiser whose state holds anything but tensors of the parameters' dtype (LBFGS's
lists, a step that needs a closure) is refused at construction, naming what it holds.
"""

from __future__ import annotations

import base64
import math
import pickle
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import numpy as np
import torch

from .._finite import diverged, non_finite_data, non_finite_in
from ..data import DataSet, MultiDataSet
from ..errors import CudaUnavailableError

__all__ = ["TorchModel"]

_FORMAT = "sparkbatch.train.TorchModel"
_VERSION = 1
_READ_ONLY = "The given NumPy array is not writable"


def _pickled(value: Any) -> str:
    """``value`` pickled by cloudpickle (functions and classes of ``__main__`` by value, as
    PySpark ships them) as base64 text for a JSON configuration."""
    from pyspark import cloudpickle

    return base64.b64encode(cloudpickle.dumps(value)).decode("ascii")


def _unpickled(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))


def _tensor(array: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor of ``dtype`` on ``device``: the numpy memory itself where it is of
    that dtype on the CPU (a read-only memory map too, without torch's warning: the module only
    reads its inputs), else one conversion."""
    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=dtype)
    a = np.asarray(array)
    target = torch.empty((), dtype=dtype).numpy().dtype
    if a.dtype != target:
        with np.errstate(over="ignore", invalid="ignore"):  # checked, and named, on a NaN loss
            a = a.astype(target)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    if a.flags.writeable:
        t = torch.from_numpy(a)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_READ_ONLY, category=UserWarning)
            t = torch.from_numpy(a)
    return t if device.type == "cpu" else t.to(device)


def _labels(array: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Labels: integer class indices as int64 (as ``CrossEntropyLoss`` takes them), anything
    else as the parameters' dtype (one-hot rows, regression targets)."""
    kind = np.asarray(array).dtype.kind if not isinstance(array, torch.Tensor) else None
    if kind in ("i", "u") or (isinstance(array, torch.Tensor) and not array.is_floating_point()):
        return _tensor(array, torch.int64, device)
    return _tensor(array, dtype, device)


def _as_dataset(batch: Any) -> DataSet:
    if isinstance(batch, DataSet):
        return batch
    if isinstance(batch, MultiDataSet):
        try:
            return batch.to_dataset()
        except ValueError as e:
            raise ValueError(f"a TorchModel has one input and one output: {e}") from None
    raise TypeError(f"expected a DataSet or MultiDataSet minibatch, got {type(batch).__name__}")


def _mix(seed: int, iteration: int, stream: int) -> int:
    """A 63-bit seed for one step of one worker (splitmix64 of the three)."""
    z = (seed * 0x9E3779B97F4A7C15 + iteration * 0xBF58476D1CE4E5B9 + stream + 1) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 1


class TorchModel:
    """A ``torch.nn.Module`` with its loss and optimiser, as a :class:`~sparkbatch.train.Model`
    that :class:`~sparkbatch.train.SparkNetwork` trains by parameter averaging.

    Parameters
    ----------
    module : torch.nn.Module, or a callable of no arguments returning one
        The network. A callable (a module factory: a top-level function or a class) is built
        here with torch's generator seeded by ``seed``, and again so on every executor; a module
        instance is pickled once here (its construction-time weights included) for the
        executors. Its parameters must all share one floating dtype and device.
    loss_fn : callable
        ``loss_fn(output, labels) -> loss``: the MEAN loss of the minibatch as a scalar tensor
        (``torch.nn.CrossEntropyLoss()``, ``torch.nn.MSELoss()``, a function). With
        ``use_masks``: ``loss_fn(output, labels, labels_mask)``.
    optimizer_factory : callable
        ``optimizer_factory(parameters) -> torch.optim.Optimizer``, e.g.
        ``lambda ps: torch.optim.Adam(ps, lr=1e-3)``. SGD (with or without momentum), Adam,
        AdamW, RMSprop, Adagrad and any optimiser whose per-parameter state is tensors of the
        parameters' dtype work; others are refused here (see the module's note).
    device : str
        Where the module lives and steps run: ``"cpu"`` or a GPU (``"cuda"``, ``"cuda:1"``).
    dtype : "float32", "float64" or torch.dtype, optional
        Convert the module to this dtype; by default it keeps its own.
    seed : int
        Seeds the factory's initialisation, and torch's generator during every step (mixed
        with the iteration and the worker's ``dropout_stream``, so that dropout draws differ
        between the workers of a round and repeat from run to run); torch's global generator
        state is restored after each step.
    num_outputs : int, optional
        The width of the output, for :meth:`SparkNetwork.evaluate`'s number of classes.
    use_masks : bool
        Pass a minibatch's masks on: ``module(features, features_mask)`` and
        ``loss_fn(output, labels, labels_mask)`` (either mask may be None). Without it a
        minibatch with a mask is refused, naming it.

    Notes
    -----
    Inputs reach the module as tensors over the minibatch's own memory (a memory map of a
    minibatch file, read-only) where they already are of the module's dtype: a module must
    not change its inputs in place. Labels of an integer dtype become int64 class indices;
    others take the module's dtype. Move the model with :meth:`to`, not ``module.to()``
    (which would give the parameters new memory, no longer the flat buffer).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sparkbatch.data import DataSet
    >>> from torch import nn
    >>> def mlp():
    ...     return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> model = TorchModel(mlp, nn.CrossEntropyLoss(),
    ...                    lambda ps: torch.optim.Adam(ps, lr=0.05), dtype="float64", seed=1)
    >>> model.params().shape, model.updater_state().shape
    ((58,), (116,))
    >>> x = np.random.default_rng(0).normal(size=(64, 4))
    >>> batch = DataSet(x, np.eye(2)[(x[:, 0] > 0).astype(int)])
    >>> first = model.fit_batch(batch)
    >>> last = [model.fit_batch(batch) for _ in range(30)][-1]
    >>> last < first / 4, model.iteration, model.updater_steps
    (True, 31, 31)
    >>> model.params()[:] = 0  # a view: the module's weights are zero now
    >>> bool((model.module[0].weight == 0).all())
    True
    """

    def __init__(
        self,
        module: torch.nn.Module | Callable[[], torch.nn.Module],
        loss_fn: Callable[..., torch.Tensor],
        optimizer_factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
        *,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        seed: int = 0,
        num_outputs: int | None = None,
        use_masks: bool = False,
    ) -> None:
        if isinstance(module, torch.nn.Module):
            instance, factory = module, None
            source = module
            if any(t.device.type != "cpu" for t in module.state_dict().values()):
                import copy

                source = copy.deepcopy(module).cpu()
            blob = _pickled(source)
        elif callable(module):
            instance, factory = None, module
            blob = _pickled(module)
        else:
            raise TypeError(
                "module must be a torch.nn.Module or a callable returning one, got "
                f"{type(module).__name__}"
            )
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if not callable(optimizer_factory):
            raise TypeError(
                f"optimizer_factory must be callable, got {type(optimizer_factory).__name__}"
            )
        config = {
            "format": _FORMAT,
            "version": _VERSION,
            "module": blob,
            "module_is_factory": factory is not None,
            "loss_fn": _pickled(loss_fn),
            "optimizer_factory": _pickled(optimizer_factory),
            "seed": int(seed),
            "num_outputs": None if num_outputs is None else int(num_outputs),
            "use_masks": bool(use_masks),
        }
        if instance is None:
            instance = self._built(factory, int(seed))
        self._setup(instance, loss_fn, optimizer_factory, config, device, dtype)

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def _built(factory: Callable[[], Any], seed: int) -> torch.nn.Module:
        """``factory()`` with torch's CPU generator seeded by ``seed`` (its state restored)."""
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(seed)
        try:
            module = factory()
        finally:
            generator.set_state(saved)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"the module factory {getattr(factory, '__qualname__', factory)!r} returned a "
                f"{type(module).__name__}, not a torch.nn.Module"
            )
        return module

    def _setup(
        self,
        module: torch.nn.Module,
        loss_fn: Callable[..., Any],
        optimizer_factory: Callable[..., Any],
        config: dict[str, Any],
        device: str,
        dtype: str | torch.dtype | None,
    ) -> None:
        if dtype is not None:
            target = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
            if not isinstance(target, torch.dtype) or not target.is_floating_point:
                raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
            module = module.to(target)
        named = list(module.named_parameters())
        if not named:
            raise ValueError("the module has no parameters to train")
        dtypes = {p.dtype for _, p in named}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            found = sorted(str(d) for d in dtypes)
            raise ValueError(
                f"a TorchModel needs every parameter in one floating dtype, the module has {found}"
            )
        self.module = module
        self.loss_fn = loss_fn
        self.optimizer_factory = optimizer_factory
        self._config = dict(config, dtype=str(next(iter(dtypes))).removeprefix("torch."))
        self.dtype: torch.dtype = next(iter(dtypes))
        self.seed: int = config["seed"]
        self.num_outputs: int | None = config["num_outputs"]
        self.use_masks: bool = config["use_masks"]
        self._param_names = [name for name, _ in named]
        self._params = [p for _, p in named]
        self._buffer_owners = self._averaged_buffers(module)
        #: Minibatches fitted so far (parameter averaging advances it on the driver).
        self.iteration = 0
        #: Epochs completed (parameter averaging advances it on the driver).
        self.epoch = 0
        #: Optimiser steps since its state was last fresh: Adam's step count.
        self.updater_steps = 0
        #: Mixed into the step's random seed: the worker's index in its round.
        self.dropout_stream = 0
        #: The last minibatch's score (the mean of a round's on the driver).
        self.last_score: float | None = None
        self.device = "cpu"
        self._flat = torch.empty(0)
        self._state = torch.empty(0)
        self._move(torch.device(device))

    def _averaged_buffers(self, module: torch.nn.Module) -> list[list[tuple[Any, str]]]:
        """Where the persistent buffers of the parameters' dtype (BatchNorm's running
        statistics) are: for each, the (submodule, name) pairs that hold it. They are averaged
        with the parameters (NOTE [flat torch buffers])."""
        owners: dict[int, list[tuple[Any, str]]] = {}
        for sub in module.modules():
            for name, buffer in sub._buffers.items():
                if (
                    buffer is not None
                    and buffer.dtype == self.dtype
                    and name not in sub._non_persistent_buffers_set
                ):
                    owners.setdefault(id(buffer), []).append((sub, name))
        return list(owners.values())

    def _move(self, device: torch.device) -> None:
        """Put the module on ``device`` with its parameters and averaged buffers in one new flat
        tensor there, and build the optimiser and its state's layout anew (the state's values
        are kept)."""
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise CudaUnavailableError(
                    f"a TorchModel cannot move to {str(device)!r}: this torch "
                    f"{torch.__version__} sees no CUDA device (a CPU build, or no GPU or driver)"
                )
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        state = self._state
        self.module.to(device)
        if isinstance(self.loss_fn, torch.nn.Module):
            self.loss_fn.to(device)
        size = sum(p.numel() for p in self._params) + sum(
            owners[0][0]._buffers[owners[0][1]].numel() for owners in self._buffer_owners
        )
        flat = torch.empty(size, dtype=self.dtype, device=device)
        self._point(flat, copy=True)
        self.device = "cpu" if device.type == "cpu" else str(device)
        self._torch_device = device
        self.optimizer = self._new_optimizer()
        self._learn_layout()
        if state.numel() == self._state.numel():
            self._state.copy_(state.to(device))

    def _point(self, flat: torch.Tensor, *, copy: bool) -> None:
        """Point every parameter and averaged buffer at its slice of ``flat`` (their values
        copied in first with ``copy``)."""
        offset = 0
        with torch.no_grad():
            for p in self._params:
                n = p.numel()
                view = flat[offset : offset + n].view(p.shape)
                if copy:
                    view.copy_(p.detach())
                p.data = view
                offset += n
            for owners in self._buffer_owners:
                sub, name = owners[0]
                buffer = sub._buffers[name]
                n = buffer.numel()
                view = flat[offset : offset + n].view(buffer.shape)
                if copy:
                    view.copy_(buffer)
                for sub, name in owners:
                    sub._buffers[name] = view
                offset += n
        self._flat = flat

    def _new_optimizer(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer_factory(list(self._params))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer_factory returned a {type(optimizer).__name__}, not a "
                "torch.optim.Optimizer"
            )
        ours = {id(p) for p in self._params}
        for group in optimizer.param_groups:
            if any(id(p) not in ours for p in group["params"]):
                raise ValueError(
                    "the optimizer holds tensors that are not the module's parameters: "
                    "optimizer_factory must build it over the parameters it is given"
                )
        return optimizer

    def _learn_layout(self) -> None:
        """Learn where the optimiser's state lives: one step on zero gradients (the parameters
        restored after it), its state's tensors laid end to end in a zeroed flat state tensor
        (NOTE [flat torch buffers] in the module's docstring)."""
        optimizer, params = self.optimizer, self._params
        name = type(optimizer).__name__
        saved = self._flat.clone()
        for p in params:
            p.grad = torch.zeros_like(p)
        try:
            optimizer.step()
        except Exception as e:
            raise ValueError(
                f"{name}'s state cannot be laid flat: its step() on zero gradients failed "
                f"({type(e).__name__}: {e})"
            ) from e
        finally:
            with torch.no_grad():
                self._flat.copy_(saved)
            for p in params:
                p.grad = None
        index = {id(p): i for i, p in enumerate(params)}
        layout: list[tuple[int, str, int, tuple[int, ...]]] = []
        steps: dict[int, tuple[str, Any, Any]] = {}
        offset = 0
        for key in optimizer.state:
            if id(key) not in index:
                raise ValueError(
                    f"{name}'s state cannot be laid flat: it keeps state by a key "
                    "that is not one of the module's parameters"
                )
        for i, p in enumerate(params):
            state = optimizer.state.get(p, {})
            for key in sorted(state):
                value = state[key]
                where = f"{name}'s state {key!r} of parameter {self._param_names[i]!r}"
                if key == "step":
                    if isinstance(value, torch.Tensor):
                        steps[i] = ("tensor", value.dtype, value.device)
                    elif isinstance(value, (int, float)):
                        steps[i] = ("number", type(value), None)
                    else:
                        raise ValueError(f"{where} is a {type(value).__name__}, not a number")
                    continue
                if value is None:
                    continue
                if not isinstance(value, torch.Tensor):
                    raise ValueError(
                        f"{where} is a {type(value).__name__}: only tensors can be laid flat "
                        "and averaged"
                    )
                if value.dtype != self.dtype:
                    raise ValueError(
                        f"{where} is of {value.dtype}, not the parameters' {self.dtype}: it "
                        "cannot be laid flat with them"
                    )
                layout.append((i, key, offset, tuple(value.shape)))
                offset += value.numel()
        optimizer.state.clear()
        self._layout = layout
        self._steps = steps
        self._state = torch.zeros(offset, dtype=self.dtype, device=self._torch_device)
        self._installed = False  # whether the optimiser's state holds the flat state's views
        self._steps_value = 0  # what its step counters hold while installed
        self._verified = False
        self._given: list[tuple[dict[str, Any], str, torch.Tensor]] = []

    # -- the optimiser's state ---------------------------------------------------------------

    def _views(self) -> list[tuple[dict[str, Any], str, torch.Tensor]]:
        """The optimiser's state entries and the flat state's views for them, made anew (each
        entry then holds its view: :meth:`_install`, :meth:`_adopt`)."""
        params, state = self._params, self._state
        out = []
        for i, key, offset, shape in self._layout:
            view = state[offset : offset + math.prod(shape)].view(shape)
            out.append((self.optimizer.state[params[i]], key, view))
        self._given = out
        return out

    def _install(self, steps: int) -> None:
        """Give the optimiser the flat state's views as its state, its counters at ``steps``."""
        optimizer = self.optimizer
        optimizer.state.clear()
        for state, key, view in self._views():
            state[key] = view
        for i, (kind, dtype, device) in self._steps.items():
            state = optimizer.state[self._params[i]]
            state["step"] = (
                torch.tensor(float(steps), dtype=dtype, device=device)
                if kind == "tensor"
                else dtype(steps)
            )
        self._installed = True
        self._steps_value = steps

    def _adopt(self) -> None:
        """After a fresh optimiser's step: copy the state it made into the flat state and give
        it the views instead."""
        name = type(self.optimizer).__name__
        known = {(i, key) for i, key, _, _ in self._layout}
        for i, p in enumerate(self._params):
            for key in self.optimizer.state.get(p, {}):
                if key != "step" and (i, key) not in known:
                    raise ValueError(
                        f"{name} made state {key!r} of parameter {self._param_names[i]!r} that "
                        "its step on zero gradients did not: its state cannot be laid flat"
                    )
        with torch.no_grad():
            for state, key, view in self._views():
                value = state.get(key)
                if value is None:
                    view.zero_()
                else:
                    view.copy_(value)
                state[key] = view
        for i, (kind, dtype, device) in self._steps.items():  # a parameter it passed over
            state = self.optimizer.state[self._params[i]]
            if "step" not in state:
                state["step"] = (
                    torch.tensor(1.0, dtype=dtype, device=device) if kind == "tensor" else dtype(1)
                )
        self._installed = True
        self._steps_value = 1

    def _set_steps(self, steps: int) -> None:
        for i in self._steps:
            state = self.optimizer.state[self._params[i]]
            value = state["step"]
            if isinstance(value, torch.Tensor):
                value.fill_(steps)
            else:
                state["step"] = type(value)(steps)
        self._steps_value = steps

    def _verify(self) -> None:
        """Once, after a step on the installed state: the optimiser updated it in place."""
        for state, key, view in self._given:
            if state.get(key) is not view:
                raise ValueError(
                    f"{type(self.optimizer).__name__} replaced its state {key!r} instead of "
                    "updating it in place: its state cannot be laid flat"
                )
        self._verified = True

    # -- the Model protocol ------------------------------------------------------------------

    def params(self) -> np.ndarray:
        """Every parameter and averaged buffer as one flat vector: the module's own memory on
        the CPU (writing into it changes the module), a host copy on a GPU."""
        return self._flat.detach().cpu().numpy() if self.device != "cpu" else self._flat.numpy()

    def set_params(self, values: np.ndarray) -> None:
        """Copy ``values`` (as many as :meth:`params` holds) into the parameters."""
        self._copy_into(self._flat, values, "parameters")

    def updater_state(self) -> np.ndarray:
        """The optimiser's state as one flat vector (empty for SGD without momentum): a view on
        the CPU, a copy on a GPU. Zeros while the optimiser is fresh (``updater_steps`` 0)."""
        state = self._state
        return state.detach().cpu().numpy() if self.device != "cpu" else state.numpy()

    def set_updater_state(self, values: np.ndarray) -> None:
        """Copy ``values`` into the optimiser's state (its step count is ``updater_steps``)."""
        self._copy_into(self._state, values, "updater state values")

    def _copy_into(self, target: torch.Tensor, values: Any, what: str) -> None:
        a = np.asarray(values).reshape(-1)
        if a.size != target.numel():
            raise ValueError(f"expected {target.numel()} {what}, got {a.size}")
        if self.device == "cpu":
            np.copyto(target.numpy(), a, casting="same_kind")
        else:
            with torch.no_grad():
                target.copy_(_tensor(a, self.dtype, self._torch_device))

    def reset_updater(self) -> None:
        """Make the optimiser fresh: its state zeroed and ``updater_steps`` 0 (the next step
        initialises the state as a new optimiser would)."""
        self._state.zero_()
        self.updater_steps = 0

    def use_buffers(self, params: np.ndarray, state: np.ndarray | None = None) -> None:
        """Keep the parameters (and the optimiser's state) in the given flat host arrays from
        now on, their values copied in (parameter averaging's workers on the driver's machine
        so hand over their results in shared memory). CPU models only."""
        if self.device != "cpu":
            raise ValueError("a GPU model's parameters live on the GPU")
        flat = torch.from_numpy(self._checked_buffer(params, self._flat, "params"))
        with torch.no_grad():
            flat.copy_(self._flat)
        self._point(flat, copy=False)
        if state is not None and self._state.numel():
            moved = torch.from_numpy(self._checked_buffer(state, self._state, "state"))
            with torch.no_grad():
                moved.copy_(self._state)
            self._state = moved
            if self._installed:
                for entry, key, view in self._views():
                    entry[key] = view

    def _checked_buffer(self, array: np.ndarray, current: torch.Tensor, what: str) -> np.ndarray:
        dtype = current.numpy().dtype
        if (
            not isinstance(array, np.ndarray)
            or array.dtype != dtype
            or array.size != current.numel()
            or not array.flags.writeable
            or not array.flags.c_contiguous
        ):
            raise ValueError(
                f"{what} must be a writable contiguous {dtype} array of {current.numel()} values"
            )
        return array.reshape(-1)

    def to(self, device: str) -> TorchModel:
        """Move the model to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``): parameters,
        buffers and the optimiser's state, which is rebuilt there. Returns the model."""
        self._move(torch.device(device))
        return self

    def fit_batch(self, batch: DataSet | MultiDataSet) -> float:
        """One optimiser step on one minibatch; returns its score (the loss before the step).

        A score or a gradient that is not finite raises
        :class:`~sparkbatch.errors.DivergenceError` (or :class:`~sparkbatch.errors.NonFiniteError`
        when the minibatch holds NaN or infinity) before the step, so the parameters stay those
        of before it, as the built-in network's do.
        """
        ds = _as_dataset(batch)
        if ds.labels is None:
            raise ValueError("the minibatch has no labels to fit against")
        module, optimizer = self.module, self.optimizer
        module.train()
        with self._seeded():
            optimizer.zero_grad(set_to_none=True)
            loss = self._loss(ds, "fit")
            score = float(loss.detach())
            if not math.isfinite(score):
                self._diverged(ds, f"the score is {score!r}")
            loss.backward()
            bad = self._non_finite_gradient()
            if bad is not None:  # as the built-in network: no step on it
                self._diverged(ds, bad)
            fresh = self.updater_steps == 0
            if fresh:
                optimizer.state.clear()  # a new optimiser's state, initialised by the step
                self._installed = False
            elif not self._installed:
                self._install(self.updater_steps)
            elif self._steps_value != self.updater_steps:
                self._set_steps(self.updater_steps)
            optimizer.step()
            if fresh:
                self._adopt()
            else:
                self._steps_value += 1
                if not self._verified:
                    self._verify()
        self.iteration += 1
        self.updater_steps += 1
        self.last_score = score
        return score

    def _diverged(self, ds: DataSet, detail: str) -> NoReturn:
        """Raise a step's error: NonFiniteError where the minibatch holds NaN or infinity,
        else DivergenceError with ``detail``."""
        where = f"iteration {self.iteration}"
        bad_data = non_finite_in(ds) or self._beyond_dtype(ds)
        if bad_data is not None:
            raise non_finite_data(where, bad_data, "ParameterAveraging(non_finite='skip')")
        raise diverged(where, detail)

    def _beyond_dtype(self, ds: DataSet) -> str | None:
        """Where the minibatch's conversion to the module's dtype made a value infinite (float64
        data for a float32 module), in words, as the built-in network names it; None if
        nowhere."""
        for name, array in (("features", ds.features), ("labels", ds.labels)):
            a = np.asarray(array)
            if a.dtype.kind != "f" or a.dtype.itemsize <= self.dtype.itemsize:
                continue
            converted = torch.from_numpy(np.ascontiguousarray(a)).to(self.dtype).reshape(-1)
            bad = (~torch.isfinite(converted)).nonzero()
            if len(bad):
                index = int(bad[0, 0])
                example = index // max(1, a.size // max(1, a.shape[0]))
                return (
                    f"{name} hold values beyond {str(self.dtype).removeprefix('torch.')}'s "
                    f"range: {float(a.reshape(-1)[index])!r} at example {example}"
                )
        return None

    def _non_finite_gradient(self) -> str | None:
        """Where the gradient first holds NaN or infinity, in words; None where it is finite.
        A sum per parameter and one look at the host (2% of a small MLP's step); only a sum
        that is not finite (NaN and infinity carry into it) looks at every value."""
        present = [(i, p.grad) for i, p in enumerate(self._params) if p.grad is not None]
        if not present:
            return None
        values = [g._values() if g.is_sparse else g for _, g in present]
        if bool(torch.stack([v.sum() for v in values]).sum().isfinite()):
            return None
        finite = torch.stack([torch.isfinite(v).all() for v in values])
        if bool(finite.all()):  # finite values whose sum overflowed
            return None
        k = int((~finite).nonzero()[0, 0])
        flat = values[k].reshape(-1)
        value = float(flat[~torch.isfinite(flat)][0])
        return f"the gradient holds {value} at parameter {self._param_names[present[k][0]]!r}"

    def _seeded(self) -> _Seeded:
        seed = _mix(self.seed, self.iteration, self.dropout_stream)
        return _Seeded(seed, self._torch_device)

    def _loss(self, ds: DataSet, what: str) -> torch.Tensor:
        """The loss of ``ds`` (in the module's current mode, with the current grad mode)."""
        dtype, device = self.dtype, self._torch_device
        x = _tensor(ds.features, dtype, device)
        y = _labels(ds.labels, dtype, device)
        if self.use_masks:
            fm = None if ds.features_mask is None else _tensor(ds.features_mask, dtype, device)
            lm = None if ds.labels_mask is None else _tensor(ds.labels_mask, dtype, device)
            loss = self.loss_fn(self.module(x, fm), y, lm)
        else:
            self._no_masks(ds.features_mask, ds.labels_mask)
            loss = self.loss_fn(self.module(x), y)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return the minibatch's mean loss as one value, got "
                f"{shape} (to {what})"
            )
        return loss.reshape(())

    @staticmethod
    def _no_masks(features_mask: Any, labels_mask: Any) -> None:
        for name, mask in (("features", features_mask), ("labels", labels_mask)):
            if mask is not None:
                raise ValueError(
                    f"the minibatch has a {name} mask: build the TorchModel with use_masks=True "
                    "to pass masks to the module and the loss"
                )

    def output(self, features: Any, *, features_mask: Any = None) -> np.ndarray:
        """The module's output for ``features`` in evaluation mode, as a new numpy array."""
        module = self.module
        module.eval()
        x = _tensor(features, self.dtype, self._torch_device)
        with torch.no_grad():
            if self.use_masks:
                m = (
                    None
                    if features_mask is None
                    else _tensor(features_mask, self.dtype, self._torch_device)
                )
                out = module(x, m)
            else:
                self._no_masks(features_mask, None)
                out = module(x)
        return out.detach().cpu().numpy().copy() if self.device == "cpu" else out.cpu().numpy()

    def score(self, batch: DataSet | MultiDataSet) -> float:
        """The mean loss of a minibatch in evaluation mode (no step)."""
        ds = _as_dataset(batch)
        if ds.labels is None:
            raise ValueError("the minibatch has no labels to score against")
        self.module.eval()
        with torch.no_grad():
            return float(self._loss(ds, "score"))

    def to_config(self) -> dict[str, Any]:
        """JSON-able configuration from which :meth:`from_config` builds the same model: the
        module (its factory, or the instance as it was constructed), the loss and the optimiser
        factory pickled by cloudpickle as base64 text, the dtype, seed and options; the
        optimiser's class and defaults are listed for the training report. It holds no
        trained parameters (parameter averaging sends those), and it is code: build models only
        from configurations you trust."""
        defaults = {}
        for key, value in self.optimizer.defaults.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if value is None or isinstance(value, (bool, int, float, str)):
                defaults[key] = value
            elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
                defaults[key] = list(value)
        return dict(self._config, updater={"type": type(self.optimizer).__name__, **defaults})

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TorchModel:
        """A new model as :meth:`to_config`'s ``config`` describes, on the CPU: a factory's
        module built with the same seed (so with the same initial weights), or the pickled
        instance with its construction-time weights."""
        if config.get("format") != _FORMAT:
            raise ValueError(f"not a TorchModel configuration (format {config.get('format')!r})")
        if config.get("version") != _VERSION:
            raise ValueError(
                f"TorchModel configuration version {config.get('version')!r} is not {_VERSION}"
            )
        keep = (
            "format",
            "version",
            "module",
            "module_is_factory",
            "loss_fn",
            "optimizer_factory",
            "seed",
            "num_outputs",
            "use_masks",
        )
        own = {k: config[k] for k in keep}
        module = _unpickled(config["module"])
        if config["module_is_factory"]:
            module = cls._built(module, int(config["seed"]))
        model = cls.__new__(cls)
        model._setup(
            module,
            _unpickled(config["loss_fn"]),
            _unpickled(config["optimizer_factory"]),
            own,
            "cpu",
            config.get("dtype"),
        )
        return model

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its configuration, its module's state dict (parameters and every buffer),
        its optimiser's flat state and its counters; unpickled on the CPU."""
        import io

        data = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, data)
        counters = (self.iteration, self.epoch, self.updater_steps, self.last_score)
        state = np.array(self.updater_state(), copy=True)
        return _restore, (self.to_config(), data.getvalue(), state, counters)

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"TorchModel({type(self.module).__name__}, {self._flat.numel()} params, "
            f"{type(self.optimizer).__name__}, {dtype}, {self.device})"
        )


def _restore(
    config: dict[str, Any], weights: bytes, state: np.ndarray, counters: tuple[Any, ...]
) -> TorchModel:
    """A pickled :class:`TorchModel` back: see ``TorchModel.__reduce__``."""
    import io

    model = TorchModel.from_config(config)
    model.module.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    model.set_updater_state(state)
    model.iteration, model.epoch, model.updater_steps, model.last_score = counters
    return model


class _Seeded:
    """Torch's generator (the CPU's, and ``device``'s GPU's) seeded for one step, its state
    restored after it: ``torch.manual_seed`` costs 0.2 ms a call, the generator's own 2 us."""

    __slots__ = ("seed", "generators", "saved")

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        self.generators = [torch.default_generator]
        if device.type == "cuda":
            self.generators.append(torch.cuda.default_generators[device.index or 0])
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> None:
        self.saved = [g.get_state() for g in self.generators]
        for g in self.generators:
            g.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        for g, state in zip(self.generators, self.saved, strict=True):
            g.set_state(state)
