"""Exported minibatch files as a PyTorch dataset (needs PyTorch: ``sparkbatch[torch]``).

:class:`MinibatchDataset` is a ``torch.utils.data.IterableDataset`` whose items are the
minibatch files of an export, one file per item, as tensors. It is imported on its own
(``from sparkbatch.data.torch import MinibatchDataset``): ``import sparkbatch.data`` never
imports torch. See ``docs/torch-data.md``.

NOTE [torch sharding]: the files of an epoch are first put in the epoch's order (the stored order,
or with ``shuffle=True`` the permutation of ``np.random.default_rng(seed + epoch)``, the same on
every rank and worker, as :class:`~sparkbatch.data.FileDataSetIterator` draws it), then dealt to
the ranks in turn (rank ``r`` of ``W`` takes places ``r, r + W, r + 2W, ...``), then a rank's
files to its DataLoader workers in turn. Every file is so read by exactly one rank and worker per
epoch, and a ``DataLoader(batch_size=None)``, which takes items from its workers in turn, gives a
rank's files in the epoch's order. Where the files do not divide evenly among the ranks, ``uneven``
says what to do: ``"keep"`` (every file once; ranks differ by at most one item), ``"drop"`` (each
rank reads ``N // W`` files; the last ``N % W`` of the epoch's order are left out) or ``"pad"``
(each rank reads ``ceil(N / W)`` files; the short ranks read files from the start of the epoch's
order again, as ``DistributedSampler`` pads).

NOTE [writable maps]: a local file from 2 MiB up is memory-mapped copy-on-write (``MAP_PRIVATE``,
readable and writable), so the tensors are views of the page cache without a copy and without
torch's warning about non-writable arrays; writing into a tensor copies only the pages written,
in this process, and never changes the file. Smaller local files are read into one buffer (one
copy out of the page cache costs less than mapping them: ``docs/performance.md``), and so are
files of other file systems (fsspec URLs): the tensors are views of that buffer.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as e:  # pragma: no cover (the test extra installs torch)
    raise ImportError("sparkbatch.data.torch needs PyTorch: pip install 'sparkbatch[torch]'") from e

from sparkbatch._arguments import check_int
from sparkbatch.data.dataset import DataSet
from sparkbatch.data.format import _MMAP_MIN_BYTES, _minibatch, _plain_local_path, _read_arrays
from sparkbatch.data.iterators import _resolve_files
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.errors import FormatError
from sparkbatch.storage import is_local, resolve

__all__ = ["UNEVEN", "MinibatchDataset", "read_minibatch", "to_item"]

#: What ``MinibatchDataset(uneven=...)`` takes (NOTE [torch sharding]).
UNEVEN = ("keep", "drop", "pad")
_ALIGNMENT = 64  # of the buffers small and remote files are read into, as the format's reader

Item = tuple[Any, ...]  # what MinibatchDataset yields (see to_item)


def _check_rank(rank: int, world_size: int, where: str) -> tuple[int, int]:
    if not 0 <= rank < world_size:
        raise ValueError(f"{where}: rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


def _from_torch_distributed() -> tuple[int, int] | None:
    """This process's rank and world size where ``torch.distributed`` is initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _this_process() -> tuple[str, int]:
    """This process, as a pickled rank names the process that pickled it."""
    return socket.gethostname(), os.getpid()


def _parent_process() -> tuple[str, int] | None:
    """The process that started this one (a DataLoader worker's: its rank's process)."""
    parent = multiprocessing.parent_process()
    return None if parent is None else (socket.gethostname(), parent.pid)


def _from_environment() -> tuple[int, int] | None:
    """The rank and world size that ``RANK`` and ``WORLD_SIZE`` give (torchrun sets both)."""
    found = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE")}
    if all(value is None for value in found.values()):
        return None
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise ValueError(
            f"the environment sets {'RANK' if missing == ['WORLD_SIZE'] else 'WORLD_SIZE'} but "
            f"not {missing[0]}; set both (torchrun does) or pass rank= and world_size="
        )
    numbers = {}
    for name, text in found.items():
        text = str(text).strip()
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"environment variable {name}={found[name]!r} is not an integer")
        numbers[name] = int(text)
    if numbers["WORLD_SIZE"] < 1:
        raise ValueError("environment variable WORLD_SIZE=0: it must be at least 1")
    return _check_rank(numbers["RANK"], numbers["WORLD_SIZE"], "the environment's RANK")


def _aligned_buffer(size: int) -> np.ndarray:
    """A writable, 64-byte aligned uint8 array of ``size`` bytes."""
    storage = np.empty(size + _ALIGNMENT, np.uint8)
    skip = -storage.ctypes.data % _ALIGNMENT
    return storage[skip : skip + size]


def _read_into(file: Any, size: int, name: str) -> np.ndarray:
    """The ``size`` bytes of an open binary file, read into one writable buffer."""
    buffer = _aligned_buffer(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = file.readinto(view[got:])
        if not n:
            raise FormatError(
                f"{name}: the file ended after {got} of its {size} bytes (it changed size "
                "while it was read)"
            )
        got += n
    return buffer


def _local_buffer(path: str, name: str) -> Any:
    """A local file's bytes, writable: mapped copy-on-write from 2 MiB up, else read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size >= _MMAP_MIN_BYTES:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            return _read_into(f, size, name)
    except FileNotFoundError as e:
        if e.filename == name:
            raise
        raise FileNotFoundError(e.errno, e.strerror, name) from e


def _remote_buffer(fs: Any, path: str, name: str) -> np.ndarray:
    """A file of another file system, read with one request into one writable buffer."""
    try:
        with fs.open(path, "rb") as f:
            size = getattr(f, "size", None)
            if size is None:
                size = fs.size(path)
            if size is None:  # a server that says no length (HTTP without Content-Length)
                data = f.read()
                buffer = _aligned_buffer(len(data))
                buffer[:] = np.frombuffer(data, np.uint8)
                return buffer
            return _read_into(f, int(size), name)
    except FileNotFoundError as e:
        raise FileNotFoundError(2, "No such file or directory", name) from e


def read_minibatch(
    url: str, *, storage_options: Mapping[str, Any] | None = None, verify: bool = True
) -> DataSet | MultiDataSet:
    """One minibatch file as a DataSet or MultiDataSet whose arrays are writable views
    (NOTE [writable maps]), so that ``torch.from_numpy`` shares them without a copy or a warning.

    Every check of :func:`sparkbatch.data.load` applies.

    Raises
    ------
    FormatError
        The file is truncated, corrupt or not a minibatch file; the message names it.
    FileNotFoundError
        No file at ``url``; the error's ``filename`` is the URL.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import save
    >>> save(DataSet(np.ones((2, 3), np.float32)), "memory://torch-doc/r/a.safetensors")
    >>> read_minibatch("memory://torch-doc/r/a.safetensors").features.flags.writeable
    True
    >>> import fsspec; fsspec.filesystem("memory").rm("/torch-doc", recursive=True)
    """
    path = _plain_local_path(url, storage_options)
    if path is None:
        fs, fs_path = resolve(url, storage_options)
        if not is_local(fs):
            buffer: Any = _remote_buffer(fs, fs_path, url)
            return _minibatch(*_read_arrays(buffer, url, verify), url)
        path = fs_path
    buffer = _local_buffer(path, url)
    return _minibatch(*_read_arrays(buffer, url, verify), url)


def _tensor(array: np.ndarray | None) -> Any:
    return None if array is None else torch.from_numpy(array)


def _tensors(arrays: Sequence[np.ndarray | None]) -> list[Any]:
    return [_tensor(a) for a in arrays]


def to_item(batch: Any) -> Item:
    """A DataSet or MultiDataSet as the tuple of tensors :class:`MinibatchDataset` yields.

    ``(features, labels)`` for a DataSet without masks, ``(features, labels, features_mask,
    labels_mask)`` with either mask (the other ``None``); a MultiDataSet gives lists in the same
    places (``(features_list, labels_list)``, with masks four lists whose absent masks are
    ``None``). Tensors share the arrays' memory (``torch.from_numpy``); absent labels are ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> features, labels = to_item(DataSet(np.ones((2, 3), np.float32), np.eye(2)))
    >>> features.shape, labels.dtype
    (torch.Size([2, 3]), torch.float64)
    """
    if isinstance(batch, DataSet):
        pair: tuple[Any, ...] = (_tensor(batch.features), _tensor(batch.labels))
        if batch.features_mask is None and batch.labels_mask is None:
            return pair
        return (*pair, _tensor(batch.features_mask), _tensor(batch.labels_mask))
    lists = (_tensors(batch.features), _tensors(batch.labels))
    f_masks, l_masks = list(batch.features_masks), list(batch.labels_masks)
    if all(m is None for m in f_masks + l_masks):
        return lists
    return (*lists, _tensors(f_masks), _tensors(l_masks))


class MinibatchDataset(IterableDataset):  # type: ignore[type-arg,misc]
    """The minibatch files of an export as a ``torch.utils.data.IterableDataset``, one file an
    item, sharded over distributed ranks and DataLoader workers.

    Use it with ``DataLoader(dataset, batch_size=None, num_workers=k)``: each item is already a
    minibatch. Under DDP every file is read exactly once per epoch by one rank and one of its
    workers (NOTE [torch sharding] in the module); call :meth:`set_epoch` before each epoch.

    Items (see :func:`to_item`): ``(features, labels)`` for a DataSet file, and
    ``(features, labels, features_mask, labels_mask)`` where the file holds either mask; a
    MultiDataSet file gives ``(features_list, labels_list)`` (plus the two lists of masks where
    any exists). The tensors are views of the file's memory map (copy-on-write) or of the buffer
    it was read into: nothing is copied in the process that reads it (NOTE [writable maps]).
    DataLoader workers send their tensors to the main process through shared memory, which is
    torch's copy, not ours; ``num_workers=0`` keeps the views.

    Parameters
    ----------
    url_or_paths : str, os.PathLike or sequence of them
        The directory (local path or fsspec URL) of an export, read through its
        ``_manifest.json`` (an incomplete export is refused with
        :class:`~sparkbatch.IncompleteExportError`; a plain directory is listed), one file, or
        a list of files. The list is fixed here, in the process that builds the dataset.
    shuffle : bool, default False
        Read the files of each epoch in the order of ``np.random.default_rng(seed + epoch)``,
        the same on every rank, so that the ranks' shards stay disjoint.
    seed : int, default 0
        The shuffle's seed; give every rank the same one.
    storage_options : mapping, optional
        Keyword arguments for the file system.
    rank, world_size : int, optional
        This process's place among the distributed ranks. Given, they win; else
        ``torch.distributed``'s where it is initialised, else the ``RANK`` and ``WORLD_SIZE``
        environment variables (as torchrun sets them), else rank 0 of 1. They are looked up
        each time the dataset is iterated, in the process iterating it; a pickled dataset
        (sent to spawned DataLoader workers) carries the rank of ``torch.distributed`` from the
        process that pickled it, used in that process's children (its workers) where they have
        no process group of their own, and ignored in any other process.
    uneven : {"keep", "drop", "pad"}, default "keep"
        What happens when the files do not divide evenly among the ranks. ``"keep"``: every
        file once, so ranks may differ by one item (DDP then needs ``model.join()``, or
        gradient steps that the ranks agree on); ``"drop"``: every rank reads ``N // W`` files,
        the epoch's last ``N % W`` are left out (another set each epoch with ``shuffle``);
        ``"pad"``: every rank reads ``ceil(N / W)`` files, some files twice, as
        ``DistributedSampler`` does.
    verify : bool, default True
        Check each file's CRC32C.

    Raises
    ------
    FileNotFoundError, IncompleteExportError
        From the listing, here; a file that is gone by the time it is read, when it is read.
    FormatError
        When a truncated, corrupt or foreign file is read; the message names it.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from sparkbatch.data import DataSet, export_datasets
    >>> x = np.arange(40, dtype=np.float32).reshape(10, 4)
    >>> directory = os.path.join(tempfile.mkdtemp(), "export")
    >>> _ = export_datasets(DataSet(x, x[:, :1]).split(4), directory)
    >>> dataset = MinibatchDataset(directory, rank=0, world_size=1)
    >>> [tuple(features.shape) for features, labels in dataset]
    [(4, 4), (4, 4), (2, 4)]
    >>> [len(MinibatchDataset(directory, rank=r, world_size=2)) for r in (0, 1)]
    [2, 1]
    """

    def __init__(
        self,
        url_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        shuffle: bool = False,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        uneven: str = "keep",
        verify: bool = True,
    ) -> None:
        super().__init__()
        self.seed = check_int("seed", seed, minimum=0)
        if (rank is None) != (world_size is None):
            raise ValueError(
                f"give both rank= and world_size= or neither (got rank={rank}, "
                f"world_size={world_size})"
            )
        if rank is not None and world_size is not None:
            rank, world_size = _check_rank(
                check_int("rank", rank, minimum=0),
                check_int("world_size", world_size, minimum=1),
                "rank=",
            )
        if uneven not in UNEVEN:
            raise ValueError(
                f"uneven must be one of {', '.join(map(repr, UNEVEN))}, got {uneven!r}"
            )
        self.shuffle = bool(shuffle)
        self.rank = rank
        self.world_size = world_size
        self.uneven = uneven
        self.verify = bool(verify)
        self.storage_options = dict(storage_options) if storage_options else None
        # in shared memory, so that set_epoch reaches persistent DataLoader workers (forked or
        # spawned: torch's pickler sends such a tensor by handle); plain pickling copies it
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._files = _resolve_files(url_or_paths, self.storage_options)
        if not self._files:
            raise ValueError("url_or_paths is an empty list: a dataset needs at least one file")
        # (the process that pickled it, its torch.distributed rank): see distributed()
        self._pickled_rank: tuple[tuple[str, int], tuple[int, int]] | None = None

    @property
    def files(self) -> list[str]:
        """Every file of the dataset, in stored order."""
        return list(self._files)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that the next pass reads; with ``shuffle=True`` it reorders the files
        (``seed + epoch``). Call it with the same epoch on every rank, before iterating, as
        with ``DistributedSampler``. The epoch is kept in shared memory, so it reaches the
        workers of a DataLoader with ``persistent_workers=True`` too."""
        self._epoch.fill_(check_int("epoch", epoch, minimum=0))

    @property
    def epoch(self) -> int:
        """The epoch that the next pass reads (:meth:`set_epoch`)."""
        return int(self._epoch)

    def distributed(self) -> tuple[int, int]:
        """``(rank, world_size)`` as this process sees it now (see ``rank`` above)."""
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        found = _from_torch_distributed()
        if found is None and self._pickled_rank is not None:
            # only a worker's own parent's rank: a dataset pickled on another rank (or unpickled
            # here from one) must not carry that rank's shard into this one
            pickled_by, pickled = self._pickled_rank
            if pickled_by == _parent_process():
                found = pickled
        return found or _from_environment() or (0, 1)

    def file_order(self) -> list[str]:
        """Every file in the order of the current epoch, before sharding."""
        if not self.shuffle:
            return list(self._files)
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self._files))
        return [self._files[i] for i in order]

    def rank_files(self) -> list[str]:
        """The files this rank reads in the current epoch, in order (all its workers together).

        Raises
        ------
        ValueError
            With ``uneven="drop"``, fewer files than ranks (no rank would read any).
        """
        rank, world_size = self.distributed()
        order = self.file_order()
        count = len(order)
        if self.uneven == "drop":
            if count < world_size:
                raise ValueError(
                    f"{count} file(s) for {world_size} ranks with uneven='drop': no rank would "
                    "read any; use uneven='pad' or fewer ranks"
                )
            order = order[: count - count % world_size]
        elif self.uneven == "pad":
            total = math.ceil(count / world_size) * world_size
            order = (order * math.ceil(total / count))[:total]
        return order[rank::world_size]

    def __len__(self) -> int:
        """How many items this rank reads per epoch (all its workers together)."""
        return len(self.rank_files())

    def __iter__(self) -> Iterator[Item]:
        files = self.rank_files()
        worker = get_worker_info()
        if worker is not None:
            files = files[worker.id :: worker.num_workers]
        for url in files:
            yield to_item(
                read_minibatch(url, storage_options=self.storage_options, verify=self.verify)
            )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        found = _from_torch_distributed()  # for spawned workers; never a rank pickled in here
        state["_pickled_rank"] = None if found is None else (_this_process(), found)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # a copy (pickle, deepcopy) shares its epoch with the workers it starts, not with the
        # original; one sent to a spawned worker is already shared (a no-op)
        self._epoch = self._epoch.share_memory_()

    def __repr__(self) -> str:
        return (
            f"MinibatchDataset({len(self._files)} files, shuffle={self.shuffle}, seed={self.seed}, "
            f"epoch={self.epoch}, rank={self.rank}, world_size={self.world_size}, "
            f"uneven={self.uneven!r})"
        )
