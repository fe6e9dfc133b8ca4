"""Time per training step of the built-in network against PyTorch and plain numpy, same run.

The model is a 784-256-128-10 ReLU MLP with softmax cross-entropy, batch 128, Adam(1e-3), in
float32. All three start from the same weights and fit the same minibatches, and the script
checks that their first losses agree before it times anything. The alternatives:

* PyTorch on the CPU with the same number of threads (``torch.set_num_threads``), its default
  Adam and also the fused CPU Adam (``fused=True``) a speed-minded user would pick;
* numpy without fused kernels: the same arithmetic in whole-array numpy expressions.

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

from sparkbatch.data import DataSet  # noqa: E402
from sparkbatch.nn import Adam, Dense, Network, Output  # noqa: E402

SIZES = (784, 256, 128, 10)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=32, help="distinct minibatches cycled")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed run")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print("versions:", versions("sparkbatch", "numpy", "torch"))

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
        print("PyTorch is not installed (pip install torch==2.13.0): its rows are skipped")
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

    for run in runners.values():  # warm up: work arrays, thread pools, caches
        for i in range(10):
            run(i)
    times = {name: [] for name in runners}
    for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits all alike
        for name, run in runners.items():
            times[name].append(per_step(run, args.steps, 1))
    best = {name: min(values) for name, values in times.items()}

    print(
        f"MLP {'-'.join(map(str, SIZES))}, ReLU, softmax cross-entropy, batch {args.batch}, "
        f"Adam, float32, {args.threads} threads; {blas_info()}"
    )
    print(
        f"first-step loss {reference:.6f} in every implementation; best of {args.repeat} runs "
        f"of {args.steps} steps"
    )
    print()
    print("| implementation | ms per step | steps/s | sparkbatch speed-up |")
    print("|---|---:|---:|---:|")
    ours = best["sparkbatch"]
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e3:.3f} | {1 / seconds:,.0f} | {seconds / ours:.2f}× |")


if __name__ == "__main__":
    main()
