"""fit(rdd) on local Spark: the "direct" approach (train from the RDD's partitions) against
"export" (write minibatch files first, then train from them) with both exchanges.

An RDD of ``--objects`` DataSets of 32 examples (784 features, 10 classes) in 4 partitions is
fitted for two epochs by a small network (784-64-10, Adam), two workers, a minibatch of 32 per
worker and averaging every ``--frequency`` minibatches, so that the rounds' overheads dominate
rather than the arithmetic. Runs of one approach must end with the same parameters (the
exchanges differ in transport only); the approaches deal the minibatches differently.

    .venv/bin/python bench/spark_direct.py [--objects 400] [--frequency 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import local_spark  # noqa: E402

sys.path.pop(0)

from sparkbatch.data import DataSet  # noqa: E402
from sparkbatch.nn import Adam, Dense, Network, Output  # noqa: E402
from sparkbatch.train import ParameterAveraging, SparkNetwork  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=400, help="DataSets of 32 examples")
    parser.add_argument("--frequency", type=int, default=5, help="averaging frequency")
    args = parser.parse_args()
    spark = local_spark("sparkbatch-bench-direct")
    sc = spark.sparkContext
    rng = np.random.default_rng(0)
    objects = [
        DataSet(
            rng.normal(size=(32, 784)).astype(np.float32),
            np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)],
        )
        for _ in range(args.objects)
    ]
    rdd = sc.parallelize(objects, 4)
    runs = {
        "direct (exchange spark)": dict(approach="direct"),
        "direct (exchange socket)": dict(approach="direct", exchange="socket"),
        "export (exchange spark)": dict(approach="export"),
        "export (exchange socket)": dict(approach="export", exchange="socket"),
    }
    print(
        f"{args.objects} DataSets of 32 examples, 2 workers, frequency {args.frequency}, 2 epochs"
    )
    print("| fit(rdd) | seconds | rounds | ms per round |")
    print("|---|---:|---:|---:|")
    params = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, options in runs.items():
            net = Network([Dense(784, 64, "relu"), Output(64, 10)], Adam(1e-3), seed=0)
            master = ParameterAveraging(
                batch_size_per_worker=32,
                averaging_frequency=args.frequency,
                workers=2,
                shuffle=False,
                export_dir=scratch,
                **options,
            )
            spark_net = SparkNetwork(sc, net, master)
            start = time.perf_counter()
            spark_net.fit(rdd, epochs=2)
            seconds = time.perf_counter() - start
            rounds = len(spark_net.stats.rounds)
            params[name] = net.params().copy()
            print(f"| {name} | {seconds:.2f} | {rounds} | {1e3 * seconds / rounds:.0f} |")
    for approach in ("direct", "export"):
        spark_run, socket_run = (params[f"{approach} (exchange {x})"] for x in ("spark", "socket"))
        gap = np.max(np.abs(spark_run - socket_run))
        print(f"{approach}: largest parameter difference between the exchanges {gap:.1e}")
    spark.stop()


if __name__ == "__main__":
    main()
