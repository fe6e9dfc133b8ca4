"""One minibatch of examples with a single input and a single output: :class:`DataSet`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from sparkbatch.data._arrays import (
    ExampleBatch,
    Slot,
    describe,
    maybe,
    merge_slot,
    prepare_slots,
    to_metadata,
)
from sparkbatch.data.sequences import check_alignment, example_sources, merged_metadata

if TYPE_CHECKING:
    from sparkbatch.data.multidataset import MultiDataSet

__all__ = ["DataSet"]


class DataSet(ExampleBatch):
    """Features, optional labels and optional time-step masks of ``n`` examples.

    The DL4J ``DataSet``: features are ``[n, f]``, ``[n, c, h, w]`` (images, NCHW) or
    ``[n, f, t]`` (sequences); labels ``[n, k]`` or ``[n, k, t]``; a mask ``[n, t]`` marks
    the real time steps (1) of a sequence array and the padding (0). Numpy floating arrays
    (memory maps included) are kept as given, never copied or written to; lists and integer
    arrays become float32. ``ds[i]``, ``ds[a:b]``, ``ds[index_array]``, :meth:`split`,
    :meth:`shuffle` and :meth:`copy` return new DataSets and never modify this one.

    Parameters
    ----------
    features : array_like
        The network inputs, first dimension the examples.
    labels : array_like, optional
        The targets, or None for unlabelled data.
    features_mask, labels_mask : array_like, optional
        ``[n, t]`` masks of sequence features or labels.
    metadata : dict of str to str, optional
        Free-form information carried along (and stored with the minibatch).

    Examples
    --------
    >>> import numpy as np
    >>> ds = DataSet(np.zeros((5, 3), np.float32), np.ones((5, 2), np.float32))
    >>> ds
    DataSet(num_examples=5, features=float32(5, 3), labels=float32(5, 2))
    >>> [len(part) for part in ds.split(2)]
    [2, 2, 1]
    >>> short = DataSet(np.ones((1, 1, 2)), np.ones((1, 1, 2)))
    >>> long = DataSet(np.ones((1, 1, 3)), np.ones((1, 1, 3)))
    >>> DataSet.merge([short, long]).features_mask
    array([[1., 1., 0.],
           [1., 1., 1.]])
    """

    __slots__ = ("features", "features_mask", "labels", "labels_mask", "metadata")

    features: np.ndarray
    labels: np.ndarray | None
    features_mask: np.ndarray | None
    labels_mask: np.ndarray | None
    metadata: dict[str, str] | None

    def __init__(
        self,
        features: ArrayLike,
        labels: ArrayLike | None = None,
        features_mask: ArrayLike | None = None,
        labels_mask: ArrayLike | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        (features_array, self.features_mask), (self.labels, self.labels_mask) = prepare_slots(
            [
                Slot("features", features, "features_mask", features_mask),
                Slot("labels", labels, "labels_mask", labels_mask, required=False),
            ]
        )
        assert features_array is not None  # features are required
        self.features = features_array
        self.metadata = to_metadata(metadata)

    @property
    def num_examples(self) -> int:
        """The number of examples (the first dimension of every array)."""
        return int(self.features.shape[0])

    @classmethod
    def _unchecked(
        cls,
        features: np.ndarray,
        labels: np.ndarray | None = None,
        features_mask: np.ndarray | None = None,
        labels_mask: np.ndarray | None = None,
        metadata: dict[str, str] | None = None,
    ) -> DataSet:
        """A DataSet of numpy arrays already known to agree; see NOTE [unchecked construction].

        Outside :mod:`sparkbatch.data`, use :func:`sparkbatch._unchecked.unchecked_dataset`."""
        ds = cls.__new__(cls)
        ds.features, ds.labels = features, labels
        ds.features_mask, ds.labels_mask = features_mask, labels_mask
        ds.metadata = dict(metadata) if metadata else None
        return ds

    def _map(self, fn: Callable[[np.ndarray], np.ndarray]) -> DataSet:
        """A new DataSet with ``fn`` (which keeps the example axis) applied to every array."""
        return self._unchecked(
            fn(self.features),
            maybe(fn, self.labels),
            maybe(fn, self.features_mask),
            maybe(fn, self.labels_mask),
            self.metadata,
        )

    def to_multi(self) -> MultiDataSet:
        """This DataSet as a :class:`MultiDataSet` with one input and one output (or none)."""
        from sparkbatch.data.multidataset import MultiDataSet

        return MultiDataSet.from_dataset(self)

    @classmethod
    def merge(cls, datasets: Sequence[DataSet], alignment: str = "align_start") -> DataSet:
        """Concatenate DataSets along the examples, in order.

        Sequences of different lengths are padded with zeros and masked, as DL4J's
        ``DataSetUtil.mergeTimeSeries`` does; features and labels are padded separately, each
        to its own longest length. The result keeps the first DataSet's metadata (with the
        files of all examples, when the inputs know theirs: NOTE [sequence sources] in
        :mod:`sparkbatch.data.sequences`); a single DataSet is returned unchanged.

        Parameters
        ----------
        datasets : sequence of DataSet
            What to merge.
        alignment : {"align_start", "align_end", "equal_length"}
            Where the padding of shorter sequences goes: at the end (DL4J's merge), at the start
            (so that last steps line up), or nowhere: sequences of different lengths are then
            a :class:`~sparkbatch.errors.SequenceLengthError` naming both (and their files).

        Raises
        ------
        ValueError
            If ``datasets`` is empty, mixes labelled and unlabelled data, or the shapes differ
            in more than the examples and the sequence length.
        SequenceLengthError
            Under ``alignment="equal_length"``, sequences differ in length.

        Examples
        --------
        >>> import numpy as np
        >>> short = DataSet(np.ones((1, 1, 2)), metadata={"source": "a.csv"})
        >>> long = DataSet(np.ones((1, 1, 3)), metadata={"source": "b.csv"})
        >>> DataSet.merge([short, long], alignment="align_end").features_mask
        array([[0., 1., 1.],
               [1., 1., 1.]])
        >>> DataSet.merge([short, long], alignment="equal_length")
        Traceback (most recent call last):
        ...
        sparkbatch.errors.SequenceLengthError: cannot merge with alignment 'equal_length': features of dataset 0 (a.csv) has 2 steps but dataset 1 (b.csv) has 3; ...
        """  # noqa: E501
        datasets = list(datasets)
        if not datasets:
            raise ValueError("cannot merge an empty list of DataSets")
        alignment = check_alignment(alignment)
        if len(datasets) == 1:
            return datasets[0]
        counts = [d.num_examples for d in datasets]
        sources = [example_sources(d.metadata, n) for d, n in zip(datasets, counts, strict=True)]
        features, features_mask = merge_slot(
            "features",
            [d.features for d in datasets],
            [d.features_mask for d in datasets],
            alignment,
            sources,
        )
        labels, labels_mask = merge_slot(
            "labels",
            [d.labels for d in datasets],
            [d.labels_mask for d in datasets],
            alignment,
            sources,
        )
        assert features is not None
        metadata = merged_metadata([d.metadata for d in datasets], counts)
        return cls(features, labels, features_mask, labels_mask, metadata)

    def _repr_parts(self) -> list[str]:
        return [
            describe("features", self.features),
            describe("labels", self.labels),
            describe("features_mask", self.features_mask),
            describe("labels_mask", self.labels_mask),
        ]
