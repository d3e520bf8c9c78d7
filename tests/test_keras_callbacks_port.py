"""Callbacks ported from Keras: what a Keras user passes to ``jaxcnn.fit`` and what Keras 3 does.

- CSVLogger(append=True) continues a file as one table (its header's columns), and ``val_``
  columns are made only for metrics, never for fit's learning_rate / time_s / ... .
- ModelCheckpoint's ``{batch}`` is the batch's number within its epoch, as Keras's.
- Keras's own callback objects (other than LambdaCallback) are refused before training with the
  jaxcnn callback to pass instead; Keras's empty base hooks cost no per-step sync.
- A duck-typed callback defining only some hooks runs (the others do nothing).

Keras is driven through its callbacks' own methods (no Keras model is trained), so the file runs
in seconds.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

import flax.linen as nn
import jaxcnn
from jaxcnn import layers, train
from jaxcnn.callbacks import CSVLogger, Hooks, ModelCheckpoint
from jaxcnn.errors import ConfigError


def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")  # before the first import of keras
    k = pytest.importorskip("keras")
    if k.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    return k


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.Conv2D(2, 3, activation="relu", name="conv2d")(x)
        x = layers.MaxPool2D(4, name="max_pooling2d")(x)
        x = layers.Flatten(name="flatten")(x)
        return layers.Dense(10, name="dense")(x)


@pytest.fixture(scope="module")
def mnist96():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:96]), ds.y_train[:96].astype(np.int32)


def tiny_state():
    return train.create_train_state(Tiny(), (28, 28, 1), "sgd", 0.1, seed=0)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# -- CSVLogger -----------------------------------------------------------------------------------


def test_csv_logger_append_without_validation_keeps_the_files_columns(tmp_path, mnist96):
    x, y = mnist96
    path = tmp_path / "log.csv"
    first = jaxcnn.fit(tiny_state(), x, y, epochs=2, batch_size=32, shuffle=False, verbose=0,
                       validation_data=(x[:32], y[:32]), callbacks=[CSVLogger(path)])
    jaxcnn.fit(first.state, x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=[CSVLogger(path, append=True)])
    rows = read_csv(path)
    header = rows[0]
    assert header == ["epoch", *sorted(first.history.history)]
    assert [len(r) for r in rows] == [len(header)] * 4  # one table: before the fix 9 fields then 13
    appended = dict(zip(header, rows[3]))
    assert appended["epoch"] == "0"
    assert appended["val_loss"] == appended["val_accuracy"] == "NA"  # no validation this time, as Keras writes it
    assert float(appended["loss"]) > 0 and float(appended["learning_rate"]) == pytest.approx(0.1)


def test_csv_logger_val_columns_only_for_metrics(tmp_path, mnist96):
    x, y = mnist96
    path = tmp_path / "log.csv"
    result = jaxcnn.fit(tiny_state(), x, y, epochs=1, batch_size=32, verbose=0, callbacks=[CSVLogger(path)])
    header = read_csv(path)[0]
    logged = sorted(result.history.history)
    assert "time_s" in logged and "learning_rate" in logged
    # Keras's rule (val_ copies when no val_ key is logged), for the metrics only.
    assert header == ["epoch", *logged, "val_accuracy", "val_loss"]


def test_csv_logger_appended_file_matches_keras(tmp_path):
    # Keras's own CSVLogger, fed the same logs: a run with validation, then one appending without.
    k = keras()
    runs = [[{"loss": 1.5, "accuracy": 0.25, "val_loss": 1.75, "val_accuracy": 0.5},
             {"loss": 1.25, "accuracy": 0.5, "val_loss": 1.5, "val_accuracy": 0.5}],
            [{"loss": 1.0, "accuracy": 0.75}]]
    for which, make in (("keras", k.callbacks.CSVLogger), ("ours", CSVLogger)):
        for i, logs in enumerate(runs):
            cb = make(str(tmp_path / f"{which}.csv"), append=i > 0)
            args = () if which == "keras" else (None,)
            cb.on_train_begin(*args)
            for epoch, log in enumerate(logs):
                cb.on_epoch_end(epoch, dict(log), *args)
            cb.on_train_end(*args)
    assert read_csv(tmp_path / "ours.csv") == read_csv(tmp_path / "keras.csv")
    assert read_csv(tmp_path / "ours.csv")[-1] == ["0", "0.75", "1.0", "NA", "NA"]


# -- ModelCheckpoint's {batch} -------------------------------------------------------------------


def test_model_checkpoint_batch_is_the_batch_within_the_epoch_as_keras(tmp_path, mnist96):
    x, y = mnist96  # 96 images in batches of 32: 3 steps an epoch
    k = keras()
    k_cb = k.callbacks.ModelCheckpoint(str(tmp_path / "w-{epoch}-{batch}.weights.h5"), save_weights_only=True, save_freq=2)
    keras_names = []
    for epoch in range(2):  # Keras's own decision and file name for each on_train_batch_end
        k_cb.on_epoch_begin(epoch)
        keras_names += [os.path.basename(k_cb._get_file_path(epoch, b, {})) for b in range(3) if k_cb._should_save_on_batch(b)]
    assert keras_names == ["w-1-2.weights.h5", "w-2-1.weights.h5", "w-2-3.weights.h5"]
    ours = ModelCheckpoint(tmp_path / "ours" / "w-{epoch}-{batch}.weights.h5", save_weights_only=True, save_freq=2)
    jaxcnn.fit(tiny_state(), x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, callbacks=[ours])
    assert [os.path.basename(p) for p in ours.saved] == keras_names  # before the fix: w-2-4, w-2-6
    assert sorted(os.listdir(tmp_path / "ours")) == keras_names


# -- Keras's own callback objects ----------------------------------------------------------------


def _keras_callbacks(k, tmp_path):
    return {
        "EarlyStopping": (k.callbacks.EarlyStopping(monitor="loss", restore_best_weights=True),
                          "pass jaxcnn.callbacks.EarlyStopping with the same arguments instead"),
        "ReduceLROnPlateau": (k.callbacks.ReduceLROnPlateau(monitor="loss", patience=0),
                              "pass jaxcnn.callbacks.ReduceLROnPlateau with the same arguments instead"),
        "LearningRateScheduler": (k.callbacks.LearningRateScheduler(lambda epoch, lr: lr),
                                  "pass jaxcnn.callbacks.LearningRateScheduler with the same arguments instead"),
        "ModelCheckpoint": (k.callbacks.ModelCheckpoint(str(tmp_path / "m.weights.h5"), save_weights_only=True),
                            "pass jaxcnn.callbacks.ModelCheckpoint with the same arguments instead"),
        "CSVLogger": (k.callbacks.CSVLogger(str(tmp_path / "log.csv")), "pass jaxcnn.callbacks.CSVLogger with the same arguments instead"),
        "TerminateOnNaN": (k.callbacks.TerminateOnNaN(), "pass jaxcnn.callbacks.TerminateOnNaN with the same arguments instead"),
        "TensorBoard": (k.callbacks.TensorBoard(str(tmp_path / "tb")),
                        "pass jaxcnn.callbacks.TensorBoard(log_dir, histogram_freq, update_freq) instead"),
        "BackupAndRestore": (k.callbacks.BackupAndRestore(str(tmp_path / "backup")),
                             "drop it and call fit(..., checkpoint_dir=backup_dir, resume=True) instead"),
        "RemoteMonitor": (k.callbacks.RemoteMonitor(),
                          "write a jaxcnn.callbacks.Callback that does the same (its hooks get the running loop: state, "
                          "history, learning_rate, stop_training)"),
    }


@pytest.mark.parametrize("name", ["EarlyStopping", "ReduceLROnPlateau", "LearningRateScheduler", "ModelCheckpoint", "CSVLogger",
                                  "TerminateOnNaN", "TensorBoard", "BackupAndRestore", "RemoteMonitor"])
def test_keras_callback_objects_are_refused_before_training(name, tmp_path, mnist96):
    x, y = mnist96
    cb, instead = _keras_callbacks(keras(), tmp_path)[name]
    began = []
    first = jaxcnn.callbacks.LambdaCallback(on_train_begin=lambda logs: began.append(True))
    message = f"{name} is a Keras callback, and Keras's own callbacks need a Keras model, which jaxcnn's training loop is not; {instead}"
    with pytest.raises(ConfigError) as e:
        jaxcnn.fit(tiny_state(), x, y, epochs=1, batch_size=32, verbose=0, callbacks=[first, cb])
    assert str(e.value) == message
    assert began == []  # refused before any callback ran (before: AttributeError after an epoch, or a run that went on)


def test_a_subclass_of_a_keras_callback_is_refused_as_that_callback():
    k = keras()

    class Patient(k.callbacks.EarlyStopping):
        pass

    with pytest.raises(ConfigError, match=r"^Patient \(a subclass of Keras's EarlyStopping\) is a Keras callback, .*"
                                          r"pass jaxcnn.callbacks.EarlyStopping with the same arguments instead$"):
        Hooks(Patient(monitor="loss"))


def test_keras_lambda_callback_and_own_keras_subclass_run(mnist96):
    x, y = mnist96
    k = keras()
    seen = []

    class Mine(k.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(("mine", epoch, self.model.learning_rate))

    lam = k.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(("lambda", epoch, sorted(logs)[0])))
    # Keras's base class marks its empty hooks as defaults: no batch hook, so no sync per step.
    assert Hooks(Mine()).on_train_batch_end is None and Hooks(lam).on_train_batch_end is None
    jaxcnn.fit(tiny_state(), x, y, epochs=1, batch_size=32, verbose=0, callbacks=[Mine(), lam])
    assert seen == [("mine", 0, pytest.approx(0.1)), ("lambda", 0, "accuracy")]


# -- duck-typed callbacks ------------------------------------------------------------------------


def test_duck_typed_callback_with_only_on_epoch_end_runs(mnist96):
    x, y = mnist96
    seen = []

    class OnlyEpochEnd:  # subclasses nothing
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, logs["loss"]))

    result = jaxcnn.fit(tiny_state(), x, y, epochs=2, batch_size=32, verbose=0, callbacks=[OnlyEpochEnd()])
    assert seen == [(0, result.history["loss"][0]), (1, result.history["loss"][1])]


def test_duck_typed_hook_of_neither_form_is_still_refused():
    class Odd:
        def on_train_begin(self, a, b, c):
            pass

    with pytest.raises(ConfigError, match=r"^callback Odd.on_train_begin takes \(a, b, c\); it must take \(loop\) or, "
                                          r"as in Keras, \(logs\)$"):
        Hooks(Odd())


def test_duck_typed_callback_with_checkpoints_and_resume(mnist96, tmp_path):
    # It keeps no state: fit's checkpoints store {} for it and a resumed run gives it nothing back
    # (both failed with AttributeError: get_state / set_state).
    x, y = mnist96
    seen = []

    class OnlyEpochEnd:
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    jaxcnn.fit(tiny_state(), x, y, epochs=1, batch_size=32, verbose=0, callbacks=[OnlyEpochEnd()], checkpoint_dir=tmp_path)
    jaxcnn.fit(tiny_state(), x, y, epochs=2, batch_size=32, verbose=0, callbacks=[OnlyEpochEnd()],
               checkpoint_dir=tmp_path, resume=True)
    assert seen == [0, 1]


def test_a_schedule_may_return_a_learning_rate_of_0_as_in_keras(mnist96):
    x, y = mnist96
    warm_up = jaxcnn.callbacks.LearningRateScheduler(lambda epoch: 0.05 * epoch)
    state, history = jaxcnn.fit(tiny_state(), x, y, epochs=2, batch_size=32, verbose=0, callbacks=[warm_up])
    assert history["learning_rate"] == pytest.approx([0.0, 0.05])
    with pytest.raises(ConfigError, match=r"returned -0\.1 at epoch 0; it must be a finite number >= 0"):
        jaxcnn.fit(tiny_state(), x, y, epochs=1, verbose=0, callbacks=[jaxcnn.callbacks.LearningRateScheduler(lambda e: -0.1)])


def test_keras_file_names_for_model_checkpoint_warn_what_is_written(tmp_path):
    with pytest.warns(UserWarning, match=r"ModelCheckpoint\('m\.keras'\) writes an export directory .* not Keras's \.keras format; "
                                         r"name it without the extension"):
        jaxcnn.callbacks.ModelCheckpoint("m.keras", model_name="mnist_cnn")
    with pytest.warns(UserWarning, match=r"writes a Flax msgpack file of the weights, not Keras's \.h5 format; name it \.msgpack"):
        jaxcnn.callbacks.ModelCheckpoint("m.weights.h5", save_weights_only=True)


def test_bool_labels_one_image_and_counts_read_as_keras_users_expect(mnist96):
    from jaxcnn.errors import ShapeError

    x, y = mnist96
    state, _ = jaxcnn.fit(tiny_state(), x, y % 2 == 0, epochs=1, verbose=0)  # bools are classes 0 and 1, as Keras
    with pytest.raises(ShapeError, match=r"^x has shape \(28, 28, 1\), one image; the model takes a batch \(N, 28, 28, 1\): "
                                         r"give it as a batch of one, x\[None\]$"):
        jaxcnn.predict(state, x[0])
