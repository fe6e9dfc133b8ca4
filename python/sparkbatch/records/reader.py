"""The record reader protocol, and a base class for readers of one file at a time.

A record reader turns files into records (a record is a ``list`` of values: numbers, text,
numpy arrays), as DataVec's ``RecordReader`` does. Everything that consumes records on one
machine (:class:`sparkbatch.convert.RecordReaderDataSetIterator`,
:class:`sparkbatch.convert.MultiDataSetBuilder`) and on Spark
(:class:`sparkbatch.spark.FileToRecords`) takes any :class:`RecordReader`;
:class:`~sparkbatch.records.CSVRecordReader` is the first implementation.

NOTE [what a reader must have]: the members of :class:`RecordReader`, all of them:
``initialize(paths, storage_options=None)`` (returns the reader), iteration (``__iter__``,
``__next__``, and DataVec's ``has_next()`` / ``next()``), ``reset()``, the attributes
``current_source`` / ``current_line`` (where the last record came from, None where unknown:
errors name them), and ``parse(data, source)``: the records of one file from its bytes, which is
what Spark's ``sc.binaryFiles(dir).flatMap(FileToRecords(reader))`` calls on the executors, so a
reader must pickle. Consumers check ``isinstance(reader, RecordReader)`` once and then trust it.

NOTE [custom readers]: for a format read one whole file at a time (one example per file, or a
few), subclass :class:`FileRecordReader` and write only ``parse``: initialisation, iteration,
``reset``, ``has_next``/``next``, pickling and the error notes come from the base class.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from sparkbatch.storage import list_files, read_bytes

__all__ = ["FileRecordReader", "Record", "RecordReader", "list_sources", "parse_file"]

Record = list[Any]
"""One record: a list of values (``float`` or ``str`` for CSV)."""

PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@runtime_checkable
class RecordReader(Protocol):
    """What a record reader implements (NOTE [what a reader must have] in this module).

    Examples
    --------
    >>> from sparkbatch.records import CSVRecordReader
    >>> isinstance(CSVRecordReader(), RecordReader), isinstance([[1.0, 2.0]], RecordReader)
    (True, False)
    """

    current_source: str | None
    current_line: int | None

    def initialize(
        self, path_or_paths: PathOrPaths, storage_options: dict[str, Any] | None = None
    ) -> RecordReader:
        """Set the files (paths, directories or fsspec URLs) and go back to the start."""
        ...

    def __iter__(self) -> Iterator[Record]: ...

    def __next__(self) -> Record: ...

    def has_next(self) -> bool:
        """Whether another record follows."""
        ...

    def next(self) -> Record:
        """The next record; StopIteration at the end."""
        ...

    def reset(self) -> None:
        """Go back to the first record of the first file."""
        ...

    def parse(self, data: bytes, source: str) -> list[Record]:
        """The records of one file, from its bytes; ``source`` names it in errors."""
        ...


def list_sources(
    path_or_paths: PathOrPaths, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """The files a reader iterates: each path, or every file below each directory (sorted by
    path; names starting with ``.`` or ``_`` are left out, see
    :func:`sparkbatch.storage.list_files`), in the order given.

    Raises FileNotFoundError for a path that does not exist.
    """
    single = isinstance(path_or_paths, (str, os.PathLike))
    paths = [path_or_paths] if single else path_or_paths
    sources: list[str] = []
    for path in paths:  # type: ignore[union-attr]
        sources.extend(list_files(path, storage_options=storage_options))
    return sources


def parse_file(parse: Callable[[bytes, str], Any], data: bytes, source: str, reader: object) -> Any:
    """``parse(data, source)``, with ``source`` added to an error that does not name it.

    An exception whose message already holds ``source`` (sparkbatch's own errors name their
    file) passes unchanged; any other keeps its type and gains the note ``while <reader>
    parsed <source>``, which every traceback shows (Spark's task errors too; on Python 3.10,
    which has no notes, it is added to the message).

    Examples
    --------
    >>> def parse(data, source):
    ...     return [[float(x) for x in data.split()]]
    >>> parse_file(parse, b"1 2", "a.txt", "MyReader()")
    [[1.0, 2.0]]
    >>> import traceback
    >>> try:
    ...     parse_file(parse, b"1 x", "b.txt", "MyReader()")
    ... except ValueError as e:
    ...     print("while MyReader() parsed b.txt" in "".join(traceback.format_exception(e)))
    True
    """
    try:
        return parse(data, source)
    except Exception as e:
        if source not in str(e):
            note = f"while {reader} parsed {source}"
            if hasattr(e, "add_note"):  # Python 3.11+
                e.add_note(note)
            elif e.args and isinstance(e.args[0], str):
                e.args = (f"{e.args[0]} ({note})", *e.args[1:])
        raise


class FileRecordReader(abc.ABC):
    """Base class of readers that read one whole file at a time: write :meth:`parse`.

    :meth:`initialize` takes files, directories or fsspec URLs; iterating reads each file whole
    (:func:`sparkbatch.storage.read_bytes`), calls :meth:`parse` on its bytes and returns the
    records one by one. :attr:`current_source` names the file of the last record returned;
    :attr:`current_line` is None unless a subclass overrides :meth:`locate` (for formats with
    lines). Readers pickle: the settings, the file names and the position travel, and the file
    being read is read again where the copy goes on.

    Examples
    --------
    A format of one example per file, ``"x1 x2 x3 label"``:

    >>> class SpaceSeparated(FileRecordReader):
    ...     def parse(self, data: bytes, source: str) -> list[list[float]]:
    ...         return [[float(v) for v in data.split()]]
    >>> from sparkbatch.storage import open_output
    >>> for i, text in enumerate([b"0.1 0.2 0.3 1", b"0.4 0.5 0.6 0"]):
    ...     with open_output(f"memory://sparkbatch-doc/ss/{i}.txt") as f:
    ...         _ = f.write(text)
    >>> reader = SpaceSeparated().initialize("memory://sparkbatch-doc/ss")
    >>> [(r, reader.current_source) for r in reader]  # doctest: +NORMALIZE_WHITESPACE
    [([0.1, 0.2, 0.3, 1.0], 'memory://sparkbatch-doc/ss/0.txt'),
     ([0.4, 0.5, 0.6, 0.0], 'memory://sparkbatch-doc/ss/1.txt')]
    >>> isinstance(reader, RecordReader)
    True
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    current_source: str | None = None
    current_line: int | None = None
    # class-level defaults: a subclass's __init__ need not call this one's (there is none)
    _sources: tuple[str, ...] = ()
    _storage_options: dict[str, Any] | None = None
    _initialized = False
    _file_index = 0  # the next file to read
    _records: list[Record] | None = None  # the records of the file being returned
    _lines: Sequence[int | None] | None = None  # their lines, if locate() knows them
    _position = 0  # the next of _records to return
    _resume = 0  # after unpickling: the position in the file read again

    @abc.abstractmethod
    def parse(self, data: bytes, source: str) -> list[Record]:
        """The records of one file, from its bytes (``source`` names it, for errors)."""

    def locate(self, records: list[Record], data: bytes, source: str) -> Sequence[int | None]:
        """The 1-based line of each of ``records`` in ``source``, for :attr:`current_line` and
        error messages; by default unknown (None each). Override for line-based formats."""
        return [None] * len(records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def initialize(
        self, path_or_paths: PathOrPaths, storage_options: dict[str, Any] | None = None
    ) -> FileRecordReader:
        """Set the files to read and go back to the start.

        Parameters
        ----------
        path_or_paths : str, os.PathLike or sequence of them
            Local paths or fsspec URLs of files or directories; see :func:`list_sources`.
        storage_options : dict, optional
            Keyword arguments for the file systems (credentials, endpoint, ...).

        Returns
        -------
        FileRecordReader
            This reader, so that ``for r in MyReader().initialize(path)`` works.
        """
        self._sources = tuple(list_sources(path_or_paths, storage_options))
        self._storage_options = dict(storage_options) if storage_options else None
        self._initialized = True
        self.reset()
        return self

    @property
    def sources(self) -> list[str]:
        """The files this reader iterates, in order."""
        return list(self._sources)

    def _fill(self) -> bool:
        """Read files until one has a record left; False at the end of the last."""
        if not self._initialized:
            raise RuntimeError(f"call initialize(paths) before reading records from {self!r}")
        while self._records is None or self._position >= len(self._records):
            if self._file_index >= len(self._sources):
                return False
            source = self._sources[self._file_index]
            data = read_bytes(source, storage_options=self._storage_options)
            records = list(parse_file(self.parse, data, source, self))
            lines = list(self.locate(records, data, source))
            if len(lines) != len(records):
                raise ValueError(
                    f"{self!r}.locate gave {len(lines)} lines for the {len(records)} records of "
                    f"{source}; it must give one per record (None where unknown)"
                )
            self._lines = lines
            self._records, self._position, self._resume = records, self._resume, 0
            self._file_index += 1
        return True

    def has_next(self) -> bool:
        """Whether another record follows (DataVec's ``hasNext``)."""
        return self._fill()

    def next(self) -> Record:
        """The next record (DataVec's ``next``); StopIteration at the end."""
        return self.__next__()

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        if not self._fill():
            raise StopIteration
        assert self._records is not None and self._lines is not None
        record = self._records[self._position]
        self.current_source = self._sources[self._file_index - 1]
        self.current_line = self._lines[self._position]
        self._position += 1
        return record

    def reset(self) -> None:
        """Go back to the first record of the first file."""
        self._file_index, self._records, self._lines, self._position = 0, None, None, 0
        self._resume = 0
        self.current_source = self.current_line = None

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Nothing to close (each file is read whole)."""

    def __enter__(self) -> FileRecordReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if state.get("_records") is not None:  # the current file is read again when needed
            state["_file_index"] -= 1
            state["_records"] = state["_lines"] = None
            state["_resume"] = state.get("_position", 0)
        return state
