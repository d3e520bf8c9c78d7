"""Hyperparameter search on Optuna (1.5): draws, reproducibility, custom and define-by-run
models, pruning, invalid trials, outputs, continuing a search, the experiment."""

from __future__ import annotations

import functools
import json
import warnings

import flax.linen as nn
import jax
import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

import jaxcnn
from jaxcnn import models, search
from jaxcnn.errors import ConfigError, ShapeError
from jaxcnn.search import REPORT_SPACE, Choice, IntRange, LogUniform, Uniform
from jaxcnn.search import engine


class TinyCNN(nn.Module):
    """A small linen CNN with dropout and no BatchNorm (attributes searched by the tests)."""

    features: int = 4
    dropout: float = 0.25

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.features, (3, 3), strides=(2, 2))(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def tiny_define_by_run(trial):
    """Define-by-run: the model suggests its own width and dropout."""
    width = trial.suggest_int("width", 2, 6, step=2)
    return TinyCNN(features=width, dropout=trial.suggest_float("dropout", 0.0, 0.5))


# 200 images: 160 to train on (5 batches of 32), 40 to validate on.
OPTS = dict(epochs=1, batch_size=32, verbose=0)


@pytest.fixture(scope="module")
def small():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:200]), ds.y_train[:200]


# -- the draws ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), trial=st.integers(1, 10_000))
def test_sample_depends_on_seed_and_trial_only_and_stays_in_range(seed, trial):
    hp = search.sample(REPORT_SPACE, seed, trial)
    assert hp == search.sample(REPORT_SPACE, seed, trial)
    assert list(hp) == ["kernel_size", "weight_decay", "learning_rate"]
    assert type(hp["kernel_size"]) is int and 2 <= hp["kernel_size"] <= 10
    assert 0.0001 <= hp["weight_decay"] < 0.1
    assert 0.0001 <= hp["learning_rate"] < 0.01
    assert search.trial_seed(seed, trial) == search.trial_seed(seed, trial)
    assert json.loads(json.dumps(hp)) == hp


def test_report_space_draws_are_the_reports_and_cover_every_kernel_size():
    # Seed 0's kernel sizes since the first version (BENCHMARKS.md): the same draws on Optuna.
    assert [search.sample(REPORT_SPACE, 0, t)["kernel_size"] for t in range(1, 11)] == [6, 10, 6, 6, 8, 6, 9, 4, 4, 4]
    draws = [search.sample(REPORT_SPACE, 0, t) for t in range(1, 401)]
    assert {d["kernel_size"] for d in draws} == set(range(2, 11))
    assert len({d["learning_rate"] for d in draws}) == 400


def test_log_uniform_choice_and_bad_dimensions():
    space = {"lr": LogUniform(1e-5, 1e-1), "act": Choice(("relu", "tanh"))}
    draws = [search.sample(space, 3, t) for t in range(1, 301)]
    lrs = np.array([d["lr"] for d in draws])
    assert lrs.min() >= 1e-5 and lrs.max() < 1e-1
    assert 0.3 < np.mean(lrs < 1e-3) < 0.7
    assert {d["act"] for d in draws} == {"relu", "tanh"}
    with pytest.raises(ConfigError, match="IntRange: low must not exceed high, got low=5, high=2"):
        IntRange(5, 2)
    with pytest.raises(ConfigError, match="LogUniform: bounds must be positive"):
        LogUniform(0.0, 1.0)
    with pytest.raises(ConfigError, match="is not a dimension"):
        search.sample({"k": (2, 10)}, 0, 1)


def _suggest_in_order(order, seed=5, n=6):
    """Params of slots 1..n of a seeded random study, the slots taken in ``order``."""
    config = search.SearchConfig(trials=n, seed=seed, model=tiny_define_by_run)
    space = {"kernel_size": IntRange(2, 10), "learning_rate": LogUniform(1e-4, 1e-2)}
    storage = engine.open_storage(None, config)
    study = engine.open_study(storage, "s", config, space, print)
    waiting = {ft.user_attrs["trial"]: ft.number for ft in study.get_trials(states=(TrialState.WAITING,))}
    sid = storage.get_study_id_from_name("s")
    params = {}
    for t in order:
        tid = storage.get_trial_id_from_study_id_trial_number(sid, waiting[t])
        assert storage.set_trial_state_values(tid, TrialState.RUNNING)
        trial = optuna.trial.Trial(study, tid)
        for name, dim in space.items():
            search.suggest(trial, name, dim)
        tiny_define_by_run(trial)
        trial.suggest_categorical("optimizer", ["rmsprop", "adam", "sgd"])
        params[t] = dict(trial.params)
        study.tell(trial, 0.5)
    return params


def test_trial_t_gets_the_same_hyperparameters_in_any_order():
    forward = _suggest_in_order([1, 2, 3, 4, 5, 6])
    backward = _suggest_in_order([6, 5, 4, 3, 2, 1])
    shuffled = _suggest_in_order([4, 1, 6, 2, 5, 3])
    assert forward == backward == shuffled
    for t in range(1, 7):  # the declarative draws are the seeded ones, the rest from (seed, t, name)
        assert {k: forward[t][k] for k in ("kernel_size", "learning_rate")} == search.sample(
            {"kernel_size": IntRange(2, 10), "learning_rate": LogUniform(1e-4, 1e-2)}, 5, t)
    assert len({p["dropout"] for p in forward.values()}) == 6  # and trials differ
    assert {p["width"] for p in forward.values()} <= {2, 4, 6}
    assert _suggest_in_order([1, 2], seed=6)[1] != forward[1]


# -- searching ------------------------------------------------------------------------------------


def test_custom_model_class_with_dropout_and_training_hyperparameters(small, tmp_path, capsys):
    # A linen class gets features and dropout from the space; learning rate, optimizer and batch
    # size go to training. A second call on the same directory continues the study: nothing trains.
    space = {
        "features": Choice((2, 4)),
        "dropout": Uniform(0.1, 0.5),
        "learning_rate": LogUniform(1e-3, 1e-2),
        "optimizer": Choice(("rmsprop", "adam")),
        "batch_size": Choice((32, 40)),
    }
    result = search.random_search(*small, space, model=TinyCNN, trials=2, seed=2, out=tmp_path, **OPTS)
    assert [t.status for t in result.trials] == ["ok"] * 2 and [t.state for t in result.trials] == ["COMPLETE"] * 2
    for t in result.trials:
        assert set(t.hyperparameters) == set(space)
        assert t.hyperparameters == search.sample(space, 2, t.trial)
        assert t.model_kwargs == {"features": t.hyperparameters["features"], "dropout": t.hyperparameters["dropout"]}
        kernel = t.params["Conv_0"]["kernel"]
        assert kernel.shape[-1] == t.hyperparameters["features"]
        assert t.history.params["batch_size"] == t.hyperparameters["batch_size"]
        np.testing.assert_allclose(t.history["learning_rate"][0], t.hyperparameters["learning_rate"], rtol=1e-6)
    assert result.best is max(result.trials, key=lambda t: t.results["val_accuracy"])
    module, variables, _ = jaxcnn.checkpoint.load(tmp_path / "trials/002/model")  # the class, rebuilt
    assert jaxcnn.checkpoint.load_state(tmp_path / "best").step == jaxcnn.checkpoint.load_state(tmp_path / "best/model").step
    assert type(module).__name__ == "TinyCNN" and module.features == result.trials[1].hyperparameters["features"]
    jax.tree.map(np.testing.assert_array_equal, variables["params"], result.trials[1].params)
    rows = json.loads((tmp_path / "trials.json").read_text())
    assert [r["state"] for r in rows] == ["COMPLETE"] * 2 and rows[0]["optimizer"] in ("rmsprop", "adam")
    header = (tmp_path / "trials.csv").read_text().splitlines()[0]
    assert header.startswith("trial,features,dropout,learning_rate,optimizer,batch_size,seed,status,state,loss")
    for name in ("history.png", "params.png", "importances.png", "best.json", "best/history.png", "trials/001/model/params.msgpack"):
        assert (tmp_path / name).is_file(), name
    saved = (tmp_path / "best.json").read_bytes()
    again = search.random_search(*small, space, model=TinyCNN, trials=2, seed=2, out=tmp_path, **OPTS)
    assert again.trained_here == 0
    assert [t.results for t in again.trials] == [t.results for t in result.trials]
    # the resumed result has no weights in memory; its trials reload their saved models
    assert again.best.params is None and again.best.model_dir == tmp_path / "trials" / f"{again.best.trial:03d}" / "model"
    jax.tree.map(np.testing.assert_array_equal, again.best.load_state().params, result.best.params)
    assert len(again.study.trials) == 2
    # Fewer trials than the study holds: said, nothing trained, and the files (and times) kept.
    fewer = search.random_search(*small, space, model=TinyCNN, trials=1, seed=2, out=tmp_path, **{**OPTS, "verbose": 1})
    assert fewer.trained_here == 0 and len(fewer.trials) == 2
    assert "already holds 2 trials, more than trials=1" in capsys.readouterr().out
    assert (tmp_path / "best.json").read_bytes() == saved


def test_define_by_run_search_and_pruning(small):
    # A model function suggests width and dropout; the space adds the learning rate, whose seed
    # puts a good rate in trial 1 and a hopeless one in trial 2. The median pruner (one start-up
    # trial) stops trial 2 after its first epoch: below trial 1's first epoch.
    space = {"learning_rate": Choice((3e-3, 1e-9))}
    seed = next(s for s in range(200) if [search.sample(space, s, t)["learning_rate"] for t in (1, 2)] == [3e-3, 1e-9])
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    result = search.random_search(*small, space, model=tiny_define_by_run, trials=2, seed=seed, pruner=pruner,
                                  **{**OPTS, "epochs": 3})
    first, second = result.trials
    assert set(first.hyperparameters) == {"learning_rate", "width", "dropout"}
    assert first.status == "ok" and len(first.history) == 3
    assert second.status == "pruned" and second.state == "PRUNED" and len(second.history) == 1
    assert "after epoch 1" in second.reason
    frozen = result.study.trials[second.number]
    assert list(frozen.intermediate_values) == [0]
    assert result.best is first
    assert first.hyperparameters["width"] == search.draw(optuna.distributions.IntDistribution(2, 6, step=2), seed, 1, "width")


def test_invalid_and_diverged_trials_are_recorded_and_never_best(small):
    # Trial 1 cannot be built (k = 10); trial 2's learning rate makes the loss infinite.
    space = {"kernel_size": Choice((10,)), "learning_rate": Choice((1e30,))}
    with pytest.warns(UserWarning, match=r"^every trial of the search was invalid, so result.best is None: .*kernel 10x10 does not "
                      r"fit its 9x9 input.*; check that the model takes the data's images") as record:
        result = search.random_search(*small, space, trials=1, **OPTS)
    assert record[0].filename == __file__  # at the caller's line
    (invalid,) = result.trials
    assert invalid.status == "invalid" and invalid.state == "FAIL" and invalid.history is None
    assert "conv2d_1: kernel 10x10 does not fit its 9x9 input" in invalid.reason
    space = {"kernel_size": Choice((3,)), "learning_rate": Choice((1e30,))}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a diverged trial is not a misconfigured search
        result = search.random_search(*small, space, trials=1, **OPTS)
    (diverged,) = result.trials
    assert diverged.status == "diverged" and diverged.state == "FAIL", diverged.reason
    assert "NaN or infinite" in diverged.reason and result.best is None


def test_bad_settings_fail_before_training(small, tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        search.random_search(*small, model="resnet")
    with pytest.raises(ConfigError, match="pruner must be one of none, median, halving, hyperband"):
        search.random_search(*small, pruner="asha")
    with pytest.raises(ConfigError, match="unknown option"):
        search.random_search(*small, trails=3)
    with pytest.raises(ConfigError, match="workers > 1 need a shared study"):
        search.random_search(*small, workers=2)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files but no search"):
        search.random_search(*small, out=tmp_path, **OPTS)


def test_bad_seed_and_metric_fail_before_anything_is_made(small, tmp_path):
    out = tmp_path / "never-made"
    for seed in (-1, 2**32, 1.5, True):
        with pytest.raises(ConfigError, match=rf"^seed must be a whole number from 0 to 4294967295, got {seed!r}$"):
            search.random_search(*small, seed=seed, out=out, **OPTS)
    with pytest.raises(ConfigError, match="metric must be one of loss, accuracy, val_loss, val_accuracy"):
        search.random_search(*small, metric="val_acc", out=out, **OPTS)
    assert not out.exists()
    assert search.SearchConfig(seed=2**32 - 1).check().seed == 2**32 - 1


def test_a_misspelled_space_key_fails_before_anything_is_made(small, tmp_path, monkeypatch):
    """A key that is neither a model argument nor a training setting would make every trial
    "invalid"; it is refused up front, with the names the model takes."""
    out = tmp_path / "never-made"
    with pytest.raises(ConfigError, match=(
        r"^search space key 'featurez' \(did you mean 'features'\?\) is neither an argument of model "
        r"(tests\.)?test_search\.TinyCNN nor a training setting; the model takes dropout, features, "
        r"training takes learning_rate, optimizer, batch_size, weight_decay$"
    )):
        search.random_search(*small, {"featurez": IntRange(2, 6), "learning_rate": Choice((1e-3,))}, model=TinyCNN, out=out, **OPTS)
    for model in ("search_cnn", TinyCNN(), functools.partial(TinyCNN, features=2)):
        with pytest.raises(ConfigError, match=r"search space key 'kernel_sise' .*(did you mean 'kernel_size'\?)?.* nor a training setting"):
            search.random_search(*small, {"kernel_sise": IntRange(2, 6)}, model=model, out=out, **OPTS)
    assert not out.exists()
    # A registered factory function: its signature; with **kwargs, or define-by-run, anything goes.
    def narrow(features: int = 4):
        return TinyCNN(features=features)

    monkeypatch.setitem(models._REGISTRY, "narrow", (narrow, (28, 28, 1), ""))
    monkeypatch.setitem(models._REGISTRY, "loose", (lambda **kw: TinyCNN(**kw), (28, 28, 1), ""))
    with pytest.raises(ConfigError, match=r"key 'dropout' is neither .* the model takes features, training takes"):
        engine.check_space_names({"dropout": Uniform(0.0, 0.5)}, "narrow")
    engine.check_space_names({"features": IntRange(2, 6), "weight_decay": Uniform(0.0, 0.1)}, "narrow")
    engine.check_space_names({"anything": IntRange(2, 6)}, "loose")
    engine.check_space_names({"anything": IntRange(2, 6)}, tiny_define_by_run)
    assert engine.model_arguments("search_cnn") >= {"kernel_size", "weight_decay", "num_classes"}


def test_choice_refuses_a_bare_string():
    for bare in ("adam", b"adam"):
        with pytest.raises(ConfigError, match=r"Choice takes a sequence of options, e\.g\. Choice\(\("):
            Choice(bare)
    with pytest.raises(ConfigError, match=r"^Choice takes a sequence of options, e\.g\. Choice\(\('adam',\)\); got the string 'adam'$"):
        Choice("adam")
    assert Choice(("adam",)).options == ("adam",)


def test_bad_data_fail_before_any_trial(small, tmp_path):
    x, y = small
    out = tmp_path / "never-made"
    bad_y = y.copy()
    bad_y[3] = 10
    with pytest.raises(ShapeError, match="y holds label 10 at index 3, outside 0..9"):
        search.random_search(x, bad_y, out=out, **OPTS)
    bad_x = x.copy()
    bad_x[5, 0, 0, 0] = np.nan
    with pytest.raises(ShapeError, match=r"x holds NaN at index \(5, 0, 0, 0\)"):
        search.random_search(bad_x, y, out=out, **OPTS)
    with pytest.raises(ShapeError, match="validation y holds label -1"):
        search.random_search(x, y, validation_data=(x[:8], np.full(8, -1)), out=out, **OPTS)
    with pytest.raises(ShapeError, match="y has 199 labels for 200 images"):
        search.random_search(x, y[:-1], space={"learning_rate": Choice((1e-3,))}, model=tiny_define_by_run, out=out, **OPTS)
    assert not out.exists()


def test_search_cnn_k7_has_77770_params_and_k10_cannot_be_built():
    module = models.get_model("search_cnn", kernel_size=7, weight_decay=0.01)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32)))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"])) == 77_770
    assert models.search_cnn_output_size(10) == 0


# -- the experiment ---------------------------------------------------------------------------------


def test_experiment_end_to_end(tmp_path, capsys):
    from experiments import random_search as exp

    out = tmp_path / "run"
    # Seed 0 draws k = 6, 10, 6: trial 2 is invalid. 200 images: 160 to train on, batch 64 and
    # a partial last batch.
    argv = ["--limit", "200", "--epochs", "1", "--batch-size", "64", "--out", str(out)]
    best = exp.main([*argv, "--trials", "2", "--verbose", "2"])
    printed = capsys.readouterr().out
    assert "Trial 1/2: kernel_size=6" in printed and "[invalid: conv2d_1: kernel 10x10" in printed
    assert "Current filters" not in printed and "*****" not in printed
    assert "  status  val_accuracy" in printed  # the final table
    for name in (
        "study.db", "search.json", "config.json", "trials.csv", "trials.json", "best.json", "params.png", "history.png",
        "best/summary.txt", "best/history.png", "best/history.json", "best/history.csv",
        "best/model/params.msgpack", "best/model/model.json", "trials/001/result.json", "trials/001/model/params.msgpack",
    ):
        assert (out / name).is_file(), name
    assert not (out / "trials/002").exists()
    assert best["best"]["trial"] == 1 and best["invalid"] == [2]
    assert "Total params" in (out / "best/summary.txt").read_text()
    module, variables, meta = jaxcnn.checkpoint.load(out / "best/model")
    assert meta["model_kwargs"]["kernel_size"] == 6
    # --resume (or a rerun): nothing left to train, the same best.
    again = exp.main([*argv, "--trials", "2", "--verbose", "0", "--resume"])
    assert again["best"] == best["best"]
    assert capsys.readouterr().out == ""
    # A larger --trials extends the study with trial 3 (the same first trials).
    exp.main([*argv, "--trials", "3", "--verbose", "2"])
    printed = capsys.readouterr().out
    assert "Trial 3/3: kernel_size=6" in printed and "Trial 1/" not in printed
    rows = json.loads((out / "trials.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "invalid", "ok"]
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert [r["kernel_size"] for r in rows] == [6, 10, 6]
    assert (out / "trials.csv").read_text().splitlines()[0].startswith("trial,kernel_size,weight_decay,learning_rate,seed,status,state,loss")
    with pytest.raises(ConfigError, match="holds no search to continue"):
        exp.main(["--out", str(tmp_path / "empty"), "--resume", "--verbose", "0"])
    with pytest.raises(ConfigError, match=r"differs in epochs.*choose another study \(study_name=, or --study on the command line\) or out directory$"):
        exp.main(["--limit", "200", "--epochs", "2", "--batch-size", "64", "--out", str(out), "--trials", "3", "--verbose", "0"])


# -- a model that raises: the trial fails, the search goes on (KerasTuner's behaviour) -----------


class Fragile(TinyCNN):
    """TinyCNN whose width 2 raises in its own code."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.features == 2:
            raise ZeroDivisionError(f"width {self.features}")
        return TinyCNN.__call__(self, x, train)


class Buggy(TinyCNN):
    """TinyCNN that raises while BROKEN (a bug, then its fix). Only this test builds it: jit's
    caches would otherwise run an equal module's program without calling it."""

    BROKEN = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if Buggy.BROKEN:
            raise ZeroDivisionError(f"width {self.features}")
        return TinyCNN.__call__(self, x, train)


def test_a_trial_whose_model_raises_fails_and_the_search_goes_on(small, tmp_path):
    space = {"features": Choice((2, 4))}
    seed = next(s for s in range(200) if [search.sample(space, s, t)["features"] for t in (1, 2, 3)] == [2, 4, 2])
    result = search.random_search(*small, space, model=Fragile, trials=3, seed=seed, out=tmp_path, **OPTS)
    assert [t.status for t in result.trials] == ["error", "ok", "error"]
    assert [t.state for t in result.trials] == ["FAIL", "COMPLETE", "FAIL"]
    first = result.trials[0]
    assert first.reason.startswith("ZeroDivisionError: width 2 (at test_search.py:") and first.reason.endswith(" in __call__)")
    assert first.history is None and result.best is result.trials[1]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["error"] == [1, 3] and best["best"]["trial"] == 2
    assert [r["status"] for r in json.loads((tmp_path / "trials.json").read_text())] == ["error", "ok", "error"]


def test_errors_in_a_row_stop_the_search_and_a_rerun_trains_them_again(small, tmp_path, monkeypatch):
    # Every trial raises: after 2 in a row the search stops with SearchError (chained to the
    # model's error), the tables are written, and trials 1 and 2 wait again. Fixed, the same
    # search trains all 3 and keeps nothing of the failed attempts but their count.
    from jaxcnn.errors import SearchError

    space = {"features": Choice((4,))}
    monkeypatch.setattr(Buggy, "BROKEN", True)
    with pytest.raises(SearchError, match=r"^search stopped: trials 1 and 2 failed in a row .*\(the last: ZeroDivisionError: "
                       r"width 4 \(at test_search\.py:\d+ in __call__\)\); fix it, or raise jaxcnn\.errors\.ConfigError") as e:
        search.random_search(*small, space, model=Buggy, trials=3, out=tmp_path, max_consecutive_failed_trials=2, **OPTS)
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    rows = json.loads((tmp_path / "trials.json").read_text())
    assert [(r["status"], r["features"], r["attempts"]) for r in rows] == [("error", 4, 1), ("error", 4, 1), ("waiting", 4, 0)]
    assert rows[2]["reason"] == "not trained yet"
    monkeypatch.setattr(Buggy, "BROKEN", False)
    result = search.random_search(*small, space, model=Buggy, trials=3, out=tmp_path, max_consecutive_failed_trials=2, **OPTS)
    assert [t.status for t in result.trials] == ["ok"] * 3 and result.trained_here == 3
    assert [t.attempts for t in result.trials] == [2, 2, 1]
    assert json.loads((tmp_path / "best.json").read_text())["error"] == []
    with pytest.raises(ConfigError, match="max_consecutive_failed_trials must be a positive integer, got 0"):
        search.random_search(*small, space, model=Buggy, trials=3, max_consecutive_failed_trials=0, **OPTS)


class Interrupting(TinyCNN):  # Ctrl-C while a trial trains (the search's label probe traces it in evaluation mode)
    @nn.compact
    def __call__(self, x, train: bool = False):
        if train:
            raise KeyboardInterrupt
        return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def test_ctrl_c_in_a_trial_stops_the_search_and_the_slot_waits_again(small, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        search.random_search(*small, {"features": Choice((4,))}, model=Interrupting, trials=2, out=tmp_path, **OPTS)
    study = optuna.load_study(study_name=search.DEFAULT_STUDY, storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [(t.user_attrs.get("trial"), t.state, t.user_attrs.get("status")) for t in study.trials]
    assert states == [(1, TrialState.FAIL, "interrupted"), (2, TrialState.WAITING, None), (1, TrialState.WAITING, None)]


class AlwaysRaises(TinyCNN):
    @nn.compact
    def __call__(self, x, train: bool = False):
        raise ZeroDivisionError("always")


def test_a_search_whose_every_trial_raised_warns_and_one_stopped_only_raises(small):
    with pytest.warns(UserWarning, match=r"^every trial of the search raised an error, so result.best is None: ZeroDivisionError: "
                      r"always .*; check that the model takes the data's images"):
        result = search.random_search(*small, {"features": Choice((4,))}, model=AlwaysRaises, trials=1, **OPTS)
    assert [t.status for t in result.trials] == ["error"] and result.best is None
    from jaxcnn.errors import SearchError

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # stopped: the SearchError says it all
        with pytest.raises(SearchError):
            search.random_search(*small, {"features": Choice((4,))}, model=AlwaysRaises, trials=2,
                                 max_consecutive_failed_trials=2, **OPTS)


def test_worker_processes_stop_together_and_the_parent_raises(small, tmp_path):
    from jaxcnn.errors import SearchError

    with pytest.raises(SearchError, match=r"^search stopped: trials .* failed in a row .*ZeroDivisionError: always"):
        search.random_search(*small, {"features": Choice((4,))}, model=AlwaysRaises, trials=6, out=tmp_path, workers=2,
                             max_consecutive_failed_trials=2, **OPTS)
    rows = json.loads((tmp_path / "trials.json").read_text())
    assert {r["status"] for r in rows} <= {"error", "waiting"} and sum(r["status"] == "error" for r in rows) in (2, 3, 4)
    study = optuna.load_study(study_name=search.DEFAULT_STUDY, storage=f"sqlite:///{tmp_path / 'study.db'}")
    waiting = [t.user_attrs["trial"] for t in study.trials if t.state == TrialState.WAITING]
    assert sorted(waiting) == list(range(1, 7))  # every slot is there to train again, once


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_a_pruner_stops_a_trial_before_its_last_epoch_never_after_it(small):
    one = search.random_search(*small, {"features": Choice((4,))}, model=TinyCNN, trials=1, pruner=_AlwaysPrune(), **OPTS)
    assert [t.status for t in one.trials] == ["ok"] and one.best is one.trials[0]  # its only epoch is its last
    two = search.random_search(*small, {"features": Choice((4,))}, model=TinyCNN, trials=1, pruner=_AlwaysPrune(),
                               **{**OPTS, "epochs": 2})
    assert [t.status for t in two.trials] == ["pruned"] and len(two.trials[0].history) == 1


def test_a_batch_size_dimension_must_give_whole_numbers(small):
    for dim in (Uniform(32.0, 64.0), LogUniform(16.0, 128.0), Choice((32, 48.5))):
        with pytest.raises(ConfigError, match=r"^search space entry 'batch_size': .* not positive whole numbers; use IntRange"):
            search.random_search(*small, {"batch_size": dim}, model=TinyCNN, trials=1, **OPTS)


def test_a_script_without_a_main_guard_is_told_to_add_one(small, monkeypatch):
    # Worker processes import the user's script (multiprocessing's spawn, with its _inheriting
    # flag set meanwhile); one that calls the search at its top level got "study ... holds a
    # different search (it differs in model)" from each worker. (A real script with workers=2 was
    # run by hand: each worker prints this error and the parent trains the trials alone.)
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(ConfigError, match=r"^random_search was called while a worker process was importing your script .*"
                                          r"put the search under if __name__ == \"__main__\": in the script$"):
        search.random_search(*small, {"features": Choice((4,))}, model=TinyCNN, trials=1, **OPTS)
