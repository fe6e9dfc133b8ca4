"""Where names live: every exception class in sparkbatch.errors, and no private name of one
package used by another (shared private helpers are top-level ``sparkbatch._*`` modules)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import sparkbatch
import sparkbatch.errors

ROOT = Path(sparkbatch.__file__).parent
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(sparkbatch.__path__, prefix="sparkbatch.")
    if not info.name.startswith(("sparkbatch._native", "sparkbatch._cuda"))
    and ".__main__" not in info.name
)

# (importing module, private name it uses) still to be moved, and why they are here
KNOWN = {
    # the shared module that lends sparkbatch.data's unchecked construction to convert
    ("sparkbatch._unchecked", "sparkbatch.data.dataset.DataSet._unchecked"),
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _package(module: str) -> str:
    """``sparkbatch.data`` for ``sparkbatch.data.loaders``; ``sparkbatch`` for top-level
    modules (``sparkbatch.errors``, the shared ``sparkbatch._finite``)."""
    parts = module.split(".")
    path = ROOT.joinpath(*parts[1:])
    return ".".join(parts[:2]) if len(parts) > 2 or path.is_dir() else "sparkbatch"


def _crossing(user: str, target: str) -> bool:
    """Whether ``user`` reaching ``target`` (a dotted module or attribute path) uses another
    package's private name; a top-level private module (``sparkbatch._prefetch``) is shared."""
    parts = target.split(".")
    if parts[0] != "sparkbatch" or not any(_is_private(p) for p in parts[1:]):
        return False
    if _package(user) == _package(".".join(parts[:3])):
        return False
    return not (_is_private(parts[1]) and not any(_is_private(p) for p in parts[2:]))


def _uses(module: str) -> set[str]:
    """The dotted names of sparkbatch that ``module`` imports or reads an attribute of."""
    loaded = importlib.import_module(module)
    source = inspect.getsource(loaded)
    package = module if Path(inspect.getfile(loaded)).name == "__init__.py" else None
    base = (package or module.rpartition(".")[0]).split(".")  # what "from . import" names
    names: dict[str, str] = {}
    found: set[str] = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                parent = base[: len(base) - node.level + 1]
                origin = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{origin}.{alias.name}"
                names[alias.asname or alias.name] = full
                found.add(full)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
                found.add(alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in names
            and _is_private(node.attr)
        ):
            found.add(f"{names[node.value.id]}.{node.attr}")
    return found


def test_no_package_uses_another_packages_private_names():
    crossing = {
        (module, name) for module in MODULES for name in _uses(module) if _crossing(module, name)
    }
    assert crossing - KNOWN == set()


def test_the_known_crossings_still_exist():
    """Drop an entry of KNOWN once its import has moved."""
    crossing = {
        (module, name) for module in MODULES for name in _uses(module) if _crossing(module, name)
    }
    assert KNOWN - crossing == set()


def test_the_crossing_check_sees_private_names():
    assert _crossing("sparkbatch.train.worker", "sparkbatch.data.loaders._load_minibatch")
    assert _crossing("sparkbatch.spark.records", "sparkbatch.convert.records._label_spec")
    assert _crossing("sparkbatch.convert.table", "sparkbatch.data.DataSet._unchecked")
    assert not _crossing("sparkbatch.data.iterators", "sparkbatch.data.loaders._not_found")
    assert not _crossing("sparkbatch.nn.network", "sparkbatch._finite.check_mode")
    assert not _crossing("sparkbatch.cli.info", "sparkbatch._native")
    assert _crossing("sparkbatch.nn.network", "sparkbatch._finite._named_arrays")


@pytest.mark.parametrize("name", MODULES)
def test_exception_classes_live_in_errors(name):
    module = importlib.import_module(name)
    defined = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == name
    ]
    assert name == "sparkbatch.errors" or defined == []


def test_every_error_is_exported_and_still_importable_where_it_was():
    from sparkbatch.nn.gpu import CudaUnavailableError
    from sparkbatch.spark import DataFrameError
    from sparkbatch.spark.dataframe import DataFrameError as FromModule

    assert CudaUnavailableError is sparkbatch.CudaUnavailableError
    assert DataFrameError is FromModule is sparkbatch.DataFrameError
    errors = {
        name
        for name, value in vars(sparkbatch.errors).items()
        if isinstance(value, type) and issubclass(value, sparkbatch.SparkbatchError)
    }
    assert errors == set(sparkbatch.errors.__all__) <= set(sparkbatch.__all__)
