"""fsspec paths: resolve, join, list, read and write files atomically.

Every path sparkbatch accepts is an fsspec URL (``memory://x``, ``s3://bucket/dir``,
``file:///tmp/x``, ...) or a plain local path, given as ``str`` or :class:`os.PathLike`, plus an
optional ``storage_options`` dict handed to fsspec. A URL is resolved once with
:func:`fsspec.core.url_to_fs` (:func:`resolve`); code below that works on the ``(fs, path)`` pair.

NOTE [atomic writes]: no reader may ever see a half-written file, and a failed or retried writer
leaves nothing behind under a visible name.

* Local file systems: the data goes to a temporary file in the target's own directory, named
  ``.{name}.{random hex}.tmp`` and created in exclusive mode (so with the usual permissions, not the
  0600 of :func:`tempfile.mkstemp`), then :func:`os.replace` moves it onto the final name. A rename
  inside one directory is atomic on POSIX and on NTFS. Without ``overwrite`` the commit is a hard
  link (which fails if the target exists) where the file system supports one. The temporary file is
  removed if anything fails. No fsync: atomicity against readers, not durability after a power loss.
* Other file systems: the data is buffered in memory and uploaded with a single
  ``fs.pipe_file(path, data)`` on success (one PUT on object stores, which never expose a partial
  object); nothing is written on failure. ``overwrite=False`` checks for the target when the block
  opens and again just before the upload; the check and the upload are not one atomic step there.

Temporary names start with ``.``, and :func:`list_files` skips every name starting with ``.`` or
``_`` (as Hadoop does), so in-progress files, ``_SUCCESS`` and ``_manifest.json`` never show up.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import stat
from collections.abc import Iterator
from typing import IO, Any, NoReturn

import fsspec
import fsspec.core
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "atomic_local_path",
    "exists",
    "is_directory",
    "is_hidden",
    "is_local",
    "join",
    "list_files",
    "list_tree",
    "open_output",
    "read_bytes",
    "resolve",
]

_HIDDEN_PREFIXES = (".", "_")
_TEMP_SUFFIX = ".tmp"
_OVERWRITE_HINT = " (pass overwrite=True to replace it)"
_TEMP_NAME_BYTES = 200  # keeps ".{name}.{hex}.tmp" under the 255-byte name limit


def _to_str(url: str | os.PathLike[str], argument: str = "url") -> str:
    if isinstance(url, (str, os.PathLike)):
        s = os.fspath(url)
        if isinstance(s, str):
            return s
    raise TypeError(f"{argument} must be a str or os.PathLike[str], got {type(url).__name__}")


def _error(cls: type[OSError], code: int, url: str, hint: str = "") -> OSError:
    """``cls(code, message, url)``: a builtin error whose ``filename`` is the URL."""
    return cls(code, os.strerror(code) + hint, url)


def resolve(
    url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve a URL or local path to a file system and the path on it.

    Parameters
    ----------
    url : str or os.PathLike
        fsspec URL (``memory://x``, ``s3://bucket/key``, ``file:///tmp/x``) or local path.
    storage_options : dict, optional
        Keyword arguments for the file system (credentials, endpoint, ...).

    Returns
    -------
    tuple of (fsspec.AbstractFileSystem, str)
        The file system and the path on it, without protocol (local paths are made absolute).

    Examples
    --------
    >>> fs, path = resolve("memory://sparkbatch-doc/a.bin")
    >>> type(fs).__name__, path
    ('MemoryFileSystem', '/sparkbatch-doc/a.bin')
    """
    return fsspec.core.url_to_fs(_to_str(url), **(storage_options or {}))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local file system (so its paths can be opened with :func:`open`).

    Examples
    --------
    >>> is_local(resolve("/tmp")[0]), is_local(resolve("memory://x")[0])
    (True, False)
    """
    return isinstance(fs, LocalFileSystem)


def _join_one(base: str, names: list[str]) -> str:
    if "://" not in base:
        return os.path.join(base, *names)
    protocol, rest = base.split("://", 1)
    head = rest.rstrip("/") or rest[:1]  # "file:///" keeps its root slash, "memory://" stays bare
    sep = "" if head in ("", "/") else "/"
    return f"{protocol}://{head}{sep}{'/'.join(names)}"


def join(url: str | os.PathLike[str], *parts: str | os.PathLike[str]) -> str:
    """Join a directory URL and relative names, keeping the URL's protocol.

    Leading and trailing slashes of ``parts`` are ignored and empty parts are dropped, so a part
    never replaces ``url``. Plain local paths are joined with :func:`os.path.join`; in a chained
    URL (``simplecache::s3://b/dir``) the names go to the first part that has a protocol.

    Parameters
    ----------
    url : str or os.PathLike
        Directory URL or local path.
    *parts : str or os.PathLike
        Names (or ``/``-separated relative paths) to append.

    Returns
    -------
    str

    Examples
    --------
    >>> join("s3://bucket/dir/", "part-00000", "a.bin")
    's3://bucket/dir/part-00000/a.bin'
    >>> join("memory://", "x/y")
    'memory://x/y'
    >>> join("file:///tmp", "a.bin")
    'file:///tmp/a.bin'
    """
    base = _to_str(url)
    names = []
    for part in parts:
        name = _to_str(part, "part")
        strip = "/" if "://" in base else os.sep + (os.altsep or "")
        name = name.strip(strip)
        if name:
            names.append(name)
    if not names:
        return base
    segments = base.split("::")
    index = next((i for i, s in enumerate(segments) if "://" in s), len(segments) - 1)
    segments[index] = _join_one(segments[index], names)
    return "::".join(segments)


def _temp_name(name: str) -> str:
    kept = name.encode()[:_TEMP_NAME_BYTES].decode(errors="ignore")
    return f".{kept}.{secrets.token_hex(8)}{_TEMP_SUFFIX}"


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{16}" + re.escape(_TEMP_SUFFIX))


def temporary_target(name: str) -> str | None:
    """The file name a temporary file of an atomic write was for (its first 200 bytes), or
    None if ``name`` is not such a temporary; for tidying up after killed writers.

    Examples
    --------
    >>> temporary_target(_temp_name("part-00000-000001.safetensors"))
    'part-00000-000001.safetensors'
    >>> temporary_target("notes.txt") is None
    True
    """
    found = _TEMP_NAME.fullmatch(name)
    return found["name"] if found else None


def _create_temp(directory: str, name: str, opened: bool = True) -> tuple[str, IO[bytes] | None]:
    """A new temporary file next to ``name``: its path and, if ``opened``, a binary file on it."""
    for _ in range(100):
        tmp = os.path.join(directory, _temp_name(name))
        try:
            if opened:
                return tmp, open(tmp, "xb")  # exclusive: never reuse another writer's file
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp, None
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)


def _check_replaceable(target: str, url: str) -> None:
    """Refuse a target that exists and is not a regular file (or a link to one): a rename
    would replace a directory entry, a device node, a socket or a pipe with a plain file."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        if os.path.islink(target):  # a dangling link: replacing it would hide the mistake
            raise _error(
                FileExistsError, errno.EEXIST, url, " (a symbolic link to nothing)"
            ) from None
        return
    except NotADirectoryError as e:  # a parent is a file
        raise _error(NotADirectoryError, errno.ENOTDIR, url) from e
    if stat.S_ISDIR(mode):
        raise _error(IsADirectoryError, errno.EISDIR, url)
    if not stat.S_ISREG(mode):
        kind = (
            "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a pipe"
            if stat.S_ISFIFO(mode)
            else "not a regular file"
        )
        raise _error(FileExistsError, errno.EEXIST, url, f" and is {kind}: refusing to replace it")


def _commit_local(tmp: str, target: str, overwrite: bool, url: str) -> None:
    if overwrite:
        _check_replaceable(target, url)  # again: something may have appeared since the open
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if target exists: check and commit in one step
    except FileExistsError as e:
        raise _error(FileExistsError, errno.EEXIST, url, _OVERWRITE_HINT) from e
    except OSError:
        # No hard links on this file system: check, then rename (a small race window).
        if os.path.lexists(target):
            raise _error(FileExistsError, errno.EEXIST, url, _OVERWRITE_HINT) from None
        os.replace(tmp, target)
    else:
        os.unlink(tmp)


@contextlib.contextmanager
def _atomic_local(
    path: str, overwrite: bool, url: str, opened: bool = True
) -> Iterator[tuple[str, IO[bytes] | None]]:
    """Yield ``(temporary path, file opened "xb" on it or None)``; commit onto ``path`` on success.

    The one mechanism behind :func:`atomic_local_path` and local :func:`open_output`; see
    NOTE [atomic writes]. ``url`` is the name that errors carry.
    """
    target = os.path.abspath(path)
    _check_replaceable(target, url)
    if not overwrite and os.path.lexists(target):
        raise _error(FileExistsError, errno.EEXIST, url, _OVERWRITE_HINT)
    directory, name = os.path.split(target)
    os.makedirs(directory, exist_ok=True)
    tmp, f = _create_temp(directory, name, opened)
    committed = False
    try:
        yield tmp, f
        if f is not None:
            f.close()
        _commit_local(tmp, target, overwrite, url)
        committed = True
    finally:
        if f is not None:
            f.close()
        if not committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_local_path(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    For writers that need a real local file (native code, libraries that take a file name). The
    temporary file already exists (empty) in the same directory as ``path``, with a hidden name;
    parent directories are created. On success it is renamed onto ``path`` with
    :func:`os.replace`; if the block raises, it is removed and the exception propagates.
    See NOTE [atomic writes] in this module.

    Parameters
    ----------
    path : str or os.PathLike
        Final local path (or ``file://`` URL).
    overwrite : bool, default True
        If False, raise :class:`FileExistsError` when ``path`` exists, before the block runs and
        again at the commit.

    Yields
    ------
    str
        The absolute temporary path to write.

    Raises
    ------
    FileExistsError
        ``overwrite`` is False and ``path`` exists.
    IsADirectoryError
        ``path`` is a directory.
    ValueError
        ``path`` is not on the local file system.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     target = os.path.join(d, "out", "a.bin")
    ...     with atomic_local_path(target) as tmp:
    ...         with open(tmp, "wb") as f:
    ...             _ = f.write(b"abc")
    ...         print(os.path.exists(target))
    ...     print(os.listdir(os.path.join(d, "out")))
    False
    ['a.bin']
    """
    local = _to_str(path, "path")
    if "://" in local or "::" in local:  # plain paths skip fsspec's URL parsing (tens of µs)
        fs, resolved = resolve(local)
        if not is_local(fs):
            raise ValueError(
                f"path must be on the local file system, got {local!r}; "
                "use open_output() to write to other file systems"
            )
    else:
        resolved = local
    with _atomic_local(resolved, overwrite, local, opened=False) as (tmp, _):
        yield tmp


class _UploadBuffer(io.BytesIO):
    """In-memory file whose contents survive :meth:`close` (some writers close their sink)."""

    data: bytes | None = None

    def close(self) -> None:
        if not self.closed:
            self.data = self.getvalue()
        super().close()


@contextlib.contextmanager
def open_output(
    url: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Iterator[IO[bytes]]:
    """Open a file for writing that appears under its name only once complete.

    Yields a binary writable file. When the block ends without an exception the data is committed
    at once: on a local file system by renaming a temporary file in the same directory (parent
    directories are created), elsewhere by one ``fs.pipe_file`` upload of the buffered bytes. If
    the block raises, nothing is left behind. See NOTE [atomic writes] in this module.

    Parameters
    ----------
    url : str or os.PathLike
        fsspec URL or local path of the file to write.
    storage_options : dict, optional
        Keyword arguments for the file system.
    overwrite : bool, default True
        If False, raise :class:`FileExistsError` when the target exists.

    Yields
    ------
    file object
        Binary, writable. Closing it inside the block is allowed.

    Raises
    ------
    FileExistsError
        ``overwrite`` is False and the target exists.

    Examples
    --------
    >>> with open_output("memory://sparkbatch-doc/out/a.bin") as f:
    ...     _ = f.write(b"abc")
    ...     print(exists("memory://sparkbatch-doc/out/a.bin"))
    False
    >>> read_bytes("memory://sparkbatch-doc/out/a.bin")
    b'abc'
    >>> fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """
    target = _to_str(url)
    fs, path = resolve(target, storage_options)
    if is_local(fs):
        with _atomic_local(path, overwrite, target) as (_, f):
            yield f
        return
    if not overwrite and _exists(fs, path, target):
        raise _error(FileExistsError, errno.EEXIST, target, _OVERWRITE_HINT)
    buffer = _UploadBuffer()
    try:
        yield buffer
        data = buffer.getvalue() if buffer.data is None else buffer.data
    finally:
        buffer.close()
    if not overwrite and _exists(fs, path, target):
        raise _error(FileExistsError, errno.EEXIST, target, _OVERWRITE_HINT)
    _upload(fs, path, data, target)


def _upload(fs: fsspec.AbstractFileSystem, path: str, data: bytes, url: str) -> None:
    try:
        try:
            fs.pipe_file(path, data)
        except FileNotFoundError as e:
            # A missing parent directory. Create it only on hierarchical file systems (root
            # "/"); on bucket stores the only missing "directory" is the bucket, never created.
            if fs.root_marker != "/":
                raise _error(FileNotFoundError, errno.ENOENT, url) from e
            fs.makedirs(fs._parent(path), exist_ok=True)
            fs.pipe_file(path, data)
    except Exception as e:
        _raise_named(e, url, "cannot upload")


def _raise_named(error: Exception, url: str, action: str) -> NoReturn:
    """Raise :func:`_named`'s error, chained to ``error`` unless it is ``error`` itself."""
    named = _named(error, url, action)
    if named is error:
        raise error
    raise named from error


def _named(error: Exception, url: str, action: str) -> Exception:
    """A storage error that names ``url``: ``error`` itself if it is an OSError that does; an
    OSError of the same type naming it if it does not (an object store's "internal error");
    an ``OSError`` naming it for the client libraries' own types (botocore's
    ``EndpointConnectionError``, aiohttp's ``ClientPayloadError``), so that ``except OSError``
    catches every storage failure and the message says which file failed. Builtin non-OS errors
    (a TypeError from bad ``storage_options``) stay as they are."""
    if not isinstance(error, OSError):
        if type(error).__module__ == "builtins":  # TypeError, ValueError: a caller's mistake
            return error
        reason = f"{type(error).__module__}.{type(error).__name__}: {error}"
        return OSError(errno.EIO, f"{action}: {reason}", url)
    if error.filename == url:
        return error
    reason = error.strerror or str(error) or type(error).__name__
    try:
        return type(error)(error.errno or errno.EIO, f"{action}: {reason}", url)
    except TypeError:  # a subclass with a constructor of its own
        return OSError(error.errno or errno.EIO, f"{action}: {reason}", url)


def _exists(fs: fsspec.AbstractFileSystem, path: str, url: str) -> bool:
    fs.invalidate_cache(path)  # other processes (Spark executors) may have written since
    try:
        return bool(fs.exists(path))
    except Exception as e:  # storage unreachable: name what was asked for
        _raise_named(e, url, "cannot reach")


def exists(url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a file or directory exists at ``url`` (listing caches are bypassed).

    Examples
    --------
    >>> exists("memory://sparkbatch-doc/missing.bin")
    False
    """
    fs, path = resolve(url, storage_options)
    return _exists(fs, path, _to_str(url))


def is_directory(
    url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> bool:
    """Whether ``url`` is a directory (True) or a file (False).

    Raises
    ------
    FileNotFoundError
        Nothing exists at ``url``.
    OSError
        The storage cannot be reached; the error names ``url``.

    Examples
    --------
    >>> with open_output("memory://sparkbatch-doc/d/a.bin") as f:
    ...     _ = f.write(b"x")
    >>> is_directory("memory://sparkbatch-doc/d"), is_directory("memory://sparkbatch-doc/d/a.bin")
    (True, False)
    >>> fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """
    target = _to_str(url)
    fs, path = resolve(target, storage_options)
    try:
        if fs.isdir(path):
            return True
    except Exception as e:
        _raise_named(e, target, "cannot reach")
    if not _exists(fs, path, target):
        raise _error(FileNotFoundError, errno.ENOENT, target)
    return False


def read_bytes(
    url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> bytes:
    """Read a whole file.

    Raises
    ------
    FileNotFoundError
        No file at ``url``; the error's ``filename`` is the URL.

    Examples
    --------
    >>> with open_output("memory://sparkbatch-doc/b.bin") as f:
    ...     _ = f.write(b"xyz")
    >>> read_bytes("memory://sparkbatch-doc/b.bin")
    b'xyz'
    >>> fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """
    target = _to_str(url)
    fs, path = resolve(target, storage_options)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError as e:
        raise _error(FileNotFoundError, errno.ENOENT, target) from e
    except Exception as e:
        _raise_named(e, target, "cannot read")


def _relative(path: str, root: str) -> str | None:
    """``path`` relative to directory ``root`` ("/"-separated), "" for root itself, else None."""
    if path.rstrip("/") == root.rstrip("/"):
        return ""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def is_hidden(relative: str) -> bool:
    """Whether a listed file is hidden, as Hadoop has it: a name or directory of its
    ``/``-separated relative path starting with ``.`` or ``_`` (markers, temporaries,
    ``_SUCCESS``, checksum files).

    Examples
    --------
    >>> is_hidden("part-00000.bin"), is_hidden("_SUCCESS"), is_hidden(".tmp/a.bin")
    (False, True, True)
    """
    return any(part.startswith(_HIDDEN_PREFIXES) for part in relative.split("/"))


def list_files(
    url: str | os.PathLike[str],
    suffix: str | tuple[str, ...] | None = None,
    recursive: bool = True,
    *,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """List the files under a directory URL, sorted by path.

    Names that start with ``.`` or ``_`` are skipped, and so is everything below a directory with
    such a name (``_temporary/``, in-progress temporary files, ``_SUCCESS``, ``_manifest.json``).
    The returned strings keep the form of ``url``: ``memory://x/a.bin``, ``s3://b/k/a.bin``,
    ``file:///abs/a.bin``; plain local paths come back as absolute local paths.

    Parameters
    ----------
    url : str or os.PathLike
        Directory to list. A URL that names a file gives a list of that file alone (if it
        matches ``suffix``).
    suffix : str or tuple of str, optional
        Keep only file names ending with (one of) these, e.g. ``".bin"``.
    recursive : bool, default True
        If False, list only the files directly in ``url``.
    storage_options : dict, optional
        Keyword arguments for the file system.

    Returns
    -------
    list of str

    Raises
    ------
    FileNotFoundError
        Nothing exists at ``url``; the error's ``filename`` is the URL. (On object stores an
        empty "directory" does not exist.)

    Examples
    --------
    >>> for name in ["b.bin", "a.bin", "sub/c.bin", "notes.txt", "_SUCCESS"]:
    ...     with open_output(join("memory://sparkbatch-doc/ls", name)) as f:
    ...         _ = f.write(b"x")
    >>> for u in list_files("memory://sparkbatch-doc/ls", suffix=".bin"):
    ...     print(u)
    memory://sparkbatch-doc/ls/a.bin
    memory://sparkbatch-doc/ls/b.bin
    memory://sparkbatch-doc/ls/sub/c.bin
    >>> for u in list_files("memory://sparkbatch-doc/ls", recursive=False):
    ...     print(u)
    memory://sparkbatch-doc/ls/a.bin
    memory://sparkbatch-doc/ls/b.bin
    memory://sparkbatch-doc/ls/notes.txt
    >>> fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """
    suffixes = None if suffix is None else (suffix,) if isinstance(suffix, str) else tuple(suffix)
    found = _listing(_to_str(url), recursive, storage_options)
    if found and not found[0][0]:  # url names one file
        name = found[0][1].rstrip("/").rsplit("/", 1)[-1]
        return [found[0][1]] if suffixes is None or name.endswith(suffixes) else []
    return [full for rel, full in sorted(found) if _visible(rel, suffixes)]


def _visible(relative: str, suffixes: tuple[str, ...] | None) -> bool:
    """Whether :func:`list_files` lists a file: not hidden, and with one of ``suffixes``."""
    name = relative.rsplit("/", 1)[-1]
    return not is_hidden(relative) and (suffixes is None or name.endswith(suffixes))


def list_tree(
    url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """Every file under a directory, hidden ones included: sorted ``(relative path, URL)``
    pairs, the relative path "/"-separated and the URL in the form :func:`list_files` gives.

    For code that must see markers and temporaries, which :func:`list_files` skips.

    Examples
    --------
    >>> for name in ["a.bin", "sub/_marker", ".tmp"]:
    ...     with open_output(join("memory://sparkbatch-doc/tree", name)) as f:
    ...         _ = f.write(b"x")
    >>> [rel for rel, _ in list_tree("memory://sparkbatch-doc/tree")]
    ['.tmp', 'a.bin', 'sub/_marker']
    >>> fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """
    return sorted(item for item in _listing(_to_str(url), True, storage_options) if item[0])


def _listing(
    target: str, recursive: bool, storage_options: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """``(path relative to target, full URL)`` of every file under ``target`` (hidden ones
    too); a target that names one file gives ``[("", target)]``."""
    fs, root = resolve(target, storage_options)
    if is_local(fs):
        # Plain local paths come back absolute and local; file:// URLs stay file:// URLs.
        base = fs.unstrip_protocol(root) if "://" in target else root
    else:
        base = target
    fs.invalidate_cache(root)
    try:
        found = fs.find(root, maxdepth=None if recursive else 1, withdirs=False, detail=False)
    except FileNotFoundError as e:
        raise _error(FileNotFoundError, errno.ENOENT, target) from e
    except Exception as e:  # storage unreachable
        _raise_named(e, target, "cannot list")
    relatives = [_relative(p, root) for p in found]
    if relatives == [""] or (not found and fs.isfile(root)):  # url names one file
        return [("", base)]
    if not found and not fs.isdir(root):
        raise _error(FileNotFoundError, errno.ENOENT, target)
    listing: list[tuple[str, str]] = []
    for path, rel in zip(found, relatives, strict=True):
        if rel is None:  # the back end named it outside root: use its own URL form
            rel, full = path.rsplit("/", 1)[-1], fs.unstrip_protocol(path)
        else:
            full = join(base, *rel.split("/"))
        if rel:
            listing.append((rel, full))
    return listing
