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


def _uses_spark(module: object) -> bool:
    tests = doctest.DocTestFinder().find(module)
    return any("sc." in ex.source or "(sc," in ex.source for t in tests for ex in t.examples)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, request):
    module = importlib.import_module(name)
    # Examples of Spark functions get the session's SparkContext as ``sc``, as in pyspark's shell.
    extra = {"sc": request.getfixturevalue("sc")} if _uses_spark(module) else {}
    result = doctest.testmod(
        module, extraglobs=extra, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
