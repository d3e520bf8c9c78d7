"""Report task 1.5: hyperparameter search over kernel size, L2 weight decay and learning rate, on Optuna.

    python -m experiments.random_search                 # the report's search (see below for time)
    python -m experiments.random_search --limit 600 --trials 3 --epochs 1   # a quick check, seconds
    python -m experiments.random_search --out runs/rs   # run it again with the same --out to continue
    python -m experiments.random_search --pruner median --sampler tpe --workers 2
    # several machines on one PostgreSQL study: each runs the same command
    python -m experiments.random_search --storage postgresql://user:pw@db-host/search --study rs1

The report's settings: 10 trials of ``search_cnn`` (Conv 32 kxk, MaxPool, Conv 32 kxk, Dense 32,
Dense 10), each 10 epochs, batch 256, validation_split 0.2, RMSprop; kernel size k in 2..10, L2
weight decay uniform in [0.0001, 0.1], learning rate uniform in [0.0001, 0.01], drawn at random
from (seed, trial) alone. A trial with k = 10 cannot be built on 28x28 images (the second conv has
no room) and is recorded as invalid. The best trial is the one with the highest last-epoch
validation accuracy.

Runtime: about 7.5 minutes on the 2-core CPU with the defaults (BENCHMARKS.md): 9 valid trials
of 33 to 58 s, one after another, each batch cut into parts of 32 over one XLA device per core.

Writes to ``--out`` (default runs/random_search-<time>): study.db (the Optuna study, SQLite,
unless --storage), search.json (what identifies the search), trials/NNN/ (result.json,
history.csv and model/ of each trial), trials.csv and trials.json (one row per trial:
hyperparameters, status and Optuna state, last-epoch and best-epoch metrics, wall time),
best.json (the best trial and the settings), history.png (optimisation history),
importances.png, params.png (validation accuracy against each hyperparameter) and best/
(summary.txt, history.json/.csv/.png, and model/, which ``python -m experiments.predict
<out>/best`` reloads). A rerun with the same --out trains only the trials not yet finished; a
larger --trials extends the search with the same first trials. ``--resume --out DIR`` alone takes
the search's settings from DIR/config.json (written once the study has taken them, and kept
after Ctrl-C or a fault). Ctrl-C stops the
search (exit status 130) and prints how many trials the study keeps and the command that
continues it.

Result (seed 0; 48,000 images to train on, 12,000 to validate): seed 0 draws k = 6, 10, 6, 6, 8,
6, 9, 4, 4, 4 for trials 1 to 10; trial 2 (k = 10) is invalid; two trials (weight decay 0.056 and 0.078 with learning
rate 0.008) never leave chance level (val_accuracy 0.106). The best is trial 4: k = 6, weight
decay 0.0229, learning rate 0.0042; last epoch loss 0.693, accuracy 0.925, val_loss 0.672,
val_accuracy 0.926 (test accuracy 0.929 through experiments.predict); trial 10 (k = 4, weight
decay 0.0206, learning rate 0.0062) is second at 0.922. Another run's float summation order moves
these by about 0.01 (BENCHMARKS.md).
The report's best (k = 7, weight decay 0.0092, learning rate 0.0059) reached val_accuracy 0.971;
none of seed 0's ten draws has a weight decay below 0.02, and the smaller ones did best here too.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.common import RunInterrupted, _remove_if_empty, cli, parse_args, write_json
from jaxcnn.errors import ConfigError, SearchError
from jaxcnn.search import DB_FILE, DEFAULT_STUDY, PRUNERS, REPORT_SPACE, SAMPLERS, SearchConfig


@dataclass(frozen=True)
class RandomSearchRun:
    """One search run: the data, where it goes, and the search's own settings."""

    name: str = "random_search"  # run-directory prefix
    dataset: str = "mnist"  # jaxcnn.data.load name
    limit: int | None = None  # use only the first N training examples (before the split)
    data_dir: str | None = None  # where the data files are; None = cache / bundled / download
    out: str | None = None  # run directory; None = runs/<name>-<time>; an existing search continues
    resume: bool = False  # continue the search in `out` (it must hold one)
    storage: str | None = None  # Optuna storage URL; None = SQLite in out/study.db
    study: str = DEFAULT_STUDY  # the study's name in the storage
    workers: int = 1  # local worker processes
    search: SearchConfig = field(default_factory=SearchConfig)  # the report's 10 x 10 epochs


DEFAULTS = RandomSearchRun()


def build_parser() -> Any:
    import argparse

    s = DEFAULTS.search
    p = argparse.ArgumentParser(prog="python -m experiments.random_search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=s.trials, help="number of trials (default %(default)s)")
    p.add_argument("--epochs", type=int, default=s.epochs, help="epochs per trial (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=s.batch_size, help="batch size (default %(default)s)")
    p.add_argument("--seed", type=int, default=s.seed, help="trial t is a function of (seed, t) (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples, for quick runs")
    p.add_argument("--data-dir", default=None, help="directory with the data files (default: cache, bundled copy)")
    p.add_argument("--out", default=None, help="run directory (default runs/random_search-<time>); an existing search continues")
    p.add_argument("--resume", action="store_true",
                   help="continue the search in --out with the settings in its config.json (other flags are optional; a larger --trials extends it)")
    p.add_argument("--sampler", default=s.sampler, choices=SAMPLERS,
                   help="random: trial t drawn from (seed, t) alone, as the report; tpe: Optuna's TPE (default %(default)s)")
    p.add_argument("--pruner", default=s.pruner, choices=PRUNERS,
                   help="stop hopeless trials after an epoch: median, halving (successive halving), hyperband (default %(default)s)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL shared by workers, e.g. postgresql://user:pw@host/db (default: SQLite in --out)")
    p.add_argument("--study", default=DEFAULTS.study, help="the study's name in the storage (default %(default)s)")
    p.add_argument("--workers", type=int, default=DEFAULTS.workers, help="local worker processes (default %(default)s)")
    p.add_argument("--heartbeat", type=int, default=s.heartbeat_interval,
                   help="seconds between a trial's heartbeats; a worker silent for 3 of them is dead and its trial retried (default %(default)s)")
    p.add_argument("--verbose", type=int, default=s.verbose, choices=(0, 1, 2),
                   help="0 silent, 1 trial lines and an epoch bar, 2 one line per epoch")
    return p


def run(config: RandomSearchRun) -> dict[str, Any]:
    """Run (or join, or continue) the search per ``config``; return the contents of best.json."""
    import json

    from jaxcnn import data, search

    if config.resume and not config.out:
        raise ConfigError("--resume needs --out: the run directory of the search to continue")
    if config.workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {config.workers}")
    if config.limit is not None and config.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {config.limit}")
    out = Path(config.out or f"runs/{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if config.resume and not (out / "search.json").is_file():
        raise ConfigError(f"--resume: {out} holds no search to continue; drop --resume to start one there")
    try:
        config.search.check()  # bad settings (a seed out of range...): one line, nothing created
    except ConfigError as e:
        raise ConfigError(as_flags(str(e))) from None
    check_storage(config)  # a bad --storage URL: one line, before the run directory is made
    started = time.time_ns()
    existed = out.exists()
    try:
        ds = data.load(config.dataset, config.data_dir)
        if config.limit is not None:
            ds = ds.limit(config.limit)
        if config.search.verbose:
            print(f"data: {ds.name} from {ds.source}: {len(ds.x_train)} train (before the validation split)")
        search.random_search(
            data.to_float(ds.x_train), ds.y_train, REPORT_SPACE, config.search,
            out=out, storage=config.storage, study_name=config.study, workers=config.workers,
        )
    except KeyboardInterrupt:
        raise RunInterrupted(_interrupted(config, out)) from None
    except ConfigError as e:
        raise ConfigError(as_flags(_one_line(str(e)))) from None
    except SearchError as e:  # trials kept failing: they are queued again; say how to continue
        raise SearchError(f"{e}; continue with: {resume_command(config, out)}") from e.__cause__
    finally:
        _write_settings(config, out, started)
        _remove_if_empty(out, existed)  # a run refused after the search made its folder: leave no empty folder behind
    if config.search.verbose:
        print(f"Outputs in {out}")
    return json.loads((out / "best.json").read_text())


def _one_line(message: str) -> str:
    """``message`` on one line (a database library's messages span several)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def check_storage(config: RandomSearchRun) -> None:
    """Refuse a ``--storage`` that cannot be opened, before anything is created: a SQLite file
    whose folder is missing, a URL of no known database, a database that does not answer. Opening
    it creates the study's tables, as the search would (a new SQLite file included)."""
    if not config.storage:
        return  # SQLite in the run directory, made by the search
    from jaxcnn.search.engine import open_storage, sqlite_path

    shown = _hide(config.storage)
    path = sqlite_path(config.storage)
    if path:
        folder = Path(path).parent
        if not folder.is_dir():
            raise ConfigError(f"--storage {shown}: the folder {folder} does not exist; create it or give another SQLite file path")
    try:
        db = open_storage(config.storage, config.search)
    except ConfigError as e:
        hidden = re.sub(r"(://[^:/@\s]+):[^@\s]+@", r"\1:***@", str(e))  # the password, in any spelling of the URL
        raise ConfigError(_one_line(hidden)) from None
    engine = getattr(db, "engine", None)
    if engine is not None:
        engine.dispose()


def _write_settings(config: RandomSearchRun, out: Path, started: int) -> None:
    """Write config.json, what ``--resume --out`` continues with, once the study has taken this
    run's settings: its search.json was written after ``started`` (a run the study refused leaves
    the settings of the one it holds). Also after Ctrl-C or a fault, so that the command to continue
    is ``--resume --out`` alone."""
    try:
        if (out / "search.json").stat().st_mtime_ns < started:
            return
    except OSError:
        return
    write_json(out / "config.json", {**dataclasses.asdict(config), "storage": _hide(config.storage)})


def _resumed(config: RandomSearchRun, explicit: set[str]) -> RandomSearchRun:
    """``--resume --out DIR``: the settings DIR's config.json holds, overridden by the flags given
    (``explicit``, argparse destinations); the study refuses any that would change the search.
    ``config`` unchanged when DIR has no config.json (a search interrupted before it was written:
    the flags must then repeat its settings)."""
    import json

    path = Path(config.out) / "config.json"
    if not path.is_file():
        return config
    try:
        raw = json.loads(path.read_text())
        stored = dataclasses.replace(DEFAULTS, **{k: v for k, v in raw.items() if k != "search"},
                                     search=dataclasses.replace(DEFAULTS.search, **raw["search"]))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); give the search's flags with --out instead of --resume") from None
    fields = {FLAGS_DEST.get(dest, dest) for dest in explicit}
    stored = dataclasses.replace(
        stored, out=config.out, resume=True,
        search=dataclasses.replace(stored.search, **{f: getattr(config.search, f) for f in fields & set(FLAGS)}),
        **{f: getattr(config, f) for f in fields & {"limit", "data_dir", "storage", "study", "workers"}},
    )
    if stored.storage and ":***@" in stored.storage:
        raise ConfigError(f"--resume: the search in {config.out} uses a storage whose password config.json does not keep; "
                          "give --storage with the whole URL as well")
    return stored


def _finished_trials(config: RandomSearchRun, out: Path) -> int | None:
    """How many trials the study holds finished (each jaxcnn trial once); None if unreadable."""
    try:
        import optuna

        from jaxcnn.search.engine import open_storage, storage_url

        db = open_storage(storage_url(config.storage, out), config.search)
        study = optuna.load_study(study_name=config.study, storage=db)
        return len({
            ft.user_attrs.get("trial") for ft in study.get_trials(deepcopy=False)
            if ft.state.is_finished() and ft.user_attrs.get("status") not in (None, "interrupted")
        })
    except Exception:  # no study yet, or a database that cannot be read now
        return None


def resume_command(config: RandomSearchRun, out: Path) -> str:
    """The command that continues this search: ``--out`` and every flag that differs from the
    defaults (a rerun must give the same settings, or the study refuses it)."""
    s, d = config.search, DEFAULTS.search
    flags = [
        ("--trials", s.trials, d.trials), ("--epochs", s.epochs, d.epochs), ("--batch-size", s.batch_size, d.batch_size),
        ("--seed", s.seed, d.seed), ("--limit", config.limit, DEFAULTS.limit), ("--data-dir", config.data_dir, DEFAULTS.data_dir),
        ("--sampler", s.sampler, d.sampler), ("--pruner", s.pruner, d.pruner),
        ("--storage", _hide(config.storage), DEFAULTS.storage), ("--study", config.study, DEFAULTS.study),
        ("--workers", config.workers, DEFAULTS.workers), ("--heartbeat", s.heartbeat_interval, d.heartbeat_interval),
        ("--verbose", s.verbose, d.verbose),
    ]
    words = ["python -m experiments.random_search", "--out", shlex.quote(str(out))]
    for flag, value, default in flags:
        if value != default:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def _interrupted(config: RandomSearchRun, out: Path) -> str:
    """What Ctrl-C kept and how to continue (the message after ``interrupted:``)."""
    if not config.storage and not (out / DB_FILE).is_file():
        return "before the search started; nothing was kept"
    where = f"study {config.study!r} in {_hide(config.storage)}" if config.storage else f"study in {out}"
    n = _finished_trials(config, out)
    kept = "keeps its finished trials" if n is None else f"keeps {n} finished trial{'' if n == 1 else 's'}"
    return f"the {where} {kept}; continue with: {resume_command(config, out)}"


#: SearchConfig's fields that are this command's flags under other spellings.
FLAGS = {"trials": "--trials", "epochs": "--epochs", "batch_size": "--batch-size", "seed": "--seed",
         "sampler": "--sampler", "pruner": "--pruner", "heartbeat_interval": "--heartbeat", "verbose": "--verbose"}


def as_flags(message: str) -> str:
    """A SearchConfig error as this command's user sees it: the field it starts with named by its
    flag (``trials must be ...`` -> ``--trials must be ...``)."""
    field_name, _, rest = message.partition(" ")
    return f"{FLAGS[field_name]} {rest}" if field_name in FLAGS else message


#: argparse destinations that name a SearchConfig field differently.
FLAGS_DEST = {"heartbeat": "heartbeat_interval"}


def _hide(url: str | None) -> str | None:
    from jaxcnn.search import _hide_password

    return _hide_password(url)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, explicit = parse_args(build_parser(), argv)
    search = dataclasses.replace(
        DEFAULTS.search, trials=args.trials, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        sampler=args.sampler, pruner=args.pruner, heartbeat_interval=args.heartbeat, verbose=args.verbose,
    )
    config = dataclasses.replace(
        DEFAULTS, limit=args.limit, data_dir=args.data_dir, out=args.out, resume=args.resume,
        storage=args.storage, study=args.study, workers=args.workers, search=search,
    )
    if config.resume and config.out:
        config = _resumed(config, explicit)
    return run(config)


if __name__ == "__main__":
    cli(main)
