"""Every command and code block in README.md, run as written (issue 15: "the README's commands
all run as written from a fresh clone").

* The two set-up commands at the top make a virtual environment and install into it: a test
  cannot repeat that (minutes, a network), so it checks that CI (``.ci/run``) runs exactly the
  README's test command, and that every piece of the first command exists.
* Every other ``bash`` block runs line by line, and every ``python`` block runs (all of them in
  order, in one process: a block may use what an earlier one defined, as a reader's session
  does), in a fresh folder outside the clone, with ``python`` being this interpreter and the
  clone on ``PYTHONPATH`` (as ``pip install -e .`` gives).
* Every ``python -m experiments.<name> ...`` written inline (the experiments table) names a
  module whose ``--help`` works and lists every flag used.
A command that needs a service the test machine lacks (a PostgreSQL server) is skipped, saying so.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, text) of each fenced block in ``language``."""
    return [(README[: m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(README) if m.group(1) == language]


SETUP = [(line, text) for line, text in blocks("bash") if "python3 -m venv" in text]
COMMANDS = [
    (line + i + 1, cmd)
    for line, text in blocks("bash") if "python3 -m venv" not in text
    for i, cmd in enumerate(text.splitlines()) if cmd.strip() and not cmd.lstrip().startswith("#")
]


def _env(tmp: Path) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "python"  # a wrapper, not a symlink: a venv's python must keep its own path
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    # XLA's default optimisation level, as a reader runs them: the README trains on thousands of
    # examples, where the suite's level 0 (tests/conftest.py) costs more in running than it saves
    # in compiling (110 s against 77 s for the python blocks here).
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_backend_optimization_level" not in f)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
            "MPLBACKEND": "Agg", "JAXCNN_OFFLINE": "1", "XLA_FLAGS": flags}


def test_the_setup_commands_are_what_ci_runs():
    assert len(SETUP) == 2, "the README should open with the install-and-train and the test commands"
    (_, first), (_, second) = SETUP
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert second.strip() in ci, "the README's test command must be the one .ci/run runs"
    pieces = [p.strip() for p in first.strip().split("&&")]
    assert pieces[0] == "python3 -m venv .venv"
    install = shlex.split(pieces[1])
    assert install[:2] == [".venv/bin/pip", "install"] and (ROOT / install[install.index("-c") + 1]).is_file()
    assert install[-1] == "." and (ROOT / "pyproject.toml").is_file()
    module = shlex.split(pieces[2])[-1]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


@pytest.mark.slow
@pytest.mark.parametrize("line, command", COMMANDS, ids=[f"line{line}" for line, _ in COMMANDS])
def test_each_command_runs_as_written(line, command, tmp_path_factory):
    if "postgresql://" in command:
        pytest.skip("needs a PostgreSQL server (tests/test_search*.py start one where it is installed)")
    cwd = tmp_path_factory.getbasetemp() / "readme-commands"  # shared: later commands use earlier runs
    cwd.mkdir(exist_ok=True)
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"README line {line}: {command}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_the_python_blocks_run_in_order(tmp_path):
    code = ["import sys, traceback", "failed = []"]
    for line, text in blocks("python"):
        code.append(textwrap.dedent(f"""
            try:
                exec(compile({text!r}, "README.md line {line}", "exec"), globals())
            except Exception:
                failed.append({line})
                traceback.print_exc()
            """))
    code.append("sys.exit(f'README blocks failed at lines {failed}' if failed else 0)")
    (tmp_path / "readme_blocks.py").write_text("\n".join(code))
    proc = subprocess.run([sys.executable, "readme_blocks.py"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-5000:]


def test_the_error_rows_are_those_of_docs_errors_md():
    """The README shows the commonest errors; docs/errors.md has the whole table. A README row
    is a copy of a docs row, so that the two cannot drift apart."""
    section = README[README.index("## Bad input and what it gets"):]
    section = section[: section.index("\n## ")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| bad input", "| ---"))]
    docs = set((ROOT / "docs" / "errors.md").read_text().splitlines())
    assert len(rows) >= 5
    assert [row for row in rows if row not in docs] == []


INLINE = sorted(set(re.findall(r"`(python -m experiments\.\w+[^`]*)`", README)))


@pytest.mark.parametrize("command", INLINE)
def test_inline_commands_name_real_modules_and_flags(command, capsys):
    import importlib

    words = command.split()
    module = importlib.import_module(words[2])
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in (w for w in words[3:] if w.startswith("--")):
        assert flag.split("=")[0] in text, f"{command}: {flag} is not in --help"
