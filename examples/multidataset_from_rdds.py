"""How to create an RDD of MultiDataSets from one or more RDDs of records (DL4J's ``mapRRMDSI``).

The data: three sources keyed by a user id, as they often come from different systems.

* ``users.csv``: ``id, age, income, tenure`` (records);
* ``events.csv``: ``id, clicks, spend, churned`` (records; ``churned`` is the class to predict,
  and some users have no events);
* ``sessions/<id>.csv``: one file per user, one line per step: ``id, duration, pages``
  (sequences of 1 to 12 steps).

Case 1, one RDD: the MultiDataSets of one RDD of records, no join. Case 2, several RDDs: users
and events joined by id train a two-input :class:`~sparkbatch.nn.Graph` with ``fit_multi`` from
an export; users, events and sessions joined (one RDD of sequences) give a masked sequence input,
exported and read back with its masks.

Run: ``python examples/multidataset_from_rdds.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparkbatch.convert import MultiDataSetBuilder
from sparkbatch.data import FileMultiDataSetIterator
from sparkbatch.nn import Adam, Dense, Graph, Merge, Output
from sparkbatch.records import CSVRecordReader, CSVSequenceRecordReader
from sparkbatch.spark import (
    SparkSequenceSource,
    SparkSource,
    StringToRecords,
    batch_and_export,
    executor_errors,
    map_rrmdsi,
    recommended_conf,
)
from sparkbatch.storage import list_files, read_bytes
from sparkbatch.train import ParameterAveraging, SparkNetwork


def generate(directory: Path, n: int, seed: int = 0) -> int:
    """Write the three sources for ``n`` users; return how many users have events."""
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n, 3))
    activity = rng.normal(size=(n, 2))
    churned = (users[:, 0] - activity[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)
    with_events = rng.random(n) > 0.1  # a tenth of the users never had an event
    (directory / "users.csv").write_text(
        "".join(f"u{i},{u[0]:.5f},{u[1]:.5f},{u[2]:.5f}\n" for i, u in enumerate(users))
    )
    (directory / "events.csv").write_text(
        "".join(
            f"u{i},{a[0]:.5f},{a[1]:.5f},{c}\n"
            for i, (a, c, has) in enumerate(zip(activity, churned, with_events, strict=True))
            if has
        )
    )
    sessions = directory / "sessions"
    sessions.mkdir()
    for i in range(n):
        steps = rng.normal(size=(int(rng.integers(1, 13)), 2))
        (sessions / f"u{i}.csv").write_text("".join(f"u{i},{a:.4f},{b:.4f}\n" for a, b in steps))
    return int(with_events.sum())


def main(spark=None, small: bool = False) -> None:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the executors use this Python
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("multidataset")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext
    n = 128 if small else 4000
    batch = 16 if small else 32
    try:
        with tempfile.TemporaryDirectory() as tmp, executor_errors():
            root = Path(tmp)
            with_events = generate(root, n)
            to_records = StringToRecords(CSVRecordReader())
            users = sc.textFile(str(root / "users.csv"), 2).map(to_records)
            events = sc.textFile(str(root / "events.csv"), 2).map(to_records)
            # One sequence per file: executors read the files whose URLs they are given (any
            # storage fsspec reaches). sc.binaryFiles(dir).map(lambda f: reader.parse_sequence(
            # f[1], f[0])) is DL4J's way and works too, but Hadoop opens many small files slowly.
            reader = CSVSequenceRecordReader()
            files = list_files(str(root / "sessions"))
            sessions = sc.parallelize(files, 2).map(
                lambda url: reader.parse_sequence(read_bytes(url), url)
            )

            # Case 1: one RDD, no join: the users' numbers as one input.
            one = (
                MultiDataSetBuilder(batch)
                .add_reader("users", SparkSource(0))
                .add_input("users", 1, 3)
            )
            assert sum(m.num_examples for m in map_rrmdsi(users, one).collect()) == n

            # Case 2a: users and events joined by id (column 0 of both); users without events are
            # dropped and counted.
            builder = (
                MultiDataSetBuilder(batch)
                .add_reader("users", SparkSource(0))
                .add_reader("events", SparkSource(1))
                .add_input("users", 1, 3)
                .add_input("events", 1, 2)
                .add_output_one_hot("events", 3, 2)
            )
            joined = map_rrmdsi([users, events], builder, key_columns=[0, 0], filter_missing=True)
            train = str(root / "train")
            batch_and_export(joined, train, batch_size=batch)
            assert joined.missing_keys.value == n - with_events  # read after the action

            graph = Graph(
                ["users", "events"],
                {
                    "u": (Dense(3, 16, "tanh"), "users"),
                    "e": (Dense(2, 16, "tanh"), "events"),
                    "m": (Merge(), "u", "e"),
                    "churned": (Output(32, 2, "softmax", "cross_entropy"), "m"),
                },
                ["churned"],
                Adam(0.02),
                seed=1,
            )
            averaging = ParameterAveraging(batch_size_per_worker=batch, averaging_frequency=4)
            SparkNetwork(sc, graph, averaging).fit_multi(train, epochs=6 if small else 5)
            accuracy = graph.evaluate(FileMultiDataSetIterator(train)).accuracy()
            print(f"trained on {with_events} joined examples: accuracy {accuracy:.3f}")
            assert accuracy > 0.8, accuracy

            # Case 2b: three RDDs, one of sequences (keyed by the id in its first step).
            sequences = (
                MultiDataSetBuilder(batch)
                .add_reader("users", SparkSource(0))
                .add_reader("events", SparkSource(1))
                .add_sequence_reader("sessions", SparkSequenceSource(0))
                .add_input("users", 1, 3)
                .add_input("sessions", 1, 2)  # [n, 2, T] with a mask [n, T]
                .add_output_one_hot("events", 3, 2)
            )
            mds = map_rrmdsi(
                [users, events],
                sequences,
                key_columns=0,
                seq_rdds=[sessions],
                seq_key_columns=[0],
                filter_missing=True,
            )
            exported = str(root / "sequences")
            batch_and_export(mds, exported, batch_size=64)
            loaded = list(FileMultiDataSetIterator(exported))
            assert sum(m.num_examples for m in loaded) == with_events
            for m in loaded:
                mask = m.features_masks[1]
                assert mask is not None and mask.shape == m.features[1].shape[::2]
                assert (mask.sum(axis=1) >= 1).all() and mask.shape[1] <= 12
            print(f"exported {len(loaded)} minibatches of masked session sequences")
    finally:
        if own:
            spark.stop()


if __name__ == "__main__":
    main()
