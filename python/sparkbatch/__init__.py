"""sparkbatch: deep-learning minibatches from Spark, stored once, trained on fast.

The package imports no JVM: :mod:`sparkbatch.spark` and :mod:`sparkbatch.train` import pyspark
only when used.
"""

from __future__ import annotations

from sparkbatch._version import __version__
from sparkbatch.data import DataSet, MultiDataSet
from sparkbatch.errors import (
    CsvError,
    CudaUnavailableError,
    DataFrameError,
    DivergenceError,
    FormatError,
    IncompleteExportError,
    KeyJoinError,
    NonFiniteError,
    SequenceLengthError,
    SparkbatchError,
)

__all__ = [
    "CsvError",
    "CudaUnavailableError",
    "DataFrameError",
    "DataSet",
    "DivergenceError",
    "FormatError",
    "IncompleteExportError",
    "KeyJoinError",
    "MultiDataSet",
    "NonFiniteError",
    "SequenceLengthError",
    "SparkbatchError",
    "__version__",
]
