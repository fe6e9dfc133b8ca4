"""Jobs on a real Spark standalone cluster: a master and two workers on 127.0.0.1.

The cluster (fixture ``cluster``) is shared by every cluster test of the run; the jobs run in one
child Python process with its own SparkContext on it (fixture ``cluster_driver``, NOTE [shared
driver] in ``tests/cluster.py``), since this process already holds the local one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tests.cluster import processes_mentioning, run_on_cluster, standalone_cluster

from sparkbatch.data import DataSet
from sparkbatch.nn import Network

pytestmark = pytest.mark.cluster


def test_the_master_sees_two_workers(cluster):
    status = cluster.status()
    assert status["status"] == "ALIVE" and status["url"] == cluster.url
    assert [w["state"] for w in status["workers"]] == ["ALIVE", "ALIVE"]
    assert sorted(w["cores"] for w in status["workers"]) == [1, 1]


def test_a_job_runs_on_two_executors(cluster, cluster_driver):
    result = cluster_driver.run(
        """
        import json
        from cluster import cluster_session, partition_info

        spark = cluster_session()
        sc = spark.sparkContext
        rows = sc.parallelize(range(8), 4).mapPartitionsWithIndex(partition_info).collect()
        executors = sc._jsc.sc().statusTracker().getExecutorInfos()
        print(json.dumps({"master": sc.master, "executors": len(executors), "rows": rows}))
        """,
    )
    assert result["master"] == cluster.url
    assert result["executors"] == 3  # the driver and two executors
    rows = sorted(result["rows"], key=lambda row: row["partition"])
    assert [row["sum"] for row in rows] == [1, 5, 9, 13]
    # An executor's Python workers run in <worker work dir>/<app id>/<executor id>.
    executor_dirs = {Path(row["cwd"]) for row in rows}
    assert len(executor_dirs) == 2, executor_dirs
    assert {d.parent.parent for d in executor_dirs} == set(cluster.work_dirs)


def test_a_failing_script_reports_its_output(cluster):
    with pytest.raises(AssertionError, match=r"exited with code 3(.|\n)*went wrong here"):
        run_on_cluster(cluster, "import sys\nsys.stderr.write('went wrong here')\nsys.exit(3)\n")
    with pytest.raises(AssertionError, match="ran past its timeout of 1 s"):
        run_on_cluster(cluster, "import time\ntime.sleep(30)\n", timeout=1)


def test_a_failing_script_in_the_shared_driver_reports_it_and_the_driver_goes_on(cluster_driver):
    with pytest.raises(AssertionError, match=r"shared driver(.|\n)*went wrong here"):
        cluster_driver.run("raise ValueError('went wrong here')")
    with pytest.raises(AssertionError, match=r"shared driver(.|\n)*exited with code 3"):
        cluster_driver.run("import sys\nsys.exit(3)\n")
    assert cluster_driver.run("print('no JSON')\nprint('[1, 2]')") == [1, 2]


# --- Training on the cluster ---------------------------------------------------------------------


def test_fit_and_evaluate_on_the_cluster(cluster_driver, tmp_path):
    # Data written here; the executors read the same local paths (one machine).
    data = tmp_path / "minibatches"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3] - x[:, 3:], axis=1)]
    for i, part in enumerate(DataSet(x, y).split(50)):
        part.save(data / f"part-{i:03d}.safetensors")
    result = cluster_driver.run(
        f"""
import json
from cluster import cluster_session
from sparkbatch.nn import Adam, Dense, Network, Output
from sparkbatch.train import ParameterAveraging, SparkNetwork

spark = cluster_session()
sc = spark.sparkContext
net = Network([Dense(6, 16, "tanh"), Output(16, 3)], Adam(0.02), seed=0)
master = ParameterAveraging(batch_size_per_worker=50, averaging_frequency=3, workers=2,
                            collect_stats=True)
spark_net = SparkNetwork(sc, net, master)
spark_net.fit({str(data)!r}, epochs=3)
evaluation = spark_net.evaluate({str(data)!r})
net.save({str(tmp_path / "net.safetensors")!r})
# The same training with the socket exchange: one barrier job per epoch, averaging through
# the driver over TCP; the executors connect to spark.driver.host.
socket_net = Network([Dense(6, 16, "tanh"), Output(16, 3)], Adam(0.02), seed=0)
socket_master = ParameterAveraging(batch_size_per_worker=50, averaging_frequency=3, workers=2,
                                   exchange="socket")
socket_spark_net = SparkNetwork(sc, socket_net, socket_master)
socket_spark_net.fit({str(data)!r}, epochs=3)
# And with the ring exchange: the executors sum among themselves (over the addresses Spark
# gives their tasks), worker 0 sends each round's sum to the driver.
ring_net = Network([Dense(6, 16, "tanh"), Output(16, 3)], Adam(0.02), seed=0)
ring_master = ParameterAveraging(batch_size_per_worker=50, averaging_frequency=3, workers=2,
                                 exchange="ring")
ring_spark_net = SparkNetwork(sc, ring_net, ring_master)
ring_spark_net.fit({str(data)!r}, epochs=3)
executors = sc._jsc.sc().statusTracker().getExecutorInfos()
print(json.dumps({{
    "socket_difference": float(abs(socket_net.params() - net.params()).max()),
    "socket_rounds": len(socket_spark_net.stats.rounds),
    "ring_difference": float(abs(ring_net.params() - net.params()).max()),
    "ring_rounds": len(ring_spark_net.stats.rounds),
    "accuracy": evaluation.accuracy(),
    "confusion": evaluation.confusion_matrix().tolist(),
    "rounds": len(spark_net.stats.rounds),
    "examples": [r.examples for r in spark_net.stats.rounds],
    "workers": sorted({{p.worker for p in spark_net.stats.phases}}),
    "executors": len(executors),
}}))
""",
        timeout=300,
    )
    assert result["executors"] == 3  # the driver and two executors
    assert result["rounds"] == 3 * 4  # 24 files, 2 workers x 3 files per round
    assert sum(result["examples"]) == 3 * 1200
    assert {"worker 0", "worker 1", "driver"} <= set(result["workers"])
    assert result["accuracy"] > 0.9
    assert result["socket_rounds"] == result["rounds"]
    assert result["socket_difference"] < 1e-5
    assert result["ring_rounds"] == result["rounds"]
    assert result["ring_difference"] < 1e-5
    # the distributed evaluation counts what a local evaluation of the trained model counts
    local = Network.load(tmp_path / "net.safetensors").evaluate(DataSet(x, y))
    np.testing.assert_array_equal(result["confusion"], local.confusion_matrix())


def test_a_worker_that_cannot_start_is_reported():
    with pytest.raises(RuntimeError, match=r"the Spark worker 0 exited(.|\n)*worker-0.log") as info:
        with standalone_cluster(workers=1, memory="lots"):
            pytest.fail("the cluster should not have started")
    root = str(info.value).split("--- ", 1)[1].split("/logs/", 1)[0]
    assert root.startswith("/") and not os.path.exists(root)
    assert processes_mentioning(root) == []
