"""The fixed cost of one fit on local Spark: a fit whose fitting takes almost no time.

A 4-8-2 network fits one epoch of ``workers`` minibatch files of 8 examples, one round, with
each exchange, ``--fits`` times in one SparkContext (after a warm-up fit); the median wall time
of a fit is then what a fit costs beyond its fitting: planning, the Spark job(s), starting the
workers' tasks (Python workers and their models kept warm across fits), the exchange's set-up
and tear-down.

Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/fit_cost.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import local_spark  # noqa: E402

sys.path.pop(0)

from sparkbatch.data import DataSet  # noqa: E402
from sparkbatch.nn import SGD, Dense, Network, Output  # noqa: E402
from sparkbatch.spark import batch_and_export  # noqa: E402
from sparkbatch.train import ParameterAveraging, SparkNetwork  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=15)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--exchange", default="spark,socket")
    args = parser.parse_args()

    spark = local_spark("sparkbatch fit cost")
    sc = spark.sparkContext
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * args.workers, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    with tempfile.TemporaryDirectory() as tmp:
        files = os.path.join(tmp, "files")
        batch_and_export(sc.parallelize(DataSet(x, y).split(8), args.workers), files, 8)
        print(
            f"{sc.master}, {args.workers} workers, {args.workers} files of 8 examples, one round "
            f"per fit; median of {args.fits} fits after a warm-up"
        )
        print("| exchange | median s per fit | min | max |")
        print("|---|---:|---:|---:|")
        for exchange in args.exchange.split(","):
            master = ParameterAveraging(
                batch_size_per_worker=8,
                averaging_frequency=1,
                workers=args.workers,
                exchange=exchange,
            )
            net = SparkNetwork(sc, Network([Dense(4, 8), Output(8, 2)], SGD(0.1)), master)
            net.fit(files)  # warm-up: Python workers started, model built
            times = []
            for _ in range(args.fits):
                start = time.perf_counter()
                net.fit(files)
                times.append(time.perf_counter() - start)
            print(
                f"| {exchange} | {statistics.median(times):.3f} | {min(times):.3f} | "
                f"{max(times):.3f} |"
            )
    spark.stop()


if __name__ == "__main__":
    main()
