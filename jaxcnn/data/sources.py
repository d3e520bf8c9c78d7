"""``load(name)``: find a data set on disk (or download it) and return a :class:`Dataset`.

Places tried, in order, unless ``source=`` names one:

1. ``"dir"``: the ``data_dir`` the caller gives (a folder, or a file: ``mnist.npz``,
   ``cifar-10-binary.tar.gz``...);
2. ``"cache"``: the user's cache folder ``<root>/<name>``, where ``<root>`` is the
   ``cache_dir`` argument, else the environment variable ``JAXCNN_DATA``, else
   ``~/.cache/jaxcnn``;
3. ``"bundled"`` (MNIST only): the copy inside the package, SHA-256 checked;
   ``"system"`` (Fashion-MNIST only): Debian's ``/usr/share/datasets/fashion-mnist``;
4. ``"download"``: the official files, SHA-256 checked, saved into the cache folder; skipped
   when ``download=False`` or ``JAXCNN_OFFLINE=1`` (``download=True`` overrides the variable).

``source="tfds"`` instead reads TensorFlow Datasets' prepared copy via ``tfds.data_source``.

A place that holds none of the accepted files is skipped; a place that holds a damaged or
incomplete set stops the search with a :class:`DataError` that says what to do.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from jaxcnn.data import cifar10, download as _download, mnist
from jaxcnn.data._common import Arrays, Located, as_path
from jaxcnn.data._tfds import load_tfds
from jaxcnn.data.dataset import Dataset
from jaxcnn.errors import ConfigError, DataError

__all__ = ["DATASETS", "SOURCES", "CLASS_NAMES", "load", "cache_path", "clear_memo"]

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10")
SOURCES: tuple[str, ...] = ("dir", "cache", "bundled", "system", "download", "tfds")
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": mnist.MNIST_CLASSES,
    "fashion_mnist": mnist.FASHION_MNIST_CLASSES,
    "cifar10": cifar10.CIFAR10_CLASSES,
}
_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}

# (name, files' stat key) -> read-only arrays. Loading the same unchanged files twice in one
# process returns the same (read-only) arrays instead of parsing them again.
_MEMO: dict[tuple, Arrays] = {}


def clear_memo() -> None:
    """Forget the data sets loaded so far in this process (frees their memory)."""
    _MEMO.clear()


def _normalize_name(name: object) -> str:
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in DATASETS:
        import difflib

        close = difflib.get_close_matches(key or "", DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown data set {name!r}.{hint} Known data sets: {', '.join(DATASETS)}."
        )
    return key


def cache_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of data set ``name``: ``<root>/<name>``.

    ``<root>`` is ``cache_dir`` if given, else ``$JAXCNN_DATA`` if set, else
    ``~/.cache/jaxcnn``.
    """
    key = _normalize_name(name)
    if cache_dir is not None:
        root = as_path(cache_dir, "cache_dir")
    elif os.environ.get("JAXCNN_DATA"):
        root = Path(os.environ["JAXCNN_DATA"]).expanduser()
    else:
        root = Path("~/.cache/jaxcnn").expanduser()
    return root / key


def _locate(name: str, path: Path) -> Located | None:
    if name == "cifar10":
        return cifar10.locate(path)
    if path.is_file():
        if path.suffix == ".npz":
            return Located("npz", (path,), path)
        raise DataError(
            f"{path} is a single file but {_TITLES[name]} needs {mnist.NPZ_FILES[name]} or "
            f"the four IDX files ({', '.join(mnist.IDX_FILES)}): pass their folder as data_dir."
        )
    if not path.is_dir():
        return None
    return mnist.locate(name, path)


def _read(name: str, located: Located) -> Arrays:
    key = (name, located.stat_key())
    hit = _MEMO.get(key)
    if hit is not None:
        return hit
    arrays = cifar10.read(located) if name == "cifar10" else mnist.read(located)
    for a in arrays:
        a.setflags(write=False)
    _MEMO[key] = arrays
    return arrays


def _dataset(name: str, arrays: Arrays, source: str) -> Dataset:
    x_train, y_train, x_test, y_test = arrays
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=CLASS_NAMES[name],
        source=source,
    )


def _describe(located: Located, place: str) -> str:
    kinds = {
        "npz": "Keras-style .npz",
        "idx": "IDX files",
        "cifar_bin": "binary batches",
        "cifar_tar": "binary archive",
    }
    return f"{place}: {located.where} ({kinds[located.kind]})"


def _accepted_files(name: str) -> str:
    if name == "cifar10":
        return (
            f"{cifar10.ARCHIVE} (as downloaded), its {cifar10.FOLDER}/ folder, or the files "
            f"{', '.join(cifar10.BIN_FILES)}"
        )
    return (
        f"{mnist.NPZ_FILES[name]} (Keras layout) or the four IDX files "
        f"{', '.join(mnist.IDX_FILES)} (gzip-compressed or not)"
    )


def _how_to(name: str, cache: Path, download_on: bool, why_off: str) -> str:
    files = _download.REMOTE_FILES[name]
    lines = [
        "To fix it, do one of:",
        f"  - put {_accepted_files(name)} into {cache} (or into any folder and pass it as "
        f"data_dir=...)"
        + (
            "; the pickled 'python version' of CIFAR-10 is never read;"
            if name == "cifar10"
            else ";"
        ),
        "  - get the file(s) from "
        + ", ".join(f"{f.url} (SHA-256 {f.sha256})" for f in files)
        + ";",
    ]
    lines.append(
        f"  - let jaxcnn download it (internet needed; SHA-256 checked, saved into {cache}): "
        f"jaxcnn.data.load({name!r}, download=True)"
        + (";" if download_on else f" (downloading is off now: {why_off});")
    )
    if name == "fashion_mnist":
        lines.append(
            "  - on Debian/Ubuntu: apt install dataset-fashion-mnist "
            f"(installs {mnist.SYSTEM_DIRS['fashion_mnist']});"
        )
    lines.append(
        f"  - or use TensorFlow Datasets' prepared copy: jaxcnn.data.load({name!r}, "
        "source='tfds')."
    )
    return "\n".join(lines)


def load(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    source: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool | None = None,
) -> Dataset:
    """Load a data set as NumPy arrays.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"`` (see :data:`DATASETS`).
        data_dir: a folder (or file) to read first. For ``source="tfds"``: TFDS's data folder.
        source: read only from this place: ``"dir"``, ``"cache"``, ``"bundled"`` (MNIST),
            ``"system"`` (Fashion-MNIST), ``"download"`` or ``"tfds"``. ``None`` tries them in
            the order described in this module's docstring.
        cache_dir: root of the user cache (the data set lives in ``cache_dir/<name>``);
            default ``$JAXCNN_DATA`` or ``~/.cache/jaxcnn``.
        download: ``True`` allows downloading even with ``JAXCNN_OFFLINE=1``; ``False`` forbids
            it; ``None`` allows it unless ``JAXCNN_OFFLINE`` is set.

    Returns:
        A :class:`Dataset`: images ``(N, H, W, C)`` uint8 in the original order (MNIST and
        Fashion-MNIST: 60000 + 10000 of (28, 28, 1); CIFAR-10: 50000 + 10000 of (32, 32, 3)),
        labels ``(N,)`` int32. The arrays are read-only.

    Raises:
        ConfigError: unknown ``name`` or ``source``, or a source that does not apply.
        DataError: nothing found (the message says where to put which file and how to get it),
            or a file is missing, truncated or corrupt (the message names it).
    """
    key = _normalize_name(name)
    title = _TITLES[key]
    if source is not None and source not in SOURCES:
        raise ConfigError(f"Unknown source {source!r}. Known sources: {', '.join(SOURCES)}.")
    if download not in (None, True, False):
        raise ConfigError(f"download must be True, False or None, got {download!r}.")
    if source == "bundled" and key != "mnist":
        raise ConfigError(f"source='bundled' exists only for MNIST, not {title}.")
    if source == "system" and key not in mnist.SYSTEM_DIRS:
        raise ConfigError(
            f"source='system' exists only for "
            f"{', '.join(_TITLES[k] for k in mnist.SYSTEM_DIRS)}, not {title}."
        )
    if source == "download" and download is False:
        raise ConfigError("source='download' contradicts download=False.")
    if source == "dir" and data_dir is None:
        raise ConfigError("source='dir' needs data_dir=... (the folder or file to read).")

    download_on = _download.download_allowed(download)
    why_off = (
        "download=False was passed"
        if download is False
        else f"JAXCNN_OFFLINE={os.environ.get('JAXCNN_OFFLINE', '')} is set"
    )

    if source == "tfds":
        arrays, where = load_tfds(key, data_dir, download_on)
        for a in arrays:
            a.setflags(write=False)
        return _dataset(key, arrays, where)

    cache = cache_path(key, cache_dir)
    looked: list[str] = []

    def not_found(extra: str = "") -> DataError:
        where = "\n".join(f"  - {line}" for line in looked)
        return DataError(
            f"{title} was not found.{extra}\nLooked in:\n{where}\n"
            f"{_how_to(key, cache, download_on, why_off)}"
        )

    # 1. The caller's folder or file.
    if data_dir is not None and source in (None, "dir"):
        d = as_path(data_dir, "data_dir")
        if not d.exists():
            raise DataError(
                f"data_dir {d} does not exist. Pass an existing folder holding "
                f"{_accepted_files(key)}, or leave data_dir out to use the cache {cache}."
            )
        found = _locate(key, d)
        if found is not None:
            return _dataset(key, _read(key, found), _describe(found, "data_dir"))
        looked.append(f"data_dir {d}: none of the accepted files")
        if source == "dir":
            raise not_found()
        warnings.warn(
            f"data_dir {d} holds none of the {title} files ({_accepted_files(key)}); "
            "looking in the other places instead (see Dataset.source for the one used).",
            stacklevel=2,
        )

    # 2. The user's cache.
    if source in (None, "cache"):
        found = _locate(key, cache) if cache.exists() else None
        if found is not None:
            return _dataset(key, _read(key, found), _describe(found, "cache"))
        looked.append(
            f"cache {cache}: " + ("none of the accepted files" if cache.exists() else "absent")
        )
        if source == "cache":
            raise not_found()

    # 3. Copies that ship with the package or the operating system.
    if key == "mnist" and source in (None, "bundled"):
        path = mnist.check_bundled()
        found = Located("npz", (path,), path)
        return _dataset(key, _read(key, found), f"bundled copy: {path} (SHA-256 checked)")
    if key in mnist.SYSTEM_DIRS and source in (None, "system"):
        sysdir = mnist.SYSTEM_DIRS[key]
        found = _locate(key, sysdir)
        if found is not None:
            return _dataset(key, _read(key, found), _describe(found, "system"))
        looked.append(f"system {sysdir}: " + ("no files" if sysdir.exists() else "absent"))
        if source == "system":
            raise not_found()

    # 4. Download into the cache.
    if not download_on:
        looked.append(f"download: off ({why_off})")
        raise not_found()
    try:
        _download.fetch(key, cache)
    except DataError as e:
        looked.append(f"download into {cache}: failed")
        raise not_found(f"\nThe download failed: {e}") from e
    found = _locate(key, cache)
    if found is None:  # pragma: no cover - fetch() wrote the files or raised
        looked.append(f"download into {cache}: no files afterwards")
        raise not_found()
    return _dataset(key, _read(key, found), _describe(found, "downloaded into cache"))

