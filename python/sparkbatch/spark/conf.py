"""Spark settings that make sparkbatch's jobs fast, for a session you build.

NOTE [python task latency]: Spark's executors talk to their Python workers over a TCP socket on
loopback by default, and the end of every Python task is a few small writes each way: one of
them waits for a delayed acknowledgement, which Linux sends after 40 ms (Nagle's algorithm meets
delayed ACKs), so every Python task costs about 40 ms whatever it does. Measured on local[2] with
PySpark 4.3 (``bench/csv_end_to_end.py``, docs/performance.md): a job of 4 empty Python tasks took
161-166 ms and one of 16 tasks 453-460 ms over TCP, against 45-51 and 106-108 ms with Unix domain
sockets between the JVM and its workers (``spark.python.unix.domain.socket.enabled``, Spark 4.1
and later). A fit runs a job per averaging round, csv_to_datasets a task per byte range: both pay
it per task. Whether the stall shows depends on the timing of those writes: larger tasks meet it
less often (a 150 MB CSV converted in 4 tasks took about as long either way).
Setting TCP_NODELAY or TCP_QUICKACK on the worker's end of the socket from inside a task was
tried and does not help.
"""

from __future__ import annotations

import socket

__all__ = ["UNIX_SOCKETS", "recommended_conf"]

UNIX_SOCKETS = "spark.python.unix.domain.socket.enabled"


def recommended_conf() -> dict[str, str]:
    """Settings for ``SparkSession.builder.config(map=...)`` that cut the cost of each Python task.

    Unix domain sockets between executors and their Python workers, where the platform has them:
    about 40 ms less per Python task (NOTE [python task latency]). Spark before 4.1 ignores the
    setting. The settings only apply to a session that is created with them: an existing one
    keeps its own.

    Examples
    --------
    >>> from pyspark.sql import SparkSession  # doctest: +SKIP
    >>> spark = (SparkSession.builder.master("local[4]")
    ...          .config(map=recommended_conf()).getOrCreate())  # doctest: +SKIP
    >>> recommended_conf()  # on Linux and macOS
    {'spark.python.unix.domain.socket.enabled': 'true'}
    """
    return {UNIX_SOCKETS: "true" if hasattr(socket, "AF_UNIX") else "false"}
