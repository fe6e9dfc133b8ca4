"""Every file in ``examples/`` runs, at a small size, on the test run's local Spark.

An example is a script with ``main(spark=None, small=False)``: run as ``python examples/x.py`` it
starts its own local Spark; here it is given the session's and ``small=True``. Whatever it
checks (an accuracy, the examples it counted) it asserts itself.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ holds no example"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_follows_the_convention(path: Path) -> None:
    """A docstring saying which how-to it is and how to run it, ``main(spark=None,
    small=False)``, and a ``__main__`` guard that calls it."""
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    assert doc and doc.startswith("How to"), f"{path.name}: the docstring names no how-to"
    assert f"python examples/{path.name}" in doc, (
        f"{path.name}: the docstring says not how to run it"
    )
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains, f"{path.name}: no main()"
    arguments = mains[0].args
    names = [a.arg for a in arguments.args]
    defaults = [ast.literal_eval(d) for d in arguments.defaults]
    assert names == ["spark", "small"] and defaults == [None, False], (path.name, names, defaults)
    guards = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert guards and "main()" in ast.unparse(guards[0]), f"{path.name}: no __main__ guard"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path, spark: object) -> None:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(spark=spark, small=True)
