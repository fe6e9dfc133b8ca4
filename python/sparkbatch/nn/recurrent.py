"""Recurrent layers: :class:`LSTM`, :class:`RnnOutput` and :class:`LastTimeStep`.

A sequence minibatch ``[n, w, t]`` reaches a layer as rows ``[n * t, w]``, example-major (NOTE
[rows of a sequence] in :mod:`sparkbatch.nn.engine`), with its features mask ``[n, t]`` (1 a
real step, 0 padding, at the end or at the start of a sequence). At a masked step an LSTM
carries its ``h`` and ``c`` through unchanged and outputs 0, so padding contributes nothing to
the loss or to the gradients, wherever it lies.

NOTE [LSTM step layout]: an LSTM's step arrays are time-major, one contiguous ``[n, ...]`` block
per step, so that the per-step recurrent product ``h_{s-1} @ RW`` is one BLAS / cuBLAS call on
contiguous memory; the input projection ``x @ W`` of every step is one product over all rows
before the loop, and the native gate kernel reads it (and writes the output) example-major at
step ``s``. Backward runs the gate kernel and one product per step (``dgates_s @ RW.T``), then
accumulates ``dW``, ``dRW`` and the input gradient with one product each over the whole
sequence: the kernel stores the gates' gradients both time-major (for ``dRW``, against the
time-major ``h``) and example-major (for ``dW`` and ``d_in``, against the input rows).

Examples
--------
>>> import numpy as np
>>> from sparkbatch.data import DataSet
>>> from sparkbatch.nn import LSTM, Adam, LastTimeStep, Network, Output
>>> net = Network([LastTimeStep(LSTM(2, 8)), Output(8, 2)], Adam(0.02), seed=0)
>>> x = np.random.default_rng(0).normal(size=(32, 2, 6)).astype(np.float32)
>>> y = np.eye(2, dtype=np.float32)[(x[:, 0].sum(axis=1) > 0).astype(int)]
>>> net.output(x).shape
(32, 2)
>>> data = DataSet(x, y)
>>> before = net.score(data)
>>> net.fit(data, epochs=20).score(data) < before
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .functions import activation_code
from .layers import (
    WEIGHT_INITS,
    Layer,
    Output,
    Params,
    Work,
    fill_weights,
    layer_from_config,
    register_layer,
    set_count,
)

__all__ = ["LSTM", "RnnOutput", "LastTimeStep", "LSTM_ACTIVATIONS"]

#: The activations an LSTM takes, for its block input and cell output and for its gates: those
#: whose gradient its output gives (the gate kernel keeps only the activations).
LSTM_ACTIVATIONS = ("tanh", "sigmoid", "identity")


@dataclass(frozen=True)
class LSTM(Layer):
    """DL4J's LSTM without peepholes: sequences ``[n, n_in, t]`` in, ``[n, n_out, t]`` out.

    Parameters ``W [n_in, 4 * n_out]``, ``RW [n_out, 4 * n_out]`` and ``b [4 * n_out]``, the
    gate blocks in DL4J's order: block input (``activation``), forget gate, output gate,
    input gate (``gate_activation``)::

        a = activation(x W_a + h RW_a + b_a)    f, o, i = gate_activation(...)
        c_s = f * c_{s-1} + i * a               h_s = o * activation(c_s)

    The forget gate's bias starts at ``forget_gate_bias`` (DL4J's ``forgetGateBiasInit``, 1.0);
    the other biases at 0. ``weight_init``, ``l2`` (on ``W`` and ``RW``) and ``dropout`` (of the
    input) as for :class:`~sparkbatch.nn.Dense`. Masked steps carry ``h`` and ``c`` through and
    output 0.
    """

    n_in: int
    n_out: int
    activation: str = "tanh"
    gate_activation: str = "sigmoid"
    weight_init: str = "xavier"
    l2: float = 0.0
    dropout: float = 0.0
    forget_gate_bias: float = 1.0

    param_words: ClassVar[dict[str, str]] = {
        "W": "input weights",
        "RW": "recurrent weights",
        "b": "bias",
    }
    time: ClassVar[str] = "sequence"

    def __post_init__(self) -> None:
        name = type(self).__name__
        set_count(self, "n_in")
        set_count(self, "n_out")
        for field_name in ("activation", "gate_activation"):
            value = getattr(self, field_name)
            if value not in LSTM_ACTIVATIONS:
                raise ValueError(
                    f"{name}.{field_name} must be one of {', '.join(LSTM_ACTIVATIONS)}, "
                    f"got {value!r}"
                )
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(
                f"unknown weight_init {self.weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}"
            )
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"{name}.l2 must be >= 0, got {self.l2}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout}")
        if not math.isfinite(self.forget_gate_bias):
            raise ValueError(f"{name}.forget_gate_bias must be finite, got {self.forget_gate_bias}")
        object.__setattr__(self, "_act", activation_code(self.activation))
        object.__setattr__(self, "_gate", activation_code(self.gate_activation))

    # -- parameters ------------------------------------------------------------------------------

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        m = self.n_out
        return {"W": (self.n_in, 4 * m), "RW": (m, 4 * m), "b": (4 * m,)}

    def init_params(self, rng: np.random.Generator, params: dict[str, np.ndarray]) -> None:
        m = self.n_out
        fill_weights(rng, self.weight_init, params["W"], self.n_in, m)
        fill_weights(rng, self.weight_init, params["RW"], m, m)
        params["b"][m : 2 * m] = self.forget_gate_bias

    def l2_penalty(self, backend: Any, params: Params) -> float:
        if self.l2 > 0:
            squares = backend.sum_squares(params["W"]) + backend.sum_squares(params["RW"])
            return 0.5 * self.l2 * squares
        return 0.0

    # -- work arrays -------------------------------------------------------------------------------

    def work_shapes(self, rows: int) -> dict[str, Any]:
        raise ValueError(f"{type(self).__name__} needs sequences: see sequence_work_shapes")

    def sequence_work_shapes(self, n: int, t: int, *, outputs: bool = True) -> dict[str, Any]:
        """Flat step arrays (NOTE [LSTM step layout]); ``outputs=False`` when only the final
        state is read (:class:`LastTimeStep`)."""
        m, w = self.n_out, 4 * self.n_out
        shapes: dict[str, Any] = {
            "n": n,
            "t": t,
            "zx": (n * t, w),
            "gates": (t * n * w,),
            "c": (t * n * m,),
            "h": ((t + 1) * n * m,),  # h[s] enters step s; h[t] is the final state
            "dgates": (t * n * w,),
            "dgates_seq": (n * t, w),
            "dh_rec": (n, m),
            "dh_carry": (n, m),
            "dc": (n, m),
        }
        if outputs:
            shapes["out"] = (n * t, m)
        if self.dropout > 0:
            shapes["dropped"] = (n * t, self.n_in)
        return shapes

    def _steps(self, backend: Any, work: Work) -> dict[str, list[Any]]:
        """Per-step views of the flat step arrays, made once per workspace."""
        views = work.get("views")
        if views is None:
            n, t, m = work["n"], work["t"], self.n_out
            w = 4 * m
            view = backend.view
            views = {
                "gates": [view(work["gates"], s * n * w, (n, w)) for s in range(t)],
                "dgates": [view(work["dgates"], s * n * w, (n, w)) for s in range(t)],
                "c": [view(work["c"], s * n * m, (n, m)) for s in range(t)],
                "h": [view(work["h"], s * n * m, (n, m)) for s in range(t + 1)],
                "h_all": [view(work["h"], 0, (t * n, m))],
                "dgates_all": [view(work["dgates"], 0, (t * n, w))],
            }
            work["views"] = views
        return views

    # -- the passes --------------------------------------------------------------------------------

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        if seed is not None and self.dropout > 0:
            dropped = work["dropped"]
            backend.copy(dropped, x)
            backend.dropout(dropped, self.dropout, seed)
            x = dropped
        work["x"] = x
        t, mask = work["t"], work.get("mask")
        views = self._steps(backend, work)
        gates, c, h = views["gates"], views["c"], views["h"]
        zx, out = work["zx"], work.get("out")
        rw, bias = params["RW"], params["b"]
        backend.matmul(x, params["W"], zx)
        backend.zero(h[0])
        step = backend.lstm_forward_step
        act, gate = self._act, self._gate
        for s in range(t):
            if s == 0:
                backend.zero(gates[0])
                step(gates[0], zx, bias, mask, None, None, c[0], h[1], out, t, 0, act, gate)
            else:
                backend.matmul(h[s], rw, gates[s])
                step(gates[s], zx, bias, mask, c[s - 1], h[s], c[s], h[s + 1], out, t, s, act, gate)
        return out if out is not None else h[t]

    def final_state(self, backend: Any, work: Work) -> Any:
        """After :meth:`forward`: ``h`` after the last step ``[n, n_out]``: the output at each
        example's last unmasked step (masked steps carry it through), 0 where none is."""
        return self._steps(backend, work)["h"][work["t"]]

    def backward(
        self,
        backend: Any,
        params: Params,
        grads: Params,
        work: Work,
        d_out: Any,
        d_in: Any,
        seed: int | None,
    ) -> None:
        """Backward from the outputs' gradient ``d_out [n * t, n_out]``."""
        self.backward_sequence(backend, params, grads, work, d_out, None, d_in, seed)

    def backward_sequence(
        self,
        backend: Any,
        params: Params,
        grads: Params,
        work: Work,
        d_out: Any,
        d_final: Any,
        d_in: Any,
        seed: int | None,
    ) -> None:
        """Backward from ``d_out`` (the outputs' gradient ``[n * t, n_out]``, or None) and
        ``d_final`` (the final state's gradient ``[n, n_out]``, or None)."""
        t, mask = work["t"], work.get("mask")
        views = self._steps(backend, work)
        gates, dgates, c = views["gates"], views["dgates"], views["c"]
        dgates_seq, dh_rec = work["dgates_seq"], work["dh_rec"]
        dh_carry, dc = work["dh_carry"], work["dc"]
        rw = params["RW"]
        backend.zero(dc)
        if d_final is not None:
            backend.copy(dh_carry, d_final)
        else:
            backend.zero(dh_carry)
        step = backend.lstm_backward_step
        act, gate = self._act, self._gate
        for s in range(t - 1, -1, -1):
            step(
                gates[s],
                c[s],
                c[s - 1] if s > 0 else None,
                mask,
                d_out,
                dh_rec if s < t - 1 else None,
                dh_carry,
                dc,
                dgates[s],
                dgates_seq,
                t,
                s,
                act,
                gate,
            )
            if s > 0:
                backend.matmul(dgates[s], rw, dh_rec, trans_b=True)
        # The whole sequence at once: dRW from the time-major h entering each step, dW, db and
        # the input's gradient from the example-major copy of the gates' gradients.
        backend.matmul(views["h_all"][0], views["dgates_all"][0], grads["RW"], trans_a=True)
        backend.matmul(work["x"], dgates_seq, grads["W"], trans_a=True)
        backend.column_sums(dgates_seq, grads["b"])
        if self.l2 > 0:
            backend.axpy(grads["W"], params["W"], self.l2)
            backend.axpy(grads["RW"], params["RW"], self.l2)
        if d_in is not None:
            backend.matmul(dgates_seq, params["W"], d_in, trans_b=True)
            if self.dropout > 0:
                backend.dropout(d_in, self.dropout, seed)

    def to_config(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "activation": self.activation,
            "gate_activation": self.gate_activation,
            "weight_init": self.weight_init,
            "l2": self.l2,
            "dropout": self.dropout,
            "forget_gate_bias": self.forget_gate_bias,
        }


@dataclass(frozen=True)
class RnnOutput(Output):
    """An output layer with a loss at every time step, weighted by the labels mask ``[n, t]``
    (a masked step contributes nothing), or without one by the features mask of the input its
    sequence comes from: DL4J's ``RnnOutputLayer``. Labels are ``[n, n_out, t]``.

    It refuses input that is not a sequence (features ``[n, width]``, or the output of
    :class:`LastTimeStep`); use :class:`~sparkbatch.nn.Output` there.
    """

    time: ClassVar[str] = "sequence"


@dataclass(frozen=True, init=False)
class LastTimeStep(Layer):
    """Many-to-one: the wrapped recurrent layer's output at each example's last unmasked step,
    ``[n, n_out]`` (DL4J's ``LastTimeStep``): step ``t - 1`` for padding at the start
    (``align_end``), ``t_i - 1`` for padding at the end (``align_start``). The layers after it
    see one row per example, and their labels are ``[n, k]``."""

    layer: LSTM

    time: ClassVar[str] = "last_step"
    param_words: ClassVar[dict[str, str]] = LSTM.param_words

    def __init__(self, layer: LSTM | dict[str, Any]) -> None:
        if isinstance(layer, dict):  # from a configuration
            layer = layer_from_config(layer)
        if not isinstance(layer, LSTM):
            raise TypeError(
                f"LastTimeStep wraps a recurrent layer (LSTM), got {type(layer).__name__}"
            )
        object.__setattr__(self, "layer", layer)

    @property
    def n_in(self) -> int:  # type: ignore[override]
        return self.layer.n_in

    @property
    def n_out(self) -> int:  # type: ignore[override]
        return self.layer.n_out

    @property
    def l2(self) -> float:  # type: ignore[override]
        return self.layer.l2

    @property
    def dropout(self) -> float:  # type: ignore[override]
        return self.layer.dropout

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.layer.param_shapes()

    def init_params(self, rng: np.random.Generator, params: dict[str, np.ndarray]) -> None:
        self.layer.init_params(rng, params)

    def l2_penalty(self, backend: Any, params: Params) -> float:
        return self.layer.l2_penalty(backend, params)

    def work_shapes(self, rows: int) -> dict[str, Any]:
        return self.layer.work_shapes(rows)

    def sequence_work_shapes(self, n: int, t: int) -> dict[str, Any]:
        return self.layer.sequence_work_shapes(n, t, outputs=False)

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        self.layer.forward(backend, params, x, work, seed)
        return self.layer.final_state(backend, work)

    def backward(
        self,
        backend: Any,
        params: Params,
        grads: Params,
        work: Work,
        d_out: Any,
        d_in: Any,
        seed: int | None,
    ) -> None:
        """Backward from the gradient of the last real steps' outputs ``d_out [n, n_out]``."""
        self.layer.backward_sequence(backend, params, grads, work, None, d_out, d_in, seed)

    def to_config(self) -> dict[str, Any]:
        return {"type": "LastTimeStep", "layer": self.layer.to_config()}


for _cls in (LSTM, RnnOutput, LastTimeStep):
    register_layer(_cls)
