"""DataVec-written map files (issue 20's bonus): values of DataVec's RecordWritable and
SequenceRecordWritable, built here byte for byte from the Java sources (docs/format.md,
"DataVec-written map files"), decoded alone and restored on Spark from MapFiles without
_SUCCESS, as DataVec's MapFileRecordWriter leaves them."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparkbatch.errors import FormatError, IncompleteExportError
from sparkbatch.records import SequenceRecord
from sparkbatch.spark.map_files import (
    MapFilePartsToRecords,
    restore_map_file,
    restore_map_file_sequences,
)
from sparkbatch.storage import (
    MapFilePartWriter,
    MapFileReader,
    MapFileWriter,
    decode_datavec_record,
    decode_datavec_sequence,
)
from sparkbatch.storage.datavec_writables import RECORD_CLASS, SEQUENCE_CLASS

# ---------------------------------------------------------------- DataVec's bytes, from the Java
# Each writer below follows one Java method: WritableFactory.writeWithType writes the type short
# (WritableType's ordinal: Boolean 0, Byte 1, Double 2, Float 3, Int 4, Long 5, Null 6, Text 7,
# NDArray 8, Image 9, Arrow 10, Bytes 11), then the Writable's write() its payload.


def _typed(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">h", kind) + payload


def _vint(n: int) -> bytes:
    """Hadoop's WritableUtils.writeVInt, for the n >= 0 of Text lengths."""
    if n <= 127:
        return bytes([n])
    size = (n.bit_length() + 7) // 8
    return bytes([256 - 112 - size]) + n.to_bytes(size, "big")


def boolean(v: bool) -> bytes:
    return _typed(0, b"\x01" if v else b"\x00")  # DataOutput.writeBoolean


def byte(v: int) -> bytes:
    return _typed(1, struct.pack(">b", v))


def double(v: float) -> bytes:
    return _typed(2, struct.pack(">d", v))


def float32(v: float) -> bytes:
    return _typed(3, struct.pack(">f", v))


def int32(v: int) -> bytes:
    return _typed(4, struct.pack(">i", v))


def long(v: int) -> bytes:
    return _typed(5, struct.pack(">q", v))


def null() -> bytes:
    return _typed(6)


def text(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _typed(7, _vint(len(raw)) + raw)


def raw_bytes(b: bytes) -> bytes:
    return _typed(11, b)  # BytesWritable.write: the content alone


def _utf(s: str) -> bytes:
    return struct.pack(">H", len(s)) + s.encode("ascii")  # DataOutput.writeUTF


def _buffer(dtype: str, values: np.ndarray, legacy: bool = False) -> bytes:
    """BaseDataBuffer.write: allocation mode, element count, data type, elements big-endian."""
    big = {"DOUBLE": ">f8", "FLOAT": ">f4", "INT": ">i4", "LONG": ">i8", "HALF": ">f2"}
    big |= {"SHORT": ">i2", "BYTE": "i1", "UBYTE": "u1", "BOOL": "u1"}
    count = struct.pack(">i", values.size) if legacy else struct.pack(">q", values.size)
    mode = "JAVACPP" if legacy else "MIXED_DATA_TYPES"
    return _utf(mode) + count + _utf(dtype) + values.astype(big[dtype]).tobytes()


def ndarray(array: np.ndarray | None, dtype: str = "FLOAT", order: str = "c", legacy=False):
    """NDArrayWritable.write: version byte, then Nd4j.write (shape info buffer, data buffer)."""
    if array is None:
        return _typed(8, b"\x00")
    strides = np.array(array.strides if order == "c" else np.asfortranarray(array).strides)
    strides = (strides // array.itemsize).tolist() if array.ndim else []
    info = [array.ndim, *array.shape, *strides, 16384 * (not legacy), 1, ord(order)]
    info_buffer = _buffer("INT" if legacy else "LONG", np.array(info), legacy)
    data = _buffer(dtype, array.ravel(order=order.upper()), legacy)
    return _typed(8, b"\x01" + info_buffer + data)


def record(*values: bytes) -> bytes:
    """RecordWritable.write: int32 count, then each value with its type."""
    return struct.pack(">i", len(values)) + b"".join(values)


def sequence(*steps: list[bytes]) -> bytes:
    """SequenceRecordWritable.write: int32 steps, int32 values per step (only when steps > 0),
    then every step's values with their types."""
    head = struct.pack(">i", len(steps))
    if steps:
        head += struct.pack(">i", len(steps[0]))
    return head + b"".join(b"".join(step) for step in steps)


def _same(got: list[Any], want: list[Any]) -> None:
    """Equal values of the same Python types (arrays: same dtype, shape and values)."""
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, np.ndarray):
            assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
            assert g.flags.writeable and g.dtype.isnative
        else:
            assert type(g) is type(w) and g == w, (g, w)


# ---------------------------------------------------------------- decoding


def test_every_writable_type() -> None:
    c = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    f = np.arange(12, dtype=np.float64).reshape(3, 4) / 8
    long_text = "é😀" * 50  # 300 bytes: a two-byte vint length
    data = record(
        boolean(True), boolean(False), byte(-5), double(1.5), float32(0.25), int32(-7),
        long(2**40), null(), text("a, b"), text(long_text), text(""),
        ndarray(c), ndarray(f, "DOUBLE", order="f"), ndarray(None),
        ndarray(np.array([1, -2], np.int32), "INT", legacy=True),
        ndarray(np.array(3.5, np.float64), "DOUBLE"),
        ndarray(np.array([[True, False]]), "BOOL"), ndarray(np.array([200, 7], np.uint8), "UBYTE"),
        ndarray(np.array([0.5, -1], np.float16), "HALF"),
        raw_bytes(b"\x00\xff tail"),
    )  # fmt: skip
    want = [
        True, False, -5, 1.5, 0.25, -7, 2**40, None, "a, b", long_text, "", c, f, None,
        np.array([1, -2], np.int32), np.array(3.5), np.array([[True, False]]),
        np.array([200, 7], np.uint8), np.array([0.5, -1], np.float16), b"\x00\xff tail",
    ]  # fmt: skip
    _same(decode_datavec_record(data), want)
    _same(decode_datavec_record(memoryview(bytearray(data))), want)
    _same(decode_datavec_record(record()), [])


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([double(v) for v in (1.5, -2.0, float("inf"))], [1.5, -2.0, float("inf")]),
        ([double(0.5), long(-(2**63)), double(2.0), long(9)], [0.5, -(2**63), 2.0, 9]),
        ([float32(0.1), int32(3)], [float(np.float32(0.1)), 3]),
        ([boolean(True), byte(-1), boolean(False)], [True, -1, False]),
        ([null(), null()], [None, None]),
        # one stride of 10 bytes, but a Text among them: read value by value
        ([text("abcdefg"), double(2.5)], ["abcdefg", 2.5]),
        ([double(1.0), _typed(0, b"\x02")], [1.0, True]),  # readBoolean: any byte but 0
    ],
    ids="doubles doubles-longs floats-ints booleans-bytes nulls text-stride bool-byte-2".split(),
)
def test_fixed_stride_records(values: list[bytes], want: list[Any]) -> None:
    _same(decode_datavec_record(record(*values)), want)
    _same(decode_datavec_sequence(sequence(values, values))[1], want)
    # over 256 values: one numpy pass (or, for the Text among them, value by value)
    _same(decode_datavec_record(record(*values * 150)), want * 150)
    _same(decode_datavec_sequence(sequence(values * 150, values * 150))[1], want * 150)


def test_sequences() -> None:
    steps = [[double(i + 0.5), double(-i)] for i in range(4)]
    assert decode_datavec_sequence(sequence(*steps)) == [[i + 0.5, -float(i)] for i in range(4)]
    mixed = sequence([text("x"), long(1)], [text("yz"), long(2)], [null(), raw_bytes(b"end")])
    assert decode_datavec_sequence(mixed) == [["x", 1], ["yz", 2], [None, b"end"]]
    assert decode_datavec_sequence(sequence()) == []


_COMPRESSED_BUFFER = struct.pack(">q", 4) + _utf("COMPRESSED")
# shape [2^40] with stride 0 over one value: would decode to 8 TB
_HUGE_SHAPE = _buffer("LONG", np.array([1, 2**40, 0, 0, 1, ord("c")]))
_HUGE_SHAPE += _buffer("DOUBLE", np.array([1.0]))
# shape [1] with a stride of 2^62: inside the buffer, but no numpy stride
_HUGE_STRIDE = _buffer("LONG", np.array([1, 1, 2**62, 0, 1, ord("c")]))
_HUGE_STRIDE += _buffer("DOUBLE", np.array([1.0]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (record(double(1.0))[:-3], r"at byte 6 of 11: expected a Double \(8 bytes\)"),
        (record(text("abc"))[:-1], r"at byte 7 of 9: expected a Text's UTF-8 bytes \(3 bytes\)"),
        (b"\x00\x00", r"at byte 0 of 2: expected the value count \(int32\)"),
        (record(double(1.0)) + b"\x00", r"at byte 14 of 15: expected the end of the record"),
        (struct.pack(">i", -1), r"at byte 0 of 4: expected the value count \(int32\), found -1"),
        (b"sb\x01d" + struct.pack("<d", 1.0), r"expected 1935802724 values of at least 2 bytes"),
        (record(_typed(12)), r"at byte 4 of 6: expected a Writable type 0 to 11 .* found 12"),
        (record(_typed(9, b"x")), r"found 9 \(ImageWritable, which it does not register"),
        (record(raw_bytes(b"ab"), int32(1)), r"at byte 4 .* found a BytesWritable \(type 11\)"),
        (record(text("a"), _typed(7, b"\x01\xff")), r"at byte 11 of 12: expected a Text in UTF-8"),
        (record(_typed(8, b"\x02")), r"at byte 6 of 7: expected an NDArrayWritable's version"),
        (
            record(_typed(8, b"\x01" + _utf("MIXED_DATA_TYPES") + _COMPRESSED_BUFFER)),
            r"found 'COMPRESSED' \(NDArrayWritable values of other types, compressed",
        ),
        (
            record(ndarray(np.zeros((2, 3), np.float32)))[:-5],
            r"expected 6 FLOAT values of the array's data \(24 bytes\), found the end",
        ),
        (
            record(_typed(8, b"\x01" + _HUGE_SHAPE)),
            r"expected 1099511627776 values for an array of shape \[1099511627776\] and strides "
            r"\[0\], found 1",
        ),
        (
            record(_typed(8, b"\x01" + _HUGE_STRIDE)),
            r"at byte 87 of 129: expected an array of shape \[1\] \(",
        ),
    ],
    ids=(
        "double text count left-over negative sparkbatch-encoding type-12 image bytes-not-last "
        "utf8 nd-version nd-compressed nd-truncated nd-huge-shape nd-huge-stride"
    ).split(),
)
def test_bad_record_names_place(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=r"DataVec RecordWritable in part-r-00003/data key 9: "):
        decode_datavec_record(data, source="part-r-00003/data key 9")
    with pytest.raises(FormatError, match=message):
        decode_datavec_record(data)


def test_bad_sequences() -> None:
    with pytest.raises(FormatError, match=r"at byte 4 of 8: expected at least one value per step"):
        decode_datavec_sequence(struct.pack(">ii", 3, 0))
    with pytest.raises(FormatError, match=r"at byte 4 of 6: expected the end of an empty seq"):
        decode_datavec_sequence(struct.pack(">ih", 0, 1))
    cut = sequence([double(1.0)], [double(2.0)])[:-1]
    with pytest.raises(FormatError, match=r"SequenceRecordWritable in s: at byte 20 of 27: exp"):
        decode_datavec_sequence(cut, "s")
    with pytest.raises(FormatError, match="expected the end of the sequence after 1 steps of 1"):
        decode_datavec_sequence(sequence([int32(1)]) + b"\x00")


# ---------------------------------------------------------------- map files on Spark

RECORDS = [
    [[float(i), i * 0.5, float(i % 3)] for i in range(7)],
    [[f"row {i}", i, None if i % 2 else True] for i in range(5)],
]


def _datavec_output(root: Path, values: list[bytes], value_class: str, split: int) -> None:
    """Parts as DataVec's MapFileRecordWriter leaves them: part-r-NNNNN MapFiles of LongWritable
    global indexes and DataVec values, record k in part k // split, and no _SUCCESS."""
    for p, start in enumerate(range(0, len(values), split)):
        chunk = values[start : start + split]
        with MapFilePartWriter(root / f"part-r-{p:05d}", value_class=value_class) as w:
            w.append_many(range(start, start + len(chunk)), chunk)


def test_restore_datavec_map_files(tmp_path: Path, sc: object) -> None:
    numeric = [record(*(double(v) for v in r)) for r in RECORDS[0]]
    mixed = [
        record(text(a), long(b), null() if c is None else boolean(c)) for a, b, c in RECORDS[1]
    ]
    _datavec_output(tmp_path / "dv", numeric + mixed, RECORD_CLASS, split=6)
    rdd = restore_map_file(sc, str(tmp_path / "dv"))
    assert rdd.getNumPartitions() == 2
    assert rdd.collect() == RECORDS[0] + RECORDS[1]

    seqs = [sequence(*([double(i), text(str(j))] for j in range(i + 1))) for i in range(5)]
    _datavec_output(tmp_path / "dvs", seqs, SEQUENCE_CLASS, split=3)
    restored = restore_map_file_sequences(sc, str(tmp_path / "dvs")).collect()
    assert restored == [[[float(i), str(j)] for j in range(i + 1)] for i in range(5)]
    assert isinstance(restored[3], SequenceRecord)
    assert "part-r-00001" in str(restored[3].source) and "key 3" in str(restored[3].source)

    with MapFileReader(str(tmp_path / "dv")) as reader:  # random access, decoded by the caller
        assert decode_datavec_record(reader.get(9)) == RECORDS[1][2]


def test_datavec_parts_read_as_the_other_kind(tmp_path: Path) -> None:
    _datavec_output(tmp_path / "r", [record(double(1.0))], RECORD_CLASS, split=1)
    _datavec_output(tmp_path / "s", [sequence([double(1.0)])], SEQUENCE_CLASS, split=1)
    part_r, part_s = str(tmp_path / "r" / "part-r-00000"), str(tmp_path / "s" / "part-r-00000")
    assert list(MapFilePartsToRecords()(iter([part_r]))) == [[1.0]]
    with pytest.raises(FormatError, match=r"RecordWritable \(records, from MapFileRecordWriter\)"):
        list(MapFilePartsToRecords(sequences=True)(iter([part_r])))
    with pytest.raises(FormatError, match="read as records: use restore_map_file_sequences"):
        list(MapFilePartsToRecords()(iter([part_s])))
    bad = tmp_path / "bad"
    _datavec_output(bad, [record(double(1.0)), record(double(2.0))[:-2]], RECORD_CLASS, split=9)
    with pytest.raises(FormatError, match=r"bad/part-r-00000/data record 1 of the part: at byte"):
        list(MapFilePartsToRecords()(iter([str(bad / "part-r-00000")])))


def test_no_success_marker_is_read_only_for_datavec_parts(tmp_path: Path, sc: object) -> None:
    with MapFileWriter(tmp_path / "sb", split_size=1) as writer:
        writer.write_batch([[1.0], [2.0]])
    (tmp_path / "sb" / "_SUCCESS").unlink()  # a sparkbatch output not yet committed
    with pytest.raises(IncompleteExportError, match=r"no _SUCCESS.*BytesWritable; only DataVec"):
        restore_map_file(sc, str(tmp_path / "sb"))
    # one DataVec part beside a sparkbatch part: not a DataVec output either
    _datavec_output(tmp_path / "dv", [record(double(1.0))], RECORD_CLASS, split=1)
    (tmp_path / "sb" / "part-r-00000").rename(tmp_path / "dv" / "part-r-00001")
    with pytest.raises(IncompleteExportError, match="part-r-00001/data are org.apache.hadoop.io"):
        restore_map_file(sc, str(tmp_path / "dv"))
    (tmp_path / "dv" / "part-r-00001" / "data").unlink()
    with pytest.raises(IncompleteExportError, match="part-r-00001/data is missing"):
        restore_map_file(sc, str(tmp_path / "dv"))
