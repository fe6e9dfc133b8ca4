"""How to prepare data on a single machine for use on a cluster: map/sequence files.

The seed's how-to of that name, on local Spark:

1. On one machine, any record reader (here a :class:`~sparkbatch.records.CSVRecordReader`) is
   copied by :func:`sparkbatch.records.convert` (DataVec's ``RecordReaderConverter.convert``)
   into a :class:`~sparkbatch.storage.MapFileWriter` (DataVec's ``MapFileRecordWriter``), split
   into several Hadoop MapFiles ``part-r-00000``, ... of ``split_size`` records each: real
   Hadoop files, which Spark's own ``sc.sequenceFile`` also reads.
2. The directory is copied to storage the cluster reaches (``hdfs dfs -put``, ``aws s3 cp``,
   fsspec's ``fs.put(local, remote, recursive=True)``); here another local directory.
3. :func:`sparkbatch.spark.restore_map_file` (DataVec's ``SparkStorageUtils.restoreMapFile``)
   gives an RDD of the records in order, one partition per part; from there it is the CSV
   how-to: ``RecordsToDataSet(label_index, num_classes)`` per record, then training.

A sequence reader goes the same way into a ``MapFileSequenceWriter``, read back by
``restore_map_file_sequences`` and ``SequencesToDataSet``.

Run: ``python examples/map_files.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparkbatch.nn import Adam, Dense, Network, Output
from sparkbatch.records import CSVRecordReader, convert
from sparkbatch.spark import RecordsToDataSet, recommended_conf, restore_map_file
from sparkbatch.storage import MapFileWriter
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
            .appName("map-files")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    rows = 300 if small else 30000
    split_size = 100 if small else 5000
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            generate(root / "iris.csv", rows)

            # Step 1: create the map files locally, split into parts of split_size records.
            reader = CSVRecordReader(skip_lines=1).initialize(str(root / "iris.csv"))
            local = str(root / "map_files")
            written = convert(reader, MapFileWriter(local, split_size=split_size))
            assert written == rows
            parts = sorted(p for p in os.listdir(local) if p.startswith("part-"))
            assert len(parts) == -(-rows // split_size), parts

            # Step 2: copy to storage every executor reaches; here another local directory.
            on_cluster = str(root / "cluster" / "iris")
            shutil.copytree(local, on_cluster)

            # Step 3: restore on Spark and convert as in the CSV how-to.
            records = restore_map_file(sc, on_cluster)
            assert records.getNumPartitions() == len(parts)
            datasets = records.map(RecordsToDataSet(label_index=4, num_classes=CLASSES))

            net = Network(
                [Dense(FEATURES, 16, "tanh"), Output(16, CLASSES, "softmax", "cross_entropy")],
                Adam(0.05),
                seed=1,
            )
            master = ParameterAveraging(
                batch_size_per_worker=32, averaging_frequency=4, exchange="socket"
            )
            spark_net = SparkNetwork(sc, net, master)
            spark_net.fit(datasets, epochs=5 if small else 2)
            accuracy = spark_net.evaluate(datasets).accuracy()
            print(f"{rows} records in {len(parts)} map files, trained: accuracy {accuracy:.3f}")
            assert accuracy > 0.9, accuracy
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
