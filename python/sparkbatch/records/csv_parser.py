"""Whole buffers of CSV text to float32 tables in one native call, with errors that say where.

The native parser (``_native.parse_csv``) does the work without the GIL and never raises for bad
data: it reports the first bad row, and this module raises :class:`~sparkbatch.errors.CsvError`
naming the source, the line (counted from the start of the file, even when the buffer is a byte
range from its middle), the column and the text found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparkbatch import _native
from sparkbatch.errors import CsvError
from sparkbatch.records.csv_files import HEAD_BYTES, check_head

__all__ = ["CsvOptions", "ParsedCsv", "table_width", "parse_csv_buffer"]

ON_ERROR = ("raise", "skip")

_COLUMN_COUNT = re.compile(r"(\d+) columns, found (\d+)")  # the native parser's row-width message


@dataclass(frozen=True)
class CsvOptions:
    """How to read CSV text: plain settings, cheap to pickle and ship to Spark executors."""

    delimiter: str = ","
    quote: str = '"'
    skip_lines: int = 0
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")
        if len(self.quote) > 1:
            raise ValueError(f"quote must be one character or '', got {self.quote!r}")
        if self.skip_lines < 0:
            raise ValueError(f"skip_lines must be >= 0, got {self.skip_lines}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")


@dataclass
class ParsedCsv:
    """The rows kept (``values``), string columns, and how many bad rows were skipped."""

    values: np.ndarray
    strings: dict[int, list[str]] = field(default_factory=dict)
    skipped: int = 0
    lines: int = 0


def parse_csv_buffer(
    buffer: Any,
    options: CsvOptions,
    *,
    source: str,
    skip_lines: int | None = None,
    columns: int = -1,
    columns_from: str | None = None,
    class_columns: Mapping[int, int] | None = None,
    categories: Mapping[int, Sequence[str]] | None = None,
    string_columns: Sequence[int] = (),
    threads: int = 0,
    lines_before: Callable[[], int] | None = None,
    quoted_newlines: bool = True,
) -> ParsedCsv:
    """Parse ``buffer`` natively; raise :class:`CsvError` for the first bad row (or skip them).

    Parameters
    ----------
    buffer : bytes-like
        CSV text. An error in the file's first line names what the buffer holds if its first
        bytes are not CSV text (:func:`~sparkbatch.records.csv_files.check_head`: binary data,
        UTF-16, lines that end in CR alone, ...).
    options : CsvOptions
        Delimiter, quote, header lines and the error policy.
    source : str
        The file, URL or partition the text came from, for messages.
    skip_lines : int, optional
        Overrides ``options.skip_lines`` (a byte range from the middle of a file skips none).
    columns : int
        The number of columns every row must have (-1: as many as the first row of ``buffer``).
    columns_from : str, optional
        Where ``columns`` was taken from (``"a.csv, line 2"``), for the message of a row of
        another width.
    class_columns, categories, string_columns
        Passed to the native parser: class-index columns with their class count, columns mapped
        through a list of names, columns kept as text.
    threads : int
        Threads for the native parser (0: all cores).
    lines_before : callable, optional
        Called only when reporting an error: the number of lines of the file before ``buffer``.
    quoted_newlines : bool
        Whether a quoted field may hold line breaks; False: every line is one record, and a
        quoted field must close on its line (NOTE(csv-lines) in ``csrc/csv_parser.cpp``).

    Examples
    --------
    >>> parsed = parse_csv_buffer(b"a,b\\n1,2\\n3,4\\n", CsvOptions(skip_lines=1), source="x.csv")
    >>> parsed.values.tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    >>> parse_csv_buffer(b"1,2\\n3,x\\n", CsvOptions(), source="x.csv")
    Traceback (most recent call last):
    ...
    sparkbatch.errors.CsvError: x.csv, line 2, column 1: expected a number, found 'x'
    >>> parse_csv_buffer(b"1,2\\n3\\n", CsvOptions(), source="x.csv")
    Traceback (most recent call last):
    ...
    sparkbatch.errors.CsvError: x.csv, line 2: expected 2 columns, found 1: '3'
    >>> parse_csv_buffer(b"x,y\\n1,2\\n", CsvOptions(), source="x.csv")
    Traceback (most recent call last):
    ...
    sparkbatch.errors.CsvError: x.csv, line 1, column 0: expected a number, found 'x' (a header ...
    >>> parse_csv_buffer(b"1,2\\r3,4\\r", CsvOptions(), source="x.csv")
    Traceback (most recent call last):
    ...
    sparkbatch.errors.CsvError: x.csv, line 1: expected UTF-8 CSV text, found lines that end in ...
    """
    result = _native.parse_csv(
        buffer,
        delimiter=options.delimiter,
        quote=options.quote,
        skip_lines=options.skip_lines if skip_lines is None else skip_lines,
        columns=columns,
        class_columns=dict(class_columns or {}),
        categories={k: list(v) for k, v in (categories or {}).items()},
        string_columns=list(string_columns),
        on_error=options.on_error,
        threads=threads,
        quoted_newlines=quoted_newlines,
    )
    if result["error"] is not None and options.on_error == "raise":
        line, column, text, expected = result["error"]
        offset = lines_before() if lines_before is not None else 0
        if line + offset == 1:
            # Text that is not CSV as sparkbatch reads it is named as such (CR-only line ends
            # make a file one row, whose first cells look like a header), as the file readers do.
            head = _head(buffer)
            if head is not None:
                check_head(source, head)
        width = _COLUMN_COUNT.fullmatch(expected) if column == -1 else None
        if width is None:
            error = CsvError.at(source, line + offset, column, text, expected)
            header = line + offset == 1 and expected == "a number" and text.strip()
            if header and not (options.skip_lines if skip_lines is None else skip_lines):
                error = CsvError(
                    f"{error} (a header line? pass skip_lines=1)",
                    source=source,
                    line=1,
                    column=column,
                    text=text,
                    expected=expected,
                )
            raise error
        wanted = f"{width[1]} columns" + (f" (as in {columns_from})" if columns_from else "")
        raise CsvError.at(source, line + offset, column, text, wanted, found=width[2])
    return ParsedCsv(result["values"], result["strings"], result["skipped"], result["lines"])


def _head(buffer: Any) -> bytes | None:
    """The first ``HEAD_BYTES`` bytes of ``buffer`` (None if it is no flat byte buffer)."""
    try:
        return bytes(memoryview(buffer).cast("B")[:HEAD_BYTES])
    except (TypeError, ValueError):
        return None


SAMPLE_ROWS = 100  # table_width looks at up to this many data rows ...
SAMPLE_BYTES = 1 << 16  # ... those that end within this many bytes (and at least the first)


def table_width(
    data: bytes, options: CsvOptions, *, skip_lines: int | None = None, complete: bool = True
) -> tuple[int, int] | None:
    """The number of columns of a table, and the 1-based line of its first row of that width.

    The width is the most common number of fields among the first data rows (the first
    ``SAMPLE_ROWS`` lines after the header lines that are not blank, those of them that end
    within the first ``SAMPLE_BYTES`` bytes of ``data`` and at least the first), ties going to
    the earliest: one bad row at the top does not set the width of a whole file. Blank lines are
    as the native parser has them (spaces, tabs and CR, less the delimiter); every line is one
    row (NOTE(csv-lines) in ``csrc/csv_parser.cpp``).

    None when ``data`` holds no data row; with ``complete=False`` (``data`` is the start of a
    longer text) only whole lines count, and None means that more text is needed.

    Examples
    --------
    >>> table_width(b"x,y,z\\n\\n1,2,3\\n4,5\\n", CsvOptions(skip_lines=1))
    (3, 3)
    >>> table_width(b"1,2\\n3,4,5\\n6,7,8\\n", CsvOptions())
    (3, 2)
    >>> table_width(b"1,2,3\\n", CsvOptions(), complete=False) is None
    True
    """
    skip = options.skip_lines if skip_lines is None else skip_lines
    blanks = b" \t\r".replace(options.delimiter.encode(), b"")
    delimiter, quote = options.delimiter.encode(), options.quote.encode() or b"\n"
    widths: dict[int, tuple[int, int]] = {}  # width -> (rows, first line)
    pos, line, rows = 0, 1, 0
    while rows < SAMPLE_ROWS and (rows == 0 or pos < SAMPLE_BYTES):
        end = data.find(b"\n", pos)
        if end < 0:
            if not complete:
                if rows > 0 and len(data) >= SAMPLE_BYTES:
                    break  # the line ends past the sample
                return None
            if pos >= len(data):
                break
            end = len(data)
        row = data[pos:end]
        if line > skip and row.strip(blanks) and (rows == 0 or end <= SAMPLE_BYTES):
            width = row.count(delimiter) + 1 if quote not in row else _fields(row, options)
            count, first = widths.get(width, (0, line))
            widths[width] = (count + 1, first)
            rows += 1
        pos, line = end + 1, line + 1
    if not widths:
        return None
    width, (_, first) = max(widths.items(), key=lambda item: (item[1][0], -item[1][1]))
    return width, first


def _fields(row: bytes, options: CsvOptions) -> int:
    """The number of fields of one line holding quotes."""
    result = _native.parse_csv(
        row,
        delimiter=options.delimiter,
        quote=options.quote,
        on_error="skip",
        threads=1,
        quoted_newlines=False,
    )
    return int(result["values"].shape[1])
