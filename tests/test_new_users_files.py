"""A researcher bringing their own Flax models: NNX classes in the search, exports that are files
or live in ``__main__``, resumes on other devices, labels that are not whole numbers."""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn import checkpoint, search
from jaxcnn.errors import CheckpointError, ConfigError, ShapeError


class SmallNNX(nnx.Module):
    """nnx.Conv + nnx.Linear, with a ``features`` constructor argument kept as an attribute."""

    def __init__(self, features: int = 4, *, rngs: nnx.Rngs):
        self.features = features
        self.conv = nnx.Conv(1, features, (3, 3), strides=(2, 2), rngs=rngs)
        self.out = nnx.Linear(14 * 14 * features, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x))
        return self.out(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def small():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:300]), ds.y_train[:300]


@pytest.fixture(scope="module")
def trained(small):
    state, _ = jaxcnn.fit(SmallNNX(2, rngs=nnx.Rngs(0)), *small, epochs=1, batch_size=64, verbose=0)
    return state


# -- 1. an NNX class as the search model -----------------------------------------------------------


def test_an_nnx_class_is_searched_with_the_space_values_and_the_trial_seed(small, tmp_path):
    space = {"features": search.Choice([2, 3])}
    result = search.random_search(*small, space, model=SmallNNX, trials=2, epochs=1, batch_size=64, verbose=0, out=tmp_path)
    assert [t.status for t in result.trials] == ["ok", "ok"], [t.reason for t in result.trials]
    for t in result.trials:
        module, variables, _ = checkpoint.load(tmp_path / "trials" / f"{t.trial:03d}" / "model")
        assert isinstance(module, SmallNNX) and module.features == t.hyperparameters["features"]
        assert variables["params"]["conv"]["kernel"].shape[-1] == t.hyperparameters["features"]
    # Built with the trial's seed: trial 1's initial weights are those of Rngs(its seed).
    from jaxcnn.search.engine import build_model

    seed = search.trial_seed(0, 1)
    a, _ = build_model(SmallNNX, None, {"features": 2}, seed)
    b = SmallNNX(2, rngs=nnx.Rngs(seed))
    np.testing.assert_array_equal(np.asarray(a.conv.kernel[...]), np.asarray(b.conv.kernel[...]))


def test_a_misspelt_key_for_an_nnx_class_is_refused_before_anything_is_written(small, tmp_path):
    out = tmp_path / "rs"
    with pytest.raises(ConfigError, match=r"'featurs' \(did you mean 'features'\?\) is neither an argument"):
        search.random_search(*small, {"featurs": search.Choice([2, 3])}, model=SmallNNX, trials=2, epochs=1, verbose=0, out=out)
    assert not out.exists() or not any(out.iterdir())


def test_an_nnx_instance_as_the_search_model_asks_for_its_class(small):
    with pytest.raises(ConfigError, match=r"NNX module instance \(SmallNNX\).*pass its class, model=SmallNNX"):
        search.random_search(*small, {"features": search.Choice([2])}, model=SmallNNX(2, rngs=nnx.Rngs(0)), trials=1, verbose=0)


# -- 2. a resume on other --devices says its history may differ ------------------------------------


def test_a_resume_on_other_devices_prints_a_note(tmp_path, capsys):
    from experiments import mnist
    from experiments.common import main_guard

    out = tmp_path / "run"
    base = ["--limit", "300", "--test-limit", "500", "--batch-size", "64", "--out", str(out)]
    assert main_guard(mnist.main, [*base, "--epochs", "1", "--verbose", "0"]) == 0
    capsys.readouterr()
    same = tmp_path / "same"
    import shutil

    shutil.copytree(out, same)
    assert main_guard(mnist.main, ["--resume", "--out", str(out), "--epochs", "2", "--devices", "1", "--verbose", "1"]) == 0
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, printed
    assert "--devices 1" in notes[0] and "may then differ from an uninterrupted run" in notes[0]
    assert "dropout masks and float summation follow the devices" in notes[0]
    import warnings  # the library's strategy warning, which the note replaces, is silenced only inside the run

    assert not [f for f in warnings.filters if f[1] is not None and "resuming a run" in f[1].pattern]
    # --devices unchanged (left out): no note.
    assert main_guard(mnist.main, ["--resume", "--out", str(same), "--epochs", "2", "--verbose", "1"]) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "note:" not in printed


def test_the_devices_note_takes_the_default_as_auto():
    from experiments.common import RunConfig, devices_note

    assert devices_note(RunConfig(devices=None), RunConfig(devices="auto")) is None
    assert devices_note(RunConfig(devices=2), RunConfig(devices=2)) is None
    assert devices_note(None, RunConfig(devices=1)) is None  # a new run
    assert devices_note(RunConfig(devices=None), RunConfig(devices=1)).startswith(
        "note: the run was started with --devices auto and resumes with --devices 1;"
    )


# -- 3. export, load and load_state given a file -------------------------------------------------


def test_export_load_and_load_state_to_a_file_are_one_line_errors(trained, tmp_path):
    path = tmp_path / "model.bin"
    path.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a directory.*choose a directory"):
        checkpoint.export(path, trained)
    assert path.read_text() == "x"
    for fn in (checkpoint.load, checkpoint.load_state):
        with pytest.raises(CheckpointError, match="is a file, not a directory"):
            fn(path)
    with pytest.raises(CheckpointError, match="cannot create the export directory"):
        checkpoint.export(path / "sub", trained)


# -- 4. a class in __main__: export warns, reloading says load_state(directory, model=...) -----------


@pytest.fixture
def main_class(monkeypatch):
    """SmallNNX as if defined in the script being run (``__main__``)."""
    main = types.ModuleType("__main__")
    cls = type("MainNNX", (SmallNNX,), {"__module__": "__main__"})
    main.MainNNX = cls
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(checkpoint, "_WARNED_MAIN", set())  # the warning comes once per class and process
    return cls


def test_export_of_a_class_in_main_warns_at_the_users_line(main_class, small, tmp_path):
    state, _ = jaxcnn.fit(main_class(2, rngs=nnx.Rngs(0)), *small, epochs=1, batch_size=64, verbose=0)
    with pytest.warns(UserWarning, match=r"MainNNX is defined in __main__.*load_state\(directory, model=MainNNX\(\.\.\.\)\)") as w:
        checkpoint.export(tmp_path / "m", state)
    # the export's directory is named: inside fit, ModelCheckpoint's export warns at the fit line
    assert any(str(r.message).startswith(f"exporting to {tmp_path / 'm'}: ") for r in w)
    assert [r.filename for r in w if "__main__" in str(r.message)] == [__file__]
    with warnings.catch_warnings():  # a search exports every trial: the warning is not repeated
        warnings.simplefilter("error")
        checkpoint.export(tmp_path / "m2", state)



def test_export_of_an_importable_class_does_not_warn(trained, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.export(tmp_path / "plain", trained)


def test_reloading_a_main_class_elsewhere_suggests_load_state(main_class, small, tmp_path, monkeypatch):
    state, _ = jaxcnn.fit(main_class(2, rngs=nnx.Rngs(0)), *small, epochs=1, batch_size=64, verbose=0)
    with pytest.warns(UserWarning):
        checkpoint.export(tmp_path / "m", state)
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # another script
    with pytest.raises(CheckpointError, match=r"cannot be imported here.*jaxcnn\.checkpoint\.load_state\(directory, model=MainNNX\(\.\.\.\)\)") as e:
        checkpoint.load_state(tmp_path / "m")
    assert "checkpoint.load(directory" not in str(e.value)
    again = checkpoint.load_state(tmp_path / "m", model=SmallNNX(2, rngs=nnx.Rngs(1)))
    np.testing.assert_allclose(jaxcnn.predict(again, small[0][:5]), jaxcnn.predict(state, small[0][:5]), rtol=1e-5, atol=1e-6)


# -- 5. labels that are not whole numbers -----------------------------------------------------------


def test_a_label_that_is_not_a_whole_number_is_named_with_its_index():
    from jaxcnn.checks import check_labels

    y = np.array([0.0, 1.0, 2.0, 1.5, 3.0, 4.25])
    with pytest.raises(ShapeError, match=r"^y holds 1\.5 at index 3; labels must be whole numbers 0\.\.9 \(2 labels are not\)$"):
        check_labels(y, len(y), 10)
    np.testing.assert_array_equal(check_labels(np.array([0.0, 1.0, 9.0]), 3, 10), [0, 1, 9])  # whole floats: fine
    with pytest.raises(ShapeError, match=r"y has dtype <U1; labels must be integers 0\.\.9"):
        check_labels(np.array(["a", "b"]), 2, 10)


def test_fit_names_the_first_fractional_label(small):
    x, y = small
    y = y[:64].astype(np.float64)
    y[7] = 2.5
    with pytest.raises(ShapeError, match=r"y holds 2\.5 at index 7; labels must be whole numbers"):
        jaxcnn.fit(SmallNNX(2, rngs=nnx.Rngs(0)), x[:64], y, epochs=1, verbose=0)


# -- 6. nnx.Dropout built without rngs ------------------------------------------------------------


class DropoutNoRngs(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(784, 10, rngs=rngs)
        self.drop = nnx.Dropout(0.5)  # no rngs: Flax raises in training

    def __call__(self, x):
        return self.out(self.drop(x.reshape(x.shape[0], -1)))


def test_check_nnx_dropout_names_the_dropout_without_rngs():
    from jaxcnn.checks import check_nnx_dropout

    with pytest.raises(ConfigError, match=r"DropoutNoRngs\.drop is an nnx\.Dropout\(0\.5\) built without rngs.*rngs=rngs"):
        check_nnx_dropout(DropoutNoRngs(rngs=nnx.Rngs(0)))
    check_nnx_dropout(SmallNNX(2, rngs=nnx.Rngs(0)))  # no dropout: fine


def test_fit_refuses_an_nnx_dropout_without_rngs_in_one_line(small):
    with pytest.raises(ConfigError, match="built without rngs"):
        jaxcnn.fit(DropoutNoRngs(rngs=nnx.Rngs(0)), small[0][:64], small[1][:64], epochs=1, verbose=0)


# -- a student's command-line runs ------------------------------------------------------------------


def test_patience_below_minus_one_is_refused_before_anything_is_made(tmp_path):
    from experiments import mnist

    with pytest.raises(ConfigError, match=r"^--patience must be -1 \(early stopping off\) or a whole number of epochs >= 0, got -2$"):
        mnist.main(["--patience", "-2", "--limit", "300", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_ctrl_c_while_the_outputs_are_written_says_how_to_finish_them(tmp_path, monkeypatch, capsys):
    from experiments import mnist
    from experiments.common import main_guard
    from jaxcnn import plots

    out = tmp_path / "run"
    argv = ["--limit", "300", "--test-limit", "500", "--epochs", "1", "--verbose", "0", "--out", str(out)]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "training_curves", interrupted)
    assert main_guard(mnist.main, argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: while writing the outputs, after training; continue with: ") and err.endswith(
        f"--resume --out {out}, which writes them from the last checkpoint"), err
    monkeypatch.undo()
    assert main_guard(mnist.main, ["--resume", "--out", str(out), "--verbose", "0"]) == 0
    assert (out / "metrics.json").is_file() and (out / "history.png").is_file()


def test_a_missing_data_set_on_the_command_line_names_the_flag(capsys):
    from experiments.common import main_guard
    from jaxcnn import data
    from jaxcnn.errors import DataError

    def load(argv):
        data.load("cifar10", download=False)

    try:
        data.load("cifar10", download=False)
    except DataError as e:
        assert "data_dir=..." in str(e)  # the library's own wording
    else:
        pytest.skip("CIFAR-10 is on this machine")
    assert main_guard(load, None) == 2
    err = capsys.readouterr().err
    assert "pass it with --data-dir DIR" in err and "data_dir=..." not in err


class DropoutRngsAtCall(nnx.Module):
    """A common NNX pattern: the Dropout gets the module's own rngs when called."""

    def __init__(self, rngs: nnx.Rngs):
        self.rngs = rngs
        self.drop = nnx.Dropout(0.5)
        self.out = nnx.Linear(784, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(x.reshape(x.shape[0], -1), rngs=self.rngs))


def test_an_nnx_dropout_given_its_rngs_at_call_trains(small):
    state, history = jaxcnn.fit(DropoutRngsAtCall(nnx.Rngs(0)), small[0][:64], small[1][:64], epochs=1, verbose=0)
    assert np.isfinite(history["loss"][0])


def test_a_tpe_search_extended_draws_new_points_not_the_first_ones_again(tmp_path, small):
    from jaxcnn.search import LogUniform

    x, y = small
    space = {"learning_rate": LogUniform(1e-4, 1e-2)}
    kw = dict(model="search_cnn", sampler="tpe", epochs=1, batch_size=64, verbose=0, out=str(tmp_path / "tpe"))
    first = search.random_search(x[:200], y[:200], space, trials=2, **kw)
    more = search.random_search(x[:200], y[:200], space, trials=4, **kw)
    rates = [t.hyperparameters["learning_rate"] for t in sorted(more.trials, key=lambda t: t.trial)]
    assert rates[:2] == [t.hyperparameters["learning_rate"] for t in sorted(first.trials, key=lambda t: t.trial)]
    assert len(set(rates)) == 4  # trials 3 and 4 are not trials 1 and 2 again


def test_weighted_metrics_export_reload_and_stay_weighted(small, tmp_path):
    from jaxcnn import metrics

    x, y = small
    w = np.linspace(0.1, 2.0, len(x)).astype(np.float32)
    state, history = jaxcnn.fit(SmallNNX(2, rngs=nnx.Rngs(0)), x, y, epochs=1, batch_size=64, verbose=0,
                                sample_weight=w, metrics=["f1"], weighted_metrics=["accuracy", "f1"])
    assert {"accuracy", "weighted_accuracy", "f1", "weighted_f1", "weighted_f1_0"} <= set(history.history)
    checkpoint.export(tmp_path / "m", state)
    reloaded = checkpoint.load_state(tmp_path / "m")
    assert reloaded.metrics == state.metrics and isinstance(reloaded.metrics[-1], metrics.Weighted)
    ours, again = (jaxcnn.evaluate(s, x, y, sample_weight=w) for s in (state, reloaded))
    assert ours == again and ours["weighted_accuracy"] != ours["accuracy"]
    hits = np.argmax(jaxcnn.predict(state, x), -1) == y
    assert ours["accuracy"] == pytest.approx(hits.mean()) and ours["weighted_accuracy"] == pytest.approx((w * hits).sum() / w.sum())
