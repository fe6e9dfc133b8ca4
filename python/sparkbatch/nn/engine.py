"""The training step and inference of every built-in model, written once over a backend.

A :class:`Topology` is a model's structure without a device: its inputs, its layers and vertices
in topological order with their widths, which of them are outputs, and where each layer's
parameters lie in the one flat buffer (the layers' order as the model lists them, each layer's
parameters in the order of its :meth:`~sparkbatch.nn.layers.Layer.param_shapes`).
``Network`` is the topology of a chain; ``Graph`` any directed acyclic graph.

An :class:`Engine` runs a topology on a :class:`~sparkbatch.nn.backend.Backend`: it holds the
flat parameter, gradient and updater-state buffers (every layer's parameters are views into
them), work arrays for the last few batch sizes (so a step allocates nothing), and the step:
forward in topological order, the fused loss of every output, backward in reverse order with the
gradients of an array used by several vertices summed, then the updater.

Sequences (NOTE [rows of a sequence]): an input ``[n, w, t]`` arrives as rows ``[n * t, w]``,
example-major (row ``i * t + s`` is step ``s`` of example ``i``), described by :class:`Steps`
(``n``, ``t``, which inputs are sequences, their features masks). Row-wise layers (``Dense``,
``Output``) see every step as a row; a layer whose ``time`` is ``"sequence"`` (``LSTM``,
``RnnOutput``) is handed ``n``, ``t`` and its input's features mask through its work dict
(``work["mask"]``); one whose ``time`` is ``"last_step"`` (``LastTimeStep``) turns ``n * t``
rows into ``n``. So each slot has its own row count, and the work arrays are kept per
:attr:`Steps.key`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import Backend
from .layers import Layer, Output
from .vertices import Vertex

__all__ = ["Node", "Topology", "Engine", "Steps", "dropout_seed"]

_WORKSPACES_KEPT = 4  # batch sizes whose work arrays are kept (the last batch is often smaller)
_MASK64 = (1 << 64) - 1


def dropout_seed(seed: int, iteration: int, stream: int, layer: int) -> int:
    """The dropout seed of layer ``layer`` (its position among the layers) at ``iteration``
    for a model seeded ``seed``; ``stream`` (a worker's index) gives other masks."""
    mixed = stream * 0x9E3779B97F4A7C15
    return (((seed * 0x100000001B3 + iteration) * 1_000_003 + layer) ^ mixed) & _MASK64


@dataclass(frozen=True)
class Steps:
    """The layout of a minibatch's rows: ``n`` examples; per input whether it is a sequence of
    ``t`` steps (``n * t`` rows, example-major) or one row per example, and its features mask
    (``[n, t]`` host array of the model's dtype, 1 for a real step, 0 for padding; or None)."""

    n: int
    t: int
    sequences: tuple[bool, ...]
    masks: tuple[np.ndarray | None, ...]

    @classmethod
    def rows_only(cls, rows: int, num_inputs: int) -> Steps:
        """Every input one row per example (what callers that give bare rows mean)."""
        return cls(rows, 1, (False,) * num_inputs, (None,) * num_inputs)

    @property
    def key(self) -> tuple[int, int, tuple[bool, ...]]:
        """What the work arrays depend on (masks are per minibatch)."""
        return (self.n, self.t, self.sequences)

    def rows(self, sequence: bool) -> int:
        """The row count of a slot that holds a sequence (or not)."""
        return self.n * self.t if sequence else self.n

    def part(self, begin: int, end: int) -> Steps:
        """Examples ``[begin, end)``."""
        masks = tuple(None if m is None else m[begin:end] for m in self.masks)
        return Steps(min(end, self.n) - begin, self.t, self.sequences, masks)


@dataclass
class Node:
    """A layer or vertex of a topology and where its inputs, output and parameters are."""

    name: str
    op: Layer | Vertex
    inputs: tuple[int, ...]  # slots read (an input's slot is its position among the inputs)
    slot: int  # slot written
    width: int  # of the output
    #: Position among the layers (dropout seeds, error messages); -1 for a vertex.
    layer_index: int = -1
    #: Per parameter name: (offset in the flat buffer, shape).
    params: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    title: str = ""  # how messages name it: "layer 0", "vertex 'dense'"

    def __post_init__(self) -> None:
        self.is_layer = isinstance(self.op, Layer)


class Topology:
    """Inputs, nodes in topological order, outputs and the flat parameter layout.

    Parameters
    ----------
    inputs : list of (name, width)
    nodes : list of Node, in topological order
    outputs : list of node positions, in the order of the labels
    layer_order : the nodes' positions in parameter-layout order (layers only)
    """

    def __init__(
        self,
        inputs: Sequence[tuple[str, int]],
        nodes: Sequence[Node],
        outputs: Sequence[int],
        layer_order: Sequence[int],
    ) -> None:
        self.inputs = list(inputs)
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        offset = 0
        for position, index in enumerate(layer_order):
            node = self.nodes[index]
            node.layer_index = position
            for name, shape in node.op.param_shapes().items():
                node.params[name] = (offset, tuple(shape))
                offset += math.prod(shape)
        self.num_params = offset
        self.layer_order = list(layer_order)
        self.num_slots = len(self.inputs) + len(self.nodes)
        self.slot_widths = [width for _, width in self.inputs] + [n.width for n in self.nodes]
        # A slot needs a gradient when a parameter lies upstream of it.
        needs = [False] * self.num_slots
        for node in self.nodes:
            needs[node.slot] = bool(node.params) or any(needs[i] for i in node.inputs)
        self.needs_grad = needs
        # Per slot, the input whose features mask governs it (-1: none, e.g. after LastTimeStep).
        source = list(range(len(self.inputs))) + [-1] * len(self.nodes)
        for node in self.nodes:
            if node.is_layer and node.op.time == "last_step":
                continue
            source[node.slot] = next((source[i] for i in node.inputs if source[i] >= 0), -1)
        self.mask_source = source
        # Per slot of one row per example made from sequences (after LastTimeStep), the input
        # whose features mask says which step each row comes from (-1: none).
        last = [-1] * self.num_slots
        for node in self.nodes:
            if node.is_layer and node.op.time == "last_step":
                last[node.slot] = source[node.inputs[0]]
            else:
                last[node.slot] = next((last[i] for i in node.inputs if last[i] >= 0), -1)
        self.last_step_source = last

    def slot_sequences(self, sequences: Sequence[bool]) -> list[bool]:
        """Per slot, whether it holds sequences when the inputs' are ``sequences``; ValueError
        naming the vertex that needs sequences and gets rows, or mixes the two."""
        flags = list(sequences) + [False] * len(self.nodes)
        for node in self.nodes:
            ins = [flags[i] for i in node.inputs]
            time = node.op.time if node.is_layer else "rows"
            if time != "rows" and not ins[0]:
                name = type(node.op).__name__
                raise ValueError(
                    f"{node.title} ({name}) needs sequences [n, {node.op.n_in}, t]: its input "
                    f"holds one row per example (features [n, width], or after LastTimeStep)"
                )
            if len(set(ins)) > 1:
                raise ValueError(
                    f"{node.title} combines sequences with one-row-per-example inputs; give "
                    "every input of a vertex the same kind"
                )
            flags[node.slot] = ins[0] and time != "last_step"
        return flags

    @property
    def layers(self) -> list[Node]:
        """The layer nodes in parameter-layout order."""
        return [self.nodes[i] for i in self.layer_order]

    def describe_param(self, index: int) -> str:
        """Which parameter flat index ``index`` is, in words."""
        for node in self.layers:
            for name, (offset, shape) in node.params.items():
                size = math.prod(shape)
                if offset <= index < offset + size:
                    where = np.unravel_index(index - offset, shape)
                    place = (
                        f"row {where[0]}, column {where[1]}"
                        if len(shape) == 2
                        else ", ".join(f"axis {a} at {int(i)}" for a, i in enumerate(where))
                        if len(shape) != 1
                        else f"column {where[0]}"
                    )
                    word = type(node.op).param_words.get(name, name)
                    # "layer 0's weights", but "weights of vertex 'dense'" (not "'dense''s")
                    owner = (
                        f"{word} of {node.title}"
                        if node.title.endswith("'")
                        else f"{node.title}'s {word}"
                    )
                    return f"parameter {index} ({owner}, {place})"
        return f"parameter {index}"


class _Workspace:
    """Work arrays for one batch size: per node its ``work`` dict, per slot the gradient
    arrays, and the resolved backward steps.

    Each array is the start of a 1-D array of :attr:`flats` (one allocation, carved). Given
    ``flats`` of a workspace of the same examples and inputs with at least as many time steps,
    this one allocates nothing and uses their starts: every array's size only grows with ``t``,
    and its layout (example- or time-major) is that of ``t`` steps, whatever the array behind."""

    def __init__(
        self, topology: Topology, backend: Backend, steps: Steps, flats: list[Any] | None = None
    ) -> None:
        wanted: list[tuple[int, str, tuple[int, ...]]] = []  # (node or -slot-1, key, shape)
        works: list[dict[str, Any]] = []
        sequences = topology.slot_sequences(steps.sequences)
        #: Per slot, its number of rows.
        self.rows = [steps.rows(flag) for flag in sequences]
        self.sequences = sequences
        for position, node in enumerate(topology.nodes):
            rows = self.rows[node.inputs[0]]
            if node.is_layer and node.op.time != "rows":
                shapes = node.op.sequence_work_shapes(steps.n, steps.t)
            elif node.is_layer:
                shapes = node.op.work_shapes(rows)
            else:
                widths = [topology.slot_widths[i] for i in node.inputs]
                shapes = node.op.work_shapes(rows, widths, node.width)
            work: dict[str, Any] = {}
            for key, shape in shapes.items():
                if isinstance(shape, tuple):
                    wanted.append((position, key, shape))
                else:
                    work[key] = shape  # an alias (resolved below) or plain data
            works.append(work)
        # Gradient arrays: one per slot that needs one, plus one per extra consumer of a slot
        # (its gradient is computed there, then added).
        uses: dict[int, int] = {}
        for node in topology.nodes:
            for i in node.inputs:
                if topology.needs_grad[i]:
                    uses[i] = uses.get(i, 0) + 1
        for slot, count in uses.items():
            for k in range(count):
                wanted.append((-1, f"d{slot}.{k}", (self.rows[slot], topology.slot_widths[slot])))
        n_inputs = len(topology.inputs)
        if backend.stages:  # device copies of the minibatch
            for i, (_, width) in enumerate(topology.inputs):
                wanted.append((-1, f"x{i}", (self.rows[i], width)))
                if steps.sequences[i]:
                    wanted.append((-1, f"m{i}", (steps.n, steps.t)))
            for k, index in enumerate(topology.outputs):
                out_rows = self.rows[topology.nodes[index].slot]
                wanted.append((-1, f"y{k}", (out_rows, topology.nodes[index].width)))
                wanted.append((-1, f"w{k}", (out_rows,)))
        sizes = [math.prod(shape) for _, _, shape in wanted]
        if (
            flats is None
            or len(flats) != len(sizes)
            or any(size > flat.shape[0] for size, flat in zip(sizes, flats, strict=False))
        ):
            flats = backend.carve([(size,) for size in sizes])
        #: The 1-D arrays the work arrays start; :attr:`t`: the time steps they were carved for.
        self.flats, self.t = flats, steps.t
        arrays = [
            backend.view(flat, 0, shape) for flat, (_, _, shape) in zip(flats, wanted, strict=True)
        ]
        extra: dict[str, Any] = {}
        for (position, key, _), array in zip(wanted, arrays, strict=True):
            (works[position] if position >= 0 else extra)[key] = array
        for work in works:
            for key, value in list(work.items()):
                if isinstance(value, str):
                    work[key] = work[value]
        self.works = works
        self.x = [extra.get(f"x{i}") for i in range(n_inputs)]
        self.m = [extra.get(f"m{i}") for i in range(n_inputs)]
        self.y = [extra.get(f"y{k}") for k in range(len(topology.outputs))]
        self.w = [extra.get(f"w{k}") for k in range(len(topology.outputs))]
        self.values: list[Any] = [None] * topology.num_slots

        # Backward: per node (reverse order), its d_out, the arrays its input gradients go to,
        # and the (slot gradient, partial) pairs to add afterwards.
        taken: dict[int, int] = {}
        steps = []
        for position in range(len(topology.nodes) - 1, -1, -1):
            node = topology.nodes[position]
            if not node.params and not topology.needs_grad[node.slot]:
                continue
            d_out = None if isinstance(node.op, Output) else extra[f"d{node.slot}.0"]
            d_ins, adds = [], []
            for i in node.inputs:
                if not topology.needs_grad[i]:
                    d_ins.append(None)
                    continue
                k = taken.get(i, 0)
                taken[i] = k + 1
                target = extra[f"d{i}.{k}"]
                d_ins.append(target)
                if k > 0:
                    adds.append((extra[f"d{i}.0"], target))
            steps.append((position, d_out, d_ins[0] if node.is_layer else d_ins, adds))
        self.backward_steps = steps


class Engine:
    """A topology's buffers and step on one backend.

    ``params`` and ``state`` are host arrays to start from; the CPU backend keeps them as its
    buffers (no copy), a device backend copies them.
    """

    def __init__(
        self, topology: Topology, backend: Backend, params: np.ndarray, state: np.ndarray
    ) -> None:
        self.topology = topology
        self.backend = backend
        self.params = backend.adopt(params)
        self.state = backend.adopt(state)
        self.grads = backend.zeros((topology.num_params,))
        self.param_views = self._views(self.params)
        self.grad_views = self._views(self.grads)
        self._workspaces: OrderedDict[tuple, _Workspace] = OrderedDict()
        #: Per (examples, input sequences), the workspace of the most time steps allocated:
        #: workspaces of fewer steps are views of its arrays (padded minibatches of sequences
        #: each have their own T_max).
        self._largest: OrderedDict[tuple, _Workspace] = OrderedDict()
        nodes = topology.nodes
        self._regularised = [i for i, n in enumerate(nodes) if n.is_layer and n.op.l2 > 0]
        #: Per node, whether its dropout seed must be computed (a layer with dropout).
        self._dropout = [n.is_layer and n.op.dropout > 0 for n in nodes]
        self._no_seeds = [0] * len(nodes) if not any(self._dropout) else None

    def seeds(self, seed: int, iteration: int, stream: int) -> list[int]:
        """Per node, its dropout seed for this step (0 where it has no dropout)."""
        if self._no_seeds is not None:
            return self._no_seeds
        return [
            dropout_seed(seed, iteration, stream, node.layer_index) if dropping else 0
            for node, dropping in zip(self.topology.nodes, self._dropout, strict=True)
        ]

    def _views(self, flat: Any) -> list[dict[str, Any]]:
        view = self.backend.view
        return [
            {name: view(flat, offset, shape) for name, (offset, shape) in node.params.items()}
            for node in self.topology.nodes
        ]

    def use_buffers(self, params: Any, state: Any | None) -> None:
        """Keep the parameters (and the updater state) in the given arrays of this backend
        from now on, their current values copied in."""
        self.backend.copy(params, self.params)
        self.params = params
        self.param_views = self._views(params)
        if state is not None:
            self.backend.copy(state, self.state)
            self.state = state

    def workspace(self, steps: Steps) -> _Workspace:
        """The work arrays for a minibatch laid out as ``steps``: kept for the last few
        layouts; for fewer time steps than the most seen with as many examples, views of
        that one's arrays (arrays are only reallocated when ``t`` grows)."""
        key = steps.key
        ws = self._workspaces.get(key)
        if ws is None:
            family = (steps.n, steps.sequences)
            largest = self._largest.get(family)
            if largest is not None and largest.t >= steps.t:
                ws = _Workspace(self.topology, self.backend, steps, largest.flats)
                self._largest.move_to_end(family)
            else:
                ws = self._largest[family] = _Workspace(self.topology, self.backend, steps)
                self._largest.move_to_end(family)
                for stale in [k for k in self._workspaces if (k[0], k[2]) == family]:
                    del self._workspaces[stale]  # views of the smaller arrays: let them go
                while len(self._largest) > _WORKSPACES_KEPT:
                    self._largest.popitem(last=False)
            self._workspaces[key] = ws
            while len(self._workspaces) > _WORKSPACES_KEPT:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(key)
        return ws

    def _steps(self, xs: Sequence[Any], steps: Steps | None) -> Steps:
        if steps is None:
            return Steps.rows_only(xs[0].shape[0], len(self.topology.inputs))
        return steps

    # -- the step ------------------------------------------------------------------------------

    def forward(
        self,
        ws: _Workspace,
        xs: Sequence[Any],
        seeds: list[int] | None,
        steps: Steps | None = None,
    ) -> None:
        """Run every node; ``seeds`` (from :meth:`seeds`) when training, None for inference;
        ``steps`` gives the sequences' layout and masks (None: rows only)."""
        backend, values = self.backend, ws.values
        for i, x in enumerate(xs):
            if x.shape[0] != ws.rows[i]:
                raise ValueError(
                    f"features[{i}] has {x.shape[0]} rows, expected {ws.rows[i]} (examples "
                    "times time steps for a sequence)"
                )
            values[i] = backend.stage(x, ws.x[i])
        masks = [None] * len(xs)
        if steps is not None:
            masks = [
                None if m is None or not steps.sequences[i] else backend.stage(m, ws.m[i])
                for i, m in enumerate(steps.masks)
            ]
        for k, (node, params, work) in enumerate(
            zip(self.topology.nodes, self.param_views, ws.works, strict=True)
        ):
            if node.is_layer and node.op.time != "rows":
                source = self.topology.mask_source[node.inputs[0]]
                work["mask"] = masks[source] if source >= 0 else None
            if node.is_layer:
                values[node.slot] = node.op.forward(
                    backend,
                    params,
                    values[node.inputs[0]],
                    work,
                    None if seeds is None else seeds[k],
                )
            else:
                values[node.slot] = node.op.forward(backend, [values[i] for i in node.inputs], work)

    def compute_gradients(
        self,
        xs: Sequence[Any],
        ys: Sequence[Any],
        weights: Sequence[Any],
        seeds: list[int],
        steps: Steps | None = None,
    ) -> float:
        """Fill :attr:`grads` for one minibatch (rows of every input, of every output's labels,
        and per output None or the per-row loss weights on the host; ``steps`` for sequences);
        returns the score: the sum over outputs of the mean (weighted) loss, plus the L2
        penalty."""
        backend, topology = self.backend, self.topology
        steps = self._steps(xs, steps)
        ws = self.workspace(steps)
        self.forward(ws, xs, seeds, steps)
        score = 0.0
        for k, index in enumerate(topology.outputs):
            node = topology.nodes[index]
            w = weights[k]
            rows = self._label_rows(ws, k, ys[k])
            divisor = float(rows if w is None else w.sum())
            loss = node.op.loss_gradient(
                backend,
                self.param_views[index],
                self.grad_views[index],
                ws.works[index],
                backend.stage(ys[k], ws.y[k]),
                self._stage_weights(w, ws.w[k]),
                1.0 / divisor if divisor > 0 else 0.0,
            )
            score += loss / divisor if divisor > 0 else 0.0
        for position, d_out, d_in, adds in ws.backward_steps:
            node = topology.nodes[position]
            if node.is_layer:
                node.op.backward(
                    backend,
                    self.param_views[position],
                    self.grad_views[position],
                    ws.works[position],
                    d_out,
                    d_in,
                    seeds[position],
                )
            else:
                node.op.backward(backend, ws.works[position], d_out, d_in)
            for total, part in adds:
                backend.add_into(total, part)
        return score + self.l2_penalty()

    def update(self, code: int, hyper: dict[str, float]) -> None:
        """The updater's step from :attr:`grads`."""
        self.backend.updater_step(code, self.params, self.grads, self.state, hyper)

    def l2_penalty(self) -> float:
        """The sum of the layers' L2 terms of the score."""
        penalty = 0.0
        for i in self._regularised:
            penalty += self.topology.nodes[i].op.l2_penalty(self.backend, self.param_views[i])
        return penalty

    # -- inference -----------------------------------------------------------------------------

    def infer(self, xs: Sequence[Any], steps: Steps | None = None) -> list[Any]:
        """The activations of every output for input rows ``xs`` (arrays of the workspace,
        valid until the next call)."""
        steps = self._steps(xs, steps)
        ws = self.workspace(steps)
        self.forward(ws, xs, None, steps)
        return [ws.values[self.topology.nodes[i].slot] for i in self.topology.outputs]

    def output_sequences(self, steps: Steps) -> list[bool]:
        """Per output, whether it gives a row per time step for inputs laid out as ``steps``."""
        flags = self.topology.slot_sequences(steps.sequences)
        return [flags[self.topology.nodes[i].slot] for i in self.topology.outputs]

    def _label_rows(self, ws: _Workspace, k: int, y: Any) -> int:
        """The rows of output ``k``; ValueError when labels ``y`` have another count."""
        node = self.topology.nodes[self.topology.outputs[k]]
        rows = ws.rows[node.slot]
        if y.shape[0] != rows:
            per = "time step of each example" if ws.sequences[node.slot] else "example"
            raise ValueError(
                f"the labels of {node.title} have {y.shape[0]} rows but it gives {rows}, one "
                f"per {per}"
            )
        return rows

    def loss_sums(
        self,
        xs: Sequence[Any],
        ys: Sequence[Any],
        weights: Sequence[Any],
        steps: Steps | None = None,
    ) -> list[float]:
        """Per output, the sum of the (weighted) loss terms over the rows (no L2)."""
        steps = self._steps(xs, steps)
        ws = self.workspace(steps)
        self.forward(ws, xs, None, steps)
        sums = []
        for k, index in enumerate(self.topology.outputs):
            node = self.topology.nodes[index]
            self._label_rows(ws, k, ys[k])
            y = self.backend.stage(ys[k], ws.y[k])
            w = self._stage_weights(weights[k], ws.w[k])
            sums.append(node.op.loss_sum(self.backend, ws.works[index], y, w))
        return sums

    def _stage_weights(self, w: np.ndarray | None, buffer: Any) -> Any:
        if w is None:
            return None
        if buffer is not None and w.shape != tuple(buffer.shape):
            return self.backend.from_host(w)  # [rows, 1] or [rows, k]: the kernel checks them
        return self.backend.stage(w, buffer)


def params_by_node(topology: Topology, flat: np.ndarray) -> list[Mapping[str, np.ndarray]]:
    """Host views of each node's parameters in the flat host array ``flat``."""
    return [
        {
            name: flat[offset : offset + math.prod(shape)].reshape(shape)
            for name, (offset, shape) in node.params.items()
        }
        for node in topology.nodes
    ]
