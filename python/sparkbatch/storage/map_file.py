"""Hadoop MapFiles: a directory holding a sorted ``data`` SequenceFile and its ``index``.

As Hadoop's ``org.apache.hadoop.io.MapFile`` lays them out (docs/format.md, "Hadoop
SequenceFiles and MapFiles"): ``data`` holds the records in increasing key order; ``index`` is a
block-compressed SequenceFile of (key, LongWritable offset in ``data``) for every
``index_interval``-th record. A lookup binary-searches the index (read whole into memory) and
scans ``data`` from the offset found. DataVec's ``MapFileRecordWriter`` writes one MapFile per
split as ``part-r-00000``, ``part-r-00001``, ... under a root directory;
:class:`MapFileReader` reads such a root as one map.

Keys of the classes :mod:`sparkbatch.storage.sequence_file` decodes compare as Python values
(ints numerically, Text by code point, which is Hadoop's UTF-8 byte order, BytesWritable
bytewise); keys of other classes compare as their serialized bytes.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from sparkbatch.errors import FormatError, IncompleteExportError
from sparkbatch.storage.datavec_writables import DATAVEC_CLASSES
from sparkbatch.storage.map_file_writers import SUCCESS
from sparkbatch.storage.paths import _temp_name, is_local, join, resolve
from sparkbatch.storage.sequence_file import (
    SequenceFileReader,
    SequenceFileWriter,
    _split_rows,
    read_vint,
)

__all__ = ["DATA_FILE", "INDEX_FILE", "MapFilePartWriter", "MapFileReader", "map_file_parts"]

DATA_FILE = "data"
INDEX_FILE = "index"
_IO = "org.apache.hadoop.io."
_LONG = _IO + "LongWritable"
_BYTES = _IO + "BytesWritable"


class MapFilePartWriter:
    """Write one Hadoop MapFile directory (``data`` and ``index``), as Hadoop's MapFile.Writer.

    Keys must increase strictly. An index entry (key, offset of its record in ``data``) is
    written for the first record and then for a record at least ``index_interval`` records
    after the last indexed one, where the data file has grown since (with block compression:
    once per block), as Hadoop does.

    Both files are written in a hidden temporary directory next to ``part_dir`` that is renamed
    onto ``part_dir`` on :meth:`close` (an existing ``part_dir`` is replaced); if the ``with``
    block raises, nothing is left. On object stores, which have no directories to rename,
    ``data`` is uploaded first and ``index`` last, so a reader that finds the index finds the
    data.

    Parameters
    ----------
    part_dir : str or os.PathLike
        The MapFile directory (e.g. ``root/part-r-00000``).
    key_class, value_class : str
        Java class names (see :mod:`sparkbatch.storage.sequence_file`).
    index_interval : int, default 1
        Records between index entries (DataVec's default 1; Hadoop's own default is 128).
    compression : {None, "record", "block"}
        Compression of ``data``; ``index`` is block-compressed, as Hadoop writes it.
    storage_options : dict, optional
        Keyword arguments for the file system.

    Examples
    --------
    >>> with MapFilePartWriter("memory://sparkbatch-doc/map/part-r-00000", index_interval=2) as w:
    ...     w.append_many([0, 1, 2], [b"a", b"b", b"c"])
    >>> with MapFileReader("memory://sparkbatch-doc/map/part-r-00000") as r:
    ...     print(r.get(2), list(r.keys()))
    b'c' [0, 1, 2]
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc/map", recursive=True)
    """

    def __init__(
        self,
        part_dir: str | os.PathLike[str],
        key_class: str = _LONG,
        value_class: str = _IO + "BytesWritable",
        *,
        index_interval: int = 1,
        compression: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(index_interval, bool) or not isinstance(index_interval, int):
            raise TypeError(f"index_interval must be an int, got {index_interval!r}")
        if index_interval < 1:
            raise ValueError(f"index_interval must be at least 1, got {index_interval}")
        self.url = os.fspath(part_dir)
        self.index_interval = index_interval
        fs, path = resolve(self.url, storage_options)
        self._local_target: str | None = None
        directory = self.url
        if is_local(fs):
            target = os.path.abspath(path)
            if os.path.exists(target) and not os.path.isdir(target):
                raise FileExistsError(f"{self.url} exists and is not a directory")
            parent, name = os.path.split(target)
            os.makedirs(parent, exist_ok=True)
            directory = os.path.join(parent, _temp_name(name))
            os.mkdir(directory)
            self._local_target = target
        self._directory = directory
        self._size = 0
        self._last_index_count: int | None = None
        self._last_index_pos = -1
        self._last_key: Any = None
        self._closed = False
        self._data: SequenceFileWriter | None = None
        self._index: SequenceFileWriter | None = None
        try:
            self._data = SequenceFileWriter(
                join(directory, DATA_FILE),
                key_class,
                value_class,
                compression=compression,
                storage_options=storage_options,
            )
            self._index = SequenceFileWriter(
                join(directory, INDEX_FILE),
                key_class,
                _LONG,
                compression="block",
                storage_options=storage_options,
                compression_level=1,  # keys and offsets: zlib's fastest level packs them well
            )
        except BaseException as e:
            self._abort(e)
            raise

    def append(self, key: Any, value: Any) -> None:
        """Append one record; its key must be greater than the last one."""
        self.append_many((key,), (value,))

    def append_many(self, keys: Iterable[Any], values: Iterable[Any]) -> None:
        """Append records ``zip(keys, values)``; keys increase strictly (:class:`ValueError`
        naming the first out of order otherwise, and nothing of the batch is written).

        ``values`` may be a 2-D uint8 array whose rows are BytesWritable values of one size
        (:func:`~sparkbatch.storage.record_codec.encode_float_rows`): framed without a Python
        object per record."""
        if self._closed or self._data is None or self._index is None:
            raise ValueError(f"{self.url}: the MapFilePartWriter is closed")
        keys = keys if isinstance(keys, range) else list(keys)
        rows = values if isinstance(values, np.ndarray) else None
        values = rows if rows is not None else list(values)
        if rows is not None and (rows.ndim != 2 or rows.dtype != np.uint8):
            raise TypeError(
                f"{self.url}: values as an array must be 2-D uint8 rows, got a {rows.ndim}-D "
                f"{rows.dtype} array"
            )
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        if not keys:
            return
        longs = _longs(keys) if self._data.key_class == _LONG else None
        if longs is None or not _increasing(longs, self._last_key if self._size else None):
            previous = [self._last_key, *keys[:-1]] if self._size else keys[:-1]
            following = keys if self._size else keys[1:]
            for i, (a, b) in enumerate(zip(previous, following, strict=True)):
                if not a < b:
                    n = self._size + i + (0 if self._size else 1)
                    raise ValueError(
                        f"{self.url}: MapFile keys must increase strictly: record {n} has key "
                        f"{b!r} after {a!r}"
                    )
        if (
            longs is not None
            and self._data.compression is None
            and self._data.value_class == _BYTES
            and (rows is not None or all(type(v) is bytes for v in values))
        ):  # the usual part (LongWritable -> BytesWritable, no compression): framed at once
            starts = self._data._append_long_bytes(longs, values)
            first = self._size if self._last_index_count is None else (
                self._last_index_count + self.index_interval
            )
            # every record starts past the one before, so each due record is indexed
            due = np.arange(max(first - self._size, 0), len(keys), self.index_interval)
            if due.size:
                self._index._append_encoded(
                    _long_rows(longs[due]), _long_rows(np.asarray(starts)[due])
                )
                self._last_index_pos = int(starts[due[-1]])
                self._last_index_count = self._size + int(due[-1])
            self._size += len(keys)
            self._last_key = keys[-1]
            return
        if rows is not None:
            values = _split_rows(rows)
        encode_key = self._data._encode_key
        encode_value = self._data._encode_value
        key_bytes = _long_bytes(longs) if longs is not None else [encode_key(k) for k in keys]
        value_bytes = [encode_value(v) for v in values]
        starts = self._data._append_encoded(key_bytes, value_bytes)
        index_keys: list[bytes] = []
        index_positions: list[int] = []
        interval = self.index_interval
        for i, pos in enumerate(starts):  # Hadoop's MapFile.Writer.append
            size = self._size + i
            due_now = self._last_index_count is None or size >= self._last_index_count + interval
            if due_now and pos > self._last_index_pos:
                index_keys.append(key_bytes[i])
                index_positions.append(pos)
                self._last_index_pos = pos
                self._last_index_count = size
        if index_keys:  # the positions as LongWritables, all at once
            positions = _long_bytes(np.asarray(index_positions, np.int64))
            self._index._append_encoded(index_keys, positions)
        self._size += len(keys)
        self._last_key = keys[-1]

    def __len__(self) -> int:
        """Records appended so far."""
        return self._size

    def close(self) -> None:
        """Write both files and move the directory into place. Closing twice is a no-op."""
        if self._closed:
            return
        try:
            assert self._data is not None and self._index is not None
            self._data.close()
            self._index.close()
            if self._local_target is not None:
                self._commit_local(self._local_target)
        except BaseException as e:
            self._abort(e)
            raise
        self._closed = True

    def _commit_local(self, target: str) -> None:
        old = None
        if os.path.lexists(target):
            parent, name = os.path.split(target)
            old = os.path.join(parent, _temp_name(name))
            os.replace(target, old)
        try:
            os.replace(self._directory, target)
        except BaseException:
            if old is not None:  # put the previous part back: never leave neither
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _abort(self, error: BaseException) -> None:
        self._closed = True
        for writer in (self._index, self._data):
            if writer is not None:
                writer._abort(error)
        if self._local_target is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> MapFilePartWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self._abort(exc)


class _Part:
    """One MapFile directory: its index read into memory, its data file kept open for lookups."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None) -> None:
        self.url = url
        self.data_url = join(url, DATA_FILE)
        self.index_url = join(url, INDEX_FILE)
        self.storage_options = storage_options
        try:
            with SequenceFileReader(self.index_url, storage_options=storage_options) as index:
                entries = list(index)
                index_key_class, index_value_class = index.key_class, index.value_class
        except FileNotFoundError:
            raise FormatError(f"{self.index_url}: a MapFile index, found no such file") from None
        try:
            self._data: SequenceFileReader | None = SequenceFileReader(
                self.data_url, storage_options=storage_options
            )
        except FileNotFoundError:
            raise FormatError(f"{self.data_url}: a MapFile's data, found no such file") from None
        self.key_class = self._data.key_class
        self.value_class = self._data.value_class
        try:
            self._check(entries, index_key_class, index_value_class)
        except BaseException:
            self.close()
            raise
        self.keys = [k for k, _ in entries]
        self.positions = [p for _, p in entries]
        self._last: tuple[Any] | None = None  # (the greatest key,) once read

    def _check(self, entries: list, key_class: str, value_class: str) -> None:
        """The index's classes, order and first offset, as Hadoop's reader expects them."""
        assert self._data is not None
        if (key_class, value_class) != (self.key_class, _LONG):
            raise FormatError(
                f"{self.index_url}: expected ({self.key_class}, {_LONG}) entries, found "
                f"({key_class}, {value_class})"
            )
        bad = _first_decrease([p for _, p in entries])
        keys = [k for k, _ in entries]
        longs = _longs(keys)
        bad_key = _first_decrease(longs) if longs is not None else next(
            (i for i in range(1, len(keys)) if not keys[i - 1] <= keys[i]), None
        )
        if bad is None or (bad_key is not None and bad_key < bad):
            bad = bad_key
        if bad is not None:
            raise FormatError(
                f"{self.index_url}: entry {bad}: expected keys and offsets in increasing "
                f"order, found {entries[bad - 1]!r} then {entries[bad]!r}"
            )
        if entries and entries[0][1] < self._data.header_end:
            raise FormatError(
                f"{self.index_url}: entry 0: expected an offset in {self.data_url} after its "
                f"header ({self._data.header_end} bytes), found {entries[0][1]}"
            )

    def last_key(self) -> Any:
        """The part's greatest key (None when empty): read from the last indexed record on,
        once, then kept."""
        if self._last is None:
            assert self._data is not None
            last = None
            if self.positions:
                self._data.seek(self.positions[-1])
                for key, _ in self._data:
                    last = key
            self._last = (last,)
        return self._last[0]

    def get(self, key: Any) -> Any:
        """The value of ``key`` (KeyError if absent): as Hadoop's MapFile.Reader.get."""
        i = bisect.bisect_right(self.keys, key) - 1
        if i < 0:
            raise KeyError(key)
        assert self._data is not None
        self._data.seek(self.positions[i])
        for k, v in self._data:
            if k == key:
                return v
            if k > key:
                break
        raise KeyError(key)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        with SequenceFileReader(self.data_url, storage_options=self.storage_options) as data:
            yield from data

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None


class MapFileReader:
    """Read a Hadoop MapFile directory, or a root of ``part-*`` MapFiles read as one map.

    Every part's index is read into memory when the reader opens (as Hadoop's reader does on
    first use); ``data`` files are read on demand. The number of records is not stored in a
    MapFile, so there is no ``len()``: count with ``sum(1 for _ in reader.keys())``.

    Parameters
    ----------
    part_dir_or_root : str or os.PathLike
        A directory holding ``data`` and ``index``, or an output whose ``part-*``
        subdirectories do, as :func:`map_file_parts` lists them: in the order of their
        numbers, and only when the output is complete (``_SUCCESS``, or DataVec's parts).
    storage_options : dict, optional
        Keyword arguments for the file system.

    Raises
    ------
    FormatError
        No MapFile there, or an index or data file is missing or corrupt; the message names
        the file.
    IncompleteExportError
        A root of parts without ``_SUCCESS``: the output is still being written, or its
        writer failed (NOTE [map file output commit] in
        :mod:`sparkbatch.storage.map_file_writers`).
    """

    def __init__(
        self,
        part_dir_or_root: str | os.PathLike[str],
        *,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = os.fspath(part_dir_or_root)
        try:
            urls = map_file_parts(self.url, storage_options)
        except FileNotFoundError as e:
            raise FormatError(
                f"{self.url}: expected a MapFile (data and index) or part-* MapFile "
                f"directories, found neither ({e})"
            ) from None
        self._parts: list[_Part] = []
        try:
            for url in urls:
                self._parts.append(_Part(url, storage_options))
        except BaseException:
            self.close()
            raise
        classes = {(p.key_class, p.value_class) for p in self._parts}
        if len(classes) > 1:
            self.close()
            raise FormatError(f"{self.url}: expected one key and value class, found {classes}")
        self.key_class, self.value_class = classes.pop()
        # Parts by first indexed key, for lookups (empty parts have no entries).
        self._by_first = sorted((p for p in self._parts if p.keys), key=lambda p: p.keys[0])
        self._firsts = [p.keys[0] for p in self._by_first]

    @property
    def parts(self) -> list[str]:
        """The MapFile directories read, in order."""
        return [p.url for p in self._parts]

    def get(self, key: Any) -> Any:
        """The value stored under ``key``; :class:`KeyError` if there is none."""
        candidates = self._by_first[: bisect.bisect_right(self._firsts, key)]
        for i, part in enumerate(reversed(candidates)):  # usually the last is the one
            # a part before it holds the key only if its keys reach it (they overlap); split
            # outputs' parts do not, so a missing key reads one part, not all
            if i and part.last_key() < key:
                continue
            with contextlib.suppress(KeyError):
                return part.get(key)
        raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        try:
            self.get(key)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        """All ``(key, value)`` records in key order (parts merged)."""
        if len(self._parts) == 1:
            return iter(self._parts[0])
        return heapq.merge(*self._parts, key=lambda kv: kv[0])

    def keys(self) -> Iterator[Any]:
        """All keys in order."""
        return (k for k, _ in self)

    def close(self) -> None:
        """Close the data files."""
        for part in self._parts:
            part.close()

    def __enter__(self) -> MapFileReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _longs(keys: list[Any] | range) -> np.ndarray | None:
    """LongWritable keys as an int64 array, where every key is a Python int in range (the
    common case, encoded at once); None sends them one by one through the checked encoder."""
    if isinstance(keys, range):
        if keys and not (-(2**63) <= min(keys[0], keys[-1]) and max(keys[0], keys[-1]) < 2**63):
            return None
        return np.arange(keys.start, keys.stop, keys.step, dtype=np.int64)
    if not all(type(k) is int for k in keys):
        return None
    try:
        return np.asarray(keys, np.int64)
    except OverflowError:
        return None


def _first_decrease(values: list[int] | np.ndarray) -> int | None:
    """The first ``i`` with ``values[i] < values[i - 1]`` (ints), or None."""
    array = np.asarray(values, np.int64)
    found = np.flatnonzero(array[1:] < array[:-1])
    return int(found[0]) + 1 if found.size else None


def _increasing(longs: np.ndarray, last: Any) -> bool:
    """Whether ``longs`` increase strictly, and start above ``last`` (None: no key yet)."""
    if last is not None and not last < longs[0]:
        return False
    return bool(np.all(longs[1:] > longs[:-1]))


def _long_rows(longs: np.ndarray) -> np.ndarray:
    """Each of ``longs`` as a LongWritable (8 bytes, big-endian): the rows of a uint8 array."""
    return longs.astype(">i8").view(np.uint8).reshape(-1, 8)


def _long_bytes(longs: np.ndarray) -> list[bytes]:
    """Each of ``longs`` as a LongWritable, a bytes object each."""
    return _split_rows(_long_rows(longs))


def map_file_parts(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The MapFile directories of a map file output, in part order.

    ``url`` is a directory of ``part-*`` MapFiles with ``_SUCCESS`` (what
    :class:`~sparkbatch.storage.MapFileWriter` and Hadoop jobs write), a directory of parts
    DataVec's ``MapFileRecordWriter`` or ``MapFileSequenceRecordWriter`` wrote (no
    ``_SUCCESS``: NOTE [DataVec outputs have no _SUCCESS]), or one MapFile directory (``data``
    and ``index``).

    Raises
    ------
    FileNotFoundError
        ``url`` does not exist, or holds neither parts nor a MapFile.
    IncompleteExportError
        ``url`` holds parts but no ``_SUCCESS``, and not every part is DataVec's: a conversion
        still running or failed (NOTE [map file output commit] in
        :mod:`sparkbatch.storage.map_file_writers`).
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
    urls = [join(url, name) for name in parts]
    if SUCCESS not in entries:
        foreign = _not_datavec(fs, [resolve(join(u, "data"), options)[1] for u in urls])
        if foreign is not None:
            raise IncompleteExportError(
                f"{url} holds {len(parts)} map file parts but no {SUCCESS}: the conversion that "
                f"writes it is still running or failed; write it again ({foreign}; only "
                "DataVec-written parts are read without it)"
            )
    return urls


# NOTE [DataVec outputs have no _SUCCESS]: DataVec's MapFileRecordWriter and
# MapFileSequenceRecordWriter write their part-r-NNNNN MapFiles straight into the output
# directory and no marker when they finish, so a DataVec output cannot say whether it is whole.
# A directory without _SUCCESS is read when every part's data file is a SequenceFile whose value
# class is DataVec's RecordWritable or SequenceRecordWritable (the headers alone are read, on the
# driver): sparkbatch never writes those, so a partial sparkbatch output (parts of BytesWritable,
# NOTE [map file output commit]) is still refused. A DataVec part cut short by a failed writer is
# a FormatError when the job reads it.


def _not_datavec(fs: Any, data_paths: list[str]) -> str | None:
    """Why the parts whose ``data`` files are at ``data_paths`` are not all DataVec's, or None.

    Reads each file's header only: the magic, version, key class and value class (Text each).
    """
    for path in data_paths:
        try:
            head = fs.cat_file(path, start=0, end=_HEADER_PREFIX)
        except FileNotFoundError:
            return f"{path} is missing"
        value_class = _value_class(head)
        if value_class not in DATAVEC_CLASSES:
            return f"the values of {path} are {value_class or 'not a SequenceFile'}"
    return None


_HEADER_PREFIX = 1024  # bytes that hold a SequenceFile's magic and its two class names


def _value_class(head: bytes) -> str | None:
    """The value class named in the first bytes of a SequenceFile, or None."""
    if head[:3] != b"SEQ":
        return None
    try:
        key_length, start = read_vint(head, 4)
        value_length, start = read_vint(head, start + key_length)
    except IndexError:
        return None
    raw = head[start : start + value_length]
    if key_length < 0 or value_length < 0 or len(raw) != value_length:
        return None
    return raw.decode("utf-8", "replace")


def _part_number(name: str) -> tuple[int, str]:
    """Parts in the order of their numbers: ``part-r-99999`` before ``part-r-100000`` (a
    sort by name would put it after, and its records out of key order)."""
    number = name.rsplit("-", 1)[-1]
    return (int(number) if number.isdigit() else -1, name)
