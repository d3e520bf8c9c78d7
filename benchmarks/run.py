"""Side-by-side training-speed benchmark: jaxcnn vs PyTorch (CPU) vs Keras 3 (JAX backend).

    python benchmarks/run.py                      # both models, all three frameworks, once
    python benchmarks/run.py --repeat 3           # median of 3 interleaved rounds
    python benchmarks/run.py --quick              # smoke test: 3 steps, about a minute
    python benchmarks/run.py --experiment         # also the whole MNIST experiment, both sides

Each framework runs in its own subprocess (benchmarks/peer_<name>.py, same CLI and JSON), one
after another, never two at once; with --repeat N the order of the frameworks rotates from one
round to the next, so that a slow patch of a noisy machine does not always hit the same one.
Results: a Markdown table per model, printed and written to --out (default
benchmarks/results/latest.md), and every raw JSON next to it (latest.json). What each number
means: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FRAMEWORKS = ("jaxcnn", "torch", "keras")
MODELS = ("mnist_cnn", "search_cnn", "cifar_cnn1", "cifar_cnn2", "cifar_cnn3", "cifar_cnn4")
DEFAULT_MODELS = ("mnist_cnn", "cifar_cnn3")
# Medians of these are reported; every other field comes from the first successful run.
NUMERIC = ("examples_per_s", "step_ms", "first_step_s", "wall_s", "import_s", "peak_rss_mb",
           "process_s", "harness_s")
# Read from experiments.mnist's metrics.json and keras_mnist_experiment.py's JSON.
EXPERIMENT_KEYS = ("test_accuracy", "test_loss", "wall_time_s", "epochs_run", "steady_epoch_time_s")
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "keras", "jaxcnn")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated, of {', '.join(MODELS)}, or 'all' (default: {','.join(DEFAULT_MODELS)})")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help=f"comma-separated, of {FRAMEWORKS}")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps (default: each model's, mnist_cnn 200, search_cnn and cifar_cnn1/2 100, cifar_cnn3/4 20)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="override the assignment's batch size (mnist_cnn 128, search_cnn 256, cifar_cnn1/2 128, cifar_cnn3/4 512)")
    p.add_argument("--threads", type=int, default=None,
                   help="passed to every peer; only torch uses it (torch.set_num_threads)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds; numbers are the median over rounds, frameworks interleaved")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 3 timed steps, 1 warm-up, a small pool; experiment 1 epoch "
                        "on 2,000 examples")
    p.add_argument("--experiment", action="store_true",
                   help="also run `python -m experiments.mnist` vs keras_mnist_experiment.py")
    p.add_argument("--experiment-epochs", type=int, default=None,
                   help="--epochs for both experiment runs (default: theirs, 10)")
    p.add_argument("--experiment-limit", type=int, default=None,
                   help="--limit N for both experiment runs (default: all of MNIST)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    p.add_argument("--out", default=os.path.join(HERE, "results", "latest.md"),
                   help="Markdown report; the JSON goes beside it with a .json suffix")
    args = p.parse_args()
    args.models = list(MODELS) if args.models.strip() == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for f in args.frameworks:
        if f not in FRAMEWORKS:
            p.error(f"unknown framework {f!r}; choose from {', '.join(FRAMEWORKS)}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.quick:
        args.steps = 3 if args.steps is None else args.steps
        args.warmup = 1 if args.warmup is None else args.warmup
        if args.experiment_epochs is None:
            args.experiment_epochs = 1
        if args.experiment_limit is None:
            args.experiment_limit = 2000
    return args


def run_subprocess(cmd: list[str], log_path: str, timeout: float) -> tuple[int, float, str]:
    """Runs cmd from the repo root, output to log_path; (exit code, seconds, log tail)."""
    env = dict(os.environ, KERAS_BACKEND="jax")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    t = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    seconds = time.perf_counter() - t
    with open(log_path) as log:
        tail = log.read()[-2000:]
    return rc, seconds, tail


def run_peer(fw: str, model: str, args: argparse.Namespace, tmp: str, tag: str) -> dict[str, Any]:
    out_json = os.path.join(tmp, f"{tag}.json")
    cmd = [sys.executable, os.path.join(HERE, f"peer_{fw}.py"), "--model", model, "--json", out_json]
    for flag, value in (("--steps", args.steps), ("--warmup", args.warmup),
                        ("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.quick:
        cmd += ["--distinct", "1"]  # one batch is enough for a smoke test
    print(f"  {shlex.join(cmd)}", flush=True)
    rc, seconds, tail = run_subprocess(cmd, os.path.join(tmp, f"{tag}.log"), args.timeout)
    if rc != 0 or not os.path.exists(out_json):
        print(f"  FAILED (exit {rc}):\n{tail}", flush=True)
        return {"framework_key": fw, "model": model, "ok": False, "rc": rc, "error": tail,
                "cmd": cmd}
    with open(out_json) as f:
        res = json.load(f)
    res.update(framework_key=fw, ok=True, harness_s=seconds, cmd=cmd)
    print(f"  -> {res['examples_per_s']:,.0f} examples/s, first step {res['first_step_s']:.2f} s,"
          f" wall {res['wall_s']:.2f} s, peak RSS {res['peak_rss_mb']:,.0f} MB", flush=True)
    return res


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric field over the successful runs of one (model, framework)."""
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        return {"ok": False, "runs": len(runs), "error": runs[-1].get("error", "") if runs else ""}
    s = {k: v for k, v in ok[0].items() if k not in NUMERIC}
    for k in NUMERIC:
        vals = [r[k] for r in ok if isinstance(r.get(k), (int, float))]
        if vals:
            s[k] = statistics.median(vals)
    eps = [r["examples_per_s"] for r in ok]
    s.update(ok=True, runs=len(ok), failed_runs=len(runs) - len(ok),
             examples_per_s_min=min(eps), examples_per_s_max=max(eps))
    return s


def label(s: dict[str, Any]) -> str:
    fw = s["framework_key"]
    v = s.get("versions", {})
    if fw == "torch":
        return f"PyTorch {s.get('version')} (CPU, {s.get('threads_used')} threads)"
    if fw == "keras":
        return f"Keras {s.get('version')} (JAX {v.get('jax')})"
    version = "" if s.get("version") in (None, "unknown") else f" {s['version']}"
    extra = ", placeholder: flax+optax" if s.get("implementation", "").startswith("placeholder") else ""
    return f"jaxcnn{version} (JAX {v.get('jax')}{extra})"


def fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def model_table(model: str, summaries: dict[str, dict[str, Any]], args) -> list[str]:
    ref = summaries.get("jaxcnn", {})
    ref_eps = ref.get("examples_per_s") if ref.get("ok") else None
    first_ok = next((s for s in summaries.values() if s.get("ok")), {})
    lines = [f"### {model}", ""]
    if first_ok:
        lines += [f"Batch {first_ok['batch_size']}, {first_ok['steps']} timed steps after "
                  f"{first_ok['warmup']} warm-up step(s) (the first included), random data "
                  f"({first_ok['distinct_examples']:,} distinct examples cycled), "
                  f"{first_ok['params']:,} parameters; median of {args.repeat} run(s).", ""]
    lines += ["| framework | examples/s | ratio vs jaxcnn | first step s | wall s | peak RSS MB "
              "| process s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for fw, s in summaries.items():
        if not s.get("ok"):
            lines.append(f"| {fw} | failed | | | | | |")
            continue
        eps = s["examples_per_s"]
        spread = ""
        if s["runs"] > 1:
            spread = f" ({s['examples_per_s_min']:,.0f} to {s['examples_per_s_max']:,.0f})"
        ratio = fmt(eps / ref_eps, ".2f") + "x" if ref_eps else "n/a"
        lines.append(f"| {label(s)} | {eps:,.0f}{spread} | {ratio} | {s['first_step_s']:.2f} "
                     f"| {s['wall_s']:.2f} | {s['peak_rss_mb']:,.0f} | {s['harness_s']:.2f} |")
    return lines + [""]


def run_experiment(args: argparse.Namespace, tmp: str) -> dict[str, dict[str, Any]]:
    extra: list[str] = []
    if args.experiment_epochs is not None:
        extra += ["--epochs", str(args.experiment_epochs)]
    if args.experiment_limit is not None:
        extra += ["--limit", str(args.experiment_limit)]
    results: dict[str, dict[str, Any]] = {}

    out_dir = os.path.join(tmp, "experiment_jaxcnn")
    # --verbose 0 on both sides: no progress bars in the timing.
    cmd = [sys.executable, "-m", "experiments.mnist", "--out", out_dir, "--verbose", "0", *extra]
    print(f"  {shlex.join(cmd)}", flush=True)
    rc, seconds, tail = run_subprocess(cmd, os.path.join(tmp, "experiment_jaxcnn.log"),
                                       args.timeout)
    found = sorted(glob.glob(os.path.join(out_dir, "**", "metrics.json"), recursive=True))
    if rc == 0 and found:
        with open(found[0]) as f:
            m = json.load(f)
        results["jaxcnn"] = {"ok": True, "cmd": cmd, "harness_s": seconds, "metrics": m,
                             **{k: m.get(k) for k in EXPERIMENT_KEYS}}
    else:
        why = f"exit {rc}" if rc else "no metrics.json under --out"
        print(f"  FAILED ({why}):\n{tail}", flush=True)
        results["jaxcnn"] = {"ok": False, "cmd": cmd, "rc": rc, "error": f"{why}\n{tail}"}

    out_json = os.path.join(tmp, "experiment_keras.json")
    cmd = [sys.executable, os.path.join(HERE, "keras_mnist_experiment.py"), "--json", out_json,
           "--verbose", "0", *extra]
    print(f"  {shlex.join(cmd)}", flush=True)
    rc, seconds, tail = run_subprocess(cmd, os.path.join(tmp, "experiment_keras.log"),
                                       args.timeout)
    if rc == 0 and os.path.exists(out_json):
        with open(out_json) as f:
            m = json.load(f)
        results["keras"] = {"ok": True, "cmd": cmd, "harness_s": seconds, "metrics": m,
                            **{k: m.get(k) for k in EXPERIMENT_KEYS}}
    else:
        print(f"  FAILED (exit {rc}):\n{tail}", flush=True)
        results["keras"] = {"ok": False, "cmd": cmd, "rc": rc, "error": tail}
    return results


def experiment_table(results: dict[str, dict[str, Any]], args) -> list[str]:
    lines = ["### MNIST experiment (1.1 to 1.4: RMSprop, batch 128, validation_split 0.2, "
             "EarlyStopping patience 5)", ""]
    if args.experiment_epochs is not None or args.experiment_limit is not None:
        lines += [f"Shortened: --epochs {args.experiment_epochs}, --limit "
                  f"{args.experiment_limit}.", ""]
    lines += ["wall s: jaxcnn's `wall_time_s` spans its whole run after imports (data, summary, "
              "fit, plots, checkpoint, evaluate); Keras's spans data loading, build, fit and "
              "evaluate. steady s/epoch: the median epoch (training and validation) after the "
              "first, which compiles: the like-for-like number.", ""]
    lines += ["| framework | epochs run | test accuracy | test loss | wall s | steady s/epoch "
              "| wall ratio vs jaxcnn | process s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ref = results.get("jaxcnn", {})
    ref_wall = ref.get("wall_time_s") if ref.get("ok") else None
    for fw, r in results.items():
        if not r.get("ok"):
            lines.append(f"| {fw} | failed | | | | | | |")
            continue
        wall, epochs = r.get("wall_time_s"), r.get("epochs_run")
        per_epoch = r.get("steady_epoch_time_s")
        ratio = fmt(wall / ref_wall, ".2f") + "x" if wall and ref_wall else "n/a"
        lines.append(f"| {fw} | {fmt(epochs, 'd')} | {fmt(r.get('test_accuracy'), '.4f')} "
                     f"| {fmt(r.get('test_loss'), '.4f')} | {fmt(wall, '.1f')} "
                     f"| {fmt(per_epoch, '.1f')} | {ratio} | {r['harness_s']:.1f} |")
    return lines + [""]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    # A "virtual" CPU name hides the generation, and XLA's code depends on the vector units:
    # figures from a machine with AVX-512 and one without are not comparable.
    flags = set(fields.get("flags", "").split())
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    if "cpu family" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')}; {' '.join(simd) or 'no AVX2'})"
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gb = int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def main() -> int:
    args = parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    info = machine_info()
    info["loadavg_start"] = os.getloadavg()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        m: {fw: [] for fw in args.frameworks} for m in args.models}
    experiment = None

    with tempfile.TemporaryDirectory(prefix="jaxcnn-bench-") as tmp:
        for r in range(args.repeat):
            k = r % len(args.frameworks)
            order = args.frameworks[k:] + args.frameworks[:k]
            for model in args.models:
                print(f"round {r + 1}/{args.repeat}, {model}: {', '.join(order)}", flush=True)
                for fw in order:
                    runs[model][fw].append(run_peer(fw, model, args, tmp, f"{model}_{fw}_{r}"))
        if args.experiment:
            print("MNIST experiment", flush=True)
            experiment = run_experiment(args, tmp)
    info["loadavg_end"] = os.getloadavg()

    summaries = {m: {fw: summarise(runs[m][fw]) for fw in args.frameworks} for m in args.models}
    v = info["versions"]
    md = [
        "# Training speed: jaxcnn vs PyTorch vs Keras", "",
        f"- Date: {started}",
        f"- Machine: {info['cpu']}, {info['cpu_count']} logical CPUs "
        f"({info['cpu_affinity']} usable), {fmt(info['mem_gb'], '.0f')} GiB RAM; "
        f"{info['platform']}",
        f"- Load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in info['loadavg_start'])} "
        f"at the start, {', '.join(f'{x:.2f}' for x in info['loadavg_end'])} at the end",
        f"- Python {info['python']}; " + ", ".join(f"{k} {v[k]}" for k in LIBRARIES),
        f"- Code: git {info['git_commit']}{' (with uncommitted changes)' if info['git_dirty'] else ''}",
        f"- Command: `{command}`", "",
        "examples/s: training examples per second over the timed steps, after warm-up. "
        "Ratio: that framework's examples/s divided by jaxcnn's (above 1 means faster than "
        "jaxcnn). first step s: the first training step in a fresh process, compile included. "
        "wall s: model build + warm-up + timed steps (framework import excluded). process s: "
        "the whole subprocess as the harness saw it. See benchmarks/README.md.", "",
    ]
    for m in args.models:
        md += model_table(m, summaries[m], args)
    if experiment is not None:
        md += experiment_table(experiment, args)
    failed = [f"{m}/{fw}" for m in args.models for fw in args.frameworks
              if any(not r.get("ok") for r in runs[m][fw])]
    if experiment is not None:
        failed += [f"experiment/{fw}" for fw, r in experiment.items() if not r.get("ok")]
    if failed:
        md += [f"Failed runs: {', '.join(failed)} (errors in the JSON).", ""]
    text = "\n".join(md)
    print("\n" + text)

    out_md = args.out
    out_json = os.path.splitext(out_md)[0] + ".json"
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    with open(out_md, "w") as f:
        f.write(text)
    with open(out_json, "w") as f:
        json.dump({"command": command, "started": started, "machine": info,
                   "settings": {k: getattr(args, k) for k in (
                       "models", "frameworks", "steps", "warmup", "batch_size", "threads",
                       "repeat", "quick", "experiment", "experiment_epochs", "experiment_limit")},
                   "summary": summaries, "runs": runs, "experiment": experiment}, f, indent=2)
    print(f"wrote {out_md} and {out_json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
