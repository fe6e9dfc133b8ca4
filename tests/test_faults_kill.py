"""Killed Python workers on a real local Spark (``local[2,2]``: a failed task is retried once).

A Python worker sends itself SIGKILL at a chosen point, once (a marker file claimed with
``O_CREAT | O_EXCL`` remembers it; see ``tests/faults.py``), as when the kernel's OOM killer or
an operator ends it. Spark sees the worker crash, fails the task and runs it again. These tests
prove that the export then holds every example exactly once, that training fits every example
once per epoch and ends with the parameters of a run without the kill, and that an export whose
every attempt is killed is refused by every reader until it is re-run.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from tests.faults import KillAt, KillingLoader, claimed

from sparkbatch.data import DataSet, FileDataSetIterator, load
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import SGD, Adam, Dense, Network, Output
from sparkbatch.spark import batch_and_export, list_paths
from sparkbatch.train import ParameterAveraging, SparkNetwork

pytestmark = pytest.mark.spark

PARTITIONS = 3
ITEMS = 20  # DataSets per partition
ITEM_SIZE = 10  # examples per DataSet
BATCH = 25  # examples per file: 8 files per partition (the last holds 25 too)
EXAMPLES = PARTITIONS * ITEMS * ITEM_SIZE


def _items() -> list[DataSet]:
    """DataSets whose one feature is the example's global index (its id)."""
    out = []
    for start in range(0, EXAMPLES, ITEM_SIZE):
        ids = np.arange(start, start + ITEM_SIZE, dtype=np.float32).reshape(-1, 1)
        out.append(DataSet(ids, np.eye(2, dtype=np.float32)[ids[:, 0].astype(int) % 2]))
    return out


def _ids(urls: list[str]) -> np.ndarray:
    return np.concatenate([load(u).features[:, 0] for u in urls]).astype(np.int64)


def _assert_exported_once(directory: str, urls: list[str]) -> None:
    """Every example exactly once, partitions in order, and nothing else in the directory."""
    names = [f"part-{p:05d}-{k:06d}.safetensors" for p in range(PARTITIONS) for k in range(8)]
    assert sorted(os.path.basename(u) for u in urls) == names
    ids = _ids(urls)
    np.testing.assert_array_equal(np.sort(ids), np.arange(EXAMPLES))  # none lost or doubled
    np.testing.assert_array_equal(ids, np.arange(EXAMPLES))  # and in order
    assert sorted(os.listdir(directory)) == sorted(["_manifest.json", *names])  # no temporaries
    assert minibatch_files(directory) == urls
    iterated = np.concatenate([d.features[:, 0] for d in FileDataSetIterator(directory)])
    np.testing.assert_array_equal(iterated, np.arange(EXAMPLES))


def test_an_export_whose_python_worker_is_killed_holds_every_example_once(sc, tmp_path):
    out = str(tmp_path / "export")
    markers = str(tmp_path)
    # Partition 1 is killed when its 13th DataSet comes: 120 examples read, 4 files written.
    kill = KillAt(markers, partition=1, at=12, watch=out)
    rdd = sc.parallelize(_items(), PARTITIONS).mapPartitionsWithIndex(kill, True)
    urls = batch_and_export(rdd, out, BATCH)
    (killed,) = claimed(markers, "killed")
    assert killed["partition"] == 1 and killed["attempt"] == 0
    assert {f"part-00001-{k:06d}.safetensors" for k in range(4)} <= set(killed["listing"])
    assert killed["pid"] != os.getpid()
    _assert_exported_once(out, urls)
    assert list_paths(sc, out).collect() == urls


def test_an_export_killed_on_every_attempt_is_refused_by_readers_until_rerun(sc, tmp_path):
    from sparkbatch.errors import IncompleteExportError

    out = str(tmp_path / "export")
    markers = str(tmp_path)
    kill = KillAt(markers, partition=1, at=12, times=2, watch=out)  # both tries of the task
    rdd = sc.parallelize(_items(), PARTITIONS).mapPartitionsWithIndex(kill, True)
    with pytest.raises(Exception, match="(?i)python worker exited unexpectedly|crash") as failed:
        batch_and_export(rdd, out, BATCH)
    print(f"the failed export raised {type(failed.value).__name__}: {failed.value}"[:2000])
    assert [k["attempt"] for k in claimed(markers, "killed")] == [0, 1]
    written = [f for f in os.listdir(out) if f.endswith(".safetensors")]
    assert {f"part-00001-{k:06d}.safetensors" for k in range(4)} <= set(written)  # partial
    net = SparkNetwork(sc, Network([Dense(1, 2, "tanh"), Output(2, 2)], SGD(0.1), seed=0))
    readers = {
        "minibatch_files": lambda: minibatch_files(out),
        "list_paths": lambda: list_paths(sc, out),
        "FileDataSetIterator": lambda: list(FileDataSetIterator(out)),
        "SparkNetwork.fit": lambda: net.fit(out),
    }
    for reader, call in readers.items():
        with pytest.raises(IncompleteExportError, match=re.escape(out)) as refused:
            call()
        assert "incomplete" in str(refused.value).lower(), reader
    rdd = sc.parallelize(_items(), PARTITIONS)
    urls = batch_and_export(rdd, out, BATCH, overwrite=True)
    _assert_exported_once(out, urls)


# --- Training --------------------------------------------------------------------------------


def _data(n: int) -> DataSet:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3] + 0.3 * x[:, 3:], axis=1)]
    return DataSet(x, y)


def _network() -> Network:
    return Network([Dense(4, 8, "tanh"), Output(8, 3)], Adam(0.01), seed=1)


@pytest.mark.parametrize("exchange", ["spark", "socket"])
def test_training_whose_python_worker_is_killed_fits_every_example_once_per_epoch(
    sc, tmp_path, exchange
):
    # 24 files of 10 examples; 2 workers fitting 3 files between averagings: 4 rounds an epoch.
    directory = str(tmp_path / "files")
    batch_and_export(sc.parallelize(_data(240).split(40), 2), directory, 10)
    files = minibatch_files(directory)
    master = ParameterAveraging(
        batch_size_per_worker=10,
        averaging_frequency=3,
        workers=2,
        shuffle=True,
        seed=5,
        exchange=exchange,
    )
    markers = str(tmp_path)
    # The first load of files[13] kills its worker in epoch 1, in the middle of a round.
    killed_run = SparkNetwork(sc, _network(), master)
    killed_run.fit_paths(files, KillingLoader(files[13], markers), epochs=2)
    (killed,) = claimed(markers, "killed")
    assert killed["url"] == files[13] and killed["pid"] != os.getpid()
    clean_run = SparkNetwork(sc, _network(), master)
    clean_run.fit_paths(files, KillingLoader("no file", markers), epochs=2)
    # Each epoch fitted 240 examples, in the same rounds as without the kill ...
    rounds = killed_run.stats.rounds
    assert [sum(r.examples for r in rounds if r.epoch == e) for e in (0, 1)] == [240, 240]
    assert [(r.epoch, r.examples, r.workers) for r in rounds] == [
        (r.epoch, r.examples, r.workers) for r in clean_run.stats.rounds
    ]
    # ... and the parameters are those of the run without it: no minibatch was fitted twice
    # into an average, none was left out.
    np.testing.assert_allclose(
        killed_run.model.params(), clean_run.model.params(), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        killed_run.model.updater_state(), clean_run.model.updater_state(), rtol=0, atol=1e-6
    )
    assert killed_run.model.iteration == clean_run.model.iteration == 2 * 12


# --- A single-machine export killed with a file written but not yet committed ------------------

_WRITER = """
import os
import signal
import sys
import numpy as np
from sparkbatch.data import DataSet, export_datasets
from sparkbatch.storage import paths

commit = paths._commit_local

def killed_at_the_fourth(tmp, target, overwrite, url):
    # The real writer wrote the fourth minibatch's temporary; die as it would be committed.
    if os.path.basename(target).startswith("dataset_000003"):
        os.kill(os.getpid(), signal.SIGKILL)
    commit(tmp, target, overwrite, url)

paths._commit_local = killed_at_the_fourth

def minibatches():
    for i in range(6):
        ids = np.full((1024, 4), i, np.float32)
        yield DataSet(ids, np.ones((1024, 1), np.float32))

export_datasets(minibatches(), sys.argv[1])
"""


def test_a_single_machine_export_killed_mid_file_leaves_no_file_a_reader_takes(tmp_path):
    import signal
    import subprocess
    import sys

    from sparkbatch.errors import IncompleteExportError

    out = tmp_path / "export"
    # The writer kills itself (SIGKILL) when it is about to commit the fourth file: the moment
    # of death is chosen, not raced for.
    child = subprocess.run([sys.executable, "-c", _WRITER, str(out)], timeout=120)
    assert child.returncode == -signal.SIGKILL, "the writer was not killed at the fourth file"
    left = sorted(os.listdir(out))
    assert "_in_progress.json" in left and "_manifest.json" not in left
    assert [n for n in left if n.endswith(".safetensors")] == [
        f"dataset_{i:06d}.safetensors" for i in range(3)
    ]
    assert any(n.startswith(".dataset_000003") for n in left)  # the uncommitted temporary
    for reader in (lambda: minibatch_files(str(out)), lambda: list(FileDataSetIterator(out))):
        with pytest.raises(IncompleteExportError, match=re.escape(str(out))):
            reader()
    from sparkbatch.data import export_datasets

    export_datasets(_items()[:4], out, overwrite=True)
    assert sorted(os.listdir(out)) == ["_manifest.json"] + [
        f"dataset_{i:06d}.safetensors" for i in range(4)
    ]  # the marker and the killed writer's temporary are gone
    ids = np.concatenate([d.features[:, 0] for d in FileDataSetIterator(out)])
    np.testing.assert_array_equal(ids, np.arange(4 * ITEM_SIZE))
