"""Tests of sparkbatch.evaluation against hand-computed numbers, numpy formulas and sklearn."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sparkbatch.evaluation import Evaluation, RegressionEvaluation

# 3 classes, 8 examples; hand-computed below.
ACTUAL = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 0, 1, 1, 2, 2, 2, 0])
# Confusion matrix (rows actual, columns predicted):
#   [[2, 1, 0],
#    [0, 1, 1],
#    [1, 0, 2]]
CM = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]])
PRECISION = np.array([2 / 3, 1 / 2, 2 / 3])
RECALL = np.array([2 / 3, 1 / 2, 2 / 3])
F1 = 2 * PRECISION * RECALL / (PRECISION + RECALL)


def _scores(predicted: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """Random probabilities whose arg-max is ``predicted``."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.0, 0.4, size=(predicted.size, num_classes))
    scores[np.arange(predicted.size), predicted] = 0.9
    return scores / scores.sum(axis=1, keepdims=True)


def _random_batch(seed: int, n: int = 500, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, c, size=n), rng.dirichlet(np.ones(c), size=n)


# -- classification: hand-computed ------------------------------------------------------------


@pytest.mark.parametrize("one_hot", [False, True])
def test_counts_and_figures_by_hand(one_hot):
    ev = Evaluation(num_classes=3)
    labels = np.eye(3)[ACTUAL] if one_hot else ACTUAL
    ev.eval(labels, _scores(PREDICTED, 3))
    np.testing.assert_array_equal(ev.confusion_matrix(), CM)
    assert ev.confusion_matrix().dtype == np.int64
    assert ev.num_examples == 8
    assert ev.accuracy() == pytest.approx(5 / 8)
    for c in range(3):
        assert ev.precision(c) == pytest.approx(PRECISION[c])
        assert ev.recall(c) == pytest.approx(RECALL[c])
        assert ev.f1(c) == pytest.approx(F1[c])
    assert ev.precision() == pytest.approx(PRECISION.mean())
    assert ev.recall() == pytest.approx(RECALL.mean())
    assert ev.f1() == pytest.approx(F1.mean())
    assert ev.top_n_accuracy() == ev.accuracy()


def test_confusion_matrix_is_a_copy():
    ev = Evaluation(num_classes=3)
    ev.eval(ACTUAL, _scores(PREDICTED, 3))
    ev.confusion_matrix()[0, 0] = 100
    assert ev.confusion_matrix()[0, 0] == 2


def test_class_never_predicted_has_precision_zero_and_unseen_classes_are_left_out():
    ev = Evaluation(num_classes=4)
    # Class 1 is never predicted; class 3 is never seen at all.
    ev.eval(np.array([0, 1, 2, 2]), _scores(np.array([0, 0, 2, 2]), 4))
    assert ev.precision(1) == 0.0 and ev.recall(1) == 0.0 and ev.f1(1) == 0.0
    assert ev.precision(3) == 0.0
    # Macro average over classes 0, 1, 2: precision (1/2, 0, 1), recall (1, 0, 1).
    assert ev.precision() == pytest.approx((0.5 + 0 + 1) / 3)
    assert ev.recall() == pytest.approx(2 / 3)
    assert ev.f1() == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_top_n_by_hand():
    scores = np.array(
        [
            [0.5, 0.3, 0.2, 0.0],  # true 1: rank 1
            [0.1, 0.2, 0.3, 0.4],  # true 0: rank 3
            [0.4, 0.4, 0.1, 0.1],  # true 1: tie with class 0, lower index wins: rank 1
            [0.4, 0.4, 0.1, 0.1],  # true 0: rank 0
            [0.1, 0.2, 0.3, 0.4],  # true 2: rank 1
        ]
    )
    labels = np.array([1, 0, 1, 0, 2])
    for top_n, expected in [(1, 1), (2, 4), (3, 4), (4, 5)]:
        ev = Evaluation(top_n=top_n)
        ev.eval(labels, scores)
        assert ev.top_n_correct == expected, top_n
        assert ev.top_n_accuracy() == pytest.approx(expected / 5)
        assert ev.accuracy() == pytest.approx(1 / 5)


def test_top_n_matches_a_stable_sort():
    labels, scores = _random_batch(3, n=2000, c=7)
    scores = np.round(scores, 1)  # many ties
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.argmax(order == labels[:, None], axis=1)
    for top_n in (1, 2, 3, 7):
        ev = Evaluation(top_n=top_n)
        ev.eval(labels, scores)
        assert ev.top_n_correct == int(np.count_nonzero(rank < top_n))


def test_empty_evaluation_figures_are_nan():
    ev = Evaluation(num_classes=2)
    assert ev.num_examples == 0
    assert np.isnan(ev.accuracy()) and np.isnan(ev.top_n_accuracy()) and np.isnan(ev.precision())
    ev.eval(np.zeros(0, dtype=np.int64), np.zeros((0, 2)))
    assert ev.num_examples == 0
    with pytest.raises(ValueError, match="no classes yet"):
        Evaluation().confusion_matrix()


# -- classification: merge, masks, time series ------------------------------------------------


@pytest.mark.parametrize("top_n", [1, 3])
def test_merging_halves_equals_the_whole(top_n):
    labels, scores = _random_batch(1)
    whole = Evaluation(top_n=top_n)
    whole.eval(labels, scores)
    first, second = Evaluation(top_n=top_n), Evaluation(top_n=top_n)
    first.eval(labels[:230], scores[:230])
    second.eval(labels[230:], scores[230:])
    assert first.merge(second) is first
    np.testing.assert_array_equal(first.confusion_matrix(), whole.confusion_matrix())
    assert first.top_n_correct == whole.top_n_correct
    assert first.num_examples == 500
    for name in ("accuracy", "precision", "recall", "f1", "top_n_accuracy"):
        assert getattr(first, name)() == getattr(whole, name)(), name
    assert first.stats() == whole.stats()


def test_merge_into_an_empty_evaluation_and_pickle():
    labels, scores = _random_batch(2)
    full = Evaluation()
    full.eval(labels, scores)
    merged = Evaluation().merge(pickle.loads(pickle.dumps(full)))
    np.testing.assert_array_equal(merged.confusion_matrix(), full.confusion_matrix())
    assert merged.merge(Evaluation()).num_examples == 500


def test_merge_rejects_mismatches():
    a, b = Evaluation(num_classes=3), Evaluation(num_classes=4)
    with pytest.raises(ValueError, match="4 classes into one of 3 classes"):
        a.merge(b)
    with pytest.raises(ValueError, match="top_n=2 into top_n=1"):
        a.merge(Evaluation(num_classes=3, top_n=2))
    with pytest.raises(ValueError, match="class names"):
        Evaluation(labels=["a", "b"]).merge(Evaluation(labels=["a", "c"]))
    with pytest.raises(TypeError):
        a.merge(RegressionEvaluation())  # type: ignore[arg-type]


@pytest.mark.parametrize("one_hot", [False, True])
def test_masked_time_series_equals_the_unmasked_steps(one_hot):
    rng = np.random.default_rng(4)
    n, c, t = 6, 4, 9
    actual = rng.integers(0, c, size=(n, t))
    scores = rng.dirichlet(np.ones(c), size=(n, t))  # [n, t, c]
    mask = rng.integers(0, 2, size=(n, t))
    mask[0] = 0  # a fully masked example
    labels = np.moveaxis(np.eye(c)[actual], 2, 1) if one_hot else actual
    series = Evaluation(top_n=2)
    series.eval(labels, np.moveaxis(scores, 2, 1), mask=mask)

    flat = Evaluation(num_classes=c, top_n=2)
    keep = mask.astype(bool)
    flat.eval(actual[keep], scores[keep])
    assert series.num_examples == int(keep.sum())
    np.testing.assert_array_equal(series.confusion_matrix(), flat.confusion_matrix())
    assert series.top_n_correct == flat.top_n_correct


def test_time_series_without_mask_and_per_example_mask():
    labels, scores = _random_batch(5, n=40, c=3)
    ts = Evaluation()
    # [4, 3, 10]: example i, step j is row i * 10 + j.
    ts.eval(labels.reshape(4, 10), scores.reshape(4, 10, 3).transpose(0, 2, 1))
    flat = Evaluation()
    flat.eval(labels, scores)
    np.testing.assert_array_equal(ts.confusion_matrix(), flat.confusion_matrix())

    masked = Evaluation()
    masked.eval(labels, scores, mask=np.arange(40) % 2)
    odd = Evaluation()
    odd.eval(labels[1::2], scores[1::2])
    np.testing.assert_array_equal(masked.confusion_matrix(), odd.confusion_matrix())


# -- classification: validation and report ----------------------------------------------------


def test_validation_errors_name_the_argument_and_shapes():
    ev = Evaluation(num_classes=3)
    with pytest.raises(ValueError, match=r"labels and predictions .* \(4, 2\) .* \(4, 3\)"):
        ev.eval(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"predictions have 2 classes .* num_classes=3"):
        ev.eval(np.array([0, 1]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"labels hold class indices in \[0, 3\]"):
        ev.eval(np.array([0, 3]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"labels hold class indices in \[-1, 0\]"):
        ev.eval(np.array([0, -1]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"class indices must have shape \(2,\)"):
        ev.eval(np.array([0, 1, 2]).reshape(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dtype float64"):
        ev.eval(np.array([0.0, 1.0]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"mask must have shape \(2,\)"):
        ev.eval(np.array([0, 1]), np.zeros((2, 3)), mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"predictions must have shape"):
        ev.eval(np.array(0), np.zeros(3))
    with pytest.raises(ValueError, match="num_classes=2 does not match the 3 names"):
        Evaluation(num_classes=2, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="top_n"):
        Evaluation(top_n=0)
    with pytest.raises(ValueError, match=r"cls must be in \[0, 2\]"):
        ev.precision(3)
    assert ev.num_examples == 0  # failed batches leave no trace


def test_stats_contains_the_numbers():
    ev = Evaluation(labels=["ant", "bee", "cricket"], top_n=2)
    ev.eval(ACTUAL, _scores(PREDICTED, 3))
    text = ev.stats()
    assert str(ev) == text
    assert "Accuracy:  0.6250" in text
    assert f"Precision: {PRECISION.mean():.4f} (macro)" in text
    assert f"Recall:    {RECALL.mean():.4f} (macro)" in text
    assert f"F1:        {F1.mean():.4f} (macro)" in text
    assert "Top-2 accuracy:" in text
    assert "cricket     0.6667     0.6667     0.6667          3" in text
    assert "ant            2       1       0" in text
    assert "Top-" not in Evaluation(num_classes=2).stats()
    assert "no examples" in Evaluation().stats()


# -- classification: sklearn ------------------------------------------------------------------


def test_against_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    labels, scores = _random_batch(7, n=1000, c=6)
    ev = Evaluation(top_n=3)
    ev.eval(labels, scores)
    predicted = scores.argmax(axis=1)
    np.testing.assert_array_equal(
        ev.confusion_matrix(), metrics.confusion_matrix(labels, predicted, labels=range(6))
    )
    assert ev.accuracy() == pytest.approx(metrics.accuracy_score(labels, predicted))
    for name, fn in [
        ("precision", metrics.precision_score),
        ("recall", metrics.recall_score),
        ("f1", metrics.f1_score),
    ]:
        per_class = fn(labels, predicted, average=None, zero_division=0)
        for c in range(6):
            assert getattr(ev, name)(c) == pytest.approx(per_class[c])
        macro = fn(labels, predicted, average="macro", zero_division=0)
        assert getattr(ev, name)() == pytest.approx(macro)
    top = metrics.top_k_accuracy_score(labels, scores, k=3, labels=range(6))
    assert ev.top_n_accuracy() == pytest.approx(top)


# -- regression ---------------------------------------------------------------------------------


def _numpy_regression(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    err = p - y
    mse = (err**2).mean(axis=0)
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return {
        "mean_squared_error": mse,
        "mean_absolute_error": np.abs(err).mean(axis=0),
        "root_mean_squared_error": np.sqrt(mse),
        "r2": 1 - (err**2).sum(axis=0) / sst,
    }


def _regression_data(seed: int = 0, n: int = 300, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(loc=[0.0, 5.0, -2.0][:k], scale=[1.0, 3.0, 0.5][:k], size=(n, k))
    p = y + rng.normal(scale=0.4, size=(n, k))
    return y, p


def test_regression_against_numpy_formulas():
    y, p = _regression_data()
    ev = RegressionEvaluation()
    ev.eval(y, p)
    expected = _numpy_regression(y, p)
    assert ev.num_examples == 300
    for name, values in expected.items():
        for col in range(3):
            assert getattr(ev, name)(col) == pytest.approx(values[col], rel=1e-12), (name, col)
        assert getattr(ev, name)() == pytest.approx(values.mean(), rel=1e-12), name
    # R² differs per column: the third column has a small spread, so a lower R².
    assert ev.r2(2) < ev.r2(1) < 1


def test_regression_against_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    y, p = _regression_data(1)
    ev = RegressionEvaluation()
    ev.eval(y, p)
    assert ev.mean_squared_error() == pytest.approx(metrics.mean_squared_error(y, p))
    assert ev.mean_absolute_error() == pytest.approx(metrics.mean_absolute_error(y, p))
    assert ev.r2() == pytest.approx(metrics.r2_score(y, p))


def test_regression_merge_is_exact():
    y, p = _regression_data(2)
    whole = RegressionEvaluation()
    whole.eval(y, p)
    parts = [RegressionEvaluation() for _ in range(3)]
    for part, idx in zip(parts, np.array_split(np.arange(300), 3), strict=True):
        part.eval(y[idx], p[idx])
    merged = RegressionEvaluation().merge(parts[0]).merge(parts[1]).merge(parts[2])
    expected = _numpy_regression(y, p)
    for name, values in expected.items():
        for col in range(3):
            assert getattr(merged, name)(col) == pytest.approx(getattr(whole, name)(col), rel=1e-12)
            assert getattr(merged, name)(col) == pytest.approx(values[col], rel=1e-12)
    # Integer-valued data: every sum is exact in float64, so the merge equals the whole exactly.
    yi, pi = np.round(y * 4), np.round(p * 4)
    a, b, w = RegressionEvaluation(), RegressionEvaluation(), RegressionEvaluation()
    a.eval(yi[:100], pi[:100])
    b.eval(yi[100:], pi[100:])
    w.eval(yi, pi)
    a.merge(pickle.loads(pickle.dumps(b)))
    assert a.stats() == w.stats()
    for name in expected:
        assert getattr(a, name)() == getattr(w, name)()


def test_regression_masked_time_series():
    rng = np.random.default_rng(3)
    n, k, t = 5, 2, 7
    y = rng.normal(size=(n, k, t))
    p = y + rng.normal(scale=0.3, size=(n, k, t))
    mask = rng.integers(0, 2, size=(n, t))
    mask[0, 0] = 1
    y = np.where(mask[:, None, :] == 0, np.nan, y)  # padding must not leak into the sums
    ev = RegressionEvaluation()
    ev.eval(y, p, mask=mask)
    keep = mask.astype(bool)
    flat_y = np.moveaxis(y, 1, 2)[keep]
    flat_p = np.moveaxis(p, 1, 2)[keep]
    expected = _numpy_regression(flat_y, flat_p)
    assert ev.num_examples == int(keep.sum())
    for name, values in expected.items():
        for col in range(k):
            assert getattr(ev, name)(col) == pytest.approx(values[col], rel=1e-12)


def test_regression_per_value_mask():
    y, p = _regression_data(4, n=50, k=2)
    mask = np.ones_like(y)
    mask[:20, 1] = 0
    ev = RegressionEvaluation()
    ev.eval(y, p, mask=mask)
    assert ev.mean_squared_error(0) == pytest.approx(
        _numpy_regression(y, p)["mean_squared_error"][0]
    )
    tail = _numpy_regression(y[20:], p[20:])
    assert ev.mean_squared_error(1) == pytest.approx(tail["mean_squared_error"][1])
    assert ev.r2(1) == pytest.approx(tail["r2"][1])


def test_regression_edge_cases_and_validation():
    ev = RegressionEvaluation(column_names=["a", "b"])
    assert np.isnan(ev.mean_squared_error())
    ev.eval(np.array([[0.1, 1.0], [0.1, 2.0]]), np.array([[0.2, 1.0], [0.1, 2.0]]))
    assert np.isnan(ev.r2(0))  # constant labels: R² undefined
    assert ev.r2(1) == 1.0
    with pytest.raises(ValueError, match=r"labels and predictions .* \(2, 3\) .* \(2, 2\)"):
        ev.eval(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"predictions have 3 columns .* num_columns=2"):
        ev.eval(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"mask must have shape"):
        ev.eval(np.zeros((2, 2)), np.zeros((2, 2)), mask=np.ones(3))
    with pytest.raises(ValueError, match="3 columns into one of 2 columns"):
        ev.merge(RegressionEvaluation(num_columns=3).merge(RegressionEvaluation()))
    with pytest.raises(ValueError, match=r"col must be in \[0, 1\]"):
        ev.r2(2)
    with pytest.raises(ValueError, match="num_columns=3 does not match"):
        RegressionEvaluation(num_columns=3, column_names=["a"])


def test_regression_stats_contains_the_numbers():
    y, p = _regression_data(5, k=2)
    ev = RegressionEvaluation(column_names=["height", "weight"])
    ev.eval(y, p)
    text = str(ev)
    assert text == ev.stats()
    assert f"height   {ev.mean_squared_error(0):10.4f} {ev.mean_absolute_error(0):10.4f}" in text
    assert f"{ev.root_mean_squared_error(1):10.4f} {ev.r2(1):10.4f}" in text
    assert f"average  {ev.mean_squared_error():10.4f}" in text
    assert "no examples" in RegressionEvaluation().stats()
