"""The training state: one pytree holding everything that changes while training."""

from __future__ import annotations

import functools
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
from jaxcnn.train.model import Model, adapt, model_name, tracing_errors

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
    images = (SAMPLE, *input_shape)  # more than one image, so that a model mixing the batch is seen
    with tracing_errors(getattr(adapter, "module", adapter), images):
        if adapter.kind == "linen":  # the trace of the state's first program, which jit keeps for it
            out = _start_traced(adapter, input_shape).out_info[2]
        else:
            x = jax.ShapeDtypeStruct(images, jnp.float32)
            out = jax.eval_shape(lambda x: adapter.apply(adapter.init(None, None, x), x, train=False), x)
    if isinstance(out, (tuple, list, dict)):
        kind = type(out).__name__
        raise ShapeError(
            f"{model_name(adapter)} returns a {kind} ({len(out)} item{'s' if len(out) != 1 else ''}); jaxcnn trains a model that returns one array of "
            "outputs (B, classes): return only those (logits or probabilities), and keep anything else out of __call__ "
            "(or sow it: self.sow('intermediates', name, value))"
        )
    if getattr(out, "ndim", 0) != 2:
        raise ShapeError(
            f"{model_name(adapter)} returns outputs of shape {getattr(out, 'shape', None)} for images of shape "
            f"{images}; a classifier must return (B, classes)"
        )
    if out.shape[0] != images[0]:
        raise ShapeError(
            f"{model_name(adapter)} returns outputs of shape {out.shape} for images of shape {images}; a classifier "
            f"must return one row per image, (B, classes): a mean or sum over axis 0 mixes the batch"
        )
    if out.shape[-1] < 2:
        raise ShapeError(
            f"{model_name(adapter)} has a single output; jaxcnn trains classifiers with one output per class, so for "
            "two classes end the model with Dense(2) (logits, or a softmax) and give labels 0 and 1, as Keras's "
            "sparse_categorical_crossentropy takes them"
        )
    return int(out.shape[-1])


def has_batch_stats(model: Any, input_shape: Sequence[int]) -> bool:
    """Whether ``model`` keeps batch statistics (BatchNorm), found by tracing alone: nothing
    compiles."""
    adapter = adapt(model)
    if adapter.kind == "nnx":
        return bool(jax.tree.leaves(adapter.initial_variables()["batch_stats"]))
    shapes = _start_traced(adapter, tuple(int(d) for d in input_shape)).out_info[0]
    return bool(jax.tree.leaves(shapes.get("batch_stats", {})))


def _keras_optimizer_message(optimizer: Any) -> str:
    """What to pass instead of a Keras optimizer object: jaxcnn's of the same name and rate."""
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    name = cls.__name__.lower()
    if name not in optim.OPTIMIZERS:
        return (f"{cls.__name__} is a Keras optimizer, which cannot update jaxcnn's parameters; pass a name "
                f"({', '.join(repr(n) for n in optim.OPTIMIZERS)}) or an optax GradientTransformation")
    rate = ""
    try:
        rate = f", learning_rate={float(np.asarray(optimizer.learning_rate)):g}"
    except Exception:  # noqa: BLE001 - a schedule, or a class: the name alone
        pass
    return (f"{cls.__name__} is a Keras optimizer, which cannot update jaxcnn's parameters; pass optimizer={name!r}{rate} "
            f"instead (Keras 3's update rule and defaults), or jaxcnn.optim.get_optimizer({name!r}, ...) with Keras's "
            "other arguments")


def optimizer_from(optimizer: str | optax.GradientTransformation, learning_rate: optim.LearningRate | None,
                   ) -> tuple[optax.GradientTransformation, str | None]:
    """The optax transformation for ``optimizer`` and, when it was given by name, or built by
    :func:`jaxcnn.optim.get_optimizer`, with a number (or no) learning rate, the JSON that rebuilds
    it (:func:`jaxcnn.optim.spec_of`: the name, the rate and any other arguments)."""
    if isinstance(optimizer, str):
        learning_rate = checks.check_learning_rate(learning_rate)  # np.float32(0.001) -> 0.001
        optimizer = optim.get_optimizer(optimizer, learning_rate)
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, optim.spec_of(optimizer)
    if losses.is_keras_object(optimizer):
        raise ConfigError(_keras_optimizer_message(optimizer))
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
    resolved by :func:`jaxcnn.losses.get_loss`; its ``from_logits=None`` (the default) is decided
    from the model's outputs on a few random images, as ``fit`` decides it on training images,
    so that :func:`jaxcnn.train.train_step` and ``eval_step`` take a softmax output as
    probabilities, never softmaxing it twice.
    """
    images = np.random.default_rng(0).random((SAMPLE, *tuple(int(d) for d in input_shape)), dtype=np.float32) \
        if len(input_shape) == 3 else None
    state, outputs = start_state(model, input_shape, optimizer, learning_rate, seed, loss=loss, metrics=metrics, sample=images)
    # every loss get_loss makes (a function of your own too) is decided here, as fit does
    return with_outputs_decided(state, images, outputs, check_training=True)


def with_outputs_decided(state: TrainState, images: np.ndarray, outputs: Any = None, *,
                         check_training: bool = False) -> TrainState:
    """``state`` with its loss's ``from_logits`` decided from the model's outputs on ``images``
    (the first :data:`SAMPLE`; ``outputs``: those outputs, when already computed): a softmax
    output is taken as probabilities, anything else as logits, as ``fit`` decides. A decided
    state comes back as it is. ``create_train_state`` decides every state it makes; ``evaluate``,
    ``predict`` and ``jaxcnn.explain`` decide one whose loss was replaced by an undecided one.
    ``check_training``: also refuse a softmax applied in evaluation only."""
    if state.loss.from_logits is not None:
        return state
    images = np.asarray(images[:SAMPLE], np.float32)
    if outputs is None:
        from jaxcnn.train.strategies import jit_predict

        outputs = jit_predict(state, images)
    probs = losses.looks_like_probabilities(np.asarray(outputs)[:SAMPLE])
    if probs and check_training:
        check_probabilities_in_training(state, images)
    return state.replace(loss=state.loss.with_from_logits(not probs))


def check_probabilities_in_training(state: TrainState, images: np.ndarray) -> None:
    """Refuse a model whose outputs are probabilities in evaluation (``images``: a few inputs)
    but not in training, a softmax applied only when ``train`` is False: one loss serves both
    modes, so it would take either the training outputs or the evaluation ones wrongly."""
    from jaxcnn.train.strategies import jit_training_outputs

    out = np.asarray(jit_training_outputs(state, images), np.float64)  # float32 here: a bf16 softmax's rows sum to 1 within 4e-3
    if not (np.all(out >= 0) and np.allclose(out.sum(-1), 1.0, atol=2e-2)):
        raise ConfigError(
            f"{model_name(state.model)} returns probabilities in evaluation but not in training (a softmax applied only when "
            "train is False?); jaxcnn uses one loss for both modes: apply the softmax in both, or in neither "
            "(predict(state, x, output='probs') gives probabilities from logits)"
        )


def start_state(model: Any, input_shape: Sequence[int], optimizer: str | optax.GradientTransformation = "rmsprop",
                learning_rate: optim.LearningRate | None = None, seed: int = 0, *, loss: Any = None,
                metrics: Sequence[Any] = (), sample: np.ndarray | None = None) -> tuple[TrainState, np.ndarray | None]:
    """:func:`create_train_state`, and the model's evaluation-mode outputs for ``sample`` (up to
    :data:`SAMPLE` images; None when not given or not computed in the same program), which
    ``fit`` reads to tell logits from probabilities without a program of its own."""
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ShapeError(f"input_shape must be (H, W, C), got {input_shape}")
    tx, spec = optimizer_from(optimizer, learning_rate)
    adapter = adapt(model)
    num_classes = output_classes(adapter, input_shape)  # traced only: a bad shape fails here, uncompiled
    outputs = None
    if adapter.kind == "linen" and 0 <= int(seed) < 2**32:
        images = None  # zeros
        if sample is not None and len(sample):
            images = np.resize(np.asarray(sample[:SAMPLE], np.float32), (SAMPLE, *input_shape))  # repeated up to SAMPLE rows
        variables, dropout_key, out = _start(adapter, input_shape, int(seed), images)
        outputs = None if images is None else np.asarray(out)[: min(len(sample), SAMPLE)]
    else:
        init_key, dropout_key = _seed_keys(seed)
        variables = _init_variables(adapter, input_shape, init_key, dropout_key)
    _check_statistics_in_evaluation(adapter, variables, input_shape)
    state = state_from_variables(adapter, variables, tx, dropout_key, input_shape, num_classes,
                                 loss=losses.get_loss(loss), metrics=tuple(metrics), optimizer_spec=spec)
    return state, outputs


def _check_statistics_in_evaluation(adapter: Model, variables: Any, input_shape: tuple[int, ...]) -> None:
    """Refuse a linen model whose BatchNorm updates its statistics in evaluation mode too
    (``use_running_average=False`` always): evaluation would otherwise fail after the first
    epoch with Flax's "collection batch_stats is immutable". Traced only (nothing compiles), and
    only for a model with batch statistics."""
    if adapter.kind != "linen" or not jax.tree.leaves(variables.get("batch_stats", {})):
        return
    leaves, treedef = jax.tree.flatten(variables)
    # by the variables' shapes alone: checked once per model and input shape (a search's trials,
    # a second fit), not traced again at every start
    _check_evaluation_trace(adapter, tuple(input_shape), treedef, tuple((tuple(a.shape), str(a.dtype)) for a in leaves))


@memo_if_hashable(maxsize=32)
def _check_evaluation_trace(adapter: Model, input_shape: tuple[int, ...], treedef: Any,
                            leaves: tuple[tuple[tuple[int, ...], str], ...]) -> None:
    from flax.errors import ModifyScopeVariableError

    variables = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in leaves])
    x = jax.ShapeDtypeStruct((SAMPLE, *input_shape), jnp.float32)
    try:
        jax.eval_shape(lambda v, x: adapter.apply(v, x, train=False, mutable=["losses"]), variables, x)
    except ModifyScopeVariableError as e:
        import re

        where = re.search(r'in "/?([^"]*)" because collection "batch_stats"', str(e))
        layer = f"its layer {where.group(1)!r}" if where and where.group(1) else "a layer"
        raise ConfigError(
            f"{model_name(adapter)} updates its batch statistics in evaluation too ({layer}: a BatchNorm with "
            "use_running_average=False?); jaxcnn evaluates with the moving averages, as Keras does: build it with "
            "use_running_average=not train (give __call__ a train argument), or use jaxcnn.layers.BatchNorm, which "
            "follows fit's mode"
        ) from None


# A linen module's start, one program: the seed's keys, the initial variables and the outputs
# of that same (evaluation-mode) call on a few images: their shape is the output probe, their
# values tell fit whether the model ends in a softmax. A start of training traces, lowers and
# compiles (or loads from the persistent cache) each program it runs, also when warm; as one
# program the model is traced once for all three (it was four times), and three programs fewer
# are lowered and loaded. Flax's initialisers read the input's shape, not its values, so the
# variables are those of init on zeros (tested).

#: Images the start program runs the model on (fit's first training images, else zeros).
SAMPLE = 8


def _start_impl(adapter: Model, input_shape: tuple[int, ...], impl: str, seed: Array, images: Array) -> Any:
    init_key, dropout_key = jax.random.split(jax.random.key(seed, impl=impl))
    out, variables = adapter.init_with_output(init_key, dropout_key, images)
    return variables, dropout_key, out


_start_jitted = jax.jit(_start_impl, static_argnums=(0, 1, 2))


def _start_traced(adapter: Model, input_shape: tuple[int, ...], impl: str | None = None) -> Any:
    """The start program traced (jit keeps the trace: the call that compiles it reuses it);
    nothing compiles. ``impl``: the PRNG implementation, by default JAX's current one."""
    impl = impl or jax.config.jax_default_prng_impl
    seed = jax.ShapeDtypeStruct((), np.uint32)
    return _start_jitted.trace(adapter, input_shape, impl, seed, jax.ShapeDtypeStruct((SAMPLE, *input_shape), np.float32))


@memo_if_hashable(maxsize=32)
def _start_compiled(adapter: Model, input_shape: tuple[int, ...], impl: str, backend: str) -> Any:
    # Compiled ahead of time to give the CPU its once-only options (ONCE_OPTIONS).
    return _start_traced(adapter, input_shape, impl).lower().compile(ONCE_OPTIONS if backend == "cpu" else None)


def _start(adapter: Model, input_shape: tuple[int, ...], seed: int, images: np.ndarray | None = None) -> tuple[Any, Array, Array]:
    """(initial variables, dropout key, outputs for ``images``) of a linen module: the variables
    of ``init`` with ``split(key(seed))``'s first key, as eagerly (tested)."""
    compiled = _start_compiled(adapter, input_shape, jax.config.jax_default_prng_impl, jax.default_backend())
    if images is None:
        images = np.zeros((SAMPLE, *input_shape), np.float32)
    return compiled(np.uint32(seed), images)


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
    if adapter.kind == "nnx":  # copies of the module's own arrays (NNXModel.init)
        return adapter.init(init_key, dropout_key, None)
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
