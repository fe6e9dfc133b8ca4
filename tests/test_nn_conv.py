"""Convolutional layers: the native kernels against plain numpy references, gradient checks of
Conv2D, MaxPool2D, AvgPool2D and Flatten in small networks (float64), configuration and file
round trips, the shape errors, a small CNN on scikit-learn's 8x8 digits, and (where PyTorch is
installed) Conv2D against torch.nn.functional.conv2d."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from tests.gradient_check import assert_gradients

from sparkbatch import _native
from sparkbatch.data import DataSet
from sparkbatch.nn import (
    SGD,
    Adam,
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    Graph,
    MaxPool2D,
    Network,
    Output,
    flat_model,
)
from sparkbatch.nn.backend import CpuBackend
from sparkbatch.nn.conv import resolve_sizes

# (kh, kw, sh, sw, ph, pw): stride 1 and 2, padding 0 and 1, non-square kernels
WINDOWS = [
    (3, 3, 1, 1, 0, 0),
    (3, 2, 2, 1, 1, 0),
    (2, 3, 2, 2, 1, 1),
    (1, 1, 1, 1, 0, 0),
    (2, 2, 2, 2, 0, 0),
]
DTYPES = [np.float32, np.float64]
N, C, H, W = 2, 3, 5, 6


def _out(h, w, kh, kw, sh, sw, ph, pw):
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _windows(padded, kh, kw, sh, sw, oh, ow):
    """Per (ky, kx), row-major: the [n, c, oh, ow] values each window holds there."""
    return [
        (ky, kx, padded[:, :, ky : ky + sh * (oh - 1) + 1 : sh, kx : kx + sw * (ow - 1) + 1 : sw])
        for ky in range(kh)
        for kx in range(kw)
    ]


def ref_im2col(x, c, h, w, kh, kw, sh, sw, ph, pw):
    n = x.shape[0]
    oh, ow = _out(h, w, kh, kw, sh, sw, ph, pw)
    padded = np.pad(x.reshape(n, c, h, w), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = np.empty((n, oh, ow, c, kh, kw), x.dtype)
    for ky, kx, part in _windows(padded, kh, kw, sh, sw, oh, ow):
        col[..., ky, kx] = part.transpose(0, 2, 3, 1)
    return col.reshape(n * oh * ow, c * kh * kw)


def ref_col2im(col, n, c, h, w, kh, kw, sh, sw, ph, pw):
    oh, ow = _out(h, w, kh, kw, sh, sw, ph, pw)
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), col.dtype)
    col6 = col.reshape(n, oh, ow, c, kh, kw)
    for ky, kx, part in _windows(padded, kh, kw, sh, sw, oh, ow):
        part += col6[..., ky, kx].transpose(0, 3, 1, 2)
    return padded[:, :, ph : ph + h, pw : pw + w].reshape(n, -1)


def ref_pool(x, kind, c, h, w, kh, kw, sh, sw, ph, pw):
    n = x.shape[0]
    oh, ow = _out(h, w, kh, kw, sh, sw, ph, pw)
    pad = ((0, 0), (0, 0), (ph, ph), (pw, pw))
    if kind == "max":
        padded = np.pad(x.reshape(n, c, h, w), pad, constant_values=-np.inf)
        parts = [p for _, _, p in _windows(padded, kh, kw, sh, sw, oh, ow)]
        return np.max(np.stack(parts), axis=0).reshape(n, -1)  # np.max propagates NaN
    padded = np.pad(x.reshape(n, c, h, w), pad)
    ones = np.pad(np.ones((1, 1, h, w), x.dtype), pad)
    total = sum(p for _, _, p in _windows(padded, kh, kw, sh, sw, oh, ow))
    count = sum(p for _, _, p in _windows(ones, kh, kw, sh, sw, oh, ow))
    return (total / count).reshape(n, -1)


def ref_max_pool_backward(x, out, d_out, c, h, w, kh, kw, sh, sw, ph, pw):
    n = x.shape[0]
    oh, ow = _out(h, w, kh, kw, sh, sw, ph, pw)
    pad = ((0, 0), (0, 0), (ph, ph), (pw, pw))
    padded = np.pad(x.reshape(n, c, h, w), pad, constant_values=-np.inf)
    grads = np.zeros(padded.shape, x.dtype)
    m = out.reshape(n, c, oh, ow)
    g = d_out.reshape(n, c, oh, ow)
    found = np.zeros(m.shape, bool)
    for (_, _, part), (_, _, target) in zip(
        _windows(padded, kh, kw, sh, sw, oh, ow),
        _windows(grads, kh, kw, sh, sw, oh, ow),
        strict=True,
    ):
        hit = ((part == m) | (np.isnan(part) & np.isnan(m))) & ~found
        target += np.where(hit, g, 0)
        found |= hit
    return grads[:, :, ph : ph + h, pw : pw + w].reshape(n, -1)


def ref_avg_pool_backward(d_out, n, c, h, w, kh, kw, sh, sw, ph, pw):
    oh, ow = _out(h, w, kh, kw, sh, sw, ph, pw)
    pad = ((0, 0), (0, 0), (ph, ph), (pw, pw))
    ones = np.pad(np.ones((1, 1, h, w), d_out.dtype), pad)
    count = sum(p for _, _, p in _windows(ones, kh, kw, sh, sw, oh, ow))
    g = d_out.reshape(n, c, oh, ow) / count
    grads = np.zeros((n, c, h + 2 * ph, w + 2 * pw), d_out.dtype)
    for _, _, target in _windows(grads, kh, kw, sh, sw, oh, ow):
        target += g
    return grads[:, :, ph : ph + h, pw : pw + w].reshape(n, -1)


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_im2col_and_col2im_match_numpy(window, dtype):
    rng = np.random.default_rng(0)
    args = (C, H, W, *window)
    oh, ow = _out(H, W, *window)
    x = rng.normal(size=(N, C * H * W)).astype(dtype)
    col = np.full((N * oh * ow, C * window[0] * window[1]), np.nan, dtype)
    _native.nn_im2col(x, col, *args)
    np.testing.assert_array_equal(col, ref_im2col(x, *args))
    back = np.full_like(x, np.nan)
    grads = rng.normal(size=col.shape).astype(dtype)
    _native.nn_col2im(grads, back, *args)
    np.testing.assert_allclose(back, ref_col2im(grads, N, *args), **_tol(dtype))
    # col2im is im2col's adjoint: <im2col(x), g> == <x, col2im(g)>
    np.testing.assert_allclose(
        np.vdot(col.astype(np.float64), grads), np.vdot(x.astype(np.float64), back), rtol=1e-5
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_transposes(dtype):
    x = np.random.default_rng(1).normal(size=(3, 4 * 7)).astype(dtype)
    last = np.empty_like(x)
    _native.nn_channels_last(x, last, 3, 4, 7)
    np.testing.assert_array_equal(last.reshape(3, 7, 4), x.reshape(3, 4, 7).transpose(0, 2, 1))
    first = np.empty_like(x)
    _native.nn_channels_first(last, first, 3, 4, 7)
    np.testing.assert_array_equal(first, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [(H, W), (4, 6)])  # 4x6: 2x2 windows of stride 2 tile it
@pytest.mark.parametrize("window", [w for w in WINDOWS if w[4] < w[0] and w[5] < w[1]])
def test_pooling_matches_numpy(window, size, dtype):
    rng = np.random.default_rng(2)
    h, w = size
    args = (C, h, w, *window)
    oh, ow = _out(h, w, *window)
    # small integers: many ties, which must go to the first position of the window
    x = rng.integers(0, 3, size=(N, C * h * w)).astype(dtype)
    x[0, 7] = np.nan  # propagates through max pooling
    out = np.empty((N, C * oh * ow), dtype)
    _native.nn_max_pool(x, out, *args)
    expected = ref_pool(x, "max", *args)
    np.testing.assert_array_equal(out, expected)
    assert np.isnan(out).any()
    d_out = rng.normal(size=out.shape).astype(dtype)
    d_in = np.full_like(x, np.nan)
    _native.nn_max_pool_backward(x, out, d_out, d_in, *args)
    np.testing.assert_allclose(d_in, ref_max_pool_backward(x, out, d_out, *args), **_tol(dtype))
    # every window's gradient lands once (none lost, none doubled)
    np.testing.assert_allclose(d_in.sum(dtype=np.float64), d_out.sum(dtype=np.float64), rtol=1e-5)

    x = rng.normal(size=x.shape).astype(dtype)
    _native.nn_avg_pool(x, out, *args)
    np.testing.assert_allclose(out, ref_pool(x, "avg", *args), **_tol(dtype))
    _native.nn_avg_pool_backward(d_out, d_in, *args)
    np.testing.assert_allclose(d_in, ref_avg_pool_backward(d_out, N, *args), **_tol(dtype))


def test_kernels_refuse_wrong_sizes_and_dtypes():
    x = np.zeros((2, 3 * 5 * 6), np.float32)
    with pytest.raises(ValueError, match=r"col must have shape \[24, 27\], got \[24, 26\]"):
        _native.nn_im2col(x, np.zeros((24, 26), np.float32), 3, 5, 6, 3, 3, 1, 1, 0, 0)
    with pytest.raises(TypeError, match="col has dtype float64"):
        _native.nn_im2col(x, np.zeros((24, 27)), 3, 5, 6, 3, 3, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="padding must be below the kernel"):
        _native.nn_max_pool(x, np.zeros((2, 90), np.float32), 3, 5, 6, 2, 2, 1, 1, 2, 0)
    with pytest.raises(ValueError, match="does not fit"):
        _native.nn_im2col(x, np.zeros((2, 1), np.float32), 3, 5, 6, 7, 3, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="dst must not share memory with src"):
        _native.nn_channels_last(x, x, 2, 3, 30)
    # C-contiguous but not aligned (np.frombuffer at an odd offset): refused, never read
    odd = np.frombuffer(bytearray(4 * 180 + 1), np.float32, count=180, offset=1).reshape(2, 90)
    with pytest.raises(ValueError, match="x must be aligned to its item size"):
        _native.nn_im2col(odd, np.zeros((24, 27), np.float32), 3, 5, 6, 3, 3, 1, 1, 0, 0)
    with pytest.raises(ValueError, match=r"ph must be in \[0, 2\^31\), got 1099511627776"):
        _native.nn_im2col(x, np.zeros((2, 1), np.float32), 3, 5, 6, 3, 3, 1, 1, 2**40, 0)


# -- layers in networks ---------------------------------------------------------------------------


def _check(net: Network, x: np.ndarray, k: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    y = np.eye(k)[rng.integers(0, k, x.shape[0])]
    assert_gradients(net, DataSet(x, y), step=1e-6, max_relative_error=1e-5)


def test_conv_with_padding_and_stride_gradients():
    net = Network(
        [
            Conv2D(
                2, 3, (3, 2), stride=2, padding=1, activation="tanh", l2=0.01, input_size=(5, 6)
            ),
            Conv2D(3, 2, 2, activation="sigmoid", dropout=0.2),  # its d_in runs col2im
            Flatten(),
            Output(2 * 2 * 3, 3),
        ],
        SGD(0.1),
        seed=1,
        dtype="float64",
    )
    assert net.layers[1].input_shape == (3, 3, 4)
    x = np.random.default_rng(2).normal(size=(3, 2, 5, 6))
    _check(net, x, 3)


@pytest.mark.parametrize(
    "pool",
    [MaxPool2D(2), MaxPool2D((3, 2), stride=1, padding=1), AvgPool2D(2, stride=1, padding=1)],
)
def test_pooling_gradients(pool):
    net = Network(
        [
            Conv2D(1, 2, 3, padding=1, activation="identity", input_size=(4, 5)),
            pool,
            Flatten(),
            Dense(pool.with_input((2, 4, 5)).n_out, 4, "tanh"),
            Output(4, 2),
        ],
        SGD(0.1),
        seed=3,
        dtype="float64",
    )
    _check(net, np.random.default_rng(4).normal(size=(3, 1, 4, 5)), 2)


def test_round_trips_and_save_load(tmp_path):
    net = Network(
        [
            Conv2D(1, 2, (3, 2), stride=(1, 2), padding=(1, 0), input_size=(6, 6)),
            AvgPool2D(2),
            MaxPool2D(1),
            Flatten(),
            Output(2 * 3 * 1, 3),
        ],
        Adam(0.01),
        seed=5,
    )
    config = net.to_config()
    assert config["layers"][1] == {
        "type": "AvgPool2D",
        "kernel": [2, 2],
        "stride": [2, 2],
        "padding": [0, 0],
        "input_size": [6, 3],
        "channels": 2,
    }
    again = Network.from_config(net.to_json())
    # numpy integers for sizes are taken as ints (json.dumps refuses numpy's)
    numpy_sizes = Conv2D(np.int64(1), np.int64(2), 3, input_size=(4, 4))
    assert type(numpy_sizes.in_channels) is int and type(numpy_sizes.out_channels) is int
    assert type(MaxPool2D(2, channels=np.int64(2)).channels) is int
    assert again.to_config() == config and again.layers == net.layers
    net.save(str(tmp_path / "cnn.safetensors"))
    loaded = Network.load(str(tmp_path / "cnn.safetensors"))
    x = np.random.default_rng(6).normal(size=(4, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.output(x), net.output(x))
    np.testing.assert_array_equal(net.output(x.reshape(4, 36)), net.output(x))
    odd = np.frombuffer(bytearray(x.nbytes + 1), np.float32, count=x.size, offset=1)
    odd = odd.reshape(x.shape)
    odd.setflags(write=True)
    odd[...] = x  # features that are not aligned are copied for the native kernels
    np.testing.assert_array_equal(net.output(odd), net.output(x))
    copy = pickle.loads(pickle.dumps(net))  # how SparkNetwork ships a model to executors
    np.testing.assert_array_equal(copy.output(x), net.output(x))


def test_inference_passes_bound_the_work_arrays(monkeypatch):
    # the CNN of docs/convolution.md: 4096 images of 3x32x32 per pass would be ~4.7 GiB of work
    # arrays; output(), evaluate() and score() take fewer examples per pass by default
    layers = [
        Conv2D(3, 32, 3, padding=1, input_size=(32, 32)),
        MaxPool2D(2),
        Conv2D(32, 64, 3, padding=1),
        MaxPool2D(2),
        Flatten(),
        Dense(64 * 8 * 8, 128),
        Output(128, 10),
    ]
    per_example = sum(
        np.prod(shape)
        for layer in resolve_sizes(layers)
        for shape in layer.work_shapes(1).values()
        if isinstance(shape, tuple)
    )
    rows = Network(layers)._inference_rows()
    assert rows < 4096 and rows * per_example <= flat_model.INFERENCE_WORK

    # the passes of a smaller bound: 3 examples each, the same outputs and score
    def small() -> Network:
        return Network([Conv2D(1, 2, 3, input_size=(4, 4)), Flatten(), Output(8, 2)], seed=0)

    x = np.random.default_rng(0).normal(size=(7, 1, 4, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 1, 0, 0]]
    whole, score = small().output(x, batch_size=7), small().score(DataSet(x, y))
    each = sum(
        np.prod(s)
        for layer in small().layers
        for s in layer.work_shapes(1).values()
        if isinstance(s, tuple)
    )
    monkeypatch.setattr(flat_model, "INFERENCE_WORK", 3 * each)
    net = small()
    np.testing.assert_allclose(net.output(x), whole, rtol=1e-6)
    np.testing.assert_allclose(net.score(DataSet(x, y)), score, rtol=1e-6)
    assert {key[0] for key in net._engine._workspaces} == {3, 1}


def test_shape_errors():
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2D\): Conv2D has in_channels=3 but its "):
        Network([Conv2D(1, 2, 3, input_size=(5, 5)), Conv2D(3, 2, 3), Flatten(), Output(2, 2)])
    with pytest.raises(ValueError, match=r"3x3 window .* does not fit a 2x2 input image"):
        Network([Conv2D(1, 2, 3, input_size=(4, 4)), Conv2D(2, 2, 3), Flatten(), Output(2, 2)])
    with pytest.raises(ValueError, match=r"padding \(2, 2\) must be below the kernel \(2, 2\)"):
        MaxPool2D(2, padding=2)
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D\) needs the size of its input image"):
        Network([Conv2D(1, 2, 3), Flatten(), Output(2, 2)])
    with pytest.raises(ValueError, match=r"layer 2 \(MaxPool2D\) needs .* layer 1 \(Flatten\)"):
        Network([Conv2D(1, 2, 1, input_size=(2, 2)), Flatten(), MaxPool2D(2), Output(2, 2)])
    with pytest.raises(ValueError, match=r"layer 1 \(MaxPool2D\) takes images of shape"):
        Network(
            [
                Conv2D(1, 2, 1, input_size=(4, 4)),
                MaxPool2D(2, input_size=(4, 4), channels=3),
                Flatten(),
                Output(12, 2),
            ]
        )
    # a size given to a pool or Flatten that the layer before contradicts is not overridden
    with pytest.raises(ValueError, match=r"layer 1 \(MaxPool2D\): .*input_size=\(8, 8\) but"):
        Network([Conv2D(1, 2, 1, input_size=(4, 4)), MaxPool2D(2, input_size=(8, 8)), Output(8, 2)])
    with pytest.raises(ValueError, match=r"layer 2 \(Flatten\): .*channels=3, .* \(2, 2, 2\)"):
        Network(
            [Conv2D(1, 2, 1, input_size=(4, 4)), MaxPool2D(2), Flatten(channels=3), Output(8, 2)]
        )
    with pytest.raises(ValueError, match="layer 2 has n_out=8 but layer 3 has n_in=9"):
        Network([Conv2D(1, 2, 1, input_size=(4, 4)), MaxPool2D(2), Flatten(), Output(9, 2)])
    net = Network([Conv2D(1, 2, 3, input_size=(4, 4)), Flatten(), Output(8, 2)])
    with pytest.raises(ValueError, match=r"must have shape \[n, 1, 4, 4\] .* got \(3, 2, 4, 2\)"):
        net.output(np.zeros((3, 2, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"or \[n, 16\]"):
        net.output(np.zeros((3, 16, 1), np.float32))
    # a Graph passes no sizes on: its spatial layers need them given
    with pytest.raises(ValueError, match="Conv2D does not know the size of its input image"):
        Graph(["in"], {"c": (Conv2D(1, 2, 3), "in"), "out": (Output(8, 2), "c")}, ["out"])
    graph = Graph(
        ["in"],
        {"c": (Conv2D(1, 2, 3, input_size=(4, 4)), "in"), "out": (Output(8, 2), "c")},
        ["out"],
    )
    assert graph.output(np.zeros((3, 16), np.float32))[0].shape == (3, 2)


def test_small_cnn_learns_digits():
    # sklearn's 8x8 digits (1797 images), trained in memory: at least 0.97 on a held-out quarter
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [n, 1, 8, 8]
    y = np.eye(10, dtype=np.float32)[digits.target]
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1347], order[1347:]
    net = Network(
        [
            Conv2D(1, 16, 3, padding=1, input_size=(8, 8)),
            MaxPool2D(2),
            Flatten(),
            Dense(16 * 4 * 4, 64),
            Output(64, 10),
        ],
        Adam(0.003),
        seed=0,
    )
    net.fit(DataSet(x[train], y[train]), epochs=15, batch_size=32)
    assert net.evaluate(DataSet(x[test], y[test])).accuracy() >= 0.97


def test_conv2d_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    layer = Conv2D(
        2, 3, (3, 2), stride=(2, 1), padding=(1, 1), activation="identity", input_size=(5, 4)
    )
    backend = CpuBackend("float64")
    n = 2
    weights = rng.normal(size=(3, 2 * 3 * 2))
    bias = rng.normal(size=3)
    params = {"W": weights, "b": bias}
    work = {}
    for key, shape in layer.work_shapes(n).items():
        work[key] = np.empty(shape) if isinstance(shape, tuple) else shape
    for key, value in list(work.items()):
        if isinstance(value, str):
            work[key] = work[value]
    x = rng.normal(size=(n, layer.n_in))
    out = layer.forward(backend, params, x, work, None).copy()
    d_out = rng.normal(size=out.shape)
    grads = {"W": np.empty_like(weights), "b": np.empty_like(bias)}
    d_in = np.empty_like(x)
    layer.backward(backend, params, grads, work, d_out.copy(), d_in, None)

    tx = torch.tensor(x.reshape(n, 2, 5, 4), requires_grad=True)
    tw = torch.tensor(weights.reshape(3, 2, 3, 2), requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    expected = torch.nn.functional.conv2d(tx, tw, tb, stride=(2, 1), padding=(1, 1))
    np.testing.assert_allclose(out, expected.detach().numpy().reshape(n, -1), rtol=1e-12)
    expected.backward(torch.tensor(d_out.reshape(expected.shape)))
    np.testing.assert_allclose(grads["W"], tw.grad.numpy().reshape(3, -1), rtol=1e-10)
    np.testing.assert_allclose(grads["b"], tb.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(d_in, tx.grad.numpy().reshape(n, -1), rtol=1e-10)
