"""Fixes from a new-user probe of the search: a define-by-run model's default space, the
direction a loss metric takes, NNX exports that reload, a define-by-run model's training
settings, a linen instance's fingerprint, Grid/BruteForce samplers, define-by-run NNX models,
and Optuna's option names."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optuna
import pytest
from flax import nnx

import jaxcnn
from jaxcnn import checkpoint, search
from jaxcnn.errors import ConfigError
from jaxcnn.search import Choice, IntRange, Uniform

OPTS = dict(epochs=1, batch_size=32, verbose=0)


class Tiny(nn.Module):
    """A linen CNN for 8x8x1 images and 3 classes."""

    features: int = 2
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.features, (3, 3), strides=(2, 2))(x))
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class TinyWD(Tiny):
    """Tiny with a Keras-style ``weight_decay`` attribute (an L2 factor it would add to the loss)."""

    weight_decay: float = 0.0


class TinyNNX(nnx.Module):
    """Typical NNX style: ``width`` and ``activation`` are used, not kept under their names."""

    def __init__(self, width: int = 2, activation: str = "relu", *, rngs: nnx.Rngs):
        self.act = {"relu": nnx.relu, "tanh": jnp.tanh}[activation]
        self.conv = nnx.Conv(1, width, (3, 3), strides=(2, 2), rngs=rngs)
        self.dense = nnx.Linear(width * 4 * 4, 3, rngs=rngs)

    def __call__(self, x):
        return self.dense(self.act(self.conv(x)).reshape((x.shape[0], -1)))


@pytest.fixture(scope="module")
def small():
    """120 8x8x1 images of 3 classes (the class sets the brightness of one row band)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120).astype(np.int32)
    x = rng.uniform(0, 0.3, (120, 8, 8, 1)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 2 * c:2 * c + 3] += 0.6
    return x, y


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


# -- 1. a define-by-run model without a space searches only its own values -------------------------


def test_a_define_by_run_model_without_a_space_adds_no_report_space(small):
    def build(trial):
        return Tiny(features=trial.suggest_int("features", 2, 3))

    result = search.random_search(*small, model=build, trials=1, **OPTS)  # space left out
    assert result.space == {}
    assert list(result.trials[0].hyperparameters) == ["features"], result.trials[0].hyperparameters


# -- 2. mode="auto": a loss is minimised, an accuracy maximised ------------------------------------


def test_a_loss_metric_is_minimised_by_default(small):
    assert search.SearchConfig().mode == "auto"
    assert search.SearchConfig().resolved_mode == "max"
    assert search.SearchConfig(metric="val_loss").resolved_mode == "min"
    assert search.SearchConfig(metric="val_loss", mode="max").resolved_mode == "max"  # explicit wins
    with pytest.raises(ConfigError, match="mode must be 'auto'"):
        search.SearchConfig(mode="maximize").check()
    space = {"learning_rate": Choice((1e-4, 0.05))}
    result = search.random_search(*small, space, model=Tiny, trials=2, metric="val_loss", **OPTS)
    losses = {t.trial: t.results["val_loss"] for t in result.trials}
    assert len(set(losses.values())) == 2, losses
    assert result.study.direction == optuna.study.StudyDirection.MINIMIZE
    assert result.best.trial == min(losses, key=losses.get), losses


# -- 3. an NNX trial's export records the constructor arguments it was built with ------------------


def test_an_nnx_trial_reloads_as_the_module_the_search_built(small, tmp_path, recwarn):
    model = functools.partial(TinyNNX, activation="tanh")
    result = search.random_search(*small, {"width": Choice((3,))}, model=model, trials=1, out=tmp_path, **OPTS)
    t = result.trials[0]
    assert t.status == "ok", t.reason
    directory = tmp_path / "trials" / "001" / "model"
    meta = json.loads((directory / "model.json").read_text())
    assert meta["module_kwargs"] == {"width": 3, "activation": "tanh"}
    assert not [w for w in recwarn if "does not keep as a plain attribute" in str(w.message)]
    reloaded = checkpoint.load_state(directory)  # rebuilt from model.json alone
    trained = checkpoint.load_state(directory, model=TinyNNX(3, "tanh", rngs=nnx.Rngs(0)))
    x = small[0][:16]
    np.testing.assert_array_equal(np.asarray(jaxcnn.predict(reloaded, x)), np.asarray(jaxcnn.predict(trained, x)))
    module, _, _ = checkpoint.load(tmp_path / "best")
    assert isinstance(module, TinyNNX) and module.conv.out_features == 3


# -- 4. a define-by-run model's weight_decay reaches training; its epochs are refused ---------------


def test_a_define_by_run_weight_decay_goes_where_the_declarative_one_goes(small, monkeypatch):
    from jaxcnn import optim

    seen = []
    real = optim.get_optimizer

    def spy(name, learning_rate=None, **kwargs):
        seen.append(kwargs.get("weight_decay"))
        return real(name, learning_rate, **kwargs)

    monkeypatch.setattr(optim, "get_optimizer", spy)

    def build(trial):
        trial.suggest_float("weight_decay", 0.25, 0.25)
        # trial 1: a model with a weight_decay attribute, built without it; trial 2: one without
        return TinyWD() if trial.user_attrs["trial"] == 1 else Tiny()

    result = search.random_search(*small, {}, model=build, trials=2, **OPTS)
    assert [t.status for t in result.trials] == ["ok", "ok"], [t.reason for t in result.trials]
    assert result.trials[0].module.weight_decay == 0.25  # to the model, as a declarative value goes
    assert 0.25 in seen and seen.count(0.25) == 1  # trial 2's goes to the optimizer, trial 1's does not


def test_epochs_cannot_be_searched_declared_or_suggested(small, tmp_path):
    EPOCHS_FIXED = "epochs is fixed per search"  # noqa: N806 (search.engine.EPOCHS_FIXED begins so)
    out = tmp_path / "never-made"
    with pytest.raises(ConfigError) as e:
        search.random_search(*small, {"epochs": IntRange(1, 3)}, model=Tiny, trials=1, out=out, **OPTS)
    assert EPOCHS_FIXED in _one_line(e)
    assert not out.exists()

    def build(trial):
        trial.suggest_int("epochs", 2, 3)
        return Tiny()

    with pytest.warns(UserWarning, match="every trial of the search was invalid"):
        result = search.random_search(*small, {}, model=build, trials=1, **OPTS)
    t = result.trials[0]
    assert t.status == "invalid" and EPOCHS_FIXED in t.reason and t.history is None, t.reason
    assert search.engine.EPOCHS_FIXED.startswith(EPOCHS_FIXED)  # one wording for both refusals


# -- 5. a linen instance's attributes are part of the search -----------------------------------------


def test_a_linen_instance_with_other_attributes_is_another_search(small, tmp_path):
    assert search.engine.describe_model(Tiny(features=3)) != search.engine.describe_model(Tiny(features=2))
    assert search.engine.describe_model(Tiny(features=3)) == search.engine.describe_model(Tiny(features=3))
    space = {"learning_rate": Choice((0.01,))}
    search.random_search(*small, space, model=Tiny(features=3), trials=1, out=tmp_path, **OPTS)
    with pytest.raises(ConfigError, match="differs in model") as e:
        search.random_search(*small, space, model=Tiny(features=4), trials=1, out=tmp_path, **OPTS)
    _one_line(e)
    again = search.random_search(*small, space, model=Tiny(features=3), trials=1, out=tmp_path, **OPTS)
    assert again.trained_here == 0  # the same instance resumes the study


# -- 6. Grid and BruteForce samplers are refused before anything is made -----------------------------


@pytest.mark.parametrize("sampler", ids=["grid", "bruteforce"], argvalues=[
    lambda: optuna.samplers.GridSampler({"features": [2, 3]}, seed=0),
    lambda: optuna.samplers.BruteForceSampler(seed=0),
])
def test_grid_and_brute_force_samplers_are_refused_up_front(small, tmp_path, sampler):
    out = tmp_path / "never-made"
    with pytest.raises(ConfigError, match="does not work in jaxcnn's search") as e:
        search.random_search(*small, {"features": Choice((2, 3))}, model=Tiny, trials=2, sampler=sampler(), out=out, **OPTS)
    assert 'sampler="random"' in _one_line(e) and "QMCSampler" in str(e.value)
    assert not out.exists()


# -- 7. a define-by-run function may return an NNX module --------------------------------------------


def test_a_define_by_run_function_may_return_an_nnx_module(small):
    def build(trial):
        return TinyNNX(width=trial.suggest_int("width", 2, 3), rngs=nnx.Rngs(0))

    result = search.random_search(*small, model=build, trials=1, **OPTS)
    t = result.trials[0]
    assert t.status == "ok", t.reason
    assert list(t.hyperparameters) == ["width"] and isinstance(t.module, TinyNNX)


# -- 8. Optuna's option names are answered in one line ----------------------------------------------


@pytest.mark.parametrize("option, says", [
    ({"n_trials": 2}, "takes trials="),
    ({"timeout": 60}, "has no timeout="),
    ({"trails": 2}, "did you mean 'trials'"),
])
def test_optuna_option_names_say_what_to_use(small, tmp_path, option, says):
    out = tmp_path / "never-made"
    with pytest.raises(ConfigError, match=says) as e:
        search.random_search(*small, {"features": Choice((2,))}, model=Tiny, out=out, **OPTS, **option)
    _one_line(e)
    assert not out.exists()


@pytest.mark.parametrize("space, message", [
    ({"optimizer": Choice(("adma",))}, r"^search space entry 'optimizer': 'adma' is not an optimizer; use Choice of 'rmsprop'"),
    ({"learning_rate": Uniform(-1.0, 0.0)}, r"^search space entry 'learning_rate': .* gives rates of 0 or below"),
    ({"batch_size": IntRange(0, 8)}, r"^search space entry 'batch_size': .* not positive whole numbers"),
    ({"weight_decay": Uniform(-0.1, 0.1)}, r"^search space entry 'weight_decay': .* gives negative"),
])
def test_training_values_no_trial_could_use_are_refused_before_any_trial(space, message, tmp_path):
    """Each was an invalid trial, with a warning only when every trial was."""
    x, y = np.zeros((40, 8, 8, 1), np.float32), np.arange(40) % 3
    with pytest.raises(ConfigError, match=message):
        search.random_search(x, y, space, model=lambda trial: None, trials=2, epochs=1, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_trial_with_an_optimizers_weight_decay_reloads_with_that_optimizer(small, tmp_path, recwarn):
    """Its model.json recorded "optimizer": null, so load_state warned and fell back to RMSprop."""
    space = {"weight_decay": Choice((0.05,)), "optimizer": Choice(("adamw",)), "learning_rate": Choice((0.01,))}
    result = search.random_search(*small, space, model=Tiny, trials=1, out=tmp_path, **OPTS)
    assert result.trials[0].status == "ok", result.trials[0].reason
    directory = tmp_path / "trials" / "001" / "model"
    meta = json.loads((directory / "model.json").read_text())
    assert meta["optimizer"] == {"name": "adamw", "learning_rate": 0.01, "kwargs": {"weight_decay": 0.05}}
    state = checkpoint.load_state(directory)
    assert not [w for w in recwarn if "cannot record" in str(w.message)]
    assert json.loads(state.optimizer_spec) == meta["optimizer"]  # a re-export records it again
    hyper = state.opt_state.hyperparams
    assert float(hyper["learning_rate"]) == pytest.approx(0.01) and float(hyper["weight_decay"]) == pytest.approx(0.05)


def test_a_retried_slot_is_taken_before_the_slots_after_it():
    """After Ctrl-C in trial 3, the rerun trained 4, 5, 6 and then 3 (its copy has a later Optuna
    number); a pruner then judged trial 3 against trials it had not seen."""
    from optuna.trial import TrialState

    from jaxcnn.search import engine

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    for t in (1, 2, 3):
        study.enqueue_trial({}, user_attrs={"trial": t})
    first = engine.take_slot(study, storage)
    assert first.user_attrs["trial"] == 1
    first.set_user_attr("status", "interrupted")
    study.tell(first, state=TrialState.FAIL)
    engine._enqueue_again(study, study.get_trials(deepcopy=True)[first.number])
    assert [engine.take_slot(study, storage).user_attrs["trial"] for _ in range(3)] == [1, 2, 3]
    assert engine.take_slot(study, storage) is None


def test_a_model_function_that_suggests_its_batch_size_is_not_held_to_the_default(small):
    """The default batch_size (256) is larger than these 96 training examples: a model function
    that suggests its own was refused up front by a check that did not apply to it."""

    def build(trial):
        trial.suggest_categorical("batch_size", [16, 32])
        return Tiny()

    result = search.random_search(*small, model=build, trials=1, epochs=1, verbose=0)
    assert result.trials[0].status == "ok", result.trials[0].reason
    assert result.trials[0].hyperparameters["batch_size"] in (16, 32)


def test_regressions_a_probe_found_in_these_fixes():
    """A linen instance at its defaults keeps the name studies made before had; a Choice's None
    (the default) and a rate range from 0 are not refused."""
    from jaxcnn.search import engine
    from jaxcnn.search.space import check_space

    assert engine.describe_model(Tiny()).endswith(".Tiny instance")
    assert engine.describe_model(Tiny(features=3)).endswith(".Tiny(features=3) instance")
    check_space({"optimizer": Choice((None, "adam")), "learning_rate": Choice((None, 1e-3)), "weight_decay": Choice((None, 1e-4))})
    check_space({"learning_rate": Uniform(0.0, 0.01)})


def test_a_study_made_under_an_old_default_says_how_to_continue_it(small, tmp_path):
    search.random_search(*small, {"features": Choice((2,))}, model=Tiny, trials=1, metric="val_loss", mode="max", out=tmp_path, **OPTS)
    with pytest.raises(ConfigError, match=r"differs in mode.*; mode='max' continues a study made when a loss metric was maximised by default$"):
        search.random_search(*small, {"features": Choice((2,))}, model=Tiny, trials=1, metric="val_loss", out=tmp_path, **OPTS)
    # and only then: another declarative space is told only that it differs (the hint about
    # define-by-run studies and REPORT_SPACE was added to any change of space)
    with pytest.raises(ConfigError, match=r"differs in space\); join it with the same settings .* or out directory$"):
        search.random_search(*small, {"features": Choice((2, 3))}, model=Tiny, trials=1, metric="val_loss", mode="max",
                             out=tmp_path, **OPTS)
    # an accuracy maximised, then minimised: the hint is about loss metrics only
    search.random_search(*small, {"features": Choice((2,))}, model=Tiny, trials=1, metric="val_accuracy", out=tmp_path / "acc",
                         **OPTS)
    with pytest.raises(ConfigError, match=r"differs in mode\); join it with the same settings .* or out directory$"):
        search.random_search(*small, {"features": Choice((2,))}, model=Tiny, trials=1, metric="val_accuracy", mode="min",
                             out=tmp_path / "acc", **OPTS)


def test_a_worker_left_waiting_says_for_which_trial_and_how_long():
    """After a SIGKILL, a rerun waited silently (up to the grace period) for the dead worker's
    trial to go stale. It now says which trial it waits for, once, and when it takes it over."""
    from jaxcnn.search import engine

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    for t in (1, 2):
        study.enqueue_trial({}, user_attrs={"trial": t})
    engine.take_slot(study, storage), engine.take_slot(study, storage)  # both running in "another worker"
    lines: list[str] = []

    def print_(line: str) -> None:
        lines.append(line)
        if len(lines) == 1:
            study.set_user_attr(engine.STOP_ATTR, "stop")  # ends the wait at the next look
    config = search.SearchConfig(trials=2, epochs=1, heartbeat_interval=1)
    import threading

    timer = threading.Timer(20, lambda: study.set_user_attr(engine.STOP_ATTR, "no line"))  # a silent wait ends too
    timer.start()
    try:
        assert engine.work(study, storage, None, config, {}, None, print_) == 0
    finally:
        timer.cancel()
    assert lines == ["waiting for trials 1 and 2, running in another worker; if that worker was stopped, its trial is "
                     "trained again here once its heartbeat is 3 s old"]
