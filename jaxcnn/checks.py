"""Input checks shared by ``fit``, ``evaluate``, ``predict`` and the search.

Every check runs in Python on host arrays, before anything is compiled, and raises a
:mod:`jaxcnn.errors` exception whose one-line message says what was wrong and what to do.

* :func:`check_images`: an array (not a ragged list), four axes NHWC (channels-first input is
  named as such, with the transpose that fixes it), the model's shape, floating point, every
  pixel finite (:func:`check_finite`), and a ``UserWarning`` for pixels above 1.5 (0..255 floats
  that were never scaled).
* :func:`check_labels`: integer classes (or floats holding whole numbers; the first that is not is
  named with its index) or one-hot/soft targets, finite, in range, one per image.
* :func:`check_nnx_dropout`: an NNX module's ``nnx.Dropout`` layers have their ``rngs``.
* :func:`check_positive_int`, :func:`check_seed`, :func:`check_learning_rate`: settings.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any

import numpy as np

from jaxcnn.errors import ConfigError, ShapeError

#: Images checked per slice by :func:`check_finite`, so the check needs little extra memory.
_CHUNK = 4096
#: Float pixels above this draw a warning: 0..255 values that were never divided by 255.
PIXEL_WARN_ABOVE = 1.5
#: Data with negative values is taken as standardised (mean 0, standard deviation 1, no warning)
#: while it stays within this many units of 0; centred 0..255 pixels reach 127.5.
STANDARDISED_MAX = 32.0
#: The largest seed :func:`check_seed` takes (NumPy's and JAX's 32-bit seed range).
MAX_SEED = 2**32 - 1


def as_array(x: Any, what: str = "x") -> np.ndarray:
    """``np.asarray(x)``, with a ragged sequence (items of different shapes) refused as a
    ``ShapeError`` instead of NumPy's ``ValueError``."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):
        raise ShapeError(
            f"{what} cannot be made into one array: it looks like a ragged list whose items have different "
            "shapes; give one array, e.g. np.stack(images), with every item of the same shape"
        ) from None
    if a.dtype == object:
        raise ShapeError(
            f"{what} is an array of Python objects (a ragged list, or items of different shapes or types); "
            "give one numeric array, e.g. np.stack(images), with every item of the same shape"
        )
    return a


def _channels_first(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Whether a 4-axis ``shape`` looks like (N, C, H, W): it is the model's (H, W, C) with the
    channel axis moved first, or (with no model shape yet) 1 to 4 channels (gray, two bands,
    RGB, RGBA) before two image axes of at least 8 pixels."""
    if len(shape) != 4:
        return False
    if expected:
        h, w, c = expected
        return tuple(shape[1:]) == (c, h, w) and tuple(shape[1:]) != tuple(expected)
    return shape[1] in (1, 2, 3, 4) and shape[2] >= 8 and shape[3] >= 8 and shape[3] not in (1, 2, 3, 4)


def check_input_shape(shape: tuple[int, ...], what: str = "input_shape") -> None:
    """Refuse one input's shape (C, H, W), channels-first (PyTorch's, torchsummary's), with the
    channels-last shape the models take: 1, 3 or 4 before two equal axes (a non-square shape such
    as (1, 200, 12) may be meant as it is, 12 channels). ``summary`` checks its input_shape with
    it; ``create_train_state`` takes a shape as given (fit's channels-first message names it as
    the way to train on such a shape, and reloaded exports pass their recorded shape there)."""
    if len(shape) == 3 and shape[1] == shape[2] and _channels_first((1, *shape), ()):
        c, h, w = shape
        raise ShapeError(f"{what} {tuple(shape)} looks channels-first (C, H, W); jaxcnn's models take channels-last "
                         f"images (H, W, C): pass ({h}, {w}, {c})")


def check_finite(x: np.ndarray, what: str = "x") -> float | None:
    """Raise ``ShapeError`` naming the first NaN or infinite value of ``x`` (by index), if any;
    return the largest value (``None`` for an integer or empty array, finite by construction, and
    for standardised data: values below 0, none beyond :data:`STANDARDISED_MAX` either way;
    0..255 pixels centred on 0, up to 127.5, still count).

    Runs over slices of ``_CHUNK`` images with a min and a max each (NumPy's propagate NaN), so a
    60,000-image set costs a few tens of milliseconds and no temporary array.
    """
    if not np.issubdtype(x.dtype, np.inexact) or x.size == 0:
        return None
    n = len(x) if x.ndim else 1
    flat = x.reshape(n, -1) if x.ndim else x.reshape(1, 1)
    top, bottom = -np.inf, np.inf
    for start in range(0, n, _CHUNK):
        part = flat[start : start + _CHUNK]
        lo, hi = part.min(), part.max()
        if np.isfinite(lo) and np.isfinite(hi):
            top, bottom = max(top, float(hi)), min(bottom, float(lo))
            continue
        bad = ~np.isfinite(flat[start:])
        rows = np.flatnonzero(bad.any(axis=1))
        first_row = start + int(rows[0])
        first = np.unravel_index(int(np.flatnonzero(bad[rows[0]])[0]), x.shape[1:]) if x.ndim > 1 else ()
        index = (first_row, *(int(i) for i in first)) if x.ndim else ()
        value = x[index] if x.ndim else x
        kind = "NaN" if np.isnan(value) else ("-inf" if value < 0 else "inf")
        where = f"at index {index[0] if len(index) == 1 else index}" if x.ndim else ""
        count = len(rows)
        plural = "s hold" if count != 1 else " holds"
        item = "image" if x.ndim == 4 else "row"
        raise ShapeError(
            f"{what} holds {kind} {where} ({count} {item}{plural} NaN or infinite values); the model needs finite "
            f"inputs: fix or drop those, e.g. keep = np.isfinite({_name(what)}).reshape(len({_name(what)}), -1).all(1)"
        )
    return top if bottom >= 0 or max(top, -bottom) > STANDARDISED_MAX else None


def _name(what: str) -> str:
    """A Python name for ``what`` in a suggested fix ("validation x" -> "x_val")."""
    return {"validation x": "x_val", "validation y": "y_val"}.get(what, what if what.isidentifier() else "x")


def _warn_unscaled(top: float | None, what: str) -> None:
    """Warn when float pixels go above :data:`PIXEL_WARN_ABOVE` (0..255 values never scaled);
    ``top`` is None for data with negative values (standardised: mean 0, standard deviation 1)."""
    if top is not None and top > PIXEL_WARN_ABOVE:
        warnings.warn(
            f"{what} holds pixel values up to {top:g}, but the model expects floats scaled to [0, 1] (the report "
            f"divides by 255); if these are 0..255 pixels, pass jaxcnn.data.to_float({_name(what)}) instead",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside the jaxcnn package."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a PyTorch tensor (a channels-first fix it can run is ``permute``)."""
    return type(x).__module__.split(".")[0] == "torch"


def check_images(x: Any, expected: tuple[int, ...], what: str = "x", tensor: bool | None = None) -> np.ndarray:
    """``x`` as an array of float images (N, H, W, C), checked against ``expected`` (H, W, C)
    (empty: any shape), every pixel finite. Warns (``UserWarning``) for pixels above 1.5.

    Raises ``ShapeError`` for a ragged list, a missing channel axis, channels-first input
    (N, C, H, W) (the message shows ``x.transpose(0, 2, 3, 1)``), another shape than the
    model's, integer pixels, or a NaN or infinite pixel (the message names the first one's index).
    """
    x = check_image_shape(x, expected, what, tensor)
    _warn_unscaled(check_finite(x, what), what)
    return x


def check_image_shape(x: Any, expected: tuple[int, ...] = (), what: str = "x", tensor: bool | None = None) -> np.ndarray:
    """The shape and dtype part of :func:`check_images` (no pass over the pixels): cheap enough
    to run on a fresh model's input before the model is traced for that shape. ``tensor``: whether
    the caller's ``x`` was a PyTorch tensor (default: whether this ``x`` is one)."""
    torch = is_tensor(x) if tensor is None else tensor
    x = as_array(x, what)
    if x.size == 0 or x.ndim == 0 or len(x) == 0:
        raise ShapeError(f"{what} is empty: there is nothing to train or evaluate on")
    expected = tuple(expected or ())
    if x.ndim == 3 and expected and expected[-1] == 1 and x.shape[1:] == expected[:2]:
        raise ShapeError(
            f"{what} has shape {x.shape} but the model takes (N, {', '.join(map(str, expected))}); "
            "add the channel axis with x[..., None]"
        )
    if _channels_first(x.shape, expected):
        n, c, h, w = x.shape
        raise ShapeError(
            f"{what} has shape {x.shape}, which looks channels-first (N, C, H, W), but the model takes "
            f"channels-last images, NHWC (N, H, W, C) = (N, {h}, {w}, {c}); use {_name(what)}.{'permute' if torch else 'transpose'}(0, 2, 3, 1)"
            + ("" if expected or h == w else f" (if they are channels-last, {x.shape[1:]} = (H, W, C), build the state for that shape and fit it: "
                                   f"jaxcnn.fit(jaxcnn.create_train_state(model, {tuple(x.shape[1:])}), ...))")
        )
    if x.ndim == 3 and expected and tuple(x.shape) == expected:
        raise ShapeError(
            f"{what} has shape {x.shape}, one image; the model takes a batch (N, {', '.join(map(str, expected))}): "
            f"give it as a batch of one, {_name(what)}[None]"
        )
    if x.ndim == 2 and expected and expected[-1] == 1 and tuple(x.shape) == expected[:2]:
        raise ShapeError(f"{what} has shape {x.shape}, one image without its channel axis; the model takes a batch "
                         f"(N, {', '.join(map(str, expected))}): give it as {_name(what)}[None, ..., None]")
    if x.ndim != 4 or (expected and tuple(x.shape[1:]) != expected):
        shape = f"(N, {', '.join(map(str, expected))})" if expected else "(N, H, W, C)"
        raise ShapeError(f"{what} has shape {x.shape} but the model takes images of shape {shape}")
    if not _floating(x.dtype):
        raise ShapeError(
            f"{what} has dtype {x.dtype}; the model takes floating-point images. Scale them to "
            "[0, 1] first, e.g. jaxcnn.data.to_float(x) (pixels / 255, as the report does)"
        )
    return x


def _floating(dtype: Any) -> bool:
    """NumPy's floating types, and the ones JAX adds to NumPy (bfloat16, float8...)."""
    if np.issubdtype(dtype, np.floating):
        return True
    import jax.numpy as jnp

    return bool(jnp.issubdtype(dtype, jnp.floating))


def check_labels(y: Any, n: int, num_classes: int, what: str = "y") -> np.ndarray:
    """Labels for ``n`` examples: integer classes (N,) or (N, 1) come back as int32 (N,); one-hot or soft
    targets (N, classes) come back as float32 distributions, kept as they are (as Keras's
    categorical cross-entropy takes them). NaN or infinite labels raise ``ShapeError``."""
    y = as_array(y, what)
    if y.ndim == 2 and y.shape[1] == 1 and num_classes != 1:
        y = y.reshape(-1)  # integer labels as a column (N, 1), as Keras's sparse cross-entropy takes them
    if y.ndim == 2 and y.shape[1] == num_classes:
        if len(y) != n:
            raise ShapeError(f"{what} has {len(y)} labels for {n} images; they must match one to one")
        if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
            raise ShapeError(f"{what} has dtype {y.dtype}; one-hot or soft labels must be numbers")
        check_finite(y, what)
        return y.astype(np.float32)
    if y.ndim != 1:
        hint = ""
        if y.ndim == 2 and y.shape[1] > num_classes:
            hint = (f"; {y.shape[1]} columns look like one-hot labels of {y.shape[1]} classes, and the model has "
                    f"{num_classes} outputs" + _label_hint(0, y.shape[1] - 1, num_classes, what))
        elif y.ndim == 2 and 1 < y.shape[1] < num_classes:
            hint = (f"; for one-hot labels of {y.shape[1]} classes give the model {y.shape[1]} outputs, or give "
                    f"integer labels, {what}.argmax(1)")
        raise ShapeError(f"{what} has shape {y.shape}; expected integer labels (N,) or one-hot (N, {num_classes}){hint}")
    if y.dtype == np.bool_:
        y = y.astype(np.int32)  # False/True as classes 0/1, as Keras takes them
    if len(y) != n:
        raise ShapeError(f"{what} has {len(y)} labels for {n} images; they must match one to one")
    if np.issubdtype(y.dtype, np.floating):
        check_finite(y, what)
    if np.issubdtype(y.dtype, np.floating):
        fractional = np.flatnonzero(y != np.round(y))
        if fractional.size:
            i = int(fractional[0])
            raise ShapeError(
                f"{what} holds {y[i].item()!r} at index {i}; labels must be whole numbers 0..{num_classes - 1} "
                f"({fractional.size} label{'s are' if fractional.size != 1 else ' is'} not)"
            )
    elif not np.issubdtype(y.dtype, np.integer):
        raise ShapeError(f"{what} has dtype {y.dtype}; labels must be integers 0..{num_classes - 1}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ShapeError(
            f"{what} holds label {int(y[bad[0]])} at index {int(bad[0])}, outside 0..{num_classes - 1} "
            f"({bad.size} label{'s' if bad.size != 1 else ''} out of range); the model has {num_classes} classes"
            + _label_hint(int(y.min()), int(y.max()), num_classes, what)
        )
    y = y.astype(np.int32)
    return y


def int_key_hint(c: Any) -> str:
    """For a class_weight key that is not an int but names a whole number ("1", 1.0): the hint
    to use int keys ("; use int keys, {1: ...}"); else ""."""
    whole = c.strip().isdigit() if isinstance(c, str) else (
        isinstance(c, (float, np.floating)) and float(c).is_integer() and c >= 0)
    return f"; use int keys, {{{int(float(c))}: ...}}" if whole else ""


def _label_hint(low: int, high: int, num_classes: int, what: str = "y") -> str:
    """What labels out of range most likely mean: numbered from 1, or a model with too few outputs."""
    if low == 1 and high == num_classes:
        return f"; labels 1..{high} look numbered from 1 (as in R): subtract 1 from {what}"
    if low >= 0 and high >= num_classes:
        return (f"; for {high + 1} classes the model's last layer needs {high + 1} outputs "
                f"(e.g. nn.Dense({high + 1}), nnx.Linear(..., {high + 1}))")
    return ""


def check_nnx_dropout(module: Any) -> None:
    """Refuse (``ConfigError``) an NNX module holding an ``nnx.Dropout`` with a positive rate built
    without ``rngs``: jaxcnn calls ``module(x)``, so in training Flax would raise "no rngs argument
    was provided to Dropout". Names the first such layer by its path in the module."""
    from flax import nnx

    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Dropout) and node.rngs is None and node.rate > 0:
            where = ".".join(map(str, (type(module).__name__, *path)))
            raise ConfigError(
                f"{where} is an nnx.Dropout({node.rate:g}) built without rngs, so it cannot draw its masks in training "
                f"(jaxcnn calls the model as model(x)); build it with the module's rngs: nnx.Dropout({node.rate:g}, rngs=rngs)"
            )


def check_positive_int(value: Any, what: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum``, 1 (positive) or 0 (bools refused)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ConfigError(f"{what} must be {kind}, got {value!r}")
    return int(value)


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an ``int`` in 0..2**32-1, the range NumPy's and JAX's seeding share.

    Refuses bools, floats (``1.5``, also ``1.0``: a seed is a whole number), negative numbers and
    seeds of 2**32 or more with ``ConfigError``, before anything is built.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ConfigError(f"{what} must be a whole number in 0..{MAX_SEED} (2**32 - 1), got {seed!r}; e.g. {what}=0")
    return int(seed)


def check_learning_rate(learning_rate: Any, what: str = "learning rate") -> Any:
    """A learning rate as a Python ``float``, or a schedule (a callable) unchanged.

    Takes any real number type: ``0.001``, ``np.float32(0.001)``, a 0-d ``np.array(0.001)`` or
    JAX array. ``None`` (the optimizer's default) passes through. 0 is taken, as Keras takes it (the
    weights stay as they are: a sanity check, or a layer frozen by hand). A bool, a non-number, an
    array of more than one value, or a value that is negative or not finite raises ``ConfigError``.
    """
    if learning_rate is None or callable(learning_rate):
        return learning_rate
    value: float | None = None
    if not isinstance(learning_rate, (bool, np.bool_, str, bytes)):
        try:
            arr = np.asarray(learning_rate)
            if arr.shape == () and np.issubdtype(arr.dtype, np.integer):
                value = float(arr)
            elif arr.shape == () and np.issubdtype(arr.dtype, np.floating):
                # the shortest decimal that round-trips: np.float32(0.001) is 0.001, not 0.0010000000474974513
                value = float(np.format_float_positional(arr[()], unique=True, trim="-"))
        except (TypeError, ValueError):
            value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{what} must be a finite number >= 0, got {learning_rate!r}; the report uses 0.001 for RMSprop"
        )
    return value
