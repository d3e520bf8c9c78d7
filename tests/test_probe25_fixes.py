"""Session 25's fixes (what was noticed and left in session 24): each test fails without its fix."""

from __future__ import annotations

import flax.linen as nn
import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn import explain

rng = np.random.default_rng(0)
X = rng.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)


class ConvBN(nn.Module):  # Conv, BatchNorm, pool: Keras's usual block, with dropout and no train flag
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class NNXConvBN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(4 * 8 * 8, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        return nnx.softmax(self.fc(x.reshape(x.shape[0], -1)))


@pytest.mark.parametrize("make", [lambda: ConvBN(), lambda: NNXConvBN(nnx.Rngs(0))], ids=["linen", "nnx"])
def test_the_default_layer_is_the_last_convolution_not_the_batchnorm_after_it(make):
    # the default was "the last layer with weights", the BatchNorm (scale and bias), where the
    # docs say "the last convolution"
    state = jaxcnn.create_train_state(make(), (8, 8, 1))
    assert explain.layer_names(state)[:2] == ["conv", "bn"]
    np.testing.assert_array_equal(explain.feature_maps(state, X[:3]), explain.feature_maps(state, X[:3], "conv"))
    np.testing.assert_array_equal(explain.grad_cam(state, X[:3]), explain.grad_cam(state, X[:3], layer="conv"))


def test_a_model_of_batchnorm_only_defaults_to_it():
    class OnlyBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=True)(x)
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    state = jaxcnn.create_train_state(OnlyBN(), (8, 8, 1))
    np.testing.assert_array_equal(explain.feature_maps(state, X[:2]), explain.feature_maps(state, X[:2], "BatchNorm_0"))


@pytest.mark.parametrize("devices, message", [
    ("twice", "lists cpu:0 twice; each device takes one part of a batch, so list each once"),
    ([0, 1], "devices holds 0, which is not a jax device; pass jax devices"),
])
def test_a_list_of_devices_with_one_twice_or_a_non_device_is_refused(devices, message):
    # devices=[d0, d0] gave JAX's bare AssertionError; [0, 1] an AttributeError
    import jax

    if devices == "twice":
        devices = [jax.devices()[0]] * 2
    y = np.arange(16) % 10
    with pytest.raises(jaxcnn.errors.ConfigError, match=message.replace("(", r"\(")):
        jaxcnn.fit(ConvBN(), X, y, epochs=1, batch_size=8, devices=devices, verbose=0)


@pytest.mark.parametrize("columns, message", [
    (12, "12 columns look like one-hot labels of 12 classes, and the model has 10 outputs; for 12 classes the model's "
         "last layer needs 12 outputs"),
    (8, "for one-hot labels of 8 classes give the model 8 outputs, or give integer labels, y.argmax(1)"),
])
def test_one_hot_labels_of_another_width_say_what_to_change(columns, message):
    y = np.eye(columns, dtype=np.float32)[np.arange(16) % columns]
    with pytest.raises(jaxcnn.errors.ShapeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        jaxcnn.fit(ConvBN(), X, y, epochs=1, batch_size=8, verbose=0)


class Head(nn.Module):  # a search's model of one's own, with a default and no train flag
    width: int = 4

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Conv(self.width, (3, 3))(x)).reshape(x.shape[0], -1))


class NNXHead(nnx.Module):
    def __init__(self, width: int = 4, *, rngs):
        self.conv = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(width * 64, 10, rngs=rngs)

    def __call__(self, x):
        return nnx.softmax(self.fc(nnx.relu(self.conv(x)).reshape(x.shape[0], -1)))


@pytest.mark.parametrize("model", [Head, Head(width=3)], ids=["class", "instance"])
def test_a_search_refuses_labels_past_its_models_outputs_before_the_study(model, tmp_path):
    # labels 1..10 made every trial invalid, and the study kept them: the corrected labels in the
    # same out= were then refused as "a different search (it differs in data)"
    from jaxcnn import search
    from jaxcnn.search import Choice

    x = rng.uniform(0, 1, (60, 8, 8, 1)).astype(np.float32)
    y = np.arange(60) % 10
    kw = dict(model=model, trials=1, epochs=1, batch_size=16, out=tmp_path / "s", verbose=0)
    with pytest.raises(jaxcnn.errors.ShapeError, match=r"the model has 10 classes; labels 1..10 look numbered from 1"):
        search.random_search(x, y + 1, {"width": Choice((2, 4))}, **kw)
    assert not (tmp_path / "s" / "study.db").exists()
    result = search.random_search(x, y, {"width": Choice((2, 4))}, **kw)  # the corrected labels, the same out
    assert [t.status for t in result.trials] == ["ok"]


def test_a_search_model_that_needs_the_spaces_values_is_not_probed(tmp_path):
    # a class without defaults cannot be built before a trial: its trials report the labels, as before
    from jaxcnn import search
    from jaxcnn.search import Choice

    class NoDefault(nn.Module):
        width: int

        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.Conv(self.width, (3, 3))(x).reshape(x.shape[0], -1))

    x = rng.uniform(0, 1, (60, 8, 8, 1)).astype(np.float32)
    with pytest.warns(UserWarning, match="every trial of the search was invalid"):
        result = search.random_search(x, np.arange(60) % 10 + 1, {"width": Choice((2, 4))}, model=NoDefault, trials=1,
                                      epochs=1, batch_size=16, verbose=0)
    assert [t.status for t in result.trials] == ["invalid"]


def test_export_to_a_keras_file_name_warns_once_and_model_checkpoint_only_when_made(tmp_path):
    import warnings

    state = jaxcnn.create_train_state(ConvBN(), (8, 8, 1))
    with pytest.warns(UserWarning, match=r"writes a directory \(model.json, params.msgpack\), not Keras's .keras file; name it "
                      "without the extension") as w:
        jaxcnn.checkpoint.export(tmp_path / "model.keras", state)
    assert [r.filename for r in w] == [__file__]
    assert jaxcnn.checkpoint.load_state(tmp_path / "model.keras") is not None
    with pytest.warns(UserWarning, match="ModelCheckpoint") as w:
        cb = jaxcnn.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"))
    with warnings.catch_warnings():  # its exports do not warn again
        warnings.simplefilter("error")
        jaxcnn.fit(ConvBN(), X, np.arange(16) % 10, epochs=1, batch_size=8, verbose=0, callbacks=[cb])
    assert (tmp_path / "best.keras" / "model.json").is_file()


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam", "sgd"])
def test_a_learning_rate_of_0_is_taken_as_keras_takes_it_and_trains_nothing(optimizer):
    # 0 was refused ("must be a positive finite number"); Keras takes it (a sanity check, a frozen model)
    import jax

    model = ConvBN()
    start = jaxcnn.create_train_state(model, (8, 8, 1))
    result = jaxcnn.fit(model, X, np.arange(16) % 10, epochs=2, batch_size=8, optimizer=optimizer, learning_rate=0.0, verbose=0)
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(result.state.params)):
        np.testing.assert_array_equal(a, b)
    assert result.history["learning_rate"] == [0.0, 0.0]
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"^learning rate must be a finite number >= 0, got -1"):
        jaxcnn.fit(model, X, np.arange(16) % 10, learning_rate=-1, verbose=0)


def test_a_batchnorm_that_updates_its_statistics_in_evaluation_is_refused_before_training():
    # use_running_average=False always: fit trained the first epoch, then validation failed with
    # Flax's "collection batch_stats is immutable" (evaluate and predict too)
    class AlwaysBatch(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=False, name="bn")(nn.Conv(4, (3, 3))(x))
            return nn.Dense(10)(nn.relu(x).reshape(x.shape[0], -1))

    calls = []
    cb = jaxcnn.callbacks.LambdaCallback(on_epoch_end=lambda *a: calls.append(a))
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"^AlwaysBatch updates its batch statistics in evaluation too \(its "
                       r"layer 'bn': a BatchNorm with use_running_average=False\?\); .*use_running_average=not train"):
        jaxcnn.fit(AlwaysBatch(), X, np.arange(16) % 10, epochs=1, batch_size=8, validation_split=0.25, callbacks=[cb],
                   verbose=0)
    assert calls == []  # before any epoch
    # the models that switch with train (and jaxcnn.layers.BatchNorm, which follows fit's mode) train as before
    jaxcnn.fit(ConvBN(), X, np.arange(16) % 10, epochs=1, batch_size=8, validation_split=0.25, verbose=0)


def _ce(outputs, labels):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels)


def _mse(outputs, labels):
    import jax
    import jax.numpy as jnp

    return jnp.mean((jax.nn.softmax(outputs) - jax.nn.one_hot(labels, outputs.shape[-1])) ** 2, -1)


@pytest.mark.parametrize("first, then, message", [
    (dict(label_smoothing=0.0), dict(label_smoothing=0.3), r"label_smoothing=0.3 differs from 0.0"),
    (dict(loss=_ce), dict(loss=_mse), r"loss_function='test_probe25_fixes._mse' differs from 'test_probe25_fixes._ce'"),
    ("adam", "adam_fast", r"the optax optimizer's settings \(its learning rate, say\) differ from the run"),
])
def test_a_resume_with_another_loss_or_optax_optimizer_is_refused(first, then, message, tmp_path):
    # label_smoothing, a loss function of one's own and an optax optimizer's settings were not
    # compared: the resumed history mixed two runs
    import optax

    def kw(which):
        if which == "adam":
            return dict(optimizer=optax.adam(1e-3))
        if which == "adam_fast":
            return dict(optimizer=optax.adam(0.5))
        return which

    y = np.arange(16) % 10
    common = dict(batch_size=8, verbose=0, checkpoint_dir=tmp_path / "ck", resume=True)
    jaxcnn.fit(ConvBN(), X, y, epochs=1, **common, **kw(first))
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"^cannot resume from .*: " + message):
        jaxcnn.fit(ConvBN(), X, y, epochs=2, **common, **kw(then))
    result = jaxcnn.fit(ConvBN(), X, y, epochs=2, **common, **kw(first))  # the same settings resume
    assert len(result.history["loss"]) == 2


def test_predict_probs_of_outputs_taken_as_probabilities_sum_to_1_as_the_loss_divides_them():
    # a sigmoid output trained with from_logits=False: predict(output="probs") gave the raw
    # outputs (rows summing to 0.3..1.5), not the distribution the loss and evaluate use
    class Sig(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.sigmoid(nn.Dense(10)(x.reshape(x.shape[0], -1)))

    y = np.arange(16) % 10
    state, _ = jaxcnn.fit(Sig(), X, y, epochs=1, batch_size=8, verbose=0, from_logits=False)
    raw = jaxcnn.predict(state, X)
    probs = jaxcnn.predict(state, X, output="probs")
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, raw / raw.sum(1, keepdims=True), rtol=1e-6)
    loss = -np.log(np.clip(probs[np.arange(16), y], 1e-7, 1 - 1e-7)).mean()
    assert jaxcnn.evaluate(state, X, y)["loss"] == pytest.approx(loss, rel=1e-5)
    # a float32 softmax's outputs come back as they are
    soft = jaxcnn.create_train_state(NNXConvBN(nnx.Rngs(0)), (8, 8, 1))
    np.testing.assert_array_equal(jaxcnn.predict(soft, X, output="probs"), jaxcnn.predict(soft, X))


def test_labels_as_a_column_are_classes_in_the_host_metrics_and_plots():
    # (N, 1) labels, which fit and evaluate take, were argmaxed: every label became class 0
    from jaxcnn import metrics, plots

    y_true, y_pred = np.array([0, 1, 2, 2, 1]), np.array([0, 1, 2, 1, 1])
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true[:, None], y_pred[:, None], 3),
                                  metrics.confusion_matrix(y_true, y_pred, 3))
    assert "accuracy 0.8000" in plots.confusion_matrix(y_true[:, None], np.eye(3)[y_pred]).axes[0].get_title()
    fig = plots.labelled_images(np.zeros((5, 8, 8, 1), np.float32), y_true[:, None], [0, 3], predicted=y_pred[:, None])
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["Actual: 0, Predicted: 0", "Actual: 2, Predicted: 1"]


def test_a_loss_for_one_hot_labels_given_integer_labels_says_so():
    # optax.softmax_cross_entropy with integer labels was told to swap to Keras's order, which
    # failed again and then suggested "<lambda>(labels, outputs)"
    import optax

    y = np.arange(16) % 10
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"it takes one-hot labels \(B, C\): pass y one-hot .*"
                       r"optax.softmax_cross_entropy_with_integer_labels"):
        jaxcnn.fit(ConvBN(), X, y, loss=optax.softmax_cross_entropy, verbose=0)

    def keras_style(y_true, y_pred):  # Keras's order, failing on the shapes
        return optax.softmax_cross_entropy_with_integer_labels(y_pred, y_true)

    with pytest.raises(jaxcnn.errors.ConfigError, match=r"it looks Keras-style, loss\(y_true, y_pred\): pass lambda outputs, "
                       r"labels: your_loss\(labels, outputs\)"):
        jaxcnn.fit(ConvBN(), X, y, loss=lambda a, b: keras_style(a, b), verbose=0)


def test_fit_says_it_leaves_the_confusion_matrix_out_of_its_logs():
    # metrics=["confusion_matrix"] was accepted by fit and silently dropped from every log
    y = np.arange(16) % 10
    with pytest.warns(UserWarning, match=r"so 'confusion_matrix' \(an array\) is left out of the history.*jaxcnn.evaluate\(state, "
                      r"x, y, metrics=\['confusion_matrix'\]\)") as w:
        result = jaxcnn.fit(ConvBN(), X, y, epochs=1, batch_size=8, metrics=["confusion_matrix", "f1"], verbose=0)
    assert [r.filename for r in w if "confusion_matrix" in str(r.message)] == [__file__]
    assert "f1" in result.history and "confusion_matrix" not in result.history
    assert jaxcnn.evaluate(result.state, X, y, metrics=["confusion_matrix"])["confusion_matrix"].sum() == 16


def test_early_stopping_on_an_epoch_without_validation_names_validation_freq():
    # "pass validation data" was said although validation data was passed, on the epochs
    # validation_freq skips
    y = np.arange(16) % 10
    with pytest.warns(UserWarning, match=r"^EarlyStopping monitors 'val_loss', which is not in the logs of epoch 1 .*fit validates "
                      r"every 2 epochs \(validation_freq=2\)"):
        jaxcnn.fit(ConvBN(), X, y, epochs=2, batch_size=8, validation_split=0.25, validation_freq=2, verbose=0,
                   callbacks=[jaxcnn.EarlyStopping(monitor="val_loss", patience=0)])


def test_two_channel_images_channels_first_are_told_to_transpose():
    # (N, 2, 28, 28) trained as 2x28 images of 28 channels
    x = rng.uniform(0, 1, (16, 2, 12, 12)).astype(np.float32)
    with pytest.raises(jaxcnn.errors.ShapeError, match=r"looks channels-first \(N, C, H, W\).*x.transpose\(0, 2, 3, 1\)"):
        jaxcnn.fit(ConvBN(), x, np.arange(16) % 10, verbose=0)


def test_auto_mode_warns_for_a_name_it_cannot_place():
    # a custom score (val_top2) was minimised silently in auto mode, where Keras raises
    import warnings

    with pytest.warns(UserWarning, match=r"^EarlyStopping\(monitor='val_top2'\) cannot tell whether it should rise or fall "
                      r"\(Keras raises here\); it is minimised: pass mode='max'") as w:
        jaxcnn.EarlyStopping(monitor="val_top2")
    assert [r.filename for r in w] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for monitor in ("val_loss", "val_accuracy", "val_f1", "mae", "val_my_error"):
            jaxcnn.EarlyStopping(monitor=monitor)
        jaxcnn.EarlyStopping(monitor="val_top2", mode="max")


class NNXRenamed(nnx.Module):  # keeps its width under another name: an export cannot record it
    def __init__(self, width: int = 8, *, rngs):
        self.w = width
        self.conv = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(width * 64, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))


def test_reloading_a_module_whose_argument_was_not_recorded_suggests_model(tmp_path):
    state = jaxcnn.create_train_state(NNXRenamed(6, rngs=nnx.Rngs(0)), (8, 8, 1))
    with pytest.warns(UserWarning, match="does not keep as a plain attribute self.width"):
        jaxcnn.checkpoint.export(tmp_path / "m", state)
    with pytest.raises(jaxcnn.errors.CheckpointError, match=r"another architecture\? Or was the module built with an argument "
                       r"the export could not record .* load_state\(directory, model=\.\.\.\)$"):
        jaxcnn.checkpoint.load_state(tmp_path / "m")
    again = jaxcnn.checkpoint.load_state(tmp_path / "m", model=NNXRenamed(6, rngs=nnx.Rngs(1)))
    np.testing.assert_array_equal(jaxcnn.predict(again, X), jaxcnn.predict(state, X))


class Outputs(nn.Module):  # its outputs follow a searched attribute
    outputs: int = 2

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("model, space", [
    (Outputs, {"outputs": "five"}),         # a searched attribute sets the outputs: the defaults' 2 would refuse labels 0..4
    (NNXHead, {"width": "choice"}),         # NNX: not built before the study (it would make its weights)
], ids=["outputs-from-the-space", "nnx"])
def test_a_search_whose_outputs_cannot_be_known_before_its_trials_is_not_refused(model, space, tmp_path):
    from jaxcnn import search
    from jaxcnn.search import Choice

    space = {"outputs": Choice((5,))} if "outputs" in space else {"width": Choice((2, 4))}
    x = rng.uniform(0, 1, (60, 8, 8, 1)).astype(np.float32)
    y = np.arange(60) % 5
    result = search.random_search(x, y, space, model=model, trials=1, epochs=1, batch_size=16, verbose=0)
    assert [t.status for t in result.trials] == ["ok"]


def test_predict_probs_of_a_loss_of_ones_own_are_the_outputs_as_they_are():
    # multi-label sigmoids trained with a binary cross-entropy of one's own: per-label
    # probabilities, not divided by their row sums
    import jax.numpy as jnp

    class Multi(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.sigmoid(nn.Dense(4)(x.reshape(x.shape[0], -1)))

    y = (np.arange(64).reshape(16, 4) % 3 == 0).astype(np.float32)

    def bce(outputs, labels):
        p = jnp.clip(outputs, 1e-7, 1 - 1e-7)
        return -(labels * jnp.log(p) + (1 - labels) * jnp.log(1 - p)).mean(-1)

    state, _ = jaxcnn.fit(Multi(), X, y, epochs=1, batch_size=8, verbose=0, loss=bce, from_logits=False)
    np.testing.assert_array_equal(jaxcnn.predict(state, X, output="probs"), jaxcnn.predict(state, X))


def test_labelled_images_take_string_digit_labels_as_before():
    from jaxcnn import plots

    fig = plots.labelled_images(np.zeros((3, 8, 8, 1), np.float32), np.array(["0", "1", "2"]))
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["0", "1", "2"]
    fig = plots.labelled_images(np.zeros((3, 8, 8, 1), np.float32), np.array(["cat", "dog", "eel"]))  # names as labels
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["cat", "dog", "eel"]


def test_a_search_whose_outputs_follow_an_attribute_of_another_name_runs():
    # units: int = 3 with the space Choice((3, 5)) and labels 0..4: the defaults and trial 1 gave 3
    # outputs, and the search was refused although trials 2 and 3 had 5
    from jaxcnn import search
    from jaxcnn.search import Choice

    class Units(nn.Module):
        units: int = 3

        @nn.compact
        def __call__(self, x):
            return nn.Dense(self.units)(x.reshape(x.shape[0], -1))

    x = rng.uniform(0, 1, (60, 8, 8, 1)).astype(np.float32)
    result = search.random_search(x, np.arange(60) % 5, {"units": Choice((3, 5))}, model=Units, trials=3, epochs=1,
                                  batch_size=16, seed=2, verbose=0)
    assert sorted(t.status for t in result.trials) == ["invalid", "ok", "ok"]


def test_the_optax_fingerprint_reads_numbers_as_the_optimizer_does():
    import optax

    from jaxcnn.train.loop import _optax_settings

    assert _optax_settings(optax.adam(np.float32(1e-3))) == _optax_settings(optax.adam(1e-3))
    assert _optax_settings(optax.sgd(1)) == _optax_settings(optax.sgd(1.0))
    assert _optax_settings(optax.sgd(0.1, 0.9, nesterov=True)) == _optax_settings(optax.sgd(0.1, 0.9, nesterov=1))
    assert _optax_settings(optax.adam(1e-3)) != _optax_settings(optax.adam(2e-3))
