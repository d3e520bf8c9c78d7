"""jaxcnn.explain: each method against a computation written out by hand, on models the report
never had (linen and NNX, dropout, BatchNorm, softmax outputs, no train argument, blocks), and
through an export and reload."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn import augment, checkpoint, explain, plots
from jaxcnn.errors import ConfigError, ShapeError
from jaxcnn.train import create_train_state

rng = np.random.default_rng(0)
X = rng.uniform(0, 1, (7, 12, 12, 1)).astype(np.float32)


class ConvRelu(nn.Module):
    features: int = 6

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(self.features, (3, 3))(x))


class SuperConvRelu(ConvRelu):  # a subclass calling super().__call__: the layer's output is its own
    def __call__(self, x):
        return super().__call__(x)


class GapNet(nn.Module):
    """No train argument; a block, then global average pooling and a dense head (CAM's case)."""

    block: type = ConvRelu

    @nn.compact
    def __call__(self, x):
        x = self.block(name="block")(x)
        return nn.Dense(4, name="head")(x.mean((1, 2)))


class BnDropSoftmax(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Dropout(0.3, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.softmax(nn.Dense(4)(x))


class NNXConvRelu(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 6, (3, 3), rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.conv(x))


own_call = NNXConvRelu.__dict__["__call__"]


class InheritedCall(NNXConvRelu):
    pass


class SuperCall(NNXConvRelu):  # a subclass calling super().__call__
    def __call__(self, x):
        return super().__call__(x)


class NNXInherited(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.block = InheritedCall(rngs)
        self.block2 = SuperCall(rngs)
        self.head = nnx.Linear(6, 4, rngs=rngs)

    def __call__(self, x):
        return self.head((self.block(x) + self.block2(x)).mean((1, 2)))


class NNXGap(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.block = NNXConvRelu(rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.head = nnx.Linear(6, 4, rngs=rngs)

    def __call__(self, x):
        x = self.drop(self.bn(self.block(x)))
        return self.head(x.mean((1, 2)))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(x.reshape(x.shape[0], -1))


def state(model, shape=(12, 12, 1)):
    return create_train_state(model, shape, seed=1)


def normalised(cam):
    top = cam.max(axis=(1, 2), keepdims=True)
    return np.where(top > 0, cam / np.where(top > 0, top, 1), 0)


@pytest.mark.parametrize("block", [ConvRelu, SuperConvRelu])
def test_grad_cam_of_a_global_average_pool_head_is_the_class_activation_map(block):
    # With GAP and a dense head, each channel's mean gradient is the head's weight / (h * w), so
    # Grad-CAM is relu(A @ W[:, c]) scaled to [0, 1] (Selvaraju et al., section 3.1).
    st = state(GapNet(block))
    assert explain.layer_names(st) == ["block/Conv_0", "block"]
    target = np.array([0, 1, 2, 3, 0, 1, 2])
    cams = explain.grad_cam(st, X, target)  # default layer: the outer block
    _, inter = st.model.module.apply({"params": st.params}, X, capture_intermediates=True, mutable=["intermediates"])
    acts = np.asarray(inter["intermediates"]["block"]["__call__"][0])
    w = np.asarray(st.params["head"]["kernel"])
    expected = normalised(np.maximum(np.einsum("bhwc,bc->bhw", acts, w[:, target].T), 0))  # 12x12 stays 12x12
    np.testing.assert_allclose(cams, expected, atol=1e-5)
    assert cams.shape == (7, 12, 12) and cams.max() == pytest.approx(1.0)


def test_grad_cam_of_an_nnx_module_with_batchnorm_and_dropout():
    model = NNXGap(rngs=nnx.Rngs(0))
    st = state(model)
    assert explain.layer_names(st) == ["block/conv", "block", "bn", "drop"]
    cams = explain.grad_cam(st, X, 2, layer="block")
    # by hand: the block's output through BatchNorm's moving averages (eval mode), GAP and the head
    acts = np.asarray(nnx.relu(model.block.conv(jnp.asarray(X))))
    scale = np.asarray(model.bn.scale.value) / np.sqrt(np.asarray(model.bn.var.value) + model.bn.epsilon)
    w = np.asarray(model.head.kernel.value)[:, 2] * scale
    np.testing.assert_allclose(cams, normalised(np.maximum(acts @ w, 0)), atol=1e-5)
    # the hooks on NNX classes are gone afterwards: a class's own __call__ is back, an inherited
    # one inherited again
    assert NNXConvRelu.__dict__["__call__"] is own_call and "__call__" not in InheritedCall.__dict__
    inherited = NNXInherited(rngs=nnx.Rngs(0))
    other = state(inherited)
    assert explain.layer_names(other) == ["block/conv", "block", "block2/conv", "block2"]
    acts = np.asarray(inherited.block2(jnp.asarray(X)))
    w = np.asarray(inherited.head.kernel.value)[:, 1]
    np.testing.assert_allclose(explain.grad_cam(other, X, 1, layer="block2"), normalised(np.maximum(acts @ w, 0)), atol=1e-5)
    assert NNXConvRelu.__dict__["__call__"] is own_call and "__call__" not in InheritedCall.__dict__


def test_saliency_and_gradients_are_the_input_gradients_of_the_score():
    st = state(BnDropSoftmax())
    assert st.loss.from_logits is False  # create_train_state decided it from the outputs (a softmax)
    undecided = st.replace(loss=st.loss.with_from_logits(None))  # a loss replaced by an undecided one: decided as fit would
    np.testing.assert_allclose(explain.gradients(undecided, X, 3), explain.gradients(st, X, 3), atol=1e-7)
    variables = {"params": st.params, "batch_stats": st.batch_stats}

    def score(x, c):  # a softmax output: its log-probability, as for a logit
        return jnp.log(st.model.module.apply(variables, x, train=False)[:, c]).sum()

    grads = explain.gradients(st, X, 3, batch_size=3)  # batches of 3, the last padded
    expected = np.asarray(jax.grad(score)(jnp.asarray(X), 3))
    np.testing.assert_allclose(grads, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(explain.saliency(st, X, 3), np.abs(expected).max(-1), rtol=1e-4, atol=1e-6)
    # the predicted class by default, one class per image as an array
    classes = jaxcnn.predict(st, X, output="classes")
    np.testing.assert_allclose(explain.gradients(st, X), explain.gradients(st, X, classes), atol=1e-7)


def test_smoothgrad_is_seeded_and_tends_to_the_plain_gradient():
    st = state(GapNet())
    a = explain.saliency(st, X, 1, samples=4, seed=3)
    np.testing.assert_allclose(a, explain.saliency(st, X, 1, samples=4, seed=3, batch_size=2), rtol=1e-5, atol=1e-8)  # any batch
    assert not np.allclose(a, explain.saliency(st, X, 1, samples=4, seed=4))
    tiny = explain.saliency(st, X, 1, samples=3, noise=1e-6)
    np.testing.assert_allclose(tiny, explain.saliency(st, X, 1), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_integrated_gradients_add_up_to_the_score_difference(kind):
    model = BnDropSoftmax() if kind == "linen" else NNXGap(rngs=nnx.Rngs(0))
    st = state(model)
    base = np.full((12, 12, 1), 0.5, np.float32)
    attr = explain.integrated_gradients(st, X, baseline=base, steps=64)
    out, out0 = jaxcnn.predict(st, X), jaxcnn.predict(st, np.broadcast_to(base, X.shape))
    if kind == "linen":
        out, out0 = np.log(out), np.log(out0)
    c = out.argmax(-1)
    diff = out[np.arange(7), c] - out0[np.arange(7), c]
    np.testing.assert_allclose(attr.reshape(7, -1).sum(1), diff, rtol=0.02, atol=3e-3)  # ReLU kinks: the rule's error
    assert attr.shape == X.shape


def test_every_kind_of_model_and_an_exported_one(tmp_path):
    x = rng.uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)
    y = np.arange(6) % 4
    models = [jaxcnn.get_model("mnist_cnn"), augment.Augmented(BnDropSoftmax(), (augment.RandomFlip("horizontal"),))]
    for model in models:
        result = jaxcnn.fit(model, x, y if model is models[1] else np.arange(6), epochs=1, batch_size=3, verbose=0)
        checkpoint.export(tmp_path / "m", result.state, model_name="mnist_cnn" if model is models[0] else None)
        again = checkpoint.load_state(tmp_path / "m", model=None if model is models[0] else model)
        for st in (result, again):  # what fit returned, and the reloaded state
            cams = explain.grad_cam(st, x)
            assert cams.shape == (6, 28, 28) and np.isfinite(cams).all() and cams.max() <= 1
        np.testing.assert_allclose(explain.grad_cam(again, x), explain.grad_cam(result, x), atol=1e-6)
        np.testing.assert_allclose(explain.saliency(again, x), explain.saliency(result, x), rtol=1e-5, atol=1e-7)
        import shutil

        shutil.rmtree(tmp_path / "m")
    assert explain.layer_names(result)[0] == "random_flip"  # Augmented's layers come first, named as the bare model's


def test_bad_calls_get_one_line_that_says_what_to_do():
    st = state(GapNet())
    with pytest.raises(ConfigError, match="takes the trained state"):
        explain.grad_cam(GapNet(), X)
    with pytest.raises(ConfigError, match="layer 'conv' is not .* choose one of block/Conv_0, block"):
        explain.grad_cam(st, X, layer="conv")
    with pytest.raises(ShapeError, match="target 4 is outside the model's classes 0..3"):
        explain.saliency(st, X, 4)
    with pytest.raises(ShapeError, match=r"one class per image, shape \(7,\)"):
        explain.saliency(st, X, [1, 2])
    with pytest.raises(ShapeError, match="one image"):
        explain.saliency(st, X[0])
    with pytest.raises(ConfigError, match="samples must be an integer of at least 0"):
        explain.saliency(st, X, samples=-1)
    with pytest.raises(ConfigError, match="noise must be a positive number"):
        explain.saliency(st, X, samples=2, noise=0)
    with pytest.raises(ShapeError, match="baseline must be one image"):
        explain.integrated_gradients(st, X, baseline=np.zeros((3, 3)))
    mlp = state(MLP())
    with pytest.raises(ConfigError, match="MLP has none: use saliency or integrated_gradients"):
        explain.grad_cam(mlp, X)
    assert explain.saliency(mlp, X).shape == (7, 12, 12)
    with pytest.raises(ShapeError, match="x is empty"):
        explain.saliency(st, X[:0])


def test_explanations_figure(tmp_path):
    st = state(GapNet())
    cams = explain.grad_cam(st, X[:5])
    classes = jaxcnn.predict(st, X[:5], output="classes")
    fig = plots.explanations(X[:5], cams, labels=np.zeros(5, int), predicted=classes, class_names=list("abcd"))
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 5 and all(len(ax.images) == 2 for ax in drawn)  # the image, then the heat map
    assert [ax.get_title() for ax in drawn] == [("a" if c == 0 else f"{'abcd'[c]} / true: a") for c in classes]
    plots.save(plots.explanations(X[:5], explain.integrated_gradients(st, X[:5], steps=4)), tmp_path / "ig.png")
    assert (tmp_path / "ig.png").stat().st_size > 1000
    with pytest.raises(ShapeError, match="explain the same images you draw"):
        plots.explanations(X[:4], cams)


class SharedConv(nn.Module):
    """One convolution applied twice, at two sizes (a regression probe: Grad-CAM's default layer
    was it, and the heat map's perturbation, sized for one call, failed on the other)."""

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(4, (3, 3), name="shared")
        a, b = conv(x), conv(nn.max_pool(x, (2, 2), (2, 2)))
        head = nn.Conv(4, (1, 1), name="head_conv")(a)
        return nn.Dense(4)(jnp.concatenate([head.mean((1, 2)), b.mean((1, 2))], -1))


def test_a_layer_called_twice_is_not_a_grad_cam_layer():
    st = state(SharedConv())
    assert explain.layer_names(st) == ["head_conv"]
    assert explain.grad_cam(st, X).shape == (7, 12, 12)  # the default: the layer called once
    with pytest.raises(ConfigError, match=r"^layer 'shared' is called 2 times in one forward pass, and Grad-CAM explains one "
                                          r"activation; choose a layer called once: head_conv$"):
        explain.grad_cam(st, X, layer="shared")
