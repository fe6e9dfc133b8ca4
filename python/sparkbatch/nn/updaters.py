"""Updaters (SGD, Momentum, Nesterov, Adam, RMSProp) and learning-rate schedules.

An updater turns the flat gradient buffer into a step on the flat parameter buffer in one native
pass, keeping its state (velocities, moment estimates) in one flat buffer of
``state_per_param * num_params`` values, so parameter averaging can average the state as it
averages the parameters. Updaters and schedules are immutable configuration; the network owns
the state and the iteration count.

Examples
--------
>>> Adam(1e-3, schedule=StepSchedule(decay_rate=0.5, step=100)).rate(250)
0.00025
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from .. import _native

__all__ = [
    "Updater",
    "SGD",
    "Momentum",
    "Nesterov",
    "Adam",
    "RMSProp",
    "Schedule",
    "StepSchedule",
    "ExponentialSchedule",
    "updater_from_config",
]


@dataclass(frozen=True)
class Schedule:
    """A factor applied to the base learning rate, by iteration (minibatch) or by epoch."""

    unit: str = field(default="iteration", kw_only=True)

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.unit not in ("iteration", "epoch"):
            raise ValueError(f"schedule unit must be 'iteration' or 'epoch', got {self.unit!r}")

    def factor(self, count: int) -> float:
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}


@dataclass(frozen=True)
class StepSchedule(Schedule):
    """``rate * decay_rate ** (count // step)``: DL4J's ``StepSchedule``."""

    decay_rate: float = 0.1
    step: int = 1000

    kind: ClassVar[str] = "step"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step < 1 or not self.decay_rate > 0:
            raise ValueError(
                f"StepSchedule needs step >= 1 and decay_rate > 0, got {self.step}, "
                f"{self.decay_rate}"
            )

    def factor(self, count: int) -> float:
        return self.decay_rate ** (count // self.step)


@dataclass(frozen=True)
class ExponentialSchedule(Schedule):
    """``rate * gamma ** count``: DL4J's ``ExponentialSchedule``."""

    gamma: float = 0.99

    kind: ClassVar[str] = "exponential"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.gamma > 0:
            raise ValueError(f"ExponentialSchedule needs gamma > 0, got {self.gamma}")

    def factor(self, count: int) -> float:
        return self.gamma**count


_SCHEDULES = {cls.kind: cls for cls in (StepSchedule, ExponentialSchedule)}


@dataclass(frozen=True)
class Updater:
    """Base of the updaters: a learning rate and an optional schedule."""

    learning_rate: float = 0.1
    schedule: Schedule | None = field(default=None, kw_only=True)

    code: ClassVar[int] = 0
    state_per_param: ClassVar[int] = 0

    def __post_init__(self) -> None:
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    def rate(self, iteration: int, epoch: int = 0) -> float:
        """The scheduled learning rate at ``iteration`` (minibatches fitted) and ``epoch``."""
        if self.schedule is None:
            return self.learning_rate
        count = iteration if self.schedule.unit == "iteration" else epoch
        return self.learning_rate * self.schedule.factor(count)

    def hyper(self, iteration: int, epoch: int, steps: int | None = None) -> dict[str, float]:
        """The keyword arguments of the native step at ``iteration`` and ``epoch``, with
        ``steps`` steps in the state so far (default ``iteration``)."""
        return {"lr": self.rate(iteration, epoch)}

    def step(
        self,
        params: np.ndarray,
        grads: np.ndarray,
        state: np.ndarray,
        iteration: int,
        epoch: int,
        steps: int | None = None,
    ) -> None:
        """Apply one step in place.

        ``iteration`` counts the minibatches fitted before this one (it drives schedules);
        ``steps`` counts the steps accumulated in ``state`` since it was last zeroed (Adam's
        bias correction; default ``iteration``). They differ when the state is reset, as
        parameter averaging without ``save_updater`` does every round.
        """
        _native.nn_updater_step(
            self.code, params, grads, state, **self.hyper(iteration, epoch, steps)
        )

    def to_config(self) -> dict[str, Any]:
        config = {"type": type(self).__name__, **asdict(self)}
        config["schedule"] = self.schedule.to_config() if self.schedule else None
        return config


@dataclass(frozen=True)
class SGD(Updater):
    """Plain gradient descent: ``p -= rate * g``."""

    code: ClassVar[int] = 0
    state_per_param: ClassVar[int] = 0


@dataclass(frozen=True)
class Momentum(Updater):
    """Classical momentum: ``v = momentum * v - rate * g; p += v``."""

    momentum: float = 0.9

    code: ClassVar[int] = 1
    state_per_param: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def hyper(self, iteration: int, epoch: int, steps: int | None = None) -> dict[str, float]:
        return {"lr": self.rate(iteration, epoch), "momentum": self.momentum}


@dataclass(frozen=True)
class Nesterov(Momentum):
    """Nesterov momentum in DL4J's form (``Nesterovs``)."""

    code: ClassVar[int] = 2


@dataclass(frozen=True)
class Adam(Updater):
    """Adam (Kingma and Ba), with the bias correction folded into the step size."""

    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8

    code: ClassVar[int] = 3
    state_per_param: ClassVar[int] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.epsilon > 0):
            raise ValueError(
                f"Adam needs beta1, beta2 in [0, 1) and epsilon > 0, got {self.beta1}, "
                f"{self.beta2}, {self.epsilon}"
            )

    def hyper(self, iteration: int, epoch: int, steps: int | None = None) -> dict[str, float]:
        t = (iteration if steps is None else steps) + 1
        step = self.rate(iteration, epoch) * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        return {"lr": step, "beta1": self.beta1, "beta2": self.beta2, "eps": self.epsilon}


@dataclass(frozen=True)
class RMSProp(Updater):
    """RMSProp: ``s = decay * s + (1 - decay) * g^2; p -= rate * g / (sqrt(s) + epsilon)``."""

    learning_rate: float = 1e-3
    decay: float = 0.95
    epsilon: float = 1e-8

    code: ClassVar[int] = 4
    state_per_param: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.decay < 1 and self.epsilon > 0):
            raise ValueError(
                f"RMSProp needs decay in [0, 1) and epsilon > 0, got {self.decay}, {self.epsilon}"
            )

    def hyper(self, iteration: int, epoch: int, steps: int | None = None) -> dict[str, float]:
        return {"lr": self.rate(iteration, epoch), "decay": self.decay, "eps": self.epsilon}


_UPDATERS = {cls.__name__: cls for cls in (SGD, Momentum, Nesterov, Adam, RMSProp)}


def updater_from_config(config: dict[str, Any]) -> Updater:
    """The updater that :meth:`Updater.to_config` described."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in _UPDATERS:
        raise ValueError(f"unknown updater {kind!r}; choose one of {', '.join(_UPDATERS)}")
    schedule = config.pop("schedule", None)
    if schedule is not None:
        schedule = dict(schedule)
        schedule_kind = schedule.pop("type", None)
        if schedule_kind not in _SCHEDULES:
            raise ValueError(
                f"unknown schedule {schedule_kind!r}; choose one of {list(_SCHEDULES)}"
            )
        schedule = _SCHEDULES[schedule_kind](**schedule)
    return _UPDATERS[kind](**config, schedule=schedule)
