"""Re-batching a stream of minibatches to a fixed number of examples each: :func:`rebatch`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from sparkbatch._arguments import check_int
from sparkbatch.data.dataset import DataSet
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.data.sequences import check_alignment

__all__ = ["rebatch"]

_B = TypeVar("_B", bound="DataSet | MultiDataSet")


def rebatch(
    minibatches: Iterable[_B], batch_size: int, alignment: str = "align_start"
) -> Iterator[_B]:
    """The examples of ``minibatches``, in order, cut into minibatches of exactly ``batch_size``
    examples; the remainder comes last, smaller.

    A minibatch that lies inside one incoming minibatch is a view of it (no copy); only one that
    spans several is merged from their pieces (:meth:`DataSet.merge`: a copy, sequences padded
    to the longest). Empty minibatches are skipped. The minibatches must be all DataSets or all
    MultiDataSets that :meth:`~DataSet.merge` accepts together, under ``alignment``
    (``"align_start"``, ``"align_end"`` or ``"equal_length"``: where shorter sequences are
    padded, or that they may not differ; see :mod:`sparkbatch.data.sequences`). This is how
    ``FileDataSetIterator(..., batch_size=)`` re-batches across files and
    :class:`~sparkbatch.spark.BatchAndExport` each Spark partition. Lazy: a minibatch is read
    from ``minibatches`` only when the next output needs it.

    Raises
    ------
    TypeError, ValueError
        ``batch_size`` is not an int of at least 1, or ``alignment`` is none of the three
        (raised at once, not on iteration).

    Examples
    --------
    >>> import numpy as np
    >>> parts = DataSet(np.arange(14, dtype=np.float32).reshape(7, 2)).split(3)
    >>> [d.num_examples for d in parts]
    [3, 3, 1]
    >>> [d.features[:, 0].tolist() for d in rebatch(parts, 2)]
    [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0], [12.0]]
    """
    return _rebatched(minibatches, check_int("batch_size", batch_size), check_alignment(alignment))


def _rebatched(items: Iterable[_B], batch_size: int, alignment: str) -> Iterator[_B]:
    pending: list[_B] = []  # pieces holding fewer than batch_size examples together
    held = 0
    for item in items:
        n = item.num_examples
        start = 0
        if held and n:  # complete the pending minibatch from the head of this item
            start = min(batch_size - held, n)
            pending.append(item[:start])
            held += start
            if held < batch_size:
                continue
            yield _merge(pending, alignment)
            pending, held = [], 0
        full_end = start + (n - start) // batch_size * batch_size
        for s in range(start, full_end, batch_size):
            yield item[s : s + batch_size]
        if full_end < n:
            pending, held = [item[full_end:]], n - full_end
    if held:
        yield _merge(pending, alignment)


def _merge(pieces: list[_B], alignment: str) -> _B:
    return pieces[0] if len(pieces) == 1 else type(pieces[0]).merge(pieces, alignment)
