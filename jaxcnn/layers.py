"""Keras-style layers as Flax linen modules.

Each layer matches its Keras namesake's defaults (glorot-uniform kernels, zero biases, "valid"
padding, pool strides equal to the pool size, BatchNormalization's epsilon 1e-3 and momentum 0.99)
and keeps the fast formulation inside it, so a user's own model gets it too. Keras 3 itself checks
the layers' outputs in ``tests/test_keras_parity.py`` (``test_layer_matches_keras``,
``test_batchnorm_layer_matches_keras_in_both_modes``, and every registry model):

* :class:`MaxPool2D` takes the maximum of non-overlapping windows by elementwise compares and
  selects over the window's taps, and its custom JVP makes the gradient one broadcast select at
  the winning tap, instead of XLA's select-and-scatter, which on CPU took half of the MNIST
  CNN's train step (see docs/cpu.md). Values and gradients are identical to Flax's
  ``max_pool``, at ties too (the first maximum).
* :class:`Conv2D` computes, on CPU, the input gradient of a convolution whose output is no larger
  than its kernel as a matmul and a sum of shifted slices (:func:`conv2d`). XLA's CPU convolution
  took 16 ms for it where this takes 0.75 ms (the random search's 7x7 kernel on an 11x11 map).
* :class:`Conv2D` computes, on CPU, 3x3 convolutions with few input channels (an image's first
  layer) and small batches (a part of 32 examples) by im2col: the patch matrix times the kernel,
  one matmul forward and one for the kernel's gradient, where XLA's CPU convolution is slow
  (:func:`conv_plan` says what is chosen).
* :class:`Conv2D` can compute, on CPU, 5x5 convolutions of parts (at most
  :data:`WINOGRAD_MAX_BATCH` examples) by Winograd's algorithm (:mod:`jaxcnn.winograd`; 6.25x fewer
  multiplications, where XLA's direct convolution already runs near these cores' matmul peak);
  off unless ``JAXCNN_WINOGRAD=1`` asks for it, as it compiles slowly (:data:`WINOGRAD`).
* :class:`Conv2D` can convolve, on CPU, a batch of more than :data:`CONV_CHUNK` examples with a
  large output in chunks of at most that many, one after another in the same program
  (:func:`conv_chunks`; ``JAXCNN_CONV_CHUNK=32``): a whole batch's activations leave the cache,
  a chunk's stay nearer. That made BatchNorm models 60% faster under YNNPACK's convolutions;
  with XLA's own, jaxcnn's default, whole batches are as fast, so it is off unless asked for.
* :func:`fast_paths` gives a model written with Flax's own layers (``nn.Conv``, ``nnx.Conv``,
  ``nn.max_pool``) the same formulations, by swapping them in its traced program; jaxcnn's
  training, evaluation and prediction apply it to users' models.
* :class:`Conv2D` and :class:`Dense` take a ``dtype`` for mixed precision: parameters stay float32,
  the matmul/convolution runs in ``dtype`` (for example ``jnp.bfloat16``).

Keras-style L2 regularisation (``kernel_l2``) adds ``l2 * sum(kernel ** 2)`` to the loss, with no
factor 1/2. The layer records it with ``self.sow("losses", ...)``; the training step adds up that
collection (see :func:`jaxcnn.train.regularization_loss`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import winograd
from jaxcnn._env import env_int
from jaxcnn.errors import ConfigError, ShapeError

Array = jax.Array
Dtype = Any

glorot_uniform = nn.initializers.glorot_uniform()
zeros = nn.initializers.zeros

# Keras 3's activations (keras/src/activations/__init__.py ALL_OBJECTS plus its aliases swish and
# hard_swish), each with Keras's default arguments; the values match Keras on its JAX backend
# (tests/test_keras_parity.py::test_activation_matches_keras, 1e-6). Where Keras's default
# differs from Flax's: leaky_relu's slope is 0.2 (the LeakyReLU *layer* defaults to 0.3, see
# :class:`LeakyReLU`), gelu is exact (erf), not the tanh approximation.


def leaky_relu(x: Array, negative_slope: float = 0.2) -> Array:
    """``keras.activations.leaky_relu``: ``x`` if ``x >= 0`` else ``negative_slope * x`` (0.2)."""
    return jax.nn.leaky_relu(x, negative_slope)


def gelu(x: Array, approximate: bool = False) -> Array:
    """``keras.activations.gelu``: exact ``0.5 * x * (1 + erf(x / sqrt(2)))`` by default."""
    return jax.nn.gelu(x, approximate=approximate)


def soft_shrink(x: Array, threshold: float = 0.5) -> Array:
    """``keras.activations.soft_shrink``: ``x -/+ threshold`` outside ``[-threshold, threshold]``, else 0."""
    return jnp.where(x > threshold, x - threshold, jnp.where(x < -threshold, x + threshold, 0.0)).astype(x.dtype)


def hard_shrink(x: Array, threshold: float = 0.5) -> Array:
    """``keras.activations.hard_shrink``: ``x`` where ``|x| > threshold``, else 0."""
    return jnp.where(jnp.abs(x) > threshold, x, 0.0).astype(x.dtype)


def threshold(x: Array, threshold: float, default_value: float) -> Array:
    """``keras.activations.threshold``: ``x`` where ``x > threshold``, else ``default_value``.

    It has no defaults, so it is not a name for ``activation=``: pass
    ``functools.partial(threshold, threshold=..., default_value=...)``.
    """
    return jnp.where(x > threshold, x, default_value).astype(x.dtype)


def tanh_shrink(x: Array) -> Array:
    """``keras.activations.tanh_shrink``: ``x - tanh(x)``."""
    return x - jnp.tanh(x)


def mish(x: Array) -> Array:
    """``keras.activations.mish``: ``x * tanh(softplus(x))``."""
    return x * jnp.tanh(jax.nn.softplus(x))


def sparsemax(x: Array, axis: int = -1) -> Array:
    """``keras.activations.sparsemax``: the Euclidean projection onto the simplex along ``axis``."""
    srt = -jnp.sort(-x, axis=axis)
    cums = jnp.cumsum(srt, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    r = jnp.arange(1, x.shape[axis] + 1, dtype=x.dtype).reshape(shape)
    support = srt - (cums - 1) / r > 0
    k = jnp.sum(support, axis=axis, keepdims=True)
    tau = (jnp.sum(jnp.where(support, cums, 0.0), axis=axis, keepdims=True) - 1) / k
    return jnp.maximum(x - tau, 0.0)


ACTIVATIONS: dict[str, Callable[[Array], Array] | None] = {
    "linear": None,
    "relu": jax.nn.relu,
    "leaky_relu": leaky_relu,
    "relu6": jax.nn.relu6,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
    "sparsemax": sparsemax,
    "celu": jax.nn.celu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "squareplus": jax.nn.squareplus,
    "soft_shrink": soft_shrink,
    "sparse_plus": jax.nn.sparse_plus,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": gelu,
    "glu": jax.nn.glu,
    "tanh": jnp.tanh,
    "tanh_shrink": tanh_shrink,
    "hard_tanh": jax.nn.hard_tanh,
    "hard_shrink": hard_shrink,
    "sigmoid": jax.nn.sigmoid,
    "log_sigmoid": jax.nn.log_sigmoid,
    "sparse_sigmoid": jax.nn.sparse_sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "hard_silu": jax.nn.hard_silu,
    "hard_swish": jax.nn.hard_silu,
    "exponential": jnp.exp,
    "mish": mish,
}
#: Keras names that need arguments Keras gives no default for.
_NEEDS_ARGUMENTS = {"threshold": "functools.partial(jaxcnn.layers.threshold, threshold=..., default_value=...)"}


def get_activation(activation: str | Callable[[Array], Array] | None) -> Callable[[Array], Array] | None:
    """Return the activation function for a Keras name (:data:`ACTIVATIONS`, with Keras's
    defaults), a callable, or ``None``/``"linear"`` (identity: returns ``None``).

    Unknown names raise ``ConfigError`` with the closest known name.
    """
    if activation is None or callable(activation):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    if activation in _NEEDS_ARGUMENTS:
        raise ConfigError(f"activation {activation!r} has no default arguments; pass {_NEEDS_ARGUMENTS[activation]}")
    import difflib

    close = difflib.get_close_matches(str(activation).lower(), list(ACTIVATIONS), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"unknown activation {activation!r}{hint}; use one of {', '.join(sorted(ACTIVATIONS))} or pass a function"
    )


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ConfigError(f"{what} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _sow_l2(module: nn.Module, l2: float, kernel: Array) -> None:
    if l2:
        module.sow("losses", "l2", l2 * jnp.sum(jnp.square(kernel.astype(jnp.float32))))


def _features(layer: Conv2D | Dense, keras_name: str) -> int:
    """The layer's output channels: ``features``, or Keras's name for it (``filters``, ``units``)."""
    given = {n: v for n, v in (("features", layer.features), (keras_name, getattr(layer, keras_name))) if v is not None}
    kind = type(layer).__name__
    if not given:
        raise ConfigError(f"{kind} needs its number of outputs: {kind}(32, ...) or {kind}({keras_name}=32, ...)")
    if len(set(given.values())) > 1:
        raise ConfigError(f"{kind} got features={layer.features!r} and {keras_name}={getattr(layer, keras_name)!r}; give one of them")
    n = next(iter(given.values()))
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ConfigError(f"{kind}'s {next(iter(given))} must be a positive whole number, got {n!r}")
    return n


def _bias_and_activation(layer: Conv2D | Dense, y: Array) -> Array:
    """Add the layer's bias (one per output channel) and apply its activation."""
    if layer.use_bias:
        bias = layer.param("bias", layer.bias_init, (y.shape[-1],), layer.param_dtype)
        y = y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
    act = get_activation(layer.activation)
    return act(y) if act is not None else y


Padding = tuple[tuple[int, int], tuple[int, int]]


def _padding_mode(padding: str) -> str:
    mode = padding.lower() if isinstance(padding, str) else padding
    if mode not in ("valid", "same"):
        raise ConfigError(f"padding must be 'valid' or 'same', got {padding!r}")
    return mode


def _conv(x: Array, kernel: Array, padding: Padding) -> Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_input_grad_col2im(dy: Array, kernel: Array, x_shape: Sequence[int], padding: Padding) -> Array:
    """The gradient of a stride-1 NHWC convolution with respect to its input, given the output's
    gradient ``dy``: one matmul gives each output position's contribution to the kh x kw window
    it saw, and the windows are added into the (padded) input, one shifted slice per kernel tap
    (col2im). Accumulates in float32; returns ``x_shape`` in ``dy``'s dtype."""
    kh, kw, c, f = kernel.shape
    n, oh, ow, _ = dy.shape
    (pt, pb), (pl, pr) = padding
    h, w = x_shape[1], x_shape[2]
    cols = jnp.dot(dy.reshape(-1, f), kernel.reshape(kh * kw * c, f).T, preferred_element_type=jnp.float32)
    cols = cols.reshape(n, oh, ow, kh, kw, c)
    out = jnp.zeros((n, h + pt + pb, w + pl + pr, c), jnp.float32)
    for i in range(kh):
        for j in range(kw):
            out = out.at[:, i : i + oh, j : j + ow].add(cols[:, :, :, i, j])
    return out[:, pt : pt + h, pl : pl + w].astype(dy.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_col2im_grad(x: Array, kernel: Array, padding: Padding) -> Array:
    return _conv(x, kernel, padding)


def _conv_col2im_fwd(x, kernel, padding):
    return _conv(x, kernel, padding), (x, kernel)


def _conv_col2im_bwd(padding, res, dy):
    x, kernel = res
    (dkernel,) = jax.vjp(lambda k: _conv(x, k, padding), kernel)[1](dy)
    return conv_input_grad_col2im(dy, kernel, x.shape, padding).astype(x.dtype), dkernel


_conv_col2im_grad.defvjp(_conv_col2im_fwd, _conv_col2im_bwd)


#: Where :func:`conv2d` convolves by im2col on CPU under ``method="auto"``: kernels of at most
#: ``IM2COL_MAX_TAPS`` taps (3x3) with at most ``IM2COL_FEW_CHANNELS`` input channels (an image's
#: first layer, where XLA's CPU convolution is slowest), whose patch matrix is at most
#: ``IM2COL_MAX_BYTES``. Forward and backward of a 3x3 convolution of 32 examples on one core, XLA's
#: time over im2col's (best of three; BENCHMARKS.md), with XLA's own convolution kernels (what
#: ``import jaxcnn`` sets, :data:`jaxcnn.XLA_CPU_FLAG`): 1 -> 32 channels on 28x28 1.92x, 3 -> 32 on
#: 32x32 1.94x, 8 -> 32 1.40x; but 32 -> 32 0.69x, 32 -> 64 0.80x to 0.87x, 32 -> 128 0.95x,
#: 64 -> 32 0.59x, and with 29 MB of patches 0.23x (they leave the cache). With 5x5 and 7x7 kernels
#: im2col made whole steps slower (search_cnn at k = 7: 0.96x). Under YNNPACK's convolutions
#: (XLA's default in jaxlib 0.10) im2col was also faster for 64 or more output channels (32 -> 64
#: 1.20x, 32 -> 128 1.47x): ``$JAXCNN_IM2COL_MIN_FEATURES=64`` adds those layers
#: (``IM2COL_MIN_FEATURES``; 0, the default, leaves them to XLA). ``$JAXCNN_IM2COL_MAX_BYTES``
#: overrides the size when jaxcnn is imported (0: XLA's convolution always).
IM2COL_MAX_TAPS = 9
IM2COL_FEW_CHANNELS = 4
IM2COL_MIN_FEATURES = env_int("JAXCNN_IM2COL_MIN_FEATURES", 0, minimum=0)
IM2COL_MAX_BYTES = env_int("JAXCNN_IM2COL_MAX_BYTES", 12 * 2**20, minimum=0)
#: Whether :func:`conv2d` computes, on CPU under ``method="auto"``, float32 convolutions with
#: kernels of a size in ``WINOGRAD_KERNELS`` and more than ``IM2COL_FEW_CHANNELS`` input channels,
#: of at most ``WINOGRAD_MAX_BATCH`` examples (per device of a mesh), by Winograd's algorithm
#: (:mod:`jaxcnn.winograd`; 6.25x fewer multiplications for 5x5). Off by default
#: (``$JAXCNN_WINOGRAD=1`` turns it on when jaxcnn is imported): cifar_cnn3's part program (32
#: examples) ran 1.32x faster with it on one core and 1.13x to 1.24x as 16 parts over two devices
#: (``benchmarks/winograd_ab.py``), but its whole training
#: step only 1.00x to 1.07x in the side-by-side harness, and its first step took 17.7 s against
#: 2.9 s, as the unrolled transforms make a program 20 times larger to compile (BENCHMARKS.md).
#: Not for 3x3 (F(4, 3) made the MNIST and cifar_cnn1 parts slower) nor for larger batches
#: (256 examples: 1.01x; 128 keeps a whole batch of 128, ``fit(devices=None)``, computed as its
#: parts are). Outputs differ from XLA's by float rounding (about 1e-5 of the largest output);
#: forward-mode autodiff is not defined through it.
WINOGRAD = env_int("JAXCNN_WINOGRAD", 0, minimum=0, what="0 (off) or 1 (on)", example=1) > 0
WINOGRAD_KERNELS = (5,)
WINOGRAD_MAX_BATCH = 128


def conv_patches(x: Array, kh: int, kw: int) -> Array:
    """The im2col patch matrix of a (padded) NHWC batch for a stride-1 ``kh`` x ``kw`` window:
    (N, OH, OW, kh * kw * C), ordered as an HWIO kernel reshaped to (kh * kw * C, F)."""
    _, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    return jnp.concatenate([x[:, i : i + oh, j : j + ow, :] for i in range(kh) for j in range(kw)], axis=-1)


def _pad(x: Array, padding: Padding) -> Array:
    if not any(p for side in padding for p in side):
        return x
    return jnp.pad(x, ((0, 0), *padding, (0, 0)))


def conv_im2col(x: Array, kernel: Array, padding: Padding) -> Array:
    """A stride-1 NHWC x HWIO convolution as the patch matrix (:func:`conv_patches`) of the padded
    input times the kernel, accumulated in float32. Plain JAX, so every transformation applies
    (``grad``, ``jvp``, ``vmap``): the kernel's gradient is the patch matrix's transpose times the
    output's gradient, one matmul, and the input's gradient is col2im, the patches' transpose."""
    kh, kw, c, f = kernel.shape
    cols = conv_patches(_pad(x, padding), kh, kw)
    y = jnp.dot(cols.reshape(-1, kh * kw * c), kernel.reshape(kh * kw * c, f), preferred_element_type=jnp.float32)
    return y.reshape(*cols.shape[:3], f).astype(jnp.result_type(x, kernel))


def _out_size(x_shape: Sequence[int], kernel_shape: Sequence[int], padding: str) -> tuple[int, int]:
    if _padding_mode(padding) == "same":
        return x_shape[1], x_shape[2]
    return x_shape[1] - kernel_shape[0] + 1, x_shape[2] - kernel_shape[1] + 1


def conv_plan(x_shape: Sequence[int], kernel_shape: Sequence[int], padding: str = "valid", dtype: Any = jnp.float32,
              input_grad: str = "auto", method: str = "auto", backend: str | None = None) -> tuple[str, str]:
    """How :func:`conv2d` computes a convolution of an ``x_shape`` batch with a ``kernel_shape``
    kernel: ``(method, input_grad)`` with the ``"auto"`` choices made, on ``backend`` (default
    JAX's). It depends on the shapes, the dtype and the backend only, so every CPU machine
    computes a model alike."""
    if input_grad not in ("auto", "xla", "col2im"):
        raise ConfigError(f"input_grad must be 'auto', 'xla' or 'col2im', got {input_grad!r}")
    if method not in ("auto", "xla", "im2col", "winograd"):
        raise ConfigError(f"method must be 'auto', 'xla', 'im2col' or 'winograd', got {method!r}")
    kh, kw = kernel_shape[:2]
    oh, ow = _out_size(x_shape, kernel_shape, padding)
    cpu = (backend or jax.default_backend()) == "cpu"
    if method == "im2col" and input_grad == "xla":
        raise ConfigError("input_grad='xla' needs method='xla' or 'auto': im2col's input gradient is col2im, the patches' transpose")
    pads = _conv_pads(_padding_mode(padding), kh, kw)
    if method == "winograd":
        if input_grad != "auto":
            raise ConfigError("input_grad applies to method='xla' or 'auto': a Winograd convolution's input gradient is a Winograd convolution")
        if not winograd.supports(x_shape, kernel_shape, pads):
            raise ConfigError(f"method='winograd' takes square kernels of {' or '.join(f'{k}x{k}' for k in winograd.POINTS)}, "
                              f"got {kh}x{kw}; use method='auto' or 'xla'")
        return "winograd", "winograd"
    if (method == "auto" and input_grad == "auto" and cpu and WINOGRAD and jnp.dtype(dtype) == jnp.float32
            and all(isinstance(d, int) for d in x_shape) and x_shape[3] > IM2COL_FEW_CHANNELS
            and kh in WINOGRAD_KERNELS and x_shape[0] // _BATCH_SHARDS.get() <= WINOGRAD_MAX_BATCH and winograd.supports(x_shape, kernel_shape, pads)):
        return "winograd", "winograd"
    if input_grad == "auto":
        input_grad = "col2im" if cpu and (oh <= kh or ow <= kw) else "xla"
    if method == "auto" and not all(isinstance(d, int) for d in x_shape):
        method = "xla"  # a symbolic dimension (jax.export's polymorphic batch): the size is unknown
    if method == "auto":
        patch_bytes = x_shape[0] * oh * ow * kh * kw * x_shape[3] * jnp.dtype(dtype).itemsize
        suits = x_shape[3] <= IM2COL_FEW_CHANNELS or 0 < IM2COL_MIN_FEATURES <= kernel_shape[3]
        method = "im2col" if cpu and suits and kh * kw <= IM2COL_MAX_TAPS and patch_bytes <= IM2COL_MAX_BYTES else "xla"
    return method, ("col2im" if method == "im2col" else input_grad)


#: On CPU, :func:`conv2d` cuts a batch of more than ``CONV_CHUNK`` examples, whose output is at
#: least ``CONV_CHUNK_MIN_BYTES``, into equal chunks of at most ``CONV_CHUNK`` examples (and at
#: least 8; :func:`equal_parts`) and convolves them one after another in the same program, each
#: by the method its own shape picks; on a mesh, per device (:func:`batch_shards`). Off by
#: default (0: whole batches): under YNNPACK's convolutions (XLA's default in jaxlib 0.10) one
#: step of cifar_cnn4 on a 2-device mesh (256 examples each) went from 226 examples/s to 351 to
#: 377 in chunks of 32, but with XLA's own kernels (what ``import jaxcnn`` sets,
#: :data:`jaxcnn.XLA_CPU_FLAG`) whole batches were faster (727 against 705 in chunks of 32 and
#: 710 in chunks of 128; BENCHMARKS.md), and every chunk adds to the compile.
#: ``$JAXCNN_CONV_CHUNK=32`` turns it on when jaxcnn is imported.
CONV_CHUNK = env_int("JAXCNN_CONV_CHUNK", 0, minimum=0)
CONV_CHUNK_MIN_BYTES = 4 * 2**20

_BATCH_SHARDS: contextvars.ContextVar[int] = contextvars.ContextVar("jaxcnn_batch_shards", default=1)


@contextlib.contextmanager
def batch_shards(shards: int) -> Iterator[None]:
    """Layers traced inside see a batch split over ``shards`` devices along its first axis (a
    data-parallel mesh), so :func:`conv2d` chunks each device's share of it instead of the whole
    batch, and no chunk straddles two devices. The training strategies set it for their meshes;
    set it around your own ``jax.jit`` of a model whose batch is sharded over a mesh."""
    if not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"batch_shards takes a device count of at least 1, got {shards!r}")
    token = _BATCH_SHARDS.set(shards)
    try:
        yield
    finally:
        _BATCH_SHARDS.reset(token)


def equal_parts(n: int, most: int, max_parts: int | None = None) -> int:
    """How many equal parts ``n`` examples are cut into: the fewest that gives parts of at most
    ``most`` and at least 8 examples; where no count up to ``max_parts`` gives parts that small,
    the count that gives the smallest (1 where none divides ``n``)."""
    best = 1
    for p in range(1, n // 8 + 1):
        if max_parts is not None and p > max_parts:
            break
        if n % p == 0:
            best = p
            if n // p <= most:
                break
    return best


def conv_chunks(x_shape: Sequence[int], kernel_shape: Sequence[int], padding: str = "valid", dtype: Any = jnp.float32,
                backend: str | None = None, shards: int | None = None) -> int:
    """How many chunks :func:`conv2d` cuts each device's share of an ``x_shape`` batch into for a
    ``kernel_shape`` kernel, on ``backend`` (default JAX's), the batch split over ``shards``
    devices (default: as set by :func:`batch_shards`, else 1). 1: the batch in one piece, as on
    accelerators, for batches of at most :data:`CONV_CHUNK` per device or outputs under
    :data:`CONV_CHUNK_MIN_BYTES`, and for symbolic batch sizes. Shapes, dtype and backend alone
    decide it, so every CPU machine computes a model alike."""
    shards = _BATCH_SHARDS.get() if shards is None else shards
    n = x_shape[0]
    if not CONV_CHUNK or (backend or jax.default_backend()) != "cpu" or not isinstance(n, int) or n % shards:
        return 1
    oh, ow = _out_size(x_shape, kernel_shape, padding)
    if n // shards * oh * ow * kernel_shape[3] * jnp.dtype(dtype).itemsize < CONV_CHUNK_MIN_BYTES:
        return 1
    return equal_parts(n // shards, CONV_CHUNK)


def conv2d(x: Array, kernel: Array, padding: str = "valid", input_grad: str = "auto", method: str = "auto") -> Array:
    """Stride-1 NHWC x HWIO convolution, ``"valid"`` or ``"same"`` (Keras's split of the padding).

    ``method`` picks how it is computed: ``"xla"`` (XLA's convolution), ``"im2col"``
    (:func:`conv_im2col`: the patch matrix times the kernel, so the forward pass and the kernel's
    gradient are one matmul each), ``"winograd"`` (:func:`jaxcnn.winograd.conv`, 3x3 and 5x5
    kernels; reverse-mode derivatives only), or ``"auto"``: on CPU, im2col for kernels of at most
    3x3 with few input channels and a patch matrix of at most :data:`IM2COL_MAX_BYTES`, Winograd
    for float32 5x5 kernels of at most :data:`WINOGRAD_MAX_BATCH` examples if :data:`WINOGRAD`, XLA's
    convolution otherwise and on other backends (the measurements are at :data:`IM2COL_MAX_TAPS`
    and :data:`WINOGRAD`). Values and gradients agree with XLA's to float rounding (tested).

    ``input_grad`` picks how XLA's convolution computes the gradient with respect to ``x``:
    ``"xla"`` (XLA's transposed convolution), ``"col2im"`` (:func:`conv_input_grad_col2im`), or
    ``"auto"``: col2im on CPU when the output is no larger than the kernel along a side. There
    XLA's CPU transposed convolution is mostly padding and slow: per 32 examples, a 7x7 kernel on
    11x11x32 took 16 ms against 0.75 ms, 8x8 on 10x10 7.5 ms against 0.35; where the output is
    larger it was the faster one (3x3 on 13x13x32: 0.34 ms against 0.56). Those figures were taken
    under YNNPACK's convolutions; with XLA's own (:data:`jaxcnn.XLA_CPU_FLAG`) the whole gradient,
    input's and kernel's, took 45 ms against 4.0 for the 7x7 kernel, 19 against 2.2 for 8x8, and
    3.4 against 3.7 for 3x3 on 13x13x32, so the rule stands. im2col's input gradient
    is always col2im. :func:`conv_plan` tells what ``"auto"`` picks.

    On CPU a batch of more than :data:`CONV_CHUNK` examples (on each device of a mesh, see
    :func:`batch_shards`) with a large output is convolved in chunks (:func:`conv_chunks`), each
    planned by its own shape; the values and gradients are the whole batch's to float rounding
    (tested).
    """
    chunks = conv_chunks(x.shape, kernel.shape, padding, x.dtype)
    if chunks == 1:
        return _conv2d_whole(x, kernel, padding, input_grad, method)
    shards = _BATCH_SHARDS.get()
    n, rest = x.shape[0], x.shape[1:]
    # Each device's share cut into `chunks` pieces along axis 1, so no chunk spans two devices.
    pieces = jnp.split(x.reshape(shards, n // shards, *rest), chunks, axis=1)
    ys = [_conv2d_whole(p.reshape(-1, *rest), kernel, padding, input_grad, method) for p in pieces]
    ys = [y.reshape(shards, -1, *y.shape[1:]) for y in ys]
    return jnp.concatenate(ys, axis=1).reshape(n, *ys[0].shape[2:])


def _conv_pads(mode: str, kh: int, kw: int) -> Padding:
    """The (top, bottom), (left, right) padding of a stride-1 ``kh`` x ``kw`` convolution in
    ``mode`` ("valid" or "same", Keras's and lax's split of the padding)."""
    if mode == "valid":
        return ((0, 0), (0, 0))
    return (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))


def _conv2d_whole(x: Array, kernel: Array, padding: str, input_grad: str, method: str) -> Array:
    method, input_grad = conv_plan(x.shape, kernel.shape, padding, x.dtype, input_grad, method)
    pads = _conv_pads(_padding_mode(padding), *kernel.shape[:2])
    if method == "im2col":
        return conv_im2col(x, kernel, pads)
    if method == "winograd":
        return winograd.conv(x, kernel, pads)
    if input_grad == "col2im":
        return _conv_col2im_grad(x, kernel, pads)
    return _conv(x, kernel, pads)


#: Whether jaxcnn computes the convolutions and max-pools of a user's model (linen or NNX) by
#: :func:`conv2d` and :func:`max_pool`, see :func:`fast_paths`. ``$JAXCNN_FAST_PATHS`` (1 or 0)
#: sets it when jaxcnn is imported.
FAST_PATHS = env_int("JAXCNN_FAST_PATHS", 1, minimum=0, what="0 (off) or 1 (on)", example=0) > 0

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _fast_conv(x: Any, kernel: Any, params: dict[str, Any]) -> Array | None:
    """``conv2d(x, kernel, mode)`` for a ``conv_general_dilated`` equation that is a stride-1 NHWC x
    HWIO convolution with "valid" or "same" padding and nothing else (no dilation, groups or
    precision, operands of one float dtype); None otherwise."""
    if (params["dimension_numbers"] != _NHWC or any(v != 1 for k in ("window_strides", "lhs_dilation", "rhs_dilation")
                                                   for v in params[k])
            or params["feature_group_count"] != 1 or params["batch_group_count"] != 1 or params["precision"] is not None
            or params["preferred_element_type"] is not None or params.get("out_sharding") is not None
            or x.dtype != kernel.dtype or not jnp.issubdtype(x.dtype, jnp.floating)
            or not all(isinstance(d, int) for d in (*x.shape, *kernel.shape))):
        return None
    kh, kw = kernel.shape[:2]
    pads = tuple(tuple(p) for p in params["padding"])
    mode = next((m for m in ("valid", "same") if pads == _conv_pads(m, kh, kw)), None)
    if mode is None or (mode == "valid" and (kh > x.shape[1] or kw > x.shape[2])):
        return None
    return conv2d(x, kernel, mode)


def _fast_max_pool(x: Any, params: dict[str, Any]) -> Array | None:
    """:func:`max_pool` for a ``reduce_window_max`` equation over non-overlapping
    spatial windows of an NHWC batch with "valid" padding (``flax.linen.max_pool``'s, for one);
    None otherwise."""
    window, strides = params["window_dimensions"], params["window_strides"]
    if (x.ndim != 4 or window != strides or window[0] != 1 or window[3] != 1
            or any(p != (0, 0) for p in map(tuple, params["padding"]))
            or any(d != 1 for k in ("base_dilation", "window_dilation") for d in params[k])
            or not all(isinstance(d, int) for d in x.shape) or not jnp.issubdtype(x.dtype, jnp.floating)):
        return None
    return max_pool(x, window[1:3])


def _eval_fast(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    """``jax.core.eval_jaxpr`` with the fast paths swapped in (and nested ``jit`` calls inlined, so
    that their equations are swapped too)."""
    from jax.extend import core as jex_core

    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, a in zip(jaxpr.constvars, consts):
        env[v] = a
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name, out = eqn.primitive.name, None
        if name == "conv_general_dilated":
            out = _fast_conv(*invals, eqn.params)
        elif name == "reduce_window_max":
            out = _fast_max_pool(*invals, eqn.params)
        elif name in ("pjit", "jit") and not eqn.effects:
            inner = eqn.params["jaxpr"]
            out = _eval_fast(inner.jaxpr, inner.consts, invals)
        if out is None:  # as jax.core.eval_jaxpr does
            with eqn.ctx.manager:
                out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        outs = out if eqn.primitive.multiple_results or isinstance(out, list) else [out]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def fast_paths(fun: Callable[..., Any]) -> Callable[..., Any]:
    """``fun`` (of arrays, a pytree of them or none) with the CPU fast paths of jaxcnn's own layers
    in every model inside it, whoever wrote the layers: each stride-1 "valid"/"same" 2-D
    convolution (Flax's ``nn.Conv`` and ``nnx.Conv``, ``lax.conv``) is computed by :func:`conv2d`
    (im2col, col2im, chunks of a large batch) and each non-overlapping max-pool
    (``flax.linen.max_pool``, ``nnx.max_pool``) by :func:`max_pool`, whose gradient is elementwise
    selects instead of XLA's select-and-scatter (ten times faster on CPU). It traces ``fun`` once
    to a jaxpr and evaluates that with the swaps, before any differentiation, so ``grad`` and
    ``jit`` of the result see the fast formulations; calls to ``jax.jit`` functions inside are
    inlined so that their layers are swapped too.

    Values and gradients are ``fun``'s to float rounding (max-pools' exactly, ties included).
    jaxcnn's training, evaluation and prediction apply it to users' models on CPU (other backends
    run them as written) unless :data:`FAST_PATHS` is off (``JAXCNN_FAST_PATHS=0``)."""

    @functools.wraps(fun)
    def wrapped(*args: Any) -> Any:
        closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
        outs = _eval_fast(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return wrapped


class Conv2D(nn.Module):
    """2-D convolution on NHWC input, like ``keras.layers.Conv2D``.

    Attributes:
      features: number of output channels (or ``filters=``, Keras's name).
      kernel_size: ``k`` or ``(kh, kw)``.
      padding: ``"valid"`` (Keras's default) or ``"same"``.
      activation: a Keras name (``"relu"``...), a function, or ``None`` for linear.
      kernel_l2: Keras-style L2 factor on the kernel (0 for none).
      use_bias: add a bias per output channel.
      dtype: computation dtype (``None``: that of the input); parameters stay ``param_dtype``.
      input_grad: how the input's gradient is computed, see :func:`conv2d` (``"auto"``).
      method: how the convolution is computed, ``"auto"``, ``"xla"`` or ``"im2col"``, see :func:`conv2d`.

    Input ``(N, H, W, C)``; output ``(N, H', W', features)`` with ``H' = H - kh + 1`` for "valid".
    """

    features: int | None = None
    kernel_size: int | Sequence[int] = 3
    padding: str = "valid"
    activation: str | Callable[[Array], Array] | None = None
    kernel_l2: float = 0.0
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., Array] = glorot_uniform
    bias_init: Callable[..., Array] = zeros
    input_grad: str = "auto"
    method: str = "auto"
    filters: int | None = None  # Keras's name for features

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = _pair(self.kernel_size, "kernel_size")
        padding = _padding_mode(self.padding)
        if x.ndim != 4:
            raise ShapeError(
                f"{self.name}: expected a 4-D NHWC batch (N, H, W, C), got shape {tuple(x.shape)}; "
                "add a batch axis and a channel axis, e.g. x[None, ..., None]"
            )
        _, h, w, c = x.shape
        if padding == "valid" and (kh > h or kw > w):
            raise ShapeError(
                f"{self.name}: kernel {kh}x{kw} does not fit its {h}x{w} input (valid padding would "
                f"leave a {max(h - kh + 1, 0)}x{max(w - kw + 1, 0)} output); use a kernel of at most "
                f"{h}x{w} here, padding='same', or less pooling before this layer"
            )
        kernel = self.param("kernel", self.kernel_init, (kh, kw, c, _features(self, "filters")), self.param_dtype)
        _sow_l2(self, self.kernel_l2, kernel)
        dtype = self.dtype or x.dtype
        y = conv2d(x.astype(dtype), kernel.astype(dtype), padding, self.input_grad, self.method)
        return _bias_and_activation(self, y)


class Dense(nn.Module):
    """Fully connected layer on the last axis, like ``keras.layers.Dense``.

    Input ``(..., D)``; output ``(..., features)`` (or ``units=``, Keras's name). Attributes as
    in :class:`Conv2D`.
    """

    features: int | None = None
    activation: str | Callable[[Array], Array] | None = None
    kernel_l2: float = 0.0
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., Array] = glorot_uniform
    bias_init: Callable[..., Array] = zeros
    units: int | None = None  # Keras's name for features

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], _features(self, "units")), self.param_dtype)
        _sow_l2(self, self.kernel_l2, kernel)
        dtype = self.dtype or x.dtype
        y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
        return _bias_and_activation(self, y)


def _window_first_max(windows: Array) -> tuple[Array, Array]:
    """The maximum of each (N, OH, PH, OW, PW, C) window and the number of its tap, taken tap by
    tap in row-major order, each kept where it is larger than all before it: the first maximum
    wins, so the derivative (:func:`_window_pool`) reaches exactly that one input, as XLA's
    select-and-scatter gives it, ties included. (The gradient of ``jnp.max`` compares every
    input with the maximum instead and shares it among ties, which also depends on XLA computing
    both alike: at LLVM level 0 it did not, in a BatchNorm model.) A NaN tap wins over every
    number, so a window holding NaN gives NaN, as in NumPy. Compares and selects only: XLA:CPU
    hands max-reductions (and the selects it rewrites into them) to YNNPACK, whose max ignores
    NaN."""
    _, _, ph, _, pw, _ = windows.shape
    best, idx = windows[:, :, 0, :, 0, :], jnp.zeros(windows[:, :, 0, :, 0, :].shape, jnp.int32)
    for k in range(1, ph * pw):
        tap = windows[:, :, k // pw, :, k % pw, :]
        larger = (tap > best) | (jnp.isnan(tap) & ~jnp.isnan(best))
        best, idx = jnp.where(larger, tap, best), jnp.where(larger, k, idx)
    return best, idx


@jax.custom_jvp
def _window_pool(windows: Array) -> Array:
    """:func:`_window_first_max`'s maximum, differentiated as the window's taps masked by the
    winning tap's number and summed: the same derivative as through its selects (the first
    maximum gets it), but linear in one broadcast select, whose transpose, the gradient, is one
    broadcast select too. The transpose of the selects' tap slices pads every tap's cotangent to
    the window's shape and adds them, five times slower on CPU."""
    return _window_first_max(windows)[0]


@_window_pool.defjvp
def _window_pool_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (windows,), (dwindows,) = primals, tangents
    best, idx = _window_first_max(windows)
    _, _, ph, _, pw, _ = windows.shape
    number = jnp.arange(ph * pw).reshape(1, 1, ph, 1, pw, 1)  # row-major: tap (a, b) is a * pw + b
    mask = idx[:, :, None, :, None, :] == number
    return best, jnp.sum(jnp.where(mask, dwindows, jnp.zeros((), dwindows.dtype)), axis=(2, 4), dtype=dwindows.dtype)


def max_pool(x: Array, pool_size: int | Sequence[int] = 2, strides: int | Sequence[int] | None = None) -> Array:
    """Max-pool an NHWC batch with "valid" padding, like ``keras.layers.MaxPooling2D``.

    ``strides`` defaults to ``pool_size``. An input size that the pool does not divide drops the
    last rows/columns (floor), as Keras does. Non-overlapping windows take the maximum by compares
    and selects over the window's taps, and a custom JVP differentiates it as the taps masked by
    the winning tap's number (:func:`_window_pool`): the same values and gradients as
    ``flax.linen.max_pool`` (at ties too: the first maximum in the window gets the gradient, as
    with XLA's select-and-scatter), forward and reverse mode, with a gradient that is one
    broadcast select, many times cheaper on CPU than select-and-scatter. A window holding NaN
    gives NaN, as in NumPy, on every backend (XLA:CPU's own large max-reductions drop it).
    """
    ph, pw = _pair(pool_size, "pool_size")
    sh, sw = _pair(strides if strides is not None else (ph, pw), "strides")
    if x.ndim != 4:
        raise ShapeError(f"max_pool expects a 4-D NHWC batch, got shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    if ph > h or pw > w:
        raise ShapeError(
            f"pool {ph}x{pw} does not fit its {h}x{w} input; use a smaller pool_size or remove a layer"
        )
    if (ph, pw) != (sh, sw):  # overlapping windows: XLA keeps NaN here (not handed to YNNPACK)
        return nn.max_pool(x, (ph, pw), strides=(sh, sw), padding="VALID")
    oh, ow = h // ph, w // pw
    return _window_pool(x[:, : oh * ph, : ow * pw, :].reshape(n, oh, ph, ow, pw, c))


class MaxPool2D(nn.Module):
    """Max-pooling layer (``keras.layers.MaxPooling2D``); see :func:`max_pool`."""

    pool_size: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None

    def __call__(self, x: Array) -> Array:
        return max_pool(x, self.pool_size, self.strides)


class Flatten(nn.Module):
    """Flatten all but the batch axis, in NHWC order like Keras: ``(N, H, W, C) -> (N, H*W*C)``."""

    def __call__(self, x: Array) -> Array:
        return x.reshape(x.shape[0], -1)


class Activation(nn.Module):
    """An activation as its own layer (Keras ``Activation``/``LeakyReLU``), e.g. ``"leaky_relu"``."""

    activation: str | Callable[[Array], Array]

    def __call__(self, x: Array) -> Array:
        act = get_activation(self.activation)
        return act(x) if act is not None else x


class LeakyReLU(nn.Module):
    """``keras.layers.LeakyReLU``: ``x if x > 0 else negative_slope * x``."""

    negative_slope: float = 0.3

    def __call__(self, x: Array) -> Array:
        return nn.leaky_relu(x, self.negative_slope)


#: The mode jaxcnn runs a model in (True while ``fit`` trains it): what :class:`Dropout` and
#: :class:`BatchNorm` follow when they are called without ``train``, as Keras's layers follow
#: the model's ``training``. Outside jaxcnn's calls (``module.apply`` by hand): evaluation.
_TRAINING: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxcnn_training", default=False)


@contextlib.contextmanager
def training_mode(train: bool) -> Iterator[None]:
    """Run the model in training (``True``) or evaluation mode: jaxcnn's Dropout and BatchNorm
    called without ``train`` follow it. jaxcnn's own calls (fit, evaluate, predict) set it."""
    token = _TRAINING.set(bool(train))
    try:
        yield
    finally:
        _TRAINING.reset(token)


def _mode(train: bool | None, training: bool | None, layer: str) -> bool:
    """``train``, or Keras's name ``training``, or (neither given) the mode jaxcnn runs the model in."""
    if train is not None and training is not None and bool(train) != bool(training):
        raise ConfigError(f"{layer} got train={train!r} and training={training!r}; give one of them")
    given = train if train is not None else training
    return _TRAINING.get() if given is None else bool(given)


class Dropout(nn.Module):
    """``keras.layers.Dropout``: active in training; needs the ``"dropout"`` rng.

    ``train`` (or Keras's ``training``) says the mode; left out, the layer follows the mode
    jaxcnn runs the model in (training inside ``fit``, evaluation elsewhere), as Keras's layers
    follow the model's ``training``, so a model that never passes it still drops out in training.
    Kept units are scaled by ``1 / (1 - rate)`` (inverted dropout, as Keras).
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, train: bool | None = None, *, training: bool | None = None) -> Array:
        return nn.Dropout(self.rate, deterministic=not _mode(train, training, "Dropout"))(x)


class BatchNorm(nn.Module):
    """``keras.layers.BatchNormalization`` on the last axis: epsilon 1e-3, momentum 0.99.

    Training uses the batch statistics and updates the moving mean and variance in the
    ``batch_stats`` collection (``moving = momentum * moving + (1 - momentum) * batch``);
    evaluation uses the moving statistics. 2 x C trainable (gamma, beta) and 2 x C
    non-trainable parameters. ``train`` (or Keras's ``training``) says the mode; left out, the
    mode jaxcnn runs the model in, as for :class:`Dropout`.
    """

    momentum: float = 0.99
    epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x: Array, train: bool | None = None, *, training: bool | None = None) -> Array:
        return nn.BatchNorm(
            use_running_average=not _mode(train, training, "BatchNorm"), momentum=self.momentum, epsilon=self.epsilon, name="bn"
        )(x)


#: Keras's names for the same layers.
MaxPooling2D = MaxPool2D
BatchNormalization = BatchNorm
