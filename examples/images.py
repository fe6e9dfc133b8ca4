"""How to create a Spark data pipeline for training on images.

The seed's "How to create a Spark data pipeline for training on images" (DL4J's TinyImageNet
Spark example), with images this script draws itself: coloured circles, squares and crosses in
class directories ``circle/``, ``square/``, ``cross/``.

1. Pack the images into FileBatch archives of ``batch_size`` files each
   (:func:`~sparkbatch.spark.create_file_batches_local`, DL4J's
   ``SparkDataUtils.createFileBatchesLocal``; for images already on remote storage,
   :func:`~sparkbatch.spark.create_file_batches_spark` does the same work on the executors).
   One archive is one read from storage instead of ``batch_size``, and the images stay
   compressed (PNG or JPEG), several times smaller than their pixels.
2. A :class:`~sparkbatch.data.FileBatchLoader` turns one archive into one minibatch on the
   executors: an :class:`~sparkbatch.records.ImageRecordReader` decodes and resizes each image
   to ``[channels, height, width]`` (RGB), the label comes from the parent directory
   (:class:`~sparkbatch.records.ParentPathLabelGenerator`), and an
   :class:`~sparkbatch.data.ImageScaler` maps 0..255 to 0..1 in the same pass.
3. ``SparkNetwork.fit_paths(list_paths(sc, archives), loader)`` trains a small convolutional
   network (:class:`~sparkbatch.nn.Conv2D`, :class:`~sparkbatch.nn.MaxPool2D`) on them, as
   DL4J's ``sparkNet.fitPaths(pathsTrain, loader)``.
4. Labels from file names instead (``circle_0001.png``, ...):
   ``PatternPathLabelGenerator("_", 0)`` splits the base name on ``_`` and takes part 0.

Run: ``python examples/images.py`` (needs Pillow: ``pip install sparkbatch[images]``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparkbatch.data import FileBatchLoader, ImageScaler
from sparkbatch.nn import Adam, Conv2D, Dense, Flatten, MaxPool2D, Network, Output
from sparkbatch.records import (
    ImageRecordReader,
    ParentPathLabelGenerator,
    PatternPathLabelGenerator,
)
from sparkbatch.spark import create_file_batches_local, list_paths, recommended_conf
from sparkbatch.train import ParameterAveraging, SparkNetwork

CLASSES = ["circle", "cross", "square"]


def draw_images(directory: Path, per_class: int, size: int, seed: int, flat: bool = False) -> None:
    """``per_class`` images of each shape, ``size`` pixels square, with random colours,
    positions and sizes: in ``directory/<class>/`` (or flat, named ``<class>_<n>``), half PNG
    and half JPEG."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for label in CLASSES:
        folder = directory if flat else directory / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            background = tuple(int(v) for v in rng.integers(0, 90, 3))
            image = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(image)
            colour = tuple(int(v) for v in rng.integers(140, 256, 3))
            r = rng.uniform(0.22, 0.4) * size
            cx, cy = rng.uniform(r, size - r, 2)
            box = [cx - r, cy - r, cx + r, cy + r]
            if label == "circle":
                draw.ellipse(box, fill=colour)
            elif label == "square":
                draw.rectangle(box, fill=colour)
            else:
                width = max(1, int(r / 2.5))
                draw.line([cx - r, cy, cx + r, cy], fill=colour, width=width)
                draw.line([cx, cy - r, cx, cy + r], fill=colour, width=width)
            name = f"{label}_{i:04d}" if flat else f"{i:04d}"
            if i % 2:
                image.save(folder / f"{name}.jpg", quality=92)
            else:
                image.save(folder / f"{name}.png")


def network(size: int) -> Network:
    """Two convolutions with max pooling, then a dense layer: DL4J's usual small CNN."""
    quarter = size // 4
    return Network(
        [
            Conv2D(3, 8, 3, padding=1, input_size=(size, size)),
            MaxPool2D(2),
            Conv2D(8, 16, 3, padding=1),
            MaxPool2D(2),
            Flatten(),
            Dense(16 * quarter * quarter, 32),
            Output(32, len(CLASSES), "softmax", "cross_entropy"),
        ],
        Adam(0.01),
        seed=1,
    )


def main(spark: object | None = None, small: bool = False) -> None:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("images")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    per_class, size, batch_size, epochs = (48, 16, 16, 4) if small else (400, 32, 32, 6)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            # On a cluster the images and archives live on shared storage: "hdfs:///data/...",
            # "s3://bucket/prefix", ...
            draw_images(root / "images" / "train", per_class, size, seed=0)
            draw_images(root / "images" / "test", per_class // 4, size, seed=1)

            # 1. Images -> FileBatch archives, once (seeded shuffle, deterministic names).
            train_dir, test_dir = str(root / "batches" / "train"), str(root / "batches" / "test")
            archives = create_file_batches_local(
                root / "images" / "train", train_dir, batch_size, extensions=["png", "jpg"], seed=0
            )
            create_file_batches_local(root / "images" / "test", test_dir, batch_size, seed=0)
            print(f"{len(archives)} archives of up to {batch_size} images each")

            # 2. One archive -> one minibatch: decode, resize, label, scale to 0..1.
            reader = ImageRecordReader(size, size, 3, ParentPathLabelGenerator())
            reader.set_labels(CLASSES)  # known up front, as the seed says
            loader = FileBatchLoader(
                reader, batch_size, 1, len(CLASSES), preprocessor=ImageScaler()
            )

            # 3. Train on Spark from the archives' paths.
            net = network(size)
            master = ParameterAveraging(
                batch_size_per_worker=batch_size, averaging_frequency=2, exchange="socket"
            )
            spark_net = SparkNetwork(sc, net, master)
            paths_train = list_paths(sc, train_dir)
            spark_net.fit_paths(paths_train, loader, epochs=epochs)

            evaluation = spark_net.evaluate(list_paths(sc, test_dir), loader=loader)
            print(f"images: held-out accuracy {evaluation.accuracy():.3f}")
            print(evaluation.stats() if not small else "")
            assert evaluation.accuracy() > (0.8 if small else 0.95), evaluation.accuracy()

            # 4. Labels from the file names ("circle_0001.png"): PatternPathLabelGenerator.
            draw_images(root / "named", 4, size, seed=2, flat=True)
            named = ImageRecordReader(size, size, 3, PatternPathLabelGenerator("_", 0))
            named.initialize(str(root / "named"))  # infers the labels, sorted
            assert named.labels == CLASSES, named.labels
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
