"""First-step time cold and warm: the same training start twice, with JAX's persistent
compilation cache (``jaxcnn.compilation_cache``) in a fresh directory.

    python benchmarks/warm_start.py                  # mnist_cnn, batch 128
    python benchmarks/warm_start.py --model cifar_cnn3 --batch-size 512

Each run is its own process: import, then the first step as a user meets it, a whole
``jaxcnn.fit`` of one batch (input checks, the state, the step on the path ``fit`` takes,
``devices="auto"``), then one evaluation batch, then the same fit again on a new, equal model,
which reuses the first's programs in the process (nothing is compiled or loaded again). The
first run compiles and fills the cache; the second loads the programs from it. (Until
2026-12-04 the first step was timed on the state and step functions without fit's checks.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import jaxcnn
jaxcnn.compilation_cache(sys.argv[1])
import_s = time.perf_counter() - t0
model_name, bs = sys.argv[2], int(sys.argv[3])
shape = jaxcnn.models.input_shape(model_name)
rng = np.random.default_rng(0)
x, y = rng.random((bs, *shape), np.float32), rng.integers(0, 10, bs).astype(np.int32)
fits = []
for _ in range(2):  # a whole fit of one step, then the same fit again in this process
    t = time.perf_counter()
    state, _ = jaxcnn.fit(jaxcnn.get_model(model_name), x, y, epochs=1, batch_size=bs, optimizer="rmsprop", verbose=0)
    fits.append(time.perf_counter() - t)
    if len(fits) == 1:
        t = time.perf_counter()
        jaxcnn.evaluate(state, x, y, batch_size=bs)
        eval_s = time.perf_counter() - t
print(json.dumps({"import_s": import_s, "first_step_s": fits[0], "first_eval_s": eval_s, "fit_again_s": fits[1]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist_cnn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warm-runs", type=int, default=3, help="warm processes to run (their median is printed too)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        runs = []
        for label in ("cold", *["warm"] * args.warm_runs):
            out = subprocess.run([sys.executable, "-c", CHILD, cache, args.model, str(args.batch_size)],
                                 capture_output=True, text=True, check=True, env=os.environ.copy())
            runs.append({"run": label, **json.loads(out.stdout.strip().splitlines()[-1])})
    for r in runs:
        print(f"{args.model} batch {args.batch_size}, {r['run']}: first step (a whole fit of one batch) "
              f"{r['first_step_s']:.2f} s, first evaluation {r['first_eval_s']:.2f} s, import {r['import_s']:.2f} s; "
              f"the same fit again in the process {r['fit_again_s']:.2f} s")
    warm = [r["first_step_s"] for r in runs if r["run"] == "warm"]
    if warm:
        print(f"warm first step: median {statistics.median(warm):.2f} s of {len(warm)} (min {min(warm):.2f} s)")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
