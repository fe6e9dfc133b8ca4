"""The built-in network: dense layers on one flat parameter buffer, fused native kernels.

``Network(layers, updater, seed=...)`` with :class:`Dense` hidden layers and one :class:`Output`
layer; updaters :class:`SGD`, :class:`Momentum`, :class:`Nesterov`, :class:`Adam`,
:class:`RMSProp` with optional :class:`StepSchedule` / :class:`ExponentialSchedule`. It is what
``sparkbatch.train`` trains across Spark executors by parameter averaging, and it implements the
``Model`` protocol any other model can implement too.
"""

from .functions import ACTIVATIONS, LOSSES
from .layers import WEIGHT_INITS, Dense, Output
from .network import Network
from .updaters import (
    SGD,
    Adam,
    ExponentialSchedule,
    Momentum,
    Nesterov,
    RMSProp,
    Schedule,
    StepSchedule,
    Updater,
)

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "WEIGHT_INITS",
    "Dense",
    "Output",
    "Network",
    "Updater",
    "SGD",
    "Momentum",
    "Nesterov",
    "Adam",
    "RMSProp",
    "Schedule",
    "StepSchedule",
    "ExponentialSchedule",
]
