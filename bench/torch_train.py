"""A PyTorch model trained from the same exported minibatches two ways: sparkbatch's parameter
averaging (``TorchModel``, ``exchange="socket"``) and PySpark's ``TorchDistributor`` (DDP).

The data: 8 features, 4 classes set by the direction of two linear mixes of the features (the
problem of ``examples/torch_training.py``), exported once by ``batch_and_export`` as minibatch
files of 128 examples; a held-out set of 10,000 examples. The model: a 8-256-256-4 ReLU MLP
(67,844 parameters) with cross-entropy and Adam (lr 0.005), from the same seed both ways.

* sparkbatch: ``SparkNetwork(sc, TorchModel(...), ParameterAveraging(workers=2,
  batch_size_per_worker=128, averaging_frequency=4, exchange="socket", save_updater=True))``,
  one ``fit(directory)`` per epoch, the held-out accuracy measured on the driver after each;
* TorchDistributor: ``TorchDistributor(num_processes=2, local_mode=True, use_gpu=False)``
  running a DDP (gloo) loop over ``DataLoader(MinibatchDataset(directory, shuffle=True),
  batch_size=None)`` (each rank reads its half of the files; 128 examples a step per rank),
  rank 0 measuring the held-out accuracy after each epoch.

Both use two processes of one thread each (TorchDistributor sets ``OMP_NUM_THREADS=1``; the
benchmark sets it for Spark's Python workers too). Reported for each: examples per second of
training (examples fitted over the wall time of the epochs from the first step on, evaluation
excluded; each later epoch's job or DataLoader start included), the wall time
from the call to the first epoch whose held-out accuracy reaches ``--target`` (evaluation
included), and the start-up time (from the call until the first minibatch step starts: Spark's
job and Python workers, or torchrun's processes and the process group, and importing torch).

Run (on a quiet machine)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/torch_train.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"  # before torch: the driver and Spark's Python workers

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import local_spark, versions  # noqa: E402

sys.path.pop(0)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from sparkbatch.data import DataSet  # noqa: E402
from sparkbatch.spark import batch_and_export  # noqa: E402
from sparkbatch.train import ParameterAveraging, SparkNetwork, TorchModel  # noqa: E402

FEATURES, CLASSES, HIDDEN, BATCH, LR = 8, 4, 256, 128, 0.005


def generate(rows: int, seed: int) -> DataSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    angle = np.arctan2(x[:, 1] + 0.3 * x[:, 2], x[:, 0] - 0.3 * x[:, 3])
    label = ((angle + np.pi) / (2 * np.pi) * CLASSES).astype(int) % CLASSES
    return DataSet(x, np.eye(CLASSES, dtype=np.float32)[label])


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    module.eval()
    with torch.no_grad():
        predicted = module(torch.from_numpy(x)).argmax(1).numpy()
    module.train()
    return float(np.mean(predicted == y.argmax(1)))


def run_sparkbatch(sc: Any, directory: str, test: DataSet, epochs: int, target: float) -> dict:
    call = time.time()
    model = TorchModel(mlp, nn.CrossEntropyLoss(), lambda ps: torch.optim.Adam(ps, lr=LR), seed=0)
    settings = ParameterAveraging(
        batch_size_per_worker=BATCH,
        averaging_frequency=4,
        workers=2,
        exchange="socket",
        save_updater=True,
        collect_stats=True,
    )
    spark_net = SparkNetwork(sc, model, settings)
    train_s, reached, curve, first_call = 0.0, None, [], None
    for _ in range(epochs):
        start = time.time()
        first_call = start if first_call is None else first_call
        spark_net.fit(directory, epochs=1)
        train_s += time.time() - start
        acc = accuracy(model.module, test.features, test.labels)
        curve.append(round(acc, 4))
        if reached is None and acc >= target:
            reached = time.time() - call
    first_fit = min(p.start for p in spark_net.stats.phases if p.phase == "fit")
    examples = sum(r.examples for r in spark_net.stats.rounds)
    startup = first_fit - call
    return {  # the start-up before the first step is not training time
        "examples_per_s": examples / (train_s - (first_fit - first_call)),
        "time_to_target_s": reached,
        "startup_s": startup,
        "accuracy_per_epoch": curve,
    }


def ddp_train(directory: str, x: np.ndarray, y: np.ndarray, epochs: int, target: float) -> dict:
    """Runs in each of TorchDistributor's processes (rank and world from torchrun's env)."""
    import time

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from sparkbatch.data.torch import MinibatchDataset

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # as TorchModel builds the factory: the same initial weights
    module = mlp()
    model = DistributedDataParallel(module)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    dataset = MinibatchDataset(directory, shuffle=True, seed=0)
    loss_fn = nn.CrossEntropyLoss()
    train_s, examples, reached, curve, first_step, first_start = 0.0, 0, None, [], None, None
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        start = time.time()
        first_start = start if first_start is None else first_start
        for features, labels in DataLoader(dataset, batch_size=None):
            if first_step is None:
                first_step = time.time()
            optimizer.zero_grad()
            loss_fn(model(features), labels).backward()
            optimizer.step()
            examples += len(labels)
        dist.barrier()
        train_s += time.time() - start
        acc = accuracy(module, x, y) if rank == 0 else 0.0
        curve.append(round(acc, 4))
        if rank == 0 and reached is None and acc >= target:
            reached = time.time()
    totals = torch.tensor([float(examples)])
    dist.all_reduce(totals)
    out = [
        {
            "examples": float(totals[0]),
            "train_s": train_s - (first_step - first_start),  # from the first step
            "reached": reached,
            "curve": curve,
            "first_step": first_step,
        }
    ]
    dist.broadcast_object_list(out, src=0)  # whichever rank's result TorchDistributor returns
    dist.destroy_process_group()
    return out[0]


def run_distributor(directory: str, test: DataSet, epochs: int, target: float) -> dict:
    from pyspark.ml.torch.distributor import TorchDistributor

    call = time.time()
    distributor = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False)
    out = distributor.run(ddp_train, directory, test.features, test.labels, epochs, target)
    return {
        "examples_per_s": out["examples"] / out["train_s"],
        "time_to_target_s": None if out["reached"] is None else out["reached"] - call,
        "startup_s": out["first_step"] - call,
        "accuracy_per_epoch": out["curve"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200_000, help="training examples")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.97, help="held-out accuracy to reach")
    args = parser.parse_args()
    print(versions("sparkbatch", "torch", "pyspark", "numpy"))
    print(f"os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start")
    spark = local_spark("torch-train-bench")
    sc = spark.sparkContext
    test = generate(10_000, 1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = os.path.join(tmp, "train")
            data = generate(args.examples, 0)
            batch_and_export(sc.parallelize(data.split(5000), 4), directory, BATCH)
            results = {
                "sparkbatch (socket)": run_sparkbatch(
                    sc, directory, test, args.epochs, args.target
                ),
                "TorchDistributor (DDP)": run_distributor(
                    directory, test, args.epochs, args.target
                ),
            }
    finally:
        spark.stop()
    print(
        f"{args.examples} examples, {args.epochs} epochs, batch {BATCH} per process, "
        f"2 processes, target accuracy {args.target}"
    )
    for name, r in results.items():
        reached = r["time_to_target_s"]
        reached_text = "not reached" if reached is None else f"{reached:.1f} s"
        print(
            f"{name:24s} {r['examples_per_s']:>10,.0f} examples/s  to {args.target}: "
            f"{reached_text:>11s}  start-up {r['startup_s']:.1f} s  "
            f"accuracy per epoch {r['accuracy_per_epoch']}"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
