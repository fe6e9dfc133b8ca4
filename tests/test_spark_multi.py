"""map_rrmdsi on a real local Spark, against numpy references: one RDD (no join), three RDDs
(one of sequences) joined by key with and without filter_missing, export and reload with masks,
fit_multi of a two-input Graph, and bad keys and cells named by key, RDD, step and column."""

from __future__ import annotations

import numpy as np
import pytest

from sparkbatch.convert import MultiDataSetBuilder
from sparkbatch.data import FileMultiDataSetIterator, MultiDataSet
from sparkbatch.errors import CsvError, KeyJoinError
from sparkbatch.nn import Adam, Dense, Graph, Merge, Output
from sparkbatch.records import CSVRecordReader, SequenceRecord
from sparkbatch.spark import (
    JoinedToMultiDataSets,
    RecordsToMultiDataSets,
    SparkSequenceSource,
    SparkSource,
    StringToRecords,
    batch_and_export,
    executor_errors,
    map_rrmdsi,
)
from sparkbatch.spark.multi import _Keyed
from sparkbatch.train import ParameterAveraging, SparkNetwork

pytestmark = pytest.mark.spark


def test_one_rdd_keeps_its_order_and_matches_numpy(sc, tmp_path):
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(23, 4)), 4)
    cls = rng.integers(0, 3, size=23)
    path = tmp_path / "iris.csv"
    path.write_text(
        "".join(",".join(map(str, [*row, c])) + "\n" for row, c in zip(x, cls, strict=True))
    )
    rdd = sc.textFile(str(path), minPartitions=2).map(StringToRecords(CSVRecordReader()))
    builder = (
        MultiDataSetBuilder(5)
        .add_reader("data", SparkSource(0))
        .add_input("data", 0, 3)
        .add_output_one_hot("data", 4, 3)
    )
    batches = map_rrmdsi(rdd, builder).collect()
    assert all(b.num_examples <= 5 for b in batches) and len(batches) >= 5
    mds = MultiDataSet.merge(batches)
    np.testing.assert_allclose(mds.features[0], x, rtol=1e-6)
    np.testing.assert_array_equal(mds.labels[0], np.eye(3)[cls])


def _joined_data(sc, n=40, seed=1):
    """Three RDDs keyed by ``"k<i>"``: records ``a`` [key, i, a0..a2], records ``b`` [key, b0,
    class] and sequences ``s`` of 1-7 steps [key, x0, x1]. Some keys are missing from ``b`` or
    ``s`` (or only in ``b``); returns the RDDs, the references by ``i`` and the keys missing."""
    rng = np.random.default_rng(seed)
    a = {i: np.round(rng.normal(size=3), 4) for i in range(n)}
    b = {i: (round(float(rng.normal()), 4), int(rng.integers(0, 3))) for i in range(n + 1)}
    s = {i: np.round(rng.normal(size=(int(rng.integers(1, 8)), 2)), 4) for i in range(n)}
    for i in (5, 17):
        del b[i]
    del s[8]
    rdd_a = sc.parallelize([[f"k{i}", float(i), *v] for i, v in a.items()][::-1], 3)
    rdd_b = sc.parallelize([[f"k{i}", v, c] for i, (v, c) in b.items()], 2)
    rdd_s = sc.parallelize([[[f"k{i}", *step] for step in t.tolist()] for i, t in s.items()], 2)
    return (rdd_a, rdd_b, rdd_s), (a, b, s), {5, 17, 8, n}


def _joined_builder(batch_size=8):
    return (
        MultiDataSetBuilder(batch_size)
        .add_reader("a", SparkSource(0))
        .add_reader("b", SparkSource(1))
        .add_sequence_reader("s", SparkSequenceSource(0))
        .add_input("a", 1, 4)
        .add_input("s", 1, 2)
        .add_output("b", 1, 1)
        .add_output_one_hot("b", 2, 3)
    )


def _check_joined(mds, refs, keys):
    a, b, s = refs
    order = np.argsort(mds.features[0][:, 0])
    ids = mds.features[0][order, 0].astype(int)
    assert ids.tolist() == keys
    steps = mds.features[1].shape[2]
    assert steps == max(len(s[i]) for i in keys)
    for row, i in zip(order, ids, strict=True):
        np.testing.assert_allclose(mds.features[0][row, 1:], a[i], rtol=1e-6)
        t = len(s[i])
        np.testing.assert_allclose(mds.features[1][row, :, :t], s[i].T, rtol=1e-6)
        assert not mds.features[1][row, :, t:].any()
        mask = mds.features_masks[1]
        expected = np.r_[np.ones(t), np.zeros(steps - t)]
        np.testing.assert_array_equal(np.ones(steps) if mask is None else mask[row], expected)
        np.testing.assert_allclose(mds.labels[0][row], [b[i][0]], rtol=1e-6)
        np.testing.assert_array_equal(mds.labels[1][row], np.eye(3)[b[i][1]])


def test_three_rdds_joined_filter_missing_exported_and_read_back_with_masks(sc, tmp_path):
    rdds, refs, missing = _joined_data(sc)
    result = map_rrmdsi(
        list(rdds[:2]),
        _joined_builder(),
        key_columns=0,
        seq_rdds=rdds[2],
        seq_key_columns=[0],
        filter_missing=True,
        num_partitions=2,
    )
    batches = result.collect()
    assert result.missing_keys.value == len(missing)  # read after the first action
    assert all(b.num_examples <= 8 for b in batches)
    keys = sorted(set(range(40)) - missing)
    _check_joined(MultiDataSet.merge(batches), refs, keys)

    directory = str(tmp_path / "export")
    urls = batch_and_export(result, directory, batch_size=16)
    loaded = list(FileMultiDataSetIterator(directory))
    assert len(urls) == len(loaded) and sum(m.num_examples for m in loaded) == len(keys)
    assert all(m.features_masks[1] is not None for m in loaded)  # a sequence input's mask
    _check_joined(MultiDataSet.merge(loaded), refs, keys)
    rebatched = list(FileMultiDataSetIterator(directory, batch_size=5))  # merges across files
    assert [m.num_examples for m in rebatched[:-1]] == [5] * (len(rebatched) - 1)
    _check_joined(MultiDataSet.merge(rebatched), refs, keys)


def test_a_missing_key_without_filter_names_the_key_and_the_rdd(sc):
    rdds, _, _ = _joined_data(sc, n=20)
    result = map_rrmdsi(
        list(rdds[:2]), _joined_builder(), key_columns=[0, 0], seq_rdds=[rdds[2]], seq_key_columns=0
    )
    with pytest.raises(
        KeyJoinError,
        match=r"key .k(5|8|17|20). is missing from (rdd_or_rdds\[\d\]|"
        r"seq_rdds\[0\]) \(it is in .*\); pass filter_missing=True",
    ):
        with executor_errors():
            result.collect()


def _two_builder():
    return (
        MultiDataSetBuilder(4)
        .add_reader("a", SparkSource(0))
        .add_reader("b", SparkSource(1))
        .add_input("a", 1, 1)
        .add_output_one_hot("b", 1, 2)
    )


def test_repeated_keys_and_bad_cells_are_named_by_the_partition_functions():
    """What the executors run, called here on what a shuffle gives them (no job per case)."""
    keyed = _Keyed(0, 0, False, "rdd_or_rdds[0]")
    assert keyed(["x", 1.0]) == ("x", (0, ["x", 1.0]))
    with pytest.raises(
        KeyJoinError,
        match=r"rdd_or_rdds\[0\]: the key \[1, 2\] \(column 0\) is a list, which cannot be a "
        "join key",
    ):
        keyed([[1, 2], 1.0])
    with pytest.raises(KeyJoinError, match=r"seq_rdds\[1\]: key column 3 is outside a first step"):
        _Keyed(3, 3, True, "seq_rdds[1]")([["k", 1.0]])
    join = JoinedToMultiDataSets(_two_builder(), {"a": 0, "b": 1}, 2, 2, False, None)
    with pytest.raises(KeyJoinError, match=r"key 'x' appears more than once in rdd_or_rdds\[1\]"):
        list(join(0, [("x", [(0, ["x", 1.0]), (1, ["x", 0]), (1, ["x", 1])])]))
    groups = [("x", [(0, ["x", 1.0]), (1, ["x", 0])]), ("y", [(1, ["y", 2]), (0, ["y", 2.0])])]
    with pytest.raises(
        CsvError,
        match=r"key 'y' in rdd_or_rdds\[1\], column 1: expected an integer class index in "
        r"\[0, 2\), found '2'",
    ):
        list(join(3, groups))
    builder = (
        MultiDataSetBuilder(4)
        .add_sequence_reader("s", SparkSequenceSource(0))
        .add_input("s", 1, 1)
        .add_output_one_hot("s", 2, 2)
    )
    sequence = SequenceRecord([["q", 0.5, 1], ["q", 0.5, 3]], source="q.csv", lines=[2, 3])
    convert = RecordsToMultiDataSets(builder, "seq_rdds[0]")
    with pytest.raises(
        CsvError,
        match=r"seq_rdds\[0\], partition 4, element 1 \(q\.csv\), line 3, step 1, column 2",
    ):
        list(convert(4, [[["p", 0.0, 0]], sequence]))
    with pytest.raises(
        CsvError,
        match=r"seq_rdds\[0\], partition 0, element 1: expected a "
        "sequence of at least one step",
    ):
        list(convert(0, [[["p", 0.0, 0]], []]))


def test_builders_that_do_not_fit_the_rdds_are_refused_at_the_call(sc):
    rdd = sc.parallelize([[1.0, 2.0]])
    with pytest.raises(TypeError, match="reader 'a' is a list; on Spark every reader must be"):
        map_rrmdsi(rdd, MultiDataSetBuilder(2).add_reader("a", []).add_input("a"))
    seq = MultiDataSetBuilder(2).add_reader("a", SparkSequenceSource(0)).add_input("a")
    with pytest.raises(ValueError, match=r"added with add_reader but is SparkSequenceSource"):
        map_rrmdsi(None, seq, seq_rdds=rdd)
    two = MultiDataSetBuilder(2).add_reader("a", SparkSource(1)).add_input("a")
    with pytest.raises(
        ValueError,
        match=r"reader 'a' is SparkSource\(index=1\) but rdd_or_rdds "
        r"holds 1 RDDs",
    ):
        map_rrmdsi(rdd, two)
    with pytest.raises(ValueError, match=r"rdd_or_rdds\[1\] is named by no reader"):
        map_rrmdsi(
            [rdd, rdd], MultiDataSetBuilder(2).add_reader("a", SparkSource(0)).add_input("a")
        )
    both = (
        MultiDataSetBuilder(2)
        .add_reader("a", SparkSource(0))
        .add_reader("b", SparkSource(1))
        .add_input("a")
        .add_input("b")
    )
    with pytest.raises(ValueError, match="joining 2 RDDs needs the key column of each"):
        map_rrmdsi([rdd, rdd], both)
    with pytest.raises(TypeError, match="placeholder for an RDD"):
        list(MultiDataSetBuilder(2).add_reader("a", SparkSource(0)).add_input("a"))


def test_two_joined_rdds_train_a_two_input_graph_with_fit_multi(sc, tmp_path):
    rng = np.random.default_rng(3)
    n = 192
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    cls = (a[:, 0] + b[:, 0] > 0).astype(int)
    value = 0.8 * a[:, 1] - 0.6 * b[:, 1]
    rdd_a = sc.parallelize([[float(i), *a[i]] for i in range(n)], 2)
    rdd_b = sc.parallelize([[float(i), *b[i], cls[i], value[i]] for i in range(n)][::-1], 2)
    builder = (
        MultiDataSetBuilder(32)
        .add_reader("a", SparkSource(0))
        .add_reader("b", SparkSource(1))
        .add_input("a", 1, 3)
        .add_input("b", 1, 2)
        .add_output_one_hot("b", 3, 2)
        .add_output("b", 4, 4)
    )
    directory = str(tmp_path / "train")
    batch_and_export(map_rrmdsi([rdd_a, rdd_b], builder, key_columns=0), directory, 32)
    graph = Graph(
        ["a", "b"],
        {
            "da": (Dense(3, 8, "tanh"), "a"),
            "db": (Dense(2, 8, "tanh"), "b"),
            "m": (Merge(), "da", "db"),
            "class": (Output(16, 2, "softmax", "cross_entropy"), "m"),
            "value": (Output(16, 1, "identity", "mse"), "m"),
        },
        ["class", "value"],
        Adam(0.05),
        seed=1,
    )
    held_out = MultiDataSet([a, b], [np.eye(2)[cls], value[:, None]])
    before = graph.score(held_out)
    master = ParameterAveraging(batch_size_per_worker=32, averaging_frequency=3, workers=2)
    SparkNetwork(sc, graph, master).fit_multi(directory, epochs=4)  # one round an epoch
    assert graph.score(held_out) < before / 3
    assert graph.evaluate(held_out, 0).accuracy() > 0.85
