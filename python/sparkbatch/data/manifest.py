"""The manifest of an exported directory, and how an export commits (NOTE [export commit]).

``batch_and_export`` and ``export_datasets`` write ``_in_progress.json`` before their first file
and ``_manifest.json`` after their last, so the manifest lists exactly the files of the
successful attempts and a directory without it is recognisably incomplete. Readers use the
manifest when present (one small read instead of a listing of thousands of objects, and exact
example counts), refuse an incomplete export, and list other directories.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from sparkbatch.data.format import FORMAT_NAME, FORMAT_VERSION, SUFFIX
from sparkbatch.errors import FormatError, IncompleteExportError
from sparkbatch.storage import (
    exists,
    is_local,
    join,
    list_files,
    list_tree,
    open_output,
    read_bytes,
    resolve,
)
from sparkbatch.storage.paths import is_hidden, temporary_target

__all__ = [
    "MANIFEST_NAME",
    "PENDING_NAME",
    "begin_export",
    "check_complete",
    "check_shapes",
    "check_suffix",
    "commit_export",
    "describe",
    "minibatch_files",
    "part_pattern",
    "read_manifest",
    "read_marker",
    "write_manifest",
]

MANIFEST_NAME = "_manifest.json"
PENDING_NAME = "_in_progress.json"


def describe(data: Any) -> dict[str, Any]:
    """Example count and tensor shapes/dtypes of a DataSet or MultiDataSet, for the manifest."""
    if hasattr(data, "features_mask"):
        named = {
            "features": data.features,
            "labels": data.labels,
            "features_mask": data.features_mask,
            "labels_mask": data.labels_mask,
        }
    else:
        named = {f"features.{i}": a for i, a in enumerate(data.features)}
        named.update({f"labels.{i}": a for i, a in enumerate(data.labels)})
        named.update({f"features_mask.{i}": a for i, a in enumerate(data.features_masks)})
        named.update({f"labels_mask.{i}": a for i, a in enumerate(data.labels_masks)})
    return {
        "kind": type(data).__name__,
        "num_examples": int(data.num_examples),
        "tensors": {
            name: {"dtype": str(a.dtype), "shape": list(a.shape)}
            for name, a in named.items()
            if a is not None
        },
    }


def write_manifest(
    directory: str,
    entries: Sequence[Mapping[str, Any]],
    *,
    storage_options: Mapping[str, Any] | None = None,
    **extra: Any,
) -> str:
    """Write ``_manifest.json`` atomically; ``entries`` hold ``path`` (relative) and details."""
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "num_files": len(entries),
        "num_examples": sum(int(e["num_examples"]) for e in entries),
        **extra,
        "files": list(entries),
    }
    url = join(directory, MANIFEST_NAME)
    with open_output(url, storage_options=dict(storage_options or {})) as f:
        f.write(json.dumps(manifest, indent=1).encode())
    return url


def read_manifest(
    directory: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The manifest of ``directory``, or None when it has none."""
    url = join(directory, MANIFEST_NAME)
    manifest = _read_json(url, dict(storage_options or {}), "the manifest")
    if manifest is None:
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        raise FormatError(f'{url}: expected an object with a "files" list, found {manifest!r:.80}')
    for i, entry in enumerate(files):
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not path.strip("/") or ".." in path.split("/"):
            raise FormatError(
                f'{url}: files[{i}] must be an object with a relative "path" inside the '
                f"directory, found {entry!r:.80}"
            )
    return manifest


# ---------------------------------------------------------------------------------------------
# NOTE [export commit]: an export is complete only once its manifest is written.
#
# begin_export() writes ``_in_progress.json`` (an export id, the start time and the pattern of
# the part names) before anything else; commit_export() writes ``_manifest.json`` with the same
# id and then removes the marker. A directory whose marker has no manifest of the same id holds
# a failed, killed or still-running export, and every reader (minibatch_files, hence
# list_paths, FileDataSetIterator and training) refuses it with IncompleteExportError. A crash
# between the manifest and the marker's removal leaves both with one id: complete. Directories
# without a marker (files saved one by one, DL4J exports) are read by listing, as before.
#
# Overwriting removes only what an earlier export wrote: the files its manifest lists, or, for
# an incomplete one, the files named by its marker's pattern (and their temporaries). Any other
# minibatch file in the way is an error that names it, never deleted.

def part_pattern(prefix: str) -> str:
    """The regular expression of ``{prefix}_{index:06d}.safetensors``, the names of
    :func:`~sparkbatch.data.export_datasets`."""
    return re.escape(prefix) + r"_\d{6,}" + re.escape(SUFFIX)


def _read_json(url: str, options: dict[str, Any], what: str) -> Any:
    """The JSON document at ``url``, or None where there is none: one GET, no existence check
    first (a HEAD more per read on object stores, and a race with the writer)."""
    try:
        data = read_bytes(url, storage_options=options)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{url}: {what} is not valid JSON ({e})") from None


def read_marker(
    directory: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``_in_progress.json`` marker of ``directory`` (an export that has not committed), or
    None. An unreadable marker reads as ``{}``: still a marker."""
    try:
        marker = _read_json(
            join(directory, PENDING_NAME), dict(storage_options or {}), "the export marker"
        )
    except FormatError:
        return {}
    if marker is None:
        return None
    return marker if isinstance(marker, dict) else {}


def _incomplete(directory: str, marker: Mapping[str, Any]) -> IncompleteExportError:
    started = f" started {marker['started']}" if isinstance(marker.get("started"), str) else ""
    return IncompleteExportError(
        f"{directory}: incomplete export (it has {PENDING_NAME}{started} but no {MANIFEST_NAME} "
        "of that export): the export failed or is still running, so its files are not a whole "
        "data set; re-run the export with overwrite=True",
        directory=directory,
    )


def check_complete(
    directory: str,
    manifest: Mapping[str, Any] | None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Raise IncompleteExportError if ``directory`` holds an export that has not committed
    (NOTE [export commit]); ``manifest`` is its manifest as read, or None."""
    marker = read_marker(directory, storage_options=storage_options)
    if marker is None:
        return
    if manifest is not None and "export_id" in marker:
        if manifest.get("export_id") == marker["export_id"]:
            return  # committed; the process died before it removed the marker
    raise _incomplete(directory, marker)


def _matches(pattern: Any, name: str) -> bool:
    if not isinstance(pattern, str):
        return False
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def begin_export(
    directory: str,
    names: str,
    *,
    overwrite: bool,
    storage_options: Mapping[str, Any] | None = None,
    suffix: str = SUFFIX,
) -> str:
    """Start an export into ``directory``: check what is there, write the marker, and with
    ``overwrite`` remove the files of an earlier export. Returns the new export's id.

    ``names`` is the regular expression of the part names this export writes (relative to
    ``directory``); ``suffix`` is the ending of the data files an export writes and guards
    (``.zip`` for FileBatch archives). See NOTE [export commit].

    Raises
    ------
    FileExistsError
        Without ``overwrite``: the directory holds minibatch files, a manifest or a marker.
        With it: the directory holds minibatch files that no earlier export there wrote.
    NotADirectoryError
        ``directory`` is a file.
    """
    options = dict(storage_options or {})
    fs, root = resolve(directory, options)
    removable: list[str] = []
    if exists(directory, storage_options=options):
        if not fs.isdir(root):
            raise NotADirectoryError(errno.ENOTDIR, "the export directory is a file", directory)
        removable = _previous_export(directory, names, overwrite, options, suffix)
    export_id = secrets.token_hex(16)
    marker = {
        "format": FORMAT_NAME,
        "export_id": export_id,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "names": names,
    }
    with open_output(join(directory, PENDING_NAME), storage_options=options) as f:
        f.write(json.dumps(marker, indent=1).encode())
    if removable:  # the manifest comes first: readers see an incomplete export from here on
        fs.rm([resolve(url, options)[1] for url in removable])
    return export_id


def _previous_export(
    directory: str, names: str, overwrite: bool, options: dict[str, Any], suffix: str = SUFFIX
) -> list[str]:
    """The files of an earlier export in ``directory`` that ``overwrite`` may remove; raise if
    anything else, or without ``overwrite`` anything at all, is in the way."""
    relative = {url: rel for rel, url in list_tree(directory, storage_options=options)}
    present = set(relative.values())
    has_manifest = MANIFEST_NAME in present
    marker = read_marker(directory, storage_options=options) if PENDING_NAME in present else None
    minibatches = [url for url, rel in relative.items() if _is_minibatch(rel, suffix)]
    if not overwrite:
        if minibatches or has_manifest or marker is not None:
            count = f"{len(minibatches)} minibatch file(s)"
            what = (
                f"an incomplete export ({PENDING_NAME}, {count})"
                if marker is not None
                else f"an export ({MANIFEST_NAME}, {count})"
                if has_manifest
                else f"{count}, e.g. {minibatches[0]}"
            )
            raise FileExistsError(
                errno.EEXIST,
                f"directory already holds {what} (pass overwrite=True to replace an earlier "
                "export, or export to an empty directory)",
                directory,
            )
        return []
    # What the earlier export wrote: the files its manifest lists, and for an incomplete one
    # the names its marker gives (an unreadable marker: this export's own names).
    listed: set[str] = set()
    patterns: list[Any] = []
    if has_manifest:
        manifest = read_manifest(directory, storage_options=options) or {"files": []}
        listed = {entry["path"].strip("/") for entry in manifest["files"]}
        patterns.append(manifest.get("names"))  # for its temporaries only (below)
    if marker is not None:
        patterns.append(marker.get("names", names))
    unlisted = patterns[1:] if has_manifest else patterns
    ours = [
        url
        for url in minibatches
        if relative[url] in listed or any(_matches(p, relative[url]) for p in unlisted)
    ]
    others = sorted(set(minibatches) - set(ours))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise FileExistsError(
            errno.EEXIST,
            f"directory holds {len(others)} minibatch file(s) that no sparkbatch export there "
            f"wrote ({shown}); overwrite=True removes only the files an earlier export's "
            f"{MANIFEST_NAME} or {PENDING_NAME} names: move these, or export to another directory",
            directory,
        )
    temporaries = []
    for url, rel in relative.items():
        target = temporary_target(rel) if "/" not in rel else None
        if target and any(_matches(p, target) for p in patterns):
            temporaries.append(url)
    return ([join(directory, MANIFEST_NAME)] if has_manifest else []) + ours + temporaries


def commit_export(
    directory: str,
    export_id: str,
    entries: Sequence[Mapping[str, Any]],
    *,
    storage_options: Mapping[str, Any] | None = None,
    **extra: Any,
) -> str:
    """Complete the export ``export_id``: check that its minibatches agree in shape, write the
    manifest, remove the marker. Returns the manifest's URL.

    Raises
    ------
    ValueError
        Two minibatches differ in shape (other than in the example axis, or the time axis of a
        masked sequence); the export stays incomplete.
    """
    check_shapes(entries, directory)
    marker = read_marker(directory, storage_options=storage_options) or {}
    names = marker.get("names")
    url = write_manifest(
        directory,
        entries,
        storage_options=storage_options,
        export_id=export_id,
        names=names,
        **extra,
    )
    options = dict(storage_options or {})
    fs, root = resolve(directory, options)
    if is_local(fs) and isinstance(names, str):  # only local writers leave temporaries
        with os.scandir(root) as found:
            for entry in found:
                target = temporary_target(entry.name)
                if target and _matches(names, target):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
    if marker.get("export_id") == export_id:
        fs.rm(resolve(join(directory, PENDING_NAME), options)[1])
    return url


def shape_signature(entry: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shapes of a manifest entry's tensors without the axes that may differ between the
    minibatches of one export: the example axis, and the time axis of a masked sequence."""
    tensors = entry["tensors"]
    signature = {}
    for name, tensor in tensors.items():
        shape = tuple(tensor["shape"][1:])
        base, _, index = name.partition(".")
        if base.endswith("_mask"):
            shape = ()
        else:
            mask = f"{base}_mask" + (f".{index}" if index else "")
            if mask in tensors and shape:
                shape = shape[:-1]
        signature[name] = shape
    return signature


def check_shapes(entries: Sequence[Mapping[str, Any]], where: str) -> None:
    """Raise ValueError naming the first minibatch (manifest entry) whose kind or shapes differ
    from the first one's; ``where`` names the export."""
    if not entries:
        return
    first = entries[0]
    expected = shape_signature(first)
    for entry in entries[1:]:
        found = shape_signature(entry)
        if entry["kind"] == first["kind"] and found == expected:
            continue
        raise ValueError(
            f"{where}: minibatch {entry['path']} does not match {first['path']}: "
            f"{_differences(first, entry)}; every minibatch of an export must agree in kind and "
            "in shape except for the example axis (and the time axis of masked sequences)"
        )


def _differences(first: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    if first["kind"] != other["kind"]:
        return f"a {other['kind']} where the first is a {first['kind']}"
    expected, found = shape_signature(first), shape_signature(other)
    parts = []
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            parts.append(f"it has no {name}")
        elif name not in expected:
            parts.append(f"it has a {name} the first has not")
        elif expected[name] != found[name]:
            shape, first_shape = other["tensors"][name]["shape"], first["tensors"][name]["shape"]
            parts.append(f"{name} of shape {tuple(shape)} where the first has {tuple(first_shape)}")
    return ", ".join(parts)


def minibatch_files(
    directory: str,
    *,
    suffix: str | tuple[str, ...] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """URLs of the data files of ``directory``: from its manifest, else by listing it.

    A listing takes every visible file under ``directory``, recursively, sorted by path: names
    and directories starting with ``.`` or ``_`` are skipped (``_SUCCESS``, ``_temporary/``,
    ``.crc``), as Hadoop does, and file names do not matter otherwise (``dataset_0.bin`` as the
    seed's exports name them, ``.zip`` archives for a custom loader). A manifest lists exactly
    the files of its export, so stray files beside an export are never read.

    Parameters
    ----------
    directory : str
        Directory (local path or fsspec URL); a URL naming one file gives that file.
    suffix : str or tuple of str, optional
        Keep only files whose names end with (one of) these, e.g. ``".bin"``; applies to the
        manifest's list too.
    storage_options : mapping, optional
        Keyword arguments for the file system.

    Raises
    ------
    FileNotFoundError
        Nothing exists at ``directory``, or it yields no file (none at all, or none with
        ``suffix``): the message names it and says what it holds.
    IncompleteExportError
        ``directory``, or a directory under it, holds an export that failed or is still
        running (NOTE [export commit]).

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet
    >>> DataSet(np.zeros((2, 1))).save("memory://manifest-doc/b.safetensors")
    >>> DataSet(np.zeros((2, 1))).save("memory://manifest-doc/dataset_0.bin")
    >>> minibatch_files("memory://manifest-doc")
    ['memory://manifest-doc/b.safetensors', 'memory://manifest-doc/dataset_0.bin']
    >>> minibatch_files("memory://manifest-doc", suffix=".bin")
    ['memory://manifest-doc/dataset_0.bin']
    >>> minibatch_files("memory://manifest-doc", suffix=".zip")
    Traceback (most recent call last):
    FileNotFoundError: no files ending in '.zip' under memory://manifest-doc; it holds 2 files: \
b.safetensors, dataset_0.bin
    >>> import fsspec; fsspec.filesystem("memory").rm("/manifest-doc", recursive=True)
    """
    suffixes = check_suffix(suffix)
    options = dict(storage_options or {})
    manifest = read_manifest(directory, storage_options=options)
    check_complete(directory, manifest, storage_options=options)
    if manifest is not None:
        listed = [entry["path"] for entry in manifest["files"]]
        found = [join(directory, path) for path in listed if _wanted(path, suffixes)]
        if not found:
            raise _nothing_found(
                directory, suffixes, f"its {MANIFEST_NAME} lists {_count_names(listed)}"
            )
        return found
    tree = list_tree(directory, storage_options=options)
    for rel, _ in tree:
        if rel == PENDING_NAME:  # an export began here since the check above
            raise _incomplete(directory, read_marker(directory, storage_options=options) or {})
        if rel.endswith("/" + PENDING_NAME):  # an export in a subdirectory
            sub = join(directory, rel.rsplit("/", 1)[0])
            check_complete(
                sub, read_manifest(sub, storage_options=options), storage_options=options
            )
    if not tree:  # one file, an empty directory, or nothing (FileNotFoundError)
        found = list_files(directory, storage_options=options)
        if not found:
            raise _nothing_found(directory, suffixes, "it is empty")
        if not _wanted(found[0], suffixes):
            raise _nothing_found(directory, suffixes, "it is a file of another name")
        return found
    visible = [(rel, url) for rel, url in tree if not is_hidden(rel)]
    found = [url for rel, url in visible if _wanted(rel, suffixes)]
    if not found:
        if visible:
            holds = f"it holds {_count_names([rel for rel, _ in visible])}"
        else:
            holds = f"it holds only hidden files: {_names([rel for rel, _ in tree])}"
        raise _nothing_found(directory, suffixes, holds)
    return found


def check_suffix(suffix: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``suffix`` (a file name ending or a tuple of them, or None) as a tuple, or None;
    TypeError or ValueError where it is neither."""
    if suffix is None:
        return None
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if not isinstance(suffixes, tuple) or not all(isinstance(s, str) for s in suffixes):
        raise TypeError(
            f"suffix must be a str (e.g. '.bin'), a tuple of str or None, got {suffix!r:.80}"
        )
    if not suffixes or not all(suffixes):
        raise ValueError(f"suffix must name a file name ending such as '.bin', got {suffix!r}")
    return suffixes


def _wanted(relative: str, suffixes: tuple[str, ...] | None) -> bool:
    return suffixes is None or relative.rsplit("/", 1)[-1].endswith(suffixes)


def _names(names: Sequence[str], shown: int = 5) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _count_names(names: Sequence[str]) -> str:
    if not names:
        return "no files"
    return f"{len(names)} file{'s' if len(names) != 1 else ''}: {_names(names)}"


def _nothing_found(
    directory: str, suffixes: tuple[str, ...] | None, holds: str
) -> FileNotFoundError:
    """The FileNotFoundError of a directory that yields no file, saying what it holds."""
    wanted = "files" if suffixes is None else "files ending in " + " or ".join(map(repr, suffixes))
    # a message alone: OSError's str() would show errno and filename instead of it
    return FileNotFoundError(f"no {wanted} under {directory}; {holds}")


def _is_minibatch(relative: str, suffix: str = SUFFIX) -> bool:
    """Whether a listed file is a minibatch to read: a visible file ending in ``suffix``."""
    return relative.endswith(suffix) and not is_hidden(relative)
