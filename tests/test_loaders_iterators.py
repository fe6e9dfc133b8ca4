"""Loaders, FileDataSetIterator / FileMultiDataSetIterator and export_datasets (no Spark)."""

from __future__ import annotations

import io
import json
import os
import pickle
import uuid

import fsspec
import numpy as np
import pytest

from sparkbatch.data import (
    DataSet,
    FileDataSetIterator,
    FileMultiDataSetIterator,
    Loader,
    MultiDataSet,
    SerializedDataSetLoader,
    SerializedMinibatchLoader,
    SerializedMultiDataSetLoader,
    Source,
    export_datasets,
    load,
    rebatch,
)
from sparkbatch.errors import FormatError
from sparkbatch.storage import join, open_output


def make_dataset(n: int = 23, seed: int = 0) -> DataSet:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, 3)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)]
    return DataSet(features, labels)


@pytest.fixture(params=["local", "memory"])
def out_dir(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "out")
        return
    root = f"/test-li-{uuid.uuid4().hex}"
    yield f"memory://{root}/out"
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def features_of(batches) -> np.ndarray:
    return np.concatenate([b.features for b in batches])


# ---------------------------------------------------------------------------------------------
# export + iterate back


def test_export_then_iterate_back(out_dir):
    ds = make_dataset()
    parts = ds.split(5)
    urls = export_datasets(parts, out_dir, progress=False)
    assert urls == [join(out_dir, f"dataset_{i:06d}.safetensors") for i in range(5)]
    it = FileDataSetIterator(out_dir)
    assert len(it) == 5
    assert it.files == urls
    got = list(it)
    assert [d.num_examples for d in got] == [5, 5, 5, 5, 3]
    for a, b in zip(got, parts, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)
    # each __iter__ is a fresh pass
    assert [d.num_examples for d in it] == [5, 5, 5, 5, 3]


def test_export_compact_labels_and_prefix(out_dir):
    ds = make_dataset(10)
    urls = export_datasets([ds], out_dir, prefix="train", compact_labels=True, progress=False)
    assert urls[0].endswith("train_000000.safetensors")
    back = load(urls[0])
    np.testing.assert_array_equal(back.labels, ds.labels)


def test_single_file_and_list_of_files(out_dir):
    urls = export_datasets(make_dataset().split(10), out_dir, progress=False)
    assert [d.num_examples for d in FileDataSetIterator(urls[2])] == [3]
    assert [d.num_examples for d in FileDataSetIterator([urls[2], urls[0]])] == [3, 10]


def test_directory_listing_is_recursive_and_skips_hidden(tmp_path):
    ds = make_dataset(6)
    export_datasets(ds.split(2)[:2], str(tmp_path / "a"), progress=False)
    export_datasets(ds.split(2)[2:], str(tmp_path / "b" / "c"), progress=False)
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")  # listed too: suffix= keeps the minibatches
    got = list(FileDataSetIterator(str(tmp_path), suffix=".safetensors"))
    np.testing.assert_array_equal(features_of(got), ds.features)


def test_multidataset_iterator(out_dir):
    ds = make_dataset(9)
    mds = MultiDataSet([ds.features, ds.features * 2], [ds.labels])
    export_datasets(mds.split(4), out_dir, progress=False)
    got = list(FileMultiDataSetIterator(out_dir, batch_size=3))
    assert [m.num_examples for m in got] == [3, 3, 3]
    assert all(isinstance(m, MultiDataSet) for m in got)
    np.testing.assert_array_equal(np.concatenate([m.features[1] for m in got]), ds.features * 2)
    # DataSet files become one-input MultiDataSets; a DataSet iterator refuses MultiDataSets
    with pytest.raises(FormatError, match="holds a MultiDataSet"):
        list(FileDataSetIterator(out_dir))


# ---------------------------------------------------------------------------------------------
# re-batching


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 23, 100])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_rebatching_across_files(tmp_path, batch_size, prefetch):
    ds = make_dataset(23)
    urls = export_datasets(ds.split(5), str(tmp_path), progress=False)
    got = list(FileDataSetIterator(urls, batch_size=batch_size, prefetch=prefetch))
    expected = [batch_size] * (23 // batch_size) + ([23 % batch_size] if 23 % batch_size else [])
    assert [d.num_examples for d in got] == expected
    np.testing.assert_array_equal(features_of(got), ds.features)
    np.testing.assert_array_equal(np.concatenate([d.labels for d in got]), ds.labels)


def test_rebatch_views_what_lies_in_one_minibatch_and_merges_what_spans_two():
    ds = make_dataset(10)
    parts = [ds[:4], ds[4:4], ds[4:10]]  # an empty one in the middle is skipped
    got = list(rebatch(iter(parts), 3))
    assert [d.num_examples for d in got] == [3, 3, 3, 1]
    np.testing.assert_array_equal(features_of(got), ds.features)
    assert np.shares_memory(got[0].features, ds.features)  # inside the first part: a view
    assert not np.shares_memory(got[1].features, ds.features)  # rows 3..5 span two: merged
    assert np.shares_memory(got[2].features, ds.features)
    mds = MultiDataSet([ds.features, ds.features * 2], [ds.labels])
    got = list(rebatch(mds.split(4), 5))
    assert [type(m).__name__ for m in got] == ["MultiDataSet"] * 2
    np.testing.assert_array_equal(np.concatenate([m.features[1] for m in got]), ds.features * 2)
    assert list(rebatch([], 3)) == []


def test_rebatch_checks_the_batch_size_at_once_and_reads_lazily():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        rebatch([], 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        rebatch([], 2.5)
    read = []

    def minibatches():
        for i in range(3):
            read.append(i)
            yield make_dataset(4, seed=i)

    first = next(rebatch(minibatches(), 2))
    assert first.num_examples == 2 and read == [0]


def test_len_with_batch_size_is_a_type_error(tmp_path):
    urls = export_datasets(make_dataset(4).split(2), str(tmp_path), progress=False)
    it = FileDataSetIterator(urls, batch_size=3)
    with pytest.raises(TypeError, match="batch_size is None"):
        len(it)
    assert [d.num_examples for d in list(it)] == [3, 1]
    # such an iterator re-exports (the progress bar goes without a total)
    again = export_datasets(it, str(tmp_path / "rebatched"), progress=True)
    assert [load(u).num_examples for u in again] == [3, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be an int, got float 2.5"),
        ({"batch_size": True}, "batch_size must be an int, got bool"),
        ({"prefetch": -1}, "prefetch must be >= 0, got -1"),
        ({"loader": object()}, "loader must have a load"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    urls = export_datasets([make_dataset(2)], str(tmp_path), progress=False)
    with pytest.raises((ValueError, TypeError), match=message):
        FileDataSetIterator(urls, **kwargs)


def test_missing_directory(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError) as info:
        FileDataSetIterator(missing)
    assert info.value.filename == missing


# ---------------------------------------------------------------------------------------------
# order: shuffle, epochs, manifest


def test_shuffle_is_deterministic_with_seed_and_varies_with_epoch(tmp_path):
    ds = make_dataset(40)
    urls = export_datasets(ds.split(2), str(tmp_path), progress=False)  # 20 files

    def order(**kwargs):
        return [float(d.features[0, 0]) for d in FileDataSetIterator(urls, **kwargs)]

    plain = order()
    a, b = order(shuffle=True, seed=3), order(shuffle=True, seed=3)
    assert a == b and a != plain and sorted(a) == sorted(plain)
    assert order(shuffle=True, seed=4) != a

    it = FileDataSetIterator(urls, shuffle=True, seed=3)
    first = [float(d.features[0, 0]) for d in it]
    assert [float(d.features[0, 0]) for d in it] == first  # same epoch, same order
    it.set_epoch(1)
    second = [float(d.features[0, 0]) for d in it]
    assert second != first and sorted(second) == sorted(first)
    # epoch k with seed s is the same order as seed s + k
    assert second == order(shuffle=True, seed=4)
    assert it.file_order() == FileDataSetIterator(urls, shuffle=True, seed=4).file_order()


def test_manifest_gives_the_order(out_dir):
    ds = make_dataset(9)
    urls = export_datasets(ds.split(3), out_dir, progress=False)
    names = [u.rsplit("/", 1)[-1] for u in urls]
    manifest = {"files": [{"path": names[2]}, {"path": names[0]}], "other": 1}
    with open_output(join(out_dir, "_manifest.json")) as f:
        f.write(json.dumps(manifest).encode())
    it = FileDataSetIterator(out_dir)
    assert it.files == [urls[2], urls[0]]
    got = list(it)
    np.testing.assert_array_equal(
        features_of(got), np.concatenate([ds.features[6:], ds.features[:3]])
    )


@pytest.mark.parametrize(
    "manifest",
    [b"{not json", b'{"files": 3}', b'{"files": [{"x": 1}]}', b'{"files": [{"path": "../a"}]}'],
)
def test_bad_manifest_is_a_format_error(tmp_path, manifest):
    export_datasets([make_dataset(2)], str(tmp_path), progress=False)
    (tmp_path / "_manifest.json").write_bytes(manifest)
    with pytest.raises(FormatError, match="_manifest.json"):
        FileDataSetIterator(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# prefetch and errors


def test_prefetch_variants_give_identical_results(out_dir):
    ds = make_dataset(31)
    export_datasets(ds.split(4), out_dir, progress=False)
    results = {}
    for prefetch in (0, 1, 2, 8):
        for batch_size in (None, 5):
            got = list(
                FileDataSetIterator(
                    out_dir, batch_size=batch_size, prefetch=prefetch, shuffle=True, seed=11
                )
            )
            results.setdefault(batch_size, []).append(features_of(got))
    for runs in results.values():
        for other in runs[1:]:
            np.testing.assert_array_equal(runs[0], other)


def test_early_close_stops_the_prefetch_thread(tmp_path):
    import threading

    urls = export_datasets(make_dataset(20).split(2), str(tmp_path), progress=False)
    gen = iter(FileDataSetIterator(urls, prefetch=3))
    next(gen)
    assert any(t.name.startswith("sparkbatch-prefetch") for t in threading.enumerate())
    gen.close()
    assert not any(t.name.startswith("sparkbatch-prefetch") for t in threading.enumerate())


@pytest.mark.parametrize("prefetch", [0, 2])
def test_vanished_file_names_the_url(out_dir, prefetch):
    urls = export_datasets(make_dataset(9).split(3), out_dir, progress=False)
    it = FileDataSetIterator(out_dir, prefetch=prefetch)
    fs, path = fsspec.core.url_to_fs(urls[1])
    fs.rm(path)
    got = []
    with pytest.raises(FileNotFoundError) as info:
        for d in it:
            got.append(d)
    assert len(got) == 1
    assert info.value.filename == urls[1]
    assert urls[1] in str(info.value)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_corrupt_file_names_the_url(out_dir, prefetch):
    urls = export_datasets(make_dataset(9).split(3), out_dir, progress=False)
    fs, path = fsspec.core.url_to_fs(urls[2])
    data = bytearray(fs.cat_file(path))
    data[-3] ^= 0xFF  # a byte of the data section: the CRC32C check fails
    fs.pipe_file(path, bytes(data))
    with pytest.raises(FormatError) as info:
        list(FileDataSetIterator(out_dir, prefetch=prefetch))
    assert urls[2] in str(info.value)
    # without verification the flipped byte goes through
    got = list(FileDataSetIterator(out_dir, loader=SerializedDataSetLoader(verify=False)))
    assert len(got) == 3


# ---------------------------------------------------------------------------------------------
# export refuses to mix with existing minibatches


def test_export_refuses_a_non_empty_directory(out_dir):
    export_datasets(make_dataset(6).split(3), out_dir, progress=False)
    with pytest.raises(FileExistsError) as info:
        export_datasets(make_dataset(4, seed=1).split(4), out_dir, prefix="other", progress=False)
    assert info.value.filename == out_dir
    assert "overwrite=True" in str(info.value)
    assert len(FileDataSetIterator(out_dir)) == 2  # nothing was written
    new = make_dataset(4, seed=1)
    urls = export_datasets([new], out_dir, overwrite=True, progress=False)
    np.testing.assert_array_equal(load(urls[0]).features, new.features)


def test_export_into_directory_with_other_files(tmp_path):
    (tmp_path / "README.txt").write_text("hello")
    assert len(export_datasets([make_dataset(2)], str(tmp_path), progress=False)) == 1


def test_export_rejects_non_minibatches(tmp_path):
    with pytest.raises(TypeError, match="item 1 of iterable"):
        export_datasets([make_dataset(2), np.zeros(3)], str(tmp_path), progress=False)


def test_export_progress_line(tmp_path, capsys):
    export_datasets(make_dataset(5).split(2), str(tmp_path), progress=True)
    err = capsys.readouterr().err
    assert "export: 100%" in err and "3/3" in err and "5 examples" in err and err.endswith("\n")
    export_datasets([make_dataset(2)], str(tmp_path / "quiet"), progress=None)  # not a TTY
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# loaders


class NpzLoader:
    """A custom format: .npz files holding arrays x and y."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def load(self, source: Source) -> DataSet:
        with source.open() as f:
            arrays = np.load(io.BytesIO(f.read()))
            return DataSet(arrays["x"] * self.scale, arrays["y"])


def test_custom_loader_with_the_iterator(out_dir):
    ds = make_dataset(12)
    urls = []
    for i, part in enumerate(ds.split(5)):
        url = join(out_dir, f"part_{i}.npz")
        with open_output(url) as f:
            np.savez(f, x=part.features, y=part.labels)
        urls.append(url)
    loader = NpzLoader(scale=2.0)
    assert isinstance(loader, Loader)
    got = list(FileDataSetIterator(urls, batch_size=4, loader=loader))
    assert [d.num_examples for d in got] == [4, 4, 4]
    np.testing.assert_allclose(features_of(got), ds.features * 2)
    multi = list(FileMultiDataSetIterator(urls, loader=loader))
    assert [type(m).__name__ for m in multi] == ["MultiDataSet"] * 3


def test_loader_returning_the_wrong_type(tmp_path):
    class Bad:
        def load(self, source):
            return [1, 2]

    urls = export_datasets([make_dataset(2)], str(tmp_path), progress=False)
    with pytest.raises(TypeError, match="Bad.load returned list, expected a DataSet"):
        list(FileDataSetIterator(urls, loader=Bad()))


def test_source_open_missing_names_the_url():
    url = f"memory://test-li-{uuid.uuid4().hex}/missing.npz"
    with pytest.raises(FileNotFoundError) as info:
        Source(url).open()
    assert info.value.filename == url


def test_loaders_and_sources_pickle(tmp_path):
    ds = make_dataset(5)
    path = str(tmp_path / "a.safetensors")
    ds.save(path)
    for loader in (
        SerializedDataSetLoader(verify=False),
        SerializedMultiDataSetLoader(),
        SerializedMinibatchLoader(mmap=False),
        NpzLoader(3.0),
    ):
        clone = pickle.loads(pickle.dumps(loader))
        assert type(clone) is type(loader) and vars(clone) == vars(loader)
    source = Source(path, {"auto_mkdir": True})
    clone = pickle.loads(pickle.dumps(source))
    assert clone == source and clone.storage_options == {"auto_mkdir": True} and str(clone) == path
    loaded = pickle.loads(pickle.dumps(SerializedDataSetLoader())).load(Source(path))
    np.testing.assert_array_equal(loaded.features, ds.features)
    assert not isinstance(source, os.PathLike)  # str() gives the URL; no __fspath__


def test_serialized_loader_memory_maps_local_files(tmp_path):
    path = str(tmp_path / "a.safetensors")
    make_dataset(5).save(path)
    data = SerializedDataSetLoader().load(Source(path))
    assert not data.features.flags.writeable  # a read-only view of the mapped file
    mds = SerializedMultiDataSetLoader().load(Source(path))
    assert isinstance(mds, MultiDataSet) and len(mds.features) == 1


def test_the_minibatch_loader_returns_whichever_kind_a_file_holds(tmp_path):
    ds = make_dataset(5)
    mds = MultiDataSet([ds.features, ds.features * 2], [ds.labels])
    ds.save(str(tmp_path / "d.safetensors"))
    mds.save(str(tmp_path / "m.safetensors"))
    loader = SerializedMinibatchLoader()
    assert isinstance(loader, Loader)
    got = loader.load(Source(str(tmp_path / "d.safetensors")))
    assert type(got) is DataSet and not got.features.flags.writeable  # mapped, as the others
    np.testing.assert_array_equal(got.labels, ds.labels)
    got = loader.load(Source(str(tmp_path / "m.safetensors")))
    assert type(got) is MultiDataSet
    np.testing.assert_array_equal(got.features[1], ds.features * 2)
    copy = SerializedMinibatchLoader(mmap=False).load(Source(str(tmp_path / "d.safetensors")))
    assert type(copy) is DataSet and copy.num_examples == 5
    assert loader == SerializedMinibatchLoader() != SerializedMinibatchLoader(verify=False)
    assert repr(loader) == "SerializedMinibatchLoader(verify=True, mmap=True)"
    missing = str(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError) as info:
        loader.load(Source(missing))
    assert info.value.filename == missing


def test_mmap_false_reads_large_files_into_memory(tmp_path):
    import mmap as mmap_module

    from sparkbatch.data import DataSet, SerializedDataSetLoader, Source, load

    path = str(tmp_path / "big.safetensors")
    features = np.arange(3 << 20, dtype=np.float32).reshape(-1, 16)  # 12 MiB: mapped by default
    DataSet(features).save(path)

    def base_of(array):
        while getattr(array, "base", None) is not None:
            array = array.base
        return array.obj if isinstance(array, memoryview) else array

    assert isinstance(base_of(load(path).features), mmap_module.mmap)
    for data in (load(path, mmap=False), SerializedDataSetLoader(mmap=False).load(Source(path))):
        assert not isinstance(base_of(data.features), mmap_module.mmap)
        np.testing.assert_array_equal(data.features, features)
    # a file truncated after loading cannot hurt a copy that was read
    copy = load(path, mmap=False)
    os.truncate(path, 100)
    assert float(copy.features[-1, -1]) == features[-1, -1]
    assert SerializedDataSetLoader(mmap=False) != SerializedDataSetLoader()


def test_a_custom_loaders_error_names_the_file(tmp_path):
    from sparkbatch.data import DataSet, FileDataSetIterator

    paths = [str(tmp_path / f"{i}.safetensors") for i in range(2)]
    for p in paths:
        DataSet(np.zeros((1, 1), np.float32)).save(p)

    class Broken:
        def load(self, source):
            if source.url.endswith("1.safetensors"):
                raise ValueError("bad bytes in the header")
            return DataSet(np.zeros((1, 1), np.float32))

    with pytest.raises(ValueError, match=rf"^{paths[1]}: bad bytes in the header$") as caught:
        list(FileDataSetIterator(paths, loader=Broken(), prefetch=0))
    assert str(caught.value.__cause__) == "bad bytes in the header"


def _end_aligned(seqs, t_max):
    """numpy reference: sequences [f, t] padded at the start to t_max, and their masks."""
    x = np.zeros((len(seqs), seqs[0].shape[0], t_max), np.float32)
    m = np.zeros((len(seqs), t_max), np.float32)
    for i, s in enumerate(seqs):
        x[i, :, t_max - s.shape[1] :] = s
        m[i, t_max - s.shape[1] :] = 1
    return x, m


def test_an_align_end_export_read_back_at_another_batch_size_keeps_its_alignment(tmp_path):
    rng = np.random.default_rng(3)
    lengths = [1, 3, 2, 5, 4]
    seqs = [rng.standard_normal((2, t)).astype(np.float32) for t in lengths]
    files = []
    for part in ([0, 1], [2, 3, 4]):  # minibatches of T 3 and 5, padded at the start
        x, m = _end_aligned([seqs[i] for i in part], max(lengths[i] for i in part))
        files.append(DataSet(x, x[:, :1], m, m))
    urls = export_datasets(files, str(tmp_path), progress=False)
    x, m = _end_aligned(seqs, 5)
    [ds] = FileDataSetIterator(urls, batch_size=5, alignment="align_end")
    np.testing.assert_array_equal(ds.features, x)
    np.testing.assert_array_equal(ds.features_mask, m)
    np.testing.assert_array_equal(ds.labels, x[:, :1])
    np.testing.assert_array_equal(ds.labels_mask, m)
    [mds] = FileMultiDataSetIterator(urls, batch_size=5, alignment="ALIGN_END")
    np.testing.assert_array_equal(mds.features[0], x)
    np.testing.assert_array_equal(mds.features_masks[0], m)
    # the default pads at the end: the first minibatch's steps do not line up with the others
    [start] = FileDataSetIterator(urls, batch_size=5)
    assert not np.array_equal(start.features_mask, m)
    with pytest.raises(ValueError, match="alignment must be one of"):
        FileDataSetIterator(urls, batch_size=5, alignment="end")
