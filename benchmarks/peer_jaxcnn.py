"""jaxcnn peer: one of the assignment's models (_peer_common.MODELS) trained on random data, timed.

    python benchmarks/peer_jaxcnn.py --model mnist_cnn --steps 200 --warmup 5 --json j.json

This is the path a user's `jaxcnn.fit` takes: the registry model, Keras's RMSprop from
`jaxcnn.optim`, the strategy `fit` would choose (`jaxcnn.train.choose_strategy`) and
`jaxcnn.train.run_epoch` (host batches, jitted steps, metrics accumulated on the device). With
`devices="auto"` on CPU that is the parts strategy: one XLA device per core, each batch cut into
parts of at most 32 dealt out to them without collectives. `--devices=None` times the
single-device step, `--devices=2` the XLA mesh (SPMD with an all-reduce); `--precision bf16` the mixed-precision
model (bfloat16 compute, float32 parameters).

Timing: `first_step_s` is one step from a fresh state, compile included; the timed steps are one
`run_epoch` over `steps` batches, which returns only once its metrics are on the host.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as common  # noqa: E402


def main() -> None:
    extra = [a for a in sys.argv[1:] if a.startswith("--devices") or a.startswith("--precision")]
    rest = [a for a in sys.argv[1:] if a not in extra]
    opts = dict(a.lstrip("-").split("=", 1) for a in extra)
    args = common.parse_args("jaxcnn", rest)
    x, y = common.make_data(args)

    t0 = time.perf_counter()
    import flax
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jaxcnn
    from jaxcnn import train
    import_s = time.perf_counter() - t0

    wall_start = time.perf_counter()
    bs = args.batch_size
    devices = opts.get("devices", "auto")
    devices = int(devices) if devices.isdigit() else (None if devices == "None" else devices)
    dtype = {"fp32": None, "bf16": jnp.bfloat16}[opts.get("precision", "fp32")]
    model = common.jaxcnn_model(args.model, **({"dtype": dtype} if dtype is not None else {}))  # cifar_cnn4's L2 0.01 is the registry's
    state = train.create_train_state(model, x.shape[1:], "rmsprop", 1e-3, seed=args.seed)
    strategy = train.choose_strategy(devices, bs, state, data_on_device=False)
    state = strategy.put_state(state)
    data = train.Data(x, y)
    n_params = sum(int(p.size) for p in jax.tree.leaves(state.params))

    def order(first: int, steps: int):
        return np.concatenate([np.arange(common.batch_start(i, args), common.batch_start(i, args) + bs) for i in range(first, first + steps)])

    t = time.perf_counter()
    state, _ = train.run_epoch(state, strategy, data, order(0, 1), bs)
    first_step_s = time.perf_counter() - t
    if args.warmup > 1:
        state, _ = train.run_epoch(state, strategy, data, order(1, args.warmup - 1), bs)
    t = time.perf_counter()
    state, logs = train.run_epoch(state, strategy, data, order(args.warmup, args.steps), bs)
    timed_s = time.perf_counter() - t
    wall_s = time.perf_counter() - wall_start

    versions = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "jaxcnn": jaxcnn.__version__}
    common.finish(args, {
        "framework": "jaxcnn",
        "version": jaxcnn.__version__,
        "versions": versions,
        "implementation": f"jaxcnn.train.run_epoch, {strategy.name} strategy, precision={opts.get('precision', 'fp32')}",
        "devices": [str(d) for d in getattr(strategy, "devices", strategy.place.devices)],
        "params": n_params,
        "steps_timed": args.steps,
        "timed_s": timed_s,
        "first_step_s": first_step_s,
        "wall_s": wall_s,
        "import_s": import_s,
        "final_loss": logs["loss"],
        "timing": "run_epoch (the fit path), synchronised on its metrics",
    })


if __name__ == "__main__":
    main()
