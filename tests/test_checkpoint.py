"""Checkpoints: export/load of final weights, orbax training checkpoints, resume, NaN handling."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxcnn
from experiments import common, mnist
from jaxcnn import checkpoint, data, optim
from jaxcnn.callbacks import BackupAndRestore, EarlyStopping, LambdaCallback, LearningRateScheduler, keep_then_decay
from jaxcnn.errors import CheckpointError, ConfigError
from jaxcnn.train import History, create_train_state

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")  # not the times


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _assert_trees_equal(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def mnist_small():
    ds = data.load("mnist").limit(160)
    return data.to_float(ds.x_train), ds.y_train


@functools.lru_cache(maxsize=None)
def _template(seed: int = 3, name: str = "mnist_cnn", **kwargs):
    """A fresh initial state (cached: creating one compiles; fit copies it before donating)."""
    return create_train_state(jaxcnn.get_model(name, **kwargs), (28, 28, 1), optim.get_optimizer("rmsprop", 0.001), seed=seed)


# ---------------------------------------------------------------------------------------------
# export / load (final weights, msgpack)


def test_export_load_roundtrip_and_clear_errors(tmp_path):
    state = _template()
    checkpoint.export(tmp_path / "model", state, "mnist_cnn")
    reloaded = checkpoint.load_state(tmp_path / "model")
    _assert_trees_equal(reloaded.params, state.params)

    # Another architecture: model.json says search_cnn, the weights are mnist_cnn's.
    other = tmp_path / "other"
    checkpoint.export(other, state, "mnist_cnn")
    meta = json.loads((other / "model.json").read_text())
    meta.update(model="search_cnn", model_kwargs={"kernel_size": 7})
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"does not match model 'search_cnn': .* should have shape .*another architecture"):
        checkpoint.load(other)

    # A truncated parameter file.
    blob = (tmp_path / "model" / "params.msgpack").read_bytes()
    (tmp_path / "model" / "params.msgpack").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"params\.msgpack does not match the checksum .*truncated or changed"):
        checkpoint.load(tmp_path / "model")
    (tmp_path / "model" / "params.msgpack").unlink()
    with pytest.raises(CheckpointError, match=r"params\.msgpack is missing"):
        checkpoint.load(tmp_path / "model")


# ---------------------------------------------------------------------------------------------
# orbax training checkpoints


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_train_checkpoints_keep_last_and_best_and_restore_exactly(tmp_path, asynchronous):
    state = _template()
    history = History()
    ckpts = checkpoint.TrainCheckpoints(tmp_path / "ck", asynchronous=asynchronous)
    saved = {}
    for epoch, val_loss in enumerate([1.0, 0.5, 0.7, 0.8]):
        state = state.replace(step=state.step + 10, params=jax.tree.map(lambda p: p + 1.0, state.params))
        history.append(epoch, {"loss": 2.0 - epoch, "val_loss": val_loss})
        es = {"wait": epoch, "stopped_epoch": 0, "best": 0.5, "best_epoch": 1}
        ckpts.save(epoch + 1, state, history=history, callbacks=[es, {}], metrics={"val_loss": val_loss})
        saved[epoch + 1] = state
    ckpts.wait()  # an asynchronous save may still be writing; old ones go only once it is done
    assert ckpts.epochs == [2, 4]  # the best (val_loss 0.5 after epoch 2) and the latest
    assert (ckpts.latest_epoch, ckpts.best_epoch) == (4, 2)
    ckpts.close()

    with checkpoint.TrainCheckpoints(tmp_path / "ck") as again:  # a new process would do this
        r = again.restore(_template())
        best = again.restore(_template(), epoch=2)
    assert r.epoch == 4 and best.epoch == 2
    assert int(r.state.step) == 40
    _assert_trees_equal(r.state.params, saved[4].params)
    _assert_trees_equal(r.state.opt_state, saved[4].opt_state)
    _assert_trees_equal(jax.random.key_data(r.state.key), jax.random.key_data(saved[4].key))
    _assert_trees_equal(best.state.params, saved[2].params)
    assert r.history.to_dict() == history.to_dict()
    assert r.callbacks == [{"wait": 3, "stopped_epoch": 0, "best": 0.5, "best_epoch": 1}, {}]
    assert r.meta["learning_rate"] == pytest.approx(0.001)


def test_a_failed_background_write_is_a_checkpoint_error_on_close(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    ckpts = checkpoint.TrainCheckpoints(tmp_path / "ck", asynchronous=True)
    ckpts.save(1, _template(), metrics={"val_loss": 1.0})
    # a failed write's in-flight tensorstore writes report "Event loop is closed" as unraisable,
    # around the one-line error: saving drops those reports, as restoring does
    assert getattr(sys.unraisablehook, "_jaxcnn_drops_closed_loop", False)
    ckpts.wait()
    assert ckpts.epochs == [1]
    ckpts.save(2, _template(), metrics={"val_loss": 0.5})
    real_wait = ckpts._manager.wait_until_finished

    def failed_write():
        real_wait()
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpts._manager, "wait_until_finished", failed_write)
    (tmp_path / "ck" / "3.orbax-checkpoint-tmp" / "state").mkdir(parents=True)  # orbax's half-written save
    with pytest.raises(CheckpointError, match=r"cannot save a checkpoint in .*: No space left on device; free some space: "
                                              r"the checkpoint after epoch 2 is kept, and fit\(\.\.\., resume=True\) "
                                              r"continues from it$") as info:
        ckpts.close()
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "ck").glob("*orbax-checkpoint-tmp*"))


def test_orbax_checkpoint_of_another_model_or_truncated_gets_checkpoint_error(tmp_path):
    state = _template()
    with checkpoint.TrainCheckpoints(tmp_path / "ck") as ckpts:
        ckpts.save(1, state, history=History())
        with pytest.raises(CheckpointError, match=r"no checkpoint after epoch 5 .* there are: \[1\]"):
            ckpts.restore(state, epoch=5)
        other = _template(name="search_cnn", kernel_size=5)
        with pytest.raises(CheckpointError, match=r"checkpoint .*/1 does not match this model.*another architecture"):
            ckpts.restore(other)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*nothing to resume from"):
        checkpoint.TrainCheckpoints(tmp_path / "empty").restore(state)

    # Truncate the largest file of the saved arrays.
    files = [p for p in (tmp_path / "ck" / "1" / "state").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    with checkpoint.TrainCheckpoints(tmp_path / "ck") as ckpts:
        with pytest.raises(CheckpointError, match=r"checkpoint .*/1 .*(truncated or corrupt|SHA-256).*delete that folder"):
            ckpts.restore(state)

    # A truncated metadata file.
    meta = tmp_path / "ck" / "1" / "state" / "_METADATA"
    meta.write_bytes(meta.read_bytes()[:40])
    with checkpoint.TrainCheckpoints(tmp_path / "ck") as ckpts:
        with pytest.raises(CheckpointError, match=r"checkpoint .*/1 .*truncated or corrupt"):
            ckpts.restore(state)


class _Seen:
    """A duck-typed callback (a hook, no get_state/set_state): it keeps no state to save."""

    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_fit_resumed_with_backup_and_restore_equals_uninterrupted(tmp_path, mnist_small):
    """Callbacks' state survives: EarlyStopping (with its best weights) and the scheduled rate;
    a duck-typed callback without state is saved as {} and given nothing back."""
    x, y = mnist_small
    kw = dict(batch_size=32, validation_split=0.25, seed=3, verbose=0)

    def cbs():
        return [EarlyStopping(patience=5, restore_best_weights=True), LearningRateScheduler(keep_then_decay(1, 0.1)), _Seen()]

    c = cbs()
    ref = jaxcnn.fit(_template(), x, y, epochs=3, callbacks=c, **kw)
    ref_es = c[0].get_state()

    ckpts = checkpoint.TrainCheckpoints(tmp_path / "ck")
    c = cbs()
    jaxcnn.fit(_template(), x, y, epochs=1, callbacks=[*c, BackupAndRestore(ckpts, c)], **kw)  # "killed" after epoch 1
    ckpts.close()

    ckpts = checkpoint.TrainCheckpoints(tmp_path / "ck")
    resume = ckpts.restore(_template())
    assert resume.epoch == 1 and "best_state" in resume.callbacks[0] and resume.callbacks[2] == {}
    c = cbs()
    got = jaxcnn.fit(resume.state, x, y, epochs=3, initial_epoch=resume.epoch, callbacks=[*c, BackupAndRestore(ckpts, c, resume)], **kw)
    ckpts.close()
    for k in COMPARED:
        assert got.history[k] == ref.history[k], k
    assert got.history.epoch == [0, 1, 2] and c[2].epochs == [1, 2]
    _assert_trees_equal(got.state.params, ref.state.params)
    _assert_trees_equal(got.state.opt_state, ref.state.opt_state)
    assert {k: v for k, v in c[0].get_state().items() if k != "best_state"} == {k: v for k, v in ref_es.items() if k != "best_state"}


# ---------------------------------------------------------------------------------------------
# A real process killed mid-epoch, then resumed


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # A shared compilation cache: the second and third processes skip most compiling.
    env.update(
        PYTHONPATH=str(ROOT), JAXCNN_OFFLINE="1", JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_run(tmp_path):
    env = _env(tmp_path / "jax-cache")
    args = [sys.executable, "-m", "experiments.mnist", "--limit", "1000", "--test-limit", "500", "--epochs", "4", "--batch-size", "8",
            "--verbose", "0", "--seed", "1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*args, "--out", str(whole)], env=env, cwd=ROOT, check=True, timeout=120)
    reference = json.loads((whole / "history.json").read_text())
    epoch_s = float(np.median(reference["history"]["train_time_s"][1:]))

    proc = subprocess.Popen([*args, "--out", str(killed)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while not (killed / "checkpoints" / "1").is_dir():  # orbax renames the folder when complete
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 90 s"
            time.sleep(0.01)
        time.sleep(0.4 * epoch_s)  # well inside epoch 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    done = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert done and done[-1] < 4, done

    subprocess.run([*args, "--out", str(killed), "--resume"], env=env, cwd=ROOT, check=True, timeout=120)
    resumed = json.loads((killed / "history.json").read_text())
    assert resumed["epoch"] == reference["epoch"] == [0, 1, 2, 3]
    for k in COMPARED:
        assert resumed["history"][k] == reference["history"][k], k  # bit-identical on CPU
    assert json.loads((killed / "metrics.json").read_text())["resumed_from_epoch"] == done[-1]
    # Same final parameters: the exported file's SHA-256 is the same.
    assert json.loads((killed / "model" / "model.json").read_text())["sha256"] == json.loads((whole / "model" / "model.json").read_text())["sha256"]


# ---------------------------------------------------------------------------------------------
# run(): NaN handling and resume checks


def test_nan_loss_keeps_last_good_checkpoint_and_history(tmp_path, monkeypatch, capsys):
    """After epoch 1 the learning rate jumps to 1e12; epoch 2's loss overflows."""
    explode = LambdaCallback(on_epoch_end=lambda epoch, logs, loop: setattr(loop, "learning_rate", 1e12) if epoch == 0 else None)
    original = common._callbacks
    monkeypatch.setattr(common, "_callbacks", lambda config: [*original(config), explode])
    out = tmp_path / "run"
    argv = ["--limit", "400", "--test-limit", "500", "--epochs", "3", "--batch-size", "32", "--verbose", "0", "--out", str(out)]
    assert common.main_guard(mnist.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: the loss became NaN or infinite at epoch 2, step ")
    assert f"the last good checkpoint (after epoch 1) is in {out / 'checkpoints'}" in err
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [0] and np.isfinite(history["history"]["loss"][0])
    assert not (out / "metrics.json").exists()
    with checkpoint.TrainCheckpoints(out / "checkpoints") as ckpts:
        assert ckpts.epochs == [1]
        r = ckpts.restore(_template(seed=0))
    assert all(np.isfinite(leaf).all() for leaf in _leaves(r.state.params))


def test_resume_refuses_other_settings_and_needs_out(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    config = common.dataclasses.replace(mnist.DEFAULTS, limit=400)  # a run's config.json, as run() writes it
    common.write_json(out / "config.json", {**json.loads(json.dumps(common.dataclasses.asdict(config))),
                                            "jaxcnn_run": common.RUN_FORMAT, "settings_sha256": common.settings_fingerprint(config)})
    with pytest.raises(ConfigError, match=r"--resume: the run in .* was started with learning_rate=0\.001, not 0\.01; resume with the same settings"):
        mnist.main(["--limit", "400", "--learning-rate", "0.01", "--out", str(out), "--resume", "--verbose", "0"])
    with pytest.raises(ConfigError, match=r"--resume needs --out"):
        mnist.main(["--resume", "--verbose", "0"])
