"""MNIST CNN on an accelerator (or the CPU): throughput, time to 99% test accuracy, and MFU.

    python benchmarks/accelerator.py                      # full MNIST, up to 15 epochs
    python benchmarks/accelerator.py --precision bf16 --batch-size 512
    python benchmarks/accelerator.py --limit 4096 --max-epochs 1 --target 0.5   # smoke test

Trains the report's MNIST CNN with jaxcnn.fit on the bundled data (validation on the test
split, evaluated after every epoch) and reports: steady examples per second (median of epochs
after the first), time to the first epoch whose test accuracy reaches --target (0.99), the
compile time of the first step, and model FLOP utilisation = FLOPs of one train step (from XLA's
cost analysis of the compiled step) x steps per second / the device's peak FLOP/s (--peak-tflops,
or a built-in table for H100/H200/A100; for the CPU pass it). Writes JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn
from jaxcnn import data, train
from jaxcnn.callbacks import Callback

# Dense peak TFLOP/s by device kind: (float32 without tensor cores, bf16 tensor cores).
PEAKS = {
    "H100": (67.0, 989.0),
    "H200": (67.0, 989.0),
    "A100": (19.5, 312.0),
}


class _Clock(Callback):
    """Records the wall time at which test accuracy first reaches ``target``."""

    def __init__(self, target: float):
        self.target, self.t0, self.reached = target, None, None

    def on_train_begin(self, loop):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs, loop):
        if self.reached is None and logs.get("val_accuracy", 0) >= self.target:
            self.reached = (epoch + 1, time.perf_counter() - self.t0)
            loop.stop_training = True


def step_flops(state: train.TrainState, batch_size: int, shape: tuple[int, ...]) -> float | None:
    batch = {"x": jnp.zeros((batch_size, *shape), jnp.float32), "y": jnp.zeros((batch_size,), jnp.int32)}
    compiled = jax.jit(train.train_step).lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0)) or None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-epochs", type=int, default=15)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--devices", default="auto")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    ds = data.load("mnist")
    if args.limit:
        ds = ds.limit(args.limit)
    x, y = data.to_float(ds.x_train), ds.y_train
    xt, yt = data.to_float(ds.x_test), ds.y_test
    dtype = jnp.bfloat16 if args.precision == "bf16" else None
    model = jaxcnn.get_model("mnist_cnn", dtype=dtype)
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    dev = jax.devices()[0]

    state0 = train.create_train_state(model, (28, 28, 1), seed=args.seed)
    flops = step_flops(state0, args.batch_size, (28, 28, 1))
    clock = _Clock(args.target)
    t = time.perf_counter()
    state, hist = jaxcnn.fit(
        state0, x, y, epochs=args.max_epochs, batch_size=args.batch_size, validation_data=(xt, yt),
        seed=args.seed, callbacks=[clock], verbose=0, devices=devices,
    )
    wall = time.perf_counter() - t
    eps = hist["examples_per_s"]
    steady = float(np.median(eps[1:])) if len(eps) > 1 else float(eps[0])
    kind = dev.device_kind
    peak = args.peak_tflops
    if peak is None:
        for name, (fp32, bf16) in PEAKS.items():
            if name in kind:
                peak = bf16 if args.precision == "bf16" else fp32
    steps_per_s = steady / args.batch_size
    result = {
        "device": f"{dev.platform}: {kind}",
        "devices_used": jax.local_device_count() if devices == "all" else train.placement(devices).size,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "examples_per_s": steady,
        "epoch_times_s": hist["time_s"],
        "first_epoch_s": hist["time_s"][0],
        "test_accuracy_per_epoch": hist["val_accuracy"],
        "target": args.target,
        "epochs_to_target": clock.reached[0] if clock.reached else None,
        "time_to_target_s": clock.reached[1] if clock.reached else None,
        "wall_s": wall,
        "step_flops": flops,
        "achieved_tflops": flops * steps_per_s / 1e12 if flops else None,
        "peak_tflops": peak,
        "mfu": (flops * steps_per_s / 1e12 / peak) if (flops and peak) else None,
        "versions": {"jax": jax.__version__, "jaxcnn": jaxcnn.__version__},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
