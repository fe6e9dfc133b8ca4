"""Parameter averaging on local Spark: examples/s and the time spent outside fitting.

A 784-1024-200-10 ReLU network (1,010,850 parameters) with softmax cross-entropy and Adam is
trained for one epoch from minibatch files on local Spark with one worker per core, at averaging
frequencies 1, 5 and 20, with both exchanges (``exchange="spark"``: a Spark job per round,
broadcast and ``treeAggregate``; ``exchange="socket"``: one barrier job, averaging through the
driver), next to single-machine fitting of the same files in one process (numpy's BLAS on every
core). "Outside fitting" is all of the wall time but the slowest worker's fitting of each round:
Spark's job scheduling and task start, moving, summing and averaging the parameters.

Run (unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE in this command only, see the env notes)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/spark_train.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/spark_train.py --files 160
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import blas_info, local_spark  # noqa: E402

sys.path.pop(0)

from sparkbatch.data import DataSet, FileDataSetIterator  # noqa: E402
from sparkbatch.data.manifest import minibatch_files  # noqa: E402
from sparkbatch.nn import Adam, Dense, Network, Output  # noqa: E402
from sparkbatch.train import ParameterAveraging, SparkNetwork  # noqa: E402

SIZES = (784, 1024, 200, 10)


def make_network() -> Network:
    return Network(
        [Dense(784, 1024, "relu"), Dense(1024, 200, "relu"), Output(200, 10)], Adam(1e-3), seed=0
    )


def write_files(directory: str, examples: int, batch: int) -> list[str]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(examples, SIZES[0])).astype(np.float32)
    y = np.eye(SIZES[-1], dtype=np.float32)[rng.integers(0, SIZES[-1], examples)]
    for i, part in enumerate(DataSet(x, y).split(batch)):
        part.save(os.path.join(directory, f"part-{i:05d}.safetensors"))
    return minibatch_files(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="examples per worker minibatch")
    parser.add_argument(
        "--files",
        type=int,
        default=640,
        help="minibatch files (one epoch; a fit also pays about 0.2 s once, for its Spark job)",
    )
    parser.add_argument("--frequencies", default="1,5,20")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--exchange", default="spark,socket", help="ParameterAveraging.exchange")
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="sparkbatch-bench-")
    files = write_files(directory, args.files * args.batch, args.batch)
    examples = args.files * args.batch
    print(
        f"{make_network()!r}, {len(files)} files of {args.batch} examples, "
        f"{args.workers} workers on local[{args.workers}]; {blas_info()}"
    )

    local = make_network()
    local.fit(FileDataSetIterator(files[:4]))  # warm up
    start = time.perf_counter()
    make_network().fit(FileDataSetIterator(files))
    single = time.perf_counter() - start

    spark = local_spark("sparkbatch-bench-train")
    sc = spark.sparkContext
    rows = []
    try:
        warm = ParameterAveraging(batch_size_per_worker=args.batch, workers=args.workers)
        SparkNetwork(sc, make_network(), warm).fit_paths(files[: 2 * args.workers])
        for exchange in args.exchange.split(","):
            for frequency in map(int, args.frequencies.split(",")):
                master = ParameterAveraging(
                    batch_size_per_worker=args.batch,
                    averaging_frequency=frequency,
                    workers=args.workers,
                    collect_stats=True,
                    exchange=exchange,
                )
                spark_net = SparkNetwork(sc, make_network(), master)
                start = time.perf_counter()
                spark_net.fit(directory)
                wall = time.perf_counter() - start
                stats = spark_net.stats
                fit = sum(r.fit_s for r in stats.rounds)
                rounds = len(stats.rounds)
                rows.append((exchange, frequency, rounds, wall, examples / wall, 1 - fit / wall))
    finally:
        spark.stop()

    print()
    print("| training | rounds | wall s | examples/s | vs single machine | outside fitting |")
    print("|---|---:|---:|---:|---:|---:|")
    rate = examples / single
    print(f"| single machine, one process | — | {single:.2f} | {rate:,.0f} | 1.00× | — |")
    for exchange, frequency, rounds, wall, rate, overhead in rows:
        print(
            f"| parameter averaging, exchange={exchange}, frequency {frequency} | {rounds} | "
            f"{wall:.2f} | "
            f"{rate:,.0f} | {single / wall:.2f}× | {100 * overhead:.1f} % |"
        )


if __name__ == "__main__":
    main()
