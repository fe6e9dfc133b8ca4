"""Time per training step of the built-in LSTM against ``torch.nn.LSTM``, same run, same threads.

The model: sequences of 64 features over 50 steps, batch 64, an LSTM of 128 units (tanh, sigmoid
gates), its last step (``LastTimeStep``) into a 10-class softmax output with cross-entropy, Adam
(1e-3), float32. PyTorch runs ``torch.nn.LSTM(batch_first=True)``, the last step into a
``Linear``, ``cross_entropy``, ``backward()`` and ``Adam.step()`` (its default, and the fused CPU
Adam). Both start from sparkbatch's initial weights (PyTorch's gate order i, f, g, o is a
permutation of DL4J's block input, forget, output, input) and fit the same minibatches; the
script checks that the losses of the first two steps agree before it times anything.

Threads: PyTorch gets ``torch.set_num_threads(threads)``; numpy's BLAS is limited to ``threads``
through threadpoolctl, and sparkbatch's own pool reads ``SPARKBATCH_NUM_THREADS`` (set here
before sparkbatch is imported, when run as a script).

Run (unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE in this command only, see the env notes)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/lstm.py

Another benchmark calls :func:`run` and reads its dict.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

BATCH, STEPS, FEATURES, UNITS, CLASSES = 64, 50, 64, 128, 10


def make_network(seed: int = 0) -> Any:
    """The sparkbatch model: LastTimeStep(LSTM(64, 128)) -> Output(128, 10)."""
    from sparkbatch.nn import LSTM, Adam, LastTimeStep, Network, Output

    return Network(
        [LastTimeStep(LSTM(FEATURES, UNITS)), Output(UNITS, CLASSES, "softmax", "cross_entropy")],
        Adam(1e-3),
        seed=seed,
    )


def torch_model(torch: Any, net: Any, fused: bool) -> tuple[Any, Any, Any]:
    """``(lstm, linear, optimizer)`` in PyTorch holding ``net``'s weights."""
    params = net.params()
    topology = net._topology
    views = {}
    for node in topology.nodes:
        for name, (offset, shape) in node.params.items():
            views[(node.layer_index, name)] = params[offset : offset + int(np.prod(shape))].reshape(
                shape
            )
    m = UNITS
    blocks = [np.arange(k * m, (k + 1) * m) for k in range(4)]  # a, f, o, i (DL4J)
    order = np.concatenate([blocks[3], blocks[1], blocks[0], blocks[2]])  # i, f, g, o (PyTorch)
    lstm = torch.nn.LSTM(FEATURES, UNITS, batch_first=True)
    linear = torch.nn.Linear(UNITS, CLASSES)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(views[(0, "W")][:, order].T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(views[(0, "RW")][:, order].T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(views[(0, "b")][order].copy()))
        lstm.bias_hh_l0.zero_()
        linear.weight.copy_(torch.from_numpy(views[(1, "W")].T.copy()))
        linear.bias.copy_(torch.from_numpy(views[(1, "b")].copy()))
    optimizer = torch.optim.Adam(
        list(lstm.parameters()) + list(linear.parameters()), lr=1e-3, fused=fused
    )
    return lstm, linear, optimizer


def run(threads: int | None = None, *, steps: int = 20, repeat: int = 5, batches: int = 8) -> dict:
    """Time both; returns ``{"sparkbatch_ms", "torch_ms", "torch_fused_ms", "ratio",
    "paired_ratio_median", "first_losses", "threads", "versions"}`` (best milliseconds per
    step; ``ratio``: sparkbatch's best over PyTorch's best; ``paired_ratio_median``: the median
    over repetitions of the same ratio within one repetition). ``threads`` defaults to every
    core."""
    import torch
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import ratios_to_torch, time_interleaved, versions

    sys.path.pop(0)
    from sparkbatch.data import DataSet

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n = BATCH * batches
    x = rng.normal(size=(n, FEATURES, STEPS)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    y = np.eye(CLASSES, dtype=np.float32)[labels]
    data = DataSet(x, y).split(BATCH)
    x_torch = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))  # [n, t, f]
    y_torch = torch.from_numpy(labels)

    with threadpool_limits(limits=threads, user_api="blas"):
        net = make_network()
        runners: dict[str, Callable[[int], float]] = {}
        losses: dict[str, list[float]] = {}
        for fused in (False, True):
            lstm, linear, optimizer = torch_model(torch, net, fused)

            def step(i: int, lstm=lstm, linear=linear, optimizer=optimizer) -> float:
                b = i % batches
                xb = x_torch[b * BATCH : (b + 1) * BATCH]
                optimizer.zero_grad(set_to_none=True)
                out, _ = lstm(xb)
                loss = torch.nn.functional.cross_entropy(
                    linear(out[:, -1]), y_torch[b * BATCH : (b + 1) * BATCH]
                )
                loss.backward()
                optimizer.step()
                return float(loss.detach())

            name = "torch_fused" if fused else "torch"
            losses[name] = [step(0), step(1)]
            runners[name] = step
        losses["sparkbatch"] = [net.fit_batch(data[0]), net.fit_batch(data[1])]
        runners = {"sparkbatch": lambda i: net.fit_batch(data[i % batches]), **runners}
        reference = losses["sparkbatch"]
        for name, pair in losses.items():
            for mine, theirs in zip(reference, pair, strict=True):
                if abs(mine - theirs) > 1e-4 * max(1.0, abs(mine)):
                    raise SystemExit(f"losses of {name} are {pair}, sparkbatch's {reference}")
        times = time_interleaved(runners, steps, repeat)
    return {
        **ratios_to_torch(times),
        "first_losses": reference,
        "threads": threads,
        "versions": versions("sparkbatch", "numpy", "torch"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed run")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    os.environ.setdefault("SPARKBATCH_NUM_THREADS", str(args.threads))
    result = run(args.threads, steps=args.steps, repeat=args.repeat)
    print("versions:", result["versions"])
    print(
        f"LSTM training step: batch {BATCH}, {STEPS} steps, {FEATURES} features, {UNITS} units, "
        f"last step -> {CLASSES}-class softmax cross-entropy, Adam, float32, "
        f"{result['threads']} threads; first two losses {result['first_losses'][0]:.6f}, "
        f"{result['first_losses'][1]:.6f} in both; best of {args.repeat} runs of {args.steps} "
        "steps"
    )
    print()
    print("| implementation | ms per step |")
    print("|---|---:|")
    print(f"| sparkbatch | {result['sparkbatch_ms']:.2f} |")
    print(f"| PyTorch nn.LSTM, Adam | {result['torch_ms']:.2f} |")
    print(f"| PyTorch nn.LSTM, Adam (fused=True) | {result['torch_fused_ms']:.2f} |")
    print()
    print(
        f"sparkbatch / PyTorch: {result['ratio']:.2f}x of the best times, "
        f"{result['paired_ratio_median']:.2f}x median of paired repetitions (goal: <= 1.5x)"
    )


if __name__ == "__main__":
    main()
