"""Sequences of different lengths in one minibatch: padding, masks and alignment.

A sequence is a table ``[T, w]`` (one row per time step). A minibatch of sequences is an array
``[n, w, T_max]`` (DL4J's layout) with a mask ``[n, T_max]``: 1 on a real step, 0 on padding.
How sequences of different lengths line up is DL4J's ``AlignmentMode``:

* ``"align_start"``: every sequence starts at step 0; the padding is at the end.
* ``"align_end"``: every sequence ends at step ``T_max - 1``; the padding is at the start, so
  that the last steps line up (many-to-one tasks, or a short label sequence that belongs to the
  end of a long input).
* ``"equal_length"``: every sequence must have the same length; a mismatch raises
  :class:`~sparkbatch.errors.SequenceLengthError` naming both sequences (their files, when
  known) and their lengths. No mask is made.

NOTE [sequence sources]: a DataSet made from one sequence file records the file in its metadata
under ``"source"``; merging DataSets that know their files gives ``"sources"``, a JSON list with
one file per example (None where unknown), which slicing and merging keep in step with the
examples. Errors (an ``equal_length`` mismatch, a column count that differs) name the files
through :func:`example_sources`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparkbatch.errors import SequenceLengthError

__all__ = [
    "ALIGNMENTS",
    "SOURCE",
    "SOURCES",
    "check_alignment",
    "example_sources",
    "merged_metadata",
    "pad_sequences",
    "select_sources",
    "sequence_lengths",
]

ALIGNMENTS = ("equal_length", "align_start", "align_end")
SOURCE = "source"  # metadata key: the file of a one-sequence DataSet
SOURCES = "sources"  # metadata key: a JSON list, the file of each example


def example_sources(metadata: Mapping[str, str] | None, n: int) -> list[str | None] | None:
    """The file of each of ``n`` examples from a DataSet's ``metadata`` (NOTE [sequence
    sources]), or None if it names none (or a list of another length).

    Examples
    --------
    >>> example_sources({"source": "a.csv"}, 1), example_sources(None, 2)
    (['a.csv'], None)
    >>> example_sources({"sources": '["a.csv", null]'}, 2)
    ['a.csv', None]
    """
    if not metadata:
        return None
    if SOURCES in metadata:
        try:
            sources = json.loads(metadata[SOURCES])
        except ValueError:
            return None
        if isinstance(sources, list) and len(sources) == n:
            return [s if isinstance(s, str) else None for s in sources]
        return None
    if SOURCE in metadata:
        return [metadata[SOURCE]] * n
    return None


def merged_metadata(
    metadatas: Sequence[Mapping[str, str] | None], counts: Sequence[int]
) -> dict[str, str] | None:
    """The metadata of a merge: the first input's, with the files of all examples as
    ``"sources"`` when any input knows its files (NOTE [sequence sources]).

    Examples
    --------
    >>> merged_metadata([{"source": "a.csv", "k": "v"}, {"source": "b.csv"}], [1, 2])
    {'k': 'v', 'sources': '["a.csv", "b.csv", "b.csv"]'}
    >>> merged_metadata([{"k": "v"}, None], [1, 1])
    {'k': 'v'}
    """
    first = dict(metadatas[0]) if metadatas and metadatas[0] else {}
    if not any(m and (SOURCE in m or SOURCES in m) for m in metadatas):
        return first or None
    sources: list[str | None] = []
    for metadata, n in zip(metadatas, counts, strict=True):
        sources.extend(example_sources(metadata, n) or [None] * n)
    first.pop(SOURCE, None)
    first[SOURCES] = json.dumps(sources)
    return first


def select_sources(metadata: dict[str, str] | None, selection: Any, n: int) -> None:
    """Keep ``metadata["sources"]`` in step with ``selection`` (a slice or index array) of
    ``n`` examples, in place."""
    if not metadata or SOURCES not in metadata:
        return
    sources = example_sources(metadata, n)
    if sources is None:
        del metadata[SOURCES]
        return
    if isinstance(selection, slice):
        chosen = sources[selection]
    else:
        chosen = [sources[int(i)] for i in np.asarray(selection).ravel()]
    metadata[SOURCES] = json.dumps(chosen)


def describe_sources(sources: Sequence[str | None] | None) -> str:
    """`` (a.csv)``, `` (a.csv and 3 more)`` or "" for the files of a DataSet's examples."""
    if not sources:
        return ""
    known = list(dict.fromkeys(s for s in sources if s))
    if not known:
        return ""
    more = f" and {len(known) - 1} more" if len(known) > 1 else ""
    return f" ({known[0]}{more})"


def check_alignment(alignment: str) -> str:
    """``alignment`` in lower case if it is one of :data:`ALIGNMENTS` (DL4J's upper-case names
    are accepted too); ValueError naming the choices otherwise.

    Examples
    --------
    >>> check_alignment("ALIGN_END")
    'align_end'
    """
    if isinstance(alignment, str) and alignment.lower() in ALIGNMENTS:
        return alignment.lower()
    raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}; got {alignment!r}")


def _name(sources: Sequence[str | None] | None, i: int) -> str:
    source = sources[i] if sources is not None and i < len(sources) else None
    return f"sequence {i} ({source})" if source else f"sequence {i}"


def sequence_lengths(
    lengths: Sequence[int] | np.ndarray,
    alignment: str,
    sources: Sequence[str | None] | None = None,
) -> int:
    """The padded length of sequences of ``lengths`` under ``alignment``.

    Raises :class:`~sparkbatch.errors.SequenceLengthError` under ``"equal_length"`` when two
    lengths differ, naming the first sequence and the first one that differs from it.
    """
    alignment = check_alignment(alignment)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("no sequences: a minibatch needs at least one")
    if alignment == "equal_length":
        different = np.flatnonzero(lengths != lengths[0])
        if different.size:
            j = int(different[0])
            raise SequenceLengthError(
                f"alignment 'equal_length': {_name(sources, 0)} has {int(lengths[0])} steps but"
                f" {_name(sources, j)} has {int(lengths[j])}; use alignment='align_start' or"
                " 'align_end' to pad and mask sequences of different lengths"
            )
    return int(lengths.max())


def pad_sequences(
    tables: Sequence[np.ndarray],
    alignment: str = "align_start",
    *,
    sources: Sequence[str | None] | None = None,
    length: int | None = None,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stack sequence tables ``[T_i, w]`` into ``[n, w, T]`` and their mask ``[n, T]``.

    ``T`` is the longest ``T_i`` (or ``length``, when several arrays of one minibatch are padded
    to a common length, as DL4J's multi-reader iterator does). The mask is None when every
    sequence fills all ``T`` steps; otherwise it is ``dtype`` with 1 on the real steps.

    Parameters
    ----------
    tables : sequence of arrays ``[T_i, w]``
        One table per example, every one with the same width ``w`` and at least one step.
    alignment : {"align_start", "align_end", "equal_length"}
        Where the padding goes; see this module's docstring.
    sources : sequence of str, optional
        Where each sequence came from (a file), for error messages.
    length : int, optional
        Pad to this many steps (at least the longest sequence).
    dtype : numpy dtype, default float32
        Of the result and the mask.

    Examples
    --------
    >>> a = np.array([[1.0, 10.0], [2.0, 20.0]])        # 2 steps, 2 columns
    >>> b = np.array([[3.0, 30.0]])                     # 1 step
    >>> x, mask = pad_sequences([a, b], "align_end")
    >>> x[1]
    array([[ 0.,  3.],
           [ 0., 30.]], dtype=float32)
    >>> mask
    array([[1., 1.],
           [0., 1.]], dtype=float32)
    >>> pad_sequences([a, b], "equal_length", sources=["a.csv", "b.csv"])
    Traceback (most recent call last):
    ...
    sparkbatch.errors.SequenceLengthError: alignment 'equal_length': sequence 0 (a.csv) has 2 ...
    """
    alignment = check_alignment(alignment)
    if not tables:
        raise ValueError("no sequences: a minibatch needs at least one")
    width = tables[0].shape[1]
    for i, table in enumerate(tables):
        if table.ndim != 2 or table.shape[1] != width:
            raise ValueError(
                f"{_name(sources, i)} has shape {table.shape} but {_name(sources, 0)} has"
                f" {tables[0].shape}; every step must have the same {width} columns"
            )
    lengths = np.fromiter((t.shape[0] for t in tables), dtype=np.int64, count=len(tables))
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise ValueError(f"{_name(sources, int(empty[0]))} has no steps")
    steps = sequence_lengths(lengths, alignment, sources)
    if length is not None:
        if length < steps:
            raise ValueError(f"length {length} is shorter than the longest sequence ({steps})")
        steps = length
    n = len(tables)
    out = np.zeros((n, width, steps), dtype=dtype)
    full = bool((lengths == steps).all())
    mask = None if full else np.zeros((n, steps), dtype=dtype)
    for i, table in enumerate(tables):
        t = table.shape[0]
        start = steps - t if alignment == "align_end" else 0
        out[i, :, start : start + t] = table.T
        if mask is not None:
            mask[i, start : start + t] = 1
    return out, mask
