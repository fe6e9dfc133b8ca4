"""Records and tables to DataSets: one-hot class labels, regression label ranges."""

from __future__ import annotations

from sparkbatch.convert.iterators import RecordReaderDataSetIterator
from sparkbatch.convert.multi import MultiDataSetBuilder, MultiDataSetConverter
from sparkbatch.convert.records import record_to_dataset, records_to_dataset
from sparkbatch.convert.sequences import sequence_to_dataset, sequences_to_dataset
from sparkbatch.convert.table import LabelSpec

__all__ = [
    "LabelSpec",
    "MultiDataSetBuilder",
    "MultiDataSetConverter",
    "RecordReaderDataSetIterator",
    "record_to_dataset",
    "records_to_dataset",
    "sequence_to_dataset",
    "sequences_to_dataset",
]
