"""GPU figures: the averaging kernel against a device-to-device copy, and the MLP training step
against PyTorch on the same GPU.

1. Averaging: ``nn_average`` of k = 2, 4, 8 device buffers of 64M float32 (256 MiB each) into a
   separate output, counted as bytes read plus written, ``(k + 1) * 256 MiB`` per call, against
   ``cudaMemcpy`` device to device of the k inputs (``2 * k * 256 MiB`` moved per copy). Goal:
   at least 0.8 times the copy's bandwidth.
2. Training: one step of the network benchmark (bench/train.py): a 784-256-128-10 ReLU MLP,
   softmax cross-entropy, batch 128, Adam(1e-3), float32, from the same initial weights on the
   same minibatches, for sparkbatch's GPU network (``Network(device="cuda").fit_arrays``) and
   PyTorch (default and fused Adam). Two settings: minibatches already in GPU memory, and copied
   from host memory every step (what a Spark worker does). Every step reads its loss back to the
   host, in both. TF32 is off in both (cuBLAS's and PyTorch's default for float32 products).
   The script checks that the first losses agree before it times anything. Goal: no slower.

Without a GPU the script says why and exits 0. Run::

    .venv/bin/python bench/gpu.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import torch_mlp  # noqa: E402
from train import SIZES, make_network  # noqa: E402  (the same network as the CPU benchmark)

sys.path.pop(0)

from sparkbatch.nn.gpu import CudaUnavailableError, cuda_module, load_cublas  # noqa: E402

MIB = 1 << 20


def best_time(fn: Callable[[], object], sync: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` timed calls of ``fn`` (each followed by ``sync``), after a warm-up."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


# -- averaging ------------------------------------------------------------------------------------


def averaging(cuda, elements: int, repeat: int, calls: int) -> list[tuple[int, float, float]]:
    """Per k: (k, averaging GB/s, copy GB/s), both counted as bytes read plus written."""
    rows = []
    for k in (2, 4, 8):
        inputs = cuda.DeviceBuffer((k * elements,), "float32")  # the k buffers, back to back
        inputs.zero()
        buffers = [inputs.view(j * elements, (elements,)) for j in range(k)]
        out = cuda.DeviceBuffer((elements,), "float32")
        target = cuda.DeviceBuffer((k * elements,), "float32")

        def average(buffers=buffers, out=out) -> None:
            for _ in range(calls):
                cuda.nn_average(buffers, out)

        def copy(target=target, inputs=inputs) -> None:
            for _ in range(calls):
                target.copy_from(inputs)

        t_average = best_time(average, cuda.synchronize, repeat) / calls
        t_copy = best_time(copy, cuda.synchronize, repeat) / calls
        moved_average = (k + 1) * elements * 4
        moved_copy = 2 * k * elements * 4
        rows.append((k, moved_average / t_average / 1e9, moved_copy / t_copy / 1e9))
        del average, copy, inputs, buffers, out, target  # free before the next k
    return rows


# -- training -------------------------------------------------------------------------------------


def sparkbatch_step(cuda, x, y, batch: int, resident: bool) -> Callable[[int], float]:
    net = make_network().to("cuda")
    count = x.shape[0] // batch
    host = [(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]) for i in range(count)]
    batches = [(cuda.to_device(a), cuda.to_device(b)) for a, b in host] if resident else host

    def step(i: int) -> float:
        xb, yb = batches[i % count]
        return net.fit_arrays([xb], [yb])  # device arrays are used in place

    return step


def torch_step(torch, x, labels, batch: int, resident: bool, fused: bool) -> Callable[[int], float]:
    net = make_network()  # the same initial weights as sparkbatch's
    device = torch.device("cuda")
    model = torch_mlp(torch, net).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs = torch.from_numpy(x)
    ys = torch.from_numpy(labels.astype(np.int64))
    if resident:
        xs, ys = xs.to(device), ys.to(device)
    count = x.shape[0] // batch

    def step(i: int) -> float:
        begin = (i % count) * batch
        xb = xs[begin : begin + batch].to(device)
        yb = ys[begin : begin + batch].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def per_step(step: Callable[[int], object], steps: int, repeat: int) -> float:
    """Best over ``repeat`` runs of the mean time of ``steps`` consecutive steps, in seconds
    (every step reads its loss back, so the GPU has finished when a run ends)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def training(cuda, args: argparse.Namespace) -> tuple[list[tuple[str, float]], str]:
    rng = np.random.default_rng(0)
    n = args.batch * args.batches
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    labels = rng.integers(0, SIZES[-1], n)
    y = np.eye(SIZES[-1], dtype=np.float32)[labels]
    runners: dict[str, Callable[[int], float]] = {}
    for resident in (True, False):
        where = "batches on GPU" if resident else "batches from host"
        runners[f"sparkbatch Network.fit_arrays, {where}"] = sparkbatch_step(
            cuda, x, y, args.batch, resident
        )
    try:
        import torch
    except ImportError:
        torch = None
    note = ""
    if torch is None or not torch.cuda.is_available():
        note = "PyTorch with CUDA is not installed: sparkbatch's figures only"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        note = f"PyTorch {torch.__version__}"
        for resident in (True, False):
            where = "batches on GPU" if resident else "batches from host"
            for fused in (False, True):
                name = f"PyTorch {'fused ' if fused else ''}Adam, {where}"
                runners[name] = torch_step(torch, x, labels, args.batch, resident, fused)

    first = {name: step(0) for name, step in runners.items()}  # same weights, same batch 0
    reference = next(iter(first.values()))
    if not all(np.isclose(loss, reference, rtol=1e-4) for loss in first.values()):
        raise SystemExit(f"first losses disagree: {first}")
    for step in runners.values():  # warm-up (cuBLAS heuristics, PyTorch's caching allocator)
        for i in range(1, 20):
            step(i)
    timings = [(name, per_step(step, args.steps, args.repeat)) for name, step in runners.items()]
    return timings, note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=64 * MIB, help="floats per buffer")
    parser.add_argument("--calls", type=int, default=5, help="averaging calls per timing")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=32, help="distinct minibatches cycled")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    try:
        cuda = cuda_module()
        cublas = load_cublas()
    except CudaUnavailableError as e:
        print(f"bench/gpu.py: nothing to measure here: {e}")
        return 0
    major, minor = cuda.device_capability(0)
    runtime, driver = cuda.runtime_version(), cuda.driver_version()
    print(
        f"GPU 0: {cuda.device_name(0)} (sm_{major}{minor}); CUDA runtime {runtime // 1000}."
        f"{runtime % 1000 // 10}, driver for CUDA {driver // 1000}.{driver % 1000 // 10}; "
        f"sparkbatch._cuda built for {', '.join(cuda.architectures())}; cuBLAS {cublas}"
    )

    print(f"\nAveraging k buffers of {args.elements / MIB:g}M float32 (best of {args.repeat})")
    print(f"{'k':>3}  {'average GB/s':>12}  {'D2D copy GB/s':>13}  {'ratio':>6}")
    for k, average_bw, copy_bw in averaging(cuda, args.elements, args.repeat, args.calls):
        ratio = average_bw / copy_bw
        print(f"{k:>3}  {average_bw:>12.0f}  {copy_bw:>13.0f}  {ratio:>5.2f}x")

    timings, note = training(cuda, args)
    print(
        f"\nTraining step, {'-'.join(map(str, SIZES))} ReLU MLP, batch {args.batch}, Adam, "
        f"float32 (best of {args.repeat} x {args.steps} steps; {note})"
    )
    torch_best = {
        where: min(
            (t for name, t in timings if name.startswith("PyTorch") and where in name), default=None
        )
        for where in ("on GPU", "from host")
    }
    print(f"{'':<44}  {'ms/step':>8}  {'steps/s':>8}  {'vs best PyTorch':>15}")
    for name, seconds in timings:
        reference = torch_best["on GPU" if "on GPU" in name else "from host"]
        versus = f"{reference / seconds:>14.2f}x" if reference else f"{'-':>15}"
        print(f"{name:<44}  {seconds * 1e3:>8.3f}  {1 / seconds:>8.0f}  {versus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
