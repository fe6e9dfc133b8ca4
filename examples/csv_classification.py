"""How to prepare an RDD of DataSets from CSV data for classification, then train and evaluate.

The seed's "How to load data from CSV" for classification: CSV files of 6 columns, 5 features
followed by an integer class index, a header line in each file::

    x1,x2,x3,x4,x5,label
    1.0,3.2,4.5,1.1,6.3,0
    1.6,2.4,5.9,0.2,2.2,1

1. The seed's chain, one DataSet of one example per line: ``sc.textFile`` ->
   :class:`~sparkbatch.spark.StringToRecords` (a ``CSVRecordReader``, DataVec's
   ``StringToWritablesFunction``) -> :class:`~sparkbatch.spark.RecordsToDataSet`
   (``DataVecDataSetFunction(labelIndex, numClasses, false)``). ``StringToRecords`` sees single
   lines, so the header lines are filtered out first, as in DL4J.
2. The recommended path, :func:`~sparkbatch.spark.csv_to_datasets`: each partition parsed in one
   native call into minibatches, header lines skipped once per file. Both give the same examples.
3. A network trained on the cluster by parameter averaging
   (:class:`~sparkbatch.train.SparkNetwork`) and evaluated on held-out files, the counts merged
   from every partition.

Run: ``python examples/csv_classification.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparkbatch.nn import Adam, Dense, Network, Output
from sparkbatch.records import CSVRecordReader
from sparkbatch.spark import RecordsToDataSet, StringToRecords, csv_to_datasets, recommended_conf
from sparkbatch.train import ParameterAveraging, SparkNetwork

FEATURES, CLASSES = 5, 4
HEADER = "x1,x2,x3,x4,x5,label"


def generate(directory: Path, files: int, rows: int, seed: int) -> np.ndarray:
    """Write ``files`` CSV files of ``rows`` rows each; return all rows as one ``[n, 6]`` table.

    The class of a row is the largest of four fixed linear scores of its features, so a small
    network can learn it.
    """
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(42).normal(size=(FEATURES, CLASSES))
    directory.mkdir(parents=True, exist_ok=True)
    tables = []
    for i in range(files):
        x = rng.normal(size=(rows, FEATURES)).round(3)
        label = np.argmax(x @ weights, axis=1)
        table = np.column_stack([x, label])
        lines = [",".join(f"{v:g}" for v in row) for row in table]
        (directory / f"part-{i:03d}.csv").write_text(HEADER + "\n" + "\n".join(lines) + "\n")
        tables.append(table)
    return np.concatenate(tables)


def sorted_rows(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Features and labels side by side as float32, rows sorted (to compare in any order)."""
    rows = np.column_stack([features, labels]).astype(np.float32)
    return rows[np.lexsort(rows.T[::-1])]


def main(spark: object | None = None, small: bool = False) -> None:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("csv-classification")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    files, rows = (2, 200) if small else (4, 5000)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            table = generate(root / "train", files, rows, seed=0)
            generate(root / "test", 1, rows, seed=1)
            train = str(root / "train")

            # 1. The seed's chain: one DataSet per line.
            lines = sc.textFile(train).filter(lambda line: line != HEADER)
            records = lines.map(StringToRecords(CSVRecordReader(delimiter=",")))
            per_line = records.map(RecordsToDataSet(label_index=5, num_classes=CLASSES))

            # 2. The recommended path: whole partitions parsed natively into minibatches of 32.
            minibatches = csv_to_datasets(
                train, label_index=5, num_classes=CLASSES, batch_size=32, skip_lines=1, sc=sc
            )

            # Both give the same examples, in another order: compare them sorted.
            one_each, batched = per_line.collect(), minibatches.collect()
            assert one_each[0].features.shape == (1, FEATURES)
            assert one_each[0].labels.shape == (1, CLASSES)
            assert all(ds.num_examples <= 32 for ds in batched)
            x = table[:, :FEATURES]
            y = np.eye(CLASSES)[table[:, FEATURES].astype(int)]
            expected = sorted_rows(x, y)
            for datasets in (one_each, batched):
                found = sorted_rows(
                    np.concatenate([ds.features for ds in datasets]),
                    np.concatenate([ds.labels for ds in datasets]),
                )
                np.testing.assert_array_equal(found, expected)

            # 3. Train by parameter averaging, evaluate on the held-out file.
            net = Network(
                [Dense(FEATURES, 16, "tanh"), Output(16, CLASSES, "softmax", "cross_entropy")],
                Adam(0.05),
                seed=1,
            )
            # exchange="socket": one Spark job per fit, the averaging over TCP (the default,
            # "spark", is DL4J's one job per round; both give the same parameters).
            master = ParameterAveraging(
                batch_size_per_worker=32, averaging_frequency=4, exchange="socket"
            )
            spark_net = SparkNetwork(sc, net, master)
            spark_net.fit(minibatches, epochs=5)
            test = csv_to_datasets(
                str(root / "test"), label_index=5, num_classes=CLASSES, skip_lines=1, sc=sc
            )
            evaluation = spark_net.evaluate(test)
            print(evaluation.stats())
            assert evaluation.accuracy() > 0.85, evaluation.accuracy()
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
