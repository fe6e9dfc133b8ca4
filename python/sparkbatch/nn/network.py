"""The built-in network: a stack of layers on one flat parameter buffer.

Every layer's weights and bias are views into one contiguous buffer, and so are the gradients and
the updater's state, so that parameter averaging is one pass over memory and ``params()`` hands
out the buffer itself. A network is the chain case of :class:`~sparkbatch.nn.Graph`: both run
on the :class:`~sparkbatch.nn.engine.Engine`, whose step is the backend's matrix products (numpy's
BLAS or cuBLAS) and one fused kernel for everything else (bias + activation; activation gradient
+ bias gradient; the output layer's activation, loss and gradient; the updater), with
preallocated work arrays per batch size, so a step allocates nothing.

Sequences ``[n, f, t]`` (DL4J's layout) are fitted step by step, as DL4J's feed-forward layers do
with a time-series preprocessor: every time step is a row, and the label mask ``[n, t]`` weighs
each row's loss (0 drops a padded step). Recurrent layers (:class:`~sparkbatch.nn.LSTM`,
:class:`~sparkbatch.nn.RnnOutput`, :class:`~sparkbatch.nn.LastTimeStep`) read whole sequences
with their features mask ``[n, t]``: see ``docs/recurrent.md``.

Examples
--------
>>> import numpy as np
>>> from sparkbatch.data import DataSet
>>> from sparkbatch.nn import Adam, Dense, Network, Output
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(256, 4)).astype(np.float32)
>>> y = np.eye(2, dtype=np.float32)[(x[:, 0] + x[:, 1] > 0).astype(int)]
>>> net = Network([Dense(4, 16, "relu"), Output(16, 2, "softmax", "cross_entropy")],
...               Adam(0.01), seed=1)
>>> _ = net.fit(DataSet(x, y), epochs=30, batch_size=32)
>>> net.evaluate(DataSet(x, y)).accuracy() > 0.95
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._arguments import check_optional_int
from ..data import DataSet, MultiDataSet
from ..evaluation import Evaluation, RegressionEvaluation
from .conv import is_spatial, resolve_sizes
from .engine import Node, Topology
from .flat_model import (
    FlatModel,
    Rows,
    image_rows,
    label_rows,
    last_step_labels,
    rows,
    sequence_steps,
    unrows,
)
from .layers import Layer, Output, layer_from_config
from .updaters import Updater, updater_from_config

__all__ = ["Network"]


class Network(FlatModel):
    """A stack of layers (:class:`~sparkbatch.nn.Dense`, :class:`~sparkbatch.nn.LSTM`,
    :class:`~sparkbatch.nn.LastTimeStep`) and one :class:`~sparkbatch.nn.Output` (or
    :class:`~sparkbatch.nn.RnnOutput`) layer, trained by ``updater``.

    Parameters
    ----------
    layers : sequence of layers, ending with one Output (or RnnOutput)
        ``layers[i].n_out`` must equal ``layers[i + 1].n_in``. A spatial layer
        (:class:`~sparkbatch.nn.Conv2D`, :class:`~sparkbatch.nn.MaxPool2D`, ...) without
        ``input_size`` takes the output shape of the spatial layer before it; a network whose
        first layer is spatial takes features ``[n, c, h, w]`` (``docs/convolution.md``).
    updater : Updater, default Adam(1e-3)
        How gradients become steps.
    seed : int
        Seeds the weight initialisation and the dropout masks.
    dtype : "float32" or "float64"
        Of parameters and arithmetic; float64 serves gradient checks.
    device : "cpu", "cuda" or "cuda:N"
        Where the parameters live and the arithmetic runs.
    """

    KIND = "Network"
    CONFIG_FORMAT = "sparkbatch.nn.Network"
    CONFIG_VERSION = 1

    def __init__(
        self,
        layers: Sequence[Layer],
        updater: Updater | None = None,
        *,
        seed: int = 0,
        dtype: str | np.dtype = "float32",
        device: str | int = "cpu",
    ) -> None:
        self.layers: tuple[Layer, ...] = resolve_sizes(tuple(layers))
        _check_layers(self.layers)
        self._setup(_chain(self.layers), updater, seed, dtype, device)

    @property
    def num_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def num_outputs(self) -> int:
        return self.layers[-1].n_out

    def weights(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Views ``(W [n_in, n_out], b [n_out])`` of layer ``layer`` in the parameter buffer
        (of a host copy on a GPU network)."""
        node = self._topology.nodes[layer]
        flat = self.params()
        views = []
        for name in ("W", "b"):
            offset, shape = node.params[name]
            views.append(flat[offset : offset + int(np.prod(shape))].reshape(shape))
        return views[0], views[1]

    # -- inference ---------------------------------------------------------------------------

    def output(
        self,
        features: Any,
        *,
        features_mask: Any = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The output layer's activations for ``features`` ``[n, n_in]`` (or ``[n, n_in, t]``,
        with its ``features_mask`` ``[n, t]`` for recurrent layers; or images ``[n, c, h, w]``
        when the first layer is spatial).

        Returns a new array ``[n, n_out]`` (``[n, n_out, t]`` for sequences, unless a
        :class:`~sparkbatch.nn.LastTimeStep` ends them).
        """
        step = check_optional_int("batch_size", batch_size) or self._inference_rows()
        x = np.asarray(features)
        xs = [self._feature_rows(x)]
        steps = sequence_steps([x], [features_mask], self.dtype)
        out = self._outputs(xs, steps, step)[0]
        if self._engine.output_sequences(steps)[0]:
            return unrows(out, (x.shape[0], out.shape[1], steps.t))
        return out

    def evaluate(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        *,
        top_n: int = 1,
        labels: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> Evaluation:
        """Classification figures over ``data`` (accuracy, precision, recall, F1, confusion)."""
        evaluation = Evaluation(self.num_outputs, labels=labels, top_n=top_n)
        return self._evaluated(evaluation, data, batch_size, 0)

    def evaluate_regression(
        self,
        data: DataSet | MultiDataSet | Iterable[DataSet | MultiDataSet],
        *,
        column_names: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> RegressionEvaluation:
        """Regression figures per output column over ``data`` (MSE, MAE, RMSE, R²)."""
        evaluation = RegressionEvaluation(self.num_outputs, column_names=column_names)
        return self._evaluated(evaluation, data, batch_size, 0)

    def _labelled_output(self, batch: Any, output_index: int) -> tuple[Any, np.ndarray, Any]:
        ds = _as_dataset(batch)
        predicted = self.output(ds.features, features_mask=ds.features_mask)
        labels = ds.labels
        mask = self._labels_mask(0, ds.labels_mask, [ds.features_mask], labels)
        if labels is not None and np.ndim(labels) == 3 and predicted.ndim == 2:
            labels, predicted = last_step_labels(labels, mask, predicted, self.dtype)
            mask = None
        return labels, predicted, mask

    # -- configuration -----------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """The architecture and training configuration as JSON-able data (no parameters)."""
        return {
            "format": self.CONFIG_FORMAT,
            "version": self.CONFIG_VERSION,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "layers": [layer.to_config() for layer in self.layers],
            "updater": self.updater.to_config(),
        }

    @classmethod
    def _from_checked_config(cls, config: Mapping[str, Any]) -> Network:
        return cls(
            [layer_from_config(layer) for layer in config["layers"]],
            updater_from_config(config["updater"]),
            seed=config.get("seed", 0),
            dtype=config.get("dtype", "float32"),
        )

    def __repr__(self) -> str:
        sizes = [self.layers[0].n_in] + [layer.n_out for layer in self.layers]
        return (
            f"Network({'-'.join(map(str, sizes))}, {self.num_params} params, "
            f"{type(self.updater).__name__}, {self.dtype.name})"
        )

    def _feature_rows(self, features: Any) -> np.ndarray:
        """Features as rows: images ``[n, c, h, w]`` (or their rows) for a network whose
        first layer is spatial, else ``[n, n_in]`` or sequences ``[n, n_in, t]``."""
        first = self.layers[0]
        if is_spatial(first):
            return image_rows(features, "features", first.input_shape, self.dtype)
        return rows(features, "features", self.num_inputs, self.dtype)

    def _batch_rows(self, batch: DataSet | MultiDataSet) -> Rows:
        ds = _as_dataset(batch)
        x = self._feature_rows(ds.features)
        if ds.labels is None:
            raise ValueError("the minibatch has no labels to fit or score against")
        steps = sequence_steps([ds.features], [ds.features_mask], self.dtype)
        y, w = label_rows(
            ds.labels,
            self._labels_mask(0, ds.labels_mask, [ds.features_mask], ds.labels),
            "labels",
            self.num_outputs,
            self.dtype,
            self._engine.output_sequences(steps)[0],
            steps.sequences[0],
        )
        return [x], [y], [w], steps


def _check_layers(layers: Sequence[Layer]) -> None:
    if not layers or not isinstance(layers[-1], Output):
        raise ValueError("a Network needs at least an Output layer, and it must come last")
    for i, layer in enumerate(layers[:-1]):
        if not isinstance(layer, Layer) or isinstance(layer, Output):
            raise TypeError(f"layer {i} is a {type(layer).__name__}; only the last may be Output")
    for i in range(len(layers) - 1):
        if layers[i].n_out != layers[i + 1].n_in:
            raise ValueError(
                f"layer {i} has n_out={layers[i].n_out} but layer {i + 1} has "
                f"n_in={layers[i + 1].n_in}"
            )


def _chain(layers: Sequence[Layer]) -> Topology:
    """The topology of a stack: one input, layer i reads layer i - 1, the last is the output."""
    nodes = [
        Node(str(i), layer, (i,), i + 1, layer.n_out, title=f"layer {i}")
        for i, layer in enumerate(layers)
    ]
    return Topology([("input", layers[0].n_in)], nodes, [len(nodes) - 1], range(len(nodes)))


def _as_dataset(batch: DataSet | MultiDataSet) -> DataSet:
    if isinstance(batch, DataSet):
        return batch
    if isinstance(batch, MultiDataSet):
        try:
            return batch.to_dataset()
        except ValueError as e:
            raise ValueError(f"the built-in network has one input and one output: {e}") from None
    raise TypeError(f"expected a DataSet or MultiDataSet minibatch, got {type(batch).__name__}")
