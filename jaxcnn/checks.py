"""Input checks shared by ``fit``, ``evaluate``, ``predict`` and the search.

Every check runs in Python on host arrays, before anything is compiled, and raises a
:mod:`jaxcnn.errors` exception whose one-line message says what was wrong and what to do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxcnn.errors import ConfigError, ShapeError


def check_images(x: Any, expected: tuple[int, ...], what: str = "x") -> np.ndarray:
    """``x`` as an array of float images (N, H, W, C), checked against ``expected`` (H, W, C)
    (empty: any shape)."""
    x = np.asarray(x)
    if x.size == 0 or len(x) == 0:
        raise ShapeError(f"{what} is empty: there is nothing to train or evaluate on")
    if x.ndim == 3 and expected and expected[-1] == 1 and x.shape[1:] == expected[:2]:
        raise ShapeError(
            f"{what} has shape {x.shape} but the model takes (N, {', '.join(map(str, expected))}); "
            "add the channel axis with x[..., None]"
        )
    if x.ndim != 4 or (expected and tuple(x.shape[1:]) != tuple(expected)):
        shape = f"(N, {', '.join(map(str, expected))})" if expected else "(N, H, W, C)"
        raise ShapeError(f"{what} has shape {x.shape} but the model takes images of shape {shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(
            f"{what} has dtype {x.dtype}; the model takes floating-point images. Scale them to "
            "[0, 1] first, e.g. jaxcnn.data.to_float(x) (pixels / 255, as the report does)"
        )
    return x


def check_labels(y: Any, n: int, num_classes: int, what: str = "y") -> np.ndarray:
    """Labels for ``n`` examples: integer classes (N,) come back as int32; one-hot or soft
    targets (N, classes) come back as float32 distributions, kept as they are (as Keras's
    categorical cross-entropy takes them)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes:
        if len(y) != n:
            raise ShapeError(f"{what} has {len(y)} labels for {n} images; they must match one to one")
        if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
            raise ShapeError(f"{what} has dtype {y.dtype}; one-hot or soft labels must be numbers")
        return y.astype(np.float32)
    if y.ndim != 1:
        raise ShapeError(f"{what} has shape {y.shape}; expected integer labels (N,) or one-hot (N, {num_classes})")
    if len(y) != n:
        raise ShapeError(f"{what} has {len(y)} labels for {n} images; they must match one to one")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise ShapeError(f"{what} has dtype {y.dtype}; labels must be integers 0..{num_classes - 1}")
    y = y.astype(np.int32)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ShapeError(
            f"{what} holds label {int(y[bad[0]])} at index {int(bad[0])}, outside 0..{num_classes - 1} "
            f"({bad.size} labels out of range); the model has {num_classes} classes"
        )
    return y


def check_positive_int(value: Any, what: str) -> int:
    """``value`` as a positive ``int`` (bools refused)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)
