"""``sparkbatch inspect``: print what minibatch files hold and whether they pass their checks."""

from __future__ import annotations

from collections.abc import Sequence

from sparkbatch.data import DataSet, load
from sparkbatch.errors import FormatError


def _describe(name: str, array: object) -> str:
    return f"{name} {getattr(array, 'dtype', '?')}{list(getattr(array, 'shape', ()))}"


def run(paths: Sequence[str], *, verify: bool = True) -> int:
    """Print one line per file; return 1 if any file failed to load, else 0."""
    failed = 0
    for path in paths:
        try:
            data = load(path, verify=verify)
        except (FormatError, OSError) as e:
            print(f"{path}: ERROR {e}")
            failed += 1
            continue
        if isinstance(data, DataSet):
            parts = [
                ("features", data.features),
                ("labels", data.labels),
                ("features_mask", data.features_mask),
                ("labels_mask", data.labels_mask),
            ]
        else:
            parts = [(f"features.{i}", a) for i, a in enumerate(data.features)]
            parts += [(f"labels.{i}", a) for i, a in enumerate(data.labels)]
        shown = ", ".join(_describe(n, a) for n, a in parts if a is not None)
        print(f"{path}: {type(data).__name__} of {data.num_examples} examples: {shown}")
    return 1 if failed else 0
