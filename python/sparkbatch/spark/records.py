"""Per-record functions for RDD ``map``: DataVec's ``StringToWritablesFunction``,
``RecordReaderFunction`` and ``DataVecDataSetFunction``.

All are small picklable classes that hold plain settings; Spark ships them to the executors,
which call them once per element. No pyspark import is needed here::

    datasets = (
        sc.textFile("hdfs:///data/train.csv")
        .map(StringToRecords(CSVRecordReader()))
        .map(RecordsToDataSet(label_index=5, num_classes=10))
    )

or, for files in any format a :class:`~sparkbatch.records.RecordReader` reads (one example per
file, say), ``sc.binaryFiles(dir).flatMap(FileToRecords(reader))`` in place of the first map.

Each element becomes a DataSet of one example, as in DL4J. For large inputs the partition-wide
path (``sparkbatch.spark.csv_to_datasets``) parses whole partitions natively and is much faster.

NOTE [header lines on Spark]: ``StringToRecords`` sees single lines, so the reader's
``skip_lines`` does not apply: as in DL4J, drop header lines before (``rdd.filter(...)``).
``FileToRecords`` sees whole files, so it does apply there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sparkbatch.convert.records import convert_record
from sparkbatch.convert.table import LabelSpec
from sparkbatch.data import DataSet
from sparkbatch.data.loaders import check_preprocessor, preprocess
from sparkbatch.records import CSVRecordReader, Record, RecordReader
from sparkbatch.records.reader import parse_file

__all__ = ["FileToRecords", "RecordsToDataSet", "StringToRecords"]


class StringToRecords:
    """Parse one line of text into a record: DataVec's ``StringToWritablesFunction``.

    Parameters
    ----------
    reader : CSVRecordReader, optional
        Gives the delimiter and quote (its :meth:`~CSVRecordReader.parse_line` does the work);
        a default ``CSVRecordReader()`` if None. ``skip_lines`` does not apply, see
        NOTE [header lines on Spark] in this module.

    Examples
    --------
    >>> to_records = StringToRecords(CSVRecordReader(delimiter=";"))
    >>> to_records("1.0;3.2;cat")
    [1.0, 3.2, 'cat']
    """

    def __init__(self, reader: CSVRecordReader | None = None) -> None:
        if reader is None:
            reader = CSVRecordReader()
        if not callable(getattr(reader, "parse_line", None)):
            raise TypeError(
                f"reader must have a parse_line(line) method, got {type(reader).__name__}"
            )
        self.reader = reader

    def __call__(self, line: str) -> Record:
        return self.reader.parse_line(line)

    def __repr__(self) -> str:
        return f"StringToRecords({self.reader!r})"


class FileToRecords:
    """One file of ``sc.binaryFiles`` to its records, for ``flatMap``: DataVec's
    ``RecordReaderFunction`` for any :class:`~sparkbatch.records.RecordReader`.

    Called with a ``(path, bytes)`` pair; returns the reader's ``parse(bytes, path)``: the
    file's records (one for a one-example-per-file format). An error that does not name the
    file gains a note naming it (:func:`sparkbatch.records.reader.parse_file`).

    ``sc.binaryFiles(dir)`` reads only the files directly in ``dir`` (Hadoop's default), while
    ``reader.initialize(dir)`` lists every file below it: for nested directories pass Spark a
    glob (``dir + "/*/*"``) or ``",".join(reader.sources)``, so both read the same files.

    Parameters
    ----------
    reader : RecordReader, optional
        Parses the bytes (and gives its settings: a CSV reader's header lines, delimiter and
        quote); ``CSVRecordReader()`` if None. It is pickled to the executors.

    Examples
    --------
    >>> to_records = FileToRecords(CSVRecordReader(skip_lines=1))
    >>> to_records(("file:/data/a.csv", b"x,y\\n1,0\\n2,1\\n"))
    [[1.0, 0.0], [2.0, 1.0]]
    """

    def __init__(self, reader: RecordReader | None = None) -> None:
        if reader is None:
            reader = CSVRecordReader()
        if not isinstance(reader, RecordReader):
            raise TypeError(
                "reader must be a sparkbatch.records.RecordReader (with parse(data, source)), "
                f"got {type(reader).__name__}"
            )
        self.reader = reader

    def __call__(self, item: tuple[str, bytes]) -> list[Record]:
        path, data = item
        return parse_file(self.reader.parse, data, path, self.reader)

    def __repr__(self) -> str:
        return f"FileToRecords({self.reader!r})"


class RecordsToDataSet:
    """Turn one record into a DataSet of one example: DataVec's ``DataVecDataSetFunction``.

    Features are ``[1, f]`` float32, every column that is not a label, in order. Classification
    (``label_index``, ``num_classes``): labels ``[1, num_classes]``, one-hot. Regression
    (``label_first``, ``label_last``, ``regression=True``): labels ``[1, last - first + 1]``.
    The rules and errors are those of :func:`sparkbatch.convert.records_to_dataset`: a bad cell
    raises :class:`~sparkbatch.errors.CsvError` naming the column and the text (inside Spark it
    reaches the driver as the task's error).

    Parameters
    ----------
    label_index : int, optional
        Classification: the class column (``-1`` = last). Regression: a single label column.
    num_classes : int, optional
        Classification only, required there.
    label_first, label_last : int, optional
        Regression only: the first and last (inclusive) label columns.
    regression : bool, default False
        Whether the labels are values rather than class indices.
    preprocessor : callable, optional
        ``(DataSet) -> DataSet`` applied to each DataSet made (DL4J's ``preProcessor``
        argument); picklable, it runs on the executors. One that returns anything but a
        DataSet raises TypeError naming it.
    converter : callable, optional
        ``(record) -> record`` applied to each record before conversion (DL4J's
        ``WritableConverter``), e.g. a class name to its index; picklable. One that returns
        anything but a list or tuple raises TypeError naming it.

    Raises
    ------
    ValueError
        The arguments do not describe classification or regression; the message names the
        argument.
    TypeError
        ``preprocessor`` or ``converter`` is not callable.

    Examples
    --------
    >>> to_dataset = RecordsToDataSet(label_index=5, num_classes=10)
    >>> ds = to_dataset([1.0, 3.2, 4.5, 1.1, 6.3, 2.0])
    >>> ds.features.shape, ds.labels.argmax(axis=1).tolist()
    ((1, 5), [2])
    >>> RecordsToDataSet(label_first=3, label_last=5, regression=True)([1, 2, 3, 4, 5, 6]).labels
    array([[4., 5., 6.]], dtype=float32)
    >>> classes = {"cat": 0, "dog": 1}.__getitem__
    >>> to_index = RecordsToDataSet(1, 2, converter=lambda r: [r[0], classes(r[1])])
    >>> to_index([0.5, "dog"]).labels
    array([[0., 1.]], dtype=float32)
    >>> RecordsToDataSet(label_index=5)
    Traceback (most recent call last):
    ...
    ValueError: classification needs num_classes >= 1 (got None); for real-valued labels pass regression=True
    """  # noqa: E501

    def __init__(
        self,
        label_index: int | None = None,
        num_classes: int | None = None,
        label_first: int | None = None,
        label_last: int | None = None,
        regression: bool = False,
        preprocessor: Callable[[DataSet], DataSet] | None = None,
        converter: Callable[[Record], Sequence[Any]] | None = None,
    ) -> None:
        self.spec = LabelSpec.from_arguments(
            label_index, num_classes, label_first, label_last, regression
        )
        self.preprocessor = check_preprocessor(preprocessor)
        if converter is not None and not callable(converter):
            raise TypeError(
                "converter must be a callable (record) -> record, got "
                f"{type(converter).__name__}: {converter!r}"
            )
        self.converter = converter

    def __call__(self, record: Sequence[Any]) -> DataSet:
        if self.converter is not None:
            converted = self.converter(record)
            if not isinstance(converted, (list, tuple)):
                raise TypeError(
                    f"converter {self.converter!r} returned {type(converted).__name__}, not a "
                    f"record (a list of values), for the record {record!r}"
                )
            record = converted
        ds = convert_record(self.spec, record)
        if self.preprocessor is None:
            return ds
        return preprocess(self.preprocessor, ds, dataset_only=True)  # type: ignore[return-value]

    def __repr__(self) -> str:
        s = self.spec
        if s.regression:
            if s.label_index is not None:
                labels = f"label_index={s.label_index}, regression=True"
            else:
                labels = f"label_first={s.label_first}, label_last={s.label_last}, regression=True"
        else:
            labels = f"label_index={s.label_index}, num_classes={s.num_classes}"
        if self.preprocessor is not None:
            labels += f", preprocessor={self.preprocessor!r}"
        if self.converter is not None:
            labels += f", converter={self.converter!r}"
        return f"RecordsToDataSet({labels})"
