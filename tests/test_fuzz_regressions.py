"""Hostile inputs kept from fuzzing the native entry points (``fuzz/run.sh``, docs/development.md).

Each file under ``tests/fuzz_regressions/<target>/`` goes through the public Python API and must
give a clean sparkbatch error (or ``ValueError`` for options the API refuses) or a valid result,
never a crash; ``.ci/sanitize`` runs this module against the ASan + UBSan build.

- ``csv/``: 6 option bytes, then CSV text, as ``fuzz/fuzz_csv.cpp`` reads them (``csv_options``
  here decodes the options the same way);
- ``format/``: minibatch (safetensors) files, read from bytes, from a file object and from a file
  (the native whole-file reader);
- ``json/``: header texts, read as the header of a file with no data section.

Inputs too large to keep as files are built by the tests at the end.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparkbatch import _native
from sparkbatch.data import format as fmt
from sparkbatch.errors import CsvError, FormatError
from sparkbatch.records.csv_parser import CsvOptions, parse_csv_buffer

HERE = Path(__file__).parent / "fuzz_regressions"


def cases(target: str) -> list[Path]:
    folder = HERE / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# --------------------------------------------------------------------------------------------
# CSV

CATEGORY_LISTS = [
    ["a", "b", "c"],
    ["", "x"],
    ["cat", "dog", '"q"', "a,b"],
    ["1", "2", "10", "-0"],
    [" a", "b ", "\t"],
    ["a", "a"],
    [],
    [f"n{i}" for i in range(25)],
]
HAS_QUOTED_NEWLINES = "quoted_newlines" in (_native.parse_csv.__doc__ or "")


def csv_options(o: bytes) -> dict[str, Any]:
    """The keyword arguments of ``_native.parse_csv`` that ``decode_options`` in
    fuzz/fuzz_csv.cpp makes of the first 6 bytes of an input."""
    kwargs: dict[str, Any] = {
        "delimiter": ",;\t |:\0x"[o[0] & 7],
        "quote": "" if o[0] & 8 else "\"',\t"[(o[0] >> 4) & 3],
        "skip_lines": (o[0] >> 6) & 3,
        "on_error": "skip" if o[1] & 8 else "raise",
        "threads": 2 if o[1] & 16 else 1,
    }
    cols = o[1] & 7
    kwargs["columns"] = (0 if cols == 0 else 300) if o[1] & 0x80 else (cols or -1)
    class_columns: dict[int, int] = {}
    categories: dict[int, list[str]] = {}
    string_columns: list[int] = []
    for s in o[2 : 2 + ((o[1] >> 5) & 3)]:
        col = (-1 if s & 1 else 300) if s & 0x80 else s & 7
        kind, param = (s >> 3) & 3, (s >> 5) & 3
        if kind in (0, 3):
            class_columns[col] = 0 if kind == 3 and param == 0 else [1, 3, 10, 2**63 - 1][param]
        elif kind == 1:
            categories[col] = CATEGORY_LISTS[(param + 4 * (s & 1)) % len(CATEGORY_LISTS)]
        else:
            string_columns.append(col)
    kwargs.update(class_columns=class_columns, categories=categories, string_columns=string_columns)
    if HAS_QUOTED_NEWLINES:
        kwargs["quoted_newlines"] = not o[5] & 1
    return kwargs


def check_parsed(result: dict, kwargs: dict[str, Any]) -> None:
    values = result["values"]
    assert values.dtype == np.float32 and values.ndim == 2
    rows = values.shape[0]
    for column, cells in result["strings"].items():
        assert len(cells) == rows and all(isinstance(c, str) for c in cells)
        assert np.isnan(values[:, column]).all()
    for column, n in kwargs["class_columns"].items():
        if 0 <= column < values.shape[1]:
            assert ((values[:, column] >= 0) & (values[:, column] < n)).all()
    if result["error"] is not None:
        line, column, text, expected = result["error"]
        assert line >= 1 and column >= -1 and isinstance(text, str) and expected
        if kwargs["on_error"] == "raise":
            assert rows == 0
    else:
        assert result["skipped"] == 0


@pytest.mark.parametrize("path", cases("csv"), ids=ids(cases("csv")))
def test_csv_input(path: Path) -> None:
    data = path.read_bytes()
    kwargs = csv_options(data[:6].ljust(6, b"\0"))
    text = data[6:]
    try:
        result = _native.parse_csv(text, **kwargs)
    except ValueError:
        return  # options the parser refuses (checked before the text is read)
    check_parsed(result, kwargs)
    for threads in (1, 3):  # the result does not depend on the threads
        again = _native.parse_csv(text, **{**kwargs, "threads": threads})
        np.testing.assert_array_equal(again["values"], result["values"])
        assert (again["strings"], again["error"]) == (result["strings"], result["error"])

    options = CsvOptions(
        kwargs["delimiter"], kwargs["quote"], kwargs["skip_lines"], kwargs["on_error"]
    )
    extra = {"quoted_newlines": kwargs["quoted_newlines"]} if HAS_QUOTED_NEWLINES else {}
    try:
        parsed = parse_csv_buffer(
            text,
            options,
            source=path.name,
            class_columns=kwargs["class_columns"],
            categories=kwargs["categories"],
            string_columns=kwargs["string_columns"],
            threads=kwargs["threads"],
            **extra,
        )
    except CsvError as e:
        assert kwargs["on_error"] == "raise"
        assert path.name in str(e)
        if kwargs["columns"] == -1:  # parse_csv_buffer takes the width from the first row
            assert e.line == result["error"][0]
    else:
        if kwargs["columns"] == -1:
            assert kwargs["on_error"] == "skip" or result["error"] is None
            np.testing.assert_array_equal(parsed.values, result["values"])


# --------------------------------------------------------------------------------------------
# Minibatch files and headers


def outcome(source: Any, verify: bool) -> tuple[str, Any]:
    """("error", message) for a FormatError, else ("ok", the tensors' names, dtypes and shapes)."""
    try:
        arrays, metadata = fmt.load_tensors(source, verify=verify)
    except FormatError as e:
        return "error", str(e).split(": ", 1)[1]  # without the file's name
    for a in arrays.values():
        assert isinstance(a, np.ndarray)
        a.tobytes()  # every byte readable
    return "ok", ({k: (a.dtype.str, a.shape) for k, a in arrays.items()}, metadata)


def check_file(data: bytes, tmp_path: Path) -> None:
    """The same outcome from every reader; any minibatch decoded is usable."""
    path = tmp_path / "input.safetensors"
    path.write_bytes(data)
    for verify in (True, False):
        from_buffer = outcome(io.BytesIO(data), verify)
        from_file = outcome(path, verify)
        assert from_buffer == from_file
        try:
            batch = fmt.from_bytes(data, verify=verify)
        except FormatError:
            continue
        assert from_buffer[0] == "ok"
        fmt.from_bytes(fmt.to_bytes(batch))  # writes and reads back


@pytest.mark.parametrize("path", cases("format"), ids=ids(cases("format")))
def test_format_input(path: Path, tmp_path: Path) -> None:
    check_file(path.read_bytes(), tmp_path)


@pytest.mark.parametrize("path", cases("json"), ids=ids(cases("json")))
def test_json_input(path: Path, tmp_path: Path) -> None:
    text = path.read_bytes()
    check_file(struct.pack("<Q", len(text)) + text, tmp_path)


def header_file(text: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(text)) + text + data


def test_header_with_more_than_a_million_values_is_refused() -> None:
    # Each value costs ~100 bytes parsed, so a 100 MB header of "0," took some 10 GB.
    text = b'{"features":{"dtype":"U8","shape":[' + b"0," * (1 << 20) + b'0],"data_offsets":[0,0]}}'
    with pytest.raises(FormatError, match="more than 1048576 values"):
        fmt.load_tensors(io.BytesIO(header_file(text)))


def test_header_with_many_keys_finds_a_duplicate() -> None:
    # Keys were looked up member by member: quadratic (40,000 keys took 2.4 s, 10 million hours).
    keys = b",".join(b'"k%d":0' % i for i in range(200_000))
    with pytest.raises(FormatError, match='duplicate key "k7"'):
        fmt.load_tensors(io.BytesIO(header_file(b"{" + keys + b',"k7":1}')))
    with pytest.raises(FormatError, match='tensor "k0" must be an object'):
        fmt.load_tensors(io.BytesIO(header_file(b"{" + keys + b"}")))


@pytest.mark.parametrize("name", ["__metadata__", "__pad.0", "__pad.7"])
def test_writer_refuses_reserved_tensor_names(name: str) -> None:
    # __metadata__ and __pad.0 made a file with a duplicate key; __pad.7 vanished when read.
    tensors = {name: np.ones(3, np.uint8), "x": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="reserved"):
        fmt.save_tensors(tensors, io.BytesIO(), {})


def test_writer_refuses_a_repeated_tensor_name() -> None:
    tensors = [("x", "F32", np.ones(2, np.float32)), ("x", "F32", np.ones(2, np.float32))]
    with pytest.raises(ValueError, match="repeats"):
        _native.serialize(tensors, {})
