"""Whole numbers from environment variables, with a one-line error that says what to set."""

from __future__ import annotations

import os

from jaxcnn.errors import ConfigError


def env_int(name: str, default: int, minimum: int = 1, *, what: str | None = None, example: int | None = None) -> int:
    """``$name`` as a whole number of at least ``minimum`` (``default`` when unset or blank).
    The error names ``what`` it must be and suggests ``example`` (default: ``default``)."""
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        what = what or ("a positive whole number" if minimum == 1 else f"a whole number, {minimum} or more")
        raise ConfigError(f"{name} must be {what}, got {value!r}; unset it or set e.g. {name}={default if example is None else example}")
    return number
