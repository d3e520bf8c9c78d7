"""Issue 17 (3, 4, 11): files that were edited, cut or hold JSON of the wrong shape are refused
with a one-line error, in the library and from a real command line.

* Training checkpoints checksum their meta (history, callbacks' state such as EarlyStopping's) and
  the callbacks' arrays, as they did the state: an edited value is refused on restore and on
  ``--resume``.
* ``model.json`` of the wrong shape (``[1]``, ``null``, ``input_shape: "abc"``) is a
  ``CheckpointError``, also through ``python -m experiments.predict``.
* A CIFAR-10 batch cut at a record boundary is refused by ``python -m experiments.cifar10``
  before a run directory is made.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxcnn
from experiments import mnist
from jaxcnn import checkpoint
from jaxcnn.errors import CheckpointError
from jaxcnn.train import History, create_train_state

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(ROOT), JAXCNN_OFFLINE="1", JAX_PLATFORMS="cpu", JAXCNN_DATA=str(tmp_path / "cache"), MPLBACKEND="Agg")
    return env


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a refused command (exit status 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


@functools.lru_cache(maxsize=None)
def _state():
    return create_train_state(jaxcnn.get_model("mnist_cnn"), (28, 28, 1), "rmsprop", 0.001)


def _meta_file(ckpts_dir: Path, epoch: int) -> Path:
    return ckpts_dir / str(epoch) / "meta" / "metadata"


def _edit_meta(ckpts_dir: Path, epoch: int, edit) -> None:
    path = _meta_file(ckpts_dir, epoch)
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# --------------------------------------------------------------------------- 3. checksummed meta


def _save_two(directory: Path) -> None:
    state = _state()
    history = History()
    with checkpoint.TrainCheckpoints(directory, keep="last") as ckpts:
        for epoch in (1, 2):
            history.append(epoch - 1, {"loss": 1.0 / epoch, "val_accuracy": 0.1 * epoch})
            best = jax.tree.map(lambda p, e=epoch: p + e, state.params)  # EarlyStopping's best weights
            early = {"wait": epoch - 1, "best": 0.1 * epoch, "best_epoch": epoch - 1, "best_weights": best}
            ckpts.save(epoch, state, history=history, callbacks=[early])
        assert ckpts.epochs == [2]


def test_edited_history_or_early_stopping_state_is_refused(tmp_path):
    directory = tmp_path / "ck"
    _save_two(directory)
    with checkpoint.TrainCheckpoints(directory) as ckpts:
        r = ckpts.restore(_state())  # untouched: restores, arrays and all
    assert r.history["val_accuracy"] == [0.1, 0.2] and r.callbacks[0]["wait"] == 1
    np.testing.assert_array_equal(r.callbacks[0]["best_weights"]["dense"]["bias"], np.asarray(_state().params["dense"]["bias"]) + 2)
    original = _meta_file(directory, 2).read_text()

    edits = {
        "a validation accuracy set by hand": lambda m: m["history"]["history"]["val_accuracy"].__setitem__(1, 0.9),
        "EarlyStopping's patience counter reset": lambda m: m["callbacks"][0].__setitem__("wait", 0),
        "its own checksum removed": lambda m: m.pop("meta_sha256"),
    }
    for what, edit in edits.items():
        _meta_file(directory, 2).write_text(original)
        _edit_meta(directory, 2, edit)
        with checkpoint.TrainCheckpoints(directory) as ckpts:
            with pytest.raises(CheckpointError, match=r"^checkpoint .*/ck/2: its meta \(history, callbacks' state\) does not match "
                               r"its SHA-256 \(edited or corrupt on disk, or written by an older jaxcnn\); delete that folder"):
                ckpts.restore(_state())
    _meta_file(directory, 2).write_text(original)


def test_swapped_early_stopping_weights_are_refused(tmp_path):
    """The callbacks' arrays (EarlyStopping's best weights) carry their own SHA-256 in the meta."""
    a, b = tmp_path / "a", tmp_path / "b"
    _save_two(a)
    state = _state()
    with checkpoint.TrainCheckpoints(b, keep="last") as ckpts:
        other = {"wait": 1, "best": 0.2, "best_epoch": 1, "best_weights": jax.tree.map(lambda p: p * 0, state.params)}
        ckpts.save(2, state, history=History(), callbacks=[other])
    shutil.rmtree(a / "2" / "callback_arrays")
    shutil.copytree(b / "2" / "callback_arrays", a / "2" / "callback_arrays")
    with checkpoint.TrainCheckpoints(a) as ckpts:
        with pytest.raises(CheckpointError, match=r"^checkpoint .*/a/2: the callbacks' arrays \(e\.g\. EarlyStopping's best weights\) "
                           r"do not match their SHA-256"):
            ckpts.restore(state)


def test_resume_after_an_edited_history_is_a_one_line_error(tmp_path):
    """A real --resume: the run's checkpoint history is edited by hand, the resume refuses it and
    leaves every file as it was."""
    out = tmp_path / "run"
    args = ["--limit", "160", "--test-limit", "500", "--batch-size", "32", "--verbose", "0", "--out", str(out)]
    mnist.main([*args, "--epochs", "1"])  # in-process: shares this session's compiled steps
    _edit_meta(out / "checkpoints", 1, lambda m: m["history"]["history"]["val_accuracy"].__setitem__(0, 0.99))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = _run(["experiments.mnist", *args, "--epochs", "2", "--resume"], tmp_path)
    line = _one_line_error(proc)
    assert "checkpoints/1: its meta (history, callbacks' state) does not match its SHA-256" in line, line
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten


# --------------------------------------------------------------------------- 11. model.json of the wrong shape


BAD_MODEL_JSON = {
    "[1]": (lambda meta: [1], r"it holds \[1\], not a JSON object"),
    "null": (lambda meta: None, r"it holds null, not a JSON object"),
    'input_shape "abc"': (lambda meta: {**meta, "input_shape": "abc"}, r"input_shape must be \[height, width, channels\], got 'abc'"),
    "input_shape of two": (lambda meta: {**meta, "input_shape": [28, 28]}, r"input_shape must be \[height, width, channels\], got \[28, 28\]"),
    "model a number": (lambda meta: {**meta, "model": 5}, r"model must be a name and model_kwargs a JSON object, got 5 and \{\}"),
    "no model": (lambda meta: {k: v for k, v in meta.items() if k != "model"}, r"it names neither a registered model nor an importable module:Class"),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_JSON))
def test_model_json_of_the_wrong_shape_is_a_checkpoint_error(tmp_path, case):
    make, why = BAD_MODEL_JSON[case]
    checkpoint.export(tmp_path / "model", _state(), "mnist_cnn")
    path = tmp_path / "model" / "model.json"
    path.write_text(json.dumps(make(json.loads(path.read_text()))))
    with pytest.raises(CheckpointError, match=rf"^{path} is not a valid model description \({why}\); re-export the model$"):
        checkpoint.load(tmp_path / "model")


def test_predict_on_a_model_json_of_the_wrong_shape_is_a_one_line_error(tmp_path):
    checkpoint.export(tmp_path / "list", _state(), "mnist_cnn")
    (tmp_path / "list" / "model.json").write_text("[1]")
    shutil.copytree(tmp_path / "list", tmp_path / "abc")
    meta = json.loads(json.dumps({"model": "mnist_cnn", "model_kwargs": {}, "input_shape": "abc", "sha256": "0"}))
    (tmp_path / "abc" / "model.json").write_text(json.dumps(meta))
    for name, why in (("list", "it holds [1], not a JSON object"), ("abc", "input_shape must be [height, width, channels], got 'abc'")):
        proc = _run(["experiments.predict", str(tmp_path / name), "--dataset", "mnist", "--out", str(tmp_path / f"{name}.png")], tmp_path)
        line = _one_line_error(proc)
        assert line == f"error: {tmp_path / name / 'model.json'} is not a valid model description ({why}); re-export the model", line
        assert not (tmp_path / f"{name}.png").exists()


# --------------------------------------------------------------------------- 4. a cut CIFAR-10 batch


def test_cifar_experiment_refuses_a_batch_cut_at_a_record_boundary(tmp_path):
    """data_batch_3.bin holding 4,096 whole records (an interrupted copy) loaded as 44,096 training
    images. Sparse files stand in for the other batches: the sizes are refused before reading."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        with open(folder / name, "wb") as f:
            f.truncate((4096 if name == "data_batch_3.bin" else 10000) * 3073)
    out = tmp_path / "run"
    proc = _run(["experiments.cifar10", "--model", "1", "--data-dir", str(folder), "--out", str(out), "--verbose", "0"], tmp_path)
    line = _one_line_error(proc)
    assert line.startswith(f"error: CIFAR-10 batch {folder / 'data_batch_3.bin'} is truncated (an interrupted copy?): it holds "
                           "4096 records (12587008 bytes) but every official batch holds 10000 (30730000 bytes). "), line
    assert not out.exists()
