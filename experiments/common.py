"""What every training experiment shares: its config, flags, run directory and outputs.

An experiment module (``experiments/mnist.py``, ``experiments/cifar10.py``) is a default
:class:`RunConfig` plus a call to :func:`main`. A run writes, into its run directory:

config.json, summary.txt, digits.png (first training images with labels), history.json,
history.csv, history.png (loss and accuracy per epoch, best epoch marked), predictions.png
("Actual: 7, Predicted: 7" on test images), metrics.json (test loss and accuracy, epochs run, best
epoch, wall time), and model/ (params.msgpack + model.json, reloaded by
``python -m experiments.predict``).
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
    devices: str | None = None  # None: one device; "all": data parallel over local devices
    verbose: int = 1  # 0 silent, 1 progress bars, 2 one line per epoch


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
    p.add_argument("--devices", default=None, help="'all' for data parallel over every local device (default one device)")
    p.add_argument("--verbose", type=int, default=defaults.verbose, choices=(0, 1, 2), help="0 silent, 1 progress bars, 2 one line per epoch")
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
        devices=args.devices,
        verbose=args.verbose,
        **extra,
    )


def prepare_run_dir(config: RunConfig) -> Path:
    """Create the run directory. Refuses one that already holds results (nothing written is
    overwritten) and one that cannot be written, with a message saying what to do."""
    out = Path(config.out or f"runs/{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} already holds files; choose a new directory so that no result is overwritten")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable directory") from None
    return out


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def _callbacks(config: RunConfig) -> list[Any]:
    from jaxcnn.callbacks import EarlyStopping, LearningRateScheduler, keep_then_decay

    cbs: list[Any] = []
    if config.patience is not None:
        cbs.append(EarlyStopping(monitor="val_loss", patience=config.patience, verbose=1 if config.verbose else 0))
    if config.lr_schedule_after is not None:
        cbs.append(LearningRateScheduler(keep_then_decay(config.lr_schedule_after, 0.1)))
    return cbs


def run(config: RunConfig) -> dict[str, Any]:
    """Train and evaluate per ``config``, writing every output to its run directory.

    Returns the metrics written to ``metrics.json``.
    """
    import numpy as np

    import jaxcnn
    from jaxcnn import checkpoint, data, optim, plots

    t_start = time.perf_counter()
    out = prepare_run_dir(config)
    write_json(out / "config.json", dataclasses.asdict(config))
    model = jaxcnn.get_model(config.model, **config.model_kwargs)
    ds = data.load(config.dataset, config.data_dir)
    if config.limit is not None:
        if config.limit <= 0:
            raise ConfigError(f"--limit must be positive, got {config.limit}")
        ds = ds.limit(config.limit)
    say = print if config.verbose else (lambda *a, **k: None)
    say(f"data: {ds.name} from {ds.source}: {len(ds.x_train)} train, {len(ds.x_test)} test")

    text = jaxcnn.summary(model, ds.input_shape, name=config.model)
    (out / "summary.txt").write_text(text + "\n")
    say(text)
    names = ds.class_names if ds.name == "cifar10" else None
    plots.save(plots.labelled_images(ds.x_train, ds.y_train, range(3), class_names=names), out / "digits.png")

    lr: Any = config.learning_rate
    if config.lr_decay is not None:
        lr = optim.exponential_decay(config.learning_rate, config.lr_decay[0], config.lr_decay[1], staircase=True)
    x_test, y_test = data.to_float(ds.x_test), ds.y_test
    fit_kwargs: dict[str, Any] = {}
    if config.validation_split:
        fit_kwargs["validation_split"] = config.validation_split
    else:
        fit_kwargs["validation_data"] = (x_test, y_test)
    state, history = jaxcnn.fit(
        model,
        data.to_float(ds.x_train),
        ds.y_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=optim.get_optimizer(config.optimizer, lr),
        seed=config.seed,
        callbacks=_callbacks(config),
        verbose=config.verbose,
        devices=config.devices,
        **fit_kwargs,
    )
    write_json(out / "history.json", history.to_dict())
    (out / "history.csv").write_text(history.to_csv())
    best = history.best_epoch("val_loss") if "val_loss" in history.history else history.epoch[-1]
    plots.save(plots.training_curves(history, best_epoch=best, title=f"{config.model} on {ds.name}"), out / "history.png")
    checkpoint.export(out / "model", state, config.model, config.model_kwargs)

    test = jaxcnn.evaluate(state, x_test, y_test, batch_size=max(config.batch_size, 256))
    shown = np.arange(min(9, len(x_test)))
    predicted = jaxcnn.predict(state, x_test[shown], output="classes")
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
    }
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
