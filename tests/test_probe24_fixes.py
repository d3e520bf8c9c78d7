"""Session 24's fixes (what session 23's probes found): each test fails without its fix."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxcnn

rng = np.random.default_rng(0)
X = rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
Y = np.arange(64) % 10


class DropNet(nn.Module):  # dropout without BatchNorm, a train argument
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dropout(0.25, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(10)(x)


class Steps(jaxcnn.Callback):
    """Counts batch-end calls and stops training at the third batch."""

    def __init__(self, stop_at=None):
        self.seen, self.stop_at = [], stop_at

    def on_epoch_end(self, epoch, logs, loop):
        pass

    def on_train_batch_end(self, batch, logs, loop):
        self.seen.append(batch)
        if self.stop_at is not None and len(self.seen) >= self.stop_at:
            loop.stop_training = True


def test_batch_hooks_see_every_step_with_the_data_on_the_device():
    # the resident strategy ran 64-step chunks and called batch hooks once per chunk
    cb = Steps()
    jaxcnn.fit(DropNet(), X, Y, epochs=2, batch_size=4, verbose=0, data_on_device=True, callbacks=[cb])
    assert cb.seen == list(range(32))  # jaxcnn's form gets the global step
    stop = Steps(stop_at=3)
    state, _ = jaxcnn.fit(DropNet(), X, Y, epochs=2, batch_size=4, verbose=0, data_on_device=True, callbacks=[stop])
    assert int(state.step) == 3 and len(stop.seen) == 3


def test_model_checkpoint_save_freq_with_the_data_on_the_device(tmp_path):
    # 16 steps an epoch, saved every 5 global steps: as on the per-step path
    ck = jaxcnn.callbacks.ModelCheckpoint(str(tmp_path / "w-{epoch}-{batch}"), save_freq=5, save_weights_only=True)
    jaxcnn.fit(DropNet(), X, Y, epochs=2, batch_size=4, verbose=0, data_on_device=True, callbacks=[ck])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["w-1-5", "w-1-10", "w-1-15", "w-2-4", "w-2-9", "w-2-14"])


def test_one_callback_with_only_batch_hooks_is_taken_as_one():
    class Stop:  # duck-typed, Keras's form, no on_epoch_end
        def __init__(self):
            self.n = 0

        def on_train_batch_end(self, batch, logs=None):
            self.n += 1

    cb = Stop()
    jaxcnn.fit(DropNet(), X, Y, epochs=1, batch_size=16, verbose=0, callbacks=cb)
    assert cb.n == 4


@pytest.mark.skipif(jax.device_count() < 2, reason="needs two devices")
@pytest.mark.parametrize("devices", ["all", 2])
def test_evaluate_over_several_devices(devices):
    state, _ = jaxcnn.fit(DropNet(), X, Y, epochs=1, batch_size=16, verbose=0)
    one = jaxcnn.evaluate(state, X[:37], Y[:37], devices=None)
    many = jaxcnn.evaluate(state, X[:37], Y[:37], devices=devices)
    assert many["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert many["accuracy"] == pytest.approx(one["accuracy"])


def test_search_takes_class_weight_and_names_what_it_does_not_take(tmp_path):
    from jaxcnn import search

    # class weights reach each trial's fit: all of class 0's weight moved to the other classes
    # changes the trial's training loss; a study keeps it in its fingerprint
    opts = dict(model=DropNet, trials=1, epochs=1, batch_size=16, verbose=0, space={"learning_rate": search.Choice((1e-2,))})
    plain = search.random_search(X, Y, **opts)
    weighed = search.random_search(X, Y, class_weight={0: 0.0, 1: 3.0}, out=tmp_path / "s", **opts)
    assert weighed.trials[0].status == "ok", weighed.trials[0].reason
    assert weighed.trials[0].results["loss"] != pytest.approx(plain.trials[0].results["loss"], rel=1e-4)
    with pytest.raises(jaxcnn.errors.ConfigError, match="differs in class_weight"):
        search.random_search(X, Y, class_weight={0: 1.0}, out=tmp_path / "s", **opts)
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"use int keys, \{1: \.\.\.\}"):
        search.random_search(X, Y, class_weight={"1": 2.0}, **opts)
    for key, says in [("sample_weight", "class_weight="), ("callbacks", "jaxcnn.fit"), ("loss", "cross-entropy"),
                      ("metrics", "metric= names")]:
        with pytest.raises(jaxcnn.errors.ConfigError, match=f"random_search takes no {key}=.*{says}"):
            search.random_search(X, Y, **{key: None}, **opts)


def test_search_default_batch_size_on_fewer_examples_is_one_batch():
    from jaxcnn import search

    # 64 examples, 51 to train on: the default 256 was refused; fit (and Keras) take one batch
    result = search.random_search(X, Y, model=DropNet, trials=1, epochs=1, verbose=0, space={"learning_rate": search.Choice((1e-2,))})
    assert result.trials[0].status == "ok", result.trials[0].reason
    with pytest.raises(jaxcnn.errors.ConfigError, match="batch_size 300 is larger than the"):  # given: still a mistake
        search.random_search(X, Y, model=DropNet, trials=1, epochs=1, verbose=0, batch_size=300,
                             space={"learning_rate": search.Choice((1e-2,))})


def test_resume_with_other_class_weight_names_the_weights(tmp_path):
    kw = dict(epochs=1, batch_size=16, verbose=0, checkpoint_dir=tmp_path / "c", resume=True)
    jaxcnn.fit(DropNet(), X, Y, class_weight={0: 2.0}, **kw)
    for other in ({0: 3.0}, None):
        with pytest.raises(jaxcnn.errors.ConfigError, match="class_weight or sample_weight"):
            jaxcnn.fit(DropNet(), X, Y, class_weight=other, **dict(kw, epochs=2))
    state, history = jaxcnn.fit(DropNet(), X, Y, class_weight={0: 2.0}, **dict(kw, epochs=2))  # the same: resumes
    assert len(history.history["loss"]) == 2


def test_out_of_range_labels_say_what_they_likely_mean():
    with pytest.raises(jaxcnn.errors.ShapeError, match=r"look numbered from 1 \(as in R\): subtract 1 from y"):
        jaxcnn.fit(DropNet(), X, Y + 1, epochs=1, verbose=0)
    with pytest.raises(jaxcnn.errors.ShapeError, match=r"needs 12 outputs \(e.g. nn.Dense\(12\), nnx.Linear\(\.\.\., 12\)\)"):
        jaxcnn.fit(DropNet(), X, np.arange(64) % 12, epochs=1, verbose=0)
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"use int keys"):
        jaxcnn.fit(DropNet(), X, Y, epochs=1, verbose=0, class_weight={"0": 2.0})


def test_an_nnx_convolution_built_for_other_channels_says_so():
    from flax import nnx

    class RGB(nnx.Module):  # an NNX Conv fixes its input channels: 3, given 1-channel images
        def __init__(self, rngs=None):
            rngs = rngs or nnx.Rngs(0)
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.fc = nnx.Linear(8 * 8 * 4, 10, rngs=rngs)

        def __call__(self, x):
            return self.fc(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))

    with pytest.raises(jaxcnn.errors.ShapeError, match=r"^RGB cannot be applied to images of shape \(8, 8, 1\) \(a batch of \d+\): "
                       r"a convolution is built for 3 input channels and gets 1\. "):
        jaxcnn.fit(RGB(), X, Y, epochs=1, verbose=0)


class KerasStyle(nn.Module):  # jaxcnn's layers, and no train passed to them (Keras's habit)
    @nn.compact
    def __call__(self, x, train: bool = False):
        from jaxcnn import layers as L

        x = L.BatchNorm()(x)
        x = L.Dropout(0.5)(x.reshape(x.shape[0], -1))
        return L.Dense(10)(x)


class KerasNames(nn.Module):  # Keras's argument name, training=, and a model without train
    @nn.compact
    def __call__(self, x):
        from jaxcnn import layers as L

        x = L.BatchNorm()(x, training=None)
        return L.Dense(10)(L.Dropout(0.5)(x.reshape(x.shape[0], -1)))


@pytest.mark.parametrize("model", [KerasStyle, KerasNames])
def test_jaxcnn_layers_without_train_follow_fits_mode(model):
    # BatchNorm and Dropout left at train=False trained with the moving statistics and no dropout
    state, _ = jaxcnn.fit(model(), X, Y, epochs=1, batch_size=16, verbose=0)
    mean = jax.tree.leaves(state.batch_stats)[0]
    assert float(np.abs(np.asarray(mean)).max()) > 0  # the moving mean moved: batch statistics in training
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    a, b = (state.model.apply(variables, X[:8], train=True, rngs={"dropout": jax.random.key(k)}, mutable=["batch_stats"])[0]
            for k in (1, 2))
    assert not np.allclose(a, b)  # training: dropout is on
    np.testing.assert_allclose(jaxcnn.predict(state, X[:8]), state.model.apply(variables, X[:8]), rtol=1e-5, atol=1e-6)


def test_jaxcnn_dropout_takes_kerass_training_name():
    from jaxcnn import layers as L

    x = np.ones((4, 100), np.float32)
    drop = L.Dropout(0.5)
    out = drop.apply({}, x, training=True, rngs={"dropout": jax.random.key(1)})
    assert (np.asarray(out) == 0).any()
    np.testing.assert_array_equal(drop.apply({}, x, training=False), x)
    np.testing.assert_array_equal(drop.apply({}, x), x)  # outside jaxcnn's calls: evaluation
    with pytest.raises(jaxcnn.errors.ConfigError, match="give one of them"):
        drop.apply({}, x, True, training=False, rngs={"dropout": jax.random.key(1)})


def test_feature_maps_are_the_layers_output():
    from flax import nnx

    from jaxcnn import explain

    class Net(nn.Module):  # BatchNorm and dropout, a softmax output
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Conv(6, (3, 3), name="conv")(x))
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.Dropout(0.3, deterministic=not train)(x)
            return nn.softmax(nn.Dense(10)(x.reshape(x.shape[0], -1)))

    state, _ = jaxcnn.fit(Net(), X, Y, epochs=1, batch_size=16, verbose=0)
    maps = explain.feature_maps(state, X[:33], "conv", batch_size=16)  # three batches, the last padded
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    want = nn.Conv(6, (3, 3)).apply({"params": variables["params"]["conv"]}, X[:33])  # before the relu
    np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-6)
    assert explain.feature_maps(state, X[:2]).shape == (2, 8, 8, 6)  # default: the last layer with weights
    with pytest.raises(jaxcnn.errors.ConfigError, match="choose one of conv"):
        explain.feature_maps(state, X[:2], "nope")

    class NNXNet(nnx.Module):
        def __init__(self, rngs=None):
            rngs = rngs or nnx.Rngs(0)
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.fc = nnx.Linear(8 * 8 * 4, 10, rngs=rngs)

        def __call__(self, x):
            return self.fc(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))

    state, _ = jaxcnn.fit(NNXNet(), X, Y, epochs=1, batch_size=16, verbose=0)
    assert explain.feature_maps(state, X[:3], "conv").shape == (3, 8, 8, 4)


def test_layer_names_list_a_jaxcnn_layer_once():
    # jaxcnn.layers.BatchNorm's inner "bn" (and Dropout's inner Dropout) were listed beside it
    from jaxcnn import explain
    from jaxcnn import layers as L

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = L.BatchNorm()(L.Conv2D(4, 3, padding="same", activation="relu")(x))
            return L.Dense(10)(L.Flatten()(L.Dropout(0.3)(x)))

    state = jaxcnn.create_train_state(Net(), (8, 8, 1))
    assert explain.layer_names(state) == ["Conv2D_0", "BatchNorm_0", "Dropout_0"]


def test_conv2d_and_dense_take_kerass_names():
    from jaxcnn import layers as L

    class Keras(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = L.MaxPooling2D()(L.Conv2D(filters=4, kernel_size=3, activation="relu")(x))
            return L.Dense(units=10)(L.Flatten()(x))

    class Flax(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = L.MaxPool2D()(L.Conv2D(4, 3, activation="relu")(x))
            return L.Dense(10)(L.Flatten()(x))

    a, b = (jaxcnn.create_train_state(m(), (8, 8, 1), seed=0) for m in (Keras, Flax))
    assert jax.tree.map(np.shape, a.params) == jax.tree.map(np.shape, b.params)
    np.testing.assert_array_equal(jaxcnn.predict(a, X[:4]), jaxcnn.predict(b, X[:4]))

    class Both(nn.Module):
        @nn.compact
        def __call__(self, x):
            return L.Dense(10)(L.Flatten()(L.Conv2D(4, filters=5)(x)))

    with pytest.raises(jaxcnn.errors.ConfigError, match="Conv2D got features=4 and filters=5; give one of them"):
        jaxcnn.create_train_state(Both(), (8, 8, 1))


def test_a_checkpoint_whose_weights_were_hashed_with_the_data_still_resumes(tmp_path, monkeypatch):
    # before the weights had their own key, they were hashed into "data": such a run resumes
    from jaxcnn.train import loop

    new = loop._fingerprint

    def old(inputs, *args):
        fp = new(inputs, *args)
        fp.pop("weights", None)
        return {**fp, "data": loop._data_hash(inputs, weights=True)}

    kw = dict(batch_size=16, verbose=0, checkpoint_dir=tmp_path / "c", resume=True, class_weight={0: 2.0})
    monkeypatch.setattr(loop, "_fingerprint", old)
    jaxcnn.fit(DropNet(), X, Y, epochs=1, **kw)
    monkeypatch.setattr(loop, "_fingerprint", new)
    _, history = jaxcnn.fit(DropNet(), X, Y, epochs=2, **kw)
    assert len(history.history["loss"]) == 2
    with pytest.raises(jaxcnn.errors.ConfigError, match="class_weight or sample_weight"):
        jaxcnn.fit(DropNet(), X, Y, epochs=3, **dict(kw, class_weight={0: 3.0}))
    # class_weight={} trains as no weights, and resumes as such
    kw = dict(batch_size=16, verbose=0, checkpoint_dir=tmp_path / "d", resume=True)
    jaxcnn.fit(DropNet(), X, Y, epochs=1, class_weight={}, **kw)
    _, history = jaxcnn.fit(DropNet(), X, Y, epochs=2, **kw)
    assert len(history.history["loss"]) == 2


class OnlyBatch:
    def on_train_batch_end(self, batch, logs=None):
        pass


@pytest.mark.parametrize("callbacks, says", [
    (OnlyBatch, r"holds the class OnlyBatch, not a callback; pass an instance: OnlyBatch\(\.\.\.\)"),
    ([OnlyBatch], "holds the class OnlyBatch"),
    ("early_stopping", "holds 'early_stopping', which has no hooks"),
    (["EarlyStopping"], "holds 'EarlyStopping', which has no hooks"),
    ([None], "holds None, which has no hooks"),
    (object(), "which has no hooks"),
])
def test_callbacks_that_are_not_callbacks_are_refused(callbacks, says):
    # a class ran with self=<the step>; names, None and hookless objects were ignored or raised TypeError
    with pytest.raises(jaxcnn.errors.ConfigError, match=says):
        jaxcnn.fit(DropNet(), X, Y, epochs=1, verbose=0, callbacks=callbacks)
    jaxcnn.fit(DropNet(), X, Y, epochs=1, batch_size=32, verbose=0, callbacks=(OnlyBatch(), jaxcnn.callbacks.History()
                                                                               if hasattr(jaxcnn.callbacks, "History") else OnlyBatch()))


def test_search_class_weight_for_a_class_without_labels_is_refused_before_the_study(tmp_path):
    from jaxcnn import search

    opts = dict(model=DropNet, trials=1, epochs=1, batch_size=16, verbose=0, space={"learning_rate": search.Choice((1e-2,))})
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"class_weight has class 10; the labels hold classes 0\.\.9"):
        search.random_search(X, Y, class_weight={10: 2.0}, out=tmp_path / "s", **opts)
    assert not (tmp_path / "s").exists()
    # {} and all-ones weights are no weights: the same study as none
    search.random_search(X, Y, class_weight={}, out=tmp_path / "t", **opts)
    again = search.random_search(X, Y, class_weight={3: 1.0}, out=tmp_path / "t", **dict(opts, trials=2))
    assert [t.status for t in again.trials] == ["ok", "ok"]


def test_class_weight_float_keys_and_explicit_ones(tmp_path):
    from jaxcnn import search

    with pytest.raises(jaxcnn.errors.ConfigError, match=r"use int keys, \{0: \.\.\.\}"):
        jaxcnn.fit(DropNet(), X, Y, epochs=1, verbose=0, class_weight={np.float64(0): 2.0})
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"use int keys, \{1: \.\.\.\}"):
        search.random_search(X, Y, model=DropNet, trials=1, epochs=1, verbose=0, class_weight={1.0: 2.0})
    # a class at 1.0 is a class left out: the same study
    opts = dict(model=DropNet, trials=1, epochs=1, batch_size=16, verbose=0, space={"learning_rate": search.Choice((1e-2,))})
    search.random_search(X, Y, class_weight={0: 2.0}, out=tmp_path / "s", **opts)
    again = search.random_search(X, Y, class_weight={0: 2.0, 1: 1.0}, out=tmp_path / "s", **dict(opts, trials=2))
    assert [t.status for t in again.trials] == ["ok", "ok"]
