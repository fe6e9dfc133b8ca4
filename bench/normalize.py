"""Fitting and applying a standardisation: sparkbatch's native passes against what a user writes.

Usage: python bench/normalize.py [--repeat 7] [--scale 1.0]

For features ``[n, f]``, masked sequences ``[n, f, t]`` and images ``[n, c, h, w]`` (float32), it
times

- fit: ``Standardize().fit(ds)`` (one native pass, float64 accumulation) against numpy's
  ``x.mean(axis), x.std(axis)`` over the same values (for sequences, the unmasked steps, gathered
  first) and scikit-learn's ``StandardScaler().fit`` (2-D only);
- apply: ``Standardize()(ds)`` / ``.transform(x)`` (one fused native pass into a new float32
  array; masked steps zeroed) against numpy's ``(x - mean) / std`` (times the mask for
  sequences), PyTorch's same expression on a tensor sharing the array's memory, and
  ``StandardScaler.transform`` (2-D only).

All in one process, one after another in each repetition; a time is the best of the repetitions,
a ratio (other / sparkbatch) the median over repetitions of the two times of the same repetition,
which holds up on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import versions  # noqa: E402
from sparkbatch.data import DataSet, Standardize  # noqa: E402


def cases(scale: float) -> list[tuple[str, DataSet]]:
    rng = np.random.default_rng(0)
    n = max(8, int(32768 * scale))
    features = (rng.standard_normal((n, 256), dtype=np.float32) * 3 + 5).astype(np.float32)
    small = features[:128].copy()
    s = max(4, int(512 * scale))
    sequences = rng.standard_normal((s, 32, 200), dtype=np.float32)
    lengths = rng.integers(50, 201, s)
    mask = (np.arange(200)[None, :] < lengths[:, None]).astype(np.float32)
    sequences *= mask[:, None, :]
    i = max(2, int(128 * scale))
    images = rng.uniform(0, 255, (i, 3, 64, 64)).astype(np.float32)
    return [
        (f"features {features.shape}", DataSet(features)),
        (f"minibatch {small.shape}", DataSet(small)),
        (f"sequences {sequences.shape} masked", DataSet(sequences, features_mask=mask)),
        (f"images {images.shape}", DataSet(images)),
    ]


def numpy_fit(ds: DataSet) -> Callable[[], object]:
    x, mask = ds.features, ds.features_mask
    if x.ndim == 2:
        return lambda: (x.mean(0), x.std(0))
    if x.ndim == 4:
        return lambda: (x.mean((0, 2, 3)), x.std((0, 2, 3)))

    def masked() -> object:
        values = x.transpose(0, 2, 1)[mask > 0]
        return values.mean(0), values.std(0)

    return masked


def numpy_apply(ds: DataSet, norm: Standardize) -> Callable[[], object]:
    x, mask = ds.features, ds.features_mask
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = norm.mean.astype(np.float32).reshape(shape)
    std = norm.std.astype(np.float32).reshape(shape)
    if mask is None:
        return lambda: (x - mean) / std
    m = mask[:, None, :]
    return lambda: (x - mean) / std * m


def torch_apply(torch: object, ds: DataSet, norm: Standardize) -> Callable[[], object]:
    x, mask = ds.features, ds.features_mask
    shape = [1, -1] + [1] * (x.ndim - 2)
    t = torch.from_numpy(x)  # type: ignore[attr-defined]
    mean = torch.from_numpy(norm.mean.astype(np.float32).reshape(shape))  # type: ignore[attr-defined]
    std = torch.from_numpy(norm.std.astype(np.float32).reshape(shape))  # type: ignore[attr-defined]
    if mask is None:
        return lambda: (t - mean) / std
    m = torch.from_numpy(mask[:, None, :])  # type: ignore[attr-defined]
    return lambda: (t - mean) / std * m


def measure(methods: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():
        fn()  # warm-up: page faults of fresh outputs, lazy imports
    for _ in range(repeat):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def report(label: str, times: dict[str, list[float]], nbytes: int) -> None:
    ours = times["sparkbatch"]
    for name, ts in times.items():
        best = min(ts)
        ratio = statistics.median(o / s for o, s in zip(ts, ours, strict=True))
        speed = f"{nbytes / best / 1e9:6.2f} GB/s"
        versus = "" if name == "sparkbatch" else f"  sparkbatch {ratio:5.2f}x faster"
        print(f"  {label:6} {name:22} {best * 1e3:9.3f} ms  {speed}{versus}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="data size factor")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    try:
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        StandardScaler = None  # noqa: N806
    print(versions("sparkbatch", "numpy", "torch", "scikit-learn"))
    if torch is not None:
        print(f"torch threads: {torch.get_num_threads()}; cores: {os.cpu_count()}")
    for name, ds in cases(args.scale):
        x = ds.features
        print(f"{name}, {x.nbytes / 1e6:.1f} MB float32")
        norm = Standardize().fit(ds)
        fits: dict[str, Callable[[], object]] = {
            "sparkbatch": lambda ds=ds: Standardize().fit(ds),
            "numpy mean/std": numpy_fit(ds),
        }
        applies: dict[str, Callable[[], object]] = {
            "sparkbatch": lambda ds=ds, norm=norm: norm(ds),
            "numpy (x - mean) / std": numpy_apply(ds, norm),
        }
        if torch is not None:
            applies["torch (x - mean) / std"] = torch_apply(torch, ds, norm)
        if StandardScaler is not None and x.ndim == 2:
            scaler = StandardScaler().fit(x)
            fits["sklearn StandardScaler"] = lambda x=x: StandardScaler().fit(x)
            applies["sklearn .transform"] = lambda x=x, s=scaler: s.transform(x)
        report("fit", measure(fits, args.repeat), x.nbytes)
        report("apply", measure(applies, args.repeat), x.nbytes)


if __name__ == "__main__":
    main()
