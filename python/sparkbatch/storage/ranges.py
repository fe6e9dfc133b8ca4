"""Byte ranges of line-oriented files, read the way Hadoop's line splits are.

Spark executors read their share of large text files themselves instead of receiving lines from
the JVM. A file is cut into ranges of about ``split_size`` bytes; each line belongs to exactly
one range:

NOTE [line ranges]: the range ``[start, end)`` begins after the first newline at or past
``start`` (at 0 for the first range) and ends with the first newline at or past ``end`` (or the
end of the file). So a line that straddles a boundary belongs to the range in which it starts,
consecutive ranges meet exactly, and no line is read twice or lost.

A compressed file (a name fsspec decompresses: ``.gz``, ``.bz2``, ``.xz``, ``.zip``, as
``sc.textFile`` decompresses ``.gz``) cannot be read from its middle: it is one range, read
whole and decompressed by one task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import infer_compression

from sparkbatch.storage.paths import list_files, resolve

__all__ = [
    "LineRange",
    "count_lines_before",
    "expand_paths",
    "open_input",
    "plan_line_ranges",
    "read_line_range",
]

_BLOCK = 1 << 20  # bytes read at a time while looking for a newline


@dataclass(frozen=True)
class LineRange:
    """Bytes ``[start, end)`` of the file ``url`` (``size`` bytes long), per NOTE [line ranges].

    ``compression``: the codec of a compressed file (its one range is the whole file).
    """

    url: str
    start: int
    end: int
    size: int
    compression: str | None = None

    @property
    def is_first(self) -> bool:
        """Whether the range holds the file's first line (where header lines are)."""
        return self.start == 0


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def expand_paths(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Expand files, directories (recursively) and globs into a sorted, duplicate-free file list.

    Hidden files and files whose names start with ``_`` are skipped, as in
    :func:`~sparkbatch.storage.list_files`.

    Examples
    --------
    >>> from sparkbatch.storage import open_output
    >>> for name in ("a.csv", "b.csv", "c.txt"):
    ...     with open_output(f"memory://ranges-doc/{name}") as f:
    ...         _ = f.write(b"1,2\\n")
    >>> expand_paths("memory://ranges-doc/*.csv")
    ['memory://ranges-doc/a.csv', 'memory://ranges-doc/b.csv']
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[str] = []
    for item in items:
        url = os.fspath(item)
        fs, path = resolve(url, dict(storage_options or {}))
        if not _has_magic(url):
            found.extend(list_files(url, storage_options=dict(storage_options or {})))
            continue
        matches = sorted(fs.glob(path))
        if not matches:
            raise FileNotFoundError(f"no file matches {url!r}")
        protocol = url.split("://", 1)[0] if "://" in url else ""
        for match in matches:
            name = os.path.basename(match.rstrip("/"))
            if not name.startswith((".", "_")) and not fs.isdir(match):
                found.append(_to_url(protocol, match))
    return sorted(dict.fromkeys(found))


def _to_url(protocol: str, path: str) -> str:
    """A path from ``fs.glob`` back in the form the user wrote (plain, ``file://`` or remote)."""
    if not protocol:
        return path
    if protocol == "file":
        return "file://" + path
    return f"{protocol}://{path.lstrip('/')}"


def plan_line_ranges(
    urls: Iterable[str],
    split_size: int | Callable[[int], int],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[LineRange]:
    """Cut each file into ranges of at most ``split_size`` bytes (empty files give none; a
    compressed file gives one).

    ``split_size`` may be a function of the total size of all files, called once.
    """
    sizes = []
    for url in urls:
        fs, path = resolve(url, dict(storage_options or {}))
        sizes.append((url, int(fs.size(path))))
    if callable(split_size):
        split_size = split_size(sum(size for _, size in sizes))
    if split_size <= 0:
        raise ValueError(f"split_size must be positive, got {split_size}")
    ranges = []
    for url, size in sizes:
        compression = infer_compression(url)
        if compression is not None:
            ranges += [LineRange(url, 0, size, size, compression)] if size else []
        else:
            ranges += [
                LineRange(url, start, min(start + split_size, size), size)
                for start in range(0, size, split_size)
            ]
    return ranges


def open_input(url: str, *, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Open ``url`` for reading bytes, decompressed if its name says it is compressed.

    Examples
    --------
    >>> import gzip
    >>> from sparkbatch.storage import open_output
    >>> with open_output("memory://ranges-doc/a.csv.gz") as f:
    ...     _ = f.write(gzip.compress(b"1,2\\n"))
    >>> with open_input("memory://ranges-doc/a.csv.gz") as f:
    ...     f.read()
    b'1,2\\n'
    """
    fs, path = resolve(url, dict(storage_options or {}))
    return fs.open(path, "rb", compression=infer_compression(url))


def _find_newline(f: Any, position: int, size: int) -> int:
    """Position of the first newline at or after ``position`` in the open file, or ``size``."""
    f.seek(position)
    while position < size:
        block = f.read(min(_BLOCK, size - position))
        if not block:
            break
        found = block.find(b"\n")
        if found >= 0:
            return position + found
        position += len(block)
    return size


def read_line_range(
    line_range: LineRange,
    *,
    storage_options: Mapping[str, Any] | None = None,
    buffer: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[bytes | memoryview, int]:
    """Read the whole lines that belong to ``line_range``; return them and their file offset.

    The lines come as ``bytes``, or from a local file as a ``memoryview`` of a numpy buffer
    (:func:`_read_into_array`: half the cost of ``read`` for a range of tens of MB). ``buffer``,
    a 1-D ``uint8`` array, is where a local range goes when it fits (its bytes are overwritten
    and the result is a view of it): a caller reading range after range into one array reuses
    pages already mapped, 7 ms for 37.5 MB where a new array takes 11. ``threads`` above 1 reads
    a local range in that many parts at once, each of at least 8 MiB (a reader that goes on to
    parse with every core: 42 MB in 6.7 ms on 2 cores instead of 13.9); Spark tasks, already one
    per core, read with one.

    Examples
    --------
    >>> from sparkbatch.storage import open_output
    >>> with open_output("memory://ranges-doc/lines.txt") as f:
    ...     _ = f.write(b"aaaa\\nbb\\ncccccc\\nd")
    >>> [read_line_range(r)[0] for r in plan_line_ranges(["memory://ranges-doc/lines.txt"], 6)]
    [b'aaaa\\nbb\\n', b'cccccc\\n', b'd']
    """
    r = line_range
    fs, path = resolve(r.url, dict(storage_options or {}))
    if r.compression is not None:
        with fs.open(path, "rb", compression=r.compression) as f:
            return f.read(), 0
    with fs.open(path, "rb") as f:
        begin = 0 if r.start == 0 else _find_newline(f, r.start, r.size) + 1
        if begin > r.end or begin >= r.size:
            return b"", begin  # the range lies inside a line that began in an earlier range
        stop = _find_newline(f, r.end, r.size) if r.end < r.size else r.size
        stop = min(stop + 1, r.size)
        f.seek(begin)
        if isinstance(fs, LocalFileSystem):
            return _read_into_array(f, stop - begin, buffer, threads), begin
        return f.read(stop - begin), begin


_MIN_PART = 8 << 20  # the least a thread of a parallel read reads


def _read_into_array(
    f: Any, size: int, buffer: np.ndarray | None = None, threads: int = 1
) -> memoryview:
    """Up to ``size`` bytes of the local file ``f`` from its position (fewer at its end), read
    into ``buffer`` when it is a ``uint8`` array that fits them, else into a new numpy array; in
    up to ``threads`` parts at once (``os.preadv`` releases the GIL). ``f.read(size)`` builds a
    ``bytes`` object whose pages the kernel faults in and zeroes 4 KiB at a time, which cost more
    than the copy: 21-22 ms for 42 MB here, against 11 ms into a new numpy array, for which numpy
    asks the kernel for 2 MiB pages (``madvise``), and 7 ms into one already mapped."""
    fits = buffer is not None and buffer.dtype == np.uint8 and buffer.ndim == 1
    out = buffer if fits and buffer.size >= size else np.empty(size, np.uint8)
    view = memoryview(out)[:size]  # readinto fills what it is given: no more than the range
    parts = min(threads, size // _MIN_PART)
    if parts > 1 and hasattr(os, "preadv"):
        return view[: _read_parts(f.fileno(), f.tell(), view, parts)]
    got = 0
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return view[:got]


def _read_parts(fd: int, offset: int, view: memoryview, parts: int) -> int:
    """Fill ``view`` from the file ``fd`` at ``offset`` in ``parts`` parts read at once; return
    how many bytes were read: all but those past the file's end."""
    size = len(view)
    step = -(-size // parts)

    def read_part(start: int) -> int:  # bytes read from [start, start + step)
        stop, got = min(size, start + step), 0
        while start + got < stop:
            n = os.preadv(fd, [view[start + got : stop]], offset + start + got)
            if n == 0:
                break
            got += n
        return got

    with ThreadPoolExecutor(parts) as pool:
        got = list(pool.map(read_part, range(0, size, step)))
    # a file cut short while read: keep what lies before the first short part
    whole = 0
    for start, n in zip(range(0, size, step), got, strict=True):
        whole = start + n
        if n < min(step, size - start):
            break
    return whole


def count_lines_before(
    url: str,
    offset: int,
    *,
    limit: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Number of newlines in the first ``offset`` bytes of ``url``, or ``limit`` if there are
    at least that many (reading only as far as needed to tell).

    Examples
    --------
    >>> from sparkbatch.storage import open_output
    >>> with open_output("memory://ranges-doc/count.txt") as f:
    ...     _ = f.write(b"a\\nb\\nc\\nd\\n")
    >>> count_lines_before("memory://ranges-doc/count.txt", 5)
    2
    >>> count_lines_before("memory://ranges-doc/count.txt", 8, limit=3)
    3
    """
    fs, path = resolve(url, dict(storage_options or {}))
    count, size = 0, 1 << 16 if limit is not None else _BLOCK
    with fs.open(path, "rb") as f:
        while offset > 0 and (limit is None or count < limit):
            block = f.read(min(size, offset))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
            size = min(2 * size, _BLOCK)
    return count if limit is None else min(count, limit)
