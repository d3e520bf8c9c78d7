"""Session 22's fixes: each test fails without its fix."""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

import jaxcnn

matplotlib.use("Agg")

rng = np.random.default_rng(0)
X = rng.uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
Y = np.arange(16) % 10


class Tiny(nn.Module):  # no train argument
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_a_keras_callback_assigns_the_rate_on_its_optimizer():
    # Keras's idiom self.model.optimizer.learning_rate.assign(x) raised AttributeError ('float' object)
    class Halve(jaxcnn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rate = self.model.optimizer.learning_rate
            assert copy.deepcopy(rate) == rate and pickle.loads(pickle.dumps(rate)) == rate  # the number, not the loop
            rate.assign(rate.numpy() / 2)

    _, history = jaxcnn.fit(Tiny(), X, Y, epochs=3, batch_size=8, verbose=0, learning_rate=0.01, callbacks=[Halve()],
                            devices=None)
    np.testing.assert_allclose(history.history["learning_rate"], [0.01, 0.005, 0.0025], rtol=1e-6)
    assert all(type(v) is float for v in history.history["learning_rate"])  # plain numbers in the history


def test_one_image_is_drawn_alone():
    # image_grid read one (H, W, C) image as H images of W x C pixels; (H, W) was refused
    from jaxcnn import plots

    def drawn(fig):
        return sum(bool(ax.images) for ax in fig.axes)

    assert drawn(plots.image_grid(rng.random((28, 28, 1)))) == 1
    assert drawn(plots.image_grid(rng.random((28, 28)))) == 1
    assert drawn(plots.image_grid(rng.random((32, 32, 3)), ["cat"])) == 1
    assert drawn(plots.image_grid(rng.random((5, 28, 28)))) == 5  # a batch stays a batch
    assert drawn(plots.explanations(rng.random((28, 28, 1)), rng.random((28, 28)), labels=[3])) == 1
    assert drawn(plots.explanations(rng.random((28, 28, 3)), rng.random((28, 28, 3)))) == 1


def test_keras_step_counts_are_taken_when_whole_and_refused_with_the_slice_otherwise():
    # fit(..., steps_per_epoch=...) raised Python's "unexpected keyword argument"
    _, history = jaxcnn.fit(Tiny(), X, Y, epochs=1, batch_size=6, verbose=0, steps_per_epoch=3, devices=None,
                            validation_data=(X[:5], Y[:5]), validation_steps=1)
    assert len(history) == 1 and "val_loss" in history
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"steps_per_epoch=2: fit takes arrays and passes over all of them, "
                       r"16 examples in batches of 6, 3 steps; drop steps_per_epoch, or give fewer examples: x\[:12\], y\[:12\]"):
        jaxcnn.fit(Tiny(), X, Y, batch_size=6, verbose=0, steps_per_epoch=2)
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"validation_steps=2: .*, 1 step; drop validation_steps, the arrays are not repeated"):
        jaxcnn.fit(Tiny(), X, Y, batch_size=6, verbose=0, validation_data=(X[:5], Y[:5]), validation_steps=2)
    with pytest.raises(jaxcnn.errors.ConfigError, match="steps_per_epoch must be None or a positive integer, got 0"):
        jaxcnn.fit(Tiny(), X, Y, verbose=0, steps_per_epoch=0)


def test_a_history_converts_to_a_dict_of_its_logs():
    # dict(history) raised KeyError: 0 (it has __len__ and __getitem__ but no keys)
    _, history = jaxcnn.fit(Tiny(), X, Y, epochs=2, batch_size=8, verbose=0, devices=None)
    assert dict(history) == history.history and list(history) == list(history.history)
    assert dict(history.items())["loss"] == history["loss"] and len(history) == 2


class Pools(nn.Module):  # pools 8x8 images down to nothing
    @nn.compact
    def __call__(self, x):
        for _ in range(4):
            x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_channels_first_shapes_and_images_pooled_to_nothing_get_one_line():
    # summary(model, (1, 28, 28)), torchsummary's habit, and a model pooling its images to 0x0
    # raised a bare ZeroDivisionError from inside JAX's initialisers
    ShapeError = jaxcnn.errors.ShapeError
    for shape in ((1, 28, 28), (None, 3, 32, 32)):
        with pytest.raises(ShapeError, match=r"looks channels-first \(C, H, W\); jaxcnn's models take channels-last images "
                           r"\(H, W, C\): pass \((28, 28, 1|32, 32, 3)\)"):
            jaxcnn.summary(Tiny(), shape)
    # a shape given to create_train_state is taken as it is (exports of such states reload, as before)
    assert jaxcnn.create_train_state(Tiny(), (3, 32, 32)).input_shape == (3, 32, 32)
    for call in (lambda: jaxcnn.fit(Pools(), X, Y, verbose=0), lambda: jaxcnn.summary(Pools(), (8, 8, 3))):
        with pytest.raises(ShapeError, match=r"Pools cannot be applied to images of shape \(8, 8, 3\) \(a batch of \d+\): a layer gets an input "
                           r"with a zero-size axis .* shrink the 8x8 images to nothing \(or has a layer 0 features\)\? Pool less"):
            call()
    state, _ = jaxcnn.fit(Tiny(), X[..., :1], Y, verbose=0, devices=None)
    with pytest.raises(ShapeError, match=r"x has shape \(8, 8\), one image without its channel axis; .* x\[None, \.\.\., None\]"):
        jaxcnn.predict(state, X[0, ..., 0])


def test_pytorch_style_data_sets_and_pairs_are_refused_with_how_to_gather_them():
    # a Dataset of one's own (__getitem__, __len__), a loader (__iter__) and a list of [x, y] lists
    # got "y is missing", per-example pairs were told to np.concatenate (which flattens them)
    ConfigError = jaxcnn.errors.ConfigError

    class Examples:
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return X[i], Y[i]

    class Loader:
        def __iter__(self):
            yield X[:8], Y[:8]

    state, _ = jaxcnn.fit(Tiny(), X, Y, verbose=0, devices=None)
    for x, what, gather in ((Examples(), "Examples, a data set of \\(x, y\\) examples", "np.stack"),
                            (Loader(), "Loader, a data set of \\(x, y\\) batches", "np.concatenate")):
        for call in (lambda: jaxcnn.fit(Tiny(), x), lambda: jaxcnn.predict(state, x)):
            with pytest.raises(ConfigError, match=rf"^x is a {what}; .* not generators or data set objects: gather them first, e.g. x = {gather}"):
                call()
    # sequences of images that NumPy converts, as before: a deque, a lazy Sequence, a memoryview
    import collections

    class Lazy(collections.abc.Sequence):
        def __getitem__(self, i):
            return X[i]

        def __len__(self):
            return len(X)

    for x in (collections.deque(list(X)), Lazy(), memoryview(X)):
        assert jaxcnn.predict(state, x).shape == (16, 10)
    onehot = np.eye(10, dtype=np.float32)[Y]
    with pytest.raises(ConfigError, match=r"^x is a list of \(x, y\) examples; .* np\.stack"):  # one-hot labels too
        jaxcnn.fit(Tiny(), [(X[i], onehot[i]) for i in range(4)])
    with pytest.raises(ConfigError, match=r"^x is a list of \(x, y\) batches; .* np\.concatenate"):
        jaxcnn.fit(Tiny(), [[X[:8], Y[:8]], [X[8:], Y[8:]]])
    with pytest.raises(ConfigError, match=r"^x is a list of \(x, y\) examples; .* x = np\.stack\(\[xi for xi, yi in examples\]\)"):
        jaxcnn.fit(Tiny(), [(X[i], int(Y[i])) for i in range(4)])
    with pytest.raises(ConfigError, match=r"^x is a list of 2 arrays; give the images and the labels apart"):
        jaxcnn.fit(Tiny(), [X, Y])


class ActNet(nn.Module):
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(self.act(x.reshape(x.shape[0], -1)))


def test_a_function_attribute_exports_at_its_default_and_warns_otherwise(tmp_path):
    # act=nn.relu was recorded as "unserializable" even at its default, silently, and the reload
    # failed (in another process, usually) telling the user to pass model=MyModel(...)
    from jaxcnn import checkpoint

    state, _ = jaxcnn.fit(ActNet(), X, Y, verbose=0, devices=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.export(tmp_path / "default", state)
    again = checkpoint.load_state(tmp_path / "default")
    np.testing.assert_array_equal(jaxcnn.predict(again, X), jaxcnn.predict(state, X))
    state, _ = jaxcnn.fit(ActNet(act=nn.gelu), X, Y, verbose=0, devices=None)
    with pytest.warns(UserWarning, match=r"ActNet's attribute act = <function gelu .* cannot be recorded in the export .*"
                      r"load_state\(directory, model=ActNet\(\.\.\.\)\)"):
        checkpoint.export(tmp_path / "gelu", state)
    with pytest.raises(jaxcnn.errors.CheckpointError, match=r"its attribute act = .* model=ActNet\(\.\.\.\)\)"):
        checkpoint.load_state(tmp_path / "gelu")
    again = checkpoint.load_state(tmp_path / "gelu", model=ActNet(act=nn.gelu))
    np.testing.assert_array_equal(jaxcnn.predict(again, X), jaxcnn.predict(state, X))


def test_a_storage_that_cannot_open_fails_at_once(monkeypatch, tmp_path):
    # a refused connection was tried 8 times, sleeping 7 s in all, before the same one-line error;
    # the retries are for workers racing to create one database's tables
    from jaxcnn.search import engine

    slept = []
    monkeypatch.setattr(engine.time, "sleep", slept.append)
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"cannot open the study storage .*Connection refused"):
        engine.open_storage("postgresql://nobody@127.0.0.1:1/x", engine.SearchConfig())
    assert slept == []
    assert engine.open_storage(f"sqlite:///{tmp_path / 'ok.db'}", engine.SearchConfig()) is not None


def test_the_pure_steps_refuse_a_batch_that_is_not_a_dict_of_arrays():
    # a tuple batch raised "tuple indices must be integers", a list of labels AttributeError
    import jax

    state = jaxcnn.create_train_state(Tiny(), (8, 8, 3))
    with pytest.raises(jaxcnn.errors.ConfigError, match=r'^train_step takes batch = \{"x": .*got a tuple; pass \{"x": x, "y": y\}'):
        jax.jit(jaxcnn.train_step)(state, (X, Y))
    with pytest.raises(jaxcnn.errors.ConfigError, match=r'^eval_step: batch\["y"\] is a list; give arrays'):
        jaxcnn.eval_step(state, {"x": X, "y": list(Y)})
    _, metrics = jax.jit(jaxcnn.train_step)(state, {"x": X, "y": Y})
    assert float(metrics["count"]) == 16
    from flax.core import FrozenDict  # any mapping, other keys left alone

    assert float(jaxcnn.eval_step(state, FrozenDict({"x": X, "y": Y, "name": "batch 0"}))["count"]) == 16


def test_one_image_takes_its_title_label_and_map_as_given():
    # the regression probe: a string title for one image was drawn as its first letter, a scalar
    # label raised TypeError, an (H, W) image's (H, W, 1) map was refused
    from jaxcnn import plots

    fig = plots.image_grid(rng.random((28, 28, 1)), "cat")
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["cat"]
    with pytest.raises(jaxcnn.errors.ConfigError, match="titles must be a list of one title per image"):
        plots.image_grid(rng.random((3, 28, 28)), "cat")
    fig = plots.explanations(rng.random((28, 28)), rng.random((28, 28, 1)), labels=1, predicted=2)
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["2 / true: 1"]


def test_pytorch_optimizer_names_are_hinted_only_where_the_optimizer_takes_keras_s():
    from jaxcnn import optim

    with pytest.raises(jaxcnn.errors.ConfigError, match=r"'sgd' does not take 'betas'; it takes"):
        optim.get_optimizer("sgd", betas=(0.9, 0.99))
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"'rmsprop' does not take 'alpha' \(PyTorch's alpha; Keras's name is rho\)"):
        optim.get_optimizer("rmsprop", alpha=0.9)


class ArrayAttr(nn.Module):
    scale: jax.Array = None

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1) * self.scale)


def test_an_array_attribute_is_not_exported_as_its_dtype(tmp_path):
    # a jnp.array attribute was recorded as {"dtype": "float32"} and the reload failed while tracing
    from jaxcnn import checkpoint

    state, _ = jaxcnn.fit(ArrayAttr(scale=jnp.ones((1, 192))), X, Y, verbose=0, devices=None)
    with pytest.warns(UserWarning, match=r"ArrayAttr's attribute scale = .* cannot be recorded"):
        checkpoint.export(tmp_path / "m", state)
    with pytest.raises(jaxcnn.errors.CheckpointError, match=r"model=ArrayAttr\(\.\.\.\)"):
        checkpoint.load_state(tmp_path / "m")


def test_a_search_whose_labels_are_out_of_range_points_at_the_labels():
    # every trial invalid on a label out of range was told to check the images and the space
    from jaxcnn import search

    class Mine(nn.Module):
        features: int  # no default: built by the trials alone (one with defaults is checked before the study)

        @nn.compact
        def __call__(self, x):
            return nn.Dense(5)(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))

    y = np.arange(16) % 5
    y[3] = 7
    with pytest.warns(UserWarning, match=r"every trial of the search was invalid.*y holds label 7 .*; check that the labels are "
                      r"the model's classes, 0\.\.classes-1$"):
        result = search.random_search(X, y, {"features": search.Choice((4, 8))}, model=Mine, trials=1, epochs=1, batch_size=8,
                                      verbose=0)
    with pytest.raises(jaxcnn.errors.ConfigError, match="trial 1 has no saved model \\(status 'invalid'\\); models are saved by"):
        result.trials[0].load_state()
