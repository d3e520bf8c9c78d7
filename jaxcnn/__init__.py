"""jaxcnn: a JAX-native CNN framework.

Build, train, tune, explain and plot the convolutional networks of a Keras assignment in JAX:

>>> import jaxcnn
>>> ds = jaxcnn.data.load("mnist")                                  # bundled, offline
>>> model = jaxcnn.get_model("mnist_cnn")
>>> print(jaxcnn.summary(model, (28, 28, 1)))                       # 258,090 params, explained
>>> state, history = jaxcnn.fit(model, jaxcnn.data.to_float(ds.x_train), ds.y_train,
...                             epochs=10, batch_size=128, validation_split=0.2,
...                             callbacks=[jaxcnn.EarlyStopping(patience=5)])
>>> jaxcnn.evaluate(state, jaxcnn.data.to_float(ds.x_test), ds.y_test)

Modules: ``data`` (MNIST, Fashion-MNIST, CIFAR-10), ``layers``, ``models`` (the registry),
``optim`` (Keras-parity optimizers), ``train`` (steps, fit), ``callbacks``, ``plots``,
``manual`` (the hand-written convolution in pure lax), ``search`` (random search).
"""

from __future__ import annotations

import importlib
from typing import Any

from jaxcnn import callbacks, errors, layers, models, optim, train
from jaxcnn.callbacks import EarlyStopping, LearningRateScheduler
from jaxcnn.models import get_model
from jaxcnn.summary import summary
from jaxcnn.train import TrainState, create_train_state, evaluate, fit, predict, train_step, eval_step

__version__ = "0.1.0"

_LAZY = {"data", "plots", "manual", "search", "checkpoint"}


def __getattr__(name: str) -> Any:
    # Submodules with heavier imports (matplotlib, orbax, data files) load on first use.
    if name in _LAZY:
        return importlib.import_module(f"jaxcnn.{name}")
    raise AttributeError(f"module 'jaxcnn' has no attribute {name!r}")


__all__ = [
    "EarlyStopping", "LearningRateScheduler", "TrainState", "callbacks", "create_train_state", "errors",
    "eval_step", "evaluate", "fit", "get_model", "layers", "models", "optim", "predict", "summary", "train",
    "train_step", *sorted(_LAZY),
]
