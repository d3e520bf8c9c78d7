"""Session 21's fixes on the library side: each test fails without its fix."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcnn

rng = np.random.default_rng(0)
X = rng.uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
Y = np.arange(16) % 10


class Tiny(nn.Module):  # no train argument
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_a_resume_past_the_epochs_asked_warns_and_trains_nothing(tmp_path):
    # fit(resume=True, epochs=1) on a finished 2-epoch run returned its 2 epochs without a word
    # (Keras's BackupAndRestore trains nothing there either, silently).
    done, history = jaxcnn.fit(Tiny(), X, Y, epochs=2, batch_size=8, verbose=0, checkpoint_dir=tmp_path, devices=None)
    with pytest.warns(UserWarning, match=r"is after epoch 2, past epochs=1: nothing is trained, .*pass epochs greater than 2"):
        again, resumed = jaxcnn.fit(Tiny(), X, Y, epochs=1, batch_size=8, verbose=0, checkpoint_dir=tmp_path, resume=True,
                                    devices=None)
    assert resumed.history == history.history and int(again.step) == int(done.step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run's own length: a finished run, silently
        jaxcnn.fit(Tiny(), X, Y, epochs=2, batch_size=8, verbose=0, checkpoint_dir=tmp_path, resume=True, devices=None)


class Softmax(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.softmax(nn.Dense(10)(x.reshape(x.shape[0], -1)))


def test_an_export_that_never_recorded_from_logits_reloads_decided(tmp_path):
    # predict, evaluate and explain each decided an undecided from_logits themselves; load_state
    # (through create_train_state) now decides it once, as fit does, and they read the state.
    import json

    from jaxcnn import checkpoint

    state, _ = jaxcnn.fit(Softmax(), X, Y, epochs=1, batch_size=8, verbose=0, devices=None)
    checkpoint.export(tmp_path / "m", state)
    meta_file = tmp_path / "m" / checkpoint.MODEL_FILE
    meta = json.loads(meta_file.read_text())
    del meta["loss"]["from_logits"]  # as written before jaxcnn recorded it
    meta_file.write_text(json.dumps(meta))
    again = checkpoint.load_state(tmp_path / "m", Softmax())
    assert again.outputs_are_probs
    np.testing.assert_array_equal(jaxcnn.predict(again, X, output="probs"), jaxcnn.predict(state, X, output="probs"))
    assert jaxcnn.evaluate(again, X, Y) == pytest.approx(jaxcnn.evaluate(state, X, Y), rel=1e-6)


# -- a Keras user's habits (the Keras-porting probe) --------------------------------------------


@pytest.fixture(scope="module")
def keras():
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")  # before the first import of keras
    return pytest.importorskip("keras")


def _onehot(y):
    return np.eye(10, dtype=np.float32)[y]


def test_a_keras_loss_function_or_one_in_keras_order_is_refused_before_it_trains_on_swapped_arguments(keras):
    # With one-hot labels both arguments have the same shape: keras.losses.categorical_crossentropy
    # trained silently on loss(outputs, labels) read as (y_true, y_pred), its loss falling below zero.
    from jaxcnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^keras\..*categorical_crossentropy is a Keras loss function: it takes \(y_true, "
                                          r"y_pred\).*; pass loss='categorical_crossentropy'"):
        jaxcnn.fit(Tiny(), X, _onehot(Y), loss=keras.losses.categorical_crossentropy, epochs=1, verbose=0)

    def my_cce(y_true, y_pred):
        return -(y_true * jax.nn.log_softmax(y_pred)).sum(-1)

    with pytest.raises(ConfigError, match=r"^my_cce takes \(y_true, y_pred\), Keras's order, but jaxcnn calls a loss as "
                                          r"loss\(outputs, labels\); .*lambda outputs, labels: my_cce\(labels, outputs\)$"):
        jaxcnn.fit(Tiny(), X, _onehot(Y), loss=my_cce, epochs=1, verbose=0)
    # as the message says: the same loss as the named one
    _, ours = jaxcnn.fit(Tiny(), X, _onehot(Y), loss=lambda outputs, labels: my_cce(labels, outputs), epochs=1, batch_size=8,
                         verbose=0, devices=None)
    _, named = jaxcnn.fit(Tiny(), X, _onehot(Y), loss="categorical_crossentropy", epochs=1, batch_size=8, verbose=0,
                          devices=None)
    assert ours.history["loss"] == pytest.approx(named.history["loss"], rel=1e-5)


def test_a_keras_optimizer_is_refused_with_jaxcnns_of_the_same_name_and_rate(keras):
    from jaxcnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^Adam is a Keras optimizer, which cannot update jaxcnn's parameters; pass "
                                          r"optimizer='adam', learning_rate=0\.0003 instead"):
        jaxcnn.fit(Tiny(), X, Y, optimizer=keras.optimizers.Adam(3e-4), epochs=1, verbose=0)
    with pytest.raises(ConfigError, match=r"^Lion is a Keras optimizer, .*pass a name \('rmsprop', "):
        jaxcnn.fit(Tiny(), X, Y, optimizer=keras.optimizers.Lion(), epochs=1, verbose=0)


def test_multi_hot_labels_warn_that_categorical_cross_entropy_trains_one_softmax():
    import optax

    multi = np.zeros((16, 10), np.float32)
    multi[np.arange(16), Y] = 1
    multi[np.arange(16), (Y + 3) % 10] = 1  # two labels per example
    with pytest.warns(UserWarning, match=r"^y's rows are meant to be one-hot or class probabilities, but 16 of 16 do not "
                                         r"sum to 1 \(row 0 sums to 2\); .*optax\.sigmoid_binary_cross_entropy"):
        jaxcnn.fit(Tiny(), X, multi, epochs=1, batch_size=8, verbose=0, devices=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxcnn.fit(Tiny(), X, multi, loss=lambda outputs, labels: optax.sigmoid_binary_cross_entropy(outputs, labels).mean(-1),
                   epochs=1, batch_size=8, verbose=0, devices=None)
        jaxcnn.fit(Tiny(), X, _onehot(Y) * 0.9 + 0.01, epochs=1, batch_size=8, verbose=0, devices=None)  # smoothed: sums to 1
    from jaxcnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^loss 'binary_crossentropy': .*for multi-label targets .*sigmoid_binary_cross_entropy"):
        jaxcnn.fit(Tiny(), X, multi, loss="binary_crossentropy", verbose=0)


def test_an_nnx_sequential_exports_with_a_warning_reloads_with_the_module_and_summarises_each_layer(tmp_path):
    from flax import nnx

    from jaxcnn import checkpoint
    from jaxcnn.errors import CheckpointError

    model = nnx.Sequential(lambda x: x.reshape(x.shape[0], -1), nnx.Linear(192, 32, rngs=nnx.Rngs(0)), nnx.relu,
                           nnx.Linear(32, 10, rngs=nnx.Rngs(1)))
    state, _ = jaxcnn.fit(model, X, Y, epochs=1, batch_size=8, verbose=0, devices=None)
    with pytest.warns(UserWarning, match=r"^Sequential.__init__ takes \*fns, which an export cannot record; .*model=Sequential"):
        checkpoint.export(tmp_path / "m", state)
    with pytest.raises(CheckpointError, match=r"cannot rebuild the module: its arguments \*fns = .* were not saved; pass the module"):
        checkpoint.load_state(tmp_path / "m")
    again = checkpoint.load_state(tmp_path / "m", model=model)
    np.testing.assert_array_equal(jaxcnn.predict(again, X), jaxcnn.predict(state, X))
    rows = [line.split()[:2] for line in str(jaxcnn.summary(state)).splitlines() if line.startswith("layers.")]
    assert rows == [["layers.1", "(Linear)"], ["layers.3", "(Linear)"]]
    assert "(None, 32)" in str(jaxcnn.summary(state)) and "(None, 10)" in str(jaxcnn.summary(state))


# -- exports (the researcher probe) -------------------------------------------------------------


class Wide(nn.Module):
    features: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1))))
        return nn.Dense(10)(x)


def test_an_export_that_fails_midway_keeps_the_export_that_was_there(tmp_path, monkeypatch):
    # params.msgpack was replaced before model.json was written: a failure between them left new
    # weights beside the old model.json, and neither model loaded (a checksum mismatch).
    import builtins
    import errno

    from jaxcnn import checkpoint

    old, _ = jaxcnn.fit(Wide(), X, Y, epochs=1, batch_size=8, verbose=0, devices=None)
    new, _ = jaxcnn.fit(Wide(), X, Y, epochs=2, batch_size=8, verbose=0, devices=None)
    checkpoint.export(tmp_path / "m", old)
    real_open = builtins.open

    def full_disk(path, *args, **kwargs):
        if str(path).endswith(f"{checkpoint.MODEL_FILE}.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", full_disk, raising=False)
    with pytest.raises(OSError, match=r"No space left on device: '.*m/model\.json'"):
        checkpoint.export(tmp_path / "m", new)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([checkpoint.PARAMS_FILE, checkpoint.MODEL_FILE])
    again = checkpoint.load_state(tmp_path / "m")
    np.testing.assert_array_equal(jaxcnn.predict(again, X), jaxcnn.predict(old, X))


def test_a_numpy_scalar_attribute_is_exported_as_its_number(tmp_path):
    # Wide(features=np.int64(8)) was recorded as {"dtype": "int64"}, and the reload crashed in the model.
    import json

    from jaxcnn import checkpoint

    state, _ = jaxcnn.fit(Wide(features=np.arange(9)[8]), X, Y, epochs=1, batch_size=8, verbose=0, devices=None)
    checkpoint.export(tmp_path / "m", state)
    assert json.loads((tmp_path / "m" / checkpoint.MODEL_FILE).read_text())["module_kwargs"]["features"] == 8
    np.testing.assert_array_equal(jaxcnn.predict(checkpoint.load_state(tmp_path / "m"), X), jaxcnn.predict(state, X))


def test_sample_weights_as_a_column_are_taken_as_keras_takes_them():
    w = np.linspace(0.5, 2.0, 16).astype(np.float32)
    flat = jaxcnn.evaluate(jaxcnn.fit(Tiny(), X, Y, epochs=0, verbose=0)[0], X, Y, sample_weight=w)
    state, _ = jaxcnn.fit(Tiny(), X, Y, epochs=0, verbose=0)
    assert jaxcnn.evaluate(state, X, Y, sample_weight=w[:, None]) == flat
    _, a = jaxcnn.fit(Tiny(), X, Y, sample_weight=w, epochs=1, batch_size=8, verbose=0, devices=None)
    _, b = jaxcnn.fit(Tiny(), X, Y, sample_weight=w[:, None], epochs=1, batch_size=8, verbose=0, devices=None)
    assert a.history["loss"] == b.history["loss"] and a.history["accuracy"] == b.history["accuracy"]


def test_a_search_worker_stopped_by_ctrl_c_exits_130_without_a_traceback(monkeypatch):
    # Ctrl-C in a terminal reaches every process of the group: each worker printed
    # multiprocessing's "Process SpawnProcess-1: Traceback ... KeyboardInterrupt" under the
    # parent's one line. (The whole command was checked by hand: too slow for the suite.)
    import jaxcnn.search as search_mod

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_mod, "_work_in_process", interrupted)
    with pytest.raises(SystemExit) as e:
        search_mod._worker_main(1, {}, None, {}, None, "", "s", {}, None)
    assert e.value.code == 130


def test_predict_on_a_model_of_no_bundled_shape_points_at_the_library():
    from experiments.predict import _dataset_for
    from jaxcnn.errors import ConfigError

    assert _dataset_for((28, 28, 1)) == "mnist"
    with pytest.raises(ConfigError, match=r"^the model takes images of shape \(20, 20, 3\), and no data set here has that shape "
                                          r".*jaxcnn\.predict\(jaxcnn\.checkpoint\.load_state\(directory\), images\)$"):
        _dataset_for((20, 20, 3))


# -- what the regression probe of this session's changes found ----------------------------------


def test_a_state_from_create_train_state_still_gets_fits_loss_checks():
    # create_train_state now decides from_logits, and fit's "resolved before" return skipped the
    # custom loss's check (a .mean() trained silently) and the multi-hot warning.
    from jaxcnn import train
    from jaxcnn.errors import ConfigError

    def mean_nll(outputs, labels):
        return -jnp.take_along_axis(jax.nn.log_softmax(outputs), labels[:, None], axis=-1).mean()

    state = train.create_train_state(Tiny(), X.shape[1:], loss=mean_nll)
    with pytest.raises(ConfigError, match=r"returned shape \(\) for a batch of 2"):
        jaxcnn.fit(state, X, Y, epochs=1, verbose=0)
    multi = _onehot(Y) + _onehot((Y + 1) % 10)
    with pytest.warns(UserWarning, match=r"^y's rows are meant to be one-hot"):
        jaxcnn.fit(train.create_train_state(Tiny(), X.shape[1:]), X, multi, epochs=1, batch_size=8, verbose=0, devices=None)


def test_a_state_whose_loss_was_replaced_by_an_undecided_one_is_decided_where_it_is_used():
    from jaxcnn import losses

    state, _ = jaxcnn.fit(Softmax(), X, Y, epochs=0, verbose=0)
    undecided = state.replace(loss=losses.CategoricalCrossentropy())
    assert undecided.loss.from_logits is None
    np.testing.assert_array_equal(jaxcnn.predict(undecided, X, output="probs"), jaxcnn.predict(state, X, output="probs"))
    assert jaxcnn.evaluate(undecided, X, Y) == pytest.approx(jaxcnn.evaluate(state, X, Y), rel=1e-6)


def test_loss_refusals_name_only_keras_and_give_valid_code():
    import types

    import optax

    from jaxcnn import losses
    from jaxcnn.errors import ConfigError

    own = types.ModuleType("keras_compat")  # a module of one's own whose name starts with keras
    exec("import optax\ndef my_loss(outputs, labels):\n    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels)\n",
         own.__dict__)
    assert losses.get_loss(own.my_loss).fn is own.my_loss
    for fn in (optax.softmax_cross_entropy, optax.softmax_cross_entropy_with_integer_labels, optax.sigmoid_binary_cross_entropy):
        assert losses.get_loss(fn).fn is fn  # (logits, labels): jaxcnn's order

    class Focal:
        def __call__(self, y_true, y_pred):
            return optax.softmax_cross_entropy_with_integer_labels(y_pred, y_true)

    with pytest.raises(ConfigError, match=r"^the loss Focal takes \(y_true, y_pred\), .*loss=lambda outputs, labels: "
                                          r"loss_fn\(labels, outputs\) with the loss as loss_fn$"):
        losses.get_loss(Focal())


class ParamList(nnx.Module):
    def __init__(self, rngs):
        self.ws = nnx.List([nnx.Param(jnp.ones((192, 16))), nnx.Param(jnp.ones((16, 10)))])

    def __call__(self, x, train: bool = False):
        return x.reshape(x.shape[0], -1) @ self.ws[0][...] @ self.ws[1][...]


class Extra(nnx.Module):
    def __init__(self, hidden: int = 16, *extra, rngs):
        self.hidden = hidden
        self.a = nnx.Linear(192, hidden, rngs=rngs)
        self.b = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x, train: bool = False):
        return self.b(jax.nn.relu(self.a(x.reshape(x.shape[0], -1))))


def test_nnx_lists_of_parameters_and_a_later_star_args_keep_their_old_behaviour(tmp_path):
    from flax import nnx

    from jaxcnn import checkpoint

    s = str(jaxcnn.summary(ParamList(nnx.Rngs(0)), X.shape[1:]))
    assert "Total params: 3,232" in s  # the list's parameters, in one row as before
    state, _ = jaxcnn.fit(Extra(rngs=nnx.Rngs(0)), X, Y, epochs=1, batch_size=8, verbose=0, devices=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.export(tmp_path / "m", state)
    np.testing.assert_array_equal(jaxcnn.predict(checkpoint.load_state(tmp_path / "m"), X), jaxcnn.predict(state, X))


class Rated(nn.Module):
    scale: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10)(x.reshape(x.shape[0], -1)) * self.scale


def test_a_jax_scalar_attribute_is_exported_as_its_number(tmp_path):
    import json

    from jaxcnn import checkpoint

    state, _ = jaxcnn.fit(Rated(scale=jnp.float32(0.25)), X, Y, epochs=1, batch_size=8, verbose=0, devices=None)
    checkpoint.export(tmp_path / "m", state)
    assert json.loads((tmp_path / "m" / checkpoint.MODEL_FILE).read_text())["module_kwargs"]["scale"] == 0.25


class BnDrop(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
        x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("devices", ["auto", None])
@pytest.mark.parametrize("model", [Wide, BnDrop])
def test_a_keras_callback_keeps_and_puts_back_weights_with_get_and_set_weights(model, devices):
    # self.model.get_weights() raised AttributeError: the Keras idiom of a callback that keeps
    # the weights of one epoch and puts them back (here mid-training, so the next epoch trains on).
    class KeepFirst:
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.kept = self.model.get_weights()
            if epoch == 1:
                self.model.set_weights(self.kept)

    keep = KeepFirst()
    state, history = jaxcnn.fit(model(), X, Y, epochs=2, batch_size=8, verbose=0, devices=devices, callbacks=[keep])
    got = jax.tree.leaves((state.params, state.batch_stats))
    assert len(got) == len(keep.kept) and all(np.array_equal(a, b) for a, b in zip(got, keep.kept))
    assert int(state.step) == 4  # the optimizer's state and step stay the last epoch's, as in Keras
    # and training goes on from weights put back mid-run
    _, more = jaxcnn.fit(model(), X, Y, epochs=3, batch_size=8, verbose=0, devices=devices, callbacks=[KeepFirst()])
    assert np.isfinite(more.history["loss"]).all()
    from jaxcnn.errors import ShapeError

    class Wrong:
        def on_epoch_end(self, epoch, logs=None):
            self.model.set_weights(self.model.get_weights()[1:])

    with pytest.raises(ShapeError, match=r"^set_weights takes the list get_weights gives, \d+ arrays of shapes"):
        jaxcnn.fit(model(), X, Y, epochs=1, batch_size=8, verbose=0, devices=devices, callbacks=[Wrong()])
