"""How to load prepared minibatches in a custom format.

The seed's "How to load prepared minibatches in custom format": a directory holds files
``dataset_0.bin``, ``dataset_1.bin``, ... each one minibatch in a format of its own (here a
16-byte header ``b"MYDS"``, examples, features, classes as little-endian uint32, then the
features as float32 and the class of each example as one byte), plus a ``README.txt`` that is
not data. A :class:`~sparkbatch.data.Loader` is any picklable object with
``load(source) -> DataSet`` (DL4J's ``DataSetLoader``; ``source`` is a
:class:`~sparkbatch.data.Source`, whose ``open()`` gives a binary stream on any storage). The
loader travels to the executors, which read the files themselves.

1. On one machine: ``FileDataSetIterator(dir, loader=...)``.
2. On Spark: the paths listed with :func:`~sparkbatch.spark.list_paths` (DL4J's
   ``SparkUtils.listPaths``) and fitted with ``fit_paths(paths, loader)`` (DL4J's
   ``fitPaths(paths, loader)``), or in one call ``fit(dir, loader=...)``. ``suffix=".bin"``
   keeps the README out (a listing otherwise takes every visible file, whatever its name).
3. Evaluation reads the files with the same loader:
   ``evaluate(paths, loader=...)`` (DL4J's ``evaluate(path, loader)`` ignores the loader).

Run: ``python examples/custom_loader.py``.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparkbatch.data import DataSet, FileDataSetIterator, Source
from sparkbatch.nn import Adam, Dense, Network, Output
from sparkbatch.spark import list_paths, recommended_conf
from sparkbatch.train import ParameterAveraging, SparkNetwork

FEATURES, CLASSES = 6, 3
# The header: magic, examples, features, classes. A format string, not a struct.Struct: the
# loader class travels to the executors by value with what it refers to, and a Struct does not
# pickle.
HEADER, HEADER_SIZE = "<4sIII", 16


def write_minibatch(path: Path, features: np.ndarray, classes: np.ndarray) -> None:
    """Write one minibatch in the custom format."""
    n, f = features.shape
    header = struct.pack(HEADER, b"MYDS", n, f, CLASSES)
    path.write_bytes(header + features.astype("<f4").tobytes() + classes.astype(np.uint8).tobytes())


class MyCustomLoader:
    """Reads one custom-format minibatch: DL4J's ``MyCustomLoader implements DataSetLoader``."""

    def load(self, source: Source) -> DataSet:
        with source.open() as stream:
            data = stream.read()
        if len(data) < HEADER_SIZE:
            raise ValueError(f"{source}: {len(data)} bytes, shorter than the 16-byte header")
        magic, n, f, k = struct.unpack_from(HEADER, data)
        expected = HEADER_SIZE + 4 * n * f + n
        if magic != b"MYDS" or len(data) != expected:
            raise ValueError(
                f"{source}: not a MYDS minibatch (magic {magic!r}, {len(data)} bytes; "
                f"expected b'MYDS' and {expected} bytes)"
            )
        features = np.frombuffer(data, "<f4", n * f, HEADER_SIZE).reshape(n, f)
        classes = np.frombuffer(data, np.uint8, n, HEADER_SIZE + 4 * n * f)
        return DataSet(features, np.eye(k, dtype=np.float32)[classes])


def generate(directory: Path, files: int, batch: int, seed: int) -> int:
    """Write ``files`` minibatches of ``batch`` examples and a README; return the examples."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for i in range(files):
        x = rng.normal(size=(batch, FEATURES)).astype(np.float32)
        y = np.argmax(x[:, :CLASSES] - 0.5 * x[:, CLASSES:], axis=1)
        write_minibatch(directory / f"dataset_{i}.bin", x, y)
    (directory / "README.txt").write_text("dataset_*.bin: MYDS minibatches, 6 features\n")
    return files * batch


def main(spark: object | None = None, small: bool = False) -> None:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("custom-loader")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    files = 12 if small else 400
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            # On a cluster: "hdfs:///path/with/data", "s3://bucket/prefix", ...
            data_dir = str(root / "train")
            examples = generate(root / "train", files, 32, seed=0)
            generate(root / "test", max(2, files // 4), 32, seed=1)
            loader = MyCustomLoader()

            # 1. One machine: the same loader behind FileDataSetIterator.
            local = list(FileDataSetIterator(data_dir, loader=loader, suffix=".bin"))
            assert sum(ds.num_examples for ds in local) == examples

            # 2. Spark: list the paths, fit them with the loader (the executors read them).
            net = Network(
                [Dense(FEATURES, 16, "tanh"), Output(16, CLASSES, "softmax", "cross_entropy")],
                Adam(0.05),
                seed=1,
            )
            master = ParameterAveraging(
                batch_size_per_worker=32, averaging_frequency=3, exchange="socket"
            )
            spark_net = SparkNetwork(sc, net, master)
            paths = list_paths(sc, data_dir, suffix=".bin")
            spark_net.fit_paths(paths, loader, epochs=2)
            # ... or, in one call, a directory with its loader (two more epochs here).
            spark_net.fit(data_dir, epochs=2, loader=loader, suffix=".bin")
            assert net.epoch == 4

            # 3. Evaluate held-out files, read by the same loader on the executors (a list of
            # paths here; a directory, evaluate(dir, loader=..., suffix=".bin"), works too).
            test_paths = sorted(str(p) for p in (root / "test").glob("dataset_*.bin"))
            evaluation = spark_net.evaluate(test_paths, loader=loader)
            assert evaluation.num_examples == 32 * len(test_paths)
            print(f"custom-format minibatches: held-out accuracy {evaluation.accuracy():.3f}")
            assert evaluation.accuracy() > 0.85, evaluation.accuracy()
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
