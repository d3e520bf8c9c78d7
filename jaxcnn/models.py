"""The report's CNNs as Flax linen modules, chosen by name from one registry.

>>> from jaxcnn import models
>>> model = models.get_model("mnist_cnn")            # 258,090 parameters
>>> model = models.get_model("search_cnn", kernel_size=7, weight_decay=0.009)   # 77,770

Every model maps NHWC float images to float32 logits and takes ``train`` (dropout on, batch
statistics used and updated). Layers are named as Keras names them (``conv2d``, ``conv2d_1``...),
so checkpoints stay stable and summaries read like the report's. ``dtype`` sets the computation
dtype of convolutions and dense layers (``jnp.bfloat16`` for mixed precision); parameters and
logits stay float32. Each registry model gives Keras's logits when Keras's weights are copied in
(``tests/test_keras_parity.py::test_registry_model_forward_matches_keras``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import ConfigError
from jaxcnn.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    MaxPool2D,
)

Array = jax.Array


class MnistCNN(nn.Module):
    """The report's MNIST CNN (1.2) and its random-search family (1.5), one class.

    Conv ``filters`` kxk ReLU, MaxPool 2, Conv ``filters`` kxk ReLU, Flatten, Dense
    ``dense_units`` ReLU, Dense ``num_classes``. Input ``(N, 28, 28, 1)``, output logits
    ``(N, num_classes)``. The defaults are ``mnist_cnn`` (258,090 parameters); ``search_cnn`` is
    the same class with ``dense_units=32`` (k = 7: 1,600 + 50,208 + 25,632 + 330 = 77,770).
    ``weight_decay`` is a Keras-style L2 factor on every kernel, so the loss includes
    ``weight_decay * sum(w ** 2)``.
    """

    num_classes: int = 10
    filters: int = 32
    kernel_size: int = 3
    dense_units: int = 64
    weight_decay: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        l2 = self.weight_decay
        conv = functools.partial(Conv2D, self.filters, self.kernel_size, activation="relu", kernel_l2=l2, dtype=self.dtype)
        x = conv(name="conv2d")(x)
        x = MaxPool2D(2, name="max_pooling2d")(x)
        x = conv(name="conv2d_1")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(self.dense_units, activation="relu", kernel_l2=l2, dtype=self.dtype, name="dense")(x)
        x = Dense(self.num_classes, kernel_l2=l2, dtype=self.dtype, name="dense_1")(x)
        return x.astype(jnp.float32)


#: The random-search trial model (1.5): ``SearchCNN(kernel_size=k, weight_decay=wd)``.
SearchCNN = functools.partial(MnistCNN, dense_units=32)


def search_cnn_output_size(kernel_size: int, input_size: int = 28) -> int:
    """Spatial size after ``search_cnn``'s second conv: 0 or less means the trial cannot be built.

    ``28 -> 28-k+1 -> floor(./2) -> .-k+1``; k = 10 gives 19 -> 9 -> 0.
    """
    return (input_size - kernel_size + 1) // 2 - kernel_size + 1


class CifarCNN1(nn.Module):
    """The report's first CIFAR-10 CNN (1.6): no activations at all, 122,570 parameters.

    Conv 32 3x3, MaxPool, Conv 64 3x3, MaxPool, Conv 64 3x3, Flatten, Dense 64, Dense 10.
    Max-pooling is its only non-linearity, as written in the report.
    """

    num_classes: int = 10
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = Conv2D(32, 3, dtype=self.dtype, name="conv2d")(x)
        x = MaxPool2D(2, name="max_pooling2d")(x)
        x = Conv2D(64, 3, dtype=self.dtype, name="conv2d_1")(x)
        x = MaxPool2D(2, name="max_pooling2d_1")(x)
        x = Conv2D(64, 3, dtype=self.dtype, name="conv2d_2")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(64, dtype=self.dtype, name="dense")(x)
        x = Dense(self.num_classes, dtype=self.dtype, name="dense_1")(x)
        return x.astype(jnp.float32)


class CifarCNN2(nn.Module):
    """The report's second CIFAR-10 CNN (1.9): one more conv and two ReLU dense layers, 193,226.

    Conv 32, MaxPool, Conv 64, MaxPool, Conv 64, Conv 64 (all 3x3 valid, linear), Flatten,
    Dense 256 ReLU, Dense 128 ReLU, Dense 10.
    """

    num_classes: int = 10
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = Conv2D(32, 3, dtype=self.dtype, name="conv2d")(x)
        x = MaxPool2D(2, name="max_pooling2d")(x)
        x = Conv2D(64, 3, dtype=self.dtype, name="conv2d_1")(x)
        x = MaxPool2D(2, name="max_pooling2d_1")(x)
        x = Conv2D(64, 3, dtype=self.dtype, name="conv2d_2")(x)
        x = Conv2D(64, 3, dtype=self.dtype, name="conv2d_3")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(256, activation="relu", dtype=self.dtype, name="dense")(x)
        x = Dense(128, activation="relu", dtype=self.dtype, name="dense_1")(x)
        x = Dense(self.num_classes, dtype=self.dtype, name="dense_2")(x)
        return x.astype(jnp.float32)


class CifarCNN34(nn.Module):
    """The report's third and fourth CIFAR-10 CNNs (1.9), one shape with optional regularisation.

    Conv 32 3x3 valid, MaxPool, [Dropout], Conv 64 5x5 same, LeakyReLU(0.1), MaxPool, [Dropout],
    Conv 64 5x5 same, LeakyReLU, Conv 64 5x5 same, LeakyReLU, Flatten, Dense 256 ReLU, [Dropout,
    BatchNorm], Dense 128 ReLU, [Dropout 0.5], Dense 10.

    ``regularized=False`` is ``cifar_cnn3`` (1,094,346 parameters); ``regularized=True`` is
    ``cifar_cnn4``: L2(``l2``) on every conv and hidden dense kernel, the dropouts and the batch
    norm in brackets (1,095,370 parameters, 512 of them non-trainable).
    """

    regularized: bool = False
    l2: float = 0.01
    dropout: float = 0.25
    dense_dropout: float = 0.5
    num_classes: int = 10
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        reg = self.regularized
        l2 = self.l2 if reg else 0.0
        conv5 = functools.partial(Conv2D, 64, 5, padding="same", kernel_l2=l2, dtype=self.dtype)
        x = Conv2D(32, 3, kernel_l2=l2, dtype=self.dtype, name="conv2d")(x)
        x = MaxPool2D(2, name="max_pooling2d")(x)
        if reg:
            x = Dropout(self.dropout, name="dropout")(x, train)
        x = conv5(name="conv2d_1")(x)
        x = LeakyReLU(0.1, name="leaky_re_lu")(x)
        x = MaxPool2D(2, name="max_pooling2d_1")(x)
        if reg:
            x = Dropout(self.dropout, name="dropout_1")(x, train)
        x = conv5(name="conv2d_2")(x)
        x = LeakyReLU(0.1, name="leaky_re_lu_1")(x)
        x = conv5(name="conv2d_3")(x)
        x = LeakyReLU(0.1, name="leaky_re_lu_2")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(256, activation="relu", kernel_l2=l2, dtype=self.dtype, name="dense")(x)
        if reg:
            x = Dropout(self.dropout, name="dropout_2")(x, train)
            x = BatchNorm(name="batch_normalization")(x, train)
        x = Dense(128, activation="relu", kernel_l2=l2, dtype=self.dtype, name="dense_1")(x)
        if reg:
            x = Dropout(self.dense_dropout, name="dropout_3")(x, train)
        x = Dense(self.num_classes, dtype=self.dtype, name="dense_2")(x)
        return x.astype(jnp.float32)


# name -> (factory, input shape (H, W, C) the report uses, one-line description)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[int, int, int], str]] = {
    "mnist_cnn": (MnistCNN, (28, 28, 1), "MNIST CNN of 1.2 (258,090 params)"),
    "search_cnn": (SearchCNN, (28, 28, 1), "random-search trial model of 1.5 (kernel_size=3 by default: 133,834 params; the report's best k=7: 77,770)"),
    "cifar_cnn1": (CifarCNN1, (32, 32, 3), "CIFAR-10 CNN 1 of 1.6 (122,570 params)"),
    "cifar_cnn2": (CifarCNN2, (32, 32, 3), "CIFAR-10 CNN 2 of 1.9 (193,226 params)"),
    "cifar_cnn3": (functools.partial(CifarCNN34, regularized=False), (32, 32, 3), "CIFAR-10 CNN 3 of 1.9 (1,094,346 params)"),
    "cifar_cnn4": (functools.partial(CifarCNN34, regularized=True), (32, 32, 3), "CIFAR-10 CNN 4 of 1.9 (1,095,370 params)"),
}

MODELS: tuple[str, ...] = tuple(_REGISTRY)


def register_model(name: str, factory: Callable[..., nn.Module], input_shape: tuple[int, int, int], description: str = "") -> None:
    """Add a model to the registry so that :func:`get_model` and the experiments can find it."""
    global MODELS
    _REGISTRY[name] = (factory, tuple(input_shape), description)  # type: ignore[assignment]
    MODELS = tuple(_REGISTRY)


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        if not close and "." in str(name):
            hint = f"for a class of your own write {name}:ClassName; "
        raise ConfigError(f"unknown model {name!r}; {hint}known models: {', '.join(_REGISTRY)}") from None


def get_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword ``overrides`` of its attributes.

    Raises ``ConfigError`` for an unknown name or an attribute the model does not have.
    """
    factory = _lookup(name)[0]
    try:
        return factory(**overrides)
    except TypeError as e:
        raise ConfigError(f"model {name!r} does not take {sorted(overrides)}: {e}") from None


def input_shape(name: str) -> tuple[int, int, int]:
    """The (H, W, C) input shape the report uses for registered model ``name``."""
    return _lookup(name)[1]


def describe() -> dict[str, str]:
    """Registered model names and one-line descriptions."""
    return {name: entry[2] for name, entry in _REGISTRY.items()}


def module_fields(module: nn.Module) -> list[tuple[str, Any, Any]]:
    """``(name, value, default)`` of each attribute a linen module is built with (its dataclass
    fields but ``parent`` and ``name``); the default is ``dataclasses.MISSING`` where it has none."""
    import dataclasses

    out = []
    for f in dataclasses.fields(module):
        if not f.init or f.name in ("parent", "name"):
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append((f.name, getattr(module, f.name), default))
    return out


def _attributes(module: nn.Module) -> dict[str, Any]:
    return {name: value for name, value, _ in module_fields(module)}


def find_registered(module: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """The registry name and attribute overrides that rebuild ``module`` with :func:`get_model`,
    or None when no registered model does (a user's own module). The registered model needing
    the fewest overrides wins (``search_cnn`` over ``mnist_cnn`` with ``dense_units=32``)."""
    best: tuple[str, dict[str, Any]] | None = None
    for name, (factory, _, _) in _REGISTRY.items():
        try:
            default = factory()
        except Exception:  # noqa: BLE001 - a factory that needs arguments cannot be matched
            continue
        if type(default) is not type(module):
            continue
        base, mine = _attributes(default), _attributes(module)
        overrides = {k: v for k, v in mine.items() if base.get(k) != v}
        try:
            if factory(**overrides) == module and (best is None or len(overrides) < len(best[1])):
                best = (name, overrides)
        except Exception:  # noqa: BLE001
            continue
    return best
