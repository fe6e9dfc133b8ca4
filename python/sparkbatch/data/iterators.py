"""Iterate minibatch files on a single machine (DL4J's ``FileDataSetIterator``).

:class:`FileDataSetIterator` reads a directory (or a list) of saved minibatches, one file at a
time, optionally in shuffled order and re-batched to another batch size; the next files load on a
background thread while the caller works on the current one. :class:`FileMultiDataSetIterator`
does the same for MultiDataSets.

NOTE [prefetch thread]: loading a file is mostly native work that releases the GIL (reads, the
memory map, the CRC32C check), so one background thread overlaps it with the caller's training
step. One thread keeps the files in order; ``prefetch`` bounds how many loaded files wait in
memory. The thread is shut down when a pass ends, fails, or its generator is closed or collected.
Where loads are too quick, or the caller too busy with nothing, for the hand-off between threads
to pay, the files load inline instead (NOTE [adaptive prefetch] in ``sparkbatch._prefetch``).

NOTE [file order]: the file list is fixed when the iterator is created (a ``_manifest.json`` in
the directory, else a sorted listing). ``shuffle=True`` permutes it for each pass with
``np.random.default_rng(seed + epoch)`` (:meth:`FileDataSetIterator.set_epoch`), so a seeded
pass is reproducible; without a seed every pass differs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from sparkbatch._arguments import check_int, check_optional_int
from sparkbatch._prefetch import prefetched
from sparkbatch.data.batches import rebatch
from sparkbatch.data.dataset import DataSet
from sparkbatch.data.loaders import (
    Loader,
    Preprocessor,
    SerializedDataSetLoader,
    SerializedMultiDataSetLoader,
    Source,
    check_preprocessor,
    load_named,
    preprocess,
)
from sparkbatch.data.manifest import check_suffix, minibatch_files
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.data.sequences import check_alignment
from sparkbatch.storage import is_directory

__all__ = ["FileDataSetIterator", "FileMultiDataSetIterator"]

_B = TypeVar("_B", DataSet, MultiDataSet)
PathsOrDir = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _resolve_files(
    paths_or_dir: PathsOrDir,
    storage_options: Mapping[str, Any] | None,
    suffix: str | tuple[str, ...] | None = None,
) -> list[str]:
    if isinstance(paths_or_dir, (str, os.PathLike)):
        target = os.fspath(paths_or_dir)
        if not isinstance(target, str):
            raise TypeError(f"paths_or_dir must be str paths, got {type(target).__name__}")
        if not is_directory(target, storage_options=dict(storage_options or {})):
            return [target]
        return minibatch_files(target, suffix=suffix, storage_options=storage_options)
    if isinstance(paths_or_dir, Sequence):
        files = []
        for i, p in enumerate(paths_or_dir):
            if not isinstance(p, (str, os.PathLike)):
                raise TypeError(
                    f"paths_or_dir[{i}] must be a str or os.PathLike, got {type(p).__name__}"
                )
            files.append(os.fspath(p))
        return files  # type: ignore[return-value]
    raise TypeError(
        "paths_or_dir must be a directory, a file or a list of files (str or os.PathLike), "
        f"got {type(paths_or_dir).__name__}"
    )


class _FileIterator(Generic[_B]):
    """What :class:`FileDataSetIterator` and :class:`FileMultiDataSetIterator` share."""

    _kind: type[_B]

    def __init__(
        self,
        paths_or_dir: PathsOrDir,
        batch_size: int | None = None,
        shuffle: bool = False,
        seed: int | None = None,
        prefetch: int = 2,
        loader: Loader | None = None,
        storage_options: Mapping[str, Any] | None = None,
        alignment: str = "align_start",
        suffix: str | tuple[str, ...] | None = None,
        preprocessor: Preprocessor | None = None,
    ) -> None:
        batch_size = check_optional_int("batch_size", batch_size)
        check_suffix(suffix)
        check_preprocessor(preprocessor)
        alignment = check_alignment(alignment)
        prefetch = check_int("prefetch", prefetch, minimum=0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if loader is not None and not callable(getattr(loader, "load", None)):
            raise TypeError(f"loader must have a load(source) method, got {type(loader).__name__}")
        self.batch_size = batch_size
        self.alignment = alignment
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.prefetch = prefetch
        self.loader: Loader = loader if loader is not None else self._default_loader()
        self.storage_options = dict(storage_options) if storage_options else None
        self.suffix = suffix
        self.preprocessor = preprocessor
        self.epoch = 0
        self._files = _resolve_files(paths_or_dir, self.storage_options, suffix)

    @staticmethod
    def _default_loader() -> Loader:
        raise NotImplementedError

    @property
    def files(self) -> list[str]:
        """The files, in stored order (before any shuffle)."""
        return list(self._files)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; with ``shuffle=True`` the file order of a pass uses ``seed + epoch``."""
        self.epoch = int(epoch)

    def file_order(self) -> list[str]:
        """The files in the order the next pass reads them."""
        if not self.shuffle:
            return list(self._files)
        rng = np.random.default_rng(None if self.seed is None else self.seed + self.epoch)
        return [self._files[i] for i in rng.permutation(len(self._files))]

    def __len__(self) -> int:
        if self.batch_size is not None:
            raise TypeError(
                "len() is the number of files, known only when batch_size is None "
                f"(batch_size={self.batch_size} re-batches across files)"
            )
        return len(self._files)

    def _load(self, url: str) -> _B:
        data = load_named(self.loader, Source(url, self.storage_options))
        if self._kind is MultiDataSet and isinstance(data, DataSet):
            return data.to_multi()  # type: ignore[return-value]
        if not isinstance(data, self._kind):
            raise TypeError(
                f"{url}: {type(self.loader).__name__}.load returned {type(data).__name__}, "
                f"expected a {self._kind.__name__}"
            )
        return data

    def _loaded(self, urls: list[str]) -> Iterator[_B]:
        """Yield each file's minibatch, in order, loading ahead on a thread where that pays
        (NOTE [prefetch thread])."""
        return prefetched(self._load, urls, self.prefetch)

    def __iter__(self) -> Iterator[_B]:
        order = self.file_order()
        if self.preprocessor is None:
            return self._batches(order)
        return self._preprocessed(order)

    def _batches(self, order: list[str]) -> Iterator[_B]:
        loaded = self._loaded(order)
        if self.batch_size is None:
            yield from loaded
            return
        try:
            yield from rebatch(loaded, self.batch_size, self.alignment)
        finally:
            loaded.close()  # the prefetch thread stops with the pass

    def _preprocessed(self, order: list[str]) -> Iterator[_B]:
        """The batches of a pass, each through the preprocessor (after re-batching); errors
        name the file (without re-batching) or the batch's position in the pass."""
        batches = self._batches(order)
        try:
            for i, batch in enumerate(batches):
                where = order[i] if self.batch_size is None else f"batch {i} of the pass"
                yield preprocess(self.preprocessor, batch, where)  # type: ignore[arg-type,misc]
        finally:
            batches.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self._files)} files, batch_size={self.batch_size}, "
            f"alignment={self.alignment!r}, shuffle={self.shuffle}, seed={self.seed}, "
            f"prefetch={self.prefetch}, "
            f"loader={self.loader!r}"
            + ("" if self.suffix is None else f", suffix={self.suffix!r}")
            + ("" if self.preprocessor is None else f", preprocessor={self.preprocessor!r}")
            + ")"
        )


class FileDataSetIterator(_FileIterator[DataSet]):
    """Iterate the DataSets stored in files: a directory, one file, or a list of files.

    The DL4J ``FileDataSetIterator``. Each ``for`` loop is a fresh pass over the files. Without
    ``batch_size`` every file gives one DataSet (``len()`` is the number of files); with it the
    examples are cut across file boundaries into DataSets of exactly ``batch_size`` examples, in
    order, the last one smaller (:func:`~sparkbatch.data.rebatch`).

    Parameters
    ----------
    paths_or_dir : str, os.PathLike or sequence of them
        A directory (local or fsspec URL): the files it lists in ``_manifest.json`` (an object
        with a ``"files"`` list of ``{"path": <relative path>}``), in that order, or else every
        file under it, recursively, sorted, whatever its name (names starting with ``.`` or
        ``_`` are skipped, as Hadoop does: ``_SUCCESS``, ``.crc``); see
        :func:`~sparkbatch.data.manifest.minibatch_files`. Or one file, or a list of files,
        read in the order given.
    batch_size : int, optional
        Re-batch to this many examples per DataSet; None keeps one DataSet per file.
    shuffle : bool, default False
        Read the files in random order, ``np.random.default_rng(seed + epoch)`` (NOTE [file order]).
    seed : int, optional
        Seed of the file order; None gives a different order on every pass.
    prefetch : int, default 2
        Files to load ahead on a background thread; 0 loads in the caller's thread. Where loads
        are quick or the caller has nothing to do between files, they load inline anyway
        (the hand-off between threads would cost more than it hides).
    loader : Loader, optional
        Reads one file; defaults to :class:`~sparkbatch.data.SerializedDataSetLoader`.
    storage_options : mapping, optional
        Keyword arguments for the file system.
    alignment : {"align_start", "align_end", "equal_length"}, default "align_start"
        With ``batch_size``, how sequences of different lengths from different files line up
        when they are merged into one DataSet (:meth:`~sparkbatch.data.DataSet.merge`): give
        the alignment the files were exported with (``batch_and_export(..., alignment=)``), so
        that the padding of an ``"align_end"`` export stays at the start and the last steps stay
        aligned. Without ``batch_size`` nothing is merged and it has no effect.
    suffix : str or tuple of str, optional
        Of a directory, read only the files whose names end with (one of) these, e.g.
        ``".bin"``; files named one by one are read whatever their names.
    preprocessor : callable, optional
        Applied to every minibatch the iterator yields, after re-batching (so it sees the
        DataSets of ``batch_size`` examples): any picklable callable from DataSet (MultiDataSet for
        :class:`FileMultiDataSetIterator`) to DataSet or MultiDataSet (DL4J's
        ``DataSetPreProcessor``). To preprocess each file before re-batching, give the loader
        one instead (``SerializedDataSetLoader(preprocessor=...)``, or
        :class:`~sparkbatch.data.loaders.PreprocessingLoader` around a custom loader).

    Raises
    ------
    FileNotFoundError
        ``paths_or_dir`` does not exist, or is a directory without files (with ``suffix``)
        (the message says what it holds); while iterating, a listed file vanished (the error's
        ``filename`` is its URL).
    FormatError
        While iterating, a file is corrupt or in another format (the message names it: pass
        ``loader=`` for files of another format); or the manifest is invalid.
    TypeError
        ``preprocessor`` is not callable; while iterating, it returned neither a DataSet nor a
        MultiDataSet.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet, export_datasets
    >>> ds = DataSet(np.arange(10, dtype=np.float32).reshape(5, 2))
    >>> urls = export_datasets(ds.split(2), "memory://sparkbatch-doc/it")
    >>> [d.num_examples for d in FileDataSetIterator("memory://sparkbatch-doc/it")]
    [2, 2, 1]
    >>> [d.num_examples for d in FileDataSetIterator(urls, batch_size=3)]
    [3, 2]
    >>> double = lambda d: DataSet(d.features * 2)
    >>> it = FileDataSetIterator(urls, batch_size=3, preprocessor=double)
    >>> [float(d.features[0, 1]) for d in it]
    [2.0, 14.0]
    >>> it = FileDataSetIterator(urls, shuffle=True, seed=7)
    >>> it.set_epoch(1)
    >>> len(it), sorted(it.file_order()) == urls
    (3, True)
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    _kind = DataSet

    @staticmethod
    def _default_loader() -> Loader:
        return SerializedDataSetLoader()


class FileMultiDataSetIterator(_FileIterator[MultiDataSet]):
    """Iterate the MultiDataSets stored in files; see :class:`FileDataSetIterator`.

    The default loader is :class:`~sparkbatch.data.SerializedMultiDataSetLoader`; files (or
    loaders) giving DataSets yield one-input MultiDataSets.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet, export_datasets
    >>> ds = DataSet(np.zeros((4, 2), np.float32), np.ones((4, 1), np.float32))
    >>> _ = export_datasets([ds], "memory://sparkbatch-doc/mit")
    >>> [type(m).__name__ for m in FileMultiDataSetIterator("memory://sparkbatch-doc/mit")]
    ['MultiDataSet']
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    _kind = MultiDataSet

    @staticmethod
    def _default_loader() -> Loader:
        return SerializedMultiDataSetLoader()
