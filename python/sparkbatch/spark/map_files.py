"""Map files to RDDs of records: DataVec's ``SparkStorageUtils.restoreMapFile`` and
``restoreMapFileSequences``.

The seed's step 3 of "prepare data on a single machine for use on a cluster: map/sequence
files": the output of :class:`sparkbatch.storage.MapFileWriter` (or
:class:`~sparkbatch.storage.MapFileSequenceWriter`), copied to storage the executors reach, is
read back as an RDD of records ordered by key, one partition per part::

    records = restore_map_file(sc, "hdfs:///map/file/root/dir")
    datasets = records.map(RecordsToDataSet(label_index=5, num_classes=10))

Only the parts' URLs travel to the executors; each task reads its part's ``data`` SequenceFile
itself (:class:`sparkbatch.storage.SequenceFileReader`) and decodes the values
(:mod:`sparkbatch.storage.record_codec`). Map files DataVec's ``MapFileRecordWriter`` /
``MapFileSequenceRecordWriter`` wrote are read the same way: the part's value class picks the
decoder (:mod:`sparkbatch.storage.datavec_writables`; NOTE [DataVec outputs have no _SUCCESS]).
DataVec returns an unsorted pair RDD of (index, record);
here the partitions are the parts in order and each part's keys increase, so the RDD is in key
order with no shuffle, and ``rdd.zipWithIndex()`` gives the keys back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sparkbatch.errors import FormatError
from sparkbatch.records import SequenceRecord
from sparkbatch.storage import join
from sparkbatch.storage.datavec_writables import (
    DATAVEC_CLASSES,
    RECORD_CLASS,
    SEQUENCE_CLASS,
    decode_datavec_record,
    decode_datavec_sequence,
)
from sparkbatch.storage.map_file import map_file_parts
from sparkbatch.storage.record_codec import decode_record, decode_sequence

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = [
    "MapFilePartsToRecords",
    "map_file_parts",
    "restore_map_file",
    "restore_map_file_sequences",
]


class MapFilePartsToRecords:
    """``rdd_of_part_urls.mapPartitions(...)``: the records of each part, in key order.

    Parameters
    ----------
    sequences : bool
        Decode sequence records (as :class:`~sparkbatch.records.SequenceRecord` whose
        ``source`` names the part's ``data`` file and the key) instead of records.
    storage_options : mapping, optional
        Keyword arguments for the file system, on the executors.
    """

    def __init__(
        self, sequences: bool = False, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.sequences = sequences
        self.storage_options = dict(storage_options) if storage_options else None

    def __repr__(self) -> str:
        return f"MapFilePartsToRecords(sequences={self.sequences})"

    def __call__(self, parts: Iterator[str]) -> Iterator[Any]:
        from sparkbatch.storage.sequence_file import SequenceFileReader

        for part in parts:
            url = join(part, "data")
            with SequenceFileReader(url, storage_options=self.storage_options) as reader:
                value_class = reader.value_class
                if value_class == _BYTES:
                    decode_one, decode_steps = decode_record, decode_sequence
                elif value_class in DATAVEC_CLASSES:
                    if (value_class == SEQUENCE_CLASS) != self.sequences:
                        raise FormatError(_mismatch(url, value_class, self.sequences))
                    decode_one, decode_steps = decode_datavec_record, decode_datavec_sequence
                else:
                    raise FormatError(
                        f"{url}: values are {value_class}, expected {_BYTES} holding "
                        f"sparkbatch's record encoding, or DataVec's {RECORD_CLASS} or "
                        f"{SEQUENCE_CLASS}"
                    )
                if self.sequences:
                    for key, value in reader:
                        source = f"{url} key {key}"
                        yield SequenceRecord(decode_steps(value, source), source)
                else:  # the values alone: the keys are the records' indexes
                    for n, value in enumerate(reader.values()):
                        try:
                            yield decode_one(value)
                        except FormatError:
                            yield decode_one(value, f"{url} record {n} of the part")


_BYTES = "org.apache.hadoop.io.BytesWritable"


def _mismatch(url: str, value_class: str, sequences: bool) -> str:
    """The error for a DataVec part read as the other kind (records as sequences, or back)."""
    if sequences:
        return (
            f"{url}: values are DataVec's {value_class} (records, from MapFileRecordWriter), "
            "read as sequences: use restore_map_file"
        )
    return (
        f"{url}: values are DataVec's {value_class} (sequences, from "
        "MapFileSequenceRecordWriter), read as records: use restore_map_file_sequences"
    )


def _restore(
    sc: SparkContext,
    url: str | os.PathLike[str],
    sequences: bool,
    storage_options: Mapping[str, Any] | None,
) -> RDD[Any]:
    parts = map_file_parts(url, storage_options)
    return sc.parallelize(parts, len(parts)).mapPartitions(
        MapFilePartsToRecords(sequences, storage_options), preservesPartitioning=True
    )


def restore_map_file(
    sc: SparkContext,
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> RDD[list[Any]]:
    """An RDD of the records of a map file output, in key order, one partition per part.

    Parameters
    ----------
    sc : SparkContext
    url : str or os.PathLike
        The output directory of :class:`~sparkbatch.storage.MapFileWriter` (local path on every
        executor, or fsspec URL), or one MapFile directory.
    storage_options : mapping, optional
        Keyword arguments for the file system (the driver lists the parts, the executors read
        them).

    Raises
    ------
    FileNotFoundError, IncompleteExportError
        See :func:`map_file_parts` (raised on the driver, at once).
    FormatError
        On the executors, when the job runs: a part that is not a SequenceFile of
        BytesWritable values (or of DataVec's ``RecordWritable``), or a value not of
        sparkbatch's record encoding (a sequence map file: use
        :func:`restore_map_file_sequences`); the message names the file and key.

    Notes
    -----
    Map files DataVec's ``MapFileRecordWriter`` wrote are read too, without ``_SUCCESS``
    (:mod:`sparkbatch.storage.datavec_writables` decodes their values).

    Examples
    --------
    >>> records = restore_map_file(sc, "hdfs:///map/file/root/dir")  # doctest: +SKIP
    >>> datasets = records.map(RecordsToDataSet(label_index=5, num_classes=10))  # doctest: +SKIP
    """
    return _restore(sc, url, False, storage_options)


def restore_map_file_sequences(
    sc: SparkContext,
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> RDD[SequenceRecord]:
    """An RDD of the sequence records of a :class:`~sparkbatch.storage.MapFileSequenceWriter`
    output, in key order, one partition per part; each a
    :class:`~sparkbatch.records.SequenceRecord` whose ``source`` names its part and key. Then
    ``.map(SequencesToDataSet(...))``. Arguments and errors: :func:`restore_map_file`.
    """
    return _restore(sc, url, True, storage_options)
