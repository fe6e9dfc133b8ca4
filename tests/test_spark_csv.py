"""csv_to_datasets and dataframe_to_datasets on a real local[2] Spark, against numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from sparkbatch import DataSet
from sparkbatch.convert import LabelSpec
from sparkbatch.convert.table import batches
from sparkbatch.errors import CsvError
from sparkbatch.records.csv_parser import CsvOptions
from sparkbatch.spark import (
    ArrowToMinibatches,
    DataFrameError,
    LinesToDataSets,
    RangesToDataSets,
    csv_to_datasets,
    dataframe_to_datasets,
    executor_errors,
)

pytestmark = pytest.mark.spark

N_FEATURES, N_CLASSES = 5, 10


def _table(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = np.round(rng.standard_normal((rows, N_FEATURES)) * 100, 3)
    labels = rng.integers(0, N_CLASSES, rows)
    return features, labels


def _lines(features: np.ndarray, labels: np.ndarray) -> list[str]:
    rows = zip(features, labels, strict=True)
    return [",".join(f"{v:.3f}" for v in row) + f",{y}" for row, y in rows]


def _write(
    path, lines: list[str], *, header: bool = False, newline: str = "\n", trailing: bool = True
) -> str:
    text = newline.join((["a,b,c,d,e,label"] if header else []) + lines) + (
        newline if trailing else ""
    )
    with open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def _merged(rdd) -> DataSet:
    return DataSet.merge(rdd.collect())


def _check(ds: DataSet, features: np.ndarray, labels: np.ndarray) -> None:
    np.testing.assert_array_equal(ds.features, features.astype(np.float32))
    np.testing.assert_array_equal(ds.labels, np.eye(N_CLASSES, dtype=np.float32)[labels])


def _error_text(excinfo) -> str:
    return str(excinfo.value)


def test_rdd_of_lines_gives_minibatches_in_order(sc):
    features, labels = _table(100)
    rdd = sc.parallelize(_lines(features, labels), 3)
    out = csv_to_datasets(rdd, label_index=5, num_classes=N_CLASSES, batch_size=16)
    sizes = out.map(lambda d: d.num_examples).collect()
    assert sum(sizes) == 100 and max(sizes) == 16
    _check(_merged(out), features, labels)


def test_empty_partitions_and_label_index_minus_one(sc):
    features, labels = _table(3)
    rdd = sc.parallelize(_lines(features, labels), 6)  # more partitions than lines
    _check(_merged(csv_to_datasets(rdd, label_index=-1, num_classes=N_CLASSES)), features, labels)


def test_file_in_byte_ranges_cut_mid_line(sc, tmp_path):
    features, labels = _table(500, seed=1)
    path = _write(tmp_path / "data.csv", _lines(features, labels), header=True)
    out = csv_to_datasets(
        path, label_index=5, num_classes=N_CLASSES, skip_lines=1, split_size=997, sc=sc
    )
    assert out.getNumPartitions() > 20
    _check(_merged(out), features, labels)


def test_many_files_glob_directory_crlf_no_trailing_newline(sc, tmp_path):
    parts = [_table(40, seed=s) for s in range(3)]
    (tmp_path / "d").mkdir()
    for i, (f, y) in enumerate(parts):
        _write(
            tmp_path / "d" / f"part-{i}.csv",
            _lines(f, y),
            header=True,
            newline="\r\n",
            trailing=i != 1,
        )
    (tmp_path / "d" / "_SUCCESS").write_text("")
    features = np.concatenate([f for f, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    for source in (str(tmp_path / "d"), str(tmp_path / "d" / "*.csv")):
        out = csv_to_datasets(
            source, label_index=5, num_classes=N_CLASSES, skip_lines=1, split_size=301, sc=sc
        )
        _check(_merged(out), features, labels)


def test_quoted_fields_and_empty_file(sc, tmp_path):
    path = _write(tmp_path / "q.csv", ['"1.5",2,"3e2",4,5,"7"', "6, 7 ,8,9,10,0"])
    _write(tmp_path / "empty.csv", [], trailing=False)
    out = _merged(
        csv_to_datasets(
            [path, str(tmp_path / "empty.csv")], label_index=5, num_classes=N_CLASSES, sc=sc
        )
    )
    np.testing.assert_array_equal(out.features, [[1.5, 2, 300, 4, 5], [6, 7, 8, 9, 10]])
    np.testing.assert_array_equal(out.labels.argmax(axis=1), [7, 0])


def test_regression_columns(sc, tmp_path):
    rng = np.random.default_rng(4)
    table = np.round(rng.standard_normal((50, 6)), 4)
    lines = [",".join(f"{v:.4f}" for v in row) for row in table]
    path = _write(tmp_path / "r.csv", lines)
    out = _merged(csv_to_datasets(path, label_first=3, label_last=5, regression=True, sc=sc))
    np.testing.assert_array_equal(out.features, table[:, :3].astype(np.float32))
    np.testing.assert_array_equal(out.labels, table[:, 3:].astype(np.float32))


@pytest.mark.parametrize(
    ("bad", "column", "found"),
    [
        ("1,2,3,4,5,2.5", 5, "'2.5'"),
        ("1,2,3,4,5,10", 5, "'10'"),
        ("1,2,3,4,5,-1", 5, "'-1'"),
        ("1,2,abc,4,5,1", 2, "'abc'"),
    ],
)
def test_bad_cells_name_file_line_column_and_text(sc, tmp_path, bad, column, found):
    features, labels = _table(300, seed=2)
    lines = _lines(features, labels)
    lines[250] = bad  # in a later byte range: the line number must still count from the top
    path = _write(tmp_path / "bad.csv", lines, header=True)
    with pytest.raises(CsvError) as excinfo, executor_errors():
        csv_to_datasets(
            path, label_index=5, num_classes=N_CLASSES, skip_lines=1, split_size=2000, sc=sc
        ).count()
    text = _error_text(excinfo)
    assert f"{path}, line 252, column {column}" in text
    assert found in text


def _wide(path, rows: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CSV of `rows` images of `width - 1` pixels and a class in the last column."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 256, (rows, width))
    table[:, -1] = rng.integers(0, N_CLASSES, rows)
    lines = [",".join(map(str, row.tolist())) for row in table]
    _write(path, lines, header=True)
    return table[:, :-1], table[:, -1]


@pytest.mark.parametrize("width", [20_000, 200_000])
def test_wide_rows_in_byte_ranges_cut_inside_rows(sc, tmp_path, width):
    """Rows far longer than a range (and than any first read): one width for every range."""
    features, labels = _wide(tmp_path / "wide.csv", 6, width, seed=width)
    out = csv_to_datasets(
        str(tmp_path / "wide.csv"),
        label_index=-1,
        num_classes=N_CLASSES,
        skip_lines=1,
        batch_size=4,
        split_size=width,  # several ranges per row
        sc=sc,
    )
    assert out.getNumPartitions() > 12
    merged = _merged(out)
    assert merged.features.shape == (6, width - 1)
    _check(merged, features, labels)


def test_wide_rows_errors_name_the_right_column(sc, tmp_path):
    width = 20_000
    features, labels = _wide(tmp_path / "wide.csv", 6, width)
    text = (tmp_path / "wide.csv").read_text().split("\n")
    text[4] = text[4].rsplit(",", 1)[0] + ",12"  # line 5: a class outside [0, 10)
    (tmp_path / "bad.csv").write_text("\n".join(text))
    args = {"label_index": -1, "num_classes": N_CLASSES, "skip_lines": 1, "sc": sc}
    with pytest.raises(CsvError) as excinfo, executor_errors():
        csv_to_datasets(str(tmp_path / "bad.csv"), split_size=10_000, **args).count()
    expected = f"line 5, column {width - 1}: expected a class index in [0, 10), found '12'"
    assert f"bad.csv, {expected}" in _error_text(excinfo)
    lines = _lines_of(tmp_path / "wide.csv")[1:]
    out = _merged(csv_to_datasets(sc.parallelize(lines, 3), label_index=-1, num_classes=N_CLASSES))
    _check(out, features, labels)
    with pytest.raises(ValueError, match=r"label columns 20000 are outside a table of 20000 col"):
        csv_to_datasets(str(tmp_path / "wide.csv"), **{**args, "label_index": width})


def _lines_of(path) -> list[str]:
    return path.read_text().splitlines()


def test_wrong_column_count_names_the_partition_for_rdds(sc):
    features, labels = _table(20)
    lines = _lines(features, labels)
    lines[3] = "1,2,3"
    with pytest.raises(CsvError) as excinfo, executor_errors():
        csv_to_datasets(sc.parallelize(lines, 1), label_index=5, num_classes=N_CLASSES).count()
    assert "partition 0, line 4" in _error_text(excinfo)
    assert "6 columns" in _error_text(excinfo)


def test_skip_counts_bad_rows_in_an_accumulator(sc, tmp_path):
    features, labels = _table(100, seed=3)
    lines = _lines(features, labels)
    bad_rows = [10, 55, 90]
    for i in bad_rows:
        lines[i] = "1,2,3,4,5,99"
    path = _write(tmp_path / "skip.csv", lines)
    out = csv_to_datasets(
        path, label_index=5, num_classes=N_CLASSES, on_error="skip", split_size=1500, sc=sc
    )
    merged = _merged(out)
    keep = np.setdiff1d(np.arange(100), bad_rows)
    _check(merged, features[keep], labels[keep])
    assert out.skipped.value == 3


def test_missing_input_is_a_clear_error(sc, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        csv_to_datasets(
            str(tmp_path / "nothing-here" / "*.csv"), label_index=5, num_classes=N_CLASSES, sc=sc
        )


def test_argument_errors_are_raised_on_the_driver(sc, tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        csv_to_datasets(str(tmp_path), label_index=5, sc=sc)
    with pytest.raises(ValueError, match="on_error"):
        csv_to_datasets(str(tmp_path), label_index=5, num_classes=3, on_error="ignore", sc=sc)


def test_dataframe_to_datasets_classification_and_regression(spark):
    features, labels = _table(230, seed=5)
    rows = [tuple(float(v) for v in f) + (int(y),) for f, y in zip(features, labels, strict=True)]
    names = ["a", "b", "c", "d", "e", "y"]
    df = spark.createDataFrame(rows, names).repartition(3)
    out = dataframe_to_datasets(df, names[:5], "y", num_classes=N_CLASSES, batch_size=32)
    merged = _merged(out)
    order = np.lexsort(merged.features.T[::-1])  # repartition shuffles rows: compare as sets
    ref = np.lexsort(features.astype(np.float32).T[::-1])
    np.testing.assert_array_equal(merged.features[order], features.astype(np.float32)[ref])
    np.testing.assert_array_equal(merged.labels[order].argmax(axis=1), labels[ref])
    assert max(out.map(lambda d: d.num_examples).collect()) == 32

    reg = _merged(dataframe_to_datasets(df.coalesce(1), ["a", "b"], ["c", "d"], regression=True))
    assert reg.features.shape == (230, 2) and reg.labels.shape == (230, 2)


def test_dataframe_nulls_and_bad_labels_are_named(spark):
    df = spark.createDataFrame([(1.0, 2.0, 1), (None, 1.0, 0)], ["a", "b", "y"])
    with pytest.raises(DataFrameError, match="column 'a' is null"), executor_errors():
        dataframe_to_datasets(df.coalesce(1), ["a", "b"], "y", num_classes=2).count()
    df = spark.createDataFrame([(1.0, 2.0, 1), (3.0, 1.0, 7)], ["a", "b", "y"])
    with pytest.raises(DataFrameError, match=r"column 'y', row 1 .*\[0, 2\), found 7"), (
        executor_errors()
    ):
        dataframe_to_datasets(df.coalesce(1), ["a", "b"], "y", num_classes=2).count()


def test_on_disk_bytes_are_never_collected_to_the_driver(sc, tmp_path):
    """The byte-range path ships only LineRange descriptions to executors."""
    features, labels = _table(50)
    path = _write(tmp_path / "x.csv", _lines(features, labels))
    out = csv_to_datasets(path, label_index=5, num_classes=N_CLASSES, split_size=200, sc=sc)
    described = out.toDebugString().decode()
    assert "ParallelCollectionRDD" in described and "HadoopRDD" not in described


# -- integer arguments are checked at the call, not in the tasks --------------------------------

BAD_INTS = [
    (2.5, TypeError, "batch_size must be an int, got float 2.5"),
    (True, TypeError, "batch_size must be an int, got bool True"),
    ("8", TypeError, "batch_size must be an int, got str '8'"),
    (0, ValueError, "batch_size must be >= 1, got 0"),
]


@pytest.mark.parametrize(("value", "error", "message"), BAD_INTS)
def test_a_bad_batch_size_fails_at_the_call(tmp_path, value, error, message):
    path = tmp_path / "a.csv"
    path.write_text("1,2,0\n")
    spec = LabelSpec(-1, 3)
    calls = [
        lambda: csv_to_datasets(str(path), label_index=-1, num_classes=3, batch_size=value),
        lambda: dataframe_to_datasets(None, ["x"], "y", num_classes=3, batch_size=value),
        lambda: ArrowToMinibatches(["x", "y"], spec, value),
        lambda: RangesToDataSets(spec, CsvOptions(), value, None),
        lambda: LinesToDataSets(spec, CsvOptions(), value, None),
        lambda: batches(DataSet(np.zeros((3, 2), np.float32)), value),
    ]
    for call in calls:
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"skip_lines": 1.0}, TypeError, "skip_lines must be an int, got float 1.0"),
        ({"skip_lines": -1}, ValueError, "skip_lines must be >= 0, got -1"),
        ({"split_size": 2.5}, TypeError, "split_size must be an int, got float 2.5"),
        ({"split_size": 0}, ValueError, "split_size must be >= 1, got 0"),
        ({"label_index": -1.0}, TypeError, "label_index must be an int, got float -1.0"),
        ({"num_classes": 3.0}, TypeError, "num_classes must be an int, got float 3.0"),
        ({"num_classes": True}, TypeError, "num_classes must be an int, got bool True"),
    ],
)
def test_other_bad_integers_fail_at_the_call(tmp_path, kwargs, error, message):
    path = tmp_path / "a.csv"
    path.write_text("1,2,0\n")
    with pytest.raises(error, match=message):
        csv_to_datasets(str(path), **{"label_index": -1, "num_classes": 3, **kwargs})
    if "num_classes" in kwargs:
        with pytest.raises(error, match=message):
            dataframe_to_datasets(None, ["x"], "y", **kwargs)
