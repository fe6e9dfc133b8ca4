"""Record readers: files to records (lists of values), as DataVec's record readers do."""

from __future__ import annotations

from sparkbatch.records.csv import CSVRecordReader, Record, to_value
from sparkbatch.records.csv_sequence import CSVSequenceRecordReader, SequenceRecord

__all__ = ["CSVRecordReader", "CSVSequenceRecordReader", "Record", "SequenceRecord", "to_value"]
