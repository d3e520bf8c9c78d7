"""What every benchmark peer shares: the command line, the random data, the JSON it writes.

Only numpy and the standard library are imported here, so that importing this module costs
the same in every peer and the framework import can be timed on its own.

Each peer (peer_jaxcnn.py, peer_torch.py, peer_keras.py) runs in its own process:

    python benchmarks/peer_torch.py --model mnist_cnn --batch-size 128 --steps 200 \
        --warmup 5 --json /tmp/torch.json

Timing conventions (the same in every peer):
- Step 1 is always a warm-up step; its time, compile included, is `first_step_s`.
- `--warmup` counts all warm-up steps, that first one included, so it must be at least 1.
- `examples_per_s` = steps * batch_size / (wall-clock seconds around the timed steps, ending
  only once the last step's results exist).
- `wall_s` runs from just after the framework import and the random-data generation to the end
  of the timed steps: model build, optimizer, the warm-up steps and the timed steps.
- `import_s` is the framework import alone.
- `peak_rss_mb` is this process's resource.getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

# Taken as early as possible: a peer imports this module first.
PROCESS_START = time.perf_counter()


@dataclass(frozen=True)
class ModelInfo:
    """What a peer needs to know about one of the assignment's models."""

    input_shape: tuple[int, int, int]  # (H, W, C), channels last as in Keras
    n_train: int  # examples per epoch in the real run (MNIST 48,000 after validation_split 0.2)
    params: int  # exact trainable parameter count from docs/assignment.md
    batch_size: int  # the batch size the assignment trains it with
    default_steps: int  # timed steps when --steps is not given


#: The report's models. search_cnn is the search's model at the report's best trial (k = 7, L2
#: weight decay 0.009 on every kernel). cifar_cnn4 has dropout, a BatchNorm and L2 0.01: its
#: 1,095,370 weights include the BatchNorm's 512 moving statistics, which are not trained.
#: Every peer trains every model with RMSprop (lr 0.001), whatever optimizer the report used.
MODELS: dict[str, ModelInfo] = {
    "mnist_cnn": ModelInfo((28, 28, 1), 48_000, 258_090, 128, 200),
    "search_cnn": ModelInfo((28, 28, 1), 48_000, 77_770, 256, 100),
    "cifar_cnn1": ModelInfo((32, 32, 3), 50_000, 122_570, 128, 100),
    "cifar_cnn2": ModelInfo((32, 32, 3), 50_000, 193_226, 128, 100),
    "cifar_cnn3": ModelInfo((32, 32, 3), 50_000, 1_094_346, 512, 20),
    "cifar_cnn4": ModelInfo((32, 32, 3), 50_000, 1_094_858, 512, 20),
    # Not the report's: a user's own BatchNorm model on the MNIST shape (jaxcnn_model).
    "bn_mnist": ModelInfo((28, 28, 1), 48_000, 258_218, 128, 200),
}
SEARCH_KERNEL, SEARCH_L2 = 7, 0.009  # search_cnn's trial
CIFAR4_L2 = 0.01
NUM_CLASSES = 10
DEFAULT_DISTINCT = 8192  # distinct random examples, cycled; rounded up to whole batches


def jaxcnn_model(name: str, **kwargs: Any) -> Any:
    """The jaxcnn side's model: the registry's, or for ``bn_mnist`` a Flax module as a user would
    write it (``flax.linen`` layers, not jaxcnn's): mnist_cnn with a BatchNorm (Keras's momentum
    0.99 and epsilon 0.001) after each convolution and dropout 0.25 before the first dense layer.
    ``kwargs`` (e.g. ``dtype``) go to the registry's models only."""
    if name != "bn_mnist":
        import jaxcnn

        return jaxcnn.get_model(name, **jaxcnn_kwargs(name), **kwargs)
    if kwargs:
        raise ValueError(f"bn_mnist takes no options, got {sorted(kwargs)}")
    import flax.linen as nn

    class BNMnist(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)  # noqa: E731
            x = nn.max_pool(nn.relu(bn()(nn.Conv(32, (3, 3), padding="VALID")(x))), (2, 2), (2, 2))  # 13x13x32
            x = nn.relu(bn()(nn.Conv(32, (3, 3), padding="VALID")(x)))  # 11x11x32
            x = nn.Dropout(0.25, deterministic=not train)(x.reshape(x.shape[0], -1))
            return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))

    return BNMnist()


def jaxcnn_kwargs(name: str) -> dict[str, Any]:
    """What ``jaxcnn.get_model(name, ...)`` needs beyond the registry's defaults for ``name``."""
    return dict(kernel_size=SEARCH_KERNEL, weight_decay=SEARCH_L2) if name == "search_cnn" else {}


def parse_args(framework: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI shared by all peers; `framework` only changes the help text."""
    p = argparse.ArgumentParser(
        description=f"Training-speed benchmark peer: {framework}, random data of the model's shape."
    )
    p.add_argument("--model", choices=sorted(MODELS), default="mnist_cnn")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: the assignment's batch size for the model (mnist_cnn 128, search_cnn 256, "
                        "cifar_cnn1/2 128, cifar_cnn3/4 512)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps after warm-up (default: mnist_cnn 200, search_cnn and cifar_cnn1/2 100, "
                        "cifar_cnn3/4 20)")
    p.add_argument("--warmup", type=int, default=5,
                   help="warm-up steps, the first (compiling) step included; at least 1")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (torch.set_num_threads); the JAX peers only record it")
    p.add_argument("--distinct", type=int, default=DEFAULT_DISTINCT,
                   help="distinct random examples to cycle through (rounded up to whole batches)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result here (it is always printed too)")
    args = p.parse_args(argv)
    info = MODELS[args.model]
    if args.batch_size is None:
        args.batch_size = info.batch_size
    if args.steps is None:
        args.steps = info.default_steps
    if args.batch_size < 1 or args.steps < 1:
        p.error("--batch-size and --steps must be at least 1")
    if args.warmup < 1:
        p.error("--warmup must be at least 1: the first step compiles and is never timed")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def num_batches(args: argparse.Namespace) -> int:
    """Distinct batches in the pool: --distinct rounded up to whole batches, at least one."""
    return max(1, -(-args.distinct // args.batch_size))


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 images in [0, 1), NHWC, and int32 labels 0..9; a whole number of batches."""
    info = MODELS[args.model]
    n = num_batches(args) * args.batch_size
    rng = np.random.default_rng(args.seed)
    x = rng.random((n, *info.input_shape), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=n, dtype=np.int32)
    return x, y


def batch_start(step: int, args: argparse.Namespace) -> int:
    """First example of step `step`'s batch: consecutive slices of the pool, cycled."""
    return (step % num_batches(args)) * args.batch_size


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def finish(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Adds the fields every peer reports, checks the parameter count, prints and writes JSON."""
    info = MODELS[args.model]
    if result["params"] != info.params:
        raise SystemExit(
            f"{result['framework']} {args.model}: {result['params']:,} parameters, "
            f"docs/assignment.md says {info.params:,}"
        )
    out = {
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "distinct_examples": num_batches(args) * args.batch_size,
        **result,
        "examples_per_s": args.batch_size * result["steps_timed"] / result["timed_s"],
        "step_ms": 1000.0 * result["timed_s"] / result["steps_timed"],
        "peak_rss_mb": peak_rss_mb(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "process_s": time.perf_counter() - PROCESS_START,
        "argv": [sys.executable, *sys.argv],
    }
    text = json.dumps(out, indent=2, sort_keys=False)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return out
