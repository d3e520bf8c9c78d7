"""jaxcnn peer: the SPEC's mnist_cnn / cifar_cnn3 trained on random data, timed.

    python benchmarks/peer_jaxcnn.py --model mnist_cnn --steps 200 --warmup 5 --json j.json

PLACEHOLDER: for now this is plain flax.linen + optax, the way a Flax user would write it
(nn.max_pool, one jitted train step fed numpy batches), so that the harness runs end to end.
It is meant to be swapped for the jaxcnn API (model registry, optimizer, train step) keeping
this CLI and the JSON fields; `implementation` in the JSON says which one ran.

Timing: the first call of the jitted step (trace, compile, run) until its loss is ready is
`first_step_s`; the timed loop dispatches asynchronously and ends with block_until_ready on the
new parameters and the last loss. Common CLI and timing rules: _peer_common.py.

Optimizer: optax.rmsprop(1e-3, decay=0.9, eps=1e-7) with eps_in_sqrt=True (optax's default),
which is Keras's update lr * g / sqrt(v + eps) (keras/src/optimizers/rmsprop.py);
eps_in_sqrt=False would be torch's lr * g / (sqrt(v) + eps). Both start v at 0, as Keras does
(initial_scale=0.0). Kernels glorot_uniform, biases zero, as in Keras.
"""

from __future__ import annotations

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as common  # noqa: E402


def build_model(name: str, nn):
    """A flax.linen module equal to the SPEC's model; `nn` is flax.linen (imported by main)."""
    glorot = nn.initializers.xavier_uniform()
    conv = functools.partial(nn.Conv, kernel_init=glorot)
    dense = functools.partial(nn.Dense, kernel_init=glorot)

    def pool(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    if name == "mnist_cnn":
        class MnistCNN(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.relu(conv(32, (3, 3), padding="VALID")(x))  # 26x26x32, 320
                x = pool(x)  # 13x13x32
                x = nn.relu(conv(32, (3, 3), padding="VALID")(x))  # 11x11x32, 9,248
                x = x.reshape(x.shape[0], -1)  # 3872
                x = nn.relu(dense(64)(x))  # 247,872
                return dense(10)(x)  # 650, logits

        return MnistCNN()
    if name == "cifar_cnn3":
        class CifarCNN3(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = conv(32, (3, 3), padding="VALID")(x)  # 30x30x32, 896; no activation
                x = pool(x)  # 15x15x32
                x = nn.leaky_relu(conv(64, (5, 5), padding="SAME")(x), 0.1)  # 51,264
                x = pool(x)  # 7x7x64
                x = nn.leaky_relu(conv(64, (5, 5), padding="SAME")(x), 0.1)  # 102,464
                x = nn.leaky_relu(conv(64, (5, 5), padding="SAME")(x), 0.1)  # 102,464
                x = x.reshape(x.shape[0], -1)  # 3136
                x = nn.relu(dense(256)(x))  # 803,072
                x = nn.relu(dense(128)(x))  # 32,896
                return dense(10)(x)  # 1,290, logits

        return CifarCNN3()
    raise ValueError(f"unknown model {name!r}")


def main() -> None:
    args = common.parse_args("jaxcnn")
    x, y = common.make_data(args)

    t0 = time.perf_counter()
    import flax
    import flax.linen as nn
    import jax
    import optax
    import_s = time.perf_counter() - t0

    wall_start = time.perf_counter()
    model = build_model(args.model, nn)
    bs = args.batch_size
    params = model.init(jax.random.key(args.seed), x[:1])["params"]
    n_params = sum(int(p.size) for p in jax.tree.leaves(params))
    tx = optax.rmsprop(1e-3, decay=0.9, eps=1e-7, eps_in_sqrt=True)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, xb, yb):
        def loss_fn(p):
            logits = model.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def batch(i: int):
        s = common.batch_start(i, args)
        return x[s:s + bs], y[s:s + bs]

    t = time.perf_counter()
    params, opt_state, loss = train_step(params, opt_state, *batch(0))
    jax.block_until_ready(loss)
    first_step_s = time.perf_counter() - t
    for i in range(1, args.warmup):
        params, opt_state, loss = train_step(params, opt_state, *batch(i))
    jax.block_until_ready((params, loss))

    t = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        params, opt_state, loss = train_step(params, opt_state, *batch(i))
    jax.block_until_ready((params, loss))
    timed_s = time.perf_counter() - t
    wall_s = time.perf_counter() - wall_start

    versions = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
    try:
        from importlib.metadata import version as _dist_version
        versions["jaxcnn"] = _dist_version("jaxcnn")
    except Exception:  # not installed as a distribution
        versions["jaxcnn"] = None
    common.finish(args, {
        "framework": "jaxcnn",
        "version": versions["jaxcnn"] or "unknown",
        "versions": versions,
        "implementation": "placeholder: plain flax.linen + optax, nn.max_pool",
        "devices": [str(d) for d in jax.devices()],
        "params": n_params,
        "steps_timed": args.steps,
        "timed_s": timed_s,
        "first_step_s": first_step_s,
        "wall_s": wall_s,
        "import_s": import_s,
        "final_loss": float(loss),
        "timing": "jitted step fed numpy batches, block_until_ready after the timed steps",
    })


if __name__ == "__main__":
    main()
