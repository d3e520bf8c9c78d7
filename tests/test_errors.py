"""Every row of docs/errors.md: a bad input and the message it gets, on the public API.

Each check runs before anything is compiled (or, for the command line, before a run directory is
made), except the NaN loss, which can only be seen while training.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import jaxcnn
from experiments import common, mnist
from jaxcnn import data
from jaxcnn.errors import CheckpointError, ConfigError, DataError, JaxcnnError, ShapeError, TrainingError

QUIET = ["--verbose", "0"]


@pytest.fixture(scope="module")
def xy():
    return np.zeros((64, 28, 28, 1), np.float32), np.zeros(64, np.int32)


@pytest.fixture(scope="module")
def model():
    return jaxcnn.get_model("mnist_cnn")


@pytest.fixture(scope="module")
def state(model):
    return jaxcnn.create_train_state(model, (28, 28, 1))


# --------------------------------------------------------------------------- images and labels


def test_images_without_channel_axis(model, state, xy):
    x, y = xy
    with pytest.raises(ShapeError, match=r"x has shape \(64, 28, 28\); the model takes a batch of images \(N, H, W, C\)"):
        jaxcnn.fit(model, x[..., 0], y, verbose=0)
    with pytest.raises(ShapeError, match=r"x has shape \(64, 28, 28\) but the model takes \(N, 28, 28, 1\); add the channel axis with x\[\.\.\., None\]"):
        jaxcnn.fit(state, x[..., 0], y, verbose=0)


def test_images_with_wrong_channel_count_or_size(state, xy):
    _, y = xy
    with pytest.raises(ShapeError, match=r"x has shape \(64, 28, 28, 3\) but the model takes images of shape \(N, 28, 28, 1\)"):
        jaxcnn.fit(state, np.zeros((64, 28, 28, 3), np.float32), y, verbose=0)
    with pytest.raises(ShapeError, match=r"x has shape \(64, 32, 32, 1\) but the model takes images of shape \(N, 28, 28, 1\)"):
        jaxcnn.evaluate(state, np.zeros((64, 32, 32, 1), np.float32), y)


def test_images_with_integer_dtype(state, xy):
    x, y = xy
    with pytest.raises(ShapeError, match=r"x has dtype uint8; the model takes floating-point images\. Scale them to \[0, 1\] first, e\.g\. jaxcnn\.data\.to_float\(x\)"):
        jaxcnn.fit(state, x.astype(np.uint8), y, verbose=0)


def test_labels_out_of_range_or_miscounted(state, xy):
    x, y = xy
    with pytest.raises(ShapeError, match=r"y holds label 10 at index 0, outside 0\.\.9 \(64 labels out of range\); the model has 10 classes"):
        jaxcnn.fit(state, x, y + 10, verbose=0)
    with pytest.raises(ShapeError, match=r"y holds label -1 at index 3, outside 0\.\.9 \(1 label out of range\)"):
        jaxcnn.fit(state, x, np.where(np.arange(64) == 3, -1, y), verbose=0)
    with pytest.raises(ShapeError, match=r"y has 63 labels for 64 images; they must match one to one"):
        jaxcnn.fit(state, x, y[:63], verbose=0)


def test_empty_dataset(state, xy):
    x, y = xy
    with pytest.raises(ShapeError, match=r"x is empty: there is nothing to train or evaluate on"):
        jaxcnn.fit(state, x[:0], y[:0], verbose=0)


def test_batch_larger_than_the_data_trains_on_all_of_it_as_keras(state, xy):
    x, y = xy
    # Keras takes one batch of all the data (counted after the validation split); so does fit.
    result = jaxcnn.fit(state, x[:16], y[:16], batch_size=65, validation_split=0.5, verbose=0)
    assert result.history.params["batch_size"] == 8 and result.history.params["samples"] == 8
    assert int(result.state.step) == int(state.step) + 1 and np.isfinite(result.history["loss"][0])


def test_more_devices_than_there_are(state, xy):
    x, y = xy
    n = jax.local_device_count()
    with pytest.raises(ConfigError, match=rf"devices={n + 1} but this process sees {n} device\(s\); on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={n + 1}"):
        jaxcnn.fit(state, x, y, devices=n + 1, verbose=0)
    # (A batch that does not divide over the devices: tests/test_parallel.py, which has 4.)


# --------------------------------------------------------------------------- models and settings


def test_kernel_too_big_for_its_input(xy):
    x, y = xy
    # search_cnn with k = 10: the second conv sees a 9x9 input (28 - 10 + 1 = 19, pooled 9).
    with pytest.raises(ShapeError, match=r"conv2d_1: kernel 10x10 does not fit its 9x9 input \(valid padding would leave a 0x0 output\); use a kernel of at most 9x9"):
        jaxcnn.fit(jaxcnn.get_model("search_cnn", kernel_size=10), x, y, verbose=0)


def test_non_positive_learning_rate(model, xy, tmp_path):
    x, y = xy
    with pytest.raises(ConfigError, match=r"learning rate must be a finite number >= 0, got -0.001"):
        jaxcnn.fit(model, x, y, learning_rate=-0.001, verbose=0)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"--learning-rate 0 would train nothing \(the weights stay as they are\); give a positive"):
        mnist.main(["--learning-rate", "0", "--out", str(out), *QUIET])
    assert not out.exists()  # refused before any run directory is made


def test_unknown_model_optimizer_or_dataset(model, xy):
    x, y = xy
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'; known models: mnist_cnn, search_cnn, cifar_cnn1"):
        jaxcnn.get_model("resnet")
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adagrad'; use one of rmsprop, adamax, adam, adamw, sgd"):
        jaxcnn.fit(model, x, y, optimizer="adagrad", verbose=0)
    with pytest.raises(ConfigError, match=r"Unknown data set 'imagenet'\. Known data sets: mnist, fashion_mnist, cifar10"):
        data.load("imagenet")


def test_unknown_names_in_a_run_config(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'; known models: mnist_cnn"):
        common.run(common.RunConfig(model="resnet", out=str(out), verbose=0))
    with pytest.raises(ConfigError, match=r"unknown data set 'imagenet'; known data sets: mnist, fashion_mnist, cifar10"):
        common.run(common.RunConfig(dataset="imagenet", out=str(out), verbose=0))
    assert not out.exists()


def test_bad_numbers_on_the_command_line(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"--epochs must be a positive integer, got 0"):
        mnist.main(["--epochs", "0", "--out", str(out), *QUIET])
    with pytest.raises(ConfigError, match=r"--limit must be positive, got -5"):
        mnist.main(["--limit", "-5", "--out", str(out), *QUIET])
    with pytest.raises(ConfigError, match=r"--devices must be 'auto', 'all' or a number of devices, got 'two'"):
        mnist.main(["--devices", "two", "--out", str(out), *QUIET])
    assert not out.exists()


# --------------------------------------------------------------------------- files


def test_corrupt_data_file(tmp_path):
    good = Path(data.__file__).resolve().parent.parent / "_data" / "mnist.npz"
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "mnist.npz").write_bytes(good.read_bytes()[:1000])  # truncated
    data.clear_memo()
    with pytest.raises(DataError, match=r"mnist\.npz is truncated or corrupt \(BadZipFile: .*\)\. Delete it and copy or download it again"):
        data.load("mnist", folder)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"mnist\.npz is truncated or corrupt"):
        mnist.main(["--data-dir", str(folder), "--out", str(out), *QUIET])
    assert not out.exists()


def test_output_directory_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"cannot write to --out .*a-file/run: .*; choose a writable directory"):
        mnist.main(["--limit", "200", "--out", str(blocker / "run"), *QUIET])
    with pytest.raises(ConfigError, match=r"--out .*a-file exists and is not a directory; choose another --out"):
        mnist.main(["--limit", "200", "--out", str(blocker), *QUIET])


def test_output_directory_that_already_holds_results(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"--out .*run already holds files; choose a new directory so that no result is overwritten, or add --resume"):
        mnist.main(["--limit", "200", "--out", str(out), *QUIET])
    assert (out / "metrics.json").read_text() == "{}"


def test_checkpoint_that_does_not_match(tmp_path, state):
    # Details, for orbax checkpoints too: tests/test_checkpoint.py.
    with pytest.raises(CheckpointError, match=r"model\.json is missing; point to a run directory written by an experiment"):
        jaxcnn.checkpoint.load(tmp_path)


# --------------------------------------------------------------------------- while training


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    out = tmp_path / "run"
    argv = ["--limit", "300", "--epochs", "2", "--batch-size", "32", "--learning-rate", "1e12", "--out", str(out), *QUIET]
    with pytest.raises(TrainingError, match=r"the loss became NaN or infinite at epoch 1, step 2 \(global step\).*no checkpoint was written before it; the history so far is in .*history\.json"):
        mnist.main(argv)
    assert (out / "history.json").is_file()
    # Exit status 2 and a one-line message from the shell, and the checkpoint kept when the NaN
    # comes later: tests/test_checkpoint.py::test_nan_loss_keeps_last_good_checkpoint_and_history.


def test_every_error_is_a_jaxcnn_error_and_a_builtin():
    # main_guard turns JaxcnnError into exit status 2; callers may also catch ValueError/RuntimeError.
    for cls, base in ((ShapeError, ValueError), (ConfigError, ValueError), (DataError, ValueError),
                      (CheckpointError, ValueError), (TrainingError, RuntimeError)):
        assert issubclass(cls, JaxcnnError) and issubclass(cls, base)
