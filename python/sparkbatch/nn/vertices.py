"""Graph vertices without parameters: :class:`Merge` and :class:`ElementWise` (DL4J's
``MergeVertex`` and ``ElementWiseVertex``), with their backward passes.

A vertex combines the outputs of several vertices or inputs into one array of rows, through the
:class:`~sparkbatch.nn.backend.Backend`'s primitives, so it runs on every device.

Examples
--------
>>> Merge().output_width([3, 4], "m")
7
>>> ElementWise("add").output_width([5, 5], "s")
5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Vertex", "Merge", "ElementWise", "ELEMENTWISE_OPS", "vertex_from_config"]

#: The operations of :class:`ElementWise`.
ELEMENTWISE_OPS = ("add", "average", "product", "max")

Work = dict[str, Any]


class Vertex:
    """The protocol of a parameter-free vertex with one or more inputs."""

    #: The fewest inputs the vertex takes.
    min_inputs = 1

    def output_width(self, widths: list[int], name: str) -> int:
        """The width of the output for inputs of ``widths``; ValueError naming vertex
        ``name`` and the widths when they do not fit together."""
        raise NotImplementedError

    def work_shapes(self, rows: int, widths: list[int], width: int) -> dict[str, tuple[int, ...]]:
        """Work arrays for ``rows`` rows (``out`` holds the output)."""
        return {"out": (rows, width)}

    def forward(self, backend: Any, xs: list[Any], work: Work) -> Any:
        """The output for inputs ``xs``; the vertex may keep ``xs`` in ``work``."""
        raise NotImplementedError

    def backward(self, backend: Any, work: Work, d_out: Any, d_ins: list[Any]) -> None:
        """Write the gradient with respect to input ``i`` into ``d_ins[i]`` (None: not
        needed) from ``d_out``, which the vertex may overwrite."""
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Merge(Vertex):
    """Concatenate the inputs along the feature axis, in the order they are named."""

    min_inputs = 2

    def output_width(self, widths: list[int], name: str) -> int:
        return sum(widths)

    def forward(self, backend: Any, xs: list[Any], work: Work) -> Any:
        out = work["out"]
        column = 0
        for x in xs:
            backend.copy_columns(x, out, column)
            column += x.shape[1]
        return out

    def backward(self, backend: Any, work: Work, d_out: Any, d_ins: list[Any]) -> None:
        column = 0
        for d_in, width in zip(d_ins, work["widths"], strict=True):
            if d_in is not None:
                backend.take_columns(d_out, column, d_in)
            column += width

    def work_shapes(self, rows: int, widths: list[int], width: int) -> dict[str, Any]:
        return {"out": (rows, width), "widths": list(widths)}

    def to_config(self) -> dict[str, Any]:
        return {"type": "Merge"}


@dataclass(frozen=True)
class ElementWise(Vertex):
    """Combine inputs of one width element by element: ``"add"``, ``"average"``,
    ``"product"`` or ``"max"`` (the gradient of a maximum goes to the first input that holds
    it)."""

    op: str = "add"

    min_inputs = 2

    def __post_init__(self) -> None:
        if self.op not in ELEMENTWISE_OPS:
            raise ValueError(
                f"unknown element-wise op {self.op!r}; choose one of {', '.join(ELEMENTWISE_OPS)}"
            )

    def output_width(self, widths: list[int], name: str) -> int:
        for i, width in enumerate(widths[1:], 1):
            if width != widths[0]:
                raise ValueError(
                    f"vertex {name!r} ({self.op}) needs inputs of one width, but input 0 has "
                    f"width {widths[0]} and input {i} has width {width}"
                )
        return widths[0]

    def work_shapes(self, rows: int, widths: list[int], width: int) -> dict[str, Any]:
        shapes: dict[str, Any] = {"out": (rows, width)}
        if self.op == "max":
            shapes["remaining"] = (rows, width)
            shapes["discarded"] = (rows, width)  # the gradient of an input that needs none
        return shapes

    def forward(self, backend: Any, xs: list[Any], work: Work) -> Any:
        out = work["out"]
        work["xs"] = xs
        if self.op == "average":
            backend.average(xs, out)
            return out
        backend.copy(out, xs[0])
        for x in xs[1:]:
            if self.op == "add":
                backend.add_into(out, x)
            elif self.op == "product":
                backend.multiply(out, x, out)
            else:
                backend.maximum(out, x, out)
        return out

    def backward(self, backend: Any, work: Work, d_out: Any, d_ins: list[Any]) -> None:
        xs = work["xs"]
        if self.op == "max":
            remaining = work["remaining"]
            backend.copy(remaining, work["out"])
            for x, d_in in zip(xs, d_ins, strict=True):
                backend.max_backward(
                    d_out, x, remaining, work["discarded"] if d_in is None else d_in
                )
            return
        for i, d_in in enumerate(d_ins):
            if d_in is None:
                continue
            if self.op == "add":
                backend.copy(d_in, d_out)
            elif self.op == "average":
                backend.scale(d_in, d_out, 1.0 / len(xs))
            else:  # product: d_out times every other input (no division: inputs may be 0)
                backend.copy(d_in, d_out)
                for j, x in enumerate(xs):
                    if j != i:
                        backend.multiply(d_in, x, d_in)

    def to_config(self) -> dict[str, Any]:
        return {"type": "ElementWise", "op": self.op}


def vertex_from_config(config: dict[str, Any]) -> Vertex:
    """The vertex that ``to_config()`` described."""
    kind = config.get("type")
    if kind == "Merge":
        return Merge()
    if kind == "ElementWise":
        return ElementWise(config.get("op", "add"))
    raise ValueError(f"unknown vertex type {kind!r}; expected Merge or ElementWise")
