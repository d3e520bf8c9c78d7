"""``fit``, ``evaluate`` and ``predict``: Keras's loop on top of the strategies.

``fit`` reads top to bottom like the Flax examples' loop: check the inputs (before anything
compiles), build or take the state, choose a strategy, restore a checkpoint when resuming, then
epochs of shuffled batches with validation, callbacks, a progress bar and a :class:`History`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import checks, losses, optim
from jaxcnn.callbacks import HOOK_NAMES, Callback, Hooks, _auto_mode
from jaxcnn.errors import ConfigError, ShapeError, TrainingError
from jaxcnn.metrics import FIT_TAIL
from jaxcnn.train import step as steps
from jaxcnn.train.model import adapt
from jaxcnn.train import state as state_mod
from jaxcnn.train.state import TrainState, output_classes, start_state
from jaxcnn.train.strategies import (Data, Mesh, Parts, StatsMesh, Strategy, choose_strategy, jit_predict, max_parts,
                                     predict_batches, split_parts)


@dataclass
class History:
    """Per-epoch logs, like Keras's ``History``: ``history["val_loss"][i]`` is epoch ``epoch[i]``."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        """Record ``epoch``'s logs. The lists stay aligned with ``epoch``: a key missing from an
        epoch (validation skipped by ``validation_freq``) or first logged late is NaN there."""
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, [float("nan")] * (len(self.epoch) - 1)).append(float(v))
        for k, values in self.history.items():
            if len(values) < len(self.epoch):
                values.append(float("nan"))

    def _add_late(self, logs: dict[str, float]) -> None:
        """Keys that callbacks added to the last epoch's logs in ``on_epoch_end`` (Keras's History
        runs after the other callbacks, so it records them)."""
        for k, v in logs.items():
            try:
                value = float(v)
            except (TypeError, ValueError):  # not a number (None, a string): not a history entry, as before
                continue
            self.history.setdefault(k, [float("nan")] * len(self.epoch))[-1] = value

    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def __iter__(self) -> Iterator[str]:
        return iter(self.history)

    def keys(self) -> Any:
        """The logged names, as ``history.history.keys()``: ``dict(history)`` is that dict."""
        return self.history.keys()

    def values(self) -> Any:
        return self.history.values()

    def items(self) -> Any:
        return self.history.items()

    def best_epoch(self, monitor: str = "val_loss", mode: str = "auto") -> int:
        """The epoch (0-based) with the best ``monitor`` value."""
        values = self.history.get(monitor)
        if not values:
            raise ConfigError(f"history has no {monitor!r}; it has {', '.join(self.history)}")
        mode = _auto_mode(monitor, mode, "History.best_epoch")
        if np.all(np.isnan(values)):
            raise ConfigError(f"history's {monitor!r} has no value (NaN in every epoch)")
        i = int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))
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


def state_of(obj: Any, what: str) -> TrainState:
    """The trained state in ``obj``: a :class:`TrainState`, or what ``fit`` returned (a
    :class:`FitResult`); a module or anything else is refused in one line, saying what to pass."""
    if isinstance(obj, FitResult):
        return obj.state
    if isinstance(obj, TrainState):
        return obj
    kind = "a module, which holds no weights" if hasattr(obj, "__call__") and type(obj).__module__.split(".")[0] != "builtins" else f"a {type(obj).__name__}"
    raise ConfigError(
        f"{what} takes the trained state that fit returns, not {kind}: state, history = jaxcnn.fit(model, x, y, ...), then pass "
        "state (or jaxcnn.checkpoint.load_state(directory), a saved model's)"
    )


class Loop:
    """What callbacks see: the running ``state``, the ``history`` so far, ``stop_training``,
    ``learning_rate`` (settable when the optimizer's rate is a number; also as Keras's
    ``optimizer.learning_rate``), and Keras's ``get_weights()`` / ``set_weights(weights)``."""

    def __init__(self, state: TrainState, history: History):
        self.state = state
        self.history = history
        self.stop_training = False
        self.epoch_first_step = 0  # the global step at which the running epoch began

    def get_weights(self) -> list[np.ndarray]:
        """Keras's ``model.get_weights()``: host copies of the model's parameters, then its
        BatchNorm statistics, in flax's tree order (not Keras's layer order), for a callback
        that keeps them and puts them back with :meth:`set_weights`."""
        return [np.array(a) for a in jax.tree.leaves(jax.device_get((self.state.params, self.state.batch_stats)))]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Keras's ``model.set_weights(weights)``: the list :meth:`get_weights` gives, each array
        put where the running one is (the optimizer's state and the step are kept, as in Keras)."""
        leaves, treedef = jax.tree.flatten((self.state.params, self.state.batch_stats))
        weights = list(weights)
        if len(weights) != len(leaves) or any(np.shape(w) != np.shape(a) for w, a in zip(weights, leaves)):
            got = [tuple(np.shape(w)) for w in weights]
            raise ShapeError(f"set_weights takes the list get_weights gives, {len(leaves)} arrays of shapes "
                             f"{[tuple(np.shape(a)) for a in leaves]}; got {len(weights)} of shapes {got}")
        placed = [jax.device_put(np.asarray(w, a.dtype), a.sharding) if isinstance(a, jax.Array) else np.asarray(w, a.dtype)
                  for w, a in zip(weights, leaves)]
        params, batch_stats = jax.tree.unflatten(treedef, placed)
        self.state = self.state.replace(params=params, batch_stats=batch_stats)

    @property
    def optimizer(self) -> Loop:
        """Keras's ``self.model.optimizer``, as far as callbacks use it: its ``learning_rate``
        (read and set) is the loop's."""
        return self

    @property
    def learning_rate(self) -> float:
        """The optimizer's rate (NaN when an optax optimizer does not tell it), a float that
        also has Keras's ``assign(value)`` and ``numpy()``."""
        lr = optim.get_learning_rate(self.state.opt_state)
        return _Rate(float("nan") if lr is None else float(lr), self)

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.check_learning_rate_settable()
        self.state = self.state.replace(opt_state=optim.set_learning_rate(self.state.opt_state, value))

    def check_learning_rate_settable(self) -> None:
        """Raise a clear :class:`ConfigError` when a callback cannot set the learning rate."""
        opt_state = self.state.opt_state
        if getattr(opt_state, "hyperparams", None) is None or "learning_rate" not in opt_state.hyperparams:
            raise ConfigError(
                "the optimizer's learning rate cannot be set: it is not an optax.inject_hyperparams optimizer. "
                "Pass optimizer by name (e.g. 'rmsprop'), or wrap yours: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)"
            )
        if "learning_rate" in getattr(opt_state, "hyperparams_states", {}):
            raise ConfigError(
                "the optimizer's learning rate follows a schedule, which would override a rate set by a callback "
                "(Keras raises here too); use a constant learning rate with this callback, or drop the callback"
            )


class _Rate(float):
    """The learning rate a callback reads, a float, with what Keras callbacks call on their
    optimizer's rate variable: ``assign(value)`` (sets the loop's rate) and ``numpy()``."""

    def __new__(cls, value: float, loop: Loop) -> _Rate:
        rate = super().__new__(cls, value)
        rate._loop = loop
        return rate

    def assign(self, value: Any) -> _Rate:
        self._loop.learning_rate = float(value)
        return self._loop.learning_rate

    def numpy(self) -> float:
        return float(self)

    def __reduce__(self) -> tuple[Any, ...]:  # copied or pickled as the number alone, not the loop
        return float, (float(self),)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True, salt: int = 0) -> np.ndarray:
    """The order of the ``n`` training examples in ``epoch``: a function of (seed, epoch, salt)
    only, so a resumed run sees the same batches as one never interrupted. ``fit`` salts it with
    the step of a trained state it continues from epoch 0 (``fit`` called in a loop: a new order
    each call, as Keras's)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch] if not salt else [seed, epoch, salt]).permutation(n)


# ----------------------------------------------------------------------------------------------
# Compile counting: a listener registered on first use, not at import.

_COMPILES = [0, False]


def _count_compiles(event: str, duration: float, **kwargs: Any) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


def compile_count() -> int:
    """How many XLA programs this process has compiled, or loaded from the persistent
    compilation cache (JAX records that under the same event), since the first call of this
    function: a second epoch of the same shapes must not add any (tests use it to prove there is
    no recompilation, also when an earlier run left the program in the cache)."""
    if not _COMPILES[1]:
        jax.monitoring.register_event_duration_secs_listener(_count_compiles)
        _COMPILES[1] = True
    return int(_COMPILES[0])


# ----------------------------------------------------------------------------------------------
# Logs


def metric_logs(state: TrainState, acc: dict[str, Any], prefix: str = "", arrays: bool = False) -> dict[str, Any]:
    """``loss``, ``accuracy`` and the state's metrics from a (host) accumulator; a metric whose
    result is an array (the confusion matrix) only with ``arrays``."""
    count = max(float(acc["count"]), 1.0)
    weight = float(acc["weight"])
    logs: dict[str, Any] = {f"{prefix}loss": float(acc["loss_sum"]) / count,
                            f"{prefix}accuracy": float(acc["correct"]) / weight if weight > 0 else 0.0}
    for m, s in zip(state.metrics, acc["extra"]):
        for k, v in m.result(jax.device_get(s)).items():
            if np.ndim(v) == 0:
                logs[f"{prefix}{k}"] = float(v)
            elif arrays:
                logs[f"{prefix}{k}"] = np.asarray(v)
    return logs


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _progress(total: int, desc: str, verbose: int):
    if verbose != 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)


def _postfix(bar: Any, m: dict[str, Any], t0: float) -> None:
    seen = max(float(m["count"]), 1.0)
    bar.set_postfix({"loss": f"{m['loss_sum'] / seen:.4f}", "accuracy": f"{m['correct'] / max(float(m['weight']), 1e-12):.4f}",
                     "examples/s": f"{seen / (time.perf_counter() - t0):,.0f}"}, refresh=False)


def _non_finite(epoch: int, step: int) -> str:
    return (f"the loss became NaN or infinite at epoch {epoch + 1}, step {step + 1} (global step); "
            "training stopped with the weights of the last good step. Lower the learning rate, "
            "check the inputs for NaN, or add weight decay")


def _callback_list(callbacks: Any) -> list[Any]:
    """``callbacks`` as a list: one callback (a :class:`Callback`, or any object with a hook of
    jaxcnn's or Keras's, ``on_train_batch_end`` alone will do) or a list or tuple of them. A
    class instead of an instance, a name, None or an object without hooks is refused."""
    if callbacks is None:
        return []
    one = isinstance(callbacks, Callback) or (not isinstance(callbacks, type) and any(hasattr(callbacks, n) for n in HOOK_NAMES))
    items = [callbacks] if one else callbacks
    if not one and (isinstance(items, (str, bytes, dict, type)) or not isinstance(items, Iterable)):
        items = [items]  # refused below, as an item
    items = list(items)
    for cb in items:
        if isinstance(cb, type):
            raise ConfigError(f"callbacks holds the class {cb.__name__}, not a callback; pass an instance: {cb.__name__}(...)")
        if not any(hasattr(cb, n) for n in HOOK_NAMES):
            raise ConfigError(f"callbacks holds {cb!r}, which has no hooks (on_epoch_end, on_train_batch_end, ...); pass "
                              "callback objects, e.g. jaxcnn.callbacks.EarlyStopping(patience=3)")
    return items


def run_epoch(state: TrainState, strategy: Strategy, data: Data, order: np.ndarray, batch_size: int, *,
              epoch: int = 0, verbose: int = 0, desc: str = "", loop: Loop | None = None,
              callbacks: Sequence[Callback | Hooks] = (), stop_on_nan: bool = True) -> tuple[TrainState, dict[str, float]]:
    """Train one epoch over ``data`` in ``order``, in batches (the last one partial), with
    ``strategy``. Returns the new state and the epoch's logs (loss, accuracy, metrics,
    examples_per_s, train_time_s). A non-finite loss raises :class:`TrainingError` holding the
    state of the last good step (with ``stop_on_nan``), or gives a NaN loss in the logs.
    ``callbacks`` may be callbacks or their :class:`Hooks` (fit's, adapted once)."""
    units = strategy.units(order, batch_size)
    total_steps = math.ceil(len(order) / batch_size)
    bar = _progress(total_steps, desc, verbose)
    hooks = [cb if isinstance(cb, Hooks) else Hooks(cb) for cb in callbacks]
    per_batch = [h.on_train_batch_end for h in hooks if h.on_train_batch_end is not None]
    before_batch = [h.on_train_batch_begin for h in hooks if h.on_train_batch_begin is not None]
    acc = strategy.place.put_state(steps.zero_metrics(state))
    t0, done = time.perf_counter(), 0
    log_every = 1 if per_batch else max(1, min(25, len(units) // 20))
    if (per_batch or before_batch) and loop is not None:
        loop.epoch_first_step = int(state.step)  # Keras-style batch hooks count batches from 0 each epoch
    for i, unit in enumerate(units):
        if before_batch and loop is not None:
            loop.state = state
            for on_batch_begin in before_batch:
                on_batch_begin(int(state.step), {}, loop)
            state = loop.state  # a hook may have set the learning rate
        state, acc, n = strategy.train(state, acc, unit, data)
        done += n
        if (i + 1) % log_every and i + 1 < len(units):
            continue
        m = jax.device_get(acc)
        if bar is not None and i + 1 < len(units):
            _postfix(bar, m, t0)
            bar.update(done - bar.n)
        if per_batch and loop is not None:
            loop.state = state
            for on_batch_end in per_batch:
                on_batch_end(int(state.step) - 1, metric_logs(state, m), loop)
            if loop.stop_training:  # Keras: a batch hook's stop ends the epoch after this batch
                break
        if m["bad_step"] >= 0:
            break
    m = jax.device_get(acc)
    elapsed = time.perf_counter() - t0
    if bar is not None:  # it ends on the epoch's own figures, as Keras's does
        _postfix(bar, m, t0)
        bar.update(total_steps - bar.n)
        bar.close()
    if m["bad_step"] >= 0 and stop_on_nan:
        raise TrainingError(_non_finite(epoch, int(m["bad_step"])), state=state)
    logs = metric_logs(state, m)
    if m["bad_step"] >= 0:
        logs["loss"] = float("nan")
    return state, {**logs, "examples_per_s": float(m["count"]) / elapsed, "train_time_s": elapsed}


# ----------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Inputs:
    train: Data
    val: Data | None
    input_shape: tuple[int, ...]
    num_classes: int


def _sample_weights(y: np.ndarray, num_classes: int, class_weight: dict[int, float] | None,
                    sample_weight: Any, what: str) -> np.ndarray | None:
    """Keras's weights: ``sample_weight`` (N,) times ``class_weight[class]``, or None."""
    w = None
    name = f"{what} sample_weight".strip()
    if sample_weight is not None:
        w = np.asarray(sample_weight, np.float32)
        if w.shape == (len(y), 1):  # a column, as Keras takes it (and as labels (N, 1) are taken)
            w = w.reshape(-1)
        if w.shape != (len(y),):
            raise ShapeError(f"{name} has shape {w.shape}; it needs one weight per example, ({len(y)},)")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ShapeError(f"{name} holds a negative or non-finite weight; weights must be finite and >= 0")
    if class_weight is not None:
        if not isinstance(class_weight, dict):
            raise ConfigError(f"class_weight must be a dict {{class: weight}}, got {type(class_weight).__name__}")
        table = np.ones(num_classes, np.float32)
        for c, v in class_weight.items():
            if not isinstance(c, (int, np.integer)) or not 0 <= int(c) < num_classes:
                raise ConfigError(f"class_weight has class {c!r}; classes are 0..{num_classes - 1}{checks.int_key_hint(c)}")
            try:
                table[int(c)] = float(v)
            except (TypeError, ValueError):
                table[int(c)] = np.nan
            if not np.isfinite(table[int(c)]) or table[int(c)] < 0:
                raise ConfigError(f"class_weight[{c!r}] is {v!r}; class weights must be finite numbers >= 0, as sample weights")
        labels = y if y.ndim == 1 else y.argmax(-1)
        cw = table[labels]
        w = cw if w is None else w * cw
    return w


def _split_validation(x, y, w, validation_split, validation_data, input_shape, num_classes):
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ConfigError("validation_data must be (x_val, y_val) or (x_val, y_val, sample_weight_val)")
        xv = checks.check_images(validation_data[0], input_shape, "validation x")
        yv = checks.check_labels(validation_data[1], len(xv), num_classes, "validation y")
        wv = _sample_weights(yv, num_classes, None, validation_data[2] if len(validation_data) == 3 else None, "validation")
        return Data(x, y, w), Data(np.ascontiguousarray(xv, np.float32), yv, wv)
    if validation_split:
        from jaxcnn.data import validation_split as split

        (x, y), (xv, yv) = split(x, y, validation_split)
        wv = None if w is None else w[len(x):]
        w = None if w is None else w[: len(x)]
        return Data(x, y, w), Data(xv, yv, wv)
    return Data(x, y, w), None


def _check_inputs(model_or_state: Any, x: Any, y: Any, *, validation_split: float, validation_data: Any,
                  class_weight: Any, sample_weight: Any) -> _Inputs:
    """Every input check, before anything compiles (the model's own shapes by tracing only)."""
    if class_weight is not None and sample_weight is not None:  # Keras's data adapter refuses it too
        raise ConfigError("class_weight and sample_weight cannot both be given (as in Keras); fold the class weights "
                          "into the sample weights: sample_weight * np.array([class_weight.get(c, 1.0) for c in y])")
    tensor = checks.is_tensor(x)  # what a channels-first message suggests
    x_arr = checks.as_array(x, "x")  # a ragged list: ShapeError, not NumPy's ValueError
    if isinstance(model_or_state, TrainState):
        input_shape, num_classes = model_or_state.input_shape, model_or_state.num_classes
    else:
        if x_arr.ndim != 4:
            hint = "; add the channel axis with x[..., None]" if x_arr.ndim == 3 else ""
            raise ShapeError(f"x has shape {x_arr.shape}; the model takes a batch of images (N, H, W, C){hint}")
        input_shape = tuple(checks.check_image_shape(x_arr, (), "x", tensor).shape[1:])  # channels-first, dtype: before tracing
        num_classes = output_classes(adapt(model_or_state), input_shape)
    x_arr = np.ascontiguousarray(checks.check_images(x_arr, input_shape, "x", tensor), dtype=np.float32)
    y_arr = checks.check_labels(y, len(x_arr), num_classes, "y")
    w = _sample_weights(y_arr, num_classes, None, sample_weight, "")
    train, val = _split_validation(x_arr, y_arr, w, validation_split, validation_data, input_shape, num_classes)
    if class_weight is not None:  # Keras weighs the training data by class, never the validation data
        train = train._replace(w=_sample_weights(train.y, num_classes, class_weight, train.w, ""))
    return _Inputs(train, val, input_shape, num_classes)


def _check_steps(name: str, steps: Any, n: int, batch_size: int, fewer: str) -> None:
    """Keras's ``steps_per_epoch`` / ``validation_steps``: accepted where they name the whole
    pass over the arrays that fit makes anyway; another count refused with the slice for it."""
    if steps is None:
        return
    whole = -(-n // batch_size)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"{name} must be None or a positive integer, got {steps!r}")
    if int(steps) != whole:
        fix = (f"or give fewer examples: {fewer.format(n=int(steps) * batch_size)}" if steps < whole
               else "the arrays are not repeated within an epoch")
        raise ConfigError(f"{name}={steps}: fit takes arrays and passes over all of them, {n} examples in batches of "
                          f"{batch_size}, {_plural(whole, 'step')}; drop {name}, {fix}")


def _fewer_with_split(split: float) -> str:
    """The slice hint of :func:`_check_steps` for ``{n}`` training examples, when
    ``validation_split`` takes its share of the slice too (Keras's ``floor(m * (1 - split))``)."""
    class _Slice(str):
        def format(self, n: int) -> str:  # type: ignore[override]
            m = int(n / (1.0 - split)) + 2
            while m > 0 and math.floor(m * (1.0 - split)) > n:
                m -= 1
            return f"x[:{m}], y[:{m}] (validation_split={split:g} keeps {math.floor(m * (1.0 - split))} of them to train on)"

    return _Slice()


def _resolve_loss(state: TrainState, loss: Any, from_logits: bool | None, label_smoothing: float, x: np.ndarray,
                  y: np.ndarray, outputs: np.ndarray | None = None) -> TrainState:
    """Fix ``from_logits`` from the model's outputs on a few training images (``outputs``, from
    the program that built the state, or one small forward pass): a softmax output is taken as
    probabilities, as Keras's default loss does."""
    resolved = losses.get_loss(loss if loss is not None else state.loss, from_logits=from_logits, label_smoothing=label_smoothing)
    losses.check_custom(resolved, state.num_classes, y[:2])  # also for a state resolved before (create_train_state)
    if isinstance(resolved, losses.CategoricalCrossentropy) and y.ndim == 2:
        sums = y.sum(-1)
        off = np.flatnonzero(np.abs(sums - 1.0) > 1e-2)
        if off.size:  # Keras takes them too, and trains a softmax toward several classes at once
            warnings.warn(
                f"y's rows are meant to be one-hot or class probabilities, but {off.size} of {len(y)} do not sum to 1 "
                f"(row {int(off[0])} sums to {float(sums[off[0]]):g}); categorical cross-entropy trains the outputs as one "
                "softmax. For multi-label targets pass a loss of your own, e.g. loss=lambda outputs, labels: "
                "optax.sigmoid_binary_cross_entropy(outputs, labels).mean(-1)", UserWarning, stacklevel=3)
    if loss is None and from_logits is None and label_smoothing == 0.0 and state.loss.from_logits is not None:
        return state  # a state that was resolved before
    if resolved.from_logits is None:  # decided as create_train_state, evaluate and predict decide it
        return state_mod.with_outputs_decided(state.replace(loss=resolved), x, outputs, check_training=True)
    if outputs is None:
        outputs = jit_predict(state, x[: state_mod.SAMPLE])
    probs = losses.looks_like_probabilities(outputs)
    if probs:
        state_mod.check_probabilities_in_training(state, np.asarray(x[: state_mod.SAMPLE], np.float32))
    out = np.asarray(outputs, np.float64)
    if isinstance(resolved, losses.CategoricalCrossentropy) and bool(resolved.from_logits) == probs:
        if resolved.from_logits is False and bool(np.all(out >= 0)) and np.all(out.sum(-1) > 0):
            return state.replace(loss=resolved)  # non-negative: divided by their sums, as Keras's loss does
        what = "probabilities (a softmax output)" if probs else "logits (not probabilities)"
        fix = "from_logits=False, or drop the softmax" if probs else "from_logits=True, or end the model with a softmax"
        raise ConfigError(f"the model's outputs are {what} but the loss has from_logits={resolved.from_logits}; use {fix}")
    return state.replace(loss=resolved)


#: A copy of a state in one program (eagerly, each leaf's shape would compile one of its own).
_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


# ----------------------------------------------------------------------------------------------
# Checkpoints and resume


def _fingerprint(inputs: _Inputs, state: TrainState, batch_size: int, seed: int, shuffle: bool) -> dict[str, Any]:
    """What must not change when a run is resumed: the data (a hash of it) and the settings."""
    # the weights apart from the data (so a changed class_weight is named), and only when some
    # weight is not 1 (class_weight={} or all-ones weights train as none): a checkpoint written
    # without weights resumes as before
    weighed = any(d is not None and d.w is not None and not np.all(d.w == 1) for d in (inputs.train, inputs.val))
    loss = state.loss
    return {"data": _data_hash(inputs, weights=False), **({"weights": _data_hash(inputs, weights=True, data=False)} if weighed else {}),
            "batch_size": batch_size, "seed": seed, "shuffle": shuffle, "loss": type(loss).__name__,
            "optimizer": state.optimizer_spec,
            # compared only with checkpoints that record them (version 2, 2026-12-05): older ones resume as before
            "version": 2, "label_smoothing": float(getattr(loss, "label_smoothing", 0.0) or 0.0),
            "loss_function": _qualname(loss.fn) if isinstance(loss, losses.CustomLoss) else None,
            "optax": _optax_settings(state.tx) if state.optimizer_spec is None else None}


#: Keys of the fingerprint compared only when the checkpoint has them (written from version 2 on).
_V2_KEYS = ("label_smoothing", "loss_function", "optax")


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _optax_settings(tx: Any) -> str:
    """The numbers, strings and function names an optax transformation closes over (its learning
    rate, betas, schedule and the chain's parts), found through its functions' closures: what
    tells optax.adam(1e-3) from optax.adam(0.5) when nothing else records it."""
    found: list[str] = []

    def walk(obj: Any, level: int) -> None:
        if level > 12 or len(found) > 500:
            return
        if obj is None or isinstance(obj, str):
            found.append(repr(obj))
        elif isinstance(obj, (bool, int, float, np.number, np.bool_)):
            # as float32 numbers: optax.sgd(1) is optax.sgd(1.0), nesterov=1 is True, and
            # np.float32(1e-3) is 1e-3 (the optimizer computes in float32 either way)
            with np.errstate(over="ignore"):
                found.append(repr(float(np.float32(obj))))
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                walk(item, level + 1)
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                found.append(str(k))
                walk(obj[k], level + 1)
        elif isinstance(obj, (np.ndarray, jax.Array)) and np.size(obj) <= 64:
            found.append(repr(np.asarray(obj).tolist()))
        elif callable(obj) and not isinstance(obj, type):
            fn = getattr(obj, "__wrapped__", obj)
            found.append(getattr(fn, "__qualname__", type(fn).__name__))
            for cell in getattr(fn, "__closure__", None) or ():
                try:
                    walk(cell.cell_contents, level + 1)
                except ValueError:  # an empty cell
                    pass
            if isinstance(obj, functools.partial):
                walk(obj.args, level + 1)
                walk(obj.keywords, level + 1)

    for part in (getattr(tx, "init", None), getattr(tx, "update", None)):
        walk(part, 0)
    return hashlib.blake2b(" ".join(found).encode(), digest_size=12).hexdigest()


def _data_hash(inputs: _Inputs, *, weights: bool, data: bool = True) -> str:
    """A hash of the training and validation images and labels (``data``) and weights (``weights``);
    both together is how checkpoints written before 2026-12-05 hashed weighed data."""
    h = hashlib.blake2b(digest_size=16)
    for d in (inputs.train, inputs.val):
        for a in (d.x, d.y, d.w) if d is not None else ():
            if a is not None and (weights if a is d.w else data):
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _open_checkpoints(checkpoint_dir: Any, resume: bool, monitor: str) -> Any:
    from jaxcnn.checkpoint import TrainCheckpoints

    ckpts = TrainCheckpoints(checkpoint_dir, monitor=monitor, mode=_auto_mode(monitor, "auto", "checkpoint"), asynchronous=True)
    if ckpts.latest_epoch is not None and not resume:
        raise ConfigError(
            f"{checkpoint_dir} already holds checkpoints; pass resume=True to continue that run, "
            "or choose another checkpoint_dir so that nothing is overwritten"
        )
    return ckpts


def _strategy_meta(strategy: Strategy, batch_size: int, state: TrainState) -> dict[str, Any]:
    """What of the strategy decides a run's numbers: the parts a batch is cut into (not the
    devices they are dealt to; one part is the whole batch, as on one device), or a mesh's size."""
    if isinstance(strategy, Parts):
        parts = split_parts(batch_size, strategy.part_size, max_parts(state))
        return {"name": "parts", "parts": parts} if parts > 1 else {"name": "single"}
    if isinstance(strategy, (StatsMesh, Mesh)):
        return {"name": strategy.name, "devices": strategy.device_count}
    return {"name": strategy.name}


def _say_strategy(meta: dict[str, Any]) -> str:
    if meta.get("name") == "parts":
        return f"batches cut into {meta.get('parts')} parts (the parts strategy)"
    if "devices" in meta:
        return f"the {meta.get('name')} strategy on {_plural(int(meta.get('devices') or 1), 'device')}"
    return f"the {meta.get('name')} strategy" if meta.get("name") != "single" else "whole batches on one device (the single strategy)"


def _restore(ckpts: Any, state: TrainState, fingerprint: dict[str, Any], hooks: Sequence[Hooks],
             strategy: Strategy, batch_size: int, legacy: Callable[[], str] | None = None) -> tuple[Any, list[tuple[Hooks, Any]]]:
    """The checkpoint to resume from (None: none) and each callback paired with its saved state.
    ``legacy``: the data hash as checkpoints written before the weights had their own key made it."""
    if ckpts is None or ckpts.latest_epoch is None:
        return None, []
    restored = ckpts.restore(state)
    saved = restored.meta.get("fit")
    if saved is not None:
        if "weights" not in saved and "weights" in fingerprint and legacy is not None and saved.get("data") == legacy():
            saved = {**saved, "data": fingerprint["data"], "weights": fingerprint["weights"]}  # weights hashed with the data, as before
        for key in {**fingerprint, **({"weights": None} if "weights" in saved else {})}:
            value = fingerprint.get(key)
            if key == "version" or (key in _V2_KEYS and saved.get("version", 1) < 2):
                continue
            if saved.get(key) != value and not (key == "optimizer" and _same_optimizer(saved.get(key), value)):
                what = ("the training data differ from" if key == "data" else
                        "the class_weight or sample_weight (or their absence) differs from" if key == "weights" else
                        "the optax optimizer's settings (its learning rate, say) differ from" if key == "optax" else
                        f"{key}={value!r} differs from {saved.get(key)!r} in")
                raise ConfigError(f"cannot resume from {ckpts.directory}: {what} the run that wrote it; "
                                  "resume with the same data and settings, or start again with another checkpoint_dir")
    before, now = restored.meta.get("strategy"), _strategy_meta(strategy, batch_size, state)
    if isinstance(before, dict) and before != now:
        warnings.warn(f"resuming a run trained with {_say_strategy(before)} with {_say_strategy(now)}: dropout masks and the "
                      "order of float sums follow the strategy, so the history may differ from an uninterrupted run's; resume "
                      "with the devices= it was started with to continue it exactly", UserWarning, stacklevel=3)
    return restored, _callback_pairs(hooks, restored.callbacks, restored.meta.get("callback_kinds"))


def _same_optimizer(saved: str | None, spec: str | None) -> bool:
    """Whether a checkpoint's optimizer JSON and this run's name the same optimizer. One written
    before jaxcnn recorded ``get_optimizer``'s transformations (None, as for any optax one) is
    taken as this one, as it was then; names compare in any case (``RMSprop`` was kept as given)."""
    if saved is None:
        return True
    if spec is None:
        return False
    a, b = json.loads(saved), json.loads(spec)
    return {**a, "name": str(a.get("name")).lower()} == {**b, "name": str(b.get("name")).lower()}


def _callback_kind(hook: Hooks) -> list[Any]:
    """A callback as its checkpoint records it: its class (and what it monitors), and whether it keeps state."""
    cb = hook.callback
    monitor = getattr(cb, "monitor", None)
    name = type(cb).__name__ + (f"({monitor})" if isinstance(monitor, str) else "")
    return [name, hook.keeps_state]


def _callback_pairs(hooks: Sequence[Hooks], saved: Sequence[Any], kinds: Sequence[Any] | None) -> list[tuple[Hooks, Any]]:
    """Each callback that keeps state with its state from the checkpoint. Those that keep state
    must be the run's, in its order (by class and monitor); callbacks that keep none (a progress
    printer) may be added or dropped. A checkpoint written before it recorded its callbacks
    (``kinds`` None) needs as many callbacks as it saved."""
    if not saved:
        return []
    if kinds is None or len(kinds) != len(saved):
        if len(saved) != len(hooks):
            raise ConfigError(f"the checkpoint holds the state of {len(saved)} callbacks but {len(hooks)} were given; "
                              "resume with the same callbacks")
        return list(zip(hooks, saved))
    then = [(kind[0], s) for kind, s in zip(kinds, saved) if kind[1]]
    now = [(h, _callback_kind(h)[0]) for h in hooks if h.keeps_state]
    if [k for k, _ in then] != [k for _, k in now]:
        listed = lambda ks: ", ".join(ks) or "none"  # noqa: E731
        raise ConfigError(f"the run's callbacks that keep state were {listed([k for k, _ in then])} but {listed([k for _, k in now])} "
                          "were given; resume with the same ones in the same order (callbacks that keep no state may change)")
    return [(h, s) for (h, _), (_, s) in zip(now, then)]


# ----------------------------------------------------------------------------------------------
# fit, evaluate, predict


def _check_arrays(x: Any, y: Any, call: str, labels: bool = True) -> None:
    """Keras-style inputs that jaxcnn does not take, refused in one line: a generator or a data
    set object, ``(x, y)`` given as ``x``, or no labels. ``call`` is how the user calls it."""
    import collections.abc
    import types

    libraries = ("tensorflow", "torch.utils.data", "grain", "datasets", "keras")  # a data set class of theirs, or a subclass
    array_like = isinstance(x, (np.ndarray, str, bytes, dict)) or hasattr(x, "__array__") or hasattr(x, "__array_interface__")
    dataset = not hasattr(x, "__array__") and any(c.__module__.startswith(libraries) for c in type(x).__mro__)  # a tf.Tensor goes through
    iterator = isinstance(x, (types.GeneratorType, collections.abc.Iterator))
    # (x, y) pairs, as tuples or as lists (PyTorch's default collate gives lists), in a list or a data set or
    # loader of one's own (PyTorch's Dataset: __getitem__ and __len__; a DataLoader: __iter__): batches, or
    # single examples. A sequence of images (a deque, a lazy Sequence) goes on to NumPy, as before.
    first = None if array_like or dataset or iterator else _first_item(x)
    # A pair's images have more axes than its labels (and weights): an image given as a list of its
    # rows (arrays of one shape) is not a pair.
    pairs = (isinstance(first, (tuple, list)) and len(first) in (2, 3) and hasattr(first[0], "shape")
             and all(hasattr(a, "shape") or isinstance(a, (int, float)) for a in first)
             and all(np.ndim(a) < np.ndim(first[0]) for a in first[1:]))
    single = pairs and np.ndim(first[0]) <= 3  # one image (H, W, C), not a batch (B, H, W, C)
    if pairs or dataset or iterator:
        kind = "(x, y) examples" if single else "(x, y) batches"
        what = type(x).__name__ if not pairs else f"list of {kind}" if isinstance(x, list) else f"{type(x).__name__}, a data set of {kind}"
        gather = ("x = np.stack([xi for xi, yi in examples]), y = np.array([yi for xi, yi in examples])" if single else
                  "x = np.concatenate([xb for xb, yb in batches]), y = np.concatenate([yb for xb, yb in batches])")
        raise ConfigError(
            f"x is a {what}; {call} takes arrays (images (N, H, W, C) and labels (N,)), not generators or "
            f"data set objects: gather them first, e.g. {gather}"
        )
    if labels and y is None:
        if isinstance(x, (tuple, list)) and len(x) in (2, 3) and all(hasattr(a, "shape") for a in x):
            raise ConfigError(f"x is a {type(x).__name__} of {len(x)} arrays; give the images and the labels apart: {call}")
        raise ConfigError(f"y is missing: {call} needs the labels, integers (N,) or one-hot (N, classes)")


def _first_item(x: Any) -> Any:
    """The first item of a list, a sequence or an iterable (None when it has none, or fails)."""
    try:
        if hasattr(x, "__getitem__") and hasattr(x, "__len__"):
            return x[0] if len(x) else None
        return next(iter(x), None) if hasattr(x, "__iter__") else None
    except Exception:  # noqa: BLE001 - not one of these: NumPy's conversion says what it is
        return None


def _check_settings(epochs: Any, batch_size: Any, initial_epoch: Any, seed: Any) -> tuple[int, int, int, int]:
    """The settings as plain ints (a NumPy integer would reach the checkpoint's JSON), or a
    ConfigError; ``batch_size=None`` is Keras's default, 32."""
    return (checks.check_positive_int(epochs, "epochs", minimum=0),  # Keras: epochs=0 builds the model and trains nothing
            checks.check_positive_int(32 if batch_size is None else batch_size, "batch_size"),
            checks.check_positive_int(initial_epoch, "initial_epoch", minimum=0),
            checks.check_seed(seed))


def _announce(inputs: _Inputs, batch_size: int, epochs: int, initial_epoch: int, strategy: Strategy) -> None:
    n = len(inputs.train.x)
    val = f", validating on {_plural(len(inputs.val.x), 'example')}" if inputs.val is not None else ""
    on = f" on {strategy.device_count} devices" if strategy.device_count > 1 else ""
    print(f"Training on {_plural(n, 'example')}{val}: {_plural(epochs - initial_epoch, 'epoch')} of "
          f"{_plural(math.ceil(n / batch_size), 'step')} (batch {batch_size}, {strategy.name} strategy{on})", flush=True)


def _epoch_line(epoch: int, epochs: int, logs: dict[str, float], eta: float) -> str:
    shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k not in FIT_TAIL)
    left = f" - about {eta:,.0f}s left" if eta > 0 else ""
    lr = f" - lr: {logs['learning_rate']:.4g}" if "learning_rate" in logs else ""
    return f"Epoch {epoch + 1}/{epochs} - {logs['time_s']:.1f}s - {shown}{lr}{left}"


def fit(
    model_or_state: Any,
    x: Any,
    y: Any = None,
    *,
    epochs: int = 1,
    batch_size: int | None = 32,
    optimizer: str | optax.GradientTransformation | None = None,
    learning_rate: optim.LearningRate | None = None,
    loss: str | Callable[..., Any] | None = None,
    from_logits: bool | None = None,
    label_smoothing: float = 0.0,
    metrics: Sequence[Any] = (),
    weighted_metrics: Sequence[Any] = (),
    class_weight: dict[int, float] | None = None,
    sample_weight: Any = None,
    validation_split: float = 0.0,
    validation_data: tuple[Any, ...] | None = None,
    validation_batch_size: int | None = None,
    validation_freq: int = 1,
    shuffle: bool = True,
    seed: int = 0,
    callbacks: Iterable[Callback] | Callback | None = (),
    verbose: int | str = "auto",
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    devices: int | str | Sequence[Any] | None = "auto",
    data_on_device: bool | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    stop_on_nan: bool = True,
) -> FitResult:
    """Train like ``keras.Model.fit``; return ``FitResult(state, history)``.

    Args:
      model_or_state: a Flax linen or NNX module (see "Bring your own model" in the README;
        initialised here from ``seed``, with ``optimizer`` and ``learning_rate``), or a
        :class:`TrainState` to continue training.
      x: float images (N, H, W, C), e.g. ``jaxcnn.data.to_float(images)``.
      y: integer labels (N,), or one-hot or soft targets (N, classes), kept as distributions.
      epochs: train until this epoch (counting from ``initial_epoch``); 0 only builds the state.
      batch_size: examples per step (``None``: 32, as Keras); the last, partial batch of an epoch
        is trained on too. A batch larger than the data trains on all of it in one step, as in Keras.
      optimizer, learning_rate: for a model, the optimizer (a name, default "rmsprop", or an optax
        transformation; ``jaxcnn.optim.get_optimizer``) and its rate (a number or a schedule;
        default the optimizer's). A state trains on with its own, and refuses either.
      loss: None or "sparse_categorical_crossentropy" / "categorical_crossentropy" (both take
        integer or distribution labels), a :mod:`jaxcnn.losses` object, or a function
        ``(outputs, labels) -> (B,)``. ``from_logits=None`` decides from the model's outputs:
        a softmax output is used as probabilities, as Keras does, never softmaxed twice.
      label_smoothing: Keras's label smoothing for the cross-entropies.
      metrics: extra metrics beside loss and accuracy (:mod:`jaxcnn.metrics` names or objects),
        counted without the sample weights, as Keras's ``compile(metrics=)``.
      weighted_metrics: metrics counted with the sample and class weights (Keras's
        ``weighted_metrics``), logged as ``weighted_<name>`` where the name is taken
        (``["accuracy"]``: ``weighted_accuracy``).
      class_weight: ``{class: weight}``, and ``sample_weight`` (N,): weigh each example's loss
        (``sum(loss * w) / batch_size``) and the ``weighted_metrics``, as Keras does; accuracy
        and ``metrics`` count every example once.
      validation_split: hold out the last fraction of ``x``/``y`` (before shuffling), as Keras.
      validation_data: ``(x_val, y_val)`` or ``(x_val, y_val, w_val)``; takes precedence.
      validation_batch_size: examples per validation batch (default ``batch_size``).
      validation_freq: validate after every this many epochs (Keras's; 1, the default: every
        epoch); the history holds NaN for the validation keys of the other epochs.
      shuffle: reshuffle the training data each epoch; the order depends on (seed, epoch) only,
        and, when ``fit`` continues a trained state from ``initial_epoch=0`` (``fit`` called in a
        loop), on the state's step too, so each call sees a new order, as Keras's does.
      seed: parameter initialisation (linen), dropout and shuffling all derive from it.
      callbacks: a list, e.g. ``[EarlyStopping(), LearningRateScheduler(f)]``, or one callback.
      verbose: 0 silent, 1 or "auto" (the default) a progress bar per epoch, 2 one line per epoch.
      steps_per_epoch, validation_steps: Keras's, for scripts that pass them: None, or the
        steps of a whole pass over the arrays (every epoch and validation covers all the data;
        another count is refused with the slice that trains on fewer examples).
      devices: "auto" (on CPU, each batch cut into parts of at most 32 examples dealt out to the
        CPU devices, or for models with batch statistics one part per device of an SPMD mesh
        that keeps the statistics the whole batch's; one device on an accelerator), None (one
        device, the whole batch in one program), or "all", a count or a list (a data-parallel
        mesh). See :mod:`jaxcnn.train.strategies`. The history is the same on any number of
        CPU devices (for BatchNorm models, to float tolerance).
      data_on_device: keep the training set on the device and run chunks of steps in one
        ``lax.scan`` (default: on GPU/TPU, off on CPU); one step at a time when a callback
        has a batch hook (``on_train_batch_end``, ModelCheckpoint with an int ``save_freq``).
      checkpoint_dir: save the whole training state, the history and every callback's state
        there after each epoch (orbax). With ``resume=True``, continue from the latest
        checkpoint there: the resumed run ends exactly as one never interrupted, whatever the
        callbacks' order. Without ``resume``, a directory holding checkpoints is refused.
      stop_on_nan: raise ``TrainingError`` when the loss becomes NaN or infinite (the default);
        False records a NaN loss for the epoch and leaves stopping to callbacks
        (``TerminateOnNaN``), the weights those of the last good step.

    The history has per epoch: loss, accuracy, the metrics, val_loss, val_accuracy and the
    validation metrics (with validation), learning_rate (under a schedule, the rate of the
    epoch's last step), time_s, examples_per_s, train_time_s.
    Raises ``ShapeError``/``ConfigError`` on bad input before compiling, and ``TrainingError``
    (its ``state`` and ``history`` those of the last good step) if the loss becomes NaN.
    """
    verbose = _check_verbose(verbose)
    epochs, batch_size, initial_epoch, seed = _check_settings(epochs, batch_size, initial_epoch, seed)
    if isinstance(model_or_state, TrainState) and (optimizer is not None or learning_rate is not None):
        given = "optimizer" if optimizer is not None else "learning_rate"
        raise ConfigError(
            f"fit(state, ..., {given}=...): a TrainState trains on with the optimizer it was built with, so {given} would be "
            "ignored; drop it, set a new rate with state.replace(opt_state=jaxcnn.optim.set_learning_rate(state.opt_state, 1e-4)) "
            "or a LearningRateScheduler callback, or start from the model for another optimizer: fit(model, x, y, optimizer=...)"
        )
    if learning_rate is not None and optimizer is not None and not isinstance(optimizer, str):
        raise ConfigError(
            "fit(model, ..., optimizer=<an optax transformation>, learning_rate=...): the transformation has its own rate, so "
            "learning_rate would be ignored; build it with the rate (e.g. jaxcnn.optim.get_optimizer('sgd', 0.5, momentum=0.9)), "
            "or name the optimizer: optimizer='sgd', learning_rate=0.5"
        )
    validation_batch_size = checks.check_positive_int(validation_batch_size or batch_size, "validation_batch_size")
    validation_freq = checks.check_positive_int(validation_freq, "validation_freq")
    _check_arrays(x, y, "fit(model, x, y)")
    callbacks = _callback_list(callbacks)
    hooks = [Hooks(cb) for cb in callbacks]  # a Keras callback, a hook of neither jaxcnn's nor Keras's form: refused here
    inputs = _check_inputs(model_or_state, x, y, validation_split=validation_split, validation_data=validation_data,
                           class_weight=class_weight, sample_weight=sample_weight)
    asked, batch_size = batch_size, min(batch_size, len(inputs.train.x))  # Keras: one batch of all the data
    split = validation_split if validation_data is None and validation_split else 0.0
    _check_steps("steps_per_epoch", steps_per_epoch, len(inputs.train.x), batch_size,
                 _fewer_with_split(split) if split else "x[:{n}], y[:{n}]")
    if inputs.val is not None:
        _check_steps("validation_steps", validation_steps, len(inputs.val.x), validation_batch_size,
                     "validation_data=(x_val[:{n}], y_val[:{n}]) in place of validation_split" if split
                     else "validation_data=(x_val[:{n}], y_val[:{n}])")
    probe = model_or_state if isinstance(model_or_state, TrainState) else None
    # a bad `devices` fails here, before compiling
    per_step = any(h.on_train_batch_end is not None or h.on_train_batch_begin is not None for h in hooks)
    strategy = choose_strategy(devices, batch_size, probe, data_on_device, asked_batch_size=asked, per_step=per_step)
    outputs = None  # the model's outputs on the first training images, when building the state gave them
    if isinstance(model_or_state, TrainState):
        state = model_or_state
        if metrics or weighted_metrics:
            state = state.replace(metrics=_get_metrics(metrics, weighted_metrics))
    else:
        state, outputs = start_state(model_or_state, inputs.input_shape, "rmsprop" if optimizer is None else optimizer, learning_rate, seed,
                                     metrics=_get_metrics(metrics, weighted_metrics), sample=inputs.train.x[: state_mod.SAMPLE])
        strategy = choose_strategy(devices, batch_size, state, data_on_device, per_step=per_step)
    state = _resolve_loss(state, loss, from_logits, label_smoothing, inputs.train.x, inputs.train.y, outputs)
    _warn_array_metrics(state.metrics)
    history = History(params={"verbose": verbose, "epochs": epochs, "steps": -(-len(inputs.train.x) // batch_size),  # Keras's three
                              "batch_size": batch_size, "samples": len(inputs.train.x), "seed": seed,
                              "validation_freq": validation_freq if inputs.val is not None else None})
    ckpts = None
    if checkpoint_dir is not None:
        ckpts = _open_checkpoints(checkpoint_dir, resume, "val_loss" if inputs.val is not None and validation_freq == 1 else "loss")
    fingerprint = _fingerprint(inputs, state, batch_size, seed, shuffle) if ckpts is not None else {}
    # fit continuing a trained state from epoch 0 (called in a loop) shuffles anew each call
    salt = int(model_or_state.step) if isinstance(model_or_state, TrainState) and initial_epoch == 0 else 0
    try:
        restored, callback_states = _restore(ckpts, state, fingerprint, hooks, strategy, batch_size,
                                             legacy=lambda: _data_hash(inputs, weights=True))
    except Exception:
        if ckpts is not None:
            ckpts.close()
        raise
    if restored is not None:
        state, initial_epoch, history = restored.state, restored.epoch, restored.history
        if initial_epoch > epochs:
            warnings.warn(f"the checkpoint in {ckpts.directory} is after epoch {initial_epoch}, past epochs={epochs}: "
                          f"nothing is trained, and fit returns the state and history of epoch {initial_epoch}; pass "
                          f"epochs greater than {initial_epoch} to train on", UserWarning, stacklevel=2)
    # The train step donates its state buffers; copy once so the caller's state stays usable
    # (a state fit built itself is its own).
    own = not isinstance(model_or_state, TrainState) and restored is None
    loop = Loop(strategy.put_state(state if own else _copy_tree(state)), history)
    for cb in callbacks:  # Keras's set_model: self.model is the running loop (self.model.stop_training = True)
        if callable(getattr(cb, "set_model", None)):
            cb.set_model(loop)
        elif getattr(cb, "model", None) is None or isinstance(cb.model, Loop):  # a plain object: as Keras's base class sets it
            try:
                cb.model = loop
            except AttributeError:  # __slots__, or a read-only property
                pass
        # and set_params (self.params["epochs"], "steps", "verbose"), unless the callback keeps a
        # params of its own (in JAX code often weights)
        if callable(getattr(cb, "set_params", None)) and (getattr(cb, "params", None) is None or getattr(cb, "_fit_params", False)):
            cb.set_params(dict(loop.history.params))
            try:
                cb._fit_params = True
            except AttributeError:  # a callback with __slots__
                pass
    for h in hooks:
        h.on_train_begin(loop)
    if restored is not None:
        for h, cb_state in callback_states:
            h.set_state(cb_state)
        loop.stop_training = restored.stop_training
    if verbose and not loop.stop_training and initial_epoch < epochs:
        _announce(inputs, batch_size, epochs, initial_epoch, strategy)
    try:
        _epochs(loop, strategy, inputs, hooks, ckpts, fingerprint, epochs=epochs, batch_size=batch_size,
                initial_epoch=initial_epoch, shuffle=shuffle, seed=seed, verbose=verbose, stop_on_nan=stop_on_nan,
                salt=salt, validation_batch_size=validation_batch_size, validation_freq=validation_freq)
    finally:
        if ckpts is not None:
            ckpts.close()
    for h in hooks:
        h.on_train_end(loop)
    state = loop.state
    if isinstance(strategy, StatsMesh):
        # The CPU mesh of parts is fit's own choice ("auto"): hand the state back on one device, as
        # the other "auto" strategies do (a program on a replicated state runs once per device).
        # A mesh the user asked for (devices="all", a count) stays.
        state = jax.device_put(state, strategy.devices[0])
    return FitResult(state, history)


def _warn_array_metrics(metrics: Sequence[Any]) -> None:
    """Warn that a metric whose result is an array (the confusion matrix) is left out of fit's
    logs, which hold a number per epoch (Keras's); evaluate gives it."""
    from jaxcnn.metrics import ConfusionMatrix

    names = [m.name for m in metrics if isinstance(getattr(m, "metric", m), ConfusionMatrix)]
    if names:
        warnings.warn(
            f"fit's logs hold a number per epoch, as Keras's do, so {', '.join(repr(n) for n in names)} (an array) is "
            "left out of the history, the progress bar and the callbacks' logs; get it after training with "
            "jaxcnn.evaluate(state, x, y, metrics=['confusion_matrix'])",
            UserWarning, stacklevel=3)


def _get_metrics(metrics: Sequence[Any], weighted_metrics: Sequence[Any] = ()) -> tuple[Any, ...]:
    if not metrics and not weighted_metrics:
        return ()
    from jaxcnn import metrics as metrics_module

    return metrics_module.with_weighted(metrics, weighted_metrics)


def _epochs(loop: Loop, strategy: Strategy, inputs: _Inputs, hooks: list[Hooks], ckpts: Any,
            fingerprint: dict[str, Any], *, epochs: int, batch_size: int, initial_epoch: int, shuffle: bool,
            seed: int, verbose: int, stop_on_nan: bool, salt: int = 0, validation_batch_size: int | None = None,
            validation_freq: int = 1) -> None:
    """The epoch loop of :func:`fit`."""
    strategy.prepare(inputs.train)
    t_start, first = time.perf_counter(), initial_epoch
    for epoch in range(initial_epoch, epochs):
        if loop.stop_training:
            break
        t0 = time.perf_counter()
        for h in hooks:
            h.on_epoch_begin(epoch, loop)
        order = epoch_order(len(inputs.train.x), seed, epoch, shuffle, salt)
        try:
            loop.state, logs = run_epoch(loop.state, strategy, inputs.train, order, batch_size, epoch=epoch,
                                         verbose=verbose, desc=f"Epoch {epoch + 1}/{epochs}", loop=loop,
                                         callbacks=hooks, stop_on_nan=stop_on_nan)
        except TrainingError as e:
            loop.state = e.state
            e.history = loop.history
            raise
        if inputs.val is not None and (epoch + 1) % validation_freq == 0:
            for h in hooks:
                if h.on_test_begin is not None:
                    h.on_test_begin(loop)
            val = metric_logs(loop.state, strategy.evaluate(loop.state, inputs.val, validation_batch_size or batch_size))
            for h in hooks:
                if h.on_test_end is not None:
                    h.on_test_end(dict(val), loop)
            logs.update({f"val_{k}": v for k, v in val.items()})
        lr = float(loop.learning_rate)
        if not math.isnan(lr):  # an optax optimizer without inject_hyperparams does not tell its rate
            logs["learning_rate"] = lr
        logs["time_s"] = time.perf_counter() - t0
        ordered = {k: logs[k] for k in _log_order(logs)}
        loop.history.append(epoch, ordered)
        if verbose:
            eta = (time.perf_counter() - t_start) / (epoch + 1 - first) * (epochs - epoch - 1)
            print(_epoch_line(epoch, epochs, ordered, eta), flush=True)
        for h in hooks:
            h.on_epoch_end(epoch, ordered, loop)
        loop.history._add_late(ordered)
        if ckpts is not None:
            ckpts.save(epoch + 1, loop.state, history=loop.history, callbacks=[h.get_state() for h in hooks],
                       stop_training=loop.stop_training, metrics=ordered, extra={"fit": fingerprint, "strategy": _strategy_meta(strategy, batch_size, loop.state),
                                                                                     "callback_kinds": [_callback_kind(h) for h in hooks]})


def _log_order(logs: dict[str, float]) -> list[str]:
    train = [k for k in logs if not k.startswith("val_") and k not in FIT_TAIL]
    return [*train, *[k for k in logs if k.startswith("val_")], *[k for k in FIT_TAIL if k in logs]]


def _check_verbose(verbose: Any) -> int:
    """Keras's ``verbose`` for evaluate and predict: 0 (or False) silent; 1, 2, True or "auto"
    one line when done."""
    if verbose == "auto" or (isinstance(verbose, (bool, int, np.integer)) and int(verbose) in (0, 1, 2)):
        return 1 if verbose == "auto" else int(verbose)
    raise ConfigError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")


#: evaluate's and predict's batch when none is given (``batch_size=None`` too).
EVALUATE_BATCH, PREDICT_BATCH = 128, 512


def evaluate(state: TrainState, x: Any, y: Any = None, batch_size: int | None = EVALUATE_BATCH, devices: Any = "auto", *,
             sample_weight: Any = None, metrics: Sequence[Any] = (), weighted_metrics: Sequence[Any] = (),
             verbose: int | str = 0, return_dict: bool = True) -> dict[str, float] | list[Any]:
    """Loss (with L2 terms), accuracy and the state's (or ``metrics``') metrics of ``state`` on
    images ``x`` (N, H, W, C) and labels ``y``; ``metrics=["confusion_matrix"]`` adds the
    (classes, classes) matrix, rows the true class. ``verbose`` 1, 2 or "auto" prints the
    figures in one line, as Keras's last line of ``evaluate`` (default 0: silent).
    ``return_dict=False`` gives the values as a list in the same order (loss first), as Keras's
    ``evaluate`` does by default. ``sample_weight`` weighs the loss and ``weighted_metrics``
    (Keras's), not accuracy or ``metrics``."""
    state = state_of(state, "evaluate")
    verbose = _check_verbose(verbose)
    _check_arrays(x, y, "evaluate(state, x, y)")
    t0 = time.perf_counter()
    batch_size = checks.check_positive_int(EVALUATE_BATCH if batch_size is None else batch_size, "batch_size")
    xs = np.ascontiguousarray(checks.check_images(x, state.input_shape, "x"), np.float32)
    ys = checks.check_labels(y, len(xs), state.num_classes, "y")
    if metrics or weighted_metrics:
        state = state.replace(metrics=_get_metrics(metrics, weighted_metrics))
    state = state_mod.with_outputs_decided(state, xs)
    w = _sample_weights(ys, state.num_classes, None, sample_weight, "")
    batch_size = min(batch_size, len(xs))
    # "auto" evaluates a BatchNorm model on the CPU mesh of parts, as fit's validation does.
    strategy = choose_strategy(devices, batch_size, state, data_on_device=False, training=False)
    acc = strategy.evaluate(strategy.put_state(state), Data(xs, ys, w), batch_size)
    logs = metric_logs(state, acc, arrays=True)
    if verbose:
        figures = " - ".join(f"{k}: {float(v):.4f}" for k, v in logs.items() if np.ndim(v) == 0)
        print(f"{_plural(len(xs), 'example')} in {time.perf_counter() - t0:.1f}s - {figures}", flush=True)
    return logs if return_dict else list(logs.values())


def predict(state: TrainState, x: Any, batch_size: int | None = PREDICT_BATCH, output: str = "logits", *,
            verbose: int | str = 0) -> np.ndarray:
    """Model outputs for ``x`` (N, H, W, C): ``"logits"`` (the raw outputs (N, classes): logits,
    or the probabilities of a model that ends in a softmax), ``"probs"`` (softmax of logits;
    outputs taken as probabilities divided by their sums, as the cross-entropy divides them;
    with a loss of one's own, the outputs as they are) or ``"classes"`` (N,). ``verbose`` 1, 2 or "auto" prints how many
    examples and how long, when done (default 0: silent)."""
    state = state_of(state, "predict")
    verbose = _check_verbose(verbose)
    _check_arrays(x, None, "predict(state, x)", labels=False)
    t0 = time.perf_counter()
    if output not in ("logits", "probs", "classes"):
        raise ConfigError(f"output must be 'logits', 'probs' or 'classes', got {output!r}")
    xs = np.ascontiguousarray(checks.check_images(x, state.input_shape, "x"), np.float32)
    batch_size = checks.check_positive_int(PREDICT_BATCH if batch_size is None else batch_size, "batch_size")
    if jax.process_count() > 1:  # every process runs the same program on the state where it is
        raw = predict_batches(lambda i, images: jit_predict(state, images), xs, batch_size)
    else:  # where fit would run the model: parts dealt to the CPU devices, the mesh for BatchNorm
        strategy = choose_strategy("auto", min(batch_size, len(xs)), state, data_on_device=False)
        raw = strategy.predict(strategy.put_state(state), xs, batch_size)
    if verbose:
        print(f"{_plural(len(xs), 'example')} predicted in {time.perf_counter() - t0:.1f}s", flush=True)
    if output == "classes":
        return raw.argmax(-1)
    if output == "probs":
        if not state_mod.with_outputs_decided(state, xs, raw).outputs_are_probs:
            return np.asarray(jax.nn.softmax(raw, axis=-1))
        # outputs taken as probabilities by jaxcnn's cross-entropy: divided by their sums, as that
        # loss divides them (Keras's): a sigmoid output's rows, a bfloat16 softmax's, sum to 1
        # (a float32 softmax's rows, within rounding of 1, are returned as they are). A loss of
        # one's own (multi-label sigmoids, say) gets the outputs as they are.
        if isinstance(state.loss, losses.CustomLoss):
            return raw
        total = raw.sum(-1, keepdims=True, dtype=np.float64)
        if np.all(np.abs(total - 1.0) <= 1e-5):
            return raw
        return np.where(total > 0, raw / np.where(total > 0, total, 1.0), raw).astype(raw.dtype)
    return raw
