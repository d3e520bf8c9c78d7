"""A registry model's part-gradient program with Winograd's 5x5 convolutions and with XLA's, in one
process, the two alternating round by round (so that the machine's drift hits both alike).

    python benchmarks/winograd_ab.py --model cifar_cnn3 --batch 32            # one core
    python benchmarks/winograd_ab.py --model cifar_cnn3 --batch 32 --parts 16 # 16 parts over the CPU devices

With ``--parts`` the program runs that many times per round, dealt out in turn to the CPU devices
``import jaxcnn`` made (one per core), as ``fit``'s parts strategy does; without, once per round
on one device pinned to one core. Prints the medians and their ratio, and the compile times.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_cnn3")
    p.add_argument("--batch", type=int, default=32, help="examples per program (a part: 32)")
    p.add_argument("--parts", type=int, default=0, help="programs per round over all CPU devices (0: one, on one core)")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    if not args.parts:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        os.environ.setdefault("JAXCNN_CPU_DEVICES", "1")

    import jax
    import jax.numpy as jnp
    import optax

    import jaxcnn
    import jaxcnn.layers as L

    shape = jaxcnn.models._lookup(args.model)[1]
    model = jaxcnn.get_model(args.model)
    x = jax.random.normal(jax.random.key(0), (args.batch, *shape))
    y = jnp.arange(args.batch) % 10
    variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x[:1])

    def loss(params, x, y):
        out, _ = model.apply({**variables, "params": params}, x, train=True, rngs={"dropout": jax.random.key(3)},
                             mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    devices = jax.local_devices() if args.parts else jax.local_devices()[:1]
    inputs = [jax.device_put((variables["params"], x, y), d) for d in devices]
    programs, compile_s = {}, {}
    for on in (True, False):
        L.WINOGRAD = on  # read when the program is traced
        t = time.perf_counter()
        programs[on] = [jax.jit(jax.grad(loss)).lower(*a).compile() for a in inputs]
        compile_s[on] = (time.perf_counter() - t) / len(inputs)

    def run(on: bool) -> float:
        t = time.perf_counter()
        outs = [programs[on][i % len(devices)](*inputs[i % len(devices)]) for i in range(max(args.parts, 1))]
        jax.block_until_ready(outs)
        return time.perf_counter() - t

    for on in programs:
        run(on), run(on)
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            times[on].append(run(on))
    w, xla = (1e3 * statistics.median(times[on]) for on in (True, False))
    where = f"{args.parts} parts over {len(devices)} devices" if args.parts else "one program, one core"
    print(f"{args.model}, {args.batch} examples, {where}: Winograd {w:.1f} ms, XLA {xla:.1f} ms, XLA / Winograd {xla / w:.2f}x; "
          f"compile {compile_s[True]:.1f} s against {compile_s[False]:.1f} s")


if __name__ == "__main__":
    main()
