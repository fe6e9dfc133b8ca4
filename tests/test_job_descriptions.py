"""Spark job descriptions (sparkbatch._jobs): what the Spark UI shows for sparkbatch's jobs, and
the caller's description put back afterwards."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sparkbatch._jobs import JobDescription
from sparkbatch.data import DataSet
from sparkbatch.spark import batch_and_export

pytestmark = pytest.mark.spark


def _note_description(path: str, items):
    """Pass a partition's DataSets through, writing down the job description its task got."""
    from pyspark import TaskContext

    with open(path, "a") as f:
        f.write(f"{TaskContext.get().getLocalProperty('spark.job.description')}\n")
    yield from items


def test_batch_and_export_describes_its_job_and_restores_the_callers(sc, tmp_path):
    seen = tmp_path / "descriptions.txt"
    data = DataSet(np.zeros((4, 2), np.float32), np.ones((4, 1), np.float32))
    rdd = sc.parallelize(data.split(2), 2).mapPartitions(
        functools.partial(_note_description, str(seen))
    )
    out = str(tmp_path / "out")
    sc.setJobDescription("nightly ETL")
    try:
        assert len(batch_and_export(rdd, out, 2)) == 2
        assert sc.getLocalProperty("spark.job.description") == "nightly ETL"
    finally:
        sc.setJobDescription(None)
    expected = f"nightly ETL - sparkbatch: export minibatches of 2 to {out}"
    assert seen.read_text().splitlines() == [expected, expected]


def test_a_description_is_restored_after_an_error_and_none_stays_none(sc):
    assert sc.getLocalProperty("spark.job.description") is None
    with pytest.raises(RuntimeError), JobDescription(sc, "sparkbatch: failing"):
        assert sc.getLocalProperty("spark.job.description") == "sparkbatch: failing"
        raise RuntimeError("the action failed")
    assert sc.getLocalProperty("spark.job.description") is None
