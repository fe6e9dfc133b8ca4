"""How to prepare data on a single machine for use on a cluster: saving DataSets.

The seed's "prepare data on a single machine ... saving DataSets": an existing single-machine
pipeline (here a :class:`~sparkbatch.convert.RecordReaderDataSetIterator` over a
:class:`~sparkbatch.records.CSVRecordReader`, DataVec's classes of the same names) is saved as
minibatch files on one machine, the files are copied to storage the cluster reaches, and the
network is trained there by parameter averaging.

1. Saving, two ways:

   a. The seed's loop, ``ds.save(dir / f"dataset_{count}.bin")``: any file names will do.
   b. :func:`~sparkbatch.data.export_datasets` (recommended): ``dataset_000000.safetensors``,
      ... each written atomically, then ``_manifest.json`` listing every file and its example
      count, so training never reads a half-written or partial export.

   Saving straight to the cluster's storage is the same call with a URL:
   ``export_datasets(iterator, "hdfs:///my/output/location")`` or ``"s3://bucket/dir"`` (with
   ``storage_options`` for credentials).
   On the single machine, :class:`~sparkbatch.data.FileDataSetIterator` reads the files back.
2. Training on the cluster from the copied directory: ``SparkNetwork.fit(dir)`` (DL4J's
   ``net.fit(dir)``), or its paths as an RDD with :func:`~sparkbatch.spark.list_paths` (DL4J's
   ``SparkUtils.listPaths``) for ``fit_paths``.

Run: ``python examples/single_machine_to_cluster.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparkbatch.convert import RecordReaderDataSetIterator
from sparkbatch.data import FileDataSetIterator, export_datasets
from sparkbatch.nn import Adam, Dense, Network, Output
from sparkbatch.records import CSVRecordReader
from sparkbatch.spark import list_paths, recommended_conf
from sparkbatch.train import ParameterAveraging, SparkNetwork

FEATURES, CLASSES = 4, 3


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write an iris-like CSV file with a header: 4 measurements and a species index 0..2."""
    rng = np.random.default_rng(seed)
    species = rng.integers(0, CLASSES, rows)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    x = (centres[species] + 0.25 * rng.normal(size=(rows, FEATURES))).round(2)
    lines = [
        ",".join([*(f"{v:g}" for v in row), str(s)]) for row, s in zip(x, species, strict=True)
    ]
    path.write_text("sepal_l,sepal_w,petal_l,petal_w,species\n" + "\n".join(lines) + "\n")


def main(spark: object | None = None, small: bool = False) -> None:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("single-machine-to-cluster")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    rows = 300 if small else 30000
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            generate(root / "iris.csv", rows)

            # The existing single-machine pipeline: minibatches of 32 from a record reader.
            reader = CSVRecordReader(skip_lines=1).initialize(str(root / "iris.csv"))
            iterator = RecordReaderDataSetIterator(
                reader, batch_size=32, label_index=4, num_classes=CLASSES
            )

            # 1a. The seed's loop: one file per minibatch, names of your choosing.
            saved = root / "saved"
            saved.mkdir()
            for count, ds in enumerate(iterator):
                ds.save(str(saved / f"dataset_{count}.bin"))

            # 1b. export_datasets: atomic files and a manifest (iterating again starts over).
            exported = str(root / "exported")
            urls = export_datasets(iterator, exported)
            assert len(urls) == len(os.listdir(saved)) == -(-rows // 32)

            # On the single machine, FileDataSetIterator reads either directory back.
            back = list(FileDataSetIterator(str(saved), shuffle=False))
            assert sum(ds.num_examples for ds in back) == rows

            # 2. Copy to storage every executor reaches (hdfs dfs -put, aws s3 cp, fsspec's
            # fs.put(local, remote, recursive=True), ...); here another local directory.
            cluster = str(root / "cluster" / "iris")
            shutil.copytree(saved, cluster)

            net = Network(
                [Dense(FEATURES, 16, "tanh"), Output(16, CLASSES, "softmax", "cross_entropy")],
                Adam(0.05),
                seed=1,
            )
            master = ParameterAveraging(
                batch_size_per_worker=32, averaging_frequency=4, exchange="socket"
            )
            spark_net = SparkNetwork(sc, net, master)
            spark_net.fit(cluster, epochs=3 if small else 1)  # every file under the directory
            # Equivalently, the paths as an RDD (continuing the training here: two more epochs).
            paths = list_paths(sc, cluster)
            spark_net.fit_paths(paths, epochs=2)
            assert net.epoch == (5 if small else 3)
            evaluation = spark_net.evaluate(exported)  # the manifest's files
            accuracy = evaluation.accuracy()
            print(f"trained on {rows} examples in {len(urls)} files: accuracy {accuracy:.3f}")
            assert accuracy > 0.9, accuracy
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
