"""Augmentation layers: each against a NumPy reference (and Keras's own layer) for the same random
draws, identity outside training, the dropout RNG rule, and the Augmented wrapper in a real fit."""

from __future__ import annotations

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import augment as A
from jaxcnn.errors import ConfigError, ShapeError

# -- a NumPy reference: bilinear sampling with scipy/Keras fill modes, one pixel at a time -------


def _fold(i: int, n: int, mode: str) -> int | None:
    """Index i of an axis of size n under fill ``mode``; None: outside ("constant")."""
    if 0 <= i < n:
        return i
    if mode == "constant":
        return None
    if mode == "nearest":
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    period = i % (2 * n)  # reflect: d c b a | a b c d | d c b a
    return period if period < n else 2 * n - 1 - period


def np_sample(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str, cval: float) -> np.ndarray:
    h, w, c = img.shape
    out = np.zeros((h, w, c), np.float64)
    for r in range(h):
        for q in range(w):
            y, x = rows[r, q], cols[r, q]
            y0, x0 = math.floor(y), math.floor(x)
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    fy, fx = _fold(yy, h, mode), _fold(xx, w, mode)
                    value = cval if fy is None or fx is None else img[fy, fx]
                    out[r, q] += wy * wx * np.asarray(value, np.float64)
    return out


def np_translate(x, dy, dx, mode, cval=0.0):
    h, w = x.shape[1:3]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([np_sample(img, rows - a, cols - b, mode, cval) for img, a, b in zip(x, dy, dx)])


def np_rotate(x, angles, mode, cval=0.0):
    h, w = x.shape[1:3]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = []
    for img, a in zip(x, angles):
        c, s = math.cos(a), math.sin(a)
        out.append(np_sample(img, cy + c * (rows - cy) + s * (cols - cx), cx - s * (rows - cy) + c * (cols - cx), mode, cval))
    return np.stack(out)


@pytest.fixture(scope="module")
def images():
    # Small odd-sized RGB images, values that make every pixel distinguishable.
    return np.random.default_rng(0).random((5, 7, 9, 3)).astype(np.float32)


def run_layer(layer, x, key=0):
    """(output, draws) of ``layer`` in training, with the draws it recorded."""
    out, st = layer.apply({}, jnp.asarray(x), train=True, rngs={"dropout": jax.random.key(key)}, mutable=["intermediates"])
    return np.asarray(out), jax.device_get(st["intermediates"]["draws"][0])


# -- each layer against the reference ---------------------------------------------------------


@pytest.mark.parametrize("mode", A.FLIP_MODES)
def test_random_flip_matches_numpy(images, mode):
    out, draws = run_layer(A.RandomFlip(mode), images, key=3)
    expected = images.copy()
    for i in range(len(images)):
        if draws.get("horizontal", np.zeros(len(images), bool))[i]:
            expected[i] = expected[i][:, ::-1]
        if draws.get("vertical", np.zeros(len(images), bool))[i]:
            expected[i] = expected[i][::-1]
    np.testing.assert_array_equal(out, expected)
    assert set(draws) == {"horizontal": {"horizontal"}, "vertical": {"vertical"}}.get(mode, {"horizontal", "vertical"})
    # Over many draws both outcomes occur on each axis, about half the time each.
    _, many = run_layer(A.RandomFlip(mode), np.zeros((400, 2, 2, 1), np.float32), key=4)
    for flips in many.values():
        assert 150 < int(np.sum(flips)) < 250


@pytest.mark.parametrize("fill_mode", A.FILL_MODES)
def test_random_translation_matches_numpy(images, fill_mode):
    layer = A.RandomTranslation((-0.4, 0.3), 0.5, fill_mode=fill_mode, fill_value=0.25)
    out, draws = run_layer(layer, images, key=1)
    h, w = images.shape[1:3]
    assert np.all(draws["dy"] >= -0.4 * h) and np.all(draws["dy"] <= 0.3 * h)
    assert np.all(np.abs(draws["dx"]) <= 0.5 * w)
    assert len(np.unique(draws["dx"])) == len(images)  # one draw per image
    np.testing.assert_allclose(out, np_translate(images, draws["dy"], draws["dx"], fill_mode, 0.25), atol=1e-5)


@pytest.mark.parametrize("fill_mode", ["reflect", "constant"])
def test_random_rotation_matches_numpy(images, fill_mode):
    out, draws = run_layer(A.RandomRotation(0.2, fill_mode=fill_mode), images, key=2)
    assert np.all(np.abs(draws["angle"]) <= 0.2 * 2 * math.pi)
    np.testing.assert_allclose(out, np_rotate(images, draws["angle"], fill_mode), atol=1e-5)


def test_whole_pixel_shift_and_quarter_turn_move_pixels_exactly():
    # Independent of the reference's arithmetic: a shift by whole pixels moves the image, a
    # quarter turn of a square image is np.rot90 (counter-clockwise, as Keras).
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
    shifted = np.asarray(A.translate(jnp.asarray(x), jnp.array([1.0, 0.0]), jnp.array([0.0, -2.0]), fill_mode="constant"))
    np.testing.assert_array_equal(shifted[0, 1:], x[0, :-1])
    np.testing.assert_array_equal(shifted[0, 0], 0)
    np.testing.assert_array_equal(shifted[1, :, :2], x[1, :, 2:])
    turned = np.asarray(A.rotate(jnp.asarray(x), jnp.array([math.pi / 2, -math.pi / 2])))
    np.testing.assert_allclose(turned[0, ..., 0], np.rot90(x[0, ..., 0], 1), atol=1e-4)
    np.testing.assert_allclose(turned[1, ..., 0], np.rot90(x[1, ..., 0], -1), atol=1e-4)


def test_same_transforms_as_keras_layers(images):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    dy, dx = np.array([1.3, -2.5, 0.0, 4.2, 0.5], np.float32), np.array([-0.7, 3.0, 2.2, -5.5, 1.0], np.float32)
    angles = np.array([0.3, -1.0, 2.0, 0.05, 3.0], np.float32)
    for mode in A.FILL_MODES:
        kt = keras.layers.RandomTranslation(0.5, 0.5, fill_mode=mode, fill_value=0.3)
        theirs = kt.transform_images(images, {"translations": np.stack([dx, dy], 1), "input_shape": images.shape}, training=True)
        ours = A.translate(jnp.asarray(images), jnp.asarray(dy), jnp.asarray(dx), fill_mode=mode, fill_value=0.3)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)
        kr = keras.layers.RandomRotation(0.5, fill_mode=mode, fill_value=0.3)
        z, one = np.zeros(5, np.float32), np.ones(5, np.float32)
        matrix = kr._compute_affine_matrix(
            center_x=0.5, center_y=0.5, angle=jnp.asarray(np.degrees(angles)), translate_x=z, translate_y=z,
            scale=one, shear_x=z, shear_y=z, height=images.shape[1], width=images.shape[2],
        )
        theirs = kr.transform_images(images, {"rotation_matrix": matrix}, training=True)
        ours = A.rotate(jnp.asarray(images), jnp.asarray(angles), fill_mode=mode, fill_value=0.3)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)


# -- evaluation, randomness, errors -----------------------------------------------------------


@pytest.mark.parametrize("layer", [A.RandomFlip(), A.RandomTranslation(0.2, 0.2), A.RandomRotation(0.25)])
def test_identity_outside_training_and_draws_follow_the_key(images, layer):
    x = jnp.asarray(images)
    np.testing.assert_array_equal(np.asarray(layer.apply({}, x, train=False)), images)
    np.testing.assert_array_equal(np.asarray(layer.apply({}, x)), images)  # train defaults to False
    a, _ = run_layer(layer, images, key=7)
    b, _ = run_layer(layer, images, key=7)
    c, _ = run_layer(layer, images, key=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, images)


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="RandomFlip mode"):
        A.RandomFlip("diagonal")
    with pytest.raises(ConfigError, match="within \\[-1, 1\\]"):
        A.RandomTranslation(1.5, 0.1)
    with pytest.raises(ConfigError, match="fill_mode"):
        A.RandomRotation(0.1, fill_mode="mirror")
    with pytest.raises(ShapeError, match="batch of images"):
        A.RandomFlip().apply({}, jnp.zeros((4, 4, 1)), train=True, rngs={"dropout": jax.random.key(0)})


# -- the Augmented wrapper ----------------------------------------------------------------------


class DropoutNet(nn.Module):
    """A user's model: dropout, no BatchNorm."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
        return nn.Dense(10)(x.reshape(len(x), -1))


class NoTrainArg(nn.Module):
    """A user's model whose __call__ has no train argument."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(len(x), -1))


def test_augmented_keeps_the_models_parameters_and_summary():
    base = jaxcnn.get_model("mnist_cnn", filters=4, dense_units=8)
    model = A.Augmented(base, (A.RandomFlip("horizontal"), A.RandomTranslation(0.1, 0.1)))
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    x = jnp.zeros((1, 28, 28, 1))
    shapes = lambda v: jax.tree.map(jnp.shape, v)  # noqa: E731
    assert shapes(jax.eval_shape(model.init, rngs, x)) == shapes(jax.eval_shape(base.init, rngs, x))
    text, bare = jaxcnn.summary(model, (28, 28, 1)), jaxcnn.summary(base, (28, 28, 1))
    assert "random_flip (RandomFlip)" in text and "random_translation (RandomTranslation)" in text
    total = [line for line in bare.splitlines() if line.startswith("Total params")]
    assert total and total[0] in text  # the bare model's count
    # Duplicate layer kinds get Keras-style suffixes.
    two = A.Augmented(base, (A.RandomFlip("horizontal"), A.RandomFlip("vertical")))
    assert "random_flip_1 (RandomFlip)" in jaxcnn.summary(two, (28, 28, 1))
    # A model without a train argument still works (train goes to the layers only).
    no_train = A.Augmented(NoTrainArg(), (A.RandomFlip(),))
    v = no_train.init(rngs, x)
    assert no_train.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)}).shape == (1, 10)


def test_a_dropout_model_behind_the_layers_is_untouched_in_evaluation(images):
    # A user's model with dropout and no BatchNorm; a real fit with augmentation is the CIFAR-10
    # experiment's test below (its evaluation checked against the exported bare model).
    base = DropoutNet()
    model = A.Augmented(base, (A.RandomTranslation(0.2, 0.2), A.RandomRotation(0.05)))
    x = jnp.asarray(images[..., :1])
    variables = base.init({"params": jax.random.key(0)}, x)
    np.testing.assert_array_equal(np.asarray(model.apply(variables, x)), np.asarray(base.apply(variables, x)))
    rngs = {"dropout": jax.random.key(3)}
    trained = np.asarray(model.apply(variables, x, train=True, rngs=rngs))
    assert not np.allclose(trained, np.asarray(base.apply(variables, x, train=True, rngs=rngs)))


class _Training(nn.Module):
    @nn.compact
    def __call__(self, x, training: bool = False):
        return nn.Dense(3)(x.reshape(x.shape[0], -1)) + (1.0 if training else 0.0)


class _Deterministic(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return nn.Dense(3)(x.reshape(x.shape[0], -1)) + (0.0 if deterministic else 1.0)


@pytest.mark.parametrize("model", [_Training(), _Deterministic()], ids=["training", "deterministic"])
def test_augmented_sets_the_models_own_mode_flag_as_fit_does(model):
    # Before: only a flag named train reached the model; `training` and `deterministic` kept
    # their defaults inside Augmented, so BatchNorm and Dropout never trained (silently).
    x = jnp.ones((2, 4, 4, 1))
    wrapped = A.Augmented(model, layers=(A.RandomFlip("horizontal"),))
    variables = wrapped.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    rngs = {"dropout": jax.random.key(2)}
    on, off = (wrapped.apply(variables, x, train=t, rngs=rngs) for t in (True, False))
    np.testing.assert_allclose(on - off, 1.0, rtol=1e-6)


def test_cifar10_experiment_with_augment_and_tensorboard(tmp_path, isolated_data, monkeypatch):
    """``python -m experiments.cifar10 --augment --tensorboard DIR`` on a tiny CIFAR-10 in the
    official binary format (random pixels): the summary lists the layers, the export reloads as
    the bare CNN, TensorBoard's reader finds the epoch scalars, and the figures are written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from experiments import cifar10
    from jaxcnn.data import cifar10 as cifar_data

    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    monkeypatch.setattr(cifar_data, "RECORDS", {n: 20 for n in names})
    monkeypatch.setattr(cifar_data, "ARCHIVE_SHA256", None)
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name in names:
        records = np.concatenate([rng.integers(0, 10, (20, 1)), rng.integers(0, 256, (20, 3 * 32 * 32))], axis=1)
        (folder / name).write_bytes(records.astype(np.uint8).tobytes())
    out, tb = tmp_path / "run", tmp_path / "tb"
    config = cifar10.parse_config(["--augment", "--tensorboard", str(tb)])
    assert config.augment and config.tensorboard == str(tb) and not cifar10.parse_config([]).augment
    with jax.default_prng_impl("rbg"):  # half the compile time of threefry's initialisation
        metrics = cifar10.main(["--data-dir", str(folder), "--epochs", "1", "--batch-size", "50", "--augment",
                                "--tensorboard", str(tb), "--out", str(out), "--verbose", "0"])
    summary = (out / "summary.txt").read_text()
    assert "random_flip (RandomFlip)" in summary and "Total params: 122,570" in summary
    for png in ("confusion.png", "mistakes.png", "predictions.png", "history.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    state = jaxcnn.checkpoint.load_state(out / "model")  # the bare cifar_cnn1, same parameters
    x_test = jaxcnn.data.to_float(jaxcnn.data.load("cifar10", str(folder)).x_test)
    ds_y = jaxcnn.data.load("cifar10", str(folder)).y_test
    assert jaxcnn.evaluate(state, x_test, ds_y)["accuracy"] == pytest.approx(metrics["test_accuracy"])
    acc = EventAccumulator(str(tb / "train"))
    acc.Reload()
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(acc.Tags()["scalars"])


def test_same_history_on_one_device_and_a_mesh_of_all(tmp_path):
    # The layers draw from the dropout key of the step (the engine's rule), so a batch split
    # over a data-parallel mesh is augmented as on one device.
    if len(jax.devices()) < 2:
        pytest.skip("needs two devices (jaxcnn splits the CPU into one device per core)")
    from jaxcnn.callbacks import ModelCheckpoint

    ds = jaxcnn.data.load("mnist")
    x, y = jaxcnn.data.to_float(ds.x_train[:128]), ds.y_train[:128]
    model = A.Augmented(jaxcnn.get_model("mnist_cnn", filters=4, dense_units=8), (A.RandomFlip("horizontal"), A.RandomRotation(0.05)))
    state, one = jaxcnn.fit(model, x, y, epochs=1, batch_size=64, verbose=0, devices=None,
                            callbacks=[ModelCheckpoint(tmp_path / "model")])  # no model_name: taken from the state
    _, mesh = jaxcnn.fit(model, x, y, epochs=1, batch_size=64, verbose=0, devices="all")
    np.testing.assert_allclose(mesh.history["loss"], one.history["loss"], rtol=1e-5)
    # The checkpoint is the bare model (same parameters), and predicts as the trained state.
    reloaded = jaxcnn.checkpoint.load_state(tmp_path / "model")
    assert not isinstance(reloaded.model.module, A.Augmented)
    np.testing.assert_allclose(jaxcnn.predict(reloaded, x[:16]), jaxcnn.predict(state, x[:16]), atol=1e-5)
