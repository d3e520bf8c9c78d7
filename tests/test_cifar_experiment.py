"""``python -m experiments.cifar10`` end to end on a tiny CIFAR-10 in the official binary format
(written here), its per-model defaults, and its failure when no CIFAR-10 can be found."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from experiments import cifar10
from jaxcnn import data

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BIN_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
PER_BATCH, N_TEST = 40, 50  # 200 training images, 50 test images


def cifar_blobs(per_batch: int = PER_BATCH, n_test: int = N_TEST, seed: int = 0) -> tuple[dict[str, bytes], np.ndarray]:
    """The six binary batches (record: 1 label byte, then the R, G and B planes of 32x32) and the
    training labels in file order."""
    rng = np.random.default_rng(seed)
    blobs, train_labels = {}, []
    for name in BIN_NAMES:
        n = n_test if name == "test_batch.bin" else per_batch
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)  # channel-major, as on disk
        blobs[name] = np.concatenate([labels[:, None], planes.reshape(n, -1)], axis=1).tobytes()
        if name != "test_batch.bin":
            train_labels.append(labels)
    return blobs, np.concatenate(train_labels)


def write_folder(folder: Path) -> np.ndarray:
    blobs, y = cifar_blobs()
    folder.mkdir(parents=True)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return y


def write_archive(path: Path) -> np.ndarray:
    """``cifar-10-binary.tar.gz`` as downloaded: the batches inside ``cifar-10-batches-bin/``."""
    blobs, y = cifar_blobs()
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return y


@pytest.fixture(autouse=True)
def _isolated(isolated_data, monkeypatch):
    """Every test: an empty cache, offline, a fresh memo (tests/conftest.py), and the loader's
    official counts (10,000 per batch) and archive hash swapped for this file's tiny set."""
    from jaxcnn.data import cifar10 as cifar_data

    monkeypatch.setattr(cifar_data, "RECORDS", {n: N_TEST if n == "test_batch.bin" else PER_BATCH for n in BIN_NAMES})
    monkeypatch.setattr(cifar_data, "ARCHIVE_SHA256", None)


@pytest.fixture
def fast_prng():
    """RBG keys instead of threefry for the end-to-end runs: the same outputs to check, and about
    half the CPU time (compiling threefry's parameter initialisation dominates a 1-step run)."""
    import jax

    with jax.default_prng_impl("rbg"):
        yield


@pytest.fixture
def figures(monkeypatch) -> list[tuple[str, list[str]]]:
    """Every labelled-image figure drawn: (the first title, all titles)."""
    from jaxcnn import plots

    drawn: list[tuple[str, list[str]]] = []
    real = plots.labelled_images

    def spy(*args, **kwargs):
        fig = real(*args, **kwargs)
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        drawn.append(("predicted" if kwargs.get("predicted") is not None else "labels", titles))
        return fig

    monkeypatch.setattr(plots, "labelled_images", spy)
    return drawn


# ---------------------------------------------------------------------------------------------
# Defaults and flags


def test_each_model_has_the_report_settings():
    c1, c2, c3, c4 = (cifar10.parse_config(["--model", str(n)]) for n in (1, 2, 3, 4))
    assert cifar10.parse_config([]) == c1
    for c, model in zip((c1, c2, c3, c4), ("cifar_cnn1", "cifar_cnn2", "cifar_cnn3", "cifar_cnn4")):
        assert c.model == model and c.dataset == "cifar10"
        assert c.validation_split == 0  # validate on the test split (validation_data)
    for c in (c1, c2):
        assert (c.optimizer, c.learning_rate, c.lr_decay, c.lr_schedule_after, c.batch_size) == ("adamax", 0.005, (1500, 0.96), None, 128)
    assert (c1.epochs, c1.patience) == (10, None)
    assert (c2.epochs, c2.patience) == (15, 5)
    for c in (c3, c4):
        assert (c.optimizer, c.learning_rate, c.lr_decay, c.lr_schedule_after) == ("rmsprop", 0.001, None, 10)
        assert (c.batch_size, c.epochs, c.patience) == (512, 20, 5)


def test_flags_override_the_model_defaults():
    c = cifar10.parse_config([
        "--model", "3", "--epochs", "2", "--batch-size", "64", "--learning-rate", "0.01", "--patience", "-1",
        "--seed", "7", "--limit", "100", "--data-dir", "somewhere", "--out", "run", "--verbose", "2",
    ])
    assert (c.model, c.epochs, c.batch_size, c.learning_rate, c.patience) == ("cifar_cnn3", 2, 64, 0.01, None)
    assert (c.seed, c.limit, c.data_dir, c.out, c.verbose) == (7, 100, "somewhere", "run", 2)
    assert c.lr_schedule_after == 10 and c.optimizer == "rmsprop"
    assert cifar10.parse_config(["--model", "1", "--patience", "3"]).patience == 3


def test_model_by_name_takes_cnn1_settings():
    c = cifar10.parse_config(["--model", "mnist_cnn"])
    c1 = cifar10.parse_config(["--model", "1"])
    assert c.model == "mnist_cnn" and c.name == "cifar10-mnist_cnn"
    assert (c.optimizer, c.learning_rate, c.lr_decay, c.batch_size, c.epochs) == (c1.optimizer, c1.learning_rate, c1.lr_decay, c1.batch_size, c1.epochs)
    assert cifar10.parse_config(["--model", "mymodels.nets:Small"]).name == "cifar10-mymodels.nets_Small"


def test_unknown_model_is_a_one_line_error(tmp_path, capsys):
    from experiments.common import main_guard

    out = tmp_path / "never-made"
    assert main_guard(cifar10.main, ["--model", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model 5: the report's CIFAR-10 CNNs are 1, 2, 3 and 4") and len(err.strip().splitlines()) == 1
    assert main_guard(cifar10.main, ["--model", "mnist_cn", "--out", str(out)]) == 2
    assert "did you mean 'mnist_cnn'?" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# End to end


def _check_run(out: Path, model: str, total_params: str, lr: float, samples: int, epochs: int = 1) -> dict:
    for name in ("config.json", "summary.txt", "digits.png", "figure4.png", "history.json", "history.csv",
                 "history.png", "predictions.png", "metrics.json", "model/params.msgpack", "model/model.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in ("digits.png", "figure4.png", "history.png", "predictions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == model and config["dataset"] == "cifar10" and config["validation_split"] == 0
    assert f"Total params: {total_params}" in (out / "summary.txt").read_text()
    history = json.loads((out / "history.json").read_text())
    h = history["history"]
    assert history["epoch"] == list(range(epochs)) and history["params"]["samples"] == samples
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):  # val_*: the test split
        assert len(h[key]) == epochs and all(np.isfinite(h[key])), key
    np.testing.assert_allclose(h["learning_rate"], [lr] * epochs, rtol=1e-6)
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == epochs and 0 <= metrics["test_accuracy"] <= 1
    # Validation ran on the whole test split, so the last val_loss is the test loss.
    np.testing.assert_allclose(metrics["test_loss"], h["val_loss"][-1], rtol=1e-4)
    assert json.loads((out / "model/model.json").read_text())["model"] == model
    return metrics


def _check_figures(figures, y_train: np.ndarray) -> None:
    kinds = [kind for kind, _ in figures]
    assert kinds == ["labels", "predicted", "labels"], kinds  # digits, predictions, figure 4
    assert figures[0][1] == [CLASSES[y] for y in y_train[:3]]
    assert all(t.startswith("Actual: ") and ", Predicted: " in t for t in figures[1][1])
    assert figures[1][1][0].split(",")[0].removeprefix("Actual: ") in CLASSES
    assert figures[2][1] == [CLASSES[y_train[12]], CLASSES[y_train[36]]]  # the report's R 13 and 37


def test_model_1_on_a_folder_of_bin_files(tmp_path, figures, fast_prng):
    y = write_folder(tmp_path / "cifar-10-batches-bin")
    out = tmp_path / "run1"
    metrics = cifar10.main(["--model", "1", "--data-dir", str(tmp_path), "--limit", "128", "--epochs", "1",
                            "--out", str(out), "--verbose", "0"])
    assert metrics == json.loads((out / "metrics.json").read_text())
    _check_run(out, "cifar_cnn1", "122,570", 0.005, samples=128)
    assert json.loads((out / "config.json").read_text())["batch_size"] == 128  # the report's batch
    _check_figures(figures, y)


def test_model_4_on_the_archive(tmp_path, figures, fast_prng):
    y = write_archive(tmp_path / "cifar-10-binary.tar.gz")
    out = tmp_path / "run4"
    cifar10.main(["--model", "4", "--data-dir", str(tmp_path / "cifar-10-binary.tar.gz"), "--limit", "100",
                  "--batch-size", "50", "--epochs", "1", "--out", str(out), "--verbose", "0"])
    _check_run(out, "cifar_cnn4", "1,095,370", 0.001, samples=100)
    assert "Non-trainable params: 512" in (out / "summary.txt").read_text()
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["lr_schedule_after"], config["patience"]) == ("rmsprop", 10, 5)
    from jaxcnn import checkpoint

    _, variables, _ = checkpoint.load(out / "model")
    assert variables["batch_stats"]["batch_normalization"]["bn"]["mean"].shape == (256,)
    _check_figures(figures, y)


def test_figure4_shows_the_report_indices_that_exist(tmp_path, figures):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 40).astype(np.int32)
    ds = data.Dataset(
        name="cifar10", x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_train=y,
        x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.zeros(2, np.int32), class_names=CLASSES, source="test",
    )
    assert cifar10.save_figure4(ds, tmp_path) == [12, 36]
    assert figures[-1][1] == [CLASSES[y[12]], CLASSES[y[36]]]
    assert (tmp_path / "figure4.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "a").mkdir()
    assert cifar10.save_figure4(ds, tmp_path / "a", limit=20) == [12]  # only 20 training images used
    assert figures[-1][1] == [CLASSES[y[12]]]
    assert cifar10.save_figure4(ds, tmp_path / "b", limit=10) == []
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------
# No CIFAR-10 anywhere


def test_no_data_fails_at_once_with_the_loaders_message(tmp_path):
    out = tmp_path / "never-made"
    env = {**os.environ, "JAXCNN_DATA": str(tmp_path / "empty-cache"), "JAXCNN_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cifar10", "--model", "2", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: CIFAR-10 was not found.", proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cifar-10-binary.tar.gz" in proc.stderr  # the loader's instructions follow
    assert proc.stdout == ""
    assert not out.exists()  # nothing was written: it failed before the run directory


def test_missing_data_dir_is_a_one_line_error(tmp_path, capsys):
    from experiments.common import main_guard

    out = tmp_path / "never-made"
    assert main_guard(cifar10.main, ["--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data_dir ") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


BN_MODULE = """
import flax.linen as nn

class TinyBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(10)(nn.relu(x).reshape(x.shape[0], -1))
"""


def test_a_users_batchnorm_module_trains_on_the_stats_mesh(tmp_path):
    (tmp_path / "bnmod.py").write_text(BN_MODULE)
    env = {k: v for k, v in os.environ.items() if k not in ("JAXCNN_CPU_DEVICES", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    proc = subprocess.run([sys.executable, "-m", "experiments.mnist", "--model", "bnmod:TinyBN", "--limit", "200", "--test-limit", "500", "--batch-size", "128",
                           "--epochs", "1", "--verbose", "2", "--no-checkpoint", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # one device per core, as jaxcnn makes them (a run no longer makes more for BatchNorm models)
    import jaxcnn

    devices = min(jaxcnn._default_cpu_devices(), 4)  # parts of 32, as many as there are devices
    assert f"(batch 128, stats-mesh strategy on {devices} devices)" in proc.stdout, proc.stdout[-2000:]


def test_use_cpu_devices_right_after_import_sets_the_count():
    # A script that wants another device count calls it right after import (docs/cpu.md).
    code = "import jaxcnn, jax\nprint(jaxcnn.use_cpu_devices(5), len(jax.devices()), jaxcnn._CPU_SPLIT)"
    env = {k: v for k, v in os.environ.items() if k not in ("JAXCNN_CPU_DEVICES", "JAX_PLATFORMS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["5", "5", "5"]
