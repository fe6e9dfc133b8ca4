"""One minibatch of examples with several inputs and outputs: :class:`MultiDataSet`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

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
    from sparkbatch.data.dataset import DataSet

__all__ = ["MultiDataSet"]

Arrays = ArrayLike | Sequence[ArrayLike]
Masks = ArrayLike | Sequence[ArrayLike | None]


def _as_list(value: Any) -> list[Any]:
    """A list or tuple as a list; anything else (one array) as a one-element list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _masks_list(masks: Any, name: str, count: int, owner: str) -> list[Any]:
    if masks is None:
        return [None] * count
    masks = _as_list(masks)
    if len(masks) != count:
        raise ValueError(
            f"{name} has {len(masks)} entries but there are {count} {owner} arrays"
            " (use None for an array without a mask)"
        )
    return masks


class MultiDataSet(ExampleBatch):
    """Several input arrays, several output arrays and their masks, of ``n`` examples.

    The DL4J ``MultiDataSet``, used by networks with more than one input or output (a
    computation graph). Each array follows :class:`DataSet`'s rules: ``[n, ...]``, with an
    optional ``[n, t]`` mask when it is a sequence ``[n, f, t]``. The arrays are kept in
    tuples, in the order given. Indexing, :meth:`split`, :meth:`shuffle` and :meth:`copy`
    work as for :class:`DataSet`.

    Parameters
    ----------
    features : list of array_like, or one array
        The inputs. One array instead of a list is taken as a list of one.
    labels : list of array_like, or one array, optional
        The outputs; None (or an empty list) for unlabelled data.
    features_masks, labels_masks : list of (array_like or None), optional
        One entry per features (labels) array, None where that array has no mask; None for
        no masks at all.
    metadata : dict of str to str, optional
        Free-form information carried along (and stored with the minibatch).

    Examples
    --------
    >>> import numpy as np
    >>> mds = MultiDataSet(
    ...     [np.zeros((4, 3), np.float32), np.zeros((4, 2, 5), np.float32)],
    ...     np.ones((4, 1), np.float32),
    ...     features_masks=[None, np.ones((4, 5), np.float32)],
    ... )
    >>> mds
    MultiDataSet(num_examples=4, features[0]=float32(4, 3), features[1]=float32(4, 2, 5), \
labels[0]=float32(4, 1), features_masks[1]=float32(4, 5))
    >>> [len(part) for part in mds.split(3)]
    [3, 1]
    >>> MultiDataSet.merge([mds, mds[:1]]).num_examples
    5
    """

    __slots__ = ("features", "features_masks", "labels", "labels_masks", "metadata")

    features: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    features_masks: tuple[np.ndarray | None, ...]
    labels_masks: tuple[np.ndarray | None, ...]
    metadata: dict[str, str] | None

    def __init__(
        self,
        features: Arrays,
        labels: Arrays | None = None,
        features_masks: Masks | None = None,
        labels_masks: Masks | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        inputs = _as_list(features)
        outputs = _as_list(labels)
        if not inputs:
            raise ValueError("features must hold at least one array")
        input_masks = _masks_list(features_masks, "features_masks", len(inputs), "features")
        output_masks = _masks_list(labels_masks, "labels_masks", len(outputs), "labels")
        slots = [
            Slot(f"features[{i}]", array, f"features_masks[{i}]", mask)
            for i, (array, mask) in enumerate(zip(inputs, input_masks, strict=True))
        ] + [
            Slot(f"labels[{i}]", array, f"labels_masks[{i}]", mask)
            for i, (array, mask) in enumerate(zip(outputs, output_masks, strict=True))
        ]
        prepared = prepare_slots(slots)
        self.features = tuple(array for array, _ in prepared[: len(inputs)])  # type: ignore[misc]
        self.features_masks = tuple(mask for _, mask in prepared[: len(inputs)])
        self.labels = tuple(array for array, _ in prepared[len(inputs) :])  # type: ignore[misc]
        self.labels_masks = tuple(mask for _, mask in prepared[len(inputs) :])
        self.metadata = to_metadata(metadata)

    @classmethod
    def from_dataset(cls, dataset: DataSet) -> MultiDataSet:
        """A MultiDataSet with the one input and one output (none if unlabelled) of ``dataset``.

        The arrays are shared, not copied.
        """
        unlabelled = dataset.labels is None
        return cls(
            [dataset.features],
            [] if dataset.labels is None else [dataset.labels],
            [dataset.features_mask],
            [] if unlabelled else [dataset.labels_mask],
            dataset.metadata,
        )

    def to_dataset(self) -> DataSet:
        """The DataSet of a MultiDataSet with one input and one output (or none); arrays shared.

        Raises ValueError naming the numbers of inputs and outputs otherwise.
        """
        if len(self.features) != 1 or len(self.labels) > 1:
            raise ValueError(
                f"this MultiDataSet has {len(self.features)} inputs and {len(self.labels)} "
                "outputs; only one input and one output make a DataSet"
            )
        from sparkbatch.data.dataset import DataSet  # dataset.py imports this module

        labelled = bool(self.labels)
        return DataSet(
            self.features[0],
            self.labels[0] if labelled else None,
            self.features_masks[0],
            self.labels_masks[0] if labelled else None,
            metadata=self.metadata,
        )

    @property
    def num_examples(self) -> int:
        """The number of examples (the first dimension of every array)."""
        return int(self.features[0].shape[0])

    def _map(self, fn: Callable[[np.ndarray], np.ndarray]) -> MultiDataSet:
        """A new MultiDataSet with ``fn`` (which keeps the example axis) applied to every array.

        Skips validation: see NOTE [unchecked construction] in ``_arrays``.
        """
        mds = type(self).__new__(type(self))
        mds.features = tuple(fn(array) for array in self.features)
        mds.labels = tuple(fn(array) for array in self.labels)
        mds.features_masks = tuple(maybe(fn, mask) for mask in self.features_masks)
        mds.labels_masks = tuple(maybe(fn, mask) for mask in self.labels_masks)
        mds.metadata = dict(self.metadata) if self.metadata else None
        return mds

    @classmethod
    def merge(
        cls, datasets: Sequence[MultiDataSet], alignment: str = "align_start"
    ) -> MultiDataSet:
        """Concatenate MultiDataSets along the examples, in order, array by array.

        Sequence arrays are padded and masked as in :meth:`DataSet.merge` under ``alignment``
        (``"align_start"``, ``"align_end"`` or ``"equal_length"``), each array to its own
        longest length. The result keeps the first one's metadata (with the examples' files,
        as :meth:`DataSet.merge`); a single MultiDataSet is returned unchanged.

        Raises
        ------
        ValueError
            If ``datasets`` is empty, the numbers of inputs or outputs differ, or the shapes
            differ in more than the examples and the sequence length.
        SequenceLengthError
            Under ``alignment="equal_length"``, sequences differ in length.
        """
        datasets = list(datasets)
        if not datasets:
            raise ValueError("cannot merge an empty list of MultiDataSets")
        alignment = check_alignment(alignment)
        if len(datasets) == 1:
            return datasets[0]
        examples = [d.num_examples for d in datasets]
        sources = [example_sources(d.metadata, n) for d, n in zip(datasets, examples, strict=True)]
        merged: dict[str, tuple[list[Any], list[Any]]] = {}
        for kind in ("features", "labels"):
            counts = [len(getattr(d, kind)) for d in datasets]
            for i, count in enumerate(counts):
                if count != counts[0]:
                    hint = " (labelled and unlabelled data cannot be mixed)" if 0 in counts else ""
                    raise ValueError(
                        f"cannot merge: dataset {i} has {count} {kind} arrays but dataset 0 has"
                        f" {counts[0]}{hint}"
                    )
            pairs = [
                merge_slot(
                    f"{kind}[{j}]",
                    [getattr(d, kind)[j] for d in datasets],
                    [getattr(d, f"{kind}_masks")[j] for d in datasets],
                    alignment,
                    sources,
                )
                for j in range(counts[0])
            ]
            merged[kind] = ([array for array, _ in pairs], [mask for _, mask in pairs])
        return cls(
            merged["features"][0],
            merged["labels"][0],
            merged["features"][1],
            merged["labels"][1],
            merged_metadata([d.metadata for d in datasets], examples),
        )

    def _repr_parts(self) -> list[str]:
        parts = [describe(f"features[{i}]", a) for i, a in enumerate(self.features)]
        parts += [describe(f"labels[{i}]", a) for i, a in enumerate(self.labels)]
        parts += [describe(f"features_masks[{i}]", m) for i, m in enumerate(self.features_masks)]
        parts += [describe(f"labels_masks[{i}]", m) for i, m in enumerate(self.labels_masks)]
        return parts
