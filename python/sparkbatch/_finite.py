"""Finding NaN and infinity in minibatches and flat buffers, one native pass per array.

Private, and shared by :mod:`sparkbatch.nn` (``Network.fit``, ``fit_batch``) and
:mod:`sparkbatch.train` (the Spark workers and the driver's average), so that single-machine and
distributed training refuse the same data with the same words.

NOTE [non-finite checks]: a minibatch's features, labels and masks are checked before it is
fitted (a NaN feature otherwise trains a network into giving one output for every input, with a
normal-looking score); a step's score and flat gradient buffer are checked before the updater
uses them, so the parameters stay those of before the step that diverged; on Spark each worker
checks its parameters after its round and the driver the workers' sum before averaging it. Each
check is one vectorised native pass (``_native.first_non_finite``) over one contiguous buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sparkbatch import _native
from sparkbatch.data import MultiDataSet
from sparkbatch.errors import DivergenceError, NonFiniteError

NON_FINITE_MODES = ("raise", "skip")


def check_mode(value: Any) -> str:
    """``value`` if it is a ``non_finite`` mode ("raise" or "skip"), else ValueError."""
    if value not in NON_FINITE_MODES:
        raise ValueError(f"non_finite must be 'raise' or 'skip', got {value!r}")
    return str(value)


def first_non_finite(array: Any) -> int:
    """The flat (C-order) index of the first NaN or infinity of ``array``, or -1.

    Integer and boolean arrays are finite by nature; float16, byte-swapped and non-contiguous
    arrays are copied first (no minibatch sparkbatch makes is any of these).
    """
    # A training step checks a few arrays: the usual ones go to the native check at once.
    if type(array) is np.ndarray and array.dtype.char in "fd" and array.flags.c_contiguous:
        try:
            return _native.first_non_finite(array)  # type: ignore[no-any-return]
        except TypeError:  # not in native byte order
            pass
    a = np.asarray(array)
    if a.dtype.kind != "f":
        return -1
    a = np.ascontiguousarray(a, dtype=np.float64 if a.dtype.itemsize > 4 else np.float32)
    return int(_native.first_non_finite(a))


def value_at(array: Any, index: int) -> str:
    """The value at flat ``index`` of ``array`` as text: ``nan``, ``inf`` or ``-inf``."""
    return repr(float(np.asarray(array).reshape(-1)[index]))


def _position(shape: tuple[int, ...], index: int) -> str:
    at = [int(i) for i in np.unravel_index(index, shape)] if shape else [0]
    if len(at) == 1:
        return f"example {at[0]}"
    if len(at) == 2:
        return f"example {at[0]}, column {at[1]}"
    return f"example {at[0]}, index {tuple(at[1:])}"


_DATASET_ARRAYS = ("features", "labels", "features mask", "labels mask")


def _named_arrays(batch: Any) -> list[tuple[str, Any]]:
    """The arrays of a MultiDataSet with the names a message gives them."""
    named = []
    for what in ("features", "labels", "features_masks", "labels_masks"):
        arrays = getattr(batch, what)
        name = what if what in ("features", "labels") else what[:-1]
        named += [(f"{name}[{i}]", a) for i, a in enumerate(arrays)]
    return named


def non_finite_in(batch: Any) -> str | None:
    """Where a DataSet's or MultiDataSet's first NaN or infinity is, in words, or None.

    >>> from sparkbatch.data import DataSet
    >>> x = np.zeros((4, 3), np.float32); x[2, 1] = np.nan
    >>> non_finite_in(DataSet(x, np.ones((4, 1), np.float32)))
    'features hold nan at example 2, column 1'
    >>> non_finite_in(DataSet(np.zeros((4, 3), np.float32))) is None
    True
    """
    if isinstance(batch, MultiDataSet):
        named = _named_arrays(batch)
    else:  # a DataSet, every step: no list of names built unless one is needed
        arrays = (batch.features, batch.labels, batch.features_mask, batch.labels_mask)
        for array in arrays:
            if array is not None and first_non_finite(array) >= 0:
                break
        else:
            return None
        named = list(zip(_DATASET_ARRAYS, arrays, strict=True))
    for name, array in named:
        if array is None:
            continue
        index = first_non_finite(array)
        if index >= 0:
            verb = "holds" if "mask" in name else "hold"
            where = _position(np.shape(array), index)
            return f"{name} {verb} {value_at(array, index)} at {where}"
    return None


def non_finite_data(where: str, detail: str, option: str) -> NonFiniteError:
    """The error for a minibatch with non-finite values: ``where`` names the minibatch,
    ``detail`` the value (:func:`non_finite_in`), ``option`` how the caller asks for such
    minibatches to be skipped instead. The parts are kept as attributes."""
    error = NonFiniteError(
        f"{where}: {detail}; fix the data, or skip such minibatches with {option}"
    )
    error.detail, error.option = detail, option  # type: ignore[attr-defined]
    return error


_KEPT_STEP = "the model keeps its parameters of before this step"


def diverged(where: str, detail: str, kept: str = _KEPT_STEP) -> DivergenceError:
    """The error for a step (or round) whose result is not finite; ``kept`` says which
    parameters the model keeps. The parts are kept as attributes."""
    error = DivergenceError(
        f"{where}: training diverged: {detail}; {kept}: lower the learning rate (or check the data)"
    )
    error.detail = detail  # type: ignore[attr-defined]
    return error


def with_context(
    error: Exception, where: str, *, option: str | None = None, kept: str | None = None
) -> Exception:
    """``error`` (from :func:`non_finite_data` or :func:`diverged`) again, naming ``where``
    (e.g. "epoch 1, minibatch 4, iteration 9") instead of the place it was raised, and the
    caller's skip ``option`` or which parameters the model ``kept``."""
    detail = getattr(error, "detail", None)
    if detail is None:
        return type(error)(f"{where}: {error}")
    if isinstance(error, NonFiniteError):
        return non_finite_data(where, detail, option or error.option)  # type: ignore[attr-defined]
    return diverged(where, detail, kept or _KEPT_STEP)


def check_params(
    params: Any,
    where: str,
    what: str,
    kept: str,
    describe: Callable[[int], str] | None = None,
) -> None:
    """DivergenceError (:func:`diverged`) unless every value of ``params`` is finite (an update,
    or a sum of workers' parameters, can overflow): ``where`` names the place, ``what`` the
    values with their verb ("the parameters hold"), ``describe`` a flat index in words
    (default "index N"), ``kept`` which parameters the model keeps."""
    bad = first_non_finite(params)
    if bad >= 0:
        at = describe(bad) if describe is not None else f"index {bad}"
        raise diverged(where, f"{what} {value_at(params, bad)} at {at}", kept)
