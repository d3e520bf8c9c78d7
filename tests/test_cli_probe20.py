"""The experiments' command line, as a user met it (probe 20): Ctrl-C with --no-checkpoint keeps the
finished epochs' history and does not advise a --resume that would start over; a bad --storage
of the random search leaves no empty folder and says so in one line; the NaN message reads as one
sentence; --devices 0, 99 or -3 are refused with one message before anything is printed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--limit", "200", "--test-limit", "100", "--batch-size", "64", "--verbose", "0"]


def _stop_at(epoch: int):
    """A callback that raises KeyboardInterrupt (Ctrl-C) when epoch ``epoch`` (0-based) begins."""
    from jaxcnn.callbacks import Callback

    class _CtrlC(Callback):
        def on_epoch_begin(self, e, loop):
            if e == epoch:
                raise KeyboardInterrupt

    return _CtrlC()


def _with_callback(monkeypatch, callback) -> None:
    from experiments import common

    original = common._callbacks
    monkeypatch.setattr(common, "_callbacks", lambda config: [*original(config), callback])


# -- 1. Ctrl-C with --no-checkpoint ---------------------------------------------------------------


def test_ctrl_c_with_no_checkpoint_keeps_the_history_and_advises_no_resume(tmp_path, monkeypatch, capsys):
    from experiments import mnist
    from experiments.common import main_guard

    _with_callback(monkeypatch, _stop_at(2))
    out = tmp_path / "run"
    assert main_guard(mnist.main, [*TINY, "--epochs", "5", "--no-checkpoint", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        f"interrupted: 2 epochs had finished; their history is in {out / 'history.json'}, but --no-checkpoint saved "
        "no checkpoint to resume from; start a new run with another --out"
    ), err
    assert "--resume" not in err
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [0, 1] and len(history["history"]["loss"]) == 2
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3  # a header and two epochs
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()


def test_ctrl_c_with_no_checkpoint_before_an_epoch_finished(tmp_path, monkeypatch, capsys):
    from experiments import mnist
    from experiments.common import main_guard

    _with_callback(monkeypatch, _stop_at(0))
    out = tmp_path / "run"
    assert main_guard(mnist.main, [*TINY, "--epochs", "3", "--no-checkpoint", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == (
        "interrupted: no epoch had finished, and --no-checkpoint saved no checkpoint to resume from; "
        "start a new run with another --out"
    )
    assert not (out / "history.json").exists()


def test_ctrl_c_with_checkpoints_keeps_its_message(tmp_path, monkeypatch, capsys):
    """The run with checkpoints is unchanged: the checkpoint, and the command that continues it."""
    from experiments import mnist
    from experiments.common import main_guard

    _with_callback(monkeypatch, _stop_at(1))
    out = tmp_path / "run"
    assert main_guard(mnist.main, [*TINY, "--epochs", "3", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == (
        f"interrupted: the checkpoint after epoch 1 is in {out / 'checkpoints'}; continue with: the same experiment --resume --out {out}"
    )
    assert not (out / "history.json").exists()


@pytest.mark.slow
def test_sigint_with_no_checkpoint_in_a_real_process(tmp_path):
    """The user's case: SIGINT to ``python -m experiments.mnist --no-checkpoint`` after epoch 2."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXCNN_OFFLINE": "1", "MPLBACKEND": "Agg"}
    argv = [*TINY[:-2], "--epochs", "200", "--patience", "-1", "--no-checkpoint", "--verbose", "2", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.mnist", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    epochs = 0
    for line in proc.stdout:
        epochs += line.startswith("Epoch ")
        if epochs == 2:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "--resume" not in err, err
    done = len(json.loads((out / "history.json").read_text())["epoch"])
    assert done >= 2
    assert err.strip().startswith(f"interrupted: {done} epochs had finished; their history is in {out / 'history.json'}"), err


# -- 2. random_search --storage: checked before the run directory, one line --------------------------


@pytest.fixture
def no_retry_wait(monkeypatch):
    from jaxcnn.search import engine

    monkeypatch.setattr(engine.time, "sleep", lambda s: None)  # open_storage retries a bad URL 8 times


def test_random_search_bad_storage_leaves_no_folder_and_one_line(tmp_path, capsys, no_retry_wait):
    from experiments import random_search
    from experiments.common import main_guard

    adir = tmp_path / "a-folder"
    adir.mkdir()
    cases = [
        ("foo://bar", "error: cannot open the study storage foo://bar: "),
        ("sqlite:////nonexistent_dir/x.db",
         "error: --storage sqlite:////nonexistent_dir/x.db: the folder /nonexistent_dir does not exist; "
         "create it or give another SQLite file path"),
        (f"sqlite:///{adir}", f"error: cannot open the study storage sqlite:///{adir}: "),  # a folder: sqlite's message spans 2 lines
    ]
    for n, (url, message) in enumerate(cases):
        out = tmp_path / f"rs{n}"
        assert main_guard(random_search.main, ["--storage", url, "--out", str(out), "--verbose", "0"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
        assert not out.exists(), url


def test_random_search_bad_storage_keeps_a_folder_that_was_there(tmp_path, capsys, no_retry_wait):
    from experiments import random_search
    from experiments.common import main_guard

    out = tmp_path / "mine"
    out.mkdir()
    assert main_guard(random_search.main, ["--storage", "foo://bar", "--out", str(out), "--verbose", "0"]) == 2
    capsys.readouterr()
    assert out.is_dir()


def test_random_search_storage_error_hides_the_password(tmp_path, capsys, no_retry_wait):
    from experiments import random_search
    from experiments.common import main_guard

    out = tmp_path / "rs"
    url = "postgresql://user:secret@127.0.0.1:1/db"  # nothing listens on port 1
    code = main_guard(random_search.main, ["--storage", url, "--out", str(out), "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "secret" not in err and not out.exists(), err


# -- 3. the NaN message reads as one sentence ------------------------------------------------------


def test_nan_message_joins_what_was_kept_as_one_sentence(tmp_path, capsys):
    from experiments import mnist
    from experiments.common import main_guard

    out = tmp_path / "run"
    argv = [*TINY, "--epochs", "1", "--batch-size", "32", "--learning-rate", "1e12", "--no-checkpoint", "--out", str(out)]
    assert main_guard(mnist.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.endswith(
        f"or add weight decay; no checkpoint was written before it; the history so far is in {out / 'history.json'}"
    ), err
    assert not re.search(r"\. [a-z]", err), err  # no lower-case word after a full stop


def test_nan_message_with_a_checkpoint_reads_as_one_sentence(tmp_path, monkeypatch, capsys):
    from experiments import mnist
    from experiments.common import main_guard
    from jaxcnn.callbacks import LambdaCallback

    _with_callback(monkeypatch, LambdaCallback(
        on_epoch_end=lambda epoch, logs, loop: setattr(loop, "learning_rate", 1e12) if epoch == 0 else None))
    out = tmp_path / "run"
    assert main_guard(mnist.main, [*TINY, "--epochs", "3", "--batch-size", "32", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"or add weight decay; the last good checkpoint (after epoch 1) is in {out / 'checkpoints'}; the history" in err, err
    assert not re.search(r"\. [a-z]", err), err


# -- 4. --devices: one message, before anything is printed -----------------------------------------


@pytest.mark.parametrize("value, shown", [("0", "0"), ("99", "99"), ("-3", "'-3'"), ("two", "'two'")])
def test_bad_devices_are_refused_before_anything_is_printed(tmp_path, capsys, value, shown):
    import jax

    from experiments import mnist
    from experiments.common import main_guard

    n = len(jax.local_devices())
    kind = jax.local_devices()[0].platform.upper()
    out = tmp_path / "never-made"
    argv = ["--devices", value, "--limit", "200", "--test-limit", "100", "--epochs", "1", "--out", str(out)]  # --verbose 1
    assert main_guard(mnist.main, argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "", captured.out  # not the data line, not the model summary
    more = "; JAXCNN_CPU_DEVICES=N splits the CPU into N devices" if kind == "CPU" else ""
    assert captured.err.strip() == (
        f"error: --devices must be 'auto', 'all' or a number of devices, got {shown}; the number of devices must be "
        f"at least 1 and at most {n}, the {kind} device{'' if n == 1 else 's'} this process sees{more}"
    ), captured.err
    assert not out.exists()
