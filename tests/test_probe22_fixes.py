"""Session 22's fixes: each test fails without its fix."""

from __future__ import annotations

import flax.linen as nn
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
