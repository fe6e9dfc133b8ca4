"""Record readers: files to records (lists of values), as DataVec's record readers do."""

from __future__ import annotations

from sparkbatch.records.converter import RecordWriter, convert
from sparkbatch.records.csv import CSVRecordReader, to_value
from sparkbatch.records.csv_sequence import CSVSequenceRecordReader, SequenceRecord
from sparkbatch.records.images import IMAGE_EXTENSIONS, ImageRecordReader
from sparkbatch.records.labels import (
    LabelGenerator,
    ParentPathLabelGenerator,
    PatternPathLabelGenerator,
)
from sparkbatch.records.reader import FileRecordReader, Record, RecordReader

__all__ = [
    "IMAGE_EXTENSIONS",
    "CSVRecordReader",
    "CSVSequenceRecordReader",
    "FileRecordReader",
    "ImageRecordReader",
    "LabelGenerator",
    "ParentPathLabelGenerator",
    "PatternPathLabelGenerator",
    "Record",
    "RecordReader",
    "RecordWriter",
    "SequenceRecord",
    "convert",
    "to_value",
]
