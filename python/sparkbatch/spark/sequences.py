"""Sequence files (one CSV file per sequence) to DataSets on Spark: per record, as DataVec's
``SequenceRecordReaderFunction`` and ``DataVecSequenceDataSetFunction``, or a whole partition of
files at a time.

The seed's chain, one element per file::

    sequences = sc.binaryFiles("hdfs:///data/seq").map(
        SequenceFileToRecords(CSVSequenceRecordReader(skip_lines=0, delimiter=","))
    )
    datasets = sequences.map(SequencesToDataSet(label_index=5, num_classes=10))

Each file becomes a DataSet of one sequence (``[1, f, T]``, no mask) whose metadata names the
file; :func:`~sparkbatch.spark.batch_and_export` pads and masks them into minibatches. The
partition-wide :func:`csv_sequences_to_datasets` gives the same examples much faster: the
driver lists the files, each executor reads its files itself and parses each in one native
call, and minibatches of ``batch_size`` padded sequences come out with their masks.

NOTE [one width for sequences]: every step of every file must have the width of the first data
row of the first file (read on the driver, as ``csv_to_datasets`` does); a file of another
width fails naming both files. The per-record chain checks each file on its own, and merging
names both files when two sequences differ in width.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fsspec.utils import infer_compression

from sparkbatch._arguments import check_int, check_optional_int
from sparkbatch.convert.sequences import convert_sequence, tables_to_dataset
from sparkbatch.convert.table import LabelSpec
from sparkbatch.data import DataSet
from sparkbatch.data.sequences import check_alignment
from sparkbatch.errors import CsvError
from sparkbatch.records.csv import is_blank_row
from sparkbatch.records.csv_files import HEAD_BYTES, UTF8_BOM, check_head, reading
from sparkbatch.records.csv_parser import CsvOptions, parse_csv_buffer, table_width
from sparkbatch.records.csv_sequence import (
    CSVSequenceRecordReader,
    SequenceRecord,
    empty_sequence_error,
    sequence_bytes,
)
from sparkbatch.spark.csv import _active_context, _class_columns, _Table
from sparkbatch.storage import expand_paths, read_bytes

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = [
    "SequenceFileToRecords",
    "SequenceFilesToDataSets",
    "SequencesToDataSet",
    "csv_sequences_to_datasets",
]


class SequenceFileToRecords:
    """One file of ``sc.binaryFiles`` to a sequence: DataVec's ``SequenceRecordReaderFunction``.

    Called with a ``(path, bytes)`` pair; returns the reader's
    :meth:`~sparkbatch.records.CSVSequenceRecordReader.parse_sequence` of the bytes: a
    :class:`~sparkbatch.records.SequenceRecord` (a list of per-step records) that knows its
    file.

    Parameters
    ----------
    reader : CSVSequenceRecordReader, optional
        Gives the header lines, delimiter and quote; ``CSVSequenceRecordReader()`` if None.

    Examples
    --------
    >>> to_sequence = SequenceFileToRecords(CSVSequenceRecordReader(skip_lines=1))
    >>> seq = to_sequence(("file:/data/s1.csv", b"x,y\\n1,0\\n2,1\\n"))
    >>> seq, seq.source
    ([[1.0, 0.0], [2.0, 1.0]], 'file:/data/s1.csv')
    """

    def __init__(self, reader: CSVSequenceRecordReader | None = None) -> None:
        if reader is None:
            reader = CSVSequenceRecordReader()
        if not callable(getattr(reader, "parse_sequence", None)):
            raise TypeError(
                "reader must have a parse_sequence(data, source) method, got "
                f"{type(reader).__name__}"
            )
        self.reader = reader

    def __call__(self, item: tuple[str, bytes]) -> SequenceRecord:
        path, data = item
        return self.reader.parse_sequence(data, path)

    def __repr__(self) -> str:
        return f"SequenceFileToRecords({self.reader!r})"


class SequencesToDataSet:
    """One sequence to a DataSet of one example: DataVec's ``DataVecSequenceDataSetFunction``.

    Features ``[1, f, T]`` float32; labels one-hot per step ``[1, num_classes, T]``
    (classification), ``[1, k, T]`` (regression), or with ``many_to_one=True`` only the last
    step's ``[1, k]``. The sequence's file goes to the metadata (``"source"``) so that merging
    and exporting can name it. Checks and errors: :func:`sparkbatch.convert.sequence_to_dataset`.

    Parameters
    ----------
    label_index, num_classes : int, optional
        Classification: the class column (``-1`` = last) and the number of classes.
    label_first, label_last : int, optional
        Regression: the first and last (inclusive) label columns, with ``regression=True``.
    regression : bool, default False
        Whether the labels are values rather than class indices.
    many_to_one : bool, default False
        Keep only the label of the last step (2-D labels).

    Examples
    --------
    >>> to_dataset = SequencesToDataSet(label_index=2, num_classes=3)
    >>> ds = to_dataset([[0.1, 0.2, 1.0], [0.3, 0.4, 2.0]])
    >>> ds.features.shape, ds.labels.shape
    ((1, 2, 2), (1, 3, 2))
    >>> SequencesToDataSet(label_index=2, num_classes=3, many_to_one=True)([[0.1, 0.2, 1.0]]).labels
    array([[0., 1., 0.]], dtype=float32)
    """  # noqa: E501

    def __init__(
        self,
        label_index: int | None = None,
        num_classes: int | None = None,
        label_first: int | None = None,
        label_last: int | None = None,
        regression: bool = False,
        many_to_one: bool = False,
    ) -> None:
        self.spec = LabelSpec.from_arguments(
            label_index, num_classes, label_first, label_last, regression
        )
        if not isinstance(many_to_one, bool):
            raise ValueError(f"many_to_one must be a bool, got {many_to_one!r}")
        self.many_to_one = many_to_one

    def __call__(self, sequence: Sequence[Sequence[Any]]) -> DataSet:
        return convert_sequence(self.spec, sequence, many_to_one=self.many_to_one)

    def __repr__(self) -> str:
        s = self.spec
        if s.regression:
            if s.label_index is not None:
                labels = f"label_index={s.label_index}, regression=True"
            else:
                labels = f"label_first={s.label_first}, label_last={s.label_last}, regression=True"
        else:
            labels = f"label_index={s.label_index}, num_classes={s.num_classes}"
        extra = ", many_to_one=True" if self.many_to_one else ""
        return f"SequencesToDataSet({labels}{extra})"


class SequenceFilesToDataSets:
    """``rdd_of_urls.mapPartitions(...)``: each file of a partition read and parsed natively,
    then every ``batch_size`` sequences one padded, masked DataSet (the last smaller)."""

    def __init__(
        self,
        spec: LabelSpec,
        options: CsvOptions,
        table: _Table,
        batch_size: int,
        *,
        alignment: str = "align_start",
        many_to_one: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        self.table = table
        self.batch_size = check_int("batch_size", batch_size)
        self.alignment = check_alignment(alignment)
        self.many_to_one = many_to_one
        self.storage_options = dict(storage_options or {})
        self.class_columns = _class_columns(spec, table)

    def parse(self, url: str, data: bytes) -> Any:
        """One file's bytes as a float32 table ``[T, columns]`` (NOTE [one width for
        sequences]); CsvError naming the file for a bad or empty one.

        NOTE [heads on error]: the first bytes of a file are looked at only when it fails to
        parse (text that is not CSV always does), to name what it holds (a binary file, UTF-16,
        CR-only line ends: :mod:`sparkbatch.records.csv_files`), as ``csv_to_datasets`` does
        for ranges past a file's start; for files of a few hundred bytes the check would cost
        as much as the parse.
        """
        if infer_compression(url) is not None:
            text = sequence_bytes(data, url)  # decompressed, head checked
        else:
            text = data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data
        try:
            parsed = parse_csv_buffer(
                text,
                self.options,
                source=url,
                columns=self.table.columns,
                columns_from=self.table.origin,
                class_columns=self.class_columns,
                threads=1,
            )
        except CsvError as e:
            check_head(url, text[:HEAD_BYTES])
            raise _with_step(e, text, self.options) from e.__cause__
        if parsed.values.shape[0] == 0:
            raise empty_sequence_error(
                url, text.decode("utf-8", "replace"), self.options.skip_lines
            )
        return parsed.values

    def read(self, url: str) -> bytes:
        """The bytes of one file; plain local paths (what the driver lists for local input)
        are read with :func:`open`, skipping fsspec's per-call URL resolution."""
        if "://" not in url:
            with open(url, "rb") as f:
                return f.read()
        with reading(url):
            return read_bytes(url, storage_options=self.storage_options)

    def __call__(self, urls: Iterable[str]) -> Iterator[DataSet]:
        tables: list[Any] = []
        sources: list[str | None] = []
        for url in urls:
            tables.append(self.parse(url, self.read(url)))
            sources.append(url)
            if len(tables) == self.batch_size:
                yield self._batch(tables, sources)
                tables, sources = [], []
        if tables:
            yield self._batch(tables, sources)

    def _batch(self, tables: list[Any], sources: list[str | None]) -> DataSet:
        return tables_to_dataset(
            self.spec,
            tables,
            alignment=self.alignment,
            many_to_one=self.many_to_one,
            sources=sources,
        )


def _with_step(error: CsvError, text: bytes, options: CsvOptions) -> CsvError:
    """``error`` (of a line of a sequence file) with the step of that line: ``"a.csv, line 7
    (step 5), ..."``, as the per-record path names it; steps are the records after the header
    that are not blank, counted as :meth:`CSVSequenceRecordReader.parse_sequence` counts them
    (a quoted field may hold line breaks: a record is not a line)."""
    line, source = error.line, error.source
    prefix = f"{source}, line {line}"
    if line is None or line <= options.skip_lines or not str(error).startswith(prefix):
        return error
    step = _step_at(text, line, options)
    message = f"{prefix} (step {step}){str(error)[len(prefix) :]}"
    return CsvError(
        message,
        source=source,
        line=line,
        column=error.column,
        text=error.text,
        expected=error.expected,
    )


def _step_at(text: bytes, line: int, options: CsvOptions) -> int:
    """The step of the record holding physical line ``line`` (1-based) of a sequence file: the
    records that are not blank and end before it, after the ``skip_lines`` header lines."""
    reader = CSVSequenceRecordReader(options.skip_lines, options.delimiter, options.quote)
    lines = io.StringIO(text.decode("utf-8", "replace"), newline="")
    rows = csv.reader(itertools.islice(lines, options.skip_lines, None), **reader._dialect())
    step = 0
    try:
        for fields in rows:
            if options.skip_lines + rows.line_num >= line:  # the record reaches the line
                break
            if not is_blank_row(fields):
                step += 1
    except csv.Error:  # a record the parser refused: the steps before it are counted
        pass
    return step


def _first_table(
    urls: Sequence[str], options: CsvOptions, storage_options: Mapping[str, Any] | None
) -> _Table:
    """The width of the first data row of the first file (NOTE [one width for sequences])."""
    url = urls[0]
    with reading(url):
        data = sequence_bytes(read_bytes(url, storage_options=dict(storage_options or {})), url)
    found = table_width(data, options)
    if found is None:
        raise empty_sequence_error(url, data.decode("utf-8", "replace"), options.skip_lines)
    width, line = found
    lines = data.split(b"\n", line)
    row = lines[line - 1].decode("utf-8", "replace").rstrip("\r") if len(lines) >= line else ""
    return _Table(width, f"{url}, line {line}", row)


def csv_sequences_to_datasets(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    label_index: int | None = None,
    num_classes: int | None = None,
    label_first: int | None = None,
    label_last: int | None = None,
    regression: bool = False,
    many_to_one: bool = False,
    batch_size: int = 32,
    alignment: str = "align_start",
    skip_lines: int = 0,
    delimiter: str = ",",
    quote: str = '"',
    sc: SparkContext | None = None,
    num_partitions: int | None = None,
    files_per_partition: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RDD[DataSet]:
    """Convert a directory of CSV files, one sequence per file, to an RDD of padded, masked
    minibatch DataSets, a partition of files at a time.

    The recommended form of the seed's chain ``binaryFiles → SequenceRecordReaderFunction →
    DataVecSequenceDataSetFunction`` (:class:`SequenceFileToRecords`,
    :class:`SequencesToDataSet`): the driver lists the files (and reads the first, for the
    width of the rows), each executor reads its files itself (fsspec) and parses each in one
    native call, and every ``batch_size`` sequences become one DataSet, in file order.

    Parameters
    ----------
    path : str, os.PathLike, glob, or a list of them
        Files or directories (read recursively; names starting with ``.`` or ``_`` are left
        out), any fsspec URL. Each file is one sequence, each line one step; files named
        ``.gz``, ``.bz2`` or ``.xz`` are decompressed.
    label_index, num_classes : int, optional
        Classification: the class column (``-1`` = last) and the class count; labels are
        one-hot per step ``[n, num_classes, T]``.
    label_first, label_last, regression
        Regression: the label columns (inclusive) with ``regression=True``: ``[n, k, T]``.
    many_to_one : bool, default False
        Only the label of each sequence's last real step: labels ``[n, k]``, no label mask.
    batch_size : int, default 32
        Sequences per DataSet; the last DataSet of each partition may hold fewer.
    alignment : {"align_start", "align_end", "equal_length"}
        Where shorter sequences of a minibatch are padded: at the end or at the start, with a
        mask ``[n, T_max]`` on the features and per-step labels (always, so that every
        minibatch has one); or not at all: sequences of different lengths in one minibatch are
        a :class:`~sparkbatch.errors.SequenceLengthError` naming both files, and there are no
        masks.
    skip_lines : int, default 0
        Header lines at the start of each file.
    delimiter, quote : str
        Field delimiter and quote character (``""``: no quoting). Quoted fields may hold line
        breaks.
    sc : SparkContext, optional
        Default: the active context.
    num_partitions, files_per_partition : int, optional
        How to cut the file list (give at most one); default: two partitions per core, or
        fewer so that each holds at least ``batch_size`` files. The last DataSet of each
        partition may hold fewer than ``batch_size`` sequences.
    storage_options : mapping, optional
        fsspec options for the file system (credentials, endpoint).

    Returns
    -------
    RDD of DataSet

    Raises
    ------
    FileNotFoundError
        Nothing exists at ``path``.
    CsvError
        On the driver: the first file has no step, or the labels are not columns of its rows.
        In the job: a file with another width than the first (both named), an empty or
        header-only file, a value that is not a number, a class label outside
        ``[0, num_classes)`` at any step; the message names the file, line and column.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for i, steps in enumerate([3, 1, 2]):
    ...     rows = [f"{i}.{t},{t % 2}" for t in range(steps)]
    ...     with open(os.path.join(d, f"s{i}.csv"), "w") as f:
    ...         _ = f.write("\\n".join(rows) + "\\n")
    >>> rdd = csv_sequences_to_datasets(d, label_index=1, num_classes=2, batch_size=3, sc=sc)
    >>> rdd.getNumPartitions() <= 2 * sc.defaultParallelism
    True
    >>> ds = rdd.first()
    >>> ds.features.shape, ds.labels.shape, ds.features_mask.tolist()
    ((3, 1, 3), (3, 2, 3), [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    >>> import shutil; shutil.rmtree(d)
    """
    batch_size = check_int("batch_size", batch_size)
    skip_lines = check_int("skip_lines", skip_lines, minimum=0)
    num_partitions = check_optional_int("num_partitions", num_partitions)
    files_per_partition = check_optional_int("files_per_partition", files_per_partition)
    if num_partitions is not None and files_per_partition is not None:
        raise ValueError("give num_partitions or files_per_partition, not both")
    alignment = check_alignment(alignment)
    if not isinstance(many_to_one, bool):
        raise ValueError(f"many_to_one must be a bool, got {many_to_one!r}")
    spec = LabelSpec.from_arguments(label_index, num_classes, label_first, label_last, regression)
    options = CsvOptions(delimiter, quote, skip_lines)
    if sc is None:
        sc = _active_context()
    urls = expand_paths(path, storage_options=storage_options)
    if not urls:
        return sc.emptyRDD()
    table = _first_table(urls, options, storage_options)
    try:
        function = SequenceFilesToDataSets(
            spec,
            options,
            table,
            batch_size,
            alignment=alignment,
            many_to_one=many_to_one,
            storage_options=storage_options,
        )
    except ValueError as e:  # labels outside the rows of the first file
        raise CsvError(str(e), source=urls[0], expected="label columns inside the rows") from None
    if files_per_partition is not None:
        num_partitions = -(-len(urls) // files_per_partition)
    elif num_partitions is None:  # two per core, each of at least batch_size files
        num_partitions = min(2 * sc.defaultParallelism, -(-len(urls) // batch_size))
    num_partitions = max(1, min(num_partitions, len(urls)))
    return sc.parallelize(urls, num_partitions).mapPartitions(function)
