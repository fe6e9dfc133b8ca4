"""CRC-32C of sparkbatch._native against an independent pure-Python reference.

The native code picks one of several implementations by CPU feature and input length (a byte
table, the SSE4.2 CRC instruction in one or three streams, 128-bit PCLMULQDQ folding from 256
bytes, VPCLMULQDQ folding mixed with CRC instruction streams from 512 bytes in 3.5 KiB and 14 KiB
chunks, threads from several MiB), so the lengths below cover every length up to 2000 and the
regions around each threshold, at unaligned start addresses and with arbitrary initial values.
The Python reference is bitwise (and a byte table built from it), so it only runs on inputs of
a few tens of KB; larger inputs are checked for consistency between different splits.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from sparkbatch import _native

POLY = 0x82F63B78  # reflected Castagnoli polynomial


def ref_bitwise(data: bytes, crc: int = 0) -> int:
    """CRC-32C one bit at a time (standard init / final XOR of 0xFFFFFFFF)."""
    state = crc ^ 0xFFFFFFFF
    for byte in data:
        state ^= byte
        for _ in range(8):
            state = (state >> 1) ^ (POLY if state & 1 else 0)
    return state ^ 0xFFFFFFFF


def ref_prefixes(data: bytes, crc: int = 0) -> list[int]:
    """ref_bitwise(data[:n], crc) for every n in 0..len(data), in one pass."""
    state = crc ^ 0xFFFFFFFF
    out = [crc]
    for byte in data:
        state ^= byte
        for _ in range(8):
            state = (state >> 1) ^ (POLY if state & 1 else 0)
        out.append(state ^ 0xFFFFFFFF)
    return out


def _table_entry(i: int) -> int:
    c = i
    for _ in range(8):
        c = (c >> 1) ^ (POLY if c & 1 else 0)
    return c


TABLE = [_table_entry(i) for i in range(256)]


def ref_table_prefixes(data: bytes, crc: int, lengths: list[int]) -> dict[int, int]:
    """The reference at the given prefix lengths, a byte at a time (for tens of KB)."""
    wanted = set(lengths)
    state = crc ^ 0xFFFFFFFF
    out = {0: crc} if 0 in wanted else {}
    for n, byte in enumerate(data, 1):
        state = (state >> 8) ^ TABLE[(state ^ byte) & 0xFF]
        if n in wanted:
            out[n] = state ^ 0xFFFFFFFF
    return out


def random_bytes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_table_matches_bitwise() -> None:
    data = bytes(random_bytes(3000, 99))
    lengths = [0, 1, 7, 8, 100, 2999, 3000]
    got = ref_table_prefixes(data, 0x1234, lengths)
    assert got == {n: ref_bitwise(data[:n], 0x1234) for n in lengths}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0x00000000),
        (b"123456789", 0xE3069283),
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
def test_known_values(data: bytes, expected: int) -> None:
    assert ref_bitwise(data) == expected
    assert _native.crc32c(data) == expected


@pytest.mark.parametrize("offset", [0, 1, 3, 8, 13, 31])
def test_every_length_up_to_2000(offset: int) -> None:
    big = random_bytes(2001 + 64, offset)
    view = big[offset : offset + 2001]
    init = random.Random(offset).getrandbits(32) if offset else 0
    expected = ref_prefixes(bytes(view), init)
    got = [_native.crc32c(view[:n], init) for n in range(2001)]
    bad = [n for n in range(2001) if got[n] != expected[n]]
    assert not bad, f"offset {offset}: wrong CRC for lengths {bad[:20]}"


def test_buffer_types() -> None:
    data = bytes(random_bytes(5000, 5))
    expected = ref_table_prefixes(data, 0, [5000])[5000]
    assert _native.crc32c(data) == expected
    assert _native.crc32c(bytearray(data)) == expected
    assert _native.crc32c(memoryview(data)) == expected
    assert _native.crc32c(np.frombuffer(data, dtype=np.uint8)) == expected
    for off in (1, 7, 33):
        piece = memoryview(data)[off : off + 4000]
        assert (
            _native.crc32c(piece, 77)
            == ref_table_prefixes(data[off : off + 4000], 77, [4000])[4000]
        )


# Thresholds of the native code: folding blocks (128, 256 B), mixed chunks (3584, 14336 B) and
# the three 8 KiB CRC instruction streams (24576 B), alone and combined.
BOUNDARIES = [
    256,
    512,
    3584,
    3584 + 512,
    2 * 3584,
    14336,
    14336 + 3584,
    2 * 14336 + 3584 + 511,
    24576,
    24576 + 14336,
    2 * 24576,
]


@pytest.mark.parametrize("offset", [0, 5])
def test_lengths_around_thresholds(offset: int) -> None:
    rng = random.Random(offset)
    longest = max(BOUNDARIES) + 40
    big = random_bytes(longest + 64, 1000 + offset)
    view = big[offset : offset + longest]
    lengths = sorted(
        {b + d for b in BOUNDARIES for d in range(-33, 34) if b + d >= 0}
        | {rng.randrange(longest) for _ in range(100)}
    )
    init = rng.getrandbits(32)
    expected = ref_table_prefixes(bytes(view), init, lengths)
    bad = [n for n in lengths if _native.crc32c(view[:n], init) != expected[n]]
    assert not bad, f"wrong CRC for lengths {bad[:20]}"
    # Fresh copies end where their allocation ends: under ASan (.ci/sanitize) a read past the
    # last byte is caught here.
    bad = [n for n in lengths if _native.crc32c(np.array(view[:n]), init) != expected[n]]
    assert not bad, f"wrong CRC for exact-size copies of lengths {bad[:20]}"


def serial(buf: np.ndarray, piece: int, crc: int = 0) -> int:
    for start in range(0, len(buf), piece):
        crc = _native.crc32c(buf[start : start + piece], crc)
    return crc


def test_large_random_lengths_are_consistent() -> None:
    rng = random.Random(42)
    big = random_bytes(400_000 + 64, 42)
    for _ in range(40):
        offset = rng.randrange(64)
        n = rng.randrange(400_000)
        buf = big[offset : offset + n]
        init = rng.getrandbits(32)
        whole = _native.crc32c(buf, init)
        k = rng.randrange(n + 1)
        assert whole == _native.crc32c(buf[k:], _native.crc32c(buf[:k], init)), (offset, n, k)
        # 200-byte pieces never reach the folding code; 5000-byte pieces use its small paths.
        piece = rng.choice([200, 5000])
        assert whole == serial(buf, piece, init), (offset, n, piece)


def test_random_buffer_against_reference() -> None:
    rng = random.Random(7)
    big = random_bytes(60_000 + 64, 7)
    for offset in (0, 3):
        n = 50_000 + rng.randrange(10_000)
        buf = big[offset : offset + n]
        init = rng.getrandbits(32)
        assert _native.crc32c(buf, init) == ref_table_prefixes(bytes(buf), init, [n])[n]


@pytest.mark.parametrize("size", [9 << 20, (17 << 20) + 11])
def test_threaded_lengths(size: int) -> None:
    # 4 MiB per thread at least: these sizes split across 2 or 4 threads where there are cores.
    big = random_bytes(size + 3, size)
    buf = big[3:]
    init = 0xDEADBEEF
    k = (3 << 20) + 1  # each piece below the threaded size
    expected = init
    for start in range(0, size, k):
        expected = _native.crc32c(buf[start : start + k], expected)
    assert _native.crc32c(buf, init) == expected


def test_method_name() -> None:
    method = _native.build_info()["crc32c"]
    assert method in {"sse4.2+vpclmul", "sse4.2+pclmul", "sse4.2", "armv8-crc", "table"}
    assert (method != "table") == _native.crc32c_hardware()
