"""Report tasks 1.1 to 1.4: the MNIST CNN, trained with the report's settings.

    python -m experiments.mnist                 # the report's run: about a minute on 2 CPU cores
    python -m experiments.mnist --limit 2000 --epochs 2   # a quick check, seconds

RMSprop (lr 0.001), batch 128, up to 10 epochs, validation_split 0.2, EarlyStopping(val_loss,
patience 5). Measured (BENCHMARKS.md): test accuracy 0.9878 after 10 epochs (best epoch 7),
57 s in all, 5.2 s an epoch, on 2 CPU cores (the report: best epoch 4, stopped early). Writes
config.json, summary.txt, digits.png, history.json/.csv/.png, predictions.png, metrics.json and
model/ to runs/mnist-<time> (see experiments/common.py).
"""

from __future__ import annotations

import sys

from experiments.common import RunConfig, build_parser, config_from_args, main_guard, run

DEFAULTS = RunConfig(name="mnist", dataset="mnist", model="mnist_cnn")


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(__doc__, DEFAULTS)
    args = parser.parse_args(argv)
    return run(config_from_args(args, DEFAULTS))


if __name__ == "__main__":
    sys.exit(main_guard(main, None))
