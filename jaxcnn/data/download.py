"""Where each data set can be downloaded from, with pinned SHA-256 hashes, and the download.

The URLs and hashes are those that TensorFlow Datasets pins in its ``url_checksums``
(``tensorflow_datasets/url_checksums/{mnist,fashion_mnist,cifar10}.txt``, TFDS 4.9.10):

* MNIST: the Google CVDF mirror of Yann LeCun's four IDX files.
* Fashion-MNIST: the official Zalando Research S3 bucket (the URLs in its README).
* CIFAR-10: the official binary version from the University of Toronto (the tarball's MD5,
  c32a1d4ab5d03f1284b67883e8d87530, is the one on the CIFAR page; we verify its SHA-256).

Downloads go through ``pooch.retrieve`` (imported only when a download happens), which checks
the hash, shows a progress bar and keeps a file only once its hash matched.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from jaxcnn.errors import DataError

__all__ = ["RemoteFile", "REMOTE_FILES", "offline", "download_allowed", "fetch"]


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to download: its URL, the name to store it under, its SHA-256 and size."""

    url: str
    fname: str
    sha256: str
    size: int

    @property
    def known_hash(self) -> str:
        """The hash in pooch's ``"algorithm:hex"`` form."""
        return f"sha256:{self.sha256}"


_CVDF = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_ZALANDO = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

#: Data set name -> the files a download fetches.
REMOTE_FILES: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": (
        RemoteFile(
            _CVDF + "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422,
        ),
        RemoteFile(
            _CVDF + "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881,
        ),
        RemoteFile(
            _CVDF + "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877,
        ),
        RemoteFile(
            _CVDF + "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542,
        ),
    ),
    "fashion_mnist": (
        RemoteFile(
            _ZALANDO + "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880,
        ),
        RemoteFile(
            _ZALANDO + "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515,
        ),
        RemoteFile(
            _ZALANDO + "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102,
        ),
        RemoteFile(
            _ZALANDO + "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148,
        ),
    ),
    "cifar10": (
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "cifar-10-binary.tar.gz",
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171,
        ),
    ),
}

_FALSY = {"", "0", "false", "no", "off"}


def offline() -> bool:
    """True when the environment variable ``JAXCNN_OFFLINE`` is set to a true value."""
    return os.environ.get("JAXCNN_OFFLINE", "").strip().lower() not in _FALSY


def download_allowed(download: bool | None) -> bool:
    """Whether a download may be attempted.

    ``download=True`` always allows it (even with ``JAXCNN_OFFLINE=1``), ``download=False``
    never does, ``None`` (the default) allows it unless ``JAXCNN_OFFLINE`` is set.
    """
    if download is None:
        return not offline()
    return bool(download)


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def fetch(name: str, dest: str | os.PathLike[str], *, progressbar: bool = True) -> list[Path]:
    """Download the files of data set ``name`` into the folder ``dest`` (hash-checked).

    Files already in ``dest`` with the right hash are not downloaded again.

    Returns:
        The paths of the downloaded files, in :data:`REMOTE_FILES` order.

    Raises:
        DataError: pooch is missing, the network failed, or a hash did not match.
    """
    files = REMOTE_FILES[name]
    try:
        import pooch
    except ImportError as e:
        raise DataError(
            f"Downloading {name} needs the 'pooch' package (pip install pooch), or put the "
            f"files in {dest} yourself: " + ", ".join(f.url for f in files)
        ) from e
    dest_dir = Path(dest)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create the data folder {dest_dir}: {e}.") from e
    out: list[Path] = []
    for f in files:
        try:
            got = pooch.retrieve(
                f.url,
                known_hash=f.known_hash,
                fname=f.fname,
                path=dest_dir,
                progressbar=progressbar and _has_tqdm(),
            )
        except ValueError as e:  # pooch's hash mismatch (the bad download is not kept)
            raise DataError(
                f"Downloaded {f.url} but its SHA-256 does not match the pinned "
                f"{f.sha256} ({e}). The download was discarded; try again later, or download "
                f"it by hand, check it with `sha256sum {f.fname}`, and put it in {dest_dir}."
            ) from e
        except Exception as e:  # network errors come from requests, urllib3, OSError...
            raise DataError(
                f"Could not download {f.url} ({type(e).__name__}: {e}). Check the network, or "
                f"download the file by hand (SHA-256 {f.sha256}) and put it in {dest_dir} as "
                f"{f.fname}."
            ) from e
        out.append(Path(got))
    return out
