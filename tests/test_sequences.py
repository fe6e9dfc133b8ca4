"""Sequences without Spark: CSVSequenceRecordReader, sequence DataSets, padding, masks, merging
under every alignment, export and reload, and bad input."""

from __future__ import annotations

import gzip
import pickle

import fsspec
import numpy as np
import pytest

from sparkbatch.errors import CsvError
from sparkbatch.records import CSVSequenceRecordReader, SequenceRecord
from sparkbatch.storage import open_output


def _csv(table: np.ndarray, header: str | None = None) -> str:
    text = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in table)
    return (header + "\n" + text) if header is not None else text


@pytest.fixture
def memory_dir():
    root = "memory://test-sequences"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists("/test-sequences"):
        fs.rm("/test-sequences", recursive=True)


# -- reader ----------------------------------------------------------------------------------


def test_reader_one_sequence_per_file_in_path_order(tmp_path):
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(t, 3)).round(4) for t in (5, 1, 3)]
    for i, table in enumerate(tables):
        (tmp_path / f"s{i}.csv").write_text(_csv(table, header="a,b,c"))
    reader = CSVSequenceRecordReader(skip_lines=1).initialize(tmp_path)
    assert reader.sources == [str(tmp_path / f"s{i}.csv") for i in range(3)]
    seen = []
    while reader.has_next():
        sequence = reader.next_sequence()
        assert isinstance(sequence, SequenceRecord)
        assert sequence.source == reader.current_source
        assert sequence.lines == tuple(range(2, len(sequence) + 2))
        seen.append(np.array(sequence))
    assert len(seen) == 3
    for got, want in zip(seen, tables, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(StopIteration):
        reader.next_sequence()
    reader.reset()
    assert [len(s) for s in reader] == [5, 1, 3]


def test_reader_values_quotes_blank_lines_and_compression(tmp_path, memory_dir):
    text = 'x,"a, b"\r\n\r\n2, 3 \r\n'
    (tmp_path / "q.csv.gz").write_bytes(gzip.compress(("\ufeff" + text).encode()))
    with open_output(memory_dir + "/m.csv") as f:
        f.write(text.encode())
    reader = CSVSequenceRecordReader().initialize([tmp_path / "q.csv.gz", memory_dir + "/m.csv"])
    first, second = list(reader)
    assert first == second == [["x", "a, b"], [2.0, 3.0]]
    assert first.lines == (1, 3) and second.source == memory_dir + "/m.csv"
    no_quote = CSVSequenceRecordReader(delimiter=";", quote="").parse_sequence(b'"1";2\n', "s")
    assert no_quote == [['"1"', 2.0]]


def test_reader_and_records_pickle(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.csv").write_text(f"{i},1\n{i},2\n")
    reader = CSVSequenceRecordReader(delimiter=",").initialize(tmp_path)
    first = next(reader)
    copy = pickle.loads(pickle.dumps(reader))
    assert repr(copy) == repr(reader)
    assert [s[0][0] for s in copy] == [1.0, 2.0]  # goes on where the original was
    again = pickle.loads(pickle.dumps(first))
    assert again == first and type(again) is SequenceRecord
    assert (again.source, again.lines) == (first.source, first.lines)


def test_reader_settings_are_checked():
    with pytest.raises(ValueError, match="skip_lines must be an int >= 0"):
        CSVSequenceRecordReader(skip_lines=-1)
    with pytest.raises(ValueError, match="delimiter must be one character"):
        CSVSequenceRecordReader(delimiter=",,")
    with pytest.raises(ValueError, match="quote and delimiter must differ"):
        CSVSequenceRecordReader(delimiter=";", quote=";")
    with pytest.raises(RuntimeError, match="call initialize"):
        CSVSequenceRecordReader().has_next()


@pytest.mark.parametrize(
    ("data", "skip", "message"),
    [
        (b"", 0, "e.csv: expected at least one step (a line of values), found an empty file"),
        (b"\n \n", 0, "e.csv: expected at least one step (a line of values), found only blank"),
        (b"a,b\n", 1, "found none after the 1 header line (skip_lines=1)"),
        (b"a,b\nc,d\n\n", 2, "found none after the 2 header lines (skip_lines=2)"),
        (b'1,2\n3,"4\n', 0, "e.csv, line 2: expected well-formed CSV"),
        (b"1,2\n\xff\xfe3\n", 0, "e.csv, line 2: expected UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 0, "e.csv, line 1: expected UTF-8 CSV text, found a PNG"),
    ],
)
def test_reader_bad_files_name_the_file(data, skip, message):
    with pytest.raises(CsvError) as info:
        CSVSequenceRecordReader(skip_lines=skip).parse_sequence(data, "e.csv")
    assert message in str(info.value)
    assert info.value.source == "e.csv"


def test_reader_empty_file_on_disk_names_it(tmp_path):
    (tmp_path / "a.csv").write_text("1,2\n")
    (tmp_path / "b.csv").write_text("")
    reader = CSVSequenceRecordReader().initialize(tmp_path)
    next(reader)
    with pytest.raises(CsvError, match=r"b\.csv: expected at least one step"):
        next(reader)
