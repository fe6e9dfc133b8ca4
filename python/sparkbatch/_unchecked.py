"""DataSets of arrays that sparkbatch built itself, made without the constructor's checks.

Private, and shared by :mod:`sparkbatch.convert`, which builds features and one-hot labels as
float32 ``[n, ...]`` arrays of the same ``n`` (tables split at once, records one at a time),
and :mod:`sparkbatch.data`, which owns the construction (``DataSet._unchecked``). Checking
such arrays again costs a few microseconds a DataSet, a third of converting one record: see
NOTE [unchecked construction] in :mod:`sparkbatch.data._arrays`. Everything a user passes in,
or a file provides, is checked.
"""

from __future__ import annotations

import numpy as np

from sparkbatch.data.dataset import DataSet

__all__ = ["unchecked_dataset"]


def unchecked_dataset(features: np.ndarray, labels: np.ndarray | None = None) -> DataSet:
    """A DataSet of ``features`` and ``labels``, numpy floating arrays of at least two
    dimensions with the same first one, which the caller made and knows to agree."""
    return DataSet._unchecked(features, labels)
