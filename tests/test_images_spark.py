"""The seed's image how-to end to end on local Spark: scikit-learn's 8x8 digits rendered to PNG
files in class directories, packed into FileBatch archives by Spark executors, read back by a
FileBatchLoader with an ImageRecordReader, and a small CNN trained on them with fit_paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparkbatch.data import FileBatchLoader, ImageScaler
from sparkbatch.nn import Adam, Conv2D, Dense, Flatten, MaxPool2D, Network, Output
from sparkbatch.records import ImageRecordReader, ParentPathLabelGenerator
from sparkbatch.spark import create_file_batches_local, create_file_batches_spark, list_paths
from sparkbatch.train import ParameterAveraging, SparkNetwork

pytest.importorskip("PIL")
datasets = pytest.importorskip("sklearn.datasets")


def render_digits(root: Path) -> tuple[Path, Path]:
    """The 1,797 digits as 8x8 grey PNG files under ``train/<digit>/`` (80 %) and
    ``test/<digit>/`` (20 %), split by a seeded permutation."""
    from PIL import Image

    digits = datasets.load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(pixels))
    cut = int(0.8 * len(order))
    for part, indices in (("train", order[:cut]), ("test", order[cut:])):
        for i in indices:
            folder = root / part / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], "L").save(folder / f"{i:04d}.png")
    return root / "train", root / "test"


def test_cnn_on_digits_through_file_batches_on_spark(sc, tmp_path: Path) -> None:
    train_images, test_images = render_digits(tmp_path / "images")
    # The training archives are written by the executors, the test ones on the driver.
    train_dir, test_dir = str(tmp_path / "train"), str(tmp_path / "test")
    create_file_batches_spark(sc, str(train_images), train_dir, 32, seed=0)
    create_file_batches_local(test_images, test_dir, 64, seed=0)

    reader = ImageRecordReader(8, 8, 1, ParentPathLabelGenerator())
    reader.initialize(str(train_images))  # the labels, inferred and sorted: "0" .. "9"
    assert list(reader.labels) == [str(d) for d in range(10)]
    loader = FileBatchLoader(reader, 32, 1, 10, preprocessor=ImageScaler())

    net = Network(
        [
            Conv2D(1, 16, 3, padding=1, input_size=(8, 8)),
            MaxPool2D(2),
            Conv2D(16, 32, 3, padding=1),
            MaxPool2D(2),
            Flatten(),
            Dense(32 * 2 * 2, 64),
            Output(64, 10, "softmax", "cross_entropy"),
        ],
        Adam(0.005),
        seed=3,
    )
    master = ParameterAveraging(
        batch_size_per_worker=32, averaging_frequency=5, exchange="socket", seed=1
    )
    spark_net = SparkNetwork(sc, net, master)
    spark_net.fit_paths(list_paths(sc, train_dir), loader, epochs=12)

    evaluation = spark_net.evaluate(list_paths(sc, test_dir), loader=loader)
    assert evaluation.num_examples == 360
    assert evaluation.accuracy() >= 0.97, evaluation.stats()
