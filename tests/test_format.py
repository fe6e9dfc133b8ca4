"""The minibatch file format: round trips, memory maps, CRC, safetensors interop, hostile files."""

from __future__ import annotations

import errno
import io
import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from sparkbatch import FormatError, _native
from sparkbatch.data import DataSet, MultiDataSet, from_bytes, load, save, to_bytes

CORPUS = Path(__file__).parent / "corpus"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def _crc32c_reference(data: bytes) -> int:
    """Bit-by-bit CRC-32C, independent of the native tables and instructions."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _dataset(n: int = 5, f: int = 3, k: int = 4, seed: int = 0) -> DataSet:
    rng = np.random.default_rng(seed)
    labels = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    return DataSet(rng.standard_normal((n, f)).astype(np.float32), labels)


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


# --- CRC32C --------------------------------------------------------------------------------


def test_crc32c_check_value():
    assert _native.crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("size", [0, 1, 7, 8, 63, 24575, 24576, 24577, 100_003])
def test_crc32c_matches_bitwise_reference(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert _native.crc32c(data) == _crc32c_reference(data)


def test_crc32c_continues_from_previous_value():
    data = bytes(range(256)) * 400
    assert _native.crc32c(data[5000:], _native.crc32c(data[:5000])) == _native.crc32c(data)


def test_crc32c_threaded_equals_serial_on_large_buffer():
    data = np.random.default_rng(1).integers(0, 256, 40 << 20, dtype=np.uint8)
    pieces = 0
    for i in range(0, data.size, 1 << 20):
        pieces = _native.crc32c(data[i : i + (1 << 20)], pieces)
    assert _native.crc32c(data) == pieces


# --- Round trips ---------------------------------------------------------------------------


def test_dataset_round_trip_local_is_readonly_memory_map(tmp_path):
    ds = _dataset()
    path = tmp_path / "a.safetensors"
    save(ds, path)
    back = load(path)
    assert isinstance(back, DataSet)
    np.testing.assert_array_equal(back.features, ds.features)
    np.testing.assert_array_equal(back.labels, ds.labels)
    assert back.features_mask is None and back.labels_mask is None
    assert not back.features.flags.writeable
    assert back.features.base is not None  # a view, not a copy
    with pytest.raises(ValueError):
        back.features[0, 0] = 1.0


def _backing(array: np.ndarray) -> object:
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_large_local_files_are_mapped_and_small_ones_read_into_one_aligned_buffer(tmp_path):
    small, large = tmp_path / "small.safetensors", tmp_path / "large.safetensors"
    save(DataSet(np.ones((16, 4), np.float32)), small)
    save(DataSet(np.ones((1 << 17, 4), np.float32)), large)  # 2 MiB of features
    assert isinstance(_backing(load(large).features), mmap.mmap)
    back = load(small)
    assert not isinstance(_backing(back.features), mmap.mmap)
    assert back.features.ctypes.data % 64 == 0 and not back.features.flags.writeable


def test_small_local_files_read_natively_give_what_bytes_and_maps_give(tmp_path):
    path = tmp_path / "small.safetensors"
    rng = np.random.default_rng(3)
    ds = DataSet(rng.normal(size=(40, 7)).astype(np.float32), np.eye(4, dtype=np.float32)[[1] * 40])
    save(ds, path)
    for back in (load(path), load(path, verify=False), from_bytes(path.read_bytes())):
        np.testing.assert_array_equal(back.features, ds.features)
        np.testing.assert_array_equal(back.labels, ds.labels)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError):
        load(tmp_path)


def test_integer_and_masked_tensors_of_small_files_get_the_constructors_conversions(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    features = np.arange(12, dtype=np.int32).reshape(4, 3)
    safetensors_numpy.save_file({"features": features}, str(tmp_path / "i.safetensors"))
    back = load(tmp_path / "i.safetensors")
    assert back.features.dtype == np.float32  # as DataSet(int array) gives
    np.testing.assert_array_equal(back.features, features)
    bad = {"features": np.zeros((4, 3), np.float32), "labels": np.zeros((5, 2), np.float32)}
    safetensors_numpy.save_file(bad, str(tmp_path / "b.safetensors"))
    with pytest.raises(FormatError, match="labels has 5 examples but features has 4"):
        load(tmp_path / "b.safetensors")


def test_every_tensor_and_the_data_section_are_64_byte_aligned(tmp_path):
    # 3 x 5 float32 = 60 bytes: the float64 labels need a filler tensor before them
    ds = DataSet(np.ones((3, 5), np.float32), np.ones((3, 7), np.float64))
    path = tmp_path / "a.safetensors"
    save(ds, path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 64 == 0
    header = json.loads(raw[8 : 8 + n])
    for name in ("features", "labels"):
        assert header[name]["data_offsets"][0] % 64 == 0
    back = load(path)
    for array in (back.features, back.labels):
        assert array.ctypes.data % 64 == 0
    assert back.labels.dtype == np.float64


def test_sequence_dataset_with_masks_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    ds = DataSet(
        rng.standard_normal((4, 3, 6)).astype(np.float32),
        rng.standard_normal((4, 2, 6)).astype(np.float32),
        (rng.random((4, 6)) > 0.3).astype(np.float32),
        np.ones((4, 6), np.float32),
        metadata={"source": "unit test", "shard": "3"},
    )
    save(ds, tmp_path / "s.safetensors")
    back = load(tmp_path / "s.safetensors")
    for name in ("features", "labels", "features_mask", "labels_mask"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name))
    assert back.metadata == {"source": "unit test", "shard": "3"}


def test_multidataset_round_trip_with_partial_masks(tmp_path):
    rng = np.random.default_rng(3)
    mds = MultiDataSet(
        [
            rng.standard_normal((3, 4)).astype(np.float32),
            rng.standard_normal((3, 2, 5)).astype(np.float32),
        ],
        [np.eye(3, dtype=np.float32)],
        [None, np.ones((3, 5), np.float32)],
        None,
    )
    save(mds, tmp_path / "m.safetensors")
    header = _header(tmp_path / "m.safetensors")
    assert header["__metadata__"]["kind"] == "MultiDataSet"
    assert {"features.0", "features.1", "labels.0", "features_mask.1"} <= set(header)
    back = load(tmp_path / "m.safetensors")
    assert isinstance(back, MultiDataSet)
    assert len(back.features) == 2 and len(back.labels) == 1
    np.testing.assert_array_equal(back.features[1], mds.features[1])
    assert back.features_masks[0] is None
    np.testing.assert_array_equal(back.features_masks[1], mds.features_masks[1])


def test_compact_labels_store_indices_and_load_one_hot(tmp_path):
    ds = _dataset(n=50, k=10)
    save(ds, tmp_path / "c.safetensors", compact_labels=True)
    header = _header(tmp_path / "c.safetensors")
    assert header["labels"]["dtype"] == "I32" and header["labels"]["shape"] == [50]
    assert header["__metadata__"]["num_classes:labels"] == "10"
    back = load(tmp_path / "c.safetensors")
    assert back.labels.dtype == np.float32
    np.testing.assert_array_equal(back.labels, ds.labels)


def test_compact_sequence_labels_one_hot_along_axis_1(tmp_path):
    idx = np.array([[0, 2, 1], [1, 1, 0]])
    labels = np.eye(3, dtype=np.float32)[idx].transpose(0, 2, 1)  # [n, classes, steps]
    ds = DataSet(np.zeros((2, 1, 3), np.float32), labels)
    save(ds, tmp_path / "c.safetensors", compact_labels=True)
    np.testing.assert_array_equal(load(tmp_path / "c.safetensors").labels, labels)


def test_compact_labels_refuse_labels_that_are_not_one_hot(tmp_path):
    ds = DataSet(np.zeros((2, 1), np.float32), np.array([[0.5, 0.5], [1, 0]], np.float32))
    with pytest.raises(ValueError, match="one-hot"):
        save(ds, tmp_path / "c.safetensors", compact_labels=True)


def test_memory_url_and_file_objects_round_trip():
    ds = _dataset()
    save(ds, "memory://format-test/a.safetensors")
    np.testing.assert_array_equal(load("memory://format-test/a.safetensors").features, ds.features)
    buf = io.BytesIO()
    save(ds, buf)
    buf.seek(0)
    np.testing.assert_array_equal(load(buf).labels, ds.labels)
    np.testing.assert_array_equal(from_bytes(to_bytes(ds)).features, ds.features)


def test_file_bytes_do_not_depend_on_the_target():
    ds = _dataset()
    save(ds, "memory://format-test/b.safetensors")
    from sparkbatch.storage import read_bytes

    assert read_bytes("memory://format-test/b.safetensors") == to_bytes(ds)


# The native writer takes one of three paths by size: the CRC, then one write (under 4 MiB); the
# CRC on a second thread beside one write; from 64 MiB on, the CRC paced just ahead of 1 MiB
# writes. Each must put exactly the bytes of to_bytes() on disk.
WRITER_PATHS = pytest.mark.parametrize("rows", [1_000, 10_000, 64_000], ids=["1MB", "10MB", "68MB"])


@WRITER_PATHS
def test_every_writer_path_puts_the_bytes_of_to_bytes_on_disk(tmp_path, rows):
    rng = np.random.default_rng(rows)
    # Odd widths put zero padding between the tensors, and across the 1 MiB write boundaries.
    mds = MultiDataSet(
        [
            rng.standard_normal((rows, 257), dtype=np.float32),
            rng.standard_normal((rows, 5), dtype=np.float32),
        ],
        [rng.standard_normal((rows, 3), dtype=np.float32)],
    )
    path = tmp_path / "m.safetensors"
    save(mds, path)
    assert path.read_bytes() == to_bytes(mds)
    back = load(path)  # verifies the CRC
    for ours, theirs in zip(back.features + back.labels, mds.features + mds.labels, strict=True):
        np.testing.assert_array_equal(ours, theirs)


@WRITER_PATHS
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_every_writer_path_reports_a_failed_write(rows):
    from sparkbatch.data.format import _tensors_and_metadata

    tensors, metadata = _tensors_and_metadata(DataSet(np.ones((rows, 265), np.float32)), False)
    fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    try:
        with pytest.raises(OSError) as info:
            _native.write_file(fd, tensors, metadata)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC


def test_unlabelled_dataset_round_trips(tmp_path):
    ds = DataSet(np.arange(6, dtype=np.float32).reshape(2, 3))
    save(ds, tmp_path / "u.safetensors")
    assert load(tmp_path / "u.safetensors").labels is None


def test_dataset_methods_delegate_to_the_format(tmp_path):
    ds = _dataset()
    ds.save(tmp_path / "d.safetensors")
    np.testing.assert_array_equal(DataSet.load(tmp_path / "d.safetensors").features, ds.features)
    with pytest.raises(FormatError, match="MultiDataSet"):
        MultiDataSet.load(tmp_path / "d.safetensors")


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path):
    save(_dataset(seed=1), tmp_path / "a.safetensors")
    save(_dataset(seed=2), tmp_path / "a.safetensors")
    assert os.listdir(tmp_path) == ["a.safetensors"]
    np.testing.assert_array_equal(
        load(tmp_path / "a.safetensors").features, _dataset(seed=2).features
    )


def test_unwritable_destination_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        save(_dataset(), blocker / "sub" / "a.safetensors")
    assert str(blocker) in str(info.value)


def test_unsupported_dtype_is_refused_naming_the_tensor(tmp_path):
    ds = DataSet(np.zeros((2, 2), np.longdouble), np.zeros((2, 1), np.float32))
    with pytest.raises(TypeError, match="'features'"):
        save(ds, tmp_path / "x.safetensors")


def test_big_endian_and_non_contiguous_arrays_are_written_as_little_endian_c_order(tmp_path):
    features = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    save(DataSet(features, np.ones((3, 1), np.float32)), tmp_path / "e.safetensors")
    back = load(tmp_path / "e.safetensors")
    assert back.features.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back.features, features)


def test_verify_false_skips_the_crc(tmp_path):
    path = tmp_path / "a.safetensors"
    save(_dataset(), path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="CRC32C"):
        load(path)
    assert load(path, verify=False).num_examples == 5


# --- Interop with the safetensors package ---------------------------------------------------


def test_safetensors_package_reads_our_files(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    ds = DataSet(np.ones((3, 5), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2]], None, None)
    mds = MultiDataSet([np.arange(21, dtype=np.float64).reshape(3, 7)], [np.ones((3, 1), np.int64)])
    for data, name in ((ds, "d.safetensors"), (mds, "m.safetensors")):
        save(data, tmp_path / name)
        arrays = safetensors_numpy.load_file(str(tmp_path / name))
        ours = {k: v for k, v in arrays.items() if not k.startswith("__pad.")}
        expected = (
            {"features": ds.features, "labels": ds.labels}
            if name == "d.safetensors"
            else {"features.0": mds.features[0], "labels.0": mds.labels[0]}
        )
        assert sorted(ours) == sorted(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(ours[key], value)
            assert ours[key].dtype == value.dtype


def test_files_written_by_the_safetensors_package_load_as_datasets(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    features = np.arange(15, dtype=np.float32).reshape(5, 3)
    labels = np.eye(5, dtype=np.float32)
    safetensors_numpy.save_file(
        {"features": features, "labels": labels}, str(tmp_path / "p.safetensors")
    )
    back = load(tmp_path / "p.safetensors")
    assert isinstance(back, DataSet)
    np.testing.assert_array_equal(back.features, features)
    np.testing.assert_array_equal(back.labels, labels)
    safetensors_numpy.save_file(
        {"features.0": features, "features.1": features[:, :1], "labels.0": labels},
        str(tmp_path / "q.safetensors"),
    )
    multi = load(tmp_path / "q.safetensors")
    assert isinstance(multi, MultiDataSet) and len(multi.features) == 2


def test_foreign_safetensors_without_minibatch_names_is_refused(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file(
        {"weight": np.ones((2, 2), np.float32)}, str(tmp_path / "w.safetensors")
    )
    with pytest.raises(FormatError, match="no tensor named 'features'"):
        load(tmp_path / "w.safetensors")


# --- Bad input: one test per hostile file ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_raises_format_error_naming_file_and_problem(name):
    path = CORPUS / name
    with pytest.raises(FormatError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert EXPECTED[name] in message


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_bytes_raise_format_error_from_memory_too(name):
    blob = (CORPUS / name).read_bytes()
    with pytest.raises(FormatError, match="hostile-bytes"):
        from_bytes(blob, name="hostile-bytes")


def test_random_corruption_never_crashes(tmp_path):
    """Truncations and byte flips of a valid file either load or raise FormatError."""
    blob = to_bytes(_dataset(n=7, f=3, k=3))
    rng = np.random.default_rng(7)
    for trial in range(400):
        mutated = bytearray(blob)
        if trial % 2:
            mutated = mutated[: rng.integers(0, len(blob))]
        else:
            for _ in range(rng.integers(1, 4)):
                pos = int(rng.integers(0, len(mutated)))
                mutated[pos] = int(rng.integers(0, 256))
        try:
            from_bytes(bytes(mutated), name="fuzz")
        except FormatError as e:
            assert "fuzz" in str(e)


def test_unaligned_tensors_of_foreign_files_load_aligned(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    features = np.array([[1], [2], [3]], np.int8)  # 3 bytes: the labels that follow are unaligned
    labels = np.array([[0.5], [1.5], [2.5]], np.float32)
    safetensors_numpy.save_file(
        {"features": features, "labels": labels}, str(tmp_path / "u.safetensors")
    )
    back = load(tmp_path / "u.safetensors")
    assert back.labels.flags.aligned
    np.testing.assert_array_equal(back.labels, labels)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("metadata_not_json", "metadata 'metadata' is not valid JSON"),
        ("num_features_huge", "metadata num_features=10000000 is more than 1"),
        ("num_features_underscore", "metadata num_features='1_0' is not a non-negative integer"),
        ("index_other_script_digit", r"unexpected tensors \['features.٣'\]"),
        ("num_classes_huge", "num_classes:labels=1000000000000 is more than 2147483647"),
        ("one_hot_expands_past_limit", "would expand to 8000000000 bytes"),
    ],
)
def test_hostile_metadata_is_a_format_error_allocating_nothing(name, message):
    path = Path(__file__).parent / "fuzz_regressions" / "format" / f"{name}.safetensors"
    with pytest.raises(FormatError, match=message):
        load(path)
