"""What every training experiment shares: its config, flags, run directory and outputs.

An experiment module (``experiments/mnist.py``, ``experiments/cifar10.py``) is a default
:class:`RunConfig` plus a call to :func:`main`. A run writes, into its run directory:

config.json, summary.txt, digits.png (first training images with labels), history.json,
history.csv, history.png (loss and accuracy per epoch, best epoch marked), predictions.png
("Actual: 7, Predicted: 7" on test images), metrics.json (test loss and accuracy, epochs run, best
epoch, wall time), and model/ (params.msgpack + model.json, reloaded by
``python -m experiments.predict``), and checkpoints/ (orbax, once an epoch, the latest and the best
by val_loss: the whole training state, the history so far and the callbacks' state).

Reliability: ``--resume`` with the ``--out`` of an interrupted run continues it from its latest
checkpoint and ends with the same history and parameters as a run never interrupted (the data
order, dropout keys and learning rate all derive from the seed, the epoch and the saved state).
A NaN or infinite loss stops the run with a one-line error (exit status 2) that names the epoch
and step; the last good checkpoint and history.json (the epochs completed) are kept.

Several processes (hosts): set ``JAXCNN_COORDINATOR``/``JAXCNN_NUM_PROCESSES``/``JAXCNN_PROCESS_ID``
or ``--coordinator``/``--num-processes``/``--process-id`` (``--coordinator auto`` under SLURM);
see docs/distributed.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxcnn.errors import ConfigError, JaxcnnError


@dataclass(frozen=True)
class RunConfig:
    """One training run. Defaults are the report's MNIST settings (1.4)."""

    name: str = "mnist"  # run-directory prefix
    dataset: str = "mnist"  # jaxcnn.data.load name
    model: str = "mnist_cnn"  # jaxcnn.models registry name
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # overrides of the model's attributes
    optimizer: str = "rmsprop"  # rmsprop | adamax | adam | sgd, Keras defaults
    learning_rate: float = 0.001  # initial learning rate
    lr_decay: tuple[int, float] | None = None  # (decay_steps, rate): staircase ExponentialDecay
    lr_schedule_after: int | None = None  # keep lr for this many epochs, then x exp(-0.1) per epoch
    epochs: int = 10  # upper bound; early stopping may end sooner
    batch_size: int = 128
    validation_split: float = 0.2  # last fraction of the training set; 0 = validate on the test split
    patience: int | None = 5  # EarlyStopping(monitor="val_loss") patience; None = no early stopping
    seed: int = 0  # parameters, dropout and shuffling all derive from it
    limit: int | None = None  # use only the first N training examples (before the split)
    data_dir: str | None = None  # where the data files are; None = cache / bundled / download
    out: str | None = None  # run directory; None = runs/<name>-<time>
    devices: str | int | None = None  # None: jaxcnn.fit's default ("auto"); "all", "auto" or a count of local devices
    verbose: int = 1  # 0 silent, 1 progress bars, 2 one line per epoch
    precision: str = "fp32"  # "bf16": bfloat16 compute, float32 parameters (mixed precision)
    resume: bool = False  # continue the run in `out` from its latest checkpoint (a new run if it has none)
    checkpoint: bool = True  # save <out>/checkpoints once an epoch (the latest and the best by val_loss)
    coordinator: str | None = None  # multi-process: "host:port" of process 0, or "auto" (SLURM, MPI...)
    num_processes: int | None = None  # multi-process: how many processes in all
    process_id: int | None = None  # multi-process: this process's rank, 0..num_processes-1


def _compute_dtype(config: RunConfig) -> dict[str, Any]:
    if config.precision == "fp32":
        return {}
    if config.precision == "bf16":
        import jax.numpy as jnp

        return {"dtype": jnp.bfloat16}
    raise ConfigError(f"precision must be 'fp32' or 'bf16', got {config.precision!r}")


def build_parser(description: str, defaults: RunConfig) -> argparse.ArgumentParser:
    """Flags that map onto :class:`RunConfig`, with its values as defaults."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="batch size (default %(default)s)")
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="initial learning rate (default %(default)s)")
    p.add_argument("--patience", type=int, default=defaults.patience, help="early-stopping patience on val_loss; -1 turns it off (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples, for quick runs")
    p.add_argument("--data-dir", default=None, help="directory with the data files (default: cache, bundled copy, download)")
    p.add_argument("--out", default=None, help=f"run directory (default runs/{defaults.name}-<time>)")
    p.add_argument("--devices", default=defaults.devices, help="'auto' (default: data parallel over one XLA device per CPU core; one GPU), 'all', or '1'")
    p.add_argument("--verbose", type=int, default=defaults.verbose, choices=(0, 1, 2), help="0 silent, 1 progress bars, 2 one line per epoch")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=defaults.precision, help="bf16: bfloat16 compute with float32 parameters (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint (starts it if it has none)")
    p.add_argument("--no-checkpoint", dest="checkpoint", action="store_false", default=defaults.checkpoint, help="do not save <out>/checkpoints each epoch")
    p.add_argument("--coordinator", default=None, help="multi-process: host:port of process 0, or 'auto' (default $JAXCNN_COORDINATOR)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process: number of processes (default $JAXCNN_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None, help="multi-process: this process's rank (default $JAXCNN_PROCESS_ID)")
    return p


def config_from_args(args: argparse.Namespace, defaults: RunConfig, **extra: Any) -> RunConfig:
    patience = None if args.patience is not None and args.patience < 0 else args.patience
    return dataclasses.replace(
        defaults,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=patience,
        seed=args.seed,
        limit=args.limit,
        data_dir=args.data_dir,
        out=args.out,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        verbose=args.verbose,
        precision=getattr(args, "precision", defaults.precision),
        resume=getattr(args, "resume", defaults.resume),
        checkpoint=getattr(args, "checkpoint", defaults.checkpoint),
        coordinator=getattr(args, "coordinator", defaults.coordinator),
        num_processes=getattr(args, "num_processes", defaults.num_processes),
        process_id=getattr(args, "process_id", defaults.process_id),
        **extra,
    )


# ----------------------------------------------------------------------------------------------
# Several processes


DISTRIBUTED_ENV = ("JAXCNN_COORDINATOR", "JAXCNN_NUM_PROCESSES", "JAXCNN_PROCESS_ID")


def _env_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: dict[str, str] | None = None,
) -> bool:
    """Join a multi-process JAX job when asked to; return whether this is one.

    The arguments win over the environment variables ``JAXCNN_COORDINATOR`` ("host:port" of
    process 0, or "auto"), ``JAXCNN_NUM_PROCESSES`` and ``JAXCNN_PROCESS_ID`` (and
    ``JAXCNN_LOCAL_DEVICE_IDS``, e.g. "0,1", to pick this process's GPUs). With none set this does
    nothing and returns False. "auto" lets ``jax.distributed.initialize()`` read the cluster
    (SLURM, Open MPI, Kubernetes, TPU pods). Must run before JAX touches a device; a second call
    is a no-op. Bad values raise :class:`ConfigError` before anything is started.
    """
    env = os.environ if environ is None else environ
    coordinator = coordinator or env.get("JAXCNN_COORDINATOR") or None
    num_processes = num_processes if num_processes is not None else _env_int(env.get("JAXCNN_NUM_PROCESSES"), "JAXCNN_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int(env.get("JAXCNN_PROCESS_ID"), "JAXCNN_PROCESS_ID")
    local_ids = env.get("JAXCNN_LOCAL_DEVICE_IDS") or None
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise ConfigError(
                "--num-processes/--process-id (or JAXCNN_NUM_PROCESSES/JAXCNN_PROCESS_ID) were given without "
                "--coordinator (JAXCNN_COORDINATOR): give the host:port of process 0, or 'auto' under SLURM"
            )
        return False
    kwargs: dict[str, Any] = {}
    if coordinator != "auto":
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"coordinator must be 'host:port' (e.g. node001:12355) or 'auto', got {coordinator!r}")
        if num_processes is None or process_id is None:
            raise ConfigError(
                f"coordinator {coordinator} needs the number of processes and this process's id too: "
                "--num-processes N --process-id I (or JAXCNN_NUM_PROCESSES, JAXCNN_PROCESS_ID)"
            )
        kwargs["coordinator_address"] = coordinator
    if num_processes is not None:
        if num_processes < 1:
            raise ConfigError(f"the number of processes must be at least 1, got {num_processes}")
        kwargs["num_processes"] = num_processes
    if process_id is not None:
        if num_processes is not None and not 0 <= process_id < num_processes:
            raise ConfigError(f"process id {process_id} is outside 0..{num_processes - 1} for {num_processes} processes")
        kwargs["process_id"] = process_id
    if local_ids:
        try:
            kwargs["local_device_ids"] = [int(i) for i in local_ids.split(",")]
        except ValueError:
            raise ConfigError(f"JAXCNN_LOCAL_DEVICE_IDS must be comma-separated integers, got {local_ids!r}") from None

    import jax

    if jax.distributed.is_initialized():
        return True
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"cannot join the multi-process job ({e}); check the coordinator address, that every process "
            "was started, and that nothing used JAX before"
        ) from None
    return True


def _is_primary() -> bool:
    import jax

    return jax.process_index() == 0


def jax_process_count() -> int:
    import jax

    return jax.process_count()


def prepare_run_dir(config: RunConfig) -> Path:
    """Create the run directory. Refuses one that already holds results (nothing written is
    overwritten) unless ``config.resume``, and one that cannot be written, with a message saying
    what to do."""
    if config.resume and not config.out:
        raise ConfigError("--resume needs --out: the run directory of the run to continue")
    out = Path(config.out or f"runs/{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not config.resume:
        raise ConfigError(
            f"--out {out} already holds files; choose a new directory so that no result is overwritten, "
            "or add --resume to continue that run"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable directory") from None
    return out


def write_json(path: Path, obj: Any) -> None:
    from jaxcnn.checkpoint import atomic_write

    atomic_write(path, json.dumps(obj, indent=2, default=float) + "\n")


def _callbacks(config: RunConfig) -> list[Any]:
    from jaxcnn.callbacks import EarlyStopping, LearningRateScheduler, keep_then_decay

    cbs: list[Any] = []
    if config.patience is not None:
        cbs.append(EarlyStopping(monitor="val_loss", patience=config.patience, verbose=1 if config.verbose else 0))
    if config.lr_schedule_after is not None:
        cbs.append(LearningRateScheduler(keep_then_decay(config.lr_schedule_after, 0.1)))
    return cbs


#: Fields that must be the same for ``--resume`` to give the run never interrupted. ``epochs`` may
#: grow (train longer); ``verbose``, ``devices``, ``data_dir`` and the process flags may change.
RESUME_MUST_MATCH = (
    "dataset", "model", "model_kwargs", "optimizer", "learning_rate", "lr_decay", "lr_schedule_after",
    "batch_size", "validation_split", "patience", "seed", "limit", "precision",
)


def validate_config(config: RunConfig) -> None:
    """Check what can be checked before anything is written or compiled."""
    from jaxcnn import models, optim
    from jaxcnn.data import DATASETS

    for what, value in (("--epochs", config.epochs), ("--batch-size", config.batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    if config.limit is not None and config.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {config.limit}")
    if not 0.0 <= config.validation_split < 1.0:
        raise ConfigError(f"validation_split must be in [0, 1), got {config.validation_split}")
    models.get_model(config.model, **config.model_kwargs)  # unknown name or attribute
    if config.dataset.strip().lower().replace("-", "_") not in DATASETS:
        raise ConfigError(f"unknown data set {config.dataset!r}; known data sets: {', '.join(DATASETS)}")
    optim.get_optimizer(config.optimizer, config.learning_rate)  # unknown name, non-positive rate
    _devices(config.devices)


def _devices(value: str | int | None) -> str | int | None:
    if value is None or value in ("all", "auto"):
        return value
    if (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    raise ConfigError(f"--devices must be 'auto', 'all' or a number of devices, got {value!r}")


def _check_resumable(out: Path, config: RunConfig) -> None:
    """Refuse to resume a run that was started with other settings: it would not be the same run."""
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); cannot check that --resume continues the same run") from None
    now = json.loads(json.dumps(dataclasses.asdict(config), default=float))
    for key in RESUME_MUST_MATCH:
        if key in before and before[key] != now.get(key):
            raise ConfigError(
                f"--resume: the run in {out} was started with {key}={before[key]!r}, not {now.get(key)!r}; "
                "resume with the same settings, or start a new run with another --out"
            )


def _write_history(out: Path, history: Any) -> None:
    write_json(out / "history.json", history.to_dict())
    (out / "history.csv").write_text(history.to_csv())


def run(config: RunConfig) -> dict[str, Any]:
    """Train and evaluate per ``config``, writing every output to its run directory.

    With ``config.checkpoint`` (default) the whole training state is saved to
    ``<out>/checkpoints`` after every epoch; with ``config.resume`` an interrupted run continues
    from its latest checkpoint. Returns the metrics written to ``metrics.json``.

    Raises ``ConfigError``/``DataError`` on bad settings or data (before training), and
    ``TrainingError`` when the loss becomes NaN or infinite (after writing history.json).
    """
    import numpy as np

    t_start = time.perf_counter()
    validate_config(config)
    initialize_distributed(config.coordinator, config.num_processes, config.process_id)

    import jaxcnn
    from jaxcnn import checkpoint, data, optim, plots
    from jaxcnn.callbacks import BackupAndRestore
    from jaxcnn.errors import TrainingError
    from jaxcnn.train import create_train_state

    primary = _is_primary()
    if not config.out and jax_process_count() > 1:
        raise ConfigError("several processes need --out: a run directory on a file system every process reaches")
    say = print if config.verbose and primary else (lambda *a, **k: None)
    # Everything that can fail on bad input does so before the run directory is made.
    model = jaxcnn.get_model(config.model, **config.model_kwargs, **_compute_dtype(config))
    ds = data.load(config.dataset, config.data_dir)
    if config.limit is not None:
        ds = ds.limit(config.limit)
    if primary:
        out = prepare_run_dir(config)
    else:  # process 0 checks and creates it; the others share it (a shared file system)
        out = Path(config.out or f"runs/{config.name}")
    if config.resume:
        _check_resumable(out, config)
    if primary:
        write_json(out / "config.json", dataclasses.asdict(config))
    say(f"data: {ds.name} from {ds.source}: {len(ds.x_train)} train, {len(ds.x_test)} test")

    text = jaxcnn.summary(model, ds.input_shape, name=config.model)
    names = ds.class_names if ds.name == "cifar10" else None
    if primary:
        (out / "summary.txt").write_text(text + "\n")
        plots.save(plots.labelled_images(ds.x_train, ds.y_train, range(3), class_names=names), out / "digits.png")
    say(text)

    lr: Any = config.learning_rate
    if config.lr_decay is not None:
        lr = optim.exponential_decay(config.learning_rate, config.lr_decay[0], config.lr_decay[1], staircase=True)
    x_test, y_test = data.to_float(ds.x_test), ds.y_test
    fit_kwargs: dict[str, Any] = {}
    if config.validation_split:
        fit_kwargs["validation_split"] = config.validation_split
    else:
        fit_kwargs["validation_data"] = (x_test, y_test)
    # The same initial state fit(model, ...) would build; also the template a checkpoint fills.
    state = create_train_state(model, ds.input_shape, optim.get_optimizer(config.optimizer, lr), seed=config.seed)
    callbacks = _callbacks(config)
    ckpts = checkpoint.TrainCheckpoints(out / "checkpoints") if config.checkpoint or config.resume else None
    resume = None
    if config.resume and ckpts is not None and ckpts.latest_epoch is not None:
        resume = ckpts.restore(state)
        state = resume.state
        say(f"resuming from {ckpts.directory / str(resume.epoch)}: {resume.epoch} epoch(s) done")
    elif config.resume:
        if (out / "metrics.json").is_file():
            raise ConfigError(
                f"--resume: the run in {out} has finished and has no checkpoint to continue from; "
                "start a new run with another --out"
            )
        say(f"--resume: no checkpoint in {out / 'checkpoints'}; starting the run")

    try:
        finished = resume is not None and (resume.stop_training or resume.epoch >= config.epochs)
        if finished and (out / "metrics.json").is_file():
            say(f"the run in {out} had already finished; nothing to do")
            return json.loads((out / "metrics.json").read_text())
        if finished:
            history = resume.history
        else:
            # Last in the list: it restores the others after their on_train_begin reset them, and
            # saves their state once they have seen the epoch.
            saver = ckpts if config.checkpoint else None
            all_callbacks = [*callbacks, BackupAndRestore(saver, callbacks, resume, monitor="val_loss")]
            try:
                state, history = jaxcnn.fit(
                    state,
                    data.to_float(ds.x_train),
                    ds.y_train,
                    epochs=config.epochs,
                    batch_size=config.batch_size,
                    seed=config.seed,
                    callbacks=all_callbacks,
                    verbose=config.verbose if primary else 0,
                    **({} if config.devices is None else {"devices": _devices(config.devices)}),  # None: fit's default
                    initial_epoch=resume.epoch if resume is not None else 0,
                    **fit_kwargs,
                )
            except TrainingError as e:
                history = getattr(e, "history", None)
                if history is not None and primary:
                    _write_history(out, history)
                last = ckpts.latest_epoch if ckpts is not None else None
                kept = (
                    f"the last good checkpoint (after epoch {last}) is in {ckpts.directory}"
                    if last is not None
                    else "no checkpoint was written before it"
                )
                raise TrainingError(f"{e}. {kept}; the history so far is in {out / 'history.json'}") from None
    finally:
        if ckpts is not None:
            ckpts.close()

    # Every process computes (with several, each computation spans them all); process 0 writes.
    best = history.best_epoch("val_loss") if "val_loss" in history.history else history.epoch[-1]
    if primary:
        _write_history(out, history)
        plots.save(plots.training_curves(history, best_epoch=best, title=f"{config.model} on {ds.name}"), out / "history.png")
        checkpoint.export(out / "model", state, config.model, config.model_kwargs)

    test = jaxcnn.evaluate(state, x_test, y_test, batch_size=max(config.batch_size, 256))
    shown = np.arange(min(9, len(x_test)))
    predicted = jaxcnn.predict(state, x_test[shown], output="classes")
    if primary:
        plots.save(
            plots.labelled_images(ds.x_test, y_test, shown, predicted=predicted, class_names=names),
            out / "predictions.png",
        )
    per_epoch = history.history["time_s"]
    metrics = {
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "epochs_run": len(history),
        "best_epoch": best + 1,
        "wall_time_s": time.perf_counter() - t_start,
        "epoch_time_s": per_epoch,
        "steady_epoch_time_s": float(np.median(per_epoch[1:])) if len(per_epoch) > 1 else per_epoch[0],
        "examples_per_s": float(np.median(history.history["examples_per_s"][1:] or history.history["examples_per_s"])),
        "last_epoch": {k: v[-1] for k, v in history.history.items()},
        "resumed_from_epoch": resume.epoch if resume is not None else None,
    }
    if primary:
        write_json(out / "metrics.json", metrics)
    say(
        f"test loss {test['loss']:.4f}, test accuracy {test['accuracy']:.4f}; {len(history)} epochs "
        f"(best {best + 1}), {metrics['wall_time_s']:.1f}s in all. Outputs in {out}"
    )
    return metrics


def main_guard(fn, argv: list[str] | None) -> int:
    """Run ``fn(argv)``; turn jaxcnn's own errors into a one-line message and exit status 2."""
    try:
        fn(argv)
    except JaxcnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
