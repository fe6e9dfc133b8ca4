"""The native kernels of the built-in network against numpy references, edge values included.

These kernels are loops around the element-wise functions of ``csrc/nn_math.hpp``, which the
CUDA module shares, so these tests check the GPU's arithmetic too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparkbatch import _native
from sparkbatch.nn import ACTIVATIONS, LOSSES

DTYPES = [np.float32, np.float64]
EDGES = [-1e4, -80.0, -3.0, -1e-40, 0.0, 1e-40, 0.5, 3.0, 80.0, 1e4]
ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


# math.erf per element: the reference needs no scipy, which the sanitizer's environment lacks.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return np.where(
        x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x)))
    )


def _reference(name, x, alpha):
    with np.errstate(over="ignore", under="ignore"):
        if name == "identity":
            return x, np.ones_like(x)
        if name == "relu":
            return np.maximum(x, 0), (x > 0).astype(x.dtype)
        if name == "leaky_relu":
            return np.where(x > 0, x, alpha * x), np.where(x > 0, 1, alpha).astype(x.dtype)
        if name == "elu":
            y = np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
            return y, np.where(x > 0, 1, y + alpha).astype(x.dtype)
        if name == "gelu":
            cdf = (0.5 * (1 + _erf(x / np.sqrt(2)))).astype(x.dtype)
            return x * cdf, cdf + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
        if name == "tanh":
            y = np.tanh(x)
            return y, 1 - y * y
        if name == "sigmoid":
            y = _sigmoid(x)
            return y, y * (1 - y)
        if name == "softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True), None
    raise AssertionError(name)


def _inputs(dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.array(EDGES), rng.normal(0, 3, 30)]).astype(dtype)
    return x.reshape(5, 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_forward_and_gradient_match_numpy(name, dtype):
    z = _inputs(dtype)
    bias = np.linspace(-0.5, 0.5, 8).astype(dtype)
    expected_z = z + bias
    alpha = ALPHA.get(name, 0.0)
    y_ref, grad_ref = _reference(name, expected_z.astype(np.float64), alpha)
    a = np.empty_like(z)
    _native.nn_bias_activation(z, bias, a, ACTIVATIONS[name], alpha)
    np.testing.assert_array_equal(z, expected_z)  # z now holds the pre-activation
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(a, y_ref, rtol=tol * 10, atol=tol)
    assert np.isfinite(a).all()

    rng = np.random.default_rng(1)
    da = rng.normal(size=z.shape).astype(dtype)
    da[0] = 0  # zero gradients stay zero
    dz = np.empty_like(z)
    db = np.empty(8, dtype)
    _native.nn_activation_backward(da, z, a, dz, db, ACTIVATIONS[name], alpha)
    if name == "softmax":
        a64 = a.astype(np.float64)
        grad_ref_dz = a64 * (da - (da * a64).sum(axis=1, keepdims=True))
    else:
        grad_ref_dz = da * grad_ref
    np.testing.assert_allclose(dz, grad_ref_dz, rtol=tol * 100, atol=tol * 10)
    np.testing.assert_allclose(db, dz.sum(axis=0), rtol=tol * 100, atol=tol * 10)
    assert (dz[0] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_is_stable_for_huge_logits(dtype):
    z = np.array([[1e4, 0, -1e4], [-1e4, -1e4 + 1, -1e4 + 2], [0, 0, 0]], dtype)
    y = np.eye(3, dtype=dtype)[[1, 2, 0]]
    a, dz, db = np.empty_like(z), np.empty_like(z), np.empty(3, dtype)
    zin = z.copy()
    loss = _native.nn_output_layer(
        LOSSES["cross_entropy"], ACTIVATIONS["softmax"], 0.0, zin, None, y, None, a, dz, db, 1 / 3
    )
    z64 = z.astype(np.float64)
    lse = z64.max(axis=1) + np.log(np.exp(z64 - z64.max(axis=1, keepdims=True)).sum(axis=1))
    expected = -(y * (z64 - lse[:, None])).sum()
    assert loss == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(dz, (a - y) / 3, atol=1e-7)
    assert np.isfinite(a).all() and np.isfinite(dz).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_binary_cross_entropy_is_stable_for_huge_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0, 30.0, -30.0, 1e-40]], dtype)
    y = np.array([[0, 1, 1, 1, 0, 0]], dtype)
    a, dz = np.empty_like(z), np.empty_like(z)
    loss = _native.nn_output_layer(
        LOSSES["xent"], ACTIVATIONS["sigmoid"], 0.0, z.copy(), None, y, None, a, dz, None, 1.0
    )
    z64 = z.astype(np.float64)
    expected = (np.maximum(z64, 0) - z64 * y + np.log1p(np.exp(-np.abs(z64)))).sum()
    assert loss == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(dz, _sigmoid(z64) - y, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_regression_losses_with_per_example_weights(loss, dtype):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(6, 3)).astype(dtype)
    y = rng.normal(size=(6, 3)).astype(dtype)
    y[0, 0] = z[0, 0]  # MAE's gradient at zero error is zero
    w = np.array([1, 0, 1, 0.5, 1, 2], dtype)
    a, dz, db = np.empty_like(z), np.empty_like(z), np.empty(3, dtype)
    bias = np.zeros(3, dtype)
    total = _native.nn_output_layer(
        LOSSES[loss], ACTIVATIONS["identity"], 0.0, z.copy(), bias, y, w, a, dz, db, 0.25
    )
    d = (z - y).astype(np.float64)
    terms = d * d / 3 if loss == "mse" else np.abs(d) / 3
    grads = 2 * d / 3 if loss == "mse" else np.sign(d) / 3
    assert total == pytest.approx((w[:, None] * terms).sum(), rel=1e-6)
    np.testing.assert_allclose(dz, 0.25 * w[:, None] * grads, rtol=1e-6)
    assert dz[0, 0] == 0 and (dz[1] == 0).all()
    score = _native.nn_loss_sum(LOSSES[loss], ACTIVATIONS["identity"], a, a, y, w)
    assert score == pytest.approx(total, rel=1e-6)


def _numpy_step(name, p, g, state, lr, t=1):
    p, state = p.astype(np.float64), state.astype(np.float64)
    if name == "sgd":
        return p - lr * g, state
    if name in ("momentum", "nesterov"):
        v = 0.9 * state - lr * g
        return (p + v if name == "momentum" else p + 1.9 * v - 0.9 * state), v
    if name == "adam":
        n = p.size
        m = 0.9 * state[:n] + 0.1 * g
        v = 0.999 * state[n:] + 0.001 * g * g
        step = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        return p - step * m / (np.sqrt(v) + 1e-8), np.concatenate([m, v])
    if name == "rmsprop":
        s = 0.95 * state + 0.05 * g * g
        return p - lr * g / (np.sqrt(s) + 1e-8), s
    raise AssertionError(name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("name", "code", "per_param"),
    [("sgd", 0, 0), ("momentum", 1, 1), ("nesterov", 2, 1), ("adam", 3, 2), ("rmsprop", 4, 1)],
)
@pytest.mark.parametrize("size", [37, 300_001])  # serial, and split over the thread pool
def test_updater_steps_match_numpy(name, code, per_param, dtype, size):
    rng = np.random.default_rng(3)
    p = rng.normal(size=size).astype(dtype)
    g = rng.normal(size=size).astype(dtype)
    g[:5] = 0  # zero gradients
    g[5] = 1e-40  # a denormal
    state = np.abs(rng.normal(size=size * per_param)).astype(dtype)
    expected_p, expected_state = _numpy_step(name, p, g.astype(np.float64), state, 0.01, t=3)
    step = 0.01 * np.sqrt(1 - 0.999**3) / (1 - 0.9**3) if name == "adam" else 0.01
    _native.nn_updater_step(code, p, g, state, step, momentum=0.9)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p, expected_p, rtol=tol, atol=tol)
    np.testing.assert_allclose(state, expected_state, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("size", [10, 300_001])
def test_average_of_k_buffers_matches_numpy(k, dtype, size):
    rng = np.random.default_rng(k)
    buffers = [rng.normal(size=size).astype(dtype) for _ in range(k)]
    out = np.empty(size, dtype)
    _native.nn_average(buffers, out)
    tol = 1e-6 if dtype == np.float32 else 1e-14  # float32 sums of k values round k times
    np.testing.assert_allclose(
        out, np.mean(np.stack(buffers).astype(np.float64), axis=0), rtol=tol, atol=tol
    )
    # in place into the first buffer, and a sum built with add_into averages the same
    acc = buffers[0].copy()
    for b in buffers[1:]:
        _native.nn_add_into(acc, b)
    np.testing.assert_allclose(acc / k, out, rtol=tol, atol=tol)
    _native.nn_average(buffers, buffers[0])
    np.testing.assert_array_equal(buffers[0], out)


def _sum_in_order(buffers, dtype):
    """numpy's sum of the buffers in buffer order, rounded to dtype at every addition."""
    total = buffers[0].copy()
    for b in buffers[1:]:
        np.add(total, b, out=total)
    return total


@pytest.mark.parametrize("dtype", DTYPES)
# one element; one past the kernel's 16 KiB blocks (4096 float32, 2048 float64), with a
# ragged end; and past the 131072 values of work from which the pool splits it
@pytest.mark.parametrize("size", [1, 4099, 150_001])
def test_average_has_the_bits_of_a_sum_in_buffer_order_then_one_division(dtype, size):
    # mean_at's arithmetic, which the CUDA kernel shares: the blocked CPU kernel must keep it
    rng = np.random.default_rng(size)
    # magnitudes from 1e-3 to 1e3, so that another order of the additions rounds differently
    scale = 10.0 ** rng.integers(-3, 4, size=(9, size))
    buffers = list((rng.normal(size=(9, size)) * scale).astype(dtype))
    reordered = 0
    for k in range(1, 10):
        total = _sum_in_order(buffers[:k], dtype)
        out = np.empty(size, dtype)
        _native.nn_average(buffers[:k], out)
        np.testing.assert_array_equal(out, total / dtype(k), err_msg=f"k={k}")
        _native.nn_average(buffers[:k], out, 2.5)
        np.testing.assert_array_equal(out, total / dtype(2.5), err_msg=f"k={k}, divisor 2.5")
        # into one of its own buffers (the middle one), and the same buffer twice
        inplace = [b.copy() for b in buffers[:k]]
        _native.nn_average(inplace, inplace[k // 2])
        np.testing.assert_array_equal(inplace[k // 2], total / dtype(k), err_msg=f"k={k}")
        twice = [buffers[0], *buffers[: k - 1]]
        _native.nn_average(twice, out)
        np.testing.assert_array_equal(out, _sum_in_order(twice, dtype) / dtype(k))
        if size > 1:
            reversed_sum = _sum_in_order(buffers[:k][::-1], dtype)
            reordered += int((reversed_sum != total).any())
    assert reordered > 0 or size == 1  # the data tells the orders apart: these tests can fail


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_into_adds_in_place_over_odd_sizes(dtype):
    rng = np.random.default_rng(7)
    for size in (1, 5, 4099, 150_001):
        acc, x = rng.normal(size=(2, size)).astype(dtype)
        expected = acc + x
        _native.nn_add_into(acc, x)
        np.testing.assert_array_equal(acc, expected, err_msg=f"size {size}")
    same = np.arange(7, dtype=dtype)
    _native.nn_add_into(same, same)  # a buffer added to itself doubles
    np.testing.assert_array_equal(same, 2 * np.arange(7, dtype=dtype))


def test_axpy_and_dropout():
    y = np.ones(1000, np.float32)
    _native.nn_axpy(y, np.full(1000, 2, np.float32), 0.5)
    assert (y == 2).all()
    x = np.ones(100_000, np.float32)
    _native.nn_dropout(x, 0.25, 42)
    kept = x != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(x[kept], 1 / 0.75)
    again = np.ones(100_000, np.float32)
    _native.nn_dropout(again, 0.25, 42)
    np.testing.assert_array_equal(again, x)  # the mask is a function of (seed, index)
    other = np.ones(100_000, np.float32)
    _native.nn_dropout(other, 0.25, 43)
    assert (other != x).any()


def test_kernels_refuse_what_they_would_have_to_copy():
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        _native.nn_bias_activation(z.astype(np.int32), None, z, 0)
    with pytest.raises(TypeError, match="other arrays have float32"):
        _native.nn_bias_activation(z, None, z.astype(np.float64), 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.nn_bias_activation(np.zeros((3, 2), np.float32).T, None, z, 0)
    readonly = np.zeros((2, 3), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _native.nn_bias_activation(z, None, readonly, 0)
    with pytest.raises(ValueError, match=r"bias must have shape \[3\]"):
        _native.nn_bias_activation(z, np.zeros(2, np.float32), z, 0)
    with pytest.raises(ValueError, match="unknown activation code 99"):
        _native.nn_bias_activation(z, None, z, 99)
    with pytest.raises(ValueError, match="state has 6 values, expected 12"):
        _native.nn_updater_step(3, z, z.copy(), z.copy(), 0.1)
    with pytest.raises(ValueError, match="separate buffers"):
        _native.nn_updater_step(3, z, z, np.zeros(12, np.float32), 0.1)
    labels = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="must not share memory"):
        _native.nn_output_layer(0, 7, 0.0, z, None, labels, None, z, z.copy(), None, 1.0)
    with pytest.raises(ValueError, match="needs the pre-activation"):
        _native.nn_activation_backward(z, None, z, z, None, ACTIVATIONS["relu"])


def test_average_divides_a_sum_by_the_number_of_contributors():
    # the distributed master sums worker buffers by tree aggregation, then divides once
    total = np.array([3.0, 6.0, -9.0], np.float32)
    params = np.empty(3, np.float32)
    _native.nn_average([total], params, 3)
    np.testing.assert_array_equal(params, [1, 2, -3])
    with pytest.raises(ValueError, match="divisor must be > 0"):
        _native.nn_average([total], params, 0)


# --- first_non_finite: the one check behind every NaN/infinity test of training --------------

# Sizes around the kernel's 4096-value blocks, and past the million values from which the pool
# splits the work.
FINITE_SIZES = [1, 4095, 4096, 4097, 70_001, (1 << 20) + 4099]


def _finite_values(size, dtype):
    info = np.finfo(dtype)
    edges = np.array([0.0, -0.0, info.max, -info.max, info.tiny, info.smallest_subnormal, 1.0])
    return np.resize(edges.astype(dtype), size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", FINITE_SIZES)
def test_first_non_finite_finds_the_first_nan_or_infinity(dtype, size):
    x = _finite_values(size, dtype)
    assert _native.first_non_finite(x) == -1  # extremes, subnormals and -0.0 are finite
    negative_nan = np.array([np.nan], dtype) * -1
    places = sorted({0, 4095 % size, 4096 % size, size // 2, size - 1})
    for value in (np.nan, np.inf, -np.inf, negative_nan[0]):
        for place in places:
            y = x.copy()
            y[place] = value
            y[-1] = np.nan  # a later one does not hide the first
            assert _native.first_non_finite(y) == place


@pytest.mark.parametrize("dtype", DTYPES)
def test_first_non_finite_gives_flat_indices_and_takes_empty_and_nd_arrays(dtype):
    assert _native.first_non_finite(np.zeros(0, dtype)) == -1
    x = np.zeros((3, 4, 5), dtype)
    x[2, 1, 3] = np.inf
    assert _native.first_non_finite(x) == np.ravel_multi_index((2, 1, 3), x.shape)
    readonly = np.zeros(5, dtype)
    readonly.flags.writeable = False  # only read
    assert _native.first_non_finite(readonly) == -1


def test_first_non_finite_refuses_other_dtypes_and_strided_arrays():
    with pytest.raises(TypeError, match="x must be float32 or float64, got int32"):
        _native.first_non_finite(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="float16"):
        _native.first_non_finite(np.zeros(3, np.float16))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _native.first_non_finite(np.zeros((4, 4), np.float32)[:, ::2])


def test_bfloat16_kernels_round_to_nearest_even_keep_nans_and_widen_exactly():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 50_001, dtype=np.uint64).astype(np.uint32)  # every pattern
    x = np.concatenate(
        [
            bits.view(np.float32),
            np.array([1 + 2**-8, 1 + 3 * 2**-8, -np.inf, np.inf, 3.4e38, -0.0], np.float32),
        ]
    )
    wire = np.empty(x.size, np.uint16)
    _native.bfloat16_encode(x, wire)
    # Reference: add 0x7FFF plus the kept part's lowest bit, keep the upper half (NaNs apart).
    u = x.view(np.uint32).astype(np.uint64)
    expected = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    expected[nan] = (u[nan] >> 16).astype(np.uint16) | 0x40
    np.testing.assert_array_equal(wire, expected)
    assert nan.any() and np.array_equal(np.isnan(_widened(wire)), nan)  # NaNs stay NaNs
    np.testing.assert_array_equal(wire[-6:], [0x3F80, 0x3F82, 0xFF80, 0x7F80, 0x7F80, 0x8000])
    acc = np.full(x.size, 0.5, np.float32)
    _native.bfloat16_add_into(acc, wire)
    np.testing.assert_array_equal(acc, np.float32(0.5) + _widened(wire))
    # The fused step of a ring's reduce-scatter: the same sum, then the same rounding.
    fused, fused_wire = np.full(x.size, 0.5, np.float32), np.empty(x.size, np.uint16)
    _native.bfloat16_add_encode(fused, wire, fused_wire)
    np.testing.assert_array_equal(fused.view(np.uint32), acc.view(np.uint32))
    expected_wire = np.empty(x.size, np.uint16)
    _native.bfloat16_encode(acc, expected_wire)
    np.testing.assert_array_equal(fused_wire, expected_wire)
    with pytest.raises(TypeError, match="uint16"):
        _native.bfloat16_encode(x, np.empty(x.size, np.int32))
    with pytest.raises(ValueError, match="values"):
        _native.bfloat16_decode(wire[:3], np.empty(4, np.float32))


def _widened(wire: np.ndarray) -> np.ndarray:
    out = np.empty(wire.size, np.float32)
    _native.bfloat16_decode(wire, out)
    np.testing.assert_array_equal(out.view(np.uint32), wire.astype(np.uint32) << 16)
    return out
