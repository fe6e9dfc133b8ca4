"""Gradient checks by central differences, shared by the Network and Graph tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_gradients(
    model: Any,
    batch: Any,
    *,
    step: float,
    max_relative_error: float,
    min_absolute_error: float = 1e-8,
) -> None:
    """``model.compute_gradients(batch)`` matches d(score)/d(parameter) measured by central
    differences of ``step`` for every parameter, to a relative error under
    ``max_relative_error``; entries where both are below ``min_absolute_error`` in absolute
    value are compared absolutely (DL4J's GradientCheckUtil criterion). At least half the
    gradients must be non-zero, so that the check checks something."""
    model.compute_gradients(batch)
    analytic = model.gradients().copy()
    params = model.params()
    assert params.dtype == np.float64
    compared = 0
    for i in range(params.size):
        original = params[i]
        params[i] = original + step
        plus = model.compute_gradients(batch)
        params[i] = original - step
        minus = model.compute_gradients(batch)
        params[i] = original
        numeric = (plus - minus) / (2 * step)
        a = analytic[i]
        if abs(a) < min_absolute_error and abs(numeric) < min_absolute_error:
            continue
        relative = abs(a - numeric) / (abs(a) + abs(numeric))
        compared += 1
        assert relative < max_relative_error, (
            f"{model._describe_param(i)}: analytic {a!r} vs numeric {numeric!r} "
            f"(relative error {relative:.2e})"
        )
    assert compared >= params.size // 2, f"only {compared} of {params.size} gradients are non-zero"
    # The check left the parameters as they were, so the gradients are those checked.
    model.compute_gradients(batch)
    np.testing.assert_array_equal(model.gradients(), analytic)
