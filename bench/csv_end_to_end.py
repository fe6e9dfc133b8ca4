"""CSV to minibatches on local Spark against the native parse of the same bytes, and where the
rest of the time goes.

Usage: python bench/csv_end_to_end.py [--mb 50,150] [--dir DIR] [--repeat 5]

For each way the executors may talk to their Python workers (TCP, Spark's default; Unix domain
sockets, ``sparkbatch.spark.recommended_conf()``), one local[N] session (N = cores):

- the fixed cost of a job of 1 to 16 empty Python tasks (NOTE [python task latency] in
  ``sparkbatch.spark.conf``);
- for each CSV size: the native parse of the whole file on all threads in the driver (read into
  memory in one part per core, then ``parse_csv``), and ``csv_to_datasets(path)`` counted by a
  sum of example counts (minibatches of 32 in the executors), with jobs over the same byte
  ranges that stop earlier: read only, read and parse, and the whole conversion.

Times are the best (and median) of ``--repeat`` runs after a warm-up; MB/s are of the file's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

from _common import local_spark, versions, write_numeric_csv

FEATURES, CLASSES, BATCH = 20, 10, 32
TASKS = (1, 2, 4, 8, 16)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best and median seconds of ``repeat`` runs of ``fn`` after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def _count(items: Iterable[object]) -> Iterator[int]:
    yield sum(1 for _ in items)


def _read(ranges: Iterable[object]) -> Iterator[int]:
    from sparkbatch.storage import read_line_range

    yield sum(len(read_line_range(r)[0]) for r in ranges)  # type: ignore[arg-type]


def _read_and_parse(ranges: Iterable[object]) -> Iterator[int]:
    from sparkbatch.records.csv_parser import CsvOptions, parse_csv_buffer
    from sparkbatch.storage import read_line_range

    options = CsvOptions(",", '"', 0, "raise")
    rows = 0
    for r in ranges:
        buffer, _ = read_line_range(r)  # type: ignore[arg-type]
        parsed = parse_csv_buffer(
            buffer, options, columns=FEATURES + 1, class_columns={FEATURES: CLASSES},
            quoted_newlines=False, source=r.url, skip_lines=0, threads=1,  # type: ignore[attr-defined]
        )
        rows += parsed.values.shape[0]
    yield rows


def _examples(ds) -> int:  # type: ignore[no-untyped-def]
    return ds.num_examples


def native_parse(path: str) -> int:
    """The whole file read into memory as sparkbatch's jobs read a local range
    (``read_line_range``: into a numpy array, one part per core at once) and parsed on every
    thread, as one machine would."""
    from sparkbatch import _native
    from sparkbatch.storage import plan_line_ranges, read_line_range

    (whole,) = plan_line_ranges([path], lambda total: max(total, 1))
    data, _ = read_line_range(whole, threads=os.cpu_count() or 1)
    return _native.parse_csv(data, threads=0, quoted_newlines=False)["values"].shape[0]


def run_transport(name: str, conf: dict[str, str], files: dict[int, tuple[str, int]],
                  repeat: int) -> list[tuple[str, ...]]:
    spark = local_spark(f"sparkbatch-bench-csv-e2e-{name}", driver_memory="6g", conf=conf)
    sc = spark.sparkContext
    rows: list[tuple[str, ...]] = []
    for k in TASKS:
        best, median = timed(lambda k=k: sc.parallelize(range(k), k).mapPartitions(_count).sum(),
                             repeat)
        rows.append((name, f"empty job, {k} Python task(s)", "", f"{best * 1e3:.0f}",
                     f"{median * 1e3:.0f}", "", ""))
    for mb, (path, expected) in files.items():
        rows += measure_file(sc, name, mb, path, expected, repeat)
    spark.stop()
    return rows


def measure_file(sc, name: str, mb: int, path: str, expected: int,  # type: ignore[no-untyped-def]
                 repeat: int) -> list[tuple[str, ...]]:
    """The native parse of ``path`` and the Spark jobs over its byte ranges, as table rows."""
    from sparkbatch.spark import csv_to_datasets
    from sparkbatch.spark.csv import default_split_size
    from sparkbatch.storage import plan_line_ranges

    size, cores = os.path.getsize(path), sc.defaultParallelism
    ranges = plan_line_ranges([path], lambda total: default_split_size(total, cores))
    n = len(ranges)

    def native() -> int:
        return native_parse(path)

    def read() -> int:
        return sc.parallelize(ranges, n).mapPartitions(_read).sum()

    def read_parse() -> int:
        return sc.parallelize(ranges, n).mapPartitions(_read_and_parse).sum()

    def whole() -> int:
        rdd = csv_to_datasets(path, label_index=FEATURES, num_classes=CLASSES, batch_size=BATCH,
                              sc=sc)
        return rdd.map(_examples).sum()

    if native() != expected or whole() != expected or read_parse() != expected:
        raise AssertionError(f"{path}: a run did not count {expected} rows")
    native_best, _ = timed(native, repeat)
    rows = []
    for label, fn in (
        ("native parse, all threads, in the driver", native),
        (f"{n} tasks: read the byte ranges", read),
        (f"{n} tasks: read and parse", read_parse),
        (f"{n} tasks: csv_to_datasets, minibatches of {BATCH}", whole),
    ):
        best, median = (native_best, native_best) if fn is native else timed(fn, repeat)
        rows.append((name, label, f"{mb}", f"{best * 1e3:.0f}", f"{median * 1e3:.0f}",
                     f"{size / best / 1e6:.0f}", f"{native_best / best:.0%}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", default="50,150", help="comma-separated CSV sizes in MB")
    parser.add_argument("--dir", default=None, help="where to write the CSVs (default: temp dir)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from sparkbatch.spark import recommended_conf
    from sparkbatch.spark.conf import UNIX_SOCKETS

    print("versions:", versions("sparkbatch", "pyspark", "numpy"), f"| {os.cpu_count()} cores")
    workdir = args.dir or tempfile.mkdtemp(prefix="sparkbatch-bench-e2e-")
    try:
        files = {}
        for mb in (int(m) for m in args.mb.split(",")):
            path = os.path.join(workdir, f"numeric-{mb}.csv")
            files[mb] = (path, write_numeric_csv(path, mb, FEATURES, CLASSES))
        transports = {
            "tcp": {UNIX_SOCKETS: "false"},
            "unix": recommended_conf(),
        }
        rows = []
        for name, conf in transports.items():
            rows += run_transport(name, conf, files, args.repeat)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("| worker sockets | what | MB | best ms | median ms | MB/s | of native |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
