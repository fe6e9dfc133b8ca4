"""Classification and regression evaluation, after DL4J's ``org.nd4j.evaluation`` classes.

An evaluation object accumulates *counts* batch by batch (:meth:`Evaluation.eval`) and derives
every figure from them on demand, so two evaluations of disjoint data merge exactly
(:meth:`Evaluation.merge`): distributed evaluation on Spark evaluates each partition, then merges
the counts; it never averages figures. Objects hold only plain attributes (ints, strings, numpy
arrays), so they pickle cheaply between executors and the driver.

Both classes accept a batch as ``[n, k]`` arrays or as time series ``[n, k, t]`` (DL4J's layout:
examples, features, time steps) with an optional mask ``[n, t]``; masked-out steps are dropped and
the remaining steps count as independent examples.

NOTE (macro averages): :meth:`Evaluation.precision`, :meth:`Evaluation.recall` and
:meth:`Evaluation.f1` without a class average the per-class figures over the classes that occur in
the labels *or* the predictions seen so far (classes never seen on either side are left out). A
class with no predictions has precision 0, a class with no examples has recall 0, and F1 is 0 when
precision and recall are both 0. This is exactly scikit-learn's default
``average="macro", zero_division=0``; DL4J instead leaves a class out of the precision average when
it has no predictions, which rewards a model for never predicting a hard class.

Examples
--------
>>> import numpy as np
>>> ev = Evaluation(num_classes=2)
>>> ev.eval(np.array([0, 1, 1, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]))
>>> ev.accuracy()
0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Evaluation", "RegressionEvaluation"]


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """``num / den`` element-wise, with ``empty`` where ``den`` is 0 (and no numpy warning)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _flatten(
    labels: np.ndarray, predictions: np.ndarray, mask: Any, label_is_index: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Bring a batch to rows: ``[n, k]`` stays, ``[n, k, t]`` becomes ``[n * t, k]``.

    Returns ``(labels, predictions, mask)`` with the mask (if any) as a boolean array over the
    rows (shape ``[rows]``) or over the rows and columns (shape ``[rows, k]``).
    """
    if predictions.ndim not in (2, 3):
        raise ValueError(
            f"predictions must have shape [n, k] or [n, k, t], got shape {predictions.shape}"
        )
    expected = predictions.shape[:1] + predictions.shape[2:] if label_is_index else None
    if label_is_index and labels.ndim == predictions.ndim - 1:
        if labels.shape != expected:
            raise ValueError(
                f"labels given as class indices must have shape {expected} to match predictions "
                f"of shape {predictions.shape}, got shape {labels.shape}"
            )
    elif labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions must have the same shape, got labels {labels.shape} and "
            f"predictions {predictions.shape}"
        )
    n, k = predictions.shape[:2]
    if mask is not None:
        mask = np.asarray(mask)
        if predictions.ndim == 2:
            allowed = [(n,)] if label_is_index else [(n,), (n, k)]
        else:
            steps = (n, predictions.shape[2])
            allowed = [steps] if label_is_index else [steps, predictions.shape]
        if mask.shape not in allowed:
            raise ValueError(
                f"mask must have shape {' or '.join(map(str, allowed))} for predictions of shape "
                f"{predictions.shape}, got shape {mask.shape}"
            )
        mask = mask != 0
    if predictions.ndim == 3:
        predictions = np.moveaxis(predictions, 1, 2).reshape(-1, k)
        labels = (
            labels.reshape(-1) if labels.ndim == 2 else np.moveaxis(labels, 1, 2).reshape(-1, k)
        )
        if mask is not None:
            mask = mask.reshape(-1) if mask.ndim == 2 else np.moveaxis(mask, 1, 2).reshape(-1, k)
    return labels, predictions, mask


def _check_same_names(what: str, ours: Sequence[str] | None, theirs: Sequence[str] | None) -> None:
    """Evaluations of differently named classes or columns must not be merged."""
    if ours is not None and theirs is not None and list(ours) != list(theirs):
        raise ValueError(f"cannot merge {what} names {list(theirs)} into {list(ours)}")


class Evaluation:
    """Accumulating evaluation of a classifier: confusion matrix, accuracy, precision, recall.

    Parameters
    ----------
    num_classes : int, optional
        Number of classes ``C``. Taken from ``labels`` when given, otherwise from the first batch.
    labels : sequence of str, optional
        Class names, used by :meth:`stats`; their count fixes ``num_classes``.
    top_n : int, default 1
        An example is top-N correct when its true class is among the ``top_n`` highest scores.
        Ties are broken towards the lower class index, as ``np.argmax`` does, so with
        ``top_n=1`` top-N accuracy equals accuracy.

    Attributes
    ----------
    num_classes : int or None
        ``None`` until the first batch when not given.
    top_n_correct : int
        Examples whose true class was among the ``top_n`` highest scores.

    Notes
    -----
    See the module's NOTE on macro averages. Figures over no examples are ``nan``.

    Examples
    --------
    >>> import numpy as np
    >>> ev = Evaluation(labels=["cat", "dog", "eel"], top_n=2)
    >>> y = np.eye(3)[[0, 1, 2, 2]]
    >>> p = np.array([[.8, .1, .1], [.5, .4, .1], [.1, .2, .7], [.3, .6, .1]])
    >>> ev.eval(y, p)
    >>> ev.accuracy(), ev.top_n_accuracy(), ev.num_examples
    (0.5, 0.75, 4)
    >>> ev.confusion_matrix()
    array([[1, 0, 0],
           [1, 0, 0],
           [0, 1, 1]])
    >>> round(ev.precision(), 4), round(ev.recall(cls=2), 4)
    (0.5, 0.5)
    """

    def __init__(
        self,
        num_classes: int | None = None,
        labels: Sequence[str] | None = None,
        top_n: int = 1,
    ) -> None:
        if labels is not None:
            labels = [str(name) for name in labels]
            if num_classes is not None and num_classes != len(labels):
                raise ValueError(
                    f"num_classes={num_classes} does not match the {len(labels)} names in labels"
                )
            num_classes = len(labels)
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if int(top_n) != top_n or top_n < 1:
            raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
        self.num_classes: int | None = None if num_classes is None else int(num_classes)
        self.label_names: list[str] | None = labels
        self.top_n = int(top_n)
        self.top_n_correct = 0
        self._confusion: np.ndarray | None = None
        if self.num_classes is not None:
            self._confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    # -- accumulation -------------------------------------------------------------------------

    def eval(self, labels: Any, predictions: Any, mask: Any = None) -> None:
        """Add one batch.

        Parameters
        ----------
        labels : array_like
            One-hot (or any scores; the arg-max is the class) ``[n, C]`` or ``[n, C, t]``, or
            integer class indices ``[n]`` or ``[n, t]``.
        predictions : array_like
            Probabilities or scores ``[n, C]`` or ``[n, C, t]``; the arg-max is the prediction.
        mask : array_like, optional
            ``[n]`` (per example) or ``[n, t]`` (per time step); zero drops the example or step.

        Raises
        ------
        ValueError
            When shapes disagree, ``C`` differs from ``num_classes`` or an index is out of range.
        """
        predictions = np.asarray(predictions)
        labels = np.asarray(labels)
        is_index = labels.ndim == predictions.ndim - 1
        if is_index and not (
            np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)
        ):
            raise ValueError(
                f"labels of shape {labels.shape} look like class indices but have dtype "
                f"{labels.dtype}; pass integers, or one-hot labels shaped like predictions "
                f"{predictions.shape}"
            )
        labels, predictions, mask = _flatten(labels, predictions, mask, label_is_index=True)
        num_classes = predictions.shape[1]
        if self.num_classes is None:
            self.num_classes = num_classes
            self._confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        elif num_classes != self.num_classes:
            raise ValueError(
                f"predictions have {num_classes} classes (shape {predictions.shape}) but this "
                f"evaluation has num_classes={self.num_classes}"
            )
        if mask is not None:
            labels, predictions = labels[mask], predictions[mask]
        if labels.ndim == 1:
            actual = labels.astype(np.int64)
            if actual.size and (actual.min() < 0 or actual.max() >= num_classes):
                raise ValueError(
                    f"labels hold class indices in [{actual.min()}, {actual.max()}], outside "
                    f"[0, {num_classes - 1}] for predictions of shape {predictions.shape}"
                )
        else:
            actual = np.argmax(labels, axis=1)
        predicted = np.argmax(predictions, axis=1)
        assert self._confusion is not None
        counts = np.bincount(actual * num_classes + predicted, minlength=num_classes**2)
        self._confusion += counts.reshape(num_classes, num_classes)
        if self.top_n == 1:
            self.top_n_correct += int(np.count_nonzero(actual == predicted))
        else:
            # Rank of the true class under a stable descending sort: the classes scoring higher,
            # plus the equal-scoring classes with a lower index.
            true_score = predictions[np.arange(actual.size), actual][:, None]
            lower = np.arange(num_classes)[None, :] < actual[:, None]
            rank = np.count_nonzero(
                (predictions > true_score) | ((predictions == true_score) & lower), axis=1
            )
            self.top_n_correct += int(np.count_nonzero(rank < self.top_n))

    def merge(self, other: Evaluation) -> Evaluation:
        """Add the counts of ``other`` (evaluated on other data) to this one; return ``self``.

        Raises
        ------
        ValueError
            When the class counts, ``top_n`` or class names differ.

        Examples
        --------
        >>> import numpy as np
        >>> a, b = Evaluation(), Evaluation()
        >>> a.eval(np.array([0, 1]), np.array([[.9, .1], [.8, .2]]))
        >>> b.eval(np.array([1]), np.array([[.1, .9]]))
        >>> a.merge(b).num_examples, round(a.accuracy(), 4)
        (3, 0.6667)
        """
        if not isinstance(other, Evaluation):
            raise TypeError(f"can only merge an Evaluation, got {type(other).__name__}")
        if other.top_n != self.top_n:
            raise ValueError(f"cannot merge top_n={other.top_n} into top_n={self.top_n}")
        _check_same_names("class", self.label_names, other.label_names)
        if other.num_classes is None:
            return self
        if self.num_classes is None:
            self.num_classes = other.num_classes
            self._confusion = np.zeros_like(other._confusion)
        elif other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge an evaluation of {other.num_classes} classes into one of "
                f"{self.num_classes} classes"
            )
        assert self._confusion is not None and other._confusion is not None
        self._confusion += other._confusion
        self.top_n_correct += other.top_n_correct
        if self.label_names is None:
            self.label_names = other.label_names
        return self

    # -- figures ------------------------------------------------------------------------------

    @property
    def num_examples(self) -> int:
        """Examples (or unmasked time steps) evaluated so far."""
        return 0 if self._confusion is None else int(self._confusion.sum())

    def confusion_matrix(self) -> np.ndarray:
        """A copy of the int64 ``[C, C]`` confusion matrix; rows actual, columns predicted."""
        if self._confusion is None:
            raise ValueError("no classes yet: pass num_classes or evaluate a batch first")
        return self._confusion.copy()

    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cm = self.confusion_matrix()
        tp = np.diag(cm).astype(np.float64)
        return tp, cm.sum(axis=0).astype(np.float64), cm.sum(axis=1).astype(np.float64)

    def _per_class(self, cls: int | None, values: np.ndarray) -> float:
        assert self.num_classes is not None
        if cls is not None:
            if not 0 <= cls < self.num_classes:
                raise ValueError(f"cls must be in [0, {self.num_classes - 1}], got {cls}")
            return float(values[cls])
        _, predicted, actual = self._counts()
        present = (predicted + actual) > 0
        return float(values[present].mean()) if present.any() else float("nan")

    def accuracy(self) -> float:
        """Fraction of examples whose arg-max prediction is the true class (``nan`` if none)."""
        if self.num_examples == 0:
            return float("nan")
        assert self._confusion is not None
        return float(np.trace(self._confusion) / self.num_examples)

    def top_n_accuracy(self) -> float:
        """Fraction of examples whose true class is among the ``top_n`` highest scores."""
        n = self.num_examples
        return float("nan") if n == 0 else self.top_n_correct / n

    def precision(self, cls: int | None = None) -> float:
        """Precision TP / (TP + FP) of class ``cls``, or its macro average when ``cls`` is None.

        A class never predicted has precision 0; the average is over classes seen in the labels
        or the predictions.
        """
        tp, predicted, _ = self._counts()
        return self._per_class(cls, _ratio(tp, predicted, 0.0))

    def recall(self, cls: int | None = None) -> float:
        """Recall TP / (TP + FN) of class ``cls``, or its macro average when ``cls`` is None."""
        tp, _, actual = self._counts()
        return self._per_class(cls, _ratio(tp, actual, 0.0))

    def f1(self, cls: int | None = None) -> float:
        """F1 = 2PR / (P + R) of class ``cls`` (0 when P + R = 0), or the macro average of F1."""
        tp, predicted, actual = self._counts()
        return self._per_class(cls, _ratio(2 * tp, predicted + actual, 0.0))

    # -- report -------------------------------------------------------------------------------

    def _name(self, cls: int) -> str:
        return str(cls) if self.label_names is None else self.label_names[cls]

    def stats(self) -> str:
        """A readable multi-line summary: overall figures, a per-class table, the confusion matrix.

        Examples
        --------
        >>> import numpy as np
        >>> ev = Evaluation(labels=["no", "yes"])
        >>> ev.eval(np.array([0, 1, 1]), np.array([[.9, .1], [.3, .7], [.6, .4]]))
        >>> print(ev.stats())  # doctest: +ELLIPSIS
        Examples:  3
        Classes:   2
        Accuracy:  0.6667
        Precision: 0.7500 (macro)
        ...
        """
        if self.num_classes is None:
            return "Evaluation: no examples evaluated"
        tp, predicted, actual = self._counts()
        precision = _ratio(tp, predicted, 0.0)
        recall = _ratio(tp, actual, 0.0)
        f1 = _ratio(2 * tp, predicted + actual, 0.0)
        lines = [
            f"Examples:  {self.num_examples}",
            f"Classes:   {self.num_classes}",
            f"Accuracy:  {self.accuracy():.4f}",
            f"Precision: {self.precision():.4f} (macro)",
            f"Recall:    {self.recall():.4f} (macro)",
            f"F1:        {self.f1():.4f} (macro)",
        ]
        if self.top_n > 1:
            lines.append(f"Top-{self.top_n} accuracy: {self.top_n_accuracy():.4f}")
        names = [self._name(c) for c in range(self.num_classes)]
        width = max(5, *(len(name) for name in names))
        lines += ["", f"{'class':<{width}}  precision     recall         f1    support"]
        for c, name in enumerate(names):
            lines.append(
                f"{name:<{width}}  {precision[c]:9.4f}  {recall[c]:9.4f}  {f1[c]:9.4f}  "
                f"{int(actual[c]):9d}"
            )
        cm = self.confusion_matrix()
        cell = max(len(str(int(cm.max()))), *(len(name) for name in names))
        lines += ["", "Confusion matrix (rows actual, columns predicted):"]
        lines.append(" " * width + "  " + " ".join(f"{name:>{cell}}" for name in names))
        for c, name in enumerate(names):
            lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{cell}d}" for v in cm[c]))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.stats()

    def __repr__(self) -> str:
        return (
            f"Evaluation(num_classes={self.num_classes}, top_n={self.top_n}, "
            f"num_examples={self.num_examples})"
        )


_REG_SUMS = (
    "count",
    "sum_error",
    "sum_abs_error",
    "sum_squared_error",
    "sum_label",
    "sum_squared_label",
)


class RegressionEvaluation:
    """Accumulating evaluation of a regression: MSE, MAE, RMSE and R² per column.

    Per column it keeps float64 sums (count, error, absolute error, squared error, label, squared
    label), so :meth:`merge` is exact up to float64 rounding. R² is
    ``1 - SSE / SST`` with ``SST = sum(y²) - sum(y)² / n``; it is ``nan`` for a column whose
    labels are all equal (SST = 0). The error is ``prediction - label``.

    Parameters
    ----------
    num_columns : int, optional
        Number of output columns ``k``; taken from ``column_names`` or the first batch otherwise.
    column_names : sequence of str, optional
        Column names, used by :meth:`stats`.

    Examples
    --------
    >>> import numpy as np
    >>> ev = RegressionEvaluation()
    >>> ev.eval(np.array([[1.0], [2.0], [3.0]]), np.array([[1.5], [2.0], [2.5]]))
    >>> ev.mean_squared_error(), ev.mean_absolute_error(), ev.r2()
    (0.16666666666666666, 0.3333333333333333, 0.75)
    """

    def __init__(
        self, num_columns: int | None = None, column_names: Sequence[str] | None = None
    ) -> None:
        if column_names is not None:
            column_names = [str(name) for name in column_names]
            if num_columns is not None and num_columns != len(column_names):
                raise ValueError(
                    f"num_columns={num_columns} does not match the {len(column_names)} names in "
                    f"column_names"
                )
            num_columns = len(column_names)
        if num_columns is not None and (int(num_columns) != num_columns or num_columns < 1):
            raise ValueError(f"num_columns must be a positive integer, got {num_columns!r}")
        self.num_columns: int | None = None if num_columns is None else int(num_columns)
        self.column_names: list[str] | None = column_names
        self._sums: dict[str, np.ndarray] | None = None
        if self.num_columns is not None:
            self._allocate(self.num_columns)

    def _allocate(self, k: int) -> None:
        self.num_columns = k
        self._sums = {name: np.zeros(k, dtype=np.float64) for name in _REG_SUMS}

    def eval(self, labels: Any, predictions: Any, mask: Any = None) -> None:
        """Add one batch.

        Parameters
        ----------
        labels, predictions : array_like
            Same shape, ``[n, k]`` or ``[n, k, t]``.
        mask : array_like, optional
            ``[n]`` or ``[n, k]`` for 2-D arrays, ``[n, t]`` or ``[n, k, t]`` for time series;
            zero drops the value.

        Raises
        ------
        ValueError
            When shapes disagree or ``k`` differs from ``num_columns``.
        """
        labels = np.asarray(labels, dtype=np.float64)
        predictions = np.asarray(predictions, dtype=np.float64)
        labels, predictions, mask = _flatten(labels, predictions, mask, label_is_index=False)
        k = predictions.shape[1]
        if self.num_columns is None:
            self._allocate(k)
        elif k != self.num_columns:
            raise ValueError(
                f"predictions have {k} columns (shape {predictions.shape}) but this evaluation "
                f"has num_columns={self.num_columns}"
            )
        weight = np.ones(predictions.shape, dtype=np.float64)
        if mask is not None:
            weight *= mask if mask.ndim == 2 else mask[:, None]
            # Zero the dropped values so that nan or inf in padding cannot leak into the sums.
            labels = np.where(weight > 0, labels, 0.0)
            predictions = np.where(weight > 0, predictions, 0.0)
        error = predictions - labels
        sums = self._sums
        assert sums is not None
        sums["count"] += weight.sum(axis=0)
        sums["sum_error"] += error.sum(axis=0)
        sums["sum_abs_error"] += np.abs(error).sum(axis=0)
        sums["sum_squared_error"] += (error * error).sum(axis=0)
        sums["sum_label"] += labels.sum(axis=0)
        sums["sum_squared_label"] += (labels * labels).sum(axis=0)

    def merge(self, other: RegressionEvaluation) -> RegressionEvaluation:
        """Add the sums of ``other`` (evaluated on other data) to this one; return ``self``."""
        if not isinstance(other, RegressionEvaluation):
            raise TypeError(f"can only merge a RegressionEvaluation, got {type(other).__name__}")
        _check_same_names("column", self.column_names, other.column_names)
        if other._sums is None:
            return self
        if self._sums is None:
            self._allocate(int(other.num_columns or 0))
        elif other.num_columns != self.num_columns:
            raise ValueError(
                f"cannot merge an evaluation of {other.num_columns} columns into one of "
                f"{self.num_columns} columns"
            )
        assert self._sums is not None
        for name in _REG_SUMS:
            self._sums[name] += other._sums[name]
        if self.column_names is None:
            self.column_names = other.column_names
        return self

    # -- figures ------------------------------------------------------------------------------

    @property
    def num_examples(self) -> int:
        """Values counted in the first column (rows, or unmasked time steps)."""
        return 0 if self._sums is None else int(self._sums["count"][0])

    def _figure(self, values: np.ndarray, col: int | None) -> float:
        if col is None:
            return float(values.mean())
        assert self.num_columns is not None
        if not 0 <= col < self.num_columns:
            raise ValueError(f"col must be in [0, {self.num_columns - 1}], got {col}")
        return float(values[col])

    def _column_sums(self) -> dict[str, np.ndarray]:
        if self._sums is None:
            raise ValueError("no columns yet: pass num_columns or evaluate a batch first")
        return self._sums

    def _mse(self) -> np.ndarray:
        s = self._column_sums()
        return _ratio(s["sum_squared_error"], s["count"], np.nan)

    def _r2(self) -> np.ndarray:
        s = self._column_sums()
        mean_label = _ratio(s["sum_label"], s["count"], np.nan)
        sst = s["sum_squared_label"] - s["sum_label"] * np.nan_to_num(mean_label)
        # Equal labels leave only rounding noise in SST; call that 0 (R² undefined, nan).
        sst[sst <= 1e-12 * s["sum_squared_label"]] = 0.0
        r2 = 1.0 - _ratio(s["sum_squared_error"], sst, np.nan)
        r2[s["count"] == 0] = np.nan
        return r2

    def mean_squared_error(self, col: int | None = None) -> float:
        """MSE of column ``col``, or the mean over columns when ``col`` is None."""
        return self._figure(self._mse(), col)

    def mean_absolute_error(self, col: int | None = None) -> float:
        """MAE of column ``col``, or the mean over columns when ``col`` is None."""
        s = self._column_sums()
        return self._figure(_ratio(s["sum_abs_error"], s["count"], np.nan), col)

    def root_mean_squared_error(self, col: int | None = None) -> float:
        """RMSE of column ``col``, or the mean of the per-column RMSEs when ``col`` is None."""
        return self._figure(np.sqrt(self._mse()), col)

    def r2(self, col: int | None = None) -> float:
        """R² = 1 - SSE/SST of column ``col``, or the mean over columns when ``col`` is None."""
        return self._figure(self._r2(), col)

    # -- report -------------------------------------------------------------------------------

    def stats(self) -> str:
        """A table of MSE, MAE, RMSE and R² per column, then their averages.

        Examples
        --------
        >>> import numpy as np
        >>> ev = RegressionEvaluation(column_names=["price"])
        >>> ev.eval(np.array([[1.0], [3.0]]), np.array([[2.0], [3.0]]))
        >>> print(ev.stats())
        column          MSE        MAE       RMSE         R2
        price        0.5000     0.5000     0.7071     0.5000
        average      0.5000     0.5000     0.7071     0.5000
        """
        if self._sums is None or self.num_columns is None:
            return "RegressionEvaluation: no examples evaluated"
        names = self.column_names or [str(c) for c in range(self.num_columns)]
        s = self._sums
        mse = self._mse()
        table = np.stack(
            [mse, _ratio(s["sum_abs_error"], s["count"], np.nan), np.sqrt(mse), self._r2()],
            axis=1,
        )
        width = max(7, *(len(name) for name in names))
        header = ("MSE", "MAE", "RMSE", "R2")
        lines = [f"{'column':<{width}}  " + " ".join(f"{h:>10}" for h in header)]
        rows = [*zip(names, table, strict=True), ("average", table.mean(axis=0))]
        for name, row in rows:
            lines.append(f"{name:<{width}}  " + " ".join(f"{v:10.4f}" for v in row))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.stats()

    def __repr__(self) -> str:
        return (
            f"RegressionEvaluation(num_columns={self.num_columns}, "
            f"num_examples={self.num_examples})"
        )
