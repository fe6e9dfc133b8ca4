"""Regenerate the hostile minibatch files in this folder: ``python tests/corpus/make_corpus.py``.

Each file breaks one rule of docs/format.md; ``CASES`` maps its name to a phrase the
FormatError message must contain. The files are committed so that the reader is always tested
against the same bytes, whatever the writer does.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HERE = Path(__file__).parent


def _file(header: dict, data: bytes, *, header_len: int | None = None) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    length = len(text) if header_len is None else header_len
    return struct.pack("<Q", length) + text + data


def _valid_header(crc: str = "00000000") -> dict:
    return {
        "__metadata__": {
            "format": "sparkbatch.minibatch",
            "format_version": "1",
            "kind": "DataSet",
            "crc32c": crc,
        },
        "features": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "labels": {"dtype": "F32", "shape": [2, 1], "data_offsets": [16, 24]},
    }


DATA = struct.pack("<6f", 1, 2, 3, 4, 0, 1)


def build() -> dict[str, tuple[bytes, str]]:
    from sparkbatch import _native

    good_crc = f"{_native.crc32c(DATA):08x}"
    good = _file(_valid_header(good_crc), DATA)
    flipped = bytearray(good)
    flipped[-3] ^= 0x01
    shape_bad = _valid_header(good_crc)
    shape_bad["features"]["shape"] = [3, 2]
    overlap = _valid_header(good_crc)
    overlap["labels"]["data_offsets"] = [12, 20]
    overlap["features"]["data_offsets"] = [0, 16]
    dtype_bad = _valid_header(good_crc)
    dtype_bad["features"]["dtype"] = "F7"
    gap = _valid_header(good_crc)
    gap["labels"]["data_offsets"] = [20, 28]
    bf16 = _valid_header(good_crc)
    bf16["features"] = {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]}
    overflow = _valid_header(good_crc)
    overflow["features"]["shape"] = [2**40, 2**40]
    meta_bad = _valid_header(good_crc)
    meta_bad["__metadata__"]["kind"] = 3
    text = json.dumps(_valid_header(good_crc), separators=(",", ":"))
    duplicate = text.replace('"labels":', '"features":').encode()
    label_bad = {
        "__metadata__": {"kind": "DataSet", "num_classes:labels": "3"},
        "features": {"dtype": "F32", "shape": [2, 1], "data_offsets": [0, 8]},
        "labels": {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]},
    }
    version_bad = _valid_header(good_crc)
    version_bad["__metadata__"]["format_version"] = "99"
    return {
        "truncated.safetensors": (good[:-5], "truncated"),
        "crc_mismatch.safetensors": (bytes(flipped), "CRC32C"),
        "header_past_end.safetensors": (
            _file(_valid_header(), DATA, header_len=4000),
            "runs past the end",
        ),
        "invalid_json.safetensors": (struct.pack("<Q", 13) + b'{"features":}', "not valid JSON"),
        "shape_mismatch.safetensors": (_file(shape_bad, DATA), "data_offsets span"),
        "overlapping.safetensors": (_file(overlap, DATA[:20]), "overlaps"),
        "unknown_dtype.safetensors": (_file(dtype_bad, DATA), "unknown dtype"),
        "not_safetensors.safetensors": (
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False}",
            "limit",
        ),
        "text_file.safetensors": (b"1.0,2.0,3.0\n4.0,5.0,6.0\n", "limit"),
        "empty.safetensors": (b"", "too short"),
        "gap.safetensors": (_file(gap, DATA + b"\0" * 4), "gap"),
        "trailing_bytes.safetensors": (good + b"\0" * 8, "after the last tensor"),
        "huge_header_length.safetensors": (struct.pack("<Q", 2**62) + b"{}", "limit"),
        "shape_overflow.safetensors": (_file(overflow, DATA), "overflows"),
        "bf16.safetensors": (_file(bf16, DATA), "numpy cannot hold"),
        "duplicate_key.safetensors": (
            struct.pack("<Q", len(duplicate)) + duplicate + DATA,
            "duplicate key",
        ),
        "metadata_not_string.safetensors": (_file(meta_bad, DATA), "must be a string"),
        "header_not_object.safetensors": (struct.pack("<Q", 2) + b"[]", "does not start with '{'"),
        "label_out_of_range.safetensors": (
            _file(label_bad, struct.pack("<f f i i", 0, 0, 1, 7)),
            "class index 7",
        ),
        "format_version_99.safetensors": (_file(version_bad, DATA), "format version 99"),
    }


def main() -> None:
    for name, (blob, _) in build().items():
        (HERE / name).write_bytes(blob)
    (HERE / "expected.json").write_text(
        json.dumps(
            {name: phrase for name, (_, phrase) in build().items()}, indent=1, sort_keys=True
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
