"""What the benchmarks share: best-of-N timing and a local SparkSession on every core."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def versions(*packages: str) -> str:
    """``name version`` of each installed package (``name missing`` otherwise), for the
    first line of a benchmark's output: ratios mean little without the peers' releases."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in packages:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


def best(fn: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)



def write_numeric_csv(
    path: str, megabytes: float, features: int, classes: int, seed: int = 0
) -> int:
    """Write a CSV of about ``megabytes`` MB: ``features`` ``%.6f`` columns of standard normal
    values, then an integer label below ``classes``. Returns its number of rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, written = 0, 0
    with open(path, "w") as f:
        while written < megabytes * 1e6:
            n = 50_000
            values = rng.standard_normal((n, features))
            labels = rng.integers(0, classes, n)
            block = (
                "\n".join(
                    ",".join(f"{v:.6f}" for v in row) + f",{label}"
                    for row, label in zip(values, labels, strict=True)
                )
                + "\n"
            )
            f.write(block)
            written += len(block)
            rows += n
    return rows


def time_interleaved(
    runners: dict[str, Callable[[int], object]], steps: int, repeat: int
) -> dict[str, list[float]]:
    """Seconds per step of each runner (called with the step's index), measured ``repeat``
    times over ``steps`` steps, the runners interleaved so that drift on a shared machine hits
    all alike; three warm-up steps each first."""
    for fn in runners.values():
        for i in range(3):
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            start = time.perf_counter()
            for i in range(steps):
                fn(i)
            times[name].append((time.perf_counter() - start) / steps)
    return times


def ratios_to_torch(times: dict[str, list[float]]) -> dict[str, float]:
    """From :func:`time_interleaved`'s times of "sparkbatch", "torch" and "torch_fused": the
    best milliseconds per step of each, ``ratio`` (sparkbatch's best over PyTorch's best) and
    ``paired_ratio_median``: per repetition, sparkbatch's time over PyTorch's best in that same
    repetition, whose median resists a shared machine's bursts better than a ratio of bests."""
    best_ms = {name: min(values) * 1e3 for name, values in times.items()}
    paired = [
        ours / min(theirs, fused)
        for ours, theirs, fused in zip(
            times["sparkbatch"], times["torch"], times["torch_fused"], strict=True
        )
    ]
    return {
        "sparkbatch_ms": best_ms["sparkbatch"],
        "torch_ms": best_ms["torch"],
        "torch_fused_ms": best_ms["torch_fused"],
        "ratio": best_ms["sparkbatch"] / min(best_ms["torch"], best_ms["torch_fused"]),
        "paired_ratio_median": float(statistics.median(paired)),
    }

def local_spark(app: str, driver_memory: str = "4g", conf: dict[str, str] | None = None) -> Any:
    """A ``local[cores]`` SparkSession with the UI, progress bars and chatter off, and ``conf``
    (by default :func:`sparkbatch.spark.recommended_conf`, as docs/index.md advises users)."""
    from sparkbatch.spark import recommended_conf

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{os.cpu_count() or 2}]")
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", driver_memory)
        .config("spark.python.worker.reuse", "true")
        .config(map=recommended_conf() if conf is None else conf)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def blas_info() -> str:
    """numpy's BLAS library, its kernel and thread count (threadpoolctl), for the printout."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "numpy BLAS: unknown (pip install threadpoolctl to report it)"
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl reports)

    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return "numpy BLAS: none found"
    p = pools[0]
    return (
        f"numpy BLAS {p.get('internal_api')} {p.get('version')} "
        f"({p.get('architecture')}, {p.get('num_threads')} threads)"
    )


def torch_mlp(torch: Any, net: Any) -> Any:
    """A ``torch.nn.Sequential`` of Linear and ReLU layers with ``net``'s weights (a sparkbatch
    ``Network`` of ReLU ``Dense`` layers and a linear output), so both start identically."""
    linears = []
    for i, layer in enumerate(net.layers):
        w, b = net.weights(i)
        linear = torch.nn.Linear(layer.n_in, layer.n_out)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b.copy()))
        linears.append(linear)
    modules: list = []
    for linear in linears[:-1]:
        modules += [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*modules, linears[-1])
