"""A Keras-style model summary that also explains each parameter count (report 1.3 and 1.8).

>>> print(jaxcnn.summary(jaxcnn.get_model("mnist_cnn"), (28, 28, 1)))

Layer (type)                 Output Shape           Param #   How the count arises
conv2d (Conv2D)              (None, 26, 26, 32)     320       (3x3x1 + 1) x 32 = 320
...
Total params: 258,090 (1008.16 KB)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import layers as L
from jaxcnn.checks import check_input_shape
from jaxcnn.errors import ConfigError


@dataclass(frozen=True)
class LayerRow:
    """One row of the summary: a direct sub-module of the model."""

    name: str
    kind: str
    output_shape: tuple[Any, ...]
    trainable: int
    non_trainable: int
    explanation: str

    @property
    def params(self) -> int:
        return self.trainable + self.non_trainable


@dataclass(frozen=True)
class Summary:
    """The model summary as data; ``str()`` gives the table."""

    model_name: str
    rows: tuple[LayerRow, ...]

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def non_trainable(self) -> int:
        return sum(r.non_trainable for r in self.rows)

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def __str__(self) -> str:
        return format_summary(self)


def _size(tree: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def readable_memory_size(n_bytes: float) -> str:
    """Keras's size format: 1032360 -> '1008.16 KB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes / 1024 < 1:
            return f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} PB"


def _explain(module: nn.Module, params: dict, stats: dict, n: int) -> str:
    if n == 0:
        return "no parameters"
    kernel = params.get("kernel")
    if isinstance(module, L.Conv2D) and kernel is not None:
        kh, kw, cin, cout = kernel.shape
        bias = " + 1" if "bias" in params else ""
        return f"({kh}x{kw}x{cin}{bias}) x {cout} = {n:,}"
    if isinstance(module, L.Dense) and kernel is not None:
        din, dout = kernel.shape
        bias = " + 1" if "bias" in params else ""
        return f"({din}{bias}) x {dout} = {n:,}" if bias else f"{din} x {dout} = {n:,}"
    if isinstance(module, L.BatchNorm):
        c = _size(params) // 2
        return f"4 x {c} = {n:,} (gamma, beta trainable; moving mean, variance not)"
    return _explain_shapes(params, stats, n)


def model_summary(
    model: nn.Module, input_shape: Sequence[int], *, name: str | None = None, dtype: Any = jnp.float32
) -> Summary:
    """Trace ``model`` on a batch of one ``input_shape`` (no batch axis) and return its :class:`Summary`.

    Nothing is compiled or run: shapes come from ``jax.eval_shape``. Raises the model's own error
    (for example ``ShapeError`` for a kernel too big for its input) if it cannot be built.
    """
    from jaxcnn.train.model import adapt, tracing_errors

    adapter = adapt(model)
    with tracing_errors(model, (1, *tuple(input_shape))):
        if adapter.kind == "nnx":
            return _nnx_summary(model, input_shape, name, dtype, adapter.call_kwargs(False))
        return _linen_summary(model, adapter, input_shape, name, dtype)


def _linen_summary(model: nn.Module, adapter: Any, input_shape: Sequence[int], name: str | None, dtype: Any) -> Summary:
    calls: list[tuple[nn.Module, Any]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and len(mod.scope.path) == 1:
            calls.append((mod, out))
        return out

    x = jax.ShapeDtypeStruct((1, *tuple(input_shape)), dtype)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda x: model.init(rngs, x, **adapter.call_kwargs(False)), x)
    all_params = variables.get("params", {})
    all_stats = variables.get("batch_stats", {})
    rows = []
    seen = set()
    for mod, out in calls:
        layer = mod.scope.path[0]
        if layer in seen:  # a shared module called twice: count it once
            continue
        seen.add(layer)
        params, stats = all_params.get(layer, {}), all_stats.get(layer, {})
        flat_params = _flatten_one_level(params)
        trainable, non_trainable = _size(params), _size(stats)
        out_shape = ("None", *tuple(out.shape[1:])) if hasattr(out, "shape") else ()
        rows.append(
            LayerRow(
                name=layer,
                kind=type(mod).__name__,
                output_shape=out_shape,
                trainable=trainable,
                non_trainable=non_trainable,
                explanation=(_explain(mod, flat_params, stats, trainable + non_trainable) if flat_params is not None
                             else _explain_parts(params, stats, trainable + non_trainable)),
            )
        )
    return Summary(name or getattr(model, "name", None) or type(model).__name__, tuple(rows))


def _nnx_summary(model: Any, input_shape: Sequence[int], name: str | None, dtype: Any, mode: dict[str, bool] | None = None) -> Summary:
    """One row per direct sub-module of an NNX module (in attribute order; the modules of an
    ``nnx.List``, such as ``nnx.Sequential``'s layers, one by one), output shapes from tracing
    each call with ``jax.eval_shape``."""
    from flax import nnx

    outputs: dict[str, Any] = {}
    children = _nnx_children(model)
    originals = {k: type(v).__call__ for k, _, _, v in children}

    def merged():
        m = nnx.merge(*nnx.split(model))
        m.eval()
        return m

    def run(x):
        m = merged()
        for k, attr, index in [(k, attr, index) for k, attr, index, _ in children]:
            child = getattr(m, attr) if index is None else getattr(m, attr)[index]
            call = originals[k]

            def wrapped(*a, _k=k, _call=call, _child=child, **kw):
                out = _call(_child, *a, **kw)
                outputs[_k] = jax.ShapeDtypeStruct(out.shape, out.dtype) if hasattr(out, "shape") else None
                return out

            if index is None:
                setattr(m, attr, _Recorder(child, wrapped))
            else:
                getattr(m, attr)[index] = _Recorder(child, wrapped)
        return m(x, **(mode or {}))  # its mode flag in evaluation, as fit's evaluation sets it

    x = jax.ShapeDtypeStruct((1, *tuple(input_shape)), dtype)
    try:
        jax.eval_shape(run, x)
    except Exception:  # noqa: BLE001 - shapes are a nicety; counts come from the state
        outputs.clear()
        # but a model that cannot take this input at all says so, as a linen model's summary does
        jax.eval_shape(lambda x: merged()(x, **(mode or {})), x)
    rows = []
    for k, _, _, child in children:
        params = nnx.to_pure_dict(nnx.state(child, nnx.Param))
        stats = nnx.to_pure_dict(nnx.state(child, nnx.BatchStat))
        trainable, non_trainable = _size(params), _size(stats)
        out = outputs.get(k)
        out_shape = ("None", *tuple(out.shape[1:])) if out is not None else ("?",)
        n = trainable + non_trainable
        flat = _flatten_one_level(params)
        rows.append(LayerRow(k, type(child).__name__, out_shape, trainable, non_trainable,
                             _explain_shapes(flat, stats, n) if flat is not None else _explain_parts(params, stats, n)))
    return Summary(name or type(model).__name__, tuple(rows))


def _nnx_children(model: Any) -> list[tuple[str, str, int | None, Any]]:
    """(row name, attribute, index in it or None, sub-module) of each row of an NNX summary."""
    from flax import nnx

    out: list[tuple[str, str, int | None, Any]] = []
    for k, v in vars(model).items():
        if isinstance(v, nnx.List) and not any(isinstance(c, nnx.Variable) for c in v):  # Params in it: one row
            out += [(f"{k}.{i}", k, i, c) for i, c in enumerate(v) if isinstance(c, nnx.Module)]
        elif isinstance(v, nnx.Module):
            out.append((k, k, None, v))
    return out


class _Recorder:
    """Stands in for a child module during the summary's trace, recording its output."""

    def __init__(self, child: Any, call: Any):
        self._child, self._call = child, call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._child, name)


def _explain_shapes(params: dict, stats: dict, n: int) -> str:
    """How a count arises from the parameter shapes alone (NNX layers)."""
    if n == 0:
        return "no parameters"
    kernel = params.get("kernel")
    bias = " + 1" if "bias" in params else ""
    if kernel is not None and kernel.ndim == 4:
        kh, kw, cin, cout = kernel.shape
        return f"({kh}x{kw}x{cin}{bias}) x {cout} = {n:,}"
    if kernel is not None and kernel.ndim == 2:
        din, dout = kernel.shape
        return f"({din}{bias}) x {dout} = {n:,}" if bias else f"{din} x {dout} = {n:,}"
    parts = [" x ".join(map(str, leaf.shape)) for leaf in jax.tree.leaves((params, stats))]
    return " + ".join(parts) + f" = {n:,}"


def _flatten_one_level(params: dict) -> dict | None:
    """The leaves of a layer whose parameters sit in one scope, perhaps nested (BatchNorm wraps
    flax's own in a sub-scope), brought up for explanation; None for a block of several layers
    (leaves in more than one scope), which :func:`_explain_parts` explains instead."""
    leaves = {k: v for k, v in params.items() if not isinstance(v, dict)}
    subs = [v for v in params.values() if isinstance(v, dict) and _size(v)]
    if not subs:
        return leaves
    if leaves or len(subs) > 1:
        return None
    return _flatten_one_level(subs[0])


def _explain_parts(params: dict, stats: dict, n: int) -> str:
    """A block's count as the sum of its sub-layers' (``Conv_0 224 + Conv_1 36 = 260``)."""
    names = list(params) + [k for k in stats if k not in params]
    parts = [f"{k} {_size(params.get(k, {})) + _size(stats.get(k, {})):,}" for k in names]
    return " + ".join(parts) + f" = {n:,}"


def _shape_str(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def format_summary(s: Summary, explain: bool = True) -> str:
    """Render a :class:`Summary` as a Keras-style text table."""
    header = ["Layer (type)", "Output Shape", "Param #"] + (["How the count arises"] if explain else [])
    body = [
        [f"{r.name} ({r.kind})", _shape_str(r.output_shape), f"{r.params:,}"] + ([r.explanation] if explain else [])
        for r in s.rows
    ]
    widths = [max(len(row[i]) for row in [header] + body) + 3 for i in range(len(header))]
    line = lambda row: "".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    total_w = sum(widths)
    out = [f'Model: "{s.model_name}"', "_" * total_w, line(header), "=" * total_w]
    for i, row in enumerate(body):
        out.append(line(row))
        out.append(("_" if i < len(body) - 1 else "=") * total_w)
    size = lambda n: readable_memory_size(4 * n)  # noqa: E731  float32 parameters
    out += [
        f"Total params: {s.total:,} ({size(s.total)})",
        f"Trainable params: {s.trainable:,} ({size(s.trainable)})",
        f"Non-trainable params: {s.non_trainable:,} ({size(s.non_trainable)})",
    ]
    return "\n".join(out)


def image_shape(input_shape: Any) -> tuple[int, ...]:
    """``input_shape``, the shape of one input ((H, W, C) for images), checked: a leading batch
    axis, None (Keras's ``(None, 28, 28, 1)``) or a number in a 4-axis shape (``x.shape``), is
    dropped; anything but positive whole numbers is refused, saying what to give."""
    try:
        dims = tuple(input_shape)
    except TypeError:
        raise ConfigError(f"input_shape must be the shape of one input, e.g. (28, 28, 1), got {input_shape!r}") from None
    if len(dims) == 4 or (dims and dims[0] is None):  # (batch, H, W, C)
        dims = dims[1:]
    if not dims or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ConfigError(f"input_shape must be the shape of one input, e.g. (28, 28, 1), got {tuple(input_shape)!r}")
    dims = tuple(int(d) for d in dims)
    check_input_shape(dims)
    return dims


def _module_of(model: Any, input_shape: Sequence[int] | None) -> tuple[Any, Sequence[int]]:
    """``model`` and its input shape; a trained :class:`~jaxcnn.train.TrainState` gives its module
    and the shape it was built for (Keras's ``model.summary()`` after ``fit``)."""
    adapter = getattr(model, "model", None)
    if hasattr(model, "params") and adapter is not None and hasattr(model, "input_shape"):
        if getattr(adapter, "kind", None) == "nnx":
            from flax import nnx

            module = nnx.merge(adapter.graphdef, *adapter.templates)
        else:
            module = adapter.module
        return module, image_shape(input_shape) if input_shape is not None else tuple(model.input_shape)
    if input_shape is None:
        raise ConfigError("summary needs input_shape = (H, W, C) for a module, e.g. summary(model, (28, 28, 1))")
    return model, image_shape(input_shape)


def summary(
    model: Any, input_shape: Sequence[int] | None = None, *, name: str | None = None, explain: bool = True, print_fn=None
) -> str:
    """Keras-style summary of ``model`` (a module, or a trained state) for one input of
    ``input_shape`` = (H, W, C) (a state's own by default; a leading batch axis, as in
    ``(None, 28, 28, 1)`` or a batch's ``x.shape``, is dropped).

    Returns the table as a string (and passes it to ``print_fn`` when given). Each row lists a
    layer, its output shape, its parameter count and, with ``explain``, how the count arises:
    ``(3x3x1 + 1) x 32 = 320``. Size in KB assumes float32 parameters, as Keras prints it.
    """
    model, input_shape = _module_of(model, input_shape)
    text = format_summary(model_summary(model, input_shape, name=name), explain=explain)
    if print_fn is not None:
        print_fn(text)
    return text


__all__ = ["summary", "model_summary", "Summary", "LayerRow", "readable_memory_size", "format_summary"]
