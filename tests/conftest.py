"""Shared fixtures: one local[2] SparkSession for the whole run, created only if a test asks."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """A ``local[2]`` SparkSession shared by every test of the run (JVM start-up is slow)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from sparkbatch.spark import recommended_conf

    session = (
        SparkSession.builder.master("local[2,2]")  # 2 cores; a failed task is retried once
        .appName("sparkbatch-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "2g")
        .config("spark.python.worker.reuse", "true")
        .config(map=recommended_conf())
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="session")
def s3_storage() -> Iterator[dict]:
    """A real S3-protocol server (moto's server mode) on 127.0.0.1 with a bucket ``sparkbatch``.

    Yields the fsspec ``storage_options`` that reach it; Spark executors get them through the
    functions' ``storage_options`` arguments, as a user's would.
    """
    pytest.importorskip("s3fs", reason="S3 tests need the s3 extra: pip install 'sparkbatch[s3]'")
    moto_server = pytest.importorskip("moto.server")
    import logging

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials).create_bucket(
        Bucket="sparkbatch"
    )
    try:
        yield {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sc(spark: object) -> object:
    """The SparkContext of the session's SparkSession."""
    return spark.sparkContext  # type: ignore[attr-defined]


# The shared standalone cluster's exit stack while it runs (see pytest_runtest_teardown).
_cluster_stacks: list[contextlib.ExitStack] = []


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    """A Spark standalone master and two workers (one core, 1 GiB each) on 127.0.0.1.

    One for every cluster test of the run (``tests/cluster.py``: starting one costs about 10 s);
    stopped after the last test that asks for it, and no JVM of it may outlive it.
    """
    from tests.cluster import processes_mentioning, standalone_cluster

    with contextlib.ExitStack() as stack:
        running = stack.enter_context(standalone_cluster(workers=2, cores_per_worker=1))
        _cluster_stacks.append(stack)
        yield running
    _cluster_stacks.clear()
    # Every JVM of the cluster has its private conf folder on its class path.
    assert processes_mentioning(str(running.root)) == []


@pytest.fixture(scope="session")
def cluster_driver(cluster: object) -> object:
    """One driver on the shared cluster whose SparkSession every script sent to it shares.

    NOTE [shared driver] in ``tests/cluster.py``: a driver and its two executors cost about
    12 s, so the cluster tests send their scripts here (``cluster_driver.run(script)``). It
    stops before the cluster does.
    """
    from tests.cluster import DRIVER_CONF, ClusterDriver

    driver = ClusterDriver(cluster, DRIVER_CONF)  # type: ignore[arg-type]
    _cluster_stacks[-1].callback(driver.close)
    return driver


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the shared cluster (fixture ``cluster``) once no later test of the run asks for
    it, instead of at the end of the session: its six JVMs would idle through the rest."""
    if not _cluster_stacks or "cluster" not in getattr(item, "fixturenames", ()):
        return
    items = item.session.items
    later = items[items.index(item) + 1 :] if item in items else []
    if not any("cluster" in getattr(other, "fixturenames", ()) for other in later):
        for stack in _cluster_stacks:
            stack.close()
