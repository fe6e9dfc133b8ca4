"""The built-in network: a stack of dense layers on one flat parameter buffer.

Every layer's weights and bias are views into one contiguous buffer, and so are the gradients and
the updater's state, so that parameter averaging is one pass over memory and ``params()`` hands
out the buffer itself. A training step is numpy's BLAS for the matrix products and one fused
native pass for everything else (bias + activation; activation gradient + bias gradient; the
output layer's activation, loss and gradient; the updater), with preallocated work arrays per
batch size, so a step allocates nothing.

Sequences ``[n, f, t]`` (DL4J's layout) are fitted step by step, as DL4J's feed-forward layers do
with a time-series preprocessor: every time step is a row, and the label mask ``[n, t]`` weighs
each row's loss (0 drops a padded step).

Examples
--------
>>> import numpy as np
>>> from sparkbatch.data import DataSet
>>> from sparkbatch.nn import Adam, Dense, Network, Output
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(256, 4)).astype(np.float32)
>>> y = np.eye(2, dtype=np.float32)[(x[:, 0] + x[:, 1] > 0).astype(int)]
>>> net = Network([Dense(4, 16, "relu"), Output(16, 2, "softmax", "cross_entropy")],
...               Adam(0.01), seed=1)
>>> _ = net.fit(DataSet(x, y), epochs=30, batch_size=32)
>>> net.evaluate(DataSet(x, y)).accuracy() > 0.95
True
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .. import _native
from .._arguments import check_int, check_optional_int
from .._finite import (
    check_mode,
    check_params,
    diverged,
    first_non_finite,
    non_finite_data,
    non_finite_in,
    value_at,
    with_context,
)
from ..data import DataSet, MultiDataSet
from ..data.format import load_tensors, save_tensors
from ..errors import DivergenceError, FormatError, NonFiniteError
from ..evaluation import Evaluation, RegressionEvaluation
from . import gpu
from .functions import activation_code, loss_code, needs_preactivation
from .layers import Dense, Output, layer_from_config
from .updaters import Adam, Updater, updater_from_config

__all__ = ["Network"]

CONFIG_FORMAT = "sparkbatch.nn.Network"
CONFIG_VERSION = 1
_WORKSPACES_KEPT = 4  # batch sizes whose work arrays are kept (the last batch is often smaller)
_INFERENCE_ROWS = 4096  # rows per forward pass of output() when no batch size is given
_MASK64 = (1 << 64) - 1

log = logging.getLogger("sparkbatch.nn")


class _Workspace:
    """Work arrays for one batch size: pre-activations, activations and input gradients."""

    def __init__(self, layers: Sequence[Dense | Output], rows: int, dtype: np.dtype) -> None:
        self.z = [np.empty((rows, layer.n_out), dtype) for layer in layers]
        last = len(layers) - 1
        # Hidden activations that need no pre-activation overwrite it; the output keeps both.
        self.a = [
            np.empty_like(z) if i == last or needs_preactivation(layer.activation) else z
            for i, (layer, z) in enumerate(zip(layers, self.z, strict=True))
        ]
        self.dz_out = np.empty((rows, layers[-1].n_out), dtype)
        # Gradient with respect to layer i's input; it becomes layer i-1's dz in place.
        self.d_input = [None] + [np.empty((rows, layer.n_in), dtype) for layer in layers[1:]]
        self.dropped = [
            np.empty((rows, layer.n_in), dtype) if layer.dropout > 0 else None for layer in layers
        ]


class Network:
    """A feed-forward network of :class:`~sparkbatch.nn.Dense` layers and one
    :class:`~sparkbatch.nn.Output` layer, trained by ``updater``.

    Parameters
    ----------
    layers : sequence of Dense, ending with one Output
        ``layers[i].n_out`` must equal ``layers[i + 1].n_in``.
    updater : Updater, default Adam(1e-3)
        How gradients become steps.
    seed : int
        Seeds the weight initialisation and the dropout masks.
    dtype : "float32" or "float64"
        Of parameters and arithmetic; float64 serves gradient checks.
    """

    def __init__(
        self,
        layers: Sequence[Dense | Output],
        updater: Updater | None = None,
        *,
        seed: int = 0,
        dtype: str | np.dtype = "float32",
        device: str | int = "cpu",
    ) -> None:
        self.layers: tuple[Dense | Output, ...] = tuple(layers)
        _check_layers(self.layers)
        self.updater: Updater = updater if updater is not None else Adam()
        if not isinstance(self.updater, Updater):
            raise TypeError(f"updater must be an Updater, got {type(self.updater).__name__}")
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        #: Minibatches fitted so far (drives schedules and Adam's bias correction).
        self.iteration = 0
        #: Epochs completed by :meth:`fit`.
        self.epoch = 0
        #: Score of the last minibatch fitted (``nan`` before the first).
        self.last_score = math.nan
        #: Steps accumulated in the updater state since it was last zeroed (Adam's bias
        #: correction); equal to ``iteration`` unless :meth:`reset_updater` was called.
        self.updater_steps = 0
        #: Mixed into the dropout masks' seed: parameter-averaging workers set their index, so
        #: that workers of one round drop different inputs (0 gives single-machine masks).
        self.dropout_stream = 0
        #: Minibatches that :meth:`fit` skipped (``non_finite="skip"``) for holding NaN or
        #: infinity, over the network's life in this process.
        self.skipped_minibatches = 0

        total = sum(layer.num_params for layer in self.layers)
        self._params = np.zeros(total, self.dtype)
        self._grads = np.zeros(total, self.dtype)
        self._state = np.zeros(self.updater.state_per_param * total, self.dtype)
        self._weights, self._biases = _views(self._params, self.layers)
        self._weight_grads, self._bias_grads = _views(self._grads, self.layers)
        self._codes = [(activation_code(layer.activation), layer.slope) for layer in self.layers]
        out = self.layers[-1]
        self._loss = loss_code(out.loss)
        self._workspaces: OrderedDict[int, _Workspace] = OrderedDict()

        rng = np.random.default_rng(self.seed)
        for layer, weights in zip(self.layers, self._weights, strict=True):
            layer.init_weights(rng, weights)
        self._gpu: gpu.GpuState | None = None
        if gpu.parse_device(device) is not None:
            self.to(device)

    @property
    def device(self) -> str:
        """Where the parameters live and the arithmetic runs: ``"cpu"`` or ``"cuda:N"``."""
        return "cpu" if self._gpu is None else f"cuda:{self._gpu.device}"

    def to(self, device: str | int) -> Network:
        """Move the network to ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (in place); returns it.

        Parameters and updater state move with it, so outputs and training continue
        unchanged. Raises :class:`~sparkbatch.nn.gpu.CudaUnavailableError` saying why when no
        usable GPU is there.
        """
        index = gpu.parse_device(device)
        if self._gpu is not None and index != self._gpu.device:
            self._sync_host()
            self._gpu = None
        if index is not None and self._gpu is None:
            self._gpu = gpu.GpuState(self, index)
        return self

    def _sync_host(self) -> None:
        """Bring the host buffers up to date with the device (no-op on the CPU)."""
        if self._gpu is not None:
            self._gpu.download_params(self._params)
            self._gpu.download_state(self._state)

    # -- parameters ------------------------------------------------------------------------------

    @property
    def num_params(self) -> int:
        """Number of parameters (weights and biases of every layer)."""
        return self._params.size

    @property
    def num_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def num_outputs(self) -> int:
        return self.layers[-1].n_out

    def params(self) -> np.ndarray:
        """The flat parameter buffer itself (no copy): writing to it changes the network.

        On a GPU network, a host copy (change parameters there with :meth:`set_params`).
        """
        if self._gpu is not None:
            return self._gpu.download_params()
        return self._params

    def device_params(self) -> Any:
        """The parameter buffer where it lives, without a copy: the numpy array on the CPU, a
        ``sparkbatch._cuda.DeviceBuffer`` on a GPU, which exposes ``__dlpack__`` and
        ``__cuda_array_interface__`` so that PyTorch or CuPy can use the same device memory
        (e.g. ``torch.from_dlpack(net.device_params())``)."""
        return self._params if self._gpu is None else self._gpu.params

    def set_params(self, values: Any) -> None:
        """Copy ``values`` (``num_params`` numbers) into the parameter buffer."""
        np.copyto(self._params, _flat(values, self._params.size, "params"), casting="same_kind")
        if self._gpu is not None:
            self._gpu.upload_params(self._params)

    def gradients(self) -> np.ndarray:
        """The flat gradient buffer of the last :meth:`fit_batch` (no copy; a copy on a GPU)."""
        if self._gpu is not None:
            return self._gpu.download_gradients()
        return self._grads

    def updater_state(self) -> np.ndarray:
        """The flat updater state (``state_per_param * num_params`` values; no copy, a copy on
        a GPU network)."""
        if self._gpu is not None:
            return self._gpu.download_state()
        return self._state

    def set_updater_state(self, values: Any) -> None:
        """Copy ``values`` into the updater state buffer."""
        np.copyto(
            self._state, _flat(values, self._state.size, "updater state"), casting="same_kind"
        )
        if self._gpu is not None:
            self._gpu.upload_state(self._state)

    def _use_buffers(self, params: np.ndarray, state: np.ndarray | None = None) -> None:
        """Keep the parameters (and the updater state) in the given flat arrays from now on,
        their current values copied in: a parameter-averaging worker hands the driver its
        parameters in shared memory this way, without a copy per round. CPU networks only."""
        if self._gpu is not None:
            raise ValueError("a GPU network's parameters live on the GPU")
        np.copyto(params, self._params)
        self._params = params
        self._weights, self._biases = _views(params, self.layers)
        if state is not None:
            np.copyto(state, self._state)
            self._state = state

    def reset_updater(self) -> None:
        """Zero the updater state (velocities, Adam's moments) as a fresh updater has it."""
        self._state[...] = 0
        if self._gpu is not None:
            self._gpu.upload_state(self._state)
        self.updater_steps = 0

    def weights(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Views ``(W [n_in, n_out], b [n_out])`` of layer ``layer`` in the parameter buffer
        (of a host copy on a GPU network)."""
        self._sync_host()
        return self._weights[layer], self._biases[layer]

    # -- training ----------------------------------------------------------------------------

    def fit_batch(self, batch: DataSet | MultiDataSet) -> float:
        """One step on one minibatch; returns its score (loss + L2 penalty) before the step.

        Raises :class:`~sparkbatch.errors.DivergenceError` (or
        :class:`~sparkbatch.errors.NonFiniteError` when the minibatch is to blame) before the
        updater runs when the score or the gradient is not finite, so the parameters stay those
        of before the step (NOTE [non-finite checks] in ``sparkbatch._finite``).
        """
        with np.errstate(over="ignore", invalid="ignore"):  # checked, and named
            return self._fit_step(batch)

    def _fit_step(self, batch: DataSet | MultiDataSet) -> float:
        """:meth:`fit_batch` less its ``np.errstate``: the caller holds
        ``np.errstate(over="ignore", invalid="ignore")`` around its loop (entering it costs
        as much as a small step's data check)."""
        x, y, w = self._arrays(batch, labels_needed=True)
        if x.shape[0] == 0:
            raise ValueError("cannot fit an empty minibatch")
        if self._gpu is not None:
            score = self._gpu.compute_gradients(x, y, w)
            bad = -1 if self._gpu.gradients_finite() else first_non_finite(self.gradients())
        else:
            score = self._gradients(x, y, w)  # overflow is checked below, and named
            bad = _native.first_non_finite(self._grads)
        if bad >= 0 or not math.isfinite(score):
            raise self._divergence(batch, score, bad, (x, y, w))
        if self._gpu is not None:
            self._gpu.update()
        else:
            self.updater.step(
                self._params,
                self._grads,
                self._state,
                self.iteration,
                self.epoch,
                self.updater_steps,
            )
        self.iteration += 1
        self.updater_steps += 1
        self.last_score = score
        return score

    def compute_gradients(self, batch: DataSet | MultiDataSet) -> float:
        """Fill :meth:`gradients` for one minibatch without stepping; returns the score.

        The score is the mean loss per example (per unmasked step for sequences) plus the L2
        penalty, and the gradients are its derivatives (DL4J's ``computeGradientAndScore``).
        """
        x, y, w = self._arrays(batch, labels_needed=True)
        if x.shape[0] == 0:
            raise ValueError("cannot fit an empty minibatch")
        if self._gpu is not None:
            return self._gpu.compute_gradients(x, y, w)
        return self._gradients(x, y, w)

    def _gradients(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
        """compute_gradients on the CPU, from :meth:`_arrays`' rows."""
        rows = x.shape[0]
        ws = self._workspace(rows)
        inputs = self._forward(x, ws, training=True)
        last = len(self.layers) - 1
        act, alpha = self._codes[last]
        divisor = float(rows if w is None else w.sum())
        np.matmul(inputs[last], self._weights[last], out=ws.z[last])
        loss = _native.nn_output_layer(
            self._loss,
            act,
            alpha,
            ws.z[last],
            self._biases[last],
            y,
            w,
            ws.a[last],
            ws.dz_out,
            self._bias_grads[last],
            1.0 / divisor if divisor > 0 else 0.0,
        )
        self._backward(inputs, ws)
        return (loss / divisor if divisor > 0 else 0.0) + self._l2_penalty()

    def _divergence(
        self,
        batch: DataSet | MultiDataSet,
        score: float,
        bad: int,
        rows: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    ) -> Exception:
        """The error for a step whose score or gradient is not finite: the minibatch's fault
        when it holds NaN or infinity (or values beyond this network's dtype), else divergence."""
        where = f"iteration {self.iteration}"
        option = "fit(..., non_finite='skip')"
        detail = non_finite_in(batch)
        if detail is not None:
            return non_finite_data(where, detail, option)
        for name, array in zip(("features", "labels", "labels mask"), rows, strict=True):
            index = first_non_finite(array) if array is not None else -1
            if index >= 0:
                row, column = divmod(index, array.shape[1]) if array.ndim == 2 else (index, 0)
                detail = (
                    f"{name} hold values beyond {self.dtype.name}'s range: "
                    f"{value_at(array, index)} after conversion at row {row}, column {column}"
                )
                return non_finite_data(where, detail, option)
        if bad >= 0:
            grads = self.gradients()
            detail = f"the gradient holds {value_at(grads, bad)} at {self._describe_param(bad)}"
            if not math.isfinite(score):
                detail = f"the score is {score!r} and {detail}"
        else:
            detail = f"the score is {score!r}"
        return diverged(where, detail)

    def _describe_param(self, index: int) -> str:
        """Which weight or bias flat parameter ``index`` is, in words."""
        offset = 0
        for i, layer in enumerate(self.layers):
            size = layer.n_in * layer.n_out
            if index < offset + size:
                row, column = divmod(index - offset, layer.n_out)
                return f"parameter {index} (layer {i}'s weights, row {row}, column {column})"
            offset += size
            if index < offset + layer.n_out:
                return f"parameter {index} (layer {i}'s bias, column {index - offset})"
            offset += layer.n_out
        return f"parameter {index}"

    def fit(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        epochs: int = 1,
        *,
        batch_size: int | None = None,
        non_finite: str = "raise",
    ) -> Network:
        """Fit ``epochs`` passes over ``data``: one DataSet (one minibatch, or split into
        ``batch_size`` pieces) or an iterable of minibatches (e.g. a FileDataSetIterator).

        A minibatch holding NaN or infinity (features, labels or masks) raises
        :class:`~sparkbatch.errors.NonFiniteError` naming its position, or with
        ``non_finite="skip"`` is skipped and counted in :attr:`skipped_minibatches`. A step
        whose score or gradient is not finite raises
        :class:`~sparkbatch.errors.DivergenceError` naming the epoch, the minibatch and the
        iteration; the parameters are then those of before that step.

        Returns the network, so that calls chain.
        """
        epochs = check_int("epochs", epochs)
        batch_size = check_optional_int("batch_size", batch_size)
        mode = check_mode(non_finite)
        if epochs > 1 and isinstance(data, Iterator):
            raise ValueError(
                "an iterator can be read only once; pass a re-iterable source (a list, a "
                "FileDataSetIterator) to fit more than one epoch"
            )
        # One errstate for the whole fit: _fit_step checks (and names) what overflows.
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(epochs):
                self._fit_epoch(data, batch_size, mode)
        return self

    def _fit_epoch(self, data: Any, batch_size: int | None, mode: str) -> None:
        """One epoch of :meth:`fit`, under its ``np.errstate``."""
        fitted = skipped = 0
        for i, batch in enumerate(_batches(data, batch_size)):
            detail = non_finite_in(batch)
            try:
                if detail is not None:
                    where = f"epoch {self.epoch}, minibatch {i}"
                    raise non_finite_data(where, detail, "fit(..., non_finite='skip')")
                self._fit_step(batch)  # raises before its update, if at all
            except NonFiniteError as e:
                if mode == "raise":
                    if detail is None:  # _fit_step's: values beyond the network's dtype
                        where = f"epoch {self.epoch}, minibatch {i}, iteration {self.iteration}"
                        raise with_context(e, where) from None
                    raise
                skipped += 1
                log.info("epoch %d, minibatch %d: skipped: %s", self.epoch, i, e)
                continue
            except DivergenceError as e:
                where = f"epoch {self.epoch}, minibatch {i}, iteration {self.iteration}"
                raise with_context(e, where) from None
            fitted += 1
        self.skipped_minibatches += skipped
        if fitted == 0:
            if skipped:
                raise NonFiniteError(
                    f"epoch {self.epoch}: all {skipped} minibatches hold NaN or infinity "
                    "and were skipped: nothing to fit"
                )
            raise ValueError("fit() got no minibatches: the data is empty")
        self._check_params(f"epoch {self.epoch}, after its last minibatch")
        self.epoch += 1

    def _check_params(self, where: str) -> None:
        """DivergenceError unless every parameter is finite (an update can overflow them)."""
        check_params(
            self.params(),
            f"{where} (iteration {self.iteration})",
            "the parameters hold",
            "the model's parameters are as that update left them",
            self._describe_param,
        )

    # -- inference ---------------------------------------------------------------------------

    def output(self, features: Any, *, batch_size: int | None = None) -> np.ndarray:
        """The output layer's activations for ``features`` ``[n, n_in]`` (or ``[n, n_in, t]``).

        Returns a new array ``[n, n_out]`` (``[n, n_out, t]`` for sequences).
        """
        step = check_optional_int("batch_size", batch_size) or _INFERENCE_ROWS
        x = np.asarray(features)
        sequence = x.ndim == 3
        rows = _rows(x, "features", self.num_inputs, self.dtype)
        out = np.empty((rows.shape[0], self.num_outputs), self.dtype)
        for begin in range(0, rows.shape[0], step):
            chunk = rows[begin : begin + step]
            if self._gpu is not None:
                self._gpu.infer(chunk, out=out[begin : begin + len(chunk)])
            else:
                out[begin : begin + len(chunk)] = self._infer(chunk)[1]
        return _unrows(out, x.shape) if sequence else out

    def score(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        *,
        batch_size: int | None = None,
    ) -> float:
        """Mean loss over every example (every unmasked step) of ``data``, plus the L2 penalty."""
        total, weight = 0.0, 0.0
        for batch in _batches(data, batch_size):
            x, y, w = self._arrays(batch, labels_needed=True)
            for begin in range(0, x.shape[0], _INFERENCE_ROWS):
                end = begin + _INFERENCE_ROWS
                xs, ys, ws = x[begin:end], y[begin:end], None if w is None else w[begin:end]
                if self._gpu is not None:
                    total += self._gpu.score_sum(xs, ys, ws)
                else:
                    z, a = self._infer(xs)
                    act, _ = self._codes[-1]
                    total += _native.nn_loss_sum(self._loss, act, z, a, ys, ws)
                weight += xs.shape[0] if ws is None else float(ws.sum())
        if weight == 0:
            raise ValueError("no examples to score")
        penalty = self._gpu.l2_penalty() if self._gpu is not None else self._l2_penalty()
        return total / weight + penalty

    def evaluate(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        *,
        top_n: int = 1,
        labels: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> Evaluation:
        """Classification figures over ``data`` (accuracy, precision, recall, F1, confusion)."""
        evaluation = Evaluation(self.num_outputs, labels=labels, top_n=top_n)
        for batch in _batches(data, batch_size):
            ds = _as_dataset(batch)
            evaluation.eval(ds.labels, self.output(ds.features), ds.labels_mask)
        return evaluation

    def evaluate_regression(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        *,
        column_names: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> RegressionEvaluation:
        """Regression figures per output column over ``data`` (MSE, MAE, RMSE, R²)."""
        evaluation = RegressionEvaluation(self.num_outputs, column_names=column_names)
        for batch in _batches(data, batch_size):
            ds = _as_dataset(batch)
            evaluation.eval(ds.labels, self.output(ds.features), ds.labels_mask)
        return evaluation

    # -- configuration and files -----------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """The architecture and training configuration as JSON-able data (no parameters)."""
        return {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "layers": [layer.to_config() for layer in self.layers],
            "updater": self.updater.to_config(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str) -> Network:
        """A freshly initialised network as ``config`` (a dict or its JSON) describes it."""
        if isinstance(config, str):
            config = json.loads(config)
        if config.get("format") != CONFIG_FORMAT:
            raise ValueError(
                f"not a {CONFIG_FORMAT} configuration: format={config.get('format')!r}"
            )
        if config.get("version") != CONFIG_VERSION:
            raise ValueError(
                f"network configuration version {config.get('version')}; this sparkbatch reads "
                f"version {CONFIG_VERSION}"
            )
        return cls(
            [layer_from_config(layer) for layer in config["layers"]],
            updater_from_config(config["updater"]),
            seed=config.get("seed", 0),
            dtype=config.get("dtype", "float32"),
        )

    def clone(self) -> Network:
        """An independent copy on the CPU: configuration, parameters, updater state, counters."""
        twin = Network.from_config(self.to_config())
        twin._copy_state_from(self)
        return twin

    def save(self, target: Any, *, storage_options: Mapping[str, Any] | None = None) -> None:
        """Write configuration, parameters and updater state as one safetensors file, atomically."""
        self._sync_host()
        metadata = {
            "kind": "Network",
            "config": self.to_json(),
            "iteration": str(self.iteration),
            "epoch": str(self.epoch),
            "updater_steps": str(self.updater_steps),
        }
        tensors = {"params": self._params}
        if self._state.size:
            tensors["updater_state"] = self._state
        save_tensors(tensors, target, metadata, storage_options=storage_options)

    @classmethod
    def load(cls, source: Any, *, storage_options: Mapping[str, Any] | None = None) -> Network:
        """Read a network written by :meth:`save` (local path, fsspec URL or file object)."""
        arrays, metadata = load_tensors(source, storage_options=storage_options)
        name = source if isinstance(source, str) else getattr(source, "name", repr(source))
        if metadata.get("kind") != "Network" or "params" not in arrays:
            raise FormatError(
                f"{name}: not a sparkbatch network file (kind={metadata.get('kind')!r})"
            )
        net = cls.from_config(metadata["config"])
        if arrays["params"].size != net.num_params:
            raise FormatError(
                f"{name}: holds {arrays['params'].size} parameters but its configuration needs "
                f"{net.num_params}"
            )
        net.set_params(arrays["params"])
        if net._state.size:
            net.set_updater_state(arrays.get("updater_state", np.zeros(0)))
        net.iteration = int(metadata.get("iteration", 0))
        net.epoch = int(metadata.get("epoch", 0))
        net.updater_steps = int(metadata.get("updater_steps", net.iteration))
        return net

    def __getstate__(self) -> dict[str, Any]:
        # A pickled network is a CPU network: the machine that unpickles it may have no GPU.
        self._sync_host()
        return {
            "config": self.to_config(),
            "params": self._params,
            "state": self._state,
            "iteration": self.iteration,
            "epoch": self.epoch,
            "updater_steps": self.updater_steps,
            "dropout_stream": self.dropout_stream,
            "last_score": self.last_score,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(Network.from_config(state["config"]).__dict__)
        self._params[...] = state["params"]
        self._state[...] = state["state"]
        self.iteration, self.epoch = state["iteration"], state["epoch"]
        self.updater_steps = state.get("updater_steps", self.iteration)
        self.dropout_stream = state.get("dropout_stream", 0)
        self.last_score = state["last_score"]

    def __repr__(self) -> str:
        sizes = [self.layers[0].n_in] + [layer.n_out for layer in self.layers]
        return (
            f"Network({'-'.join(map(str, sizes))}, {self.num_params} params, "
            f"{type(self.updater).__name__}, {self.dtype.name})"
        )

    # -- internals ---------------------------------------------------------------------------

    def _copy_state_from(self, other: Network) -> None:
        other._sync_host()
        self.set_params(other._params)
        self.set_updater_state(other._state)
        self.iteration, self.epoch, self.last_score = other.iteration, other.epoch, other.last_score
        self.updater_steps, self.dropout_stream = other.updater_steps, other.dropout_stream

    def _workspace(self, rows: int) -> _Workspace:
        ws = self._workspaces.get(rows)
        if ws is None:
            ws = self._workspaces[rows] = _Workspace(self.layers, rows, self.dtype)
            while len(self._workspaces) > _WORKSPACES_KEPT:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(rows)
        return ws

    def _forward(self, x: np.ndarray, ws: _Workspace, training: bool) -> list[np.ndarray]:
        """Run the hidden layers; returns the input of every layer (after its dropout)."""
        inputs = []
        current = x
        for i, layer in enumerate(self.layers):
            if training and layer.dropout > 0:
                dropped = ws.dropped[i]
                np.copyto(dropped, current)
                _native.nn_dropout(dropped, layer.dropout, self._dropout_seed(i))
                current = dropped
            inputs.append(current)
            if i == len(self.layers) - 1:
                break
            z = ws.z[i]
            np.matmul(current, self._weights[i], out=z)
            act, alpha = self._codes[i]
            _native.nn_bias_activation(z, self._biases[i], ws.a[i], act, alpha)
            current = ws.a[i]
        return inputs

    def _backward(self, inputs: list[np.ndarray], ws: _Workspace) -> None:
        dz = ws.dz_out
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            np.matmul(inputs[i].T, dz, out=self._weight_grads[i])
            if layer.l2 > 0:
                _native.nn_axpy(self._weight_grads[i], self._weights[i], layer.l2)
            if i == 0:
                break
            d_input = ws.d_input[i]
            np.matmul(dz, self._weights[i].T, out=d_input)
            if layer.dropout > 0:  # the same mask as forward, recomputed from the seed
                _native.nn_dropout(d_input, layer.dropout, self._dropout_seed(i))
            below = self.layers[i - 1]
            act, alpha = self._codes[i - 1]
            z = ws.z[i - 1] if needs_preactivation(below.activation) else None
            _native.nn_activation_backward(
                d_input, z, ws.a[i - 1], d_input, self._bias_grads[i - 1], act, alpha
            )
            dz = d_input

    def _infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward without dropout; returns the output layer's (pre-activation, activation)."""
        ws = self._workspace(x.shape[0])
        inputs = self._forward(x, ws, training=False)
        last = len(self.layers) - 1
        np.matmul(inputs[last], self._weights[last], out=ws.z[last])
        act, alpha = self._codes[last]
        _native.nn_bias_activation(ws.z[last], self._biases[last], ws.a[last], act, alpha)
        return ws.z[last], ws.a[last]

    def _dropout_seed(self, layer: int) -> int:
        stream = self.dropout_stream * 0x9E3779B97F4A7C15
        return (
            ((self.seed * 0x100000001B3 + self.iteration) * 1_000_003 + layer) ^ stream
        ) & _MASK64

    def _l2_penalty(self) -> float:
        penalty = 0.0
        for layer, weights in zip(self.layers, self._weights, strict=True):
            if layer.l2 > 0:
                flat = weights.reshape(-1)
                penalty += 0.5 * layer.l2 * float(np.dot(flat, flat))
        return penalty

    def _arrays(
        self, batch: DataSet | MultiDataSet, labels_needed: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Features and labels as rows of this network's dtype, and the per-row loss weights."""
        ds = _as_dataset(batch)
        x = _rows(ds.features, "features", self.num_inputs, self.dtype)
        if ds.labels is None:
            raise ValueError("the minibatch has no labels to fit or score against")
        y = _rows(ds.labels, "labels", self.num_outputs, self.dtype)
        w = None
        if ds.labels_mask is not None:
            w = np.ascontiguousarray(ds.labels_mask, dtype=self.dtype).reshape(-1)
        return x, y, w


def _check_layers(layers: Sequence[Dense | Output]) -> None:
    if not layers or not isinstance(layers[-1], Output):
        raise ValueError("a Network needs at least an Output layer, and it must come last")
    for i, layer in enumerate(layers[:-1]):
        if not isinstance(layer, Dense):
            raise TypeError(f"layer {i} is a {type(layer).__name__}; only the last may be Output")
    for i in range(len(layers) - 1):
        if layers[i].n_out != layers[i + 1].n_in:
            raise ValueError(
                f"layer {i} has n_out={layers[i].n_out} but layer {i + 1} has "
                f"n_in={layers[i + 1].n_in}"
            )


def _views(
    buffer: np.ndarray, layers: Sequence[Dense | Output]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer, the W ``[n_in, n_out]`` and b ``[n_out]`` views of a flat buffer."""
    weights, biases = [], []
    offset = 0
    for layer in layers:
        size = layer.n_in * layer.n_out
        weights.append(buffer[offset : offset + size].reshape(layer.n_in, layer.n_out))
        offset += size
        biases.append(buffer[offset : offset + layer.n_out])
        offset += layer.n_out
    return weights, biases


def _flat(values: Any, size: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size != size:
        raise ValueError(f"{what} must hold {size} values, got {array.size} (shape {array.shape})")
    return array.reshape(-1)


def _as_dataset(batch: DataSet | MultiDataSet) -> DataSet:
    if isinstance(batch, DataSet):
        return batch
    if isinstance(batch, MultiDataSet):
        try:
            return batch.to_dataset()
        except ValueError as e:
            raise ValueError(f"the built-in network has one input and one output: {e}") from None
    raise TypeError(f"expected a DataSet or MultiDataSet minibatch, got {type(batch).__name__}")


def _rows(array: Any, name: str, width: int, dtype: np.dtype) -> np.ndarray:
    """``[n, width]`` stays; a sequence ``[n, width, t]`` becomes rows ``[n * t, width]``."""
    array = np.asarray(array)
    if array.ndim not in (2, 3) or array.shape[1] != width:
        raise ValueError(
            f"{name} must have shape [n, {width}] (or [n, {width}, t] for sequences) for this "
            f"network, got {array.shape}"
        )
    if array.ndim == 3:
        array = array.transpose(0, 2, 1).reshape(-1, width)
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    with np.errstate(over="ignore"):  # values beyond dtype's range become inf: fit names them
        return np.ascontiguousarray(array, dtype=dtype)


def _unrows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_rows` for outputs: ``[n * t, k]`` back to ``[n, k, t]``."""
    n, _, t = shape
    return np.ascontiguousarray(rows.reshape(n, t, -1).transpose(0, 2, 1))


def _batches(
    data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet], batch_size: int | None
) -> Iterator[DataSet | MultiDataSet]:
    """The minibatches of ``data``, split to ``batch_size`` examples (checked here, at the
    call; the splitting itself is lazy)."""
    check_optional_int("batch_size", batch_size)
    return _split_batches(data, batch_size)


def _split_batches(
    data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet], batch_size: int | None
) -> Iterator[DataSet | MultiDataSet]:
    if isinstance(data, (DataSet, MultiDataSet)):
        if batch_size is None:
            yield data
        else:
            yield from data.split(batch_size)
        return
    for batch in data:
        if batch_size is not None and isinstance(batch, (DataSet, MultiDataSet)):
            yield from batch.split(batch_size)
        else:
            yield batch
