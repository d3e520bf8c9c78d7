"""What a Keras user writes works, or is refused in one line (defects a new user found):
Keras-style callback hooks, a schedule's own TypeError, labels as a column (N, 1), the
progress bar's last figures, logits given to a probability plot, exports of augmented and of
NNX models with constructor arguments, modules with list attributes, Keras's ``verbose`` on
evaluate and predict."""

from __future__ import annotations

import json
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn import augment, checkpoint, plots
from jaxcnn.callbacks import Callback, LambdaCallback, LearningRateScheduler
from jaxcnn.errors import CheckpointError, ConfigError, ShapeError


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class Widths(nn.Module):
    """Layer widths as a list, as a Keras user writes them: the module does not hash."""

    widths: list
    rate: float = 0.25

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for w in self.widths:
            x = nn.Dropout(self.rate, deterministic=not train)(nn.relu(nn.Dense(w)(x)))
        return nn.Dense(10)(x)


class Scaled(nn.Module):
    """An array attribute: the module neither hashes nor compares."""

    scale: np.ndarray

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1) * self.scale.mean())


class NNXAct(nnx.Module):
    """Keeps its constructor arguments as attributes, so an export can record them."""

    def __init__(self, act: str = "relu", width: int = 4, *, rngs: nnx.Rngs):
        self.act, self.width = act, width
        self.conv = nnx.Conv(1, width, (3, 3), strides=2, rngs=rngs)
        self.out = nnx.Linear(width * 14 * 14, 10, rngs=rngs)

    def __call__(self, x):
        f = nnx.relu if self.act == "relu" else nnx.tanh
        return self.out(f(self.conv(x)).reshape(x.shape[0], -1))


class NNXForgets(nnx.Module):
    """Does not keep its arguments: an optional one is warned about, a required one refused."""

    def __init__(self, width: int, scale: float = 1.0, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, width, (3, 3), strides=2, rngs=rngs)
        self.out = nnx.Linear(width * 14 * 14, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def mnist():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:192]), ds.y_train[:192].astype(np.int32)


def _fit(model, x, y, **kw):
    kw = {"epochs": 2, "batch_size": 64, "verbose": 0, "seed": 1, **kw}
    return jaxcnn.fit(model, x, y, **kw)


def test_keras_style_hooks_get_keras_arguments(mnist):
    x, y = mnist
    calls = []

    class KerasStyle(Callback):
        def on_train_begin(self, logs=None):
            calls.append(("train_begin", logs))

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(("epoch_begin", epoch, logs))

        def on_epoch_end(self, epoch, logs=None):
            calls.append(("epoch_end", epoch, dict(logs)))

        def on_train_batch_end(self, batch, logs=None):
            calls.append(("batch_end", batch, sorted(logs)))

        def on_train_end(self, logs=None):
            calls.append(("train_end", logs))

    lam = []
    _, history = _fit(Tiny(), x, y, callbacks=[KerasStyle(), LambdaCallback(on_epoch_end=lambda epoch, logs: lam.append(epoch),
                                                                            on_train_begin=lambda logs: lam.append("begin"))])
    assert lam == ["begin", 0, 1]
    assert calls[0] == ("train_begin", {}) and calls[1] == ("epoch_begin", 0, {})
    batch_ends = [c for c in calls if c[0] == "batch_end"]
    assert [c[1] for c in batch_ends] == [0, 1, 2, 0, 1, 2] and "loss" in batch_ends[0][2]  # Keras: the batch within the epoch
    epoch_ends = [c for c in calls if c[0] == "epoch_end"]
    assert [c[1] for c in epoch_ends] == [0, 1] and epoch_ends[1][2]["loss"] == history["loss"][1]
    assert calls[-1][0] == "train_end" and calls[-1][1]["loss"] == history["loss"][-1]


def test_a_hook_of_neither_form_is_refused_before_training(mnist):
    x, y = mnist

    class Wrong(Callback):
        def on_epoch_end(self):
            pass

    with pytest.raises(ConfigError, match=r"Wrong.on_epoch_end takes \(\); it must take \(epoch, logs, loop\)"):
        _fit(Tiny(), x, y, callbacks=[Wrong()])


class _Loop:
    learning_rate = 0.01

    def check_learning_rate_settable(self):
        pass


def test_schedule_errors_reach_the_user_as_they_are():
    def broken(epoch, lr):
        return lr * None

    with pytest.raises(TypeError, match="unsupported operand"):
        LearningRateScheduler(broken).on_epoch_begin(0, _Loop())
    loop = _Loop()
    LearningRateScheduler(lambda epoch: 0.5 / (epoch + 1)).on_epoch_begin(1, loop)  # Keras's older form
    assert loop.learning_rate == 0.25
    LearningRateScheduler(lambda epoch, lr: lr * 2).on_epoch_begin(0, loop)
    assert loop.learning_rate == 0.5


def test_labels_as_a_column_and_the_progress_bar_ends_on_the_epochs_figures(mnist, capsys):
    x, y = mnist
    state, history = _fit(Tiny(), x, y[:, None], verbose=1)
    err = capsys.readouterr().err
    for loss, acc in zip(history["loss"], history["accuracy"]):
        assert f"loss={loss:.4f}, accuracy={acc:.4f}" in err
    _, flat = _fit(Tiny(), x, y)
    assert flat.history["loss"] == history.history["loss"]
    assert jaxcnn.evaluate(state, x, y[:, None]) == jaxcnn.evaluate(state, x, y)


def test_sample_weight_errors_start_with_the_argument(mnist):
    x, y = mnist
    with pytest.raises(ShapeError) as e:
        _fit(Tiny(), x, y, sample_weight=np.ones(3))
    assert str(e.value).startswith("sample_weight has shape (3,)")


def test_predictions_plot_refuses_logits():
    images = np.zeros((4, 28, 28, 1), np.float32)
    logits = np.array([[3.0, -1.0], [0.2, 0.1], [5.0, 2.0], [-1.0, 1.0]])
    with pytest.raises(ShapeError, match=r"takes probabilities.*output=\"probs\""):
        plots.predictions(images, [0, 1, 0, 1], logits)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    plots.predictions(images, [0, 1, 0, 1], probs, count=4)


def test_export_of_an_augmented_model_reloads_as_the_bare_model(mnist, tmp_path):
    x, y = mnist
    state, _ = _fit(augment.Augmented(Tiny(), (augment.RandomFlip("horizontal"),)), x, y, epochs=1)
    checkpoint.export(tmp_path, state)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["module"] == "test_keras_habits:Tiny"
    reloaded = checkpoint.load_state(tmp_path)
    np.testing.assert_allclose(jaxcnn.predict(reloaded, x[:8]), jaxcnn.predict(state, x[:8]), rtol=1e-5, atol=1e-6)


def test_augmented_refuses_an_nnx_module():
    with pytest.raises(ConfigError, match="Augmented takes a Flax linen module, got NNXAct"):
        augment.Augmented(NNXAct(rngs=nnx.Rngs(0)), (augment.RandomFlip("horizontal"),))


def test_nnx_export_records_the_constructor_arguments_it_keeps(mnist, tmp_path):
    x, y = mnist
    state, _ = _fit(NNXAct("tanh", width=3, rngs=nnx.Rngs(0)), x, y, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.export(tmp_path / "act", state)
    assert json.loads((tmp_path / "act" / "model.json").read_text())["module_kwargs"] == {"act": "tanh", "width": 3}
    reloaded = checkpoint.load_state(tmp_path / "act")
    np.testing.assert_allclose(jaxcnn.predict(reloaded, x[:16]), jaxcnn.predict(state, x[:16]), rtol=1e-5, atol=1e-6)

    forgets, _ = _fit(NNXForgets(2, scale=3.0, rngs=nnx.Rngs(0)), x, y, epochs=1)
    with pytest.warns(UserWarning, match=r"NNXForgets.__init__ takes scale, which the module does not keep"):
        checkpoint.export(tmp_path / "forgets", forgets)
    with pytest.raises(CheckpointError, match="cannot rebuild the module: its attribute width"):
        checkpoint.load_state(tmp_path / "forgets")
    reloaded = checkpoint.load_state(tmp_path / "forgets", model=NNXForgets(2, rngs=nnx.Rngs(1)))
    np.testing.assert_allclose(jaxcnn.predict(reloaded, x[:16]), jaxcnn.predict(forgets, x[:16]), rtol=1e-5, atol=1e-6)


def test_modules_with_list_or_array_attributes_train_reuse_and_export(mnist, tmp_path):
    x, y = mnist
    state, history = _fit(Widths([16, 8]), x, y, validation_data=(x[:64], y[:64]))
    n = jaxcnn.train.compile_count()
    again, history2 = _fit(Widths([16, 8]), x, y, validation_data=(x[:64], y[:64]))
    assert history2.history["loss"] == history.history["loss"]
    assert jaxcnn.train.compile_count() == n  # an equal module reuses the programs
    checkpoint.export(tmp_path / "w", state)
    assert json.loads((tmp_path / "w" / "model.json").read_text())["module_kwargs"]["widths"] == [16, 8]
    reloaded = checkpoint.load_state(tmp_path / "w")
    np.testing.assert_allclose(jaxcnn.predict(reloaded, x[:16]), jaxcnn.predict(state, x[:16]), rtol=1e-5, atol=1e-6)
    other, _ = _fit(Widths([16, 9]), x, y, epochs=1)
    assert other.params["Dense_1"]["kernel"].shape == (16, 9)
    scaled, h = _fit(Scaled(np.full(3, 0.5, np.float32)), x, y, epochs=1)
    assert np.isfinite(h.history["loss"][0])
    with pytest.raises(ConfigError, match="export takes the directory first"):
        checkpoint.export(state, str(tmp_path / "x"))


def test_evaluate_and_predict_take_keras_verbose(mnist, capsys):
    x, y = mnist
    state, _ = _fit(Tiny(), x, y, epochs=1)
    quiet = jaxcnn.evaluate(state, x, y, verbose=0)
    assert capsys.readouterr().out == ""
    loud = jaxcnn.evaluate(state, x, y, verbose="auto")
    out = capsys.readouterr().out
    assert loud == quiet and out.startswith("192 examples in ") and f"loss: {quiet['loss']:.4f}" in out
    assert jaxcnn.predict(state, x, verbose=1).shape == (192, 10)
    assert capsys.readouterr().out.startswith("192 examples predicted in ")
    with pytest.raises(ConfigError, match="verbose must be 0, 1, 2 or 'auto', got 3"):
        jaxcnn.evaluate(state, x, y, verbose=3)


def test_fit_takes_keras_verbose_and_epochs_zero_builds_the_state(mnist, capsys):
    x, y = mnist
    built, history = _fit(Tiny(), x, y, epochs=0, verbose="auto")
    assert int(built.step) == 0 and len(history) == 0 and capsys.readouterr().out == ""  # Keras: nothing trained
    state, _ = _fit(built, x, y, epochs=1, verbose="auto")
    out = capsys.readouterr().out
    assert int(state.step) == 3 and "Training on 192 examples" in out and "Epoch 1/1" in out
    assert int(built.step) == 0  # the built state stays the caller's
    with pytest.raises(ConfigError, match="verbose must be 0, 1, 2 or 'auto', got 'loud'"):
        _fit(Tiny(), x, y, verbose="loud")
    with pytest.raises(ConfigError, match="initial_epoch must be an integer of at least 0, got -1"):
        _fit(Tiny(), x, y, initial_epoch=-1)


class OneSigmoid(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.sigmoid(nn.Dense(1)(x.reshape(x.shape[0], -1)))


def test_a_single_output_binary_model_is_refused_with_what_to_do(mnist):
    x, y = mnist
    for loss in (None, "binary_crossentropy"):
        with pytest.raises(ShapeError, match=r"^OneSigmoid has a single output; .* end the model with Dense\(2\)"):
            _fit(OneSigmoid(), x, (y > 4).astype(np.int32), loss=loss)


class SoftTiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.softmax(nn.Dense(10)(x.reshape(x.shape[0], -1)))


class Pair(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(h), h


def scaled_nll(outputs, labels):
    """A loss of one's own, on probabilities: per example (B,)."""
    return -3.0 * jnp.log(jnp.take_along_axis(outputs, labels[:, None], axis=-1)[:, 0] + 1e-7)


def test_own_loss_functions_are_checked_before_compiling_and_kept(mnist, tmp_path):
    x, y = mnist
    with pytest.raises(ConfigError, match=r"returned shape \(\) for a batch of 2; it must return one value per example"):
        _fit(Tiny(), x, y, loss=lambda o, l: scaled_nll(jax.nn.softmax(o), l).mean())
    def keras_order(truth, pred):  # Keras's order under other names: refused by the shapes (by the names: test_probe21_fixes)
        return -jnp.sum(jax.nn.log_softmax(pred) * jax.nn.one_hot(truth, 10), -1) * jnp.exp(truth)
    with pytest.raises(ConfigError, match=r"jaxcnn calls a loss as loss\(outputs, labels\); it looks Keras-style.*keras_order\(labels, outputs\)"):
        _fit(Tiny(), x, y, loss=keras_order)
    with pytest.raises(ConfigError, match="label_smoothing applies to jaxcnn's cross-entropy losses"):
        _fit(Tiny(), x, y, loss=scaled_nll, label_smoothing=0.1)
    # a softmax model with its own loss: its outputs are taken as probabilities, never softmaxed again
    state, _ = _fit(SoftTiny(), x, y, loss=scaled_nll, epochs=1)
    np.testing.assert_allclose(jaxcnn.predict(state, x[:8], output="probs"), jaxcnn.predict(state, x[:8]), rtol=1e-6)
    checkpoint.export(tmp_path / "m", state)
    with pytest.warns(UserWarning, match=r"trained with the loss 'scaled_nll', a function an export cannot rebuild.*loss=scaled_nll"):
        plain = checkpoint.load_state(tmp_path / "m")
    assert plain.outputs_are_probs  # what the export recorded of the outputs is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = checkpoint.load_state(tmp_path / "m", loss=scaled_nll)
    assert jaxcnn.evaluate(kept, x, y)["loss"] == pytest.approx(jaxcnn.evaluate(state, x, y)["loss"], rel=1e-6)


def test_keras_batch_and_test_hooks_and_self_model(mnist):
    x, y = mnist
    calls = []

    class Keras(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            calls.append(("begin", batch))

        def on_batch_end(self, batch, logs=None):  # Keras's alias of on_train_batch_end
            calls.append(("end", batch))

        def on_test_begin(self, logs=None):
            calls.append(("test_begin", dict(logs)))

        def on_test_end(self, logs=None):
            calls.append(("test_end", dict(logs)))

        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True  # Keras's idiom

    _, history = _fit(Tiny(), x, y, epochs=3, validation_data=(x[:64], y[:64]), callbacks=[Keras()])
    assert history.epoch == [0]  # stopped by self.model.stop_training
    assert [c for c in calls if c[0] in ("begin", "end")] == [("begin", 0), ("end", 0), ("begin", 1), ("end", 1), ("begin", 2), ("end", 2)]
    assert calls[-2] == ("test_begin", {})
    assert calls[-1][0] == "test_end" and calls[-1][1]["loss"] == history["val_loss"][0]
    assert calls[-1][1]["accuracy"] == history["val_accuracy"][0]
    assert "val_loss" in history and "nothing" not in history
    seen, steps = [], []
    _fit(Tiny(), x, y, epochs=2, callbacks=[LambdaCallback(on_train_batch_begin=lambda batch, logs: seen.append(batch),
                                                           on_train_batch_end=lambda step, logs, loop: steps.append(step))])
    assert seen == [0, 1, 2, 0, 1, 2]  # Keras's form: the batch within the epoch
    assert steps == [0, 1, 2, 3, 4, 5]  # jaxcnn's form (with the loop): the global step


def test_outputs_of_the_wrong_kind_bfloat16_images_and_summary_of_a_state(mnist):
    x, y = mnist
    with pytest.raises(ShapeError, match=r"^Pair returns a tuple \(2 items\); jaxcnn trains a model that returns one array"):
        _fit(Pair(), x, y)
    state, history = _fit(Tiny(), x.astype(jnp.bfloat16), y, epochs=1)
    assert np.isfinite(history["loss"][0])
    text = jaxcnn.summary(state)  # Keras's model.summary() after fit
    assert text == jaxcnn.summary(Tiny(), (28, 28, 1))
    with pytest.raises(ConfigError, match="summary needs input_shape"):
        jaxcnn.summary(Tiny())


def test_labelled_images_refuses_probabilities_or_bad_indices_in_one_line():
    x, y = np.random.default_rng(0).random((5, 8, 8, 1)), np.arange(5)
    for bad in (np.full((5, 10), 0.1), [0, 7], []):
        with pytest.raises(ConfigError, match=r"^indices must be whole numbers in 0\.\.4, the images to draw"):
            plots.labelled_images(x, y, bad)
    assert len([ax for ax in plots.labelled_images(x, y, range(3)).axes if ax.images]) == 3


def my_hits(y_true, y_pred):
    return (jnp.argmax(y_pred, -1) == y_true).astype(jnp.float32)


def test_an_export_keeps_fits_metrics_and_says_which_it_cannot(mnist, tmp_path):
    from jaxcnn import metrics

    x, y = mnist
    state, _ = _fit(Tiny(), x, y, epochs=1, metrics=["f1", metrics.TopKAccuracy(3), my_hits])
    checkpoint.export(tmp_path / "m", state)
    with pytest.warns(UserWarning, match=r"trained with the metrics my_hits, which an export cannot rebuild"):
        reloaded = checkpoint.load_state(tmp_path / "m")
    assert reloaded.metrics == (metrics.F1Score(name="f1"), metrics.TopKAccuracy(3))
    want = jaxcnn.evaluate(state, x, y)
    got = jaxcnn.evaluate(reloaded, x, y)
    assert set(want) - set(got) == {"my_hits"}
    assert got["top_3_accuracy"] == want["top_3_accuracy"] and got["f1"] == pytest.approx(want["f1"])


def test_an_export_whose_optimizer_cannot_be_recorded_says_so_on_reload(mnist, tmp_path):
    """An optax optimizer (or a rate schedule) cannot be written to model.json: load_state says
    the reloaded state trains on with RMSprop, and how to keep one's own; a named one reloads."""
    import optax

    x, y = mnist
    for name, kw in (("optax", {"optimizer": optax.sgd(0.5, momentum=0.9)}),
                     ("schedule", {"optimizer": "adam", "learning_rate": optax.cosine_decay_schedule(1e-3, 10)})):
        state, _ = _fit(Tiny(), x, y, epochs=1, **kw)
        checkpoint.export(tmp_path / name, state)
        assert json.loads((tmp_path / name / "model.json").read_text())["optimizer"] is None
        with pytest.warns(UserWarning, match=r"was trained with an optimizer its model\.json cannot record .* trains on with "
                          r"RMSprop at 0\.001 .* load_state\(\.\.\., optimizer=\.\.\.\)$"):
            checkpoint.load_state(tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            checkpoint.load_state(tmp_path / name, optimizer=kw["optimizer"])  # given: nothing to say
    state, _ = _fit(Tiny(), x, y, epochs=1, optimizer="adam", learning_rate=0.002)
    checkpoint.export(tmp_path / "named", state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint.load_state(tmp_path / "named").optimizer_spec == state.optimizer_spec


def test_an_optimizer_built_by_get_optimizer_is_recorded_whole(mnist, tmp_path):
    """Keras's compile(optimizer=AdamW(weight_decay=...)): jaxcnn.optim.get_optimizer's
    transformation given to fit is recorded with its arguments, and load_state rebuilds the same
    one (it reuses the same transformation object, so it trains on as before); a chain around it
    is not recorded."""
    import optax

    from jaxcnn import optim

    x, y = mnist
    tx = optim.get_optimizer("AdamW", 0.002, weight_decay=0.01, clipnorm=1.0)
    state, _ = _fit(Tiny(), x, y, epochs=1, optimizer=tx)
    checkpoint.export(tmp_path / "adamw", state)
    assert json.loads((tmp_path / "adamw" / "model.json").read_text())["optimizer"] == {
        "name": "adamw", "learning_rate": 0.002, "kwargs": {"weight_decay": 0.01, "clipnorm": 1.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reloaded = checkpoint.load_state(tmp_path / "adamw")
    assert reloaded.tx is tx and reloaded.optimizer_spec == state.optimizer_spec
    assert optim.spec_of(optax.chain(optax.clip(1.0), tx)) is None
    assert optim.spec_of(optim.get_optimizer("adam", optim.exponential_decay(1e-3, 10, 0.9))) is None
    assert json.loads(optim.spec_of(optim.get_optimizer("sgd"))) == {"name": "sgd", "learning_rate": None}


# -- a Keras tutorial ported (session 19) --------------------------------------------------------


def test_summary_takes_keras_shapes_with_a_batch_axis_and_refuses_others_in_one_line():
    """Given x.shape, the summary used to trace a 5-D input and print 31 million parameters;
    (None, 28, 28, 1) failed inside JAX and (28, 28) with ZeroDivisionError."""
    text = jaxcnn.summary(Tiny(), (28, 28, 1))
    assert jaxcnn.summary(Tiny(), (None, 28, 28, 1)) == text == jaxcnn.summary(Tiny(), np.zeros((2000, 28, 28, 1)).shape)
    with pytest.raises(ConfigError, match=r"^input_shape must be the shape of one input, e\.g\. \(28, 28, 1\), got \(28, 28, 0\)$"):
        jaxcnn.summary(Tiny(), (28, 28, 0))
    # Not only images: an MLP's flat input, as before.
    assert "Dense" in jaxcnn.summary(Pretrained(), (784,))


def test_a_callback_written_for_keras_reads_params_and_the_optimizers_rate(mnist):
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    x, y = mnist
    seen = []

    class Progress(keras.callbacks.Callback):  # Keras's own base class, as a tutorial writes it
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch + 1, self.params["epochs"], self.params["steps"], float(self.model.optimizer.learning_rate)))
            self.model.optimizer.learning_rate = 0.5 * float(self.model.optimizer.learning_rate)

    _, history = _fit(Tiny(), x, y, epochs=2, optimizer="sgd", learning_rate=0.1, callbacks=[Progress()])
    assert [s[:3] for s in seen] == [(1, 2, 3), (2, 2, 3)]
    assert [s[3] for s in seen] == pytest.approx([0.1, 0.05])
    assert history["learning_rate"] == pytest.approx([0.1, 0.05])  # the rate each epoch trained with
    # A callback that keeps a params of its own (in JAX code, often weights) keeps it.

    class Snapshot(Callback):
        def __init__(self):
            self.params = []

        def on_epoch_end(self, epoch, logs, loop):
            self.params.append(loop.state.params)

    snap = Snapshot()
    _fit(Tiny(), x, y, epochs=2, callbacks=[snap])
    assert isinstance(snap.params, list) and len(snap.params) == 2
    # A second fit with the same Keras callback gets that fit's params.
    progress = Progress()
    _fit(Tiny(), x, y, epochs=1, callbacks=[progress])
    _fit(Tiny(), x, y, epochs=3, callbacks=[progress])
    assert progress.params["epochs"] == 3


class FieldMode(nn.Module):
    """The mode as a field (CNN(train=True)), a common Flax pattern jaxcnn cannot switch."""

    train: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        x = nn.Dropout(0.5, deterministic=not self.train)(x.reshape(x.shape[0], -1))
        return nn.Dense(10)(x)


class Pretrained(nn.Module):
    """Boolean fields that are not modes (a regression probe: "pretrained" matched "train")."""

    pretrained: bool = False
    test_time_augment: bool = False

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_a_mode_kept_as_a_field_warns_that_it_stays_fixed(mnist):
    x, y = mnist
    with pytest.warns(UserWarning, match=r"^FieldMode\.train is a field, fixed when the module is built, .* keep train=False in both\. "
                                         r"Take the mode as a __call__ argument instead"):
        _fit(FieldMode(), x, y, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a module with a train argument, or boolean fields that are no mode: no warning
        _fit(Tiny(), x, y, epochs=1)
        _fit(Pretrained(), x, y, epochs=1)


class SigmoidOut(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.sigmoid(nn.Dense(10)(x.reshape(x.shape[0], -1)))


def test_sigmoid_outputs_train_as_keras_with_from_logits_false(mnist):
    """Keras's categorical cross-entropy (from_logits=False) divides non-negative outputs by their
    sums; jaxcnn refused that. By default (the README's rule) they are logits, without a warning:
    logits can also start out between 0 and 1 (a regression probe's uniform(0.01) kernel)."""
    x, y = mnist
    onehot = np.eye(10, dtype=np.float32)[y]
    state, _ = _fit(SigmoidOut(), x, onehot, epochs=1, loss="categorical_crossentropy")
    assert state.loss.from_logits is True
    state, history = _fit(SigmoidOut(), x, onehot, epochs=1, loss="categorical_crossentropy", from_logits=False)
    assert state.loss.from_logits is False and np.isfinite(history["loss"][0])
    # The loss is Keras's: the outputs over their row sums, clipped, then the cross-entropy.
    out = np.asarray(jaxcnn.predict(state, x[:64]), np.float64)
    p = np.clip(out / out.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)
    expected = -np.mean(np.log(p[np.arange(64), y[:64]]))
    assert jaxcnn.evaluate(state, x[:64], y[:64])["loss"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ConfigError, match=r"outputs are logits \(not probabilities\) but the loss has from_logits=False"):
        _fit(Tiny(), x, onehot, epochs=1, loss="categorical_crossentropy", from_logits=False)  # negative outputs


def test_what_fit_returned_is_taken_where_the_state_or_history_is_and_a_module_is_refused(mnist, tmp_path):
    x, y = mnist
    result = _fit(Tiny(), x, y, epochs=1)
    assert jaxcnn.evaluate(result, x, y) == jaxcnn.evaluate(result.state, x, y)
    np.testing.assert_array_equal(jaxcnn.predict(result, x[:4]), jaxcnn.predict(result.state, x[:4]))
    checkpoint.export(tmp_path / "m", result)
    assert checkpoint.load_state(tmp_path / "m").num_classes == 10
    for call, what in ((lambda: jaxcnn.evaluate(Tiny(), x, y), "evaluate"), (lambda: jaxcnn.predict(Tiny(), x), "predict"),
                       (lambda: checkpoint.export(tmp_path / "n", Tiny()), "export")):
        with pytest.raises(ConfigError, match=rf"^{what} takes the trained state that fit returns, not a module, which holds no weights: "
                                              r"state, history = jaxcnn\.fit\(model, x, y, \.\.\.\)"):
            call()
    assert not (tmp_path / "n").exists()
    # plots.training_curves takes fit's result, and Keras 2's acc / val_acc names.
    two = plots.training_curves(result).axes[1].get_lines()
    assert [tuple(line.get_ydata()) for line in two[:1]] == [tuple(result.history["accuracy"])]
    keras2 = plots.training_curves({"loss": [1.0, 0.5], "acc": [0.5, 0.7], "val_loss": [1.1, 0.9], "val_acc": [0.4, 0.6]})
    assert [line.get_label() for line in keras2.axes[1].get_lines()][:2] == ["training accuracy", "validation accuracy"]
