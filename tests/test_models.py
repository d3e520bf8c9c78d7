"""Parameter counts, Keras-parity initialisation and the explained summary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import models
from jaxcnn.errors import ConfigError, ShapeError
from jaxcnn.summary import model_summary, readable_memory_size

COUNTS = {
    "mnist_cnn": (258_090, 0),
    "cifar_cnn1": (122_570, 0),
    "cifar_cnn2": (193_226, 0),
    "cifar_cnn3": (1_094_346, 0),
    "cifar_cnn4": (1_094_858, 512),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts(name):
    s = model_summary(models.get_model(name), models.input_shape(name))
    assert (s.trainable, s.non_trainable) == COUNTS[name]


def test_search_cnn_k7_counts_per_layer():
    s = model_summary(models.get_model("search_cnn", kernel_size=7), (28, 28, 1))
    assert [r.params for r in s.rows if r.params] == [1_600, 50_208, 25_632, 330]
    assert s.total == 77_770
    assert [r.output_shape for r in s.rows][:3] == [("None", 22, 22, 32), ("None", 11, 11, 32), ("None", 5, 5, 32)]


def test_mnist_summary_text_matches_report():
    text = jaxcnn.summary(models.get_model("mnist_cnn"), (28, 28, 1), name="mnist_cnn")
    for line in [
        "conv2d (Conv2D)",
        "(None, 26, 26, 32)",
        "(3x3x1 + 1) x 32 = 320",
        "(None, 13, 13, 32)",
        "(3x3x32 + 1) x 32 = 9,248",
        "(None, 3872)",
        "(3872 + 1) x 64 = 247,872",
        "(64 + 1) x 10 = 650",
        "Total params: 258,090 (1008.16 KB)",
        "Trainable params: 258,090 (1008.16 KB)",
        "Non-trainable params: 0 (0.00 B)",
    ]:
        assert line in text, line
    assert text.startswith('Model: "mnist_cnn"')


def test_cifar_first_conv_explained_as_in_report_1_8():
    text = jaxcnn.summary(models.get_model("cifar_cnn1"), (32, 32, 3))
    assert "(3x3x3 + 1) x 32 = 896" in text


def test_readable_memory_size_like_keras():
    assert readable_memory_size(258_090 * 4) == "1008.16 KB"
    assert readable_memory_size(1_094_346 * 4) == "4.17 MB"
    assert readable_memory_size(0) == "0.00 B"


def test_keras_initialisation_glorot_uniform_and_zero_bias():
    model = models.get_model("mnist_cnn")
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    dense = np.asarray(params["dense"]["kernel"])
    limit = np.sqrt(6 / (3872 + 64))
    assert np.abs(dense).max() <= limit
    assert np.abs(dense).max() > 0.95 * limit  # uniform fills the whole range
    assert abs(dense.std() - limit / np.sqrt(3)) < 0.01 * limit
    conv = np.asarray(params["conv2d"]["kernel"])  # fan_in 9, fan_out 9*32
    assert np.abs(conv).max() <= np.sqrt(6 / (9 + 288))
    for layer in params.values():
        if "bias" in layer:
            assert not np.any(np.asarray(layer["bias"]))


def test_fast_max_pool_equals_flax_values_and_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 11, 9, 3))  # odd sizes: last row/col dropped
    import flax.linen as nn

    from jaxcnn.layers import max_pool

    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
    np.testing.assert_array_equal(max_pool(x, 2), ref(x))
    g = jax.grad(lambda x: jnp.sum(max_pool(x, 2) ** 2))(x)
    g_ref = jax.grad(lambda x: jnp.sum(ref(x) ** 2))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)


def test_unknown_model_and_override():
    with pytest.raises(ConfigError, match="unknown model 'resnet'; known models: mnist_cnn"):
        models.get_model("resnet")
    with pytest.raises(ConfigError, match="does not take"):
        models.get_model("mnist_cnn", kernel=3)


def test_kernel_too_big_is_a_clear_error_before_compiling():
    assert models.search_cnn_output_size(10) == 0
    with pytest.raises(ShapeError, match=r"conv2d_1: kernel 10x10 does not fit its 9x9 input"):
        model_summary(models.get_model("search_cnn", kernel_size=10), (28, 28, 1))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = models.get_model("mnist_cnn", dtype=jnp.bfloat16)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
    assert model.apply(variables, jnp.zeros((2, 28, 28, 1))).dtype == jnp.float32
