"""Export an RDD of DataSets (or MultiDataSets) as minibatch files, exactly once.

NOTE [exactly-once export]: within a partition, incoming DataSets of any size are gathered and
cut into minibatches of exactly ``batch_size`` examples, in order (the partition's remainder is
one smaller minibatch). Minibatch ``k`` of partition ``p`` is always written to
``part-{p:05d}-{k:06d}.safetensors`` with an atomic commit, so a retried or speculative task
replaces its own files instead of adding others (DL4J names files by JVM id, which duplicates
them), and ``batch_and_export`` writes ``_manifest.json`` only after the job succeeded (until
then ``_in_progress.json`` marks the directory incomplete: NOTE [export commit] in
:mod:`sparkbatch.data.manifest`).

NOTE [exported sequences]: sequences (arrays ``[n, f, t]``) of any lengths may be exported
together: elements may differ in their time axis, and merging pads them under ``alignment``
(:mod:`sparkbatch.data.sequences`). Under ``"align_start"`` and ``"align_end"`` every sequence
array is written with its mask, ones where a minibatch needed no padding, so that all the
files of one export hold the same tensors (the manifest requires it) and a reader never has to
guess. Under ``"equal_length"`` a minibatch gets a mask only if its elements had one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from sparkbatch._arguments import check_int
from sparkbatch._jobs import JobDescription
from sparkbatch.data import SUFFIX, DataSet, MultiDataSet, rebatch, save
from sparkbatch.data.manifest import (
    begin_export,
    commit_export,
    describe,
    minibatch_files,
)
from sparkbatch.data.sequences import check_alignment, describe_sources, example_sources
from sparkbatch.errors import CsvError
from sparkbatch.spark._errors import executor_errors
from sparkbatch.storage import join

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = [
    "BatchAndExport",
    "batch_and_export",
    "file_name",
    "list_paths",
    "rebatch_partition",
    "with_sequence_masks",
]

Minibatch = Union[DataSet, MultiDataSet]  # noqa: UP007 (runtime alias)


def file_name(partition: int, batch: int) -> str:
    """The name of minibatch ``batch`` of ``partition``: NOTE [exactly-once export]."""
    return f"part-{partition:05d}-{batch:06d}{SUFFIX}"


PART_PATTERN = r"part-\d{5,}-\d{6,}" + re.escape(SUFFIX)  # what file_name gives


def _signature(item: Minibatch) -> dict[str, tuple[int, ...]]:
    """The shapes that every element of an export must share: those of its arrays less the
    example axis and the time axis of sequences (NOTE [exported sequences]); masks left out."""
    tensors = describe(item)["tensors"]
    signature = {}
    for name, tensor in tensors.items():
        if not name.partition(".")[0].endswith("_mask"):
            shape = tuple(tensor["shape"])
            signature[name] = shape[1:-1] if len(shape) == 3 else shape[1:]
    return signature


def _checked(items: Iterable[Any], partition: int) -> Iterator[Minibatch]:
    """The items of a partition, each checked to be a DataSet or MultiDataSet of the same kind
    and shapes (bar the example axis and the time axis of sequences) as the first, so that a
    bad element is named before any merge trips over it."""
    first: tuple[type, dict[str, Any], str] | None = None
    for i, item in enumerate(items):
        if not isinstance(item, (DataSet, MultiDataSet)):
            raise TypeError(
                f"partition {partition}, element {i}: expected a DataSet or MultiDataSet, "
                f"got {type(item).__name__}"
            )
        signature = _signature(item)
        if first is None:
            first = (type(item), signature, _files(item))
        elif type(item) is not first[0] or signature != first[1]:
            shapes = describe(item)["tensors"]
            files = _files(item)
            message = (
                f"partition {partition}, element {i}{files}: a {type(item).__name__} with "
                f"{_shapes(shapes)} where element 0{first[2]} is a {first[0].__name__} with "
                f"{_shapes_of(first[1])}; every element must agree in kind and in shape except "
                "for the example axis (and the time axis of sequences)"
            )
            source = _first_file(item)
            if source is not None and first[2] and _columns_differ(signature, first[1]):
                # sequence files of different column counts: the same arrays, other features
                raise CsvError(message, source=source, expected="the columns of element 0")
            raise ValueError(message)
        yield item


def _first_file(item: Minibatch) -> str | None:
    """The first file an element's metadata names (NOTE [sequence sources]), else None."""
    sources = example_sources(item.metadata, item.num_examples) or []
    return next((s for s in sources if s), None)


def _columns_differ(
    signature: Mapping[str, tuple[int, ...]], first: Mapping[str, tuple[int, ...]]
) -> bool:
    """Whether two elements hold the same arrays and differ only in their features' widths:
    what sequence files of different column counts give. Another kind, other arrays or other
    label widths are no CSV column problem."""
    if signature.keys() != first.keys():
        return False
    different = [name for name in signature if signature[name] != first[name]]
    return bool(different) and all(name.startswith("features") for name in different)


def _files(item: Minibatch) -> str:
    """`` (a.csv)`` for an element whose metadata names its file(s) (NOTE [sequence sources]
    in :mod:`sparkbatch.data.sequences`), else ""."""
    return describe_sources(example_sources(item.metadata, item.num_examples))


def with_sequence_masks(minibatch: Minibatch) -> Minibatch:
    """``minibatch`` with a mask of ones for every sequence array ``[n, f, t]`` that has none
    (NOTE [exported sequences]); the same object if none is missing.

    Examples
    --------
    >>> import numpy as np
    >>> ds = with_sequence_masks(DataSet(np.zeros((2, 3, 4), np.float32), np.zeros((2, 5))))
    >>> ds.features_mask.shape, ds.labels_mask
    ((2, 4), None)
    """

    def mask(array: Any, given: Any) -> Any:
        if given is not None or array is None or array.ndim != 3:
            return given
        return np.ones((array.shape[0], array.shape[2]), dtype=array.dtype)

    if isinstance(minibatch, DataSet):
        fm = mask(minibatch.features, minibatch.features_mask)
        lm = mask(minibatch.labels, minibatch.labels_mask)
        if fm is minibatch.features_mask and lm is minibatch.labels_mask:
            return minibatch
        return DataSet(minibatch.features, minibatch.labels, fm, lm, minibatch.metadata)
    fms = [mask(a, m) for a, m in zip(minibatch.features, minibatch.features_masks, strict=True)]
    lms = [mask(a, m) for a, m in zip(minibatch.labels, minibatch.labels_masks, strict=True)]
    same = all(a is b for a, b in zip(fms, minibatch.features_masks, strict=True)) and all(
        a is b for a, b in zip(lms, minibatch.labels_masks, strict=True)
    )
    if same:
        return minibatch
    return MultiDataSet(minibatch.features, minibatch.labels, fms, lms, minibatch.metadata)


def _shapes(tensors: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {tuple(t['shape'])}" for name, t in tensors.items())


def _shapes_of(signature: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(
        f"{name} {('n', *shape)}".replace("'", "") for name, shape in signature.items()
    )


def rebatch_partition(
    index: int, items: Iterable[Any], batch_size: int, alignment: str = "align_start"
) -> Iterator[Minibatch]:
    """Partition ``index``'s elements, each checked to be a DataSet or MultiDataSet agreeing
    with the first in kind and shape (the error names the partition and element), cut into
    minibatches of exactly ``batch_size`` examples in order, the remainder last; sequences are
    merged under ``alignment`` (NOTE [exported sequences])."""
    return rebatch(_checked(items, index), batch_size, alignment)


class BatchAndExport:
    """``rdd.mapPartitionsWithIndex(BatchAndExport(batch_size, path), True)``: write minibatches.

    DL4J's ``BatchAndExportDataSetsFunction`` / ``...MultiDataSetsFunction``: returns the URLs
    written (with their scheme, unlike DL4J). Every example is written exactly once and in order
    (NOTE [exactly-once export]). ``with_details=True`` yields ``(url, manifest entry)`` pairs
    instead, which :func:`batch_and_export` uses for the manifest. Sequences of different
    lengths are padded and masked under ``alignment`` (NOTE [exported sequences]).
    """

    def __init__(
        self,
        batch_size: int,
        path: str | os.PathLike[str],
        *,
        compact_labels: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        with_details: bool = False,
        alignment: str = "align_start",
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size)
        self.alignment = check_alignment(alignment)
        self.path = os.fspath(path)
        self.compact_labels = compact_labels
        self.storage_options = dict(storage_options or {})
        self.with_details = with_details

    def __call__(self, index: int, items: Iterable[Minibatch]) -> Iterator[Any]:
        batches = rebatch_partition(index, items, self.batch_size, self.alignment)
        for k, minibatch in enumerate(batches):
            if self.alignment != "equal_length":
                minibatch = with_sequence_masks(minibatch)
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
    alignment: str = "align_start",
) -> list[str]:
    """Export ``rdd`` to minibatch files under ``path`` and write its manifest; return the URLs.

    An action: writes ``_in_progress.json``, runs the job, checks that every minibatch agrees
    in kind and shape (bar the example axis, and the time axis of masked sequences), then writes
    ``_manifest.json`` (every file with its example count, shapes and dtypes) atomically from the
    driver and removes the marker. Files of failed attempts are never in the manifest, and until
    it is written readers refuse the directory as an incomplete export
    (:class:`~sparkbatch.errors.IncompleteExportError`).

    Parameters
    ----------
    rdd : RDD of DataSet or MultiDataSet
        Any sizes; re-batched per partition.
    path : str or os.PathLike
        Directory URL (``s3://``, ``hdfs://``, local, ...), created if needed.
    batch_size : int
        Examples per file; the last file of each partition may hold fewer.
    overwrite : bool
        Replace an earlier export in ``path``: the files its manifest lists (or that an
        incomplete one wrote) are removed first. Other minibatch files are never removed: they
        are a FileExistsError naming them, as any earlier export is without ``overwrite``.
    compact_labels : bool
        Store one-hot labels as class indices (see :func:`sparkbatch.data.save`).
    storage_options : mapping, optional
        fsspec options.
    alignment : {"align_start", "align_end", "equal_length"}
        How sequences of different lengths in one minibatch line up: padded at the end or at
        the start, with masks written for every sequence array, or not at all (a length
        mismatch is a :class:`~sparkbatch.errors.SequenceLengthError` naming both files, when
        the DataSets' metadata knows them). See NOTE [exported sequences].

    Raises
    ------
    FileExistsError
        ``path`` holds minibatch files in the way (see ``overwrite``); nothing is written.
    TypeError, ValueError
        An element of ``rdd`` is not a DataSet or MultiDataSet, or minibatches differ in kind
        or shape; the message names the partition and element, or the files.

    Errors raised on the executors (storage, a bad element) are raised again here as their own
    types, with the executor's message first (see :func:`sparkbatch.spark.executor_errors`).

    Examples
    --------
    >>> urls = batch_and_export(rdd, "s3://bucket/train", batch_size=32)  # doctest: +SKIP
    """
    path = os.fspath(path)
    function = BatchAndExport(
        batch_size,
        path,
        compact_labels=compact_labels,
        storage_options=storage_options,
        with_details=True,
        alignment=alignment,
    )
    export_id = begin_export(
        path, PART_PATTERN, overwrite=overwrite, storage_options=storage_options
    )
    description = f"sparkbatch: export minibatches of {batch_size} to {path}"
    with executor_errors(), JobDescription(rdd.context, description):
        written = rdd.mapPartitionsWithIndex(function, preservesPartitioning=True).collect()
    written.sort(key=lambda item: item[1]["path"])
    commit_export(
        path,
        export_id,
        [entry for _, entry in written],
        storage_options=storage_options,
        kind=written[0][1]["kind"] if written else None,
        batch_size=batch_size,
    )
    return [url for url, _ in written]


def list_paths(
    sc: SparkContext,
    path: str | os.PathLike[str],
    *,
    suffix: str | tuple[str, ...] | None = None,
    num_slices: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RDD[str]:
    """An RDD of the data files under ``path`` (DL4J's ``SparkUtils.listPaths``).

    Uses the directory's manifest when it has one (only the files of its export), else lists
    every visible file under it, recursively, in a stable sorted order, whatever its name
    (``dataset_0.bin``, ``.zip`` archives; names starting with ``.`` or ``_`` are skipped, as
    Hadoop does). Give the result to ``SparkNetwork.fit_paths(paths, loader)``.

    Parameters
    ----------
    sc : SparkContext
    path : str or os.PathLike
        Directory (local path or fsspec URL).
    suffix : str or tuple of str, optional
        Keep only files whose names end with (one of) these, e.g. ``".bin"``.
    num_slices : int, optional
        Partitions of the RDD; default the files' count, at most ``sc.defaultParallelism``.
    storage_options : mapping, optional
        Keyword arguments for the file system.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist or yields no file (with ``suffix``); the message says what it
        holds.
    IncompleteExportError
        ``path`` holds an export that failed or is still running.

    Examples
    --------
    >>> paths = list_paths(sc, "hdfs:///data/exported", suffix=".bin")  # doctest: +SKIP
    >>> spark_net.fit_paths(paths, MyLoader())  # doctest: +SKIP
    """
    urls = minibatch_files(  # refuses incomplete exports
        os.fspath(path), suffix=suffix, storage_options=storage_options
    )
    return sc.parallelize(urls, num_slices or max(1, min(len(urls), sc.defaultParallelism)))
