"""Parameter averaging against a memory copy: does the k-way average read at memory speed?

Usage: python bench/averaging.py [--elements 10000000] [--repeat 21] [--threads 1,all] [--check]

On float32 buffers of ``--elements`` values (10M: 40 MB each) it times, interleaved (each
repetition runs every measurement once, in turn, so that drift on a shared machine hits all
alike):

- ``copy``: ``np.copyto`` of one buffer into another (numpy copies on one thread); read bandwidth
  is the bytes read (one buffer) over the seconds;
- ``copy, N threads`` (when the pool has more than one thread): the same copy cut into N slices
  copied by N Python threads (numpy releases the GIL), the multi-threaded copy to compare the
  native kernels' multi-threaded passes with; sparkbatch has no native copy;
- ``nn_average k``: ``sparkbatch._native.nn_average(buffers[:k], out)`` for k = 2, 4, 8, read
  bandwidth k buffers over the seconds;
- ``nn_add_into``: ``_native.nn_add_into(acc, x)``, how ``train.worker.combine`` sums the results
  arriving at a worker (it reads two buffers: read bandwidth 2 buffers over the seconds);
- ``numpy average 8``: what a user writes without sparkbatch, ``np.add`` chained over the eight
  buffers into ``out`` and ``np.divide`` by 8 (read bandwidth counted as eight buffers, the
  inputs, though numpy reads ``out`` seven more times).

The native kernels split a pass over sparkbatch's thread pool (``csrc/thread_pool.cpp``; its size
is ``$SPARKBATCH_NUM_THREADS``, else the hardware concurrency, read once per process), so each
thread count in ``--threads`` runs in its own child process: 1 is an executor's configuration
(``train.worker`` sets the variable to the task's cores, one by default), ``all`` the driver's
(it averages the aggregated sum on every core). Each kernel is compared with the copy of its
configuration: one thread with numpy's one-thread copy, all threads with the threaded copy.

A time is the best of the repetitions (and the median); a ratio is the kernel's read bandwidth
over the copy's, best against best, and the median over repetitions of the ratio within the same
repetition (which holds up on a shared machine). ``--check`` exits with status 1 when the k = 8
average's best ratio is below 0.8 in any configuration (issue 22).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import versions  # noqa: E402

THRESHOLD = 0.8  # issue 22: the k = 8 average reads at least 0.8x a copy's read bandwidth


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def threaded_copy(pool: ThreadPoolExecutor, threads: int, dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[:] = src`` in ``threads`` slices copied concurrently."""
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = [
        pool.submit(np.copyto, dst[a:b], src[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    for part in parts:
        part.result()


def numpy_average(buffers: list[np.ndarray], out: np.ndarray) -> None:
    """The mean of the buffers with numpy, in buffer order, then one division."""
    np.add(buffers[0], buffers[1], out=out)
    for b in buffers[2:]:
        np.add(out, b, out=out)
    np.divide(out, np.float32(len(buffers)), out=out)


def measure(elements: int, repeat: int) -> dict:
    """Run in a child process whose ``$SPARKBATCH_NUM_THREADS`` is already set: time every
    measurement ``repeat`` times, interleaved; return their seconds and read bytes."""
    from sparkbatch import _native

    threads = int(_native.build_info()["pool_threads"])
    rng = np.random.default_rng(0)
    buffers = [rng.standard_normal(elements, dtype=np.float32) for _ in range(8)]
    out = np.empty(elements, np.float32)
    dst = np.empty(elements, np.float32)
    acc = np.zeros(elements, np.float32)
    size = buffers[0].nbytes
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    copy_name = f"copy, {threads} threads" if pool is not None else "copy"

    # name -> (call, bytes read, the copy it is compared with)
    cases: dict[str, tuple[Callable[[], object], int, str]] = {
        "copy": (lambda: np.copyto(dst, buffers[0]), size, "copy"),
    }
    if pool is not None:
        cases[copy_name] = (
            lambda: threaded_copy(pool, threads, dst, buffers[1]),
            size,
            copy_name,
        )
    for k in (2, 4, 8):
        cases[f"nn_average {k}"] = (
            lambda k=k: _native.nn_average(buffers[:k], out),
            k * size,
            copy_name,
        )
    cases["nn_add_into"] = (lambda: _native.nn_add_into(acc, buffers[2]), 2 * size, copy_name)
    cases["numpy average 8"] = (lambda: numpy_average(buffers, out), 8 * size, "copy")

    # Warm up (page faults of out, dst and acc; the pool's threads), then interleave.
    for fn, _, _ in cases.values():
        fn()
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, (fn, _, _) in cases.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    if pool is not None:
        pool.shutdown()
    return {
        "threads": threads,
        "seconds": seconds,
        "bytes": {name: c[1] for name, c in cases.items()},
        "against": {name: c[2] for name, c in cases.items()},
    }


def report(result: dict) -> float:
    """Print one configuration's table; return the k = 8 average's best ratio to its copy."""
    seconds, read, against = result["seconds"], result["bytes"], result["against"]
    print(f"\nsparkbatch pool: {result['threads']} thread(s)")
    print(
        f"{'pass':<22} {'best ms':>8} {'median ms':>10} {'read GB/s':>10} "
        f"{'vs copy':>16} {'ratio best':>11} {'ratio median':>13}"
    )
    ratio8 = float("nan")
    for name, times in seconds.items():
        bandwidth = read[name] / min(times) / 1e9
        copy = against[name]
        ratio = bandwidth / (read[copy] / min(seconds[copy]) / 1e9)
        paired = statistics.median(
            (read[name] / t) / (read[copy] / c) for t, c in zip(times, seconds[copy], strict=True)
        )
        if name == "nn_average 8":
            ratio8 = ratio
        print(
            f"{name:<22} {min(times) * 1e3:8.2f} {statistics.median(times) * 1e3:10.2f} "
            f"{bandwidth:10.2f} {copy:>16} {ratio:11.2f} {paired:13.2f}"
        )
    return ratio8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument(
        "--threads",
        default="1,all",
        help="comma-separated pool sizes, each run in its own process ('all': every core)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a k=8 ratio is < 0.8")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.elements, args.repeat)))
        return

    import sparkbatch

    print(
        f"{versions('numpy')}, sparkbatch {sparkbatch.__version__}, python "
        f"{platform.python_version()}; CPU {cpu_model()}, {os.cpu_count()} logical cores; "
        f"{args.elements} float32 per buffer ({args.elements * 4 / 1e6:.0f} MB), "
        f"{args.repeat} interleaved repetitions"
    )
    failed = []
    for threads in args.threads.split(","):
        env = dict(os.environ)
        if threads == "all":
            env.pop("SPARKBATCH_NUM_THREADS", None)
        else:
            env["SPARKBATCH_NUM_THREADS"] = threads
        command = [sys.executable, __file__, "--child", "--elements", str(args.elements)]
        child = subprocess.run(
            [*command, "--repeat", str(args.repeat)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(child.stdout.splitlines()[-1])
        ratio8 = report(result)
        if not ratio8 >= THRESHOLD:
            failed.append(f"{result['threads']} thread(s): {ratio8:.2f}")
    if args.check and failed:
        print(
            f"\nFAIL: nn_average of 8 buffers reads below {THRESHOLD}x the copy's read "
            f"bandwidth with {', '.join(failed)}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
