"""Training: pure, jitted steps and a Keras-like ``fit`` built on them.

The pieces, from the inside out:

* :class:`TrainState`: everything that changes while training, in one pytree (parameters, batch
  statistics, optimizer state, step, dropout key).
* :func:`train_step` ``(state, batch) -> (state, metrics)`` and :func:`eval_step`
  ``(state, batch) -> metrics``: pure functions, jitted where they are called. Dropout keys come
  from ``fold_in(state.key, state.step)``, so a run is a function of its seed.
* :func:`fit`: epochs of shuffled batches (the order a function of seed and epoch), validation,
  callbacks, a progress bar and a :class:`History`; :func:`evaluate` and :func:`predict`.

Keras parity: the loss is sparse categorical cross-entropy from logits plus every Keras-style L2
term the layers sowed; the epoch's ``loss``/``accuracy`` are averages over its batches weighted by
batch size; ``val_loss`` includes the L2 terms too; the last partial batch is trained on.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from jaxcnn import optim
from jaxcnn.callbacks import Callback
from jaxcnn.errors import ConfigError, ShapeError, TrainingError

Array = jax.Array
Batch = dict[str, Array]


class TrainState(train_state.TrainState):
    """Parameters, batch statistics, optimizer state, step and dropout key, as one pytree.

    ``input_shape`` (H, W, C) and ``num_classes`` are static: they let :func:`fit` check its inputs
    before anything is compiled.
    """

    batch_stats: Any = struct.field(default_factory=dict)
    key: Array = struct.field(default=None)
    input_shape: tuple[int, ...] = struct.field(pytree_node=False, default=())
    num_classes: int = struct.field(pytree_node=False, default=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_variables(model: nn.Module, input_shape: tuple[int, ...], init_key: Array, dropout_key: Array) -> Any:
    # Jitted once per (model, input shape): flax modules hash by their attributes.
    x = jnp.zeros((1, *input_shape), jnp.float32)
    variables = model.init({"params": init_key, "dropout": dropout_key}, x, train=False)
    return {k: v for k, v in variables.items() if k != "losses"}


def output_classes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of outputs of ``model`` for one input of ``input_shape``, found by tracing alone
    (nothing compiles); raises the model's own error, e.g. a kernel too big for its input."""
    x = jax.ShapeDtypeStruct((1, *tuple(input_shape)), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    out = jax.eval_shape(lambda x: model.init_with_output(rngs, x, train=False)[0], x)
    return int(out.shape[-1])


def create_train_state(
    model: nn.Module,
    input_shape: Sequence[int],
    optimizer: str | optax.GradientTransformation = "rmsprop",
    learning_rate: optim.LearningRate | None = None,
    seed: int = 0,
) -> TrainState:
    """Initialise ``model`` for inputs of ``input_shape`` = (H, W, C) with Keras-style init.

    ``optimizer`` is a name for :func:`jaxcnn.optim.get_optimizer` or any optax transformation.
    The parameters come from ``PRNGKey(seed)``; dropout keys from a key split off it.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ShapeError(f"input_shape must be (H, W, C), got {input_shape}")
    tx = optim.get_optimizer(optimizer, learning_rate) if isinstance(optimizer, str) else optimizer
    num_classes = output_classes(model, input_shape)  # traced only: a bad shape fails here, uncompiled
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    variables = _init_variables(model, input_shape, init_key, dropout_key)
    return state_from_variables(model.apply, variables, tx, dropout_key, input_shape, num_classes)


def state_from_variables(apply_fn: Any, variables: Any, tx: optax.GradientTransformation, key: Array,
                         input_shape: tuple[int, ...], num_classes: int) -> TrainState:
    """A fresh :class:`TrainState` around initialised ``variables`` (``params``, and
    ``batch_stats`` where the model has them), with dropout key ``key``."""
    state = TrainState.create(
        apply_fn=apply_fn,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        key=key,
        input_shape=input_shape,
        num_classes=num_classes,
    )
    # A strongly typed step: a weakly typed Python 0 would change the step's signature after the
    # first update and cost a second compilation.
    return state.replace(step=jnp.zeros((), jnp.int32))


def regularization_loss(losses: Any) -> Array:
    """Sum of the Keras-style L2 terms the layers sowed into the ``losses`` collection."""
    leaves = jax.tree.leaves(losses)
    return sum(leaves, jnp.zeros((), jnp.float32)) if leaves else jnp.zeros((), jnp.float32)


def _apply(state: TrainState, params: Any, x: Array, train: bool, key: Array | None) -> tuple[Array, Array, Any]:
    """Run the model; return (logits, L2 loss, new batch stats)."""
    variables = {"params": params}
    mutable = ["losses"]
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
        if train:
            mutable.append("batch_stats")
    rngs = {"dropout": key} if key is not None else None
    logits, updates = state.apply_fn(variables, x, train=train, rngs=rngs, mutable=mutable)
    return logits, regularization_loss(updates.get("losses", {})), updates.get("batch_stats", state.batch_stats)


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on ``batch`` = {"x": (B, H, W, C) float, "y": (B,) int}.

    Returns the new state and this batch's metrics (summed over the batch, so that batches of
    different sizes add up): ``loss_sum``, ``correct``, ``count``, and ``finite`` (whether the
    loss was finite). A non-finite loss leaves the state unchanged, so the caller can stop with
    the last good weights.
    """
    x, y = batch["x"], batch["y"]
    key = jax.random.fold_in(state.key, state.step)

    def loss_fn(params):
        logits, l2, new_stats = _apply(state, params, x, True, key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + l2, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    finite = jnp.isfinite(loss)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    n = jnp.asarray(y.shape[0], jnp.float32)
    metrics = {
        "loss_sum": loss * n,
        # Counted in float32 so that, across devices, it joins the gradients' all-reduce: a second,
        # independent all-reduce could leave both threads of a 2-core pool waiting on one device.
        "correct": jnp.sum((jnp.argmax(logits, -1) == y).astype(jnp.float32)),
        "count": n,
        "finite": finite,
    }
    return new_state, metrics


def eval_step(state: TrainState, batch: Batch) -> dict[str, Array]:
    """Metrics of ``batch`` in evaluation mode (dropout off, moving batch statistics).

    ``batch["mask"]`` (B,) of 0/1 marks padding rows, which count for nothing. The loss includes
    the L2 terms, as Keras's ``val_loss`` does.
    """
    x, y = batch["x"], batch["y"]
    mask = batch.get("mask", jnp.ones(y.shape, jnp.float32))
    logits, l2, _ = _apply(state, state.params, x, False, None)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return {
        "loss_sum": jnp.sum((ce + l2) * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == y) * mask),
        "count": jnp.sum(mask),
    }


def _accumulate(acc: dict[str, Array], metrics: dict[str, Array], step: Array) -> dict[str, Array]:
    bad = ~metrics["finite"]
    return {
        "loss_sum": acc["loss_sum"] + jnp.where(bad, 0.0, metrics["loss_sum"]),
        "correct": acc["correct"] + metrics["correct"],
        "count": acc["count"] + metrics["count"],
        "bad_step": jnp.where((acc["bad_step"] < 0) & bad, step, acc["bad_step"]),
    }


def _zero_acc() -> dict[str, Array]:
    return {
        "loss_sum": jnp.zeros((), jnp.float32),
        "correct": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.float32),
        "bad_step": jnp.full((), -1, jnp.int32),
    }


def _train_and_accumulate(state: TrainState, acc: dict[str, Array], batch: Batch):
    step = state.step
    new_state, metrics = train_step(state, batch)
    # After a non-finite loss the host stops at its next check; until then no step may move the
    # weights on, so the state handed back is that of the last good step.
    keep_going = acc["bad_step"] < 0
    new_state = jax.tree.map(lambda new, old: jnp.where(keep_going, new, old), new_state, state)
    return new_state, _accumulate(acc, metrics, step.astype(jnp.int32))


def _eval_and_accumulate(state: TrainState, acc: dict[str, Array], batch: Batch) -> dict[str, Array]:
    m = eval_step(state, batch)
    return {k: acc[k] + m[k] for k in ("loss_sum", "correct", "count")}


_jit_logits = jax.jit(lambda state, x: _apply(state, state.params, x, False, None)[0])


# ----------------------------------------------------------------------------------------------
# History


@dataclass
class History:
    """Per-epoch logs, like Keras's ``History``: ``history["val_loss"][i]`` is epoch ``epoch[i]``."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def best_epoch(self, monitor: str = "val_loss", mode: str = "auto") -> int:
        """The epoch (0-based) with the best ``monitor`` value."""
        values = self.history.get(monitor)
        if not values:
            raise ConfigError(f"history has no {monitor!r}; it has {', '.join(self.history)}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        i = int(np.argmax(values) if mode == "max" else np.argmin(values))
        return self.epoch[i]

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(history={k: list(v) for k, v in d["history"].items()}, epoch=list(d["epoch"]), params=dict(d.get("params", {})))

    def to_csv(self) -> str:
        keys = list(self.history)
        rows = [",".join(["epoch", *keys])]
        for i, e in enumerate(self.epoch):
            rows.append(",".join([str(e + 1)] + [repr(self.history[k][i]) for k in keys]))
        return "\n".join(rows) + "\n"


class FitResult(NamedTuple):
    state: TrainState
    history: History


# ----------------------------------------------------------------------------------------------
# Input checks: every one runs in Python, before anything is compiled.


def _check_images(x: Any, expected: tuple[int, ...], what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.size == 0 or len(x) == 0:
        raise ShapeError(f"{what} is empty: there is nothing to train or evaluate on")
    if x.ndim == 3 and expected and expected[-1] == 1 and x.shape[1:] == expected[:2]:
        raise ShapeError(
            f"{what} has shape {x.shape} but the model takes (N, {', '.join(map(str, expected))}); "
            "add the channel axis with x[..., None]"
        )
    if x.ndim != 4 or (expected and tuple(x.shape[1:]) != tuple(expected)):
        shape = f"(N, {', '.join(map(str, expected))})" if expected else "(N, H, W, C)"
        raise ShapeError(f"{what} has shape {x.shape} but the model takes images of shape {shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(
            f"{what} has dtype {x.dtype}; the model takes floating-point images. Scale them to "
            "[0, 1] first, e.g. jaxcnn.data.to_float(x) (pixels / 255, as the report does)"
        )
    return x


def _check_labels(y: Any, n: int, num_classes: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes:  # one-hot, as with categorical cross-entropy
        y = y.argmax(-1)
    if y.ndim != 1:
        raise ShapeError(f"{what} has shape {y.shape}; expected integer labels (N,) or one-hot (N, {num_classes})")
    if len(y) != n:
        raise ShapeError(f"{what} has {len(y)} labels for {n} images; they must match one to one")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise ShapeError(f"{what} has dtype {y.dtype}; labels must be integers 0..{num_classes - 1}")
    y = y.astype(np.int32)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ShapeError(
            f"{what} holds label {int(y[bad[0]])} at index {int(bad[0])}, outside 0..{num_classes - 1} "
            f"({bad.size} labels out of range); the model has {num_classes} classes"
        )
    return y


def _check_positive_int(value: Any, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True)
class Placement:
    """Where batches and state live: one device, or a data-parallel mesh over several."""

    devices: tuple[Any, ...]

    @property
    def size(self) -> int:
        return len(self.devices)

    def __post_init__(self):
        if self.size > 1:
            mesh = jax.sharding.Mesh(np.array(self.devices), ("data",))
            object.__setattr__(self, "batch", jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
            object.__setattr__(self, "replicated", jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        else:
            object.__setattr__(self, "batch", jax.sharding.SingleDeviceSharding(self.devices[0]))
            object.__setattr__(self, "replicated", self.batch)

    def put_batch(self, arrays: dict[str, np.ndarray]) -> Batch:
        n = len(next(iter(arrays.values())))
        return _put(arrays, self.batch if n % self.size == 0 else self.replicated)

    def put_state(self, tree: Any) -> Any:
        return _put(tree, self.replicated)


def _put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Place ``tree`` with ``sharding``. Across several processes (hosts), every process holds the
    same host values (data and order derive from seed and epoch), so each builds the global array
    from the slices its own devices need."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(leaf))
            # Keys are state, always replicated, so the sharding covers their extra data axis too.
            arr = jax.make_array_from_callback(data.shape, sharding, lambda i: data[i])
            return jax.random.wrap_key_data(arr, impl=jax.random.key_impl(leaf))
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda i: value[i])

    return jax.tree.map(one, tree)



def auto_device_count(batch_size: int, devices: Sequence[Any] | None = None) -> int:
    """How many devices a data-parallel *mesh* uses for ``devices="auto"``: always one. On CPU,
    ``fit`` splits the batch over the CPU devices itself (:func:`split_devices`) without XLA
    collectives, whose in-process all-reduce aborted long CPU runs here; on an accelerator pass
    ``devices="all"`` for a mesh."""
    return 1


def split_devices(batch_size: int, state: TrainState | None = None) -> tuple[Any, ...]:
    """The CPU devices ``devices="auto"`` deals each batch's parts out to (one device per core, see
    :func:`jaxcnn.use_cpu_devices`; the parts have at most :data:`PART_SIZE` examples, see
    :func:`split_parts`), or ``()`` for the plain one-device step: on an accelerator, for a model
    with batch statistics (each part would normalise by its own), when no split leaves every
    device at least 8 examples, and on a single device when the batch is one part anyway."""
    local = jax.local_devices()
    if jax.process_count() > 1 or local[0].platform != "cpu" or (state is not None and state.batch_stats):
        return ()
    for count in range(len(local), 0, -1):
        if batch_size % count == 0 and batch_size // count >= 8:
            if count == 1 and split_parts(batch_size, 1, max_parts=max_parts(state, 1)) == 1:
                return ()
            return tuple(local[:count])
    return ()


def placement(devices: int | str | Sequence[Any] | None = None, batch_size: int | None = None) -> Placement:
    """Resolve ``devices``: None or 1 (one device), "auto" (see :func:`auto_device_count`, needs
    ``batch_size``), "all", a count, or a list of jax devices."""
    # Across hosts (jax.distributed.initialize), "all" means every device of every process.
    local = jax.local_devices() if jax.process_count() == 1 else jax.devices()
    if devices == "auto":
        devices = None
    if devices is None:
        chosen = local[:1]
    elif devices == "all":
        chosen = local
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ConfigError(
                f"devices={devices} but this process sees {len(local)} device(s); on CPU, set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} (or call "
                "jaxcnn.use_cpu_devices) before JAX starts"
            )
        chosen = local[:devices]
    elif isinstance(devices, Sequence) and not isinstance(devices, str):
        chosen = list(devices)
    else:
        raise ConfigError(f"devices must be None, 'all', a count or a list of devices, got {devices!r}")
    return Placement(tuple(chosen))


# ----------------------------------------------------------------------------------------------
# The loop


class Loop:
    """What callbacks see: the running ``state``, the ``history`` so far, ``stop_training``, and
    ``learning_rate`` (settable when the optimizer's rate is a number)."""

    def __init__(self, state: TrainState, history: History):
        self.state = state
        self.history = history
        self.stop_training = False

    @property
    def learning_rate(self) -> float:
        lr = optim.get_learning_rate(self.state.opt_state)
        return float("nan") if lr is None else float(lr)

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.state = self.state.replace(opt_state=optim.set_learning_rate(self.state.opt_state, value))


def _progress(total: int, desc: str, verbose: int):
    if verbose != 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of the ``n`` training examples in ``epoch``: a function of (seed, epoch) only,
    so a resumed run sees the same batches as one never interrupted."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


# One jitted function per (kind, devices, batch layout), shared by every fit/evaluate in the
# process. Explicit in/out shardings keep the state's layout fixed from step to step, so the
# compiled program is reused for every later step and epoch.
_JIT_CACHE: dict[tuple[Any, ...], Any] = {}


def _jitted(kind: str, place: Placement, sharded_batch: bool) -> Any:
    key = (kind, place.devices, sharded_batch)
    fn = _JIT_CACHE.get(key)
    if fn is None:
        repl = place.replicated
        batch = place.batch if sharded_batch else repl
        if kind == "train":
            fn = jax.jit(_train_and_accumulate, in_shardings=(repl, repl, batch), out_shardings=(repl, repl), donate_argnums=(0, 1))
        elif kind == "scan":
            fn = _scan_fn(place, sharded_batch)
        else:
            fn = jax.jit(_eval_and_accumulate, in_shardings=(repl, repl, batch), out_shardings=repl, donate_argnums=(1,))
        _JIT_CACHE[key] = fn
    return fn


def _scan_fn(place: Placement, sharded_batch: bool):
    """A whole chunk of steps in one program, the data set resident on the device: ``idx``
    (K, B) holds the example indices of K steps, ``valid`` (K,) marks padding steps to skip."""

    def run(state, acc, x_all, y_all, idx, valid):
        def body(carry, inputs):
            st, ac = carry
            ids, ok = inputs
            batch = {"x": jnp.take(x_all, ids, axis=0), "y": jnp.take(y_all, ids, axis=0)}
            if sharded_batch and place.size > 1:
                batch = jax.lax.with_sharding_constraint(batch, place.batch)
            new_st, new_ac = _train_and_accumulate(st, ac, batch)
            keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
            return (jax.tree.map(keep, new_st, st), jax.tree.map(keep, new_ac, ac)), None

        (state, acc), _ = jax.lax.scan(body, (state, acc), (idx, valid))
        return state, acc

    repl = place.replicated
    return jax.jit(run, in_shardings=(repl,) * 6, out_shardings=(repl, repl), donate_argnums=(0, 1))


def _part_grads(apply_fn: Any, params: Any, key: Array, step: Array, part: Array, x: Array, y: Array):
    """One part of a split batch, on its own device: gradients of ``sum(ce) + n * l2`` (summed
    over the parts and divided by the whole batch size, that is the gradient of the mean loss
    plus L2), the summed loss and the correct count."""
    key = jax.random.fold_in(jax.random.fold_in(key, step), part)

    def loss_fn(p):
        logits, updates = apply_fn({"params": p}, x, train=True, rngs={"dropout": key}, mutable=["losses"])
        n = jnp.asarray(y.shape[0], jnp.float32)
        total = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y)) + n * regularization_loss(updates.get("losses", {}))
        return total, logits

    (total, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, total, jnp.sum((jnp.argmax(logits, -1) == y).astype(jnp.float32))


_jit_part_grads = jax.jit(_part_grads, static_argnums=(0,))


def _combine_and_update(state: TrainState, acc: dict[str, Array], grads: Sequence[Any], totals: Sequence[Array], corrects: Sequence[Array], n: int):
    """Sum the parts' gradients and metrics (all on this device now) and take the optimizer step,
    with the same non-finite guard as :func:`train_step`."""
    loss_sum = sum(totals)
    g = jax.tree.map(lambda *parts: sum(parts) / n, *grads)
    finite = jnp.isfinite(loss_sum)
    new_state = state.apply_gradients(grads=g)
    keep = finite & (acc["bad_step"] < 0)
    new_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
    metrics = {"loss_sum": loss_sum, "correct": sum(corrects), "count": jnp.asarray(n, jnp.float32), "finite": finite}
    return new_state, _accumulate(acc, metrics, state.step)


_jit_combine = jax.jit(_combine_and_update, static_argnums=(5,), donate_argnums=(0, 1))


# Most examples in one part of a CPU batch. A part's activations must stay in the core's cache:
# on the 2-core machine (BENCHMARKS.md), the MNIST CNN at batch 256 over 2 devices ran at 5,084
# examples/s in parts of 128 and 10,806 in parts of 32; cifar_cnn3 at batch 512, 1,279 in parts
# of 256 and 1,870 in parts of 32; on one device, batch 128 in one part 3,935, in 4 parts 6,674.
# Override with JAXCNN_PART_SIZE (read at import).
PART_SIZE = int(os.environ.get("JAXCNN_PART_SIZE", "32"))
# Each part's gradients reach the first device before they are summed: at most this many bytes of
# them at once, so that a large model gets fewer, larger parts rather than many copies of itself.
PART_GRADS_BYTES = 512 * 2**20


def max_parts(state: TrainState | None, k: int) -> int | None:
    """The most parts a batch over ``k`` devices may have for ``state``'s model: as many copies
    of its gradients as fit :data:`PART_GRADS_BYTES`, at least ``k`` (``None``: no state, no cap)."""
    if state is None:
        return None
    grad_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.params))
    return max(k, PART_GRADS_BYTES // max(grad_bytes, 1))


def split_parts(n: int, k: int, part_size: int | None = None, max_parts: int | None = None) -> int:
    """How many equal parts a batch of ``n`` is cut into over ``k`` devices: the fewest multiple
    of ``k`` that divides ``n`` into parts of at most ``part_size`` (default :data:`PART_SIZE`)
    and at least 8 examples; where no count up to ``max_parts`` gives parts that small, the count
    that gives the smallest (at least ``k``)."""
    part_size = PART_SIZE if part_size is None else part_size
    best = k
    for p in range(k, n // 8 + 1, k):
        if max_parts is not None and p > max_parts:
            break
        if n % p == 0:
            best = p
            if n // p <= part_size:
                break
    return best


def _split_step(state: TrainState, acc: dict[str, Array], replicas: list[Any], keys: list[Array], step: int, x: np.ndarray, y: np.ndarray, devices: tuple[Any, ...], limit: int | None):
    """One training step with the batch split over ``devices``: the batch is cut into parts of at
    most :data:`PART_SIZE` examples (:func:`split_parts`), dealt out to the devices in turn; each
    part's gradients are computed by its device's own program (no collective), device 0 sums them
    and updates, and the new parameters are copied back to the others. ``limit`` caps the number
    of parts (:func:`max_parts`). Returns the new state and accumulator."""
    k = len(devices)
    parts = split_parts(len(y), k, max_parts=limit)
    size = len(y) // parts
    steps = [jax.device_put(np.int32(step), d) for d in devices]
    outs = []
    for j in range(parts):
        i = j % k
        params = state.params if i == 0 else replicas[i]
        xj, yj, pj = jax.device_put((x[j * size : (j + 1) * size], y[j * size : (j + 1) * size], np.int32(j)), devices[i])
        outs.append(_jit_part_grads(state.apply_fn, params, keys[i], steps[i], pj, xj, yj))
    grads, totals, corrects = zip(*[jax.device_put(o, devices[0]) for o in outs])
    state, acc = _jit_combine(state, acc, list(grads), list(totals), list(corrects), len(y))
    for i in range(1, k):
        replicas[i] = jax.device_put(state.params, devices[i])
    return state, acc


_COMPILES = [0]


def _count_compiles(event: str, duration: float, **kwargs: Any) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def compile_count() -> int:
    """How many XLA programs this process has compiled so far: a second epoch of the same shapes
    must not add any (tests use this to prove there is no recompilation)."""
    return _COMPILES[0]


def run_epoch(
    state: TrainState,
    x: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    place: Placement,
    *,
    epoch: int = 0,
    verbose: int = 0,
    desc: str = "",
    resident: tuple[Array, Array] | None = None,
    chunk: int = 64,
    split: tuple[Any, ...] = (),
) -> tuple[TrainState, dict[str, float]]:
    """Train one epoch over ``x[order]`` in batches (the last one partial). Returns the new state
    and the epoch's ``loss``, ``accuracy`` and ``examples_per_s``; raises :class:`TrainingError`
    on a non-finite loss with the state of the last good step.

    With ``resident`` = (x, y) already on the device(s), batches are gathered there and ``chunk``
    steps run inside one jitted ``lax.scan`` (the GPU path); otherwise each batch is sliced on
    the host and sent to one jitted step (faster on CPU, where a scanned epoch measured 4x
    slower). With ``split`` devices, every batch divisible over them is cut into parts dealt out
    to them (see :func:`split_devices`, :func:`split_parts`); the state lives on the first."""
    n = len(order)
    steps = math.ceil(n / batch_size)
    bar = _progress(steps, desc, verbose)
    acc = place.put_state(_zero_acc())
    t0 = time.perf_counter()
    if resident is not None:
        units = _scan_units(order, batch_size, chunk)
        log_every = 1
    else:
        units = [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]
        log_every = max(1, min(25, steps // 20))
    done = 0
    if split:
        first_step = int(state.step)
        replicas = [None] + [jax.device_put(state.params, d) for d in split[1:]]
        keys = [jax.device_put(state.key, d) for d in split]
        limit = max_parts(state, len(split))
    for i, unit in enumerate(units):
        if resident is not None:
            idx, valid = unit
            fn = _jitted("scan", place, idx.shape[1] % place.size == 0)
            state, acc = fn(state, acc, resident[0], resident[1], idx, valid)
            done += int(valid.sum())
        elif split and len(unit) % len(split) == 0:
            step = int(first_step) + i
            state, acc = _split_step(state, acc, replicas, keys, step, x[unit], y[unit], split, limit)
            done += 1
        else:
            batch = place.put_batch({"x": x[unit], "y": y[unit]})
            state, acc = _jitted("train", place, len(unit) % place.size == 0)(state, acc, batch)
            done += 1
            if split:
                replicas[1:] = [jax.device_put(state.params, d) for d in split[1:]]
        if (i + 1) % log_every == 0 and i + 1 < len(units):
            m = jax.device_get(acc)
            if bar is not None:
                seen = max(float(m["count"]), 1.0)
                bar.set_postfix(
                    loss=f"{m['loss_sum'] / seen:.4f}",
                    acc=f"{m['correct'] / seen:.4f}",
                    ex_s=f"{seen / (time.perf_counter() - t0):,.0f}",
                    refresh=False,
                )
                bar.update(done - bar.n)
            if m["bad_step"] >= 0:
                break
    m = jax.device_get(acc)
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.update(steps - bar.n)
        bar.close()
    if m["bad_step"] >= 0:
        step = int(m["bad_step"])
        err = TrainingError(
            f"the loss became NaN or infinite at epoch {epoch + 1}, step {step + 1} (global step); "
            "training stopped with the weights of the last good step. Lower the learning rate, "
            "check the inputs for NaN, or add weight decay"
        )
        err.state = state  # type: ignore[attr-defined]  # unchanged by the bad step
        raise err
    count = max(float(m["count"]), 1.0)
    return state, {
        "loss": float(m["loss_sum"]) / count,
        "accuracy": float(m["correct"]) / count,
        "examples_per_s": count / elapsed,
        "train_time_s": elapsed,
    }


def _scan_units(order: np.ndarray, batch_size: int, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split an epoch's order into scan chunks of ``chunk`` full batches (the last chunk padded
    with skipped steps, so all chunks share one program) and a final partial batch."""
    full = len(order) // batch_size
    units = []
    if full:
        k = min(chunk, full)
        n_chunks = math.ceil(full / k)
        idx = np.zeros((n_chunks * k, batch_size), np.int32)
        idx[:full] = order[: full * batch_size].reshape(full, batch_size)
        valid = np.arange(n_chunks * k) < full
        units += [(idx[c * k : (c + 1) * k], valid[c * k : (c + 1) * k]) for c in range(n_chunks)]
    rest = order[full * batch_size :]
    if len(rest):
        units.append((rest[None, :].astype(np.int32), np.ones(1, bool)))
    return units


def _evaluate_arrays(state: TrainState, x: np.ndarray, y: np.ndarray, batch_size: int, place: Placement) -> dict[str, float]:
    n = len(x)
    batch_size = min(batch_size, n)
    # Pad the last batch to full size with masked rows, so evaluation compiles once.
    batch_size = math.ceil(batch_size / place.size) * place.size
    acc = place.put_state({k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")})
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        mask = np.ones(len(xb), np.float32)
        if len(xb) < batch_size:
            pad = batch_size - len(xb)
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        acc = _jitted("eval", place, True)(state, acc, place.put_batch({"x": xb, "y": yb, "mask": mask}))
    m = jax.device_get(acc)
    return {"loss": float(m["loss_sum"] / m["count"]), "accuracy": float(m["correct"] / m["count"])}


def evaluate(state: TrainState, x: Any, y: Any, batch_size: int = 128, devices: Any = "auto") -> dict[str, float]:
    """Loss (with L2 terms) and accuracy of ``state`` on images ``x`` (N, H, W, C) and labels ``y``."""
    batch_size = _check_positive_int(batch_size, "batch_size")
    x = _check_images(x, state.input_shape, "x")
    y = _check_labels(y, len(x), state.num_classes, "y")
    place = placement(devices, batch_size)
    return _evaluate_arrays(place.put_state(state), x.astype(np.float32, copy=False), y, batch_size, place)


def predict(state: TrainState, x: Any, batch_size: int = 512, output: str = "logits") -> np.ndarray:
    """Model outputs for ``x`` (N, H, W, C): ``"logits"`` (N, classes), ``"probs"`` or ``"classes"`` (N,)."""
    if output not in ("logits", "probs", "classes"):
        raise ConfigError(f"output must be 'logits', 'probs' or 'classes', got {output!r}")
    x = _check_images(x, state.input_shape, "x").astype(np.float32, copy=False)
    batch_size = _check_positive_int(batch_size, "batch_size")
    outs = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        pad = batch_size - len(xb) if len(x) > batch_size else 0
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        out = np.asarray(_jit_logits(state, xb))
        outs.append(out[: len(out) - pad])
    logits = np.concatenate(outs)
    if output == "probs":
        return np.asarray(jax.nn.softmax(logits, axis=-1))
    if output == "classes":
        return logits.argmax(-1)
    return logits


def fit(
    model_or_state: nn.Module | TrainState,
    x: Any,
    y: Any,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    optimizer: str | optax.GradientTransformation = "rmsprop",
    learning_rate: optim.LearningRate | None = None,
    validation_split: float = 0.0,
    validation_data: tuple[Any, Any] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    callbacks: Iterable[Callback] = (),
    verbose: int = 1,
    initial_epoch: int = 0,
    devices: int | str | Sequence[Any] | None = "auto",
    data_on_device: bool | None = None,
) -> FitResult:
    """Train like ``keras.Model.fit``; return ``FitResult(state, history)``.

    Args:
      model_or_state: a Flax module (initialised here from ``seed``, with ``optimizer`` and
        ``learning_rate``) or a :class:`TrainState` to continue training.
      x: float images (N, H, W, C), e.g. ``jaxcnn.data.to_float(images)``.
      y: integer labels (N,) or one-hot (N, classes).
      epochs: train until this epoch (counting from ``initial_epoch``).
      batch_size: examples per step; the last, partial batch of an epoch is trained on too.
      validation_split: hold out the last fraction of ``x``/``y`` (before shuffling), as Keras.
      validation_data: ``(x_val, y_val)``; takes precedence over ``validation_split``.
      shuffle: reshuffle the training data each epoch; the order depends on (seed, epoch) only.
      seed: parameter initialisation, dropout and shuffling all derive from it.
      callbacks: e.g. ``EarlyStopping``, ``LearningRateScheduler``.
      verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
      devices: "auto" (default: on CPU, each batch cut into parts of at most 32 examples dealt
        out to the CPU devices, one per core, with no collective, see :func:`split_devices`; one
        device on an accelerator), None (one device, the whole batch in one program), or "all",
        a count or a list: a data-parallel mesh (``jax.sharding``), the batch split across
        devices and hosts, parameters replicated. ``batch_size`` must divide evenly over an
        explicit choice.
      data_on_device: keep the training set on the device, gather batches there and run chunks
        of steps in one ``lax.scan``. ``None`` chooses by backend: on for GPU/TPU, off on CPU
        (measured 4x slower there). Same results either way, to float tolerance.

    The history has per epoch: loss, accuracy, val_loss, val_accuracy (with validation),
    learning_rate, time_s (the whole epoch), examples_per_s (training only).
    Raises ``ShapeError``/``ConfigError`` on bad input before compiling, and ``TrainingError``
    (with ``.state`` and ``.history`` of the last good step) if the loss becomes NaN.
    """
    epochs = _check_positive_int(epochs, "epochs")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if verbose not in (0, 1, 2):
        raise ConfigError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    place = placement(devices, batch_size)
    if batch_size % place.size:
        raise ConfigError(
            f"batch_size {batch_size} does not divide over {place.size} devices; use a multiple of {place.size}"
        )
    x_arr = np.asarray(x)
    # Every input check runs before anything compiles, the model's own shapes by tracing only.
    if isinstance(model_or_state, TrainState):
        state = model_or_state
        input_shape, num_classes = state.input_shape, state.num_classes
    elif isinstance(model_or_state, nn.Module):
        if x_arr.ndim != 4:
            hint = "; add the channel axis with x[..., None]" if x_arr.ndim == 3 else ""
            raise ShapeError(f"x has shape {x_arr.shape}; the model takes a batch of images (N, H, W, C){hint}")
        state = None
        input_shape = tuple(x_arr.shape[1:])
        num_classes = output_classes(model_or_state, input_shape)
    else:
        raise ConfigError(f"fit takes a Flax module or a TrainState, got {type(model_or_state).__name__}")
    x_arr = _check_images(x_arr, input_shape, "x")
    y_arr = _check_labels(y, len(x_arr), num_classes, "y")
    if validation_data is not None:
        x_val = _check_images(validation_data[0], input_shape, "validation x")
        y_val = _check_labels(validation_data[1], len(x_val), num_classes, "validation y")
    elif validation_split:
        from jaxcnn.data import validation_split as split

        (x_arr, y_arr), (x_val, y_val) = split(x_arr, y_arr, validation_split)
    else:
        x_val = y_val = None
    if batch_size > len(x_arr):
        raise ConfigError(
            f"batch_size {batch_size} is larger than the {len(x_arr)} training examples; "
            f"use batch_size <= {len(x_arr)} or more data"
        )
    if state is None:
        state = create_train_state(model_or_state, input_shape, optimizer, learning_rate, seed)
    x_arr = np.ascontiguousarray(x_arr, dtype=np.float32)
    split = split_devices(batch_size, state) if devices == "auto" else ()
    if data_on_device is None:
        data_on_device = place.devices[0].platform != "cpu"
    if data_on_device:
        split = ()
    resident = _put((x_arr, y_arr), place.replicated) if data_on_device else None
    if x_val is not None:
        x_val = np.ascontiguousarray(x_val, dtype=np.float32)

    history = History(params={"epochs": epochs, "batch_size": batch_size, "samples": len(x_arr), "seed": seed})
    # The train step donates its state buffers; copy once so the caller's state stays usable.
    loop = Loop(place.put_state(jax.tree.map(jnp.copy, state)), history)
    callbacks = list(callbacks)
    for cb in callbacks:
        cb.on_train_begin(loop)
    for epoch in range(initial_epoch, epochs):
        t0 = time.perf_counter()
        for cb in callbacks:
            cb.on_epoch_begin(epoch, loop)
        order = epoch_order(len(x_arr), seed, epoch, shuffle)
        try:
            loop.state, logs = run_epoch(
                loop.state, x_arr, y_arr, order, batch_size, place,
                epoch=epoch, verbose=verbose, desc=f"Epoch {epoch + 1}/{epochs}", resident=resident,
                split=split,
            )
        except TrainingError as e:
            loop.state = e.state  # type: ignore[attr-defined]
            e.history = history  # type: ignore[attr-defined]
            raise
        if x_val is not None:
            val = _evaluate_arrays(loop.state, x_val, y_val, batch_size, place)
            logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
        logs["learning_rate"] = loop.learning_rate
        logs["time_s"] = time.perf_counter() - t0
        ordered = {k: logs[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "time_s", "examples_per_s", "train_time_s") if k in logs}
        history.append(epoch, ordered)
        if verbose:
            shown = " - ".join(f"{k}: {v:.4f}" for k, v in ordered.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
            print(f"Epoch {epoch + 1}/{epochs} - {ordered['time_s']:.1f}s - {shown} - lr: {ordered['learning_rate']:.4g}", flush=True)
        for cb in callbacks:
            cb.on_epoch_end(epoch, ordered, loop)
        if loop.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end(loop)
    return FitResult(loop.state, history)
