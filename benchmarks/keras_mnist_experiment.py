"""The whole `experiments.mnist` default run, in Keras 3 on its JAX backend, timed.

    python benchmarks/keras_mnist_experiment.py --json keras_mnist.json
    python benchmarks/keras_mnist_experiment.py --epochs 1 --limit 2000   # quick check

As in the report (docs/assignment.md, tasks 1.1 to 1.4): the bundled MNIST (jaxcnn/_data/mnist.npz), pixels / 255,
mnist_cnn, RMSprop(learning_rate=0.001) with Keras defaults otherwise, sparse categorical
cross-entropy from logits with accuracy, 10 epochs, batch 128, validation_split 0.2 (Keras takes
the last 20% of the training arrays, before shuffling), EarlyStopping(monitor="val_loss",
patience=5) keeping the last weights, then evaluate on the test split (Keras's default evaluate
batch size, 32). fit shuffles the training part every epoch (Keras's default); verbose=0.

Times (wall clock): `wall_time_s` from after the keras import (`import_s`) to the end of
evaluate: data loading (`load_s`), model build, fit (`fit_s`), evaluate (`evaluate_s`), the span
experiments.mnist times less its plots and checkpoint. `epoch_times_s` per epoch from
on_epoch_begin to on_epoch_end, where the epoch's validation metrics exist on the host, so all
its work has finished; the first includes the XLA compiles; `steady_epoch_time_s` is the median
of the others, as experiments.mnist reports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported anywhere

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_keras import build_model  # noqa: E402  (defines the same mnist_cnn)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_PARAMS = 258_090


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(REPO, "jaxcnn", "_data", "mnist.npz"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N training examples (the test split stays whole)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="Keras fit verbosity")
    p.add_argument("--json", default=None, help="write the result here (it is always printed too)")
    args = p.parse_args()

    t = time.perf_counter()
    import keras
    import_s = time.perf_counter() - t

    wall_start = time.perf_counter()
    with np.load(args.data, allow_pickle=False) as d:
        x_train, y_train, x_test, y_test = (d[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    if args.limit is not None:  # like experiments.mnist --limit: training examples only
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    x_train = (x_train.astype(np.float32) / 255.0)[..., None]
    x_test = (x_test.astype(np.float32) / 255.0)[..., None]
    y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
    load_s = time.perf_counter() - wall_start

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._t)

    keras.utils.set_random_seed(args.seed)
    model = build_model("mnist_cnn", keras, (28, 28, 1))
    params = model.count_params()
    if params != MNIST_PARAMS:
        raise SystemExit(f"mnist_cnn has {params:,} parameters, docs/assignment.md says {MNIST_PARAMS:,}")
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    t = time.perf_counter()
    hist = model.fit(
        x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
        validation_split=0.2, verbose=args.verbose,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=5), timer],
    )
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    evaluate_s = time.perf_counter() - t
    wall_time_s = time.perf_counter() - wall_start

    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    import jax
    out = {
        "framework": "keras",
        "version": keras.__version__,
        "versions": {"keras": keras.__version__, "jax": jax.__version__, "backend": "jax"},
        "params": params,
        "epochs": args.epochs,
        "epochs_run": len(history["loss"]),
        "batch_size": args.batch_size,
        "n_train": int(math.floor(len(x_train) * (1.0 - 0.2))),  # as Keras's validation_split
        "n_test": len(x_test),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "best_epoch": int(np.argmin(history["val_loss"])) + 1,
        "wall_time_s": wall_time_s,
        "fit_s": fit_s,
        "evaluate_s": evaluate_s,
        "epoch_times_s": timer.times,
        # Median epoch after the first (which compiles): experiments.mnist's steady_epoch_time_s.
        "steady_epoch_time_s": float(np.median(timer.times[1:] if len(timer.times) > 1 else timer.times)),
        "s_per_epoch": fit_s / max(1, len(history["loss"])),
        "load_s": load_s,
        "import_s": import_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "history": history,
        "python": platform.python_version(),
        "argv": [sys.executable, *sys.argv],
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
