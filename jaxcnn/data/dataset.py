"""The :class:`Dataset` container and the array helpers that go with it (NumPy only)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxcnn.errors import ConfigError, DataError, ShapeError

__all__ = ["Dataset", "to_float", "one_hot", "validation_split"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An image classification data set held in memory as NumPy arrays.

    Attributes:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        x_train: training images, ``(N_train, H, W, C)`` uint8 (0..255), original file order.
        y_train: training labels, ``(N_train,)`` int32 in ``0..num_classes-1``.
        x_test: test images, ``(N_test, H, W, C)`` uint8.
        y_test: test labels, ``(N_test,)`` int32.
        class_names: one name per class; ``class_names[y]`` names label ``y``.
        source: human-readable description of where the arrays came from (file or folder).

    Arrays returned by :func:`jaxcnn.data.load` are read-only (they may be shared between
    calls); copy them (``x.copy()``) before editing in place.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != np.uint8:
                raise ShapeError(
                    f"Dataset {self.name!r}: x_{split} must be a uint8 NumPy array of shape "
                    f"(N, H, W, C), got {type(x).__name__} "
                    f"{getattr(x, 'dtype', '?')} {getattr(x, 'shape', '?')}."
                )
            if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype != np.int32:
                raise ShapeError(
                    f"Dataset {self.name!r}: y_{split} must be an int32 NumPy array of shape "
                    f"(N,), got {type(y).__name__} {getattr(y, 'dtype', '?')} "
                    f"{getattr(y, 'shape', '?')}."
                )
            if x.shape[0] != y.shape[0]:
                raise ShapeError(
                    f"Dataset {self.name!r}: x_{split} has {x.shape[0]} images but y_{split} "
                    f"has {y.shape[0]} labels."
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ShapeError(
                f"Dataset {self.name!r}: train images are {self.x_train.shape[1:]} but test "
                f"images are {self.x_test.shape[1:]}."
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(H, W, C)``: (28, 28, 1) for MNIST, (32, 32, 3) for CIFAR-10."""
        h, w, c = self.x_train.shape[1:]
        return (int(h), int(w), int(c))

    def limit(self, n: int | None = None, *, test: int | None = None) -> Dataset:
        """A copy of this data set with only the first ``n`` training examples and, when ``test``
        is given, the first ``test`` test examples (None: all of that split).

        The arrays are views of the original ones (no pixel is copied). A number larger than its
        split keeps all of it.
        """
        for what, k in (("n", n), ("test", test)):
            if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
                raise ConfigError(f"Dataset.limit({what}=...): {what} must be a positive integer or None, got {k!r}.")
        n = self.x_train.shape[0] if n is None else min(int(n), self.x_train.shape[0])
        test = self.x_test.shape[0] if test is None else min(int(test), self.x_test.shape[0])
        if n == self.x_train.shape[0] and test == self.x_test.shape[0]:
            return self
        kept, arrays = [], {}
        if n < self.x_train.shape[0]:
            kept.append(f"first {n} training")
            arrays.update(x_train=self.x_train[:n], y_train=self.y_train[:n])
        if test < self.x_test.shape[0]:
            kept.append(f"first {test} test")
            arrays.update(x_test=self.x_test[:test], y_test=self.y_test[:test])
        return dataclasses.replace(self, **arrays, source=f"{self.source} ({' and '.join(kept)} examples)")

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, "
            f"test={self.x_test.shape[0]}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, source={self.source!r})"
        )


def to_float(x: Any) -> np.ndarray:
    """Scale pixels 0..255 to float32 in [0, 1] (``x / 255``), as the Keras code does.

    Args:
        x: pixel array of any shape, e.g. ``(N, H, W, C)``: integers (uint8), or floats that
            still hold 0..255 values (the usual slip ``fit`` warns about).

    Returns:
        A new float32 array of the same shape.

    Raises:
        ShapeError: floats already in [0, 1] (dividing by 255 twice), numbers outside 0..255
            or not finite, or booleans.
    """
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
            raise ShapeError(
                f"to_float expects pixels 0..255, got floats from {lo:g} to {hi:g}; scale such data yourself"
            )
        if hi <= 1:
            raise ShapeError(
                f"to_float expects pixels 0..255, got floats from {lo:g} to {hi:g}: "
                "the array looks already scaled; do not divide by 255 twice."
            )
    elif a.dtype == np.bool_:
        raise ShapeError("to_float expects pixels 0..255, got booleans (True would become 1/255); use x.astype(np.float32) for 0 and 1")
    elif not np.issubdtype(a.dtype, np.integer):
        raise ShapeError(f"to_float expects integer pixels 0..255 (uint8), got dtype {a.dtype}")
    elif a.dtype != np.uint8 and a.size and (int(a.min()) < 0 or int(a.max()) > 255):
        raise ShapeError(
            f"to_float expects pixels 0..255, got {a.dtype} integers from {int(a.min())} to {int(a.max())} (16-bit images?); "
            "scale such data yourself, e.g. x.astype(np.float32) / x.max()"
        )
    return a.astype(np.float32) / np.float32(255.0)


def one_hot(y: Any, num_classes: int) -> np.ndarray:
    """One-hot encode integer labels.

    Args:
        y: integer labels of any shape ``S`` with values in ``0..num_classes-1``.
        num_classes: number of classes ``K``.

    Returns:
        float32 array of shape ``S + (K,)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ConfigError(f"one_hot: num_classes must be an integer, got {num_classes!r}.")
    if num_classes < 1:
        raise ConfigError(f"one_hot: num_classes must be at least 1, got {num_classes}.")
    labels = np.asarray(y)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShapeError(f"one_hot expects integer labels, got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"one_hot: labels must lie in 0..{num_classes - 1}, found values from "
            f"{labels.min()} to {labels.max()}."
        )
    return np.eye(int(num_classes), dtype=np.float32)[labels]


def validation_split(
    x: Any, y: Any, fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split off the **last** ``fraction`` of the examples for validation, like Keras.

    Keras' ``fit(validation_split=...)`` takes the validation data from the end of the
    arrays, before any shuffling, with ``split_at = floor(n * (1.0 - fraction))``
    (``keras/src/trainers/data_adapters/array_slicing.py``, ``train_validation_split``).
    The same rounding is used here: n=10, fraction=0.2 gives 8 + 2; n=7 gives 5 + 2.

    Args:
        x: inputs, first axis ``N`` (e.g. ``(N, H, W, C)``).
        y: targets, first axis ``N``.
        fraction: float strictly between 0 and 1.

    Returns:
        ``((x_train, y_train), (x_val, y_val))``: views, ``x_train = x[:split_at]`` and
        ``x_val = x[split_at:]``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise ConfigError(
            f"validation_split: fraction must be a float in (0, 1), got {fraction!r}."
        )
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"validation_split: fraction must be strictly between 0 and 1, got {fraction}."
        )
    xa = x if hasattr(x, "shape") and hasattr(x, "__getitem__") else np.asarray(x)
    ya = y if hasattr(y, "shape") and hasattr(y, "__getitem__") else np.asarray(y)
    if len(xa.shape) == 0 or len(ya.shape) == 0:
        raise ShapeError("validation_split: x and y must have a leading example axis.")
    n = int(xa.shape[0])
    if int(ya.shape[0]) != n:
        raise ShapeError(
            f"validation_split: x has {n} examples but y has {int(ya.shape[0])}."
        )
    split_at = int(math.floor(n * (1.0 - fraction)))
    if split_at == 0 or split_at == n:
        raise ConfigError(
            f"validation_split: {n} examples are not enough to split with fraction={fraction} "
            f"(it would leave {split_at} for training and {n - split_at} for validation). "
            "Use more data or another fraction."
        )
    return (xa[:split_at], ya[:split_at]), (xa[split_at:], ya[split_at:])
