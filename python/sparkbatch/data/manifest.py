"""The manifest of an exported directory: every minibatch file with its example count and shapes.

``batch_and_export`` writes ``_manifest.json`` after its Spark job succeeded, so it lists exactly
the files of the successful attempts. Readers use it when present (one small read instead of a
listing of thousands of objects, and exact example counts) and list the directory otherwise.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sparkbatch.data.format import FORMAT_NAME, FORMAT_VERSION, SUFFIX
from sparkbatch.errors import FormatError
from sparkbatch.storage import exists, join, list_files, open_output, read_bytes, resolve

__all__ = [
    "MANIFEST_NAME",
    "describe",
    "minibatch_files",
    "prepare_output",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "_manifest.json"


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
    options = dict(storage_options or {})
    if not exists(url, storage_options=options):
        return None
    try:
        manifest = json.loads(read_bytes(url, storage_options=options))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{url}: not valid JSON ({e})") from None
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


def prepare_output(
    directory: str, *, overwrite: bool, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Refuse to export into ``directory`` if it holds minibatch files or a manifest, or, with
    ``overwrite``, remove them first, so that no stale file of an earlier export is read later."""
    options = dict(storage_options or {})
    fs, root = resolve(directory, options)
    if not fs.exists(root):
        return
    old = list_files(directory, suffix=SUFFIX, storage_options=options) if fs.isdir(root) else []
    manifest = join(directory, MANIFEST_NAME)
    has_manifest = exists(manifest, storage_options=options)
    if not old and not has_manifest:
        return
    if not overwrite:
        raise FileExistsError(
            errno.EEXIST,
            f"directory already holds {len(old)} minibatch file(s)"
            + (f", e.g. {old[0]}" if old else " and a manifest")
            + " (pass overwrite=True, or export to an empty directory)",
            directory,
        )
    for url in old + ([manifest] if has_manifest else []):
        fs.rm(resolve(url, options)[1])


def minibatch_files(
    directory: str, *, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """URLs of the minibatch files of ``directory``: from its manifest, else by listing it.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet
    >>> DataSet(np.zeros((2, 1))).save("memory://manifest-doc/b.safetensors")
    >>> minibatch_files("memory://manifest-doc")
    ['memory://manifest-doc/b.safetensors']
    """
    manifest = read_manifest(directory, storage_options=storage_options)
    if manifest is not None:
        return [join(directory, entry["path"]) for entry in manifest["files"]]
    return list_files(directory, suffix=SUFFIX, storage_options=dict(storage_options or {}))
