"""Exceptions raised by sparkbatch.

Every error sparkbatch raises on purpose derives from :class:`SparkbatchError`, so callers can
catch the library's failures in one place; each also derives from the builtin it refines
(``ValueError``, ``OSError``) so that generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "CsvError",
    "CudaUnavailableError",
    "DataFrameError",
    "DivergenceError",
    "FormatError",
    "IncompleteExportError",
    "KeyJoinError",
    "NonFiniteError",
    "SequenceLengthError",
    "SparkbatchError",
]


class SparkbatchError(Exception):
    """Base class of every exception sparkbatch raises on purpose."""


class FormatError(SparkbatchError, ValueError):
    """A minibatch file is truncated, corrupt or not in the expected format.

    The message names the file (or URL) and says what was expected and what was found.
    """


class IncompleteExportError(FormatError):
    """A directory holds an export that failed or is still running: it has no complete manifest.

    Exports write ``_in_progress.json`` first and ``_manifest.json`` (with the same export id)
    last, so their part files are never read as a whole data set before the job succeeded. The
    message names the directory; re-run the export with ``overwrite=True`` to replace it.
    """

    def __init__(self, message: str, *, directory: str | None = None) -> None:
        super().__init__(message)
        self.directory = directory


class NonFiniteError(SparkbatchError, ValueError):
    """A minibatch holds NaN or infinity in its features, labels or masks.

    The message names the minibatch (its file; its RDD partition and index on Spark; its position
    in what ``Network.fit`` was given), the array and the first such value's position. Training
    options ``non_finite="skip"`` skip such minibatches instead, and count them.
    """


class DivergenceError(SparkbatchError, ArithmeticError):
    """Training produced a non-finite score, gradient or averaged parameter vector.

    The message names where: the epoch, iteration and minibatch on one machine; on Spark the
    round, the worker and the minibatch (or the round, for the workers' average). The model keeps
    the parameters of before the step or round that diverged.
    """


class CudaUnavailableError(SparkbatchError, RuntimeError):
    """A GPU was asked for where none can be used; the message says why and what to do.

    Raised by ``device="cuda"`` models and :func:`sparkbatch.nn.gpu.cuda_module` (the CUDA
    module was not built, no driver, a driver older than the CUDA it was built with, no device)
    and by :func:`sparkbatch.nn.gpu.load_cublas` (no cuBLAS found; the message names every
    library tried).
    """


class DataFrameError(SparkbatchError, ValueError):
    """A DataFrame cell cannot become part of a minibatch (a null, a ragged array or vector, an
    empty sequence, a bad class index).

    Raised on the executors by :func:`sparkbatch.spark.dataframe_to_datasets`; the message names
    the column and the row: ``"row R of partition P"``, counted from 0 within Spark partition P.
    """


class SequenceLengthError(SparkbatchError, ValueError):
    """Sequences of one minibatch differ in length where ``alignment="equal_length"`` asks
    them not to; the message names both sequences (their files, when known) and their lengths.
    """


class KeyJoinError(SparkbatchError, ValueError):
    """Records of several RDDs could not be joined by key: a key missing from one RDD (with
    ``filter_missing=False``), repeated in one RDD, or not hashable. The message names the key
    and the RDD."""


class CsvError(SparkbatchError, ValueError):
    """A CSV row does not fit what was asked of it.

    The message names the file (or URL, or partition), the 1-based line, the 0-based column and
    what was expected and found; the same facts are attributes, so callers can act on them.

    Parameters
    ----------
    message : str
        The full message (see :meth:`at` for the standard one).
    source : str, optional
        File, URL or partition name, if known.
    line : int, optional
        1-based line of the record in ``source``, if known.
    column : int, optional
        0-based column, ``-1`` for a problem with the whole row, None if unknown.
    text : str
        The offending cell (or row) as text.
    expected : str
        What was expected there, e.g. ``"a number"``.

    Examples
    --------
    >>> e = CsvError.at("data.csv", 3, 5, "2.5", "an integer class index in [0, 10)")
    >>> print(e)
    data.csv, line 3, column 5: expected an integer class index in [0, 10), found '2.5'
    >>> print(CsvError.at(None, 4, -1, "1,2,3,4,5", "6 columns", found="5"))
    line 4: expected 6 columns, found 5: '1,2,3,4,5'
    >>> e.line, e.column, e.text
    (3, 5, '2.5')
    """

    _MAX_SHOWN = 120  # longer cells are cut in the message (the attribute keeps them whole)

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
        text: str = "",
        expected: str = "",
    ) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.column = column
        self.text = text
        self.expected = expected

    @classmethod
    def at(
        cls,
        source: str | None,
        line: int | None,
        column: int | None,
        text: str,
        expected: str,
        *,
        found: str | None = None,
    ) -> CsvError:
        """Build the error with the standard message.

        ``"{source}, line {line}, column {column}: expected {expected}, found {text!r}"``;
        parts that are None are left out, and so is the column when it is ``-1`` (a problem
        with the whole row). ``found``, if given, describes what was found before the text:
        ``"... expected 6 columns, found 5: '1,2,3,4,5'"``.
        """
        where = []
        if source is not None:
            where.append(str(source))
        if line is not None:
            where.append(f"line {line}")
        if column is not None and column >= 0:
            where.append(f"column {column}")
        shown = text if len(text) <= cls._MAX_SHOWN else text[: cls._MAX_SHOWN - 3] + "..."
        what = f"expected {expected}, found "
        what += f"{found}: {shown!r}" if found is not None else repr(shown)
        message = f"{', '.join(where)}: {what}" if where else what
        return cls(message, source=source, line=line, column=column, text=text, expected=expected)
