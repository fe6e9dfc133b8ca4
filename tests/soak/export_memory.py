"""Soak: export CSV ten times larger than the memory Spark is given, and measure peak memory.

Not collected by pytest (no ``test_`` prefix). Run from the repository root:

    .venv/bin/python tests/soak/export_memory.py --csv-gb 5 --memory 512m

What it does:

1. writes ``--csv-gb`` GB of CSV (``--columns`` numeric features and a class label per row)
   into ``--dir`` as ``--files`` files, unless they are there already;
2. starts a ``local[2]`` Spark with ``spark.driver.memory`` (the JVM that is the executor in
   local mode), ``spark.executor.memory`` and ``spark.executor.pyspark.memory`` (the Python
   workers' address-space limit) all set to ``--memory``;
3. runs the real path, ``csv_to_datasets`` then ``batch_and_export`` to local files, and reads
   the manifest back (every row must be there once: the example count is checked);
4. meanwhile samples, every 0.2 s, ``VmRSS`` and ``VmHWM`` of this process (the driver), the
   JVM, and every Python worker under it (from ``/proc``), and reports each one's peak, and the
   peak of their sum.

It prints one JSON document with the figures; ``--keep`` keeps the output (the CSV is kept
unless ``--clean``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

ROW_SEED = 12345


def parse_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def write_csv(directory: Path, total_bytes: int, files: int, columns: int, classes: int) -> int:
    """Write the CSV files (about ``total_bytes``); return the number of rows."""
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(ROW_SEED)
    block_rows = 20_000
    values = np.round(rng.standard_normal((block_rows, columns)), 4)
    labels = rng.integers(0, classes, block_rows)
    lines = [
        ",".join(f"{v:.4f}" for v in row) + f",{y}\n"
        for row, y in zip(values, labels, strict=True)
    ]
    block = "".join(lines).encode()
    per_file = max(1, total_bytes // files // len(block))
    rows = 0
    for i in range(files):
        path = directory / f"part-{i:04d}.csv"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(per_file):
                f.write(block)
        tmp.rename(path)
        rows += per_file * block_rows
    (directory / "ROWS").write_text(str(rows))
    return rows


class Sampler:
    """Polls ``/proc`` for this process and its descendants: peak RSS/HWM per role."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.stop = threading.Event()
        self.peaks: dict[str, dict[str, int]] = {}  # role -> {"rss": kB, "hwm": kB}
        self.per_pid_hwm: dict[int, tuple[str, int]] = {}
        self.total_peak_kb = 0
        self.samples = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        out = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "PPid:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
        return out

    @staticmethod
    def _cmdline(pid: int) -> str:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")

    def _tree(self) -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, command line) for every descendant of this process."""
        parents: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    parents[int(name)] = self._status(int(name)).get("PPid", 0)
                except OSError:
                    continue
        me = os.getpid()
        tree: dict[int, tuple[int, str]] = {}
        frontier = [me]
        for _ in range(20):  # depth bound
            children = [p for p, parent in parents.items() if parent in frontier and p != me]
            if not children:
                break
            for p in children:
                try:
                    tree[p] = (parents[p], self._cmdline(p))
                except OSError:
                    continue
            frontier = children
        return tree

    def _role(self, pid: int, tree: dict[int, tuple[int, str]]) -> str:
        parent, cmd = tree[pid]
        if "java" in cmd.split(" ", 1)[0] or "org.apache.spark" in cmd:
            return "jvm"
        if "pyspark.daemon" in cmd or "pyspark/daemon" in cmd:
            parent_cmd = tree.get(parent, (0, ""))[1]
            return "python worker" if "pyspark.daemon" in parent_cmd else "pyspark daemon"
        if "pyspark.worker" in cmd:
            return "python worker"
        return "other"

    def _sample(self) -> None:
        tree = self._tree()
        total = 0
        pids = [(os.getpid(), "driver")] + [(p, self._role(p, tree)) for p in tree]
        for pid, role in pids:
            try:
                status = self._status(pid)
            except OSError:
                continue
            rss, hwm = status.get("VmRSS", 0), status.get("VmHWM", 0)
            total += rss
            peak = self.peaks.setdefault(role, {"rss": 0, "hwm": 0, "processes": 0})
            peak["rss"] = max(peak["rss"], rss)
            peak["hwm"] = max(peak["hwm"], hwm)
            if pid not in self.per_pid_hwm:
                peak["processes"] += 1
            self.per_pid_hwm[pid] = (role, max(hwm, self.per_pid_hwm.get(pid, ("", 0))[1]))
        self.total_peak_kb = max(self.total_peak_kb, total)
        self.samples += 1

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._sample()
            except Exception as e:  # noqa: BLE001  (a sampler must not end the run)
                print(f"sampler: {e}", file=sys.stderr)
            self.stop.wait(self.period)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv-gb", type=float, default=5.0)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--columns", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--memory", default="512m")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--dir", default="/tmp/sparkbatch-soak-memory")
    parser.add_argument("--keep", action="store_true", help="keep the exported files")
    parser.add_argument("--clean", action="store_true", help="remove the CSV afterwards")
    args = parser.parse_args()

    root = Path(args.dir)
    csv_dir, out = root / "csv", root / "export"
    total = int(args.csv_gb * 2**30)
    started = time.time()
    if (csv_dir / "ROWS").exists():
        rows = int((csv_dir / "ROWS").read_text())
    else:
        rows = write_csv(csv_dir, total, args.files, args.columns, args.classes)
    csv_bytes = sum(p.stat().st_size for p in csv_dir.glob("*.csv"))
    generated = time.time()
    if out.exists():
        shutil.rmtree(out)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from sparkbatch.data.manifest import read_manifest
    from sparkbatch.spark import batch_and_export, csv_to_datasets

    sampler = Sampler()
    sampler.start()
    spark = (
        SparkSession.builder.master(args.master)
        .appName("sparkbatch-soak-export-memory")
        .config("spark.driver.memory", args.memory)
        .config("spark.executor.memory", args.memory)
        .config("spark.executor.pyspark.memory", args.memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    error = None
    try:
        rdd = csv_to_datasets(
            str(csv_dir / "*.csv"),
            label_index=args.columns,
            num_classes=args.classes,
            batch_size=args.batch_size,
            sc=spark.sparkContext,
        )
        partitions = rdd.getNumPartitions()
        export_start = time.time()
        urls = batch_and_export(rdd, str(out), args.batch_size)
        exported = time.time()
        manifest = read_manifest(str(out)) or {}
    except Exception as e:  # noqa: BLE001  (reported with the figures)
        error = f"{type(e).__name__}: {str(e)[:2000]}"
        partitions, urls, manifest = -1, [], {}
        export_start = exported = time.time()
    finally:
        spark.stop()
        sampler.close()
    out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors")) if out.exists() else 0
    limit_mb = parse_size(args.memory) / 2**20
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "memory_setting_mb": limit_mb,
        "csv_bytes": csv_bytes,
        "csv_over_memory": round(csv_bytes / parse_size(args.memory), 1),
        "rows": rows,
        "exported_examples": manifest.get("num_examples"),
        "all_rows_exported_once": manifest.get("num_examples") == rows,
        "files": len(urls),
        "output_bytes": out_bytes,
        "partitions": partitions,
        "generate_s": round(generated - started, 1),
        "export_s": round(exported - export_start, 1),
        "export_mb_per_s": round(csv_bytes / 2**20 / max(exported - export_start, 1e-9), 1),
        "peak_mb": {
            role: {
                "rss": round(p["rss"] / 1024, 1),
                "hwm": round(p["hwm"] / 1024, 1),
                "processes": p["processes"],
            }
            for role, p in sorted(sampler.peaks.items())
        },
        "peak_total_rss_mb": round(sampler.total_peak_kb / 1024, 1),
        "samples": sampler.samples,
        "error": error,
    }
    print(json.dumps(report, indent=1))
    if not args.keep and out.exists():
        shutil.rmtree(out)
    if args.clean:
        shutil.rmtree(csv_dir, ignore_errors=True)
    return 0 if error is None and report["all_rows_exported_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
