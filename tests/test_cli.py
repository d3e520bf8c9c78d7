"""The experiments as a user runs them, in real subprocesses: Ctrl-C and ``--resume --out RUN``
alone (issue 15), orbax's noise after a correct error and bad environment variables (issue 17:
12, 13). A full or read-only disk: tests/test_mnist_experiment.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--limit", "1000", "--test-limit", "500", "--epochs", "3", "--verbose", "0"]


# Two runs of the same model start at once here (the interrupted run and its reference), sharing
# the suite's compilation cache: JAX writes an entry in place, so one process can read another's
# half-written entry, warn, and compile the program itself. The warning is not ours to assert on.
JAX_CACHE_RACE = "ignore:Error reading persistent compilation cache entry"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAXCNN_OFFLINE": "1", "MPLBACKEND": "Agg",
            "PYTHONWARNINGS": JAX_CACHE_RACE, **extra}


def _start(args: list[str], **env: str) -> subprocess.Popen:
    # SIG_DFL: a test runner started in the background may ignore SIGINT, and Python keeps that.
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.mnist", *args], cwd=ROOT, env=_env(**env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _run(args: list[str], module: str = "experiments.mnist", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(**env), text=True,
                          capture_output=True, timeout=600)


def _history(run: Path) -> dict[str, list[float]]:
    h = json.loads((run / "history.json").read_text())["history"]
    return {k: h[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped by SIGINT once its first checkpoint exists, then resumed with
    ``--resume --out RUN`` alone; and the same run never interrupted."""
    tmp = tmp_path_factory.mktemp("ctrl-c")
    run, reference = tmp / "run", tmp / "reference"
    ref = _start([*QUICK, "--out", str(reference)])  # alongside, to save wall time
    proc = _start([*QUICK, "--out", str(run)])
    deadline = time.monotonic() + 500
    while not (run / "checkpoints" / "1").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    stopped = (proc.returncode, err, sorted(p.name for p in (run / "checkpoints").iterdir()))
    resumed = _run(["--resume", "--out", str(run)])
    _, ref_err = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_err
    return run, reference, stopped, resumed


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_status_130(interrupted):
    run, _, (rc, err, checkpoints), _ = interrupted
    assert rc == 130, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    done = int(checkpoints[-1])
    assert done in (1, 2), checkpoints  # the signal came once the first checkpoint was on disk
    assert err.strip() == (
        f"interrupted: the checkpoint after epoch {done} is in {run / 'checkpoints'}; "
        f"continue with: python -m experiments.mnist --resume --out {run}"
    )


@pytest.mark.slow
def test_resume_alone_ends_as_the_uninterrupted_run(interrupted):
    """Bit-identical, not merely close: the resumed process restores the state bit for bit, and
    the data order and dropout keys derive from (seed, epoch), so it runs the same compiled
    programs on the same inputs on the same devices as the uninterrupted one."""
    run, reference, _, resumed = interrupted
    assert resumed.returncode == 0, resumed.stderr
    assert _history(run) == _history(reference)
    assert (run / "model" / "params.msgpack").read_bytes() == (reference / "model" / "params.msgpack").read_bytes()
    config, ref_config = (json.loads((d / "config.json").read_text()) for d in (run, reference))
    assert config["resume"] is True and {**config, "resume": False, "out": None} == {**ref_config, "out": None}


@pytest.mark.slow
def test_a_corrupt_checkpoint_gives_one_line_and_no_orbax_noise(interrupted, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(interrupted[1], run)
    latest = max((run / "checkpoints").iterdir(), key=lambda p: int(p.name))
    shutil.rmtree(latest / "state" / "ocdbt.process_0")  # orbax then fails inside tensorstore
    proc = _run(["--resume", "--out", str(run), "--epochs", "4"])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("ERROR:absl")]
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {latest} "), proc.stderr
    assert "Event loop is closed" not in proc.stderr


@pytest.mark.parametrize("env, message", [
    ({"JAXCNN_CPU_DEVICES": "abc"}, "error: JAXCNN_CPU_DEVICES must be a whole number of CPU devices, got 'abc'"),
    ({"JAXCNN_PART_SIZE": "abc"}, "error: JAXCNN_PART_SIZE must be a positive whole number, got 'abc'"),
    ({"JAXCNN_IM2COL_MAX_BYTES": "-1"}, "error: JAXCNN_IM2COL_MAX_BYTES must be a whole number, 0 or more, got '-1'"),
    ({"JAXCNN_IM2COL_MIN_FEATURES": "wide"}, "error: JAXCNN_IM2COL_MIN_FEATURES must be a whole number, 0 or more, got 'wide'"),
    ({"JAXCNN_CONV_CHUNK": "32 examples"}, "error: JAXCNN_CONV_CHUNK must be a whole number, 0 or more, got '32 examples'"),
    ({"JAXCNN_WINOGRAD": "yes"}, "error: JAXCNN_WINOGRAD must be 0 (off) or 1 (on), got 'yes'; unset it or set e.g. JAXCNN_WINOGRAD=1"),
    ({"JAXCNN_FAST_PATHS": "on"}, "error: JAXCNN_FAST_PATHS must be 0 (off) or 1 (on), got 'on'; unset it or set e.g. JAXCNN_FAST_PATHS=0"),
    ({"MPLBACKEND": "nosuchbackend"}, "error: MPLBACKEND='nosuchbackend' is not a matplotlib backend"),
])
def test_bad_environment_variables_are_one_line(tmp_path, env, message):
    out = tmp_path / "never-made"
    proc = _run(["--limit", "100", "--out", str(out)], **env)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_dir_shows_the_lazily_loaded_submodules():
    import jaxcnn

    listed = dir(jaxcnn)
    for name in ("data", "plots", "search", "checkpoint", "manual", "explain", "fit", "get_model"):
        assert name in listed, name
    assert listed == sorted(listed)


def test_model_by_module_and_class_builds_linen_and_nnx(tmp_path, monkeypatch):
    from flax import nnx
    import flax.linen as nn

    from experiments.common import resolve_model
    from jaxcnn.errors import ConfigError

    (tmp_path / "user_nets.py").write_text(
        "import flax.linen as nn\nfrom flax import nnx\n\n"
        "class Lin(nn.Module):\n    units: int = 10\n    @nn.compact\n    def __call__(self, x):\n"
        "        return nn.Dense(self.units)(x.reshape((x.shape[0], -1)))\n\n"
        "class Nnx(nnx.Module):\n    def __init__(self, *, rngs):\n        self.out = nnx.Linear(784, 10, rngs=rngs)\n"
        "    def __call__(self, x):\n        return self.out(x.reshape(x.shape[0], -1))\n\n"
        "class NeedsArgs(nn.Module):\n    units: int\n\nnot_a_model = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(resolve_model("user_nets:Lin"), nn.Module)
    assert isinstance(resolve_model("user_nets:Nnx"), nnx.Module)
    for name, message in (("user_nets:NeedsArgs", "NeedsArgs\\(\\) must build with no arguments"),
                          ("user_nets:not_a_model", "not_a_model is a int, not a Flax module class"),
                          ("user_nets:Lni", "user_nets has no 'Lni'; did you mean 'Lin'\\?"),
                          ("user_nets:", "write a module's class as package.module:Class")):
        with pytest.raises(ConfigError, match=message):
            resolve_model(name)


# -- experiments.predict, manual_conv, random_search and report: refusals before any work ------------


def test_predict_refuses_an_existing_out_file_before_any_work(tmp_path):
    from experiments import predict
    from jaxcnn.errors import ConfigError

    run = tmp_path / "run"
    run.mkdir()  # no model: the refusal comes before anything is read
    digits = run / "digits.png"
    digits.write_bytes(b"the run's own figure")
    with pytest.raises(ConfigError, match=rf"^--out {digits} already exists; choose another path so that it is not overwritten$"):
        predict.main([str(run), "--out", str(digits)])
    assert digits.read_bytes() == b"the run's own figure"
    proc = _run([str(run), "--out", str(digits)], module="experiments.predict")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --out {digits} already exists; choose another path so that it is not overwritten"], proc.stderr


@pytest.mark.parametrize("count", ["31", "100000"])
def test_predict_caps_count(tmp_path, count):
    from experiments import predict
    from jaxcnn.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^--count must be at most 30 \(10 rows of 3 images in one figure\), got {count}$"):
        predict.main([str(tmp_path), "--count", count])


def test_manual_conv_refuses_a_folder_with_files_and_a_non_finite_bias(tmp_path, capsys):
    from experiments import manual_conv
    from jaxcnn.errors import ConfigError

    out = tmp_path / "figs"
    out.mkdir()
    (out / "digit.png").write_bytes(b"mine")
    with pytest.raises(ConfigError, match=r"already holds files; choose a new directory so that no result is overwritten$"):
        manual_conv.main(["--out", str(out)])
    assert (out / "digit.png").read_bytes() == b"mine" and len(list(out.iterdir())) == 1
    for bias in ("nan", "inf", "-inf"):
        with pytest.raises(SystemExit) as exc:
            manual_conv.main(["--out", str(tmp_path / "new"), f"--bias={bias}"])
        assert exc.value.code == 2
        assert "--bias must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_manual_conv_exits_1_when_its_self_check_says_no(tmp_path, monkeypatch, capsys):
    from experiments import manual_conv

    monkeypatch.setattr(manual_conv, "maxpool", lambda x, *a, **k: manual_conv.maxpool_loop(x, *a, **k) + 1.0)
    with pytest.raises(SystemExit) as exc:
        manual_conv.main(["--out", str(tmp_path / "figs")])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert "agree with the plain-loop references: NO" in captured.out
    assert captured.err.startswith("error: the lax functions of jaxcnn.manual disagree")


def test_random_search_bad_seed_is_one_line_and_creates_nothing(tmp_path):
    out = tmp_path / "rs"
    for seed in ("-1", str(2**32)):
        proc = _run(["--seed", seed, "--out", str(out), "--limit", "200", "--trials", "1", "--epochs", "1"],
                    module="experiments.random_search")
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [f"error: --seed must be a whole number from 0 to 4294967295, got {seed}"], proc.stderr
        assert not out.exists()


def test_random_search_errors_name_the_flags_not_the_fields(tmp_path):
    from experiments import random_search
    from jaxcnn.errors import ConfigError

    for flag, field_name in (("--trials", "trials"), ("--heartbeat", "heartbeat_interval"), ("--batch-size", "batch_size")):
        with pytest.raises(ConfigError, match=f"^{flag} must be a positive integer, got 0$"):
            random_search.main([flag, "0", "--out", str(tmp_path / "rs")])
        assert random_search.FLAGS[field_name] == flag
    assert not (tmp_path / "rs").exists()
    assert random_search.as_flags("grace_period must be ...") == "grace_period must be ..."  # not a flag: as it is


def test_random_search_ctrl_c_says_what_is_kept_and_how_to_continue(tmp_path, monkeypatch, capsys):
    from experiments import random_search as exp
    from experiments.common import main_guard
    from jaxcnn import search

    out = tmp_path / "rs"
    common = ["--limit", "200", "--epochs", "1", "--batch-size", "64", "--verbose", "0", "--out", str(out)]
    exp.main([*common, "--trials", "1"])  # one finished trial
    argv = [*common, "--trials", "2"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "random_search", interrupted)
    assert main_guard(exp.main, argv) == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        f"interrupted: the study in {out} keeps 1 finished trial; continue with: python -m experiments.random_search "
        f"--out {out} --trials 2 --epochs 1 --batch-size 64 --limit 200 --verbose 0"
    )
    fresh = tmp_path / "fresh"
    assert main_guard(exp.main, ["--out", str(fresh), "--verbose", "0"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted: before the search started; nothing was kept"


def test_random_search_stopped_by_failing_trials_says_how_to_continue(tmp_path, monkeypatch, capsys):
    from experiments import random_search as exp
    from experiments.common import main_guard
    from jaxcnn import search
    from jaxcnn.errors import SearchError

    out = tmp_path / "rs"

    def stopped(*args, **kwargs):
        out.mkdir(parents=True)
        (out / "search.json").write_text("{}")  # the study took the settings
        raise SearchError("search stopped: trials 1, 2 and 3 failed in a row ...")

    monkeypatch.setattr(search, "random_search", stopped)
    assert main_guard(exp.main, ["--limit", "200", "--trials", "4", "--verbose", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: search stopped: trials 1, 2 and 3 failed in a row ...; continue with: python -m experiments.random_search "
        f"--out {out} --trials 4 --limit 200 --verbose 0"
    )


def test_random_search_resume_takes_the_searchs_own_settings(tmp_path):
    import json

    from experiments import random_search as exp
    from jaxcnn.errors import ConfigError

    out = tmp_path / "rs"
    exp.main(["--limit", "200", "--epochs", "1", "--batch-size", "64", "--verbose", "0", "--trials", "1", "--out", str(out)])
    settings = (out / "config.json").read_text()
    with pytest.raises(ConfigError, match="holds a different search"):  # new settings: refused, config.json kept
        exp.main(["--limit", "200", "--epochs", "2", "--batch-size", "64", "--verbose", "0", "--out", str(out)])
    assert (out / "config.json").read_text() == settings
    best = exp.main(["--resume", "--out", str(out), "--trials", "2", "--verbose", "0"])  # nothing else repeated
    assert best["trials"] == 2 and json.loads((out / "config.json").read_text())["search"]["trials"] == 2
    assert json.loads((out / "config.json").read_text())["limit"] == 200


def test_report_says_left_out_with_no_cifar(tmp_path):
    from experiments import report

    lines: list[str] = []
    specs = [s for s in report.plan(quick=True) if s.task.startswith("cifar")]
    results = report.execute(specs, tmp_path, cifar_ok=False, cifar_error=report.NO_CIFAR, say=lines.append)
    assert lines and all(line.endswith("skipped, CIFAR-10 left out (--no-cifar)") for line in lines), lines
    sec = report.cifar_section(1, [r for r in results if r.spec.task == "cifar1"], True, report.NO_CIFAR, "fill")
    text = " ".join(b.text for b in sec.blocks if isinstance(b, report.Para))
    assert sec.status == "CIFAR-10 left out (--no-cifar): not run" and "not found" not in text, text
    assert "left out (--no-cifar)" in sec.headline[0]


def test_report_reruns_predict_over_its_own_stale_figure(tmp_path, monkeypatch):
    from experiments import report

    best = tmp_path / "best"
    (best / "model").mkdir(parents=True)
    (best / "model" / "params.msgpack").write_bytes(b"new model")
    stem = tmp_path / "figures" / "rs-best-predictions"
    stem.parent.mkdir()
    stem.with_suffix(".png").write_bytes(b"old figure")  # and no STEM.json: stale

    def fake_predict(module, argv, log, verbose):
        target = Path(argv[argv.index("--out") + 1])
        assert not target.exists()  # experiments.predict refuses an existing --out
        target.write_bytes(b"new figure")
        return {"loss": 0.5, "accuracy": 0.9}, ""

    monkeypatch.setattr(report, "call_main", fake_predict)
    value, error, png = report.predict_best(best, stem, tmp_path / "predict.log", False)
    assert (value, error) == ({"loss": 0.5, "accuracy": 0.9}, "") and png.read_bytes() == b"new figure"
    assert sorted(p.name for p in stem.parent.iterdir()) == ["rs-best-predictions.json", "rs-best-predictions.png"]


def test_usage_lines_name_the_command_users_type(capsys):
    from experiments import cifar10, mnist, predict, random_search

    for module, name in ((mnist, "mnist"), (cifar10, "cifar10"), (predict, "predict"), (random_search, "random_search")):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        assert capsys.readouterr().out.startswith(f"usage: python -m experiments.{name} ")


def test_cifar10_help_says_whose_defaults_it_shows(capsys):
    from experiments import cifar10

    for argv, shown in ((["--help"], "CNN 1's 10"), (["--model", "3", "--help"], "CNN 3's 20"),
                        (["--model", "mnist_cnn", "--help"], "CNN 1's, for other models 10")):
        with pytest.raises(SystemExit):
            cifar10.parse_config(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert f"maximum epochs (default: the --model's; {shown})" in out


def test_cli_refusals_a_new_user_met(tmp_path, monkeypatch):
    """One line each, before any run directory: a --tensorboard that is a file, a --model module
    that fails on import, --precision bf16 on a module without dtype, a module path without
    :Class, --devices 0, and --tensorboard added when resuming a run started without it."""
    from experiments import mnist
    from jaxcnn.errors import ConfigError

    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "broken.py").write_text("raise RuntimeError('oops in my module')\n")
    (pkg / "nets.py").write_text(
        "import flax.linen as nn\n\n"
        "class Net(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, x, train: bool = False):\n"
        "        return nn.Dense(10)(x.reshape(x.shape[0], -1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    afile = tmp_path / "afile.txt"
    afile.write_text("hi")
    out = tmp_path / "run"
    cases = [
        (["--tensorboard", str(afile)], "--tensorboard .*afile.txt is a file; give a directory"),
        (["--model", "userpkg.broken:X"], r"importing userpkg.broken failed \(RuntimeError: oops in my module\) \(broken.py, line 1\)"),
        (["--model", "userpkg.nets:Net", "--precision", "bf16"], "--precision bf16 builds the model with dtype=jnp.bfloat16, and Net takes no dtype"),
        (["--model", "userpkg.nets"], "for a class of your own write userpkg.nets:ClassName"),
        (["--devices", "0"], "got 0; the number of devices must be at least 1 and at most"),
    ]
    for argv, message in cases:
        with pytest.raises(ConfigError, match=message):
            mnist.main([*argv, "--out", str(out), "--limit", "200", "--test-limit", "200", "--epochs", "1", "--verbose", "0"])
        assert not out.exists(), argv
    mnist.main(["--model", "userpkg.nets:Net", "--out", str(out), "--limit", "200", "--test-limit", "200", "--epochs", "1", "--verbose", "0"])
    with pytest.raises(ConfigError, match="started without --tensorboard, and its checkpoints hold the callbacks it had"):
        mnist.main(["--resume", "--out", str(out), "--epochs", "2", "--tensorboard", str(tmp_path / "tb")])
