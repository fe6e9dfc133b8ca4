"""Fitted normalizers (Standardize, MinMaxScale): statistics against numpy, fits on iterators and
Spark RDDs against local fits, the fused apply, files, models and bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sparkbatch import FormatError
from sparkbatch.data import (
    DataSet,
    DataSetPreprocessor,
    MinMaxScale,
    MultiDataSet,
    Standardize,
    load_preprocessor,
    save,
)
from sparkbatch.data.format import load_tensors, save_tensors
from sparkbatch.data.preprocessors import _PartitionMoments
from sparkbatch.nn import Dense, Network, Output


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _matrix(n: int = 50, f: int = 5, seed: int = 0) -> np.ndarray:
    rng = _rng(seed)
    return (rng.normal(size=(n, f)) * [1, 10, 0.1, 1000, 3] + [0, -5, 1e4, 2, 7]).astype(np.float32)


def _sequences(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    x = rng.normal(4, 3, size=(9, 3, 6)).astype(np.float32)
    mask = (rng.random((9, 6)) > 0.4).astype(np.float32)
    mask[0] = 0  # one example entirely padding
    x *= mask[:, None, :]  # padded with zeros, as merge pads: the statistics must skip them
    return x, mask


def _columns(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Rows of values per column, as numpy users compute them: [values, columns]."""
    if x.ndim == 2:
        return x.astype(np.float64)
    if x.ndim == 3:
        steps = x.transpose(0, 2, 1)
        values = steps if mask is None else steps[mask > 0]
        return values.reshape(-1, x.shape[1]).astype(np.float64)
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float64)


@pytest.mark.parametrize("kind", ["2d", "3d-masked", "3d", "4d", "float64"])
def test_statistics_equal_numpys(kind):
    mask = None
    if kind in ("2d", "float64"):
        x = _matrix()
        if kind == "float64":
            x = x.astype(np.float64)
    elif kind.startswith("3d"):
        x, mask = _sequences()
        if kind == "3d":
            mask = None
    else:
        x = _rng(2).uniform(0, 255, size=(4, 3, 5, 7)).astype(np.float32)
    ds = DataSet(x, features_mask=mask)
    values = _columns(x, mask).astype(np.float64)
    norm = Standardize().fit(ds)
    stats = norm.feature_stats
    assert stats.count == values.shape[0]
    np.testing.assert_allclose(stats.mean, values.mean(0), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(stats.std, values.std(0), rtol=1e-9, atol=1e-6)
    assert stats.min.tolist() == values.min(0).tolist()
    assert stats.max.tolist() == values.max(0).tolist()
    # the apply against numpy's expression, masked steps zeroed (NOTE [masked steps])
    out = norm(ds).features
    assert out.dtype == x.dtype and out.shape == x.shape
    shape = [1, -1] + [1] * (x.ndim - 2)
    expected = (x - values.mean(0).reshape(shape)) / values.std(0).reshape(shape)
    if mask is not None:
        expected = expected * mask[:, None, :]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    scaled = MinMaxScale(-1, 2).fit(ds)(ds).features
    lo, hi = values.min(0).reshape(shape), values.max(0).reshape(shape)
    expected = (x - lo) / (hi - lo) * 3 - 1
    if mask is not None:
        expected = expected * mask[:, None, :]
    np.testing.assert_allclose(scaled, expected, rtol=1e-5, atol=1e-5)


def test_blocks_merge_accurately_on_large_offsets():
    """Many rows (several native blocks) around a large mean: two-pass accuracy."""
    x = (_rng(3).normal(size=(9000, 3)) + 1e6).astype(np.float64)
    stats = Standardize().fit(DataSet(x)).feature_stats
    np.testing.assert_allclose(stats.std, x.std(0), rtol=1e-10)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-14)


def test_fit_on_an_iterator_equals_fit_on_the_concatenation():
    x, mask = _sequences()
    y = _rng(4).normal(2, 5, size=(9, 2, 6)).astype(np.float32)
    ds = DataSet(x, y, features_mask=mask, labels_mask=mask)
    whole = Standardize(fit_labels=True).fit(ds)
    parts = Standardize(fit_labels=True).fit(iter(ds.split(2)))
    for a, b in (
        (whole.feature_stats, parts.feature_stats),
        (whole.label_stats, parts.label_stats),
    ):
        assert a.count == b.count
        for field in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-12, atol=1e-12)
    labels = _columns(y, mask)
    np.testing.assert_allclose(whole.label_stats.mean, labels.mean(0), rtol=1e-9)


def test_fit_on_an_rdd_is_one_job_and_equals_the_local_fit(sc):
    data = DataSet(_matrix(40), _rng(5).normal(size=(40, 2)).astype(np.float32))
    batches = data.split(7)
    local = MinMaxScale(fit_labels=True).fit(batches)
    rdd = sc.parallelize(batches, 2)
    sc.setJobGroup("sparkbatch-test-fit-rdd", "fit")
    sc.setJobDescription("the caller's")
    try:
        distributed = MinMaxScale(fit_labels=True).fit(rdd)
        # the fit's job description is set around its job, and the caller's is put back
        assert sc.getLocalProperty("spark.job.description") == "the caller's"
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setJobDescription(None)
    assert len(sc.statusTracker().getJobIdsForGroup("sparkbatch-test-fit-rdd")) == 1
    assert distributed.feature_stats.count == 40
    for a, b in (
        (local.feature_stats, distributed.feature_stats),
        (local.label_stats, distributed.label_stats),
    ):
        for field in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-12)
    # what each executor runs names its partition in errors (tested here, without a failing job)
    with pytest.raises(TypeError, match="partition 3, minibatch 1: expected a DataSet, got list"):
        list(_PartitionMoments(False)(3, iter([batches[0], [1.0, 2.0]])))


def test_constant_columns_give_no_nan():
    x = np.array([[1, 5, 0], [2, 5, 0], [3, 5, 0]], np.float32)
    ds = DataSet(x, x[:, :1].copy())
    st = Standardize(fit_labels=True).fit(ds)
    out = st(ds).features
    assert np.isfinite(out).all() and out[:, 1:].tolist() == [[0, 0]] * 3
    mm = MinMaxScale(2, 4).fit(ds)
    out = mm(ds).features
    assert np.isfinite(out).all() and out[:, 1:].tolist() == [[2, 2]] * 3
    assert out[:, 0].tolist() == [2, 3, 4]
    np.testing.assert_allclose(mm.revert(out), x)


@pytest.mark.parametrize("cls", [Standardize, MinMaxScale])
def test_revert_undoes_transform(cls):
    x = _matrix()
    y = _rng(6).normal(3, 7, size=(50, 2))  # float64 stays float64
    norm = cls(fit_labels=True).fit(DataSet(x, y))
    np.testing.assert_allclose(norm.revert(norm.transform(x)), x, rtol=1e-5, atol=1e-3)
    back = norm.revert_labels(norm.transform_labels(y))
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, y, rtol=1e-12, atol=1e-12)
    seq, mask = _sequences()
    seq_norm = cls().fit(DataSet(seq, features_mask=mask))
    np.testing.assert_allclose(
        seq_norm.revert(seq_norm.transform(seq, mask), mask), seq, rtol=1e-5, atol=1e-5
    )


def test_pickle_equality_and_the_protocol():
    norm = Standardize(fit_labels=True).fit(DataSet(_matrix(), _matrix(50, 5, 1)))
    norm.transform(_matrix())  # fills the cached coefficients, which do not pickle
    twin = pickle.loads(pickle.dumps(norm))
    assert twin == norm and twin is not norm and "_cached_maps" not in twin.__dict__
    assert twin != Standardize().fit(DataSet(_matrix()))
    assert isinstance(norm, DataSetPreprocessor) and isinstance(len, DataSetPreprocessor)
    assert repr(MinMaxScale()) == "MinMaxScale(min=0.0, max=1.0, fit_labels=False) [not fitted]"
    assert "fitted on 50 values x 5 columns" in repr(norm)


def test_save_and_load_its_own_file(tmp_path):
    x, mask = _sequences()
    norm = MinMaxScale(-1, 1).fit(DataSet(x, features_mask=mask))
    path = tmp_path / "scale.safetensors"
    norm.save(path)
    loaded = load_preprocessor(path)
    assert isinstance(loaded, MinMaxScale) and loaded == norm
    np.testing.assert_array_equal(loaded.transform(x, mask), norm.transform(x, mask))
    assert MinMaxScale.load(str(path)) == norm
    with pytest.raises(FormatError, match="holds a MinMaxScale, not a Standardize"):
        Standardize.load(path)
    # a file that names another class is refused, never instantiated
    arrays, metadata = load_tensors(path)
    metadata["preprocessor"] = "os.system"
    del metadata["crc32c"]  # the writer's own
    save_tensors(arrays, tmp_path / "bad.safetensors", metadata)
    with pytest.raises(FormatError, match="unknown preprocessor 'os.system'"):
        load_preprocessor(tmp_path / "bad.safetensors")
    # a minibatch file holds none
    save(DataSet(x), tmp_path / "batch.safetensors")
    with pytest.raises(FormatError, match="holds no preprocessor"):
        load_preprocessor(tmp_path / "batch.safetensors")


def test_saved_and_loaded_with_a_model(tmp_path):
    x = _matrix(20)
    ds = DataSet(x, np.eye(2, dtype=np.float32)[np.arange(20) % 2])
    norm = Standardize().fit(ds)
    net = Network([Dense(5, 4, "tanh"), Output(4, 2)], seed=1)
    net.fit(norm(ds))
    assert net.preprocessor is None
    net.save(tmp_path / "plain.safetensors")
    assert Network.load(tmp_path / "plain.safetensors").preprocessor is None
    net.save(tmp_path / "model.safetensors", preprocessor=norm)
    loaded = Network.load(tmp_path / "model.safetensors")
    assert loaded.preprocessor == norm
    assert load_preprocessor(tmp_path / "model.safetensors") == norm
    np.testing.assert_array_equal(
        loaded.output(loaded.preprocessor(ds).features), net.output(norm(ds).features)
    )
    # the attribute is saved without an argument, and survives clone and pickling
    net.preprocessor = MinMaxScale().fit(ds)
    net.save(tmp_path / "attr.safetensors")
    assert Network.load(tmp_path / "attr.safetensors").preprocessor == net.preprocessor
    assert net.clone().preprocessor == net.preprocessor
    assert pickle.loads(pickle.dumps(net)).preprocessor == net.preprocessor
    with pytest.raises(TypeError, match="only Standardize and MinMaxScale can be saved"):
        net.save(tmp_path / "other.safetensors", preprocessor=lambda d: d)
    assert not (tmp_path / "other.safetensors").exists()


def test_unfitted_and_bad_input_errors():
    with pytest.raises(RuntimeError, match=r"Standardize is not fitted: call fit\(data\) first"):
        Standardize()(DataSet(_matrix()))
    with pytest.raises(RuntimeError, match="MinMaxScale is not fitted"):
        MinMaxScale().save("unused.safetensors")
    norm = Standardize().fit(DataSet(_matrix()))
    with pytest.raises(RuntimeError, match="fitted without labels: create it with fit_labels"):
        norm.revert_labels(np.zeros((2, 1), np.float32))
    with pytest.raises(
        ValueError,
        match=r"features have 3 columns \(shape \(2, 3\)\) but "
        "Standardize was fitted on 5",
    ):
        norm.transform(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="floating-point array .* got dtype int64"):
        norm.transform(np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        norm.transform(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"mask must have shape \[2, 4\]"):
        norm.transform(np.zeros((2, 5, 4), np.float32), np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="applies to DataSets, got MultiDataSet"):
        norm(MultiDataSet([_matrix()], [_matrix()]))
    with pytest.raises(TypeError, match="minibatch 0: .*got a MultiDataSet"):
        Standardize().fit([MultiDataSet([_matrix()], [_matrix()])])
    with pytest.raises(
        ValueError, match="minibatch 1: features have 3 columns but the data before have 5"
    ):
        Standardize().fit([DataSet(_matrix()), DataSet(_matrix()[:, :3])])
    with pytest.raises(ValueError, match="fit_labels=True but the DataSet has no labels"):
        Standardize(fit_labels=True).fit(DataSet(_matrix()))
    bad = _matrix()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="minibatch 1: features: column 2 holds NaN or inf"):
        Standardize().fit([DataSet(_matrix()), DataSet(bad)])
    huge = np.full((2, 1), 1e308)  # finite values whose spread overflows
    huge[0] = -1e308
    with pytest.raises(ValueError, match="features column 0 holds NaN or infinity"):
        Standardize().fit(DataSet(huge))
    with pytest.raises(ValueError, match="no features values"):
        Standardize().fit(DataSet(np.ones((2, 1, 3)), features_mask=np.zeros((2, 3))))
    with pytest.raises(ValueError, match="holds no DataSet"):
        Standardize().fit([])
    with pytest.raises(ValueError, match="finite min < max"):
        MinMaxScale(1, 1)
