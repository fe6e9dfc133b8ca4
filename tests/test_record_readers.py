"""The record reader protocol: a custom one-example-per-file reader, RecordReaderDataSetIterator
over it and over CSV, the same records on Spark (FileToRecords), and RecordsToDataSet's and
csv_to_datasets' converter and preprocessor arguments."""

from __future__ import annotations

import gzip
import json
import pickle
import traceback

import numpy as np
import pytest

from sparkbatch.convert import RecordReaderDataSetIterator
from sparkbatch.data import DataSet
from sparkbatch.errors import CsvError
from sparkbatch.records import (
    CSVRecordReader,
    CSVSequenceRecordReader,
    FileRecordReader,
    RecordReader,
)
from sparkbatch.spark import (
    FileToRecords,
    RecordsToDataSet,
    StringToRecords,
    csv_to_datasets,
)


class SpaceSeparated(FileRecordReader):
    """One example per file: ``"x1 x2 x3 label"`` (a tiny custom text format)."""

    def parse(self, data: bytes, source: str) -> list[list[float]]:
        values = data.split()
        if len(values) != 4:
            raise ValueError(f"expected 4 values, found {len(values)}")
        return [[float(v) for v in values]]


class SpaceSeparatedLines(FileRecordReader):
    """Several examples a file, one a line (blank lines skipped), with their lines known."""

    def parse(self, data: bytes, source: str) -> list[list[float]]:
        return [[float(v) for v in line.split()] for line in data.splitlines() if line.strip()]

    def locate(self, records: list, data: bytes, source: str) -> list[int]:
        return [i + 1 for i, line in enumerate(data.splitlines()) if line.strip()]


class ScaleFeatures:
    """A picklable preprocessor: features times ``factor``."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, ds: DataSet) -> DataSet:
        return DataSet(ds.features * self.factor, ds.labels, metadata=ds.metadata)


class FeaturesOnly:
    """A preprocessor that wrongly returns an array."""

    def __call__(self, ds: DataSet) -> np.ndarray:
        return ds.features

    def __repr__(self) -> str:
        return "FeaturesOnly()"


class LabelToIndex:
    """A WritableConverter: the class name in the last column to its index."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes

    def __call__(self, record: list) -> list:
        return [*record[:-1], float(self.classes.index(record[-1].strip()))]


# five examples: three features and a class in {0, 1, 2}
TABLE = np.array(
    [
        [0.5, 1.0, 1.5, 0],
        [2.0, 2.5, 3.0, 1],
        [3.5, 4.0, 4.5, 2],
        [5.0, 5.5, 6.0, 1],
        [6.5, 7.0, 7.5, 0],
    ]
)


@pytest.fixture
def example_dir(tmp_path):
    """One file per example of TABLE, in the custom format; file i holds row i."""
    folder = tmp_path / "examples"
    folder.mkdir()
    for i, row in enumerate(TABLE):
        (folder / f"ex{i}.txt").write_text(" ".join(repr(float(v)) for v in row) + "\n")
    (folder / "_SUCCESS").write_text("")  # left out, as Hadoop's listing does
    return folder


@pytest.fixture
def csv_dir(tmp_path):
    """TABLE as two CSV files with a header line, a blank line and a gzip-compressed file."""
    folder = tmp_path / "csv"
    folder.mkdir()
    rows = [",".join(repr(float(v)) for v in row) for row in TABLE]
    (folder / "a.csv").write_text("x1,x2,x3,y\n" + "\n".join(rows[:3]) + "\n\n")
    (folder / "b.csv.gz").write_bytes(
        gzip.compress(("x1,x2,x3,y\n" + "\n".join(rows[3:])).encode())
    )
    return folder


def _sorted_rows(ds: DataSet) -> np.ndarray:
    table = np.hstack([ds.features, ds.labels])
    return table[np.lexsort(table.T[::-1])]


# -- readers -------------------------------------------------------------------------------------


def test_protocol_members_and_instances():
    assert isinstance(CSVRecordReader(), RecordReader)
    assert isinstance(SpaceSeparated(), RecordReader)
    assert not isinstance(CSVSequenceRecordReader(), RecordReader)  # sequences, no parse
    assert not isinstance([[1.0, 2.0]], RecordReader)
    with pytest.raises(TypeError, match="abstract"):
        FileRecordReader()  # type: ignore[abstract]


def test_custom_reader_iterates_resets_and_pickles(example_dir):
    reader = SpaceSeparated().initialize(example_dir)
    assert [r.rsplit("/", 1)[-1] for r in reader.sources] == [f"ex{i}.txt" for i in range(5)]
    assert reader.current_source is None
    assert list(reader) == TABLE.tolist()
    assert reader.current_source.endswith("ex4.txt") and reader.current_line is None
    assert not reader.has_next()
    with pytest.raises(StopIteration):
        reader.next()
    reader.reset()
    got = []
    while reader.has_next():
        got.append(reader.next())
        if len(got) == 2:  # pickled in the middle: the copy goes on from record 3
            copy = pickle.loads(pickle.dumps(reader))
    assert got == TABLE.tolist()
    assert list(copy) == TABLE[2:].tolist()
    with pytest.raises(RuntimeError, match="initialize"):
        next(SpaceSeparated())


def test_custom_reader_errors_name_the_file(example_dir):
    (example_dir / "ex2.txt").write_text("1 2 3\n")
    reader = SpaceSeparated().initialize(example_dir)
    with pytest.raises(ValueError, match="expected 4 values, found 3") as info:
        list(reader)
    text = "".join(traceback.format_exception(info.value))
    assert f"while SpaceSeparated() parsed {example_dir / 'ex2.txt'}" in text


def test_csv_parse_gives_what_iteration_gives(csv_dir):
    reader = CSVRecordReader(skip_lines=1).initialize(csv_dir)
    iterated, lines = [], []
    for record in reader:
        iterated.append(record)
        lines.append((reader.current_source.rsplit("/", 1)[-1], reader.current_line))
    assert iterated == TABLE.tolist()
    parsed, parsed_lines = [], []
    for name in ("a.csv", "b.csv.gz"):
        records, numbers = reader.parse_lines((csv_dir / name).read_bytes(), name)
        assert records == reader.parse((csv_dir / name).read_bytes(), name)
        parsed += records
        parsed_lines += [(name, n) for n in numbers]
    assert parsed == iterated and parsed_lines == lines
    with pytest.raises(CsvError, match=r"^q\.csv, line 3: expected well-formed CSV"):
        CSVRecordReader().parse(b'1,2\n3,4\n5,"6\n', "q.csv")


# -- RecordReaderDataSetIterator -----------------------------------------------------------------


def test_iterator_classification_over_a_custom_reader(example_dir):
    reader = SpaceSeparated().initialize(example_dir)
    iterator = RecordReaderDataSetIterator(reader, batch_size=2, label_index=3, num_classes=3)
    assert iterator.batch_size == 2 and iterator.num_classes == 3
    for _ in range(2):  # every pass starts from the first record
        batches = list(iterator)
        assert [ds.num_examples for ds in batches] == [2, 2, 1]
        merged = DataSet.merge(batches)
        np.testing.assert_array_equal(merged.features, TABLE[:, :3].astype(np.float32))
        np.testing.assert_array_equal(merged.labels, np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0]])
    assert batches[2].metadata == {"source": str(example_dir / "ex4.txt")}
    assert json.loads(batches[0].metadata["sources"]) == [
        str(example_dir / "ex0.txt"),
        str(example_dir / "ex1.txt"),
    ]
    iterator.reset()
    count = 0
    while iterator.has_next():
        count += iterator.next().num_examples
    assert count == 5 and not iterator.has_next()


def test_iterator_regression_over_csv(csv_dir):
    reader = CSVRecordReader(skip_lines=1).initialize(csv_dir)
    ranged = RecordReaderDataSetIterator(reader, 3, label_first=1, label_last=2, regression=True)
    batches = list(ranged)
    assert [ds.num_examples for ds in batches] == [3, 2]
    merged = DataSet.merge(batches)
    np.testing.assert_array_equal(merged.features, TABLE[:, [0, 3]].astype(np.float32))
    np.testing.assert_array_equal(merged.labels, TABLE[:, 1:3].astype(np.float32))
    assert ranged.num_classes is None
    single = DataSet.merge(list(RecordReaderDataSetIterator(reader, 10, -1, regression=True)))
    np.testing.assert_array_equal(single.labels, TABLE[:, 3:].astype(np.float32))
    unlabelled = next(iter(RecordReaderDataSetIterator(reader, 10, label_index=None)))
    assert unlabelled.features.shape == (5, 4) and unlabelled.labels is None


def test_iterator_errors_name_the_file_and_line(tmp_path, example_dir):
    (tmp_path / "a.csv").write_text("1,2,0\n\n3,4,1\n")
    (tmp_path / "b.csv").write_text('5,6,2\n"7\n",8,1\n9,10,3\n')
    reader = CSVRecordReader().initialize([tmp_path / "a.csv", tmp_path / "b.csv"])
    iterator = RecordReaderDataSetIterator(reader, batch_size=4, label_index=2, num_classes=3)
    with pytest.raises(CsvError) as info:
        list(iterator)
    b = str(tmp_path / "b.csv")
    assert str(info.value) == (
        f"{b}, line 4, column 2: expected an integer class index in [0, 3), found '3'"
    )
    assert (info.value.source, info.value.line, info.value.column) == (b, 4, 2)
    (tmp_path / "b.csv").write_text("5,6,2\n7,8\n")
    with pytest.raises(CsvError, match=rf"^{b}, line 2: expected 3 columns .*found 2"):
        list(iterator)
    (tmp_path / "b.csv").write_text("5,6,2\n7,x,1\n")
    with pytest.raises(CsvError, match=rf"^{b}, line 2, column 1: expected a number, found 'x'"):
        list(iterator)
    (tmp_path / "many.txt").write_text("1 2 3 0\n\n4 5 6 1\n7 8 9 5\n")
    lines = SpaceSeparatedLines().initialize(tmp_path / "many.txt")
    assert [(r[-1], lines.current_line) for r in lines] == [(0.0, 1), (1.0, 3), (5.0, 4)]
    with pytest.raises(CsvError, match=r"many\.txt, line 4, column 3: expected an integer class"):
        list(RecordReaderDataSetIterator(lines, 2, 3, 3))
    (example_dir / "ex3.txt").write_text("1 2 3 7\n")  # a file format without lines
    custom = RecordReaderDataSetIterator(SpaceSeparated().initialize(example_dir), 4, 3, 3)
    with pytest.raises(CsvError, match=r"ex3\.txt, column 3: expected an integer class index"):
        list(custom)


def test_iterator_arguments_and_preprocessor(example_dir):
    reader = SpaceSeparated().initialize(example_dir)
    scaled = RecordReaderDataSetIterator(reader, 5, 3, 3, preprocessor=ScaleFeatures(2.0))
    np.testing.assert_array_equal(next(iter(scaled)).features, 2 * TABLE[:, :3])
    bad = RecordReaderDataSetIterator(reader, 5, 3, 3, preprocessor=FeaturesOnly())
    with pytest.raises(
        TypeError, match=r"the minibatch from \S*ex0\.txt: preprocessor FeaturesOnly returned"
    ):
        list(bad)
    with pytest.raises(TypeError, match="returned MultiDataSet, expected a DataSet$"):
        list(RecordReaderDataSetIterator(reader, 5, 3, 3, preprocessor=DataSet.to_multi))
    with pytest.raises(TypeError, match="preprocessor must be a callable"):
        RecordReaderDataSetIterator(reader, 5, 3, 3, preprocessor="scale")
    with pytest.raises(TypeError, match="reader must be a sparkbatch.records.RecordReader"):
        RecordReaderDataSetIterator(TABLE.tolist(), 5, 3, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_first/label_last .* pass regression=True"):
        RecordReaderDataSetIterator(reader, 5, 1, 3, label_last=2)
    # errors name the iterator's own arguments (they are those of RecordsToDataSet)
    with pytest.raises(ValueError, match="label_last must be >= label_first, got label_first=3"):
        RecordReaderDataSetIterator(reader, 5, label_first=3, label_last=1, regression=True)
    with pytest.raises(ValueError, match="either label_index or label_first/label_last"):
        RecordReaderDataSetIterator(reader, 5, 0, label_first=1, label_last=2, regression=True)
    ranged = RecordReaderDataSetIterator(reader, 5, label_first=0, label_last=1, regression=True)
    assert repr(ranged).endswith("label_first=0, label_last=1, regression=True)")
    with pytest.raises(ValueError, match="num_classes >= 1"):
        RecordReaderDataSetIterator(reader, 5)
    with pytest.raises(ValueError, match="batch_size"):
        RecordReaderDataSetIterator(reader, 0, 3, 3)


# -- Spark ---------------------------------------------------------------------------------------


@pytest.mark.spark
def test_file_to_records_on_spark_gives_the_one_machine_result(sc, example_dir, csv_dir):
    readers = ((SpaceSeparated(), example_dir), (CSVRecordReader(skip_lines=1), csv_dir))
    to_dataset = RecordsToDataSet(label_index=3, num_classes=3)
    one_machine = [
        DataSet.merge(list(RecordReaderDataSetIterator(r.initialize(folder), 2, 3, 3)))
        for r, folder in readers
    ]
    custom, csv = (  # both readers in one Spark job (the suite's time is short)
        sc.binaryFiles(str(folder)).flatMap(FileToRecords(r)).map(to_dataset)
        for r, folder in readers
    )
    collected = custom.map(lambda ds: (0, ds)).union(csv.map(lambda ds: (1, ds))).collect()
    for i, expected in enumerate(one_machine):
        spark = DataSet.merge([ds for k, ds in collected if k == i])
        np.testing.assert_array_equal(_sorted_rows(spark), _sorted_rows(expected))
        np.testing.assert_array_equal(_sorted_rows(spark)[:, :3], TABLE[:, :3])
    # the function Spark runs, on a bad file: the error names it (its note travels in the text)
    bad = str(example_dir / "ex1.txt")
    with pytest.raises(ValueError, match="expected 4 values, found 2") as info:
        FileToRecords(SpaceSeparated())((bad, b"1 2\n"))
    assert f"while SpaceSeparated() parsed {bad}" in traceback.format_exception(info.value)[-1]


@pytest.mark.spark
def test_records_to_dataset_converter_and_preprocessor_on_spark(sc, tmp_path):
    path = tmp_path / "pets.csv"
    path.write_text("0.5,1.0,cat\n2.0,2.5,dog\n3.5,4.0, bird\n")
    to_dataset = RecordsToDataSet(
        label_index=2,
        num_classes=3,
        converter=LabelToIndex(["cat", "dog", "bird"]),
        preprocessor=ScaleFeatures(10.0),
    )
    copy = pickle.loads(pickle.dumps(to_dataset))
    assert repr(copy).startswith("RecordsToDataSet(label_index=2, num_classes=3, preprocessor=")
    rdd = sc.textFile(str(path), minPartitions=2).map(StringToRecords()).map(to_dataset)
    merged = DataSet.merge(rdd.collect())
    np.testing.assert_array_equal(merged.features, [[5, 10], [20, 25], [35, 40]])
    np.testing.assert_array_equal(merged.labels, np.eye(3, dtype=np.float32))
    with pytest.raises(TypeError, match=r"returned str, not a record"):
        RecordsToDataSet(1, 2, converter=str)([1.0, 0.0])
    with pytest.raises(TypeError, match="converter must be a callable"):
        RecordsToDataSet(1, 2, converter="cat")
    with pytest.raises(TypeError, match=r"preprocessor FeaturesOnly returned ndarray"):
        RecordsToDataSet(1, 2, preprocessor=FeaturesOnly())([1.0, 0.0])
    # the conversions make DataSets: a MultiDataSet from the preprocessor is refused too
    with pytest.raises(TypeError, match=r"to_multi returned MultiDataSet, expected a DataSet$"):
        RecordsToDataSet(1, 2, preprocessor=DataSet.to_multi)([1.0, 0.0])


@pytest.mark.spark
def test_csv_to_datasets_applies_the_preprocessor_on_the_executors(sc, csv_dir):
    kwargs = {"label_index": 3, "num_classes": 3, "batch_size": 2, "skip_lines": 1}
    scaled = csv_to_datasets(str(csv_dir), **kwargs, sc=sc, preprocessor=ScaleFeatures(3.0))
    batches = scaled.collect()
    assert sorted(ds.num_examples for ds in batches) == [1, 2, 2]  # a partition per file
    merged = DataSet.merge(batches)
    np.testing.assert_allclose(_sorted_rows(merged)[:, :3], 3 * TABLE[:, :3], rtol=1e-6)
    with pytest.raises(TypeError, match="preprocessor must be a callable"):
        csv_to_datasets(str(csv_dir), **kwargs, sc=sc, preprocessor=3)
