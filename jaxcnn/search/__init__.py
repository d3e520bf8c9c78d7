"""Hyperparameter search on Optuna: any model, any space, pruning, workers on one database.

>>> from jaxcnn import data, search
>>> ds = data.load("mnist")
>>> result = search.random_search(data.to_float(ds.x_train), ds.y_train, out="runs/rs")
>>> result.best.hyperparameters, result.best.results["val_accuracy"]

The defaults are the report's task 1.5: 10 trials of ``search_cnn`` over :data:`REPORT_SPACE`
(kernel size 2..10, L2 weight decay uniform in [0.0001, 0.1], RMSprop learning rate uniform in
[0.0001, 0.01]), 10 epochs each, batch 256, the best trial by last-epoch ``val_accuracy``.

* **Engine.** An Optuna study (``optuna.Study``): a sampler (``"random"``, the default: trial
  ``t`` gets the same hyperparameters whether it runs first or last, alone or beside other
  workers; ``"tpe"``; or an Optuna sampler object, but ``GridSampler`` and ``BruteForceSampler``,
  which need ``study.optimize``), an optional pruner (``"median"``, ``"halving"``, ``"hyperband"``) that
  acts mid-trial (each epoch reports its ``metric`` to the trial), and storage. A trial that
  cannot be built (``search_cnn`` with k = 10) is recorded as ``"invalid"``, one whose loss
  becomes NaN as ``"diverged"``, one whose model or training raises as ``"error"``, all with
  their reason, and never count as the best. After ``max_consecutive_failed_trials`` (3) errors
  in a row the search stops with ``SearchError`` (as KerasTuner); a rerun trains them again.
* **Model.** ``model`` is a registry name, a Flax module class (or ``functools.partial`` of one,
  or a linen instance) that gets the space's values as attributes (an NNX class as its constructor's
  arguments: ``Class(**values, rngs=nnx.Rngs(trial seed))``), or a function ``trial -> module``
  (linen or NNX) that calls Optuna's ``trial.suggest_*`` itself (define-by-run). ``learning_rate``,
  ``optimizer`` and ``batch_size`` go to training, declared or suggested; ``weight_decay`` goes to
  the model when it has that attribute (the report's Keras-style L2), else to the optimizer
  (Keras's ``weight_decay``); ``epochs`` is fixed per search (``epochs=``) and cannot be searched.
* **Metric.** The last epoch's ``metric`` is the trial's value; ``mode="auto"`` minimises a loss
  and maximises an accuracy (the rule of ``jaxcnn.callbacks``), or ``"min"``/``"max"``.
* **Space.** Declarative dimensions (:class:`IntRange`, :class:`Uniform`,
  :class:`LogUniform`, :class:`Choice`), or none at all with a define-by-run model (then the
  default; :data:`REPORT_SPACE` is the default for the other models).
* **Storage and workers.** With ``out``, the study is SQLite in ``out/study.db``; a rerun with
  the same ``out`` continues it. ``storage`` takes any URL Optuna supports
  (``postgresql://user@host/db``), ``study_name`` names the study: every process that runs the
  same search on it joins it, on one machine or many. ``workers=N`` starts N local worker
  processes. A killed worker's trial is failed once its heartbeat stops and trained again by
  another worker; the study ends with exactly ``trials`` trials (see :mod:`jaxcnn.search.engine`).
* **Outputs** (with ``out``): ``trials/NNN/`` (result.json, history.csv, model/ of each trial),
  ``trials.csv``/``trials.json`` (one row per trial: hyperparameters, seed, status and Optuna
  state, last-epoch and best-epoch metrics, wall time), ``best.json``, ``history.png``,
  ``importances.png``, ``params.png`` and ``best/`` (summary, history table and plot, model).
  The console shows one line per trial and a final table.

Training the trials that share shapes together in one vmapped program (the first version's
``strategy="vmap"``) is gone: on this 2-core CPU it was slower than one trial at a time
(BENCHMARKS.md), Optuna's pruners act on one trial at a time, and several worker processes are
the way to use more devices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.errors import ConfigError, SearchError, ShapeError
from jaxcnn.search.engine import (
    DB_FILE, MAX_RETRY, PRUNERS, SAMPLERS, STOP_ATTR, TRAINING_PARAMS, Data, SearchConfig, attempts_by_slot, check_space_names,
    describe_model, fingerprint, is_define_by_run, open_storage, open_study, slot_count, storage_url, trial_dir, work,
)
from jaxcnn.search.space import (
    REPORT_SPACE, Choice, Dimension, IntRange, LogUniform, Space, Uniform, check_space, draw, sample,
    seeded_random_sampler, space_to_dict, suggest, to_distribution, trial_seed,
)

DEFAULT_STUDY = "jaxcnn-search"
_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def __getattr__(name: str) -> Any:
    if name == "SeededRandomSampler":  # defined on first use: Optuna loads lazily
        from jaxcnn.search.space import _sampler_class

        return _sampler_class()
    raise AttributeError(f"module 'jaxcnn.search' has no attribute {name!r}")


@dataclass
class Trial:
    """One trial of a search (the last attempt at jaxcnn trial number ``trial``, 1-based).

    ``status`` is ``"ok"``, ``"pruned"``, ``"invalid"`` (the model cannot be built; ``reason``
    says why), ``"diverged"`` (the loss became NaN; the history stops at the last finished
    epoch), ``"error"`` (the model or its training raised; ``reason`` names the error and the
    line of the user's code) or ``"failed"``; ``state`` is Optuna's (COMPLETE, PRUNED, FAIL). ``results`` holds
    the last epoch's loss, accuracy, val_loss and val_accuracy (the report's ``model_results``).
    ``params``/``batch_stats`` are the trained variables when this process trained the trial;
    ``model_dir`` is its saved model (``out/trials/NNN/model``, a search with ``out``), which
    :meth:`load_state` reloads, also after a resume or in another process. ``attempts`` counts
    tries (a killed worker's too).
    """

    trial: int
    hyperparameters: dict[str, Any]
    seed: int
    model_name: str
    status: str = "ok"
    reason: str = ""
    state: str = ""
    number: int = -1  # Optuna's trial number
    history: Any = None  # jaxcnn.train.History
    results: dict[str, float] = field(default_factory=dict)
    params: Any = None
    batch_stats: Any = None
    wall_time_s: float = 0.0
    attempts: int = 1
    worker: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    module: Any = None  # the Flax module, when this process built it
    model_dir: Path | None = None  # out/trials/NNN/model, when the search saved it
    _state: Any = field(default=None, repr=False, compare=False)  # the trained state, less its optimizer state

    def load_state(self, model: Any = None, optimizer: Any = None, loss: Any = None) -> Any:
        """The trial's trained state, ready for ``evaluate``, ``predict``, ``explain`` or ``fit`` to
        train on (with a fresh optimizer state). In the process that trained it, the state is the
        one in memory; otherwise it is reloaded from :attr:`model_dir`
        (``jaxcnn.checkpoint.load_state``; ``model``, ``optimizer`` and ``loss`` as there; the
        module this process built is the default ``model``, so a class defined in a function
        reloads too)."""
        if self._state is not None and model is None and optimizer is None and loss is None:
            return self._state.replace(opt_state=self._state.tx.init(self._state.params))
        if self.model_dir is None:
            raise ConfigError(f"trial {self.trial} has no saved model (status {self.status!r}); models are saved by a search "
                              "run with out=..., for each finished trial")
        from jaxcnn import checkpoint

        return checkpoint.load_state(self.model_dir, model=self.module if model is None else model,
                                     optimizer=optimizer, loss=loss)

    def best_epoch(self, metric: str = "val_accuracy", mode: str = "auto") -> int | None:
        """0-based epoch with the best ``metric``, or None without a history."""
        if self.history is None or not self.history.history.get(metric):
            return None
        return self.history.best_epoch(metric, mode)

    def row(self, metric: str = "val_accuracy", mode: str = "auto") -> dict[str, Any]:
        """One flat row of the results table."""
        row: dict[str, Any] = {"trial": self.trial, **self.hyperparameters, "seed": self.seed,
                               "status": self.status, "state": self.state}
        for k in _METRICS:
            row[k] = self.results.get(k)
        best = self.best_epoch(metric, mode)
        row["epochs_run"] = len(self.history) if self.history is not None else 0
        row["best_epoch"] = None if best is None else best + 1
        for k in _METRICS:
            values = self.history.history.get(k) if self.history is not None else None
            row[f"best_{k}"] = values[self.history.epoch.index(best)] if values and best is not None else None
        row["wall_time_s"] = self.wall_time_s
        row["attempts"] = self.attempts
        row["worker"] = self.worker
        row["reason"] = self.reason
        return row


@dataclass
class SearchResult:
    """Every trial, in trial order, the best one (None when none finished), and the study."""

    trials: list[Trial]
    best: Trial | None
    config: SearchConfig
    space: dict[str, Dimension]
    study: Any  # optuna.Study
    wall_time_s: float
    trained_here: int = 0  # trials this process (or its workers) trained in this call

    def rows(self) -> list[dict[str, Any]]:
        return [t.row(self.config.metric, self.config.resolved_mode) for t in self.trials]


# ----------------------------------------------------------------------------------------------
# The search


def random_search(
    x: Any,
    y: Any,
    space: Space | None = None,
    config: SearchConfig | None = None,
    *,
    validation_data: tuple[Any, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY,
    workers: int = 1,
    **overrides: Any,
) -> SearchResult:
    """Run (or join, or resume) a search: train ``config.trials`` trials and return them all.

    Args:
      x: float training images (N, H, W, C), e.g. ``jaxcnn.data.to_float(ds.x_train)``.
      y: integer labels (N,) (or one-hot).
      space: name -> dimension; default :data:`REPORT_SPACE` (``{}`` with a define-by-run model).
      config: a :class:`SearchConfig`; ``overrides`` replace its fields (``trials=3, model=MyCNN,
        sampler="tpe", pruner="median", class_weight={0: 2.0}``). The default ``batch_size``
        (256) on fewer training examples trains on one batch of all of them, as ``fit``.
      validation_data: ``(x_val, y_val)``; default: the last ``validation_split`` of ``x``/``y``.
      out: directory for the study (SQLite, unless ``storage``), each trial's results and model,
        and the final tables and figures. A directory holding this search continues it.
      storage: an Optuna storage URL shared by workers (``postgresql://...``, ``sqlite:///...``).
      study_name: the study's name in the storage.
      workers: local worker processes (each gets its share of the CPU devices).

    Returns a :class:`SearchResult`. Raises ``ConfigError``/``ShapeError`` on bad input before
    training anything.
    """
    t_start = time.perf_counter()
    _refuse_in_a_worker_import()
    _refuse_unknown_options(overrides)
    if config is not None and not isinstance(config, SearchConfig):
        raise ConfigError(f"config must be a jaxcnn.search.SearchConfig, got {type(config).__name__}; or give its fields as keywords (trials=3, ...)")
    config_given = config
    config = dataclasses.replace(config or SearchConfig(), **overrides).check()
    if space is None:  # a define-by-run model suggests its own values: none are added
        space = {} if is_define_by_run(config.model) else REPORT_SPACE
    space = check_space(space)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if workers > 1 and storage is None and out is None:
        raise ConfigError("workers > 1 need a shared study: give out (SQLite in it) or storage")
    if not space and isinstance(config.model, str):
        raise ConfigError("the search space is empty; give dimensions, or a model function trial -> module that suggests its own")
    check_space_names(space, config.model)  # a misspelled key would make every trial invalid
    say = print if config.verbose else (lambda *a, **k: None)
    # a model's outputs are found before the study only where nothing else starts JAX in this
    # process: worker processes start their own (a GPU client here would hold their memory)
    data = _prepare_data(x, y, validation_data, config, space if workers == 1 else None)
    _check_class_weight_classes(config, data)
    # A model function may suggest its own batch_size (then batch_size= is not used): not checked here.
    given = "batch_size" in overrides or (config_given and config_given.batch_size != SearchConfig.batch_size)
    # Keras and fit train on one batch of all of the data when the batch is larger: so does the
    # default; a batch_size given larger than the data is taken for a mistake.
    if given and "batch_size" not in space and not is_define_by_run(config.model) and config.batch_size > len(data.x_train):
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(data.x_train)} training examples; "
            f"use batch_size <= {len(data.x_train)} or more data"
        )
    run_dir = _open_run_dir(Path(out)) if out is not None else None
    url = storage_url(storage, run_dir)
    fp = fingerprint(config, space, (data.x_train, data.y_train, data.x_val, data.y_val))
    db = open_storage(url, config)
    study = open_study(db, study_name, config, space, say, fp=fp)
    if run_dir is not None:
        _write_json(run_dir / "search.json", {"storage": _hide_password(url), "study": study_name, **fp})
    where = f"study {study_name!r} in {_hide_password(url) if url else 'memory'}"
    say(f"Search: {max(config.trials, slot_count(study))} trials, {_sampler_name(config)} sampler, pruner {_pruner_name(config)}; {where}")
    local: dict[int, dict[str, Any]] = {}
    if study.user_attrs.get(STOP_ATTR):  # stopped by failing trials before: they are queued again
        study.set_user_attr(STOP_ATTR, None)
    stopped: SearchError | None = None
    trained = 0
    try:
        if workers == 1:
            trained = work(study, db, data, config, space, run_dir, say, on_trial=lambda r: local.__setitem__(r["trial"], r))
        else:
            trained = _run_workers(workers, data, config, space, run_dir, url, study_name, fp)
            if not study.user_attrs.get(STOP_ATTR):
                trained += work(study, db, data, config, space, run_dir, say)  # a dead worker's trial, if any
            if study.user_attrs.get(STOP_ATTR):
                raise SearchError(study.user_attrs[STOP_ATTR])
    except SearchError as e:
        stopped = e  # the tables below still get written, with the failed trials in them
        trained += getattr(e, "trained", 0)
    result = collect(study, config, space, run_dir, local)
    result.wall_time_s = time.perf_counter() - t_start
    if stopped is None:  # a stopped search says why in its SearchError
        _warn_none_usable(result)
    result.trained_here = trained
    if run_dir is not None and not (trained == 0 and _saved_trials(run_dir) == len(result.trials)):
        save_results(result, run_dir)  # a rerun that trained nothing keeps the files (and times) already written
    if config.verbose:
        from jaxcnn.search.report import console_table

        names = _param_names(result)
        say(console_table(result.rows(), names, config.metric, result.best.trial if result.best else None))
        if result.best is not None:
            b = result.best
            say(f"Best: trial {b.trial} ({_hp_text(b.hyperparameters)}), {config.metric} "
                f"{b.results.get(config.metric, float('nan')):.4f}; search took {result.wall_time_s:.1f} s")
        else:
            say("No trial finished with a usable result")
    if stopped is not None:
        raise stopped
    return result


#: Optuna's names for settings (``study.optimize``, ``create_study``) and what the search takes instead.
_OPTUNA_OPTIONS = {
    "n_trials": "random_search takes trials= (the number of trials, Optuna's n_trials), not n_trials=",
    "timeout": ("random_search has no timeout= (Optuna's time budget): it runs trials= trials of epochs= epochs each; "
                "bound it with fewer trials or epochs, or pruner=\"median\", or stop it with Ctrl-C and run it again with "
                "the same out= to continue"),
    "n_jobs": "random_search takes workers= (worker processes, each with its share of the CPU cores), not Optuna's n_jobs=",
    "direction": ("random_search takes mode= ('auto', the default: minimise a loss, maximise an accuracy; or 'min', "
                  "'max'), not Optuna's direction="),
    # fit's keywords the search does not take
    "sample_weight": ("random_search takes no sample_weight= (one weight per example); class_weight={class: weight} "
                      "weighs each training example's loss by its class, as fit's class_weight"),
    "callbacks": ("random_search takes no callbacks=: each trial trains epochs= epochs and reports to the pruner; "
                  "train the best values with jaxcnn.fit(..., callbacks=[...]) (result.best.hyperparameters)"),
    "loss": ("random_search takes no loss=: each trial trains with fit's default cross-entropy (logits or a softmax "
             "output decided from the model); train the best values with jaxcnn.fit(..., loss=...) for another"),
    "metrics": ("random_search takes no metrics=: each trial records loss and accuracy and their val_ figures; "
                "metric= names the one to optimise"),
}


def _check_class_weight_classes(config: SearchConfig, data: Any) -> None:
    """A class_weight class the model or the labels do not have: refused before the study is made
    (in every trial it would be invalid, and the study would keep the weights)."""
    if not config.class_weight:
        return
    known = _num_classes(config.model)
    ys = (data.y_train, data.y_val)
    classes = known or (ys[0].shape[1] if ys[0].ndim == 2 else max(int(y.max()) for y in ys if len(y)) + 1)
    for c in config.class_weight:
        if int(c) >= classes:
            whose = f"the model has {classes} classes" if known else f"the labels hold classes 0..{classes - 1}"
            raise ConfigError(f"class_weight has class {c!r}; {whose}, so its weight would weigh nothing: fix the key or the labels")


def _refuse_unknown_options(overrides: Mapping[str, Any]) -> None:
    """One line for a keyword that is no :class:`SearchConfig` field: Optuna's names say what
    to use instead, a misspelling the closest field."""
    import difflib

    names = [f.name for f in dataclasses.fields(SearchConfig)]
    for key in overrides:
        if key in names:
            continue
        if key in _OPTUNA_OPTIONS:
            raise ConfigError(_OPTUNA_OPTIONS[key])
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"random_search got an unknown option {key!r}; {hint}its options are {', '.join(names)}")


def _warn_none_usable(result: SearchResult) -> None:
    """Warn when every trial was invalid or raised: the model cannot take the data (or the
    space's values) at all, so ``result.best`` is None and more trials would not help."""
    kinds = {t.status for t in result.trials}
    if result.best is not None or not kinds or not kinds <= {"invalid", "error"}:
        return
    import warnings

    from jaxcnn.checks import _user_stacklevel

    what = {frozenset({"invalid"}): "was invalid", frozenset({"error"}): "raised an error"}.get(frozenset(kinds), "was invalid or raised an error")
    reasons = sorted({t.reason for t in result.trials})
    more = f" (and {len(reasons) - 1} other reasons, in trials.csv)" if len(reasons) > 1 else ""
    labels = all(r.startswith(("y ", "validation y ")) for r in reasons)  # the labels' check (out of range, not whole numbers)
    check = ("that the labels are the model's classes, 0..classes-1" if labels else
             "that the model takes the data's images (e.g. its input channels) and the space's values")
    warnings.warn(
        f"every trial of the search {what}, so result.best is None: {reasons[0]}{more}; check {check}",
        UserWarning, stacklevel=_user_stacklevel(),
    )


def _refuse_in_a_worker_import() -> None:
    """A worker process starts by importing the user's script (multiprocessing's spawn, as
    ``workers=N`` uses): a script that calls the search at its top level would run it again in
    every worker. Say what to do, rather than the study's "differs in model" that would follow."""
    import multiprocessing

    # spawn's _main sets _inheriting while it imports the parent's __main__ (the flag behind
    # multiprocessing's own "bootstrapping phase" error).
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ConfigError(
            "random_search was called while a worker process was importing your script (each worker starts by importing "
            "it, as Python's multiprocessing does); put the search under if __name__ == \"__main__\": in the script"
        )


def _saved_trials(run_dir: Path) -> int | None:
    """How many trials ``run_dir/best.json`` counts (None: no readable one)."""
    try:
        return int(json.loads((run_dir / "best.json").read_text())["trials"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


run = random_search  # the same function, for searches that are not random (sampler="tpe")


def _sampler_name(config: SearchConfig) -> str:
    return config.sampler if isinstance(config.sampler, str) else type(config.sampler).__name__


def _pruner_name(config: SearchConfig) -> str:
    return config.pruner if isinstance(config.pruner, str) else type(config.pruner).__name__


def _hide_password(url: str | None) -> str | None:
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in cred else ''}@{host}"


def _hp_text(hp: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())


def _write_json(path: Path, obj: Any) -> None:
    from jaxcnn.checkpoint import atomic_write

    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def _open_run_dir(out: Path) -> Path:
    """Create ``out`` or reuse one that holds this search's study; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} exists and is not a directory; choose another directory")
    if out.is_dir() and any(out.iterdir()) and not ((out / DB_FILE).is_file() or (out / "search.json").is_file()):
        raise ConfigError(f"{out} already holds files but no search; choose a new directory so that nothing is overwritten")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to {out}: {e.strerror or e}; choose a writable directory") from None
    return out


def _num_classes(model: Any) -> int | None:
    """The classes the model predicts, when known before a trial builds it (a registry name, a
    Flax class or partial with a ``num_classes`` attribute); None for a define-by-run model."""
    from jaxcnn.search.engine import _module_class

    try:
        if isinstance(model, str):
            from jaxcnn import models

            value = getattr(models.get_model(model), "num_classes", None)
        elif isinstance(model, functools.partial) and "num_classes" in model.keywords:
            value = model.keywords["num_classes"]
        else:
            value = getattr(_module_class(model) or model, "num_classes", None)
    except (ConfigError, ShapeError, TypeError):
        return None
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0 else None


def _top_of_labels_from_1(y: Any) -> int | None:
    """The largest of integer labels ``y`` whose smallest is 1 (numbered from 1, as in R: with a
    traced count of that many classes, the one mistake refused before a study), else None."""
    try:
        a = np.asarray(y)
    except Exception:  # noqa: BLE001 - the checks below say what is wrong
        return None
    if a.ndim == 2 and a.shape[1] == 1:
        a = a.reshape(-1)
    if a.ndim != 1 or not a.size or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        return None
    with np.errstate(invalid="ignore"):
        return int(np.nanmax(a)) if np.nanmin(a) == 1 and np.isfinite(np.nanmax(a)) else None


def _traced_classes(model: Any, input_shape: tuple[int, ...], space: dict[str, Any], seed: int) -> int | None:
    """The outputs of a linen class or module (not NNX, whose construction makes its weights; not
    a define-by-run function), found by tracing it (nothing runs) built with its own defaults and
    with the first trial's values: the count both give. None where it cannot be built so, the two
    differ, or a searched attribute names classes or outputs (the outputs follow the space), or
    it is no classifier. Labels 1..classes would make every trial invalid: they are refused
    before the study is made (other labels past a traced count may suit other trials' models)."""
    import warnings

    from jaxcnn.search.engine import _is_nnx_module, _nnx_class, build_model
    from jaxcnn.train.state import output_classes

    if isinstance(model, str) or is_define_by_run(model) or _nnx_class(model) or _is_nnx_module(model):
        return None
    if any("class" in name.lower() or "output" in name.lower() for name in space):
        return None
    counts = set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for values in ({}, sample(space, seed, 1)):
                counts.add(output_classes(build_model(model, None, values, 0)[0], input_shape))
    except Exception:  # noqa: BLE001 - the trial reports the model's own error
        return None
    classes = counts.pop() if len(counts) == 1 else None
    return classes if classes is not None and classes >= 2 else None


def _check_labels(y: Any, n: int, num_classes: int | None, what: str) -> np.ndarray:
    """``y`` checked as :func:`jaxcnn.fit` checks it (jaxcnn.checks.check_labels), as int32
    classes (N,). Without a known number of classes, labels must still be whole numbers >= 0."""
    from jaxcnn import checks

    y = checks.as_array(y, what)
    if num_classes is None:
        if y.ndim == 2 and y.shape[1] > 1:
            num_classes = y.shape[1]  # one-hot
        else:
            flat = y.reshape(-1) if y.ndim == 2 else y
            top = np.nanmax(flat) if flat.size and np.issubdtype(flat.dtype, np.number) else 0
            num_classes = int(top) + 1 if np.isfinite(top) and top >= 0 else 1
    y = checks.check_labels(y, n, num_classes, what)
    return y.argmax(-1) if y.ndim == 2 else y


def _prepare_data(x, y, validation_data, config: SearchConfig, space: dict[str, Any] | None = None) -> Data:
    """The training and validation arrays, checked once with the checks :func:`jaxcnn.fit` runs
    (shape, dtype, finite pixels, labels in range), so bad data fail before any trial. With
    ``space``, a linen model's outputs are found by tracing (:func:`_traced_classes`)."""
    from jaxcnn import checks

    x = checks.check_images(x, (), "x")
    num_classes = _num_classes(config.model)
    top = _top_of_labels_from_1(y) if num_classes is None and space is not None else None
    if top is not None and _traced_classes(config.model, x.shape[1:], space, config.seed) == top:  # traced only then
        num_classes = top  # refused below with "subtract 1 from y"; other labels each trial checks
    y = _check_labels(y, len(x), num_classes, "y")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ConfigError("validation_data must be (x_val, y_val)")
        x_val = checks.check_images(validation_data[0], tuple(x.shape[1:]), "validation x")
        y_val = _check_labels(validation_data[1], len(x_val), num_classes, "validation y")
        x_tr, y_tr = x, y
    else:
        from jaxcnn.data import validation_split

        (x_tr, y_tr), (x_val, y_val) = validation_split(x, y, config.validation_split)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return Data(f32(x_tr), y_tr.astype(np.int32), f32(x_val), y_val.astype(np.int32))


# ----------------------------------------------------------------------------------------------
# Worker processes


def _run_workers(n: int, data: Data, config: SearchConfig, space: dict[str, Any], out: Path | None,
                 url: str, study_name: str, fp: dict[str, Any]) -> int:
    """Start ``n`` worker processes (spawned: fresh JAX), each with ``cores // n`` CPU devices,
    and wait for them. Returns how many trials they trained."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    from jaxcnn import _cpu_cores

    cores = _cpu_cores()
    tmp = tempfile.mkdtemp(prefix="jaxcnn-search-")
    try:
        paths = {}
        for name in ("x_train", "y_train", "x_val", "y_val"):
            paths[name] = os.path.join(tmp, f"{name}.npy")
            np.save(paths[name], getattr(data, name))
        counts = ctx.Queue()
        procs = []
        saved = os.environ.get("JAXCNN_CPU_DEVICES")
        os.environ["JAXCNN_CPU_DEVICES"] = str(max(1, cores // n))
        try:
            for i in range(n):
                p = ctx.Process(target=_worker_main, args=(i + 1, paths, config, space, out, url, study_name, fp, counts), daemon=False)
                p.start()
                procs.append(p)
        finally:
            if saved is None:
                os.environ.pop("JAXCNN_CPU_DEVICES", None)
            else:
                os.environ["JAXCNN_CPU_DEVICES"] = saved
        for p in procs:
            p.join()
        total = 0
        while not counts.empty():
            total += counts.get()
        bad = [f"worker {i + 1} exited with status {p.exitcode}" for i, p in enumerate(procs) if p.exitcode]
        if bad:
            print(f"warning: {'; '.join(bad)}; {'its trial goes' if len(bad) == 1 else 'their trials go'} back to the queue",
                  file=sys.stderr)
        return total
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _worker_main(*args: Any) -> None:
    """One spawned worker (:func:`_work_in_process`). Ctrl-C in a terminal reaches the whole
    process group: the parent says it, on one line, so a worker exits with status 130 and
    without multiprocessing's traceback (its trial goes back to the queue, as for any stop)."""
    try:
        _work_in_process(*args)
    except KeyboardInterrupt:
        sys.exit(130)


def _work_in_process(index: int, paths: dict[str, str], config: SearchConfig, space: dict[str, Any], out: Path | None,
                     url: str, study_name: str, fp: dict[str, Any], counts: Any) -> None:
    """One spawned worker: load the data, join the study, train slots until none is left."""
    import jaxcnn  # noqa: F401  (splits the CPU into this worker's devices)

    data = Data(*(np.load(paths[k], mmap_mode="r") for k in ("x_train", "y_train", "x_val", "y_val")))
    data = Data(*(np.ascontiguousarray(a) for a in (data.x_train, data.y_train, data.x_val, data.y_val)))
    db = open_storage(url, config)
    study = open_study(db, study_name, config, space, print, worker=index, fp=fp, create=False)
    prefix = f"[worker {index}] "
    say = (lambda s: print(prefix + s, flush=True)) if config.verbose else (lambda s: None)
    try:
        counts.put(work(study, db, data, config, space, out, say, bars=False))
    except SearchError as e:  # the study is marked stopped: the parent raises the error
        import traceback

        if e.__cause__ is not None:
            print(prefix + "the last failed trial's error:", file=sys.stderr)
            traceback.print_exception(e.__cause__, file=sys.stderr)
        counts.put(getattr(e, "trained", 0))


# ----------------------------------------------------------------------------------------------
# Results


def collect(study: Any, config: SearchConfig, space: dict[str, Any], out: Path | None = None,
            local: Mapping[int, Mapping[str, Any]] | None = None) -> SearchResult:
    """The search's trials from the study: for each jaxcnn trial number, its last finished
    attempt (a killed worker's attempt counts in ``attempts``), with the variables trained in
    this process (``local``) or exported in ``out/trials/NNN/model``."""
    from optuna.trial import TrialState

    from jaxcnn import train

    local = local or {}
    by_t = attempts_by_slot(study)
    trials = []
    for t in sorted(by_t):
        attempts = by_t[t]
        done = [ft for ft in attempts if ft.state.is_finished() and ft.user_attrs.get("status") not in (None, "interrupted")]
        tried = sum(ft.state.is_finished() for ft in attempts)  # a waiting copy is no attempt yet
        if not done:
            final = attempts[-1]
            status = "failed" if final.state == TrialState.FAIL else final.state.name.lower()
            if final.state == TrialState.WAITING:
                reason = "not trained yet" + (f" ({tried} attempt(s) interrupted)" if tried else "")
            else:
                reason = f"its worker stopped ({tried} attempt(s), the last {final.state.name})"
            params = dict(final.params) or dict(final.system_attrs.get("fixed_params") or {})  # a waiting slot's draws
            trials.append(Trial(t, params, trial_seed(config.seed, t), describe_model(config.model),
                                status=status, reason=reason, state=final.state.name, number=final.number, attempts=tried))
            continue
        ft = done[-1]
        ua = ft.user_attrs
        history = train.History.from_dict(ua["history"]) if ua.get("history") else None
        trial = Trial(
            trial=t, hyperparameters=dict(ft.params), seed=ua.get("seed", trial_seed(config.seed, t)),
            model_name=describe_model(config.model), status=ua.get("status", "failed"), reason=ua.get("reason", ""),
            state=ft.state.name, number=ft.number, history=history, results=dict(ua.get("results") or {}),
            wall_time_s=float(ua.get("wall_time_s") or 0.0), attempts=tried, worker=ua.get("worker", ""),
            model_kwargs=dict(ua.get("model_kwargs") or {}),
        )
        saved = trial_dir(Path(out), t) / "model" if out is not None else None
        if saved is not None and saved.is_dir():
            trial.model_dir = saved
        rec = local.get(t)
        if rec is not None and rec.get("number") == ft.number and rec.get("state_obj") is not None:
            state = rec["state_obj"]
            trial.params, trial.batch_stats = state.params, state.batch_stats
            trial.module = rec.get("module")
            trial._state = state.replace(opt_state=None)  # load_state gives it a fresh optimizer state, as a reload does
        trials.append(trial)
    best = _best(trials, config)
    return SearchResult(trials=trials, best=best, config=config, space=space, study=study, wall_time_s=0.0)


def _best(trials, config: SearchConfig) -> Trial | None:
    """The first finished trial with the best last-epoch ``metric`` (ties: the earlier trial, as
    the report's strict ``>``); pruned, invalid, diverged and failed trials never count."""
    import math

    best, best_value = None, None
    for trial in trials:
        value = trial.results.get(config.metric)
        if trial.status != "ok" or value is None or not math.isfinite(value):
            continue
        if best is None or (value > best_value if config.resolved_mode == "max" else value < best_value):
            best, best_value = trial, value
    return best


def _param_names(result: SearchResult) -> list[str]:
    names = list(result.space)
    for t in result.trials:
        names += [k for k in t.hyperparameters if k not in names]
    return names


def _distributions(result: SearchResult) -> dict[str, Any]:
    dists: dict[str, Any] = {name: to_distribution(dim) for name, dim in result.space.items()}
    for ft in result.study.get_trials(deepcopy=False):
        for k, d in ft.distributions.items():
            dists.setdefault(k, d)
    return dists


def save_results(result: SearchResult, out: str | os.PathLike[str]) -> Path:
    """Write the search's tables and figures to ``out``:

    trials.csv / trials.json (one row per trial: hyperparameters, seed, status and Optuna
    state, last-epoch and best-epoch metrics, wall time, attempts, worker, reason), best.json
    (the best trial and the search's settings), history.png, importances.png (when two or more
    trials finished), params.png, and best/: summary.txt, history.json/.csv/.png and model/.
    """
    from jaxcnn import checkpoint, plots
    from jaxcnn.checkpoint import atomic_write
    from jaxcnn.search import report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = result.config
    rows = result.rows()
    names = _param_names(result)
    _, text = report.table(rows, names)
    atomic_write(out / "trials.csv", text)
    _write_json(out / "trials.json", rows)
    kinds = report.kinds_of(_distributions(result))
    plots.save(report.params_figure(rows, names, config.metric, kinds), out / "params.png")
    plots.save(report.history_figure(rows, config.metric, config.resolved_mode), out / "history.png")
    importances = _importances(result)
    if importances:
        plots.save(report.importances_figure(importances, config.metric), out / "importances.png")
    best = result.best
    summary_record = {
        "metric": config.metric,
        "mode": config.resolved_mode,
        "best": None if best is None else best.row(config.metric, config.resolved_mode),
        "trials": len(result.trials),
        "finished": sum(t.status == "ok" for t in result.trials),
        "pruned": [t.trial for t in result.trials if t.status == "pruned"],
        "invalid": [t.trial for t in result.trials if t.status == "invalid"],
        "diverged": [t.trial for t in result.trials if t.status == "diverged"],
        "error": [t.trial for t in result.trials if t.status == "error"],
        "failed": [t.trial for t in result.trials if t.status == "failed"],
        "importances": importances,
        "study": result.study.study_name,
        "run_wall_time_s": result.wall_time_s,
        "trials_wall_time_s": sum(t.wall_time_s for t in result.trials),
        "config": {k: (v if isinstance(v, (int, float, str, type(None))) else describe_model(v) if k == "model"
                       else {str(c): float(w) for c, w in v.items()} if k == "class_weight" else type(v).__name__)
                   for k, v in dataclasses.asdict(config).items()},
        "space": space_to_dict(result.space),
    }
    _write_json(out / "best.json", summary_record)
    if best is not None:
        _save_best(out / "best", best, result, checkpoint, plots)
    return out


def _importances(result: SearchResult) -> dict[str, float]:
    """Optuna's fANOVA importances over the finished trials ({} with fewer than 2 or no spread)."""
    import optuna

    if sum(t.state == "COMPLETE" for t in result.trials) < 2:
        return {}
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(result.study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def _save_best(bdir: Path, best: Trial, result: SearchResult, checkpoint: Any, plots: Any) -> None:
    from jaxcnn.checkpoint import atomic_write
    from jaxcnn.search.engine import export_model, trial_dir
    from jaxcnn.summary import summary

    config = result.config
    bdir.mkdir(parents=True, exist_ok=True)
    title = f"Best trial {best.trial}: {_hp_text(best.hyperparameters)}"
    module = best.module
    if module is None and isinstance(config.model, str):
        from jaxcnn import models

        module = models.get_model(config.model, **best.model_kwargs)
    text = ""
    if module is not None:
        shape = _input_shape(result)
        if shape:
            text = "\n\n" + summary(module, shape, name=f"{describe_model(config.model)} (trial {best.trial})")
    atomic_write(bdir / "summary.txt", f"Trial {best.trial}: {_hp_text(best.hyperparameters)}{text}\n")
    if best.history is not None:
        _write_json(bdir / "history.json", best.history.to_dict())
        atomic_write(bdir / "history.csv", best.history.to_csv())
        plots.save(plots.training_curves(best.history, monitor=config.metric, title=title), bdir / "history.png")
    src = trial_dir(Path(bdir).parent, best.trial) / "model"
    if (src / "model.json").is_file():
        import shutil

        shutil.copytree(src, bdir / "model", dirs_exist_ok=True)


def _input_shape(result: SearchResult) -> tuple[int, ...] | None:
    shape = (result.study.user_attrs.get("jaxcnn_search") or {}).get("input_shape")
    return tuple(shape) if shape else None


__all__ = [
    "Choice", "DEFAULT_STUDY", "Dimension", "IntRange", "LogUniform", "MAX_RETRY", "PRUNERS", "REPORT_SPACE", "SAMPLERS",
    "SearchConfig", "SearchResult", "SeededRandomSampler", "Space", "TRAINING_PARAMS", "Trial", "Uniform", "collect",
    "draw", "random_search", "run", "sample", "save_results", "space_to_dict", "suggest", "to_distribution", "trial_seed",
]
