"""The record encoding of map files: one record (or one sequence record) as the bytes of a
Hadoop ``BytesWritable``.

A record is a list of values: ``float``, ``int``, ``bool``, ``None``, ``str``, ``bytes`` and
numpy arrays (an image ``[c, h, w]`` uint8, say); numpy scalars are stored as the Python number
they equal. A sequence record is a list of per-step records. :func:`encode_record` /
:func:`decode_record` and :func:`encode_sequence` / :func:`decode_sequence` convert them.

NOTE [record encoding]: byte for byte in ``docs/format.md`` ("Record encoding in map files").
Every value starts with 4 bytes: ``b"sb"``, the version (1) and the kind. Records of numbers
only, the usual case (CSV), are one little-endian float64 or int64 array (kinds ``d``, ``q``);
sequences whose steps are such records of one width are one ``[steps, width]`` array (kinds
``D``, ``Q``). Other records (kind ``r``) store one tag byte per value, then all their floats
as one float64 array, all their ints and bools as one int64 array, the byte lengths of their
strings and bytes as one uint32 array followed by the bytes, then each array with its dtype and
shape. So a record is encoded and decoded by a few numpy calls, not by one call per value.
Foreign or damaged bytes are a :class:`~sparkbatch.errors.FormatError` saying what was
expected and, where given, naming the value (``source``).

Examples
--------
>>> import numpy as np
>>> data = encode_record([1.5, 2.0, 0.0])
>>> data[:4], len(data)
(b'sb\\x01d', 28)
>>> decode_record(data)
[1.5, 2.0, 0.0]
>>> decode_record(encode_record([np.zeros((1, 2, 2), np.uint8), 3, "cat", None]))
[array([[[0, 0],
        [0, 0]]], dtype=uint8), 3, 'cat', None]
>>> decode_sequence(encode_sequence([[1.0, 2.0], [3.0, 4.0]]))
[[1.0, 2.0], [3.0, 4.0]]
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from sparkbatch import _native
from sparkbatch.errors import FormatError

__all__ = [
    "MAGIC",
    "VERSION",
    "decode_record",
    "decode_sequence",
    "encode_float_rows",
    "encode_record",
    "encode_records",
    "encode_sequence",
    "is_sequence_encoding",
]

MAGIC = b"sb"
"""The first two bytes of every encoded value."""
VERSION = 1
"""The version this module writes and reads (the third byte)."""

_HEAD = len(MAGIC) + 2
_FLOAT, _INT, _BOOL, _NONE, _STR, _BYTES, _ARRAY = (ord(c) for c in "dq?nsba")
_RECORD_KINDS = b"dqr"
_SEQUENCE_KINDS = b"DQs"
_U32 = struct.Struct("<I")
_U32x2 = struct.Struct("<II")
_MAX_U32 = 0xFFFFFFFF

_TAGS: dict[type, int] = {
    float: _FLOAT,
    int: _INT,
    bool: _BOOL,
    type(None): _NONE,
    str: _STR,
    bytes: _BYTES,
    bytearray: _BYTES,
    memoryview: _BYTES,
    np.ndarray: _ARRAY,
    np.bool_: _BOOL,
}
for _t in (np.float16, np.float32, np.float64, np.longdouble):
    _TAGS[_t] = _FLOAT
for _t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
    _TAGS[_t] = _INT
_NUMBER_TYPES = {t for t, tag in _TAGS.items() if tag in (_FLOAT, _INT)}
_FLOAT_TYPES = {t for t, tag in _TAGS.items() if tag == _FLOAT}
_PREFIX = MAGIC + bytes((VERSION,))
_SMALL = 256  # records of up to this many numbers are packed by one cached struct call
_STRUCTS: dict[tuple[str, int], struct.Struct] = {}


_FLOATS_HEAD = _PREFIX + b"d"
_FLOAT_UNPACKERS = {  # by the length of the encoded record
    _HEAD + 8 * count: struct.Struct(f"<{count}d") for count in range(_SMALL + 1)
}


def _packer(code: str, count: int) -> struct.Struct:
    """The cached ``struct.Struct`` of ``count`` little-endian numbers (``d`` or ``q``): one
    call packs or unpacks a whole small record, cheaper than numpy's per-call overhead."""
    key = (code, count)
    packer = _STRUCTS.get(key)
    if packer is None:
        packer = _STRUCTS[key] = struct.Struct(f"<{count}{code}")
    return packer


def _tag_of(value: Any) -> int:
    """The tag of a value whose exact type is not in ``_TAGS`` (a subclass)."""
    for cls, tag in _TAGS.items():
        if isinstance(value, cls) and cls is not int:
            return tag
    if isinstance(value, int):
        return _INT
    raise TypeError(
        f"a record value must be a float, int, bool, None, str, bytes or numpy array, got "
        f"{type(value).__name__}: {value!r:.80}"
    )


def _tags(values: Sequence[Any]) -> bytes:
    try:
        return bytes(map(_TAGS.__getitem__, map(type, values)))
    except KeyError:
        return bytes(map(_tag_of, values))


def _int64(values: list[Any]) -> np.ndarray:
    try:
        return np.array(values, dtype="<i8")
    except OverflowError:
        big = next(v for v in values if not -(2**63) <= int(v) < 2**63)
        raise ValueError(f"the int {big} does not fit the encoding's int64") from None


def _body(record: Sequence[Any]) -> bytes:
    """The kind byte and the body of one record."""
    types = set(map(type, record))
    if not types or types <= _FLOAT_TYPES:
        if len(record) <= _SMALL:
            return b"d" + _packer("d", len(record)).pack(*record)
        return b"d" + np.array(record, dtype="<f8").tobytes()
    if types <= _NUMBER_TYPES and not types & _FLOAT_TYPES:
        return b"q" + _int64(list(record)).tobytes()
    tags = _tags(record)
    if len(tags) > _MAX_U32:
        raise ValueError(f"a record holds at most {_MAX_U32} values, got {len(tags)}")
    codes = np.frombuffer(tags, np.uint8)
    parts = [b"r", _U32.pack(len(tags)), tags]

    def picked(*which: int) -> list[Any]:
        mask = np.isin(codes, which) if len(which) > 1 else codes == which[0]
        return list(itertools.compress(record, mask.tolist()))

    parts.append(np.array(picked(_FLOAT), dtype="<f8").tobytes())
    parts.append(_int64(picked(_INT, _BOOL)).tobytes())
    texts = picked(_STR, _BYTES)
    if texts:
        blobs = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
        parts.append(np.fromiter(map(len, blobs), "<u4", len(blobs)).tobytes())
        parts.extend(blobs)
    for array in picked(_ARRAY):
        if array.dtype.hasobject or array.dtype.names is not None:
            raise TypeError(f"arrays of dtype {array.dtype} cannot be encoded (numbers only)")
        descr = array.dtype.str.encode("ascii")
        parts += [bytes((len(descr),)), descr, bytes((array.ndim,))]
        parts.append(np.array(array.shape, dtype="<u8").tobytes())
        parts.append(np.ascontiguousarray(array).tobytes())
    return b"".join(parts)


def encode_record(record: Sequence[Any]) -> bytes:
    """The bytes of one record (NOTE [record encoding] in this module).

    Parameters
    ----------
    record : sequence
        Floats, ints, bools, None, str, bytes and numpy arrays (not of objects).

    Raises
    ------
    TypeError
        A value of another type (a nested list: use :func:`encode_sequence` for sequences).
    ValueError
        An int beyond int64.

    Examples
    --------
    >>> encode_record([1, 2])
    b'sb\\x01q\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
    """
    return MAGIC + bytes((VERSION,)) + _body(record)


def encode_float_rows(records: Sequence[Sequence[Any]]) -> np.ndarray | None:
    """The encodings of ``records`` as the rows of one uint8 array, where every record is a
    list or tuple of Python floats and all have one width (CSV's, the usual batch); else None.

    Row ``i`` holds ``encode_record(records[i])``; the batch is laid out by one native pass,
    without a Python object per record or value, so that writers can frame it whole.

    Examples
    --------
    >>> rows = encode_float_rows([[1.0, 2.0], [3.0, 4.0]])
    >>> rows.shape, rows[1].tobytes() == encode_record([3.0, 4.0])
    ((2, 20), True)
    >>> encode_float_rows([[1.0, 2]]) is None  # an int: another encoding
    True
    """
    batch = records if isinstance(records, list) else list(records)
    rows: np.ndarray | None = _native.pack_float_records(batch, _FLOATS_HEAD)
    return rows


def encode_records(records: Sequence[Sequence[Any]]) -> list[bytes]:
    """``[encode_record(r) for r in records]``, faster for a batch of float-only records of one
    width (CSV's): the batch is laid out by :func:`encode_float_rows`, then cut.

    Examples
    --------
    >>> encode_records([[1.0, 2.0], [3.0, 4.0]]) == [encode_record([1.0, 2.0]),
    ...                                              encode_record([3.0, 4.0])]
    True
    """
    rows = encode_float_rows(records)
    if rows is None:
        return list(map(encode_record, records))
    blob, size = rows.tobytes(), rows.shape[1]
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def encode_sequence(sequence: Sequence[Sequence[Any]]) -> bytes:
    """The bytes of one sequence record: a list of per-step records.

    Steps that are all numbers of one kind and width are stored as one ``[steps, width]``
    array; other sequences store each step's record body after a table of their lengths.

    Examples
    --------
    >>> len(encode_sequence([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))  # 4 + 8 + 6 * 8
    60
    """
    steps = len(sequence)
    if steps > _MAX_U32:
        raise ValueError(f"a sequence holds at most {_MAX_U32} steps, got {steps}")
    head = MAGIC + bytes((VERSION,))
    widths = set(map(len, sequence))
    if len(widths) <= 1:
        width = widths.pop() if widths else 0
        types = set(map(type, itertools.chain.from_iterable(sequence)))
        if not types or types <= _FLOAT_TYPES:
            array = np.array(sequence, dtype="<f8").reshape(steps, width)
            return head + b"D" + _U32x2.pack(steps, width) + array.tobytes()
        if types <= _NUMBER_TYPES and not types & _FLOAT_TYPES:
            values = list(itertools.chain.from_iterable(sequence))
            array = _int64(values)
            return head + b"Q" + _U32x2.pack(steps, width) + array.tobytes()
    bodies = [_body(step) for step in sequence]
    lengths = np.fromiter(map(len, bodies), "<u4", steps).tobytes()
    return b"".join([head, b"s", _U32.pack(steps), lengths, *bodies])


class _Cursor:
    """Reads a value's bytes front to back, checking that each part is there."""

    __slots__ = ("data", "pos", "source")

    def __init__(self, data: bytes | memoryview, pos: int, source: str | None) -> None:
        self.data, self.pos, self.source = data, pos, source

    def fail(self, expected: str) -> FormatError:
        where = f" in {self.source}" if self.source else ""
        return FormatError(
            f"encoded record{where}: expected {expected} at byte {self.pos}, but the value has "
            f"{len(self.data)} bytes (truncated or not written by this encoding)"
        )

    def take(self, n: int, what: str) -> bytes | memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise self.fail(f"{n} bytes of {what}")
        part = self.data[self.pos : end]
        self.pos = end
        return part

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        return np.frombuffer(self.take(size, what), dtype=dtype, count=count)

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])


def _check_head(data: bytes | memoryview, source: str | None, kinds: bytes, what: str) -> int:
    where = f" {source}" if source else ""
    if len(data) < _HEAD or bytes(data[:2]) != MAGIC:
        raise FormatError(
            f"value{where} is not a sparkbatch {what}: expected the bytes {MAGIC!r} then a version "
            f"and a kind, found {bytes(data[:8])!r} (a map file written by another program?)"
        )
    if data[2] != VERSION:
        raise FormatError(
            f"value{where}: record encoding version {data[2]}, this sparkbatch reads version "
            f"{VERSION} (written by a newer sparkbatch?)"
        )
    kind = data[3]
    if kind not in kinds:
        other = "sequence record" if kind in _SEQUENCE_KINDS else "record"
        if kind in _SEQUENCE_KINDS + _RECORD_KINDS:
            raise FormatError(
                f"value{where} holds a {other}, expected a {what} (a sequence map file read as "
                f"records, or the other way round?)"
            )
        raise FormatError(f"value{where}: unknown record kind {bytes((kind,))!r}")
    return kind


def _decode_body(cur: _Cursor, kind: int, end: int) -> list[Any]:
    """The record whose kind byte was just read and whose body ends at ``end``."""
    if kind in (ord("d"), ord("q")):
        size = end - cur.pos
        if size % 8:
            raise cur.fail(f"a whole number of 8-byte numbers up to byte {end}")
        dtype = "<f8" if kind == ord("d") else "<i8"
        values: list[Any] = cur.array(dtype, size // 8, "numbers").tolist()
        return values
    if kind != ord("r"):
        raise cur.fail(f"a record kind (one of {_RECORD_KINDS!r}), found {bytes((kind,))!r}")
    n = cur.u32("the value count")
    tags = np.frombuffer(cur.take(n, "the value tags"), np.uint8)
    bad = ~np.isin(tags, (_FLOAT, _INT, _BOOL, _NONE, _STR, _BYTES, _ARRAY))
    if bad.any():
        raise cur.fail(f"value tags (one of b'dq?nsba'), found {bytes(tags[bad][:1])!r}")
    out = np.empty(n, dtype=object)
    floats = np.flatnonzero(tags == _FLOAT)
    out[floats] = cur.array("<f8", len(floats), "floats").tolist()
    ints = np.flatnonzero((tags == _INT) | (tags == _BOOL))
    ints_values = cur.array("<i8", len(ints), "ints").tolist()
    out[ints] = ints_values
    bools = np.flatnonzero(tags == _BOOL)
    if len(bools):
        out[bools] = [bool(v) for v in out[bools]]
    texts = np.flatnonzero((tags == _STR) | (tags == _BYTES))
    if len(texts):
        lengths = cur.array("<u4", len(texts), "text lengths").astype(np.int64)
        blob = bytes(cur.take(int(lengths.sum()), "text bytes"))
        ends = np.cumsum(lengths).tolist()
        pieces = list(map(blob.__getitem__, map(slice, [0, *ends[:-1]], ends)))
        is_str = (tags[texts] == _STR).tolist()
        try:
            out[texts] = [
                p.decode("utf-8") if s else p for p, s in zip(pieces, is_str, strict=True)
            ]
        except UnicodeDecodeError as e:
            raise cur.fail(f"UTF-8 text ({e.reason})") from None
    for i in np.flatnonzero(tags == _ARRAY).tolist():
        descr = bytes(cur.take(cur.take(1, "an array's dtype length")[0], "an array's dtype"))
        try:
            dtype = np.dtype(descr.decode("ascii"))
        except (TypeError, ValueError, UnicodeDecodeError):
            raise cur.fail(f"a numpy dtype, found {descr!r}") from None
        if dtype.hasobject:
            raise cur.fail(f"a numeric dtype, found {descr!r}")
        ndim = cur.take(1, "an array's rank")[0]
        shape = tuple(cur.array("<u8", ndim, "an array's shape").tolist())
        # Python ints: a hostile shape's product overflows int64 (np.prod wraps to 0).
        count = math.prod(shape)
        if dtype.itemsize == 0 or count * dtype.itemsize > len(cur.data) - cur.pos:
            raise cur.fail(f"{count} values of {dtype.str} for an array of shape {shape}")
        try:
            values = cur.array(dtype.str, count, "an array's values").reshape(shape)
        except ValueError as e:  # a dimension numpy refuses (a 0 beside one over 2^63)
            raise cur.fail(f"an array of shape {shape} ({e})") from None
        out[i] = values.copy()
    if cur.pos != end:
        raise cur.fail(f"the end of the record at byte {end}")
    result: list[Any] = out.tolist()
    return result


def decode_record(data: bytes | bytearray | memoryview, source: str | None = None) -> list[Any]:
    """The record :func:`encode_record` encoded in ``data``.

    Floats and ints come back as Python numbers, arrays as writable numpy arrays of the
    dtype and shape written.

    Parameters
    ----------
    data : bytes-like
        One encoded value (a map file's ``BytesWritable``).
    source : str, optional
        Names the value in errors (the file and key).

    Raises
    ------
    FormatError
        ``data`` is not an encoded record (foreign bytes, a sequence record, a newer version,
        truncated); the message says what was expected.

    Examples
    --------
    >>> decode_record(b"not a record", source="part-r-00000/data key 7")
    Traceback (most recent call last):
    ...
    sparkbatch.errors.FormatError: value part-r-00000/data key 7 is not a sparkbatch record: \
expected the bytes b'sb' then a version and a kind, found b'not a re' (a map file written by \
another program?)
    """
    if type(data) is bytes and data.startswith(_FLOATS_HEAD):  # the usual record: floats only
        packer = _FLOAT_UNPACKERS.get(len(data))
        if packer is not None:
            return list(packer.unpack_from(data, _HEAD))
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    kind = _check_head(view, source, _RECORD_KINDS, "record")
    return _decode_body(_Cursor(view, _HEAD, source), kind, len(view))


def decode_sequence(
    data: bytes | bytearray | memoryview, source: str | None = None
) -> list[list[Any]]:
    """The sequence record :func:`encode_sequence` encoded in ``data``: a list of steps.

    Raises :class:`~sparkbatch.errors.FormatError` as :func:`decode_record` does.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    kind = _check_head(view, source, _SEQUENCE_KINDS, "sequence record")
    cur = _Cursor(view, _HEAD, source)
    if kind in (ord("D"), ord("Q")):
        steps, width = _U32x2.unpack(cur.take(8, "the steps and the width"))
        array = cur.array("<f8" if kind == ord("D") else "<i8", steps * width, "the steps")
        if cur.pos != len(view):
            raise cur.fail(f"the end of the sequence at byte {cur.pos}")
        steps_list: list[list[Any]] = array.reshape(steps, width).tolist()
        return steps_list
    steps = cur.u32("the step count")
    lengths = cur.array("<u4", steps, "the step lengths").tolist()
    result = []
    for length in lengths:
        end = cur.pos + length
        if length < 1 or end > len(view):
            raise cur.fail(f"a step of {length} bytes")
        kind = cur.take(1, "a step's kind")[0]
        result.append(_decode_body(cur, kind, end))
    if cur.pos != len(view):
        raise cur.fail(f"the end of the sequence at byte {cur.pos}")
    return result


def is_sequence_encoding(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` holds an encoded sequence record (else a record or foreign bytes).

    >>> is_sequence_encoding(encode_sequence([[1.0]])), is_sequence_encoding(encode_record([1.0]))
    (True, False)
    """
    return len(data) >= _HEAD and bytes(data[:2]) == MAGIC and data[3] in _SEQUENCE_KINDS
