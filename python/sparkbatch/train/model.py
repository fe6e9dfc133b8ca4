"""The ``Model`` protocol: what :class:`~sparkbatch.train.SparkNetwork` needs of a model.

Parameter averaging only needs a model's parameters and updater state as flat numpy buffers it
can broadcast, sum and average, a way to fit one minibatch, and a configuration from which an
executor builds an identical model. :class:`sparkbatch.nn.Network` and
:class:`sparkbatch.nn.Graph` implement it; any other model can, as long as it pickles by
reference (a class importable on the executors).

Distributed evaluation takes a model of several inputs and outputs (a Graph) by its
``output_widths``: its ``output`` then takes a list of features arrays and returns a list of
outputs, and ``score_parts(batch)`` gives per output the loss sum and the weight it sums over,
and the L2 penalty, so that scores merge exactly across partitions.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Model"]


@runtime_checkable
class Model(Protocol):
    """A trainable model on flat parameter and updater-state buffers."""

    #: Minibatches fitted so far; parameter averaging advances it on the driver.
    iteration: int
    #: Epochs completed.
    epoch: int

    def params(self) -> np.ndarray:
        """One flat vector of every parameter: a view on the model's memory, not a copy."""
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
        """One optimisation step on one minibatch; returns the minibatch's score."""
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
