"""The minibatch file format: one DataSet or MultiDataSet per safetensors file.

``docs/format.md`` is the specification; this module and ``csrc/minibatch_format.cpp`` implement
it. In short: an 8-byte little-endian header length, a JSON header, then the data section.
Tensors are named ``features``, ``labels``, ``features_mask`` and ``labels_mask`` (MultiDataSet:
``features.0``, ``labels_mask.1``, ...), start on 64-byte boundaries (filler ``__pad.N`` U8 tensors
keep the offsets contiguous, as safetensors requires), and ``__metadata__`` records the kind, the
format version and the CRC32C of the data section. Class labels may be stored as int32 indices
with ``num_classes:<tensor>`` in the metadata; loading one-hot encodes them natively.

Loading a local file memory-maps it and returns read-only views, so nothing is copied; any other
source (fsspec URL, file object, bytes) is read into one buffer.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Mapping
from typing import IO, Any, Union

import numpy as np

from sparkbatch import _native
from sparkbatch.data.dataset import DataSet
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.errors import FormatError
from sparkbatch.storage import atomic_local_path, is_local, open_output, read_bytes, resolve

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUFFIX",
    "save",
    "load",
    "to_bytes",
    "from_bytes",
    "save_tensors",
    "load_tensors",
]

FORMAT_NAME = "sparkbatch.minibatch"
FORMAT_VERSION = 1  # numbered apart from the package version; bump on incompatible changes
SUFFIX = ".safetensors"
# Files smaller than this are read into one buffer instead of memory-mapped: below about 2 MiB
# the page faults and the unmap cost more than one copy out of the page cache (docs/performance.md).
_MMAP_MIN_BYTES = 2 << 20
_READ_ANY_SIZE = (1 << 64) - 1  # read_file's size limit that never declines a file
# Compact labels (NOTE in docs/format.md): what a reader expands them to, at most.
_MAX_CLASSES = (1 << 31) - 1  # class indices are int32
_MAX_ONE_HOT_BYTES = 1 << 32
_ALIGNMENT = 64  # of the data section and of every tensor in it (docs/format.md)

_DTYPE_CODES = {
    np.dtype("<f8"): "F64",
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("<u8"): "U64",
    np.dtype("<u4"): "U32",
    np.dtype("<u2"): "U16",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}
_NUMPY_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}

Minibatch = Union[DataSet, MultiDataSet]  # noqa: UP007 (a runtime alias: 3.10's | cannot mix with a string)
PathLike = Union[str, "os.PathLike[str]"]


def _plain_local_path(target: Any, storage_options: Mapping[str, Any] | None) -> str | None:
    """``target`` as a path when it is a plain local path (no URL, no options), else None.

    Plain paths skip fsspec's URL resolution, which costs more than reading a small file.
    """
    if storage_options or not isinstance(target, (str, os.PathLike)):
        return None
    path = os.fspath(target)
    if not isinstance(path, str) or "://" in path or "::" in path:
        return None
    return path


# ---------------------------------------------------------------------------------------------
# Writing


def _dtype_code(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """Return the safetensors dtype of ``array`` and the array as C-ordered little-endian data."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = _DTYPE_CODES.get(dtype)
    if code is None:
        raise TypeError(
            f"tensor {name!r} has dtype {array.dtype}, which the minibatch format cannot store "
            f"(use one of {', '.join(str(d) for d in _DTYPE_CODES)})"
        )
    return code, np.ascontiguousarray(array, dtype=dtype)


def _compact_labels(name: str, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Turn one-hot labels ``[n, C]`` or ``[n, C, t]`` into int32 indices ``[n]`` / ``[n, t]``."""
    if labels.ndim not in (2, 3) or labels.shape[1] == 0:
        raise ValueError(
            f"compact_labels needs one-hot {name} shaped [n, classes] or [n, classes, steps], "
            f"got shape {labels.shape}"
        )
    binary = (labels == 0) | (labels == 1)
    if not binary.all() or not (labels.sum(axis=1) == 1).all():
        raise ValueError(
            f"compact_labels needs one-hot {name} (exactly one 1 per example and step, zeros "
            "elsewhere); store them uncompressed with compact_labels=False"
        )
    return labels.argmax(axis=1).astype(np.int32), labels.shape[1]


def _tensors_and_metadata(
    data: Minibatch, compact_labels: bool
) -> tuple[list[tuple[str, str, np.ndarray]], dict[str, str]]:
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    if isinstance(data, DataSet):
        metadata["kind"] = "DataSet"
        named = [
            ("features", data.features),
            ("labels", data.labels),
            ("features_mask", data.features_mask),
            ("labels_mask", data.labels_mask),
        ]
        label_names = {"labels"}
    elif isinstance(data, MultiDataSet):
        metadata["kind"] = "MultiDataSet"
        metadata["num_features"] = str(len(data.features))
        metadata["num_labels"] = str(len(data.labels))
        named = [(f"features.{i}", a) for i, a in enumerate(data.features)]
        named += [(f"labels.{i}", a) for i, a in enumerate(data.labels)]
        named += [(f"features_mask.{i}", a) for i, a in enumerate(data.features_masks or [])]
        named += [(f"labels_mask.{i}", a) for i, a in enumerate(data.labels_masks or [])]
        label_names = {f"labels.{i}" for i in range(len(data.labels))}
    else:
        raise TypeError(f"expected a DataSet or MultiDataSet, got {type(data).__name__}")
    if data.metadata:
        metadata["metadata"] = json.dumps(data.metadata, sort_keys=True)

    tensors = []
    for name, array in named:
        if array is None:
            continue
        if compact_labels and name in label_names:
            array, num_classes = _compact_labels(name, array)
            metadata[f"num_classes:{name}"] = str(num_classes)
        code, array = _dtype_code(name, array)
        tensors.append((name, code, array))
    return tensors, metadata


def to_bytes(data: Minibatch, *, compact_labels: bool = False) -> bytes:
    """Encode a DataSet or MultiDataSet as the bytes of one minibatch file.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet
    >>> blob = to_bytes(DataSet(np.ones((2, 3), np.float32), np.eye(2, dtype=np.float32)))
    >>> from_bytes(blob).features.shape
    (2, 3)
    """
    tensors, metadata = _tensors_and_metadata(data, compact_labels)
    return _native.serialize(tensors, metadata)


def save(
    data: Minibatch,
    target: PathLike | IO[bytes],
    *,
    compact_labels: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``data`` to a local path, an fsspec URL or a binary file object, atomically.

    A local file is written by the native writer under a temporary name next to the target and
    renamed into place; a remote one is uploaded in one piece. Either way no reader ever sees a
    half-written file, and a retried writer replaces its own file instead of adding another.

    Parameters
    ----------
    data : DataSet or MultiDataSet
        What to store.
    target : str, os.PathLike or binary file object
        Where to store it.
    compact_labels : bool
        Store one-hot labels as int32 class indices (4 bytes per example instead of 4 per class);
        loading restores the one-hot float32 arrays.
    storage_options : mapping, optional
        Passed to fsspec for URLs.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from sparkbatch.data import DataSet
    >>> ds = DataSet(np.arange(6, dtype=np.float32).reshape(3, 2), np.eye(3, dtype=np.float32))
    >>> path = os.path.join(tempfile.mkdtemp(), "batch.safetensors")
    >>> save(ds, path, compact_labels=True)
    >>> load(path).labels.tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    tensors, metadata = _tensors_and_metadata(data, compact_labels)
    _write(tensors, metadata, target, storage_options)


def save_tensors(
    tensors: Mapping[str, np.ndarray],
    target: PathLike | IO[bytes],
    metadata: Mapping[str, str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write named arrays and string metadata as one checksummed safetensors file, atomically.

    The same writer as :func:`save`, for files that hold something other than a minibatch (a
    network's parameters, for instance); ``metadata`` should name what the file holds.
    """
    named = [(name, *_dtype_code(name, np.asarray(array))) for name, array in tensors.items()]
    _write(named, dict(metadata), target, storage_options)


def _write(
    tensors: list[tuple[str, str, np.ndarray]],
    metadata: dict[str, str],
    target: PathLike | IO[bytes],
    storage_options: Mapping[str, Any] | None,
) -> None:
    if hasattr(target, "write"):
        target.write(_native.serialize(tensors, metadata))
        return
    local = _plain_local_path(target, storage_options)
    if local is None:
        fs, path = resolve(target, storage_options)
        local = path if is_local(fs) else None
    if local is not None:
        with atomic_local_path(local) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _native.write_file(fd, tensors, metadata)
            except OSError as e:
                raise OSError(e.errno, f"cannot write minibatch file: {e.strerror}", local) from e
            finally:
                os.close(fd)
        return
    with open_output(target, storage_options=storage_options) as out:
        out.write(_native.serialize(tensors, metadata))


# ---------------------------------------------------------------------------------------------
# Reading


def _map_local(path: str) -> mmap.mmap:
    """A read-only memory map of a local file."""
    with open(path, "rb") as f:
        # No MAP_POPULATE: the kernel's fault-around maps 64 KiB per fault, which measured faster
        # than populating the whole mapping up front, and verify=False then touches nothing.
        return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)


def _indexed(names: dict[str, np.ndarray], prefix: str, count: int) -> list:
    return [names.pop(f"{prefix}.{i}", None) for i in range(count)]


def _metadata_int(metadata: Mapping[str, str], key: str, source: str, limit: int) -> int:
    """``metadata[key]`` as an int in ``[0, limit]``: plain ASCII digits only (``int()`` would
    take ``"1_0"``, ``" 7"`` and other scripts' digits), so a hostile header cannot make the
    reader build or allocate more than the file can describe."""
    text = metadata[key]
    if not (text.isascii() and text.isdigit()):
        raise FormatError(f"{source}: metadata {key}={text!r} is not a non-negative integer")
    value = int(text)
    if value > limit:
        raise FormatError(f"{source}: metadata {key}={value} is more than {limit}")
    return value


def _count(
    metadata: Mapping[str, str], key: str, names: Mapping[str, Any], prefix: str, source: str
) -> int:
    """How many ``{prefix}.{i}`` tensors a MultiDataSet has: ``metadata[key]``, at most the
    number of tensors in the file, or else one past the highest index present."""
    if key in metadata:
        return _metadata_int(metadata, key, source, len(names))
    indices = [
        int(index)
        for index in (n.split(".", 1)[1] for n in names if n.startswith(prefix + "."))
        if index.isascii() and index.isdigit()
    ]
    return max(indices) + 1 if indices else 0


def _read_arrays(buffer: Any, source: str, verify: bool) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors of a safetensors buffer by name (views of it), and its metadata, after every
    check."""
    file = np.frombuffer(buffer, np.uint8)
    arrays, metadata, data_start = _native.read_header(file, source, _NUMPY_DTYPES)
    _check(metadata, _native.crc32c(file[data_start:]) if verify else None, source)
    return arrays, metadata


def _check(metadata: Mapping[str, str], crc: int | None, source: str) -> None:
    """Check the CRC (``crc``: of the data section, None to skip) and the format version of a
    parsed file."""
    if crc is not None and "crc32c" in metadata:
        expected = metadata["crc32c"]
        if f"{crc:08x}" != expected.lower():
            raise FormatError(
                f"{source}: CRC32C of the data section is {crc:08x} but the header records "
                f"{expected}: the file is corrupt"
            )
    version = metadata.get("format_version", str(FORMAT_VERSION))
    if version != str(FORMAT_VERSION):
        raise FormatError(
            f"{source}: minibatch format version {version}; this sparkbatch reads version "
            f"{FORMAT_VERSION} (upgrade sparkbatch)"
        )


def _read(
    source: Any, storage_options: Mapping[str, Any] | None, verify: bool, mmap: bool = True
) -> tuple[dict[str, np.ndarray], dict, str]:
    """The checked tensors and metadata of a file, and the name errors give it.

    Local files under 2 MiB (any size with ``mmap=False``) are read (and CRC-checked as they are
    read) by one native call; larger local files are memory-mapped; other sources are read into
    one buffer.
    """
    if hasattr(source, "read"):
        name = str(getattr(source, "name", None) or "<file object>")
        return (*_read_arrays(source.read(), name, verify), name)
    name = os.fspath(source)
    path = _plain_local_path(source, storage_options)
    if path is None:
        fs, fs_path = resolve(source, storage_options)
        if not is_local(fs):
            data = read_bytes(name, storage_options=dict(storage_options or {}))
            return (*_read_arrays(data, name, verify), name)
        path = fs_path
    limit = _MMAP_MIN_BYTES if mmap else _READ_ANY_SIZE
    small = _native.read_file(path, name, limit, verify, _NUMPY_DTYPES)
    if small is not None:
        arrays, metadata, crc = small
        _check(metadata, crc, name)
        return arrays, metadata, name
    return (*_read_arrays(_map_local(path), name, verify), name)


def load_tensors(
    source: PathLike | IO[bytes],
    *,
    verify: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a file written by :func:`save_tensors` (or any safetensors file): arrays and metadata.

    The arrays are read-only views, as :func:`load` gives; every check of :func:`load` applies.
    """
    arrays, metadata, _ = _read(source, storage_options, verify)
    return arrays, metadata


def _decode(buffer: Any, source: str, verify: bool) -> Minibatch:
    return _minibatch(*_read_arrays(buffer, source, verify), source)


def _minibatch(arrays: dict[str, np.ndarray], metadata: dict, source: str) -> Minibatch:
    """The DataSet or MultiDataSet that a file's checked tensors and metadata describe."""
    for key in metadata:
        if key.startswith("num_classes:"):
            name = key.split(":", 1)[1]
            if name not in arrays:
                raise FormatError(f"{source}: metadata {key} names no tensor of the file")
            num_classes = _metadata_int(metadata, key, source, _MAX_CLASSES)
            expanded = arrays[name].size * num_classes * 4
            if expanded > _MAX_ONE_HOT_BYTES:
                raise FormatError(
                    f"{source}: compact labels {name!r} of {arrays[name].size} examples and "
                    f"{num_classes} classes would expand to {expanded} bytes, more than a "
                    f"reader allocates ({_MAX_ONE_HOT_BYTES}); store such labels as they are"
                )
            try:
                arrays[name] = _native.one_hot(arrays[name], num_classes)
            except (ValueError, TypeError) as e:
                raise FormatError(f"{source}: compact labels {name!r}: {e}") from None
    try:
        user_metadata = json.loads(metadata["metadata"]) if "metadata" in metadata else None
    except json.JSONDecodeError as e:
        raise FormatError(f"{source}: metadata 'metadata' is not valid JSON ({e})") from None

    kind = metadata.get("kind") or ("MultiDataSet" if "features.0" in arrays else "DataSet")
    try:
        if kind == "DataSet":
            if "features" not in arrays:
                raise FormatError(
                    f"{source}: no tensor named 'features' (found {sorted(arrays) or 'none'}): "
                    "not a minibatch file"
                )
            result: Minibatch = _dataset(
                arrays.pop("features"),
                arrays.pop("labels", None),
                arrays.pop("features_mask", None),
                arrays.pop("labels_mask", None),
                user_metadata,
            )
        elif kind == "MultiDataSet":
            n_in = _count(metadata, "num_features", arrays, "features", source)
            n_out = _count(metadata, "num_labels", arrays, "labels", source)
            features = _indexed(arrays, "features", n_in)
            labels = _indexed(arrays, "labels", n_out)
            missing = [f"features.{i}" for i, a in enumerate(features) if a is None]
            missing += [f"labels.{i}" for i, a in enumerate(labels) if a is None]
            if missing or not features:
                raise FormatError(
                    f"{source}: MultiDataSet tensors missing: {missing or ['features.0']}"
                )
            f_masks = _indexed(arrays, "features_mask", n_in)
            l_masks = _indexed(arrays, "labels_mask", n_out)
            result = MultiDataSet(
                features,
                labels,
                f_masks if any(m is not None for m in f_masks) else None,
                l_masks if any(m is not None for m in l_masks) else None,
                metadata=user_metadata,
            )
        else:
            raise FormatError(f"{source}: unknown kind {kind!r} (expected DataSet or MultiDataSet)")
    except ValueError as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"{source}: {e}") from None
    if arrays:
        raise FormatError(f"{source}: unexpected tensors {sorted(arrays)} for a {kind}")
    return result


def _dataset(
    features: np.ndarray,
    labels: np.ndarray | None,
    features_mask: np.ndarray | None,
    labels_mask: np.ndarray | None,
    metadata: Any,
) -> DataSet:
    """The file's DataSet. The usual minibatch (float features and labels ``[n, ...]``, no
    masks, no metadata) needs none of the constructor's conversions and only its example-count
    check, made here; anything else goes through the full constructor and its checks."""
    if (
        features_mask is None
        and labels_mask is None
        and metadata is None
        and features.dtype.kind == "f"
        and features.ndim >= 2
        and (
            labels is None
            or (
                labels.dtype.kind == "f"
                and labels.ndim >= 2
                and labels.shape[0] == features.shape[0]
            )
        )
    ):
        return DataSet._unchecked(features, labels)
    return DataSet(features, labels, features_mask, labels_mask, metadata=metadata)


def from_bytes(
    buffer: bytes | bytearray | memoryview, *, name: str = "<bytes>", verify: bool = True
) -> Minibatch:
    """Decode the bytes of one minibatch file; the arrays are views into ``buffer``."""
    return _decode(buffer, name, verify)


def load(
    source: PathLike | IO[bytes],
    *,
    verify: bool = True,
    mmap: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Minibatch:
    """Read one minibatch file from a local path, an fsspec URL or a binary file object.

    Local files from 2 MiB up are memory-mapped and the arrays are read-only views of the file
    (no copy); smaller local files, where one copy costs less than the page faults of a map, and
    other sources are read into one buffer. With ``verify=True`` the CRC32C of the data section
    is checked; every header field is checked either way.

    A mapped file must not be truncated while its arrays are in use: touching a page past the
    new end kills the process with SIGBUS, as with ``np.load(mmap_mode="r")``. Where another
    program may rewrite files in place (sparkbatch's own writers never do: they rename a new
    file over the old one), pass ``mmap=False`` to read every file into memory instead.

    Raises
    ------
    FormatError
        The file is truncated, corrupt or not a minibatch/safetensors file; the message names it.

    Examples
    --------
    >>> import numpy as np, io
    >>> from sparkbatch.data import DataSet
    >>> buf = io.BytesIO()
    >>> save(DataSet(np.zeros((4, 2), np.float32), np.zeros((4, 1), np.float32)), buf)
    >>> _ = buf.seek(0)
    >>> load(buf).num_examples
    4
    """
    arrays, metadata, name = _read(source, storage_options, verify, mmap)
    return _minibatch(arrays, metadata, name)
