"""Matplotlib figures: image grids with labels or predictions, training curves, search results.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot's global state, so it
works with no display; :func:`save` writes it as PNG. Matplotlib is imported on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _label(value: Any, class_names: Sequence[str] | None) -> str:
    value = int(value)
    return class_names[value] if class_names is not None else str(value)


def image_grid(
    images: np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 3,
    cmap: str | None = None,
    size: float = 2.4,
    suptitle: str | None = None,
) -> Figure:
    """A grid of images (N, H, W) or (N, H, W, C), uint8 0..255 or float 0..1, one title each."""
    images = np.asarray(images)
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
    "Actual: 7, Predicted: 7" when ``predicted`` (aligned with ``images``) is given."""
    indices = list(indices)
    if predicted is None:
        titles = [_label(labels[i], class_names) for i in indices]
    else:
        titles = [f"Actual: {_label(labels[i], class_names)}, Predicted: {_label(predicted[i], class_names)}" for i in indices]
    return image_grid(np.asarray(images)[indices], titles, ncols=ncols, size=2.6 if predicted is None else 3.0)


def training_curves(
    history: Any,
    *,
    monitor: str = "val_loss",
    best_epoch: int | None = None,
    title: str | None = None,
) -> Figure:
    """Loss and accuracy per epoch, training and validation, with the best epoch marked.

    ``history`` is a :class:`jaxcnn.train.History` or a Keras-style ``{"loss": [...], ...}``
    mapping. ``best_epoch`` (0-based) defaults to the best ``monitor`` epoch when present.
    """
    h: Mapping[str, Sequence[float]] = getattr(history, "history", history)
    epochs = list(getattr(history, "epoch", range(len(h["loss"]))))
    xs = [e + 1 for e in epochs]
    if best_epoch is None and monitor in h:
        values = h[monitor]
        best_epoch = epochs[int(np.argmax(values) if "acc" in monitor else np.argmin(values))]
    fig = _figure((10, 4))
    axes = fig.subplots(1, 2)
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
        ax.legend()
    if title:
        fig.suptitle(title)
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
    """Write ``fig`` to ``path`` (PNG by extension) and return the path."""
    fig.savefig(os.fspath(path), dpi=dpi)
    return os.fspath(path)
