"""The whole assignment in one command: every task run (or reused), one self-contained HTML report.

    python -m experiments.report --quick       # every task shrunk: about two minutes on 2 CPU cores
    python -m experiments.report               # the original report's settings (see BENCHMARKS.md)
    python -m experiments.report --data-dir ~/data/cifar10   # with CIFAR-10 (or --download)

It runs the experiments in this process, each with its documented flags and its own run directory
under ``--out`` (default ``runs/report``, ``runs/report-quick`` with ``--quick``):

* ``mnist/``: ``experiments.mnist`` (tasks 1.1 to 1.4);
* ``random_search/``: ``experiments.random_search`` (1.5), then ``experiments.predict`` on its
  best trial;
* ``cifar10-cnn1/`` .. ``cifar10-cnn4/``: ``experiments.cifar10 --model N`` (1.6 to 1.9), when
  CIFAR-10 is found (``--data-dir``, the cache, or ``--download``); without it their sections say
  how to get it and which command fills them in;
* ``manual_conv/``: ``experiments.manual_conv`` (task 2).

A run is reused, not retrained, when a finished run with the same settings is already there (its
``config.json`` is compared with the flags the report would pass), under ``--out`` or under a
``--reuse`` folder; an interrupted one under ``--out`` is resumed. ``--seeds N`` trains the MNIST
and CIFAR-10 models N times (seeds 0..N-1) and shows the spread.

Writes ``report.html`` (one file: styles inline, every figure embedded as a ``data:`` URI) and
``report.md`` (the same content; figures linked by relative path) into ``--out``, plus
``report-runs.json`` (which directory served each task, how long each run took). One section per
task: the settings beside the original's, the model summary with each parameter count explained,
the figures, and a table of our numbers beside the original report's
(:mod:`experiments.report_reference`, summarised in docs/assignment.md): each row says whether it
matches and by how much. Counts and hand computations must match exactly; accuracies and losses
come from single noisy runs, ours and the original's, so they are compared with a tolerance
(:data:`ACC_TOL`, :data:`LOSS_TOL`) and say so; a ``--quick`` report marks them not comparable.

A task that fails (a bug, a missing file) gets a section saying what went wrong; the others are
still reported, and the command exits with status 1. Bad flags exit with status 2.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import importlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments import report_reference as ref

#: Accuracies within this of the original's count as close: single runs of these models move by
#: about this much from seed to seed and from epoch to epoch (BENCHMARKS.md, random search).
ACC_TOL = 0.02
#: Losses within this of the original's count as close.
LOSS_TOL = 0.05

#: ``--quick``: small runs of every task (about two minutes on 2 CPU cores without CIFAR-10).
QUICK = {
    "mnist": {"limit": 1000, "epochs": 2},
    "search": {"limit": 640, "trials": 3, "epochs": 1},
    "cifar": {"limit": 512, "epochs": 1, "batch_size": 128},
}

# The report's settings for each run (the experiments' defaults, passed explicitly so that a
# run's config.json can be checked against them).
MNIST_FULL = {"epochs": 10, "batch_size": 128, "learning_rate": 0.001, "patience": 5}
SEARCH_FULL = {"trials": 10, "epochs": 10, "batch_size": 256, "seed": 0}
CIFAR_FULL = {
    1: {"epochs": 10, "batch_size": 128, "learning_rate": 0.005, "patience": None},
    2: {"epochs": 15, "batch_size": 128, "learning_rate": 0.005, "patience": 5},
    3: {"epochs": 20, "batch_size": 512, "learning_rate": 0.001, "patience": 5},
    4: {"epochs": 20, "batch_size": 512, "learning_rate": 0.001, "patience": 5},
}

#: The report's sections, in order: (id, heading).
SECTIONS = (
    ("mnist", "Tasks 1.1 to 1.4: the MNIST CNN"),
    ("search", "Task 1.5: random search over kernel size, weight decay and learning rate"),
    ("cifar1", "Tasks 1.6 to 1.8: CIFAR-10, CNN 1"),
    ("cifar2", "Task 1.9: CIFAR-10, CNN 2 (deeper)"),
    ("cifar3", "Task 1.9: CIFAR-10, CNN 3 (same padding, 5x5 kernels, LeakyReLU, lr schedule)"),
    ("cifar4", "Task 1.9: CIFAR-10, CNN 4 (CNN 3 with L2, dropout and batch normalisation)"),
    ("manual", "Task 2: a convolutional layer by hand"),
)

#: Files manual_conv writes (its FILES), in case its module cannot tell us.
MANUAL_FILES = {
    "digit": "digit.png",
    "fig7": "fig07_convolution.png",
    "fig8": "fig08_conv_layer.png",
    "fig9": "fig09_conv_layer_transposed.png",
    "fig10": "fig10_maxpool.png",
    "all": "all_feature_maps.png",
}


# ----------------------------------------------------------------------------------------------
# What to run, and finding runs that already exist


@dataclass
class RunSpec:
    """One experiment run the report needs."""

    task: str  # section id: mnist, search, cifar1..4, manual
    module: str  # experiments.<name>, called as module.main(argv)
    argv: list[str]  # its flags, without --out
    expect: dict[str, Any]  # config.json values (searched at any depth) a reusable run must have
    dirname: str  # preferred directory name under --out
    done: str  # the file a finished run has
    seed: int = 0


@dataclass
class RunResult:
    """What happened to one :class:`RunSpec`."""

    spec: RunSpec
    path: Path | None = None
    status: str = "not run"  # trained, resumed, reused, failed, missing data, not run
    wall_s: float | None = None  # this invocation's time (trained/resumed), else the time a
    # previous report recorded for the reused directory (report-runs.json), else None
    error: str = ""
    returned: Any = None
    shown: str = ""  # the directory as the report names it: relative to --out when inside it


def _flag(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    return [f"--{name.replace('_', '-')}", repr(value) if isinstance(value, float) else str(value)]


def plan(quick: bool, seeds: int = 1, data_dir: str | None = None) -> list[RunSpec]:
    """The runs of a report: MNIST (``seeds`` of them), the search, the four CIFAR-10 models
    (``seeds`` each) and the hand-written convolution."""
    specs: list[RunSpec] = []
    for seed in range(seeds):
        s = dict(MNIST_FULL, seed=seed, limit=None)
        if quick:
            s.update(QUICK["mnist"])
        argv = [a for k, v in s.items() for a in _flag(k, -1 if k == "patience" and v is None else v)]
        specs.append(RunSpec(
            "mnist", "experiments.mnist", argv + ["--verbose", "0"],
            {"dataset": "mnist", "model": "mnist_cnn", "validation_split": 0.2, **s},
            "mnist" + (f"-seed{seed}" if seed else ""), "metrics.json", seed,
        ))
    s = dict(SEARCH_FULL, limit=None)
    if quick:
        s.update(QUICK["search"])
    argv = [a for k, v in s.items() for a in _flag(k, v)]
    specs.append(RunSpec("search", "experiments.random_search", argv + ["--verbose", "0"],
                         {"dataset": "mnist", **s}, "random_search", "best.json"))
    for n in (1, 2, 3, 4):
        for seed in range(seeds):
            s = dict(CIFAR_FULL[n], seed=seed, limit=None)
            if quick:
                s.update(QUICK["cifar"])
            argv = ["--model", str(n)]
            argv += [a for k, v in s.items() for a in _flag(k, -1 if k == "patience" and v is None else v)]
            argv += _flag("data_dir", data_dir) + ["--verbose", "0"]
            specs.append(RunSpec(
                f"cifar{n}", "experiments.cifar10", argv,
                {"dataset": "cifar10", "model": f"cifar_cnn{n}", **s},
                f"cifar10-cnn{n}" + (f"-seed{seed}" if seed else ""), "metrics.json", seed,
            ))
    specs.append(RunSpec("manual", "experiments.manual_conv", [], {}, "manual_conv", MANUAL_FILES["all"]))
    return specs


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _leaves(obj: Any, out: dict[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    """Every (key, value) in a nested JSON object, outer levels first."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        nested = []
        for k, v in obj.items():
            if isinstance(v, dict):
                nested.append(v)
            else:
                out.setdefault(k, []).append(v)
        for v in nested:
            _leaves(v, out)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_matches(config: Any, expect: dict[str, Any]) -> bool:
    """Whether a run's config.json holds every expected setting (at its first level where a key
    appears, else at any depth). A setting it does not record does not match."""
    if not isinstance(config, dict):
        return False
    leaves = _leaves(config)
    return all(k in leaves and _same(leaves[k][0], v) for k, v in expect.items())


def find_run(spec: RunSpec, places: Sequence[Path], taken: set[Path]) -> tuple[Path | None, bool]:
    """A directory under one of ``places`` that holds a run of ``spec``'s settings: (path,
    finished). Finished runs are preferred; only the first place (``--out``) is searched for an
    unfinished one."""
    unfinished = None
    for i, place in enumerate(places):
        if not place.is_dir():
            continue
        candidates = [place / spec.dirname] + sorted(p for p in place.iterdir() if p.is_dir())
        if i > 0:
            candidates.append(place)
        for path in candidates:
            if path in taken or not path.is_dir():
                continue
            if spec.task == "manual":  # no config.json: its settings are fixed; all figures = done
                if path.name == spec.dirname and all((path / f).is_file() for f in _manual_files().values()):
                    return path, True
                continue
            if not config_matches(read_json(path / "config.json"), spec.expect):
                continue
            if (path / spec.done).is_file():
                return path, True
            if i == 0 and unfinished is None:
                unfinished = path
    return unfinished, False


def _free_dir(out: Path, name: str, taken: set[Path]) -> Path:
    path, k = out / name, 2
    while path.exists() or path in taken:
        path, k = out / f"{name}-{k}", k + 1
    return path


def _manual_files() -> dict[str, str]:
    try:
        from experiments import manual_conv

        return dict(getattr(manual_conv, "FILES", MANUAL_FILES))
    except Exception:  # noqa: BLE001 - the report must survive a broken module
        return dict(MANUAL_FILES)


def call_main(module: str, argv: list[str], log: Path | None, verbose: bool) -> tuple[Any, str]:
    """``module.main(argv)`` in this process: (its return value, "" or the error). Output goes to
    ``log`` unless ``verbose``."""
    from jaxcnn.errors import JaxcnnError

    buf = io.StringIO()
    quiet = contextlib.ExitStack()
    if not verbose:
        quiet.enter_context(contextlib.redirect_stdout(buf))
        quiet.enter_context(contextlib.redirect_stderr(buf))
    error, value = "", None
    with quiet:
        try:
            value = importlib.import_module(module).main(argv)
        except JaxcnnError as e:
            error = str(e)
        except SystemExit as e:  # argparse rejected a flag, or the experiment exited itself
            if e.code == 130:  # the experiment's own Ctrl-C handling: stop the whole report
                raise KeyboardInterrupt from None
            if e.code not in (0, None):
                error = f"python -m {module} exited with status {e.code} (its output is in {log})"
        except Exception as e:  # noqa: BLE001 - one task's bug must not lose the other sections
            error = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=buf if not verbose else sys.stderr)
    if log is not None and buf.getvalue():
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(buf.getvalue())
    return value, error


def predict_best(best: Path, stem: Path, log: Path, verbose: bool) -> tuple[dict | None, str, Path]:
    """``python -m experiments.predict BEST --out STEM.png``: the search's best model reloaded and
    evaluated on the test split. Its result is kept in STEM.json and reused while the model is
    older than it. Returns (the test metrics or None, "" or the error, the figure)."""
    png, saved = stem.with_suffix(".png"), stem.with_suffix(".json")
    model_files = [p for p in (best / "model").iterdir() if p.is_file()] if (best / "model").is_dir() else []
    newest = max((p.stat().st_mtime for p in model_files), default=0.0)
    cached = read_json(saved)
    if isinstance(cached, dict) and png.is_file() and saved.stat().st_mtime >= newest:
        return cached, "", png
    png.parent.mkdir(parents=True, exist_ok=True)
    fresh = stem.with_suffix(".new.png")  # experiments.predict refuses an existing --out: the old figure stays until it succeeds
    fresh.unlink(missing_ok=True)
    value, error = call_main("experiments.predict", [str(best), "--out", str(fresh)], log, verbose)
    if isinstance(value, dict) and not error:
        from jaxcnn.checkpoint import atomic_write

        if fresh.is_file():  # (a stand-in for predict, as in the tests, may write no figure)
            os.replace(fresh, png)
        value = {k: float(v) for k, v in value.items() if isinstance(v, (int, float))}
        atomic_write(saved, json.dumps(value, indent=2) + "\n")
        return value, "", png
    return None, error or "experiments.predict returned no metrics", png


def cifar_available(data_dir: str | None, download: bool) -> tuple[bool, str]:
    """Whether CIFAR-10 can be read (downloading it only with ``download``): (ok, the loader's
    message when not)."""
    from jaxcnn import data
    from jaxcnn.errors import JaxcnnError

    try:
        data.load("cifar10", data_dir, download=True if download else False)
    except JaxcnnError as e:
        return False, str(e)
    return True, ""


#: The CIFAR-10 runs' reason with --no-cifar: the data were left out, not missing.
NO_CIFAR = "left out (--no-cifar)"


def _cifar_word(ok: bool, message: str) -> str:
    """"found", "left out (--no-cifar)" or "not found", for the console lines."""
    return "found" if ok else NO_CIFAR if message == NO_CIFAR else "not found"


def execute(specs: list[RunSpec], out: Path, *, reuse: Sequence[Path] = (), cifar_ok: bool = True,
            cifar_error: str = "", verbose: bool = False, say: Callable[[str], None] = print) -> list[RunResult]:
    """Run (or reuse, or resume) every spec; never raises for one run's failure."""
    places = [out, *reuse]
    taken: set[Path] = set()
    results = []
    recorded: dict[str, float] = {}  # run directory -> seconds, from earlier reports
    for place in places:
        index = read_json(place / "report-runs.json")
        for run in (index or {}).get("runs", []) if isinstance(index, dict) else []:
            if isinstance(run, dict) and run.get("dir") and isinstance(run.get("wall_s"), (int, float)):
                recorded.setdefault(str(Path(run["dir"]).resolve()), float(run["wall_s"]))

    def shown(path: Path) -> str:
        try:
            return path.resolve().relative_to(out.resolve()).as_posix() + "/"
        except ValueError:
            return str(path)

    for i, spec in enumerate(specs, 1):
        r = RunResult(spec)
        results.append(r)
        label = f"[{i}/{len(specs)}] python -m {spec.module} {' '.join(spec.argv)}".rstrip()
        if spec.task.startswith("cifar") and not cifar_ok:
            r.status, r.error = "missing data", cifar_error
            say(f"{label}: skipped, CIFAR-10 {_cifar_word(False, cifar_error)}")
            continue
        path, finished = find_run(spec, places, taken)
        if path is not None and finished:
            r.path, r.status, r.shown = path, "reused", shown(path)
            r.wall_s = recorded.get(str(path.resolve()))
            taken.add(path)
            say(f"{label}: reused {path}")
            continue
        argv = list(spec.argv)
        if path is not None:  # an interrupted run of the same settings under --out
            r.status = "resumed"
            if spec.module != "experiments.random_search":  # a search resumes from its --out alone
                argv.append("--resume")
        else:
            path, r.status = _free_dir(out, spec.dirname, taken), "trained"
        taken.add(path)
        r.path, r.shown = path, shown(path)
        say(f"{label} --out {path}: {'resuming' if r.status == 'resumed' else 'running'}...")
        t0 = time.perf_counter()
        r.returned, r.error = call_main(spec.module, argv + ["--out", str(path)], out / "logs" / f"{path.name}.log", verbose)
        r.wall_s = time.perf_counter() - t0
        if r.error:
            r.status = "failed"
            say(f"    failed after {r.wall_s:.1f} s: {r.error}")
        else:
            say(f"    done in {r.wall_s:.1f} s")
    return results


# ----------------------------------------------------------------------------------------------
# The document: blocks shared by the HTML and the Markdown


@dataclass
class Para:
    text: str
    kind: str = "p"  # p, note (a highlighted remark), warn (something missing or failed)


@dataclass
class Pre:
    text: str
    caption: str = ""


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]
    classes: list[str] = field(default_factory=list)  # per row: match, close, differs, na, ...
    kind: str = "plain"  # plain, compare, settings


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    id: str
    title: str
    status: str = ""
    blocks: list[Any] = field(default_factory=list)
    headline: tuple[str, str] = ("", "")  # (ours, original) for the overview table
    time: str = ""


# Verdicts: the text shown and the CSS class of the row.
MATCH, CLOSE, DIFFERS, HIGHER, LOWER, NOT_COMPARABLE, NO_RESULT, INFO = (
    "match", "close", "differs", "higher", "lower", "not comparable", "no result", "info")


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v == int(v) and abs(v) >= 1:
            return f"{int(v):,}"
        if abs(v) < 0.01:
            return f"{v:.6g}"
        return f"{v:.{digits}f}"
    return str(v)


def _orig(v: Any) -> str:
    """An original's number as the report printed it (0.71 stays 0.71, not 0.7100)."""
    if isinstance(v, float) and not isinstance(v, bool):
        return repr(v)
    return _num(v)


def _matrix(m: Any) -> str:
    try:
        cell = lambda x: str(int(float(x))) if float(x).is_integer() else f"{float(x):g}"  # noqa: E731
        return "[" + ", ".join("[" + ", ".join(cell(x) for x in row) + "]" for row in m) + "]"
    except (TypeError, ValueError):
        return str(m)


@dataclass
class Spread:
    """Several runs' values of one number."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    def text(self, digits: int = 4) -> str:
        if self.n == 1:
            return _num(self.values[0], digits)
        sd = statistics.stdev(self.values)
        return (f"{_num(self.mean, digits)} (mean of {self.n} runs; sd {_num(sd, digits)}, "
                f"{_num(min(self.values), digits)} to {_num(max(self.values), digits)})")


def compare_exact(what: str, ours: Any, original: ref.Reference | Any, *, source: str = "", note: str = "") -> tuple[list[str], str]:
    """A table row for a quantity that must be equal (a count, a hand computation)."""
    orig = original.value if isinstance(original, ref.Reference) else original
    source = source or (original.source if isinstance(original, ref.Reference) else "")
    note = note or (original.note if isinstance(original, ref.Reference) else "")
    matrix = isinstance(orig, (list, tuple)) and orig and isinstance(orig[0], (list, tuple))
    show, show_orig = (_matrix, _matrix) if matrix else (_num, _orig)
    if ours is None:
        return [what, "n/a", show_orig(orig), NO_RESULT, "", _join(source, note)], "na"
    if _same(_plain(ours), _plain(orig)):
        return [what, show(ours), show_orig(orig), MATCH, "exact", _join(source, note)], "match"
    diff = ""
    if isinstance(ours, (int, float)) and isinstance(orig, (int, float)) and not isinstance(ours, bool):
        d = ours - orig
        diff = f"{d:+,}" if float(d).is_integer() else f"{d:+.4g}"
    return [what, show(ours), show_orig(orig), DIFFERS, diff, _join(source, note)], "differs"


def _plain(v: Any) -> Any:
    try:
        import numpy as np

        if isinstance(v, np.ndarray) or hasattr(v, "__array__"):
            return np.asarray(v).tolist()
    except ImportError:  # pragma: no cover
        pass
    return v


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def compare_noisy(what: str, ours: Spread | float | None, original: ref.Reference, *, tol: float, quick: bool,
                  higher_is_better: bool = True) -> tuple[list[str], str]:
    """A table row for a number from a training run: compared with a tolerance, never equality."""
    orig = original.value
    single = "one run in the original" if original.noisy else ""
    if isinstance(ours, (int, float)):
        ours = Spread([float(ours)])
    if ours is None or not ours.values:
        return [what, "n/a", _orig(orig), NO_RESULT, "", _join(original.source, single, original.note)], "na"
    diff = ours.mean - orig
    diff_text = f"{diff:+g}" if float(diff).is_integer() else f"{diff:+.4f}"
    shown = ours.text()
    if ours.n == 1:
        shown += " (one run)"
    if quick:
        verdict, cls = f"{NOT_COMPARABLE} (quick run)", "na"
    elif abs(diff) <= tol:
        verdict, cls = f"{CLOSE} (within {tol:g})", "close"
    else:
        better = (diff > 0) == higher_is_better
        verdict, cls = (HIGHER if diff > 0 else LOWER), ("better" if better else "worse")
    return [what, shown, _orig(orig), verdict, diff_text, _join(original.source, single, original.note)], cls


def compare_epochs(what: str, ours: Spread | None, original: ref.Reference, *, quick: bool) -> tuple[list[str], str]:
    """An epoch count or index from a run with early stopping: noisy, and neither more nor fewer is
    better, so the row gives the difference without judging it."""
    row, cls = compare_noisy(what, ours, original, tol=1, quick=quick)
    if cls in ("better", "worse"):
        row[3], cls = f"{DIFFERS} (early stopping is noisy)", "na"
    return row, cls


def info_row(what: str, ours: str, original: str, note: str = "", verdict: str = INFO) -> tuple[list[str], str]:
    return [what, ours, original, verdict, "", note], "na"


COMPARE_HEADER = ["quantity", "ours", "original report", "verdict", "difference (ours - original)", "source and notes"]


def compare_table(caption: str, rows: Iterable[tuple[list[str], str]]) -> Table:
    rows = list(rows)
    return Table(caption, COMPARE_HEADER, [r for r, _ in rows], [c for _, c in rows], kind="compare")


def settings_table(ours: dict[str, str], original: dict[str, str], caption: str = "Settings") -> Table:
    """Our run's settings beside the original's; a setting our run does not record is the
    original's by construction ("as the original"); with no run at all, "not run"."""
    keys = list(dict.fromkeys([*original, *ours]))
    absent = "as the original" if ours else "not run"
    return Table(caption, ["setting", "ours (this run)", "original report"],
                 [[k, ours.get(k, absent), original.get(k, "not given")] for k in keys], kind="settings")


# ----------------------------------------------------------------------------------------------
# Reading a run


@dataclass
class Run:
    """The files one run directory holds (each None when missing)."""

    path: Path
    config: dict | None
    metrics: dict | None
    history: dict | None
    summary: str | None

    @classmethod
    def load(cls, path: Path) -> Run:
        summary = None
        try:
            summary = (path / "summary.txt").read_text()
        except OSError:
            pass
        return cls(path, read_json(path / "config.json"), read_json(path / "metrics.json"),
                   read_json(path / "history.json"), summary)

    def metric(self, key: str) -> Any:
        return (self.metrics or {}).get(key)

    def last(self, key: str) -> Any:
        """The last epoch's ``key`` (metrics.json's last_epoch, else history.json)."""
        value = ((self.metrics or {}).get("last_epoch") or {}).get(key)
        if value is None and self.history:
            series = (self.history.get("history") or {}).get(key) or []
            value = series[-1] if series else None
        return value


def _figure(blocks: list[Any], path: Path, caption: str, missing: list[str]) -> None:
    if path.is_file():
        blocks.append(Figure(path, caption))
    else:
        missing.append(path.name)


def _missing_note(blocks: list[Any], run_dir: Path, missing: list[str]) -> None:
    if missing:
        blocks.append(Para(f"Not found in {run_dir}: {', '.join(missing)} (an older or interrupted run, "
                           "or a changed experiment); that part is left out.", "warn"))


def _spread(runs: list[Run], get: Callable[[Run], Any]) -> Spread | None:
    values = [float(v) for v in (get(r) for r in runs) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return Spread(values) if values else None


def _time_text(runs: list[Run], results: list[RunResult]) -> str:
    """'54.2 s (4.9 s an epoch)', per run; with the status of each."""
    parts = []
    for run, res in zip(runs, results):
        wall = run.metric("wall_time_s")
        wall = wall if isinstance(wall, (int, float)) else res.wall_s
        epoch = run.metric("steady_epoch_time_s")
        text = f"{wall:.1f} s" if isinstance(wall, (int, float)) else "time not recorded"
        if isinstance(epoch, (int, float)):
            text += f" ({epoch:.1f} s an epoch)"
        parts.append(text + (" [reused]" if res.status == "reused" else ""))
    return "; ".join(parts)


def _settings_from(config: dict | None, keys: dict[str, Callable[[dict], str]]) -> dict[str, str]:
    if not isinstance(config, dict):
        return {}
    out = {}
    for name, get in keys.items():
        try:
            out[name] = get(config)
        except (KeyError, TypeError, ValueError):
            out[name] = "not recorded"
    return out


def _training_settings(config: dict | None) -> dict[str, str]:
    def optimizer(c: dict) -> str:
        text = f"{c['optimizer']} (learning rate {_num(c['learning_rate'])})"
        if c.get("lr_decay"):
            steps, rate = c["lr_decay"]
            text += f", staircase exponential decay every {steps} steps by {rate}"
        if c.get("lr_schedule_after") is not None:
            text += f"; unchanged for epochs 0..{c['lr_schedule_after'] - 1}, then x exp(-0.1) each epoch"
        return text

    return _settings_from(config, {
        "optimizer": optimizer,
        "batch size": lambda c: str(c["batch_size"]),
        "epochs": lambda c: f"{c['epochs']} at most" if c.get("patience") is not None else str(c["epochs"]),
        "validation": lambda c: (f"validation_split = {c['validation_split']} (the last {c['validation_split']:.0%})"
                                 if c.get("validation_split") else "the test split"),
        "early stopping": lambda c: (f"EarlyStopping(monitor = val_loss, patience = {c['patience']})"
                                     if c.get("patience") is not None else "none"),
        "training images": lambda c: "all" if c.get("limit") is None else f"the first {c['limit']:,} only (--limit)",
        "seed": lambda c: str(c["seed"]),
    })


def _model_rows(model: ref.ModelReference) -> tuple[list[tuple[list[str], str]], Any]:
    """Per-layer and total parameter counts of our model against the original's summary."""
    try:
        import jaxcnn
        from jaxcnn.summary import model_summary

        ours = model_summary(jaxcnn.get_model(model.name, **model.kwargs), jaxcnn.models.input_shape(model.name), name=model.name)
    except Exception as e:  # noqa: BLE001
        return [info_row("model summary", f"could not be built: {type(e).__name__}: {e}", f"{model.total:,}")], None
    rows = []
    layers = list(ours.rows)
    if len(layers) != len(model.layers):
        rows.append(info_row("layers", f"{len(layers)}", f"{len(model.layers)}", "the layer lists differ in length", DIFFERS))
    for i, (mine, theirs) in enumerate(zip(layers, model.layers)):
        shape = tuple(s for s in mine.output_shape if s != "None")
        what = f"{mine.name} ({mine.kind}) {tuple(shape)}"
        explained = mine.explanation if mine.params else ""
        row, cls = compare_exact(what, mine.params, theirs.params, source=model.source)
        if shape != theirs.output:
            row[3], cls = f"{DIFFERS} (output {tuple(shape)} vs {theirs.output})", "differs"
        if explained:
            row[5] = _join(f"ours: {explained}", row[5])
        rows.append((row, cls))
    rows.append(compare_exact("total parameters", ours.total, model.total, source=model.source))
    from jaxcnn.summary import readable_memory_size

    rows.append(compare_exact("size as float32", readable_memory_size(4 * ours.total), model.size, source=model.source))
    if model.non_trainable or ours.non_trainable:
        rows.append(compare_exact("trainable parameters", ours.trainable, model.trainable, source=model.source))
        rows.append(compare_exact("non-trainable parameters", ours.non_trainable, model.non_trainable, source=model.source,
                                  note="BatchNorm's moving mean and variance"))
    return rows, ours


def _status_line(results: list[RunResult]) -> str:
    parts = []
    for r in results:
        where = f" in {r.shown or r.path}" if r.path else ""
        took = f" ({r.wall_s:.1f} s{' when it ran' if r.status == 'reused' else ''})" if r.wall_s is not None else ""
        parts.append(f"{r.status}{where}{took}")
    return "; ".join(parts)


def _failed(section: Section, results: list[RunResult]) -> bool:
    bad = [r for r in results if r.status == "failed"]
    for r in bad:
        log = f" Its output: {r.path.parent / 'logs' / (r.path.name + '.log')}." if r.path else ""
        section.blocks.append(Para(f"python -m {r.spec.module} {' '.join(r.spec.argv)} failed: {r.error}.{log}", "warn"))
    return len(bad) == len(results)


# ----------------------------------------------------------------------------------------------
# The sections


def mnist_section(results: list[RunResult], quick: bool) -> Section:
    sec = Section("mnist", SECTIONS[0][1], _status_line(results))
    sec.blocks.append(Para(
        "The report's CNN on MNIST: two 3x3 convolutions of 32 filters with a max-pool between them, "
        "a dense layer of 64 and 10 outputs, trained with RMSprop. 1.1 shows the first training digits, "
        "1.2 the model summary, 1.3 explains the first layer's 320 parameters, 1.4 trains it with early "
        "stopping and plots the history."))
    all_failed = _failed(sec, results)
    runs = [Run.load(r.path) for r in results if r.path is not None and r.status != "failed"]
    first = runs[0] if runs else None
    ours_settings = _training_settings(first.config if first else None)
    if ours_settings:
        ours_settings["loss"] = "sparse categorical cross-entropy on integer labels (the same loss)"
    sec.blocks.append(settings_table(ours_settings, ref.MNIST_SETTINGS))
    rows, ours = _model_rows(ref.MNIST_CNN)
    if first and first.summary:
        sec.blocks.append(Pre(first.summary.rstrip(), "Model summary (1.2), each count explained (1.3): "
                              f"{first.path / 'summary.txt'}"))
    missing: list[str] = []
    if first:
        _figure(sec.blocks, first.path / "digits.png", "The first three training digits with their labels (1.1, Figure 1)", missing)
        _figure(sec.blocks, first.path / "history.png", "Loss and accuracy per epoch, training and validation, best epoch marked (1.4)", missing)
        _figure(sec.blocks, first.path / "predictions.png", "Test digits, actual and predicted", missing)
        _missing_note(sec.blocks, first.path, missing)
    first_row = None
    if ours is not None and ours.rows:
        first_row = ours.rows[0].explanation
    rows.insert(0, compare_exact("first layer's parameters explained (1.3)", ours.rows[0].params if ours else None,
                                 320, source=ref.MNIST_FIRST_LAYER.source,
                                 note=_join(f"ours: {first_row}" if first_row else "", f"original: {ref.MNIST_FIRST_LAYER.value}",
                                            ref.MNIST_FIRST_LAYER.note)))
    if runs:
        epochs = _spread(runs, lambda r: r.metric("epochs_run"))
        best = _spread(runs, lambda r: r.metric("best_epoch"))
        stopped = [r.metric("epochs_run") is not None and r.config is not None
                   and r.metric("epochs_run") < r.config.get("epochs", 10) for r in runs]
        rows.append(info_row("stopped early", ", ".join("yes" if s else "no" for s in stopped),
                             "yes", _join(ref.MNIST_STOPPED_EARLY.source, "one run in the original",
                                          "quick run: fewer epochs" if quick else "")))
        rows.append(compare_epochs("best epoch (lowest val_loss)", best, ref.MNIST_BEST_EPOCH, quick=quick))
        rows.append(info_row("epochs run", epochs.text(1) if epochs else "n/a", "not given (stopped early)"))
        acc = _spread(runs, lambda r: r.metric("test_accuracy"))
        loss = _spread(runs, lambda r: r.metric("test_loss"))
        rows.append(info_row("test accuracy (10,000 test images)", acc.text() if acc else "n/a", "not in the text",
                             ref.MNIST_METRICS_NOTE))
        rows.append(info_row("test loss", loss.text() if loss else "n/a", "not in the text"))
        vacc = _spread(runs, lambda r: r.last("val_accuracy"))
        rows.append(info_row("last epoch's val_accuracy", vacc.text() if vacc else "n/a", "not in the text"))
        sec.headline = (f"test accuracy {acc.text()}" if acc else "n/a", "best epoch 4 (accuracy only in a figure)")
    elif not all_failed:
        sec.blocks.append(Para("No MNIST run finished.", "warn"))
    sec.time = _time_text(runs, [r for r in results if r.path is not None and r.status != "failed"])
    rows.append(info_row("time", sec.time or "n/a", "not given", "our machine: see the report's header"))
    sec.blocks.append(compare_table("Ours beside the original report (1.2 to 1.4)", rows))
    if len(runs) > 1:
        sec.blocks.append(Para(f"{len(runs)} runs with seeds {', '.join(str(r.config.get('seed')) for r in runs if r.config)}: "
                               "the rows show their mean, standard deviation and range; figures are from the first."))
    return sec


def search_section(result: RunResult, quick: bool, predict: tuple[dict | None, str, Path | None]) -> Section:
    sec = Section("search", SECTIONS[1][1], _status_line([result]))
    sec.blocks.append(Para(
        "Random search over three hyperparameters of a smaller CNN (dense layer of 32): the kernel size "
        "k of both convolutions, the L2 weight decay on the kernels and RMSprop's learning rate. Each "
        "trial trains a fresh model; the best is the one with the highest validation accuracy in its "
        "last epoch. A trial whose kernel leaves no room for the second convolution (k = 10 on 28x28 "
        "images) is recorded as invalid instead of stopping the search."))
    _failed(sec, [result])
    path = result.path if result.status != "failed" else None
    config = read_json(path / "config.json") if path else None
    best_json = read_json(path / "best.json") if path else None
    trials = read_json(path / "trials.json") if path else None
    ours_settings = {}
    if isinstance(config, dict):
        lv = _leaves(config)
        get = lambda k: lv.get(k, ["not recorded"])[0]  # noqa: E731
        ours_settings = {
            "trials": str(get("trials")),
            "epochs per trial": str(get("epochs")),
            "batch size": str(get("batch_size")),
            "validation": f"validation_split = {get('validation_split')}",
            "training images": "all" if get("limit") is None else f"the first {get('limit'):,} only (--limit)",
            "seed": str(get("seed")),
        }
        if "sampler" in lv:
            ours_settings["sampling"] = f"{get('sampler')} sampler" + (f", pruner {get('pruner')}" if "pruner" in lv else "")
        space = (best_json or {}).get("space") if isinstance(best_json, dict) else None
        if isinstance(space, dict):
            for name, label in (("kernel_size", "kernel size k"), ("weight_decay", "L2 weight decay"), ("learning_rate", "learning rate")):
                d = space.get(name)
                if isinstance(d, dict):
                    ours_settings[label] = f"{d.get('type', '')} in [{d.get('low')}, {d.get('high')}]"
    sec.blocks.append(settings_table(ours_settings, ref.SEARCH_SETTINGS))
    missing: list[str] = []
    if path:
        try:
            summary = (path / "best" / "summary.txt").read_text()
            sec.blocks.append(Pre(summary.rstrip(), "The best trial's model summary"))
        except OSError:
            missing.append("best/summary.txt")
        _figure(sec.blocks, path / "best" / "history.png", "The best trial's loss and accuracy per epoch (the report's Figure 2)", missing)
        _figure(sec.blocks, path / "params.png", "Last-epoch validation accuracy against each hyperparameter, every trial", missing)
        for name, caption in (("history.png", "The search's history: each trial's validation accuracy and the best so far"),
                              ("importances.png", "How much each hyperparameter mattered (Optuna's importance estimate)")):
            if (path / name).is_file():  # optional: newer searches write them
                sec.blocks.append(Figure(path / name, caption))
    pred, pred_error, pred_png = predict
    if pred_png is not None and pred_png.is_file():
        sec.blocks.append(Figure(pred_png, "The best trial's model reloaded by experiments.predict: test digits, actual and predicted"))
    if path:
        _missing_note(sec.blocks, path, missing)
    best = (best_json or {}).get("best") if isinstance(best_json, dict) else None
    rows: list[tuple[list[str], str]] = []
    valid = [t for t in trials if isinstance(t, dict) and t.get("status") == "ok"] if isinstance(trials, list) else []
    note = ref.SEARCH_NOISE_NOTE
    if isinstance(best, dict):
        for key, label in (("kernel_size", "best trial's kernel size k"), ("weight_decay", "best trial's weight decay"),
                           ("learning_rate", "best trial's learning rate")):
            r = ref.SEARCH_BEST[key]
            row, cls = compare_exact(label, best.get(key), r.value, source=r.source, note=_join(r.note, "a random draw: equality is not expected"))
            if cls == "differs":
                row[3], cls = f"{DIFFERS} (another draw)", "na"
            rows.append((row, cls))
        for key, label, tol, up in (("loss", "best trial's last-epoch loss (L2 included)", LOSS_TOL, False),
                                    ("accuracy", "best trial's last-epoch accuracy", ACC_TOL, True),
                                    ("val_loss", "best trial's last-epoch val_loss", LOSS_TOL, False),
                                    ("val_accuracy", "best trial's last-epoch val_accuracy", ACC_TOL, True)):
            v = best.get(key)
            row, cls = compare_noisy(label, float(v) if isinstance(v, (int, float)) else None, ref.SEARCH_BEST[key],
                                     tol=tol, quick=quick, higher_is_better=up)
            row[5] = _join(row[5], note if key == "val_accuracy" else "")
            rows.append((row, cls))
        sec.headline = (f"best val_accuracy {_num(best.get('val_accuracy'))} (k = {best.get('kernel_size')})",
                        f"{ref.SEARCH_BEST['val_accuracy'].value} (k = 7), best of one search")
    elif path:
        sec.blocks.append(Para(f"{path / 'best.json'} is missing or unreadable: no best trial to compare.", "warn"))
    if valid:
        accs = Spread([float(t["val_accuracy"]) for t in valid if isinstance(t.get("val_accuracy"), (int, float))])
        if accs.values:
            chance = sum(1 for v in accs.values if v < 0.2)
            rows.append(info_row("val_accuracy over our valid trials", accs.text(),
                                 "only the best is reported",
                                 f"{len(valid)} valid trials; {chance} stayed near chance (below 0.2)"))
    importances = (best_json or {}).get("importances") if isinstance(best_json, dict) else None
    if isinstance(importances, dict) and importances:
        text = ", ".join(f"{k} {_num(v, 2)}" for k, v in sorted(importances.items(), key=lambda kv: -float(kv[1] or 0)))
        rows.append(info_row("hyperparameter importance", text, "not estimated",
                             f"from {len(valid)} trials: a rough estimate" if valid else ""))
    if isinstance(trials, list):
        invalid = [t.get("trial") for t in trials if isinstance(t, dict) and t.get("status") == "invalid"]
        rows.append(info_row("invalid trials (kernel too large)", ", ".join(map(str, invalid)) or "none", "not mentioned"))
    if pred is not None:
        rows.append(info_row("best trial's test accuracy (experiments.predict)", _num(pred.get("accuracy")), "not evaluated",
                             "the 10,000 test images"))
    elif pred_error:
        rows.append(info_row("best trial's test accuracy (experiments.predict)", "n/a", "not evaluated", pred_error))
    k7, _ = _model_rows(ref.SEARCH_CNN_K7)
    for row, cls in k7:
        row[0] = f"k = 7 model: {row[0]}"
    rows += k7
    wall = (best_json or {}).get("run_wall_time_s") if isinstance(best_json, dict) else None
    wall = wall if isinstance(wall, (int, float)) else result.wall_s
    sec.time = (f"{wall:.1f} s" if isinstance(wall, (int, float)) else "not recorded") + (" [reused]" if result.status == "reused" else "")
    rows.append(info_row("time", sec.time, "not given"))
    sec.blocks.append(compare_table("Ours beside the original report (1.5)", rows))
    if isinstance(trials, list) and trials:
        header = ["trial", "k", "weight decay", "learning rate", "status", "loss", "accuracy", "val_loss", "val_accuracy", "time"]
        body, classes = [], []
        best_trial = best.get("trial") if isinstance(best, dict) else None
        for t in trials:
            if not isinstance(t, dict):
                continue
            body.append([str(t.get("trial", "?")), str(t.get("kernel_size", "?")), _num(t.get("weight_decay")),
                         _num(t.get("learning_rate")), str(t.get("status", "?")) + (" (best)" if t.get("trial") == best_trial else ""),
                         _num(t.get("loss")), _num(t.get("accuracy")), _num(t.get("val_loss")), _num(t.get("val_accuracy")),
                         f"{t['wall_time_s']:.1f} s" if isinstance(t.get("wall_time_s"), (int, float)) else "n/a"])
            classes.append("match" if t.get("trial") == best_trial else ("na" if t.get("status") != "ok" else ""))
        sec.blocks.append(Table("Every trial (last epoch)", header, body, classes))
    elif path:
        sec.blocks.append(Para(f"{path / 'trials.json'} is missing: the per-trial table is left out.", "warn"))
    return sec


def cifar_section(n: int, results: list[RunResult], quick: bool, missing_msg: str, fill_command: str,
                  first_missing: bool = True) -> Section:
    model = ref.CIFAR_MODELS[n]
    sec = Section(f"cifar{n}", SECTIONS[1 + n][1], _status_line(results))
    intro = {
        1: "CNN 1 on CIFAR-10 as the report wrote it: three 3x3 convolutions and two dense layers with no "
           "activation at all, so max-pooling is its only non-linearity. Adamax with a staircase "
           "exponential decay. 1.7 shows two training images with their class names; 1.8 explains why "
           "the first layer now has 896 parameters (three input channels).",
        2: "CNN 2 adds a fourth convolution and two ReLU dense layers (256, 128), trains up to 15 epochs "
           "and stops early on val_loss.",
        3: "CNN 3: 5x5 'same' convolutions with LeakyReLU(0.1), batch 512, RMSprop with the learning rate "
           "kept for 10 epochs and then multiplied by exp(-0.1) each epoch, early stopping.",
        4: "CNN 4 is CNN 3 with L2(0.01) on every kernel but the output's, dropout after both pools and "
           "both hidden dense layers, and batch normalisation after the first dense layer.",
    }[n]
    sec.blocks.append(Para(intro))
    done = [r for r in results if r.path is not None and r.status not in ("failed", "missing data")]
    runs = [Run.load(r.path) for r in done]
    if any(r.status == "missing data" for r in results) and missing_msg == NO_CIFAR:
        sec.status = f"CIFAR-10 {NO_CIFAR}: not run"
        sec.blocks.append(Para(f"CIFAR-10 was {NO_CIFAR}, so this model was not trained. Run the report "
                               "again without --no-cifar to fill in the four CIFAR-10 sections, reusing every "
                               "other run.", "note"))
    elif any(r.status == "missing data" for r in results):
        sec.status = "CIFAR-10 not found: not run"
        first_line = (missing_msg.splitlines() or [""])[0].strip()
        sec.blocks.append(Para("CIFAR-10 was not found, so this model was not trained"
                               + ("." if "not found" in first_line else f": {first_line}"), "warn"))
        if first_missing and len(missing_msg.splitlines()) > 1:
            sec.blocks.append(Pre(missing_msg, "Where the data loader looked, and what it suggests"))
        sec.blocks.append(Para(
            "To get it: download the official binary archive "
            "(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, 163 MB) into a folder and pass "
            "that folder with --data-dir, or let jaxcnn fetch it into its cache (SHA-256 checked) with "
            "--download. Either of these commands then fills in the four CIFAR-10 sections, reusing every "
            f"other run: {fill_command}", "note"))
    else:
        _failed(sec, results)
    sec.blocks.append(settings_table(_training_settings(runs[0].config if runs else None), ref.CIFAR_SETTINGS[n]))
    rows, ours = _model_rows(model)
    if n == 1 and ours is not None and ours.rows:
        r = ref.CIFAR_FIRST_LAYER
        rows.insert(0, compare_exact("first layer's parameters explained (1.8)", ours.rows[0].params, 896, source=r.source,
                                     note=_join(f"ours: {ours.rows[0].explanation}", f"original: {r.value}")))
    first = runs[0] if runs else None
    if first and first.summary:
        sec.blocks.append(Pre(first.summary.rstrip(), f"Model summary: {first.path / 'summary.txt'}"))
    elif ours is not None:
        from jaxcnn.summary import format_summary

        sec.blocks.append(Pre(format_summary(ours), "Model summary (built from the model: no run to read it from)"))
    missing: list[str] = []
    if first:
        if n == 1:
            _figure(sec.blocks, first.path / "figure4.png",
                    "Training images 13 and 37 in R's numbering with their classes (1.7, Figure 4: a horse and a cat)", missing)
        _figure(sec.blocks, first.path / "digits.png", "The first three training images with their classes", missing)
        _figure(sec.blocks, first.path / "history.png", f"CNN {n}: loss and accuracy per epoch, training and test split", missing)
        _figure(sec.blocks, first.path / "predictions.png", "Test images, actual and predicted class", missing)
        _missing_note(sec.blocks, first.path, missing)
    results_ref = ref.CIFAR_RESULTS[n]
    if runs:
        epochs = _spread(runs, lambda r: r.metric("epochs_run"))
        for key, label, tol, up in (("loss", "last epoch's training loss", LOSS_TOL, False),
                                    ("accuracy", "last epoch's training accuracy", ACC_TOL, True),
                                    ("val_loss", "last epoch's loss on the test split", LOSS_TOL, False),
                                    ("val_accuracy", "last epoch's accuracy on the test split", ACC_TOL, True)):
            ours_v = _spread(runs, lambda r, k=key: r.last(k))
            if key in results_ref:
                rows.append(compare_noisy(label, ours_v, results_ref[key], tol=tol, quick=quick, higher_is_better=up))
            else:
                rows.append(info_row(label, ours_v.text() if ours_v else "n/a", "not given"))
        if "epochs_run" in results_ref:
            r = results_ref["epochs_run"]
            if r.noisy or quick:
                rows.append(compare_epochs("epochs run", epochs, r, quick=quick))
            else:
                rows.append(compare_exact("epochs run", int(epochs.mean) if epochs and epochs.n == 1 else (epochs.text(1) if epochs else None),
                                          r.value, source=r.source, note=_join(r.note, "quick run: fewer epochs" if quick else "")))
        if "stopped_early" in results_ref:
            r = results_ref["stopped_early"]
            stopped = [x.metric("epochs_run") is not None and x.config is not None and x.metric("epochs_run") < x.config.get("epochs", 0)
                       for x in runs]
            said = ", ".join("yes" if s else "no" for s in stopped) + (f" ({epochs.text(1)} epochs)" if epochs else "")
            rows.append(info_row("stopped early", said,
                                 "yes" if r.value else "no", _join(r.source, r.note)))
        if "epoch_time_s" in results_ref:
            r = results_ref["epoch_time_s"]
            t = _spread(runs, lambda x: x.metric("steady_epoch_time_s"))
            ratio = f"x{t.mean / r.value:.2f} of the original's" if t else ""
            rows.append(info_row("seconds per epoch", t.text(1) if t else "n/a", _orig(r.value),
                                 _join(r.source, r.note, ratio, "quick run: fewer images an epoch" if quick else ""),
                                 f"{NOT_COMPARABLE} (other hardware)"))
        acc = _spread(runs, lambda r: r.last("val_accuracy"))
        orig = results_ref.get("val_accuracy")
        sec.headline = (f"test-split accuracy {acc.text()}" if acc else "n/a", _orig(orig.value) if orig else "n/a")
    else:
        for key, r in results_ref.items():
            rows.append(info_row(r.what, "not run", _orig(r.value), _join(r.source, r.note), NO_RESULT))
        orig = results_ref.get("val_accuracy")
        no_data = any(r.status == "missing data" for r in results)
        sec.headline = ((f"not run (CIFAR-10 {NO_CIFAR})" if missing_msg == NO_CIFAR else "not run (no CIFAR-10)") if no_data else "n/a",
                        _orig(orig.value) if orig else "n/a")
    sec.time = _time_text(runs, done) if runs else ""
    rows.append(info_row("time", sec.time or "n/a", "see seconds per epoch" if "epoch_time_s" in results_ref else "not given"))
    sec.blocks.append(compare_table(f"Ours beside the original report (CNN {n})", rows))
    if len(runs) > 1:
        sec.blocks.append(Para(f"{len(runs)} runs (seeds 0 to {len(runs) - 1}): the rows show their mean, standard "
                               "deviation and range; figures are from the first."))
    return sec


def manual_numbers() -> dict[str, Any]:
    """Task 2's worked example recomputed with jaxcnn.manual on the report's '4' (2.2 to 2.7)."""
    import numpy as np

    from jaxcnn import data, manual

    try:
        from experiments import manual_conv as mc

        index, kernel, patch, layout, bias = mc.REPORT_INDEX, mc.KERNEL, mc.PATCH, mc.report_layout, mc.EXAMPLE_BIAS
    except (ImportError, AttributeError):  # its documented values
        index, kernel, bias = 2, np.array([[-0.5] * 3, [1.0] * 3, [-0.5] * 3]), 100.0
        patch, layout = (slice(11, 15), slice(11, 15)), (lambda im: np.rot90(np.asarray(im), -1))
    image = np.asarray(data.load("mnist").x_train[index])
    digit = layout(image.reshape(image.shape[0], image.shape[1])).astype(np.float64)
    x = digit[patch]
    out = {
        "patch": x,
        "kernel": np.asarray(kernel),
        "convolution": np.asarray(manual.convolution(x, kernel)),
        "conv_layer": np.asarray(manual.conv_layer(x, kernel, bias)),
        "maxpool": np.asarray(manual.maxpool(x)),
    }
    out["loops_agree"] = bool(
        np.allclose(out["convolution"], manual.convolution_loop(x, np.asarray(kernel)))
        and np.allclose(out["conv_layer"], manual.conv_layer_loop(x, np.asarray(kernel), bias))
        and np.allclose(out["maxpool"], manual.maxpool_loop(x)))
    return out


def manual_section(result: RunResult) -> Section:
    sec = Section("manual", SECTIONS[6][1], _status_line([result]))
    sec.blocks.append(Para(
        "A convolution, a convolutional layer (bias and ReLU) and a 2x2 max-pool written by hand, here "
        "as pure lax functions (jaxcnn.manual), checked on the report's 4x4 patch of an MNIST '4' "
        "against the numbers it computed by hand, then drawn on the whole digit (Figures 7 to 10). "
        "The report's R matrix is the digit rotated a quarter turn; we compute in that layout, so every "
        "number is comparable, and draw the maps upright."))
    sec.blocks.append(settings_table(
        {"image": "MNIST training image 2 (0-based), the first '4'", "kernel K": "as the original",
         "biases": "100 (worked example), -150 (Figures 8, 9), -320 (Figure 10)"},
        {"image": "an MNIST '4'", "kernel K": _matrix(ref.MANUAL["kernel"].value),
         "biases": "100 (2.4), -150 (2.5, 2.6), -320 (2.8)"}))
    rows: list[tuple[list[str], str]] = []
    try:
        nums = manual_numbers()
    except Exception as e:  # noqa: BLE001
        nums = None
        sec.blocks.append(Para(f"The worked example could not be recomputed: {type(e).__name__}: {e}", "warn"))
    for key, r in ref.MANUAL.items():
        rows.append(compare_exact(r.what, _plain(nums[key]) if nums else None, r, source=r.source))
    if nums:
        rows.append(info_row("lax functions agree with plain-loop references", "yes" if nums["loops_agree"] else "NO", "(R loops)",
                             "jaxcnn.manual against its loop versions", MATCH if nums["loops_agree"] else DIFFERS))
    _failed(sec, [result])
    path = result.path if result.status != "failed" else None
    files = _manual_files()
    missing: list[str] = []
    if path:
        _figure(sec.blocks, path / files["digit"], "The digit (2.1)", missing)
        for key, r in ref.MANUAL_FIGURES.items():
            shown = (path / files[key]).is_file()
            _figure(sec.blocks, path / files[key], f"{r.value} ({r.where}): {r.what}", missing)
            rows.append(info_row(f"{r.value}: {r.what}", "drawn" if shown else "missing", "drawn", r.source,
                                 MATCH if shown else NO_RESULT))
        _figure(sec.blocks, path / files["all"], "All of them side by side", missing)
        _missing_note(sec.blocks, path, missing)
    sec.time = (f"{result.wall_s:.1f} s" if result.wall_s is not None else "not recorded") + (" [reused]" if result.status == "reused" else "")
    rows.append(info_row("time", sec.time, "not given"))
    sec.blocks.append(compare_table("Ours beside the original report (task 2)", rows))
    ok = nums is not None and all(_same(_plain(nums[k]), r.value) for k, r in ref.MANUAL.items())
    sec.headline = ("all five matrices match" if ok else "see the section", "hand computations (2.2 to 2.7)")
    return sec


# ----------------------------------------------------------------------------------------------
# Rendering

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#1a1a1a;background:#fff;line-height:1.45}
h1{font-size:1.8em;border-bottom:3px solid #2b6cb0;padding-bottom:.3em}h2{margin-top:2.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;color:#1c4b80}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;width:100%}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #d0d0d0;padding:.3em .5em;text-align:left;vertical-align:top}th{background:#eef2f7}
tr.match td:nth-child(4){background:#d8f3dc;color:#14532d;font-weight:600}tr.close td:nth-child(4){background:#e6f4ea;color:#14532d}
tr.differs td:nth-child(4),tr.worse td:nth-child(4){background:#fde2e1;color:#7f1d1d;font-weight:600}tr.better td:nth-child(4){background:#e0ecff;color:#1e3a8a}
tr.na td:nth-child(4){color:#555}table.plain tr.match td{background:#f0faf2}table.plain tr.na td{color:#666}
pre{background:#f6f8fa;border:1px solid #ddd;padding:.8em;overflow-x:auto;font-size:.8em}
figure{margin:1em 0;text-align:center}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#333}
p.note{background:#eef6ff;border-left:4px solid #2b6cb0;padding:.5em .8em}p.warn{background:#fff4e5;border-left:4px solid #d97706;padding:.5em .8em}
.banner{background:#fff4e5;border:2px solid #d97706;padding:.6em 1em;font-weight:600}.status{color:#555;font-size:.9em}
"""


def _data_uri(path: Path) -> str:
    kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
    kind = kinds.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(t: Table) -> str:
    e = html.escape
    out = [f'<table class="{e(t.kind)}"><caption>{e(t.caption)}</caption>',
           "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr></thead><tbody>"]
    for i, row in enumerate(t.rows):
        cls = t.classes[i] if i < len(t.classes) else ""
        attr = f' class="{e(cls)}"' if cls else ""
        out.append(f"<tr{attr}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def render_html(title: str, header: list[Any], sections: list[Section]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]

    def block(b: Any) -> str:
        if isinstance(b, Para):
            cls = "banner" if b.kind == "banner" else b.kind
            tag = "div" if b.kind == "banner" else "p"
            return f'<{tag} class="{e(cls)}">{e(b.text)}</{tag}>'
        if isinstance(b, Pre):
            cap = f"<p><em>{e(b.caption)}</em></p>" if b.caption else ""
            return f"{cap}<pre>{e(b.text)}</pre>"
        if isinstance(b, Table):
            return _html_table(b)
        if isinstance(b, Figure):
            return (f'<figure><img src="{_data_uri(b.path)}" alt="{e(b.caption)}" data-file="{e(b.path.name)}">'
                    f"<figcaption>{e(b.caption)}</figcaption></figure>")
        raise TypeError(type(b))

    parts += [block(b) for b in header]
    parts.append('<nav><h2 id="contents">Contents</h2><ol>' +
                 "".join(f'<li><a href="#{e(s.id)}">{e(s.title)}</a></li>' for s in sections) + "</ol></nav>")
    for s in sections:
        parts.append(f'<section id="{e(s.id)}"><h2>{e(s.title)}</h2><p class="status">Run: {e(s.status)}</p>')
        parts += [block(b) for b in s.blocks]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, header: list[Any], sections: list[Section], base: Path) -> str:
    lines = [f"# {title}", ""]

    def block(b: Any) -> list[str]:
        if isinstance(b, Para):
            prefix = {"note": "> ", "warn": "> **Note:** ", "banner": "> **"}.get(b.kind, "")
            suffix = "**" if b.kind == "banner" else ""
            return [prefix + b.text + suffix, ""]
        if isinstance(b, Pre):
            return ([f"*{b.caption}*", ""] if b.caption else []) + ["```", b.text, "```", ""]
        if isinstance(b, Table):
            out = [f"**{b.caption}**", "", "| " + " | ".join(map(_md_cell, b.header)) + " |",
                   "| " + " | ".join("---" for _ in b.header) + " |"]
            out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows]
            return out + [""]
        if isinstance(b, Figure):
            rel = os.path.relpath(b.path, base)
            return [f"![{b.caption}]({Path(rel).as_posix()})", "", f"*{b.caption}*", ""]
        raise TypeError(type(b))

    for b in header:
        lines += block(b)
    lines += ["## Contents", ""] + [f"{i}. [{s.title}](#{s.id})" for i, s in enumerate(sections, 1)] + [""]
    for s in sections:
        lines += [f'<a id="{s.id}"></a>', "", f"## {s.title}", "", f"*Run: {s.status}*", ""]
        for b in s.blocks:
            lines += block(b)
    return "\n".join(lines).rstrip() + "\n"


def _machine() -> str:
    try:
        import jax

        devices = jax.devices()
        dev = f"{len(devices)} {devices[0].platform.upper()} device(s) ({devices[0].device_kind})"
        jax_v = f"jax {jax.__version__}"
    except Exception:  # noqa: BLE001
        dev, jax_v = "devices unknown", "jax unknown"
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU core(s) ({cpu}); {dev}; Python {platform.python_version()}, {jax_v}"


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


# ----------------------------------------------------------------------------------------------
# The command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small runs of every task (a few hundred images, 1-2 epochs, a 3-trial search): about two minutes on 2 CPU cores")
    p.add_argument("--out", default=None,
                   help="folder for the runs and the report (default runs/report, or runs/report-quick with --quick); "
                        "running again with the same --out reuses every finished run")
    p.add_argument("--data-dir", default=None, help="folder holding CIFAR-10 (the official binary archive or its files)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 (163 MB, SHA-256 checked) when it is not found")
    p.add_argument("--seeds", type=int, default=1,
                   help="train the MNIST and CIFAR-10 models with seeds 0..N-1 and show the spread (default %(default)s)")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="also reuse finished runs with the same settings found in DIR or its subfolders (e.g. runs); repeatable")
    p.add_argument("--no-cifar", action="store_true", help="leave CIFAR-10 out even when it is available")
    p.add_argument("--verbose", action="store_true", help="show each experiment's own output (default: into <out>/logs/)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build the report; return {"html": path, "markdown": path, "results": [RunResult], "failed": n}."""
    from jaxcnn.checkpoint import atomic_write
    from jaxcnn.errors import ConfigError

    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be a positive integer, got {args.seeds}")
    t0 = time.perf_counter()
    out = Path(args.out or ("runs/report-quick" if args.quick else "runs/report"))
    if args.data_dir is not None and not args.no_cifar and not Path(args.data_dir).expanduser().exists():
        raise ConfigError(f"--data-dir {args.data_dir} does not exist; give the folder holding CIFAR-10 (or its archive), "
                          "or leave --data-dir out (then its sections say how to get it)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable directory") from None
    reuse = [Path(d) for d in args.reuse]
    for d in reuse:
        if not d.is_dir():
            raise ConfigError(f"--reuse {d} is not a directory")
    say = print

    if args.no_cifar:
        cifar_ok, cifar_msg = False, NO_CIFAR
    else:
        cifar_ok, cifar_msg = cifar_available(args.data_dir, args.download)
    specs = plan(args.quick, args.seeds, args.data_dir)
    say(f"report: {len(specs)} runs into {out}{' (quick)' if args.quick else ''}; CIFAR-10 {_cifar_word(cifar_ok, cifar_msg)}")
    results = execute(specs, out, reuse=reuse, cifar_ok=cifar_ok, cifar_error=cifar_msg, verbose=args.verbose, say=say)

    # The search's best trial, reloaded and evaluated on the test split by experiments.predict.
    search = next(r for r in results if r.spec.task == "search")
    predict: tuple[dict | None, str, Path | None] = (None, "", None)
    if search.path is not None and search.status != "failed" and (search.path / "best" / "model").is_dir():
        predict = predict_best(search.path / "best", out / "figures" / f"{search.path.name}-best-predictions",
                               out / "logs" / "predict.log", args.verbose)
        if predict[1]:
            say(f"python -m experiments.predict {search.path / 'best'} failed: {predict[1]}")

    by_task: dict[str, list[RunResult]] = {}
    for r in results:
        by_task.setdefault(r.spec.task, []).append(r)
    base = "python -m experiments.report" + (" --quick" if args.quick else "") + f" --out {out}"
    fill = f"{base} --data-dir DIR (the folder holding the archive), or {base} --download"
    sections = [mnist_section(by_task["mnist"], args.quick), search_section(by_task["search"][0], args.quick, predict)]
    sections += [cifar_section(n, by_task[f"cifar{n}"], args.quick, cifar_msg, fill, first_missing=n == 1) for n in (1, 2, 3, 4)]
    sections.append(manual_section(by_task["manual"][0]))

    total = time.perf_counter() - t0
    title = "jaxcnn: the CNN assignment, reproduced" + (" (quick)" if args.quick else "")
    header: list[Any] = []
    if args.quick:
        header.append(Para(
            "Quick report: every run is shrunk (a few hundred training images, one or two epochs, a "
            "three-trial search), so its accuracies and losses are NOT comparable with the original's "
            "and are marked so. Parameter counts and the hand computations are exact either way. "
            "Run python -m experiments.report without --quick for the report's settings.", "banner"))
    commit = _git_commit()
    header.append(Para(
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by python -m experiments.report"
        f"{' ' + ' '.join(argv) if argv else ''}{' at git ' + commit if commit else ''}, in {total:.1f} s. "
        f"Machine: {_machine()}."))
    header.append(Para(
        "The original is a university assignment handed in as a report written in R with Keras; its "
        "tasks, settings and numbers are summarised in docs/assignment.md and written into "
        "experiments/report_reference.py, each with the section it comes from. Verdicts: 'match' means "
        "equal (parameter counts, hand-computed matrices); accuracies and losses come from single "
        f"training runs on both sides, so they are 'close' within {ACC_TOL} (accuracy) or {LOSS_TOL} "
        "(loss) and otherwise 'higher' or 'lower', with the difference; numbers that come from one noisy "
        "run, such as the search's best, say so. Times are on different hardware and are not compared.", "note"))
    overview = Table("Overview", ["task", "ours", "original report", "run", "time"],
                     [[s.title, s.headline[0] or "n/a", s.headline[1] or "n/a", s.status or "n/a", s.time or "n/a"] for s in sections])
    header.append(overview)

    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write(html_path, render_html(title, header, sections))
    atomic_write(md_path, render_markdown(title, header, sections, out))
    index = {
        "quick": args.quick, "seeds": args.seeds, "wall_time_s": total, "cifar10": cifar_ok,
        "predict": {"result": predict[0], "error": predict[1]},
        "runs": [{"task": r.spec.task, "module": r.spec.module, "argv": r.spec.argv, "dir": str(r.path) if r.path else None,
                  "status": r.status, "wall_s": r.wall_s, "error": r.error} for r in results],
    }
    atomic_write(out / "report-runs.json", json.dumps(index, indent=2) + "\n")
    failed = sum(1 for r in results if r.status == "failed") + (1 if predict[1] else 0)
    say(f"report: {html_path} and {md_path} in {total:.1f} s" + (f"; {failed} run(s) failed" if failed else ""))
    return {"html": html_path, "markdown": md_path, "results": results, "failed": failed, "wall_time_s": total}


def _cli(argv: list[str] | None = None) -> int:
    from jaxcnn.errors import JaxcnnError

    try:
        result = main(argv)
    except JaxcnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue (finished runs are reused, an "
              "interrupted training run resumes from its last checkpoint)", file=sys.stderr)
        return 130
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(_cli())
