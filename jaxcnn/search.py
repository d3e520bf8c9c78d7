"""Random search over hyperparameters (report 1.5): sample, train, score, keep every trial.

>>> from jaxcnn import data, search
>>> ds = data.load("mnist")
>>> result = search.random_search(data.to_float(ds.x_train), ds.y_train, out="runs/rs")
>>> result.best.hyperparameters, result.best.results["val_accuracy"]

The pieces:

* A search space: named dimensions (:class:`IntRange`, :class:`Uniform`, :class:`LogUniform`,
  :class:`Choice`). :data:`REPORT_SPACE` is the report's: kernel size 2..10, L2 weight decay
  uniform in [0.0001, 0.1], RMSprop learning rate uniform in [0.0001, 0.01].
* :func:`sample` draws trial ``t``'s hyperparameters from ``(seed, t)`` alone, and
  :func:`trial_seed` its initialisation/shuffling seed, so trial ``t`` is the same whether the
  search runs straight through, resumes, or trains trials in another order or together.
* :func:`random_search` builds, trains and scores each trial (a hyperparameter named
  ``learning_rate`` goes to the optimizer, every other one to the model) and returns a
  :class:`SearchResult`: every :class:`Trial` (hyperparameters, history, last-epoch results,
  parameters) and the best one by ``metric``/``mode`` (default: last-epoch val_accuracy, max).
  A trial whose model cannot be built (k = 10 leaves ``search_cnn``'s second conv no room) is
  recorded as ``"invalid"`` with the reason; one whose loss becomes NaN as ``"diverged"``.

Two ways to train, with the same results to float tolerance:

* ``strategy="sequential"``: one :func:`jaxcnn.train.fit` per trial.
* ``strategy="vmap"``: trials that differ only in learning rate and weight decay share parameter
  shapes, so they train together in one jitted, ``jax.vmap``-ed program. Each trial keeps its
  own optimizer state (the learning rate lives in it: ``inject_hyperparams``), its own seed and
  batch order. The model is built with ``weight_decay=1.0``, so the L2 terms it sows are
  ``sum(w ** 2)``; they are multiplied by the trial's weight decay inside the vmapped step. This
  needs a model whose sown losses are all ``weight_decay * (something)``, as ``search_cnn``'s are.
  On GPU/TPU the steps run in chunks of ``scan_chunk`` inside one ``lax.scan``, the training set
  resident on the device.
* ``strategy="auto"``: vmap on GPU/TPU, sequential on CPU. On the 2-core CPU, vmap's per-trial
  throughput measured at most that of one trial at a time, and 2 to 4x lower with 4 trials
  (vmap turns the per-trial kernels into grouped convolutions), while ``fit`` also cuts each
  batch into cache-sized parts dealt out to one XLA device per core; sharding the trial axis
  over those devices was slower still.

With ``out``, the search is resumable: each finished trial is stored atomically in
``out/trials/NNN/`` (``result.json`` written last, by rename; ``model/`` via
:func:`jaxcnn.checkpoint.export`), and a rerun with the same ``out`` loads the finished trials and
trains only the rest. A search killed in the middle loses only the trial (with vmap: the group of
trials) it was training. At the end it writes ``trials.csv``, ``trials.json``, ``best.json``,
``params.png`` and ``best/`` (summary, history plot, parameters); see :func:`save_results`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import checkpoint, models, optim, train
from jaxcnn.callbacks import Callback
from jaxcnn.errors import CheckpointError, ConfigError, ShapeError, TrainingError

# ----------------------------------------------------------------------------------------------
# Search space


def _check_bounds(kind: str, low: float, high: float) -> None:
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{kind}: bounds must be finite numbers, got low={low!r}, high={high!r}")
    if low > high:
        raise ConfigError(f"{kind}: low must not exceed high, got low={low!r}, high={high!r}")


@dataclass(frozen=True)
class IntRange:
    """Integers ``low..high``, both included, equally likely (R's ``sample(low:high, 1)``)."""

    low: int
    high: int

    def __post_init__(self):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (self.low, self.high)):
            raise ConfigError(f"IntRange: bounds must be integers, got low={self.low!r}, high={self.high!r}")
        _check_bounds("IntRange", int(self.low), int(self.high))

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": int(self.low), "high": int(self.high)}


@dataclass(frozen=True)
class Uniform:
    """Floats uniform in ``[low, high)`` (R's ``runif(1, low, high)``)."""

    low: float
    high: float

    def __post_init__(self):
        _check_bounds("Uniform", self.low, self.high)

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "uniform", "low": float(self.low), "high": float(self.high)}


@dataclass(frozen=True)
class LogUniform:
    """Floats whose logarithm is uniform in ``[log low, log high)``; both bounds positive."""

    low: float
    high: float

    def __post_init__(self):
        _check_bounds("LogUniform", self.low, self.high)
        if self.low <= 0:
            raise ConfigError(f"LogUniform: bounds must be positive, got low={self.low!r}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "loguniform", "low": float(self.low), "high": float(self.high)}


@dataclass(frozen=True)
class Choice:
    """One of ``options``, equally likely. Options must be JSON values (numbers, strings, bools)."""

    options: tuple[Any, ...]

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise ConfigError("Choice: needs at least one option")

    def sample(self, rng: np.random.Generator) -> Any:
        value = self.options[int(rng.integers(len(self.options)))]
        return value.item() if isinstance(value, np.generic) else value

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "options": list(self.options)}


Dimension = IntRange | Uniform | LogUniform | Choice
Space = Mapping[str, Dimension]

REPORT_SPACE: dict[str, Dimension] = {
    "kernel_size": IntRange(2, 10),  # square kernel of both convolutions
    "weight_decay": Uniform(0.0001, 0.1),  # Keras-style L2 factor on every kernel
    "learning_rate": Uniform(0.0001, 0.01),  # RMSprop
}

# Hyperparameters the vmap strategy varies within one program; every other one splits groups.
_PER_TRIAL = ("learning_rate", "weight_decay")


def _check_space(space: Space) -> dict[str, Dimension]:
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("the search space must be a non-empty mapping of name -> dimension")
    for name, dim in space.items():
        if not isinstance(name, str) or not isinstance(dim, (IntRange, Uniform, LogUniform, Choice)):
            raise ConfigError(
                f"search space entry {name!r}: {dim!r} is not a dimension; use IntRange, Uniform, "
                "LogUniform or Choice"
            )
    return dict(space)


def space_to_dict(space: Space) -> dict[str, dict[str, Any]]:
    """The space as JSON-ready dicts, e.g. ``{"kernel_size": {"type": "int", "low": 2, "high": 10}}``."""
    return {name: dim.to_dict() for name, dim in _check_space(space).items()}


def sample(space: Space, seed: int, trial: int) -> dict[str, Any]:
    """Trial ``trial``'s hyperparameters: a function of ``(seed, trial)`` only.

    Dimensions are drawn in the space's order from ``numpy.random.default_rng([seed, trial, 0])``;
    values are plain Python ints/floats (exact through JSON).
    """
    rng = np.random.default_rng([int(seed), int(trial), 0])
    return {name: dim.sample(rng) for name, dim in _check_space(space).items()}


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial ``trial``'s initialisation and batch order, a function of ``(seed, trial)``."""
    return int(np.random.default_rng([int(seed), int(trial), 1]).integers(2**31 - 1))


# ----------------------------------------------------------------------------------------------
# Configuration and results


@dataclass(frozen=True)
class SearchConfig:
    """One random search. Defaults are the report's (1.5)."""

    trials: int = 10  # number of trials, numbered 1..trials
    epochs: int = 10  # epochs per trial (no early stopping, as the report)
    batch_size: int = 256
    validation_split: float = 0.2  # last fraction of the training arrays, as Keras
    model: str = "search_cnn"  # registry name; every hyperparameter but learning_rate is a kwarg of it
    optimizer: str = "rmsprop"  # jaxcnn.optim name, Keras defaults
    learning_rate: float | None = None  # used when the space has no "learning_rate"; None = default
    seed: int = 0  # trial t's hyperparameters and seed derive from (seed, t) only
    metric: str = "val_accuracy"  # last-epoch metric that picks the best trial
    mode: str = "max"  # "max" or "min" for metric
    strategy: str = "auto"  # "auto" | "sequential" | "vmap"
    group_size: int | None = None  # most trials trained together with vmap (None: no limit)
    scan_chunk: int | None = None  # vmap: steps per jitted lax.scan, 0 = one jitted call per
    # step; None = 64 on GPU/TPU (fewer dispatches), 0 on CPU (as fit: scans measured slower there)
    verbose: int = 1  # 0 silent, 1 trial lines + an epoch bar, 2 trial lines + one line per epoch

    def check(self) -> SearchConfig:
        for name in ("trials", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size <= 0):
            raise ConfigError(f"group_size must be a positive integer or None, got {self.group_size!r}")
        if self.scan_chunk is not None and (not isinstance(self.scan_chunk, int) or self.scan_chunk < 0):
            raise ConfigError(f"scan_chunk must be a non-negative integer or None, got {self.scan_chunk!r}")
        if not 0.0 < float(self.validation_split) < 1.0:
            raise ConfigError(f"validation_split must be strictly between 0 and 1, got {self.validation_split!r}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.strategy not in ("auto", "sequential", "vmap"):
            raise ConfigError(f"strategy must be 'auto', 'sequential' or 'vmap', got {self.strategy!r}")
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"verbose must be 0, 1 or 2, got {self.verbose!r}")
        models.input_shape(self.model)  # unknown names raise ConfigError here
        optim.get_optimizer(self.optimizer, self.learning_rate)
        return self


@dataclass
class Trial:
    """One trial of a search.

    ``status`` is ``"ok"``, ``"invalid"`` (the model cannot be built; ``reason`` says why) or
    ``"diverged"`` (the loss became NaN; ``history``/``params`` stop at the last finished epoch).
    ``results`` holds the last epoch's loss, accuracy, val_loss and val_accuracy (the report's
    ``model_results``). ``wall_time_s`` is this trial's training time; a trial trained with vmap
    gets its group's time divided by the group's size (``trained_with``).
    """

    trial: int
    hyperparameters: dict[str, Any]
    seed: int
    model_name: str
    status: str = "ok"
    reason: str = ""
    history: train.History | None = None
    results: dict[str, float] = field(default_factory=dict)
    params: Any = None
    batch_stats: Any = None
    wall_time_s: float = 0.0
    trained_with: int = 1
    resumed: bool = False  # loaded from a previous run's directory
    input_shape: tuple[int, ...] = ()  # (H, W, C) it was trained on; () = the registry's

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.input_shape) or models.input_shape(self.model_name)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.hyperparameters.items() if k != "learning_rate"}

    def model(self) -> nn.Module:
        """The trial's Flax module (``models.get_model(model_name, **model_kwargs)``)."""
        return models.get_model(self.model_name, **self.model_kwargs)

    def train_state(self, optimizer: str = "rmsprop") -> train.TrainState:
        """A :class:`~jaxcnn.train.TrainState` holding the trained parameters (fresh optimizer),
        for :func:`jaxcnn.evaluate`, :func:`jaxcnn.predict` or more :func:`jaxcnn.fit`."""
        if self.params is None:
            raise ConfigError(f"trial {self.trial} has no parameters (status {self.status!r}: {self.reason})")
        lr = self.hyperparameters.get("learning_rate")
        state = train.create_train_state(self.model(), self.shape, optimizer, lr, self.seed)
        return state.replace(params=self.params, batch_stats=self.batch_stats or state.batch_stats)

    def best_epoch(self, metric: str = "val_accuracy", mode: str = "max") -> int | None:
        """0-based epoch with the best ``metric``, or None without a history."""
        if self.history is None or not self.history.history.get(metric):
            return None
        return self.history.best_epoch(metric, mode)

    def row(self, metric: str = "val_accuracy", mode: str = "max") -> dict[str, Any]:
        """One flat row of the results table."""
        row: dict[str, Any] = {"trial": self.trial, **self.hyperparameters, "seed": self.seed, "status": self.status}
        for k in _METRICS:
            row[k] = self.results.get(k)
        best = self.best_epoch(metric, mode)
        row["epochs_run"] = len(self.history) if self.history is not None else 0
        row["best_epoch"] = None if best is None else best + 1
        for k in _METRICS:
            values = self.history.history.get(k) if self.history is not None else None
            row[f"best_{k}"] = values[self.history.epoch.index(best)] if values and best is not None else None
        row["wall_time_s"] = self.wall_time_s
        row["trained_with"] = self.trained_with
        row["reason"] = self.reason
        return row


_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class SearchResult:
    """Every trial, in trial order, and the best one (None when no trial finished)."""

    trials: list[Trial]
    best: Trial | None
    config: SearchConfig
    space: dict[str, Dimension]
    strategy: str  # the one that ran (auto resolved)
    wall_time_s: float

    def rows(self) -> list[dict[str, Any]]:
        return [t.row(self.config.metric, self.config.mode) for t in self.trials]


# ----------------------------------------------------------------------------------------------
# The search


def resolve_strategy(strategy: str) -> str:
    """``"auto"`` -> ``"vmap"`` on GPU/TPU, ``"sequential"`` on CPU (see the module docstring)."""
    if strategy == "auto":
        return "vmap" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "sequential"
    return strategy


def random_search(
    x: Any,
    y: Any,
    space: Space | None = None,
    config: SearchConfig | None = None,
    *,
    validation_data: tuple[Any, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> SearchResult:
    """Random search: train ``config.trials`` trials sampled from ``space`` and return them all.

    Args:
      x: float training images (N, H, W, C), e.g. ``jaxcnn.data.to_float(ds.x_train)``.
      y: integer labels (N,) (or one-hot).
      space: name -> dimension; default :data:`REPORT_SPACE`.
      config: a :class:`SearchConfig`; ``overrides`` replace its fields (``trials=3, epochs=1``).
      validation_data: ``(x_val, y_val)``; default: the last ``validation_split`` of ``x``/``y``.
      out: directory for the resumable per-trial results and the final tables and plots; an
        existing one from the same search (same seed, space, data and settings) is resumed.

    Returns a :class:`SearchResult`. Raises ``ConfigError``/``ShapeError`` on bad input before
    training anything.
    """
    t_start = time.perf_counter()
    space = _check_space(REPORT_SPACE if space is None else space)
    try:
        config = dataclasses.replace(config or SearchConfig(), **overrides).check()
    except TypeError as e:
        raise ConfigError(f"random_search got an unknown option: {e}") from None
    strategy = resolve_strategy(config.strategy)
    say = print if config.verbose else (lambda *a, **k: None)

    x_tr, y_tr, x_val, y_val = _prepare_data(x, y, validation_data, config)
    input_shape = tuple(int(d) for d in x_tr.shape[1:])
    if config.batch_size > len(x_tr):
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(x_tr)} training examples; "
            f"use batch_size <= {len(x_tr)} or more data"
        )
    run_dir = None
    if out is not None:
        run_dir = _open_run_dir(Path(out), _fingerprint(config, space, x_tr, y_tr, x_val, y_val))

    trials: dict[int, Trial] = {}
    todo: list[Trial] = []  # in trial order: invalid ones are recorded, valid ones trained
    for t in range(1, config.trials + 1):
        hp = sample(space, config.seed, t)
        loaded = _load_trial(run_dir, t, hp, config) if run_dir is not None else None
        if loaded is not None:
            trials[t] = loaded
            continue
        trial = Trial(t, hp, trial_seed(config.seed, t), config.model, input_shape=input_shape)
        reason = _unbuildable(trial)
        if reason:
            trial.status, trial.reason = "invalid", reason
        todo.append(trial)
    if trials:
        say(f"Resuming {run_dir}: trials {', '.join(map(str, sorted(trials)))} already finished")

    def finished(batch: list[Trial]) -> None:
        for trial in batch:
            trials[trial.trial] = trial
            if run_dir is not None:
                _save_trial(run_dir, trial)
            _report_trial(trial, say)
            best = _best(trials.values(), config)
            if best is not None:
                _report_best(best, config, say)
        if run_dir is not None:
            _write_tables(run_dir, _ordered(trials), config)

    if strategy == "sequential":
        for trial in todo:
            _announce(trial, config, say)
            finished([trial if trial.status == "invalid" else _train_sequential(trial, x_tr, y_tr, x_val, y_val, config)])
    else:
        for trial in todo:
            if trial.status == "invalid":
                _announce(trial, config, say)
                finished([trial])
        for group in _groups([t for t in todo if t.status != "invalid"], config.group_size):
            for trial in group:
                _announce(trial, config, say)
            finished(_train_vmap(group, x_tr, y_tr, x_val, y_val, config))

    ordered = _ordered(trials)
    result = SearchResult(
        trials=ordered,
        best=_best(ordered, config),
        config=config,
        space=space,
        strategy=strategy,
        wall_time_s=time.perf_counter() - t_start,
    )
    if run_dir is not None:
        save_results(result, run_dir)
    if result.best is not None:
        say(f"Best: trial {result.best.trial} ({_hp_text(result.best.hyperparameters)}), "
            f"{config.metric} {result.best.results.get(config.metric, float('nan')):.4f}; "
            f"search took {result.wall_time_s:.1f} s")
    else:
        say("No trial finished with a usable result")
    return result


def _ordered(trials: Mapping[int, Trial]) -> list[Trial]:
    return [trials[t] for t in sorted(trials)]


def _prepare_data(x, y, validation_data, config):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ShapeError(f"x has shape {x.shape}; random_search takes a batch of images (N, H, W, C)")
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(
            f"x has dtype {x.dtype}; random_search takes floating-point images. Scale them first, "
            "e.g. jaxcnn.data.to_float(x) (pixels / 255, as the report does)"
        )
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot
        y = y.argmax(-1)
    if validation_data is not None:
        x_val, y_val = np.asarray(validation_data[0]), np.asarray(validation_data[1])
        if y_val.ndim == 2:
            y_val = y_val.argmax(-1)
        x_tr, y_tr = x, y
    else:
        from jaxcnn.data import validation_split

        (x_tr, y_tr), (x_val, y_val) = validation_split(x, y, config.validation_split)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return f32(x_tr), y_tr.astype(np.int32), f32(x_val), y_val.astype(np.int32)


def _unbuildable(trial: Trial) -> str:
    """Why ``trial``'s model cannot be built for its input shape ("" if it can): traced, not compiled."""
    try:
        module = trial.model()
        x = jax.ShapeDtypeStruct((1, *trial.shape), jnp.float32)
        jax.eval_shape(lambda v: module.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, v), x)
    except ShapeError as e:
        return str(e)
    return ""


def _groups(pending: list[Trial], group_size: int | None) -> list[list[Trial]]:
    """Trials whose hyperparameters other than learning rate and weight decay agree, in order of
    their first trial; split into chunks of at most ``group_size``."""
    by_key: dict[str, list[Trial]] = {}
    for trial in pending:
        key = json.dumps({k: v for k, v in trial.hyperparameters.items() if k not in _PER_TRIAL}, sort_keys=True)
        by_key.setdefault(key, []).append(trial)
    groups = []
    for members in by_key.values():
        n = group_size or len(members)
        groups.extend(members[i : i + n] for i in range(0, len(members), n))
    return groups


def _best(trials, config: SearchConfig) -> Trial | None:
    """The first trial with the best last-epoch ``metric`` among those that finished (ties: the
    earlier trial, as the report's strict ``>``)."""
    best, best_value = None, None
    for trial in trials:
        value = trial.results.get(config.metric)
        if trial.status != "ok" or value is None or not math.isfinite(value):
            continue
        if best is None or (value > best_value if config.mode == "max" else value < best_value):
            best, best_value = trial, value
    return best


# -- printing, as the report's RandomSearch does -------------------------------------------------


def _hp_text(hp: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())


def _announce(trial: Trial, config: SearchConfig, say) -> None:
    line = "*" * 25
    say(f"{line}\nNew model! Trial {trial.trial}/{config.trials} (seed {trial.seed})\n{line}")
    for k, v in trial.hyperparameters.items():
        say(f"Current {k.replace('_', ' ')} is: {v:.6g}" if isinstance(v, float) else f"Current {k.replace('_', ' ')} is: {v}")


def _report_trial(trial: Trial, say) -> None:
    if trial.status == "invalid":
        say(f"Trial {trial.trial} is invalid: {trial.reason}")
        return
    shown = " - ".join(f"{k}: {trial.results[k]:.4f}" for k in _METRICS if k in trial.results) or "no epoch finished"
    together = f", trained with {trial.trained_with - 1} other(s)" if trial.trained_with > 1 else ""
    status = "" if trial.status == "ok" else f" [{trial.status}: {trial.reason}]"
    say(f"Trial {trial.trial}: {shown} ({trial.wall_time_s:.1f} s{together}){status}")


def _report_best(best: Trial, config: SearchConfig, say) -> None:
    say(f"Current best model is model no. {best.trial} with the following hyperparameters:")
    for k, v in best.hyperparameters.items():
        say(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    say(f"  {config.metric} (last epoch): {best.results[config.metric]:.4f}")


class _EpochBar(Callback):
    """A tqdm bar over a trial's epochs, with the last epoch's metrics."""

    def __init__(self, epochs: int, desc: str):
        self.epochs, self.desc, self.bar = epochs, desc, None

    def on_train_begin(self, loop) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.epochs, desc=self.desc, unit="epoch", dynamic_ncols=True)

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop) -> None:
        self.update(logs)

    def update(self, logs: Mapping[str, float]) -> None:
        if self.bar is not None:
            shown = {"trial": logs["trial"]} if "trial" in logs else {}
            shown.update({k: f"{logs[k]:.4f}" for k in _METRICS if k in logs})
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)

    def on_train_end(self, loop) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- sequential: one fit per trial ---------------------------------------------------------------


def _train_sequential(trial: Trial, x_tr, y_tr, x_val, y_val, config: SearchConfig) -> Trial:
    lr = trial.hyperparameters.get("learning_rate", config.learning_rate)
    bar = _EpochBar(config.epochs, f"Trial {trial.trial}") if config.verbose == 1 else None
    t0 = time.perf_counter()
    try:
        state, history = train.fit(
            trial.model(),
            x_tr,
            y_tr,
            epochs=config.epochs,
            batch_size=config.batch_size,
            optimizer=optim.get_optimizer(config.optimizer, lr),
            validation_data=(x_val, y_val),
            seed=trial.seed,
            callbacks=[bar] if bar is not None else [],
            verbose=2 if config.verbose == 2 else 0,
        )
    except TrainingError as e:
        if bar is not None:
            bar.close()
        state, history = e.state, e.history  # type: ignore[attr-defined]
        trial.status, trial.reason = "diverged", str(e)
    trial.wall_time_s = time.perf_counter() - t0
    trial.history = history
    trial.results = _last(history)
    trial.params, trial.batch_stats = jax.device_get((state.params, state.batch_stats))
    return trial


def _last(history: train.History) -> dict[str, float]:
    return {k: history.history[k][-1] for k in _METRICS if history.history.get(k)}


# -- vmap: trials that share parameter shapes, trained in one program ----------------------------


def _scaled_l2(state: train.TrainState, scale: jax.Array) -> train.TrainState:
    """``state`` whose model multiplies every sown loss by ``scale`` (this trial's weight decay;
    the group's model was built with weight_decay=1.0)."""
    apply = state.apply_fn

    def apply_fn(variables, *args, mutable=False, **kwargs):
        if not mutable:
            return apply(variables, *args, **kwargs)
        out, updates = apply(variables, *args, mutable=mutable, **kwargs)
        if "losses" in updates:
            updates = {**updates, "losses": jax.tree.map(lambda v: v * scale, updates["losses"])}
        return out, updates

    return state.replace(apply_fn=apply_fn)


def _group_train(states, accs, scales, x_all, y_all, idx):
    """One step of every trial: trial i trains on ``x_all[idx[i]]``; (T, ...) in, (T, ...) out."""

    def one(state, acc, scale, idx):
        new_state, acc = train._train_and_accumulate(_scaled_l2(state, scale), acc, {"x": x_all[idx], "y": y_all[idx]})
        return new_state.replace(apply_fn=state.apply_fn), acc

    return jax.vmap(one)(states, accs, scales, idx)


def _group_eval(states, accs, scales, batch):
    """Validation metrics of every trial on the same (masked) batch."""
    return jax.vmap(lambda s, a, c: train._eval_and_accumulate(_scaled_l2(s, c), a, batch))(states, accs, scales)


def _group_train_chunk(states, accs, scales, x_all, y_all, idx, valid):
    """``idx`` (K, T, B): K steps of every trial in one ``lax.scan``; a step whose ``valid`` (K,)
    is False is padding and changes nothing (so every chunk has one shape, one compilation)."""

    def body(carry, inputs):
        st, ac = carry
        ids, ok = inputs
        new_st, new_ac = _group_train(st, ac, scales, x_all, y_all, ids)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return (jax.tree.map(keep, new_st, st), jax.tree.map(keep, new_ac, ac)), None

    (states, accs), _ = jax.lax.scan(body, (states, accs), (idx, valid))
    return states, accs


_jit_group_train = jax.jit(_group_train, donate_argnums=(0, 1))
_jit_group_chunk = jax.jit(_group_train_chunk, donate_argnums=(0, 1))
_jit_group_eval = jax.jit(_group_eval, donate_argnums=(1,))


def _unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[i], tree)


def _init_group(module, group: list[Trial], config: SearchConfig) -> train.TrainState:
    """The stacked (T, ...) train states of ``group``, equal to ``create_train_state`` per trial.

    One jitted, vmapped program (one compilation for the group instead of several per trial)
    with ``create_train_state``'s keys, ``init_key, dropout_key = split(key(seed))``, and each
    trial's learning rate put into its optimizer state (``inject_hyperparams``).
    """
    shape = group[0].shape
    x = jnp.zeros((1, *shape), jnp.float32)
    lrs = [t.hyperparameters.get("learning_rate", config.learning_rate) for t in group]
    tx = optim.get_optimizer(config.optimizer, lrs[0])

    def variables(seed):
        init_key, dropout_key = jax.random.split(jax.random.key(seed))
        return module.init({"params": init_key, "dropout": dropout_key}, x, train=False), dropout_key

    logits = jax.eval_shape(lambda: module.apply(variables(0)[0], x, mutable=["losses"])[0])

    def one(seed, lr):
        v, dropout_key = variables(seed)
        state = train.state_from_variables(module.apply, v, tx, dropout_key, shape, int(logits.shape[-1]))
        if lr is None:
            return state
        hp = dict(state.opt_state.hyperparams)
        hp["learning_rate"] = lr.astype(hp["learning_rate"].dtype)
        return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))

    seeds = np.asarray([t.seed for t in group], np.int32)
    if lrs[0] is None:
        return jax.jit(jax.vmap(lambda s: one(s, None)))(seeds)
    return jax.jit(jax.vmap(one))(seeds, np.asarray(lrs, np.float32))


def _zero_accs(n_trials: int) -> dict[str, np.ndarray]:
    """``train._zero_acc()`` for each of ``n_trials`` trials, built on the host (no eager ops)."""
    return {k: np.full(n_trials, v, np.asarray(v).dtype) for k, v in jax.device_get(train._zero_acc()).items()}


def _epoch_units(orders: np.ndarray, batch_size: int, chunk: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Split the epoch's per-trial orders (T, n) into work units: with ``chunk``, scans of
    ``(idx (K, T, B), valid (K,))`` over the full batches (the last one padded to K), otherwise
    single steps ``(idx (T, B), None)``; the last, partial batch is always a single step."""
    n_trials, n = orders.shape
    full = n // batch_size
    units: list[tuple[np.ndarray, np.ndarray | None]] = []
    if chunk and full:
        k = min(chunk, full)
        n_chunks = math.ceil(full / k)
        idx = np.zeros((n_chunks * k, n_trials, batch_size), np.int32)
        idx[:full] = orders[:, : full * batch_size].reshape(n_trials, full, batch_size).transpose(1, 0, 2)
        valid = np.arange(n_chunks * k) < full
        units += [(idx[c * k : (c + 1) * k], valid[c * k : (c + 1) * k]) for c in range(n_chunks)]
    else:
        units += [(orders[:, i * batch_size : (i + 1) * batch_size], None) for i in range(full)]
    if n % batch_size:
        units.append((orders[:, full * batch_size :], None))
    return units


def _train_vmap(group: list[Trial], x_tr, y_tr, x_val, y_val, config: SearchConfig) -> list[Trial]:
    t0 = time.perf_counter()
    n_trials, n, bs = len(group), len(x_tr), config.batch_size
    kwargs = dict(group[0].model_kwargs)
    has_wd = "weight_decay" in kwargs
    if has_wd:
        kwargs["weight_decay"] = 1.0
    module = models.get_model(config.model, **kwargs)
    state = _init_group(module, group, config)
    # fit checks labels for the sequential path; here they index the logits directly.
    train._check_labels(y_tr, len(y_tr), state.num_classes, "y")
    train._check_labels(y_val, len(y_val), state.num_classes, "validation y")
    scales = jnp.asarray([t.hyperparameters["weight_decay"] if has_wd else 1.0 for t in group], jnp.float32)
    x_dev, y_dev = jnp.asarray(x_tr), jnp.asarray(y_tr)
    histories = [train.History(params={"epochs": config.epochs, "batch_size": bs, "samples": n, "seed": t.seed}) for t in group]
    alive = [True] * n_trials
    snapshots: list[Any] = [None] * n_trials
    chunk = config.scan_chunk if config.scan_chunk is not None else (0 if jax.default_backend() == "cpu" else 64)
    label = ", ".join(str(t.trial) for t in group)
    bar = None
    if config.verbose == 1:
        bar = _EpochBar(config.epochs, f"Trials {label}")
        bar.on_train_begin(None)
    for epoch in range(config.epochs):
        e0 = time.perf_counter()
        orders = np.stack([train.epoch_order(n, t.seed, epoch) for t in group]).astype(np.int32)
        acc = _zero_accs(n_trials)
        for idx, valid in _epoch_units(orders, bs, chunk):
            if valid is None:
                state, acc = _jit_group_train(state, acc, scales, x_dev, y_dev, idx)
            else:
                state, acc = _jit_group_chunk(state, acc, scales, x_dev, y_dev, idx, valid)
        m = jax.device_get(acc)
        train_time = time.perf_counter() - e0
        val = _group_evaluate(state, scales, x_val, y_val, bs)
        lrs = np.asarray(jax.device_get(optim.get_learning_rate(state.opt_state)))
        epoch_time = time.perf_counter() - e0
        for j, trial in enumerate(group):
            if not alive[j]:
                continue
            count = max(float(m["count"][j]), 1.0)
            if m["bad_step"][j] >= 0:
                alive[j] = False
                trial.status = "diverged"
                trial.reason = (
                    f"the loss became NaN or infinite at epoch {epoch + 1}, step {int(m['bad_step'][j]) + 1} "
                    "(global step); training stopped with the weights of the last good step. Lower the "
                    "learning rate, check the inputs for NaN, or add weight decay"
                )
                snapshots[j] = _unstack(jax.device_get((state.params, state.batch_stats)), j)
                continue
            logs = {
                "loss": float(m["loss_sum"][j]) / count,
                "accuracy": float(m["correct"][j]) / count,
                "val_loss": val["loss"][j],
                "val_accuracy": val["accuracy"][j],
                "learning_rate": float(lrs[j]),
                "time_s": epoch_time,
                "examples_per_s": count / train_time,
                "train_time_s": train_time,
            }
            histories[j].append(epoch, logs)
            if config.verbose == 2:
                shown = " - ".join(f"{k}: {logs[k]:.4f}" for k in _METRICS)
                print(f"Trial {trial.trial} epoch {epoch + 1}/{config.epochs} - {epoch_time:.1f}s - {shown}", flush=True)
        if bar is not None:  # the bar shows the group's best trial so far
            best = max((j for j in range(n_trials) if alive[j]), key=lambda j: histories[j]["val_accuracy"][-1], default=None)
            bar.update({} if best is None else {"trial": group[best].trial, **_last(histories[best])})
        if not any(alive):
            break
    if bar is not None:
        bar.close()
    wall = (time.perf_counter() - t0) / n_trials
    host = jax.device_get((state.params, state.batch_stats))
    for j, trial in enumerate(group):
        trial.params, trial.batch_stats = snapshots[j] if snapshots[j] is not None else _unstack(host, j)
        trial.history = histories[j]
        trial.results = _last(histories[j]) if len(histories[j]) else {}
        trial.wall_time_s = wall
        trial.trained_with = n_trials
    return group


def _group_evaluate(state, scales, x, y, batch_size: int) -> dict[str, list[float]]:
    n = len(x)
    batch_size = min(batch_size, n)
    n_trials = int(scales.shape[0])
    acc = {k: np.zeros(n_trials, np.float32) for k in ("loss_sum", "correct", "count")}
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        mask = np.ones(len(xb), np.float32)
        if len(xb) < batch_size:  # pad to full size with masked rows: one compilation
            pad = batch_size - len(xb)
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        acc = _jit_group_eval(state, acc, scales, {"x": xb, "y": yb, "mask": mask})
    m = jax.device_get(acc)
    return {
        "loss": [float(v) for v in m["loss_sum"] / m["count"]],
        "accuracy": [float(v) for v in m["correct"] / m["count"]],
    }


# ----------------------------------------------------------------------------------------------
# Storage: resumable per-trial results, then the tables and plots

TRIALS_DIR = "trials"
RESULT_FILE = "result.json"
SEARCH_FILE = "search.json"




def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=float) + "\n"


def _fingerprint(config: SearchConfig, space: Space, x_tr, y_tr, x_val, y_val) -> dict[str, Any]:
    """What must match for a rerun to resume a search: everything that changes a trial's result."""
    h = hashlib.sha256()
    for a in (x_tr, y_tr, x_val, y_val):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return {
        "space": space_to_dict(space),
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "model": config.model,
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "data": {"train": len(x_tr), "validation": len(x_val), "sha256": h.hexdigest()},
    }


def _open_run_dir(out: Path, fingerprint: dict[str, Any]) -> Path:
    """Create ``out`` or resume it; refuse a directory of another search or of something else."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} exists and is not a directory; choose another directory")
    meta = out / SEARCH_FILE
    if meta.is_file():
        try:
            old = json.loads(meta.read_text())
        except ValueError as e:
            raise ConfigError(f"{meta} is not valid JSON ({e}); choose a new directory") from None
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if diff:
            raise ConfigError(
                f"{out} holds a different search (it differs in {', '.join(diff)}); resume it with the "
                "same settings and data, or choose a new directory"
            )
        return out
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} already holds files but no {SEARCH_FILE}; choose a new directory so that nothing is overwritten")
    try:
        (out / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write(meta, _json(fingerprint))
    except OSError as e:
        raise ConfigError(f"cannot write to {out}: {e.strerror or e}; choose a writable directory") from None
    return out


def _trial_dir(run_dir: Path, trial: int) -> Path:
    return run_dir / TRIALS_DIR / f"{trial:03d}"


def _save_trial(run_dir: Path, trial: Trial) -> None:
    """Write trial's parameters, then its result.json by rename: result.json marks it finished."""
    from jaxcnn import checkpoint

    d = _trial_dir(run_dir, trial.trial)
    d.mkdir(parents=True, exist_ok=True)
    if trial.params is not None:
        checkpoint.export(d / "model", _holder(trial), trial.model_name, trial.model_kwargs)
    record = {
        "trial": trial.trial,
        "hyperparameters": trial.hyperparameters,
        "seed": trial.seed,
        "model": trial.model_name,
        "status": trial.status,
        "reason": trial.reason,
        "results": trial.results,
        "history": trial.history.to_dict() if trial.history is not None else None,
        "wall_time_s": trial.wall_time_s,
        "trained_with": trial.trained_with,
        "input_shape": list(trial.shape),
    }
    checkpoint.atomic_write(d / RESULT_FILE, _json(record))


@dataclass
class _VariablesHolder:
    """What :func:`jaxcnn.checkpoint.export` reads from a state."""

    params: Any
    batch_stats: Any
    input_shape: tuple[int, ...]
    num_classes: int


def _holder(trial: Trial) -> _VariablesHolder:
    x = jax.ShapeDtypeStruct((1, *trial.shape), jnp.float32)
    variables = {"params": trial.params, **({"batch_stats": trial.batch_stats} if trial.batch_stats else {})}
    logits = jax.eval_shape(lambda v, x: trial.model().apply(v, x, mutable=["losses"])[0], variables, x)
    return _VariablesHolder(trial.params, trial.batch_stats or {}, trial.shape, int(logits.shape[-1]))


def _load_trial(run_dir: Path, t: int, hp: dict[str, Any], config: SearchConfig) -> Trial | None:
    """Trial ``t`` from ``run_dir`` if it finished there (None: train it)."""
    from jaxcnn import checkpoint

    d = _trial_dir(run_dir, t)
    try:
        record = json.loads((d / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("hyperparameters") != hp:
        return None  # cannot happen with a matching search.json; retrain rather than trust it
    trial = Trial(
        trial=t,
        hyperparameters=hp,
        seed=record["seed"],
        model_name=record.get("model", config.model),
        status=record["status"],
        reason=record.get("reason", ""),
        history=train.History.from_dict(record["history"]) if record.get("history") else None,
        results=record.get("results", {}),
        wall_time_s=record.get("wall_time_s", 0.0),
        trained_with=record.get("trained_with", 1),
        resumed=True,
        input_shape=tuple(record.get("input_shape", ())),
    )
    if trial.status != "invalid":
        try:
            _, variables, _ = checkpoint.load(d / "model")
        except CheckpointError:
            return None  # parameters missing or damaged: train the trial again
        trial.params, trial.batch_stats = variables["params"], variables["batch_stats"]
    return trial


_COLUMNS_TAIL = (
    "seed", "status", *_METRICS, "epochs_run", "best_epoch", *(f"best_{k}" for k in _METRICS),
    "wall_time_s", "trained_with", "reason",
)


def _write_tables(run_dir: Path, trials: Sequence[Trial], config: SearchConfig) -> list[dict[str, Any]]:
    rows = [t.row(config.metric, config.mode) for t in trials]
    hp_names = list(dict.fromkeys(k for t in trials for k in t.hyperparameters))
    columns = ["trial", *hp_names, *_COLUMNS_TAIL]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row.get(k), float) else row[k]) for k in columns})
    checkpoint.atomic_write(run_dir / "trials.csv", buf.getvalue())
    checkpoint.atomic_write(run_dir / "trials.json", _json(rows))
    return rows


def save_results(result: SearchResult, out: str | os.PathLike[str]) -> Path:
    """Write the search's tables and figures to ``out``:

    trials.csv / trials.json (one row per trial: hyperparameters, status, last-epoch and
    best-epoch metrics, wall time), best.json (the best trial and the search's settings),
    params.png (each trial's ``metric`` against each hyperparameter) and best/: summary.txt,
    history.json/.csv/.png and model/ (:func:`jaxcnn.checkpoint.export`).
    """
    from jaxcnn import checkpoint, plots
    from jaxcnn.summary import summary

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = result.config
    rows = _write_tables(out, result.trials, config)
    names = list(result.space)
    log = [k for k, d in result.space.items() if isinstance(d, LogUniform)]
    plots.save(plots.metric_vs_params(rows, names, config.metric, log=log), out / "params.png")
    best = result.best
    ok = sum(t.status == "ok" for t in result.trials)
    summary_record = {
        "metric": config.metric,
        "mode": config.mode,
        "best": None if best is None else best.row(config.metric, config.mode),
        "trials": len(result.trials),
        "finished": ok,
        "invalid": [t.trial for t in result.trials if t.status == "invalid"],
        "diverged": [t.trial for t in result.trials if t.status == "diverged"],
        "strategy": result.strategy,
        "backend": jax.default_backend(),
        "run_wall_time_s": result.wall_time_s,  # this call, resumed trials not counted
        "trials_wall_time_s": sum(t.wall_time_s for t in result.trials),  # every trial's training, over all runs
        "config": dataclasses.asdict(config),
        "space": space_to_dict(result.space),
    }
    checkpoint.atomic_write(out / "best.json", _json(summary_record))
    if best is not None:
        bdir = out / "best"
        bdir.mkdir(exist_ok=True)
        text = summary(best.model(), best.shape, name=f"{config.model} (trial {best.trial})")
        checkpoint.atomic_write(bdir / "summary.txt", f"Trial {best.trial}: {_hp_text(best.hyperparameters)}\n\n{text}\n")
        checkpoint.atomic_write(bdir / "history.json", _json(best.history.to_dict()))
        checkpoint.atomic_write(bdir / "history.csv", best.history.to_csv())
        title = f"Best trial {best.trial}: {_hp_text(best.hyperparameters)}"
        plots.save(plots.training_curves(best.history, monitor=config.metric, title=title), bdir / "history.png")
        checkpoint.export(bdir / "model", _holder(best), best.model_name, best.model_kwargs)
    return out


__all__ = [
    "Choice", "IntRange", "LogUniform", "REPORT_SPACE", "SearchConfig", "SearchResult", "Trial", "Uniform",
    "random_search", "resolve_strategy", "sample", "save_results", "space_to_dict", "trial_seed",
]
