"""Per-record functions for RDD ``map``: DataVec's ``StringToWritablesFunction`` and
``DataVecDataSetFunction``.

Both are small picklable classes that hold plain settings; Spark ships them to the executors,
which call them once per element. No pyspark import is needed here::

    datasets = (
        sc.textFile("hdfs:///data/train.csv")
        .map(StringToRecords(CSVRecordReader()))
        .map(RecordsToDataSet(label_index=5, num_classes=10))
    )

Each element becomes a DataSet of one example, as in DL4J. For large inputs the partition-wide
path (``sparkbatch.spark.csv_to_datasets``) parses whole partitions natively and is much faster.

NOTE [header lines on Spark]: ``StringToRecords`` sees single lines, so the reader's
``skip_lines`` does not apply: as in DL4J, drop header lines before (``rdd.filter(...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparkbatch.convert.records import convert_record
from sparkbatch.convert.table import LabelSpec
from sparkbatch.data import DataSet
from sparkbatch.records.csv import CSVRecordReader, Record

__all__ = ["RecordsToDataSet", "StringToRecords"]


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

    Raises
    ------
    ValueError
        The arguments do not describe classification or regression; the message names the
        argument.

    Examples
    --------
    >>> to_dataset = RecordsToDataSet(label_index=5, num_classes=10)
    >>> ds = to_dataset([1.0, 3.2, 4.5, 1.1, 6.3, 2.0])
    >>> ds.features.shape, ds.labels.argmax(axis=1).tolist()
    ((1, 5), [2])
    >>> RecordsToDataSet(label_first=3, label_last=5, regression=True)([1, 2, 3, 4, 5, 6]).labels
    array([[4., 5., 6.]], dtype=float32)
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
    ) -> None:
        self.spec = LabelSpec.from_arguments(
            label_index, num_classes, label_first, label_last, regression
        )

    def __call__(self, record: Sequence[Any]) -> DataSet:
        return convert_record(self.spec, record)

    def __repr__(self) -> str:
        s = self.spec
        if s.regression:
            if s.label_index is not None:
                return f"RecordsToDataSet(label_index={s.label_index}, regression=True)"
            return (
                f"RecordsToDataSet(label_first={s.label_first}, label_last={s.label_last}, "
                "regression=True)"
            )
        return f"RecordsToDataSet(label_index={s.label_index}, num_classes={s.num_classes})"
