"""Records and sequences of one or more readers to MultiDataSets: DataVec's
``RecordReaderMultiDataSetIterator`` and its ``Builder``.

A :class:`MultiDataSetBuilder` names readers (record readers such as
:class:`~sparkbatch.records.CSVRecordReader`, sequence readers such as
``CSVSequenceRecordReader``) and says which columns of which reader make each input and output
array of a :class:`~sparkbatch.data.MultiDataSet`: an inclusive column range, or a class column
made one-hot. Iterating the builder reads one record (or sequence) from every reader per example
and yields MultiDataSets of ``batch_size`` examples. On Spark the readers are placeholders naming
RDDs, and :func:`sparkbatch.spark.map_rrmdsi` feeds the records of joined RDDs through the same
conversion (:meth:`MultiDataSetBuilder.converter`).

Arrays, float32:

* from a record reader: ``[n, w]`` (``w`` columns of the range, or ``num_classes`` one-hot);
* from a sequence reader: ``[n, w, T]``, with a mask ``[n, T]`` (1 on a real step) when the
  sequences of the minibatch differ in length; one-hot of a sequence column is one-hot per step.

NOTE [alignment of several readers]: as DL4J's builder, every sequence array of a minibatch is
padded to the longest sequence of *any* sequence reader in it; ``alignment`` (DL4J's
``AlignmentMode``, default ``"align_start"`` as in DL4J's builder) says where the padding goes:
at the end (``"align_start"``), at the start (``"align_end"``), or nowhere
(``"equal_length"``: every sequence of every sequence reader in a minibatch must have the same
length, else :class:`~sparkbatch.errors.SequenceLengthError` names the two sequences).

NOTE [whole-array conversion]: a minibatch is converted reader by reader at once: one numpy
array of all its records (all steps of all its sequences, for a sequence reader), then column
slices and a vectorised one-hot with whole-array range checks. Only the columns some array uses
are converted to numbers, so a text key column needs no care. Only when a check fails does
Python look cell by cell, to name the first bad one: its file (or key) and line, the step of a
sequence, and the column (0-based, as steps are).

NOTE [one width across partitions]: a converter serves one pass, so on Spark each partition
has its own. Where an array takes its columns up to the last (``last=None``), records of 6
columns in one partition and of 5 in another would give arrays of other widths in one RDD;
:func:`sparkbatch.spark.map_rrmdsi` therefore reads the width of the first record of such a
reader's RDD on the driver and gives it to every partition's converter (``converter(widths)``),
so that a record of another width is named wherever it is.

NOTE [checks beyond DL4J]: DL4J checks one-hot indices only against ``num_classes`` (negatives
and fractions pass unnoticed), lets readers of different lengths end the iteration silently at
the shortest, and fails on a bad column with a bare index error. Here a class index must be an
integer in ``[0, num_classes)``, every reader must give as many records as the others, and
every record of a reader the same number of columns; each failure is a
:class:`~sparkbatch.errors.CsvError` naming the record.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparkbatch._arguments import check_int
from sparkbatch.data import MultiDataSet, check_alignment, pad_sequences
from sparkbatch.errors import CsvError, SequenceLengthError
from sparkbatch.records import SequenceRecord

__all__ = ["ArraySpec", "MultiDataSetBuilder", "MultiDataSetConverter"]

# Where record i of a reader came from: (source, line); either may be None.
Locate = Callable[[int], tuple[str | None, int | None]]


@dataclass(frozen=True)
class ArraySpec:
    """One input or output array: columns ``first..last`` (inclusive; None = from the first /
    to the last column) of reader ``reader``, or its column ``column`` one-hot encoded into
    ``num_classes`` columns."""

    reader: str
    first: int | None = None
    last: int | None = None
    column: int | None = None
    num_classes: int | None = None

    @property
    def one_hot(self) -> bool:
        """Whether this array is a one-hot encoded class column."""
        return self.column is not None

    def describe(self) -> str:
        """The array's columns in words, for messages."""
        if self.one_hot:
            return f"column {self.column} one-hot into {self.num_classes} classes"
        if self.first is None and self.last is None:
            return "all columns"
        return f"columns {self.first or 0}..{'last' if self.last is None else self.last}"


def _column(name: str, value: object) -> int:
    return check_int(name, value, minimum=0)


def _where(source: str | None, line: int | None, step: int | None, column: int | None) -> str:
    parts = [] if source is None else [str(source)]
    if line is not None:
        parts.append(f"line {line}")
    if step is not None:
        parts.append(f"step {step}")
    if column is not None and column >= 0:
        parts.append(f"column {column}")
    return ", ".join(parts)


def _error(
    source: str | None,
    line: int | None,
    step: int | None,
    column: int | None,
    text: str,
    expected: str,
    found: str | None = None,
) -> CsvError:
    """A CsvError whose message names the record (source, line), the step and the column."""
    where = _where(source, line, step, column)
    shown = text if len(text) <= 120 else text[:117] + "..."
    what = f"expected {expected}, found " + (f"{found}: {shown!r}" if found else repr(shown))
    message = f"{where}: {what}" if where else what
    return CsvError(message, source=source, line=line, column=column, text=text, expected=expected)


def _show(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else repr(value)


def _number(value: object) -> float | None:
    """``value`` as numpy's ``astype(float64)`` converts it, None where it cannot (or None)."""
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


class _Rows:
    """The rows of one reader in a minibatch: the records, or every step of the sequences.

    ``lengths`` is None for a record reader; for a sequence reader, the steps of each sequence
    (row ``r`` is step ``r - offsets[i]`` of sequence ``i``).
    """

    def __init__(self, name: str, items: Sequence[Any], sequence: bool, locate: Locate) -> None:
        self.name = name
        self.items = items
        self.locate = locate
        self.sequence = sequence
        if sequence:
            lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
            empty = np.flatnonzero(lengths == 0)
            self.lengths: np.ndarray | None = lengths
            if empty.size:
                source, line = self.at(int(empty[0]))
                raise _error(source, line, None, None, "", "a sequence of at least one step")
            self.offsets = np.concatenate([[0], np.cumsum(lengths)])
            self.rows: list[Any] = list(itertools.chain.from_iterable(items))
        else:
            self.lengths = None
            self.rows = items if isinstance(items, list) else list(items)

    def at(self, i: int, step: int | None = None) -> tuple[str | None, int | None]:
        """(source, line) of example ``i`` (of its ``step``, for a sequence)."""
        source, line = self.locate(i)
        item = self.items[i]
        if isinstance(item, SequenceRecord):  # it knows its file and the line of each step
            if item.source and item.source != source:
                source = item.source if source is None else f"{source} ({item.source})"
            if line is None and step is not None:
                line = item.line(step)
        return source, line

    def where(self, row: int) -> tuple[str | None, int | None, int | None]:
        """(source, line, step) of row ``row``."""
        if self.lengths is None:
            return (*self.locate(row), None)
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        step = row - int(self.offsets[i])
        return (*self.at(i, step), step)

    def error(
        self, row: int, column: int | None, text: str, expected: str, found: str | None = None
    ) -> CsvError:
        source, line, step = self.where(row)
        return _error(source, line, step, column, text, expected, found)

    def row_text(self, row: int) -> str:
        return ",".join(_show(v) for v in self.rows[row])


class MultiDataSetConverter:
    """Converts the records of one minibatch, reader by reader, into a MultiDataSet.

    Made by :meth:`MultiDataSetBuilder.converter`; one converter serves one pass (on Spark, one
    partition) and remembers each reader's number of columns from its first minibatch, so that a
    later record of another width is named too. ``widths`` gives some readers' widths up front
    (NOTE [one width across partitions]). See NOTE [whole-array conversion].
    """

    def __init__(
        self, builder: MultiDataSetBuilder, widths: Mapping[str, tuple[int, str]] | None = None
    ) -> None:
        self.inputs = tuple(builder.inputs)
        self.outputs = tuple(builder.outputs)
        self.sequence_readers = {
            name for name, (_, sequence) in builder.readers.items() if sequence
        }
        self.mode = builder.alignment_mode
        self.widths: dict[str, int] = {name: w for name, (w, _) in (widths or {}).items()}
        self._origins = {name: origin for name, (_, origin) in (widths or {}).items()}
        self._used = {
            name: [s for s in self.inputs + self.outputs if s.reader == name]
            for name in builder.readers
        }

    def convert(
        self,
        records: Mapping[str, Sequence[Any]],
        sources: Mapping[str, Sequence[str | None]] | None = None,
        lines: Mapping[str, Sequence[int | None]] | None = None,
    ) -> MultiDataSet:
        """One MultiDataSet of the ``n`` examples in ``records``.

        Parameters
        ----------
        records : mapping of reader name to a sequence of ``n`` records (lists of values) or,
            for a sequence reader, ``n`` sequences (lists of per-step records)
            Every reader the builder's arrays use, each with the same ``n >= 1``.
        sources : mapping of reader name to ``n`` descriptions, optional
            Where each record came from (a file, a key), for error messages.
        lines : mapping of reader name to ``n`` line numbers, optional
            The line of each record in its source, for error messages.

        Raises
        ------
        CsvError
            A record of another width than the reader's first, a column range outside the
            record, a cell that is not a number, a class index that is not an integer in
            ``[0, num_classes)``, an empty sequence; the message names the source (and line),
            the step and the column.
        SequenceLengthError
            ``alignment="equal_length"`` and two sequences of the minibatch differ in length.
        """
        missing = [name for name in self._used if name not in records]
        if missing:
            raise ValueError(f"records has no entry for reader {missing[0]!r}")
        counts = {name: len(records[name]) for name in self._used}
        n = next(iter(counts.values()))
        for name, count in counts.items():
            if count != n:
                first = next(iter(counts))
                raise ValueError(
                    f"reader {name!r} gave {count} records but reader {first!r} gave {n}; "
                    "every reader must give one record per example"
                )
        if n == 0:
            raise ValueError("no records: a MultiDataSet needs at least one example")
        rows = {}
        for name in counts:
            locate = _locator(
                None if sources is None else sources.get(name),
                None if lines is None else lines.get(name),
            )
            rows[name] = _Rows(name, records[name], name in self.sequence_readers, locate)
        steps = self._steps(rows)
        values = {name: self._values(r) for name, r in rows.items()}
        arrays: list[tuple[np.ndarray, np.ndarray | None]] = []
        for spec in self.inputs + self.outputs:
            r = rows[spec.reader]
            table = self._array(spec, r, values[spec.reader])
            if r.lengths is None:
                arrays.append((table, None))
                continue
            pieces = np.split(table, r.offsets[1:-1])
            # lengths across readers were checked in _steps, so equal_length cannot fail here
            padded, mask = pad_sequences(pieces, self.mode, length=steps, dtype=np.float32)
            arrays.append((padded, mask))
        k = len(self.inputs)
        return MultiDataSet(
            [a for a, _ in arrays[:k]],
            [a for a, _ in arrays[k:]],
            [m for _, m in arrays[:k]],
            [m for _, m in arrays[k:]],
        )

    def _steps(self, rows: Mapping[str, _Rows]) -> int | None:
        """The padded length of every sequence array: NOTE [alignment of several readers]."""
        lengths = [(name, r.lengths) for name, r in rows.items() if r.lengths is not None]
        if not lengths:
            return None
        if self.mode == "equal_length":
            name0, first = lengths[0]
            for name, ls in lengths:
                different = np.flatnonzero(ls != first[0])
                if different.size:
                    j = int(different[0])
                    a = rows[name0].at(0)[0] or "sequence 0"
                    b = rows[name].at(j)[0] or f"sequence {j}"
                    raise SequenceLengthError(
                        f"alignment 'equal_length': reader {name0!r} {a} has {int(first[0])} "
                        f"steps but reader {name!r} {b} has {int(ls[j])}; use "
                        "alignment('align_start') or 'align_end' to pad and mask sequences of "
                        "different lengths"
                    )
        return max(int(ls.max()) for _, ls in lengths)

    def _values(self, r: _Rows) -> np.ndarray:
        """The reader's rows as a float64 table ``[rows, width]``; only the columns an array
        uses are converted (the others are NaN)."""
        rows = r.rows
        widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        width = self.widths.setdefault(r.name, int(widths[0]))
        different = np.flatnonzero(widths != width)
        if different.size:
            row = int(different[0])
            raise r.error(
                row,
                -1,
                r.row_text(row),
                f"{width} columns (as "
                f"{self._origins.get(r.name, f'the first record of reader {r.name!r}')})",
                found=str(int(widths[row])),
            )
        used = self._columns(r, width)
        values = None
        if not any(isinstance(v, str) for v in rows[0]):  # a text column (a key) fails anyway
            try:  # numbers only: one C-level pass
                values = np.array(rows, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                pass
        if values is not None and values.shape == (len(rows), width):
            nan = np.isnan(values[:, used])
            if not nan.any():
                return values
        try:
            table = np.array(rows, dtype=object)
        except ValueError:  # cells that are sequences of different lengths
            table = np.empty(0, dtype=object)
        if table.shape != (len(rows), width):
            raise r.error(0, -1, r.row_text(0), "records of single values (numbers or text)")
        values = np.full((len(rows), width), np.nan)
        try:
            values[:, used] = table[:, used].astype(np.float64)
        except (TypeError, ValueError, OverflowError):
            raise self._first_bad(r, table, used) from None
        nan = np.isnan(values[:, used])
        if nan.any() and any(v is None for v in table[:, used][nan]):
            raise self._first_bad(r, table, used)
        return values

    def _columns(self, r: _Rows, width: int) -> np.ndarray:
        """The columns of ``r``'s reader that some array uses; a range outside the record is
        an error naming the array and the first record."""
        used: set[int] = set()
        for spec in self._used[r.name]:
            if spec.one_hot:
                first = last = int(spec.column)  # type: ignore[arg-type]
            else:
                first = 0 if spec.first is None else spec.first
                last = width - 1 if spec.last is None else spec.last
            if first >= width or last >= width or first > last:
                # first past the record with last=None gives first > last = width - 1
                last = max(first, last)
                raise r.error(
                    0,
                    -1,
                    r.row_text(0),
                    f"at least {last + 1} columns for the array of reader {r.name!r}, "
                    f"{spec.describe()}",
                    found=str(width),
                )
            used.update(range(first, last + 1))
        return np.array(sorted(used), dtype=np.intp)

    def _first_bad(self, r: _Rows, table: np.ndarray, used: np.ndarray) -> CsvError:
        classes = {
            int(s.column): int(s.num_classes)  # type: ignore[arg-type]
            for s in self._used[r.name]
            if s.one_hot
        }
        for row in range(table.shape[0]):
            for column in used:
                value = table[row, column]
                number = _number(value)
                if number is not None:
                    continue
                k = classes.get(int(column))
                expected = "a number" if k is None else f"an integer class index in [0, {k})"
                return r.error(row, int(column), _show(value), expected)
        raise AssertionError("conversion failed but no bad cell was found")  # pragma: no cover

    def _array(self, spec: ArraySpec, r: _Rows, values: np.ndarray) -> np.ndarray:
        """``spec``'s array ``[rows, w]`` float32 from the reader's table."""
        if not spec.one_hot:
            first = 0 if spec.first is None else spec.first
            last = values.shape[1] - 1 if spec.last is None else spec.last
            return np.ascontiguousarray(values[:, first : last + 1], dtype=np.float32)
        column, k = int(spec.column), int(spec.num_classes)  # type: ignore[arg-type]
        index = values[:, column]
        valid = (index >= 0) & (index < k) & (index == np.floor(index))
        if not valid.all():
            row = int(np.argmin(valid))
            raise r.error(
                row, column, _show(r.rows[row][column]), f"an integer class index in [0, {k})"
            )
        out = np.zeros((index.shape[0], k), np.float32)
        out[np.arange(index.shape[0]), index.astype(np.intp)] = 1.0
        return out


def _locator(sources: Sequence[str | None] | None, lines: Sequence[int | None] | None) -> Locate:
    def locate(i: int) -> tuple[str | None, int | None]:
        source = sources[i] if sources is not None and i < len(sources) else None
        line = lines[i] if lines is not None and i < len(lines) else None
        return source, line

    return locate


class MultiDataSetBuilder:
    """Build MultiDataSets from one or more readers: DL4J's
    ``RecordReaderMultiDataSetIterator.Builder``, iterable itself.

    Add the readers by name, then the inputs and outputs (in the order added); every method
    returns the builder, so calls chain. Iterating reads one record (or sequence) of every reader
    per example, from the start of every reader (readers with a ``reset()`` are reset), and
    yields MultiDataSets of ``batch_size`` examples, the last one smaller. See this module's
    notes for the arrays, the alignment of sequences and the checks.

    A reader is any iterable of records (a record reader) or of sequences, lists of per-step
    records (a sequence reader). Optional members, used when present: ``reset()``, and
    ``current_source`` / ``current_line`` (where the record just returned came from, named in
    errors). On Spark, readers are placeholders (:class:`sparkbatch.spark.SparkSource`,
    :class:`sparkbatch.spark.SparkSequenceSource`) for :func:`sparkbatch.spark.map_rrmdsi`.

    Parameters
    ----------
    batch_size : int
        Examples per MultiDataSet.

    Examples
    --------
    >>> from sparkbatch.storage import open_output
    >>> with open_output("memory://sparkbatch-doc/mds/iris.csv") as f:
    ...     _ = f.write(b"5.1,3.5,1.4,0.2,0\\n6.2,2.9,4.3,1.3,1\\n7.7,3.0,6.1,2.3,2\\n")
    >>> from sparkbatch.records import CSVRecordReader
    >>> reader = CSVRecordReader().initialize("memory://sparkbatch-doc/mds/iris.csv")
    >>> builder = (
    ...     MultiDataSetBuilder(batch_size=2)
    ...     .add_reader("data", reader)
    ...     .add_input("data", 0, 3)
    ...     .add_output_one_hot("data", 4, 3)
    ... )
    >>> [(m.features[0].shape, m.labels[0].tolist()) for m in builder]
    [((2, 4), [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), ((1, 4), [[0.0, 0.0, 1.0]])]
    >>> import fsspec; fsspec.filesystem("memory").rm("/sparkbatch-doc", recursive=True)
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = check_int("batch_size", batch_size)
        self.readers: dict[str, tuple[Any, bool]] = {}
        self.inputs: list[ArraySpec] = []
        self.outputs: list[ArraySpec] = []
        self.alignment_mode = "align_start"

    def __repr__(self) -> str:
        readers = ", ".join(
            f"{name!r}: {'sequences ' if seq else ''}{reader!r}"
            for name, (reader, seq) in self.readers.items()
        )
        return (
            f"MultiDataSetBuilder(batch_size={self.batch_size}, readers={{{readers}}}, "
            f"{len(self.inputs)} inputs, {len(self.outputs)} outputs, "
            f"alignment={self.alignment_mode!r})"
        )

    # -- readers -------------------------------------------------------------------------------

    def _add(self, name: str, reader: Any, sequence: bool) -> MultiDataSetBuilder:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a reader's name must be a non-empty str, got {name!r}")
        if name in self.readers:
            raise ValueError(f"a reader named {name!r} was added already")
        if reader is None:
            raise TypeError(f"reader {name!r} is None")
        self.readers[name] = (reader, sequence)
        return self

    def add_reader(self, name: str, reader: Any) -> MultiDataSetBuilder:
        """Add a record reader (one record, a list of values, per example) named ``name``."""
        return self._add(name, reader, False)

    def add_sequence_reader(self, name: str, reader: Any) -> MultiDataSetBuilder:
        """Add a sequence reader (one sequence, a list of per-step records, per example)."""
        return self._add(name, reader, True)

    # -- arrays --------------------------------------------------------------------------------

    def _spec(self, name: str, **fields: Any) -> ArraySpec:
        if name not in self.readers:
            known = ", ".join(map(repr, self.readers)) or "none yet"
            raise ValueError(f"no reader named {name!r} (readers: {known}); add it first")
        return ArraySpec(name, **fields)

    def _range(self, name: str, first: int | None, last: int | None) -> ArraySpec:
        first = None if first is None else _column("first", first)
        last = None if last is None else _column("last", last)
        if first is not None and last is not None and last < first:
            raise ValueError(f"last ({last}) must not be below first ({first})")
        return self._spec(name, first=first, last=last)

    def _one_hot(self, name: str, column: int, num_classes: int) -> ArraySpec:
        return self._spec(
            name,
            column=_column("column", column),
            num_classes=check_int("num_classes", num_classes),
        )

    def add_input(
        self, name: str, first: int | None = None, last: int | None = None
    ) -> MultiDataSetBuilder:
        """Add an input: columns ``first..last`` (inclusive, 0-based) of reader ``name``; None
        for ``first`` is the first column, for ``last`` the last one (both None: all)."""
        self.inputs.append(self._range(name, first, last))
        return self

    def add_input_one_hot(self, name: str, column: int, num_classes: int) -> MultiDataSetBuilder:
        """Add an input: the class index in ``column`` of reader ``name``, one-hot encoded."""
        self.inputs.append(self._one_hot(name, column, num_classes))
        return self

    def add_output(
        self, name: str, first: int | None = None, last: int | None = None
    ) -> MultiDataSetBuilder:
        """Add an output (labels): columns ``first..last`` of reader ``name``, as
        :meth:`add_input`."""
        self.outputs.append(self._range(name, first, last))
        return self

    def add_output_one_hot(self, name: str, column: int, num_classes: int) -> MultiDataSetBuilder:
        """Add an output: the class index in ``column`` of reader ``name``, one-hot encoded
        (per step for a sequence reader)."""
        self.outputs.append(self._one_hot(name, column, num_classes))
        return self

    def alignment(self, mode: str) -> MultiDataSetBuilder:
        """How sequences of different lengths line up: ``"align_start"`` (default),
        ``"align_end"`` or ``"equal_length"`` (DL4J's upper-case names work too); see
        NOTE [alignment of several readers] in this module."""
        self.alignment_mode = check_alignment(mode)
        return self

    # -- conversion ----------------------------------------------------------------------------

    def converter(
        self, widths: Mapping[str, tuple[int, str]] | None = None
    ) -> MultiDataSetConverter:
        """A :class:`MultiDataSetConverter` of this builder's arrays, for one pass.

        ``widths`` maps a reader's name to the number of columns every record of it must have
        and where that number came from, for messages (``(6, "the first record of
        rdd_or_rdds[0]")``); other readers take the width of their first record.

        Raises ValueError if the builder has no input, or a reader no array uses.
        """
        if not self.inputs:
            raise ValueError("the builder has no input: call add_input or add_input_one_hot")
        used = {s.reader for s in self.inputs + self.outputs}
        unused = [name for name in self.readers if name not in used]
        if unused:
            raise ValueError(
                f"reader {unused[0]!r} is used by no input or output; add one or drop it"
            )
        return MultiDataSetConverter(self, widths)

    def __iter__(self) -> Iterator[MultiDataSet]:
        converter = self.converter()
        readers = {name: reader for name, (reader, _) in self.readers.items()}
        for reader in readers.values():
            if hasattr(reader, "reset"):
                reader.reset()
        return self._batches(converter, readers)

    def _batches(
        self, converter: MultiDataSetConverter, readers: Mapping[str, Any]
    ) -> Iterator[MultiDataSet]:
        iterators = {name: iter(reader) for name, reader in readers.items()}
        tracked = {
            name: (hasattr(r, "current_source"), hasattr(r, "current_line"))
            for name, r in readers.items()
        }
        total = 0
        while True:
            records: dict[str, list[Any]] = {}
            sources: dict[str, list[str | None]] = {}
            lines: dict[str, list[int | None]] = {}
            for name, it in iterators.items():
                reader = readers[name]
                has_source, has_line = tracked[name]
                got, src, ln = [], [], []
                for item in itertools.islice(it, self.batch_size):
                    got.append(item)
                    src.append(reader.current_source if has_source else None)
                    ln.append(reader.current_line if has_line else None)
                records[name], sources[name], lines[name] = got, src, ln
            counts = {name: len(got) for name, got in records.items()}
            short = min(counts, key=counts.__getitem__)
            long = max(counts, key=counts.__getitem__)
            if counts[short] != counts[long]:
                raise ValueError(
                    f"reader {short!r} ended after {total + counts[short]} records but reader "
                    f"{long!r} has more; every reader must give one record per example"
                )
            if counts[long] == 0:
                return
            total += counts[long]
            yield converter.convert(records, sources, lines)
            if counts[long] < self.batch_size:
                return
