"""Whole buffers of CSV text to float32 tables in one native call, with errors that say where.

The native parser (``_native.parse_csv``) does the work without the GIL and never raises for bad
data: it reports the first bad row, and this module raises :class:`~sparkbatch.errors.CsvError`
naming the source, the line (counted from the start of the file, even when the buffer is a byte
range from its middle), the column and the text found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparkbatch import _native
from sparkbatch.errors import CsvError

__all__ = ["CsvOptions", "ParsedCsv", "parse_csv_buffer"]

ON_ERROR = ("raise", "skip")


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
    """
    result = _native.parse_csv(
        buffer,
        delimiter=options.delimiter,
        quote=options.quote,
        skip_lines=options.skip_lines if skip_lines is None else skip_lines,
        class_columns=dict(class_columns or {}),
        categories={k: list(v) for k, v in (categories or {}).items()},
        string_columns=list(string_columns),
        on_error=options.on_error,
        threads=threads,
    )
    if result["error"] is not None and options.on_error == "raise":
        line, column, text, expected = result["error"]
        offset = lines_before() if lines_before is not None else 0
        raise CsvError.at(source, line + offset, column, text, expected)
    return ParsedCsv(result["values"], result["strings"], result["skipped"], result["lines"])
