"""Any Flax model as one pure function, so that one jitted step serves every kind.

The model contract: a module maps a batch of images ``x`` (B, H, W, C) to outputs (B, classes),
logits or probabilities. What jaxcnn accepts:

* **Flax linen** modules. If ``__call__`` has a ``train`` argument (or ``training``, or
  ``deterministic``, the inverse), jaxcnn passes it: True in training steps, False for
  evaluation and prediction. A module without one is called as ``module(x)`` everywhere; its
  dropout, if any, then draws from the ``"dropout"`` key in evaluation too.
  Keras-style L2 terms sown into the ``"losses"`` collection (``jaxcnn.layers``) join the loss;
  ``batch_stats`` (BatchNorm) are updated in training.
* **Flax NNX** modules (``nnx.Module``), called as ``module(x)``. Following Flax's functional
  API, the module is split once into a graph definition and its state (``nnx.split``); each step
  merges them back (``nnx.merge``), puts the module in training or evaluation mode
  (``module.train()`` / ``module.eval()``), reseeds its random streams from the step's dropout
  key, and splits the updated ``nnx.BatchStat`` values out again. ``nnx.Param`` are the
  parameters. An NNX module comes initialised by its constructor's ``nnx.Rngs``: ``fit``'s seed
  then drives dropout and the data order, not the initial weights.

:func:`adapt` turns a module into a :class:`LinenModel` or :class:`NNXModel`, whose ``apply``
has linen's signature ``apply(variables, x, *, train, rngs=None, mutable=False)``; the
adapters compare equal when their modules do, so jitted steps are reused across ``fit`` calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import layers
from jaxcnn.checks import _user_stacklevel, check_nnx_dropout
from jaxcnn.errors import ConfigError, JaxcnnError, ShapeError

TRAIN_ARGS = ("train", "training", "deterministic")


_WARNED_FLAGS: set[type] = set()  # module classes warned about a mode flag jaxcnn does not set
#: Boolean arguments that look like a mode flag (is_training, eval_mode, use_running_average...).
#: Module fields that hold a train/eval mode (CNN(train=True), a common Flax pattern), which
#: jaxcnn cannot switch; other boolean fields (pretrained, use_bias...) are left alone.
MODE_FIELDS = (*TRAIN_ARGS, "is_training", "is_train", "train_mode", "eval_mode", "evaluation", "inference", "use_running_average")
_MODE_WORDS = re.compile(r"train|eval|determin|infer|test|mode|running", re.I)


def mode_kwargs(train_arg: str | None, train: bool) -> dict[str, bool]:
    """The keyword arguments that put a module whose ``__call__`` takes the mode flag
    ``train_arg`` (``train``, ``training`` or ``deterministic``; ``None``: no flag) in training
    or evaluation mode. The one rule for linen, NNX and :class:`jaxcnn.augment.Augmented`."""
    if train_arg is None:
        return {}
    return {train_arg: (not train) if train_arg == "deterministic" else train}


def _train_arg(module: nn.Module) -> str | None:
    try:
        params = inspect.signature(module.__call__).parameters
    except (TypeError, ValueError):
        return None
    for name in TRAIN_ARGS:
        if name in params:
            return name
    flags = [p.name for p in list(params.values())[1:] if isinstance(p.default, bool) and _MODE_WORDS.search(p.name)]
    if flags:  # a mode flag of another name would stay at its default
        _warn_mode_once(module, f"{type(module).__name__}.__call__ takes {flags[0]!r}, which jaxcnn never sets: its Dropout and "
                                f"BatchNorm keep {flags[0]}={params[flags[0]].default} in training and evaluation alike. Name the mode "
                                "flag train, training or deterministic (jaxcnn sets it), or give it no default if it is not one")
        return None
    fields = [f.name for f in dataclasses.fields(module) if f.name in MODE_FIELDS] if dataclasses.is_dataclass(module) else []
    fields = [f for f in fields if isinstance(getattr(module, f, None), bool)]
    if fields:  # a mode kept as a field: fixed when the module was built
        _warn_mode_once(module, f"{type(module).__name__}.{fields[0]} is a field, fixed when the module is built, so jaxcnn cannot "
                                f"switch it between training and evaluation: its Dropout and BatchNorm keep "
                                f"{fields[0]}={getattr(module, fields[0])} in both. Take the mode as a __call__ argument instead: "
                                "def __call__(self, x, train: bool = False)")
    return None


def _warn_mode_once(module: Any, message: str) -> None:
    """Warn about a mode jaxcnn cannot set, once per module class."""
    if type(module) not in _WARNED_FLAGS:
        _WARNED_FLAGS.add(type(module))
        warnings.warn(message, UserWarning, stacklevel=_user_stacklevel())


@dataclass(frozen=True)
class LinenModel:
    """A linen module with its train argument (None: the module has none)."""

    module: nn.Module
    train_arg: str | None

    kind = "linen"

    # Equal modules share compiled programs (jit keys on the adapter). A module whose attributes
    # do not hash (a list of layer widths, say) hashes by its type, which is still consistent
    # with equality; one that cannot be compared (an array attribute) equals only itself.
    def __hash__(self) -> int:
        try:
            return hash((self.module, self.train_arg))
        except TypeError:
            return hash((type(self.module), self.train_arg))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinenModel):
            return NotImplemented
        if self.train_arg != other.train_arg:
            return False
        if self.module is other.module:
            return True
        try:
            return bool(self.module == other.module)
        except Exception:  # noqa: BLE001 - e.g. array attributes: "truth value ... is ambiguous"
            return False

    def call_kwargs(self, train: bool) -> dict[str, bool]:
        """The keyword arguments that put the module in training or evaluation mode."""
        return mode_kwargs(self.train_arg, train)

    def init(self, key: jax.Array, dropout_key: jax.Array, x: jax.Array) -> dict[str, Any]:
        variables = self.module.init({"params": key, "dropout": dropout_key}, x, **self.call_kwargs(False))
        return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}

    def init_with_output(self, key: jax.Array, dropout_key: jax.Array, x: jax.Array) -> tuple[Any, dict[str, Any]]:
        """:meth:`init`'s variables and the outputs for ``x`` of the same (evaluation-mode) call."""
        out, variables = self.module.init_with_output({"params": key, "dropout": dropout_key}, x, **self.call_kwargs(False))
        return out, {k: v for k, v in variables.items() if k in ("params", "batch_stats")}

    def apply(self, variables: Any, x: jax.Array, *, train: bool = False, rngs: Any = None, mutable: Any = False) -> Any:
        if rngs is None and self.train_arg is None:
            rngs = {"dropout": jax.random.key(0)}  # a module without `train` may drop out always

        def run(variables: Any, x: jax.Array, rngs: Any) -> Any:
            with layers.training_mode(train):  # jaxcnn's Dropout and BatchNorm called without train follow it
                return self.module.apply(variables, x, rngs=rngs, mutable=mutable, **self.call_kwargs(train))

        return _with_fast_paths(run, type(self.module))(variables, x, rngs)


def _digest(tree: Any) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class NNXModel:
    """An NNX module as its graph definition plus the templates to rebuild its state."""

    graphdef: Any
    rest_digest: str  # identifies the non-parameter, non-statistics state (random streams)
    templates: tuple[Any, Any, Any] = field(compare=False, hash=False)  # (Param, BatchStat, rest) states
    rest: Any = field(compare=False, hash=False)  # the rest as a pure dict of arrays
    module_type: type = field(compare=False, hash=False, default=object)
    train_arg: str | None = None  # __call__'s mode flag (train, training, deterministic), set as for linen

    kind = "nnx"

    @classmethod
    def from_module(cls, module: Any) -> NNXModel:
        from flax import nnx

        graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        _warn_kept_variables(module, rest)
        rest_pure = nnx.to_pure_dict(rest)
        return cls(graphdef, _digest(rest_pure), (params, stats, rest), rest_pure, type(module), _train_arg(module))

    def call_kwargs(self, train: bool) -> dict[str, bool]:
        """The mode flag for ``__call__``, when it takes one (besides ``.train()``/``.eval()``)."""
        return mode_kwargs(self.train_arg, train)

    def initial_variables(self) -> dict[str, Any]:
        from flax import nnx

        params, stats, _ = self.templates
        return {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}

    def init(self, key: jax.Array, dropout_key: jax.Array, x: jax.Array) -> dict[str, Any]:
        # Copies: the training step donates the state's buffers, and these are the user's module's
        # own arrays, which must stay usable (model(x), a second fit of the same instance).
        return jax.tree.map(lambda a: jnp.array(a, copy=True), self.initial_variables())

    def _merge(self, variables: Any) -> Any:
        from flax import nnx

        states = []
        for template, values in zip(self.templates, (variables["params"], variables.get("batch_stats", {}), self.rest)):
            state = jax.tree.map(lambda a: a, template)  # fresh Variables in this trace
            nnx.replace_by_pure_dict(state, values)
            states.append(state)
        return nnx.merge(self.graphdef, *states)

    def apply(self, variables: Any, x: jax.Array, *, train: bool = False, rngs: Any = None, mutable: Any = False) -> Any:
        def run(variables: Any, x: jax.Array, rngs: Any) -> Any:
            return self._apply(variables, x, train=train, rngs=rngs, mutable=mutable)

        return _with_fast_paths(run, self.module_type)(variables, x, rngs)

    def _apply(self, variables: Any, x: jax.Array, *, train: bool, rngs: Any, mutable: Any) -> Any:
        from flax import nnx

        module = self._merge(variables)
        if train:
            module.train()
        else:
            module.eval()
        key = (rngs or {}).get("dropout", jax.random.key(0))
        tags = {node.tag for _, node in nnx.iter_graph(module) if isinstance(node, nnx.RngStream)}
        if tags:
            nnx.reseed(module, **{t: key for t in tags})
        try:
            out = module(x, **self.call_kwargs(train))
        except ValueError as e:
            if "provided to Dropout" not in str(e):
                raise
            check_nnx_dropout(module)  # names the layer
            raise ConfigError(f"{self.module_type.__name__} has an nnx.Dropout without rngs ({e}); build it with the module's "
                              "rngs: nnx.Dropout(rate, rngs=rngs)") from None
        if not mutable:
            return out
        updates = {}
        if "batch_stats" in mutable and variables.get("batch_stats"):
            updates["batch_stats"] = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
        return out, updates


Model = LinenModel | NNXModel

_WARNED_VARIABLES: set[type] = set()  # NNX module classes warned about variables that stay fixed


def _warn_kept_variables(module: Any, rest: Any) -> None:
    """Warn (once per class) about an NNX module's own variables that are neither parameters,
    batch statistics nor random streams: the training step carries only nnx.Param and
    nnx.BatchStat from one step to the next, so updates to them in ``__call__`` are lost."""
    from flax import nnx

    if type(module) in _WARNED_VARIABLES:
        return
    kept = [(path, v) for path, v in nnx.to_flat_state(rest) if not isinstance(v, nnx.RngState)]
    if kept:
        _WARNED_VARIABLES.add(type(module))
        path, v = kept[0]
        where = ".".join(map(str, (type(module).__name__, *path)))
        warnings.warn(
            f"{where} is a {type(v).__name__} variable, which jaxcnn's training step does not carry from one step to the next "
            "(only nnx.Param and nnx.BatchStat are): updates to it in __call__ are lost. Make it an nnx.BatchStat "
            "(or a subclass) to have it updated in training and kept in evaluation",
            UserWarning, stacklevel=_user_stacklevel(),
        )


def _with_fast_paths(run: Any, module_type: type) -> Any:
    """``run`` with jaxcnn's CPU formulations swapped into a user's model (:func:`jaxcnn.layers.fast_paths`),
    on CPU; the registry's models are built from jaxcnn's layers and have them already."""
    if not layers.FAST_PATHS or module_type.__module__ == "jaxcnn.models" or jax.default_backend() != "cpu":
        return run
    return layers.fast_paths(run)


def is_nnx(module: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, nnx.Module)


def adapt(module: Any) -> Model:
    """The adapter for ``module`` (a linen or NNX module); a clear error for anything else."""
    if isinstance(module, (LinenModel, NNXModel)):
        return module
    if isinstance(module, nn.Module):
        return LinenModel(module, _train_arg(module))
    if is_nnx(module):
        return NNXModel.from_module(module)
    if isinstance(module, type) and (issubclass(module, nn.Module) or is_nnx_class(module)):
        raise ConfigError(
            f"got the class {module.__name__}, not a module; create one first, e.g. {module.__name__}()"
            " (an NNX module needs its rngs: MyModel(..., rngs=nnx.Rngs(0)))"
        )
    raise ConfigError(
        f"expected a Flax module (flax.linen.Module or flax.nnx.Module) mapping images (B, H, W, C) to "
        f"outputs (B, classes), got {type(module).__name__}"
    )


def is_nnx_class(cls: type) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return False
    return issubclass(cls, nnx.Module)


def model_name(model: Any) -> str:
    """The class name of the user's module, also behind an adapter."""
    if isinstance(model, LinenModel):
        return type(model.module).__name__
    if isinstance(model, NNXModel):
        return model.module_type.__name__
    return type(model).__name__


@contextlib.contextmanager
def tracing_errors(module: Any, images: tuple[int, ...]) -> Iterator[None]:
    """Tracing ``module`` on a batch of ``images`` (a shape, batch axis first): a ``__call__`` that
    does not fit the contract becomes :func:`call_error`'s ConfigError, and a model that cannot take
    these images (a TypeError or ValueError of JAX's shape checks, e.g. a Dense built for another
    input size) a one-line ShapeError that names the shape; the original error is its cause."""
    try:
        yield
    except JaxcnnError:  # jaxcnn's own layers' messages (ShapeError is a ValueError too)
        raise
    except (TypeError, ValueError) as e:
        if type(e) is TypeError and ("positional argument" in str(e) or "keyword argument" in str(e)):
            raise call_error(module, e) from None
        if type(e) in (TypeError, ValueError) and _SHAPE_WORDS.search(str(e)):
            raise _apply_error(module, images, e) from e
        raise  # the model's own errors, and JAX's tracer errors, as they are
    except ZeroDivisionError as e:  # an initialiser's fan-in of a layer given a zero-size input
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None or "initializers" not in tb.tb_frame.f_code.co_filename:
            raise  # the model's own
        raise ShapeError(
            f"{model_name(module)} cannot be applied to images of shape {_image_shape(images)}: a layer gets an input with a "
            f"zero-size axis ({e} in its initialiser): do its poolings and 'VALID' convolutions shrink the "
            f"{'x'.join(map(str, tuple(images)[1:3]))} images to nothing (or has a layer 0 features)? Pool less, or use padding='SAME'"
        ) from e


#: What JAX's and Flax's shape checks say (not a user's own ValueError, not a tracer error).
_SHAPE_WORDS = re.compile(r"shape|dimension|broadcast", re.I)


def _apply_error(module: Any, images: tuple[int, ...], error: Exception) -> ShapeError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
    channels = _CONV_CHANNELS.search(first)
    if channels:  # JAX's words for a convolution built for other input channels (an NNX Conv's in_features)
        first = f"a convolution is built for {channels.group(2)} input channels and gets {channels.group(1)}"
    return ShapeError(
        f"{model_name(module)} cannot be applied to images of shape {_image_shape(images)}: {first}. "
        "Is it built for other images (another size or number of channels)? Check the shapes its layers expect"
    )


#: conv_general_dilated's "... but 1 // 1 != 3" (input channels // groups != the kernel's input channels).
_CONV_CHANNELS = re.compile(r"feature dimension size.* but (\d+) // \d+ != (\d+)")


def _image_shape(images: tuple[int, ...]) -> str:
    """``(H, W, C)``, with the batch it was traced on: "(28, 28, 1) (a batch of 8)"."""
    shape = tuple(images)
    return f"{shape[1:]} (a batch of {shape[0]})" if len(shape) == 4 else str(shape)


def call_error(module: Any, error: TypeError) -> ConfigError:
    """A clear message for a module whose ``__call__`` does not fit the contract."""
    name = model_name(module)
    return ConfigError(
        f"{name} cannot be called as {name}(x){' with train=...' if isinstance(module, nn.Module) and _train_arg(module) else ''}: "
        f"{error}. jaxcnn calls a model with one batch of images x (B, H, W, C), plus a `train` (or `training`, "
        "`deterministic`) flag where __call__ has one; see 'Bring your own model' in the README"
    )
