"""Optimizers and learning-rate schedules with Keras 3's update rules and defaults, built from optax pieces.

Every optimizer returned here is wrapped in ``optax.inject_hyperparams``, so its learning rate
lives in the optimizer state as an array: a per-epoch scheduler can change it between steps
without recompiling the train step, and the history can record it.

>>> tx = get_optimizer("adamw", 1e-3)                         # Keras's AdamW, weight decay 0.004
>>> tx = get_optimizer("sgd", 0.1, momentum=0.9, nesterov=True)
>>> tx = get_optimizer("rmsprop", exponential_decay(0.005, 1500, 0.96, staircase=True))

Keras parity, read from the Keras 3 source (``keras/src/optimizers``) and checked against Keras
itself, step by step, by ``tests/test_keras_parity.py::test_optimizer_matches_keras``
(float32, four steps, rtol 2e-5 and atol 2e-6). ``g`` is the gradient, ``t`` the step
counted from 1, ``lr`` the learning rate of this step (a schedule is evaluated at ``t - 1``):

* RMSprop (lr 0.001, rho 0.9, momentum 0, epsilon 1e-7, centered False):
  ``v = rho * v + (1 - rho) * g**2``; centered also keeps ``a = rho * a + (1 - rho) * g`` and
  uses ``v - a**2``; ``inc = lr * g / sqrt(v + epsilon)`` (epsilon *inside* the root; optax's
  default is outside and 1e-8); with momentum ``m = momentum * m + inc; w -= m``, else
  ``w -= inc``.
* Adam (lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7, amsgrad False):
  ``w -= lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)``: epsilon is added
  to the *uncorrected* ``sqrt(v)``, where optax adds it after the bias correction.
* AdamW: Adam with ``weight_decay=0.004``.
* Adamax (lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7): ``u = max(beta_2 * u, |g|)``;
  ``w -= lr * m / ((1 - beta_1**t) * (u + epsilon))`` (optax puts epsilon inside the max).
* SGD (lr 0.01, momentum 0, nesterov False): ``m = momentum * m - lr * g`` (the velocity stores
  ``lr * g``, so a changed rate only affects new gradients); ``w += m``, or with Nesterov
  ``w += momentum * m - lr * g``.
* Every optimizer takes Keras's base arguments ``weight_decay`` (decoupled: ``w -= w * wd * lr``
  before the update, on every parameter, biases included, as Keras does unless told otherwise)
  and one of ``clipnorm`` (each parameter's gradient to that L2 norm), ``global_clipnorm`` or
  ``clipvalue``, applied to the gradient first. Keras's order: clip, decay, update.
* ExponentialDecay(staircase): ``lr0 * rate ** floor(step / decay_steps)``, step counted from 0.
"""

from __future__ import annotations

import difflib
import json
import math
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcnn._memo import memo_if_hashable
from jaxcnn.errors import ConfigError

Schedule = Callable[[jax.Array], jax.Array]
LearningRate = float | Schedule


def _check_lr(learning_rate: LearningRate) -> LearningRate:
    """The rate as a float (np.float32(0.001) and np.array(0.001) too), or the schedule unchanged."""
    from jaxcnn.checks import check_learning_rate

    if learning_rate is None:
        raise ConfigError(
            f"learning rate must be a finite number >= 0, got {learning_rate!r}; "
            "the report uses 0.001 for RMSprop"
        )
    return check_learning_rate(learning_rate)


def _zeros(params: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, params)


def _power(base: Any, count: jax.Array, like: jax.Array) -> jax.Array:
    """``base ** count`` in ``like``'s dtype, as Keras's ``ops.power(cast(beta), local_step)``."""
    return jnp.power(jnp.asarray(base, like.dtype), count.astype(like.dtype))


# ---------------------------------------------------------------------------------------------
# Keras's update rules as optax transformations. Each returns the change to add to the
# parameters (learning rate and sign included), because Keras's SGD and RMSprop momentum store
# ``lr * g``: the rate cannot be applied afterwards as a separate scale.


class KerasAdamaxState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def scale_by_keras_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> optax.GradientTransformation:
    """Keras's Adamax direction ``m / ((1 - b1**t) * (u + eps))`` (no learning rate, no sign)."""

    def init(params):
        return KerasAdamaxState(count=jnp.zeros([], jnp.int32), mu=_zeros(params), nu=_zeros(params))

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda u, g: jnp.maximum(b2 * u, jnp.abs(g)), state.nu, updates)
        correction = 1 - b1 ** count.astype(jnp.float32)
        out = jax.tree.map(lambda m, u: m / (correction * (u + eps)), mu, nu)
        return out, KerasAdamaxState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


class KerasAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any  # amsgrad's running maximum of nu; () without amsgrad


def keras_adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-7, amsgrad: bool = False) -> optax.GradientTransformation:
    """Keras's Adam step: ``-lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + eps)``."""

    def init(params):
        return KerasAdamState(
            count=jnp.zeros([], jnp.int32), mu=_zeros(params), nu=_zeros(params), nu_max=_zeros(params) if amsgrad else ()
        )

    def update(grads, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (jnp.square(g) - v) * (1 - b2), state.nu, grads)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else ()
        denom_v = nu_max if amsgrad else nu

        def step(m, v):
            lr = jnp.asarray(learning_rate, m.dtype)
            alpha = lr * jnp.sqrt(1 - _power(b2, count, m)) / (1 - _power(b1, count, m))
            return -(m * alpha) / (jnp.sqrt(v) + jnp.asarray(eps, m.dtype))

        return jax.tree.map(step, mu, denom_v), KerasAdamState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init, update)


class KerasMomentumState(NamedTuple):
    momentum: Any


def keras_sgd(learning_rate: Any, momentum: Any = None, nesterov: bool = False) -> optax.GradientTransformation:
    """Keras's SGD step: ``-lr * g``; with momentum ``m = momentum * m - lr * g`` and ``m``
    (or, Nesterov, ``momentum * m - lr * g``). ``momentum=None`` keeps no velocity (Keras's 0)."""

    if momentum is None:
        return optax.stateless(lambda g, params: jax.tree.map(lambda x: -jnp.asarray(learning_rate, x.dtype) * x, g))

    def init(params):
        return KerasMomentumState(momentum=_zeros(params))

    def update(grads, state, params=None):
        del params
        lr_g = jax.tree.map(lambda g: g * jnp.asarray(learning_rate, g.dtype), grads)
        new_m = jax.tree.map(lambda m, lg: m * jnp.asarray(momentum, m.dtype) - lg, state.momentum, lr_g)
        if nesterov:
            out = jax.tree.map(lambda m, lg: m * jnp.asarray(momentum, m.dtype) - lg, new_m, lr_g)
        else:
            out = new_m
        return out, KerasMomentumState(momentum=new_m)

    return optax.GradientTransformation(init, update)


class KerasRmspropState(NamedTuple):
    nu: Any
    mean_grad: Any  # centered: running mean of g; () otherwise
    momentum: Any  # with momentum: the velocity; () otherwise


def keras_rmsprop(learning_rate: Any, rho: Any = 0.9, epsilon: Any = 1e-7, momentum: Any = None, centered: bool = False) -> optax.GradientTransformation:
    """Keras's RMSprop step with momentum and/or centering (see the module docstring)."""

    def init(params):
        return KerasRmspropState(
            nu=_zeros(params),
            mean_grad=_zeros(params) if centered else (),
            momentum=_zeros(params) if momentum is not None else (),
        )

    def update(grads, state, params=None):
        del params
        nu = jax.tree.map(lambda v, g: rho * v + (1 - rho) * jnp.square(g), state.nu, grads)
        if centered:
            mean_grad = jax.tree.map(lambda a, g: rho * a + (1 - rho) * g, state.mean_grad, grads)
            denom = jax.tree.map(lambda v, a: v - jnp.square(a) + epsilon, nu, mean_grad)
        else:
            mean_grad = ()
            denom = jax.tree.map(lambda v: v + epsilon, nu)
        inc = jax.tree.map(lambda g, d: jnp.asarray(learning_rate, g.dtype) * g / jnp.sqrt(d), grads, denom)
        if momentum is not None:
            mom = jax.tree.map(lambda m, i: jnp.asarray(momentum, m.dtype) * m + i, state.momentum, inc)
            out = jax.tree.map(jnp.negative, mom)
        else:
            mom = ()
            out = jax.tree.map(jnp.negative, inc)
        return out, KerasRmspropState(nu=nu, mean_grad=mean_grad, momentum=mom)

    return optax.GradientTransformation(init, update)


def keras_clip(clipnorm: float | None = None, clipvalue: float | None = None, global_clipnorm: float | None = None) -> optax.GradientTransformation | None:
    """Keras's gradient clipping (``BaseOptimizer._clip_gradients``), or None when none is set.

    ``clipnorm`` rescales each parameter's gradient to L2 norm at most ``clipnorm``;
    ``global_clipnorm`` rescales all of them together; ``clipvalue`` clips elementwise.
    """
    if clipnorm:

        def by_norm(g):
            l2sum = jnp.sum(jnp.square(g))
            norm = jnp.where(l2sum > 0, jnp.sqrt(jnp.where(l2sum > 0, l2sum, 1.0)), l2sum)
            return g * clipnorm / jnp.maximum(norm, clipnorm)

        return optax.stateless(lambda g, params: jax.tree.map(by_norm, g))
    if global_clipnorm:

        def by_global(g, params):
            norm = optax.tree.norm(g)
            scale = global_clipnorm * jnp.minimum(1.0 / norm, 1.0 / global_clipnorm)
            scale = scale + (norm - norm)  # NaN for a non-finite norm, as Keras
            return jax.tree.map(lambda x: x * scale.astype(x.dtype), g)

        return optax.stateless(by_global)
    if clipvalue:
        return optax.stateless(lambda g, params: jax.tree.map(lambda x: jnp.clip(x, -clipvalue, clipvalue), g))
    return None


def keras_weight_decay(weight_decay: Any, learning_rate: Any) -> optax.GradientTransformation:
    """Keras's decoupled weight decay, ``w -= w * wd * lr``, added to the step's updates."""

    def decay(updates, params):
        if params is None:
            raise ConfigError("weight_decay needs the parameters: call tx.update(grads, opt_state, params)")
        return jax.tree.map(
            lambda u, p: u - p * jnp.asarray(weight_decay, p.dtype) * jnp.asarray(learning_rate, p.dtype), updates, params
        )

    return optax.stateless(decay)


def _with_base(core: optax.GradientTransformation, learning_rate: Any, weight_decay: Any, clipnorm: Any, clipvalue: Any, global_clipnorm: Any) -> optax.GradientTransformation:
    """Keras's order around an update rule: clip the gradients, decay the weights, update."""
    clip = keras_clip(clipnorm, clipvalue, global_clipnorm)
    parts = [p for p in (clip, core) if p is not None]
    if weight_decay is not None:
        parts.append(keras_weight_decay(weight_decay, learning_rate))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


_STATIC = ("amsgrad", "nesterov", "centered", "clipnorm", "clipvalue", "global_clipnorm")


def _inject(factory: Callable[..., optax.GradientTransformation]) -> Callable[..., optax.GradientTransformation]:
    import inspect

    static = [a for a in _STATIC if a in inspect.signature(factory).parameters]
    return optax.inject_hyperparams(factory, static_args=static)


def _rmsprop_inner(learning_rate, rho, epsilon, momentum=None, centered=False, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
    if momentum is None and not centered:
        # The plain form (and its optimizer state) of earlier versions: g / sqrt(v + eps), times -lr.
        core = optax.chain(
            optax.scale_by_rms(decay=rho, eps=epsilon, initial_scale=0.0, eps_in_sqrt=True),
            optax.scale_by_learning_rate(learning_rate),
        )
        if weight_decay is None and not (clipnorm or clipvalue or global_clipnorm):
            return core
    else:
        core = keras_rmsprop(learning_rate, rho, epsilon, momentum, centered)
    return _with_base(core, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)


def _adamax_inner(learning_rate, beta_1, beta_2, epsilon, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
    core = optax.chain(scale_by_keras_adamax(beta_1, beta_2, epsilon), optax.scale_by_learning_rate(learning_rate))
    return _with_base(core, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)


def _adam_inner(learning_rate, beta_1, beta_2, epsilon, amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
    core = keras_adam(learning_rate, beta_1, beta_2, epsilon, amsgrad)
    return _with_base(core, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)


def _sgd_inner(learning_rate, momentum=None, nesterov=False, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
    core = keras_sgd(learning_rate, momentum, nesterov)
    return _with_base(core, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)


_rmsprop_injected = _inject(_rmsprop_inner)
_adamax_injected = _inject(_adamax_inner)
_adam_injected = _inject(_adam_inner)
_sgd_injected = _inject(_sgd_inner)


def _no_momentum(momentum: Any) -> Any:
    """Keras keeps no velocity for momentum 0; None here keeps none in the state either."""
    return None if isinstance(momentum, (int, float)) and momentum == 0 else momentum


def _check_base(name: str, weight_decay: Any, clipnorm: Any, clipvalue: Any, global_clipnorm: Any) -> None:
    given = [k for k, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue), ("global_clipnorm", global_clipnorm)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"{name}: only one of clipnorm, clipvalue and global_clipnorm can be set, got {', '.join(given)}")
    for key, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue), ("global_clipnorm", global_clipnorm)):
        if value is not None and (not isinstance(value, (int, float)) or not value > 0):
            raise ConfigError(f"{name}: {key} must be a positive number, got {value!r}")
    if weight_decay is not None and not callable(weight_decay):
        if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ConfigError(f"{name}: weight_decay must be a number >= 0 or None, got {weight_decay!r}")


def _check_fraction(name: str, key: str, value: Any, *, upper_open: bool = False) -> None:
    if callable(value):
        return
    ok = isinstance(value, (int, float)) and 0 <= value <= 1 and not (upper_open and value == 1)
    if not ok:
        raise ConfigError(f"{name}: {key} must be a number in [0, 1{')' if upper_open else ']'}, got {value!r}")


def rmsprop(
    learning_rate: LearningRate = 0.001,
    rho: float = 0.9,
    epsilon: float = 1e-7,
    momentum: float = 0.0,
    centered: bool = False,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
) -> optax.GradientTransformation:
    """Keras's RMSprop (defaults lr 0.001, rho 0.9, epsilon 1e-7 inside the square root,
    momentum 0, centered False); see the module docstring for the update."""
    learning_rate = _check_lr(learning_rate)
    _check_base("rmsprop", weight_decay, clipnorm, clipvalue, global_clipnorm)
    _check_fraction("rmsprop", "momentum", momentum)
    return _rmsprop_injected(
        learning_rate=learning_rate, rho=rho, epsilon=epsilon, momentum=_no_momentum(momentum), centered=bool(centered),
        weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
    )


def adamax(
    learning_rate: LearningRate = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
) -> optax.GradientTransformation:
    """Keras's Adamax (defaults lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7)."""
    learning_rate = _check_lr(learning_rate)
    _check_base("adamax", weight_decay, clipnorm, clipvalue, global_clipnorm)
    return _adamax_injected(
        learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
        weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
    )


def adam(
    learning_rate: LearningRate = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
) -> optax.GradientTransformation:
    """Keras's Adam (defaults lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7 added to the
    uncorrected ``sqrt(v)``, amsgrad False); see the module docstring."""
    learning_rate = _check_lr(learning_rate)
    _check_base("adam", weight_decay, clipnorm, clipvalue, global_clipnorm)
    return _adam_injected(
        learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=bool(amsgrad),
        weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
    )


def adamw(
    learning_rate: LearningRate = 0.001,
    weight_decay: float = 0.004,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
) -> optax.GradientTransformation:
    """Keras's AdamW: Adam plus decoupled weight decay ``w -= w * weight_decay * lr`` (default 0.004)."""
    if weight_decay is None:
        raise ConfigError("adamw: weight_decay must be a number >= 0 (Keras's default is 0.004); use 'adam' for none")
    return adam(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, clipnorm, clipvalue, global_clipnorm)


def sgd(
    learning_rate: LearningRate = 0.01,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
) -> optax.GradientTransformation:
    """Keras's SGD (defaults lr 0.01, momentum 0, nesterov False): the velocity stores ``lr * g``."""
    learning_rate = _check_lr(learning_rate)
    _check_base("sgd", weight_decay, clipnorm, clipvalue, global_clipnorm)
    _check_fraction("sgd", "momentum", momentum)
    return _sgd_injected(
        learning_rate=learning_rate, momentum=_no_momentum(momentum), nesterov=bool(nesterov),
        weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
    )


def exponential_decay(initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False) -> Schedule:
    """Keras ``ExponentialDecay``: ``lr0 * decay_rate ** (step / decay_steps)``, floored if staircase.

    The report's CIFAR schedule is ``exponential_decay(0.005, 1500, 0.96, staircase=True)``:
    0.005 for steps 0..1499, 0.0048 for 1500..2999, 0.004608 from 3000. Checked against
    ``keras.optimizers.schedules.ExponentialDecay`` inside an optimizer by
    ``tests/test_keras_parity.py::test_optimizer_matches_keras`` (the ``schedule`` cases).
    """
    initial_learning_rate = _check_lr(initial_learning_rate)
    if decay_steps <= 0:
        raise ConfigError(f"decay_steps must be positive, got {decay_steps}")
    return optax.exponential_decay(initial_learning_rate, decay_steps, decay_rate, staircase=staircase)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "rmsprop": rmsprop,
    "adamax": adamax,
    "adam": adam,
    "adamw": adamw,
    "sgd": sgd,
}


#: PyTorch's optimizer arguments, as Keras (and get_optimizer) names them.
_TORCH_NAMES = {"lr": ("learning_rate",), "betas": ("beta_1", "beta_2"), "eps": ("epsilon",), "alpha": ("rho",)}


def did_you_mean(name: str, choices: Any) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(name).lower(), list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_optimizer(name: str, learning_rate: LearningRate | None = None, **kwargs: Any) -> optax.GradientTransformation:
    """The optimizer ``name`` (rmsprop, adamax, adam, adamw, sgd) with Keras's defaults.

    ``learning_rate`` is a positive float or a schedule ``step -> lr``; ``None`` takes the
    optimizer's default. ``kwargs`` are the Keras constructor's arguments (``momentum``,
    ``nesterov``, ``centered``, ``beta_1``, ``weight_decay``, ``clipnorm``...). Unknown names or
    arguments and bad values raise ``ConfigError``. The same arguments give the same (immutable)
    transformation, so a second ``fit`` with it reuses the first one's compiled programs.
    """
    import inspect

    try:
        factory = OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(
            f"unknown optimizer {name!r}{did_you_mean(name, OPTIMIZERS)}; use one of {', '.join(OPTIMIZERS)}"
        ) from None
    accepted = [p for p in inspect.signature(factory).parameters if p != "learning_rate"]
    for key in kwargs:
        if key not in accepted:
            torch = [k for k in _TORCH_NAMES.get(key, ()) if k in accepted or k == "learning_rate"]
            hint = f" (PyTorch's {key}; Keras's name is {' and '.join(torch)})" if torch else did_you_mean(key, accepted)
            raise ConfigError(f"optimizer {name!r} does not take {key!r}{hint}; it takes learning_rate (the second "
                              f"argument) and {', '.join(accepted)}")
    options = dict(kwargs)
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate = _check_lr(learning_rate)
    items = tuple(sorted(kwargs.items()))
    tx = _built(factory, items, tuple(type(v) for _, v in items))  # 1 and 1.0 hash alike
    _record_spec(tx, name.lower(), learning_rate, options)
    return tx


#: The JSON that rebuilds each transformation :func:`get_optimizer` built, by its update function
#: (a transformation wrapped in another, an ``optax.chain``, has another and is not found).
_SPECS: weakref.WeakKeyDictionary[Callable[..., Any], str] = weakref.WeakKeyDictionary()


def _record_spec(tx: optax.GradientTransformation, name: str, learning_rate: Any, options: dict[str, Any]) -> None:
    if learning_rate is not None and not isinstance(learning_rate, (int, float)):
        return  # a schedule: not JSON
    spec: dict[str, Any] = {"name": name, "learning_rate": learning_rate}
    if options:
        spec["kwargs"] = options
    try:
        _SPECS[tx.update] = json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError):  # an argument JSON cannot hold
        pass


def spec_of(tx: optax.GradientTransformation) -> str | None:
    """The JSON ``{"name", "learning_rate"[, "kwargs"]}`` that rebuilds ``tx`` with
    :func:`get_optimizer`, when ``tx`` is what it returned for a number (or no) learning rate and
    JSON arguments; None otherwise (an optax transformation of your own, a schedule)."""
    try:
        return _SPECS.get(tx.update)
    except TypeError:  # an update that cannot be weakly referenced
        return None


@memo_if_hashable(maxsize=64)
def _built(factory: Callable[..., optax.GradientTransformation], kwargs: tuple[tuple[str, Any], ...],
           types: tuple[type, ...]) -> optax.GradientTransformation:
    """One transformation per distinct arguments (built afresh for an unhashable one). It is
    immutable; sharing it lets the training state of a second fit with the same optimizer have
    the jit signature of the first, so its programs are reused instead of compiled again (a new
    object's functions compare unequal)."""
    return factory(**dict(kwargs))


def get_learning_rate(opt_state: Any) -> jax.Array | None:
    """The current learning rate stored in an ``inject_hyperparams`` optimizer state, or None."""
    hp = getattr(opt_state, "hyperparams", None)
    return None if hp is None else hp.get("learning_rate")


def learning_rate_is_scheduled(opt_state: Any) -> bool:
    """Whether the optimizer recomputes its learning rate from a schedule at every step."""
    return "learning_rate" in (getattr(opt_state, "hyperparams_states", None) or {})


def set_learning_rate(opt_state: Any, learning_rate: float) -> Any:
    """Return ``opt_state`` with its learning rate replaced (same dtype: no recompilation).

    Only for optimizers whose learning rate is a number: with a schedule the rate is recomputed
    from the step count at every update, so setting it would have no effect, and this raises
    ``ConfigError`` (Keras raises too when a scheduler meets a schedule).
    """
    hp = getattr(opt_state, "hyperparams", None)
    if hp is None or "learning_rate" not in hp:
        raise ConfigError(
            "this optimizer's learning rate cannot be set: its state has no injectable learning rate; "
            "build it with jaxcnn.optim.get_optimizer(name, lr) or wrap it in optax.inject_hyperparams"
        )
    if learning_rate_is_scheduled(opt_state):
        raise ConfigError(
            "this optimizer's learning rate is a schedule, recomputed at every step, so it cannot be set; "
            "give the optimizer a float learning rate to use LearningRateScheduler, or drop the scheduler"
        )
    if isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool) and learning_rate == 0.0:
        learning_rate = 0.0  # a callback may set 0 (a warm-up's first epoch, a schedule's end), as Keras's
    else:
        learning_rate = _check_lr(learning_rate)
    old = hp["learning_rate"]
    new_hp = dict(hp)
    new = jnp.asarray(learning_rate, dtype=jnp.asarray(old).dtype)
    if isinstance(old, jax.Array):  # same device placement too, or the step would recompile
        new = jax.device_put(new, old.sharding)
    new_hp["learning_rate"] = new
    return opt_state._replace(hyperparams=new_hp)
