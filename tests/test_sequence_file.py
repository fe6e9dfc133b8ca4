"""Tests of sparkbatch.storage.sequence_file and map_file: Hadoop SequenceFiles and MapFiles.

Round trips check our writer against our reader; the interoperability tests check both against
the real thing: Spark's ``sc.sequenceFile`` and Hadoop's ``MapFile.Reader`` (through the session's
JVM) read what we write, and we read what Spark's ``saveAsSequenceFile``/``saveAsHadoopFile`` and
Hadoop's ``MapFile.Writer`` write.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zlib

import fsspec
import pytest

from sparkbatch import FormatError, IncompleteExportError
from sparkbatch.storage import (
    MapFilePartWriter,
    MapFileReader,
    SequenceFileReader,
    SequenceFileWriter,
)
from sparkbatch.storage.sequence_file import (
    BLOCK_SIZE,
    SYNC_INTERVAL,
    read_vint,
    write_vint,
)

IO = "org.apache.hadoop.io."
COMPRESSIONS = [None, "record", "block"]


def _write(path: object, keys: list, values: list, **kwargs: object) -> str:
    with SequenceFileWriter(str(path), **kwargs) as w:  # type: ignore[arg-type]
        w.append_many(keys, values)
    return str(path)


def _read(path: object) -> list:
    with SequenceFileReader(str(path)) as r:
        return list(r)


# ------------------------------------------------------------------ vints and Writables

# Hadoop's WritableUtils.writeVLong bytes for edge values (one byte in [-112, 127]; otherwise a
# length byte, -113..-120 positive and -121..-128 negative, then the magnitude big-endian).
VINTS = {
    0: "00",
    -1: "ff",
    127: "7f",
    -112: "90",
    128: "8f80",
    -113: "8770",
    255: "8fff",
    256: "8e0100",
    -257: "860100",
    2**31 - 1: "8c7fffffff",
    -(2**31): "847fffffff",
    2**63 - 1: "887fffffffffffffff",
    -(2**63): "807fffffffffffffff",
}


def test_vint_matches_hadoop_edge_values() -> None:
    for value, hexed in VINTS.items():
        assert write_vint(value).hex() == hexed, value
        assert read_vint(bytes.fromhex("aa" + hexed), 1) == (value, 1 + len(hexed) // 2)
    with pytest.raises(ValueError, match="64-bit"):
        write_vint(2**63)
    with pytest.raises(IndexError):
        read_vint(bytes.fromhex("8c7fff"), 0)


WRITABLES = [
    ("LongWritable", [0, -1, 2**63 - 1, -(2**63)]),
    ("IntWritable", [0, -(2**31), 2**31 - 1]),
    ("VLongWritable", [0, -113, 2**40, -(2**63)]),
    ("VIntWritable", [5, -1000]),
    ("Text", ["", "a", "é字\U0001f600", "x" * 300]),
    ("BytesWritable", [b"", b"\x00\xff", bytes(range(256)) * 3]),
    ("NullWritable", [None, None]),
    ("BooleanWritable", [True, False]),
    ("FloatWritable", [1.5, -0.0]),
    ("DoubleWritable", [1e300, -2.5]),
]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_every_writable(tmp_path: pathlib.Path, compression: str | None) -> None:
    for name, values in WRITABLES:
        path = _write(
            tmp_path / f"{name}.seq",
            values,
            values[::-1],
            key_class=IO + name,
            value_class=IO + name,
            compression=compression,
        )
        assert _read(path) == list(zip(values, values[::-1], strict=True)), name
        with SequenceFileReader(path) as r:
            assert (r.key_class, r.value_class, r.compression) == (
                IO + name,
                IO + name,
                compression,
            )
            expected_codec = None if compression is None else IO + "compress.DefaultCodec"
            assert r.codec == expected_codec
    # A class sparkbatch does not decode travels as its serialized bytes.
    path = _write(tmp_path / "raw.seq", [b"\x01\x02"], [b""], key_class="com.example.Key")
    assert _read(path) == [(b"\x01\x02", b"")]


@pytest.mark.parametrize("compression", ["record", "block"])
def test_compression_levels_give_the_same_records(tmp_path: pathlib.Path, compression: str) -> None:
    values = [bytes(range(256)) * 40 + i.to_bytes(4, "big") for i in range(300)]
    sizes = {}
    for level in (1, 9):
        path = str(tmp_path / f"{compression}-{level}.seq")
        with SequenceFileWriter(path, compression=compression, compression_level=level) as w:
            w.append_many(range(300), values)
        with SequenceFileReader(path) as r:
            assert [v for _, v in r] == values
        sizes[level] = os.path.getsize(path)
    assert sizes[9] <= sizes[1]
    with pytest.raises(ValueError, match="compression_level must be -1 to 9, got 10"):
        SequenceFileWriter(str(tmp_path / "x.seq"), compression="block", compression_level=10)


def test_writer_refuses_bad_values_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a.seq"
    for keys, values, error in [
        (["1"], [b""], TypeError),  # a str key for LongWritable
        ([1], ["text"], TypeError),  # a str value for BytesWritable
        ([2**63], [b""], ValueError),
        ([1, 2], [b""], ValueError),
    ]:
        with pytest.raises(error), SequenceFileWriter(target) as w:
            w.append_many(keys, values)
        assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="32-bit"):
        with SequenceFileWriter(target, IO + "VIntWritable", IO + "NullWritable") as w:
            w.append(2**31, None)
    assert os.listdir(tmp_path) == []
    for value_class, value, error in [  # a clear TypeError or ValueError for every class
        ("Text", b"bytes", TypeError),
        ("FloatWritable", "1.5", TypeError),
        ("FloatWritable", 1e300, ValueError),
        ("DoubleWritable", None, TypeError),
        ("BooleanWritable", 1, TypeError),
    ]:
        with pytest.raises(error, match=value_class), SequenceFileWriter(
            target, IO + "LongWritable", IO + value_class
        ) as w:
            w.append(1, value)
        assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="compression"):
        SequenceFileWriter(target, compression="gzip")


# ------------------------------------------------------------------ layout, syncs, blocks, seek


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_empty_files_and_metadata(tmp_path: pathlib.Path, compression: str | None) -> None:
    metadata = {"b": "2", "a": "1", "schéma": "ü" * 200}
    path = _write(tmp_path / "e.seq", [], [], compression=compression, metadata=metadata)
    with SequenceFileReader(path) as r:
        assert r.metadata == metadata
        assert list(r.metadata) == ["a", "b", "schéma"]  # sorted, as Hadoop's TreeMap
        assert list(r) == []
        assert r.header_end == os.path.getsize(path)
        assert len(r.sync) == 16


def test_header_bytes_are_hadoops_layout(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "h.seq", [7], [b"v"], compression="record", metadata={"k": "v"})
    data = pathlib.Path(path).read_bytes()
    long_name, bytes_name = (
        b"org.apache.hadoop.io.LongWritable",
        b"org.apache.hadoop.io.BytesWritable",
    )
    codec = b"org.apache.hadoop.io.compress.DefaultCodec"
    header = (
        b"SEQ\x06"
        + bytes([len(long_name)])
        + long_name
        + bytes([len(bytes_name)])
        + bytes_name
        + b"\x01\x00"
        + bytes([len(codec)])
        + codec
        + b"\x00\x00\x00\x01\x01k\x01v"
    )
    assert data.startswith(header)
    sync = data[len(header) : len(header) + 16]
    record = data[len(header) + 16 :]
    value = zlib.compress(struct.pack(">i", 1) + b"v")
    assert record == struct.pack(">ii", 8 + len(value), 8) + struct.pack(">q", 7) + value
    assert sync not in record


@pytest.mark.parametrize("compression", [None, "record"])
def test_sync_markers_and_seek_to_every_offset(
    tmp_path: pathlib.Path, compression: str | None
) -> None:
    n = 3000  # about 330 KB: three sync markers at SYNC_INTERVAL (102,400 bytes)
    values = [bytes([i % 251]) * (i % 200) for i in range(n)]
    offsets = []
    with SequenceFileWriter(tmp_path / "s.seq", compression=compression) as w:
        for i in range(0, n, 500):  # offsets per record from append, batches from append_many
            offsets.append(w.tell())
            w.append(i, values[i])
            w.append_many(range(i + 1, i + 500), values[i + 1 : i + 500])
    data = (tmp_path / "s.seq").read_bytes()
    with SequenceFileReader(tmp_path / "s.seq") as r:
        escapes = data.count(b"\xff\xff\xff\xff" + r.sync)
        assert escapes == (0 if compression else len(data) // SYNC_INTERVAL)
        assert escapes >= (0 if compression else 3)
        assert list(r) == list(enumerate(values))
        for k, offset in zip(range(0, n, 500), offsets, strict=True):
            r.seek(offset)
            assert next(iter(r)) == (k, values[k])
        with pytest.raises(ValueError, match="before the first record"):
            r.seek(3)


def test_block_compression_several_blocks(tmp_path: pathlib.Path) -> None:
    n = 2600  # 2.6 MB of values: three blocks of BLOCK_SIZE (1,000,000) uncompressed bytes
    values = [str(i).encode() * (1000 // len(str(i))) for i in range(n)]
    offsets = []
    with SequenceFileWriter(tmp_path / "b.seq", compression="block") as w:
        for i in range(0, n, 100):
            offsets.append(w.tell())
            w.append_many(range(i, i + 100), values[i : i + 100])
    data = (tmp_path / "b.seq").read_bytes()
    with SequenceFileReader(tmp_path / "b.seq") as r:
        blocks = data.count(b"\xff\xff\xff\xff" + r.sync)
        assert blocks == -(-sum(8 + len(v) + 4 for v in values) // BLOCK_SIZE) == 3
        assert list(r) == list(enumerate(values))
        r.seek(offsets[-1])  # the block the last batch landed in: it starts before record 2500
        got = list(r)
        assert got[-1] == (n - 1, values[-1]) and got[0][0] <= 2500


def test_exception_inside_with_leaves_nothing(tmp_path: pathlib.Path) -> None:
    with pytest.raises(RuntimeError), SequenceFileWriter(tmp_path / "x.seq") as w:
        w.append(1, b"a")
        raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []


def test_memory_filesystem_round_trip() -> None:
    url = "memory://sparkbatch-test-seq/a.seq"
    _write(url, [1, 2], [b"a", b"b"], compression="block")
    assert _read(url) == [(1, b"a"), (2, b"b")]
    fsspec.filesystem("memory").rm("/sparkbatch-test-seq", recursive=True)


# ------------------------------------------------------------------ truncated and corrupt files


def _error_of(path: pathlib.Path) -> str:
    with pytest.raises(FormatError) as info:
        _read(path)
    message = str(info.value)
    assert str(path) in message and "at byte" in message, message
    return message


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_truncated_files(tmp_path: pathlib.Path, compression: str | None) -> None:
    src = _write(
        tmp_path / "t.seq", range(50), [b"abc" * i for i in range(50)], compression=compression
    )
    data = pathlib.Path(src).read_bytes()
    with SequenceFileReader(src) as r:
        header_end = r.header_end
    cut = tmp_path / "cut.seq"
    for size in [0, 2, 3, 20, 60, header_end - 1, header_end + 3, header_end + 30, len(data) - 1]:
        cut.write_bytes(data[:size])
        message = _error_of(cut)
        assert "found the end of the file" in message or "zlib" in message, (size, message)


def test_corrupt_files(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.seq"
    bad.write_bytes(b"PAR1" + bytes(100))
    assert "magic b'SEQ'" in _error_of(bad)
    bad.write_bytes(b"SEQ\x07" + bytes(100))
    assert "version" in _error_of(bad)

    # A bad sync marker in the middle of a file.
    src = _write(tmp_path / "s.seq", range(2000), [b"x" * 100] * 2000)
    data = bytearray(pathlib.Path(src).read_bytes())
    with SequenceFileReader(src) as r:
        at = data.index(b"\xff\xff\xff\xff" + r.sync, r.header_end)
    data[at + 10] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert f"at byte {at + 4}" in _error_of(bad) and "sync marker" in _error_of(bad)

    # A record length that does not fit, and garbage where a zlib value should be.
    data = bytearray(
        pathlib.Path(_write(tmp_path / "r.seq", [1], [b"abc"], compression="record")).read_bytes()
    )
    with SequenceFileReader(tmp_path / "r.seq") as r:
        start = r.header_end
    data[start + 4 : start + 8] = struct.pack(">i", 99)  # key longer than the record
    bad.write_bytes(bytes(data))
    assert "key length" in _error_of(bad)
    data[start + 4 : start + 8] = struct.pack(">i", 8)
    data[start + 16 : start + 18] = b"\x00\x00"  # the zlib header
    bad.write_bytes(bytes(data))
    assert "zlib" in _error_of(bad)

    # A block whose compressed values are damaged.
    data = bytearray(
        pathlib.Path(
            _write(tmp_path / "b.seq", range(100), [b"y" * 50] * 100, compression="block")
        ).read_bytes()
    )
    data[-6] ^= 0xFF  # inside the values' zlib stream (its adler32 at the end)
    bad.write_bytes(bytes(data))
    assert "zlib" in _error_of(bad)

    # Huge lengths (a record's, a block buffer's) are checked against the file's size first.
    with SequenceFileReader(tmp_path / "b.seq") as r:
        header, sync = pathlib.Path(tmp_path / "b.seq").read_bytes()[: r.header_end], r.sync
    bad.write_bytes(header + b"\xff\xff\xff\xff" + sync + write_vint(1) + write_vint(2**62))
    assert "found the end of the file" in _error_of(bad)
    # A block whose values stream inflates past the lengths its block lists: refused at the
    # listed size, before it fills memory (a decompression bomb).
    def stream(raw: bytes) -> bytes:
        packed = zlib.compress(raw)
        return write_vint(len(packed)) + packed

    bomb = stream(b"\x08") + stream(bytes(8)) + stream(b"\x04") + stream(bytes(50_000_000))
    bad.write_bytes(header + b"\xff\xff\xff\xff" + sync + write_vint(1) + bomb)
    assert "values of at most 4 bytes" in _error_of(bad) and "bomb" in _error_of(bad)
    # Key lengths summing past what zlib takes as a limit (2**63): a FormatError, not an
    # OverflowError from inside the inflate.
    lengths = stream(write_vint(2**62) * 3) + stream(b"abc")
    bad.write_bytes(header + b"\xff\xff\xff\xff" + sync + write_vint(3) + lengths)
    assert "keys of 13835058055282163712 bytes in all, found 3" in _error_of(bad)
    plain = (tmp_path / "r.seq").read_bytes()[:start]
    bad.write_bytes(plain + struct.pack(">ii", 2**31 - 1, 8) + bytes(20))
    assert "record of 2147483647 bytes" in _error_of(bad)

    # A Text key whose length disagrees with the record's key length.
    raw = _write(
        tmp_path / "t.seq", ["abc"], [None], key_class=IO + "Text", value_class=IO + "NullWritable"
    )
    data = bytearray(pathlib.Path(raw).read_bytes())
    data[-4] = 9  # the Text's vint length
    bad.write_bytes(bytes(data))
    assert "Text" in _error_of(bad)

    # A BooleanWritable value of 0 or 2 bytes (read as True before: any field but b"\x00").
    raw = _write(tmp_path / "f.seq", [1], [False], value_class=IO + "BooleanWritable")
    data = pathlib.Path(raw).read_bytes()
    for value in (b"", b"\x00\x00"):
        head = struct.pack(">ii", 8 + len(value), 8)
        bad.write_bytes(data[:-17] + head + data[-9:-1] + value)  # the key: 8 bytes
        assert "BooleanWritable value: 1 bytes" in _error_of(bad)


def test_other_codecs_are_refused(tmp_path: pathlib.Path) -> None:
    def header(codec: bytes) -> bytes:
        name = b"org.apache.hadoop.io.Text"
        return (
            b"SEQ\x06" + (bytes([len(name)]) + name) * 2 + b"\x01\x01" + bytes([len(codec)]) + codec
        )

    bad = tmp_path / "snappy.seq"
    bad.write_bytes(header(b"org.apache.hadoop.io.compress.SnappyCodec") + bytes(20))
    message = _error_of(bad)
    assert "SnappyCodec" in message and "DefaultCodec" in message


# ------------------------------------------------------------------ MapFiles


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("interval", [1, 3])
def test_map_file_get(tmp_path: pathlib.Path, compression: str | None, interval: int) -> None:
    part = tmp_path / "part-r-00000"
    keys = list(range(0, 40, 2))
    with MapFilePartWriter(part, index_interval=interval, compression=compression) as w:
        w.append(keys[0], b"v0")
        w.append_many(keys[1:], [b"v%d" % k for k in keys[1:]])
        assert len(w) == len(keys)
    assert sorted(os.listdir(tmp_path)) == ["part-r-00000"]
    assert sorted(os.listdir(part)) == ["data", "index"]
    index = _read(part / "index")
    with SequenceFileReader(part / "index") as r:
        assert (r.value_class, r.compression) == (IO + "LongWritable", "block")
    if compression == "block":
        assert [k for k, _ in index] == [0]  # one block: one entry, as Hadoop writes it
    else:
        assert [k for k, _ in index] == keys[::interval]
    with MapFileReader(part) as r:
        for k in keys:
            assert r.get(k) == b"v%d" % k
        for k in [-1, 1, 17, 39, 40, 1000]:
            with pytest.raises(KeyError):
                r.get(k)
        assert 4 in r and 5 not in r
        assert list(r.keys()) == keys


def test_map_file_root_of_parts_and_errors(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "root"
    for p, keys in enumerate([range(0, 10), range(10, 12), range(0), range(12, 30)]):
        with MapFilePartWriter(
            root / f"part-r-{p:05d}", IO + "Text", IO + "Text", index_interval=3
        ) as w:
            w.append_many([f"{k:03d}" for k in keys], [str(k) for k in keys])
    (root / "_SUCCESS").write_bytes(b"")
    with MapFileReader(root) as r:
        assert [os.path.basename(p) for p in r.parts] == [f"part-r-{p:05d}" for p in range(4)]
        assert [r.get(f"{k:03d}") for k in range(30)] == [str(k) for k in range(30)]
        with pytest.raises(KeyError):
            r.get("030")
        assert list(r) == [(f"{k:03d}", str(k)) for k in range(30)]
    overlapping = tmp_path / "overlapping"  # parts whose key ranges overlap: every one is asked
    for p, keys in enumerate([range(0, 21, 2), range(5, 8, 2)]):
        with MapFilePartWriter(overlapping / f"part-r-{p:05d}", index_interval=4) as w:
            w.append_many(keys, [b"%d" % k for k in keys])
    with pytest.raises(IncompleteExportError, match="no _SUCCESS"):
        MapFileReader(overlapping)  # a root of parts is read whole or not at all
    (overlapping / "_SUCCESS").write_bytes(b"")
    with MapFileReader(overlapping) as r:
        assert [r.get(k) for k in (0, 5, 6, 7, 20)] == [b"0", b"5", b"6", b"7", b"20"]
        for missing in (1, 9, 21):
            assert missing not in r

    with (
        pytest.raises(ValueError, match="record 2 has key 1 after 5"),
        MapFilePartWriter(tmp_path / "bad") as w,
    ):
        w.append_many([4, 5, 1], [b"", b"", b""])
    with pytest.raises(ValueError, match="record 3 has key 5 after 5"):
        with MapFilePartWriter(tmp_path / "bad") as w:
            w.append_many([1, 2, 5], [b"", b"", b""])
            w.append(5, b"")
    assert not (tmp_path / "bad").exists()
    assert sorted(os.listdir(tmp_path)) == ["overlapping", "root"]

    _write(
        root / "part-r-00001" / "index",
        ["010"],
        ["0"],
        key_class=IO + "Text",
        value_class=IO + "Text",
    )
    with pytest.raises(FormatError, match="part-r-00001/index: expected .* found .*Text"):
        MapFileReader(root)
    os.remove(root / "part-r-00001" / "index")
    with pytest.raises(FormatError, match="part-r-00001/index"):
        MapFileReader(root)
    with pytest.raises(FormatError, match="neither"):
        MapFileReader(tmp_path)


# ------------------------------------------------------------------ Spark and Hadoop interop


def test_spark_and_hadoop_read_ours(sc: object, tmp_path: pathlib.Path) -> None:
    n = 1500
    values = [bytes([i % 256]) * (i % 300) for i in range(n)]
    ours = tmp_path / "ours"
    ours.mkdir()
    for compression in COMPRESSIONS:
        _write(
            ours / f"{compression}.seq",
            range(n),
            values,
            compression=compression,
            metadata={"a": "b"},
        )
    _write(ours / "empty.seq", [], [], compression="block")
    mapfile = tmp_path / "map" / "part-r-00000"
    with MapFilePartWriter(mapfile, index_interval=3, compression="record") as w:
        w.append_many(range(100), values[:100])
    got = sc.sequenceFile(  # type: ignore[attr-defined]
        f"{ours},{mapfile}/data", IO + "LongWritable", IO + "BytesWritable"
    ).collect()
    expected = list(enumerate(values)) * 3 + list(enumerate(values[:100]))
    assert sorted((k, bytes(v)) for k, v in got) == sorted(expected)

    text = _write(
        tmp_path / "text.seq",
        ["a", "é", ""],
        [1, -2, 2**31 - 1],
        key_class=IO + "Text",
        value_class=IO + "IntWritable",
        compression="block",
    )
    assert sc.sequenceFile(text).collect() == [("a", 1), ("é", -2), ("", 2**31 - 1)]  # type: ignore[attr-defined]

    # Hadoop's own MapFile.Reader on our MapFiles: index search and scan with its code.
    block_map = tmp_path / "map" / "part-r-00001"
    with MapFilePartWriter(block_map, index_interval=3, compression="block") as w:
        w.append_many(range(100), values[:100])
    jvm = sc._jvm  # type: ignore[attr-defined]
    hio = jvm.org.apache.hadoop.io
    conf = sc._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    fs = jvm.org.apache.hadoop.fs.FileSystem.getLocal(conf)
    for directory in [mapfile, block_map]:
        reader = hio.MapFile.Reader(fs, str(directory), conf)
        try:
            for k in [0, 1, 2, 50, 99]:
                value = hio.BytesWritable()
                assert reader.get(hio.LongWritable(k), value) is not None
                assert bytes(value.copyBytes()) == values[k]
            assert reader.get(hio.LongWritable(100), value) is None
        finally:
            reader.close()


def test_we_read_sparks_and_hadoops(sc: object, tmp_path: pathlib.Path) -> None:
    pairs = [(1, b"x"), (2, b""), (3, b"yz" * 100)]
    sc.parallelize(pairs, 2).saveAsSequenceFile(str(tmp_path / "plain"))  # type: ignore[attr-defined]
    text = [("a", 1), ("é", -5), ("c", 2**31 - 1)]
    sc.parallelize(text, 1).saveAsHadoopFile(  # type: ignore[attr-defined]
        str(tmp_path / "text"),
        "org.apache.hadoop.mapred.SequenceFileOutputFormat",
        IO + "Text",
        IO + "IntWritable",
        compressionCodecClass=IO + "compress.DefaultCodec",  # Spark makes it block compression
    )
    jvm = sc._jvm  # type: ignore[attr-defined]
    conf = sc._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    fs = jvm.org.apache.hadoop.fs.FileSystem.getLocal(conf)
    hio = jvm.org.apache.hadoop.io
    long_class = jvm.java.lang.Class.forName(IO + "LongWritable")
    text_class = jvm.java.lang.Class.forName(IO + "Text")
    compression_type = getattr(hio, "SequenceFile$CompressionType")

    # Hadoop's SequenceFile.Writer with record compression (Spark's writers only do block).
    (tmp_path / "record").mkdir()
    writer = hio.SequenceFile.createWriter(
        fs,
        conf,
        jvm.org.apache.hadoop.fs.Path(str(tmp_path / "record" / "part-00000")),
        long_class,
        text_class,
        compression_type.RECORD,
    )
    records = [(k, "v" * k) for k in range(0, 600, 7)]
    for k, v in records:
        writer.append(hio.LongWritable(k), hio.Text(v))
    writer.close()

    seen = {}
    for name, expected in [("plain", pairs), ("text", text), ("record", records)]:
        parts = sorted(p for p in os.listdir(tmp_path / name) if p.startswith("part-"))
        got = []
        for part in parts:
            with SequenceFileReader(tmp_path / name / part) as r:
                seen[name] = (r.key_class, r.value_class, r.compression)
                got.extend(r)
        assert got == expected, name
    assert seen == {
        "plain": (IO + "IntWritable", IO + "BytesWritable", None),
        "text": (IO + "Text", IO + "IntWritable", "block"),
        "record": (IO + "LongWritable", IO + "Text", "record"),
    }

    # MapFiles written by Hadoop's MapFile.Writer (index interval 3).
    for kind in ["NONE", "BLOCK"]:
        directory = str(tmp_path / "hadoop" / kind / "part-r-00000")
        writer = hio.MapFile.Writer(
            conf, fs, directory, long_class, text_class, compression_type.valueOf(kind)
        )
        writer.setIndexInterval(3)
        for k in range(0, 20, 2):
            writer.append(hio.LongWritable(k), hio.Text(f"v{k}"))
        writer.close()
        with MapFileReader(directory) as r:
            assert [r.get(k) for k in range(0, 20, 2)] == [f"v{k}" for k in range(0, 20, 2)]
            with pytest.raises(KeyError):
                r.get(3)
            assert list(r.keys()) == list(range(0, 20, 2))


def _part_files(part: pathlib.Path) -> dict[str, bytes]:
    """A MapFile's data and index bytes, each file's random sync marker replaced by b"S" * 16
    (so that two writers' files compare)."""
    files = {}
    for name in ("data", "index"):
        with SequenceFileReader(part / name) as r:
            sync = r.sync
        files[name] = (part / name).read_bytes().replace(sync, b"S" * 16)
    return files


@pytest.mark.parametrize("interval", [1, 3])
def test_batch_framing_writes_the_bytes_of_the_record_loop(
    tmp_path: pathlib.Path, interval: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LongWritable -> BytesWritable parts are framed a batch at once; the files must be
    those of the per-record path (sync markers, index offsets), batch after batch."""
    import numpy as np

    from sparkbatch.storage import map_file

    rng = np.random.default_rng(0)
    values = [rng.bytes(int(n)) for n in rng.integers(0, 400, 2500)]  # ~500 KB: 4 syncs
    batches = [(0, 7), (7, 1200), (1200, 2500)]

    def write(part: pathlib.Path) -> dict[str, bytes]:
        with MapFilePartWriter(part, index_interval=interval) as w:
            for begin, end in batches:
                w.append_many(range(begin * 3, end * 3, 3), values[begin:end])
        return _part_files(part)

    fast = write(tmp_path / "fast")
    monkeypatch.setattr(map_file, "_longs", lambda keys: None)  # the per-record path
    slow = write(tmp_path / "slow")
    assert fast == slow
    assert fast["data"].count(b"S" * 16) >= 4
    reader = MapFileReader(tmp_path / "fast")
    assert reader.get(1200 * 3) == values[1200] and reader.get(2499 * 3) == values[2499]
    with pytest.raises(KeyError):
        reader.get(1)
    reader.close()


@pytest.mark.parametrize("compression", [None, "block"])
def test_rows_of_one_array_write_the_bytes_of_the_record_loop(
    tmp_path: pathlib.Path, compression: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values given as the rows of a uint8 array (MapFileWriter's float records) are framed
    in one array, and the index takes its keys and offsets as rows: the files must be those of
    bytes values through the per-record path, sync markers and blocks included."""
    import numpy as np

    from sparkbatch.storage import map_file

    rows = np.random.default_rng(1).integers(0, 256, (6000, 37), dtype=np.uint8)  # 2 syncs
    batches = [(0, 1), (1, 2500), (2500, 6000)]

    def write(part: pathlib.Path, as_rows: bool) -> dict[str, bytes]:
        with MapFilePartWriter(part, compression=compression) as w:
            for begin, end in batches:
                values = rows[begin:end] if as_rows else [r.tobytes() for r in rows[begin:end]]
                w.append_many(range(begin, end), values)
        return _part_files(part)

    fast = write(tmp_path / "fast", True)
    monkeypatch.setattr(map_file, "_longs", lambda keys: None)  # the per-record path
    slow = write(tmp_path / "slow", False)
    assert fast == slow
    if compression is None:
        assert fast["data"].count(b"S" * 16) >= 2
    with MapFileReader(tmp_path / "fast") as reader:
        assert reader.get(4321) == rows[4321].tobytes()
        assert list(reader.keys()) == list(range(6000))
    for bad in (np.zeros((2, 3), np.int32), np.zeros(2, np.uint8)):
        with pytest.raises(TypeError, match=r"bad: values as an array must be 2-D uint8 rows, got"):
            MapFilePartWriter(tmp_path / "bad").append_many(range(2), bad)


@pytest.mark.parametrize("compression", [None, "record", "block"])
def test_values_alone(tmp_path: pathlib.Path, compression: str | None) -> None:
    path = str(tmp_path / "v.seq")
    values = [b"%d" % i * (i % 7) for i in range(500)]
    with SequenceFileWriter(path, compression=compression) as w:
        w.append_many(range(500), values)
    with SequenceFileReader(path) as r:
        assert list(r.values()) == values
    raw = bytearray(pathlib.Path(path).read_bytes())
    if compression is None:  # a BytesWritable whose own length disagrees with the record's
        at = raw.index(b"4" * 4) - 4
        raw[at : at + 4] = (9).to_bytes(4, "big")
        pathlib.Path(path).write_bytes(bytes(raw))
        expected = r"v\.seq: at byte \d+: expected"
        with SequenceFileReader(path) as r, pytest.raises(FormatError, match=expected):
            list(r.values())
