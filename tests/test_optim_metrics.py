"""Optimizers, activations and metrics without Keras: the errors (README's bad-input rows), the
optimizer state's layout, and the metrics' weighting, merging and host helpers.
Parity with Keras itself is in tests/test_keras_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import layers, metrics, optim
from jaxcnn.errors import ConfigError, ShapeError

# -- errors (one README row each) ---------------------------------------------------------------


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adamm' \(did you mean 'adam'\?\); use one of rmsprop, adamax, adam, adamw, sgd"):
        optim.get_optimizer("adamm")
    with pytest.raises(ConfigError, match=r"optimizer 'sgd' does not take 'momentun' \(did you mean 'momentum'\?\); it takes learning_rate \(the second argument\) and momentum, nesterov, weight_decay"):
        optim.get_optimizer("sgd", 0.1, momentun=0.9)
    # PyTorch's names: 'betas' was told "did you mean 'beta_2'?", 'lr' nothing
    with pytest.raises(ConfigError, match=r"optimizer 'adam' does not take 'betas' \(PyTorch's betas; Keras's name is beta_1 and beta_2\)"):
        optim.get_optimizer("adam", betas=(0.9, 0.99))
    with pytest.raises(ConfigError, match=r"does not take 'lr' \(PyTorch's lr; Keras's name is learning_rate\); it takes learning_rate"):
        optim.get_optimizer("sgd", lr=0.1)
    with pytest.raises(ConfigError, match=r"unknown activation 'gellu' \(did you mean 'gelu'\?\); use one of celu, elu, "):
        layers.get_activation("gellu")
    with pytest.raises(ConfigError, match=r"unknown metric 'acuracy' \(did you mean 'accuracy'\?\); use one of accuracy, acc, "):
        metrics.get_metrics(["acuracy"])


def test_unknown_activation_fails_at_model_init():
    model = layers.Dense(3, activation="leakyrelu")
    with pytest.raises(ConfigError, match=r"unknown activation 'leakyrelu' \(did you mean 'leaky_relu'\?\)"):
        model.init(jax.random.key(0), jnp.ones((1, 2)))


def test_bad_optimizer_arguments():
    with pytest.raises(ConfigError, match="adam: only one of clipnorm, clipvalue and global_clipnorm can be set, got clipnorm, clipvalue"):
        optim.get_optimizer("adam", clipnorm=1.0, clipvalue=0.5)
    with pytest.raises(ConfigError, match=r"sgd: momentum must be a number in \[0, 1\], got 1.5"):
        optim.get_optimizer("sgd", momentum=1.5)
    with pytest.raises(ConfigError, match="rmsprop: weight_decay must be a number >= 0 or None, got -0.1"):
        optim.get_optimizer("rmsprop", weight_decay=-0.1)
    with pytest.raises(ConfigError, match="activation 'threshold' has no default arguments"):
        layers.get_activation("threshold")
    with pytest.raises(ConfigError, match="metrics \\['accuracy'\\] are given more than once"):
        metrics.get_metrics(["accuracy", metrics.Accuracy()])
    with pytest.raises(ConfigError, match="TopKAccuracy: k must be a positive integer, got 0"):
        metrics.TopKAccuracy(0)


def test_learning_rate_of_a_schedule_or_plain_optax_cannot_be_set():
    params = {"w": jnp.ones(2)}
    scheduled = optim.get_optimizer("adam", optim.exponential_decay(0.01, 10, 0.5)).init(params)
    assert optim.learning_rate_is_scheduled(scheduled)
    with pytest.raises(ConfigError, match="learning rate is a schedule, recomputed at every step, so it cannot be set"):
        optim.set_learning_rate(scheduled, 0.1)
    with pytest.raises(ConfigError, match="wrap it in optax.inject_hyperparams"):
        optim.set_learning_rate(optax.adam(0.01).init(params), 0.1)
    fixed = optim.get_optimizer("adam", 0.01).init(params)
    assert not optim.learning_rate_is_scheduled(fixed)
    assert float(optim.get_learning_rate(optim.set_learning_rate(fixed, 0.5))) == 0.5


def test_confusion_matrix_bad_input():
    with pytest.raises(ShapeError, match="y_true has 3 labels and y_pred 2; they must match one to one"):
        metrics.confusion_matrix([0, 1, 2], [0, 1])
    with pytest.raises(ShapeError, match=r"y_pred holds class 5, outside 0..2; pass num_classes=6 or fix the labels"):
        metrics.confusion_matrix([0, 1, 2], [0, 1, 5], 3)


# -- optimizer state -----------------------------------------------------------------------------


def test_plain_rmsprop_state_is_unchanged_and_momentum_adds_a_buffer():
    """Existing checkpoints hold (ScaleByRmsState, EmptyState) with lr, rho, epsilon: still so."""
    params = {"w": jnp.ones(3)}
    plain = optim.get_optimizer("rmsprop").init(params)
    assert sorted(plain.hyperparams) == ["epsilon", "learning_rate", "rho"]
    assert isinstance(plain.inner_state[0], optax.ScaleByRmsState)
    with_momentum = optim.get_optimizer("rmsprop", momentum=0.9, centered=True).init(params)
    assert with_momentum.inner_state.momentum["w"].shape == (3,)
    assert with_momentum.inner_state.mean_grad["w"].shape == (3,)


def test_sgd_momentum_stores_lr_times_gradient():
    """Keras's form: a rate change affects only new gradients (optax.sgd would rescale the old velocity)."""
    tx = optim.get_optimizer("sgd", 1.0, momentum=0.5)
    w = jnp.zeros(1)
    state = tx.init(w)
    u1, state = tx.update(jnp.ones(1), state, w)
    state = optim.set_learning_rate(state, 0.1)
    u2, _ = tx.update(jnp.ones(1), state, w)
    np.testing.assert_allclose(u1, [-1.0])
    np.testing.assert_allclose(u2, [0.5 * -1.0 - 0.1 * 1.0])  # momentum * (-1) - lr * g


def test_adamw_decays_every_parameter_with_the_learning_rate():
    tx = optim.get_optimizer("adamw", 0.1, weight_decay=0.5)
    w = {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)}
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
    # A zero gradient leaves only the decay: w * wd * lr = 2 * 0.5 * 0.1.
    for leaf in jax.tree.leaves(u):
        np.testing.assert_allclose(leaf, [-0.1, -0.1], rtol=1e-6)


# -- metrics -------------------------------------------------------------------------------------


def _batch():
    outputs = jnp.asarray([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 2.0], [5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    labels = jnp.asarray([0, 2, 2, 1, 0], jnp.int32)
    return outputs, labels


def _result(metric, outputs, labels, weights, num_classes=3):
    state = jax.jit(metric.update)(metric.init(num_classes), outputs, labels, weights)
    return metric.result(jax.device_get(state))


def test_weights_multiply_each_example_and_padding_counts_nothing():
    outputs, labels = _batch()  # predictions 0, 1, 2, 0, 2: correct, wrong, correct, wrong, wrong
    w = jnp.asarray([1.0, 2.0, 3.0, 0.5, 0.0], jnp.float32)
    assert _result(metrics.Accuracy(), outputs, labels, w)["accuracy"] == pytest.approx(4.0 / 6.5)
    assert _result(metrics.Accuracy(), outputs, labels, jnp.ones(5))["accuracy"] == pytest.approx(0.4)
    # Precision of class 0: predicted for rows 0 (tp, w 1) and 3 (fp, w 0.5).
    p = _result(metrics.Precision(), outputs, labels, w)
    assert p["precision_0"] == pytest.approx(1 / 1.5)
    assert p["precision_1"] == 0.0  # predicted once, wrongly
    r = _result(metrics.Recall(), outputs, labels, w)
    assert r["recall_2"] == pytest.approx(3.0 / 5.0)  # rows 1 (w 2, missed) and 2 (w 3, found)
    assert r["recall"] == pytest.approx(np.mean([r[f"recall_{c}"] for c in range(3)]))
    # Top 2: row 1's label is second; row 3's label ties for second place, which counts (Keras's in_top_k).
    assert _result(metrics.TopKAccuracy(2), outputs, labels, w)["top_2_accuracy"] == 1.0
    assert _result(metrics.TopKAccuracy(1), outputs, labels, w)["top_1_accuracy"] == pytest.approx(4.0 / 6.5)


def test_metric_states_merge_like_one_batch():
    outputs, labels = _batch()
    outputs, labels = jnp.concatenate([outputs, outputs[:1]]), jnp.concatenate([labels, labels[:1]])  # 6 rows
    w = jnp.asarray([1.0, 2.0, 3.0, 0.5, 1.0, 0.25], jnp.float32)
    for metric in metrics.get_metrics(["acc", "top_k_accuracy", "f1", "confusion_matrix"]):
        whole = metric.update(metric.init(3), outputs, labels, w)
        a = metric.update(metric.init(3), outputs[:3], labels[:3], w[:3])
        b = metric.update(metric.init(3), outputs[3:], labels[3:], w[3:])
        for x, y in zip(jax.tree.leaves(metric.merge(a, b)), jax.tree.leaves(whole)):
            np.testing.assert_allclose(x, y, rtol=1e-6)
    assert hash(metrics.TopKAccuracy(3)) == hash(metrics.TopKAccuracy(3))  # a static jit argument


def test_confusion_matrix_and_report_on_the_host():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 0, 2])
    cm = metrics.confusion_matrix(y_true, y_pred)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, np.eye(3)[y_pred]), cm)  # scores are argmaxed
    report = metrics.classification_report(y_true, y_pred, class_names=["cat", "dog", "eel"])
    lines = report.splitlines()
    assert lines[2].split() == ["cat", "0.500", "0.500", "0.500", "2"]
    assert lines[4].split() == ["eel", "1.000", "0.667", "0.800", "3"]
    assert lines[6].split() == ["accuracy", "0.667", "6"]


# -- plain functions as metrics (Keras's MeanMetricWrapper) ---------------------------------------


def my_acc(y_true, y_pred):
    """Per-example values (B,), as keras.metrics.sparse_categorical_accuracy returns."""
    return (jnp.argmax(y_pred, axis=-1) == y_true).astype(jnp.float32)


def my_mean_acc(y_true, y_pred):
    """A scalar batch mean."""
    return jnp.mean(jnp.argmax(y_pred, axis=-1) == y_true)


def test_a_plain_function_is_a_weighted_mean_metric():
    outputs, labels = _batch()
    w = jnp.asarray([1.0, 2.0, 3.0, 0.5, 0.0], jnp.float32)  # the last row is padding
    per_example, scalar = metrics.get_metrics([my_acc, my_mean_acc])
    assert (per_example.name, scalar.name) == ("my_acc", "my_mean_acc")
    assert _result(per_example, outputs, labels, w)["my_acc"] == pytest.approx(4.0 / 6.5)
    assert _result(scalar, outputs, labels, w)["my_mean_acc"] == pytest.approx(4.0 / 6.5)
    hot = metrics.MeanMetricWrapper(lambda t, p: jnp.sum(t * jax.nn.one_hot(jnp.argmax(p, -1), 3), -1), name="hot", one_hot=True)
    assert _result(hot, outputs, labels, w)["hot"] == pytest.approx(4.0 / 6.5)
    # Parts merge like the whole batch, the scalar function too.
    for m in (per_example, scalar):
        whole = m.update(m.init(3), outputs, labels, w)
        parts = m.merge(m.update(m.init(3), outputs[:2], labels[:2], w[:2]), m.update(m.init(3), outputs[2:], labels[2:], w[2:]))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), parts, whole)
    assert hash(metrics.get_metric(my_acc)) == hash(metrics.get_metric(my_acc))  # a static jit argument
    with pytest.raises(ConfigError, match=r"has no usable name \('<lambda>'\).*MeanMetricWrapper\(fn, name='my_metric'\)"):
        metrics.get_metrics([lambda t, p: t])
    def accuracy(t, p):
        return t
    with pytest.raises(ConfigError, match=r"is named 'accuracy', a key fit logs itself"):
        metrics.get_metrics([accuracy])


def _tiny():
    """A three-class linear model (flax imported here, as the tests above need none of it)."""
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    return Tiny()


def test_fit_logs_a_plain_function_metric_alike_on_any_devices():
    import jaxcnn

    rng = np.random.default_rng(0)
    x = rng.random((130, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=130).astype(np.int32)
    runs = {}
    for devices in (None, "auto"):
        runs[devices] = jaxcnn.fit(_tiny(), x, y, epochs=2, batch_size=64, validation_split=0.25, verbose=0, seed=1,
                                   optimizer="sgd", learning_rate=0.1, metrics=[my_acc, my_mean_acc], devices=devices).history
    for h in runs.values():
        for k in ("my_acc", "my_mean_acc", "val_my_acc", "val_my_mean_acc"):
            assert len(h[k]) == 2
        # Both functions are accuracy. On "auto", batches of 64 run as parts on the CPU devices;
        # the last training batch is short and the validation batches are padded.
        np.testing.assert_allclose(h["my_acc"], h["accuracy"], rtol=1e-6)
        np.testing.assert_allclose(h["my_mean_acc"], h["accuracy"], rtol=1e-6)
        np.testing.assert_allclose(h["val_my_acc"], h["val_accuracy"], rtol=1e-6)
        np.testing.assert_allclose(h["val_my_mean_acc"], h["val_accuracy"], rtol=1e-6)
    for k in ("my_acc", "my_mean_acc", "val_my_acc", "val_my_mean_acc", "loss"):
        np.testing.assert_allclose(runs["auto"][k], runs[None][k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_weighted_metrics_are_alike_on_one_device_parts_and_a_mesh():
    """``weighted_metrics`` take the class weights on every execution strategy: one device,
    parts dealt to the CPU devices (a short last batch, padded validation batches) and a mesh."""
    import jaxcnn

    rng = np.random.default_rng(1)
    x = rng.random((130, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=130).astype(np.int32)
    keys = ("loss", "accuracy", "weighted_accuracy", "val_loss", "val_accuracy", "val_weighted_accuracy")
    runs = {}
    for devices in (None, "auto", "all"):
        runs[devices] = jaxcnn.fit(_tiny(), x, y, epochs=2, batch_size=64, validation_split=0.25, verbose=0, seed=1,
                                   optimizer="sgd", learning_rate=0.1, class_weight={0: 3.0, 1: 1.0, 2: 0.5},
                                   weighted_metrics=["accuracy"], devices=devices).history
    base = runs[None]
    assert base["weighted_accuracy"] != base["accuracy"]  # the weights count
    for devices in ("auto", "all"):
        for k in keys:
            np.testing.assert_allclose(runs[devices][k], base[k], rtol=1e-5, atol=1e-6, err_msg=f"{devices} {k}")
