"""Map files: records/s written and read, sparkbatch's MapFileWriter / restore_map_file against
Spark's own SequenceFile path and its pickle files, on the same records.

``--records`` CSV-like records (``--width`` floats, the last a class index) are held in a list
on the driver, then

* written: by ``storage.MapFileWriter(out, split_size).write_batch(records)`` on the driver
  (one process; with DataVec's default index interval 1, and with Hadoop's MapFile default
  128, whose index has 1/128 of the keys); by Spark, from ``sc.parallelize(records)``, as
  ``(index, encoded record)`` pairs with ``saveAsSequenceFile`` (LongWritable keys,
  BytesWritable values: the same files); and with ``saveAsPickleFile``;
* read back as records in the Python workers: ``spark.restore_map_file(sc, out).count()``;
  ``sc.sequenceFile(out, LongWritable, BytesWritable).map(decode).count()`` (the JVM reads,
  pickles the pairs to Python, Python decodes); ``sc.pickleFile(out).count()``; and on one
  machine without Spark, ``SequenceFileReader`` over the parts plus ``decode_record``.

Best of ``--repeat`` runs each, on a local Spark with every core.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/mapfile.py \
        [--records 200000] [--width 11] [--parts 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import local_spark, versions  # noqa: E402

sys.path.pop(0)

from sparkbatch.spark import restore_map_file  # noqa: E402
from sparkbatch.storage import (  # noqa: E402
    MapFileWriter,
    SequenceFileReader,
    decode_record,
    encode_record,
)

LONG = "org.apache.hadoop.io.LongWritable"
BYTES = "org.apache.hadoop.io.BytesWritable"


def _keyed_encoded(pair: tuple[list[float], int]) -> tuple[int, bytearray]:
    record, index = pair
    return index, bytearray(encode_record(record))


def _decode_value(pair: tuple[int, bytes]) -> list[float]:
    return decode_record(pair[1])


def timed(fn: Callable[[str], object], root: str, repeat: int) -> tuple[float, object]:
    """The best time of ``repeat`` runs of ``fn(fresh_dir)``, and its last result."""
    best, result = float("inf"), None
    for i in range(repeat):
        out = os.path.join(root, f"run{i}")
        start = time.perf_counter()
        result = fn(out)
        best = min(best, time.perf_counter() - start)
        if i < repeat - 1:
            shutil.rmtree(out, ignore_errors=True)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=11, help="values per record")
    parser.add_argument("--parts", type=int, default=8, help="map file parts / RDD partitions")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, parts = args.records, args.parts
    print(versions("sparkbatch", "pyspark", "numpy"), f"| Python {platform.python_version()}")
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, args.width)).round(3)
    values[:, -1] = rng.integers(0, 10, n)
    records = values.tolist()
    spark = local_spark("sparkbatch-bench-mapfile")
    sc = spark.sparkContext
    print(f"{n} records of {args.width} floats, {parts} parts, local[{sc.defaultParallelism}]")
    split = -(-n // parts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:

        def ours_write(out: str, index_interval: int = 1) -> str:
            with MapFileWriter(out, split_size=split, index_interval=index_interval) as writer:
                writer.write_batch(records)
            return out

        def ours_write_128(out: str) -> str:
            return ours_write(out, 128)

        def spark_write(out: str) -> str:
            rdd = sc.parallelize(records, parts).zipWithIndex().map(_keyed_encoded)
            rdd.saveAsSequenceFile(out)
            return out

        def pickle_write(out: str) -> str:
            sc.parallelize(records, parts).saveAsPickleFile(out)
            return out

        w_ours, ours_dir = timed(ours_write, os.path.join(tmp, "ours"), args.repeat)
        w_ours128, _ = timed(ours_write_128, os.path.join(tmp, "ours128"), args.repeat)
        w_spark, spark_dir = timed(spark_write, os.path.join(tmp, "spark"), args.repeat)
        w_pickle, pickle_dir = timed(pickle_write, os.path.join(tmp, "pickle"), args.repeat)

        def once(fn: Callable[[], int]) -> float:
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                count = fn()
                best = min(best, time.perf_counter() - start)
                assert count == n, count
            return best

        def local_read() -> int:
            count = 0
            for part in sorted(p for p in os.listdir(ours_dir) if p.startswith("part-")):
                with SequenceFileReader(os.path.join(ours_dir, part, "data")) as reader:
                    count += sum(1 for _ in map(decode_record, (v for _, v in reader)))
            return count

        r_ours = once(lambda: restore_map_file(sc, ours_dir).count())
        r_spark = once(
            lambda: sc.sequenceFile(str(spark_dir), LONG, BYTES).map(_decode_value).count()
        )
        r_pickle = once(lambda: sc.pickleFile(str(pickle_dir)).count())
        r_local = once(local_read)
        # the same records either way
        assert restore_map_file(sc, ours_dir).take(3) == records[:3]
        first = sc.sequenceFile(str(ours_dir) + "/part-r-00000/data", LONG, BYTES).first()
        assert decode_record(first[1]) == records[0]

        size = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ours_dir) for f in fs
        )
        rows = [
            ("write: MapFileWriter (driver, 1 process)", w_ours, w_spark),
            ("write: the same, index_interval=128", w_ours128, w_spark),
            ("write: saveAsSequenceFile", w_spark, w_spark),
            ("write: saveAsPickleFile", w_pickle, w_spark),
            ("read: restore_map_file", r_ours, r_spark),
            ("read: sc.sequenceFile + decode", r_spark, r_spark),
            ("read: sc.pickleFile", r_pickle, r_spark),
            ("read: SequenceFileReader (1 process, no Spark)", r_local, r_spark),
        ]
        print(f"our map files: {size / n:.1f} bytes per record")
    print(f"{'':48} {'seconds':>8} {'records/s':>11} {'vs Spark SequenceFile':>22}")
    for name, seconds, reference in rows:
        print(f"{name:48} {seconds:8.3f} {n / seconds:11,.0f} {reference / seconds:21.2f}x")
    spark.stop()


if __name__ == "__main__":
    main()
