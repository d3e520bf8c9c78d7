"""What a search writes and prints: the trial table, the console summary and the figures.

Figures are built with matplotlib (imported on first use) without pyplot's global state:

* ``history.png``: the optimisation history, each trial's metric by trial number with the best so
  far; pruned trials at their last reported value, invalid and diverged ones marked on the axis.
* ``importances.png``: Optuna's parameter importances (fANOVA) of the finished trials.
* ``params.png``: the metric against each hyperparameter, one titled panel each, integer ticks for
  integer parameters, a log axis for log-scaled ones, categories by name, invalid trials shown.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
COLUMNS_TAIL = (
    "seed", "status", "state", *METRICS, "epochs_run", "best_epoch", *(f"best_{k}" for k in METRICS),
    "wall_time_s", "attempts", "worker", "reason",
)
_STYLE = {  # status -> (marker, colour, label)
    "ok": ("o", "tab:blue", "finished"),
    "pruned": ("s", "tab:orange", "pruned (last reported value)"),
    "diverged": ("X", "tab:red", "diverged"),
    "invalid": ("x", "tab:gray", "invalid (cannot be built)"),
    "error": ("x", "tab:brown", "error (the model raised)"),
    "failed": ("x", "tab:purple", "failed"),
}


def table(rows: Sequence[Mapping[str, Any]], params: Sequence[str]) -> tuple[list[str], str]:
    """The columns (``trial``, the hyperparameters, then :data:`COLUMNS_TAIL`) and the CSV text."""
    columns = ["trial", *params, *COLUMNS_TAIL]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row.get(k), float) else row[k]) for k in columns})
    return columns, buf.getvalue()


def console_table(rows: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str, best: int | None) -> str:
    """A fixed-width table of every trial: hyperparameters, status, metric, epochs, time; the
    best trial marked with ``*``."""
    head = ["trial", *params, "status", metric, "epochs", "time_s"]
    body = []
    for r in rows:
        cells = [f"{r['trial']}{'*' if r['trial'] == best else ''}"]
        for p in params:
            v = r.get(p)
            cells.append("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        m = r.get(metric)
        cells += [r.get("status", ""), "" if m is None else f"{m:.4f}", str(r.get("epochs_run", 0)), f"{r.get('wall_time_s') or 0:.1f}"]
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths]), *map(line, body)]
    if best is not None:
        out.append(f"* best trial by last-epoch {metric}")
    return "\n".join(out)


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _value(row: Mapping[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def history_figure(rows: Sequence[Mapping[str, Any]], metric: str, mode: str = "max") -> Figure:
    """Optimisation history: each trial's last-epoch ``metric`` by trial number, the best so far
    (finished trials only) as a step line; trials without a value marked at the bottom."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure((7, 4))
    ax = fig.subplots()
    pick = max if mode == "max" else min
    for status, (marker, colour, label) in _STYLE.items():
        pts = [(r["trial"], _value(r, metric)) for r in rows if r.get("status") == status and _value(r, metric) is not None]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=colour, label=label, zorder=3)
    best, xs, ys = None, [], []
    for r in sorted(rows, key=lambda r: r["trial"]):
        v = _value(r, metric)
        if r.get("status") == "ok" and v is not None:
            best = v if best is None else pick(best, v)
        if best is not None:
            xs.append(r["trial"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    _mark_missing(ax, [(r["trial"], r.get("status"), r["trial"]) for r in rows if _value(r, metric) is None])
    if rows and not any(_value(r, metric) is not None for r in rows):
        # Nothing finished (a stopped search): axes for the markers alone, which set no limits.
        trials = [r["trial"] for r in rows]
        ax.set_xlim(min(trials) - 0.5, max(trials) + 0.5)
        ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} (last epoch)")
    ax.set_title(f"Optimisation history: {metric} of each trial")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def _mark_missing(ax: Any, points: Sequence[tuple[Any, str | None, Any]]) -> None:
    """Trials without a metric (invalid, or diverged before an epoch ended): a marker at the
    bottom edge of the axis, labelled by status."""
    points = [p for p in points if p[1] not in ("waiting", "running")]  # not trained yet: no result to mark
    if not points:
        return
    trans = ax.get_xaxis_transform()  # x in data, y in axis fraction
    seen = set()
    for x, status, trial in points:
        marker, colour, label = _STYLE.get(status or "failed", _STYLE["failed"])
        ax.scatter([x], [0.03], marker=marker, color=colour, transform=trans, clip_on=False, zorder=3,
                   s=60, label=f"{label}, no value" if status not in seen else None)
        ax.annotate(str(trial), (x, 0.03), xycoords=trans, fontsize=7, xytext=(4, 3), textcoords="offset points", color=colour)
        seen.add(status)


def params_figure(
    rows: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str, kinds: Mapping[str, str]
) -> Figure:
    """``metric`` against each hyperparameter, one titled panel per name in ``params``.

    ``kinds`` says how to draw each axis: ``"int"`` (integer ticks), ``"log"`` (log axis),
    ``"float"``, or ``"categorical"`` (one tick per option). Trials without a value (invalid)
    are marked at the bottom of each panel at their parameter value.
    """
    from matplotlib.ticker import MaxNLocator

    n = max(len(params), 1)
    fig = _figure((4.2 * n, 3.8))
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, p in zip(axes, params):
        kind = kinds.get(p, "float")
        values = [r.get(p) for r in rows if r.get(p) is not None]
        cats = list(dict.fromkeys(values)) if kind == "categorical" else []
        pos = (lambda v: cats.index(v)) if cats else (lambda v: v)  # noqa: E731
        for status, (marker, colour, label) in _STYLE.items():
            pts = [(pos(r[p]), _value(r, metric)) for r in rows
                   if r.get("status") == status and r.get(p) is not None and _value(r, metric) is not None]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=colour, label=label, zorder=3)
                for r in rows:
                    if r.get("status") == status and r.get(p) is not None and _value(r, metric) is not None:
                        ax.annotate(str(r["trial"]), (pos(r[p]), _value(r, metric)), fontsize=7, xytext=(3, 3), textcoords="offset points")
        _mark_missing(ax, [(pos(r[p]), r.get("status"), r["trial"]) for r in rows if r.get(p) is not None and _value(r, metric) is None])
        xs = [float(pos(v)) for v in values if isinstance(pos(v), (int, float))]
        if kind == "log":
            ax.set_xscale("log")
            if xs:
                ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
                _log_ticks(ax, xs)
        elif kind == "int":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            if xs:
                ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        elif kind == "categorical":
            ax.set_xticks(range(len(cats)), [str(c) for c in cats])
            ax.set_xlim(-0.5, len(cats) - 0.5)
        elif xs:
            pad = 0.05 * ((max(xs) - min(xs)) or abs(max(xs)) or 1.0)
            ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_xlabel(p)
        ax.set_ylabel(f"{metric} (last epoch)")
        ax.set_title(f"{metric} against {p}")
        ax.grid(alpha=0.3)
    if axes.size and axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"{metric} of each trial against each hyperparameter")
    return fig


def _log_ticks(ax: Any, xs: Sequence[float]) -> None:
    """Readable ticks on a log axis: matplotlib labels the minor ticks of a range under a decade,
    and their labels overlap; label the decades, or, under a decade, a few values of the range."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(xs), max(xs)
    if lo > 0 and hi / lo < 10:
        left, right = ax.get_xlim()
        ticks: list[float] = []
        for v in sorted(set(xs)):  # the trials' values, a fifth of the panel apart at least
            if not ticks or math.log(v / ticks[-1]) >= 0.2 * math.log(right / left):
                ticks.append(v)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))


def importances_figure(importances: Mapping[str, float], metric: str) -> Figure:
    """Horizontal bars of Optuna's parameter importances (they sum to 1)."""
    fig = _figure((6, 0.6 * max(len(importances), 2) + 1.2))
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[k] for k in names], color="tab:blue")
    for i, k in enumerate(names):
        ax.annotate(f"{importances[k]:.2f}", (importances[k], i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel(f"importance for {metric} (fANOVA, finished trials)")
    ax.set_title("Hyperparameter importances")
    ax.set_xlim(0, 1.1 * max(importances.values(), default=1) or 1)
    return fig


def kinds_of(distributions: Mapping[str, Any]) -> dict[str, str]:
    """Axis kinds of Optuna distributions: int / log / float / categorical."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    out = {}
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = "categorical"
        elif getattr(d, "log", False):
            out[name] = "log"
        elif isinstance(d, IntDistribution):
            out[name] = "int"
        else:
            out[name] = "float"
    return out
