"""Keras 3 itself (JAX backend) as the oracle: optimizers, activations, layers, the registry's
models, metrics and EarlyStopping are built the same way in Keras and in jaxcnn and compared.

Tolerances (float32 throughout):

* optimizers: parameters after 4 steps agree to ``atol 2e-6 + rtol 2e-5``; Keras's own float32
  rounding of ``1 - beta_2 ** t`` moves Adam by about 1e-6 at lr 0.05 (against a float64 run).
* activations: ``rtol 1e-6, atol 1e-6`` (the same jax.nn functions underneath, or the same formula).
* layers and models (logits): ``rtol 1e-4, atol 1e-4 * max|logit|``: XLA may sum convolutions
  and matmuls in another order.
* metrics: ``1e-5`` (Keras adds an epsilon of 1e-7 to F1's denominators).
* EarlyStopping: exact (stop epoch, best epoch, restored weights).
* eight steps through ``fit``: weights ``rtol 1e-5, atol 1e-5``, epoch losses ``rtol 1e-5``.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn import callbacks, layers, metrics, models, optim
from jaxcnn.errors import ConfigError


@pytest.fixture(scope="module")
def keras():
    os.environ["KERAS_BACKEND"] = "jax"  # before the first import of keras
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"keras was imported with the {keras.backend.backend()} backend before this module")
    return keras


def _allow_rank_promotion():
    # conftest makes implicit rank promotion an error for our code; Keras's ops rely on it.
    return jax.numpy_rank_promotion("allow")


@functools.lru_cache(maxsize=1)
def _mnist_test() -> np.ndarray:
    from jaxcnn import data

    return data.to_float(data.load("mnist").x_test[:16])


def _mnist(n: int) -> np.ndarray:
    return _mnist_test()[:n]


# -- (a) optimizers -------------------------------------------------------------------------------

OPTIMIZER_CASES = [
    ("adam", {}),
    ("adam", {"epsilon": 0.1}),  # where epsilon sits (before/after the bias correction) shows
    ("adam", {"amsgrad": True}),
    ("adamw", {}),
    ("adamax", {}),
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("rmsprop", {}),
    ("rmsprop", {"epsilon": 0.1}),  # epsilon inside the square root
    ("rmsprop", {"momentum": 0.9}),
    ("rmsprop", {"momentum": 0.5, "centered": True}),
    ("adam", {"weight_decay": 0.1, "clipnorm": 0.5}),
    ("sgd", {"momentum": 0.9, "weight_decay": 0.05, "global_clipnorm": 0.5}),
    ("rmsprop", {"clipvalue": 0.3, "weight_decay": 0.05}),
    ("adamax", {"weight_decay": 0.2}),
]
KERAS_OPTIMIZER = {"adam": "Adam", "adamw": "AdamW", "adamax": "Adamax", "sgd": "SGD", "rmsprop": "RMSprop"}


def _params_and_grads(steps=4):
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=s).astype(np.float32) for s in ((3, 4), (4,))]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in w0] for _ in range(steps)]
    return w0, grads


def _run_both(keras, name, kwargs, schedule, steps=4, lr=0.05):
    """Parameters after each of ``steps`` updates: (ours, Keras's), same params and gradients."""
    w0, grads = _params_and_grads(steps)
    if schedule:
        k_lr = keras.optimizers.schedules.ExponentialDecay(lr, 2, 0.5, staircase=True)
        j_lr = optim.exponential_decay(lr, 2, 0.5, staircase=True)
    else:
        k_lr = j_lr = lr
    k_opt = getattr(keras.optimizers, KERAS_OPTIMIZER[name])(learning_rate=k_lr, **kwargs)
    k_vars = [keras.Variable(w) for w in w0]
    tx = optim.get_optimizer(name, j_lr, **kwargs)

    def run(params, grads):
        state = tx.init(params)
        out = []
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            out.append(params)
        return out

    # Eagerly: every case has the same shapes, so the compiled primitives are shared by all.
    ours = run([jnp.asarray(w) for w in w0], [[jnp.asarray(x) for x in g] for g in grads])
    theirs = []
    with _allow_rank_promotion():
        for g in grads:
            k_opt.apply([jnp.asarray(x) for x in g], k_vars)
            theirs.append([np.asarray(v.value) for v in k_vars])
    return ours, theirs, w0


# Every case with a constant rate; the schedule with AdamW and every weight-decay case (the decay
# uses the scheduled rate of the step).
OPTIMIZER_RUNS = [(n, k, False) for n, k in OPTIMIZER_CASES] + [
    (n, k, True) for n, k in OPTIMIZER_CASES if n == "adamw" or "weight_decay" in k
]


@pytest.mark.parametrize(
    ("name", "kwargs", "schedule"), OPTIMIZER_RUNS,
    ids=[f"{n}-{'-'.join(k) or 'default'}{'-schedule' if s else ''}" for n, k, s in OPTIMIZER_RUNS],
)
def test_optimizer_matches_keras(keras, name, kwargs, schedule):
    """Each optimizer against ``keras.optimizers.*.apply`` over 4 steps (ExponentialDecay staircase
    halving every 2 steps in the schedule case)."""
    ours, theirs, w0 = _run_both(keras, name, kwargs, schedule)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for x, y, w in zip(a, b, w0):
            assert not np.allclose(y, w), "Keras did not move the weights"
            np.testing.assert_allclose(np.asarray(x), y, rtol=2e-5, atol=2e-6, err_msg=f"after step {step + 1}")


def test_the_optimizer_check_can_fail(keras):
    """optax's own Adam (epsilon after the bias correction) is outside the tolerance above."""
    ours, theirs, w0 = _run_both(keras, "adam", {"epsilon": 0.1}, False)
    tx = optax.adam(0.05, eps=0.1)
    params = [jnp.asarray(w) for w in w0]
    state = tx.init(params)
    for g in _params_and_grads(4)[1]:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    assert not np.allclose(np.asarray(params[0]), theirs[-1][0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(ours[-1][0]), theirs[-1][0], rtol=2e-5, atol=2e-6)


# -- (b) activations ------------------------------------------------------------------------------


def test_every_keras_activation_name_is_known(keras):
    from keras.src.activations import ALL_OBJECTS_DICT

    missing = sorted(set(ALL_OBJECTS_DICT) - set(layers.ACTIVATIONS) - {"threshold"})
    assert missing == []
    with pytest.raises(ConfigError, match="threshold"):
        layers.get_activation("threshold")  # no defaults in Keras either: a partial is needed


@pytest.mark.parametrize(
    "name",
    sorted(set(layers.ACTIVATIONS)),
)
def test_activation_matches_keras(keras, name):
    x = np.concatenate([np.linspace(-4, 4, 41), [-0.5, 0.5, -1.0, 1.0, -3.0, 3.0, 0.0]]).astype(np.float32)
    x = np.stack([x, x[::-1] * 0.7])  # (2, 48): softmax-like activations work along the last axis
    with _allow_rank_promotion():
        theirs = np.asarray(keras.activations.get(name)(jnp.asarray(x)))
    fn = layers.get_activation(name)
    ours = np.asarray(x if fn is None else fn(jnp.asarray(x)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_activation_defaults_differ_from_flax_where_keras_does(keras):
    x = jnp.asarray([-1.0, 0.5, 2.0])
    np.testing.assert_allclose(layers.get_activation("leaky_relu")(x), [-0.2, 0.5, 2.0], rtol=1e-6)
    with _allow_rank_promotion():
        exact = np.asarray(keras.activations.gelu(x))
    assert not np.allclose(np.asarray(jax.nn.gelu(x, approximate=True)), exact, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layers.get_activation("gelu")(x), exact, rtol=1e-6, atol=1e-6)
    # The LeakyReLU *layer* defaults to 0.3, the function to 0.2, in Keras and here.
    with _allow_rank_promotion():
        layer = np.asarray(keras.layers.LeakyReLU()(x))
    np.testing.assert_allclose(layers.LeakyReLU().apply({}, x), layer, rtol=1e-6)


# -- (c) layers and the registry's models ---------------------------------------------------------


def _flax_name(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}_{index}"


def _copy_keras_weights(keras_model, rng):
    """Keras's weights (biases and BatchNorm statistics made non-trivial) as Flax variables."""
    params, batch_stats, seen = {}, {}, {}
    for layer in keras_model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = {"Conv2D": "conv2d", "Dense": "dense", "BatchNormalization": "batch_normalization"}[type(layer).__name__]
        name = _flax_name(kind, seen.get(kind, 0))
        seen[kind] = seen.get(kind, 0) + 1
        if kind == "batch_normalization":
            gamma, beta, mean, var = (w.shape for w in weights)
            weights = [
                rng.uniform(0.5, 1.5, gamma).astype(np.float32),
                rng.normal(0, 0.1, beta).astype(np.float32),
                rng.normal(0, 0.5, mean).astype(np.float32),
                rng.uniform(0.5, 2.0, var).astype(np.float32),
            ]
            layer.set_weights(weights)
            params[name] = {"bn": {"scale": weights[0], "bias": weights[1]}}
            batch_stats[name] = {"bn": {"mean": weights[2], "var": weights[3]}}
        else:
            kernel, bias = weights
            bias = rng.normal(0, 0.05, bias.shape).astype(np.float32)
            layer.set_weights([kernel, bias])
            params[name] = {"kernel": kernel, "bias": bias}
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return variables


def _glorot_uniform(shape, dtype=None):
    """Keras's GlorotUniform formula, drawn in numpy: Keras's own initializer compiles a
    ``jax.random`` program per shape (seconds each on a loaded 2-core machine)."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return _INIT_RNG.uniform(-limit, limit, shape).astype(np.float32)


_INIT_RNG = np.random.default_rng(0)


class _Layers:
    """``keras.layers`` with Conv2D and Dense built by :func:`_glorot_uniform`."""

    def __init__(self, keras):
        self._keras = keras

    def __getattr__(self, name):
        cls = getattr(self._keras.layers, name)
        if name in ("Conv2D", "Dense"):
            return lambda *a, **k: cls(*a, kernel_initializer=_glorot_uniform, **k)
        return cls


def _keras_model(keras, name: str, input_shape, **kw):
    L = _Layers(keras)
    if name in ("mnist_cnn", "search_cnn"):
        k, dense = kw.get("kernel_size", 3), 64 if name == "mnist_cnn" else 32
        body = [L.Conv2D(32, k, activation="relu"), L.MaxPooling2D(2), L.Conv2D(32, k, activation="relu"),
                L.Flatten(), L.Dense(dense, activation="relu"), L.Dense(10)]
    elif name == "cifar_cnn1":
        body = [L.Conv2D(32, 3), L.MaxPooling2D(2), L.Conv2D(64, 3), L.MaxPooling2D(2), L.Conv2D(64, 3),
                L.Flatten(), L.Dense(64), L.Dense(10)]
    elif name == "cifar_cnn2":
        body = [L.Conv2D(32, 3), L.MaxPooling2D(2), L.Conv2D(64, 3), L.MaxPooling2D(2), L.Conv2D(64, 3),
                L.Conv2D(64, 3), L.Flatten(), L.Dense(256, activation="relu"), L.Dense(128, activation="relu"), L.Dense(10)]
    else:
        reg = name == "cifar_cnn4"
        l2 = keras.regularizers.L2(0.01) if reg else None
        drop = (lambda r: [L.Dropout(r)]) if reg else (lambda r: [])  # noqa: E731
        body = [L.Conv2D(32, 3, kernel_regularizer=l2), L.MaxPooling2D(2), *drop(0.25),
                L.Conv2D(64, 5, padding="same", kernel_regularizer=l2), L.LeakyReLU(0.1), L.MaxPooling2D(2), *drop(0.25),
                L.Conv2D(64, 5, padding="same", kernel_regularizer=l2), L.LeakyReLU(0.1),
                L.Conv2D(64, 5, padding="same", kernel_regularizer=l2), L.LeakyReLU(0.1),
                L.Flatten(), L.Dense(256, activation="relu", kernel_regularizer=l2),
                *([L.Dropout(0.25), L.BatchNormalization()] if reg else []),
                L.Dense(128, activation="relu", kernel_regularizer=l2), *drop(0.5), L.Dense(10)]
    return keras.Sequential([keras.Input(input_shape), *body])


MODEL_CASES = [
    ("mnist_cnn", {}),
    ("search_cnn", {}),
    ("search_cnn", {"kernel_size": 7, "weight_decay": 0.009}),  # the report's best trial shape
    ("cifar_cnn1", {}),
    ("cifar_cnn2", {}),
    ("cifar_cnn3", {}),
    ("cifar_cnn4", {}),
]


def _images(shape, n=8) -> np.ndarray:
    """Real digits: MNIST, or for CIFAR's shape MNIST padded to 32x32 with 3 channels (scaled differently)."""
    x = _mnist(n)
    if shape[0] == 32:
        x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        x = np.concatenate([x, 0.5 * x, 1.0 - x], axis=-1)
    return x.astype(np.float32)


@pytest.mark.parametrize(("name", "kw"), MODEL_CASES, ids=[n + ("-k7" if k else "") for n, k in MODEL_CASES])
def test_registry_model_forward_matches_keras(keras, name, kw):
    """Eval-mode logits of each registry model, with Keras's initial weights copied across."""
    shape = models.input_shape(name)
    keras_model = _keras_model(keras, name, shape, **kw)
    variables = _copy_keras_weights(keras_model, np.random.default_rng(1))
    model = models.get_model(name, **kw)
    # The copied tree is exactly the Flax one: same names, shapes, and parameter count.
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
    template = {k: v for k, v in template.items() if k in ("params", "batch_stats")}  # not the sown L2 terms
    assert jax.tree.map(lambda a: a.shape, template) == jax.tree.map(lambda a: a.shape, variables)
    assert keras_model.count_params() == sum(np.size(a) for a in jax.tree.leaves(variables))
    x = _images(shape)
    with _allow_rank_promotion():
        theirs = np.asarray(keras_model(x, training=False))
    ours = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    if name == "cifar_cnn4":  # the L2 terms are Keras's too: l2 * sum(w ** 2) per kernel
        _, state = model.apply(variables, jnp.asarray(x), train=False, mutable=["losses"])
        ours_l2 = sum(float(v) for v in jax.tree.leaves(state["losses"]))
        with _allow_rank_promotion():
            np.testing.assert_allclose(ours_l2, float(sum(keras_model.losses)), rtol=1e-5)


# Beyond what the registry's models above already cover (valid and odd "same" convolutions,
# floor pooling, Dense, Flatten, LeakyReLU(0.1), Dropout and BatchNorm in eval mode):
LAYER_CASES = {
    "conv_same_even_kernel": (lambda L: L.Conv2D(3, (4, 2), padding="same", activation="gelu"),
                              lambda: layers.Conv2D(3, (4, 2), padding="same", activation="gelu"), "conv2d"),
    "maxpool_overlapping": (lambda L: L.MaxPooling2D(3, strides=2), lambda: layers.MaxPool2D(3, strides=2), None),
    "leaky_relu_layer_default": (lambda L: L.LeakyReLU(), lambda: layers.LeakyReLU(), None),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_matches_keras(keras, case):
    make_keras, make_ours, kind = LAYER_CASES[case]
    x = _mnist(3)[:, 3:20, 5:22, :]  # 17x17: odd sizes exercise the padding split and the floor
    x = np.concatenate([x, 1 - x], axis=-1)
    k_layer = make_keras(_Layers(keras))
    with _allow_rank_promotion():
        k_layer.build(x.shape)
        variables = {}
        if kind is not None:
            kernel, bias = k_layer.get_weights()
            bias = np.random.default_rng(2).normal(0, 0.1, bias.shape).astype(np.float32)
            k_layer.set_weights([kernel, bias])
            variables = {"params": {"kernel": kernel, "bias": bias}}
        theirs = np.asarray(k_layer(x, training=False))
    ours = np.asarray(make_ours().apply(variables, jnp.asarray(x)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_batchnorm_layer_matches_keras_in_both_modes(keras):
    x = _mnist(4).reshape(4, -1)[:, 300:316]
    k_layer = keras.layers.BatchNormalization()
    with _allow_rank_promotion():
        k_layer.build(x.shape)
        rng = np.random.default_rng(3)
        w = [rng.uniform(0.5, 1.5, 16), rng.normal(0, 0.1, 16), rng.normal(0, 0.5, 16), rng.uniform(0.5, 2, 16)]
        w = [a.astype(np.float32) for a in w]
        k_layer.set_weights(w)
        eval_out = np.asarray(k_layer(x, training=False))
        train_out = np.asarray(k_layer(x, training=True))
        moved = [np.asarray(v) for v in k_layer.get_weights()[2:]]
    variables = {"params": {"bn": {"scale": w[0], "bias": w[1]}}, "batch_stats": {"bn": {"mean": w[2], "var": w[3]}}}
    bn = layers.BatchNorm()
    np.testing.assert_allclose(bn.apply(variables, jnp.asarray(x), train=False), eval_out, rtol=1e-5, atol=1e-5)
    out, updated = bn.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, train_out, rtol=1e-4, atol=1e-4)
    # Moving statistics: momentum 0.99; Keras uses the biased batch variance, as Flax does.
    np.testing.assert_allclose(updated["batch_stats"]["bn"]["mean"], moved[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updated["batch_stats"]["bn"]["var"], moved[1], rtol=1e-5, atol=1e-6)


# -- (d) metrics ----------------------------------------------------------------------------------


def _metric_batches(n_classes=4):
    rng = np.random.default_rng(5)
    batches = []
    for size in (16, 16):  # one shape: Keras's eager ops compile once
        logits = rng.normal(size=(size, n_classes)).astype(np.float32) * 2
        labels = rng.integers(0, n_classes, size).astype(np.int32)
        weights = rng.uniform(0.2, 3.0, size).astype(np.float32)
        weights[-2:] = 0.0  # padding rows
        batches.append((logits, labels, weights))
    return batches


def _ours(metric, batches, n_classes=4):
    """Each batch into its own state, merged at the end (as devices/parts are)."""
    update = metric.update  # eagerly: the primitives compiled for one metric serve the next
    states = [update(metric.init(n_classes), jnp.asarray(o), jnp.asarray(y), jnp.asarray(w)) for o, y, w in batches]
    state = states[0]
    for s in states[1:]:
        state = metric.merge(state, s)
    return metric.result(jax.device_get(state))


def _keras_metric(keras_metric, batches, n_classes=4, one_hot=True):
    with _allow_rank_promotion():
        for o, y, w in batches:
            probs = np.asarray(jax.nn.softmax(o))
            y_true = np.eye(n_classes, dtype=np.float32)[y] if one_hot else y
            keras_metric.update_state(y_true, probs, sample_weight=w)
        return np.asarray(keras_metric.result())


def test_metrics_match_keras(keras):
    batches = _metric_batches()
    M = keras.metrics
    np.testing.assert_allclose(
        _ours(metrics.Accuracy(), batches)["accuracy"],
        _keras_metric(M.SparseCategoricalAccuracy(), batches, one_hot=False), rtol=1e-5,
    )
    for k in (1, 2, 3):
        np.testing.assert_allclose(
            _ours(metrics.TopKAccuracy(k), batches)[f"top_{k}_accuracy"],
            _keras_metric(M.TopKCategoricalAccuracy(k=k), batches), rtol=1e-5,
        )
    precision, recall, f1 = (_ours(m, batches) for m in (metrics.Precision(), metrics.Recall(), metrics.F1Score()))
    for c in range(4):
        np.testing.assert_allclose(precision[f"precision_{c}"], _keras_metric(M.Precision(top_k=1, class_id=c), batches), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(recall[f"recall_{c}"], _keras_metric(M.Recall(top_k=1, class_id=c), batches), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([f1[f"f1_{c}"] for c in range(4)], _keras_metric(M.F1Score(average=None), batches), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f1["f1"], _keras_metric(M.F1Score(average="macro"), batches), rtol=1e-5, atol=1e-6)
    # Without weights the numbers change (the weights matter), and padding rows (weight 0) don't count.
    unweighted = [(o, y, (w > 0).astype(np.float32)) for o, y, w in batches]
    assert abs(_ours(metrics.Accuracy(), unweighted)["accuracy"] - _ours(metrics.Accuracy(), batches)["accuracy"]) > 1e-3


def test_confusion_matrix_metric_and_report(keras):
    batches = _metric_batches()
    cm = _ours(metrics.Weighted(metrics.ConfusionMatrix()), batches)["confusion_matrix"]  # weighted_metrics=
    y = np.concatenate([b[1] for b in batches])
    o = np.concatenate([b[0] for b in batches])
    w = np.concatenate([b[2] for b in batches])
    np.testing.assert_allclose(cm, metrics.confusion_matrix(y, o, 4, sample_weight=w), rtol=1e-5)
    counts = metrics.confusion_matrix(y, o.argmax(-1), 4)
    assert counts.sum() == len(y) and counts.dtype.kind == "i"
    # metrics= (each example once; padding rows, weight 0, not at all): integer counts, as on the host
    mask = [(o_, y_, (w_ > 0).astype(np.float32)) for o_, y_, w_ in batches]
    in_step = _ours(metrics.ConfusionMatrix(), mask)["confusion_matrix"]
    keep = w > 0
    np.testing.assert_array_equal(in_step, metrics.confusion_matrix(y[keep], o[keep], 4))
    assert in_step.dtype == np.int64
    # Rows are true classes, columns predictions: the diagonal over the row sums is the recall.
    recall = _ours(metrics.Recall(), [(o, y, np.ones_like(w))])
    np.testing.assert_allclose(np.diag(counts) / counts.sum(1), [recall[f"recall_{c}"] for c in range(4)], rtol=1e-6)
    report = metrics.classification_report(y, o, class_names=["zero", "one", "two", "three"])
    assert "three" in report and "macro avg" in report and f"{len(y)}" in report.splitlines()[-1]


# -- (e) EarlyStopping ----------------------------------------------------------------------------

ES_CASES = [
    ({"patience": 2}, [1.0, 0.9, 0.95, 0.97, 0.8, 0.7]),
    ({"patience": 0}, [1.0, 1.1, 0.9]),
    ({"patience": 2, "min_delta": 0.05}, [1.0, 0.96, 0.93, 0.9, 0.7]),
    ({"patience": 1, "restore_best_weights": True}, [0.5, 0.4, 0.45, 0.41, 0.3]),
    ({"patience": 3, "restore_best_weights": True}, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
    ({"patience": 2, "baseline": 0.5, "restore_best_weights": True}, [0.9, 0.8, 0.7, 0.6, 0.4, 0.3]),
    ({"patience": 1, "start_from_epoch": 2, "restore_best_weights": True}, [0.1, 0.9, 0.8, 0.85, 0.86, 0.5]),
    ({"patience": 2, "monitor": "val_accuracy", "mode": "max", "restore_best_weights": True}, [0.5, 0.7, 0.69, 0.7, 0.71, 0.6, 0.6]),
    ({"patience": 1, "mode": "max", "min_delta": 0.01, "monitor": "val_accuracy"}, [0.5, 0.505, 0.52, 0.525]),
    ({"patience": 5}, [1.0, 0.9, 0.8, 0.7]),  # never stops
]


class _KerasModelStub:
    """What keras.callbacks.EarlyStopping touches: stop_training and the weights."""

    def __init__(self):
        self.stop_training = False
        self.epoch = -1
        self.restored = None

    def get_weights(self):
        return [np.asarray(self.epoch)]

    def set_weights(self, weights):
        self.restored = int(weights[0])


class _StateStub:
    def __init__(self, epoch):
        self.params, self.batch_stats = {"epoch": np.asarray(epoch)}, {}

    def replace(self, params, batch_stats):
        new = _StateStub(int(params["epoch"]))
        return new


class _LoopStub:
    def __init__(self):
        self.stop_training = False
        self.state = _StateStub(-1)


@pytest.mark.parametrize(("kwargs", "values"), ES_CASES)
def test_early_stopping_decisions_match_keras(keras, kwargs, values):
    """Same scripted validation values: same stop epoch, best epoch and restored weights."""
    monitor = kwargs.get("monitor", "val_loss")
    k_cb = keras.callbacks.EarlyStopping(**kwargs)
    stub = _KerasModelStub()
    k_cb.set_model(stub)
    ours, loop = callbacks.EarlyStopping(**kwargs), _LoopStub()
    k_cb.on_train_begin()
    ours.on_train_begin(loop)
    k_stop = o_stop = None
    for epoch, value in enumerate(values):
        logs = {monitor: value, "loss": 1.0}
        if k_stop is None:
            stub.epoch = epoch  # the weights "after epoch" are the epoch number
            with _allow_rank_promotion():
                k_cb.on_epoch_end(epoch, logs)
            if stub.stop_training:
                k_stop = epoch
        if o_stop is None:
            loop.state = _StateStub(epoch)
            ours.on_epoch_end(epoch, logs, loop)
            if loop.stop_training:
                o_stop = epoch
    with _allow_rank_promotion():
        k_cb.on_train_end()
    ours.on_train_end(loop)
    assert o_stop == k_stop
    assert ours.stopped_epoch == k_cb.stopped_epoch
    assert ours.best_epoch == k_cb.best_epoch
    restored = int(loop.state.params["epoch"])
    assert restored == (stub.restored if stub.restored is not None else len(values) - 1 if k_stop is None else k_stop)


# -- training steps through fit ---------------------------------------------------------------------


FIT_CASES = [
    # Decoupled weight decay at the scheduled rate, beside L2 in the loss; each optimizer's own
    # update is checked above (one case here: a fit compiles for seconds).
    ("adamw", {}, True),
]


@pytest.mark.parametrize(("name", "kwargs", "schedule"), FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_steps_match_keras_fit(keras, name, kwargs, schedule):
    """Eight steps (2 epochs of 4 batches, no shuffling) of ``jaxcnn.fit`` and ``keras.Model.fit``
    from the same weights: a conv net with L2 on its kernels, sparse cross-entropy on logits.
    Weights agree to 1e-5 and the epoch losses to 1e-5 relative."""
    import flax.linen as nn

    class Small(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = layers.Conv2D(4, 3, activation="relu", kernel_l2=0.01, name="conv2d")(x)
            x = layers.MaxPool2D(2, name="max_pooling2d")(x)
            x = layers.Flatten(name="flatten")(x)
            return layers.Dense(10, kernel_l2=0.01, name="dense")(x)

    from jaxcnn import data, train

    ds = data.load("mnist")
    x, y = data.to_float(ds.x_train[:64]), ds.y_train[:64].astype(np.int32)
    L, l2 = _Layers(keras), keras.regularizers.L2(0.01)
    k_model = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(4, 3, activation="relu", kernel_regularizer=l2),
                                L.MaxPooling2D(2), L.Flatten(), L.Dense(10, kernel_regularizer=l2)])
    variables = _copy_keras_weights(k_model, np.random.default_rng(0))
    lr = 0.01
    k_lr = keras.optimizers.schedules.ExponentialDecay(lr, 3, 0.5, staircase=True) if schedule else lr
    j_lr = optim.exponential_decay(lr, 3, 0.5, staircase=True) if schedule else lr
    k_model.compile(optimizer=getattr(keras.optimizers, KERAS_OPTIMIZER[name])(learning_rate=k_lr, **kwargs),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with _allow_rank_promotion():
        k_hist = k_model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    state = train.create_train_state(Small(), (28, 28, 1), optim.get_optimizer(name, j_lr, **kwargs), seed=0)
    state = state.replace(params=jax.tree.map(jnp.asarray, variables["params"]))
    result = jaxcnn.fit(state, x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    ours = jax.device_get(result.state.params)
    theirs = k_model.get_weights()
    for got, want in zip([ours["conv2d"]["kernel"], ours["conv2d"]["bias"], ours["dense"]["kernel"], ours["dense"]["bias"]], theirs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(theirs[2], variables["params"]["dense"]["kernel"], atol=1e-4)  # it trained
    np.testing.assert_allclose(result.history.history["loss"], k_hist["loss"], rtol=1e-5)


# -- LearningRateScheduler ------------------------------------------------------------------------


class _LrLoopStub:
    """What jaxcnn's LearningRateScheduler touches: the loop's learning rate (float32, as it is
    stored in the optimizer state)."""

    def __init__(self, lr):
        self._lr = np.float32(lr)

    @property
    def learning_rate(self):
        return float(self._lr)

    @learning_rate.setter
    def learning_rate(self, value):
        self._lr = np.float32(value)

    def check_learning_rate_settable(self):  # jaxcnn.train.Loop's check: a float rate here
        return None


@pytest.mark.parametrize(
    "schedule",
    [callbacks.keep_then_decay(3, 0.1), lambda epoch, lr: lr * 0.5 if epoch % 2 else lr, lambda epoch: 0.1 / (1 + epoch)],
    ids=["report_keep_then_decay", "halve_on_odd_epochs", "one_argument"],
)
def test_learning_rate_scheduler_decisions_match_keras(keras, schedule):
    """The rate set at each of 8 epochs, against keras.callbacks.LearningRateScheduler (1e-6)."""

    class Model:
        optimizer = keras.optimizers.SGD(learning_rate=0.01)

    k_cb = keras.callbacks.LearningRateScheduler(schedule)
    k_cb.set_model(Model())
    ours, loop = callbacks.LearningRateScheduler(schedule), _LrLoopStub(0.01)
    k_rates, o_rates = [], []
    for epoch in range(8):
        with _allow_rank_promotion():
            k_cb.on_epoch_begin(epoch)
        k_rates.append(float(np.asarray(Model.optimizer.learning_rate)))
        ours.on_epoch_begin(epoch, loop)
        o_rates.append(loop.learning_rate)
    np.testing.assert_allclose(o_rates, k_rates, rtol=1e-6)
    assert len(set(np.round(k_rates, 9))) > 1  # the rate did change
