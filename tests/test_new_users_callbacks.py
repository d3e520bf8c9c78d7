"""Keras code ported as it is: the monitoring callbacks' "auto" mode and monitor keys, Keras-style
BackupAndRestore(dir), ModelCheckpoint's first verbose line, where the callbacks' warnings point,
and Keras metric and loss objects refused with what to pass instead. Scripted logs where the
decision is the point; one short fit for what only a real run shows."""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np
import pytest

import jaxcnn
from jaxcnn import losses, metrics
from jaxcnn.callbacks import BackupAndRestore, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from jaxcnn.errors import ConfigError


def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    k = pytest.importorskip("keras")
    if k.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    return k


class _State:
    """The weights "after epoch e" are the number e, so the restored epoch can be read back."""

    def __init__(self, epoch: int):
        self.params, self.batch_stats = {"epoch": np.asarray(epoch)}, {}

    def replace(self, params, batch_stats):
        return _State(int(params["epoch"]))


class _Loop:
    """What the monitoring callbacks touch: state, stop_training and a learning rate."""

    def __init__(self, lr: float = 0.1):
        self.state, self.stop_training, self.learning_rate = _State(-1), False, lr


def _early_stopping(cb: EarlyStopping, monitor: str, values: list[float]) -> tuple[int | None, int]:
    """Run ``cb`` over scripted values: (the epoch it stopped at or None, the epoch restored)."""
    loop = _Loop()
    cb.on_train_begin(loop)
    stopped = None
    for epoch, value in enumerate(values):
        loop.state = _State(epoch)
        cb.on_epoch_end(epoch, {"loss": 1.0, monitor: value}, loop)
        if loop.stop_training:
            stopped = epoch
            break
    cb.on_train_end(loop)
    return stopped, int(loop.state.params["epoch"])


# -- 1. "auto" maximises F1, precision, recall, AUC as well as accuracy ----------------------------

F1_VALUES = [0.5, 0.6, 0.7, 0.65, 0.6, 0.55]


def test_early_stopping_auto_maximises_f1():
    """val_f1 rises to epoch 2 then falls: stop at epoch 4 and put epoch 2's weights back (in
    "min" mode it would stop at epoch 2, on an improvement, and restore epoch 0)."""
    cb = EarlyStopping(monitor="val_f1", patience=2, restore_best_weights=True)
    assert cb.mode == "max"
    assert _early_stopping(cb, "val_f1", F1_VALUES) == (4, 2)
    assert cb.best_epoch == 2 and cb.best == pytest.approx(0.7)


def test_early_stopping_auto_f1_matches_keras():
    """Keras (told mode="max", as its F1Score's direction says) stops and restores where ours does."""
    k = keras()

    class Model:
        stop_training, epoch, restored = False, -1, None

        def get_weights(self):
            return [np.asarray(self.epoch)]

        def set_weights(self, weights):
            self.restored = int(weights[0])

    k_cb, model = k.callbacks.EarlyStopping(monitor="val_f1", mode="max", patience=2, restore_best_weights=True), Model()
    k_cb.set_model(model)
    k_cb.on_train_begin()
    k_stop = None
    for epoch, value in enumerate(F1_VALUES):
        model.epoch = epoch
        k_cb.on_epoch_end(epoch, {"loss": 1.0, "val_f1": value})
        if model.stop_training:
            k_stop = epoch
            break
    k_cb.on_train_end()
    assert _early_stopping(EarlyStopping(monitor="val_f1", patience=2, restore_best_weights=True), "val_f1", F1_VALUES) == (
        k_stop, model.restored)


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [("val_f1", "max"), ("f1_score", "max"), ("val_precision", "max"), ("val_recall_3", "max"), ("val_auc", "max"),
     ("val_acc", "max"), ("top_k_accuracy", "max"), ("val_sparse_categorical_accuracy", "max"),
     ("val_loss", "min"), ("loss", "min")],
)
def test_auto_mode_is_one_rule_for_every_monitoring_callback(monitor, mode):
    """EarlyStopping decides "auto" as ModelCheckpoint and ReduceLROnPlateau do (Keras's directions)."""
    got = {type(cb).__name__: cb.mode for cb in (
        EarlyStopping(monitor=monitor), ReduceLROnPlateau(monitor=monitor), ModelCheckpoint("m", monitor=monitor))}
    assert got == {"EarlyStopping": mode, "ReduceLROnPlateau": mode, "ModelCheckpoint": mode}


# -- 2. Keras's BackupAndRestore(backup_dir) -------------------------------------------------------


@pytest.mark.parametrize("backup_dir", ["backup_dir", pathlib.Path("backup_dir")])
def test_backup_and_restore_given_a_directory_says_use_fit_checkpoint_dir(backup_dir):
    with pytest.raises(ConfigError, match=r"not a directory .*fit\(\.\.\., checkpoint_dir=DIR, resume=True\)"):
        BackupAndRestore(backup_dir)


# -- 3. monitor="val_acc" finds val_accuracy -------------------------------------------------------


def test_monitors_named_acc_find_accuracy():
    """metrics=["acc"] is logged as "accuracy"; monitor="val_acc" must still act, without warning."""
    logs = [{"loss": 1.0, "accuracy": a, "val_loss": 1.0, "val_accuracy": v} for a, v in [(0.5, 0.5), (0.6, 0.4), (0.7, 0.3)]]
    stop = EarlyStopping(monitor="val_acc", patience=1, restore_best_weights=True)
    plateau = ReduceLROnPlateau(monitor="val_acc", patience=1, factor=0.5)
    plateau_train = ReduceLROnPlateau(monitor="acc", patience=1, factor=0.5)
    best = ModelCheckpoint("m", monitor="val_acc", save_best_only=True)
    loop, train_loop = _Loop(), _Loop()
    for cb in (stop, plateau, plateau_train):
        cb.on_train_begin(loop)
    saved = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "not in the logs" would fail the test
        for epoch, epoch_logs in enumerate(logs):
            loop.state = _State(epoch)
            if not loop.stop_training:  # fit ends the run after the epoch that stopped it
                stop.on_epoch_end(epoch, epoch_logs, loop)
            plateau.on_epoch_end(epoch, epoch_logs, loop)
            plateau_train.on_epoch_end(epoch, epoch_logs, train_loop)
            saved.append(best._should_save(epoch, epoch_logs, "m"))
    assert loop.stop_training and stop.stopped_epoch == 1 and stop.best_epoch == 0
    assert loop.learning_rate == pytest.approx(0.025)  # val_accuracy fell at epochs 1 and 2: halved twice
    assert train_loop.learning_rate == pytest.approx(0.1)  # accuracy rose every epoch
    assert saved == [True, False, False] and best.best == pytest.approx(0.5)
    stop.on_train_end(loop)
    assert int(loop.state.params["epoch"]) == 0


# -- 4. ModelCheckpoint's first verbose line is Keras 3's -------------------------------------------


@pytest.mark.parametrize(("monitor", "mode"), [("val_loss", "auto"), ("val_accuracy", "max")])
def test_model_checkpoint_verbose_lines_match_keras(monitor, mode, capsys):
    """Keras 3.15 (the pinned version) starts from "None" ("improved from None to ..."); older
    Keras 3 printed inf. The lines are Keras's, word for word."""
    k = keras()
    values = [0.5, 0.4, 0.6] if mode == "max" else [0.5, 0.6, 0.4]  # improves, does not, improves
    k_cb = k.callbacks.ModelCheckpoint("m.keras", monitor=monitor, mode=mode, save_best_only=True, verbose=1)
    k_cb._set_monitor_op()
    capsys.readouterr()
    for epoch, value in enumerate(values):
        k_cb._should_save_model(epoch, None, {monitor: value}, "m.keras")
    k_lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip()]
    ours = ModelCheckpoint("m.keras", monitor=monitor, mode=mode, save_best_only=True, verbose=1)
    for epoch, value in enumerate(values):
        ours._should_save(epoch, {monitor: value}, "m.keras")
    assert [line.strip() for line in capsys.readouterr().out.splitlines()] == k_lines
    assert "improved from None to 0.50000" in k_lines[0]


# -- 3 and 5 in a real fit: monitor="val_acc" acts; warnings point at the user's line ---------------


def test_fit_monitors_val_acc_and_warns_at_the_callers_line(tmp_path):
    ds = jaxcnn.data.load("mnist")
    x, y = jaxcnn.data.to_float(ds.x_train[:160]), ds.y_train[:160]
    by_acc = EarlyStopping(monitor="val_acc", patience=5)
    best = ModelCheckpoint(tmp_path / "{epoch}-{val_acc:.3f}.msgpack", monitor="val_acc", save_best_only=True,
                           save_weights_only=True)
    missing = [EarlyStopping(monitor="val_nothing"), ReduceLROnPlateau(monitor="val_nothing"),
               ModelCheckpoint(tmp_path / "x.msgpack", monitor="val_nothing", save_best_only=True, save_weights_only=True)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = jaxcnn.fit(jaxcnn.get_model("mnist_cnn", filters=4, dense_units=8), x, y, epochs=2, batch_size=64,
                                validation_split=0.2, metrics=["acc"], verbose=0, callbacks=[by_acc, best, *missing])
    val_acc = history.history["val_accuracy"]
    assert by_acc.best == pytest.approx(max(val_acc)) and by_acc.best_epoch == int(np.argmax(val_acc))
    assert best.saved and best.saved[0].endswith(f"1-{val_acc[0]:.3f}.msgpack")
    monitor_warnings = [w for w in caught if any(s in str(w.message) for s in ("not in the logs", "not available", "only with"))]
    # Only the three val_nothing monitors warn (once an epoch), at the line that called fit.
    assert sorted(type(w.message).__name__ for w in monitor_warnings) == ["UserWarning"] * 6
    assert all("val_nothing" in str(w.message) for w in monitor_warnings)
    assert {w.filename for w in monitor_warnings} == {__file__}


# -- 6. Keras metric and loss objects --------------------------------------------------------------


def _keras_like(name: str, module: str, **attrs):
    """An instance of a class named as Keras's, from a keras module (no Keras import needed)."""
    return type(name, (), {"__module__": module, "__call__": lambda self, *a, **k: 0.0, "name": None, **attrs})()


@pytest.mark.parametrize(
    ("metric", "match"),
    [(_keras_like("SparseCategoricalAccuracy", "keras.src.metrics.accuracy_metrics"), r"drop it: fit always logs accuracy"),
     (_keras_like("F1Score", "keras.src.metrics.f_score_metrics"), r"pass metrics=\['f1'\] instead"),
     (_keras_like("AUC", "keras.src.metrics.confusion_metrics"), r"jaxcnn.metrics name such as 'f1' or 'top_k_accuracy'")],
)
def test_keras_metric_objects_are_refused_with_the_jaxcnn_name(metric, match):
    with pytest.raises(ConfigError, match=r"Keras metric objects cannot run inside jaxcnn's compiled step; .*" + match):
        metrics.get_metrics([metric])
    with pytest.raises(ConfigError, match="Keras metric"):
        jaxcnn.fit(jaxcnn.get_model("mnist_cnn", filters=4, dense_units=8), np.zeros((4, 28, 28, 1), np.float32),
                   np.zeros(4, np.int32), epochs=1, metrics=[metric], verbose=0)


@pytest.mark.parametrize(
    ("loss", "match"),
    [(_keras_like("SparseCategoricalCrossentropy", "keras.src.losses.losses", from_logits=True),
      r"loss=jaxcnn.losses.SparseCategoricalCrossentropy\(from_logits=True\)"),
     (_keras_like("CategoricalCrossentropy", "keras.src.losses.losses", from_logits=False, label_smoothing=0.1),
      r"loss=jaxcnn.losses.CategoricalCrossentropy\(from_logits=False, label_smoothing=0.1\)"),
     (_keras_like("MeanSquaredError", "keras.src.losses.losses"), r"'sparse_categorical_crossentropy' or 'categorical_crossentropy'")],
)
def test_keras_loss_objects_are_refused_with_the_jaxcnn_loss(loss, match):
    with pytest.raises(ConfigError, match=r"Keras loss objects cannot run inside jaxcnn's compiled step; .*" + match):
        losses.get_loss(loss)


def test_real_keras_objects_are_refused_before_training():
    k = keras()
    x, y = np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, np.int32)
    model = jaxcnn.get_model("mnist_cnn", filters=4, dense_units=8)
    with pytest.raises(ConfigError, match=r"SparseCategoricalAccuracy is a Keras metric"):
        jaxcnn.fit(model, x, y, epochs=1, metrics=[k.metrics.SparseCategoricalAccuracy()], verbose=0)
    with pytest.raises(ConfigError, match=r"loss=jaxcnn.losses.SparseCategoricalCrossentropy\(from_logits=False\)"):
        jaxcnn.fit(model, x, y, epochs=1, loss=k.losses.SparseCategoricalCrossentropy(), verbose=0)
    # A Keras metric function is a plain function (y_true, y_pred), which jaxcnn takes as Keras does.
    assert metrics.get_metric(k.metrics.sparse_categorical_accuracy).name == "sparse_categorical_accuracy"
