"""Where an epoch of the MNIST experiment goes: jaxcnn's ``fit`` against a PyTorch loop doing the
same work, each in its own process, in one run (issue 16, goal 1).

    python benchmarks/epoch_split.py                     # --limit 24000 --epochs 3, both sides
    python benchmarks/epoch_split.py --frameworks jaxcnn --json split.json

The work, on both sides: the MNIST CNN, RMSprop (lr 0.001, rho 0.9, epsilon 1e-7), batch 128,
the first ``--limit`` training images with the last 20% held out for validation (as Keras's
``validation_split=0.2``), a shuffled order each epoch, validation every epoch and a checkpoint
of the weights and optimizer state every epoch. Only the steady epochs (2 onwards) are reported.

jaxcnn's epoch (``jaxcnn.fit(..., checkpoint_dir=...)``, as ``experiments.mnist`` runs it) is split
into:

* ``train``: fit's training loop (``train_time_s`` in its logs): batch gathering on the host,
  transfers, the compiled steps and the metric reads;
* ``validation``: the validation pass (``time_s - train_time_s``);
* ``checkpoint and callbacks``: the rest of the epoch (orbax's save of the state, the history);
* ``programs``: the compiled programs alone on inputs already on their devices: the same
  training programs (:func:`jaxcnn.train.part_grads` per part, then the sum and the update, or
  :func:`jaxcnn.train.train_and_accumulate` on one device) and evaluation programs, run back to
  back for one epoch's batches, from a copy of the state, right after each epoch (a callback;
  its own time is taken out of the epoch). ``everything else`` is the epoch minus ``programs``.

PyTorch's epoch: the plain loop a user writes (``zero_grad``/forward/``cross_entropy``/
``backward``/``step``, ``loss.item()`` each step), a ``no_grad`` validation pass and
``torch.save`` of the model and optimizer; eager on 2 threads. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def load(limit: int):
    from jaxcnn import data

    ds = data.load("mnist")
    x, y = data.to_float(ds.x_train[:limit]), ds.y_train[:limit].astype(np.int32)
    return data.validation_split(x, y, 0.2)


def _steady(walls: list[float]) -> float:
    return float(np.median(walls[1:] if len(walls) > 1 else walls))


def jaxcnn_side(args: argparse.Namespace) -> dict:
    import jax

    import jaxcnn
    from jaxcnn import callbacks, train

    (xt, yt), (xv, yv) = load(args.limit)
    marks: list[float] = []
    logs: list[dict] = []
    programs: list[float] = []
    asides: list[float] = []  # the time Clock itself takes at each epoch's end
    runner: list = []

    class Clock(callbacks.Callback):
        """Marks each epoch, and right after it times the compiled programs alone on the same
        state, so that the two timings are seconds apart (this machine's speed drifts)."""

        def on_epoch_begin(self, epoch, loop):
            marks.append(time.perf_counter())

        def on_epoch_end(self, epoch, epoch_logs, loop):
            t0 = time.perf_counter()
            logs.append(dict(epoch_logs))
            if not runner:
                strategy = train.choose_strategy("auto", args.batch_size, loop.state)
                runner.append((strategy.name, programs_runner(strategy, xt, yt, xv, yv, args.batch_size)))
            programs.append(runner[0][1](loop.state))
            asides.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        jaxcnn.fit(jaxcnn.get_model("mnist_cnn"), xt, yt, validation_data=(xv, yv), epochs=args.epochs,
                   batch_size=args.batch_size, checkpoint_dir=os.path.join(tmp, "ckpt"), callbacks=[Clock()],
                   verbose=0, seed=0)
        marks.append(time.perf_counter())  # fit returned: the last epoch's checkpoint is written
    walls = [b - a - aside for a, b, aside in zip(marks, marks[1:], asides)]
    epoch, program = _steady(walls), _steady(programs)
    return {"framework": "jaxcnn", "strategy": runner[0][0], "devices": len(jax.devices()), "epoch_s": epoch,
            "train_s": _steady([lg["train_time_s"] for lg in logs]),
            "validation_s": _steady([lg["time_s"] - lg["train_time_s"] for lg in logs]),
            "checkpoint_s": _steady([w - lg["time_s"] for w, lg in zip(walls, logs)]),
            "programs_s": program, "other_s": epoch - program,
            "other_per_epoch": [w - p for w, p in zip(walls, programs)][1:], "examples": len(xt),
            "val_accuracy": logs[-1].get("val_accuracy"), "epochs": len(logs)}


def programs_runner(strategy, xt, yt, xv, yv, batch_size: int):
    """A function ``state -> seconds``: one epoch of the compiled training and evaluation
    programs alone, on inputs already placed on their devices, from a copy of ``state``."""
    import jax
    import jax.numpy as jnp

    from jaxcnn import train

    n = len(xt) // batch_size * batch_size
    batches = [{"x": xt[i:i + batch_size], "y": yt[i:i + batch_size]} for i in range(0, n, batch_size)]
    devices = list(getattr(strategy, "devices", [jax.devices()[0]]))
    if strategy.name == "parts":
        part = jax.jit(lambda s, b, j, n: train.part_grads(s, s.params, b, j, n))  # as the strategy calls it
        combine = jax.jit(train.step.combine_and_update, donate_argnums=(0, 1))
        step = None
    else:
        step = jax.jit(train.train_and_accumulate, donate_argnums=(0, 1))
    evaluate = jax.jit(train.eval_and_accumulate)
    m = len(xv) // batch_size * batch_size
    val = [jax.device_put({"x": xv[i:i + batch_size], "y": yv[i:i + batch_size]}, devices[k % len(devices)])
           for k, i in enumerate(range(0, m, batch_size))]
    placed: list = []  # filled on the first call, when the state (and so the part count) is known

    def one_epoch(state):
        acc = train.zero_metrics(state)
        if step is not None:
            for b in placed:
                state, acc = step(state, acc, b)
            return state, acc
        for pieces in placed:
            light = state.replace(opt_state=None)
            replicas = [light] + [jax.device_put(light, d) for d in devices[1:]]
            out = [part(replicas[j % len(devices)], *p) for j, p in enumerate(pieces)]
            grads, metrics = jax.device_put(([o[0] for o in out], [o[1] for o in out]), devices[0])
            state, acc = combine(state, acc, grads, metrics)
        return state, acc

    def one_validation(state):
        replicas = [jax.device_put(state, d) for d in devices]
        accs = [train.zero_metrics(state) for _ in devices]
        for k, b in enumerate(val):
            accs[k % len(devices)] = evaluate(replicas[k % len(devices)], accs[k % len(devices)], b)
        return accs

    def run(state) -> float:
        state = jax.tree.map(jnp.copy, state)
        if not placed:  # first call: place the inputs and compile
            if step is None:
                parts = train.split_parts(batch_size, strategy.part_size, train.max_parts(state))
                size = batch_size // parts
                placed.extend([[jax.device_put(({k: v[j * size:(j + 1) * size] for k, v in b.items()}, np.int32(j),
                                                np.float32(batch_size)), devices[j % len(devices)]) for j in range(parts)]
                               for b in batches])
            else:
                placed.extend(jax.device_put(b, devices[0]) for b in batches)
            jax.block_until_ready(one_epoch(jax.tree.map(jnp.copy, state)))
            jax.block_until_ready(one_validation(state))
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        out = one_epoch(state)
        jax.block_until_ready(out)
        jax.block_until_ready(one_validation(out[0]))
        # Scale to the whole epoch: the last partial batches were left out above.
        return (time.perf_counter() - t0) * len(xt) / n

    return run


def torch_side(args: argparse.Namespace) -> dict:
    import torch
    from torch import nn

    from peer_torch import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    (xt, yt), (xv, yv) = load(args.limit)
    xt, xv = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))) for a in (xt, xv))
    yt, yv = torch.from_numpy(yt.astype(np.int64)), torch.from_numpy(yv.astype(np.int64))
    model, _ = build_model("mnist_cnn", nn)  # no L2 on the MNIST CNN
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    walls, train_s, val_s, ckpt_s = [], [], [], []
    bs = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            model.train()
            order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(xt)))
            total, correct = 0.0, 0
            for i in range(0, len(xt), bs):
                idx = order[i:i + bs]
                xb, yb = xt[idx], yt[idx]
                opt.zero_grad()
                out = model(xb)
                loss = loss_fn(out, yb)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                correct += (out.argmax(1) == yb).sum().item()
            t1 = time.perf_counter()
            model.eval()
            vloss, vcorrect = 0.0, 0
            with torch.no_grad():
                for i in range(0, len(xv), bs):
                    out = model(xv[i:i + bs])
                    vloss += loss_fn(out, yv[i:i + bs]).item() * len(out)
                    vcorrect += (out.argmax(1) == yv[i:i + bs]).sum().item()
            t2 = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                       os.path.join(tmp, f"epoch{epoch + 1}.pt"))
            t3 = time.perf_counter()
            walls.append(t3 - t0)
            train_s.append(t1 - t0)
            val_s.append(t2 - t1)
            ckpt_s.append(t3 - t2)
    return {"framework": "torch", "version": torch.__version__, "epoch_s": _steady(walls), "train_s": _steady(train_s),
            "validation_s": _steady(val_s), "checkpoint_s": _steady(ckpt_s), "examples": len(xt),
            "val_accuracy": vcorrect / len(xv), "epochs": args.epochs}


def table(results: dict[str, dict]) -> str:
    lines = ["| | epoch | train | validation | checkpoint and callbacks | compiled programs | everything else | examples/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for fw, r in results.items():
        programs = f"{r['programs_s']:.2f} s" if "programs_s" in r else ""
        other = f"{r['other_s']:.2f} s ({r['other_s'] / r['epoch_s']:.0%})" if "other_s" in r else ""
        lines.append(f"| {fw} | {r['epoch_s']:.2f} s | {r['train_s']:.2f} s | {r['validation_s']:.2f} s | "
                     f"{r['checkpoint_s']:.2f} s | {programs} | {other} | {r['examples'] / r['epoch_s']:,.0f} |")
    if {"jaxcnn", "torch"} <= results.keys():
        lines.append("")
        lines.append(f"jaxcnn / PyTorch, steady epoch: {results['torch']['epoch_s'] / results['jaxcnn']['epoch_s']:.2f}x")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=24000, help="training images used, 20%% of them for validation (default 24000)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per side; the first (compiling) one is left out (default 3)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads (default 2)")
    p.add_argument("--frameworks", default="jaxcnn,torch", help="comma-separated: jaxcnn, torch")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        out = jaxcnn_side(args) if args.side == "jaxcnn" else torch_side(args)
        print(json.dumps(out))
        return 0
    results = {}
    for fw in args.frameworks.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--side", fw, "--limit", str(args.limit), "--epochs",
               str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
        if proc.returncode:
            print(f"{fw} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[fw] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{fw}: {results[fw]}", flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "load_average": os.getloadavg()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
