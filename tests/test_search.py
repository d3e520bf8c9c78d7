"""Random search (1.5): sampler, invalid trials, vmap == sequential, resuming, the experiment."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcnn
from jaxcnn import checkpoint, models, search
from jaxcnn.errors import ConfigError
from jaxcnn.search import REPORT_SPACE, Choice, IntRange, LogUniform, Uniform

# Seed 9 draws k = 3, 3, 10 for trials 1..3: two trials that share parameter shapes, then one
# that cannot be built.
SPACE = {"kernel_size": Choice((3, 10)), "weight_decay": Uniform(1e-4, 0.1), "learning_rate": Uniform(1e-4, 1e-2)}
SEED = 9
# 160 images: 128 to train on (4 batches of 32: one compilation per trial), 32 to validate on.
# (The experiment's test below trains a partial last batch.)
OPTS = dict(trials=3, epochs=1, batch_size=32, seed=SEED, verbose=0)
VOLATILE = ("wall_time_s", "trained_with")  # how a trial was run, not what it computed


@pytest.fixture(scope="module")
def small():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:160]), ds.y_train[:160]


@pytest.fixture(scope="module")
def sequential_run(small, tmp_path_factory):
    """The uninterrupted reference: three trials, one at a time, stored in a directory."""
    out = tmp_path_factory.mktemp("uninterrupted")
    return search.random_search(*small, SPACE, strategy="sequential", out=out, **OPTS), out


def _same_rows(a, b, exact: bool = True):
    ra = [{k: v for k, v in r.items() if k not in VOLATILE} for r in a.rows()]
    rb = [{k: v for k, v in r.items() if k not in VOLATILE} for r in b.rows()]
    if exact:
        assert ra == rb
        return
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                np.testing.assert_allclose(y[k], x[k], rtol=1e-5, atol=1e-6, err_msg=k)
            else:
                assert x[k] == y[k], k


def _same_params(a, b, atol: float = 0.0):
    for ta, tb in zip(a.trials, b.trials, strict=True):
        assert (ta.params is None) == (tb.params is None)
        if ta.params is not None:
            jax.tree.map(lambda u, v: np.testing.assert_allclose(v, u, rtol=0, atol=atol), ta.params, tb.params)


# -- the sampler ----------------------------------------------------------------------------------


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
    assert json.loads(json.dumps(hp)) == hp  # exact through the stored results


def test_report_space_covers_every_kernel_size_and_trials_differ():
    draws = [search.sample(REPORT_SPACE, 0, t) for t in range(1, 401)]
    assert {d["kernel_size"] for d in draws} == set(range(2, 11))
    assert len({d["learning_rate"] for d in draws}) == 400
    assert search.sample(REPORT_SPACE, 0, 1) != search.sample(REPORT_SPACE, 1, 1)
    assert len({search.trial_seed(0, t) for t in range(1, 401)}) == 400


def test_log_uniform_choice_and_bad_dimensions():
    space = {"lr": LogUniform(1e-5, 1e-1), "act": Choice(("relu", "tanh"))}
    draws = [search.sample(space, 3, t) for t in range(1, 301)]
    lrs = np.array([d["lr"] for d in draws])
    assert lrs.min() >= 1e-5 and lrs.max() < 1e-1
    assert 0.3 < np.mean(lrs < 1e-3) < 0.7  # half the draws below the log-midpoint
    assert {d["act"] for d in draws} == {"relu", "tanh"}
    with pytest.raises(ConfigError, match="IntRange: low must not exceed high, got low=5, high=2"):
        IntRange(5, 2)
    with pytest.raises(ConfigError, match="LogUniform: bounds must be positive"):
        LogUniform(0.0, 1.0)
    with pytest.raises(ConfigError, match="is not a dimension"):
        search.sample({"k": (2, 10)}, 0, 1)


# -- the model ------------------------------------------------------------------------------------


def test_search_cnn_k7_has_77770_params_and_k10_cannot_be_built():
    def count(k):
        module = models.get_model("search_cnn", kernel_size=k, weight_decay=0.01)
        shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32)))
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))

    assert count(7) == 77_770  # 1,600 + 50,208 + 25,632 + 330
    assert models.search_cnn_output_size(10) == 0
    trial = search.Trial(1, {"kernel_size": 10, "weight_decay": 0.01, "learning_rate": 0.001}, 0, "search_cnn")
    assert "kernel 10x10 does not fit its 9x9 input" in search._unbuildable(trial)


# -- searching --------------------------------------------------------------------------------------


def test_invalid_trial_recorded_and_search_goes_on(sequential_run):
    result, _ = sequential_run
    assert [t.hyperparameters["kernel_size"] for t in result.trials] == [3, 3, 10]
    assert [t.status for t in result.trials] == ["ok", "ok", "invalid"]
    invalid = result.trials[2]
    assert "conv2d_1: kernel 10x10 does not fit its 9x9 input" in invalid.reason
    assert invalid.params is None and invalid.history is None
    best = max(result.trials[:2], key=lambda t: t.results["val_accuracy"])
    assert result.best is best
    for t in result.trials[:2]:
        assert set(t.results) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert t.history.params["seed"] == t.seed == search.trial_seed(SEED, t.trial)


@pytest.mark.parametrize("scan_chunk", [0, 3], ids=["step-by-step", "scan"])
def test_vmap_equals_sequential(small, sequential_run, scan_chunk):
    # scan_chunk 3 over 4 batches: one full scan, then one padded with 2 skipped steps (the GPU
    # path, run here on CPU).
    seq, _ = sequential_run
    vm = search.random_search(*small, SPACE, strategy="vmap", scan_chunk=scan_chunk, **OPTS)
    assert vm.strategy == "vmap" and [t.trained_with for t in vm.trials[:2]] == [2, 2]
    _same_rows(seq, vm, exact=False)
    _same_params(seq, vm, atol=1e-5)
    lr = [t.history["learning_rate"][0] for t in vm.trials[:2]]
    np.testing.assert_allclose(lr, [t.hyperparameters["learning_rate"] for t in vm.trials[:2]], rtol=1e-6)


def test_resume_after_stop_and_after_kill_gives_identical_results(small, sequential_run, tmp_path):
    reference, ref_dir = sequential_run
    out = tmp_path / "rs"
    # A search stopped after its first trial: what the reference run had written by then.
    shutil.copytree(ref_dir, out, ignore=shutil.ignore_patterns("002", "003", "best*", "trials.*", "params.png"))
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["001"]
    # ...then killed while saving trial 2: parameters half written, result.json never renamed.
    killed = out / "trials" / "002"
    (killed / "model").mkdir(parents=True)
    (killed / "model" / "params.msgpack").write_bytes(b"\x00" * 10)
    (killed / "result.json.tmp").write_text('{"trial": 2, "sta')
    # A rerun continues after trial 1, redoes trial 2 from scratch and records trial 3.
    resumed = search.random_search(*small, SPACE, strategy="sequential", out=out, **OPTS)
    assert [t.resumed for t in resumed.trials] == [True, False, False]
    _same_rows(reference, resumed)
    _same_params(reference, resumed)
    assert json.loads((killed / "result.json").read_text())["status"] == "ok"
    assert [r["status"] for r in json.loads((out / "trials.json").read_text())] == ["ok", "ok", "invalid"]
    # Everything finished: a third run trains nothing and gives the same search.
    again = search.random_search(*small, SPACE, strategy="sequential", out=out, **OPTS)
    assert all(t.resumed for t in again.trials)
    _same_rows(reference, again)


def test_resume_refuses_another_search_or_a_foreign_directory(small, sequential_run, tmp_path):
    _, out = sequential_run
    with pytest.raises(ConfigError, match="holds a different search \\(it differs in epochs\\)"):
        search.random_search(*small, SPACE, out=out, **{**OPTS, "epochs": 2})
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files but no search.json"):
        search.random_search(*small, SPACE, out=tmp_path, **OPTS)
    with pytest.raises(ConfigError, match="strategy must be 'auto', 'sequential' or 'vmap'"):
        search.random_search(*small, SPACE, strategy="parallel")
    with pytest.raises(ConfigError, match="unknown option"):
        search.random_search(*small, SPACE, trails=3)


def test_stored_trials_reload_with_the_same_parameters(sequential_run):
    result, out = sequential_run
    for t in result.trials[:2]:
        module, variables, meta = checkpoint.load(out / "trials" / f"{t.trial:03d}" / "model")
        assert meta["model_kwargs"] == t.model_kwargs
        jax.tree.map(np.testing.assert_array_equal, variables["params"], t.params)


# -- the experiment ---------------------------------------------------------------------------------


def test_experiment_end_to_end(tmp_path, capsys):
    from experiments import random_search as exp

    out = tmp_path / "run"
    # Seed 0 draws k = 6, 10, 6: trials 1 and 3 train together, trial 2 is invalid.
    # 600 images: 480 to train on, a batch of 256 and a partial one of 224.
    argv = ["--limit", "600", "--trials", "3", "--epochs", "1", "--strategy", "vmap", "--out", str(out)]
    best = exp.main(argv)
    printed = capsys.readouterr().out
    assert "Current kernel size is: 6" in printed and "Trial 2 is invalid" in printed
    assert "Current best model is model no." in printed
    for name in (
        "search.json", "config.json", "trials.csv", "trials.json", "best.json", "params.png",
        "best/summary.txt", "best/history.png", "best/history.json", "best/history.csv",
        "best/model/params.msgpack", "best/model/model.json",
        "trials/001/result.json", "trials/001/model/params.msgpack", "trials/002/result.json",
        "trials/003/result.json", "trials/003/model/model.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "trials/002/model").exists()
    rows = json.loads((out / "trials.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "invalid", "ok"]
    assert [r["kernel_size"] for r in rows] == [6, 10, 6]
    csv_lines = (out / "trials.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("trial,kernel_size,weight_decay,learning_rate,seed,status,loss")
    assert best["best"]["trial"] in (1, 3) and best["invalid"] == [2]
    assert "Total params" in (out / "best/summary.txt").read_text()
    # Run again: nothing left to train, the same best.
    again = exp.main([*argv, "--verbose", "0"])
    assert again["best"] == best["best"]
    assert capsys.readouterr().out == ""
