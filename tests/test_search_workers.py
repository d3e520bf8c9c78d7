"""Search workers on one study: two processes on SQLite, two on a real PostgreSQL server, and a
worker killed with SIGKILL mid-trial. Every search here is the experiment's command line, as a
user (or each machine of a cluster) runs it."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
# Seed 0 draws k = 6, 10: one trial to train and one invalid. 200 images (160 to train on in two
# batches of 80), 1 epoch.
ARGS = ["--limit", "200", "--trials", "2", "--epochs", "1", "--batch-size", "80", "--seed", "0", "--verbose", "2"]


def _command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.random_search", *ARGS, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "JAXCNN_CPU_DEVICES": "1", "JAXCNN_OFFLINE": "1"}


def _start(*extra: str, log: Path) -> subprocess.Popen:
    f = open(log, "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(_command(*extra), cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 420) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"worker timed out:\n{log.read_text()[-3000:]}") from None
    assert rc == 0, log.read_text()[-3000:]


def _check_study(url: str, study: str, n: int, retried: int = 0) -> list[optuna.trial.FrozenTrial]:
    """The study holds slots 1..n, each finished exactly once (plus ``retried`` killed attempts)."""
    from jaxcnn.search.engine import _with_driver

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=_with_driver(url)).get_trials()
    assert len(trials) == n + retried, [(t.number, t.state, t.user_attrs.get("trial")) for t in trials]
    final = [t for t in trials if t.user_attrs.get("status")]
    assert sorted(t.user_attrs["trial"] for t in final) == list(range(1, n + 1))  # none trained twice
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in final)
    assert [t.user_attrs["status"] for t in sorted(final, key=lambda t: t.user_attrs["trial"])] == ["ok", "invalid"]
    return trials


def _trained_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "trials").iterdir()) if (out / "trials").is_dir() else []


def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "log.txt"
    _wait(_start("--out", str(out), "--workers", "2", log=log), log)
    text = log.read_text()
    trials = _check_study(f"sqlite:///{out / 'study.db'}", "jaxcnn-search", 2)
    workers = {t.user_attrs["worker"] for t in trials if t.user_attrs.get("worker")}
    assert 1 <= len(workers) <= 2
    assert "[worker 1]" in text and "[worker 2]" in text
    assert _trained_dirs(out) == ["001"]
    rows = json.loads((out / "trials.json").read_text())
    assert [r["trial"] for r in rows] == [1, 2] and all(r["attempts"] == 1 for r in rows)


def test_a_worker_killed_mid_trial_and_the_study_still_completes(tmp_path):
    # Worker A takes trial 1 and is killed with SIGKILL while training it; its heartbeat stops.
    # Worker B records the other (invalid) trial, fails A's stale trial after the grace period (3
    # heartbeats of 1 s), and trains trial 1 again from Optuna's retry.
    a_out, b_out = tmp_path / "a", tmp_path / "b"
    url = f"sqlite:///{a_out / 'study.db'}"
    a = _start("--out", str(a_out), "--heartbeat", "1", log=tmp_path / "a.txt")
    deadline = time.monotonic() + 300
    running = False
    while time.monotonic() < deadline and a.poll() is None and not running:
        time.sleep(0.2)
        try:
            with sqlite3.connect(a_out / "study.db", timeout=1) as db:
                running = bool(db.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0])
        except sqlite3.Error:
            pass
    assert running and a.poll() is None, (tmp_path / "a.txt").read_text()[-3000:]
    time.sleep(0.5)
    a.send_signal(signal.SIGKILL)
    a.wait()
    b = _start("--out", str(b_out), "--storage", url, "--heartbeat", "1", log=tmp_path / "b.txt")
    _wait(b, tmp_path / "b.txt")
    trials = _check_study(url, "jaxcnn-search", 2, retried=1)
    killed = [t for t in trials if not t.user_attrs.get("status")]
    assert len(killed) == 1 and killed[0].state == TrialState.FAIL and killed[0].user_attrs["trial"] == 1
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed[0].params
    assert _trained_dirs(b_out) == ["001"]
    rows = json.loads((b_out / "trials.json").read_text())
    assert [r["attempts"] for r in rows] == [2, 1] and rows[0]["status"] == "ok"


# -- PostgreSQL ---------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian's layout
    return candidates[-1] if candidates else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free port in a temporary directory.
    As root, the server runs as the ``postgres`` user (PostgreSQL refuses root)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql package (.ci/run does)")
    pytest.importorskip("psycopg2")
    base = tempfile.mkdtemp(prefix="jaxcnn-pg-")
    data = os.path.join(base, "data")
    preexec = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server")
        os.chown(base, pw.pw_uid, pw.pw_gid)

        def preexec():  # noqa: ANN202
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True, preexec_fn=preexec, cwd=base)  # noqa: E731
    run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(base, "log"), "-w", "-t", "60", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, preexec_fn=preexec, cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    # Two machines' worth: each process runs the same command with its own run directory.
    outs = [tmp_path / "m1", tmp_path / "m2"]
    procs = [_start("--out", str(o), "--storage", postgres_url, "--study", "shared", log=tmp_path / f"{o.name}.txt") for o in outs]
    for p, o in zip(procs, outs):
        _wait(p, tmp_path / f"{o.name}.txt")
    _check_study(postgres_url, "shared", 2)
    trained = _trained_dirs(outs[0]) + _trained_dirs(outs[1])
    assert sorted(trained) == ["001"]  # each trial trained by one machine only
    for o in outs:  # both write the whole study's table
        rows = json.loads((o / "trials.json").read_text())
        assert [r["status"] for r in rows] == ["ok", "invalid"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_workers_that_stop_at_once_queue_each_failed_slot_once(tmp_path, kind, request):
    """CI saw two workers stop together and each queue every failed slot again (slots 1, 1, 2,
    2, ...): the read of the slots and the copies are now one step under a lock, an ``flock``
    on the SQLite file or a PostgreSQL advisory lock. Four workers' connections at a barrier."""
    import threading

    from jaxcnn.search import engine

    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else engine._with_driver(request.getfixturevalue("postgres_url"))
    study = optuna.create_study(storage=url, study_name="stop-at-once")
    for t in range(1, 7):
        study.enqueue_trial({}, user_attrs={"trial": t})
    for _ in range(6):
        trial = engine.take_slot(study, study._storage)
        trial.set_user_attr("status", "error")
        study.tell(trial, state=TrialState.FAIL)
    studies = [optuna.load_study(study_name="stop-at-once", storage=url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def stop(s):
        barrier.wait()
        engine._requeue_errors(s)

    threads = [threading.Thread(target=stop, args=(s,)) for s in studies]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    waiting = [t.user_attrs["trial"] for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert sorted(waiting) == [1, 2, 3, 4, 5, 6]
