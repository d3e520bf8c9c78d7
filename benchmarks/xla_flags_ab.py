"""jaxcnn's training step with and without an XLA_FLAGS setting, beside PyTorch, in one run.

    python benchmarks/xla_flags_ab.py                          # every model, 3 rounds
    python benchmarks/xla_flags_ab.py --models mnist_cnn,bn_mnist --repeat 2 --json ab.json

By default it compares jaxcnn's convolutions on XLA's own kernels (what ``import jaxcnn`` sets,
``jaxcnn.XLA_CPU_FLAG``) with XLA's default for jaxlib 0.10, YNNPACK's
(``--xla_cpu_experimental_ynn_fusion_type=+individual_convolution``, which jaxcnn leaves as the
user set it). ``--a`` and ``--b`` take any two ``XLA_FLAGS`` values instead, and ``--a-env``/``--b-env`` add other
environment variables (``--b-env JAXCNN_IM2COL_MIN_FEATURES=64`` compares a ``conv_plan`` rule). Each round runs, per
model, ``peer_jaxcnn.py`` under A, under B and ``peer_torch.py``, each in its own process, the
order rotated from round to round; the table gives medians (examples/s) and the ratios.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ["mnist_cnn", "search_cnn", "cifar_cnn1", "cifar_cnn2", "cifar_cnn3", "cifar_cnn4", "bn_mnist"]


def _peer(script: str, model: str, steps: int | None, xla_flags: str | None, extra_env: str = "") -> float:
    env = dict(os.environ)
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    env.update(kv.split("=", 1) for kv in extra_env.split(",") if kv)
    cmd = [sys.executable, str(HERE / script), "--model", model, "--warmup", "3"]
    if steps:
        cmd += ["--steps", str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{script} --model {model} failed:\n{out.stderr[-2000:]}")
    text = out.stdout
    return float(json.loads(text[text.index("{"):text.rindex("}") + 1])["examples_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--a", default="", help="XLA_FLAGS for run A (default: empty, so jaxcnn adds its flag)")
    p.add_argument("--b", default="--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
                   help="XLA_FLAGS for run B (default: XLA's own default, convolutions to YNNPACK)")
    p.add_argument("--a-env", default="", help="more environment for run A: NAME=VALUE[,NAME=VALUE...]")
    p.add_argument("--b-env", default="", help="more environment for run B, as --a-env")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default: the peers')")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    models = args.models.split(",")
    runs = [("A", "peer_jaxcnn.py", args.a, args.a_env), ("B", "peer_jaxcnn.py", args.b, args.b_env),
            ("torch", "peer_torch.py", None, "")]
    got: dict[str, dict[str, list[float]]] = {m: {r[0]: [] for r in runs} for m in models}
    for i in range(args.repeat):
        order = runs[i % 3:] + runs[:i % 3]
        for m in models:
            for label, script, flags, extra in order:
                got[m][label].append(_peer(script, m, args.steps, flags, extra))
                print(f"round {i + 1} {m} {label}: {got[m][label][-1]:,.0f} examples/s", file=sys.stderr, flush=True)
    print(f"A: XLA_FLAGS={args.a!r} {args.a_env}; B: XLA_FLAGS={args.b!r} {args.b_env}; medians of {args.repeat} rounds (examples/s)\n")
    print("| model | jaxcnn A | jaxcnn B | PyTorch | A / B | A / PyTorch | B / PyTorch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in models:
        a, b, t = (statistics.median(got[m][k]) for k in ("A", "B", "torch"))
        print(f"| {m} | {a:,.0f} | {b:,.0f} | {t:,.0f} | {a / b:.2f}x | {a / t:.2f}x | {b / t:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"a": args.a, "b": args.b, "a_env": args.a_env, "b_env": args.b_env, "runs": got,
                                               "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
