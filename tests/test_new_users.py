"""Defects two new users found (a Keras user and a researcher with their own models), each
refused in one line or made to behave as Keras does."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn.errors import ShapeError


@pytest.fixture(scope="module")
def mnist():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:128]), ds.y_train[:128].astype(np.int32)


class BatchMean(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1)).mean(0, keepdims=True)


class NNXBatchSum(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.out = nnx.Linear(784, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(x.reshape(x.shape[0], -1)).sum(0, keepdims=True)


class ForCifar(nn.Module):
    """A weight sized for 32x32x3 images, given MNIST."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (3072, 10))
        return x.reshape(x.shape[0], -1) @ w


class OtherFlag(nn.Module):
    @nn.compact
    def __call__(self, x, is_training: bool = False):
        x = nn.Dropout(0.5, deterministic=not is_training)(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_outputs_that_mix_the_batch_are_refused_before_training(mnist):
    x, y = mnist
    for model in (BatchMean(), NNXBatchSum(nnx.Rngs(0))):
        name = type(model).__name__
        with pytest.raises(ShapeError, match=rf"^{name} returns outputs of shape \(1, 10\) for images of shape \(8, 28, 28, 1\); "
                                             r"a classifier must return one row per image"):
            jaxcnn.fit(model, x, y, verbose=0)


def test_a_model_built_for_other_images_is_one_line_in_fit_and_summary(mnist):
    x, y = mnist
    expected = (r"^ForCifar cannot be applied to images of shape \(28, 28, 1\) \(a batch of {}\): dot_general requires contracting "
                r"dimensions to have the same shape, got \(784,\) and \(3072,\)\. Is it built for other images")
    with pytest.raises(ShapeError, match=expected.format(8)) as e:
        jaxcnn.fit(ForCifar(), x, y, verbose=0)
    assert isinstance(e.value.__cause__, TypeError)  # the model's own error stays reachable
    with pytest.raises(ShapeError, match=expected.format(1)):
        jaxcnn.summary(ForCifar(), (28, 28, 1))


def test_a_mode_flag_of_another_name_is_warned_about_once_at_the_users_line(mnist):
    x, y = mnist
    with pytest.warns(UserWarning, match=r"OtherFlag.__call__ takes 'is_training', which jaxcnn never sets.*"
                                         r"Name the mode flag train, training or deterministic") as record:
        jaxcnn.fit(OtherFlag(), x, y, verbose=0)
    flagged = [w for w in record if "is_training" in str(w.message)]
    assert len(flagged) == 1 and flagged[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxcnn.fit(OtherFlag(), x, y, verbose=0)  # once per class


class Small(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_class_weight_weighs_training_only_as_keras(mnist):
    x, y = mnist
    state, history = jaxcnn.fit(Small(), x, y, class_weight={0: 100.0}, validation_split=0.25, epochs=2, verbose=0)
    held = jaxcnn.evaluate(state, x[96:], y[96:])  # the held-out quarter, unweighted
    assert history["val_loss"][-1] == pytest.approx(held["loss"], rel=1e-5)
    assert history["val_accuracy"][-1] == pytest.approx(held["accuracy"])


def test_a_batch_hook_stopping_training_ends_the_epoch_after_that_batch(mnist):
    x, y = mnist

    class Stop(jaxcnn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # Keras's form
            if batch == 1:
                self.model.stop_training = True

    state, history = jaxcnn.fit(Small(), x, y, batch_size=16, epochs=3, callbacks=Stop(), verbose=0)  # one callback, no list
    assert int(state.step) == 2 and len(history) == 1
    assert len(jaxcnn.fit(Small(), x, y, epochs=1, callbacks=None, verbose=0).history) == 1  # Keras's default


def test_fit_in_a_loop_shuffles_anew_each_call_and_initial_epoch_keeps_the_order(mnist, monkeypatch):
    from jaxcnn.train import loop

    x, y = mnist
    seen = []
    real = loop.epoch_order
    monkeypatch.setattr(loop, "epoch_order", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    state = jaxcnn.fit(Small(), x, y, epochs=1, verbose=0).state
    for _ in range(2):
        state = jaxcnn.fit(state, x, y, epochs=1, verbose=0).state
    assert len({tuple(o) for o in seen}) == 3  # Keras: a new order each call
    jaxcnn.fit(Small(), x, y, epochs=2, verbose=0)
    first = jaxcnn.fit(Small(), x, y, epochs=1, verbose=0).state
    jaxcnn.fit(first, x, y, epochs=2, initial_epoch=1, verbose=0)  # continuing by epoch: the uninterrupted order
    np.testing.assert_array_equal(seen[-1], seen[-3])


def test_history_keeps_keys_callbacks_add_and_validation_freq_leaves_nan(mnist, capsys):
    import optax

    x, y = mnist

    class Gap(jaxcnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if "val_loss" in logs:
                logs["gap"] = logs["val_loss"] - logs["loss"]

    _, history = jaxcnn.fit(Small(), x, y, validation_split=0.25, epochs=4, validation_freq=2, validation_batch_size=8,
                            callbacks=[Gap()], verbose=0)
    assert np.isnan(history["val_loss"][0]) and np.isnan(history["val_loss"][2]) and not np.isnan(history["val_loss"][3])
    assert np.isnan(history["gap"][0]) and history["gap"][1] == pytest.approx(history["val_loss"][1] - history["loss"][1])
    assert len(history["gap"]) == len(history["loss"]) == 4 and history.best_epoch("val_loss") in (1, 3)
    _, adam = jaxcnn.fit(Small(), x, y, optimizer=optax.adam(1e-3), epochs=1, verbose=2)
    assert "learning_rate" not in adam and " - lr: " not in capsys.readouterr().out  # not known: not logged as NaN


def test_keras_style_inputs_get_one_line_each(mnist):
    from jaxcnn.errors import ConfigError

    x, y = mnist
    with pytest.raises(ConfigError, match=r"^y is missing: fit\(model, x, y\) needs the labels"):
        jaxcnn.fit(Small(), x, None, verbose=0)
    with pytest.raises(ConfigError, match=r"^x is a tuple of 2 arrays; give the images and the labels apart"):
        jaxcnn.fit(Small(), (x, y), None, verbose=0)
    with pytest.raises(ConfigError, match=r"^x is a generator; fit\(model, x, y\) takes arrays"):
        jaxcnn.fit(Small(), (b for b in x), y, verbose=0)
    state, _ = jaxcnn.fit(Small(), x, y, epochs=1, verbose=0)
    with pytest.raises(ConfigError, match=r"^x is a list_iterator; predict\(state, x\) takes arrays"):
        jaxcnn.predict(state, iter([x]))
    # A list of (x, y) batches, and a Keras PyDataset: "y is missing" and "a ragged list" before.
    with pytest.raises(ConfigError, match=r"^x is a list of \(x, y\) batches; fit\(model, x, y\) takes arrays .* not generators or data set objects"):
        jaxcnn.fit(Small(), [(x[:32], y[:32]), (x[32:64], y[32:64])], verbose=0)
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[32 * i: 32 * (i + 1)], y[32 * i: 32 * (i + 1)]

    for call in (lambda: jaxcnn.fit(Small(), Batches(), verbose=0), lambda: jaxcnn.predict(state, Batches())):
        with pytest.raises(ConfigError, match=r"^x is a Batches; .* takes arrays .* not generators or data set objects"):
            call()
    values = jaxcnn.evaluate(state, x, y, return_dict=False)  # Keras's list, loss first
    assert values == list(jaxcnn.evaluate(state, x, y).values())
    with pytest.raises(ConfigError, match="validation_freq must be a positive integer, got 0"):
        jaxcnn.fit(Small(), x, y, validation_split=0.2, validation_freq=0, verbose=0)


class OwnError(nn.Module):
    activation: str = "tanhh"

    @nn.compact
    def __call__(self, x):
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"unknown activation {self.activation!r}")
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class TracerIf(nn.Module):
    @nn.compact
    def __call__(self, x):
        if x.mean() > 0.5:  # a Python if on a traced value
            x = x * 2
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class Features(nn.Module):
    @nn.compact
    def __call__(self, x, return_features: bool = False):  # a bool argument that is not a mode flag
        h = nn.Dense(16)(x.reshape(x.shape[0], -1))
        return h if return_features else nn.Dense(10)(h)


def test_the_models_own_errors_and_jax_tracer_errors_pass_unchanged(mnist):
    import jax

    x, y = mnist
    with pytest.raises(ValueError, match=r"^unknown activation 'tanhh'"):
        jaxcnn.fit(OwnError(), x, y, verbose=0)
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jaxcnn.fit(TracerIf(), x, y, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxcnn.fit(Features(), x, y, epochs=1, verbose=0)  # no mode-flag warning


def test_array_likes_pass_and_late_keys_that_are_not_numbers_are_left_out(mnist):
    x, y = mnist

    class TensorLike:  # what a tf.Tensor looks like to fit: its module, and __array__
        __module__ = "tensorflow.python.framework.ops"

        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    class Note(jaxcnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["note"] = None  # Keras's History would keep it; jaxcnn's history holds numbers

    state, history = jaxcnn.fit(Small(), TensorLike(x), y, epochs=1, callbacks=[Note()], verbose=0)
    assert "note" not in history and jaxcnn.predict(state, TensorLike(x[:4])).shape == (4, 10)


def test_a_plot_of_an_empty_history_says_why():
    from jaxcnn import plots
    from jaxcnn.errors import ConfigError

    _, history = jaxcnn.fit(Small(), np.zeros((4, 28, 28, 1), np.float32), np.arange(4), epochs=0, verbose=0)
    with pytest.raises(ConfigError, match="the history holds no epoch"):
        plots.training_curves(history)


# -- a researcher's own models and set-up (found by a new user, 2026-12-04) ----------------------


class SoftmaxOut(nn.Module):
    dtype: object = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), dtype=self.dtype)(x)).reshape(x.shape[0], -1)
        return nn.softmax(nn.Dense(10, dtype=self.dtype)(x))


def test_a_bfloat16_softmax_output_is_taken_as_probabilities(mnist):
    # Its rows sum to 1 only within bfloat16's rounding (about 4e-3): they were taken for logits
    # and softmaxed again, by the loss and by predict(output="probs").
    x, y = mnist
    state, _ = jaxcnn.fit(SoftmaxOut(jnp.bfloat16), x, y, epochs=0, verbose=0)
    assert state.outputs_are_probs
    raw = jaxcnn.predict(state, x[:8])
    probs = jaxcnn.predict(state, x[:8], output="probs")  # not softmaxed again: divided by the sums, as the loss does
    np.testing.assert_allclose(probs, raw / raw.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, raw, atol=5e-3)
    from jaxcnn import losses

    assert not losses.looks_like_probabilities(np.full((2, 10), 0.1006, np.float32))  # float32: within 1e-3 only
    assert losses.looks_like_probabilities(np.full((2, 10), 0.1006, jnp.bfloat16))  # rows off by 6e-3


def test_a_softmax_state_from_create_train_state_predicts_and_evaluates_as_fit_would(mnist):
    from jaxcnn import train

    x, y = mnist
    built = train.create_train_state(SoftmaxOut(), (28, 28, 1))  # decides from_logits as fit does
    fitted, _ = jaxcnn.fit(SoftmaxOut(), x, y, epochs=0, verbose=0)
    np.testing.assert_array_equal(jaxcnn.predict(built, x[:8], output="probs"), jaxcnn.predict(built, x[:8]))
    assert jaxcnn.evaluate(built, x, y) == pytest.approx(jaxcnn.evaluate(fitted, x, y), rel=1e-6)
    # a loss function of one's own too: its from_logits only tells predict whether to softmax
    def nll(probs, labels):
        return -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0])

    own = train.create_train_state(SoftmaxOut(), (28, 28, 1), loss=nll)
    assert own.outputs_are_probs and not train.create_train_state(Small(), (28, 28, 1), loss=nll).outputs_are_probs
    np.testing.assert_array_equal(jaxcnn.predict(own, x[:8], output="probs"), jaxcnn.predict(own, x[:8]))


def test_class_and_sample_weights_together_and_a_binary_loss_are_refused_with_what_to_do(mnist):
    from jaxcnn.errors import ConfigError

    x, y = mnist
    with pytest.raises(ConfigError, match=r"^class_weight and sample_weight cannot both be given \(as in Keras\); fold"):
        jaxcnn.fit(Small(), x, y, class_weight={0: 2.0}, sample_weight=np.ones(len(x)), verbose=0)
    with pytest.raises(ConfigError, match=r"^loss 'binary_crossentropy': .*end the model with Dense\(2\)"):
        jaxcnn.fit(Small(), x, y, loss="binary_crossentropy", verbose=0)


class NNXFlagged(nnx.Module):
    """BatchNorm and Dropout driven by __call__'s own train flag (the NNX habit of passing it on)."""

    def __init__(self, rate: float = 0.5, *, rngs: nnx.Rngs):
        self.bn = nnx.BatchNorm(784, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.out = nnx.Linear(784, 10, rngs=rngs)

    def __call__(self, x, train: bool = False):
        h = self.bn(x.reshape(x.shape[0], -1), use_running_average=not train)
        return self.out(self.drop(h, deterministic=not train))


class NNXDeterministic(nnx.Module):
    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.out = nnx.Linear(784, 10, rngs=rngs)

    def __call__(self, x, deterministic: bool = True):
        return self.out(self.drop(x.reshape(x.shape[0], -1), deterministic=deterministic))


def test_an_nnx_modules_own_mode_flag_is_set_as_for_linen(mnist):
    # jaxcnn called NNX modules as module(x): a train flag kept its default, so BatchNorm never
    # updated its statistics and Dropout never dropped, silently.
    x, y = mnist
    state, _ = jaxcnn.fit(NNXFlagged(rngs=nnx.Rngs(0)), x, y, epochs=1, batch_size=32, verbose=0, devices=None)
    assert float(np.abs(np.asarray(state.batch_stats["bn"]["mean"])).max()) > 0
    summary = jaxcnn.summary(NNXFlagged(rngs=nnx.Rngs(0)), (28, 28, 1))
    assert "7,850" in str(summary)
    _, dropped = jaxcnn.fit(NNXDeterministic(0.9, rngs=nnx.Rngs(0)), x, y, epochs=1, batch_size=32, verbose=0, devices=None)
    _, kept = jaxcnn.fit(NNXDeterministic(0.0, rngs=nnx.Rngs(0)), x, y, epochs=1, batch_size=32, verbose=0, devices=None)
    assert dropped.history["loss"] != kept.history["loss"]  # equal to the last bit before: no dropout at all


def test_an_nnx_variable_the_step_does_not_carry_warns(mnist):
    class Count(nnx.Variable):
        pass

    class Counting(nnx.Module):
        def __init__(self, *, rngs: nnx.Rngs):
            self.out = nnx.Linear(784, 10, rngs=rngs)
            self.n = Count(np.zeros((), np.float32))

        def __call__(self, x):
            return self.out(x.reshape(x.shape[0], -1))

    x, y = mnist
    with pytest.warns(UserWarning, match=r"^Counting\.n is a Count variable, which jaxcnn's training step does not carry .* "
                                         r"Make it an nnx\.BatchStat"):
        jaxcnn.fit(Counting(rngs=nnx.Rngs(0)), x, y, epochs=1, verbose=0)


# -- a PyTorch researcher's habits (session 18) -------------------------------------------------


class _Flat(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_numpy_and_none_batch_sizes_and_labels_inside_x(mnist, tmp_path):
    x, y = mnist
    # A NumPy integer reached the checkpoint's JSON and failed after the first epoch had trained.
    r = jaxcnn.fit(_Flat(), x, y, epochs=1, batch_size=np.int64(64), verbose=0, checkpoint_dir=tmp_path / "ck")
    assert type(r.history.params["batch_size"]) is int and (tmp_path / "ck" / "1").is_dir()
    # None is Keras's default batch, 32 (fit), and the default for evaluate and predict.
    again = jaxcnn.fit(_Flat(), x, y, epochs=1, batch_size=None, verbose=0)
    assert again.history.params["batch_size"] == 32
    assert set(jaxcnn.evaluate(again.state, x, y, batch_size=None)) == {"loss", "accuracy"}
    assert jaxcnn.predict(again.state, x[:3], batch_size=None).shape == (3, 10)
    # (x, y) as x: the promised message, not Python's "missing 1 required positional argument: 'y'".
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"x is a tuple of 2 arrays; give the images and the labels apart"):
        jaxcnn.fit(_Flat(), (x, y), epochs=1)


def test_a_state_refuses_an_optimizer_or_rate_it_would_ignore(mnist):
    x, y = mnist
    state = jaxcnn.fit(_Flat(), x, y, epochs=1, verbose=0).state
    for kw in ({"learning_rate": 1.0}, {"optimizer": "sgd"}):
        with pytest.raises(jaxcnn.errors.ConfigError, match=rf"fit\(state, \.\.\., {next(iter(kw))}=\.\.\.\): a TrainState trains on "
                                                          "with the optimizer it was built with"):
            jaxcnn.fit(state, x, y, epochs=1, verbose=0, **kw)
    # What the message suggests works: the new rate is the one logged.
    state = state.replace(opt_state=jaxcnn.optim.set_learning_rate(state.opt_state, 1e-4))
    assert jaxcnn.fit(state, x, y, epochs=1, verbose=0).history["learning_rate"] == [pytest.approx(1e-4)]
    # An optax transformation has its own rate: a learning_rate beside it was silently dropped.
    tx = jaxcnn.optim.get_optimizer("sgd", 0.01, momentum=0.9)
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"the transformation has its own rate, so learning_rate would be ignored"):
        jaxcnn.fit(_Flat(), x, y, epochs=1, verbose=0, optimizer=tx, learning_rate=0.5)
    assert jaxcnn.fit(_Flat(), x, y, epochs=1, verbose=0, optimizer=tx).history["learning_rate"] == [pytest.approx(0.01)]
