"""Write the committed seed inputs of the fuzz targets: ``python3 fuzz/make_seeds.py``.

fuzz/corpus/csv/*: 6 option bytes (see decode_options in fuzz/fuzz_csv.cpp) then CSV text.
fuzz/corpus/json/*: JSON documents. The format target starts from tests/corpus/*.safetensors
and fuzz/corpus/format/* (valid files written by sparkbatch's writer, when it is importable).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def opts(
    delim=0,
    no_quote=False,
    quote=0,
    skip=0,
    cols=0,
    skip_bad=False,
    threads2=False,
    specs=(),
    lines_only=False,
):
    b0 = delim | (8 if no_quote else 0) | (quote << 4) | (skip << 6)
    b1 = cols | (8 if skip_bad else 0) | (16 if threads2 else 0) | (len(specs) << 5)
    spec_bytes = list(specs) + [0] * (3 - len(specs))
    return bytes([b0, b1, *spec_bytes, 1 if lines_only else 0])


def spec(col, kind, param=0, alt=False):
    """kind: 0 class, 1 category, 2 string."""
    return col | (kind << 3) | (param << 5) | (1 if alt and col % 2 == 0 else 0)


CSV = {
    "numbers": (opts(), b"1,2,3\n4.5,-6e2,7\n-0.0,1e-45,3.4028235e38\n"),
    "header_skip": (opts(skip=1), b"a,b\n1,2\r\n3,4\r\n"),
    "quoted": (opts(specs=[spec(1, 2)]), b'1,"a ""b"" c",2\n3,"x\ny",4\n'),
    "semicolon_single_quote": (opts(delim=1, quote=1), b"1;'2';3\n 4 ; 5 ;6\n"),
    "tab_blanks": (opts(delim=2), b"1\t2\n\n  \n3\t4\n"),
    "space_delim": (opts(delim=3), b"1 2 3\n4 5 6\n"),
    "no_quote": (opts(no_quote=True, specs=[spec(0, 2)]), b'"a,1\n"b,2\n'),
    "classes": (opts(specs=[spec(1, 0, 2)]), b'1,3\n2,+3\n3,3.0\n4,3e0\n5, 0 \n6,-0\n7,"9"\n'),
    "categories": (opts(specs=[spec(0, 1, 2)]), b'cat,1\ndog,2\n"a,b",3\n'),
    "bad_skip": (opts(skip_bad=True, specs=[spec(1, 2)]), b"1,a,2\n3,b\nx,c,4\n5,d,6\n"),
    "bad_raise": (opts(), b"1,2\n3,x\n"),
    "special": (opts(), b"nan,inf,-Infinity\n1e400,1e-400,123456789012345678901234\n"),
    "unterminated": (opts(), b'1,"abc\n2,3\n'),
    "long_digits": (opts(cols=2), b"0.000000000000000000000000000001,12345678.9012345678\n"),
    "columns_fixed": (opts(cols=3), b"1,2,3\n1,2\n1,2,3,4\n"),
    "wide": (opts(), b",".join(str(i).encode() for i in range(100)) + b"\n"),
    "crlf_quotes": (opts(specs=[spec(0, 2)]), b'"a"  ,1\r\n"b"x,2\r\n'),
    "lines_only": (opts(lines_only=True, specs=[spec(1, 2)]), b'1,"a\nb",2\n3,"c",4\n'),
}

JSON = {
    "object": b'{"a": [1, 2.5e-3, -0, true, false, null], "b": {"c": "d"}}',
    "escapes": b'["\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/", "\xc3\xa9\xf0\x9f\x98\x80"]',
    "numbers": b"[0, 18446744073709551615, 18446744073709551616, -1, 1.5E+10]",
    "header": b'{"__metadata__":{"format":"sparkbatch.minibatch","crc32c":"00000000"},'
    b'"features":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}   ',
    "nested": b"[" * 64 + b"]" * 64,
}


def main() -> None:
    for name, (o, text) in CSV.items():
        path = HERE / "corpus" / "csv" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(o + text)
    for name, text in JSON.items():
        path = HERE / "corpus" / "json" / (name + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    try:
        import numpy as np

        from sparkbatch.data import DataSet, MultiDataSet, to_bytes
    except ImportError:
        return
    fmt = HERE / "corpus" / "format"
    fmt.mkdir(parents=True, exist_ok=True)
    ds = DataSet(np.arange(15, dtype=np.float32).reshape(3, 5), np.eye(3, dtype=np.float64))
    (fmt / "dataset_pad.safetensors").write_bytes(to_bytes(ds))
    ds = DataSet(np.ones((2, 3), np.float32), np.eye(2, dtype=np.float32))
    (fmt / "compact.safetensors").write_bytes(to_bytes(ds, compact_labels=True))
    mds = MultiDataSet(
        [np.ones((2, 1), np.int8), np.zeros((2, 2, 3), np.float16)],
        [np.ones((2, 1), np.uint16)],
        [None, np.ones((2, 3), np.bool_)],
    )
    (fmt / "multi.safetensors").write_bytes(to_bytes(mds))


if __name__ == "__main__":
    main()
