"""Keras's toolbox around fit: ModelCheckpoint and ReduceLROnPlateau make Keras's own decisions on
the same scripted values (Keras driven by hand), every callback works in a real short fit on MNIST,
and each one's state survives a resume (JSON round trip, and a run resumed through fit)."""

from __future__ import annotations

import csv
import json
import math
import os

import jax
import numpy as np
import pytest

import jaxcnn
from jaxcnn import optim
from jaxcnn.callbacks import CSVLogger, ModelCheckpoint, ReduceLROnPlateau, TensorBoard, TerminateOnNaN
from jaxcnn.errors import ConfigError, TrainingError


def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    k = pytest.importorskip("keras")
    if k.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    return k


def keras_model(k, lr=0.1):
    model = k.Sequential([k.Input((1,)), k.layers.Dense(1)])
    model.compile(optimizer=k.optimizers.SGD(learning_rate=lr), loss="mse", metrics=["accuracy"])
    # Built metrics tell Keras's "auto" mode that accuracy goes up.
    with jax.numpy_rank_promotion("allow"):  # Keras's Dense adds a (1,) bias to (1, 1)
        model.evaluate(np.zeros((1, 1)), np.zeros((1, 1)), verbose=0)
    return model


class FakeLoop:
    """What the decision-only callbacks touch: a float32 learning rate, stop_training."""

    def __init__(self, lr: float):
        self._lr = float(np.float32(lr))
        self.stop_training = False

    @property
    def learning_rate(self) -> float:
        return self._lr

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._lr = float(np.float32(value))


@pytest.fixture(scope="module")
def mnist_small():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:320]), ds.y_train[:320]


TINY = {"filters": 4, "dense_units": 8}


def tiny_model():
    return jaxcnn.get_model("mnist_cnn", **TINY)


# -- Keras's decisions ------------------------------------------------------------------------

PLATEAU_CASES = [
    # (kwargs, scripted monitor values)
    ({"patience": 2}, [1.0, 0.9, 0.95, 0.92, 0.91, 0.95, 0.8, 0.85, 0.86, 0.87, 0.88]),
    ({"patience": 1, "cooldown": 2, "factor": 0.5}, [1.0, 1.1, 1.2, 1.3, 1.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    ({"patience": 0, "min_delta": 0.05}, [1.0, 0.97, 0.9, 0.88, 0.5, 0.49]),
    ({"patience": 1, "min_lr": 0.004, "factor": 0.2}, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ({"monitor": "val_accuracy", "patience": 1}, [0.5, 0.6, 0.6, 0.55, 0.7, 0.69, 0.68]),
    ({"monitor": "val_loss", "mode": "max", "patience": 1, "cooldown": 1}, [0.5, 0.4, 0.3, 0.6, 0.2, 0.1, 0.0]),
]


@pytest.mark.parametrize("kwargs,values", PLATEAU_CASES)
def test_reduce_lr_on_plateau_makes_keras_decisions(kwargs, values):
    k = keras()
    model = keras_model(k, lr=0.1)
    theirs = k.callbacks.ReduceLROnPlateau(**kwargs)
    theirs.set_model(model)
    theirs.on_train_begin()
    ours, loop = ReduceLROnPlateau(**kwargs), FakeLoop(0.1)
    ours.on_train_begin(loop)
    monitor = kwargs.get("monitor", "val_loss")
    keras_lrs, our_lrs = [], []
    for epoch, v in enumerate(values):
        theirs.on_epoch_end(epoch, {monitor: v})
        keras_lrs.append(float(np.asarray(model.optimizer.learning_rate)))
        ours.on_epoch_end(epoch, {monitor: v}, loop)
        our_lrs.append(loop.learning_rate)
    np.testing.assert_allclose(our_lrs, keras_lrs, rtol=1e-6)
    assert len(set(keras_lrs)) > 1  # each case reduces at least once
    assert (ours.wait, ours.cooldown_counter) == (theirs.wait, theirs.cooldown_counter)


CHECKPOINT_CASES = [
    ({"save_best_only": True}, {"val_loss": [1.0, 0.8, 0.9, 0.8, 0.7, 0.75]}),
    ({"save_best_only": True, "monitor": "val_accuracy"}, {"val_accuracy": [0.5, 0.7, 0.6, 0.7, 0.9]}),
    ({"save_best_only": True, "mode": "max", "monitor": "loss"}, {"loss": [0.5, 0.4, 0.6, 0.7, 0.7]}),
    ({"save_best_only": True, "initial_value_threshold": 0.85}, {"val_loss": [1.0, 0.8, 0.9, 0.84, 0.7]}),
    ({"save_best_only": False}, {"val_loss": [1.0, 1.1, 1.2]}),
]


@pytest.mark.parametrize("kwargs,logs", CHECKPOINT_CASES)
def test_model_checkpoint_saves_when_keras_saves(tmp_path, kwargs, logs):
    k = keras()
    model = keras_model(k)
    keras_saved = []
    model.save = lambda path, overwrite=True: keras_saved.append(path)  # record Keras's decisions only
    theirs = k.callbacks.ModelCheckpoint(str(tmp_path / "k-{epoch:02d}.keras"), **kwargs)
    theirs.set_model(model)
    theirs.on_train_begin()
    state = jaxcnn.create_train_state(tiny_model(), (28, 28, 1))

    class Loop:
        pass

    loop = Loop()
    loop.state = state
    ours = ModelCheckpoint(tmp_path / "j-{epoch:02d}.msgpack", save_weights_only=True, **kwargs)
    ours.on_train_begin(loop)
    (name, values), = logs.items()
    for epoch, v in enumerate(values):
        theirs.on_epoch_begin(epoch)
        theirs.on_epoch_end(epoch, {name: v})
        ours.on_epoch_begin(epoch, loop)
        ours.on_epoch_end(epoch, {name: v}, loop)
    epochs = lambda paths: [os.path.basename(p)[2:4] for p in paths]  # noqa: E731
    assert epochs(ours.saved) == epochs(keras_saved)
    assert sorted(p.name for p in tmp_path.glob("j-*")) == [os.path.basename(p) for p in ours.saved]


def test_model_checkpoint_passed_to_a_second_fit_keeps_its_best_as_keras(tmp_path):
    """Training on with the same callback: Keras keeps ``best`` (no reset at on_train_begin), so a
    worse second fit never overwrites the best file."""
    k = keras()
    model = keras_model(k)
    keras_saved = []
    model.save = lambda path, overwrite=True: keras_saved.append(path)
    theirs = k.callbacks.ModelCheckpoint(str(tmp_path / "k-{epoch:02d}.keras"), save_best_only=True)
    theirs.set_model(model)

    class Loop:
        pass

    loop = Loop()
    loop.state = jaxcnn.create_train_state(tiny_model(), (28, 28, 1))
    ours = ModelCheckpoint(tmp_path / "j-{epoch:02d}.msgpack", save_weights_only=True, save_best_only=True)
    for values in ([1.0, 0.8], [2.3, 0.9, 0.7]):  # two fits; the second starts worse
        theirs.on_train_begin()
        ours.on_train_begin(loop)
        for epoch, v in enumerate(values):
            theirs.on_epoch_begin(epoch)
            theirs.on_epoch_end(epoch, {"val_loss": v})
            ours.on_epoch_begin(epoch, loop)
            ours.on_epoch_end(epoch, {"val_loss": v}, loop)
    assert [os.path.basename(p)[2:4] for p in ours.saved] == [os.path.basename(p)[2:4] for p in keras_saved] == ["01", "02", "03"]
    assert ours.best == pytest.approx(0.7)


# -- every callback in a real fit -------------------------------------------------------------


def test_callbacks_in_a_real_fit(tmp_path, mnist_small):
    from flax import serialization
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = mnist_small
    best = ModelCheckpoint(tmp_path / "best.msgpack", save_best_only=True, save_weights_only=True)
    every = ModelCheckpoint(tmp_path / "models" / "{epoch:02d}-{val_loss:.4f}", model_name="mnist_cnn", model_kwargs=TINY)
    steps = ModelCheckpoint(tmp_path / "steps" / "s{batch:03d}.msgpack", save_weights_only=True, save_freq=3)
    plateau = ReduceLROnPlateau(monitor="val_loss", min_delta=10.0, patience=0, factor=0.5)  # no epoch improves by 10
    logger = CSVLogger(tmp_path / "log.csv", separator=";")
    board = TensorBoard(tmp_path / "tb", histogram_freq=1, update_freq=2)
    nan = TerminateOnNaN()
    callbacks = [best, every, steps, plateau, logger, board, nan]
    state, history = jaxcnn.fit(
        tiny_model(), x, y, epochs=2, batch_size=64, validation_split=0.2, optimizer="rmsprop", learning_rate=0.01,
        verbose=0, callbacks=callbacks,
    )
    h = history.history
    # ReduceLROnPlateau: epoch 0 sets the best, epoch 1 does not beat it by 10: the rate halves.
    assert h["learning_rate"] == pytest.approx([0.01, 0.01])
    assert float(optim.get_learning_rate(state.opt_state)) == pytest.approx(0.005)
    # ModelCheckpoint: an export per epoch named by epoch and val_loss, reloadable; the best
    # weights file holds the final weights when the last epoch was the best.
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == [f"{e + 1:02d}-{v:.4f}" for e, v in enumerate(h["val_loss"])]
    reloaded = jaxcnn.checkpoint.load_state(tmp_path / "models" / names[-1])
    np.testing.assert_allclose(jaxcnn.predict(reloaded, x[:8]), jaxcnn.predict(state, x[:8]), atol=1e-5)
    weights = serialization.msgpack_restore((tmp_path / "best.msgpack").read_bytes())
    if h["val_loss"][1] < h["val_loss"][0]:
        jax.tree.map(np.testing.assert_array_equal, weights["params"], jax.device_get(state.params))
    # 256 training examples in batches of 64: 4 steps an epoch, 8 in all; every 3rd step saved,
    # named as Keras names them, by the batch within its epoch (epoch 1 batch 3, epoch 2 batch 2).
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["s002.msgpack", "s003.msgpack"]
    # CSVLogger: Keras's columns (epoch, then the keys sorted), the history's values.
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert list(rows[0]) == ["epoch", *sorted(h)]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for key in ("loss", "val_accuracy", "learning_rate"):
        assert [float(r[key]) for r in rows] == pytest.approx(h[key])
    # TensorBoard, read back with TensorBoard's own reader.
    train = EventAccumulator(str(tmp_path / "tb" / "train"), size_guidance={"scalars": 0, "histograms": 0})
    val = EventAccumulator(str(tmp_path / "tb" / "validation"), size_guidance={"scalars": 0})
    train.Reload(), val.Reload()
    scalars = lambda acc, tag: [(e.step, e.value) for e in acc.Scalars(tag)]  # noqa: E731
    assert scalars(train, "epoch_loss") == [(0, pytest.approx(h["loss"][0])), (1, pytest.approx(h["loss"][1]))]
    assert [v for _, v in scalars(train, "epoch_learning_rate")] == pytest.approx(h["learning_rate"])
    assert [v for _, v in scalars(val, "epoch_loss")] == pytest.approx(h["val_loss"])
    assert [s for s, _ in scalars(train, "batch_loss")] == [2, 4, 6, 8]
    assert "epoch_val_loss" not in train.Tags()["scalars"]
    hists = train.Tags()["histograms"]
    assert "conv2d/kernel/histogram" in hists and "dense_1/bias/histogram" in hists
    assert [e.step for e in train.Histograms("conv2d/kernel/histogram")] == [0, 1]
    assert nan.stopped_epoch is None
    # Every state is JSON and round-trips into a fresh callback.
    for cb in callbacks:
        saved = json.loads(json.dumps(cb.get_state()))
        fresh = type(cb).__new__(type(cb))
        fresh.__dict__.update(cb.__dict__)
        fresh.set_state(saved)
        assert fresh.get_state() == saved


def test_terminate_on_nan_with_stop_on_nan_off(mnist_small):
    x, y = mnist_small
    # A learning rate of 1e12 blows the weights up within the first epoch: the loss turns NaN.
    # (By default fit raises TrainingError by itself: tests/test_train.py.)
    kwargs = dict(epochs=3, batch_size=64, verbose=0, optimizer="sgd", learning_rate=1e12)
    stop = TerminateOnNaN()
    state, history = jaxcnn.fit(tiny_model(), x, y, stop_on_nan=False, callbacks=[stop], **kwargs)
    assert len(history) == 1 and math.isnan(history.history["loss"][0])
    assert stop.stopped_epoch == 0
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(state.params)))
    # raise_error=True raises instead, with the last good state; finite losses pass.
    loop = FakeLoop(0.1)
    loop.state, loop.history = "state", "history"
    strict = TerminateOnNaN(raise_error=True)
    strict.on_epoch_end(0, {"loss": 0.5}, loop)
    with pytest.raises(TrainingError, match="training terminated") as e:
        strict.on_epoch_end(1, {"loss": float("inf")}, loop)
    assert e.value.state == "state" and not loop.stop_training


# -- resume --------------------------------------------------------------------------------------


def test_reduce_lr_state_resumes_the_same_decisions():
    values = [1.0, 0.9, 0.95, 0.96, 0.97, 0.8, 0.85, 0.86, 0.87, 0.88]
    whole, loop = ReduceLROnPlateau(patience=2, cooldown=1), FakeLoop(0.1)
    whole.on_train_begin(loop)
    lrs = []
    for e, v in enumerate(values):
        whole.on_epoch_end(e, {"val_loss": v}, loop)
        lrs.append(loop.learning_rate)
    first, loop2 = ReduceLROnPlateau(patience=2, cooldown=1), FakeLoop(0.1)
    first.on_train_begin(loop2)
    for e, v in enumerate(values[:4]):
        first.on_epoch_end(e, {"val_loss": v}, loop2)
    saved = json.loads(json.dumps(first.get_state()))
    second = ReduceLROnPlateau(patience=2, cooldown=1)
    second.on_train_begin(loop2)  # as fit does: reset, then set_state
    second.set_state(saved)
    resumed = lrs[:4]
    for e, v in enumerate(values[4:], start=4):
        second.on_epoch_end(e, {"val_loss": v}, loop2)
        resumed.append(loop2.learning_rate)
    assert resumed == lrs


def test_csv_logger_resume_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "log.csv"
    logs = lambda e: {"loss": 1.0 / (e + 1), "val_loss": 2.0 / (e + 1)}  # noqa: E731
    a = CSVLogger(path)
    a.on_train_begin(None)
    for e in range(2):
        a.on_epoch_end(e, logs(e), None)
    checkpointed = json.loads(json.dumps(a.get_state()))  # the checkpoint after epoch 2 (index 1)
    a.on_epoch_end(2, logs(2), None)  # written, then the run is killed before its checkpoint
    a.on_train_end(None)
    b = CSVLogger(path)  # append=False: a resumed run continues the file anyway
    b.on_train_begin(None)
    b.set_state(checkpointed)
    for e in range(2, 4):
        b.on_epoch_end(e, logs(e), None)
    b.on_train_end(None)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    # append=True on a fresh run adds rows without a second header.
    c = CSVLogger(path, append=True)
    c.on_train_begin(None)
    c.on_epoch_end(0, logs(0), None)
    c.on_train_end(None)
    with open(path) as f:
        assert f.read().count("epoch") == 1


def test_resume_through_fit_continues_every_callback(tmp_path, mnist_small):
    x, y = mnist_small

    def callbacks():
        return [
            ReduceLROnPlateau(min_delta=10.0, patience=0, factor=0.5),
            CSVLogger(tmp_path / "log.csv"),
            ModelCheckpoint(tmp_path / "best.msgpack", save_best_only=True, save_weights_only=True),
            TensorBoard(tmp_path / "tb"),
        ]

    kwargs = dict(batch_size=64, validation_split=0.2, learning_rate=0.01, verbose=0, checkpoint_dir=tmp_path / "ckpt")
    first = callbacks()
    jaxcnn.fit(tiny_model(), x, y, epochs=2, callbacks=first, **kwargs)
    second = callbacks()
    state, history = jaxcnn.fit(tiny_model(), x, y, epochs=3, callbacks=second, resume=True, **kwargs)
    assert history.epoch == [0, 1, 2]
    # The plateau's wait/best came back: epoch 2 again fails to improve by 10 and halves the rate
    # a second time (0.01 -> 0.005 after epoch 1 -> 0.0025 after epoch 2).
    assert history.history["learning_rate"] == pytest.approx([0.01, 0.01, 0.005])
    assert float(optim.get_learning_rate(state.opt_state)) == pytest.approx(0.0025)
    assert second[0].best == first[0].best
    assert second[2].best == min(history.history["val_loss"])
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(history.history["val_loss"])


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="factor"):
        ReduceLROnPlateau(factor=1.5)
    with pytest.raises(ConfigError, match="save_freq"):
        ModelCheckpoint("x", save_freq="sometimes")
    with pytest.raises(ConfigError, match="update_freq"):
        TensorBoard("x", update_freq=0)
    with pytest.raises(ConfigError, match="mode"):
        ModelCheckpoint("x", mode="up")
    ckpt = ModelCheckpoint("x/{epoch}-{val_acc:.2f}", save_weights_only=True)
    with pytest.raises(ConfigError, match="cannot be formatted"):
        ckpt._path(0, None, {"val_loss": 1.0})
