"""Spark job descriptions that read well in the Spark UI, set and restored around an action.

Private, and shared by :mod:`sparkbatch.spark` (exports, CSV headers) and
:mod:`sparkbatch.train` (fit rounds, batching, evaluation), so that every job sparkbatch starts
says what it is for, and none leaves its description behind on the caller's thread.

NOTE [job descriptions]: Spark keeps the description as a local property of the calling thread
and gives it to every job that thread starts. :class:`JobDescription` remembers the caller's
(``sc.getLocalProperty("spark.job.description")``) when it is made, sets its own, and puts the
caller's back (:meth:`JobDescription.restore`, or on leaving ``with``, also on an error); it never
clears it to None, which would erase what an application set for its own jobs. Where the caller
had a description, sparkbatch's is appended to it (``"nightly ETL - sparkbatch: export ..."``),
so the UI shows both.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DESCRIPTION", "JobDescription"]

DESCRIPTION = "spark.job.description"  # the local property setJobDescription sets
SEPARATOR = " - "


class JobDescription:
    """Describe the Spark jobs this thread starts (``text``, then each :meth:`set`'s) until
    :meth:`restore`, which puts back the description the thread had when this was made
    (NOTE [job descriptions]). A context manager too: ``with JobDescription(sc, text):``.

    ``sc`` is a SparkContext (or a SparkSession: its ``sparkContext`` is used).

    Examples
    --------
    >>> sc.setJobDescription("my job")
    >>> with JobDescription(sc, "sparkbatch: export") as jobs:
    ...     sc.getLocalProperty("spark.job.description")
    ...     jobs.set("sparkbatch: round 2")
    ...     sc.getLocalProperty("spark.job.description")
    'my job - sparkbatch: export'
    'my job - sparkbatch: round 2'
    >>> sc.getLocalProperty("spark.job.description")
    'my job'
    >>> sc.setJobDescription(None)
    """

    def __init__(self, sc: Any, text: str | None = None) -> None:
        self.sc = getattr(sc, "sparkContext", sc)
        #: The thread's description when this was made (None: it had none).
        self.previous: str | None = self.sc.getLocalProperty(DESCRIPTION)
        if text is not None:
            self.set(text)

    def set(self, text: str) -> None:
        """Describe the jobs started from now on (after the caller's description, if any)."""
        previous = self.previous
        self.sc.setJobDescription(f"{previous}{SEPARATOR}{text}" if previous else text)

    def restore(self) -> None:
        """Put back the description the thread had when this was made."""
        self.sc.setLocalProperty(DESCRIPTION, self.previous)  # None removes the property

    def __enter__(self) -> JobDescription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
