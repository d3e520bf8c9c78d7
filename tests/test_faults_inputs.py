"""Issue 17 (1, 5, 14) and issue 15's hints: bad input to the library gets a one-line error
before anything compiles, never a silent wrong result or a raw NumPy/JAX traceback.

* NaN or infinite pixels, at every entry point (``fit`` on training and validation data,
  ``evaluate``, ``predict``): a ``ShapeError`` naming the first bad index.
* Why jitted ``model.apply`` turned a NaN pixel into finite logits (XLA:CPU's YNNPACK max
  reduction ignores NaN) and the fix in ``jaxcnn.layers.max_pool``.
* One-hot labels holding NaN, ragged lists, ``validation_data=(x,)``, ``EarlyStopping(patience=None)``,
  bad seeds; learning rates given as NumPy scalars.
* Channels-first input and float pixels above 1 (issue 15).
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import checks, data, layers
from jaxcnn.errors import ConfigError, ShapeError


@pytest.fixture(scope="module")
def mnist64():
    ds = data.load("mnist").limit(64)
    return data.to_float(ds.x_train), ds.y_train


@pytest.fixture(scope="module")
def state():
    return jaxcnn.create_train_state(jaxcnn.get_model("mnist_cnn"), (28, 28, 1))


def _with(x, index, value):
    x = np.array(x, copy=True)
    x[index] = value
    return x


# --------------------------------------------------------------------------- 1. NaN/Inf pixels


def test_nan_or_inf_pixels_are_refused_by_fit_on_train_and_validation_data(mnist64):
    x, y = mnist64
    model = jaxcnn.get_model("mnist_cnn")
    with pytest.raises(ShapeError, match=r"^x holds NaN at index \(5, 3, 7, 0\) \(1 image holds NaN or infinite values\); "
                       r"the model needs finite inputs: fix or drop those, e\.g\. keep = np\.isfinite\(x\)"):
        jaxcnn.fit(model, _with(x, (5, 3, 7, 0), np.nan), y, verbose=0)
    # The validation split's images are checked too (they were evaluated to a finite val_loss).
    bad = _with(_with(x, (60, 0, 0, 0), np.inf), (61, 1, 1, 0), -np.inf)
    with pytest.raises(ShapeError, match=r"^x holds inf at index \(60, 0, 0, 0\) \(2 images hold NaN or infinite values\)"):
        jaxcnn.fit(model, bad, y, validation_split=0.2, verbose=0)
    with pytest.raises(ShapeError, match=r"^validation x holds NaN at index \(2, 27, 27, 0\) .*np\.isfinite\(x_val\)"):
        jaxcnn.fit(model, x, y, validation_data=(_with(x[:8], (2, 27, 27, 0), np.nan), y[:8]), verbose=0)


def test_nan_or_inf_pixels_are_refused_by_evaluate_and_predict(state, mnist64):
    x, y = mnist64
    with pytest.raises(ShapeError, match=r"^x holds NaN at index \(3, 14, 14, 0\)"):
        jaxcnn.evaluate(state, _with(x, (3, 14, 14, 0), np.nan), y)
    with pytest.raises(ShapeError, match=r"^x holds inf at index \(0, 0, 0, 0\) \(1 image holds"):
        jaxcnn.predict(state, np.full((1, 28, 28, 1), np.inf, np.float32), output="probs")
    with pytest.raises(ShapeError, match=r"^x holds NaN at index \(1, 0, 0, 0\)"):
        jaxcnn.predict(state, _with(x[:2], (1, 0, 0, 0), np.nan))


def test_check_finite_scans_in_slices_and_names_the_first_bad_value():
    x = np.zeros((2 * checks._CHUNK + 5, 2, 2, 1), np.float32)  # three slices
    checks.check_finite(x, "x")  # all finite: no error
    x[2 * checks._CHUNK + 3, 1, 0, 0] = -np.inf
    x[-1, 0, 0, 0] = np.nan
    with pytest.raises(ShapeError, match=rf"^x holds -inf at index \({2 * checks._CHUNK + 3}, 1, 0, 0\) \(2 images hold"):
        checks.check_finite(x, "x")
    checks.check_finite(np.full((3, 2, 2, 1), 255, np.uint8), "x")  # integers are finite


def _mnist_logits(variables, x):
    return jaxcnn.get_model("mnist_cnn").apply(variables, x)


def test_jitted_mnist_cnn_keeps_a_nan_pixel_nan_as_eager_does():
    """The report of issue 17.1: eager model.apply gave NaN logits for an image with one NaN
    pixel, jax.jit(model.apply) finite ones. XLA:CPU hands max-reductions of 4,096 elements and
    more to YNNPACK, whose max ignores NaN (an all-NaN window becomes -inf, a ReLU fused in front
    turns NaN into 0). max_pool now says NaN itself, on every backend."""
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    x[0, 5, 7, 0] = np.nan  # one pixel
    x[1] = np.inf  # a whole image
    x[2, 10:14, 10:14, 0] = np.nan  # a patch
    variables = jaxcnn.get_model("mnist_cnn").init(jax.random.key(0), x[3:])
    eager = np.asarray(_mnist_logits(variables, x))
    jitted = np.asarray(jax.jit(_mnist_logits)(variables, x))
    for out in (eager, jitted):
        assert np.isnan(out[:3]).all(axis=1).all() and np.isfinite(out[3]).all()
    np.testing.assert_allclose(jitted[3], eager[3], rtol=1e-5, atol=1e-6)


class _DropoutPoolNet(nn.Module):
    """A user's model: a plain ReLU, 2x2 pooling, dropout, no BatchNorm."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(layers.Conv2D(8, 3)(x))
        x = layers.MaxPool2D(2)(x)
        x = layers.Dropout(0.5)(x, train=train)
        return layers.Dense(10)(layers.Flatten()(x))


# The first case failed before the fix; overlapping windows (lax.reduce_window, which XLA keeps
# for itself) and small inputs kept NaN all along and pin that they still do.
@pytest.mark.parametrize("shape, pool, strides", [((2, 26, 26, 32), 2, None), ((2, 26, 26, 32), 3, 2), ((1, 6, 6, 2), 2, None)])
def test_max_pool_gives_nan_for_a_window_with_nan_like_numpy(shape, pool, strides):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x[0, 1, 1, 0] = np.nan
    x[-1, 2:4, 2:4, 1] = np.nan  # a whole 2x2 window: XLA:CPU gave -inf
    out = np.asarray(jax.jit(lambda a: layers.max_pool(jax.nn.relu(a), pool, strides))(x))
    s = strides or pool
    windows = np.lib.stride_tricks.sliding_window_view(np.maximum(x, 0), (pool, pool), axis=(1, 2))[:, ::s, ::s]
    want = windows.max(axis=(-2, -1))  # NumPy's max: NaN wins
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(out[~np.isnan(out)], want[~np.isnan(want)])


def test_a_users_model_with_pool_and_dropout_keeps_nan_under_jit():
    model = _DropoutPoolNet()
    x = np.random.default_rng(2).random((2, 20, 20, 1)).astype(np.float32)  # 2x18x18x8 = 5,184 pooled values
    variables = model.init(jax.random.key(0), x)
    x[0, 9, 9, 0] = np.nan
    out = np.asarray(jax.jit(lambda v, a: model.apply(v, a, train=True, rngs={"dropout": jax.random.key(1)}))(variables, x))
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


def test_max_pool_gradient_is_unchanged_on_finite_input():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype(np.float32))
    g = jax.grad(lambda a: jnp.sum(layers.max_pool(a) ** 2))(x)
    ref = jax.grad(lambda a: jnp.sum(nn.max_pool(a, (2, 2), strides=(2, 2)) ** 2))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-6)


@pytest.mark.parametrize("pool, shape", [(2, (4, 26, 26, 8)), (3, (2, 13, 14, 4)), ((2, 3), (2, 9, 9, 3))])
def test_max_pool_gradient_at_ties_is_flax_exactly(pool, shape):
    """Windows with several equal maxima (small integers, and zeros after a ReLU, after a BatchNorm
    as in a real model): the gradient reaches the first maximum only, as Flax's (XLA's
    select-and-scatter) does, bit for bit, jitted (XLA's fusions may compute a value twice)."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.integers(-2, 3, shape).astype(np.float32))
    ph, pw = (pool, pool) if isinstance(pool, int) else pool
    dy = jnp.asarray(rng.standard_normal((shape[0], shape[1] // ph, shape[2] // pw, shape[3])).astype(np.float32))
    scale = jnp.asarray(rng.random(shape[3]).astype(np.float32) + 0.5)

    def grad(pool_fn):
        f = lambda a: jnp.sum(pool_fn(jax.nn.relu((a - a.mean((0, 1, 2), keepdims=True)) * scale.reshape(1, 1, 1, -1))) * dy)  # noqa: E731
        return np.asarray(jax.jit(jax.grad(f))(x))

    ours = grad(lambda a: layers.max_pool(a, pool))
    np.testing.assert_array_equal(ours, grad(lambda a: nn.max_pool(a, (ph, pw), strides=(ph, pw))))
    assert np.count_nonzero(ours) > 0


def test_max_pool_forward_and_second_order_derivatives_are_flaxs():
    """max_pool's custom JVP (the taps masked by the winning tap's number) gives Flax's
    derivatives in forward mode, reverse mode and their composition, ties included, and its
    compiled gradient holds no pad: the cotangent is broadcast over each window and kept at the
    winning tap, not padded tap by tap and summed (that took five times as long on CPU)."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.integers(-2, 3, (2, 6, 6, 3)).astype(np.float32))
    ours, flax = (lambda a: layers.max_pool(a, 2)), (lambda a: nn.max_pool(a, (2, 2), strides=(2, 2)))
    np.testing.assert_array_equal(jax.jacfwd(ours)(x), jax.jacfwd(flax)(x))
    np.testing.assert_array_equal(jax.jacrev(ours)(x), jax.jacrev(flax)(x))
    hvp = lambda f: jax.jvp(jax.grad(lambda a: jnp.sum(f(a) ** 3)), (x,), (jnp.ones_like(x),))[1]  # noqa: E731
    np.testing.assert_array_equal(hvp(ours), hvp(flax))
    hlo = jax.jit(jax.grad(lambda a: jnp.sum(ours(jax.nn.relu(a)) * 2.0))).lower(x).compile().as_text()
    assert " pad(" not in hlo and "select" in hlo


# --------------------------------------------------------------------------- 5. one-hot labels with NaN


def test_one_hot_labels_with_nan_are_refused(state, mnist64):
    x, y = mnist64
    onehot = data.one_hot(y, 10)
    onehot[7, 2] = np.nan
    with pytest.raises(ShapeError, match=r"^y holds NaN at index \(7, 2\) \(1 row holds NaN or infinite values\)"):
        jaxcnn.fit(state, x, onehot, verbose=0)
    with pytest.raises(ShapeError, match=r"^y holds NaN at index \(7, 2\)"):
        jaxcnn.evaluate(state, x, onehot)
    with pytest.raises(ShapeError, match=r"^validation y holds inf at index \(0, 0\)"):
        jaxcnn.fit(state, x, y, validation_data=(x[:4], _with(data.one_hot(y[:4], 10), (0, 0), np.inf)), verbose=0)
    with pytest.raises(ShapeError, match=r"^y holds NaN at index 3 "):
        jaxcnn.fit(state, x, _with(y.astype(np.float32), 3, np.nan), verbose=0)  # float class labels


# --------------------------------------------------------------------------- 14. library edge cases


def test_ragged_lists_are_a_shape_error(mnist64):
    x, y = mnist64
    model = jaxcnn.get_model("mnist_cnn")
    ragged = [x[0], x[1], x[2, :27]]
    with pytest.raises(ShapeError, match=r"^x cannot be made into one array: it looks like a ragged list .*np\.stack\(images\)"):
        jaxcnn.fit(model, ragged, y[:3], verbose=0)
    with pytest.raises(ShapeError, match=r"^y cannot be made into one array"):
        jaxcnn.fit(model, x[:3], [1, [2, 3], 4], verbose=0)
    with pytest.raises(ShapeError, match=r"^validation x cannot be made into one array"):
        jaxcnn.fit(model, x, y, validation_data=(ragged, y[:3]), verbose=0)


def test_validation_data_of_one_item_is_a_config_error(mnist64):
    x, y = mnist64
    with pytest.raises(ConfigError, match=r"^validation_data must be \(x_val, y_val\)"):
        jaxcnn.fit(jaxcnn.get_model("mnist_cnn"), x, y, validation_data=(x,), verbose=0)


@pytest.mark.parametrize("patience", [None, 1.5, -1, True, "5"])
def test_early_stopping_patience_must_be_a_whole_number(patience):
    with pytest.raises(ConfigError, match=rf"^EarlyStopping patience must be a whole number of epochs >= 0, got {patience!r}"[:-1]):
        jaxcnn.EarlyStopping(patience=patience)
    assert jaxcnn.EarlyStopping(patience=np.int64(3)).patience == 3


@pytest.mark.parametrize("seed", [-1, 1.5, 2**70, 2**32, True, "0", None])
def test_bad_seed_is_a_config_error(seed, mnist64):
    x, y = mnist64
    with pytest.raises(ConfigError, match=r"^seed must be a whole number in 0\.\.4294967295 \(2\*\*32 - 1\), got "):
        jaxcnn.fit(jaxcnn.get_model("mnist_cnn"), x, y, seed=seed, verbose=0)


def test_edge_seeds_are_accepted():
    assert checks.check_seed(0) == 0 and checks.check_seed(2**32 - 1) == 2**32 - 1
    assert checks.check_seed(np.uint32(7)) == 7 and type(checks.check_seed(np.int64(7))) is int


def test_numpy_learning_rates_are_accepted_and_recorded_as_floats(mnist64):
    x, y = mnist64
    result = jaxcnn.fit(jaxcnn.get_model("mnist_cnn"), x, y, epochs=1, batch_size=32, learning_rate=np.float32(0.001), verbose=0)
    assert result.history["learning_rate"][0] == pytest.approx(0.001)
    assert '"learning_rate": 0.001}' in result.state.optimizer_spec  # rebuilt from JSON as 0.001
    tx = jaxcnn.optim.get_optimizer("rmsprop", np.array(0.001))  # what fit builds for np.array(0.001)
    assert float(jaxcnn.optim.get_learning_rate(tx.init({"w": jnp.zeros(3)}))) == pytest.approx(0.001)
    assert checks.check_learning_rate(np.float32(0.001)) == 0.001  # not 0.0010000000474974513
    for bad in (np.array([0.001, 0.002]), np.float32(-1), np.nan, True, "0.001"):
        with pytest.raises(ConfigError, match=r"^learning rate must be a finite number >= 0"):
            checks.check_learning_rate(bad)
    with pytest.raises(ConfigError, match=r"^learning rate must be a finite number >= 0, got array\(\[0\.1"):
        jaxcnn.optim.get_optimizer("adam", np.array([0.1]))


# --------------------------------------------------------------------------- issue 15: hints


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (4, 3, 32, 32), (4, 4, 32, 32)])  # grey, RGB, RGBA
def test_channels_first_input_names_nhwc_and_the_transpose(shape):
    model = jaxcnn.get_model("mnist_cnn" if shape[1] == 1 else "cifar_cnn1")
    n, c, h, w = shape
    msg = (rf"^x has shape \({n}, {c}, {h}, {w}\), which looks channels-first \(N, C, H, W\), but the model takes "
           rf"channels-last images, NHWC \(N, H, W, C\) = \(N, {h}, {w}, {c}\); use x\.transpose\(0, 2, 3, 1\)$")
    with pytest.raises(ShapeError, match=msg):  # a fresh module: before it is traced for that shape
        jaxcnn.fit(model, np.zeros(shape, np.float32), np.zeros(n, np.int32), verbose=0)


def test_a_channels_first_guess_on_non_square_images_says_how_to_fit_them_as_they_are():
    """(N, 1, 200, 12) may be 1-pixel-high images of 12 channels (a signal's leads): the message
    says how to train on them as channels-last, which works."""
    import flax.linen as nn

    class Flat(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    x, y = np.random.default_rng(0).random((16, 1, 200, 12), np.float32), np.arange(16) % 3
    with pytest.raises(ShapeError, match=r"use x\.transpose\(0, 2, 3, 1\) \(if they are channels-last, \(1, 200, 12\) = \(H, W, C\), "
                                         r"build the state for that shape and fit it: jaxcnn\.fit\(jaxcnn\.create_train_state\(model, \(1, 200, 12\)\), \.\.\.\)\)$"):
        jaxcnn.fit(Flat(), x, y, verbose=0)
    assert np.isfinite(jaxcnn.fit(jaxcnn.create_train_state(Flat(), (1, 200, 12)), x, y, epochs=1, verbose=0).history["loss"][0])


class _Tensor:
    """What the check sees of a PyTorch tensor: its module's name and ``__array__``."""

    __module__ = "torch"

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a


def test_channels_first_tensor_gets_the_permute_it_can_run(state):
    # A tensor's transpose takes two axes; permute is the call that reorders all four.
    nchw, labels = _Tensor(np.zeros((2, 1, 28, 28), np.float32)), np.zeros(2, np.int32)
    with pytest.raises(ShapeError, match=r"\(N, 28, 28, 1\); use x\.permute\(0, 2, 3, 1\)$"):
        checks.check_images(nchw, ())
    for call in (lambda: jaxcnn.fit(jaxcnn.get_model("mnist_cnn"), nchw, labels, verbose=0),  # a fresh module
                 lambda: jaxcnn.fit(state, nchw, labels, verbose=0), lambda: jaxcnn.predict(state, nchw)):
        with pytest.raises(ShapeError, match=r"; use x\.permute\(0, 2, 3, 1\)$"):
            call()
    nhwc = np.zeros((2, 28, 28, 1), np.float32)
    with pytest.raises(ShapeError, match=r"; use x_val\.permute\(0, 2, 3, 1\)$"):
        jaxcnn.fit(state, nhwc, labels, validation_data=(nchw, labels), verbose=0)


def test_channels_first_into_a_built_model(state):
    with pytest.raises(ShapeError, match=r"^x has shape \(2, 1, 28, 28\), which looks channels-first .*x\.transpose\(0, 2, 3, 1\)"):
        jaxcnn.evaluate(state, np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int32))
    with pytest.raises(ShapeError, match=r"^validation x has shape \(2, 1, 28, 28\), .*x_val\.transpose\(0, 2, 3, 1\)"):
        checks.check_images(np.zeros((2, 1, 28, 28), np.float32), (28, 28, 1), "validation x")
    # NHWC of another size is still the plain shape message.
    with pytest.raises(ShapeError, match=r"^x has shape \(2, 32, 32, 1\) but the model takes images of shape \(N, 28, 28, 1\)$"):
        checks.check_images(np.zeros((2, 32, 32, 1), np.float32), (28, 28, 1))


def test_float_pixels_above_one_warn_and_name_to_float(state, mnist64):
    x, y = mnist64
    raw = x * 255.0
    with pytest.warns(UserWarning, match=r"^x holds pixel values up to 255, but the model expects floats scaled to \[0, 1\] "
                      r"\(the report divides by 255\); if these are 0\.\.255 pixels, pass jaxcnn\.data\.to_float\(x\) instead$") as record:
        jaxcnn.evaluate(state, raw, y)
    assert record[0].filename == __file__  # points at the caller's line, not inside jaxcnn
    np.testing.assert_allclose(data.to_float(raw), x, rtol=1e-6)  # the fix it names works on such floats
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scaled data: no warning
        checks.check_images(x, (28, 28, 1))
        checks.check_images(x * 1.5, (28, 28, 1))  # the threshold is 1.5
    with pytest.raises(ShapeError, match="already scaled"):
        data.to_float(x)
