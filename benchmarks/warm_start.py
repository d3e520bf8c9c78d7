"""First-step time cold and warm: the same training start twice, with JAX's persistent
compilation cache (``jaxcnn.compilation_cache``) in a fresh directory.

    python benchmarks/warm_start.py                  # mnist_cnn, batch 128
    python benchmarks/warm_start.py --model cifar_cnn3 --batch-size 512

Each run is its own process: import, build the state, one training step on the path ``fit``
takes (``devices="auto"``) and one evaluation batch, each timed until its result is on the host.
The first run compiles and fills the cache; the second loads the programs from it. Each then
runs a whole ``fit`` of one step twice on a new, equal model: the second reuses the first's
programs in the process (nothing is compiled or loaded again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import jaxcnn
from jaxcnn import train
jaxcnn.compilation_cache(sys.argv[1])
import_s = time.perf_counter() - t0
model_name, bs = sys.argv[2], int(sys.argv[3])
shape = jaxcnn.models.input_shape(model_name)
rng = np.random.default_rng(0)
x, y = rng.random((bs, *shape), np.float32), rng.integers(0, 10, bs).astype(np.int32)
t = time.perf_counter()
state = train.create_train_state(jaxcnn.get_model(model_name), shape, "rmsprop", 1e-3)
strategy = train.choose_strategy("auto", bs, state, data_on_device=False)
state = strategy.put_state(state)
state, logs = train.run_epoch(state, strategy, train.Data(x, y), np.arange(bs), bs)
step_s = time.perf_counter() - t
t = time.perf_counter()
strategy.evaluate(state, train.Data(x, y), bs)
eval_s = time.perf_counter() - t
fits = []
for _ in range(2):  # a whole fit of one step, then the same fit again in this process
    t = time.perf_counter()
    jaxcnn.fit(jaxcnn.get_model(model_name), x, y, epochs=1, batch_size=bs, optimizer="rmsprop", verbose=0)
    fits.append(time.perf_counter() - t)
print(json.dumps({"import_s": import_s, "first_step_s": step_s, "first_eval_s": eval_s, "fit_s": fits[0], "fit_again_s": fits[1]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist_cnn")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        runs = []
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", CHILD, cache, args.model, str(args.batch_size)],
                                 capture_output=True, text=True, check=True, env=os.environ.copy())
            runs.append({"run": label, **json.loads(out.stdout.strip().splitlines()[-1])})
    for r in runs:
        print(f"{args.model} batch {args.batch_size}, {r['run']}: first step {r['first_step_s']:.2f} s, "
              f"first evaluation {r['first_eval_s']:.2f} s, import {r['import_s']:.2f} s; a one-step fit "
              f"{r['fit_s']:.2f} s, the same fit again in the process {r['fit_again_s']:.2f} s")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
