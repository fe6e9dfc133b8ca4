"""The examples in docs/*.md run as written."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if ">>>" in p.read_text())


def test_the_guide_has_examples():
    assert "index.md" in PAGES


@pytest.mark.spark
@pytest.mark.parametrize("page", PAGES)
def test_doc_examples(page, spark, sc):
    result = doctest.testfile(
        str(DOCS / page),
        module_relative=False,
        globs={"spark": spark, "sc": sc},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page}"
