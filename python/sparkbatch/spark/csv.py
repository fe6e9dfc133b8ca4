"""CSV to minibatch DataSets on Spark, a whole partition per native call.

Two inputs, one conversion: an RDD of lines (each partition joined and parsed at once), or files
(paths, directories, globs, any fsspec URL) that executors read in byte ranges themselves, so no
line ever travels from the JVM to Python. Either way each partition yields DataSets of
``batch_size`` examples (the last of a partition smaller).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sparkbatch.convert.table import LabelSpec, batches, split_table
from sparkbatch.data import DataSet
from sparkbatch.records.csv_parser import CsvOptions, parse_csv_buffer
from sparkbatch.storage import (
    LineRange,
    count_lines_before,
    expand_paths,
    plan_line_ranges,
    read_line_range,
)

if TYPE_CHECKING:
    from pyspark import RDD, Accumulator, SparkContext

__all__ = ["csv_to_datasets", "LinesToDataSets", "RangesToDataSets"]

MAX_SPLIT_SIZE = 64 << 20  # bytes of CSV per Spark partition when reading files ...
MIN_SPLIT_SIZE = 4 << 20  # ... and at least this many, unless a file is smaller


def default_split_size(total_bytes: int, parallelism: int) -> int:
    """A size that cuts ``total_bytes`` into a multiple of ``parallelism`` ranges (so that every
    core gets the same share, at least two each), each of 4 to 64 MiB.

    >>> default_split_size(150 << 20, 2) >> 20, default_split_size(10 << 30, 4) >> 20
    (37, 64)
    """
    cores = max(1, parallelism)
    waves = max(2, -(-total_bytes // (cores * MAX_SPLIT_SIZE)))
    wanted = -(-total_bytes // (waves * cores))
    return max(MIN_SPLIT_SIZE, min(MAX_SPLIT_SIZE, wanted))


class _CsvToDataSets:
    """What both partition functions share: parse a buffer, cut it into DataSets, count skips."""

    def __init__(
        self,
        spec: LabelSpec,
        options: CsvOptions,
        batch_size: int,
        skipped: Accumulator[int] | None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.spec = spec
        self.options = options
        self.batch_size = batch_size
        self.skipped = skipped

    def _convert(self, buffer: Any, **parse_args: Any) -> Iterator[DataSet]:
        class_columns = {}
        if self.spec.classification:
            width = _first_row_width(buffer, self.options, parse_args.get("skip_lines"))
            if width is None:
                return
            class_columns = {self.spec.label_columns(width)[0]: int(self.spec.num_classes or 0)}
        parsed = parse_csv_buffer(buffer, self.options, class_columns=class_columns, **parse_args)
        if parsed.skipped and self.skipped is not None:
            self.skipped.add(parsed.skipped)
        if parsed.values.shape[0]:
            yield from batches(split_table(parsed.values, self.spec), self.batch_size)


def _first_row_width(buffer: Any, options: CsvOptions, skip_lines: int | None) -> int | None:
    """Columns of the first data row (to resolve ``label_index=-1``), None if there is no row."""
    from sparkbatch import _native

    view = memoryview(buffer)
    skip = options.skip_lines if skip_lines is None else skip_lines
    # The first few KB hold the first data row in any sensible CSV; grow until one is found.
    size = 1 << 14
    while True:
        head = view[:size]
        complete = size >= len(view)
        if not complete:
            cut = bytes(head).rfind(b"\n")
            head = head[: cut + 1] if cut >= 0 else head
        result = _native.parse_csv(
            head,
            delimiter=options.delimiter,
            quote=options.quote,
            skip_lines=skip,
            on_error="skip",
            threads=1,
        )
        if result["values"].shape[0] or result["values"].shape[1]:
            return int(result["values"].shape[1])
        if complete:
            return None
        size *= 4


class LinesToDataSets(_CsvToDataSets):
    """``rdd_lines.mapPartitionsWithIndex(LinesToDataSets(...))``: one native parse per partition.

    Header lines (``skip_lines``) are skipped in partition 0 only: with ``sc.textFile`` of one
    file that is where they are. For many files with headers, read the files directly
    (:func:`csv_to_datasets` with a path), which skips them once per file.
    """

    def __call__(self, index: int, lines: Iterable[str]) -> Iterator[DataSet]:
        text = "\n".join(lines)
        if not text:
            return iter(())
        buffer = text.encode("utf-8")
        return self._convert(
            buffer,
            source=f"partition {index}",
            skip_lines=self.options.skip_lines if index == 0 else 0,
            threads=1,
        )


class RangesToDataSets(_CsvToDataSets):
    """Reads the :class:`~sparkbatch.storage.LineRange` items of a partition and converts them."""

    def __init__(self, *args: Any, storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(*args)
        self.storage_options = dict(storage_options or {})

    def __call__(self, ranges: Iterable[LineRange]) -> Iterator[DataSet]:
        for r in ranges:
            buffer, begin = read_line_range(r, storage_options=self.storage_options)
            if not buffer:
                continue
            yield from self._convert(
                buffer,
                source=r.url,
                skip_lines=self.options.skip_lines if r.is_first else 0,
                threads=1,
                lines_before=lambda r=r, begin=begin: count_lines_before(
                    r.url, begin, storage_options=self.storage_options
                ),
            )


def csv_to_datasets(
    source: RDD[str] | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    label_index: int | None = None,
    num_classes: int | None = None,
    label_first: int | None = None,
    label_last: int | None = None,
    regression: bool = False,
    batch_size: int = 32,
    skip_lines: int = 0,
    delimiter: str = ",",
    quote: str = '"',
    on_error: str = "raise",
    skipped: Accumulator[int] | None = None,
    sc: SparkContext | None = None,
    split_size: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RDD[DataSet]:
    """Convert CSV data to an RDD of minibatch DataSets, parsing whole partitions natively.

    The recommended form of the DL4J chain ``textFile → StringToWritablesFunction →
    DataVecDataSetFunction``: instead of one DataSet per line, each partition is parsed in one
    native call and cut into minibatches.

    Parameters
    ----------
    source : RDD of str, path, URL, glob, or a list of them
        An RDD of lines, or files (directories are read recursively; any fsspec URL). Files are
        read by the executors in byte ranges of ``split_size`` (NOTE [line ranges] in
        :mod:`sparkbatch.storage.ranges`), header lines skipped once per file.
    label_index, num_classes : int, optional
        Classification: the column of the class index (``-1`` = last) and the class count.
    label_first, label_last, regression
        Regression: the label columns (inclusive) with ``regression=True``.
    batch_size : int
        Examples per DataSet; the last DataSet of each partition may be smaller.
    skip_lines : int
        Header lines at the start of each file (of partition 0 for an RDD of lines).
    delimiter, quote : str
        Field delimiter and quote character (``""``: no quoting).
    on_error : {"raise", "skip"}
        ``"raise"``: the first bad row (wrong column count, non-numeric value, bad class index)
        fails the job with a :class:`~sparkbatch.errors.CsvError` naming file or partition, line,
        column and text. ``"skip"``: bad rows are dropped and counted in ``skipped``.
    skipped : pyspark.Accumulator, optional
        Where ``on_error="skip"`` counts rows; created if not given and attached to the returned
        RDD as ``rdd.skipped``. Read it after an action. Like every accumulator updated in a
        transformation, a re-executed task counts again.
    sc : SparkContext, optional
        For file input (default: the active context).
    split_size : int, optional
        Bytes of CSV per partition for file input (default: about two partitions per core,
        each of 4 to 64 MiB).
    storage_options : mapping, optional
        fsspec options for the file system (credentials, endpoint).

    Returns
    -------
    RDD of DataSet

    Examples
    --------
    >>> rdd = csv_to_datasets("hdfs:///data/train/*.csv", label_index=5, num_classes=10,
    ...                       batch_size=32, skip_lines=1)  # doctest: +SKIP
    >>> rdd.first().features.shape  # doctest: +SKIP
    (32, 5)
    """
    spec = LabelSpec(label_index, num_classes, label_first, label_last, regression)
    options = CsvOptions(delimiter, quote, skip_lines, on_error)
    rdd_input = hasattr(source, "mapPartitionsWithIndex")
    if sc is None:
        sc = source.context if rdd_input else _active_context()  # type: ignore[union-attr]
    if on_error == "skip" and skipped is None:
        skipped = sc.accumulator(0)

    if rdd_input:
        result = source.mapPartitionsWithIndex(  # type: ignore[union-attr]
            LinesToDataSets(spec, options, batch_size, skipped)
        )
    else:
        urls = expand_paths(source, storage_options=storage_options)  # type: ignore[arg-type]
        parallelism = sc.defaultParallelism
        ranges = plan_line_ranges(
            urls,
            split_size or (lambda total: default_split_size(total, parallelism)),
            storage_options=storage_options,
        )
        if not ranges:
            result = sc.emptyRDD()
        else:
            function = RangesToDataSets(
                spec, options, batch_size, skipped, storage_options=storage_options
            )
            result = sc.parallelize(ranges, len(ranges)).mapPartitions(function)
    if skipped is not None:
        result.skipped = skipped  # type: ignore[attr-defined]
    return result


def _active_context() -> SparkContext:
    from pyspark import SparkContext

    active = SparkContext._active_spark_context
    if active is None:
        raise RuntimeError("no active SparkContext: start a SparkSession or pass sc=")
    return active
