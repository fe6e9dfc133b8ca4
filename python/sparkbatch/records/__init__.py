"""Record readers: files to records (lists of values), as DataVec's record readers do."""

from __future__ import annotations

from sparkbatch.records.csv import CSVRecordReader, Record, to_value

__all__ = ["CSVRecordReader", "Record", "to_value"]
