"""jaxcnn: a JAX-native CNN framework.

Build, train, tune, explain and plot the convolutional networks of a Keras assignment in JAX:

>>> import jaxcnn
>>> ds = jaxcnn.data.load("mnist")                                  # bundled, offline
>>> model = jaxcnn.get_model("mnist_cnn")
>>> print(jaxcnn.summary(model, (28, 28, 1)))                       # 258,090 params, explained
>>> state, history = jaxcnn.fit(model, jaxcnn.data.to_float(ds.x_train), ds.y_train,
...                             epochs=10, batch_size=128, validation_split=0.2,
...                             callbacks=[jaxcnn.EarlyStopping(patience=5)])
>>> jaxcnn.evaluate(state, jaxcnn.data.to_float(ds.x_test), ds.y_test)

Modules: ``data`` (MNIST, Fashion-MNIST, CIFAR-10), ``layers``, ``models`` (the registry),
``optim`` (Keras-parity optimizers), ``train`` (steps, fit), ``callbacks``, ``plots``,
``manual`` (the hand-written convolution in pure lax), ``search`` (hyperparameter search on
Optuna), ``checkpoint`` (export, reload, training checkpoints), ``augment``, ``metrics``,
``explain`` (Grad-CAM, saliency, SmoothGrad, integrated gradients).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import jax


def _cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _default_cpu_devices() -> int:
    """jaxcnn's CPU device count unless told otherwise: one per core, at most 8."""
    return min(_cpu_cores(), 8)


def use_cpu_devices(count: int | None = None) -> int:
    """Split the host CPU into ``count`` XLA devices (default: its cores, at most 8;
    ``JAXCNN_CPU_DEVICES`` overrides).

    XLA's own threading uses a second core badly on small convolutions (docs/cpu.md). On CPU,
    :func:`jaxcnn.fit` therefore cuts each batch into parts of at most 32 examples: without
    batch statistics it deals them to one device per core, each running its parts' gradients in
    its own program; with BatchNorm it runs one part on each device of a mesh in one SPMD
    program, whose all-reduce keeps the batch statistics the whole batch's (see
    :mod:`jaxcnn.train.strategies`). With XLA's own convolution kernels (:data:`XLA_CPU_FLAG`)
    one device per core was also the fastest for BatchNorm models: 16 devices (parts of 32 for a
    batch of 512) trained ``cifar_cnn4`` 1.1x slower, and every device adds runtime threads
    (figures in BENCHMARKS.md). Call it right after ``import jaxcnn`` for another count.
    jaxcnn calls this on import; it only works before JAX has run
    anything, and does nothing when ``XLA_FLAGS`` already forces a device count or
    ``JAXCNN_CPU_DEVICES=1``. Returns the count in force (1 when it could not be set).
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 1
    if count is None:
        from jaxcnn._env import env_int

        count = env_int("JAXCNN_CPU_DEVICES", -1, minimum=0, what="a whole number of CPU devices", example=1)
        count = _default_cpu_devices() if count < 0 else count
    if count <= 1:
        return 1
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already started: keep what it has
        return 1
    globals()["_CPU_SPLIT"] = count
    return count


def compilation_cache(directory: str | os.PathLike[str] | None = None) -> str:
    """Turn on JAX's persistent compilation cache, so that a second run of the same model and
    shapes loads its programs from disk instead of compiling them again.

    ``directory`` defaults to ``$JAXCNN_COMPILE_CACHE``, else ``~/.cache/jaxcnn/xla``. Every
    program is cached, however quick its compile. The experiments call this unless given
    ``--no-compile-cache``; a library user calls it when they want it. Returns the directory.
    """
    from pathlib import Path

    path = Path(directory or os.environ.get("JAXCNN_COMPILE_CACHE") or Path.home() / ".cache" / "jaxcnn" / "xla")
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(path)


#: The XLA:CPU flag jaxcnn adds to ``XLA_FLAGS`` on import (:func:`tune_xla_cpu`): XLA's own
#: convolution kernels instead of YNNPACK's. YNNPACK keeps the matmuls and reductions.
XLA_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
#: The jaxlib releases the flag was measured with (an XLA that does not know a flag aborts).
_XLA_CPU_FLAG_JAXLIB = ("0.10.",)


def tune_xla_cpu() -> bool:
    """Add :data:`XLA_CPU_FLAG` to ``XLA_FLAGS``: jaxlib 0.10's XLA:CPU hands convolutions to
    YNNPACK, whose kernels ran the report's models' training steps 1.1x to 1.5x slower than
    XLA's own on the CPUs measured (docs/cpu.md). Matmuls and reductions stay with YNNPACK.

    jaxcnn calls this on import. It only works before JAX has started its backends, and does
    nothing when ``XLA_FLAGS`` already sets ``xla_cpu_experimental_ynn_fusion_type`` (a user's
    choice wins: ``--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`` keeps XLA's
    default) or when jaxlib is not a release it was measured with. Results change by float
    rounding only. Returns whether it added the flag.
    """
    return _add_xla_flag(XLA_CPU_FLAG)


def _add_xla_flag(flag: str) -> bool:
    """Append ``flag`` (``--name=value``) to ``XLA_FLAGS``, unless ``XLA_FLAGS`` already names it
    (a user's choice wins), jaxlib is not a release jaxcnn's flags were tested with (an XLA that
    does not know a flag aborts), or JAX's backends have started (too late to take effect)."""
    from jax._src import xla_bridge
    import jaxlib

    flags = os.environ.get("XLA_FLAGS", "")
    name = flag.lstrip("-").split("=", 1)[0]
    if name in flags or not jaxlib.__version__.startswith(_XLA_CPU_FLAG_JAXLIB) or xla_bridge.backends_are_initialized():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    return True


#: The XLA:CPU flag jaxcnn adds to ``XLA_FLAGS`` on import (:func:`patient_collectives`): how long
#: one CPU device waits at an all-reduce (BatchNorm's statistics on the mesh of parts) for the
#: other before XLA aborts the process. XLA's default, 40 s after a 20 s warning, killed a run
#: of cifar_cnn4 when other trainings starved one device's thread on a busy 2-core machine.
XLA_CPU_COLLECTIVE_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds=600"


def patient_collectives() -> bool:
    """Add :data:`XLA_CPU_COLLECTIVE_FLAG` to ``XLA_FLAGS``, so that a CPU device kept waiting
    at an all-reduce by a loaded machine waits up to 10 minutes (XLA still logs a warning after
    20 s) instead of aborting the process after a minute. jaxcnn calls this on import; like
    :func:`tune_xla_cpu` it does nothing once JAX's backends have started, when ``XLA_FLAGS``
    already sets the flag, or on a jaxlib it was not tested with. Returns whether it added it."""
    return _add_xla_flag(XLA_CPU_COLLECTIVE_FLAG)


#: Whether jaxcnn added :data:`XLA_CPU_FLAG` on import.
_XLA_CPU_TUNED = tune_xla_cpu()
_PATIENT_COLLECTIVES = patient_collectives()
#: The CPU device count jaxcnn set on import (1: it set none, e.g. because XLA_FLAGS did).
_CPU_SPLIT = use_cpu_devices()

from jaxcnn import callbacks, errors, layers, models, optim, train
from jaxcnn.callbacks import (
    BackupAndRestore,
    Callback,
    CSVLogger,
    EarlyStopping,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TensorBoard,
    TerminateOnNaN,
)
from jaxcnn.models import get_model
from jaxcnn.summary import summary
from jaxcnn.train import TrainState, create_train_state, evaluate, fit, predict, train_step, eval_step

__version__ = "0.1.0"

_LAZY = {"data", "explain", "plots", "manual", "search", "checkpoint", "augment", "metrics", "losses"}


def __getattr__(name: str) -> Any:
    # Submodules with heavier imports (matplotlib, orbax, data files) load on first use.
    if name in _LAZY:
        return importlib.import_module(f"jaxcnn.{name}")
    raise AttributeError(f"module 'jaxcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazily loaded submodules show in dir(jaxcnn) and tab completion too.
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BackupAndRestore", "Callback", "CSVLogger", "EarlyStopping", "LambdaCallback", "LearningRateScheduler", "ModelCheckpoint", "ReduceLROnPlateau", "TensorBoard",
    "TerminateOnNaN", "compilation_cache", "use_cpu_devices", "TrainState", "callbacks", "create_train_state", "errors",
    "eval_step", "evaluate", "fit", "get_model", "layers", "models", "optim", "predict", "summary", "train",
    "train_step", *sorted(_LAZY),
]
