"""Storage: fsspec URLs and local paths, atomic writes, stable listings."""

from __future__ import annotations

from sparkbatch.storage.paths import (
    atomic_local_path,
    exists,
    is_local,
    join,
    list_files,
    open_output,
    read_bytes,
    resolve,
)

__all__ = [
    "atomic_local_path",
    "exists",
    "is_local",
    "join",
    "list_files",
    "open_output",
    "read_bytes",
    "resolve",
]
