"""Map files (issue 20): the record encoding, MapFileWriter / MapFileSequenceWriter (splitting,
index interval, text conversion, atomic commit, empty output), records.convert, and
restore_map_file on Spark, with Spark's own sc.sequenceFile reading our parts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sparkbatch.errors import FormatError, IncompleteExportError
from sparkbatch.records import CSVRecordReader, CSVSequenceRecordReader, FileRecordReader, convert
from sparkbatch.storage import (
    MapFileReader,
    MapFileSequenceWriter,
    MapFileWriter,
    SequenceFileReader,
    decode_record,
    decode_sequence,
    encode_record,
    encode_sequence,
)
from sparkbatch.storage.record_codec import (
    encode_float_rows,
    encode_records,
    is_sequence_encoding,
)

LONG = "org.apache.hadoop.io.LongWritable"
BYTES = "org.apache.hadoop.io.BytesWritable"


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray):
            if not (isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y)):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


RECORDS = [
    [],
    [1.5, -2.0, 0.0, float("inf")],
    [1, -(2**63), 2**63 - 1],
    [1.0, "a, b", b"\x00\xff", None, True, False, 7, "é😀", ""],
    [np.arange(12, dtype=np.uint8).reshape(3, 2, 2), 4],
    [np.arange(6, dtype=">f4").reshape(2, 3), np.zeros((0, 3)), np.float32(0.5)],
    ["only", "text"],
]


@pytest.mark.parametrize("record", RECORDS, ids=range(len(RECORDS)))
def test_records_round_trip(record: list) -> None:
    data = encode_record(record)
    assert data[:3] == b"sb\x01" and not is_sequence_encoding(data)
    back = decode_record(data)
    expected = [float(v) if isinstance(v, np.floating) else v for v in record]
    assert _same(back, expected), (back, record)
    assert _same(decode_record(bytearray(data)), back)
    assert _same(decode_record(memoryview(data)), back)


def test_numeric_records_are_one_array() -> None:
    assert encode_record([1.5, 2.5]) == b"sb\x01d" + np.array([1.5, 2.5], "<f8").tobytes()
    assert encode_record([3, 4]) == b"sb\x01q" + np.array([3, 4], "<i8").tobytes()
    assert encode_sequence([[1.0], [2.0]]) == (
        b"sb\x01D" + np.array([2, 1], "<u4").tobytes() + np.array([1.0, 2.0], "<f8").tobytes()
    )
    for batch in (
        [[1.5, 2.0], [np.float32(3.0), 4.0]],
        [[1, 2], [3, 4]],
        [[1.0], [2.0, 3.0]],
        [[], []],
        [[1.0, True], [2.0, False]],
        [[1.0, "2"], [3.0, 4.0]],
    ):
        assert encode_records(batch) == [encode_record(r) for r in batch], batch
    batch = [[0.5, -1.0, 2.0], (3.0, 4.0, 1e300)]
    rows = encode_float_rows(batch)
    assert rows.dtype == np.uint8 and [r.tobytes() for r in rows] == encode_records(batch)
    assert encode_float_rows([]).shape == (0, 4)
    assert encode_float_rows([[], ()]).tolist() == [list(b"sb\x01d")] * 2

    class Sub(float):
        pass

    for other in (  # any value but a plain float, or another width: the general encodings
        [[1.0, 2]],
        [[1.0], [2.0, 3.0]],
        [[np.float64(1.0)]],
        [[Sub(1.0)]],
        [[1.0], np.array([2.0])],
        [[1.0, None]],
    ):
        assert encode_float_rows(other) is None, other
    decoded = decode_record(encode_record([np.ones((2, 2), np.float32)]))[0]
    assert decoded.flags.writeable and decoded.flags.aligned


@pytest.mark.parametrize(
    "sequence",
    [
        [],
        [[]],
        [[], []],
        [[1.0, 2.0], [3.0, 4.0]],
        [[1, 2], [3, 4]],
        [[1.0, "x"], [2.0]],
        [[1.0], [2]],
        [[np.zeros(2, np.uint8), 1.0]],
    ],
)
def test_sequences_round_trip(sequence: list) -> None:
    data = encode_sequence(sequence)
    assert is_sequence_encoding(data)
    back = decode_sequence(data)
    assert len(back) == len(sequence) and all(map(_same, back, sequence))


def test_foreign_and_damaged_bytes_are_format_errors() -> None:
    with pytest.raises(FormatError, match=r"k 3 is not a sparkbatch record: expected the bytes"):
        decode_record(b"\x00\x01hello", source="k 3")
    with pytest.raises(FormatError, match="version 9, this sparkbatch reads version 1"):
        decode_record(b"sb\x09d")
    with pytest.raises(FormatError, match="holds a sequence record, expected a record"):
        decode_record(encode_sequence([[1.0]]))
    with pytest.raises(FormatError, match="holds a record, expected a sequence record"):
        decode_sequence(encode_record([1.0]))
    data = encode_record([1.0, "abc", np.zeros(3)])
    for cut in (5, 12, len(data) - 1):
        with pytest.raises(FormatError, match="expected .* at byte"):
            decode_record(data[:cut])
    with pytest.raises(FormatError, match="the end of the record"):
        decode_record(data + b"\x00")
    # A hostile array shape whose product overflows int64 (np.prod wrapped it to 0 values).
    array = encode_record([np.zeros(2, np.uint8)])
    head = array.index(b"|u1") + 3
    for shape in ((2**32, 2**32), (0, 2**63 + 5)):
        hostile = array[:head] + bytes([2]) + np.array(shape, "<u8").tobytes()
        with pytest.raises(FormatError, match="an array of shape"):
            decode_record(hostile)
    with pytest.raises(TypeError, match="got list"):
        encode_record([[1.0, 2.0]])
    with pytest.raises(ValueError, match="does not fit"):
        encode_record([1, 2**64])


def _parts(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _read_part(part: Path) -> list[tuple[int, bytes]]:
    with SequenceFileReader(str(part / "data")) as reader:
        assert (reader.key_class, reader.value_class) == (LONG, BYTES)
        return list(reader)


def test_splitting_and_exact_part_contents(tmp_path: Path) -> None:
    records = [[float(i), float(i % 3)] for i in range(7)]
    out = tmp_path / "out"
    with MapFileWriter(out, split_size=3) as writer:
        writer.write(records[0])
        writer.write_batch(records[1:5])
        writer.write_batch(iter(records[5:]))
        assert not (out / "_SUCCESS").exists()  # not complete before close
    assert _parts(out) == ["_SUCCESS", "part-r-00000", "part-r-00001", "part-r-00002"]
    for p in range(3):
        pairs = _read_part(out / f"part-r-{p:05d}")
        assert [k for k, _ in pairs] == list(range(3 * p, min(3 * p + 3, 7)))
        assert [decode_record(v) for _, v in pairs] == records[3 * p : 3 * p + 3]
    with MapFileReader(str(out)) as reader:  # random access by key, across the parts
        assert decode_record(reader.get(5)) == records[5]
        assert [k for k, _ in reader] == list(range(7))
    one = tmp_path / "one"
    with MapFileWriter(one) as writer:
        writer.write_batch(records)
    assert _parts(one) == ["_SUCCESS", "part-r-00000"]


def test_index_interval(tmp_path: Path) -> None:
    with MapFileWriter(tmp_path / "o", index_interval=3) as writer:
        writer.write_batch([[float(i)] for i in range(8)])
    with SequenceFileReader(str(tmp_path / "o" / "part-r-00000" / "index")) as index:
        assert [k for k, _ in index] == [0, 3, 6]


def test_empty_writer_writes_one_empty_part(tmp_path: Path, sc: object) -> None:
    from sparkbatch.spark import restore_map_file

    with MapFileWriter(tmp_path / "e", split_size=4):
        pass
    assert _parts(tmp_path / "e") == ["_SUCCESS", "part-r-00000"]
    assert _read_part(tmp_path / "e" / "part-r-00000") == []
    assert restore_map_file(sc, str(tmp_path / "e")).collect() == []


def test_convert_text_to(tmp_path: Path) -> None:
    with MapFileWriter(tmp_path / "f", convert_text_to="float") as writer:
        writer.write_batch([[" 1.5", 2.0], ["3", "4e1"]])
    assert [decode_record(v) for _, v in _read_part(tmp_path / "f" / "part-r-00000")] == [
        [1.5, 2.0],
        [3.0, 40.0],
    ]
    writer = MapFileWriter(tmp_path / "g", convert_text_to="int")
    writer.write_batch([["1", 2]])
    with pytest.raises(ValueError, match=r"record 1, field 2: the text 'x' is not an int"):
        writer.write_batch([["3", 4, "x"]])
    writer.abort()
    seq = MapFileSequenceWriter(tmp_path / "h", convert_text_to="float")
    with pytest.raises(ValueError, match=r"record 0, step 1, field 0: the text 'no' is not a fl"):
        seq.write([["1"], ["no"]])
    seq.abort()
    with pytest.raises(ValueError, match="convert_text_to must be"):
        MapFileWriter(tmp_path / "i", convert_text_to="double")


def test_atomic_close_and_abort(tmp_path: Path, sc: object) -> None:
    from sparkbatch.spark import restore_map_file

    out = tmp_path / "a"
    writer = MapFileWriter(out, split_size=2000)
    writer.write_batch([[float(i)] for i in range(5000)])  # past the write buffer: parts flushed
    visible = [n for n in _parts(out) if not n.startswith(".")]
    assert visible == ["part-r-00000", "part-r-00001"]  # committed whole; part 2 still open
    assert all((out / n / "data").exists() and (out / n / "index").exists() for n in visible)
    with pytest.raises(IncompleteExportError, match="no _SUCCESS"):
        restore_map_file(sc, str(out))
    writer.close()
    assert restore_map_file(sc, str(out)).glom().map(len).collect() == [2000, 2000, 1000]
    with pytest.raises(FileExistsError, match="already holds a map file output"):
        MapFileWriter(out)
    failed = tmp_path / "b"
    with pytest.raises(TypeError, match="record 4999"):
        with MapFileWriter(failed, split_size=2000) as writer:
            writer.write_batch([[float(i)] for i in range(4999)])
            writer.write([{"not": "a value"}])
    assert not failed.exists() or os.listdir(failed) == []


def test_convert_from_csv_readers(tmp_path: Path, sc: object) -> None:
    from sparkbatch.spark import (
        RecordsToDataSet,
        SequencesToDataSet,
        restore_map_file,
        restore_map_file_sequences,
    )

    (tmp_path / "a.csv").write_text("x,y,label\n0.5,1,2\n1.5,0,1\n2.5,1,0\n3.5,0,2\n")
    reader = CSVRecordReader(skip_lines=1).initialize(str(tmp_path / "a.csv"))
    out = str(tmp_path / "csv_out")
    assert convert(reader, MapFileWriter(out, split_size=3), progress=False, batch_size=2) == 4
    reader.reset()
    expected = list(reader)
    rdd = restore_map_file(sc, out)
    assert rdd.getNumPartitions() == 2 and rdd.glom().map(len).collect() == [3, 1]
    assert rdd.collect() == expected
    ds = rdd.map(RecordsToDataSet(label_index=2, num_classes=3)).collect()
    assert [d.labels.argmax() for d in ds] == [2, 1, 0, 2]
    np.testing.assert_array_equal(ds[1].features, [[1.5, 0.0]])

    seq_dir = tmp_path / "seqs"
    seq_dir.mkdir()
    for i in range(3):
        (seq_dir / f"{i}.csv").write_text("".join(f"{i}.{t},{t % 2}\n" for t in range(i + 1)))
    sreader = CSVSequenceRecordReader().initialize(str(seq_dir))
    with pytest.raises(TypeError, match="use MapFileSequenceWriter"):
        convert(sreader, MapFileWriter(str(tmp_path / "wrong")), progress=False)
    sout = str(tmp_path / "seq_out")
    assert convert(sreader, MapFileSequenceWriter(sout, split_size=2), progress=False) == 3
    sreader.reset()
    sequences = restore_map_file_sequences(sc, sout).collect()
    assert [list(s) for s in sequences] == [list(s) for s in sreader]
    assert sequences[2].source.endswith("part-r-00001/data key 2")
    with pytest.raises(Exception, match="holds a sequence record, expected a record"):
        restore_map_file(sc, sout).collect()
    seq_ds = restore_map_file_sequences(sc, sout).map(
        SequencesToDataSet(label_index=1, num_classes=2)
    )
    assert seq_ds.map(lambda d: d.features.shape).collect() == [(1, 1, 1), (1, 1, 2), (1, 1, 3)]


def test_spark_sequence_file_reads_our_parts(tmp_path: Path, sc: object) -> None:
    records = [[float(i), "t" + str(i), np.full((1, 2, 2), i, np.uint8)] for i in range(5)]
    out = tmp_path / "s"
    with MapFileWriter(out, split_size=2, compression="block") as writer:
        writer.write_batch(records)
    url = ",".join(str(out / f"part-r-{p:05d}" / "data") for p in range(3))
    pairs = sc.sequenceFile(url, LONG, BYTES).collect()  # type: ignore[attr-defined]
    assert [k for k, _ in pairs] == list(range(5))
    assert all(_same(decode_record(v), r) for (_, v), r in zip(pairs, records, strict=True))


class _ArrayReader(FileRecordReader):
    """A custom reader: one ``[image, label]`` record per file (``b"<label>"``); ``b"bad"``
    fails."""

    def parse(self, data: bytes, source: str) -> list[list]:
        label = int(data)
        return [[np.full((1, 2, 2), label, np.uint8), label]]


def test_convert_a_custom_reader_and_abort_on_its_error(tmp_path: Path, sc: object) -> None:
    from sparkbatch.spark import restore_map_file

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.txt").write_bytes(str(i).encode())
    out = str(tmp_path / "arrays")
    assert convert(_ArrayReader().initialize(str(src)), MapFileWriter(out, split_size=2)) == 3
    back = restore_map_file(sc, out).collect()
    assert [r[1] for r in back] == [0, 1, 2]
    assert all(
        r[0].dtype == np.uint8 and r[0].shape == (1, 2, 2) and r[0].max() == r[1] for r in back
    )
    (src / "3.txt").write_bytes(b"bad")
    failed = tmp_path / "failed"
    with pytest.raises(ValueError, match="3.txt"):
        convert(_ArrayReader().initialize(str(src)), MapFileWriter(failed), batch_size=1)
    assert not failed.exists() or os.listdir(failed) == []


def test_parts_are_restored_in_the_order_of_their_numbers(tmp_path: Path) -> None:
    from sparkbatch.spark.map_files import map_file_parts

    for name in ("part-r-99999", "part-r-100000", "part-r-00002"):
        (tmp_path / name).mkdir()
    (tmp_path / "_SUCCESS").write_bytes(b"")
    names = [os.path.basename(p) for p in map_file_parts(str(tmp_path))]
    assert names == ["part-r-00002", "part-r-99999", "part-r-100000"]  # not by name
