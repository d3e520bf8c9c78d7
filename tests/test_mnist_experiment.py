"""`python -m experiments.mnist` end to end on a few hundred images, and its reload."""

from __future__ import annotations

import json

import pytest

from experiments import mnist, predict


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist") / "run"
    metrics = mnist.main(["--limit", "600", "--epochs", "2", "--batch-size", "64", "--out", str(out), "--verbose", "0"])
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
    assert (config["optimizer"], config["batch_size"], config["limit"]) == ("rmsprop", 64, 600)


def test_predict_reloads_the_model(run_dir, capsys):
    out, metrics = run_dir
    test = predict.main([str(out), "--count", "4"])
    assert test["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert (out / "reloaded-predictions.png").read_bytes()[:4] == b"\x89PNG"


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        mnist.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--epochs", "--batch-size", "--learning-rate", "--patience", "--seed", "--limit", "--data-dir", "--out", "--resume", "--precision"):
        assert flag in text
