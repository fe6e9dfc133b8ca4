"""Shared fixtures: one local[2] SparkSession for the whole run, created only if a test asks."""

from __future__ import annotations

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

    session = (
        SparkSession.builder.master("local[2,2]")  # 2 cores; a failed task is retried once
        .appName("sparkbatch-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "2g")
        .config("spark.python.worker.reuse", "true")
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
