"""Loading items ahead on one background thread, in order, where that pays.

Private, and shared by :mod:`sparkbatch.data` (``FileDataSetIterator`` and
``FileMultiDataSetIterator``) and :mod:`sparkbatch.train` (the Spark workers reading their
minibatch files), so that single-machine and distributed reading hide storage latency the same
way and decide alike when a thread does not pay.

NOTE [adaptive prefetch]: a background thread hides a load behind the caller's work on the
previous item, but handing each item from one thread to the other (a future, a wake-up, the
GIL) costs tens to hundreds of microseconds. So the loads and the caller's work between two
items are timed (moving averages), and while the shorter of the two is under ``HANDOFF_S`` the
items load inline: cached local files that load in 100 µs gain nothing from the thread, and a
loop with nothing to do between files (evaluation of a small model, a read-back) ran 2.4 times
slower through it. Loading ahead resumes once both exceed twice that (remote storage under a
training step). Every pass starts loading ahead.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_B = TypeVar("_B")

HANDOFF_S = 200e-6  # what handing an item between threads costs, at most, on the machines tried


class _Timing:
    """Moving averages of a load's duration and of the caller's work between two items."""

    def __init__(self) -> None:
        self.load: float | None = None
        self.work: float | None = None

    @staticmethod
    def _average(old: float | None, new: float) -> float:
        return new if old is None else 0.75 * old + 0.25 * new

    def loaded(self, seconds: float) -> None:
        self.load = self._average(self.load, seconds)

    def worked(self, seconds: float) -> None:
        self.work = self._average(self.work, seconds)

    def ahead(self, now: bool) -> bool:
        """Whether to load ahead from here on (``now``: whether it does so now)."""
        if self.load is None or self.work is None:
            return now
        gain = min(self.load, self.work)
        return gain > HANDOFF_S if now else gain > 2 * HANDOFF_S


def prefetched(load: Callable[[_T], _B], items: Iterable[_T], prefetch: int) -> Iterator[_B]:
    """``load(item)`` for every item, in order, with up to ``prefetch`` items loading ahead on a
    background thread while the caller works (0: always inline; NOTE [adaptive prefetch]). An
    error is raised in its item's turn; the thread stops when the generator ends or is closed."""
    remaining = iter(items)
    if prefetch == 0:
        for item in remaining:
            yield load(item)
        return

    def timed(item: _T) -> tuple[_B, float]:
        start = time.perf_counter()
        result = load(item)
        return result, time.perf_counter() - start

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparkbatch-prefetch")
    pending: collections.deque[Future[tuple[_B, float]]] = collections.deque()
    timing, ahead = _Timing(), True
    try:
        while True:
            while ahead and len(pending) < prefetch:
                item = next(remaining, _END)
                if item is _END:
                    break
                pending.append(pool.submit(timed, item))
            if pending:  # the earlier items, whichever way the next ones load
                result, seconds = pending.popleft().result()
            else:
                item = next(remaining, _END)
                if item is _END:
                    return
                result, seconds = timed(item)
            timing.loaded(seconds)
            handed = time.perf_counter()
            yield result
            timing.worked(time.perf_counter() - handed)
            ahead = timing.ahead(ahead)
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()
