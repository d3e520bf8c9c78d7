"""Session 21's fixes on the library side: each test fails without its fix."""

from __future__ import annotations

import warnings

import flax.linen as nn
import numpy as np
import pytest

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
