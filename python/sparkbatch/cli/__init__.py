"""The ``sparkbatch`` command line (also ``python -m sparkbatch``)."""

from __future__ import annotations

from sparkbatch.cli.main import main

__all__ = ["main"]
