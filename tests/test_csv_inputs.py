"""CSV input that is awkward or wrong: results that must not depend on how the input is split,
and files that are not what they seem. On Spark (``csv_to_datasets``) and on one machine
(``CSVRecordReader``)."""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from sparkbatch import DataSet
from sparkbatch.convert import LabelSpec
from sparkbatch.errors import CsvError
from sparkbatch.records import CSVRecordReader
from sparkbatch.records.csv_files import UTF8_BOM, decompression_error
from sparkbatch.records.csv_parser import CsvOptions
from sparkbatch.spark import RangesToDataSets, csv_to_datasets, executor_errors
from sparkbatch.storage import LineRange, plan_line_ranges

N_CLASSES = 10
HEADER = "a,b,c,d,e,label"

# (lines, the good rows among them, how many lines are bad), NOTE [one record per line]
RECORDS = [
    (["1.5,2,3,4,5,7"], [[1.5, 2, 3, 4, 5, 7]], 0),
    (['"1.5", 2 ,"3e0",4,5,"7"'], [[1.5, 2, 3, 4, 5, 7]], 0),
    (["-1,0.25,nan,4,5,0"], [[-1, 0.25, np.nan, 4, 5, 0]], 0),
    (["1,2,3,4,5,12"], [], 1),  # class outside [0, 10)
    (["1,x,3,4,5,1"], [], 1),
    (["1,2,3"], [], 1),
    (['1,"2', '3",4,5,6,7'], [], 2),  # a quoted line break: both lines are bad
    (['1,"a', "b", 'c",3,4,5,6'], [], 3),
    (['1,"note', "9,8,7,6,5,4", 'end",3,4,5,6'], [[9, 8, 7, 6, 5, 4]], 2),  # a line of its own
    (['1,"2,3,4,5,6'], [], 1),  # a quote that never closes
    ([""], [], 0),
    (["   "], [], 0),
]


WEIGHTS = np.array([8.0, 8, 8] + [1] * (len(RECORDS) - 3)) / (24 + len(RECORDS) - 3)


def _file(rng: np.random.Generator, n: int, newline: str, trailing: bool) -> tuple[str, list, int]:
    lines, rows, bad = [HEADER], [], 0
    kinds = rng.choice(len(RECORDS), n, p=WEIGHTS)
    kinds[0] = 6  # a bad first row (a quoted line break) does not set the width
    for i in kinds:
        record_lines, record_rows, record_bad = RECORDS[i]
        lines += record_lines
        rows += record_rows
        bad += record_bad
    return newline.join(lines) + (newline if trailing else ""), rows, bad


@pytest.fixture
def messy(tmp_path):
    """Three files with a header each: LF, CRLF without a final line break, LF.

    The folder, the good rows' features and labels, the count of bad lines, and the same three
    for each file.
    """
    rng = np.random.default_rng(7)
    files = []
    for i, (newline, trailing) in enumerate([("\n", True), ("\r\n", False), ("\n", True)]):
        text, file_rows, file_bad = _file(rng, 50, newline, trailing)
        (tmp_path / f"part-{i}.csv").write_bytes(text.encode())
        table = np.array(file_rows, np.float32)
        files.append((table[:, :5], table[:, 5].astype(int), file_bad))
    features, labels, bad = zip(*files, strict=True)
    return str(tmp_path), np.concatenate(features), np.concatenate(labels), sum(bad), files


def _merged(rdd) -> DataSet:
    return DataSet.merge(rdd.collect())


def _check(ds: DataSet, features: np.ndarray, labels: np.ndarray) -> None:
    np.testing.assert_array_equal(ds.features, features)
    np.testing.assert_array_equal(ds.labels, np.eye(N_CLASSES, dtype=np.float32)[labels])


ARGS = {"label_index": -1, "num_classes": N_CLASSES, "skip_lines": 1}


@pytest.mark.spark
def test_skip_results_do_not_depend_on_the_split_size(sc, messy):
    path, features, labels, bad, files = messy
    assert bad > 20 and len(labels) > 100
    # 64 bytes: ranges start inside lines and quoted fields; 1 << 30: one range a file
    for split_size in (64, 301, 1 << 30):
        out = csv_to_datasets(path, on_error="skip", split_size=split_size, sc=sc, **ARGS)
        _check(_merged(out), features, labels)
        assert out.skipped.value == bad, split_size
    # 11 bytes, shorter than most lines (ranges that hold no line start): ~80 tasks a file, so
    # the CRLF file without a final line break only
    crlf = str(Path(path, "part-1.csv"))
    out = csv_to_datasets(crlf, on_error="skip", split_size=11, sc=sc, **ARGS)
    _check(_merged(out), *files[1][:2])
    assert out.skipped.value == files[1][2] > 0


@pytest.mark.spark
def test_skip_results_do_not_depend_on_the_partitions_of_an_rdd(sc, messy):
    path, *_ = messy
    text = Path(path, "part-0.csv").read_text()
    lines = text.splitlines()
    whole = csv_to_datasets(sc.parallelize(lines, 1), on_error="skip", **ARGS)
    reference, skipped = _merged(whole), whole.skipped.value
    assert skipped > 0
    for partitions in (2, 7, len(lines) + 3):  # the header in one partition; a line each
        out = csv_to_datasets(sc.parallelize(lines, partitions), on_error="skip", **ARGS)
        merged = _merged(out)
        np.testing.assert_array_equal(merged.features, reference.features)
        np.testing.assert_array_equal(merged.labels, reference.labels)
        assert out.skipped.value == skipped, partitions


@pytest.mark.spark
def test_header_lines_longer_than_a_range(sc, tmp_path):
    (tmp_path / "h.csv").write_text("first header line\nsecond,header,line\n1,2,3\n4,5,6\n")
    for split_size in (3, 7, 20, 1000):
        out = csv_to_datasets(
            str(tmp_path / "h.csv"),
            label_index=-1,
            num_classes=7,
            skip_lines=2,
            split_size=split_size,
            sc=sc,
        )
        ds = _merged(out)
        assert ds.features.tolist() == [[1, 2], [4, 5]], split_size


@pytest.mark.spark
def test_a_quoted_line_break_is_named_by_file_and_line(sc, tmp_path):
    lines = [HEADER] + ["1,2,3,4,5,6"] * 30 + ['1,"two', 'lines",3,4,5,6'] + ["1,2,3,4,5,6"] * 30
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n")
    for split_size in (64, 1 << 20):
        with pytest.raises(CsvError) as excinfo, executor_errors():
            csv_to_datasets(str(path), split_size=split_size, sc=sc, **ARGS).count()
        message = str(excinfo.value)
        # the first of the two lines, or the second where a range begins there
        assert (
            f"{path}, line 32, column 1: expected a closing quote before the end of the line, "
            "found '\"two'"
            in message
            or f"{path}, line 33, column 0: expected a number, found 'lines\"'" in message
        ), message


# -- files that are not what they seem ---------------------------------------------------------

GOOD = "a,b,c,d,e,label\n1,2,3,4,5,6\n7,8,9,10,11,2\n"
GOOD_ROWS = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 2]]

FOREIGN = {  # name: (bytes, what the error says after "expected UTF-8 CSV text, found ")
    "x.csv": (gzip.compress(GOOD.encode()), "gzip-compressed data: name it x.csv.gz to have"),
    "u16.csv": (GOOD.encode("utf-16"), "UTF-16 text (little-endian, with a byte order mark)"),
    "u16be.csv": (GOOD.encode("utf-16-be"), "UTF-16 text (big-endian, no byte order mark)"),
    "u16le.csv": (GOOD.encode("utf-16-le"), "UTF-16 text (little-endian, no byte order mark)"),
    "image.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "a PNG image"),
    "blob.bin": (bytes(range(256)) * 8, "binary data (a NUL byte at offset 0)"),
    "mac.csv": (GOOD.replace("\n", "\r").encode(), "lines that end in CR alone"),
    "book.xlsx": (b"PK\x03\x04\x14\x00" + bytes(100), "an Excel workbook (a zip archive): save"),
    "zipped.csv": (b"PK\x03\x04\x14\x00" + bytes(100), "a zip archive: name it zipped.csv.zip"),
}


@pytest.fixture
def good_dir(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text(GOOD)
    return tmp_path / "d"


def _expected(rows) -> tuple[np.ndarray, np.ndarray]:
    table = np.array(rows, np.float32)
    return table[:, :5], table[:, 5].astype(int)


@pytest.mark.spark
@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_foreign_files_are_named_on_spark(sc, good_dir, name):
    data, what = FOREIGN[name]
    (good_dir / name).write_bytes(data)
    for first in (False, True):  # found where its first range is read, or on the driver
        source = [str(good_dir / "a.csv"), str(good_dir / name)]
        with pytest.raises(CsvError) as excinfo, executor_errors():
            csv_to_datasets(source[::-1] if first else source, split_size=64, sc=sc, **ARGS).count()
        message = str(excinfo.value)
        assert f"{good_dir / name}, line 1: expected UTF-8 CSV text, found {what}" in message


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_foreign_files_are_named_by_the_record_reader(good_dir, name):
    data, what = FOREIGN[name]
    (good_dir / name).write_bytes(data)
    reader = CSVRecordReader(skip_lines=1).initialize([good_dir / "a.csv", good_dir / name])
    with pytest.raises(CsvError) as excinfo:
        list(reader)
    assert f"{good_dir / name}, line 1: expected UTF-8 CSV text, found {what}" in str(excinfo.value)
    assert excinfo.value.source == str(good_dir / name) and excinfo.value.line == 1


def test_a_later_range_of_a_foreign_file_names_it(good_dir):
    """A range that is not the file's first finds bad rows, then looks at the file's head."""
    (good_dir / "blob.bin").write_bytes(b"\x00\x01" + b"1,x,3\n" * 1000)
    url = str(good_dir / "blob.bin")
    size = (good_dir / "blob.bin").stat().st_size
    function = RangesToDataSets(LabelSpec(-1, N_CLASSES), CsvOptions(), 32, None)
    with pytest.raises(CsvError, match=r"blob.bin, line 1: expected UTF-8 CSV text, found bin"):
        list(function([LineRange(url, 3000, 4000, size)]))


@pytest.mark.spark
def test_compressed_files_are_read_whole_and_a_bom_is_dropped(sc, good_dir):
    (good_dir / "a.csv").unlink()
    rows = []
    for i, compress in enumerate([gzip.compress, bz2.compress, lzma.compress, None]):
        lines = [[i, 2, 3, 4, k, k % N_CLASSES] for k in range(50)]
        text = HEADER + "\n" + "".join(",".join(map(str, r)) + "\n" for r in lines)
        rows += lines
        if compress is None:  # plain, with a UTF-8 byte order mark
            (good_dir / "d.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
        else:
            name = ["a.csv.gz", "b.csv.bz2", "c.csv.xz"][i]
            (good_dir / name).write_bytes(compress(text.encode()))
    features, labels = _expected(rows)
    for split_size in (50, 1 << 20):
        out = csv_to_datasets(str(good_dir), split_size=split_size, sc=sc, **ARGS)
        _check(_merged(out), features, labels)
    reader = CSVRecordReader(skip_lines=1).initialize(good_dir)
    assert [r[0] for r in reader] == [r[0] for r in rows]
    # without a header, a byte order mark would spoil the first number
    (good_dir / "e.csv").write_bytes(b"\xef\xbb\xbf1,2,3,4,5,6\n")
    out = csv_to_datasets(str(good_dir / "e.csv"), label_index=-1, num_classes=N_CLASSES, sc=sc)
    assert _merged(out).features.tolist() == [[1, 2, 3, 4, 5]]
    lines = sc.parallelize(["\ufeff1,2,3,4,5,6", "7,8,9,10,11,2"], 2)
    out = csv_to_datasets(lines, label_index=-1, num_classes=N_CLASSES)
    assert _merged(out).features.tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]]


@pytest.mark.spark
def test_a_truncated_compressed_file_is_named(sc, good_dir):
    rng = np.random.default_rng(3)
    text = "".join(",".join(f"{v:.6f}" for v in row) + ",1\n" for row in rng.random((3000, 5)))
    data = gzip.compress(text.encode())
    (good_dir / "t.csv.gz").write_bytes(data[: len(data) // 2])
    expected = "t.csv.gz: expected complete compressed data, found a corrupt or truncated file"
    with pytest.raises(CsvError, match=expected), executor_errors():
        csv_to_datasets(str(good_dir / "t.csv.gz"), sc=sc, **ARGS).count()
    with pytest.raises(CsvError, match=expected.replace(":", ", near line [0-9]+:")):
        list(CSVRecordReader().initialize(good_dir / "t.csv.gz"))


class _FailingFile(io.RawIOBase):
    """A local file whose reads fail, as an object store's do, once one would pass ``good``
    bytes in all."""

    def __init__(self, f, error: OSError, good: int) -> None:
        self.f, self.error, self.left = f, error, good

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self.left:
            raise self.error
        data = self.f.read(size)
        self.left -= len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


STORAGE_ERRORS = {  # as s3fs raises them: no errno
    "missing": lambda path: FileNotFoundError(path),
    "denied": lambda path: PermissionError(f"Access Denied: {path}"),
    "reset": lambda path: OSError(errno.ECONNRESET, "Connection reset by peer", path),
}


@pytest.mark.parametrize("kind", sorted(STORAGE_ERRORS))
@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz", "a.csv.bz2"])
@pytest.mark.parametrize("good", [0, 3000])
def test_a_storage_error_stays_an_oserror_naming_the_file(monkeypatch, tmp_path, kind, name, good):
    """Only corrupt compressed data is a CsvError; a failed read is the OSError it was."""
    rows = "".join(f"{k},2,3,4,5,{k % N_CLASSES}\n" for k in range(2000)).encode()
    compress = {"a.csv": bytes, "a.csv.gz": gzip.compress, "a.csv.bz2": bz2.compress}[name]
    path = tmp_path / name
    path.write_bytes(compress(rows))
    error = STORAGE_ERRORS[kind](str(path))
    opened = LocalFileSystem._open

    def failing_open(self, p, *args, **kwargs):
        return _FailingFile(opened(self, p, *args, **kwargs), error, good)

    monkeypatch.setattr(LocalFileSystem, "_open", failing_open)
    with pytest.raises(OSError) as excinfo:
        list(CSVRecordReader().initialize(path))
    assert excinfo.value is error and str(path) in str(excinfo.value)
    size = path.stat().st_size
    compression = None if name == "a.csv" else name.rsplit(".", 1)[1].replace("gz", "gzip")
    function = RangesToDataSets(LabelSpec(-1, N_CLASSES), CsvOptions(), 32, None)
    with pytest.raises(OSError) as excinfo:
        list(function([LineRange(str(path), 0, size, size, compression)]))
    assert excinfo.value is error and str(path) in str(excinfo.value)


@pytest.mark.parametrize(
    "error",
    [
        EOFError("Compressed file ended before the end-of-stream marker was reached"),
        OSError("Invalid data stream"),  # bz2
        gzip.BadGzipFile("Not a gzipped file (b'ab')"),
        lzma.LZMAError("Input format not supported by decoder"),
        zlib.error("Error -3 while decompressing data: invalid block type"),
        zipfile.BadZipFile("File is not a zip file"),
    ],
)
def test_only_corrupt_compressed_data_is_a_csv_error(error):
    found = decompression_error("s3://b/a.csv.gz", error, line=3)
    assert isinstance(found, CsvError) and found.source == "s3://b/a.csv.gz"
    assert "s3://b/a.csv.gz, near line 3: expected complete compressed data" in str(found)
    assert decompression_error("s3://b/a.csv", error) is None  # not compressed: not corruption
    for other in (
        FileNotFoundError("s3://b/a.csv.gz"),
        PermissionError("Access Denied"),
        OSError(errno.EIO, "Input/output error", "s3://b/a.csv.gz"),
        ValueError("I/O operation on closed file"),
    ):
        assert decompression_error("s3://b/a.csv.gz", other) is None, other


@pytest.mark.spark
def test_a_text_file_that_is_not_csv_names_itself_and_the_table(sc, good_dir):
    (good_dir / "notes.txt").write_text("# Notes\nsome words\n")
    with pytest.raises(CsvError) as excinfo, executor_errors():
        csv_to_datasets(str(good_dir), sc=sc, **ARGS).count()
    assert (
        f"{good_dir / 'notes.txt'}, line 2: expected 6 columns (as in {good_dir / 'a.csv'}, "
        "line 2), found 1: 'some words'"
    ) in str(excinfo.value)


@pytest.mark.spark
def test_binary_lines_in_an_rdd_are_named(sc, tmp_path):
    (tmp_path / "u16.csv").write_bytes(GOOD.encode("utf-16-le"))
    with pytest.raises(CsvError, match="partition 0, line 1: expected UTF-8 CSV text, found bin"):
        csv_to_datasets(sc.textFile(str(tmp_path / "u16.csv")), **ARGS)


# -- settings that do not fit the file ---------------------------------------------------------


@pytest.mark.spark
def test_a_wrong_delimiter_is_suggested(sc, tmp_path):
    (tmp_path / "semi.csv").write_text("1;2;3;4;5;6\n7;8;9;10;11;2\n")
    for source in (str(tmp_path / "semi.csv"), sc.parallelize(["1;2;3;4;5;6", "7;8;9;1;1;2"])):
        with pytest.raises(ValueError, match="no feature column is left") as excinfo:
            csv_to_datasets(source, label_index=-1, num_classes=N_CLASSES, sc=sc)
        assert "is the delimiter ';'? the row is '1;2;3;4;5;6'" in str(excinfo.value)
        with pytest.raises(ValueError, match="label columns 5 are outside a table of 1 col"):
            csv_to_datasets(source, label_index=5, num_classes=N_CLASSES, sc=sc)
    out = csv_to_datasets(
        str(tmp_path / "semi.csv"), delimiter=";", sc=sc, **{**ARGS, "skip_lines": 0}
    )
    assert _merged(out).features.shape == (2, 5)


@pytest.mark.spark
def test_a_header_that_is_not_skipped_is_suggested(sc, good_dir):
    with pytest.raises(CsvError) as excinfo, executor_errors():
        csv_to_datasets(str(good_dir), label_index=-1, num_classes=N_CLASSES, sc=sc).count()
    assert (
        "a.csv, line 1, column 0: expected a number, found 'a' (a header line? pass skip_lines=1)"
        in str(excinfo.value)
    )


def test_ranges_past_the_header_do_not_read_the_start_of_their_file(monkeypatch, tmp_path):
    """NOTE [header ends]: the driver finds where the header lines end; later ranges of that
    file read only themselves, those of other files still count the header lines."""
    import sparkbatch.spark.csv as spark_csv

    header = "a,b,c,d,e,label\n# a second header line\n"
    rows = "".join(f"{k},2,3,4,5,{k % N_CLASSES}\n" for k in range(300))
    paths = [tmp_path / "a.csv", tmp_path / "b.csv"]
    paths[0].write_bytes(UTF8_BOM + (header + rows).encode())
    paths[1].write_text("x\n" * 2 + rows)
    options = CsvOptions(skip_lines=2)
    header_ends: dict[str, int] = {}
    table = spark_csv._file_table([str(p) for p in paths], options, None, header_ends)
    assert table is not None and table.columns == 6
    assert header_ends == {str(paths[0]): len(UTF8_BOM) + len(header)}
    counted = []
    count = spark_csv.count_lines_before

    def counting(url, *args, **kwargs):
        counted.append(url)
        return count(url, *args, **kwargs)

    monkeypatch.setattr(spark_csv, "count_lines_before", counting)
    function = RangesToDataSets(
        LabelSpec(-1, N_CLASSES), options, 32, None, table, header_ends=header_ends
    )
    for path in paths:
        ranges = plan_line_ranges([str(path)], 500)
        assert len(ranges) > 3
        out = DataSet.merge(list(function(ranges)))
        assert out.features[:, 0].tolist() == list(range(300))
    assert set(counted) == {str(paths[1])}  # only the file the driver did not read
    # a header that reaches past a range's start still is one
    header_ends[str(paths[0])] = 10**6
    long = RangesToDataSets(
        LabelSpec(-1, N_CLASSES), options, 32, None, table, header_ends=header_ends
    )
    out = DataSet.merge(list(long(plan_line_ranges([str(paths[0])], 500))))
    assert out.features[:, 0].tolist() == list(range(300))
    # without a table, each range takes the width of its own rows (a view past the BOM)
    own = RangesToDataSets(LabelSpec(-1, N_CLASSES), options, 32, None)
    out = DataSet.merge(list(own(plan_line_ranges([str(paths[0])], 1 << 20))))
    assert out.features[:, 0].tolist() == list(range(300))


def test_a_range_read_by_several_threads_is_the_range(tmp_path, monkeypatch):
    """read_line_range(threads=N) reads a local range in parts at once (8 MiB each at least;
    64 KiB here): the same bytes as one thread, from the file's start, middle and end, into a
    given buffer too; a part that meets the file's end early keeps only what lies before it."""
    from sparkbatch.storage import ranges as storage_ranges
    from sparkbatch.storage import read_line_range
    from sparkbatch.storage.ranges import _read_parts

    monkeypatch.setattr(storage_ranges, "_MIN_PART", 64 << 10)
    parallel_reads: list[int] = []

    def counted(fd: int, offset: int, view: memoryview, parts: int) -> int:
        parallel_reads.append(parts)
        return _read_parts(fd, offset, view, parts)

    monkeypatch.setattr(storage_ranges, "_read_parts", counted)
    path = tmp_path / "big.csv"
    path.write_bytes(b"".join(b"%d,%d\n" % (k, k % 7) for k in range(300_000)))  # 2.7 MB
    for r in plan_line_ranges([str(path)], 1 << 20):
        want, want_begin = read_line_range(r)
        assert len(want) > 400 << 10
        for threads in (2, 3, 8):
            got, begin = read_line_range(r, threads=threads)
            assert begin == want_begin and got == want
        kept = np.zeros(4 << 20, np.uint8)
        got, _ = read_line_range(r, threads=3, buffer=kept)
        assert got.obj is kept and got == want
    assert len(parallel_reads) == 3 * 4 and max(parallel_reads) == 8  # 3 ranges, 4 reads each
    small = tmp_path / "small.bin"
    small.write_bytes(bytes(range(100)))
    view = memoryview(np.zeros(300, np.uint8))
    with open(small, "rb") as f:
        assert _read_parts(f.fileno(), 40, view, 3) == 60  # the first part short: 60 bytes
        assert bytes(view[:60]) == bytes(range(40, 100))


def test_ranges_are_read_into_one_buffer_that_holds_only_the_range(tmp_path):
    """NOTE [read buffer]: a worker reads its ranges into one array, kept from range to range; a
    short range read into a long buffer is that range, not the rest of the buffer's length."""
    import sparkbatch.spark.csv as spark_csv
    from sparkbatch.storage import read_line_range

    path = tmp_path / "t.csv"
    path.write_text("".join(f"{k},{k % 7}\n" for k in range(5000)))
    ranges = plan_line_ranges([str(path)], 9000)
    longest = max(ranges, key=lambda r: len(read_line_range(r)[0]))
    spark_csv._read_buffers.array = None
    arrays = set()
    for r in [longest, *ranges, longest]:
        got, begin = spark_csv._read_range(r, {})
        want, want_begin = read_line_range(r)
        assert (bytes(got), begin) == (bytes(want), want_begin)
        arrays.add(id(got.obj))
    assert arrays == {id(spark_csv._read_buffers.array)}  # the longest first: one throughout
    other: list = []  # another thread has a buffer of its own
    thread = threading.Thread(target=lambda: other.append(spark_csv._read_range(longest, {})))
    thread.start()
    thread.join()
    assert other[0][0].obj is not spark_csv._read_buffers.array
    small = np.zeros(10, np.uint8)
    got, _ = read_line_range(longest, buffer=small)
    assert got.obj is not small and bytes(got) == bytes(read_line_range(longest)[0])
    function = RangesToDataSets(LabelSpec(-1, 7), CsvOptions(), 32, None)
    out = DataSet.merge(list(function(ranges)))
    assert out.features[:, 0].tolist() == list(range(5000))
