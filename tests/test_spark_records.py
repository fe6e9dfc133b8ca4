"""The seed page's CSV how-to on a real local Spark: lines -> records -> one-example DataSets."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sparkbatch.data import DataSet
from sparkbatch.errors import CsvError
from sparkbatch.records import CSVRecordReader
from sparkbatch.spark import executor_errors
from sparkbatch.spark.records import RecordsToDataSet, StringToRecords

pytestmark = pytest.mark.spark


def _write_table(path, rows: int = 40, seed: int = 0) -> np.ndarray:
    """A 6-column CSV: 5 features and a class index in [0, 10); returns it as float64."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(rows, 6)).round(4)
    table[:, 5] = rng.integers(0, 10, rows)
    path.write_text("".join(",".join(repr(float(v)) for v in row) + "\n" for row in table))
    return table


def test_classification_chain_of_the_seed_page(sc, tmp_path):
    path = tmp_path / "some_csv_file.csv"
    table = _write_table(path)
    rdd = (
        sc.textFile(str(path), minPartitions=3)
        .map(StringToRecords(CSVRecordReader()))
        .map(RecordsToDataSet(label_index=5, num_classes=10))
    )
    collected = rdd.collect()
    assert len(collected) == 40 and all(d.num_examples == 1 for d in collected)
    assert collected[0].features.shape == (1, 5) and collected[0].labels.shape == (1, 10)
    merged = DataSet.merge(collected)
    np.testing.assert_array_equal(merged.features, table[:, :5].astype(np.float32))
    expected = np.eye(10, dtype=np.float32)[table[:, 5].astype(int)]
    np.testing.assert_array_equal(merged.labels, expected)


def test_regression_chain_of_the_seed_page(sc, tmp_path):
    path = tmp_path / "some_csv_file.csv"
    table = _write_table(path, seed=1)
    merged = DataSet.merge(
        sc.textFile(str(path), minPartitions=2)
        .map(StringToRecords(CSVRecordReader()))
        .map(RecordsToDataSet(label_first=3, label_last=5, regression=True))
        .collect()
    )
    np.testing.assert_array_equal(merged.features, table[:, :3].astype(np.float32))
    np.testing.assert_array_equal(merged.labels, table[:, 3:].astype(np.float32))


def test_quoted_fields_and_other_delimiters_through_spark(sc):
    lines = ['1.5;"a;b";0', "2.5;c;1"]
    records = (
        sc.parallelize(lines, 2).map(StringToRecords(CSVRecordReader(delimiter=";"))).collect()
    )
    assert records == [[1.5, "a;b", 0.0], [2.5, "c", 1.0]]


def test_bad_label_fails_the_job_with_the_csv_error_message(sc, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("1.0,2.0,3.0,4.0,5.0,1\n1.0,2.0,3.0,4.0,5.0,2.5\n")
    rdd = sc.textFile(str(path)).map(StringToRecords()).map(RecordsToDataSet(5, 10))
    with pytest.raises(CsvError) as info, executor_errors():
        rdd.collect()
    assert "column 5: expected an integer class index in [0, 10), found '2.5'" in str(info.value)


def test_functions_hold_plain_settings_and_pickle():
    to_dataset = pickle.loads(pickle.dumps(RecordsToDataSet(label_index=-1, num_classes=3)))
    assert to_dataset([0.5, 2.0]).labels.tolist() == [[0.0, 0.0, 1.0]]
    assert repr(to_dataset) == "RecordsToDataSet(label_index=-1, num_classes=3)"
    to_records = pickle.loads(pickle.dumps(StringToRecords(CSVRecordReader(quote=""))))
    assert to_records('"1",2') == ['"1"', 2.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label_index": 5}, "num_classes"),
        (
            {"label_first": 5, "label_last": 3, "regression": True},
            "label_last must be >= label_first",
        ),
        ({"label_index": 2, "label_first": 3, "label_last": 5, "regression": True}, "not both"),
        ({"label_index": 5, "num_classes": 10, "label_first": 3}, "label_index or label_first"),
    ],
)
def test_arguments_are_checked_on_the_driver(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecordsToDataSet(**kwargs)


def test_string_to_records_needs_a_reader():
    with pytest.raises(TypeError, match="parse_line"):
        StringToRecords(object())  # type: ignore[arg-type]
