"""One engine, any model: every execution strategy trains, evaluates, predicts and exports the
report's models and models the report never had (dropout without BatchNorm, BatchNorm with
dropout, no ``train`` argument, a softmax output, Flax NNX, Flax's own convolutions and max-pools
that jaxcnn computes its way), and gives the same history on any number of CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn import checkpoint, layers, train
from jaxcnn.errors import CheckpointError, ConfigError


class DropNoBN(nn.Module):
    """flax's own Dropout, no BatchNorm."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        x = nn.Dropout(0.3, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(10)(x)


class JaxcnnDrop(nn.Module):
    """jaxcnn's Keras-style layers with dropout and L2."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.Conv2D(4, 3, activation="relu", kernel_l2=0.01)(x)
        x = layers.MaxPool2D(2)(x)
        x = layers.Dropout(0.25)(layers.Flatten()(x), train=train)
        return layers.Dense(10)(x)


class BNDrop(nn.Module):
    """BatchNorm with dropout."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), strides=2)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)(x)
        x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x).reshape(x.shape[0], -1))
        return nn.Dense(10)(x)


class BNOnly(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(10)(nn.relu(x).reshape(x.shape[0], -1))


class JaxcnnBN(nn.Module):
    """jaxcnn's layers with BatchNorm and dropout; both convolutions are im2col ones on CPU (one
    input channel, then four)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.BatchNorm()(layers.Conv2D(4, 3, activation="relu")(x), train)
        x = layers.Conv2D(64, 3, activation="relu")(layers.MaxPool2D(2)(x))
        x = layers.Dropout(0.2)(x.mean(axis=(1, 2)), train=train)
        return layers.Dense(10)(x)


class NoTrain(nn.Module):
    """No `train` argument at all."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class Softmax(nn.Module):
    """Ends in a softmax, the Keras habit."""

    @nn.compact
    def __call__(self, x, training: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.softmax(nn.Dense(10)(x.reshape(x.shape[0], -1)))


class NNXNet(nnx.Module):
    """A Flax NNX module with dropout and BatchNorm."""

    def __init__(self, channels: int = 1, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels, 4, (3, 3), strides=2, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(4 * 14 * 14, 10, rngs=rngs)

    def __call__(self, x):
        x = self.drop(nnx.relu(self.bn(self.conv(x))))
        return self.out(x.reshape(x.shape[0], -1))


class NNXDrop(nnx.Module):
    """NNX with dropout and no BatchNorm (so it trains on the parts strategy)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), strides=2, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(4 * 14 * 14, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.conv(x))).reshape(x.shape[0], -1))


class FlaxPoolBN(nn.Module):
    """Flax's plain convolutions and max-pool with BatchNorm and dropout: jaxcnn computes them by
    its own conv2d and max_pool (jaxcnn.layers.fast_paths)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.max_pool(nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x))), (2, 2), (2, 2))
        x = nn.Dropout(0.2, deterministic=not train)(nn.relu(nn.Conv(16, (3, 3), padding="VALID")(x)))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class NNXPool(nnx.Module):
    """NNX's plain convolution and max-pool with dropout (the parts strategy), swapped likewise."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), padding="VALID", rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(8 * 13 * 13, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.conv(x)), (2, 2), (2, 2))
        return self.out(self.drop(x).reshape(x.shape[0], -1))


CUSTOM = {
    "dropout": DropNoBN, "jaxcnn_dropout": JaxcnnDrop, "bn_dropout": BNDrop, "bn": BNOnly, "jaxcnn_bn": JaxcnnBN,
    "no_train_arg": NoTrain, "softmax": Softmax,
    "nnx_bn_dropout": lambda: NNXNet(rngs=nnx.Rngs(0)), "nnx_dropout": lambda: NNXDrop(rngs=nnx.Rngs(0)),
    "flax_pool_bn": FlaxPoolBN, "nnx_pool": lambda: NNXPool(rngs=nnx.Rngs(0)),
}
STRATEGIES = {
    "single": dict(devices=None),
    "parts": dict(devices="auto"),
    "mesh": dict(devices="all"),
    "resident": dict(devices=None, data_on_device=True),
}


@pytest.fixture(scope="module")
def mnist():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:96]), ds.y_train[:96]


def _fit(model, x, y, **kw):
    args = dict(epochs=2, batch_size=16, validation_split=0.25, verbose=0, seed=4, optimizer="sgd", learning_rate=0.05)
    return jaxcnn.fit(model, x, y, **{**args, **kw})


@pytest.mark.parametrize("name", list(CUSTOM))
def test_every_strategy_equals_the_single_device_step(mnist, name):
    """Batches of 16 are one part each, so even dropout draws the same masks on every strategy."""
    x, y = mnist
    base = _fit(CUSTOM[name](), x, y, **STRATEGIES["single"])
    assert np.isfinite(base.history["loss"]).all() and base.history["loss"][-1] < base.history["loss"][0] * 1.2
    for strategy in ("parts", "mesh", "resident"):
        other = _fit(CUSTOM[name](), x, y, **STRATEGIES[strategy])
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(other.history[k], base.history[k], rtol=2e-4, atol=1e-5, err_msg=f"{strategy} {k}")
    ev = jaxcnn.evaluate(base.state, x, y)
    assert set(ev) == {"loss", "accuracy"} and np.isfinite(ev["loss"])
    probs = jaxcnn.predict(base.state, x[:5], output="probs")
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert (jaxcnn.predict(base.state, x[:5], output="classes") == probs.argmax(-1)).all()


@pytest.mark.parametrize("make", [lambda: NNXNet(rngs=nnx.Rngs(0)), lambda: NNXDrop(rngs=nnx.Rngs(0))], ids=["bn_dropout", "dropout"])
def test_an_nnx_module_stays_usable_after_fit_and_trains_again_alike(mnist, make):
    """fit trains copies of an NNX module's arrays: the training step donates its state's buffers,
    and donating the module's own deleted them (model(x) then raised "Array has been deleted")."""
    x, y = mnist
    model = make()
    before = [np.array(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]
    first = _fit(model, x, y, devices="auto")
    model.eval()
    assert model(x[:2]).shape == (2, 10)
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), before, strict=True):  # left as it was
        np.testing.assert_array_equal(np.array(a), b)
    model.train()
    again = _fit(model, x, y, devices="auto")
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert again.history[k] == first.history[k], k


@pytest.mark.parametrize("name", ["flax_pool_bn", "nnx_pool"])
def test_fast_paths_leave_a_users_fit_as_written(mnist, monkeypatch, name):
    """jaxcnn's own convolution and max-pool in place of Flax's (jaxcnn.layers.fast_paths) leave
    fit's history, evaluation and weights those of the model as written, to float rounding."""
    x, y = mnist
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(layers, "FAST_PATHS", on)
        result = _fit(CUSTOM[name](), x, y, devices="auto")
        runs[on] = (result, jaxcnn.evaluate(result.state, x, y))
    (fast, fast_ev), (written, written_ev) = runs[True], runs[False]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(fast.history[k], written.history[k], rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(fast_ev["loss"], written_ev["loss"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(fast.state.params), jax.tree.leaves(written.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs 2 CPU devices (jaxcnn makes one per core)")
@pytest.mark.parametrize("name", ["bn_dropout", "bn", "nnx_bn_dropout", "jaxcnn_bn", "flax_pool_bn"])
def test_batch_statistics_on_the_cpu_mesh_are_the_whole_batch(name):
    """fit's CPU path for BatchNorm models cuts a batch into parts (of 32 given 4 devices), one
    per device of an SPMD mesh: the moving statistics after a step are those of the one-device
    step (the whole batch's), and cutting the same batch into independent parts would not give
    them."""
    ds = jaxcnn.data.load("mnist")
    x, y = jaxcnn.data.to_float(ds.x_train[:128]), ds.y_train[:128]
    fresh = lambda: train.create_train_state(CUSTOM[name](), x.shape[1:], "sgd", 0.05)  # noqa: E731 - steps donate their state
    strategy = train.choose_strategy("auto", 128, fresh())
    assert strategy.name == "stats-mesh" and strategy.place.size == min(4, jax.local_device_count())
    results = {}
    for label, s in {"mesh": strategy, "one": train.choose_strategy(None, 128, fresh())}.items():
        out, logs = train.run_epoch(s.put_state(fresh()), s, train.Data(x, y), np.arange(128), 128)
        results[label] = (jax.device_get(out.batch_stats), jax.device_get(out.params), logs["loss"])
    (stats, params, loss), (one_stats, one_params, one_loss) = results["mesh"], results["one"]
    start = jax.device_get(fresh().batch_stats)
    assert jax.tree.leaves(stats) and not np.allclose(jax.tree.leaves(stats)[0], jax.tree.leaves(start)[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats, one_stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, one_params)
    assert abs(loss - one_loss) < 1e-5
    # Four independent parts of 32, each normalised by its own statistics, move them elsewhere.
    single = train.choose_strategy(None, 32, fresh())
    parts = [jax.device_get(train.run_epoch(fresh(), single, train.Data(x[i:i + 32], y[i:i + 32]), np.arange(32), 32)[0].batch_stats)
             for i in range(0, 128, 32)]
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(jax.tree.leaves(parts[0]), jax.tree.leaves(one_stats)))


class ChunkedBN(nn.Module):
    """jaxcnn's layers, BatchNorm after a convolution whose output (86.5 kB an example) is chunked
    on CPU from 49 examples on (jaxcnn.layers.conv_chunks); ``tag`` only tells JAX's caches apart."""

    tag: int = 0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.BatchNorm()(layers.Conv2D(32, 3, activation="relu")(x), train)
        x = layers.Conv2D(16, 3, activation="relu")(layers.Dropout(0.2)(layers.MaxPool2D(2)(x), train=train))
        return layers.Dense(10)(x.mean(axis=(1, 2)))


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs 2 CPU devices (jaxcnn makes one per core)")
def test_chunked_convolutions_keep_the_whole_batch_step(monkeypatch):
    """With the library's chunking on (the suite turns it off, see conftest.py), a BatchNorm model
    trains the same step whole, in chunks on one device (256 examples: 8 chunks) and in chunks on
    each device of the 2-device stats-mesh (128 each: 4 chunks): the statistics stay the whole
    batch's, and every layer sees the same masks."""
    monkeypatch.setattr(layers, "CONV_CHUNK", 32)
    assert layers.conv_chunks((256, 28, 28, 1), (3, 3, 1, 32)) == 8
    assert layers.conv_chunks((256, 28, 28, 1), (3, 3, 1, 32), shards=2) == 4
    ds = jaxcnn.data.load("mnist")
    x, y = jaxcnn.data.to_float(ds.x_train[:256]) + 0.01, ds.y_train[:256]  # no exactly-zero pixels: see test_parallel
    fresh = lambda tag=0: train.create_train_state(ChunkedBN(tag), x.shape[1:], "sgd", 0.05, seed=3)  # noqa: E731
    mesh = train.StatsMesh(jax.local_devices()[:2], 256, fresh())
    one = train.choose_strategy(None, 256, fresh())
    results = {}
    for label, s, tag in (("mesh", mesh, 0), ("one", one, 0), ("whole", one, 1)):
        if label == "whole":
            monkeypatch.setattr(layers, "CONV_CHUNK", 0)
        out, logs = train.run_epoch(s.put_state(fresh(tag)), s, train.Data(x, y), np.arange(256), 256)
        results[label] = (jax.device_get(out.batch_stats), jax.device_get(out.params), logs["loss"])
    for label in ("mesh", "one"):
        stats, params, loss = results[label]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats, results["whole"][0])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, results["whole"][1])
        assert abs(loss - results["whole"][2]) < 1e-5, label


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs 2 CPU devices (jaxcnn makes one per core)")
@pytest.mark.parametrize("name", ["bn_dropout", "nnx_bn_dropout"])
def test_batchnorm_fit_on_the_cpu_mesh_equals_one_device(mnist, name):
    """Whole fits: batches of 64 run as 2 parts on the mesh, the last batch of 8 on one device;
    the dropout masks are the whole batch's, so the history is the one-device history."""
    x, y = mnist
    kw = dict(batch_size=64, epochs=3, validation_split=0.25)
    auto, one = _fit(CUSTOM[name](), x, y, devices="auto", **kw), _fit(CUSTOM[name](), x, y, devices=None, **kw)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(auto.history[k], one.history[k], rtol=2e-4, atol=1e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 jax.device_get(auto.state.batch_stats), jax.device_get(one.state.batch_stats))
    # fit returns the state on one device (on the mesh, every program would run once per device),
    # and evaluate's "auto" runs on the mesh as the validation does, with the same result.
    assert all(len(a.sharding.device_set) == 1 for a in jax.tree.leaves(auto.state.params))
    on_mesh, alone = jaxcnn.evaluate(auto.state, x, y, batch_size=64), jaxcnn.evaluate(auto.state, x, y, batch_size=64, devices=None)
    for k in ("loss", "accuracy"):
        np.testing.assert_allclose(on_mesh[k], alone[k], rtol=1e-5, err_msg=k)
    replicated = jaxcnn.train.placement(2).put_state(auto.state)
    np.testing.assert_allclose(jaxcnn.predict(replicated, x[:16]), jaxcnn.predict(auto.state, x[:16]), rtol=1e-5, atol=1e-6)
    # predict runs batches of 64 on the mesh (2 parts): the outputs of the one-device program
    want = np.asarray(jax.jit(jaxcnn.train.step.predict_outputs)(auto.state, x[:72]))
    np.testing.assert_allclose(jaxcnn.predict(replicated, x[:72], batch_size=64), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", jaxcnn.models.MODELS)
def test_every_strategy_trains_the_registry_models(name):
    """Every strategy on the MNIST models and on cifar_cnn4 (BatchNorm, dropout, L2). CNN 1 to 3
    are built of the same jaxcnn layers as those; they run the single and parts strategies."""
    strategies = STRATEGIES if name in ("mnist_cnn", "search_cnn", "cifar_cnn4") else {s: STRATEGIES[s] for s in ("single", "parts")}
    shape = jaxcnn.models.input_shape(name)
    rng = np.random.default_rng(0)
    x = rng.random((16, *shape), np.float32)
    y = rng.integers(0, 10, 16)
    kw = {"kernel_size": 3} if name == "search_cnn" else {}
    results = {s: jaxcnn.fit(jaxcnn.get_model(name, **kw), x, y, epochs=1, batch_size=8, verbose=0, optimizer="sgd", **a)
               for s, a in strategies.items()}
    for s, r in results.items():
        np.testing.assert_allclose(r.history["loss"], results["single"].history["loss"], rtol=2e-4, err_msg=s)
    assert np.isfinite(jaxcnn.evaluate(results["parts"].state, x, y)["loss"])


def test_softmax_outputs_are_never_softmaxed_twice(mnist):
    x, y = mnist
    state, history = _fit(Softmax(), x, y)
    assert state.loss.from_logits is False and state.outputs_are_probs
    out = jaxcnn.predict(state, x[:8], output="logits")  # the raw outputs: already probabilities
    np.testing.assert_allclose(jaxcnn.predict(state, x[:8], output="probs"), out, rtol=1e-6)
    # The loss is -log p of the softmax output (Keras's from_logits=False), not of softmax(p).
    p = np.clip(out / out.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)
    want = float(np.mean(-np.log(p[np.arange(8), y[:8]])))
    assert abs(jaxcnn.evaluate(state, x[:8], y[:8])["loss"] - want) < 1e-5
    with pytest.raises(ConfigError, match=r"outputs are probabilities \(a softmax output\) but the loss has from_logits=True"):
        _fit(Softmax(), x, y, loss="sparse_categorical_crossentropy", from_logits=True)
    with pytest.raises(ConfigError, match="outputs are logits .* from_logits=False"):
        _fit(DropNoBN(), x, y, from_logits=False)


def test_a_module_that_breaks_the_contract_gets_a_clear_error(mnist):
    x, y = mnist

    class TwoInputs(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    with pytest.raises(ConfigError, match=r"TwoInputs cannot be called as TwoInputs\(x\).*Bring your own model"):
        jaxcnn.fit(TwoInputs(), x, y, verbose=0)
    with pytest.raises(ConfigError, match=r"got the class DropNoBN, not a module; create one first, e.g. DropNoBN\(\)"):
        jaxcnn.fit(DropNoBN, x, y, verbose=0)
    with pytest.raises(ConfigError, match="expected a Flax module"):
        jaxcnn.fit(lambda x: x, x, y, verbose=0)


@pytest.mark.parametrize("name", ["dropout", "bn_dropout", "no_train_arg", "softmax", "nnx_bn_dropout", "flax_pool_bn", "nnx_pool"])
def test_export_and_reload_any_module(mnist, tmp_path, name):
    x, y = mnist
    model = CUSTOM[name]()
    state, _ = _fit(model, x, y, optimizer="adam", learning_rate=0.002)
    checkpoint.export(tmp_path, state)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["module"].startswith("test_engine:") and meta["optimizer"] == {"name": "adam", "learning_rate": 0.002}
    reloaded = checkpoint.load_state(tmp_path)
    np.testing.assert_allclose(jaxcnn.predict(reloaded, x[:8]), jaxcnn.predict(state, x[:8]), rtol=1e-5, atol=1e-6)
    assert reloaded.optimizer_spec == state.optimizer_spec and reloaded.loss == state.loss


def test_export_of_registry_models_records_the_name(tmp_path, mnist):
    x, y = mnist
    state, _ = _fit(jaxcnn.get_model("search_cnn", kernel_size=5, weight_decay=0.01), x, y, epochs=1)
    checkpoint.export(tmp_path / "a", state)
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    assert meta["model"] == "search_cnn" and meta["model_kwargs"] == {"kernel_size": 5, "weight_decay": 0.01}
    with pytest.raises(ConfigError, match="'my_cnn' is not a registered model"):
        checkpoint.export(tmp_path / "b", state, model_name="my_cnn")
    assert not (tmp_path / "b").exists()


def test_reload_of_a_module_that_cannot_be_imported_names_the_fix(tmp_path, mnist):
    x, y = mnist
    state, _ = _fit(DropNoBN(), x, y, epochs=1)
    checkpoint.export(tmp_path, state)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["module"] = "no_such_package.models:MyCNN"
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"exported from no_such_package.models:MyCNN, which cannot be imported here; .*load_state\(directory, model=MyCNN\(\.\.\.\)\)"):
        checkpoint.load_state(tmp_path)
    reloaded = checkpoint.load_state(tmp_path, model=DropNoBN())
    np.testing.assert_allclose(jaxcnn.predict(reloaded, x[:4]), jaxcnn.predict(state, x[:4]), rtol=1e-5)


def test_resume_belongs_to_fit_whatever_the_callback_order(mnist, tmp_path):
    """A run stopped after epoch 2 and resumed with fit(checkpoint_dir, resume=True) ends as one
    never interrupted: state, history and the callbacks' state (EarlyStopping first here)."""
    x, y = mnist
    cbs = lambda: [jaxcnn.EarlyStopping(patience=10), jaxcnn.LearningRateScheduler(lambda e, lr: lr * 0.9)]  # noqa: E731
    full = _fit(DropNoBN(), x, y, epochs=4, callbacks=cbs(), devices="auto")
    _fit(DropNoBN(), x, y, epochs=2, callbacks=cbs(), checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ConfigError, match="already holds checkpoints; pass resume=True"):
        _fit(DropNoBN(), x, y, epochs=4, callbacks=cbs(), checkpoint_dir=tmp_path / "ck")
    resumed = _fit(DropNoBN(), x, y, epochs=4, callbacks=cbs(), checkpoint_dir=tmp_path / "ck", resume=True)
    assert resumed.history.epoch == [0, 1, 2, 3]
    for k in ("loss", "val_loss", "learning_rate"):
        np.testing.assert_array_equal(resumed.history[k], full.history[k])
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(full.state.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="the training data differ from the run that wrote it"):
        _fit(DropNoBN(), x[::-1], y[::-1], epochs=5, callbacks=cbs(), checkpoint_dir=tmp_path / "ck", resume=True)
    with pytest.raises(ConfigError, match="batch_size=8 differs from 16"):
        _fit(DropNoBN(), x, y, epochs=5, batch_size=8, callbacks=cbs(), checkpoint_dir=tmp_path / "ck", resume=True)


@pytest.mark.parametrize("name, batch_size", [("nnx_dropout", 16), ("softmax", 16), ("nnx_bn_dropout", 64), ("flax_pool_bn", 64)])
def test_resume_through_background_checkpoints_for_nnx_and_softmax_models(mnist, tmp_path, name, batch_size):
    """fit's checkpoints are written in the background; resuming from them still ends as the run
    never interrupted, for an NNX module with dropout, a model with a softmax output, and an NNX
    module with BatchNorm and dropout whose batches of 64 run on the CPU mesh of parts."""
    x, y = mnist
    full = _fit(CUSTOM[name](), x, y, epochs=3, batch_size=batch_size)
    _fit(CUSTOM[name](), x, y, epochs=1, batch_size=batch_size, checkpoint_dir=tmp_path / "ck")
    assert checkpoint.TrainCheckpoints(tmp_path / "ck").epochs == [1]  # on disk once fit returned
    resumed = _fit(CUSTOM[name](), x, y, epochs=3, batch_size=batch_size, checkpoint_dir=tmp_path / "ck", resume=True)
    assert resumed.history.epoch == [0, 1, 2]
    for k in ("loss", "val_loss"):
        np.testing.assert_array_equal(resumed.history[k], full.history[k])
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(full.state.params)):
        np.testing.assert_array_equal(a, b)


def test_training_error_declares_its_state_and_history(mnist):
    x, y = mnist
    with pytest.raises(jaxcnn.errors.TrainingError) as info:
        _fit(DropNoBN(), x, y, learning_rate=1e30, epochs=3)
    assert isinstance(info.value.state, train.TrainState)
    assert isinstance(info.value.history, train.History)
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(info.value.state.params))


def test_importing_jaxcnn_registers_no_compile_listener():
    code = "import jax._src.monitoring as m, jaxcnn; print(len(m.get_event_duration_listeners()))"
    env = {**os.environ, "JAXCNN_CPU_DEVICES": "1"}
    base = "import jax._src.monitoring as m; print(len(m.get_event_duration_listeners()))"
    run = lambda c: subprocess.run([sys.executable, "-c", c], capture_output=True, text=True, env=env, check=True).stdout  # noqa: E731
    assert run(code) == run(base)


_SAME_ON_ANY_MACHINE = r"""
import json, sys
import flax.linen as nn
import jaxcnn
from jaxcnn import layers
sys.path.insert(0, sys.argv[1])
from test_engine import DropNoBN, JaxcnnDrop, BNDrop, BNOnly, NoTrain, FlaxPoolBN, NNXPool
from flax import nnx
import jax
jaxcnn.compilation_cache(sys.argv[2])  # the later runs load the first's programs
ds = jaxcnn.data.load("mnist")
x, y = jaxcnn.data.to_float(ds.x_train[:320]), ds.y_train[:320]
out = {"devices": jax.local_device_count(), "all": jaxcnn.train.placement("all").size}
models = [("dropout", DropNoBN), ("jaxcnn_dropout", JaxcnnDrop), ("bn_dropout", BNDrop), ("bn", BNOnly), ("neither", NoTrain),
          ("flax_pool_bn", FlaxPoolBN), ("nnx_pool", lambda: NNXPool(rngs=nnx.Rngs(0)))]
for name, cls in models:
    h = jaxcnn.fit(cls(), x, y, epochs=2, batch_size=128, validation_split=0.2, verbose=0, seed=7).history  # 2 batches: 4 parts, 2 parts
    out[name] = {k: h[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
print(json.dumps(out))
"""


def test_same_seed_same_history_on_1_and_4_cpu_devices(tmp_path):
    """Batches are cut by their size alone, so 1 or 4 CPU devices give one history (the devices
    take turns at the parts; device 0 sums the gradients in the same order). The default split,
    one device per core, is compared with one device by the in-process tests above."""
    here = os.path.dirname(__file__)
    runs = {}
    for n in (1, 4):
        # Tiny models: compiling is most of the time, so compile fast (tests/conftest.py).
        env = {**os.environ, "JAXCNN_CPU_DEVICES": str(n), "XLA_FLAGS": "--xla_backend_optimization_level=0"}
        proc = subprocess.run([sys.executable, "-c", _SAME_ON_ANY_MACHINE, here, str(tmp_path / "xla")],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert runs[n]["devices"] == n
        # "all" on a CPU that jaxcnn split (JAXCNN_CPU_DEVICES) is one device per core, at most 8.
        assert runs[n]["all"] == min(n, len(os.sched_getaffinity(0)), 8)
    assert any((tmp_path / "xla").iterdir())  # jaxcnn.compilation_cache kept the programs
    for n in (4,):
        for model in ("dropout", "jaxcnn_dropout", "bn_dropout", "bn", "neither", "flax_pool_bn", "nnx_pool"):
            for k, v in runs[1][model].items():
                np.testing.assert_allclose(runs[n][model][k], v, rtol=1e-5, atol=1e-6, err_msg=f"{n} devices, {model}, {k}")


def test_loss_weight_and_scheduler_errors_say_what_to_do(mnist):
    import optax

    from jaxcnn import optim

    x, y = mnist
    with pytest.raises(ConfigError, match="unknown loss 'sparse_crossentropy'; did you mean 'sparse_categorical_crossentropy'"):
        _fit(DropNoBN(), x, y, loss="sparse_crossentropy")
    with pytest.raises(ConfigError, match="class_weight has class 12; classes are 0..9"):
        _fit(DropNoBN(), x, y, class_weight={12: 1.0})
    for bad in (-1.0, float("nan"), "x"):  # as sample_weight's: a negative weight trained, NaN failed after compiling
        with pytest.raises(ConfigError, match=r"class_weight\[0\] is .*; class weights must be finite numbers >= 0"):
            _fit(DropNoBN(), x, y, class_weight={0: bad})
    with pytest.raises(jaxcnn.errors.ShapeError, match=r"sample_weight has shape \(10,\); it needs one weight per example, \(96,\)"):
        _fit(DropNoBN(), x, y, sample_weight=np.ones(10))
    scheduler = [jaxcnn.LearningRateScheduler(lambda epoch: 0.01)]
    with pytest.raises(ConfigError, match="follows a schedule, which would override a rate set by a callback"):
        jaxcnn.fit(DropNoBN(), x, y, verbose=0, callbacks=scheduler, optimizer="adam",
                   learning_rate=optim.exponential_decay(0.01, 10, 0.9))
    with pytest.raises(ConfigError, match=r"wrap yours: optax.inject_hyperparams\(optax.adam\)"):
        jaxcnn.fit(DropNoBN(), x, y, verbose=0, callbacks=scheduler, optimizer=optax.adam(1e-3))
    # A one-argument schedule works, as in Keras.
    _, history = jaxcnn.fit(DropNoBN(), x, y, epochs=2, verbose=0, callbacks=[jaxcnn.LearningRateScheduler(lambda e: 0.01 / (e + 1))])
    np.testing.assert_allclose(history["learning_rate"], [0.01, 0.005], rtol=1e-6)


def test_progress_output_reads_well(mnist, capsys):
    x, y = mnist
    jaxcnn.fit(NoTrain(), x[:40], y[:40], epochs=1, batch_size=16, validation_split=0.2, verbose=1)
    out, err = capsys.readouterr()
    # The real counts after the split, singular and plural right, and the strategy.
    on = f" on {jaxcnn.train.cpu_workers()} devices" if jaxcnn.train.cpu_workers() > 1 else ""
    assert f"Training on 32 examples, validating on 8 examples: 1 epoch of 2 steps (batch 16, parts strategy{on})" in out
    assert "Epoch 1/1 - " in out and "val_accuracy" in out and "left" not in out  # no ETA after the last epoch
    jaxcnn.fit(NoTrain(), x[:40], y[:40], epochs=3, batch_size=40, verbose=2)
    out, _ = capsys.readouterr()
    assert "Training on 40 examples: 3 epochs of 1 step (batch 40" in out
    assert "Epoch 1/3" in out and "s left" in out  # a run-level ETA
    jaxcnn.fit(NoTrain(), x[:96], y[:96], epochs=1, batch_size=4, verbose=1)
    _, err = capsys.readouterr()
    assert "examples/s" in err and "ex_s" not in err
