"""Killed Python workers and a killed executor on a real Spark standalone cluster (127.0.0.1).

One driver script (``tests/cluster.py`` runs it in a child process) with
``spark.task.maxFailures=2``, so a failed task is tried once more, as on the local master of
``test_faults_kill.py``:

1. an export whose Python worker is killed (SIGKILL) after it wrote part of its partition;
2. (``tests/soak/cluster_kills.py`` only) an export whose executor JVM is killed the same way
   (the task moves to the other executor);
3. training (SGD) with the Spark exchange (and, in the soak script, the socket exchange), a
   worker killed in the middle of a round; the parameters are compared with parameter
   averaging done by hand on the same schedule.

:func:`check` then proves that every example was exported exactly once and fitted once per
epoch. The suite runs the Python-worker kills only, in the driver the cluster tests share
(fixture ``cluster_driver``: a cluster and a driver cost about 25 s before the first job); the
soak script runs everything in a driver of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.cluster import DRIVER_CONF, ClusterDriver, StandaloneCluster, run_on_cluster

from sparkbatch.data import DataSet, export_datasets, load
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import SGD, Dense, Network, Output
from sparkbatch.train import plan_rounds

pytestmark = pytest.mark.cluster

SCRIPT = """
import json
import os
import time

import numpy as np
from cluster import cluster_session
from faults import KillAt, KillingLoader, claimed

from sparkbatch.data import DataSet, load
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import SGD, Dense, Network, Output
from sparkbatch.spark import batch_and_export
from sparkbatch.train import ParameterAveraging, SparkNetwork

root = {root!r}
began = time.time()
laps = []  # (step, seconds since the script began), printed by the test
def lap(what):
    laps.append((what, round(time.time() - began, 1)))
spark = cluster_session(conf={driver_conf!r})
sc = spark.sparkContext
items = []
for start in range(0, 600, 10):  # example ids 0..599 as the one feature
    ids = np.arange(start, start + 10, dtype=np.float32).reshape(-1, 1)
    items.append(DataSet(ids, np.eye(2, dtype=np.float32)[ids[:, 0].astype(int) % 2]))
result = {{}}
lap("session")
for target in {targets!r}:
    out = os.path.join(root, "export-" + target)
    markers = os.path.join(root, "markers-" + target)
    os.makedirs(markers)
    kill = KillAt(markers, partition=1, at=12, watch=out, target=target)
    rdd = sc.parallelize(items, 3).mapPartitionsWithIndex(kill, True)
    urls = batch_and_export(rdd, out, 25)
    result[target] = {{
        "killed": claimed(markers, "killed"),
        "names": [os.path.basename(u) for u in urls],
        "listing": sorted(os.listdir(out)),
        "ids": np.concatenate([load(u).features[:, 0] for u in urls]).astype(int).tolist(),
        "manifest": [os.path.basename(u) for u in minibatch_files(out)],
    }}
    lap("export " + target)

# The standalone worker starts a new executor for a killed one; the socket exchange needs
# both task slots, so wait for it (the driver counts itself among the executors).
for _ in range(240):
    if len(sc._jsc.sc().statusTracker().getExecutorInfos()) >= 3:
        break
    time.sleep(0.5)
result["executors"] = len(sc._jsc.sc().statusTracker().getExecutorInfos())
lap("two executors")

files = minibatch_files(os.path.join(root, "train"))
def fit(exchange, loader):
    master = ParameterAveraging(batch_size_per_worker=10, averaging_frequency=3, workers=2,
                                shuffle=True, seed=5, exchange=exchange)
    net = Network([Dense(4, 8, "tanh"), Output(8, 3)], SGD(0.2), seed=1)
    spark_net = SparkNetwork(sc, net, master)
    spark_net.fit_paths(files, loader, epochs=2)
    return spark_net

for exchange in {exchanges!r}:
    markers = os.path.join(root, "markers-fit-" + exchange)
    os.makedirs(markers)
    killed = fit(exchange, KillingLoader(files[13], markers))
    result["fit-" + exchange] = {{
        "killed": claimed(markers, "killed"),
        "rounds": [[r.epoch, r.examples, r.workers] for r in killed.stats.rounds],
        "params": killed.model.params().tolist(),
        "iteration": killed.model.iteration,
    }}
    lap("fit " + exchange)
result["laps"] = laps
print(json.dumps(result))
"""


def run(
    cluster: StandaloneCluster,
    root: Path,
    targets: tuple,
    exchanges: tuple,
    driver: ClusterDriver | None = None,
) -> dict:
    """Write the training files under ``root``, run the driver script with the kills asked
    for (``targets``: "worker", "executor"; ``exchanges``: "spark", "socket"), return its
    result. The script runs in ``driver`` (started with :data:`DRIVER_CONF`), or without one in
    a driver process of its own."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3] + 0.3 * x[:, 3:], axis=1)]
    export_datasets(DataSet(x, y).split(10), root / "train")  # 24 files
    script = SCRIPT.format(
        root=str(root), targets=targets, exchanges=exchanges, driver_conf=DRIVER_CONF
    )
    if driver is not None:
        return driver.run(script, timeout=400)
    return run_on_cluster(cluster, script, timeout=400)


def check(result: dict, cluster: StandaloneCluster, root: Path) -> None:
    """Every example exported once, training equal to averaging by hand (see the docstring)."""
    assert result["executors"] == 3
    names = [f"part-{p:05d}-{k:06d}.safetensors" for p in range(3) for k in range(8)]
    for target in ("worker", "executor"):
        if target not in result:
            continue
        export = result[target]
        (killed,) = export["killed"]
        assert killed["partition"] == 1 and killed["attempt"] == 0, target
        # the killed attempt had written its partition's first four files
        assert {f"part-00001-{k:06d}.safetensors" for k in range(4)} <= set(killed["listing"])
        assert Path(killed["cwd"]).parent.parent in cluster.work_dirs  # ran on an executor
        assert export["names"] == export["manifest"] == names, target
        assert export["listing"] == sorted(["_manifest.json", *names]), target
        assert export["ids"] == list(range(600)), target  # every example once, in order

    files = minibatch_files(str(root / "train"))
    expected = _averaged_by_hand(files, epochs=2)
    for exchange in ("spark", "socket"):
        if "fit-" + exchange not in result:
            continue
        fit = result["fit-" + exchange]
        (killed,) = fit["killed"]
        assert killed["url"] == files[13] and killed["attempt"] == 0, exchange
        assert Path(killed["cwd"]).parent.parent in cluster.work_dirs
        # 4 rounds an epoch: 2 workers x 3 files of 10 examples
        assert fit["rounds"] == [[e, 60, 2] for e in (0, 1) for _ in range(4)], exchange
        np.testing.assert_allclose(fit["params"], expected, rtol=0, atol=1e-6)
        assert fit["iteration"] == 2 * 12, exchange


def test_killed_python_workers_on_a_cluster_lose_and_double_nothing(
    cluster, cluster_driver, tmp_path
):
    result = run(cluster, tmp_path, ("worker",), ("spark",), driver=cluster_driver)
    print("steps of the driver script (s since it began):", result["laps"])
    assert "worker" in result and "fit-spark" in result
    check(result, cluster, tmp_path)


def _network() -> Network:
    return Network([Dense(4, 8, "tanh"), Output(8, 3)], SGD(0.2), seed=1)


def _averaged_by_hand(files: list[str], epochs: int) -> np.ndarray:
    """Parameter averaging on one machine with the schedule SparkNetwork plans: in every round
    each worker starts from the average and fits its files in order; SGD keeps no state."""
    params = _network().params().copy()
    for epoch in range(epochs):
        for assignment in plan_rounds(files, 2, 3, shuffle=True, seed=5, epoch=epoch):
            results = []
            for mine in assignment:
                local = _network()
                local.set_params(params)
                for url in mine:
                    local.fit_batch(load(url))
                results.append(local.params().copy())
            params = np.mean(results, axis=0)
    return params
