"""CSV to minibatch DataSets on Spark, a whole partition per native call.

Two inputs, one conversion: an RDD of lines (each partition joined and parsed at once), or files
(paths, directories, globs, any fsspec URL) that executors read in byte ranges themselves, so no
line ever travels from the JVM to Python. Either way each partition yields DataSets of
``batch_size`` examples (the last of a partition smaller).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fsspec.utils import infer_compression

from sparkbatch._arguments import check_int, check_optional_int
from sparkbatch._jobs import JobDescription
from sparkbatch.convert.table import LabelSpec, batches, split_table
from sparkbatch.data import DataSet
from sparkbatch.data.loaders import check_preprocessor, preprocess
from sparkbatch.errors import CsvError
from sparkbatch.records.csv_files import HEAD_BYTES, check_head, reading, text_start
from sparkbatch.records.csv_parser import (
    SAMPLE_BYTES,
    SAMPLE_ROWS,
    CsvOptions,
    parse_csv_buffer,
    table_width,
)
from sparkbatch.storage import (
    LineRange,
    count_lines_before,
    expand_paths,
    plan_line_ranges,
    read_line_range,
)
from sparkbatch.storage.ranges import open_input

if TYPE_CHECKING:
    from pyspark import RDD, Accumulator, SparkContext

__all__ = ["csv_to_datasets", "LinesToDataSets", "RangesToDataSets"]

# Bytes of CSV per Spark partition when reading files: at most what Spark's file sources put in
# one (spark.sql.files.maxPartitionBytes, 128 MiB; HDFS's block size, which sc.textFile splits
# at) ...
MAX_SPLIT_SIZE = 128 << 20
MIN_SPLIT_SIZE = 4 << 20  # ... and at least this many, unless a file is smaller
_MAX_BLOCK = 16 << 20  # bytes read at a time while looking for the first data row
_MAX_ROW_SHOWN = 1000  # characters of the first data row kept for hints
_MAX_HEAD = 1 << 28  # the driver reads at most this much of a file to find its first data rows

# NOTE [one width]: every row of a csv_to_datasets input must have as many fields as the first
# data row (of the first file that has one; of the RDD), and that width is found once, on the
# driver, before any partition is parsed. A partition that took the width of its own first row
# would get a result that depends on where the input was cut: with on_error="skip" a bad first
# row would make every good row after it "bad", and a label_index=-1 would name another column.

# NOTE [one record per line]: csv_to_datasets reads each line as one record, as Spark's CSV
# reader does without multiLine (and DL4J's textFile + CSVRecordReader): a quoted field may hold
# the delimiter but not a line break. One that does is a bad row on its first line ("expected a
# closing quote before the end of the line"), and each line after it is a row of its own
# (usually bad too). Files are cut into byte ranges at line breaks, and no range could tell
# whether the line break it starts after lies inside quotes without reading the file from the
# start, so this rule is what keeps rows, values and skip counts the same for every split_size
# (and every partitioning of an RDD). CSVRecordReader (one machine) reads quoted line breaks.
#
# NOTE [header ends]: a byte range that does not start a file must know how many of the file's
# skip_lines header lines reach into it, which takes a read of the file's start
# (count_lines_before). The driver reads the start of the first files anyway (for the width of
# the table) and passes where their header lines end: ranges of those files that begin past
# that offset skip the read. Ranges of other files still count, as their headers may differ.
#
# NOTE [foreign files]: the first HEAD_BYTES bytes of every file are checked once, where its
# first range is read (and on the driver for the first file), for what is not CSV text
# (sparkbatch.records.csv_files: compressed data under a name that is not decompressed, binary
# files, UTF-16 and UTF-32, CR-only line ends); a UTF-8 byte order mark is dropped. Compressed
# files (.gz, .bz2, .xz, .zip) are decompressed, one range each. Other ranges of a file look at
# its head only when they find a bad row, so that a job failing on one of them names the cause.


def default_split_size(total_bytes: int, parallelism: int) -> int:
    """A size that cuts ``total_bytes`` into a multiple of ``parallelism`` ranges (so that every
    core gets the same share), each of 4 to 128 MiB, in as few waves of tasks as that allows:
    each wave of Python tasks costs a Spark job about 10 ms, or 50 ms over TCP (NOTE [python
    task latency] in :mod:`sparkbatch.spark.conf`). 150 MB on 2 cores went from 4 ranges of
    37.5 MB (with at most 64 MiB) to 2 of 75 MB: 152-158 to 141-146 ms over Unix sockets,
    169-172 to 146-148 over TCP (docs/performance.md). A task holds its range and the rows
    parsed from it, about twice the range's bytes for tables of short numbers.

    >>> [default_split_size(mb << 20, 2) >> 20 for mb in (1, 50, 150)]
    [4, 25, 75]
    >>> default_split_size(10 << 30, 4) >> 20
    128
    """
    cores = max(1, parallelism)
    waves = max(1, -(-total_bytes // (cores * MAX_SPLIT_SIZE)))
    wanted = -(-total_bytes // (waves * cores))
    return max(MIN_SPLIT_SIZE, min(MAX_SPLIT_SIZE, wanted))


@dataclass(frozen=True)
class _Table:
    """The width every row must have, and where it was taken from (for messages)."""

    columns: int
    origin: str  # "a.csv, line 2": the first data row of that width
    row: str = ""  # its text (for a hint about the delimiter)


class _CsvToDataSets:
    """What both partition functions share: parse a buffer, cut it into DataSets, count skips."""

    def __init__(
        self,
        spec: LabelSpec,
        options: CsvOptions,
        batch_size: int,
        skipped: Accumulator[int] | None,
        table: _Table | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        self.batch_size = check_int("batch_size", batch_size)
        self.skipped = skipped
        self.table = table

    def _convert(self, buffer: Any, **parse_args: Any) -> Iterator[DataSet]:
        table = self.table
        if table is None:
            found = _buffer_width(buffer, self.options, parse_args.get("skip_lines"))
            if found is None:
                return
            table = _Table(found[0], f"{parse_args['source']}, line {found[1]}")
        parsed = parse_csv_buffer(
            buffer,
            self.options,
            columns=table.columns,
            columns_from=table.origin,
            class_columns=_class_columns(self.spec, table),
            quoted_newlines=False,  # NOTE [one record per line]
            **parse_args,
        )
        if parsed.skipped and self.skipped is not None:
            self.skipped.add(parsed.skipped)
        if parsed.values.shape[0]:
            yield from batches(split_table(parsed.values, self.spec), self.batch_size)


def _buffer_width(buffer: Any, options: CsvOptions, skip: int | None) -> tuple[int, int] | None:
    """:func:`~sparkbatch.records.csv_parser.table_width` of ``buffer`` (bytes, or a memoryview
    of a range past its byte order mark), copying only the start of a view that it needs."""
    if isinstance(buffer, bytes):
        return table_width(buffer, options, skip_lines=skip)
    view, size = memoryview(buffer), SAMPLE_BYTES
    while True:
        complete = size >= len(view)
        found = table_width(bytes(view[:size]), options, skip_lines=skip, complete=complete)
        if found is not None or complete:
            return found
        size *= 4


def _class_columns(
    spec: LabelSpec, table: _Table, options: CsvOptions | None = None
) -> dict[int, int]:
    """The class column of a classification ``spec`` with its class count, checked against the
    table's width: the labels must be columns of it, and leave at least one feature column."""
    where = f"the width of the first data rows, as in {table.origin}"
    try:
        label_columns = spec.label_columns(table.columns)
    except ValueError as e:
        raise ValueError(f"{e} ({where}){_delimiter_hint(table, options)}") from None
    if label_columns and len(label_columns) == table.columns:
        raise ValueError(
            f"the rows have {table.columns} column(s), all of them labels: no feature column is "
            f"left ({where}){_delimiter_hint(table, options)}"
        )
    if not spec.classification:
        return {}
    return {label_columns[0]: int(spec.num_classes or 0)}


def _delimiter_hint(table: _Table, options: CsvOptions | None) -> str:
    """``"; is the delimiter ';'? ..."`` when the first row holds a likelier delimiter."""
    if options is None:
        return ""
    for candidate in (";", "\t", "|", ",", " "):
        if table.row.count(candidate) > table.row.count(options.delimiter):
            row = table.row if len(table.row) <= 80 else table.row[:77] + "..."
            return f"; is the delimiter {candidate!r}? the row is {row!r}"
    return ""


def _file_table(
    urls: Sequence[str],
    options: CsvOptions,
    storage_options: Mapping[str, Any] | None,
    header_ends: dict[str, int] | None = None,
) -> _Table | None:
    """The width of the table: that of the first data rows of the first file that has some
    (:func:`~sparkbatch.records.csv_parser.table_width`), None when no file has a data row.

    Read on the driver, as Spark's CSV reader reads a header: every byte range then checks its
    rows against the same width, whatever the ranges are (NOTE [one width]). ``header_ends``
    gets the byte offset where the ``skip_lines`` header lines end in each uncompressed file
    read here (NOTE [header ends]).
    """
    for url in urls:
        with open_input(url, storage_options=storage_options) as f:
            head, block = b"", SAMPLE_BYTES
            while True:
                with reading(url):
                    chunk = f.read(block)
                if not head:
                    bom = text_start(url, chunk)
                    chunk = chunk[bom:]
                head += chunk
                if header_ends is not None and url not in header_ends:
                    end = _header_end(head, options.skip_lines)
                    if end is not None and not infer_compression(url):
                        header_ends[url] = bom + end
                found = table_width(head, options, complete=not chunk)
                if found is not None:
                    row = head.split(b"\n", found[1])[found[1] - 1][:_MAX_ROW_SHOWN]
                    text = row.decode("utf-8", "replace").rstrip("\r")
                    return _Table(found[0], f"{url}, line {found[1]}", text)
                if not chunk:
                    break
                if len(head) >= _MAX_HEAD:
                    line = head.count(b"\n") + 1
                    raise CsvError(
                        f"{url}, line {line}: expected a line break within {_MAX_HEAD >> 20} MiB, "
                        "found none",
                        source=url,
                        line=line,
                        expected="a line break",
                    )
                block = min(2 * block, _MAX_BLOCK)
    return None


def _header_end(head: bytes, skip: int) -> int | None:
    """The offset in ``head`` just past its first ``skip`` lines, None if it holds fewer."""
    end = 0
    for _ in range(skip):
        found = head.find(b"\n", end)
        if found < 0:
            return None
        end = found + 1
    return end


class _RddHead:
    """The first lines of a partition, as many as :func:`_rdd_table` needs: ``header`` lines, then
    data lines until, with ``rows`` and ``size`` from earlier partitions, the sample of
    :func:`~sparkbatch.records.csv_parser.table_width` is complete. Returns ``[(lines, ended)]``.
    Lower ``rows`` and ``size``, or more ``header`` lines, than the true ones only make it read
    further.
    """

    def __init__(self, options: CsvOptions, header: int, rows: int, size: int) -> None:
        self.blanks = " \t\r".replace(options.delimiter, "")
        self.header, self.rows, self.size = header, rows, size

    def __call__(self, lines: Iterable[str]) -> list[tuple[list[str], bool]]:
        taken: list[str] = []
        rows, size = self.rows, self.size
        for line in lines:
            taken.append(line)
            if len(taken) <= self.header:
                continue
            rows += bool(line.strip(self.blanks))
            size += len(line.encode()) + 1
            if rows >= SAMPLE_ROWS or (rows and size >= SAMPLE_BYTES):
                return [(taken, False)]
        return [(taken, True)]


def _rdd_table(
    rdd: RDD[str], options: CsvOptions
) -> tuple[_Table | None, dict[int, int], int | None]:
    """The width of the table of an RDD of lines (as :func:`_file_table`), the header lines (the
    RDD's first ``skip_lines``) of each partition that holds some, and the partition of the
    RDD's first line (None: the RDD is empty).

    Reads the first partitions only, and from each only the lines it needs, as ``RDD.take`` does.
    """
    header_left = options.skip_lines
    header_lines: dict[int, int] = {}
    data: list[str] = []  # the lines after the header so far
    origin: list[str] = []  # where each of them is
    first: int | None = None  # the partition of the first line
    index, batch, partitions = 0, 1, rdd.getNumPartitions()
    while index < partitions:
        # a batch of partitions, each read as if the first (so at least as far as needed)
        text = "".join(line + "\n" for line in data).encode()
        rows = sum(1 for line in data if line.strip(" \t\r".replace(options.delimiter, "")))
        head = _RddHead(options, header_left, rows, len(text))
        with JobDescription(rdd.context, "sparkbatch csv: the header and width of the lines"):
            heads = rdd.context.runJob(rdd, head, range(index, min(index + batch, partitions)))
        for lines, ended in heads:
            if lines and first is None:
                first = index
                _check_lines(f"partition {index}", lines)
                lines[0] = lines[0].removeprefix("\ufeff")
            skip = min(header_left, len(lines))
            if skip:
                header_lines[index] = skip
                header_left -= skip
            data += lines[skip:]
            origin += [f"partition {index}, line {k}" for k in range(skip + 1, len(lines) + 1)]
            index += 1
            if not ended:  # the sample is complete
                index = partitions
                break
        batch *= 4
    found = None
    if data:
        text = "".join(line + "\n" for line in data).encode()
        found = table_width(text, options, skip_lines=0)
    if found is None:
        return None, header_lines, first
    row = data[found[1] - 1][:_MAX_ROW_SHOWN]
    return _Table(found[0], origin[found[1] - 1], row), header_lines, first


def _check_lines(source: str, lines: list[str]) -> None:
    """NOTE [foreign files] for an RDD of lines: Spark decodes text as UTF-8, putting U+FFFD for
    bytes that are not, so a binary or UTF-16 file shows as NUL characters or many U+FFFD."""
    sample = "\n".join(lines)[:HEAD_BYTES]
    bad = sample.count("\x00") + sample.count("\ufffd")
    if "\x00" in sample or bad > 0.3 * len(sample):
        raise CsvError(
            f"{source}, line 1: expected UTF-8 CSV text, found binary data or UTF-16 text "
            f"({bad} of the first {len(sample)} characters are NUL or not UTF-8)",
            source=source,
            line=1,
            text=sample[:16],
            expected="UTF-8 CSV text",
        )


class LinesToDataSets(_CsvToDataSets):
    """``rdd_lines.mapPartitionsWithIndex(LinesToDataSets(...))``: one native parse per partition.

    ``header_lines`` maps a partition to the header lines at its start (by default
    ``skip_lines`` in partition 0: with ``sc.textFile`` of one file that is where they are), and
    ``table`` gives the width of every row (by default each partition's first data row).
    :func:`csv_to_datasets` finds both on the driver, so that its result does not depend on how
    the lines are partitioned. For many files with headers, read the files directly
    (:func:`csv_to_datasets` with a path), which skips them once per file.
    """

    def __init__(
        self, *args: Any, header_lines: Mapping[int, int] | None = None, first_partition: int = 0
    ) -> None:
        super().__init__(*args)
        self.header_lines = (
            {0: self.options.skip_lines} if header_lines is None else dict(header_lines)
        )
        self.first_partition = first_partition  # where a UTF-8 byte order mark is dropped

    def __call__(self, index: int, lines: Iterable[str]) -> Iterator[DataSet]:
        text = "\n".join(lines)
        if not text:
            return iter(())
        if index == self.first_partition:
            text = text.removeprefix("\ufeff")
        buffer = text.encode("utf-8")
        return self._convert(
            buffer,
            source=f"partition {index}",
            skip_lines=self.header_lines.get(index, 0),
            threads=1,
        )


# NOTE [read buffer]: a range's bytes are dead once parsed (the parse copies what it keeps, an
# error copies its text, and nothing is yielded between the read and the parse), so each thread
# of a worker process reads its local ranges into one array, kept from range to range and task
# to task: the pages stay mapped (37.5 MB read in 7 ms instead of 11 into a new array). It is as
# large as the largest range the thread read: MAX_SPLIT_SIZE and a line at most with the default
# split sizes.
_read_buffers = threading.local()


def _read_range(r: LineRange, storage_options: Mapping[str, Any]) -> tuple[Any, int]:
    """read_line_range into this thread's read buffer (NOTE [read buffer])."""
    kept: np.ndarray | None = getattr(_read_buffers, "array", None)
    buffer, begin = read_line_range(r, storage_options=storage_options, buffer=kept)
    array = buffer.obj if isinstance(buffer, memoryview) else None
    if isinstance(array, np.ndarray) and (kept is None or array.size > kept.size):
        _read_buffers.array = array
    return buffer, begin


class RangesToDataSets(_CsvToDataSets):
    """Reads the :class:`~sparkbatch.storage.LineRange` items of a partition and converts them."""

    def __init__(
        self,
        *args: Any,
        storage_options: Mapping[str, Any] | None = None,
        header_ends: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(*args)
        self.storage_options = dict(storage_options or {})
        self.header_ends = dict(header_ends or {})  # NOTE [header ends]

    def __call__(self, ranges: Iterable[LineRange]) -> Iterator[DataSet]:
        skip = self.options.skip_lines
        for r in ranges:
            with reading(r.url):
                buffer, begin = _read_range(r, self.storage_options)
            if not buffer:
                continue
            if begin == 0:  # the file's first bytes: NOTE [foreign files]
                start = text_start(r.url, bytes(memoryview(buffer)[:HEAD_BYTES]))
                if start:
                    buffer = memoryview(buffer)[start:]
            if begin >= self.header_ends.get(r.url, begin + 1):
                header = 0  # past the header lines: NOTE [header ends]
            elif begin > 0 and skip > 0:  # header lines may reach past the file's first range
                header = skip - count_lines_before(
                    r.url, begin, limit=skip, storage_options=self.storage_options
                )
            else:
                header = skip if begin == 0 else 0
            try:
                yield from self._convert(
                    buffer,
                    source=r.url,
                    skip_lines=header,
                    threads=1,
                    lines_before=lambda r=r, begin=begin: count_lines_before(
                        r.url, begin, storage_options=self.storage_options
                    ),
                )
            except CsvError:
                if begin > 0:  # a range of a file that is not CSV says so, as its first does
                    self._check_head(r.url)
                raise

    def _check_head(self, url: str) -> None:
        with open_input(url, storage_options=self.storage_options) as f:
            check_head(url, f.read(HEAD_BYTES))


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
    preprocessor: Callable[[DataSet], DataSet] | None = None,
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
        :mod:`sparkbatch.storage.ranges`), header lines skipped once per file. Each line is one
        row: a quoted field may hold the delimiter, not a line break (NOTE [one record per
        line]). Every row must have the width of the table, the most common number of columns
        among the first data rows of the first file (or of the RDD), which is read when this
        function is called, as Spark's CSV reader reads a header (NOTE [one width]). Rows,
        values and skip counts do not depend on ``split_size`` or on the RDD's partitions.
        Files named ``.gz``, ``.bz2``, ``.xz`` or ``.zip`` are decompressed (one task each); a
        file that is not UTF-8 CSV text fails with an error saying what it is (NOTE [foreign
        files]).
    label_index, num_classes : int, optional
        Classification: the column of the class index (``-1`` = last) and the class count.
    label_first, label_last, regression
        Regression: the label columns (inclusive) with ``regression=True``.
    batch_size : int
        Examples per DataSet; the last DataSet of each partition may be smaller.
    skip_lines : int
        Header lines at the start of each file (the first lines of an RDD of lines).
    delimiter, quote : str
        Field delimiter and quote character (``""``: no quoting).
    on_error : {"raise", "skip"}
        ``"raise"``: a bad row (wrong column count, non-numeric value, bad class index, a quote
        left open at the end of the line) fails the job with a
        :class:`~sparkbatch.errors.CsvError` naming file or partition, line, column and text:
        the first bad row of the partition that failed first. ``"skip"``: bad rows are dropped
        and counted in ``skipped``.
    skipped : pyspark.Accumulator, optional
        Where ``on_error="skip"`` counts rows; created if not given and attached to the returned
        RDD as ``rdd.skipped``. Read it after an action. Like every accumulator updated in a
        transformation, a re-executed task counts again.
    sc : SparkContext, optional
        For file input (default: the active context).
    split_size : int, optional
        Bytes of CSV per partition for file input (default: the same number of partitions
        per core, each of 4 to 128 MiB, as few as that allows: one per core up to 128 MiB
        each).
    storage_options : mapping, optional
        fsspec options for the file system (credentials, endpoint).
    preprocessor : callable, optional
        ``(DataSet) -> DataSet`` applied to each minibatch on the executors (DL4J's
        ``DataSetPreProcessor``), e.g. a fitted normalizer; picklable. One that returns
        anything but a DataSet fails the task with a TypeError naming it.

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
    # integers are checked here: a float would pass and fail in every task
    batch_size = check_int("batch_size", batch_size)
    skip_lines = check_int("skip_lines", skip_lines, minimum=0)
    split_size = check_optional_int("split_size", split_size)
    preprocessor = check_preprocessor(preprocessor)
    spec = LabelSpec(label_index, num_classes, label_first, label_last, regression)
    options = CsvOptions(delimiter, quote, skip_lines, on_error)
    rdd_input = hasattr(source, "mapPartitionsWithIndex")
    if sc is None:
        sc = source.context if rdd_input else _active_context()  # type: ignore[union-attr]
    if on_error == "skip" and skipped is None:
        skipped = sc.accumulator(0)

    if rdd_input:
        table, header_lines, first = _rdd_table(source, options)  # type: ignore[arg-type]
        if table is None:  # no data row
            result = sc.emptyRDD()
        else:
            _class_columns(spec, table, options)  # labels outside the table fail here
            function = LinesToDataSets(
                spec,
                options,
                batch_size,
                skipped,
                table,
                header_lines=header_lines,
                first_partition=first or 0,
            )
            result = source.mapPartitionsWithIndex(function)  # type: ignore[union-attr]
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
            header_ends: dict[str, int] = {}
            table = _file_table(urls, options, storage_options, header_ends)
            if table is None:  # no file holds a data row
                result = sc.emptyRDD()
            else:
                _class_columns(spec, table, options)  # labels outside the table fail here
                function = RangesToDataSets(
                    spec,
                    options,
                    batch_size,
                    skipped,
                    table,
                    storage_options=storage_options,
                    header_ends=header_ends,
                )
                result = sc.parallelize(ranges, len(ranges)).mapPartitions(function)
    if preprocessor is not None:  # pipelined into the same tasks
        result = result.map(functools.partial(preprocess, preprocessor, dataset_only=True))
    if skipped is not None:
        result.skipped = skipped  # type: ignore[attr-defined]
    return result


def _active_context() -> SparkContext:
    from pyspark import SparkContext

    active = SparkContext._active_spark_context
    if active is None:
        raise RuntimeError("no active SparkContext: start a SparkSession or pass sc=")
    return active
