"""XLA's CPU convolution against im2col, layer by layer: the measurements behind
``jaxcnn.layers.conv_plan``'s rule.

    python benchmarks/conv_methods.py                 # the default layers, pinned to one core
    python benchmarks/conv_methods.py --cores 2 --rounds 5
    python benchmarks/conv_methods.py --layer 32,13,32,64,3   # batch, size, in, out, kernel

Each layer (a part's batch of 32 examples by default, "valid" padding) is timed forward and
backward (the gradients of its input and its kernel) as one jitted program, with
``conv2d(method="xla")`` and ``conv2d(method="im2col")``, in interleaved rounds; the table gives
the best of the rounds for each and XLA's time over im2col's (above 1: im2col is faster), and
what ``method="auto"`` picks for that shape. ``--cores 1`` (the default) pins the process to one
core before JAX starts, as the ``parts`` strategy gives each CPU device one core. Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

#: (batch, input size, input channels, output channels, kernel): the report models' layers at
#: part size and a few shapes around them.
LAYERS = [
    (32, 28, 1, 32, 3),  # mnist_cnn's first
    (32, 13, 8, 32, 3),
    (32, 13, 32, 32, 3),  # mnist_cnn's second
    (32, 13, 32, 64, 3),
    (32, 15, 32, 64, 3),  # cifar_cnn1's second
    (32, 13, 32, 128, 3),
    (32, 13, 64, 32, 3),
    (32, 13, 16, 16, 3),
    (32, 30, 32, 32, 3),  # 29 MB of patches
    (32, 32, 3, 32, 3),  # the CIFAR models' first
    (32, 11, 64, 64, 5),  # cifar_cnn3's last two, "same" padding there
    (32, 28, 1, 32, 7),  # search_cnn's first at k = 7
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", type=int, default=1, help="pin to this many cores (0: leave the process as it is)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=40, help="calls timed per round (the median is kept)")
    p.add_argument("--layer", action="append", help="batch,size,in,out,kernel (repeatable; default: a set of layers)")
    args = p.parse_args()
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcnn.layers import conv2d, conv_plan

    def timed(fn, *a) -> float:
        jax.block_until_ready(fn(*a))
        ts = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            jax.block_until_ready(fn(*a))
            ts.append(time.perf_counter() - t)
        return 1000 * statistics.median(ts)

    layers = [tuple(int(v) for v in s.split(",")) for s in args.layer] if args.layer else LAYERS
    rng = np.random.default_rng(0)
    print(f"cores: {len(os.sched_getaffinity(0))}, rounds: {args.rounds}, JAX {jax.__version__} on {jax.default_backend()}")
    print("| batch, size, in -> out, kernel | patches MB | XLA ms | im2col ms | XLA / im2col | auto picks |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for b, size, c, f, k in layers:
        x = jnp.asarray(rng.random((b, size, size, c), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, c, f)).astype(np.float32) * 0.1)
        dy = jnp.asarray(rng.random((b, size - k + 1, size - k + 1, f), np.float32))
        progs = {m: jax.jit(lambda x, w, dy, m=m: jax.vjp(lambda x, w: conv2d(x, w, method=m), x, w)[1](dy)) for m in ("xla", "im2col")}
        runs: dict[str, list[float]] = {m: [] for m in progs}
        for _ in range(args.rounds):  # interleaved, so a drift of the machine hits both alike
            for m, fn in progs.items():
                runs[m].append(timed(fn, x, w, dy))
        best = {m: min(v) for m, v in runs.items()}
        mb = b * (size - k + 1) ** 2 * k * k * c * 4 / 1e6
        auto = conv_plan(x.shape, w.shape)[0]
        print(f"| {b}, {size}x{size}, {c} -> {f}, {k}x{k} | {mb:.1f} | {best['xla']:.2f} | {best['im2col']:.2f} | "
              f"{best['xla'] / best['im2col']:.2f}x | {auto} |", flush=True)


if __name__ == "__main__":
    main()
