"""Classification metrics as pytrees updated on the device, in the style of CLU.

A :class:`Metric` is a frozen (hashable) dataclass that describes a metric; its *state* is a
pytree of arrays (sums, counts) that the jitted train/eval step updates batch by batch and that
merges by addition, so parts of a batch, devices and batches combine exactly. Only
:meth:`Metric.result` runs on the host, once an epoch::

    ms = get_metrics(["accuracy", "top_k_accuracy", "f1"])
    states = tuple(m.init(num_classes) for m in ms)
    # inside the jitted step, per batch:
    states = tuple(m.update(s, logits, labels, weights) for m, s in zip(ms, states))
    # at the end of the epoch, on the host:
    logs = {k: v for m, s in zip(ms, jax.device_get(states)) for k, v in m.result(s).items()}

``update(state, outputs, labels, weights)`` takes ``outputs`` ``(B, C)`` (logits or
probabilities: every metric here depends only on the ranking of the classes), ``labels`` ``(B,)``
int32 class indices and ``weights`` ``(B,)`` float32: 0 for padding rows, otherwise 1, or the
sample weight for a :class:`Weighted` metric. A weight multiplies the example's contribution to
every count, so weighted accuracy is ``sum(w * correct) / sum(w)`` and precision is
``sum(w * tp) / sum(w * (tp + fp))``.

**Sample and class weights, as Keras.** ``fit``'s and ``evaluate``'s ``sample_weight`` and
``class_weight`` weigh the loss, and only the metrics asked for as ``weighted_metrics``: the
always-logged ``accuracy`` and ``metrics=`` are counted unweighted, as Keras's ``compile(metrics=)``
(``keras/src/trainers/compile_utils.py``: ``CompileMetrics.update_state`` passes the sample
weights to ``weighted_metrics`` only). A weighted metric is logged under its own name, or
``weighted_<name>`` when that name is taken (``weighted_metrics=["accuracy"]`` logs
``weighted_accuracy`` beside ``accuracy``), as Keras names them.

Names for :func:`get_metrics` and their result keys:

* ``"accuracy"`` / ``"acc"`` (also Keras's ``"sparse_categorical_accuracy"`` and
  ``"categorical_accuracy"``): :class:`Accuracy`, key = the name given.
* ``"top_k_accuracy"`` (k = 5; also ``"top_k_categorical_accuracy"``,
  ``"sparse_top_k_categorical_accuracy"``): :class:`TopKAccuracy`, key = the name given; a label
  counts as within the top k if fewer than k classes score strictly higher (Keras's ``in_top_k``).
* ``"precision"``, ``"recall"``, ``"f1"`` (also ``"f1_score"``): :class:`Precision`,
  :class:`Recall`, :class:`F1Score`, per class with the class predicted by argmax. Keys: the
  name (macro mean over all classes, as ``keras.metrics.F1Score(average="macro")``) and
  ``name_0`` ... ``name_{C-1}`` (per class: ``keras.metrics.Precision(top_k=1, class_id=c)``,
  ``Recall(top_k=1, class_id=c)``, ``F1Score(average=None)``). A class never predicted (or never
  present) has precision (recall) 0, as Keras's ``divide_no_nan``.
* ``"confusion_matrix"``: :class:`ConfusionMatrix`, whose result is a ``(C, C)`` array (rows:
  true class, columns: predicted class; integer counts, or sums of the weights as a weighted
  metric), not a float; keep it out of a history.
* A plain function ``fn(y_true, y_pred)``, as Keras accepts: :class:`MeanMetricWrapper`, key =
  ``fn.__name__``. ``y_true`` is the ``(B,)`` int32 class indices (one-hot or soft labels given
  to ``fit`` are argmaxed first, as for every metric here; ``MeanMetricWrapper(fn, one_hot=True)``
  passes ``one_hot(labels, C)`` instead) and ``y_pred`` the model's raw outputs ``(B, C)``. The
  function returns per-example values ``(B,)`` (or ``(B, ...)``, averaged per example) or a
  scalar batch mean; the logged value is their sample-weighted mean over the epoch.

Parity with Keras's metrics, with sample weights, is tested in
``tests/test_keras_parity.py::test_metrics_match_keras`` (tolerance 1e-5; Keras adds an epsilon
of 1e-7 to F1's denominators, here a zero denominator gives 0 exactly). Host helpers:
:func:`confusion_matrix` and :func:`classification_report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import ConfigError, ShapeError
from jaxcnn.losses import is_keras_object

Array = jax.Array


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (Keras's ``divide_no_nan``)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric's description (hashable: a static argument of the jitted step).

    Subclasses implement :meth:`init`, :meth:`update` and :meth:`result`; :meth:`merge` adds
    two states leaf by leaf, which is right for every metric here (all states are sums).
    """

    name: str
    #: Whether the step gives it the sample weights (Keras's ``weighted_metrics``), or only the
    #: padding mask (Keras's ``metrics``).
    weighted: ClassVar[bool] = False

    def init(self, num_classes: int) -> Any:
        """The zero state for ``num_classes`` classes: a pytree of ``jnp`` zeros."""
        raise NotImplementedError

    def update(self, state: Any, outputs: Array, labels: Array, weights: Array) -> Any:
        """``state`` plus one batch: ``outputs`` (B, C), ``labels`` (B,) int, ``weights`` (B,). Pure."""
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        """The state of the union of what ``a`` and ``b`` saw (their sum)."""
        return jax.tree.map(jnp.add, a, b)

    def result(self, state: Any) -> dict[str, Any]:
        """The metric's values by log key, computed on the host from a (numpy) state."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Accuracy(Metric):
    """``sum(w * (argmax(outputs) == label)) / sum(w)`` (``keras.metrics.SparseCategoricalAccuracy``)."""

    name: str = "accuracy"

    def init(self, num_classes: int) -> Any:
        return {"correct": jnp.zeros((), jnp.float32), "weight": jnp.zeros((), jnp.float32)}

    def update(self, state, outputs, labels, weights):
        correct = (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32)
        w = weights.astype(jnp.float32)
        return {"correct": state["correct"] + jnp.sum(w * correct), "weight": state["weight"] + jnp.sum(w)}

    def result(self, state):
        return {self.name: float(_divide(state["correct"], state["weight"]))}


@dataclasses.dataclass(frozen=True, init=False)
class TopKAccuracy(Metric):
    """Weighted share of examples whose label is among the ``k`` highest outputs
    (``keras.metrics.SparseTopKCategoricalAccuracy(k)``; ties count in the label's favour).

    ``TopKAccuracy(3)`` logs ``top_3_accuracy`` unless given a ``name``.
    """

    k: int = 5

    def __init__(self, k: int = 5, name: str | None = None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"TopKAccuracy: k must be a positive integer, got {k!r}")
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "name", name or f"top_{k}_accuracy")

    def init(self, num_classes: int) -> Any:
        return {"correct": jnp.zeros((), jnp.float32), "weight": jnp.zeros((), jnp.float32)}

    def update(self, state, outputs, labels, weights):
        at_label = jnp.take_along_axis(outputs, labels[:, None].astype(jnp.int32), axis=-1)
        at_label = jnp.where(jnp.isnan(at_label), -jnp.inf, at_label)
        rank = 1 + jnp.sum(outputs > at_label, axis=-1)
        correct = (rank <= self.k).astype(jnp.float32)
        w = weights.astype(jnp.float32)
        return {"correct": state["correct"] + jnp.sum(w * correct), "weight": state["weight"] + jnp.sum(w)}

    def result(self, state):
        return {self.name: float(_divide(state["correct"], state["weight"]))}


def _counts(outputs: Array, labels: Array, weights: Array, num_classes: int) -> dict[str, Array]:
    """Weighted true positives, false positives and false negatives per class (argmax prediction)."""
    pred = jax.nn.one_hot(jnp.argmax(outputs, axis=-1), num_classes, dtype=jnp.float32)
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    w = weights.astype(jnp.float32)[:, None]
    return {
        "tp": jnp.sum(w * pred * true, axis=0),
        "fp": jnp.sum(w * pred * (1 - true), axis=0),
        "fn": jnp.sum(w * (1 - pred) * true, axis=0),
    }


@dataclasses.dataclass(frozen=True)
class _PerClass(Metric):
    def init(self, num_classes: int) -> Any:
        z = jnp.zeros((num_classes,), jnp.float32)
        return {"tp": z, "fp": z, "fn": z}

    def update(self, state, outputs, labels, weights):
        c = _counts(outputs, labels, weights, outputs.shape[-1])
        return {k: state[k] + c[k] for k in ("tp", "fp", "fn")}

    def per_class(self, state) -> np.ndarray:
        raise NotImplementedError

    def result(self, state):
        values = self.per_class(state)
        out = {self.name: float(np.mean(values)) if values.size else 0.0}
        out.update({f"{self.name}_{i}": float(v) for i, v in enumerate(values)})
        return out


@dataclasses.dataclass(frozen=True)
class Precision(_PerClass):
    """Per-class precision ``tp / (tp + fp)`` with argmax predictions; keys ``precision`` (macro
    mean) and ``precision_{c}`` (``keras.metrics.Precision(top_k=1, class_id=c)``)."""

    name: str = "precision"

    def per_class(self, state):
        return _divide(state["tp"], np.asarray(state["tp"]) + np.asarray(state["fp"]))


@dataclasses.dataclass(frozen=True)
class Recall(_PerClass):
    """Per-class recall ``tp / (tp + fn)``; keys ``recall`` (macro mean) and ``recall_{c}``
    (``keras.metrics.Recall(top_k=1, class_id=c)``)."""

    name: str = "recall"

    def per_class(self, state):
        return _divide(state["tp"], np.asarray(state["tp"]) + np.asarray(state["fn"]))


@dataclasses.dataclass(frozen=True)
class F1Score(_PerClass):
    """Per-class F1 ``2 p r / (p + r)``; keys ``f1`` (macro mean, ``keras.metrics.F1Score(average=
    "macro")``) and ``f1_{c}`` (``F1Score(average=None)``, argmax predictions)."""

    name: str = "f1"

    def per_class(self, state):
        p = _divide(state["tp"], np.asarray(state["tp"]) + np.asarray(state["fp"]))
        r = _divide(state["tp"], np.asarray(state["tp"]) + np.asarray(state["fn"]))
        return _divide(2 * p * r, p + r)


@dataclasses.dataclass(frozen=True)
class ConfusionMatrix(Metric):
    """``(C, C)`` confusion matrix: entry ``[t, p]`` counts the examples of true class ``t``
    predicted as ``p`` (argmax), as integers; as a weighted metric (``weighted_metrics=``) it
    sums their weights, as floats. Its result is an array, not a float."""

    name: str = "confusion_matrix"

    def init(self, num_classes: int) -> Any:
        return jnp.zeros((num_classes, num_classes), jnp.float32)

    def update(self, state, outputs, labels, weights):
        c = outputs.shape[-1]
        pred = jax.nn.one_hot(jnp.argmax(outputs, axis=-1), c, dtype=jnp.float32)
        true = jax.nn.one_hot(labels, c, dtype=jnp.float32) * weights.astype(jnp.float32)[:, None]
        return state + true.T @ pred

    def result(self, state):
        # every weight is 1 here (metrics= count each example once): float32 sums of ones are
        # exact up to 2**24 examples per cell
        return {self.name: np.rint(np.asarray(state)).astype(np.int64)}

    def weighted_result(self, state):
        return {self.name: np.asarray(state)}


# Keys fit logs itself: a metric named so would shadow them (or be dropped, for accuracy).
#: What ``fit`` logs after the metrics each epoch, in this order (not metrics: never shown as one).
FIT_TAIL = ("learning_rate", "time_s", "examples_per_s", "train_time_s")
_RESERVED = frozenset({"loss", "accuracy", "acc", *FIT_TAIL})


@dataclasses.dataclass(frozen=True, init=False)
class MeanMetricWrapper(Metric):
    """A plain function ``fn(y_true, y_pred)`` as a metric: the sample-weighted mean of its
    per-example values over the epoch (``keras.metrics.MeanMetricWrapper``). ``fit(...,
    metrics=[fn])`` wraps a function in this; the log key is ``name`` (default ``fn.__name__``).

    ``fn`` runs inside the jitted step on ``y_true`` = the batch's ``(B,)`` int32 class indices
    (one-hot or soft labels are argmaxed first, as for every metric here) or, with ``one_hot``,
    ``one_hot(labels, C)`` float32; and ``y_pred`` = the model's raw outputs ``(B, C)`` (logits,
    or probabilities for a softmax head). It returns per-example values ``(B,)`` (extra axes are
    averaged per example) or a scalar batch mean; for a scalar, ``fn`` is applied to each example
    alone (``vmap`` over batches of one), so padding rows and the split of a batch into parts or
    devices never change the result: it must then be a mean over examples, as Keras's are.
    """

    fn: Callable[..., Any] | None = None
    one_hot: bool = False

    def __init__(self, fn: Callable[..., Any], name: str | None = None, one_hot: bool = False):
        if not callable(fn) or isinstance(fn, (Metric, type)):
            raise ConfigError(f"MeanMetricWrapper: fn must be a function (y_true, y_pred) -> values, got {fn!r}")
        name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(
                f"metric function {fn!r} has no usable name ({name!r}) to log it under; "
                "define it with def, or pass jaxcnn.metrics.MeanMetricWrapper(fn, name='my_metric')"
            )
        if name in _RESERVED or name.startswith("val_"):
            raise ConfigError(
                f"metric function {fn!r} is named {name!r}, a key fit logs itself; rename it or pass "
                "jaxcnn.metrics.MeanMetricWrapper(fn, name='my_metric')"
            )
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "one_hot", bool(one_hot))

    def init(self, num_classes: int) -> Any:
        return {"total": jnp.zeros((), jnp.float32), "weight": jnp.zeros((), jnp.float32)}

    def _values(self, y_true: Array, y_pred: Array) -> Array:
        """The function's per-example values ``(B,)`` float32."""
        b = y_pred.shape[0]
        values = jnp.asarray(self.fn(y_true, y_pred))
        if values.ndim == 0:  # a batch mean: the mean of each example alone
            def one(t, p):
                v = jnp.asarray(self.fn(t[None], p[None]))
                if v.size != 1:
                    raise ShapeError(f"metric {self.name!r}: {self.fn!r} returned shape {v.shape} for one example; return (B,) or a scalar")
                return v.reshape(())

            values = jax.vmap(one)(y_true, y_pred)
        elif values.shape[0] == b:
            values = values.reshape(b, -1).astype(jnp.float32).mean(axis=-1)
        else:
            raise ShapeError(
                f"metric {self.name!r}: {self.fn!r} returned shape {values.shape} for a batch of {b}; "
                "return per-example values (B,) or a scalar batch mean"
            )
        return values.astype(jnp.float32)

    def update(self, state, outputs, labels, weights):
        y_true = jax.nn.one_hot(labels, outputs.shape[-1], dtype=jnp.float32) if self.one_hot else labels
        w = weights.astype(jnp.float32)
        values = jnp.where(w > 0, self._values(y_true, outputs), 0.0)  # a NaN in a padding row counts nothing
        return {"total": state["total"] + jnp.sum(w * values), "weight": state["weight"] + jnp.sum(w)}

    def result(self, state):
        return {self.name: float(_divide(state["total"], state["weight"]))}


_NAMES: dict[str, Any] = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "sparse_categorical_accuracy": Accuracy,
    "categorical_accuracy": Accuracy,
    "top_k_accuracy": TopKAccuracy,
    "top_k_categorical_accuracy": TopKAccuracy,
    "sparse_top_k_categorical_accuracy": TopKAccuracy,
    "precision": Precision,
    "recall": Recall,
    "f1": F1Score,
    "f1_score": F1Score,
    "confusion_matrix": ConfusionMatrix,
}


#: ``keras.metrics`` classes and the jaxcnn name that computes the same (Accuracy: always logged).
_KERAS_NAMES = {
    "SparseCategoricalAccuracy": "accuracy", "CategoricalAccuracy": "accuracy",
    "TopKCategoricalAccuracy": "top_k_accuracy", "SparseTopKCategoricalAccuracy": "top_k_accuracy",
    "Precision": "precision", "Recall": "recall", "F1Score": "f1",
}


def _refuse_keras_metric(metric: Any) -> None:
    """A Keras metric object keeps Keras variables and runs Keras's ops, outside jaxcnn's compiled
    step: refuse it, naming the jaxcnn metric to pass instead."""
    if not is_keras_object(metric):
        return
    cls = metric if isinstance(metric, type) else type(metric)
    ours = _KERAS_NAMES.get(cls.__name__)
    if ours == "accuracy":
        instead = "drop it: fit always logs accuracy (as 'accuracy' and 'val_accuracy')"
    elif ours is not None:
        note = ", jaxcnn's macro mean over classes with per-class keys," if ours in ("precision", "recall", "f1") else ""
        instead = f"pass metrics=[{ours!r}] instead{note} (accuracy is always logged)"
    else:
        instead = ("pass a jaxcnn.metrics name such as 'f1' or 'top_k_accuracy' (accuracy is always logged), "
                   "a jaxcnn.metrics.Metric, or a function (y_true, y_pred) -> per-example values")
    raise ConfigError(f"{cls.__name__} is a Keras metric, and Keras metric objects cannot run inside jaxcnn's compiled step; {instead}")


def get_metric(metric: str | Metric | Callable[..., Any]) -> Metric:
    """A :class:`Metric` from a name (see the module docstring), a :class:`Metric` itself (or its
    class, made with its defaults), or a plain function ``fn(y_true, y_pred)``
    (:class:`MeanMetricWrapper`, logged as ``fn.__name__``). A Keras metric object is refused
    with the name to pass instead."""
    if isinstance(metric, Metric):
        return metric
    _refuse_keras_metric(metric)
    if isinstance(metric, str) and metric.lower() in _NAMES:
        return _NAMES[metric.lower()](name=metric)
    if isinstance(metric, type) and issubclass(metric, Metric) and metric is not Metric:
        return metric()
    if callable(metric) and not isinstance(metric, type):
        return MeanMetricWrapper(metric)
    import difflib

    close = difflib.get_close_matches(str(metric).lower(), list(_NAMES), n=1, cutoff=0.7)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"unknown metric {metric!r}{hint}; use one of {', '.join(_NAMES)}, a jaxcnn.metrics.Metric "
        "or a function (y_true, y_pred) -> per-example values"
    )


def get_metrics(metrics: Sequence[str | Metric | Callable[..., Any]] | None) -> tuple[Metric, ...]:
    """The :class:`Metric` objects for ``metrics`` (names, metrics or functions), checked for
    clashing names."""
    if metrics is None:
        return ()
    if isinstance(metrics, (str, Metric)) or callable(metrics):
        metrics = [metrics]
    out = tuple(get_metric(m) for m in metrics)
    names = [m.name for m in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"metrics {dupes} are given more than once; give each metric once (or distinct names)")
    return out


@dataclasses.dataclass(frozen=True, init=False)
class Weighted(Metric):
    """``metric`` counted with the sample and class weights (Keras's ``weighted_metrics``),
    logged as ``name`` (default: the metric's own name). ``fit(weighted_metrics=[...])`` makes
    these, naming one ``weighted_<name>`` when its name is taken, as Keras does."""

    metric: Metric
    weighted: ClassVar[bool] = True

    def __init__(self, metric: str | Metric | Callable[..., Any], name: str | None = None):
        inner = get_metric(metric)
        if isinstance(inner, Weighted):
            inner = inner.metric
        object.__setattr__(self, "metric", inner)
        object.__setattr__(self, "name", name or inner.name)

    def init(self, num_classes: int) -> Any:
        return self.metric.init(num_classes)

    def update(self, state, outputs, labels, weights):
        return self.metric.update(state, outputs, labels, weights)

    def result(self, state: Any) -> dict[str, Any]:
        inner = self.metric.name
        result = getattr(self.metric, "weighted_result", self.metric.result)(state)  # weighted counts stay floats
        return {(self.name + k[len(inner):] if k.startswith(inner) else k): v for k, v in result.items()}


def with_weighted(metrics: Sequence[Any] | None, weighted_metrics: Sequence[Any] | None) -> tuple[Metric, ...]:
    """``metrics`` (counted unweighted) then ``weighted_metrics`` as :class:`Weighted`, each
    named ``weighted_<name>`` where ``loss``, ``accuracy`` or a metric has its name (Keras's
    naming). Accuracy in ``metrics`` is left out: ``fit`` always logs it."""
    plain = tuple(m for m in get_metrics(metrics) if m.name not in ("accuracy", "acc"))
    taken = {"loss", "accuracy", *(m.name for m in plain)}
    out = list(plain)
    for m in get_metrics(weighted_metrics):
        inner = m.metric if isinstance(m, Weighted) else m
        name = "accuracy" if m.name == "acc" else m.name
        name = f"weighted_{name}" if name in taken else name
        taken.add(name)
        out.append(Weighted(inner, name=name))
    return tuple(out)


# -- host helpers ------------------------------------------------------------------------------


def _as_classes(y: Any, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # class indices as a column (N, 1), as fit takes them
        y = y.reshape(-1)
    elif y.ndim == 2:  # one-hot labels, probabilities or logits
        y = np.argmax(y, axis=-1)
    if y.ndim != 1:
        raise ShapeError(f"{what} must be class indices (N,) or scores (N, C), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ShapeError(f"{what} holds non-integer class indices; pass int labels or (N, C) scores")
        y = y.astype(np.int64)
    return y.astype(np.int64)


def _check_labels(t: np.ndarray, p: np.ndarray, n: int | None = None, fix: Callable[[int], str] | None = None) -> None:
    """Refuse a class index below 0, or (``n`` given) at ``n`` or above, in one line; ``fix(needed)``
    says what to do about one too large (``needed``: the number of classes the labels ask for)."""
    needed = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    for name, y in (("y_true", t), ("y_pred", p)):
        if (y < 0).any():
            raise ShapeError(f"{name} holds class {int(y[y < 0][0])}; class labels must be 0 or more (0..C-1): fix the labels")
    for name, y in (("y_true", t), ("y_pred", p)):
        if n is not None and fix is not None and (y >= n).any():
            raise ShapeError(f"{name} holds class {int(y[y >= n][0])}, outside 0..{n - 1}; {fix(needed)}")


def _weights(sample_weight: Any, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ShapeError(f"sample_weight has {w.shape[0]} values for {n} labels; they must match one to one")
    return w


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_classes(y_true, "y_true"), _as_classes(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ShapeError(f"y_true has {t.shape[0]} labels and y_pred {p.shape[0]}; they must match one to one")
    return t, p


def _count(t: np.ndarray, p: np.ndarray, n: int, w: np.ndarray | None) -> np.ndarray:
    out = np.zeros((n, n), np.int64 if w is None else np.float64)
    np.add.at(out, (t, p), 1 if w is None else w)
    return out


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None, sample_weight: Any = None) -> np.ndarray:
    """``(C, C)`` confusion matrix on the host: ``[t, p]`` counts (or sums the sample weights of)
    the examples of true class ``t`` predicted as ``p``.

    ``y_true`` and ``y_pred`` are class indices ``(N,)`` or scores/one-hot ``(N, C)`` (argmaxed).
    ``num_classes`` defaults to the largest class seen plus one. Integer counts without weights.
    A class below 0, or at ``num_classes`` or above, is refused (``ShapeError``).
    """
    t, p = _pair(y_true, y_pred)
    n = int(num_classes) if num_classes is not None else int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    _check_labels(t, p, n, lambda needed: f"pass num_classes={needed} or fix the labels")
    return _count(t, p, n, _weights(sample_weight, t.shape[0]))


def classification_report(
    y_true: Any, y_pred: Any, class_names: Sequence[str] | None = None, sample_weight: Any = None, digits: int = 3
) -> str:
    """A text table of per-class precision, recall, F1 and support, then accuracy and the macro
    and support-weighted averages (the layout of scikit-learn's ``classification_report``).

    ``y_true``/``y_pred`` as in :func:`confusion_matrix`. The rows, and so the macro average,
    follow scikit-learn:

    * without ``class_names``, one row per class that occurs in ``y_true`` or ``y_pred`` (their
      sorted union, scikit-learn's ``unique_labels``), named by its index: a class seen in neither
      has no row and does not pull the macro average down;
    * with ``class_names``, ``class_names[i]`` names class ``i`` and every class ``0..len-1``
      has a row, those never seen with support 0 and precision, recall and F1 0 (counted in the
      macro average), as scikit-learn's ``classification_report(y_true, y_pred,
      labels=range(len(class_names)), target_names=class_names)``. A class at
      ``len(class_names)`` or above is refused (``ShapeError``): give a name per class.

    Precision (recall) is 0 where nothing was predicted as (is truly) the class, as
    scikit-learn's default ``zero_division``. With ``sample_weight`` the counts and supports are
    sums of the weights.
    """
    t, p = _pair(y_true, y_pred)
    w = _weights(sample_weight, t.shape[0])
    if class_names is not None:
        names = [str(c) for c in class_names]
        _check_labels(t, p, len(names), lambda needed: (
            f"classification_report has {len(names)} class_names, one per class 0..{len(names) - 1}; "
            f"give a name per class ({needed} names, for 0..{needed - 1}) or fix the labels"))
        cm = _count(t, p, len(names), w).astype(np.float64)
    else:
        _check_labels(t, p)  # negatives only
        labels = np.union1d(t, p)  # scikit-learn's unique_labels: the classes seen, sorted
        names = [str(int(c)) for c in labels]
        cm = _count(np.searchsorted(labels, t), np.searchsorted(labels, p), len(labels), w).astype(np.float64)
    n = cm.shape[0]
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    precision = _divide(tp, cm.sum(axis=0))
    recall = _divide(tp, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    total = support.sum()
    width = max([len(s) for s in names] + [len("weighted avg")])

    def fmt_support(v: float) -> str:
        return f"{int(v)}" if float(v).is_integer() else f"{v:.{digits}f}"

    head = f"{'':>{width}} {'precision':>10} {'recall':>10} {'f1-score':>10} {'support':>10}"
    lines = [head, ""]
    for i, name in enumerate(names):
        lines.append(
            f"{name:>{width}} {precision[i]:>10.{digits}f} {recall[i]:>10.{digits}f} {f1[i]:>10.{digits}f} {fmt_support(support[i]):>10}"
        )
    lines.append("")
    acc = float(_divide(tp.sum(), total))
    lines.append(f"{'accuracy':>{width}} {'':>10} {'':>10} {acc:>10.{digits}f} {fmt_support(total):>10}")
    share = _divide(support, total)
    for label, avg in (("macro avg", np.mean), ("weighted avg", lambda v: float(np.sum(v * share)))):
        p, r, f = (avg(v) if n else 0.0 for v in (precision, recall, f1))
        lines.append(f"{label:>{width}} {p:>10.{digits}f} {r:>10.{digits}f} {f:>10.{digits}f} {fmt_support(total):>10}")
    return "\n".join(lines)
