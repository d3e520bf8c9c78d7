"""Reading a data set through ``tensorflow_datasets.data_source`` (no TensorFlow needed)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxcnn.data._common import Arrays, labels_int32
from jaxcnn.errors import DataError

#: jaxcnn name -> (TFDS name, image shape).
TFDS_NAMES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "mnist": ("mnist", (28, 28, 1)),
    "fashion_mnist": ("fashion_mnist", (28, 28, 1)),
    "cifar10": ("cifar10", (32, 32, 3)),
}


def _to_arrays(ds: Any, split: str, shape: tuple[int, int, int], where: str):
    n = len(ds)
    x = np.empty((n, *shape), dtype=np.uint8)
    y = np.empty((n,), dtype=np.int64)
    for i in range(n):
        example = ds[i]
        img = np.asarray(example["image"])
        if img.shape != shape or img.dtype != np.uint8:
            raise DataError(
                f"{where}: {split} example {i} has an image of {img.dtype} {img.shape}, "
                f"expected uint8 {shape}."
            )
        x[i] = img
        y[i] = int(np.asarray(example["label"]))
    return x, labels_int32(y, 10, f"{where} ({split})", "Prepare the TFDS data set again.")


def load_tfds(
    name: str, data_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[Arrays, str]:
    """Load ``name`` with ``tfds.data_source`` and convert it to NumPy arrays.

    Args:
        name: a jaxcnn data set name (``"cifar10"``, ``"mnist"``, ``"fashion_mnist"``).
        data_dir: TFDS's data folder (``None``: TFDS's default, ``~/tensorflow_datasets``).
        download: let TFDS download and prepare the data set if it is not prepared yet.

    Returns:
        ``((x_train, y_train, x_test, y_test), description)`` with images (N, H, W, C) uint8
        and labels (N,) int32, in TFDS's record order.
    """
    tfds_name, shape = TFDS_NAMES[name]
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            "source='tfds' needs the tensorflow-datasets package: "
            "pip install tensorflow-datasets (or pip install 'jaxcnn[tfds]')."
        ) from e
    where = f"tensorflow_datasets '{tfds_name}' (data_dir={data_dir or 'TFDS default'})"
    try:
        train, test = tfds.data_source(
            tfds_name,
            split=["train", "test"],
            data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
        )
    except Exception as e:  # TFDS raises many kinds (DatasetNotFoundError, AssertionError...)
        hint = (
            "" if download else
            " Downloading was off: prepare it once with tfds.data_source"
            f"('{tfds_name}', download=True) on a machine with internet, or pass download=True."
        )
        raise DataError(
            f"{where} could not be opened ({type(e).__name__}: {e}).{hint}"
        ) from e
    try:
        x_train, y_train = _to_arrays(train, "train", shape, where)
        x_test, y_test = _to_arrays(test, "test", shape, where)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"{where} could not be read ({type(e).__name__}: {e}). Delete its folder and "
            "prepare it again."
        ) from e
    return (x_train, y_train, x_test, y_test), where
