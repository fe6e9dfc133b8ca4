"""CSV parse throughput against the current releases of pandas, pyarrow, polars and duckdb.

Usage (in its own environment, see bench/requirements-peers.txt):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv-peers/bin/python bench/csv_peers.py

Seven generated CSV shapes (about --mb MB each) are parsed into one C-ordered float32 array
[rows, columns] per file by every parser, in one fresh process per library and thread count (so
that POLARS_MAX_THREADS and pyarrow's CPU count are set before the library is imported). Each
timing starts from the file's path (the page cache is warm) and ends with that array; the
best of three runs after one warm-up (and a first pass over every file), in MB/s. sparkbatch
reads the file as its own Spark jobs read a local range (``sparkbatch.storage.read_line_range``:
into a numpy array; on all threads in one part per core, as the tasks of a job read their
ranges at once), then runs the native parser on it. Every parser's array is checked against
sparkbatch's (shape and sum), so none is timed doing less work.

Categorical columns (shape 7) become the index of the value in a known list of names: sparkbatch
through the native parser's ``categories`` option, pandas through a ``CategoricalDtype``'s codes,
pyarrow through ``pyarrow.compute.index_in``, polars through an ``Enum``'s physical codes and
duckdb through ``list_position`` (duckdb's result is fetched as Arrow, its faster way out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

# bench/ holds a csv.py: keep the folder off sys.path so `import csv` (pandas does) finds the
# standard library.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402 (after the sys.path fix above)

# name -> (description, generator); each generator writes rows to a file and returns a dict of
# the facts the parsers need: number of columns, quoted or not, categorical columns.
CATEGORIES = {
    10: ["red", "green", "blue", "yellow", "black"],
    11: [f"city_{i:02d}" for i in range(12)],
    12: [f"product-{i}" for i in range(50)],
}
SHAPES = {
    "f6": "20 `%.6f` floats + integer label",
    "wide17": "4 floats, 17 significant digits (`%.17g`)",
    "narrow200": "200 narrow columns (100 ints 0-99, 100 `%.1f`)",
    "ints": "20 integers in ±1e6 + integer label",
    "exp": "20 `%.6e` floats + integer label",
    "quoted": "20 `%.6f` + label, every field quoted",
    "mixed": "10 `%.6f`, 3 categorical (5/12/50 names), integer label",
}


def _write(path: str, megabytes: float, block: Callable[[np.random.Generator], str]) -> None:
    rng = np.random.default_rng(0)
    written = 0
    with open(path, "w") as f:
        while written < megabytes * 1e6:
            text = block(rng)
            f.write(text)
            written += len(text)


def _lines(table: np.ndarray, fmt: str) -> str:
    """Rows of ``table`` formatted with ``fmt`` (one % directive per column), newline-ended."""
    return (fmt + "\n") * len(table) % tuple(table.ravel())


def generate(shape: str, path: str, megabytes: float) -> dict:
    """Write the CSV of ``shape`` to ``path``; return its column count and categorical columns."""
    n = 20_000
    if shape in ("f6", "exp", "quoted"):
        spec = {"f6": "%.6f", "exp": "%.6e", "quoted": '"%.6f"'}[shape]
        label = '"%d"' if shape == "quoted" else "%d"
        fmt = ",".join([spec] * 20 + [label])

        def block(rng: np.random.Generator) -> str:
            t = np.column_stack([rng.standard_normal((n, 20)), rng.integers(0, 10, n)])
            return _lines(t, fmt)

        return _write(path, megabytes, block) or {"columns": 21, "categories": {}}
    if shape == "wide17":

        def block(rng: np.random.Generator) -> str:
            return _lines(rng.standard_normal((n, 4)) * 100, ",".join(["%.17g"] * 4))

        return _write(path, megabytes, block) or {"columns": 4, "categories": {}}
    if shape == "narrow200":
        fmt = ",".join(["%d", "%.1f"] * 100)

        def block(rng: np.random.Generator) -> str:
            t = np.empty((n // 4, 200))
            t[:, 0::2] = rng.integers(0, 100, (n // 4, 100))
            t[:, 1::2] = rng.uniform(0, 10, (n // 4, 100))
            return _lines(t, fmt)

        return _write(path, megabytes, block) or {"columns": 200, "categories": {}}
    if shape == "ints":

        def block(rng: np.random.Generator) -> str:
            t = np.column_stack(
                [rng.integers(-1_000_000, 1_000_000, (n, 20)), rng.integers(0, 10, n)]
            )
            return _lines(t, ",".join(["%d"] * 21))

        return _write(path, megabytes, block) or {"columns": 21, "categories": {}}
    if shape == "mixed":
        names = {c: np.array(v, dtype=object) for c, v in CATEGORIES.items()}
        fmt = ",".join(["%.6f"] * 10 + ["%s"] * 3 + ["%d"])

        def block(rng: np.random.Generator) -> str:
            t = np.empty((n, 14), dtype=object)
            t[:, :10] = rng.standard_normal((n, 10))
            for c, v in names.items():
                t[:, c] = v[rng.integers(0, len(v), n)]
            t[:, 13] = rng.integers(0, 10, n)
            return _lines(t, fmt)

        return _write(path, megabytes, block) or {
            "columns": 14,
            "categories": {str(c): v for c, v in CATEGORIES.items()},
        }
    raise ValueError(f"unknown shape {shape!r}")


# --- the parsers: each takes (path, meta, threads) and returns a float32 [rows, columns] array ---


def _filled(columns: list, rows: int) -> np.ndarray:
    """Columns (numpy-convertible) into one C-ordered float32 array."""
    out = np.empty((rows, len(columns)), dtype=np.float32)
    for j, c in enumerate(columns):
        out[:, j] = np.asarray(c)
    return out


def sparkbatch_parser(threads: int) -> Callable[[str, dict], np.ndarray]:
    from sparkbatch import _native
    from sparkbatch.storage import plan_line_ranges, read_line_range

    def parse(path: str, meta: dict) -> np.ndarray:
        # read as sparkbatch's own jobs read a local range (into a numpy array)
        (whole,) = plan_line_ranges([path], lambda total: max(total, 1))
        data, _ = read_line_range(whole, threads=(os.cpu_count() or 1) if threads > 1 else 1)
        cats = {int(c): v for c, v in meta["categories"].items()}
        r = _native.parse_csv(data, threads=0 if threads > 1 else 1, categories=cats)
        return r["values"]

    return parse


def pandas_parser(engine: str) -> Callable[[str, dict], np.ndarray]:
    import pandas as pd

    def parse(path: str, meta: dict) -> np.ndarray:
        cats = {int(c): v for c, v in meta["categories"].items()}
        dtype = {i: np.float32 for i in range(meta["columns"]) if i not in cats}
        dtype.update({c: pd.CategoricalDtype(v) for c, v in cats.items()})
        df = pd.read_csv(path, header=None, dtype=dtype, engine=engine)
        if not cats:
            return np.ascontiguousarray(df.to_numpy(np.float32))
        return _filled(
            [df[i].cat.codes if i in cats else df[i] for i in range(meta["columns"])], len(df)
        )

    return parse


def pyarrow_parser(threads: int) -> Callable[[str, dict], np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    def parse(path: str, meta: dict) -> np.ndarray:
        cats = {int(c): v for c, v in meta["categories"].items()}
        names = [f"c{i}" for i in range(meta["columns"])]
        types = {n: (pa.string() if i in cats else pa.float32()) for i, n in enumerate(names)}
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=threads > 1, column_names=names),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
        columns = [
            pc.index_in(table[i], value_set=pa.array(cats[i])) if i in cats else table[i]
            for i in range(meta["columns"])
        ]
        return _filled([c.to_numpy() for c in columns], table.num_rows)

    return parse


def polars_parser() -> Callable[[str, dict], np.ndarray]:
    import polars as pl

    def parse(path: str, meta: dict) -> np.ndarray:
        cats = {int(c): v for c, v in meta["categories"].items()}
        schema = {
            f"c{i}": (pl.Enum(cats[i]) if i in cats else pl.Float32) for i in range(meta["columns"])
        }
        df = pl.read_csv(path, has_header=False, schema=schema)
        if cats:
            df = df.with_columns([pl.col(f"c{i}").to_physical() for i in cats])
        return np.ascontiguousarray(df.to_numpy(), dtype=np.float32)

    return parse


def duckdb_parser(threads: int) -> Callable[[str, dict], np.ndarray]:
    import duckdb

    con = duckdb.connect(config={"threads": threads})

    def parse(path: str, meta: dict) -> np.ndarray:
        cats = {int(c): v for c, v in meta["categories"].items()}
        n = meta["columns"]
        columns = ", ".join(f"'c{i}': '{'VARCHAR' if i in cats else 'FLOAT'}'" for i in range(n))
        select = ", ".join(
            f"CAST(list_position({cats[i]!r}, c{i}) - 1 AS FLOAT) AS c{i}" if i in cats else f"c{i}"
            for i in range(n)
        )
        got = con.sql(
            f"SELECT {select} FROM read_csv('{path}', header=false, columns={{{columns}}})"
        ).to_arrow_table()
        return _filled([c.to_numpy() for c in got.columns], got.num_rows)

    return parse


def worker(library: str, threads: int, files: dict) -> dict:
    """Time every parser variant of ``library`` at ``threads`` on every file (run in its own
    process: thread settings are read at import)."""
    if library == "pyarrow" or library == "pandas":
        import pyarrow as pa

        pa.set_cpu_count(threads)
        pa.set_io_thread_count(threads)
    variants: dict[str, Callable[[str, dict], np.ndarray]] = {}
    if library == "sparkbatch":
        variants["sparkbatch native"] = sparkbatch_parser(threads)
    elif library == "pandas":
        import pandas as pd

        # The C engine has one thread whatever the setting; it is in both tables, since a user
        # with more cores may still find it the fastest choice.
        variants[f"pandas {pd.__version__} read_csv (C engine)"] = pandas_parser("c")
        variants[f"pandas {pd.__version__} read_csv (engine=pyarrow)"] = pandas_parser("pyarrow")
    elif library == "pyarrow":
        variants["pyarrow.csv.read_csv"] = pyarrow_parser(threads)
    elif library == "polars":
        variants["polars.read_csv"] = polars_parser()
    elif library == "duckdb":
        variants["duckdb read_csv"] = duckdb_parser(threads)
    out: dict = {}
    for name, parse in variants.items():
        # A first pass over every file before any timing: a process's first large allocations
        # cost several times more here (a fresh process read f6 in 104-123 ms twice, then in
        # 17-18), which fell on whichever shape came first (f6 on two threads: 812-1,078 MB/s
        # against 1,160-1,446 when not first).
        for path, meta in files.values():
            try:
                parse(path, meta)
            except Exception:  # noqa: BLE001, S112 (reported by the timed pass below)
                continue
        for shape, (path, meta) in files.items():
            mb = os.path.getsize(path) / 1e6
            try:
                table = parse(path, meta)  # warm-up, and the result to check
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    parse(path, meta)
                    times.append(time.perf_counter() - start)
                out.setdefault(name, {})[shape] = {
                    "mbps": mb / min(times),
                    "shape": list(table.shape),
                    "sum": float(table.sum(dtype=np.float64)),
                    "ok": bool(table.dtype == np.float32 and table.flags.c_contiguous),
                }
            except Exception as e:  # noqa: BLE001 (reported in the table, not hidden)
                out.setdefault(name, {})[shape] = {"error": f"{type(e).__name__}: {e}"[:200]}
    return out


RUNS = [  # (library, threads): one process each
    ("sparkbatch", 1),
    ("pandas", 1),
    ("pyarrow", 1),
    ("polars", 1),
    ("duckdb", 1),
    ("sparkbatch", 0),
    ("pandas", 0),
    ("pyarrow", 0),
    ("polars", 0),
    ("duckdb", 0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50, help="size of each generated CSV in MB")
    parser.add_argument("--dir", default=None, help="where to write the CSVs (default: temp dir)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # library threads files.json
    args = parser.parse_args()
    if args.worker:
        library, threads, spec = args.worker
        with open(spec) as f:
            files = json.load(f)
        print(json.dumps(worker(library, int(threads), files)))
        return

    from importlib.metadata import PackageNotFoundError, version

    cores = os.cpu_count() or 2
    found = []
    for name in ("sparkbatch", "numpy", "pandas", "pyarrow", "polars", "duckdb"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    print("versions:", ", ".join(found), f"| python {sys.version.split()[0]} | {cores} cores")
    workdir = tempfile.mkdtemp(prefix="sparkbatch-bench-csvpeers-", dir=args.dir)
    try:
        files = {}
        for shape in args.shapes.split(","):
            path = os.path.join(workdir, f"{shape}.csv")
            files[shape] = (path, generate(shape, path, args.mb))
        spec = os.path.join(workdir, "files.json")
        with open(spec, "w") as f:
            json.dump(files, f)
        # The new files written back to disk now, not by the kernel about 30 s later, during
        # some process's timings.
        os.sync()
        results: dict[tuple[str, int], dict] = {}
        for library, threads in RUNS:
            t = threads or cores
            env = dict(os.environ, POLARS_MAX_THREADS=str(t), OMP_NUM_THREADS=str(t))
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", library, str(t), spec],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                print(f"{library} ({t} threads) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            for name, by_shape in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                results[(name, t)] = by_shape
        report(files, results, cores)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(files: dict, results: dict, cores: int) -> None:
    """Print the files, the checks against sparkbatch, and one table per thread count."""
    print()
    print("| shape | MB | rows × columns |")
    print("|---|---:|---|")
    reference = {}
    for shape, (path, _) in files.items():
        ref = results.get(("sparkbatch native", 1), {}).get(shape, {})
        reference[shape] = ref
        dims = " × ".join(f"{d:,}" for d in ref.get("shape", []))
        print(f"| {shape}: {SHAPES[shape]} | {os.path.getsize(path) / 1e6:.1f} | {dims} |")
    mismatches = []
    for (name, t), by_shape in results.items():
        for shape, r in by_shape.items():
            ref = reference[shape]
            if "error" in r or "sum" not in ref:
                continue
            bad = r["shape"] != ref["shape"] or not r["ok"]
            bad |= abs(r["sum"] - ref["sum"]) > 1e-6 * max(1.0, abs(ref["sum"])) + 1e-3
            if bad:
                mismatches.append(f"{name} ({t} threads) {shape}: {r['shape']} sum {r['sum']}")
                r["mbps_note"] = " (mismatch)"
    shapes = list(files)
    for t in (1, cores):
        rows = [(name, r) for (name, tt), r in results.items() if tt == t]
        print(f"\n{t} thread{'s' if t > 1 else ''}, MB/s (best of 3):\n")
        print("| parser | " + " | ".join(shapes) + " |")
        print("|---|" + "---:|" * len(shapes))
        for name, by_shape in rows:
            cells = []
            for s in shapes:
                r = by_shape.get(s, {})
                cells.append(
                    f"{r['mbps']:,.0f}{r.get('mbps_note', '')}" if "mbps" in r else "error"
                )
            print(f"| {name} | " + " | ".join(cells) + " |")
        ours = dict(rows).get("sparkbatch native", {})
        cells = []
        for s in shapes:
            peers = [
                r[s]["mbps"]
                for n, r in rows
                if n != "sparkbatch native" and "mbps" in r.get(s, {}) and "mbps_note" not in r[s]
            ]
            cells.append(f"{ours[s]['mbps'] / max(peers):.2f}×" if peers and s in ours else "—")
        print("| **sparkbatch / fastest peer** | " + " | ".join(cells) + " |")
    for (name, t), by_shape in results.items():
        for shape, r in by_shape.items():
            if "error" in r:
                print(f"\n{name} ({t} threads) {shape}: {r['error']}")
    if not any("sum" in r for r in reference.values()):
        print("\nsparkbatch gave no results: nothing was checked.")
    elif mismatches:
        print("\nresults that differ from sparkbatch's:", *mismatches, sep="\n  ")
    else:
        print("\nEvery parser's array matched sparkbatch's (shape, dtype, sum).")


if __name__ == "__main__":
    main()
