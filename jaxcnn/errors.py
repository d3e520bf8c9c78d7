"""Errors raised by jaxcnn. Each message says what was wrong and what to do about it."""

from __future__ import annotations


class JaxcnnError(Exception):
    """Base class of every error jaxcnn raises on purpose."""


class DataError(JaxcnnError, ValueError):
    """A data file is missing, truncated or corrupt, or a data set cannot be found."""


class ShapeError(JaxcnnError, ValueError):
    """An array has the wrong shape, rank, dtype or size for what was asked, or holds values the
    model cannot take (NaN or infinite pixels or labels, a ragged list)."""


class ConfigError(JaxcnnError, ValueError):
    """An unknown name or an invalid option (model, data set, optimizer, learning rate...)."""


class CheckpointError(JaxcnnError, ValueError):
    """A checkpoint is missing, truncated or does not match the model."""


class TrainingError(JaxcnnError, RuntimeError):
    """Training cannot go on (for example, the loss became NaN or infinite).

    ``state`` is the training state of the last good step and ``history`` the epochs completed
    before it (set by :func:`jaxcnn.fit`; None where there are none).
    """

    def __init__(self, message: str, *, state: object = None, history: object = None):
        super().__init__(message)
        self.state = state
        self.history = history


class SearchError(JaxcnnError, RuntimeError):
    """A search stopped because its trials kept failing with an error in the model or its
    training (``max_consecutive_failed_trials`` in a row, as KerasTuner). The trials already
    finished are kept, and a rerun of the same search trains the failed ones again."""
