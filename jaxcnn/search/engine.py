"""The search on Optuna: configuration, storage, the study's trial slots, workers, one trial.

A search of ``N`` trials is an Optuna study holding ``N`` *slots*: the process that creates the
study enqueues trials ``1..N`` (Optuna ``WAITING`` trials whose ``user_attrs["trial"]`` is ``t``;
with the random sampler their declarative parameters are fixed to :func:`~jaxcnn.search.sample`
``(space, seed, t)``). A worker takes the lowest waiting slot (its state set ``WAITING ->
RUNNING`` in one locked transaction), trains it with :func:`jaxcnn.fit`, and finishes it:
``COMPLETE`` (its value is the last epoch's metric), ``PRUNED``, or ``FAIL`` with
``user_attrs["status"]`` ``"invalid"`` (the model cannot be built), ``"diverged"`` or
``"error"`` (the model or its training raised). A worker never creates a trial of its own, so the
study ends with exactly the ``N`` trials asked for.

A trial that raises is recorded and the search goes on, as KerasTuner's; after
``max_consecutive_failed_trials`` such trials in a row the worker puts every trial whose last
attempt raised back in the queue, marks the study stopped (``STOP_ATTR``, which the other workers
read before taking a slot) and raises :class:`~jaxcnn.errors.SearchError`. A rerun clears the
mark and trains those trials again.

While it trains, a worker records a heartbeat in the database every ``heartbeat_interval``
seconds. Before taking a slot, every worker fails the running trials whose heartbeat is older
than ``grace_period`` (a killed worker's) with Optuna's ``fail_stale_trials``, and Optuna's
``RetryHeartbeatStaleTrialCallback`` enqueues each again with the same parameters and
``user_attrs``: another worker trains it, and the study still completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxcnn import checks
from jaxcnn.callbacks import Callback
from jaxcnn.errors import ConfigError, SearchError, ShapeError, TrainingError
from jaxcnn.search import space as spaces

if TYPE_CHECKING:  # pragma: no cover
    import optuna

#: Hyperparameters that go to training rather than to the model's constructor.
TRAINING_PARAMS = ("learning_rate", "optimizer", "batch_size")
SAMPLERS = ("random", "tpe")
PRUNERS = ("none", "median", "halving", "hyperband")
DB_FILE = "study.db"
TRIALS_DIR = "trials"
MAX_RETRY = 2  # a slot whose worker is killed is trained again at most this many times


@dataclass(frozen=True)
class SearchConfig:
    """One search. The defaults are the report's (1.5): 10 random trials of ``search_cnn``."""

    trials: int = 10  # number of trials, numbered 1..trials
    epochs: int = 10  # epochs per trial (no early stopping, as the report)
    batch_size: int = 256  # unless the space has "batch_size"
    validation_split: float = 0.2  # last fraction of the training arrays, as Keras
    # A registry name, a Flax module class (or functools.partial of one, or a linen instance) built
    # with the space's model attributes (an NNX class also with rngs=nnx.Rngs(trial seed)), or a
    # function optuna.Trial -> module (linen or NNX; define-by-run).
    model: Any = "search_cnn"
    optimizer: str = "rmsprop"  # unless the space has "optimizer"; jaxcnn.optim name
    learning_rate: float | None = None  # unless the space has "learning_rate"; None = default
    seed: int = 0  # trial t's random hyperparameters and seed derive from (seed, t) only
    metric: str = "val_accuracy"  # the last epoch's metric is the trial's value; reported each epoch
    # "auto" (minimise a loss, maximise an accuracy: jaxcnn.callbacks' rule, as EarlyStopping's),
    # "max" or "min" for metric; resolved_mode says which "auto" is.
    mode: str = "auto"
    sampler: Any = "random"  # "random" (seeded per trial), "tpe", or an optuna sampler (not Grid/BruteForce)
    pruner: Any = "none"  # "none", "median", "halving", "hyperband", or an optuna pruner
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats (databases only)
    grace_period: int | None = None  # heartbeat age that marks a trial's worker dead (None: 3 x interval)
    verbose: int = 1  # 0 silent, 1 trial lines + an epoch bar, 2 trial lines + one line per epoch
    # Trials in a row whose model or training raised (a bug, not values it cannot take) before
    # the search stops with SearchError; KerasTuner's name and default.
    max_consecutive_failed_trials: int = 3
    # Keras's fit(class_weight=): {class: weight}, each training example's loss weighed by its
    # class's weight (1 for a class left out); the validation figures are not weighed, as Keras.
    class_weight: dict[int, float] | None = None

    def check(self) -> SearchConfig:
        for name in ("trials", "epochs", "batch_size", "heartbeat_interval", "max_consecutive_failed_trials"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.grace_period is not None and (not isinstance(self.grace_period, int) or self.grace_period <= 0):
            raise ConfigError(f"grace_period must be a positive integer or None, got {self.grace_period!r}")
        if not 0.0 < float(self.validation_split) < 1.0:
            raise ConfigError(f"validation_split must be strictly between 0 and 1, got {self.validation_split!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= int(self.seed) <= 2**32 - 1:
            raise ConfigError(f"seed must be a whole number from 0 to {2**32 - 1}, got {self.seed!r}")
        if self.metric not in METRICS:
            raise ConfigError(
                f"metric must be one of {', '.join(METRICS)} (the last epoch's value is the trial's), got {self.metric!r}"
            )
        if self.mode not in ("auto", "max", "min"):
            raise ConfigError(
                f"mode must be 'auto' (minimise a loss, maximise an accuracy), 'max' or 'min', got {self.mode!r}"
            )
        if isinstance(self.sampler, str) and self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)} or an optuna sampler, got {self.sampler!r}")
        if not isinstance(self.sampler, str):
            _check_sampler(self.sampler)
        if isinstance(self.pruner, str) and self.pruner not in PRUNERS:
            raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)} or an optuna pruner, got {self.pruner!r}")
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"verbose must be 0, 1 or 2, got {self.verbose!r}")
        if isinstance(self.model, str):
            from jaxcnn import models

            models.input_shape(self.model)  # unknown names raise ConfigError here
        elif _is_nnx_module(self.model):
            raise ConfigError(
                f"model is an NNX module instance ({type(self.model).__name__}), which cannot be rebuilt with each trial's "
                f"values; pass its class, model={type(self.model).__name__} (built as Class(**values, rngs=nnx.Rngs(seed)))"
            )
        elif not callable(self.model) and not _is_module(self.model):
            raise ConfigError(
                f"model must be a registry name, a Flax module class or a function trial -> module, got {self.model!r}"
            )
        if self.class_weight is not None:
            _check_class_weight(self.class_weight)
        from jaxcnn import optim

        optim.get_optimizer(self.optimizer, self.learning_rate)
        return self

    @property
    def grace(self) -> int:
        return self.grace_period or 3 * self.heartbeat_interval

    @property
    def resolved_mode(self) -> str:
        """``mode`` with "auto" decided for ``metric`` as jaxcnn's callbacks decide it
        (``jaxcnn.callbacks._auto_mode``): "min" for a loss, "max" for an accuracy."""
        from jaxcnn.callbacks import _auto_mode

        return _auto_mode(self.metric, self.mode, "SearchConfig")


#: Optuna samplers that need ``study.optimize`` to create their trials: GridSampler gives an
#: enqueued trial no grid point (every trial fails), BruteForceSampler calls ``study.stop()``,
#: which raises outside ``optimize``. The search's slots are enqueued up front and run outside it.
_SLOT_BLIND_SAMPLERS = ("GridSampler", "BruteForceSampler")


def _check_sampler(sampler: Any) -> None:
    """Refuse a sampler object the search cannot run: not an Optuna sampler, or one of
    :data:`_SLOT_BLIND_SAMPLERS` (every trial would fail, or Optuna would raise mid-search)."""
    import optuna

    inner = sampler
    while isinstance(inner, optuna.samplers.PartialFixedSampler):
        inner = inner._base_sampler  # noqa: SLF001 (Optuna keeps the wrapped sampler there)
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(
            f"sampler must be one of {', '.join(SAMPLERS)} or an optuna sampler (optuna.samplers.BaseSampler), "
            f"got {type(sampler).__name__}"
        )
    names = {c.__name__ for c in type(inner).__mro__}
    for bad in _SLOT_BLIND_SAMPLERS:
        if bad in names:
            raise ConfigError(
                f"sampler {bad} does not work in jaxcnn's search (its trials are enqueued up front and run outside Optuna's "
                f"study.optimize, which {bad} needs); use sampler=\"random\" or \"tpe\", or an optuna RandomSampler, "
                "TPESampler or QMCSampler"
            )


# ----------------------------------------------------------------------------------------------
# Models


def _is_module(obj: Any) -> bool:
    import flax.linen as nn

    return isinstance(obj, nn.Module)


def _is_nnx_module(obj: Any) -> bool:
    from flax import nnx

    return isinstance(obj, nnx.Module)


def _module_class(model: Any) -> type | None:
    """The Flax class (linen or NNX) behind ``model`` (a class, a partial of one), else None."""
    import flax.linen as nn
    from flax import nnx

    target = model
    while isinstance(target, functools.partial):
        target = target.func
    return target if isinstance(target, type) and issubclass(target, (nn.Module, nnx.Module)) else None


def _nnx_class(model: Any) -> bool:
    """Whether ``model`` (a class, a partial of one) builds an NNX module."""
    from flax import nnx

    cls = _module_class(model)
    return cls is not None and issubclass(cls, nnx.Module)


def _init_arguments(cls: type) -> frozenset[str] | None:
    """An NNX class's constructor arguments but ``rngs``; None when it takes ``**kwargs`` or its
    signature cannot be read."""
    import inspect

    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name for p in params
        if p.name != "rngs" and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def is_define_by_run(model: Any) -> bool:
    """Whether ``model`` is a function ``trial -> module`` (not a registry name, a Flax class, a
    partial of one, or a module instance)."""
    return not isinstance(model, str) and not _is_module(model) and not _is_nnx_module(model) and _module_class(model) is None


def _stable_repr(value: Any) -> str:
    """``repr(value)`` without memory addresses (``<function f at 0x7f...>``), which differ in
    every process and would make a rerun's fingerprint differ."""
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _instance_fields(module: Any) -> str:
    """A linen instance's attributes that differ from its class's defaults, as ``k=v, ...``."""
    from jaxcnn import models

    parts = []
    for name, value, default in models.module_fields(module):
        try:
            same = default is not dataclasses.MISSING and bool(value == default)
        except Exception:  # noqa: BLE001 (an array or a value without a plain ==)
            same = False
        if not same:
            parts.append(f"{name}={' '.join(_stable_repr(value).split())}")  # one line
    return ", ".join(parts)


def describe_model(model: Any) -> str:
    """A stable one-line name for ``model`` (the study's fingerprint and the tables); a linen
    instance with the attributes it sets (a rerun with other values is another search, as with a
    ``functools.partial``)."""
    if isinstance(model, str):
        return model
    if _is_module(model):
        fields = _instance_fields(model)  # none: the name studies made before had
        return f"{type(model).__module__}.{type(model).__qualname__}{f'({fields})' if fields else ''} instance"
    if isinstance(model, functools.partial):
        args = ", ".join([*map(_stable_repr, model.args), *(f"{k}={_stable_repr(v)}" for k, v in sorted(model.keywords.items()))])
        return f"partial({describe_model(model.func)}, {args})"
    return f"{getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', repr(model))}"


def _takes(model: Any, name: str) -> bool:
    """Whether the module that ``model`` builds has an attribute ``name``."""
    from jaxcnn import models

    if isinstance(model, str):
        return hasattr(models.get_model(model), name)
    if _is_module(model):
        return hasattr(model, name)
    cls = _module_class(model)
    if cls is not None and _nnx_class(cls):
        return name in (_init_arguments(cls) or ())
    return cls is not None and name in {f.name for f in dataclasses.fields(cls)}


def model_arguments(model: Any) -> frozenset[str] | None:
    """The keyword arguments that ``model`` (as :func:`build_model` builds it) accepts from the
    space, or None when they cannot be known (a define-by-run function, a registry factory that
    takes ``**kwargs`` or whose signature cannot be read): then any name goes."""
    import inspect

    from jaxcnn import models

    if isinstance(model, str):
        model = models._lookup(model)[0]  # the registry's factory (unknown names raise ConfigError)
    elif _is_module(model):
        model = type(model)  # built with instance.clone(**kw)
    elif _module_class(model) is None:
        return None  # define-by-run: model(trial) suggests its own
    cls = _module_class(model)
    if cls is not None and _nnx_class(cls):  # an NNX class: its constructor's arguments but rngs
        return _init_arguments(cls)
    if cls is not None:  # a linen module class (or a partial of one): its dataclass fields
        return frozenset(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name"))
    try:  # a registered factory function
        params = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def check_space_names(space: dict[str, Any], model: Any) -> None:
    """Refuse a space key that is neither an argument of ``model`` nor a training setting
    (``TRAINING_PARAMS`` and ``weight_decay``), before any trial: a misspelled key would make
    every trial invalid. Any key goes when the model's arguments cannot be known."""
    import difflib

    accepted = model_arguments(model)
    if "epochs" in space and (is_define_by_run(model) or (accepted is not None and "epochs" not in accepted)):
        raise ConfigError(f"search space key 'epochs' cannot be searched: {EPOCHS_FIXED}")
    if accepted is None:
        return
    training = (*TRAINING_PARAMS, "weight_decay")
    names = sorted(accepted - set(training)) + list(training)
    bad = [k for k in space if k not in accepted and k not in training]
    if not bad:
        return
    parts = []
    for k in bad:
        close = difflib.get_close_matches(k, names, n=1, cutoff=0.6)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = len(bad) > 1
    raise ConfigError(
        f"search space key{'s' if plural else ''} {', '.join(parts)} {'are' if plural else 'is'} neither an argument of "
        f"model {describe_model(model)} nor a training setting; the model takes {', '.join(sorted(accepted)) or 'no arguments'}, "
        f"training takes {', '.join(training)}"
    )


#: Why ``epochs`` cannot be a searched value (a declarative key, or a define-by-run suggestion).
EPOCHS_FIXED = ("epochs is fixed per search, the same for every trial: set it with epochs= "
                "(pruner=\"median\" stops poor trials early)")


def build_model(model: Any, trial: optuna.Trial, params: dict[str, Any], seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The trial's module and the keyword arguments it was built with.

    ``params`` (the declarative space's values) minus the training hyperparameters go to the
    model: ``models.get_model(name, **kw)``, ``cls(**kw)``, ``instance.clone(**kw)``, an NNX class
    ``cls(**kw, rngs=nnx.Rngs(seed))`` (the trial's seed: its initial weights); a define-by-run
    function gets the trial and suggests its own parameters, and returns a linen or NNX module.
    """
    from jaxcnn import models

    if is_define_by_run(model):
        module = model(trial)  # define-by-run
        if not (_is_module(module) or _is_nnx_module(module)):
            raise ConfigError(
                f"the model function {describe_model(model)} returned {type(module).__name__}, not a Flax module; "
                "return a module instance (flax.linen, or flax.nnx built with its rngs)"
            )
        return module, {}
    kwargs = {k: v for k, v in params.items() if k not in TRAINING_PARAMS}
    if "weight_decay" in kwargs and not _takes(model, "weight_decay"):
        del kwargs["weight_decay"]  # it goes to the optimizer
    if isinstance(model, str):
        return models.get_model(model, **kwargs), kwargs
    if _is_module(model):
        return (model.clone(**kwargs) if kwargs else model), kwargs
    try:
        if _nnx_class(model):
            from jaxcnn import checkpoint

            return checkpoint.build_nnx(model, kwargs, seed), kwargs
        return model(**kwargs), kwargs
    except TypeError as e:
        raise ConfigError(f"model {describe_model(model)} does not take {sorted(kwargs)}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Storage and study


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_url(storage: str | None, out: Path | None) -> str | None:
    """The storage URL: ``storage`` if given, else SQLite in ``out`` (``out/study.db``), else
    None (in memory, one process)."""
    if storage:
        return storage
    if out is not None:
        return f"sqlite:///{(Path(out) / DB_FILE).resolve()}"
    return None


#: What a storage that cannot open says when trying again cannot help (sqlalchemy's drivers).
_NO_RETRY = re.compile(r'Connection refused|could not translate host name|Name or service not known|authentication failed|'
                       r'(database|role) "[^"]*" does not exist|unable to open database file|No such file or directory')


def open_storage(url: str | None, config: SearchConfig) -> Any:
    """An Optuna storage for ``url`` (None: in memory), with heartbeats and the retry callback.

    SQLite gets ``BEGIN IMMEDIATE`` transactions (and a 60 s busy timeout), so that two workers
    can never both take one waiting trial: Optuna's ``SELECT ... FOR UPDATE`` locks the row on
    PostgreSQL and MySQL, but SQLite ignores it.
    """
    import optuna

    _quiet_optuna()
    if url is None:
        return optuna.storages.InMemoryStorage()
    url = _with_driver(url)
    sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    last: Exception | None = None
    for attempt in range(8):  # two workers creating one database's tables at once: one retries
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=config.heartbeat_interval,
                grace_period=config.grace,
                heartbeat_stale_trial_callback=retry,
            )
            last = None
            break
        except ImportError as e:
            raise ConfigError(f"storage {url}: {e}; install the database's driver (PostgreSQL: pip install psycopg2-binary)") from None
        except Exception as e:  # noqa: BLE001 (sqlalchemy/optuna errors of many kinds)
            last = e
            if _NO_RETRY.search(str(e)):
                break  # no server, no such host or database, wrong password: the same again in 7 s
            time.sleep(0.2 * (attempt + 1))
    if last is not None:
        raise ConfigError(f"cannot open the study storage {url}: {last}; check the URL and that the database is running") from None
    if sqlite:
        from sqlalchemy import event

        @event.listens_for(storage.engine, "begin")
        def _begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        storage.engine.dispose()
    return storage


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 defaults to psycopg
    (3); jaxcnn's ``postgres`` extra installs psycopg2."""
    import importlib.util

    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme) and importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


def make_sampler(config: SearchConfig, worker: int = 0, known: int = 0) -> Any:
    """The configured sampler: :class:`~jaxcnn.search.SeededRandomSampler` for ``"random"``,
    ``TPESampler(seed=seed + worker)`` for ``"tpe"`` (each worker its own random start-up). A
    process joining a study that already holds ``known`` finished trials seeds TPE from (seed,
    worker, known), so that a rerun or an extension draws new start-up points instead of replaying the
    first ones."""
    import optuna

    if not isinstance(config.sampler, str):
        return config.sampler
    if config.sampler == "random":
        return spaces.seeded_random_sampler(config.seed)
    seed = config.seed + worker if not known else int(np.random.SeedSequence([config.seed, worker, known]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(config: SearchConfig) -> Any:
    """The configured pruner: ``MedianPruner()``, ``SuccessiveHalvingPruner()``,
    ``HyperbandPruner(min_resource=1, max_resource=epochs)`` or ``NopPruner()``."""
    import optuna

    p = config.pruner
    if not isinstance(p, str):
        return p
    if p == "median":
        return optuna.pruners.MedianPruner()
    if p == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if p == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.epochs)
    return optuna.pruners.NopPruner()


def _check_class_weight(class_weight: Any) -> None:
    """``class_weight`` as fit takes it: a dict of class (a whole number >= 0) -> weight (finite, >= 0)."""
    if not isinstance(class_weight, dict):
        raise ConfigError(f"class_weight must be a dict {{class: weight}}, got {type(class_weight).__name__}")
    for c, v in class_weight.items():
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0:
            raise ConfigError(f"class_weight has class {c!r}; classes are whole numbers from 0{checks.int_key_hint(c)}")
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) or v < 0:
            raise ConfigError(f"class_weight[{c!r}] is {v!r}; class weights must be finite numbers >= 0")


def fingerprint(config: SearchConfig, space: dict[str, Any], data: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """What must match for a worker to join (or a rerun to resume) a study: everything that
    changes a trial's result. ``trials`` may grow; the pruner may differ per worker."""
    weighed = sorted([int(c), float(v)] for c, v in (config.class_weight or {}).items() if float(v) != 1.0)
    h = hashlib.sha256()
    for a in data:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return {
        "space": spaces.space_to_dict(space),
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "model": describe_model(config.model),
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "metric": config.metric,
        "mode": config.resolved_mode,
        "sampler": config.sampler if isinstance(config.sampler, str) else type(config.sampler).__name__,
        "input_shape": [int(d) for d in data[0].shape[1:]],
        "data": {"train": len(data[0]), "validation": len(data[2]), "sha256": h.hexdigest()},
        # only when some weight is not 1: a study made before class_weight existed (or with {}) is the same search
        # (a class at 1.0 is one left out: {0: 2.0, 1: 1.0} is {0: 2.0})
        **({"class_weight": weighed} if weighed else {}),
    }


FINGERPRINT_ATTR = "jaxcnn_search"
SLOTS_ATTR = "jaxcnn_trials"


def open_study(
    storage: Any,
    study_name: str,
    config: SearchConfig,
    space: dict[str, Any],
    print_: Callable[[str], None],
    worker: int = 0,
    fp: dict[str, Any] | None = None,
    create: bool = True,
) -> optuna.Study:
    """Create the study with its ``config.trials`` slots, or load it and check that it is the same
    search (``fp``), adding slots when ``config.trials`` grew. Returns the study."""
    import optuna

    direction = "maximize" if config.resolved_mode == "max" else "minimize"
    kwargs = dict(storage=storage, sampler=make_sampler(config, worker), pruner=make_pruner(config))
    created = False
    if create:
        try:
            study = optuna.create_study(study_name=study_name, direction=direction, **kwargs)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=study_name, **kwargs)
    else:
        study = optuna.load_study(study_name=study_name, **kwargs)
    if created:
        if fp is not None:
            study.set_user_attr(FINGERPRINT_ATTR, fp)
        _add_slots(study, 1, config, space)
        return study
    if config.sampler == "tpe":  # joined: not the first process's start-up draws again
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        study.sampler = make_sampler(config, worker, known=finished)
    # Joining a study: wait for its creator to store the fingerprint and the slots.
    deadline = time.monotonic() + 120
    while SLOTS_ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)
    attrs = study.user_attrs
    if fp is not None and attrs.get(FINGERPRINT_ATTR) not in (None, fp):
        old = attrs[FINGERPRINT_ATTR]
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        # Defaults that changed (2026-12-04): a study made before them resumes with the old value given.
        # (each only where it applies: the old study has the old default, this search the new one).
        hints = {"mode": (old.get("mode") == "max" and fp.get("mode") == "min" and "loss" in str(fp.get("metric"))
                          and old.get("metric") == fp.get("metric"),
                          "mode='max' continues a study made when a loss metric was maximised by default"),
                 "space": (old.get("space") == spaces.space_to_dict(spaces.REPORT_SPACE) and not fp.get("space"),
                           "space=REPORT_SPACE continues a define-by-run study made when that was the default space")}
        changed = "".join(f"; {hints[k][1]}" for k in diff if k in hints and hints[k][0])
        raise ConfigError(
            f"study {study_name!r} holds a different search (it differs in {', '.join(diff)}); join it with the "
            f"same settings and data, or choose another study (study_name=, or --study on the command line) or out directory{changed}"
        )
    if study.directions[0] != optuna.study.StudyDirection(1 if direction == "minimize" else 2):
        raise ConfigError(f"study {study_name!r} goes the other way (direction); use another study (study_name=, or --study on the command line)")
    have = int(attrs.get(SLOTS_ATTR, 0))
    if have < config.trials:
        if have:
            print_(f"Extending study {study_name!r} from {have} to {config.trials} trials")
        _add_slots(study, have + 1, config, space)
    elif have > config.trials:
        print_(f"Study {study_name!r} already holds {have} trials, more than trials={config.trials}: it keeps (and "
               "finishes) all of them, as a study only grows; choose another out or study to search again")
    return study


def _add_slots(study: optuna.Study, first: int, config: SearchConfig, space: dict[str, Any]) -> None:
    """Enqueue trials ``first..config.trials``; with the random sampler, each with its seeded
    declarative draws as fixed parameters."""
    fixed = config.sampler == "random"
    for t in range(first, config.trials + 1):
        params = spaces.sample(space, config.seed, t) if fixed else {}
        study.enqueue_trial(params, user_attrs={"trial": t})
    study.set_user_attr(SLOTS_ATTR, config.trials)


def slot_count(study: optuna.Study) -> int:
    return int(study.user_attrs.get(SLOTS_ATTR, 0))


# ----------------------------------------------------------------------------------------------
# A worker


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


class _Heartbeat:
    """Records ``trial_id``'s heartbeat every ``interval`` seconds in a thread while it trains."""

    def __init__(self, storage: Any, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if hasattr(self.storage, "record_heartbeat"):
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 (a busy database: the next beat tries again)
                pass
            if self.stop.wait(self.interval):
                return

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def _study_id(storage: Any, study: optuna.Study) -> int:
    return storage.get_study_id_from_name(study.study_name)


def take_slot(study: optuna.Study, storage: Any) -> optuna.Trial | None:
    """Take the lowest waiting slot (``WAITING -> RUNNING``, one locked transaction); None if
    none is waiting. Never creates a trial."""
    import optuna
    from optuna.trial import TrialState

    sid = _study_id(storage, study)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    # By slot: a retried slot's copy has a later Optuna number than the slots never started, and
    # goes first, as an uninterrupted search would have run it.
    for frozen in sorted(waiting, key=lambda ft: (int(ft.user_attrs.get("trial", 1 << 62)), ft.number)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(sid, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return optuna.trial.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def fail_stale(study: optuna.Study) -> None:
    """Fail running trials whose heartbeat stopped (their workers died) and enqueue them again."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def work(
    study: optuna.Study,
    storage: Any,
    data: Data,
    config: SearchConfig,
    space: dict[str, Any],
    out: Path | None,
    print_: Callable[[str], None],
    on_trial: Callable[[Any], None] | None = None,
    bars: bool = True,
) -> int:
    """Train waiting slots until none is waiting or running; return how many this worker trained.

    Waits (polling) while other workers' trials run: one of them may die, and its trial comes
    back as a waiting slot after ``grace_period`` seconds.
    """
    from optuna.trial import TrialState

    done = 0
    poll = min(2.0, config.heartbeat_interval / 2)
    total = slot_count(study) or config.trials
    errors: list[dict[str, Any]] = []  # this worker's latest trials that raised, in a row
    waited_for: set[int] = set()  # the other workers' trials this worker said it waits for
    while True:
        if study.user_attrs.get(STOP_ATTR):  # another worker stopped the search
            _requeue_errors(study)  # one of ours may have failed after it queued the others
            return done
        fail_stale(study)
        trial = take_slot(study, storage)
        if trial is None:
            pending = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
            if not pending:
                return done
            running = {t.user_attrs.get("trial", t.number) for t in pending if t.state == TrialState.RUNNING}
            if running - waited_for:
                waited_for |= running
                print_(_waiting_line(sorted(running), config))
            time.sleep(poll)
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(_study_id(storage, study), trial.number)
        with _Heartbeat(storage, trial_id, config.heartbeat_interval):
            record = run_trial(trial, study, data, config, space, out, print_, total, bars)
        done += 1
        if on_trial is not None:
            on_trial(record)
        if record["status"] != "error":
            errors.clear()
            continue
        errors.append(record)
        if len(errors) >= config.max_consecutive_failed_trials:
            err = stop_search(study, errors)
            err.trained = done  # type: ignore[attr-defined]  # what this worker trained before it stopped
            raise err from errors[-1].get("exception")


def _waiting_line(trials: list[int], config: SearchConfig) -> str:
    """Why a worker with nothing left to take goes on: the trials other workers run."""
    which = f"trial {trials[0]}" if len(trials) == 1 else "trials " + ", ".join(map(str, trials[:-1])) + f" and {trials[-1]}"
    return (f"waiting for {which}, running in another worker; if that worker was stopped, its trial is trained again here "
            f"once its heartbeat is {config.grace} s old")


#: The study's user attribute that marks it stopped (its value: the SearchError's message; a
#: rerun sets it to None).
STOP_ATTR = "jaxcnn_stopped"


def stop_search(study: optuna.Study, errors: list[dict[str, Any]]) -> SearchError:
    """Put every trial whose last attempt raised back in the queue (a rerun trains it again),
    mark the study stopped, and return the error to raise."""
    _requeue_errors(study)
    if study.user_attrs.get(STOP_ATTR):  # another worker stopped it first
        return SearchError(study.user_attrs[STOP_ATTR])
    ts = [r["trial"] for r in errors]
    listed = ", ".join(map(str, ts[:-1])) + f" and {ts[-1]}" if len(ts) > 1 else str(ts[0])
    message = (
        f"search stopped: trials {listed} failed in a row with an error in the model or its training "
        f"(the last: {errors[-1]['reason']}); fix it, or raise jaxcnn.errors.ConfigError in the model for values it "
        "cannot take (the trial is then recorded as invalid), and run the same search again: the failed trials "
        "run again and the finished ones are kept"
    )
    study.set_user_attr(STOP_ATTR, message)
    return SearchError(message)


def _requeue_errors(study: optuna.Study) -> None:
    """A waiting copy of every slot whose last attempt raised (status ``"error"``). Two workers
    that stop at once would each read the slots before the other's copies exist and queue every
    slot twice: the read and the copies are one step under a lock (:func:`_storage_lock`)."""
    from optuna.trial import TrialState

    with _storage_lock(study):
        for attempts in attempts_by_slot(study).values():
            if attempts[-1].state == TrialState.FAIL and attempts[-1].user_attrs.get("status") == "error":
                _enqueue_again(study, attempts[-1])


def sqlite_path(url: Any) -> str | None:
    """The file of a ``sqlite:///path`` storage URL (None for another database, or SQLite in memory)."""
    if not isinstance(url, str) or not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return path if path and path != ":memory:" else None


@contextlib.contextmanager
def _storage_lock(study: optuna.Study) -> Any:
    """An exclusive lock, among the study's workers, for the duration: on SQLite an ``flock`` on
    the database file (which SQLite's own locks do not see); on PostgreSQL an advisory lock
    named after the study, held by a transaction of its own until the block ends; nothing for
    other storages (MySQL, in memory: one process)."""
    storage = getattr(study, "_storage", None)
    backend = getattr(storage, "_backend", storage)
    url = getattr(backend, "url", None)
    path = sqlite_path(url)
    if path and os.path.isfile(path):
        import fcntl

        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif isinstance(url, str) and url.startswith("postgres") and getattr(backend, "engine", None) is not None:
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(f"jaxcnn requeue {study.study_name}".encode()).digest()[:8], "big", signed=True)
        with backend.engine.begin() as connection:  # the lock ends with this transaction, after the block's own commits
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield
    else:
        yield


def attempts_by_slot(study: optuna.Study) -> dict[int, list[Any]]:
    """The study's trials grouped by jaxcnn trial number (``user_attrs["trial"]``), each slot's
    attempts in Optuna's order (the last is the latest)."""
    by_t: dict[int, list[Any]] = {}
    for ft in study.get_trials(deepcopy=False):
        if "trial" in ft.user_attrs:
            by_t.setdefault(int(ft.user_attrs["trial"]), []).append(ft)
    return by_t


def error_reason(e: BaseException) -> str:
    """``"ZeroDivisionError: division by zero (at mycnn.py:14 in __call__)"``: the error's first
    line and the innermost frame of the user's code that raised it (not JAX's, Flax's or jaxcnn's)."""
    import traceback

    text = str(e).strip().splitlines()
    reason = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    frames = traceback.extract_tb(e.__traceback__)
    skip = (os.sep + "jax" + os.sep, os.sep + "jaxlib" + os.sep, os.sep + "flax" + os.sep, os.sep + "optax" + os.sep,
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)
    own = [f for f in frames if not any(part in os.path.abspath(f.filename) for part in skip)]
    if own:
        f = own[-1]
        reason += f" (at {os.path.basename(f.filename)}:{f.lineno} in {f.name})"
    return reason


# ----------------------------------------------------------------------------------------------
# One trial


class _Reporter(Callback):
    """A fit callback: reports ``metric`` to the trial after each epoch, and stops training
    (``loop.stop_training``) when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, epochs: int):
        self.trial, self.metric, self.epochs, self.pruned_at = trial, metric, epochs, None

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop) -> None:
        value = logs.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), epoch)
        # After the last epoch there is nothing left to save: the trial finishes with its value
        # (a prune there would throw away a whole trial's result).
        if epoch + 1 < self.epochs and self.trial.should_prune():
            self.pruned_at = epoch
            loop.stop_training = True


class _EpochBar(Callback):
    """A tqdm bar over a trial's epochs, with the last epoch's metrics."""

    def __init__(self, epochs: int, desc: str):
        self.epochs, self.desc, self.bar = epochs, desc, None

    def on_train_begin(self, loop) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.epochs, desc=self.desc, unit="epoch", dynamic_ncols=True, leave=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{logs[k]:.4f}" for k in METRICS if k in logs}, refresh=False)
            self.bar.update(1)

    def on_train_end(self, loop) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _hp_text(hp: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())


def run_trial(
    trial: optuna.Trial,
    study: optuna.Study,
    data: Data,
    config: SearchConfig,
    space: dict[str, Any],
    out: Path | None,
    print_: Callable[[str], None],
    total: int,
    bars: bool = True,
) -> dict[str, Any]:
    """Suggest, build, train and finish one trial; store its history (and, with ``out``, its
    result and exported model in ``out/trials/NNN``). Returns the trial's record."""
    from optuna.trial import TrialState

    from jaxcnn import train

    t = int(trial.user_attrs["trial"])
    seed = spaces.trial_seed(config.seed, t)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"trial": t, "number": trial.number, "seed": seed, "worker": worker_name()}
    state = history = None
    module = kwargs = bar = None
    status, reason = "ok", ""
    announced = False  # its start line printed (a trial whose model cannot be built gets it with its end line)
    try:
        declared = {name: spaces.suggest(trial, name, dim) for name, dim in space.items()}
        module, kwargs = build_model(config.model, trial, declared, seed)
        hp = dict(trial.params)  # with a define-by-run model's own suggestions, in order
        lr = hp.get("learning_rate", config.learning_rate)
        opt = hp.get("optimizer", config.optimizer)
        batch_size = int(hp.get("batch_size", config.batch_size))
        opt_kwargs = {}
        if is_define_by_run(config.model):
            if "epochs" in hp:  # fit would not see it: the trial would train config.epochs epochs
                raise ConfigError(f"the model function {describe_model(config.model)} suggested 'epochs', which cannot be searched: {EPOCHS_FIXED}")
            if "weight_decay" in hp:
                module, to_optimizer = _own_weight_decay(module, hp["weight_decay"])
                if to_optimizer:
                    opt_kwargs["weight_decay"] = hp["weight_decay"]
        elif "weight_decay" in declared and "weight_decay" not in kwargs:
            opt_kwargs["weight_decay"] = declared["weight_decay"]  # Keras: the optimizer's own decay
        if config.verbose:
            print_(f"Trial {t}/{total}: {_hp_text(hp)} (seed {seed})")
            announced = True
        from jaxcnn import optim

        optimizer = optim.get_optimizer(opt, lr, **opt_kwargs) if opt_kwargs else opt
        reporter = _Reporter(trial, config.metric, config.epochs)
        callbacks: list[Any] = [reporter]
        bar = _EpochBar(config.epochs, f"Trial {t}") if config.verbose == 1 and bars else None
        if bar is not None:
            callbacks.append(bar)
        try:
            state, history = train.fit(
                module, data.x_train, data.y_train,
                epochs=config.epochs, batch_size=batch_size, optimizer=optimizer,
                learning_rate=None if opt_kwargs else lr,
                validation_data=(data.x_val, data.y_val), seed=seed, callbacks=callbacks, class_weight=config.class_weight,
                verbose=2 if config.verbose == 2 else 0, devices="auto",
            )
        except TrainingError as e:
            state, history = getattr(e, "state", None), getattr(e, "history", None)
            status, reason = "diverged", str(e)
        if status == "ok" and reporter.pruned_at is not None:
            status, reason = "pruned", f"pruned by {type(study.pruner).__name__} after epoch {reporter.pruned_at + 1}"
    except (ShapeError, ConfigError) as e:  # this trial's hyperparameters cannot be built or run
        hp = dict(trial.params)
        status, reason = "invalid", str(e)
    except Exception as e:  # noqa: BLE001 (the model or its training raised: recorded, and the search goes on)
        hp = dict(trial.params)
        status, reason = "error", error_reason(e)
        record["exception"] = e
    except BaseException as e:
        # An interruption (Ctrl-C): this attempt fails and the slot waits for another worker.
        _requeue(study, trial, f"{type(e).__name__}: {e}")
        raise
    finally:
        if bar is not None:
            bar.close()
    record.update(hyperparameters=hp, status=status, reason=reason)
    record["history"] = history.to_dict() if history is not None and len(history) else None
    results = {k: history.history[k][-1] for k in METRICS if history is not None and history.history.get(k)}
    record["results"] = results
    record["wall_time_s"] = time.perf_counter() - t0
    record["model"] = describe_model(config.model)
    record["model_kwargs"] = kwargs or {}
    if out is not None and state is not None and status != "invalid":
        _save_trial(out, record, state, config.model, kwargs or {})
    for key in ("seed", "status", "reason", "history", "results", "wall_time_s", "worker", "model_kwargs"):
        trial.set_user_attr(key, record[key])
    value = results.get(config.metric)
    if status == "ok" and value is not None and math.isfinite(value):
        study.tell(trial, value)
    elif status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        if status == "ok":
            status = record["status"] = "failed"
            reason = record["reason"] = f"no finite {config.metric} after the last epoch"
            trial.set_user_attr("status", status)
            trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    record["state"] = {"ok": "COMPLETE", "pruned": "PRUNED"}.get(status, "FAIL")
    record["module"], record["state_obj"] = module, state  # not stored (nor "exception")
    if config.verbose:
        if not announced:
            print_(f"Trial {t}/{total}: {_hp_text(hp)} (seed {seed})")
        shown = " - ".join(f"{k}: {results[k]:.4f}" for k in METRICS if k in results) or "no epoch finished"
        epochs = len(history) if history is not None else 0
        tail = "" if status == "ok" else f" [{status}: {reason}]"
        print_(f"Trial {t}: {shown} ({epochs} epoch(s), {record['wall_time_s']:.1f} s){tail}")
    return record


def _own_weight_decay(module: Any, weight_decay: Any) -> tuple[Any, bool]:
    """Where a define-by-run trial's ``weight_decay`` goes, as the declarative space's does: to
    the model when it has that attribute (a linen module that the function built with another
    value is cloned with this one), else to the optimizer. Returns ``(module, to_optimizer)``."""
    if _is_module(module):
        if not hasattr(module, "weight_decay"):
            return module, True
        return (module if module.weight_decay == weight_decay else module.clone(weight_decay=weight_decay)), False
    # NNX: the function built it, and an NNX module cannot be rebuilt with another value.
    if hasattr(module, "weight_decay"):
        if module.weight_decay != weight_decay:
            raise ConfigError(
                f"the model function suggested weight_decay={weight_decay!r} but returned {type(module).__name__} with "
                f"weight_decay={module.weight_decay!r}; pass the suggested value to the module"
            )
        return module, False
    return module, "weight_decay" not in (_init_arguments(type(module)) or ())


def _requeue(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Fail this attempt and enqueue the slot again with the same parameters (as Optuna's retry
    callback does for a dead worker)."""
    import optuna
    from optuna.trial import TrialState

    try:
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        _enqueue_again(study, study.get_trials(deepcopy=True)[trial.number])
    except Exception as e:  # noqa: BLE001 (keep the original error)
        print(f"warning: could not put trial back in the queue: {e}", file=sys.stderr)


def _enqueue_again(study: optuna.Study, frozen: Any) -> None:
    """A waiting copy of a finished attempt: the same slot, parameters and fixed draws."""
    import optuna
    from optuna.trial import TrialState

    attrs = {k: v for k, v in frozen.user_attrs.items() if k == "trial"}
    system = {k: v for k, v in frozen.system_attrs.items() if k == "fixed_params"}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs=attrs, system_attrs=system,
        )
    )


def trial_dir(out: Path, t: int) -> Path:
    return Path(out) / TRIALS_DIR / f"{t:03d}"


def _save_trial(out: Path, record: dict[str, Any], state: Any, model: Any, kwargs: dict[str, Any]) -> None:
    """``out/trials/NNN``: result.json (the record), history.json/.csv and model/ (exported)."""
    from jaxcnn import checkpoint, train

    d = trial_dir(out, record["trial"])
    d.mkdir(parents=True, exist_ok=True)
    export_model(d / "model", state, model, kwargs)
    if record.get("history"):
        checkpoint.atomic_write(d / "history.csv", train.History.from_dict(record["history"]).to_csv())
    keep = {k: v for k, v in record.items() if k not in ("module", "state_obj", "exception")}
    checkpoint.atomic_write(d / "result.json", json.dumps(keep, indent=2, default=float) + "\n")


def export_model(directory: Path, state: Any, model: Any, kwargs: dict[str, Any]) -> Path:
    """Export the trained ``state`` with :func:`jaxcnn.checkpoint.export`: under the registry
    name and the trial's attributes for a registry model, else with the module's importable
    class and attributes (``jaxcnn.checkpoint.load`` rebuilds either). An NNX class's export
    records the constructor arguments the search built it with (``kwargs``, and a partial's
    own), which the module need not keep as attributes of the same names."""
    from jaxcnn import checkpoint

    if isinstance(model, str):
        return checkpoint.export(directory, state, model, kwargs)
    if not _nnx_class(model):
        return checkpoint.export(directory, state)
    with warnings.catch_warnings():
        # "... which the module does not keep as a plain attribute": the search built it with the
        # arguments given here, and the others at their defaults, as the reload does.
        warnings.filterwarnings("ignore", message=r".*does not keep as a plain attribute")
        return checkpoint.export(directory, state, model_kwargs={**_partial_arguments(model), **kwargs})


def _partial_arguments(model: Any) -> dict[str, Any]:
    """The constructor arguments that ``functools.partial`` (layers of it) around a class fixes,
    positional ones by name; ``{}`` for a bare class."""
    import inspect

    layers = []
    while isinstance(model, functools.partial):
        layers.append(model)
        model = model.func
    args: list[Any] = []
    keywords: dict[str, Any] = {}
    for p in reversed(layers):  # innermost first: its positional arguments come first
        args += p.args
        keywords.update(p.keywords)
    out: dict[str, Any] = {}
    if args:
        try:
            names = [q.name for q in list(inspect.signature(model.__init__).parameters.values())[1:]]
        except (TypeError, ValueError):
            names = []
        out.update(zip(names, args))
    out.update(keywords)
    return out
