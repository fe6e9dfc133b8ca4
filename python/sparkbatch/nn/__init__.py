"""The built-in models: layers on one flat parameter buffer, fused native kernels, one engine
over a CPU or CUDA backend.

``Network(layers, updater, seed=...)`` with :class:`Dense` hidden layers and one :class:`Output`
layer, recurrent layers (:class:`LSTM`, :class:`RnnOutput`, :class:`LastTimeStep`), or convolutional
ones (:class:`Conv2D`, :class:`MaxPool2D`, :class:`AvgPool2D`, :class:`Flatten`);
``Graph(inputs, vertices, outputs, updater)`` for several inputs and outputs, with
:class:`Merge` and :class:`ElementWise` vertices; updaters :class:`SGD`, :class:`Momentum`,
:class:`Nesterov`, :class:`Adam`, :class:`RMSProp` with optional :class:`StepSchedule` /
:class:`ExponentialSchedule`. They are what ``sparkbatch.train`` trains across Spark executors by
parameter averaging, and they implement the ``Model`` protocol any other model can implement too.
"""

from .conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from .functions import ACTIVATIONS, LOSSES
from .graph import Graph
from .layers import WEIGHT_INITS, Dense, Layer, Output
from .network import Network
from .recurrent import LSTM, LastTimeStep, RnnOutput
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
from .vertices import ElementWise, Merge, Vertex

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "WEIGHT_INITS",
    "Dense",
    "Output",
    "LSTM",
    "RnnOutput",
    "LastTimeStep",
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "Flatten",
    "Network",
    "Graph",
    "Layer",
    "Vertex",
    "Merge",
    "ElementWise",
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
