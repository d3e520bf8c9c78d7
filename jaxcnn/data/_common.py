"""Small shared pieces of the data loaders (internal)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from jaxcnn.errors import ConfigError, DataError

#: (x_train, y_train, x_test, y_test): images (N, H, W, C) uint8, labels (N,) int32.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Located:
    """Data files found on disk, not read yet.

    Attributes:
        kind: ``"npz"``, ``"idx"``, ``"cifar_bin"`` or ``"cifar_tar"``.
        paths: the files to read (for ``"idx"``: train images, train labels, test images,
            test labels; for ``"cifar_bin"``: data_batch_1..5.bin then test_batch.bin).
        where: the file or folder to name in ``Dataset.source``.
    """

    kind: str
    paths: tuple[Path, ...]
    where: Path

    def stat_key(self) -> tuple:
        """A key that changes when any of the files changes (for the in-process memo)."""
        key = []
        for p in self.paths:
            try:
                st = p.stat()
            except OSError:
                return (self.kind, self.paths, None)
            key.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
        return (self.kind, tuple(key))


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


_HASH_OK: set[tuple[str, int, int, str]] = set()


def check_sha256(path: Path, expected: str, fix: str) -> None:
    """Raise DataError unless ``path`` has SHA-256 ``expected``.

    A successful check is remembered for this process (keyed by path, size and mtime), so a
    file is hashed once, not on every load.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. {fix}") from None
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e}. {fix}") from e
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, expected)
    if key in _HASH_OK:
        return
    try:
        got = sha256_of(path)
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e}. {fix}") from e
    if got != expected:
        raise DataError(
            f"{path} is corrupt or was modified: its SHA-256 is {got}, expected {expected}. {fix}"
        )
    _HASH_OK.add(key)


def as_path(value: str | os.PathLike[str], what: str) -> Path:
    """``value`` as a Path with ``~`` expanded; ConfigError if it is not path-like."""
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{what} must be a path (str or os.PathLike), got {value!r}.")
    return Path(value).expanduser()


def labels_int32(y: np.ndarray, num_classes: int, where: str, fix: str) -> np.ndarray:
    """Check that labels are integers in 0..num_classes-1 and return them as int32 (N,)."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{where}: labels must be a 1-D integer array, got {y.dtype} {y.shape}. {fix}"
        )
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{where}: labels must lie in 0..{num_classes - 1}, found {int(y.min())}.."
            f"{int(y.max())}; the file is corrupt. {fix}"
        )
    return y.astype(np.int32)
