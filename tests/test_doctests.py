"""Runs the examples in the installed package's docstrings, module by module."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sparkbatch

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(sparkbatch.__path__, prefix="sparkbatch.")
    if not info.name.startswith("sparkbatch._native") and ".__main__" not in info.name
)


def test_the_package_has_examples():
    assert "sparkbatch.data.format" in MODULES and "sparkbatch.storage.paths" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
