"""Minibatches from a record reader on one machine: DataVec's ``RecordReaderDataSetIterator``.

The single-machine analogue of the seed's Spark chain (``DataVecDataSetFunction``): the same
label arguments, the same conversion (:func:`sparkbatch.convert.records_to_dataset`'s whole-array
path, NOTE [whole-list conversion] in :mod:`sparkbatch.convert.records`), one minibatch of
``batch_size`` records at a time from any :class:`~sparkbatch.records.RecordReader`.

NOTE [where a record came from]: a minibatch may span files, and a reader's lines need not be
consecutive (blank lines, quoted line breaks), so each record's file and line are taken from the
reader (``current_source``, ``current_line``) as it is read. An error of the conversion is
raised naming that record's file and line; the DataSet's metadata names the file of its
examples (``"source"`` when they share one, else ``"sources"``, a JSON list), which merging,
splitting and exporting keep (:mod:`sparkbatch.data.sequences`).

NOTE [preprocessors]: a preprocessor is any picklable callable ``(DataSet) -> DataSet`` (DL4J's
``DataSetPreProcessor``), applied to each minibatch after conversion, here and on Spark
(``RecordsToDataSet``, ``csv_to_datasets``); one that returns anything else raises TypeError
naming it, rather than passing the wrong object on to training.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

from sparkbatch._arguments import check_int
from sparkbatch.convert.records import _convert
from sparkbatch.convert.table import LabelSpec
from sparkbatch.data import DataSet
from sparkbatch.data.loaders import Preprocessor, check_preprocessor, preprocess
from sparkbatch.data.sequences import SOURCE, SOURCES
from sparkbatch.errors import CsvError
from sparkbatch.records import Record, RecordReader

__all__ = [
    "RecordReaderDataSetIterator",
    "read_batch",
]


def read_batch(
    reader: RecordReader, batch_size: int
) -> tuple[list[Record], list[str | None], list[int | None]]:
    """The next ``batch_size`` records of ``reader`` (fewer at its end), with the file and line
    of each (NOTE [where a record came from])."""
    records: list[Record] = []
    sources: list[str | None] = []
    lines: list[int | None] = []
    for record in itertools.islice(reader, batch_size):
        records.append(record)
        sources.append(reader.current_source)
        lines.append(reader.current_line)
    return records, sources, lines


def _place(source: str | None, line: int | None) -> str:
    """``"<source>, line <line>"``, leaving out what is unknown ("" when both are)."""
    return ", ".join(
        part for part in (source, None if line is None else f"line {line}") if part is not None
    )


def _relocated(error: CsvError, source: str | None, line: int | None) -> CsvError:
    """``error`` (raised with row ``r`` of a minibatch as its line) naming ``source`` and
    ``line`` instead, the record's real place."""
    message = str(error).removeprefix(f"line {error.line}")
    where = _place(source, line)
    if not where:
        message = message.removeprefix(", ").removeprefix(": ")
    return CsvError(
        where + message,
        source=source,
        line=line,
        column=error.column,
        text=error.text,
        expected=error.expected,
    )


def _metadata(sources: list[str | None]) -> dict[str, str] | None:
    if all(s is None for s in sources):
        return None
    if all(s == sources[0] for s in sources):
        return {SOURCE: str(sources[0])}
    return {SOURCES: json.dumps(sources)}


class RecordReaderDataSetIterator:
    """Minibatch DataSets from a record reader: DataVec's ``RecordReaderDataSetIterator``.

    Each minibatch holds ``batch_size`` records (the last one fewer), converted at once:
    features ``[n, f]`` float32 (every column that is not a label, in order), labels one-hot
    ``[n, num_classes]`` (classification) or the label columns ``[n, k]`` (regression). Iterating
    starts from the reader's first record (``for ds in iterator`` is one epoch, every time);
    DataVec's ``has_next()`` / ``next()`` / ``reset()`` work too.

    Parameters
    ----------
    reader : RecordReader
        An initialized reader (:class:`~sparkbatch.records.CSVRecordReader`, a
        :class:`~sparkbatch.records.FileRecordReader` subclass, ...).
    batch_size : int
        Records per minibatch.
    label_index : int or None, default -1
        Classification: the class column (``-1`` = last). Regression: the one label column.
        None with ``num_classes=None``: no labels, every column a feature.
    num_classes : int, optional
        Classification only, required there.
    label_first, label_last : int, optional
        Regression only: the first and last (inclusive) label columns, as for
        :class:`~sparkbatch.spark.RecordsToDataSet` and ``csv_to_datasets`` (DL4J's
        ``labelIndexFrom``, ``labelIndexTo``); ``label_index`` is then left at its default.
    regression : bool, default False
        Whether the labels are values to predict rather than class indices.
    preprocessor : callable, optional
        ``(DataSet) -> DataSet`` applied to each minibatch (NOTE [preprocessors]).

    Raises
    ------
    TypeError
        ``reader`` is not a :class:`~sparkbatch.records.RecordReader`, or ``preprocessor`` is
        not callable.
    ValueError
        The label arguments are inconsistent; the message names the argument.
    CsvError
        While iterating: a record of another width than the first of its minibatch, a cell that
        is not a number, a class index that is not an integer in ``[0, num_classes)``; the
        message names the record's file and line (NOTE [where a record came from]).

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.records import CSVRecordReader
    >>> from sparkbatch.storage import open_output
    >>> with open_output("memory://sparkbatch-doc/rrdsi/iris.csv") as f:
    ...     _ = f.write(b"5.1,3.5,1.4,0.2,0\\n6.2,2.9,4.3,1.3,1\\n7.7,3.0,6.1,2.3,2\\n")
    >>> reader = CSVRecordReader().initialize("memory://sparkbatch-doc/rrdsi")
    >>> iterator = RecordReaderDataSetIterator(reader, batch_size=2, label_index=4, num_classes=3)
    >>> [(ds.features.shape, ds.labels.argmax(axis=1).tolist()) for ds in iterator]
    [((2, 4), [0, 1]), ((1, 4), [2])]
    >>> regression = RecordReaderDataSetIterator(
    ...     reader, 3, label_first=2, label_last=3, regression=True)
    >>> regression.reset()  # the first iterator read the reader to its end
    >>> ds = regression.next()
    >>> ds.features.shape, ds.labels.tolist()[0] == [np.float32(1.4), np.float32(0.2)]
    ((3, 3), True)
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    def __init__(
        self,
        reader: RecordReader,
        batch_size: int,
        label_index: int | None = -1,
        num_classes: int | None = None,
        *,
        label_first: int | None = None,
        label_last: int | None = None,
        regression: bool = False,
        preprocessor: Preprocessor | None = None,
    ) -> None:
        if not isinstance(reader, RecordReader):
            raise TypeError(
                "reader must be a sparkbatch.records.RecordReader (initialize, iteration, "
                f"has_next, next, reset, parse, current_source, current_line), got "
                f"{type(reader).__name__}"
            )
        self.reader = reader
        self.batch_size = check_int("batch_size", batch_size)
        ranged = label_first is not None or label_last is not None
        if ranged and not regression:
            raise ValueError(
                "label_first/label_last are the regression label columns: pass regression=True"
            )
        if label_index is None and num_classes is None and not regression:
            self.spec = LabelSpec()  # features only
        else:  # a range replaces the default label_index (-1); an explicit other one conflicts
            index = None if ranged and label_index == -1 else label_index
            self.spec = LabelSpec.from_arguments(
                index, num_classes, label_first, label_last, regression
            )
        self.preprocessor = check_preprocessor(preprocessor)
        self._pending: DataSet | None = None
        self._ended = False

    @property
    def num_classes(self) -> int | None:
        """The number of classes (classification), None for regression or no labels."""
        return self.spec.num_classes

    def __repr__(self) -> str:
        s = self.spec
        if s.regression:
            labels = (
                f"label_index={s.label_index}"
                if s.label_index is not None
                else f"label_first={s.label_first}, label_last={s.label_last}"
            ) + ", regression=True"
        elif s.label_index is not None:
            labels = f"label_index={s.label_index}, num_classes={s.num_classes}"
        else:
            labels = "label_index=None"
        extra = "" if self.preprocessor is None else f", preprocessor={self.preprocessor!r}"
        return (
            f"RecordReaderDataSetIterator({self.reader!r}, batch_size={self.batch_size}, "
            f"{labels}{extra})"
        )

    def _read(self) -> DataSet | None:
        if self._ended:
            return None
        records, sources, lines = read_batch(self.reader, self.batch_size)
        if len(records) < self.batch_size:
            self._ended = True
        if not records:
            return None
        try:
            ds = _convert(self.spec, records, None, 0)  # row r is reported as line r
        except CsvError as e:
            row = e.line if e.line is not None and 0 <= e.line < len(records) else 0
            raise _relocated(e, sources[row], lines[row]) from None
        ds.metadata = _metadata(sources)
        if self.preprocessor is None:
            return ds
        first = _place(sources[0], lines[0])
        where = f"the minibatch from {first}" if first else None
        return preprocess(self.preprocessor, ds, where, dataset_only=True)  # type: ignore[return-value]

    def has_next(self) -> bool:
        """Whether another minibatch follows (DataVec's ``hasNext``)."""
        if self._pending is None:
            self._pending = self._read()
        return self._pending is not None

    def next(self) -> DataSet:
        """The next minibatch (DataVec's ``next``); StopIteration at the end."""
        return self.__next__()

    def __next__(self) -> DataSet:
        ds = self._pending if self._pending is not None else self._read()
        self._pending = None
        if ds is None:
            raise StopIteration
        return ds

    def __iter__(self) -> Iterator[DataSet]:
        """A pass from the reader's first record (it is reset)."""
        self.reset()
        return self

    def reset(self) -> None:
        """Go back to the first record (resets the reader)."""
        self.reader.reset()
        self._pending = None
        self._ended = False
