"""MultiDataSetBuilder on one machine, from real CSV files, against numpy references: every
builder method, sequence readers under every alignment, minibatch cuts, and bad input named by
file, line, step and column."""

from __future__ import annotations

import numpy as np
import pytest

from sparkbatch.convert import MultiDataSetBuilder
from sparkbatch.data import MultiDataSet
from sparkbatch.errors import CsvError, SequenceLengthError
from sparkbatch.records import CSVRecordReader, CSVSequenceRecordReader


def _write_csv(path, table, fmt="%.6g", header=None):
    lines = [] if header is None else [header]
    lines += [",".join(fmt % v if isinstance(v, float) else str(v) for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _records(tmp_path, n=7, seed=0):
    """A CSV of ``n`` records: a text id, four numbers and a class index in [0, 3)."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(n, 4)), 3)
    cls = rng.integers(0, 3, size=n)
    rows = [[f"id{i}", *map(float, x[i]), int(cls[i])] for i in range(n)]
    return _write_csv(tmp_path / "a.csv", rows), x, cls


def _sequences(directory, lengths, seed=1, classes=4):
    """One CSV per sequence: columns x0, x1 and a class index; returns the tables in file order."""
    directory.mkdir()
    rng = np.random.default_rng(seed)
    tables = []
    for i, t in enumerate(lengths):
        table = np.column_stack(
            [np.round(rng.normal(size=(t, 2)), 3), rng.integers(0, classes, size=t)]
        )
        _write_csv(directory / f"s{i:03d}.csv", [[float(a), float(b), int(c)] for a, b, c in table])
        tables.append(table)
    return str(directory), tables


def _merge(batches):
    return MultiDataSet.merge(list(batches))


def test_every_array_method_matches_numpy_and_batches_are_cut(tmp_path):
    path, x, cls = _records(tmp_path)
    builder = MultiDataSetBuilder(3)
    assert builder.add_reader("a", CSVRecordReader().initialize(path)) is builder
    chained = (
        builder.add_input("a", 1, 2)
        .add_input("a", first=3)
        .add_input_one_hot("a", 5, 3)
        .add_output("a", 1, 4)
        .add_output_one_hot("a", 5, 3)
        .alignment("ALIGN_END")
    )
    assert chained is builder and builder.alignment_mode == "align_end"
    batches = list(builder)
    assert [b.num_examples for b in batches] == [3, 3, 1]
    mds = _merge(batches)
    one_hot = np.eye(3, dtype=np.float32)[cls]
    expected_inputs = [x[:, 0:2], np.column_stack([x[:, 2:4], cls]), one_hot]
    for got, want in zip(mds.features, expected_inputs, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(mds.labels[0], x, rtol=1e-6)
    np.testing.assert_array_equal(mds.labels[1], one_hot)
    assert all(m is None for m in mds.features_masks + mds.labels_masks)
    assert [b.num_examples for b in builder] == [3, 3, 1]  # a second pass resets the reader


def test_all_columns_of_a_second_reader(tmp_path):
    path, x, cls = _records(tmp_path, n=5)
    other = _write_csv(tmp_path / "b.csv", [[float(v), 2.0 * v] for v in range(5)])
    builder = (
        MultiDataSetBuilder(10)
        .add_reader("a", CSVRecordReader().initialize(path))
        .add_reader("b", CSVRecordReader().initialize(other))
        .add_input("b")
        .add_input("a", 1, 4)
        .add_output_one_hot("a", 5, 3)
    )
    [mds] = list(builder)
    np.testing.assert_array_equal(mds.features[0], [[v, 2 * v] for v in range(5)])
    np.testing.assert_allclose(mds.features[1], x, rtol=1e-6)
    np.testing.assert_array_equal(mds.labels[0].argmax(axis=1), cls)


def _padded(tables, steps, mode):
    """The numpy reference of padding ``tables`` [T_i, w] to [n, w, steps] and its mask."""
    out = np.zeros((len(tables), tables[0].shape[1], steps), np.float32)
    mask = np.zeros((len(tables), steps), np.float32)
    for i, table in enumerate(tables):
        start = steps - len(table) if mode == "align_end" else 0
        out[i, :, start : start + len(table)] = table.T
        mask[i, start : start + len(table)] = 1
    return out, mask


@pytest.mark.parametrize("mode", ["align_start", "align_end"])
def test_sequence_readers_pad_to_the_longest_of_any_reader(tmp_path, mode):
    features_dir, features = _sequences(tmp_path / "f", [3, 1, 5, 2], seed=1)
    labels_dir, labels = _sequences(tmp_path / "l", [2, 6, 5, 1], seed=2)
    static, x, _ = _records(tmp_path, n=4)
    builder = (
        MultiDataSetBuilder(4)
        .add_sequence_reader("f", CSVSequenceRecordReader().initialize(features_dir))
        .add_sequence_reader("l", CSVSequenceRecordReader().initialize(labels_dir))
        .add_reader("x", CSVRecordReader().initialize(static))
        .add_input("f", 0, 1)
        .add_input("x", 1, 4)
        .add_output_one_hot("l", 2, 4)
        .alignment(mode)
    )
    [mds] = list(builder)
    steps = 6  # the longest sequence of either reader
    want_f, mask_f = _padded([t[:, :2] for t in features], steps, mode)
    np.testing.assert_allclose(mds.features[0], want_f, rtol=1e-6)
    np.testing.assert_array_equal(mds.features_masks[0], mask_f)
    np.testing.assert_allclose(mds.features[1], x, rtol=1e-6)
    assert mds.features_masks[1] is None
    want_l, mask_l = _padded([np.eye(4)[t[:, 2].astype(int)] for t in labels], steps, mode)
    assert mds.labels[0].shape == (4, 4, steps)
    np.testing.assert_array_equal(mds.labels[0], want_l)
    np.testing.assert_array_equal(mds.labels_masks[0], mask_l)


def test_equal_length_needs_every_sequence_of_every_reader_equal(tmp_path):
    same_dir, same = _sequences(tmp_path / "same", [3, 3], seed=1)
    other_dir, _ = _sequences(tmp_path / "other", [3, 4], seed=2)
    builder = (
        MultiDataSetBuilder(2)
        .add_sequence_reader("a", CSVSequenceRecordReader().initialize(same_dir))
        .add_input("a", 0, 1)
        .add_output_one_hot("a", 2, 4)
        .alignment("equal_length")
    )
    [mds] = list(builder)
    assert mds.features_masks[0] is None and mds.features[0].shape == (2, 2, 3)
    np.testing.assert_allclose(mds.features[0][1], same[1][:, :2].T, rtol=1e-6)
    builder.add_sequence_reader("b", CSVSequenceRecordReader().initialize(other_dir))
    builder.add_output("b", 0, 0)
    with pytest.raises(
        SequenceLengthError,
        match=r"reader 'a' .*s000.csv has 3 steps but "
        r"reader 'b' .*s001.csv has 4",
    ):
        list(builder)


# -- bad input -------------------------------------------------------------------------------


def _builder(path, *, sequence=False):
    reader = (CSVSequenceRecordReader() if sequence else CSVRecordReader()).initialize(path)
    builder = MultiDataSetBuilder(4)
    (builder.add_sequence_reader if sequence else builder.add_reader)("r", reader)
    return builder


def test_one_hot_out_of_range_names_file_line_and_column(tmp_path):
    path = _write_csv(tmp_path / "a.csv", [["id0", 1.0, 2], ["id1", 2.0, 3], ["id2", 3.0, 0]])
    builder = _builder(path).add_input("r", 1, 1).add_output_one_hot("r", 2, 3)
    with pytest.raises(
        CsvError,
        match=r"a\.csv, line 2, column 2: expected an integer class "
        r"index in \[0, 3\), found '3'",
    ):
        list(builder)
    negative = _write_csv(tmp_path / "b.csv", [[1.0, 2.5]])
    with pytest.raises(CsvError, match=r"b\.csv, line 1, column 1: .*found '2\.5'"):
        list(_builder(negative).add_input("r", 0, 0).add_output_one_hot("r", 1, 3))


def test_one_hot_out_of_range_in_a_sequence_names_file_line_step_and_column(tmp_path):
    directory = tmp_path / "seq"
    directory.mkdir()
    _write_csv(directory / "s0.csv", [[0.5, 1], [0.25, 0]], header="x,c")
    _write_csv(directory / "s1.csv", [[0.5, 1], [0.25, 0], [1.0, -1]], header="x,c")
    reader = CSVSequenceRecordReader(skip_lines=1).initialize(str(directory))
    builder = MultiDataSetBuilder(4).add_sequence_reader("s", reader)
    builder.add_input("s", 0, 0).add_output_one_hot("s", 1, 2)
    with pytest.raises(
        CsvError,
        match=r"s1\.csv, line 4, step 2, column 1: expected an integer "
        r"class index in \[0, 2\), found '-1'",
    ):
        list(builder)


def test_column_range_outside_the_record_names_the_array_and_the_file(tmp_path):
    path = _write_csv(tmp_path / "a.csv", [[1.0, 2.0, 3.0]])
    with pytest.raises(
        CsvError,
        match=r"a\.csv, line 1: expected at least 5 columns for the "
        r"array of reader 'r', columns 2\.\.4, found 3",
    ):
        list(_builder(path).add_input("r", 2, 4))
    with pytest.raises(CsvError, match=r"at least 4 columns .*column 3 one-hot"):
        list(_builder(path).add_input("r").add_output_one_hot("r", 3, 2))


def test_records_of_different_widths_name_the_file_and_line(tmp_path):
    path = _write_csv(tmp_path / "a.csv", [[1.0, 2.0]] * 5 + [[1.0, 2.0, 3.0]])
    with pytest.raises(CsvError, match=r"a\.csv, line 6: expected 2 columns .*, found 3"):
        list(_builder(path).add_input("r"))  # in the second minibatch of 4


def test_text_in_a_used_column_is_named_and_unused_text_is_fine(tmp_path):
    path = _write_csv(tmp_path / "a.csv", [["k", 1.0, 2.0], ["k", 1.0, "x"]])
    [mds] = list(_builder(path).add_input("r", 1, 1))
    np.testing.assert_array_equal(mds.features[0], [[1.0], [1.0]])
    with pytest.raises(CsvError, match=r"a\.csv, line 2, column 2: expected a number, found 'x'"):
        list(_builder(path).add_input("r", 1, 2))


def test_readers_of_different_lengths_and_bad_arguments(tmp_path):
    a = _write_csv(tmp_path / "a.csv", [[1.0]] * 5)
    b = _write_csv(tmp_path / "b.csv", [[1.0]] * 6)
    builder = (
        MultiDataSetBuilder(4)
        .add_reader("a", CSVRecordReader().initialize(a))
        .add_reader("b", CSVRecordReader().initialize(b))
        .add_input("a")
        .add_output("b")
    )
    with pytest.raises(ValueError, match="reader 'a' ended after 5 records but reader 'b'"):
        list(builder)
    with pytest.raises(ValueError, match=r"no reader named 'c' \(readers: 'a', 'b'\)"):
        builder.add_input("c")
    with pytest.raises(ValueError, match="last .1. must not be below first .2."):
        builder.add_input("a", 2, 1)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        builder.add_output_one_hot("a", 0, 0)
    with pytest.raises(ValueError, match="alignment must be one of"):
        builder.alignment("middle")
    with pytest.raises(ValueError, match="reader named 'a' was added already"):
        builder.add_reader("a", CSVRecordReader())
    with pytest.raises(ValueError, match="no input"):
        list(MultiDataSetBuilder(2).add_reader("a", CSVRecordReader()))
    with pytest.raises(ValueError, match="reader 'b' is used by no input or output"):
        list(MultiDataSetBuilder(2).add_reader("a", []).add_reader("b", []).add_input("a"))


def test_a_column_range_starting_past_the_record_is_an_error(tmp_path):
    path = _write_csv(tmp_path / "a.csv", [[1.0, 2.0, 3.0, 4.0]] * 2)
    with pytest.raises(
        CsvError,
        match=r"a\.csv, line 1: expected at least 11 columns for the array of reader 'r', "
        r"columns 10\.\.last, found 4",
    ):
        list(_builder(path).add_input("r", 10))
    with pytest.raises(CsvError, match=r"at least 5 columns .*columns 4\.\.last, found 4"):
        list(_builder(path).add_input("r", 0, 1).add_output("r", 4, None))
    with pytest.raises(CsvError, match=r"at least 5 columns .*column 4 one-hot"):
        list(_builder(path).add_input("r").add_output_one_hot("r", 4, 2))


def test_an_open_column_range_has_one_width_across_partitions(sc):
    from sparkbatch.records import SequenceRecord
    from sparkbatch.spark import SparkSequenceSource, SparkSource, executor_errors, map_rrmdsi
    from sparkbatch.spark.multi import JoinedToMultiDataSets, RecordsToMultiDataSets, _widths

    # partition 0 of width 6, partition 1 of width 5: each partition alone is consistent
    rdd = sc.parallelize([[0.0, 1, 2, 3, 4, 5]] * 2 + [[0.0, 1, 2, 3, 4]] * 2, 2)
    builder = MultiDataSetBuilder(4).add_reader("r", SparkSource(0)).add_input("r", 1, None)
    with (
        pytest.raises(
            CsvError,
            match=r"rdd_or_rdds\[0\], partition 1, element 0: expected 6 columns \(as the first "
            r"record of rdd_or_rdds\[0\]\), found 5",
        ),
        executor_errors(),
    ):
        map_rrmdsi(rdd, builder).collect()
    closed = MultiDataSetBuilder(4).add_reader("r", SparkSource(0)).add_input("r", 1, 4)
    parts = map_rrmdsi(rdd, closed).glom().collect()
    assert [[m.features[0].shape for m in p] for p in parts] == [[(2, 4)], [(2, 4)]]
    # sequences: the first step of the first sequence (the driver's take(1)); a partition's
    # converter, run here as an executor runs it, refuses another width
    seqs = sc.parallelize([SequenceRecord([[0.0, 1.0, 2.0]] * 2), SequenceRecord([[0.0, 1.0]])], 2)
    builder = MultiDataSetBuilder(4).add_sequence_reader("s", SparkSequenceSource(0)).add_input("s")
    widths = _widths(builder, {"s": 0}, [seqs], 0)
    assert widths == {"s": (3, "the first step of the first sequence of seq_rdds[0]")}
    convert = RecordsToMultiDataSets(builder, "seq_rdds[0]", widths)
    with pytest.raises(
        CsvError,
        match=r"expected 3 columns \(as the first step of the first sequence of seq_rdds\[0\]\), "
        r"found 2",
    ):
        list(convert(1, [SequenceRecord([[0.0, 1.0]])]))
    # several RDDs (a join): the same widths
    builder = (
        MultiDataSetBuilder(4)
        .add_reader("a", SparkSource(0))
        .add_sequence_reader("s", SparkSequenceSource(0))
        .add_input("a", 1, None)
        .add_input("s", 1, 1)
    )
    a = sc.parallelize([["k", 1.0, 2.0]], 1)
    widths = _widths(builder, {"a": 0, "s": 1}, [a, seqs], 1)
    assert widths == {"a": (3, "the first record of rdd_or_rdds[0]")}  # closed "s": no job
    join = JoinedToMultiDataSets(builder, {"a": 0, "s": 1}, 1, 2, False, None, widths)
    groups = [("k2", [(0, ["k2", 1.0]), (1, SequenceRecord([["k2", 1.0]]))])]
    with pytest.raises(CsvError, match=r"key 'k2' in rdd_or_rdds\[0\]: expected 3 columns"):
        list(join(1, groups))
