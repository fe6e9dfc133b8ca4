"""Every file in ``examples/`` runs, at a small size, on the test run's local Spark.

An example is a script with ``main(spark=None, small=False)``: run as ``python examples/x.py`` it
starts its own local Spark; here it is given the session's and ``small=True``. Whatever it
checks (an accuracy, the examples it counted) it asserts itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ holds no example"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path, spark: object) -> None:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(spark=spark, small=True)
