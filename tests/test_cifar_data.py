"""Tests of CIFAR-10 loading: the official binary format (tiny files written here), the
download path (pooch mocked, no network) and TensorFlow Datasets (mocked data)."""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.errors import DataError

BIN_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def _isolated(isolated_data, monkeypatch):
    """Every test: an empty cache, offline, a fresh memo (tests/conftest.py), and the official
    counts and archive hash swapped for those of the tiny :class:`Cifar` set (3 records per
    training batch, 4 test records, an archive packed here). The tests of the official values
    put them back."""
    from jaxcnn.data import cifar10

    monkeypatch.setattr(cifar10, "RECORDS", {**{n: 3 for n in BIN_NAMES[:5]}, "test_batch.bin": 4})
    monkeypatch.setattr(cifar10, "ARCHIVE_SHA256", None)


class Cifar:
    """Tiny CIFAR-10 in the exact binary layout, with the NHWC arrays it must decode to."""

    def __init__(self, per_batch: int = 3, n_test: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.blobs: dict[str, bytes] = {}
        xs, ys = [], []
        for name in BIN_NAMES:
            n = n_test if name == "test_batch.bin" else per_batch
            x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)  # NHWC
            y = rng.integers(0, 10, size=(n,), dtype=np.uint8)
            records = []
            for img, label in zip(x, y):
                # 1 label byte, then the red plane, the green plane, the blue plane (row-major).
                planes = b"".join(img[:, :, c].tobytes() for c in range(3))
                records.append(bytes([label]) + planes)
            self.blobs[name] = b"".join(records)
            xs.append(x)
            ys.append(y)
        self.x_train = np.concatenate(xs[:5])
        self.y_train = np.concatenate(ys[:5])
        self.x_test, self.y_test = xs[5], ys[5]

    def write_bins(self, folder: Path, skip: tuple[str, ...] = ()) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in self.blobs.items():
            if name not in skip:
                (folder / name).write_bytes(blob)
        (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
        return folder

    def write_tar(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as tar:
            members = dict(self.blobs)
            members["batches.meta.txt"] = ("\n".join(CLASSES) + "\n").encode()
            members["readme.html"] = b"<html></html>"
            for name, blob in members.items():
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return path

    def check(self, ds: data.Dataset) -> None:
        assert ds.name == "cifar10" and ds.class_names == CLASSES and ds.num_classes == 10
        assert ds.input_shape == (32, 32, 3)
        assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (15, 32, 32, 3)
        assert ds.x_test.dtype == np.uint8 and ds.x_test.shape == (4, 32, 32, 3)
        assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
        np.testing.assert_array_equal(ds.x_train, self.x_train)
        np.testing.assert_array_equal(ds.y_train, self.y_train)
        np.testing.assert_array_equal(ds.x_test, self.x_test)
        np.testing.assert_array_equal(ds.y_test, self.y_test)
        assert not ds.x_train.flags.writeable


def test_nhwc_conversion_is_pixel_exact(tmp_path):
    c = Cifar()
    # One hand-made record: label 7, red ramp by column, green ramp by row, blue constant.
    red = np.tile(np.arange(32, dtype=np.uint8), (32, 1))
    green = red.T.copy()
    blue = np.full((32, 32), 200, np.uint8)
    record = bytes([7]) + red.tobytes() + green.tobytes() + blue.tobytes()
    c.blobs["test_batch.bin"] = record + c.blobs["test_batch.bin"][3073:]
    folder = c.write_bins(tmp_path / "bins")
    ds = data.load("cifar10", folder, download=False)
    img = ds.x_test[0]
    assert ds.y_test[0] == 7
    assert img[0, 5].tolist() == [5, 0, 200]    # row 0, column 5
    assert img[9, 2].tolist() == [2, 9, 200]    # row 9, column 2
    assert img[31, 31].tolist() == [31, 31, 200]
    np.testing.assert_array_equal(ds.x_test[1:], c.x_test[1:])


def test_folder_of_bin_files(tmp_path):
    c = Cifar()
    folder = c.write_bins(tmp_path / "bins")
    ds = data.load("cifar10", folder, download=False)
    c.check(ds)
    assert ds.source == f"data_dir: {folder} (binary batches)"


def test_cifar_10_batches_bin_folder(tmp_path):
    c = Cifar(seed=1)
    c.write_bins(tmp_path / "parent" / "cifar-10-batches-bin")
    c.check(data.load("cifar10", tmp_path / "parent", download=False))
    data.clear_memo()
    c.check(data.load("cifar10", tmp_path / "parent" / "cifar-10-batches-bin", download=False))


def test_tar_gz_in_a_folder_and_as_a_path(tmp_path):
    c = Cifar(seed=2)
    archive = c.write_tar(tmp_path / "dl" / "cifar-10-binary.tar.gz")
    ds = data.load("cifar10", tmp_path / "dl", download=False)
    c.check(ds)
    assert "binary archive" in ds.source
    data.clear_memo()
    c.check(data.load("cifar10", archive, download=False))


def test_cache_folder_is_used(tmp_path, monkeypatch):
    c = Cifar(seed=3)
    c.write_tar(data.cache_path("cifar10") / "cifar-10-binary.tar.gz")
    ds = data.load("cifar10")
    c.check(ds)
    assert ds.source.startswith("cache: ")
    # cache_dir= points at another root.
    c2 = Cifar(seed=4)
    c2.write_bins(tmp_path / "root2" / "cifar10")
    c2.check(data.load("cifar10", cache_dir=tmp_path / "root2"))


def test_truncated_bin_file(tmp_path):
    c = Cifar()
    folder = c.write_bins(tmp_path / "bins")
    p = folder / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"data_batch_3\.bin is truncated or corrupt: 9209 bytes "
                       r"is not a whole number of 3073-byte records"):
        data.load("cifar10", folder, download=False)


def test_truncated_archive(tmp_path):
    c = Cifar()
    archive = c.write_tar(tmp_path / "cifar-10-binary.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz is truncated or corrupt"
                       r"(.|\n)*Delete .* and download it again"):
        data.load("cifar10", archive, download=False)


def test_archive_without_the_batches(tmp_path):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("something/else.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match=r"does not contain data_batch_1\.bin"):
        data.load("cifar10", archive, download=False)


def test_missing_batch_and_bad_label(tmp_path):
    c = Cifar()
    folder = c.write_bins(tmp_path / "five", skip=("test_batch.bin",))
    with pytest.raises(DataError, match=r"only some of the CIFAR-10 binary batches: missing "
                       r"test_batch\.bin"):
        data.load("cifar10", folder, download=False)
    c.blobs["data_batch_1.bin"] = bytes([10]) + c.blobs["data_batch_1.bin"][1:]
    folder = c.write_bins(tmp_path / "badlabel")
    with pytest.raises(DataError, match=r"data_batch_1\.bin.*labels must lie in 0\.\.9"):
        data.load("cifar10", folder, download=False)


def test_pickled_python_version_is_not_read(tmp_path):
    (tmp_path / "py" / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(DataError, match=r"Python \(pickled\) version(.|\n)*cifar-10-binary"):
        data.load("cifar10", tmp_path / "py", download=False)


def test_nothing_reachable_fails_at_once_with_instructions(monkeypatch):
    pooch = pytest.importorskip("pooch")

    def no_network(*args, **kwargs):
        raise AssertionError("no download may be attempted while offline")

    monkeypatch.setattr(pooch, "retrieve", no_network)
    with pytest.raises(DataError) as info:
        data.load("cifar10")  # JAXCNN_OFFLINE=1
    msg = str(info.value)
    assert msg.startswith("CIFAR-10 was not found.")
    assert "cifar-10-binary.tar.gz" in msg and "cifar-10-batches-bin/" in msg
    assert "data_batch_1.bin" in msg and "test_batch.bin" in msg
    assert URL in msg and SHA256 in msg
    assert str(data.cache_path("cifar10")) in msg
    assert "download=True" in msg and "source='tfds'" in msg
    with pytest.raises(DataError, match="download=False was passed"):
        data.load("cifar10", download=False)


def test_download_passes_the_pinned_hash_and_saves_into_the_cache(tmp_path, monkeypatch):
    pooch = pytest.importorskip("pooch")
    c = Cifar(seed=5)
    staged = c.write_tar(tmp_path / "staged" / "cifar-10-binary.tar.gz")
    calls = []

    def fake_retrieve(url, known_hash=None, fname=None, path=None, progressbar=False, **kw):
        calls.append(dict(url=url, known_hash=known_hash, fname=fname, path=Path(path),
                          progressbar=progressbar))
        Path(path).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, Path(path) / fname)
        return str(Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    ds = data.load("cifar10", download=True)  # overrides JAXCNN_OFFLINE=1
    c.check(ds)
    assert calls == [dict(url=URL, known_hash=f"sha256:{SHA256}",
                          fname="cifar-10-binary.tar.gz", path=data.cache_path("cifar10"),
                          progressbar=calls[0]["progressbar"])]
    assert (data.cache_path("cifar10") / "cifar-10-binary.tar.gz").is_file()
    assert ds.source.startswith("downloaded into cache")


def test_failed_download_is_a_data_error(monkeypatch):
    pooch = pytest.importorskip("pooch")

    def bad_hash(url, known_hash=None, **kw):
        raise ValueError("SHA256 hash of downloaded file does not match the known hash")

    monkeypatch.setattr(pooch, "retrieve", bad_hash)
    with pytest.raises(DataError, match=r"SHA-256 does not match(.|\n)*download it by hand"):
        data.load("cifar10", source="download", download=True)

    def offline_net(url, **kw):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(pooch, "retrieve", offline_net)
    with pytest.raises(DataError, match=r"Could not download .*cifar-10-binary\.tar\.gz"):
        data.load("cifar10", download=True)


# --------------------------------------------------------------------------- TFDS


def test_tfds_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match="pip install tensorflow-datasets"):
        data.load("cifar10", source="tfds")


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        ds = data.load("cifar10", tmp_path / "tfds", source="tfds", download=False)
        train, test = tfds.data_source("cifar10", split=["train", "test"])
        expect_x = np.stack([np.asarray(train[i]["image"]) for i in range(4)])
        expect_y = [int(train[i]["label"]) for i in range(4)]
        expect_xt = np.stack([np.asarray(test[i]["image"]) for i in range(4)])
    assert ds.x_train.shape == (4, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (4, 32, 32, 3)
    assert ds.y_train.dtype == np.int32 and ds.y_train.tolist() == expect_y
    np.testing.assert_array_equal(ds.x_train, expect_x)
    np.testing.assert_array_equal(ds.x_test, expect_xt)
    assert ds.class_names == CLASSES
    assert "tensorflow_datasets 'cifar10'" in ds.source


def test_tfds_not_prepared_offline(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=r"tensorflow_datasets 'cifar10' .*could not be opened"
                       r"(.|\n)*Downloading was off"):
        data.load("cifar10", tmp_path / "empty-tfds", source="tfds", download=False)


# --------------------------------------------------------------------------- official counts and hash


OFFICIAL_RECORDS = {name: 10000 for name in BIN_NAMES}


def test_official_counts_and_hash_are_the_published_ones():
    import importlib

    from jaxcnn.data import cifar10, download

    fresh = importlib.reload(cifar10)  # the module's own values, not this file's fixture's
    try:
        assert fresh.RECORDS == OFFICIAL_RECORDS and fresh.RECORD_BYTES == 3073
        assert fresh.ARCHIVE_SHA256 == SHA256 == download.REMOTE_FILES["cifar10"][0].sha256
    finally:
        importlib.reload(cifar10)


def test_batch_cut_at_a_record_boundary_is_refused(tmp_path, monkeypatch):
    """Issue 17.4: data_batch_3.bin cut to 4,096 whole records (an interrupted copy) loaded as
    44,096 training images. Now every batch must hold its official 10,000 records."""
    from jaxcnn.data import cifar10

    monkeypatch.setattr(cifar10, "RECORDS", OFFICIAL_RECORDS)
    record = bytes([3]) + bytes(3072)
    folder = tmp_path / "bins"
    folder.mkdir()
    for name in BIN_NAMES:  # sparse files: 30.7 MB each on paper, nothing much on disk
        with open(folder / name, "wb") as f:
            f.write(record)
            f.truncate(10000 * 3073)
    (folder / "data_batch_3.bin").write_bytes(record * 4096)
    with pytest.raises(DataError, match=r"^CIFAR-10 batch .*data_batch_3\.bin is truncated \(an interrupted copy\?\): "
                       r"it holds 4096 records \(12587008 bytes\) but every official batch holds 10000 "
                       r"\(30730000 bytes\)\. Delete it and copy it again"):
        data.load("cifar10", folder, download=False)
    (folder / "data_batch_3.bin").write_bytes(record * 10001)
    with pytest.raises(DataError, match=r"data_batch_3\.bin is too long \(not an official batch\): it holds 10001 records"):
        data.load("cifar10", folder, download=False)
    (folder / "data_batch_3.bin").write_bytes(record * 10000)
    ds = data.load("cifar10", folder, download=False)  # the full set loads: 50,000 + 10,000
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)


def test_short_batch_inside_an_archive_is_refused(tmp_path, monkeypatch):
    from jaxcnn.data import cifar10

    c = Cifar()
    c.blobs["test_batch.bin"] = c.blobs["test_batch.bin"][: 2 * 3073]  # 2 of its 4 records
    archive = c.write_tar(tmp_path / "cifar-10-binary.tar.gz")
    with pytest.raises(DataError, match=r"test_batch\.bin in .*cifar-10-binary\.tar\.gz is truncated "
                       r"\(an interrupted copy\?\): it holds 2 records \(6146 bytes\) but every official batch holds 4"):
        data.load("cifar10", archive, download=False)


def test_archive_is_checked_against_the_official_sha256(tmp_path, monkeypatch):
    """An archive that is not byte-for-byte the official download is refused with its hash; the
    extracted folder of the same batches is the way to use a repacked copy."""
    import hashlib

    from jaxcnn.data import cifar10

    c = Cifar()
    archive = c.write_tar(tmp_path / "dl" / "cifar-10-binary.tar.gz")
    got = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar10, "ARCHIVE_SHA256", SHA256)
    with pytest.raises(DataError, match=rf"cifar-10-binary\.tar\.gz is corrupt or was modified: its SHA-256 is {got}, "
                       rf"expected {SHA256}\. It is truncated, corrupt or not the official cifar-10-binary\.tar\.gz"
                       r"(.|\n)*or pass the folder of its extracted \.bin batches instead"):
        data.load("cifar10", archive, download=False)
    monkeypatch.setattr(cifar10, "ARCHIVE_SHA256", got)  # the same bytes, pinned: accepted
    data.clear_memo()
    c.check(data.load("cifar10", archive, download=False))
