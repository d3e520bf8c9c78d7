"""Keras-style layers as Flax linen modules.

Each layer matches its Keras namesake's defaults (glorot-uniform kernels, zero biases, "valid"
padding, pool strides equal to the pool size, BatchNormalization's epsilon 1e-3 and momentum 0.99)
and keeps the fast formulation inside it, so a user's own model gets it too:

* :class:`MaxPool2D` uses reshape-and-max for non-overlapping windows. Its gradient is an
  elementwise compare instead of XLA's select-and-scatter, which on CPU took half of the MNIST
  CNN's train step (see PERF-NOTES.md). Values are identical; gradients are identical wherever the
  window maximum is unique.
* :class:`Conv2D` and :class:`Dense` take a ``dtype`` for mixed precision: parameters stay float32,
  the matmul/convolution runs in ``dtype`` (for example ``jnp.bfloat16``).

Keras-style L2 regularisation (``kernel_l2``) adds ``l2 * sum(kernel ** 2)`` to the loss, with no
factor 1/2. The layer records it with ``self.sow("losses", ...)``; the training step adds up that
collection (see :func:`jaxcnn.train.regularization_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.errors import ConfigError, ShapeError

Array = jax.Array
Dtype = Any

glorot_uniform = nn.initializers.glorot_uniform()
zeros = nn.initializers.zeros

_ACTIVATIONS: dict[str, Callable[[Array], Array] | None] = {
    "linear": None,
    "relu": nn.relu,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.1),
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": nn.softmax,
    "elu": nn.elu,
    "gelu": nn.gelu,
}


def get_activation(activation: str | Callable[[Array], Array] | None) -> Callable[[Array], Array] | None:
    """Return the activation function for a Keras-style name, a callable, or ``None`` (linear)."""
    if activation is None or callable(activation):
        return activation
    try:
        return _ACTIVATIONS[activation]
    except KeyError:
        raise ConfigError(
            f"unknown activation {activation!r}; use one of {sorted(_ACTIVATIONS)} or pass a function"
        ) from None


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ConfigError(f"{what} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _sow_l2(module: nn.Module, l2: float, kernel: Array) -> None:
    if l2:
        module.sow("losses", "l2", l2 * jnp.sum(jnp.square(kernel.astype(jnp.float32))))


def _bias_and_activation(layer: Conv2D | Dense, y: Array) -> Array:
    """Add the layer's bias (one per output channel) and apply its activation."""
    if layer.use_bias:
        bias = layer.param("bias", layer.bias_init, (layer.features,), layer.param_dtype)
        y = y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
    act = get_activation(layer.activation)
    return act(y) if act is not None else y


class Conv2D(nn.Module):
    """2-D convolution on NHWC input, like ``keras.layers.Conv2D``.

    Attributes:
      features: number of output channels (Keras ``filters``).
      kernel_size: ``k`` or ``(kh, kw)``.
      padding: ``"valid"`` (Keras's default) or ``"same"``.
      activation: a Keras name (``"relu"``...), a function, or ``None`` for linear.
      kernel_l2: Keras-style L2 factor on the kernel (0 for none).
      use_bias: add a bias per output channel.
      dtype: computation dtype (``None``: that of the input); parameters stay ``param_dtype``.

    Input ``(N, H, W, C)``; output ``(N, H', W', features)`` with ``H' = H - kh + 1`` for "valid".
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    padding: str = "valid"
    activation: str | Callable[[Array], Array] | None = None
    kernel_l2: float = 0.0
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., Array] = glorot_uniform
    bias_init: Callable[..., Array] = zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = _pair(self.kernel_size, "kernel_size")
        padding = self.padding.lower()
        if padding not in ("valid", "same"):
            raise ConfigError(f"padding must be 'valid' or 'same', got {self.padding!r}")
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
        kernel = self.param("kernel", self.kernel_init, (kh, kw, c, self.features), self.param_dtype)
        _sow_l2(self, self.kernel_l2, kernel)
        dtype = self.dtype or x.dtype
        y = lax.conv_general_dilated(
            x.astype(dtype),
            kernel.astype(dtype),
            window_strides=(1, 1),
            padding=padding.upper(),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return _bias_and_activation(self, y)


class Dense(nn.Module):
    """Fully connected layer on the last axis, like ``keras.layers.Dense``.

    Input ``(..., D)``; output ``(..., features)``. Attributes as in :class:`Conv2D`.
    """

    features: int
    activation: str | Callable[[Array], Array] | None = None
    kernel_l2: float = 0.0
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., Array] = glorot_uniform
    bias_init: Callable[..., Array] = zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        _sow_l2(self, self.kernel_l2, kernel)
        dtype = self.dtype or x.dtype
        y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
        return _bias_and_activation(self, y)


def max_pool(x: Array, pool_size: int | Sequence[int] = 2, strides: int | Sequence[int] | None = None) -> Array:
    """Max-pool an NHWC batch with "valid" padding, like ``keras.layers.MaxPooling2D``.

    ``strides`` defaults to ``pool_size``. An input size that the pool does not divide drops the
    last rows/columns (floor), as Keras does. Non-overlapping windows use reshape-and-max, which
    has the same values as ``flax.linen.max_pool`` and a much cheaper gradient.
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
    if (ph, pw) != (sh, sw):
        return nn.max_pool(x, (ph, pw), strides=(sh, sw), padding="VALID")
    oh, ow = h // ph, w // pw
    x = x[:, : oh * ph, : ow * pw, :]
    return jnp.max(x.reshape(n, oh, ph, ow, pw, c), axis=(2, 4))


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


class Dropout(nn.Module):
    """``keras.layers.Dropout``: active only when ``train=True``; needs the ``"dropout"`` rng.

    Kept units are scaled by ``1 / (1 - rate)`` (inverted dropout, as Keras).
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        return nn.Dropout(self.rate, deterministic=not train)(x)


class BatchNorm(nn.Module):
    """``keras.layers.BatchNormalization`` on the last axis: epsilon 1e-3, momentum 0.99.

    Training uses the batch statistics and updates the moving mean and variance in the
    ``batch_stats`` collection (``moving = momentum * moving + (1 - momentum) * batch``);
    evaluation uses the moving statistics. 2 x C trainable (gamma, beta) and 2 x C
    non-trainable parameters.
    """

    momentum: float = 0.99
    epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        return nn.BatchNorm(
            use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon, name="bn"
        )(x)
