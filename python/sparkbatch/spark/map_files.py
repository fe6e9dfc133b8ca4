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
(:mod:`sparkbatch.storage.record_codec`). DataVec returns an unsorted pair RDD of (index, record);
here the partitions are the parts in order and each part's keys increase, so the RDD is in key
order with no shuffle, and ``rdd.zipWithIndex()`` gives the keys back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sparkbatch.errors import FormatError, IncompleteExportError
from sparkbatch.records import SequenceRecord
from sparkbatch.storage import join, resolve
from sparkbatch.storage.map_file_writers import SUCCESS
from sparkbatch.storage.record_codec import decode_record, decode_sequence

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = [
    "MapFilePartsToRecords",
    "map_file_parts",
    "restore_map_file",
    "restore_map_file_sequences",
]


def map_file_parts(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The MapFile directories of a map file output, in part order.

    ``url`` is a directory of ``part-*`` MapFiles with ``_SUCCESS`` (what
    :class:`~sparkbatch.storage.MapFileWriter` and Hadoop jobs write), or one MapFile directory
    (``data`` and ``index``).

    Raises
    ------
    FileNotFoundError
        ``url`` does not exist, or holds neither parts nor a MapFile.
    IncompleteExportError
        ``url`` holds parts but no ``_SUCCESS``: a conversion still running or failed
        (NOTE [map file output commit] in :mod:`sparkbatch.storage.map_file_writers`).
    """
    url = os.fspath(url)
    options = dict(storage_options) if storage_options else None
    fs, path = resolve(url, options)
    if not fs.isdir(path):
        raise FileNotFoundError(f"{url}: no such directory (expected a map file output)")
    entries = {os.path.basename(p["name"].rstrip("/")): p for p in fs.ls(path, detail=True)}
    if "data" in entries and "index" in entries:
        return [url]
    parts = sorted(
        (
            name
            for name, entry in entries.items()
            if name.startswith("part-") and entry.get("type") == "directory"
        ),
        key=_part_number,
    )
    if not parts:
        raise FileNotFoundError(
            f"{url} holds no map file: expected part-r-NNNNN directories (or data and index); "
            f"found {sorted(entries)[:5]}"
        )
    if SUCCESS not in entries:
        raise IncompleteExportError(
            f"{url} holds {len(parts)} map file parts but no {SUCCESS}: the conversion that "
            "writes it is still running or failed; write it again"
        )
    return [join(url, name) for name in parts]


def _part_number(name: str) -> tuple[int, str]:
    """Parts in the order of their numbers: ``part-r-99999`` before ``part-r-100000`` (a
    sort by name would put it after, and its records out of key order)."""
    number = name.rsplit("-", 1)[-1]
    return (int(number) if number.isdigit() else -1, name)


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
                if reader.value_class != "org.apache.hadoop.io.BytesWritable":
                    raise FormatError(
                        f"{url}: values are {reader.value_class}, expected "
                        "org.apache.hadoop.io.BytesWritable holding sparkbatch's record encoding"
                    )
                if self.sequences:
                    for key, value in reader:
                        source = f"{url} key {key}"
                        yield SequenceRecord(decode_sequence(value, source), source)
                else:  # the values alone: the keys are the records' indexes
                    for n, value in enumerate(reader.values()):
                        try:
                            yield decode_record(value)
                        except FormatError:
                            yield decode_record(value, f"{url} record {n} of the part")


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
        BytesWritable values, or a value not of sparkbatch's record encoding (a sequence map
        file: use :func:`restore_map_file_sequences`); the message names the file and key.

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
