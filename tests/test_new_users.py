"""Defects two new users found (a Keras user and a researcher with their own models), each
refused in one line or made to behave as Keras does."""

from __future__ import annotations

import warnings

import flax.linen as nn
import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn.errors import ShapeError


@pytest.fixture(scope="module")
def mnist():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:128]), ds.y_train[:128].astype(np.int32)


class BatchMean(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1)).mean(0, keepdims=True)


class NNXBatchSum(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.out = nnx.Linear(784, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(x.reshape(x.shape[0], -1)).sum(0, keepdims=True)


class ForCifar(nn.Module):
    """A weight sized for 32x32x3 images, given MNIST."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (3072, 10))
        return x.reshape(x.shape[0], -1) @ w


class OtherFlag(nn.Module):
    @nn.compact
    def __call__(self, x, is_training: bool = False):
        x = nn.Dropout(0.5, deterministic=not is_training)(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_outputs_that_mix_the_batch_are_refused_before_training(mnist):
    x, y = mnist
    for model in (BatchMean(), NNXBatchSum(nnx.Rngs(0))):
        name = type(model).__name__
        with pytest.raises(ShapeError, match=rf"^{name} returns outputs of shape \(1, 10\) for images of shape \(8, 28, 28, 1\); "
                                             r"a classifier must return one row per image"):
            jaxcnn.fit(model, x, y, verbose=0)


def test_a_model_built_for_other_images_is_one_line_in_fit_and_summary(mnist):
    x, y = mnist
    expected = (r"^ForCifar cannot be applied to images of shape \({}, 28, 28, 1\): dot_general requires contracting "
                r"dimensions to have the same shape, got \(784,\) and \(3072,\)\. Is it built for other images")
    with pytest.raises(ShapeError, match=expected.format(8)) as e:
        jaxcnn.fit(ForCifar(), x, y, verbose=0)
    assert isinstance(e.value.__cause__, TypeError)  # the model's own error stays reachable
    with pytest.raises(ShapeError, match=expected.format(1)):
        jaxcnn.summary(ForCifar(), (28, 28, 1))


def test_a_mode_flag_of_another_name_is_warned_about_once_at_the_users_line(mnist):
    x, y = mnist
    with pytest.warns(UserWarning, match=r"OtherFlag.__call__ takes 'is_training', which jaxcnn never sets.*"
                                         r"Name the mode flag train, training or deterministic") as record:
        jaxcnn.fit(OtherFlag(), x, y, verbose=0)
    flagged = [w for w in record if "is_training" in str(w.message)]
    assert len(flagged) == 1 and flagged[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxcnn.fit(OtherFlag(), x, y, verbose=0)  # once per class
