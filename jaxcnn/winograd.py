"""Winograd convolutions: stride-1 3x3 and 5x5 convolutions with 2.2x to 6.2x fewer multiplications.

Winograd's minimal filtering algorithm F(m x m, r x r) computes an m x m tile of a convolution's
output from an (m + r - 1)-square tile of its input (Lavin and Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016)::

    Y = A^T [ (G g G^T) . (B^T d B) ] A

Here jaxcnn uses output tiles of 4 x 4: F(4, 3) for 3x3 kernels (36 products per 16 outputs
against 144, 4x fewer) and F(4, 5) for 5x5 kernels (64 against 400, 6.25x fewer). The products of
all tiles at one of the (m + r - 1)^2 positions are one matmul over the input channels, so a
convolution becomes a batched matmul between two transforms that are sums of a few shifted slices
with constant coefficients. cuDNN uses the same algorithm on GPUs; XLA's CPU backend has none, and
its direct convolutions already run near the matmul peak of these cores, so fewer multiplications
were the one way left to make them faster (docs/cpu.md has the measurements).

The transforms use the points 0, +-1, +-2 (and +-1/2 for 5x5) and infinity, solved for here in
float64 (:func:`matrices`). In float32 the largest error against XLA's convolution, relative to the
largest output, was about 6e-6 for F(4, 3) and 1e-5 for F(4, 5) on unit-normal data (tested).

:func:`conv` has a custom reverse-mode rule: the kernel's gradient is one batched matmul of the
input's transform (kept from the forward pass) with the transformed output gradient, and the input's
gradient is another Winograd convolution, of the output gradient with the flipped kernel. Forward
mode (``jax.jvp``, ``jax.jacfwd``) is not defined through it; XLA's convolution, what
:func:`jaxcnn.layers.conv2d` uses unless ``JAXCNN_WINOGRAD=1`` or ``method="winograd"`` asks for
this one, has both. Off by default: the transforms are unrolled into many small ops, and a
program with three such layers took ten times as long to compile (docs/cpu.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Padding = Sequence[tuple[int, int]]

#: Side of the output tile.
TILE = 4
#: Kernel sizes with a Winograd algorithm here, and the interpolation points of each (with infinity).
POINTS: dict[int, tuple[float, ...]] = {3: (0, 1, -1, 2, -2), 5: (0, 1, -1, 2, -2, 0.5, -0.5)}


@functools.lru_cache(maxsize=None)
def matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of F(m, r) for 1-D correlation ``y[i] = sum_k d[i + k] g[k]``:
    ``y = A^T ((G g) * (B^T d))``, with A^T (m x a) and G (a x r) Toom-Cook's Vandermonde matrices
    over :data:`POINTS` plus the point at infinity, and B^T (a x a, a = m + r - 1) solved for in
    float64 so that the identity holds exactly."""
    points = POINTS[r]
    a = m + r - 1
    if len(points) != a - 1:
        raise ValueError(f"F({m}, {r}) needs {a - 1} finite points, have {len(points)}")
    p = np.asarray(points, np.float64)
    at = np.zeros((m, a))
    at[:, : a - 1] = p[None, :] ** np.arange(m)[:, None]
    at[m - 1, a - 1] = 1.0
    g = np.zeros((a, r))
    for j in range(a - 1):
        g[j] = p[j] ** np.arange(r) / np.prod([p[j] - p[k] for k in range(a - 1) if k != j])
    g[a - 1, r - 1] = 1.0
    # sum_t AT[i, t] G[t, k] BT[t, j] = [j == i + k] for all i, k, j: linear in BT.
    eqs = np.zeros((m, r, a, a, a))
    for j in range(a):
        eqs[:, :, j, :, j] = at[:, None, :] * g.T[None, :, :]
    rhs = np.zeros((m, r, a))
    for i in range(m):
        for k in range(r):
            rhs[i, k, i + k] = 1.0
    bt, *_ = np.linalg.lstsq(eqs.reshape(-1, a * a), rhs.reshape(-1), rcond=None)
    if np.abs(eqs.reshape(-1, a * a) @ bt - rhs.reshape(-1)).max() > 1e-9:
        raise ValueError(f"no Winograd input transform for F({m}, {r}) with points {points}")
    bt = bt.reshape(a, a)
    bt[np.abs(bt) < 1e-12] = 0.0
    return at, g, bt


def _combine(coefs: np.ndarray, terms: Sequence[Array]) -> Array:
    """``sum(c * t)`` over the nonzero constant coefficients (no multiply for +-1)."""
    out = None
    for c, t in zip(coefs, terms):
        if c == 0:
            continue
        v = t if c == 1 else -t if c == -1 else t * np.asarray(c, t.dtype)
        out = v if out is None else out + v
    return jnp.zeros_like(terms[0]) if out is None else out


def _geometry(x_shape: Sequence[int], r: int, padding: Padding) -> tuple[int, int, int, int]:
    (pt, pb), (pl, pr) = padding
    oh, ow = x_shape[1] + pt + pb - r + 1, x_shape[2] + pl + pr - r + 1
    return oh, ow, -(-oh // TILE), -(-ow // TILE)


def _input_transform(xp: Array, bt: np.ndarray, th: int, tw: int) -> Array:
    """``B^T d B`` of every (a x a) input tile at stride :data:`TILE`: (a * a, N * th * tw, C), the
    rows' transform first (a strided slice per tap), then the columns'."""
    a = bt.shape[0]
    rows = [lax.slice_in_dim(xp, u, u + (th - 1) * TILE + 1, TILE, axis=1) for u in range(a)]
    r = jnp.stack([_combine(bt[i], rows) for i in range(a)])             # (a, N, th, Wp, C)
    cols = [lax.slice_in_dim(r, v, v + (tw - 1) * TILE + 1, TILE, axis=3) for v in range(a)]
    v = jnp.stack([_combine(bt[j], cols) for j in range(a)])             # (a_col, a_row, N, th, tw, C)
    return v.reshape(a * a, -1, xp.shape[-1])


def _output_transform(prod: Array, at: np.ndarray, n: int, th: int, tw: int, interleave: bool) -> Array:
    """``A^T M A`` of every tile's products ``prod`` (a * a, N * th * tw, F), laid out as the
    (N, th * TILE, tw * TILE, F) output. Two layouts of the same sums: ``interleave`` builds the
    output rows by nested stacks (faster in the forward pass); otherwise the 16 tile positions are
    stacked and transposed into place (faster for the input gradient, where XLA fuses it into the
    next layer's backward; BENCHMARKS.md)."""
    a = at.shape[1]
    prod = prod.reshape(a, a, n, th, tw, -1)                               # (a_col, a_row, ...)
    half = [_combine(at[j], [prod[b] for b in range(a)]) for j in range(TILE)]  # (a_row, N, th, tw, F)
    if interleave:
        y = jnp.stack([jnp.stack([_combine(at[i], [half[j][b] for b in range(a)]) for j in range(TILE)], 3)
                       for i in range(TILE)], 2)
    else:
        y = jnp.stack([_combine(at[i], [half[j][b] for b in range(a)]) for i in range(TILE) for j in range(TILE)])
        y = y.reshape(TILE, TILE, n, th, tw, -1).transpose(2, 3, 0, 4, 1, 5)
    return y.reshape(n, th * TILE, tw * TILE, -1)


def _kernel_transform(kernel: Array, g: np.ndarray) -> Array:
    """``G k G^T`` of an HWIO kernel: (a * a, C, F), in the input transform's (column, row) order."""
    gj = jnp.asarray(g, kernel.dtype)
    u = jnp.einsum("ak,bl,klcf->bacf", gj, gj, kernel, precision=lax.Precision.HIGHEST)
    return u.reshape(g.shape[0] ** 2, *kernel.shape[2:])


def _forward(x: Array, kernel: Array, padding: Padding, interleave: bool = True) -> tuple[Array, Array]:
    r = kernel.shape[0]
    at, g, bt = matrices(TILE, r)
    n, h, w, _ = x.shape
    oh, ow, th, tw = _geometry(x.shape, r, padding)
    (pt, _), (pl, _) = padding
    hp, wp = th * TILE + r - 1, tw * TILE + r - 1
    xp = jnp.pad(x, ((0, 0), (pt, hp - h - pt), (pl, wp - w - pl), (0, 0)))
    v = _input_transform(xp, bt, th, tw)
    prod = lax.dot_general(v, _kernel_transform(kernel, g), (((2,), (1,)), ((0,), (0,))))
    return _output_transform(prod, at, n, th, tw, interleave)[:, :oh, :ow], v


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: Array, kernel: Array, padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    return _forward(x, kernel, padding)[0]


def _conv_fwd(x, kernel, padding):
    y, v = _forward(x, kernel, padding)
    return y, (v, kernel)


def _conv_bwd(padding, res, dy):
    v, kernel = res
    r = kernel.shape[0]
    at, g, _ = matrices(TILE, r)
    a = at.shape[1]
    n, oh, ow, _ = dy.shape
    c = v.shape[2]
    th, tw = -(-oh // TILE), -(-ow // TILE)
    # The output transform's transpose: each output tile's gradient to its a x a products.
    dyp = jnp.pad(dy, ((0, 0), (0, th * TILE - oh), (0, tw * TILE - ow), (0, 0))).reshape(n, th, TILE, tw, TILE, -1)
    cols = [_combine(at[:, b], [dyp[:, :, :, :, j] for j in range(TILE)]) for b in range(a)]   # (N, th, i, tw, F)
    dprod = jnp.stack([jnp.stack([_combine(at[:, i], [cols[b][:, :, k] for k in range(TILE)]) for i in range(a)])
                       for b in range(a)]).reshape(a * a, n * th * tw, -1)
    du = lax.dot_general(v, dprod, (((1,), (1,)), ((0,), (0,)))).reshape(a, a, c, -1)     # (col, row, C, F)
    gj = jnp.asarray(g, kernel.dtype)
    dkernel = jnp.einsum("ak,bl,bacf->klcf", gj, gj, du, precision=lax.Precision.HIGHEST)
    # The input's gradient: the output gradient, padded to "full", convolved with the flipped kernel.
    (pt, pb), (pl, pr) = padding
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = _forward(dy, flipped, ((r - 1 - pt, r - 1 - pb), (r - 1 - pl, r - 1 - pr)), interleave=False)[0]
    return dx.astype(dy.dtype), dkernel.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def supports(x_shape: Sequence[int], kernel_shape: Sequence[int], padding: Padding) -> bool:
    """Whether :func:`conv` computes this convolution: a square kernel of a size in :data:`POINTS`,
    and padding of at most the kernel's size less one on each side (as "valid" and "same" are)."""
    kh, kw = kernel_shape[:2]
    if kh != kw or kh not in POINTS or not all(0 <= p <= kh - 1 for side in padding for p in side):
        return False
    oh, ow, _, _ = _geometry(x_shape, kh, padding)
    return oh >= 1 and ow >= 1


def conv(x: Array, kernel: Array, padding: Padding) -> Array:
    """Stride-1 NHWC x HWIO convolution with explicit ``padding`` ((top, bottom), (left, right)) by
    Winograd's F(4 x 4, r x r) (see the module docstring); :func:`supports` says which.
    Differentiable in reverse mode (``jax.grad``, ``jax.vjp``, to any order)."""
    if not supports(x.shape, kernel.shape, padding):
        raise ValueError(f"no Winograd convolution for input {tuple(x.shape)}, kernel {tuple(kernel.shape)} and padding {padding}")
    pads = tuple((int(p0), int(p1)) for p0, p1 in padding)
    return _conv(x, kernel, pads)
