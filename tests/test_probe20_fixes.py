"""What two new-user probes found in session 20 (a researcher with their own models on every
path; a student on the command line), on the library side: each test fails without its fix."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn.errors import ShapeError
from jaxcnn.summary import model_summary
from jaxcnn.train import create_train_state, eval_step, train_step

rng = np.random.default_rng(0)
X = rng.uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
Y = np.arange(16) % 10


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(4, (1, 1))(nn.relu(nn.Conv(8, (3, 3))(x)))


class BlockNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(Block()(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.b = nnx.Conv(8, 4, (1, 1), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.b(nnx.relu(self.a(x))))


class NNXBlockNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.block = NNXBlock(rngs)
        self.out = nnx.Linear(4 * 8 * 8, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(self.block(x).reshape(x.shape[0], -1))


def test_summary_explains_a_block_of_layers_as_the_sum_of_its_layers():
    # A block of two convolutions was explained by one of them: "(3x3x3 + 1) x 8 = 260" (224).
    linen = model_summary(BlockNet(), (8, 8, 3))
    assert linen.rows[0].explanation == "Conv_0 36 + Conv_1 224 = 260"  # Conv_0 is the 1x1, built first
    assert linen.rows[2].explanation == "(256 + 1) x 10 = 2,570"  # one layer: its formula, as before
    assert linen.rows[1].explanation == "4 + 4 + 4 + 4 = 16"  # a Flax BatchNorm: one scope, by shapes
    nnx_summary = model_summary(NNXBlockNet(rngs=nnx.Rngs(0)), (8, 8, 3))
    assert nnx_summary.rows[0].explanation == "a 224 + b 36 + bn 16 = 276"
    assert nnx_summary.rows[0].output_shape == ("None", 8, 8, 4)


def test_summary_of_an_nnx_model_on_images_it_cannot_take_says_so():
    # It printed every output shape as "(?)" and no error; a linen model's summary raises.
    with pytest.raises(ShapeError, match=r"NNXBlockNet cannot be applied to images of shape \(16, 16, 3\) \(a batch of 1\)"):
        jaxcnn.summary(NNXBlockNet(rngs=nnx.Rngs(0)), (16, 16, 3))


class SoftmaxOut(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.softmax(nn.Dense(10)(x.reshape(x.shape[0], -1)))


def test_the_pure_steps_take_a_softmax_output_as_probabilities():
    # create_train_state left from_logits undecided, which the steps took as logits: eval_step's
    # loss was that of a second softmax (2.3000 against evaluate's 2.3562), and train_step trained so.
    state = create_train_state(SoftmaxOut(), (8, 8, 3), "sgd", 0.1)
    assert state.loss.from_logits is False
    batch = {"x": jnp.asarray(X), "y": jnp.asarray(Y)}
    probs = np.asarray(jaxcnn.predict(state, X))
    by_hand = float(-np.log(probs[np.arange(16), Y]).mean())
    assert float(eval_step(state, batch)["loss_sum"]) / 16 == pytest.approx(by_hand, rel=1e-5)
    assert jaxcnn.evaluate(state, X, Y)["loss"] == pytest.approx(by_hand, rel=1e-5)
    trained, _ = train_step(state, batch)
    fitted, _ = jaxcnn.fit(SoftmaxOut(), X, Y, epochs=1, batch_size=16, optimizer="sgd", learning_rate=0.1, verbose=0,
                           shuffle=False)
    np.testing.assert_allclose(trained.params["Dense_0"]["kernel"], fitted.params["Dense_0"]["kernel"], atol=1e-6)
    # a logits model stays logits
    assert create_train_state(BlockNet(), (8, 8, 3)).loss.from_logits is True


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_standardised_inputs_do_not_get_the_unscaled_pixels_warning(recwarn):
    # mean 0, standard deviation 1 (torchvision's Normalize): values up to about 5, and below 0
    z = rng.standard_normal((16, 8, 8, 3)).astype(np.float32) * 2
    jaxcnn.fit(Tiny(), z, Y, epochs=1, batch_size=8, verbose=0)
    assert not [w for w in recwarn if "pixel values up to" in str(w.message)]
    with pytest.warns(UserWarning, match="pixel values up to"):  # 0..255 floats still warn
        jaxcnn.fit(Tiny(), X * 255, Y, epochs=1, batch_size=8, verbose=0)
    with pytest.warns(UserWarning, match="pixel values up to 127"):  # and centred ones (a regression probe)
        jaxcnn.fit(Tiny(), X * 255 - 127.5, Y, epochs=1, batch_size=8, verbose=0)


def test_a_plain_object_callback_gets_self_model_as_keras_gives_it():
    # README: an object with only some hooks works; self.model.stop_training then raised AttributeError.
    class Stopper:
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    _, history = jaxcnn.fit(Tiny(), X, Y, epochs=5, batch_size=8, verbose=0, callbacks=[Stopper()])
    assert len(history.epoch) == 1


def test_data_smaller_than_the_batch_that_does_not_divide_over_the_devices_says_why():
    import jax

    if len(jax.devices("cpu")) < 2:
        pytest.skip("needs 2 CPU devices")
    with pytest.raises(Exception, match=r"^the training data has 5 examples, fewer than batch_size 128, so its one batch of 5 "
                                        r"does not divide over 2 devices; .*devices=None for one device"):
        jaxcnn.fit(Tiny(), X[:5], Y[:5], epochs=1, batch_size=128, devices=2, verbose=0)


def test_a_resume_with_a_callback_added_that_keeps_no_state(tmp_path):
    # "the checkpoint holds the state of 4 callbacks but 3 were given": a progress printer added
    # (or dropped) for the resume refused it. The callbacks that keep state still must match.
    from jaxcnn import callbacks
    from jaxcnn.errors import ConfigError

    class Printer:
        def on_epoch_end(self, epoch, logs=None):
            pass

    def run(cbs, epochs, d):
        return jaxcnn.fit(Tiny(), X, Y, epochs=epochs, batch_size=8, verbose=0, validation_split=0.25,
                          checkpoint_dir=d, resume=True, callbacks=cbs)

    whole = run([callbacks.ReduceLROnPlateau(patience=2, factor=0.5, min_delta=1.0)], 4, tmp_path / "whole")
    run([callbacks.ReduceLROnPlateau(patience=2, factor=0.5, min_delta=1.0)], 2, tmp_path / "cut")
    resumed = run([Printer(), callbacks.ReduceLROnPlateau(patience=2, factor=0.5, min_delta=1.0), Printer()], 4, tmp_path / "cut")
    for key in ("loss", "val_loss", "learning_rate"):  # the rate the plateau callback halved, resumed with its state
        assert resumed.history[key] == whole.history[key], key
    assert whole.history["learning_rate"][3] == pytest.approx(whole.history["learning_rate"][0] / 2)  # halved after epoch 3:
    # the wait counted in the first run's epochs 1-2 came back with the resume
    with pytest.raises(ConfigError, match=r"^the run's callbacks that keep state were ReduceLROnPlateau\(val_loss\) but "
                                          r"ReduceLROnPlateau\(val_loss\), EarlyStopping\(val_loss\) were given; resume with the same"):
        run([callbacks.ReduceLROnPlateau(patience=1), callbacks.EarlyStopping(patience=3)], 5, tmp_path / "cut")
    # A regression probe: two callbacks that keep state swapped, or one dropped, got each other's state.
    run([callbacks.ReduceLROnPlateau(monitor="loss"), Printer(), callbacks.ReduceLROnPlateau(monitor="val_loss")], 1, tmp_path / "two")
    for given in ([callbacks.ReduceLROnPlateau(monitor="val_loss"), callbacks.ReduceLROnPlateau(monitor="loss")],
                  [callbacks.ReduceLROnPlateau(monitor="val_loss")]):
        with pytest.raises(ConfigError, match=r"were ReduceLROnPlateau\(loss\), ReduceLROnPlateau\(val_loss\) but"):
            run(given, 2, tmp_path / "two")


def test_a_run_checkpointed_before_get_optimizer_was_recorded_still_resumes():
    # get_optimizer's transformations now carry their JSON; a checkpoint written before holds
    # None for them (and a name as it was given, "RMSprop"): both still resume.
    import json

    from jaxcnn.train.loop import _same_optimizer

    spec = json.dumps({"name": "adamw", "learning_rate": 0.001, "kwargs": {"weight_decay": 0.01}})
    assert _same_optimizer(None, spec)
    assert _same_optimizer(json.dumps({"name": "RMSprop", "learning_rate": 0.001}), json.dumps({"name": "rmsprop", "learning_rate": 0.001}))
    assert not _same_optimizer(json.dumps({"name": "adamw", "learning_rate": 0.001}), spec)
    assert not _same_optimizer(spec, None)


def test_a_resume_on_another_execution_strategy_says_so(tmp_path, recwarn):
    # The command line printed a note; the library resumed silently (epoch 3's loss 2.17395
    # against 2.17455 uninterrupted).
    import jax

    if len(jax.devices("cpu")) < 2:
        pytest.skip("needs 2 CPU devices")
    x, y = np.concatenate([X] * 6), np.concatenate([Y] * 6)  # 96: batches of 96 cut into 3 parts
    jaxcnn.fit(Tiny(), x, y, epochs=1, batch_size=96, verbose=0, checkpoint_dir=tmp_path, resume=True)  # "auto": parts
    jaxcnn.fit(Tiny(), x, y, epochs=2, batch_size=96, verbose=0, checkpoint_dir=tmp_path, resume=True)  # the same: silent
    assert not [w for w in recwarn if "resuming a run" in str(w.message)]
    # parts dealt to 1 CPU device instead of 2 (JAXCNN_CPU_DEVICES) are the same parts: a
    # regression probe saw a false warning
    from jaxcnn.train.loop import _strategy_meta
    from jaxcnn.train.strategies import Parts

    state = create_train_state(Tiny(), (8, 8, 3))
    cpus = jax.devices("cpu")
    assert _strategy_meta(Parts(cpus[:1]), 96, state) == _strategy_meta(Parts(cpus[:2]), 96, state) == {"name": "parts", "parts": 3}
    with pytest.warns(UserWarning, match=r"^resuming a run trained with batches cut into 3 parts \(the parts strategy\) with "
                                         r"whole batches on one device \(the single strategy\): .* resume with the devices= it"):
        jaxcnn.fit(Tiny(), x, y, epochs=3, batch_size=96, verbose=0, checkpoint_dir=tmp_path, resume=True, devices=None)
    # a batch of one part is the whole batch, as on one device: no warning from parts to single
    jaxcnn.fit(Tiny(), X, Y, epochs=1, batch_size=8, verbose=0, checkpoint_dir=tmp_path / "one", resume=True)
    jaxcnn.fit(Tiny(), X, Y, epochs=2, batch_size=8, verbose=0, checkpoint_dir=tmp_path / "one", resume=True, devices=None)
    assert not [w for w in recwarn if "resuming a run" in str(w.message)]


class SoftmaxInEvaluationOnly(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dropout(0.2, deterministic=not train)(nn.Dense(10)(x.reshape(x.shape[0], -1)))
        return x if train else nn.softmax(x)


def test_a_model_with_a_softmax_in_evaluation_only_is_refused():
    # A regression probe: create_train_state took its evaluation outputs as probabilities, so
    # train_step treated training logits as probabilities (losses 0 and 16). fit decided the same
    # way before. One loss serves both modes: it is refused, saying what to do.
    from jaxcnn.errors import ConfigError

    message = r"^SoftmaxInEvaluationOnly returns probabilities in evaluation but not in training .* apply the softmax in both"
    with pytest.raises(ConfigError, match=message):
        create_train_state(SoftmaxInEvaluationOnly(), (8, 8, 3))
    with pytest.raises(ConfigError, match=message):
        jaxcnn.fit(SoftmaxInEvaluationOnly(), X, Y, epochs=1, batch_size=8, verbose=0)
    # a softmax in both modes, with dropout before it, trains as probabilities
    state, _ = jaxcnn.fit(SoftmaxOut(), X, Y, epochs=1, batch_size=8, verbose=0)
    assert state.loss.from_logits is False
