"""Label generators: DataVec's ParentPathLabelGenerator and PatternPathLabelGenerator, and the
protocol custom generators follow. The expected splits and base names were recorded from Java 17's
``String.split(regex)`` and commons-io 2.22's ``FilenameUtils.getBaseName`` (the jar Spark ships),
so these tests compare against the JVM's answers, not against our reading of its docs."""

from __future__ import annotations

import pickle
from pathlib import PurePosixPath

import numpy as np
import pytest

from sparkbatch.records import (
    LabelGenerator,
    ParentPathLabelGenerator,
    PatternPathLabelGenerator,
    RecordReader,
)
from sparkbatch.records.labels import base_name, java_split

# (text, regex, Java's text.split(regex))
JAVA_SPLITS = [
    ("cat_001", "_", ["cat", "001"]),
    ("cat_001_", "_", ["cat", "001"]),
    ("_cat", "_", ["", "cat"]),
    ("__cat__", "_", ["", "", "cat"]),
    ("___", "_", []),
    ("", "_", [""]),
    ("a.b.c", r"\.", ["a", "b", "c"]),
    ("a-b_c", "-|_", ["a", "b", "c"]),
    ("a-b_c", "[-_]", ["a", "b", "c"]),
    ("CatDog", "(?=[A-Z])", ["Cat", "Dog"]),
    ("catDog", "(?=[A-Z])", ["cat", "Dog"]),
    ("abc", "", ["a", "b", "c"]),
    ("abc", "x*", ["a", "b", "c"]),
    ("a_b", "_*", ["a", "", "b"]),
    ("a__b", "_*", ["a", "", "b"]),
    ("axxbxc", "x*", ["a", "", "b", "", "c"]),
    ("a1b22c", r"\d+", ["a", "b", "c"]),
    ("1a2", r"\d", ["", "a"]),
    ("cat.001", ".", []),
    ("x(y)z", "[()]", ["x", "y", "z"]),
    ("a_b_c", "(_)", ["a", "b", "c"]),
]

# (path, FilenameUtils.getBaseName(path))
JAVA_BASE_NAMES = [
    ("/x/a.b.c.png", "a.b.c"),
    ("/x/.hidden", ""),
    ("/x/README", "README"),
    ("C:\\d\\cat.1.jpg", "cat.1"),
    ("s3://b/c/cat_1.jpg", "cat_1"),
    ("/x/file.", "file"),
    ("/x/dir.v2/n", "n"),
]


@pytest.mark.parametrize(("text", "regex", "expected"), JAVA_SPLITS)
def test_java_split_matches_java(text: str, regex: str, expected: list[str]) -> None:
    assert java_split(text, regex) == expected


@pytest.mark.parametrize(("path", "expected"), JAVA_BASE_NAMES)
def test_base_name_matches_commons_io(path: str, expected: str) -> None:
    assert base_name(path) == expected


@pytest.mark.parametrize(
    ("pattern", "index", "path", "label"),
    [
        ("_", 0, "cat_001.jpg", "cat"),
        ("_", 1, "/data/train/cat_001.jpg", "001"),
        ("_", 1, "/data/cat_001_.jpg", "001"),  # trailing separator: no empty third part
        ("_", 1, "/data/_cat.jpg", "cat"),  # a leading separator gives an empty first part
        (r"\.", 1, "/data/img.dog.7.png", "dog"),  # only the last extension is removed
        ("-|_", 2, "s3://bucket/imgs/2024-01_bird.jpeg", "bird"),
        ("[0-9]+", 0, "file:///x/horse42.png", "horse"),
        ("_", 0, "file:/x/y/ship_3.png", "ship"),  # Hadoop's form, as sc.binaryFiles lists
        ("_", 0, "C:\\data\\imgs\\truck_9.bmp", "truck"),
        ("_", 0, PurePosixPath("/data/frog_2.gif"), "frog"),
    ],
)
def test_pattern_label(pattern: str, index: int, path: str, label: str) -> None:
    gen = PatternPathLabelGenerator(pattern, index)
    assert gen.label_for_path(path) == label
    assert gen.infer_label_classes() is True


def test_pattern_index_out_of_range_names_path_parts_and_index() -> None:
    gen = PatternPathLabelGenerator("_", 2)
    with pytest.raises(ValueError, match=r"'/x/cat_001_\.jpg'.*\['cat', '001'\]; index 2"):
        gen.label_for_path("/x/cat_001_.jpg")
    with pytest.raises(ValueError, match=r"splits into 0 part\(s\) \[\]; index 0"):
        PatternPathLabelGenerator("_").label_for_path("/x/___.jpg")


def test_pattern_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"pattern '\(' is not a valid regular expression"):
        PatternPathLabelGenerator("(")
    with pytest.raises(ValueError, match=r"pattern '\\\\p\{L\}'"):  # Java-only syntax
        PatternPathLabelGenerator(r"\p{L}")
    with pytest.raises(ValueError, match="index must be >= 0"):
        PatternPathLabelGenerator("_", -1)
    with pytest.raises(TypeError, match="index must be an int"):
        PatternPathLabelGenerator("_", True)
    with pytest.raises(TypeError, match="pattern must be a str"):
        PatternPathLabelGenerator(b"_")  # type: ignore[arg-type]
    assert PatternPathLabelGenerator("_", np.int64(1)).index == 1


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/data/cats/001.jpg", "cats"),
        ("cats/001.jpg", "cats"),
        ("/data/cats.v2/001.jpg", "cats.v2"),  # the whole name, as DataVec's getName
        ("s3://bucket/train/dogs/7.png", "dogs"),
        ("s3://bucket/7.png", "bucket"),
        ("file:///x/cats/1.jpg", "cats"),
        ("file:/x/cats/1.jpg", "cats"),
        ("memory://root/birds/1.png", "birds"),
        ("C:\\data\\cats\\001.jpg", "cats"),
        ("\\\\server\\share\\owls\\1.jpg", "owls"),
        (PurePosixPath("/data/ants/1.png"), "ants"),
    ],
)
def test_parent_path_label(path: str, label: str) -> None:
    gen = ParentPathLabelGenerator()
    assert gen.label_for_path(path) == label
    assert gen.infer_label_classes() is True


@pytest.mark.parametrize("path", ["1.jpg", "/1.jpg", "file:///1.jpg", "file:/1.jpg", "C:\\1.jpg"])
def test_parent_path_without_parent_is_an_error(path: str) -> None:
    with pytest.raises(ValueError, match="has no parent directory"):
        ParentPathLabelGenerator().label_for_path(path)


def test_parent_path_of_a_directory_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'/data/cats/' ends with a separator"):
        ParentPathLabelGenerator().label_for_path("/data/cats/")
    with pytest.raises(TypeError, match="path as str, got bytes"):
        ParentPathLabelGenerator().label_for_path(b"/data/cats/1.jpg")  # type: ignore[arg-type]


class _MaskFromName:
    """A segmentation-style generator: the label is an array, and there are no classes."""

    def __init__(self, size: int) -> None:
        self.size = size

    def label_for_path(self, path: str) -> np.ndarray:
        return np.full((self.size, self.size), len(base_name(path)), dtype=np.uint8)

    def infer_label_classes(self) -> bool:
        return False


def test_custom_generator_satisfies_the_protocol() -> None:
    gen = _MaskFromName(2)
    assert isinstance(gen, LabelGenerator)
    assert isinstance(ParentPathLabelGenerator(), LabelGenerator)
    assert isinstance(PatternPathLabelGenerator("_"), LabelGenerator)
    assert not isinstance(ParentPathLabelGenerator(), RecordReader)
    assert not isinstance("cats", LabelGenerator)
    np.testing.assert_array_equal(gen.label_for_path("/x/abc.png"), np.full((2, 2), 3))
    clone = pickle.loads(pickle.dumps(gen))
    assert clone.infer_label_classes() is False and clone.size == 2


def test_generators_pickle_equal_and_working() -> None:
    for gen in (ParentPathLabelGenerator(), PatternPathLabelGenerator(r"\.|-", 1)):
        clone = pickle.loads(pickle.dumps(gen))
        assert clone == gen and hash(clone) == hash(gen) and repr(clone) == repr(gen)
        assert clone.label_for_path("/d/cats/x-dog.1.png") == gen.label_for_path(
            "/d/cats/x-dog.1.png"
        )
    assert PatternPathLabelGenerator("_", 0) != PatternPathLabelGenerator("_", 1)
    assert PatternPathLabelGenerator("_") != ParentPathLabelGenerator()
    expected = "PatternPathLabelGenerator(pattern='-|_', index=2)"
    assert repr(PatternPathLabelGenerator("-|_", 2)) == expected
