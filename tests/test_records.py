"""CSVRecordReader and records_to_dataset, without Spark."""

from __future__ import annotations

import gzip
import pickle

import fsspec
import numpy as np
import pytest

from sparkbatch.convert import record_to_dataset, records_to_dataset
from sparkbatch.errors import CsvError, SparkbatchError
from sparkbatch.records import CSVRecordReader, to_value
from sparkbatch.storage import join, open_output


def _write(path, text: str) -> str:
    path.write_bytes(text.encode())
    return str(path)


@pytest.fixture
def memory_dir():
    root = "memory://test-records"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists("/test-records"):
        fs.rm("/test-records", recursive=True)


def _table(rng: np.random.Generator, rows: int, num_classes: int = 10) -> np.ndarray:
    table = rng.normal(size=(rows, 6)).round(3)
    table[:, 5] = rng.integers(0, num_classes, rows)
    return table


def _csv(table: np.ndarray) -> str:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in table)


# -- CsvError --------------------------------------------------------------------------------


def test_csv_error_message_and_attributes():
    e = CsvError.at("a.csv", 3, 5, "2.5", "an integer class index in [0, 10)")
    assert (
        str(e) == "a.csv, line 3, column 5: expected an integer class index in [0, 10), found '2.5'"
    )
    assert (e.source, e.line, e.column, e.text) == ("a.csv", 3, 5, "2.5")
    assert isinstance(e, SparkbatchError) and isinstance(e, ValueError)
    row = CsvError.at(None, 4, -1, "1,2,3,4,5", "6 columns", found="5")
    assert str(row) == "line 4: expected 6 columns, found 5: '1,2,3,4,5'"
    assert str(CsvError.at(None, None, None, "x", "a number")) == "expected a number, found 'x'"
    copy = pickle.loads(pickle.dumps(e))
    assert str(copy) == str(e) and copy.column == 5 and copy.expected == e.expected


def test_csv_error_cuts_long_text_in_the_message_only():
    e = CsvError.at("a.csv", 1, 0, "x" * 1000, "a number")
    assert len(str(e)) < 200 and e.text == "x" * 1000


# -- reader ----------------------------------------------------------------------------------


def test_to_value_numbers_and_strings():
    assert to_value(" 1.5 ") == 1.5 and isinstance(to_value("3"), float)
    assert np.isnan(to_value("nan")) and to_value("-inf") == float("-inf")
    assert to_value("abc") == "abc" and to_value("") == "" and to_value(" a ") == " a "


def test_reads_numbers_and_strings_with_positions(tmp_path):
    path = _write(tmp_path / "a.csv", "1,2.5,cat\n-3e2, 4 ,nan\n")
    reader = CSVRecordReader().initialize(path)
    first = next(reader)
    assert first == [1.0, 2.5, "cat"]
    assert (reader.current_source, reader.current_line) == (path, 1)
    second = next(reader)
    assert second[:2] == [-300.0, 4.0] and np.isnan(second[2])
    assert reader.current_line == 2
    assert not reader.has_next()
    with pytest.raises(StopIteration):
        reader.next()


def test_skip_lines_apply_to_each_file_of_a_directory(tmp_path):
    _write(tmp_path / "b.csv", "x,y\n3,4\n")
    _write(tmp_path / "a.csv", "x,y\n1,2\n")
    _write(tmp_path / "sub_dir_c.csv", "x,y\n5,6\n")
    reader = CSVRecordReader(skip_lines=1).initialize(tmp_path)
    got = []
    for record in reader:
        got.append((record, reader.current_source.rsplit("/", 1)[-1], reader.current_line))
    assert got == [
        ([1.0, 2.0], "a.csv", 2),
        ([3.0, 4.0], "b.csv", 2),
        ([5.0, 6.0], "sub_dir_c.csv", 2),
    ]


def test_list_of_paths_keeps_the_given_order(tmp_path):
    b = _write(tmp_path / "b.csv", "2\n")
    a = _write(tmp_path / "a.csv", "1\n")
    assert list(CSVRecordReader().initialize([b, a])) == [[2.0], [1.0]]


def test_quoted_fields_crlf_and_blank_lines(tmp_path):
    text = 'a,"x, y",1\r\n\r\n  \r\n"multi\r\nline","say ""hi""",2\r\nlast,z,3'
    path = _write(tmp_path / "q.csv", text)
    reader = CSVRecordReader().initialize(path)
    records, lines = [], []
    for record in reader:
        records.append(record)
        lines.append(reader.current_line)
    assert records == [
        ["a", "x, y", 1.0],
        ["multi\r\nline", 'say "hi"', 2.0],
        ["last", "z", 3.0],
    ]
    assert lines == [1, 4, 6]


def test_no_quoting_and_other_delimiter(tmp_path):
    path = _write(tmp_path / "t.tsv", '"a"\t1\n"b\t2\n')
    records = list(CSVRecordReader(delimiter="\t", quote="").initialize(path))
    assert records == [['"a"', 1.0], ['"b', 2.0]]


def test_memory_urls_and_gzip(memory_dir):
    with open_output(join(memory_dir, "a.csv")) as f:
        f.write(b"h1,h2\n1,2\n3,4\n")
    with open_output(join(memory_dir, "b.csv.gz")) as f:
        f.write(gzip.compress(b"h1,h2\n5,6\n"))
    reader = CSVRecordReader(skip_lines=1).initialize(memory_dir)
    assert list(reader) == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert reader.sources == [f"{memory_dir}/a.csv", f"{memory_dir}/b.csv.gz"]


def test_utf8_with_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff1,é\n".encode())
    assert list(CSVRecordReader().initialize(path)) == [[1.0, "é"]]


@pytest.mark.parametrize("width", [20_000, 200_000])
def test_wide_rows(tmp_path, width):
    rng = np.random.default_rng(width)
    table = rng.integers(0, 256, (3, width))
    table[:, -1] = rng.integers(0, 10, 3)
    text = "".join(",".join(map(str, row.tolist())) + "\n" for row in table)
    path = _write(tmp_path / "wide.csv", "label at the end\n" + text)
    records = list(CSVRecordReader(skip_lines=1).initialize(path))
    ds = records_to_dataset(records, label_index=-1, num_classes=10)
    assert ds.features.shape == (3, width - 1) and ds.labels.shape == (3, 10)
    np.testing.assert_array_equal(ds.features, table[:, :-1])
    np.testing.assert_array_equal(ds.labels.argmax(axis=1), table[:, -1])


def test_reset_and_has_next(tmp_path):
    path = _write(tmp_path / "a.csv", "1\n2\n")
    reader = CSVRecordReader().initialize(path)
    assert reader.has_next() and reader.has_next()
    assert reader.next() == [1.0] and reader.current_line == 1
    reader.reset()
    assert reader.current_line is None
    assert list(reader) == [[1.0], [2.0]]


def test_pickling_keeps_settings_and_position(tmp_path):
    _write(tmp_path / "a.csv", "h\n1\n2\n3\n")
    _write(tmp_path / "b.csv", "h\n4\n")
    reader = CSVRecordReader(skip_lines=1, delimiter=";", quote="'").initialize(tmp_path)
    fresh = pickle.loads(pickle.dumps(reader))
    assert (fresh.skip_lines, fresh.delimiter, fresh.quote) == (1, ";", "'")
    assert list(fresh) == [[1.0], [2.0], [3.0], [4.0]]
    assert next(reader) == [1.0]
    assert reader.has_next()  # looked ahead: record 2 is pending
    resumed = pickle.loads(pickle.dumps(reader))
    assert (resumed.current_line, list(resumed)) == (2, [[2.0], [3.0], [4.0]])
    assert list(reader) == [[2.0], [3.0], [4.0]]


def test_closing_and_reading_on_reopens_where_it_was(tmp_path):
    path = _write(tmp_path / "a.csv", "1\n2\n3\n")
    with CSVRecordReader().initialize(path) as reader:
        assert next(reader) == [1.0]
        reader.close()
        assert list(reader) == [[2.0], [3.0]]


def test_parse_line():
    reader = CSVRecordReader(skip_lines=3)  # skip_lines does not apply to single lines
    assert reader.parse_line("1,2,x\n") == [1.0, 2.0, "x"]
    assert reader.parse_line('"a,b",2\r\n') == ["a,b", 2.0]
    assert reader.parse_line("") == [] and reader.parse_line("  ") == []


def test_malformed_csv_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.csv", '1,2\n3,"open\n')
    reader = CSVRecordReader().initialize(path)
    assert next(reader) == [1.0, 2.0]
    with pytest.raises(CsvError, match=r"bad\.csv, line \d: expected well-formed CSV"):
        next(reader)
    with pytest.raises(CsvError, match="expected well-formed CSV"):
        reader.parse_line('1,"a"b')


def test_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CsvError, match=r"latin1\.csv.*expected UTF-8 text"):
        list(CSVRecordReader().initialize(path))


def test_reader_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="skip_lines must be an int >= 0, got -1"):
        CSVRecordReader(skip_lines=-1)
    with pytest.raises(ValueError, match="delimiter must be one character, got ';;'"):
        CSVRecordReader(delimiter=";;")
    with pytest.raises(ValueError, match="quote and delimiter must differ"):
        CSVRecordReader(delimiter="'", quote="'")
    with pytest.raises(RuntimeError, match="initialize"):
        next(CSVRecordReader())
    with pytest.raises(FileNotFoundError):
        CSVRecordReader().initialize(tmp_path / "missing.csv")


# -- records_to_dataset ----------------------------------------------------------------------


def test_classification_matches_numpy(tmp_path):
    table = _table(np.random.default_rng(0), 50)
    records = list(CSVRecordReader().initialize(_write(tmp_path / "a.csv", _csv(table))))
    ds = records_to_dataset(records, label_index=5, num_classes=10)
    np.testing.assert_array_equal(ds.features, table[:, :5].astype(np.float32))
    np.testing.assert_array_equal(ds.labels, np.eye(10, dtype=np.float32)[table[:, 5].astype(int)])
    assert ds.features.dtype == ds.labels.dtype == np.float32
    last = records_to_dataset(records, label_index=-1, num_classes=10)
    np.testing.assert_array_equal(last.labels, ds.labels)


def test_label_in_the_middle_keeps_feature_order():
    ds = records_to_dataset([[1, 2, 3], [4, 0, 6]], label_index=1, num_classes=3)
    assert ds.features.tolist() == [[1, 3], [4, 6]]
    assert ds.labels.tolist() == [[0, 0, 1], [1, 0, 0]]


def test_regression_matches_numpy():
    table = _table(np.random.default_rng(1), 20)
    ds = records_to_dataset(table.tolist(), label_first=3, label_last=5, regression=True)
    np.testing.assert_array_equal(ds.features, table[:, :3].astype(np.float32))
    np.testing.assert_array_equal(ds.labels, table[:, 3:].astype(np.float32))
    middle = records_to_dataset(table.tolist(), label_first=1, label_last=2, regression=True)
    np.testing.assert_array_equal(middle.features, table[:, [0, 3, 4, 5]].astype(np.float32))
    single = records_to_dataset(table.tolist(), label_index=0, regression=True)
    np.testing.assert_array_equal(single.labels, table[:, :1].astype(np.float32))


def test_numeric_text_cells_are_numbers():
    ds = records_to_dataset([["1.5", " 2 ", "1"]], label_index=2, num_classes=2)
    assert ds.features.tolist() == [[1.5, 2.0]] and ds.labels.tolist() == [[0.0, 1.0]]


def test_records_may_be_array_rows():
    table = _table(np.random.default_rng(2), 5)
    ds = records_to_dataset(table, label_index=5, num_classes=10)
    np.testing.assert_array_equal(ds.features, table[:, :5].astype(np.float32))


def test_one_record():
    ds = record_to_dataset([1.0, 3.2, 4.5, 1.1, 6.3, 0.0], label_index=5, num_classes=10)
    assert ds.features.shape == (1, 5) and ds.labels.shape == (1, 10) and ds.labels[0, 0] == 1


@pytest.mark.parametrize(
    ("label", "shown"),
    [(2.5, "2.5"), (-1.0, "-1"), (10.0, "10"), ("cat", "cat"), (float("nan"), "nan"), ("", "")],
)
def test_bad_class_label_names_column_value_and_range(label, shown):
    records = [[0.1, 0.2, 3.0], [0.3, 0.4, label]]
    with pytest.raises(CsvError) as info:
        records_to_dataset(records, label_index=2, num_classes=10, source="a.csv", first_line=7)
    assert str(info.value) == (
        f"a.csv, line 8, column 2: expected an integer class index in [0, 10), found {shown!r}"
    )
    assert (info.value.line, info.value.column, info.value.text) == (8, 2, shown)


def test_non_numeric_feature_names_column_and_text():
    records = [[0.1, 0.2, 1.0], [0.3, "oops", 1.0]]
    with pytest.raises(CsvError) as info:
        records_to_dataset(records, label_index=2, num_classes=3)
    assert str(info.value) == "column 1: expected a number, found 'oops'"
    assert info.value.column == 1 and info.value.text == "oops"


def test_first_bad_cell_in_file_order_is_reported():
    records = [[1.0, 2.0, 0.0], [1.0, "x", 99.0], ["y", 2.0, 0.0]]
    with pytest.raises(CsvError, match=r"^line 2, column 1: expected a number, found 'x'$"):
        records_to_dataset(records, label_index=2, num_classes=3, first_line=1)


def test_missing_value_is_not_nan():
    with pytest.raises(CsvError, match="column 0: expected a number, found 'None'"):
        records_to_dataset([[None, 1.0]], label_index=1, num_classes=2)
    ds = records_to_dataset([[float("nan"), 1.0]], label_index=1, num_classes=2)
    assert np.isnan(ds.features[0, 0])


def test_ragged_record():
    records = [[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [1.0, 2.0]]
    with pytest.raises(CsvError) as info:
        records_to_dataset(records, label_index=2, num_classes=3, source="s", first_line=1)
    assert (
        str(info.value) == "s, line 3: expected 3 columns (as in the first record), found 2: '1,2'"
    )
    assert info.value.column == -1


def test_record_too_narrow_for_the_labels():
    with pytest.raises(
        CsvError, match=r"expected at least 6 columns \(labels in column 5\), found 3"
    ):
        record_to_dataset([1.0, 2.0, 0.0], label_index=5, num_classes=10)
    with pytest.raises(CsvError, match=r"at least 6 columns \(labels in columns 3\.\.5\), found 4"):
        record_to_dataset([1.0, 2.0, 0.0, 1.0], label_first=3, label_last=5, regression=True)


def test_cells_that_are_sequences_are_rejected():
    with pytest.raises(CsvError, match=r"column 1: expected a number, found '\[1, 2\]'"):
        records_to_dataset([[1.0, [1, 2], 0.0]], label_index=2, num_classes=3)
    with pytest.raises(CsvError, match="expected records of single values"):
        records_to_dataset([[[1, 2], [0, 1]], [[1, 2], [0, 1]]], label_index=1, num_classes=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label_index": 5}, "num_classes"),
        ({"num_classes": 5}, "label_index"),
        ({}, "label_index"),
        ({"label_index": 5, "num_classes": 0}, "num_classes must be >= 1, got 0"),
        ({"label_index": "5", "num_classes": 3}, "label_index must be an int, got '5'"),
        ({"label_index": True, "num_classes": 3}, "label_index must be an int, got True"),
        ({"label_first": 3, "label_last": 5}, "regression=True"),
        (
            {"label_first": 5, "label_last": 3, "regression": True},
            "label_last must be >= label_first",
        ),
        ({"label_index": 1, "label_first": 3, "label_last": 5, "regression": True}, "not both"),
        ({"label_first": 3, "regression": True}, "label_last"),
        ({"label_first": 3, "label_last": 5, "num_classes": 3, "regression": True}, "num_classes"),
        ({"label_index": 1, "num_classes": 3, "regression": 1}, "regression must be a bool"),
    ],
)
def test_label_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        records_to_dataset([[1.0, 2.0, 0.0, 1.0, 1.0, 1.0]], **kwargs)


def test_empty_records():
    with pytest.raises(ValueError, match="records is empty"):
        records_to_dataset([], label_index=0, num_classes=2)
