"""CSV parsing and CSV-to-DataSet throughput against what a user would otherwise write.

Usage: python bench/csv.py [--mb 150] [--rows-a 200000] [--skip-spark] [--dir DIR]

Part 1, parse only: a generated numeric CSV (20 float feature columns, one integer label) parsed
into float32 arrays by sparkbatch's native parser (one thread, all threads), pandas.read_csv
(C engine), pyarrow.csv.read_csv (one thread, all threads) and np.loadtxt (on a 1/10 sample: it
is slow). MB/s, best of three.

Part 2, end to end on local Spark (local[N], N = cores): CSV to minibatch DataSets (32 examples)
in Python, counted by a sum of example counts:
  (a) the DL4J-style per-record chain: textFile -> StringToRecords -> RecordsToDataSet
      (on the first --rows-a rows: it is slow)
  (b) csv_to_datasets over an RDD of lines (textFile)
  (c) csv_to_datasets over the file: executors read byte ranges themselves
  (d) by hand: spark.read.csv(schema) then mapInArrow / mapInPandas to numpy arrays + one-hot
Rows/s, and the ratios the goals are stated in.
"""

from __future__ import annotations

import os
import sys

from _common import best, local_spark, versions, write_numeric_csv  # noqa: E402 (bench/ is on sys.path until the next line)

# This file is named csv.py: keep its folder off sys.path so `import csv` (pandas does) finds
# the standard library.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402 (after the sys.path fix above)
import itertools  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

FEATURES, CLASSES, BATCH = 20, 10, 32


def parse_benchmarks(path: str) -> list[tuple[str, float]]:
    from sparkbatch import _native

    data = open(path, "rb").read()
    mb = len(data) / 1e6
    results = [
        ("sparkbatch native, 1 thread", mb / best(lambda: _native.parse_csv(data, threads=1))),
        (
            f"sparkbatch native, {os.cpu_count()} threads",
            mb / best(lambda: _native.parse_csv(data, threads=0)),
        ),
    ]
    try:
        import pandas as pd

        results.append(
            (
                "pandas.read_csv (C engine)",
                mb
                / best(
                    lambda: pd.read_csv(path, header=None, dtype=np.float32, engine="c").to_numpy()
                ),
            )
        )
    except ImportError:
        print("pandas missing: pip install 'sparkbatch[bench]'", file=sys.stderr)
    try:
        import pyarrow.csv as pacsv

        def arrow(threads: bool) -> Callable[[], object]:
            opts = pacsv.ReadOptions(use_threads=threads, autogenerate_column_names=True)
            return lambda: pacsv.read_csv(path, read_options=opts)

        results.append(("pyarrow.csv.read_csv, 1 thread", mb / best(arrow(False))))
        results.append(("pyarrow.csv.read_csv, all threads", mb / best(arrow(True))))
    except ImportError:
        print("pyarrow missing: pip install 'sparkbatch[bench]'", file=sys.stderr)
    sample = data[: len(data) // 10]
    sample = sample[: sample.rfind(b"\n") + 1]
    results.append(
        (
            "np.loadtxt (1/10 sample)",
            len(sample)
            / 1e6
            / best(
                lambda: np.loadtxt(sample.decode().splitlines(), delimiter=",", dtype=np.float32), 1
            ),
        )
    )
    return results


def _count(features: np.ndarray, labels: np.ndarray) -> int:
    """Cut into minibatches as a training loop would, and count the examples."""
    minibatches = [
        (features[i : i + BATCH], labels[i : i + BATCH]) for i in range(0, len(features), BATCH)
    ]
    return sum(len(f) for f, _ in minibatches)


class _ArrowToArrays:
    """What a PySpark user writes by hand: Arrow batches to numpy features and one-hot labels."""

    def __call__(self, batches):  # type: ignore[no-untyped-def]
        import pyarrow as pa

        for batch in batches:
            table = np.column_stack([c.to_numpy() for c in batch.columns]).astype(np.float32)
            features = table[:, :FEATURES]
            labels = np.eye(CLASSES, dtype=np.float32)[table[:, FEATURES].astype(np.int64)]
            yield pa.RecordBatch.from_arrays(
                [pa.array([_count(features, labels)], pa.int64())], names=["n"]
            )


class _PandasToArrays:
    def __call__(self, frames):  # type: ignore[no-untyped-def]
        import pandas as pd

        for pdf in frames:
            table = pdf.to_numpy(np.float32)
            features = table[:, :FEATURES]
            labels = np.eye(CLASSES, dtype=np.float32)[table[:, FEATURES].astype(np.int64)]
            yield pd.DataFrame({"n": [_count(features, labels)]})


def _examples(ds) -> int:  # type: ignore[no-untyped-def]
    return ds.num_examples


def spark_benchmarks(
    path: str, rows: int, rows_a: int, workdir: str
) -> list[tuple[str, float, int]]:
    from pyspark.sql import types as T

    from sparkbatch.records import CSVRecordReader
    from sparkbatch.spark import RecordsToDataSet, StringToRecords, csv_to_datasets

    cores = os.cpu_count() or 2
    spark = local_spark("sparkbatch-bench-csv", driver_memory="6g")
    sc = spark.sparkContext
    small = os.path.join(workdir, "first-rows.csv")
    with open(path) as src, open(small, "w") as dst:
        dst.writelines(itertools.islice(src, rows_a))

    def chain() -> int:
        return (
            sc.textFile(small, cores)
            .map(StringToRecords(CSVRecordReader()))
            .map(RecordsToDataSet(label_index=FEATURES, num_classes=CLASSES))
            .map(_examples)
            .sum()
        )

    def lines() -> int:
        return (
            csv_to_datasets(
                sc.textFile(path), label_index=FEATURES, num_classes=CLASSES, batch_size=BATCH
            )
            .map(_examples)
            .sum()
        )

    def ranges() -> int:
        return (
            csv_to_datasets(
                path, label_index=FEATURES, num_classes=CLASSES, batch_size=BATCH, sc=sc
            )
            .map(_examples)
            .sum()
        )

    schema = T.StructType(
        [T.StructField(f"x{i}", T.FloatType()) for i in range(FEATURES)]
        + [T.StructField("y", T.IntegerType())]
    )

    def by_hand_arrow() -> int:
        df = spark.read.csv(path, schema=schema)
        return df.mapInArrow(_ArrowToArrays(), "n long").groupBy().sum("n").collect()[0][0]

    def by_hand_pandas() -> int:
        df = spark.read.csv(path, schema=schema)
        return df.mapInPandas(_PandasToArrays(), "n long").groupBy().sum("n").collect()[0][0]

    runs = [
        ("(a) per-record chain (DL4J style)", chain, rows_a),
        ("(b) csv_to_datasets(RDD of lines)", lines, rows),
        ("(c) csv_to_datasets(path): byte ranges", ranges, rows),
        ("(d) spark.read.csv + mapInArrow", by_hand_arrow, rows),
        ("(d) spark.read.csv + mapInPandas", by_hand_pandas, rows),
    ]
    results = []
    for name, fn, expected in runs:
        fn()  # warm-up: JVM, Python workers, page cache
        start = time.perf_counter()
        got = fn()
        seconds = time.perf_counter() - start
        if got != expected:
            raise AssertionError(f"{name}: counted {got} examples, expected {expected}")
        results.append((name, expected / seconds, expected))
    spark.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=150, help="size of the generated CSV in MB")
    parser.add_argument("--rows-a", type=int, default=200_000, help="rows for the slow chain (a)")
    parser.add_argument("--skip-spark", action="store_true", help="parse benchmarks only")
    parser.add_argument("--dir", default=None, help="where to write the CSV (default: temp dir)")
    args = parser.parse_args()

    print("versions:", versions("sparkbatch", "numpy", "pandas", "pyarrow", "pyspark"))
    workdir = tempfile.mkdtemp(prefix="sparkbatch-bench-csv-", dir=args.dir)
    try:
        path = os.path.join(workdir, "data.csv")
        rows = write_numeric_csv(path, args.mb, FEATURES, CLASSES)
        size = os.path.getsize(path) / 1e6
        print(f"CSV: {size:.1f} MB, {rows:,} rows of {FEATURES} float features + 1 integer label\n")
        parsed = parse_benchmarks(path)
        pandas = dict(parsed).get("pandas.read_csv (C engine)")
        print("| parser | MB/s | vs pandas |")
        print("|---|---:|---:|")
        for name, rate in parsed:
            print(
                f"| {name} | {rate:,.0f} | {rate / pandas:.2f}× |"
                if pandas
                else f"| {name} | {rate:,.0f} | — |"
            )
        if args.skip_spark:
            return
        results = spark_benchmarks(path, rows, min(args.rows_a, rows), workdir)
        rate = {name[:3]: r for name, r, _ in results}
        d_best = max(r for name, r, _ in results if name.startswith("(d)"))
        print(f"\nEnd to end on local[{os.cpu_count()}], CSV to DataSets of {BATCH} examples")
        print("| path | rows | rows/s | (c) speed-up |")
        print("|---|---:|---:|---:|")
        for name, r, n in results:
            print(f"| {name} | {n:,} | {r:,.0f} | {rate['(c)'] / r:.2f}× |")
        print(f"\n(c)/(a) = {rate['(c)'] / rate['(a)']:.1f}×", end="   ")
        print(f"(c)/best (d) = {rate['(c)'] / d_best:.1f}×")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
