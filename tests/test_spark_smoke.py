"""sparkbatch inside real PySpark workers: DataSets travel through RDDs, executors write files."""

from __future__ import annotations

import numpy as np
import pytest

from sparkbatch.data import DataSet, load, save
from sparkbatch.storage import join, list_files

pytestmark = pytest.mark.spark


def _make(index: int, rows: object) -> list[DataSet]:
    values = np.array(list(rows), dtype=np.float32).reshape(-1, 1)
    return [DataSet(values, np.eye(2, dtype=np.float32)[values[:, 0].astype(int) % 2])]


class _SaveEach:
    """Writes each incoming DataSet to ``<directory>/part-<partition>.safetensors``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self, index: int, datasets: object) -> list[str]:
        out = []
        for ds in datasets:
            path = join(self.directory, f"part-{index:05d}.safetensors")
            save(ds, path, compact_labels=True)
            out.append(path)
        return out


def test_datasets_pickle_through_an_rdd(sc):
    rdd = sc.parallelize(range(10), 2).mapPartitionsWithIndex(_make)
    collected = rdd.collect()
    assert [d.num_examples for d in collected] == [5, 5]
    merged = DataSet.merge(collected)
    np.testing.assert_array_equal(merged.features[:, 0], np.arange(10, dtype=np.float32))


def test_executors_write_minibatch_files_the_driver_reads(sc, tmp_path):
    directory = str(tmp_path / "out")
    written = (
        sc.parallelize(range(10), 2)
        .mapPartitionsWithIndex(_make)
        .mapPartitionsWithIndex(_SaveEach(directory))
        .collect()
    )
    assert sorted(written) == list_files(directory)
    features = np.concatenate([load(p).features[:, 0] for p in list_files(directory)])
    np.testing.assert_array_equal(features, np.arange(10, dtype=np.float32))
