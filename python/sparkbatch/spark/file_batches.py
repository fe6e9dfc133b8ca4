"""Raw files (images) to FileBatch archives, on one machine or on Spark (DL4J's
``SparkDataUtils.createFileBatchesLocal`` and ``createFileBatchesSpark``).

NOTE [file batch export]: both creators plan the whole export on the driver from the list of
file URLs (a listing, or the collected RDD of paths: strings, never the files' bytes): the URLs
are shuffled with ``numpy.random.default_rng(seed)`` and cut into groups of ``batch_size`` (the
last may be smaller), group ``k`` being written to ``file_batch_{k:06d}.zip``. The archive names
and contents therefore depend only on the files and the seed, every file lands in exactly one
archive, and every archive but the last is full (DL4J names archives by random UUIDs, so a
retried task adds duplicates, and it cuts each partition separately, leaving a short archive per
partition). On Spark, executors read the files and write the archives, each atomically; a
retried task rewrites its own archives and nothing else. Around the writes, the export commit of
:mod:`sparkbatch.data.manifest` marks the directory incomplete (``_in_progress.json``) until
``_manifest.json`` lists every archive, which :func:`~sparkbatch.spark.list_paths` then reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from sparkbatch._arguments import check_int
from sparkbatch._jobs import JobDescription
from sparkbatch._progress import Progress
from sparkbatch.data.manifest import begin_export, commit_export
from sparkbatch.spark._errors import executor_errors
from sparkbatch.storage import FileBatch, is_directory, join, list_tree, resolve
from sparkbatch.storage.paths import is_hidden

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = [
    "ARCHIVE_PATTERN",
    "WriteFileBatches",
    "archive_name",
    "create_file_batches_local",
    "create_file_batches_spark",
    "plan_file_batches",
]

ARCHIVE_PATTERN = r"file_batch_\d{6,}\.zip"  # what archive_name gives
_KIND = "FileBatch"


def archive_name(index: int) -> str:
    """The name of archive ``index`` of an export (NOTE [file batch export]).

    Examples
    --------
    >>> archive_name(3)
    'file_batch_000003.zip'
    """
    return f"file_batch_{index:06d}.zip"


def plan_file_batches(urls: list[str], batch_size: int, seed: int | None) -> list[list[str]]:
    """``urls`` shuffled with ``numpy.random.default_rng(seed)`` and cut into groups of
    ``batch_size``, the last possibly smaller: the archives' contents, in order.

    Examples
    --------
    >>> plan_file_batches(["a", "b", "c", "d", "e"], 2, seed=1)
    [['e', 'a'], ['b', 'c'], ['d']]
    """
    order = np.random.default_rng(seed).permutation(len(urls))
    shuffled = np.asarray(urls, dtype=object)[order].tolist() if urls else []
    return [shuffled[k : k + batch_size] for k in range(0, len(shuffled), batch_size)]


class WriteFileBatches:
    """``mapPartitions`` function over ``(archive index, file URLs)`` pairs: reads the files,
    writes each group as ``file_batch_{index:06d}.zip`` under ``directory`` (atomically,
    replacing an earlier attempt's) and yields ``(archive URL, manifest entry)``."""

    def __init__(self, directory: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.directory = directory
        self.storage_options = dict(storage_options or {})

    def write(self, index: int, urls: list[str]) -> tuple[str, dict[str, Any]]:
        """Write archive ``index`` of ``urls``; its URL and manifest entry."""
        options = self.storage_options or None
        batch = FileBatch.from_files(urls, storage_options=options)
        name = archive_name(index)
        url = join(self.directory, name)
        batch.write_zip(url, storage_options=options, overwrite=True)
        entry = {
            "path": name,
            "kind": _KIND,
            "num_examples": len(batch),
            "bytes": sum(len(f) for f in batch.files),
            "tensors": {},
        }
        return url, entry

    def __call__(self, items: Iterable[tuple[int, list[str]]]) -> Iterator[tuple[str, Any]]:
        for index, urls in items:
            yield self.write(index, urls)


def _extensions(extensions: Iterable[str] | str | None) -> frozenset[str] | None:
    """The wanted extensions, lower case without dots, or None for every file."""
    if extensions is None:
        return None
    given = [extensions] if isinstance(extensions, str) else list(extensions)
    if not all(isinstance(e, str) for e in given):
        raise TypeError(f"extensions must be strings such as 'jpg', got {extensions!r:.80}")
    wanted = frozenset(e.lower().lstrip(".") for e in given)
    if not wanted or "" in wanted:
        raise ValueError(f"extensions must name file extensions such as 'jpg', got {extensions!r}")
    return wanted


def _extension(relative: str) -> str:
    name = relative.rsplit("/", 1)[-1]
    return name.rpartition(".")[2].lower() if "." in name else ""


def _inside(dest: str, src: str, options: dict[str, Any] | None) -> str | None:
    """``dest``'s path relative to ``src`` where it lies under it (archives of an earlier run
    are not source files), else None."""
    dest_fs, dest_root = resolve(dest, options)
    src_fs, src_root = resolve(src, options)
    prefix = src_root.rstrip("/") + "/"
    if type(dest_fs) is type(src_fs) and (dest_root + "/").startswith(prefix):
        return dest_root[len(prefix) :].strip("/")
    return None


def _source_files(
    src: str,
    dest: str,
    extensions: frozenset[str] | None,
    recursive: bool,
    options: dict[str, Any] | None,
) -> list[str]:
    """The files to archive under directory ``src``, sorted by path: visible (no part of the
    path starts with ``.`` or ``_``, as :func:`~sparkbatch.storage.list_files` has it), with one
    of ``extensions`` (any case), not under ``dest``."""
    if not is_directory(src, storage_options=options):
        raise NotADirectoryError(f"{src} is a file: give the directory that holds the files")
    skip = _inside(dest, src, options)
    if skip == "":
        raise ValueError(f"dest_url must be another directory than src_dir, got {dest} for both")
    found = []
    for relative, url in list_tree(src, storage_options=options):
        if is_hidden(relative):
            continue
        if not recursive and "/" in relative:
            continue
        if skip is not None and (relative + "/").startswith(skip + "/"):
            continue
        if extensions is not None and _extension(relative) not in extensions:
            continue
        found.append(url)
    if not found:
        which = "" if extensions is None else " with extension " + " or ".join(sorted(extensions))
        raise FileNotFoundError(
            f"no files{which} under {src}{'' if recursive else ' (not recursive)'}"
        )
    return found


def _commit(
    dest: str,
    export_id: str,
    written: list[tuple[str, dict[str, Any]]],
    batch_size: int,
    options: dict[str, Any] | None,
) -> list[str]:
    written.sort(key=lambda item: item[1]["path"])
    commit_export(
        dest,
        export_id,
        [entry for _, entry in written],
        storage_options=options,
        kind=_KIND,
        batch_size=batch_size,
    )
    return [url for url, _ in written]


def create_file_batches_local(
    src_dir: str | os.PathLike[str],
    dest_url: str | os.PathLike[str],
    batch_size: int,
    *,
    extensions: Iterable[str] | None = None,
    recursive: bool = True,
    seed: int | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Pack the files under ``src_dir`` into FileBatch archives under ``dest_url``, on this
    machine (DL4J's ``SparkDataUtils.createFileBatchesLocal``); no SparkContext needed.

    The files are shuffled (seeded with ``seed``) and written ``batch_size`` to an archive,
    ``file_batch_000000.zip``, ``file_batch_000001.zip``, ... (the last may hold fewer), each
    atomically, then ``_manifest.json`` lists them (NOTE [file batch export]). Copy the
    directory to the cluster and train with ``list_paths(sc, dest_url)`` and a
    ``data.FileBatchLoader``.

    Parameters
    ----------
    src_dir : str or os.PathLike
        Directory of the files (local path or fsspec URL). Names starting with ``.`` or ``_``
        are skipped, and so is everything under ``dest_url`` when it lies inside.
    dest_url : str or os.PathLike
        Output directory, created if needed.
    batch_size : int
        Files per archive.
    extensions : iterable of str, optional
        Keep only files with these extensions, any case (``["jpg", "png"]``; a leading dot is
        allowed); default every file.
    recursive : bool, default True
        Include files in subdirectories (the class directories of an image data set).
    seed : int, optional
        Seed of the shuffle; None shuffles differently each time.
    overwrite : bool, default False
        Replace an earlier export in ``dest_url`` (the archives its manifest lists); other
        ``.zip`` files there are an error, never removed.
    storage_options : mapping, optional
        fsspec options, for the source and the destination.
    progress : bool, optional
        A progress bar on stderr (archives written); by default only on a terminal.

    Returns
    -------
    list of str
        The archives' URLs, in order.

    Raises
    ------
    FileExistsError
        ``dest_url`` holds an export or ``.zip`` files (see ``overwrite``); nothing is written.
    FileNotFoundError
        ``src_dir`` does not exist or holds no file (with ``extensions``).
    NotADirectoryError
        ``src_dir`` is a file.

    Examples
    --------
    >>> from sparkbatch.storage import open_output, FileBatch
    >>> for name in ["cat/0.png", "cat/1.png", "dog/2.png", "dog/notes.txt"]:
    ...     with open_output(f"memory://fb-doc/images/{name}") as f:
    ...         _ = f.write(name.encode())
    >>> urls = create_file_batches_local(
    ...     "memory://fb-doc/images", "memory://fb-doc/batches", 2, extensions=["png"], seed=0)
    >>> for url in urls:
    ...     print(url)
    memory://fb-doc/batches/file_batch_000000.zip
    memory://fb-doc/batches/file_batch_000001.zip
    >>> [len(FileBatch.read_zip(u)) for u in urls]
    [2, 1]
    >>> import fsspec; fsspec.filesystem("memory").rm("/fb-doc", recursive=True)
    """
    size = check_int("batch_size", batch_size)
    src, dest = os.fspath(src_dir), os.fspath(dest_url)
    options = dict(storage_options) if storage_options else None
    urls = _source_files(src, dest, _extensions(extensions), recursive, options)
    groups = plan_file_batches(urls, size, seed)
    export_id = begin_export(
        dest, ARCHIVE_PATTERN, overwrite=overwrite, storage_options=options, suffix=".zip"
    )
    writer = WriteFileBatches(dest, options)
    written = []
    with Progress(
        total=len(groups), desc="file batches", unit=" archives", enabled=progress
    ) as bar:
        done = 0
        for index, group in enumerate(groups):
            written.append(writer.write(index, group))
            done += len(group)
            bar.update(postfix=f"{done:,} of {len(urls):,} files")
    return _commit(dest, export_id, written, size, options)


def create_file_batches_spark(
    sc: SparkContext,
    src: str | os.PathLike[str] | RDD[str],
    dest_url: str | os.PathLike[str],
    batch_size: int,
    *,
    seed: int | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Pack files into FileBatch archives under ``dest_url`` with Spark executors doing the
    reading and writing (DL4J's ``SparkDataUtils.createFileBatchesSpark``).

    The file list is planned on the driver (NOTE [file batch export]): shuffled with ``seed``
    and cut into archives of ``batch_size`` (the last may hold fewer), named
    ``file_batch_000000.zip``, ... by their index, so a retried task rewrites its own archives.
    ``_manifest.json`` lists them at the end; until then the directory reads as an incomplete
    export. The archives are spread over ``max(partitions of src, sc.defaultParallelism)``
    tasks (at most one per archive).

    Parameters
    ----------
    sc : SparkContext
    src : str, os.PathLike or RDD of str
        A directory (every visible file under it, recursively, as
        :func:`~sparkbatch.spark.list_paths` lists) or an RDD of file URLs/paths; the RDD is
        collected on the driver (its strings only).
    dest_url : str or os.PathLike
        Output directory, created if needed.
    batch_size : int
        Files per archive.
    seed : int, optional
        Seed of the shuffle; None shuffles differently each time.
    overwrite : bool, default False
        As :func:`~sparkbatch.spark.batch_and_export`: replace an earlier export in
        ``dest_url``; without it, an export or ``.zip`` files there are a FileExistsError.
    storage_options : mapping, optional
        fsspec options, for the source and the destination, on the executors too.

    Returns
    -------
    list of str
        The archives' URLs, in order.

    Raises
    ------
    FileExistsError
        ``dest_url`` holds an export or ``.zip`` files (see ``overwrite``); nothing is written.
    FileNotFoundError
        The directory does not exist or holds no file, or a file of the RDD does not exist.

    Examples
    --------
    >>> urls = create_file_batches_spark(sc, "hdfs:///data/images", "hdfs:///data/batches",
    ...                                  32, seed=1)  # doctest: +SKIP
    >>> paths = list_paths(sc, "hdfs:///data/batches")  # doctest: +SKIP
    """
    size = check_int("batch_size", batch_size)
    dest = os.fspath(dest_url)
    options = dict(storage_options) if storage_options else None
    jobs = JobDescription(sc)
    try:
        if isinstance(src, (str, os.PathLike)):
            urls = _source_files(os.fspath(src), dest, None, True, options)
            partitions = 1
        else:
            jobs.set(f"sparkbatch: collect the file paths for file batches of {size}")
            urls = src.collect()
            partitions = src.getNumPartitions()
            for i, url in enumerate(urls):
                if not isinstance(url, (str, os.PathLike)):
                    raise TypeError(
                        f"src must be an RDD of file paths (str), element {i} is a "
                        f"{type(url).__name__}"
                    )
            urls = [os.fspath(u) for u in urls]
            if not urls:
                raise FileNotFoundError(f"src holds no file paths; nothing to write to {dest}")
        groups = plan_file_batches(urls, size, seed)
        export_id = begin_export(
            dest, ARCHIVE_PATTERN, overwrite=overwrite, storage_options=options, suffix=".zip"
        )
        slices = max(1, min(len(groups), max(partitions, sc.defaultParallelism)))
        jobs.set(f"sparkbatch: file batches of {size} to {dest}")
        with executor_errors():
            written = (
                sc.parallelize(list(enumerate(groups)), slices)
                .mapPartitions(WriteFileBatches(dest, options))
                .collect()
            )
    finally:
        jobs.restore()
    return _commit(dest, export_id, written, size, options)
