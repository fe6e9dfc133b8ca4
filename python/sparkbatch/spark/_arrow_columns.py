"""Arrow columns of a DataFrame's record batch decoded into numpy blocks, a column at once.

The decoders behind :func:`sparkbatch.spark.dataframe_to_datasets`: each turns one Arrow column
of a record batch into a :class:`Block` (float32 values and, for sequences, the number of steps
of every row) with whole-array numpy operations over the Arrow buffers (list offsets, struct
children); no Python object is made per row. A null, a ragged row or a bad vector is a
:class:`~sparkbatch.errors.DataFrameError` naming the column and the row, counted from 0 within
the Spark partition (NOTE [rows of a partition]).

NOTE [rows of a partition]: a row is named by its partition (Spark's partition index of the
DataFrame, as ``pyspark.sql.functions.spark_partition_id`` gives it) and its place within the
partition, from 0; numbering rows across the whole DataFrame would need the size of every
partition before, a job of its own.

Column kinds (:class:`Column.kind`):

* ``"scalar"``: a number per row (cast to float by Spark), a block ``[rows, 1]``.
* ``"vector"``: a Spark ML vector (``VectorUDT``); in Arrow a struct ``(type, size, indices,
  values)`` where ``type`` is 1 for dense and 0 for sparse; a block ``[rows, width]``.
* ``"array"``: ``array<float>`` of the same ``width`` in every row, a block ``[rows, width]``.
* ``"steps"``: ``array<float>`` read as one value per time step (per-step labels), a sequence of
  width 1.
* ``"sequence"``: ``array<array<float>>``, steps of ``width`` values, a sequence block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparkbatch.errors import DataFrameError

__all__ = ["KINDS", "Block", "Column", "Where", "decode_column"]

KINDS = ("scalar", "vector", "array", "steps", "sequence")


@dataclass(frozen=True)
class Column:
    """One selected column: its name in the DataFrame, its kind and its width (values per row,
    or per step for sequences; 1 for scalars and per-step values)."""

    name: str
    kind: str = "scalar"
    width: int = 1

    @property
    def is_sequence(self) -> bool:
        """Whether the column holds a sequence of steps per row."""
        return self.kind in ("steps", "sequence")


@dataclass(frozen=True)
class Where:
    """Where a record batch lies: its partition and the partition's row of its first row."""

    partition: int
    first_row: int

    def row(self, index: int) -> str:
        """``"row R of partition P"`` for row ``index`` of the record batch."""
        return f"row {self.first_row + int(index)} of partition {self.partition}"


@dataclass
class Block:
    """A column's values for some rows: ``values [rows, width]``, or for a sequence column
    ``values [steps, width]`` (the steps of all rows, in order) with ``lengths [rows]``."""

    values: np.ndarray
    lengths: np.ndarray | None = None
    _ends: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def rows(self) -> int:
        """The number of rows."""
        return int(self.values.shape[0] if self.lengths is None else self.lengths.shape[0])

    def take(self, start: int, stop: int) -> Block:
        """Rows ``start:stop`` (views)."""
        if self.lengths is None:
            return Block(self.values[start:stop])
        if self._ends is None:  # where each row's steps start, once for many takes
            self._ends = np.concatenate([[0], np.cumsum(self.lengths)])
        first, last = int(self._ends[start]), int(self._ends[stop])
        return Block(self.values[first:last], self.lengths[start:stop])

    @staticmethod
    def concat(blocks: list[Block]) -> Block:
        """The rows of ``blocks``, one after the other."""
        if len(blocks) == 1:
            return blocks[0]
        values = np.concatenate([b.values for b in blocks])
        if blocks[0].lengths is None:
            return Block(values)
        return Block(values, np.concatenate([b.lengths for b in blocks]))  # type: ignore[misc]


def _null_rows(array: Any) -> np.ndarray:
    return np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))


def _check_no_nulls(array: Any, column: Column, where: Where) -> None:
    if array.null_count:
        row = int(_null_rows(array)[0])
        raise DataFrameError(f"column {column.name!r} is null in {where.row(row)}")


def _offsets(array: Any) -> np.ndarray:
    """The list offsets of ``array`` (``rows + 1``, into its full child) as int64."""
    return np.asarray(array.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)


def _child_values(array: Any, offsets: np.ndarray, column: Column, rows_of: Any) -> np.ndarray:
    """The child values ``offsets[0]:offsets[-1]`` of list ``array`` as a float32 numpy array;
    a null value is an error naming the row (``rows_of(position)`` gives its row and step)."""
    child = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if child.null_count:
        position = int(_null_rows(child)[0])
        raise DataFrameError(f"column {column.name!r} holds a null value in {rows_of(position)}")
    return np.asarray(child.to_numpy(zero_copy_only=False), dtype=np.float32)


def _row_of(offsets: np.ndarray, position: int) -> int:
    """The row whose values ``offsets[row]:offsets[row + 1]`` hold ``position`` (relative to
    ``offsets[0]``)."""
    return int(np.searchsorted(offsets - offsets[0], position, side="right")) - 1


def _scalar(array: Any, column: Column, where: Where) -> Block:
    _check_no_nulls(array, column, where)
    values = np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float32)
    return Block(values.reshape(-1, 1))


def _ragged(column: Column, where: Where, lengths: np.ndarray, width: int, what: str) -> None:
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        row = int(bad[0])
        raise DataFrameError(
            f"column {column.name!r}, {where.row(row)}: expected {width} {what} (the width of "
            f"the column's first row), found {int(lengths[row])}"
        )


def _array(array: Any, column: Column, where: Where) -> Block:
    _check_no_nulls(array, column, where)
    offsets = _offsets(array)
    _ragged(column, where, np.diff(offsets), column.width, "values")
    values = _child_values(array, offsets, column, lambda p: where.row(_row_of(offsets, p)))
    return Block(values.reshape(-1, column.width))


def _steps(array: Any, column: Column, where: Where) -> Block:
    _check_no_nulls(array, column, where)
    offsets = _offsets(array)
    lengths = np.diff(offsets)
    _no_empty_sequence(column, where, lengths)
    values = _child_values(array, offsets, column, lambda p: where.row(_row_of(offsets, p)))
    return Block(values.reshape(-1, 1), lengths)


def _no_empty_sequence(column: Column, where: Where, lengths: np.ndarray) -> None:
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise DataFrameError(
            f"column {column.name!r}, {where.row(int(empty[0]))}: a sequence needs at least one "
            "step, found none"
        )


def _sequence(array: Any, column: Column, where: Where) -> Block:
    _check_no_nulls(array, column, where)
    outer = _offsets(array)
    lengths = np.diff(outer)
    _no_empty_sequence(column, where, lengths)
    steps = array.values.slice(int(outer[0]), int(outer[-1] - outer[0]))

    def step_name(step: int) -> str:
        row = _row_of(outer, step)
        return f"{where.row(row)}, step {step - int(outer[row] - outer[0])}"

    if steps.null_count:
        raise DataFrameError(
            f"column {column.name!r} holds a null step in {step_name(int(_null_rows(steps)[0]))}"
        )
    inner = _offsets(steps)
    widths = np.diff(inner)
    bad = np.flatnonzero(widths != column.width)
    if bad.size:
        step = int(bad[0])
        raise DataFrameError(
            f"column {column.name!r}, {step_name(step)}: expected {column.width} values per step "
            f"(as in the column's first row), found {int(widths[step])}"
        )
    values = _child_values(steps, inner, column, lambda p: step_name(_row_of(inner, p)))
    return Block(values.reshape(-1, column.width), lengths)


def _vector(array: Any, column: Column, where: Where) -> Block:
    """Dense and sparse vectors of one column into ``[rows, width]`` with one scatter: every
    stored value goes to its row and to its position (dense) or index (sparse)."""
    _check_no_nulls(array, column, where)
    rows, width = len(array), column.width
    dense = np.asarray(array.field("type").to_numpy(zero_copy_only=False)) == 1
    value_lists = array.field("values")
    offsets = _offsets(value_lists)
    counts = np.diff(offsets)
    sizes = np.asarray(array.field("size").fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
    found = np.where(dense, counts, sizes)
    _ragged(column, where, found, width, "values")
    values = _child_values(
        value_lists, offsets, column, lambda p: where.row(_row_of(offsets, p))
    ).astype(np.float32, copy=False)
    row = np.repeat(np.arange(rows), counts)
    position = np.arange(values.shape[0]) - np.repeat(offsets[:-1] - offsets[0], counts)
    if not dense.all():
        index_lists = array.field("indices")
        index_offsets = _offsets(index_lists)
        index_counts = np.diff(index_offsets)
        mismatch = np.flatnonzero(~dense & (index_counts != counts))
        if mismatch.size:
            r = int(mismatch[0])
            raise DataFrameError(
                f"column {column.name!r}, {where.row(r)}: a sparse vector with "
                f"{int(index_counts[r])} indices and {int(counts[r])} values"
            )
        start = int(index_offsets[0])
        indices = index_lists.values.slice(start, int(index_offsets[-1]) - start)
        indices = np.asarray(indices.to_numpy(zero_copy_only=False), np.int64)
        bad = np.flatnonzero((indices < 0) | (indices >= width))
        if bad.size:
            r = _row_of(index_offsets, int(bad[0]))
            raise DataFrameError(
                f"column {column.name!r}, {where.row(r)}: sparse index {int(indices[bad[0]])} "
                f"outside a vector of size {width}"
            )
        position[np.repeat(~dense, counts)] = indices
    out = np.zeros((rows, width), np.float32)
    out[row, position] = values
    return Block(out)


_DECODERS = {
    "scalar": _scalar,
    "vector": _vector,
    "array": _array,
    "steps": _steps,
    "sequence": _sequence,
}


def decode_column(array: Any, column: Column, where: Where) -> Block:
    """One Arrow column of a record batch as a :class:`Block` of float32 values.

    Examples
    --------
    >>> import pyarrow as pa
    >>> block = decode_column(pa.array([[1, 2], [3, 4]]), Column("a", "array", 2), Where(0, 0))
    >>> block.values.tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    >>> decode_column(pa.array([[1, 2], [3]]), Column("a", "array", 2), Where(1, 10))
    Traceback (most recent call last):
    ...
    sparkbatch.errors.DataFrameError: column 'a', row 11 of partition 1: expected 2 values (the width of the column's first row), found 1
    """  # noqa: E501
    if hasattr(array, "combine_chunks"):  # a Table's column (a RecordBatch's is an Array)
        array = array.combine_chunks()
    return _DECODERS[column.kind](array, column, where)
