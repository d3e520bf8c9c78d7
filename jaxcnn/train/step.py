"""The step: one loss-and-gradient function, one random-number rule and one NaN guard, shared by
every execution strategy (:mod:`jaxcnn.train.strategies`).

* **Loss.** ``sum(loss(outputs, y) * w) + n * L2``, divided by the batch size (Keras's
  ``"sum_over_batch_size"``; ``w`` are sample weights, 1 by default; ``L2`` is every Keras-style
  term the layers sowed). A batch cut into parts computes each part's gradient of its own share,
  divided by the *whole* batch size, so the parts' gradients add up to the batch's.
* **Random numbers.** The dropout key of part ``j`` of step ``s`` is
  ``fold_in(fold_in(state.key, s), j)``; a batch that is not cut is part 0. How a batch is cut
  depends only on its size and the model (:func:`jaxcnn.train.strategies.split_parts`), never on
  the device count, so a run is the same on any machine. A batch cut into several parts draws
  other dropout masks than the same batch in one piece (``fit(devices=None)``).
* **NaN guard.** A step whose loss is not finite leaves the state as it was; the accumulator
  remembers the first such step, after which no step moves the weights, and ``fit`` stops with
  the weights of the last good step.

Metrics are summed over the batch (``loss_sum`` weighted by the sample weights, ``correct`` and
``weight`` not, as Keras's accuracy, ``count``; the state's metrics each as it asks), so that
batches and parts of any size add up.
"""

from __future__ import annotations

import collections.abc
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import ConfigError
from jaxcnn.train.state import TrainState

Array = jax.Array
Batch = dict[str, Array]


def rng_rule(key: Array, step: Array, part: Array | int) -> Array:
    """The dropout key of part ``part`` of step ``step``."""
    return jax.random.fold_in(jax.random.fold_in(key, step), part)


def regularization_loss(losses: Any) -> Array:
    """Sum of the Keras-style L2 terms the layers sowed into the ``losses`` collection."""
    leaves = jax.tree.leaves(losses)
    return sum(leaves, jnp.zeros((), jnp.float32)) if leaves else jnp.zeros((), jnp.float32)


def model_outputs(state: TrainState, params: Any, batch_stats: Any, x: Array, train: bool,
                  key: Array | None) -> tuple[Array, Array, Any]:
    """Run the model; return (outputs, L2 loss, new batch statistics)."""
    variables = {"params": params}
    mutable = ["losses"]
    if batch_stats:
        variables["batch_stats"] = batch_stats
        if train:
            mutable.append("batch_stats")
    rngs = {"dropout": key} if key is not None else None
    outputs, updates = state.apply_fn(variables, x, train=train, rngs=rngs, mutable=mutable)
    new_stats = updates.get("batch_stats", batch_stats) if train else batch_stats
    return outputs.astype(jnp.float32), regularization_loss(updates.get("losses", {})), new_stats


def class_labels(y: Array) -> Array:
    """Integer classes: the labels themselves, or the argmax of distributions (B, C)."""
    return y if y.ndim == 1 else jnp.argmax(y, -1).astype(jnp.int32)


def zero_metrics(state: TrainState) -> dict[str, Any]:
    """The accumulator of an epoch: sums of the batch metrics, and the first bad step."""
    # NumPy, placed by the caller: as JAX arrays each zero would be a program of its own to
    # compile (or load) at the start. Separate buffers: a metric may share one zero array between
    # fields, and each leaf is donated.
    zero = lambda: np.zeros((), np.float32)  # noqa: E731
    return {
        "loss_sum": zero(), "correct": zero(), "weight": zero(), "count": zero(),
        "extra": jax.tree.map(lambda a: np.array(a, copy=True), tuple(m.init(state.num_classes) for m in state.metrics)),
        "bad_step": np.full((), -1, np.int32),
    }


def batch_metrics(state: TrainState, outputs: Array, batch: Batch, loss_sum: Array, mask: Array | None = None) -> dict[str, Any]:
    """A batch's summed metrics; ``mask`` (B,) zeroes padding rows."""
    y = batch["y"]
    real = jnp.ones(y.shape[:1], jnp.float32) if mask is None else mask  # Keras's metrics: unweighted
    w = real * batch["w"] if "w" in batch else real  # its weighted_metrics (and the loss): weighted
    labels = class_labels(y)
    hit = (jnp.argmax(outputs, -1) == labels).astype(jnp.float32)
    return {
        "loss_sum": loss_sum,
        "correct": jnp.sum(hit * real),
        "weight": jnp.sum(real),
        "count": jnp.asarray(y.shape[0], jnp.float32) if mask is None else jnp.sum(mask),
        "extra": tuple(m.update(m.init(state.num_classes), outputs, labels, w if getattr(m, "weighted", False) else real)
                       for m in state.metrics),
    }


def part_grads(state: TrainState, params: Any, batch: Batch, part: Array | int, total: Array | int) -> tuple[Any, dict[str, Any], Any]:
    """Gradients of one part's share of the batch loss (see the module docstring), its summed
    metrics, and the batch statistics after it. ``batch`` = {"x": (n, H, W, C), "y": (n,) or
    (n, C), optional "w": (n,)}; ``total`` is the whole batch's size."""
    x, y = batch["x"], batch["y"]
    key = rng_rule(state.key, state.step, part)
    w = batch.get("w")

    def objective(p):
        outputs, l2, new_stats = model_outputs(state, p, state.batch_stats, x, True, key)
        per_example = state.loss(outputs, y)
        if w is not None:
            per_example = per_example * w
        loss_sum = jnp.sum(per_example) + x.shape[0] * l2
        return loss_sum / total, (loss_sum, outputs, new_stats)

    (_, (loss_sum, outputs, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, batch_metrics(state, outputs, batch, loss_sum), new_stats


def guarded_update(state: TrainState, grads: Any, batch_stats: Any, ok: Array) -> TrainState:
    """The optimizer step where ``ok``; the state unchanged otherwise (the NaN guard)."""
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)


def accumulate(state: TrainState, acc: dict[str, Any], metrics: dict[str, Any], step: Array) -> dict[str, Any]:
    """Add a step's metrics to the accumulator (a non-finite loss is not added, but its step is
    remembered in ``bad_step``)."""
    bad = ~metrics["finite"]
    return {
        "loss_sum": acc["loss_sum"] + jnp.where(bad, 0.0, metrics["loss_sum"]),
        "correct": acc["correct"] + metrics["correct"],
        "weight": acc["weight"] + metrics["weight"],
        "count": acc["count"] + metrics["count"],
        "extra": tuple(m.merge(a, b) for m, a, b in zip(state.metrics, acc["extra"], metrics["extra"])),
        "bad_step": jnp.where((acc["bad_step"] < 0) & bad, step.astype(jnp.int32), acc["bad_step"]),
    }


def sum_metrics(state: TrainState, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of a batch from those of its parts."""
    total = {k: sum(p[k] for p in parts) for k in ("loss_sum", "correct", "weight", "count")}
    extra = parts[0]["extra"]
    for p in parts[1:]:
        extra = tuple(m.merge(a, b) for m, a, b in zip(state.metrics, extra, p["extra"]))
    return {**total, "extra": extra}


def _check_batch(batch: Any, step: str) -> None:
    """Refuse (while tracing, so at no cost per step) a batch that is not {"x": array, "y": array}."""
    if not isinstance(batch, collections.abc.Mapping) or "x" not in batch or "y" not in batch:
        mapping = isinstance(batch, collections.abc.Mapping)
        got = f"a {type(batch).__name__} with keys {sorted(map(str, batch))}" if mapping else f"a {type(batch).__name__}"
        raise ConfigError(f'{step} takes batch = {{"x": images (B, H, W, C), "y": labels (B,)}}, got {got}; '
                          'pass {"x": x, "y": y}')
    for key in ("x", "y", "w", "mask"):
        value = batch.get(key, 0.0)
        if value is None and key in ("w", "mask"):
            raise ConfigError(f'{step}: batch["{key}"] is None; leave the key out for equal weights')
        if not hasattr(value, "shape") and not isinstance(value, (int, float)):
            raise ConfigError(f'{step}: batch["{key}"] is a {type(value).__name__}; give arrays, e.g. np.asarray(...)')
    x = batch["x"]
    if not getattr(x, "shape", ()):
        raise ConfigError(f'{step}: batch["x"] is one number; give a batch of images (B, H, W, C)')
    for key in ("y", "w", "mask"):
        value = batch.get(key)
        if key != "y" and (value is None or not getattr(value, "shape", ())):
            continue  # no weights, or one number for all
        shape = tuple(getattr(value, "shape", ()))
        if not shape or shape[0] != x.shape[0]:
            raise ConfigError(f'{step}: batch["{key}"] has shape {shape} for {x.shape[0]} images; give one per image, '
                              f'({x.shape[0]},{"" if key != "y" else " ..."})')


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer step on ``batch`` = {"x": (B, H, W, C) float, "y": (B,) int or (B, C)
    float, optional "w": (B,) sample weights}, the batch in one piece (part 0).

    Returns the new state and this batch's metrics, summed over the batch: ``loss_sum``,
    ``correct``, ``weight``, ``count``, ``extra`` (the state's metrics) and ``finite`` (whether
    the loss was finite). A non-finite loss leaves the state unchanged.
    """
    _check_batch(batch, "train_step")
    grads, metrics, new_stats = part_grads(state, state.params, batch, 0, batch["x"].shape[0])
    finite = jnp.isfinite(metrics["loss_sum"])
    return guarded_update(state, grads, new_stats, finite), {**metrics, "finite": finite}


def train_and_accumulate(state: TrainState, acc: dict[str, Any], batch: Batch) -> tuple[TrainState, dict[str, Any]]:
    """:func:`train_step` plus the accumulator; after a bad step no step moves the weights."""
    step = state.step
    new_state, metrics = train_step(state, batch)
    keep = acc["bad_step"] < 0
    new_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
    return new_state, accumulate(state, acc, metrics, step)


def combine_and_update(state: TrainState, acc: dict[str, Any], grads: list[Any], metrics: list[dict[str, Any]]) -> tuple[TrainState, dict[str, Any]]:
    """Sum the parts' gradients and metrics (all on this device now) and take the guarded step."""
    g = jax.tree.map(lambda *parts: sum(parts), *grads)
    m = sum_metrics(state, metrics)
    finite = jnp.isfinite(m["loss_sum"])
    new_state = guarded_update(state, g, state.batch_stats, finite & (acc["bad_step"] < 0))
    return new_state, accumulate(state, acc, {**m, "finite": finite}, state.step)


def eval_step(state: TrainState, batch: Batch) -> dict[str, Any]:
    """Metrics of ``batch`` in evaluation mode (dropout off, moving batch statistics).

    ``batch["mask"]`` (B,) of 0/1 marks padding rows, which count for nothing. The loss includes
    the L2 terms, as Keras's ``val_loss`` does.
    """
    _check_batch(batch, "eval_step")
    x, y = batch["x"], batch["y"]
    mask = batch.get("mask", jnp.ones(y.shape[:1], jnp.float32))
    outputs, l2, _ = model_outputs(state, state.params, state.batch_stats, x, False, None)
    per_example = state.loss(outputs, y) * batch.get("w", 1.0)
    loss_sum = jnp.sum((per_example + l2) * mask)
    return batch_metrics(state, outputs, batch, loss_sum, mask)


def eval_and_accumulate(state: TrainState, acc: dict[str, Any], batch: Batch) -> dict[str, Any]:
    m = eval_step(state, batch)
    return {**sum_metrics(state, [acc, m]), "bad_step": acc["bad_step"]}


def predict_outputs(state: TrainState, x: Array) -> Array:
    """The model's outputs in evaluation mode."""
    return model_outputs(state, state.params, state.batch_stats, x, False, None)[0]


def training_outputs(state: TrainState, x: Array) -> Array:
    """The model's outputs in training mode (dropout on, batch statistics), nothing updated."""
    return model_outputs(state, state.params, state.batch_stats, x, True, state.key)[0]
