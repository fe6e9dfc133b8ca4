"""Loaders turn one stored file into one minibatch (DL4J's ``Loader``, ``Source``).

A :class:`Source` names one file (a local path or fsspec URL plus ``storage_options``) and opens
it; a :class:`Loader` is any object with a ``load(source)`` method that returns a
:class:`~sparkbatch.data.DataSet` or :class:`~sparkbatch.data.MultiDataSet`. Loaders travel to
Spark executors, so they are small picklable classes that hold settings only; whatever they need
to read a file is built inside ``load``.

The built-in loaders read sparkbatch minibatch files. A custom format needs only a class:

>>> import numpy as np
>>> from sparkbatch.data import DataSet
>>> from sparkbatch.storage import open_output
>>> class NpzLoader:
...     '''Reads ``.npz`` files holding arrays ``x`` (features) and ``y`` (labels).'''
...     def load(self, source):
...         with source.open() as f, np.load(f) as arrays:
...             return DataSet(arrays["x"], arrays["y"])
>>> with open_output("memory://sparkbatch-doc/npz/batch.npz") as f:
...     np.savez(f, x=np.ones((3, 2), np.float32), y=np.eye(3, dtype=np.float32))
>>> NpzLoader().load(Source("memory://sparkbatch-doc/npz/batch.npz"))
DataSet(num_examples=3, features=float32(3, 2), labels=float32(3, 3))
>>> isinstance(NpzLoader(), Loader)
True
>>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)

Pass such a loader to :class:`~sparkbatch.data.FileDataSetIterator` (``loader=NpzLoader()``),
``SparkNetwork.fit(directory, loader=NpzLoader())`` or ``fit_paths``. A *preprocessor* (DL4J's
``DataSetPreProcessor``: any picklable callable from a DataSet or MultiDataSet to one) is applied
after each load by the built-in loaders' ``preprocessor=`` and, around any loader, by
:class:`PreprocessingLoader`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol, Union, runtime_checkable

from sparkbatch.data.dataset import DataSet
from sparkbatch.data.format import SUFFIX, load
from sparkbatch.data.multidataset import MultiDataSet
from sparkbatch.errors import FormatError
from sparkbatch.storage import is_local, resolve

__all__ = [
    "Loader",
    "PreprocessingLoader",
    "Preprocessor",
    "check_preprocessor",
    "load_named",
    "preprocess",
    "SerializedDataSetLoader",
    "SerializedMinibatchLoader",
    "SerializedMultiDataSetLoader",
    "Source",
]

Minibatch = Union[DataSet, MultiDataSet]  # noqa: UP007 (a runtime alias, as in format.py)
#: A preprocessor: any picklable callable from a minibatch to a minibatch (DL4J's
#: ``DataSetPreProcessor``), applied on the executors after a file is loaded.
Preprocessor = Callable[[Any], Any]


def _not_found(url: str, cause: BaseException) -> FileNotFoundError:
    error = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), url)
    error.__cause__ = cause
    return error


class Source:
    """One file to load: a local path or fsspec URL, plus the options of its file system.

    The DL4J ``Source``: loaders call :meth:`open` for a binary stream, or read :attr:`url`
    themselves (e.g. to memory-map a local file). A Source holds strings only, so it pickles.

    Parameters
    ----------
    url : str or os.PathLike
        Local path or fsspec URL (``memory://``, ``s3://``, ``file://``, ...).
    storage_options : mapping, optional
        Keyword arguments for the file system (credentials, endpoint, ...).

    Examples
    --------
    >>> from sparkbatch.storage import open_output
    >>> with open_output("memory://sparkbatch-doc/src/a.bin") as f:
    ...     _ = f.write(b"abc")
    >>> source = Source("memory://sparkbatch-doc/src/a.bin")
    >>> with source.open() as f:
    ...     f.read()
    b'abc'
    >>> print(source)
    memory://sparkbatch-doc/src/a.bin
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    __slots__ = ("storage_options", "url")

    url: str
    storage_options: dict[str, Any] | None

    def __init__(
        self, url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
    ) -> None:
        path = os.fspath(url) if isinstance(url, (str, os.PathLike)) else None
        if not isinstance(path, str):
            raise TypeError(f"url must be a str or os.PathLike[str], got {type(url).__name__}")
        self.url = path
        self.storage_options = dict(storage_options) if storage_options else None

    def open(self) -> IO[bytes]:
        """Open the file for reading, in binary mode; close it (``with``) when done.

        Raises
        ------
        FileNotFoundError
            No file at :attr:`url`; the error's ``filename`` is the URL.
        """
        fs, path = resolve(self.url, self.storage_options)
        try:
            return fs.open(path, "rb")  # type: ignore[no-any-return]
        except FileNotFoundError as e:
            raise _not_found(self.url, e) from e

    def is_local(self) -> bool:
        """Whether the file is on the local file system (so :attr:`url` can be memory-mapped)."""
        return is_local(resolve(self.url, self.storage_options)[0])

    def __getstate__(self) -> tuple[str, dict[str, Any] | None]:
        return self.url, self.storage_options

    def __setstate__(self, state: tuple[str, dict[str, Any] | None]) -> None:
        self.url, self.storage_options = state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Source):
            return NotImplemented
        return (self.url, self.storage_options) == (other.url, other.storage_options)

    def __hash__(self) -> int:
        return hash(self.url)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        options = "" if self.storage_options is None else ", storage_options=..."
        return f"Source({self.url!r}{options})"


@runtime_checkable
class Loader(Protocol):
    """Anything with ``load(source) -> DataSet | MultiDataSet`` (DL4J's ``Loader<T>``).

    Implementations must be picklable (they are shipped to Spark executors): keep settings in
    plain attributes and build heavy objects inside :meth:`load`. A missing file should raise
    :class:`FileNotFoundError` and an unreadable one :class:`~sparkbatch.errors.FormatError`,
    both naming ``source.url``. See the module docstring for a complete custom loader.
    """

    def load(self, source: Source) -> DataSet | MultiDataSet:
        """Read the minibatch stored at ``source``."""
        ...


def load_named(loader: Loader, source: Source) -> DataSet | MultiDataSet:
    """``loader.load(source)``, with any error naming the file.

    An error whose message lacks the file's URL is raised again as the same type with the URL
    in front (the original chained); where the type cannot be built from a message, the
    original is raised naming the URL in a note (Python 3.11+) or its message. Iterators and
    training workers call loaders through this, so a custom loader need not name its file.
    """
    try:
        return loader.load(source)
    except Exception as e:
        if source.url in str(e):
            raise
        try:
            named = type(e)(f"{source.url}: {e}")
        except Exception:  # noqa: BLE001  (a constructor that takes other arguments)
            named = None
        if named is None or not str(named).startswith(source.url):
            _name_in_place(e, source.url)
            raise
        raise named from e


def _name_in_place(error: Exception, url: str) -> None:
    """Name ``url`` in an exception whose type cannot be rebuilt from a message: a note where
    Python has them (3.11+), else in the field its message is made of."""
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(f"while loading {url}")
    elif isinstance(error, UnicodeError) and isinstance(getattr(error, "reason", None), str):
        error.reason = f"{error.reason} (while loading {url})"  # type: ignore[attr-defined]
    elif error.args and isinstance(error.args[0], str):
        error.args = (f"{url}: {error.args[0]}", *error.args[1:])


def _name_of(preprocessor: Any) -> str:
    """How errors name a preprocessor: a function's qualified name, else its class's."""
    return str(getattr(preprocessor, "__qualname__", None) or type(preprocessor).__qualname__)


def check_preprocessor(preprocessor: Any) -> Preprocessor | None:
    """``preprocessor``, or a TypeError unless it is None or callable."""
    if preprocessor is not None and not callable(preprocessor):
        raise TypeError(
            "preprocessor must be a callable taking and returning a DataSet or MultiDataSet "
            f"(DL4J's DataSetPreProcessor), got {type(preprocessor).__name__}"
        )
    return preprocessor


def preprocess(
    preprocessor: Preprocessor,
    batch: Minibatch,
    where: str | None = None,
    *,
    dataset_only: bool = False,
) -> Minibatch:
    """``preprocessor(batch)``, checked: a TypeError naming the preprocessor, what it returned
    and ``where`` the batch came from (a file) where it is not a DataSet or MultiDataSet (not a
    DataSet with ``dataset_only``, for the conversions that make DataSets).

    Examples
    --------
    >>> import numpy as np
    >>> ds = DataSet(np.ones((2, 3), np.float32))
    >>> preprocess(lambda d: DataSet(d.features * 2), ds).features[0]
    array([2., 2., 2.], dtype=float32)
    >>> def bad(d):
    ...     return d.features
    >>> preprocess(bad, ds, "a.bin")
    Traceback (most recent call last):
    TypeError: a.bin: preprocessor bad returned ndarray, expected a DataSet or MultiDataSet
    """
    result = preprocessor(batch)
    if not isinstance(result, DataSet if dataset_only else (DataSet, MultiDataSet)):
        prefix = f"{where}: " if where else ""
        raise TypeError(
            f"{prefix}preprocessor {_name_of(preprocessor)} returned {type(result).__name__}, "
            f"expected a DataSet{'' if dataset_only else ' or MultiDataSet'}"
        )
    return result


class PreprocessingLoader:
    """A loader whose minibatches go through ``preprocessor``: any loader, any preprocessor.

    Picklable when both are, so it travels to Spark executors (``SparkNetwork`` builds one
    where it is given a ``preprocessor=`` with files). The DL4J ``loader.setPreProcessor``.

    Parameters
    ----------
    loader : Loader
        Reads one file (anything with ``load(source)``).
    preprocessor : callable
        Applied to each loaded minibatch; must return a DataSet or MultiDataSet.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import save
    >>> save(DataSet(np.ones((2, 3), np.float32)), "memory://sparkbatch-doc/p/a.safetensors")
    >>> def double(ds):
    ...     return DataSet(ds.features * 2, ds.labels)
    >>> loader = PreprocessingLoader(SerializedDataSetLoader(), double)
    >>> loader.load(Source("memory://sparkbatch-doc/p/a.safetensors")).features[0]
    array([2., 2., 2.], dtype=float32)
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    def __init__(self, loader: Loader, preprocessor: Preprocessor) -> None:
        if not callable(getattr(loader, "load", None)):
            raise TypeError(f"loader must have a load(source) method, got {type(loader).__name__}")
        if preprocessor is None:
            raise TypeError("preprocessor must be a callable, got None")
        check_preprocessor(preprocessor)
        self.loader = loader
        self.preprocessor = preprocessor

    def load(self, source: Source) -> Minibatch:
        """The minibatch ``loader`` reads at ``source``, through the preprocessor."""
        return preprocess(self.preprocessor, self.loader.load(source), source.url)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PreprocessingLoader):
            return NotImplemented
        return bool(self.loader == other.loader and self.preprocessor == other.preprocessor)

    def __hash__(self) -> int:
        return hash((PreprocessingLoader, type(self.loader), type(self.preprocessor)))

    def __repr__(self) -> str:
        return f"PreprocessingLoader({self.loader!r}, {self.preprocessor!r})"


_OTHER_FORMAT_HINT = "pass loader= for files of another format"


def _foreign(url: str, message: str) -> bool:
    """Whether a FormatError of the minibatch reader suggests a file of another format (not a
    damaged minibatch file): another name, or a header that is not a sparkbatch one."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return not name.endswith(SUFFIX) or any(
        word in message for word in ("safetensors", "header", "unknown kind", "unexpected tensors")
    )


def _load_minibatch(source: Source, verify: bool, mmap: bool = True) -> Minibatch:
    """Load a minibatch file: memory-mapped when local and ``mmap``, read in one piece
    otherwise."""
    try:
        return load(source.url, verify=verify, mmap=mmap, storage_options=source.storage_options)
    except FileNotFoundError as e:
        if e.filename == source.url:
            raise
        raise _not_found(source.url, e) from e
    except FormatError as e:
        message = str(e)
        if type(e) is not FormatError or not _foreign(source.url, message):
            raise
        hint = f" ({_OTHER_FORMAT_HINT}: a custom Loader reads them)"
        raise FormatError(message + hint) from e


class _SerializedLoader:
    """Settings shared by the built-in loaders of sparkbatch minibatch files."""

    def __init__(
        self, *, verify: bool = True, mmap: bool = True, preprocessor: Preprocessor | None = None
    ) -> None:
        check_preprocessor(preprocessor)
        self.verify = bool(verify)
        self.mmap = bool(mmap)
        self.preprocessor = preprocessor

    def __setstate__(self, state: dict[str, Any]) -> None:
        # pickles of loaders without mmap or preprocessor
        self.__dict__.update({"mmap": True, "preprocessor": None, **state})

    def _key(self) -> tuple[Any, ...]:
        return type(self), self.verify, self.mmap

    def _preprocessed(self, data: Minibatch, source: Source) -> Minibatch:
        if self.preprocessor is None:
            return data
        return preprocess(self.preprocessor, data, source.url)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _SerializedLoader)
            and other._key() == self._key()
            and bool(other.preprocessor == self.preprocessor)
        )

    def __hash__(self) -> int:  # the preprocessor may not hash: equal loaders still hash alike
        return hash(self._key())

    def __repr__(self) -> str:
        extra = "" if self.preprocessor is None else f", preprocessor={self.preprocessor!r}"
        return f"{type(self).__name__}(verify={self.verify}, mmap={self.mmap}{extra})"


class SerializedDataSetLoader(_SerializedLoader):
    """Loads a sparkbatch minibatch file holding a :class:`~sparkbatch.data.DataSet`.

    Local files are memory-mapped (the arrays are read-only views of the file); others are read
    in one piece. The DL4J ``SerializedDataSetLoader``.

    Parameters
    ----------
    verify : bool, default True
        Check the CRC32C of the data section.
    mmap : bool, default True
        Memory-map local files from 2 MiB up. A mapped file truncated in place by another
        program kills the reader with SIGBUS (see :func:`~sparkbatch.data.load`); ``False``
        reads every file into memory.
    preprocessor : callable, optional
        Applied to each loaded minibatch (DL4J's ``setPreProcessor``); it must return a
        DataSet or MultiDataSet.

    Raises
    ------
    FormatError
        From :meth:`load`: the file is corrupt, holds a MultiDataSet, or is in another format
        (the message names it and says to pass ``loader=`` for files of another format).

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet, save
    >>> save(DataSet(np.zeros((2, 3), np.float32)), "memory://sparkbatch-doc/l/a.safetensors")
    >>> SerializedDataSetLoader().load(Source("memory://sparkbatch-doc/l/a.safetensors"))
    DataSet(num_examples=2, features=float32(2, 3))
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    def load(self, source: Source) -> DataSet:
        """Read the DataSet stored at ``source``."""
        data = _load_minibatch(source, self.verify, self.mmap)
        if not isinstance(data, DataSet):
            raise FormatError(
                f"{source.url}: holds a {type(data).__name__}, not a DataSet; "
                "use SerializedMultiDataSetLoader (or FileMultiDataSetIterator)"
            )
        return self._preprocessed(data, source)  # type: ignore[return-value]


class SerializedMultiDataSetLoader(_SerializedLoader):
    """Loads a sparkbatch minibatch file as a :class:`~sparkbatch.data.MultiDataSet`.

    A file holding a DataSet becomes a MultiDataSet with one input and one output
    (:meth:`DataSet.to_multi`). The DL4J ``SerializedMultiDataSetLoader``.

    Parameters
    ----------
    verify : bool, default True
        Check the CRC32C of the data section.
    mmap : bool, default True
        Memory-map local files from 2 MiB up (see :class:`SerializedDataSetLoader`).
    preprocessor : callable, optional
        Applied to each loaded minibatch (DL4J's ``setPreProcessor``); it must return a
        DataSet or MultiDataSet.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet, save
    >>> save(DataSet(np.zeros((2, 3), np.float32)), "memory://sparkbatch-doc/m/a.safetensors")
    >>> mds = SerializedMultiDataSetLoader().load(Source("memory://sparkbatch-doc/m/a.safetensors"))
    >>> type(mds).__name__, mds.num_examples
    ('MultiDataSet', 2)
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    def load(self, source: Source) -> MultiDataSet:
        """Read the MultiDataSet (or DataSet, converted) stored at ``source``."""
        data = _load_minibatch(source, self.verify, self.mmap)
        multi = data.to_multi() if isinstance(data, DataSet) else data
        return self._preprocessed(multi, source)  # type: ignore[return-value]


class SerializedMinibatchLoader(_SerializedLoader):
    """Loads a sparkbatch minibatch file as whichever it holds, DataSet or MultiDataSet.

    For readers that take both kinds, such as the Spark training workers (``SparkNetwork.fit``
    on a directory of either); :class:`SerializedDataSetLoader` and
    :class:`SerializedMultiDataSetLoader` insist on one kind. Local files are memory-mapped as
    with those.

    Parameters
    ----------
    verify : bool, default True
        Check the CRC32C of the data section.
    mmap : bool, default True
        Memory-map local files from 2 MiB up (see :class:`SerializedDataSetLoader`).
    preprocessor : callable, optional
        Applied to each loaded minibatch (DL4J's ``setPreProcessor``); it must return a
        DataSet or MultiDataSet.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet, MultiDataSet, save
    >>> save(DataSet(np.zeros((2, 3), np.float32)), "memory://sparkbatch-doc/b/a.safetensors")
    >>> multi = MultiDataSet([np.zeros((2, 3), np.float32)], [np.ones((2, 1), np.float32)])
    >>> save(multi, "memory://sparkbatch-doc/b/m.safetensors")
    >>> loader = SerializedMinibatchLoader()
    >>> type(loader.load(Source("memory://sparkbatch-doc/b/a.safetensors"))).__name__
    'DataSet'
    >>> type(loader.load(Source("memory://sparkbatch-doc/b/m.safetensors"))).__name__
    'MultiDataSet'
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    def load(self, source: Source) -> DataSet | MultiDataSet:
        """Read the DataSet or MultiDataSet stored at ``source``."""
        return self._preprocessed(_load_minibatch(source, self.verify, self.mmap), source)
