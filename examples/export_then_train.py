"""How to save an RDD of DataSets to network storage and use it for training.

The seed's "save a RDD[DataSet] ... to network storage and use it for training": prepare the
data once, export it, and fit any number of models from the files, so no training run parses
the CSV again or keeps unused DataSets in memory.

1. Saving: :func:`~sparkbatch.spark.batch_and_export` (DL4J's
   ``mapPartitionsWithIndex(new BatchAndExportDataSetsFunction(minibatchSize, exportPath))``
   followed by an action) writes minibatch files of ``batch_size`` examples and returns their
   URLs. Every example is written exactly once and in order; file names are deterministic
   (``part-<partition>-<batch>.safetensors``), so a retried Spark task replaces its own files
   instead of leaving duplicates; ``_manifest.json`` is written after the job succeeded and
   lists every file with its example count. A directory without it (a failed export) is refused
   by every reader with :class:`~sparkbatch.IncompleteExportError`. An RDD of MultiDataSets is
   exported the same way (see ``multidataset_from_rdds.py``).
2. Loading and fitting: ``SparkNetwork.fit(export_dir)`` (DL4J's ``fit(String path)``), or the
   paths as an RDD, obtained the three ways the seed shows (the collected URLs parallelized, a
   text file of them saved with ``saveAsTextFile``, or :func:`~sparkbatch.spark.list_paths`,
   DL4J's ``SparkUtils.listPaths``), fitted with ``fit_paths`` (DL4J's ``fitPaths``).
   Two models with different settings are trained from the same files.

Run: ``python examples/export_then_train.py``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparkbatch.nn import SGD, Adam, Dense, Network, Output
from sparkbatch.spark import batch_and_export, csv_to_datasets, list_paths, recommended_conf
from sparkbatch.train import ParameterAveraging, SparkNetwork

FEATURES, CLASSES = 4, 3


def generate(path: Path, rows: int, seed: int) -> None:
    """Write a CSV file of ``rows`` rows: 4 features, then a class index in 0..2."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).round(3)
    label = np.argmax(x[:, :3] + 0.5 * x[:, 3:], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = np.column_stack([x, label])
    path.write_text("\n".join(",".join(f"{v:g}" for v in row) for row in table) + "\n")


def network(hidden: int, updater: object) -> Network:
    return Network(
        [Dense(FEATURES, hidden, "tanh"), Output(hidden, CLASSES, "softmax", "cross_entropy")],
        updater,
        seed=1,
    )


def main(spark: object | None = None, small: bool = False) -> None:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("export-then-train")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    rows = 400 if small else 50000
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            generate(root / "csv" / "train.csv", rows, seed=0)
            generate(root / "csv" / "test.csv", rows // 4, seed=1)
            # On a cluster: "hdfs:///...", "s3://bucket/...", any storage every executor reaches.
            export_dir = str(root / "export")

            # 1. Saving: once.
            datasets = csv_to_datasets(
                str(root / "csv" / "train.csv"), label_index=4, num_classes=CLASSES, sc=sc
            )
            urls = batch_and_export(datasets, export_dir, batch_size=32)
            manifest = json.loads((root / "export" / "_manifest.json").read_text())
            assert manifest["num_examples"] == rows and manifest["num_files"] == len(urls)
            assert sorted(os.path.basename(u) for u in urls) == sorted(
                entry["path"] for entry in manifest["files"]
            )
            # Exporting again into the same directory is refused (nothing is mixed or
            # duplicated); overwrite=True replaces the earlier export.
            try:
                batch_and_export(datasets, export_dir, batch_size=32)
                raise AssertionError("a second export into the same directory was accepted")
            except FileExistsError as e:
                print(f"refused: {e}")

            # 2. Loading and fitting, as often as wanted.
            test = csv_to_datasets(
                str(root / "csv" / "test.csv"), label_index=4, num_classes=CLASSES, sc=sc
            )
            master = ParameterAveraging(
                batch_size_per_worker=32, averaging_frequency=4, exchange="socket"
            )
            epochs = 4 if small else 3

            # a. From the directory (its manifest, else a listing).
            first = SparkNetwork(sc, network(16, Adam(0.05)), master)
            first.fit(export_dir, epochs=epochs)

            # b. From an RDD of paths: a listing of the directory (DL4J's SparkUtils.listPaths),
            # a text file of the URLs saved with saveAsTextFile, or the URLs batch_and_export
            # returned, parallelized (sc.parallelize(urls)); all three name the same files.
            listed = list_paths(sc, export_dir)
            sc.parallelize(urls, 1).saveAsTextFile(str(root / "paths.txt"))
            saved = sc.textFile(str(root / "paths.txt"))
            assert sorted(saved.collect()) == sorted(urls)
            second = SparkNetwork(sc, network(8, SGD(0.5)), master)
            second.fit_paths(listed, epochs=epochs)

            for name, spark_net in (("Adam, 16 hidden", first), ("SGD, 8 hidden", second)):
                accuracy = spark_net.evaluate(test).accuracy()
                print(f"{name}: test accuracy {accuracy:.3f}")
                assert accuracy > 0.85, (name, accuracy)
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
