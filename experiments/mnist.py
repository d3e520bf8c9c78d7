"""Report tasks 1.1 to 1.4: the MNIST CNN, trained with the report's settings, and the same run
on any data set and model.

    python -m experiments.mnist                 # the report's run: about a minute on 2 CPU cores
    python -m experiments.mnist --limit 2000 --epochs 2   # a quick check, seconds
    python -m experiments.mnist --dataset fashion_mnist --model search_cnn --limit 2000 --epochs 2
    python -m experiments.mnist --model mypackage.models:MyCNN   # your own Flax module
    python -m experiments.mnist --resume --out runs/mnist-20261125-120000   # continue a run

RMSprop (lr 0.001), batch 128, up to 10 epochs, validation_split 0.2, EarlyStopping(val_loss,
patience 5) (docs/assignment.md). Measured (BENCHMARKS.md): test accuracy 0.9878 after 10 epochs
(best epoch 7), 57 s in all, 5.2 s an epoch, on 2 CPU cores (the report: best epoch 4, stopped
early). ``--dataset`` takes mnist, fashion_mnist or cifar10; ``--model`` a registered model or
``package.module:Class``, a Flax linen module built with no arguments (give its fields defaults)
that maps a batch of images (N, H, W, C) to logits (N, classes) and, if it has dropout or batch
normalisation, takes a ``train`` argument. Writes config.json, summary.txt, digits.png,
history.json/.csv/.png, predictions.png, mistakes.png (wrong test predictions), confusion.png,
metrics.json, model/ (reload with ``python -m experiments.predict <run dir>``) and checkpoints/
(``--resume`` continues from them) to runs/<data set>-<time> (see experiments/common.py).
"""

from __future__ import annotations

import dataclasses

from experiments.common import cli, RunConfig, build_parser, config_from_args, main_guard, parse_args, run

DEFAULTS = RunConfig(name="mnist", dataset="mnist", model="mnist_cnn")


def parse_config(argv: list[str] | None = None) -> RunConfig:
    """The :class:`RunConfig` for ``argv`` (with ``--resume``: the run's own, see common)."""
    parser = build_parser(__doc__, DEFAULTS, model_and_dataset=True)
    args, explicit = parse_args(parser, argv)
    defaults = dataclasses.replace(DEFAULTS, name=str(args.dataset).strip().lower().replace("-", "_") or DEFAULTS.name)
    return config_from_args(args, defaults, explicit)


def main(argv: list[str] | None = None) -> dict:
    return run(parse_config(argv))


if __name__ == "__main__":
    cli(main)
