"""Sequences without Spark: CSVSequenceRecordReader, sequence DataSets, padding, masks, merging
under every alignment, export and reload, and bad input."""

from __future__ import annotations

import gzip
import pickle

import fsspec
import numpy as np
import pytest

from sparkbatch.convert import sequence_to_dataset, sequences_to_dataset
from sparkbatch.data import DataSet, MultiDataSet, load, rebatch
from sparkbatch.data.sequences import example_sources
from sparkbatch.errors import CsvError, SequenceLengthError
from sparkbatch.records import CSVSequenceRecordReader, SequenceRecord
from sparkbatch.storage import open_output


def _csv(table: np.ndarray, header: str | None = None) -> str:
    text = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in table)
    return (header + "\n" + text) if header is not None else text


@pytest.fixture
def memory_dir():
    root = "memory://test-sequences"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists("/test-sequences"):
        fs.rm("/test-sequences", recursive=True)


# -- reader ----------------------------------------------------------------------------------


def test_reader_one_sequence_per_file_in_path_order(tmp_path):
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(t, 3)).round(4) for t in (5, 1, 3)]
    for i, table in enumerate(tables):
        (tmp_path / f"s{i}.csv").write_text(_csv(table, header="a,b,c"))
    reader = CSVSequenceRecordReader(skip_lines=1).initialize(tmp_path)
    assert reader.sources == [str(tmp_path / f"s{i}.csv") for i in range(3)]
    seen = []
    while reader.has_next():
        sequence = reader.next_sequence()
        assert isinstance(sequence, SequenceRecord)
        assert sequence.source == reader.current_source
        assert sequence.lines == tuple(range(2, len(sequence) + 2))
        seen.append(np.array(sequence))
    assert len(seen) == 3
    for got, want in zip(seen, tables, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(StopIteration):
        reader.next_sequence()
    reader.reset()
    assert [len(s) for s in reader] == [5, 1, 3]


def test_reader_values_quotes_blank_lines_and_compression(tmp_path, memory_dir):
    text = 'x,"a, b"\r\n\r\n2, 3 \r\n'
    (tmp_path / "q.csv.gz").write_bytes(gzip.compress(("\ufeff" + text).encode()))
    with open_output(memory_dir + "/m.csv") as f:
        f.write(text.encode())
    reader = CSVSequenceRecordReader().initialize([tmp_path / "q.csv.gz", memory_dir + "/m.csv"])
    first, second = list(reader)
    assert first == second == [["x", "a, b"], [2.0, 3.0]]
    assert first.lines == (1, 3) and second.source == memory_dir + "/m.csv"
    no_quote = CSVSequenceRecordReader(delimiter=";", quote="").parse_sequence(b'"1";2\n', "s")
    assert no_quote == [['"1"', 2.0]]


def test_reader_and_records_pickle(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.csv").write_text(f"{i},1\n{i},2\n")
    reader = CSVSequenceRecordReader(delimiter=",").initialize(tmp_path)
    first = next(reader)
    copy = pickle.loads(pickle.dumps(reader))
    assert repr(copy) == repr(reader)
    assert [s[0][0] for s in copy] == [1.0, 2.0]  # goes on where the original was
    again = pickle.loads(pickle.dumps(first))
    assert again == first and type(again) is SequenceRecord
    assert (again.source, again.lines) == (first.source, first.lines)


def test_reader_settings_are_checked():
    with pytest.raises(ValueError, match="skip_lines must be an int >= 0"):
        CSVSequenceRecordReader(skip_lines=-1)
    with pytest.raises(ValueError, match="delimiter must be one character"):
        CSVSequenceRecordReader(delimiter=",,")
    with pytest.raises(ValueError, match="quote and delimiter must differ"):
        CSVSequenceRecordReader(delimiter=";", quote=";")
    with pytest.raises(RuntimeError, match="call initialize"):
        CSVSequenceRecordReader().has_next()


@pytest.mark.parametrize(
    ("data", "skip", "message"),
    [
        (b"", 0, "e.csv: expected at least one step (a line of values), found an empty file"),
        (b"\n \n", 0, "e.csv: expected at least one step (a line of values), found only blank"),
        (b"a,b\n", 1, "found none after the 1 header line (skip_lines=1)"),
        (b"a,b\nc,d\n\n", 2, "found none after the 2 header lines (skip_lines=2)"),
        (b'1,2\n3,"4\n', 0, "e.csv, line 2: expected well-formed CSV"),
        (b"1,2\n\xff\xfe3\n", 0, "e.csv, line 2: expected UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 0, "e.csv, line 1: expected UTF-8 CSV text, found a PNG"),
    ],
)
def test_reader_bad_files_name_the_file(data, skip, message):
    with pytest.raises(CsvError) as info:
        CSVSequenceRecordReader(skip_lines=skip).parse_sequence(data, "e.csv")
    assert message in str(info.value)
    assert info.value.source == "e.csv"


def test_reader_empty_file_on_disk_names_it(tmp_path):
    (tmp_path / "a.csv").write_text("1,2\n")
    (tmp_path / "b.csv").write_text("")
    reader = CSVSequenceRecordReader().initialize(tmp_path)
    next(reader)
    with pytest.raises(CsvError, match=r"b\.csv: expected at least one step"):
        next(reader)


# -- conversion, padding and merging against numpy ---------------------------------------------

CLASSES = 4
ALIGNMENTS = ["align_start", "align_end"]


def _tables(rng: np.random.Generator, lengths, width: int = 5) -> list[np.ndarray]:
    tables = []
    for t in lengths:
        table = rng.normal(size=(t, width)).round(3)
        table[:, -1] = rng.integers(0, CLASSES, t)
        tables.append(table)
    return tables


def reference(tables, alignment, *, labels="classes", many_to_one=False):
    """Padded features [n, f, T], labels and mask [n, T], computed step by step."""
    n, steps = len(tables), max(t.shape[0] for t in tables)
    width = tables[0].shape[1]
    x = np.zeros((n, width - 1, steps), np.float32)
    k = CLASSES if labels == "classes" else 1
    y = np.zeros((n, k) if many_to_one else (n, k, steps), np.float32)
    mask = np.zeros((n, steps), np.float32)
    for i, table in enumerate(tables):
        t = table.shape[0]
        offset = steps - t if alignment == "align_end" else 0
        for s in range(t):
            x[i, :, offset + s] = table[s, :-1]
            mask[i, offset + s] = 1
            label = np.zeros(k, np.float32)
            if labels == "classes":
                label[int(table[s, -1])] = 1
            else:
                label[0] = table[s, -1]
            if many_to_one:
                if s == t - 1:
                    y[i] = label
            else:
                y[i, :, offset + s] = label
    return x, y, mask


def test_one_sequence_classification_regression_and_many_to_one():
    table = _tables(np.random.default_rng(1), [7])[0]
    record = SequenceRecord(table.tolist(), source="s.csv", lines=range(1, 8))
    x, y, _ = reference([table], "align_start")
    ds = sequence_to_dataset(record, label_index=-1, num_classes=CLASSES)
    np.testing.assert_array_equal(ds.features, x)
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.features_mask is None and ds.metadata == {"source": "s.csv"}
    _, y_last, _ = reference([table], "align_start", many_to_one=True)
    last = sequence_to_dataset(record, label_index=4, num_classes=CLASSES, many_to_one=True)
    np.testing.assert_array_equal(last.labels, y_last)
    _, y_reg, _ = reference([table], "align_start", labels="values")
    reg = sequence_to_dataset(record, label_first=4, label_last=4, regression=True)
    np.testing.assert_array_equal(reg.labels, y_reg)


@pytest.mark.parametrize("alignment", ALIGNMENTS)
@pytest.mark.parametrize("many_to_one", [False, True])
def test_batches_of_lengths_1_to_200_match_numpy(alignment, many_to_one):
    rng = np.random.default_rng(2)
    lengths = [1, 200, *rng.integers(1, 201, 14)]
    tables = _tables(rng, lengths)
    x, y, mask = reference(tables, alignment, many_to_one=many_to_one)
    ds = sequences_to_dataset(
        [t.tolist() for t in tables],
        label_index=4,
        num_classes=CLASSES,
        alignment=alignment,
        many_to_one=many_to_one,
    )
    np.testing.assert_array_equal(ds.features, x)
    np.testing.assert_array_equal(ds.labels, y)
    np.testing.assert_array_equal(ds.features_mask, mask)
    if many_to_one:
        assert ds.labels_mask is None
    else:
        np.testing.assert_array_equal(ds.labels_mask, mask)
    # merging one-sequence DataSets gives the same minibatch (DL4J's mergeTimeSeries)
    singles = [
        sequence_to_dataset(
            t.tolist(),
            label_index=4,
            num_classes=CLASSES,
            many_to_one=many_to_one,
            source=f"s{i}.csv",
        )
        for i, t in enumerate(tables)
    ]
    merged = DataSet.merge(singles, alignment=alignment)
    np.testing.assert_array_equal(merged.features, x)
    np.testing.assert_array_equal(merged.labels, y)
    np.testing.assert_array_equal(merged.features_mask, mask)
    assert example_sources(merged.metadata, len(tables)) == [f"s{i}.csv" for i in range(16)]
    # ... and so does rebatch, across batches of different padded lengths
    again = DataSet.merge(list(rebatch(singles, 5, alignment)), alignment=alignment)
    np.testing.assert_array_equal(again.features, x)
    np.testing.assert_array_equal(again.features_mask, mask)
    assert json_sources(again) == [f"s{i}.csv" for i in range(16)]


def json_sources(ds):
    return example_sources(ds.metadata, ds.num_examples)


def test_equal_length_keeps_no_mask_and_names_both_files():
    rng = np.random.default_rng(3)
    same = _tables(rng, [6, 6, 6])
    ds = sequences_to_dataset(
        [t.tolist() for t in same], label_index=4, num_classes=CLASSES, alignment="equal_length"
    )
    assert ds.features_mask is None and ds.labels_mask is None
    np.testing.assert_array_equal(ds.features, reference(same, "align_start")[0])
    tables = _tables(rng, [6, 6, 9])
    records = [SequenceRecord(t.tolist(), source=f"f{i}.csv") for i, t in enumerate(tables)]
    with pytest.raises(
        SequenceLengthError,
        match=r"sequence 0 \(f0.csv\) has 6 steps but sequence 2 \(f2.csv\)"
        r" has 9",
    ):
        sequences_to_dataset(records, label_index=4, num_classes=CLASSES, alignment="equal_length")
    singles = [sequence_to_dataset(r, label_index=4, num_classes=CLASSES) for r in records]
    with pytest.raises(
        SequenceLengthError,
        match=r"features of dataset 0 \(f0.csv\) has 6 steps but dataset 2 \(f2.csv\) has 9",
    ):
        DataSet.merge(singles, alignment="equal_length")
    with pytest.raises(SequenceLengthError, match=r"dataset 1 \(f2.csv\) has 9"):
        list(rebatch(singles[1:], 2, alignment="EQUAL_LENGTH"))
    with pytest.raises(ValueError, match="alignment must be one of"):
        DataSet.merge(singles, alignment="pad")


def test_multidataset_merge_aligns_each_array_and_masks_survive_a_file(tmp_path):
    a = MultiDataSet([np.ones((1, 2, 3), np.float32)], [np.ones((1, 1, 3), np.float32)])
    b = MultiDataSet([np.full((1, 2, 5), 2, np.float32)], [np.ones((1, 1, 5), np.float32)])
    merged = MultiDataSet.merge([a, b], alignment="align_end")
    assert merged.features_masks[0].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert merged.features[0][0, 0].tolist() == [0, 0, 1, 1, 1]
    merged.save(str(tmp_path / "m.safetensors"))
    back = load(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(back.features_masks[0], merged.features_masks[0])
    np.testing.assert_array_equal(back.labels_masks[0], merged.labels_masks[0])
    with pytest.raises(SequenceLengthError, match=r"features\[0\] of dataset 0 has 3 steps"):
        MultiDataSet.merge([a, b], alignment="equal_length")


# -- bad sequences -----------------------------------------------------------------------------


def test_bad_steps_name_file_line_step_and_column():
    seq = SequenceRecord([[0.1, 1.0], [0.2, 3.0], [0.3, 1.0]], source="a.csv", lines=[2, 4, 5])
    with pytest.raises(CsvError) as info:
        sequence_to_dataset(seq, label_index=1, num_classes=3)
    assert str(info.value) == (
        "a.csv, line 4 (step 1), column 1: expected an integer class index in [0, 3), found '3'"
    )
    assert (info.value.source, info.value.line, info.value.column) == ("a.csv", 4, 1)
    ragged = SequenceRecord([[0.1, 1.0], [0.2]], source="r.csv", lines=[1, 2])
    with pytest.raises(
        CsvError,
        match=r"r.csv, line 2 \(step 1\): expected 2 columns \(as in "
        r"line 1 \(step 0\)\), found 1: '0.2'",
    ):
        sequence_to_dataset(ragged, label_index=1, num_classes=3)
    text = SequenceRecord([[0.1, 1.0], ["x", 1.0]], source="t.csv")
    with pytest.raises(CsvError, match=r"t.csv, step 1, column 0: expected a number, found 'x'"):
        sequence_to_dataset(text, label_index=1, num_classes=3)
    with pytest.raises(
        CsvError,
        match=r"a.csv, line 2 \(step 0\): expected at least 8 columns "
        r"\(labels in column 7\), found 2",
    ):
        sequence_to_dataset(seq, label_index=7, num_classes=3)


def test_sequences_of_different_widths_name_both_files():
    a = SequenceRecord([[0.1, 0.2, 1.0]], source="a.csv", lines=[1])
    b = SequenceRecord([[0.1, 1.0]], source="b.csv", lines=[3])
    with pytest.raises(
        CsvError,
        match=r"b.csv, line 3 \(step 0\): expected 3 columns \(as in "
        r"a.csv\), found 2",
    ):
        sequences_to_dataset([a, b], label_index=-1, num_classes=2)
    one_a = sequence_to_dataset(a, label_index=-1, num_classes=2)
    one_b = sequence_to_dataset(b, label_index=-1, num_classes=2)
    with pytest.raises(
        ValueError,
        match=r"dataset 1 \(b.csv\) has shape \(1, 1, 1\) but "
        r"dataset 0 \(a.csv\) has shape \(1, 2, 1\)",
    ):
        DataSet.merge([one_a, one_b])


def test_an_export_partition_names_the_files_of_elements_of_other_widths():
    from sparkbatch.spark.export import rebatch_partition

    a = sequence_to_dataset([[0.1, 0.2, 1.0]], label_index=-1, num_classes=2, source="a.csv")
    b = sequence_to_dataset([[0.1, 1.0]] * 2, label_index=-1, num_classes=2, source="b.csv")
    with pytest.raises(
        CsvError,
        match=r"partition 3, element 1 \(b.csv\): a DataSet with features"
        r" \(1, 1, 2\).* where element 0 \(a.csv\) is a DataSet with features "
        r"\(n, 2\)",
    ) as info:
        list(rebatch_partition(3, [a, b], 2))
    assert info.value.source == "b.csv"


def test_an_export_partition_names_one_file_and_only_column_counts_are_csv_errors():
    from sparkbatch.spark.export import rebatch_partition

    def one(width, source, num_classes=2):
        row = [0.1] * (width - 1) + [1.0]
        return sequence_to_dataset([row], label_index=-1, num_classes=num_classes, source=source)

    a = one(3, "a.csv")
    several = DataSet.merge([one(2, "b.csv"), one(2, "c.csv"), one(2, "d.csv")])
    with pytest.raises(CsvError, match=r"element 1 \(b.csv and 2 more\)") as info:
        list(rebatch_partition(0, [a, several], 2))
    assert info.value.source == "b.csv"  # a file, not "b.csv and 2 more"
    # other label widths (num_classes) or other arrays are no CSV column problem
    for other in (one(3, "e.csv", num_classes=3), one(3, "f.csv").to_multi()):
        with pytest.raises(ValueError, match=r"element 1 \([ef].csv\)") as info:
            list(rebatch_partition(0, [a, other], 2))
        assert not isinstance(info.value, CsvError)


def _padded_at_start(seqs, t_max):
    """numpy reference: sequences [f, t] padded at the start to t_max, with their masks."""
    x = np.zeros((len(seqs), seqs[0].shape[0], t_max), np.float32)
    m = np.zeros((len(seqs), t_max), np.float32)
    for i, s in enumerate(seqs):
        x[i, :, t_max - s.shape[1] :] = s
        m[i, t_max - s.shape[1] :] = 1
    return x, m


def test_merging_masked_minibatches_of_different_lengths_under_align_end_matches_numpy():
    rng = np.random.default_rng(11)
    lengths = [1, 3, 2, 5, 4]
    xs = [rng.standard_normal((2, t)).astype(np.float32) for t in lengths]
    ys = [rng.standard_normal((3, t)).astype(np.float32) for t in lengths]
    parts = ([0, 1], [2, 3, 4])  # already masked minibatches of T 3 and 5
    minibatches = []
    for part in parts:
        t = max(lengths[i] for i in part)
        x, m = _padded_at_start([xs[i] for i in part], t)
        y, _ = _padded_at_start([ys[i] for i in part], t)
        minibatches.append(DataSet(x, y, m, m))
    x, m = _padded_at_start(xs, 5)
    y, _ = _padded_at_start(ys, 5)
    merged = DataSet.merge(minibatches, alignment="align_end")
    for got, want in [
        (merged.features, x),
        (merged.labels, y),
        (merged.features_mask, m),
        (merged.labels_mask, m),
    ]:
        np.testing.assert_array_equal(got, want)
    multi = MultiDataSet.merge([d.to_multi() for d in minibatches], alignment="align_end")
    np.testing.assert_array_equal(multi.features[0], x)
    np.testing.assert_array_equal(multi.labels_masks[0], m)
    # re-cut into 3 + 2 examples: the first spans both minibatches, the second lies in one
    first, second = rebatch(minibatches, 3, alignment="align_end")
    for got, rows in [(first, [0, 1, 2]), (second, [3, 4])]:
        np.testing.assert_array_equal(got.features, x[rows])
        np.testing.assert_array_equal(got.features_mask, m[rows])
        np.testing.assert_array_equal(got.labels, y[rows])
        np.testing.assert_array_equal(got.labels_mask, m[rows])
