"""Parameter averaging from 1 to 4 workers on this machine, a cost model fitted to it, and the
model's predictions for clusters of 16 to 256 executors.

Measures averaging rounds (``SparkNetwork`` with ``ParameterAveraging(collect_stats=True)``) on
``local[1]``, ``local[2]`` and standalone Spark clusters of 2, 3 and 4 one-core workers on
127.0.0.1 (``tests/cluster.py``), for ReLU networks 64-H-H-10 of about 0.1M, 1M and 10M float32
parameters trained by plain SGD (no updater state: what moves is the parameters), at averaging
frequencies 1, 5 and 20, with every exchange given. Every fit runs one warm-up round (Python
workers building the model, the socket exchange's barrier job starting) and ``--rounds``
measured rounds, whose wall time, slowest worker's fitting and the rest are kept per round with
everything :class:`~sparkbatch.train.RoundStats` records (raw JSON: ``--out``).

It then fits a cost model to the points (least squares, constants kept non-negative), prints
every constant and the model's error on every point, predicts rounds for 16, 64 and 256
executors on 1, 10 and 25 Gbit/s networks, and draws the points beside the model
(``--plot``, ``--plot-prediction``). ``--from-json`` refits and redraws saved points without
measuring again. The formulas and assumptions are printed with the predictions and described in
docs/scaling.md.

Run (unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE in this command only, see the env notes)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/scaling.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/scaling.py --quick
    .venv/bin/python bench/scaling.py --from-json /tmp/sparkbatch-scaling.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
from _common import versions  # noqa: E402

sys.path.pop(0)

from sparkbatch.data import DataSet  # noqa: E402
from sparkbatch.nn import SGD, Dense, Network, Output  # noqa: E402
from sparkbatch.train import ParameterAveraging, RingExchange, SparkNetwork  # noqa: E402
from sparkbatch.train.ring import grid_hops  # noqa: E402

FEATURES, CLASSES = 64, 10
#: Hidden width of the 64-H-H-10 network for each size (99,690, 994,570 and 9,971,530
#: parameters).
HIDDEN = {"0.1M": 280, "1M": 960, "10M": 3120}
#: Measured rounds per point for the smaller networks (at least ``--rounds``, as many as the
#: files allow): their rounds last milliseconds, where one late scheduling of a worker on the
#: shared cores doubles a round, so their medians need more rounds to settle.
SHORT_ROUNDS = {"0.1M": 9, "1M": 5}
BYTES_PER_PARAMETER = 4  # float32, plain SGD: no updater state travels
#: The configurations measured: name, master ("local[k]" or a standalone cluster of k one-core
#: workers), workers per round.
CONFIGS = {
    "local[1]": ("local", 1),
    "local[2]": ("local", 2),
    "cluster-2": ("cluster", 2),
    "cluster-3": ("cluster", 3),
    "cluster-4": ("cluster", 4),
}
PREDICT_EXECUTORS = (16, 64, 256)
PREDICT_GBITS = (1.0, 10.0, 25.0)
#: One-way latency of a message between two machines of the predicted cluster (switch, NICs and
#: kernel; the exchanges' own software cost per message is the measured one, on top).
NETWORK_LATENCY_S = 50e-6
#: Spark's broadcast moves blocks of this size (spark.broadcast.blockSize, 4 MiB).
BROADCAST_BLOCK = 4 << 20
GOAL = {"executors": 256, "size": "10M", "frequency": 5, "gbits": 10.0, "share": 0.20}
#: TCP payload per byte on the wire at an MTU of 1500 (1448 of each 1514-byte frame, with
#: timestamps); bench/allreduce_network.py's streams reached 95.5-95.7 % of a shaped link.
TCP_PAYLOAD = 1448 / 1514
#: What each exchange name measured here passes as ``ParameterAveraging(exchange=...)``.
EXCHANGES: dict[str, Any] = {
    "spark": lambda: "spark",
    "socket": lambda: "socket",
    "ring": lambda: "ring",
    "ring-bf16": lambda: RingExchange(transport="bfloat16"),
}


def n_parameters(hidden: int) -> int:
    """Parameters of the 64-``hidden``-``hidden``-10 network (weights and biases).

    >>> n_parameters(HIDDEN["1M"])
    994570
    """
    return (FEATURES + 1) * hidden + (hidden + 1) * hidden + (hidden + 1) * CLASSES


def make_network(hidden: int) -> Network:
    """The benchmark's network: two ReLU layers of ``hidden`` units, softmax output, SGD."""
    return Network(
        [Dense(FEATURES, hidden, "relu"), Dense(hidden, hidden, "relu"), Output(hidden, CLASSES)],
        SGD(1e-3),
        seed=0,
    )


def write_files(directory: str, count: int, batch: int) -> list[str]:
    """``count`` minibatch files of ``batch`` random examples under ``directory``, written once
    and reused by later runs (the name holds the shape)."""
    folder = os.path.join(directory, f"f{FEATURES}-c{CLASSES}-b{batch}")
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"part-{i:05d}.safetensors") for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    if missing:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(count * batch, FEATURES)).astype(np.float32)
        y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, count * batch)]
        for i in missing:
            s = slice(i * batch, (i + 1) * batch)
            DataSet(x[s], y[s]).save(paths[i] + ".tmp")
            os.replace(paths[i] + ".tmp", paths[i])
    return paths


def exchange_known(name: str) -> bool:
    """Whether ``ParameterAveraging`` accepts the exchange called ``name`` in this checkout."""
    try:
        ParameterAveraging(exchange=EXCHANGES[name]())
    except (KeyError, ValueError, TypeError):
        return False
    return True


def _round_record(r: Any, phases: Sequence[Any]) -> dict[str, Any]:
    """One round's figures as plain JSON (fields INSTR adds are read with defaults)."""
    by_phase: dict[str, list[float]] = {}
    for p in phases:
        if p.round == r.round and p.worker != "driver":
            by_phase.setdefault(p.phase, []).append(p.seconds)
    steps = getattr(r, "steps", ()) or ()
    return {
        "round": r.round,
        "wall_s": r.seconds,
        "broadcast_s": r.broadcast_s,
        "fit_s": r.fit_s,
        "aggregate_s": r.aggregate_s,
        "average_s": float(getattr(r, "average_s", 0.0)),
        "rest_s": r.seconds - r.fit_s,
        "distribute_bytes": int(getattr(r, "distribute_bytes", 0)),
        "aggregate_bytes": int(getattr(r, "aggregate_bytes", 0)),
        "steps": [
            {"name": s.name, "seconds": s.seconds, "bytes": s.bytes} for s in steps
        ],
        "workers": r.workers,
        "minibatches": r.minibatches,
        "worker_phases": by_phase,
    }


def measure_point(
    sc: Any,
    *,
    config: str,
    workers: int,
    size: str,
    frequency: int,
    exchange: str,
    rounds: int,
    files: Sequence[str],
    batch: int,
) -> dict[str, Any]:
    """One fit of ``1 + rounds`` rounds; the warm-up round is dropped, the rest recorded."""
    hidden = HIDDEN[size]
    need = (1 + rounds) * workers * frequency
    master = ParameterAveraging(
        batch_size_per_worker=batch,
        averaging_frequency=frequency,
        workers=workers,
        collect_stats=True,
        exchange=EXCHANGES[exchange](),
        shuffle=False,
        prefetch=0,
    )
    net = SparkNetwork(sc, make_network(hidden), master)
    start = time.perf_counter()
    net.fit_paths(list(files[:need]))
    total = time.perf_counter() - start
    stats = net.stats
    measured = [_round_record(r, stats.phases) for r in stats.rounds[1:]]
    return {
        "config": config,
        "master": sc.master,
        "workers": workers,
        "size": size,
        "parameters": n_parameters(hidden),
        "bytes": n_parameters(hidden) * BYTES_PER_PARAMETER,
        "frequency": frequency,
        "exchange": exchange,
        "batch": batch,
        "fit_wall_s": total,
        "warmup_wall_s": stats.rounds[0].seconds,
        "rounds": measured,
    }


def warm_up(sc: Any, workers: int, exchanges: Sequence[str], files: Sequence[str], batch: int,
            largest: str = "0.1M") -> None:
    """A small fit per exchange, so that Python workers and the JIT are warm before measuring;
    and, for the Spark exchange, one of the ``largest`` network: the executor JVMs' first rounds
    of 40 MB results ran 1.5x their later ones (heaps growing), past the one round each point
    drops."""
    fits = [(exchange, "0.1M") for exchange in exchanges]
    if "spark" in exchanges and largest != "0.1M":
        fits.append(("spark", largest))
    for exchange, size in fits:
        master = ParameterAveraging(
            batch_size_per_worker=batch, averaging_frequency=1, workers=workers,
            exchange=EXCHANGES[exchange](), shuffle=False,
        )
        SparkNetwork(sc, make_network(HIDDEN[size]), master).fit_paths(
            list(files[: 2 * workers])
        )


def point_rounds(args: argparse.Namespace, size: str, workers: int, frequency: int, files: int
                 ) -> int:
    """Measured rounds for one point: ``--rounds``, or :data:`SHORT_ROUNDS` for the smaller
    networks (not with ``--quick``), within what ``files`` minibatch files give after the
    warm-up round."""
    wanted = max(args.rounds, 0 if args.quick else SHORT_ROUNDS.get(size, 0))
    return max(1, min(wanted, files // (workers * frequency) - 1))


def _plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [
        {"size": size, "frequency": frequency, "exchange": exchange}
        for size in args.sizes
        for frequency in args.frequencies
        for exchange in args.exchanges  # innermost: drift in the machine's load hits all alike
    ]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_local(args: argparse.Namespace, config: str, workers: int, files: list[str]
                  ) -> list[dict[str, Any]]:
    """Every point on a fresh ``local[workers]`` session in this process."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from sparkbatch.spark import recommended_conf

    spark = (
        SparkSession.builder.master(f"local[{workers}]")
        .appName(f"sparkbatch-scaling-{config}")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.python.worker.reuse", "true")
        .config(map=recommended_conf())
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    points = []
    try:
        warm_up(spark.sparkContext, workers, args.exchanges, files, args.batch,
                largest=args.largest)
        for spec in _plan(args):
            rounds = point_rounds(args, spec["size"], workers, spec["frequency"],
                                  len(files))
            point = measure_point(
                spark.sparkContext, config=config, workers=workers, rounds=rounds,
                files=files, batch=args.batch, **spec,
            )
            _log(_point_line(point))
            points.append(point)
    finally:
        spark.stop()
    return points


_CLUSTER_SCRIPT = """
import json, sys
sys.path.insert(0, {bench!r})
import scaling
from cluster import cluster_session
sc = cluster_session().sparkContext
call = json.loads({call!r})
if call.pop("warm_up", False):
    scaling.warm_up(sc, **call)
    print(json.dumps(None))
else:
    print(json.dumps(scaling.measure_point(sc, **call)))
"""


def measure_cluster(args: argparse.Namespace, config: str, workers: int, files: list[str]
                    ) -> list[dict[str, Any]]:
    """Every point on one standalone cluster of ``workers`` one-core workers, through one
    long-lived driver process (tests/cluster.py's ClusterDriver)."""
    sys.path.insert(0, os.path.join(REPO_DIR, "tests"))
    try:
        from cluster import ClusterDriver, standalone_cluster
    finally:
        sys.path.pop(0)

    def script(call: dict[str, Any]) -> str:
        return _CLUSTER_SCRIPT.format(bench=BENCH_DIR, call=json.dumps(call))

    points = []
    started = time.perf_counter()
    with standalone_cluster(workers=workers, cores_per_worker=1, memory="2g") as cluster:
        conf = {
            "spark.cores.max": str(workers),
            "spark.executor.memory": "1g",
            "spark.driver.memory": "2g",
            "spark.task.maxFailures": "1",
        }
        driver = ClusterDriver(cluster, conf, timeout=180)
        try:
            _log(f"{config}: cluster and driver up in {time.perf_counter() - started:.1f} s")
            driver.run(script({
                "warm_up": True, "workers": workers, "exchanges": list(args.exchanges),
                "files": files, "batch": args.batch,
                "largest": args.largest,
            }), timeout=300)
            for spec in _plan(args):
                rounds = point_rounds(args, spec["size"], workers, spec["frequency"],
                                      len(files))
                call = {"config": config, "workers": workers, "rounds": rounds,
                        "files": files, "batch": args.batch, **spec}
                point = driver.run(script(call), timeout=600)
                _log(_point_line(point))
                points.append(point)
        finally:
            driver.close()
    return points


def _point_line(point: dict[str, Any]) -> str:
    walls = [r["wall_s"] for r in point["rounds"]]
    fits = [r["fit_s"] for r in point["rounds"]]
    return (
        f"{point['config']:>9} {point['exchange']:>9} {point['size']:>4} "
        f"f={point['frequency']:<2} wall {np.median(walls):.3f} s fit {np.median(fits):.3f} s "
        f"(warm-up round {point['warmup_wall_s']:.2f} s)"
    )


# ---------------------------------------------------------------------------------------------
# The cost model.


def _share(workers: int, cores: int) -> float:
    """How much slower each of ``workers`` busy processes runs on ``cores`` cores."""
    return max(1.0, workers / cores)


def _nnls(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Least squares with non-negative coefficients (scipy's NNLS where installed, else an
    active-set loop on numpy's lstsq), columns scaled to unit norm first; row i's residual is
    multiplied by ``weight[i]``."""
    if weight is not None:
        a, b = a * weight[:, None], b * weight
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    scaled = a / scale
    try:
        from scipy.optimize import nnls
    except ImportError:
        free = np.ones(a.shape[1], bool)
        while True:
            x = np.zeros(a.shape[1])
            x[free] = np.linalg.lstsq(scaled[:, free], b, rcond=None)[0]
            if (x >= 0).all() or not free.any():
                break
            free[np.argmin(np.where(free, x, np.inf))] = False
    else:
        x = nnls(scaled, b)[0]
    return x / scale


#: The non-fit terms of each exchange on this machine: name, unit and the feature's value
#: for P bytes of parameters per worker, N workers, the CPU share s = max(1, N/cores) and
#: k = 1 on a standalone cluster (executors in their own JVMs), 0 on local[N].
TERMS: dict[str, list[tuple[str, str, Any]]] = {
    "spark": [
        ("job", "s per round", lambda p, n, s, k: 1.0),
        ("worker_round", "s per round on each worker", lambda p, n, s, k: s),
        ("task", "s per worker, on the driver", lambda p, n, s, k: float(n)),
        ("worker_byte", "s per byte, on each worker", lambda p, n, s, k: p * s),
        ("driver_byte", "s per byte received by the driver", lambda p, n, s, k: p * n),
        ("cluster_byte", "s per byte received by the driver from executor JVMs, extra",
         lambda p, n, s, k: k * p * n),
        ("cluster_task", "s per worker, extra on a cluster (tasks launched in executor JVMs)",
         lambda p, n, s, k: k * float(n)),
    ],
    "socket": [
        ("round", "s per round", lambda p, n, s, k: 1.0),
        ("worker_round", "s per round on each worker", lambda p, n, s, k: s),
        ("message", "s per worker, on the driver", lambda p, n, s, k: float(n)),
        ("worker_byte", "s per byte, on each worker", lambda p, n, s, k: p * s),
        ("driver_byte", "s per byte received by the driver", lambda p, n, s, k: p * n),
        ("cluster_byte", "s per byte received by the driver from executor JVMs, extra",
         lambda p, n, s, k: k * p * n),
    ],
    "ring": [
        ("round", "s per round", lambda p, n, s, k: 1.0),
        ("worker_round", "s per round on each worker", lambda p, n, s, k: s),
        ("step", "s per ring step (grid_hops)", lambda p, n, s, k: float(grid_hops(n))),
        ("worker_byte", "s per byte sent by each worker",
         lambda p, n, s, k: 2.0 * (n - 1) / n * p * s),
        ("driver_byte", "s per byte averaged by the driver", lambda p, n, s, k: float(p)),
        ("cluster_byte", "s per byte sent by each worker from executor JVMs, extra",
         lambda p, n, s, k: k * 2.0 * (n - 1) / n * p * s),
    ],
}
# The bfloat16 transport: the same terms, per float32 byte summed. Its costs per byte are its
# own; those per round and per step are the same code's as float32's, and one fit over both
# exchanges' points finds them (at 2-4 workers the steps alone cannot tell them from the rest).
TERMS["ring-bf16"] = TERMS["ring"]
SHARED_TERMS = {"ring-bf16": ("ring", ("round", "worker_round", "step"))}


def _is_cluster(point: dict[str, Any]) -> float:
    return 0.0 if point["config"].startswith("local") else 1.0


def _median_round(point: dict[str, Any], key: str) -> float:
    return float(np.median([r[key] for r in point["rounds"]]))


def fit_model(points: Sequence[dict[str, Any]], cores: int) -> dict[str, Any]:
    """Fit the constants of the cost model to the measured points (per-round medians).

    Fitting, one least-squares fit over all points: ``fit_s = fit0[exchange] +
    fit_byte[exchange] x P x s + per_minibatch[size] x frequency x s`` (s = max(1,
    N/cores): N one-core workers share the machine's cores). Everything else of a round
    (``wall - fit``) is the exchange's :data:`TERMS`, one fit per exchange; the driver's
    averaging time (``average_s``, where measured) is fitted apart as ``average_byte x P`` and
    taken out first.
    """
    sizes = sorted({p["size"] for p in points}, key=lambda s: HIDDEN[s])
    exchanges = sorted({p["exchange"] for p in points})
    a = np.array([
        [float(p["exchange"] == x) for x in exchanges]
        + [p["bytes"] * _share(p["workers"], cores) * (p["exchange"] == x) for x in exchanges]
        + [p["frequency"] * _share(p["workers"], cores) * (p["size"] == s) for s in sizes]
        for p in points
    ])
    fits = np.array([_median_round(p, "fit_s") for p in points])
    # relative errors of the round's wall time are what count: rows weighted by 1 / wall
    weight = 1.0 / np.array([_median_round(p, "wall_s") for p in points])
    coef = _nnls(a, fits, weight)
    e = len(exchanges)
    model: dict[str, Any] = {
        "cores": cores,
        "batch": points[0]["batch"],
        "fit0": {x: float(c) for x, c in zip(exchanges, coef[:e], strict=True)},
        "fit_byte": {x: float(c) for x, c in zip(exchanges, coef[e:2 * e], strict=True)},
        "per_minibatch": {s: float(c) for s, c in zip(sizes, coef[2 * e:], strict=True)},
    }
    averages = np.array([_median_round(p, "average_s") for p in points])
    measured_avg = averages > 0
    if measured_avg.any():
        sel = [p for p, m in zip(points, measured_avg, strict=True) if m]
        model["average_byte"] = float(
            _nnls(np.array([[float(p["bytes"])] for p in sel]), averages[measured_avg],
                  1.0 / averages[measured_avg])[0]
        )
    else:
        model["average_byte"] = 0.0
    model["exchanges"] = {}
    joined = {SHARED_TERMS[x][0]: x for x in exchanges if x in SHARED_TERMS}
    for exchange in exchanges:
        if exchange in SHARED_TERMS and SHARED_TERMS[exchange][0] in exchanges:
            continue  # fitted with the exchange it shares terms with
        partner = joined.get(exchange)
        shared = SHARED_TERMS[partner][1] if partner else ()
        group = [exchange] + ([partner] if partner else [])
        # columns: the shared terms, then each exchange's own
        columns = [(None, name) for name in shared] + [
            (x, name) for x in group for name, _, _ in TERMS[x] if name not in shared
        ]
        sel = [p for p in points if p["exchange"] in group]
        features = {name: f for name, _, f in TERMS[exchange]}
        a = np.array([
            [
                features[name](p["bytes"], p["workers"], _share(p["workers"], cores),
                               _is_cluster(p)) if owner in (None, p["exchange"]) else 0.0
                for owner, name in columns
            ]
            for p in sel
        ])
        rest = np.array([_median_round(p, "rest_s") - _median_round(p, "average_s") for p in sel])
        coef = _nnls(a, rest, 1.0 / np.array([_median_round(p, "wall_s") for p in sel]))
        for x in group:
            model["exchanges"][x] = {
                name: float(c) for (owner, name), c in zip(columns, coef, strict=True)
                if owner in (None, x)
            }
    model["exchanges"] = {x: model["exchanges"][x] for x in exchanges}
    return model


def model_fit_s(model: dict[str, Any], exchange: str, size: str, frequency: int,
                share: float) -> float:
    """The model's seconds of the slowest worker's fitting in a round."""
    p = n_parameters(HIDDEN[size]) * BYTES_PER_PARAMETER
    return (
        model["fit0"][exchange] + model["fit_byte"][exchange] * p * share
        + model["per_minibatch"][size] * frequency * share
    )


def predict_local(model: dict[str, Any], point: dict[str, Any]) -> dict[str, float]:
    """The model's fit and wall seconds per round for a measured point's setting."""
    n, p, cores = point["workers"], point["bytes"], model["cores"]
    s = _share(n, cores)
    fit = model_fit_s(model, point["exchange"], point["size"], point["frequency"], s)
    coef = model["exchanges"][point["exchange"]]
    k = _is_cluster(point)
    rest = sum(coef[name] * f(p, n, s, k) for name, _, f in TERMS[point["exchange"]])
    rest += model["average_byte"] * p
    return {"fit_s": fit, "wall_s": fit + rest}


def predict_cluster(
    model: dict[str, Any], exchange: str, size: str, frequency: int, executors: int,
    gbits: float, latency: float = NETWORK_LATENCY_S, channels: int = 1,
) -> dict[str, float]:
    """Seconds per round on ``executors`` machines (one executor each, with its own cores) on
    a ``gbits`` Gbit/s full-duplex network: fitting, the rest, and the rest's share.

    The measured per-byte CPU costs stay; the wire time (bytes over the link's bandwidth) and
    ``latency`` per message are added where the exchange's topology puts them (see
    docs/scaling.md for the formulas). ``channels``: the ring's, whose CPU work per byte is
    taken as spread over that many cores (an assumption: measured here on one core each).
    """
    n = executors
    p = n_parameters(HIDDEN[size]) * BYTES_PER_PARAMETER
    wire = 1.0 / (gbits * 1e9 / 8 * TCP_PAYLOAD)  # seconds per byte of payload on one link
    fit = model_fit_s(model, exchange, size, frequency, 1.0)
    c = dict(model["exchanges"][exchange])
    # executors in their own JVMs, as on a standalone cluster here
    ring = exchange.startswith("ring")
    c["worker_byte" if ring else "driver_byte"] += c.get("cluster_byte", 0.0)
    c["task"] = c.get("task", 0.0) + c.get("cluster_task", 0.0)
    average = model["average_byte"] * p
    terms: dict[str, float]
    if exchange == "spark":
        # torrent broadcast: every executor receives P once, pipelined in blocks over a tree
        broadcast = p * wire + math.ceil(math.log2(n)) * (min(p, BROADCAST_BLOCK) * wire + latency)
        # treeAggregate(depth=2): a shuffle to f = ceil(sqrt(N)) partitions, then f results to
        # the driver; every receiver takes f results in over its link and adds them
        f = max(math.ceil(n ** 0.5), 2)
        terms = {
            "two stages per round": 2 * c["job"] + c["worker_round"],
            "task launches, N + f": c["task"] * (n + f),
            "CPU per byte, workers": c["worker_byte"] * p,
            "broadcast on the wire": broadcast,
            "treeAggregate, CPU per byte": 2 * f * p * c["driver_byte"],
            "treeAggregate on the wire": 2 * (f * p * wire + latency),
        }
    elif exchange == "socket":
        # star on the driver: N x P in and N x P out over the driver's link
        terms = {
            "per round": c["round"] + c["worker_round"],
            "per worker, on the driver": c["message"] * n,
            "CPU per byte, workers": c["worker_byte"] * p,
            "CPU per byte, driver (N x P)": c["driver_byte"] * n * p,
            "driver's link, 2 N x P": 2 * n * p * wire + 2 * latency,
        }
    elif ring:
        steps = grid_hops(n)
        moved = 2.0 * (n - 1) / n * p  # float32 bytes summed and passed on by each worker
        cpu = moved * c["worker_byte"] / channels
        on_wire = moved * wire * (0.5 if exchange == "ring-bf16" else 1.0)
        # The native passes receive, sum and send in one pipeline: the CPU's work and the
        # wire's overlap, and the longer of the two counts (bench/allreduce_network.py measured
        # this on shaped links; docs/scaling.md). Worker 0 sends the float32 sum to the driver
        # on a thread while the next round fits, and the driver averages it meanwhile: only
        # what outlasts that fit counts.
        terms = {
            "per round": c["round"] + c["worker_round"],
            "ring steps, software": steps * c["step"],
            "ring steps, network latency": steps * latency,
            f"all-reduce: CPU {cpu * 1e3:.0f} ms or wire {on_wire * 1e3:.0f} ms, the longer":
                max(cpu, on_wire),
            "sum to the driver and its averaging, beyond the next fit":
                c["driver_byte"] * p + max(0.0, p * wire + average - fit),
        }
    else:
        raise ValueError(f"no cost model for exchange {exchange!r}")
    if not ring:
        terms["driver's averaging"] = average
    rest = sum(terms.values())
    wall = fit + rest
    per_example = model["per_minibatch"][size] / model["batch"]
    # the smallest minibatch (fit time linear in examples) at which the rest is GOAL's share
    fixed = fit - model["per_minibatch"][size] * frequency
    need = rest * (1 - GOAL["share"]) / GOAL["share"] - fixed
    batch = max(1, math.ceil(need / (per_example * frequency))) if per_example > 0 else None
    return {
        "fit_s": fit, "rest_s": rest, "wall_s": wall, "rest_share": rest / wall,
        "batch_for_goal": batch, "terms": terms,
    }


# ---------------------------------------------------------------------------------------------
# Report and plots.


def report(data: dict[str, Any]) -> dict[str, Any]:
    """Print the fitted constants, the error on every point and the predictions."""
    points = data["points"]
    cores = data["meta"]["cores"]
    model = fit_model(points, cores)
    print(f"\n## Fitted constants ({len(points)} points, {cores} cores, batch {model['batch']})")
    for exchange in model["fit0"]:
        print(f"{exchange:>9} fit0 (per round)             "
              f"{model['fit0'][exchange] * 1e3:10.3f} ms")
        print(f"{exchange:>9} fit_byte (per byte)          "
              f"{model['fit_byte'][exchange] * 1e9:10.4f} ns")
    for size, c in model["per_minibatch"].items():
        print(f"per_minibatch[{size}] (1 core)          {c * 1e3:10.3f} ms")
    print(f"average_byte (driver's averaging)   {model['average_byte'] * 1e9:10.4f} ns/byte")
    for exchange, coef in model["exchanges"].items():
        for name, unit, _ in TERMS[exchange]:
            value = coef[name]
            shown = f"{value * 1e9:10.4f} ns" if "byte" in name else f"{value * 1e3:10.3f} ms"
            print(f"{exchange:>9} {name:<28} {shown}  ({unit})")

    print("\n## Model against measurement (per-round medians)")
    print("| config | exchange | size | freq | wall s | model s | error | fit s | model fit s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    worst: dict[str, tuple[float, str]] = {}
    errors = []
    for p in points:
        pred = predict_local(model, p)
        wall, fit = _median_round(p, "wall_s"), _median_round(p, "fit_s")
        err = pred["wall_s"] / wall - 1
        errors.append(err)
        p["model_wall_s"] = pred["wall_s"]
        print(
            f"| {p['config']} | {p['exchange']} | {p['size']} | {p['frequency']} | {wall:.3f} | "
            f"{pred['wall_s']:.3f} | {100 * err:+.1f} % | {fit:.3f} | {pred['fit_s']:.3f} |"
        )
        if 2 <= p["workers"] <= 4:
            key = p["exchange"]
            where = f"{p['config']} {p['size']} f={p['frequency']}"
            if abs(err) > abs(worst.get(key, (0.0, ""))[0]):
                worst[key] = (err, where)
    abs_err = np.abs(errors)
    print(
        f"\nerror over all {len(points)} points: median {100 * np.median(abs_err):.1f} %, "
        f"worst {100 * abs_err.max():.1f} %; within 25 %: {(abs_err <= 0.25).sum()}"
    )
    for exchange, (err, where) in sorted(worst.items()):
        print(f"worst at 2-4 workers, {exchange}: {100 * err:+.1f} % ({where})")
    print("\n| points | count | median error | worst | within 25 % |")
    print("|---|---:|---:|---:|---:|")
    groups = {
        "all": lambda p: True,
        "local[1]": lambda p: p["config"] == "local[1]",
        "local[2]": lambda p: p["config"] == "local[2]",
        "clusters of 2-4 workers": lambda p: p["config"].startswith("cluster"),
        "clusters of 2-4 workers, rounds of 50 ms or more": lambda p: (
            p["config"].startswith("cluster") and _median_round(p, "wall_s") >= 0.05),
    }
    for exchange in [None, *model["exchanges"]]:
        for name, keep in groups.items():
            sel = np.array([
                abs(e) for p, e in zip(points, errors, strict=True)
                if keep(p) and exchange in (None, p["exchange"])
            ])
            if len(sel):
                label = name if exchange is None else f"{exchange}, {name}"
                print(f"| {label} | {len(sel)} | {100 * np.median(sel):.1f} % | "
                      f"{100 * sel.max():.1f} % | {(sel <= 0.25).sum()} |")

    print("\n## Predicted rounds on a cluster (one executor per machine)")
    print(
        "Assumptions: fitting per minibatch as measured here on one core at the measured "
        f"minibatch size ({model['batch']} examples), no stragglers (every executor as fast), "
        "full-duplex links of the given bandwidth, "
        f"{NETWORK_LATENCY_S * 1e6:.0f} µs per message on top of the measured software cost, "
        "the measured CPU cost per byte kept and the wire time (TCP payload 1448 of 1514 "
        "bytes) added, but for the ring, whose pipeline overlaps them (the longer counts), "
        "Spark's treeAggregate(depth 2) as two levels of fan-in ceil(sqrt(N)), "
        "torrent broadcast pipelined in 4 MiB blocks."
    )
    predictions = []
    print("| exchange | size | freq | executors | Gbit/s | round s | fit s | outside fit | "
          f"batch for {100 * GOAL['share']:.0f} % |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for exchange in model["exchanges"]:
        for size in model["per_minibatch"]:
            for frequency in sorted({p["frequency"] for p in points}):
                for n in PREDICT_EXECUTORS:
                    for gbits in PREDICT_GBITS:
                        pred = predict_cluster(model, exchange, size, frequency, n, gbits)
                        pred.update(exchange=exchange, size=size, frequency=frequency,
                                    executors=n, gbits=gbits)
                        predictions.append(pred)
                        print(
                            f"| {exchange} | {size} | {frequency} | {n} | {gbits:g} | "
                            f"{pred['wall_s']:.3f} | {pred['fit_s']:.3f} | "
                            f"{100 * pred['rest_share']:.1f} % | {pred['batch_for_goal']} |"
                        )
    print("\n## Predicted share of the round outside fitting (round seconds in brackets)")
    columns = [(n, g) for n in PREDICT_EXECUTORS for g in PREDICT_GBITS]
    print("| exchange | size | freq | " + " | ".join(f"{n} x {g:g} Gbit/s" for n, g in columns)
          + " |")
    print("|---|---|---:|" + "---:|" * len(columns))
    by_key = {(p["exchange"], p["size"], p["frequency"], p["executors"], p["gbits"]): p
              for p in predictions}
    for exchange in model["exchanges"]:
        for size in model["per_minibatch"]:
            for frequency in sorted({p["frequency"] for p in points}):
                cells = []
                for n, g in columns:
                    p = by_key[exchange, size, frequency, n, g]
                    cells.append(f"{100 * p['rest_share']:.0f} % ({p['wall_s']:.3g})")
                print(f"| {exchange} | {size} | {frequency} | " + " | ".join(cells) + " |")
    goal = [
        p for p in predictions
        if p["executors"] == GOAL["executors"] and p["size"] == GOAL["size"]
        and p["frequency"] == GOAL["frequency"] and p["gbits"] == GOAL["gbits"]
    ]
    print(f"\n## The issue's goal: at most {100 * GOAL['share']:.0f} % outside fitting at "
          f"{GOAL['executors']} executors, {GOAL['size']} parameters, frequency "
          f"{GOAL['frequency']}, {GOAL['gbits']:g} Gbit/s")
    for p in goal:
        print(
            f"{p['exchange']:>9}: {100 * p['rest_share']:.1f} % outside fitting at batch "
            f"{model['batch']} (round {p['wall_s']:.3f} s); the goal is met from batch "
            f"{p['batch_for_goal']} (fitting time taken as linear in examples)"
        )
        if p["exchange"].startswith("ring"):
            two = predict_cluster(model, p["exchange"], GOAL["size"], GOAL["frequency"],
                                  GOAL["executors"], GOAL["gbits"], channels=2)
            print(f"{'':>9}  with channels=2, if each executor has 2 cores free while it "
                  f"averages: {100 * two['rest_share']:.1f} %")
    if goal:
        print("\n| exchange | term | ms per round |")
        print("|---|---|---:|")
    for p in goal:
        print(f"| {p['exchange']} | fitting ({GOAL['frequency']} minibatches) | "
              f"{p['fit_s'] * 1e3:.1f} |")
        for name, seconds in p["terms"].items():
            print(f"| {p['exchange']} | {name} | {seconds * 1e3:.1f} |")
    return {"model": model, "predictions": predictions}


def plot(data: dict[str, Any], fitted: dict[str, Any], path: str, prediction_path: str) -> None:
    """Measured round times beside the model's (``path``), and the predicted share of rounds
    outside fitting against executors (``prediction_path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, model = data["points"], fitted["model"]
    exchanges = list(model["exchanges"])
    sizes = list(model["per_minibatch"])
    frequencies = sorted({p["frequency"] for p in points})
    colors = dict(zip(frequencies, ["tab:blue", "tab:orange", "tab:green", "tab:red"],
                      strict=False))
    fig, axes = plt.subplots(len(exchanges), len(sizes), figsize=(4.2 * len(sizes),
                             3.2 * len(exchanges)), squeeze=False, sharex=True)
    for i, exchange in enumerate(exchanges):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            for frequency in frequencies:
                sel = [p for p in points if p["exchange"] == exchange and p["size"] == size
                       and p["frequency"] == frequency]
                if not sel:
                    continue
                color = colors[frequency]
                for p in sel:
                    marker = "s" if p["config"].startswith("local") else "o"
                    walls = [r["wall_s"] for r in p["rounds"]]
                    mid = float(np.median(walls))
                    ax.errorbar(
                        p["workers"] + (0.08 if marker == "o" else -0.08), mid,
                        yerr=[[mid - min(walls)], [max(walls) - mid]],
                        fmt=marker, color=color, ms=4, capsize=2,
                    )
                for config, ns, style in (("local[N]", [1, 2], "--"),
                                          ("cluster-N", [2, 3, 4], "-")):
                    model_walls = [
                        predict_local(model, {"workers": n, "bytes": sel[0]["bytes"],
                                              "size": size, "frequency": frequency,
                                              "exchange": exchange, "config": config})["wall_s"]
                        for n in ns
                    ]
                    label = f"frequency {frequency}" if style == "-" else None
                    ax.plot(ns, model_walls, style, color=color, lw=1, label=label)
            ax.set_yscale("log")
            ax.set_title(f"{exchange}, {size} parameters", fontsize=9)
            ax.set_xticks([1, 2, 3, 4])
            if i == len(exchanges) - 1:
                ax.set_xlabel("workers (square, dashed: local[N]; circle, line: cluster)",
                              fontsize=7)
            if j == 0:
                ax.set_ylabel("seconds per round")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Round time on this machine ({data['meta']['cores']} cores, batch "
                 f"{model['batch']}): measured (median, min-max) and the model (lines)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.4), squeeze=False,
                             sharey=True)
    styles = {1.0: ":", 10.0: "-", 25.0: "--"}
    ex_colors = {"spark": "tab:red", "socket": "tab:blue", "ring": "tab:green",
                 "ring-bf16": "tab:olive"}
    frequency = GOAL["frequency"] if GOAL["frequency"] in frequencies else frequencies[-1]
    ns = [4, 8, 16, 32, 64, 128, 256]
    for j, size in enumerate(sizes):
        ax = axes[0][j]
        for exchange in exchanges:
            for gbits in PREDICT_GBITS:
                shares = [100 * predict_cluster(model, exchange, size, frequency, n,
                                                gbits)["rest_share"] for n in ns]
                ax.plot(ns, shares, styles[gbits], color=ex_colors.get(exchange, "k"),
                        label=f"{exchange}, {gbits:g} Gbit/s")
        ax.axhline(100 * GOAL["share"], color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_ylim(0, 100)
        ax.set_title(f"{size} parameters, frequency {frequency}", fontsize=9)
        ax.set_xlabel("executors")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("% of the round outside fitting")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.suptitle(f"Predicted by the model (batch {model['batch']}, fitting as measured on one "
                 "core here)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(prediction_path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"which of {', '.join(CONFIGS)}")
    parser.add_argument("--sizes", default=",".join(HIDDEN), help="network sizes")
    parser.add_argument("--frequencies", default="1,5,20")
    parser.add_argument("--exchanges", default=None,
                        help=f"default: {','.join(EXCHANGES)} where this checkout has them")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per point")
    parser.add_argument("--batch", type=int, default=32, help="examples per minibatch")
    parser.add_argument("--cache", default=os.path.join("/tmp", "sparkbatch-scaling-data"),
                        help="folder of the minibatch files (kept for later runs)")
    parser.add_argument("--out", default=os.path.join("/tmp", "sparkbatch-scaling.json"))
    parser.add_argument("--from-json", help="refit and redraw saved points (several files: "
                        "comma-separated, their points together); measure nothing")
    parser.add_argument("--plot", default=os.path.join(REPO_DIR, "docs", "scaling.png"))
    parser.add_argument("--plot-prediction",
                        default=os.path.join(REPO_DIR, "docs", "scaling_prediction.png"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: local[2] and a 2-worker cluster, 0.1M, frequency 1 and "
                             "5, one measured round; draws nothing unless --plot is given")
    args = parser.parse_args(argv)

    if args.from_json:
        data = {}
        for path in args.from_json.split(","):
            with open(path) as f:
                more = json.load(f)
            if not data:
                data = more
            else:  # points of another run (e.g. one exchange measured later) join the first's
                data["points"] += more["points"]
                data["meta"].setdefault("merged", []).append(more["meta"])
    else:
        if args.quick:
            args.configs, args.sizes, args.frequencies, args.rounds = (
                "local[2],cluster-2", "0.1M", "1,5", 1)
            if "--plot" not in (argv if argv is not None else sys.argv):
                args.no_plot = True
        if args.exchanges is None:
            args.exchanges = ",".join(n for n in EXCHANGES if exchange_known(n))
        args.exchanges = args.exchanges.split(",")
        args.sizes = args.sizes.split(",")
        args.frequencies = [int(f) for f in args.frequencies.split(",")]
        configs = args.configs.split(",")
        for name in configs:
            if name not in CONFIGS:
                raise SystemExit(f"unknown config {name!r}: choose from {', '.join(CONFIGS)}")
        for size in args.sizes:
            if size not in HIDDEN:
                raise SystemExit(f"unknown size {size!r}: choose from {', '.join(HIDDEN)}")
        args.largest = max(args.sizes, key=HIDDEN.__getitem__)
        most = max(CONFIGS[c][1] for c in configs)
        files = write_files(args.cache, (1 + args.rounds) * most * max(args.frequencies),
                            args.batch)
        started = time.perf_counter()
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        data = {
            "meta": {
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "cores": os.cpu_count() or 1,
                "machine": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "versions": versions("sparkbatch", "pyspark", "numpy"),
                "load_before": load,
                "batch": args.batch,
                "rounds_measured": args.rounds,
                "short_rounds": {} if args.quick else SHORT_ROUNDS,
                "exchanges": args.exchanges,
                "command": " ".join(sys.argv),
            },
            "points": [],
        }
        _log(f"{len(files)} files of {args.batch} examples in {args.cache}; exchanges "
             f"{args.exchanges}; configs {configs}")
        for name in configs:
            kind, workers = CONFIGS[name]
            measure = measure_local if kind == "local" else measure_cluster
            data["points"] += measure(args, name, workers, files)
            with open("/proc/loadavg") as f:
                data["meta"].setdefault("load_after", {})[name] = f.read().split()[:3]
            with open(args.out, "w") as f:  # saved after every configuration
                json.dump(data, f, indent=1)
        data["meta"]["measure_s"] = time.perf_counter() - started
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
        print(f"measured {len(data['points'])} points in {data['meta']['measure_s']:.0f} s; "
              f"raw points in {args.out}")
    meta = data["meta"]
    print(f"{meta['date']}, {meta['cores']} cores, {meta['versions']}, load before "
          f"{' '.join(meta['load_before'])}, batch {meta['batch']}, "
          f"{meta['rounds_measured']} measured rounds per point after one warm-up round"
          + "".join(f", {n} for {size}" for size, n in meta.get("short_rounds", {}).items())
          + (" where the files allow" if meta.get("short_rounds") else ""))
    for name, load in meta.get("load_after", {}).items():
        print(f"load average (1, 5, 15 min) after {name}: {' '.join(load)}")
    for more in meta.get("merged", []):
        print(f"with the points of a run of {more['date']} ({', '.join(more['exchanges'])}; "
              f"load before {' '.join(more['load_before'])})")
    fitted = report(data)
    if not args.no_plot:
        plot(data, fitted, args.plot, args.plot_prediction)
        print(f"plots: {args.plot}, {args.plot_prediction}")


if __name__ == "__main__":
    main()
