"""Keras 3 on its JAX backend: one of the assignment's models (_peer_common.MODELS) trained on random data, timed.

    python benchmarks/peer_keras.py --model mnist_cnn --steps 200 --warmup 5 --json k.json

How it is timed, and why: a Keras user trains with `model.fit` on numpy arrays, so that is what
is timed (verbose=0, so no progress bar; otherwise defaults: jit_compile="auto", i.e. XLA,
steps_per_execution=1). `train_on_batch` would skip fit's data adapter and callbacks, which a
real run pays for.
- first_step_s: the first `fit(..., epochs=1, steps_per_epoch=1)` call: tracing, XLA compile and
  one step, plus fit's own set-up.
- warm-up: the remaining warmup-1 steps in one more `fit` call (the jitted train function is
  cached on the model, so nothing recompiles).
- timed: one `fit` call over the timed steps. Keras stops an epoch early, with a warning, when
  steps_per_epoch exceeds the batches in the array, so the steps are split evenly into the
  fewest epochs of at most one pass over the pool each, rounding up when they do not divide
  (`steps_timed` in the JSON is what ran; the default 200 steps over 64 batches is exact). fit's
  bookkeeping per call and per epoch is inside the timing, as for a user. fit returns only after
  syncing the trained weights back to the Keras variables; a block_until_ready on them follows
  to be sure the last step has finished.

RMSprop: keras.optimizers.RMSprop() defaults are learning_rate 0.001, rho 0.9, epsilon 1e-7, and
the update divides by sqrt(v + epsilon): epsilon inside the square root
(keras/src/optimizers/rmsprop.py), unlike torch.optim.RMSprop's sqrt(v) + eps.
Common CLI and timing rules: _peer_common.py.
"""

from __future__ import annotations

import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported anywhere

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as common  # noqa: E402


def build_model(name: str, keras, input_shape: tuple[int, int, int]):
    L = keras.layers
    if name == "mnist_cnn":
        body = [
            L.Conv2D(32, 3, activation="relu"),  # 26x26x32, 320
            L.MaxPooling2D(2),  # 13x13x32
            L.Conv2D(32, 3, activation="relu"),  # 11x11x32, 9,248
            L.Flatten(),  # 3872
            L.Dense(64, activation="relu"),  # 247,872
            L.Dense(10),  # 650, logits
        ]
    elif name == "bn_mnist":  # _peer_common.jaxcnn_model
        body = [
            L.Conv2D(32, 3), L.BatchNormalization(), L.Activation("relu"), L.MaxPooling2D(2),
            L.Conv2D(32, 3), L.BatchNormalization(), L.Activation("relu"),
            L.Flatten(), L.Dropout(0.25),
            L.Dense(64, activation="relu"),
            L.Dense(10),  # logits
        ]
    elif name == "search_cnn":
        k, reg = common.SEARCH_KERNEL, dict(kernel_regularizer=keras.regularizers.L2(common.SEARCH_L2))
        body = [
            L.Conv2D(32, k, activation="relu", **reg),  # 22x22x32, 1,600
            L.MaxPooling2D(2),  # 11x11x32
            L.Conv2D(32, k, activation="relu", **reg),  # 5x5x32, 50,208
            L.Flatten(),  # 800
            L.Dense(32, activation="relu", **reg),  # 25,632
            L.Dense(10, **reg),  # 330, logits
        ]
    elif name == "cifar_cnn1":  # no activations, as in the report
        body = [
            L.Conv2D(32, 3), L.MaxPooling2D(2),  # 896
            L.Conv2D(64, 3), L.MaxPooling2D(2),  # 18,496
            L.Conv2D(64, 3),  # 4x4x64, 36,928
            L.Flatten(), L.Dense(64),  # 65,600
            L.Dense(10),  # 650, logits
        ]
    elif name == "cifar_cnn2":
        body = [
            L.Conv2D(32, 3), L.MaxPooling2D(2),  # 896
            L.Conv2D(64, 3), L.MaxPooling2D(2),  # 18,496
            L.Conv2D(64, 3),  # 36,928
            L.Conv2D(64, 3),  # 2x2x64, 36,928
            L.Flatten(),  # 256
            L.Dense(256, activation="relu"),  # 65,792
            L.Dense(128, activation="relu"),  # 32,896
            L.Dense(10),  # 1,290, logits
        ]
    elif name in ("cifar_cnn3", "cifar_cnn4"):
        regularized = name == "cifar_cnn4"
        reg = dict(kernel_regularizer=keras.regularizers.L2(common.CIFAR4_L2)) if regularized else {}
        drop = (lambda p: [L.Dropout(p)]) if regularized else (lambda p: [])  # noqa: E731
        body = [
            L.Conv2D(32, 3, **reg),  # 30x30x32, 896; no activation, as in the report
            L.MaxPooling2D(2),  # 15x15x32
            *drop(0.25),
            L.Conv2D(64, 5, padding="same", **reg), L.LeakyReLU(negative_slope=0.1),  # 51,264
            L.MaxPooling2D(2),  # 7x7x64
            *drop(0.25),
            L.Conv2D(64, 5, padding="same", **reg), L.LeakyReLU(negative_slope=0.1),  # 102,464
            L.Conv2D(64, 5, padding="same", **reg), L.LeakyReLU(negative_slope=0.1),  # 102,464
            L.Flatten(),  # 3136
            L.Dense(256, activation="relu", **reg),  # 803,072
            *([L.Dropout(0.25), L.BatchNormalization()] if regularized else []),  # 512 (+512 statistics)
            L.Dense(128, activation="relu", **reg),  # 32,896
            *drop(0.5),
            L.Dense(10),  # 1,290, logits
        ]
    else:
        raise ValueError(f"unknown model {name!r}")
    return keras.Sequential([keras.Input(shape=input_shape), *body], name=name)


def split_steps(steps: int, n_batches: int) -> tuple[int, int]:
    """(epochs, steps_per_epoch): the fewest epochs of at most one pass over the pool that cover
    `steps`, evenly split; epochs * steps_per_epoch exceeds `steps` by less than `epochs`."""
    epochs = -(-steps // n_batches)
    return epochs, -(-steps // epochs)


def compile_model(model, keras, **kwargs) -> None:
    """Keras's RMSprop (its defaults, spelled out) and sparse cross-entropy from logits."""
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, epsilon=1e-7),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **kwargs)


def main() -> None:
    args = common.parse_args("Keras 3, JAX backend")
    x, y = common.make_data(args)

    t0 = time.perf_counter()
    import jax
    import keras
    import_s = time.perf_counter() - t0
    assert keras.backend.backend() == "jax", keras.backend.backend()

    wall_start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    model = build_model(args.model, keras, common.MODELS[args.model].input_shape)
    compile_model(model, keras)
    params = int(sum(int(v.numpy().size) for v in model.trainable_weights))
    bs = args.batch_size
    fit_kw = dict(batch_size=bs, shuffle=False, verbose=0)

    def sync() -> None:
        jax.block_until_ready([v.value for v in model.trainable_variables])

    t = time.perf_counter()
    model.fit(x, y, epochs=1, steps_per_epoch=1, **fit_kw)
    sync()
    first_step_s = time.perf_counter() - t
    if args.warmup > 1:
        epochs, spe = split_steps(args.warmup - 1, common.num_batches(args))
        model.fit(x, y, epochs=epochs, steps_per_epoch=spe, **fit_kw)
        sync()

    epochs, spe = split_steps(args.steps, common.num_batches(args))
    t = time.perf_counter()
    hist = model.fit(x, y, epochs=epochs, steps_per_epoch=spe, **fit_kw)
    sync()
    timed_s = time.perf_counter() - t
    wall_s = time.perf_counter() - wall_start

    common.finish(args, {
        "framework": "keras",
        "version": keras.__version__,
        "versions": {"keras": keras.__version__, "jax": jax.__version__, "backend": "jax"},
        "params": params,
        "steps_timed": epochs * spe,
        "timed_epochs": epochs,
        "timed_s": timed_s,
        "first_step_s": first_step_s,
        "wall_s": wall_s,
        "import_s": import_s,
        "final_loss": float(hist.history["loss"][-1]),
        "timing": "model.fit on numpy arrays (verbose=0), wall clock around one fit call",
    })


if __name__ == "__main__":
    main()
