"""Time per training step of a small CNN in sparkbatch against the same model in PyTorch, same
run, same threads.

The model: images 3x32x32, batch 64, ``Conv2D(3, 32, 3, padding=1)`` (ReLU),
``MaxPool2D(2)``, ``Conv2D(32, 64, 3, padding=1)`` (ReLU), ``MaxPool2D(2)``, ``Flatten``,
``Dense(4096, 128)`` (ReLU), a 10-class softmax output with cross-entropy, Adam (1e-3),
float32. PyTorch runs ``Conv2d``, ``ReLU``, ``MaxPool2d``, ``Flatten``, ``Linear``,
``cross_entropy``, ``backward()`` and ``Adam.step()`` (its default, and the fused CPU Adam).
Both start from sparkbatch's initial weights (a Conv2D's ``W [out, in * kh * kw]`` is PyTorch's
``weight`` reshaped) and fit the same minibatches; before it times anything the script checks
that the first minibatch's loss and every parameter's gradient agree (to float32 rounding). It
prints the second step's losses without comparing them: Adam's first step moves each weight by
about ``lr * sign(gradient)``, so the many gradients within rounding of 0 (ReLU units silent on
most of the batch) move by a full ``lr`` one way or the other in each, and the losses part by
about 1e-3.

Threads: PyTorch gets ``torch.set_num_threads(threads)``; numpy's BLAS is limited to ``threads``
through threadpoolctl, and sparkbatch's own pool reads ``SPARKBATCH_NUM_THREADS`` (set here
before sparkbatch is imported, when run as a script).

Run (unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE in this command only, see the env notes)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/conv.py

Another benchmark calls :func:`run` and reads its dict.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

BATCH, CHANNELS, SIZE, CLASSES, HIDDEN = 64, 3, 32, 10, 128


def make_network(seed: int = 0) -> Any:
    """The sparkbatch model (see the module's docstring)."""
    from sparkbatch.nn import Adam, Conv2D, Dense, Flatten, MaxPool2D, Network, Output

    return Network(
        [
            Conv2D(CHANNELS, 32, 3, padding=1, input_size=(SIZE, SIZE)),
            MaxPool2D(2),
            Conv2D(32, 64, 3, padding=1),
            MaxPool2D(2),
            Flatten(),
            Dense(64 * (SIZE // 4) ** 2, HIDDEN),
            Output(HIDDEN, CLASSES, "softmax", "cross_entropy"),
        ],
        Adam(1e-3),
        seed=seed,
    )


def torch_model(torch: Any, net: Any, fused: bool) -> tuple[Any, Any]:
    """``(model, optimizer)`` in PyTorch holding ``net``'s weights."""
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(CHANNELS, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (SIZE // 4) ** 2, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )
    pairs = [(0, model[0]), (2, model[3]), (5, model[7]), (6, model[9])]
    with torch.no_grad():
        for index, module in pairs:
            w, b = net.weights(index)
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.from_numpy(w.reshape(module.weight.shape).copy()))
            else:
                module.weight.copy_(torch.from_numpy(w.T.copy()))
            module.bias.copy_(torch.from_numpy(b.copy()))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)


def check_gradients(torch: Any, net: Any, model: Any, batch: Any, x: Any, y: Any) -> float:
    """The loss of ``batch`` in both, after checking that every gradient agrees to 1e-4 of the
    largest of its parameter's (SystemExit otherwise). Nothing is updated."""
    loss = net.compute_gradients(batch)
    model.zero_grad(set_to_none=True)
    theirs = torch.nn.functional.cross_entropy(model(x), y)
    theirs.backward()
    theirs = theirs.item()
    if abs(loss - theirs) > 1e-4 * max(1.0, abs(loss)):
        raise SystemExit(f"first loss: sparkbatch {loss}, PyTorch {theirs}")
    grads = net.gradients()
    modules = [(0, model[0]), (2, model[3]), (5, model[7]), (6, model[9])]
    for index, module in modules:
        for name, tensor in (("W", module.weight), ("b", module.bias)):
            offset, shape = net._topology.nodes[index].params[name]
            mine = grads[offset : offset + int(np.prod(shape))].reshape(shape)
            expected = tensor.grad.numpy()
            linear = isinstance(module, torch.nn.Linear) and name == "W"  # [out, in] there
            expected = expected.T if linear else expected.reshape(shape)
            if np.abs(mine - expected).max() > 1e-4 * np.abs(expected).max():
                raise SystemExit(f"layer {index} {name}: the gradients differ from PyTorch's")
    model.zero_grad(set_to_none=True)
    return loss


def run(threads: int | None = None, *, steps: int = 10, repeat: int = 5, batches: int = 4) -> dict:
    """Time both; returns ``{"sparkbatch_ms", "torch_ms", "torch_fused_ms", "ratio",
    "paired_ratio_median", "losses", "threads", "versions"}`` (``losses``: per implementation
    those of the first two steps) (best milliseconds per
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
    x = rng.normal(size=(n, CHANNELS, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    y = np.eye(CLASSES, dtype=np.float32)[labels]
    data = DataSet(x, y).split(BATCH)
    x_torch = torch.from_numpy(x)
    y_torch = torch.from_numpy(labels)

    with threadpool_limits(limits=threads, user_api="blas"):
        net = make_network()
        model, _ = torch_model(torch, net, False)
        first_loss = check_gradients(torch, net, model, data[0], x_torch[:BATCH], y_torch[:BATCH])
        runners: dict[str, Callable[[int], float]] = {}
        losses: dict[str, list[float]] = {}
        for fused in (False, True):
            model, optimizer = torch_model(torch, net, fused)

            def step(i: int, model=model, optimizer=optimizer) -> float:
                b = i % batches
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(
                    model(x_torch[b * BATCH : (b + 1) * BATCH]),
                    y_torch[b * BATCH : (b + 1) * BATCH],
                )
                loss.backward()
                optimizer.step()
                return float(loss.detach())

            name = "torch_fused" if fused else "torch"
            losses[name] = [step(0), step(1)]
            runners[name] = step
        losses["sparkbatch"] = [net.fit_batch(data[0]), net.fit_batch(data[1])]
        runners = {"sparkbatch": lambda i: net.fit_batch(data[i % batches]), **runners}
        for name, pair in losses.items():
            if abs(pair[0] - first_loss) > 1e-4 * max(1.0, abs(first_loss)):
                raise SystemExit(f"first loss of {name} is {pair[0]}, sparkbatch's {first_loss}")
        times = time_interleaved(runners, steps, repeat)
    return {
        **ratios_to_torch(times),
        "losses": losses,
        "threads": threads,
        "versions": versions("sparkbatch", "numpy", "torch"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("SPARKBATCH_NUM_THREADS", str(args.threads))
    result = run(args.threads, steps=args.steps, repeat=args.repeat)
    print("versions:", result["versions"])
    print(
        f"CNN training step: batch {BATCH} of {CHANNELS}x{SIZE}x{SIZE}, Conv2D(3, 32, 3, "
        "padding=1), MaxPool2D(2), Conv2D(32, 64, 3, padding=1), MaxPool2D(2), Flatten, "
        f"Dense({64 * (SIZE // 4) ** 2}, {HIDDEN}), {CLASSES}-class softmax cross-entropy, Adam, "
        f"float32, {result['threads']} threads; gradients of the first step checked against "
        f"PyTorch's; best of {args.repeat} runs of {args.steps} steps"
    )
    for name, pair in result["losses"].items():
        print(f"first two losses, {name}: {pair[0]:.6f}, {pair[1]:.6f}")
    print()
    print("| implementation | ms per step |")
    print("|---|---:|")
    print(f"| sparkbatch | {result['sparkbatch_ms']:.2f} |")
    print(f"| PyTorch, Adam | {result['torch_ms']:.2f} |")
    print(f"| PyTorch, Adam (fused=True) | {result['torch_fused_ms']:.2f} |")
    print()
    print(
        f"sparkbatch / PyTorch: {result['ratio']:.2f}x of the best times, "
        f"{result['paired_ratio_median']:.2f}x median of paired repetitions (goal: <= 1.5x)"
    )


if __name__ == "__main__":
    main()
