"""Records to split Hadoop MapFiles: DataVec's ``MapFileRecordWriter`` and
``MapFileSequenceRecordWriter``.

:class:`MapFileWriter` writes records, :class:`MapFileSequenceWriter` sequence records, as a
directory of Hadoop MapFiles ``part-r-00000``, ``part-r-00001``, ... (each a ``data`` and an
``index`` SequenceFile, :class:`sparkbatch.storage.MapFilePartWriter`). The key of a record is a
``LongWritable``: its global index from 0, in the order written; the value a ``BytesWritable``
holding the record's encoding (:mod:`sparkbatch.storage.record_codec`). Record ``k`` goes to part
``k // split_size`` (one part when ``split_size`` is None), so Spark reads the parts as
partitions of about ``split_size`` records, and Spark's own ``sc.sequenceFile(part + "/data",
"org.apache.hadoop.io.LongWritable", "org.apache.hadoop.io.BytesWritable")`` reads them.

NOTE [map file output commit]: no reader ever sees a partial output.

* Each part is committed whole by its part writer (written under a temporary name, renamed).
* The output directory gets ``_SUCCESS`` (empty, as Hadoop's output committer writes it) only
  in :meth:`MapFileWriter.close`, after the last part. :func:`sparkbatch.spark.restore_map_file`
  refuses a directory without it (:class:`~sparkbatch.errors.IncompleteExportError`), so parts
  of a conversion that is still running or that failed are never read as the whole data set.
* An exception inside ``with MapFileWriter(...)`` (or :meth:`MapFileWriter.abort`) removes the
  parts already written: nothing is left behind.
* A directory that already holds parts or ``_SUCCESS`` is refused (``FileExistsError``): remove
  it first.

NOTE [empty map file output]: a writer closed with no record writes one empty MapFile,
``part-r-00000`` (empty ``data`` and ``index``), and ``_SUCCESS``, as a Hadoop job with no
output records writes empty parts: every reader (Spark's too) reads it as zero records.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from sparkbatch.storage.paths import join, open_output, resolve
from sparkbatch.storage.record_codec import (
    encode_float_rows,
    encode_record,
    encode_records,
    encode_sequence,
)

__all__ = ["SUCCESS", "MapFileSequenceWriter", "MapFileWriter", "part_name"]

SUCCESS = "_SUCCESS"
"""The name of the marker written last in a complete output directory."""
_FLUSH = 4096  # records buffered by write() before they go to the part writer


def part_name(index: int) -> str:
    """The directory name of part ``index``, as Hadoop names a reducer's output.

    >>> part_name(0), part_name(12)
    ('part-r-00000', 'part-r-00012')
    """
    return f"part-r-{index:05d}"


def _converter(convert_text_to: str | None) -> type | None:
    if convert_text_to is None:
        return None
    if convert_text_to not in ("float", "int"):
        raise ValueError(f"convert_text_to must be 'float', 'int' or None, got {convert_text_to!r}")
    return float if convert_text_to == "float" else int


class MapFileWriter:
    """Writes records as split Hadoop MapFiles (NOTE [map file output commit] in this module).

    Parameters
    ----------
    out_dir : str or os.PathLike
        The output directory (local path or fsspec URL); created if needed.
    split_size : int, optional
        Records per part: record ``k`` goes to ``part-r-{k // split_size:05d}``. None: one part.
    index_interval : int, default 1
        Every ``index_interval``-th key of a part goes to its ``index`` (Hadoop's MapFile
        ``setIndexInterval``; DataVec's default 1).
    convert_text_to : {"float", "int"}, optional
        Text values are converted to numbers while writing (DataVec's ``convertTextTo``); a text
        that is not one is a ValueError naming the record's index and the field.
    compression : {None, "record", "block"}
        SequenceFile compression of the parts' ``data`` (Hadoop's DefaultCodec, zlib).
    storage_options : dict, optional
        Keyword arguments for the file system.

    Examples
    --------
    >>> with MapFileWriter("memory://sparkbatch-doc/mf", split_size=2) as writer:
    ...     writer.write_batch([[0.5, 1.0], [1.5, 0.0], [2.5, 1.0]])
    >>> import fsspec
    >>> memory = fsspec.filesystem("memory")
    >>> sorted(p.rsplit("/", 1)[1] for p in memory.ls("/sparkbatch-doc/mf", detail=False))
    ['_SUCCESS', 'part-r-00000', 'part-r-00001']
    >>> fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    sequences = False
    """Whether this writer takes sequence records (:func:`sparkbatch.records.convert` checks)."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        split_size: int | None = None,
        index_interval: int = 1,
        convert_text_to: str | None = None,
        *,
        compression: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if split_size is not None and (
            isinstance(split_size, bool) or not isinstance(split_size, int) or split_size < 1
        ):
            raise ValueError(f"split_size must be an int >= 1 or None, got {split_size!r}")
        if isinstance(index_interval, bool) or not isinstance(index_interval, int):
            raise ValueError(f"index_interval must be an int >= 1, got {index_interval!r}")
        if index_interval < 1:
            raise ValueError(f"index_interval must be an int >= 1, got {index_interval!r}")
        if compression not in (None, "record", "block"):
            raise ValueError(f"compression must be None, 'record' or 'block', got {compression!r}")
        self.out_dir = os.fspath(out_dir)
        self.split_size = split_size
        self.index_interval = index_interval
        self.convert_text_to = convert_text_to
        self._convert = _converter(convert_text_to)
        self.compression = compression
        self.storage_options = dict(storage_options) if storage_options else None
        self._fs, self._path = resolve(self.out_dir, self.storage_options)
        self._refuse_existing()
        self.count = 0
        """Records written so far (the next record's key)."""
        self._part: Any = None  # the open part writer
        self._part_index = -1
        self._parts: list[str] = []  # part directories opened, committed or not
        # encoded values not yet given to the part writer, batch by batch: bytes each, or the
        # rows of one array (encode_float_rows)
        self._pending: list[list[bytes] | np.ndarray] = []
        self._pending_count = 0
        self._pending_start = 0  # the key of the first pending value
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.out_dir!r}, split_size={self.split_size}, "
            f"index_interval={self.index_interval}, convert_text_to={self.convert_text_to!r})"
        )

    def _refuse_existing(self) -> None:
        if not self._fs.exists(self._path):
            return
        if not self._fs.isdir(self._path):
            raise FileExistsError(f"{self.out_dir} is a file; a map file output is a directory")
        names = [os.path.basename(p.rstrip("/")) for p in self._fs.ls(self._path, detail=False)]
        taken = sorted(n for n in names if n == SUCCESS or n.startswith("part-"))
        if taken:
            raise FileExistsError(
                f"{self.out_dir} already holds a map file output ({', '.join(taken[:3])}); "
                "remove it or write elsewhere"
            )

    # -- encoding ---------------------------------------------------------------------------

    def _encode_one(self, record: Sequence[Any]) -> bytes:
        return encode_record(record)

    def _encode_all(self, records: Sequence[Any]) -> list[bytes]:
        return encode_records(records)

    def _encode_rows(self, records: list[Any]) -> np.ndarray | None:
        """The batch as rows of one array where it has that form (floats of one width)."""
        return encode_float_rows(records)

    def _convert_text(self, record: Sequence[Any], index: int, step: int | None = None) -> Any:
        """``record`` with its text values converted (a new list), or ``record`` itself."""
        assert self._convert is not None
        if str not in set(map(type, record)):
            return record
        out = list(record)
        for field, value in enumerate(out):
            if isinstance(value, str):
                try:
                    out[field] = self._convert(value.strip())
                except ValueError:
                    where = f"record {index}" + (f", step {step}" if step is not None else "")
                    raise ValueError(
                        f"{self.out_dir}: {where}, field {field}: the text {value!r} is not "
                        f"a{'n' if self.convert_text_to == 'int' else ''} "
                        f"{self.convert_text_to} (convert_text_to={self.convert_text_to!r})"
                    ) from None
        return out

    def _prepare(self, record: Any, index: int) -> Any:
        if not isinstance(record, (list, tuple)):
            raise TypeError(
                f"{self.out_dir}: record {index} is a {type(record).__name__}, expected a list "
                "of values"
            )
        return record if self._convert is None else self._convert_text(record, index)

    def _encode(
        self, records: Sequence[Any], start: int, *, rows: bool = True
    ) -> list[bytes] | np.ndarray:
        """The values of ``records`` (keys from ``start``, for errors); with ``rows``, as the
        rows of one array where the batch has that form."""
        if rows and self._convert is None and isinstance(records, list):
            packed = self._encode_rows(records)
            if packed is not None:
                return packed
        if self._convert is not None or not all(isinstance(r, list) for r in records):
            records = [self._prepare(r, start + i) for i, r in enumerate(records)]
        try:
            return self._encode_all(records)
        except (TypeError, ValueError):
            for i, record in enumerate(records):  # find the record at fault, to name it
                try:
                    self._encode_one(record)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"{self.out_dir}: record {start + i}: {e}") from e
            raise

    # -- writing ----------------------------------------------------------------------------

    def write(self, record: Sequence[Any]) -> None:
        """Append one record (its key: :attr:`count`)."""
        self._check_open()
        self._add_pending(self._encode([record], self.count, rows=False))

    def write_batch(self, records: Iterable[Sequence[Any]]) -> None:
        """Append many records, in order: the fast path (one encoding pass, one append per
        part)."""
        self._check_open()
        batch = records if isinstance(records, list) else list(records)
        self._add_pending(self._encode(batch, self.count))

    def _add_pending(self, values: list[bytes] | np.ndarray) -> None:
        if isinstance(values, list) and self._pending and isinstance(self._pending[-1], list):
            self._pending[-1].extend(values)  # write() after write(): one list
        else:
            self._pending.append(values)
        self.count += len(values)
        self._pending_count += len(values)
        if self._pending_count >= _FLUSH:
            self._flush()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    def _open_part(self, index: int) -> None:
        from sparkbatch.storage.map_file import MapFilePartWriter

        if self._part is not None:
            self._part.close()
        url = join(self.out_dir, part_name(index))
        self._parts.append(url)
        self._part = MapFilePartWriter(
            url,
            index_interval=self.index_interval,
            compression=self.compression,
            storage_options=self.storage_options,
        )
        self._part_index = index

    def _flush(self) -> None:
        """Give the pending values to the part writers, opening parts at split boundaries."""
        key = self._pending_start
        for values in self._pending:
            done = 0
            while done < len(values):
                part = 0 if self.split_size is None else key // self.split_size
                if part != self._part_index:
                    self._open_part(part)
                room = len(values)
                if self.split_size is not None:
                    room = (part + 1) * self.split_size - key
                chunk = values[done : done + room]
                self._part.append_many(range(key, key + len(chunk)), chunk)
                done += len(chunk)
                key += len(chunk)
        self._pending, self._pending_count, self._pending_start = [], 0, key

    def close(self) -> None:
        """Write what is pending, commit the last part, then ``_SUCCESS``
        (NOTE [map file output commit]); an empty writer writes one empty part
        (NOTE [empty map file output]). Closing twice does nothing."""
        if self._closed:
            return
        try:
            self._flush()
            if self._part is None:
                self._open_part(0)
            self._part.close()
            self._part = None
            with open_output(join(self.out_dir, SUCCESS), storage_options=self.storage_options):
                pass
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Discard everything written: the open part and the committed ones."""
        self._closed = True
        part, self._part = self._part, None
        if part is not None:
            exit_ = getattr(part, "__exit__", None)
            try:
                if exit_ is not None:  # the part writer drops its temporary files
                    err = RuntimeError("aborted")
                    exit_(RuntimeError, err, None)
            except Exception:  # noqa: BLE001 (cleaning up after a failure)
                pass
        for url in self._parts:
            fs, path = resolve(url, self.storage_options)
            try:
                if fs.exists(path):
                    fs.rm(path, recursive=True)
            except OSError:
                pass
        self._parts = []

    def __enter__(self) -> MapFileWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class MapFileSequenceWriter(MapFileWriter):
    """Writes sequence records (lists of per-step records) as split Hadoop MapFiles:
    DataVec's ``MapFileSequenceRecordWriter``. Everything else is :class:`MapFileWriter`'s;
    ``convert_text_to`` errors name the record, the step and the field.

    Examples
    --------
    >>> with MapFileSequenceWriter("memory://sparkbatch-doc/seqmf") as writer:
    ...     writer.write([[0.5, 1.0], [1.5, 0.0]])
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    sequences = True

    def _encode_one(self, record: Sequence[Any]) -> bytes:
        return encode_sequence(record)

    def _encode_all(self, records: Sequence[Any]) -> list[bytes]:
        return list(map(encode_sequence, records))

    def _encode_rows(self, records: list[Any]) -> np.ndarray | None:
        return None

    def _prepare(self, record: Any, index: int) -> Any:
        if not isinstance(record, (list, tuple)):
            raise TypeError(
                f"{self.out_dir}: sequence {index} is a {type(record).__name__}, expected a list "
                "of steps"
            )
        if self._convert is None:
            return record
        return [self._convert_text(step, index, s) for s, step in enumerate(record)]
