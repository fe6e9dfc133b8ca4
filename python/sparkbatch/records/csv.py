"""CSV record reader: DataVec's ``CSVRecordReader`` over local files and fsspec URLs.

A record is a Python ``list`` with one value per column: fields that :func:`float` accepts
(surrounding spaces allowed, ``nan`` and ``inf`` included) become ``float``, every other field
stays the ``str`` it was in the file. Fields are split by Python's :mod:`csv` module, so quoted
fields may hold the delimiter, doubled quotes and newlines, and ``\\r\\n`` line ends work.

NOTE [header lines]: ``skip_lines`` physical lines are skipped at the start of *each file* the
reader iterates, as DataVec does. :meth:`CSVRecordReader.parse_line` parses one line on its own
and skips nothing: on Spark (``rdd_lines.map(StringToRecords(reader))``) a header line arrives
as an ordinary line, and, as in DL4J, filtering it out is left to the user (e.g.
``rdd.filter(lambda line: not line.startswith("x1,"))``).

NOTE [blank lines]: lines that are empty or hold only spaces are skipped; they count for the
line numbers in error messages and for ``skip_lines``.

NOTE [foreign files]: compressed files (``.gz``, ``.bz2``, ``.xz``, ``.zip``) are decompressed, a
UTF-8 byte order mark is dropped, and the first bytes of each file are checked once for what is not
CSV text (:mod:`sparkbatch.records.csv_files`): a binary, UTF-16 or misnamed compressed file raises
:class:`CsvError` naming it, as ``csv_to_datasets`` does.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from collections.abc import Iterator, Sequence
from typing import IO, Any

from sparkbatch.errors import CsvError
from sparkbatch.records.csv_files import HEAD_BYTES, check_head, decompression_error, reading
from sparkbatch.records.reader import Record, list_sources
from sparkbatch.storage import resolve

__all__ = ["CSVRecordReader", "Record", "to_value"]

_ENCODING = "utf-8-sig"  # UTF-8; a byte order mark at the start of a file is dropped

_PathLike = str | os.PathLike[str]


def to_value(field: str) -> float | str:
    """A CSV field as a record value: a ``float`` if :func:`float` accepts it, else the field.

    Examples
    --------
    >>> to_value(" 2.5 "), to_value("nan"), to_value("-inf"), to_value("cat"), to_value("")
    (2.5, nan, -inf, 'cat', '')
    """
    try:
        return float(field)
    except ValueError:
        return field


def is_blank_row(fields: list[str]) -> bool:
    """Whether a row of fields is a blank line (no fields, or one of only spaces)."""
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _check_char(name: str, value: object, allow_empty: bool) -> str:
    if not isinstance(value, str) or len(value) > 1 or (not value and not allow_empty):
        what = "one character" + (' or "" (no quoting)' if allow_empty else "")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if value in ("\r", "\n"):
        raise ValueError(f"{name} must not be a line break, got {value!r}")
    return value


class CSVRecordReader:
    """Reads CSV files as records, one per row: DataVec's ``CSVRecordReader``.

    Call :meth:`initialize` with the files, then iterate (``for record in reader``, or the
    DataVec style ``while reader.has_next(): reader.next()``). :meth:`reset` starts again from
    the first file; :meth:`parse` reads the bytes of one whole file (on Spark). It implements
    :class:`~sparkbatch.records.RecordReader`. While iterating, :attr:`current_source` and
    :attr:`current_line` tell where the last record came from. Readers pickle: only the
    settings, the file names and the position travel, and a file is reopened where it was left
    when iteration goes on.

    Parameters
    ----------
    skip_lines : int, default 0
        Lines skipped at the start of each file (headers). See NOTE [header lines] in this module.
    delimiter : str, default ","
        The one-character field separator.
    quote : str, default '"'
        The one-character quote; ``""`` turns quoting off (quote characters are then ordinary
        characters).

    Attributes
    ----------
    current_source : str or None
        The file or URL of the last record returned.
    current_line : int or None
        The 1-based line in that file where the last record returned starts.

    Examples
    --------
    >>> from sparkbatch.storage import open_output
    >>> with open_output("memory://sparkbatch-doc/csv/a.csv") as f:
    ...     _ = f.write(b'x,y,name\\n1,2.5,"Smith, J"\\n3,4,b\\n')
    >>> reader = CSVRecordReader(skip_lines=1).initialize("memory://sparkbatch-doc/csv")
    >>> for record in reader:
    ...     print(record, reader.current_line)
    [1.0, 2.5, 'Smith, J'] 2
    [3.0, 4.0, 'b'] 3
    >>> reader.parse_line("5,x,6")
    [5.0, 'x', 6.0]
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    def __init__(self, skip_lines: int = 0, delimiter: str = ",", quote: str = '"') -> None:
        if isinstance(skip_lines, bool) or not isinstance(skip_lines, int) or skip_lines < 0:
            raise ValueError(f"skip_lines must be an int >= 0, got {skip_lines!r}")
        self.skip_lines = skip_lines
        self.delimiter = _check_char("delimiter", delimiter, allow_empty=False)
        self.quote = _check_char("quote", quote, allow_empty=True)
        if self.quote == self.delimiter:
            raise ValueError(f"quote and delimiter must differ, both are {quote!r}")
        self.current_source: str | None = None
        self.current_line: int | None = None
        self._sources: list[str] = []
        self._storage_options: dict[str, Any] | None = None
        self._initialized = False
        self._reset_position()

    def _reset_position(self) -> None:
        self._file_index = 0  # the file being read (== len(_sources) at the end)
        self._consumed = 0  # physical lines of that file consumed so far, skipped ones included
        self._pending: tuple[Record, str, int] | None = None  # the record has_next() looked at
        self._file: IO[str] | None = None
        self._rows: Any = None  # csv reader over the open file (not picklable)

    def __repr__(self) -> str:
        return (
            f"CSVRecordReader(skip_lines={self.skip_lines}, delimiter={self.delimiter!r}, "
            f"quote={self.quote!r})"
        )

    # -- setup ---------------------------------------------------------------------------------

    def initialize(
        self,
        path_or_paths: _PathLike | Sequence[_PathLike],
        storage_options: dict[str, Any] | None = None,
    ) -> CSVRecordReader:
        """Set the files to read and go back to the start.

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
        CSVRecordReader
            This reader, so that ``for r in CSVRecordReader().initialize(path)`` works.

        Raises
        ------
        FileNotFoundError
            A path does not exist.
        """
        sources = list_sources(path_or_paths, storage_options)
        self.close()
        self._sources = sources
        self._storage_options = dict(storage_options) if storage_options else None
        self._initialized = True
        self.reset()
        return self

    @property
    def sources(self) -> list[str]:
        """The files this reader iterates, in order."""
        return list(self._sources)

    def _dialect(self) -> dict[str, Any]:
        if self.quote:
            return {"delimiter": self.delimiter, "quotechar": self.quote, "strict": True}
        return {"delimiter": self.delimiter, "quoting": csv.QUOTE_NONE, "strict": True}

    # -- one line ------------------------------------------------------------------------------

    def parse_line(self, line: str) -> Record:
        """Parse one line of text into a record (``skip_lines`` does not apply).

        The function behind Spark's per-line ``StringToRecords``. A trailing line break is
        ignored; a blank line gives ``[]``. See NOTE [header lines] in this module.

        Raises
        ------
        CsvError
            The line is not well-formed CSV (an unquoted line break inside it, for example).

        Examples
        --------
        >>> CSVRecordReader().parse_line('1.0, 2,"a ""b"", c",nan\\r\\n')
        [1.0, 2.0, 'a "b", c', nan]
        >>> CSVRecordReader(delimiter=";", quote="").parse_line('"1";2')
        ['"1"', 2.0]
        """
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if not self.quote or self.quote not in line:
            # Fast path for the usual all-numeric line: one C-level conversion of every field.
            try:
                return list(map(float, line.split(self.delimiter)))
            except ValueError:
                pass
        try:
            fields = next(csv.reader([line], **self._dialect()), [])
        except csv.Error as e:
            raise CsvError(
                f"expected well-formed CSV ({e}), found {line!r}", text=line, expected="CSV"
            ) from e
        if is_blank_row(fields):
            return []
        return [to_value(field) for field in fields]

    # -- one file ------------------------------------------------------------------------------

    def parse(self, data: bytes, source: str) -> list[Record]:
        """The records of one whole file from its bytes, as iterating over it gives them.

        The :class:`~sparkbatch.records.RecordReader` method that Spark's
        ``sc.binaryFiles(dir).flatMap(FileToRecords(reader))`` calls: ``skip_lines`` applies,
        blank lines are skipped, compressed files (by ``source``'s name) are decompressed and
        the first bytes are checked for what is not CSV text (NOTE [foreign files]).

        Raises
        ------
        CsvError
            The bytes are not UTF-8 CSV text, or not well-formed; the message names ``source``
            and the line.

        Examples
        --------
        >>> CSVRecordReader(skip_lines=1).parse(b"x,y\\n1,2\\n\\n3,a\\n", "a.csv")
        [[1.0, 2.0], [3.0, 'a']]
        """
        return self.parse_lines(data, source)[0]

    def parse_lines(self, data: bytes, source: str) -> tuple[list[Record], list[int]]:
        """:meth:`parse`, with the 1-based line where each record starts.

        Examples
        --------
        >>> CSVRecordReader(skip_lines=1).parse_lines(b"x,y\\n1,2\\n\\n3,a\\n", "a.csv")
        ([[1.0, 2.0], [3.0, 'a']], [2, 4])
        """
        # csv_sequence imports this module; its decoding of a whole file is shared lazily
        from sparkbatch.records.csv_sequence import sequence_bytes

        text = sequence_bytes(data, source)
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError as e:
            line = text[: e.start].count(b"\n") + 1
            raise CsvError(
                f"{source}, line {line}: expected UTF-8 text, found {e}",
                source=source,
                line=line,
                text=str(e),
                expected="UTF-8 text",
            ) from e
        rows = csv.reader(
            itertools.islice(io.StringIO(decoded, newline=""), self.skip_lines, None),
            **self._dialect(),
        )
        records: list[Record] = []
        lines: list[int] = []
        line = self.skip_lines + 1  # where the next row starts
        try:
            for fields in rows:
                if not is_blank_row(fields):
                    try:  # the usual all-numeric row: one C-level conversion of every field
                        records.append(list(map(float, fields)))
                    except ValueError:
                        records.append([to_value(field) for field in fields])
                    lines.append(line)
                line = self.skip_lines + rows.line_num + 1
        except csv.Error as e:
            raise CsvError(
                f"{source}, line {line}: expected well-formed CSV, found {e}",
                source=source,
                line=line,
                text=str(e),
                expected="well-formed CSV",
            ) from e
        return records, lines

    # -- iteration -----------------------------------------------------------------------------

    def _open(self) -> None:
        """Open file ``_file_index`` and move past its first ``_consumed`` lines."""
        source = self._sources[self._file_index]
        fs, path = resolve(source, self._storage_options)
        raw = fs.open(path, "rb", compression="infer")
        try:
            with reading(source, line=1):
                check_head(source, raw.read(HEAD_BYTES))  # NOTE [foreign files]
                raw.seek(0)
        except BaseException:
            raw.close()
            raise
        text = io.TextIOWrapper(raw, encoding=_ENCODING, newline="")
        lines = itertools.islice(text, self.skip_lines, None)
        self._file, self._rows = text, csv.reader(lines, **self._dialect())
        target, self._consumed = self._consumed, min(self.skip_lines, self._consumed)
        while self._consumed < target:  # resuming after unpickling: skip what was read
            if self._read_row(source) is None:
                break

    def _read_row(self, source: str) -> list[str] | None:
        """The next row of fields of the open file (``[]`` for a blank line), None at its end."""
        try:
            fields = next(self._rows)
        except StopIteration:
            return None
        except csv.Error as e:
            line = self.skip_lines + self._rows.line_num
            self._close_file()
            raise CsvError(
                f"{source}, line {line}: expected well-formed CSV, found {e}",
                source=source,
                line=line,
                text=str(e),
                expected="well-formed CSV",
            ) from e
        except UnicodeDecodeError as e:
            self._close_file()
            raise CsvError(
                f"{source}, near line {self._consumed + 1}: expected UTF-8 text, found {e}",
                source=source,
                text=str(e),
                expected="UTF-8 text",
            ) from e
        except Exception as e:  # a compressed file that ends early or is corrupt
            error = decompression_error(source, e, line=self._consumed + 1)
            if error is None:
                raise
            self._close_file()
            raise error from e
        self._consumed = self.skip_lines + self._rows.line_num
        return fields

    def _read_record(self) -> tuple[Record, str, int] | None:
        if not self._initialized:
            raise RuntimeError("call initialize(paths) before reading records")
        while self._file_index < len(self._sources):
            source = self._sources[self._file_index]
            if self._rows is None:
                self._open()
            start = max(self._consumed, self.skip_lines) + 1
            fields = self._read_row(source)
            if fields is None:
                self._close_file()
                self._file_index += 1
                self._consumed = 0
            elif not is_blank_row(fields):
                return [to_value(field) for field in fields], source, start
        return None

    def has_next(self) -> bool:
        """Whether another record follows (DataVec's ``hasNext``)."""
        if self._pending is None:
            self._pending = self._read_record()
        return self._pending is not None

    def next(self) -> Record:
        """The next record (DataVec's ``next``); raises :class:`StopIteration` at the end."""
        return self.__next__()

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        found = self._pending if self._pending is not None else self._read_record()
        self._pending = None
        if found is None:
            raise StopIteration
        record, self.current_source, self.current_line = found
        return record

    def reset(self) -> None:
        """Go back to the first record of the first file."""
        self._close_file()
        self._reset_position()
        self.current_source = self.current_line = None

    def _close_file(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
        self._file = self._rows = None

    def close(self) -> None:
        """Close the open file, if any (iterating again reopens it where it was left)."""
        self._close_file()

    def __enter__(self) -> CSVRecordReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._close_file()  # a reader dropped in the middle of a file closes it quietly

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = state["_rows"] = None  # reopened lazily by _read_record
        return state
