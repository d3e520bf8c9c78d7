"""``jaxcnn.fit`` against ``keras.Model.fit`` for what a Keras user writes around the model: each
loss option (sparse or categorical, from logits or from a softmax output, label smoothing, soft
labels), class and sample weights, and a batch larger than the data.

Tolerances: weights after the steps ``rtol 1e-5, atol 1e-5``; epoch losses ``rtol 1e-5`` (float32,
the same formulas; only the summation order may differ).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import layers, train
from test_keras_parity import _allow_rank_promotion, _copy_keras_weights, _Layers, keras  # noqa: F401 (fixture)

import flax.linen as nn


class Small(nn.Module):
    softmax: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.Conv2D(4, 3, activation="relu", name="conv2d")(x)
        x = layers.MaxPool2D(2, name="max_pooling2d")(x)
        x = layers.Flatten(name="flatten")(x)
        return layers.Dense(10, activation="softmax" if self.softmax else None, name="dense")(x)


CASES = {
    "sparse_logits": dict(loss=("SparseCategoricalCrossentropy", {"from_logits": True}), ours={"loss": "sparse_categorical_crossentropy"}),
    "sparse_softmax_output": dict(softmax=True, loss=("SparseCategoricalCrossentropy", {}), ours={}),
    "categorical_smoothing": dict(onehot=True, loss=("CategoricalCrossentropy", {"from_logits": True, "label_smoothing": 0.1}),
                                  ours={"loss": "categorical_crossentropy", "label_smoothing": 0.1}),
    "soft_labels_softmax": dict(soft=True, softmax=True, loss=("CategoricalCrossentropy", {}), ours={"loss": "categorical_crossentropy"}),
    "class_weight": dict(loss=("SparseCategoricalCrossentropy", {"from_logits": True}), class_weight={0: 3.0, 1: 0.5, 7: 2.0}, ours={}),
    "sample_weight": dict(loss=("SparseCategoricalCrossentropy", {"from_logits": True}), sample_weight=True, ours={}),
    "batch_larger_than_data": dict(loss=("SparseCategoricalCrossentropy", {"from_logits": True}), batch=100, ours={}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_matches_keras_fit(keras, case):
    c = CASES[case]
    ds = jaxcnn.data.load("mnist")
    x, y = jaxcnn.data.to_float(ds.x_train[:48]), ds.y_train[:48].astype(np.int32)
    rng = np.random.default_rng(1)
    labels = y
    if c.get("onehot"):
        labels = np.eye(10, dtype=np.float32)[y]
    if c.get("soft"):
        labels = rng.dirichlet(np.ones(10), len(y)).astype(np.float32)
    sw = rng.uniform(0.2, 2.0, len(y)).astype(np.float32) if c.get("sample_weight") else None
    L = _Layers(keras)
    k_model = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(4, 3, activation="relu"), L.MaxPooling2D(2), L.Flatten(),
                                L.Dense(10, activation="softmax" if c.get("softmax") else None)])
    variables = _copy_keras_weights(k_model, np.random.default_rng(0))
    name, kw = c["loss"]
    # Keras counts compile(metrics=) without the sample weights and weighted_metrics with them,
    # naming the second "weighted_accuracy" beside the first.
    k_model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss=getattr(keras.losses, name)(**kw),
                    metrics=["accuracy"], weighted_metrics=["accuracy"])
    batch = c.get("batch", 16)
    with _allow_rank_promotion():
        k_hist = k_model.fit(x, labels, batch_size=batch, epochs=2, shuffle=False, verbose=0,
                             class_weight=c.get("class_weight"), sample_weight=sw).history
    state = train.create_train_state(Small(softmax=bool(c.get("softmax"))), (28, 28, 1), "sgd", 0.1)
    state = state.replace(params=jax.tree.map(jnp.asarray, variables["params"]))
    result = jaxcnn.fit(state, x, labels, epochs=2, batch_size=batch, shuffle=False, verbose=0, devices=None,
                        class_weight=c.get("class_weight"), sample_weight=sw, weighted_metrics=["accuracy"], **c["ours"])
    ours = jax.device_get(result.state.params)
    theirs = k_model.get_weights()
    for got, want in zip([ours["conv2d"]["kernel"], ours["conv2d"]["bias"], ours["dense"]["kernel"], ours["dense"]["bias"]], theirs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(theirs[2], variables["params"]["dense"]["kernel"], atol=1e-4)  # it trained
    np.testing.assert_allclose(result.history.history["loss"], k_hist["loss"], rtol=1e-5)
    for key in ("accuracy", "weighted_accuracy"):
        np.testing.assert_allclose(result.history.history[key], k_hist[key], rtol=1e-6, err_msg=key)
    if sw is not None or c.get("class_weight"):
        assert not np.allclose(k_hist["accuracy"], k_hist["weighted_accuracy"])  # the weights count in one only
    if sw is not None:
        with _allow_rank_promotion():
            k_eval = k_model.evaluate(x, labels, sample_weight=sw, verbose=0, return_dict=True)
        ours_eval = jaxcnn.evaluate(result.state, x, labels, sample_weight=sw, weighted_metrics=["accuracy"])
        assert set(ours_eval) == set(k_eval)
        for key, value in k_eval.items():
            assert ours_eval[key] == pytest.approx(float(value), rel=1e-5), key
    if c.get("softmax"):
        assert result.state.outputs_are_probs


def test_metrics_and_weights_reach_the_history(keras):
    ds = jaxcnn.data.load("mnist")
    x, y = jaxcnn.data.to_float(ds.x_train[:96]), ds.y_train[:96]
    _, history = jaxcnn.fit(Small(), x, y, epochs=1, batch_size=32, validation_split=0.25, verbose=0,
                            metrics=["top_k_accuracy", "precision"])
    for k in ("top_k_accuracy", "precision", "val_top_k_accuracy", "val_precision", "precision_3"):
        assert k in history.history and 0.0 <= history[k][0] <= 1.0, k
    assert history["top_k_accuracy"][0] >= history["accuracy"][0]
    state = _
    report = jaxcnn.evaluate(state, x, y, metrics=["confusion_matrix"])
    cm = report["confusion_matrix"]
    assert cm.shape == (10, 10) and cm.sum() == len(x) and cm.dtype == np.int64  # counts, as metrics.confusion_matrix's
    assert np.trace(cm) / len(x) == pytest.approx(report["accuracy"])
