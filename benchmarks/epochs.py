"""Whole epochs and start-up, every report model, jaxcnn against PyTorch and Keras in one run.

    python benchmarks/epochs.py                              # every model, all three frameworks
    python benchmarks/epochs.py --models mnist_cnn,cifar_cnn4 --frameworks jaxcnn,torch --json e.json

What a user meets, rather than the step alone (``run.py`` times steps): each framework trains the
model (``_peer_common.MODELS``, built as in the peers) on random data of the model's shape for
``--epochs`` epochs, ``--batches`` training batches per epoch at the report's batch size, a
shuffled order each epoch and a validation pass over a fifth as many examples at the end of each
epoch, with RMSprop (lr 0.001, rho 0.9, epsilon 1e-7):

* jaxcnn: ``jaxcnn.fit(..., validation_data=...)`` on the path it chooses (``devices="auto"``);
* PyTorch: the plain loop (``zero_grad``, forward, ``cross_entropy``, ``backward``, ``step``,
  ``loss.item()``), then a ``no_grad`` validation pass; eager on ``--threads`` threads;
* Keras 3 (JAX backend): ``model.fit(..., validation_data=...)``, verbose 0.

Reported, each from its own process, one framework after another:

* ``epoch_s``: the median of the steady epochs (2 onwards), training and validation;
  ``examples_per_s`` divides the training examples by it.
* ``first_epoch_s`` and ``start_up_s``: the first epoch, and how much longer it took than a
  steady one (compiling, for jaxcnn and Keras); ``import_s``: importing the framework.
* jaxcnn runs twice, both with JAX's persistent compilation cache in one fresh directory
  (``jaxcnn.compilation_cache``, as the experiments use it): ``cold`` fills it, ``warm`` (a new
  process) loads the programs from it. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _peer_common as common  # noqa: E402


def data(model: str, batch_size: int, batches: int, seed: int = 0):
    info = common.MODELS[model]
    n, nv = batches * batch_size, max(batch_size, batches * batch_size // 5)
    rng = np.random.default_rng(seed)
    x = rng.random((n + nv, *info.input_shape), dtype=np.float32)
    y = rng.integers(0, common.NUM_CLASSES, size=n + nv, dtype=np.int32)
    return x[:n], y[:n], x[n:], y[n:]


def jaxcnn_side(args, x, y, xv, yv) -> dict:
    t = time.perf_counter()
    import jax

    import jaxcnn
    import_s = time.perf_counter() - t
    jaxcnn.compilation_cache(args.cache)
    model = common.jaxcnn_model(args.model)
    result = jaxcnn.fit(model, x, y, validation_data=(xv, yv), epochs=args.epochs, batch_size=args.batch_size,
                        optimizer="rmsprop", learning_rate=1e-3, verbose=0, seed=args.seed)
    strategy = jaxcnn.train.choose_strategy("auto", args.batch_size, result.state)
    return {"epochs_s": list(result.history["time_s"]), "import_s": import_s, "version": jaxcnn.__version__,
            "path": f"{strategy.name} strategy", "jax": jax.__version__,
            "devices": jax.local_device_count(), "final_loss": result.history["loss"][-1]}


def torch_side(args, x, y, xv, yv) -> dict:
    t = time.perf_counter()
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import peer_torch
    import_s = time.perf_counter() - t
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, opt = peer_torch.build_training(args.model, torch, nn)
    xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.astype("int64"))
    xvt, yvt = torch.from_numpy(xv.transpose(0, 3, 1, 2).copy()), torch.from_numpy(yv.astype("int64"))
    bs, walls = args.batch_size, []
    for _ in range(args.epochs):
        t = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt))
        for s in range(0, len(xt), bs):
            idx = order[s:s + bs]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            loss.item()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(xvt[s:s + bs]).argmax(1) == yvt[s:s + bs]).sum()) for s in range(0, len(xvt), bs))
        walls.append(time.perf_counter() - t)
    return {"epochs_s": walls, "import_s": import_s, "version": torch.__version__, "path": f"eager, {args.threads} threads",
            "final_loss": float(loss.item()), "val_correct": correct}


def keras_side(args, x, y, xv, yv) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    t = time.perf_counter()
    import keras

    import peer_keras
    import_s = time.perf_counter() - t
    keras.utils.set_random_seed(args.seed)
    model = peer_keras.build_model(args.model, keras, common.MODELS[args.model].input_shape)
    peer_keras.compile_model(model, keras, metrics=["accuracy"])
    walls: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # after validation
            walls.append(time.perf_counter() - self.t)

    h = model.fit(x, y, validation_data=(xv, yv), epochs=args.epochs, batch_size=args.batch_size, verbose=0, callbacks=[Timer()])
    return {"epochs_s": walls, "import_s": import_s, "version": keras.__version__, "path": "model.fit, JAX backend",
            "final_loss": float(h.history["loss"][-1])}


def side(args) -> None:
    x, y, xv, yv = data(args.model, args.batch_size, args.batches, args.seed)
    out = {"jaxcnn": jaxcnn_side, "torch": torch_side, "keras": keras_side}[args.side](args, x, y, xv, yv)
    walls = out["epochs_s"]
    steady = float(np.median(walls[1:]))
    out.update(framework=args.side, model=args.model, batch_size=args.batch_size, train_examples=len(x), val_examples=len(xv),
               epoch_s=steady, examples_per_s=len(x) / steady, first_epoch_s=walls[0], start_up_s=walls[0] - steady,
               process_s=time.perf_counter() - START)
    print(json.dumps(out))


def run_side(args, framework: str, model: str, cache: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--side", framework, "--models", model, "--epochs", str(args.epochs),
           "--batches", str(args.batches), "--threads", str(args.threads), "--cache", cache, "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{framework} on {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all", help="comma-separated names of _peer_common.MODELS (the report's models and bn_mnist, a user's BatchNorm model), or all (default)")
    p.add_argument("--frameworks", default="jaxcnn,torch,keras", help="comma-separated: jaxcnn, torch, keras")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is the start-up (default 3)")
    p.add_argument("--batches", type=int, default=20, help="training batches per epoch (default 20)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.epochs < 2 or args.batches < 1:
        p.error("--epochs must be at least 2 (the first is the start-up) and --batches at least 1")
    models = list(common.MODELS) if args.models == "all" else args.models.split(",")
    unknown = [m for m in models if m not in common.MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {sorted(common.MODELS)}")
    if args.side:
        args.model = models[0]
        args.batch_size = common.MODELS[args.model].batch_size
        side(args)
        return
    frameworks = args.frameworks.split(",")
    results = []
    for model in models:
        with tempfile.TemporaryDirectory() as cache:
            for fw in frameworks:
                runs = ["cold", "warm"] if fw == "jaxcnn" else [""]
                for label in runs:
                    r = run_side(args, fw, model, cache)
                    r["run"] = label
                    results.append(r)
                    print(f"{model:11s} {fw:6s} {label:4s} epoch {r['epoch_s']:6.2f} s  {r['examples_per_s']:8.0f} ex/s  "
                          f"first epoch {r['first_epoch_s']:6.2f} s  start-up {r['start_up_s']:5.2f} s  import {r['import_s']:4.2f} s  "
                          f"({r['path']})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_before": os.getloadavg(), "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
