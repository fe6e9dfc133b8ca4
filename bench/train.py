"""Time per training step of the built-in network against PyTorch and plain numpy, same run.

The first model is a 784-256-128-10 ReLU MLP with softmax cross-entropy, batch 128, Adam(1e-3),
in float32. All three start from the same weights and fit the same minibatches, and the script
checks that their first losses agree before it times anything. The alternatives:

* PyTorch on the CPU with the same number of threads (``torch.set_num_threads``), its default
  Adam and also the fused CPU Adam (``fused=True``) a speed-minded user would pick;
* numpy without fused kernels: the same arithmetic in whole-array numpy expressions.

The second is a ``Graph`` with two inputs and two outputs against the same model in PyTorch
(``torch.cat`` for the Merge vertex), same batch, updater and dtype::

    a (256) -> Dense 256 relu --+
                                 +-> Merge (384) -> Dense 128 relu -+-> Output "class" 10, softmax
    b (64)  -> Dense 128 relu --+                                   |   cross-entropy
                                                                    +-> Output "value" 1, identity
                                                                        mean squared error

One vertex feeds both outputs, so its gradient is the sum of theirs. sparkbatch's score is the
sum of the outputs' mean losses, which in PyTorch is ``CrossEntropyLoss() + MSELoss()`` (MSE
averages over the outputs and the examples in both). Both start from sparkbatch's initial
weights and fit the same minibatches, and the script checks that their losses agree on the first
two steps (the second after one update, so the gradients and Adam agree too) before timing.

Run (unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE in this command only, see the env notes)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/train.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import blas_info, torch_mlp, versions  # noqa: E402

sys.path.pop(0)

from sparkbatch.data import DataSet, MultiDataSet  # noqa: E402
from sparkbatch.nn import Adam, Dense, Graph, Merge, Network, Output  # noqa: E402

SIZES = (784, 256, 128, 10)
#: The graph's widths: inputs "a" and "b", their Dense layers, the one after the Merge, and
#: the outputs "class" (softmax cross-entropy) and "value" (identity, mean squared error).
A, B, HIDDEN_A, HIDDEN_B, HIDDEN, CLASSES, VALUES = 256, 64, 256, 128, 128, 10, 1


def make_network() -> Network:
    layers = [Dense(SIZES[i], SIZES[i + 1], "relu") for i in range(len(SIZES) - 2)]
    layers.append(Output(SIZES[-2], SIZES[-1], "softmax", "cross_entropy"))
    return Network(layers, Adam(1e-3), seed=0)


class NumpyMLP:
    """The same network and Adam in plain numpy expressions (what one writes without kernels)."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray]) -> None:
        self.params = [w.copy() for w in weights] + [b.copy() for b in biases]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0
        self.layers = len(weights)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        ws, bs = self.params[: self.layers], self.params[self.layers :]
        activations = [x]
        for i in range(self.layers - 1):
            activations.append(np.maximum(activations[-1] @ ws[i] + bs[i], 0))
        logits = activations[-1] @ ws[-1] + bs[-1]
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probs = exp / exp.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = float(-(y * np.log(probs + 1e-30)).sum() / n)
        dz = (probs - y) / n
        grads_w, grads_b = [None] * self.layers, [None] * self.layers
        for i in range(self.layers - 1, -1, -1):
            grads_w[i] = activations[i].T @ dz
            grads_b[i] = dz.sum(axis=0)
            if i:
                dz = (dz @ ws[i].T) * (activations[i] > 0)
        self.t += 1
        b1, b2, lr, eps = 0.9, 0.999, 1e-3, 1e-8
        step = lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(self.params, grads_w + grads_b, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= step * m / (np.sqrt(v) + eps)
        return loss


def torch_step_fn(net: Network, x: np.ndarray, labels: np.ndarray, fused: bool, threads: int):
    import torch

    torch.set_num_threads(threads)
    model = torch_mlp(torch, net)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs = torch.from_numpy(x)
    ys = torch.from_numpy(labels.astype(np.int64))

    def step(begin: int, end: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xs[begin:end]), ys[begin:end])
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step, torch.__version__


def per_step(step: Callable[[int], object], steps: int, repeat: int) -> float:
    """Best over ``repeat`` runs of the mean time of ``steps`` consecutive steps, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def make_graph() -> Graph:
    return Graph(
        ["a", "b"],
        {
            "da": (Dense(A, HIDDEN_A, "relu"), "a"),
            "db": (Dense(B, HIDDEN_B, "relu"), "b"),
            "merge": (Merge(), "da", "db"),
            "hidden": (Dense(HIDDEN_A + HIDDEN_B, HIDDEN, "relu"), "merge"),
            "class": (Output(HIDDEN, CLASSES, "softmax", "cross_entropy"), "hidden"),
            "value": (Output(HIDDEN, VALUES, "identity", "mse"), "hidden"),
        },
        ["class", "value"],
        Adam(1e-3),
        seed=0,
    )


def torch_graph_step_fn(
    graph: Graph, a: np.ndarray, b: np.ndarray, labels: np.ndarray, values: np.ndarray, fused: bool
):
    """The graph's model in PyTorch with its initial weights, and one training step of it."""
    import torch

    def linear(name: str) -> torch.nn.Linear:
        params = graph.layer_params(name)  # W is [n_in, n_out], Linear.weight [n_out, n_in]
        layer = torch.nn.Linear(*params["W"].shape)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(params["W"].T.copy()))
            layer.bias.copy_(torch.from_numpy(params["b"].copy()))
        return layer

    class TwoInTwoOut(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.da, self.db, self.hidden = linear("da"), linear("db"), linear("hidden")
            self.cls, self.value = linear("class"), linear("value")

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            merged = torch.cat([torch.relu(self.da(a)), torch.relu(self.db(b))], dim=1)
            h = torch.relu(self.hidden(merged))
            return self.cls(h), self.value(h)

    model = TwoInTwoOut()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    cross_entropy, mse = torch.nn.CrossEntropyLoss(), torch.nn.MSELoss()
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tl, tv = torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(values)

    def step(begin: int, end: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        logits, value = model(ta[begin:end], tb[begin:end])
        loss = cross_entropy(logits, tl[begin:end]) + mse(value, tv[begin:end])
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step, torch.__version__


def check_losses(losses: dict[str, list[float]], reference: str) -> None:
    """SystemExit unless every implementation's losses agree with ``reference``'s."""
    for name, values in losses.items():
        for k, (loss, ours) in enumerate(zip(values, losses[reference], strict=True)):
            if abs(loss - ours) > 1e-4 * max(1.0, abs(ours)):
                raise SystemExit(f"loss {k + 1} of {name} is {loss}, {reference}'s {ours}")


def best_times(runners: dict[str, Callable[[int], object]], steps: int, repeat: int):
    """Per runner, the best of ``repeat`` interleaved runs of ``steps`` steps, in seconds."""
    for run in runners.values():  # warm up: work arrays, thread pools, caches
        for i in range(10):
            run(i)
    times = {name: [] for name in runners}
    for _ in range(repeat):  # interleaved, so drift on a shared machine hits all alike
        for name, run in runners.items():
            times[name].append(per_step(run, steps, 1))
    return {name: min(values) for name, values in times.items()}


def print_table(best: dict[str, float]) -> None:
    print("| implementation | ms per step | steps/s | sparkbatch speed-up |")
    print("|---|---:|---:|---:|")
    ours = best["sparkbatch"]
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e3:.3f} | {1 / seconds:,.0f} | {seconds / ours:.2f}× |")


def mlp_benchmark(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    n = args.batch * args.batches
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    labels = rng.integers(0, SIZES[-1], n)
    y = np.eye(SIZES[-1], dtype=np.float32)[labels]
    batches = DataSet(x, y).split(args.batch)
    bounds = [(i * args.batch, (i + 1) * args.batch) for i in range(args.batches)]

    net = make_network()
    weights = [net.weights(i)[0] for i in range(len(SIZES) - 1)]
    biases = [net.weights(i)[1] for i in range(len(SIZES) - 1)]
    plain = NumpyMLP(weights, biases)
    runners: dict[str, Callable[[int], object]] = {}
    first_losses = {}
    try:
        for fused in (False, True):
            step, torch_version = torch_step_fn(net, x, labels, fused, args.threads)
            name = f"PyTorch {torch_version} Adam" + (" (fused=True)" if fused else "")
            first_losses[name] = step(*bounds[0])
            runners[name] = lambda i, step=step: step(*bounds[i % args.batches])
    except ImportError:
        print("PyTorch is not installed (pip install torch): its rows are skipped")
    first_losses["numpy (no fused kernels)"] = plain.step(x[: args.batch], y[: args.batch])
    runners["numpy (no fused kernels)"] = lambda i: plain.step(
        x[bounds[i % args.batches][0] : bounds[i % args.batches][1]],
        y[bounds[i % args.batches][0] : bounds[i % args.batches][1]],
    )
    first_losses["sparkbatch"] = net.fit_batch(batches[0])
    runners = {"sparkbatch": lambda i: net.fit_batch(batches[i % args.batches]), **runners}

    reference = first_losses["sparkbatch"]
    for name, loss in first_losses.items():
        if abs(loss - reference) > 1e-4 * max(1.0, abs(reference)):
            raise SystemExit(f"first loss of {name} is {loss}, sparkbatch's {reference}")

    best = best_times(runners, args.steps, args.repeat)
    print(
        f"MLP {'-'.join(map(str, SIZES))}, ReLU, softmax cross-entropy, batch {args.batch}, "
        f"Adam, float32, {args.threads} threads; {blas_info()}"
    )
    print(
        f"first-step loss {reference:.6f} in every implementation; best of {args.repeat} runs "
        f"of {args.steps} steps"
    )
    print()
    print_table(best)


def graph_benchmark(args: argparse.Namespace) -> None:
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed (pip install torch): the graph benchmark is skipped")
        return
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    n = args.batch * args.batches
    a = rng.normal(size=(n, A)).astype(np.float32)
    b = rng.normal(size=(n, B)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    classes = np.eye(CLASSES, dtype=np.float32)[labels]
    values = rng.normal(size=(n, VALUES)).astype(np.float32)
    batches = MultiDataSet([a, b], [classes, values]).split(args.batch)
    bounds = [(i * args.batch, (i + 1) * args.batch) for i in range(args.batches)]

    graph = make_graph()
    runners: dict[str, Callable[[int], object]] = {}
    losses: dict[str, list[float]] = {}
    for fused in (False, True):  # built before sparkbatch's first step: the same weights
        step, torch_version = torch_graph_step_fn(graph, a, b, labels, values, fused)
        name = f"PyTorch {torch_version} Adam" + (" (fused=True)" if fused else "")
        losses[name] = [step(*bounds[0]), step(*bounds[1])]
        runners[name] = lambda i, step=step: step(*bounds[i % args.batches])
    losses["sparkbatch"] = [graph.fit_batch(batches[0]), graph.fit_batch(batches[1])]
    runners = {"sparkbatch": lambda i: graph.fit_batch(batches[i % args.batches]), **runners}
    check_losses(losses, "sparkbatch")

    best = best_times(runners, args.steps, args.repeat)
    first, second = losses["sparkbatch"]
    print(
        f"Graph: inputs a ({A}) -> Dense {HIDDEN_A} relu and b ({B}) -> Dense {HIDDEN_B} relu, "
        f"Merge ({HIDDEN_A + HIDDEN_B}) -> Dense {HIDDEN} relu -> Output {CLASSES} softmax "
        f"cross-entropy + Output {VALUES} identity MSE ({graph.num_params:,} parameters), "
        f"batch {args.batch}, Adam, float32, {args.threads} threads; PyTorch: torch.cat, "
        "CrossEntropyLoss() + MSELoss()"
    )
    print(
        f"losses of the first two steps {first:.6f}, {second:.6f} in every implementation; "
        f"best of {args.repeat} runs of {args.steps} steps"
    )
    print()
    print_table(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=32, help="distinct minibatches cycled")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed run")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-mlp", action="store_true", help="only the graph benchmark")
    parser.add_argument("--skip-graph", action="store_true", help="only the MLP benchmark")
    args = parser.parse_args()
    print("versions:", versions("sparkbatch", "numpy", "torch"))

    if not args.skip_mlp:
        mlp_benchmark(args)
    if not args.skip_graph:
        if not args.skip_mlp:
            print()
        graph_benchmark(args)


if __name__ == "__main__":
    main()
