"""A computation graph: several inputs, layers and vertices in any acyclic arrangement, and
several outputs (DL4J's ``ComputationGraph``).

``Graph(inputs, vertices, outputs)`` names its inputs, maps each vertex name to its layer or
vertex and the names it reads, and lists the :class:`~sparkbatch.nn.Output` layers whose labels
a :class:`~sparkbatch.data.MultiDataSet` holds, in order. The score is the sum of the outputs'
mean losses plus the L2 penalty, as in DL4J. A graph runs on the same engine and backends as
:class:`~sparkbatch.nn.Network` (a chain is a graph) and implements the same ``Model`` protocol,
so parameter averaging trains it as it trains a network.

The parameters lie in the flat buffer layer after layer in the order the ``vertices`` mapping
lists the layers, each layer's in the order of its ``param_shapes`` (``W`` then ``b``).

Examples
--------
>>> import numpy as np
>>> from sparkbatch.data import MultiDataSet
>>> from sparkbatch.nn import Adam, Dense, Graph, Merge, Output
>>> graph = Graph(
...     ["a", "b"],
...     {
...         "da": (Dense(3, 8, "tanh"), "a"),
...         "db": (Dense(2, 8, "tanh"), "b"),
...         "m": (Merge(), "da", "db"),
...         "class": (Output(16, 2, "softmax", "cross_entropy"), "m"),
...         "value": (Output(16, 1, "identity", "mse"), "m"),
...     },
...     ["class", "value"],
...     Adam(0.01),
...     seed=1,
... )
>>> rng = np.random.default_rng(0)
>>> a, b = rng.normal(size=(64, 3)), rng.normal(size=(64, 2))
>>> labels = [np.eye(2)[(a[:, 0] > 0).astype(int)], b[:, :1] * 2]
>>> batch = MultiDataSet([a, b], labels)
>>> before = graph.score(batch)
>>> _ = graph.fit(batch, epochs=50)
>>> graph.score(batch) < before / 4
True
>>> [out.shape for out in graph.output([a, b])]
[(64, 2), (64, 1)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._arguments import check_optional_int
from ..data import DataSet, MultiDataSet
from ..evaluation import Evaluation, RegressionEvaluation
from .engine import Node, Topology
from .flat_model import (
    FlatModel,
    Rows,
    label_rows,
    last_step_labels,
    rows,
    sequence_steps,
    unrows,
)
from .layers import Layer, Output, is_layer_type, layer_from_config
from .updaters import Updater, updater_from_config
from .vertices import Vertex, vertex_from_config

__all__ = ["Graph"]

InputSpec = str | tuple[str, int]


class Graph(FlatModel):
    """A directed acyclic graph of layers and vertices with named inputs and outputs.

    Parameters
    ----------
    inputs : list of str or (str, int)
        The input names, in the order of a MultiDataSet's features. An input's width comes
        from the layers it feeds; give it as ``(name, width)`` when it feeds only vertices.
    vertices : dict of str to (layer or vertex, *input names)
        Every layer (:class:`~sparkbatch.nn.Dense`, :class:`~sparkbatch.nn.Output`, ...) and
        vertex (:class:`~sparkbatch.nn.Merge`, :class:`~sparkbatch.nn.ElementWise`) with the
        names of the inputs or vertices it reads; in topological order or not.
    outputs : list of str
        The names of the Output layers, in the order of a MultiDataSet's labels.
    updater, seed, dtype, device
        As for :class:`~sparkbatch.nn.Network`.
    """

    KIND = "Graph"
    CONFIG_FORMAT = "sparkbatch.nn.Graph"
    CONFIG_VERSION = 1

    def __init__(
        self,
        inputs: Sequence[InputSpec],
        vertices: Mapping[str, tuple[Any, ...]],
        outputs: Sequence[str],
        updater: Updater | None = None,
        *,
        seed: int = 0,
        dtype: str | np.dtype = "float32",
        device: str | int = "cpu",
    ) -> None:
        topology = build_topology(inputs, vertices, outputs)
        self.inputs: tuple[str, ...] = tuple(name for name, _ in topology.inputs)
        self.outputs: tuple[str, ...] = tuple(outputs)
        self.vertices: dict[str, tuple[Any, ...]] = {
            name: (entry[0], *entry[1:]) for name, entry in vertices.items()
        }
        self._setup(topology, updater, seed, dtype, device)

    @property
    def input_widths(self) -> list[int]:
        """The width of each input, in order."""
        return [width for _, width in self._topology.inputs]

    @property
    def output_widths(self) -> list[int]:
        """The width of each output, in order."""
        return [self._topology.nodes[i].width for i in self._topology.outputs]

    def layer_params(self, name: str) -> dict[str, np.ndarray]:
        """Views of layer ``name``'s parameters by name (``W``, ``b``) in the parameter buffer
        (of a host copy on a GPU graph)."""
        for node in self._topology.nodes:
            if node.name == name:
                if not node.params:
                    raise ValueError(f"vertex {name!r} has no parameters")
                flat = self.params()
                return {
                    key: flat[offset : offset + int(np.prod(shape))].reshape(shape)
                    for key, (offset, shape) in node.params.items()
                }
        raise KeyError(f"no vertex {name!r}; the graph has {', '.join(self.vertices)}")

    # -- inference ---------------------------------------------------------------------------

    def output(
        self,
        features: Sequence[Any],
        *,
        features_masks: Sequence[Any] | None = None,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """The activations of every output, in order, for ``features`` (one array per input,
        ``[n, width]`` or sequences ``[n, width, t]``, with ``features_masks``, None or one per
        input, for recurrent layers). An output that gives a row per time step is
        ``[n, width, t]``."""
        step = check_optional_int("batch_size", batch_size) or self._inference_rows()
        arrays = [np.asarray(x) for x in _as_list(features)]
        xs = self._feature_rows(arrays)
        masks = list(features_masks) if features_masks is not None else [None] * len(arrays)
        steps = sequence_steps(arrays, masks, self.dtype)
        outs = self._outputs(xs, steps, step)
        return [
            unrows(out, (steps.n, out.shape[1], steps.t)) if seq else out
            for out, seq in zip(outs, self._engine.output_sequences(steps), strict=True)
        ]

    def evaluate(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        output_index: int = 0,
        *,
        top_n: int = 1,
        labels: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> Evaluation:
        """Classification figures of output ``output_index`` over ``data``."""
        k = self._output_index(output_index)
        evaluation = Evaluation(self.output_widths[k], labels=labels, top_n=top_n)
        return self._evaluated(evaluation, data, batch_size, k)

    def evaluate_regression(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        output_index: int = 0,
        *,
        column_names: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> RegressionEvaluation:
        """Regression figures per column of output ``output_index`` over ``data``."""
        k = self._output_index(output_index)
        evaluation = RegressionEvaluation(self.output_widths[k], column_names=column_names)
        return self._evaluated(evaluation, data, batch_size, k)

    def _labelled_output(self, batch: Any, output_index: int) -> tuple[Any, np.ndarray, Any]:
        mds = _as_multi(batch)
        self._check_labels(mds)
        predicted = self.output(list(mds.features), features_masks=mds.features_masks)
        labels = mds.labels[output_index]
        mask = self._labels_mask(
            output_index, mds.labels_masks[output_index], mds.features_masks, labels
        )
        predicted = predicted[output_index]
        if np.ndim(labels) == 3 and predicted.ndim == 2:
            labels, predicted = last_step_labels(labels, mask, predicted, self.dtype)
            mask = None
        return labels, predicted, mask

    def _output_index(self, index: int) -> int:
        if (
            not isinstance(index, (int, np.integer))
            or isinstance(index, bool)
            or not 0 <= index < len(self.outputs)
        ):
            raise ValueError(
                f"output_index must be in [0, {len(self.outputs)}) for outputs "
                f"{', '.join(map(repr, self.outputs))}, got {index!r}"
            )
        return int(index)

    # -- configuration -----------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """The architecture and training configuration as JSON-able data (no parameters)."""
        return {
            "format": self.CONFIG_FORMAT,
            "version": self.CONFIG_VERSION,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "inputs": [[name, width] for name, width in self._topology.inputs],
            "vertices": [
                [name, entry[0].to_config(), list(entry[1:])]
                for name, entry in self.vertices.items()
            ],
            "outputs": list(self.outputs),
            "updater": self.updater.to_config(),
        }

    @classmethod
    def _from_checked_config(cls, config: Mapping[str, Any]) -> Graph:
        vertices = {}
        for name, op, names in config["vertices"]:
            layer = is_layer_type(op.get("type"))
            vertices[name] = (layer_from_config(op) if layer else vertex_from_config(op), *names)
        return cls(
            [(name, int(width)) for name, width in config["inputs"]],
            vertices,
            config["outputs"],
            updater_from_config(config["updater"]),
            seed=config.get("seed", 0),
            dtype=config.get("dtype", "float32"),
        )

    def __repr__(self) -> str:
        return (
            f"Graph(inputs={list(self.inputs)}, {len(self.vertices)} vertices, "
            f"outputs={list(self.outputs)}, {self.num_params} params, "
            f"{type(self.updater).__name__}, {self.dtype.name})"
        )

    # -- minibatches -------------------------------------------------------------------------

    def _feature_rows(self, arrays: Sequence[Any]) -> list[np.ndarray]:
        if len(arrays) != len(self.inputs):
            raise ValueError(
                f"this graph has {len(self.inputs)} inputs ({', '.join(map(repr, self.inputs))}) "
                f"but got {len(arrays)} features arrays"
            )
        xs = [
            rows(x, f"features[{i}] (input {name!r})", width, self.dtype, "graph")
            for i, (x, (name, width)) in enumerate(zip(arrays, self._topology.inputs, strict=True))
        ]
        if self._collapses:  # sequences and rows may meet after a LastTimeStep: examples agree
            _same_rows([np.asarray(x)[:, 0] for x in arrays], "features (examples)")
        else:
            _same_rows(xs, "features")
        return xs

    @property
    def _collapses(self) -> bool:
        """Whether a layer turns sequences into one row per example (LastTimeStep)."""
        return any(n.is_layer and n.op.time == "last_step" for n in self._topology.nodes)

    def _batch_rows(self, batch: DataSet | MultiDataSet) -> Rows:
        mds = _as_multi(batch)
        xs = self._feature_rows(mds.features)
        self._check_labels(mds)
        steps = sequence_steps(mds.features, mds.features_masks, self.dtype)
        sequential = self._engine.output_sequences(steps) if self._collapses else None
        ys, ws = [], []
        for k, (y, mask, name, width) in enumerate(
            zip(mds.labels, mds.labels_masks, self.outputs, self.output_widths, strict=True)
        ):
            mask = self._labels_mask(k, mask, mds.features_masks, y)
            seq = sequential[k] if sequential is not None else True
            label, weights = label_rows(
                y,
                mask,
                f"labels[{k}] (output {name!r})",
                width,
                self.dtype,
                seq,
                any(steps.sequences),
                "graph",
            )
            ys.append(label)
            ws.append(weights)
        if sequential is None:
            _same_rows(xs[:1] + ys, "features and labels")
        return xs, ys, ws, steps

    def _check_labels(self, mds: MultiDataSet) -> None:
        """ValueError unless ``mds`` holds one labels array per output."""
        if len(mds.labels) != len(self.outputs):
            if not mds.labels:
                raise ValueError("the minibatch has no labels to fit, score or evaluate against")
            raise ValueError(
                f"this graph has {len(self.outputs)} outputs "
                f"({', '.join(map(repr, self.outputs))}) but the minibatch has "
                f"{len(mds.labels)} labels arrays"
            )


def _as_list(features: Any) -> list[Any]:
    if isinstance(features, np.ndarray):
        return [features]
    return list(features)


def _as_multi(batch: DataSet | MultiDataSet) -> MultiDataSet:
    if isinstance(batch, MultiDataSet):
        return batch
    if isinstance(batch, DataSet):
        return MultiDataSet.from_dataset(batch)
    raise TypeError(f"expected a MultiDataSet or DataSet minibatch, got {type(batch).__name__}")


def _same_rows(arrays: Sequence[np.ndarray], what: str) -> None:
    counts = [a.shape[0] for a in arrays]
    if len(set(counts)) > 1:
        raise ValueError(
            f"the {what} arrays give different numbers of rows (examples times time steps): "
            f"{counts}"
        )


# -- building and checking a topology ------------------------------------------------------------


def build_topology(
    inputs: Sequence[InputSpec],
    vertices: Mapping[str, tuple[Any, ...]],
    outputs: Sequence[str],
) -> Topology:
    """The checked topology of a graph; ValueError or TypeError naming the vertex otherwise."""
    given_widths = _input_specs(inputs)
    input_names = list(given_widths)
    if not isinstance(vertices, Mapping) or not vertices:
        raise ValueError("vertices must be a non-empty dict of name -> (layer or vertex, *inputs)")
    ops: dict[str, Layer | Vertex] = {}
    reads: dict[str, list[str]] = {}
    for name, entry in vertices.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"vertex names must be non-empty strings, got {name!r}")
        if name in given_widths:
            raise ValueError(f"vertex {name!r} has the name of an input")
        if not isinstance(entry, (tuple, list)) or len(entry) < 2:
            raise TypeError(
                f"vertex {name!r} must be given as (layer or vertex, *input names), got {entry!r}"
            )
        op, names = entry[0], list(entry[1:])
        if not isinstance(op, (Layer, Vertex)):
            raise TypeError(f"vertex {name!r} is a {type(op).__name__}, not a layer or a vertex")
        for source in names:
            if not isinstance(source, str):
                raise TypeError(f"vertex {name!r} reads {source!r}: inputs are named by strings")
            if source not in given_widths and source not in vertices:
                raise ValueError(
                    f"vertex {name!r} reads {source!r}, which is neither an input "
                    f"({', '.join(map(repr, input_names))}) nor a vertex"
                )
        if isinstance(op, Layer) and len(names) != 1:
            raise ValueError(
                f"layer {name!r} reads {len(names)} inputs ({', '.join(map(repr, names))}); a "
                "layer reads one: combine them first with nn.Merge() or nn.ElementWise()"
            )
        if isinstance(op, Vertex) and len(names) < op.min_inputs:
            raise ValueError(
                f"vertex {name!r} ({type(op).__name__}) needs at least {op.min_inputs} inputs, "
                f"got {len(names)}"
            )
        ops[name], reads[name] = op, names
    order = _topological_order(reads)
    _check_outputs(ops, reads, outputs)
    _check_reachable(input_names, reads, outputs)

    widths = _input_widths(given_widths, ops, reads)
    slots = {name: i for i, name in enumerate(input_names)}
    nodes = []
    for position, name in enumerate(order):
        op, names = ops[name], reads[name]
        in_widths = [widths[source] for source in names]
        if isinstance(op, Layer):
            if op.n_in != in_widths[0]:
                raise ValueError(
                    f"vertex {name!r} ({type(op).__name__} with n_in={op.n_in}) reads "
                    f"{names[0]!r} of width {in_widths[0]}"
                )
            width = op.n_out
        else:
            width = op.output_width(in_widths, name)
        widths[name] = width
        slots[name] = len(input_names) + position
        nodes.append(
            Node(
                name,
                op,
                tuple(slots[source] for source in names),
                slots[name],
                width,
                title=f"vertex {name!r}",
            )
        )
    position_of = {name: i for i, name in enumerate(order)}
    layer_order = [position_of[name] for name in vertices if isinstance(ops[name], Layer)]
    return Topology(
        [(name, widths[name]) for name in input_names],
        nodes,
        [position_of[name] for name in outputs],
        layer_order,
    )


def _input_specs(inputs: Sequence[InputSpec]) -> dict[str, int | None]:
    if isinstance(inputs, str) or not inputs:
        raise ValueError(f"inputs must be a non-empty list of input names, got {inputs!r}")
    specs: dict[str, int | None] = {}
    for spec in inputs:
        if isinstance(spec, str):
            name, width = spec, None
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            name, width = spec
        else:
            raise TypeError(f"an input is a name or a (name, width) pair, got {spec!r}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"inputs are named by non-empty strings, got {spec!r}")
        if width is not None and (
            not isinstance(width, (int, np.integer)) or isinstance(width, bool) or width < 1
        ):
            raise ValueError(f"input {name!r} has width {width!r}; a width is an integer >= 1")
        if name in specs:
            raise ValueError(f"input {name!r} is named twice")
        specs[name] = None if width is None else int(width)
    return specs


def _topological_order(reads: Mapping[str, list[str]]) -> list[str]:
    """Kahn's order, ties kept in the order given; ValueError naming a cycle."""
    pending = {name: sum(1 for s in sources if s in reads) for name, sources in reads.items()}
    readers: dict[str, list[str]] = {name: [] for name in reads}
    for name, sources in reads.items():
        for source in sources:
            if source in readers:
                readers[source].append(name)
    ready = [name for name in reads if pending[name] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for reader in readers[name]:
            pending[reader] -= 1
            if pending[reader] == 0:
                ready.append(reader)
    if len(order) < len(reads):
        raise ValueError(f"the graph has a cycle: {' -> '.join(_a_cycle(reads, set(order)))}")
    return order


def _a_cycle(reads: Mapping[str, list[str]], done: set[str]) -> list[str]:
    """One cycle among the vertices not in ``done``, as a path that returns to its start."""
    start = next(name for name in reads if name not in done)
    path, seen = [start], {start: 0}
    while True:
        following = next(s for s in reads[path[-1]] if s in reads and s not in done)
        if following in seen:
            cycle = path[seen[following] :] + [following]
            return list(reversed(cycle))
        seen[following] = len(path)
        path.append(following)


def _check_outputs(
    ops: Mapping[str, Layer | Vertex], reads: Mapping[str, list[str]], outputs: Sequence[str]
) -> None:
    if isinstance(outputs, str) or not outputs:
        raise ValueError(f"outputs must be a non-empty list of Output layer names, got {outputs!r}")
    for name in outputs:
        if name not in ops:
            raise ValueError(f"output {name!r} is not a vertex of the graph")
        if not isinstance(ops[name], Output):
            raise ValueError(
                f"output {name!r} is a {type(ops[name]).__name__}; outputs must be Output layers"
            )
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"outputs name a vertex twice: {list(outputs)}")
    for name, op in ops.items():
        if isinstance(op, Output) and name not in outputs:
            raise ValueError(f"Output layer {name!r} is not listed in outputs")
    for name, sources in reads.items():
        for source in sources:
            if source in outputs:
                raise ValueError(
                    f"vertex {name!r} reads output {source!r}; an Output layer ends the graph"
                )


def _check_reachable(
    input_names: Sequence[str], reads: Mapping[str, list[str]], outputs: Sequence[str]
) -> None:
    """Every input and vertex must lead to an output."""
    useful, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in useful:
            continue
        useful.add(name)
        stack.extend(reads.get(name, ()))
    for name in input_names:
        if name not in useful:
            read = any(name in sources for sources in reads.values())
            raise ValueError(
                f"input {name!r} " + ("leads to no output" if read else "is not read by any vertex")
            )
    for name in reads:
        if name not in useful:
            raise ValueError(f"vertex {name!r} leads to no output")


def _input_widths(
    given: Mapping[str, int | None],
    ops: Mapping[str, Layer | Vertex],
    reads: Mapping[str, list[str]],
) -> dict[str, int]:
    """Each input's width: given, or the n_in of the layers that read it (which must agree)."""
    widths: dict[str, int] = {}
    for name, width in given.items():
        fed = [
            (v, ops[v].n_in) for v, s in reads.items() if isinstance(ops[v], Layer) and name in s
        ]
        for vertex, n_in in fed:
            if width is None:
                width = n_in
            elif n_in != width:
                first = (
                    f"width {given[name]}" if given[name] else f"n_in={fed[0][1]} of {fed[0][0]!r}"
                )
                raise ValueError(
                    f"input {name!r} has {first} but vertex {vertex!r} "
                    f"({type(ops[vertex]).__name__}) has n_in={n_in}"
                )
        if width is None:
            raise ValueError(
                f"input {name!r} feeds no layer directly, so its width is unknown: give it as "
                f"({name!r}, width) in inputs"
            )
        widths[name] = width
    return widths
