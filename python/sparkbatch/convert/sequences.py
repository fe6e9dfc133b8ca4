"""Sequences to DataSets: DataVec's ``DataVecSequenceDataSetFunction`` and the sequence half of
``SequenceRecordReaderDataSetIterator``.

A sequence is a list of per-step records (a :class:`~sparkbatch.records.SequenceRecord` from
``CSVSequenceRecordReader``) or a table ``[T, columns]``. Its columns are cut as in
:mod:`sparkbatch.convert.records` (a :class:`~sparkbatch.convert.table.LabelSpec`), at every
step:

* features ``[n, f, T]`` float32: every column that is not a label, in order;
* classification: labels one-hot per step ``[n, num_classes, T]``; regression: ``[n, k, T]``;
* many-to-one (``many_to_one=True``): only the label of the last real step, ``[n, k]`` (what
  ``nn.LastTimeStep`` networks train on).

One sequence gives a DataSet of one example without masks (as DL4J); many sequences are padded
to a minibatch under an ``alignment`` (:mod:`sparkbatch.data.sequences`) with masks ``[n, T]``
on the features and on per-step labels.

NOTE [sequence checks]: every step must have as many columns as the first, the labels must be
columns of it, features numbers, and class labels integers in ``[0, num_classes)`` at every step
(DL4J checks none of these). A bad one raises :class:`~sparkbatch.errors.CsvError` naming the
file, the line and step, the column and the value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from sparkbatch import _native
from sparkbatch._unchecked import unchecked_dataset
from sparkbatch.convert.records import _as_float, _show
from sparkbatch.convert.table import LabelSpec
from sparkbatch.data import DataSet
from sparkbatch.data.sequences import SOURCE, SOURCES, check_alignment, sequence_lengths
from sparkbatch.errors import CsvError
from sparkbatch.records.csv_sequence import NUMBER

__all__ = ["sequence_table", "sequence_to_dataset", "sequences_to_dataset", "tables_to_dataset"]


def _where(source: str | None, step: int, line: int | None) -> list[str]:
    where = [source] if source else []
    where.append(f"line {line} (step {step})" if line is not None else f"step {step}")
    return where


def step_error(
    source: str | None,
    step: int,
    line: int | None,
    column: int | None,
    text: str,
    expected: str,
    *,
    found: str | None = None,
) -> CsvError:
    """A :class:`CsvError` for one step of a sequence: ``"a.csv, line 7 (step 5), column 2:
    expected ..., found ..."`` (the line left out when unknown).

    Examples
    --------
    >>> print(step_error("a.csv", 5, 7, 2, "x", "a number"))
    a.csv, line 7 (step 5), column 2: expected a number, found 'x'
    """
    what = str(CsvError.at(None, None, None, text, expected, found=found))
    where = _where(source, step, line)
    if column is not None and column >= 0:
        where.append(f"column {column}")
    return CsvError(
        f"{', '.join(where)}: {what}",
        source=source,
        line=line,
        column=column,
        text=text,
        expected=expected,
    )


def _line(sequence: Any, step: int) -> int | None:
    lines = getattr(sequence, "lines", None)
    return lines[step] if lines is not None and 0 <= step < len(lines) else None


def _row_text(record: Sequence[Any]) -> str:
    return ",".join(_show(v) for v in record)


def _label_columns(
    spec: LabelSpec, width: int, row: Sequence[Any], source: str | None, line: int | None
) -> list[int]:
    try:
        columns = spec.label_columns(width)
    except ValueError:
        if spec.label_first is not None and spec.label_last is not None:
            first, last = spec.label_first, spec.label_last
        else:
            first = last = spec.label_index if spec.label_index is not None else 0
        needed = max(v + 1 if v >= 0 else -v for v in (first, last))
        where = f"column {first}" if first == last else f"columns {first}..{last}"
        raise step_error(
            source,
            0,
            line,
            -1,
            _row_text(row),
            f"at least {needed} columns (labels in {where})",
            found=str(width),
        ) from None
    if columns and len(columns) == width:
        raise step_error(
            source,
            0,
            line,
            -1,
            _row_text(row),
            f"more than {width} column(s): all of them are labels, no feature is left",
            found=str(width),
        )
    return columns


def sequence_table(
    spec: LabelSpec, sequence: Sequence[Sequence[Any]], source: str | None = None
) -> np.ndarray:
    """A sequence as a checked float64 table ``[T, columns]`` (NOTE [sequence checks]).

    ``source`` defaults to the sequence's own ``source`` attribute (a SequenceRecord's file);
    lines come from its ``lines``.

    Examples
    --------
    >>> spec = LabelSpec(label_index=2, num_classes=2)
    >>> sequence_table(spec, [[0.5, 1.0, 1], [1.5, 2.0, 0]]).shape
    (2, 3)
    >>> sequence_table(spec, [[0.5, 1.0, 1], [1.5, 2.0, 2]], "s.csv")
    Traceback (most recent call last):
    ...
    sparkbatch.errors.CsvError: s.csv, step 1, column 2: expected an integer class index in [0, 2), found '2'
    """  # noqa: E501
    if source is None:
        source = getattr(sequence, "source", None)
    if len(sequence) == 0:
        raise CsvError(
            f"{source or 'sequence'}: expected at least one step, found none",
            source=source,
            expected="at least one step",
        )
    width = len(sequence[0])
    for step, record in enumerate(sequence):
        if len(record) != width:
            origin = _line(sequence, 0)
            first = f"line {origin} (step 0)" if origin is not None else "step 0"
            raise step_error(
                source,
                step,
                _line(sequence, step),
                -1,
                _row_text(record),
                f"{width} columns (as in {first})",
                found=str(len(record)),
            )
    label_columns = _label_columns(spec, width, sequence[0], source, _line(sequence, 0))
    try:  # numbers only: one C-level pass; text (kind "U") or None (kind "O") cell by cell
        values = np.array(sequence)
    except (TypeError, ValueError, OverflowError):
        values = None
    if values is not None and values.dtype.kind in "biuf":
        values = values.astype(np.float64, copy=False)
    elif values is not None:
        values = _cells(sequence)
    if values is not None and values.shape == (len(sequence), width):
        ok = True
        nan = np.isnan(values)
        if nan.any():  # None becomes NaN: only a real NaN is a value
            ok = not any(sequence[s][c] is None for s, c in zip(*np.nonzero(nan), strict=True))
        if ok and spec.classification:
            index = values[:, label_columns[0]]
            ok = bool(
                (
                    (index >= 0) & (index < (spec.num_classes or 0)) & (index == np.floor(index))
                ).all()
            )
        if ok:
            return values
    raise _first_bad_cell(spec, sequence, label_columns, source)


def _cell(value: object) -> float | None:
    """A cell as a float; text only if it is a number of the native parser's grammar
    (NOTE [one number grammar] in :mod:`sparkbatch.records.csv_sequence`: ``float("1_0")``
    would accept it); None if it is no number."""
    if isinstance(value, str):
        return float(value) if NUMBER.fullmatch(value) else None
    return _as_float(value)


def _cells(sequence: Sequence[Sequence[Any]]) -> np.ndarray | None:
    """The float64 table of a sequence with text or other objects in it, None if a cell is
    no number (see :func:`_cell`)."""
    rows = []
    for record in sequence:
        row = [_cell(value) for value in record]
        if None in row or any(isinstance(v, (list, tuple, np.ndarray)) for v in record):
            return None
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def _first_bad_cell(
    spec: LabelSpec,
    sequence: Sequence[Sequence[Any]],
    label_columns: list[int],
    source: str | None,
) -> CsvError:
    labels = set(label_columns) if spec.classification else set()
    num_classes = spec.num_classes or 0
    for step, record in enumerate(sequence):
        for column, value in enumerate(record):
            number = _cell(value)
            if column not in labels:
                if number is not None and not isinstance(value, (list, tuple, np.ndarray)):
                    continue
                expected = "a number"
            else:
                if number is not None and number.is_integer() and 0 <= number < num_classes:
                    continue
                expected = f"an integer class index in [0, {num_classes})"
            shown = "None" if value is None else _show(value)
            return step_error(source, step, _line(sequence, step), column, shown, expected)
    raise AssertionError("conversion failed but no bad cell was found")  # pragma: no cover


def _split(spec: LabelSpec, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Features ``[rows, f]`` and labels ``[rows, k]`` (float32) of a checked table."""
    columns = spec.label_columns(values.shape[1])
    if not columns:
        return np.ascontiguousarray(values, dtype=np.float32), None
    first, last = columns[0], columns[-1] + 1
    features = np.empty((values.shape[0], values.shape[1] - (last - first)), np.float32)
    features[:, :first] = values[:, :first]
    features[:, first:] = values[:, last:]
    if spec.classification:
        labels = _native.one_hot(values[:, first].astype(np.int32), int(spec.num_classes or 0))
    else:
        labels = np.ascontiguousarray(values[:, first:last], dtype=np.float32)
    return features, labels


def convert_sequence(
    spec: LabelSpec,
    sequence: Sequence[Sequence[Any]],
    *,
    many_to_one: bool = False,
    source: str | None = None,
) -> DataSet:
    """One sequence to a one-example DataSet (the per-record Spark path); see
    :func:`sequence_to_dataset`."""
    if source is None:
        source = getattr(sequence, "source", None)
    features, labels = _split(spec, sequence_table(spec, sequence, source))
    x = np.ascontiguousarray(features.T)[None]
    if labels is not None:
        labels = labels[-1:] if many_to_one else np.ascontiguousarray(labels.T)[None]
    ds = unchecked_dataset(x, labels)
    if source:
        ds.metadata = {SOURCE: str(source)}
    return ds


def sequence_to_dataset(
    sequence: Sequence[Sequence[Any]],
    *,
    label_index: int | None = None,
    num_classes: int | None = None,
    label_first: int | None = None,
    label_last: int | None = None,
    regression: bool = False,
    many_to_one: bool = False,
    source: str | None = None,
) -> DataSet:
    """Convert one sequence to a DataSet of one example (DataVec's
    ``DataVecSequenceDataSetFunction``).

    Features ``[1, f, T]``; labels one-hot per step ``[1, num_classes, T]`` (classification),
    ``[1, k, T]`` (regression), or with ``many_to_one=True`` the last step's ``[1, k]``. No
    masks (one sequence fills its steps). The file (``source``, or the sequence's own) is kept
    in the DataSet's metadata under ``"source"``, so that merging can name it.

    Parameters
    ----------
    sequence : list of records, or a table ``[T, columns]``
        One record (list of values) per step, e.g. from ``CSVSequenceRecordReader``.
    label_index, num_classes, label_first, label_last, regression
        Which columns are labels and how, as :func:`~sparkbatch.convert.records_to_dataset`.
    many_to_one : bool, default False
        Keep only the label of the last step: labels ``[1, k]``.
    source : str, optional
        The file, for messages and metadata (default: ``sequence.source`` if it has one).

    Raises
    ------
    ValueError
        The label arguments are inconsistent.
    CsvError
        NOTE [sequence checks]: the message names the file, line and step, column and value.

    Examples
    --------
    >>> seq = [[0.1, 0.2, 1], [0.3, 0.4, 0], [0.5, 0.6, 2]]
    >>> ds = sequence_to_dataset(seq, label_index=2, num_classes=3, source="a.csv")
    >>> ds.features.shape, ds.labels.shape, ds.metadata
    ((1, 2, 3), (1, 3, 3), {'source': 'a.csv'})
    >>> ds.labels[0].argmax(axis=0).tolist()
    [1, 0, 2]
    >>> sequence_to_dataset(seq, label_index=2, num_classes=3, many_to_one=True).labels
    array([[0., 0., 1.]], dtype=float32)
    >>> sequence_to_dataset(seq, label_first=1, label_last=2, regression=True).labels.shape
    (1, 2, 3)
    """
    spec = LabelSpec.from_arguments(label_index, num_classes, label_first, label_last, regression)
    return convert_sequence(spec, sequence, many_to_one=many_to_one, source=source)


def tables_to_dataset(
    spec: LabelSpec,
    tables: Sequence[np.ndarray],
    *,
    alignment: str = "align_start",
    many_to_one: bool = False,
    sources: Sequence[str | None] | None = None,
) -> DataSet:
    """Checked tables ``[T_i, columns]`` (class labels valid, one width) to one padded
    minibatch, with whole-array operations: the partition-wide path.

    Features ``[n, f, T_max]`` with a mask ``[n, T_max]`` under ``"align_start"`` and
    ``"align_end"`` (always, even when no sequence is padded); per-step labels get the same
    mask. Under ``"equal_length"`` a length mismatch is a
    :class:`~sparkbatch.errors.SequenceLengthError` naming both files, and there are no masks.
    The files go to the metadata as ``"sources"``.

    Examples
    --------
    >>> spec = LabelSpec(label_index=1, num_classes=2)
    >>> a = np.array([[0.5, 1], [1.5, 0]]); b = np.array([[2.5, 1]])
    >>> ds = tables_to_dataset(spec, [a, b], alignment="align_end")
    >>> ds.features[:, 0, :].tolist(), ds.features_mask.tolist()
    ([[0.5, 1.5], [0.0, 2.5]], [[1.0, 1.0], [0.0, 1.0]])
    >>> tables_to_dataset(spec, [a, b], many_to_one=True).labels.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    alignment = check_alignment(alignment)
    n = len(tables)
    lengths = np.fromiter((t.shape[0] for t in tables), dtype=np.int64, count=n)
    steps = sequence_lengths(lengths, alignment, sources)
    values = tables[0] if n == 1 else np.concatenate(tables, axis=0)
    features, labels = _split(spec, values)
    ends = np.cumsum(lengths)
    example = np.repeat(np.arange(n), lengths)
    step = np.arange(values.shape[0]) - np.repeat(ends - lengths, lengths)
    if alignment == "align_end":
        step += np.repeat(steps - lengths, lengths)
    x = np.zeros((n, steps, features.shape[1]), np.float32)
    x[example, step] = features
    x = np.ascontiguousarray(x.transpose(0, 2, 1))
    mask = None
    if alignment != "equal_length":
        mask = np.zeros((n, steps), np.float32)
        mask[example, step] = 1.0
    y = labels_mask = None
    if labels is not None:
        if many_to_one:
            y = np.ascontiguousarray(labels[ends - 1])
        else:
            y = np.zeros((n, steps, labels.shape[1]), np.float32)
            y[example, step] = labels
            y = np.ascontiguousarray(y.transpose(0, 2, 1))
            labels_mask = None if mask is None else mask.copy()
    metadata = None
    if sources is not None and any(sources):
        metadata = {SOURCES: json.dumps(list(sources))}
    return DataSet(x, y, mask, labels_mask, metadata)


def sequences_to_dataset(
    sequences: Sequence[Sequence[Sequence[Any]]],
    *,
    label_index: int | None = None,
    num_classes: int | None = None,
    label_first: int | None = None,
    label_last: int | None = None,
    regression: bool = False,
    many_to_one: bool = False,
    alignment: str = "align_start",
    sources: Sequence[str | None] | None = None,
) -> DataSet:
    """Convert many sequences to one padded, masked minibatch (DataVec's
    ``SequenceRecordReaderDataSetIterator`` over one reader, for one batch).

    Each sequence is checked as in :func:`sequence_to_dataset`; every sequence must have the
    columns of the first (a mismatch names both files). See :func:`tables_to_dataset` for the
    arrays and masks.

    Examples
    --------
    >>> seqs = [[[0.1, 1], [0.2, 0]], [[0.3, 1]]]
    >>> ds = sequences_to_dataset(seqs, label_index=1, num_classes=2)
    >>> ds.features.shape, ds.labels.shape, ds.features_mask.tolist()
    ((2, 1, 2), (2, 2, 2), [[1.0, 1.0], [1.0, 0.0]])
    """
    spec = LabelSpec.from_arguments(label_index, num_classes, label_first, label_last, regression)
    if not sequences:
        raise ValueError("sequences is empty: a DataSet needs at least one sequence")
    names = (
        list(sources) if sources is not None else [getattr(s, "source", None) for s in sequences]
    )
    tables = [sequence_table(spec, s, names[i]) for i, s in enumerate(sequences)]
    width = tables[0].shape[1]
    for i, table in enumerate(tables):
        if table.shape[1] != width:
            first = names[0] or "sequence 0"
            raise step_error(
                names[i] or f"sequence {i}",
                0,
                _line(sequences[i], 0),
                -1,
                _row_text(sequences[i][0]),
                f"{width} columns (as in {first})",
                found=str(table.shape[1]),
            )
    return tables_to_dataset(
        spec,
        tables,
        alignment=alignment,
        many_to_one=many_to_one,
        sources=names if any(names) else None,
    )
