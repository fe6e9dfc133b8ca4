"""Kept for ``sparkbatch/train/worker.py`` until its import moves to :mod:`sparkbatch._prefetch`,
where loading ahead now lives (shared by the data iterators and the training workers)."""

from __future__ import annotations

from sparkbatch._prefetch import HANDOFF_S, prefetched

__all__ = ["HANDOFF_S", "prefetched"]
