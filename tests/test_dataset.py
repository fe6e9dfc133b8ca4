"""Tests of DataSet, MultiDataSet and their shared array helpers (no Spark)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sparkbatch.data.dataset import DataSet
from sparkbatch.data.multidataset import MultiDataSet


def numbered(*shape: int, dtype: type = np.float32) -> np.ndarray:
    """An array whose values are 0, 1, 2, ... so that every row is distinguishable."""
    return np.arange(np.prod(shape), dtype=dtype).reshape(shape)


def labelled(n: int = 6) -> DataSet:
    return DataSet(numbered(n, 3), numbered(n, 2) + 100)


# --- construction -------------------------------------------------------------------------


def test_construction_keeps_arrays_and_float_dtypes() -> None:
    x, y = numbered(4, 3, dtype=np.float64), numbered(4, 2)
    ds = DataSet(x, y, metadata={"source": "a.csv"})
    assert ds.features is x  # numpy floating arrays are neither copied nor converted
    assert ds.labels is y
    assert ds.features.dtype == np.float64
    assert ds.features_mask is None and ds.labels_mask is None
    assert ds.num_examples == 4 and len(ds) == 4
    assert ds.metadata == {"source": "a.csv"}


def test_lists_and_integers_become_float32() -> None:
    ds = DataSet([[1, 2], [3, 4]], np.array([[0], [1]], dtype=np.int64))
    assert ds.features.dtype == np.float32
    assert ds.labels is not None and ds.labels.dtype == np.float32
    np.testing.assert_array_equal(ds.features, [[1, 2], [3, 4]])


def test_unlabelled() -> None:
    ds = DataSet(np.zeros((3, 2)))
    assert ds.labels is None
    assert len(ds[1:]) == 2


def test_sequence_masks_accepted() -> None:
    ds = DataSet(np.zeros((2, 3, 5)), np.zeros((2, 4, 7)), np.ones((2, 5)), np.ones((2, 7)))
    assert ds.features_mask is not None and ds.features_mask.shape == (2, 5)
    assert ds.labels_mask is not None and ds.labels_mask.shape == (2, 7)


def test_example_count_mismatch_names_both_arrays() -> None:
    with pytest.raises(ValueError) as info:
        DataSet(np.zeros((32, 5)), np.zeros((31, 10)))
    assert str(info.value) == (
        "labels has 31 examples but features has 32 (features shape (32, 5), labels shape (31, 10))"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features_mask": np.ones((3, 4))}, "features_mask has 3 examples but features has 2"),
        ({"labels_mask": np.ones((2, 4))}, "labels_mask was given but labels is None"),
        ({"features_mask": np.ones((2, 4, 1))}, "features_mask must be 2-D [n, t]"),
        ({"features_mask": np.ones((2, 3))}, "features_mask has 3 time steps but features has 4"),
    ],
)
def test_mask_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        DataSet(np.zeros((2, 3, 4)), **kwargs)


def test_mask_for_non_sequence_array_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"features_mask was given but features has shape \(2, 3\)"
    ):
        DataSet(np.zeros((2, 3)), np.zeros((2, 1)), features_mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"labels_mask was given but labels has shape \(2, 1\)"):
        DataSet(np.zeros((2, 3, 4)), np.zeros((2, 1)), labels_mask=np.ones((2, 4)))


def test_labels_mask_time_steps_checked_against_labels() -> None:
    with pytest.raises(ValueError, match="labels_mask has 4 time steps but labels has 6"):
        DataSet(np.zeros((2, 3, 4)), np.zeros((2, 1, 6)), np.ones((2, 4)), np.ones((2, 4)))


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (None, None, "features must be an array, got None"),
        (np.zeros(3), None, r"features must have at least 2 dimensions \[n, \.\.\.\]"),
        (np.zeros((3, 1)), np.zeros(3), "labels must have at least 2 dimensions"),
        (np.array([["a"]]), None, "features must hold numbers"),
    ],
)
def test_bad_arrays(features: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataSet(features, labels)


def test_bad_metadata() -> None:
    with pytest.raises(ValueError, match="metadata must be a dict of str to str"):
        DataSet(np.zeros((1, 1)), metadata={"n": 3})  # type: ignore[dict-item]


def test_repr_shows_shapes_not_data() -> None:
    ds = DataSet(np.zeros((2, 3, 4), np.float32), None, np.ones((2, 4), np.float32))
    assert repr(ds) == (
        "DataSet(num_examples=2, features=float32(2, 3, 4), features_mask=float32(2, 4))"
    )


# --- indexing, split, shuffle, copy -------------------------------------------------------


def test_int_index_keeps_dimension() -> None:
    ds = labelled()
    one = ds[2]
    assert isinstance(one, DataSet)
    np.testing.assert_array_equal(one.features, [[6, 7, 8]])
    np.testing.assert_array_equal(ds[-1].features, [[15, 16, 17]])
    with pytest.raises(IndexError, match="index 6 is out of range for 6 examples"):
        ds[6]


def test_slice_is_a_view() -> None:
    ds = labelled()
    part = ds[1:5:2]
    np.testing.assert_array_equal(part.features, ds.features[[1, 3]])
    assert np.shares_memory(part.features, ds.features)


def test_index_array_and_boolean_mask() -> None:
    ds = labelled()
    picked = ds[np.array([4, 0, -1])]
    assert picked.labels is not None
    np.testing.assert_array_equal(picked.labels[:, 0], [108, 100, 110])
    chosen = ds[[True, False, False, True, False, False]]
    np.testing.assert_array_equal(chosen.features[:, 0], [0, 9])
    assert len(ds[[]]) == 0
    with pytest.raises(IndexError, match="boolean index has length 2 but there are 6 examples"):
        ds[np.array([True, False])]
    with pytest.raises(IndexError, match="index 7 is out of range"):
        ds[[0, 7]]
    with pytest.raises(TypeError):
        ds[1.5]  # type: ignore[index]


def test_split_sizes_order_and_views() -> None:
    ds = labelled(7)
    parts = ds.split(3)
    assert [len(p) for p in parts] == [3, 3, 1]
    assert all(np.shares_memory(p.features, ds.features) for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.features for p in parts]), ds.features)
    np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), ds.labels)
    assert [len(p) for p in ds.split(7)] == [7]
    assert [len(p) for p in ds.split(100)] == [7]
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        ds.split(0)


def test_shuffle_is_seeded_permutation_keeping_rows_together() -> None:
    ds = labelled(20)
    a, b = ds.shuffle(seed=7), ds.shuffle(seed=7)
    np.testing.assert_array_equal(a.features, b.features)
    assert not np.array_equal(a.features, ds.features)
    assert not np.array_equal(ds.shuffle(seed=8).features, a.features)
    order = (a.features[:, 0] // 3).astype(int)  # row i of numbered(20, 3) starts at 3 * i
    assert sorted(order) == list(range(20))
    assert a.labels is not None
    np.testing.assert_array_equal(a.labels[:, 0], 100 + 2 * order)
    np.testing.assert_array_equal(order, np.random.default_rng(7).permutation(20))


def test_shuffle_and_copy_of_read_only_arrays(tmp_path: object) -> None:
    x = numbered(5, 2)
    x.flags.writeable = False
    ds = DataSet(x, numbered(5, 1))
    shuffled = ds.shuffle(seed=0)
    np.testing.assert_array_equal(ds.features, numbered(5, 2))  # original untouched
    copied = ds.copy()
    assert copied.features.flags.writeable
    assert not np.shares_memory(copied.features, x)
    copied.features[0, 0] = -1
    assert x[0, 0] == 0
    assert len(shuffled) == 5


def test_copy_is_deep() -> None:
    ds = DataSet(np.zeros((2, 1, 3)), np.zeros((2, 1)), np.ones((2, 3)), metadata={"k": "v"})
    copied = ds.copy()
    assert copied.features_mask is not None and ds.features_mask is not None
    assert not np.shares_memory(copied.features_mask, ds.features_mask)
    assert copied.metadata == {"k": "v"} and copied.metadata is not ds.metadata


# --- merge --------------------------------------------------------------------------------


def test_merge_2d() -> None:
    ds = labelled(5)
    merged = DataSet.merge([ds[:2], ds[2:3], ds[3:]])
    np.testing.assert_array_equal(merged.features, ds.features)
    np.testing.assert_array_equal(merged.labels, ds.labels)
    assert merged.features_mask is None


def test_merge_single_returns_it_and_empty_raises() -> None:
    ds = labelled()
    assert DataSet.merge([ds]) is ds
    with pytest.raises(ValueError, match="cannot merge an empty list"):
        DataSet.merge([])


def test_merge_sequences_of_different_lengths() -> None:
    a = DataSet(numbered(1, 2, 2) + 1, numbered(1, 1, 3) + 1)
    b = DataSet(numbered(2, 2, 3) + 1, numbered(2, 1, 1) + 1)
    merged = DataSet.merge([a, b])
    expected_features = np.array(
        [
            [[1, 2, 0], [3, 4, 0]],
            [[1, 2, 3], [4, 5, 6]],
            [[7, 8, 9], [10, 11, 12]],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(merged.features, expected_features)
    np.testing.assert_array_equal(merged.features_mask, [[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    # Labels have their own longest length (3, from a), independent of the features.
    np.testing.assert_array_equal(merged.labels, [[[1, 2, 3]], [[1, 0, 0]], [[2, 0, 0]]])
    np.testing.assert_array_equal(merged.labels_mask, [[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    assert merged.features.dtype == np.float32
    assert merged.features_mask is not None and merged.features_mask.dtype == np.float32


def test_merge_equal_length_sequences_without_masks_has_no_mask() -> None:
    a = DataSet(np.ones((1, 2, 3)), np.ones((1, 1)))
    merged = DataSet.merge([a, a])
    assert merged.features.shape == (2, 2, 3)
    assert merged.features_mask is None


def test_merge_where_one_input_has_a_mask() -> None:
    masked = DataSet(np.ones((1, 1, 4)), None, np.array([[1, 1, 0, 0]], dtype=np.float32))
    plain = DataSet(np.ones((2, 1, 2)), None)
    merged = DataSet.merge([plain, masked])
    np.testing.assert_array_equal(merged.features_mask, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(
        merged.features[:, 0, :], [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    )
    same_length = DataSet.merge([DataSet(np.ones((1, 1, 4))), masked])
    np.testing.assert_array_equal(same_length.features_mask, [[1, 1, 1, 1], [1, 1, 0, 0]])
    assert same_length.labels is None and same_length.labels_mask is None


def test_merge_keeps_dtype_and_first_metadata() -> None:
    a = DataSet(np.zeros((1, 2, 2), np.float64), metadata={"part": "0"})
    b = DataSet(np.zeros((1, 2, 3), np.float64), metadata={"part": "1"})
    merged = DataSet.merge([a, b])
    assert merged.features.dtype == np.float64
    assert merged.features_mask is not None and merged.features_mask.dtype == np.float64
    assert merged.metadata == {"part": "0"}
    half = DataSet.merge([DataSet(np.zeros((1, 2), np.float16))] * 2)
    assert half.features.dtype == np.float16


def test_merge_errors() -> None:
    with pytest.raises(ValueError, match="labels is None in dataset 1 but not in dataset 0"):
        DataSet.merge([labelled(2), DataSet(np.zeros((2, 3)))])
    with pytest.raises(ValueError) as info:
        DataSet.merge([labelled(2), labelled(2), DataSet(np.zeros((1, 4)), np.zeros((1, 2)))])
    assert str(info.value) == (
        "cannot merge: features of dataset 2 has shape (1, 4) but dataset 0 has shape (2, 3);"
        " all but the first dimension must match"
    )
    with pytest.raises(ValueError, match="features of dataset 1 has shape \\(1, 3, 2\\)"):
        DataSet.merge([DataSet(np.zeros((1, 2, 2))), DataSet(np.zeros((1, 3, 2)))])
    with pytest.raises(ValueError, match="features of dataset 1 has shape \\(1, 2, 2\\)"):
        DataSet.merge([DataSet(np.zeros((1, 4))), DataSet(np.zeros((1, 2, 2)))])


# --- MultiDataSet -------------------------------------------------------------------------


def multi(n: int = 4) -> MultiDataSet:
    return MultiDataSet(
        [numbered(n, 3), numbered(n, 2, 5)],
        [numbered(n, 1) + 100],
        features_masks=[None, np.ones((n, 5), np.float32)],
        metadata={"k": "v"},
    )


def test_multi_construction() -> None:
    mds = multi()
    assert mds.num_examples == 4 and len(mds) == 4
    assert len(mds.features) == 2 and len(mds.labels) == 1
    assert mds.features_masks[0] is None and mds.features_masks[1] is not None
    assert mds.labels_masks == (None,)
    single = MultiDataSet(np.zeros((2, 3)), np.zeros((2, 1)))
    assert len(single.features) == 1 and single.features[0].shape == (2, 3)
    unlabelled = MultiDataSet([np.zeros((2, 3))])
    assert unlabelled.labels == () and unlabelled.labels_masks == ()
    assert repr(single) == (
        "MultiDataSet(num_examples=2, features[0]=float64(2, 3), labels[0]=float64(2, 1))"
    )


def test_multi_validation_names_arrays() -> None:
    with pytest.raises(ValueError) as info:
        MultiDataSet([np.zeros((4, 3)), np.zeros((5, 2))], [np.zeros((4, 1))])
    assert str(info.value) == (
        "features[1] has 5 examples but features[0] has 4"
        " (features[0] shape (4, 3), features[1] shape (5, 2))"
    )
    with pytest.raises(ValueError, match="labels\\[0\\] has 3 examples but features\\[0\\] has 4"):
        MultiDataSet([np.zeros((4, 3))], [np.zeros((3, 1))])
    with pytest.raises(ValueError, match="features_masks has 1 entries but there are 2 features"):
        MultiDataSet([np.zeros((4, 3)), np.zeros((4, 2))], None, [None])
    with pytest.raises(ValueError, match="features_masks\\[0\\] was given but features\\[0\\]"):
        MultiDataSet([np.zeros((4, 3))], None, [np.ones((4, 3))])
    with pytest.raises(ValueError, match="labels_masks\\[0\\] has 2 time steps but labels\\[0\\]"):
        MultiDataSet([np.zeros((4, 3))], [np.zeros((4, 1, 3))], None, [np.ones((4, 2))])
    with pytest.raises(ValueError, match="features must hold at least one array"):
        MultiDataSet([], [np.zeros((4, 3))])


def test_multi_indexing_split_shuffle_copy() -> None:
    mds = multi(5)
    one = mds[3]
    np.testing.assert_array_equal(one.features[0], [[9, 10, 11]])
    assert one.features_masks[0] is None and one.metadata == {"k": "v"}
    parts = mds.split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    for i in range(2):
        np.testing.assert_array_equal(
            np.concatenate([p.features[i] for p in parts]), mds.features[i]
        )
    shuffled = mds.shuffle(seed=3)
    order = np.random.default_rng(3).permutation(5)
    np.testing.assert_array_equal(shuffled.features[0], mds.features[0][order])
    np.testing.assert_array_equal(shuffled.features[1], mds.features[1][order])
    np.testing.assert_array_equal(shuffled.labels[0][:, 0], 100 + order)
    np.testing.assert_array_equal(mds.shuffle(seed=3).features[1], shuffled.features[1])
    picked = mds[np.array([False, True, False, True, False])]
    np.testing.assert_array_equal(picked.labels[0][:, 0], [101, 103])
    copied = mds.copy()
    assert all(
        a.flags.writeable and not np.shares_memory(a, b)
        for a, b in zip(copied.features, mds.features, strict=True)
    )


def test_multi_merge_with_masks_and_none_entries() -> None:
    a = MultiDataSet(
        [np.ones((1, 2)), np.ones((1, 1, 2))],
        [np.ones((1, 1, 3))],
        features_masks=[None, None],
        labels_masks=[np.array([[1.0, 1.0, 0.0]])],
    )
    b = MultiDataSet([np.ones((2, 2)) * 2, np.ones((2, 1, 4)) * 2], [np.ones((2, 1, 3)) * 2])
    merged = MultiDataSet.merge([a, b])
    np.testing.assert_array_equal(merged.features[0], [[1, 1], [2, 2], [2, 2]])
    assert merged.features_masks[0] is None
    np.testing.assert_array_equal(
        merged.features[1][:, 0, :], [[1, 1, 0, 0], [2, 2, 2, 2], [2, 2, 2, 2]]
    )
    np.testing.assert_array_equal(
        merged.features_masks[1], [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    )
    np.testing.assert_array_equal(merged.labels_masks[0], [[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    assert MultiDataSet.merge([a]) is a


def test_multi_merge_errors() -> None:
    two_inputs = multi(2)
    with pytest.raises(ValueError, match="dataset 1 has 1 features arrays but dataset 0 has 2"):
        MultiDataSet.merge([two_inputs, MultiDataSet([np.zeros((2, 3))], [np.zeros((2, 1))])])
    with pytest.raises(ValueError, match="labelled and unlabelled data cannot be mixed"):
        MultiDataSet.merge([two_inputs, MultiDataSet(list(two_inputs.features))])
    with pytest.raises(ValueError, match="features\\[1\\] of dataset 1 has shape \\(2, 3, 5\\)"):
        other = MultiDataSet([numbered(2, 3), numbered(2, 3, 5)], [numbered(2, 1)])
        MultiDataSet.merge([two_inputs, other])
    with pytest.raises(ValueError, match="cannot merge an empty list of MultiDataSets"):
        MultiDataSet.merge([])


def test_conversion_between_dataset_and_multi() -> None:
    ds = DataSet(np.zeros((2, 1, 3)), np.zeros((2, 4)), np.ones((2, 3)), metadata={"a": "b"})
    mds = ds.to_multi()
    assert isinstance(mds, MultiDataSet)
    assert mds.features[0] is ds.features and mds.labels[0] is ds.labels
    assert mds.features_masks == (ds.features_mask,) and mds.labels_masks == (None,)
    assert mds.metadata == {"a": "b"}
    unlabelled = MultiDataSet.from_dataset(DataSet(np.zeros((2, 3))))
    assert unlabelled.labels == () and len(unlabelled.features) == 1
