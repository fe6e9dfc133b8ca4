"""Hadoop SequenceFiles (version 6) written and read without a JVM.

Spark's ``sc.sequenceFile`` and Hadoop's ``SequenceFile.Reader`` read what
:class:`SequenceFileWriter` writes, and :class:`SequenceFileReader` reads what Spark's
``saveAsSequenceFile`` / ``saveAsHadoopFile`` write. The layout (docs/format.md, "Hadoop
SequenceFiles and MapFiles"), as Hadoop's ``org.apache.hadoop.io.SequenceFile`` writes it::

    header   b"SEQ" 0x06, key class name (Text), value class name (Text),
             isCompressed (1 byte), isBlockCompressed (1 byte),
             codec class name (Text, only when compressed),
             metadata (int32 count, then count pairs of Text), 16-byte sync marker
    records  (no or record compression)
             [int32 -1, sync marker]   before a record once SYNC_INTERVAL bytes passed
             int32 record length, int32 key length, key bytes, value bytes
             (record compression: the value bytes are one zlib stream)
    blocks   (block compression)
             int32 -1, sync marker, vint record count,
             then four vint-length-prefixed zlib streams: the keys' vint lengths, the keys,
             the values' vint lengths, the values

All integers are big-endian; "vint" is Hadoop's ``WritableUtils`` zero-compressed encoding and
"Text" is a vint byte count followed by UTF-8. The codec is Hadoop's ``DefaultCodec`` (a zlib
stream with header); files with any other codec are refused with a :class:`FormatError`.

Python values of the Writable classes: ``LongWritable``, ``IntWritable``, ``VLongWritable``,
``VIntWritable``: int; ``Text``: str; ``BytesWritable``: bytes; ``NullWritable``: None;
``BooleanWritable``: bool; ``FloatWritable``, ``DoubleWritable``: float. The reader returns the
raw serialized bytes of every other class; the writer takes raw serialized bytes for them.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import numpy as np

from sparkbatch.errors import FormatError
from sparkbatch.storage.paths import open_output, resolve

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_CODEC",
    "SYNC_INTERVAL",
    "SequenceFileReader",
    "SequenceFileWriter",
    "read_vint",
    "write_vint",
]

MAGIC = b"SEQ"
VERSION = 6  # VERSION_WITH_METADATA: the version Hadoop 0.20 and later write
SYNC_ESCAPE = -1
SYNC_HASH_SIZE = 16
SYNC_SIZE = 4 + SYNC_HASH_SIZE
#: Bytes between sync markers: Hadoop's ``SequenceFile.SYNC_INTERVAL = 5 * 1024 * SYNC_SIZE``
#: (hadoop-common, org/apache/hadoop/io/SequenceFile.java; Hadoop 0.x used ``100 * SYNC_SIZE``).
SYNC_INTERVAL = 5 * 1024 * SYNC_SIZE
#: Uncompressed key + value bytes that close a block: Hadoop's
#: ``io.seqfile.compress.blocksize`` default (IO_SEQFILE_COMPRESS_BLOCKSIZE_DEFAULT).
BLOCK_SIZE = 1_000_000
DEFAULT_CODEC = "org.apache.hadoop.io.compress.DefaultCodec"
_CHUNK = 1 << 20  # read size of sequential reads
_SEEK_CHUNK = 1 << 14  # first read size after a seek (MapFile lookups read a record or two)

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_RECORD_HEAD = struct.Struct(">ii")
_INT_MAX = 2**31 - 1
_COMPRESSIONS = (None, "record", "block")


# ---------------------------------------------------------------- vints (WritableUtils)


def write_vint(value: int) -> bytes:
    """Hadoop's ``WritableUtils.writeVLong`` encoding of ``value`` (1 to 9 bytes).

    Values in [-112, 127] take one byte; otherwise a first byte gives the sign and the count of
    big-endian magnitude bytes that follow (a negative value stores its one's complement).

    Examples
    --------
    >>> write_vint(127), write_vint(128), write_vint(-113)
    (b'\\x7f', b'\\x8f\\x80', b'\\x87p')
    >>> read_vint(write_vint(-(2**63)), 0)
    (-9223372036854775808, 9)
    """
    if -112 <= value <= 127:
        return struct.pack(">b", value)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"vint value {value} is outside the signed 64-bit range")
    first = -112
    if value < 0:
        value = ~value
        first = -120
    size = (value.bit_length() + 7) // 8
    return struct.pack(">b", first - size) + value.to_bytes(size, "big")


def _vint_lengths(lengths: np.ndarray) -> bytes:
    """``lengths`` as vints, one after another (all under 128, the usual case of a block's keys
    and values: one byte each, at once)."""
    if not lengths.size or int(lengths.max()) < 128:
        return lengths.astype(np.uint8).tobytes()
    return b"".join(map(write_vint, lengths.tolist()))


def _split_rows(rows: np.ndarray) -> list[bytes]:
    """The rows of a 2-D uint8 array as bytes objects."""
    blob, width = rows.tobytes(), rows.shape[1]
    if width == 0:
        return [b""] * len(rows)
    return [blob[i : i + width] for i in range(0, len(blob), width)]


class _BlockColumn:
    """The serialized keys (or values) of the block being filled, as byte chunks and their
    items' lengths: a batch joins its items once, and fixed-width rows never become one bytes
    object per item."""

    __slots__ = ("chunks", "lengths")

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.lengths: list[np.ndarray] = []

    def add(self, data: bytes | memoryview, lengths: np.ndarray) -> None:
        self.chunks.append(data)
        self.lengths.append(lengths)

    def take(self) -> tuple[bytes, bytes]:
        """The items' vint lengths and their bytes; empties the column."""
        lengths = np.concatenate(self.lengths) if self.lengths else np.empty(0, np.int64)
        data = b"".join(self.chunks)
        self.chunks, self.lengths = [], []
        return _vint_lengths(lengths), data


def _bytes_and_offsets(items: list[bytes] | np.ndarray) -> tuple[bytes | memoryview, np.ndarray]:
    """The items' bytes one after another, and where each starts (with the end last)."""
    if isinstance(items, np.ndarray):
        n, width = items.shape
        data: bytes | memoryview = memoryview(np.ascontiguousarray(items)).cast("B")
        return data, np.arange(n + 1, dtype=np.int64) * width
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, items), np.int64, len(items)), out=offsets[1:])
    return b"".join(items), offsets


def read_vint(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    """Decode the vint at ``data[offset:]``: ``(value, offset after it)``.

    Raises :class:`IndexError` when ``data`` ends inside the vint.

    Examples
    --------
    >>> read_vint(b"\\x8f\\x80", 0)
    (128, 2)
    """
    first = data[offset]
    if first > 127:
        first -= 256
    if first >= -112:
        return first, offset + 1
    negative = first < -120
    size = (-120 - first) if negative else (-112 - first)  # bytes after the first
    end = offset + 1 + size
    if end > len(data):
        raise IndexError("vint runs past the end of the data")
    value = int.from_bytes(data[offset + 1 : end], "big")
    return (~value if negative else value), end


# ---------------------------------------------------------------- Writable serialization


def _text(value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"a Text value must be a str, got {type(value).__name__}")
    raw = value.encode("utf-8")
    return write_vint(len(raw)) + raw


def _float_of(fmt: str, name: str) -> Callable[[float], bytes]:
    packer = struct.Struct(fmt)

    def encode(value: float) -> bytes:
        if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
            raise TypeError(f"a {name} value must be a number, got {type(value).__name__}")
        try:
            return packer.pack(float(value))
        except (OverflowError, struct.error) as e:
            raise ValueError(f"{value} does not fit a {name}") from e

    return encode


def _boolean(value: bool) -> bytes:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"a BooleanWritable value must be a bool, got {type(value).__name__}")
    return b"\x01" if value else b"\x00"


def _bytes_writable(value: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"a BytesWritable value must be bytes, got {type(value).__name__}")
    raw = bytes(value)
    if len(raw) > _INT_MAX:
        raise ValueError(f"a BytesWritable holds at most {_INT_MAX} bytes, got {len(raw)}")
    return _I32.pack(len(raw)) + raw


def _vint32(value: int) -> bytes:
    if not -(2**31) <= value <= _INT_MAX:
        raise ValueError(f"a VIntWritable holds a 32-bit int, got {value}")
    return write_vint(value)


def _raw(value: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"a value of a class sparkbatch does not decode must be its serialized bytes, "
            f"got {type(value).__name__}"
        )
    return bytes(value)


def _null(value: None) -> bytes:
    if value is not None:
        raise TypeError(f"a NullWritable value must be None, got {type(value).__name__}")
    return b""


def _int_of(pack: Callable[[int], bytes], name: str) -> Callable[[int], bytes]:
    def encode(value: int) -> bytes:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"a {name} value must be an int, got {type(value).__name__}")
        try:
            return pack(value.__index__())
        except struct.error as e:
            raise ValueError(f"{value} does not fit a {name}") from e

    return encode


def _decode_text(data: bytes) -> str:
    n, start = read_vint(data, 0)
    if start + n != len(data):
        raise ValueError(f"a Text of {n} bytes in a {len(data)}-byte field")
    return data[start:].decode("utf-8")


def _decode_bytes(data: bytes) -> bytes:
    if len(data) < 4 or _I32.unpack_from(data)[0] != len(data) - 4:
        raise ValueError(f"a BytesWritable's 4-byte length in a {len(data)}-byte field")
    return data[4:]


def _decode_fixed(fmt: str) -> Callable[[bytes], Any]:
    s = struct.Struct(fmt)

    def decode(data: bytes) -> Any:
        if len(data) != s.size:
            raise ValueError(f"{s.size} bytes, found a {len(data)}-byte field")
        return s.unpack(data)[0]

    return decode


def _decode_vint(data: bytes) -> int:
    value, end = read_vint(data, 0)
    if end != len(data):
        raise ValueError(f"a vint, found a {len(data)}-byte field")
    return value


def _decode_null(data: bytes) -> None:
    if data:
        raise ValueError(f"an empty NullWritable, found {len(data)} bytes")
    return None


_IO = "org.apache.hadoop.io."
#: class name -> (Python value -> serialized bytes, serialized bytes -> Python value)
_WRITABLES: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    _IO + "LongWritable": (_int_of(_I64.pack, "LongWritable"), _decode_fixed(">q")),
    _IO + "IntWritable": (_int_of(_I32.pack, "IntWritable"), _decode_fixed(">i")),
    _IO + "VLongWritable": (_int_of(write_vint, "VLongWritable"), _decode_vint),
    _IO + "VIntWritable": (_int_of(_vint32, "VIntWritable"), _decode_vint),
    _IO + "Text": (_text, _decode_text),
    _IO + "BytesWritable": (_bytes_writable, _decode_bytes),
    _IO + "NullWritable": (_null, _decode_null),
    _IO + "BooleanWritable": (_boolean, _decode_fixed(">?")),
    _IO + "FloatWritable": (_float_of(">f", "FloatWritable"), _decode_fixed(">f")),
    _IO + "DoubleWritable": (_float_of(">d", "DoubleWritable"), _decode_fixed(">d")),
}


def _codec_of(name: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    return _WRITABLES.get(name, (_raw, bytes))


# ---------------------------------------------------------------- writer


class SequenceFileWriter:
    """Write a Hadoop SequenceFile (version 6) that Spark's ``sc.sequenceFile`` reads.

    The file is written under a temporary name and appears under ``url`` only on
    :meth:`close` (see NOTE [atomic writes] in :mod:`sparkbatch.storage.paths`); when the
    ``with`` block raises, nothing is left behind.

    Parameters
    ----------
    url : str or os.PathLike
        fsspec URL or local path of the file.
    key_class, value_class : str
        Java class names of the Writables (see the module docstring for the Python values).
    compression : {None, "record", "block"}
        None: plain records. "record": each value is a zlib stream (Hadoop's DefaultCodec).
        "block": records are buffered and written as zlib-compressed blocks of about
        :data:`BLOCK_SIZE` uncompressed bytes, as Hadoop's BlockCompressWriter does.
    metadata : dict of str to str, optional
        The header's metadata (Hadoop keeps it sorted; so does this writer).
    compression_level : int, default -1
        zlib's level, 1 (fastest) to 9 (smallest); -1 is zlib's default (6), Hadoop's
        ZlibCompressor's. Any level gives streams every reader inflates.
    storage_options : dict, optional
        Keyword arguments for the file system.

    Examples
    --------
    >>> url = "memory://sparkbatch-doc/seq/a.seq"
    >>> with SequenceFileWriter(url, compression="block") as w:
    ...     w.append(0, b"zero")
    ...     w.append_many([1, 2], [b"one", b"two"])
    >>> with SequenceFileReader(url) as r:
    ...     print(r.compression, list(r))
    block [(0, b'zero'), (1, b'one'), (2, b'two')]
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc/seq", recursive=True)
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        key_class: str = _IO + "LongWritable",
        value_class: str = _IO + "BytesWritable",
        *,
        compression: str | None = None,
        metadata: dict[str, str] | None = None,
        storage_options: dict[str, Any] | None = None,
        compression_level: int = -1,
    ) -> None:
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be None, 'record' or 'block', got {compression!r}")
        if isinstance(compression_level, bool) or compression_level not in range(-1, 10):
            raise ValueError(f"compression_level must be -1 to 9, got {compression_level!r}")
        self.compression_level = compression_level
        for name, value in (("key_class", key_class), ("value_class", value_class)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a Java class name, got {value!r}")
        self.url = os.fspath(url)
        self.key_class = key_class
        self.value_class = value_class
        self.compression = compression
        self.metadata = dict(metadata or {})
        for k, v in self.metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata keys and values must be str, got {k!r}: {v!r}")
        self._encode_key = _codec_of(key_class)[0]
        self._encode_value = _codec_of(value_class)[0]
        self.sync = os.urandom(SYNC_HASH_SIZE)
        self._stack = contextlib.ExitStack()
        self._out: IO[bytes] = self._stack.enter_context(
            open_output(self.url, storage_options=storage_options)
        )
        self._pos = 0
        self._last_sync = 0
        self._block_keys = _BlockColumn()
        self._block_values = _BlockColumn()
        self._block_count = 0  # records buffered in the block
        self._block_bytes = 0
        self._closed = False
        try:
            self._write(self._header())
        except BaseException as e:
            self._abort(e)
            raise

    def _header(self) -> bytes:
        parts = [
            MAGIC,
            bytes([VERSION]),
            _text(self.key_class),
            _text(self.value_class),
            b"\x01" if self.compression else b"\x00",
            b"\x01" if self.compression == "block" else b"\x00",
        ]
        if self.compression:
            parts.append(_text(DEFAULT_CODEC))
        # Hadoop's Metadata is a TreeMap of Text: sorted by the keys' UTF-8 bytes.
        items = sorted(self.metadata.items(), key=lambda kv: kv[0].encode("utf-8"))
        parts.append(_I32.pack(len(items)))
        parts.extend(_text(k) + _text(v) for k, v in items)
        parts.append(self.sync)
        return b"".join(parts)

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._pos += len(data)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.url}: the SequenceFileWriter is closed")

    def append(self, key: Any, value: Any) -> None:
        """Append one record (Python values of the key and value classes)."""
        self.append_many((key,), (value,))

    def append_many(self, keys: Iterable[Any], values: Iterable[Any]) -> None:
        """Append records ``zip(keys, values)`` in one call (the fast path for many records).

        ``keys`` and ``values`` must have the same length.
        """
        self._check_open()
        key_bytes = [self._encode_key(k) for k in keys]
        value_bytes = [self._encode_value(v) for v in values]
        if len(key_bytes) != len(value_bytes):
            raise ValueError(f"{len(key_bytes)} keys but {len(value_bytes)} values")
        self._append_encoded(key_bytes, value_bytes)

    def _append_encoded(
        self, key_bytes: list[bytes] | np.ndarray, value_bytes: list[bytes] | np.ndarray
    ) -> list[int]:
        """Append serialized records (a list of bytes each, or a 2-D uint8 array whose rows
        are fixed-width items); return :meth:`tell` as it was before each (for the MapFile
        index in :mod:`sparkbatch.storage.map_file`)."""
        self._check_open()
        if self.compression == "block":
            return self._append_block(key_bytes, value_bytes)
        if isinstance(key_bytes, np.ndarray):
            key_bytes = _split_rows(key_bytes)
        if isinstance(value_bytes, np.ndarray):
            value_bytes = _split_rows(value_bytes)
        if self.compression == "record":
            level = self.compression_level
            value_bytes = [zlib.compress(v, level) for v in value_bytes]
        out: list[bytes] = []
        starts: list[int] = []
        pos, last_sync, sync = self._pos, self._last_sync, self.sync
        escape = _I32.pack(SYNC_ESCAPE) + sync
        try:
            for k, v in zip(key_bytes, value_bytes, strict=True):
                starts.append(pos)
                if pos >= last_sync + SYNC_INTERVAL:  # Hadoop's Writer.checkAndWriteSync
                    out.append(escape)
                    pos += SYNC_SIZE
                    last_sync = pos
                out.append(_RECORD_HEAD.pack(len(k) + len(v), len(k)))
                out.append(k)
                out.append(v)
                pos += 8 + len(k) + len(v)
        except struct.error:
            raise ValueError(
                f"{self.url}: record {len(starts) - 1} of the batch is over 2 GiB, "
                "more than a SequenceFile record holds"
            ) from None
        self._write(b"".join(out))
        self._last_sync = last_sync
        return starts

    def _append_long_bytes(self, keys: np.ndarray, values: list[bytes] | np.ndarray) -> list[int]:
        """Plain records of LongWritable ``keys`` (int64) and BytesWritable ``values`` (their
        bytes, or the rows of a 2-D uint8 array), framed at once: the bytes
        :meth:`_append_encoded` writes for them, sync markers where it puts them, and the same
        starts (for the MapFile index). Rows are framed in one array with their heads, without
        a Python object per record."""
        self._check_open()
        n = len(values)
        rows = values if isinstance(values, np.ndarray) else None
        if rows is not None:
            lengths = np.full(n, rows.shape[1], np.int64)
        else:
            lengths = np.fromiter(map(len, values), np.int64, n)
        if n and int(lengths.max()) > _INT_MAX - 12:
            raise ValueError(
                f"{self.url}: record {int(lengths.argmax())} of the batch is over 2 GiB, more "
                "than a SequenceFile record holds"
            )
        fields = [("length", ">i4"), ("key_length", ">i4"), ("key", ">i8"), ("size", ">i4")]
        if rows is not None:
            fields.append(("value", np.uint8, (rows.shape[1],)))
        heads = np.empty(n, dtype=fields)
        heads["length"] = 12 + lengths  # the key's 8 bytes, the BytesWritable's 4 and its bytes
        heads["key_length"] = 8
        heads["key"] = keys
        heads["size"] = lengths
        if rows is not None:
            heads["value"] = rows
        base = np.empty(n, np.int64)  # each record's start if no sync came between
        base[:1] = self._pos
        np.cumsum(20 + lengths[:-1], out=base[1:])
        base[1:] += self._pos
        starts = base.copy()
        syncs: list[int] = []  # the records a sync marker goes before (Writer.checkAndWriteSync)
        shift, last_sync, i = 0, self._last_sync, 0
        while i < n:
            j = i + int(np.searchsorted(base[i:], last_sync + SYNC_INTERVAL - shift))
            starts[i : j + 1] += shift
            if j >= n:
                break
            syncs.append(j)
            shift += SYNC_SIZE
            last_sync = int(base[j]) + shift
            i = j + 1
        escape = _I32.pack(SYNC_ESCAPE) + self.sync
        if rows is not None:  # the records one after another in heads: cut at the syncs
            framed = memoryview(heads).cast("B")
            size = heads.dtype.itemsize
            cuts = [0, *(j * size for j in syncs), n * size]
            pieces = [framed[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        else:  # heads and values interleaved, joined between the syncs
            blob = heads.tobytes()
            interleaved: list[bytes] = [b""] * (2 * n)
            interleaved[0::2] = [blob[k : k + 20] for k in range(0, 20 * n, 20)]
            interleaved[1::2] = values
            bounds = [0, *syncs, n]
            pieces = [
                b"".join(interleaved[2 * a : 2 * b])
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        for k, piece in enumerate(pieces):
            if k:
                self._write(escape)
            self._write(piece)
        self._last_sync = last_sync
        return starts.tolist()

    def _append_block(
        self, key_bytes: list[bytes] | np.ndarray, value_bytes: list[bytes] | np.ndarray
    ) -> list[int]:
        """Buffer the records, flushing a block after the record that fills it to
        ``BLOCK_SIZE``, as BlockCompressWriter.append (the fill points found at once)."""
        if len(key_bytes) != len(value_bytes):
            raise ValueError(f"{len(key_bytes)} keys but {len(value_bytes)} values")
        keys, key_offsets = _bytes_and_offsets(key_bytes)
        values, value_offsets = _bytes_and_offsets(value_bytes)
        ends = key_offsets[1:] + value_offsets[1:]  # key + value bytes up to each record's end
        starts: list[int] = []
        begin, n = 0, len(ends)
        while begin < n:
            filled = ends[begin:] - (key_offsets[begin] + value_offsets[begin]) + self._block_bytes
            full = int(np.searchsorted(filled, BLOCK_SIZE))  # first record reaching the size
            end = min(n, begin + full + 1)
            starts.extend([self._pos] * (end - begin))
            for column, data, offsets in (
                (self._block_keys, keys, key_offsets),
                (self._block_values, values, value_offsets),
            ):
                column.add(
                    data[offsets[begin] : offsets[end]], np.diff(offsets[begin : end + 1])
                )
            self._block_count += end - begin
            self._block_bytes = int(filled[end - begin - 1])
            if self._block_bytes >= BLOCK_SIZE:
                self._flush_block()
            begin = end
        return starts

    def _flush_block(self) -> None:
        """Write the buffered records as one block: sync, count, four zlib streams."""
        if not self._block_count:
            return
        key_lengths, keys = self._block_keys.take()
        value_lengths, values = self._block_values.take()
        parts = [_I32.pack(SYNC_ESCAPE), self.sync, write_vint(self._block_count)]
        for raw in (key_lengths, keys, value_lengths, values):
            packed = zlib.compress(raw, self.compression_level)
            parts.append(write_vint(len(packed)))
            parts.append(packed)
        self._write(b"".join(parts))
        self._last_sync = self._pos
        self._block_count, self._block_bytes = 0, 0

    def tell(self) -> int:
        """The file length so far, as Hadoop's ``Writer.getLength()``: a position
        :meth:`SequenceFileReader.seek` accepts, from which the next record appended is read
        (it may start with a sync marker; with block compression it is where the block holding
        the next record starts). MapFile indexes store these offsets."""
        self._check_open()
        return self._pos

    def close(self) -> None:
        """Write any buffered block and move the file into place. Closing twice is a no-op."""
        if self._closed:
            return
        try:
            self._flush_block()
        except BaseException as e:
            self._abort(e)
            raise
        self._closed = True
        self._stack.close()

    def _abort(self, error: BaseException) -> None:
        """Drop the temporary file: nothing appears under the target's name."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(error), error, error.__traceback__)

    def __enter__(self) -> SequenceFileWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self._abort(exc)


# ---------------------------------------------------------------- reader


class _Input:
    """A file of ``size`` bytes read through a buffer of up to 1 MiB; ``take(n)`` returns the
    next ``n`` bytes. Lengths read from a hostile file are checked against ``size`` before any
    read, so a huge one never allocates."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f = f
        self.size = size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.i = 0  # index into buf
        self.chunk = _CHUNK  # bytes read at a time: small after a seek, growing while sequential

    @property
    def offset(self) -> int:
        return self.base + self.i

    def seek(self, offset: int) -> None:
        if self.base <= offset <= self.base + len(self.buf):
            self.i = offset - self.base
            return
        self.f.seek(offset)
        self.buf, self.base, self.i = b"", offset, 0
        self.chunk = _SEEK_CHUNK

    def _fill(self, n: int) -> bool:
        """Make ``n`` bytes available at ``i``; False if the file ends first."""
        rest = self.buf[self.i :]
        more = self.f.read(max(n - len(rest), self.chunk))
        self.chunk = min(2 * self.chunk, _CHUNK)
        self.base += self.i
        self.buf, self.i = rest + more, 0
        while len(self.buf) < n and more:
            more = self.f.read(n - len(self.buf))
            self.buf += more
        return len(self.buf) >= n

    def at_end(self) -> bool:
        return self.base + self.i >= self.size

    def take(self, n: int) -> bytes | None:
        """The next ``n`` bytes, or None if the file has fewer left (nothing consumed then)."""
        j = self.i + n
        if self.base + j > self.size:
            return None
        if j > len(self.buf) and not self._fill(n):
            return None
        j = self.i + n
        data = self.buf[self.i : j]
        self.i = j
        return data

    def vint(self) -> int | None:
        head = self.take(1)
        if head is None:
            return None
        first = head[0] - 256 if head[0] > 127 else head[0]
        if first >= -112:
            return first
        size = (-120 - first) if first < -120 else (-112 - first)
        rest = self.take(size)
        if rest is None:
            return None
        return read_vint(head + rest, 0)[0]


class SequenceFileReader:
    """Read a Hadoop SequenceFile: iteration yields ``(key, value)`` Python values.

    Reads versions 4 to 6 with no, record or block compression and Hadoop's DefaultCodec.
    Iterating starts at the first record, or where :meth:`seek` put the reader.

    Attributes
    ----------
    key_class, value_class : str
        Java class names from the header.
    compression : {None, "record", "block"}
    codec : str or None
        The codec class name (None when not compressed).
    metadata : dict of str to str
    sync : bytes
        The 16-byte sync marker.

    Raises
    ------
    FormatError
        Not a SequenceFile, truncated, corrupt (bad sync marker, bad zlib data, a length that
        does not fit) or compressed with another codec; the message names the file and the byte
        offset.
    """

    def __init__(
        self, url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.url = os.fspath(url)
        fs, path = resolve(self.url, storage_options)
        self._file = fs.open(path, "rb")
        try:
            self._in = _Input(self._file, fs.size(path))
            self._read_header()
        except BaseException:
            self._file.close()
            raise
        self._decode_key = _codec_of(self.key_class)[1]
        self._decode_value = _codec_of(self.value_class)[1]

    def _fail(self, offset: int, expected: str) -> FormatError:
        return FormatError(f"{self.url}: at byte {offset}: expected {expected}")

    def _need(self, n: int, what: str) -> bytes:
        offset = self._in.offset
        data = self._in.take(n)
        if data is None:
            raise self._fail(offset, f"{what} ({n} bytes), found the end of the file")
        return data

    def _need_vint(self, what: str) -> int:
        offset = self._in.offset
        value = self._in.vint()
        if value is None:
            raise self._fail(offset, f"{what} (a vint), found the end of the file")
        return value

    def _need_text(self, what: str) -> str:
        offset = self._in.offset
        n = self._need_vint(what)
        if n < 0:
            raise self._fail(offset, f"{what} (a Text), found a length of {n}")
        raw = self._need(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._fail(offset, f"{what} in UTF-8 ({e})") from None

    def _read_header(self) -> None:
        head = self._need(4, "the SequenceFile magic b'SEQ' and a version")
        if head[:3] != MAGIC:
            raise self._fail(0, f"the SequenceFile magic b'SEQ', found {head[:3]!r}")
        version = head[3]
        if not 4 <= version <= VERSION:
            raise self._fail(3, f"SequenceFile version 4 to {VERSION}, found {version}")
        self.version = version
        self.key_class = self._need_text("the key class name")
        self.value_class = self._need_text("the value class name")
        offset = self._in.offset
        compressed, block = self._need(2, "the compression flags")
        if compressed > 1 or block > 1 or (block and not compressed):
            raise self._fail(offset, f"compression flags, found {compressed} and {block}")
        self.compression = ("block" if block else "record") if compressed else None
        self.codec: str | None = None
        if compressed:
            offset = self._in.offset
            self.codec = DEFAULT_CODEC if version < 5 else self._need_text("the codec class")
            if self.codec != DEFAULT_CODEC:
                raise self._fail(
                    offset,
                    f"the codec {DEFAULT_CODEC} (zlib), found {self.codec}: sparkbatch reads "
                    "no other codec; rewrite the file with DefaultCodec or no compression",
                )
        self.metadata: dict[str, str] = {}
        if version >= 6:
            offset = self._in.offset
            (count,) = _I32.unpack(self._need(4, "the metadata count"))
            if count < 0:
                raise self._fail(offset, f"a metadata count, found {count}")
            for _ in range(count):
                key = self._need_text("a metadata key")
                self.metadata[key] = self._need_text("a metadata value")
        self.sync = self._need(SYNC_HASH_SIZE, "the sync marker")
        self.header_end = self._in.offset

    def seek(self, offset: int) -> None:
        """Continue reading at ``offset``: a record, sync marker or block start, such as
        :meth:`SequenceFileWriter.tell` or a MapFile index gave (Hadoop's ``Reader.seek``)."""
        if not isinstance(offset, int) or offset < self.header_end:
            raise ValueError(f"{self.url}: cannot seek to {offset!r}, before the first record")
        self._in.seek(offset)

    def tell(self) -> int:
        """The byte offset the reader is at (inside a block with block compression: the offset
        after the block last read)."""
        return self._in.offset

    def _check_sync(self, offset: int) -> None:
        marker = self._need(SYNC_HASH_SIZE, "the sync marker")
        if marker != self.sync:
            raise self._fail(offset + 4, "the file's sync marker, found other bytes (corrupt)")

    def _inflate(self, data: bytes, offset: int, what: str, limit: int = _INT_MAX) -> bytes:
        """``data`` inflated; never more than ``limit`` bytes (what the stream must hold, or a
        Java array's most), so that a decompression bomb fails instead of filling memory."""
        limit = min(limit, _INT_MAX)  # a block's lengths may sum past what zlib can be asked for
        try:
            z = zlib.decompressobj()
            out = z.decompress(data, limit + 1)
            if len(out) > limit:
                raise self._fail(
                    offset,
                    f"{what} of at most {limit} bytes, found a zlib stream that inflates to more "
                    "(corrupt, or a decompression bomb)",
                )
            if not z.eof:
                raise zlib.error("the zlib stream is incomplete")
            return out
        except zlib.error as e:
            raise self._fail(offset, f"{what} as a zlib stream ({e})") from None

    def _decode(self, offset: int, key: bytes, value: bytes) -> tuple[Any, Any]:
        try:
            k = self._decode_key(key)
        except (ValueError, IndexError, struct.error) as e:
            raise self._fail(offset, f"a {self.key_class} key: {e}") from None
        try:
            v = self._decode_value(value)
        except (ValueError, IndexError, struct.error) as e:
            raise self._fail(offset, f"a {self.value_class} value: {e}") from None
        return k, v

    def _value(self, offset: int, value: bytes) -> Any:
        try:
            return self._decode_value(value)
        except (ValueError, IndexError, struct.error) as e:
            raise self._fail(offset, f"a {self.value_class} value: {e}") from None

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        if self.compression == "block":
            return self._blocks()
        return self._records()

    def values(self) -> Iterator[Any]:
        """The values alone, in order, from where the reader is: iteration without decoding
        the keys (a map file's are the records' indexes, which a restore does not need)."""
        if self.compression == "block":
            return self._blocks(with_keys=False)
        return self._records(keys=False)

    def _records(self, keys: bool = True) -> Iterator[Any]:
        source = self._in
        record = self.compression == "record"
        unpack_from = _RECORD_HEAD.unpack_from
        while source.base + source.i < source.size:
            offset = source.base + source.i
            if source.i + 8 > len(source.buf) and not source._fill(8):
                raise self._fail(offset, "a record's lengths (8 bytes), found the end of the file")
            length, key_length = unpack_from(source.buf, source.i)
            if length == SYNC_ESCAPE:
                source.i += 4
                self._check_sync(offset)
                continue
            if length < 0 or not 0 <= key_length <= length:
                raise self._fail(
                    offset, f"a record length and key length, found {length} and {key_length}"
                )
            source.i += 8
            if offset + 8 + length > source.size or (
                source.i + length > len(source.buf) and not source._fill(length)
            ):
                raise self._fail(
                    offset + 8, f"a record of {length} bytes, found the end of the file"
                )
            buf, i = source.buf, source.i
            source.i = i + length
            value = buf[i + key_length : i + length]
            if record:
                value = self._inflate(value, offset + 8 + key_length, "a compressed value")
            if keys:
                yield self._decode(offset, buf[i : i + key_length], value)
            else:
                yield self._value(offset, value)

    def _buffer(self, what: str, limit: int) -> bytes:
        offset = self._in.offset
        n = self._need_vint(f"the length of the {what}")
        if n < 0:
            raise self._fail(offset, f"the length of the {what}, found {n}")
        return self._inflate(self._need(n, f"the {what}"), offset, f"the {what}", limit)

    def _lengths(self, data: bytes, count: int, offset: int, what: str) -> list[int]:
        if len(data) == count and (not data or max(data) < 128):  # one byte each: at once
            return list(data)
        lengths, i = [], 0
        try:
            for _ in range(count):
                n, i = read_vint(data, i)
                if n < 0:
                    raise ValueError(f"a negative length {n}")
                lengths.append(n)
        except (IndexError, ValueError) as e:
            raise self._fail(offset, f"{count} {what} in the block ({e})") from None
        if i != len(data):
            raise self._fail(offset, f"{count} {what} filling their buffer, found extra bytes")
        return lengths

    def _split(self, data: bytes, lengths: list[int], offset: int, what: str) -> list[bytes]:
        if sum(lengths) != len(data):
            raise self._fail(
                offset, f"{what} of {sum(lengths)} bytes in all, found {len(data)} bytes"
            )
        out, i = [], 0
        for n in lengths:
            out.append(data[i : i + n])
            i += n
        return out

    def _blocks(self, with_keys: bool = True) -> Iterator[Any]:
        source = self._in
        while not source.at_end():
            offset = source.offset
            (escape,) = _I32.unpack(self._need(4, "a block's sync escape"))
            if escape != SYNC_ESCAPE:
                raise self._fail(offset, f"a block's sync escape -1, found {escape}")
            self._check_sync(offset)
            count = self._need_vint("a block's record count")
            if count < 0:
                raise self._fail(offset + SYNC_SIZE, f"a record count, found {count}")
            most = min(9 * count, _INT_MAX)  # vints of 1 to 9 bytes each
            key_lengths = self._lengths(
                self._buffer("key lengths", most), count, offset, "key lengths"
            )
            block_keys = self._split(
                self._buffer("keys", sum(key_lengths)), key_lengths, offset, "keys"
            )
            value_lengths = self._lengths(
                self._buffer("value lengths", most), count, offset, "value lengths"
            )
            values = self._split(
                self._buffer("values", sum(value_lengths)), value_lengths, offset, "values"
            )
            if not with_keys:
                for v in values:
                    yield self._value(offset, v)
                continue
            for k, v in zip(block_keys, values, strict=True):
                yield self._decode(offset, k, v)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> SequenceFileReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
