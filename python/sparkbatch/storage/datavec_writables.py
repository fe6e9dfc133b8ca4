"""DataVec-written map file values, decoded without a JVM.

DataVec's ``MapFileRecordWriter`` and ``MapFileSequenceRecordWriter`` store each record as a
value of :data:`RECORD_CLASS` or :data:`SEQUENCE_CLASS` (keys ``LongWritable``). Their bytes, as
the Java writes them (docs/format.md, "DataVec-written map files"; all integers big-endian)::

    RecordWritable          int32 n, then n typed values
    SequenceRecordWritable  int32 steps; when steps > 0: int32 values per step, then
                            steps x values-per-step typed values, step by step
    typed value             int16 type (WritableType's ordinal), then the Writable's write()

``WritableFactory.writeWithType`` writes the type; the types and their payloads
(``org.datavec.api.writable``): 0 Boolean (1 byte), 1 Byte (int8), 2 Double (float64),
3 Float (float32), 4 Int (int32), 5 Long (int64), 6 Null (nothing), 7 Text (Hadoop vint byte
count, UTF-8), 8 NDArray (a version byte, then ``Nd4j.write``: the shape-info and data buffers),
11 Bytes (the bare bytes, no length). 9 (Image) and 10 (Arrow) are not registered with DataVec's
``WritableFactory``: DataVec cannot read them back, nor can we.

Python values: Boolean ``bool``; Byte, Int, Long ``int``; Double, Float ``float``; Null
``None``; Text ``str``; NDArray a numpy array of its shape and dtype (``None`` for DataVec's null
array); Bytes ``bytes``. DataVec writes a BytesWritable without its length (and its own
``WritableFactory`` reads type 11 back as a one-byte ByteWritable), so only a Bytes value that
ends the record or sequence can be delimited: elsewhere it is a :class:`FormatError`.

A record or sequence whose values all have payloads of one size (all Double and Long, all Float
and Int, all Boolean and Byte, all Null: the usual numeric CSV record) is a fixed-stride array:
up to 256 values of one type are checked and read by one cached ``struct`` call, wider ones by a
few numpy calls over the whole array. Other records (Text, the usual record of a CSV written
without ``convertTextTo``) are read value by value.

Examples
--------
>>> import struct
>>> data = struct.pack(">i", 2) + struct.pack(">hd", 2, 1.5) + struct.pack(">hd", 2, -3.0)
>>> decode_datavec_record(data)
[1.5, -3.0]
>>> decode_datavec_record(struct.pack(">ihqhb", 3, 5, 7, 7, 2) + b"hi" + struct.pack(">h", 6))
[7, 'hi', None]
>>> decode_datavec_sequence(struct.pack(">iihfhf", 2, 1, 3, 0.5, 3, 2.5))
[[0.5], [2.5]]
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import numpy as np

from sparkbatch.errors import FormatError
from sparkbatch.storage.sequence_file import read_vint

__all__ = [
    "DATAVEC_CLASSES",
    "RECORD_CLASS",
    "SEQUENCE_CLASS",
    "WRITABLE_TYPES",
    "decode_datavec_record",
    "decode_datavec_sequence",
]

_PACKAGE = "org.datavec.hadoop.records.reader.mapfile.record."
RECORD_CLASS = _PACKAGE + "RecordWritable"
"""The value class of DataVec's ``MapFileRecordWriter``."""
SEQUENCE_CLASS = _PACKAGE + "SequenceRecordWritable"
"""The value class of DataVec's ``MapFileSequenceRecordWriter``."""
DATAVEC_CLASSES = (RECORD_CLASS, SEQUENCE_CLASS)

WRITABLE_TYPES = (
    "Boolean", "Byte", "Double", "Float", "Int", "Long", "Null", "Text", "NDArray", "Image",
    "Arrow", "Bytes",
)  # fmt: skip
"""DataVec's ``WritableType`` in ordinal order: index = the type short written before a value."""

_BOOLEAN, _BYTE, _DOUBLE, _FLOAT, _INT, _LONG, _NULL, _TEXT, _NDARRAY, _IMAGE, _ARROW, _BYTES = (
    range(12)
)
#: type -> big-endian numpy dtype of its fixed payload (Null: no payload)
_FIXED: dict[int, str | None] = {
    _BOOLEAN: "u1",
    _BYTE: "i1",
    _DOUBLE: ">f8",
    _FLOAT: ">f4",
    _INT: ">i4",
    _LONG: ">i8",
    _NULL: None,
}
#: payload size -> the types of that size (a record of them is a fixed-stride array)
_BY_SIZE: dict[int, tuple[int, ...]] = {
    0: (_NULL,),
    1: (_BOOLEAN, _BYTE),
    4: (_FLOAT, _INT),
    8: (_DOUBLE, _LONG),
}
#: type -> the struct that reads its payload alone (the value-by-value path)
_STRUCTS = {
    _BOOLEAN: struct.Struct(">?"),
    _BYTE: struct.Struct(">b"),
    _DOUBLE: struct.Struct(">d"),
    _FLOAT: struct.Struct(">f"),
    _INT: struct.Struct(">i"),
    _LONG: struct.Struct(">q"),
}
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")

# ---------------------------------------------------------------- NDArrayWritable (nd4j)
# NDArrayWritable.write: one byte, 0 (a null array, nothing follows) or 1, then Nd4j.write: the
# shape-info buffer, then the data buffer, each as BaseDataBuffer.write writes it: the
# allocation mode's name and the data type's name as Java writeUTF (uint16 length, ASCII here),
# the element count between them (int32 for the legacy modes, int64 since LONG_SHAPE), then the
# elements big-endian.
_LEGACY_MODES = ("DIRECT", "HEAP", "JAVACPP")
_MODES = (*_LEGACY_MODES, "LONG_SHAPE", "MIXED_DATA_TYPES")
_ND4J_DTYPES = {
    "DOUBLE": ">f8",
    "FLOAT": ">f4",
    "HALF": ">f2",
    "LONG": ">i8",
    "INT": ">i4",
    "SHORT": ">i2",
    "BYTE": "i1",
    "UBYTE": "u1",
    "BOOL": "u1",
}
#: the legacy writer (int32 counts) wrote DOUBLE, INT and HALF as such and every other type as
#: float32
_LEGACY_DTYPES = {"DOUBLE": ">f8", "INT": ">i4", "HALF": ">f2", "FLOAT": ">f4"}
_MAX_RANK = 32  # nd4j's limit


class _Reader:
    """A DataVec value read front to back; every read checks that its bytes are there."""

    __slots__ = ("data", "pos", "source", "what")

    def __init__(self, data: bytes, source: str | None, what: str) -> None:
        self.data, self.pos, self.source, self.what = data, 0, source, what

    def fail(self, expected: str, at: int | None = None) -> FormatError:
        where = f" in {self.source}" if self.source else ""
        at = self.pos if at is None else at
        return FormatError(
            f"DataVec {self.what}{where}: at byte {at} of {len(self.data)}: expected {expected}"
        )

    def need(self, n: int, what: str) -> int:
        """The position of the next ``n`` bytes, which are consumed."""
        start, end = self.pos, self.pos + n
        if n < 0 or end > len(self.data):
            raise self.fail(f"{what} ({n} bytes), found the end of the value")
        self.pos = end
        return start

    def int32(self, what: str) -> int:
        return int(_I32.unpack_from(self.data, self.need(4, what))[0])

    def utf(self, what: str) -> str:
        """A Java ``writeUTF`` string (uint16 length, then modified UTF-8; ASCII names here)."""
        (n,) = _U16.unpack_from(self.data, self.need(2, f"the length of {what}"))
        raw = self.data[self.need(n, what) : self.pos]
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"{what} in ASCII, found {raw[:20]!r}", self.pos - n) from None

    def count(self, what: str) -> int:
        n = self.int32(what)
        if n < 0:
            raise self.fail(f"{what}, found {n}", self.pos - 4)
        return n

    def values(self, n: int) -> list[Any]:
        """``n`` typed values: by one struct call when all have one fixed type, by one numpy
        pass when there are many whose payloads have one size, else one by one."""
        start = self.pos
        rest = len(self.data) - start
        if n and rest % n == 0 and rest // n - 2 in _BY_SIZE:
            if n <= _UNIFORM_MAX:  # numpy's calls cost more than a small record's values
                fast = _uniform(self.data, start, n)
            else:
                fast = self._fixed(n, rest // n - 2)
            if fast is not None:
                self.pos = len(self.data)
                return fast
        return self._walk(n)

    def _walk(self, n: int) -> list[Any]:
        """``n`` values one by one: Text (with a one-byte length) and fixed payloads inline,
        the rest through :meth:`value`."""
        data, end, out = self.data, len(self.data), []
        append, structs = out.append, _STRUCTS
        pos = self.pos
        for i in range(n):
            if pos + 3 <= end and data[pos] == 0:  # types 0 to 11: a first byte of 0
                kind, head = data[pos + 1], data[pos + 2]
                if kind == _TEXT and head < 128:
                    stop = pos + 3 + head
                    if stop <= end:
                        try:
                            append(data[pos + 3 : stop].decode("utf-8"))
                            pos = stop
                            continue
                        except UnicodeDecodeError:
                            pass  # value() reports it
                elif kind == _NULL:
                    append(None)
                    pos += 2
                    continue
                else:
                    fixed = structs.get(kind)
                    if fixed is not None and pos + 2 + fixed.size <= end:
                        append(fixed.unpack_from(data, pos + 2)[0])
                        pos += 2 + fixed.size
                        continue
            self.pos = pos
            append(self.value(i == n - 1))
            pos = self.pos
        self.pos = pos
        return out

    def _fixed(self, n: int, size: int) -> list[Any] | None:
        """The rest of the value as ``n`` values of ``size``-byte payloads, or None when their
        types say otherwise (the value-by-value path then reports the place)."""
        rows = np.frombuffer(self.data, np.uint8, n * (2 + size), self.pos).reshape(n, 2 + size)
        types = rows[:, :2].copy().view(">i2").ravel()
        kinds = _BY_SIZE[size]
        first = int(types[0])
        if first not in kinds:
            return None
        if (types == first).all():
            present = [first]
        else:
            present = np.unique(types).tolist()
            if not set(present) <= set(kinds):
                return None
        if first == _NULL:
            return [None] * n
        payload = rows[:, 2:]
        if len(present) == 1:
            return _payload_values(payload, first)
        out = np.empty(n, dtype=object)
        for kind in present:
            mask = types == kind
            out[mask] = _payload_values(payload[mask], kind)
        result: list[Any] = out.tolist()
        return result

    def value(self, last: bool) -> Any:
        """One typed value; ``last``: it ends the DataVec value (a Bytes payload may)."""
        data = self.data
        at = self.need(2, "a value's type (int16)")
        (kind,) = _I16.unpack_from(data, at)
        fixed = _STRUCTS.get(kind)
        if fixed is not None:
            (value,) = fixed.unpack_from(data, self.need(fixed.size, f"a {WRITABLE_TYPES[kind]}"))
            return value
        if kind == _NULL:
            return None
        if kind == _TEXT:
            return self.text()
        if kind == _NDARRAY:
            return self.ndarray()
        if kind == _BYTES:
            if not last:
                raise self.fail(
                    "a value DataVec can delimit, found a BytesWritable (type 11) before other "
                    "values: DataVec writes its bytes without a length (and reads type 11 back as "
                    "a one-byte ByteWritable), so only one that ends the value can be read",
                    at,
                )
            start = self.pos
            self.pos = len(data)
            return data[start:]
        if kind in (_IMAGE, _ARROW):
            raise self.fail(
                f"a Writable type DataVec's WritableFactory reads, found {kind} "
                f"({WRITABLE_TYPES[kind]}Writable, which it does not register: DataVec cannot "
                "read this value back either)",
                at,
            )
        raise self.fail(f"a Writable type 0 to 11 (DataVec's WritableType), found {kind}", at)

    def text(self) -> str:
        at = self.pos
        try:
            n, start = read_vint(self.data, at)
        except IndexError:
            raise self.fail("a Text's length (a vint), found the end of the value") from None
        if n < 0:
            raise self.fail(f"a Text's length, found {n}", at)
        self.pos = start
        raw = self.data[self.need(n, "a Text's UTF-8 bytes") : self.pos]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"a Text in UTF-8 ({e.reason})", start) from None

    def ndarray(self) -> np.ndarray | None:
        at = self.pos
        header = self.data[self.need(1, "an NDArrayWritable's version byte")]
        if header == 0:
            return None
        if header != 1:
            raise self.fail(f"an NDArrayWritable's version byte 0 or 1, found {header}", at)
        info_at = self.pos
        info_array = self.buffer("the shape info")
        if info_array.dtype.kind != "i":
            raise self.fail(f"an nd4j shape info of INT or LONG values, found {info_array.dtype}")
        info = info_array.tolist()
        rank = info[0] if info else -1
        if not 0 <= rank <= _MAX_RANK or len(info) != 2 * rank + 4:
            raise self.fail(
                f"an nd4j shape info of 2 x rank + 4 values (rank 0 to {_MAX_RANK}), found "
                f"{len(info)} values starting {info[:3]}",
                info_at,
            )
        shape, strides, order = info[1 : 1 + rank], info[1 + rank : 1 + 2 * rank], info[-1]
        if min(shape + strides, default=0) < 0 or order not in (ord("c"), ord("f")):
            raise self.fail(
                f"an nd4j shape info with sizes and strides >= 0 and order 'c' or 'f', found "
                f"shape {shape}, strides {strides}, order {order}",
                info_at,
            )
        data_at = self.pos
        flat = self.buffer("the array's data")
        extent = (
            0 if 0 in shape else 1 + sum((s - 1) * d for s, d in zip(shape, strides, strict=True))
        )
        # nd4j writes a view's copy: never fewer values than the shape holds (a stride of 0
        # over a huge shape would otherwise make a tiny value decode to terabytes)
        if math.prod(shape) > flat.size or extent > flat.size:
            raise self.fail(
                f"{math.prod(shape)} values for an array of shape {shape} and strides "
                f"{strides}, found {flat.size}",
                data_at,
            )
        try:
            view = np.lib.stride_tricks.as_strided(
                flat, shape, [d * flat.itemsize for d in strides], writeable=False
            )
            array = view.astype(flat.dtype.newbyteorder("="), order="C")
        except (ValueError, OverflowError, MemoryError) as e:  # a stride past numpy's range
            raise self.fail(f"an array of shape {shape} ({e})", data_at) from None
        return array

    def buffer(self, what: str) -> np.ndarray:
        """An nd4j data buffer as ``BaseDataBuffer.write`` writes it, as a read-only array."""
        at = self.pos
        mode = self.utf(f"the allocation mode of {what}")
        if mode not in _MODES:
            raise self.fail(f"an nd4j allocation mode {_MODES} for {what}, found {mode!r}", at)
        legacy = mode in _LEGACY_MODES
        if legacy:
            n = self.count(f"the element count of {what} (int32)")
        else:
            n = int(struct.unpack_from(">q", self.data, self.need(8, f"the count of {what}"))[0])
            if n < 0:
                raise self.fail(f"the element count of {what}, found {n}", self.pos - 8)
        name_at = self.pos
        name = self.utf(f"the data type of {what}")
        dtype = (_LEGACY_DTYPES if legacy else _ND4J_DTYPES).get(name)
        if dtype is None:
            raise self.fail(
                f"an nd4j data type sparkbatch reads ({', '.join(_ND4J_DTYPES)}) for {what}, "
                f"found {name!r} (NDArrayWritable values of other types, compressed ones "
                "included, are not supported)",
                name_at,
            )
        itemsize = np.dtype(dtype).itemsize
        start = self.need(n * itemsize, f"{n} {name} values of {what}")
        flat = np.frombuffer(self.data, dtype, n, start)
        return flat != 0 if name == "BOOL" else flat


#: type -> struct code of its payload, for records of one type read by one cached struct
_CODES = {_BOOLEAN: "?", _BYTE: "b", _DOUBLE: "d", _FLOAT: "f", _INT: "i", _LONG: "q"}
_UNIFORM_MAX = 256  # values of the widest record read by one struct (numpy beyond)


@functools.lru_cache(maxsize=1024)
def _uniform_struct(kind: int, n: int) -> struct.Struct:
    return struct.Struct(">" + ("h" + _CODES[kind]) * n)


def _uniform(data: bytes, start: int, n: int) -> list[Any] | None:
    """``data[start:]`` as ``n`` values all of one fixed type, by one cached struct call (a
    small record's numpy calls cost more than the values), or None."""
    if n > _UNIFORM_MAX or start + 2 > len(data) or data[start] != 0:
        return None
    kind = data[start + 1]
    code = _CODES.get(kind)
    if code is None or len(data) - start != n * (2 + _STRUCTS[kind].size):
        return None
    items = _uniform_struct(kind, n).unpack_from(data, start)
    if items[0::2].count(kind) != n:
        return None
    return list(items[1::2])


def _payload_values(payload: np.ndarray, kind: int) -> list[Any]:
    """The values of the ``[n, size]`` uint8 payloads of type ``kind``, as Python values."""
    if kind == _BOOLEAN:  # Java's readBoolean: any byte but 0 is true
        flags: list[Any] = (payload[:, 0] != 0).tolist()
        return flags
    values: list[Any] = np.ascontiguousarray(payload).view(_FIXED[kind]).ravel().tolist()
    return values


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


def decode_datavec_record(
    data: bytes | bytearray | memoryview, source: str | None = None
) -> list[Any]:
    """The record in the bytes of one DataVec ``RecordWritable``.

    Parameters
    ----------
    data : bytes-like
        One value of a map file whose value class is :data:`RECORD_CLASS`.
    source : str, optional
        Names the value in errors (the file and key).

    Returns
    -------
    list
        The record's values as Python values (see the module docstring).

    Raises
    ------
    FormatError
        ``data`` is truncated, has bytes left over, or holds a value this reader cannot
        delimit or decode; the message names ``source``, the byte offset and what was expected.

    Examples
    --------
    >>> decode_datavec_record(b"\\x00\\x00\\x00\\x01\\x00\\x02", source="part-r-00000/data key 3")
    Traceback (most recent call last):
    ...
    sparkbatch.errors.FormatError: DataVec RecordWritable in part-r-00000/data key 3: at byte 6 \
of 6: expected a Double (8 bytes), found the end of the value
    """
    data = _as_bytes(data)
    n = int.from_bytes(data[:4], "big", signed=True)
    if 0 < n <= _UNIFORM_MAX:  # the usual record: numbers of one type
        values = _uniform(data, 4, n)
        if values is not None:
            return values
    reader = _Reader(data, source, "RecordWritable")
    n = reader.count("the value count (int32)")
    if n > len(reader.data) // 2:  # every value has a 2-byte type
        raise reader.fail(f"{n} values of at least 2 bytes each, found the end of the value", 0)
    values = reader.values(n)
    if reader.pos != len(reader.data):
        raise reader.fail(f"the end of the record after {n} values")
    return values


def decode_datavec_sequence(
    data: bytes | bytearray | memoryview, source: str | None = None
) -> list[list[Any]]:
    """The sequence in the bytes of one DataVec ``SequenceRecordWritable``: a list of steps,
    each a list of values. Arguments and errors: :func:`decode_datavec_record`.

    Examples
    --------
    >>> decode_datavec_sequence(b"\\x00\\x00\\x00\\x00")
    []
    """
    reader = _Reader(_as_bytes(data), source, "SequenceRecordWritable")
    steps = reader.count("the step count (int32)")
    if steps == 0:
        if reader.pos != len(reader.data):
            raise reader.fail("the end of an empty sequence")
        return []
    width = reader.count("the values per step (int32)")
    if width == 0:
        raise reader.fail(f"at least one value per step of {steps} steps, found 0", 4)
    n = steps * width
    if n > len(reader.data) // 2:
        raise reader.fail(
            f"{steps} steps of {width} values of at least 2 bytes each, found the end of the value",
            0,
        )
    values = reader.values(n)
    if reader.pos != len(reader.data):
        raise reader.fail(f"the end of the sequence after {steps} steps of {width} values")
    return [values[i : i + width] for i in range(0, n, width)]
