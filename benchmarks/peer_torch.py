"""PyTorch (CPU) peer: one of the assignment's models (_peer_common.MODELS) trained on random data, timed.

    python benchmarks/peer_torch.py --model mnist_cnn --steps 200 --warmup 5 --threads 2 --json t.json

What a plain PyTorch user writes: an nn.Sequential in NCHW, eager mode (no torch.compile),
zero_grad / forward / cross_entropy / backward / optimizer.step per batch. Eager CPU execution is
synchronous, so the wall clock around the loop is the training time. Common CLI and timing rules:
_peer_common.py.

Optimizer: torch.optim.RMSprop(lr=1e-3, alpha=0.9, eps=1e-7) is Keras's RMSprop except for where
epsilon goes: torch divides by (sqrt(v) + eps) (torch/optim/rmsprop.py, and its docstring notes
that TensorFlow swaps the two), while Keras 3 divides by sqrt(v + eps)
(keras/src/optimizers/rmsprop.py: `ops.sqrt(ops.add(velocity, epsilon))`). torch has no switch
for it. With eps = 1e-7 the two differ only while v is tiny, and not at all in cost per step.
Weights are initialised like Keras (glorot_uniform kernels, zero biases); that changes nothing
in speed either, but keeps the loss curve comparable.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as common  # noqa: E402


def build_model(name: str, nn):  # nn: torch.nn, passed in so this module imports torch once
    """The model, and the weights that carry Keras's L2 factor (kernels, not biases)."""
    if name == "mnist_cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(),  # 26x26x32, 320
            nn.MaxPool2d(2),  # 13x13x32
            nn.Conv2d(32, 32, 3), nn.ReLU(),  # 11x11x32, 9,248
            nn.Flatten(),  # 3872
            nn.Linear(3872, 64), nn.ReLU(),  # 247,872
            nn.Linear(64, 10),  # 650
        )
        return model, {}
    if name == "bn_mnist":  # _peer_common.jaxcnn_model; Keras's BatchNormalization (momentum 0.99 = torch's 0.01)
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32, eps=1e-3, momentum=0.01), nn.ReLU(), nn.MaxPool2d(2),  # 13x13x32
            nn.Conv2d(32, 32, 3), nn.BatchNorm2d(32, eps=1e-3, momentum=0.01), nn.ReLU(),  # 11x11x32
            nn.Flatten(), nn.Dropout(0.25),
            nn.Linear(3872, 64), nn.ReLU(),
            nn.Linear(64, 10),
        )
        return model, {}
    if name == "search_cnn":
        k = common.SEARCH_KERNEL
        model = nn.Sequential(
            nn.Conv2d(1, 32, k), nn.ReLU(),  # 22x22x32, 1,600
            nn.MaxPool2d(2),  # 11x11x32
            nn.Conv2d(32, 32, k), nn.ReLU(),  # 5x5x32, 50,208
            nn.Flatten(),  # 800
            nn.Linear(800, 32), nn.ReLU(),  # 25,632
            nn.Linear(32, 10),  # 330
        )
        return model, {m.weight: common.SEARCH_L2 for m in model if isinstance(m, (nn.Conv2d, nn.Linear))}
    if name == "cifar_cnn1":  # no activations, as in the report
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.MaxPool2d(2),  # 30 -> 15, 896
            nn.Conv2d(32, 64, 3), nn.MaxPool2d(2),  # 13 -> 6, 18,496
            nn.Conv2d(64, 64, 3),  # 4x4x64, 36,928
            nn.Flatten(), nn.Linear(1024, 64),  # 65,600
            nn.Linear(64, 10),  # 650
        )
        return model, {}
    if name == "cifar_cnn2":
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.MaxPool2d(2),  # 896
            nn.Conv2d(32, 64, 3), nn.MaxPool2d(2),  # 18,496
            nn.Conv2d(64, 64, 3),  # 4x4x64, 36,928
            nn.Conv2d(64, 64, 3),  # 2x2x64, 36,928
            nn.Flatten(),  # 256
            nn.Linear(256, 256), nn.ReLU(),  # 65,792
            nn.Linear(256, 128), nn.ReLU(),  # 32,896
            nn.Linear(128, 10),  # 1,290
        )
        return model, {}
    if name in ("cifar_cnn3", "cifar_cnn4"):
        reg = name == "cifar_cnn4"
        drop = (lambda p: [nn.Dropout(p)]) if reg else (lambda p: [])  # noqa: E731
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3),  # 30x30x32, 896; no activation, as in the report
            nn.MaxPool2d(2),  # 15x15x32
            *drop(0.25),
            nn.Conv2d(32, 64, 5, padding=2), nn.LeakyReLU(0.1),  # "same": 15x15x64, 51,264
            nn.MaxPool2d(2),  # 7x7x64
            *drop(0.25),
            nn.Conv2d(64, 64, 5, padding=2), nn.LeakyReLU(0.1),  # 102,464
            nn.Conv2d(64, 64, 5, padding=2), nn.LeakyReLU(0.1),  # 102,464
            nn.Flatten(),  # 3136
            nn.Linear(3136, 256), nn.ReLU(),  # 803,072
            # Keras's BatchNormalization: momentum 0.99 (torch counts 1 - that), epsilon 0.001.
            *([nn.Dropout(0.25), nn.BatchNorm1d(256, eps=1e-3, momentum=0.01)] if reg else []),  # 512 (+512 statistics)
            nn.Linear(256, 128), nn.ReLU(),  # 32,896
            *drop(0.5),
            nn.Linear(128, 10),  # 1,290
        )
        linear = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
        return model, ({m.weight: common.CIFAR4_L2 for m in linear[:-1]} if reg else {})
    raise ValueError(f"unknown model {name!r}")


def build_training(name: str, torch, nn):
    """The model, initialised as Keras would, and its RMSprop with the model's L2 as weight decay."""
    model, l2 = build_model(name, nn)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)  # Keras glorot_uniform (fan computed the same way)
            nn.init.zeros_(m.bias)
    # Keras's L2 adds factor * sum(w ** 2) to the loss, so 2 * factor * w to the gradient: what
    # torch's weight_decay = 2 * factor adds, and no more work for either.
    decayed = {id(w) for w in l2}
    groups = [{"params": [p for p in model.parameters() if id(p) not in decayed]}]
    groups += [{"params": [w], "weight_decay": 2 * f} for w, f in l2.items()]
    return model, torch.optim.RMSprop(groups, lr=1e-3, alpha=0.9, eps=1e-7)


def main() -> None:
    args = common.parse_args("PyTorch (CPU)")
    x_np, y_np = common.make_data(args)

    t0 = time.perf_counter()
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import_s = time.perf_counter() - t0

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    wall_start = time.perf_counter()
    # NCHW is PyTorch's native layout; the transpose is a one-off copy of the pool.
    x_all = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
    y_all = torch.from_numpy(y_np.astype("int64"))  # cross_entropy wants int64 class indices
    model, opt = build_training(args.model, torch, nn)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()
    bs = args.batch_size

    def step(i: int) -> torch.Tensor:
        s = common.batch_start(i, args)
        xb, yb = x_all[s:s + bs], y_all[s:s + bs]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)  # sparse categorical cross-entropy from logits
        loss.backward()
        opt.step()
        return loss

    t = time.perf_counter()
    step(0)
    first_step_s = time.perf_counter() - t
    for i in range(1, args.warmup):
        step(i)

    t = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        loss = step(i)
    timed_s = time.perf_counter() - t  # eager CPU: every op has finished when step() returns
    wall_s = time.perf_counter() - wall_start

    common.finish(args, {
        "framework": "pytorch",
        "version": torch.__version__,
        "versions": {"torch": torch.__version__},
        "threads_used": torch.get_num_threads(),
        "params": params,
        "steps_timed": args.steps,
        "timed_s": timed_s,
        "first_step_s": first_step_s,
        "wall_s": wall_s,
        "import_s": import_s,
        "final_loss": float(loss.item()),
        "timing": "eager loop, wall clock around the timed steps (synchronous on CPU)",
    })


if __name__ == "__main__":
    main()
