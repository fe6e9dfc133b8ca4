"""CSV sequence record reader: DataVec's ``CSVSequenceRecordReader``, one file per sequence.

A sequence record is a :class:`SequenceRecord`: a ``list`` with one record per time step (each a
``list`` of values: ``float`` where the field is a number of the native parser's grammar, else
the ``str``: NOTE [one number grammar]), which remembers the file it came from
(``source``) and the line of each step (``lines``), so that later errors can name them. It
pickles with both.

NOTE [sequence files]: each file is read whole and parsed by :meth:`CSVSequenceRecordReader.
parse_sequence`, the same function Spark's ``SequenceFileToRecords`` calls on the bytes of
``sc.binaryFiles``. ``skip_lines`` physical lines are skipped at the start of every file (DataVec's
``skipNumLines``); blank lines are skipped too (they count for line numbers). Compressed files
(``.gz``, ``.bz2``, ``.xz``, by name) are decompressed, a UTF-8 byte order mark is dropped, and
the first bytes are checked for what is not CSV text, as every CSV reader of sparkbatch does
(:mod:`sparkbatch.records.csv_files`). Unlike DataVec (``String.split``, no quoting), fields are
split by Python's :mod:`csv` module: quoted fields may hold the delimiter.

NOTE [empty sequences]: a file with no step (empty, blank, or only its ``skip_lines`` header
lines) raises :class:`~sparkbatch.errors.CsvError` naming it; DataVec returns an empty sequence
that fails later, far from its file.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from fsspec.compression import compr
from fsspec.utils import infer_compression

from sparkbatch.errors import CsvError
from sparkbatch.records.csv import Record, _check_char, is_blank_row
from sparkbatch.records.csv_files import HEAD_BYTES, UTF8_BOM, check_head, reading
from sparkbatch.storage import list_files, read_bytes

__all__ = ["CSVSequenceRecordReader", "SequenceRecord", "empty_sequence_error", "sequence_bytes"]

_PathLike = str | os.PathLike[str]


class SequenceRecord(list):  # type: ignore[type-arg]
    """One sequence: a list of per-step records, with the file and lines it came from.

    Parameters
    ----------
    steps : iterable of records
        One record (a list of values) per time step.
    source : str, optional
        The file or URL the sequence was read from.
    lines : sequence of int, optional
        The 1-based line of each step in ``source``.

    Examples
    --------
    >>> import pickle
    >>> s = SequenceRecord([[1.0, 2.0], [3.0, 4.0]], source="a.csv", lines=[1, 2])
    >>> s, s.source, s.lines
    ([[1.0, 2.0], [3.0, 4.0]], 'a.csv', (1, 2))
    >>> pickle.loads(pickle.dumps(s)).source
    'a.csv'
    """

    __slots__ = ("source", "lines")

    def __init__(
        self,
        steps: Any = (),
        source: str | None = None,
        lines: Sequence[int] | None = None,
    ) -> None:
        super().__init__(steps)
        self.source = source
        self.lines = None if lines is None else tuple(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SequenceRecord, (list(self), self.source, self.lines))

    def line(self, step: int) -> int | None:
        """The 1-based line of ``step`` in :attr:`source`, None if unknown."""
        if self.lines is None or not 0 <= step < len(self.lines):
            return None
        return self.lines[step]


def empty_sequence_error(source: str | None, text: str, skip_lines: int) -> CsvError:
    """The error for a sequence file without a step (NOTE [empty sequences]): ``text`` is the
    file's text, ``skip_lines`` its header lines.

    Examples
    --------
    >>> print(empty_sequence_error("a.csv", "x,y\\n", 1))
    a.csv: expected at least one step (a line of values), found none after the 1 header line ...
    """
    if not text:
        found = "found an empty file"
    elif not text.strip() or not skip_lines:
        found = "found only blank lines"
    else:
        s = "s" if skip_lines > 1 else ""
        found = f"found none after the {skip_lines} header line{s} (skip_lines={skip_lines})"
    name = "<bytes>" if source is None else source
    return CsvError(
        f"{name}: expected at least one step (a line of values), {found}",
        source=source,
        text=text[:80],
        expected="at least one step",
    )


def sequence_bytes(data: bytes, source: str) -> bytes:
    """The text of a sequence file from its bytes: decompressed if ``source``'s name says so,
    checked for what is not CSV text, and without a UTF-8 byte order mark (NOTE [sequence
    files]). For parsers that take bytes, as the partition-wide path's native one.

    Examples
    --------
    >>> import gzip
    >>> sequence_bytes(gzip.compress(b"\\xef\\xbb\\xbf1,2\\n"), "a.csv.gz")
    b'1,2\\n'
    """
    data = bytes(data)
    compression = infer_compression(source)
    if compression is not None and compression in compr:
        with reading(source, line=1):
            with compr[compression](io.BytesIO(data)) as f:
                data = f.read()
    check_head(source, data[:HEAD_BYTES])
    return data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data


# NOTE [one number grammar]: a field is a number if the native parser of the partition-wide
# path (csrc/csv_parser.cpp, parse_decimal) reads it as one: blanks (space, tab) around
# ``[+-] (digits [. digits] | . digits) [(e|E) [+-] digits]``, or nan, inf, infinity in any case.
# Python's float() accepts more ("1_0", non-ASCII digits, other white space): those fields stay
# text here, and conversions (sparkbatch.convert.sequence_table) refuse text off this grammar,
# so the per-record chain and the native path agree on every field.
NUMBER = re.compile(
    r"[ \t]*[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)[ \t]*",
    re.IGNORECASE,
)
# Characters outside NUMBER: float() accepting a field made only of the others means NUMBER does.
_OFF_GRAMMAR = re.compile(r"[^0-9.eE+\-nNaAiIfFtTyY \t]")


def number_value(field: str) -> float | str:
    """A CSV field as a record value: a ``float`` if it is a number of the native parser's
    grammar (NOTE [one number grammar]), else the field.

    Examples
    --------
    >>> number_value(" 2.5 "), number_value("-INF"), number_value("1_0"), number_value("")
    (2.5, -inf, '1_0', '')
    """
    return float(field) if NUMBER.fullmatch(field) else field


def _values(fields: list[str]) -> Record:
    try:  # the usual all-numeric line: one C-level conversion of every field
        values = list(map(float, fields))
    except ValueError:
        return [number_value(field) for field in fields]
    if _OFF_GRAMMAR.search("".join(fields)) is None:
        return values
    return [number_value(field) for field in fields]


class CSVSequenceRecordReader:
    """Reads CSV files as sequences, one file per sequence: DataVec's ``CSVSequenceRecordReader``.

    Each line of a file is one time step. Call :meth:`initialize` with the files (or
    directories, or fsspec URLs), then iterate (``for sequence in reader``, or the DataVec style
    ``while reader.has_next(): reader.next_sequence()``); :meth:`parse_sequence` parses the
    bytes of one file (what Spark's ``sc.binaryFiles`` gives). Readers pickle: only the
    settings, the file names and the position travel.

    Parameters
    ----------
    skip_lines : int, default 0
        Lines skipped at the start of each file (headers).
    delimiter : str, default ","
        The one-character field separator.
    quote : str, default '"'
        The one-character quote; ``""`` turns quoting off.

    Attributes
    ----------
    current_source : str or None
        The file or URL of the last sequence returned.

    Examples
    --------
    >>> from sparkbatch.storage import open_output
    >>> for name, text in [("a.csv", b"t,x,y\\n0,1.5,0\\n1,2.5,1\\n"), ("b.csv", b"t,x,y\\n0,7,1\\n")]:
    ...     with open_output(f"memory://sparkbatch-doc/seq/{name}") as f:
    ...         _ = f.write(text)
    >>> reader = CSVSequenceRecordReader(skip_lines=1).initialize("memory://sparkbatch-doc/seq")
    >>> for sequence in reader:
    ...     print(sequence, reader.current_source)
    [[0.0, 1.5, 0.0], [1.0, 2.5, 1.0]] memory://sparkbatch-doc/seq/a.csv
    [[0.0, 7.0, 1.0]] memory://sparkbatch-doc/seq/b.csv
    >>> CSVSequenceRecordReader().parse_sequence(b"1,2\\n3,x\\n", "c.csv")
    [[1.0, 2.0], [3.0, 'x']]
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """  # noqa: E501

    def __init__(self, skip_lines: int = 0, delimiter: str = ",", quote: str = '"') -> None:
        if isinstance(skip_lines, bool) or not isinstance(skip_lines, int) or skip_lines < 0:
            raise ValueError(f"skip_lines must be an int >= 0, got {skip_lines!r}")
        self.skip_lines = skip_lines
        self.delimiter = _check_char("delimiter", delimiter, allow_empty=False)
        self.quote = _check_char("quote", quote, allow_empty=True)
        if self.quote == self.delimiter:
            raise ValueError(f"quote and delimiter must differ, both are {quote!r}")
        self.current_source: str | None = None
        self._sources: list[str] = []
        self._storage_options: dict[str, Any] | None = None
        self._initialized = False
        self._index = 0

    def __repr__(self) -> str:
        return (
            f"CSVSequenceRecordReader(skip_lines={self.skip_lines}, "
            f"delimiter={self.delimiter!r}, quote={self.quote!r})"
        )

    # -- setup ---------------------------------------------------------------------------------

    def initialize(
        self,
        path_or_paths: _PathLike | Sequence[_PathLike],
        storage_options: dict[str, Any] | None = None,
    ) -> CSVSequenceRecordReader:
        """Set the files to read (one sequence each) and go back to the start.

        Parameters
        ----------
        path_or_paths : str, os.PathLike or sequence of them
            Local paths or fsspec URLs of files or directories. A directory stands for every file
            below it, sorted by path (names starting with ``.`` or ``_`` are left out, see
            :func:`sparkbatch.storage.list_files`). Files are read in the order given.
        storage_options : dict, optional
            Keyword arguments for the file systems (credentials, endpoint, ...).

        Returns
        -------
        CSVSequenceRecordReader
            This reader, so that ``for s in CSVSequenceRecordReader().initialize(path)`` works.

        Raises
        ------
        FileNotFoundError
            A path does not exist.
        """
        paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else path_or_paths
        sources: list[str] = []
        for path in paths:
            sources.extend(list_files(path, storage_options=storage_options))
        self._sources = sources
        self._storage_options = dict(storage_options) if storage_options else None
        self._initialized = True
        self.reset()
        return self

    @property
    def sources(self) -> list[str]:
        """The files this reader iterates, one sequence each, in order."""
        return list(self._sources)

    def _dialect(self) -> dict[str, Any]:
        if self.quote:
            return {"delimiter": self.delimiter, "quotechar": self.quote, "strict": True}
        return {"delimiter": self.delimiter, "quoting": csv.QUOTE_NONE, "strict": True}

    # -- one file ------------------------------------------------------------------------------

    def parse_sequence(self, data: bytes, source: str | None = None) -> SequenceRecord:
        """Parse the whole text of one file into a sequence (one record per non-blank line).

        The function behind Spark's ``SequenceFileToRecords``; see NOTE [sequence files] in this
        module. ``skip_lines`` applies.

        Parameters
        ----------
        data : bytes-like
            The file's bytes (compressed if ``source``'s name says so).
        source : str, optional
            The file or URL, for error messages and the record's ``source``.

        Returns
        -------
        SequenceRecord

        Raises
        ------
        CsvError
            The text is not CSV, not UTF-8, has no step (NOTE [empty sequences]), or is not
            well-formed; the message names ``source`` and the line.

        Examples
        --------
        >>> reader = CSVSequenceRecordReader(skip_lines=1)
        >>> seq = reader.parse_sequence(b"a,b\\n1,2\\n\\n3,4\\n", "s.csv")
        >>> seq, seq.source, seq.lines
        ([[1.0, 2.0], [3.0, 4.0]], 's.csv', (2, 4))
        >>> reader.parse_sequence(b"a,b\\n", "h.csv")
        Traceback (most recent call last):
        ...
        sparkbatch.errors.CsvError: h.csv: expected at least one step (a line of values), found none after the 1 header line (skip_lines=1)
        """  # noqa: E501
        name = "<bytes>" if source is None else str(source)
        data = sequence_bytes(data, name)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise CsvError(
                f"{name}, line {line}: expected UTF-8 text, found {e}",
                source=source,
                line=line,
                text=str(e),
                expected="UTF-8 text",
            ) from e
        rows = csv.reader(
            itertools.islice(io.StringIO(text, newline=""), self.skip_lines, None),
            **self._dialect(),
        )
        steps: list[Record] = []
        lines: list[int] = []
        line = self.skip_lines + 1  # where the next row starts
        try:
            for fields in rows:
                if not is_blank_row(fields):
                    steps.append(_values(fields))
                    lines.append(line)
                line = self.skip_lines + rows.line_num + 1
        except csv.Error as e:
            raise CsvError(
                f"{name}, line {line}: expected well-formed CSV, found {e}",
                source=source,
                line=line,
                text=str(e),
                expected="well-formed CSV",
            ) from e
        if not steps:
            raise empty_sequence_error(source, text, self.skip_lines)
        return SequenceRecord(steps, source, lines)

    # -- iteration -----------------------------------------------------------------------------

    def _read(self, index: int) -> SequenceRecord:
        source = self._sources[index]
        with reading(source):
            data = read_bytes(source, storage_options=self._storage_options)
        return self.parse_sequence(data, source)

    def has_next(self) -> bool:
        """Whether another sequence (file) follows (DataVec's ``hasNext``)."""
        if not self._initialized:
            raise RuntimeError("call initialize(paths) before reading sequences")
        return self._index < len(self._sources)

    def next_sequence(self) -> SequenceRecord:
        """The next sequence (DataVec's ``sequenceRecord``); StopIteration at the end."""
        if not self.has_next():
            raise StopIteration
        sequence = self._read(self._index)
        self._index += 1
        self.current_source = sequence.source
        return sequence

    next = next_sequence

    def __iter__(self) -> Iterator[SequenceRecord]:
        return self

    def __next__(self) -> SequenceRecord:
        return self.next_sequence()

    def reset(self) -> None:
        """Go back to the first file."""
        self._index = 0
        self.current_source = None

    def close(self) -> None:
        """Nothing to close (each file is read whole); for the record reader protocol."""

    def __enter__(self) -> CSVSequenceRecordReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
