"""Task 2 of the report: a convolutional layer by hand, on a real MNIST "4".

Run::

    python -m experiments.manual_conv                 # into runs/manual_conv-<YYYYmmdd-HHMMSS>/
    python -m experiments.manual_conv --out figs --index 9 --bias -100

It prints the report's worked example (the 4x4 patch X, the 3x3 kernel K, ``convolution(X, K)``,
``conv_layer(X, K, 100, relu)`` and ``maxpool(X)``), checks the ``lax`` functions of
:mod:`jaxcnn.manual` against their plain-loop references, and writes six PNG files:

* ``digit.png``: the digit itself;
* ``fig07_convolution.png``: ``convolution(X, K)`` on the whole digit (report Figure 7);
* ``fig08_conv_layer.png``: ``conv_layer(X, K, b, relu)`` with ``b = --bias``, -150 by default
  (Figure 8);
* ``fig09_conv_layer_transposed.png``: the same with the transposed kernel ``K.T`` (Figure 9);
* ``fig10_maxpool.png``: ``maxpool(conv_layer(X, K, -320, relu))`` (Figure 10);
* ``all_feature_maps.png``: the five side by side.

It takes a few seconds on a CPU (loading MNIST and starting JAX; the computations are tiny).
``--out`` must be new or empty (a folder that holds files is refused, so nothing is
overwritten), ``--bias`` a finite number; the exit status is 1 when the self-check prints "NO".

Orientation. The report's R matrix for its "4" is MNIST training image 2 (the first "4", label
4) rotated 90 degrees clockwise, the layout R code commonly uses so that ``image()`` draws a
digit upright; its patch "rows 12..15, columns 12..15" and every number it prints refer to that
layout. This experiment computes in the same layout (:func:`report_layout`), so every number
matches the report, and rotates each result back (:func:`upright`) only to draw it, so the
digit stands upright as in the report's figures. In the upright picture the kernel K, a row of
ones between rows of -0.5 in the rotated layout, responds to vertical strokes (Figure 8) and its
transpose to horizontal strokes (Figure 9), as the report observes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxcnn import data
from jaxcnn.manual import (
    conv_layer,
    conv_layer_loop,
    convolution,
    convolution_loop,
    maxpool,
    maxpool_loop,
)

#: Index in the MNIST training set of the report's "4" (0-based; the first "4", label 4).
REPORT_INDEX = 2
#: The report's kernel K (section 2.2).
KERNEL = np.array([[-0.5, -0.5, -0.5], [1.0, 1.0, 1.0], [-0.5, -0.5, -0.5]])
#: The report's patch: rows 12..15 and columns 12..15, 1-based, of the report-layout matrix.
PATCH = (slice(11, 15), slice(11, 15))
#: Bias of the worked example (2.4), default bias of Figures 8 and 9, bias of Figure 10 (2.8).
EXAMPLE_BIAS = 100.0
FIGURE_BIAS = -150.0
POOL_BIAS = -320.0

#: File names written into ``--out``, in order.
FILES = {
    "digit": "digit.png",
    "fig7": "fig07_convolution.png",
    "fig8": "fig08_conv_layer.png",
    "fig9": "fig09_conv_layer_transposed.png",
    "fig10": "fig10_maxpool.png",
    "all": "all_feature_maps.png",
}


def report_layout(image: np.ndarray) -> np.ndarray:
    """An upright MNIST image (28, 28) in the report's R layout: rotated 90 degrees clockwise."""
    return np.rot90(np.asarray(image), -1)


def upright(matrix: np.ndarray) -> np.ndarray:
    """Undo :func:`report_layout` (rotate 90 degrees anticlockwise) so a map is drawn upright."""
    return np.rot90(np.asarray(matrix), 1)


def format_matrix(m: np.ndarray) -> str:
    """A matrix as a nested list, integral values without a decimal point: ``[[-1, 27], ...]``."""
    a = np.asarray(m, dtype=np.float64)

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))

    return "[" + ", ".join("[" + ", ".join(num(v) for v in row) + "]" for row in a) + "]"


def plot_feature_maps(
    maps: Sequence[tuple[str, np.ndarray]], path: str | Path, *, title: str | None = None
) -> Path:
    """Draw one or more 2-D maps side by side, each with its title and a colour bar, into a PNG.

    Args:
        maps: ``(title, array)`` pairs; each array is ``(H, W)`` and is drawn as it is (rotate it
            with :func:`upright` first to draw a report-layout map upright).
        path: the PNG file to write; its folder must exist.
        title: an optional title over the whole figure.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    # Imported here so that importing this module stays cheap; Figure with its own Agg canvas
    # needs no pyplot, no display and no global backend.
    from matplotlib.figure import Figure

    n = len(maps)
    fig = Figure(figsize=(4.2 * n, 4.4 if title is None else 4.8), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, m) in zip(axes, maps):
        im = ax.imshow(np.asarray(m, dtype=np.float64), cmap="gray", interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title is not None:
        fig.suptitle(title)
    path = Path(path)
    from experiments.common import save_figure  # atomic: a full disk leaves no empty file

    save_figure(fig, path, hint="free some space or choose a writable --out")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``--out``, ``--index`` and ``--bias``."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.manual_conv",
        description=(
            "Task 2 of the report: a convolution, a convolutional layer and a max-pool by hand "
            "(jaxcnn.manual) on an MNIST training digit. Prints the report's worked example and "
            "writes the digit, Figures 7 to 10 and all of them side by side as PNG files. "
            "Takes a few seconds on a CPU."
        ),
        epilog=(
            "files written into --out: " + ", ".join(FILES.values()) + ". "
            "Example: python -m experiments.manual_conv --out figs --index 9 --bias -100"
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to write the PNG files into, created if missing; a folder that already "
        "holds files is refused (default: runs/manual_conv-<YYYYmmdd-HHMMSS>)",
    )
    parser.add_argument(
        "--index",
        type=int,
        default=REPORT_INDEX,
        metavar="N",
        help=f"which MNIST training image to use, 0-based (default: {REPORT_INDEX}, the "
        "report's \"4\")",
    )
    parser.add_argument(
        "--bias",
        type=float,
        default=FIGURE_BIAS,
        metavar="B",
        help=f"bias of the convolutional layer in Figures 8 and 9 (default: {FIGURE_BIAS:g}, "
        "as in the report)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run Task 2; return the written files by key (``"digit"``, ``"fig7"`` ... ``"all"``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not math.isfinite(args.bias):
        parser.error(f"--bias must be a finite number, got {args.bias}")
    start = time.perf_counter()
    from experiments.common import RunConfig, check_out

    out = args.out or Path("runs") / f"manual_conv-{time.strftime('%Y%m%d-%H%M%S')}"
    check_out(RunConfig(out=str(out)), resumable=False)  # a file, a folder with files, read-only: refused

    mnist = data.load("mnist")
    n = len(mnist.x_train)
    if not 0 <= args.index < n:
        parser.error(f"--index {args.index} is out of range: the MNIST training set has {n} "
                     f"images, so use 0 to {n - 1} (the report's \"4\" is {REPORT_INDEX})")
    image = np.asarray(mnist.x_train[args.index])
    image = image.reshape(image.shape[0], image.shape[1])  # (28, 28, 1) -> (28, 28)
    label = int(mnist.y_train[args.index])
    digit = report_layout(image).astype(np.float64)

    # The report's worked example (2.2, 2.4 and 2.7) on its 4x4 patch.
    x = digit[PATCH]
    examples = [
        ("convolution(X, K)", convolution(x, KERNEL), convolution_loop(x, KERNEL)),
        (f"conv_layer(X, K, b={EXAMPLE_BIAS:g}, relu)", conv_layer(x, KERNEL, EXAMPLE_BIAS),
         conv_layer_loop(x, KERNEL, EXAMPLE_BIAS)),
        ("maxpool(X)", maxpool(x), maxpool_loop(x)),
    ]
    print(f"MNIST training image {args.index} (label {label}), in the report's layout "
          "(rotated 90 degrees clockwise, as the report's R matrix)")
    print(f"Patch X = rows 12..15, columns 12..15 (1-based): {format_matrix(x)}")
    print(f"Kernel K: {format_matrix(KERNEL)}")
    for name, result, _ in examples:
        print(f"{name} = {format_matrix(result)}")

    # The figures (2.3, 2.5, 2.6 and 2.8) on the whole digit.
    b = args.bias
    maps = {
        "fig7": (convolution(digit, KERNEL), convolution_loop(digit, KERNEL)),
        "fig8": (conv_layer(digit, KERNEL, b), conv_layer_loop(digit, KERNEL, b)),
        "fig9": (conv_layer(digit, KERNEL.T, b), conv_layer_loop(digit, KERNEL.T, b)),
        "fig10": (maxpool(conv_layer(digit, KERNEL, POOL_BIAS)),
                  maxpool_loop(conv_layer_loop(digit, KERNEL, POOL_BIAS))),
    }
    pairs = [(r, ref) for _, r, ref in examples] + list(maps.values())
    agree = all(np.allclose(np.asarray(r), ref, rtol=1e-5, atol=1e-3) for r, ref in pairs)
    print(f"lax functions agree with the plain-loop references: {'yes' if agree else 'NO'}")

    titles = {
        "digit": f"digit = {label} (MNIST training image {args.index})",
        "fig7": "Figure 7: convolution(X, K)",
        "fig8": f"Figure 8: conv_layer(X, K, b={b:g}, relu)\nvertical strokes",
        "fig9": f"Figure 9: conv_layer(X, K.T, b={b:g}, relu)\nhorizontal strokes",
        "fig10": f"Figure 10: maxpool of\nconv_layer(X, K, b={POOL_BIAS:g}, relu)",
    }
    panels = {"digit": upright(digit)} | {k: upright(np.asarray(r)) for k, (r, _) in maps.items()}

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from jaxcnn.errors import ConfigError

        raise ConfigError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable directory") from None
    written = {k: plot_feature_maps([(titles[k], m)], out / FILES[k]) for k, m in panels.items()}
    written["all"] = plot_feature_maps(
        [(titles[k], m) for k, m in panels.items()], out / FILES["all"],
        title=f"Task 2 by hand on an MNIST \"{label}\" (training image {args.index})",
    )
    print(f"Wrote {len(written)} figures to {out}/ in {time.perf_counter() - start:.1f} s:")
    for path in written.values():
        print(f"  {path.name}")
    if not agree:
        print("error: the lax functions of jaxcnn.manual disagree with their plain-loop references (see NO above)",
              file=sys.stderr, flush=True)
        raise SystemExit(1)
    return written


if __name__ == "__main__":
    from experiments.common import cli

    cli(main)
