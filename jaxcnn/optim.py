"""Optimizers and learning-rate schedules with Keras's defaults, built from optax pieces.

Every optimizer returned here is wrapped in ``optax.inject_hyperparams``, so its learning rate
lives in the optimizer state as an array: a per-epoch scheduler can change it between steps
without recompiling the train step, and the history can record it.

Keras parity (checked against the Keras 3 source):

* RMSprop: ``v = rho * v + (1 - rho) * g**2``; ``w -= lr * g / sqrt(v + epsilon)`` with rho 0.9,
  epsilon 1e-7 and ``v`` starting at zero. That is ``optax.scale_by_rms(decay=rho, eps=epsilon,
  eps_in_sqrt=True)``; optax's own default epsilon is 1e-8.
* Adamax: ``m = b1 * m + (1 - b1) * g``; ``u = max(b2 * u, |g|)``;
  ``w -= lr * m / ((1 - b1**t) * (u + epsilon))``. optax's ``adamax`` puts epsilon inside the
  max instead, so :func:`scale_by_keras_adamax` implements Keras's form.
* ExponentialDecay(staircase): ``lr0 * rate ** floor(step / decay_steps)``, step counted from 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcnn.errors import ConfigError

Schedule = Callable[[jax.Array], jax.Array]
LearningRate = float | Schedule


def _check_lr(learning_rate: LearningRate) -> None:
    if callable(learning_rate):
        return
    if not isinstance(learning_rate, (int, float)) or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ConfigError(
            f"learning rate must be a positive finite number, got {learning_rate!r}; "
            "the report uses 0.001 for RMSprop"
        )


class KerasAdamaxState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def scale_by_keras_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> optax.GradientTransformation:
    """Keras's Adamax direction ``m / ((1 - b1**t) * (u + eps))`` (no learning rate, no sign)."""

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return KerasAdamaxState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda u, g: jnp.maximum(b2 * u, jnp.abs(g)), state.nu, updates)
        correction = 1 - b1 ** count.astype(jnp.float32)
        out = jax.tree.map(lambda m, u: m / (correction * (u + eps)), mu, nu)
        return out, KerasAdamaxState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


@optax.inject_hyperparams
def rmsprop(learning_rate: LearningRate = 0.001, rho: float = 0.9, epsilon: float = 1e-7) -> optax.GradientTransformation:
    """Keras's RMSprop (defaults lr 0.001, rho 0.9, epsilon 1e-7 inside the square root)."""
    return optax.chain(
        optax.scale_by_rms(decay=rho, eps=epsilon, initial_scale=0.0, eps_in_sqrt=True),
        optax.scale_by_learning_rate(learning_rate),
    )


@optax.inject_hyperparams
def adamax(learning_rate: LearningRate = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> optax.GradientTransformation:
    """Keras's Adamax (defaults lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7)."""
    return optax.chain(scale_by_keras_adamax(beta_1, beta_2, epsilon), optax.scale_by_learning_rate(learning_rate))


@optax.inject_hyperparams
def adam(learning_rate: LearningRate = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> optax.GradientTransformation:
    """Adam with Keras's defaults (epsilon 1e-7 outside the square root, as Keras and optax do)."""
    return optax.adam(learning_rate, b1=beta_1, b2=beta_2, eps=epsilon)


@optax.inject_hyperparams
def sgd(learning_rate: LearningRate = 0.01, momentum: float = 0.0) -> optax.GradientTransformation:
    """Plain SGD with optional momentum (Keras defaults: lr 0.01, momentum 0)."""
    # optax.trace with decay 0 is plain SGD; momentum stays an array so it can be injected too.
    return optax.chain(optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate))


def exponential_decay(initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False) -> Schedule:
    """Keras ``ExponentialDecay``: ``lr0 * decay_rate ** (step / decay_steps)``, floored if staircase.

    The report's CIFAR schedule is ``exponential_decay(0.005, 1500, 0.96, staircase=True)``:
    0.005 for steps 0..1499, 0.0048 for 1500..2999, 0.004608 from 3000.
    """
    _check_lr(initial_learning_rate)
    if decay_steps <= 0:
        raise ConfigError(f"decay_steps must be positive, got {decay_steps}")
    return optax.exponential_decay(initial_learning_rate, decay_steps, decay_rate, staircase=staircase)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "rmsprop": rmsprop,
    "adamax": adamax,
    "adam": adam,
    "sgd": sgd,
}


def get_optimizer(name: str, learning_rate: LearningRate | None = None, **kwargs: Any) -> optax.GradientTransformation:
    """The optimizer ``name`` (rmsprop, adamax, adam, sgd) with Keras's defaults.

    ``learning_rate`` is a positive float or a schedule ``step -> lr``; ``None`` takes the
    optimizer's default. Unknown names and non-positive rates raise ``ConfigError``.
    """
    try:
        factory = OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}") from None
    if learning_rate is not None:
        _check_lr(learning_rate)
        kwargs["learning_rate"] = learning_rate
    return factory(**kwargs)


def get_learning_rate(opt_state: Any) -> jax.Array | None:
    """The current learning rate stored in an ``inject_hyperparams`` optimizer state, or None."""
    hp = getattr(opt_state, "hyperparams", None)
    return None if hp is None else hp.get("learning_rate")


def set_learning_rate(opt_state: Any, learning_rate: float) -> Any:
    """Return ``opt_state`` with its learning rate replaced (same dtype: no recompilation).

    Only for optimizers whose learning rate is a number; with a schedule the rate is recomputed
    from the step count every update, so setting it would have no effect.
    """
    hp = getattr(opt_state, "hyperparams", None)
    if hp is None or "learning_rate" not in hp:
        raise ConfigError("this optimizer's state has no injectable learning rate; build it with jaxcnn.optim.get_optimizer")
    _check_lr(float(learning_rate))
    old = hp["learning_rate"]
    new_hp = dict(hp)
    new = jnp.asarray(learning_rate, dtype=jnp.asarray(old).dtype)
    if isinstance(old, jax.Array):  # same device placement too, or the step would recompile
        new = jax.device_put(new, old.sharding)
    new_hp["learning_rate"] = new
    return opt_state._replace(hyperparams=new_hp)
