"""A convolution, a convolutional layer and a max-pool written by hand (the report's Task 2).

The report builds a convolutional layer from scratch in R (Task 2, sections 2.2 to 2.8). This
module gives the same three operations twice:

* as pure, jittable and differentiable JAX functions built on ``lax`` (use these):

  - :func:`convolution` is the report's ``convolution(X, K)`` (section 2.2, with the helper
    ``kernel_func``): a valid cross-correlation with stride 1, built on
    ``lax.conv_general_dilated``;
  - :func:`conv_layer` is the report's ``convolutional_layer(X, K, b, activation)``
    (section 2.4): ``activation(convolution(X, K) + b)``;
  - :func:`maxpool` is the report's ``maxpool_layer(X, size=2)`` (section 2.7): the maximum of
    each ``size x size`` window with stride ``size``, built on ``lax.reduce_window``;

* as plain-loop NumPy references that follow the R code step by step, for checking and
  teaching: :func:`convolution_loop`, :func:`conv_layer_loop` and :func:`maxpool_loop`.

Shapes. The ``lax`` functions take either one 2-D image ``(H, W)`` with a 2-D kernel
``(kh, kw)`` and a scalar bias, exactly as in the report, or a batch in NHWC layout
``(N, H, W, C_in)`` with an HWIO kernel ``(kh, kw, C_in, C_out)`` and a bias ``(C_out,)`` (or a
scalar), as in Flax. The loop references take the 2-D form only.

Output sizes. The convolution has no padding: an ``H x W`` input and a ``kh x kw`` kernel give
``(H - kh + 1) x (W - kw + 1)``. The max-pool keeps only whole windows:
``(H - size) // stride + 1`` rows (and the same for columns); for the report's ``size == stride``
this is ``H // size``, the report's integer division, so an odd row or column at the end is
dropped.

Errors are raised in Python, before anything is compiled (all shapes are static):
:class:`~jaxcnn.errors.ShapeError` for an array of the wrong rank, a kernel larger than its input,
mismatched channels or a bias of the wrong shape, and :class:`~jaxcnn.errors.ConfigError` for an
unknown activation name or a pool size or stride that is not a positive integer.

The report's worked example (the 4x4 patch of an MNIST "4" and its 3x3 kernel)::

    >>> import numpy as np
    >>> X = np.array([[56, 250, 116, 0], [0, 240, 144, 0], [0, 198, 150, 0], [0, 143, 241, 0]])
    >>> K = np.array([[-0.5, -0.5, -0.5], [1, 1, 1], [-0.5, -0.5, -0.5]])
    >>> convolution(X, K).tolist()
    [[-1.0, 27.0], [-36.0, -36.0]]
    >>> conv_layer(X, K, 100, "relu").tolist()
    [[99.0, 127.0], [64.0, 64.0]]
    >>> maxpool(X).tolist()
    [[250, 144], [198, 241]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.errors import ConfigError, ShapeError

__all__ = [
    "Activation",
    "conv_layer",
    "conv_layer_loop",
    "convolution",
    "convolution_loop",
    "maxpool",
    "maxpool_loop",
    "resolve_activation",
]

#: An activation: a callable applied elementwise, or one of the names ``"relu"``,
#: ``"linear"`` or ``None`` (the identity).
Activation = Union[Callable[[Any], Any], str, None]

_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": jax.nn.relu,
    "linear": lambda z: z,
}

# Dimension numbers for NHWC images and HWIO kernels (the Flax/TensorFlow layout).
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------------------------
# Checks shared by the lax functions and the loop references (run in Python, on static shapes)
# --------------------------------------------------------------------------------------------


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def resolve_activation(activation: Activation) -> Callable[[Any], Any]:
    """Turn an activation given as a callable, a name or ``None`` into a callable.

    ``None`` and ``"linear"`` give the identity and ``"relu"`` gives ``max(0, z)``
    (``jax.nn.relu``); a callable is returned as it is. Names are case-insensitive.

    Raises:
        ConfigError: the name is unknown, or the value is neither a name nor a callable.
    """
    if activation is None:
        return _ACTIVATIONS["linear"]
    if isinstance(activation, str):
        key = activation.strip().lower()
        if key not in _ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {activation!r}: use one of {sorted(_ACTIVATIONS)}, None "
                "(no activation) or a callable such as jax.nn.relu"
            )
        return _ACTIVATIONS[key]
    if callable(activation):
        return activation
    raise ConfigError(
        f"activation must be a callable, one of the names {sorted(_ACTIVATIONS)} or None; "
        f"got {activation!r} of type {type(activation).__name__}"
    )


def _check_conv(x_shape: tuple[int, ...], k_shape: tuple[int, ...], *, batched_ok: bool = True
                ) -> bool:
    """Check an input and a kernel for :func:`convolution`; return True for the NHWC form."""
    allowed = "a 2-D image (H, W)" + (" or a 4-D batch (N, H, W, C)" if batched_ok else "")
    if len(x_shape) == 2:
        batched = False
    elif len(x_shape) == 4 and batched_ok:
        batched = True
    else:
        hint = ""
        if len(x_shape) == 3:
            hint = (
                "; for one image with channels add a batch axis, x[None], and for a stack of "
                "2-D images use jax.vmap"
                if batched_ok
                else "; the loop reference handles one 2-D image at a time"
            )
        raise ShapeError(
            f"the input must be {allowed}; got shape {x_shape} (rank {len(x_shape)}){hint}"
        )

    want_rank = 4 if batched else 2
    if len(k_shape) != want_rank:
        form = "(kh, kw, C_in, C_out) (HWIO)" if batched else "(kh, kw)"
        raise ShapeError(
            f"a {len(x_shape)}-D input of shape {x_shape} needs a {want_rank}-D kernel "
            f"{form}; got a kernel of shape {k_shape} (rank {len(k_shape)})"
        )
    kh, kw = k_shape[0], k_shape[1]
    if kh < 1 or kw < 1:
        raise ShapeError(f"the kernel must be at least 1x1; got shape {k_shape}")
    h, w = (x_shape[1], x_shape[2]) if batched else x_shape
    if kh > h or kw > w:
        out = (max(h - kh + 1, 0), max(w - kw + 1, 0))
        raise ShapeError(
            f"kernel {kh}x{kw} does not fit a {h}x{w} input: with valid padding the output "
            f"would be {_shape_text(out)}; the kernel must fit inside the input, so use a "
            f"kernel of at most {h}x{w} or pad the input"
        )
    if batched and k_shape[2] != x_shape[3]:
        raise ShapeError(
            f"channel mismatch: the kernel of shape {k_shape} (HWIO) expects "
            f"C_in={k_shape[2]} input channels, but the input of shape {x_shape} (NHWC) has "
            f"{x_shape[3]}"
        )
    return batched


def _check_bias(b_shape: tuple[int, ...], k_shape: tuple[int, ...], batched: bool) -> None:
    if b_shape == ():
        return
    if batched and b_shape == (k_shape[3],):
        return
    want = f"a scalar or shape ({k_shape[3]},) (one per output channel)" if batched else "a scalar"
    raise ShapeError(f"the bias must be {want} for a kernel of shape {k_shape}; got shape "
                     f"{b_shape}")


def _check_pool_option(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"the pool {name} must be a positive integer; got {value!r}")
    if value < 1:
        raise ConfigError(f"the pool {name} must be a positive integer (1 or more); got {value}")
    return int(value)


def _check_pool(x_shape: tuple[int, ...], size: Any, stride: Any, *, batched_ok: bool = True
                ) -> tuple[int, int, bool]:
    """Check the input and options of :func:`maxpool`; return (size, stride, batched)."""
    size = _check_pool_option("size", size)
    stride = size if stride is None else _check_pool_option("stride", stride)
    allowed = "a 2-D image (H, W)" + (" or a 4-D batch (N, H, W, C)" if batched_ok else "")
    if len(x_shape) == 2:
        batched = False
    elif len(x_shape) == 4 and batched_ok:
        batched = True
    else:
        raise ShapeError(
            f"the input must be {allowed}; got shape {x_shape} (rank {len(x_shape)})"
        )
    h, w = (x_shape[1], x_shape[2]) if batched else x_shape
    if size > h or size > w:
        raise ShapeError(
            f"a {size}x{size} pool window does not fit a {h}x{w} input: the output would be "
            f"empty; use a pool size of at most {min(h, w)}"
        )
    return size, stride, batched


def _float_dtype(*arrays: jax.Array) -> Any:
    """The floating dtype a convolution of these arrays computes in (integers become float32)."""
    return jnp.result_type(*(a.dtype for a in arrays), float)


# --------------------------------------------------------------------------------------------
# The lax versions
# --------------------------------------------------------------------------------------------


def convolution(x: jax.typing.ArrayLike, kernel: jax.typing.ArrayLike) -> jax.Array:
    """Valid cross-correlation with stride 1 (the report's ``convolution(X, K)``, 2.2).

    Each output pixel is ``sum(X_block * K)`` over the ``kh x kw`` block of the input under the
    kernel, sliding one pixel at a time, with no padding and no flipping of the kernel (what deep
    learning libraries call a convolution).

    Args:
        x: one image ``(H, W)``, or a batch ``(N, H, W, C_in)`` (NHWC). Integers (such as uint8
            pixels) are computed in float32.
        kernel: ``(kh, kw)`` for a 2-D image, or ``(kh, kw, C_in, C_out)`` (HWIO) for a batch.

    Returns:
        ``(H - kh + 1, W - kw + 1)`` for a 2-D image, or
        ``(N, H - kh + 1, W - kw + 1, C_out)`` for a batch, in floating point.

    Raises:
        ShapeError: a rank other than 2 or 4, a kernel of the wrong rank, a kernel larger than
            the input or a channel mismatch.
    """
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    batched = _check_conv(x.shape, kernel.shape)
    dtype = _float_dtype(x, kernel)
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    if not batched:
        # One image, one channel: view it as a batch of one with one channel in and out.
        out = lax.conv_general_dilated(
            x[None, :, :, None],
            kernel[:, :, None, None],
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=_DIMENSION_NUMBERS,
        )
        return out[0, :, :, 0]
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="VALID", dimension_numbers=_DIMENSION_NUMBERS
    )


def conv_layer(
    x: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike,
    activation: Activation = jax.nn.relu,
) -> jax.Array:
    """A convolutional layer: ``activation(convolution(x, kernel) + bias)`` (the report's
    ``convolutional_layer(X, K, b, activation)``, 2.4).

    Args:
        x: one image ``(H, W)`` or a batch ``(N, H, W, C_in)``, as for :func:`convolution`.
        kernel: ``(kh, kw)`` or ``(kh, kw, C_in, C_out)``, as for :func:`convolution`.
        bias: a scalar for a 2-D image; a scalar or ``(C_out,)`` (one per output channel) for a
            batch.
        activation: a callable applied elementwise, ``"relu"`` (the default, ``max(0, z)``),
            ``"linear"`` or ``None`` (no activation).

    Returns:
        The shape :func:`convolution` returns: ``(H - kh + 1, W - kw + 1)`` or
        ``(N, H - kh + 1, W - kw + 1, C_out)``.

    Raises:
        ShapeError: as for :func:`convolution`, or a bias of the wrong shape.
        ConfigError: an unknown activation name.
    """
    act = resolve_activation(activation)
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    bias = jnp.asarray(bias)
    batched = _check_conv(x.shape, kernel.shape)
    _check_bias(bias.shape, kernel.shape, batched)
    z = convolution(x, kernel)
    bias = bias.astype(z.dtype)
    if bias.ndim == 1:
        bias = bias.reshape(1, 1, 1, -1)  # explicit broadcast over N, H, W
    return act(z + bias)


def maxpool(x: jax.typing.ArrayLike, size: int = 2, stride: int | None = None) -> jax.Array:
    """Max-pooling over ``size x size`` windows (the report's ``maxpool_layer(X, size=2)``, 2.7).

    Windows start every ``stride`` pixels and only whole windows are kept, so the output has
    ``(H - size) // stride + 1`` rows and ``(W - size) // stride + 1`` columns. With the
    report's ``size == stride`` this is ``H // size`` by ``W // size``: on an odd 2x2 pool the
    last row and column are dropped, as the report's integer division ``%/%`` does.

    Args:
        x: one image ``(H, W)``, or a batch ``(N, H, W, C)`` (NHWC, pooled per channel).
        size: the window side, a positive integer (the report's default, 2).
        stride: the step between windows, a positive integer; ``None`` (the default) means
            ``size``, as in the report and in Keras (so the defaults are 2x2 with stride 2).

    Returns:
        ``(H', W')`` or ``(N, H', W', C)`` with ``H' = (H - size) // stride + 1`` and
        ``W' = (W - size) // stride + 1``, in the input's dtype.

    Raises:
        ConfigError: ``size`` or ``stride`` is not a positive integer.
        ShapeError: a rank other than 2 or 4, or a window larger than the input.
    """
    x = jnp.asarray(x)
    size, stride, batched = _check_pool(x.shape, size, stride)
    if jnp.issubdtype(x.dtype, jnp.floating):
        init = np.array(-np.inf, dtype=x.dtype)
    elif jnp.issubdtype(x.dtype, jnp.integer):
        init = np.array(jnp.iinfo(x.dtype).min, dtype=x.dtype)
    else:
        raise ShapeError(f"maxpool needs a numeric (integer or floating) array; got {x.dtype}")
    if batched:
        window, strides = (1, size, size, 1), (1, stride, stride, 1)
    else:
        window, strides = (size, size), (stride, stride)
    return lax.reduce_window(x, init, lax.max, window, strides, "VALID")


# --------------------------------------------------------------------------------------------
# Plain-loop references that follow the report's R code step by step (2-D only)
# --------------------------------------------------------------------------------------------


def _kernel_func(x_block: np.ndarray, kernel: np.ndarray) -> float:
    """The report's ``kernel_func``: ``sum(X_block * K)``, elementwise product then sum."""
    return float(np.sum(x_block * kernel))


def convolution_loop(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Plain-loop reference for :func:`convolution`, the report's R ``convolution`` (2.2).

    The steps, as in the report (indices 0-based here, 1-based in R):

    1. ``steps_down = n_xrows - k_rows + 1`` and ``steps_right = n_xcols - k_cols + 1``: how
       many positions the kernel takes going down and going right without leaving the image.
       (The report's kernel is square, ``k_dim = nrow(K)``; here the two sides may differ.)
    2. ``result`` starts as a ``steps_down x steps_right`` matrix of zeros.
    3. For each row position ``i`` and column position ``j``, take the block
       ``X[i : i + k_rows, j : j + k_cols]`` under the kernel and set ``result[i, j]`` to
       ``kernel_func(X_block, K) = sum(X_block * K)``.

    Args:
        x: one image ``(H, W)``.
        kernel: ``(kh, kw)``.

    Returns:
        ``(H - kh + 1, W - kw + 1)`` float64 array.

    Raises:
        ShapeError: as for :func:`convolution` (2-D only).
    """
    x = np.asarray(x, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    _check_conv(x.shape, kernel.shape, batched_ok=False)
    k_rows, k_cols = kernel.shape
    n_xrows, n_xcols = x.shape
    steps_down = n_xrows - k_rows + 1
    steps_right = n_xcols - k_cols + 1
    result = np.zeros((steps_down, steps_right))
    for i in range(steps_down):
        row_subset = slice(i, i + k_rows)
        for j in range(steps_right):
            col_subset = slice(j, j + k_cols)
            x_block = x[row_subset, col_subset]
            result[i, j] = _kernel_func(x_block, kernel)
    return result


def _relu_scalar(z: float) -> float:
    """The report's ``relu <- function(x) max(0, x)``, for one number."""
    return max(0.0, z)


def conv_layer_loop(
    x: np.ndarray, kernel: np.ndarray, bias: float, activation: Activation = "relu"
) -> np.ndarray:
    """Plain-loop reference for :func:`conv_layer`, the report's ``convolutional_layer`` (2.4).

    The steps, as in the report:

    1. ``conv_result = convolution(X, K)`` (:func:`convolution_loop`).
    2. ``conv_bias = conv_result + b``: the same scalar bias added to every pixel.
    3. ``output = apply(conv_bias, c(1, 2), activation)``: the activation applied to each pixel
       on its own (``relu(x) = max(0, x)``).

    Args:
        x: one image ``(H, W)``.
        kernel: ``(kh, kw)``.
        bias: a scalar.
        activation: a callable taking and returning one number, ``"relu"`` (default),
            ``"linear"`` or ``None``.

    Returns:
        ``(H - kh + 1, W - kw + 1)`` float64 array.

    Raises:
        ShapeError: as for :func:`convolution_loop`, or a bias that is not a scalar.
        ConfigError: an unknown activation name.
    """
    if isinstance(activation, str) and activation.strip().lower() == "relu":
        act: Callable[[Any], Any] = _relu_scalar
    else:
        act = resolve_activation(activation)
    b = np.asarray(bias, dtype=np.float64)
    kernel = np.asarray(kernel)
    if b.shape != ():
        raise ShapeError(f"the bias of the loop reference must be a scalar; got shape {b.shape}")
    conv_result = convolution_loop(x, kernel)
    conv_bias = conv_result + float(b)
    output = np.empty_like(conv_bias)
    for i in range(conv_bias.shape[0]):
        for j in range(conv_bias.shape[1]):
            output[i, j] = float(act(conv_bias[i, j]))
    return output


def maxpool_loop(x: np.ndarray, size: int = 2, stride: int | None = None) -> np.ndarray:
    """Plain-loop reference for :func:`maxpool`, the report's ``maxpool_layer`` (2.7).

    The steps, as in the report (indices 0-based here, 1-based in R):

    1. ``steps_down = n_xrows %/% size`` and ``steps_right = n_xcols %/% size``: how many whole
       windows fit; integer division drops an odd last row or column. (With a ``stride`` other
       than ``size``, which the report does not use, this is ``(n - size) // stride + 1``.)
    2. ``row_start`` and ``col_start``: where each window starts, every ``size`` (``stride``)
       pixels.
    3. For each window ``(i, j)``, ``results[i, j]`` is the maximum of
       ``X[row_start[i] : row_start[i] + size, col_start[j] : col_start[j] + size]``.

    Args:
        x: one image ``(H, W)``.
        size: the window side (default 2).
        stride: the step between windows; ``None`` (default) means ``size``, as in the report.

    Returns:
        ``(H', W')`` array in the input's dtype, ``H' = (H - size) // stride + 1``.

    Raises:
        ConfigError, ShapeError: as for :func:`maxpool` (2-D only).
    """
    x = np.asarray(x)
    size, stride, _ = _check_pool(x.shape, size, stride, batched_ok=False)
    n_xrows, n_xcols = x.shape
    steps_down = (n_xrows - size) // stride + 1  # = n_xrows // size when stride == size
    steps_right = (n_xcols - size) // stride + 1
    row_start = list(range(0, n_xrows, stride))
    col_start = list(range(0, n_xcols, stride))
    results = np.empty((steps_down, steps_right), dtype=x.dtype)
    for i in range(steps_down):
        r_subset = slice(row_start[i], row_start[i] + size)
        for j in range(steps_right):
            c_subset = slice(col_start[j], col_start[j] + size)
            results[i, j] = np.max(x[r_subset, c_subset])
    return results
