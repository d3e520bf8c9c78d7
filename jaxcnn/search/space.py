"""Search spaces: declarative dimensions, seeded draws, and the seeded random sampler.

A declarative space maps names to :class:`IntRange`, :class:`Uniform`, :class:`LogUniform` or
:class:`Choice`. Each dimension becomes an Optuna distribution (:func:`to_distribution`) and is
suggested on the trial with :func:`suggest`; a model given as a function ``trial -> module``
suggests its own parameters with Optuna's ``trial.suggest_*`` (define-by-run).

Reproducibility: trial ``t`` of a seeded random search gets the same hyperparameters whether it
runs first or last, alone or beside other workers. The declarative draws are :func:`sample`
``(space, seed, t)`` (the report's draws since the first version), enqueued as trial ``t``'s
fixed parameters; everything else a trial suggests is drawn by :class:`SeededRandomSampler` from
``(seed, t, name)`` alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxcnn.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import optuna


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
        if isinstance(self.options, (str, bytes)):
            raise ConfigError(
                f"Choice takes a sequence of options, e.g. Choice(({self.options!r},)); got the string {self.options!r}"
            )
        object.__setattr__(self, "options", tuple(v.item() if isinstance(v, np.generic) else v for v in self.options))
        if not self.options:
            raise ConfigError("Choice: needs at least one option")
        for v in self.options:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ConfigError(f"Choice: options must be numbers, strings, bools or None, got {v!r}")

    def sample(self, rng: np.random.Generator) -> Any:
        return self.options[int(rng.integers(len(self.options)))]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "options": list(self.options)}


Dimension = IntRange | Uniform | LogUniform | Choice
Space = Mapping[str, Dimension]

REPORT_SPACE: dict[str, Dimension] = {
    "kernel_size": IntRange(2, 10),  # square kernel of both convolutions
    "weight_decay": Uniform(0.0001, 0.1),  # Keras-style L2 factor on every kernel
    "learning_rate": Uniform(0.0001, 0.01),  # RMSprop
}


def check_space(space: Space | None) -> dict[str, Dimension]:
    """``space`` as a dict, checked: names are strings, values are dimensions. ``None`` and ``{}``
    are the empty space (a define-by-run model suggests everything itself)."""
    if space is None:
        return {}
    if not isinstance(space, Mapping):
        raise ConfigError("the search space must be a mapping of name -> dimension (IntRange, Uniform, LogUniform, Choice)")
    for name, dim in space.items():
        if not isinstance(name, str) or not isinstance(dim, (IntRange, Uniform, LogUniform, Choice)):
            raise ConfigError(
                f"search space entry {name!r}: {dim!r} is not a dimension; use IntRange, Uniform, "
                "LogUniform or Choice"
            )
        whole = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0  # noqa: E731
        if name == "batch_size" and not ((isinstance(dim, IntRange) and dim.low >= 1) or (isinstance(dim, Choice) and all(map(whole, dim.options)))):
            raise ConfigError(
                f"search space entry 'batch_size': {dim!r} gives batch sizes that are not positive whole numbers; "
                "use IntRange(low, high) with low >= 1 or Choice of positive integers, e.g. Choice((64, 128, 256))"
            )
        _check_training_values(name, dim)
    return dict(space)


def _check_training_values(name: str, dim: Dimension) -> None:
    """Values of a training hyperparameter that no trial could train with, refused before any
    trial (each would otherwise be an ``invalid`` trial): an unknown optimizer name, a negative
    learning rate (or none above 0), a negative weight decay. A Choice's None (the default) is
    fine."""
    number = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)  # noqa: E731
    values = [v for v in dim.options if v is not None] if isinstance(dim, Choice) else [dim.low, dim.high]
    if name == "optimizer":
        from jaxcnn.optim import OPTIMIZERS

        bad = [v for v in values if not isinstance(v, str) or v.lower() not in OPTIMIZERS]
        if bad:
            raise ConfigError(f"search space entry 'optimizer': {bad[0]!r} is not an optimizer; use Choice of {', '.join(map(repr, OPTIMIZERS))}")
    elif name == "learning_rate":
        ok = all(map(number, values)) and (not values or (min(values) >= 0 and max(values) > 0)) and (0 not in values or not isinstance(dim, Choice))
        if not ok:
            raise ConfigError(f"search space entry 'learning_rate': {dim!r} gives rates of 0 or below; rates must be positive, e.g. LogUniform(1e-4, 1e-2)")
    elif name == "weight_decay":
        if not all(number(v) and v >= 0 for v in values):
            raise ConfigError(f"search space entry 'weight_decay': {dim!r} gives negative (or non-numeric) weight decays; use values >= 0")


def space_to_dict(space: Space) -> dict[str, dict[str, Any]]:
    """The space as JSON-ready dicts, e.g. ``{"kernel_size": {"type": "int", "low": 2, "high": 10}}``."""
    return {name: dim.to_dict() for name, dim in check_space(space).items()}


def sample(space: Space, seed: int, trial: int) -> dict[str, Any]:
    """Trial ``trial``'s hyperparameters: a function of ``(seed, trial)`` only.

    Dimensions are drawn in the space's order from ``numpy.random.default_rng([seed, trial, 0])``;
    values are plain Python ints/floats (exact through JSON and the study's database).
    """
    rng = np.random.default_rng([int(seed), int(trial), 0])
    return {name: dim.sample(rng) for name, dim in check_space(space).items()}


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial ``trial``'s initialisation and batch order, a function of ``(seed, trial)``."""
    return int(np.random.default_rng([int(seed), int(trial), 1]).integers(2**31 - 1))


def to_distribution(dim: Dimension) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of a dimension (``Uniform`` -> ``FloatDistribution``, ...)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dim, IntRange):
        return IntDistribution(int(dim.low), int(dim.high))
    if isinstance(dim, Uniform):
        return FloatDistribution(float(dim.low), float(dim.high))
    if isinstance(dim, LogUniform):
        return FloatDistribution(float(dim.low), float(dim.high), log=True)
    return CategoricalDistribution(dim.options)


def suggest(trial: optuna.Trial, name: str, dim: Dimension) -> Any:
    """Suggest ``name`` from ``dim`` on an Optuna trial (its enqueued value, if it has one)."""
    if isinstance(dim, IntRange):
        return trial.suggest_int(name, int(dim.low), int(dim.high))
    if isinstance(dim, Uniform):
        return trial.suggest_float(name, float(dim.low), float(dim.high))
    if isinstance(dim, LogUniform):
        return trial.suggest_float(name, float(dim.low), float(dim.high), log=True)
    return trial.suggest_categorical(name, dim.options)


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def draw(distribution: Any, seed: int, trial: int, name: str) -> Any:
    """The value of parameter ``name`` for trial ``trial`` of a search seeded with ``seed``:
    drawn uniformly (log-uniformly for ``log=True``) from ``numpy.random.default_rng([seed,
    trial, 2, sha256(name)])``, so it does not depend on the order of suggestions or trials."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    rng = np.random.default_rng([int(seed), int(trial), 2, _name_key(name)])
    d = distribution
    if isinstance(d, CategoricalDistribution):
        return d.choices[int(rng.integers(len(d.choices)))]
    if isinstance(d, IntDistribution):
        if d.log:
            v = math.exp(rng.uniform(math.log(d.low - 0.5), math.log(d.high + 0.5)))
            return int(min(max(round(v), d.low), d.high))
        return int(d.low + d.step * rng.integers(0, (d.high - d.low) // d.step + 1))
    if isinstance(d, FloatDistribution):
        if d.step is not None:
            n = int(round((d.high - d.low) / d.step))
            return float(min(d.low + d.step * rng.integers(0, n + 1), d.high))
        if d.log:
            return float(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
        return float(rng.uniform(d.low, d.high)) if d.high > d.low else float(d.low)
    raise ConfigError(f"parameter {name!r}: the seeded random sampler cannot draw from {d!r}")


def seeded_random_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """A :class:`SeededRandomSampler` (defined on first use, so that Optuna loads lazily)."""
    return _sampler_class()(seed)


_SAMPLER_CLASS: Any = None


def _sampler_class() -> type:
    global _SAMPLER_CLASS
    if _SAMPLER_CLASS is None:
        import optuna

        class SeededRandomSampler(optuna.samplers.RandomSampler):
            """Optuna's random sampler, made order-free: parameter ``name`` of jaxcnn trial ``t``
            (the trial's ``user_attrs["trial"]``, else its number + 1) is :func:`draw` ``(dist,
            seed, t, name)``. Two workers, a resumed study or another order of trials give trial
            ``t`` the same values."""

            def __init__(self, seed: int = 0):
                super().__init__(seed=seed)
                self.seed = int(seed)

            def sample_independent(self, study, trial, param_name, param_distribution):
                t = trial.user_attrs.get("trial", trial.number + 1)
                return draw(param_distribution, self.seed, int(t), param_name)

        _SAMPLER_CLASS = SeededRandomSampler
    return _SAMPLER_CLASS
