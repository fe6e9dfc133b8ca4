"""FileBatch archives (DL4J's zip layout, hostile archives) and the two creators of them,
create_file_batches_local and create_file_batches_spark."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest

from sparkbatch import FormatError
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.spark import create_file_batches_local, create_file_batches_spark, list_paths
from sparkbatch.spark.file_batches import WriteFileBatches, plan_file_batches
from sparkbatch.storage import FileBatch

URIS = ["file:///data/cat/a.jpg", "s3://bucket/raw/README", "memory://x/dog/b.PNG"]
FILES = [b"\xff\xd8jpeg bytes", b"", b"\x89PNG bytes" * 50]


class _Unseekable(io.RawIOBase):
    """A write-only stream without seek, as Java's ZipOutputStream writes to: zipfile then
    puts sizes and CRCs in data descriptors after each entry."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.data += b
        return len(b)


def _zip(entries, *, compression=zipfile.ZIP_DEFLATED, seekable=True) -> bytes:
    """An archive of ``(name, bytes)`` entries in this order (duplicates allowed)."""
    sink = io.BytesIO() if seekable else _Unseekable()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(sink, "w", compression=compression) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return sink.getvalue() if seekable else bytes(sink.data)


def _dl4j(uris, files, order=None) -> list[tuple[str, bytes]]:
    """The entries DL4J's FileBatch.writeAsZip writes (in ``order`` of the files if given)."""
    exts = [
        u.rsplit("/", 1)[-1].rpartition(".")[2] if "." in u.rsplit("/", 1)[-1] else "bin"
        for u in uris
    ]
    indices = order if order is not None else range(len(files))
    return [("originalUris.txt", "\n".join(uris).encode())] + [
        (f"file_{i}.{exts[i]}", files[i]) for i in indices
    ]


# --- the archive -----------------------------------------------------------------------------


def test_round_trip_through_a_file_and_bytes(tmp_path):
    batch = FileBatch(FILES, URIS)
    target = tmp_path / "out" / "batch.zip"
    batch.write_zip(str(target))
    assert FileBatch.read_zip(str(target)) == batch
    assert FileBatch.read_zip(target.read_bytes()) == batch
    assert list(batch) == list(zip(URIS, FILES, strict=True))
    assert len(batch) == 3 and batch != FileBatch(FILES[:2], URIS[:2])
    assert repr(batch) == (
        "FileBatch(3 files, 512 bytes: file:///data/cat/a.jpg, s3://bucket/raw/README, "
        "memory://x/dog/b.PNG)"
    )
    assert [p.name for p in target.parent.iterdir()] == ["batch.zip"]  # no temporary left
    with pytest.raises(FileExistsError, match="overwrite=True"):
        batch.write_zip(str(target))
    FileBatch([b"x"], ["y.bin"]).write_zip(str(target), overwrite=True)
    assert FileBatch.read_zip(str(target)).files == [b"x"]
    empty = FileBatch([], [])
    assert (
        FileBatch.read_zip(empty.to_zip_bytes()) == empty
        and repr(empty) == "FileBatch(0 files, 0 bytes)"
    )


def test_the_zip_layout_is_dl4js():
    data = FileBatch(FILES, URIS).to_zip_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == [
            "originalUris.txt",
            "file_0.jpg",
            "file_1.bin",
            "file_2.PNG",
        ]
        assert archive.read("originalUris.txt") == "\n".join(URIS).encode()
        assert [archive.read(i) for i in infos[1:]] == FILES
        assert [i.compress_type for i in infos] == [zipfile.ZIP_DEFLATED] + [zipfile.ZIP_STORED] * 3
    # Java's ZipInputStream refuses stored entries whose sizes come after the data
    assert all(i.flag_bits & 0x08 == 0 for i in infos)
    assert data == FileBatch(FILES, URIS).to_zip_bytes()  # fixed timestamps: same bytes


def test_an_archive_built_as_dl4j_writes_it_reads_back():
    uris = ["file:/home/u/img/cat/0.jpg", "file:/home/u/img/dog/1.jpeg", "file:/x/noext"]
    files = [b"a" * 100, b"b", b"c" * 7]
    # DL4J deflates every entry through a stream (data descriptors); entries mapped by index
    data = _zip(_dl4j(uris, files, order=[2, 0, 1]), seekable=False)
    assert FileBatch.read_zip(data) == FileBatch(files, uris)
    # a trailing newline is dropped, as Java's String.split drops trailing empty strings
    entries = [("originalUris.txt", b"file:/a.png\n")] + [("file_0.png", b"png")]
    assert FileBatch.read_zip(_zip(entries)).original_uris == ["file:/a.png"]


# DL4J's FileBatch.readFromZip and writeAsZip (nd4j-common), restated with the JDK's zip streams:
# reads the archive args[0] (prints the URIs, then each file as hex), writes args[1].
_JAVA = """
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.zip.*;

public class FileBatchCompat {
    public static void main(String[] args) throws Exception {
        String uris = null;
        Map<Integer, byte[]> files = new HashMap<>();
        try (ZipInputStream zis = new ZipInputStream(new FileInputStream(args[0]))) {
            for (ZipEntry ze; (ze = zis.getNextEntry()) != null; ) {
                byte[] bytes = zis.readAllBytes();
                String name = ze.getName();
                if (name.equals("originalUris.txt")) {
                    uris = new String(bytes, StandardCharsets.UTF_8);
                } else {
                    String index = name.substring(name.indexOf("_") + 1, name.indexOf("."));
                    files.put(Integer.parseInt(index), bytes);
                }
            }
        }
        System.out.println(String.join("|", uris.split("\\n")));
        for (int i = 0; i < files.size(); i++) {
            System.out.println(HexFormat.of().formatHex(files.get(i)));
        }
        List<String> out = Arrays.asList("file:/home/u/cat/0.jpg", "file:/home/u/dog/noext");
        try (ZipOutputStream zos = new ZipOutputStream(new FileOutputStream(args[1]))) {
            zos.putNextEntry(new ZipEntry("originalUris.txt"));
            zos.write(String.join("\\n", out).getBytes(StandardCharsets.UTF_8));
            String[] ext = {"jpg", "bin"};
            for (int i = 0; i < 2; i++) {
                zos.putNextEntry(new ZipEntry("file_" + i + "." + ext[i]));
                zos.write(("java file " + i).getBytes(StandardCharsets.UTF_8));
            }
        }
    }
}
"""


@pytest.mark.skipif(shutil.which("java") is None, reason="needs a JDK (Spark's)")
def test_archives_read_on_javas_zip_streams_both_ways(tmp_path):
    source = tmp_path / "FileBatchCompat.java"
    source.write_text(_JAVA)
    FileBatch(FILES, URIS).write_zip(str(tmp_path / "py.zip"))
    out = subprocess.run(
        ["java", str(source), str(tmp_path / "py.zip"), str(tmp_path / "java.zip")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert out == ["|".join(URIS)] + [f.hex() for f in FILES]
    assert FileBatch.read_zip(str(tmp_path / "java.zip")) == FileBatch(
        [b"java file 0", b"java file 1"], ["file:/home/u/cat/0.jpg", "file:/home/u/dog/noext"]
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="one URI per file"):
        FileBatch([b"a"], [])
    with pytest.raises(ValueError, match="without a newline"):
        FileBatch([b"a"], ["x\ny"])
    with pytest.raises(TypeError, match=r"files\[1\] must be bytes"):
        FileBatch([b"a", "b"], ["x", "y"])
    with pytest.raises(TypeError, match="sequences"):
        FileBatch(b"ab", ["x", "y"])
    with pytest.raises(ValueError, match="max_entries"):
        FileBatch.read_zip(b"", max_entries=-1)


_URIS = ("originalUris.txt", b"a.jpg\nb.jpg")
_GOOD = [_URIS, ("file_0.jpg", b"0"), ("file_1.jpg", b"1")]


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (
            [_URIS, ("../file_0.jpg", b"0"), ("file_1.jpg", b"1")],
            "unexpected entry '../file_0.jpg'",
        ),
        ([_URIS, ("file_0.jpg", b"0"), ("/abs/file_1.jpg", b"1")], "unexpected entry '/abs/"),
        (
            [_URIS, ("file_0.jpg", b"0"), ("file_1.jpg/", b""), ("file_1.jpg", b"1")],
            "unexpected entry 'file_1.jpg/'",
        ),
        ([_URIS, ("file_0.jpg", b"0"), ("file_0.png", b"1")], "both hold file 0"),
        ([_URIS, ("file_0.jpg", b"0"), ("file_2.jpg", b"1")], "file 1 is missing"),
        (
            [_URIS, ("file_0.jpg", b"0"), ("file_1.jpg", b"1"), ("notes.txt", b"")],
            "unexpected entry 'notes.txt'",
        ),
        (
            [_URIS, ("file_0.jpg", b"0"), ("file_1.jpg", b"1"), ("file_01.jpg", b"1")],
            "unexpected entry 'file_01.jpg'",
        ),
        (
            [_URIS, _URIS, ("file_0.jpg", b"0"), ("file_1.jpg", b"1")],
            "originalUris.txt appears twice",
        ),
        ([("file_0.jpg", b"0"), ("file_1.jpg", b"1")], "no originalUris.txt entry"),
        ([_URIS, ("file_0.jpg", b"0")], "lists 2 URI(s) but the archive holds 1 file"),
        ([("originalUris.txt", b"\xff\xfe"), ("file_0.jpg", b"0")], "not UTF-8"),
        ([("originalUris.txt", b"a\n\nb"), ("file_0.jpg", b"0")], "an empty line (URI 1)"),
        ([_URIS, ("file_0.jpg", bytes(2 << 20)), ("file_1.jpg", b"1")], "ratio over max_ratio=100"),
    ],
)
def test_hostile_archives_are_a_format_error_naming_the_archive(tmp_path, entries, problem):
    path = tmp_path / "hostile.zip"
    path.write_bytes(_zip(entries))
    with pytest.raises(FormatError, match=str(path)) as caught:
        FileBatch.read_zip(str(path))
    assert problem in str(caught.value)


def test_size_and_count_limits(tmp_path):
    data = _zip(_GOOD[:2] + [("file_1.jpg", b"x" * 5000)], compression=zipfile.ZIP_STORED)
    with pytest.raises(FormatError, match=r"the archive bytes: the entries declare 5,\d+ bytes"):
        FileBatch.read_zip(data, max_total_bytes=4000)
    with pytest.raises(FormatError, match="b.zip: 3 entries, more than max_entries=2"):
        FileBatch.read_zip(data, name="b.zip", max_entries=2)
    with pytest.raises(FormatError, match="over 2,058 bytes, more than its limits allow"):
        FileBatch.read_zip(data, max_total_bytes=10, max_entries=1)  # refused before parsing
    assert len(FileBatch.read_zip(data, max_total_bytes=5013, max_entries=3)) == 2
    # the ratio limit spares small entries (flat images deflate far better than 100:1)
    small = _zip([("originalUris.txt", b"a.bmp"), ("file_0.bmp", bytes(500_000))])
    assert FileBatch.read_zip(small).files == [bytes(500_000)]


def test_truncated_corrupt_and_foreign_files(tmp_path):
    data = FileBatch(FILES, URIS).to_zip_bytes()
    path = tmp_path / "cut.zip"
    for cut in (data[:-30], data[: len(data) // 2], data[:3]):
        path.write_bytes(cut)
        with pytest.raises(FormatError, match=f"{path}: (a truncated or corrupt|not a) zip"):
            FileBatch.read_zip(str(path))
    corrupt = bytearray(data)
    corrupt[data.index(b"PNG bytes") + 3] ^= 0xFF  # a stored file's byte: its CRC fails
    with pytest.raises(FormatError, match="entry 'file_2.PNG' is corrupt or truncated"):
        FileBatch.read_zip(bytes(corrupt))
    path.write_bytes(b"GIF89a\x01\x00\x01\x00" + bytes(40))
    with pytest.raises(FormatError, match=rf"{path}: not a zip archive.*b'GIF89a"):
        FileBatch.read_zip(str(path))
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        FileBatch.read_zip(str(tmp_path / "missing.zip"))


def test_deflated_entries_are_checked_as_they_inflate():
    text = b"an image's bytes, " * 400  # deflates well
    data = _zip([("originalUris.txt", b"a.bmp"), ("file_0.bmp", text)])
    assert FileBatch.read_zip(data).files == [text]
    start = data.index(b"PK\x03\x04", 10)  # file_0's local header, after originalUris.txt
    payload = start + 30 + len("file_0.bmp")
    flipped = bytearray(data)
    flipped[payload + 20] ^= 0x55  # a byte of the deflate stream
    with pytest.raises(FormatError, match="entry 'file_0.bmp' is corrupt or truncated"):
        FileBatch.read_zip(bytes(flipped), name="flip.zip")
    # a directory that declares 10 bytes for 7,200: refused as it inflates past the limit
    central = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)  # file_0's entry
    lying = bytearray(data)
    lying[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(FormatError, match="'file_0.bmp' inflates past max_total_bytes=1,000"):
        FileBatch.read_zip(bytes(lying), max_total_bytes=1000)
    # a directory entry pointing at no local header
    moved = bytearray(data)
    offset = int.from_bytes(data[central + 42 : central + 46], "little")
    moved[central + 42 : central + 46] = (offset + 1).to_bytes(4, "little")
    with pytest.raises(FormatError, match="no local file header where the directory points"):
        FileBatch.read_zip(bytes(moved))


# --- creating archives -----------------------------------------------------------------------


def _images(root: Path) -> dict[str, bytes]:
    """Seven image files in class directories, and files that must be left out."""
    wanted = {}
    for i, name in enumerate(
        ["cat/0.png", "cat/1.PNG", "cat/2.jpg", "dog/3.png", "dog/4.jpg", "dog/5.JPG", "6.png"]
    ):
        wanted[name] = f"image {i}".encode() * (i + 1)
    skipped = {"dog/notes.txt": b"n", ".hidden.png": b"h", "_tmp/7.png": b"t", "cat/.8.png": b"c"}
    for name, data in {**wanted, **skipped}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {str(root / name): data for name, data in wanted.items()}


def _contents(urls: list[str]) -> list[FileBatch]:
    return [FileBatch.read_zip(u) for u in urls]


def _check_every_file_once(batches: list[FileBatch], expected: dict[str, bytes]) -> None:
    seen = {uri.removeprefix("file://"): data for batch in batches for uri, data in batch}
    assert seen == expected
    assert sum(len(b) for b in batches) == len(expected)


def test_create_file_batches_local(tmp_path):
    expected = _images(tmp_path / "images")
    out = tmp_path / "batches"
    urls = create_file_batches_local(
        tmp_path / "images", out, 3, extensions=["png", ".JPG"], seed=7
    )
    assert urls == [str(out / f"file_batch_{i:06d}.zip") for i in range(3)]
    batches = _contents(urls)
    assert [len(b) for b in batches] == [3, 3, 1]
    _check_every_file_once(batches, expected)
    assert minibatch_files(str(out)) == urls  # what list_paths lists: the manifest's archives
    again = create_file_batches_local(
        tmp_path / "images", tmp_path / "again", 3, extensions="png jpg".split(), seed=7
    )
    assert [Path(u).read_bytes() for u in again] == [Path(u).read_bytes() for u in urls]
    other = _contents(create_file_batches_local(tmp_path / "images", tmp_path / "o", 3, seed=8))
    assert [b.original_uris for b in other] != [b.original_uris for b in batches]
    pngs = _contents(
        create_file_batches_local(
            tmp_path / "images", tmp_path / "p", 10, extensions="png", recursive=False
        )
    )
    assert [b.original_uris for b in pngs] == [[f"file://{tmp_path}/images/6.png"]]


def test_a_local_rerun_needs_overwrite_and_removes_only_its_own_archives(tmp_path):
    _images(tmp_path / "images")
    out = tmp_path / "images" / "batches"  # inside the source: its archives are not sources
    create_file_batches_local(tmp_path / "images", out, 2, extensions=["png", "jpg"], seed=1)
    assert len(os.listdir(out)) == 5  # four archives and the manifest
    with pytest.raises(FileExistsError, match="overwrite=True"):
        create_file_batches_local(tmp_path / "images", out, 2, seed=1)
    urls = create_file_batches_local(tmp_path / "images", out, 4, overwrite=True, seed=1)
    assert sorted(os.listdir(out)) == [
        "_manifest.json",
        "file_batch_000000.zip",
        "file_batch_000001.zip",
    ]
    assert sum(len(b) for b in _contents(urls)) == 8  # dog/notes.txt too, no archive
    (out / "foreign.zip").write_bytes(b"PK")
    with pytest.raises(FileExistsError, match="foreign.zip"):
        create_file_batches_local(tmp_path / "images", out, 4, overwrite=True, seed=1)
    with pytest.raises(FileNotFoundError, match="no files with extension gif under"):
        create_file_batches_local(tmp_path / "images", tmp_path / "x", 4, extensions=["gif"])
    with pytest.raises(ValueError, match="another directory than src_dir"):
        create_file_batches_local(tmp_path / "images", f"{tmp_path}/images/", 4)
    with pytest.raises(NotADirectoryError, match="6.png is a file"):
        create_file_batches_local(tmp_path / "images" / "6.png", tmp_path / "x", 4)


def test_plan_is_deterministic_for_a_seed():
    urls = [f"u{i}" for i in range(10)]
    plan = plan_file_batches(urls, 4, seed=3)
    assert plan == plan_file_batches(urls, 4, seed=3) and [len(g) for g in plan] == [4, 4, 2]
    assert sorted(u for g in plan for u in g) == sorted(urls)


# --- on Spark --------------------------------------------------------------------------------


@pytest.mark.spark
def test_create_file_batches_spark_from_a_directory_and_an_rdd(sc, tmp_path):
    expected = _images(tmp_path / "images")
    from_dir = create_file_batches_spark(
        sc, str(tmp_path / "images"), str(tmp_path / "d"), 3, seed=5
    )
    batches = _contents(from_dir)
    assert [len(b) for b in batches] == [3, 3, 2]  # dog/notes.txt is a file too
    _check_every_file_once(batches, {**expected, str(tmp_path / "images/dog/notes.txt"): b"n"})
    assert list_paths(sc, str(tmp_path / "d")).collect() == from_dir
    rdd = sc.parallelize(sorted(expected), 3)
    from_rdd = create_file_batches_spark(sc, rdd, str(tmp_path / "r"), 2, seed=5)
    assert [os.path.basename(u) for u in from_rdd] == [f"file_batch_{i:06d}.zip" for i in range(4)]
    _check_every_file_once(_contents(from_rdd), expected)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        create_file_batches_spark(sc, rdd, str(tmp_path / "r"), 2, seed=5)
    again = create_file_batches_spark(sc, rdd, str(tmp_path / "r"), 4, seed=5, overwrite=True)
    assert len(again) == 2 and len(os.listdir(tmp_path / "r")) == 3


class _FailOnFirstAttempt:
    """Writes archives through WriteFileBatches, then fails partition 0's first attempt."""

    def __init__(self, inner: WriteFileBatches) -> None:
        self.inner = inner

    def __call__(self, items):
        from pyspark import TaskContext

        written = list(self.inner(items))
        if TaskContext.get().partitionId() == 0 and TaskContext.get().attemptNumber() == 0:
            raise RuntimeError("injected failure after writing the archives")
        return written


@pytest.mark.spark
def test_a_retried_task_rewrites_its_own_archives(sc, tmp_path):
    expected = _images(tmp_path / "images")
    groups = plan_file_batches(sorted(expected), 2, seed=0)
    out = str(tmp_path / "retry")
    writer = _FailOnFirstAttempt(WriteFileBatches(out))
    written = sc.parallelize(list(enumerate(groups)), 2).mapPartitions(writer).collect()
    assert sorted(os.listdir(out)) == [f"file_batch_{i:06d}.zip" for i in range(4)]
    assert [u for u, _ in written] == [os.path.join(out, f) for f in sorted(os.listdir(out))]
    _check_every_file_once(_contents([u for u, _ in written]), expected)
