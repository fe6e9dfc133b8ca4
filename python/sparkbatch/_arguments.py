"""Checks of integer arguments, shared by :mod:`sparkbatch.nn` and :mod:`sparkbatch.train`.

Private: both packages take batch sizes, epochs and counts from users and refuse the same bad
values with the same words (``batch_size=2.5``, ``0``, ``True`` or ``"8"`` never reach a loop).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(name: str, value: Any, *, minimum: int | None = 1) -> int:
    """``value`` as an int: TypeError naming ``name`` unless it is an integer (bool is not),
    ValueError unless it is at least ``minimum`` (None: any)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_optional_int(name: str, value: Any, *, minimum: int = 1) -> int | None:
    """:func:`check_int`, with None allowed (and returned)."""
    return None if value is None else check_int(name, value, minimum=minimum)
