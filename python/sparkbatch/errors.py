"""Exceptions raised by sparkbatch.

Every error sparkbatch raises on purpose derives from :class:`SparkbatchError`, so callers can
catch the library's failures in one place; each also derives from the builtin it refines
(``ValueError``, ``OSError``) so that generic handlers keep working.
"""

from __future__ import annotations

__all__ = ["SparkbatchError", "FormatError"]


class SparkbatchError(Exception):
    """Base class of every exception sparkbatch raises on purpose."""


class FormatError(SparkbatchError, ValueError):
    """A minibatch file is truncated, corrupt or not in the expected format.

    The message names the file (or URL) and says what was expected and what was found.
    """
