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
    with pytest.raises(OSError, match="a-file"):
        batch_and_export(sc.parallelize(_datasets([3]), 1), str(blocker / "out"), batch_size=2)


# --- NOTE [export commit]: incomplete exports are refused, overwrite removes only its own files


def test_a_failed_export_is_refused_by_every_reader_until_rerun(sc, tmp_path):
    from sparkbatch.data import FileDataSetIterator
    from sparkbatch.data.manifest import minibatch_files
    from sparkbatch.errors import IncompleteExportError

    out = str(tmp_path / "failed")
    good = _datasets([10, 10, 10, 10])
    rdd = sc.parallelize([good[0], good[1], None, good[2], good[3]], 2)
    with pytest.raises(TypeError, match=r"partition 1, element 0: expected a DataSet .*NoneType"):
        batch_and_export(rdd, out, batch_size=3)
    assert _files(out), "the partition without the bad element was written"
    for read in (
        lambda: minibatch_files(out),
        lambda: list_paths(sc, out),
        lambda: list(FileDataSetIterator(out)),
    ):
        with pytest.raises(IncompleteExportError, match=rf"{out}: incomplete export .*overwrite"):
            read()
    with pytest.raises(FileExistsError, match="incomplete export"):
        batch_and_export(sc.parallelize(good, 2), out, batch_size=3)
    # what a killed writer leaves (a temporary of a part) goes; a file of the user's stays
    dead = ".part-00001-000003.safetensors.0123456789abcdef.tmp"
    for name in (dead, ".keep"):
        open(os.path.join(out, name), "wb").close()
    urls = batch_and_export(sc.parallelize(good, 2), out, batch_size=3, overwrite=True)
    assert sorted(os.listdir(out)) == sorted([*_files(out), "_manifest.json", ".keep"])
    read_back = [load(u).features[:, 0] for u in list_paths(sc, out).collect()]
    values = np.sort(np.concatenate(read_back))
    np.testing.assert_array_equal(values, np.arange(40, dtype=np.float32))
    assert len(urls) == len(_files(out))


def test_elements_that_are_not_datasets_are_named(sc, tmp_path):
    for bad, name in [({"x": 1}, "dict"), (np.zeros(3), "ndarray"), ("a,b", "str")]:
        rdd = sc.parallelize([_datasets([2])[0], bad], 1)
        with pytest.raises(TypeError, match=rf"partition 0, element 1: .* got {name}\n"):
            batch_and_export(rdd, str(tmp_path / name), batch_size=2)


def test_a_multidataset_among_datasets_is_named(sc, tmp_path):
    ds = _datasets([2])[0]
    rdd = sc.parallelize([ds, MultiDataSet.from_dataset(ds)], 1)
    with pytest.raises(ValueError, match=r"partition 0, element 1: a MultiDataSet .* is a DataSet"):
        batch_and_export(rdd, str(tmp_path / "kinds"), batch_size=2)


def test_feature_widths_must_agree_within_and_across_partitions(sc, tmp_path):
    from sparkbatch.data.manifest import minibatch_files
    from sparkbatch.errors import IncompleteExportError

    narrow = DataSet(np.zeros((4, 5), np.float32), np.zeros((4, 2), np.float32))
    wide = DataSet(np.zeros((4, 7), np.float32), np.zeros((4, 2), np.float32))
    one_partition = sc.parallelize([narrow, wide], 1)
    with pytest.raises(ValueError, match=r"partition 0, element 1: .*features \(4, 7\).* \(n, 5\)"):
        batch_and_export(one_partition, str(tmp_path / "within"), batch_size=4)
    out = str(tmp_path / "across")
    with pytest.raises(ValueError, match=r"part-00001-000000.safetensors does not match "
                       r"part-00000-000000.safetensors: features of shape \(4, 7\)"):
        batch_and_export(sc.parallelize([narrow, wide], 2), out, batch_size=4)
    with pytest.raises(IncompleteExportError):
        minibatch_files(out)


def test_masked_sequences_may_differ_in_length(sc, tmp_path):
    def sequence(steps: int) -> DataSet:
        return DataSet(
            np.zeros((2, 3, steps), np.float32),
            np.zeros((2, 2, steps), np.float32),
            np.ones((2, steps), np.float32),
            np.ones((2, steps), np.float32),
        )

    urls = batch_and_export(sc.parallelize([sequence(4), sequence(9)], 2), str(tmp_path), 2)
    assert [load(u).features.shape for u in urls] == [(2, 3, 4), (2, 3, 9)]


def test_overwrite_removes_only_what_an_earlier_export_wrote(sc, tmp_path):
    out = tmp_path / "mixed"
    batch_and_export(sc.parallelize(_datasets([6]), 1), str(out), batch_size=2)
    (out / "notes.txt").write_text("mine")
    urls = batch_and_export(sc.parallelize(_datasets([2]), 1), str(out), 2, overwrite=True)
    assert len(urls) == 1 and (out / "notes.txt").read_text() == "mine"
    # a checkpoint beside the export, and a minibatch file of the user's in a subdirectory
    DataSet(np.ones((1, 1), np.float32)).save(str(out / "model.safetensors"))
    DataSet(np.ones((1, 1), np.float32)).save(str(out / "sub" / "mine.safetensors"))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(FileExistsError, match=r"2 minibatch file\(s\) that no sparkbatch export "
                       r"there wrote \(.*model.safetensors, .*sub/mine.safetensors\)"):
        batch_and_export(sc.parallelize(_datasets([2]), 1), str(out), 2, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


def test_overwrite_of_a_plain_directory_of_files_removes_nothing(sc, tmp_path):
    for i in range(2):
        _datasets([2])[0].save(str(tmp_path / f"dataset_{i}.safetensors"))
    with pytest.raises(FileExistsError, match="no sparkbatch export there wrote"):
        batch_and_export(sc.parallelize(_datasets([2]), 1), str(tmp_path), 2, overwrite=True)
    assert _files(tmp_path) == ["dataset_0.safetensors", "dataset_1.safetensors"]


def test_a_commit_interrupted_before_the_marker_is_removed_is_complete(tmp_path):
    from sparkbatch.data import export_datasets
    from sparkbatch.data.manifest import PENDING_NAME, minibatch_files
    from sparkbatch.errors import IncompleteExportError

    urls = export_datasets(_datasets([2, 2]), str(tmp_path))
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    marker = {"export_id": manifest["export_id"], "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / PENDING_NAME).write_text(json.dumps(marker))
    assert minibatch_files(str(tmp_path)) == urls
    marker["export_id"] = "another"  # a later export began here and has not finished
    (tmp_path / PENDING_NAME).write_text(json.dumps(marker))
    with pytest.raises(IncompleteExportError, match="started 2026-01-01"):
        minibatch_files(str(tmp_path))


def test_an_incomplete_export_in_a_subdirectory_is_refused(tmp_path):
    from sparkbatch.data import export_datasets
    from sparkbatch.data.manifest import minibatch_files
    from sparkbatch.errors import IncompleteExportError

    export_datasets(_datasets([2]), str(tmp_path / "a"))

    def failing():
        yield from _datasets([2, 2])
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        export_datasets(failing(), str(tmp_path / "b"))
    with pytest.raises(IncompleteExportError, match=rf"{tmp_path / 'b'}: incomplete export"):
        minibatch_files(str(tmp_path))
    assert len(minibatch_files(str(tmp_path / "a"))) == 1
    export_datasets(_datasets([2, 2]), str(tmp_path / "b"), overwrite=True)
    assert len(minibatch_files(str(tmp_path))) == 3


def test_export_datasets_refuses_mixed_shapes_naming_both_files(tmp_path):
    from sparkbatch.data import export_datasets

    batches = [DataSet(np.zeros((2, w), np.float32)) for w in (3, 3, 4)]
    with pytest.raises(ValueError, match=r"dataset_000002.safetensors does not match "
                       r"dataset_000000.safetensors: features of shape \(2, 4\)"):
        export_datasets(batches, str(tmp_path))


def test_errors_on_executors_keep_their_type_and_message(sc, tmp_path):
    from sparkbatch.errors import CsvError
    from sparkbatch.spark import csv_to_datasets

    csv = tmp_path / "bad.csv"
    csv.write_text("1,2,0\n3,x,1\n")
    rdd = csv_to_datasets(str(csv), label_index=2, num_classes=2, sc=sc)
    with pytest.raises(CsvError) as caught:
        batch_and_export(rdd, str(tmp_path / "out"), batch_size=2)
    first = str(caught.value).splitlines()[0]
    assert first.startswith(f"{csv}, line 2, column 1: expected a number"), first
    assert "raised in a Spark task" in str(caught.value)
    assert type(caught.value.__cause__).__module__.startswith("pyspark")


def test_overwrite_with_another_prefix_keeps_files_that_only_match_the_new_names(tmp_path):
    from sparkbatch.data import export_datasets

    export_datasets(_datasets([2]), str(tmp_path), prefix="a")
    mine = tmp_path / "b_000042.safetensors"  # a file of the user's, named like the new export
    _datasets([1])[0].save(str(mine))
    with pytest.raises(FileExistsError, match="b_000042.safetensors"):
        export_datasets(_datasets([2]), str(tmp_path), prefix="b", overwrite=True)
    assert mine.exists() and (tmp_path / "a_000000.safetensors").exists()


def test_a_commit_removes_the_temporaries_of_killed_writers_also_of_long_names(tmp_path):
    from sparkbatch.data import export_datasets
    from sparkbatch.storage.paths import _temp_name

    prefix = "a-rather-long-prefix-of-thirty-six-ch"

    def killed_then_more():
        yield from _datasets([2])
        # what a writer killed while writing file 1 leaves: its hidden temporary
        name = _temp_name(f"{prefix}_000001.safetensors")
        (tmp_path / name).write_bytes(b"partial")
        yield from _datasets([2])

    export_datasets(killed_then_more(), str(tmp_path), prefix=prefix)
    assert sorted(os.listdir(tmp_path)) == [
        "_manifest.json", f"{prefix}_000000.safetensors", f"{prefix}_000001.safetensors"
    ]


def test_part_names_past_a_million_are_an_exports_own(tmp_path):
    import re

    from sparkbatch.data.manifest import part_pattern
    from sparkbatch.spark.export import PART_PATTERN, file_name

    assert re.fullmatch(part_pattern("dataset"), "dataset_1000000.safetensors")
    assert re.fullmatch(PART_PATTERN, file_name(123456, 1000000))
