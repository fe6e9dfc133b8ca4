"""Files of any name and format (the seed's ``dataset_0.bin`` and custom loaders), the
"what was found" errors of directories that yield nothing, and preprocessors through loaders,
iterators and SparkNetwork fit/evaluate/score."""

from __future__ import annotations

import io
import pickle
import threading

import numpy as np
import pytest

from sparkbatch.data import (
    DataSet,
    FileDataSetIterator,
    SerializedDataSetLoader,
    SerializedMinibatchLoader,
    Source,
    export_datasets,
)
from sparkbatch.data.loaders import PreprocessingLoader
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.errors import FormatError
from sparkbatch.nn import SGD, Dense, Network, Output
from sparkbatch.spark import list_paths
from sparkbatch.train import ParameterAveraging, SparkNetwork
from sparkbatch.train.spark_network import _checked_batch, _partition_paths


class NpzLoader:
    """A custom format: ``.npz`` bytes holding ``x`` and ``y`` (picklable, module level)."""

    def load(self, source: Source) -> DataSet:
        with source.open() as f, np.load(f) as arrays:
            return DataSet(arrays["x"], arrays["y"])


class Scale:
    """A preprocessor: features times ``factor``."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, ds: DataSet) -> DataSet:
        return DataSet(ds.features * np.float32(self.factor), ds.labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scale) and other.factor == self.factor

    __hash__ = None  # type: ignore[assignment]  (like a fitted normaliser holding arrays)


def features_only(ds: DataSet) -> np.ndarray:
    return ds.features


def _data(n: int = 24, seed: int = 0) -> DataSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3], axis=1)]
    return DataSet(x, y)


def _write_bin(directory, parts: list[DataSet], start: int = 0) -> list[str]:
    """``dataset_{i}.bin`` files in the custom format, as the seed's how-to names them."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts, start):
        buffer = io.BytesIO()
        np.savez(buffer, x=part.features, y=part.labels)
        path = directory / f"dataset_{i}.bin"
        path.write_bytes(buffer.getvalue())
        paths.append(str(path))
    return paths


def _network() -> Network:
    return Network([Dense(4, 6, "tanh"), Output(6, 3)], SGD(0.3), seed=2)


def _master() -> ParameterAveraging:
    return ParameterAveraging(
        batch_size_per_worker=8, averaging_frequency=3, workers=1, shuffle=False
    )


@pytest.fixture
def bin_dir(tmp_path):
    """Three ``dataset_{i}.bin`` files, with a ``_SUCCESS``, a hidden file and a ``_temporary``
    directory beside them that no listing takes."""
    directory = tmp_path / "bin"
    _write_bin(directory, _data().split(8))
    (directory / "_SUCCESS").write_bytes(b"")
    (directory / ".dataset_0.bin.crc").write_bytes(b"crc")
    (directory / "_temporary").mkdir()
    (directory / "_temporary" / "dataset_9.bin").write_bytes(b"half")
    return directory


# ---------------------------------------------------------------------------------------------
# listing


def test_list_paths_takes_every_visible_file_whatever_its_name(sc, bin_dir):
    expected = [str(bin_dir / f"dataset_{i}.bin") for i in range(3)]
    assert list_paths(sc, str(bin_dir)).collect() == expected
    (bin_dir / "sub").mkdir()
    (bin_dir / "sub" / "notes.txt").write_text("x")
    assert minibatch_files(str(bin_dir)) == [*expected, str(bin_dir / "sub" / "notes.txt")]
    assert minibatch_files(str(bin_dir), suffix=".bin") == expected
    assert minibatch_files(str(bin_dir), suffix=(".txt", ".zip"))[0].endswith("notes.txt")
    assert FileDataSetIterator(str(bin_dir), suffix=".bin", loader=NpzLoader()).files == expected
    with pytest.raises(TypeError, match="suffix must be a str"):
        minibatch_files(str(bin_dir), suffix=[".bin"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="suffix must name"):
        minibatch_files(str(bin_dir), suffix="")


def test_a_directory_that_yields_no_file_says_what_it_holds(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"no files under {empty}; it is empty"):
        minibatch_files(str(empty))
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "_SUCCESS").write_bytes(b"")
    (hidden / ".part-0.crc").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match="it holds only hidden files: .part-0.crc, _SUCCESS"
    ):
        FileDataSetIterator(str(hidden))
    csv = tmp_path / "csv"
    csv.mkdir()
    for name in ["a.csv", "b.csv", "c.txt", "d.csv", "e.csv", "f.csv", "g.csv"]:
        (csv / name).write_text("1,2\n")
    message = (
        f"no files ending in '.bin' under {csv}; it holds 7 files: a.csv, b.csv, c.txt, d.csv, "
        "e.csv and 2 more"
    )
    with pytest.raises(FileNotFoundError) as info:
        minibatch_files(str(csv), suffix=".bin")
    assert str(info.value) == message
    with pytest.raises(FileNotFoundError, match="it is a file of another name"):
        minibatch_files(str(csv / "a.csv"), suffix=".bin")
    # SparkNetwork refuses before any Spark job (the context is never used)
    spark_net = SparkNetwork(object(), _network(), _master())
    with pytest.raises(FileNotFoundError, match="it holds only hidden files"):
        spark_net.fit(str(hidden), loader=NpzLoader())
    with pytest.raises(FileNotFoundError, match="no files ending in '.bin'"):
        spark_net.evaluate(str(csv), suffix=".bin")


def test_the_manifest_lists_the_files_so_stray_ones_are_not_read(tmp_path):
    directory = tmp_path / "export"
    urls = export_datasets(_data().split(12), str(directory), progress=False)
    (directory / "notes.txt").write_text("a stray file")
    _write_bin(directory, [_data(4)])
    assert minibatch_files(str(directory)) == urls
    assert minibatch_files(str(directory), suffix=".safetensors") == urls
    assert [d.num_examples for d in FileDataSetIterator(str(directory))] == [12, 12]
    with pytest.raises(
        FileNotFoundError,
        match="its _manifest.json lists 2 files: dataset_000000.safetensors, dataset_000001",
    ):
        minibatch_files(str(directory), suffix=".bin")


def test_the_default_loader_on_a_foreign_file_names_it_and_suggests_a_loader(bin_dir):
    first = str(bin_dir / "dataset_0.bin")
    with pytest.raises(FormatError) as info:
        list(FileDataSetIterator(str(bin_dir)))
    assert first in str(info.value) and "pass loader= for files of another format" in str(
        info.value
    )
    # sparkbatch minibatches under any name read with the default loader, as DL4J's net.fit(dir)
    saved = bin_dir / "saved"
    for i, part in enumerate(_data().split(12)):
        part.save(str(saved / f"dataset_{i}.bin"))
    assert [d.num_examples for d in FileDataSetIterator(str(saved))] == [12, 12]


# ---------------------------------------------------------------------------------------------
# fit and evaluate with a custom loader


def test_fit_a_directory_of_a_custom_format_equals_fitting_the_files_locally(sc, bin_dir):
    spark_net = SparkNetwork(sc, _network(), _master())
    fitted = spark_net.fit(str(bin_dir), loader=NpzLoader(), preprocessor=Scale(2))
    local = _network().fit(
        FileDataSetIterator(str(bin_dir), loader=NpzLoader(), preprocessor=Scale(2))
    )
    np.testing.assert_allclose(fitted.params(), local.params(), rtol=0, atol=1e-6)
    assert fitted.iteration == 3
    # a list of paths, as evaluate and score take one
    listed = SparkNetwork(sc, _network(), _master())
    listed.fit(minibatch_files(str(bin_dir)), loader=NpzLoader(), preprocessor=Scale(2))
    np.testing.assert_array_equal(listed.model.params(), fitted.params())
    with pytest.raises(ValueError, match="data is a list of paths"):
        spark_net.fit([str(bin_dir / "a.bin")], loader=NpzLoader(), suffix=".bin")
    with pytest.raises(TypeError, match="fit\\(directory, loader=...\\)"):
        spark_net.fit_paths(str(bin_dir), NpzLoader())


def test_evaluate_and_score_paths_with_a_loader_equal_an_rdd_of_datasets(sc, bin_dir):
    data = _data()
    paths = list_paths(sc, str(bin_dir))
    urls = minibatch_files(str(bin_dir))
    spark_net = SparkNetwork(sc, _network(), _master())
    from_rdd = spark_net.evaluate(sc.parallelize(data.split(8), 2))
    from_list = spark_net.evaluate(urls, loader=NpzLoader())
    np.testing.assert_array_equal(from_list.confusion_matrix(), from_rdd.confusion_matrix())
    assert from_list.confusion_matrix().sum() == 24
    expected_score = _network().score(data)
    assert spark_net.score(paths, loader=NpzLoader()) == pytest.approx(expected_score, rel=1e-5)
    regression = spark_net.evaluate_regression(tuple(urls), loader=NpzLoader())
    assert regression.mean_squared_error() == pytest.approx(
        _network().evaluate_regression(data).mean_squared_error(), rel=1e-5
    )
    # without loader= an RDD holds minibatches; each element is checked on the executors (the
    # check the preprocessor test runs through Spark), and a path says to pass a loader. Here
    # without a failing Spark task: each kills a Python worker, and a new one imports again
    with pytest.raises(TypeError, match="the RDD holds paths .* pass loader="):
        _checked_batch(None, urls[0])
    # and the other way round: with loader= each partition must hold paths
    assert _partition_paths(urls[:2]) == urls[:2]
    with pytest.raises(TypeError, match="holds a DataSet, not paths .* without loader="):
        _partition_paths([urls[0], data])
    with pytest.raises(TypeError, match=r"data\[1\] must be a path"):
        spark_net.evaluate([urls[0], 3], loader=NpzLoader())
    with pytest.raises(TypeError, match="or a directory URL, got int"):
        spark_net.score(3)


# ---------------------------------------------------------------------------------------------
# preprocessors


def test_preprocessor_in_evaluate_equals_evaluating_prescaled_data(sc, bin_dir):
    data = _data()
    spark_net = SparkNetwork(sc, _network(), _master())
    scaled = Scale(2)(data)
    expected = _network().evaluate(scaled).confusion_matrix()
    by_files = spark_net.evaluate(str(bin_dir), loader=NpzLoader(), preprocessor=Scale(2))
    np.testing.assert_array_equal(by_files.confusion_matrix(), expected)
    by_rdd = spark_net.score(sc.parallelize(data.split(8), 2), preprocessor=Scale(2))
    assert by_rdd == pytest.approx(_network().score(scaled), rel=1e-5)
    assert by_rdd != pytest.approx(_network().score(data), rel=1e-3)  # it did scale


def test_preprocessor_in_loaders_and_iterators(tmp_path, bin_dir):
    data = _data()
    path = str(tmp_path / "a.safetensors")
    data.save(path)
    loader = SerializedDataSetLoader(preprocessor=Scale(3))
    np.testing.assert_array_equal(loader.load(Source(path)).features, data.features * 3)
    copy = pickle.loads(pickle.dumps(loader))
    assert copy == loader != SerializedDataSetLoader() and hash(copy) == hash(loader)
    assert "preprocessor=" in repr(loader)
    assert SerializedMinibatchLoader(preprocessor=Scale(3)) != SerializedMinibatchLoader(
        preprocessor=Scale(2)
    )
    wrapped = pickle.loads(pickle.dumps(PreprocessingLoader(NpzLoader(), Scale(2))))
    got = wrapped.load(Source(str(bin_dir / "dataset_1.bin")))
    np.testing.assert_array_equal(got.features, data.features[8:16] * 2)
    # the iterator applies it after re-batching: to batches of 5 examples across files
    it = FileDataSetIterator(str(bin_dir), batch_size=5, loader=NpzLoader(), preprocessor=Scale(2))
    batches = list(it)
    assert [b.num_examples for b in batches] == [5, 5, 5, 5, 4]
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), data.features * 2)
    with pytest.raises(TypeError, match="preprocessor must be a callable"):
        FileDataSetIterator(str(bin_dir), loader=NpzLoader(), preprocessor=2)  # type: ignore[arg-type]
    bad = FileDataSetIterator(str(bin_dir), loader=NpzLoader(), preprocessor=features_only)
    first = str(bin_dir / "dataset_0.bin")
    with pytest.raises(TypeError) as info:
        list(bad)
    assert str(info.value) == (
        f"{first}: preprocessor features_only returned ndarray, expected a DataSet or MultiDataSet"
    )
    with pytest.raises(TypeError, match=f"{path}: preprocessor features_only returned"):
        PreprocessingLoader(SerializedDataSetLoader(), features_only).load(Source(path))


class LockedLoader(NpzLoader):
    """A loader that cannot travel to the executors: it holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


def test_a_loader_or_preprocessor_that_cannot_be_pickled_is_refused_before_any_job(bin_dir):
    spark_net = SparkNetwork(object(), _network(), _master())  # no Spark call may happen
    with pytest.raises(TypeError, match="loader LockedLoader cannot be pickled for the executors"):
        spark_net.fit(str(bin_dir), loader=LockedLoader())
    locked = Scale(2)
    locked.lock = threading.Lock()  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="preprocessor Scale cannot be pickled"):
        spark_net.evaluate([str(bin_dir / "a.bin")], loader=NpzLoader(), preprocessor=locked)
