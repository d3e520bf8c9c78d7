"""Keras-style callbacks for :func:`jaxcnn.train.fit`.

A callback sees the running :class:`~jaxcnn.train.Loop` (its ``state``, ``history``,
``learning_rate`` and ``stop_training``) at the start and end of training and of each epoch, and
may change them: :class:`EarlyStopping` sets ``stop_training`` and can put the best weights back,
:class:`LearningRateScheduler` sets the learning rate for the next epoch, which changes an array
in the optimizer state and so never recompiles the train step. :class:`BackupAndRestore` saves
everything once an epoch (orbax, via :mod:`jaxcnn.checkpoint`) so that a run can be resumed; it
keeps each callback's ``get_state()`` and gives it back with ``set_state()``.

Keras's toolbox, with Keras 3's decisions and arguments: :class:`ModelCheckpoint` (an exported
model directory or a weights file, every epoch or only the best), :class:`ReduceLROnPlateau`,
:class:`CSVLogger`, :class:`TensorBoard` (tensorboardX event files: scalars per epoch or every N
steps, the learning rate, weight histograms) and :class:`TerminateOnNaN` (for
``fit(..., stop_on_nan=False)``; by default ``fit`` itself stops on a NaN loss). Each one's
``get_state()`` is JSON, so a resumed run continues their decisions and files where they were.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jaxcnn.checks import _user_stacklevel
from jaxcnn.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from jaxcnn.train import Loop


def _snapshot(loop: Loop) -> tuple[Any, Any]:
    """A host copy of the weights: the train step donates (reuses) the device buffers."""
    import jax

    return jax.device_get((loop.state.params, loop.state.batch_stats))


class Callback:
    """Base class: override any of the hooks. ``logs`` holds the epoch's metrics by name.

    A subclass written for Keras works as it is: ``on_epoch_end(self, epoch, logs=None)``,
    ``on_epoch_begin(self, epoch, logs=None)``, ``on_train_begin(self, logs=None)`` and the
    like are called with Keras's arguments (see :func:`hook`); add ``loop`` to reach the state.
    Also called when a callback defines them: ``on_train_batch_begin`` / ``on_train_batch_end``
    (or Keras's aliases ``on_batch_begin`` / ``on_batch_end``), and ``on_test_begin`` /
    ``on_test_end`` around each epoch's validation (``on_test_end`` gets the validation figures
    without the ``val_`` prefix, as Keras's). ``self.model`` is the running :class:`Loop`, as
    Keras's ``set_model`` sets it, so ``self.model.stop_training = True`` stops training and
    ``self.model.optimizer.learning_rate`` is the rate; ``self.params`` holds Keras's
    ``{"verbose", "epochs", "steps"}`` (``set_params``).
    """

    model: Loop | None = None
    params: dict[str, Any] | None = None

    def set_model(self, model: Loop) -> None:
        """Called by ``fit`` before training, as Keras does: ``model`` is the running loop."""
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        """Called by ``fit`` before training, as Keras does: the epochs, steps per epoch and verbose."""
        self.params = params

    def on_train_begin(self, loop: Loop) -> None:
        pass

    def on_epoch_begin(self, epoch: int, loop: Loop) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        pass

    def on_train_end(self, loop: Loop) -> None:
        pass

    def get_state(self) -> dict[str, Any]:
        """What this callback must remember across a resumed run (JSON values or array pytrees)."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`get_state` returned (called after ``on_train_begin``)."""


#: jaxcnn's arguments of each hook; Keras's are the same without ``loop`` (and with ``logs``
#: where jaxcnn passes ``loop`` alone).
_HOOK_ARGS = {
    "on_train_begin": ("loop",), "on_epoch_begin": ("epoch", "loop"), "on_epoch_end": ("epoch", "logs", "loop"),
    "on_train_end": ("loop",), "on_train_batch_end": ("batch", "logs", "loop"),
    "on_train_batch_begin": ("batch", "logs", "loop"), "on_test_begin": ("loop",), "on_test_end": ("logs", "loop"),
}

#: Hooks a callback may leave out (the base class has none), and Keras's aliases for them.
OPTIONAL_HOOKS = {"on_train_batch_end": "on_batch_end", "on_train_batch_begin": "on_batch_begin",
                  "on_test_begin": None, "on_test_end": None}

#: Every hook name a callback may define, jaxcnn's and Keras's aliases.
HOOK_NAMES = frozenset(_HOOK_ARGS) | {alias for alias in OPTIONAL_HOOKS.values() if alias}


def _defined(cb: Any, attr: str | None) -> Callable[..., Any] | None:
    """``cb``'s method ``attr`` when ``cb`` defines it (its class, or set on the instance as
    LambdaCallback does) other than the base class's empty one; else None."""
    if attr is None:
        return None
    own = getattr(type(cb), attr, None)
    if own is not None and own is getattr(Callback, attr, None):
        return None
    fn = getattr(cb, attr, None)
    # keras.callbacks.Callback's own empty hooks are marked `_is_default` (Keras skips them too):
    # a Keras subclass that does not override on_train_batch_end costs no sync per step.
    return fn if callable(fn) and not getattr(fn, "_is_default", False) else None


def has_hook(cb: Any, name: str) -> bool:
    """Whether ``cb`` defines the optional hook ``name`` (itself, or under Keras's alias)."""
    return _defined(cb, name) is not None or _defined(cb, OPTIONAL_HOOKS.get(name)) is not None


def _binds(sig: inspect.Signature, n: int) -> bool:
    try:
        sig.bind(*([None] * n))
    except TypeError:
        return False
    return True


def hook(cb: Any, name: str) -> Callable[..., Any]:
    """``cb``'s hook ``name`` as :func:`jaxcnn.fit` calls it (with jaxcnn's arguments, see
    :class:`Callback`), also when it was written for Keras: ``on_epoch_end(epoch, logs)`` and
    ``on_train_batch_end(batch, logs)`` get no ``loop`` (and, as in Keras, ``batch`` counts from
    0 in each epoch, where jaxcnn's form gets the global step); ``on_train_begin(logs)``,
    ``on_epoch_begin(epoch, logs)`` and ``on_train_end(logs)``, whose last argument is named
    ``logs``, get the logs (empty at a beginning, the last epoch's at the end) instead of the loop.
    A hook that takes neither form is refused with a :class:`ConfigError` before training; a hook
    the callback does not have at all (an object that is no :class:`Callback` and defines only
    ``on_epoch_end``) does nothing, as the base class's."""
    # Keras: on_batch_end is on_train_batch_end's alias, used when the hook itself is not defined
    fn = _defined(cb, name) or _defined(cb, OPTIONAL_HOOKS.get(name)) or getattr(cb, name, None)
    if fn is None:
        return _no_op
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin: call it as it is
        return fn
    args = _HOOK_ARGS[name]
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keras_logs = "logs" not in args and len(positional) == len(args) and positional[-1].name == "logs"
    if keras_logs:
        if name == "on_train_end":
            return lambda loop: fn({k: v[-1] for k, v in loop.history.history.items() if v})
        return lambda *a: fn(*a[:-1], {})
    if _binds(sig, len(args)):
        return fn
    if _binds(sig, len(args) - 1):  # Keras's (epoch, logs) / (batch, logs), or a hook without the loop
        if args[0] == "batch":  # Keras's batch: the index within the epoch (jaxcnn's form gets the global step)
            return lambda step, logs, loop: fn(step - getattr(loop, "epoch_first_step", 0), logs)
        return lambda *a: fn(*a[:-1])
    what = ", ".join(args)
    raise ConfigError(
        f"callback {type(cb).__name__}.{name} takes {sig}; it must take ({what}) or, as in Keras, "
        f"({', '.join(a for a in args if a != 'loop') or 'logs'})"
    )


def _no_op(*args: Any) -> None:
    """A hook a duck-typed callback does not define."""


#: Keras's own callbacks that jaxcnn.fit runs as Keras does: the base class (no hooks) and
#: LambdaCallback (the user's functions, with Keras's arguments).
_KERAS_ACCEPTED = ("Callback", "LambdaCallback")

#: Keras's callbacks with a jaxcnn callback of the same name and the same arguments.
_KERAS_SAME = ("EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint", "CSVLogger", "LearningRateScheduler", "TerminateOnNaN")

#: What to do instead of the other Keras callbacks.
_KERAS_INSTEAD = {
    "TensorBoard": "pass jaxcnn.callbacks.TensorBoard(log_dir, histogram_freq, update_freq) instead",
    "BackupAndRestore": "drop it and call fit(..., checkpoint_dir=backup_dir, resume=True) instead",
    "OrbaxCheckpoint": "pass jaxcnn.callbacks.ModelCheckpoint, or fit(..., checkpoint_dir=...) for the whole training state, instead",
    "History": "drop it: fit returns the history (fit(...).history)",
    "ProgbarLogger": "drop it: fit(..., verbose=1) prints the progress bar",
}


def refuse_keras_callback(cb: Any) -> None:
    """Refuse one of Keras's own callbacks (``keras.callbacks.EarlyStopping(...)`` and the like)
    with the jaxcnn callback to pass instead: they reach into a Keras model (its optimizer,
    ``get_weights``, ``save_weights``, ``metrics``), which jaxcnn's running :class:`Loop` is not,
    and so fail partway through training. Accepted: ``keras.callbacks.LambdaCallback``, the bare
    ``keras.callbacks.Callback`` and the user's own subclasses of it, whose hooks get Keras's
    arguments (see :func:`hook`); a user's subclass of another Keras callback is refused as that
    callback is."""
    from jaxcnn.losses import is_keras_object

    cls = cb if isinstance(cb, type) else type(cb)
    keras_cls = next((c for c in cls.__mro__ if is_keras_object(c)), None)  # the first of Keras's classes
    if keras_cls is None or keras_cls.__name__ in _KERAS_ACCEPTED:
        return
    name = keras_cls.__name__
    if name in _KERAS_SAME:
        instead = f"pass jaxcnn.callbacks.{name} with the same arguments instead"
    else:
        instead = _KERAS_INSTEAD.get(name, "write a jaxcnn.callbacks.Callback that does the same "
                                           "(its hooks get the running loop: state, history, learning_rate, stop_training)")
    what = name if keras_cls is cls else f"{cls.__name__} (a subclass of Keras's {name})"
    raise ConfigError(
        f"{what} is a Keras callback, and Keras's own callbacks need a Keras model, which jaxcnn's training loop is not; {instead}"
    )


class Hooks:
    """A callback's hooks, each as :func:`hook` adapts it (checked once, before training); an
    optional hook the callback does not define is None. One of Keras's own callbacks other than
    LambdaCallback is refused here (:func:`refuse_keras_callback`)."""

    def __init__(self, cb: Any):
        refuse_keras_callback(cb)
        self.callback = cb
        for name in _HOOK_ARGS:
            if name in OPTIONAL_HOOKS and not has_hook(cb, name):
                setattr(self, name, None)
                continue
            setattr(self, name, hook(cb, name))

    @property
    def keeps_state(self) -> bool:
        """Whether the callback has a ``get_state`` of its own (not the base class's, which keeps nothing)."""
        get = getattr(type(self.callback), "get_state", None)
        return callable(get) and get is not Callback.get_state

    def get_state(self) -> dict[str, Any]:
        """The callback's ``get_state()`` for a checkpoint, or ``{}`` for one that keeps no
        state (a Keras or duck-typed callback)."""
        get = getattr(self.callback, "get_state", None)
        return get() if callable(get) else {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Give back what :meth:`get_state` returned, to a callback that keeps state."""
        put = getattr(self.callback, "set_state", None)
        if callable(put):
            put(state)


class EarlyStopping(Callback):
    """Stop when ``monitor`` stops improving, with the semantics of ``keras.callbacks.EarlyStopping``
    (the same stop, best and restored epochs as Keras on scripted values:
    ``tests/test_keras_parity.py::test_early_stopping_decisions_match_keras``).

    At each epoch end: ``wait += 1``; an improvement (``current - min_delta < best`` in "min" mode,
    ``current - min_delta > best`` in "max" mode; min_delta counts against the direction of
    improvement) resets ``wait`` to 0; otherwise training stops once ``wait >= patience`` (never
    after the first epoch). The last weights are kept unless ``restore_best_weights``, which puts
    the best epoch's weights back at the end of training.

    Args:
      monitor: a key of the epoch logs, e.g. "val_loss" (default, as Keras) or "val_accuracy".
      min_delta: smallest change that counts as an improvement.
      patience: epochs without improvement before stopping.
      mode: "min", "max" or "auto" (max for accuracies, AUC, precision, recall and F1, min
        otherwise: :func:`_auto_mode`, shared with ModelCheckpoint and ReduceLROnPlateau).
      baseline: a value the monitor must beat for ``wait`` to reset.
      restore_best_weights: put back the best epoch's weights when training ends.
      start_from_epoch: epochs to wait before monitoring starts.
      verbose: print a line when stopping/restoring.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        verbose: int = 0,
    ):
        mode = _auto_mode(monitor, mode, "EarlyStopping")
        if isinstance(patience, bool) or not hasattr(type(patience), "__index__") or patience < 0:
            raise ConfigError(f"EarlyStopping patience must be a whole number of epochs >= 0, got {patience!r}; e.g. patience=5")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta = abs(min_delta) * (1 if mode == "max" else -1)
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch, self.verbose = start_from_epoch, verbose
        self.on_train_begin(None)  # type: ignore[arg-type]

    def _better(self, value: float, reference: float) -> bool:
        shifted = value - self.min_delta
        return shifted < reference if self.mode == "min" else shifted > reference

    def on_train_begin(self, loop: Loop) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.best_state = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        current = monitored(logs, self.monitor)
        if current is None:
            freq = (getattr(getattr(loop, "history", None), "params", None) or {}).get("validation_freq")
            if self.monitor.startswith("val_") and isinstance(freq, int) and freq > 1:
                why = (f"fit validates every {freq} epochs (validation_freq={freq}), so it is compared on the epochs "
                       "that validate and patience counts those")
            else:
                why = "pass validation data or monitor another metric"
            warnings.warn(
                f"EarlyStopping monitors {self.monitor!r}, which is not in the logs of epoch {epoch + 1} "
                f"(available: {', '.join(logs)}); {why}",
                stacklevel=_user_stacklevel(),
            )
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_state is None:
            self.best_state, self.best_epoch = _snapshot(loop), epoch
        self.wait += 1
        if self._better(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_state = _snapshot(loop)
            if self.baseline is None or self._better(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            loop.stop_training = True

    def on_train_end(self, loop: Loop) -> None:
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_state is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            # Keep the optimizer and step of the last epoch, the weights of the best one (as Keras).
            params, batch_stats = self.best_state
            loop.state = loop.state.replace(params=params, batch_stats=batch_stats)

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": float(self.best),
            "best_epoch": self.best_epoch,
        }
        if self.best_state is not None:
            params, batch_stats = self.best_state
            state["best_state"] = {"params": params, "batch_stats": batch_stats}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.wait = int(state["wait"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        best = state.get("best_state")
        self.best_state = None if best is None else (best["params"], best.get("batch_stats") or {})


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch: ``lr = schedule(epoch, lr)`` (Keras semantics).

    The report's CIFAR scheduler is ``LearningRateScheduler(keep_then_decay(10, 0.1))``: unchanged
    for epochs 0..9, then multiplied by ``exp(-0.1)`` every epoch. The rate lives in the optimizer
    state, so changing it does not recompile.
    """

    def __init__(self, schedule: Callable[[int, float], float] | Callable[[int], float], verbose: int = 0):
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, loop: Loop) -> None:
        loop.check_learning_rate_settable()  # a clear error for a schedule or a plain optax optimizer
        # Keras: schedule(epoch, lr), or the older schedule(epoch). Keras tries the first and
        # falls back on any TypeError, which hides a TypeError inside the schedule; the signature
        # decides here, so such an error reaches the user as it is.
        try:
            takes_lr = _binds(inspect.signature(self.schedule), 2)
        except (TypeError, ValueError):  # no signature (a builtin): Keras's way
            takes_lr = True
        lr = float(self.schedule(epoch, loop.learning_rate) if takes_lr else self.schedule(epoch))
        if not math.isfinite(lr) or lr < 0:  # 0 is a rate (a warm-up's first epoch), as Keras takes it
            raise ConfigError(f"the learning-rate schedule returned {lr} at epoch {epoch}; it must be a finite number >= 0")
        loop.learning_rate = lr
        self._last_lr = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr:.6g}.")

    def get_state(self) -> dict[str, Any]:
        # The rate itself lives in the optimizer state, which every checkpoint holds; this copy
        # is for people reading the checkpoint.
        return {"learning_rate": getattr(self, "_last_lr", None)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._last_lr = state.get("learning_rate")


def keep_then_decay(keep_epochs: int = 10, rate: float = 0.1) -> Callable[[int, float], float]:
    """The report's schedule: ``lr`` for epochs < ``keep_epochs``, then ``lr * exp(-rate)`` per epoch."""

    def schedule(epoch: int, lr: float) -> float:
        return lr if epoch < keep_epochs else lr * math.exp(-rate)

    return schedule


class LambdaCallback(Callback):
    """A callback from plain functions, e.g. ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``
    (Keras's arguments) or ``lambda epoch, logs, loop: ...`` (with the running :class:`Loop`)."""

    def __init__(self, **hooks: Callable[..., Any]):
        for name, fn in hooks.items():
            if name not in HOOK_NAMES:
                raise ConfigError(f"unknown callback hook {name!r}; use one of {', '.join(_HOOK_ARGS)}")
            setattr(self, name, fn)


class BackupAndRestore(Callback):
    """Checkpoint the whole training state at every epoch end, and put it back to resume.

    At each epoch end it saves, through ``checkpoints`` (a :class:`jaxcnn.checkpoint.TrainCheckpoints`):
    the TrainState, the history so far, the state of ``callbacks`` and whether one of them stopped
    training; ``logs[monitor]`` ranks the checkpoint for "best". Given ``resume`` (what
    ``checkpoints.restore`` returned), ``on_train_begin`` puts the history and the callbacks' state
    back, so the resumed run ends exactly as one never interrupted::

        ckpts = checkpoint.TrainCheckpoints(run_dir / "checkpoints")
        template = create_train_state(model, input_shape, optimizer, seed=seed)
        resume = ckpts.restore(template) if ckpts.latest_epoch is not None else None
        cbs = [EarlyStopping(patience=5)]
        fit(resume.state if resume else template, x, y, seed=seed, initial_epoch=resume.epoch if resume else 0,
            callbacks=[*cbs, BackupAndRestore(ckpts, cbs, resume)])

    With ``checkpoints=None`` it only restores. Put it after the callbacks it saves: ``fit`` calls
    ``on_train_begin`` in list order, which resets them, and then this one restores them (and it
    saves their state once they have seen the epoch).
    """

    def __init__(self, checkpoints: Any, callbacks: list[Callback] | tuple[Callback, ...] = (), resume: Any = None, monitor: str | None = None):
        if isinstance(checkpoints, (str, os.PathLike)):  # Keras's BackupAndRestore(backup_dir)
            raise ConfigError(
                f"BackupAndRestore takes a jaxcnn.checkpoint.TrainCheckpoints, not a directory ({os.fspath(checkpoints)!r}); "
                "for Keras's BackupAndRestore(DIR) drop this callback and call fit(..., checkpoint_dir=DIR, resume=True)"
            )
        self.checkpoints, self.callbacks, self.resume = checkpoints, list(callbacks), resume
        self.monitor = monitor or getattr(checkpoints, "monitor", "val_loss")
        if resume is not None and len(resume.callbacks) not in (0, len(self.callbacks)):
            raise ConfigError(
                f"the checkpoint holds the state of {len(resume.callbacks)} callbacks but {len(self.callbacks)} "
                "were given; resume with the same callbacks (same early stopping and scheduler settings)"
            )

    def on_train_begin(self, loop: Loop) -> None:
        self._hooks = [Hooks(cb) for cb in self.callbacks]  # their get_state/set_state, once per run
        if self.resume is None:
            return
        loop.history.history = {k: list(v) for k, v in self.resume.history.history.items()}
        loop.history.epoch = list(self.resume.history.epoch)
        for h, state in zip(self._hooks, self.resume.callbacks):
            h.set_state(state)

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        if self.checkpoints is None:  # restore only
            return
        current = monitored(logs, self.monitor)
        self.checkpoints.save(
            epoch + 1,
            loop.state,
            history=loop.history,
            callbacks=[h.get_state() for h in self._hooks],
            stop_training=loop.stop_training,
            metrics={self.monitor: current} if current is not None else None,
        )


# ----------------------------------------------------------------------------------------------
# Keras's toolbox around fit: ModelCheckpoint, ReduceLROnPlateau, CSVLogger, TensorBoard,
# TerminateOnNaN. Each makes Keras 3's decisions (keras/src/callbacks/*.py) from the epoch logs,
# and keeps what it must remember across a resumed run in get_state()/set_state() (JSON values).


def _auto_mode(monitor: str, mode: str, owner: str) -> str:
    """Keras's "auto" for jaxcnn's log keys: maximise accuracies (any name with "acc"), AUC,
    precision, recall and F1 (``keras.metrics``' ``_direction = "up"``), minimise the loss.
    Keras raises for a name it cannot place; here any other name is minimised, with a warning
    unless it names a loss or an error."""
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"{owner} mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if any(s in name for s in ("acc", "auc", "precision", "recall", "f1")):
        return "max"
    if not any(s in name.lower() for s in ("loss", "error", "mse", "mae", "crossentropy", "hinge", "divergence",
                                            "learning_rate", "lr")):
        from jaxcnn.checks import _user_stacklevel

        warnings.warn(f"{owner}(monitor={monitor!r}) cannot tell whether it should rise or fall (Keras raises here); it is "
                      "minimised: pass mode='max' for a score that rises, or mode='min'", UserWarning,
                      stacklevel=_user_stacklevel())
    return "min"


#: Keras logs ``metrics=["acc"]`` as "acc", jaxcnn always as "accuracy": each name's other spelling.
_ALIASES = {"acc": "accuracy", "accuracy": "acc", "val_acc": "val_accuracy", "val_accuracy": "val_acc"}


def monitored(logs: dict[str, float], monitor: str) -> float | None:
    """``logs[monitor]``, or None when absent; "acc" and "accuracy" (and their ``val_`` forms) are
    one key, so a monitor written for Keras's ``metrics=["acc"]`` finds jaxcnn's "val_accuracy"."""
    value = logs.get(monitor)
    if value is None and monitor in _ALIASES:
        value = logs.get(_ALIASES[monitor])
    return value


def _is_primary() -> bool:
    """Only process 0 of a multi-process job writes files (the others compute the same values)."""
    import jax

    return jax.process_index() == 0


class _MonitorMixin:
    """Keras's MonitorCallback decision: ``current`` improves on ``best`` when
    ``current + min_delta < best`` ("min") or ``current - min_delta > best`` ("max"); any value
    improves on ``best=None``."""

    monitor: str
    mode: str
    min_delta: float

    def _is_improvement(self, current: float, best: float | None) -> bool:
        if best is None:
            return True
        if self.mode == "min":
            return current + self.min_delta < best
        return current - self.min_delta > best


def _per_batch(cls: type, per_batch_cls: type, wanted: bool) -> Any:
    # fit syncs with the device after every batch for callbacks whose class overrides
    # on_train_batch_end; the per-batch subclass is used only when asked for, so an epoch-only
    # callback costs nothing during the epoch.
    return object.__new__(per_batch_cls if wanted else cls)


class ModelCheckpoint(_MonitorMixin, Callback):
    """Save the model (or only its weights) during training, with ``keras.callbacks.ModelCheckpoint``'s
    decisions.

    At each epoch end (``save_freq="epoch"``), or every ``save_freq`` training steps (an int),
    the path is ``filepath.format(epoch=epoch + 1, **logs)`` (e.g. ``"ckpt/{epoch:02d}-{val_loss:.4f}"``;
    per-step saves also get ``batch``, the batch's 1-based number within its epoch, Keras's
    ``batch + 1``). The steps saved at are counted across epochs, as Keras's: every
    ``save_freq``-th global step, so with ``save_freq=2`` and 3 steps an epoch
    ``"w-{epoch}-{batch}"`` names w-1-2, w-2-1, w-2-3. Without ``save_best_only`` every save is
    written. With it, a save is written only when ``logs[monitor]`` improves on the best so far
    (``initial_value_threshold`` to start from, else the first value always counts); a missing
    monitor warns and saves, as Keras.

    What is written: the whole model as a :func:`jaxcnn.checkpoint.export` directory
    (``params.msgpack`` + ``model.json``; reload with :func:`jaxcnn.checkpoint.load_state`), or,
    with ``save_weights_only``, one file holding ``{"params", "batch_stats"}`` in Flax's msgpack
    serialisation (read it back with ``flax.serialization.from_bytes(template, data)``). An
    export records how to rebuild the model: ``model_name`` (a :func:`jaxcnn.get_model` name,
    with ``model_kwargs``) when given, else the state's own module (its registry name, or its
    class and attributes); a model behind :class:`jaxcnn.augment.Augmented` layers is exported
    as the bare model, which has the same parameters.

    Args:
      filepath: path pattern, formatted with ``epoch`` (1-based) and the epoch's logs.
      monitor: the logged value to compare ("val_loss" by default, as Keras).
      verbose: 1 prints a line per decision.
      save_best_only: write only improvements of ``monitor``.
      save_weights_only: write the weights file instead of an export directory.
      mode: "min", "max" or "auto" (max for accuracies, min otherwise).
      save_freq: "epoch" or a number of training steps.
      initial_value_threshold: the best value to beat at the start.
      model_name, model_kwargs: how the export rebuilds the model.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> ModelCheckpoint:
        save_freq = kwargs.get("save_freq", args[6] if len(args) > 6 else "epoch")
        return _per_batch(cls, _ModelCheckpointPerStep, save_freq != "epoch")

    def __init__(
        self,
        filepath: str | Any,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        model_name: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ):
        import os

        self.filepath = os.fspath(filepath)
        if not self.filepath:
            raise ConfigError("ModelCheckpoint filepath is empty; give a path such as 'checkpoints/{epoch:02d}'")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq <= 0):
            raise ConfigError(f"ModelCheckpoint save_freq must be 'epoch' or a positive number of steps, got {save_freq!r}")
        if self.filepath.lower().endswith((".keras", ".h5")):  # Keras's formats: not what is written here
            from jaxcnn.checks import _user_stacklevel

            if save_weights_only:
                what, fix = "a Flax msgpack file of the weights", "name it .msgpack, and read it with flax.serialization.from_bytes"
            else:
                what, fix = "an export directory (model.json, params.msgpack)", "name it without the extension, and reload it with jaxcnn.checkpoint.load_state"
            warnings.warn(
                f"ModelCheckpoint({self.filepath!r}) writes {what}, not Keras's {os.path.splitext(self.filepath)[1]} format; {fix}",
                UserWarning, stacklevel=_user_stacklevel(),
            )
        self.monitor, self.verbose = monitor, verbose
        self.mode = _auto_mode(monitor, mode, "ModelCheckpoint")
        self.min_delta = 0.0
        self.save_best_only, self.save_weights_only, self.save_freq = save_best_only, save_weights_only, save_freq
        self.initial_value_threshold = initial_value_threshold
        self.best: float | None = initial_value_threshold
        self.model_name, self.model_kwargs = model_name, dict(model_kwargs or {})
        self.saved: list[str] = []  # paths written, in order
        self._epoch = 0

    def on_train_begin(self, loop: Loop) -> None:
        # The best value is not reset: as Keras's, one ModelCheckpoint passed to a second fit
        # (training on) writes only what beats the first fit's best.
        if not self.save_weights_only and self.model_name is None:
            import inspect

            from jaxcnn import checkpoint

            param = inspect.signature(checkpoint.export).parameters.get("model_name")
            if param is not None and param.default is inspect.Parameter.empty:
                raise ConfigError(
                    "ModelCheckpoint needs model_name=<a jaxcnn.get_model name> to export the whole model "
                    "(e.g. ModelCheckpoint(path, model_name='mnist_cnn')), or save_weights_only=True"
                )

    def on_epoch_begin(self, epoch: int, loop: Loop) -> None:
        self._epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        if self.save_freq == "epoch":
            self._save(epoch, None, logs, loop)

    def _path(self, epoch: int, batch: int | None, logs: dict[str, float]) -> str:
        fields = dict(logs)
        for name, alias in _ALIASES.items():  # "{val_acc:.4f}" with accuracy logged as val_accuracy
            if name not in fields and alias in fields:
                fields[name] = fields[alias]
        if batch is not None:
            fields["batch"] = batch + 1  # Keras's _get_file_path: the 0-based batch of the epoch, + 1
        try:
            return self.filepath.format(epoch=epoch + 1, **fields)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"ModelCheckpoint filepath {self.filepath!r} cannot be formatted ({type(e).__name__}: {e}); "
                f"it may use epoch and the logged values: {', '.join(fields)}"
            ) from None

    def _should_save(self, epoch: int, logs: dict[str, float], path: str) -> bool:
        if not self.save_best_only:
            if self.verbose:
                print(f"Epoch {epoch + 1}: saving model to {path}")
            return True
        current = monitored(logs, self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=_user_stacklevel())
            return True
        # Keras 3.15 (the pinned version) prints "None" before the first value; older Keras 3 printed inf.
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self._is_improvement(current, self.best):
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {best} to {current:.5f}, saving model to {path}")
            self.best = float(current)
            return True
        if self.verbose:
            print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {best}")
        return False

    def _save(self, epoch: int, batch: int | None, logs: dict[str, float], loop: Loop) -> None:
        path = self._path(epoch, batch, logs)
        if not self._should_save(epoch, logs, path):
            return
        self.saved.append(path)
        if not _is_primary():
            return
        import jax
        from flax import serialization

        from jaxcnn import checkpoint

        state = loop.state
        if self.save_weights_only:
            import os

            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            variables = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
            checkpoint.atomic_write(path, serialization.to_bytes(variables))
        else:
            token = checkpoint._in_model_checkpoint.set(True)  # a Keras file name was warned of when this was made
            try:
                if self.model_name is not None:
                    checkpoint.export(path, state, self.model_name, self.model_kwargs)
                else:  # an export that rebuilds the model from the state itself
                    checkpoint.export(path, state)
            finally:
                checkpoint._in_model_checkpoint.reset(token)

    def get_state(self) -> dict[str, Any]:
        return {"best": None if self.best is None else float(self.best), "saved": list(self.saved)}

    def set_state(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.saved = list(state.get("saved", []))


class _ModelCheckpointPerStep(ModelCheckpoint):
    """ModelCheckpoint with an int ``save_freq``: saves every ``save_freq`` global steps, the
    file named with the batch's number within its epoch."""

    def on_train_batch_end(self, step: int, logs: dict[str, float], loop: Loop) -> None:
        if (step + 1) % int(self.save_freq) == 0:
            self._save(self._epoch, step - loop.epoch_first_step, logs, loop)


class ReduceLROnPlateau(_MonitorMixin, Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving, with
    ``keras.callbacks.ReduceLROnPlateau``'s decisions.

    At each epoch end: during a cooldown, count it down and reset ``wait``; an improvement
    (beyond ``min_delta``; the first value always counts) becomes the best and resets ``wait``;
    otherwise, outside a cooldown, ``wait += 1`` and once ``wait >= patience`` the rate becomes
    ``max(lr * factor, min_lr)`` (when ``lr > min_lr``), ``wait`` resets and a cooldown of
    ``cooldown`` epochs starts. The new rate applies from the next epoch; it is written into the
    optimizer state (an ``optax.inject_hyperparams`` optimizer, as every :mod:`jaxcnn.optim` one),
    so nothing recompiles. With a learning-rate schedule the rate cannot be set, and training
    stops before the first epoch with a ``ConfigError``.

    Args:
      monitor: the logged value to watch ("val_loss" by default).
      factor: 0 < factor < 1.
      patience: epochs without improvement before reducing.
      verbose: 1 prints a line when reducing.
      mode: "min", "max" or "auto".
      min_delta: smallest change that counts as an improvement (1e-4, as Keras).
      cooldown: epochs to wait after a reduction before counting again.
      min_lr: lower bound of the rate.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ):
        if not 0 < factor < 1:
            raise ConfigError(f"ReduceLROnPlateau factor must be between 0 and 1 (new lr = lr * factor), got {factor}")
        if patience < 0 or cooldown < 0 or min_lr < 0:
            raise ConfigError(
                f"ReduceLROnPlateau patience, cooldown and min_lr must be >= 0, got {patience}, {cooldown}, {min_lr}"
            )
        self.monitor, self.factor, self.patience, self.verbose = monitor, float(factor), patience, verbose
        self.mode = _auto_mode(monitor, mode, "ReduceLROnPlateau")
        self.min_delta, self.cooldown, self.min_lr = abs(min_delta), cooldown, float(min_lr)
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.cooldown_counter = 0
        self.wait = 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, loop: Loop) -> None:
        self._reset()
        loop.learning_rate = loop.learning_rate  # fails now, not after epochs, if the rate cannot be set

    def decide(self, epoch: int, current: float, lr: float) -> float | None:
        """Keras's decision for one epoch end: the new learning rate, or None to keep ``lr``."""
        import numpy as np

        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = float(current)
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and lr > np.float32(self.min_lr):
                new_lr = max(lr * self.factor, self.min_lr)
                self.cooldown_counter = self.cooldown
                self.wait = 0
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
                return new_lr
        return None

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        current = monitored(logs, self.monitor)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(logs)}.",
                stacklevel=_user_stacklevel(),
            )
            return
        new_lr = self.decide(epoch, current, loop.learning_rate)
        if new_lr is not None:
            loop.learning_rate = new_lr

    def get_state(self) -> dict[str, Any]:
        # The rate itself lives in the optimizer state, which every checkpoint holds.
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])


class CSVLogger(Callback):
    """Stream each epoch's logs to a CSV file, as ``keras.callbacks.CSVLogger``.

    Columns: ``epoch`` (0-based, as Keras) and the log keys sorted by name, ``"NA"`` where a value
    is missing. When no validation key is logged, Keras adds ``val_`` copies of the keys (empty
    columns for a later run with validation); here only of the metrics, not of fit's
    ``learning_rate``, ``time_s``, ``examples_per_s`` and ``train_time_s``
    (:data:`jaxcnn.metrics.FIT_TAIL`), which have no validation value. The file is flushed after
    every row. ``append=True`` continues an existing file: a non-empty one keeps its header, and
    the rows take its columns (``"NA"`` for a column this run does not log; a key the header lacks
    is left out), so the file stays one table whatever the runs logged.

    On a resumed run (``set_state`` from a checkpoint) the file is continued whatever ``append``
    says: rows written after the checkpoint by the interrupted run are dropped first, so the file
    ends as that of a run never interrupted.
    """

    def __init__(self, filename: str | Any, separator: str = ",", append: bool = False):
        import os

        self.filename, self.sep, self.append = os.fspath(filename), separator, append
        self.keys: list[str] | None = None
        self.last_epoch: int | None = None
        self._file: Any = None
        self._writer: Any = None
        self._resumed = False

    def on_train_begin(self, loop: Loop) -> None:
        self._close()
        self.keys, self.last_epoch, self._resumed = None, None, False

    def set_state(self, state: dict[str, Any]) -> None:
        self.keys = list(state["keys"]) if state.get("keys") is not None else None
        self.last_epoch = state.get("last_epoch")
        self._resumed = True

    def get_state(self) -> dict[str, Any]:
        return {"keys": self.keys, "last_epoch": self.last_epoch}

    def _open(self) -> None:
        import csv
        import os

        os.makedirs(os.path.dirname(self.filename) or ".", exist_ok=True)
        exists = os.path.isfile(self.filename)
        header = True
        if self._resumed and exists:
            # Keep the header and the rows up to the checkpointed epoch.
            with open(self.filename, newline="") as f:
                rows = list(csv.reader(f, delimiter=self.sep))
            keep = rows[:1] + [r for r in rows[1:] if r and self.last_epoch is not None and int(r[0]) <= self.last_epoch]
            with open(self.filename, "w", newline="") as f:
                csv.writer(f, delimiter=self.sep).writerows(keep)
            header = not keep
        elif self.append and exists:
            with open(self.filename, newline="") as f:
                first = next(csv.reader(f, delimiter=self.sep), [])
            header = not first
            if first:  # the file's columns, whatever this run logs (Keras would write its own under them)
                self.keys = first[1:]
        mode = "a" if (self._resumed or self.append) and exists else "w"
        self._file = open(self.filename, mode, newline="")
        self._write_header = header

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        import csv

        from jaxcnn.metrics import FIT_TAIL

        if _is_primary() and self._file is None:
            self._open()  # on a resumed run, drops the rows after self.last_epoch (the checkpoint's)
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys.extend(f"val_{k}" for k in list(self.keys) if k not in FIT_TAIL)
        self.last_epoch = epoch
        if not _is_primary():
            return
        if self._writer is None:
            sep = self.sep

            class Dialect(csv.excel):
                delimiter = sep

            self._writer = csv.DictWriter(self._file, fieldnames=["epoch", *self.keys], dialect=Dialect)
            if self._write_header:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch, **{k: logs.get(k, "NA") for k in self.keys}})
        self._file.flush()

    def _close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._file = self._writer = None

    def on_train_end(self, loop: Loop) -> None:
        self._close()


class TensorBoard(Callback):
    """Write TensorBoard event files (with tensorboardX: no TensorFlow), laid out as Keras's.

    ``log_dir/train`` gets ``epoch_<name>`` for every training log of each epoch (``epoch_loss``,
    ``epoch_accuracy``, ``epoch_learning_rate``, ...), at step = epoch (0-based, as Keras);
    ``log_dir/validation`` gets the ``val_`` logs under the same names (``epoch_loss``...), so
    TensorBoard draws training and validation on one chart. With ``update_freq`` a number N (or
    "batch", N = 1), ``batch_loss`` and ``batch_accuracy`` (the epoch's running values) go to
    ``train`` every N training steps, at step = the global step + 1. With ``histogram_freq`` N,
    every N epochs each parameter and batch statistic gets a histogram ``<layer>/<name>/histogram``.

    View with ``tensorboard --logdir log_dir``. A resumed run writes new event files in the same
    folders; TensorBoard's reader drops the interrupted run's values at the epochs written again.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> TensorBoard:
        update_freq = kwargs.get("update_freq", args[2] if len(args) > 2 else "epoch")
        return _per_batch(cls, _TensorBoardPerStep, update_freq != "epoch")

    def __init__(self, log_dir: str | Any = "logs", histogram_freq: int = 0, update_freq: str | int = "epoch"):
        import os

        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq <= 0):
            raise ConfigError(f"TensorBoard update_freq must be 'epoch', 'batch' or a positive number of steps, got {update_freq!r}")
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ConfigError(f"TensorBoard histogram_freq must be 0 (off) or a positive number of epochs, got {histogram_freq!r}")
        self.log_dir, self.histogram_freq, self.update_freq = os.fspath(log_dir), histogram_freq, update_freq
        self._writers: dict[str, Any] = {}

    def _writer(self, which: str) -> Any:
        if which not in self._writers:
            import os

            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # pragma: no cover
                raise ConfigError("TensorBoard needs the tensorboardX package: pip install tensorboardX") from None
            self._writers[which] = SummaryWriter(os.path.join(self.log_dir, which))
        return self._writers[which]

    def on_train_begin(self, loop: Loop) -> None:
        if _is_primary():
            self._writer("train")  # fail early if tensorboardX is missing or log_dir is not writable

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        if not _is_primary():
            return
        train = self._writer("train")
        for name, value in logs.items():
            if name.startswith("val_"):
                self._writer("validation").add_scalar(f"epoch_{name[4:]}", value, epoch)
            else:
                train.add_scalar(f"epoch_{name}", value, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._histograms(train, loop, epoch)
        for w in self._writers.values():
            w.flush()

    def _histograms(self, writer: Any, loop: Loop, epoch: int) -> None:
        import jax
        import numpy as np

        trees = {"": loop.state.params, "batch_stats/": loop.state.batch_stats or {}}
        for prefix, tree in trees.items():
            for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
                name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
                writer.add_histogram(f"{prefix}{name}/histogram", np.asarray(leaf, np.float32), epoch)

    def on_train_end(self, loop: Loop) -> None:
        for w in self._writers.values():
            w.close()
        self._writers = {}


class _TensorBoardPerStep(TensorBoard):
    """TensorBoard with per-step scalars every ``update_freq`` steps."""

    def on_train_batch_end(self, step: int, logs: dict[str, float], loop: Loop) -> None:
        if (step + 1) % int(self.update_freq) or not _is_primary():
            return
        train = self._writer("train")
        for name, value in logs.items():
            train.add_scalar(f"batch_{name}", value, step + 1)


class TerminateOnNaN(Callback):
    """Stop training when the loss is NaN or infinite, as ``keras.callbacks.TerminateOnNaN``.

    ``jaxcnn.fit`` already stops by default: ``stop_on_nan=True`` raises ``TrainingError`` (with
    the weights of the last good step) the moment a step's loss is not finite, so this callback
    only matters with ``fit(..., stop_on_nan=False)``. There, the bad step is skipped, the epoch
    ends early and logs ``loss = nan``; this callback then sets ``stop_training`` (the run ends
    after this epoch's callbacks, with the last good weights and the history so far), or raises
    ``TrainingError`` with ``raise_error=True``. Without it, training would go on to the next
    epoch from the last good weights.
    """

    def __init__(self, raise_error: bool = False):
        self.raise_error = raise_error
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        loss = logs.get("loss")
        if loss is None or math.isfinite(loss):
            return
        self.stopped_epoch = epoch
        if self.raise_error:
            from jaxcnn.errors import TrainingError

            raise TrainingError(
                f"NaN or infinite loss at epoch {epoch + 1}; training terminated. Lower the learning rate or check the inputs for NaN",
                state=loop.state, history=loop.history,
            )
        print(f"Epoch {epoch + 1}: invalid loss, terminating training")
        loop.stop_training = True

    def get_state(self) -> dict[str, Any]:
        return {"stopped_epoch": self.stopped_epoch}

    def set_state(self, state: dict[str, Any]) -> None:
        self.stopped_epoch = state.get("stopped_epoch")
