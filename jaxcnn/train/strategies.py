"""Execution strategies: the ways of running training steps, behind one small interface.

Each strategy places the state, trains on one unit of an epoch (a batch, or a chunk of batches)
and evaluates; all of them call the same step functions (:mod:`jaxcnn.train.step`), so they
share the loss, the random-number rule and the NaN guard. :func:`choose_strategy` is the one
place that picks one:

* :class:`SingleDevice`: the whole batch in one jitted program on one device
  (``fit(devices=None)``, and models with batch statistics on CPU).
* :class:`Parts` (CPU, ``devices="auto"``): each batch cut into equal parts of at most
  :data:`PART_SIZE` examples (:func:`split_parts`: a function of the batch size and the model
  alone, never of the device count), dealt out in turn to one CPU device per core (at most 8,
  see :func:`jaxcnn.use_cpu_devices`). Each device computes its parts' gradients in its own program;
  the first sums them and takes the optimizer step; the new parameters are copied back. There is
  no collective (none is needed without batch statistics). Small parts keep a
  part's activations in the core's cache, which made them much faster per example than whole
  batches (figures in BENCHMARKS.md). Evaluation batches are dealt out the same way.
* :class:`StatsMesh` (CPU, ``devices="auto"``, models with batch statistics): each batch cut
  into parts of at most :data:`PART_SIZE` examples as for :class:`Parts` (fewer, larger parts
  where there are fewer CPU devices), one part per device, all in one SPMD program over a
  mesh of as many devices. XLA all-reduces BatchNorm's batch mean and variance, so they are
  the whole batch's (as in Keras and on one device). With one device per core a part is large
  (256 of a batch of 512 on 2 cores); with XLA's own convolution kernels (``import jaxcnn``
  sets them) that is as fast as 16 devices with parts of 32, or faster (BENCHMARKS.md). The
  mesh programs are traced under :func:`jaxcnn.layers.batch_shards`, so that ``Conv2D``, when
  asked to chunk (``JAXCNN_CONV_CHUNK``), chunks each device's part on its own.
* :class:`Mesh` (``devices="all"``, a count or a list): a data-parallel ``jax.sharding`` mesh,
  the batch split across devices and hosts, the state replicated.
* :class:`Resident` (accelerators by default): the training set stays on the device and chunks
  of steps run in one ``lax.scan``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn._env import env_int
from jaxcnn.errors import ConfigError
from jaxcnn.layers import batch_shards, equal_parts
from jaxcnn.train import step as steps
from jaxcnn.train.state import TrainState

Array = jax.Array


#: Most examples in one part of a CPU batch (``JAXCNN_PART_SIZE`` overrides it, read at import).
PART_SIZE = env_int("JAXCNN_PART_SIZE", 32)
#: Each part's gradients reach the first device before they are summed: at most this many bytes
#: of them at once, so a large model gets fewer, larger parts rather than many copies of itself.
PART_GRADS_BYTES = 512 * 2**20


class Data(NamedTuple):
    """Host arrays of a data set: images (N, H, W, C), labels (N,) or (N, C), weights (N,) or None."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None = None

    def batch(self, idx: Any) -> dict[str, np.ndarray]:
        out = {"x": self.x[idx], "y": self.y[idx]}
        if self.w is not None:
            out["w"] = self.w[idx]
        return out


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Place ``tree`` with ``sharding``. Across several processes (hosts), every process holds the
    same host values (data and order derive from seed and epoch), so each builds the global array
    from the slices its own devices need."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(leaf))
            # Keys are state, always replicated, so the sharding covers their extra data axis too.
            arr = jax.make_array_from_callback(data.shape, sharding, lambda i: data[i])
            return jax.random.wrap_key_data(arr, impl=jax.random.key_impl(leaf))
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda i: value[i])

    return jax.tree.map(one, tree)


@dataclass(frozen=True)
class Placement:
    """Where batches and state live: one device, or a data-parallel mesh over several."""

    devices: tuple[Any, ...]

    @property
    def size(self) -> int:
        return len(self.devices)

    def __post_init__(self):
        if self.size > 1:
            mesh = jax.sharding.Mesh(np.array(self.devices), ("data",))
            object.__setattr__(self, "batch", jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
            object.__setattr__(self, "replicated", jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        else:
            object.__setattr__(self, "batch", jax.sharding.SingleDeviceSharding(self.devices[0]))
            object.__setattr__(self, "replicated", self.batch)

    def put_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, Array]:
        n = len(next(iter(arrays.values())))
        return put(arrays, self.batch if n % self.size == 0 else self.replicated)

    def put_state(self, tree: Any) -> Any:
        return put(tree, self.replicated)


def placement(devices: int | str | Sequence[Any] | None = None) -> Placement:
    """Resolve ``devices``: None, 1 or "auto" (one device), "all", a count, or a list of jax devices.
    Across processes "auto" is "all" (each process must take part), and None or 1 is refused.

    "all" is every local device, except on a CPU that jaxcnn split into devices itself
    (:func:`jaxcnn.use_cpu_devices`): there it is one device per core (:func:`cpu_workers`)."""
    # Across hosts (jax.distributed.initialize), "all" means every device of every process.
    local = jax.local_devices() if jax.process_count() == 1 else jax.devices()
    if (devices is None or devices == 1) and jax.process_count() > 1:
        raise ConfigError(
            f"devices={devices} runs the model on one device, but this job has {jax.process_count()} processes and each "
            "must take part; use devices='all' (or 'auto', which is 'all' across processes)"
        )
    if devices == "auto" and jax.process_count() > 1:
        chosen = local  # every process runs the same program: a device of one process alone would leave the others out
    elif devices is None or devices == "auto":
        chosen = local[:1]
    elif devices == "all":
        # On a CPU that jaxcnn split into more devices than cores, "all" means one per core.
        chosen = local[: cpu_workers()] if _jaxcnn_split_cpu(local) else local
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if devices < 1:
            raise ConfigError(f"devices must be at least 1 (or 'auto', 'all'), got {devices}")
        if not devices <= len(local):
            raise ConfigError(
                f"devices={devices} but this process sees {len(local)} device(s); on CPU, set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} (or call "
                "jaxcnn.use_cpu_devices) before JAX starts"
            )
        chosen = local[:devices]
    elif isinstance(devices, Sequence) and not isinstance(devices, str):
        chosen = list(devices)
        if not chosen:
            raise ConfigError("devices is an empty list; pass None, 'auto', 'all', a count or some devices")
        odd = next((d for d in chosen if not isinstance(d, jax.Device)), None)
        if odd is not None:
            raise ConfigError(f"devices holds {odd!r}, which is not a jax device; pass jax devices (e.g. jax.devices()[:2]), "
                              "or a count such as devices=2")
        twice = next((d for i, d in enumerate(chosen) if d in chosen[:i]), None)
        if twice is not None:
            raise ConfigError(f"devices lists {twice} twice; each device takes one part of a batch, so list each once "
                              f"(e.g. jax.devices()[:{len(set(chosen))}])")
    else:
        raise ConfigError(f"devices must be None, 'auto', 'all', a count or a list of devices, got {devices!r}")
    return Placement(tuple(chosen))


def padded_batches(data: Data, batch_size: int, multiple: int = 1):
    """Batches of ``data`` in order, the last one padded with masked rows to the full size (so
    evaluation compiles once); yields dicts with "x", "y", "mask" (and "w")."""
    n = len(data.x)
    size = math.ceil(min(batch_size, n) / multiple) * multiple
    for start in range(0, n, size):
        b = data.batch(slice(start, start + size))
        m = len(b["x"])
        b["mask"] = np.ones(m, np.float32)
        if m < size:
            b = {k: np.concatenate([v, np.zeros((size - m, *v.shape[1:]), v.dtype)]) for k, v in b.items()}
        yield b


_jit_eval = jax.jit(steps.eval_and_accumulate, donate_argnums=(1,))
#: The model's outputs in evaluation mode, on the device(s) of its inputs.
jit_predict = jax.jit(steps.predict_outputs)
jit_training_outputs = jax.jit(steps.training_outputs)


def predict_batches(run: Any, x: np.ndarray, batch_size: int, multiple: int = 1) -> np.ndarray:
    """``run(i, images)``, the outputs of batch ``i``, over host images ``x`` in batches (the last
    padded to the full size, its padding dropped), all dispatched before the first is read."""
    pending = [(run(i, b["x"]), b["mask"] > 0) for i, b in enumerate(padded_batches(Data(x, np.zeros(len(x), np.int32)), batch_size, multiple))]
    return np.concatenate([np.asarray(out)[keep] for out, keep in pending])


class Strategy:
    """How training steps run. ``put_state`` places a state; ``units`` cuts an epoch's order into
    what ``train`` takes at a time; ``train`` runs one unit and returns the new state and
    accumulator; ``evaluate`` returns the summed evaluation metrics (host values)."""

    name = "strategy"
    place: Placement

    @property
    def device_count(self) -> int:
        """How many devices a full batch trains on."""
        return self.place.size

    def put_state(self, state: TrainState) -> TrainState:
        return self.place.put_state(state)

    def units(self, order: np.ndarray, batch_size: int) -> list[Any]:
        steps_ = math.ceil(len(order) / batch_size)
        return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps_)]

    def prepare(self, data: Data) -> None:
        """Called once per ``fit`` with the training data (the resident strategy copies it)."""

    def train(self, state: TrainState, acc: dict[str, Any], unit: Any, data: Data) -> tuple[TrainState, dict[str, Any], int]:
        raise NotImplementedError

    def predict(self, state: TrainState, x: np.ndarray, batch_size: int) -> np.ndarray:
        """The model's raw outputs for host images ``x`` (N, H, W, C), ``state`` placed by
        :meth:`put_state`."""
        fn = _mesh_predict(self.place) if self.place.size > 1 else jit_predict
        return predict_batches(lambda i, images: fn(state, self.place.put_batch({"x": images})["x"]), x, batch_size, self.place.size)

    def evaluate(self, state: TrainState, data: Data, batch_size: int) -> dict[str, Any]:
        acc = self.place.put_state(steps.zero_metrics(state))
        fn = _mesh_eval(self.place) if self.place.size > 1 else _jit_eval
        for b in padded_batches(data, batch_size, self.place.size):
            acc = fn(state, acc, self.place.put_batch(b))
        return jax.device_get(acc)


_jit_train = jax.jit(steps.train_and_accumulate, donate_argnums=(0, 1))


class SingleDevice(Strategy):
    """The whole batch in one jitted program on one device."""

    name = "single"

    def __init__(self, device: Any):
        self.place = Placement((device,))

    def train(self, state, acc, unit, data):
        state, acc = _jit_train(state, acc, self.place.put_batch(data.batch(unit)))
        return state, acc, 1


_MESH_CACHE: dict[tuple[Any, ...], Any] = {}


def _over(fn: Any, shards: int) -> Any:
    """``fn`` traced with the layers told that its batch is split over ``shards`` devices
    (:func:`jaxcnn.layers.batch_shards`), as a function of its own for JAX's trace caches."""

    @functools.wraps(fn)
    def traced(*args):
        with batch_shards(shards):
            return fn(*args)

    return traced


class _OneAtATime:
    """A jitted mesh program that, on CPU devices, returns only once it has run. XLA:CPU's
    in-process all-reduce waits on a thread for the other devices' share of the same run; with
    several mesh programs queued on a busy machine, those shares can wait behind each other for
    ever (seen on 2 cores: 6 hangs in 15 runs of a BatchNorm model validating on 10,000 images
    while other processes ran; none in 21 with one program at a time). Accelerators' collectives
    keep JAX's asynchronous dispatch."""

    def __init__(self, fn: Any, place: Placement):
        self.fn = fn
        self.wait = place.size > 1 and place.devices[0].platform == "cpu"

    def __call__(self, *args: Any) -> Any:
        if self.wait:  # the program before (whose outputs these are) has run: one at a time
            jax.block_until_ready(args)
        return self.fn(*args)

    def __getattr__(self, name: str) -> Any:  # .lower(...), .trace(...) as the jitted function's
        return getattr(self.fn, name)


def _mesh_train(place: Placement, sharded: bool) -> Any:
    key = ("train", place.devices, sharded)
    if key not in _MESH_CACHE:
        repl = place.replicated
        # Explicit shardings keep the state's layout fixed from step to step: one compile.
        _MESH_CACHE[key] = _OneAtATime(jax.jit(_over(steps.train_and_accumulate, place.size if sharded else 1),
                                               in_shardings=(repl, repl, place.batch if sharded else repl),
                                               out_shardings=(repl, repl), donate_argnums=(0, 1)), place)
    return _MESH_CACHE[key]


def _mesh_eval(place: Placement) -> Any:
    key = ("eval", place.devices)
    if key not in _MESH_CACHE:
        repl = place.replicated
        _MESH_CACHE[key] = _OneAtATime(jax.jit(_over(steps.eval_and_accumulate, place.size), in_shardings=(repl, repl, place.batch),
                                               out_shardings=repl, donate_argnums=(1,)), place)
    return _MESH_CACHE[key]


def _mesh_predict(place: Placement) -> Any:
    key = ("predict", place.devices)
    if key not in _MESH_CACHE:
        _MESH_CACHE[key] = jax.jit(_over(steps.predict_outputs, place.size), in_shardings=(place.replicated, place.batch), out_shardings=place.batch)
    return _MESH_CACHE[key]


class Mesh(Strategy):
    """A data-parallel ``jax.sharding`` mesh: the batch split over the devices, the state
    replicated. A batch that does not divide over them (the last, partial one) runs replicated."""

    name = "mesh"

    def __init__(self, place: Placement):
        self.place = place

    def train(self, state, acc, unit, data):
        sharded = len(unit) % self.place.size == 0
        state, acc = _mesh_train(self.place, sharded)(state, acc, self.place.put_batch(data.batch(unit)))
        return state, acc, 1


class StatsMesh(Strategy):
    """Models with batch statistics on CPU: each batch cut into parts as for :class:`Parts`, one
    part per device of a mesh, in one SPMD program whose all-reduces make BatchNorm's statistics
    the whole batch's (see the module docstring). The dropout masks are those of the whole batch
    in one piece, as on one device: only the order of floating-point sums differs from it."""

    name = "stats-mesh"

    def __init__(self, devices: Sequence[Any], batch_size: int, state: TrainState | None = None,
                 part_size: int | None = None):
        self.devices = tuple(devices)
        self.part_size = part_size
        self.cap = min(len(self.devices), max_parts(state) or len(self.devices))
        self._places: dict[int, Placement] = {}
        self.place = self._placement(batch_size)

    def _placement(self, n: int) -> Placement:
        k = split_parts(n, self.part_size, self.cap)
        if k not in self._places:
            self._places[k] = Placement(self.devices[:k])
        return self._places[k]

    def train(self, state, acc, unit, data):
        place = self._placement(len(unit))
        if not _placed(state, place):
            # A batch of another size (the last of an epoch) may use fewer devices than the state is on.
            state, acc = place.put_state(state), place.put_state(acc)
        fn = _mesh_train(place, True) if place.size > 1 else _jit_train
        state, acc = fn(state, acc, place.put_batch(data.batch(unit)))
        return state, acc, 1

    def evaluate(self, state, data, batch_size):
        if not _placed(state, self.place):
            state = self.place.put_state(state)
        return super().evaluate(state, data, batch_size)


def _placed(state: TrainState, place: Placement) -> bool:
    return jax.tree.leaves(state.params)[0].sharding == place.replicated


def max_parts(state: TrainState | None) -> int | None:
    """The most parts a batch may have for ``state``'s model: as many copies of its gradients as
    fit :data:`PART_GRADS_BYTES`, at least 1 (``None``: no state, no cap)."""
    if state is None:
        return None
    grad_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.params))
    return max(1, PART_GRADS_BYTES // max(grad_bytes, 1))


def split_parts(n: int, part_size: int | None = None, max_parts: int | None = None) -> int:
    """How many equal parts a batch of ``n`` is cut into: the fewest that gives parts of at most
    ``part_size`` (default :data:`PART_SIZE`) and at least 8 examples; where no count up to
    ``max_parts`` gives parts that small, the count that gives the smallest. It depends on the
    batch and the model only, so a run cuts its batches alike on any number of devices."""
    return equal_parts(n, PART_SIZE if part_size is None else part_size, max_parts)


def _part(state: TrainState, batch: dict[str, Array], part: Array, total: Array):
    return steps.part_grads(state, state.params, batch, part, total)


_jit_part = jax.jit(_part)
_jit_combine = jax.jit(steps.combine_and_update, donate_argnums=(0, 1))


class Parts(Strategy):
    """Each batch cut into cache-sized parts, dealt out in turn to the CPU devices; the first
    device sums the gradients and steps (see the module docstring)."""

    name = "parts"

    def __init__(self, devices: Sequence[Any], part_size: int | None = None):
        self.devices = tuple(devices)
        self.place = Placement(self.devices[:1])
        self.part_size = part_size

    @property
    def device_count(self) -> int:
        return len(self.devices)

    def _replicas(self, state: TrainState) -> list[TrainState]:
        # What a part needs (no optimizer state), on each device; device 0 shares the state's buffers.
        light = state.replace(opt_state=None)
        return [light] + [jax.device_put(light, d) for d in self.devices[1:]]

    def train(self, state, acc, unit, data):
        n = len(unit)
        parts = split_parts(n, self.part_size, max_parts(state))
        size = n // parts
        replicas = self._replicas(state)
        k = len(self.devices)
        grads, metrics = [], []
        batch = data.batch(unit)
        for j in range(parts):
            i = j % k
            piece = {name: v[j * size : (j + 1) * size] for name, v in batch.items()}
            piece, pj, total = jax.device_put((piece, np.int32(j), np.float32(n)), self.devices[i])
            g, m, _ = _jit_part(replicas[i], piece, pj, total)
            grads.append(g)
            metrics.append(m)
        grads, metrics = jax.device_put((grads, metrics), self.devices[0])
        state, acc = _jit_combine(state, acc, grads, metrics)
        return state, acc, 1

    def predict(self, state, x, batch_size):
        replicas, k = self._replicas(state), len(self.devices)  # batches dealt out in turn
        return predict_batches(lambda i, images: jit_predict(replicas[i % k], jax.device_put(images, self.devices[i % k])), x, batch_size)

    def evaluate(self, state, data, batch_size):
        replicas = self._replicas(state)
        accs = [jax.device_put(steps.zero_metrics(state), d) for d in self.devices]
        for i, b in enumerate(padded_batches(data, batch_size)):
            d = i % len(self.devices)
            accs[d] = _jit_eval(replicas[d], accs[d], jax.device_put(b, self.devices[d]))
        host = jax.device_get(accs)
        return {**steps.sum_metrics(state, host), "bad_step": -1}


def _scan_chunk(state, acc, x_all, y_all, w_all, idx, valid):
    """A chunk of steps in one program, the data set resident on the device: ``idx`` (K, B) holds
    the example indices of K steps, ``valid`` (K,) marks padding steps to skip."""

    def body(carry, inputs):
        st, ac = carry
        ids, ok = inputs
        batch = {"x": jnp.take(x_all, ids, axis=0), "y": jnp.take(y_all, ids, axis=0)}
        if w_all is not None:
            batch["w"] = jnp.take(w_all, ids, axis=0)
        new_st, new_ac = steps.train_and_accumulate(st, ac, batch)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return (jax.tree.map(keep, new_st, st), jax.tree.map(keep, new_ac, ac)), None

    (state, acc), _ = jax.lax.scan(body, (state, acc), (idx, valid))
    return state, acc


class Resident(Strategy):
    """The training set on the device; ``chunk`` steps at a time inside one ``lax.scan``."""

    name = "resident"

    def __init__(self, place: Placement, chunk: int = 64):
        self.place, self.chunk = place, chunk
        repl = place.replicated
        self._fn = jax.jit(_scan_chunk, in_shardings=(repl,) * 7, out_shardings=(repl, repl), donate_argnums=(0, 1))
        self._data: tuple[Array, Array, Array | None] | None = None

    def prepare(self, data: Data) -> None:
        self._data = tuple(self.place.put_state(a) if a is not None else None for a in data)  # type: ignore[assignment]

    def units(self, order, batch_size):
        return scan_units(order, batch_size, self.chunk)

    def train(self, state, acc, unit, data):
        idx, valid = unit
        state, acc = self._fn(state, acc, *self._data, idx, valid)
        return state, acc, int(valid.sum())


def scan_units(order: np.ndarray, batch_size: int, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split an epoch's order into scan chunks of ``chunk`` full batches (the last chunk padded
    with skipped steps, so all chunks share one program) and a final partial batch."""
    full = len(order) // batch_size
    units = []
    if full:
        k = min(chunk, full)
        n_chunks = math.ceil(full / k)
        idx = np.zeros((n_chunks * k, batch_size), np.int32)
        idx[:full] = order[: full * batch_size].reshape(full, batch_size)
        valid = np.arange(n_chunks * k) < full
        units += [(idx[c * k : (c + 1) * k], valid[c * k : (c + 1) * k]) for c in range(n_chunks)]
    rest = order[full * batch_size :]
    if len(rest):
        units.append((rest[None, :].astype(np.int32), np.ones(1, bool)))
    return units


def choose_strategy(devices: int | str | Sequence[Any] | None, batch_size: int, state: TrainState | None = None,
                    data_on_device: bool | None = None, *, asked_batch_size: int | None = None,
                    per_step: bool = False, training: bool = True) -> Strategy:
    """The one place a strategy is chosen (see the module docstring).

    ``devices="auto"``: on CPU, :class:`Parts` over one local CPU device per core, or for a model
    with batch statistics :class:`StatsMesh` over all of them (a part on its own would normalise
    by its own statistics; the mesh keeps Keras's whole-batch ones); on an accelerator one
    device, the data resident. ``None``: one
    device. "all", a count or a list: :class:`Mesh` (one device: :class:`SingleDevice`).
    ``data_on_device`` forces the resident strategy on or off. ``asked_batch_size``: the batch
    size the user asked for, when ``batch_size`` is smaller because the data is (Keras's one
    batch of all the data); the error for a batch that does not divide over the devices says so.
    ``per_step``: a callback runs after every batch, so the resident strategy scans one step at
    a time (its hooks see each step, as Keras's do) instead of chunks of 64. ``training=False``
    (evaluate): any batch size, the last batch padded to a multiple of the device count.
    """
    place = placement(devices)
    if training and batch_size % place.size:
        if asked_batch_size is not None and asked_batch_size != batch_size:
            raise ConfigError(f"the training data has {batch_size} examples, fewer than batch_size {asked_batch_size}, so its "
                              f"one batch of {batch_size} does not divide over {place.size} devices; use a multiple of "
                              f"{place.size}, or devices=None for one device")
        raise ConfigError(f"batch_size {batch_size} does not divide over {place.size} devices; use a multiple of {place.size}")
    on_cpu = place.devices[0].platform == "cpu"
    if data_on_device is None:
        data_on_device = not on_cpu
    if data_on_device:
        return Resident(place, chunk=1 if per_step else 64)
    if place.size > 1:
        return Mesh(place)
    has_stats = state is not None and bool(jax.tree.leaves(state.batch_stats))
    if devices == "auto" and on_cpu and jax.process_count() == 1:
        local = jax.local_devices()
        if has_stats:
            return StatsMesh(local, batch_size, state) if len(local) > 1 else SingleDevice(place.devices[0])
        return Parts(local[: cpu_workers()])
    return SingleDevice(place.devices[0])


def _jaxcnn_split_cpu(local: Sequence[Any]) -> bool:
    import jaxcnn  # set up before this module is imported

    return jax.process_count() == 1 and local[0].platform == "cpu" and jaxcnn._CPU_SPLIT > 1


def cpu_workers() -> int:
    """How many CPU devices :class:`Parts` deals parts to: one per core, at most 8 (more
    programs at once than cores only made the parts slower)."""
    from jaxcnn import _default_cpu_devices

    return max(1, min(_default_cpu_devices(), jax.local_device_count()))
