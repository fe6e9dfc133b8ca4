"""Type stubs of the native core (csrc/). Users call it through sparkbatch.data, sparkbatch.records
and sparkbatch.spark, which add names, checks and errors."""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

ALIGNMENT: int

def crc32c(buffer: Any, value: int = 0) -> int: ...
def crc32c_hardware() -> bool: ...
def read_header(
    buffer: Any, name: str
) -> tuple[int, list[tuple[str, str, tuple[int, ...], int, int]], dict[str, str]]: ...
def write_file(fd: int, tensors: list[tuple[str, str, Any]], metadata: dict[str, str]) -> int: ...
def serialize(tensors: list[tuple[str, str, Any]], metadata: dict[str, str]) -> bytes: ...
def one_hot(indices: NDArray[np.integer[Any]], num_classes: int) -> NDArray[np.float32]: ...
def build_info() -> dict[str, Any]: ...
def parse_csv(
    buffer: Any,
    *,
    delimiter: str = ",",
    quote: str = '"',
    skip_lines: int = 0,
    columns: int = -1,
    class_columns: Mapping[int, int] = ...,
    categories: Mapping[int, Sequence[str]] = ...,
    string_columns: Sequence[int] = ...,
    on_error: str = "raise",
    threads: int = 0,
) -> dict[str, Any]: ...
