"""What every training experiment shares: its config, flags, run directory and outputs.

An experiment module (``experiments/mnist.py``, ``experiments/cifar10.py``) is a default
:class:`RunConfig` plus a call to :func:`main`. A run writes, into its run directory:

config.json, summary.txt, digits.png (first training images with labels), history.json,
history.csv, history.png (loss and accuracy per epoch, best epoch marked, the learning rate when
it changed), predictions.png ("Actual: 7, Predicted: 7" on test images, wrong ones in red),
mistakes.png (wrong test predictions with their confidence), confusion.png (the test set's
confusion matrix), metrics.json (test loss and accuracy, epochs run, best
epoch, wall time), and model/ (params.msgpack + model.json, reloaded by
``python -m experiments.predict``), and checkpoints/ (orbax, once an epoch, the latest and the best
by val_loss: the whole training state, the history so far and the callbacks' state).

Every check runs before the run directory is made: the flags, the data, and everything
``jaxcnn.fit`` checks (the directory is made by a callback at the start of training). Outputs are
written through a temporary file and a rename, so a full disk leaves no half-written file.

Reliability: ``--resume --out RUN`` continues an interrupted run from its latest checkpoint,
taking every setting from ``RUN/config.json``; a flag given explicitly must agree with it
(``--epochs`` may change: more trains on; no more than already trained leaves nothing to do). It ends with the same history and parameters as a run never interrupted (the
data order, dropout keys and learning rate all derive from the seed, the epoch and the saved
state). config.json records a SHA-256 of the data and of the settings, so a resume on other data
(another ``--data-dir``) or with an edited config is refused; ``--resume`` refuses a directory
that is not a jaxcnn run. Ctrl-C stops the run (the checkpoint of the last finished epoch is
kept), prints how to resume, and exits with status 130; with ``--no-checkpoint`` it keeps the
finished epochs' history.json and history.csv instead, and says there is nothing to resume from. A NaN or infinite loss stops the run with
a one-line error (exit status 2) that names the epoch and step; the last good checkpoint and
history.json (the epochs completed) are kept.

Several processes (hosts): set ``JAXCNN_COORDINATOR``/``JAXCNN_NUM_PROCESSES``/``JAXCNN_PROCESS_ID``
or ``--coordinator``/``--num-processes``/``--process-id`` (``--coordinator auto`` under SLURM);
see docs/distributed.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import importlib
import io
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def _import_jaxcnn() -> None:
    """Import jaxcnn, turning a bad ``JAXCNN_*`` environment variable (read at import) into the
    experiments' one-line ``error:`` and exit status 2 instead of a traceback."""
    try:
        import jaxcnn  # noqa: F401
    except ValueError as e:
        if type(e).__name__ != "ConfigError":
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


_import_jaxcnn()

from jaxcnn.errors import ConfigError, JaxcnnError  # noqa: E402

#: config.json's ``jaxcnn_run`` value: marks a directory as a jaxcnn run (``--resume`` refuses
#: any other) and versions the file's meaning.
RUN_FORMAT = 1


@dataclass
class RunConfig:
    """One training run. Defaults are the report's MNIST settings (docs/assignment.md)."""

    name: str = "mnist"  # run-directory prefix
    dataset: str = "mnist"  # jaxcnn.data.load name
    model: str = "mnist_cnn"  # jaxcnn.models registry name, or "package.module:Class" (built with no arguments)
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
    test_limit: int | None = None  # evaluate (and with validation_split 0, validate) on the first N test examples
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
    tensorboard: str | None = None  # --tensorboard DIR: TensorBoard event files (DIR/train, DIR/validation)
    augment: bool = False  # cifar10 --augment: random flips and shifts of the training images (jaxcnn.augment)
    compile_cache: bool = True  # JAX's persistent compilation cache (jaxcnn.compilation_cache): a rerun compiles nothing again


def _compute_dtype(config: RunConfig) -> dict[str, Any]:
    if config.precision == "fp32":
        return {}
    if config.precision == "bf16":
        import jax.numpy as jnp

        return {"dtype": jnp.bfloat16}
    raise ConfigError(f"precision must be 'fp32' or 'bf16', got {config.precision!r}")


MODEL_HELP = (
    "a registered model (python -c 'import jaxcnn; print(jaxcnn.models.describe())'), or "
    "package.module:Class for your own Flax module, importable from where you run the command and "
    "built with no arguments (an NNX class: with rngs=nnx.Rngs(0) alone)"
)


def prog(name: str) -> str:
    """The command as users type it, for ``usage:`` lines: ``python -m experiments.NAME``."""
    return f"python -m experiments.{name}"


def build_parser(description: str, defaults: RunConfig, *, model_and_dataset: bool = False,
                 name: str = "mnist") -> argparse.ArgumentParser:
    """Flags that map onto :class:`RunConfig`, with its values as defaults. With
    ``model_and_dataset``, also ``--dataset`` and ``--model``. ``name``: the experiment's
    module, for the usage line."""
    p = argparse.ArgumentParser(prog=prog(name), description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if model_and_dataset:
        p.add_argument("--dataset", default=defaults.dataset, help="mnist, fashion_mnist or cifar10 (default %(default)s)")
        p.add_argument("--model", default=defaults.model, help=f"{MODEL_HELP} (default %(default)s)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="batch size (default %(default)s)")
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="initial learning rate (default %(default)s)")
    p.add_argument("--patience", type=int, default=defaults.patience, help="early-stopping patience on val_loss; -1 turns it off (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed, 0 to 2**32-1 (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples, for quick runs")
    p.add_argument("--test-limit", type=int, default=None,
                   help="test (and, where the run validates on the test split, validate) on only the first N test examples, for quick runs")
    p.add_argument("--data-dir", default=None, help="directory with the data files (default: cache, bundled copy, download)")
    p.add_argument("--out", default=None, help=f"run directory (default runs/{defaults.name}-<time>)")
    p.add_argument("--devices", default=defaults.devices, help="'auto' (default: data parallel over one XLA device per CPU core; one GPU), 'all', or a number of devices (1: one device)")
    p.add_argument("--verbose", type=int, default=defaults.verbose, choices=(0, 1, 2), help="0 silent, 1 progress bars, 2 one line per epoch")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=defaults.precision, help="bf16: bfloat16 compute with float32 parameters (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint, with the settings in its config.json (other flags are optional)")
    p.add_argument("--no-checkpoint", dest="checkpoint", action="store_false", default=defaults.checkpoint, help="do not save <out>/checkpoints each epoch")
    p.add_argument("--coordinator", default=None, help="multi-process: host:port of process 0, or 'auto' (default $JAXCNN_COORDINATOR)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process: number of processes (default $JAXCNN_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None, help="multi-process: this process's rank (default $JAXCNN_PROCESS_ID)")
    p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false", default=defaults.compile_cache,
                   help="do not keep compiled programs in $JAXCNN_COMPILE_CACHE (default ~/.cache/jaxcnn/xla) for the next run")
    p.add_argument("--tensorboard", metavar="DIR", default=defaults.tensorboard, help="write TensorBoard logs to DIR (view with: tensorboard --logdir DIR)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, set[str]]:
    """``parser.parse_args(argv)`` and the destinations of the flags given explicitly (what
    ``--resume`` compares with, and takes over, the run's config.json)."""
    args = parser.parse_args(argv)
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return args, set(vars(quiet.parse_args(argv)))


def _patience(value: int | None) -> int | None:
    """``--patience``: -1 turns early stopping off (None); other negative numbers are refused."""
    if value is not None and value < -1:
        raise ConfigError(f"--patience must be -1 (early stopping off) or a whole number of epochs >= 0, got {value}")
    return None if value == -1 else value


def config_from_args(
    args: argparse.Namespace,
    defaults: RunConfig,
    explicit: set[str] | None = None,
    *,
    convert: dict[str, Callable[[Any], Any]] | None = None,
    **extra: Any,
) -> RunConfig:
    """The :class:`RunConfig` the flags ask for: ``defaults`` overridden by every flag that maps
    onto a field. With ``--resume`` and a run in ``--out``, the run's config.json instead, overridden
    only by the flags in ``explicit`` (all flags when None), which must agree with it on every
    setting in :data:`RESUME_MUST_MATCH`."""
    convert = {
        "patience": _patience,
        "devices": lambda v: int(v) if str(v).isdigit() else v,
        **(convert or {}),
    }
    values = {
        f.name: convert.get(f.name, lambda v: v)(getattr(args, f.name))
        for f in dataclasses.fields(RunConfig)
        if f.name != "name" and hasattr(args, f.name)
    }
    if not values.get("resume"):
        return dataclasses.replace(defaults, **values, **extra)
    if not values.get("out"):
        raise ConfigError("--resume needs --out: the run directory of the run to continue")
    out = Path(values["out"])
    stored = read_run_config(out)
    if stored is None:  # an empty or new directory: start the run there
        return dataclasses.replace(defaults, **values, **extra)
    given = {k: v for k, v in values.items() if explicit is None or k in explicit}
    _check_same(stored, dataclasses.replace(stored, **given), out)
    return dataclasses.replace(stored, **{**given, "out": str(out), "resume": True}, **extra)


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


# ----------------------------------------------------------------------------------------------
# The run directory and its files


class RunInterrupted(JaxcnnError):
    """Ctrl-C during a run: the message says what was kept and how to resume (exit status 130)."""


def _command() -> str:
    """How this process was started, as a user would type it (for the "resume with" hint)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.suffix == ".py" and script.parent.name == "experiments":
        return f"python -m experiments.{script.stem}"
    return "the same experiment"


def check_out(config: RunConfig, *, resumable: bool = True) -> None:
    """Refuse an ``--out`` that is a file, holds files (unless ``--resume``) or cannot be written,
    without creating anything (:func:`make_run_dir` creates it once training starts). With
    ``resumable=False`` (an experiment without ``--resume``) the refusal does not suggest it."""
    if config.resume and not config.out:
        raise ConfigError("--resume needs --out: the run directory of the run to continue")
    out = Path(config.out) if config.out else Path("runs")
    if out.exists() and not out.is_dir():
        what = "--out" if config.out else "the default run folder"
        raise ConfigError(f"{what} {out} exists and is not a directory; choose another --out")
    if config.out and out.is_dir() and any(out.iterdir()) and not config.resume:
        raise ConfigError(
            f"--out {out} already holds files; choose a new directory so that no result is overwritten"
            + (", or add --resume to continue that run" if resumable else "")
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"cannot write to --out {out}: {existing} is not a directory; choose a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to --out {out}: {existing} is not writable (read-only or no permission); choose a writable directory")


def make_run_dir(config: RunConfig) -> Path:
    """Create the run directory (the default name gets ``-2``, ``-3``... when a run started in the
    same second holds it) and check that it can be written."""
    if config.out:
        out = Path(config.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable directory") from None
        if any(out.iterdir()) and not config.resume:  # another run took it since check_out
            raise ConfigError(f"--out {out} already holds files; choose a new directory so that no result is overwritten")
    else:
        base = f"runs/{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        for n in range(1, 1000):
            out = Path(base if n == 1 else f"{base}-{n}")
            try:
                out.mkdir(parents=True)  # atomic: two runs never get the same directory
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise ConfigError(f"cannot write to {out}: {e.strerror or e}; choose a writable --out") from None
    try:
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable directory") from None
    return out


def validate_output_path(path: Path, what: str = "--out") -> None:
    """Refuse, before any work, a file path whose folder is missing or cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file name such as {path / 'predictions.png'}")
    if not folder.is_dir():
        raise ConfigError(f"{what} {path}: the folder {folder} does not exist; create it or choose another place")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: the folder {folder} is not writable (read-only or no permission); choose another place with --out")


def write_file(path: str | os.PathLike[str], data: bytes | str, *, hint: str = "free some space or choose a writable --out") -> None:
    """Write ``data`` to ``path`` atomically (a temporary file and a rename). On an OS error (full
    disk, read-only file system) remove the temporary file, keep the old file, and raise a
    one-line :class:`ConfigError` ending in ``hint``."""
    from jaxcnn.checkpoint import atomic_write

    path = Path(path)
    try:
        atomic_write(path, data)  # which leaves no temporary file when it fails
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}; {hint}") from None


def write_json(path: Path, obj: Any, **kwargs: Any) -> None:
    write_file(path, json.dumps(obj, indent=2, default=float) + "\n", **kwargs)


def save_figure(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Render ``fig`` to PNG in memory, then :func:`write_file` it: never a 0-byte file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_file(path, buf.getvalue(), **kwargs)


def export_model(directory: Path, state: Any, config: RunConfig, **kwargs: Any) -> None:
    """``jaxcnn.checkpoint.export`` with :func:`write_file`'s handling of a full or read-only disk."""
    from jaxcnn import checkpoint

    try:
        if ":" in config.model:  # the module's own class and attributes are recorded
            checkpoint.export(directory, state)
        else:
            checkpoint.export(directory, state, config.model, config.model_kwargs)
    except OSError as e:  # export leaves no temporary file when it fails
        raise ConfigError(f"cannot write {directory}: {e.strerror or e}; {kwargs.get('hint', 'free some space or choose a writable --out')}") from None


def _callbacks(config: RunConfig) -> list[Any]:
    from jaxcnn.callbacks import EarlyStopping, LearningRateScheduler, keep_then_decay

    cbs: list[Any] = []
    if config.patience is not None:
        cbs.append(EarlyStopping(monitor="val_loss", patience=config.patience, verbose=1 if config.verbose else 0))
    if config.lr_schedule_after is not None:
        cbs.append(LearningRateScheduler(keep_then_decay(config.lr_schedule_after, 0.1)))
    if config.tensorboard:
        from jaxcnn.callbacks import TensorBoard

        cbs.append(TensorBoard(config.tensorboard))
    return cbs


#: Fields that must be the same for ``--resume`` to give the run never interrupted. ``epochs`` may
#: grow (train longer); ``verbose``, ``devices``, ``data_dir`` and the process flags may change
#: (the data themselves must not: config.json holds their SHA-256). Other ``devices`` run another
#: execution strategy, so the history may then differ from an uninterrupted run's (a note says so:
#: :func:`devices_note`).
RESUME_MUST_MATCH = (
    "dataset", "model", "model_kwargs", "optimizer", "learning_rate", "lr_decay", "lr_schedule_after",
    "batch_size", "validation_split", "patience", "seed", "limit", "test_limit", "precision", "augment",
)
#: Settings of RESUME_MUST_MATCH added after runs had been written: a config.json without one
#: holds None, and while None it is left out of the settings' SHA-256, so those runs resume.
ADDED_LATER = ("test_limit",)

MAX_SEED = 2**32 - 1


def _close(word: str, known: Any) -> str:
    import difflib

    match = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}? " if match else ""


def resolve_model(name: str, **kwargs: Any) -> Any:
    """The Flax module ``name`` names: a registry name (:func:`jaxcnn.models.get_model`) or
    ``package.module:Class``, imported and built with ``kwargs`` only (no other arguments; an NNX
    class gets ``rngs=nnx.Rngs(0)``, as :func:`jaxcnn.checkpoint.load` rebuilds it)."""
    if ":" not in name:
        from jaxcnn import models

        return models.get_model(name, **kwargs)
    import flax.linen as nn

    module_name, _, class_name = name.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"--model {name!r}: write a module's class as package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"--model {name}: cannot import {module_name!r} ({e}); run from the folder that holds it or add it to PYTHONPATH"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing: say so in one line
        where = _user_frame(e)
        raise ConfigError(
            f"--model {name}: importing {module_name} failed ({type(e).__name__}: {e}){where}; fix the module and rerun"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"--model {name}: {module_name} has no {class_name!r}; {_close(class_name, dir(module))}".rstrip("; "))
    from flax import nnx

    if not callable(cls):
        raise ConfigError(f"--model {name}: {class_name} is a {type(cls).__name__}, not a Flax module class")
    is_nnx = isinstance(cls, type) and issubclass(cls, nnx.Module)
    try:  # an NNX module is built as checkpoint.load rebuilds it: Class(rngs=nnx.Rngs(0))
        from jaxcnn.checkpoint import build_nnx

        model = build_nnx(cls, kwargs) if is_nnx else cls(**kwargs)
    except TypeError as e:
        if "dtype" in kwargs and "dtype" in str(e):
            raise ConfigError(
                f"--model {name}: --precision bf16 builds the model with dtype=jnp.bfloat16, and {class_name} takes no "
                f"dtype ({e}); give it a field `dtype: Any = jnp.float32` used by its layers, or drop --precision bf16"
            ) from None
        how = "(rngs=...) alone" if is_nnx else "with no arguments"
        fix = "give its fields defaults" if isinstance(cls, type) else "give its arguments defaults (a function must return the module)"
        raise ConfigError(f"--model {name}: {class_name}() must build {how} ({e}); {fix}") from None
    if not isinstance(model, (nn.Module, nnx.Module)):
        raise ConfigError(f"--model {name}: {class_name}() is a {type(model).__name__}, not a Flax linen or NNX Module")
    return model


def _user_frame(error: BaseException) -> str:
    """`` (file.py, line N)``: where in the user's own code ``error`` was raised, if it was."""
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__) if "importlib" not in f.filename]
    return f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""


def validate_config(config: RunConfig) -> None:
    """Check what can be checked before anything is written or compiled."""
    from jaxcnn import optim
    from jaxcnn.data import DATASETS

    for what, value in (("--epochs", config.epochs), ("--batch-size", config.batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    for flag, value in (("--limit", config.limit), ("--test-limit", config.test_limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{flag} must be positive, got {value}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed <= MAX_SEED:
        raise ConfigError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {config.seed!r}")
    if not 0.0 <= config.validation_split < 1.0:
        raise ConfigError(f"validation_split must be in [0, 1), got {config.validation_split}")
    resolve_model(config.model, **config.model_kwargs)  # unknown name or attribute
    if config.tensorboard and Path(config.tensorboard).exists() and not Path(config.tensorboard).is_dir():
        raise ConfigError(f"--tensorboard {config.tensorboard} is a file; give a directory for the event files")
    key = config.dataset.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ConfigError(f"unknown data set {config.dataset!r}; {_close(key, DATASETS)}known data sets: {', '.join(DATASETS)}")
    optim.get_optimizer(config.optimizer, config.learning_rate)  # unknown name, negative rate
    if config.learning_rate == 0:  # the library takes 0, as Keras does; an experiment would train nothing
        raise ConfigError("--learning-rate 0 would train nothing (the weights stay as they are); give a positive rate, "
                          "e.g. 0.001 (the report's)")
    try:
        import matplotlib  # noqa: F401  (reads MPLBACKEND when imported)
    except ValueError:
        raise ConfigError(
            f"MPLBACKEND={os.environ.get('MPLBACKEND')!r} is not a matplotlib backend; unset it or set MPLBACKEND=Agg "
            "(jaxcnn draws its figures without a display)"
        ) from None


def _devices(value: str | int | None) -> str | int | None:
    """``--devices`` as :func:`jaxcnn.fit` takes it: None, "all", "auto" or a count (a form that is
    none of these raises :func:`check_devices`'s message)."""
    if value is None or value in ("all", "auto"):
        return value
    if (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    raise _devices_error(value)


def _device_count() -> tuple[int, str]:
    """How many devices a count of ``--devices`` may take, as :func:`jaxcnn.fit` places them (this
    process's, or every process's across hosts), and their kind ("CPU", "GPU"...)."""
    import jax

    local = jax.local_devices() if jax.process_count() == 1 else jax.devices()
    return len(local), (local[0].platform.upper() if local else "")


def _devices_error(value: Any) -> ConfigError:
    n, kind = _device_count()
    more = "; JAXCNN_CPU_DEVICES=N splits the CPU into N devices" if kind == "CPU" else ""
    return ConfigError(
        f"--devices must be 'auto', 'all' or a number of devices, got {value!r}; the number of devices must be at "
        f"least 1 and at most {n}, the {f'{kind} ' if kind else ''}device{'' if n == 1 else 's'} this process sees{more}"
    )


def check_devices(value: str | int | None) -> None:
    """Refuse a ``--devices`` that is not "auto", "all" or a count from 1 to the devices there are,
    with one message for every bad value. Runs after :func:`initialize_distributed` (it asks JAX
    for the devices) and before anything is printed or written."""
    devices = _devices(value)
    if isinstance(devices, int) and not 1 <= devices <= _device_count()[0]:
        raise _devices_error(value)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=float))


def settings_fingerprint(config: RunConfig) -> str:
    """SHA-256 of the settings :data:`RESUME_MUST_MATCH` names, as config.json holds them."""
    settings = {k: _json(getattr(config, k)) for k in RESUME_MUST_MATCH if k not in ADDED_LATER or getattr(config, k) is not None}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def data_fingerprint(ds: Any) -> str:
    """SHA-256 of the arrays a run trains and tests on (after ``--limit``): dtype, shape, bytes."""
    import numpy as np

    h = hashlib.sha256()
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


# What each config.json field may hold: a type, or a tuple of types (None allowed where listed).
_NUM = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "dataset": (str,), "model": (str,), "model_kwargs": (dict,), "optimizer": (str,),
    "learning_rate": _NUM, "lr_decay": (list, type(None)), "lr_schedule_after": (int, type(None)),
    "epochs": (int,), "batch_size": (int,), "validation_split": _NUM, "patience": (int, type(None)),
    "seed": (int,), "limit": (int, type(None)), "test_limit": (int, type(None)), "data_dir": (str, type(None)), "out": (str, type(None)),
    "devices": (str, int, type(None)), "verbose": (int,), "precision": (str,), "resume": (bool,),
    "checkpoint": (bool,), "coordinator": (str, type(None)), "num_processes": (int, type(None)),
    "process_id": (int, type(None)),
}


def config_from_json(raw: Any, path: Path) -> RunConfig:
    """The :class:`RunConfig` in a run's config.json (already parsed), checked field by field."""
    fix = "restore it from a backup, or start a new run with another --out"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds {type(raw).__name__ if raw is not None else 'null'}, not a run's settings (a JSON object); {fix}")
    if raw.get("jaxcnn_run") != RUN_FORMAT:
        raise ConfigError(f"{path} was not written by this version of jaxcnn's experiments (no \"jaxcnn_run\": {RUN_FORMAT}); {fix}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        if f.name not in raw:
            if (f.name in RESUME_MUST_MATCH and f.name not in ADDED_LATER) or f.name == "epochs":
                raise ConfigError(f"{path} has no {f.name!r}; {fix}")
            continue
        value, types = raw[f.name], _FIELD_TYPES.get(f.name)
        bad = types is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types))
        if f.name == "lr_decay" and isinstance(value, list):
            bad = len(value) != 2 or not all(isinstance(v, _NUM) and not isinstance(v, bool) for v in value)
            value = tuple(value) if not bad else value
        if bad:
            raise ConfigError(f"{path}: {f.name} = {json.dumps(value)} is not a valid setting; {fix}")
        values[f.name] = value
    config = RunConfig(**values)
    if raw.get("settings_sha256") != settings_fingerprint(config):
        raise ConfigError(f"{path} was changed after the run started (its settings do not match their SHA-256); {fix}")
    return config


def read_run_config(out: Path) -> RunConfig | None:
    """The settings of the run in ``out``, for ``--resume``; None when ``out`` is missing or
    empty (a new run starts there). Refuses a directory that is not a jaxcnn run, and one whose
    config.json is missing, unreadable, of the wrong shape or edited."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose another --out")
    path = out / "config.json"
    if not path.is_file():
        if not any(out.iterdir()):
            return None
        if (out / "checkpoints").is_dir():
            raise ConfigError(
                f"--resume: {out} has checkpoints but no config.json, so nothing can check that the resume continues "
                "the same run (settings and data); restore config.json, or start a new run with another --out"
            )
        raise ConfigError(
            f"--resume: {out} is not a jaxcnn run (it has no config.json) and was left as it is; "
            "give the --out of the run to continue, or a new directory"
        )
    try:
        raw = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); cannot check that --resume continues the same run") from None
    return config_from_json(raw, path)


def _check_same(before: RunConfig, now: RunConfig, out: Path) -> None:
    """Refuse to resume a run with other settings than it was started with."""
    for key in RESUME_MUST_MATCH:
        a, b = _json(getattr(before, key)), _json(getattr(now, key))
        if a != b:
            raise ConfigError(
                f"--resume: the run in {out} was started with {key}={a!r}, not {b!r}; "
                "resume with the same settings, or start a new run with another --out"
            )
    if bool(before.tensorboard) != bool(now.tensorboard):  # its callback is part of what the checkpoints hold
        raise ConfigError(
            f"--resume: the run in {out} was started {'with' if before.tensorboard else 'without'} --tensorboard, and its "
            "checkpoints hold the callbacks it had; resume "
            f"{'with --tensorboard DIR (any folder)' if before.tensorboard else 'without --tensorboard'}, or start a new run with another --out"
        )


def devices_note(before: RunConfig | None, now: RunConfig) -> str | None:
    """The note a resume prints when ``--devices`` differs from the run's stored value (None, fit's
    default, counts as ``auto``): the same checkpoint then trains on another execution strategy,
    whose dropout masks and float summation order differ. None when they agree."""
    if before is None:
        return None
    old, new = (str(c.devices) if c.devices is not None else "auto" for c in (before, now))
    if old == new:
        return None
    return (
        f"note: the run was started with --devices {old} and resumes with --devices {new}; its history may then differ "
        "from an uninterrupted run's (dropout masks and float summation follow the devices)"
    )


def _write_history(out: Path, history: Any, **kwargs: Any) -> None:
    write_json(out / "history.json", history.to_dict(), **kwargs)
    write_file(out / "history.csv", history.to_csv(), **kwargs)


def _start_callback(start: Callable[[], None]) -> Any:
    """A callback whose ``on_train_begin`` calls ``start``: jaxcnn.fit calls it after every input
    check and the checkpoint's own resume checks. It keeps the running loop as ``.loop`` (its
    ``history`` holds the finished epochs, kept on Ctrl-C with ``--no-checkpoint``)."""
    from jaxcnn.callbacks import Callback

    class _Start(Callback):
        loop: Any = None

        def on_train_begin(self, loop: Any) -> None:
            self.loop = loop
            start()

    return _Start()


def _interrupted_without_checkpoints(out: Path, history: Any, primary: bool) -> str:
    """What Ctrl-C kept of a ``--no-checkpoint`` run (the message after ``interrupted:``): the
    finished epochs' history, written to history.json and history.csv as a NaN loss keeps it, and
    no checkpoint, so that a new run starts over."""
    done = len(history) if history is not None else 0
    again = "--no-checkpoint saved no checkpoint to resume from; start a new run with another --out"
    if not done:
        return f"no epoch had finished, and {again}"
    epochs = f"{done} epoch{'' if done == 1 else 's'} had finished"
    try:
        if primary:
            _write_history(out, history)
    except ConfigError as e:
        return f"{epochs}, but their history could not be kept ({e}); {again}"
    return f"{epochs}; their history is in {out / 'history.json'}, but {again}"


def _holds_files(folder: Path) -> bool:
    return any(files for _, _, files in os.walk(folder))


def _peek_checkpoint(out: Path, template: Any) -> Any:
    """The latest checkpoint in ``out/checkpoints`` (``TrainCheckpoints.restore``), or None."""
    from jaxcnn import checkpoint

    if not (out / "checkpoints").is_dir():
        return None
    ckpts = checkpoint.TrainCheckpoints(out / "checkpoints")
    try:
        return ckpts.restore(template) if ckpts.latest_epoch is not None else None
    finally:
        ckpts.close()


def _latest_epoch(out: Path | None) -> int | None:
    from jaxcnn import checkpoint

    if out is None or not (out / "checkpoints").is_dir():
        return None
    ckpts = checkpoint.TrainCheckpoints(out / "checkpoints")
    try:
        return ckpts.latest_epoch
    finally:
        ckpts.close()


def run(config: RunConfig, *, after: Callable[[Any, Path], None] | None = None) -> dict[str, Any]:
    """Train and evaluate per ``config``, writing every output to its run directory (see
    :func:`_run`); the warnings filters it sets (the strategy warning its own note replaces) end
    with it, so a later resume in the same process (a notebook) still warns."""
    import warnings

    with warnings.catch_warnings():
        return _run(config, after=after)


def _run(config: RunConfig, *, after: Callable[[Any, Path], None] | None = None) -> dict[str, Any]:
    """Train and evaluate per ``config``, writing every output to its run directory.

    With ``config.checkpoint`` (default) the whole training state is saved to
    ``<out>/checkpoints`` after every epoch (``jaxcnn.fit(checkpoint_dir=...)``); with
    ``config.resume`` an interrupted run continues from its latest checkpoint. ``after(ds, out)``
    writes extra outputs (process 0, a finished run). Returns the metrics written to
    ``metrics.json``.

    Raises ``ConfigError``/``DataError``/``ShapeError`` on bad settings or data (before anything
    is written: a run directory made for a run that fit then refuses is removed again),
    ``TrainingError`` when the loss becomes NaN or infinite (after writing history.json), and
    :class:`RunInterrupted` on Ctrl-C (the last finished epoch's checkpoint is kept).
    """
    import numpy as np

    t_start = time.perf_counter()
    validate_config(config)
    initialize_distributed(config.coordinator, config.num_processes, config.process_id)
    check_devices(config.devices)  # 0, 99 or -3: the same one line, before the summary is printed

    import jaxcnn
    from jaxcnn import data, optim, plots
    from jaxcnn.errors import TrainingError
    from jaxcnn.train import create_train_state

    if config.compile_cache:
        jaxcnn.compilation_cache()
    # Everything that can fail on bad input does so before the run directory is made.
    model = resolve_model(config.model, **config.model_kwargs, **_compute_dtype(config))
    if config.augment:  # the layers share the model's scope: its parameters, export and reload are unchanged
        from jaxcnn.augment import Augmented, cifar_augmentation

        model = Augmented(model, cifar_augmentation())
    ds = data.load(config.dataset, config.data_dir)
    if config.limit is not None or config.test_limit is not None:
        ds = ds.limit(config.limit, test=config.test_limit)
    primary = _is_primary()
    if not config.out and jax_process_count() > 1:
        raise ConfigError("several processes need --out: a run directory on a file system every process reaches")
    say = print if config.verbose and primary else (lambda *a, **k: None)
    fingerprint = data_fingerprint(ds)
    out: Path | None = Path(config.out) if config.out else None
    before: RunConfig | None = None
    if config.resume and out is not None:
        before = read_run_config(out)
        if before is not None:
            _check_same(before, config, out)
            if json.loads((out / "config.json").read_text()).get("data_sha256") != fingerprint:
                raise ConfigError(
                    f"--resume: the data differ from those the run in {out} was started with (another --data-dir "
                    "or data set?); resume with the same data, or start a new run with another --out"
                )
    if primary:
        check_out(config)
    say(f"data: {ds.name} from {ds.source}: {len(ds.x_train)} train, {len(ds.x_test)} test")
    text = jaxcnn.summary(model, ds.input_shape, name=config.model)
    names = ds.class_names if ds.name != "mnist" else None  # Fashion-MNIST and CIFAR-10 by name
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
    # By name, so that model.json records the optimizer (a schedule cannot be: load_state says so).
    state = create_train_state(model, ds.input_shape, config.optimizer, lr, seed=config.seed)
    callbacks = _callbacks(config)

    resume = _peek_checkpoint(out, state) if config.resume and out is not None else None
    if resume is not None:
        say(f"resuming from {out / 'checkpoints' / str(resume.epoch)}: {resume.epoch} epoch(s) done")
        note = devices_note(before, config)
        if note:
            say(note)
            import warnings  # the note says it: not again as the library's warning (until run returns)

            warnings.filterwarnings("ignore", message="resuming a run trained with", category=UserWarning)
    elif config.resume:
        if out is not None and (out / "metrics.json").is_file():
            raise ConfigError(
                f"--resume: the run in {out} has finished and has no checkpoint to continue from; "
                "start a new run with another --out"
            )
        say(f"--resume: no checkpoint in {out}; starting the run")
    finished = resume is not None and (resume.stop_training or resume.epoch >= config.epochs)
    if finished and (out / "metrics.json").is_file():
        say(f"the run in {out} had already finished; nothing to do")  # and nothing is rewritten
        return json.loads((out / "metrics.json").read_text())

    config_record = {
        **_json(dataclasses.asdict(config)),
        "jaxcnn_run": RUN_FORMAT,
        "settings_sha256": settings_fingerprint(config),
        "data_sha256": fingerprint,
    }
    if finished:
        state, history = resume.state, resume.history  # trained; only the outputs are missing
    else:
        existed = out is not None and out.exists()
        if primary:
            out = make_run_dir(dataclasses.replace(config, out=str(out) if out else None))
        started = False

        def start() -> None:
            """The files known before training, written once fit has accepted everything."""
            nonlocal started
            started = True
            if primary:
                if not config.out:
                    say(f"run directory: {out}")
                write_json(out / "config.json", config_record)
                if not (out / "summary.txt").is_file():
                    write_file(out / "summary.txt", text + "\n")
                if not (out / "digits.png").is_file():
                    shown = range(min(3, len(ds.x_train)))
                    save_figure(plots.labelled_images(ds.x_train, ds.y_train, shown, class_names=names), out / "digits.png")

        starter = _start_callback(start)

        try:
            state, history = jaxcnn.fit(
                state,
                data.to_float(ds.x_train),
                ds.y_train,
                epochs=config.epochs,
                batch_size=config.batch_size,
                seed=config.seed,
                callbacks=[starter, *callbacks],
                verbose=config.verbose if primary else 0,
                **({} if config.devices is None else {"devices": _devices(config.devices)}),  # None: fit's default
                checkpoint_dir=out / "checkpoints" if config.checkpoint else None,
                resume=config.resume,
                **fit_kwargs,
            )
        except TrainingError as e:
            history = getattr(e, "history", None)
            if history is not None and primary:
                _write_history(out, history)
            last = _latest_epoch(out)
            kept = (
                f"the last good checkpoint (after epoch {last}) is in {out / 'checkpoints'}"
                if last is not None
                else "no checkpoint was written before it"
            )
            # The library's message ends in advice ("... or add weight decay"): what was kept joins it
            # after a semicolon, so that the lower-case clauses read as one sentence.
            raise TrainingError(f"{str(e).rstrip('.')}; {kept}; the history so far is in {out / 'history.json'}") from None
        except KeyboardInterrupt:
            if not started:
                _remove_if_empty(out, existed)
                raise RunInterrupted("before training started; nothing was kept") from None
            if not config.checkpoint:  # nothing to resume from: keep the history, and say so
                history = getattr(starter.loop, "history", None)
                raise RunInterrupted(_interrupted_without_checkpoints(out, history, primary)) from None
            last = _latest_epoch(out)
            kept = f"the checkpoint after epoch {last} is in {out / 'checkpoints'}" if last else "no epoch had finished"
            raise RunInterrupted(f"{kept}; continue with: {_command()} --resume --out {out}") from None
        except BaseException:
            if not started:  # fit refused the run: leave no directory behind
                _remove_if_empty(out, existed)
            raise

    try:
        # Every process computes (with several, each computation spans them all); process 0 writes.
        hint = (
            f"free some space or make {out} writable, then continue with --resume --out {out} (the checkpoints are kept)"
            if config.checkpoint
            else f"free some space or make {out} writable, and run again (--no-checkpoint kept no checkpoint to resume from)"
        )
        best = history.best_epoch("val_loss") if "val_loss" in history.history else history.epoch[-1]
        if primary:
            _write_history(out, history, hint=hint)
            save_figure(plots.training_curves(history, best_epoch=best, title=f"{config.model} on {ds.name}"), out / "history.png", hint=hint)
            export_model(out / "model", state, config, hint=hint)

        test = jaxcnn.evaluate(state, x_test, y_test, batch_size=max(config.batch_size, 256))
        shown = np.arange(min(9, len(x_test)))
        probs = jaxcnn.predict(state, x_test, output="probs")
        predicted = probs[shown].argmax(-1)
        if primary:
            save_figure(
                plots.labelled_images(ds.x_test, y_test, shown, predicted=predicted, class_names=names),
                out / "predictions.png",
                hint=hint,
            )
            save_figure(plots.predictions(ds.x_test, y_test, probs, only_mistakes=True, class_names=names), out / "mistakes.png", hint=hint)
            save_figure(plots.confusion_matrix(y_test, probs, class_names=names, num_classes=probs.shape[-1]), out / "confusion.png", hint=hint)
            if after is not None:
                after(ds, out)
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
            write_json(out / "metrics.json", metrics, hint=hint)
        say(
            f"test loss {test['loss']:.4f}, test accuracy {test['accuracy']:.4f}; {len(history)} epoch{'' if len(history) == 1 else 's'} "
            f"(best {best + 1}), {metrics['wall_time_s']:.1f}s in all. Outputs in {out}"
        )
    except KeyboardInterrupt:  # training had finished: the outputs come from its last checkpoint
        how = (f"continue with: {_command()} --resume --out {out}, which writes them from the last checkpoint"
               if config.checkpoint else "run again (--no-checkpoint kept no checkpoint to write them from)")
        raise RunInterrupted(f"while writing the outputs, after training; {how}") from None
    return metrics


def _remove_if_empty(out: Path | None, existed: bool) -> None:
    """Remove the run directory this run made, when nothing was written in it (only folders)."""
    import shutil

    if out is not None and not existed and out.is_dir() and not _holds_files(out):
        shutil.rmtree(out, ignore_errors=True)


def main_guard(fn: Callable[[list[str] | None], Any], argv: list[str] | None) -> int:
    """Run ``fn(argv)``; turn jaxcnn's own errors into a one-line message and exit status 2, and
    Ctrl-C into one line saying how to resume and exit status 130."""
    try:
        fn(argv)
    except RunInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except JaxcnnError as e:
        print(f"error: {_on_the_command_line(e)}", file=sys.stderr, flush=True)
        return 2
    return 0


def _on_the_command_line(error: JaxcnnError) -> str:
    """A library message as a command-line user needs it: the data loaders' ``data_dir=...``
    is the experiments' ``--data-dir DIR``. (A data set that is not found keeps its list of
    places and fixes on lines of their own; a database's message is put on one line where the
    search opens it.)"""
    return str(error).replace("pass it as data_dir=...", "pass it with --data-dir DIR")


def cli(fn: Callable[[list[str] | None], Any]) -> None:
    """The ``__main__`` entry of an experiment: :func:`main_guard` on the command line, then exit.
    After an error or Ctrl-C the process ends at once (``os._exit``, streams flushed): tensorstore
    threads of a failed orbax read would otherwise print "Event loop is closed" tracebacks during
    interpreter shutdown, after the one-line message."""
    code = main_guard(fn, None)
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
