"""CIFAR-10 from the official *binary* version, and (optionally) from TensorFlow Datasets.

The binary version (``cifar-10-binary.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html)
holds ``cifar-10-batches-bin/data_batch_1.bin`` .. ``data_batch_5.bin`` (training, 10000
records each), ``test_batch.bin`` (10000 records) and ``batches.meta.txt`` (class names).
Each record is 3073 bytes: one label byte (0..9), then a 32x32 image as 1024 red, 1024 green
and 1024 blue bytes (channel-major, rows top to bottom). We return NHWC uint8.

The "python version" of CIFAR-10 stores pickles and is never read here.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.data._common import Arrays, Located, labels_int32
from jaxcnn.errors import DataError

__all__ = [
    "CIFAR10_CLASSES",
    "TRAIN_FILES",
    "TEST_FILE",
    "BIN_FILES",
    "ARCHIVE",
    "FOLDER",
    "RECORD_BYTES",
    "locate",
    "read",
    "parse_batch",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
BIN_FILES: tuple[str, ...] = TRAIN_FILES + (TEST_FILE,)
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
RECORD_BYTES = 1 + 32 * 32 * 3

_PICKLED = ("cifar-10-batches-py", "cifar-10-python.tar.gz")
_FIX_BIN = (
    "Delete it and copy it again, or re-download cifar-10-binary.tar.gz "
    "(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz)."
)


def _is_archive(p: Path) -> bool:
    return p.name.endswith((".tar.gz", ".tgz", ".tar"))


def _bins_in(folder: Path) -> Located | None:
    present = [folder / f for f in BIN_FILES if (folder / f).is_file()]
    if not present:
        return None
    missing = [f for f in BIN_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{folder} holds only some of the CIFAR-10 binary batches: missing "
            f"{', '.join(missing)}. All of {', '.join(BIN_FILES)} are needed; copy the missing "
            f"ones from {ARCHIVE} (folder {FOLDER}/)."
        )
    return Located("cifar_bin", tuple(folder / f for f in BIN_FILES), folder)


def locate(path: Path) -> Located | None:
    """Find CIFAR-10 binary data at ``path``.

    ``path`` may be the archive itself (``cifar-10-binary.tar.gz``), a folder holding the
    six ``.bin`` files, a folder holding ``cifar-10-batches-bin/``, or a folder holding the
    archive (checked in that order).

    Returns:
        What was found, or ``None`` when nothing usable is there.

    Raises:
        DataError: a partial set of batches, or only the pickled "python version".
    """
    if path.is_file():
        if _is_archive(path):
            return Located("cifar_tar", (path,), path)
        raise DataError(
            f"{path} is not a CIFAR-10 archive: pass the folder that holds the .bin batches, "
            f"the {FOLDER} folder, or the {ARCHIVE} file."
        )
    if not path.is_dir():
        return None
    for folder in (path, path / FOLDER):
        found = _bins_in(folder)
        if found is not None:
            return found
    if (path / ARCHIVE).is_file():
        return Located("cifar_tar", (path / ARCHIVE,), path / ARCHIVE)
    pickled = [n for n in _PICKLED if (path / n).exists()]
    if pickled:
        raise DataError(
            f"{path} holds the Python (pickled) version of CIFAR-10 ({', '.join(pickled)}), "
            f"which jaxcnn never reads because unpickling can run arbitrary code. Download "
            f"the binary version instead: https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
        )
    return None


def parse_batch(data: bytes, where: str, fix: str = _FIX_BIN) -> tuple[np.ndarray, np.ndarray]:
    """Decode one binary batch.

    Args:
        data: the file's bytes, a whole number of 3073-byte records.
        where: the file's name, for error messages.

    Returns:
        ``(images, labels)``: ``(n, 32, 32, 3)`` uint8 NHWC and ``(n,)`` int32.
    """
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DataError(
            f"CIFAR-10 batch {where} is truncated or corrupt: {len(data)} bytes is not a "
            f"whole number of {RECORD_BYTES}-byte records (1 label byte + 3072 pixel bytes; "
            f"a full batch is 10000 records, {10000 * RECORD_BYTES} bytes). {fix}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = labels_int32(records[:, 0], 10, f"CIFAR-10 batch {where}", fix)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_file(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 batch {p} does not exist. {_FIX_BIN}") from None
    except OSError as e:
        raise DataError(f"Cannot read CIFAR-10 batch {p}: {e}. {_FIX_BIN}") from e


def _read_tar(path: Path) -> dict[str, bytes]:
    """Read the six batches from the archive in one sequential pass (never extracts)."""
    fix = (
        f"Delete {path} and download it again "
        f"(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz)."
    )
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in BIN_FILES and base not in out and member.isfile():
                    f = tar.extractfile(member)
                    if f is None:  # pragma: no cover - isfile() members always have data
                        continue
                    data = f.read()
                    if len(data) != member.size:
                        raise DataError(
                            f"{path} is truncated: member {member.name} has {len(data)} of "
                            f"{member.size} bytes. {fix}"
                        )
                    out[base] = data
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. {fix}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}). {fix}") from e
    missing = [f for f in BIN_FILES if f not in out]
    if missing:
        raise DataError(
            f"{path} does not contain {', '.join(missing)}: it is not the CIFAR-10 binary "
            f"archive ({ARCHIVE}, folder {FOLDER}/) or it is incomplete. {fix}"
        )
    return out


def read(located: Located) -> Arrays:
    """Read what :func:`locate` found: ``(x_train, y_train, x_test, y_test)``.

    Images are ``(N, 32, 32, 3)`` uint8 NHWC, labels ``(N,)`` int32; training batches are
    concatenated in order 1..5, records in file order.
    """
    if located.kind == "cifar_tar":
        archive = located.paths[0]
        blobs = _read_tar(archive)
        parts = {n: parse_batch(blobs[n], f"{n} in {archive}") for n in BIN_FILES}
    elif located.kind == "cifar_bin":
        parts = {p.name: parse_batch(_read_file(p), str(p)) for p in located.paths}
    else:
        raise ValueError(f"not a CIFAR-10 location: {located.kind}")
    x_train = np.concatenate([parts[n][0] for n in TRAIN_FILES])
    y_train = np.concatenate([parts[n][1] for n in TRAIN_FILES])
    x_test, y_test = parts[TEST_FILE]
    return x_train, y_train, x_test, y_test
