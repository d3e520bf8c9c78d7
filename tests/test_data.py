"""Tests of jaxcnn.data for MNIST and Fashion-MNIST, the source order and the array helpers."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.data import mnist as mnist_mod
from jaxcnn.errors import ConfigError, DataError, ShapeError

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated(isolated_data):
    """Every test: an empty cache, offline, a fresh memo (tests/conftest.py)."""


def _no_system(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_mod, "SYSTEM_DIRS", {"fashion_mnist": tmp_path / "no-system"})


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (written independently of the reader under test)."""
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.tobytes()


def small_mnist(seed: int, n_train: int = 12, n_test: int = 5):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, size=(n_train,), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    y_test = rng.integers(0, 10, size=(n_test,), dtype=np.uint8)
    return x_train, y_train, x_test, y_test


def write_idx_set(folder: Path, arrays, gz: bool = True, dotted: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(IDX_NAMES, arrays):
        name = stem.replace("-idx", ".idx", 1) if dotted else stem
        raw = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


def assert_matches(ds: data.Dataset, arrays) -> None:
    x_train, y_train, x_test, y_test = arrays
    assert ds.x_train.shape == (len(x_train), 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (len(x_test), 28, 28, 1) and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train[..., 0], x_train)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.x_test[..., 0], x_test)
    np.testing.assert_array_equal(ds.y_test, y_test)


# --------------------------------------------------------------------------- bundled MNIST


def test_bundled_mnist_matches_the_reference_numbers():
    ds = data.load("mnist")
    assert ds.name == "mnist"
    assert "bundled" in ds.source
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10000, 28, 28, 1) and ds.x_test.dtype == np.uint8
    assert ds.y_train.shape == (60000,) and ds.y_train.dtype == np.int32
    assert ds.y_test.shape == (10000,) and ds.y_test.dtype == np.int32
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert ds.class_names == tuple("0123456789")
    assert ds.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(ds.y_train).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.y_test).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = data.to_float(ds.x_train)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert float(x.mean()) == pytest.approx(0.13066, abs=5e-6)


def test_loaded_arrays_are_read_only_and_memoized():
    a = data.load("mnist")
    b = data.load("mnist", source="bundled")
    assert b.x_train is a.x_train  # second load is a memo hit, not a re-parse
    for arr in (a.x_train, a.y_train, a.x_test, a.y_test):
        assert not arr.flags.writeable
    with pytest.raises(ValueError):
        a.x_train[0, 0, 0, 0] = 1


def test_bundled_copy_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "mnist.npz"
    shutil.copyfile(mnist_mod.BUNDLED_MNIST, bad)
    with open(bad, "r+b") as f:  # flip one byte near the end
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(mnist_mod, "BUNDLED_MNIST", bad)
    with pytest.raises(DataError, match=r"mnist\.npz is corrupt or was modified: its SHA-256"):
        data.load("mnist")
    with pytest.raises(DataError, match="reinstall jaxcnn"):
        data.load("mnist", source="bundled")


def test_missing_bundled_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "BUNDLED_MNIST", tmp_path / "gone.npz")
    with pytest.raises(DataError, match=r"gone\.npz does not exist"):
        data.load("mnist")


# --------------------------------------------------------------------------- IDX and npz files


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("dotted", [False, True], ids=["dash", "dot"])
def test_idx_files_round_trip(tmp_path, gz, dotted):
    arrays = small_mnist(1)
    folder = write_idx_set(tmp_path / "idx", arrays, gz=gz, dotted=dotted)
    ds = data.load("mnist", folder)
    assert_matches(ds, arrays)
    assert "data_dir" in ds.source and str(folder) in ds.source and "IDX" in ds.source


def test_read_idx_other_types(tmp_path):
    from jaxcnn.data.idx import read_idx

    arr = (np.arange(6).reshape(2, 3) - 3).astype(">i4")
    raw = bytes([0, 0, 0x0C, 2]) + struct.pack(">II", 2, 3) + arr.tobytes()
    (tmp_path / "a.idx").write_bytes(raw)
    out = read_idx(tmp_path / "a.idx")
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_keras_npz_in_a_folder_and_as_a_file(tmp_path):
    x_train, y_train, x_test, y_test = small_mnist(2)
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=y_test)
    ds = data.load("mnist", folder)
    assert_matches(ds, (x_train, y_train, x_test, y_test))
    assert "Keras-style .npz" in ds.source
    ds2 = data.load("mnist", folder / "mnist.npz")
    assert_matches(ds2, (x_train, y_train, x_test, y_test))


def test_npz_is_preferred_over_idx_in_the_same_folder(tmp_path):
    idx_arrays = small_mnist(3)
    npz_arrays = small_mnist(4)
    folder = write_idx_set(tmp_path / "both", idx_arrays)
    np.savez_compressed(folder / "mnist.npz", **dict(zip(
        ("x_train", "y_train", "x_test", "y_test"), npz_arrays)))
    assert_matches(data.load("mnist", folder), npz_arrays)


# --------------------------------------------------------------------------- source order


def test_source_order_dir_then_cache_then_bundled(tmp_path, monkeypatch):
    dir_arrays, cache_arrays = small_mnist(10), small_mnist(11, n_train=7)
    mydir = write_idx_set(tmp_path / "mine", dir_arrays)
    cache_root = tmp_path / "cache-root"
    write_idx_set(cache_root / "mnist", cache_arrays)
    monkeypatch.setenv("JAXCNN_DATA", str(cache_root))

    assert_matches(data.load("mnist", mydir), dir_arrays)            # 1. data_dir
    ds = data.load("mnist")                                          # 2. cache
    assert_matches(ds, cache_arrays)
    assert ds.source.startswith("cache: ")
    assert data.cache_path("mnist") == cache_root / "mnist"
    # data_dir without the data set falls through to the cache.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning, match=r"empty holds none of the MNIST files"):
        assert_matches(data.load("mnist", empty), cache_arrays)
    # An explicit source wins over the order.
    assert data.load("mnist", mydir, source="bundled").x_train.shape[0] == 60000
    assert_matches(data.load("mnist", mydir, source="cache"), cache_arrays)
    # The cache_dir argument beats $JAXCNN_DATA.
    other = tmp_path / "other-root"
    assert data.load("mnist", cache_dir=other).x_train.shape[0] == 60000  # 3. bundled
    write_idx_set(other / "mnist", dir_arrays, gz=False)
    assert_matches(data.load("mnist", cache_dir=other), dir_arrays)


def test_default_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXCNN_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_path("cifar10") == tmp_path / ".cache" / "jaxcnn" / "cifar10"


def test_source_dir_or_cache_only_fails_when_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"MNIST was not found(.|\n)*none of the accepted"):
        data.load("mnist", empty, source="dir")
    with pytest.raises(DataError, match=r"cache .*user-cache.mnist: absent"):
        data.load("mnist", source="cache")


def test_bad_names_and_options():
    with pytest.raises(ConfigError, match="Known data sets: mnist, fashion_mnist, cifar10"):
        data.load("imagenet")
    assert data.DATASETS == ("mnist", "fashion_mnist", "cifar10")
    with pytest.raises(ConfigError, match="Known sources: dir, cache, bundled"):
        data.load("mnist", source="web")
    with pytest.raises(ConfigError, match="only for MNIST"):
        data.load("cifar10", source="bundled")
    with pytest.raises(ConfigError, match="only for Fashion-MNIST"):
        data.load("mnist", source="system")
    with pytest.raises(ConfigError, match="needs data_dir"):
        data.load("mnist", source="dir")
    with pytest.raises(ConfigError, match="contradicts download=False"):
        data.load("mnist", source="download", download=False)
    assert data.load("MNIST").name == "mnist"  # case and dashes are forgiven


def test_nonexistent_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"data_dir .*nowhere does not exist"):
        data.load("mnist", tmp_path / "nowhere")


# --------------------------------------------------------------------------- broken files


def _corrupt_set(tmp_path, name="t10k-images-idx3-ubyte.gz", *, cut=None, flip=False):
    folder = write_idx_set(tmp_path / "bad", small_mnist(5))
    p = folder / name
    raw = p.read_bytes()
    if cut is not None:
        raw = raw[:cut]
    if flip:
        raw = raw[:20] + bytes(b ^ 0x5A for b in raw[20:40]) + raw[40:]
    p.write_bytes(raw)
    return folder


def test_truncated_gzip_idx(tmp_path):
    folder = _corrupt_set(tmp_path, cut=-30)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz is a truncated or corrupt "
                       r"gzip file(.|\n)*Delete it and copy or download it again"):
        data.load("mnist", folder)


def test_corrupt_gzip_idx(tmp_path):
    folder = _corrupt_set(tmp_path, flip=True)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        data.load("mnist", folder)


def test_truncated_raw_idx(tmp_path):
    arrays = small_mnist(6)
    folder = write_idx_set(tmp_path / "raw", arrays, gz=False)
    p = folder / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is truncated: header says "
                       r"shape \(12, 28, 28\) \(9424 bytes\) but the file has 9423 bytes"):
        data.load("mnist", folder)


def test_idx_longer_than_header(tmp_path):
    folder = write_idx_set(tmp_path / "raw", small_mnist(6), gz=False)
    p = folder / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes() + b"\x00")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is longer than its header"):
        data.load("mnist", folder)


def test_bad_magic(tmp_path):
    folder = write_idx_set(tmp_path / "raw", small_mnist(6), gz=False)
    p = folder / "train-labels-idx1-ubyte"
    p.write_bytes(b"\x12\x34" + p.read_bytes()[2:])
    with pytest.raises(DataError, match=r"bad magic number 0x12340801"):
        data.load("mnist", folder)


def test_images_and_labels_disagree(tmp_path):
    x_train, y_train, x_test, y_test = small_mnist(7)
    folder = write_idx_set(tmp_path / "odd", (x_train, y_train[:-1], x_test, y_test))
    with pytest.raises(DataError, match=r"has 12 images but .*train-labels-idx1-ubyte\.gz has "
                       r"11 labels"):
        data.load("mnist", folder)


def test_label_out_of_range(tmp_path):
    x_train, y_train, x_test, y_test = small_mnist(8)
    y_test = y_test.copy()
    y_test[0] = 10
    folder = write_idx_set(tmp_path / "lab", (x_train, y_train, x_test, y_test))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        data.load("mnist", folder)


def test_missing_idx_file(tmp_path):
    folder = write_idx_set(tmp_path / "three", small_mnist(9))
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"only some of the mnist IDX files: missing "
                       r"t10k-labels-idx1-ubyte\.gz"):
        data.load("mnist", folder)


def test_pickled_npz_is_refused(tmp_path):
    folder = tmp_path / "pkl"
    folder.mkdir()
    x_train, y_train, x_test, y_test = small_mnist(12)
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = x_train, "payload"
    np.savez(folder / "mnist.npz", x_train=obj, y_train=y_train, x_test=x_test, y_test=y_test)
    with pytest.raises(DataError, match=r"mnist\.npz contains pickled Python objects"):
        data.load("mnist", folder)


def test_truncated_and_incomplete_npz(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    x_train, y_train, x_test, y_test = small_mnist(13)
    np.savez(folder / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test)
    with pytest.raises(DataError, match=r"mnist\.npz lacks the array\(s\) y_test"):
        data.load("mnist", folder)
    np.savez(folder / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=y_test)
    p = folder / "mnist.npz"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DataError, match=r"mnist\.npz is (truncated or corrupt|not a valid)"):
        data.load("mnist", folder)


def test_wrong_image_size_in_npz(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "mnist.npz", x_train=np.zeros((2, 32, 32), np.uint8),
             y_train=np.zeros(2, np.uint8), x_test=np.zeros((1, 32, 32), np.uint8),
             y_test=np.zeros(1, np.uint8))
    with pytest.raises(DataError, match=r"shape \(N, 28, 28\)"):
        data.load("mnist", folder)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(not FASHION_SYSTEM.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed "
                           "(/usr/share/datasets/fashion-mnist missing)")
def test_fashion_mnist_from_debian_package():
    ds = data.load("fashion_mnist", download=False)
    assert ds.source.startswith("system: /usr/share/datasets/fashion-mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ds.y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert float(data.to_float(ds.x_train).mean()) == pytest.approx(0.28604, abs=5e-5)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_fashion_mnist_from_idx_files_and_npz(tmp_path, monkeypatch):
    _no_system(monkeypatch, tmp_path)
    arrays = small_mnist(20)
    folder = write_idx_set(tmp_path / "fashion", arrays)
    ds = data.load("fashion-mnist", folder)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert_matches(ds, arrays)
    npz_dir = tmp_path / "fnpz"
    npz_dir.mkdir()
    np.savez(npz_dir / "fashion_mnist.npz", **dict(zip(
        ("x_train", "y_train", "x_test", "y_test"), arrays)))
    assert_matches(data.load("fashion_mnist", npz_dir), arrays)
    # mnist.npz is not taken for Fashion-MNIST.
    np.savez(npz_dir / "mnist.npz", **dict(zip(
        ("x_train", "y_train", "x_test", "y_test"), small_mnist(21))))
    data.clear_memo()
    assert_matches(data.load("fashion_mnist", npz_dir), arrays)


def test_fashion_system_dir_comes_after_cache(tmp_path, monkeypatch):
    system_arrays, cache_arrays = small_mnist(22), small_mnist(23)
    sysdir = write_idx_set(tmp_path / "sys", system_arrays)
    monkeypatch.setattr(mnist_mod, "SYSTEM_DIRS", {"fashion_mnist": sysdir})
    ds = data.load("fashion_mnist", download=False)
    assert_matches(ds, system_arrays)
    assert ds.source.startswith("system: ")
    write_idx_set(data.cache_path("fashion_mnist"), cache_arrays)
    assert_matches(data.load("fashion_mnist", download=False), cache_arrays)


def test_fashion_nothing_reachable_offline(tmp_path, monkeypatch):
    _no_system(monkeypatch, tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("must not download while offline")

    import jaxcnn.data.download as dl

    monkeypatch.setattr(dl, "fetch", no_network)
    with pytest.raises(DataError) as info:
        data.load("fashion_mnist")
    msg = str(info.value)
    assert "Fashion-MNIST was not found" in msg
    assert str(tmp_path / "user-cache" / "fashion_mnist") in msg
    assert "train-images-idx3-ubyte.gz" in msg and "fashion_mnist.npz" in msg
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" in msg
    assert "download=True" in msg and "JAXCNN_OFFLINE=1" in msg
    assert "apt install dataset-fashion-mnist" in msg and "source='tfds'" in msg


def test_mnist_download_goes_through_pooch_with_pinned_hashes(tmp_path, monkeypatch):
    pooch = pytest.importorskip("pooch")
    arrays = small_mnist(30)
    staged = write_idx_set(tmp_path / "staged", arrays)
    calls = []

    def fake_retrieve(url, known_hash=None, fname=None, path=None, progressbar=False, **kw):
        calls.append(dict(url=url, known_hash=known_hash, fname=fname, path=Path(path)))
        Path(path).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged / fname, Path(path) / fname)
        return str(Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    ds = data.load("mnist", source="download", download=True)
    assert_matches(ds, arrays)
    assert ds.source.startswith("downloaded into cache")
    cache = tmp_path / "user-cache" / "mnist"
    assert [c["fname"] for c in calls] == [n + ".gz" for n in IDX_NAMES]
    assert all(c["path"] == cache for c in calls)
    assert all(c["url"].startswith("https://storage.googleapis.com/cvdf-datasets/mnist/")
               for c in calls)
    assert calls[0]["known_hash"] == (
        "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609")
    # Offline (the default in tests) a plain load never downloads: it reads the cache now.
    calls.clear()
    assert_matches(data.load("mnist"), arrays)
    assert calls == []


# --------------------------------------------------------------------------- helpers


def test_to_float_and_one_hot():
    x = np.array([[0, 51, 255]], dtype=np.uint8)
    f = data.to_float(x)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [[0.0, 0.2, 1.0]], rtol=0, atol=1e-7)
    with pytest.raises(ShapeError, match="already scaled"):
        data.to_float(f)
    np.testing.assert_allclose(data.to_float(x.astype(np.int64)), f)  # any integer type holding 0..255
    with pytest.raises(ShapeError, match=r"got uint16 integers from 0 to 1000 \(16-bit images\?\); scale such data yourself"):
        data.to_float(np.array([0, 1000], np.uint16))
    with pytest.raises(ShapeError, match=r"got booleans"):
        data.to_float(np.array([True, False]))
    oh = data.one_hot(np.array([2, 0, 1], dtype=np.int32), 3)
    assert oh.dtype == np.float32 and oh.shape == (3, 3)
    np.testing.assert_array_equal(oh, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    with pytest.raises(DataError, match=r"0\.\.2"):
        data.one_hot(np.array([3]), 3)
    with pytest.raises(ConfigError):
        data.one_hot(np.array([0]), 0)


def test_validation_split_takes_the_last_fraction_like_keras():
    x = np.arange(10)[:, None] * np.ones((1, 3), dtype=np.int64)
    y = np.arange(10)
    (xt, yt), (xv, yv) = data.validation_split(x, y, 0.2)
    assert yt.tolist() == list(range(8)) and yv.tolist() == [8, 9]
    np.testing.assert_array_equal(xv, x[8:])
    # Keras: split_at = int(math.floor(n * (1.0 - fraction))) -> floor(7 * 0.8) = floor(5.6) = 5
    (_, yt), (_, yv) = data.validation_split(np.arange(7), np.arange(7), 0.2)
    assert yt.tolist() == [0, 1, 2, 3, 4] and yv.tolist() == [5, 6]
    # floor(10 * 0.7) = floor(7.000000000000001) = 7
    (_, yt), (_, yv) = data.validation_split(np.arange(10), np.arange(10), 0.3)
    assert len(yt) == 7 and len(yv) == 3
    # MNIST in the report: 60000 * 0.8 = 48000 training, 12000 validation.
    (_, yt), (_, yv) = data.validation_split(np.zeros(60000), np.zeros(60000), 0.2)
    assert (len(yt), len(yv)) == (48000, 12000)
    for bad in (0, 0.0, 1, 1.0, -0.1, 1.5, True, "0.2", None):
        with pytest.raises(ConfigError, match="fraction"):
            data.validation_split(np.arange(10), np.arange(10), bad)
    with pytest.raises(ConfigError, match="not enough"):  # floor(2 * 0.4) = 0 for training
        data.validation_split(np.arange(2), np.arange(2), 0.6)
    with pytest.raises(ConfigError, match="not enough"):  # 1.0 - 1e-17 == 1.0: none to validate
        data.validation_split(np.arange(5), np.arange(5), 1e-17)
    with pytest.raises(ShapeError, match="10 examples but y has 9"):
        data.validation_split(np.arange(10), np.arange(9), 0.2)


def test_dataset_limit_and_checks():
    ds = data.load("mnist")
    small = ds.limit(100)
    assert small.x_train.shape == (100, 28, 28, 1) and small.y_train.shape == (100,)
    assert small.x_test is ds.x_test and small.y_test is ds.y_test
    np.testing.assert_array_equal(small.y_train, ds.y_train[:100])
    assert ds.limit(10**6) is ds
    assert "first 100 training examples" in small.source
    with pytest.raises(ConfigError):
        ds.limit(0)
    # test= keeps the first test examples (the experiments' --test-limit); training untouched.
    both = ds.limit(100, test=30)
    assert both.x_train.shape[0] == 100 and both.x_test.shape == (30, 28, 28, 1)
    np.testing.assert_array_equal(both.y_test, ds.y_test[:30])
    assert "first 100 training and first 30 test examples" in both.source
    only_test = ds.limit(test=30)
    assert only_test.x_train is ds.x_train and only_test.x_test.shape[0] == 30
    assert ds.limit(test=10**6) is ds
    with pytest.raises(ConfigError, match="test must be a positive integer"):
        ds.limit(100, test=0)
    x, y = np.zeros((3, 28, 28, 1), np.uint8), np.zeros(3, np.int32)
    names = tuple("0123456789")
    with pytest.raises(ShapeError, match="x_train must be a uint8"):
        data.Dataset("x", x.astype(np.float32), y, x, y, names, "test")
    with pytest.raises(ShapeError, match="y_train must be an int32"):
        data.Dataset("x", x, y.astype(np.int64), x, y, names, "test")
    with pytest.raises(ShapeError, match="3 images but y_train has 2"):
        data.Dataset("x", x, y[1:], x, y, names, "test")
    with pytest.raises(ShapeError, match="train images are"):
        data.Dataset("x", x, y, np.zeros((3, 32, 32, 3), np.uint8), y, names, "test")
    assert "train=60000" in repr(ds)
