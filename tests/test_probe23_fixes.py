"""Session 23's fixes (what session 22's last probes found): each test fails without its fix."""

from __future__ import annotations

import dataclasses
import warnings

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxcnn
from jaxcnn import search

rng = np.random.default_rng(0)
X = rng.uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
Y = np.arange(16) % 10
OPTS = dict(trials=1, epochs=1, batch_size=8, verbose=0)


class Flat(nn.Module):  # no train argument
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("height", [2, 3])
def test_small_images_given_as_lists_of_rows_are_images_not_pairs(height):
    # [list(im) for im in images] with 2 or 3 rows was taken for (x, y) examples and refused
    images = rng.uniform(0, 1, (4, height, 5, 1)).astype(np.float32)
    state = jaxcnn.create_train_state(Flat(), images.shape[1:])
    np.testing.assert_array_equal(jaxcnn.predict(state, [list(im) for im in images], verbose=0),
                                  jaxcnn.predict(state, images, verbose=0))
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"x is a list of \(x, y\) examples"):  # pairs still are
        jaxcnn.predict(state, [(im, 1) for im in images], verbose=0)


def test_bad_validation_labels_point_the_search_at_the_labels():
    # the hint tested the reason's start for "y " and missed "validation y holds label ..."
    class Mine(nn.Module):
        features: int  # no default: built by the trials alone (one with defaults is checked before the study)

        @nn.compact
        def __call__(self, x):
            return nn.Dense(5)(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))

    y = np.arange(16) % 5
    y_val = y.copy()
    y_val[3] = 7
    with pytest.warns(UserWarning, match=r"validation y holds label 7 .*check that the labels are the model's classes"):
        search.random_search(X, y, {"features": search.Choice((4, 8))}, model=Mine, validation_data=(X, y_val), **OPTS)


def test_a_trial_reloads_a_model_class_defined_in_a_function(tmp_path):
    # Trial.load_state() refused without out= (the weights in memory), and could not rebuild a
    # class defined in a function (not importable) from its saved model
    class Local(nn.Module):
        features: int = 4

        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))

    space = {"features": search.Choice((4, 8))}
    result = search.random_search(X, Y, space, model=Local, **OPTS)
    state = result.best.load_state()
    jax.tree.map(np.testing.assert_array_equal, state.params, result.best.params)
    assert jaxcnn.evaluate(state, X, Y, verbose=0)["loss"] == pytest.approx(result.best.history.history["loss"][-1], rel=0.5)
    jaxcnn.fit(state, X, Y, epochs=1, verbose=0, devices=None)  # a fresh optimizer state to train on
    saved = search.random_search(X, Y, space, model=Local, out=tmp_path, **OPTS)
    with pytest.raises(jaxcnn.errors.CheckpointError):  # the class cannot be imported from its name
        jaxcnn.checkpoint.load_state(saved.best.model_dir)
    again = saved.best.load_state(optimizer="adam")  # from the saved model, with the module built here
    jax.tree.map(np.testing.assert_array_equal, again.params, saved.best.params)


def _ones() -> np.ndarray:
    return np.ones((1, 192), np.float32)


class Scaled(nn.Module):
    scale: np.ndarray = dataclasses.field(default_factory=_ones)

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1) * self.scale)


def test_an_array_attribute_at_its_default_exports_and_reloads(tmp_path):
    # a default_factory array was compared with == (ambiguous), taken for a changed value,
    # warned about and left unsaved, so the reload asked for the module
    from jaxcnn import checkpoint

    state, _ = jaxcnn.fit(Scaled(), X, Y, verbose=0, devices=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.export(tmp_path / "m", state)
    np.testing.assert_array_equal(jaxcnn.predict(checkpoint.load_state(tmp_path / "m"), X, verbose=0),
                                  jaxcnn.predict(state, X, verbose=0))
    state, _ = jaxcnn.fit(Scaled(scale=2 * _ones()), X, Y, verbose=0, devices=None)
    with pytest.warns(UserWarning, match=r"Scaled's attribute scale = .* cannot be recorded"):
        checkpoint.export(tmp_path / "twice", state)


def test_a_changed_metric_is_not_told_the_old_mode_default(tmp_path):
    # the "mode='max' continues a study ..." hint fired when the metric itself changed
    space = {"learning_rate": search.Choice((1e-3, 1e-2))}
    search.random_search(X, Y, space, model=Flat, out=tmp_path, **OPTS)
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"differs in .*metric") as err:
        search.random_search(X, Y, space, model=Flat, out=tmp_path, metric="val_loss", **OPTS)
    assert "mode='max'" not in str(err.value)


def test_the_pure_steps_say_what_a_bad_weight_or_label_shape_needs():
    # "w": None said "give arrays"; a scalar "y" raised IndexError
    state = jaxcnn.create_train_state(Flat(), (8, 8, 3))
    with pytest.raises(jaxcnn.errors.ConfigError, match=r'^train_step: batch\["w"\] is None; leave the key out'):
        jaxcnn.train_step(state, {"x": X, "y": Y, "w": None})
    with pytest.raises(jaxcnn.errors.ConfigError, match=r'^eval_step: batch\["y"\] has shape \(\) for 16 images; give one per'):
        jaxcnn.eval_step(state, {"x": X, "y": np.int32(3)})
    with pytest.raises(jaxcnn.errors.ConfigError, match=r'^train_step: batch\["w"\] has shape \(8,\) for 16 images'):
        jaxcnn.train_step(state, {"x": X, "y": Y, "w": np.ones(8)})
    _, metrics = jaxcnn.train_step(state, {"x": X, "y": Y, "w": np.ones(16, np.float32)})
    assert float(metrics["count"]) == 16


def test_a_log_axis_under_a_decade_is_labelled_with_the_trials_values():
    # matplotlib labelled the minor ticks of a narrow log range (2x10^-4, 3x10^-4, ... overlapping)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from jaxcnn.search import report

    values = [1e-4, 1.5e-4, 2e-4, 3e-4, 4e-4, 9e-4, 9.5e-4]
    rows = [{"trial": i + 1, "learning_rate": v, "status": "ok", "val_accuracy": 0.5 + 0.01 * i} for i, v in enumerate(values)]
    fig = report.params_figure(rows, ["learning_rate"], "val_accuracy", {"learning_rate": "log"})
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ax = fig.axes[0]
    left, right = ax.get_xlim()
    shown = [t for t in ax.get_xticklabels(which="both") if t.get_text() and left <= t.get_position()[0] <= right]
    assert [t.get_text() for t in shown] == ["0.0001", "0.0002", "0.0004", "0.0009"]
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in shown]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_a_trial_whose_model_raises_is_announced_with_its_values(capsys):
    # a model that raised while being built printed only "Trial 1: no epoch finished [error: ...]",
    # without the values it was built with
    def broken(trial):
        trial.suggest_categorical("features", [4])
        raise RuntimeError("my model is broken")

    with pytest.warns(UserWarning, match="every trial of the search raised an error"):
        search.random_search(X, Y, {}, model=broken, **{**OPTS, "verbose": 1})
    out = capsys.readouterr().out
    start = next(line for line in out.splitlines() if line.startswith("Trial 1/1:"))
    assert "features=4" in start and "my model is broken" in out.split(start, 1)[1]


def test_the_steps_per_epoch_slice_allows_for_validation_split():
    # the suggested x[:n] named training examples and forgot the share validation_split takes
    x = rng.uniform(0, 1, (100, 8, 8, 1)).astype(np.float32)
    y = np.arange(100) % 10
    with pytest.raises(jaxcnn.errors.ConfigError, match=r"80 examples .* x\[:63\], y\[:63\] \(validation_split=0\.2 keeps 50 "):
        jaxcnn.fit(Flat(), x, y, batch_size=10, steps_per_epoch=5, validation_split=0.2, verbose=0)
    jaxcnn.fit(Flat(), x[:63], y[:63], batch_size=10, steps_per_epoch=5, validation_split=0.2, verbose=0, devices=None)
