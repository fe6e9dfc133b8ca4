"""The ``Model`` protocol: what :class:`~sparkbatch.train.SparkNetwork` needs of a model, and
:class:`ModelAccess`, through which SparkNetwork and its workers use one.

Parameter averaging only needs a model's parameters and updater state as flat numpy buffers it
can broadcast, sum and average, a way to fit one minibatch, and a configuration from which an
executor builds an identical model. :class:`sparkbatch.nn.Network` and
:class:`sparkbatch.nn.Graph` implement it; any other model can, as long as it pickles by
reference (a class importable on the executors).

Required members (:class:`Model`): ``params()``, ``set_params(values)``, ``updater_state()``,
``set_updater_state(values)``, ``fit_batch(batch)``, ``output(features)``, ``score(batch)``,
``to_config()``, the class method ``from_config(config)``, and the integer attributes
``iteration`` and ``epoch``. Distributed evaluation of a minibatch with a features mask (padded
sequences) calls ``output(features, features_mask=mask)`` (with ``output_widths``:
``output(features, features_masks=[...])``), as :class:`sparkbatch.nn.Network` and
:class:`sparkbatch.nn.Graph` take them.

Optional members, and what happens without them (:class:`ModelAccess` applies the default):

``updater_steps`` (int attribute)
    Steps accumulated in the updater state since it was last zeroed (Adam's bias
    correction). Default: the model's ``iteration`` stands for it, and nothing else is kept.
``reset_updater()``
    Zero the updater state as a fresh updater has it (a round starts so without
    ``save_updater``). Default: ``set_updater_state`` with zeros of ``updater_state()``'s shape.
``dropout_stream`` (int attribute)
    Mixed into the model's random masks: each worker of a round sets its index, so that
    workers drop different inputs. Default: not set (workers draw as the model draws).
``device`` (str attribute)
    Where the parameters live: ``"cpu"`` or a GPU's name. Default: ``"cpu"``. Only a CPU
    model whose ``params()`` is its own memory (a view, not a copy) receives averages straight
    into its buffers; any other gets them through ``set_params``.
``to(device)``
    Move the model to ``"cuda"`` (``ParameterAveraging(worker_device=...)``). Default: the
    model stays on the CPU; ``worker_device="auto"`` keeps it there and ``"cuda"`` is refused.
``use_buffers(params, state)``
    Keep the parameters (and updater state) in the given flat host arrays from now on, their
    values copied in: ``exchange="socket"`` workers on one machine then hand their results
    over in shared memory without a copy per round. Default: not used; rounds copy.
``last_score`` (float attribute)
    Set on the driver's model to the mean minibatch score of every round. Default: not kept.
``num_outputs`` (int)
    The width of the model's output, for :meth:`SparkNetwork.evaluate`'s number of classes
    and regression columns. Default: unknown (taken from the labels).
``output_widths`` (list of int), ``score_parts(batch)`` and ``outputs`` (list of str)
    A model of several inputs and outputs (a :class:`~sparkbatch.nn.Graph`) lists its outputs'
    widths: its ``output`` then takes a list of features arrays and returns a list of outputs,
    and ``score_parts(batch)`` (then required) gives per output the loss sum and the weight it
    sums over, and the L2 penalty, so that scores merge exactly across partitions; ``outputs``
    names the outputs in error messages. Default: one input and one output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Model", "ModelAccess", "REQUIRED", "OPTIONAL"]

#: The members every model must have: methods (called ``name()``) and attributes.
REQUIRED: tuple[str, ...] = (
    "params()",
    "set_params()",
    "updater_state()",
    "set_updater_state()",
    "fit_batch()",
    "output()",
    "score()",
    "to_config()",
    "from_config()",
    "iteration",
    "epoch",
)

#: The optional members, each with what :class:`ModelAccess` does without it.
OPTIONAL: dict[str, str] = {
    "updater_steps": "the model's iteration stands for it",
    "reset_updater()": "set_updater_state(zeros)",
    "dropout_stream": "not set",
    "device": '"cpu"',
    "to()": 'stays on the CPU (worker_device="cuda" is refused)',
    "use_buffers()": "not used; rounds copy",
    "last_score": "not kept",
    "num_outputs": "unknown",
    "output_widths": "one input and one output",
    "score_parts()": "required with output_widths",
    "outputs": "outputs named by index",
}


@runtime_checkable
class Model(Protocol):
    """A trainable model on flat parameter and updater-state buffers (the required members;
    see the module for the optional ones)."""

    #: Minibatches fitted so far; parameter averaging advances it on the driver.
    iteration: int
    #: Epochs completed; parameter averaging advances it on the driver.
    epoch: int

    def params(self) -> np.ndarray:
        """One flat vector of every parameter: a view on the model's memory, not a copy (a
        copy works, but every round then sets the average with ``set_params``)."""
        ...

    def set_params(self, values: np.ndarray) -> None:
        """Copy ``values`` into the parameters."""
        ...

    def updater_state(self) -> np.ndarray:
        """The optimiser's state as one flat vector (may be empty), a view like params()."""
        ...

    def set_updater_state(self, values: np.ndarray) -> None:
        """Copy ``values`` into the updater state."""
        ...

    def fit_batch(self, batch: Any) -> float:
        """One optimisation step on one minibatch; returns the minibatch's score. It advances
        ``iteration``; a score that is not finite fails the fit (DivergenceError)."""
        ...

    def output(self, features: Any) -> np.ndarray:
        """Predictions for a batch of features."""
        ...

    def score(self, batch: Any) -> float:
        """Mean loss per example (per unmasked step) of a minibatch; for distributed scoring."""
        ...

    def to_config(self) -> dict[str, Any]:
        """JSON-able configuration from which ``from_config`` builds an identical model."""
        ...

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Model:
        """A new model as ``config`` describes (freshly initialised)."""
        ...


def _missing(model: Any) -> list[str]:
    """The required members ``model`` lacks (and ``score_parts()`` where it lists
    ``output_widths``), in the order of :data:`REQUIRED`."""
    missing = []
    for member in REQUIRED:
        name = member.removesuffix("()")
        if member == "from_config()":
            found = callable(getattr(type(model), name, None))
        elif member.endswith("()"):
            found = callable(getattr(model, name, None))
        else:
            found = hasattr(model, name)
        if not found:
            missing.append(member)
    if getattr(model, "output_widths", None) is not None and not callable(
        getattr(model, "score_parts", None)
    ):
        missing.append("score_parts() (it lists output_widths)")
    return missing


class ModelAccess:
    """A model checked once against the :class:`Model` protocol, with its optional members'
    defaults applied: :class:`~sparkbatch.train.SparkNetwork` builds one in its constructor,
    and every worker process one per model it builds, and neither looks at the model's
    members again.

    The required members are called on :attr:`model` itself; the optional ones through the
    methods and properties here. Raises a TypeError naming every required member the model
    lacks.

    Examples
    --------
    >>> from sparkbatch.nn import Dense, Network, Output
    >>> access = ModelAccess(Network([Dense(2, 3), Output(3, 2)]))
    >>> sorted(access.optional)[:3]
    ['device', 'dropout_stream', 'last_score']
    >>> ModelAccess(object())
    Traceback (most recent call last):
    ...
    TypeError: model must implement the Model protocol (...): object lacks params(), ...
    """

    __slots__ = (
        "model",
        "optional",
        "_updater_steps",
        "_reset_updater",
        "_dropout_stream",
        "_device",
        "_to",
        "_use_buffers",
        "_last_score",
        "_several",
        "_views",
    )

    def __init__(self, model: Any) -> None:
        missing = _missing(model)
        if missing:
            raise TypeError(
                "model must implement the Model protocol (sparkbatch.train.Model): "
                f"{type(model).__name__} lacks {', '.join(missing)}"
            )
        #: The model itself: its required members are called on it directly.
        self.model = model
        present = set()
        for member in OPTIONAL:
            name = member.removesuffix("()")
            value = getattr(model, name, None)
            if callable(value) if member.endswith("()") else value is not None:
                present.add(name)
        #: The optional members the model has (names without parentheses).
        self.optional: frozenset[str] = frozenset(present)
        self._updater_steps = "updater_steps" in present
        self._reset_updater = "reset_updater" in present
        self._dropout_stream = "dropout_stream" in present
        self._device = "device" in present
        self._to = "to" in present
        self._use_buffers = "use_buffers" in present
        self._last_score = "last_score" in present
        self._several = "output_widths" in present
        self._views: bool | None = None  # whether params() and updater_state() are views

    def __repr__(self) -> str:
        return f"ModelAccess({type(self.model).__name__}, optional={sorted(self.optional)})"

    # -- counters ----------------------------------------------------------------------------

    @property
    def updater_steps(self) -> int:
        """The model's ``updater_steps``; without it, its ``iteration``."""
        model = self.model
        return model.updater_steps if self._updater_steps else model.iteration

    @updater_steps.setter
    def updater_steps(self, value: int) -> None:
        """Set the model's ``updater_steps``; nothing without it."""
        if self._updater_steps:
            self.model.updater_steps = value

    def reset_updater(self) -> None:
        """The model's ``reset_updater()``; without it, ``set_updater_state`` with zeros."""
        model = self.model
        if self._reset_updater:
            model.reset_updater()
        else:
            model.set_updater_state(np.zeros_like(model.updater_state()))

    def set_dropout_stream(self, index: int) -> None:
        """Set the model's ``dropout_stream``; nothing without it."""
        if self._dropout_stream:
            self.model.dropout_stream = index

    def record_score(self, score: float) -> None:
        """Set the model's ``last_score``; nothing without it."""
        if self._last_score:
            self.model.last_score = score

    # -- devices and buffers -----------------------------------------------------------------

    @property
    def device(self) -> str:
        """The model's ``device``; without it, ``"cpu"``."""
        return self.model.device if self._device else "cpu"

    @property
    def can_move(self) -> bool:
        """Whether the model moves to a GPU (has ``to(device)``)."""
        return self._to

    def to(self, device: str) -> None:
        """Move the model to ``device`` with its ``to``; a model without one stays on the CPU,
        and asking it for ``"cuda"`` is a TypeError."""
        if self._to:
            self.model.to(device)
        elif device != "cpu":
            raise TypeError(
                f"{type(self.model).__name__} cannot move to {device!r}: it has no to(device) "
                "(use ParameterAveraging(worker_device='cpu'))"
            )

    @property
    def can_use_buffers(self) -> bool:
        """Whether the model keeps its buffers in given arrays (has ``use_buffers``)."""
        return self._use_buffers

    def use_buffers(self, params: np.ndarray, state: np.ndarray | None = None) -> None:
        """The model's ``use_buffers``; a TypeError without it (see :attr:`can_use_buffers`)."""
        if not self._use_buffers:
            raise TypeError(f"{type(self.model).__name__} has no use_buffers()")
        self.model.use_buffers(params, state)

    def own_buffers(self, save_updater: bool) -> list[np.ndarray]:
        """The model's parameter (and with ``save_updater`` updater state) buffers where they
        are writable host memory the model fits from, so that averages can be received
        straight into them; else an empty list (they are then set with ``set_params``)."""
        if self.device != "cpu":
            return []
        model = self.model
        buffers = [model.params()] + ([model.updater_state()] if save_updater else [])
        if not all(isinstance(b, np.ndarray) and b.flags.writeable for b in buffers):
            return []
        if self._views is None:  # once: does params() give the model's memory, or a copy?
            state = model.updater_state()
            self._views = np.shares_memory(buffers[0], model.params()) and (
                state.size == 0 or np.shares_memory(state, model.updater_state())
            )
        return buffers if self._views else []

    # -- outputs -----------------------------------------------------------------------------

    @property
    def several_outputs(self) -> bool:
        """Whether the model has several inputs and outputs as a :class:`~sparkbatch.nn.Graph`
        has (it lists ``output_widths``): its ``output`` takes a list of features arrays and
        returns a list of outputs, and ``score_parts`` gives the loss sums per output.
        Otherwise it has one input and one output, as a :class:`~sparkbatch.nn.Network`."""
        return self._several

    @property
    def output_widths(self) -> list[int | None]:
        """The width of every output: ``output_widths``, or ``[num_outputs]`` for a model of
        one output (``[None]`` where it does not say)."""
        if self._several:
            return [int(w) for w in self.model.output_widths]
        width = self.model.num_outputs if "num_outputs" in self.optional else None
        return [None if width is None else int(width)]

    @property
    def output_names(self) -> Sequence[str] | None:
        """The outputs' names (``outputs``) of a model of several outputs; else None."""
        if not self._several or "outputs" not in self.optional:
            return None
        names = self.model.outputs
        return tuple(names) if isinstance(names, Sequence) and not isinstance(names, str) else None
