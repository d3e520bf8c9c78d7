"""The original assignment report's numbers, written down once, each with where it came from.

The assignment jaxcnn reproduces was handed in as a report written in R with Keras (a PDF; its
content is summarised in ``docs/assignment.md``). ``python -m experiments.report`` puts our
numbers beside the ones below. Every value is copied from the report's printed output (model
summaries, Keras progress lines, printed R matrices); where the report gives a number only in its
prose, or only approximately, the note says so.

``where`` names the report's section: "1.2" is "section 1.2 of the original report". A
``Reference.noisy`` value comes from a single training run (or, for the search, the best of one
search), so another run of the same code would give another number: the report marks those as
such and compares them with a tolerance, never for equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reference:
    """One number (or matrix) from the original report.

    Attributes:
        value: the value as the report printed it (a number, a string, or a nested list).
        where: the report's section, e.g. ``"1.6"``.
        what: what it is, in a few words.
        noisy: True when it comes from one training run (or the best of one search), so a rerun
            would differ; False for exact quantities (parameter counts, hand computations).
        note: anything a reader needs to weigh it (approximate, prose only, a known slip).
    """

    value: Any
    where: str
    what: str
    noisy: bool = False
    note: str = ""

    @property
    def source(self) -> str:
        """``"the original report, section 1.6"``."""
        return f"the original report, section {self.where}"


@dataclass(frozen=True)
class Layer:
    """One row of a Keras model summary in the original report."""

    kind: str  # Conv2D, MaxPooling2D, Flatten, Dense, LeakyReLU, Dropout, BatchNormalization
    output: tuple[int, ...]  # output shape without the batch axis
    params: int


@dataclass(frozen=True)
class ModelReference:
    """A model summary printed in the original report."""

    name: str  # our registry name (jaxcnn.get_model)
    where: str  # the report's section
    layers: tuple[Layer, ...]
    total: int
    size: str  # as Keras printed it, e.g. "1008.16 KB"
    trainable: int
    non_trainable: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)  # our model's attributes for this summary

    @property
    def source(self) -> str:
        return f"the original report, section {self.where} (its Keras model summary)"


# ----------------------------------------------------------------------------------------------
# Task 1.1 to 1.4: MNIST

MNIST_CNN = ModelReference(
    name="mnist_cnn",
    where="1.2",
    layers=(
        Layer("Conv2D", (26, 26, 32), 320),
        Layer("MaxPooling2D", (13, 13, 32), 0),
        Layer("Conv2D", (11, 11, 32), 9_248),
        Layer("Flatten", (3872,), 0),
        Layer("Dense", (64,), 247_872),
        Layer("Dense", (10,), 650),
    ),
    total=258_090,
    size="1008.16 KB",
    trainable=258_090,
)

#: Section 1.3 explains the first layer's 320 parameters.
MNIST_FIRST_LAYER = Reference(
    "(3 x 3 + 1) x 32 = 320", "1.3", "first convolution's parameters, explained",
    note="the report leaves out the single input channel: (3x3x1 + 1) x 32",
)

MNIST_SETTINGS = {
    "optimizer": "RMSprop (Keras default learning rate 0.001)",
    "loss": "categorical cross-entropy on one-hot labels",
    "batch size": "128",
    "epochs": "10 at most",
    "validation": "validation_split = 0.2 (the last 20% of the training images)",
    "early stopping": "EarlyStopping(monitor = val_loss, patience = 5)",
    "training images": "all 60,000",
}

MNIST_BEST_EPOCH = Reference(
    4, "1.4", "best epoch (early stopping)", noisy=True,
    note="the report says training stopped early with the best results from epoch 4",
)
MNIST_STOPPED_EARLY = Reference(True, "1.4", "stopped early", noisy=True)
#: The report shows its MNIST loss and accuracy only as a figure, which its text does not carry;
#: it also evaluated on the training images by mistake (its x_test is mnist$train$x).
MNIST_METRICS_NOTE = (
    "the original report shows its MNIST loss and accuracy only in a figure (section 1.4), with no "
    "numbers in its text, and its evaluation used the training images by mistake (x_test was set "
    "to mnist$train$x); there is no test accuracy to compare with"
)

# ----------------------------------------------------------------------------------------------
# Task 1.5: random search

SEARCH_SETTINGS = {
    "trials": "10",
    "sampling": "independent uniform draws (R's sample and runif), no pruning",
    "epochs per trial": "10",
    "batch size": "256",
    "validation": "validation_split = 0.2",
    "kernel size k": "integer in 2..10 (both convolutions, k x k)",
    "L2 weight decay": "uniform in [0.0001, 0.1], on the kernels",
    "learning rate": "RMSprop, uniform in [0.0001, 0.01]",
    "best trial": "highest validation accuracy of the last epoch",
    "training images": "all 60,000 (48,000 to train on after the split)",
}

#: The best trial of the original's one search: hyperparameters and last-epoch results (1.5).
SEARCH_BEST = {
    "kernel_size": Reference(7, "1.5", "best trial's kernel size", noisy=True),
    "weight_decay": Reference(0.009164357, "1.5", "best trial's weight decay", noisy=True),
    "learning_rate": Reference(
        0.005879265, "1.5", "best trial's learning rate", noisy=True,
        note="the report's prose says 0.00059; its printed value is 0.005879265",
    ),
    "loss": Reference(0.2912685, "1.5", "best trial's last-epoch training loss (L2 term included)", noisy=True),
    "accuracy": Reference(0.9540833, "1.5", "best trial's last-epoch training accuracy", noisy=True),
    "val_loss": Reference(0.2386363, "1.5", "best trial's last-epoch validation loss", noisy=True),
    "val_accuracy": Reference(0.9706666, "1.5", "best trial's last-epoch validation accuracy", noisy=True),
}
SEARCH_NOISE_NOTE = (
    "the original's best comes from one search of 10 random draws: which hyperparameters were drawn "
    "is luck, and the maximum over trials is an optimistic estimate of any one of them"
)

SEARCH_CNN_K7 = ModelReference(
    name="search_cnn",
    where="1.5",
    layers=(
        Layer("Conv2D", (22, 22, 32), 1_600),
        Layer("MaxPooling2D", (11, 11, 32), 0),
        Layer("Conv2D", (5, 5, 32), 50_208),
        Layer("Flatten", (800,), 0),
        Layer("Dense", (32,), 25_632),
        Layer("Dense", (10,), 330),
    ),
    total=77_770,
    size="303.79 KB",
    trainable=77_770,
    kwargs={"kernel_size": 7},
)

# ----------------------------------------------------------------------------------------------
# Tasks 1.6 to 1.9: CIFAR-10

_SAME_ADAMAX = "Adamax, ExponentialDecay(initial 0.005, decay_steps 1500, decay_rate 0.96, staircase)"
_RMSPROP = "RMSprop (0.001); LearningRateScheduler: unchanged for epochs 0..9, then x exp(-0.1) each epoch"

CIFAR_MODELS: dict[int, ModelReference] = {
    1: ModelReference(
        name="cifar_cnn1",
        where="1.6",
        layers=(
            Layer("Conv2D", (30, 30, 32), 896),
            Layer("MaxPooling2D", (15, 15, 32), 0),
            Layer("Conv2D", (13, 13, 64), 18_496),
            Layer("MaxPooling2D", (6, 6, 64), 0),
            Layer("Conv2D", (4, 4, 64), 36_928),
            Layer("Flatten", (1024,), 0),
            Layer("Dense", (64,), 65_600),
            Layer("Dense", (10,), 650),
        ),
        total=122_570,
        size="478.79 KB",
        trainable=122_570,
    ),
    2: ModelReference(
        name="cifar_cnn2",
        where="1.9",
        layers=(
            Layer("Conv2D", (30, 30, 32), 896),
            Layer("MaxPooling2D", (15, 15, 32), 0),
            Layer("Conv2D", (13, 13, 64), 18_496),
            Layer("MaxPooling2D", (6, 6, 64), 0),
            Layer("Conv2D", (4, 4, 64), 36_928),
            Layer("Conv2D", (2, 2, 64), 36_928),
            Layer("Flatten", (256,), 0),
            Layer("Dense", (256,), 65_792),
            Layer("Dense", (128,), 32_896),
            Layer("Dense", (10,), 1_290),
        ),
        total=193_226,
        size="754.79 KB",
        trainable=193_226,
    ),
    3: ModelReference(
        name="cifar_cnn3",
        where="1.9",
        layers=(
            Layer("Conv2D", (30, 30, 32), 896),
            Layer("MaxPooling2D", (15, 15, 32), 0),
            Layer("Conv2D", (15, 15, 64), 51_264),
            Layer("LeakyReLU", (15, 15, 64), 0),
            Layer("MaxPooling2D", (7, 7, 64), 0),
            Layer("Conv2D", (7, 7, 64), 102_464),
            Layer("LeakyReLU", (7, 7, 64), 0),
            Layer("Conv2D", (7, 7, 64), 102_464),
            Layer("LeakyReLU", (7, 7, 64), 0),
            Layer("Flatten", (3136,), 0),
            Layer("Dense", (256,), 803_072),
            Layer("Dense", (128,), 32_896),
            Layer("Dense", (10,), 1_290),
        ),
        total=1_094_346,
        size="4.17 MB",
        trainable=1_094_346,
    ),
    4: ModelReference(
        name="cifar_cnn4",
        where="1.9",
        layers=(
            Layer("Conv2D", (30, 30, 32), 896),
            Layer("MaxPooling2D", (15, 15, 32), 0),
            Layer("Dropout", (15, 15, 32), 0),
            Layer("Conv2D", (15, 15, 64), 51_264),
            Layer("LeakyReLU", (15, 15, 64), 0),
            Layer("MaxPooling2D", (7, 7, 64), 0),
            Layer("Dropout", (7, 7, 64), 0),
            Layer("Conv2D", (7, 7, 64), 102_464),
            Layer("LeakyReLU", (7, 7, 64), 0),
            Layer("Conv2D", (7, 7, 64), 102_464),
            Layer("LeakyReLU", (7, 7, 64), 0),
            Layer("Flatten", (3136,), 0),
            Layer("Dense", (256,), 803_072),
            Layer("Dropout", (256,), 0),
            Layer("BatchNormalization", (256,), 1_024),
            Layer("Dense", (128,), 32_896),
            Layer("Dropout", (128,), 0),
            Layer("Dense", (10,), 1_290),
        ),
        total=1_095_370,
        size="4.18 MB",
        trainable=1_094_858,
        non_trainable=512,
    ),
}

#: Section 1.8 explains the first CIFAR layer's 896 parameters.
CIFAR_FIRST_LAYER = Reference("(3 x 3 x 3 + 1) x 32 = 896", "1.8", "first convolution's parameters, explained")

CIFAR_SETTINGS: dict[int, dict[str, str]] = {
    1: {
        "optimizer": _SAME_ADAMAX,
        "loss": "sparse categorical cross-entropy from logits",
        "batch size": "128",
        "epochs": "10",
        "validation": "the test split (validation_data), training set shuffled each epoch",
        "early stopping": "none",
        "activations": "none at all (max-pooling is the only non-linearity)",
    },
    2: {
        "optimizer": _SAME_ADAMAX,
        "loss": "sparse categorical cross-entropy from logits",
        "batch size": "128",
        "epochs": "15 at most",
        "validation": "the test split",
        "early stopping": "EarlyStopping(monitor = val_loss, patience = 5)",
        "activations": "ReLU on the two hidden dense layers only",
    },
    3: {
        "optimizer": _RMSPROP,
        "loss": "sparse categorical cross-entropy from logits",
        "batch size": "512",
        "epochs": "20 at most",
        "validation": "the test split",
        "early stopping": "EarlyStopping(patience = 5) on val_loss",
        "activations": "LeakyReLU(0.1) after the three 5x5 'same' convolutions, ReLU on the dense layers",
    },
    4: {
        "optimizer": _RMSPROP,
        "loss": "sparse categorical cross-entropy from logits, plus the L2 terms",
        "batch size": "512",
        "epochs": "20 at most",
        "validation": "the test split",
        "early stopping": "EarlyStopping(patience = 5) on val_loss",
        "regularisation": ("L2(0.01) on every convolution and hidden dense kernel; Dropout 0.25, 0.25, 0.25, 0.5; "
                           "BatchNorm after the first dense layer"),
    },
}

#: What the report printed after training each CIFAR-10 model (Keras's last progress line, or prose).
CIFAR_RESULTS: dict[int, dict[str, Reference]] = {
    1: {
        "epochs_run": Reference(10, "1.6", "epochs run", noisy=False, note="no early stopping: all 10 epochs"),
        "loss": Reference(0.9227, "1.6", "epoch 10 training loss", noisy=True),
        "accuracy": Reference(0.6837, "1.6", "epoch 10 training accuracy", noisy=True),
        "val_loss": Reference(1.0588, "1.6", "epoch 10 loss on the test split", noisy=True),
        "val_accuracy": Reference(0.6481, "1.6", "epoch 10 accuracy on the test split", noisy=True),
        "epoch_time_s": Reference(23, "1.6", "seconds per epoch (391 steps at 60 ms)", noisy=True,
                                  note="the report's own machine, not known"),
    },
    2: {
        "epochs_run": Reference(13, "1.9", "epochs run (stopped early)", noisy=True,
                                note="the report: 'it ended at epoch 13 due to the early stopping'"),
        "val_accuracy": Reference(0.71, "1.9", "accuracy on the test split", noisy=True,
                                  note="given only in prose, to two decimals ('improved slightly to 0.71')"),
    },
    3: {
        "stopped_early": Reference(True, "1.9", "stopped early", noisy=True, note="the epoch is not given"),
        "loss": Reference(0.6635, "1.9", "last epoch's training loss", noisy=True),
        "accuracy": Reference(0.7688, "1.9", "last epoch's training accuracy", noisy=True),
        "val_loss": Reference(0.8182, "1.9", "last epoch's loss on the test split", noisy=True),
        "val_accuracy": Reference(0.7230, "1.9", "last epoch's accuracy on the test split", noisy=True),
        "epoch_time_s": Reference(61, "1.9", "seconds per epoch (98 steps at 620 ms)", noisy=True,
                                  note="the report's own machine, not known"),
    },
    4: {
        "stopped_early": Reference(False, "1.9", "stopped early", noisy=True, note="'This did not stop early': all 20 epochs"),
        "val_accuracy": Reference(0.7628, "1.9", "accuracy on the test split", noisy=True,
                                  note="given only in prose"),
    },
}

#: The report's Figure 4 (1.7): training images 13 and 37 in R's 1-based numbering.
CIFAR_FIGURE4 = Reference(("horse", "cat"), "1.7", "Figure 4: training images 13 and 37 (1-based)")

# ----------------------------------------------------------------------------------------------
# Task 2: a convolutional layer by hand

MANUAL = {
    "patch": Reference(
        [[56, 250, 116, 0], [0, 240, 144, 0], [0, 198, 150, 0], [0, 143, 241, 0]], "2.2",
        "the 4x4 patch X: rows 12..15, columns 12..15 (1-based) of the report's MNIST '4'",
    ),
    "kernel": Reference([[-0.5, -0.5, -0.5], [1, 1, 1], [-0.5, -0.5, -0.5]], "2.2", "the 3x3 kernel K"),
    "convolution": Reference([[-1, 27], [-36, -36]], "2.2", "convolution(X, K): valid, stride 1"),
    "conv_layer": Reference([[99, 127], [64, 64]], "2.4", "convolutional_layer(X, K, b = 100, ReLU)"),
    "maxpool": Reference([[250, 144], [198, 241]], "2.7", "maxpool_layer(X): 2x2 windows, stride 2"),
}

MANUAL_FIGURES = {
    "fig7": Reference("Figure 7", "2.3", "convolution of the whole digit with K"),
    "fig8": Reference("Figure 8", "2.5", "the layer with b = -150 and ReLU: the vertical strokes"),
    "fig9": Reference("Figure 9", "2.6", "the same with the transposed kernel: the horizontal stroke"),
    "fig10": Reference("Figure 10", "2.8", "max-pool of the layer with b = -320: the vertical bars' outline"),
}
