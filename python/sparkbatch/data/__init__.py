"""Minibatches in memory (DataSet, MultiDataSet) and on storage (the minibatch file format)."""

from __future__ import annotations

from sparkbatch.data.dataset import DataSet
from sparkbatch.data.format import FORMAT_VERSION, SUFFIX, from_bytes, load, save, to_bytes
from sparkbatch.data.multidataset import MultiDataSet

__all__ = [
    "FORMAT_VERSION",
    "SUFFIX",
    "DataSet",
    "MultiDataSet",
    "from_bytes",
    "load",
    "save",
    "to_bytes",
]
