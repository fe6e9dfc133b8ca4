"""Minibatches in memory (DataSet, MultiDataSet) and on storage (the minibatch file format).

``sparkbatch.data.torch`` (``MinibatchDataset``: exports as a PyTorch dataset) is imported on its
own, ``from sparkbatch.data.torch import MinibatchDataset``: it needs torch, which this package
never imports.
"""

from __future__ import annotations

from sparkbatch.data.batches import rebatch
from sparkbatch.data.dataset import DataSet
from sparkbatch.data.export import export_datasets
from sparkbatch.data.format import FORMAT_VERSION, SUFFIX, from_bytes, load, save, to_bytes
from sparkbatch.data.images import FileBatchLoader, ImageScaler
from sparkbatch.data.iterators import FileDataSetIterator, FileMultiDataSetIterator
from sparkbatch.data.loaders import (
    Loader,
    PreprocessingLoader,
    SerializedDataSetLoader,
    SerializedMinibatchLoader,
    SerializedMultiDataSetLoader,
    Source,
)
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.data.preprocessors import (
    DataSetPreprocessor,
    MinMaxScale,
    Standardize,
    load_preprocessor,
)
from sparkbatch.data.sequences import ALIGNMENTS, check_alignment, pad_sequences

__all__ = [
    "ALIGNMENTS",
    "FORMAT_VERSION",
    "SUFFIX",
    "DataSet",
    "DataSetPreprocessor",
    "FileBatchLoader",
    "FileDataSetIterator",
    "FileMultiDataSetIterator",
    "ImageScaler",
    "Loader",
    "MinMaxScale",
    "MultiDataSet",
    "PreprocessingLoader",
    "SerializedDataSetLoader",
    "SerializedMinibatchLoader",
    "SerializedMultiDataSetLoader",
    "Source",
    "Standardize",
    "check_alignment",
    "export_datasets",
    "from_bytes",
    "load",
    "load_preprocessor",
    "pad_sequences",
    "rebatch",
    "save",
    "to_bytes",
]
