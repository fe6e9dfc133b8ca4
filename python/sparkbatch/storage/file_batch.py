"""FileBatch: many small files (images) in one zip archive, in DL4J's layout.

DL4J's ``org.nd4j.api.loader.FileBatch``: a minibatch of raw files (JPEG, PNG, ...) kept in their
own compact encoding and stored as one archive, so that a worker reads one object per minibatch
instead of one per image from remote storage.

NOTE [FileBatch layout]: the archive's first entry is ``originalUris.txt``, the files' original
URIs in UTF-8 joined by ``"\\n"``; then entry ``file_<i>.<ext>`` holds file ``i`` (from 0),
``<ext>`` being the extension of its URI (the text after the last ``.`` of its last path
segment, as commons-io's ``FilenameUtils.getExtension`` has it) or ``bin`` where it has none.
Readers map entries back by the index in the name, not by their order. sparkbatch deflates the URI
list and stores the files uncompressed (they are compressed already); DL4J deflates everything.
Java's ``ZipInputStream`` reads both: a stored entry's sizes are in its local header (the archive
is built in memory, so Python's zipfile never needs a data descriptor).

NOTE [hostile archives]: :meth:`FileBatch.read_zip` reads archives from anywhere and never
extracts to disk. Every entry name must be exactly ``originalUris.txt`` or
``file_<index>.<ext>`` (no directories, ``..``, absolute names or other files), each once; the
indices must be ``0 .. n-1`` with ``n`` the number of URIs; only stored and deflated entries
without encryption are read. Limits: ``max_entries`` entries, ``max_total_bytes`` uncompressed
bytes in all (checked against the headers first, then again while inflating), and for entries
over 1 MiB at most ``max_ratio`` uncompressed bytes per compressed byte (smaller entries cannot
be bombs, and flat images legitimately deflate far better than 100:1). An archive larger than
the limits allow is refused before it is parsed. Every problem is a
:class:`~sparkbatch.errors.FormatError` that names the archive.
"""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sparkbatch.errors import FormatError
from sparkbatch.storage.paths import is_local, open_output, read_bytes, resolve

__all__ = ["ORIGINAL_URIS", "FileBatch", "entry_name"]

ORIGINAL_URIS = "originalUris.txt"
_EXTENSION = re.compile(r"[^./\\\x00-\x1f\x7f]+")
_ENTRY = re.compile(r"file_(0|[1-9][0-9]{0,8})\.(" + _EXTENSION.pattern + ")")
_RATIO_FLOOR = 1 << 20  # entries up to this size are exempt from the ratio limit
_ENTRY_OVERHEAD = 1024  # per entry: local and central headers, names, extra fields
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


def _extension(uri: str) -> str:
    """The extension DL4J gives file ``uri``'s entry: after the last ``.`` of the last path
    segment, or ``bin``."""
    name = re.split(r"[/\\]", uri)[-1]
    dot = name.rfind(".")
    extension = name[dot + 1 :] if dot >= 0 else ""
    return extension if _EXTENSION.fullmatch(extension) else "bin"


def entry_name(index: int, uri: str) -> str:
    """The archive entry of file ``index`` whose original URI is ``uri`` (NOTE [FileBatch
    layout]).

    Examples
    --------
    >>> entry_name(0, "file:///data/cat/img0.JPG"), entry_name(7, "s3://bucket/raw/README")
    ('file_0.JPG', 'file_7.bin')
    """
    return f"file_{index}.{_extension(uri)}"


def _as_uri(url: str) -> str:
    """``url`` as the URI a FileBatch stores: plain local paths become absolute ``file://``
    URLs; fsspec URLs stay as they are."""
    if "://" in url or "::" in url or url.startswith("file:"):
        return url
    return "file://" + os.path.abspath(url)


class FileBatch:
    """A minibatch of raw files: their bytes and their original URIs, in order.

    DL4J's ``FileBatch``. Iterating gives ``(uri, bytes)`` pairs; :meth:`write_zip` and
    :meth:`read_zip` store and load it as a zip archive in DL4J's layout (NOTE [FileBatch layout]),
    so archives made by either side read on the other.

    Parameters
    ----------
    files : sequence of bytes
        The files' contents (``bytearray`` and ``memoryview`` are copied to ``bytes``).
    original_uris : sequence of str
        One URI per file; used for the entries' extensions and by label generators (a parent
        directory's name). None may be empty or hold a newline (the list is newline-joined).

    Examples
    --------
    >>> batch = FileBatch([b"\\x89PNG...", b"GIF89a..."], ["memory://img/cat/0.png", "dog/1.gif"])
    >>> len(batch), batch.original_uris[1]
    (2, 'dog/1.gif')
    >>> batch.write_zip("memory://filebatch-doc/batch.zip")
    >>> FileBatch.read_zip("memory://filebatch-doc/batch.zip") == batch
    True
    >>> [uri for uri, data in batch]
    ['memory://img/cat/0.png', 'dog/1.gif']
    >>> import fsspec; fsspec.filesystem("memory").rm("/filebatch-doc", recursive=True)
    """

    __slots__ = ("files", "original_uris")
    __hash__ = None  # type: ignore[assignment]  # mutable lists inside

    def __init__(self, files: Sequence[bytes], original_uris: Sequence[str]) -> None:
        if isinstance(files, (bytes, bytearray, memoryview, str)) or isinstance(
            original_uris, (bytes, str)
        ):
            raise TypeError(
                "files and original_uris must be sequences (one item per file), got "
                f"{type(files).__name__} and {type(original_uris).__name__}"
            )
        contents = list(files)
        uris = list(original_uris)
        if len(contents) != len(uris):
            raise ValueError(
                f"a FileBatch needs one URI per file: got {len(contents)} file(s) and "
                f"{len(uris)} URI(s)"
            )
        for i, data in enumerate(contents):
            if isinstance(data, (bytearray, memoryview)):
                contents[i] = bytes(data)
            elif not isinstance(data, bytes):
                raise TypeError(f"files[{i}] must be bytes, got {type(data).__name__}")
        for i, uri in enumerate(uris):
            if not isinstance(uri, str):
                raise TypeError(f"original_uris[{i}] must be a str, got {type(uri).__name__}")
            if not uri or "\n" in uri:
                raise ValueError(
                    f"original_uris[{i}] must be a non-empty URI without a newline (the archive "
                    f"stores the URIs one per line), got {uri!r}"
                )
        self.files: list[bytes] = contents
        self.original_uris: list[str] = uris

    @classmethod
    def from_files(
        cls,
        urls: Iterable[str | os.PathLike[str]],
        *,
        storage_options: dict[str, Any] | None = None,
    ) -> FileBatch:
        """Read files into a FileBatch (DL4J's ``FileBatch.forFiles``).

        The URIs stored are the URLs given, plain local paths made absolute ``file://`` URLs
        (DL4J stores ``java.io.File.toURI()``, ``file:/...``, with special characters
        percent-encoded; sparkbatch keeps the form fsspec opens).

        Examples
        --------
        >>> from sparkbatch.storage import open_output
        >>> with open_output("memory://filebatch-doc/cat/0.png") as f:
        ...     _ = f.write(b"png bytes")
        >>> FileBatch.from_files(["memory://filebatch-doc/cat/0.png"])
        FileBatch(1 file, 9 bytes: memory://filebatch-doc/cat/0.png)
        >>> import fsspec; fsspec.filesystem("memory").rm("/filebatch-doc", recursive=True)
        """
        names = [os.fspath(u) for u in urls]
        data = [read_bytes(u, storage_options=storage_options) for u in names]
        return cls(data, [_as_uri(u) for u in names])

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return zip(self.original_uris, self.files, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileBatch):
            return NotImplemented
        return self.original_uris == other.original_uris and self.files == other.files

    def __repr__(self) -> str:
        n = len(self.files)
        shown = ", ".join(self.original_uris[:3]) + (", ..." if n > 3 else "")
        size = sum(len(f) for f in self.files)
        files = f"{n} file{'' if n == 1 else 's'}, {size:,} bytes"
        return f"FileBatch({files}: {shown})" if n else f"FileBatch({files})"

    def to_zip_bytes(self) -> bytes:
        """The archive in DL4J's layout (NOTE [FileBatch layout]), as bytes.

        The entries carry a fixed timestamp (1980-01-01), so equal batches give equal bytes.
        """
        buffer = io.BytesIO()  # seekable: sizes go into the local headers, as Java's reader needs
        with zipfile.ZipFile(buffer, "w") as archive:
            text = "\n".join(self.original_uris).encode("utf-8")
            archive.writestr(_info(ORIGINAL_URIS, zipfile.ZIP_DEFLATED), text)
            for i, (uri, data) in enumerate(self):
                archive.writestr(_info(entry_name(i, uri), zipfile.ZIP_STORED), data)
        return buffer.getvalue()

    def write_zip(
        self,
        url: str | os.PathLike[str],
        *,
        storage_options: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        """Write the archive to ``url`` atomically (NOTE [atomic writes] in
        :mod:`sparkbatch.storage.paths`): readers never see a partial archive.

        Raises
        ------
        FileExistsError
            ``overwrite`` is False and ``url`` exists.
        """
        data = self.to_zip_bytes()
        with open_output(url, storage_options=storage_options, overwrite=overwrite) as f:
            f.write(data)

    @classmethod
    def read_zip(
        cls,
        source: str | os.PathLike[str] | bytes | bytearray | memoryview,
        *,
        storage_options: dict[str, Any] | None = None,
        name: str | None = None,
        max_total_bytes: int = 1 << 30,
        max_entries: int = 10_000,
        max_ratio: float = 100,
    ) -> FileBatch:
        """Read an archive in DL4J's layout, written by sparkbatch or DL4J.

        Safe on archives from anywhere (NOTE [hostile archives]): nothing is extracted, entry
        names are checked, and the limits below bound the memory and time a bad archive costs.

        Parameters
        ----------
        source : str, os.PathLike or bytes
            URL or local path of the archive, or its bytes.
        storage_options : dict, optional
            Keyword arguments for the file system.
        name : str, optional
            What errors call an archive given as bytes (default "the archive bytes").
        max_total_bytes : int, default 1 GiB
            The most uncompressed bytes in all entries together.
        max_entries : int, default 10,000
            The most entries.
        max_ratio : float, default 100
            The most uncompressed bytes per compressed byte of an entry over 1 MiB.

        Raises
        ------
        FormatError
            Not a zip archive, truncated or corrupt, an entry that does not belong to a
            FileBatch, missing or duplicate indices, or a limit exceeded; the message names the
            archive and the problem.
        FileNotFoundError
            No file at ``source``.

        Examples
        --------
        >>> data = FileBatch([b"abc"], ["file:///data/a.jpg"]).to_zip_bytes()
        >>> FileBatch.read_zip(data).files
        [b'abc']
        >>> FileBatch.read_zip(data[:-10], name="a.zip")
        Traceback (most recent call last):
        sparkbatch.errors.FormatError: a.zip: a truncated or corrupt zip archive (File is not \
a zip file)
        """
        for argument, value in (("max_total_bytes", max_total_bytes), ("max_entries", max_entries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{argument} must be an int >= 0, got {value!r}")
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or max_ratio <= 0:
            raise ValueError(f"max_ratio must be a number > 0, got {max_ratio!r}")
        bound = max_total_bytes + max_total_bytes // 64 + (max_entries + 1) * _ENTRY_OVERHEAD
        data, where = _read_source(source, storage_options, name, bound)
        if len(data) > bound:
            raise FormatError(
                f"{where}: the archive is over {bound:,} bytes, more than its limits allow "
                f"(max_total_bytes={max_total_bytes:,}, max_entries={max_entries:,})"
            )
        return _Reader(where, max_total_bytes, max_entries, max_ratio).read(data)


def _info(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    return info


def _read_source(
    source: Any, options: dict[str, Any] | None, name: str | None, bound: int
) -> tuple[bytes, str]:
    """The archive's bytes (at most ``bound + 1`` of them) and what errors call it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "the archive bytes"
    if not isinstance(source, (str, os.PathLike)) or not isinstance(os.fspath(source), str):
        raise TypeError(f"source must be a URL, a path or bytes, got {type(source).__name__}")
    url = os.fspath(source)
    fs, path = resolve(url, options)
    try:
        with fs.open(path, "rb") as f:
            return f.read(bound + 1), name or url
    except FileNotFoundError as e:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), url) from e
    except IsADirectoryError as e:
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), url) from e
    except PermissionError as e:
        if is_local(fs) and os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), url) from e
        raise


class _Reader:
    """One archive's checks and entries (NOTE [hostile archives])."""

    def __init__(self, where: str, max_total: int, max_entries: int, max_ratio: float) -> None:
        self.where = where
        self.max_total = max_total
        self.max_entries = max_entries
        self.max_ratio = max_ratio

    def fail(self, problem: str) -> FormatError:
        return FormatError(f"{self.where}: {problem}")

    def read(self, data: bytes) -> FileBatch:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
            if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                raise self.fail(f"a truncated or corrupt zip archive ({e})") from None
            raise self.fail(
                f"not a zip archive: a FileBatch is a zip file, this one starts with {data[:8]!r}"
            ) from None
        with archive:
            uris_info, files = self._entries(archive.infolist())
            uris = self._uris(data, uris_info)
            if len(files) != len(uris):
                raise self.fail(
                    f"{ORIGINAL_URIS} lists {len(uris)} URI(s) but the archive holds "
                    f"{len(files)} file entries"
                )
            budget = [self.max_total - uris_info.file_size]
            contents = [self._inflate(data, files[i], budget) for i in range(len(files))]
        return FileBatch(contents, uris)

    def _entries(
        self, infos: list[zipfile.ZipInfo]
    ) -> tuple[zipfile.ZipInfo, dict[int, zipfile.ZipInfo]]:
        """Check every entry's name, kind and declared sizes; return the URI list's entry and
        the files' entries by index."""
        if len(infos) > self.max_entries:
            raise self.fail(f"{len(infos):,} entries, more than max_entries={self.max_entries:,}")
        uris: zipfile.ZipInfo | None = None
        files: dict[int, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            entry = info.filename
            if entry == ORIGINAL_URIS:
                if uris is not None:
                    raise self.fail(f"entry {ORIGINAL_URIS} appears twice")
                uris = info
            else:
                found = _ENTRY.fullmatch(entry)
                if found is None:
                    raise self.fail(
                        f"unexpected entry {entry!r}: a FileBatch holds only {ORIGINAL_URIS} and "
                        "entries file_<index>.<extension>"
                    )
                index = int(found[1])
                if index in files:
                    raise self.fail(
                        f"entries {files[index].filename!r} and {entry!r} both hold file {index}"
                    )
                files[index] = info
            if info.flag_bits & 0x1:
                raise self.fail(f"entry {entry!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise self.fail(
                    f"entry {entry!r} uses compression method {info.compress_type}; a FileBatch "
                    "has only stored and deflated entries"
                )
            total += info.file_size
            if total > self.max_total:
                raise self.fail(
                    f"the entries declare {total:,} bytes uncompressed (at entry {entry!r}), more "
                    f"than max_total_bytes={self.max_total:,}"
                )
            self._check_ratio(info, info.file_size)
        if uris is None:
            raise self.fail(f"no {ORIGINAL_URIS} entry: not a FileBatch archive")
        missing = sorted(set(range(len(files))) - set(files))
        if missing:
            raise self.fail(
                f"file entries must be numbered 0 to {len(files) - 1}: file {missing[0]} is "
                f"missing (the archive has file {max(files)})"
            )
        return uris, files

    def _check_ratio(self, info: zipfile.ZipInfo, size: int) -> None:
        if size > _RATIO_FLOOR and size > self.max_ratio * max(info.compress_size, 1):
            raise self.fail(
                f"entry {info.filename!r} inflates {info.compress_size:,} bytes to {size:,} or "
                f"more, a ratio over max_ratio={self.max_ratio:g} (a zip bomb?)"
            )

    def _uris(self, data: bytes, info: zipfile.ZipInfo) -> list[str]:
        raw = self._inflate(data, info, [self.max_total])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{ORIGINAL_URIS} is not UTF-8 text ({e})") from None
        parts = text.split("\n")
        while parts and not parts[-1]:  # as Java's String.split: trailing empty strings go
            parts.pop()
        if "" in parts:
            raise self.fail(f"{ORIGINAL_URIS} has an empty line (URI {parts.index('')})")
        return parts

    def _inflate(self, data: bytes, info: zipfile.ZipInfo, budget: list[int]) -> bytes:
        """An entry's bytes, sliced from ``data`` past its local header (stored) or inflated
        from there (deflated, never past the limits: ``budget[0]``, the bytes still allowed,
        and the ratio limit), whatever the headers said; its CRC-32 checked. (zipfile's own
        reader costs more per entry than decoding a small image.)"""
        raw = self._compressed(data, info)
        if info.compress_type == zipfile.ZIP_STORED:
            if len(raw) > budget[0]:
                raise self._past_budget(info)
            content = bytes(raw)
        else:
            ratio_cap = max(_RATIO_FLOOR, int(self.max_ratio * max(info.compress_size, 1)))
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                content = inflater.decompress(raw, min(budget[0], ratio_cap) + 1)
            except zlib.error as e:
                raise self._corrupt(info, str(e)) from None
            if len(content) > budget[0]:
                raise self._past_budget(info)
            self._check_ratio(info, len(content))
            if not inflater.eof:
                raise self._corrupt(info, "the deflate stream ends early")
        if zlib.crc32(content) != info.CRC:
            raise self._corrupt(info, f"bad CRC-32 for entry {info.filename!r}")
        budget[0] -= len(content)
        return content

    def _compressed(self, data: bytes, info: zipfile.ZipInfo) -> memoryview:
        """The entry's stored or deflated bytes, after its local header."""
        start = info.header_offset
        if start < 0 or start + _LOCAL_HEADER.size > len(data):
            raise self._corrupt(info, "its local header lies past the end of the archive")
        signature, name_size, extra_size = _LOCAL_HEADER.unpack_from(data, start)
        if signature != b"PK\x03\x04":
            raise self._corrupt(info, "no local file header where the directory points")
        begin = start + _LOCAL_HEADER.size + name_size + extra_size
        end = begin + info.compress_size
        if end > len(data):
            raise self._corrupt(info, "its data runs past the end of the archive")
        return memoryview(data)[begin:end]

    def _corrupt(self, info: zipfile.ZipInfo, problem: str) -> FormatError:
        return self.fail(f"entry {info.filename!r} is corrupt or truncated ({problem})")

    def _past_budget(self, info: zipfile.ZipInfo) -> FormatError:
        return self.fail(
            f"entry {info.filename!r} inflates past max_total_bytes={self.max_total:,} in all"
        )
