"""Where the MNIST CNN's train step spends its time on this machine, layer by layer.

    python benchmarks/profile_step.py [--batch-size 128] [--devices 1] [--repeat 50]

Times, each as its own jitted program on the same random batch: the whole jaxcnn train step;
the loss's forward pass alone; forward plus backward; and, for each layer, its forward and its
forward plus backward (gradients of its input and parameters) at the shapes it sees in the
model. Prints a table (milliseconds per call, median of --repeat calls) and the share of the
step. With --devices 2 the step runs on a data-parallel mesh over two XLA CPU devices; fit's
default instead cuts each batch into parts of 32 dealt out to the devices (time that with
peer_jaxcnn.py), and --batch-size 32 profiles the program one such part runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn
from jaxcnn import layers as L
from jaxcnn import train


def _time(fn, *args, repeat: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    b = args.batch_size
    rng = np.random.default_rng(0)
    x = rng.random((b, 28, 28, 1), np.float32)
    y = rng.integers(0, 10, b).astype(np.int32)
    model = jaxcnn.get_model("mnist_cnn")
    place = train.placement(args.devices)
    state = place.put_state(train.create_train_state(model, (28, 28, 1)))
    batch = place.put_batch({"x": x, "y": y})

    step = jax.jit(lambda s, bt: train.train_step(s, bt)[0])
    rows = [("train step (forward, backward, RMSprop)", _time(step, state, batch, repeat=args.repeat))]

    def loss(params, bt):
        logits = model.apply({"params": params}, bt["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, bt["y"]).mean()

    rows.append(("forward + loss", _time(jax.jit(loss), state.params, batch, repeat=args.repeat)))
    rows.append(("forward + backward", _time(jax.jit(jax.grad(loss)), state.params, batch, repeat=args.repeat)))

    if args.devices == 1:
        per_layer = [
            ("conv2d 3x3 1->32 (28x28)", L.Conv2D(32, 3, activation="relu"), (b, 28, 28, 1)),
            ("max_pooling2d reshape-max (26x26x32)", L.MaxPool2D(2), (b, 26, 26, 32)),
            ("conv2d_1 3x3 32->32 (13x13)", L.Conv2D(32, 3, activation="relu"), (b, 13, 13, 32)),
            ("dense 3872->64", L.Dense(64, activation="relu"), (b, 3872)),
            ("dense_1 64->10", L.Dense(10), (b, 64)),
        ]
        for name, layer, shape in per_layer:
            xin = jnp.asarray(rng.random(shape, np.float32))
            v = layer.init(jax.random.key(0), xin)
            fwd = jax.jit(lambda v, xin, layer=layer: layer.apply(v, xin))
            bwd = jax.jit(jax.grad(lambda v, xin, layer=layer: jnp.sum(layer.apply(v, xin) ** 2), argnums=(0, 1)))
            rows.append((f"  {name}: forward", _time(fwd, v, xin, repeat=args.repeat)))
            rows.append((f"  {name}: forward + backward", _time(bwd, v, xin, repeat=args.repeat)))
        import flax.linen as nn

        xin = jnp.asarray(rng.random((b, 26, 26, 32), np.float32))
        sel = jax.jit(jax.grad(lambda xin: jnp.sum(nn.max_pool(xin, (2, 2), (2, 2)) ** 2)))
        rows.append(("  (for comparison) flax max_pool: forward + backward", _time(sel, xin, repeat=args.repeat)))

    total = rows[0][1]
    print(f"mnist_cnn, batch {b}, {place.size} device(s), median of {args.repeat} calls, {jax.devices()[0].device_kind}")
    print(f"{'program':58s} {'ms':>8s} {'% of step':>10s}")
    for name, ms in rows:
        print(f"{name:58s} {ms:8.2f} {100 * ms / total:9.0f}%")
    print(f"step = {b / total * 1000:,.0f} examples/s")


if __name__ == "__main__":
    main()
