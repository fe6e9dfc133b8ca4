"""CSV input that is awkward or wrong: results that must not depend on how the input is split,
and files that are not what they seem. On Spark (``csv_to_datasets``) and on one machine
(``CSVRecordReader``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparkbatch import DataSet
from sparkbatch.spark import csv_to_datasets

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
    """Three files with a header each: LF, CRLF without a final line break, LF."""
    rng = np.random.default_rng(7)
    rows, bad = [], 0
    for i, (newline, trailing) in enumerate([("\n", True), ("\r\n", False), ("\n", True)]):
        text, file_rows, file_bad = _file(rng, 60, newline, trailing)
        (tmp_path / f"part-{i}.csv").write_bytes(text.encode())
        rows += file_rows
        bad += file_bad
    table = np.array(rows, np.float32)
    return str(tmp_path), table[:, :5], table[:, 5].astype(int), bad


def _merged(rdd) -> DataSet:
    return DataSet.merge(rdd.collect())


def _check(ds: DataSet, features: np.ndarray, labels: np.ndarray) -> None:
    np.testing.assert_array_equal(ds.features, features)
    np.testing.assert_array_equal(ds.labels, np.eye(N_CLASSES, dtype=np.float32)[labels])


ARGS = {"label_index": -1, "num_classes": N_CLASSES, "skip_lines": 1}


@pytest.mark.spark
def test_skip_results_do_not_depend_on_the_split_size(sc, messy):
    path, features, labels, bad = messy
    assert bad > 20 and len(labels) > 100
    for split_size in (7, 64, 301, 4096, 1 << 30):
        out = csv_to_datasets(path, on_error="skip", split_size=split_size, sc=sc, **ARGS)
        _check(_merged(out), features, labels)
        assert out.skipped.value == bad, split_size


@pytest.mark.spark
def test_skip_results_do_not_depend_on_the_partitions_of_an_rdd(sc, messy):
    path, *_ = messy
    text = Path(path, "part-0.csv").read_text()
    lines = text.splitlines()
    whole = csv_to_datasets(sc.parallelize(lines, 1), on_error="skip", **ARGS)
    reference, skipped = _merged(whole), whole.skipped.value
    assert skipped > 0
    for partitions in (2, 7, 50, len(lines) + 3):  # the header in one partition, or none
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
        with pytest.raises(Exception) as excinfo:
            csv_to_datasets(str(path), split_size=split_size, sc=sc, **ARGS).count()
        message = str(excinfo.value)
        # the first of the two lines, or the second where a range begins there
        assert (
            f"{path}, line 32, column 1: expected a closing quote before the end of the line, "
            "found '\"two'"
            in message
            or f"{path}, line 33, column 0: expected a number, found 'lines\"'" in message
        ), message
