"""`python -m experiments.mnist` end to end on a few hundred images, and its reload."""

from __future__ import annotations

import json

import pytest

from experiments import mnist, predict
from jaxcnn.errors import ConfigError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist") / "run"
    # --test-limit: the test split's first 2,000 images (a quick run's; all 10,000 cost seconds more).
    metrics = mnist.main(["--limit", "600", "--test-limit", "2000", "--epochs", "2", "--batch-size", "64", "--out", str(out), "--verbose", "0"])
    return out, metrics


def test_writes_every_promised_file(run_dir):
    out, metrics = run_dir
    for name in ("config.json", "summary.txt", "digits.png", "history.json", "history.csv", "history.png",
                 "predictions.png", "metrics.json", "model/params.msgpack", "model/model.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in ("digits.png", "history.png", "predictions.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "Total params: 258,090 (1008.16 KB)" in (out / "summary.txt").read_text()
    assert "(3x3x1 + 1) x 32 = 320" in (out / "summary.txt").read_text()
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert {"test_loss", "test_accuracy", "epochs_run", "best_epoch", "wall_time_s"} <= set(written)
    assert written["epochs_run"] == 2 and 1 <= written["best_epoch"] <= 2
    assert 0.5 < written["test_accuracy"] <= 1.0  # 480 training images, 2 epochs
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]["val_loss"]) == 2
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy")
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["batch_size"], config["limit"], config["test_limit"]) == ("rmsprop", 64, 600, 2000)
    # The exported model names its optimizer, so checkpoint.load_state trains on with the same one.
    assert json.loads((out / "model" / "model.json").read_text())["optimizer"] == {"name": "rmsprop", "learning_rate": 0.001}


def test_predict_reloads_the_model(run_dir, capsys):
    out, metrics = run_dir
    test = predict.main([str(out), "--count", "4"])
    assert test["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)  # on the run's --test-limit
    assert "on the first 2000 test examples (the run's --test-limit)" in capsys.readouterr().out
    assert (out / "reloaded-predictions.png").read_bytes()[:4] == b"\x89PNG"
    predict.main([str(out), "--count", "3", "--explain", "grad_cam", "--out", str(out / "few.png")])
    assert (out / "few-grad_cam.png").read_bytes()[:4] == b"\x89PNG"
    assert "grad_cam: " in capsys.readouterr().out
    (out / "few.png").unlink()  # the figure is gone, its explanation is not: refused, not overwritten
    with pytest.raises(ConfigError, match="few-grad_cam.png already exists"):
        predict.main([str(out), "--count", "3", "--explain", "grad_cam", "--out", str(out / "few.png")])


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        mnist.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--epochs", "--batch-size", "--learning-rate", "--patience", "--seed", "--limit", "--data-dir", "--out", "--resume", "--precision"):
        assert flag in text


# ---------------------------------------------------------------------------------------------
# --resume from the run directory alone, and what it refuses (issue 17: 2, 6, 7, 11)

import os  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402

from experiments.common import main_guard  # noqa: E402


def _snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_resume_alone_on_a_finished_run_rewrites_nothing(run_dir, capsys):
    out, metrics = run_dir
    before = _snapshot(out)
    assert main_guard(mnist.main, ["--resume", "--out", str(out)]) == 0  # every setting from config.json
    assert main_guard(mnist.main, ["--resume", "--out", str(out), "--epochs", "1", "--verbose", "1"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _snapshot(out) == before  # not even config.json's epochs
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


def test_resume_with_another_setting_is_refused(run_dir, capsys):
    out, _ = run_dir
    assert main_guard(mnist.main, ["--resume", "--out", str(out), "--batch-size", "16"]) == 2
    assert "was started with batch_size=64, not 16" in _one_error(capsys)
    assert main_guard(mnist.main, ["--resume", "--out", str(out), "--test-limit", "100"]) == 2
    assert "was started with test_limit=2000, not 100" in _one_error(capsys)
    assert main_guard(mnist.main, ["--resume", "--out", str(out), "--batch-size", "64", "--limit", "600"]) == 0  # the same: fine


def _mnist_dir(folder, change: bool):
    """A data folder holding the bundled MNIST as mnist.npz, with one pixel changed or not."""
    from jaxcnn.data.mnist import BUNDLED_MNIST

    folder.mkdir()
    with np.load(BUNDLED_MNIST) as f:
        arrays = {k: f[k] for k in f.files}
    if change:
        arrays["x_train"] = arrays["x_train"].copy()
        arrays["x_train"][5, 14, 14] ^= 0xFF
    np.savez(folder / "mnist.npz", **arrays)
    return folder


def test_resume_on_other_data_is_refused(run_dir, tmp_path, capsys):
    out, _ = run_dir
    before = _snapshot(out)
    same = _mnist_dir(tmp_path / "same", change=False)
    assert main_guard(mnist.main, ["--resume", "--out", str(out), "--data-dir", str(same)]) == 0  # a copy: fine
    other = _mnist_dir(tmp_path / "other", change=True)
    assert main_guard(mnist.main, ["--resume", "--out", str(out), "--data-dir", str(other)]) == 2
    assert "the data differ from those the run" in _one_error(capsys)
    assert _snapshot(out) == before


@pytest.mark.parametrize("content, message", [
    ("null", "holds null, not a run's settings"),
    ("[1]", "holds list, not a run's settings"),
    ('{"epochs": 2}', "was not written by this version of jaxcnn's experiments"),
    ("{not json", "cannot be read"),
])
def test_resume_refuses_a_config_of_the_wrong_shape(run_dir, tmp_path, capsys, content, message):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir[0], copy)
    (copy / "config.json").write_text(content)
    assert main_guard(mnist.main, ["--resume", "--out", str(copy)]) == 2
    assert message in _one_error(capsys)


def test_resume_refuses_an_edited_config(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir[0], copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "learning_rate": 0.01}))
    assert main_guard(mnist.main, ["--resume", "--out", str(copy)]) == 2
    assert "was changed after the run started" in _one_error(capsys)
    (copy / "config.json").write_text(json.dumps({**config, "seed": "zero"}))
    assert main_guard(mnist.main, ["--resume", "--out", str(copy)]) == 2
    assert 'seed = "zero" is not a valid setting' in _one_error(capsys)
    (copy / "config.json").unlink()
    assert main_guard(mnist.main, ["--resume", "--out", str(copy)]) == 2
    assert "has checkpoints but no config.json" in _one_error(capsys)


def test_a_config_written_before_test_limit_still_resumes(tmp_path):
    """Runs started before --test-limit existed have no "test_limit" in config.json, and their
    settings' SHA-256 covered the other settings alone: they read as test_limit None, unchanged."""
    import hashlib

    from experiments.common import ADDED_LATER, RESUME_MUST_MATCH, RUN_FORMAT, RunConfig, _json, config_from_json, settings_fingerprint

    config = RunConfig(limit=600, epochs=2)
    old = {k: _json(getattr(config, k)) for k in RESUME_MUST_MATCH if k not in ADDED_LATER}
    old_sha = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert settings_fingerprint(config) == old_sha
    raw = {"jaxcnn_run": RUN_FORMAT, **old, "epochs": 2, "settings_sha256": old_sha}
    assert config_from_json(raw, tmp_path / "config.json").test_limit is None
    assert settings_fingerprint(RunConfig(limit=600, test_limit=50)) != old_sha


def test_resume_into_a_folder_that_is_not_a_run_changes_nothing(tmp_path, capsys):
    folder = tmp_path / "U"
    folder.mkdir()
    (folder / "summary.txt").write_text("notes\n")
    assert main_guard(mnist.main, ["--limit", "1000", "--epochs", "1", "--verbose", "0", "--out", str(folder), "--resume"]) == 2
    assert "is not a jaxcnn run" in _one_error(capsys)
    assert [p.name for p in folder.iterdir()] == ["summary.txt"] and (folder / "summary.txt").read_text() == "notes\n"


# ---------------------------------------------------------------------------------------------
# Every check before the run directory is made (issue 17: 9, 10)


@pytest.mark.parametrize("flags, message", [
    (["--devices", "99"], "--devices must be 'auto', 'all' or a number of devices, got 99; the number of devices must be at least 1 and at most"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295, got -1"),
    (["--seed", str(2**70)], f"got {2**70}"),
    (["--model", "mnist_cn"], "did you mean 'mnist_cnn'?"),
    (["--dataset", "fashon_mnist"], "did you mean 'fashion_mnist'?"),
    (["--model", "no_such_module_xyz:Net"], "cannot import 'no_such_module_xyz'"),
    (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--test-limit", "0"], "--test-limit must be positive, got 0"),
])
def test_bad_flags_fail_before_the_run_directory(tmp_path, capsys, flags, message):
    out = tmp_path / "never-made"
    assert main_guard(mnist.main, [*flags, "--limit", "1000", "--verbose", "0", "--out", str(out)]) == 2
    assert message in _one_error(capsys)
    assert not out.exists()


def test_a_batch_that_does_not_divide_over_the_devices_fails_first(tmp_path, capsys):
    import jax

    if jax.device_count() < 2:
        pytest.skip("needs 2 or more devices")
    out = tmp_path / "never-made"
    odd = str(2 * jax.device_count() + 1)
    assert main_guard(mnist.main, ["--devices", "all", "--batch-size", odd, "--limit", "1000", "--out", str(out)]) == 2
    assert "does not divide over" in _one_error(capsys)
    assert not out.exists()


def test_default_run_names_never_collide(tmp_path, monkeypatch):
    from experiments import common

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.time, "strftime", lambda fmt: "20260101-000000")
    a = common.make_run_dir(mnist.DEFAULTS)
    b = common.make_run_dir(mnist.DEFAULTS)
    assert (str(a), str(b)) == ("runs/mnist-20260101-000000", "runs/mnist-20260101-000000-2")


# ---------------------------------------------------------------------------------------------
# predict on an exported model directory, and its output checks (issue 15: 6; issue 17: 8)


def test_predict_on_an_exported_model_directory(run_dir, tmp_path, capsys):
    out, metrics = run_dir
    export = tmp_path / "export"
    shutil.copytree(out / "model", export)  # what jaxcnn.checkpoint.export wrote: no run config
    test = predict.main([str(export), "--count", "2"])  # the data set from the model's input shape
    # No run config, so no --test-limit: the whole test split.
    import jaxcnn
    from jaxcnn import checkpoint, data

    ds = data.load("mnist")
    whole = jaxcnn.evaluate(checkpoint.load_state(out / "model"), data.to_float(ds.x_test), ds.y_test, batch_size=256)
    assert test["accuracy"] == pytest.approx(whole["accuracy"], abs=1e-6)
    assert "--test-limit" not in capsys.readouterr().out
    assert (export / "reloaded-predictions.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_output_in_a_missing_folder_is_one_line(run_dir, tmp_path, capsys):
    out, _ = run_dir
    target = tmp_path / "missing" / "p.png"
    assert main_guard(predict.main, [str(out), "--out", str(target)]) == 2
    assert "the folder" in _one_error(capsys) and not target.parent.exists()
    assert main_guard(predict.main, [str(tmp_path)]) == 2
    assert "holds neither model/" in _one_error(capsys)


# ---------------------------------------------------------------------------------------------
# A full or read-only disk (issue 17: 8). tmpfs and bind mounts need root; skipped otherwise.
# In-process, with the run_dir flags, so that the compiled steps are reused.

import subprocess  # noqa: E402


def _mount(*args: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs or a read-only folder needs root")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")


def test_a_full_disk_while_writing_outputs_is_one_line_and_leaves_no_empty_file(run_dir, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk))
    try:
        out = disk / "run"  # room for config.json, summary.txt, digits.png, history; not the 1 MB model
        flags = ["--limit", "600", "--epochs", "2", "--batch-size", "64", "--verbose", "0", "--no-checkpoint"]
        assert main_guard(mnist.main, [*flags, "--out", str(out)]) == 2
        err = _one_error(capsys)
        assert err.startswith(f"error: cannot write {out}") and "No space left on device" in err, err
        files = [p for p in out.rglob("*") if p.is_file()]
        assert (out / "config.json").is_file() and (out / "summary.txt").is_file()
        assert all(p.stat().st_size > 0 for p in files), files
        assert not [p for p in files if p.suffix == ".tmp"], files
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_predict_on_a_read_only_run_is_one_line(run_dir, tmp_path, capsys):
    out, metrics = run_dir
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    _mount("--bind", str(out), str(readonly))
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(readonly)], check=True)
        assert main_guard(predict.main, [str(readonly)]) == 2
        err = _one_error(capsys)
        assert err.startswith("error: the run directory") and "is not writable" in err, err
        test = predict.main([str(readonly), "--out", str(tmp_path / "p.png"), "--count", "2"])
        assert test["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        subprocess.run(["umount", "-l", str(readonly)], check=False)


# ---------------------------------------------------------------------------------------------
# --dataset and --model package.module:Class (issue 15: 1)

USER_MODULE = '''
import flax.linen as nn


class TinyCNN(nn.Module):
    """A user's model: dropout, no batch normalisation, a softmax output."""

    classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Dropout(0.25, deterministic=not train)(x.reshape((x.shape[0], -1)))
        return nn.softmax(nn.Dense(self.classes)(x))
'''


def test_a_users_module_on_another_data_set(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    # Fashion-MNIST as a Keras-style fashion_mnist.npz (here: MNIST's arrays, inverted, offline).
    from jaxcnn.data.mnist import BUNDLED_MNIST

    data_dir = tmp_path / "fashion"
    data_dir.mkdir()
    with np.load(BUNDLED_MNIST) as f:
        np.savez(data_dir / "fashion_mnist.npz", **{k: (255 - f[k]) if k.startswith("x") else f[k] for k in f.files})
    monkeypatch.chdir(tmp_path)
    flags = ["--dataset", "fashion_mnist", "--model", "my_models:TinyCNN", "--data-dir", str(data_dir),
             "--limit", "500", "--epochs", "1", "--batch-size", "50", "--verbose", "0"]
    metrics = mnist.main(flags)
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("fashion_mnist-")  # the default name follows the data set
    config = json.loads((run / "config.json").read_text())
    assert (config["dataset"], config["model"]) == ("fashion_mnist", "my_models:TinyCNN")
    assert json.loads((run / "model" / "model.json").read_text())["module"] == "my_models:TinyCNN"
    test = predict.main([str(run), "--count", "2"])  # rebuilt by importing the class
    assert test["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert main_guard(mnist.main, ["--model", "my_models:Nope", "--out", str(tmp_path / "x")]) == 2
    assert "has no 'Nope'" in _one_error(capsys)
