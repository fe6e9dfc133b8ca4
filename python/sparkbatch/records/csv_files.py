"""What a file given as CSV really is, told from its first bytes.

A directory of CSV files often holds something else too: a compressed copy, an image, a
spreadsheet, a UTF-16 export from Excel. Parsed as CSV, such a file gives errors about its
"columns" that say nothing of the cause. Every CSV reader of sparkbatch looks at the first
``HEAD_BYTES`` bytes of each file once (after decompression, for names that fsspec decompresses:
``.gz``, ``.bz2``, ``.xz``, ``.zip``) and raises :class:`~sparkbatch.errors.CsvError` naming the
file and what it holds. A UTF-8 byte order mark is valid CSV: readers drop it.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import lzma
import os
import zipfile
import zlib
from collections.abc import Iterator

from fsspec.utils import compressions, infer_compression

from sparkbatch.errors import CsvError

__all__ = [
    "HEAD_BYTES",
    "UTF8_BOM",
    "check_head",
    "decompression_error",
    "describe_head",
]

HEAD_BYTES = 1024  # bytes looked at
UTF8_BOM = b"\xef\xbb\xbf"

_BINARY_SHARE = 0.3  # more control bytes and bytes that are not UTF-8 than this: not text
_CONTROL = bytes(set(range(32)) - set(b"\t\n\r\f\v\x1b")) + b"\x7f"

# Compressed data: (magic, what it is, the extension that makes fsspec decompress it).
_COMPRESSED = [
    (b"\x1f\x8b", "gzip-compressed data", ".gz"),
    (b"BZh", "bzip2-compressed data", ".bz2"),
    (b"\xfd7zXZ\x00", "xz-compressed data", ".xz"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", ".zst"),
    (b"PK\x03\x04", "a zip archive", ".zip"),
]
_ZIP = "a zip archive"
# Other binary formats, named when the head is binary.
_FORMATS = [
    (b"PAR1", "a Parquet file"),
    (b"ORC", "an ORC file"),
    (b"Obj\x01", "an Avro file"),
    (b"SEQ", "a Hadoop SequenceFile"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"\xd0\xcf\x11\xe0", "an OLE2 document (an old Excel .xls workbook is one)"),
]
_TO_UTF8 = "convert it to UTF-8 (e.g. iconv -f {} -t UTF-8)"


def describe_head(head: bytes) -> str | None:
    """What ``head`` (the first bytes of a file) holds if it is not UTF-8 text with LF or CRLF
    line ends, and how to fix it; None for text that a CSV reader can read.

    Examples
    --------
    >>> describe_head(b"a,b\\n1,2\\n") is None, describe_head(b"\\xef\\xbb\\xbfa,b\\n") is None
    (True, True)
    >>> describe_head("a,b\\n".encode("utf-16"))
    'UTF-16 text (little-endian, with a byte order mark): convert it to UTF-8 (e.g. iconv ...)'
    >>> describe_head(b"\\x89PNG\\r\\n\\x1a\\n\\x00\\x00\\x00\\rIHDR")
    'a PNG image (binary data: a NUL byte at offset 8)'
    """
    for bom, what, codec in (
        (b"\xff\xfe\x00\x00", "UTF-32 text (little-endian, with a byte order mark)", "UTF-32"),
        (b"\x00\x00\xfe\xff", "UTF-32 text (big-endian, with a byte order mark)", "UTF-32"),
        (b"\xff\xfe", "UTF-16 text (little-endian, with a byte order mark)", "UTF-16"),
        (b"\xfe\xff", "UTF-16 text (big-endian, with a byte order mark)", "UTF-16"),
    ):
        if head.startswith(bom):
            return f"{what}: {_TO_UTF8.format(codec)}"
    for magic, what, _ in _COMPRESSED:
        if head.startswith(magic) and (magic != b"BZh" or _binary(head)):  # "BZh" may be text
            return what
    pairs = head[: len(head) // 2 * 2]
    if len(pairs) >= 4:
        even, odd = pairs[0::2], pairs[1::2]
        for zeros, other, order, codec in ((odd, even, "little", "LE"), (even, odd, "big", "BE")):
            if zeros.count(0) >= 0.75 * len(zeros) and other.count(0) <= 0.25 * len(other):
                what = f"UTF-16 text ({order}-endian, no byte order mark)"
                return f"{what}: {_TO_UTF8.format('UTF-16' + codec)}"
    binary = _binary(head)
    if binary is not None:
        for magic, what in _FORMATS:
            if head.startswith(magic):
                return f"{what} (binary data: {binary})"
        if len(head) >= 10 and head[8:10] == b'{"':
            return f"a safetensors file, such as a sparkbatch minibatch (binary data: {binary})"
        return f"binary data ({binary})"
    first_cr, first_lf = head.find(b"\r"), head.find(b"\n")
    if first_lf < 0 and 0 <= first_cr < len(head) - 1:
        return (
            "lines that end in CR alone (classic Mac OS line ends): sparkbatch reads LF or CRLF "
            "line ends; convert them (e.g. tr '\\r' '\\n')"
        )
    return None


def _binary(head: bytes) -> str | None:
    """Why ``head`` is not text (a NUL byte; too many control bytes or bytes that are not
    UTF-8), or None."""
    nul = head.find(0)
    if nul >= 0:
        return f"a NUL byte at offset {nul}"
    control = len(head) - len(head.translate(None, _CONTROL))
    decoded = codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=False)
    invalid = decoded.count("\ufffd")
    if head and control + invalid > _BINARY_SHARE * len(head):
        return (
            f"{control + invalid} of the first {len(head)} bytes are control characters "
            "or not UTF-8"
        )
    return None


def decompression_error(
    source: str, error: BaseException, line: int | None = None
) -> CsvError | None:
    """The :class:`CsvError` for ``error``, raised while ``source`` was read, if ``source`` is
    a compressed file (by its name) and ``error`` says that its data is corrupt or truncated;
    None for every other error, such as a missing file or a failed read, which must reach the
    caller as it is.

    Examples
    --------
    >>> print(decompression_error("a.csv.gz", EOFError("Compressed file ended before the end")))
    a.csv.gz: expected complete compressed data, found a corrupt or truncated file (EOFError: ...
    >>> decompression_error("a.csv.gz", FileNotFoundError("a.csv.gz")) is None
    True
    >>> decompression_error("a.csv", EOFError("ended early")) is None
    True
    """
    if infer_compression(source) is None or not _corrupt(error):
        return None
    where = source if line is None else f"{source}, near line {line}"
    found = f"{type(error).__name__}: {error}"
    return CsvError(
        f"{where}: expected complete compressed data, found a corrupt or truncated file ({found})",
        source=source,
        line=line,
        text=found,
        expected="complete compressed data",
    )


@contextlib.contextmanager
def reading(source: str, *, line: int | None = None) -> Iterator[None]:
    """Read from ``source`` inside the block: corrupt or truncated compressed data becomes
    :func:`decompression_error`'s CsvError (the original chained), any other error stays as it
    is. ``line`` is where the reading had got to, if known."""
    try:
        yield
    except Exception as e:
        error = decompression_error(source, e, line=line)
        if error is None:
            raise
        raise error from e


def text_start(source: str, head: bytes) -> int:
    """:func:`check_head` on a file's first bytes, then where its text starts: past a UTF-8
    byte order mark, which is valid CSV and dropped."""
    check_head(source, head[:HEAD_BYTES])
    return len(UTF8_BOM) if head.startswith(UTF8_BOM) else 0


def _corrupt(error: BaseException) -> bool:
    """Whether ``error`` is what a decompressor raises for corrupt or truncated data."""
    # bz2's "Invalid data stream" is a plain OSError without an errno; a storage failure is a
    # subclass (FileNotFoundError, PermissionError, ...) or has an errno, and is never this
    if type(error) is OSError:
        return error.errno is None
    corrupt = (gzip.BadGzipFile, EOFError, lzma.LZMAError, zlib.error, zipfile.BadZipFile)
    return isinstance(error, corrupt)


def check_head(source: str, head: bytes) -> None:
    """Raise :class:`CsvError` naming ``source`` if ``head`` (its first bytes, decompressed)
    is not CSV text (:func:`describe_head`).

    Examples
    --------
    >>> check_head("data/a.csv", b"1,2\\n")
    >>> check_head("data/x.csv", b"\\x1f\\x8b\\x08\\x00")
    Traceback (most recent call last):
    ...
    sparkbatch.errors.CsvError: data/x.csv, line 1: expected UTF-8 CSV text, found gzip-...
    """
    what = describe_head(head[:HEAD_BYTES])
    if what is None:
        return
    name = os.path.basename(source.rstrip("/"))
    if what == _ZIP and name.lower().endswith((".xlsx", ".xlsm")):
        what = "an Excel workbook (a zip archive): save it as CSV"
    for _, compressed, extension in _COMPRESSED:
        if what == compressed:
            if extension.lstrip(".") in compressions and not name.endswith(extension):
                what += f": name it {name}{extension} to have it decompressed"
            else:
                what += ": decompress it first"
    raise CsvError(
        f"{source}, line 1: expected UTF-8 CSV text, found {what}",
        source=source,
        line=1,
        text=head[:16].decode("latin-1"),
        expected="UTF-8 CSV text",
    )
