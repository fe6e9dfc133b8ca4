"""Tests of sparkbatch.storage paths: written once, run on every storage back end.

Each test that takes ``base_url`` runs on all back ends listed in ``BACKENDS``; ``base_url`` is a
fresh, empty directory URL for that test (it may not exist yet: object stores have no empty
directories). ``s3`` runs against the session's local moto server, configured through
``fsspec.config.conf`` so that the tests need no ``storage_options``. To add a back end, add its
name to ``BACKENDS`` and a branch to ``base_url`` that yields a unique prefix.
"""

from __future__ import annotations

import os
import pathlib
import stat
import sys
import uuid
from collections.abc import Iterator

import fsspec
import pytest

from sparkbatch.storage.paths import (
    atomic_local_path,
    exists,
    is_local,
    join,
    list_files,
    open_output,
    read_bytes,
    resolve,
)

BACKENDS = ["local", "file-url", "memory", "s3"]


@pytest.fixture(params=BACKENDS)
def base_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    """A fresh directory URL on each storage back end."""
    backend = request.param
    if backend == "local":
        yield str(tmp_path)
    elif backend == "file-url":
        yield "file://" + tmp_path.as_posix()
    elif backend == "memory":
        # The memory file system is one global store: use a unique root and remove it afterwards.
        root = f"/sparkbatch-test-{uuid.uuid4().hex}"
        yield "memory://" + root.lstrip("/")
        fs = fsspec.filesystem("memory")
        if fs.exists(root):
            fs.rm(root, recursive=True)
        assert not [k for k in fs.store if k.startswith(root)]
    elif backend == "s3":
        # The session's local S3-protocol server; fsspec's default config reaches it, so the
        # tests themselves need no storage_options. No cached listings (instances are reused).
        s3_storage = request.getfixturevalue("s3_storage")
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(fsspec.config.conf, "s3", {**s3_storage, "use_listings_cache": False})
            yield f"s3://sparkbatch/storage-test-{uuid.uuid4().hex[:12]}"
    else:  # pragma: no cover - a back end listed in BACKENDS without a branch here
        raise AssertionError(f"no fixture for back end {backend!r}")


def _write(url: str, data: bytes = b"x") -> str:
    with open_output(url) as f:
        f.write(data)
    return url


def _raw_listing(url: str) -> list[str]:
    """Everything under ``url``, hidden and temporary files included (fsspec paths)."""
    fs, root = resolve(url)
    fs.invalidate_cache(root)
    return sorted(fs.find(root, withdirs=False))


# ---------------------------------------------------------------------------------------------
# open_output


def test_open_output_round_trip(base_url: str) -> None:
    target = join(base_url, "a.bin")
    payload = bytes(range(256)) * 1000
    with open_output(target) as f:
        f.write(payload[:1000])
        f.write(payload[1000:])
    assert read_bytes(target) == payload
    assert exists(target)


def test_open_output_creates_parent_directories(base_url: str) -> None:
    target = join(base_url, "x", "y", "z.bin")
    _write(target, b"deep")
    assert read_bytes(target) == b"deep"


def test_open_output_overwrites_by_default(base_url: str) -> None:
    target = _write(join(base_url, "a.bin"), b"old")
    _write(target, b"new")
    assert read_bytes(target) == b"new"
    assert list_files(base_url) == [target]


def test_open_output_close_inside_block_still_commits(base_url: str) -> None:
    # Some writers close the file object they are given.
    target = join(base_url, "a.bin")
    with open_output(target) as f:
        f.write(b"abc")
        f.close()
    assert read_bytes(target) == b"abc"


def test_open_output_is_invisible_until_the_block_ends(base_url: str) -> None:
    other = _write(join(base_url, "other.bin"))
    target = join(base_url, "a.bin")
    with open_output(target) as f:
        f.write(b"partial")
        f.flush()
        assert not exists(target)
        assert list_files(base_url) == [other]
        f.write(b" and the rest")
    assert exists(target)
    assert read_bytes(target) == b"partial and the rest"
    assert list_files(base_url) == [target, other]


def test_open_output_failure_leaves_nothing_behind(base_url: str) -> None:
    other = _write(join(base_url, "other.bin"))
    before = _raw_listing(base_url)
    target = join(base_url, "sub", "a.bin")
    with pytest.raises(RuntimeError, match="boom"), open_output(target) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert not exists(target)
    assert _raw_listing(base_url) == before  # no temporary file either
    assert list_files(base_url) == [other]


def test_open_output_failure_keeps_the_previous_file(base_url: str) -> None:
    target = _write(join(base_url, "a.bin"), b"old")
    before = _raw_listing(base_url)
    with pytest.raises(RuntimeError), open_output(target) as f:
        f.write(b"new but incomplete")
        raise RuntimeError("boom")
    assert read_bytes(target) == b"old"
    assert _raw_listing(base_url) == before


def test_open_output_overwrite_false(base_url: str) -> None:
    target = join(base_url, "a.bin")
    _write(target, b"first")
    before = _raw_listing(base_url)
    with (
        pytest.raises(FileExistsError, match="overwrite=True") as info,
        open_output(target, overwrite=False) as f,
    ):
        f.write(b"second")
    assert info.value.filename == target
    assert read_bytes(target) == b"first"
    assert _raw_listing(base_url) == before


def test_open_output_overwrite_false_new_file(base_url: str) -> None:
    target = join(base_url, "a.bin")
    with open_output(target, overwrite=False) as f:
        f.write(b"only")
    assert read_bytes(target) == b"only"


def test_open_output_onto_a_directory_fails(base_url: str) -> None:
    if not is_local(resolve(base_url)[0]):
        pytest.skip("object stores let a key and a prefix share a name")
    _write(join(base_url, "d", "a.bin"))
    with pytest.raises(OSError):
        _write(join(base_url, "d"))
    assert list_files(base_url) == [join(base_url, "d", "a.bin")]


def test_open_output_remote_is_one_upload(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, _ = resolve(base_url)
    if is_local(fs):
        pytest.skip("local files are renamed into place, not uploaded")
    calls: list[tuple[str, bytes]] = []
    pipe_file = fs.pipe_file  # bound: async file systems mirror their sync methods per instance

    def spy(path: str, value: bytes, **kwargs: object) -> None:
        calls.append((path, bytes(value)))
        pipe_file(path, value, **kwargs)

    # open_output resolves the same cached instance (fsspec caches file systems by options)
    monkeypatch.setattr(fs, "pipe_file", spy)
    target = join(base_url, "a.bin")
    with open_output(target) as f:
        for _ in range(3):
            f.write(b"abc")
        assert calls == []
    assert [data for _, data in calls] == [b"abcabcabc"]
    with pytest.raises(RuntimeError), open_output(join(base_url, "b.bin")) as f:
        f.write(b"abc")
        raise RuntimeError("boom")
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# list_files


def _populate(base_url: str, names: list[str]) -> None:
    for name in names:
        _write(join(base_url, *name.split("/")), name.encode())


NAMES = ["b.bin", "c/d.bin", "a.txt", "a.bin", "c/a.bin", "c/e/f.bin"]


def test_list_files_sorted_and_keeps_the_protocol(base_url: str) -> None:
    _populate(base_url, NAMES)
    found = list_files(base_url)
    assert found == [join(base_url, *n.split("/")) for n in sorted(NAMES)]
    assert all(isinstance(u, str) for u in found)
    for url, name in zip(found, sorted(NAMES), strict=True):
        assert read_bytes(url) == name.encode()


def test_list_files_returned_form(base_url: str) -> None:
    _populate(base_url, ["a.bin"])
    (found,) = list_files(base_url)
    if "://" in base_url:
        assert found.startswith(base_url.split("://")[0] + "://")
    else:
        assert os.path.isabs(found)
        assert "://" not in found


def test_list_files_trailing_slash_and_pathlike(base_url: str) -> None:
    _populate(base_url, NAMES)
    assert list_files(base_url + "/") == list_files(base_url)
    if "://" not in base_url:
        assert list_files(pathlib.Path(base_url)) == list_files(base_url)


def test_list_files_suffix(base_url: str) -> None:
    _populate(base_url, NAMES)
    expected = [join(base_url, *n.split("/")) for n in sorted(NAMES) if n.endswith(".bin")]
    assert list_files(base_url, suffix=".bin") == expected
    assert list_files(base_url, suffix=(".bin", ".txt")) == list_files(base_url)
    assert list_files(base_url, suffix=".csv") == []


def test_list_files_not_recursive(base_url: str) -> None:
    _populate(base_url, NAMES)
    assert list_files(base_url, recursive=False) == [
        join(base_url, n) for n in ["a.bin", "a.txt", "b.bin"]
    ]
    assert list_files(join(base_url, "c"), recursive=False) == [
        join(base_url, "c", n) for n in ["a.bin", "d.bin"]
    ]


def test_list_files_skips_hidden_and_underscore(base_url: str) -> None:
    _populate(
        base_url,
        [
            "a.bin",
            "_SUCCESS",
            "_manifest.json",
            ".a.bin.0123abcd.tmp",
            "_temporary/0/part-00000.bin",
            ".hidden/b.bin",
            "sub/_SUCCESS",
            "sub/c.bin",
        ],
    )
    assert list_files(base_url) == [join(base_url, "a.bin"), join(base_url, "sub", "c.bin")]
    assert list_files(base_url, recursive=False) == [join(base_url, "a.bin")]


def test_list_files_hides_files_being_written(base_url: str) -> None:
    _populate(base_url, ["a.bin"])
    with open_output(join(base_url, "b.bin")) as f:
        f.write(b"partial")
        assert list_files(base_url) == [join(base_url, "a.bin")]


def test_list_files_missing_directory(base_url: str) -> None:
    _populate(base_url, ["a.bin"])
    missing = join(base_url, "missing")
    with pytest.raises(FileNotFoundError) as info:
        list_files(missing)
    assert info.value.filename == missing
    assert missing in str(info.value)


def test_list_files_single_file(base_url: str) -> None:
    _populate(base_url, ["a.bin", "b.txt"])
    target = join(base_url, "a.bin")
    assert list_files(target) == [target]
    assert list_files(target, suffix=".bin") == [target]
    assert list_files(target, suffix=".txt") == []


# ---------------------------------------------------------------------------------------------
# read_bytes, exists, resolve


def test_read_bytes_missing(base_url: str) -> None:
    missing = join(base_url, "missing.bin")
    with pytest.raises(FileNotFoundError) as info:
        read_bytes(missing)
    assert info.value.filename == missing
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_exists(base_url: str) -> None:
    target = join(base_url, "d", "a.bin")
    assert not exists(target)
    _write(target)
    assert exists(target)
    assert exists(join(base_url, "d"))


def test_resolve(base_url: str) -> None:
    fs, path = resolve(join(base_url, "a.bin"))
    assert is_local(fs) == (not base_url.startswith(("memory://", "s3://")))
    assert path.endswith("/a.bin")
    assert "://" not in path


def test_bad_url_type() -> None:
    with pytest.raises(TypeError, match=r"url must be a str or os\.PathLike"):
        resolve(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"url must be a str or os\.PathLike"):
        list_files(b"/tmp")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# join


@pytest.mark.parametrize(
    ("url", "parts", "expected"),
    [
        ("memory://x/y", ("a.bin",), "memory://x/y/a.bin"),
        ("memory://x/y/", ("a.bin",), "memory://x/y/a.bin"),
        ("memory://", ("x", "a.bin"), "memory://x/a.bin"),
        ("memory:///x", ("a.bin",), "memory:///x/a.bin"),
        ("s3://bucket/dir", ("part-0", "a.bin"), "s3://bucket/dir/part-0/a.bin"),
        ("s3://bucket", ("/a/", "b.bin"), "s3://bucket/a/b.bin"),
        ("s3://bucket/dir", ("sub/a.bin",), "s3://bucket/dir/sub/a.bin"),
        ("file:///tmp/x", ("a.bin",), "file:///tmp/x/a.bin"),
        ("file:///", ("a.bin",), "file:///a.bin"),
        ("simplecache::s3://b/dir", ("a.bin",), "simplecache::s3://b/dir/a.bin"),
        ("s3://bucket/dir", (), "s3://bucket/dir"),
        ("s3://bucket/dir", ("", "a.bin"), "s3://bucket/dir/a.bin"),
    ],
)
def test_join_urls(url: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(url, *parts) == expected


def test_join_local_paths(tmp_path: pathlib.Path) -> None:
    assert join(str(tmp_path), "a", "b.bin") == os.path.join(str(tmp_path), "a", "b.bin")
    assert join(tmp_path, "b.bin") == os.path.join(str(tmp_path), "b.bin")
    assert join(tmp_path, pathlib.Path("b.bin")) == os.path.join(str(tmp_path), "b.bin")
    # A part never replaces the base, unlike os.path.join.
    assert join(str(tmp_path), os.sep + "b.bin") == os.path.join(str(tmp_path), "b.bin")


def test_join_result_resolves_to_the_same_file(base_url: str) -> None:
    target = _write(join(base_url, "d", "a.bin"), b"abc")
    fs, path = resolve(base_url)
    assert fs.cat_file(path + "/d/a.bin") == b"abc"
    assert read_bytes(target) == b"abc"


# ---------------------------------------------------------------------------------------------
# atomic_local_path (local file systems only)


def test_atomic_local_path_commits(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "out" / "a.bin"
    with atomic_local_path(target) as tmp:
        assert isinstance(tmp, str)
        assert os.path.dirname(tmp) == str(target.parent)  # same directory: rename is atomic
        assert os.path.basename(tmp).startswith(".")
        assert os.path.exists(tmp)  # reserved with an exclusive create
        with open(tmp, "wb") as f:
            f.write(b"abc")
        assert not target.exists()
        assert list_files(tmp_path) == []
    assert target.read_bytes() == b"abc"
    assert os.listdir(target.parent) == ["a.bin"]


def test_atomic_local_path_failure_removes_the_temporary_file(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_local_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["a.bin"]
    assert target.read_bytes() == b"old"


def test_atomic_local_path_writer_may_replace_the_temporary_file(tmp_path: pathlib.Path) -> None:
    # A native writer may unlink and recreate the file at the path it is given.
    target = tmp_path / "a.bin"
    with atomic_local_path(target) as tmp:
        os.unlink(tmp)
        with open(tmp, "xb") as f:
            f.write(b"abc")
    assert target.read_bytes() == b"abc"


def test_atomic_local_path_overwrite_false(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError) as info, atomic_local_path(target, overwrite=False):
        pytest.fail("the block must not run")
    assert info.value.filename == str(target)
    # The target appearing while the block runs is caught at the commit.
    other = tmp_path / "b.bin"
    with pytest.raises(FileExistsError), atomic_local_path(other, overwrite=False) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"mine")
        other.write_bytes(b"theirs")
    assert other.read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]


def test_atomic_local_path_accepts_file_urls_only(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a.bin"
    with atomic_local_path("file://" + target.as_posix()) as tmp, open(tmp, "wb") as f:
        f.write(b"abc")
    assert target.read_bytes() == b"abc"
    with (
        pytest.raises(ValueError, match="must be on the local file system"),
        atomic_local_path("memory://x/a.bin"),
    ):
        pytest.fail("the block must not run")


def test_atomic_local_path_onto_a_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(IsADirectoryError), atomic_local_path(tmp_path):
        pytest.fail("the block must not run")


def test_atomic_local_path_long_name(tmp_path: pathlib.Path) -> None:
    target = tmp_path / ("n" * 250)
    with atomic_local_path(target) as tmp, open(tmp, "wb") as f:
        f.write(b"abc")
    assert target.read_bytes() == b"abc"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_local_path_uses_normal_permissions(tmp_path: pathlib.Path) -> None:
    # Unlike tempfile.mkstemp (0600), committed files get the permissions open() gives.
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    _write(str(tmp_path / "a.bin"))
    mode = stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode)


# --- saving over something that is not a regular file is refused, and it stays what it was


def _special_entries(tmp_path):
    """A FIFO, a listening Unix socket, a directory, a link to a device and a dangling link."""
    import socket

    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    sock_path = tmp_path / "socket.safetensors"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    directory = tmp_path / "dir.safetensors"
    directory.mkdir()
    device = tmp_path / "device.safetensors"
    device.symlink_to("/dev/null")
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "nothing")
    entries = {
        fifo: (stat.S_ISFIFO, "a pipe"),
        sock_path: (stat.S_ISSOCK, "a socket"),
        directory: (stat.S_ISDIR, "Is a directory"),
        device: (stat.S_ISLNK, "a device"),
        dangling: (stat.S_ISLNK, "symbolic link to nothing"),
    }
    return sock, entries


@pytest.mark.parametrize("writer", ["atomic_local_path", "open_output", "save"])
def test_saving_over_a_non_regular_file_is_refused(tmp_path, writer):
    import numpy as np

    from sparkbatch.data import DataSet

    sock, entries = _special_entries(tmp_path)
    try:
        for path, (is_kind, message) in entries.items():
            with pytest.raises(OSError, match=message) as caught:
                if writer == "atomic_local_path":
                    with atomic_local_path(str(path)) as tmp:
                        open(tmp, "wb").close()
                elif writer == "open_output":
                    with open_output(str(path)) as f:
                        f.write(b"x")
                else:
                    DataSet(np.zeros((1, 1), np.float32)).save(str(path))
            assert str(path) in str(caught.value)
            assert is_kind(os.lstat(path).st_mode), f"{path} was replaced"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in entries)
    finally:
        sock.close()
