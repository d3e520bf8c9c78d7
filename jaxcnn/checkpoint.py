"""Saving and reloading trained models.

:func:`export` writes a trained model as two files in a directory: ``params.msgpack`` (the
parameters and batch statistics, Flax's msgpack serialisation) and ``model.json`` (what rebuilds
the module: a registry name and its overrides, or any linen or NNX module's importable class and
attributes; the optimizer, the loss, the input shape, and the SHA-256 of the parameter
file). :func:`load` reads them back and checks everything it can before use, so a truncated file
or a mismatched model gets a clear :class:`~jaxcnn.errors.CheckpointError`.

:class:`TrainCheckpoints` saves the whole training state once an epoch with orbax (the TrainState
pytree, the history so far and the callbacks' state), keeping the latest and the best checkpoint,
and restores it into a TrainState so that a resumed run ends exactly as one never interrupted
(``experiments/common.py`` ``--resume``; :class:`jaxcnn.callbacks.BackupAndRestore` does the
per-epoch saving). orbax is imported only when a :class:`TrainCheckpoints` is created.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from jaxcnn import models
from jaxcnn.errors import CheckpointError, ConfigError

PARAMS_FILE = "params.msgpack"
MODEL_FILE = "model.json"


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader (or a run
    killed mid-write) sees the old file or the new one, never half of one."""
    path = Path(path)
    write_together(path.parent, {path.name: data})


def write_together(directory: Path, files: dict[str, bytes | str]) -> None:
    """Write several files into ``directory``, all or none: each to a temporary file first, and
    only once every one is written (a full disk, Ctrl-C) are they renamed into place, one
    after the other. A failure while writing removes the temporary files and keeps the files
    that were there; the ``OSError`` names the file (``[Errno 28] No space left on device:
    'm/params.msgpack'``)."""
    written: list[Path] = []
    try:
        for name, data in files.items():
            tmp = directory / f"{name}.tmp"
            written.append(tmp)
            try:
                with open(tmp, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                if e.filename is None:
                    raise OSError(e.errno, e.strerror, str(directory / name)) from None
                raise
        for name in files:
            os.replace(directory / f"{name}.tmp", directory / name)
    finally:  # renamed: none is left; after a failed write or rename, the rest are removed
        for tmp in written:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def model_spec(state: Any, model_name: str | None = None, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """How to rebuild ``state``'s module, as JSON: a registry name and its overrides
    (``{"model": name, "model_kwargs": {...}}``), or an importable class and its attributes
    (``{"module": "package.module:Class", "module_kwargs": {...}, "kind": "linen" | "nnx"}``).
    For an NNX module, ``model_kwargs`` without ``model_name`` are constructor arguments known to
    the caller (those it built the module with), recorded over what the module keeps."""
    if model_name is not None:
        if model_name not in models.MODELS:
            raise ConfigError(
                f"model_name {model_name!r} is not a registered model, so the export could not be reloaded; "
                "register it first with jaxcnn.models.register_model, or leave model_name out to record the module's class"
            )
        return {"model": model_name, "model_kwargs": dict(model_kwargs or {})}
    adapter = getattr(state, "model", None)
    if adapter is None:
        raise ConfigError("this state does not know its module; pass model_name= (a registered model) to export")
    module = getattr(adapter, "module", None)
    if adapter.kind == "linen":
        found = models.find_registered(module)
        if found is not None:
            return {"model": found[0], "model_kwargs": _json_kwargs(found[1])}
        return {"module": _class_path(type(module)), "module_kwargs": _linen_kwargs(module), "kind": "linen"}
    known = _json_kwargs(dict(model_kwargs or {}))
    return {"module": _class_path(adapter.module_type), "module_kwargs": {**_nnx_kwargs(adapter, set(known)), **known}, "kind": "nnx"}


def _same(value: Any, default: Any) -> bool:
    """Whether an attribute holds its default: the same object, an equal value, or an equal array
    (a ``default_factory`` builds a new one for each module)."""
    if value is default:
        return True
    try:
        if hasattr(value, "shape") or hasattr(default, "shape"):
            a, b = np.asarray(value), np.asarray(default)
            return bool(a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))
        return bool(value == default)
    except Exception:  # noqa: BLE001 - a comparison that raises: not the default
        return False


def _linen_kwargs(module: Any) -> dict[str, Any]:
    """A linen module's attributes as JSON. One that JSON cannot hold (a function, ``act=nn.relu``)
    is left out where it is the class's default, which the reload takes; any other is recorded
    as unsaved, with a warning now, as reloading it will need the module passed in."""
    from jaxcnn.checks import _user_stacklevel

    out: dict[str, Any] = {}
    for name, value, default in models.module_fields(module):
        saved = _json_kwargs({name: value})[name]
        if isinstance(saved, dict) and "unserializable" in saved:
            if _same(value, default):
                continue
            cls = type(module).__name__
            warnings.warn(
                f"{cls}'s attribute {name} = {saved['unserializable']} cannot be recorded in the export (not a number, "
                f"string, list or dtype); reload it with the module built again: "
                f"jaxcnn.checkpoint.load_state(directory, model={cls}(...))", UserWarning, stacklevel=_user_stacklevel())
        out[name] = saved
    return out


def _nnx_kwargs(adapter: Any, known: set[str] = frozenset()) -> dict[str, Any]:
    """An NNX module's constructor arguments, as far as it keeps them: each argument of
    ``__init__`` (but ``rngs``) that the module holds as an attribute of the same name with a
    JSON value (``self.act = act``). A required argument it does not keep is recorded as
    unsaved, so that reloading asks for the module; an optional one is warned about, since the
    reload would rebuild it with its default (unless it is among the ``known`` arguments, which the
    caller records itself)."""
    import inspect
    import warnings

    from jaxcnn.checks import _user_stacklevel

    from flax import nnx

    cls = adapter.module_type
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    module = nnx.merge(adapter.graphdef, *adapter.templates)
    out: dict[str, Any] = {}
    for p in params:
        # nnx.Sequential(*layers): a constructor that takes everything positionally; nothing
        # records those arguments (a *args after other parameters is left out, as before)
        if p.kind == p.VAR_POSITIONAL and p is params[0] and p.name not in known:
            out[f"*{p.name}"] = {"unserializable": f"<the positional arguments *{p.name} {cls.__name__} was built with>"}
            warnings.warn(
                f"{cls.__name__}.__init__ takes *{p.name}, which an export cannot record; reload it with the module "
                f"built again: jaxcnn.checkpoint.load_state(directory, model={cls.__name__}(...))", stacklevel=_user_stacklevel())
            continue
        if p.name == "rngs" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in known:
            continue
        if hasattr(module, p.name):
            saved = _json_kwargs({p.name: getattr(module, p.name)})[p.name]
            if not (isinstance(saved, dict) and "unserializable" in saved):
                out[p.name] = saved
                continue
        if p.default is inspect.Parameter.empty:
            out[p.name] = {"unserializable": f"<the constructor argument {p.name}, not kept as a plain attribute self.{p.name}>"}
        else:
            warnings.warn(
                f"{cls.__name__}.__init__ takes {p.name}, which the module does not keep as a plain attribute "
                f"self.{p.name}; the export cannot record it, so loading rebuilds it with its default "
                f"{p.default!r}. Keep it as self.{p.name}, or pass the module when loading (model=...)",
                stacklevel=_user_stacklevel(),
            )
    return out


def build_nnx(cls: Any, kwargs: dict[str, Any], seed: int = 0) -> Any:
    """An NNX module class built from its constructor arguments, as jaxcnn builds one everywhere
    (a reloaded export, ``--model package.module:Class``, a search trial):
    ``cls(**kwargs, rngs=nnx.Rngs(seed))``."""
    from flax import nnx

    return cls(**kwargs, rngs=nnx.Rngs(seed))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _number(v: Any) -> Any:
    """A NumPy or JAX scalar (``np.int64(8)``, ``jnp.float32(0.5)``) as the Python number; anything
    else as it is (a dtype such as ``jnp.bfloat16`` stays a dtype)."""
    if (isinstance(v, np.generic) and not isinstance(v, np.void)) or (isinstance(v, (np.ndarray, jax.Array)) and v.shape == ()):
        return v.item()
    return v


def _json_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        v = [_number(e) for e in v] if isinstance(v, (list, tuple)) else _number(v)
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(e, (bool, int, float, str)) for e in v):
            out[k] = list(v)
        elif isinstance(v, (np.ndarray, jax.Array)):  # np.dtype() of an array is its dtype: not the array
            out[k] = {"unserializable": f"<an array of shape {tuple(v.shape)} and dtype {v.dtype}>"}
        else:
            try:  # dtypes, e.g. jnp.bfloat16
                out[k] = {"dtype": np.dtype(v).name}
            except (TypeError, ValueError):
                out[k] = {"unserializable": repr(v)[:200]}
    return out


def _from_json_kwargs(kwargs: dict[str, Any], where: Path, cls: str = "MyModel") -> dict[str, Any]:
    import jax.numpy as jnp

    out = {}
    for k, v in kwargs.items():
        if isinstance(v, dict) and "dtype" in v:
            out[k] = jnp.dtype(v["dtype"])
        elif isinstance(v, dict) and "unserializable" in v:
            raise CheckpointError(
                f"{where} cannot rebuild the module: its {'arguments' if k.startswith('*') else 'attribute'} "
                f"{k} = {v['unserializable']} {'were' if k.startswith('*') else 'was'} not saved; "
                f"pass the module yourself: jaxcnn.checkpoint.load_state(directory, model={cls}(...))"
            )
        else:
            out[k] = v
    return out


def bare_state(state: Any) -> Any:
    """``state`` as the model behind an :class:`jaxcnn.augment.Augmented` wrapper (the same
    parameters and batch statistics, which keep the bare model's names), else ``state`` itself."""
    module = getattr(getattr(state, "model", None), "module", None)
    from jaxcnn.augment import Augmented

    if isinstance(module, Augmented):
        from jaxcnn.train import adapt

        return state.replace(model=adapt(module.model))
    return state


def export(directory: str | os.PathLike[str], state: Any, model_name: str | None = None,
           model_kwargs: dict[str, Any] | None = None) -> Path:
    """Write ``state``'s parameters and batch statistics, how to rebuild its module (a registry
    name, or the module's importable class and attributes, see :func:`model_spec`), its
    optimizer and its loss to ``directory``. Works for any linen or NNX module; a model behind an
    :class:`jaxcnn.augment.Augmented` wrapper is exported as the bare model (the same parameters:
    augmentation is for training only), so that it reloads and predicts without the wrapper."""
    if isinstance(state, (str, os.PathLike)) and hasattr(directory, "params"):
        raise ConfigError("export takes the directory first, then the state: export('runs/model', state)")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not a directory; export writes two files into a directory: choose a directory")
    if directory.suffix.lower() in (".keras", ".h5") and not _in_model_checkpoint.get():  # ModelCheckpoint warned when made
        from jaxcnn.checks import _user_stacklevel

        warnings.warn(f"export({str(directory)!r}) writes a directory (model.json, params.msgpack), not Keras's "
                      f"{directory.suffix} file; name it without the extension, and reload it with jaxcnn.checkpoint.load_state",
                      UserWarning, stacklevel=_user_stacklevel())
    from jaxcnn.train.loop import state_of

    state = bare_state(state_of(state, "export"))
    spec = model_spec(state, model_name, model_kwargs)
    _warn_main(spec, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the export directory {directory} ({e.strerror or e}); choose a directory that can be created") from None
    variables = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
    blob = serialization.to_bytes(variables)
    loss = getattr(state, "loss", None)
    meta = {
        **spec,
        "input_shape": list(state.input_shape),
        "num_classes": state.num_classes,
        "optimizer": json.loads(state.optimizer_spec) if getattr(state, "optimizer_spec", None) else None,
        "loss": {"name": getattr(loss, "name", None), "from_logits": getattr(loss, "from_logits", None),
                 "label_smoothing": getattr(loss, "label_smoothing", 0.0)} if loss is not None else None,
        "metrics": [_metric_spec(m) for m in getattr(state, "metrics", ())],
        "sha256": hashlib.sha256(blob).hexdigest(),
        "format": "flax.serialization msgpack: {params, batch_stats}",
    }
    # both files or neither: new weights beside the old model.json would load as neither model
    write_together(directory, {PARAMS_FILE: blob, MODEL_FILE: json.dumps(meta, indent=2)})
    return directory


_WARNED_MAIN: set[str] = set()
#: True while ModelCheckpoint exports (it warns of a Keras file name once, when it is made).
_in_model_checkpoint: contextvars.ContextVar[bool] = contextvars.ContextVar("_in_model_checkpoint", default=False)


def _warn_main(spec: dict[str, Any], directory: Path) -> None:
    """Warn when the exported module's class lives in ``__main__``: another process (or a script
    of another name) cannot import it, so reloading there needs the module passed in. Names the
    export's directory: inside ``fit`` the export is ModelCheckpoint's (or a search's)."""
    module = spec.get("module")
    if isinstance(module, str) and module.startswith("__main__:") and module not in _WARNED_MAIN:
        from jaxcnn.checks import _user_stacklevel

        _WARNED_MAIN.add(module)  # once per class and process: a search exports every trial
        name = module.partition(":")[2]
        warnings.warn(
            f"exporting to {directory}: the module's class {name} is defined in __main__ (the script being run), so it cannot be imported "
            f"where the export is reloaded; reload it elsewhere with jaxcnn.checkpoint.load_state(directory, model={name}(...)), "
            "or move the class to an importable module",
            UserWarning, stacklevel=_user_stacklevel(),
        )


def _metric_spec(metric: Any) -> dict[str, Any]:
    """How to rebuild one of the state's metrics: a jaxcnn metric's class and fields, or (a
    function, a metric of one's own) only its name."""
    import dataclasses

    from jaxcnn import metrics

    cls = type(metric)
    if isinstance(metric, metrics.Weighted):
        return {"class": "Weighted", "name": metric.name, "metric": _metric_spec(metric.metric)}
    if cls.__module__ == metrics.__name__ and cls is not metrics.MeanMetricWrapper and dataclasses.is_dataclass(metric):
        fields = {f.name: getattr(metric, f.name) for f in dataclasses.fields(metric)}
        if all(isinstance(v, (str, int, float, bool, type(None))) for v in fields.values()):
            return {"class": cls.__name__, **fields}
    return {"name": getattr(metric, "name", cls.__name__)}


def _metrics_from(specs: Any, directory: Any) -> tuple[Any, ...]:
    """The metrics :func:`_metric_spec` recorded, rebuilt; one that cannot be is left out, with a warning."""
    from jaxcnn import metrics

    out, lost = [], []
    for spec in specs if isinstance(specs, list) else []:
        cls = getattr(metrics, str(spec.get("class")), None) if isinstance(spec, dict) else None
        if cls is metrics.Weighted:
            inner = _metrics_from([spec.get("metric")], directory)  # warns itself when it cannot
            if inner:
                out.append(metrics.Weighted(inner[0], name=spec.get("name")))
            continue
        if isinstance(cls, type) and issubclass(cls, metrics.Metric):
            try:
                out.append(cls(**{k: v for k, v in spec.items() if k != "class"}))
                continue
            except (TypeError, ValueError, ConfigError):
                pass
        lost.append(str(spec.get("name", spec.get("class"))) if isinstance(spec, dict) else str(spec))
    if lost:
        warnings.warn(
            f"{directory} was trained with the metrics {', '.join(lost)}, which an export cannot rebuild; the reloaded "
            "state leaves them out. Pass them to evaluate: jaxcnn.evaluate(state, x, y, metrics=[...])", stacklevel=3,
        )
    return tuple(out)


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise TypeError(f"it holds {json.dumps(meta)[:20]}, not a JSON object")
        if "model" in meta:
            if not isinstance(meta["model"], str) or not isinstance(meta.get("model_kwargs", {}), dict):
                raise TypeError(f"model must be a name and model_kwargs a JSON object, got {meta['model']!r} and {meta.get('model_kwargs')!r}")
        elif not isinstance(meta.get("module"), str) or ":" not in meta["module"]:
            raise TypeError("it names neither a registered model nor an importable module:Class")
        input_shape = meta["input_shape"]
        if not (isinstance(input_shape, list) and len(input_shape) == 3
                and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)):
            raise TypeError(f"input_shape must be [height, width, channels], got {input_shape!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path} is not a valid model description ({e}); re-export the model") from None
    return meta


def _rebuild(meta: dict[str, Any], where: Path) -> Any:
    """The module ``meta`` describes: from the registry, or by importing its class."""
    if "model" in meta:
        return models.get_model(meta["model"], **_from_json_kwargs(meta.get("model_kwargs", {}), where))
    import importlib

    module_name, _, qualname = meta["module"].partition(":")
    fix = (f"import or define it, or pass the module yourself: jaxcnn.checkpoint.load_state(directory, model={qualname.rpartition('.')[2]}(...)), "
           "or register a factory with jaxcnn.models.register_model and export with model_name=")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{where} was exported from {meta['module']}, which cannot be imported here; {fix}") from None
    kwargs = _from_json_kwargs(meta.get("module_kwargs", {}), where, qualname.rpartition(".")[2])
    try:
        if meta.get("kind") == "nnx":
            return build_nnx(obj, kwargs)
        return obj(**kwargs)
    except TypeError as e:
        raise CheckpointError(f"{where}: {meta['module']} cannot be rebuilt from its saved attributes ({e}); {fix}") from None


def load(directory: str | os.PathLike[str], model: Any = None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Read an :func:`export` directory (or one holding it as ``model/``: a search's ``best/``
    or ``trials/NNN/``): ``(module, variables, meta)``, ready for ``module.apply`` (linen). ``model`` rebuilds the module yourself (any module that
    :func:`export` could not describe, e.g. one defined in ``__main__``)."""
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(
            f"{directory} is a file, not a directory; point to the directory an export wrote (it holds {MODEL_FILE} and {PARAMS_FILE})"
        )
    if not (directory / MODEL_FILE).is_file() and (directory / "model" / MODEL_FILE).is_file():
        directory = directory / "model"  # a search's best/ or trials/NNN/: the export is in model/
    meta_path, params_path = directory / MODEL_FILE, directory / PARAMS_FILE
    for p in (meta_path, params_path):
        if not p.is_file():
            raise CheckpointError(f"{p} is missing; point to a run directory written by an experiment, or a directory written by jaxcnn.checkpoint.export (it holds {MODEL_FILE} and {PARAMS_FILE})")
    meta = _read_meta(meta_path)
    input_shape = tuple(meta["input_shape"])
    blob = params_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(
            f"{params_path} does not match the checksum in {meta_path} (truncated or changed); "
            "re-export it from the run or retrain"
        )
    module = _rebuild(meta, directory) if model is None else model
    name = meta.get("model") or meta.get("module")
    from jaxcnn.train.model import adapt

    adapter = adapt(module)
    x = jax.ShapeDtypeStruct((1, *input_shape), np.float32)
    template = jax.eval_shape(lambda x: adapter.init(jax.random.key(0), jax.random.key(0), x), x)
    template = {"params": template["params"], "batch_stats": template.get("batch_stats") or {}}
    try:
        variables = serialization.from_bytes(template, blob)
    except Exception as e:  # msgpack raises many kinds
        raise CheckpointError(f"{params_path} cannot be read as parameters of {name!r}: {e}") from None
    _check_shapes(template, variables, params_path, name, rebuilt=model is None)
    return module, variables, meta


def _check_shapes(template: Any, variables: Any, path: Path, name: str, rebuilt: bool = False) -> None:
    want = jax.tree_util.tree_flatten_with_path(template)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    for key, leaf in want:
        arr = got.get(key)
        if arr is None or tuple(np.shape(arr)) != tuple(leaf.shape):
            where = jax.tree_util.keystr(key)
            raise CheckpointError(
                f"{path} does not match model {name!r}: {where} should have shape {tuple(leaf.shape)}, "
                f"found {None if arr is None else tuple(np.shape(arr))}; was it saved from another architecture?"
                + (" Or was the module built with an argument the export could not record (its export warned: one not "
                   "kept as a plain attribute)? Then pass it built again: load_state(directory, model=...)" if rebuilt else "")
            )


def load_state(directory: str | os.PathLike[str], model: Any = None, optimizer: Any = None, loss: Any = None):
    """Rebuild a :class:`~jaxcnn.train.TrainState` from an export, for :func:`jaxcnn.predict`,
    :func:`jaxcnn.evaluate`, or to train on: the module (or ``model``), its weights, the loss,
    and the optimizer it was trained with when it was given by name with a number rate (a fresh
    optimizer state; otherwise ``optimizer``, default RMSprop, with a warning when the export
    names none), and the metrics ``fit`` logged (jaxcnn's own; a
    function metric is left out, with a warning). A loss function of your own cannot be rebuilt
    from the export: pass it as ``loss`` (as Keras asks for ``custom_objects``); without it the
    state gets sparse categorical cross-entropy, with a warning."""
    from jaxcnn import losses
    from jaxcnn.train import create_train_state

    module, variables, meta = load(directory, model)
    opt = meta.get("optimizer") or {}
    if optimizer is None and "optimizer" in meta and meta["optimizer"] is None:
        warnings.warn(
            f"{directory} was trained with an optimizer its model.json cannot record (an optax transformation, or a "
            "learning-rate schedule); the reloaded state trains on with RMSprop at 0.001 (predict and evaluate do not "
            "use it). Pass yours to train on with it: load_state(..., optimizer=...)", stacklevel=2,
        )
    if optimizer is None:
        optimizer = opt.get("name", "rmsprop") if isinstance(opt, dict) else "rmsprop"
        learning_rate = opt.get("learning_rate") if isinstance(opt, dict) else None
        kwargs = opt.get("kwargs") if isinstance(opt, dict) else None
        if isinstance(kwargs, dict) and kwargs:  # e.g. a weight_decay: the same optimizer, rebuilt whole (and recorded so)
            from jaxcnn import optim

            optimizer, learning_rate = optim.get_optimizer(optimizer, learning_rate, **kwargs), None
    else:
        learning_rate = None
    loss_meta = meta.get("loss") if isinstance(meta.get("loss"), dict) else {}
    name, from_logits = loss_meta.get("name"), loss_meta.get("from_logits")
    from_logits = from_logits if isinstance(from_logits, bool) else None  # whether the outputs are probabilities
    if loss is not None:
        loss = losses.get_loss(loss, from_logits=from_logits)
    elif name in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        loss = losses.get_loss(name, from_logits=from_logits, label_smoothing=float(loss_meta.get("label_smoothing") or 0.0))
    else:
        if name is not None:
            warnings.warn(
                f"{directory} was trained with the loss {name!r}, a function an export cannot rebuild; the reloaded "
                f"state evaluates and trains with sparse categorical cross-entropy. Pass the function to keep it: "
                f"load_state(..., loss={name})", stacklevel=2,
            )
        loss = losses.get_loss(None, from_logits=from_logits)
    state = create_train_state(module, tuple(meta["input_shape"]), optimizer, learning_rate, loss=loss,
                               metrics=_metrics_from(meta.get("metrics"), directory))
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"] or state.batch_stats)
    return state


# ----------------------------------------------------------------------------------------------
# Training checkpoints (orbax): the whole TrainState, the history and the callbacks' state, once
# an epoch, so that a run can be resumed and end exactly as one never interrupted.

#: Version of the JSON part of a training checkpoint; bump it when its meaning changes.
TRAIN_FORMAT = 1


@dataclass
class Restored:
    """What :meth:`TrainCheckpoints.restore` gives back.

    ``epoch`` counts completed epochs: resume with ``fit(restored.state, ..., initial_epoch=epoch)``.
    """

    state: Any  # a TrainState like the template, on the default device
    epoch: int  # epochs completed; the checkpoint's step
    history: Any  # jaxcnn.train.History of every completed epoch
    callbacks: list[dict[str, Any]]  # per callback, in order: what its get_state() returned
    stop_training: bool  # a callback (EarlyStopping) had stopped training
    meta: dict[str, Any]  # the whole JSON record


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat(tree: Any) -> dict[str, Any]:
    """``{"opt_state.inner_state.0.nu.dense.kernel": leaf, ...}``: the naming orbax uses too."""
    return {".".join(_key_name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _state_tree(state: Any) -> dict[str, Any]:
    """The arrays of a TrainState as a host pytree (typed PRNG keys as their raw uint32 data)."""
    key = state.key
    if key is not None and jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    tree = {
        "step": np.asarray(state.step, np.int32),
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "key": key,
    }
    return jax.device_get(tree)


def _digest(tree: Any) -> str:
    """SHA-256 over every leaf's name, dtype, shape and bytes: catches silent corruption."""
    h = hashlib.sha256()
    for name, leaf in sorted(_flat(tree).items()):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _json_safe(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a callback's state into JSON values and array pytrees (saved with orbax)."""
    plain, arrays = {}, {}
    for k, v in state.items():
        try:
            json.dumps(v)
            plain[k] = v
        except (TypeError, ValueError):
            arrays[k] = jax.device_get(v)
    return plain, arrays


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's JSON meta without its own ``meta_sha256``, over canonical JSON
    (sorted keys, no spaces), so the history and the callbacks' state cannot be edited unseen."""
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != "meta_sha256"}))
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _drop_closed_loop_reports() -> None:
    """Keep a failed restore to its one-line error.

    orbax restores with ``asyncio.gather`` over tensorstore reads in a loop it closes as soon as one
    read fails. The reads still in flight then finish on tensorstore's threads and call
    ``loop.call_soon_threadsafe`` on that closed loop; tensorstore reports each resulting
    ``RuntimeError: Event loop is closed`` as unraisable (``PyErr_WriteUnraisable``), at racy
    moments before or after our error. Those reports, and only those, are dropped; every other
    one still reaches the previous ``sys.unraisablehook``.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_jaxcnn_drops_closed_loop", False):
        return

    def hook(report: Any) -> None:
        if report.exc_type is RuntimeError and str(report.exc_value) == "Event loop is closed":
            return
        previous(report)

    hook._jaxcnn_drops_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class TrainCheckpoints:
    """One orbax checkpoint per epoch in ``directory``, keeping the latest and the best.

    Each checkpoint (a folder named by the number of completed epochs) holds ``state``: the full
    TrainState pytree (params, batch_stats, opt_state with the current learning rate, step, dropout
    key); ``meta``: JSON with the history so far, the callbacks' state, a SHA-256 of the arrays and
    one of the meta itself (an edited history or EarlyStopping state is refused on restore);
    and, when a callback keeps arrays (EarlyStopping's best weights), ``callback_arrays``. Saving is
    atomic (orbax writes a temporary folder and renames it, and removes an older checkpoint only
    after that), so a process killed at any moment leaves the previous checkpoints intact.

    With ``asynchronous=True`` (what :func:`jaxcnn.fit` uses), :meth:`save` copies the arrays to
    host memory and returns while orbax writes them in a background thread; the next
    :meth:`save`, :meth:`wait` and :meth:`close` wait for that write, and raise
    :class:`CheckpointError` if it failed.

    Args:
      directory: where the checkpoints live, e.g. ``<run>/checkpoints``; created if missing.
      monitor: the ``metrics`` key that ranks checkpoints for "best" (default "val_loss").
      mode: "min" or "max" for ``monitor``.
      keep: "last_and_best" (default) or "last".
      asynchronous: write in the background (default False: :meth:`save` returns once the
        checkpoint is on disk).
    """

    def __init__(self, directory: str | os.PathLike[str], *, monitor: str = "val_loss", mode: str = "min", keep: str = "last_and_best",
                 asynchronous: bool = False):
        import orbax.checkpoint as ocp  # heavy: imported only when checkpoints are used

        if mode not in ("min", "max"):
            raise CheckpointError(f"mode must be 'min' or 'max', got {mode!r}")
        if keep not in ("last_and_best", "last"):
            raise CheckpointError(f"keep must be 'last_and_best' or 'last', got {keep!r}")
        self.directory = Path(directory).absolute()
        self.monitor, self.mode, self.asynchronous = monitor, mode, bool(asynchronous)
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} is not a directory; it cannot hold checkpoints")
        policies = [ocp.checkpoint_managers.LatestN(1)]
        best_fn = None
        if keep == "last_and_best":
            best_fn = lambda m: m[monitor]  # noqa: E731
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=best_fn, reverse=(mode == "min"), n=1, keep_checkpoints_without_metrics=False
                )
            )
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn,
            best_mode=mode,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=self.asynchronous,
            cleanup_tmp_directories=True,  # leftovers of a save that was killed
        )
        self._ocp = ocp
        try:
            handlers = {
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
                "callback_arrays": ocp.StandardCheckpointHandler(),
            }
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        except Exception as e:  # noqa: BLE001 - orbax/etils raise many kinds
            raise CheckpointError(f"cannot open the checkpoint directory {self.directory}: {e}") from None

    # -- what is there -----------------------------------------------------------------------

    @property
    def epochs(self) -> list[int]:
        """Completed-epoch counts of the checkpoints on disk, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    @property
    def latest_epoch(self) -> int | None:
        epochs = self.epochs
        return epochs[-1] if epochs else None

    @property
    def best_epoch(self) -> int | None:
        """The checkpoint with the best ``monitor`` (the latest when none has the metric)."""
        self._manager.reload()
        return self._manager.best_step()

    # -- save and restore --------------------------------------------------------------------

    def save(
        self,
        epoch: int,
        state: Any,
        *,
        history: Any = None,
        callbacks: list[dict[str, Any]] | tuple[()] = (),
        stop_training: bool = False,
        metrics: dict[str, float] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Save after ``epoch`` completed epochs (1 after the first). ``metrics[monitor]`` ranks it."""
        # Host copies: the training step donates the state's device buffers, which on CPU a
        # numpy view would share, and an asynchronous write reads the arrays after this returns.
        tree = _host_copy(_state_tree(state))
        plain_cbs, arrays = [], {}
        for i, cb_state in enumerate(callbacks):
            plain, arr = _json_safe(dict(cb_state))
            plain_cbs.append(plain)
            if arr:
                arrays[str(i)] = _host_copy(arr)
        lr = None
        try:
            from jaxcnn import optim

            value = optim.get_learning_rate(tree["opt_state"])
            lr = None if value is None else float(value)
        except Exception:  # noqa: BLE001 - informational only
            pass
        meta = {
            "format": TRAIN_FORMAT,
            "epoch": int(epoch),
            "step": int(tree["step"]),
            "learning_rate": lr,
            "input_shape": list(getattr(state, "input_shape", ())),
            "num_classes": int(getattr(state, "num_classes", 0)),
            "history": history.to_dict() if history is not None else None,
            "callbacks": plain_cbs,
            "stop_training": bool(stop_training),
            "sha256": _digest(tree),
            **(extra or {}),
        }
        if arrays:
            meta["callback_arrays_sha256"] = _digest(arrays)
        meta["meta_sha256"] = _meta_digest(meta)
        # A deep copy: a background write reads it after save() returns, while callbacks may change
        # the lists and dicts their state shares.
        meta = json.loads(json.dumps(meta))
        ranked = None
        if metrics is not None and self.monitor in metrics and np.isfinite(metrics[self.monitor]):
            ranked = {self.monitor: float(metrics[self.monitor])}
        items = {"state": self._ocp.args.StandardSave(tree), "meta": self._ocp.args.JsonSave(meta)}
        if arrays:
            items["callback_arrays"] = self._ocp.args.StandardSave(arrays)
        _drop_closed_loop_reports()  # a write that fails leaves tensorstore's in-flight writes reporting so
        try:
            self._manager.save(int(epoch), args=self._ocp.args.Composite(**items), metrics=ranked, force=True)
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(e) from None
        if not self.asynchronous:
            self.wait()

    def wait(self) -> None:
        """Block until the last :meth:`save` is on disk (at once when saving synchronously)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(e) from None

    def _save_failed(self, error: Exception) -> CheckpointError:
        """One line for a save that failed (orbax's own text runs to a few hundred characters, on
        a full disk naming tensorstore's files): what happened, what was kept, and how to go on.
        Orbax's half-written ``*.orbax-checkpoint-tmp`` folder is removed."""
        import shutil

        text = " ".join(str(error).split()) or type(error).__name__
        full = "No space left on device" in text or "os_error_code='28'" in text
        if full:
            text = "No space left on device"
        elif len(text) > 300:
            text = text[:300] + "..."
        try:
            for p in self.directory.iterdir():
                if ".orbax-checkpoint-tmp" in p.name:
                    shutil.rmtree(p, ignore_errors=True)
            self._manager.reload()
            kept = list(self._manager.all_steps())
        except Exception:  # noqa: BLE001 - the message still says what failed
            kept = []
        then = (f"the checkpoint after epoch {max(kept)} is kept, and fit(..., resume=True) continues from it"
                if kept else "fit(..., resume=True) then starts the run again")
        fix = "free some space" if full else "fix the cause"
        return CheckpointError(f"cannot save a checkpoint in {self.directory}: {text}; {fix}: {then}")

    def restore(self, template: Any, epoch: int | None = None) -> Restored:
        """Read the checkpoint after ``epoch`` completed epochs (default: the latest) into a
        TrainState shaped like ``template`` (the model and optimizer of the run being resumed).

        Raises :class:`CheckpointError` when there is no checkpoint, when it was saved from another
        model or optimizer (names the first parameter that differs), or when it is truncated or
        corrupt.
        """
        from jaxcnn.train import History

        epochs = self.epochs
        if not epochs:
            raise CheckpointError(f"no checkpoint in {self.directory}; nothing to resume from")
        epoch = epochs[-1] if epoch is None else int(epoch)
        if epoch not in epochs:
            raise CheckpointError(f"no checkpoint after epoch {epoch} in {self.directory}; there are: {epochs}")
        where = self.directory / str(epoch)
        _drop_closed_loop_reports()
        fix = "delete that folder to resume from an earlier checkpoint, or start the run again in a new directory"
        target = _state_tree(template)
        try:
            saved = self._manager.item_metadata(epoch)["state"]
            saved_tree = getattr(saved, "tree", saved)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {where} is truncated or corrupt ({type(e).__name__}: {e}); {fix}") from None
        if saved_tree is None:
            raise CheckpointError(f"checkpoint {where} has no training state (truncated or not written by jaxcnn); {fix}")
        _check_against(_flat(target), _flat(saved_tree), where)
        try:
            args = {"state": self._ocp.args.StandardRestore(target), "meta": self._ocp.args.JsonRestore()}
            restored = self._manager.restore(epoch, args=self._ocp.args.Composite(**args))
            tree, meta = restored["state"], restored["meta"]
            arrays = {}
            if (where / "callback_arrays").is_dir():
                arrays = self._manager.restore(
                    epoch, args=self._ocp.args.Composite(callback_arrays=self._ocp.args.StandardRestore())
                )["callback_arrays"]
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - tensorstore, json, msgpack...
            raise CheckpointError(f"checkpoint {where} cannot be read ({type(e).__name__}: {str(e)[:300]}); it is truncated or corrupt; {fix}") from None
        if not isinstance(meta, dict) or meta.get("format") != TRAIN_FORMAT:
            raise CheckpointError(f"checkpoint {where} was not written by this version of jaxcnn (format {meta.get('format') if isinstance(meta, dict) else None}); {fix}")
        if _digest(tree) != meta.get("sha256"):
            raise CheckpointError(f"checkpoint {where} does not match its SHA-256 (truncated or changed on disk); {fix}")
        if meta.get("meta_sha256") != _meta_digest(meta):
            raise CheckpointError(f"checkpoint {where}: its meta (history, callbacks' state) does not match its SHA-256 "
                                  f"(edited or corrupt on disk, or written by an older jaxcnn); {fix}")
        if arrays and _digest(arrays) != meta.get("callback_arrays_sha256"):
            raise CheckpointError(f"checkpoint {where}: the callbacks' arrays (e.g. EarlyStopping's best weights) do not "
                                  f"match their SHA-256 (truncated or changed on disk); {fix}")
        state = _state_from_tree(template, tree)
        callbacks = [dict(c) for c in meta.get("callbacks", [])]
        for i, arr in (arrays or {}).items():
            callbacks[int(i)].update(jax.device_get(arr))
        history = History.from_dict(meta["history"]) if meta.get("history") else History()
        return Restored(state, int(meta["epoch"]), history, callbacks, bool(meta.get("stop_training")), meta)

    def close(self) -> None:
        """Wait for a background write (see :meth:`wait`), then release orbax's resources."""
        try:
            self.wait()
        except BaseException:
            try:
                self._manager.close()  # waits again, and would raise the same failure again
            except Exception:  # noqa: BLE001 - the first report is the one raised
                pass
            raise
        self._manager.close()

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _host_copy(tree: Any) -> Any:
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def _check_against(want: dict[str, Any], got: dict[str, Any], where: Path) -> None:
    """Compare the template's leaves with the checkpoint's (name, shape, dtype): a clear message
    instead of an error deep inside orbax when the architecture or optimizer differs."""
    got = {k: v for k, v in got.items() if hasattr(v, "shape")}
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        first = missing[0] if missing else extra[0]
        what = "the model has" if missing else "the checkpoint has"
        raise CheckpointError(
            f"checkpoint {where} does not match this model/optimizer: {what} {first!r} and the other does not "
            f"({len(missing)} missing, {len(extra)} unexpected); was it saved from another architecture or optimizer?"
        )
    for k, leaf in want.items():
        shape, dtype = tuple(np.shape(leaf)), np.asarray(leaf).dtype
        g = got[k]
        if tuple(g.shape) != shape or np.dtype(g.dtype) != dtype:
            raise CheckpointError(
                f"checkpoint {where} does not match this model: {k} should be {dtype}{list(shape)}, the checkpoint "
                f"has {np.dtype(g.dtype)}{list(g.shape)}; was it saved from another architecture?"
            )


def _state_from_tree(template: Any, tree: dict[str, Any]) -> Any:
    import jax.numpy as jnp

    key = template.key
    if key is not None and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(tree["key"]), impl=jax.random.key_impl(template.key))
    elif key is not None:
        key = jnp.asarray(tree["key"])
    to_device = lambda t: jax.tree.map(jnp.asarray, t)  # noqa: E731
    return template.replace(
        step=jnp.asarray(tree["step"], jnp.int32),
        params=to_device(tree["params"]),
        batch_stats=to_device(tree["batch_stats"]),
        opt_state=to_device(tree["opt_state"]),
        key=key,
    )
