"""The report's four CIFAR-10 CNNs (1.6 to 1.9) and the training features they use: parameter
counts and their explanations, BatchNorm and Dropout with Keras's semantics, cnn4's L2 terms,
the per-epoch learning-rate scheduler (without recompiling), the Adamax schedule and Keras's
Adamax update. Every expected number is computed by hand here or copied from the report."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models, optim, train
from jaxcnn.callbacks import LambdaCallback, LearningRateScheduler, keep_then_decay
from jaxcnn.layers import BatchNorm, Dense, Dropout, Flatten
from jaxcnn.summary import model_summary, summary

CIFAR = (32, 32, 3)

# (layer name, Keras output shape without the batch axis, parameters), as in the report's tables.
LAYERS = {
    "cifar_cnn1": [
        ("conv2d", (30, 30, 32), 896),
        ("max_pooling2d", (15, 15, 32), 0),
        ("conv2d_1", (13, 13, 64), 18_496),
        ("max_pooling2d_1", (6, 6, 64), 0),
        ("conv2d_2", (4, 4, 64), 36_928),
        ("flatten", (1024,), 0),
        ("dense", (64,), 65_600),
        ("dense_1", (10,), 650),
    ],
    "cifar_cnn2": [
        ("conv2d", (30, 30, 32), 896),
        ("max_pooling2d", (15, 15, 32), 0),
        ("conv2d_1", (13, 13, 64), 18_496),
        ("max_pooling2d_1", (6, 6, 64), 0),
        ("conv2d_2", (4, 4, 64), 36_928),
        ("conv2d_3", (2, 2, 64), 36_928),
        ("flatten", (256,), 0),
        ("dense", (256,), 65_792),
        ("dense_1", (128,), 32_896),
        ("dense_2", (10,), 1_290),
    ],
    "cifar_cnn3": [
        ("conv2d", (30, 30, 32), 896),
        ("max_pooling2d", (15, 15, 32), 0),
        ("conv2d_1", (15, 15, 64), 51_264),
        ("leaky_re_lu", (15, 15, 64), 0),
        ("max_pooling2d_1", (7, 7, 64), 0),
        ("conv2d_2", (7, 7, 64), 102_464),
        ("leaky_re_lu_1", (7, 7, 64), 0),
        ("conv2d_3", (7, 7, 64), 102_464),
        ("leaky_re_lu_2", (7, 7, 64), 0),
        ("flatten", (3136,), 0),
        ("dense", (256,), 803_072),
        ("dense_1", (128,), 32_896),
        ("dense_2", (10,), 1_290),
    ],
    "cifar_cnn4": [
        ("conv2d", (30, 30, 32), 896),
        ("max_pooling2d", (15, 15, 32), 0),
        ("dropout", (15, 15, 32), 0),
        ("conv2d_1", (15, 15, 64), 51_264),
        ("leaky_re_lu", (15, 15, 64), 0),
        ("max_pooling2d_1", (7, 7, 64), 0),
        ("dropout_1", (7, 7, 64), 0),
        ("conv2d_2", (7, 7, 64), 102_464),
        ("leaky_re_lu_1", (7, 7, 64), 0),
        ("conv2d_3", (7, 7, 64), 102_464),
        ("leaky_re_lu_2", (7, 7, 64), 0),
        ("flatten", (3136,), 0),
        ("dense", (256,), 803_072),
        ("dropout_2", (256,), 0),
        ("batch_normalization", (256,), 1_024),
        ("dense_1", (128,), 32_896),
        ("dropout_3", (128,), 0),
        ("dense_2", (10,), 1_290),
    ],
}

# name -> (total, trainable, non-trainable, the report's size strings, explanations that must appear)
COUNTS = {
    "cifar_cnn1": (122_570, 122_570, 0, ["Total params: 122,570 (478.79 KB)"], [
        "(3x3x3 + 1) x 32 = 896", "(3x3x32 + 1) x 64 = 18,496", "(3x3x64 + 1) x 64 = 36,928",
        "(1024 + 1) x 64 = 65,600", "(64 + 1) x 10 = 650",
    ]),
    "cifar_cnn2": (193_226, 193_226, 0, ["Total params: 193,226 (754.79 KB)"], [
        "(3x3x3 + 1) x 32 = 896", "(3x3x64 + 1) x 64 = 36,928", "(256 + 1) x 256 = 65,792",
        "(256 + 1) x 128 = 32,896", "(128 + 1) x 10 = 1,290",
    ]),
    "cifar_cnn3": (1_094_346, 1_094_346, 0, ["Total params: 1,094,346 (4.17 MB)"], [
        "(3x3x3 + 1) x 32 = 896", "(5x5x32 + 1) x 64 = 51,264", "(5x5x64 + 1) x 64 = 102,464",
        "(3136 + 1) x 256 = 803,072", "(256 + 1) x 128 = 32,896", "(128 + 1) x 10 = 1,290",
    ]),
    "cifar_cnn4": (1_095_370, 1_094_858, 512, [
        "Total params: 1,095,370 (4.18 MB)", "Trainable params: 1,094,858 (4.18 MB)",
        "Non-trainable params: 512 (2.00 KB)",
    ], [
        "(3x3x3 + 1) x 32 = 896", "(5x5x32 + 1) x 64 = 51,264", "(5x5x64 + 1) x 64 = 102,464",
        "(3136 + 1) x 256 = 803,072", "4 x 256 = 1,024", "(128 + 1) x 10 = 1,290",
    ]),
}

L2_LAYERS = ("conv2d", "conv2d_1", "conv2d_2", "conv2d_3", "dense", "dense_1")  # not dense_2


@pytest.fixture(scope="module")
def cnn4_state() -> train.TrainState:
    """cnn4 with random weights of Glorot-like scale and non-trivial moving statistics, drawn
    with NumPy from the shapes alone (a real init of 1.1 M parameters costs seconds of compiling)."""
    model = models.get_model("cifar_cnn4")
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, *CIFAR)), train=False))
    rng = np.random.default_rng(3)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name or "var" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 16
        return jnp.asarray(rng.normal(0, 1 / math.sqrt(fan_in), leaf.shape), jnp.float32)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return train.TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=optax.sgd(0.1),
        batch_stats=variables["batch_stats"], key=jax.random.key(3), input_shape=CIFAR, num_classes=10,
    )


# Jitted: one compile of each mode is much cheaper on CPU than running the layers op by op.
_apply = jax.jit(models.get_model("cifar_cnn4").apply, static_argnames=("train", "mutable", "capture_intermediates"))


def _rng(seed: int) -> dict[str, jax.Array]:
    # RBG keys: the same dropout semantics, a fraction of threefry's compile time on CPU.
    return {"dropout": jax.random.key(seed, impl="rbg")}


def _variables(state: train.TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def _images(n: int, seed: int = 0, shape=CIFAR) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Parameter counts (1.6, 1.8, 1.9)


@pytest.mark.parametrize("name", list(LAYERS))
def test_parameter_counts_shapes_and_explanations(name):
    s = model_summary(models.get_model(name), CIFAR)
    total, trainable, non_trainable, size_lines, explanations = COUNTS[name]
    assert (s.total, s.trainable, s.non_trainable) == (total, trainable, non_trainable)
    assert [(r.name, tuple(r.output_shape[1:]), r.params) for r in s.rows] == LAYERS[name]
    assert all(r.output_shape[0] == "None" for r in s.rows)
    text = summary(models.get_model(name), CIFAR, name=name)
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {trainable:,}" in text
    assert f"Non-trainable params: {non_trainable:,}" in text
    for line in size_lines + explanations:
        assert line in text, line


def test_cnn4_non_trainable_are_the_moving_statistics(cnn4_state):
    stats = cnn4_state.batch_stats["batch_normalization"]["bn"]
    assert {k: v.shape for k, v in stats.items()} == {"mean": (256,), "var": (256,)}
    bn_params = cnn4_state.params["batch_normalization"]["bn"]
    assert {k: v.shape for k, v in bn_params.items()} == {"scale": (256,), "bias": (256,)}


# ---------------------------------------------------------------------------------------------
# BatchNorm: Keras semantics (epsilon 1e-3, momentum 0.99, biased variance)


def test_batchnorm_train_uses_batch_statistics_eval_uses_moving_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (16, 5)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(0, 1, 5)
    mean, var = rng.normal(0, 1, 5), rng.uniform(0.5, 2, 5)
    variables = {
        "params": {"bn": {"scale": jnp.asarray(gamma, jnp.float32), "bias": jnp.asarray(beta, jnp.float32)}},
        "batch_stats": {"bn": {"mean": jnp.asarray(mean, jnp.float32), "var": jnp.asarray(var, jnp.float32)}},
    }
    layer = BatchNorm()
    y_train, _ = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    y_eval = layer.apply(variables, x, train=False)
    x64 = x.astype(np.float64)
    bm, bv = x64.mean(0), x64.var(0)  # biased (ddof=0), as Keras
    np.testing.assert_allclose(y_train, gamma * (x64 - bm) / np.sqrt(bv + 1e-3) + beta, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y_eval, gamma * (x64 - mean) / np.sqrt(var + 1e-3) + beta, rtol=1e-4, atol=1e-4)


class _TinyBN(nn.Module):
    """Flatten -> BatchNorm -> Dense 3: the BatchNorm sees the input itself."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Flatten()(x)
        x = BatchNorm(name="batch_normalization")(x, train)
        return Dense(3, name="dense")(x)


def test_batchnorm_moving_statistics_after_one_train_step():
    state = train.create_train_state(_TinyBN(), (2, 2, 1), "sgd", 0.1, seed=0)
    rng = np.random.default_rng(1)
    old_mean, old_var = rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)
    state = state.replace(
        batch_stats={"batch_normalization": {"bn": {"mean": jnp.asarray(old_mean, jnp.float32), "var": jnp.asarray(old_var, jnp.float32)}}}
    )
    x = rng.normal(1.0, 2.0, (8, 2, 2, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
    new_state, _ = jax.jit(train.train_step)(state, {"x": x, "y": y})
    flat = x.reshape(8, 4).astype(np.float64)
    stats = new_state.batch_stats["batch_normalization"]["bn"]
    np.testing.assert_allclose(stats["mean"], 0.99 * old_mean + 0.01 * flat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.99 * old_var + 0.01 * flat.var(0), rtol=1e-5, atol=1e-6)
    # Evaluation leaves them alone.
    train.eval_step(new_state, {"x": x, "y": y})
    np.testing.assert_array_equal(new_state.batch_stats["batch_normalization"]["bn"]["mean"], stats["mean"])


def test_cnn4_batchnorm_updates_from_its_own_input(cnn4_state):
    """In cnn4 the BatchNorm's input is Dropout(Dense 256 ReLU): its moving statistics move by
    1 % towards that input's batch statistics."""
    state, x = cnn4_state, _images(6)
    _, upd = _apply(
        _variables(state), x, train=True, rngs=_rng(7),
        mutable=("batch_stats", "losses", "intermediates"), capture_intermediates=True,
    )
    bn_in = np.asarray(upd["intermediates"]["dropout_2"]["__call__"][0], np.float64)
    old = state.batch_stats["batch_normalization"]["bn"]
    new = upd["batch_stats"]["batch_normalization"]["bn"]
    np.testing.assert_allclose(new["mean"], 0.99 * np.asarray(old["mean"]) + 0.01 * bn_in.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.99 * np.asarray(old["var"]) + 0.01 * bn_in.var(0), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Dropout: off at evaluation, a different mask for each key in training


def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, padding: str) -> np.ndarray:
    """Keras Conv2D in NumPy: cross-correlation, stride 1, "valid" or "same" (zeros, split evenly)."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # (N, H', W', C, kh, kw)
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True) + bias


def _pool(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def _cnn4_eval_by_hand(params, stats, x: np.ndarray) -> np.ndarray:
    """cnn4 at evaluation, written out: no dropout, BatchNorm with the moving statistics."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    leaky = lambda v: np.where(v > 0, v, 0.1 * v)  # noqa: E731
    h = _pool(_conv(x.astype(np.float64), p["conv2d"]["kernel"], p["conv2d"]["bias"], "valid"))
    h = _pool(leaky(_conv(h, p["conv2d_1"]["kernel"], p["conv2d_1"]["bias"], "same")))
    h = leaky(_conv(h, p["conv2d_2"]["kernel"], p["conv2d_2"]["bias"], "same"))
    h = leaky(_conv(h, p["conv2d_3"]["kernel"], p["conv2d_3"]["bias"], "same"))
    h = h.reshape(len(h), -1)
    h = np.maximum(h @ p["dense"]["kernel"] + p["dense"]["bias"], 0)
    bn = p["batch_normalization"]["bn"]
    mv = jax.tree.map(lambda a: np.asarray(a, np.float64), stats["batch_normalization"]["bn"])
    h = bn["scale"] * (h - mv["mean"]) / np.sqrt(mv["var"] + 1e-3) + bn["bias"]
    h = np.maximum(h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"], 0)
    return h @ p["dense_2"]["kernel"] + p["dense_2"]["bias"]


def test_cnn4_eval_is_deterministic_and_has_no_dropout(cnn4_state):
    state, x = cnn4_state, _images(4, seed=5)
    a = _apply(_variables(state), x, train=False, rngs=_rng(0))
    b = _apply(_variables(state), x, train=False, rngs=_rng(1))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, _cnn4_eval_by_hand(state.params, state.batch_stats, x), rtol=1e-4, atol=1e-4)
    # Training mode differs (dropout on, batch statistics), and differs between keys.
    mutable = ("batch_stats", "losses", "intermediates")
    t1, u1 = _apply(_variables(state), x, train=True, rngs=_rng(0), mutable=mutable, capture_intermediates=True)
    t1b, _ = _apply(_variables(state), x, train=True, rngs=_rng(0), mutable=mutable, capture_intermediates=True)
    t2, u2 = _apply(_variables(state), x, train=True, rngs=_rng(1), mutable=mutable, capture_intermediates=True)
    np.testing.assert_array_equal(t1, t1b)
    assert not np.allclose(t1, t2)
    assert not np.allclose(t1, a)
    # Each of the four dropouts zeroes about its rate of units, with a different mask per key.
    for name, rate in (("dropout", 0.25), ("dropout_1", 0.25), ("dropout_2", 0.25), ("dropout_3", 0.5)):
        m1 = np.asarray(u1["intermediates"][name]["__call__"][0])
        m2 = np.asarray(u2["intermediates"][name]["__call__"][0])
        assert (m1 != m2).any(), name
        if name in ("dropout_2", "dropout_3"):  # after a ReLU, so zeros also come from it; skip the rate
            continue
        assert abs((m1 == 0).mean() - rate) < 0.05, name


def test_dropout_masks_and_scaling():
    x = jnp.ones((4000,))
    layer = Dropout(0.25)
    np.testing.assert_array_equal(layer.apply({}, x, train=False), x)
    m1 = np.asarray(layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
    m2 = np.asarray(layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(1)}))
    np.testing.assert_allclose(np.unique(m1), [0.0, 1 / 0.75], rtol=1e-6)  # inverted dropout, as Keras
    assert abs((m1 == 0).mean() - 0.25) < 0.03
    assert (m1 != m2).any()


class _TinyDropout(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Flatten()(x)
        x = Dropout(0.5, name="dropout")(Dense(16, activation="relu", name="dense")(x), train)
        return Dense(3, name="dense_1")(x)


def test_train_steps_differing_only_in_key_use_different_masks():
    state = train.create_train_state(_TinyDropout(), (3, 3, 1), "sgd", 0.1, seed=0)
    batch = {"x": _images(8, shape=(3, 3, 1)), "y": np.arange(8, dtype=np.int32) % 3}
    step = jax.jit(train.train_step)
    a, ma = step(state, batch)
    a2, _ = step(state, batch)
    b, mb = step(state.replace(key=jax.random.key(123)), batch)
    np.testing.assert_array_equal(a.params["dense"]["kernel"], a2.params["dense"]["kernel"])
    assert not np.allclose(a.params["dense"]["kernel"], b.params["dense"]["kernel"])
    assert float(ma["loss_sum"]) != float(mb["loss_sum"])
    # Consecutive steps of one state draw new masks too: the key is folded with the step.
    k0 = jax.random.fold_in(state.key, 0)
    k1 = jax.random.fold_in(state.key, 1)
    assert not np.array_equal(jax.random.key_data(k0), jax.random.key_data(k1))


# ---------------------------------------------------------------------------------------------
# cnn4's L2(0.01) terms are part of the loss


def test_cnn4_loss_includes_l2_of_the_regularised_kernels(cnn4_state):
    state = cnn4_state
    x, y = _images(4, seed=9), np.array([3, 7, 0, 9], np.int32)
    m = jax.jit(train.eval_step)(state, {"x": x, "y": y})
    logits = np.asarray(_apply(_variables(state), x, train=False), np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    ce = -log_probs[np.arange(4), y].mean()
    l2 = 0.01 * sum(float(np.sum(np.asarray(state.params[n]["kernel"], np.float64) ** 2)) for n in L2_LAYERS)
    assert l2 > 1.0  # a real share of the loss at initialisation, not a rounding error
    assert float(m["count"]) == 4
    np.testing.assert_allclose(float(m["loss_sum"]) / 4, ce + l2, rtol=1e-5)
    # The regularised layers sow exactly these terms; the output layer and BatchNorm none.
    _, upd = _apply(_variables(state), x, train=False, mutable=("losses",))
    assert set(upd["losses"]) == set(L2_LAYERS)


# ---------------------------------------------------------------------------------------------
# The per-epoch learning-rate scheduler of cnn3/cnn4, without recompiling


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return Dense(3, name="dense")(Flatten()(x))


_TRACES: list[bool] = []


class _Counting(nn.Module):
    """_Tiny that counts how often it is traced (Python runs only while tracing)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        _TRACES.append(train)
        return Dense(3, name="dense")(Flatten()(x))


def test_learning_rate_scheduler_per_epoch_and_no_recompilation():
    compiled: list[str] = []

    def on_compile(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(str(kwargs.get("fun_name")))

    x, y = _images(32, shape=(4, 4, 1)), np.arange(32, dtype=np.int32) % 3
    compiles, traces = [], []

    def record(epoch, logs, loop):
        compiles.append(len(compiled))
        traces.append(len(_TRACES))

    jax.monitoring.register_event_duration_secs_listener(on_compile)
    try:
        _, history = train.fit(
            _Counting(), x, y, epochs=13, batch_size=16, optimizer="rmsprop", learning_rate=0.001,
            validation_data=(x[:8], y[:8]), verbose=0,
            callbacks=[LearningRateScheduler(keep_then_decay(10, 0.1)), LambdaCallback(on_epoch_end=record)],
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(on_compile)
    expected = [0.001] * 10 + [0.001 * math.exp(-0.1 * k) for k in (1, 2, 3)]
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-6)
    assert len(history) == 13
    # Everything compiles in epoch 1; epochs 2..13, the lr changes of epochs 11..13 included,
    # neither trace the model again nor compile anything.
    assert compiles[0] > 0 and traces[0] > 0
    assert compiles[1:] == [compiles[0]] * 12, compiled[compiles[0]:]
    assert traces[1:] == [traces[0]] * 12, traces


# ---------------------------------------------------------------------------------------------
# Adamax with ExponentialDecay(0.005, 1500, 0.96, staircase): cnn1 and cnn2


SCHEDULE_POINTS = [(0, 0.005), (1499, 0.005), (1500, 0.0048), (3000, 0.004608)]


def test_exponential_decay_staircase_values():
    schedule = optim.exponential_decay(0.005, 1500, 0.96, staircase=True)
    for step, lr in SCHEDULE_POINTS:
        np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6)


def _fast_forward(opt_state, step: int):
    """The optimizer state as if ``step`` updates had been made (the schedule's step counter)."""
    count = jnp.asarray(step, jnp.int32)
    hs = {k: type(v)(count=count) for k, v in opt_state.hyperparams_states.items()}
    return opt_state._replace(count=count, hyperparams_states=hs)


def test_adamax_schedule_seen_by_real_updates():
    schedule = optim.exponential_decay(0.005, 1500, 0.96, staircase=True)
    state = train.create_train_state(_Tiny(), (2, 2, 1), optim.get_optimizer("adamax", schedule), seed=0)
    batch = {"x": _images(6, shape=(2, 2, 1)), "y": np.arange(6, dtype=np.int32) % 3}
    step = jax.jit(train.train_step)
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        state.apply_fn({"params": p}, batch["x"]), batch["y"]).mean())(state.params)
    g = np.asarray(grads["dense"]["kernel"], np.float64)
    for at, lr in SCHEDULE_POINTS:
        before = state.replace(opt_state=_fast_forward(state.opt_state, at))
        after, _ = step(before, batch)
        np.testing.assert_allclose(float(optim.get_learning_rate(after.opt_state)), lr, rtol=1e-6)
        # The first Adamax step moves each weight by lr * g / (|g| + eps), i.e. lr where |g| >> eps.
        moved = np.asarray(after.params["dense"]["kernel"], np.float64) - np.asarray(before.params["dense"]["kernel"], np.float64)
        np.testing.assert_allclose(moved, -lr * g / (np.abs(g) + 1e-7), rtol=1e-3, atol=1e-9)
    # And without fast-forwarding: the first real step uses 0.005.
    after, _ = step(state, batch)
    np.testing.assert_allclose(float(optim.get_learning_rate(after.opt_state)), 0.005, rtol=1e-6)


def test_keras_adamax_two_steps_by_hand():
    lr, b1, b2, eps = 0.005, 0.9, 0.999, 1e-7
    w0 = np.array([0.5, -1.0, 2.0, 0.0, 0.3])
    g1 = np.array([0.2, -0.5, 0.0, 1e-6, 3.0])
    g2 = np.array([-0.1, -0.5, 0.4, 0.0, 0.001])
    # keras.optimizers.Adamax.update_step, written out:
    m1 = (1 - b1) * g1
    u1 = np.maximum(0.0, np.abs(g1))
    w1 = w0 - lr * m1 / ((1 - b1) * (u1 + eps))
    m2 = b1 * m1 + (1 - b1) * g2
    u2 = np.maximum(b2 * u1, np.abs(g2))
    w2 = w1 - lr * m2 / ((1 - b1**2) * (u2 + eps))

    tx = optim.get_optimizer("adamax", lr)
    params = {"w": jnp.asarray(w0, jnp.float32)}
    opt_state = tx.init(params)
    got = []
    for g in (g1, g2):
        updates, opt_state = tx.update({"w": jnp.asarray(g, jnp.float32)}, opt_state, params)
        params = optax.apply_updates(params, updates)
        got.append(np.asarray(params["w"], np.float64))
    np.testing.assert_allclose(got[0], w1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[1], w2, rtol=1e-5, atol=1e-7)
    assert int(opt_state.inner_state[0].count) == 2
