"""RDDs of records and sequences to an RDD of MultiDataSets: DL4J's ``IteratorUtils.mapRRMDSI``.

A :class:`~sparkbatch.convert.MultiDataSetBuilder` whose readers are placeholders,
:class:`SparkSource` (the ``i``-th RDD of records) and :class:`SparkSequenceSource` (the
``i``-th RDD of sequences), says which columns make each input and output;
:func:`map_rrmdsi` feeds it the records of those RDDs::

    builder = (
        MultiDataSetBuilder(32)
        .add_reader("a", SparkSource(0))
        .add_reader("b", SparkSource(1))
        .add_input("a", 1, 2)
        .add_output("b", 1, 2)
    )
    mds = map_rrmdsi([rdd_a, rdd_b], builder, key_columns=[0, 0])

NOTE [one shuffle join]: one RDD needs no join: each partition is converted as it is. Several
RDDs are joined by the value of their key column (a sequence by the key of its first step): each
record is tagged with its RDD, all are unioned and grouped by key with one ``groupByKey`` (one
shuffle; nothing is collected to the driver). A key must be hashable (numbers, strings, tuples;
``1`` and ``1.0`` are the same key, as in a dict) and appear at most once in each RDD: DL4J keeps
one of several records of a key silently, sparkbatch raises :class:`~sparkbatch.errors.
KeyJoinError` naming the key and the RDD. A key missing from some RDD raises the same error,
or, with ``filter_missing=True``, is dropped and counted (NOTE [missing keys]).

NOTE [minibatches, not examples]: DL4J yields one MultiDataSet per example. Here each partition's
examples are converted ``batch_size`` (the builder's) at a time, whole-array
(:class:`~sparkbatch.convert.MultiDataSetConverter`), so the RDD holds MultiDataSets of
``batch_size`` examples, the last of each partition smaller. ``batch_and_export`` and
``SparkNetwork.fit_multi`` re-cut them to their own batch size anyway; a builder of
``batch_size=1`` gives DL4J's one example per MultiDataSet.

NOTE [order]: one RDD keeps its order. Joined examples come in Spark's grouping order: keys
hashed into partitions, and within a partition in the order they arrive from the shuffle,
which is not guaranteed to be the same on every run. Add the key column to an input if you need
to know which example is which.

NOTE [missing keys]: with ``filter_missing=True`` the number of keys dropped is counted in a
Spark accumulator, ``rdd.missing_keys`` on the returned RDD: read ``rdd.missing_keys.value``
after an action has run over the whole RDD. As with every accumulator updated in a
transformation, a recomputed partition (a retried task, a second action on an uncached RDD)
counts again: cache the RDD, or read the value after the first action.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparkbatch._arguments import check_int, check_optional_int
from sparkbatch._jobs import JobDescription
from sparkbatch.convert.multi import MultiDataSetBuilder, MultiDataSetConverter
from sparkbatch.data import MultiDataSet
from sparkbatch.errors import KeyJoinError

if TYPE_CHECKING:
    from pyspark import RDD, Accumulator

__all__ = [
    "JoinedToMultiDataSets",
    "RecordsToMultiDataSets",
    "SparkSequenceSource",
    "SparkSource",
    "map_rrmdsi",
]


@dataclass(frozen=True)
class SparkSource:
    """The placeholder reader for the ``index``-th RDD of records given to :func:`map_rrmdsi`
    (DL4J's ``SparkSourceDummyReader``)."""

    index: int

    def __post_init__(self) -> None:
        check_int("index", self.index, minimum=0)

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(
            f"{self!r} is a placeholder for an RDD: convert with sparkbatch.spark.map_rrmdsi, "
            "or add a real reader to iterate the builder on one machine"
        )


@dataclass(frozen=True)
class SparkSequenceSource(SparkSource):
    """The placeholder sequence reader for the ``index``-th RDD of sequences (``seq_rdds``) of
    :func:`map_rrmdsi` (DL4J's ``SparkSourceDummySeqReader``)."""


def _label(tag: int, n_records: int) -> str:
    """How RDD ``tag`` (records first, then sequences) is named in messages."""
    return f"rdd_or_rdds[{tag}]" if tag < n_records else f"seq_rdds[{tag - n_records}]"


class _Sources(Sequence[str]):
    """Where example ``i`` of a chunk came from, for messages, formatted only when an error
    needs it: its key in the RDD ``label`` or, without keys, its position in the partition."""

    def __init__(
        self, label: str, keys: Sequence[Any] | None, first: int, partition: int, count: int
    ) -> None:
        self.label, self.keys, self.first, self.partition = label, keys, first, partition
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: Any) -> str:
        if self.keys is not None:
            return f"key {self.keys[i]!r} in {self.label}"
        return f"{self.label}, partition {self.partition}, element {self.first + i}"


class RecordsToMultiDataSets:
    """``rdd.mapPartitionsWithIndex(RecordsToMultiDataSets(builder))``: one RDD, no join.

    The partition's records (or sequences) are converted ``builder.batch_size`` at a time;
    errors name the RDD, the partition and the element.
    """

    def __init__(
        self,
        builder: MultiDataSetBuilder,
        label: str = "rdd_or_rdds[0]",
        widths: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        self.builder = builder
        self.label = label
        self.widths = dict(widths or {})

    def __call__(self, partition: int, items: Iterable[Any]) -> Iterator[MultiDataSet]:
        converter = self.builder.converter(self.widths)
        size = self.builder.batch_size
        it = iter(items)
        first = 0
        while True:
            chunk = list(itertools.islice(it, size))
            if not chunk:
                return
            names = list(self.builder.readers)  # several readers may name the same RDD
            sources = _Sources(self.label, None, first, partition, len(chunk))
            yield converter.convert(dict.fromkeys(names, chunk), dict.fromkeys(names, sources))
            first += len(chunk)


class _Keyed:
    """``rdd.map``: a record (or sequence) to ``(key, (tag, record))``."""

    def __init__(self, tag: int, column: int, sequence: bool, label: str) -> None:
        self.tag, self.column, self.sequence, self.label = tag, column, sequence, label

    def __call__(self, item: Any) -> tuple[Any, tuple[int, Any]]:
        record = item
        if self.sequence:
            if len(item) == 0:
                raise KeyJoinError(f"{self.label}: a sequence with no steps has no key")
            record = item[0]
        if self.column >= len(record):
            what = "first step" if self.sequence else "record"
            raise KeyJoinError(
                f"{self.label}: key column {self.column} is outside a {what} of "
                f"{len(record)} columns: {record!r}"[:300]
            )
        key = record[self.column]
        try:
            hash(key)
        except TypeError:
            raise KeyJoinError(
                f"{self.label}: the key {key!r} (column {self.column}) is a "
                f"{type(key).__name__}, which cannot be a join key: keys must be hashable "
                "(numbers, strings, tuples)"
            ) from None
        return key, (self.tag, item)


class JoinedToMultiDataSets:
    """``grouped.mapPartitionsWithIndex(JoinedToMultiDataSets(...))``: the groups
    ``(key, [(tag, record), ...])`` of one shuffle, checked (NOTE [one shuffle join]) and
    converted ``builder.batch_size`` examples at a time."""

    def __init__(
        self,
        builder: MultiDataSetBuilder,
        tags: dict[str, int],
        n_records: int,
        n_rdds: int,
        filter_missing: bool,
        missing: Accumulator | None,
        widths: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        self.builder = builder
        self.widths = dict(widths or {})
        self.tags = tags  # reader name -> RDD tag
        self.n_records = n_records
        self.n_rdds = n_rdds
        self.filter_missing = filter_missing
        self.missing = missing

    def _slots(self, key: Any, values: Iterable[tuple[int, Any]]) -> list[Any] | None:
        slots: list[Any] = [None] * self.n_rdds
        seen = [False] * self.n_rdds
        for tag, record in values:
            if seen[tag]:
                raise KeyJoinError(
                    f"key {key!r} appears more than once in {_label(tag, self.n_records)}; "
                    "each key must name one record per RDD"
                )
            seen[tag] = True
            slots[tag] = record
        if all(seen):
            return slots
        if self.filter_missing:
            if self.missing is not None:
                self.missing.add(1)
            return None
        absent = seen.index(False)
        present = [_label(t, self.n_records) for t in range(self.n_rdds) if seen[t]]
        raise KeyJoinError(
            f"key {key!r} is missing from {_label(absent, self.n_records)} (it is in "
            f"{', '.join(present)}); pass filter_missing=True to drop keys missing from any RDD"
        )

    def __call__(self, partition: int, groups: Iterable[Any]) -> Iterator[MultiDataSet]:
        converter: MultiDataSetConverter = self.builder.converter(self.widths)
        size = self.builder.batch_size
        joined = (
            (key, slots)
            for key, values in groups
            if (slots := self._slots(key, values)) is not None
        )
        while True:
            chunk = list(itertools.islice(joined, size))
            if not chunk:
                return
            keys = [key for key, _ in chunk]
            records = {name: [slots[tag] for _, slots in chunk] for name, tag in self.tags.items()}
            sources = {
                name: _Sources(_label(tag, self.n_records), keys, 0, partition, len(keys))
                for name, tag in self.tags.items()
            }
            yield converter.convert(records, sources)


def _columns(name: str, value: int | Sequence[int] | None, count: int) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [check_int(name, value, minimum=0)] * count
    values = [check_int(f"{name}[{i}]", v, minimum=0) for i, v in enumerate(value)]
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} RDDs; give one per RDD")
    return values


def _as_list(rdds: Any) -> list[Any]:
    if rdds is None:
        return []
    if isinstance(rdds, (list, tuple)):
        return list(rdds)
    return [rdds]


def map_rrmdsi(
    rdd_or_rdds: RDD | Sequence[RDD] | None,
    builder: MultiDataSetBuilder,
    *,
    key_columns: int | Sequence[int] | None = None,
    seq_rdds: RDD | Sequence[RDD] | None = None,
    seq_key_columns: int | Sequence[int] | None = None,
    filter_missing: bool = False,
    num_partitions: int | None = None,
) -> RDD[MultiDataSet]:
    """An RDD of MultiDataSets from one or more RDDs of records and of sequences.

    DL4J's ``IteratorUtils.mapRRMDSI``. The builder's readers must be placeholders:
    ``SparkSource(i)`` for ``rdd_or_rdds[i]`` (added with ``add_reader``),
    ``SparkSequenceSource(i)`` for ``seq_rdds[i]`` (added with ``add_sequence_reader``). A lazy
    transformation, but for one small job (``rdd.take(1)``) per RDD that an array takes up to
    its last column (``last=None``): the width of its first record becomes the width of every
    record of every partition (NOTE [one width across partitions] in
    :mod:`sparkbatch.convert.multi`); closed column ranges need no job.

    Parameters
    ----------
    rdd_or_rdds : RDD or list of RDDs, optional
        RDDs of records (lists of values), e.g. ``sc.textFile(...).map(StringToRecords())``.
    builder : MultiDataSetBuilder
        The readers (placeholders), inputs, outputs, alignment and ``batch_size``.
    key_columns : int or list of int, optional
        The key column of each RDD of records (one int: the same for all). Required when
        there is more than one RDD in all.
    seq_rdds : RDD or list of RDDs, optional
        RDDs of sequences (lists of per-step records, e.g. from ``SequenceFileToRecords``).
    seq_key_columns : int or list of int, optional
        The key column of each RDD of sequences; a sequence's key is in its first step.
    filter_missing : bool, default False
        Drop keys missing from any RDD (counted: NOTE [missing keys]) instead of raising
        :class:`~sparkbatch.errors.KeyJoinError`.
    num_partitions : int, optional
        Partitions of the join's shuffle; Spark's default if None.

    Returns
    -------
    RDD of MultiDataSet
        Minibatches of the builder's ``batch_size`` (NOTE [minibatches, not examples]). After a
        join with ``filter_missing=True`` it has an attribute ``missing_keys``, the accumulator
        counting the keys dropped (read ``.value`` after an action).

    Raises
    ------
    ValueError, TypeError
        At the call: a reader is not a placeholder, names an RDD that was not given or of the
        wrong kind; an RDD no reader names; key columns missing or of the wrong number.
    KeyJoinError
        On the executors (raised on the driver by an action in
        :func:`~sparkbatch.spark.executor_errors`): a key missing (``filter_missing=False``),
        repeated in one RDD, or unhashable; the message names the key and the RDD.
    CsvError
        On the executors: a record that does not fit the builder, or (open column ranges) of
        another width than the first record of its RDD; the message names the key (or the
        partition and element) and the RDD, the step and the column, and the widths.

    Examples
    --------
    >>> from sparkbatch.convert import MultiDataSetBuilder
    >>> a = sc.parallelize([["k1", 1.0, 2.0], ["k2", 3.0, 4.0]])
    >>> b = sc.parallelize([["k2", 1.0], ["k1", 0.0]])
    >>> builder = (
    ...     MultiDataSetBuilder(8)
    ...     .add_reader("a", SparkSource(0))
    ...     .add_reader("b", SparkSource(1))
    ...     .add_input("a", 1, 2)
    ...     .add_output_one_hot("b", 1, 2)
    ... )
    >>> [mds] = map_rrmdsi([a, b], builder, key_columns=[0, 0]).collect()
    >>> sorted(zip(mds.features[0].tolist(), mds.labels[0].tolist()))
    [([1.0, 2.0], [1.0, 0.0]), ([3.0, 4.0], [0.0, 1.0])]
    """
    if not isinstance(builder, MultiDataSetBuilder):
        raise TypeError(f"builder must be a MultiDataSetBuilder, got {type(builder).__name__}")
    records, sequences = _as_list(rdd_or_rdds), _as_list(seq_rdds)
    n_records, n_rdds = len(records), len(records) + len(sequences)
    if n_rdds == 0:
        raise ValueError("no RDD given: pass rdd_or_rdds and/or seq_rdds")
    if not isinstance(filter_missing, bool):
        raise TypeError(f"filter_missing must be a bool, got {filter_missing!r}")
    num_partitions = check_optional_int("num_partitions", num_partitions)
    builder.converter()  # the builder's own checks (an input, no unused reader), at the call
    tags = _reader_tags(builder, n_records, len(sequences))
    unnamed = [t for t in range(n_rdds) if t not in tags.values()]
    if unnamed:
        raise ValueError(
            f"{_label(unnamed[0], n_records)} is named by no reader of the builder; add a "
            "reader with its placeholder or leave the RDD out"
        )
    rdds = records + sequences
    widths = _widths(builder, tags, rdds, n_records)
    if n_rdds == 1:
        label = _label(0, n_records)
        return rdds[0].mapPartitionsWithIndex(RecordsToMultiDataSets(builder, label, widths))
    keys = _columns("key_columns", key_columns, n_records)
    seq_keys = _columns("seq_key_columns", seq_key_columns, len(sequences))
    if (n_records and keys is None) or (sequences and seq_keys is None):
        raise ValueError(
            f"joining {n_rdds} RDDs needs the key column of each: pass key_columns"
            + (" and seq_key_columns" if sequences else "")
        )
    columns = (keys or []) + (seq_keys or [])
    keyed = [
        rdd.map(_Keyed(tag, columns[tag], tag >= n_records, _label(tag, n_records)))
        for tag, rdd in enumerate(rdds)
    ]
    sc = rdds[0].context
    missing = sc.accumulator(0) if filter_missing else None
    grouped = sc.union(keyed).groupByKey(numPartitions=num_partitions)
    function = JoinedToMultiDataSets(
        builder, tags, n_records, n_rdds, filter_missing, missing, widths
    )
    result = grouped.mapPartitionsWithIndex(function)
    if missing is not None:
        result.missing_keys = missing  # type: ignore[attr-defined]
    return result


def _widths(
    builder: MultiDataSetBuilder, tags: Mapping[str, int], rdds: Sequence[Any], n_records: int
) -> dict[str, tuple[int, str]]:
    """The width of every reader with an open column range (``last=None``), from the first
    record (the first step of the first sequence) of its RDD: one small job per such RDD
    (NOTE [one width across partitions] in :mod:`sparkbatch.convert.multi`). An empty RDD, or
    a first element with no width, leaves the check to the converters."""
    open_ranges = dict.fromkeys(
        s.reader for s in builder.inputs + builder.outputs if not s.one_hot and s.last is None
    )
    taken: dict[int, tuple[int, str] | None] = {}
    widths = {}
    for name in open_ranges:
        tag = tags[name]
        if tag not in taken:
            taken[tag] = None
            label = _label(tag, n_records)
            with JobDescription(rdds[tag].context, f"sparkbatch map_rrmdsi: the width of {label}"):
                first = rdds[tag].take(1)
            sequence = tag >= n_records
            try:
                record = first[0][0] if sequence else first[0]
                what = "the first step of the first sequence" if sequence else "the first record"
                taken[tag] = (len(record), f"{what} of {_label(tag, n_records)}")
            except (IndexError, TypeError):
                pass
        if taken[tag] is not None:
            widths[name] = taken[tag]
    return widths


def _reader_tags(builder: MultiDataSetBuilder, n_records: int, n_sequences: int) -> dict[str, int]:
    """Each reader's RDD tag (records ``0..n_records-1``, then the sequences); ValueError or
    TypeError naming the reader whose placeholder is wrong."""
    tags = {}
    for name, (reader, sequence) in builder.readers.items():
        if not isinstance(reader, SparkSource):
            raise TypeError(
                f"reader {name!r} is a {type(reader).__name__}; on Spark every reader must be "
                "a placeholder, SparkSource(i) or SparkSequenceSource(i)"
            )
        kind = isinstance(reader, SparkSequenceSource)
        if kind != sequence:
            added = "add_sequence_reader" if sequence else "add_reader"
            wanted = "SparkSequenceSource" if sequence else "SparkSource"
            raise ValueError(
                f"reader {name!r} was added with {added} but is {reader!r}; use "
                f"{wanted}({reader.index})"
            )
        count, what = (n_sequences, "seq_rdds") if sequence else (n_records, "rdd_or_rdds")
        if reader.index >= count:
            raise ValueError(f"reader {name!r} is {reader!r} but {what} holds {count} RDDs")
        tags[name] = reader.index + (n_records if sequence else 0)
    return tags
