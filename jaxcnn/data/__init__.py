"""Data sets for jaxcnn: MNIST, Fashion-MNIST and CIFAR-10 as NumPy arrays.

>>> from jaxcnn import data
>>> ds = data.load("mnist")                 # bundled copy, no network needed
>>> ds.x_train.shape, ds.x_train.dtype      # ((60000, 28, 28, 1), dtype('uint8'))
>>> x = data.to_float(ds.x_train)           # float32 in [0, 1]
>>> (x_tr, y_tr), (x_val, y_val) = data.validation_split(x, ds.y_train, 0.2)  # Keras' last 20 %

``load(name, data_dir=None, *, source=None, cache_dir=None, download=None)`` looks in
``data_dir``, then the cache (``cache_dir``/``$JAXCNN_DATA``/``~/.cache/jaxcnn``, plus
``/<name>``), then the bundled MNIST or Debian's Fashion-MNIST, then downloads (hash-checked)
unless offline (``download=False`` or ``JAXCNN_OFFLINE=1``). ``source="tfds"`` reads
TensorFlow Datasets instead. See :mod:`jaxcnn.data.sources`.

Nothing here imports JAX; pooch and tensorflow_datasets are imported only when used.
"""

from __future__ import annotations

from jaxcnn.data.dataset import Dataset, one_hot, to_float, validation_split
from jaxcnn.data.sources import CLASS_NAMES, DATASETS, SOURCES, cache_path, clear_memo, load

__all__ = [
    "Dataset",
    "DATASETS",
    "SOURCES",
    "CLASS_NAMES",
    "load",
    "cache_path",
    "clear_memo",
    "to_float",
    "one_hot",
    "validation_split",
]
