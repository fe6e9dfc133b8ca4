"""How to load multiple CSVs (one sequence per file) for RNN data pipelines.

The data: a directory of CSV files, one sequence per file, one line per time step, a header line
in every file: ``x1, x2, x3, x4, x5, label`` where ``label`` is the class (0-4) of the step.
Sequences have different lengths (3 to 40 steps).

1. The seed's chain, one element per file: ``sc.binaryFiles(dir)`` ->
   :class:`~sparkbatch.spark.SequenceFileToRecords` (a ``CSVSequenceRecordReader``) ->
   :class:`~sparkbatch.spark.SequencesToDataSet`: one DataSet per sequence, features
   ``[1, 5, T]`` and one-hot labels ``[1, 5, T]``.
2. The partition-wide path, :func:`~sparkbatch.spark.csv_sequences_to_datasets`: minibatches of
   padded sequences with masks, each file parsed natively where it is read.
3. Both exported with :func:`~sparkbatch.spark.batch_and_export` (sequences padded at the end and
   masked) and read back: the same examples, the same masks, as a numpy reference says.
4. Many-to-one labels (the class of the last step) for a ``LastTimeStep`` network, and
   ``alignment="align_end"``.

Run: ``python examples/csv_sequences.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparkbatch.data import FileDataSetIterator
from sparkbatch.data.sequences import example_sources
from sparkbatch.records import CSVSequenceRecordReader
from sparkbatch.spark import (
    SequenceFileToRecords,
    SequencesToDataSet,
    batch_and_export,
    csv_sequences_to_datasets,
    recommended_conf,
)

FEATURES, CLASSES = 5, 5


def generate(directory: Path, files: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``files`` sequence files; return each file's table (name -> ``[T, 6]``)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    tables = {}
    for i in range(files):
        steps = int(rng.integers(3, 41))
        table = rng.normal(size=(steps, FEATURES + 1)).round(4)
        table[:, FEATURES] = rng.integers(0, CLASSES, steps)
        name = f"sequence-{i:05d}.csv"
        rows = [",".join(f"{v:g}" for v in row) for row in table]
        header = ",".join([f"x{k + 1}" for k in range(FEATURES)] + ["label"])
        (directory / name).write_text(header + "\n" + "\n".join(rows) + "\n")
        tables[name] = table
    return tables


def exported_examples(directory: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every example of an export by its file's name: features, labels and mask of its real
    steps (what a network's loss sees)."""
    found = {}
    for ds in FileDataSetIterator(directory, shuffle=False):
        assert ds.features_mask is not None and ds.labels_mask is not None
        for i, source in enumerate(example_sources(ds.metadata, ds.num_examples)):
            mask = ds.features_mask[i]
            assert np.array_equal(mask, ds.labels_mask[i])
            real = mask == 1
            found[os.path.basename(source)] = (ds.features[i][:, real], ds.labels[i][:, real], mask)
    return found


def main(spark: object | None = None, small: bool = False) -> None:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("csv-sequences")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    files = 24 if small else 2000
    batch_size = 6 if small else 32
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            tables = generate(root / "sequences", files)
            directory = str(root / "sequences")

            # 1. The seed's chain: one DataSet per file.
            sequences = sc.binaryFiles(directory).map(
                SequenceFileToRecords(CSVSequenceRecordReader(skip_lines=1, delimiter=","))
            )
            datasets = sequences.map(SequencesToDataSet(label_index=5, num_classes=CLASSES))
            datasets.cache()  # used twice below: read the files once
            first = datasets.first()
            steps = tables[os.path.basename(first.metadata["source"])].shape[0]
            assert first.features.shape == (1, FEATURES, steps)
            assert first.labels.shape == (1, CLASSES, steps)

            # 2. The partition-wide path: padded, masked minibatches.
            minibatches = csv_sequences_to_datasets(
                directory,
                label_index=5,
                num_classes=CLASSES,
                batch_size=batch_size,
                skip_lines=1,
                sc=sc,
            )
            ds = minibatches.first()
            assert ds.features.shape[:2] == (batch_size, FEATURES)
            assert ds.features_mask.shape == (batch_size, ds.features.shape[2])

            # 3. Export both and read them back.
            batch_and_export(datasets, str(root / "chain"), batch_size)
            batch_and_export(minibatches, str(root / "wide"), batch_size)
            chain, wide = (
                exported_examples(str(root / "chain")),
                exported_examples(str(root / "wide")),
            )
            assert sorted(chain) == sorted(wide) == sorted(tables)
            for name, table in tables.items():
                x = table[:, :FEATURES].T.astype(np.float32)
                y = np.eye(CLASSES, dtype=np.float32)[table[:, FEATURES].astype(int)].T
                for features, labels, _ in (chain[name], wide[name]):
                    np.testing.assert_array_equal(features, x)
                    np.testing.assert_array_equal(labels, y)

            # 4. Many-to-one labels, last steps aligned.
            last = csv_sequences_to_datasets(
                directory,
                label_index=5,
                num_classes=CLASSES,
                batch_size=batch_size,
                skip_lines=1,
                many_to_one=True,
                alignment="align_end",
                sc=sc,
            ).first()
            assert last.labels.shape == (batch_size, CLASSES) and last.labels_mask is None
            assert (last.features_mask[:, -1] == 1).all()  # every sequence ends at the last step
            print(
                f"{files} sequence files: {len(chain)} examples through the seed's chain and"
                f" {len(wide)} through csv_sequences_to_datasets, identical after export"
            )
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
