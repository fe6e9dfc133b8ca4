"""Images from FileBatch archives to training-ready DataSets: the loader and the pixel scaler.

:class:`FileBatchLoader` (DL4J's ``RecordReaderFileBatchLoader``) reads one FileBatch archive
(:class:`sparkbatch.storage.FileBatch`) and decodes its images with an image reader
(:class:`sparkbatch.records.ImageRecordReader`) into one :class:`~sparkbatch.data.DataSet`:
float32 features ``[n, channels, height, width]`` and one-hot labels. :class:`ImageScaler` (DL4J's
``ImagePreProcessingScaler``) maps pixel values to ``[min, max]``; given to the loader, its
scaling is fused into the uint8 to float32 conversion (one pass over the pixels).

NOTE [archive size]: DL4J's loader silently drops the files of an archive beyond its
``batchSize``. :class:`FileBatchLoader` never drops data: every file of an archive is in its
DataSet, so an archive of more files than ``batch_size`` (archives packed with 64 read by the
training loader of 32, say for evaluation) gives one larger DataSet, and a smaller one (the last
of an export) a smaller DataSet. ``batch_size`` is kept for DL4J's signature and the archives'
intended size; re-batch with ``FileDataSetIterator(..., batch_size=)`` where exact sizes matter.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from sparkbatch.data.dataset import DataSet
from sparkbatch.data.loaders import Preprocessor, Source, check_preprocessor, preprocess
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.storage import FileBatch
from sparkbatch.storage.file_batch import entry_name

__all__ = ["FileBatchLoader", "ImageScaler"]


class ImageScaler:
    """Pixel values ``0 .. 2**max_bits - 1`` mapped linearly to ``[min, max]``: DL4J's
    ``ImagePreProcessingScaler``.

    ``y = x / (2**max_bits - 1) * (max - min) + min``, on the features only (labels, masks
    and metadata are kept). A preprocessor (``preprocessor=`` of loaders, iterators and
    ``SparkNetwork``), picklable; given to :class:`FileBatchLoader` it runs fused into the
    loader's conversion of the decoded pixels. Float32 features stay float32 (uint8 ones become
    float32), float64 stay float64.

    Parameters
    ----------
    min, max : float, default 0 and 1
        The values of the darkest and the brightest pixel.
    max_bits : int, default 8
        Bits per pixel value of the images (8: 0..255).

    Examples
    --------
    >>> import numpy as np
    >>> scaler = ImageScaler()
    >>> scaler.transform(np.array([[0, 51, 255]], np.uint8)).tolist()
    [[0.0, 0.20000000298023224, 1.0]]
    >>> ImageScaler(-1, 1).revert(np.array([[-1.0, 1.0]], np.float32)).tolist()
    [[0.0, 255.0]]
    >>> scaler(DataSet(np.full((1, 1, 2, 2), 255, np.float32))).features.max()
    np.float32(1.0)
    """

    def __init__(self, min: float = 0.0, max: float = 1.0, max_bits: int = 8) -> None:  # noqa: A002
        lo, hi = float(min), float(max)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"ImageScaler needs finite min < max, got min={min!r}, max={max!r}")
        if isinstance(max_bits, bool) or not isinstance(max_bits, (int, np.integer)) or not (
            1 <= max_bits <= 32
        ):
            raise ValueError(f"ImageScaler: max_bits must be an int in 1..32, got {max_bits!r}")
        self.min, self.max, self.max_bits = lo, hi, int(max_bits)

    @property
    def denominator(self) -> float:
        """``2**max_bits - 1``, the value of the brightest pixel."""
        return 2.0**self.max_bits - 1

    def _dtype(self, x: np.ndarray) -> np.dtype[Any]:
        return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)

    def transform(self, features: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Scaled features: a new float32 array (float64 for float64 input), or ``out``.

        DL4J's operations in DL4J's order: divided by ``2**max_bits - 1``, then multiplied by
        ``max - min`` where that is not 1, then ``min`` added where it is not 0.
        """
        x = np.asarray(features)
        dtype = self._dtype(x) if out is None else out.dtype
        result = np.divide(x, dtype.type(self.denominator), out=out, dtype=dtype)
        if self.max - self.min != 1.0:
            np.multiply(result, dtype.type(self.max - self.min), out=result)
        if self.min != 0.0:
            np.add(result, dtype.type(self.min), out=result)
        return result  # type: ignore[no-any-return]

    def revert(self, features: Any) -> np.ndarray:
        """The inverse of :meth:`transform`: pixel values ``0 .. 2**max_bits - 1`` as floats
        (DL4J's ``revertFeatures``)."""
        x = np.asarray(features)
        dtype = self._dtype(x)
        result = np.subtract(x, dtype.type(self.min), dtype=dtype)
        np.multiply(result, dtype.type(self.denominator / (self.max - self.min)), out=result)
        return result

    def __call__(self, ds: DataSet | MultiDataSet) -> DataSet | MultiDataSet:
        """A new minibatch with scaled features (every input of a MultiDataSet)."""
        if isinstance(ds, DataSet):
            return DataSet._unchecked(
                self.transform(ds.features), ds.labels, ds.features_mask, ds.labels_mask,
                ds.metadata,
            )
        if isinstance(ds, MultiDataSet):
            return MultiDataSet(
                [self.transform(f) for f in ds.features], ds.labels, ds.features_masks,
                ds.labels_masks, ds.metadata,
            )
        raise TypeError(
            f"ImageScaler applies to a DataSet or MultiDataSet, got {type(ds).__name__}"
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, ImageScaler)
        return (self.min, self.max, self.max_bits) == (other.min, other.max, other.max_bits)

    def __hash__(self) -> int:
        return hash((ImageScaler, self.min, self.max, self.max_bits))

    def __repr__(self) -> str:
        return f"ImageScaler(min={self.min!r}, max={self.max!r}, max_bits={self.max_bits})"


class FileBatchLoader:
    """Loads one FileBatch archive of images as one DataSet: DL4J's
    ``RecordReaderFileBatchLoader(reader, batchSize, labelIndex, numClasses)``.

    The archive (:meth:`sparkbatch.storage.FileBatch.read_zip`, with its hostile-archive checks)
    is decoded by ``reader.read_batch`` (:class:`~sparkbatch.records.ImageRecordReader`: a pool
    of threads into one uint8 array) into float32 features ``[n, channels, height, width]`` and
    labels: one-hot float32 ``[n, num_classes]`` for class indices, the stacked arrays (as
    float32) for a generator's array labels. Give it to ``SparkNetwork.fit_paths``,
    ``SparkNetwork.fit(url, loader=)`` or :class:`~sparkbatch.data.FileDataSetIterator`
    (``loader=``). Every file of the archive is in the DataSet, however many there are (DL4J
    drops the files beyond ``batch_size``: NOTE [archive size]). Picklable: it holds the
    reader's settings only.

    Parameters
    ----------
    reader : ImageRecordReader
        Decodes the images (anything with its ``read_batch(files, uris, archive)``).
    batch_size : int
        The archives' intended size (the batch size they were packed with), as DL4J's
        argument; not a limit (NOTE [archive size]).
    label_index : int or None, default 1
        Where the label is in the reader's record ``[image, label]``: 1, as DL4J's; None
        loads features only (no labels, even where the reader has a generator).
    num_classes : int, optional
        The number of classes of the one-hot labels; required where the labels are class
        indices.
    preprocessor : callable, optional
        Applied to every DataSet (DL4J's ``setPreProcessor``); an :class:`ImageScaler` is fused
        into the conversion of the pixels to float32.

    Raises
    ------
    FormatError
        From :meth:`load`: the archive is not a valid FileBatch, or a file in it is not a
        readable image (the message names the archive, the entry and its original URI).
    ValueError
        From :meth:`load`: a label outside ``num_classes`` or
        unknown to the reader, class labels without ``num_classes`` (named likewise).

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> from sparkbatch.records import ImageRecordReader, ParentPathLabelGenerator
    >>> def png(colour):
    ...     out = io.BytesIO(); Image.new("RGB", (8, 8), colour).save(out, "PNG")
    ...     return out.getvalue()
    >>> batch = FileBatch([png("red"), png("white")], ["img/cat/0.png", "img/dog/1.png"])
    >>> batch.write_zip("memory://fbl-doc/batch.zip")
    >>> reader = ImageRecordReader(4, 4, 3, ParentPathLabelGenerator(), labels=["cat", "dog"])
    >>> loader = FileBatchLoader(reader, 32, 1, 2, preprocessor=ImageScaler())
    >>> ds = loader.load(Source("memory://fbl-doc/batch.zip"))
    >>> ds
    DataSet(num_examples=2, features=float32(2, 3, 4, 4), labels=float32(2, 2))
    >>> ds.features[:, :, 0, 0].tolist(), ds.labels.tolist()
    ([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
    >>> import fsspec; fsspec.filesystem("memory").rm("/fbl-doc", recursive=True)
    """

    def __init__(
        self,
        reader: Any,
        batch_size: int,
        label_index: int | None = 1,
        num_classes: int | None = None,
        *,
        preprocessor: Preprocessor | None = None,
    ) -> None:
        if not callable(getattr(reader, "read_batch", None)):
            raise TypeError(
                "FileBatchLoader: reader must decode a minibatch of files with "
                f"read_batch(files, uris, archive) (records.ImageRecordReader), got "
                f"{type(reader).__name__}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
            batch_size < 1
        ):
            raise ValueError(f"FileBatchLoader: batch_size must be an int >= 1, got {batch_size!r}")
        if label_index is not None and (isinstance(label_index, bool) or label_index != 1):
            raise ValueError(
                "FileBatchLoader: label_index must be 1 (the label of an image record "
                f"[image, label]) or None (no labels), got {label_index!r}"
            )
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
                num_classes < 1
            ):
                raise ValueError(
                    f"FileBatchLoader: num_classes must be an int >= 1, got {num_classes!r}"
                )
            labels = getattr(reader, "labels", None)
            if labels is not None and len(labels) > num_classes:
                raise ValueError(
                    f"FileBatchLoader: num_classes={num_classes} but the reader has "
                    f"{len(labels)} labels {labels[:10]}; the one-hot labels need a column each"
                )
        self.reader = reader
        self.batch_size = int(batch_size)
        self.label_index = label_index
        self.num_classes = None if num_classes is None else int(num_classes)
        self.preprocessor = check_preprocessor(preprocessor)

    def load(self, source: Source) -> DataSet | MultiDataSet:
        """The DataSet of the archive at ``source``."""
        url = source.url
        batch = FileBatch.read_zip(url, storage_options=source.storage_options)
        reader = self.reader
        if self.label_index is None and getattr(reader, "label_generator", None) is not None:
            reader = copy.copy(reader)  # features only: no label is made, so none can fail
            reader.label_generator = None
        pixels, labels = reader.read_batch(batch.files, batch.original_uris, url)
        scaler = self.preprocessor  # fused: an ImageScaler whose __call__ is ImageScaler's
        if not isinstance(scaler, ImageScaler) or type(scaler).__call__ is not ImageScaler.__call__:
            scaler = None
        features = np.empty(pixels.shape, np.float32)
        if scaler is not None:
            scaler.transform(pixels, out=features)
        else:
            np.copyto(features, pixels)
        targets = None if self.label_index is None else self._targets(labels, batch, url)
        ds = DataSet._unchecked(features, targets)
        if self.preprocessor is None or scaler is not None:
            return ds
        return preprocess(self.preprocessor, ds, url)

    def _targets(self, labels: np.ndarray | None, batch: FileBatch, url: str) -> np.ndarray | None:
        if labels is None:
            return None
        if labels.ndim >= 2:  # a generator's arrays, stacked
            return np.ascontiguousarray(labels, np.float32)
        if self.num_classes is None:
            raise ValueError(
                f"{url}: the labels are class indices but the FileBatchLoader has no "
                "num_classes; pass num_classes= (the one-hot labels' width)"
            )
        bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
        if bad.size:
            i = int(bad[0])
            uri = batch.original_uris[i]
            raise ValueError(
                f"{url}, entry {entry_name(i, uri)} ({uri}): label index {int(labels[i])} is "
                f"outside num_classes={self.num_classes}"
            )
        one_hot = np.zeros((len(labels), self.num_classes), np.float32)
        one_hot[np.arange(len(labels)), labels] = 1.0
        return one_hot

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, FileBatchLoader)
        return bool(
            (self.batch_size, self.label_index, self.num_classes)
            == (other.batch_size, other.label_index, other.num_classes)
            and self.reader == other.reader
            and self.preprocessor == other.preprocessor
        )

    def __hash__(self) -> int:
        return hash((FileBatchLoader, self.batch_size, self.label_index, self.num_classes))

    def __repr__(self) -> str:
        extra = "" if self.preprocessor is None else f", preprocessor={self.preprocessor!r}"
        return (
            f"FileBatchLoader({self.reader!r}, batch_size={self.batch_size}, "
            f"label_index={self.label_index}, num_classes={self.num_classes}{extra})"
        )
