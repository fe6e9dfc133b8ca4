"""All-reduce among processes on this machine: sparkbatch's ring against the alternatives.

``N`` processes (2, 3 and 4) each hold a float32 buffer of ``--elements`` values and sum them so
that every process ends with the sum, over loopback TCP:

* ``ring``: sparkbatch's :class:`~sparkbatch.train.ring.Ring` (what ``exchange="ring"`` runs),
  float32 on the wire, and ``ring bf16`` with ``transport="bfloat16"`` (half the bytes);
* ``gloo``: ``torch.distributed.all_reduce`` with the gloo backend (PyTorch's CPU collective
  library, a ring as well), on the same buffers as tensors;
* ``star``: what ``exchange="socket"`` does, without Spark: every process sends its buffer to
  process 0, which sums them as they arrive and sends the sum back to each.

Each is timed as the slowest process's seconds per all-reduce (a barrier before each), the
median of ``--repeat`` after one warm-up; ``algbw`` is the buffer's bytes over that time. On
one machine every process shares the same memory and cores (2 here): the figures compare the
implementations' costs, not a network's; docs/scaling.md models the network.

Run (unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE in this command only, see the env notes)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/allreduce.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import versions  # noqa: E402

sys.path.pop(0)

METHODS = ("ring", "ring bf16", "gloo", "star")


def _gather_through(barrier: Any, board: Any, rank: int, size: int):
    """A ``BarrierTaskContext.allGather`` stand-in over a manager's dict and a barrier."""

    def gather(message: str) -> list[str]:
        board[rank] = message
        barrier.wait()
        out = [board[r] for r in range(size)]
        barrier.wait()
        return out

    return gather


def _star(rank: int, size: int, gather: Any) -> Any:
    """The star's connections: process 0 accepts one from every other process."""
    if rank == 0:
        server = socket.create_server(("127.0.0.1", 0))
        gather(json.dumps(server.getsockname()[1]))
        conns = {}
        for _ in range(size - 1):
            conn, _ = server.accept()
            peer = int.from_bytes(conn.recv(4), "little")
            conns[peer] = conn
        server.close()
        return [conns[r] for r in sorted(conns)]
    port = json.loads(gather("0")[0])
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(rank.to_bytes(4, "little"))
    return conn


def _recv_into(conn: socket.socket, view: memoryview) -> None:
    while len(view):
        n = conn.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed")
        view = view[n:]


def _star_reduce(rank: int, conns: Any, buffer: np.ndarray, spare: np.ndarray) -> None:
    from sparkbatch import _native

    raw = memoryview(buffer).cast("B")
    if rank == 0:
        for conn in conns:  # summed on arrival, as the socket exchange's server does
            _recv_into(conn, memoryview(spare).cast("B"))
            _native.nn_add_into(buffer, spare)
        for conn in conns:
            conn.sendall(raw)
    else:
        conns.sendall(raw)
        _recv_into(conns, raw)


def _worker(rank: int, size: int, method: str, elements: int, repeat: int, shared: Any) -> None:
    barrier, board, results, port = shared
    from sparkbatch.train.ring import connect_ring

    gather = _gather_through(barrier, board, rank, size)
    data = np.random.default_rng(rank).standard_normal(elements).astype(np.float32)
    buffer = data.copy()
    times = []
    if method.startswith("ring"):
        transport = "bfloat16" if method == "ring bf16" else None
        with connect_ring(
            rank,
            size,
            gather,
            "bench",
            host="127.0.0.1",
            bind_host="127.0.0.1",
            transport=transport,
            piece_bytes=int(os.environ.get("RING_PIECE_BYTES", 1 << 20)),
        ) as ring:
            for _ in range(repeat + 1):
                np.copyto(buffer, data)
                barrier.wait()
                start = time.perf_counter()
                ring.all_reduce(buffer)
                times.append(time.perf_counter() - start)
    elif method == "gloo":
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size
        )
        tensor = torch.from_numpy(buffer)
        for _ in range(repeat + 1):
            np.copyto(buffer, data)
            barrier.wait()
            start = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - start)
        dist.destroy_process_group()
    else:
        conns = _star(rank, size, gather)
        spare = np.empty_like(buffer)
        for _ in range(repeat + 1):
            np.copyto(buffer, data)
            barrier.wait()
            start = time.perf_counter()
            _star_reduce(rank, conns, buffer, spare)
            times.append(time.perf_counter() - start)
    expected = sum(
        np.random.default_rng(r).standard_normal(elements).astype(np.float32) for r in range(size)
    )
    tolerance = 0.05 if method == "ring bf16" else 1e-4
    error = float(np.max(np.abs(buffer - expected))) if elements else 0.0
    results[rank] = (times[1:], error <= tolerance * size, error)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(size: int, method: str, elements: int, repeat: int) -> tuple[float, bool]:
    """Median over the runs of the slowest process's seconds, and whether every sum was right."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        shared = (ctx.Barrier(size), manager.dict(), manager.dict(), _free_port())
        procs = [
            ctx.Process(target=_worker, args=(r, size, method, elements, repeat, shared))
            for r in range(size)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(600)
        results = dict(shared[2])
    if len(results) != size:
        raise RuntimeError(f"{method} with {size} processes: a process failed")
    slowest = [max(results[r][0][i] for r in range(size)) for i in range(repeat)]
    return statistics.median(slowest), all(results[r][1] for r in range(size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--piece-kib", type=int, default=256, help="the ring's pieces")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    os.environ["RING_PIECE_BYTES"] = str(args.piece_kib << 10)  # read by the spawned processes
    print(versions("sparkbatch", "numpy", "torch"))
    print(f"{os.cpu_count()} cores; loopback TCP; float32; median of {args.repeat} after a warm-up")
    print(
        f"{'values':>10} {'N':>2} "
        + " ".join(f"{m + ' ms':>12}" for m in args.methods)
        + "   algbw GB/s ("
        + ", ".join(args.methods)
        + ")"
    )
    for elements in args.elements:
        for size in args.processes:
            row = {}
            for method in args.methods:
                seconds, right = measure(size, method, elements, args.repeat)
                if not right:
                    raise SystemExit(f"{method} with {size} processes: wrong sum")
                row[method] = seconds
            bw = ", ".join(f"{elements * 4 / row[m] / 1e9:.2f}" for m in args.methods)
            print(
                f"{elements:>10} {size:>2} "
                + " ".join(f"{row[m] * 1e3:>12.1f}" for m in args.methods)
                + f"   {bw}"
            )


if __name__ == "__main__":
    main()
