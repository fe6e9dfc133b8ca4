"""dataframe_to_datasets with Spark ML vectors, arrays, sequences and column groups, on a real
local Spark, against numpy references; the Arrow column decoders on their own, without Spark."""

from __future__ import annotations

import numpy as np
import pytest

from sparkbatch.convert import LabelSpec
from sparkbatch.convert.sequences import tables_to_dataset
from sparkbatch.data import MultiDataSet, from_bytes
from sparkbatch.errors import DataFrameError, SequenceLengthError
from sparkbatch.spark import ArrowToMinibatches, dataframe_to_datasets, executor_errors
from sparkbatch.spark._arrow_columns import Column, Where, decode_column
from sparkbatch.spark.dataframe import Group, Layout

pa = pytest.importorskip("pyarrow")

N, WIDTH, CLASSES = 9, 4, 3
NAMES = ["x", "v", "a", "s", "ys", "y", "r"]


def _reference(seed: int = 3) -> dict:
    """Nine rows: a number, a vector (dense and sparse rows, one sparse row all zeros), an
    array of 3 ints, a sequence of 1-4 steps of 2 values with a class per step, a class and a
    real label; every value exact in float32."""
    rng = np.random.default_rng(seed)
    vectors = rng.integers(-8, 8, (N, WIDTH)) / 4 * (rng.random((N, WIDTH)) < 0.5)
    vectors[3] = 0
    lengths = np.array([3, 1, 4, 2, 2, 1, 4, 3, 2])
    steps = [rng.integers(-8, 8, (t, 2)) / 4 for t in lengths]
    return {
        "x": rng.integers(-8, 8, N) / 4,
        "v": vectors,
        "a": rng.integers(-50, 50, (N, 3)),
        "s": steps,
        "ys": [rng.integers(0, CLASSES, t) for t in lengths],
        "y": rng.integers(0, CLASSES, N),
        "r": rng.integers(-8, 8, N) / 8,
    }


def _rows(ref: dict) -> list[tuple]:
    from pyspark.ml.linalg import Vectors

    rows = []
    for i in range(N):
        vector = ref["v"][i]
        if i % 2:  # odd rows sparse, even rows dense: one column holds both
            where = np.flatnonzero(vector)
            vector = Vectors.sparse(WIDTH, where.tolist(), vector[where].tolist())
        else:
            vector = Vectors.dense(vector.tolist())
        rows.append(
            (
                float(ref["x"][i]),
                vector,
                ref["a"][i].tolist(),
                ref["s"][i].tolist(),
                ref["ys"][i].tolist(),
                int(ref["y"][i]),
                float(ref["r"][i]),
            )
        )
    return rows


@pytest.fixture(scope="module")
def frame(spark):
    """The nine rows in two partitions (rows 0-3 and 4-8, as Spark splits local data)."""
    ref = _reference()
    return spark.createDataFrame(_rows(ref), NAMES), ref


def _f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _tables(ref: dict, rows: range) -> list[np.ndarray]:
    """Row ``i``'s steps with its per-step class as the last column: a CSV sequence file."""
    return [np.column_stack([ref["s"][i], ref["ys"][i]]) for i in rows]


@pytest.mark.spark
def test_every_column_type_in_groups_against_numpy(frame):
    """Numbers, vectors (dense and sparse in one column), fixed arrays and sequences with
    per-step labels, in column groups over two partitions: MultiDataSets whose sequences are
    padded and masked as CSV sequences are (``tables_to_dataset``)."""
    df, ref = frame
    out = dataframe_to_datasets(
        df,
        [["x", "a"], "v", ["s"]],
        [["r", "v"], ["ys"]],
        regression=True,
        batch_size=3,
        alignment="align_end",
    ).collect()
    parts = [range(0, 3), range(3, 4), range(4, 7), range(7, 9)]  # partitions: rows 0-3, 4-8
    assert [type(m) for m in out] == [MultiDataSet] * 4
    assert [m.num_examples for m in out] == [len(p) for p in parts]
    spec = LabelSpec(label_first=2, label_last=2, regression=True)
    for mds, rows in zip(out, parts, strict=True):
        index = list(rows)
        np.testing.assert_array_equal(
            mds.features[0], _f32(np.column_stack([ref["x"], ref["a"]])[index])
        )
        np.testing.assert_array_equal(mds.features[1], _f32(ref["v"][index]))
        sequences = tables_to_dataset(spec, _tables(ref, rows), alignment="align_end")
        np.testing.assert_array_equal(mds.features[2], sequences.features)
        np.testing.assert_array_equal(mds.features_masks[2], sequences.features_mask)
        assert mds.features_masks[:2] == (None, None) and mds.labels_masks[0] is None
        labels = np.column_stack([ref["r"], ref["v"]])[index]
        np.testing.assert_array_equal(mds.labels[0], _f32(labels))
        np.testing.assert_array_equal(mds.labels[1], sequences.labels)  # [n, 1, T] per step
        np.testing.assert_array_equal(mds.labels_masks[1], sequences.labels_mask)
    assert out[1].features_masks[2].tolist() == [[1.0, 1.0]]  # masked where nothing is padded


@pytest.mark.spark
def test_a_ragged_array_names_the_column_and_its_row_of_its_partition(spark):
    rows = [([1.0, 2.0],), ([3.0, 4.0],)] * 2 + [([5.0, 6.0],), ([7.0],)]
    df = spark.createDataFrame(rows, ["a"])  # partitions of rows 0-2 and 3-5
    with (
        pytest.raises(
            DataFrameError,
            match=r"column 'a', row 2 of partition 1: expected 2 values .* found 1\n",
        ),
        executor_errors(),
    ):
        dataframe_to_datasets(df, ["a"]).count()


@pytest.mark.spark
def test_bad_columns_fail_at_the_call(frame, spark):
    df, _ = frame
    with pytest.raises(ValueError, match=r"columns \['x', 's'\] make one array but mix"):
        dataframe_to_datasets(df, ["x", "s"])
    with pytest.raises(ValueError, match="column 'v' holds class labels: expected a number"):
        dataframe_to_datasets(df, ["x"], "v", num_classes=2)
    with pytest.raises(ValueError, match="num_classes has 1 entries for 2 labels arrays"):
        dataframe_to_datasets(df, ["x"], [["y"], ["ys"]], num_classes=[3])
    other = spark.createDataFrame([({"k": 1.0},)], ["m"])
    with pytest.raises(ValueError, match=r"column 'm' has type map<string,double>: expected"):
        dataframe_to_datasets(other, ["m"])
    empty = spark.createDataFrame([([], [[]])] * 2, "a array<double>, s array<array<double>>")
    with pytest.raises(DataFrameError, match="'s', the first row .* one value per step, found"):
        dataframe_to_datasets(empty, [["s"], ["a"]])  # numpy cannot reshape values of width 0


# -- the decoders and the record-batch carry, without Spark --------------------------------


def _decode(values, kind: str, width: int = 1):
    return decode_column(values, Column("c", kind, width), Where(2, 10))


def _vectors(rows: list[tuple]) -> object:
    """Arrow vectors as Spark sends them: (type, size, indices, values), 1 = dense."""
    vector = pa.struct(
        [
            ("type", pa.int8()),
            ("size", pa.int32()),
            ("indices", pa.list_(pa.int32())),
            ("values", pa.list_(pa.float64())),
        ]
    )
    return pa.array(
        [
            None if r is None else dict(zip(("type", "size", "indices", "values"), r, strict=True))
            for r in rows
        ],
        type=vector,
    )


def test_vector_and_array_decoders_and_their_errors():
    vectors = _vectors([(1, None, None, [1, 2, 3]), (0, 3, [2], [5.0]), (0, 3, [], [])])
    expected = [[1, 2, 3], [0, 0, 5], [0, 0, 0]]
    assert _decode(vectors, "vector", 3).values.tolist() == expected
    assert _decode(vectors.slice(1), "vector", 3).values.tolist() == expected[1:]
    bad = [
        (_vectors([(1, None, None, [1.0]), None]), "vector", 1, "is null in row 11 of partition 2"),
        (_vectors([(0, 4, [1], [1.0])]), "vector", 3, "row 10 of partition 2: expected 3 values"),
        (_vectors([(0, 3, [1, 3], [1.0, 2.0])]), "vector", 3, "sparse index 3 outside"),
        (pa.array([[1.0], [None]]), "array", 1, "null value in row 11 of partition 2"),
        (pa.array([[1.0], []]), "steps", 1, "row 11 of partition 2: a sequence needs at least"),
        (pa.array([[[1.0]], [[1.0], [2.0, 3.0]]]), "sequence", 1, "row 11 .*, step 1: expected 1"),
        (pa.array([[[1.0]], [[1.0], None]]), "sequence", 1, "null step in row 11 .*, step 1"),
        (pa.array([[[1.0]], [[1.0], [None]]]), "sequence", 1, "null value in row 11 .*, step 1"),
        (pa.array([1.0, None]), "scalar", 1, "column 'c' is null in row 11 of partition 2"),
    ]
    for array, kind, width, message in bad:
        with pytest.raises(DataFrameError, match=message):
            _decode(array, kind, width)
    sequence = pa.array([[[1.0, 2.0]], [[3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0]]]).slice(1)
    block = _decode(sequence, "sequence", 2)
    assert block.values.tolist() == [[3, 4], [5, 6], [7, 8]] and block.lengths.tolist() == [2, 1]


def _sequence_batches() -> list[object]:
    """Two record batches (3 rows, then 2) of a sequence column and a per-step class column."""
    s = [[[1.0]], [[2.0], [3.0]], [[4.0]], [[5.0], [6.0], [7.0]], [[8.0]]]
    ys = [[0], [1, 0], [1], [0, 1, 1], [2]]
    return [
        pa.RecordBatch.from_arrays([pa.array(s[a:b]), pa.array(ys[a:b])], names=["c0", "c1"])
        for a, b in ((0, 3), (3, 5))
    ]


def test_minibatches_carry_rows_across_record_batches():
    columns = (Column("s", "sequence", 1), Column("ys", "steps"))
    layout = Layout(columns, (Group((0,)),), (Group((1,), 3),))
    convert = ArrowToMinibatches(["s", "ys"], LabelSpec(), 2, layout=layout)
    batches = convert(iter(_sequence_batches()))
    out = [from_bytes(blob.as_py()) for batch in batches for blob in batch.column(0)]
    assert [d.num_examples for d in out] == [2, 2, 1]
    steps = [[1.0], [2.0, 3.0], [4.0], [5.0, 6.0, 7.0], [8.0]]
    classes = [[0], [1, 0], [1], [0, 1, 1], [2]]
    tables = [np.column_stack([a, b]) for a, b in zip(steps, classes, strict=True)]
    spec = LabelSpec(label_index=1, num_classes=3)
    for ds, (a, b) in zip(out, ((0, 2), (2, 4), (4, 5)), strict=True):
        expected = tables_to_dataset(spec, tables[a:b])  # as CSV sequences pad, align_start
        for name in ("features", "features_mask", "labels", "labels_mask"):
            np.testing.assert_array_equal(getattr(ds, name), getattr(expected, name), name)
    assert out[1].features[:, 0].tolist() == [[4.0, 0.0, 0.0], [5.0, 6.0, 7.0]]
    assert out[1].labels_mask.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert out[1].labels[1].argmax(axis=0).tolist() == [0, 1, 1]

    bad_class = Layout(columns, (Group((0,)),), (Group((1,), 2),))
    with pytest.raises(DataFrameError, match=r"'ys', row 4 of partition 0, step 0: .* found 2"):
        list(ArrowToMinibatches([], LabelSpec(), 2, layout=bad_class)(iter(_sequence_batches())))
    equal = Layout(columns, (Group((0,)),), alignment="equal_length")
    with pytest.raises(SequenceLengthError, match="'s' has 1 steps in row 0 .* 2 in row 1"):
        list(ArrowToMinibatches([], LabelSpec(), 2, layout=equal)(iter(_sequence_batches())))
