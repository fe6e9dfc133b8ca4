"""Label generators: an example's label from its file's path (DataVec's ``PathLabelGenerator``).

An image reader (and anything else that reads one example per file) asks a generator for the
label of each file. :class:`ParentPathLabelGenerator` takes the name of the file's directory
(``cats/001.jpg`` is a cat); :class:`PatternPathLabelGenerator` takes a part of the file's name
(``cat_001.jpg`` split at ``_``). Any object with the two methods of :class:`LabelGenerator` is
a generator too.

NOTE [paths a generator reads]: a path is a local path, a Hadoop path as Spark's
``sc.binaryFiles`` gives it (``file:/x/cats/1.jpg``) or an fsspec URL (``s3://b/cats/1.jpg``,
``file:///x/cats/1.jpg``). Both ``/`` and ``\\`` separate directories, as in DataVec (whose
``FilenameUtils`` does the same on every OS), so Windows paths (``C:\\data\\cats\\1.jpg``) give the
same labels as POSIX ones; a file name containing a backslash therefore cannot be read as one
name. Paths are taken literally: percent-escapes in URLs are not decoded (fsspec and Hadoop list
paths unescaped).

NOTE [regular expressions]: :class:`PatternPathLabelGenerator` splits with Python's :mod:`re`,
with the rules of Java's ``String.split(regex)`` that DataVec uses (see :func:`java_split`).
The patterns written for DataVec (literal separators, ``\\.``, ``-|_``, ``[_-]``, ``\\d+``,
look-arounds, possessive quantifiers) mean the same in both; Java-only syntax such as ``\\p{L}``
is a ``ValueError`` when the generator is made.
"""

from __future__ import annotations

import os
import re
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "LabelGenerator",
    "ParentPathLabelGenerator",
    "PatternPathLabelGenerator",
    "base_name",
    "java_split",
]

_SEPARATORS = re.compile(r"[/\\]")


@runtime_checkable
class LabelGenerator(Protocol):
    """What a label generator implements: both methods, nothing else.

    ``label_for_path(path)`` returns the label of the file at ``path`` (a local path, a Hadoop
    path or an fsspec URL: NOTE [paths a generator reads]): a class name (``str``), which a
    reader turns into the index of that name in its sorted list of labels, or a numpy array
    (a segmentation mask, a regression target), which a reader passes on as it is. Bad paths
    raise ``ValueError`` naming the path.

    ``infer_label_classes()`` says whether a reader should collect the list of class names by
    calling ``label_for_path`` on every file when it is initialised (DataVec's
    ``inferLabelClasses``): ``True`` for class names, ``False`` for arrays or when the caller
    sets the labels itself.

    A generator travels to Spark's executors with its reader, so it must pickle: keep it to
    configuration (strings, numbers, small arrays).

    Examples
    --------
    >>> class Extension:
    ...     def label_for_path(self, path: str) -> str:
    ...         return path.rsplit(".", 1)[-1]
    ...     def infer_label_classes(self) -> bool:
    ...         return True
    >>> isinstance(Extension(), LabelGenerator), Extension().label_for_path("a/b.png")
    (True, 'png')
    >>> isinstance(ParentPathLabelGenerator(), LabelGenerator)
    True
    """

    def label_for_path(self, path: str) -> str | np.ndarray:
        """The label of the file at ``path``: a class name or an array."""
        ...

    def infer_label_classes(self) -> bool:
        """Whether a reader collects the class names from its files' labels."""
        ...


def _path_parts(path: str | os.PathLike[str]) -> tuple[str, list[str]]:
    """``path`` as text, and its parts between separators (NOTE [paths a generator reads])."""
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"a label generator takes a path as str, got {type(text).__name__}")
    return text, _SEPARATORS.split(text)


def base_name(path: str | os.PathLike[str]) -> str:
    """The file's name without its directory and its last extension.

    As Apache Commons' ``FilenameUtils.getBaseName``, which DataVec uses: only the last
    extension goes (``a.b.c.png`` -> ``a.b.c``), a name that starts with its only dot has no
    base name (``.hidden`` -> ``''``), and both ``/`` and ``\\`` separate directories.

    Examples
    --------
    >>> base_name("s3://bucket/cats/cat_001.jpg"), base_name("/x/a.b.c.png"), base_name("README")
    ('cat_001', 'a.b.c', 'README')
    >>> base_name(r"C:\\data\\cats\\cat.1.jpg")
    'cat.1'
    """
    name = _path_parts(path)[1][-1]
    dot = name.rfind(".")
    return name if dot < 0 else name[:dot]


def java_split(text: str, pattern: str | re.Pattern[str]) -> list[str]:
    """``text`` split at the matches of ``pattern``, by the rules of Java's ``String.split(regex)``.

    Python's :func:`re.split` differs from Java's in three ways, which this follows: empty
    strings at the end are dropped (``"a_b__"`` -> ``['a', 'b']``, and a text of separators
    only gives ``[]``); a zero-width match at the very start gives no leading empty string,
    while a separator that starts the text does (``"_a"`` -> ``['', 'a']``); groups in the
    pattern do not add their matches to the result. A text with no match is returned whole,
    even when empty (``""`` -> ``['']``).

    Examples
    --------
    >>> java_split("cat_001_", "_"), java_split("_cat", "_"), java_split("a-b_c", "-|_")
    (['cat', '001'], ['', 'cat'], ['a', 'b', 'c'])
    >>> java_split("CatDog", "(?=[A-Z])"), java_split("___", "_"), java_split("", "_")
    (['Cat', 'Dog'], [], [''])
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    parts: list[str] = []
    start = 0
    for match in regex.finditer(text):
        if match.end() == 0:  # a zero-width match at the start splits nothing (Java 8 on)
            continue
        parts.append(text[start : match.start()])
        start = match.end()
    if not parts:
        return [text]
    parts.append(text[start:])
    while parts and not parts[-1]:
        parts.pop()
    return parts


class ParentPathLabelGenerator:
    """The label is the name of the file's parent directory, as DataVec's generator of that name.

    Works on local and Windows paths, Hadoop paths and fsspec URLs (NOTE [paths a generator
    reads]); the whole directory name is the label, dots included (``cats.v2/1.jpg`` ->
    ``'cats.v2'``). A path without a named parent directory (``1.jpg``, ``/1.jpg``,
    ``file:///1.jpg``) or that ends with a separator is a ``ValueError``.

    Examples
    --------
    >>> gen = ParentPathLabelGenerator()
    >>> gen.label_for_path("/data/cats/001.jpg"), gen.label_for_path("s3://b/train/dogs/7.png")
    ('cats', 'dogs')
    >>> gen.label_for_path(r"C:\\data\\cats\\001.jpg"), gen.infer_label_classes()
    ('cats', True)
    """

    def label_for_path(self, path: str | os.PathLike[str]) -> str:
        """The name of the directory that holds the file at ``path``."""
        text, parts = _path_parts(path)
        if not parts[-1]:
            raise ValueError(
                f"ParentPathLabelGenerator: {text!r} ends with a separator; expected the path of "
                "a file, whose parent directory's name is the label"
            )
        if len(parts) < 2 or not parts[-2] or (len(parts) == 2 and parts[0].endswith(":")):
            raise ValueError(
                f"ParentPathLabelGenerator: {text!r} has no parent directory to take the label "
                "from; put each class's files in a directory named for the class"
            )
        return parts[-2]

    def infer_label_classes(self) -> bool:
        """True: a reader collects the class names from its files' directories."""
        return True

    def __repr__(self) -> str:
        return "ParentPathLabelGenerator()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


class PatternPathLabelGenerator:
    """The label is part ``index`` of the file's base name split at ``pattern``.

    DataVec's ``PatternPathLabelGenerator(regex, patternPosition)``: the base name (no
    directory, last extension removed: :func:`base_name`) is split by the rules of Java's
    ``String.split(regex)`` (:func:`java_split`; trailing empty parts dropped) and part
    ``index`` is the label. ``pattern`` is a regular expression, so a dot is ``"\\\\."`` and
    several separators are ``"-|_"`` or ``"[-_]"`` (NOTE [regular expressions]).

    Parameters
    ----------
    pattern : str
        The regular expression the base name is split at.
    index : int, default 0
        Which part of the split name is the label (0 is the first).

    Raises
    ------
    ValueError
        Made with a pattern that does not compile or a negative index; or, from
        ``label_for_path``, a name with no part ``index`` (naming the path, its parts and the
        index).

    Examples
    --------
    >>> PatternPathLabelGenerator("_").label_for_path("/data/cat_001.jpg")
    'cat'
    >>> PatternPathLabelGenerator("\\\\.", 1).label_for_path("s3://b/img.dog.7.png")
    'dog'
    >>> PatternPathLabelGenerator("-|_", 2).label_for_path("x/2024-01_bird.jpg")
    'bird'
    """

    def __init__(self, pattern: str, index: int = 0) -> None:
        if not isinstance(pattern, str):
            raise TypeError(
                f"PatternPathLabelGenerator: pattern must be a str (a regular expression), "
                f"got {type(pattern).__name__}"
            )
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(
                f"PatternPathLabelGenerator: index must be an int, got {type(index).__name__}"
            )
        if index < 0:
            raise ValueError(
                f"PatternPathLabelGenerator: index must be >= 0 (0 is the first part), got {index}"
            )
        try:
            self._regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"PatternPathLabelGenerator: pattern {pattern!r} is not a valid regular "
                f"expression for Python's re module: {exc}"
            ) from exc
        self.pattern = pattern
        self.index = int(index)

    def label_for_path(self, path: str | os.PathLike[str]) -> str:
        """Part ``index`` of the base name of ``path`` split at ``pattern``."""
        name = base_name(path)
        parts = java_split(name, self._regex)
        if self.index >= len(parts):
            raise ValueError(
                f"{self!r}: the base name {name!r} of {os.fspath(path)!r} splits into "
                f"{len(parts)} part(s) {parts!r}; index {self.index} is out of range"
            )
        return parts[self.index]

    def infer_label_classes(self) -> bool:
        """True: a reader collects the class names from its files' names."""
        return True

    def __repr__(self) -> str:
        return f"PatternPathLabelGenerator(pattern={self.pattern!r}, index={self.index})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatternPathLabelGenerator) or type(other) is not type(self):
            return NotImplemented
        return (self.pattern, self.index) == (other.pattern, other.index)

    def __hash__(self) -> int:
        return hash((type(self), self.pattern, self.index))
