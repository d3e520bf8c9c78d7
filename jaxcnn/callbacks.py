"""Keras-style callbacks for :func:`jaxcnn.train.fit`.

A callback sees the running :class:`~jaxcnn.train.Loop` (its ``state``, ``history``,
``learning_rate`` and ``stop_training``) at the start and end of training and of each epoch, and
may change them: :class:`EarlyStopping` sets ``stop_training`` and can put the best weights back,
:class:`LearningRateScheduler` sets the learning rate for the next epoch, which changes an array
in the optimizer state and so never recompiles the train step. :class:`BackupAndRestore` saves
everything once an epoch (orbax, via :mod:`jaxcnn.checkpoint`) so that a run can be resumed; it
keeps each callback's ``get_state()`` and gives it back with ``set_state()``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jaxcnn.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from jaxcnn.train import Loop


def _snapshot(loop: Loop) -> tuple[Any, Any]:
    """A host copy of the weights: the train step donates (reuses) the device buffers."""
    import jax

    return jax.device_get((loop.state.params, loop.state.batch_stats))


class Callback:
    """Base class: override any of the hooks. ``logs`` holds the epoch's metrics by name."""

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


class EarlyStopping(Callback):
    """Stop when ``monitor`` stops improving, with the semantics of ``keras.callbacks.EarlyStopping``.

    At each epoch end: ``wait += 1``; an improvement (``current - min_delta < best`` in "min" mode,
    ``current - min_delta > best`` in "max" mode; min_delta counts against the direction of
    improvement) resets ``wait`` to 0; otherwise training stops once ``wait >= patience`` (never
    after the first epoch). The last weights are kept unless ``restore_best_weights``, which puts
    the best epoch's weights back at the end of training.

    Args:
      monitor: a key of the epoch logs, e.g. "val_loss" (default, as Keras) or "val_accuracy".
      min_delta: smallest change that counts as an improvement.
      patience: epochs without improvement before stopping.
      mode: "min", "max" or "auto" (max for names containing "acc", min otherwise).
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
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"EarlyStopping mode must be 'auto', 'min' or 'max', got {mode!r}")
        if patience < 0:
            raise ConfigError(f"EarlyStopping patience must be >= 0, got {patience}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
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
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"EarlyStopping monitors {self.monitor!r}, which is not in the logs "
                f"(available: {', '.join(logs)}); pass validation data or monitor another metric",
                stacklevel=2,
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

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0):
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, loop: Loop) -> None:
        lr = float(self.schedule(epoch, loop.learning_rate))
        if not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"the learning-rate schedule returned {lr} at epoch {epoch}; it must be positive")
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
    """A callback from plain functions, e.g. ``LambdaCallback(on_epoch_end=lambda e, logs, loop: ...)``."""

    def __init__(self, **hooks: Callable[..., Any]):
        for name, fn in hooks.items():
            if not hasattr(Callback, name):
                raise ConfigError(f"unknown callback hook {name!r}")
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
        self.checkpoints, self.callbacks, self.resume = checkpoints, list(callbacks), resume
        self.monitor = monitor or getattr(checkpoints, "monitor", "val_loss")
        if resume is not None and len(resume.callbacks) not in (0, len(self.callbacks)):
            raise ConfigError(
                f"the checkpoint holds the state of {len(resume.callbacks)} callbacks but {len(self.callbacks)} "
                "were given; resume with the same callbacks (same early stopping and scheduler settings)"
            )

    def on_train_begin(self, loop: Loop) -> None:
        if self.resume is None:
            return
        loop.history.history = {k: list(v) for k, v in self.resume.history.history.items()}
        loop.history.epoch = list(self.resume.history.epoch)
        for cb, state in zip(self.callbacks, self.resume.callbacks):
            cb.set_state(state)

    def on_epoch_end(self, epoch: int, logs: dict[str, float], loop: Loop) -> None:
        if self.checkpoints is None:  # restore only
            return
        self.checkpoints.save(
            epoch + 1,
            loop.state,
            history=loop.history,
            callbacks=[cb.get_state() for cb in self.callbacks],
            stop_training=loop.stop_training,
            metrics={self.monitor: logs[self.monitor]} if self.monitor in logs else None,
        )
