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

__all__ = ["CsvOptions", "ParsedCsv", "first_row", "parse_csv_buffer"]

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
) -> ParsedCsv:
    """Parse ``buffer`` natively; raise :class:`CsvError` for the first bad row (or skip them).

    Parameters
    ----------
    buffer : bytes-like
        CSV text.
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
    )
    if result["error"] is not None and options.on_error == "raise":
        line, column, text, expected = result["error"]
        offset = lines_before() if lines_before is not None else 0
        width = _COLUMN_COUNT.fullmatch(expected) if column == -1 else None
        if width is None:
            raise CsvError.at(source, line + offset, column, text, expected)
        wanted = f"{width[1]} columns" + (f" (as in {columns_from})" if columns_from else "")
        raise CsvError.at(source, line + offset, column, text, wanted, found=width[2])
    return ParsedCsv(result["values"], result["strings"], result["skipped"], result["lines"])


def first_row(
    data: bytes, options: CsvOptions, *, skip_lines: int | None = None, complete: bool = True
) -> tuple[int, int] | None:
    """The number of fields and the 1-based line of the first data row of ``data``.

    The first data row is the first line after the header lines that is not blank (blanks as
    the native parser has them: spaces, tabs and CR, less the delimiter). None when ``data``
    holds none; with ``complete=False`` (``data`` is the start of a longer text) only whole lines
    count, and None means that more text is needed. Only the lines up to that row are looked at.

    Examples
    --------
    >>> first_row(b"x,y,z\\n\\n1,2,3\\n", CsvOptions(skip_lines=1))
    (3, 3)
    >>> first_row(b"1,2,3", CsvOptions(), complete=False) is None
    True
    """
    skip = options.skip_lines if skip_lines is None else skip_lines
    blanks = b" \t\r".replace(options.delimiter.encode(), b"")
    pos, line = 0, 1
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            if not complete:
                return None
            end = len(data)
        if line > skip and data[pos:end].strip(blanks):
            result = _native.parse_csv(
                data[pos:end],
                delimiter=options.delimiter,
                quote=options.quote,
                on_error="skip",
                threads=1,
            )
            return int(result["values"].shape[1]), line
        pos, line = end + 1, line + 1
    return None
