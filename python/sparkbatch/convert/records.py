"""Records to DataSets: DataVec's ``DataVecDataSetFunction`` and ``RecordReaderDataSetIterator``.

Which columns are labels, and how they are encoded, is a
:class:`~sparkbatch.convert.table.LabelSpec`, the same as for the partition-wide paths:

* classification: column ``label_index`` (``-1`` = the last column) holds an integer class index,
  made a one-hot float32 row of length ``num_classes``;
* regression (``regression=True``): columns ``label_first..label_last`` (inclusive) are the
  float32 labels (or the single column ``label_index``).

The features are all the other columns, in their order in the record, as float32.

NOTE [label checks]: DL4J only checks ``index >= num_classes`` (an ``IllegalStateException``
that names neither the column nor the line); a negative index goes unchecked, a label ``2.5``
read from text fails with a bare ``NumberFormatException`` and a numeric 2.5 is truncated to 2.
sparkbatch accepts only a number that is an integer in ``[0, num_classes)`` and raises
:class:`~sparkbatch.errors.CsvError` for anything else, naming the column, the value and the
range. Empty cells are errors too (DL4J skips them silently, shifting the remaining columns).

NOTE [whole-list conversion]: many records are converted at once: one ``object`` array of all
cells, then one ``astype(float64)`` (numpy's C loop) and whole-array checks of the class column.
Only when that fails does Python look cell by cell for the first bad one (in file order), to
name it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sparkbatch._unchecked import unchecked_dataset
from sparkbatch.convert.table import LabelSpec, split_table
from sparkbatch.data import DataSet
from sparkbatch.errors import CsvError

__all__ = ["convert_record", "record_to_dataset", "records_to_dataset"]

_NUMBER = "a number"


def _show(value: object) -> str:
    """A cell as text for messages: ``2.0`` shows as ``2``, strings as they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _row_text(record: Sequence[Any]) -> str:
    return ",".join(_show(v) for v in record)


def _line(first_line: int | None, row: int) -> int | None:
    return None if first_line is None else first_line + row


def _check_widths(records: list[Sequence[Any]], source: str | None, first_line: int | None) -> int:
    width = len(records[0])
    if len(records) == 1:
        return width
    widths = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    different = widths != width
    if different.any():
        row = int(different.argmax())
        raise CsvError.at(
            source,
            _line(first_line, row),
            -1,
            _row_text(records[row]),
            f"{width} columns (as in the first record)",
            found=str(int(widths[row])),
        )
    return width


def _as_float(value: object) -> float | None:
    """``value`` as a float the way numpy's ``astype`` converts it, None if it cannot."""
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _first_bad_cell(
    spec: LabelSpec,
    table: np.ndarray,
    label_columns: list[int],
    source: str | None,
    first_line: int | None,
) -> CsvError:
    """The error for the first cell, in file order, that is not a valid feature or label."""
    labels = set(label_columns) if spec.classification else set()
    num_classes = spec.num_classes or 0
    expected_label = f"an integer class index in [0, {num_classes})"
    for row in range(table.shape[0]):
        for column in range(table.shape[1]):
            value = table[row, column]
            number = _as_float(value)
            if column not in labels:
                if number is not None:
                    continue
                expected = _NUMBER
            else:
                if number is not None and number.is_integer() and 0 <= number < num_classes:
                    continue
                expected = expected_label
            return CsvError.at(source, _line(first_line, row), column, _show(value), expected)
    raise AssertionError("conversion failed but no bad cell was found")  # pragma: no cover


def _label_columns(
    spec: LabelSpec, record: Sequence[Any], source: str | None, line: int | None
) -> list[int]:
    width = len(record)
    try:
        return spec.label_columns(width)
    except ValueError:
        pass
    if spec.label_first is not None and spec.label_last is not None:
        first, last = spec.label_first, spec.label_last
    else:
        first = last = spec.label_index if spec.label_index is not None else 0
    needed = max(v + 1 if v >= 0 else -v for v in (first, last))
    where = f"column {first}" if first == last else f"columns {first}..{last}"
    raise CsvError.at(
        source,
        line,
        -1,
        _row_text(record),
        f"at least {needed} columns (labels in {where})",
        found=str(width),
    )


def _convert(
    spec: LabelSpec, records: list[Sequence[Any]], source: str | None, first_line: int | None
) -> DataSet:
    if not records:
        raise ValueError("records is empty: a DataSet needs at least one record")
    width = _check_widths(records, source, first_line)
    label_columns = _label_columns(spec, records[0], source, _line(first_line, 0))
    try:  # the common case, numbers (or numeric text) only: one pass, no object array
        values = np.array(records, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        values = None
    if values is not None and values.shape == (len(records), width) and not np.isnan(values).any():
        if spec.classification:
            index = values[:, label_columns[0]]
            valid = (index >= 0) & (index < (spec.num_classes or 0)) & (index == np.floor(index))
            if valid.all():
                return split_table(values, spec)
        else:
            return split_table(values, spec)
    try:
        table = np.array(records, dtype=object)
    except ValueError:  # cells that are sequences of different lengths
        table = np.empty(0, dtype=object)
    if table.shape != (len(records), width):
        raise CsvError.at(
            source,
            _line(first_line, 0),
            -1,
            _row_text(records[0]),
            "records of single values (numbers or text)",
            found=f"cells of shape {table.shape[2:] or '?'}",
        )
    try:
        values = table.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        raise _first_bad_cell(spec, table, label_columns, source, first_line) from None
    # astype turns None into NaN: tell a missing value from a real NaN only when there is one.
    nan = np.isnan(values)
    if nan.any() and any(v is None for v in table[nan]):
        raise _first_bad_cell(spec, table, label_columns, source, first_line)
    if spec.classification:
        index = values[:, label_columns[0]]
        valid = (index >= 0) & (index < (spec.num_classes or 0)) & (index == np.floor(index))
        if not valid.all():
            raise _first_bad_cell(spec, table, label_columns, source, first_line)
    return split_table(values, spec)


@functools.lru_cache(maxsize=64)
def _feature_columns(spec: LabelSpec, width: int) -> np.ndarray:
    labels = set(spec.label_columns(width))
    return np.array([c for c in range(width) if c not in labels], dtype=np.intp)


def convert_record(
    spec: LabelSpec, record: Sequence[Any], source: str | None = None, line: int | None = None
) -> DataSet:
    """One record to a one-example DataSet: the per-record Spark path, kept lean.

    The whole-array path (:func:`_convert`) costs several microseconds of small numpy calls; a
    single numeric record needs one conversion and a few scalar checks. Anything unusual (text,
    None, a bad label, a width the labels do not fit) takes the checked path, which names the
    problem.
    """
    try:
        row = np.array(record, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        row = None
    if row is None or row.ndim != 1 or None in record or not spec.label_columns:
        return _convert(spec, [record], source, line)
    width = row.shape[0]
    try:
        features = row[_feature_columns(spec, width)].astype(np.float32).reshape(1, -1)
        label_columns = spec.label_columns(width)
    except ValueError:
        return _convert(spec, [record], source, line)
    if spec.classification:
        label = float(row[label_columns[0]])
        if not (label.is_integer() and 0 <= label < (spec.num_classes or 0)):
            return _convert(spec, [record], source, line)
        labels = np.zeros((1, spec.num_classes or 0), np.float32)
        labels[0, int(label)] = 1.0
    elif label_columns:
        labels = row[label_columns[0] : label_columns[-1] + 1].astype(np.float32).reshape(1, -1)
    else:
        return unchecked_dataset(features)
    return unchecked_dataset(features, labels)


def records_to_dataset(
    records: Iterable[Sequence[Any]],
    *,
    label_index: int | None = None,
    num_classes: int | None = None,
    label_first: int | None = None,
    label_last: int | None = None,
    regression: bool = False,
    source: str | None = None,
    first_line: int | None = None,
) -> DataSet:
    """Convert records (lists of values) to one DataSet of ``n`` examples.

    DataVec's ``RecordReaderDataSetIterator`` over a whole list of records at once. Features are
    ``[n, f]`` float32 (every column that is not a label, in order); labels are one-hot
    ``[n, num_classes]`` float32 (classification) or ``[n, label_last - label_first + 1]``
    float32 (regression). Numbers, and text that :func:`float` accepts, are valid cells.
    See NOTE [label checks] in this module for how sparkbatch differs from DL4J.

    Parameters
    ----------
    records : iterable of sequences
        The records, all of the same length (e.g. from ``CSVRecordReader``).
    label_index : int, optional
        Classification: the column holding the class index (``-1`` = last column); required
        there. Regression: a single label column, instead of ``label_first``/``label_last``.
    num_classes : int, optional
        Classification only, required there: the length of the one-hot rows.
    label_first, label_last : int, optional
        Regression only: the first and last (inclusive) label columns.
    regression : bool, default False
        Whether the labels are values to predict rather than class indices.
    source : str, optional
        File, URL or partition the records came from, for error messages.
    first_line : int, optional
        The line of the first record in ``source``; record ``i`` is reported as line
        ``first_line + i`` (one line per record).

    Returns
    -------
    DataSet

    Raises
    ------
    ValueError
        The label arguments are inconsistent (the message names the argument), or ``records``
        is empty.
    CsvError
        A record has another length than the first or too few columns for the labels, a
        feature is not a number, or a class label is not an integer in ``[0, num_classes)``;
        the message names the line (when ``first_line`` is given), the column and the cell.

    Examples
    --------
    >>> ds = records_to_dataset([[0.5, 1.5, 2.0], [2.5, 3.5, 0.0]], label_index=2, num_classes=3)
    >>> ds.features
    array([[0.5, 1.5],
           [2.5, 3.5]], dtype=float32)
    >>> ds.labels
    array([[0., 0., 1.],
           [1., 0., 0.]], dtype=float32)
    >>> records_to_dataset([[1.0, 2.0, 3.0]], label_first=1, label_last=2, regression=True).labels
    array([[2., 3.]], dtype=float32)
    >>> records_to_dataset([[1.0, 2.5]], label_index=1, num_classes=3, source="a.csv", first_line=2)
    Traceback (most recent call last):
    ...
    sparkbatch.errors.CsvError: a.csv, line 2, column 1: expected an integer class index in [0, 3), found '2.5'
    """  # noqa: E501
    spec = LabelSpec.from_arguments(label_index, num_classes, label_first, label_last, regression)
    return _convert(spec, list(records), source, first_line)


def record_to_dataset(
    record: Sequence[Any],
    *,
    label_index: int | None = None,
    num_classes: int | None = None,
    label_first: int | None = None,
    label_last: int | None = None,
    regression: bool = False,
    source: str | None = None,
    line: int | None = None,
) -> DataSet:
    """Convert one record to a DataSet of one example (DataVec's ``DataVecDataSetFunction``).

    The same rules and errors as :func:`records_to_dataset`; features are ``[1, f]``, labels
    ``[1, k]``. ``line`` is the record's line in ``source``, for error messages.

    Examples
    --------
    >>> ds = record_to_dataset([1.0, 3.2, 4.5, 1.0], label_index=3, num_classes=4)
    >>> ds.features.shape, ds.labels.tolist()
    ((1, 3), [[0.0, 1.0, 0.0, 0.0]])
    """
    spec = LabelSpec.from_arguments(label_index, num_classes, label_first, label_last, regression)
    return convert_record(spec, record, source, line)
