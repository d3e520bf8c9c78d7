"""Reload a trained model, from a run directory or any exported model directory, and predict on
test images.

    python -m experiments.predict runs/mnist-20261125-120000 --count 9
    python -m experiments.predict my-export --dataset mnist --out predictions.png
    python -m experiments.predict runs/mnist-20261125-120000 --explain grad_cam

RUN_DIR is a run directory written by a training experiment (it holds model/ and config.json; the
data set, data folder and ``--test-limit`` come from its config.json), or a directory written by
``jaxcnn.checkpoint.export`` (params.msgpack + model.json; give ``--dataset``, or it is inferred
from the model's input shape: 28x28x1 MNIST, 32x32x3 CIFAR-10). Evaluates the model on the test
split and writes ``reloaded-predictions.png`` into that directory (or ``--out``) with "Actual,
Predicted" titles. Takes seconds. The figure's place is checked before anything is loaded: an
existing ``--out`` file is refused (choose another path), and ``--count`` is at most 30.
``--explain METHOD`` also writes ``<figure>-<METHOD>.png``: the same images with the heat map of
why the model predicts its class (``jaxcnn.explain``: grad_cam, saliency or integrated_gradients).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

from experiments.common import cli, config_from_json, main_guard, save_figure, validate_output_path
from jaxcnn.errors import CheckpointError, ConfigError


#: The figure's layout: ``plots.labelled_images`` puts 3 images in a row, 3 inches each, so
#: ``--count`` is capped at 10 rows (a figure 30 inches tall) rather than drawing thousands.
COLUMNS = 3
MAX_COUNT = 30
#: ``--explain``'s methods (jaxcnn.explain).
EXPLAIN = ("grad_cam", "saliency", "integrated_gradients")


def _model_dir(path: Path) -> tuple[Path, dict]:
    """(the export directory, the run's config.json or {}) for a run directory or an export."""
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; give a run directory (with model/) or an exported model directory")
    if (path / "model.json").is_file():
        return path, {}
    if (path / "model").is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            return path / "model", {}
        try:
            raw = json.loads(config_path.read_text())
        except (ValueError, OSError) as e:
            raise ConfigError(f"{config_path} cannot be read ({e}); give --dataset, or restore it") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_path} holds {json.dumps(raw)[:20]}, not a run's settings (a JSON object); give --dataset, or restore it")
        if "jaxcnn_run" in raw:
            config_from_json(raw, config_path)  # every field checked
        return path / "model", raw
    raise CheckpointError(
        f"{path} holds neither model/ (a run directory) nor model.json (an exported model, jaxcnn.checkpoint.export)"
    )


def _dataset_for(input_shape: tuple[int, ...]) -> str:
    if tuple(input_shape) == (28, 28, 1):
        return "mnist"
    if tuple(input_shape) == (32, 32, 3):
        return "cifar10"
    raise ConfigError(
        f"the model takes images of shape {tuple(input_shape)}, and no data set here has that shape (mnist and fashion_mnist: "
        "(28, 28, 1), cifar10: (32, 32, 3)); for images of your own use the library: "
        "jaxcnn.predict(jaxcnn.checkpoint.load_state(directory), images)"
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by an experiment (holds model/), or an exported model directory (holds model.json)")
    p.add_argument("--count", type=int, default=9, help=f"how many test images to show, 1 to {MAX_COUNT} (default %(default)s)")
    p.add_argument("--dataset", default=None, help="mnist, fashion_mnist or cifar10 (default: the run's, or inferred from the model)")
    p.add_argument("--data-dir", default=None, help="directory with the data files")
    p.add_argument("--out", default=None, help="figure path, a new file (default <dir>/reloaded-predictions.png)")
    p.add_argument("--explain", choices=EXPLAIN, default=None,
                   help="also draw why the model predicts what it does, on the same images (jaxcnn.explain): "
                        "grad_cam (the last convolution's heat map), saliency (SmoothGrad) or integrated_gradients; "
                        "written beside the figure as <figure>-<method>.png")
    args = p.parse_args(argv)
    if args.count < 1:
        raise ConfigError(f"--count must be a positive integer, got {args.count}")
    if args.count > MAX_COUNT:
        raise ConfigError(
            f"--count must be at most {MAX_COUNT} ({MAX_COUNT // COLUMNS} rows of {COLUMNS} images in one figure), got {args.count}"
        )
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} already exists; choose another path so that it is not overwritten")

    run = Path(args.run)
    model_dir, config = _model_dir(run)
    out = Path(args.out) if args.out else run / "reloaded-predictions.png"
    validate_output_path(out, "--out" if args.out else "the run directory")
    explained = out.with_name(f"{out.stem}-{args.explain}.png") if args.explain else None
    if explained is not None and args.out and explained.exists():
        raise ConfigError(f"{explained} already exists; choose another --out so that it is not overwritten")

    import jaxcnn
    from jaxcnn import checkpoint, data, plots

    import warnings

    with warnings.catch_warnings():  # it only predicts: which optimizer would train on does not matter here
        warnings.filterwarnings("ignore", message=".* was trained with an optimizer its model.json cannot record")
        state = checkpoint.load_state(model_dir)
    dataset = args.dataset or config.get("dataset") or _dataset_for(state.input_shape)
    ds = data.load(dataset, args.data_dir or config.get("data_dir"))
    limited = bool(config.get("test_limit")) and dataset == config.get("dataset")
    if limited:  # the run's test examples, as it was tested
        ds = ds.limit(test=config["test_limit"])
    x_test = data.to_float(ds.x_test)
    test = jaxcnn.evaluate(state, x_test, ds.y_test, batch_size=256)
    shown = list(range(min(args.count, len(x_test))))
    predicted = jaxcnn.predict(state, x_test[shown], output="classes")
    names = ds.class_names if ds.name != "mnist" else None  # Fashion-MNIST and CIFAR-10 by name
    fig = plots.labelled_images(ds.x_test, ds.y_test, shown, predicted=predicted, class_names=names)
    save_figure(fig, out, hint="choose a writable place with --out")
    on = f" on the first {len(x_test)} test examples (the run's --test-limit)" if limited else ""
    print(f"test loss {test['loss']:.4f}, test accuracy {test['accuracy']:.4f}{on}; figure: {out}")
    if explained is not None:
        from jaxcnn import explain

        images = x_test[shown]
        maps = {"grad_cam": explain.grad_cam, "saliency": functools.partial(explain.saliency, samples=25),
                "integrated_gradients": explain.integrated_gradients}[args.explain](state, images)
        fig = plots.explanations(ds.x_test[shown], maps, labels=ds.y_test[shown], predicted=predicted, class_names=names,
                                 ncols=COLUMNS, title=f"{args.explain} of each predicted class")
        save_figure(fig, explained, hint="choose a writable place with --out")
        print(f"{args.explain}: {explained}")
    return test


if __name__ == "__main__":
    cli(main)
