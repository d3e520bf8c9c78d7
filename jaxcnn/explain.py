"""Why a model predicts what it does: gradient saliency, SmoothGrad, integrated gradients and Grad-CAM.

Each function takes the trained state (what :func:`jaxcnn.fit` returns, or
:func:`jaxcnn.checkpoint.load_state`'s) and images ``x`` (N, H, W, C) as :func:`jaxcnn.predict`
does, and explains one class per image, ``target``: the predicted class by default, one class for
all (an int) or one per image (N,). The score explained is the class's logit, or, for a model that
ends in a softmax, the log of its probability (a probability saturates, its log does not). The
model runs in evaluation mode (dropout off, BatchNorm's moving averages), as in ``predict``; any
Flax linen or NNX model works, the registry's and your own.

>>> from jaxcnn import explain, plots
>>> maps = explain.grad_cam(state, x[:8])                 # (8, H, W) in [0, 1], the last conv layer's
>>> plots.save(plots.explanations(x[:8], maps), "grad-cam.png")

- :func:`saliency`: the largest absolute gradient of the score over each pixel's channels
  (Simonyan et al., 2014); ``samples=25`` averages the gradients of noisy copies first
  (SmoothGrad, Smilkov et al., 2017), which is less speckled.
- :func:`integrated_gradients`: each input value's share of ``score(x) - score(baseline)``
  (Sundararajan et al., 2017), (N, H, W, C); the shares add up to that difference, within the
  error of the ``steps``-point integral (see :func:`integrated_gradients`).
- :func:`grad_cam`: where a convolutional layer's feature maps weigh for the class (Selvaraju
  et al., 2017), scaled to the input's size and to [0, 1]; :func:`layer_names` lists the layers
  it can use (those with (B, h, w, channels) outputs), by default the last convolution (or block
  of a network of blocks), as Keras's Grad-CAM example picks.
- :func:`gradients`: the raw input gradients, (N, H, W, C), for methods of your own.
- :func:`feature_maps`: a layer's output, (N, h, w, channels), what the layer sees.

Images are explained ``batch_size`` at a time in one compiled program (the last batch padded),
so a few hundred images take seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import checks
from jaxcnn.errors import ConfigError, ShapeError

__all__ = ["gradients", "saliency", "integrated_gradients", "grad_cam", "feature_maps", "layer_names"]

#: images explained in one program when no ``batch_size`` is given.
BATCH = 32

Inject = tuple[str, Callable[[jax.Array], jax.Array]] | None


# -- running the model with a hook on one layer -------------------------------------------------


def _variables(state: Any) -> dict[str, Any]:
    return {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}


def _linen_forward(model: Any, variables: Any, x: jax.Array, hook: Callable[[str, Any], Any] | None) -> Any:
    import flax.linen as nn

    def call() -> Any:
        return model.module.apply(variables, x, rngs={"dropout": jax.random.key(0)}, **model.call_kwargs(False))

    if hook is None:
        return call()

    active: set[int] = set()  # modules inside their own __call__: a super().__call__ is hooked once

    def intercept(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        scope = getattr(context.module, "scope", None)
        if context.method_name != "__call__" or scope is None or not scope.path or id(context.module) in active:
            return next_fun(*args, **kwargs)
        active.add(id(context.module))
        try:
            out = next_fun(*args, **kwargs)
        finally:
            active.discard(id(context.module))
        return hook("/".join(map(str, scope.path)), context.module, out)

    with nn.intercept_methods(intercept):
        return call()


@contextlib.contextmanager
def _nnx_hooks(module: Any, hook: Callable[[str, Any], Any]) -> Iterator[None]:
    """Every sub-module's ``__call__`` passes its output through ``hook(path, module, output)``, for the
    duration (NNX calls a module through its class, so the classes' methods are wrapped, and
    each wrapper finds its module's path by identity)."""
    from flax import nnx

    paths = {id(node): "/".join(map(str, path)) for path, node in nnx.iter_graph(module)
             if path and isinstance(node, nnx.Module)}
    classes = {type(node) for path, node in nnx.iter_graph(module) if path and isinstance(node, nnx.Module)}
    calls = {cls: cls.__call__ for cls in classes}  # before any is wrapped: a subclass's is not its parent's wrapper
    active: set[int] = set()  # modules inside their own __call__: a super().__call__ is hooked once
    saved = []
    for cls, call in calls.items():
        def wrapped(self: Any, *args: Any, _call: Any = call, **kwargs: Any) -> Any:
            path = paths.get(id(self))
            if path is None or id(self) in active:
                return _call(self, *args, **kwargs)
            active.add(id(self))
            try:
                out = _call(self, *args, **kwargs)
            finally:
                active.discard(id(self))
            return hook(path, self, out)

        saved.append((cls, cls.__dict__.get("__call__")))
        cls.__call__ = functools.wraps(call)(wrapped)
    try:
        yield
    finally:
        for cls, own in saved:
            if own is None:
                del cls.__call__
            else:
                cls.__call__ = own


def _nnx_forward(model: Any, variables: Any, x: jax.Array, hook: Callable[[str, Any], Any] | None) -> Any:
    module = model._merge(variables)
    module.eval()
    if hook is None:
        return module(x, **model.call_kwargs(False))
    with _nnx_hooks(module, hook):
        return module(x, **model.call_kwargs(False))


def _forward(state: Any, x: jax.Array, hook: Callable[[str, Any], Any] | None = None) -> jax.Array:
    """The model's outputs for ``x`` in evaluation mode, float32, each layer's output passed
    through ``hook(name, module, output)`` (its return replaces the output)."""
    forward = _nnx_forward if state.model.kind == "nnx" else _linen_forward
    return jnp.asarray(forward(state.model, _variables(state), x, hook), jnp.float32)


def _scores(outputs: jax.Array, targets: jax.Array, probs: bool) -> jax.Array:
    """The explained score of each row: the target's logit, or its log-probability."""
    picked = jnp.take_along_axis(outputs, targets[:, None], axis=-1)[:, 0]
    return jnp.log(jnp.clip(picked, 1e-7, 1.0)) if probs else picked


def _is_4d(out: Any) -> bool:
    return hasattr(out, "shape") and hasattr(out, "dtype") and len(out.shape) == 4


def _has_params(module: Any) -> int:
    """2 for a layer with a kernel (a weight of two or more axes: a convolution, or a block
    holding one), 1 for one with only per-channel weights (a normalisation's scale and bias),
    0 for none."""
    leaves = None
    try:
        from flax import nnx

        if isinstance(module, nnx.Module):
            leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    except ImportError:  # pragma: no cover
        pass
    if leaves is None:
        leaves = jax.tree.leaves(module.variables.get("params", {}))
    return 2 if any(jnp.ndim(leaf) >= 2 for leaf in leaves) else int(bool(leaves))


def _traced_layers(state: Any) -> tuple[list[tuple[str, tuple[int, ...], int]], dict[str, int]]:
    """(name, output shape, its weights as :func:`_has_params` grades them) of every layer called once with a (B, h, w,
    channels) output, in the order their calls end, and how many times each layer with such an
    output was called; found by tracing one image (nothing runs)."""
    seen: dict[str, tuple[tuple[int, ...], int]] = {}
    calls: dict[str, int] = {}
    outputs: dict[str, Any] = {}

    def record(name: str, module: Any, out: Any) -> Any:
        if _is_4d(out):
            seen.pop(name, None)  # where its last call ends
            seen[name] = (tuple(int(d) for d in out.shape[1:]), _has_params(module))
            calls[name] = calls.get(name, 0) + 1
            outputs[name] = out
        return out

    x = jax.ShapeDtypeStruct((1, *state.input_shape), jnp.float32)
    jax.eval_shape(lambda s, x: _forward(s, x, record), state, x)
    # a layer inside another whose output is the outer one's (jaxcnn.layers.BatchNorm's inner
    # "bn"): the same activation under two names, listed once, by the outer (the summary's) name
    inner = {n for n in seen for o in seen if n.startswith(o + "/") and outputs[n] is outputs[o]}
    once = [(name, shape, weights) for name, (shape, weights) in seen.items() if calls[name] == 1 and name not in inner]
    return once, calls


def _default_layer(layers: list[tuple[str, tuple[int, ...], int]]) -> str:
    """The last layer with feature maps and a kernel that is not inside another such layer (the
    last convolution, not the BatchNorm after it; or the last block of a network of blocks), else
    the last with any weights, else the last with feature maps."""
    for grade in (2, 1):
        weighed = [name for name, _, weights in layers if weights >= grade]
        outer = [n for n in weighed if not any(n.startswith(o + "/") for o in weighed)]
        if outer:
            return outer[-1]
    return layers[-1][0]


def layer_names(state: Any) -> list[str]:
    """The layers :func:`grad_cam` can explain, those whose output is a batch of feature maps
    (B, h, w, channels) and are called once in a forward pass (a layer shared by two calls has
    two activations), in the order their calls end. Its default is the last of them with a
    kernel that is not inside another (the last convolution, not a BatchNorm after it; or the
    last block of a network built of blocks), else the last with weights, else the last. A linen
    layer is named by its path of module names (``"Conv_1"``, ``"block/conv"``), an NNX layer by
    its attribute path (``"conv2"``, ``"blocks/0"``)."""
    return [name for name, _, _ in _traced_layers(_state(state, "layer_names"))[0]]


# -- the common checks --------------------------------------------------------------------------


def _state(state: Any, what: str) -> Any:
    from jaxcnn.train.loop import state_of

    return state_of(state, f"explain.{what}")


def _prepare(state: Any, x: Any, target: Any, batch_size: int, what: str) -> tuple[Any, np.ndarray, np.ndarray, bool]:
    """The state, the images (float32), one target class per image and whether the outputs are
    probabilities; every check before anything compiles."""
    from jaxcnn.train.loop import _check_arrays

    state = _state(state, what)
    _check_arrays(x, None, f"explain.{what}(state, x)", labels=False)
    xs = np.ascontiguousarray(checks.check_images(x, state.input_shape, "x"), np.float32)
    checks.check_positive_int(batch_size, "batch_size")
    if target is None:
        from jaxcnn.train.loop import predict

        targets = predict(state, xs, output="classes").astype(np.int32)
    else:
        t = np.asarray(target)
        if t.ndim == 0:
            t = np.full(len(xs), t)
        if t.shape != (len(xs),) or not (np.issubdtype(t.dtype, np.integer) or t.dtype == bool):
            raise ShapeError(
                f"target must be one class (an int) or one class per image, shape ({len(xs)},) of ints; got "
                f"{'an array of shape ' + str(t.shape) if t.shape != (len(xs),) else 'dtype ' + str(t.dtype)}; "
                "leave it out to explain each image's predicted class"
            )
        bad = (t < 0) | (t >= state.num_classes)
        if bad.any():
            raise ShapeError(f"target {int(t[bad][0])} is outside the model's classes 0..{state.num_classes - 1}")
        targets = t.astype(np.int32)
    from jaxcnn.train.state import with_outputs_decided

    state = with_outputs_decided(state, xs)  # a loss replaced by an undecided one: as fit would decide it
    return state, xs, targets, state.outputs_are_probs


def _batched(fn: Callable[..., jax.Array], arrays: tuple[np.ndarray, ...], batch_size: int) -> np.ndarray:
    """``fn(*batches)`` over ``batch_size`` rows of each of ``arrays`` (images, targets and any
    other per-image array) at a time, the last batch padded with copies of its first row so that
    one program serves every batch."""
    n = len(arrays[0])
    size = min(batch_size, n)
    out = []
    for start in range(0, n, size):
        parts = [a[start:start + size] for a in arrays]
        k = len(parts[0])
        if k < size:
            parts = [np.concatenate([p, np.repeat(p[:1], size - k, 0)]) for p in parts]
        out.append(np.asarray(fn(*map(jnp.asarray, parts)))[:k])
    return np.concatenate(out)


# -- the methods --------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("probs",))
def _input_grads(state: Any, x: jax.Array, targets: jax.Array, probs: bool) -> jax.Array:
    return jax.grad(lambda x: _scores(_forward(state, x), targets, probs).sum())(x)


def gradients(state: Any, x: Any, target: Any = None, *, batch_size: int = BATCH) -> np.ndarray:
    """The gradient of each image's score (the ``target`` class's logit, or log-probability for
    a softmax output) with respect to its pixels: (N, H, W, C) float32."""
    state, xs, targets, probs = _prepare(state, x, target, batch_size, "gradients")
    return _batched(lambda xb, tb: _input_grads(state, xb, tb, probs), (xs, targets), batch_size)


@functools.partial(jax.jit, static_argnames=("probs", "samples"))
def _smooth_grads(state: Any, x: jax.Array, targets: jax.Array, index: jax.Array, sigma: jax.Array, key: jax.Array,
                  probs: bool, samples: int) -> jax.Array:
    grad = jax.grad(lambda x: _scores(_forward(state, x), targets, probs).sum())
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)  # by the image's index: any batch size

    def body(total: jax.Array, s: jax.Array) -> tuple[jax.Array, None]:
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, s), x.shape[1:], x.dtype))(keys)
        return total + grad(x + noise * sigma[:, None, None, None]), None

    total, _ = jax.lax.scan(body, jnp.zeros_like(x), jnp.arange(samples))
    return total / samples


def saliency(state: Any, x: Any, target: Any = None, *, samples: int = 0, noise: float = 0.15, seed: int = 0,
             batch_size: int = BATCH) -> np.ndarray:
    """A saliency map per image, (N, H, W) float32: the largest absolute value over the channels
    of the gradient of the ``target`` class's score with respect to each pixel.

    ``samples=0`` (the default) takes the plain gradient (Simonyan et al.); ``samples=n`` the
    mean gradient over ``n`` copies of the image with Gaussian noise added, of standard deviation
    ``noise`` times the image's value range (SmoothGrad; its authors suggest ``n`` about 25-50 and
    ``noise`` 0.1-0.2). ``seed`` draws the noise, image ``i`` of ``x`` from ``(seed, i)`` at any
    ``batch_size``, so the same call gives the same map (the same image at another index of ``x``
    gets other noise, and a map within the noise's spread)."""
    samples = checks.check_positive_int(samples, "samples", minimum=0)
    seed = checks.check_seed(seed)
    if not (isinstance(noise, (int, float)) and np.isfinite(noise) and noise > 0):
        raise ConfigError(f"noise must be a positive number, the noise's standard deviation as a fraction of each image's range (e.g. 0.15), got {noise!r}")
    state, xs, targets, probs = _prepare(state, x, target, batch_size, "saliency")
    if samples == 0:
        grads = _batched(lambda xb, tb: _input_grads(state, xb, tb, probs), (xs, targets), batch_size)
    else:
        spans = xs.reshape(len(xs), -1)
        sigmas = (float(noise) * (spans.max(1) - spans.min(1))).astype(np.float32)
        key = jax.random.key(seed)
        grads = _batched(lambda xb, tb, ib, sb: _smooth_grads(state, xb, tb, ib, sb, key, probs, samples),
                         (xs, targets, np.arange(len(xs), dtype=np.int32), sigmas), batch_size)
    return np.abs(grads).max(-1)


@functools.partial(jax.jit, static_argnames=("probs", "steps"))
def _integrated(state: Any, x: jax.Array, targets: jax.Array, baseline: jax.Array, probs: bool, steps: int) -> jax.Array:
    grad = jax.grad(lambda x: _scores(_forward(state, x), targets, probs).sum())
    # the trapezoidal rule on steps + 1 points from the baseline (alpha 0) to the image (alpha 1)
    alphas = jnp.linspace(0.0, 1.0, steps + 1)
    weights = jnp.full(steps + 1, 1.0 / steps).at[0].set(0.5 / steps).at[-1].set(0.5 / steps)

    def body(total: jax.Array, aw: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        a, w = aw
        return total + w * grad(baseline + a * (x - baseline)), None

    total, _ = jax.lax.scan(body, jnp.zeros_like(x), (alphas, weights))
    return (x - baseline) * total


def integrated_gradients(state: Any, x: Any, target: Any = None, *, baseline: Any = None, steps: int = 50,
                         batch_size: int = BATCH) -> np.ndarray:
    """Integrated gradients, (N, H, W, C) float32: each input value's share of the difference
    between the ``target`` class's score on the image and on ``baseline`` (default all zeros, a
    black image; or one image (H, W, C), or one per image (N, H, W, C)).

    The integral along the straight line from the baseline to the image is the trapezoidal rule
    on ``steps + 1`` points, so the attributions add up to ``score(x) - score(baseline)`` within
    that rule's error: check it with :func:`jaxcnn.predict` and raise ``steps`` (the method's
    authors use 20 to 300) when it matters. Positive values argue for the class, negative ones
    against it."""
    steps = checks.check_positive_int(steps, "steps")
    state, xs, targets, probs = _prepare(state, x, target, batch_size, "integrated_gradients")
    if baseline is None:
        base = np.zeros_like(xs)
    else:
        b = np.asarray(baseline, np.float32)
        if b.shape == xs.shape[1:]:
            base = np.broadcast_to(b, xs.shape)
        elif b.shape == xs.shape:
            base = b
        else:
            raise ShapeError(f"baseline must be one image {tuple(xs.shape[1:])} or one per image {tuple(xs.shape)}, got shape {b.shape}")
    return _batched(lambda xb, tb, bb: _integrated(state, xb, tb, bb, probs, steps), (xs, targets, np.ascontiguousarray(base)), batch_size)


@functools.partial(jax.jit, static_argnames=("probs", "layer", "shape"))
def _grad_cam(state: Any, x: jax.Array, targets: jax.Array, probs: bool, layer: str, shape: tuple[int, ...]) -> jax.Array:
    """The heat maps of ``layer``, whose output for one image has ``shape`` (h, w, channels)."""
    kept: dict[str, jax.Array] = {}

    def score(delta: jax.Array) -> jax.Array:
        def hook(name: str, module: Any, out: Any) -> Any:
            if name != layer:
                return out
            kept["a"] = out
            return out + delta.astype(out.dtype)

        return _scores(_forward(state, x, hook), targets, probs).sum()

    grads = jax.grad(score)(jnp.zeros((x.shape[0], *shape), jnp.float32))
    acts = jax.lax.stop_gradient(kept["a"]).astype(jnp.float32)
    weights = grads.mean(axis=(1, 2))  # each channel's mean gradient: its weight
    cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", acts, weights))
    cam = jax.image.resize(cam, (x.shape[0], *x.shape[1:3]), "bilinear")
    top = cam.max(axis=(1, 2), keepdims=True)
    return jnp.where(top > 0, cam / jnp.where(top > 0, top, 1.0), 0.0)


def grad_cam(state: Any, x: Any, target: Any = None, *, layer: str | None = None, batch_size: int = BATCH) -> np.ndarray:
    """Grad-CAM heat maps, (N, H, W) float32 in [0, 1]: where the feature maps of ``layer`` argue
    for the ``target`` class. Each channel of the layer's output is weighed by the mean gradient
    of the class's score over it; the weighted sum, without its negative part, is scaled
    bilinearly to the image's size and divided by its maximum (all zeros where nothing argues for
    the class). ``layer`` is one of :func:`layer_names` (default: the last convolution or block,
    see there; Keras's Grad-CAM example names its last convolutional layer), a layer called once
    per forward pass."""
    layer, shape = _pick_layer(_state(state, "grad_cam"), layer, "grad_cam")
    state, xs, targets, probs = _prepare(state, x, target, batch_size, "grad_cam")
    return _batched(lambda xb, tb: _grad_cam(state, xb, tb, probs, layer, shape), (xs, targets), batch_size)


def _pick_layer(st: Any, layer: str | None, what: str) -> tuple[str, tuple[int, ...]]:
    """``layer`` (default :func:`_default_layer`'s) and its output shape for one image, checked:
    a layer with feature maps, called once per forward pass (found by tracing, before compiling)."""
    from jaxcnn.train.model import model_name

    layers, calls = _traced_layers(st)
    if layer is not None and calls.get(layer, 0) > 1:
        raise ConfigError(f"layer {layer!r} is called {calls[layer]} times in one forward pass, and {'Grad-CAM explains' if what == 'grad_cam' else what + ' takes'} one "
                          f"activation; choose a layer called once: {', '.join(n for n, _, _ in layers) or 'there is none'}")
    if not layers:
        raise ConfigError(f"{what} needs a layer whose output is feature maps (B, h, w, channels); "
                          f"{model_name(st.model)} has none" + (": use saliency or integrated_gradients" if what == "grad_cam" else ""))
    names = [name for name, _, _ in layers]
    if layer is None:
        layer = _default_layer(layers)
    elif layer not in names:
        raise ConfigError(f"layer {layer!r} is not a layer with feature maps (B, h, w, channels) in this model; choose one of "
                          f"{', '.join(names)}")
    return layer, next(shape for name, shape, _ in layers if name == layer)  # traced here: not again inside the program


@functools.partial(jax.jit, static_argnames=("layer",))
def _feature_maps(state: Any, x: jax.Array, layer: str) -> jax.Array:
    kept: dict[str, jax.Array] = {}

    def hook(name: str, module: Any, out: Any) -> Any:
        if name == layer:
            kept["a"] = out
        return out

    _forward(state, x, hook)
    return kept["a"].astype(jnp.float32)


def feature_maps(state: Any, x: Any, layer: str | None = None, *, batch_size: int = BATCH) -> np.ndarray:
    """The output of ``layer`` for images ``x``, (N, h, w, channels) float32, in evaluation mode
    (what Keras gives with ``keras.Model(model.input, model.get_layer(name).output)``).
    ``layer`` is one of :func:`layer_names` (default: the last convolution or block, as for
    :func:`grad_cam`). Show one image's channels with ``m = maps[0]``,
    ``plots.image_grid(m.transpose(2, 0, 1) / max(m.max(), 1e-12))`` (grey levels from 0 to 1)."""
    layer, _ = _pick_layer(_state(state, "feature_maps"), layer, "feature_maps")
    st, xs, _, _ = _prepare(state, x, 0, batch_size, "feature_maps")
    return _batched(lambda xb: _feature_maps(st, xb, layer), (xs,), batch_size)
