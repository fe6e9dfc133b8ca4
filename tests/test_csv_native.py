"""The native CSV parser, ``sparkbatch._native.parse_csv``: values, rounding, errors and threads."""

from __future__ import annotations

import io
import json
import mmap
import struct
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sparkbatch import _native
from sparkbatch.errors import CsvError
from sparkbatch.records.csv_parser import CsvOptions, parse_csv_buffer

parse = _native.parse_csv


def framed(data: bytes, kwargs: dict[str, object]) -> tuple[bytes, dict[str, object]]:
    """`data` behind a header line and before blank lines. The parser reads the first and last
    bytes of a buffer more carefully than the rest, so small inputs are checked framed as well."""
    skip = int(kwargs.get("skip_lines", 0))  # type: ignore[call-overload]
    return b"#" * 40 + b"\n" + data + b"\n" * 40, {**kwargs, "skip_lines": skip + 1}


def values(text: str | bytes, **kwargs: object) -> np.ndarray:
    """The parsed matrix, checking that the parse found no error (framed or not)."""
    data = text.encode() if isinstance(text, str) else text
    result = parse(data, **kwargs)
    assert result["error"] is None, result["error"]
    data2, kwargs2 = framed(data, kwargs)
    again = parse(data2, **kwargs2)
    assert again["error"] is None, again["error"]
    np.testing.assert_array_equal(again["values"], result["values"])
    assert again["strings"] == result["strings"]
    return result["values"]


def error(text: str | bytes, framed_too: bool = True, **kwargs: object) -> tuple:
    """The first error (and the same one a line further down when framed)."""
    data = text.encode() if isinstance(text, str) else text
    result = parse(data, **kwargs)
    assert result["error"] is not None
    if framed_too:
        data2, kwargs2 = framed(data, kwargs)
        line, *rest = parse(data2, **kwargs2)["error"]
        assert (line - 1, *rest) == result["error"]
    return result["error"]


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def nearest_f32(text: str) -> np.float32:
    """The float32 nearest to the decimal `text` (ties to even), computed exactly."""
    exact = Fraction(text)
    magnitude = abs(exact)
    if magnitude >= 2**128 - 2**103:  # halfway from FLT_MAX to 2^128, or beyond
        best = np.float32(np.inf)
    else:
        with np.errstate(over="ignore", under="ignore"):
            guess = np.float32(float(magnitude))  # at most one float away
            candidates = [guess, np.nextafter(guess, np.float32(0)), np.nextafter(guess, np.inf)]
        best = min(
            (c for c in candidates if np.isfinite(c)),
            key=lambda c: (abs(Fraction(float(c)) - magnitude), f32_bits(float(c)) & 1),
        )
    return np.float32(-best) if exact < 0 else np.float32(best)


# --------------------------------------------------------------------------------------------
# Numbers


def test_numbers_match_numpy_on_generated_data() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2000, 12)) * np.power(10.0, rng.integers(-6, 7, (2000, 12)))
    x[::7, 3] = 0.0
    buf = io.StringIO()
    for row in x:
        cells = [repr(float(v)) for v in row[:4]]  # shortest round trip, up to 17 digits
        cells += [f"{v:.6g}" for v in row[4:8]]  # exponents below 1e-4 and from 1e6
        cells += [f"{v:.9e}" for v in row[8:10]]
        cells += [f"{v:.3f}" for v in row[10:]]
        buf.write(",".join(cells) + "\n")
    text = buf.getvalue()
    expected = np.array(
        [[np.float32(np.float64(c)) for c in line.split(",")] for line in text.splitlines()]
    )
    got = values(text)
    assert got.dtype == np.float32 and got.shape == (2000, 12) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


def test_short_decimals_round_like_numpy() -> None:
    rng = np.random.default_rng(3)
    digits = rng.integers(1, 10**9, 3000)
    scales = rng.integers(-12, 12, 3000)
    signs = rng.choice(["", "-", "+"], 3000)
    texts = [f"{s}{d}e{e}" for s, d, e in zip(signs, digits, scales, strict=True)]
    texts += [f"{s}{d / 10**7:.7f}" for s, d in zip(signs, digits, strict=True)]
    texts += [f"{s}0.{d:09d}" for s, d in zip(signs, digits, strict=True)]
    texts += [f"{s}0.{d:012d}" for s, d in zip(signs, digits, strict=True)]  # 12 decimals
    texts += [f"{s}{d}.{d % 1000:03d}" for s, d in zip(signs, digits, strict=True)]  # 12 digits
    got = values("\n".join(texts))[:, 0]
    expected = np.array([np.float32(np.float64(t)) for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[::50], np.array([nearest_f32(t) for t in texts[::50]]))


def test_midpoints_between_floats_round_correctly() -> None:
    rng = np.random.default_rng(11)
    bits = rng.integers(0x00800000, 0x7F000000, 300, dtype=np.uint32)
    bits[:60] = rng.integers(0x4B800000, 0x5D000000, 60, dtype=np.uint32)  # integer midpoints
    bits[60:160] = rng.integers(0x44800000, 0x4B800000, 100, dtype=np.uint32)  # 1024..2^24
    texts: list[str] = []
    expected: list[np.float32] = []
    with localcontext() as exact:
        exact.prec = 400  # every sum and quotient below is exact
        for low in bits.view(np.float32):
            high = np.nextafter(low, np.float32(np.inf))
            mid = (Decimal(float(low)) + Decimal(float(high))) / 2
            tiny = mid.scaleb(-30)
            even = low if f32_bits(float(low)) % 2 == 0 else high
            for value, want in ((mid, even), (mid + tiny, high), (mid - tiny, low)):
                texts.append(format(value, "e"))
                expected.append(want)
            whole = mid == mid.to_integral_value()
            if whole and len(str(mid)) <= 13:  # the 16-byte fast path
                texts += [str(mid), str(mid + 1), str(mid - 1), f"{mid}.0", f"-{mid}"]
                expected += [even, high, low, even, -even]
            elif not whole and len(str(mid)) <= 15:  # exact, short, with a fraction
                texts += [str(mid), f"-{mid}0"]
                expected += [even, -even]
            # 17 digits: the nearest double is often the midpoint itself, the decimal is not
            for rounded in (format(mid, ".16e"), format(mid, ".17e")):
                texts.append(rounded)
                expected.append(nearest_f32(rounded))
    assert sum(len(t) > 25 for t in texts) > 500 and sum(len(t) <= 15 for t in texts) > 300
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
        "1.401298464324817e-45",  # the smallest subnormal
        "7.006492321624085e-46",  # just below half of it: 0
        "7.006492321624086e-46",  # just above: the smallest subnormal
        "1.1754942e-38",  # below the smallest normal
        "1.17549435e-38",
        "9999999999999999999999999",
        "0.000000000000000000000000000000001234567",
        "123456789012345678901234567890e-20",
        "1" + "0" * 400 + ".5e-400",
        "0.00000000000000000001",
        "1e0000000000000000000000000001",
    ]
    for _ in range(400):
        digits = "".join(rng.choice(list("0123456789"), int(rng.integers(17, 30))))
        texts.append(f"{digits[0]}.{digits[1:]}e{int(rng.integers(-40, 38))}")
    got = values("\n".join(texts))[:, 0]
    expected = np.array([nearest_f32(t) for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def test_shortest_round_trip_doubles_are_correctly_rounded() -> None:
    """``%.17g`` and repr() of doubles: 17 significant digits, after up to four zeros of a
    fraction (0.00012345678901234567), and 19 significant digits: the limits of long_number (16
    to 31 bytes) and of the scalar path."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal(4000) * np.power(10.0, rng.integers(-5, 6, 4000))
    texts = [f"{v:.17g}" for v in x] + [repr(float(v)) for v in x[:500]]
    texts += [f"{v:.18f}" for v in x[:500]]  # up to 24 digits, many of them leading zeros
    digits = rng.integers(10**18, 10**19, 500, dtype=np.uint64)
    texts += [f"{d}e{int(e)}" for d, e in zip(digits, rng.integers(-45, 20, 500), strict=True)]
    texts += [f"0.{d}" for d in digits[:100]] + [f"9{d}" for d in digits[:100]]  # 20 digits
    texts += ["9223372036854775807", "9223372036854775808", "0.00000000000000000000000001"]
    got = values("\n".join(texts))[:, 0]
    expected = np.array([nearest_f32(t) for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def test_exponent_cells_are_correctly_rounded() -> None:
    """Cells with an exponent take exponent_number (NOTE(csv-simd)) up to 15 bytes: every form
    of it, the float range's edges, and longer cells (the scalar path) alike."""
    rng = np.random.default_rng(23)
    mantissas = rng.standard_normal(3000) * np.power(10.0, rng.integers(-3, 4, 3000))
    texts = [f"{v:.6e}" for v in mantissas[:1000]] + [f"{v:.3E}" for v in mantissas[1000:2000]]
    texts += [f"{v:.8e}" for v in mantissas[2000:]]  # 15 bytes with a sign, 14 without
    digits = rng.integers(0, 10**7, 2000)
    exponents = rng.integers(-60, 45, 2000)
    forms = ["{d}e{x}", "{d}E+{x}", "-{d}.e{x}", "+.{d}e{x:03d}", "0.0{d}e{x}", "{d}.5e-0{y}"]
    texts += [
        forms[i % len(forms)].format(d=d, x=abs(x) if i % 2 else x, y=abs(x) % 10)
        for i, (d, x) in enumerate(zip(digits, exponents, strict=True))
    ]
    texts += [
        "3.4028234e38",
        "3.4028236e38",
        "1e39",
        "1.17549435e-38",
        "1.1754942e-38",
        "1.4e-45",
        "7e-46",
        "8e-46",
        "1e-50",
        "0e999",
        "-0e5",
        "0.0e0",
        "1e000",
        "9e-099",
    ]
    lines = [",".join(texts[i : i + 3]) for i in range(0, len(texts) - 2, 3)]
    got = values("\n".join(line + "\r" * (k % 7 == 0) for k, line in enumerate(lines)))  # CRLF too
    expected = np.array([nearest_f32(t) for t in texts[: got.size]], dtype=np.float32)
    np.testing.assert_array_equal(got.ravel(), expected)
    negative = [t.startswith("-") for t in texts[: got.size]]  # -0e5 too
    assert np.signbit(got.ravel()).tolist() == negative


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
    [
        "",
        " ",
        "abc",
        "1.2.3",
        "1e",
        "e5",
        "--1",
        "1-",
        ".",
        "-",
        "0x10",
        "1a",
        "infinit",
        "1 2",
        "1e+",
        "1ee5",
        "1e5.0",
        "1.2.3e4",
        "+-1e5",
        "1e+-5",
        "1e5e5",
        ".e5",
        "-e5",
        "1E-x",
        "1e 5",
    ],
)
def test_bad_numbers_are_reported(cell: str) -> None:
    assert error(f"1,2\n3,{cell}\n") == (2, 1, cell, "a number")


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
    assert values(text, skip_lines=2).tolist() == [[1, 2], [3, 4], [5, 6]]


def test_no_trailing_newline_and_crlf_give_the_same_values() -> None:
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal((50, 5)), 4).astype(np.float32)
    lines = [",".join(f"{v:.4f}" for v in row) for row in x]
    for text in ("\n".join(lines), "\r\n".join(lines) + "\r\n", "\r\n".join(lines)):
        np.testing.assert_array_equal(values(text), x)


def test_quoted_fields() -> None:
    text = '1,"a,b",1\n"2.5","he said ""hi""",2\n3 , " multi\nline " ,"3"\n'
    got = values(text, string_columns=[1])
    assert got[:, 0].tolist() == [1, 2.5, 3] and got[:, 2].tolist() == [1, 2, 3]
    assert np.isnan(got[:, 1]).all()
    result = parse(text.encode(), string_columns=[1])
    assert result["strings"] == {1: ["a,b", 'he said "hi"', " multi\nline "]}
    assert result["lines"] == 4
    assert error('"1""",2\n') == (1, 0, '"1"""', "a number")
    assert error('"a"b,2\n', string_columns=[0]) == (
        1,
        0,
        '"a"b',
        "a delimiter after the closing quote",
    )


QUOTED_CELLS = [
    "1.5", "-0.000123", "+7", "12345678901234567", "3.4028235e38", "1e-46", "-2.5E+3", "0",
    " 1.5", "1.5 ", "\t-2\t", "007.50", ".5", "5.", "inf", "-NaN", "123456789012345678901",
]  # fmt: skip


@pytest.mark.parametrize("end", ["\n", "\r\n", ""])
def test_quoted_numbers_parse_as_their_unquoted_text(end: str) -> None:
    """NOTE(csv-quoted-numbers): a number in quotes, whichever path takes it, is the number its
    text is unquoted (blanks inside the quotes trimmed alike), as the last field of a line, in
    the middle of one and at the buffer's end."""
    sep = end or "\n"
    for cell in QUOTED_CELLS:
        quoted = f'"{cell}",1,"{cell}"{sep}2,"{cell}",3{end}'
        plain = f"{cell},1,{cell}{sep}2,{cell},3{end}"
        np.testing.assert_array_equal(values(quoted), values(plain), err_msg=cell)
    np.testing.assert_array_equal(values(f'"1.5" ,"2"\t{end}'), [[1.5, 2]])
    tabs = values(f'"1.5"\t"2"{end}', delimiter="\t")
    np.testing.assert_array_equal(tabs, [[1.5, 2]])
    assert error('"1.5"x,2\n') == (1, 0, '"1.5"x', "a delimiter after the closing quote")
    # with tab as the delimiter a tab is no blank, inside quotes or out
    assert error('"1.5\t"\t2\n', delimiter="\t") == (1, 0, '"1.5\t"', "a number")
    assert error('"1\n5",2\n') == (1, 0, '"1\n5"', "a number")
    assert error('"",2\n') == (1, 0, '""', "a number")
    assert error('"1 5",2\n') == (1, 0, '"1 5"', "a number")


def test_quoted_newlines_near_the_end_of_the_buffer() -> None:
    # the last records are parsed from a padded copy; a quoted field may reach into it
    head = "1,a\n" * 20
    long = "y" * 40
    for tail, strings in (
        (f'9,"x\n{long}"\n', ["x\n" + long]),
        (f'9,"x\n{long}"', ["x\n" + long]),
        (f'9,"x\n{long}",\n', None),
        (f'9 , "x\n{long}" \r\n\n', ["x\n" + long]),
    ):
        result = parse((head + tail).encode(), string_columns=[1], on_error="skip")
        assert result["values"][:, 0].tolist() == [1] * 20 + ([9] if strings else [])
        assert result["strings"] == {1: ["a"] * 20 + (strings or [])}
        assert result["skipped"] == (0 if strings else 1)
        assert result["lines"] == 22 + tail.endswith("\n\n")
        if not strings:
            assert result["error"] == (21, -1, f'9,"x\n{long}",', "2 columns, found 3")
    bad = head + f'x,"a\n{long}"\n2,b\n'
    result = parse(bad.encode(), string_columns=[1], on_error="skip")
    assert result["error"] == (21, 0, "x", "a number") and result["skipped"] == 1
    assert result["values"][:, 0].tolist() == [1] * 20 + [2]


def test_error_line_of_a_record_spanning_lines() -> None:
    text = 'h\n1,"a\nb\nc",2\n3,"d",x\n'
    assert error(text, skip_lines=1, string_columns=[1]) == (5, 2, "x", "a number")
    assert error('1,"a\nb",x\n', string_columns=[1]) == (1, 2, "x", "a number")


LINES = {"quoted_newlines": False}  # NOTE(csv-lines): one record per line
NO_CLOSE = "a closing quote before the end of the line"


def test_one_record_per_line() -> None:
    assert values('1,"2",3\r\n"4" ,"5e0", 6\n', **LINES).tolist() == [[1, 2, 3], [4, 5, 6]]
    result = parse(b'1,"2\n3",4\n5,6,7\n', on_error="skip", columns=3, **LINES)
    assert result["values"].tolist() == [[5, 6, 7]]
    assert result["skipped"] == 2 and result["lines"] == 3
    assert result["error"] == (1, 1, '"2', NO_CLOSE)
    assert error(b'1,2,3\n4,"5\r\n6,7,8\n', **LINES) == (2, 1, '"5', NO_CLOSE)
    assert error(b'1,2,3\n4,5,"6', **LINES) == (2, 2, '"6', NO_CLOSE)
    assert error(b'1,2,"3""\n', **LINES) == (1, 2, '"3""', NO_CLOSE)
    text = parse(b'a,"b\nc",d\n', string_columns=[0, 1, 2], on_error="skip", **LINES)
    assert text["skipped"] == 2 and text["strings"] == {0: [], 1: [], 2: []}
    assert error(b'1,"x\n', string_columns=[1], **LINES) == (1, 1, '"x', NO_CLOSE)


MESSY = [
    "1,2,3",
    '"4",5, 6 ',
    '7,"8\n9",10',  # a quoted newline: two bad lines
    '"a',
    'b",1,2',
    "x,1,2",
    "",
    "  \r",
    "1,2",
    "1,2,3,4",
    '"1""",2,3',
    "5,6,7\r",
    '1,2,"3"',
]


@pytest.mark.parametrize("seed", range(4))
def test_records_per_line_do_not_depend_on_where_the_text_is_cut(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = ("\n".join(rng.choice(MESSY, 400)) + "\n").encode()
    kwargs = {"columns": 3, "on_error": "skip", "threads": 1, **LINES}
    whole = parse(data, **kwargs)
    assert 0 < whole["skipped"] and 0 < whole["values"].shape[0]
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n")) + 1
    for _ in range(20):
        cuts = [0, *sorted(rng.choice(newlines[:-1], rng.integers(1, 30), replace=False)), None]
        parts = [parse(data[a:b], **kwargs) for a, b in zip(cuts, cuts[1:], strict=False)]
        np.testing.assert_array_equal(np.concatenate([p["values"] for p in parts]), whole["values"])
        assert sum(p["skipped"] for p in parts) == whole["skipped"]
        assert sum(p["lines"] for p in parts) == whole["lines"] == data.count(b"\n")
    big = data * (3 * (1 << 20) // len(data))
    one = parse(big, **kwargs)
    many = parse(big, **{**kwargs, "threads": 4})
    np.testing.assert_array_equal(many["values"], one["values"])
    assert many["skipped"] == one["skipped"] == whole["skipped"] * (len(big) // len(data))


def test_no_quoting() -> None:
    result = parse(b'1,"2",3\n', quote="", string_columns=[1])
    assert result["strings"] == {1: ['"2"']}
    assert error(b'1,"2",3\n', quote="") == (1, 1, '"2"', "a number")
    assert values(b"1;'2';3\n", delimiter=";", quote="'").tolist() == [[1, 2, 3]]


def test_other_delimiters() -> None:
    assert values(b"1\t 2\t3\n4\t5\t6", delimiter="\t").tolist() == [[1, 2, 3], [4, 5, 6]]
    assert values(b"1 2\t 3\n", delimiter=" ").tolist() == [[1, 2, 3]]
    assert error(b"1 2  3\n", delimiter=" ") == (1, 2, "", "a number")
    assert values(b"1|2\n", delimiter="|").tolist() == [[1, 2]]


def test_unterminated_quote() -> None:
    assert error(b'1,2\n3,"4\n5,6\n', framed_too=False) == (2, 1, '"4\n5,6', "a closing quote")
    assert error(b'1,2\n3,"4\n5,6\n' + b"\n" * 40, framed_too=False)[:2] == (2, 1)
    assert error(b'1,2\n3,"4"\n"5', framed_too=False) == (3, 0, '"5', "a closing quote")
    result = parse(b'1,2\n3,"4', on_error="skip")
    assert result["values"].tolist() == [[1, 2]]
    assert result["skipped"] == 1 and result["error"] == (2, 1, '"4', "a closing quote")
    assert error(b'1,"2"x\n') == (1, 1, '"2"x', "a delimiter after the closing quote")


def test_column_count_errors() -> None:
    assert error(b"1,2,3\n4,5\n") == (2, -1, "4,5", "3 columns, found 2")
    assert error(b"1,2,3\n\n4,5,6,7\r\n") == (3, -1, "4,5,6,7", "3 columns, found 4")
    assert error(b"1,2\n", columns=3) == (1, -1, "1,2", "3 columns, found 2")
    # a row wrong as a whole is reported as such, not by its first bad cell
    assert error(b"1,2,3\nx,5\n") == (2, -1, "x,5", "3 columns, found 2")
    long_row = ",".join(["1"] * 300)
    assert error(f"1\n{long_row}\n") == (2, -1, long_row[:200], "1 columns, found 300")


def wide_table(rows: int, width: int, seed: int) -> tuple[bytes, np.ndarray]:
    """Rows of `width` pixel values (0..255), the last a class index in [0, 10)."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 256, (rows, width))
    table[:, -1] = rng.integers(0, 10, rows)
    data = "".join(",".join(map(str, row.tolist())) + "\n" for row in table).encode()
    return data, table.astype(np.float32)


@pytest.mark.parametrize("width", [784, 20_000, 200_000])
def test_wide_rows(width: int) -> None:
    data, table = wide_table(12, width, seed=width)
    classes = {width - 1: 10}
    for threads in (1, 4):
        got = parse(data, class_columns=classes, threads=threads)
        assert got["error"] is None
        np.testing.assert_array_equal(got["values"], table)
    lines = data.split(b"\n")

    def line_8(cells: list[bytes]) -> bytes:
        return b"\n".join([*lines[:7], b",".join(cells), *lines[8:]])

    cells = lines[7].split(b",")
    label = "a class index in [0, 10)"
    found = parse(line_8([*cells[:-1], b"12"]), class_columns=classes)["error"]
    assert found == (8, width - 1, "12", label)
    half = width // 2
    found = parse(line_8([*cells[:half], b"x", *cells[half + 1 :]]), threads=4)["error"]
    assert found == (8, half, "x", "a number")
    line, column, _, expected = parse(line_8(cells[1:]), threads=4)["error"]
    assert (line, column, expected) == (8, -1, f"{width} columns, found {width - 1}")


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
    assert parse(bytearray(data))["values"].tolist() == expected
    assert parse(np.frombuffer(data, dtype=np.uint8))["values"].tolist() == expected
    with mmap.mmap(-1, len(data)) as m:
        m.write(data)
        assert parse(m)["values"].tolist() == expected
    with pytest.raises(BufferError):
        parse(memoryview(b"1,2,3,4")[::2])


# --------------------------------------------------------------------------------------------
# Column kinds


def test_class_columns() -> None:
    got = values(b'1,3\n2,+3\n3,3.0\n4,3e0\n5, 0 \n6,-0\n7,"9"\n', class_columns={1: 10})
    assert got[:, 1].tolist() == [3, 3, 3, 3, 0, 0, 9]
    expected = "a class index in [0, 10)"
    for bad, line in (("2.5", 2), ("-1", 3), ("10", 4), ("x", 5), ("1e1", 6), ("nan", 7)):
        text = "1,1\n" * (line - 1) + f"1,{bad}\n"
        assert error(text, class_columns={1: 10}) == (line, 1, bad, expected)


def test_categories() -> None:
    text = 'cat,1\n dog ,2\n"cat",3\n" dog",4\n'
    got = values(text, categories={0: ["cat", "dog"]})
    assert got.tolist() == [[0, 1], [1, 2], [0, 3], [1, 4]]
    found = error("cat,1\nbird,2\n", categories={0: ["cat", "dog"]})
    assert found == (2, 0, "bird", "one of ['cat', 'dog']")
    assert error("Cat,1\n", categories={0: ["cat"]})[2:] == ("Cat", "one of ['cat']")


def test_string_columns() -> None:
    text = 'a,1,x\n"b,c",2, y \nd"e,3,"z""z"\n'
    result = parse(text.encode(), string_columns=[0, 2])
    assert result["error"] is None
    assert result["strings"] == {0: ["a", "b,c", 'd"e'], 2: ["x", " y ", 'z"z']}
    got = values(text, string_columns=[0, 2])
    assert got[:, 1].tolist() == [1, 2, 3] and np.isnan(got[:, [0, 2]]).all()
    assert parse("é,1\n".encode(), string_columns=[0])["strings"] == {0: ["é"]}


def test_on_error_skip_keeps_good_rows_and_counts_bad_ones() -> None:
    text = '1,a,0\n2,b,1\n3,c\n4,d,7\nx,e,1\n6,f,2\n7,"g,0\n'
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


def make_table(rows: int, seed: int, quoted: bool, bad: tuple[int, ...] = ()) -> tuple:
    """CSV text of a name, 8 floats and a class label per row, and the matrix it holds."""
    rng = np.random.default_rng(seed)
    scale = np.power(10.0, rng.integers(-3, 4, (rows, 8)))
    x = (rng.standard_normal((rows, 8)) * scale).astype(np.float32)
    labels = [str(v) for v in rng.integers(0, 7, rows)]
    table = np.column_stack([np.full(rows, np.nan), x, np.array(labels, dtype=np.float32)])
    for i in bad:
        labels[i] = "oops"
    names = [f"n{i}" for i in range(rows)]
    if quoted:  # every fourth name quoted, holding a delimiter, a newline and quotes
        names = [f'"{n},\n""{i % 3}"""' if i % 4 == 0 else n for i, n in enumerate(names)]
    cells = [[names[i], *(repr(float(v)) for v in x[i]), labels[i]] for i in range(rows)]
    data = ("\n".join(",".join(row) for row in cells) + "\n").encode()
    return data, table.astype(np.float32)


KINDS = {"string_columns": [0], "class_columns": {9: 7}}


@pytest.mark.parametrize("quoted", [False, True])
def test_threads_give_the_single_threaded_result(quoted: bool) -> None:
    data, table = make_table(40_000, 2, quoted)
    assert len(data) > 4 << 20
    one = parse(data, threads=1, **KINDS)
    assert one["error"] is None
    np.testing.assert_array_equal(one["values"], table)
    strings = one["strings"][0]
    assert len(strings) == 40_000 and strings[1] == "n1"
    if quoted:
        assert strings[0] == 'n0,\n"0"' and strings[4] == 'n4,\n"1"'
        assert one["lines"] == 50_000
    for other in (parse(data, threads=5, **KINDS), parse(data, **KINDS)):
        np.testing.assert_array_equal(other["values"], one["values"])
        assert other["strings"] == one["strings"]
        assert other["lines"] == one["lines"]


@pytest.mark.parametrize("quoted", [False, True])
def test_threads_report_the_same_first_error(quoted: bool) -> None:
    data, _ = make_table(40_000, 4, quoted, bad=(35_001, 20_123))  # not quoted rows (i % 4)
    data = b"name,x0,x1,x2,x3,x4,x5,x6,x7,label\n" + data
    kinds = {**KINDS, "skip_lines": 1}
    single = parse(data, threads=1, **kinds)
    line = data[: data.index(b"oops")].count(b"\n") + 1
    assert single["error"] == (line, 9, "oops", "a class index in [0, 7)")
    assert line > 20_123
    for threads in (2, 5):
        multi = parse(data, threads=threads, **kinds)
        assert multi["error"] == single["error"]
        assert multi["values"].shape == (0, 10) and multi["strings"] == {0: []}
        skip_one = parse(data, threads=1, on_error="skip", **kinds)
        skip_many = parse(data, threads=threads, on_error="skip", **kinds)
        assert skip_many["skipped"] == skip_one["skipped"] == 2
        assert skip_many["error"] == skip_one["error"] == single["error"]
        assert skip_many["values"].shape == (39_998, 10)
        np.testing.assert_array_equal(skip_many["values"], skip_one["values"])
        assert skip_many["strings"] == skip_one["strings"]
        assert skip_many["lines"] == skip_one["lines"] == data.count(b"\n")


def test_threads_cut_where_the_quote_state_takes_long_to_know() -> None:
    """NOTE(csv-quote-states): a cut inside a quoted field of many lines, and cuts far from any
    quote (the states never agree: the sequential pass takes over), give one thread's result."""
    field = '"' + "text, more text\n" * 250_000 + '"'  # 4 MB of one quoted field
    rows = "1,2\n" * 600_000
    cases = {
        "long field": f"{field},1\n{rows}{field},2\n".encode(),
        "one quote at the start": f'"a",1\n{rows}{rows}'.encode(),
        "quotes only at the end": f'{rows}{rows}"a",1\n'.encode(),
        "left open": f'{rows}"a,1\n{rows}'.encode(),
        "literal quotes": f'{rows}a"b,1\n"c"" ",2\n{rows}'.encode(),
    }
    for name, data in cases.items():
        assert len(data) > 4 << 20, name
        one = parse(data, threads=1, string_columns=[0], on_error="skip")
        for threads in (2, 5):
            many = parse(data, threads=threads, string_columns=[0], on_error="skip")
            np.testing.assert_array_equal(many["values"], one["values"], err_msg=name)
            assert many["strings"] == one["strings"], name
            assert (many["lines"], many["skipped"]) == (one["lines"], one["skipped"]), name


# --------------------------------------------------------------------------------------------
# Blocks of plain number rows (NOTE(csv-blocks)): the same result as record by record


def parse_in(mode: str, data: bytes, **kwargs: object) -> dict:
    """Parse with the block path in `mode` ('best', 'sse2' or 'off': record by record)."""
    before = _native._set_csv_blocks(mode)
    try:
        return parse(data, **kwargs)
    finally:
        _native._set_csv_blocks(before)


def plain_rows(rng: np.random.Generator, rows: int) -> list[list[str]]:
    """Rows of 9 plain number cells, mostly of the shapes the block path converts two at a time
    (1 to 15 bytes, signs, 0 to 10 decimals, up to 7 digits), now and then one it hands to
    fast_number (an exponent, 17 digits, 12 decimals, a plus sign), and a class index (column 8,
    of 10)."""
    x = rng.standard_normal((rows, 8))
    cells = []
    for i, row in enumerate(x):
        line = [f"{row[0]:.6f}", f"{row[1]:.1f}", str(int(row[2] * 1e6)), f"{row[3]:.{i % 5}f}"]
        line.append(f"{row[4]:.3e}" if i % 5 == 0 else f"{row[4]:.4f}")
        line.append(repr(float(row[5])) if i % 7 == 0 else f"{row[5]:.2f}")
        line.append(f"{row[6]:.12f}" if i % 11 == 0 else f"{row[6]:.3f}")
        line.append(f"+{abs(row[7]):.3f}" if i % 13 == 0 else f"{row[7]:.5f}")
        line.append(str(i % 10))
        cells.append(line)
    return cells


def joined(cells: list[list[str]], end: str = "\n") -> bytes:
    return "".join(",".join(row) + end for row in cells).encode()


def assert_same_parse(a: dict, b: dict) -> None:
    assert a["values"].shape == b["values"].shape
    np.testing.assert_array_equal(a["values"].view(np.uint32), b["values"].view(np.uint32))
    assert (a["error"], a["lines"], a["skipped"]) == (b["error"], b["lines"], b["skipped"])


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("mode", ["best", "sse2"])
@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_give_the_record_by_record_parse(quoted: bool, mode: str, threads: int) -> None:
    rng = np.random.default_rng(5)
    cells = plain_rows(rng, 30_000)  # 2.3 MB: many blocks, and chunks with two threads
    data = joined([[f'"{c}"' for c in row] for row in cells] if quoted else cells)
    kinds = {"class_columns": {8: 10}, "threads": threads}
    got = parse_in(mode, data, **kinds)
    assert got["error"] is None and got["values"].shape == (30_000, 9)
    if quoted or mode == "best":  # without AVX2, only tables in quotes take the block path
        assert got["block_rows"] > 29_000  # all but the first and last rows of each chunk
    else:
        assert got["block_rows"] == 0
    by_record = parse_in("off", data, **kinds)
    assert by_record["block_rows"] == 0
    assert_same_parse(got, by_record)
    expected = np.array([[np.float32(np.float64(c)) for c in row] for row in cells[:2000]])
    np.testing.assert_array_equal(got["values"][:2000], expected)


# One flaw in an otherwise plain table, at a row in its middle: the block holding it goes record
# by record, and the rows around it still come from blocks.
def in_third(text: str) -> Callable[[list[str]], list[str]]:
    """A row with its third cell replaced by ``text``."""
    return lambda row: [*row[:2], text, *row[3:]]


def as_label(text: str) -> Callable[[list[str]], list[str]]:
    """A row with its class index (the last cell) replaced by ``text``."""
    return lambda row: [*row[:-1], text]


FLAWS = {
    "a word": in_third("x"),
    "nan": in_third("nan"),
    "blanks around a number": lambda row: [*row[:2], f" {row[2]} ", *row[3:]],
    "an empty cell": in_third(""),
    "a short row": lambda row: row[:-1],
    "a long row": lambda row: row + ["1"],
    "a class index out of range": as_label("10"),
    "a class index with a dot": as_label("3.0"),
    "a class index of minus zero": as_label("-0"),
    "a class index with leading zeros": as_label("007"),
    "a quoted number": lambda row: [*row[:2], f'"{row[2]}"', *row[3:]],
    "a quoted class index": lambda row: [*row[:-1], f'"{row[-1]}"'],
    "a quoted comma": in_third('"1,5"'),
    "a quote left open": in_third('"1.5'),
    "a quote closed early": in_third('"1".5'),
    "a blank after the closing quote": in_third('"1.5" '),
    "doubled quotes": in_third('"1""5"'),
    "a quote alone": in_third('"'),
    "empty quotes": in_third('""'),
    "blanks in quotes": in_third('" 1.5 "'),
    "a quoted newline": in_third('"1\n5"'),
    "two dots": in_third("1.2.3"),
    "a sign alone": in_third("-"),
    "a dot alone": in_third("."),
    "a lone sign in the middle": in_third("12-3"),
}


@pytest.mark.parametrize("flaw", sorted(FLAWS))
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_flawed_row_among_blocks_is_parsed_as_record_by_record(flaw: str, on_error: str) -> None:
    rng = np.random.default_rng(9)
    cells = plain_rows(rng, 4000)
    cells[2500] = FLAWS[flaw](cells[2500])
    data = joined(cells)
    kinds = {"class_columns": {8: 10}, "on_error": on_error}
    by_record = parse_in("off", data, **kinds)
    for mode in ("best", "sse2"):
        got = parse_in(mode, data, **kinds)
        if on_error == "skip" and mode == "best":  # raising keeps no rows
            assert 2000 < got["block_rows"] <= 4000  # all but the block with the flaw (64 KiB)
        assert_same_parse(got, by_record)
    quoted = joined([[f'"{c}"' for c in row] for row in cells])
    by_record = parse_in("off", quoted, **kinds)
    for mode in ("best", "sse2"):
        got = parse_in(mode, quoted, **kinds)
        if on_error == "skip":
            assert 2000 < got["block_rows"] <= 4000
        assert_same_parse(got, by_record)
    without_quoting = parse_in("off", data, quote="", **kinds)
    assert_same_parse(parse(data, quote="", **kinds), without_quoting)


@pytest.mark.parametrize("text", ["\n\n", "\r\n", "\n   \n"])
def test_blank_lines_and_crlf_among_blocks(text: str) -> None:
    cells = plain_rows(np.random.default_rng(2), 3000)
    data = joined(cells[:1500]) + text.encode() + joined(cells[1500:])
    got = parse(data)
    assert 1000 < got["block_rows"] < 3000
    assert_same_parse(got, parse_in("off", data))
    crlf = joined(cells, "\r\n")
    assert_same_parse(parse(crlf), parse_in("off", crlf))
    np.testing.assert_array_equal(parse(crlf)["values"], parse(joined(cells))["values"])


def exponent_rows(rng: np.random.Generator, rows: int, general: bool = False) -> list[list[str]]:
    """Rows of 8 cells in printf's %e forms (what the block path splits the exponent off), now
    and then one it leaves to fast_number (a one-digit exponent, one past the decimals, 10
    significant digits, a float32 underflow, no dot, a plus sign) and a class index (of 10);
    with `general`, also cells that only record's general path takes (a three-digit exponent to
    zero, a float32 overflow to inf), which send their blocks record by record."""
    x = rng.standard_normal((rows, 7)) * 10.0 ** rng.integers(-3, 4, (rows, 7))
    odd = ["1.5e5", "1e+05", "-0.000000e+00", "3.25e+12", "1.5e-30", "+1.5e+00"]
    odd += ["1.234567891e+00", f"{x[0, 0]:.0e}"] + (["2.5E-100", "7e+39"] if general else [])
    cells = []
    for i, row in enumerate(x):
        line = [f"{row[0]:.6e}", f"{row[1]:.3E}", f"{row[2]:.6e}", f"{row[3]:.2e}"]
        line += [f"{row[4]:.6e}", f"{row[5]:.1e}"]
        line.append(odd[i % len(odd)] if i % 3 == 0 else f"{row[6]:.4e}")
        line.append(str(i % 10))
        cells.append(line)
    return cells


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("general", [False, True])
def test_exponent_cells_in_blocks_give_the_record_by_record_parse(
    quoted: bool, general: bool
) -> None:
    cells = exponent_rows(np.random.default_rng(8), 20_000, general)
    data = joined([[f'"{c}"' for c in row] for row in cells] if quoted else cells)
    kinds = {"class_columns": {7: 10}}
    by_record = parse_in("off", data, **kinds)
    assert by_record["error"] is None
    with np.errstate(over="ignore"):
        expected = np.array([[np.float32(float(c)) for c in row] for row in cells])
    np.testing.assert_array_equal(by_record["values"].view(np.uint32), expected.view(np.uint32))
    for mode in ("best", "sse2"):
        got = parse_in(mode, data, **kinds)
        assert_same_parse(got, by_record)
        if general:  # every block has a cell for the general path
            assert got["block_rows"] == 0
        elif mode == "best":  # without AVX2 exponents are fast_number's: record is faster
            assert got["block_rows"] > 19_000


EXPONENT_FLAWS = [
    "1.5e+0x",
    "1.5e++05",
    "e+05",
    "1.5e+05e",
    ".e+05",
    "-e+05",
    "1.5 e+05",
    "1.5e+",
    "1.5e-0",
    "1..5e+05",
    "1.5f+05",
    "--1.5e+05",
    "1.5e+05 ",
]


@pytest.mark.parametrize("flaw", EXPONENT_FLAWS)
def test_a_flawed_exponent_among_blocks_is_parsed_as_record_by_record(flaw: str) -> None:
    cells = exponent_rows(np.random.default_rng(10), 4000)
    cells[2500][4] = flaw  # the blocks before and after it are converted in blocks
    data = joined(cells)
    for on_error in ("raise", "skip"):
        kinds = {"class_columns": {7: 10}, "on_error": on_error}
        by_record = parse_in("off", data, **kinds)
        for mode in ("best", "sse2"):
            assert_same_parse(parse_in(mode, data, **kinds), by_record)


# Category columns (NOTE(csv-categories)): a cell is looked up by its bytes in a table of the
# names, from record's loop and in blocks; what the table leaves out goes the general way.
CATEGORY_NAMES = {
    1: ["red", "green", "blue"],
    # lengths at the table's edges, a prefix of another, names that read as numbers
    4: ["a", "ab", "abc", "x" * 15, "y" * 16, "z" * 17, "1", "2.5", "-3", "in side"],
    # the last column: its cells end at a newline
    6: ["north", "south", "east", "west"],
}


def category_rows(
    rng: np.random.Generator, rows: int, long_names: bool = True
) -> tuple[list[list[str]], np.ndarray]:
    """Rows of 7 cells (numbers, a class index in column 3 of 10, categories in 1, 4 and 6) and
    the float32 table they should give; without `long_names`, no name longer than the table
    keeps (17 bytes)."""
    x = rng.standard_normal((rows, 3))
    picks = {col: rng.integers(0, len(names), rows) for col, names in CATEGORY_NAMES.items()}
    if not long_names:
        picks[4][picks[4] == CATEGORY_NAMES[4].index("z" * 17)] = 0
    cells, expected = [], np.empty((rows, 7), np.float32)
    for i in range(rows):
        row = [f"{x[i, 0]:.6f}", "", f"{x[i, 1]:.3f}", str(i % 10), "", f"{x[i, 2]:.2f}", ""]
        expected[i] = [np.float32(float(c)) if c else 0 for c in row]
        for col, names in CATEGORY_NAMES.items():
            row[col] = names[picks[col][i]]
            expected[i, col] = picks[col][i]
        cells.append(row)
    return cells, expected


def category_kinds(**more: object) -> dict:
    return {"categories": CATEGORY_NAMES, "class_columns": {3: 10}, **more}


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("end", ["\n", "\r\n"])
@pytest.mark.parametrize("threads", [1, 2])
def test_category_cells_in_every_path_give_their_index(
    quoted: bool, end: str, threads: int
) -> None:
    kinds = category_kinds(threads=threads)
    for long_names in (True, False):
        cells, expected = category_rows(np.random.default_rng(3), 20_000, long_names)
        data = joined([[f'"{c}"' for c in row] for row in cells] if quoted else cells, end)
        by_record = parse_in("off", data, **kinds)
        assert by_record["error"] is None
        np.testing.assert_array_equal(by_record["values"], expected)
        for mode in ("best", "sse2"):
            got = parse_in(mode, data, **kinds)
            assert_same_parse(got, by_record)
            # A name the table leaves out sends its block by record (every block has one), so
            # does a CR; without AVX2 only tables in quotes take blocks.
            if long_names or end == "\r\n" or not (quoted or mode == "best"):
                assert got["block_rows"] == 0
            else:
                assert got["block_rows"] > 19_000  # all but the first and last of each chunk


def test_names_the_table_leaves_out_are_still_found() -> None:
    names = ["com,ma", 'q"uote', "z" * 40, "plain"]
    written = ['"com,ma"', '"q""uote"', "z" * 40, "plain"]
    picks = np.random.default_rng(4).integers(0, 4, 5000)
    data = "".join(f"{i},{written[k]}\n" for i, k in enumerate(picks)).encode()
    for mode in ("best", "sse2", "off"):
        got = parse_in(mode, data, categories={1: names})
        assert got["error"] is None
        np.testing.assert_array_equal(got["values"][:, 1], picks.astype(np.float32))


CATEGORY_FLAWS = {
    "an unknown name": "purple",
    "another column's name": "north",
    "a name in another case": "Red",
    "blanks around a name": " red ",
    "a quoted name": '"red"',
    "a quoted name with blanks": '" red "',
    "an empty cell": "",
    "empty quotes": '""',
    "a prefix of a name": "re",
    "a name and more": "reds",
    "a quote left open": '"red',
    "a number": "1",
}


@pytest.mark.parametrize("flaw", sorted(CATEGORY_FLAWS))
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_flawed_category_cell_among_blocks_is_parsed_as_record_by_record(
    flaw: str, on_error: str
) -> None:
    cells, _ = category_rows(np.random.default_rng(6), 4000)
    cells = [[c if len(c) < 17 else "x" * 15 for c in row] for row in cells]  # all in the table
    cells[2500][1] = CATEGORY_FLAWS[flaw]
    data = joined(cells)
    kinds = category_kinds(on_error=on_error)
    by_record = parse_in("off", data, **kinds)
    for mode in ("best", "sse2"):
        got = parse_in(mode, data, **kinds)
        if on_error == "skip" and mode == "best" and flaw != "a quote left open":
            assert 2000 < got["block_rows"] <= 4000  # all but the block with the flaw
        assert_same_parse(got, by_record)
    found = flaw in ("blanks around a name", "a quoted name", "a quoted name with blanks")
    assert (by_record["error"] is None) == found
    if found:
        assert by_record["values"][2500, 1] == 0  # 'red'
    if by_record["error"] is not None:
        line, column, text, expected = by_record["error"]
        assert (line, column) == (2501, 1)
        if flaw == "a quote left open":  # the field runs to the end of the buffer
            assert text.startswith('"red,') and expected == "a closing quote"
        else:
            assert (text, expected) == (CATEGORY_FLAWS[flaw], "one of ['red', 'green', 'blue']")


def test_blank_lines_in_a_table_of_one_column_are_not_taken_for_rows() -> None:
    """Found by fuzz/run.sh csv_blocks: in a table of one column every newline ends a "row", blank
    ones too, and a block of blank lines at the end of a chunk once asked for more room than the
    chunk's rows can need (RuntimeError: more rows than a chunk can hold)."""
    for threads in (1, 2):
        for kinds in ({}, {"class_columns": {0: 3}}):
            data = b"1\n" * 600_000 + b"\n" * 60_000 + b"2\n" * 600_000
            result = parse(data, threads=threads, **kinds)
            assert result["error"] is None and result["values"].shape == (1_200_000, 1)
            assert result["values"][599_999:600_001, 0].tolist() == [1.0, 2.0]
            assert result["lines"] == 1_260_000


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
        ({"columns": 2**61}, "at most 2305843009213693951"),
        ({"class_columns": {2**61 - 1: 3}}, "at most 2305843009213693951 columns"),
        ({"string_columns": [2**63 - 1]}, "at most 2305843009213693951 columns"),
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


# --------------------------------------------------------------------------------------------
# Memory: what a parse holds is bounded by the buffer (NOTE(csv-memory) in csrc/csv_parser.cpp)

# Parses the file argv[1] with the keyword arguments argv[2] (a Python literal) in a fresh process
# and prints the growth of its peak resident and virtual sizes (tracemalloc sees no native memory).
_MEMORY_PROBE = """
import ast, json, resource, sys
from sparkbatch import _native

def peaks():
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmPeak:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, vm * 1024

_native.parse_csv(b"1\\n" * 1_100_000, threads=2)  # the pool's threads and their allocator arenas
data = open(sys.argv[1], "rb").read()
kwargs = ast.literal_eval(sys.argv[2])
rss, vm = peaks()
result = _native.parse_csv(data, **kwargs)
after = peaks()
print(json.dumps({"rss": after[0] - rss, "vm": after[1] - vm, "error": result["error"],
                  "shape": result["values"].shape, "skipped": result["skipped"]}))
"""

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads peak sizes from /proc/self/status"
)
MB = 1 << 20


def peak_growth(path: Path, **kwargs: object) -> dict:
    """Parse `path` in a fresh process: its peak memory growth (bytes) and the result's summary."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path), repr(kwargs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_proc
def test_a_wide_row_costs_a_few_bytes_per_column(tmp_path: Path) -> None:
    # One 20 MB line of 10 million fields: 40 MB of values. The plan took ~49 bytes a column
    # (a string per column saying what it expects): a 620 MB peak.
    path = tmp_path / "wide.csv"
    path.write_bytes(b"0," * 9_999_999 + b"7\n")
    got = peak_growth(path, threads=0)
    assert got["shape"] == [1, 10_000_000] and got["error"] is None
    assert got["rss"] < 160 * MB, got  # values 40 MB, a copy of the last record 20 MB, 1 B a column
    # The same row followed by a bad one: the error costs no more.
    path.write_bytes(b"0," * 9_999_999 + b"7\n1,x\n")
    got = peak_growth(path, threads=1)
    assert got["error"] == [2, -1, "1,x", "10000000 columns, found 2"]
    assert got["rss"] < 160 * MB, got


@needs_proc
def test_a_column_named_far_beyond_the_rows_costs_nothing(tmp_path: Path) -> None:
    # class_columns={10**8: 2} took 4.8 GB and 5 s: a plan entry for every column up to it.
    path = tmp_path / "small.csv"
    path.write_bytes(b"1,2\n3,4\n")
    got = peak_growth(path, class_columns={10**8: 2})
    assert got["error"] == [1, -1, "1,2", "100000001 columns, found 2"]
    assert got["rss"] < 16 * MB and got["vm"] < 64 * MB, got


def test_columns_beyond_every_row_are_missing_from_every_row() -> None:
    far, most = 10**8, 2**61 - 1  # the most columns: a row of floats must be addressable
    for kwargs, width in (
        ({"class_columns": {far: 2}}, far + 1),
        ({"categories": {far: ["a"]}}, far + 1),
        ({"string_columns": [far]}, far + 1),
        ({"columns": 2**40}, 2**40),
        ({"columns": most, "class_columns": {most - 1: 3}}, most),
        ({"string_columns": [most - 1]}, most),
    ):
        assert error(b"1,2\n3,4\n", **kwargs) == (1, -1, "1,2", f"{width} columns, found 2")
        result = parse(b"1,2\n3,4\n", on_error="skip", threads=2, **kwargs)
        assert result["values"].shape == (0, width) and result["skipped"] == 2
    result = parse(b"1,2\n3,4\n", string_columns=[far], on_error="skip")
    assert result["strings"] == {far: []}


@needs_proc
def test_the_reserved_output_is_bounded_by_the_buffer(tmp_path: Path) -> None:
    # One 8 MB line of 4 million fields: a row count estimated from a sample without newlines
    # (~140) times the width reserved 2.2 GB; a 100 MB line failed with MemoryError.
    path = tmp_path / "line.csv"
    path.write_bytes(b"0," * 3_999_999 + b"5")
    got = peak_growth(path, threads=1)
    assert got["shape"] == [1, 4_000_000] and got["error"] is None
    assert got["vm"] < 256 * MB, got  # values 16 MB (32 MB reserved), the record copied 8 MB
    # Threads: a 2 MB row and 4 million blank lines. Each chunk reserved its newlines times the
    # width (16 TB: MemoryError).
    path.write_bytes(b"0," * 999_999 + b"5" + b"\n" * 4_000_000)
    got = peak_growth(path, threads=2)
    assert got["shape"] == [1, 1_000_000] and got["error"] is None
    assert got["vm"] < 256 * MB, got


def test_rows_beyond_the_estimate_grow_the_output() -> None:
    # The first 64 KiB hold one long row, so the estimate is a handful of rows; then 100,000 more.
    head = b'"' + b"x" * 70_000 + b'",-1\n'
    text = head + b"".join(b"s%d,%d\n" % (i, i) for i in range(100_000))
    for threads in (1, 2):
        result = parse(text, string_columns=[0], threads=threads)
        assert result["error"] is None
        assert result["values"][:, 1].tolist() == [-1.0, *range(100_000)]
        assert result["strings"][0][0] == "x" * 70_000 and result["strings"][0][-1] == "s99999"
    # Empty string cells take no bytes: rows as short as a delimiter and a newline.
    text = b",1\n" + b",\n" * 50_000
    result = parse(text, string_columns=[0, 1], threads=1)
    assert result["error"] is None and result["values"].shape == (50_001, 2)
    assert result["strings"][1][:2] == ["1", ""]
    got = values(b"a\n" + b"\n".join([b""] * 3) + b"b\n", string_columns=[0])
    assert got.shape == (2, 1)


def test_a_file_with_cr_only_line_ends_is_named_not_taken_for_a_header(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(b"1,2\r3,4\r")
    with pytest.raises(CsvError) as raised:
        parse_csv_buffer(path.read_bytes(), CsvOptions(), source=str(path))
    message = str(raised.value)
    assert "CR alone" in message and "header" not in message and str(path) in message
    assert raised.value.line == 1
    # A header line is still suggested for a header.
    path.write_bytes(b"x,y\r\n1,2\r\n")
    with pytest.raises(CsvError, match=r"a header line\? pass skip_lines=1"):
        parse_csv_buffer(path.read_bytes(), CsvOptions(), source=str(path))
