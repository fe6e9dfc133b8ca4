"""Copy a record reader into a record writer: DataVec's ``RecordReaderConverter.convert``.

:func:`convert` is the seed's step 1 of "prepare data on a single machine for use on a cluster:
map/sequence files": any :class:`~sparkbatch.records.RecordReader` (CSV, CSV sequences,
images, a custom reader) into a writer such as :class:`sparkbatch.storage.MapFileWriter`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sparkbatch._progress import Progress

__all__ = ["RecordWriter", "convert"]


class RecordWriter(Protocol):
    """What :func:`convert` writes to: ``write_batch(records)`` and ``close()``;
    ``sequences`` (optional, default False) says whether it takes sequence records."""

    def write_batch(self, records: Iterable[Any]) -> None: ...

    def close(self) -> None: ...


def _is_sequence_reader(reader: object) -> bool:
    return callable(getattr(reader, "next_sequence", None))


def convert(
    reader: Iterable[Any],
    writer: RecordWriter,
    *,
    progress: bool | None = None,
    batch_size: int = 1024,
    close: bool = True,
) -> int:
    """Write every record of ``reader`` to ``writer``, in order, ``batch_size`` at a time.

    Parameters
    ----------
    reader : RecordReader or iterable of records
        Initialised; read from where it is (call ``reset()`` first to start over). A sequence
        reader (one with ``next_sequence``, as :class:`~sparkbatch.records.CSVSequenceRecordReader`)
        needs a sequence writer (``writer.sequences``), and the other way round.
    writer : RecordWriter
        E.g. :class:`sparkbatch.storage.MapFileWriter`.
    progress : bool, optional
        Show a progress bar of the records written; default: only on a terminal.
    batch_size : int, default 1024
        Records given to ``writer.write_batch`` at once.
    close : bool, default True
        Close the writer at the end (committing its output); if reading or writing fails, the
        writer is aborted (``writer.abort()`` where it has one) and the error raised.

    Returns
    -------
    int
        The number of records written.

    Examples
    --------
    >>> from sparkbatch.records import CSVRecordReader
    >>> from sparkbatch.storage import MapFileWriter, open_output
    >>> with open_output("memory://sparkbatch-doc/conv/a.csv") as f:
    ...     _ = f.write(b"1,2,0\\n3,4,1\\n5,6,0\\n")
    >>> reader = CSVRecordReader().initialize("memory://sparkbatch-doc/conv/a.csv")
    >>> convert(reader, MapFileWriter("memory://sparkbatch-doc/conv/out", split_size=2))
    3
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not callable(getattr(writer, "write_batch", None)):
        raise TypeError(f"writer must have write_batch(records), got {type(writer).__name__}")
    wants_sequences = bool(getattr(writer, "sequences", False))
    if _is_sequence_reader(reader) != wants_sequences:
        kinds = ("sequence records", "records")
        raise TypeError(
            f"{reader!r} reads {kinds[not _is_sequence_reader(reader)]} but {writer!r} writes "
            f"{kinds[not wants_sequences]}: use MapFileSequenceWriter for a sequence reader, "
            "MapFileWriter for a record reader"
        )
    count = 0
    try:
        with Progress(desc="converting records", unit=" records", enabled=progress) as bar:
            batch: list[Any] = []
            for record in reader:
                batch.append(record)
                if len(batch) >= batch_size:
                    writer.write_batch(batch)
                    count += len(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                writer.write_batch(batch)
                count += len(batch)
                bar.update(len(batch))
        if close:
            writer.close()
    except BaseException:
        abort = getattr(writer, "abort", None)
        if close and callable(abort):
            abort()
        raise
    return count
