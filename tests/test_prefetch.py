"""Loading ahead on a background thread, and inline where that cannot pay (no Spark)."""

from __future__ import annotations

import threading
import time

import pytest

from sparkbatch._prefetch import HANDOFF_S, prefetched


def _recording(delay: float = 0.0):
    """A load that returns its item and records which thread loaded it."""
    threads: list[str] = []

    def load(item: int) -> int:
        if delay:
            time.sleep(delay)
        threads.append(threading.current_thread().name)
        return item

    return load, threads


@pytest.mark.parametrize("prefetch", [0, 1, 2, 8])
def test_every_item_comes_once_in_order(prefetch):
    load, _ = _recording()
    assert list(prefetched(load, range(50), prefetch)) == list(range(50))


def test_quick_loads_with_nothing_to_do_between_them_move_inline():
    load, threads = _recording()
    assert list(prefetched(load, range(40), 2)) == list(range(40))
    assert threads[0].startswith("sparkbatch-prefetch")  # every pass starts loading ahead
    assert all(not name.startswith("sparkbatch-prefetch") for name in threads[-20:])


def test_slow_loads_behind_slow_work_stay_on_the_thread():
    delay = 10 * HANDOFF_S
    load, threads = _recording(delay)
    for _ in prefetched(load, range(12), 2):
        time.sleep(delay)  # the caller's work on each item
    assert all(name.startswith("sparkbatch-prefetch") for name in threads)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_an_error_is_raised_in_its_items_turn(prefetch):
    def load(item: int) -> int:
        if item == 3:
            raise ValueError("cannot load item 3")
        return item

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for item in prefetched(load, range(10), prefetch):
            got.append(item)
    assert got == [0, 1, 2]


def test_closing_early_stops_the_thread():
    load, _ = _recording()
    gen = prefetched(load, range(10), 3)
    next(gen)
    gen.close()
    assert not any(t.name.startswith("sparkbatch-prefetch") for t in threading.enumerate())
