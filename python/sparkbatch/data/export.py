"""Save a stream of minibatches as numbered files on a single machine.

The local counterpart of DL4J's "prepare data on a single machine ... saving DataSets" how-to:
:func:`export_datasets` writes each DataSet or MultiDataSet of an iterable to
``{prefix}_{index:06d}.safetensors`` under a directory (local or fsspec URL), one atomic file
each, and :class:`~sparkbatch.data.FileDataSetIterator` reads them back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sized
from typing import Any

from sparkbatch._progress import Progress
from sparkbatch.data.dataset import DataSet
from sparkbatch.data.format import SUFFIX, save
from sparkbatch.data.manifest import begin_export, commit_export, describe, part_pattern
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.storage import join

__all__ = ["export_datasets"]


def _length(iterable: Iterable[Any]) -> int | None:
    """The number of minibatches ``iterable`` holds, for the progress bar's total, or None where
    it has no length (a generator) or cannot tell (``len()`` raising TypeError, as a
    FileDataSetIterator that re-batches does)."""
    if not isinstance(iterable, Sized):
        return None
    try:
        return len(iterable)
    except TypeError:
        return None


def export_datasets(
    iterable: Iterable[DataSet | MultiDataSet],
    url: str | os.PathLike[str],
    prefix: str = "dataset",
    *,
    compact_labels: bool = False,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Write each minibatch of ``iterable`` to its own file under the directory ``url``.

    Files are named ``{prefix}_{index:06d}.safetensors`` from index 0, in the order of
    ``iterable``, and each is written atomically (:func:`~sparkbatch.data.save`), so a reader
    never sees a partial file. Nothing is re-batched: split or merge first if needed
    (``ds.split(32)``). At the end ``_manifest.json`` lists every file with its example count,
    shapes and dtypes (see :mod:`sparkbatch.data.manifest`), which training and
    :class:`~sparkbatch.data.FileDataSetIterator` read instead of listing the directory.

    Parameters
    ----------
    iterable : iterable of DataSet or MultiDataSet
        The minibatches, consumed once (a generator is fine).
    url : str or os.PathLike
        Output directory: a local path or fsspec URL; created if missing.
    prefix : str, default "dataset"
        File name prefix.
    compact_labels : bool, default False
        Store one-hot labels as class indices (see :func:`~sparkbatch.data.save`).
    overwrite : bool, default False
        Export into a directory that holds an earlier export: its files (those its manifest
        lists, or those an incomplete one wrote) are removed first, so no stale file is read
        back with the new ones. Other minibatch files there are never removed: they are an
        error.
    storage_options : mapping, optional
        Keyword arguments for the file system.
    progress : bool, optional
        Show a progress bar on stderr (tqdm: minibatches written, their rate and the examples
        so far; with the total when ``iterable`` has a length); by default only when stderr is
        a terminal. False never shows one, True always does.

    Returns
    -------
    list of str
        The URLs written, in order.

    Until the manifest is written the directory holds ``_in_progress.json``, and readers
    refuse it as an incomplete export (:class:`~sparkbatch.errors.IncompleteExportError`): the
    files of an export that raised are never read as a whole data set.

    Raises
    ------
    FileExistsError
        ``overwrite`` is False and ``url`` already holds minibatch files or an export, or it is
        True and ``url`` holds minibatch files no earlier export wrote; nothing is written.
    TypeError
        An item is neither a DataSet nor a MultiDataSet (the export stays incomplete).
    ValueError
        Two minibatches differ in kind or shape other than in the example axis (and the time
        axis of masked sequences); the message names both files.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet, load
    >>> ds = DataSet(np.arange(10, dtype=np.float32).reshape(5, 2), np.ones((5, 1), np.float32))
    >>> urls = export_datasets(ds.split(2), "memory://sparkbatch-doc/export")
    >>> urls
    ['memory://sparkbatch-doc/export/dataset_000000.safetensors', ...]
    >>> [load(u).num_examples for u in urls]
    [2, 2, 1]
    >>> export_datasets(ds.split(2), "memory://sparkbatch-doc/export")
    Traceback (most recent call last):
    FileExistsError: [Errno 17] ... 'memory://sparkbatch-doc/export'
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """
    if not isinstance(url, (str, os.PathLike)) or not isinstance(os.fspath(url), str):
        raise TypeError(f"url must be a str or os.PathLike[str], got {type(url).__name__}")
    if not isinstance(prefix, str) or not prefix or "/" in prefix or os.sep in prefix:
        raise ValueError(f"prefix must be a non-empty file name prefix without '/', got {prefix!r}")
    target = os.fspath(url)
    options = dict(storage_options) if storage_options else None
    items = iter(iterable)  # not iterable: a TypeError before anything is written
    total = _length(iterable)
    export_id = begin_export(
        target, part_pattern(prefix), overwrite=overwrite, storage_options=options
    )
    written: list[str] = []
    entries: list[dict[str, Any]] = []
    examples = 0
    with Progress(total=total, desc="export", unit=" minibatches", enabled=progress) as bar:
        for index, data in enumerate(items):
            if not isinstance(data, (DataSet, MultiDataSet)):
                raise TypeError(
                    f"item {index} of iterable must be a DataSet or MultiDataSet, "
                    f"got {type(data).__name__}"
                )
            name = f"{prefix}_{index:06d}{SUFFIX}"
            out = join(target, name)
            save(data, out, compact_labels=compact_labels, storage_options=options)
            written.append(out)
            entries.append({"path": name, **describe(data)})
            examples += data.num_examples
            bar.update(postfix=f"{examples:,} examples")
    commit_export(target, export_id, entries, storage_options=options)
    return written
