"""The CUDA module: kernels against the CPU kernels, device memory, interop, the GPU network.

Tests marked ``gpu`` need a visible NVIDIA GPU and skip with the reason where there is none. The
others run everywhere: the CUDA module must stay optional (never imported by ``import
sparkbatch``), and where it was built it must import and answer on a machine with no driver.
The element-wise arithmetic the GPU runs is tested on every machine by test_nn_kernels.py,
since the CPU kernels call the same functions (csrc/nn_math.hpp).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from sparkbatch import _native
from sparkbatch.data import DataSet
from sparkbatch.nn import ACTIVATIONS, LOSSES, SGD, Adam, Dense, Momentum, Network, Output
from sparkbatch.nn.backend import CpuBackend
from sparkbatch.nn.gpu import (
    CudaBackend,
    CudaUnavailableError,
    cuda_available,
    cuda_module,
    load_cublas,
    parse_device,
)

BUILT = importlib.util.find_spec("sparkbatch._cuda") is not None
DEFAULT_ARCHITECTURES = ["80-real", "90-real", "90-virtual"]  # csrc/cuda/CMakeLists.txt


def _why_no_gpu() -> str:
    try:
        cuda_module()
    except CudaUnavailableError as e:
        return str(e)
    return ""


WHY_NO_GPU = _why_no_gpu()


def gpu(test):
    """Marks a test ``gpu`` and skips it, with the reason, where no GPU can be used."""
    skip = pytest.mark.skipif(bool(WHY_NO_GPU), reason=f"no usable GPU: {WHY_NO_GPU}")
    return pytest.mark.gpu(skip(test))


DTYPES = [np.float32, np.float64]


def _tolerance(dtype) -> float:
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def assert_close(got, expected, dtype, scale=None):
    """Max relative error ``_tolerance(dtype)``; elements far below the array's scale (by
    default its largest magnitude) are held to that tolerance times the scale."""
    expected = np.asarray(expected, np.float64)
    got = np.asarray(got, np.float64)
    if scale is None:
        scale = float(np.abs(expected).max()) if expected.size else 0.0
    tol = _tolerance(dtype)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * scale)


# -- always run -----------------------------------------------------------------------------------


def test_importing_sparkbatch_does_not_import_the_cuda_module():
    code = (
        "import sys, sparkbatch, sparkbatch.nn, sparkbatch.nn.gpu\n"
        "print('sparkbatch._cuda' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_cuda_available_answers_a_bool_without_raising():
    assert cuda_available() in (True, False)
    assert cuda_available() == (WHY_NO_GPU == "")


def test_parse_device_names_the_choices():
    assert parse_device("cpu") is None
    assert parse_device("cuda") == 0
    assert parse_device("CUDA:2") == 2
    assert parse_device(1) == 1
    for bad in ("gpu", "cuda:x", "cpu:0", -1, True):
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N'"):
            parse_device(bad)


def test_without_a_gpu_asking_for_one_says_why():
    if cuda_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(CudaUnavailableError, match="device='cuda' needs a GPU, but") as info:
        Network([Output(4, 2)], seed=0, device="cuda")
    assert isinstance(info.value, RuntimeError)
    assert "use device='cpu'" in str(info.value) or "without its CUDA module" in str(info.value)
    net = Network([Output(4, 2)], seed=0)
    with pytest.raises(CudaUnavailableError, match="device='cuda' needs a GPU, but"):
        net.to("cuda:0")
    assert net.device == "cpu"  # left where it was
    with pytest.raises(CudaUnavailableError, match="device='cuda' needs a GPU, but"):
        CudaBackend("float32")


@pytest.mark.skipif(not BUILT, reason="sparkbatch was built without its CUDA module")
def test_the_cuda_module_reports_its_build_and_answers_without_a_driver():
    from sparkbatch import _cuda

    expected = os.environ.get("CUDAARCHS")
    assert _cuda.architectures() == (expected.split(";") if expected else DEFAULT_ARCHITECTURES)
    count = _cuda.device_count()
    assert isinstance(count, int) and count >= 0
    assert cuda_available() == (count > 0)
    assert _cuda.runtime_version() >= 12000
    assert _cuda.driver_version() >= 0
    if count == 0:
        with pytest.raises(RuntimeError, match="cudaError"):
            _cuda.DeviceBuffer((4,), "float32")
        with pytest.raises(IndexError, match="no CUDA device 0"):
            _cuda.device_name(0)


@pytest.mark.skipif(not BUILT, reason="sparkbatch was built without its CUDA module")
def test_a_missing_cublas_is_named_with_the_reason():
    from sparkbatch import _cuda

    if _cuda.cublas_library() is not None:
        pytest.skip(f"cuBLAS is loaded already ({_cuda.cublas_library()})")
    with pytest.raises(RuntimeError, match="cuBLAS is needed") as info:
        _cuda.load_cublas(["libsparkbatch-no-such-cublas.so"])
    assert "libsparkbatch-no-such-cublas.so" in str(info.value)
    assert "nvidia-cublas-cu12" in str(info.value)
    assert _cuda.cublas_library() is None  # a failed load leaves nothing behind


# -- device memory --------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_buffer_round_trip_views_and_copies(dtype):
    cuda = cuda_module()
    host = np.arange(24, dtype=dtype).reshape(4, 6)
    buf = cuda.to_device(host)
    assert buf.shape == (4, 6) and buf.dtype == np.dtype(dtype) and buf.size == 24
    assert buf.nbytes == host.nbytes and buf.ptr != 0 and buf.device == 0
    np.testing.assert_array_equal(buf.to_host(), host)

    view = buf.view(6, (2, 3))  # elements 6..11
    assert view.ptr == buf.ptr + 6 * host.itemsize
    np.testing.assert_array_equal(view.to_host(), host.reshape(-1)[6:12].reshape(2, 3))
    view.copy_from_host(-np.ones((2, 3)))
    expected = host.copy().reshape(-1)
    expected[6:12] = -1
    np.testing.assert_array_equal(buf.to_host().reshape(-1), expected)
    with pytest.raises(ValueError, match="does not fit"):
        buf.view(20, (5,))

    other = cuda.DeviceBuffer((24,), dtype)
    other.copy_from(buf)
    out = np.empty(24, dtype)
    assert other.to_host(out) is out
    np.testing.assert_array_equal(out, expected)
    other.zero()
    assert not other.to_host().any()
    with pytest.raises(ValueError, match="has 5 values, the buffer 24"):
        other.copy_from_host(np.zeros(5))

    del buf  # the view keeps the allocation alive
    np.testing.assert_array_equal(view.to_host(), -np.ones((2, 3)))

    interface = view.__cuda_array_interface__
    assert interface["version"] == 3 and interface["shape"] == (2, 3)
    assert interface["data"] == (view.ptr, False) and interface["strides"] is None
    assert interface["typestr"] == np.dtype(dtype).newbyteorder("<").str
    assert view.__dlpack_device__() == (2, 0)
    assert repr(view) == f"DeviceBuffer(shape=(2, 3), dtype={np.dtype(dtype).name}, device=0)"
    empty = cuda.DeviceBuffer((0, 3), dtype)
    assert empty.to_host().shape == (0, 3)


@gpu
def test_torch_and_cupy_see_the_same_memory():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch has no CUDA")
    cuda = cuda_module()
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    buf = cuda.to_device(host)

    shared = torch.as_tensor(buf, device="cuda")  # __cuda_array_interface__
    assert shared.data_ptr() == buf.ptr and tuple(shared.shape) == (3, 4)
    assert shared.dtype == torch.float32

    exported = torch.from_dlpack(buf)  # __dlpack__
    assert exported.data_ptr() == buf.ptr and exported.device.type == "cuda"
    exported += 1
    torch.cuda.synchronize()
    np.testing.assert_array_equal(buf.to_host(), host + 1)

    window = torch.from_dlpack(buf.view(5, (7,)))
    assert window.data_ptr() == buf.ptr + 5 * 4
    del buf, shared  # the DLPack exports keep the memory alive
    np.testing.assert_array_equal(exported.cpu().numpy(), host + 1)
    np.testing.assert_array_equal(window.cpu().numpy(), (host + 1).reshape(-1)[5:12])

    try:
        import cupy
    except ImportError:
        return
    again = cuda.to_device(host)
    assert cupy.asarray(again).data.ptr == again.ptr


# -- kernels against the CPU kernels --------------------------------------------------------------

EDGES = [-1e4, -80.0, -3.0, -1e-40, 0.0, 1e-40, 0.5, 3.0, 80.0, 1e4]
ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


def _inputs(dtype, rows=37, cols=45, seed=0):
    """A [rows, cols] matrix with the edge values in it, and otherwise N(0, 3)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, rows * cols)
    x[: len(EDGES)] = EDGES
    return x.astype(dtype).reshape(rows, cols)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_bias_activation_and_backward_match_the_cpu(name, dtype):
    cuda = cuda_module()
    code, alpha = ACTIVATIONS[name], ALPHA.get(name, 0.0)
    z = _inputs(dtype)
    bias = np.linspace(-0.5, 0.5, z.shape[1]).astype(dtype)
    z_cpu, a_cpu = z.copy(), np.empty_like(z)
    _native.nn_bias_activation(z_cpu, bias, a_cpu, code, alpha)
    z_gpu, a_gpu = cuda.to_device(z), cuda.DeviceBuffer(z.shape, dtype)
    cuda.nn_bias_activation(z_gpu, cuda.to_device(bias), a_gpu, code, alpha)
    np.testing.assert_array_equal(z_gpu.to_host(), z_cpu)  # z + bias: one IEEE addition
    assert_close(a_gpu.to_host(), a_cpu, dtype)

    in_place = cuda.to_device(z)  # a may be z
    cuda.nn_bias_activation(in_place, None, in_place, code, alpha)
    expected = z.copy()
    _native.nn_bias_activation(expected, None, expected, code, alpha)
    assert_close(in_place.to_host(), expected, dtype)

    # Backward from the CPU's forward values, so that only the backward kernels are compared.
    da = np.random.default_rng(1).normal(size=z.shape).astype(dtype)
    da[0] = 0
    dz_cpu, db_cpu = np.empty_like(z), np.empty(z.shape[1], dtype)
    _native.nn_activation_backward(da, z_cpu, a_cpu, dz_cpu, db_cpu, code, alpha)
    dz_gpu, db_gpu = cuda.DeviceBuffer(z.shape, dtype), cuda.DeviceBuffer((z.shape[1],), dtype)
    cuda.nn_activation_backward(
        cuda.to_device(da),
        cuda.to_device(z_cpu),
        cuda.to_device(a_cpu),
        dz_gpu,
        db_gpu,
        code,
        alpha,
    )
    assert_close(dz_gpu.to_host(), dz_cpu, dtype)
    assert_close(db_gpu.to_host(), db_cpu, dtype, scale=np.abs(dz_cpu).sum(axis=0).max())
    assert not dz_gpu.to_host()[0].any()

    da_gpu = cuda.to_device(da)  # dz may be da; z may be omitted when not needed
    z_arg = cuda.to_device(z_cpu) if name in ("relu", "leaky_relu", "elu", "gelu") else None
    cuda.nn_activation_backward(da_gpu, z_arg, cuda.to_device(a_cpu), da_gpu, None, code, alpha)
    assert_close(da_gpu.to_host(), dz_cpu, dtype)


def _labels(loss, rng, shape, dtype):
    if loss == "cross_entropy":
        return np.eye(shape[1], dtype=dtype)[rng.integers(0, shape[1], shape[0])]
    if loss == "binary_cross_entropy":
        return (rng.random(shape) < 0.5).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


OUTPUT_CASES = [
    ("cross_entropy", "softmax"),  # fused
    ("binary_cross_entropy", "sigmoid"),  # fused
    ("cross_entropy", "sigmoid"),
    ("binary_cross_entropy", "softmax"),
    *[("mse", a) for a in ACTIVATIONS],
    *[("mae", a) for a in ("identity", "tanh", "softmax")],
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", [None, "example", "output"])
@pytest.mark.parametrize(("loss", "activation"), OUTPUT_CASES)
@pytest.mark.parametrize("width", [10, 70])  # one warp per row: fewer and more columns than lanes
def test_output_layer_and_loss_sum_match_the_cpu(loss, activation, weights, dtype, width):
    cuda = cuda_module()
    rng = np.random.default_rng(2)
    n, code, act = 41, LOSSES[loss], ACTIVATIONS[activation]
    alpha = ALPHA.get(activation, 0.0)
    z = rng.normal(0, 2, (n, width)).astype(dtype)
    bias = rng.normal(0, 0.5, width).astype(dtype)
    y = _labels(loss, rng, z.shape, dtype)
    w = {
        None: None,
        "example": rng.random(n).astype(dtype),
        "output": rng.random((n, width)).astype(dtype),
    }[weights]
    scale = 1.0 / n

    z_cpu, a_cpu, dz_cpu = z.copy(), np.empty_like(z), np.empty_like(z)
    db_cpu = np.empty(width, dtype)
    loss_cpu = _native.nn_output_layer(
        code, act, alpha, z_cpu, bias, y, w, a_cpu, dz_cpu, db_cpu, scale
    )
    z_gpu = cuda.to_device(z)
    a_gpu, dz_gpu = cuda.DeviceBuffer(z.shape, dtype), cuda.DeviceBuffer(z.shape, dtype)
    db_gpu = cuda.DeviceBuffer((width,), dtype)
    w_gpu = None if w is None else cuda.to_device(w)
    y_gpu = cuda.to_device(y)
    loss_gpu = cuda.nn_output_layer(
        code, act, alpha, z_gpu, cuda.to_device(bias), y_gpu, w_gpu, a_gpu, dz_gpu, db_gpu, scale
    )
    assert loss_gpu == pytest.approx(loss_cpu, rel=_tolerance(dtype))
    np.testing.assert_array_equal(z_gpu.to_host(), z_cpu)
    assert_close(a_gpu.to_host(), a_cpu, dtype)
    assert_close(dz_gpu.to_host(), dz_cpu, dtype)
    assert_close(db_gpu.to_host(), db_cpu, dtype, scale=np.abs(dz_cpu).sum(axis=0).max())

    expected = _native.nn_loss_sum(code, act, z_cpu, a_cpu, y, w)
    got = cuda.nn_loss_sum(code, act, cuda.to_device(z_cpu), cuda.to_device(a_cpu), y_gpu, w_gpu)
    assert got == pytest.approx(expected, rel=_tolerance(dtype))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("updater", range(5))  # sgd, momentum, nesterov, adam, rmsprop
def test_updater_step_matches_the_cpu(updater, dtype):
    cuda = cuda_module()
    rng = np.random.default_rng(3)
    count = 100_003  # an odd size, over many blocks
    per_param = {0: 0, 1: 1, 2: 1, 3: 2, 4: 1}[updater]
    params = rng.normal(size=count).astype(dtype)
    grads = rng.normal(size=count).astype(dtype)
    grads[:100] = 0
    state = np.abs(rng.normal(size=per_param * count)).astype(dtype)
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, momentum=0.9, decay=0.95)
    p_gpu, s_gpu = cuda.to_device(params), cuda.to_device(state)
    for _ in range(3):
        _native.nn_updater_step(updater, params, grads, state, **hyper)
        cuda.nn_updater_step(updater, p_gpu, cuda.to_device(grads), s_gpu, **hyper)
    assert_close(p_gpu.to_host(), params, dtype)
    assert_close(s_gpu.to_host(), state, dtype)
    with pytest.raises(ValueError, match="state has"):
        cuda.nn_updater_step(3, p_gpu, p_gpu, p_gpu, lr=0.1)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 11])
@pytest.mark.parametrize("offset", [0, 1])  # 1: unaligned views, the scalar kernel
def test_average_matches_the_cpu(k, offset, dtype):
    cuda = cuda_module()
    rng = np.random.default_rng(4)
    count = 10_007
    host = [rng.normal(size=count).astype(dtype) for _ in range(k)]
    blocks = [cuda.DeviceBuffer((count + 8,), dtype) for _ in range(k)]
    views = [b.view(offset, (count,)) for b in blocks]
    for view, values in zip(views, host, strict=True):
        view.copy_from_host(values)
    expected = np.empty(count, dtype)
    _native.nn_average(host, expected)
    out = cuda.DeviceBuffer((count,), dtype)
    cuda.nn_average(views, out)
    np.testing.assert_array_equal(out.to_host(), expected)  # + and / only: bit-identical

    _native.nn_average(host, expected, divisor=2.5)
    cuda.nn_average(views, views[0], divisor=2.5)  # out may be one of the buffers
    np.testing.assert_array_equal(views[0].to_host(), expected)


@gpu
def test_average_refuses_mismatched_buffers_and_too_many():
    cuda = cuda_module()
    a32, b32 = cuda.DeviceBuffer((8,), "float32"), cuda.DeviceBuffer((9,), "float32")
    with pytest.raises(ValueError, match="has 9 values, the others 8"):
        cuda.nn_average([a32, b32], a32)
    with pytest.raises(TypeError, match="has dtype float64 but the other buffers have float32"):
        cuda.nn_average([a32], cuda.DeviceBuffer((8,), "float64"))
    with pytest.raises(ValueError, match="at most 64 buffers"):
        cuda.nn_average([a32] * 65, a32)
    with pytest.raises(ValueError, match="divisor must be > 0"):
        cuda.nn_average([a32], a32, divisor=0)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_axpy_dropout_and_sum_squares_match_the_cpu(dtype):
    cuda = cuda_module()
    rng = np.random.default_rng(5)
    acc, x = rng.normal(size=(2, 70_001)).astype(dtype)
    acc_gpu, x_gpu = cuda.to_device(acc), cuda.to_device(x)
    _native.nn_add_into(acc, x)
    cuda.nn_add_into(acc_gpu, x_gpu)
    np.testing.assert_array_equal(acc_gpu.to_host(), acc)
    _native.nn_axpy(acc, x, 0.3)
    cuda.nn_axpy(acc_gpu, x_gpu, 0.3)
    assert_close(acc_gpu.to_host(), acc, dtype)
    for rate, seed in ((0.0, 1), (0.25, 7), (0.9, 2**64 - 1)):
        _native.nn_dropout(acc, rate, seed)
        cuda.nn_dropout(acc_gpu, rate, seed)
        np.testing.assert_array_equal(acc_gpu.to_host() == 0, acc == 0)  # the same mask
        assert_close(acc_gpu.to_host(), acc, dtype)
    squares = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    assert cuda.nn_sum_squares(x_gpu) == pytest.approx(squares, rel=1e-12)
    assert cuda.nn_sum_squares(cuda.DeviceBuffer((0,), dtype)) == 0.0


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_count_non_finite_agrees_with_the_cpu_check(dtype):
    cuda = cuda_module()
    info = np.finfo(dtype)
    x = np.resize(
        np.array([0.0, -0.0, info.max, -info.max, info.smallest_subnormal], dtype), 70_001
    )
    assert cuda.nn_count_non_finite(cuda.to_device(x)) == 0 == _native.first_non_finite(x) + 1
    places = [0, 4096, 35_000, 70_000]
    for i, value in zip(places, (np.nan, np.inf, -np.inf, np.nan), strict=True):
        x[i] = value
    assert cuda.nn_count_non_finite(cuda.to_device(x)) == len(places)
    assert _native.first_non_finite(x) == places[0]
    assert cuda.nn_count_non_finite(cuda.DeviceBuffer((0,), dtype)) == 0


@gpu
def test_a_gpu_network_stops_at_a_non_finite_gradient_with_its_parameters_unchanged(cublas):
    from sparkbatch.errors import DivergenceError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = x @ np.ones((4, 1), np.float32) * 10
    net = Network(
        [Dense(4, 8, "identity"), Output(8, 1, "identity", "mse")], SGD(5.0), device="cuda"
    )
    with pytest.raises(DivergenceError, match=r"epoch 0, minibatch \d+, iteration \d+: training"):
        net.fit(DataSet(x, y), epochs=20, batch_size=16)
    assert np.isfinite(net.params()).all()


@pytest.fixture
def cublas():
    """Skips where cuBLAS cannot be loaded (the GPU network's matrix products need it)."""
    try:
        return load_cublas()
    except CudaUnavailableError as e:
        pytest.skip(str(e))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (True, False), (False, True)])
def test_matmul_matches_numpy(trans_a, trans_b, dtype, cublas):
    cuda = cuda_module()
    rng = np.random.default_rng(6)
    m, k, n = 33, 130, 17
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    out = cuda.DeviceBuffer((m, n), dtype)
    cuda.matmul(cuda.to_device(a), cuda.to_device(b), out, trans_a=trans_a, trans_b=trans_b)
    # cuBLAS sums in its own order (never TF32 by default): errors grow like sqrt(k)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.to_host(), expected, rtol=tol, atol=tol * np.sqrt(k) * 4)
    with pytest.raises(ValueError, match="op\\(a\\) is"):
        cuda.matmul(cuda.to_device(a), cuda.to_device(a), out)
    square = cuda.DeviceBuffer((4, 4), dtype)
    with pytest.raises(ValueError, match="must not share memory"):
        cuda.matmul(square, square, square)


# -- the network on the GPU -----------------------------------------------------------------------


def _sequence_batches(dtype, steps=5, n=24, t=3):
    """Minibatches of sequences with a label mask, so that the loss weights are exercised."""
    rng = np.random.default_rng(7)
    for _ in range(steps):
        x = rng.normal(size=(n, 12, t)).astype(dtype)
        y = np.eye(3, dtype=dtype)[rng.integers(0, 3, (n, t))].transpose(0, 2, 1)
        mask = (rng.random((n, t)) < 0.8).astype(dtype)
        yield DataSet(x, y, labels_mask=mask)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_steps_follow_the_cpu_steps(dtype, cublas):
    def make(device):
        layers = [
            Dense(12, 16, "relu", l2=1e-3),
            Dense(16, 8, "tanh", dropout=0.2),
            Output(8, 3, "softmax", "cross_entropy", dropout=0.1),
        ]
        return Network(layers, Momentum(0.05), seed=3, dtype=dtype, device=device)

    cpu, on_gpu = make("cpu"), make("cuda")
    assert on_gpu.device == "cuda:0"
    tol = 1e-4 if dtype == "float32" else 1e-10
    for batch in _sequence_batches(dtype):
        expected = cpu.fit_batch(batch)
        assert on_gpu.fit_batch(batch) == pytest.approx(expected, rel=tol)
    np.testing.assert_allclose(on_gpu.params(), cpu.params(), rtol=tol, atol=tol * 1e-2)
    np.testing.assert_allclose(on_gpu.updater_state(), cpu.updater_state(), rtol=tol, atol=tol)
    np.testing.assert_allclose(on_gpu.gradients(), cpu.gradients(), rtol=tol, atol=tol)

    batch = next(_sequence_batches(dtype, steps=1))
    np.testing.assert_allclose(
        on_gpu.output(batch.features), cpu.output(batch.features), rtol=tol, atol=tol * 1e-2
    )
    assert on_gpu.score(batch) == pytest.approx(cpu.score(batch), rel=tol)  # masks, L2


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cuda_backend_stages_device_arrays_in_place_and_host_arrays_by_copy(dtype, cublas):
    backend = CudaBackend(dtype)
    host = np.arange(12, dtype=dtype).reshape(3, 4)
    buffer = backend.empty((3, 4))
    on_device = backend.from_host(host)
    assert backend.stage(on_device, buffer) is on_device
    assert backend.stage(host, buffer) is buffer
    np.testing.assert_array_equal(backend.to_host(buffer), host)
    with pytest.raises(ValueError, match="shape"):
        backend.stage(backend.empty((4, 3)), buffer)
    views = backend.carve([(3, 5), (7,), (1, 1)])
    assert [tuple(v.shape) for v in views] == [(3, 5), (7,), (1, 1)]
    assert all(v.ptr % 256 == 0 for v in views)  # aligned for cuBLAS and vector loads


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_backend_primitive_matches_the_cpu_backend(dtype, cublas):
    """The backend interface itself, primitive by primitive, CUDA against CPU."""
    gpu_backend, cpu_backend = CudaBackend(dtype), CpuBackend(dtype)
    rng = np.random.default_rng(11)
    a, b = (rng.normal(size=(9, 5)).astype(dtype) for _ in range(2))

    def both(name, *arrays, **kwargs):
        outs = []
        for backend in (cpu_backend, gpu_backend):
            args = [backend.from_host(x) if isinstance(x, np.ndarray) else x for x in arrays]
            getattr(backend, name)(*args, **kwargs)
            outs.append([backend.to_host(x) for x in args if not isinstance(x, (int, float))])
        for got, expected in zip(outs[1], outs[0], strict=True):
            assert_close(got, expected, dtype)

    both("add_into", a.copy(), b)
    both("axpy", a.copy(), b, 0.5)
    both("scale", np.empty_like(a), b, 0.25)
    both("multiply", a, b, np.empty_like(a))
    both("maximum", a, b, np.empty_like(a))
    for backend in (cpu_backend, gpu_backend):
        out = backend.empty(a.shape)
        backend.average([backend.from_host(a), backend.from_host(b)], out)
        assert_close(backend.to_host(out), (a + b) / 2, dtype)
        assert backend.sum_squares(backend.from_host(a)) == pytest.approx(
            float((a.astype(np.float64) ** 2).sum()), rel=_tolerance(dtype)
        )
        assert backend.all_finite(backend.from_host(a))
        assert not backend.all_finite(backend.from_host(np.array([1.0, np.nan], dtype)))
        merged = backend.zeros((9, 10))
        backend.copy_columns(backend.from_host(a), merged, 2)
        part = backend.empty((9, 5))
        backend.take_columns(merged, 2, part)
        np.testing.assert_array_equal(backend.to_host(part), a)


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, c_train, c_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    eye = np.eye(10, dtype=np.float32)
    return (
        DataSet(((x_train - mean) / std).astype(np.float32), eye[c_train]),
        DataSet(((x_test - mean) / std).astype(np.float32), eye[c_test]),
    )


def _digits_network(**kwargs) -> Network:
    layers = [
        Dense(64, 64, "relu"),
        Dense(64, 32, "relu"),
        Output(32, 10, "softmax", "cross_entropy"),
    ]
    return Network(layers, Adam(3e-3), seed=0, **kwargs)


@gpu
def test_a_gpu_network_learns_digits_as_well_as_the_cpu_network(cublas):
    train, test = _digits()
    net = _digits_network(device="cuda")
    net.fit(train.shuffle(1), epochs=30, batch_size=32)
    evaluation = net.evaluate(test)
    assert evaluation.accuracy() >= 0.95, evaluation.stats()
    assert isinstance(net.params(), np.ndarray)  # a host copy


@gpu
def test_moving_a_network_between_devices_keeps_its_outputs(cublas):
    train, test = _digits()
    net = _digits_network()
    net.fit(train, epochs=2, batch_size=64)
    on_cpu = net.output(test.features)
    net.to("cuda")
    np.testing.assert_allclose(net.output(test.features), on_cpu, rtol=1e-5, atol=1e-6)
    net.fit(train, epochs=1, batch_size=64)  # trained on the GPU ...
    on_gpu = net.output(test.features)
    net.to("cpu")  # ... and brought back with its parameters and updater state
    np.testing.assert_allclose(net.output(test.features), on_gpu, rtol=1e-5, atol=1e-6)


@gpu
def test_a_gpu_networks_parameters_are_shared_with_torch_without_a_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch has no CUDA")
    net = Network([Dense(4, 3), Output(3, 2)], SGD(0.1), seed=0, device="cuda")
    view = torch.from_dlpack(net.device_params())
    assert view.numel() == net.num_params
    np.testing.assert_array_equal(view.cpu().numpy(), net.params())
    view.zero_()
    torch.cuda.synchronize()
    assert not net.params().any()  # the network sees what torch wrote


def test_a_cpu_networks_device_params_is_its_buffer():
    net = Network([Output(3, 2)], SGD(0.1))
    assert net.device_params() is net.params()


# -- graph vertex primitives ----------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_and_take_columns_match_numpy_slices(dtype):
    cuda = cuda_module()
    rng = np.random.default_rng(7)
    rows, widths = 37, [3, 1, 12]
    parts = [rng.normal(size=(rows, w)).astype(dtype) for w in widths]
    expected = np.concatenate(parts, axis=1)
    merged = cuda.DeviceBuffer(expected.shape, dtype)
    column = 0
    for part in parts:  # Merge's forward pass
        cuda.copy_columns(cuda.to_device(part), merged, column)
        column += part.shape[1]
    np.testing.assert_array_equal(merged.to_host(), expected)
    column = 0
    for part in parts:  # and its gradient
        taken = cuda.DeviceBuffer(part.shape, dtype)
        cuda.take_columns(merged, column, taken)
        np.testing.assert_array_equal(taken.to_host(), expected[:, column : column + part.shape[1]])
        column += part.shape[1]

    wide = np.full((rows, 9), -1.0, dtype)
    dst = cuda.to_device(wide)
    cuda.copy_columns(cuda.to_device(parts[0]), dst, 4)  # the other columns stay as they were
    wide[:, 4:7] = parts[0]
    np.testing.assert_array_equal(dst.to_host(), wide)
    cuda.copy_columns(cuda.DeviceBuffer((rows, 0), dtype), dst, 9)  # zero-size: nothing to do
    cuda.take_columns(dst, 9, cuda.DeviceBuffer((rows, 0), dtype))
    cuda.copy_columns(cuda.DeviceBuffer((0, 3), dtype), cuda.DeviceBuffer((0, 5), dtype), 2)
    np.testing.assert_array_equal(dst.to_host(), wide)


@gpu
def test_column_copies_refuse_ranges_past_the_width_and_mismatched_buffers():
    cuda = cuda_module()
    src, dst = cuda.DeviceBuffer((4, 3), "float32"), cuda.DeviceBuffer((4, 5), "float32")
    with pytest.raises(ValueError, match=r"copy_columns: columns \[3, 6\) are past dst's width 5"):
        cuda.copy_columns(src, dst, 3)
    with pytest.raises(ValueError, match=r"take_columns: columns \[3, 6\) are past src's width 5"):
        cuda.take_columns(dst, 3, src)
    with pytest.raises(ValueError, match="column must be >= 0, got -1"):
        cuda.copy_columns(src, dst, -1)
    with pytest.raises(ValueError, match="dst has 2 rows but src has 4"):
        cuda.copy_columns(src, cuda.DeviceBuffer((2, 5), "float32"), 0)
    with pytest.raises(ValueError, match="src must be 2-D"):
        cuda.copy_columns(cuda.DeviceBuffer((12,), "float32"), dst, 0)
    with pytest.raises(TypeError, match="dst has dtype float64 but the other buffers have float32"):
        cuda.copy_columns(src, cuda.DeviceBuffer((4, 5), "float64"), 0)
    with pytest.raises(ValueError, match="dst must not share memory with src"):
        cuda.copy_columns(dst.view(0, (4, 2)), dst, 3)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_multiply_and_maximum_match_numpy(dtype):
    cuda = cuda_module()
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(2, 3, 23_337)).astype(dtype)  # any shape, taken flat
    a[0, :4] = [np.nan, 1.0, np.nan, -0.0]
    b[0, :4] = [2.0, np.nan, np.nan, 5.0]
    b[1, 100:200] = a[1, 100:200]  # ties
    a_gpu, b_gpu = cuda.to_device(a), cuda.to_device(b)
    out = cuda.DeviceBuffer(a.shape, dtype)
    cuda.nn_multiply(a_gpu, b_gpu, out)
    np.testing.assert_array_equal(out.to_host(), a * b)  # NaN where numpy has NaN
    cuda.nn_maximum(a_gpu, b_gpu, out)
    np.testing.assert_array_equal(out.to_host(), np.maximum(a, b))
    assert np.isnan(out.to_host()[0, :3]).all()  # NaN propagates from either side

    cuda.nn_multiply(a_gpu, b_gpu, a_gpu)  # out may be a ...
    np.testing.assert_array_equal(a_gpu.to_host(), a * b)
    a_gpu.copy_from_host(a)
    cuda.nn_maximum(a_gpu, b_gpu, a_gpu)
    np.testing.assert_array_equal(a_gpu.to_host(), np.maximum(a, b))
    a_gpu.copy_from_host(a)
    cuda.nn_maximum(a_gpu, b_gpu, b_gpu)  # ... or b
    np.testing.assert_array_equal(b_gpu.to_host(), np.maximum(a, b))

    empty = cuda.DeviceBuffer((0, 3), dtype)
    cuda.nn_multiply(empty, empty, empty)
    cuda.nn_maximum(empty, empty, empty)


@gpu
def test_multiply_and_maximum_refuse_mismatched_buffers():
    cuda = cuda_module()
    a, b = cuda.DeviceBuffer((8,), "float32"), cuda.DeviceBuffer((9,), "float32")
    for kernel in (cuda.nn_multiply, cuda.nn_maximum):
        with pytest.raises(ValueError, match="b has 9 values, the others 8"):
            kernel(a, b, a)
        with pytest.raises(TypeError, match="out has dtype float64 but the other buffers have"):
            kernel(a, a, cuda.DeviceBuffer((8,), "float64"))
        wide = cuda.DeviceBuffer((9,), "float32")
        with pytest.raises(ValueError, match="out must be a or not share memory with it"):
            kernel(wide.view(0, (8,)), a, wide.view(1, (8,)))


def _max_backward_reference(dout, inputs):
    """The gradients of out = max(inputs) by the rule nn_max_backward applies input by input."""
    remaining = np.maximum.reduce(inputs)
    grads = []
    for x in inputs:
        hit = x == remaining
        grads.append(np.where(hit, dout, 0).astype(dout.dtype))
        remaining = np.where(hit, np.nan, remaining)
    return grads


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_backward_gives_each_gradient_to_the_first_maximal_input(dtype):
    cuda = cuda_module()
    rng = np.random.default_rng(9)
    n, m = 211, 37
    inputs = list(rng.normal(size=(3, n, m)).astype(dtype))
    inputs[1][:50] = inputs[0][:50]  # ties between the first two inputs ...
    inputs[2][40:90] = inputs[1][40:90]  # ... between the last two, and in rows 40-49 all three
    dout = rng.normal(size=(n, m)).astype(dtype)
    expected = _max_backward_reference(dout, inputs)

    dout_gpu = cuda.to_device(dout)
    remaining = cuda.to_device(np.maximum.reduce(inputs))  # the graph starts from the max
    for x, want in zip(inputs, expected, strict=True):
        dx = cuda.DeviceBuffer(x.shape, dtype)
        cuda.nn_max_backward(dout_gpu, cuda.to_device(x), remaining, dx)
        np.testing.assert_array_equal(dx.to_host(), want)
    assert np.isnan(remaining.to_host()).all()  # every element's gradient went somewhere once
    total = np.sum(expected, axis=0)
    np.testing.assert_array_equal(total, dout)  # exactly one input got each element's gradient
    tied = expected[0][40:50]
    np.testing.assert_array_equal(tied, dout[40:50])  # a three-way tie: the first input takes it

    empty = cuda.DeviceBuffer((0,), dtype)
    cuda.nn_max_backward(empty, empty, cuda.DeviceBuffer((0,), dtype), empty)


@gpu
def test_max_backward_refuses_aliased_and_mismatched_buffers():
    cuda = cuda_module()
    dout, x, remaining, dx = (cuda.DeviceBuffer((6,), "float64") for _ in range(4))
    with pytest.raises(ValueError, match="remaining must not share memory with dx"):
        cuda.nn_max_backward(dout, x, remaining, remaining)
    with pytest.raises(ValueError, match="dx must not share memory with dout"):
        cuda.nn_max_backward(dout, x, remaining, dout)
    with pytest.raises(ValueError, match="dx has 5 values, the others 6"):
        cuda.nn_max_backward(dout, x, remaining, cuda.DeviceBuffer((5,), "float64"))
    with pytest.raises(TypeError, match="x has dtype float32 but the other buffers have float64"):
        cuda.nn_max_backward(dout, cuda.DeviceBuffer((6,), "float32"), remaining, dx)


# -- recurrent layers ------------------------------------------------------------------------------


def _lstm_step_arrays(dtype, n=37, m=45, t=6, seed=12):
    """Host arrays of one LSTM step: pre-activations, states, a mask with padding at both ends."""
    rng = np.random.default_rng(seed)
    mask = np.ones((n, t), dtype)
    mask[::3, :2] = 0
    mask[1::4, -2:] = 0
    return {
        "gates": rng.normal(size=(n, 4 * m)).astype(dtype),
        "zx": rng.normal(size=(n * t, 4 * m)).astype(dtype),
        "bias": rng.normal(size=4 * m).astype(dtype),
        "mask": mask,
        "c_prev": rng.normal(size=(n, m)).astype(dtype),
        "h_prev": rng.normal(size=(n, m)).astype(dtype),
        "d_out": rng.normal(size=(n * t, m)).astype(dtype),
        "dh_rec": rng.normal(size=(n, m)).astype(dtype),
        "dh_carry": rng.normal(size=(n, m)).astype(dtype),
        "dc": rng.normal(size=(n, m)).astype(dtype),
    }


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("activation", "gate"), [(5, 6), (6, 5), (0, 6)])
@pytest.mark.parametrize("step", [0, 3, 5])
def test_lstm_step_kernels_match_the_cpu(activation, gate, step, dtype):
    cuda = cuda_module()
    host = _lstm_step_arrays(dtype)
    n, w = host["gates"].shape
    m, t = w // 4, host["mask"].shape[1]
    tol = _tolerance(dtype)

    def run(module, to, back):
        arrays = {k: to(v.copy()) for k, v in host.items()}
        made = {
            k: to(np.zeros(shape, dtype))
            for k, shape in (
                ("c", (n, m)),
                ("h", (n, m)),
                ("out", (n * t, m)),
                ("dgates", (n, w)),
                ("dgates_seq", (n * t, w)),
            )
        }
        first = step == 0
        module.nn_lstm_forward_step(
            arrays["gates"],
            arrays["zx"],
            arrays["bias"],
            arrays["mask"],
            None if first else arrays["c_prev"],
            None if first else arrays["h_prev"],
            made["c"],
            made["h"],
            made["out"],
            t,
            step,
            activation,
            gate,
        )
        module.nn_lstm_backward_step(
            arrays["gates"],
            made["c"],
            None if first else arrays["c_prev"],
            arrays["mask"],
            arrays["d_out"],
            arrays["dh_rec"],
            arrays["dh_carry"],
            arrays["dc"],
            made["dgates"],
            made["dgates_seq"],
            t,
            step,
            activation,
            gate,
        )
        names = ("gates", "dh_carry", "dc")
        return {k: back(v) for k, v in {**{k: arrays[k] for k in names}, **made}.items()}

    on_gpu = run(cuda, cuda.to_device, lambda b: b.to_host())
    on_cpu = run(_native, lambda a: a, lambda a: a)
    for name, expected in on_cpu.items():
        np.testing.assert_allclose(on_gpu[name], expected, rtol=tol, atol=tol, err_msg=name)


def _recurrent_batches(dtype, steps=4, n=20, t=9):
    """Sequences of lengths 1..t padded at either end, with per-step labels and masks."""
    rng = np.random.default_rng(8)
    for _ in range(steps):
        lengths = rng.integers(1, t + 1, n)
        first = np.where(rng.random(n) < 0.5, t - lengths, 0)
        steps_ = np.arange(t)
        mask = ((steps_ >= first[:, None]) & (steps_ < (first + lengths)[:, None])).astype(dtype)
        x = (rng.normal(size=(n, 5, t)) * mask[:, None, :]).astype(dtype)
        y = np.eye(3, dtype=dtype)[rng.integers(0, 3, (n, t))].transpose(0, 2, 1)
        yield DataSet(x, y, mask, mask)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("head", ["rnn_output", "last_time_step"])
def test_gpu_lstm_steps_follow_the_cpu_steps(head, dtype, cublas):
    from sparkbatch.nn import LSTM, LastTimeStep, RnnOutput

    def make(device):
        if head == "rnn_output":
            layers = [LSTM(5, 16, l2=1e-3), LSTM(16, 8, dropout=0.1), RnnOutput(8, 3)]
        else:
            layers = [LSTM(5, 16), LastTimeStep(LSTM(16, 8)), Output(8, 3)]
        return Network(layers, Adam(0.01), seed=3, dtype=dtype, device=device)

    cpu, on_gpu = make("cpu"), make("cuda")
    tol = 1e-4 if dtype == "float32" else 1e-10
    for batch in _recurrent_batches(dtype):
        if head == "last_time_step":
            batch = DataSet(batch.features, batch.labels[:, :, -1], batch.features_mask)
        expected = cpu.fit_batch(batch)
        assert on_gpu.fit_batch(batch) == pytest.approx(expected, rel=tol)
    np.testing.assert_allclose(on_gpu.params(), cpu.params(), rtol=tol, atol=tol * 1e-2)
    np.testing.assert_allclose(on_gpu.gradients(), cpu.gradients(), rtol=tol, atol=tol)
    mask = batch.features_mask
    np.testing.assert_allclose(
        on_gpu.output(batch.features, features_mask=mask),
        cpu.output(batch.features, features_mask=mask),
        rtol=tol,
        atol=tol * 1e-2,
    )
    assert on_gpu.score(batch) == pytest.approx(cpu.score(batch), rel=tol)


# -- convolutional layers -------------------------------------------------------------------------

# (n, c, h, w, kh, kw, sh, sw, ph, pw); every case has padding < kernel, so pooling takes them too
CONV_GEOMETRIES = [
    (3, 2, 7, 6, 3, 2, 2, 1, 1, 0),  # non-square kernel, stride 2 down, padding on the rows
    (2, 3, 5, 5, 3, 3, 1, 1, 1, 1),  # "same" 3x3: overlapping windows
    (4, 1, 6, 7, 2, 2, 2, 2, 0, 0),  # a 2x2 pool; the odd last column belongs to no window
    (1, 2, 4, 4, 4, 3, 3, 2, 2, 1),  # windows mostly in the padding
    (64, 8, 16, 16, 3, 3, 1, 1, 1, 1),  # over a million col entries: the grid-stride loops wrap
]


def _conv_out(h, w, kh, kw, sh, sw, ph, pw):
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _windows(x4, kh, kw, sh, sw, ph, pw, fill):
    """[n, c, oh, ow, kh*kw]: each window's pixels, row-major, ``fill`` in the padding."""
    n, c, h, w = x4.shape
    oh, ow = _conv_out(h, w, kh, kw, sh, sw, ph, pw)
    padded = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, x4.dtype)
    padded[:, :, ph : ph + h, pw : pw + w] = x4
    taps = [
        padded[:, :, ky : ky + sh * (oh - 1) + 1 : sh, kx : kx + sw * (ow - 1) + 1 : sw]
        for ky in range(kh)
        for kx in range(kw)
    ]
    return np.stack(taps, axis=-1)


def _scatter_windows(values, shape, kh, kw, sh, sw, ph, pw):
    """The adjoint of _windows: [n, c, h, w] sums of ``values`` [n, c, oh, ow, kh*kw] (float64);
    what lands in the padding is dropped."""
    n, c, h, w = shape
    oh, ow = values.shape[2:4]
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for tap in range(kh * kw):
        ky, kx = divmod(tap, kw)
        padded[:, :, ky : ky + sh * (oh - 1) + 1 : sh, kx : kx + sw * (ow - 1) + 1 : sw] += values[
            ..., tap
        ]
    return padded[:, :, ph : ph + h, pw : pw + w]


def _im2col_reference(x4, *window):
    n, c = x4.shape[:2]
    taps = _windows(x4, *window, fill=0)  # [n, c, oh, ow, T]
    return taps.transpose(0, 2, 3, 1, 4).reshape(n * taps.shape[2] * taps.shape[3], -1)


def _col2im_reference(col, shape, *window):
    n, c, h, w = shape
    kh, kw = window[:2]
    oh, ow = _conv_out(h, w, *window)
    values = col.astype(np.float64).reshape(n, oh, ow, c, kh * kw).transpose(0, 3, 1, 2, 4)
    return _scatter_windows(values, shape, *window)


def _in_image(shape, *window):
    """[1, 1, oh, ow, kh*kw]: which window positions are pixels (not padding)."""
    return _windows(np.ones((1, 1, *shape[2:]), np.int8), *window, fill=0) > 0


def _max_pool_reference(x4, *window):
    return _windows(x4, *window, fill=-np.inf).max(axis=-1)  # a NaN in a window gives NaN


def _max_pool_backward_reference(x4, out4, d_out4, *window):
    """Each window's d_out to its first in-image pixel equal to its max (or, for a NaN max, its
    first NaN)."""
    taps = _windows(x4, *window, fill=0)
    top = out4[..., None]
    hit = _in_image(x4.shape, *window) & ((taps == top) | (np.isnan(taps) & np.isnan(top)))
    first = hit.argmax(axis=-1)
    values = np.zeros(taps.shape)
    np.put_along_axis(values, first[..., None], d_out4[..., None].astype(np.float64), axis=-1)
    return _scatter_windows(values, x4.shape, *window)


def _avg_pool_reference(x4, *window):
    counts = _in_image(x4.shape, *window).sum(axis=-1)
    return _windows(x4.astype(np.float64), *window, fill=0).sum(axis=-1) / counts


def _avg_pool_backward_reference(d_out4, shape, *window):
    counts = _in_image(shape, *window).sum(axis=-1, keepdims=True)
    values = np.broadcast_to(d_out4[..., None] / counts, (*d_out4.shape, counts.shape[-1]))
    return _scatter_windows(values * _in_image(shape, *window), shape, *window)


def _pool_input(rng, shape, dtype):
    """Small integers (ties in most windows), and NaN in one window of the first image."""
    x4 = rng.integers(-2, 3, shape).astype(dtype)
    x4[0, 0, 1, 1] = np.nan
    return x4


def test_the_conv_references_agree_with_the_cpu_kernels():
    """The numpy references that the GPU kernels are held to are checked here against the CPU
    kernels, on every machine (the GPU tests skip where there is none)."""
    if not hasattr(_native, "nn_im2col"):
        pytest.skip("this build has no convolution kernels")
    rng = np.random.default_rng(20)
    for n, c, h, w, *window in CONV_GEOMETRIES[:4]:
        args = (c, h, w, *window)
        oh, ow = _conv_out(h, w, *window)
        x4 = rng.normal(size=(n, c, h, w))
        col = np.empty((n * oh * ow, c * window[0] * window[1]))
        _native.nn_im2col(x4.reshape(n, -1), col, *args)
        np.testing.assert_array_equal(col, _im2col_reference(x4, *window))
        back = np.empty((n, c * h * w))
        _native.nn_col2im(col, back, *args)
        assert_close(back, _col2im_reference(col, x4.shape, *window).reshape(n, -1), np.float64)

        x4 = _pool_input(rng, (n, c, h, w), np.float64)
        out, d_out = np.empty((n, c * oh * ow)), rng.normal(size=(n, c * oh * ow))
        d_in = np.empty((n, c * h * w))
        _native.nn_max_pool(x4.reshape(n, -1), out, *args)
        out4 = out.reshape(n, c, oh, ow)
        np.testing.assert_array_equal(out4, _max_pool_reference(x4, *window))
        _native.nn_max_pool_backward(x4.reshape(n, -1), out, d_out, d_in, *args)
        expected = _max_pool_backward_reference(x4, out4, d_out.reshape(out4.shape), *window)
        assert_close(d_in, expected.reshape(n, -1), np.float64)
        x4 = np.nan_to_num(x4)
        _native.nn_avg_pool(x4.reshape(n, -1), out, *args)
        assert_close(out, _avg_pool_reference(x4, *window).reshape(n, -1), np.float64)
        _native.nn_avg_pool_backward(d_out, d_in, *args)
        expected = _avg_pool_backward_reference(d_out.reshape(out4.shape), x4.shape, *window)
        assert_close(d_in, expected.reshape(n, -1), np.float64)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_im2col_and_col2im_match_numpy(geometry, dtype):
    cuda = cuda_module()
    n, c, h, w, *window = geometry
    args = (c, h, w, *window)
    oh, ow = _conv_out(h, w, *window)
    rng = np.random.default_rng(21)
    x4 = rng.normal(size=(n, c, h, w)).astype(dtype)
    col = cuda.DeviceBuffer((n * oh * ow, c * window[0] * window[1]), dtype)
    cuda.nn_im2col(cuda.to_device(x4.reshape(n, -1)), col, *args)
    np.testing.assert_array_equal(col.to_host(), _im2col_reference(x4, *window))  # copies only

    col_host = rng.normal(size=col.shape).astype(dtype)
    x = cuda.to_device(np.full((n, c * h * w), np.nan, dtype))  # overwritten, not added to
    cuda.nn_col2im(cuda.to_device(col_host), x, *args)
    expected = _col2im_reference(col_host, x4.shape, *window).reshape(n, -1)
    assert_close(x.to_host(), expected, dtype)
    again = cuda.DeviceBuffer(x.shape, dtype)
    cuda.nn_col2im(cuda.to_device(col_host), again, *args)
    np.testing.assert_array_equal(again.to_host(), x.to_host())  # no atomics: deterministic


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last_and_first_are_batched_transposes(dtype):
    cuda = cuda_module()
    rng = np.random.default_rng(22)
    # (n, channels, positions): more tiles than blocks, partial tiles, and single rows/columns
    for n, channels, positions in [(130, 40, 1000), (3, 33, 31), (5, 1, 17), (4, 7, 1), (0, 3, 9)]:
        src = rng.normal(size=(n, channels * positions)).astype(dtype)
        nhwc = cuda.DeviceBuffer((n * positions, channels), dtype)  # as Conv2D's rows
        cuda.nn_channels_last(cuda.to_device(src), nhwc, n, channels, positions)
        expected = src.reshape(n, channels, positions).transpose(0, 2, 1).reshape(-1, channels)
        np.testing.assert_array_equal(nhwc.to_host(), expected)
        back = cuda.DeviceBuffer((n, channels * positions), dtype)
        cuda.nn_channels_first(nhwc, back, n, channels, positions)
        np.testing.assert_array_equal(back.to_host(), src)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_pooling_matches_numpy_with_ties_and_nan(geometry, dtype):
    cuda = cuda_module()
    n, c, h, w, *window = geometry
    args = (c, h, w, *window)
    oh, ow = _conv_out(h, w, *window)
    rng = np.random.default_rng(23)
    x4 = _pool_input(rng, (n, c, h, w), dtype)
    x = cuda.to_device(x4.reshape(n, -1))
    out = cuda.DeviceBuffer((n, c * oh * ow), dtype)
    cuda.nn_max_pool(x, out, *args)
    out4 = out.to_host().reshape(n, c, oh, ow)
    np.testing.assert_array_equal(out4, _max_pool_reference(x4, *window))
    assert np.isnan(out4[0, 0]).any()  # the NaN reached its windows

    d_out = rng.normal(size=(n, c * oh * ow)).astype(dtype)
    d_in = cuda.to_device(np.full((n, c * h * w), np.nan, dtype))
    cuda.nn_max_pool_backward(x, out, cuda.to_device(d_out), d_in, *args)
    expected = _max_pool_backward_reference(x4, out4, d_out.reshape(out4.shape), *window)
    assert_close(d_in.to_host(), expected.reshape(n, -1), dtype)
    sums = d_in.to_host().reshape(n, c, -1).sum(axis=-1, dtype=np.float64)
    assert_close(sums, d_out.reshape(n, c, -1).sum(axis=-1, dtype=np.float64), dtype)  # each once

    x4 = np.nan_to_num(x4) + rng.normal(size=x4.shape).astype(dtype)
    cuda.nn_avg_pool(cuda.to_device(x4.reshape(n, -1)), out, *args)
    assert_close(out.to_host(), _avg_pool_reference(x4, *window).reshape(n, -1), dtype)
    cuda.nn_avg_pool_backward(cuda.to_device(d_out), d_in, *args)
    expected = _avg_pool_backward_reference(d_out.reshape(out4.shape), x4.shape, *window)
    assert_close(d_in.to_host(), expected.reshape(n, -1), dtype)


@gpu
def test_conv_kernels_take_empty_batches():
    cuda = cuda_module()
    args = (2, 5, 5, 3, 3, 2, 2, 1, 1)  # 3x3 outputs, K = 18
    x, col = cuda.DeviceBuffer((0, 50), "float32"), cuda.DeviceBuffer((0, 18), "float32")
    pooled = cuda.DeviceBuffer((0, 18), "float32")
    cuda.nn_im2col(x, col, *args)
    cuda.nn_col2im(col, x, *args)
    cuda.nn_max_pool(x, pooled, *args)
    d_in = cuda.DeviceBuffer((0, 50), "float32")
    cuda.nn_max_pool_backward(x, pooled, cuda.DeviceBuffer((0, 18), "float32"), d_in, *args)
    cuda.nn_avg_pool(x, pooled, *args)
    cuda.nn_avg_pool_backward(pooled, x, *args)
    cuda.synchronize()


@gpu
def test_conv_kernels_refuse_bad_sizes_dtypes_and_aliases():
    cuda = cuda_module()
    args = (2, 5, 5, 3, 3, 2, 2, 1, 1)  # c, h, w, kh, kw, sh, sw, ph, pw: 3x3 outputs, K = 18

    def buf(*shape, dtype="float32"):
        return cuda.DeviceBuffer(shape, dtype)

    x, col, pooled = buf(4, 50), buf(36, 18), buf(4, 18)
    with pytest.raises(ValueError, match=r"col must have shape \[36, 18\], got \[36, 17\]"):
        cuda.nn_im2col(x, buf(36, 17), *args)
    with pytest.raises(ValueError, match=r"x must have shape \[4, 50\], got \[4, 49\]"):
        cuda.nn_col2im(col, buf(4, 49), *args)
    with pytest.raises(ValueError, match=r"out must have shape \[4, 18\]"):
        cuda.nn_max_pool(x, buf(4, 19), *args)
    with pytest.raises(ValueError, match=r"d_out must have shape \[4, 18\]"):
        cuda.nn_max_pool_backward(x, pooled, buf(3, 18), buf(4, 50), *args)
    with pytest.raises(ValueError, match=r"d_out must have shape \[4, 18\]"):
        cuda.nn_avg_pool_backward(buf(4, 17), x, *args)
    with pytest.raises(ValueError, match=r"dst must have shape \[4, 18\]"):
        cuda.nn_channels_last(pooled, buf(4, 17), 4, 2, 9)
    with pytest.raises(TypeError, match="col has dtype float64 but the other buffers have float32"):
        cuda.nn_im2col(x, buf(36, 18, dtype="float64"), *args)
    with pytest.raises(ValueError, match="must not share memory with"):
        cuda.nn_channels_first(pooled, pooled, 4, 9, 2)
    with pytest.raises(ValueError, match="d_in must not share memory with x"):
        cuda.nn_max_pool_backward(x, pooled, buf(4, 18), x, *args)
    with pytest.raises(ValueError, match=r"pooling padding must be below the kernel size"):
        cuda.nn_max_pool(x, pooled, 2, 5, 5, 3, 3, 2, 2, 3, 1)
    with pytest.raises(ValueError, match="a 7x3 window with padding \\(0, 0\\) does not fit a 5x5"):
        cuda.nn_im2col(x, col, 2, 5, 5, 7, 3, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="sh must be >= 1, got 0"):
        cuda.nn_avg_pool(x, pooled, 2, 5, 5, 3, 3, 0, 2, 1, 1)
    with pytest.raises(ValueError, match="ph must be < 2\\^31"):
        cuda.nn_im2col(x, col, 2, 5, 5, 3, 3, 1, 1, 2**40, 0)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cuda_backends_conv_methods_match_the_cpu_backends(dtype, cublas):
    if not hasattr(CpuBackend, "im2col"):
        pytest.skip("this sparkbatch has no convolution kernels")
    n, c, h, w, *window = CONV_GEOMETRIES[0]
    args = (c, h, w, *window)
    oh, ow = _conv_out(h, w, *window)
    rng = np.random.default_rng(24)
    x = rng.normal(size=(n, c * h * w)).astype(dtype)
    d_out = rng.normal(size=(n, c * oh * ow)).astype(dtype)
    results = []
    for backend in (CpuBackend(dtype), CudaBackend(dtype)):
        x_b, d_out_b = backend.from_host(x), backend.from_host(d_out)
        col = backend.empty((n * oh * ow, c * window[0] * window[1]))
        back, out, d_in = backend.empty(x.shape), backend.empty(d_out.shape), backend.empty(x.shape)
        nhwc, nchw = backend.empty(d_out.shape), backend.empty(d_out.shape)
        backend.im2col(x_b, col, *args)
        backend.col2im(col, back, *args)
        backend.channels_last(d_out_b, nhwc, n, c, oh * ow)
        backend.channels_first(nhwc, nchw, n, c, oh * ow)
        got = [backend.to_host(a).copy() for a in (col, back, nhwc, nchw)]
        backend.max_pool(x_b, out, *args)
        backend.max_pool_backward(x_b, out, d_out_b, d_in, *args)
        got += [backend.to_host(out).copy(), backend.to_host(d_in).copy()]
        backend.avg_pool(x_b, out, *args)
        backend.avg_pool_backward(d_out_b, d_in, *args)
        results.append([*got, backend.to_host(out).copy(), backend.to_host(d_in).copy()])
    for on_gpu, on_cpu in zip(results[1], results[0], strict=True):
        assert_close(on_gpu, on_cpu, dtype)


def _conv_network(device, dtype="float64", seed=5):
    from sparkbatch.nn import Conv2D, Flatten, MaxPool2D

    layers = [
        Conv2D(1, 8, 3, padding=1, input_size=(8, 8)),  # 8x8x8
        MaxPool2D(2),  # 8x4x4
        Conv2D(8, 16, (3, 2), stride=(2, 1), padding=(1, 0), activation="tanh"),  # 16x2x3
        Flatten(),
        Dense(16 * 2 * 3, 32, "relu"),
        Output(32, 10, "softmax", "cross_entropy"),
    ]
    return Network(layers, Adam(3e-3), seed=seed, dtype=dtype, device=device)


def _digit_images(dtype):
    train, test = _digits()
    return (
        DataSet(train.features.reshape(-1, 1, 8, 8).astype(dtype), train.labels.astype(dtype)),
        DataSet(test.features.reshape(-1, 1, 8, 8).astype(dtype), test.labels.astype(dtype)),
    )


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_cnn_steps_follow_the_cpu_steps(dtype, cublas):
    import sparkbatch.nn

    if not hasattr(sparkbatch.nn, "Conv2D"):
        pytest.skip("this sparkbatch has no convolutional layers")
    train, _ = _digit_images(dtype)
    cpu, on_gpu = _conv_network("cpu", dtype), _conv_network("cuda", dtype)
    np.testing.assert_array_equal(on_gpu.params(), cpu.params())
    tol = 1e-4 if dtype == "float32" else 1e-10
    for start in range(0, 5 * 32, 32):
        batch = DataSet(train.features[start : start + 32], train.labels[start : start + 32])
        expected = cpu.fit_batch(batch)
        assert on_gpu.fit_batch(batch) == pytest.approx(expected, rel=tol)
    np.testing.assert_allclose(on_gpu.gradients(), cpu.gradients(), rtol=tol, atol=tol)
    np.testing.assert_allclose(on_gpu.params(), cpu.params(), rtol=tol, atol=tol * 1e-2)
    np.testing.assert_allclose(
        on_gpu.output(train.features[:50]), cpu.output(train.features[:50]), rtol=tol, atol=tol
    )


@gpu
def test_a_gpu_cnn_learns_digits(cublas):
    import sparkbatch.nn

    if not hasattr(sparkbatch.nn, "Conv2D"):
        pytest.skip("this sparkbatch has no convolutional layers")
    train, test = _digit_images("float32")
    net = _conv_network("cuda", "float32")
    net.fit(train.shuffle(1), epochs=15, batch_size=32)
    evaluation = net.evaluate(test)
    assert evaluation.accuracy() >= 0.95, evaluation.stats()
