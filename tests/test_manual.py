"""Checks of jaxcnn.manual (the report's Task 2 by hand) and of experiments.manual_conv."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxcnn.errors import ConfigError, ShapeError
from jaxcnn.manual import (
    conv_layer,
    conv_layer_loop,
    convolution,
    convolution_loop,
    maxpool,
    maxpool_loop,
    resolve_activation,
)

# The report's worked example (Task 2, sections 2.2, 2.4 and 2.7).
X = np.array([[56, 250, 116, 0], [0, 240, 144, 0], [0, 198, 150, 0], [0, 143, 241, 0]])
K = np.array([[-0.5, -0.5, -0.5], [1.0, 1.0, 1.0], [-0.5, -0.5, -0.5]])
CONV = [[-1, 27], [-36, -36]]
LAYER_B100_RELU = [[99, 127], [64, 64]]
POOL = [[250, 144], [198, 241]]

MNIST = Path(__file__).resolve().parents[1] / "jaxcnn" / "_data" / "mnist.npz"

SETTINGS = settings(max_examples=40, deadline=None)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ the report's numbers


@pytest.mark.parametrize("conv", [convolution, convolution_loop])
def test_convolution_gives_the_reports_numbers(conv):
    np.testing.assert_array_equal(np.asarray(conv(X, K)), CONV)


@pytest.mark.parametrize("activation", ["relu", jax.nn.relu])
@pytest.mark.parametrize("layer", [conv_layer, conv_layer_loop])
def test_conv_layer_gives_the_reports_numbers(layer, activation):
    if layer is conv_layer_loop and activation is jax.nn.relu:
        activation = lambda z: max(0.0, z)  # noqa: E731  (the report's scalar relu)
    np.testing.assert_array_equal(np.asarray(layer(X, K, 100, activation)), LAYER_B100_RELU)


def test_conv_layer_default_activation_is_relu():
    np.testing.assert_array_equal(np.asarray(conv_layer(X, K, 100)), LAYER_B100_RELU)
    np.testing.assert_array_equal(np.asarray(conv_layer_loop(X, K, 100)), LAYER_B100_RELU)


@pytest.mark.parametrize("pool", [maxpool, maxpool_loop])
def test_maxpool_gives_the_reports_numbers(pool):
    np.testing.assert_array_equal(np.asarray(pool(X)), POOL)


def test_the_patch_is_from_the_first_four_of_the_mnist_training_set():
    """The report's X is rows 12..15, cols 12..15 (1-based) of its R matrix for a "4".

    That matrix is MNIST training image 2 (0-based; the first "4", label 4) rotated 90 degrees
    clockwise, the layout R code uses so that image() draws the digit upright. The upright image
    itself contains the patch only rotated (rows 14..17, columns 12..15, 1-based).
    """
    with np.load(MNIST, allow_pickle=False) as f:
        x_train, y_train = f["x_train"], f["y_train"]
    assert int(y_train[2]) == 4
    assert int(np.flatnonzero(y_train == 4)[0]) == 2  # the first "4"
    in_report_layout = np.rot90(x_train, -1, axes=(1, 2))  # every image rotated clockwise
    hits = np.flatnonzero((in_report_layout[:, 11:15, 11:15] == X).all(axis=(1, 2)))
    assert hits.tolist() == [2]
    # Not in the upright image at that place: the rotation is needed.
    assert not np.array_equal(x_train[2, 11:15, 11:15], X)
    np.testing.assert_array_equal(x_train[2, 13:17, 11:15], np.rot90(X, 1))

    from experiments.manual_conv import PATCH, REPORT_INDEX, report_layout, upright

    assert REPORT_INDEX == 2
    np.testing.assert_array_equal(report_layout(x_train[2])[PATCH], X)
    np.testing.assert_array_equal(upright(report_layout(x_train[2])), x_train[2])


# ------------------------------------------------------------------ lax == loop reference


@st.composite
def conv_cases(draw):
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    kh = draw(st.integers(1, h))
    kw = draw(st.integers(1, w))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = _rng(seed)
    x = rng.uniform(-3, 3, (h, w)).astype(np.float32)
    k = rng.uniform(-2, 2, (kh, kw)).astype(np.float32)
    b = np.float32(rng.uniform(-3, 3))
    return x, k, b


@SETTINGS
@given(conv_cases())
def test_convolution_equals_loop_reference(case):
    x, k, _ = case
    out = convolution(x, k)
    assert out.shape == (x.shape[0] - k.shape[0] + 1, x.shape[1] - k.shape[1] + 1)
    np.testing.assert_allclose(np.asarray(out), convolution_loop(x, k), rtol=1e-5, atol=1e-4)


@SETTINGS
@given(conv_cases(), st.sampled_from(["relu", "linear", None, "callable"]))
def test_conv_layer_equals_loop_reference(case, activation):
    x, k, b = case
    if activation == "callable":
        lax_act, loop_act = jnp.tanh, np.tanh
    else:
        lax_act = loop_act = activation
    np.testing.assert_allclose(
        np.asarray(conv_layer(x, k, b, lax_act)),
        conv_layer_loop(x, k, b, loop_act),
        rtol=1e-5,
        atol=1e-4,
    )


@st.composite
def pool_cases(draw):
    size = draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.integers(1, 4)))
    h = draw(st.integers(size, 11))
    w = draw(st.integers(size, 11))
    seed = draw(st.integers(0, 2**32 - 1))
    x = _rng(seed).uniform(-5, 5, (h, w)).astype(np.float32)
    return x, size, stride


@SETTINGS
@given(pool_cases())
def test_maxpool_equals_loop_reference(case):
    x, size, stride = case
    out = maxpool(x, size, stride)
    s = size if stride is None else stride
    assert out.shape == ((x.shape[0] - size) // s + 1, (x.shape[1] - size) // s + 1)
    np.testing.assert_array_equal(np.asarray(out), maxpool_loop(x, size, stride))


@pytest.mark.parametrize("shape", [(5, 5), (7, 4), (4, 9), (28, 28), (27, 13)])
def test_maxpool_2x2_drops_odd_last_row_and_column_like_the_report(shape):
    x = _rng(0).uniform(0, 1, shape).astype(np.float32)
    out = maxpool(x)  # 2x2, stride 2
    assert out.shape == (shape[0] // 2, shape[1] // 2)
    # Changing the dropped last row/column changes nothing.
    y = x.copy()
    if shape[0] % 2:
        y[-1, :] = 100.0
    if shape[1] % 2:
        y[:, -1] = 100.0
    np.testing.assert_array_equal(np.asarray(maxpool(y)), np.asarray(out))
    np.testing.assert_array_equal(np.asarray(out), maxpool_loop(x))


def test_maxpool_keeps_integer_dtype_and_convolution_computes_in_float():
    x = X.astype(np.uint8)
    pooled = maxpool(x)
    assert pooled.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(pooled), POOL)
    out = convolution(x, K.astype(np.float32))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), CONV)
    assert convolution(x, np.ones((2, 2), np.int32)).dtype == jnp.float32


# ------------------------------------------------------------------ batched NHWC / HWIO


@st.composite
def batched_cases(draw):
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 7))
    w = draw(st.integers(1, 7))
    c_in = draw(st.integers(1, 3))
    c_out = draw(st.integers(1, 3))
    kh = draw(st.integers(1, h))
    kw = draw(st.integers(1, w))
    rng = _rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-2, 2, (n, h, w, c_in)).astype(np.float32)
    k = rng.uniform(-1, 1, (kh, kw, c_in, c_out)).astype(np.float32)
    b = rng.uniform(-1, 1, (c_out,)).astype(np.float32)
    return x, k, b


@SETTINGS
@given(batched_cases())
def test_batched_conv_layer_equals_per_image_loop(case):
    x, k, b = case
    n, h, w, c_in = x.shape
    kh, kw, _, c_out = k.shape
    want = np.zeros((n, h - kh + 1, w - kw + 1, c_out))
    for i in range(n):
        for co in range(c_out):
            acc = sum(convolution_loop(x[i, :, :, ci], k[:, :, ci, co]) for ci in range(c_in))
            want[i, :, :, co] = np.maximum(acc + b[co], 0.0)
    got = conv_layer(x, k, b, "relu")
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
    # A scalar bias is also accepted.
    np.testing.assert_allclose(
        np.asarray(conv_layer(x, k, 0.5, None)), np.asarray(convolution(x, k)) + 0.5, atol=1e-5
    )


@SETTINGS
@given(batched_cases(), st.integers(1, 3))
def test_batched_maxpool_equals_per_image_loop(case, size):
    x, _, _ = case
    if size > min(x.shape[1], x.shape[2]):
        size = 1
    got = np.asarray(maxpool(x, size))
    for i in range(x.shape[0]):
        for c in range(x.shape[3]):
            np.testing.assert_array_equal(got[i, :, :, c], maxpool_loop(x[i, :, :, c], size))


# ------------------------------------------------------------------ parity with Flax


@SETTINGS
@given(batched_cases())
def test_convolution_equals_flax_conv(case):
    x, k, _ = case
    layer = nn.Conv(features=k.shape[3], kernel_size=k.shape[:2], padding="VALID",
                    use_bias=False)
    want = layer.apply({"params": {"kernel": jnp.asarray(k)}}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(convolution(x, k)), np.asarray(want),
                               rtol=1e-5, atol=1e-5)


@SETTINGS
@given(batched_cases())
def test_maxpool_equals_flax_max_pool(case):
    x, _, _ = case
    if min(x.shape[1], x.shape[2]) < 2:
        x = np.concatenate([x, x], axis=1)
        x = np.concatenate([x, x], axis=2)
    want = nn.max_pool(jnp.asarray(x), window_shape=(2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(np.asarray(maxpool(x, 2, 2)), np.asarray(want))


def test_the_reports_patch_through_flax_conv():
    x = jnp.asarray(X, jnp.float32)[None, :, :, None]
    k = jnp.asarray(K, jnp.float32)[:, :, None, None]
    layer = nn.Conv(features=1, kernel_size=(3, 3), padding="VALID", use_bias=False)
    out = layer.apply({"params": {"kernel": k}}, x)
    np.testing.assert_array_equal(np.asarray(out[0, :, :, 0]), CONV)


# ------------------------------------------------------------------ gradients


def test_convolution_gradients_match_finite_differences():
    rng = _rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (6, 5)), jnp.float32)
    k = jnp.asarray(rng.uniform(-1, 1, (3, 2)), jnp.float32)
    check_grads(convolution, (x, k), order=1, modes=["fwd", "rev"], eps=1e-2,
                atol=1e-2, rtol=1e-2)
    xb = jnp.asarray(rng.uniform(-1, 1, (2, 5, 4, 2)), jnp.float32)
    kb = jnp.asarray(rng.uniform(-1, 1, (2, 3, 2, 3)), jnp.float32)
    check_grads(convolution, (xb, kb), order=1, modes=["rev"], eps=1e-2, atol=1e-2, rtol=1e-2)


def test_kernel_gradient_is_the_sum_of_the_blocks():
    """d/dK sum(convolution(X, K)) = sum of the blocks under the kernel (from the loop)."""
    x = X.astype(np.float32)
    g = jax.grad(lambda k: convolution(x, k).sum())(jnp.asarray(K, jnp.float32))
    want = sum(x[i:i + 3, j:j + 3] for i in range(2) for j in range(2))
    np.testing.assert_allclose(np.asarray(g), want)
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


def test_conv_layer_gradient_is_zero_where_relu_is_off():
    x = jnp.asarray(X, jnp.float32)
    k = jnp.asarray(K, jnp.float32)
    # With b = 0, relu is off at the three negative outputs (-1, -36, -36) and on at 27.
    gb = jax.grad(lambda b: conv_layer(x, k, b, "relu").sum())(jnp.float32(0.0))
    assert float(gb) == 1.0
    gx = jax.grad(lambda x: conv_layer(x, k, 0.0, "relu").sum())(x)
    # Only the output at (0, 1) is on: the gradient is K on the block it sees, zero elsewhere.
    want = np.zeros((4, 4), np.float32)
    want[0:3, 1:4] = K
    np.testing.assert_array_equal(np.asarray(gx), want)


def test_maxpool_gradient_is_one_at_each_window_maximum():
    x = jnp.asarray(_rng(2).permutation(35).reshape(5, 7), jnp.float32)  # distinct values
    g = np.asarray(jax.grad(lambda x: maxpool(x).sum())(x))
    xn = np.asarray(x)
    want = np.zeros_like(xn)
    for i in range(2):
        for j in range(3):
            block = xn[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            r, c = np.unravel_index(np.argmax(block), block.shape)
            want[2 * i + r, 2 * j + c] = 1.0
    np.testing.assert_array_equal(g, want)
    assert not g[-1, :].any() and not g[:, -1].any()  # the dropped row and column
    check_grads(lambda x: maxpool(x), (x,), order=1, modes=["rev"], eps=1e-2)


# ------------------------------------------------------------------ jit and vmap


def test_functions_work_under_jit():
    x = jnp.asarray(X, jnp.float32)
    k = jnp.asarray(K, jnp.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(convolution)(x, k)), CONV)
    layer = jax.jit(conv_layer, static_argnames="activation")
    np.testing.assert_array_equal(np.asarray(layer(x, k, 100.0, activation="relu")),
                                  LAYER_B100_RELU)
    np.testing.assert_array_equal(np.asarray(jax.jit(maxpool, static_argnums=(1, 2))(x, 2, 2)),
                                  POOL)
    grad = jax.jit(jax.grad(lambda k: conv_layer(x, k, 100.0).sum()))(k)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_functions_work_under_vmap():
    rng = _rng(3)
    xs = rng.uniform(-2, 2, (4, 7, 6)).astype(np.float32)
    k = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
    conv = jax.vmap(convolution, in_axes=(0, None))(xs, k)
    layer = jax.vmap(lambda x: conv_layer(x, k, 0.25, "relu"))(xs)
    pooled = jax.vmap(maxpool)(xs)
    assert conv.shape == (4, 5, 4) and layer.shape == (4, 5, 4) and pooled.shape == (4, 3, 3)
    for i in range(4):
        np.testing.assert_allclose(np.asarray(conv[i]), convolution_loop(xs[i], k), atol=1e-4)
        np.testing.assert_allclose(np.asarray(layer[i]), conv_layer_loop(xs[i], k, 0.25),
                                   atol=1e-4)
        np.testing.assert_array_equal(np.asarray(pooled[i]), maxpool_loop(xs[i]))
    # vmapped 2-D equals the batched NHWC form.
    batched = convolution(xs[..., None], k[:, :, None, None])[..., 0]
    np.testing.assert_allclose(np.asarray(conv), np.asarray(batched), atol=1e-5)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("fn", [convolution, convolution_loop])
def test_kernel_larger_than_input_is_a_clear_error(fn):
    with pytest.raises(ShapeError, match=r"kernel 5x5 does not fit a 4x4 input: with valid "
                       r"padding the output would be 0x0.*at most 4x4 or pad the input"):
        fn(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(ShapeError, match=r"kernel 2x6 does not fit a 4x4 input.*would be 3x0"):
        fn(np.zeros((4, 4)), np.zeros((2, 6)))


def test_kernel_larger_than_batched_input():
    with pytest.raises(ShapeError, match=r"kernel 4x3 does not fit a 3x8 input"):
        convolution(np.zeros((2, 3, 8, 1)), np.zeros((4, 3, 1, 1)))


def test_errors_are_raised_while_tracing_under_jit():
    with pytest.raises(ShapeError, match="does not fit"):
        jax.jit(convolution)(jnp.zeros((4, 4)), jnp.zeros((5, 5)))


@pytest.mark.parametrize(
    "x_shape, k_shape, match",
    [
        ((4,), (3, 3), r"must be a 2-D image \(H, W\) or a 4-D batch.*rank 1"),
        ((4, 4, 1), (3, 3), r"got shape \(4, 4, 1\) \(rank 3\).*x\[None\]"),
        ((1, 1, 4, 4, 1), (3, 3), r"rank 5"),
        ((4, 4), (3, 3, 1, 1), r"2-D input of shape \(4, 4\) needs a 2-D kernel"),
        ((1, 4, 4, 1), (3, 3), r"4-D input .* needs a 4-D kernel \(kh, kw, C_in, C_out\)"),
        ((4, 4), (0, 3), r"at least 1x1"),
    ],
)
def test_wrong_rank_is_a_clear_error(x_shape, k_shape, match):
    with pytest.raises(ShapeError, match=match):
        convolution(np.zeros(x_shape), np.zeros(k_shape))


def test_loop_reference_takes_2d_only():
    with pytest.raises(ShapeError, match=r"must be a 2-D image \(H, W\); got shape"):
        convolution_loop(np.zeros((1, 4, 4, 1)), np.zeros((3, 3, 1, 1)))
    with pytest.raises(ShapeError, match=r"must be a 2-D image"):
        maxpool_loop(np.zeros((1, 4, 4, 1)))


def test_channel_mismatch_is_a_clear_error():
    with pytest.raises(ShapeError, match=r"channel mismatch: .* expects C_in=3 .* has 1"):
        convolution(np.zeros((2, 5, 5, 1)), np.zeros((3, 3, 3, 8)))


def test_bias_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(ShapeError, match=r"bias must be a scalar or shape \(8,\)"):
        conv_layer(np.zeros((2, 5, 5, 3)), np.zeros((3, 3, 3, 8)), np.zeros(3))
    with pytest.raises(ShapeError, match=r"bias must be a scalar .* got shape \(2,\)"):
        conv_layer(X, K, np.zeros(2))
    with pytest.raises(ShapeError, match=r"must be a scalar"):
        conv_layer_loop(X, K, np.zeros(2))


@pytest.mark.parametrize("layer", [conv_layer, conv_layer_loop])
def test_unknown_activation_is_a_config_error(layer):
    with pytest.raises(ConfigError, match=r"unknown activation 'swish': use one of "
                       r"\['linear', 'relu'\]"):
        layer(X, K, 0.0, "swish")
    with pytest.raises(ConfigError, match=r"activation must be a callable"):
        layer(X, K, 0.0, 3)


def test_activation_names():
    assert resolve_activation("relu") is jax.nn.relu
    assert resolve_activation("ReLU") is jax.nn.relu
    assert resolve_activation(None)(-2.0) == -2.0
    assert resolve_activation("linear")(-2.0) == -2.0
    np.testing.assert_array_equal(np.asarray(conv_layer(X, K, 0.0, None)), CONV)


@pytest.mark.parametrize("pool", [maxpool, maxpool_loop])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, r"pool size must be a positive integer \(1 or more\); got 0"),
        ({"size": -2}, r"pool size must be a positive integer"),
        ({"size": 2, "stride": 0}, r"pool stride must be a positive integer"),
        ({"size": 2.0}, r"pool size must be a positive integer; got 2.0"),
        ({"size": True}, r"pool size must be a positive integer"),
    ],
)
def test_bad_pool_size_or_stride_is_a_config_error(pool, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pool(X, **kwargs)


@pytest.mark.parametrize("pool", [maxpool, maxpool_loop])
def test_pool_window_larger_than_input_is_a_shape_error(pool):
    with pytest.raises(ShapeError, match=r"a 5x5 pool window does not fit a 4x4 input"):
        pool(X, 5)


# ------------------------------------------------------------------ the experiment


def test_experiment_writes_every_figure_and_prints_the_reports_numbers(tmp_path, capsys):
    from experiments import manual_conv

    out = tmp_path / "figs"
    written = manual_conv.main(["--out", str(out)])
    printed = capsys.readouterr().out

    assert set(written) == set(manual_conv.FILES)
    for key, name in manual_conv.FILES.items():
        path = out / name
        assert written[key] == path
        assert path.is_file() and path.stat().st_size > 1000, path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path

    assert "MNIST training image 2 (label 4)" in printed
    assert "[[56, 250, 116, 0], [0, 240, 144, 0], [0, 198, 150, 0], [0, 143, 241, 0]]" in printed
    assert "Kernel K: [[-0.5, -0.5, -0.5], [1, 1, 1], [-0.5, -0.5, -0.5]]" in printed
    assert "convolution(X, K) = [[-1, 27], [-36, -36]]" in printed
    assert "conv_layer(X, K, b=100, relu) = [[99, 127], [64, 64]]" in printed
    assert "maxpool(X) = [[250, 144], [198, 241]]" in printed
    assert "agree with the plain-loop references: yes" in printed


@pytest.mark.parametrize("index", ["60000", "-1"])
def test_experiment_rejects_an_index_out_of_range(tmp_path, capsys, index):
    from experiments import manual_conv

    with pytest.raises(SystemExit) as exc:
        manual_conv.main(["--out", str(tmp_path / "x"), "--index", index])
    assert exc.value.code == 2
    assert "out of range" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_experiment_help_lists_the_flags(capsys):
    from experiments import manual_conv

    with pytest.raises(SystemExit) as exc:
        manual_conv.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--index", "--bias"):
        assert flag in text
