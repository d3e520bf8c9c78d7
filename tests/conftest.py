"""Test configuration: strict numerics, headless plots, no network."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Tests never download: a missing file must produce our own error, not a network attempt.
os.environ.setdefault("JAXCNN_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
