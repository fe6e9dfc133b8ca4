"""All-reduce over an emulated network: sparkbatch's ring among network namespaces.

docs/scaling.md predicts a cluster's round times from costs measured on loopback plus an assumed
network term, and adds the CPU's time and the wire's time serially. This checks that on a
network that has a bandwidth: ``N`` processes (2, 3 and 4), each in its own network namespace
(a "machine"), joined through a Linux bridge by one veth pair each, every machine's link shaped
to ``--gbits`` Gbit/s in both directions (full duplex: a token bucket on the egress of both ends
of its veth pair). Each process runs sparkbatch's ``connect_ring`` / ``all_reduce`` (what
``exchange="ring"`` runs; a 2 x 2 grid of rings at N = 4) over that network, its own
namespace's address as ``host``, on float32 buffers of ``--elements`` values, with the float32
and the ``"bfloat16"`` transports. Per setting it prints:

* ``measured``: the slowest process's seconds per all-reduce (a barrier before each: a
  one-value all-reduce on the same ring), the median of ``--repeat`` after one warm-up;
* ``wire``: what the model assumes the network costs, ``2 (N-1)/N x bytes / bandwidth`` (the
  grid sends the same bytes), with bytes 4 per value (2 with bfloat16);
* ``cpu``: the same all-reduce measured in the same run over the same namespaces, unshaped
  (the "none" rate, run first): what the processes cost without a bandwidth limit;
* ``serial = cpu + wire`` (docs/scaling.md's form) and ``overlap = max(cpu, wire)``, and the
  ratios measured / serial and measured / overlap. Where the ring's pipeline hides the CPU's
  work behind the wire's, measured / overlap approaches 1 and the serial model overestimates;
* ``cores``: the N processes' own CPU time (user and system, every thread) over the timed
  all-reduces, in cores, and ``N x rate``: the links' total rate against the rate one unshaped
  TCP stream reached here. The kernel moves every link's bytes through the veths and the bridge
  on this machine's cores: as ``N x rate`` nears 100 % the emulation runs out of CPU and the
  point measures this machine, not the network.

Shaping: ``tbf`` (token bucket filter) at the rate, with a bucket of ``--burst-kib`` (128 KiB)
and a queue of 10 ms at the rate. ``netem`` (rate and delay) is not built into this machine's
kernel (``CONFIG_NET_SCH_NETEM`` unset); htb shaped a stream as accurately as tbf at 1 and
4 Gbit/s, and tbf is one qdisc where htb needs a qdisc and a class. The bucket is what a link
sends unshaped after a pause, so it is kept small against the bytes a setting puts on a link
(1M float32 values among 2 machines: 4 MB, 3 %), but above a TSO/GSO packet (64 KiB), which tbf
would cut up: with 64 KiB a stream reached 67 % of 4 Gbit/s here, with 128 KiB 92-95 %, with
1 MiB no more. tbf counts whole frames, headers included, as a real link does: a TCP stream's
payload reaches at most 1448/1514 = 95.6 % of the rate at MTU 1500 (99.3 % at 9000; a real
Ethernet link's preamble and gap take a little more). Before the ring runs, one TCP stream of
``--stream-mb`` from machine 0 to machine 1 at each rate prints the emulation's accuracy and the
CPU its two processes used (their own user and system time) beside the whole machine's busy
share (everything else running on it included).

``--delay-ms`` adds that one-way latency (netem on each machine's uplink, tbf under it) and the
model ``steps x delay`` (``2 (N-1)`` steps on a ring, ``2 (w-1) + 2 (N/w-1)`` on a grid of
width w); it is refused where netem is missing, as on this machine.

The processes and the kernel's network work share this machine's cores (2 here): at N = 3 and 4
the processes take turns, and ``cpu`` and ``measured`` both include that.

Needs root (network namespaces and tc). Run (a few minutes; the namespaces, links and temporary
folder are removed at the end, on Ctrl-C and on SIGTERM)::

    .venv/bin/python bench/allreduce_network.py --out /tmp/sparkbatch-allreduce-network.json
    .venv/bin/python bench/allreduce_network.py --elements 100000 --repeat 2 --gbits 1  # ~20 s
    .venv/bin/python bench/allreduce_network.py --cleanup   # leftovers of a killed run (sbnet*)
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import versions  # noqa: E402

sys.path.pop(0)

#: Every namespace, link and temporary folder this benchmark makes starts with this.
PREFIX = "sbnet"
SUBNET = "10.213.0"  # machine i is SUBNET.(i + 1)/24, inside the namespaces only
BURST_KIB = 128  # tbf's bucket, by default (--burst-kib)
MIN_BURST_KIB = 64  # a GSO packet: smaller buckets make tbf cut every one
QUEUE_S = 10e-3  # tbf's queue, as latency at the rate
TRANSPORTS = ("float32", "bfloat16")
_REPO = Path(__file__).resolve().parent.parent


class Refused(Exception):
    """This machine cannot run the benchmark (not root, no netns, no tc qdisc): exit 2."""


def _cmd(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def _tc(namespace: str | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return _cmd("tc", *(["-n", namespace] if namespace else []), *argv, check=check)


def qdisc_text(gbits: float | None, delay_ms: float, burst: int) -> str:
    """The qdisc put on every shaped device, as words for the printout."""
    if gbits is None:
        return "none (the veths' default, noqueue; no delay either)"
    rate = gbits * 1e9 / 8
    text = (
        f"tbf rate {gbits:g}gbit burst {burst} bytes ({burst / rate * 1e3:.2f} ms at the "
        f"rate) limit {int(rate * QUEUE_S) + burst} bytes ({QUEUE_S * 1e3:g} ms more)"
    )
    return text + (f", under netem delay {delay_ms:g} ms on each uplink" if delay_ms else "")


class Network:
    """``machines`` network namespaces on one bridge, each by a veth pair: names unique to this
    run (``sbnet<4 hex>...``), everything removed by :meth:`down`, which is idempotent."""

    def __init__(self, machines: int, mtu: int) -> None:
        tag = secrets.token_hex(2)
        self.mtu = mtu
        self.bridge = f"{PREFIX}{tag}br"
        self.namespaces = [f"{PREFIX}{tag}m{i}" for i in range(machines)]
        self.outer = [f"{PREFIX}{tag}h{i}" for i in range(machines)]  # in the root namespace
        self.inner = [f"{PREFIX}{tag}n{i}" for i in range(machines)]  # in machine i
        self.ips = [f"{SUBNET}.{i + 1}" for i in range(machines)]
        self._made: list[tuple[str, str]] = []  # ("netns" | "link", name), in creation order

    def up(self) -> None:
        """Create the namespaces, the bridge and the veth pairs, addresses and MTU set."""
        try:
            _cmd("ip", "netns", "add", self.namespaces[0])
        except RuntimeError as e:
            raise Refused(f"cannot create a network namespace: {e}") from e
        self._made.append(("netns", self.namespaces[0]))
        for ns in self.namespaces[1:]:
            _cmd("ip", "netns", "add", ns)
            self._made.append(("netns", ns))
        _cmd("ip", "link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", self.bridge))
        _cmd("ip", "link", "set", self.bridge, "mtu", str(self.mtu), "up")
        for ns, outer, inner, ip in zip(self.namespaces, self.outer, self.inner, self.ips,
                                        strict=True):
            _cmd("ip", "link", "add", outer, "mtu", str(self.mtu), "type", "veth", "peer",
                 "name", inner, "mtu", str(self.mtu))
            self._made.append(("link", outer))
            _cmd("ip", "link", "set", inner, "netns", ns)
            _cmd("ip", "link", "set", outer, "master", self.bridge, "up")
            _cmd("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", inner)
            _cmd("ip", "-n", ns, "link", "set", inner, "up")
            _cmd("ip", "-n", ns, "link", "set", "lo", "up")

    def tcp_settings(self) -> dict[str, str]:
        """The TCP settings the rings run under, as machine 0's namespace has them."""
        names = ("net.ipv4.tcp_congestion_control", "net.ipv4.tcp_slow_start_after_idle",
                 "net.core.wmem_max", "net.core.rmem_max")
        paths = ["/proc/sys/" + n.replace(".", "/") for n in names]
        found = _cmd("ip", "netns", "exec", self.namespaces[0], "cat", *paths, check=False)
        values = found.stdout.split("\n")
        return {n.rsplit(".", 1)[1]: v.strip() for n, v in zip(names, values, strict=False)}

    def devices(self) -> list[tuple[str | None, str]]:
        """(namespace or None for the root one, device) of both ends of every machine's link."""
        return [
            dev for ns, outer, inner in zip(self.namespaces, self.outer, self.inner, strict=True)
            for dev in ((ns, inner), (None, outer))
        ]

    def shape(self, gbits: float | None, delay_ms: float = 0.0, burst: int = BURST_KIB << 10
              ) -> None:
        """Every link at ``gbits`` each way (None: unshaped), tbf's bucket ``burst`` bytes;
        ``delay_ms`` on each uplink.
        Fresh qdiscs, so that their drop counters start at zero."""
        for ns, dev in self.devices():
            _tc(ns, "qdisc", "del", "dev", dev, "root", check=False)
            delay = delay_ms if ns is not None else 0.0  # the uplink: the namespace's end
            parent = ["root"]
            if delay:
                _tc(ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay",
                    f"{delay * 1e3:.0f}us", "limit", "100000")
                parent = ["parent", "1:1", "handle", "10:"]
            if gbits is not None:
                rate = gbits * 1e9 / 8
                _tc(ns, "qdisc", "add", "dev", dev, *parent, "tbf", "rate", f"{gbits * 1e3:g}mbit",
                    "burst", str(burst), "limit", str(int(rate * QUEUE_S) + burst))

    def drops(self) -> int:
        """Packets dropped by every qdisc on the links since the last :meth:`shape`."""
        total = 0
        for ns, dev in self.devices():
            found = _tc(ns, "-s", "-j", "qdisc", "show", "dev", dev, check=False)
            with contextlib.suppress(ValueError):
                total += sum(int(q.get("drops", 0)) for q in json.loads(found.stdout or "[]"))
        return total

    def down(self) -> None:
        """Delete what :meth:`up` made (a namespace's end of a veth pair goes with it)."""
        for kind, name in reversed(self._made):
            if kind == "netns":
                _cmd("ip", "netns", "del", name, check=False)
            else:
                _cmd("ip", "link", "del", name, check=False)
        self._made.clear()


def cleanup_leftovers() -> list[str]:
    """Delete every namespace, link and temporary folder named ``sbnet*`` (a killed run's),
    ending the workers still running in those namespaces."""
    removed = []
    for line in _cmd("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            for pid in _cmd("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGTERM)  # a killed run's workers
                    removed.append(f"process {pid} in {name}")
            _cmd("ip", "netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for line in _cmd("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            _cmd("ip", "link", "del", name, check=False)
            removed.append(f"link {name}")
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}-*")):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"folder {path}")
    return removed


def check_machine(delay_ms: float) -> None:
    """Refuse (:class:`Refused`) unless root with ip and tc; tbf (and netem for a delay) are
    probed on a scratch veth pair."""
    if os.geteuid() != 0:
        raise Refused("needs root: network namespaces and tc qdiscs (run it with sudo)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise Refused(f"`{tool}` (iproute2) not found on PATH")
    probe = f"{PREFIX}{secrets.token_hex(2)}p"
    try:
        _cmd("ip", "link", "add", probe, "type", "veth", "peer", "name", probe + "x")
    except RuntimeError as e:
        raise Refused(f"cannot create a veth pair: {e}") from e
    try:
        try:
            _tc(None, "qdisc", "add", "dev", probe, "root", "tbf", "rate", "1gbit", "burst",
                str(BURST_KIB << 10), "latency", "10ms")
        except RuntimeError as e:
            raise Refused(f"tc cannot add a tbf qdisc (CONFIG_NET_SCH_TBF): {e}") from e
        if delay_ms:
            _tc(None, "qdisc", "del", "dev", probe, "root", check=False)
            try:
                _tc(None, "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms")
            except RuntimeError as e:
                raise Refused(
                    f"--delay-ms needs tc's netem qdisc, which this kernel lacks "
                    f"(CONFIG_NET_SCH_NETEM): {e}; run without --delay-ms"
                ) from e
    finally:
        _cmd("ip", "link", "del", probe, check=False)


# -- the processes in the namespaces -------------------------------------------------------------


def _write_json(path: Path, value: Any) -> None:
    """Written whole or not at all: the readers poll for the file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _wait_for(path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.002)


def file_gather(folder: Path, rank: int, size: int):
    """A ``BarrierTaskContext.allGather`` stand-in through files in ``folder`` (the namespaces
    share the file system, not a network with the root namespace): each call writes this
    rank's message and waits for every rank's."""
    calls = [0]

    def gather(message: str) -> list[str]:
        call = calls[0]
        calls[0] += 1
        _write_json(folder / f"gather{call}-{rank}.json", message)
        out = []
        for r in range(size):
            path = folder / f"gather{call}-{r}.json"
            _wait_for(path)
            out.append(json.loads(path.read_text()))
        return out

    return gather


def _values(elements: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank ``rank``'s buffer and the base it is made of: multiples of 1/256 below 1 in
    magnitude, so that float32 sums of up to 4 of them are exact in any order."""
    base = ((np.arange(elements, dtype=np.int64) % 256) - 128).astype(np.float32) / 256
    return base + np.float32(rank / 8), base


def ring_worker(args: argparse.Namespace) -> None:
    """One process of the ring: every (elements, transport) setting in turn, its times written
    to ``result-<rank>.json``."""
    from sparkbatch.train.ring import connect_ring

    folder = Path(args.dir)
    rank, size = args.rank, args.size
    gather = file_gather(folder, rank, size)
    tick = np.zeros(1, np.float32)
    points = []
    for elements in args.elements:
        data, base = _values(elements, rank)
        expected = base * np.float32(size) + np.float32(sum(range(size)) / 8)  # exact
        del base
        buffer = np.empty_like(data)
        for transport in args.transports:
            times, cpu_times = [], []
            with connect_ring(
                rank, size, gather, "sbnet", host=args.host, bind_host=args.host,
                piece_bytes=args.piece_kib << 10,
                transport=None if transport == "float32" else transport,
                channels=args.channels,
            ) as ring:
                for _ in range(args.repeat + 1):
                    np.copyto(buffer, data)
                    ring.all_reduce(tick)  # the barrier: every process is here
                    start, cpu_start = time.perf_counter(), time.process_time()
                    ring.all_reduce(buffer)
                    times.append(time.perf_counter() - start)
                    cpu_times.append(time.process_time() - cpu_start)
            error = float(np.max(np.abs(buffer - expected)))
            # float32: exact; bfloat16: at most one rounding per hop and one of the sum
            tolerance = 0.0 if transport == "float32" else 0.01 * size
            points.append({
                "elements": elements, "transport": transport, "times": times[1:],
                "cpu_times": cpu_times[1:], "max_error": error, "right": error <= tolerance,
            })
    _write_json(folder / f"result-{rank}.json", points)


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (not per namespace)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def stream_receiver(args: argparse.Namespace) -> None:
    """Take one TCP stream to its end; write its bytes, seconds from the first byte and the
    machine's busy share meanwhile to ``stream.json``."""
    folder = Path(args.dir)
    server = socket.create_server((args.host, 0))
    _write_json(folder / "stream-port.json", server.getsockname()[1])
    server.settimeout(120)
    conn, _ = server.accept()
    server.close()
    buf = bytearray(1 << 20)
    got, start, cpu0 = 0, 0.0, (0, 0)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            break
        if got == 0:
            start, cpu0, own0 = time.perf_counter(), _cpu_jiffies(), time.process_time()
        got += n
    seconds = time.perf_counter() - start
    cpu1, own = _cpu_jiffies(), time.process_time() - own0
    busy = (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])
    _write_json(folder / "stream.json", {
        "bytes": got, "seconds": seconds, "machine_busy": busy, "receiver_cpu_s": own,
    })


def stream_sender(args: argparse.Namespace) -> None:
    """Send ``--stream-mb`` MB to the receiver at ``--host`` as fast as TCP goes."""
    folder = Path(args.dir)
    _wait_for(folder / "stream-port.json")
    port = json.loads((folder / "stream-port.json").read_text())
    block = bytes(1 << 20)
    with socket.create_connection((args.host, port), timeout=120) as conn:
        own0 = time.process_time()
        for _ in range(max(1, round(args.stream_mb * 1e6 / len(block)))):
            conn.sendall(block)
    _write_json(folder / "stream-send.json", {"sender_cpu_s": time.process_time() - own0})


# -- the parent: setup, runs, the model ---------------------------------------------------------

_LIVE: list[subprocess.Popen] = []  # the workers now running, ended in a finally


def _spawn(namespace: str, folder: Path, name: str, *argv: str) -> subprocess.Popen:
    log = open(folder / f"log-{name}.txt", "wb")  # noqa: SIM115  (closed by _wait)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, os.path.abspath(__file__), *argv],
        stdout=log, stderr=subprocess.STDOUT, cwd=_REPO,
    )
    proc.log = log  # type: ignore[attr-defined]
    _LIVE.append(proc)
    return proc


def _end(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.log.close()  # type: ignore[attr-defined]
        if p in _LIVE:
            _LIVE.remove(p)


def _wait(procs: list[subprocess.Popen], folder: Path, what: str, timeout_s: float) -> None:
    """Wait for every worker; the first that fails (or the timeout) ends the others and
    raises with its output's tail."""
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        bad = [(i, p) for i, p in enumerate(procs) if p.poll() != 0]
        if bad:
            states = ", ".join(
                f"worker {i} " + (f"exit {p.returncode}" if p.poll() is not None
                                  else "timed out" if time.monotonic() > deadline
                                  else "still running, ended")
                for i, p in bad
            )
            logs = [Path(p.log.name).read_text(errors="replace") for _, p in bad]  # type: ignore[attr-defined]
            tail = next((log for log in logs if log.strip()), "(no output)")[-2000:]
            raise RuntimeError(f"{what} failed ({states}); the first output ends:\n{tail}")
    finally:
        _end(procs)


def measure_stream(net: Network, folder: Path, mb: float, timeout_s: float) -> dict[str, Any]:
    """One TCP stream from machine 0 to machine 1 under the links' present shaping."""
    sub = Path(tempfile.mkdtemp(prefix="stream", dir=folder))
    procs = [
        _spawn(net.namespaces[1], sub, "recv", "--worker", "stream-recv", "--dir", str(sub),
               "--host", net.ips[1]),
        _spawn(net.namespaces[0], sub, "send", "--worker", "stream-send", "--dir", str(sub),
               "--host", net.ips[1], "--stream-mb", str(mb)),
    ]
    _wait(procs, sub, "the TCP stream check", timeout_s)
    return {**json.loads((sub / "stream.json").read_text()),
            **json.loads((sub / "stream-send.json").read_text())}


def measure_ring(net: Network, folder: Path, size: int, args: argparse.Namespace
                 ) -> list[dict[str, Any]]:
    """Every (elements, transport) setting on ``size`` machines: the slowest process's
    seconds per all-reduce, median over the repeats, and whether every sum was right."""
    sub = Path(tempfile.mkdtemp(prefix=f"ring{size}-", dir=folder))
    common = ["--worker", "ring", "--dir", str(sub), "--size", str(size),
              "--repeat", str(args.repeat), "--piece-kib", str(args.piece_kib),
              "--channels", str(args.channels), "--elements", *map(str, args.elements),
              "--transports", *args.transports]
    procs = [
        _spawn(net.namespaces[r], sub, f"rank{r}", *common, "--rank", str(r),
               "--host", net.ips[r])
        for r in range(size)
    ]
    _wait(procs, sub, f"the ring of {size}", args.timeout)
    ranks = [json.loads((sub / f"result-{r}.json").read_text()) for r in range(size)]
    out = []
    for i, point in enumerate(ranks[0]):
        slowest = [max(rank[i]["times"][k] for rank in ranks) for k in range(args.repeat)]
        busy = sum(sum(rank[i]["cpu_times"]) for rank in ranks)
        out.append({
            "elements": point["elements"], "transport": point["transport"],
            "seconds": statistics.median(slowest), "slowest_per_repeat": slowest,
            # the processes' own CPU (user + system, every thread) over the timed all-reduces
            "cores_busy": busy / max(sum(slowest), 1e-9),
            "right": all(rank[i]["right"] for rank in ranks),
            "max_error": max(rank[i]["max_error"] for rank in ranks),
        })
    return out


def model(size: int, elements: int, transport: str, gbits: float, cpu_s: float,
          delay_ms: float) -> dict[str, float]:
    """docs/scaling.md's wire time of one all-reduce and the two ways of adding the CPU's."""
    from sparkbatch.train.ring import grid_hops

    nbytes = elements * (4 if transport == "float32" else 2)
    wire = 2 * (size - 1) / size * nbytes / (gbits * 1e9 / 8)
    latency = grid_hops(size) * delay_ms * 1e-3
    return {
        "wire_s": wire, "latency_s": latency,
        "serial_s": cpu_s + wire + latency, "overlap_s": max(cpu_s, wire) + latency,
    }


def _commit() -> str:
    found = _cmd("git", "-C", str(_REPO), "rev-parse", "--short", "HEAD", check=False)
    commit = found.stdout.strip() or "unknown"
    dirty = _cmd("git", "-C", str(_REPO), "status", "--porcelain", "--", "python", "csrc",
                 check=False).stdout.strip()
    return commit + (" + uncommitted changes in python/ or csrc/" if dirty else "")


def _label(gbits: float | None) -> str:
    return "none" if gbits is None else f"{gbits:g}"


def _parse_rates(values: list[str]) -> list[float | None]:
    rates: list[float | None] = [None]  # unshaped first: the CPU-only times the model needs
    for v in values:
        if v.lower() == "none":
            continue
        try:
            rate = float(v)
        except ValueError:
            raise SystemExit(f"--gbits takes numbers or 'none', got {v!r}") from None
        if rate <= 0:
            raise SystemExit(f"--gbits must be positive, got {v!r}")
        rates.append(rate)
    return rates


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set the network up, measure every rate, print as it goes; the network is removed in a
    finally (also on SIGINT and SIGTERM)."""
    rates = _parse_rates(args.gbits)
    burst = args.burst_kib << 10
    check_machine(args.delay_ms)
    header = (
        f"python {platform.python_version()}, {versions('numpy', 'sparkbatch')}, "
        f"sparkbatch commit {_commit()}, kernel {platform.release()}"
    )
    cores = os.cpu_count() or 1
    print(header)
    print(
        f"{max(args.processes)} network namespaces on a bridge, veth pairs, MTU {args.mtu}; "
        f"each link shaped each way by tbf: a bucket of {args.burst_kib} KiB, a queue of "
        f"{QUEUE_S * 1e3:g} ms at the rate"
        + (f", netem delay {args.delay_ms:g} ms on each uplink" if args.delay_ms else "")
    )
    print(
        f"caveat: {cores} cores; processes beyond {cores} take turns on them, and the "
        "veths, the bridge and tc run on the same cores (see the stream's CPU share)"
    )
    print(f"median of {args.repeat} after a warm-up, slowest process; cpu = the unshaped run; "
          f"pieces of {args.piece_kib} KiB, {args.channels} channel(s)")
    result: dict[str, Any] = {
        "versions": header, "cores": cores, "mtu": args.mtu, "delay_ms": args.delay_ms,
        "repeat": args.repeat, "piece_kib": args.piece_kib, "channels": args.channels,
        "burst_bytes": burst,
        "streams": [], "points": [],
        "qdisc": {_label(g): qdisc_text(g, args.delay_ms, burst) for g in rates},
    }
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    net = Network(max(max(args.processes), 2), args.mtu)
    started = time.perf_counter()
    try:
        net.up()
        result["tcp"] = net.tcp_settings()
        print("TCP in the namespaces: " + ", ".join(f"{k} {v}" for k, v in result["tcp"].items()))
        print(f"note: a link sends its bucket ({args.burst_kib} KiB) unshaped after a pause: "
              "buffers that put not much more than that on a link come out faster than the rate")
        print("columns: cores = the N processes' own CPU (user + system) over the timed "
              "all-reduces, in cores; N x rate = the links' total rate against what one "
              "unshaped stream reached here (near 100 %: the emulation runs out of CPU)")
        cpu: dict[tuple[int, int, str], float] = {}
        capacity = None  # Gbit/s of one unshaped stream: what the kernel here moves at most
        for gbits in rates:
            net.shape(gbits, args.delay_ms if gbits is not None else 0.0, burst)
            label = _label(gbits)
            print(f"\n== {label} Gbit/s: {qdisc_text(gbits, args.delay_ms, burst)}; "
                  f"load average {os.getloadavg()[0]:.1f}")
            if args.stream_mb > 0:
                s = measure_stream(net, folder, args.stream_mb, args.timeout)
                achieved = s["bytes"] * 8 / s["seconds"] / 1e9
                target = (f"{achieved / gbits * 100:.1f} % of the target"
                          if gbits is not None else "unshaped")
                print(f"TCP stream machine 0 -> 1: {s['bytes'] / 1e6:.0f} MB at {achieved:.3f} "
                      f"Gbit/s payload ({target}); CPU: sender "
                      f"{s['sender_cpu_s'] / s['seconds']:.2f} + receiver "
                      f"{s['receiver_cpu_s'] / s['seconds']:.2f} cores, whole machine "
                      f"{s['machine_busy'] * 100:.0f} % busy")
                result["streams"].append({"gbits": gbits, "achieved_gbits": achieved, **s})
                if gbits is None:
                    capacity = achieved
            print(f"{'N':>2} {'values':>9} {'transport':>9} {'measured ms':>11} {'wire ms':>8} "
                  f"{'cpu ms':>7} {'serial ms':>9} {'overlap ms':>10} {'/serial':>7} "
                  f"{'/overlap':>8} {'algbw GB/s':>10} {'cores':>5} {'N x rate':>8}")
            for size in args.processes:
                for p in measure_ring(net, folder, size, args):
                    if not p["right"]:
                        raise RuntimeError(
                            f"wrong sum: N={size}, {p['elements']} values, {p['transport']}, "
                            f"{label} Gbit/s (max error {p['max_error']})"
                        )
                    key = (size, p["elements"], p["transport"])
                    seconds = p["seconds"]
                    point = {"processes": size, "gbits": gbits, **p}
                    row = (f"{size:>2} {p['elements']:>9} {p['transport']:>9} "
                           f"{seconds * 1e3:>11.2f}")
                    if gbits is None:
                        cpu[key] = seconds
                        row += f" {'-':>8} {'-':>7} {'-':>9} {'-':>10} {'-':>7} {'-':>8}"
                    else:
                        m = model(size, p["elements"], p["transport"], gbits, cpu[key],
                                  args.delay_ms)
                        point.update(m, cpu_s=cpu[key],
                                     measured_over_serial=seconds / m["serial_s"],
                                     measured_over_overlap=seconds / m["overlap_s"])
                        row += (f" {m['wire_s'] * 1e3:>8.2f} {cpu[key] * 1e3:>7.2f} "
                                f"{m['serial_s'] * 1e3:>9.2f} {m['overlap_s'] * 1e3:>10.2f} "
                                f"{point['measured_over_serial']:>7.2f} "
                                f"{point['measured_over_overlap']:>8.2f}")
                    row += f" {p['elements'] * 4 / seconds / 1e9:>10.2f} {p['cores_busy']:>5.2f}"
                    if gbits is not None and capacity:
                        point["links_over_capacity"] = size * gbits / capacity
                        row += f" {point['links_over_capacity']:>8.0%}"
                    print(row, flush=True)
                    result["points"].append(point)
            drops = net.drops()
            result.setdefault("drops", {})[label] = drops
            if drops:
                print(f"(the links' qdiscs dropped {drops} packets at {label} Gbit/s)")
    finally:  # a second Ctrl-C must not cut the teardown short
        masked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            _end(list(_LIVE))
            net.down()
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, masked)
    print(f"\n{time.perf_counter() - started:.0f} s; algbw = the buffer's float32 bytes / "
          "measured; wire = 2 (N-1)/N x bytes / rate")
    return result


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--gbits", nargs="+", default=["1", "2", "4"],
                        help="link rates in Gbit/s; 'none' (unshaped) is always run first")
    parser.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=TRANSPORTS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--piece-kib", type=int, default=256, help="the ring's pieces")
    parser.add_argument("--channels", type=int, default=1,
                        help="rings each all-reduce is split over (connect_ring(channels=...))")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--burst-kib", type=int, default=BURST_KIB,
                        help="tbf's bucket: what a link sends unshaped after a pause")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="one-way latency added on each machine's uplink (needs netem)")
    parser.add_argument("--stream-mb", type=float, default=250,
                        help="the TCP stream check's size per rate (0: skip it)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per set of workers")
    parser.add_argument("--out", help="write every point as JSON here")
    parser.add_argument("--cleanup", action="store_true",
                        help="delete leftovers of a killed run (sbnet* namespaces, links, folders)")
    # what the parent passes to the processes it starts in the namespaces
    parser.add_argument("--worker", choices=("ring", "stream-recv", "stream-send"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        {"ring": ring_worker, "stream-recv": stream_receiver,
         "stream-send": stream_sender}[args.worker](args)
        return
    if args.cleanup:
        if os.geteuid() != 0:
            print("--cleanup needs root", file=sys.stderr)
            sys.exit(2)
        removed = cleanup_leftovers()
        print("\n".join(removed) if removed else "nothing to clean up")
        return
    if min(args.processes) < 2 or args.repeat < 1 or args.mtu < 576:
        parser.error("--processes of at least 2, --repeat of at least 1, --mtu of at least 576")
    if args.burst_kib < MIN_BURST_KIB:
        parser.error(f"--burst-kib of at least {MIN_BURST_KIB} (a GSO packet), got "
                     f"{args.burst_kib}")
    signal.signal(signal.SIGTERM, _on_signal)  # SIGINT raises KeyboardInterrupt already
    try:
        result = run(args)
    except Refused as e:
        print(f"allreduce_network: {e}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:  # a command or a worker failed; the network is removed already
        print(f"allreduce_network: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({str(e) or 'SIGINT'}); the network was removed", file=sys.stderr)
        sys.exit(130)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"points written to {args.out}")


if __name__ == "__main__":
    main()
