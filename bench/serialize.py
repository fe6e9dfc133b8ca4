"""Save/load throughput of one DataSet minibatch file against the formats a user would pick.

Usage: python bench/serialize.py [--sizes 1,64,512] [--repeat 7] [--dir /tmp]

Each DataSet is float32 features [n, 256] plus one-hot float32 labels [n, 10], n chosen so the
arrays total the given size in MB. Every method writes to and reads from the same local directory,
in the same run, with the page cache warm (the usual state of a just-written or recently-read
file). Throughput is the best of the repetitions; a speed-up is the median, over repetitions, of
the other method's time divided by sparkbatch's in the same repetition (robust on a shared
machine, where a best-of ratio can flip with one lucky run). "Load" ends when the arrays are
usable in memory: numpy, pickle and safetensors read every byte; sparkbatch ``verify=True``
reads (under 2 MiB) or memory-maps the file and CRC-checks every byte, ``verify=False`` skips the
check (and a mapped file is then not touched at all).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from sparkbatch.data import DataSet, load, save

FEATURES, CLASSES = 256, 10


def make_dataset(megabytes: float) -> DataSet:
    n = max(1, int(megabytes * 1e6 / ((FEATURES + CLASSES) * 4)))
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, FEATURES), dtype=np.float32)
    labels = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, n)]
    return DataSet(features, labels)


def methods(directory: str) -> dict[str, tuple[Callable[[DataSet], None], Callable[[], object]]]:
    """name -> (save(ds), load() -> arrays) for every competitor, all in ``directory``."""
    p = lambda name: os.path.join(directory, name)  # noqa: E731

    def npy_save(ds: DataSet) -> None:
        np.save(p("features.npy"), ds.features)
        np.save(p("labels.npy"), ds.labels)

    def npz_save(ds: DataSet) -> None:
        np.savez(p("batch.npz"), features=ds.features, labels=ds.labels)

    def npz_load() -> object:
        with np.load(p("batch.npz")) as z:
            return z["features"], z["labels"]

    def pickle_save(ds: DataSet) -> None:
        with open(p("batch.pkl"), "wb") as f:
            pickle.dump((ds.features, ds.labels), f, protocol=5)

    def pickle_load() -> object:
        with open(p("batch.pkl"), "rb") as f:
            return pickle.load(f)

    table = {
        "sparkbatch": (
            lambda ds: save(ds, p("batch.safetensors")),
            lambda: load(p("batch.safetensors")),
        ),
        "sparkbatch (no verify)": (None, lambda: load(p("batch.safetensors"), verify=False)),
        "np.save/np.load": (
            npy_save,
            lambda: (np.load(p("features.npy")), np.load(p("labels.npy"))),
        ),
        "np.savez": (npz_save, npz_load),
        "pickle": (pickle_save, pickle_load),
    }
    try:
        import safetensors.numpy as stn

        table["safetensors.numpy"] = (
            lambda ds: stn.save_file(
                {"features": ds.features, "labels": ds.labels}, p("st.safetensors")
            ),
            lambda: stn.load_file(p("st.safetensors")),
        )
    except ImportError:
        print("safetensors not installed: pip install 'sparkbatch[bench]' to compare with it")
    return table


def clear(directory: str) -> None:
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    ds: DataSet, directory: str, repeat: int
) -> dict[str, tuple[list[float] | None, list[float]]]:
    """Save and load times of every method over ``repeat`` repetitions. The methods take turns
    in each repetition, so that a slow moment of the machine (page-cache reclaim, writeback, a
    neighbour on the VM) falls on all of them and the per-repetition ratios stay fair."""
    table = methods(directory)
    times: dict[str, tuple[list[float] | None, list[float]]] = {
        name: (None if saver is None else [], []) for name, (saver, _) in table.items()
    }
    for _ in range(repeat):
        for name, (saver, loader) in table.items():
            clear(directory)
            if saver is None:  # loads the file of the method it shares a format with
                table["sparkbatch"][0](ds)
            else:
                times[name][0].append(timed(lambda save=saver: save(ds)))
            times[name][1].append(timed(loader))
    return times


def repetitions(size: float, repeat: int) -> int:
    """Small files take many more repetitions: a 1 MB load lasts a tenth of a millisecond, and
    seven samples of that say little on a shared machine."""
    return max(repeat, min(200, round(repeat * 64 / size)))


def run(sizes: list[float], repeat: int, base: str | None) -> None:
    directory = tempfile.mkdtemp(prefix="sparkbatch-bench-", dir=base)
    try:
        for size in sizes:
            ds = make_dataset(size)
            reps = repetitions(size, repeat)
            report(size, ds.features.nbytes + ds.labels.nbytes, reps, measure(ds, directory, reps))
            del ds
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def paired_speedup(theirs: list[float], ours: list[float]) -> float:
    """Median over the repetitions of their time / our time (above 1: sparkbatch is faster)."""
    return statistics.median(t / o for t, o in zip(theirs, ours, strict=True))


def report(
    size: float, nbytes: int, reps: int, times: dict[str, tuple[list[float] | None, list[float]]]
) -> None:
    our_save, our_load = times["sparkbatch"]
    assert our_save is not None
    mb = nbytes / 1e6
    print(
        f"\nDataSet of {mb:.1f} MB (float32 features [n, {FEATURES}] + labels [n, {CLASSES}]), "
        f"{reps} repetitions"
    )
    print(
        "| method | save MB/s (best) | sparkbatch save speed-up | load MB/s (best) "
        "| load latency ms (best) | sparkbatch load speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, (save_s, load_s) in times.items():
        save_cell = f"{mb / min(save_s):,.0f}" if save_s else "—"
        save_ratio = f"{paired_speedup(save_s, our_save):.2f}×" if save_s else "—"
        print(
            f"| {name} | {save_cell} | {save_ratio} | {mb / min(load_s):,.0f} "
            f"| {min(load_s) * 1e3:.2f} | {paired_speedup(load_s, our_load):.2f}× |"
        )
    print(
        "speed-up: the median over repetitions of the method's time divided by sparkbatch's in "
        "the same repetition"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,64,512", help="DataSet sizes in MB, comma-separated")
    parser.add_argument(
        "--repeat", type=int, default=7, help="repetitions (small sizes get more, up to 200)"
    )
    parser.add_argument("--dir", default=None, help="directory for the files (default: temp dir)")
    args = parser.parse_args()
    run([float(s) for s in args.sizes.split(",")], args.repeat, args.dir)


if __name__ == "__main__":
    main()
