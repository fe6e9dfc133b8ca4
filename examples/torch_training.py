"""How to train a PyTorch model on Spark from exported minibatches, and read them back in PyTorch.

The data is prepared once on Spark and exported as minibatch files; a ``torch.nn.Module`` is
trained from them on the executors by parameter averaging, exactly as a built-in network is; and
the same files are read again from a plain PyTorch loop.

1. Exporting: :func:`~sparkbatch.spark.batch_and_export` writes the training and test sets as
   minibatch files of ``batch_size`` examples (each directory with its ``_manifest.json``).
2. Training on Spark: :class:`~sparkbatch.train.TorchModel` wraps a module factory, the loss and
   an optimiser factory; ``SparkNetwork(sc, TorchModel(...), ParameterAveraging(...))`` fits it
   from the directory (``exchange="socket"``: one Spark job for the whole fit, Adam's state
   averaged with the weights), and ``evaluate`` measures it on the test files on the executors.
3. Reading back in PyTorch: ``DataLoader(MinibatchDataset(directory), batch_size=None)`` gives
   one minibatch file per item as ``(features, labels)`` tensors (views of the files, no copy);
   the trained module (``model.module``, an ordinary ``torch.nn.Module``) is fine-tuned for an
   epoch at a lower learning rate with a plain PyTorch loop, and evaluated the same way. Under
   ``torchrun``/DDP the same dataset shards the files over the ranks and loader workers.

Run: ``python examples/torch_training.py`` (needs ``pip install 'sparkbatch[torch]'``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sparkbatch.data import DataSet
from sparkbatch.data.torch import MinibatchDataset
from sparkbatch.spark import batch_and_export, recommended_conf
from sparkbatch.train import ParameterAveraging, SparkNetwork, TorchModel

FEATURES, CLASSES = 8, 4


def generate(rows: int, seed: int) -> DataSet:
    """``rows`` examples of 8 features; the class is where the first two features point."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    angle = np.arctan2(x[:, 1] + 0.3 * x[:, 2], x[:, 0] - 0.3 * x[:, 3])
    label = ((angle + np.pi) / (2 * np.pi) * CLASSES).astype(int) % CLASSES
    return DataSet(x, np.eye(CLASSES, dtype=np.float32)[label])


def mlp() -> nn.Module:
    """The module factory: built on the driver and on every executor from the same seed."""
    return nn.Sequential(
        nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES)
    )


def torch_accuracy(module: nn.Module, directory: str) -> float:
    """Accuracy of ``module`` over the minibatch files of ``directory``, read by a DataLoader."""
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for features, labels in DataLoader(MinibatchDataset(directory), batch_size=None):
            correct += int((module(features).argmax(1) == labels.argmax(1)).sum())
            total += len(labels)
    return correct / total


def main(spark: object | None = None, small: bool = False) -> dict[str, Any]:
    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .appName("torch-training")
            .config("spark.ui.enabled", "false")
            .config(map=recommended_conf())  # docs/index.md#install
            .getOrCreate()
        )
    sc = spark.sparkContext  # type: ignore[attr-defined]
    rows, epochs = (1200, 3) if small else (100_000, 5)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # On a cluster: "hdfs:///...", "s3://bucket/...", any storage every executor reaches.
            train_dir, test_dir = str(Path(tmp) / "train"), str(Path(tmp) / "test")
            batch_and_export(sc.parallelize(generate(rows, 0).split(500), 2), train_dir, 50)
            batch_and_export(sc.parallelize(generate(rows // 4, 1).split(500), 2), test_dir, 50)

            model = TorchModel(
                mlp,
                nn.CrossEntropyLoss(),  # takes the one-hot labels as class probabilities
                lambda params: torch.optim.Adam(params, lr=0.01),
                num_outputs=CLASSES,
            )
            settings = ParameterAveraging(
                batch_size_per_worker=50, averaging_frequency=4, workers=2, exchange="socket"
            )
            spark_net = SparkNetwork(sc, model, settings)
            spark_net.fit(train_dir, epochs=epochs)
            spark_accuracy = spark_net.evaluate(test_dir).accuracy()
            print(f"trained on Spark: {model.iteration} steps, test accuracy {spark_accuracy:.3f}")

            # The same files in plain PyTorch: fine-tune one epoch, then evaluate.
            module = model.module
            optimizer = torch.optim.Adam(module.parameters(), lr=0.002)
            dataset = MinibatchDataset(train_dir, shuffle=True, seed=1)
            dataset.set_epoch(0)
            module.train()
            for features, labels in DataLoader(dataset, batch_size=None):
                optimizer.zero_grad()
                nn.functional.cross_entropy(module(features), labels).backward()
                optimizer.step()
            tuned_accuracy = torch_accuracy(module, test_dir)
            print(f"fine-tuned in PyTorch from the same files: test accuracy {tuned_accuracy:.3f}")
    finally:
        if own:
            spark.stop()  # type: ignore[attr-defined]
    assert spark_accuracy > 0.85, spark_accuracy
    assert tuned_accuracy > 0.85, tuned_accuracy
    return {"spark_accuracy": spark_accuracy, "tuned_accuracy": tuned_accuracy}


if __name__ == "__main__":
    main()
