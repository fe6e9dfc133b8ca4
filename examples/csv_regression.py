"""How to prepare an RDD of DataSets from CSV data for regression, then train and evaluate.

The seed's "How to load data from CSV" for regression: CSV files of 6 columns, 3 features
(columns 0, 1 and 2) and 3 real-valued labels (columns 3, 4 and 5), no header::

    0.52,-1.3,0.07,1.204,-0.33,0.9

1. The seed's chain: ``sc.textFile`` -> :class:`~sparkbatch.spark.StringToRecords` ->
   :class:`~sparkbatch.spark.RecordsToDataSet` with ``label_first=3, label_last=5,
   regression=True`` (DL4J's ``DataVecDataSetFunction(3, 5, true, null, null)``): labels are the
   inclusive column range, features every other column. A single label column is
   ``label_index=k, regression=True``.
2. The recommended path, :func:`~sparkbatch.spark.csv_to_datasets` with the same arguments:
   minibatches parsed natively, the same examples.
3. A network with an identity output and mean squared error trained by parameter averaging,
   then :meth:`~sparkbatch.train.SparkNetwork.evaluate_regression` on held-out data: MSE, MAE
   and R² per label column, merged from every partition.

Run: ``python examples/csv_regression.py``.
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

FEATURES, TARGETS = 3, 3
MIXING = np.array([[0.8, -0.5, 0.3], [0.2, 0.9, -0.4], [-0.6, 0.1, 0.7]])


def generate(path: Path, rows: int, seed: int) -> np.ndarray:
    """Write one CSV file of ``rows`` rows (3 features, then 3 labels); return the table."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    y = np.tanh(x @ MIXING) + 0.02 * rng.normal(size=(rows, TARGETS))
    table = np.column_stack([x, y]).round(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(f"{v:g}" for v in row) for row in table) + "\n")
    return table


def main(spark: object | None = None, small: bool = False) -> None:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("csv-regression")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    rows = 400 if small else 20000
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            table = generate(root / "train" / "data.csv", rows, seed=0)
            generate(root / "test" / "data.csv", rows // 2, seed=1)
            train = str(root / "train")

            # 1. The seed's chain: labels are columns 3..5 (inclusive).
            to_dataset = RecordsToDataSet(label_first=3, label_last=5, regression=True)
            per_line = sc.textFile(train).map(StringToRecords(CSVRecordReader())).map(to_dataset)
            first = per_line.first()
            np.testing.assert_allclose(first.features[0], table[0, :3], rtol=1e-6)
            np.testing.assert_allclose(first.labels[0], table[0, 3:], rtol=1e-6)
            # One label column: label_index with regression=True (here column 4; the features
            # are the other five columns, in order).
            single = RecordsToDataSet(label_index=4, regression=True)([1, 2, 3, 4, 5, 6])
            assert single.features.tolist() == [[1, 2, 3, 4, 6]] and single.labels.tolist() == [[5]]

            # 2. The recommended path: the same examples in minibatches of 32.
            minibatches = csv_to_datasets(
                train, label_first=3, label_last=5, regression=True, batch_size=32, sc=sc
            )
            batched = minibatches.collect()
            found = np.column_stack(
                [
                    np.concatenate([ds.features for ds in batched]),
                    np.concatenate([ds.labels for ds in batched]),
                ]
            )
            expected = table.astype(np.float32)
            assert found.shape == expected.shape == (rows, FEATURES + TARGETS)
            np.testing.assert_array_equal(
                found[np.lexsort(found.T[::-1])], expected[np.lexsort(expected.T[::-1])]
            )

            # 3. Train and evaluate the regression on held-out data.
            net = Network(
                [Dense(FEATURES, 24, "tanh"), Output(24, TARGETS, "identity", "mse")],
                Adam(0.03),
                seed=1,
            )
            master = ParameterAveraging(
                batch_size_per_worker=32, averaging_frequency=4, exchange="socket"
            )
            spark_net = SparkNetwork(sc, net, master)
            spark_net.fit(minibatches, epochs=8 if small else 5)
            test = csv_to_datasets(
                str(root / "test"), label_first=3, label_last=5, regression=True, sc=sc
            )
            evaluation = spark_net.evaluate_regression(test, column_names=["y0", "y1", "y2"])
            print(evaluation.stats())
            for column in range(TARGETS):
                assert evaluation.r2(column) > 0.9, (column, evaluation.r2(column))
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
