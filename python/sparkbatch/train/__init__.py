"""Distributed training on Spark by parameter averaging, and its statistics.

:class:`SparkNetwork` fits a :class:`Model` (such as :class:`sparkbatch.nn.Network`) from an RDD of
DataSets, a directory of minibatch files or an RDD of paths, as :class:`ParameterAveraging`
configures (every fit a :class:`FitPlan` run through an :class:`Exchange`: :class:`SparkExchange`,
:class:`SocketExchange` or :class:`RingExchange`), and evaluates it with exactly merged counts;
:class:`TrainingStats` holds the timings and renders the HTML report. :class:`Model` lists what a
model needs (and what it may have, with the defaults :class:`ModelAccess` applies without it).
``TorchModel`` (in :mod:`sparkbatch.train.torch_model`, needing the ``torch`` extra) makes a
``torch.nn.Module`` such a model; it is imported when first named, so importing this package does
not import torch.
"""

from __future__ import annotations

from .exchange import Exchange
from .master import ParameterAveraging, plan_rounds
from .model import Model, ModelAccess
from .plan import FitPlan
from .ring_exchange import RingExchange
from .runner import FitRunner
from .socket_exchange import SocketExchange
from .spark_exchange import SparkExchange
from .spark_network import SparkNetwork
from .stats import AggregationStep, PhaseTiming, RoundStats, TrainingStats

__all__ = [
    "AggregationStep",
    "Exchange",
    "FitPlan",
    "FitRunner",
    "Model",
    "ModelAccess",
    "ParameterAveraging",
    "RingExchange",
    "SocketExchange",
    "SparkExchange",
    "SparkNetwork",
    "plan_rounds",
    "PhaseTiming",
    "RoundStats",
    "TrainingStats",
]


def __getattr__(name: str) -> object:
    """``TorchModel``, imported on first use: importing sparkbatch.train must not import torch."""
    if name == "TorchModel":
        from .torch_model import TorchModel

        return TorchModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
