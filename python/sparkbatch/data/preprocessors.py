"""Preprocessors: functions applied to every minibatch, and the fitted normalizers.

A preprocessor is any picklable callable that takes a :class:`~sparkbatch.data.DataSet` (or a
:class:`~sparkbatch.data.MultiDataSet`) and returns a new one: DL4J's ``DataSetPreProcessor``
(:class:`DataSetPreprocessor` spells out the protocol). Loaders, iterators and Spark training take
one as ``preprocessor=`` and call it on each minibatch, on the executors for Spark, so it must
pickle: a module-level function or a small class holding plain settings.

:class:`Standardize` and :class:`MinMaxScale` are DL4J's ``NormalizerStandardize`` and
``NormalizerMinMaxScaler``: *fitted* on data first (one pass, on one machine or as one Spark job),
then applied to every minibatch in one native pass.

NOTE [normalizer statistics]: statistics are per column: features ``[n, f]`` per feature,
sequences ``[n, f, t]`` per feature over every example and every *unmasked* time step (the
features mask, or the labels mask for labels), images ``[n, c, h, w]`` per channel. They are the
count, mean, population standard deviation (divided by the count, as DL4J), minimum and maximum,
accumulated in float64 (per block two passes, blocks merged with Chan et al.'s formula, so they
match numpy's to rounding). Partial statistics of batches, files or Spark partitions merge
exactly, so a fit on an iterator, on the concatenated data or on an RDD gives the same values.

NOTE [zero spread]: a constant column would divide by zero. As DL4J (``DistributionStats``,
``MinMaxStats``), the divisor is raised to at least ``EPSILON`` = 1e-5 (``Nd4j.EPS_THRESHOLD``):
a constant column standardises to 0 and min-max scales to the target minimum; no NaN or infinity
comes out of a fitted normalizer. Fitting on data holding NaN or infinity is an error naming the
minibatch (its index in the iterable, or its partition and index there on Spark) and the column.

NOTE [masked steps]: after normalising (and after reverting), the masked steps of a sequence are
set to 0, as DL4J's ``DataSetUtil.setMaskedValuesToZero`` does: padding stays zero instead of
becoming ``-mean / std``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from sparkbatch import _native
from sparkbatch._jobs import JobDescription
from sparkbatch.data.dataset import DataSet
from sparkbatch.data.format import load_tensors, save_tensors
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.errors import FormatError

__all__ = [
    "EPSILON",
    "ColumnStats",
    "DataSetPreprocessor",
    "MinMaxScale",
    "Standardize",
    "from_file_entries",
    "load_preprocessor",
    "to_file_entries",
]

#: Smallest standard deviation or range divided by (DL4J's ``Nd4j.EPS_THRESHOLD``):
#: NOTE [zero spread].
EPSILON = 1e-5
#: Prefix of a preprocessor's tensors and metadata in a file (its own or a model's).
PREFIX = "preprocessor"
_FILE_KIND = "Preprocessor"
_MASK_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_), np.dtype(np.float32), np.dtype(np.float64))


@runtime_checkable
class DataSetPreprocessor(Protocol):
    """What ``preprocessor=`` arguments take (DL4J's ``DataSetPreProcessor``).

    Any callable of this signature qualifies (a function, a class with ``__call__``); it must
    return a new minibatch rather than change its argument (minibatches may be read-only memory
    maps), and it must pickle, since Spark runs it on the executors. :class:`Standardize` and
    :class:`MinMaxScale` are preprocessors.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet
    >>> def double(ds):
    ...     return DataSet(ds.features * 2, ds.labels)
    >>> isinstance(double, DataSetPreprocessor)
    True
    >>> double(DataSet(np.ones((1, 2), np.float32))).features.tolist()
    [[2.0, 2.0]]
    """

    def __call__(self, ds: DataSet | MultiDataSet) -> DataSet | MultiDataSet: ...


@dataclass(frozen=True, eq=False)
class ColumnStats:
    """Fitted statistics of one array, per column (NOTE [normalizer statistics]): ``count``
    values per column, their ``mean``, population ``std``, ``min`` and ``max`` (float64)."""

    count: int
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @property
    def columns(self) -> int:
        return int(self.mean.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ColumnStats):
            return NotImplemented
        return self.count == other.count and all(
            np.array_equal(getattr(self, k), getattr(other, k))
            for k in ("mean", "std", "min", "max")
        )

    __hash__ = None  # type: ignore[assignment]


class _Moments(NamedTuple):
    """Mergeable partial statistics of one array's columns (float64 arrays)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray


def _merge(a: _Moments | None, b: _Moments | None, what: str) -> _Moments | None:
    """Chan et al.'s merge of two partial statistics (None: nothing seen yet); ``what`` names
    ``b`` in the error of a column count that differs from ``a``'s."""
    if a is None or a.count == 0:
        return b if b is not None else a
    if b is None or b.count == 0:
        return a
    if a.mean.shape != b.mean.shape:
        raise ValueError(
            f"{what} have {b.mean.shape[0]} columns but the data before have "
            f"{a.mean.shape[0]}: every minibatch fitted must have the same columns"
        )
    n = a.count + b.count
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / n)
    m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / n)
    return _Moments(n, mean, m2, np.minimum(a.min, b.min), np.maximum(a.max, b.max))


def _float_array(array: Any, what: str) -> np.ndarray:
    """``array`` as a C-contiguous float32 or float64 array with ``[n, columns, ...]``."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise TypeError(
            f"{what} must be a floating-point array (float32 or float64), got dtype {array.dtype}"
        )
    if array.ndim < 2:
        raise ValueError(
            f"{what} must be [n, f], [n, f, t] or [n, c, h, w], got shape {array.shape}"
        )
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)  # float16 and the like
    return np.ascontiguousarray(array)


def _mask_array(mask: Any, array: np.ndarray, what: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if array.ndim != 3:
        raise ValueError(
            f"{what}: a mask applies only to sequences [n, f, t], got shape {array.shape}"
        )
    if mask.dtype not in _MASK_DTYPES:
        mask = mask != 0
    return np.ascontiguousarray(mask)


def _moments(array: Any, mask: Any, what: str) -> _Moments:
    x = _float_array(array, what)
    try:
        return _Moments(*_native.normalize_moments(x, _mask_array(mask, x, what)))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def _dataset_moments(ds: Any, fit_labels: bool, where: str) -> tuple[_Moments, _Moments | None]:
    """Partial statistics of one DataSet's features (and labels)."""
    if isinstance(ds, MultiDataSet):
        raise TypeError(
            f"{where}: Standardize and MinMaxScale fit and apply to DataSets, got a MultiDataSet "
            "(per-input normalizers of MultiDataSets are not built yet)"
        )
    if not isinstance(ds, DataSet):
        raise TypeError(f"{where}: expected a DataSet, got {type(ds).__name__}")
    features = _moments(ds.features, ds.features_mask, f"{where}: features")
    if not fit_labels:
        return features, None
    if ds.labels is None:
        raise ValueError(f"{where}: fit_labels=True but the DataSet has no labels")
    return features, _moments(ds.labels, ds.labels_mask, f"{where}: labels")


Partial = tuple[_Moments | None, _Moments | None] | None


def _merge_partials(a: Partial, b: Partial) -> Partial:
    """Merge two partitions' partial statistics (shipped to Spark by ``treeReduce``)."""
    if a is None:
        return b
    if b is None:
        return a
    return _merge(a[0], b[0], "features"), _merge(a[1], b[1], "labels")


def _check_finite(moments: _Moments | None, what: str) -> None:
    """A ValueError naming ``what`` (a minibatch's features or labels) and the column where its
    values hold NaN or infinity (their mean is then not finite): NOTE [zero spread]."""
    if moments is None or moments.count == 0:
        return
    bad = np.flatnonzero(~np.isfinite(moments.mean))
    if bad.size:
        raise ValueError(f"{what}: column {int(bad[0])} holds NaN or infinity")


def _accumulate(datasets: Iterable[Any], fit_labels: bool, where: str) -> Partial:
    """The merged statistics of ``datasets``; errors name the minibatch (``where``, then its
    index)."""
    total: Partial = None
    for i, ds in enumerate(datasets):
        at = f"{where}minibatch {i}"
        features, labels = _dataset_moments(ds, fit_labels, at)
        _check_finite(features, f"{at}: features")
        _check_finite(labels, f"{at}: labels")
        if total is None:
            total = (features, labels)
        else:
            total = (
                _merge(total[0], features, f"{at}: features"),
                _merge(total[1], labels, f"{at}: labels"),
            )
    return total


class _PartitionMoments:
    """For ``mapPartitionsWithIndex``: one partition's merged statistics (or None when empty);
    holds only the setting, so it pickles small."""

    def __init__(self, fit_labels: bool) -> None:
        self.fit_labels = fit_labels

    def __call__(self, index: int, datasets: Iterator[Any]) -> Iterator[Partial]:
        yield _accumulate(datasets, self.fit_labels, f"partition {index}, ")


def _stats(moments: _Moments | None, what: str, name: str) -> ColumnStats:
    if moments is None or moments.count == 0:
        raise ValueError(f"cannot fit {name}: no {what} values (no examples, or all masked)")
    std = np.sqrt(moments.m2 / moments.count)
    for label, values in (
        ("mean", moments.mean),
        ("std", std),
        ("min", moments.min),
        ("max", moments.max),
    ):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"cannot fit {name}: {what} column {int(bad[0])} holds NaN or infinity "
                f"(its {label} is {values[bad[0]]})"
            )
    return ColumnStats(int(moments.count), moments.mean, std, moments.min, moments.max)


class _Normalizer:
    """What :class:`Standardize` and :class:`MinMaxScale` share: fitting, applying, files."""

    def __init__(self, fit_labels: bool = False) -> None:
        if not isinstance(fit_labels, (bool, np.bool_)):
            raise TypeError(f"fit_labels must be a bool, got {fit_labels!r}")
        self.fit_labels = bool(fit_labels)
        #: Statistics of the features (None before :meth:`fit`).
        self.feature_stats: ColumnStats | None = None
        #: Statistics of the labels (None unless fitted with ``fit_labels=True``).
        self.label_stats: ColumnStats | None = None

    # -- the map, per subclass ----------------------------------------------------------------

    def _forward(self, stats: ColumnStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(center, scale, offset) of ``y = (x - center) * scale + offset``."""
        raise NotImplementedError

    def _backward(self, stats: ColumnStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON-able)."""
        return {"fit_labels": self.fit_labels}

    # -- fitting ------------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.feature_stats is not None

    def fit(self, data: Any) -> Any:
        """Fit the statistics on ``data``; returns this normalizer.

        ``data`` is a DataSet, an iterable of DataSets read once (a list, a
        :class:`~sparkbatch.data.FileDataSetIterator`), or a Spark RDD of DataSets, fitted in
        one distributed pass: each partition's statistics are computed on its executor and merged
        with ``treeReduce`` (nothing but the statistics reaches the driver).
        """
        name = type(self).__name__
        if isinstance(data, (DataSet, MultiDataSet)):
            total = _accumulate([data], self.fit_labels, "")
        elif hasattr(data, "mapPartitions"):
            total = self._fit_rdd(data)
        else:
            total = _accumulate(data, self.fit_labels, "")
        if total is None:
            raise ValueError(f"cannot fit {name}: the data holds no DataSet")
        self.feature_stats = _stats(total[0], "features", name)
        self.label_stats = _stats(total[1], "labels", name) if self.fit_labels else None
        self.__dict__.pop("_cached_maps", None)
        return self

    def _fit_rdd(self, rdd: Any) -> Partial:
        if rdd.getNumPartitions() == 0:
            return None
        with JobDescription(rdd.context, f"sparkbatch: fitting {type(self).__name__}"):
            partials = rdd.mapPartitionsWithIndex(_PartitionMoments(self.fit_labels))
            return partials.treeReduce(_merge_partials, depth=2)

    def _require(self) -> ColumnStats:
        if self.feature_stats is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(data) first")
        return self.feature_stats

    def _require_labels(self) -> ColumnStats:
        self._require()
        if self.label_stats is None:
            raise RuntimeError(
                f"{type(self).__name__} was fitted without labels: create it with "
                "fit_labels=True to transform or revert labels"
            )
        return self.label_stats

    # -- applying -----------------------------------------------------------------------------

    def _maps(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        maps = self.__dict__.get("_cached_maps")
        if maps is None:
            maps = {}
            for key, stats in (("features", self.feature_stats), ("labels", self.label_stats)):
                if stats is not None:
                    maps[key] = self._forward(stats)
                    maps[key + "-"] = self._backward(stats)
            self.__dict__["_cached_maps"] = maps
        return maps

    def _apply(self, array: Any, mask: Any, key: str, stats: ColumnStats, what: str) -> np.ndarray:
        x = _float_array(array, what)
        if x.shape[1] != stats.columns:
            raise ValueError(
                f"{what} have {x.shape[1]} columns (shape {x.shape}) but "
                f"{type(self).__name__} was fitted on {stats.columns}"
            )
        m = _mask_array(mask, x, what)
        out = np.empty_like(x)
        try:
            _native.normalize_affine(x, m, *self._maps()[key], out)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        return out

    def transform(self, features: Any, mask: Any = None) -> np.ndarray:
        """Normalised copy of a features array (float32 stays float32, float64 stays float64);
        ``mask`` ``[n, t]`` of a sequence zeroes its padded steps (NOTE [masked steps])."""
        return self._apply(features, mask, "features", self._require(), "features")

    def revert(self, features: Any, mask: Any = None) -> np.ndarray:
        """The inverse of :meth:`transform` (DL4J's ``revertFeatures``)."""
        return self._apply(features, mask, "features-", self._require(), "features")

    def transform_labels(self, labels: Any, mask: Any = None) -> np.ndarray:
        """Normalised copy of a labels array (needs ``fit_labels=True``)."""
        return self._apply(labels, mask, "labels", self._require_labels(), "labels")

    def revert_labels(self, labels: Any, mask: Any = None) -> np.ndarray:
        """Regression outputs (or labels) back on the labels' original scale (DL4J's
        ``revertLabels``)."""
        return self._apply(labels, mask, "labels-", self._require_labels(), "labels")

    def __call__(self, ds: DataSet | MultiDataSet) -> DataSet:
        """A new DataSet with normalised features (and labels with ``fit_labels``); masks and
        metadata are kept. A MultiDataSet is a TypeError (not built yet)."""
        if not isinstance(ds, DataSet):
            raise TypeError(
                f"{type(self).__name__} applies to DataSets, got {type(ds).__name__} (per-input "
                "normalizers of MultiDataSets are not built yet)"
            )
        features = self.transform(ds.features, ds.features_mask)
        labels = ds.labels
        if self.fit_labels and labels is not None:
            labels = self.transform_labels(labels, ds.labels_mask)
        return DataSet._unchecked(features, labels, ds.features_mask, ds.labels_mask, ds.metadata)

    # -- state, files, pickling ---------------------------------------------------------------

    def state(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        """What a file stores: string metadata (class, configuration, counts) and the
        statistics as named float64 arrays (``features.mean``, ``labels.max``, ...)."""
        stats = self._require()
        config = self.config()
        tensors: dict[str, np.ndarray] = {}
        for key, s in (("features", stats), ("labels", self.label_stats)):
            if s is None:
                continue
            config[f"{key}.count"] = s.count
            for field in ("mean", "std", "min", "max"):
                tensors[f"{key}.{field}"] = getattr(s, field)
        return {"class": type(self).__name__, "config": json.dumps(config, sort_keys=True)}, tensors

    def save(
        self,
        target: str | os.PathLike[str] | IO[bytes],
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the fitted statistics as a small safetensors file, atomically
        (:func:`load_preprocessor` reads it back)."""
        metadata, tensors = to_file_entries(self)
        metadata["kind"] = _FILE_KIND
        save_tensors(tensors, target, metadata, storage_options=storage_options)

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Any:
        """Read a normalizer of this class from its own file or a model's."""
        result = load_preprocessor(source, storage_options=storage_options)
        if not isinstance(result, cls):
            raise FormatError(f"{source}: holds a {type(result).__name__}, not a {cls.__name__}")
        return result

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cached_maps"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Normalizer)
        return (
            self.config() == other.config()
            and self.feature_stats == other.feature_stats
            and self.label_stats == other.label_stats
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        s = self.feature_stats
        state = "not fitted" if s is None else f"fitted on {s.count} values x {s.columns} columns"
        return f"{type(self).__name__}({args}) [{state}]"


class Standardize(_Normalizer):
    """Zero mean and unit variance per column: DL4J's ``NormalizerStandardize``.

    ``y = (x - mean) / std`` with the population standard deviation (NOTE [normalizer
    statistics]); a constant column gives 0 (NOTE [zero spread]); masked steps give 0 (NOTE
    [masked steps]). With ``fit_labels=True`` (regression) the labels are standardised too and
    :meth:`revert_labels` maps predictions back.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet
    >>> ds = DataSet(np.array([[1, 10], [3, 10]], np.float32), np.zeros((2, 1), np.float32))
    >>> norm = Standardize().fit(ds)
    >>> norm.feature_stats.mean.tolist(), norm.feature_stats.std.tolist()
    ([2.0, 10.0], [1.0, 0.0])
    >>> norm(ds).features.tolist()
    [[-1.0, 0.0], [1.0, 0.0]]
    >>> norm.revert(norm(ds).features).tolist()
    [[1.0, 10.0], [3.0, 10.0]]
    """

    def _forward(self, stats: ColumnStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        std = np.maximum(stats.std, EPSILON)
        return stats.mean, 1.0 / std, np.zeros_like(std)

    def _backward(self, stats: ColumnStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.zeros_like(stats.mean), np.maximum(stats.std, EPSILON), stats.mean

    @property
    def mean(self) -> np.ndarray:
        """The features' mean per column."""
        return self._require().mean

    @property
    def std(self) -> np.ndarray:
        """The features' population standard deviation per column (before NOTE [zero
        spread])."""
        return self._require().std


class MinMaxScale(_Normalizer):
    """Each column scaled to ``[min, max]`` (default ``[0, 1]``): DL4J's
    ``NormalizerMinMaxScaler``.

    ``y = (x - data_min) / (data_max - data_min) * (max - min) + min``; a constant column gives
    ``min`` (NOTE [zero spread]); masked steps give 0 (NOTE [masked steps]). Values outside the
    fitted range map outside ``[min, max]``, as in DL4J.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet
    >>> ds = DataSet(np.array([[0, 5], [4, 5], [2, 5]], np.float32))
    >>> scale = MinMaxScale(-1, 1).fit(ds)
    >>> scale(ds).features.tolist()
    [[-1.0, -1.0], [1.0, -1.0], [0.0, -1.0]]
    """

    def __init__(self, min: float = 0.0, max: float = 1.0, fit_labels: bool = False) -> None:  # noqa: A002
        super().__init__(fit_labels)
        lo, hi = float(min), float(max)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"MinMaxScale needs finite min < max, got min={min!r}, max={max!r}")
        self.min, self.max = lo, hi

    def config(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max, "fit_labels": self.fit_labels}

    def _range(self, stats: ColumnStats) -> np.ndarray:
        return np.maximum(stats.max - stats.min, EPSILON)

    def _forward(self, stats: ColumnStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        span = self.max - self.min
        return stats.min, span / self._range(stats), np.full_like(stats.min, self.min)

    def _backward(self, stats: ColumnStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        span = self.max - self.min
        return np.full_like(stats.min, self.min), self._range(stats) / span, stats.min

    @property
    def data_min(self) -> np.ndarray:
        """The features' minimum per column."""
        return self._require().min

    @property
    def data_max(self) -> np.ndarray:
        """The features' maximum per column."""
        return self._require().max


#: The normalizers a file can name (and so restore): no other class is ever instantiated from a
#: file.
_REGISTRY: dict[str, type[_Normalizer]] = {"Standardize": Standardize, "MinMaxScale": MinMaxScale}


def to_file_entries(preprocessor: Any) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Metadata and tensors, names prefixed ``preprocessor.``, that store a fitted
    :class:`Standardize` or :class:`MinMaxScale` in a file (its own, or a model's:
    ``Network.save(..., preprocessor=)``). Any other preprocessor is a TypeError: only these
    classes can be restored from a file."""
    if type(preprocessor) not in _REGISTRY.values():
        raise TypeError(
            f"only Standardize and MinMaxScale can be saved with a model, got "
            f"{type(preprocessor).__name__}: save other preprocessors with your own code"
        )
    metadata, tensors = preprocessor.state()
    return (
        {PREFIX: metadata["class"], f"{PREFIX}.config": metadata["config"]},
        {f"{PREFIX}.{name}": array for name, array in tensors.items()},
    )


def from_file_entries(
    metadata: Mapping[str, str], arrays: Mapping[str, np.ndarray], source: str
) -> Standardize | MinMaxScale | None:
    """The preprocessor a file's metadata and tensors hold (:func:`to_file_entries`), or None
    when it holds none; a FormatError names ``source`` when they are inconsistent."""
    name = metadata.get(PREFIX)
    if name is None:
        return None
    cls = _REGISTRY.get(name)
    if cls is None:
        raise FormatError(
            f"{source}: unknown preprocessor {name!r} (expected one of {sorted(_REGISTRY)})"
        )
    try:
        config = json.loads(metadata.get(f"{PREFIX}.config", "{}"))
        counts = {k: config.pop(f"{k}.count", None) for k in ("features", "labels")}
        result = cls(**config)
    except (ValueError, TypeError) as e:
        raise FormatError(f"{source}: bad {name} configuration: {e}") from None
    for key in ("features", "labels"):
        fields = {f: arrays.get(f"{PREFIX}.{key}.{f}") for f in ("mean", "std", "min", "max")}
        if all(v is None for v in fields.values()) and key == "labels":
            continue
        missing = [f"{PREFIX}.{key}.{f}" for f, v in fields.items() if v is None]
        if missing or not isinstance(counts[key], int):
            raise FormatError(f"{source}: {name} is missing {missing or [key + '.count']}")
        shapes = {np.shape(v) for v in fields.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise FormatError(f"{source}: {name} {key} statistics have shapes {sorted(shapes)}")
        stats = ColumnStats(
            counts[key], *(np.array(fields[f], np.float64) for f in ("mean", "std", "min", "max"))
        )
        if key == "features":
            result.feature_stats = stats
        else:
            result.label_stats = stats
    if result.fit_labels != (result.label_stats is not None):
        raise FormatError(
            f"{source}: {name} fit_labels={result.fit_labels} but label "
            f"statistics are {'present' if result.label_stats else 'missing'}"
        )
    return result


def load_preprocessor(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Standardize | MinMaxScale:
    """Read a fitted normalizer from its own file (``Standardize.save``) or from a model file
    saved with one (``Network.save(path, preprocessor=...)``).

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> from sparkbatch.data import DataSet
    >>> norm = Standardize().fit(DataSet(np.arange(6, dtype=np.float32).reshape(3, 2)))
    >>> path = os.path.join(tempfile.mkdtemp(), "norm.safetensors")
    >>> norm.save(path)
    >>> load_preprocessor(path) == norm
    True
    """
    arrays, metadata = load_tensors(source, storage_options=storage_options)
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)
    result = from_file_entries(metadata, arrays, name)
    if result is None:
        raise FormatError(f"{name}: holds no preprocessor (kind={metadata.get('kind')!r})")
    return result
