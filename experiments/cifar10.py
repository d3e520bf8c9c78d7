"""Report tasks 1.6 to 1.9: the four CIFAR-10 CNNs, each trained with the report's settings.

    python -m experiments.cifar10 --model 1 --data-dir ~/data/cifar10   # the report's run of CNN 1
    python -m experiments.cifar10 --model 4 --limit 2000 --epochs 1 --batch-size 128  # a quick check
    python -m experiments.cifar10 --model mnist_cnn          # any registered model, CNN 1's settings
    python -m experiments.cifar10 --model mypackage.models:MyCNN   # your own Flax module
    python -m experiments.cifar10 --resume --out runs/cifar10-cnn1-20261125-120000  # continue a run

``--data-dir`` takes ``cifar-10-binary.tar.gz``, its ``cifar-10-batches-bin/`` folder or a folder
holding ``data_batch_1..5.bin`` and ``test_batch.bin``; without it the cache (``$JAXCNN_DATA``
or ``~/.cache/jaxcnn``, ``/cifar10``) and then the download are tried. With no CIFAR-10 reachable
the command stops at once with the data loader's message and exit status 2, before any run
directory is made. Pixels are divided by 255; the loss is sparse categorical cross-entropy from
logits (plus the L2 terms of CNN 4); every model validates on the test split (the report's
``validation_data``) and reshuffles the training set each epoch.

| model | optimizer | batch | epochs | callbacks | reported (docs/assignment.md) | s/epoch, 2 CPU cores (*) |
| --- | --- | --- | --- | --- | --- | --- |
| 1 ``cifar_cnn1``, 122,570 params | Adamax, ExponentialDecay(0.005, 1500, 0.96, staircase) | 128 | 10 | none | epoch 10: loss 0.9227, acc 0.6837, val_loss 1.0588, val_acc 0.6481 (23 s/epoch in the report) | 45-50 |
| 2 ``cifar_cnn2``, 193,226 | same Adamax schedule | 128 | 15 | EarlyStopping(val_loss, patience 5) | stopped at epoch 13, val_acc about 0.71 | 50-60 |
| 3 ``cifar_cnn3``, 1,094,346 | RMSprop 0.001 | 512 | 20 | EarlyStopping(patience 5), LearningRateScheduler: lr kept for epochs 0..9, then x exp(-0.1) per epoch | stopped early: loss 0.6635, acc 0.7688, val_loss 0.8182, val_acc 0.7230 (61 s/epoch in the report) | 135-140 |
| 4 ``cifar_cnn4``, 1,095,370 (512 non-trainable) | as 3 | 512 | 20 | as 3 | did not stop early, val_acc 0.7628 | about 105 (**) |

(*) Not a measured full epoch: ``jaxcnn.fit`` for two epochs on 3,072 random 32x32x3 images with
1,024 validation images (the default devices: one XLA device per CPU core), the second epoch's
time scaled to 50,000 training and 10,000 test images; two runs gave the ranges shown. The 2-core
machine was shared (load average 4 to 7), so they are rough. On one XLA device (``--devices 1``)
CNNs 1 to 3 took 1.2 to 1.4x as long. CNN 4: see (**).

(**) CNN 4 has BatchNorm: each batch of 512 trains as one part per XLA CPU device (one per core)
on a mesh whose all-reduce keeps the batch statistics the whole batch's. Measured 2026-12-03 on 2
cores with this command on random CIFAR-shaped files (``--limit 4096 --epochs 2``, validation on
10,000 test images): the steady epoch took 12.9 s (515 training examples/s, validation
included); CNN 3 took 8.5 s and CNN 1 2.9 s the same way. The (*) figures above predate that
day's changes (XLA's own convolution kernels, max-pooling's one-select gradient), which made
every model faster (BENCHMARKS.md).

Each flag overrides the chosen model's default; for models 1 and 2 ``--learning-rate`` is the
schedule's initial rate.

Writes, into ``--out`` (default ``runs/cifar10-cnn<N>-<time>``): config.json, summary.txt (the
Keras-style table, each count explained, e.g. ``(5x5x32 + 1) x 64 = 51,264``), digits.png (the
first three training images titled with class names), figure4.png (the report's Figure 4:
training images 12 and 36, 0-based, i.e. R's 13 and 37, a horse and a cat), history.json,
history.csv, history.png, predictions.png ("Actual: cat, Predicted: dog"), mistakes.png (wrong
test predictions), confusion.png (the test set's confusion matrix), metrics.json,
model/ (reload with ``python -m experiments.predict <run dir> --data-dir ...``) and checkpoints/
(see experiments/common.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from experiments.common import cli, MODEL_HELP, RunConfig, build_parser, config_from_args, main_guard, parse_args, run, save_figure
from jaxcnn.errors import ConfigError

# The report's Figure 4 shows training images x_train[13] and x_train[37] (R, 1-based).
FIGURE4_INDICES: tuple[int, ...] = (12, 36)

_ADAMAX = dict(optimizer="adamax", learning_rate=0.005, lr_decay=(1500, 0.96), batch_size=128)
_RMSPROP = dict(optimizer="rmsprop", learning_rate=0.001, lr_schedule_after=10, batch_size=512, epochs=20, patience=5)
_COMMON = dict(dataset="cifar10", validation_split=0.0)  # validate on the test split, as the report

DEFAULTS: dict[int, RunConfig] = {
    1: RunConfig(name="cifar10-cnn1", model="cifar_cnn1", epochs=10, patience=None, **_ADAMAX, **_COMMON),
    2: RunConfig(name="cifar10-cnn2", model="cifar_cnn2", epochs=15, patience=5, **_ADAMAX, **_COMMON),
    3: RunConfig(name="cifar10-cnn3", model="cifar_cnn3", **_RMSPROP, **_COMMON),
    4: RunConfig(name="cifar10-cnn4", model="cifar_cnn4", **_RMSPROP, **_COMMON),
}


def _model_name(value: str) -> str:
    """``--model``: 1..4 for the report's CNNs, or any other model name (see common.MODEL_HELP)."""
    value = str(value).strip()
    return DEFAULTS[int(value)].model if value in ("1", "2", "3", "4") else value


def parse_config(argv: list[str] | None = None) -> RunConfig:
    """The :class:`RunConfig` for ``argv``: the chosen model's defaults, overridden by the flags
    (with ``--resume``: the run's own settings, see experiments/common.py)."""
    # --model decides the other flags' defaults, so read it first.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="1")
    chosen = str(pre.parse_known_args(argv)[0].model).strip()
    if chosen in ("1", "2", "3", "4"):
        defaults = DEFAULTS[int(chosen)]
    elif chosen.lstrip("-").isdigit():
        raise ConfigError(f"--model {chosen}: the report's CIFAR-10 CNNs are 1, 2, 3 and 4; or give {MODEL_HELP}")
    else:  # another model trains with CNN 1's settings
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in chosen)
        defaults = dataclasses.replace(DEFAULTS[1], name=f"cifar10-{safe}", model=chosen)
    parser = build_parser(__doc__, defaults, name="cifar10")
    whose = f"CNN {chosen}'s" if chosen in ("1", "2", "3", "4") else "CNN 1's, for other models"
    for action in parser._actions:  # these defaults are the chosen model's (the table above)
        if action.dest in ("epochs", "batch_size", "learning_rate", "patience") and action.help:
            value = "none" if action.default is None else action.default
            action.help = action.help.replace("(default %(default)s)", f"(default: the --model's; {whose} {value})")
    parser.add_argument(
        "--model", default="1",
        help=f"1, 2, 3 or 4: the report's CIFAR-10 CNNs (default %(default)s); or {MODEL_HELP}, trained with CNN 1's settings",
    )
    parser.add_argument(
        "--augment", action="store_true", default=defaults.augment,
        help="augment the training images: random left-right flips and shifts of up to 10%% (jaxcnn.augment; evaluation sees them unchanged)",
    )
    args, explicit = parse_args(parser, argv)
    return config_from_args(args, defaults, explicit, convert={"model": _model_name})


def save_figure4(ds: Any, out: str | Path, limit: int | None = None) -> list[int]:
    """Write ``out/figure4.png``: the training images at :data:`FIGURE4_INDICES` titled with their
    class names (the report's Figure 4, a horse and a cat). Indices beyond the ``limit`` training
    examples used are left out; returns the indices drawn (none: no file)."""
    from jaxcnn import plots

    n = min(len(ds.x_train), limit or len(ds.x_train))
    shown = [i for i in FIGURE4_INDICES if i < n]
    if shown:
        fig = plots.labelled_images(ds.x_train, ds.y_train, shown, class_names=ds.class_names, ncols=len(shown))
        save_figure(fig, Path(out) / "figure4.png")
    return shown


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = parse_config(argv)
    # run() fails before any run directory is made when CIFAR-10 is nowhere to be found, and
    # calls save_figure4 on the data it loaded once training is done.
    return run(config, after=lambda ds, out: save_figure4(ds, out) if ds.name == "cifar10" else None)


if __name__ == "__main__":
    cli(main)
