"""Training: one engine with several execution strategies, and a Keras-like ``fit`` on it.

From the inside out:

* :mod:`jaxcnn.train.model`: any Flax model (linen with or without a ``train`` argument, or
  NNX) as one pure function ``apply(variables, x, *, train, rngs, mutable)``.
* :class:`TrainState` (:mod:`jaxcnn.train.state`): parameters, batch statistics, optimizer
  state, step and dropout key in one pytree, plus the static model, loss and metrics.
* :mod:`jaxcnn.train.step`: :func:`train_step` ``(state, batch) -> (state, metrics)`` and
  :func:`eval_step`, pure functions built on one loss-and-gradient function
  (:func:`~jaxcnn.train.step.part_grads`), one random-number rule and one NaN guard.
* :mod:`jaxcnn.train.strategies`: single device, CPU parts, mesh and device-resident scan,
  behind one interface, chosen in one place (:func:`choose_strategy`).
* :mod:`jaxcnn.train.loop`: :func:`fit`, :func:`evaluate`, :func:`predict`, :class:`History`.

Keras parity: the loss is Keras's cross-entropy (``sum(loss * w) / batch_size``) plus every
Keras-style L2 term the layers sowed; the epoch's ``loss``/``accuracy`` are averages over its
batches weighted by batch size; ``val_loss`` includes the L2 terms too; the last partial batch
is trained on.
"""

from jaxcnn.train.loop import (
    FitResult,
    History,
    Loop,
    compile_count,
    epoch_order,
    evaluate,
    fit,
    metric_logs,
    predict,
    run_epoch,
)
from jaxcnn.train.model import LinenModel, NNXModel, adapt
from jaxcnn.train.state import TrainState, create_train_state, has_batch_stats, output_classes, state_from_variables
from jaxcnn.train.step import (
    accumulate,
    eval_and_accumulate,
    eval_step,
    part_grads,
    regularization_loss,
    rng_rule,
    train_and_accumulate,
    train_step,
    zero_metrics,
)
from jaxcnn.train.strategies import (
    PART_GRADS_BYTES,
    PART_SIZE,
    Data,
    Mesh,
    Parts,
    Placement,
    Resident,
    SingleDevice,
    StatsMesh,
    Strategy,
    choose_strategy,
    cpu_workers,
    max_parts,
    placement,
    scan_units,
    split_parts,
)

__all__ = [
    "PART_GRADS_BYTES", "PART_SIZE", "Data", "FitResult", "History", "LinenModel", "Loop", "Mesh", "NNXModel",
    "Parts", "Placement", "Resident", "SingleDevice", "StatsMesh", "Strategy", "TrainState", "accumulate", "adapt",
    "choose_strategy", "compile_count", "cpu_workers", "create_train_state", "epoch_order", "eval_and_accumulate", "eval_step",
    "evaluate", "fit", "has_batch_stats", "max_parts", "metric_logs", "output_classes", "part_grads", "placement", "predict",
    "regularization_loss", "rng_rule", "run_epoch", "scan_units", "split_parts", "state_from_variables",
    "train_and_accumulate", "train_step", "zero_metrics",
]
