"""What the non-finite checks cost a training step: ``Network.fit`` per epoch with them and with
them patched out (the work a fit did before they existed), interleaved, medians; and the checks'
own time per step (the flat gradient buffer, one minibatch's arrays).

Run (one BLAS thread, so that the figures are not the machine's thread scheduling)::

    OPENBLAS_NUM_THREADS=1 SPARKBATCH_NUM_THREADS=1 .venv/bin/python bench/finite_checks.py
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

import numpy as np

import sparkbatch.nn.flat_model as network
from sparkbatch import _finite, _native
from sparkbatch.data import DataSet
from sparkbatch.nn import Adam, Dense, Network, Output

CONFIGS = [  # (layer sizes, examples, batch size)
    ([4, 32, 2], 8192, 32),
    ([784, 256, 10], 8192, 64),
    ([512, 1024, 1024, 10], 4096, 128),
]


def _network(sizes: list[int]) -> Network:
    layers = [Dense(a, b, "relu") for a, b in zip(sizes[:-2], sizes[1:-1], strict=True)]
    return Network([*layers, Output(sizes[-2], sizes[-1])], Adam(1e-3), seed=0)


_NATIVE_CHECK = _native.first_non_finite


def _unchecked() -> None:
    """Patch the checks out (the network looks both names up at every call)."""
    network.non_finite_in = lambda batch: None
    _native.first_non_finite = lambda array: -1


def _checked() -> None:
    network.non_finite_in = _finite.non_finite_in
    _native.first_non_finite = _NATIVE_CHECK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(
        f"{'network':<24} {'params':>9} {'steps':>6} {'without':>10} {'with':>10} "
        f"{'change':>8} {'grad check':>11} {'batch check':>12} {'step':>10}"
    )
    for sizes, n, batch in CONFIGS:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, sizes[0])).astype(np.float32)
        y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], n)]
        batches = DataSet(x, y).split(batch)
        net = _network(sizes)
        net.fit(batches)  # warm up: work arrays, BLAS
        times: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(args.repeats):
            for mode, patch in (("with", _checked), ("without", _unchecked)):
                patch()
                start = time.perf_counter()
                net.fit(batches)
                times[mode].append(time.perf_counter() - start)
        _checked()
        on, off = statistics.median(times["with"]), statistics.median(times["without"])
        grads = net.gradients()
        grad = timeit.timeit(lambda g=grads: _NATIVE_CHECK(g), number=1000) / 1000
        data = timeit.timeit(lambda b=batches[0]: _finite.non_finite_in(b), number=1000) / 1000
        name = f"{'-'.join(map(str, sizes))}, batch {batch}"
        print(
            f"{name:<24} {net.num_params:>9} {len(batches):>6} {off * 1e3:>8.1f}ms "
            f"{on * 1e3:>8.1f}ms {100 * (on - off) / off:>+7.1f}% {grad * 1e6:>9.1f}us "
            f"{data * 1e6:>10.1f}us {off / len(batches) * 1e6:>8.0f}us"
        )


if __name__ == "__main__":
    main()
