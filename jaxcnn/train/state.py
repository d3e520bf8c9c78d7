"""The training state: one pytree holding everything that changes while training."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from jaxcnn import checks, losses, optim
from jaxcnn._memo import memo_if_hashable
from jaxcnn.errors import ConfigError, ShapeError
from jaxcnn.train.model import Model, adapt, call_error, model_name

Array = jax.Array


class TrainState(train_state.TrainState):
    """Parameters, batch statistics, optimizer state, step and dropout key, as one pytree.

    Static (not arrays, part of the jitted step's signature): ``input_shape`` (H, W, C) and
    ``num_classes``, which let :func:`jaxcnn.fit` check its inputs before anything is compiled;
    ``model``, the adapter that rebuilds and calls the module (:mod:`jaxcnn.train.model`);
    ``loss`` (:mod:`jaxcnn.losses`), ``metrics`` (:mod:`jaxcnn.metrics`) and ``optimizer_spec``,
    JSON naming the optimizer when it was built by name (so an export can rebuild it).
    """

    batch_stats: Any = struct.field(default_factory=dict)
    key: Array = struct.field(default=None)
    input_shape: tuple[int, ...] = struct.field(pytree_node=False, default=())
    num_classes: int = struct.field(pytree_node=False, default=0)
    model: Any = struct.field(pytree_node=False, default=None)
    loss: Any = struct.field(pytree_node=False, default=losses.SparseCategoricalCrossentropy(from_logits=True))
    metrics: tuple[Any, ...] = struct.field(pytree_node=False, default=())
    optimizer_spec: str | None = struct.field(pytree_node=False, default=None)

    @property
    def outputs_are_probs(self) -> bool:
        """Whether the model's outputs are probabilities (a softmax output) rather than logits."""
        return self.loss.from_logits is False


def output_classes(model: Any, input_shape: Sequence[int]) -> int:
    """Number of outputs of ``model`` for one input of ``input_shape``, found by tracing alone
    (nothing compiles); raises the model's own error, e.g. a kernel too big for its input."""
    # fit asks twice: checking inputs, then building the state
    return _output_classes(adapt(model), tuple(int(d) for d in input_shape))


@memo_if_hashable(maxsize=32)
def _output_classes(adapter: Model, input_shape: tuple[int, ...]) -> int:
    x = jax.ShapeDtypeStruct((1, *tuple(input_shape)), jnp.float32)

    def run(x):
        variables = adapter.init(jax.random.key(0), jax.random.key(1), x)
        return adapter.apply(variables, x, train=False)

    try:
        out = jax.eval_shape(run, x)
    except TypeError as e:
        if "positional argument" in str(e) or "keyword argument" in str(e):
            raise call_error(getattr(adapter, "module", adapter), e) from None
        raise
    if getattr(out, "ndim", 0) != 2:
        raise ShapeError(
            f"{model_name(adapter)} returns outputs of shape {getattr(out, 'shape', None)} for images of shape "
            f"{(1, *tuple(input_shape))}; a classifier must return (B, classes)"
        )
    return int(out.shape[-1])


def has_batch_stats(model: Any, input_shape: Sequence[int]) -> bool:
    """Whether ``model`` keeps batch statistics (BatchNorm), found by tracing alone: nothing
    compiles and, for a linen module, JAX's backend is not started (so the CPU device count
    can still be chosen, :func:`jaxcnn.use_cpu_devices`)."""
    adapter = adapt(model)
    if adapter.kind == "nnx":
        return bool(jax.tree.leaves(adapter.initial_variables()["batch_stats"]))
    x = jax.ShapeDtypeStruct((1, *tuple(int(d) for d in input_shape)), jnp.float32)
    shapes = jax.eval_shape(lambda x: adapter.init(jax.random.key(0), jax.random.key(1), x), x)
    return bool(jax.tree.leaves(shapes.get("batch_stats", {})))


def optimizer_from(optimizer: str | optax.GradientTransformation, learning_rate: optim.LearningRate | None,
                   ) -> tuple[optax.GradientTransformation, str | None]:
    """The optax transformation for ``optimizer`` and, when it was given by name with a number
    (or no) learning rate, the JSON that rebuilds it."""
    if isinstance(optimizer, str):
        learning_rate = checks.check_learning_rate(learning_rate)  # np.float32(0.001) -> 0.001
        tx = optim.get_optimizer(optimizer, learning_rate)
        lr = learning_rate if learning_rate is None or isinstance(learning_rate, (int, float)) else None
        spec = None if learning_rate is not None and lr is None else json.dumps({"name": optimizer, "learning_rate": lr})
        return tx, spec
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, None
    raise ConfigError(f"optimizer must be a name (e.g. 'rmsprop') or an optax GradientTransformation, got {type(optimizer).__name__}")


def create_train_state(
    model: Any,
    input_shape: Sequence[int],
    optimizer: str | optax.GradientTransformation = "rmsprop",
    learning_rate: optim.LearningRate | None = None,
    seed: int = 0,
    *,
    loss: Any = None,
    metrics: Sequence[Any] = (),
) -> TrainState:
    """Initialise ``model`` (a linen or NNX module) for inputs of ``input_shape`` = (H, W, C).

    ``optimizer`` is a name for :func:`jaxcnn.optim.get_optimizer` or any optax transformation.
    A linen module's parameters come from ``PRNGKey(seed)`` (Keras-style init in
    ``jaxcnn.layers``); dropout keys, for every kind, from a key split off it. ``loss`` is
    resolved by :func:`jaxcnn.losses.get_loss`.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ShapeError(f"input_shape must be (H, W, C), got {input_shape}")
    tx, spec = optimizer_from(optimizer, learning_rate)
    adapter = adapt(model)
    num_classes = output_classes(adapter, input_shape)  # traced only: a bad shape fails here, uncompiled
    init_key, dropout_key = _seed_keys(seed)
    variables = _init_variables(adapter, input_shape, init_key, dropout_key)
    return state_from_variables(adapter, variables, tx, dropout_key, input_shape, num_classes,
                                loss=losses.get_loss(loss), metrics=tuple(metrics), optimizer_spec=spec)


@functools.partial(jax.jit, static_argnums=1)
def _split_seed(seed: Array, impl: str) -> tuple[Array, Array]:
    init_key, dropout_key = jax.random.split(jax.random.key(seed, impl=impl))
    return init_key, dropout_key


def _seed_keys(seed: int) -> tuple[Array, Array]:
    """(parameter key, dropout key) of ``seed``: ``split(key(seed))``, in one small program
    rather than four (a start of training compiles or loads each program it runs)."""
    if 0 <= int(seed) < 2**32:
        # The same keys as the eager split (tested), also after jax_default_prng_impl changes.
        return _split_seed(np.uint32(seed), jax.config.jax_default_prng_impl)
    return tuple(jax.random.split(jax.random.key(seed)))


def _init_variables(adapter: Model, input_shape: tuple[int, ...], init_key: Array, dropout_key: Array) -> Any:
    if adapter.kind == "nnx":
        return jax.tree.map(jnp.asarray, adapter.initial_variables())
    init = _init_jitted_once if jax.default_backend() == "cpu" else _init_jitted
    return init(adapter, input_shape, init_key, dropout_key)


def _init_jitted_impl(adapter: Model, input_shape: tuple[int, ...], init_key: Array, dropout_key: Array) -> Any:
    # Jitted once per (model, input shape): adapters hash by their modules.
    return adapter.init(init_key, dropout_key, jnp.zeros((1, *input_shape), jnp.float32))


_init_jitted = jax.jit(_init_jitted_impl, static_argnums=(0, 1))

#: XLA options for a CPU program that runs once per fit: LLVM's optimisation level 1 instead of
#: the default 2. The initialisation of mnist_cnn compiled in 3.1 s at the default level, longer
#: than its training step, and in 0.9 s at level 1 (cifar_cnn3: 3.9 s and 1.4 s), and it runs
#: once, in milliseconds either way. The parameters it gave were bit-identical for every
#: registry model and a flax default-initialised one (BENCHMARKS.md; a test compares them).
ONCE_OPTIONS = {"xla_backend_optimization_level": 1}
_init_jitted_once = jax.jit(_init_jitted_impl, static_argnums=(0, 1), compiler_options=ONCE_OPTIONS)


def state_from_variables(model: Any, variables: Any, tx: optax.GradientTransformation, key: Array,
                         input_shape: tuple[int, ...], num_classes: int, *, loss: Any = None,
                         metrics: tuple[Any, ...] = (), optimizer_spec: str | None = None) -> TrainState:
    """A fresh :class:`TrainState` around initialised ``variables`` (``params``, and
    ``batch_stats`` where the model has them), with dropout key ``key``."""
    adapter = _interned(adapt(model))
    params = variables["params"]
    opt_state, step = _opt_init(tx, params)
    return TrainState(
        step=step,
        apply_fn=adapter.apply,
        params=params,
        tx=tx,
        opt_state=opt_state,
        batch_stats=variables.get("batch_stats") or {},
        key=key,
        input_shape=tuple(input_shape),
        num_classes=int(num_classes),
        model=adapter,
        loss=losses.get_loss(loss),
        metrics=tuple(metrics),
        optimizer_spec=optimizer_spec,
    )


@memo_if_hashable(maxsize=64)
def _interned(adapter: Model) -> Model:
    """The first adapter equal to ``adapter`` seen in this process (an unhashable one as it is).
    The state's ``apply_fn`` is a bound method, and methods of two equal adapters compare
    unequal: without this, a second fit of an equal module would have another jit signature and
    compile every program again."""
    return adapter


def _opt_init(tx: optax.GradientTransformation, params: Any) -> tuple[Any, Array]:
    """The optimizer state of ``params`` and the step counter, in one program (eagerly, each
    zero-filled moment and counter would compile or load a program of its own). The step is
    strongly typed: a weakly typed Python 0 would change the step's signature after the first
    update and cost a second compilation."""
    try:
        return _opt_init_jitted(tx, params)  # tx static: the same optimizer's program is reused
    except TypeError:  # an unhashable optimizer, or one whose state holds non-array leaves: eagerly
        return tx.init(params), jnp.zeros((), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _opt_init_jitted(tx: optax.GradientTransformation, params: Any) -> tuple[Any, Array]:
    return tx.init(params), jnp.zeros((), jnp.int32)
