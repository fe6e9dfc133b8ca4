"""Numeric tables (rows of columns) to DataSets: which columns are labels, and how.

Shared by every path that turns whole tables into DataSets at once: parsed CSV partitions,
Arrow record batches of DataFrames and lists of records. The label settings mirror DL4J's
``DataVecDataSetFunction`` / ``RecordReaderDataSetIterator``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sparkbatch import _native
from sparkbatch._arguments import check_int
from sparkbatch._unchecked import unchecked_dataset
from sparkbatch.data import DataSet

__all__ = ["LabelSpec", "split_table", "batches"]


def _int_or_none(name: str, value: object, minimum: int | None = None) -> int | None:
    """``value`` as an int, or None; ValueError naming ``name`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


@dataclass(frozen=True)
class LabelSpec:
    """Where the labels of a table are and what they mean.

    Classification: column ``label_index`` (``-1`` = last) holds a class index in
    ``[0, num_classes)``, one-hot encoded into ``num_classes`` float32 columns. Regression
    (``regression=True``): columns ``label_first..label_last`` (inclusive) are the labels. The
    features are all other columns, in their order. With neither, every column is a feature.

    Examples
    --------
    >>> spec = LabelSpec(label_index=-1, num_classes=3)
    >>> spec.label_columns(5)
    [4]
    >>> LabelSpec(label_first=1, label_last=2, regression=True).label_columns(4)
    [1, 2]
    """

    label_index: int | None = None
    num_classes: int | None = None
    label_first: int | None = None
    label_last: int | None = None
    regression: bool = False

    def __post_init__(self) -> None:
        for name in ("label_index", "num_classes", "label_first", "label_last"):
            value = getattr(self, name)
            if value is not None:  # a float would pass here and fail on every row later
                object.__setattr__(self, name, check_int(name, value, minimum=None))
        ranged = self.label_first is not None or self.label_last is not None
        if self.regression:
            if self.label_index is not None and ranged:
                raise ValueError("give label_index or label_first/label_last, not both")
            if not ranged and self.label_index is None:
                raise ValueError("regression needs label_first and label_last (or label_index)")
            if ranged and (self.label_first is None or self.label_last is None):
                raise ValueError("regression needs both label_first and label_last")
            if ranged and self.label_last < self.label_first:  # type: ignore[operator]
                raise ValueError(
                    f"label_last ({self.label_last}) must not be below "
                    f"label_first ({self.label_first})"
                )
            if self.num_classes is not None:
                raise ValueError("num_classes is for classification; drop it or regression=True")
        elif ranged:
            raise ValueError(
                "label_first/label_last describe regression labels: pass regression=True"
            )
        elif self.label_index is not None:
            if self.num_classes is None or self.num_classes < 1:
                raise ValueError(
                    f"classification needs num_classes >= 1 (got {self.num_classes}); "
                    "for real-valued labels pass regression=True"
                )
        elif self.num_classes is not None:
            raise ValueError("num_classes needs label_index (the column holding the class)")

    @classmethod
    def from_arguments(
        cls,
        label_index: object = None,
        num_classes: object = None,
        label_first: object = None,
        label_last: object = None,
        regression: object = False,
    ) -> LabelSpec:
        """The spec that label keyword arguments describe, each argument checked first.

        The arguments of :func:`~sparkbatch.convert.records_to_dataset`,
        :func:`~sparkbatch.convert.record_to_dataset` and
        :class:`~sparkbatch.spark.RecordsToDataSet`, for any function that takes them from users:
        a ``ValueError`` names the argument that is not an int (``regression``: not a bool) and
        says what is missing or contradictory (``label_index`` with ``label_first`` /
        ``label_last``, no label column for classification) in the words of those arguments; the
        constructor's checks follow.

        Examples
        --------
        >>> LabelSpec.from_arguments(label_index=4, num_classes=3).label_columns(5)
        [4]
        >>> LabelSpec.from_arguments(num_classes=3)
        Traceback (most recent call last):
        ...
        ValueError: classification needs label_index (the class column) and num_classes; for real-valued labels pass regression=True with label_first/label_last
        """  # noqa: E501
        if not isinstance(regression, bool):
            raise ValueError(f"regression must be a bool, got {regression!r}")
        index = _int_or_none("label_index", label_index)
        classes = _int_or_none("num_classes", num_classes, minimum=1)
        first = _int_or_none("label_first", label_first)
        last = _int_or_none("label_last", label_last)
        if index is not None and (first is not None or last is not None):
            raise ValueError(
                "pass either label_index or label_first/label_last, not both (got "
                f"label_index={index}, label_first={first}, label_last={last})"
            )
        if first is not None and last is not None and (first < 0) == (last < 0) and last < first:
            raise ValueError(
                f"label_last must be >= label_first, got label_first={first}, label_last={last}"
            )
        if not regression and index is None and first is None and last is None:
            raise ValueError(
                "classification needs label_index (the class column) and num_classes; "
                "for real-valued labels pass regression=True with label_first/label_last"
            )
        return cls(index, classes, first, last, regression)

    @property
    def classification(self) -> bool:
        """Whether labels are one-hot encoded class indices."""
        return not self.regression and self.label_index is not None

    def label_columns(self, n_columns: int) -> list[int]:
        """The label columns of a table of ``n_columns`` columns, as non-negative indices."""
        if self.label_first is not None and self.label_last is not None:
            first, last = self.label_first, self.label_last
        elif self.label_index is not None:
            first = last = self.label_index
        else:
            return []
        if first < 0:
            first += n_columns
        if last < 0:
            last += n_columns
        if not 0 <= first <= last < n_columns:
            asked = (
                f"{self.label_first}..{self.label_last}"
                if self.label_first is not None
                else str(self.label_index)
            )
            raise ValueError(f"label columns {asked} are outside a table of {n_columns} columns")
        return list(range(first, last + 1))


def split_table(values: np.ndarray, spec: LabelSpec) -> DataSet:
    """Cut a float table ``[rows, columns]`` into a DataSet per ``spec``, with whole-array ops.

    Class indices must already be validated integers in range (the native CSV parser checks them
    with the file and line at hand); they are one-hot encoded natively.

    Examples
    --------
    >>> table = np.array([[0.5, 1.5, 2.0], [2.5, 3.5, 0.0]], np.float32)
    >>> ds = split_table(table, LabelSpec(label_index=2, num_classes=3))
    >>> ds.features.tolist(), ds.labels.tolist()
    ([[0.5, 1.5], [2.5, 3.5]], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    """
    if values.ndim != 2:
        raise ValueError(f"a table must be 2-D [rows, columns], got shape {values.shape}")
    label_cols = spec.label_columns(values.shape[1])
    if not label_cols:
        return DataSet(np.ascontiguousarray(values, dtype=np.float32))
    # The arrays built below agree by construction: NOTE [unchecked construction].
    first, last = label_cols[0], label_cols[-1] + 1
    features = np.empty((values.shape[0], values.shape[1] - (last - first)), np.float32)
    features[:, :first] = values[:, :first]
    features[:, first:] = values[:, last:]
    if spec.classification:
        labels = _native.one_hot(values[:, first].astype(np.int32), int(spec.num_classes or 0))
    else:
        labels = np.ascontiguousarray(values[:, first:last], dtype=np.float32)
    return unchecked_dataset(features, labels)


def batches(ds: DataSet, batch_size: int) -> Iterator[DataSet]:
    """The consecutive minibatches of ``batch_size`` examples of ``ds`` (the last smaller).

    ``batch_size`` is checked at the call (TypeError unless an int, ValueError below 1).
    """
    return iter(ds.split(check_int("batch_size", batch_size)))
