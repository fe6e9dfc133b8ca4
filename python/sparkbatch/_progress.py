"""Progress bars for long work on the driver: a tqdm bar on a terminal, nothing otherwise.

Private, and shared by :mod:`sparkbatch.data` (``export_datasets``) and :mod:`sparkbatch.cli`
(the demo's steps and its generated CSV), so that every long local loop decides alike when to
show a bar: only when the stream it writes to (stderr) is a terminal, unless the caller forces
it on or off. Logs, pipes, notebooks' captured streams and CI get no bar and no control
characters. tqdm is imported only when a bar is shown.

Examples
--------
>>> import io
>>> out = io.StringIO()
>>> with Progress(total=3, desc="doubling", enabled=True, file=out) as bar:
...     bar.update(3)
>>> "doubling" in out.getvalue() and "3/3" in out.getvalue()
True
>>> Progress(total=3, enabled=False).shown  # no bar: every call does nothing
False
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Progress", "wanted"]


def wanted(enabled: bool | None, file: TextIO | None = None) -> bool:
    """Whether to show a bar: ``enabled`` when given, else whether ``file`` (default stderr)
    is a terminal."""
    if enabled is not None:
        return bool(enabled)
    stream = sys.stderr if file is None else file
    isatty = getattr(stream, "isatty", None)  # a replaced stderr may be any object
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False


class Progress:
    """A bar advanced by hand (:meth:`update`), for loops that count more than their items
    (files and the examples in them); does nothing where :func:`wanted` says no bar.

    A context manager: the bar is closed (its line ended) on leaving, also on an error.
    """

    def __init__(
        self,
        *,
        total: int | None = None,
        desc: str | None = None,
        unit: str = "it",
        enabled: bool | None = None,
        file: TextIO | None = None,
        leave: bool = True,
    ) -> None:
        self._bar: Any = None
        if wanted(enabled, file):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                file=file or sys.stderr,
                dynamic_ncols=True,
                leave=leave,
            )

    @property
    def shown(self) -> bool:
        """Whether a bar is shown."""
        return self._bar is not None

    def update(self, n: int = 1, *, postfix: str | None = None) -> None:
        """Advance by ``n``; ``postfix`` replaces the text after the counter."""
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)

    def describe(self, desc: str) -> None:
        """Replace the text before the counter (what is being done now)."""
        if self._bar is not None:
            self._bar.set_description_str(desc)

    def write(self, text: str, file: TextIO | None = None) -> None:
        """Print ``text`` to ``file`` (default stdout) without breaking the bar's line."""
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=file or sys.stdout)
        else:
            print(text, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
