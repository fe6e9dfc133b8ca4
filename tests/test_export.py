"""batch_and_export, BatchAndExport and list_paths on a real local Spark: exactly-once output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sparkbatch.data import DataSet, MultiDataSet, load
from sparkbatch.spark import BatchAndExport, batch_and_export, list_paths

pytestmark = pytest.mark.spark


def _datasets(sizes: list[int], start: int = 0) -> list[DataSet]:
    """DataSets whose feature value is the global example number, so order can be checked."""
    out = []
    for n in sizes:
        values = np.arange(start, start + n, dtype=np.float32).reshape(-1, 1)
        out.append(DataSet(values, np.eye(3, dtype=np.float32)[values[:, 0].astype(int) % 3]))
        start += n
    return out


def _files(directory) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))


def test_every_example_once_in_order_with_exact_batch_sizes(sc, tmp_path):
    # partition 0: a DataSet holding several minibatches, then small ones; partition 1: tiny ones
    parts = [_datasets([23, 2, 1, 9], 0), _datasets([1] * 7, 35)]
    rdd = sc.parallelize(parts, 2).flatMap(lambda x: x)
    out = str(tmp_path / "export")
    urls = batch_and_export(rdd, out, batch_size=4)
    assert urls == [os.path.join(out, f) for f in _files(out)]
    sizes = {f: load(os.path.join(out, f)).num_examples for f in _files(out)}
    p0 = [s for f, s in sizes.items() if f.startswith("part-00000")]
    p1 = [s for f, s in sizes.items() if f.startswith("part-00001")]
    assert p0 == [4] * 8 + [3] and p1 == [4, 3]
    values = np.concatenate([load(u).features[:, 0] for u in urls])
    np.testing.assert_array_equal(values, np.arange(42, dtype=np.float32))


def test_manifest_lists_files_counts_shapes_and_dtypes(sc, tmp_path):
    rdd = sc.parallelize(_datasets([10, 10, 5]), 2)
    out = str(tmp_path / "m")
    urls = batch_and_export(rdd, out, batch_size=8)
    manifest = json.loads((tmp_path / "m" / "_manifest.json").read_text())
    assert manifest["num_examples"] == 25 and manifest["num_files"] == len(urls)
    assert [os.path.join(out, f["path"]) for f in manifest["files"]] == urls
    first = manifest["files"][0]
    assert first["tensors"]["features"] == {"dtype": "float32", "shape": [first["num_examples"], 1]}
    assert list_paths(sc, out).collect() == urls


def test_list_paths_lists_the_directory_without_a_manifest(sc, tmp_path):
    rdd = sc.parallelize(_datasets([6, 6]), 2)
    out = str(tmp_path / "plain")
    rdd.mapPartitionsWithIndex(BatchAndExport(4, out), preservesPartitioning=True).collect()
    assert not os.path.exists(os.path.join(out, "_manifest.json"))
    assert list_paths(sc, out).collect() == [os.path.join(out, f) for f in _files(out)]


def test_paths_can_be_saved_as_text_and_reloaded(sc, tmp_path):
    rdd = sc.parallelize(_datasets([5, 5]), 2)
    out, listing = str(tmp_path / "e"), str(tmp_path / "paths.txt")
    rdd.mapPartitionsWithIndex(BatchAndExport(3, out), True).saveAsTextFile(listing)
    reloaded = sorted(sc.textFile(listing).collect())
    assert reloaded == [os.path.join(out, f) for f in _files(out)]


def test_multidatasets_export(sc, tmp_path):
    mds = [
        MultiDataSet(
            [np.full((n, 2), i, np.float32), np.ones((n, 3), np.float32)], [np.ones((n, 1))]
        )
        for i, n in enumerate([3, 4, 5])
    ]
    urls = batch_and_export(sc.parallelize(mds, 1), str(tmp_path / "mds"), batch_size=5)
    loaded = [load(u) for u in urls]
    assert all(isinstance(x, MultiDataSet) for x in loaded)
    assert [x.num_examples for x in loaded] == [5, 5, 2]
    np.testing.assert_array_equal(
        np.concatenate([x.features[0][:, 0] for x in loaded]), np.repeat([0, 1, 2], [3, 4, 5])
    )


class _FailOnFirstAttempt:
    """Writes through BatchAndExport, then fails partition 1's first attempt after two files."""

    def __init__(self, inner: BatchAndExport) -> None:
        self.inner = inner

    def __call__(self, index, items):
        from pyspark import TaskContext

        written = []
        for url in self.inner(index, items):
            written.append(url)
            if index == 1 and len(written) == 2 and TaskContext.get().attemptNumber() == 0:
                raise RuntimeError("injected failure after writing two files")
        return written


def test_a_retried_task_overwrites_its_own_files(sc, tmp_path):
    out = str(tmp_path / "retry")
    rdd = sc.parallelize([_datasets([10], 0), _datasets([10], 10)], 2).flatMap(lambda x: x)
    urls = rdd.mapPartitionsWithIndex(_FailOnFirstAttempt(BatchAndExport(3, out)), True).collect()
    assert len(urls) == 8 and _files(out) == sorted(os.path.basename(u) for u in urls)
    assert [f for f in os.listdir(out) if not f.endswith(".safetensors")] == []
    values = np.sort(np.concatenate([load(u).features[:, 0] for u in urls]))
    np.testing.assert_array_equal(values, np.arange(20, dtype=np.float32))


def test_existing_output_needs_overwrite(sc, tmp_path):
    out = str(tmp_path / "twice")
    batch_and_export(sc.parallelize(_datasets([9]), 1), out, batch_size=2)  # 5 files
    with pytest.raises(FileExistsError, match="overwrite=True"):
        batch_and_export(sc.parallelize(_datasets([4]), 1), out, batch_size=2)
    urls = batch_and_export(sc.parallelize(_datasets([4]), 1), out, batch_size=2, overwrite=True)
    assert len(urls) == 2 and len(_files(out)) == 2  # no stale files of the first export


def test_unwritable_destination_fails_naming_it(sc, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(Exception, match="a-file"):
        batch_and_export(sc.parallelize(_datasets([3]), 1), str(blocker / "out"), batch_size=2)
