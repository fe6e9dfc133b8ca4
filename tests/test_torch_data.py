"""sparkbatch.data.torch.MinibatchDataset: exported minibatch files read through PyTorch's
DataLoader, sharded over ranks and workers, as tensors over the files' memory."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

from sparkbatch import FormatError, IncompleteExportError  # noqa: E402
from sparkbatch.data import (  # noqa: E402
    DataSet,
    FileDataSetIterator,
    MultiDataSet,
    export_datasets,
)
from sparkbatch.data.manifest import begin_export  # noqa: E402
from sparkbatch.data.torch import MinibatchDataset, to_item  # noqa: E402

NUM_FILES = 11  # divides by neither 2 ranks nor 3 workers


def _batch(i: int) -> DataSet:
    """File i's minibatch: features all i (so an item names its file), labels i + 0.5."""
    n = 2 + i % 3
    features = np.full((n, 3), i, np.float32) + np.arange(3, dtype=np.float32) / 10
    return DataSet(features, np.full((n, 1), i + 0.5, np.float64))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("torch-data") / "export")
    export_datasets((_batch(i) for i in range(NUM_FILES)), directory)
    return directory


def _file_ids(items) -> list[int]:
    return [int(features[0, 0]) for features, _ in items]


def _loader_ids(dataset: MinibatchDataset, num_workers: int) -> list[int]:
    """The files a real DataLoader with worker processes reads, in the order it yields them."""
    with warnings.catch_warnings():
        # Python 3.12+ warns of fork() in a threaded process; torch of more workers than CPUs
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
        loader = DataLoader(
            dataset, batch_size=None, num_workers=num_workers, multiprocessing_context="fork"
        )
        return _file_ids(loader)


@pytest.mark.parametrize("how", ["arguments", "environment"])
def test_three_workers_on_two_ranks_read_every_file_once(export, how, monkeypatch):
    read = {}
    for rank in (0, 1):
        if how == "arguments":
            dataset = MinibatchDataset(export, rank=rank, world_size=2)
        else:
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            dataset = MinibatchDataset(export)
        assert dataset.distributed() == (rank, 2)
        read[rank] = _loader_ids(dataset, num_workers=3)
        # the loader takes items from its workers in turn: the rank's files in the epoch's order
        assert read[rank] == [int(os.path.basename(f)[8:14]) for f in dataset.rank_files()]
        assert len(dataset) == len(read[rank])
    assert sorted(read[0] + read[1]) == list(range(NUM_FILES))
    assert read[0] == list(range(0, NUM_FILES, 2)) and read[1] == list(range(1, NUM_FILES, 2))


def test_set_epoch_reshuffles_the_same_way_on_every_rank(export):
    ranks = [MinibatchDataset(export, shuffle=True, seed=7, rank=r, world_size=2) for r in (0, 1)]
    orders = []
    for epoch in (0, 1):
        for dataset in ranks:
            dataset.set_epoch(epoch)
        shards = [_file_ids(dataset) for dataset in ranks]
        assert sorted(shards[0] + shards[1]) == list(range(NUM_FILES))  # disjoint, complete
        orders.append(shards)
    assert orders[0] != orders[1]
    again = MinibatchDataset(export, shuffle=True, seed=7, rank=1, world_size=2)
    again.set_epoch(1)
    assert _file_ids(again) == orders[1][1]  # deterministic from seed and epoch
    iterator = FileDataSetIterator(export, shuffle=True, seed=7)
    iterator.set_epoch(1)
    assert again.file_order() == iterator.file_order()  # the single-machine iterator's order
    # the epoch travels to the DataLoader's worker processes, persistent ones too
    assert _loader_ids(ranks[1], num_workers=2) == orders[1][1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        loader = DataLoader(
            ranks[1],
            batch_size=None,
            num_workers=2,
            persistent_workers=True,
            multiprocessing_context="fork",
        )
        for epoch in (0, 1):
            ranks[1].set_epoch(epoch)
            assert _file_ids(loader) == orders[epoch][1]
        del loader
    copy = pickle.loads(pickle.dumps(ranks[1]))  # a copy's epoch is its own
    copy.set_epoch(5)
    assert ranks[1].epoch == 1 and copy.epoch == 5
    unshuffled = MinibatchDataset(export, rank=0, world_size=1)
    unshuffled.set_epoch(3)
    assert _file_ids(unshuffled) == list(range(NUM_FILES))
    # numpy integers (an epoch from np.arange) are ints, as everywhere in sparkbatch
    numpy_ints = MinibatchDataset(
        export, shuffle=True, seed=np.int64(7), rank=np.int64(1), world_size=np.int32(2)
    )
    numpy_ints.set_epoch(np.arange(2)[1])
    assert _file_ids(numpy_ints) == orders[1][1] and numpy_ints.distributed() == (1, 2)
    assert type(numpy_ints.epoch) is int and type(numpy_ints.distributed()[0]) is int
    with pytest.raises(TypeError, match="epoch must be an int"):
        numpy_ints.set_epoch(1.0)


def test_uneven_files_keep_drop_or_pad(export):
    def shards(uneven, world_size):
        return [
            _file_ids(MinibatchDataset(export, rank=r, world_size=world_size, uneven=uneven))
            for r in range(world_size)
        ]

    assert [len(s) for s in shards("keep", 4)] == [3, 3, 3, 2]
    dropped = shards("drop", 4)
    assert [len(s) for s in dropped] == [2, 2, 2, 2]
    assert sorted(sum(dropped, [])) == list(range(8))
    padded = shards("pad", 4)
    assert [len(s) for s in padded] == [3, 3, 3, 3]
    assert sorted(sum(padded, [])) == sorted([*range(NUM_FILES), 0])
    assert [len(s) for s in shards("pad", 30)] == [1] * 30  # fewer files than ranks
    with pytest.raises(ValueError, match="no rank would read any"):
        shards("drop", 12)
    with pytest.raises(ValueError, match="uneven must be one of"):
        MinibatchDataset(export, uneven="even")


def test_items_are_the_exported_arrays(export):
    for i, (features, labels) in enumerate(MinibatchDataset(export, rank=0, world_size=1)):
        expected = _batch(i)
        assert features.dtype == torch.float32 and labels.dtype == torch.float64
        np.testing.assert_array_equal(features.numpy(), expected.features)
        np.testing.assert_array_equal(labels.numpy(), expected.labels)


def _mappings_of(path: str) -> list[tuple[int, int]]:
    with open("/proc/self/maps") as maps:
        lines = [line.split() for line in maps]
    found = []
    for fields in lines:
        if len(fields) >= 6 and os.path.realpath(fields[5]) == os.path.realpath(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end))
    return found


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc maps")
def test_tensors_are_views_of_the_memory_map_without_a_copy_or_warning(tmp_path):
    features = np.random.default_rng(0).random((300_000, 2), np.float32)  # 2.4 MB: mapped
    directory = str(tmp_path / "big")
    [path] = export_datasets([DataSet(features, features[:, :1])], directory)
    before = Path(path).read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tensors, labels = next(iter(MinibatchDataset(directory, world_size=1, rank=0)))
    assert caught == []  # no "The given NumPy array is not writable"
    maps = _mappings_of(path)
    assert any(start <= tensors.data_ptr() < end for start, end in maps)
    assert any(start <= labels.data_ptr() < end for start, end in maps)
    np.testing.assert_array_equal(tensors.numpy(), features)
    tensors[0, 0] = -1.0  # copy-on-write: this process's page only, never the file
    assert Path(path).read_bytes() == before


def test_masks_and_multidatasets_as_documented(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.random((4, 3, 5), np.float32), rng.random((4, 2, 5), np.float32)
    fmask, lmask = np.ones((4, 5), np.float32), (rng.random((4, 5)) > 0.5).astype(np.float32)
    batches = [
        DataSet(x, y, fmask, lmask),
        DataSet(x, y, labels_mask=lmask),
        MultiDataSet([x[:, :, 0], x[:, 0, :]], [y[:, :, 0]]),
        MultiDataSet([x, x], [y], [fmask, None], None),
    ]
    paths = []
    for i, batch in enumerate(batches):
        paths.append(str(tmp_path / f"b{i}.safetensors"))
        batch.save(paths[-1])
    items = list(MinibatchDataset(paths, rank=0, world_size=1))
    both, one, multi, multi_masked = items
    assert len(both) == 4 and [t.numpy().tolist() for t in both] == [
        a.tolist() for a in (x, y, fmask, lmask)
    ]
    assert len(one) == 4 and one[2] is None and np.array_equal(one[3].numpy(), lmask)
    assert len(multi) == 2 and [t.shape[1] for t in multi[0]] == [3, 5] and len(multi[1]) == 1
    features, labels, f_masks, l_masks = multi_masked
    assert np.array_equal(features[1].numpy(), x) and np.array_equal(labels[0].numpy(), y)
    assert np.array_equal(f_masks[0].numpy(), fmask) and f_masks[1] is None and l_masks == [None]
    assert to_item(DataSet(x[:, :, 0]))[1] is None  # no labels


def test_a_truncated_or_foreign_file_is_a_format_error_naming_it(export, tmp_path):
    good = MinibatchDataset(export).files[0]
    truncated = str(tmp_path / "truncated.safetensors")
    with open(good, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) - 10])
    foreign = str(tmp_path / "notes.safetensors")
    with open(foreign, "wb") as f:
        f.write(b'{"not": "a minibatch"}')
    for path in (truncated, foreign):
        with pytest.raises(FormatError, match=path):
            list(MinibatchDataset([good, path], rank=0, world_size=1))
    with pytest.raises(FileNotFoundError) as missing:
        list(MinibatchDataset([str(tmp_path / "gone.safetensors")], rank=0, world_size=1))
    assert missing.value.filename == str(tmp_path / "gone.safetensors")
    with pytest.raises(ValueError, match="empty list"):
        MinibatchDataset([])


def test_an_incomplete_export_is_refused(export, tmp_path):
    directory = str(tmp_path / "incomplete")  # an export killed after writing its files
    begin_export(directory, r"dataset_\d+\.safetensors", overwrite=False)
    for path in MinibatchDataset(export).files:
        shutil.copy(path, directory)
    with pytest.raises(IncompleteExportError, match="incomplete"):
        MinibatchDataset(directory)


def test_remote_files_are_read_into_writable_memory():
    url = "memory://torch-data-test/export"
    export_datasets((_batch(i) for i in range(3)), url, overwrite=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items = list(MinibatchDataset(url, rank=1, world_size=2))
        assert caught == [] and _file_ids(items) == [1]
        np.testing.assert_array_equal(items[0][0].numpy(), _batch(1).features)
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/torch-data-test", recursive=True)


def test_a_file_of_unknown_size_is_read_whole(tmp_path):
    """A server that sends no Content-Length (HTTP/1.0, the body ends with the connection):
    fsspec knows no size, and the file is read to its end."""
    import http.server
    import threading

    from sparkbatch.data import save
    from sparkbatch.data.torch import read_minibatch

    save(_batch(4), str(tmp_path / "a.sbt"))
    payload = (tmp_path / "a.sbt").read_bytes()

    class NoLength(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoLength)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        batch = read_minibatch(f"http://127.0.0.1:{server.server_address[1]}/a.sbt")
    finally:
        server.shutdown()
        server.server_close()
    assert batch.features.flags.writeable
    np.testing.assert_array_equal(batch.features, _batch(4).features)


def test_where_the_rank_comes_from(export, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert MinibatchDataset(export).distributed() == (1, 3)
    assert MinibatchDataset(export, rank=0, world_size=2).distributed() == (0, 2)  # given wins
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        dataset = MinibatchDataset(export)
        assert dataset.distributed() == (0, 1)  # torch.distributed over the environment
        copy = pickle.loads(pickle.dumps(dataset))  # as sent to a spawned DataLoader worker
    finally:
        dist.destroy_process_group()
    # a worker of this process takes the process group's rank that this process pickled...
    assert _loader_ids(copy, num_workers=1) == list(range(NUM_FILES))
    # ...any other process (another rank that the dataset was sent to) its own: the environment's
    assert copy.distributed() == (1, 3) and len(copy) == len(range(1, NUM_FILES, 3))
    again = pickle.loads(pickle.dumps(copy))  # pickled here again, without a process group
    assert _loader_ids(again, num_workers=1) == list(range(1, NUM_FILES, 3))
    assert MinibatchDataset(export).distributed() == (1, 3)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="sets RANK but not WORLD_SIZE"):
        MinibatchDataset(export).distributed()
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(ValueError, match="WORLD_SIZE='x' is not an integer"):
        MinibatchDataset(export).distributed()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match=r"rank 1 is not in \[0, world_size=1\)"):
        MinibatchDataset(export).distributed()
    with pytest.raises(ValueError, match="give both rank= and world_size="):
        MinibatchDataset(export, rank=1)
