"""Export an RDD of DataSets (or MultiDataSets) as minibatch files, exactly once.

NOTE [exactly-once export]: within a partition, incoming DataSets of any size are gathered and
cut into minibatches of exactly ``batch_size`` examples, in order (the partition's remainder is
one smaller minibatch). Minibatch ``k`` of partition ``p`` is always written to
``part-{p:05d}-{k:06d}.safetensors`` with an atomic commit, so a retried or speculative task
replaces its own files instead of adding others (DL4J names files by JVM id, which duplicates
them), and ``batch_and_export`` writes ``_manifest.json`` only after the job succeeded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Union

from sparkbatch.data import SUFFIX, DataSet, MultiDataSet, save
from sparkbatch.data.manifest import describe, minibatch_files, prepare_output, write_manifest
from sparkbatch.storage import join

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = ["BatchAndExport", "batch_and_export", "list_paths", "file_name"]

Minibatch = Union[DataSet, MultiDataSet]  # noqa: UP007 (runtime alias)


def file_name(partition: int, batch: int) -> str:
    """The name of minibatch ``batch`` of ``partition``: NOTE [exactly-once export]."""
    return f"part-{partition:05d}-{batch:06d}{SUFFIX}"


def _merge(pieces: list[Minibatch]) -> Minibatch:
    return pieces[0] if len(pieces) == 1 else type(pieces[0]).merge(pieces)


def _rebatch(items: Iterable[Minibatch], batch_size: int) -> Iterator[Minibatch]:
    """Exactly ``batch_size`` examples per minibatch, in order; the remainder last (smaller).

    Full minibatches inside an incoming DataSet are views of it; only a minibatch that spans
    two incoming DataSets is merged (copied).
    """
    pending: list[Minibatch] = []  # pieces holding fewer than batch_size examples together
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
            yield _merge(pending)
            pending, held = [], 0
        full_end = start + (n - start) // batch_size * batch_size
        for s in range(start, full_end, batch_size):
            yield item[s : s + batch_size]
        if full_end < n:
            pending, held = [item[full_end:]], n - full_end
    if held:
        yield _merge(pending)


class BatchAndExport:
    """``rdd.mapPartitionsWithIndex(BatchAndExport(batch_size, path), True)``: write minibatches.

    DL4J's ``BatchAndExportDataSetsFunction`` / ``...MultiDataSetsFunction``: returns the URLs
    written (with their scheme, unlike DL4J). Every example is written exactly once and in order
    (NOTE [exactly-once export]). ``with_details=True`` yields ``(url, manifest entry)`` pairs
    instead, which :func:`batch_and_export` uses for the manifest.
    """

    def __init__(
        self,
        batch_size: int,
        path: str | os.PathLike[str],
        *,
        compact_labels: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        with_details: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.path = os.fspath(path)
        self.compact_labels = compact_labels
        self.storage_options = dict(storage_options or {})
        self.with_details = with_details

    def __call__(self, index: int, items: Iterable[Minibatch]) -> Iterator[Any]:
        for k, minibatch in enumerate(_rebatch(items, self.batch_size)):
            name = file_name(index, k)
            url = join(self.path, name)
            save(
                minibatch,
                url,
                compact_labels=self.compact_labels,
                storage_options=self.storage_options,
            )
            yield (url, {"path": name, **describe(minibatch)}) if self.with_details else url


def batch_and_export(
    rdd: RDD[Minibatch],
    path: str | os.PathLike[str],
    batch_size: int,
    *,
    overwrite: bool = False,
    compact_labels: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Export ``rdd`` to minibatch files under ``path`` and write its manifest; return the URLs.

    An action: runs the job, then writes ``_manifest.json`` (every file with its example count,
    shapes and dtypes) atomically from the driver, so files of failed attempts are never in it.

    Parameters
    ----------
    rdd : RDD of DataSet or MultiDataSet
        Any sizes; re-batched per partition.
    path : str or os.PathLike
        Directory URL (``s3://``, ``hdfs://``, local, ...), created if needed.
    batch_size : int
        Examples per file; the last file of each partition may hold fewer.
    overwrite : bool
        Replace minibatch files already in ``path`` (else FileExistsError).
    compact_labels : bool
        Store one-hot labels as class indices (see :func:`sparkbatch.data.save`).
    storage_options : mapping, optional
        fsspec options.

    Examples
    --------
    >>> urls = batch_and_export(rdd, "s3://bucket/train", batch_size=32)  # doctest: +SKIP
    """
    path = os.fspath(path)
    prepare_output(path, overwrite=overwrite, storage_options=storage_options)
    function = BatchAndExport(
        batch_size,
        path,
        compact_labels=compact_labels,
        storage_options=storage_options,
        with_details=True,
    )
    written = rdd.mapPartitionsWithIndex(function, preservesPartitioning=True).collect()
    written.sort(key=lambda item: item[1]["path"])
    kinds = {entry["kind"] for _, entry in written}
    write_manifest(
        path,
        [entry for _, entry in written],
        storage_options=storage_options,
        kind=kinds.pop() if len(kinds) == 1 else "mixed",
        batch_size=batch_size,
    )
    return [url for url, _ in written]


def list_paths(
    sc: SparkContext,
    path: str | os.PathLike[str],
    *,
    num_slices: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RDD[str]:
    """An RDD of the minibatch files under ``path`` (DL4J's ``SparkUtils.listPaths``).

    Uses the directory's manifest when it has one, else lists it recursively in a stable order.
    """
    urls = minibatch_files(os.fspath(path), storage_options=storage_options)
    return sc.parallelize(urls, num_slices or max(1, min(len(urls), sc.defaultParallelism)))
