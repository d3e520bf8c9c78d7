"""Saving and reloading trained models.

:func:`export` writes a trained model as two files in a directory: ``params.msgpack`` (the
parameters and batch statistics, Flax's msgpack serialisation) and ``model.json`` (the registry
name and overrides that rebuild the module, the input shape, and the SHA-256 of the parameter
file). :func:`load` reads them back and checks everything it can before use, so a truncated file
or a mismatched model gets a clear :class:`~jaxcnn.errors.CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from jaxcnn import models
from jaxcnn.errors import CheckpointError

PARAMS_FILE = "params.msgpack"
MODEL_FILE = "model.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export(directory: str | os.PathLike[str], state: Any, model_name: str, model_kwargs: dict[str, Any] | None = None) -> Path:
    """Write ``state``'s parameters and batch statistics, and how to rebuild the model, to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variables = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
    blob = serialization.to_bytes(variables)
    _atomic_write(directory / PARAMS_FILE, blob)
    meta = {
        "model": model_name,
        "model_kwargs": model_kwargs or {},
        "input_shape": list(state.input_shape),
        "num_classes": state.num_classes,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "format": "flax.serialization msgpack: {params, batch_stats}",
    }
    _atomic_write(directory / MODEL_FILE, json.dumps(meta, indent=2).encode())
    return directory


def load(directory: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Read an :func:`export` directory: ``(module, variables, meta)``, ready for ``module.apply``."""
    directory = Path(directory)
    meta_path, params_path = directory / MODEL_FILE, directory / PARAMS_FILE
    for p in (meta_path, params_path):
        if not p.is_file():
            raise CheckpointError(f"{p} is missing; point to a run directory written by an experiment (it holds {MODEL_FILE} and {PARAMS_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
        name, kwargs, input_shape = meta["model"], meta["model_kwargs"], tuple(meta["input_shape"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{meta_path} is not a valid model description ({e}); re-export the model") from None
    blob = params_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(
            f"{params_path} does not match the checksum in {meta_path} (truncated or changed); "
            "re-export it from the run or retrain"
        )
    module = models.get_model(name, **kwargs)
    template = jax.eval_shape(
        lambda: module.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, np.zeros((1, *input_shape), np.float32))
    )
    template = {"params": template["params"], "batch_stats": template.get("batch_stats", {})}
    try:
        variables = serialization.from_bytes(template, blob)
    except Exception as e:  # msgpack raises many kinds
        raise CheckpointError(f"{params_path} cannot be read as parameters of {name!r}: {e}") from None
    _check_shapes(template, variables, params_path, name)
    return module, variables, meta


def _check_shapes(template: Any, variables: Any, path: Path, name: str) -> None:
    want = jax.tree_util.tree_flatten_with_path(template)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    for key, leaf in want:
        arr = got.get(key)
        if arr is None or tuple(np.shape(arr)) != tuple(leaf.shape):
            where = jax.tree_util.keystr(key)
            raise CheckpointError(
                f"{path} does not match model {name!r}: {where} should have shape {tuple(leaf.shape)}, "
                f"found {None if arr is None else tuple(np.shape(arr))}; was it saved from another architecture?"
            )


def load_state(directory: str | os.PathLike[str]):
    """Rebuild a :class:`~jaxcnn.train.TrainState` (RMSprop, fresh optimizer) from an export, for
    :func:`jaxcnn.train.predict` and :func:`jaxcnn.train.evaluate`."""
    from jaxcnn.train import create_train_state

    module, variables, meta = load(directory)
    state = create_train_state(module, tuple(meta["input_shape"]))
    return state.replace(params=variables["params"], batch_stats=variables["batch_stats"] or state.batch_stats)
