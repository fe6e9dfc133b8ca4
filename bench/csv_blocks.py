"""The native CSV parser from memory, with its block path off, without AVX2, and as shipped.

Usage (the project's environment or bench/requirements-peers.txt's):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/csv_blocks.py [--mb 40]

The shapes of bench/csv_peers.py (generated alike, about --mb MB each) are read into memory once,
then parsed to float32 by ``_native.parse_csv`` on one thread and on all, best of five after a
warm-up, in each mode of ``_native._set_csv_blocks`` (NOTE(csv-blocks) in csrc/csv_parser.cpp):
``off`` parses every row record by record and every category cell by the general path, as before
the block path and the category tables (NOTE(csv-categories)); ``sse2`` parses blocks of number
and category rows without AVX2; ``best`` takes AVX2 where the CPU has it. MB/s of the file's
bytes, the share of rows the block path parsed, and a check that every mode gives the same bits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

# bench/ holds a csv.py: keep the folder off sys.path so `import csv` finds the standard library.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402 (after the sys.path fix above)

MODES = ("off", "sse2", "best")


def _peers_module():  # noqa: ANN202 (a module)
    """bench/csv_peers.py, for its shapes and their generator."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("csv_peers", os.path.join(_HERE, "csv_peers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(data: bytes, meta: dict, mode: str, threads: int) -> tuple[float, dict]:
    """Best of five seconds for one parse of ``data`` in ``mode``, and the last result."""
    from sparkbatch import _native

    cats = {int(c): v for c, v in meta["categories"].items()}
    before = _native._set_csv_blocks(mode)
    try:
        result = _native.parse_csv(data, threads=threads, categories=cats)  # warm-up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            result = _native.parse_csv(data, threads=threads, categories=cats)
            times.append(time.perf_counter() - start)
    finally:
        _native._set_csv_blocks(before)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=40, help="size of each generated CSV in MB")
    parser.add_argument("--dir", default=None, help="where to write the CSVs (default: temp dir)")
    args = parser.parse_args()
    from importlib.metadata import version

    peers = _peers_module()
    cores = os.cpu_count() or 2
    print(f"sparkbatch {version('sparkbatch')}, numpy {np.__version__} | {cores} cores")
    workdir = tempfile.mkdtemp(prefix="sparkbatch-bench-csvblocks-", dir=args.dir)
    try:
        rows = []
        for shape in peers.SHAPES:
            path = os.path.join(workdir, f"{shape}.csv")
            meta = peers.generate(shape, path, args.mb)
            with open(path, "rb") as f:
                data = f.read()
            os.remove(path)
            cells = []
            reference = None
            share = 0.0
            for threads in (1, 0):
                for mode in MODES:
                    seconds, result = measure(data, meta, mode, threads)
                    bits = result["values"].view(np.uint32)
                    if reference is None:
                        reference = bits
                    elif not np.array_equal(bits, reference):
                        raise SystemExit(f"{shape}: mode {mode}, threads {threads} differs")
                    cells.append(f"{len(data) / seconds / 1e6:,.0f}")
                    if mode == "best" and threads == 1:
                        share = result["block_rows"] / max(1, len(result["values"]))
            rows.append((shape, len(data) / 1e6, cells, share))
        header = " | ".join(f"{m}, 1 thread" for m in MODES)
        header += " | " + " | ".join(f"{m}, {cores} threads" for m in MODES)
        print("\nMB/s from memory (best of 5); every mode gave the same bits:\n")
        print(f"| shape | MB | {header} | rows in blocks |")
        print("|---|---:|" + "---:|" * (2 * len(MODES)) + "---:|")
        for shape, mb, cells, share in rows:
            print(f"| {shape} | {mb:.1f} | " + " | ".join(cells) + f" | {share:.0%} |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
