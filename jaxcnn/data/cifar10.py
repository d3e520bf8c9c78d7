"""CIFAR-10 from the official *binary* version, and (optionally) from TensorFlow Datasets.

The binary version (``cifar-10-binary.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html)
holds ``cifar-10-batches-bin/data_batch_1.bin`` .. ``data_batch_5.bin`` (training, 10000
records each), ``test_batch.bin`` (10000 records) and ``batches.meta.txt`` (class names).
Each record is 3073 bytes: one label byte (0..9), then a 32x32 image as 1024 red, 1024 green
and 1024 blue bytes (channel-major, rows top to bottom). We return NHWC uint8.

Every batch must hold its official count of records (:data:`RECORDS`, 10,000, so each file is
exactly 30,730,000 bytes): a file cut at a record boundary, as an interrupted copy leaves it, is
refused instead of loading as a smaller data set. The archive, when it is what was given, must
match the SHA-256 of the official download (:data:`ARCHIVE_SHA256`). Tests that write tiny batches
set these two module attributes.

The "python version" of CIFAR-10 stores pickles and is never read here.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.data._common import Arrays, Located, check_sha256, labels_int32
from jaxcnn.errors import DataError

__all__ = [
    "CIFAR10_CLASSES",
    "TRAIN_FILES",
    "TEST_FILE",
    "BIN_FILES",
    "ARCHIVE",
    "FOLDER",
    "RECORD_BYTES",
    "RECORDS",
    "ARCHIVE_SHA256",
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
#: Records in each official batch file (5 x 10,000 training images, 10,000 test images).
RECORDS: dict[str, int] = {name: 10000 for name in BIN_FILES}
#: SHA-256 of the official ``cifar-10-binary.tar.gz`` (as pinned for the download); ``None``
#: skips the check (tests that pack tiny archives).
ARCHIVE_SHA256: str | None = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"

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


def parse_batch(data: bytes, where: str, fix: str = _FIX_BIN, records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode one binary batch.

    Args:
        data: the file's bytes, a whole number of 3073-byte records.
        where: the file's name, for error messages.
        records: the number of records the batch must hold (``None``: any whole number).

    Returns:
        ``(images, labels)``: ``(n, 32, 32, 3)`` uint8 NHWC and ``(n,)`` int32.
    """
    full = 10000 if records is None else records
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DataError(
            f"CIFAR-10 batch {where} is truncated or corrupt: {len(data)} bytes is not a "
            f"whole number of {RECORD_BYTES}-byte records (1 label byte + 3072 pixel bytes; "
            f"a full batch is {full} records, {full * RECORD_BYTES} bytes). {fix}"
        )
    if records is not None and len(data) != records * RECORD_BYTES:
        raise _count_error(where, len(data), records, fix)
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = labels_int32(rows[:, 0], 10, f"CIFAR-10 batch {where}", fix)
    images = rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _check_size(p: Path) -> None:
    """Refuse a batch file whose size is not its official count of records."""
    records = RECORDS.get(p.name)
    try:
        size = p.stat().st_size
    except OSError:
        return  # _read_file reports it
    if records is not None and size and size % RECORD_BYTES == 0 and size != records * RECORD_BYTES:
        raise _count_error(str(p), size, records, _FIX_BIN)


def _count_error(where: str, size: int, records: int, fix: str) -> DataError:
    n = size // RECORD_BYTES
    what = "truncated (an interrupted copy?)" if n < records else "too long (not an official batch)"
    return DataError(
        f"CIFAR-10 batch {where} is {what}: it holds {n} records ({size} bytes) but every "
        f"official batch holds {records} ({records * RECORD_BYTES} bytes). {fix}"
    )


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
        if ARCHIVE_SHA256 is not None:
            check_sha256(
                archive, ARCHIVE_SHA256,
                f"It is truncated, corrupt or not the official {ARCHIVE}: delete it and download it again "
                f"(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz), or pass the folder of its "
                f"extracted .bin batches instead.",
            )
        blobs = _read_tar(archive)
        parts = {n: parse_batch(blobs[n], f"{n} in {archive}", records=RECORDS.get(n)) for n in BIN_FILES}
    elif located.kind == "cifar_bin":
        for p in located.paths:  # sizes first: a cut file is refused before anything is read
            _check_size(p)
        parts = {p.name: parse_batch(_read_file(p), str(p), records=RECORDS.get(p.name)) for p in located.paths}
    else:
        raise ValueError(f"not a CIFAR-10 location: {located.kind}")
    x_train = np.concatenate([parts[n][0] for n in TRAIN_FILES])
    y_train = np.concatenate([parts[n][1] for n in TRAIN_FILES])
    x_test, y_test = parts[TEST_FILE]
    return x_train, y_train, x_test, y_test
