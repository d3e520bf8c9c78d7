"""Data parallel and multi-process training, and determinism.

The device count of the CPU backend is fixed when JAX starts (``XLA_FLAGS``), and this test
session's JAX has already started with one device, so the multi-device checks run in a fresh
Python process with ``--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxcnn
from experiments.common import initialize_distributed
from jaxcnn import data
from jaxcnn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(
        PYTHONPATH=str(ROOT),
        JAXCNN_OFFLINE="1",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        **extra,
    )
    return env


def _python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


DATA_PARALLEL = """
import json, jax, numpy as np, jaxcnn
from jaxcnn import data
from jaxcnn.errors import ConfigError
assert jax.local_device_count() == 4, jax.devices()
ds = data.load("mnist").limit(512)
x, y = data.to_float(ds.x_train), ds.y_train
model = jaxcnn.get_model("mnist_cnn")
kw = dict(epochs=2, batch_size=64, validation_split=0.25, seed=0, verbose=0)
one = jaxcnn.fit(model, x, y, devices=1, **kw)
four = jaxcnn.fit(model, x, y, devices="all", **kw)
leaf = jax.tree.leaves(four.state.params)[0]
try:
    jaxcnn.fit(model, x, y, epochs=1, batch_size=66, devices="all", verbose=0)
    refusal = None
except ConfigError as e:
    refusal = str(e)
keys = ("loss", "accuracy", "val_loss", "val_accuracy")
print(json.dumps({
    "one": {k: one.history[k] for k in keys},
    "four": {k: four.history[k] for k in keys},
    "max_param_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                          for a, b in zip(jax.tree.leaves(one.state.params), jax.tree.leaves(four.state.params))),
    "param_devices": len(leaf.sharding.device_set),
    "replicated": bool(leaf.sharding.is_fully_replicated),
    "refusal": refusal,
}))
"""


@pytest.mark.slow
def test_data_parallel_over_4_cpu_devices_matches_one_device():
    proc = _python(DATA_PARALLEL, _env(4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        # Same batches, same steps; only the order of the floating-point sums differs.
        np.testing.assert_allclose(r["four"][k], r["one"][k], rtol=1e-4, atol=1e-4, err_msg=k)
    assert r["max_param_diff"] < 1e-4
    assert r["param_devices"] == 4 and r["replicated"]  # parameters replicated on every device
    assert r["refusal"] is not None
    assert "batch_size 66 does not divide over 4 devices; use a multiple of 4" in r["refusal"]


WORKER = """
import json, sys, jax, numpy as np
from experiments.common import initialize_distributed
assert initialize_distributed() is True
assert initialize_distributed() is True  # a second call is a no-op
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
# The global batch 0..7; each process holds only its half, as a multi-host input pipeline would.
pid = jax.process_index()
local = np.arange(8, dtype=np.float32)[pid * 4:(pid + 1) * 4]
g = jax.make_array_from_process_local_data(batch, local, (8,))
total = jax.jit(lambda a: a.sum(), out_shardings=replicated)(g)
print(json.dumps({"index": pid, "count": jax.process_count(), "devices": jax.device_count(),
                  "local": jax.local_device_count(), "sum": float(total)}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(code: str, timeout: float) -> list[dict]:
    """Run ``code`` as a 2-process job (2 CPU devices each) joined through JAXCNN_*; return the
    JSON each process printed last."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=_env(2, JAXCNN_COORDINATOR=f"127.0.0.1:{port}", JAXCNN_NUM_PROCESSES="2", JAXCNN_PROCESS_ID=str(i)),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the 2-process job did not finish in {timeout:.0f} s")
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_join_through_the_environment():
    """initialize_distributed() reads JAXCNN_* and joins a 2-process job (2 CPU devices each)."""
    results = _two_processes(WORKER, timeout=90)
    assert sorted(r["index"] for r in results) == [0, 1]
    for r in results:
        assert (r["count"], r["devices"], r["local"]) == (2, 4, 2)
        assert r["sum"] == 28.0  # 0 + 1 + ... + 7: both halves took part


def test_initialize_distributed_does_nothing_without_settings():
    assert initialize_distributed(environ={}) is False


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"JAXCNN_NUM_PROCESSES": "2", "JAXCNN_PROCESS_ID": "0"}, r"without --coordinator \(JAXCNN_COORDINATOR\)"),
        ({"JAXCNN_COORDINATOR": "node001"}, r"coordinator must be 'host:port' \(e\.g\. node001:12355\) or 'auto'"),
        ({"JAXCNN_COORDINATOR": "node001:1234"}, r"needs the number of processes and this process's id too"),
        ({"JAXCNN_COORDINATOR": "node001:1234", "JAXCNN_NUM_PROCESSES": "two", "JAXCNN_PROCESS_ID": "0"},
         r"JAXCNN_NUM_PROCESSES must be an integer, got 'two'"),
        ({"JAXCNN_COORDINATOR": "node001:1234", "JAXCNN_NUM_PROCESSES": "2", "JAXCNN_PROCESS_ID": "2"},
         r"process id 2 is outside 0\.\.1 for 2 processes"),
    ],
)
def test_initialize_distributed_refuses_bad_settings(environ, match):
    # Every check runs before jax.distributed is touched, so this process stays single.
    with pytest.raises(ConfigError, match=match):
        initialize_distributed(environ=environ)


def test_same_seed_gives_bit_identical_history():
    ds = data.load("mnist").limit(256)
    x, y = data.to_float(ds.x_train), ds.y_train
    model = jaxcnn.get_model("mnist_cnn")
    kw = dict(epochs=2, batch_size=32, validation_split=0.25, seed=7, verbose=0)
    a = jaxcnn.fit(model, x, y, **kw)
    b = jaxcnn.fit(model, x, y, **kw)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert a.history[k] == b.history[k], k  # exact equality, not a tolerance
    for p, q in zip(jax_leaves(a.state.params), jax_leaves(b.state.params)):
        np.testing.assert_array_equal(p, q)


def jax_leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


FIT_WORKER = """
import json, jax, numpy as np, jaxcnn
from experiments.common import initialize_distributed
from jaxcnn import data
initialize_distributed()
ds = data.load("mnist").limit(384)
x, y = data.to_float(ds.x_train), ds.y_train
r = jaxcnn.fit(jaxcnn.get_model("mnist_cnn", filters=8, dense_units=16), x, y, epochs=2, batch_size=64,
               validation_split=0.25, seed=0, verbose=0, devices="all")
leaf = jax.tree.leaves(r.state.params)[0]
outputs = jaxcnn.predict(r.state, x[:40], batch_size=16)  # every process, on the state spread over both
scores = jaxcnn.evaluate(r.state, x[:40], y[:40], batch_size=16)  # "auto": every process takes part (process 1 crashed)
try:
    jaxcnn.evaluate(r.state, x[:40], y[:40], devices=None)
    refused = ""
except jaxcnn.errors.ConfigError as e:
    refused = str(e)
print(json.dumps({"refused": refused, "devices": len(leaf.sharding.device_set), "history": {k: r.history[k] for k in ("loss", "val_loss", "val_accuracy")},
                  "outputs": outputs.tolist(), "scores": scores}))
"""


@pytest.mark.slow
def test_fit_over_two_processes_matches_one_process():
    """2 processes x 2 CPU devices train one model over all 4 devices, as 1 process x 4 does."""
    single = _python(FIT_WORKER, _env(4))
    assert single.returncode == 0, single.stderr[-3000:]
    ref = json.loads(single.stdout.strip().splitlines()[-1])
    assert ref["refused"] == ""  # one process: devices=None is one device
    for got in _two_processes(FIT_WORKER, timeout=120):
        assert got["devices"] == ref["devices"] == 4
        assert got["refused"].startswith("devices=None runs the model on one device, but this job has 2 processes and each must take part")
        for k, v in ref["history"].items():
            np.testing.assert_allclose(got["history"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(got["outputs"], ref["outputs"], rtol=1e-5, atol=1e-6)
        for k, v in ref["scores"].items():
            np.testing.assert_allclose(got["scores"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)


_STARVED = r"""
import os, sys, time
import jaxcnn
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()[:2]), ("d",))

def slow(i):  # one device's thread kept from the all-reduce, as by a machine busy with other work
    if int(i) == 1:
        time.sleep(float(sys.argv[1]))
    return np.int32(i)

def f(x):
    j = jax.pure_callback(slow, jax.ShapeDtypeStruct((), jnp.int32), jax.lax.axis_index("d"))
    return jax.lax.psum(x + j.astype(x.dtype), "d")

print(float(jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("d"), out_specs=P()))(jnp.arange(2.0))[0]))
"""


def test_a_device_kept_waiting_at_an_all_reduce_does_not_abort_the_process():
    """jaxcnn's import raises XLA:CPU's all-reduce termination timeout (jaxcnn.patient_collectives):
    XLA's default aborted a BatchNorm run whose other device's thread a busy machine starved for a
    minute. The flag's name is the one XLA reads: set short, the same wait aborts."""
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU flag")
    assert jaxcnn.XLA_CPU_COLLECTIVE_FLAG in os.environ["XLA_FLAGS"]
    base = "--xla_force_host_platform_device_count=2 --xla_cpu_collective_call_warn_stuck_timeout_seconds=1"
    env = {**os.environ, "JAXCNN_CPU_DEVICES": "1"}
    patient = subprocess.run([sys.executable, "-c", _STARVED, "4"], env={**env, "XLA_FLAGS": base}, capture_output=True,
                             text=True, timeout=120)
    assert patient.returncode == 0 and patient.stdout.split()[-1] == "2.0", patient.stderr[-2000:]
    short = subprocess.run([sys.executable, "-c", _STARVED, "8"], capture_output=True, text=True, timeout=120,
                           env={**env, "XLA_FLAGS": f"{base} --xla_cpu_collective_call_terminate_timeout_seconds=1"})
    assert short.returncode != 0 and "Termination timeout" in short.stderr


def test_cpu_mesh_programs_start_only_after_the_one_before(monkeypatch):
    """XLA:CPU's in-process all-reduce deadlocked with several mesh programs queued (docs/cpu.md):
    each CPU mesh program waits for its inputs, the outputs of the program before, first."""
    import jax

    from jaxcnn.train import strategies

    devices = jax.devices("cpu")
    if len(devices) < 2:
        pytest.skip("needs two CPU devices")
    place = strategies.Placement(tuple(devices[:2]))
    program = strategies._mesh_eval(place)
    assert isinstance(program, strategies._OneAtATime) and program.wait
    order = []
    monkeypatch.setattr(jax, "block_until_ready", lambda tree: order.append("waited") or tree)
    monkeypatch.setattr(program, "fn", lambda *args: order.append("ran") or args)
    program(1, 2, 3)
    assert order == ["waited", "ran"]
    assert not strategies._OneAtATime(lambda: None, strategies.Placement(tuple(devices[:1]))).wait  # one device: no collective
