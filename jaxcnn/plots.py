"""Matplotlib figures: image grids with labels or predictions, training curves, search results.

The figures people look at after a run: :func:`predictions` (test images titled with the
predicted class and its confidence, wrong ones in red, optionally only the mistakes),
:func:`confusion_matrix` (counts or row fractions, true class by predicted class) and
:func:`training_curves` (loss and accuracy, plus the learning rate when it changed) and
:func:`explanations` (heat maps of :mod:`jaxcnn.explain` laid over the images).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot's global state, so it
works with no display; :func:`save` writes it as PNG. Matplotlib is imported on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxcnn.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _label(value: Any, class_names: Sequence[str] | None) -> str:
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():  # np.str_ too
        return str(value)  # a class name given as the label ("cat")
    value = int(value)
    return class_names[value] if class_names is not None else str(value)


def _as_images(images: Any) -> np.ndarray:
    """``images`` as an array (N, H, W) or (N, H, W, C) that matplotlib draws: channels-first
    refused with the transpose, 0..255 floats and wider integers brought to 0..1 floats / uint8."""
    from jaxcnn.errors import ShapeError

    images = np.asarray(images)
    if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4) and min(images.shape[:2]) > 4):
        images = images[None]  # one image, (H, W) or (H, W, C): a batch (N, H, W) is never 1 to 4 pixels wide
    if images.ndim == 4 and images.shape[-1] not in (1, 3, 4):
        if images.shape[1] in (1, 3, 4):
            raise ShapeError(
                f"images of shape {images.shape} look channels-first (N, C, H, W); plots take channels-last "
                "(N, H, W, C): pass x.transpose(0, 2, 3, 1)"
            )
        raise ShapeError(f"images must be (N, H, W) or (N, H, W, C) with C = 1, 3 or 4 channels, got shape {images.shape}")
    if images.ndim not in (3, 4):
        raise ShapeError(
            f"images must be (N, H, W) or (N, H, W, C), or one image (H, W) or (H, W, C), got shape {images.shape}; "
            "reshape flat images, e.g. x.reshape(-1, 28, 28)"
        )
    if images.size and images.dtype != np.uint8 and images.dtype != bool:
        lo, hi = np.nanmin(images), np.nanmax(images)
        if np.issubdtype(images.dtype, np.integer):
            if lo >= 0 and hi <= 255:
                images = images.astype(np.uint8)
        elif np.issubdtype(images.dtype, np.floating) and lo >= 0 and 1.5 < hi <= 255:
            images = images / 255.0  # 0..255 pixels as floats
    return images


def image_grid(
    images: np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 3,
    cmap: str | None = None,
    size: float = 2.4,
    suptitle: str | None = None,
) -> Figure:
    """A grid of images (N, H, W) or (N, H, W, C) with C = 1, 3 or 4 (channels last), one title
    each; one image (H, W) or (H, W, C) is drawn alone.

    Pixel values: uint8 0..255, or floats 0..1. Float images whose values lie in 0..255 with some
    above 1.5 (0..255 pixels cast to float, not divided by 255) are divided by 255 to draw, with
    no error, instead of being clipped to white; other integer images in 0..255 draw as uint8.
    Floats outside these ranges (standardized images) are clipped to 0..1. Channels-first images
    (N, C, H, W) are refused (``ShapeError``) with the transpose that fixes them.
    """
    raw = np.ndim(images)
    images = _as_images(images)
    if isinstance(titles, str):
        if images.ndim == raw:  # a batch
            raise ConfigError(f"titles must be a list of one title per image ({len(images)}), got the string {titles!r}; "
                              "use suptitle= for one title over the grid")
        titles = [titles]  # one image's title
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = _figure((size * ncols, size * nrows + (0.4 if suptitle else 0)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        img = images[i]
        if img.ndim == 2:
            ax.imshow(img, cmap=cmap or "gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
        else:
            ax.imshow(img if img.dtype == np.uint8 else np.clip(img, 0, 1))
        if titles is not None:
            ax.set_title(titles[i], fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def labelled_images(
    images: np.ndarray,
    labels: Sequence[int],
    indices: Sequence[int] = (0, 1, 2),
    *,
    predicted: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    ncols: int = 3,
) -> Figure:
    """Images at ``indices`` titled with their label (report Figure 1), or with
    "Actual: 7, Predicted: 7" when ``predicted`` (aligned with ``images``) is given, the wrong
    ones in red with a red frame (see :func:`predictions` for confidences and mistakes only)."""
    n = len(images)
    idx = np.asarray(list(indices))
    if idx.ndim != 1 or not idx.size or not np.issubdtype(idx.dtype, np.integer) or idx.min() < -n or idx.max() >= n:
        raise ConfigError(
            f"indices must be whole numbers in 0..{n - 1}, the images to draw, got an array of shape {idx.shape} and "
            f"dtype {idx.dtype}; to title them with predictions pass predicted=classes (N,), or draw "
            "probabilities with plots.predictions(images, labels, probs)"
        )
    indices = [int(i) for i in idx]
    from jaxcnn.metrics import _as_classes

    if np.ndim(labels) == 2:  # a column (N, 1) or one-hot (N, C), as fit takes them; (N,) stays as given
        labels = _as_classes(labels, "labels")
    if predicted is not None and np.ndim(predicted) == 2:
        predicted = _as_classes(predicted, "predicted")
    if predicted is None:
        titles = [_label(labels[i], class_names) for i in indices]
    else:
        titles = [f"Actual: {_label(labels[i], class_names)}, Predicted: {_label(predicted[i], class_names)}" for i in indices]
    fig = image_grid(np.asarray(images)[indices], titles, ncols=ncols, size=2.6 if predicted is None else 3.0)
    if predicted is not None:
        _mark_wrong([ax for ax in fig.axes if ax.images], [int(predicted[i]) != int(labels[i]) for i in indices])
    return fig


def _mark_wrong(axes: Sequence[Any], wrong: Sequence[bool]) -> None:
    """Red title and a red frame on the axes of wrong predictions."""
    for ax, bad in zip(axes, wrong):
        if not bad:
            continue
        ax.title.set_color("red")
        ax.set_axis_on()
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("red")
            spine.set_linewidth(3)


def training_curves(
    history: Any,
    *,
    monitor: str = "val_loss",
    best_epoch: int | None = None,
    title: str | None = None,
    learning_rate: bool | None = None,
) -> Figure:
    """Loss and accuracy per epoch, training and validation, with the best epoch marked, and the
    learning rate in a third panel (log scale) when it changed during the run.

    ``history`` is a :class:`jaxcnn.train.History`, what ``fit`` returned, ``History.to_dict()``'s
    ``{"epoch": [...], "history": {...}, "params": {...}}`` (a run's ``history.json``, loaded with
    ``json.load``), or a Keras-style ``{"loss": [...], ...}`` mapping (Keras's older
    ``acc``/``val_acc`` are accuracy); another mapping is refused, saying what it takes. ``best_epoch`` (0-based) defaults to the best ``monitor`` epoch when present.
    ``learning_rate``: None (default) shows the panel when the logged ``learning_rate`` takes
    more than one value (a scheduler, ReduceLROnPlateau, a decay); True or False force it.
    """
    takes = ("training_curves takes the history fit returned, History.to_dict()'s {'epoch': [...], 'history': {...}} "
             "(a run's history.json) or a Keras-style {'loss': [...], ...} mapping")
    if hasattr(history, "state") and hasattr(history, "history"):  # fit's result: (state, history)
        history = history.history
    h: Mapping[str, Sequence[float]] = getattr(history, "history", history)
    epoch_list = getattr(history, "epoch", None)
    if isinstance(h, Mapping) and "loss" not in h and isinstance(h.get("history"), Mapping):  # History.to_dict()
        epoch_list = h.get("epoch")
        h = h["history"]
    if not isinstance(h, Mapping):
        raise ConfigError(f"{takes}, got a {type(history).__name__}")
    keras2 = {"acc": "accuracy", "val_acc": "val_accuracy"}
    if any(k in h for k in keras2):  # Keras 2's names
        h = {keras2.get(k, k): v for k, v in h.items()}
    if h and "loss" not in h:
        keys = sorted(map(str, h))
        shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        raise ConfigError(f"{takes}; got a mapping with keys {shown} and no 'loss'")
    if not h.get("loss"):
        raise ConfigError("the history holds no epoch (fit ran with epochs=0?): there is nothing to plot")
    if epoch_list is None or len(epoch_list) != len(h["loss"]):
        epoch_list = range(len(h["loss"]))
    epochs = [int(e) for e in epoch_list]
    xs = [e + 1 for e in epochs]
    if best_epoch is None and monitor in h and not np.all(np.isnan(np.asarray(h[monitor], float))):
        from jaxcnn.callbacks import _auto_mode

        values = np.asarray(h[monitor], float)  # NaN where validation_freq skipped an epoch
        best_epoch = epochs[int(np.nanargmax(values) if _auto_mode(monitor, "auto", "plots.training_curves") == "max" else np.nanargmin(values))]
    lrs = [float(v) for v in h.get("learning_rate", [])]
    if learning_rate is None:
        learning_rate = len({v for v in lrs if np.isfinite(v)}) > 1
    learning_rate = bool(learning_rate and lrs)
    fig = _figure((15 if learning_rate else 10, 4))
    axes = fig.subplots(1, 3 if learning_rate else 2)
    if learning_rate:
        ax = axes[2]
        ax.plot(xs, lrs, "o-", color="tab:green", label="learning rate")
        if all(v > 0 for v in lrs):
            ax.set_yscale("log")
        if best_epoch is not None:
            ax.axvline(best_epoch + 1, color="grey", ls="--", lw=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate (at the end of the epoch)")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    for ax, metric in zip(axes, ("loss", "accuracy")):
        if metric in h:
            ax.plot(xs, h[metric], "o-", label=f"training {metric}")
        if f"val_{metric}" in h:
            ax.plot(xs, h[f"val_{metric}"], "s-", label=f"validation {metric}")
        if best_epoch is not None:
            ax.axvline(best_epoch + 1, color="grey", ls="--", lw=1, label=f"best epoch ({best_epoch + 1})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a loss-only history leaves the accuracy panel empty
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def _class_labels(n: int, class_names: Sequence[str] | None) -> list[str]:
    return [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n)]


def confusion_matrix(
    y_true: Any,
    y_pred: Any,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    normalize: bool = False,
    title: str | None = None,
    cmap: str = "Blues",
) -> Figure:
    """The confusion matrix as a heat map: row = true class, column = predicted class, each cell
    annotated with its count (or, with ``normalize``, the fraction of its row: the recall of the
    true class on the diagonal). The title gives the accuracy.

    ``y_true``, ``y_pred``: class indices (N,) or scores (N, C), argmaxed (see
    :func:`jaxcnn.metrics.confusion_matrix`, which counts them). ``class_names[i]`` names class
    ``i``: one name per class, so a label at ``len(class_names)`` or above, or a different
    ``num_classes``, is refused.
    """
    from jaxcnn.metrics import _check_labels, _pair
    from jaxcnn.metrics import confusion_matrix as counts_of

    if class_names is not None:
        k = len(class_names)
        if num_classes is not None and int(num_classes) != k:
            raise ConfigError(f"class_names has {k} names but num_classes is {num_classes}; give one name per class (or leave num_classes out)")
        _check_labels(*_pair(y_true, y_pred), k, lambda needed: (
            f"there are {k} class_names, one per class 0..{k - 1}; give a name per class ({needed} names, for 0..{needed - 1}) "
            "or fix the labels"))
    n = num_classes if num_classes is not None else (len(class_names) if class_names is not None else None)
    counts = counts_of(y_true, y_pred, num_classes=n)
    k = counts.shape[0]
    total = int(counts.sum())
    correct = int(np.trace(counts))
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    size = max(4.5, 0.55 * k + 2.5)
    fig = _figure((size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap=cmap, vmin=0, vmax=1 if normalize else max(int(counts.max()), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class" if normalize else "images")
    labels = _class_labels(k, class_names)
    ax.set_xticks(range(k), labels, rotation=45 if class_names is not None else 0, ha="right" if class_names is not None else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = (1 if normalize else counts.max()) / 2
    for t in range(k):
        for p in range(k):
            if counts[t, p] == 0 and t != p:
                continue
            text = f"{shown[t, p]:.2f}" if normalize else f"{int(counts[t, p]):,}"
            ax.text(p, t, text, ha="center", va="center", fontsize=8 if k > 10 else 9,
                    color="white" if shown[t, p] > threshold else "black")
    accuracy = correct / total if total else float("nan")
    ax.set_title(title or f"confusion matrix: accuracy {accuracy:.4f} ({correct:,} of {total:,})", fontsize=11)
    return fig


def predictions(
    images: np.ndarray,
    labels: Sequence[int],
    probs: np.ndarray,
    *,
    indices: Sequence[int] | None = None,
    only_mistakes: bool = False,
    count: int = 9,
    ncols: int = 3,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Images titled with the predicted class and its confidence (its probability), the wrong
    ones with a red title "P (conf%) / true: T" and a red frame; right ones in black.

    images: (N, H, W[, C]) uint8 or float; labels: (N,) true classes; probs: (N, classes)
    predicted probabilities (e.g. ``jaxcnn.predict(state, x, output="probs")``), aligned with
    ``images``. ``indices`` picks which to show (default: the first ``count``); with
    ``only_mistakes`` only the wrong ones among them (the first ``count`` of those). The title
    says how many of the candidates were wrong.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) != len(images) or len(labels) != len(images):
        from jaxcnn.errors import ShapeError

        raise ShapeError(
            f"predictions takes images (N, ...), labels (N,) and probs (N, classes) aligned, got {images.shape}, "
            f"{labels.shape} and {probs.shape}"
        )
    sums = probs.sum(-1)
    if probs.size and (not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1 or np.abs(sums - 1).max() > 1e-3):
        from jaxcnn.errors import ShapeError

        raise ShapeError(
            f"predictions takes probabilities (rows in [0, 1] that sum to 1), got values from {np.nanmin(probs):.4g} to "
            f"{np.nanmax(probs):.4g} and row sums from {np.nanmin(sums):.4g} to {np.nanmax(sums):.4g}; for a model that "
            "returns logits, pass jaxcnn.predict(state, x, output=\"probs\")"
        )
    predicted = probs.argmax(-1)
    candidates = np.arange(len(images)) if indices is None else np.asarray(list(indices), int)
    if only_mistakes:
        wrong_all = candidates[predicted[candidates] != labels[candidates]]
        chosen = wrong_all[:count]
        summary = f"{len(wrong_all):,} mistakes among {len(candidates):,} images"
        if len(chosen) == 0:
            fig = _figure((5, 2))
            fig.text(0.5, 0.5, f"no mistakes among {len(candidates):,} images", ha="center", va="center")
            return fig
    else:
        chosen = candidates[:count] if indices is None else candidates
        wrong_n = int(np.sum(predicted[chosen] != labels[chosen]))
        summary = f"{wrong_n} of {len(chosen)} shown are wrong (red)"
    titles = []
    for i in chosen:
        p, t = int(predicted[i]), int(labels[i])
        conf = 100 * probs[i, p]
        head = f"{_label(p, class_names)} ({conf:.1f}%)"
        titles.append(head if p == t else f"{head}\ntrue: {_label(t, class_names)}")
    fig = image_grid(images[chosen], titles, ncols=ncols, size=2.6, suptitle=title or summary)
    _mark_wrong([ax for ax in fig.axes if ax.images], [bool(predicted[i] != labels[i]) for i in chosen])
    return fig


def explanations(
    images: np.ndarray,
    maps: np.ndarray,
    *,
    labels: Sequence[int] | None = None,
    predicted: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    ncols: int = 4,
    title: str | None = None,
) -> Figure:
    """Each image with its explanation laid over it (:mod:`jaxcnn.explain`): a heat map from
    ``cmap``, ``alpha`` opaque, scaled per image to its largest value.

    images: (N, H, W[, C]) uint8 or float in [0, 1], or one image and its map; maps: (N, H, W) (``grad_cam``,
    ``saliency``) or (N, H, W, C) attributions (``integrated_gradients``, ``gradients``), drawn
    as the absolute value of their sum over the channels. ``labels`` and ``predicted`` title
    each image ("7", or "7 / true: 2" in red where they differ); ``class_names`` names them.
    """
    raw_shape = np.shape(images)
    images = _as_images(images)
    maps = np.asarray(maps, np.float64)
    one = images.ndim > len(raw_shape)
    if one and maps.ndim in (2, 3) and maps.shape[:2] == tuple(raw_shape[:2]):
        maps = maps[None]  # one image's map, (H, W) or (H, W, C)
        labels, predicted = (None if a is None else np.atleast_1d(a) for a in (labels, predicted))
    if maps.ndim == 4:
        maps = np.abs(maps.sum(-1))
    if maps.ndim != 3 or len(maps) != len(images) or maps.shape[1:] != images.shape[1:3]:
        from jaxcnn.errors import ShapeError

        raise ShapeError(
            f"explanations takes images (N, H, W[, C]) and maps (N, H, W) or (N, H, W, C) of the same N, H and W, got "
            f"{images.shape} and {np.shape(maps)}; explain the same images you draw"
        )
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], the heat map's opacity, got {alpha!r}")
    titles = None
    if predicted is not None or labels is not None:
        shown = predicted if predicted is not None else labels
        titles = [_label(p, class_names) for p in shown]
        if predicted is not None and labels is not None:
            titles = [t if int(p) == int(y) else f"{t} / true: {_label(y, class_names)}"
                      for t, p, y in zip(titles, predicted, labels)]
    fig = image_grid(images, titles, ncols=ncols, size=2.6, suptitle=title)
    top = np.nanmax(maps.reshape(len(maps), -1), axis=1, initial=0.0) if len(maps) else np.zeros(0)
    for ax, m, t in zip([ax for ax in fig.axes if ax.images], maps, top):
        ax.imshow(m / t if t > 0 else m, cmap=cmap, alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
    if predicted is not None and labels is not None:
        _mark_wrong([ax for ax in fig.axes if ax.images], [int(p) != int(y) for p, y in zip(predicted, labels)])
    return fig


def metric_vs_params(rows: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str = "val_accuracy", *, log: Sequence[str] = ()) -> Figure:
    """One scatter panel per hyperparameter in ``params``: ``metric`` of each row against it.

    Rows without a numeric ``metric`` (e.g. invalid trials) are left out. Names in ``log`` get a
    log-scaled x axis.
    """
    fig = _figure((4 * len(params), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(params)))
    ok = [r for r in rows if isinstance(r.get(metric), (int, float)) and np.isfinite(r[metric])]
    for ax, p in zip(axes, params):
        ax.scatter([r[p] for r in ok], [r[metric] for r in ok])
        for r in ok:
            if "trial" in r:
                ax.annotate(str(r["trial"]), (r[p], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if p in log:
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    return fig


def save(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> str:
    """Write ``fig`` to ``path`` (PNG by extension), creating its missing parent folders, and
    return the path."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(os.fspath(path), dpi=dpi)
    return os.fspath(path)
