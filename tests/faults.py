"""Fault injection for reliability tests: an HTTP proxy on 127.0.0.1 that breaks on command.

:class:`FaultProxy` sits between a client (s3fs/botocore) and a real HTTP server (the moto S3
server of ``tests/conftest.py``) and forwards every request unless a switch says otherwise:

* ``fail(n, status=503)``: answer the next ``n`` matching requests with an S3-style XML error
  (``ServiceUnavailable`` for 503, ``InternalError`` for 500, or the ``code`` given); the request
  never reaches the server;
* ``reset(n)``: read the next ``n`` matching requests, then reset the connection (RST) without
  answering;
* ``truncate(n)``: forward the next ``n`` matching requests but send back only half of the
  response body, then reset the connection;
* ``drop(n)``: forward the next ``n`` matching requests (the server acts on them) but reset
  the connection instead of answering, as when an answer is lost on the way;
* ``delay(seconds, n)``: hold the next ``n`` matching requests (``n=None``: all of them, until
  :meth:`clear`) before forwarding them;
* ``stop()`` / ``resume()``: close the listening socket and every open connection (a stopped
  server: new connections are refused) and listen on the same port again; ``stop_at(...)``
  stops when a matching request comes (which is not answered).

Every switch takes ``method`` ("PUT", "GET", ...), ``path`` (a substring of the request path)
and ``after`` (let that many matching requests through first), so a fault can be placed
deterministically "in the middle" of an export: ``proxy.fail(3, method="PUT", path="part-",
after=4)`` fails the fifth to seventh uploads of minibatch files. :attr:`FaultProxy.log`
records ``(method, path, action)`` for every request seen, so tests can count retries.

The proxy understands just enough HTTP/1.1: requests with ``Content-Length`` or chunked bodies,
``Expect: 100-continue`` (answered by the proxy itself), responses framed by length, chunks or
connection close, and keep-alive. Each client connection has one thread (at most
``max_connections`` at once; more are reset) and one upstream connection; sockets time out
after ``io_timeout`` seconds, so no thread outlives a test by long.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FaultProxy",
    "KillAt",
    "KillingLoader",
    "claim",
    "claimed",
    "executor_pid",
    "proxied_options",
    "upstream_of",
]

HOST = "127.0.0.1"
_HEAD_LIMIT = 64 * 1024
_REQUESTS_PER_CONNECTION = 100_000
_LOG_LIMIT = 100_000
_ERROR_CODES = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable"}
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class _Closed(Exception):
    """The peer closed the connection (or a socket failed): end this connection's thread."""


@dataclass
class _Rule:
    action: str  # "fail", "reset", "truncate", "drop", "delay", "stop"
    remaining: int | None  # None: until cleared
    method: str | None
    path: str | None
    skip: int
    status: int = 503
    code: str = ""
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path in path
        )


@dataclass
class _Request:
    method: str
    path: str
    head: bytes  # request line and headers, as forwarded (Expect removed)
    body: bytes
    keep_alive: bool
    headers: dict[str, str] = field(default_factory=dict)


def _rst(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset instead of an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Reader:
    """Buffered reads of HTTP framing from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except OSError as e:
            raise _Closed(str(e)) from None
        if not chunk:
            raise _Closed("closed by the peer")
        self.buffer += chunk

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > _HEAD_LIMIT:
                raise _Closed("head too long")
            self._fill()
        end = self.buffer.index(b"\r\n\r\n") + 4
        head, self.buffer = self.buffer[:end], self.buffer[end:]
        return head

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > _HEAD_LIMIT:
                raise _Closed("line too long")
            self._fill()
        end = self.buffer.index(b"\r\n") + 2
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def chunked(self) -> bytes:
        """A chunked body, raw (sizes, data and trailers), to forward as it came."""
        out = []
        while True:
            size_line = self.line()
            out.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = self.line()
                    out.append(trailer)
                    if trailer == b"\r\n":
                        return b"".join(out)
            out.append(self.exactly(size + 2))

    def until_close(self) -> bytes:
        data = self.buffer
        self.buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return data
            if not chunk:
                return data
            data += chunk


def _parse_headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _body(reader: _Reader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return reader.chunked()
    return reader.exactly(int(headers.get("content-length", "0") or 0))


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (``(host, port)``) with fault switches.

    Use as a context manager; :attr:`endpoint_url` is what clients connect to. See the module's
    docstring for the switches.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        max_connections: int = 64,
        io_timeout: float = 60.0,
    ) -> None:
        self.upstream = upstream
        self.max_connections = max_connections
        self.io_timeout = io_timeout
        self.log: list[tuple[str, str, str]] = []
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._life = threading.RLock()  # start, stop and close, from tests or serving threads
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._closed = False
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.port = 0

    # -- life cycle -----------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        """Listen (on a free port the first time, on the same port after :meth:`stop`)."""
        with self._life:
            self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(128)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._listener = listener
        self._accepting = threading.Thread(
            target=self._accept_loop, args=(listener,), name="fault-proxy-accept", daemon=True
        )
        self._accepting.start()

    def stop(self) -> None:
        """Act as a stopped server: refuse new connections and drop every open one."""
        with self._life:
            self._stopping.set()
            if self._accepting is not None:
                self._accepting.join(timeout=5)
                self._accepting = None
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            with self._lock:
                clients = list(self._clients)
            for client in clients:  # their threads, woken, close them (with a reset)
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        """Listen again on the same port after :meth:`stop`."""
        with self._life:
            if self._listener is None:
                self.start()

    def close(self) -> None:
        self._closed = True
        self._closing.set()
        self.stop()
        for thread in self._threads:
            thread.join(timeout=self.io_timeout)

    # -- switches -------------------------------------------------------------------------------

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def fail(
        self,
        count: int,
        status: int = 503,
        *,
        code: str | None = None,
        method: str | None = None,
        path: str | None = None,
        after: int = 0,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` and an S3 XML error."""
        self._add(
            _Rule(
                "fail",
                count,
                method,
                path,
                after,
                status=status,
                code=code or _ERROR_CODES.get(status, "InternalError"),
            )
        )

    def reset(
        self, count: int, *, method: str | None = None, path: str | None = None, after: int = 0
    ) -> None:
        """Reset the connection of the next ``count`` matching requests without answering."""
        self._add(_Rule("reset", count, method, path, after))

    def truncate(
        self, count: int, *, method: str | None = None, path: str | None = None, after: int = 0
    ) -> None:
        """Send half the response body of the next ``count`` matching requests, then reset."""
        self._add(_Rule("truncate", count, method, path, after))

    def drop(
        self, count: int, *, method: str | None = None, path: str | None = None, after: int = 0
    ) -> None:
        """Forward the next ``count`` matching requests, then reset instead of answering."""
        self._add(_Rule("drop", count, method, path, after))

    def stop_at(self, *, method: str | None = None, path: str | None = None, after: int = 0):
        """Stop (see :meth:`stop`) when the next matching request comes, leaving it unanswered."""
        self._add(_Rule("stop", 1, method, path, after))

    def delay(
        self,
        seconds: float,
        count: int | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        after: int = 0,
    ) -> None:
        """Hold the next ``count`` matching requests (None: every one) ``seconds`` each."""
        self._add(_Rule("delay", count, method, path, after, seconds=seconds))

    def clear(self) -> None:
        """Remove every switch still pending."""
        with self._lock:
            self._rules.clear()

    def actions(self, action: str | None = None, method: str | None = None) -> list[str]:
        """Paths of logged requests, optionally only those with ``action`` and ``method``."""
        with self._lock:
            return [
                p
                for m, p, a in self.log
                if (action is None or a == action) and (method is None or m == method)
            ]

    def _decide(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            chosen = None
            for rule in self._rules:
                if not rule.matches(method, path):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                chosen = rule
                if rule.remaining is not None:
                    rule.remaining -= 1
                break
            self._rules = [r for r in self._rules if r.remaining is None or r.remaining > 0]
            action = chosen.action if chosen else "forward"
            if len(self.log) < _LOG_LIMIT:
                self.log.append((method, path, action))
            return chosen

    # -- serving --------------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                busy = len(self._threads) >= self.max_connections or self._closed
                if not busy:
                    self._clients.add(client)
            if busy:
                _rst(client)
                continue
            thread = threading.Thread(
                target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.io_timeout)
        reader = _Reader(client)
        upstream: socket.socket | None = None
        up_reader: _Reader | None = None
        try:
            for _ in range(_REQUESTS_PER_CONNECTION):
                request = self._read_request(client, reader)
                rule = self._decide(request.method, request.path)
                action = rule.action if rule else "forward"
                if action == "reset":
                    _rst(client)
                    return
                if action == "stop":
                    self.stop()
                    return
                if action == "fail":
                    assert rule is not None
                    client.sendall(_error_response(rule.status, rule.code, request.path))
                    if not request.keep_alive:
                        return
                    continue
                if action == "delay":
                    assert rule is not None
                    if self._closing.wait(rule.seconds):
                        return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=self.io_timeout)
                    up_reader = _Reader(upstream)
                assert up_reader is not None
                upstream.sendall(request.head + request.body)
                head, body, close = _read_response(up_reader, request.method)
                if action in ("truncate", "drop"):
                    if action == "truncate":
                        client.sendall(head + body[: len(body) // 2])
                    _rst(client)
                    return
                client.sendall(head + body)
                if close:
                    upstream.close()
                    upstream, up_reader = None, None
                if not request.keep_alive:
                    return
        except (_Closed, OSError):
            return
        finally:
            with self._lock:
                self._clients.discard(client)
            with contextlib.suppress(OSError):
                client.close()
            if upstream is not None:
                with contextlib.suppress(OSError):
                    upstream.close()

    def _read_request(self, client: socket.socket, reader: _Reader) -> _Request:
        head = reader.head()
        request_line, header_list = _parse_headers(head)
        method, path, version = (request_line.split(" ", 2) + ["", ""])[:3]
        headers = {name.lower(): value for name, value in header_list}
        if headers.get("expect", "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            kept = [(n, v) for n, v in header_list if n.lower() != "expect"]
            head = (
                "\r\n".join([request_line, *(f"{n}: {v}" for n, v in kept)]) + "\r\n\r\n"
            ).encode("latin-1")
        body = _body(reader, headers)
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version != "HTTP/1.0" or connection == "keep-alive")
        return _Request(method, path, head, body, keep_alive, headers)


def _read_response(reader: _Reader, method: str) -> tuple[bytes, bytes, bool]:
    """One response from upstream: its head, its raw body, and whether the server closes."""
    while True:
        head = reader.head()
        status_line, header_list = _parse_headers(head)
        status = int(status_line.split(" ", 2)[1])
        if not 100 <= status < 200:
            break
    headers = {name.lower(): value for name, value in header_list}
    close = headers.get("connection", "").lower() == "close"
    if method == "HEAD" or status in (204, 304):
        return head, b"", close
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return head, reader.chunked(), close
    if "content-length" in headers:
        return head, reader.exactly(int(headers["content-length"])), close
    return head, reader.until_close(), True


def _error_response(status: int, code: str, path: str) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected by tests/faults.py</Message>"
        f"<Resource>{path}</Resource><RequestId>fault-{time.monotonic_ns()}</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        "x-amz-request-id: fault\r\n"
        "\r\n"
    ).encode()
    return head + body


def proxied_options(storage_options: dict[str, Any], proxy: FaultProxy, **config: Any) -> dict:
    """A copy of the s3fs ``storage_options`` that reaches the server through ``proxy``.

    ``config`` goes to botocore's ``Config`` (``config_kwargs``), e.g. ``retries={...}``.
    """
    options = dict(storage_options)
    options["client_kwargs"] = {**options["client_kwargs"], "endpoint_url": proxy.endpoint_url}
    if config:
        options["config_kwargs"] = {**options.get("config_kwargs", {}), **config}
    return options


def upstream_of(storage_options: dict[str, Any]) -> tuple[str, int]:
    """``(host, port)`` of the ``endpoint_url`` in s3fs ``storage_options``."""
    url = storage_options["client_kwargs"]["endpoint_url"]
    host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
    return host, int(port or 80)


# --- Killing Python workers ------------------------------------------------------------------
#
# A task is killed deterministically: the first time (or the first ``times`` times) a chosen
# point is reached in any process, the process claims a numbered marker file with
# os.open(O_CREAT | O_EXCL) (atomic across processes and executors on one machine) and sends
# itself SIGKILL. Later attempts find every marker claimed and go on. A marker holds JSON about
# the killed process (pid, Spark's partition and attempt, and optionally a listing of a folder).


def claim(marker_dir: str, name: str, times: int = 1, details: dict | None = None) -> bool:
    """Claim one of ``times`` markers ``{name}-{k}`` in ``marker_dir``; False when all are taken."""
    import json
    import os

    for k in range(times):
        path = os.path.join(marker_dir, f"{name}-{k}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            info = {"pid": os.getpid(), "cwd": os.getcwd(), **_task_details()}
            json.dump({**info, **(details or {})}, f)
        return True
    return False


def claimed(marker_dir: str, name: str) -> list[dict]:
    """The markers ``{name}-{k}`` claimed so far, in order, as written by :func:`claim`."""
    import json
    import os

    found = []
    for k in range(1000):
        path = os.path.join(marker_dir, f"{name}-{k}")
        if not os.path.exists(path):
            break
        with open(path) as f:
            found.append(json.load(f))
    return found


def _task_details() -> dict:
    try:
        from pyspark import TaskContext
    except ImportError:
        return {}
    context = TaskContext.get()
    if context is None:
        return {}
    return {"partition": context.partitionId(), "attempt": context.attemptNumber()}


def _kill_self(target: str = "worker") -> None:
    """SIGKILL this Python worker, or (``target="executor"``) the executor JVM that started it."""
    import os
    import signal
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.getpid() if target == "worker" else executor_pid()
    os.kill(pid, signal.SIGKILL)
    if pid != os.getpid():  # the JVM is gone; its Python workers end when they notice
        os._exit(1)


def executor_pid() -> int:
    """The pid of the executor JVM above this Python worker (a standalone cluster's
    ``CoarseGrainedExecutorBackend``), found through ``/proc``."""
    import os

    pid = os.getpid()
    for _ in range(10):
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the parent's pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"CoarseGrainedExecutorBackend" in f.read():
                return pid
    raise RuntimeError("no executor JVM above this process (local mode has none)")


class KillAt:
    """For ``rdd.mapPartitionsWithIndex``: pass items through, but SIGKILL this process when
    item ``at`` of partition ``partition`` is about to be passed on, the first ``times`` times.

    Placed before an export, the items before ``at`` have been written by then (the export
    pulls items lazily). ``watch``: a local folder whose listing goes into the marker.
    ``target="executor"`` kills the executor JVM instead (standalone clusters only).
    """

    def __init__(
        self,
        marker_dir: str,
        partition: int,
        at: int,
        *,
        times: int = 1,
        watch: str | None = None,
        name: str = "killed",
        target: str = "worker",
    ) -> None:
        self.marker_dir, self.partition, self.at = marker_dir, partition, at
        self.times, self.watch, self.name, self.target = times, watch, name, target

    def __call__(self, index: int, items: Any) -> Any:
        import os

        for i, item in enumerate(items):
            if index == self.partition and i == self.at:
                listing = sorted(os.listdir(self.watch)) if self.watch else []
                if claim(self.marker_dir, self.name, self.times, {"listing": listing}):
                    _kill_self(self.target)
            yield item


class KillingLoader:
    """A minibatch loader (``load(source)``) that SIGKILLs its process on the first ``times``
    loads of ``victim``, and otherwise loads like sparkbatch's own."""

    def __init__(self, victim: str, marker_dir: str, *, times: int = 1, name: str = "killed"):
        self.victim, self.marker_dir, self.times, self.name = victim, marker_dir, times, name

    def load(self, source: Any) -> Any:
        from sparkbatch.data import load

        if source.url == self.victim and claim(
            self.marker_dir, self.name, self.times, {"url": source.url}
        ):
            _kill_self()
        return load(source.url, storage_options=source.storage_options)
