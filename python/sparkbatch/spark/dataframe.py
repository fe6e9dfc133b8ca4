"""DataFrames to minibatch DataSets through Arrow, without a Python loop over rows.

Each partition's Arrow record batches become numpy blocks, a column at once (numbers, Spark ML
vectors, fixed-length arrays and sequences: :mod:`sparkbatch.spark._arrow_columns`), are cut
into minibatches of ``batch_size`` (carrying the remainder from one record batch to the next)
and leave ``mapInArrow`` as one binary cell per minibatch, encoded in the minibatch file format;
the resulting RDD decodes them into DataSets (MultiDataSets for column groups). Rows never exist
as Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from sparkbatch import _native
from sparkbatch._arguments import check_int
from sparkbatch.convert.table import LabelSpec
from sparkbatch.data import DataSet, MultiDataSet, from_bytes, to_bytes
from sparkbatch.data.sequences import check_alignment
from sparkbatch.errors import (
    DataFrameError,  # defined there with every error; importable here too
    SequenceLengthError,
)
from sparkbatch.spark._arrow_columns import Block, Column, Where, decode_column

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import DataFrame

__all__ = ["dataframe_to_datasets", "ArrowToMinibatches", "DataFrameError"]

Columns = Union[str, Sequence[str]]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True)
class Group:
    """The columns (indices into :attr:`Layout.columns`) that make one array, concatenated in
    order along the features axis; with ``num_classes``, one column of class indices that
    becomes one-hot labels."""

    columns: tuple[int, ...]
    num_classes: int | None = None


@dataclass(frozen=True)
class Layout:
    """What the selected columns are and which arrays of a minibatch they make.

    ``multi``: the minibatches are MultiDataSets (one array per group); otherwise DataSets of
    the one features group and the one labels group (if any). Sequence groups are padded to the
    longest sequence of any group of the minibatch, under ``alignment``.
    """

    columns: tuple[Column, ...]
    features: tuple[Group, ...]
    labels: tuple[Group, ...] = ()
    multi: bool = False
    alignment: str = "align_start"

    @classmethod
    def from_spec(cls, columns: Sequence[str], spec: LabelSpec) -> Layout:
        """Number columns, labels where ``spec`` says (the layout before column types)."""
        label_columns = spec.label_columns(len(columns))
        features = tuple(i for i in range(len(columns)) if i not in label_columns)
        labels: tuple[Group, ...] = ()
        if label_columns:
            classes = spec.num_classes if spec.classification else None
            labels = (Group(tuple(label_columns), classes),)
        return cls(tuple(Column(c) for c in columns), (Group(features),), labels)

    def is_sequence(self, group: Group) -> bool:
        """Whether ``group`` is made of sequence columns."""
        return self.columns[group.columns[0]].is_sequence


class ArrowToMinibatches:
    """The ``mapInArrow`` function: record batches in, one binary minibatch per row out.

    ``ArrowToMinibatches(columns, spec, batch_size)`` reads number columns with labels per
    ``spec``; :func:`dataframe_to_datasets` passes a ``layout`` for other column types and
    groups (then ``columns`` and ``spec`` are not used).
    """

    def __init__(
        self,
        columns: Sequence[str],
        spec: LabelSpec,
        batch_size: int,
        *,
        layout: Layout | None = None,
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size)
        self.columns = list(columns)
        self.spec = spec
        self.layout = layout if layout is not None else Layout.from_spec(self.columns, spec)

    def _blocks(self, batch: Any, where: Where) -> list[Block]:
        layout = self.layout
        blocks = [decode_column(batch.column(j), c, where) for j, c in enumerate(layout.columns)]
        for group in layout.features + layout.labels:
            if group.num_classes is not None:
                self._check_classes(blocks[group.columns[0]], group, where)
            if layout.is_sequence(group):
                self._check_lengths(blocks, group, where)
        return blocks

    def _check_classes(self, block: Block, group: Group, where: Where) -> None:
        values = block.values[:, 0]
        classes = int(group.num_classes)  # type: ignore[arg-type]
        bad = (values != np.floor(values)) | (values < 0) | (values >= classes)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            place = where.row(first)
            if block.lengths is not None:
                ends = np.cumsum(block.lengths)
                row = int(np.searchsorted(ends, first, side="right"))
                step = first - int(ends[row] - block.lengths[row])
                place = f"{where.row(row)}, step {step}"
            name = self.layout.columns[group.columns[0]].name
            raise DataFrameError(
                f"column {name!r}, {place}: expected a class index in [0, {classes}), found "
                f"{float(values[first]):g}"
            )

    def _check_lengths(self, blocks: list[Block], group: Group, where: Where) -> None:
        first = blocks[group.columns[0]].lengths
        for i in group.columns[1:]:
            differ = np.flatnonzero(blocks[i].lengths != first)
            if differ.size:
                row = int(differ[0])
                a, b = (self.layout.columns[j].name for j in (group.columns[0], i))
                raise DataFrameError(
                    f"column {b!r}, {where.row(row)}: {int(blocks[i].lengths[row])} steps, but "  # type: ignore[index]
                    f"column {a!r} of the same array has {int(first[row])}"  # type: ignore[index]
                )

    def __call__(self, record_batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        context = TaskContext.get()
        partition = context.partitionId() if context is not None else 0
        pending: list[list[Block]] = []
        held = seen = 0
        for batch in record_batches:
            if batch.num_rows == 0:
                continue
            pending.append(self._blocks(batch, Where(partition, seen)))
            seen += batch.num_rows
            held += batch.num_rows
            if held >= self.batch_size:
                merged = _concat(pending)
                cut = (held // self.batch_size) * self.batch_size
                yield self._encode(pa, merged, 0, cut, Where(partition, seen - held))
                pending = [[b.take(cut, held) for b in merged]] if cut < held else []
                held -= cut
        if held:
            yield self._encode(pa, _concat(pending), 0, held, Where(partition, seen - held))

    def _encode(self, pa: Any, blocks: list[Block], start: int, stop: int, where: Where) -> Any:
        layout = self.layout
        groups = layout.features + layout.labels
        # the arrays of groups that are not sequences, once for all rows start:stop (sliced per
        # minibatch below: a concatenation and a one-hot per minibatch cost 2-3x the old path)
        whole = [
            None if layout.is_sequence(g) else _group_array(blocks, g, start, stop) for g in groups
        ]
        blobs = []
        for first in range(start, stop, self.batch_size):
            last = min(first + self.batch_size, stop)
            arrays = [
                (a[first - start : last - start], None) if a is not None else None for a in whole
            ]
            place = Where(where.partition, where.first_row + first)
            blobs.append(to_bytes(self._minibatch(blocks, arrays, first, last, place)))
        return pa.RecordBatch.from_arrays([pa.array(blobs, type=pa.binary())], names=["minibatch"])

    def _minibatch(
        self,
        blocks: list[Block],
        arrays: list[tuple[np.ndarray, np.ndarray | None] | None],
        first: int,
        last: int,
        where: Where,
    ) -> DataSet | MultiDataSet:
        """Rows ``first:last`` as one minibatch: ``arrays`` holds the rows' arrays of groups that
        are not sequences (None for sequence groups, padded here from ``blocks``)."""
        layout = self.layout
        groups = layout.features + layout.labels
        sequences = [i for i, g in enumerate(groups) if layout.is_sequence(g)]
        if sequences:
            part = {c: blocks[c].take(first, last) for i in sequences for c in groups[i].columns}
            steps = max(int(part[groups[i].columns[0]].lengths.max()) for i in sequences)  # type: ignore[union-attr]
            if layout.alignment == "equal_length":
                self._check_equal(part, [groups[i] for i in sequences], where)
            arrays = list(arrays)
            for i in sequences:
                group = groups[i]
                values = _group_values([part[c] for c in group.columns], group)
                lengths = part[group.columns[0]].lengths
                arrays[i] = _pad(values, lengths, steps, layout.alignment)  # type: ignore[arg-type]
        n = len(layout.features)
        features, labels = arrays[:n], arrays[n:]
        if layout.multi:
            return MultiDataSet(
                [a for a, _ in features],  # type: ignore[misc]
                [a for a, _ in labels],  # type: ignore[misc]
                [m for _, m in features],  # type: ignore[misc]
                [m for _, m in labels],  # type: ignore[misc]
            )
        (x, x_mask), (y, y_mask) = features[0], labels[0] if labels else (None, None)  # type: ignore[misc]
        return DataSet(x, y, x_mask, y_mask)

    def _check_equal(self, blocks: dict[int, Block], groups: list[Group], where: Where) -> None:
        """Under ``"equal_length"``: every sequence of the minibatch has the first one's
        length; SequenceLengthError naming both rows and columns otherwise."""
        first_group = groups[0]
        reference = int(blocks[first_group.columns[0]].lengths[0])  # type: ignore[index]
        for group in groups:
            lengths = blocks[group.columns[0]].lengths
            differ = np.flatnonzero(lengths != reference)
            if differ.size:
                row = int(differ[0])
                a, b = (self.layout.columns[g.columns[0]].name for g in (first_group, group))
                raise SequenceLengthError(
                    f"alignment 'equal_length': column {a!r} has {reference} steps in "
                    f"{where.row(0)} but column {b!r} has {int(lengths[row])} in "  # type: ignore[index]
                    f"{where.row(row)} of the same minibatch; use alignment='align_start' or "
                    "'align_end' to pad and mask sequences of different lengths"
                )


def _group_values(parts: list[Block], group: Group) -> np.ndarray:
    """The values of a group's columns side by side, one-hot for a class column."""
    values = parts[0].values
    if len(parts) > 1:
        values = np.concatenate([p.values for p in parts], axis=1)
    if group.num_classes is not None:
        values = _native.one_hot(values[:, 0].astype(np.int32), group.num_classes)
    return values


def _group_array(blocks: list[Block], group: Group, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a group that is not a sequence, as one float32 array."""
    values = _group_values([blocks[c].take(start, stop) for c in group.columns], group)
    return np.ascontiguousarray(values, dtype=np.float32)


def _concat(pending: list[list[Block]]) -> list[Block]:
    if len(pending) == 1:
        return pending[0]
    return [Block.concat(list(column)) for column in zip(*pending, strict=True)]


def _pad(
    values: np.ndarray, lengths: np.ndarray, steps: int, alignment: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """The steps ``values [sum(lengths), w]`` of ``n`` sequences as ``[n, w, steps]`` with a
    mask ``[n, steps]`` (None under ``"equal_length"``), with one scatter (as
    :func:`sparkbatch.convert.tables_to_dataset` pads CSV sequences)."""
    n = lengths.shape[0]
    example = np.repeat(np.arange(n), lengths)
    step = np.arange(values.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    if alignment == "align_end":
        step += np.repeat(steps - lengths, lengths)
    out = np.zeros((n, steps, values.shape[1]), np.float32)
    out[example, step] = values
    mask = None
    if alignment != "equal_length":
        mask = np.zeros((n, steps), np.float32)
        mask[example, step] = 1.0
    return np.ascontiguousarray(out.transpose(0, 2, 1)), mask


def _decode(row: Any) -> DataSet | MultiDataSet:
    return from_bytes(row[0], name="minibatch from mapInArrow")


# -- the driver side: column types, groups and widths --------------------------------------------


def _groups(value: Columns | Sequence[Columns] | None) -> tuple[list[list[str]], bool]:
    """``value`` as groups of column names, and whether it was given as groups."""
    if value is None:
        return [], False
    if isinstance(value, str):
        return [[value]], False
    items = list(value)
    if not any(not isinstance(v, str) for v in items):
        return ([items] if items else []), False
    groups = [[v] if isinstance(v, str) else list(v) for v in items]
    for group in groups:
        if not group or not all(isinstance(c, str) for c in group):
            raise ValueError(
                f"a column group must be a non-empty list of column names, got {group}"
            )
    return groups, True


def _kind(name: str, data_type: Any, is_label: bool, sequence_features: bool) -> str:
    from pyspark.sql import types as T

    def numeric(t: Any) -> bool:
        return isinstance(t, (T.NumericType, T.BooleanType))

    if isinstance(data_type, T.UserDefinedType):
        sql = data_type.sqlType()
        if isinstance(sql, T.StructType) and sql.fieldNames() == [
            "type",
            "size",
            "indices",
            "values",
        ]:
            return "vector"
    elif isinstance(data_type, T.ArrayType):
        element = data_type.elementType
        if numeric(element):
            return "steps" if is_label and sequence_features else "array"
        if isinstance(element, T.ArrayType) and numeric(element.elementType):
            return "sequence"
    elif not isinstance(data_type, (T.StructType, T.MapType, T.BinaryType)):
        return "scalar"  # numbers, and what Spark casts to float (strings of numbers)
    raise ValueError(
        f"column {name!r} has type {data_type.simpleString()}: expected a number, a Spark ML "
        "vector, an array of numbers or an array of arrays of numbers"
    )


_CASTS = {
    "scalar": "float",
    "array": "array<float>",
    "steps": "array<float>",
    "sequence": "array<array<float>>",
}


def _selected(column: Any, kind: str, data_type: Any) -> Any:
    """``column`` as Arrow should bring it: numbers cast to float; arrays as they are when
    their values are floats, integers or booleans (numpy converts them, with no cast in Spark's
    generated code), cast to float arrays otherwise (decimals); vectors as they are."""
    from pyspark.sql import types as T

    if kind == "vector":
        return column
    if kind != "scalar":
        element = data_type.elementType
        while isinstance(element, T.ArrayType):
            element = element.elementType
        plain = (T.FloatType, T.DoubleType, T.ByteType, T.ShortType, T.IntegerType, T.LongType)
        if isinstance(element, (*plain, T.BooleanType)):
            return column
    return column.cast(_CASTS[kind])


def _widths(df: DataFrame, names: list[str], kinds: list[str]) -> list[int]:
    """The width of every column from the DataFrame's first row (one small Spark job when a
    column is a vector, an array or a sequence): every other row must match it."""
    widths = [1] * len(names)
    wanted = [i for i, k in enumerate(kinds) if k in ("vector", "array", "sequence")]
    if not wanted:
        return widths
    first = df.select(*[df[names[i]] for i in wanted]).limit(1).collect()
    if not first:
        return widths  # no rows: nothing will be decoded
    for i, value in zip(wanted, first[0], strict=True):
        if value is None or (kinds[i] == "sequence" and value and value[0] is None):
            raise DataFrameError(f"column {names[i]!r} is null in the first row of the DataFrame")
        if kinds[i] == "sequence":
            if not value:
                raise DataFrameError(
                    f"column {names[i]!r}, the first row of the DataFrame: a sequence needs at "
                    "least one step, found none"
                )
            value = value[0]
        if not len(value):  # numpy cannot tell the rows of values of width 0 apart
            raise DataFrameError(
                f"column {names[i]!r}, the first row of the DataFrame: expected at least one "
                f"value{' per step' if kinds[i] == 'sequence' else ''}, found none"
            )
        widths[i] = len(value)
    return widths


def dataframe_to_datasets(
    df: DataFrame,
    features: Columns | Sequence[Columns],
    label: Columns | Sequence[Columns] | None = None,
    *,
    num_classes: int | Sequence[int] | None = None,
    regression: bool = False,
    batch_size: int = 32,
    alignment: str = "align_start",
) -> RDD[DataSet] | RDD[MultiDataSet]:
    """Convert DataFrame columns to an RDD of minibatch DataSets through Arrow.

    Columns may hold numbers, Spark ML vectors (``pyspark.ml.linalg.VectorUDT``, dense and
    sparse, mixed in one column), fixed-length arrays of numbers (features ``[n, width]``) or
    arrays of arrays of numbers (sequences, one inner array per time step: ``[n, width, T]``
    with a mask ``[n, T]``). Vector and array widths come from the DataFrame's first row (one
    small Spark job at the call); every row must match. Columns of a group are concatenated
    along the features axis in order. See ``docs/dataframes.md``.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        The data.
    features : sequence of str, or sequence of column groups
        Feature columns, in order: one features array. A list of groups (``[["a", "b"],
        ["c"]]``) makes MultiDataSets with one features array per group.
    label : str, sequence of str or sequence of groups, optional
        Classification: one column of class indices per labels array, with ``num_classes``.
        Regression (``regression=True``): one or more real-valued columns per labels array.
        Groups make MultiDataSets. When a features array is a sequence, an array-of-numbers
        label column holds one label per step (labels ``[n, k, T]`` with a labels mask).
    num_classes : int or sequence of int, optional
        Number of classes for classification (one per labels group, or one for all).
    regression : bool
        Labels are real values.
    batch_size : int
        Examples per minibatch; the last of each partition may be smaller.
    alignment : {"align_start", "align_end", "equal_length"}
        Where shorter sequences of a minibatch are padded (at the end, at the start, or not at
        all: sequences of different lengths are a SequenceLengthError); with padding, every
        sequence array has a mask, as in ``csv_sequences_to_datasets``.

    Raises
    ------
    ValueError
        (at the call) a missing column, a column of another type, a group mixing sequences with
        other columns, or labels that do not fit the label options.
    DataFrameError
        (in the Spark job) a null, a ragged row of a vector or array column, an empty sequence,
        or a class index that is not an integer in ``[0, num_classes)``, naming the column and
        the row: ``"row R of partition P"``, counted from 0 within Spark partition ``P`` of
        ``df``.

    Examples
    --------
    >>> rdd = dataframe_to_datasets(df, ["x1", "x2"], "y", num_classes=3)  # doctest: +SKIP
    >>> rdd = dataframe_to_datasets(df, [["vec"], ["x1"]], [["y"]], num_classes=3)  # doctest: +SKIP
    """
    from pyspark.sql import functions as F

    batch_size = check_int("batch_size", batch_size)  # here, not in the tasks
    classes_list: list[int] | None = None
    if isinstance(num_classes, Sequence):
        classes_list = [check_int("num_classes", c) for c in num_classes]
    elif num_classes is not None:
        num_classes = check_int("num_classes", num_classes)
    alignment = check_alignment(alignment)
    feature_groups, multi_features = _groups(features)
    label_groups, multi_labels = _groups(label)
    if not feature_groups:
        raise ValueError("features must name at least one column")
    if regression and not label_groups:
        raise ValueError("regression needs label columns")
    if not regression and label_groups:
        bad = [g for g in label_groups if len(g) != 1]
        if bad:
            raise ValueError(
                f"classification takes one label column per labels array, got {bad[0]}"
            )
        if classes_list is None:
            if num_classes is None or num_classes < 1:
                raise ValueError(
                    f"classification needs num_classes >= 1 (got {num_classes}); "
                    "for real-valued labels pass regression=True"
                )
            classes_list = [num_classes] * len(label_groups)  # type: ignore[list-item]
        if len(classes_list) != len(label_groups):
            raise ValueError(
                f"num_classes has {len(classes_list)} entries for {len(label_groups)} labels arrays"
            )
    names = [c for g in feature_groups + label_groups for c in g]
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the DataFrame (it has {df.columns})")
    schema = {f.name: f.dataType for f in df.schema.fields}
    n_features = sum(len(g) for g in feature_groups)
    feature_kinds = [_kind(c, schema[c], False, False) for c in names[:n_features]]
    sequence_features = "sequence" in feature_kinds
    kinds = feature_kinds + [
        _kind(c, schema[c], True, sequence_features) for c in names[n_features:]
    ]
    layout_groups: list[Group] = []
    position = 0
    for g, group in enumerate(feature_groups + label_groups):
        indices = tuple(range(position, position + len(group)))
        position += len(group)
        sequence = {kinds[i] in ("steps", "sequence") for i in indices}
        if len(sequence) > 1:
            raise ValueError(
                f"columns {group} make one array but mix sequences with other columns; put "
                "them in separate groups"
            )
        classes = None
        if g >= len(feature_groups) and not regression:
            classes = classes_list[g - len(feature_groups)]  # type: ignore[index]
            if kinds[indices[0]] not in ("scalar", "steps"):
                raise ValueError(
                    f"column {group[0]!r} holds class labels: expected a number (or an array of "
                    f"one class per step), found {schema[group[0]].simpleString()}"
                )
        layout_groups.append(Group(indices, classes))
    widths = _widths(df, names, kinds)  # a Spark job: after every check that needs none
    columns = tuple(Column(c, k, w) for c, k, w in zip(names, kinds, widths, strict=True))
    layout = Layout(
        columns,
        tuple(layout_groups[: len(feature_groups)]),
        tuple(layout_groups[len(feature_groups) :]),
        multi=multi_features or multi_labels,
        alignment=alignment,
    )
    selected = df.select(
        *[
            _selected(F.col(c.name), c.kind, schema[c.name]).alias(f"c{i}")
            for i, c in enumerate(columns)
        ]
    )
    convert = ArrowToMinibatches(names, LabelSpec(), batch_size, layout=layout)
    return selected.mapInArrow(convert, "minibatch binary").rdd.map(_decode)
