"""Shared-memory slots for the socket exchange between a driver and workers on one machine.

On local Spark (and wherever executors share the driver's machine) the averaged parameters need
not cross a socket: one file in ``/dev/shm`` holds a slot per worker (its round result) and one
for the average, each slot the same arrays (parameters, updater state) at 64-byte aligned
offsets. A slot is copied once each way per round instead of twice through the kernel's socket
buffers. The control messages still go over the socket; see :mod:`sparkbatch.train.exchange`.
"""

from __future__ import annotations

import mmap
import os
import secrets
from collections.abc import Sequence

import numpy as np

__all__ = ["SharedSlots"]

_ALIGNMENT = 64
_DIRECTORY = "/dev/shm"


class SharedSlots:
    """``count`` slots, each holding one array per ``(dtype, size)`` of ``specs``, in one
    memory-mapped file. The driver :meth:`create` s it; workers :meth:`attach`."""

    def __init__(self, path: str, specs: Sequence[tuple[str, int]], count: int, mapping) -> None:
        self.path = path
        self.specs = [(str(dtype), int(size)) for dtype, size in specs]
        self.count = count
        self._map = mapping
        self._slots = [self._views(i) for i in range(count)]

    @staticmethod
    def nbytes(specs: Sequence[tuple[str, int]], count: int) -> int:
        """The file's size: ``count`` slots of ``specs``, every array 64-byte aligned."""
        return count * _slot_bytes(specs)

    @classmethod
    def create(
        cls, specs: Sequence[tuple[str, int]], count: int, directory: str = _DIRECTORY
    ) -> SharedSlots | None:
        """A new slot file, its memory reserved up front; None where that cannot be done (no
        ``/dev/shm``, or too little room in it: a tmpfs that runs out mid-write would kill the
        process with SIGBUS, so the pages are allocated here or not at all)."""
        size = cls.nbytes(specs, count)
        if size == 0 or not os.path.isdir(directory) or not hasattr(os, "posix_fallocate"):
            return None
        path = os.path.join(directory, f"sparkbatch-exchange-{secrets.token_hex(12)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return None
        try:
            os.posix_fallocate(fd, 0, size)
            mapping = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            os.unlink(path)
            return None
        os.close(fd)
        return cls(path, specs, count, mapping)

    @classmethod
    def attach(cls, path: str, specs: Sequence[tuple[str, int]], count: int) -> SharedSlots | None:
        """Map the driver's slot file; None where this process cannot see it (another
        machine, another container) or it is not the size ``specs`` and ``count`` give."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != cls.nbytes(specs, count):
                return None
            mapping = mmap.mmap(fd, 0)
        except OSError:
            return None
        finally:
            os.close(fd)
        return cls(path, specs, count, mapping)

    def slot(self, index: int) -> list[np.ndarray]:
        """The arrays of slot ``index`` (views into the shared file)."""
        return self._slots[index]

    def close(self, *, unlink: bool = False) -> None:
        """Unmap (the views must no longer be used); ``unlink`` also removes the file."""
        self._slots = []
        try:
            self._map.close()
        except BufferError:  # a view is still alive: the mapping goes when it does
            pass
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _views(self, index: int) -> list[np.ndarray]:
        offset = index * _slot_bytes(self.specs)
        views = []
        for dtype, size in self.specs:
            dt = np.dtype(dtype)
            views.append(np.ndarray((size,), dt, buffer=self._map, offset=offset))
            offset += _aligned(size * dt.itemsize)
        return views


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGNMENT) * _ALIGNMENT


def _slot_bytes(specs: Sequence[tuple[str, int]]) -> int:
    return sum(_aligned(int(size) * np.dtype(dtype).itemsize) for dtype, size in specs)
