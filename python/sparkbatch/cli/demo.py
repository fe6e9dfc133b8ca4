"""``sparkbatch demo``: the whole pipeline of the seed page on an embedded local Spark.

CSV (generated, or the user's) → DataSets parsed natively per partition → minibatch files →
parameter-averaging training from the files → evaluation on a held-out split → an HTML report,
printing the accuracy and where the time went. On a terminal a progress bar (stderr) follows
the steps instead of a line per step.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparkbatch._progress import Progress

GENERATED_FEATURES = 16
GENERATED_CLASSES = 4


@dataclass
class _Clock:
    """Wall time per named step, in the order the steps ran; on a terminal a progress bar of
    ``total`` steps names the one running, elsewhere a line per step is printed."""

    total: int
    steps: dict[str, float] = field(default_factory=dict)
    bar: Progress = field(init=False)

    def __post_init__(self) -> None:
        self.bar = Progress(total=self.total, desc="sparkbatch demo", unit="step")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.bar.shown:
            self.bar.describe(name)
        else:
            print(f"  {name} ...", flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - start
            self.bar.update()

    def say(self, text: str) -> None:
        """Print a line of the run's story (above the bar, where one is shown)."""
        self.bar.write(text)

    def table(self) -> str:
        total = sum(self.steps.values()) or 1.0
        width = max(len(name) for name in self.steps)
        lines = [
            f"  {name:<{width}}  {seconds:8.2f} s  {100 * seconds / total:5.1f} %"
            for name, seconds in self.steps.items()
        ]
        lines.append(f"  {'total':<{width}}  {total:8.2f} s")
        return "\n".join(lines)


def generate_csv(path: str, rows: int, seed: int = 0, *, progress: bool | None = None) -> None:
    """Write a labelled CSV (header, 16 features, class index in the last column) to ``path``.

    Each of the 4 classes is a mixture of 3 Gaussian clusters in 16 dimensions, so the classes
    are not linearly separable but a small network learns them; values have 5 decimals. A
    progress bar of the rows written shows on stderr where it is a terminal (``progress``:
    True or False forces it on or off).
    """
    rng = np.random.default_rng(seed)
    clusters = 3
    centers = rng.normal(0.0, 1.0, (GENERATED_CLASSES * clusters, GENERATED_FEATURES))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = ",".join([f"f{i}" for i in range(GENERATED_FEATURES)] + ["label"])
    fmt = ",".join(["%.5f"] * GENERATED_FEATURES + ["%d"])
    bar = Progress(total=rows, desc="generate CSV", unit=" rows", enabled=progress, leave=False)
    with open(path, "w") as f, bar:
        f.write(header + "\n")
        for start in range(0, rows, 50_000):  # whole blocks at a time, not a loop per value
            n = min(50_000, rows - start)
            cluster = rng.integers(0, len(centers), n)
            x = centers[cluster] + rng.normal(0.0, 0.6, (n, GENERATED_FEATURES))
            np.savetxt(f, np.column_stack([x, cluster // clusters]), fmt=fmt)
            bar.update(n)


def run(
    *,
    rows: int = 50_000,
    csv: str | None = None,
    label_index: int | None = None,
    num_classes: int | None = None,
    skip_lines: int | None = None,
    out: str = "sparkbatch-demo",
    workers: int | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    averaging_frequency: int = 5,
    exchange: str = "socket",
) -> int:
    """Run the demo; returns the exit status."""
    if csv is not None and (label_index is None or num_classes is None):
        print("sparkbatch demo: --csv needs --label-index and --num-classes", file=sys.stderr)
        return 2
    workers = workers or os.cpu_count() or 2
    out = os.path.abspath(out)
    print(f"sparkbatch demo: {workers} local workers, output in {out}", flush=True)
    clock = _Clock(total=6 if csv is None else 5)
    try:
        with clock.step("start Spark"):
            spark = _local_spark(workers)
    except BaseException:
        clock.bar.close()
        raise
    sc = spark.sparkContext
    try:
        if csv is None:
            csv = os.path.join(out, "data", "demo.csv")
            with clock.step(f"generate a CSV of {rows:,} rows"):
                generate_csv(csv, rows)
            label_index, num_classes, skip_lines = -1, GENERATED_CLASSES, 1
        return _pipeline(
            sc,
            clock,
            csv,
            int(label_index),
            int(num_classes),
            skip_lines or 0,
            out,
            workers,
            epochs,
            batch_size,
            averaging_frequency,
            exchange,
        )
    finally:
        clock.bar.close()
        spark.stop()


def _pipeline(
    sc: Any,
    clock: _Clock,
    csv: str,
    label_index: int,
    num_classes: int,
    skip_lines: int,
    out: str,
    workers: int,
    epochs: int,
    batch_size: int,
    averaging_frequency: int,
    exchange: str,
) -> int:
    from sparkbatch.nn import Adam, Dense, Network, Output
    from sparkbatch.spark import batch_and_export, csv_to_datasets
    from sparkbatch.train import ParameterAveraging, SparkNetwork

    train_dir = os.path.join(out, "minibatches", "train")
    test_dir = os.path.join(out, "minibatches", "test")
    with clock.step("CSV -> DataSets -> minibatch files"):
        datasets = csv_to_datasets(
            csv,
            label_index=label_index,
            num_classes=num_classes,
            skip_lines=skip_lines,
            batch_size=batch_size,
            sc=sc,
        )
        train, test = datasets.randomSplit([0.8, 0.2], seed=7)
        # overwrite removes only the files of an earlier demo run (NOTE [export commit])
        train_files = batch_and_export(train, train_dir, batch_size, overwrite=True)
        test_files = batch_and_export(test, test_dir, batch_size, overwrite=True)
    if not train_files or not test_files:
        print("sparkbatch demo: too few rows for a training and a test split", file=sys.stderr)
        return 1
    from sparkbatch.data import load

    features = load(train_files[0]).features.shape[1]
    clock.say(
        f"    {len(train_files)} training and {len(test_files)} test files of {batch_size} "
        f"examples, {features} features, {num_classes} classes"
    )

    net = Network(
        [Dense(features, 64, "relu"), Dense(64, 32, "relu"), Output(32, num_classes)],
        Adam(0.005),
        seed=0,
    )
    master = ParameterAveraging(
        batch_size_per_worker=batch_size,
        averaging_frequency=averaging_frequency,
        workers=workers,
        collect_stats=True,
        exchange=exchange,
    )
    spark_net = SparkNetwork(sc, net, master)
    with clock.step(f"train {epochs} epochs by parameter averaging ({exchange} exchange)"):
        spark_net.fit(train_dir, epochs=epochs)
    with clock.step("evaluate on the held-out split"):
        evaluation = spark_net.evaluate(test_dir)
    report = os.path.join(out, "report.html")
    with clock.step("write the HTML report"):
        spark_net.stats.to_html(report, title="sparkbatch demo")
    net.save(os.path.join(out, "network.safetensors"))
    clock.bar.close()

    print()
    print(evaluation.stats())
    print()
    print(spark_net.stats.summary())
    print()
    print("Where the time went:")
    print(clock.table())
    print()
    print(f"Test accuracy {evaluation.accuracy():.4f} on {evaluation.num_examples:,} examples")
    print(f"Report: {report}")
    return 0


def _local_spark(workers: int) -> Any:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from sparkbatch.spark import recommended_conf

    spark = (
        SparkSession.builder.master(f"local[{workers}]")
        .appName("sparkbatch-demo")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "2g")
        .config("spark.python.worker.reuse", "true")
        .config(map=recommended_conf())
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark
