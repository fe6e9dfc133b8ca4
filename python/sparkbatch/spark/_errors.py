"""Errors raised on Spark executors, raised again on the driver as their own types.

PySpark reports an exception of a Python worker as its own wrapper (``PythonException``, or a
``Py4JJavaError`` around the JVM's ``PythonException``) whose text is the worker's traceback,
the library's message on its last lines. ``except CsvError`` never matches that, and the message
a user needs is buried. :func:`executor_errors` wraps a Spark action and re-raises sparkbatch's
exception types and Python's builtin ones as themselves: the executor's message first, then a
line saying where it was raised, with PySpark's exception chained as the cause.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import re
from collections.abc import Iterator

__all__ = ["executor_errors", "from_executor"]

_TRACEBACK = "Traceback (most recent call last):"
# "sparkbatch.errors.CsvError: message" or "ValueError: message" (or a bare name), at column 0
_EXCEPTION_LINE = re.compile(r"(?P<name>[A-Za-z_][\w.]*)(?:: (?P<message>.*))?")
# where the JVM's text resumes after the Python traceback it quotes
# str(OSError(errno, reason, filename)): "[Errno 2] reason: 'filename'" (filename optional)
_OS_ERROR = re.compile(
    r"\[Errno (?P<errno>-?\d+)\] (?P<reason>.*?)(?:: (?P<q>['\"])(?P<filename>.*)(?P=q))?"
)
_JVM_TRAILER = re.compile(r"\n(?:\s*SQLSTATE: |\tat |Driver stacktrace:)")
_WHERE = "(raised in a Spark task; PySpark's exception is chained as the cause)"


def _exception_type(name: str) -> type[BaseException] | None:
    """The class named in a worker's traceback, if it is a builtin or sparkbatch's own."""
    module, _, attribute = name.rpartition(".")
    if not module:
        found = getattr(builtins, name, None)
    elif module == "sparkbatch" or module.startswith("sparkbatch."):
        try:
            found = getattr(importlib.import_module(module), attribute, None)
        except ImportError:
            return None
    else:
        return None
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return None


def from_executor(error: BaseException) -> BaseException | None:
    """The exception a Python worker raised, rebuilt from PySpark's ``error``, or None.

    Only builtin exception types and sparkbatch's own are rebuilt (others cannot be imported
    safely on the driver); the message is the worker's, followed by a line saying where it was
    raised.

    Examples
    --------
    >>> text = (
    ...     "An exception was thrown from the Python worker:\\n" + _TRACEBACK + "\\n"
    ...     '  File "job.py", line 3, in f\\n    raise CsvError(...)\\n'
    ...     "sparkbatch.errors.CsvError: a.csv, line 3: expected a number, found 'x'"
    ... )
    >>> e = from_executor(Exception(text))
    >>> type(e).__name__, str(e).splitlines()[0]
    ('CsvError', "a.csv, line 3: expected a number, found 'x'")
    """
    text = str(error)
    start = text.rfind(_TRACEBACK)
    if start < 0:
        return None
    tail = text[start + len(_TRACEBACK) :]
    trailer = _JVM_TRAILER.search(tail)
    if trailer:
        tail = tail[: trailer.start()]
    lines = tail.split("\n")
    for i, line in enumerate(lines):
        if not line or line[0].isspace():
            continue  # frames, source lines and carets are indented
        found = _EXCEPTION_LINE.fullmatch(line)
        if found is None:
            return None
        cls = _exception_type(found["name"])
        if cls is None:
            return None
        message = "\n".join([found["message"] or "", *lines[i + 1 :]]).rstrip()
        if issubclass(cls, OSError):
            rebuilt_os = _os_error(cls, message)
            if rebuilt_os is not None:
                return rebuilt_os
        try:
            return cls(f"{message}\n{_WHERE}" if message else _WHERE)
        except TypeError:  # a class whose constructor needs more than a message
            return None
    return None


def _os_error(cls: type[OSError], message: str) -> OSError | None:
    """An OSError rebuilt with its ``errno``, ``strerror`` and ``filename`` from its text
    (``"[Errno 16] reason: 'name'"``), so that handlers testing ``e.errno`` keep working; the
    where-line goes into ``strerror``, since ``str()`` of such an error shows only its fields."""
    first, _, rest = message.partition("\n")
    found = _OS_ERROR.fullmatch(first)
    if found is None:
        return None
    reason = "\n".join(filter(None, [found["reason"], rest])) + " " + _WHERE
    if found["filename"] is None:
        return cls(int(found["errno"]), reason)
    return cls(int(found["errno"]), reason, found["filename"])


@contextlib.contextmanager
def executor_errors() -> Iterator[None]:
    """Run a Spark action; re-raise an exception of its Python workers as its own type.

    sparkbatch's own actions (``batch_and_export``, ``list_paths``, ``SparkNetwork.fit*`` and
    ``evaluate*``, the CLI) run inside it, so ``except CsvError`` works around them; wrap your
    own actions over sparkbatch's functions the same way.

    Examples
    --------
    >>> from sparkbatch.errors import CsvError
    >>> with executor_errors():  # doctest: +SKIP
    ...     rdd.mapPartitionsWithIndex(BatchAndExport(32, "s3://bucket/out")).collect()
    """
    try:
        yield
    except Exception as error:
        if type(error).__module__.split(".", 1)[0] not in ("pyspark", "py4j"):
            raise
        rebuilt = from_executor(error)
        if rebuilt is None:
            raise
        raise rebuilt from error
