"""``ConnectionServer``: a driver's listening socket whose connections each get a thread.

Both exchanges with a server on the driver (the socket exchange's ``AveragingServer``, the ring
exchange's ``RoundCollector``) accept connections the same way, and must end the same way: a
fit leaves no listening socket, connection or thread behind, whether it succeeded or failed.
Here the accepting thread waits on a selector (not ``select.select``, which fails once a
descriptor is 1024 or more: a driver with many open files) over the listener and a socket pair
that :meth:`ConnectionServer.close` writes to; :meth:`~ConnectionServer.close` then shuts every
connection down (which wakes a thread blocked reading from it), joins every thread and closes
every socket.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable

__all__ = ["ConnectionServer", "listen"]

_JOIN_S = 10.0  # how long close() waits for each thread (they only need to notice the close)


def listen(bind_host: str = "", port: int = 0, backlog: int = 16) -> socket.socket:
    """A listening socket on ``bind_host``:``port`` (0: any free port). For ``""`` (every
    address) it takes IPv6 and IPv4 both where the machine has both, so that peers reach it
    whichever family the address they were given is; an IPv6 literal binds IPv6."""
    if bind_host == "" and socket.has_dualstack_ipv6():
        return socket.create_server(
            ("", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
        )
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    return socket.create_server((bind_host, port), family=family, backlog=backlog)


class ConnectionServer:
    """Listens on ``bind_host``:``port`` (0: any free port, then :attr:`port`) and runs
    ``serve(conn)`` for every connection on a thread of its own, named ``name`` + ``-connection``
    (the accepting thread is ``name``). A ``ConnectionError`` or ``OSError`` out of ``serve``
    ends that connection quietly (the peer died, or :meth:`close` shut it down); the
    connection is closed when ``serve`` returns."""

    def __init__(
        self,
        serve: Callable[[socket.socket], None],
        *,
        name: str,
        bind_host: str = "",
        port: int = 0,
        backlog: int = 16,
    ) -> None:
        self._serve = serve
        self._name = name
        self._listener = listen(bind_host, port, backlog)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._closed = False
        self._conns: set[socket.socket] = set()  # open connections, shut down by close()
        self._threads: list[threading.Thread] = []  # their threads, joined by close()
        self._wake_reader, self._wake_writer = socket.socketpair()  # wakes the accept loop
        self._accepter = threading.Thread(target=self._accept, name=name, daemon=True)
        self._accepter.start()

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._conns)

    def sockets(self) -> list[socket.socket]:
        """The server's own sockets (the listener and the wake-up pair), for checks that
        :meth:`close` closed them."""
        return [self._listener, self._wake_reader, self._wake_writer]

    def close(self) -> None:
        """Stop accepting, shut every connection down, join every thread, close every socket.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._wake_writer.send(b"x")
        except OSError:
            pass
        self._accepter.join(_JOIN_S)
        with self._lock:  # no new connection from here on: the accept loop has ended
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading from it
            except OSError:
                pass  # closed by its thread meanwhile
        for thread in threads:
            thread.join(_JOIN_S)
        self._listener.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_reader in ready:
                    return
                if self._listener in ready and not self._accept_one():
                    return

    def _accept_one(self) -> bool:
        """Accept one connection and start its thread; False once the server is closed."""
        try:
            conn, _ = self._listener.accept()
        except OSError:  # the client gave up before it was accepted
            return True
        thread = threading.Thread(
            target=self._run, args=(conn,), name=f"{self._name}-connection", daemon=True
        )
        with self._lock:
            if self._closed:
                conn.close()
                return False
            self._conns.add(conn)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return True

    def _run(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._serve(conn)
        except (ConnectionError, OSError):
            pass  # the peer died or was killed (or close() shut the connection down)
        finally:
            with self._lock:
                self._conns.discard(conn)
