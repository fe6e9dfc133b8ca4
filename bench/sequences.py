"""Sequences/s from a directory of small CSV files (one sequence per file) to exported, masked
minibatch files on local Spark: the seed's per-record chain against the partition-wide path.

Usage: python bench/sequences.py [--files 20000] [--min-steps 10] [--max-steps 60] [--batch 32]
                                 [--repeat 1] [--dir DIR] [--max-partition-bytes 262144]
                                 [--lstm]

A generated directory of --files CSV files, each a sequence of 10-60 steps of 6 columns (5 float
features and an integer class label in 0..4), goes to minibatch files of --batch sequences by
  (a) the seed's chain: sc.binaryFiles -> SequenceFileToRecords(CSVSequenceRecordReader())
      -> SequencesToDataSet(label_index=5, num_classes=5) -> batch_and_export
  (b) the partition-wide path: csv_sequences_to_datasets(...) -> batch_and_export
on local[N] (N = cores), after one warm-up run of each on 500 other files. Each export is read
back and its example count checked.

NOTE [binaryFiles of small files]: Spark's binaryFiles packs files into splits by their bytes
(up to spark.files.maxPartitionBytes, 128 MB), so 20,000 files of 1.5 kB make one split, one
task, and every file's PortableDataStream serialises that whole split again: quadratic in the
files per split (measured here: 2,000 files ~65 s; 20,000 still in their one task after 15
minutes, when the run was stopped), and it serialises the Hadoop configuration once per file.
The chain is run with --max-partition-bytes (default 256 kB, about 170 files a split) so that
it is measured at its best, as a user who knows this would run it; 0 keeps Spark's default.

Prints sequences/s of each and (b)/(a); the goal is at least 10x. --lstm also times the LSTM
training step against torch.nn.LSTM (bench/lstm.py's run(threads=cores); needs torch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from _common import versions

FEATURES, CLASSES = 5, 5


def generate(directory: str, files: int, min_steps: int, max_steps: int, seed: int = 0) -> int:
    """Write ``files`` sequence files; return the total number of steps."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    steps = rng.integers(min_steps, max_steps + 1, files)
    for i, t in enumerate(steps):
        values = rng.standard_normal((t, FEATURES))
        labels = rng.integers(0, CLASSES, t)
        text = "".join(
            ",".join(f"{v:.5f}" for v in row) + f",{label}\n"
            for row, label in zip(values, labels, strict=True)
        )
        with open(os.path.join(directory, f"seq-{i:06d}.csv"), "w") as f:
            f.write(text)
    return int(steps.sum())


def _read_back(urls: list[str]) -> int:
    from sparkbatch.data import load

    total = 0
    for url in urls:
        ds = load(url)
        assert ds.features_mask is not None and ds.labels_mask is not None
        total += ds.num_examples
    return total


def _spark(max_partition_bytes: int):  # type: ignore[no-untyped-def]
    """bench/_common's local Spark, with spark.files.maxPartitionBytes set (NOTE [binaryFiles
    of small files])."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(f"local[{os.cpu_count() or 2}]")
        .appName("sparkbatch-bench-sequences")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.python.worker.reuse", "true")
    )
    if max_partition_bytes:
        builder = builder.config("spark.files.maxPartitionBytes", str(max_partition_bytes))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_spark(
    data: str, warm: str, out: str, batch: int, repeat: int, max_partition_bytes: int
) -> list[tuple[str, float]]:
    from sparkbatch.records import CSVSequenceRecordReader
    from sparkbatch.spark import (
        SequenceFileToRecords,
        SequencesToDataSet,
        batch_and_export,
        csv_sequences_to_datasets,
    )

    spark = _spark(max_partition_bytes)
    sc = spark.sparkContext
    cores = os.cpu_count() or 2
    files = len(os.listdir(data))

    def chain(directory: str, target: str) -> list[str]:
        rdd = (
            sc.binaryFiles(directory, 2 * cores)  # NOTE [binaryFiles of small files]
            .map(SequenceFileToRecords(CSVSequenceRecordReader()))
            .map(SequencesToDataSet(label_index=FEATURES, num_classes=CLASSES))
        )
        return batch_and_export(rdd, target, batch, overwrite=True)

    def partition_wide(directory: str, target: str) -> list[str]:
        rdd = csv_sequences_to_datasets(
            directory, label_index=FEATURES, num_classes=CLASSES, batch_size=batch, sc=sc
        )
        return batch_and_export(rdd, target, batch, overwrite=True)

    results = []
    for name, fn in [
        ("(a) seed chain: binaryFiles -> SequenceFileToRecords -> SequencesToDataSet", chain),
        ("(b) csv_sequences_to_datasets (partition-wide)", partition_wide),
    ]:
        fn(warm, os.path.join(out, "warm"))  # JVM, Python workers, imports
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            urls = fn(data, os.path.join(out, name[:3].strip("()")))
            times.append(time.perf_counter() - start)
            got = _read_back(urls)
            if got != files:
                raise AssertionError(f"{name}: read back {got} sequences, expected {files}")
        results.append((name, files / min(times)))
    spark.stop()
    return results


def run_lstm() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import lstm  # type: ignore[import-not-found]

    result = lstm.run(threads=os.cpu_count() or 2)
    print("\nLSTM training step (bench/lstm.py):")
    for key, value in result.items():
        print(f"  {key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000, help="sequence files to generate")
    parser.add_argument("--min-steps", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32, help="sequences per minibatch file")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each path (best)")
    parser.add_argument("--dir", default=None, help="where to write the files (default: temp)")
    parser.add_argument(
        "--max-partition-bytes",
        type=int,
        default=256 << 10,
        help="spark.files.maxPartitionBytes for binaryFiles (0: Spark's default, 128 MB)",
    )
    parser.add_argument("--lstm", action="store_true", help="also run bench/lstm.py's run()")
    args = parser.parse_args()
    if args.lstm:  # bench/lstm.py's threads: sparkbatch's pool reads this when first imported
        os.environ.setdefault("SPARKBATCH_NUM_THREADS", str(os.cpu_count() or 1))

    print("versions:", versions("sparkbatch", "numpy", "pyspark", "fsspec"))
    workdir = tempfile.mkdtemp(prefix="sparkbatch-bench-sequences-", dir=args.dir)
    try:
        data, warm = os.path.join(workdir, "data"), os.path.join(workdir, "warm")
        steps = generate(data, args.files, args.min_steps, args.max_steps)
        generate(warm, 500, args.min_steps, args.max_steps, seed=1)
        size = sum(e.stat().st_size for e in os.scandir(data)) / 1e6
        print(
            f"data: {args.files:,} files, {steps:,} steps ({args.min_steps}-{args.max_steps} a"
            f" file), {FEATURES} float features + 1 class label, {size:.1f} MB\n"
        )
        results = run_spark(
            data,
            warm,
            os.path.join(workdir, "out"),
            args.batch,
            args.repeat,
            args.max_partition_bytes,
        )
        print(
            f"local[{os.cpu_count()}], files to exported minibatches of {args.batch} (masked);"
            f" spark.files.maxPartitionBytes={args.max_partition_bytes or 'default'}"
        )
        print("| path | sequences/s |")
        print("|---|---:|")
        for name, rate in results:
            print(f"| {name} | {rate:,.0f} |")
        print(f"\n(b)/(a) = {results[1][1] / results[0][1]:.1f}x (goal: at least 10x)")
        if args.lstm:
            run_lstm()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
