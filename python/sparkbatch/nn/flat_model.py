"""What ``Network`` and ``Graph`` share: a model on one flat parameter buffer, trained by an
:class:`~sparkbatch.nn.engine.Engine` on a backend.

:class:`FlatModel` implements the ``Model`` protocol of :mod:`sparkbatch.train` once: the
parameters, gradients and updater state as flat buffers, the counters, ``fit_batch`` with its
checks for non-finite values, ``fit``, ``score``, moving between devices, files and pickling.
A subclass says how a minibatch becomes rows for its inputs and outputs (:meth:`_batch_rows`),
and what its configuration is.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

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
from ..data.preprocessors import from_file_entries, to_file_entries
from ..errors import DivergenceError, FormatError, NonFiniteError
from .backend import make_backend
from .engine import Engine, Steps, Topology, params_by_node
from .updaters import Adam, Updater

__all__ = ["FlatModel"]

INFERENCE_ROWS = 4096  # rows per forward pass of output() and score() when none is given
#: The most values a default inference pass's work arrays hold (256 MiB in float32): a
#: convolution's work per example is its positions times its channels, and 4096 examples of a
#: small CNN on 32x32 images would need several GiB.
INFERENCE_WORK = 1 << 26

log = logging.getLogger("sparkbatch.nn")

#: Per input its rows, per output its label rows and None or its per-row loss weights, and the
#: minibatch's layout (None: every input one row per example).
Rows = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None], Steps | None]


class FlatModel:
    """Base of the built-in models; see :class:`~sparkbatch.nn.Network` for the API."""

    #: ``kind`` in saved files and ``format`` in configurations.
    KIND: ClassVar[str] = ""
    CONFIG_FORMAT: ClassVar[str] = ""
    CONFIG_VERSION: ClassVar[int] = 1

    def _setup(
        self,
        topology: Topology,
        updater: Updater | None,
        seed: int,
        dtype: str | np.dtype,
        device: str | int,
    ) -> None:
        """Counters, initial parameters (from ``seed``) and the engine on ``device``."""
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
        #: infinity, over the model's life in this process.
        self.skipped_minibatches = 0
        #: The fitted normalizer (or other preprocessor) the model's inputs need, kept with it:
        #: :meth:`save` stores a Standardize or MinMaxScale in the model's file and :meth:`load`
        #: restores it (``sparkbatch.data.load_preprocessor`` reads it alone). Not applied by
        #: the model itself: pass it as ``preprocessor=`` to loaders, iterators and training.
        self.preprocessor: Any = None
        self._topology = topology
        params = np.zeros(topology.num_params, self.dtype)
        rng = np.random.default_rng(self.seed)
        host_views = params_by_node(topology, params)
        for node in topology.layers:
            node.op.init_params(rng, host_views[topology.nodes.index(node)])
        state = np.zeros(self.updater.state_per_param * topology.num_params, self.dtype)
        self._engine = Engine(topology, make_backend(device, self.dtype), params, state)

    # -- device ------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        """Where the parameters live and the arithmetic runs: ``"cpu"`` or ``"cuda:N"``."""
        return self._engine.backend.device

    def to(self, device: str | int) -> Any:
        """Move the model to ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (in place); returns it.

        Parameters and updater state move with it, so outputs and training continue
        unchanged. Raises :class:`~sparkbatch.nn.gpu.CudaUnavailableError` saying why when no
        usable GPU is there.
        """
        backend = make_backend(device, self.dtype) if device != self.device else None
        if backend is not None and backend.device != self.device:
            old = self._engine
            self._engine = Engine(
                self._topology,
                backend,
                old.backend.to_host(old.params),
                old.backend.to_host(old.state),
            )
        return self

    # -- parameters ----------------------------------------------------------------------------

    @property
    def num_params(self) -> int:
        """Number of parameters (weights and biases of every layer)."""
        return self._topology.num_params

    def params(self) -> np.ndarray:
        """The flat parameter buffer itself (no copy): writing to it changes the model.

        On a GPU model, a host copy (change parameters there with :meth:`set_params`).
        """
        return self._host(self._engine.params)

    def device_params(self) -> Any:
        """The parameter buffer where it lives, without a copy: the numpy array on the CPU, a
        ``sparkbatch._cuda.DeviceBuffer`` on a GPU, which exposes ``__dlpack__`` and
        ``__cuda_array_interface__`` so that PyTorch or CuPy can use the same device memory
        (e.g. ``torch.from_dlpack(net.device_params())``)."""
        return self._engine.params

    def set_params(self, values: Any) -> None:
        """Copy ``values`` (``num_params`` numbers) into the parameter buffer."""
        self._engine.backend.upload(self._engine.params, _flat(values, self.num_params, "params"))

    def gradients(self) -> np.ndarray:
        """The flat gradient buffer of the last :meth:`fit_batch` (no copy; a copy on a GPU)."""
        return self._host(self._engine.grads)

    def updater_state(self) -> np.ndarray:
        """The flat updater state (``state_per_param * num_params`` values; no copy, a copy on
        a GPU model)."""
        return self._host(self._engine.state)

    def set_updater_state(self, values: Any) -> None:
        """Copy ``values`` into the updater state buffer."""
        state = self._engine.state
        self._engine.backend.upload(state, _flat(values, state.size, "updater state"))

    def use_buffers(self, params: np.ndarray, state: np.ndarray | None = None) -> None:
        """Keep the parameters (and the updater state) in the given flat host arrays from now
        on, their current values copied in: a parameter-averaging worker hands the driver its
        parameters in shared memory this way, without a copy per round. CPU models only."""
        if self.device != "cpu":
            raise ValueError("a GPU model's parameters live on the GPU")
        self._engine.use_buffers(params, state)

    def reset_updater(self) -> None:
        """Zero the updater state (velocities, Adam's moments) as a fresh updater has it."""
        self._engine.backend.zero(self._engine.state)
        self.updater_steps = 0

    def _host(self, array: Any) -> np.ndarray:
        """``array`` itself on the CPU, a host copy of it on a device."""
        return array if self.device == "cpu" else self._engine.backend.to_host(array)

    # -- training ------------------------------------------------------------------------------

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
        return self._step(self._batch_rows(batch), batch)

    def fit_arrays(
        self,
        features: Sequence[Any],
        labels: Sequence[Any],
        weights: Sequence[np.ndarray | None] | None = None,
    ) -> float:
        """One step on a minibatch given as rows: per input ``[rows, width]``, per output
        ``[rows, width]`` labels, of this model's dtype, C-contiguous; ``weights`` per output
        None or the host array of per-row loss weights. Arrays of the model's device (a
        ``DeviceBuffer`` on a GPU) are used in place, so data kept on the GPU is not copied.
        Returns the score before the step; the checks of :meth:`fit_batch` on the score and the
        gradient hold."""
        weights = list(weights) if weights is not None else [None] * len(labels)
        with np.errstate(over="ignore", invalid="ignore"):
            return self._step((list(features), list(labels), weights, None), None)

    def _step(self, rows: Rows, batch: Any) -> float:
        """Gradients, their checks and the update, for :meth:`_batch_rows`' rows of ``batch``."""
        engine = self._engine
        score = self._gradients(rows)  # overflow is checked below, and named
        bad = -1 if engine.backend.all_finite(engine.grads) else first_non_finite(self.gradients())
        if bad >= 0 or not math.isfinite(score):
            raise self._divergence(batch, score, bad, rows)
        steps = self.updater_steps
        engine.update(self.updater.code, self.updater.hyper(self.iteration, self.epoch, steps))
        self.iteration += 1
        self.updater_steps += 1
        self.last_score = score
        return score

    def compute_gradients(self, batch: DataSet | MultiDataSet) -> float:
        """Fill :meth:`gradients` for one minibatch without stepping; returns the score.

        The score is the mean loss per example (per unmasked step for sequences), summed over
        the outputs, plus the L2 penalty, and the gradients are its derivatives (DL4J's
        ``computeGradientAndScore``).
        """
        return self._gradients(self._batch_rows(batch))

    def _gradients(self, rows: Rows) -> float:
        xs, ys, ws, steps = rows
        if xs[0].shape[0] == 0:
            raise ValueError("cannot fit an empty minibatch")
        engine = self._engine
        seeds = engine.seeds(self.seed, self.iteration, self.dropout_stream)
        return engine.compute_gradients(xs, ys, ws, seeds, steps)

    def _divergence(self, batch: Any, score: float, bad: int, rows: Rows) -> Exception:
        """The error for a step whose score or gradient is not finite: the minibatch's fault
        when it holds NaN or infinity (or values beyond this model's dtype), else divergence."""
        where = f"iteration {self.iteration}"
        option = "fit(..., non_finite='skip')"
        detail = None if batch is None else non_finite_in(batch)
        if detail is not None:
            return non_finite_data(where, detail, option)
        for name, arrays in zip(("features", "labels", "labels mask"), rows[:3], strict=True):
            for k, array in enumerate(arrays):
                index = first_non_finite(array) if isinstance(array, np.ndarray) else -1
                if index < 0:
                    continue
                row, column = divmod(index, array.shape[1]) if array.ndim == 2 else (index, 0)
                label = name if len(arrays) == 1 else f"{name}[{k}]"
                detail = (
                    f"{label} hold values beyond {self.dtype.name}'s range: "
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
        return self._topology.describe_param(index)

    def fit(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        epochs: int = 1,
        *,
        batch_size: int | None = None,
        non_finite: str = "raise",
    ) -> Any:
        """Fit ``epochs`` passes over ``data``: one minibatch (or one split into
        ``batch_size`` pieces) or an iterable of minibatches (e.g. a FileDataSetIterator).

        A minibatch holding NaN or infinity (features, labels or masks) raises
        :class:`~sparkbatch.errors.NonFiniteError` naming its position, or with
        ``non_finite="skip"`` is skipped and counted in :attr:`skipped_minibatches`. A step
        whose score or gradient is not finite raises
        :class:`~sparkbatch.errors.DivergenceError` naming the epoch, the minibatch and the
        iteration; the parameters are then those of before that step.

        Returns the model, so that calls chain.
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
        for i, batch in enumerate(batches(data, batch_size)):
            detail = non_finite_in(batch)
            try:
                if detail is not None:
                    where = f"epoch {self.epoch}, minibatch {i}"
                    raise non_finite_data(where, detail, "fit(..., non_finite='skip')")
                self._fit_step(batch)  # raises before its update, if at all
            except NonFiniteError as e:
                if mode == "raise":
                    if detail is None:  # _fit_step's: values beyond the model's dtype
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

    # -- inference -----------------------------------------------------------------------------

    def _inference_rows(self) -> int:
        """Rows per inference pass when none is given: :data:`INFERENCE_ROWS`, fewer where the
        row-wise layers' work arrays per example are so large that a pass would hold more
        than :data:`INFERENCE_WORK` values (as convolutions' are)."""
        per_example = sum(
            math.prod(shape)
            for node in self._topology.nodes
            if node.is_layer and node.op.time == "rows"
            for shape in node.op.work_shapes(1).values()
            if isinstance(shape, tuple)
        )
        return max(1, min(INFERENCE_ROWS, INFERENCE_WORK // max(1, per_example)))

    def _outputs(self, xs: list[np.ndarray], steps: Steps | None, step: int) -> list[np.ndarray]:
        """Every output's activations for input rows ``xs`` laid out as ``steps``, about
        ``step`` rows (whole examples) per pass."""
        engine = self._engine
        if steps is None:
            steps = Steps.rows_only(xs[0].shape[0], len(xs))
        sequential = engine.output_sequences(steps)
        outs = [
            np.empty((steps.rows(seq), engine.topology.nodes[i].width), self.dtype)
            for i, seq in zip(engine.topology.outputs, sequential, strict=True)
        ]
        for begin, end in example_chunks(steps, step):
            part = steps.part(begin, end)
            chunk = slice_examples(xs, steps.sequences, steps.t, begin, end)
            for out, result, seq in zip(outs, engine.infer(chunk, part), sequential, strict=True):
                rows = slice(begin * steps.t, end * steps.t) if seq else slice(begin, end)
                engine.backend.to_host(result, out[rows])
        return outs

    def _evaluated(
        self, evaluation: Any, data: Any, batch_size: int | None, output_index: int
    ) -> Any:
        """``evaluation`` (an Evaluation or RegressionEvaluation) fed with output
        ``output_index``'s labels, predictions and labels mask over every minibatch of
        ``data``."""
        for batch in batches(data, batch_size):
            labels, predicted, mask = self._labelled_output(batch, output_index)
            evaluation.eval(labels, predicted, mask)
        return evaluation

    def _labelled_output(self, batch: Any, output_index: int) -> tuple[Any, np.ndarray, Any]:
        """Output ``output_index``'s labels, predictions and labels mask for one minibatch."""
        raise NotImplementedError

    def _labels_mask(
        self, k: int, labels_mask: Any, features_masks: Sequence[Any], labels: Any = None
    ) -> Any:
        """Output ``k``'s labels mask, or where it has none and the output is an
        :class:`~sparkbatch.nn.RnnOutput`, the features mask of the input its sequence comes
        from: a padded step then adds nothing to the loss (DL4J uses the features mask so too).
        A row-wise ``Output`` on sequences keeps weighing every step without a labels mask.
        For an output of one row per example after :class:`~sparkbatch.nn.LastTimeStep` with
        many-to-one labels ``[n, k, t]`` (``labels``), the features mask of the sequence that
        LastTimeStep read: each example's label is then that of its last real step, not of
        step ``t - 1`` (padding under align_start)."""
        if labels_mask is not None:
            return labels_mask
        topology = self._topology
        node = topology.nodes[topology.outputs[k]]
        if node.op.time != "sequence":
            source = topology.last_step_source[node.slot]
            if source < 0 or labels is None or np.ndim(labels) != 3:
                return None
            return features_masks[source]
        source = topology.mask_source[node.slot]
        return features_masks[source] if source >= 0 else None

    def labelled_output(
        self, batch: DataSet | MultiDataSet, output_index: int = 0
    ) -> tuple[Any, np.ndarray, Any]:
        """The labels, predictions and labels mask of output ``output_index`` for one
        minibatch, as :meth:`evaluate` compares them: the predictions read the features masks
        (recurrent layers need them), and many-to-one labels ``[n, k, t]`` of an output that
        gives one row per example become those of each example's last real step. Distributed
        evaluation (``sparkbatch.train``) calls it."""
        return self._labelled_output(batch, output_index)

    def score_parts(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        *,
        batch_size: int | None = None,
    ) -> tuple[list[float], list[float], float]:
        """What :meth:`score` is made of: per output, the sum of the (weighted) loss terms over
        ``data`` and the weight they sum over (examples, or unmasked steps), and the L2 penalty.

        ``score(data)`` is ``sum(loss / weight) + penalty``; the losses and weights of pieces of
        data add up, so that distributed scoring merges them exactly.
        """
        n_out = len(self._topology.outputs)
        totals, weights = [0.0] * n_out, [0.0] * n_out
        for batch in batches(data, batch_size):
            xs, ys, ws, steps = self._batch_rows(batch)
            if steps is None:
                steps = Steps.rows_only(xs[0].shape[0], len(xs))
            sequential = self._engine.output_sequences(steps)
            for begin, end in example_chunks(steps, self._inference_rows()):
                label_rows = [
                    slice(begin * steps.t, end * steps.t) if seq else slice(begin, end)
                    for seq in sequential
                ]
                part = [None if w is None else w[r] for w, r in zip(ws, label_rows, strict=True)]
                sums = self._engine.loss_sums(
                    slice_examples(xs, steps.sequences, steps.t, begin, end),
                    [y[r] for y, r in zip(ys, label_rows, strict=True)],
                    part,
                    steps.part(begin, end),
                )
                for k, (total, w) in enumerate(zip(sums, part, strict=True)):
                    totals[k] += total
                    weights[k] += ys[k][label_rows[k]].shape[0] if w is None else float(w.sum())
        return totals, weights, self._engine.l2_penalty()

    def score(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        *,
        batch_size: int | None = None,
    ) -> float:
        """Mean loss over every example (every unmasked step) of ``data``, summed over the
        outputs, plus the L2 penalty."""
        totals, weights, penalty = self.score_parts(data, batch_size=batch_size)
        if any(weight == 0 for weight in weights):
            raise ValueError("no examples to score")
        return sum(total / weight for total, weight in zip(totals, weights, strict=True)) + penalty

    # -- configuration and files ---------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """The architecture and training configuration as JSON-able data (no parameters)."""
        raise NotImplementedError

    @classmethod
    def _from_checked_config(cls, config: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str) -> Any:
        """A freshly initialised model as ``config`` (a dict or its JSON) describes it."""
        if isinstance(config, str):
            config = json.loads(config)
        if config.get("format") != cls.CONFIG_FORMAT:
            raise ValueError(
                f"not a {cls.CONFIG_FORMAT} configuration: format={config.get('format')!r}"
            )
        if config.get("version") != cls.CONFIG_VERSION:
            raise ValueError(
                f"{cls.KIND.lower()} configuration version {config.get('version')}; this "
                f"sparkbatch reads version {cls.CONFIG_VERSION}"
            )
        return cls._from_checked_config(config)

    def clone(self) -> Any:
        """An independent copy on the CPU: configuration, parameters, updater state, counters."""
        twin = type(self).from_config(self.to_config())
        twin._copy_state_from(self)
        twin.preprocessor = copy.deepcopy(self.preprocessor)
        return twin

    def save(
        self,
        target: Any,
        *,
        storage_options: Mapping[str, Any] | None = None,
        preprocessor: Any = None,
    ) -> None:
        """Write configuration, parameters and updater state as one safetensors file, atomically.

        ``preprocessor`` (default: :attr:`preprocessor`), a fitted
        :class:`~sparkbatch.data.Standardize` or :class:`~sparkbatch.data.MinMaxScale`, is
        stored in the same file (tensors ``preprocessor.*``) and restored by :meth:`load`; any
        other preprocessor is a TypeError, since a file can restore only those.
        """
        metadata = {
            "kind": self.KIND,
            "config": self.to_json(),
            "iteration": str(self.iteration),
            "epoch": str(self.epoch),
            "updater_steps": str(self.updater_steps),
        }
        tensors = {"params": self.params()}
        state = self.updater_state()
        if state.size:
            tensors["updater_state"] = state
        if preprocessor is None:
            preprocessor = self.preprocessor
        if preprocessor is not None:
            extra_metadata, extra_tensors = to_file_entries(preprocessor)
            metadata.update(extra_metadata)
            tensors.update(extra_tensors)
        save_tensors(tensors, target, metadata, storage_options=storage_options)

    @classmethod
    def load(cls, source: Any, *, storage_options: Mapping[str, Any] | None = None) -> Any:
        """Read a model written by :meth:`save` (local path, fsspec URL or file object)."""
        arrays, metadata = load_tensors(source, storage_options=storage_options)
        name = source if isinstance(source, str) else getattr(source, "name", repr(source))
        if metadata.get("kind") != cls.KIND or "params" not in arrays:
            raise FormatError(
                f"{name}: not a sparkbatch {cls.KIND.lower()} file (kind={metadata.get('kind')!r})"
            )
        model = cls.from_config(metadata["config"])
        if arrays["params"].size != model.num_params:
            raise FormatError(
                f"{name}: holds {arrays['params'].size} parameters but its configuration needs "
                f"{model.num_params}"
            )
        model.set_params(arrays["params"])
        if model.updater_state().size:
            model.set_updater_state(arrays.get("updater_state", np.zeros(0)))
        model.iteration = int(metadata.get("iteration", 0))
        model.epoch = int(metadata.get("epoch", 0))
        model.updater_steps = int(metadata.get("updater_steps", model.iteration))
        model.preprocessor = from_file_entries(metadata, arrays, str(name))
        return model

    def __getstate__(self) -> dict[str, Any]:
        # A pickled model is a CPU model: the machine that unpickles it may have no GPU.
        return {
            "config": self.to_config(),
            "params": self.params(),
            "state": self.updater_state(),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "updater_steps": self.updater_steps,
            "dropout_stream": self.dropout_stream,
            "last_score": self.last_score,
            "preprocessor": self.preprocessor,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(type(self).from_config(state["config"]).__dict__)
        self.set_params(state["params"])
        self.set_updater_state(state["state"])
        self.iteration, self.epoch = state["iteration"], state["epoch"]
        self.updater_steps = state.get("updater_steps", self.iteration)
        self.dropout_stream = state.get("dropout_stream", 0)
        self.last_score = state["last_score"]
        self.preprocessor = state.get("preprocessor")

    def _copy_state_from(self, other: FlatModel) -> None:
        self.set_params(other.params())
        self.set_updater_state(other.updater_state())
        self.iteration, self.epoch, self.last_score = other.iteration, other.epoch, other.last_score
        self.updater_steps, self.dropout_stream = other.updater_steps, other.dropout_stream

    # -- minibatches ---------------------------------------------------------------------------

    def _batch_rows(self, batch: DataSet | MultiDataSet) -> Rows:
        """Per input its rows, per output its label rows and None or its per-row loss weights,
        in this model's dtype, and the minibatch's layout (:class:`~sparkbatch.nn.engine.Steps`)."""
        raise NotImplementedError

    def _arrays(
        self, batch: DataSet | MultiDataSet
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
        """:meth:`_batch_rows` without the layout: what :meth:`fit_arrays` takes."""
        xs, ys, ws, _ = self._batch_rows(batch)
        return xs, ys, ws


def _flat(values: Any, size: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size != size:
        raise ValueError(f"{what} must hold {size} values, got {array.size} (shape {array.shape})")
    return array.reshape(-1)


def rows(array: Any, name: str, width: int, dtype: np.dtype, kind: str = "network") -> np.ndarray:
    """``[n, width]`` stays; a sequence ``[n, width, t]`` becomes rows ``[n * t, width]``."""
    array = np.asarray(array)
    if array.ndim not in (2, 3) or array.shape[1] != width:
        raise ValueError(
            f"{name} must have shape [n, {width}] (or [n, {width}, t] for sequences) for this "
            f"{kind}, got {array.shape}"
        )
    if array.ndim == 3:
        array = array.transpose(0, 2, 1).reshape(-1, width)
    if array.dtype == dtype:  # C-contiguous and aligned, as the native kernels read them
        return np.require(array, requirements="CA")
    with np.errstate(over="ignore"):  # values beyond dtype's range become inf: fit names them
        return np.ascontiguousarray(array, dtype=dtype)


def image_rows(
    array: Any,
    name: str,
    shape: tuple[int, int, int],
    dtype: np.dtype,
    kind: str = "network",
) -> np.ndarray:
    """Images ``[n, c, h, w]`` (NCHW) of ``shape`` ``(c, h, w)`` as rows ``[n, c * h * w]``
    (the same memory when contiguous), or rows ``[n, c * h * w]`` as they are. Any other shape
    is a ValueError saying the one expected (never reinterpreted)."""
    array = np.asarray(array)
    c, h, w = shape
    width = c * h * w
    if array.ndim == 4 and tuple(array.shape[1:]) == tuple(shape):
        array = array.reshape(array.shape[0], width)
    elif array.ndim != 2 or array.shape[1] != width:
        raise ValueError(
            f"{name} must have shape [n, {c}, {h}, {w}] (images, NCHW) or [n, {width}] (their "
            f"rows) for this {kind}, whose first layer takes {c}x{h}x{w} images; got "
            f"{array.shape}"
        )
    return rows(array, name, width, dtype, kind)


def unrows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`rows` for outputs: ``[n * t, k]`` back to ``[n, k, t]``."""
    n, _, t = shape
    return np.ascontiguousarray(rows.reshape(n, t, -1).transpose(0, 2, 1))


def sequence_steps(features: Sequence[np.ndarray], masks: Sequence[Any], dtype: np.dtype) -> Steps:
    """The layout of a minibatch whose inputs are ``features`` (``[n, w]`` or ``[n, w, t]``,
    as given) with features masks ``masks`` (None or ``[n, t]`` per input)."""
    n = int(np.shape(features[0])[0])
    lengths = {int(np.shape(x)[2]) for x in features if np.ndim(x) == 3}
    if len(lengths) > 1:
        raise ValueError(
            f"the sequence inputs have different numbers of time steps: {sorted(lengths)}"
        )
    t = lengths.pop() if lengths else 1
    sequences = tuple(np.ndim(x) == 3 for x in features)
    prepared = []
    for i, (x, mask) in enumerate(zip(features, masks, strict=True)):
        if mask is None or np.ndim(x) != 3:
            prepared.append(None)
            continue
        mask = np.asarray(mask)
        if mask.shape != (n, t):
            raise ValueError(f"features mask {i} must have shape [{n}, {t}], got {mask.shape}")
        prepared.append(np.ascontiguousarray(mask, dtype=dtype))
    return Steps(n, t, sequences, tuple(prepared))


def example_chunks(steps: Steps, rows: int) -> Iterator[tuple[int, int]]:
    """``[begin, end)`` ranges of whole examples of about ``rows`` rows each."""
    per = max(1, rows // steps.t) if any(steps.sequences) else rows
    for begin in range(0, steps.n, per):
        yield begin, min(steps.n, begin + per)


def slice_examples(
    arrays: Sequence[np.ndarray], sequences: Sequence[bool], t: int, begin: int, end: int
) -> list[np.ndarray]:
    """The rows of examples ``[begin, end)`` of each array (``t`` rows per example of a
    sequence)."""
    return [
        a[begin * t : end * t] if seq else a[begin:end]
        for a, seq in zip(arrays, sequences, strict=True)
    ]


def label_rows(
    labels: Any,
    mask: Any,
    name: str,
    width: int,
    dtype: np.dtype,
    sequence_output: bool,
    sequence_input: bool,
    kind: str = "network",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels as rows for an output that gives a row per time step (``sequence_output``) or one
    per example, and their per-row loss weights. Sequence labels ``[n, k, t]`` for an output of
    one row per example after a sequence input (many-to-one, e.g. after
    :class:`~sparkbatch.nn.LastTimeStep`) become each example's labels at its last step whose
    ``mask`` is 1 (the labels mask, else the features mask: ``FlatModel._labels_mask``; the last
    step without either); an example with no such step weighs 0."""
    labels = np.asarray(labels)
    if sequence_output or not sequence_input or labels.ndim != 3:
        return rows(labels, name, width, dtype, kind), row_weights(mask, dtype)
    n, _, t = labels.shape
    if mask is None:
        last = np.full(n, t - 1)
        weights = None
    else:
        real = np.asarray(mask).reshape(n, t) > 0
        last = t - 1 - np.argmax(real[:, ::-1], axis=1)
        found = real.any(axis=1)
        weights = None if found.all() else np.ascontiguousarray(found, dtype=dtype)
    picked = labels[np.arange(n), :, last]
    return rows(picked, name, width, dtype, kind), weights


def last_step_labels(
    labels: Any, mask: Any, predicted: np.ndarray, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """For evaluation: many-to-one labels ``[n, k, t]`` as each example's labels at its last
    real step (:func:`label_rows`), with ``predicted`` ``[n, k]``, both without the examples
    that have no real step."""
    width = predicted.shape[1]
    y, weights = label_rows(labels, mask, "labels", width, dtype, False, True)
    if weights is None:
        return y, predicted
    keep = weights > 0
    return y[keep], predicted[keep]


def row_weights(mask: Any, dtype: np.dtype) -> np.ndarray | None:
    """A labels mask as per-row loss weights (None stays None)."""
    if mask is None:
        return None
    return np.ascontiguousarray(mask, dtype=dtype).reshape(-1)


def batches(
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
