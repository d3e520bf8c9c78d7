"""MNIST and Fashion-MNIST: IDX files, Keras-style ``.npz`` files and the bundled copy.

Accepted in a folder (first match wins):

* a Keras-style archive, ``mnist.npz`` (MNIST) or ``fashion_mnist.npz`` (Fashion-MNIST), with
  arrays ``x_train`` (N, 28, 28) uint8, ``y_train`` (N,), ``x_test``, ``y_test``; it is opened
  with ``allow_pickle=False`` (nothing is ever unpickled);
* the four IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzip-compressed (``.gz``) or
  not (also the ``train-images.idx3-ubyte`` spelling).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.data._common import Arrays, Located, check_sha256, labels_int32
from jaxcnn.data.idx import read_idx
from jaxcnn.errors import DataError

__all__ = [
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IDX_FILES",
    "NPZ_FILES",
    "BUNDLED_MNIST",
    "BUNDLED_MNIST_SHA256",
    "SYSTEM_DIRS",
    "locate",
    "read",
    "check_bundled",
]

MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: The four IDX files, in (x_train, y_train, x_test, y_test) order, as their ``.gz`` names.
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
#: Keras-style single-file archives accepted per data set.
NPZ_FILES: dict[str, str] = {"mnist": "mnist.npz", "fashion_mnist": "fashion_mnist.npz"}

#: MNIST shipped inside the package (see ``jaxcnn/_data/MNIST-README.md`` for provenance).
BUNDLED_MNIST: Path = Path(__file__).resolve().parent.parent / "_data" / "mnist.npz"
BUNDLED_MNIST_SHA256 = "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64"

#: Folders where an operating-system package installs a data set (Debian:
#: ``apt install dataset-fashion-mnist``).
SYSTEM_DIRS: dict[str, Path] = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}

_KEYS = ("x_train", "y_train", "x_test", "y_test")
_REFETCH = "Delete it and copy or download it again"


def _idx_variants(gz_name: str) -> tuple[str, ...]:
    raw = gz_name[: -len(".gz")]
    dotted = raw.replace("-idx", ".idx", 1)  # train-images.idx3-ubyte (LeCun's unpacked name)
    return (gz_name, raw, dotted + ".gz", dotted)


def locate(name: str, folder: Path) -> Located | None:
    """Find ``name``'s files in ``folder``.

    Returns:
        What was found, or ``None`` when the folder holds none of the accepted files.

    Raises:
        DataError: some but not all of the four IDX files are there (names the missing ones).
    """
    npz = folder / NPZ_FILES[name]
    if npz.is_file():
        return Located("npz", (npz,), npz)
    found: list[Path | None] = []
    for gz_name in IDX_FILES:
        hit = next((folder / v for v in _idx_variants(gz_name) if (folder / v).is_file()), None)
        found.append(hit)
    if all(p is None for p in found):
        return None
    missing = [gz for gz, p in zip(IDX_FILES, found) if p is None]
    if missing:
        raise DataError(
            f"{folder} holds only some of the {name} IDX files: missing "
            f"{', '.join(missing)} (or the same names without .gz). Copy or download the "
            f"missing files into {folder}, or remove the partial set."
        )
    return Located("idx", tuple(p for p in found if p is not None), folder)


def _images(x: np.ndarray, where: str, fix: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 (0..255), got {x.dtype}. {fix}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (28, 28, 1):
        raise DataError(
            f"{where}: images must have shape (N, 28, 28) or (N, 28, 28, 1), got {x.shape}. {fix}"
        )
    return np.ascontiguousarray(x)


def _finish(arrays: dict[str, np.ndarray], where: dict[str, str], fix: str) -> Arrays:
    out = []
    for split in ("train", "test"):
        x = _images(arrays[f"x_{split}"], where[f"x_{split}"], fix)
        y = labels_int32(arrays[f"y_{split}"], 10, where[f"y_{split}"], fix)
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{where[f'x_{split}']} has {x.shape[0]} images but {where[f'y_{split}']} has "
                f"{y.shape[0]} labels: one of them is truncated or from another data set. {fix}"
            )
        out += [x, y]
    return out[0], out[1], out[2], out[3]


def _read_npz(path: Path) -> Arrays:
    fix = f"{_REFETCH} (a Keras-style .npz with uint8 arrays {', '.join(_KEYS)})."
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, "files"):
            raise DataError(f"{path} is a single .npy array, not an .npz archive. {fix}")
        with f:
            missing = [k for k in _KEYS if k not in f.files]
            if missing:
                raise DataError(
                    f"{path} lacks the array(s) {', '.join(missing)} (it has "
                    f"{', '.join(f.files) or 'none'}). {fix}"
                )
            arrays = {k: f[k] for k in _KEYS}
    except DataError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise DataError(
                f"{path} contains pickled Python objects (an object array); jaxcnn never "
                f"unpickles data files, as that can run arbitrary code. {fix}"
            ) from e
        raise DataError(f"{path} is not a valid .npz archive ({e}). {fix}") from e
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. {fix}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {e}). {fix}"
        ) from e
    return _finish(arrays, {k: f"{path} [{k}]" for k in _KEYS}, fix)


def _read_idx_set(paths: tuple[Path, ...]) -> Arrays:
    fix = f"{_REFETCH} (the four IDX files: {', '.join(IDX_FILES)})."
    arrays = {k: read_idx(p, fix=fix) for k, p in zip(_KEYS, paths)}
    return _finish(arrays, {k: str(p) for k, p in zip(_KEYS, paths)}, fix)


def read(located: Located) -> Arrays:
    """Read what :func:`locate` found: ``(x_train, y_train, x_test, y_test)``.

    Images come back as ``(N, 28, 28, 1)`` uint8, labels as ``(N,)`` int32, in file order.
    """
    if located.kind == "npz":
        return _read_npz(located.paths[0])
    if located.kind == "idx":
        return _read_idx_set(located.paths)
    raise ValueError(f"not an MNIST-family location: {located.kind}")


def check_bundled(path: Path | None = None) -> Path:
    """Check the SHA-256 of the bundled MNIST (once per process) and return its path."""
    p = BUNDLED_MNIST if path is None else path
    check_sha256(
        p,
        BUNDLED_MNIST_SHA256,
        "The bundled copy in the jaxcnn package is damaged: reinstall jaxcnn (or restore "
        "jaxcnn/_data/mnist.npz with `git checkout -- jaxcnn/_data/mnist.npz`), or pass "
        "data_dir=... pointing at your own MNIST files.",
    )
    return p
