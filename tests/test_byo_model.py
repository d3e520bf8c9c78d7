"""The README's "Bring your own model" section runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def test_readme_bring_your_own_model_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    # Classes defined by exec live in a module the reload can import: give them one.
    import sys
    import types

    mod = types.ModuleType("readme_models")
    sys.modules["readme_models"] = mod
    mod.__dict__["__name__"] = "readme_models"
    exec(compile(code, "README.md", "exec"), mod.__dict__)
    out = capsys.readouterr().out
    assert out.count("Total params") == 2
    assert (tmp_path / "my-model" / "model.json").read_text().count("readme_models:MyNNX") == 1
    classes = re.findall(r"\[(\d) (\d) (\d)\]", out)
    assert len(classes) == 2
    accs = [float(a) for a in re.findall(r"\[(0\.\d+)\] \{", out)]
    assert len(accs) == 2 and min(accs) > 0.5, out[-2000:]
    assert np.isfinite(accs).all()
