"""Sequence files on local Spark: the seed's per-record chain (binaryFiles ->
SequenceFileToRecords -> SequencesToDataSet) and csv_sequences_to_datasets give the same
examples as numpy, through batch_and_export and back; alignments, label kinds, bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tests.test_sequences import CLASSES, _tables, reference

from sparkbatch.data import load
from sparkbatch.data.sequences import example_sources
from sparkbatch.errors import CsvError, SequenceLengthError
from sparkbatch.records import CSVSequenceRecordReader
from sparkbatch.spark import (
    SequenceFileToRecords,
    SequencesToDataSet,
    batch_and_export,
    csv_sequences_to_datasets,
    executor_errors,
)


def _write(directory, tables, header: bool = False) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, table in enumerate(tables):
        rows = [",".join(f"{v:g}" for v in row) for row in table]
        text = ("a,b,c,d,label\n" if header else "") + "\n".join(rows) + "\n"
        path = directory / f"seq-{i:03d}.csv"
        path.write_text(text)
        paths.append(str(path))
    return paths


def _by_file(urls: list[str]) -> dict[str, tuple[np.ndarray, ...]]:
    """Every exported example by its file's name: features, labels, masks (real steps)."""
    found = {}
    for url in urls:
        ds = load(url)
        assert ds.features_mask is not None  # every minibatch of an align_* export has masks
        for i, source in enumerate(example_sources(ds.metadata, ds.num_examples)):
            found[os.path.basename(source)] = (
                ds.features[i],
                ds.labels[i],
                ds.features_mask[i],
                ds.labels_mask[i],
            )
    return found


@pytest.fixture(scope="module")
def sequence_dir(tmp_path_factory):
    rng = np.random.default_rng(7)
    tables = _tables(rng, [1, 200, *rng.integers(1, 201, 22)])
    directory = tmp_path_factory.mktemp("sequences")
    _write(directory, tables, header=True)
    return directory, tables


@pytest.mark.parametrize("alignment", ["align_start", "align_end"])
def test_seed_chain_and_partition_path_export_the_same_examples(
    sc, sequence_dir, tmp_path, alignment
):
    directory, tables = sequence_dir
    chain = (
        sc.binaryFiles(str(directory), 3)
        .map(SequenceFileToRecords(CSVSequenceRecordReader(skip_lines=1)))
        .map(SequencesToDataSet(label_index=4, num_classes=CLASSES))
    )
    chain_urls = batch_and_export(chain, tmp_path / "chain", 5, alignment=alignment)
    wide = csv_sequences_to_datasets(
        directory,
        label_index=4,
        num_classes=CLASSES,
        batch_size=5,
        skip_lines=1,
        alignment=alignment,
        files_per_partition=10,
    )
    assert wide.getNumPartitions() == 3
    wide_urls = batch_and_export(wide, tmp_path / "wide", 5, alignment=alignment)
    from_chain, from_wide = _by_file(chain_urls), _by_file(wide_urls)
    assert sorted(from_chain) == sorted(from_wide) == [f"seq-{i:03d}.csv" for i in range(24)]
    for i, table in enumerate(tables):
        x, y, mask = (a[0] for a in reference([table], "align_start"))
        t = table.shape[0]
        for got in (from_chain, from_wide):
            features, labels, features_mask, labels_mask = got[f"seq-{i:03d}.csv"]
            real = np.flatnonzero(features_mask)
            assert len(real) == t and np.array_equal(features_mask, labels_mask)
            if alignment == "align_end":
                assert real[-1] == features_mask.shape[0] - 1  # the last steps line up
            else:
                assert real[0] == 0
            np.testing.assert_array_equal(features[:, real], x)
            np.testing.assert_array_equal(labels[:, real], y)
            assert not features[:, features_mask == 0].any()  # padding is zero


def test_partition_path_matches_numpy_for_every_label_kind(sc, tmp_path):
    rng = np.random.default_rng(8)
    tables = _tables(rng, rng.integers(1, 60, 9))
    _write(tmp_path / "d", tables)
    kinds = [
        ({"label_index": 4, "num_classes": CLASSES}, {}),
        ({"label_index": -1, "num_classes": CLASSES, "many_to_one": True}, {"many_to_one": True}),
        ({"label_first": 4, "label_last": 4, "regression": True}, {"labels": "values"}),
    ]
    for arguments, expected in kinds:
        [ds] = csv_sequences_to_datasets(
            tmp_path / "d", batch_size=9, alignment="align_end", sc=sc, **arguments
        ).collect()
        x, y, mask = reference(tables, "align_end", **expected)
        np.testing.assert_array_equal(ds.features, x)
        np.testing.assert_array_equal(ds.labels, y)
        np.testing.assert_array_equal(ds.features_mask, mask)
        assert (ds.labels_mask is None) == arguments.get("many_to_one", False)
    # the seed's functions give the same many-to-one labels, one sequence at a time
    many_to_one = SequencesToDataSet(label_index=4, num_classes=CLASSES, many_to_one=True)
    singles = (
        sc.binaryFiles(str(tmp_path / "d")).map(SequenceFileToRecords()).map(many_to_one).collect()
    )
    y = reference(tables, "align_end", many_to_one=True)[1]
    for ds in singles:
        i = int(os.path.basename(ds.metadata["source"])[4:7])
        np.testing.assert_array_equal(ds.labels, y[i : i + 1])


def test_equal_length_names_both_files(sc, tmp_path):
    rng = np.random.default_rng(9)
    paths = _write(tmp_path / "d", _tables(rng, [5, 5, 8, 5]))
    same = csv_sequences_to_datasets(
        paths[:2], label_index=4, num_classes=CLASSES, batch_size=2, alignment="equal_length"
    ).collect()
    assert same[0].features.shape == (2, 4, 5) and same[0].features_mask is None
    with (
        pytest.raises(
            SequenceLengthError,
            match=r"sequence 0 \(.*seq-000.csv\) has 5 steps but "
            r"sequence 2 \(.*seq-002.csv\) has 8",
        ),
        executor_errors(),
    ):
        csv_sequences_to_datasets(
            tmp_path / "d",
            label_index=4,
            num_classes=CLASSES,
            batch_size=4,
            alignment="equal_length",
        ).collect()
    chain = (
        sc.binaryFiles(str(tmp_path / "d"), 1)
        .map(SequenceFileToRecords())
        .map(SequencesToDataSet(label_index=4, num_classes=CLASSES))
    )
    with pytest.raises(
        SequenceLengthError,
        match=r"seq-00\d.csv\) has \d steps but dataset \d "
        r"\(file:.*seq-00\d.csv\) has \d",
    ):
        batch_and_export(chain, tmp_path / "out", 4, alignment="equal_length")


def test_a_file_of_another_width_fails_the_job_naming_both(sc, tmp_path):
    (tmp_path / "a.csv").write_text("1,2,0\n3,4,1\n")
    (tmp_path / "b.csv").write_text("1,2,0\n3,1\n")
    rdd = csv_sequences_to_datasets(tmp_path, label_index=2, num_classes=3, batch_size=2, sc=sc)
    with pytest.raises(
        CsvError,
        match=r"b.csv, line 2 \(step 1\): expected 3 columns \(as in .*a.csv, line 1\), "
        r"found 2: '3,1'",
    ):
        batch_and_export(rdd, tmp_path / "out", 2)


@pytest.mark.parametrize(
    ("files", "skip_lines", "message"),
    [
        (
            {"a.csv": "1,2,0\n", "b.csv": "1,2,0\n3,4,2\n5,6,7\n"},
            0,
            r"b.csv, line 3 \(step 2\), column 2: expected a class index in \[0, 3\), found '7'",
        ),
        (
            {"a.csv": "x,y,z\n1,2,0\n", "b.csv": "x,y,z\n1,2,0\n\n3,4,9\n"},
            1,
            r"b.csv, line 4 \(step 1\), column 2: expected a class index in \[0, 3\)",
        ),
        ({"a.csv": "1,2,0\n", "b.csv": ""}, 0, r"b.csv: expected at least one step .*empty file"),
        (
            {"a.csv": "x,y,z\n1,2,0\n", "b.csv": "x,y,z\n"},
            1,
            r"b.csv: expected at least one step .*found none after the 1 header line",
        ),
        (
            {"a.csv": "1,2,0\n", "b.csv": "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
            0,
            r"b.csv, line 1: expected UTF-8 CSV text, found a PNG image",
        ),
    ],
)
def test_bad_files_in_a_partition_are_named(tmp_path, files, skip_lines, message):
    # what an executor runs, in this process: a failing Spark job costs seconds (see above)
    from sparkbatch.convert import LabelSpec
    from sparkbatch.records.csv_parser import CsvOptions
    from sparkbatch.spark.sequences import SequenceFilesToDataSets, _first_table

    paths = []
    for name, text in files.items():
        (tmp_path / name).write_bytes(text.encode("latin-1"))
        paths.append(str(tmp_path / name))
    options = CsvOptions(skip_lines=skip_lines)
    function = SequenceFilesToDataSets(
        LabelSpec(label_index=2, num_classes=3), options, _first_table(paths, options, None), 2
    )
    with pytest.raises(CsvError, match=message):
        list(function(paths))


def test_bad_input_found_on_the_driver_or_per_record(sc, tmp_path):
    (tmp_path / "a.csv").write_text("1,2,0\n3,4,1\n")
    (tmp_path / "b.csv").write_text("1,2,0\n3,4,5\n")
    with pytest.raises(
        CsvError,
        match=r"label columns 3 are outside a table of 3 columns "
        r"\(.*as in .*a.csv, line 1\)",
    ):
        csv_sequences_to_datasets(tmp_path, label_index=3, num_classes=2, sc=sc)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.csv").write_text("\n")
    with pytest.raises(CsvError, match=r"e.csv: expected at least one step .*only blank lines"):
        csv_sequences_to_datasets(tmp_path / "empty", label_index=2, num_classes=2, sc=sc)
    chain = (
        sc.binaryFiles(str(tmp_path / "*.csv"), 1)
        .map(SequenceFileToRecords())
        .map(SequencesToDataSet(label_index=2, num_classes=3))
    )
    with (
        pytest.raises(
            CsvError,
            match=r"b.csv, line 2 \(step 1\), column 2: expected an integer"
            r" class index in \[0, 3\), found '5'",
        ),
        executor_errors(),
    ):
        chain.collect()


@pytest.mark.parametrize(
    ("field", "number"),
    [("1_0", False), ("\u0661", False), ("1e", False), ("0x1", False)]
    + [("+.5e-3", True), (" 2. ", True), ("-INF", True)],
)
def test_the_per_record_chain_and_the_native_path_agree_on_what_is_a_number(
    tmp_path, field, number
):
    # one number grammar for both paths (NOTE [one number grammar]): float() alone takes "1_0"
    from sparkbatch.convert import LabelSpec
    from sparkbatch.records.csv_parser import CsvOptions
    from sparkbatch.spark.sequences import SequenceFilesToDataSets, _first_table

    path = tmp_path / "a.csv"
    path.write_bytes(f"0.5,1\n{field},0\n".encode())
    options = CsvOptions()
    table = _first_table([str(path)], options, None)
    native = SequenceFilesToDataSets(LabelSpec(label_index=1, num_classes=2), options, table, 2)
    chain = SequencesToDataSet(label_index=1, num_classes=2)
    sequence = SequenceFileToRecords()((str(path), path.read_bytes()))
    if number:
        [expected] = native([str(path)])
        np.testing.assert_array_equal(chain(sequence).features, expected.features)
        return
    message = r"a.csv, line 2 \(step 1\), column 0: expected a number"
    with pytest.raises(CsvError, match=message):
        list(native([str(path)]))
    with pytest.raises(CsvError, match=message):
        chain(sequence)


def test_the_step_of_an_error_counts_records_not_lines():
    # a quoted field may hold line breaks (and lines may be blank): step = data records before
    from sparkbatch.records.csv_parser import CsvOptions
    from sparkbatch.spark.sequences import _with_step

    text = b'h\n1,"2\n\n3",0\n\n4,5,0\n6,x,0\n'
    error = CsvError(
        "a.csv, line 7, column 1: expected a number, found 'x'", source="a.csv", line=7, column=1
    )
    got = _with_step(error, text, CsvOptions(skip_lines=1))
    assert str(got) == "a.csv, line 7 (step 2), column 1: expected a number, found 'x'"
    assert (got.source, got.line, got.column) == ("a.csv", 7, 1)
    records = CSVSequenceRecordReader(skip_lines=1).parse_sequence(text.replace(b"x", b"7"))
    assert records.lines == (2, 6, 7)  # the per-record path: line 7 is step 2 too
