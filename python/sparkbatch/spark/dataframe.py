"""DataFrames to minibatch DataSets through Arrow, without a Python loop over rows.

Each partition's Arrow record batches become numpy columns, are cut into minibatches of
``batch_size`` (carrying the remainder from one record batch to the next) and leave
``mapInArrow`` as one binary cell per minibatch, encoded in the minibatch file format; the
resulting RDD decodes them into DataSets. Rows never exist as Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sparkbatch._arguments import check_int
from sparkbatch.convert.table import LabelSpec, split_table
from sparkbatch.data import DataSet, from_bytes, to_bytes
from sparkbatch.errors import DataFrameError  # defined there with every error; importable here too

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import DataFrame

__all__ = ["dataframe_to_datasets", "ArrowToMinibatches", "DataFrameError"]


class ArrowToMinibatches:
    """The ``mapInArrow`` function: record batches in, one binary minibatch per row out."""

    def __init__(self, columns: Sequence[str], spec: LabelSpec, batch_size: int) -> None:
        self.columns = list(columns)
        self.spec = spec
        self.batch_size = check_int("batch_size", batch_size)

    def _table(self, batch: Any) -> np.ndarray:
        table = np.empty((batch.num_rows, len(self.columns)), np.float32)
        for j, name in enumerate(self.columns):
            column = batch.column(j)
            if column.null_count:
                row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataFrameError(f"column {name!r} is null in row {row} of a record batch")
            table[:, j] = column.to_numpy(zero_copy_only=False)
        if self.spec.classification:
            self._check_classes(table)
        return table

    def _check_classes(self, table: np.ndarray) -> None:
        label = self.spec.label_columns(table.shape[1])[0]
        values = table[:, label]
        bad = (values != np.floor(values)) | (values < 0) | (values >= self.spec.num_classes)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataFrameError(
                f"column {self.columns[label]!r}, row {row} of a record batch: expected a class "
                f"index in [0, {self.spec.num_classes}), found {float(values[row]):g}"
            )

    def __call__(self, record_batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        pending: list[np.ndarray] = []
        held = 0
        for batch in record_batches:
            if batch.num_rows == 0:
                continue
            pending.append(self._table(batch))
            held += batch.num_rows
            if held >= self.batch_size:
                table = np.concatenate(pending) if len(pending) > 1 else pending[0]
                cut = (held // self.batch_size) * self.batch_size
                yield self._encode(pa, table[:cut])
                pending, held = ([table[cut:]], held - cut) if cut < held else ([], 0)
        if held:
            yield self._encode(pa, np.concatenate(pending))

    def _encode(self, pa: Any, table: np.ndarray) -> Any:
        data = split_table(table, self.spec)
        blobs = [to_bytes(part) for part in data.split(self.batch_size)]
        return pa.RecordBatch.from_arrays([pa.array(blobs, type=pa.binary())], names=["minibatch"])


def _decode(row: Any) -> DataSet:
    return from_bytes(row[0], name="minibatch from mapInArrow")  # type: ignore[return-value]


def dataframe_to_datasets(
    df: DataFrame,
    features: Sequence[str],
    label: str | Sequence[str] | None = None,
    *,
    num_classes: int | None = None,
    regression: bool = False,
    batch_size: int = 32,
) -> RDD[DataSet]:
    """Convert DataFrame columns to an RDD of minibatch DataSets through Arrow.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        The data; numeric columns (cast to float).
    features : sequence of str
        Feature columns, in order.
    label : str or sequence of str, optional
        Classification: one column of class indices, with ``num_classes``. Regression
        (``regression=True``): one or more real-valued columns.
    num_classes : int, optional
        Number of classes for classification.
    regression : bool
        Labels are real values.
    batch_size : int
        Examples per DataSet; the last of each partition may be smaller.

    Raises
    ------
    DataFrameError
        (in the Spark job) a null feature or label, or a class index that is not an integer in
        ``[0, num_classes)``, naming the column.

    Examples
    --------
    >>> rdd = dataframe_to_datasets(df, ["x1", "x2"], "y", num_classes=3)  # doctest: +SKIP
    """
    from pyspark.sql import functions as F

    batch_size = check_int("batch_size", batch_size)  # here, not in the tasks
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes)
    labels = [] if label is None else [label] if isinstance(label, str) else list(label)
    if not features:
        raise ValueError("features must name at least one column")
    n = len(features)
    if regression:
        spec = LabelSpec(label_first=n, label_last=n + len(labels) - 1, regression=True)
        if not labels:
            raise ValueError("regression needs label columns")
    elif labels:
        if len(labels) != 1:
            raise ValueError(f"classification takes one label column, got {labels}")
        spec = LabelSpec(label_index=n, num_classes=num_classes)
    else:
        spec = LabelSpec()
    columns = list(features) + labels
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the DataFrame (it has {df.columns})")
    selected = df.select(*[F.col(c).cast("float").alias(f"c{i}") for i, c in enumerate(columns)])
    encoded = selected.mapInArrow(ArrowToMinibatches(columns, spec, batch_size), "minibatch binary")
    return encoded.rdd.map(_decode)
