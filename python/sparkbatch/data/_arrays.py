"""Array helpers shared by :class:`~sparkbatch.data.dataset.DataSet` and
:class:`~sparkbatch.data.multidataset.MultiDataSet`.

Both classes hold "slots": an array (features or labels, ``[n, ...]``) with an optional mask
(``[n, t]``, only for sequences ``[n, f, t]``). Conversion, validation, index normalisation and
the time-series merge live here once, so both classes behave identically.

NOTE [unchecked construction]: validating a DataSet costs a few microseconds, more than
slicing one out of a bigger one. Arrays derived from already-checked ones by an operation that
keeps the example axis (slicing, index selection, copying) and arrays built by sparkbatch itself
(the file reader; ``convert.table.split_table`` and the record conversions, through
``sparkbatch._unchecked``) skip the checks through ``DataSet._unchecked`` / ``_map``.
Everything a user passes in, or a file provides, is checked.

NOTE [time-series merge]: merging follows DL4J's ``DataSetUtil.mergeTimeSeries``. Sequences of
length ``T_i`` fill steps ``0..T_i-1`` of a zero array of length ``T_max`` (padding at the end);
a mask ``[n, T_max]`` is produced when any input has a mask or the lengths differ. Given masks
are copied and zero-extended; inputs without a mask get ones on their real steps. The
``alignment`` of :mod:`sparkbatch.data.sequences` chooses where the padding goes:
``"align_start"`` (the default, as above), ``"align_end"`` (each input's steps end at
``T_max - 1``; the padding, and the zero-extension of a given mask, come first) or
``"equal_length"`` (a length difference is a
:class:`~sparkbatch.errors.SequenceLengthError` naming both inputs and, when their metadata
knows them, their files).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from sparkbatch.data.sequences import check_alignment, describe_sources, select_sources
from sparkbatch.errors import SequenceLengthError

__all__ = [
    "ExampleBatch",
    "Slot",
    "describe",
    "maybe",
    "merge_slot",
    "normalize_index",
    "permutation",
    "prepare_slots",
    "split_slices",
    "to_array",
    "to_metadata",
]

Index = int | slice | Sequence[int] | Sequence[bool] | np.ndarray
_B = TypeVar("_B", bound="ExampleBatch")


class Slot(NamedTuple):
    """One array and its mask as given by the user, with the names used in error messages."""

    name: str
    value: Any
    mask_name: str
    mask: Any
    required: bool = True


def to_array(value: ArrayLike, name: str) -> np.ndarray:
    """Convert ``value`` to a numeric numpy array.

    Anything that already has a floating dtype (a numpy array or memory map, or another array
    library's tensor) keeps it; Python lists and integer or boolean arrays become float32.

    Examples
    --------
    >>> to_array([[1, 2]], "features").dtype
    dtype('float32')
    >>> to_array(np.zeros((1, 2)), "features").dtype
    dtype('float64')
    """
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if array.dtype.kind == "f" and hasattr(value, "dtype"):
        return array
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, got an array of dtype {array.dtype}")
    return array.astype(np.float32)


def to_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    """Check that ``metadata`` maps strings to strings and return a copy of it."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict of str to str, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(
                f"metadata must be a dict of str to str, got {key!r}: {value!r}"
                " (convert values with str() or json.dumps())"
            )
    return dict(metadata)


def _check_mask(slot: Slot, array: np.ndarray, mask: np.ndarray) -> None:
    if array.ndim != 3:
        raise ValueError(
            f"{slot.mask_name} was given but {slot.name} has shape {array.shape}; masks apply"
            f" only to sequence arrays [n, f, t]"
        )
    if mask.ndim != 2:
        raise ValueError(f"{slot.mask_name} must be 2-D [n, t], got shape {mask.shape}")
    if mask.shape[1] != array.shape[2]:
        raise ValueError(
            f"{slot.mask_name} has {mask.shape[1]} time steps but {slot.name} has"
            f" {array.shape[2]} ({slot.name} shape {array.shape},"
            f" {slot.mask_name} shape {mask.shape})"
        )


def prepare_slots(slots: Sequence[Slot]) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """Convert every slot's array and mask and check that they fit together.

    All arrays and masks must have the same number of examples as the first array; arrays need
    at least two dimensions; a mask must be ``[n, t]`` for an array ``[n, f, t]``. Each mismatch
    raises ``ValueError`` naming the arrays and their shapes.
    """
    result: list[tuple[np.ndarray | None, np.ndarray | None]] = []
    named: list[tuple[str, np.ndarray]] = []
    for slot in slots:
        if slot.value is None:
            if slot.required:
                raise ValueError(f"{slot.name} must be an array, got None")
            if slot.mask is not None:
                raise ValueError(f"{slot.mask_name} was given but {slot.name} is None")
            result.append((None, None))
            continue
        array = to_array(slot.value, slot.name)
        if array.ndim < 2:
            raise ValueError(
                f"{slot.name} must have at least 2 dimensions [n, ...], got shape {array.shape}"
                " (use x.reshape(-1, 1) for a single column)"
            )
        named.append((slot.name, array))
        mask = None if slot.mask is None else to_array(slot.mask, slot.mask_name)
        if mask is not None:
            named.append((slot.mask_name, mask))
        result.append((array, mask))
    ref_name, ref = named[0]
    for name, other in named[1:]:
        if other.ndim == 0 or other.shape[0] != ref.shape[0]:
            count = other.shape[0] if other.ndim else "no"
            raise ValueError(
                f"{name} has {count} examples but {ref_name} has {ref.shape[0]}"
                f" ({ref_name} shape {ref.shape}, {name} shape {other.shape})"
            )
    for slot, (owner, mask) in zip(slots, result, strict=True):
        if owner is not None and mask is not None:
            _check_mask(slot, owner, mask)
    return result


def maybe(fn: Callable[[np.ndarray], np.ndarray], array: np.ndarray | None) -> np.ndarray | None:
    """Apply ``fn`` to ``array`` unless it is None."""
    return None if array is None else fn(array)


def normalize_index(index: Index, n: int) -> slice | np.ndarray:
    """Turn an example index into a slice (views) or an integer array (copies).

    An int becomes a one-example slice so that the example dimension is kept; a boolean mask
    becomes the positions it selects.

    Examples
    --------
    >>> normalize_index(-1, 5)
    slice(4, 5, None)
    >>> normalize_index([True, False, True, False, False], 5)
    array([0, 2])
    """
    if isinstance(index, slice):
        return index
    if isinstance(index, (bool, np.bool_)):
        raise TypeError("examples cannot be indexed with a bool; use a boolean array instead")
    if isinstance(index, (int, np.integer)):
        i = operator.index(index)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} examples")
        i %= n
        return slice(i, i + 1)
    array = np.asarray(index)
    if array.size == 0 and array.ndim == 1:
        return np.zeros(0, dtype=np.intp)
    if array.dtype.kind not in "biu":
        raise TypeError(
            "examples are indexed with an int, a slice, or an integer or boolean array;"
            f" got {type(index).__name__} of dtype {array.dtype}"
        )
    if array.ndim != 1:
        raise IndexError(f"an example index array must be 1-D, got shape {array.shape}")
    if array.dtype.kind == "b":
        if array.shape[0] != n:
            raise IndexError(
                f"boolean index has length {array.shape[0]} but there are {n} examples"
            )
        return np.flatnonzero(array)
    bad = (array < -n) | (array >= n)
    if bad.any():
        raise IndexError(f"index {array[bad][0]} is out of range for {n} examples")
    return array


def split_slices(n: int, batch_size: int) -> list[slice]:
    """Slices cutting ``n`` examples into consecutive pieces of ``batch_size`` (last smaller).

    Examples
    --------
    >>> split_slices(5, 2)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    size = operator.index(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def permutation(n: int, seed: int | np.random.Generator | None) -> np.ndarray:
    """A random permutation of ``range(n)`` from ``np.random.default_rng(seed)``."""
    return np.random.default_rng(seed).permutation(n)


def _merge_sequences(
    name: str,
    arrays: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    alignment: str,
    sources: Sequence[Sequence[str | None] | None] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    # See NOTE [time-series merge] in the module docstring.
    lengths = [array.shape[2] for array in arrays]
    if alignment == "equal_length":
        different = [i for i, length in enumerate(lengths) if length != lengths[0]]
        if different:
            j = different[0]

            def named(i: int) -> str:
                return f"dataset {i}" + describe_sources(sources[i] if sources else None)

            raise SequenceLengthError(
                f"cannot merge with alignment 'equal_length': {name} of {named(0)} has"
                f" {lengths[0]} steps but {named(j)} has {lengths[j]}; use"
                " alignment='align_start' or 'align_end' to pad and mask sequences of"
                " different lengths"
            )
    given = [mask for mask in masks if mask is not None]
    if not given and len(set(lengths)) == 1:
        return np.concatenate(arrays, axis=0), None
    t_max = max(lengths)
    total = sum(array.shape[0] for array in arrays)
    dtype = np.result_type(*arrays)
    out = np.zeros((total, arrays[0].shape[1], t_max), dtype=dtype)
    mask_out = np.zeros((total, t_max), dtype=np.result_type(*given) if given else dtype)
    start = 0
    for array, mask, length in zip(arrays, masks, lengths, strict=True):
        stop = start + array.shape[0]
        first = t_max - length if alignment == "align_end" else 0
        out[start:stop, :, first : first + length] = array
        mask_out[start:stop, first : first + length] = 1 if mask is None else mask
        start = stop
    return out, mask_out


def merge_slot(
    name: str,
    arrays: Sequence[np.ndarray | None],
    masks: Sequence[np.ndarray | None],
    alignment: str = "align_start",
    sources: Sequence[Sequence[str | None] | None] | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Concatenate one slot of several datasets along the examples.

    Sequences ``[n, f, t]`` of different lengths are padded and masked under ``alignment``,
    see NOTE [time-series merge]. Errors name ``name``, the dataset index and the shapes;
    ``sources`` (each dataset's example files, or None) lets a length error name files too.

    Examples
    --------
    >>> a, b = np.ones((1, 1, 2), np.float32), np.ones((1, 1, 3), np.float32)
    >>> merged, mask = merge_slot("features", [a, b], [None, None])
    >>> merged[:, 0, :]
    array([[1., 1., 0.],
           [1., 1., 1.]], dtype=float32)
    >>> mask
    array([[1., 1., 0.],
           [1., 1., 1.]], dtype=float32)
    >>> merge_slot("features", [a, b], [None, None], "align_end")[1]
    array([[0., 1., 1.],
           [1., 1., 1.]], dtype=float32)
    """
    alignment = check_alignment(alignment)
    missing = [i for i, array in enumerate(arrays) if array is None]
    if len(missing) == len(arrays):
        return None, None
    if missing:
        given = next(i for i, array in enumerate(arrays) if array is not None)
        raise ValueError(
            f"cannot merge: {name} is None in dataset {missing[0]} but not in dataset {given}"
            " (labelled and unlabelled data cannot be mixed)"
        )
    present = [array for array in arrays if array is not None]  # all of them, see above
    first = present[0]
    # Sequences may differ in length (axis 2); everything else must match exactly.
    checked = slice(1, 2) if first.ndim == 3 else slice(1, None)
    for i, array in enumerate(present):
        if array.ndim != first.ndim or array.shape[checked] != first.shape[checked]:
            rule = "the feature dimension" if first.ndim == 3 else "all but the first dimension"
            where = describe_sources(sources[i] if sources else None)
            first_where = describe_sources(sources[0] if sources else None)
            raise ValueError(
                f"cannot merge: {name} of dataset {i}{where} has shape {array.shape} but"
                f" dataset 0{first_where} has shape {first.shape}; {rule} must match"
            )
    if first.ndim == 3:
        return _merge_sequences(name, present, masks, alignment, sources)
    return np.concatenate(present, axis=0), None


def describe(name: str, array: np.ndarray | None) -> str:
    """``name=dtype(shape)`` for a repr, or an empty string for None."""
    if array is None:
        return ""
    return f"{name}={array.dtype}{tuple(array.shape)}"


class ExampleBatch:
    """What DataSet and MultiDataSet share: selecting, splitting, shuffling and copying examples.

    A subclass provides ``num_examples``, ``metadata``, ``_map`` (a new instance with a function
    applied to every array and mask) and ``_repr_parts``; everything here is built on those.
    """

    __slots__ = ()

    metadata: dict[str, str] | None

    @property
    def num_examples(self) -> int:
        """The number of examples (the first dimension of every array)."""
        raise NotImplementedError

    def _map(self: _B, fn: Callable[[np.ndarray], np.ndarray]) -> _B:
        raise NotImplementedError

    def _repr_parts(self) -> list[str]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self: _B, index: Index) -> _B:
        """Select examples by int (keeping the dimension), slice, index array or boolean mask.

        Slices give views of the arrays; index arrays and boolean masks give copies.
        """
        selection = normalize_index(index, self.num_examples)
        selected = self._map(lambda array: array[selection])
        select_sources(selected.metadata, selection, self.num_examples)  # NOTE [sequence sources]
        return selected

    def split(self: _B, batch_size: int) -> list[_B]:
        """Cut into consecutive pieces of ``batch_size`` examples, in order, the last smaller.

        The pieces are views of this object's arrays.
        """
        pieces = split_slices(self.num_examples, batch_size)
        if self.metadata:  # sources to keep in step: NOTE [sequence sources]
            return [self[piece] for piece in pieces]
        # a partition's thousands of minibatches: slices need none of __getitem__'s checks
        return [self._map(operator.itemgetter(piece)) for piece in pieces]

    def shuffle(self: _B, seed: int | np.random.Generator | None = None) -> _B:
        """A new object with the examples in random order (``np.random.default_rng(seed)``).

        The rows of every array and mask move together; this object is left unchanged (its
        arrays may be read-only memory maps).
        """
        return self[permutation(self.num_examples, seed)]

    def copy(self: _B) -> _B:
        """A deep copy whose arrays are new, writable and independent of this object's."""
        return self._map(np.array)

    def save(
        self,
        target: Any,
        *,
        compact_labels: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        """Write this object as one minibatch file; see :func:`sparkbatch.data.save`."""
        from sparkbatch.data.format import save

        save(self, target, compact_labels=compact_labels, storage_options=storage_options)  # type: ignore[arg-type]

    @classmethod
    def load(
        cls: type[_B],
        source: Any,
        *,
        verify: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> _B:
        """Read one minibatch file holding this class; see :func:`sparkbatch.data.load`."""
        from sparkbatch.data.format import load
        from sparkbatch.errors import FormatError

        data = load(source, verify=verify, storage_options=storage_options)
        if not isinstance(data, cls):
            kind = type(data).__name__
            raise FormatError(f"{source}: holds a {kind}, not a {cls.__name__}; use {kind}.load")
        return data

    def __repr__(self) -> str:
        shown = [part for part in self._repr_parts() if part]
        if self.metadata:
            shown.append(f"metadata_keys={sorted(self.metadata)}")
        return f"{type(self).__name__}(num_examples={self.num_examples}, {', '.join(shown)})"
