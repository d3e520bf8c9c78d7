"""Reload a trained model from a run directory and predict on test images.

    python -m experiments.predict runs/mnist-20261125-120000 --count 9

Reads <run>/model (written by every training experiment), evaluates it on the test split of the
run's data set, and writes <run>/reloaded-predictions.png (or --out) with "Actual, Predicted"
titles. Takes seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.common import main_guard


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by an experiment (holds model/ and config.json)")
    p.add_argument("--count", type=int, default=9, help="how many test images to show (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="directory with the data files")
    p.add_argument("--out", default=None, help="figure path (default <run>/reloaded-predictions.png)")
    args = p.parse_args(argv)

    import jaxcnn
    from jaxcnn import checkpoint, data, plots

    run = Path(args.run)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    state = checkpoint.load_state(run / "model")
    ds = data.load(config.get("dataset", "mnist"), args.data_dir or config.get("data_dir"))
    x_test = data.to_float(ds.x_test)
    test = jaxcnn.evaluate(state, x_test, ds.y_test, batch_size=256)
    shown = list(range(min(args.count, len(x_test))))
    predicted = jaxcnn.predict(state, x_test[shown], output="classes")
    names = ds.class_names if ds.name == "cifar10" else None
    out = Path(args.out) if args.out else run / "reloaded-predictions.png"
    plots.save(plots.labelled_images(ds.x_test, ds.y_test, shown, predicted=predicted, class_names=names), out)
    print(f"test loss {test['loss']:.4f}, test accuracy {test['accuracy']:.4f}; figure: {out}")
    return test


if __name__ == "__main__":
    sys.exit(main_guard(main, None))
