"""Test configuration: strict numerics, headless plots, no network."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Tests never download: a missing file must produce our own error, not a network attempt.
os.environ.setdefault("JAXCNN_OFFLINE", "1")
# The experiments keep compiled programs between runs; tests keep theirs in one fresh folder,
# made by the process that starts the run (pytest-xdist's workers and the tests' subprocesses
# inherit it) and removed when that process ends, so runs leave nothing in /tmp.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "JAXCNN_COMPILE_CACHE" not in os.environ:
    os.environ["JAXCNN_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="jaxcnn-test-xla-")
    atexit.register(shutil.rmtree, os.environ["JAXCNN_COMPILE_CACHE"], True)

# Tests run small models for a step or two, so compiling dominates: LLVM's lowest optimisation
# level compiles 1.5 to 2x faster here and gives the same results (only the machine code is less
# tuned). Subprocesses inherit it; a test that needs XLA_FLAGS of its own sets them whole.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# The suite convolves whole batches, as the library does by default: chunking a CPU batch's
# convolutions (jaxcnn.layers.CONV_CHUNK, off unless JAXCNN_CONV_CHUNK asks) makes each program
# several times longer to compile. The tests that exercise it turn it on themselves
# (test_fast_paths, test_engine).
os.environ.setdefault("JAXCNN_CONV_CHUNK", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# In-process tests share that folder too: many tests train the same small models on the same
# shapes, and a program compiled by one test is loaded by the next instead of compiled again.
import jaxcnn  # noqa: E402

jaxcnn.compilation_cache(os.environ["JAXCNN_COMPILE_CACHE"])


import pytest  # noqa: E402


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """An empty user cache, no downloads, and a fresh loader memo before and after the test."""
    from jaxcnn import data

    monkeypatch.setenv("JAXCNN_DATA", str(tmp_path / "user-cache"))
    monkeypatch.setenv("JAXCNN_OFFLINE", "1")
    data.clear_memo()
    yield
    data.clear_memo()
