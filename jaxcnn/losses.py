"""Classification losses with Keras 3's exact formulas, as per-example functions.

A loss here is a frozen, hashable dataclass (it is a static part of the jitted step) called as
``loss(outputs, labels) -> (B,)``: ``outputs`` (B, C) are the model's outputs, logits or
probabilities; ``labels`` are integer classes (B,) or distributions (B, C) (one-hot, smoothed or
soft targets, kept as they are). :func:`jaxcnn.fit` reduces the per-example values as Keras's
default ``"sum_over_batch_size"`` does: ``sum(loss * sample_weight) / batch_size``.

* :class:`CategoricalCrossentropy` (``from_logits``, ``label_smoothing``): Keras's
  ``keras.losses.CategoricalCrossentropy``. With ``from_logits=False`` the outputs are divided by
  their sum and clipped to ``[1e-7, 1 - 1e-7]`` before the log, as in Keras's JAX backend.
* :class:`SparseCategoricalCrossentropy`: the same with integer labels. Keras's sparse loss has
  no label smoothing; here ``label_smoothing`` works as for one-hot labels.

``from_logits=None`` (the default in :func:`get_loss`) lets ``fit`` decide from the model's
outputs on the first batch: a model whose outputs are already probabilities (a softmax output,
the usual Keras habit) gets ``from_logits=False``, as a Keras user's default loss would; any
other model ``from_logits=True``. An explicit ``from_logits`` that contradicts the outputs is
refused with a message (Keras would train on silently). Tested against Keras itself in
``tests/test_losses.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.errors import ConfigError

Array = jax.Array
EPSILON = 1e-7  # keras.config.epsilon()


def _log_probs(outputs: Array, from_logits: bool) -> Array:
    if from_logits:
        return jax.nn.log_softmax(outputs, axis=-1)
    probs = outputs / jnp.sum(outputs, axis=-1, keepdims=True)
    return jnp.log(jnp.clip(probs, EPSILON, 1.0 - EPSILON))


def _as_distribution(labels: Array, num_classes: int, dtype: Any) -> Array:
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    return labels.astype(dtype)


@dataclass(frozen=True)
class CategoricalCrossentropy:
    """``-sum(target * log p)`` per example, with Keras's label smoothing
    ``target * (1 - s) + s / classes``."""

    from_logits: bool | None = None  # None: decided by fit from the model's outputs (logits until then)
    label_smoothing: float = 0.0
    name: str = "categorical_crossentropy"

    def __post_init__(self):
        if not 0.0 <= float(self.label_smoothing) <= 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1], got {self.label_smoothing!r}")

    def __call__(self, outputs: Array, labels: Array) -> Array:
        target = _as_distribution(labels, outputs.shape[-1], outputs.dtype)
        if self.label_smoothing:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / outputs.shape[-1]
        return -jnp.sum(target * _log_probs(outputs, self.from_logits is not False), axis=-1)

    def with_from_logits(self, from_logits: bool) -> CategoricalCrossentropy:
        return type(self)(from_logits, self.label_smoothing, self.name)


@dataclass(frozen=True)
class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Integer labels (B,); distributions are accepted too (as the categorical loss)."""

    name: str = "sparse_categorical_crossentropy"

    def __call__(self, outputs: Array, labels: Array) -> Array:
        if labels.ndim == 1 and not self.label_smoothing:
            logp = _log_probs(outputs, self.from_logits is not False)
            return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
        return super().__call__(outputs, labels)


@dataclass(frozen=True)
class CustomLoss:
    """A user's ``fn(outputs, labels) -> (B,)`` per-example loss (labels as ``fit`` got them:
    integers (B,) or distributions (B, C)). ``from_logits`` only tells ``predict`` whether to
    softmax the outputs for ``output="probs"``."""

    fn: Callable[[Array, Array], Array]
    from_logits: bool | None = None  # None: decided by fit from the model's outputs, as for the built-in losses
    name: str = "custom"
    label_smoothing: float = 0.0  # always 0: smoothing belongs inside the user's function

    def __call__(self, outputs: Array, labels: Array) -> Array:
        return self.fn(outputs, labels)

    def with_from_logits(self, from_logits: bool) -> CustomLoss:
        return dataclasses.replace(self, from_logits=from_logits)


Loss = CategoricalCrossentropy | CustomLoss

_NAMES = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
}


def is_keras_object(obj: Any) -> bool:
    """Whether ``obj`` is a Keras object or class (a ``keras.losses`` / ``keras.metrics`` one...),
    told from its module's name, without importing Keras."""
    return _is_keras_module((obj if isinstance(obj, type) else type(obj)).__module__)


def _is_keras_module(module: str | None) -> bool:
    """``keras.*``, ``tf_keras.*`` or TensorFlow's Keras (not a module of one's own named ``keras_utils``)."""
    module = module or ""
    return module.split(".")[0] in ("keras", "tf_keras") or module.startswith("tensorflow.python.keras")


#: The first two parameter names of a loss function in Keras's order, ``(y_true, y_pred)``.
_KERAS_ORDER = ({"y_true", "labels", "label", "target", "targets"}, {"y_pred", "outputs", "output", "logits", "preds", "predictions"})


def _refuse_keras_loss(loss: Any) -> None:
    """A Keras loss object runs Keras's own ops on ``(y_true, y_pred)``, outside jaxcnn's
    compiled step: refuse it with the jaxcnn loss that does the same. So are Keras's loss
    functions (``keras.losses.categorical_crossentropy``) and a function of one's own whose
    parameters say Keras's order: with one-hot labels both arguments have the same shape, so
    the swap would train silently on a loss that falls below zero."""
    fn_module = getattr(loss, "__module__", None) or ""
    if callable(loss) and not isinstance(loss, type) and type(loss).__module__ == "builtins" and _is_keras_module(fn_module):
        name = getattr(loss, "__name__", "this function")
        if name in _NAMES:
            instead = f"pass loss={name!r} (with fit's from_logits= and label_smoothing=) instead"
        else:
            instead = "pass a jaxcnn loss name or a function (outputs, labels) -> per-example loss instead"
        raise ConfigError(f"{fn_module}.{name} is a Keras loss function: it takes (y_true, y_pred) and Keras's "
                          f"from_logits=False default, while jaxcnn calls a loss as loss(outputs, labels); {instead}")
    if callable(loss) and not isinstance(loss, (type, CustomLoss)) and not is_keras_object(loss):
        import inspect

        try:
            names = [p.name for p in inspect.signature(loss).parameters.values()][:2]
        except (TypeError, ValueError):  # a builtin without a signature
            names = []
        if len(names) == 2 and names[0] in _KERAS_ORDER[0] and names[1] in _KERAS_ORDER[1]:
            name = getattr(loss, "__name__", None)
            if not (isinstance(name, str) and name.isidentifier()):  # a callable object, a partial, a lambda
                what, call = f"the loss {type(loss).__name__}", "loss_fn"
            else:
                what, call = name, name
            raise ConfigError(
                f"{what} takes ({names[0]}, {names[1]}), Keras's order, but jaxcnn calls a loss as loss(outputs, labels); "
                f"reorder its parameters, or pass loss=lambda outputs, labels: {call}(labels, outputs)"
                + ("" if call == name else " with the loss as loss_fn")
            )
    if not is_keras_object(loss):
        return
    cls = loss if isinstance(loss, type) else type(loss)
    ours = cls.__name__ if cls.__name__ in ("SparseCategoricalCrossentropy", "CategoricalCrossentropy") else None
    if ours is not None and not isinstance(loss, type):
        args = f"from_logits={bool(getattr(loss, 'from_logits', False))}"
        if getattr(loss, "label_smoothing", 0):
            args += f", label_smoothing={loss.label_smoothing}"
        instead = f"pass loss=jaxcnn.losses.{ours}({args}) instead"
    else:
        instead = ("pass loss='sparse_categorical_crossentropy' or 'categorical_crossentropy' (with fit's from_logits= "
                   "and label_smoothing=), a jaxcnn.losses object, or a function (outputs, labels) -> per-example loss")
    raise ConfigError(f"{cls.__name__} is a Keras loss, and Keras loss objects cannot run inside jaxcnn's compiled step; {instead}")


def get_loss(loss: str | Loss | Callable[[Array, Array], Array] | None = None, *, from_logits: bool | None = None,
             label_smoothing: float = 0.0) -> Loss:
    """Resolve ``fit``'s ``loss`` argument: None (sparse categorical cross-entropy, outputs
    detected), a name as in Keras, a loss object, or a callable ``(outputs, labels) -> (B,)``.
    A Keras loss object is refused with the jaxcnn loss to use instead."""
    _refuse_keras_loss(loss)
    if loss is None:
        loss = "sparse_categorical_crossentropy"
    if isinstance(loss, str):
        cls = _NAMES.get(loss)
        if cls is None and loss.lower().replace("_", "") in ("binarycrossentropy", "bce", "binaryfocalcrossentropy"):
            raise ConfigError(
                f"loss {loss!r}: jaxcnn trains classifiers with one output per class, so for two classes end the model "
                "with Dense(2) (logits, or a softmax) and keep the default loss, sparse_categorical_crossentropy, with labels 0 and 1; "
                "for multi-label targets (several 0/1 labels per example) pass a function, e.g. "
                "loss=lambda outputs, labels: optax.sigmoid_binary_cross_entropy(outputs, labels).mean(-1)"
            )
        if cls is None:
            close = difflib.get_close_matches(loss, list(_NAMES), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown loss {loss!r}; {hint}use one of {', '.join(_NAMES)}, or a function (outputs, labels) -> per-example loss")
        return cls(from_logits=from_logits, label_smoothing=label_smoothing)
    if isinstance(loss, CategoricalCrossentropy):
        if from_logits is not None:
            loss = dataclasses.replace(loss, from_logits=from_logits)
        return dataclasses.replace(loss, label_smoothing=label_smoothing) if label_smoothing else loss
    if isinstance(loss, CustomLoss) or callable(loss):
        if label_smoothing:
            raise ConfigError(
                "label_smoothing applies to jaxcnn's cross-entropy losses; with your own loss function smooth the "
                "labels inside it (e.g. optax.smooth_labels), or use loss='categorical_crossentropy'"
            )
        if isinstance(loss, CustomLoss):
            return loss if from_logits is None else loss.with_from_logits(from_logits)
        return CustomLoss(loss, from_logits, getattr(loss, "__name__", "custom"))
    raise ConfigError(f"loss must be a name, a jaxcnn.losses loss or a function, got {type(loss).__name__}")


def check_custom(loss: Loss, num_classes: int, labels: Any) -> None:
    """Refuse, before compiling, a loss function that does not map (outputs (B, C), labels as fit
    got them) to one value per example (B,): fit averages those over the batch itself (with the
    sample weights), so a loss already reduced to a scalar would be averaged twice."""
    if not isinstance(loss, CustomLoss):
        return
    import numpy as np

    labels = np.asarray(labels)
    outputs = jax.ShapeDtypeStruct((2, num_classes), jnp.float32)
    given = jax.ShapeDtypeStruct((2, *labels.shape[1:]), labels.dtype)
    shapes = "outputs (B, C) float32 and labels " + ("(B,) int" if labels.ndim == 1 else "(B, C) float")
    try:
        out = jax.eval_shape(loss.fn, outputs, given)
    except Exception as e:  # noqa: BLE001 - the user's function: any error, with the calling convention
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

        def works(*args: Any) -> bool:
            try:
                return getattr(jax.eval_shape(loss.fn, *args), "shape", None) == (2,)
            except Exception:  # noqa: BLE001
                return False

        one_hot = jax.ShapeDtypeStruct((2, num_classes), jnp.float32)
        if labels.ndim == 1 and works(outputs, one_hot):  # optax.softmax_cross_entropy and the like
            fix = ("it takes one-hot labels (B, C): pass y one-hot (jaxcnn.data.one_hot(y, classes)), or a loss for "
                   "integer labels (optax.softmax_cross_entropy_with_integer_labels)")
        elif (swapped := works(given, outputs)) or (labels.ndim == 1 and works(one_hot, outputs)):
            call = f"{loss.name}(labels, outputs)" if loss.name.isidentifier() else "your_loss(labels, outputs)"
            fix = (f"it looks Keras-style, loss(y_true, y_pred): pass lambda outputs, labels: {call}"
                   + ("" if swapped else " with y one-hot (jaxcnn.data.one_hot(y, classes))"))
        else:
            fix = "check that it takes outputs (B, C) and these labels and returns one value per example (B,)"
        raise ConfigError(
            f"the loss {loss.name} failed on {shapes}: {first}. jaxcnn calls a loss as loss(outputs, labels); {fix}"
        ) from None
    if getattr(out, "shape", None) != (2,):
        raise ConfigError(
            f"the loss {loss.name} returned shape {getattr(out, 'shape', type(out).__name__)} for a batch of 2; it must "
            "return one value per example, shape (B,): fit averages them over the batch (with the sample weights), "
            "so drop a final .mean() or .sum()"
        )


def looks_like_probabilities(outputs: Any) -> bool:
    """Whether every row of ``outputs`` (B, C) is a probability distribution (a softmax output):
    non-negative, summing to 1 within 1e-3, or within what rounding to a low-precision output
    dtype leaves (bfloat16's rows of 10 sum to 1 within about 4e-3)."""
    import numpy as np

    import jax.numpy as jnp

    dtype = getattr(outputs, "dtype", None)
    try:
        eps = float(jnp.finfo(dtype).eps) if dtype is not None else 0.0  # jnp's knows bfloat16
    except (TypeError, ValueError):  # an integer output: not probabilities' dtype
        eps = 0.0
    out = np.asarray(outputs, np.float64)
    if out.ndim != 2 or out.shape[1] < 2 or not np.all(np.isfinite(out)):
        return False
    tolerance = max(1e-3, 2 * eps)  # each rounded p_i is off by p_i * eps / 2 at most: the sum by eps / 2
    return bool(np.all(out >= 0) and np.all(np.abs(out.sum(-1) - 1.0) < tolerance))
