"""The native CSV parser, ``sparkbatch._native.parse_csv``: values, rounding, errors and threads."""

from __future__ import annotations

import io
import mmap
import struct
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from sparkbatch import _native

parse = _native.parse_csv


def values(text: str | bytes, **kwargs: object) -> np.ndarray:
    """The parsed matrix, checking that the parse found no error."""
    data = text.encode() if isinstance(text, str) else text
    result = parse(data, **kwargs)
    assert result["error"] is None, result["error"]
    return result["values"]


def error(text: str | bytes, **kwargs: object) -> tuple[int, int, str, str]:
    data = text.encode() if isinstance(text, str) else text
    result = parse(data, **kwargs)
    assert result["error"] is not None
    return result["error"]


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def nearest_f32(text: str) -> np.float32:
    """The float32 nearest to the decimal `text` (ties to even), computed exactly."""
    exact = Fraction(text)
    magnitude = abs(exact)
    if magnitude >= 2**128 - 2**103:  # halfway from FLT_MAX to 2^128 and beyond
        best = np.float32(np.inf)
    else:
        with np.errstate(over="ignore", under="ignore"):
            guess = np.float32(float(magnitude))
        candidates = {guess, np.nextafter(guess, np.float32(0)), np.nextafter(guess, np.float32(np.inf))}
        finite = [c for c in candidates if np.isfinite(c)]
        best = min(finite, key=lambda c: (abs(Fraction(float(c)) - magnitude), f32_bits(float(c)) & 1))
    return np.float32(-best) if exact < 0 else np.float32(best)


# --------------------------------------------------------------------------------------------
# Numbers


def test_numbers_match_numpy_on_generated_data() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2000, 12)) * np.power(10.0, rng.integers(-6, 7, (2000, 12)))
    x[::7, 3] = 0.0
    x[::5, 4] = -x[::5, 4]
    buf = io.StringIO()
    for row in x:
        cells = [repr(float(v)) for v in row[:4]]  # shortest round-trip, up to 17 digits
        cells += ["%.6g" % v for v in row[4:8]]  # exponents below 1e-4 and above 1e6
        cells += ["%.9e" % v for v in row[8:10]]
        cells += ["%.3f" % v for v in row[10:]]
        buf.write(",".join(cells) + "\n")
    text = buf.getvalue()
    expected = np.array(
        [[np.float32(np.float64(c)) for c in line.split(",")] for line in text.splitlines()]
    )
    got = values(text)
    assert got.dtype == np.float32 and got.shape == (2000, 12)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


def test_short_decimals_round_like_numpy() -> None:
    rng = np.random.default_rng(3)
    digits = rng.integers(1, 10**9, 3000)
    scales = rng.integers(-12, 12, 3000)
    signs = rng.choice(["", "-", "+"], 3000)
    texts = [f"{s}{d}e{e}" for s, d, e in zip(signs, digits, scales)]
    texts += [f"{s}{d / 10**7:.7f}" for s, d in zip(signs, digits)]
    got = values("\n".join(texts))[:, 0]
    expected = np.array([np.float32(np.float64(t)) for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def test_midpoints_between_floats_round_correctly() -> None:
    rng = np.random.default_rng(11)
    bits = rng.integers(0x00800000, 0x7F000000, 300, dtype=np.uint32)
    lows = bits.view(np.float32)
    texts: list[str] = []
    expected: list[np.float32] = []
    for low in lows:
        high = np.nextafter(low, np.float32(np.inf))
        mid = (Decimal(float(low)) + Decimal(float(high))) / 2  # exact: few binary digits
        tiny = mid.scaleb(-30)
        even = low if f32_bits(float(low)) % 2 == 0 else high
        for text, want in ((mid, even), (mid + tiny, high), (mid - tiny, low)):
            texts.append(f"{text:.40e}")
            expected.append(want)
    assert min(len(t.split("e")[0]) for t in texts) > 25
    got = values("\n".join(texts))[:, 0]
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))


def test_long_and_awkward_decimals_are_correctly_rounded() -> None:
    rng = np.random.default_rng(5)
    texts = [
        "16777217",  # exactly between 16777216 and 16777218: ties to even
        "16777219",
        "33554434",
        "16777217.0",
        "0.1",
        "3.4028234663852886e38",  # FLT_MAX
        "3.4028235677973366e38",  # just below halfway to 2^128
        "3.4028236e38",  # beyond: inf
        "1e39",
        "-1e39",
        "1e-50",
        "-1e-50",
        "1.401298464324817e-45",  # smallest subnormal
        "7.006492321624085e-46",  # exactly half of it: ties to even, 0
        "7.006492321624086e-46",
        "1.1754942e-38",  # below the smallest normal
        "1.17549435e-38",
        "9999999999999999999999999",
        "0.000000000000000000000000000000001234567",
        "123456789012345678901234567890e-20",
        "1" + "0" * 400 + ".5e-400",
    ]
    for _ in range(400):
        digits = "".join(rng.choice(list("0123456789"), int(rng.integers(17, 30))))
        texts.append(f"{digits[0]}.{digits[1:]}e{int(rng.integers(-40, 38))}")
    got = values("\n".join(texts))[:, 0]
    expected = np.array([nearest_f32(t) for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def test_special_words_signs_and_spaces() -> None:
    got = values(" 1.5 ,\t-2 , +3.\n nan,NaN,-inf\nInfinity,-INF, .25\n-0,+0,1E2\n")
    assert got.shape == (4, 3)
    assert got[0].tolist() == [1.5, -2.0, 3.0]
    assert np.isnan(got[1, :2]).all() and got[1, 2] == -np.inf
    assert got[2].tolist() == [np.inf, -np.inf, 0.25]
    assert got[3].tolist() == [0.0, 0.0, 100.0]
    assert np.signbit(got[3, 0]) and not np.signbit(got[3, 1])


@pytest.mark.parametrize(
    "cell",
    ["", " ", "abc", "1.2.3", "1e", "e5", "--1", "1-", ".", "-", "0x10", "1,5".split(",")[0] + "a", "infinit"],
)
def test_bad_numbers_are_reported(cell: str) -> None:
    line, column, text, expected = error(f"1,2\n3,{cell}\n")
    assert (line, column, text, expected) == (2, 1, cell, "a number")


# --------------------------------------------------------------------------------------------
# Lines and quotes


def test_line_endings_blank_lines_and_skip_lines() -> None:
    text = "h1,h2\r\nh3\r\n\r\n1,2\r\n  \t\r\n\n3,4\r\n5,6"
    result = parse(text.encode(), skip_lines=2)
    assert result["error"] is None
    assert result["values"].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert result["lines"] == 8
    assert parse(b"1,2\n3,4\n")["lines"] == 2
    assert parse(b"1,2\n\n")["lines"] == 2
    assert parse(b"1,2\n3,4", skip_lines=5)["values"].shape == (0, 0)
    assert parse(b"1,2\n3,4", skip_lines=5)["lines"] == 2


def test_no_trailing_newline_and_crlf_match() -> None:
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal((50, 5)), 4).astype(np.float32)
    lines = [",".join(f"{v:.4f}" for v in row) for row in x]
    for text in ("\n".join(lines), "\r\n".join(lines) + "\r\n", "\r\n".join(lines)):
        np.testing.assert_array_equal(values(text), x)


def test_quoted_fields() -> None:
    text = 'x,"a,b",1\n"2.5","he said ""hi""",2\n3 , " multi\nline " ,"3"\n'
    result = parse(text.encode(), string_columns=[1])
    assert result["error"] is None
    got = result["values"]
    assert got[:, 2].tolist() == [1, 2, 3]
    assert got[1:, 0].tolist() == [2.5, 3.0]
    assert np.isnan(got[:, 1]).all()
    assert result["strings"] == {1: ["a,b", 'he said "hi"', " multi\nline "]}
    assert result["lines"] == 4
    # the first column is numeric: "x" is an error on line 1
    assert result["skipped"] == 0
    bad = parse(text.encode(), string_columns=[1], on_error="skip")
    assert bad["skipped"] == 1 and bad["error"] == (1, 0, "x", "a number")


def test_error_line_of_a_record_spanning_lines() -> None:
    text = 'h\n1,"a\nb\nc",2\n3,"d",x\n'
    assert error(text, skip_lines=1, string_columns=[1]) == (5, 2, "x", "a number")
    assert error('1,"a\nb",x\n', string_columns=[1]) == (1, 2, "x", "a number")


def test_no_quoting() -> None:
    result = parse(b'1,"2",3\n', quote="", string_columns=[1])
    assert result["strings"] == {1: ['"2"']}
    assert error(b'1,"2",3\n', quote="") == (1, 1, '"2"', "a number")
    assert values(b"1;'2';3\n", delimiter=";", quote="'").tolist() == [[1, 2, 3]]


def test_other_delimiters() -> None:
    assert values(b"1\t 2\t3\n4\t5\t6", delimiter="\t").tolist() == [[1, 2, 3], [4, 5, 6]]
    assert values(b"1 2  3\n", delimiter=" ", columns=4, class_columns={}, on_error="skip").shape == (0, 4)
    assert values(b"1|2\n", delimiter="|").tolist() == [[1, 2]]


def test_unterminated_quote() -> None:
    assert error(b'1,2\n3,"4\n5,6\n') == (2, 1, '"4\n5,6', "a closing quote")
    result = parse(b'1,2\n3,"4', on_error="skip")
    assert result["values"].tolist() == [[1, 2]]
    assert result["skipped"] == 1 and result["error"] == (2, 1, '"4', "a closing quote")
    assert error(b'1,"2"x\n') == (1, 1, '"2"x', "a delimiter after the closing quote")


def test_column_count_errors() -> None:
    assert error(b"1,2,3\n4,5\n") == (2, -1, "4,5", "3 columns, found 2")
    assert error(b"1,2,3\n\n4,5,6,7\r\n") == (3, -1, "4,5,6,7", "3 columns, found 4")
    assert error(b"1,2\n", columns=3) == (1, -1, "1,2", "3 columns, found 2")
    # the count wins over a bad cell in a row that is wrong as a whole
    assert error(b"1,2,3\nx,5\n") == (2, -1, "x,5", "3 columns, found 2")
    long_row = ",".join(["1"] * 300)
    line, column, text, expected = error(f"1\n{long_row}\n")
    assert (line, column, expected) == (2, -1, "1 columns, found 300") and text == long_row[:200]


def test_empty_and_blank_buffers() -> None:
    for data in (b"", b"\n\n", b" \r\n\t\n"):
        result = parse(data)
        assert result["values"].shape == (0, 0) and result["values"].dtype == np.float32
        assert result["error"] is None and result["skipped"] == 0
    assert parse(b"")["lines"] == 0
    assert parse(b"\n\n")["lines"] == 2
    assert parse(b"", columns=4)["values"].shape == (0, 4)
    assert parse(b"", string_columns=[0], columns=2)["strings"] == {0: []}


def test_buffer_types() -> None:
    data = b"1,2\n3,4\n"
    expected = [[1.0, 2.0], [3.0, 4.0]]
    assert values(memoryview(data)).tolist() == expected
    assert values(bytearray(data)).tolist() == expected
    assert values(np.frombuffer(data, dtype=np.uint8)).tolist() == expected
    with mmap.mmap(-1, len(data)) as m:
        m.write(data)
        assert values(m).tolist() == expected
    with pytest.raises(BufferError):
        parse(memoryview(b"1,2,3,4")[::2])


# --------------------------------------------------------------------------------------------
# Column kinds


def test_class_columns() -> None:
    got = values(b"1,3\n2,+3\n3,3.0\n4,3e0\n5, 0 \n6,-0\n7,\"9\"\n", class_columns={1: 10})
    assert got[:, 1].tolist() == [3, 3, 3, 3, 0, 0, 9]
    expected = "a class index in [0, 10)"
    for bad, line in (("2.5", 2), ("-1", 3), ("10", 4), ("x", 5), ("1e1", 6), ("nan", 7)):
        text = "\n".join([f"1,{c}" for c in ("1",) * (line - 1)] + [f"1,{bad}"]) + "\n"
        assert error(text, class_columns={1: 10}) == (line, 1, bad, expected)


def test_categories() -> None:
    text = 'cat,1\n dog ,2\n"cat",3\n" dog",4\n'
    got = values(text, categories={0: ["cat", "dog"]})
    assert got.tolist() == [[0, 1], [1, 2], [0, 3], [1, 4]]
    line, column, found, expected = error("cat,1\nbird,2\n", categories={0: ["cat", "dog"]})
    assert (line, column, found, expected) == (2, 0, "bird", "one of ['cat', 'dog']")
    assert error("Cat,1\n", categories={0: ["cat"]})[2:] == ("Cat", "one of ['cat']")


def test_string_columns() -> None:
    text = 'a,1,x\n"b,c",2, y \nd"e,3,"z""z"\n'
    result = parse(text.encode(), string_columns=[0, 2])
    assert result["error"] is None
    assert result["strings"] == {0: ["a", "b,c", 'd"e'], 2: ["x", " y ", 'z"z']}
    got = result["values"]
    assert got[:, 1].tolist() == [1, 2, 3] and np.isnan(got[:, [0, 2]]).all()
    assert parse("é,1\n".encode(), string_columns=[0])["strings"] == {0: ["é"]}


def test_on_error_skip_keeps_good_rows_and_counts_bad_ones() -> None:
    text = "1,a,0\n2,b,1\n3,c\n4,d,7\nx,e,1\n6,f,2\n7,\"g,0\n"
    result = parse(text.encode(), string_columns=[1], class_columns={2: 5}, on_error="skip")
    assert result["values"][:, [0, 2]].tolist() == [[1, 0], [2, 1], [6, 2]]
    assert result["strings"] == {1: ["a", "b", "f"]}
    assert result["skipped"] == 4
    assert result["error"] == (3, -1, "3,c", "3 columns, found 2")
    assert result["lines"] == 7
    raised = parse(text.encode(), string_columns=[1], class_columns={2: 5})
    assert raised["error"] == (3, -1, "3,c", "3 columns, found 2")
    assert raised["values"].shape == (0, 3) and raised["strings"] == {1: []}
    assert raised["skipped"] == 0


def test_columns_from_the_first_row_include_named_columns() -> None:
    assert error(b"1,2\n", class_columns={3: 2}) == (1, -1, "1,2", "4 columns, found 2")
    assert values(b"1,2,3,1\n", class_columns={3: 2}).tolist() == [[1, 2, 3, 1]]


# --------------------------------------------------------------------------------------------
# Threads


def make_table(rows: int, seed: int, quoted: bool) -> tuple[bytes, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 8)) * np.power(10.0, rng.integers(-3, 4, (rows, 8)))).astype(np.float32)
    labels = rng.integers(0, 7, rows)
    names = [f"n{i}" for i in range(rows)]
    if quoted:
        names = [f'"{n},\n""{i % 3}"""' if i % 4 == 0 else n for i, n in enumerate(names)]
    lines = [
        ",".join([names[i], *(repr(float(v)) for v in x[i]), str(labels[i])])
        for i in range(rows)
    ]
    data = ("\n".join(lines) + "\n").encode()
    table = np.column_stack([np.full(rows, np.nan, np.float32), x, labels.astype(np.float32)])
    return data, table, names


@pytest.mark.parametrize("quoted", [False, True])
def test_threads_give_the_single_threaded_result(quoted: bool) -> None:
    data, table, _ = make_table(60_000, 2, quoted)
    assert len(data) > 4 << 20
    kwargs = {"string_columns": [0], "class_columns": {9: 7}}
    one = parse(data, threads=1, **kwargs)
    many = parse(data, threads=5, **kwargs)
    default = parse(data, **kwargs)
    assert one["error"] is None
    np.testing.assert_array_equal(one["values"], table)
    for other in (many, default):
        np.testing.assert_array_equal(other["values"], one["values"])
        assert other["strings"] == one["strings"]
        assert other["lines"] == one["lines"]
    strings = one["strings"][0]
    assert strings[1] == "n1"
    if quoted:
        assert strings[0] == 'n0,\n"0"' and strings[4] == 'n4,\n"1"'


@pytest.mark.parametrize("quoted", [False, True])
def test_threads_report_the_same_first_error(quoted: bool) -> None:
    data, _, _ = make_table(60_000, 4, quoted)
    lines = data.split(b"\n")
    for at in (45_000, 30_123):  # 0-based physical line numbers
        lines[at] = lines[at].rsplit(b",", 1)[0] + b",oops"
    data = b"\n".join(lines)
    kwargs = {"string_columns": [0], "class_columns": {9: 7}}
    single = parse(data, threads=1, **kwargs)
    assert single["error"] is not None and single["error"][1:] == (9, "oops", "a class index in [0, 7)")
    for threads in (2, 5):
        multi = parse(data, threads=threads, **kwargs)
        assert multi["error"] == single["error"]
        assert multi["values"].shape == (0, 10)
        skip_one = parse(data, threads=1, on_error="skip", **kwargs)
        skip_many = parse(data, threads=threads, on_error="skip", **kwargs)
        assert skip_many["skipped"] == skip_one["skipped"] == 2
        assert skip_many["error"] == skip_one["error"] == single["error"]
        np.testing.assert_array_equal(skip_many["values"], skip_one["values"])
        assert skip_many["strings"] == skip_one["strings"]
    assert single["error"][0] == data[: data.index(b"oops")].count(b"\n") + 1


# --------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delimiter": ",,"}, "delimiter"),
        ({"delimiter": "1"}, "delimiter"),
        ({"delimiter": "\n"}, "delimiter"),
        ({"quote": ","}, "differ"),
        ({"quote": "ab"}, "quote"),
        ({"on_error": "ignore"}, "on_error"),
        ({"threads": -1}, "threads"),
        ({"skip_lines": -1}, "skip_lines"),
        ({"columns": 0}, "columns"),
        ({"class_columns": {1: 0}}, "positive"),
        ({"class_columns": {-1: 3}}, "column -1"),
        ({"columns": 2, "string_columns": [2]}, "columns=2"),
        ({"class_columns": {1: 3}, "string_columns": [1]}, "both"),
        ({"categories": {0: []}}, "empty"),
        ({"categories": {0: ["a", "a"]}}, "twice"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(b"1,2\n", **kwargs)


def test_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        parse(b"1\n", ",")  # type: ignore[misc]
