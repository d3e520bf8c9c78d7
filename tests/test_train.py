"""Training: Keras-parity optimizer and callbacks, partial batches, no recompilation, overfitting."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn import optim, train
from jaxcnn.callbacks import Callback, EarlyStopping, LearningRateScheduler, keep_then_decay
from jaxcnn.errors import ConfigError, ShapeError


@pytest.fixture(scope="module")
def mnist_small():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:256]), ds.y_train[:256]


def tiny_model():
    return jaxcnn.get_model("mnist_cnn", filters=4, dense_units=8)


# -- optimizers -------------------------------------------------------------------------------


def test_rmsprop_matches_keras_update_by_hand():
    tx = optim.get_optimizer("rmsprop")  # lr 0.001, rho 0.9, eps 1e-7 inside the sqrt (Keras 3)
    w = jnp.array([1.0, -2.0])
    state = tx.init(w)
    v = np.zeros(2)
    w_ref = np.array([1.0, -2.0])
    for g in ([0.5, -1.0], [0.1, 3.0]):
        g = np.array(g)
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, w)
        w = optax.apply_updates(w, updates)
        v = 0.9 * v + 0.1 * g**2
        w_ref = w_ref - 0.001 * g / np.sqrt(v + 1e-7)
    np.testing.assert_allclose(w, w_ref, rtol=1e-6)


def test_learning_rate_must_be_positive():
    with pytest.raises(ConfigError, match="learning rate must be a finite number >= 0, got -0.1"):
        optim.get_optimizer("rmsprop", -0.1)
    with pytest.raises(ConfigError, match="unknown optimizer 'adagrad'"):
        optim.get_optimizer("adagrad")


# -- EarlyStopping against hand-made Keras cases -------------------------------------------------


class _Loop:
    def __init__(self):
        self.stop_training = False
        self.state = None


def _run_early_stopping(cb, values, key="val_loss"):
    loop = _Loop()
    cb.on_train_begin(loop)
    for epoch, v in enumerate(values):
        cb.on_epoch_end(epoch, {key: v}, loop)
        if loop.stop_training:
            return epoch
    return None


@pytest.mark.parametrize(
    "kwargs, values, stopped, best_epoch",
    [
        # The report's run: best at epoch 4 (1-based), patience 5 -> stops after epoch 9.
        ({"patience": 5}, [0.20, 0.10, 0.07, 0.05, 0.06, 0.055, 0.07, 0.08, 0.09, 0.1], 8, 3),
        ({"patience": 0}, [1.0, 2.0, 0.5], 1, 0),
        ({"patience": 2}, [1.0, 0.9, 0.8, 0.7], None, 3),
        # min_delta: 0.95 is not 0.1 better than 1.0, so it does not count.
        ({"patience": 1, "min_delta": 0.1}, [1.0, 0.95, 0.5], 1, 0),
        # never stops on the first epoch, even with patience 0
        ({"patience": 0}, [1.0], None, 0),
    ],
)
def test_early_stopping_keras_semantics(kwargs, values, stopped, best_epoch):
    cb = EarlyStopping(monitor="val_loss", **kwargs)
    assert _run_early_stopping(cb, values) == stopped
    assert cb.best_epoch == best_epoch


def test_early_stopping_max_mode_auto_for_accuracy():
    cb = EarlyStopping(monitor="val_accuracy", patience=1)
    assert cb.mode == "max"
    assert _run_early_stopping(cb, [0.5, 0.6, 0.55, 0.7], "val_accuracy") == 2


def test_early_stopping_baseline_keeps_counting():
    # Improvements that miss the baseline do not reset wait (Keras): the first non-improving
    # epoch then finds wait = 3 >= patience.
    cb = EarlyStopping(patience=2, baseline=0.5)
    assert _run_early_stopping(cb, [0.9, 0.8, 0.7]) is None  # improving epochs never stop
    cb = EarlyStopping(patience=2, baseline=0.5)
    assert _run_early_stopping(cb, [0.9, 0.8, 0.85]) == 2
    cb = EarlyStopping(patience=2)
    assert _run_early_stopping(cb, [0.9, 0.8, 0.85]) is None  # without a baseline wait was reset


def test_restore_best_weights_in_fit(mnist_small):
    x, y = mnist_small
    seen = []

    class Record(Callback):
        def on_epoch_end(self, epoch, logs, loop):
            seen.append(jax.device_get(loop.state.params))

    # Force val_loss to get worse after epoch 0 with a huge learning rate on epoch 1+.
    sched = LearningRateScheduler(lambda e, lr: 0.001 if e == 0 else 0.5)
    es = EarlyStopping(patience=1, restore_best_weights=True)
    state, hist = jaxcnn.fit(
        tiny_model(), x, y, epochs=4, batch_size=64, validation_split=0.25, verbose=0, callbacks=[sched, Record(), es]
    )
    best = hist.best_epoch("val_loss")
    assert es.best_epoch == best
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), seen[best])


# -- the training loop -------------------------------------------------------------------------


def test_partial_last_batch_is_trained_and_history_complete(mnist_small):
    x, y = mnist_small
    state, hist = jaxcnn.fit(tiny_model(), x[:100], y[:100], epochs=2, batch_size=32, verbose=0, optimizer="sgd")
    assert int(state.step) == 2 * 4  # 32 + 32 + 32 + 4 per epoch
    assert set(hist.history) >= {"loss", "accuracy", "learning_rate", "time_s", "examples_per_s"}
    assert hist.epoch == [0, 1]


def test_validation_split_takes_last_fraction(mnist_small):
    x, y = mnist_small
    _, hist = jaxcnn.fit(tiny_model(), x[:100], y[:100], epochs=1, batch_size=20, validation_split=0.2, verbose=0)
    assert hist.params["samples"] == 80
    assert {k: hist.params[k] for k in ("verbose", "epochs", "steps")} == {"verbose": 0, "epochs": 1, "steps": 4}  # Keras's keys
    assert "val_loss" in hist.history and "val_accuracy" in hist.history


def test_no_recompilation_after_first_epoch_and_lr_changes_in_place(mnist_small):
    x, y = mnist_small
    sizes = []

    class CacheSize(Callback):
        def on_epoch_end(self, epoch, logs, loop):
            sizes.append(train.compile_count())

    sched = LearningRateScheduler(keep_then_decay(1, 0.1))
    _, hist = jaxcnn.fit(
        tiny_model(), x[:200], y[:200], epochs=4, batch_size=48, validation_split=0.1, verbose=0, callbacks=[sched, CacheSize()]
    )
    assert sizes[1] == sizes[2] == sizes[3], sizes
    np.testing.assert_allclose(hist["learning_rate"], [0.001, 0.001 * math.exp(-0.1), 0.001 * math.exp(-0.2), 0.001 * math.exp(-0.3)], rtol=1e-6)


def test_a_start_of_training_runs_few_programs_and_the_same_keys(mnist_small):
    # Each program a start runs is compiled, or loaded from the persistent cache: the state is
    # built in a few whole programs, not one per leaf shape (there were 32 for mnist_cnn).
    from jaxcnn.train import state as state_mod
    from jaxcnn.train.model import adapt

    x, y = mnist_small
    model = jaxcnn.get_model("mnist_cnn", filters=5, dense_units=7)  # shapes no other test compiles
    before = train.compile_count()
    jaxcnn.fit(model, x[:64], y[:64], epochs=1, batch_size=32, validation_data=(x[64:96], y[64:96]), verbose=0, devices=None)
    # the start (seed keys, init, output probe and softmax check: one program), the optimizer
    # state, the train step and the evaluation (there were 32, then 12, then 7)
    assert train.compile_count() - before <= 4
    for impl in ("threefry2x32", "rbg"):  # one program gives the keys of the eager split
        with jax.default_prng_impl(impl):
            for seed in (0, 1, 2**31 - 1, 2**31, 2**32 - 1):
                eager, got = jax.random.split(jax.random.key(seed)), state_mod._seed_keys(seed)
                for k in range(2):
                    assert jax.random.key_impl(got[k]) == jax.random.key_impl(eager[k])
                    np.testing.assert_array_equal(jax.random.key_data(got[k]), jax.random.key_data(eager[k]))
                if seed in (1, 2**32 - 1):  # a linen module's start program: the same keys and variables
                    variables, dropout_key, _ = state_mod._start(adapt(model), (28, 28, 1), seed)
                    assert jax.random.key_impl(dropout_key) == jax.random.key_impl(eager[1])
                    np.testing.assert_array_equal(jax.random.key_data(dropout_key), jax.random.key_data(eager[1]))
                    want = state_mod._init_variables(adapt(model), (28, 28, 1), *eager)
                    jax.tree.map(np.testing.assert_array_equal, variables, want)


def test_compile_count_counts_programs_loaded_from_the_persistent_cache():
    """The tests share a persistent cache (tests/conftest.py): a program an earlier test left
    there is loaded, not compiled, and still counts, so a recompilation cannot hide behind it."""
    assert jax.config.jax_compilation_cache_dir  # tests/conftest.py turns the cache on
    x = jnp.arange(11.0)
    before = train.compile_count()
    jax.jit(lambda v: jnp.sin(v) * 3.25 + 1.5)(x).block_until_ready()  # compiled, then written to the cache
    jax.jit(lambda v: jnp.sin(v) * 3.25 + 1.5)(x).block_until_ready()  # another function, the same program: loaded
    assert train.compile_count() - before == 2


def test_memo_if_hashable_caches_hashable_calls_only_and_never_retries():
    from jaxcnn._memo import memo_if_hashable

    calls = []

    @memo_if_hashable(maxsize=4)
    def f(x):
        calls.append(x)
        if x == "bad":
            raise TypeError("the function's own error")
        return len(calls)

    assert f(1) == f(1) == 1 and calls == [1]  # cached
    assert f([2]) == 2 and f([2]) == 3  # unhashable: runs every time, uncached
    with pytest.raises(TypeError, match="the function's own error"):
        f("bad")
    assert calls == [1, [2], [2], "bad"]  # the failing call ran once


def test_the_initialisation_compiled_quickly_gives_the_default_levels_parameters():
    """Initialisation compiles at LLVM level 1 on CPU (it runs once; level 2 took three times as
    long to compile): the parameters are those of the default level's program."""
    import flax.linen as nn

    from jaxcnn.train import state as state_mod
    from jaxcnn.train.model import adapt

    class Plain(nn.Module):  # flax's own initialisers (truncated normal), BatchNorm, no jaxcnn layers
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.BatchNorm(use_running_average=not train)(nn.relu(nn.Conv(6, (3, 3), strides=2)(x)))
            return nn.Dense(10)(x.reshape((x.shape[0], -1)))

    default = jax.jit(state_mod._init_jitted_impl, static_argnums=(0, 1),
                      compiler_options={"xla_backend_optimization_level": 2})
    keys = state_mod._seed_keys(5)
    for model, shape in ((jaxcnn.get_model("cifar_cnn4"), (32, 32, 3)), (Plain(), (28, 28, 1))):
        quick = state_mod._start(adapt(model), shape, 5)[0]  # what create_train_state runs
        want = default(adapt(model), shape, *keys)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0), quick, want)
    assert state_mod.ONCE_OPTIONS == {"xla_backend_optimization_level": 1}


class _NNXTiny:  # built lazily: flax.nnx is imported by the test that uses it
    @staticmethod
    def make():
        from flax import nnx

        class NNXTiny(nnx.Module):
            def __init__(self, *, rngs):
                self.conv = nnx.Conv(1, 3, (3, 3), strides=2, rngs=rngs)
                self.drop = nnx.Dropout(0.3, rngs=rngs)
                self.out = nnx.Linear(3 * 14 * 14, 10, rngs=rngs)

            def __call__(self, x):
                return self.out(self.drop(nnx.relu(self.conv(x))).reshape(x.shape[0], -1))

        return NNXTiny


def test_a_second_fit_of_an_equal_model_compiles_nothing(mnist_small):
    """A notebook's second fit, or a search trial with the same model and optimizer, reuses the
    first fit's programs: a new module equal to the first and the optimizer named again give the
    training state the same jit signature (the old code compiled 12 and 20 programs again)."""
    x, y = mnist_small
    nnx_tiny = _NNXTiny.make()
    from flax import nnx

    for make in (lambda: jaxcnn.get_model("mnist_cnn", filters=4, dense_units=9), lambda: nnx_tiny(rngs=nnx.Rngs(0))):
        runs = []
        for _ in range(2):
            before = train.compile_count()
            r = jaxcnn.fit(make(), x[:96], y[:96], epochs=1, batch_size=32, validation_split=0.25, verbose=0,
                           optimizer="adam", learning_rate=2e-3)
            runs.append((train.compile_count() - before, r.history))
        assert runs[0][0] > 0 and runs[1][0] == 0, [n for n, _ in runs]
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert runs[0][1].history[k] == runs[1][1].history[k], k
    # One transformation per distinct arguments; other arguments, or 1 against 1.0, build another.
    assert optim.get_optimizer("sgd", 0.1, momentum=0.9) is optim.get_optimizer("SGD", 0.1, momentum=0.9)
    assert optim.get_optimizer("sgd", 0.1, momentum=0.9) is not optim.get_optimizer("sgd", 0.1, momentum=0.8)
    assert optim.get_optimizer("sgd", 0.1, nesterov=True) is not optim.get_optimizer("sgd", 0.1, nesterov=1)


def test_one_batch_overfit(mnist_small):
    x, y = mnist_small
    state, hist = jaxcnn.fit(
        jaxcnn.get_model("mnist_cnn"), x[:32], y[:32], epochs=40, batch_size=32, verbose=0, optimizer="adam"
    )
    assert hist["loss"][-1] < 0.05
    assert jaxcnn.evaluate(state, x[:32], y[:32])["accuracy"] == 1.0


def test_same_seed_same_history_and_caller_state_survives(mnist_small):
    x, y = mnist_small
    state0 = train.create_train_state(tiny_model(), (28, 28, 1), seed=3)
    a = jaxcnn.fit(state0, x, y, epochs=2, batch_size=64, validation_split=0.25, verbose=0, seed=3)
    b = jaxcnn.fit(state0, x, y, epochs=2, batch_size=64, validation_split=0.25, verbose=0, seed=3)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert a.history[k] == b.history[k]
    # donation inside fit must not invalidate the caller's state
    assert np.isfinite(np.asarray(jax.tree.leaves(state0.params)[0])).all()


def test_predict_outputs(mnist_small):
    x, y = mnist_small
    state = train.create_train_state(tiny_model(), (28, 28, 1))
    logits = jaxcnn.predict(state, x[:10], batch_size=4)
    assert logits.shape == (10, 10)
    probs = jaxcnn.predict(state, x[:10], output="probs")
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    np.testing.assert_array_equal(jaxcnn.predict(state, x[:10], output="classes"), logits.argmax(-1))


def test_nan_loss_stops_with_epoch_and_step(mnist_small):
    x, y = mnist_small
    bad = x.copy()
    bad[70] = np.finfo(np.float32).max  # batch 2 of epoch 1 (unshuffled): finite, so past the input checks; overflows inside
    with pytest.warns(UserWarning, match="to_float"), pytest.raises(jaxcnn.errors.TrainingError, match=r"NaN or infinite at epoch 1, step 2") as info:
        jaxcnn.fit(tiny_model(), bad, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    state = info.value.state
    assert int(state.step) == 1  # the last good step
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))


def test_bad_inputs_rejected_before_compiling(mnist_small):
    x, y = mnist_small
    with pytest.raises(ShapeError, match=r"add the channel axis with x\[\.\.\., None\]"):
        jaxcnn.fit(tiny_model(), x[..., 0], y, verbose=0)
    with pytest.raises(ShapeError, match="dtype uint8"):
        jaxcnn.fit(tiny_model(), (x * 255).astype(np.uint8), y, verbose=0)
    with pytest.raises(ShapeError, match="label 10 at index 0, outside 0..9"):
        jaxcnn.fit(tiny_model(), x[:4], np.array([10, 1, 2, 3]), verbose=0)
    with pytest.raises(ConfigError, match="epochs must be an integer of at least 0, got -1"):
        jaxcnn.fit(tiny_model(), x, y, epochs=-1, verbose=0)


def test_batch_larger_than_the_data_trains_one_batch_as_keras(mnist_small):
    x, y = mnist_small
    state, history = jaxcnn.fit(tiny_model(), x, y, batch_size=512, verbose=0, devices=None)
    assert int(state.step) == 1  # Keras: one step of all 256 examples
    assert history.params["batch_size"] == 256
