"""Figures: the confusion matrix shows the right counts, predictions mark exactly the wrong ones
(red) with their confidence, and the learning-rate panel appears when the rate changed."""

from __future__ import annotations

import numpy as np
import pytest

import jaxcnn
from jaxcnn import plots
from jaxcnn.errors import ShapeError


@pytest.fixture(scope="module")
def scripted():
    """40 MNIST test images with scripted probabilities: every 4th prediction is wrong."""
    ds = jaxcnn.data.load("mnist")
    images, labels = ds.x_test[:40], ds.y_test[:40].astype(int)
    rng = np.random.default_rng(0)
    predicted = labels.copy()
    wrong = np.arange(0, 40, 4)
    predicted[wrong] = (labels[wrong] + 1 + rng.integers(0, 8, len(wrong))) % 10
    probs = rng.random((40, 10)) * 0.05
    probs[np.arange(40), predicted] = 0.5 + 0.4 * rng.random(40)
    probs /= probs.sum(1, keepdims=True)
    return images, labels, predicted, probs, wrong


def test_confusion_matrix_counts_and_accuracy(scripted, tmp_path):
    _, labels, predicted, probs, wrong = scripted
    fig = plots.confusion_matrix(labels, probs)  # scores are argmaxed
    ax = fig.axes[0]
    shown = np.asarray(ax.images[0].get_array())
    expected = np.zeros((10, 10), int)
    for t, p in zip(labels, predicted):
        expected[t, p] += 1
    np.testing.assert_array_equal(shown, expected)
    assert "accuracy 0.7500 (30 of 40)" in ax.get_title()
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    for (t, p), text in texts.items():
        assert int(text) == expected[t, p]
    assert all(texts.get((t, p)) == str(expected[t, p]) for t, p in zip(*np.nonzero(expected)))
    normalised = np.asarray(plots.confusion_matrix(labels, predicted, normalize=True, class_names=list("abcdefghij")).axes[0].images[0].get_array())
    np.testing.assert_allclose(normalised.sum(1)[expected.sum(1) > 0], 1.0)
    path = plots.save(fig, tmp_path / "confusion.png")
    import matplotlib.image

    assert matplotlib.image.imread(path).ndim == 3


def test_predictions_mark_exactly_the_wrong_ones_with_their_confidence(scripted):
    images, labels, predicted, probs, wrong = scripted
    fig = plots.predictions(images, labels, probs, count=12, ncols=4)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 12
    for i, ax in enumerate(axes):
        title = ax.title
        is_wrong = i in wrong
        red = title.get_color() == "red"
        assert red == is_wrong
        assert title.get_text().startswith(f"{predicted[i]} ({100 * probs[i, predicted[i]]:.1f}%)")
        assert ("true: " in title.get_text()) == is_wrong
    assert "3 of 12 shown are wrong" in fig._suptitle.get_text()
    only = plots.predictions(images, labels, probs, only_mistakes=True, count=6, class_names=[f"c{k}" for k in range(10)])
    axes = [ax for ax in only.axes if ax.images]
    assert len(axes) == 6
    for ax, i in zip(axes, wrong):
        assert ax.title.get_color() == "red"
        assert ax.title.get_text() == f"c{predicted[i]} ({100 * probs[i, predicted[i]]:.1f}%)\ntrue: c{labels[i]}"
        np.testing.assert_array_equal(ax.images[0].get_array(), images[i][..., 0])
    assert "10 mistakes among 40 images" in only._suptitle.get_text()
    none = plots.predictions(images, predicted, probs, only_mistakes=True)  # the predictions as labels
    assert "no mistakes among 40 images" in none.texts[0].get_text()
    with pytest.raises(ShapeError, match="aligned"):
        plots.predictions(images, labels, probs[:10])


def test_training_curves_show_the_learning_rate_when_it_changes():
    base = {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95], "accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.4, 0.5, 0.6]}
    constant = plots.training_curves({**base, "learning_rate": [0.001] * 3})
    assert len(constant.axes) == 2
    changing = plots.training_curves({**base, "learning_rate": [0.001, 0.0005, 0.00025]})
    assert len(changing.axes) == 3
    lr_ax = changing.axes[2]
    np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), [0.001, 0.0005, 0.00025])
    assert lr_ax.get_yscale() == "log"
    assert len(plots.training_curves({**base, "learning_rate": [0.001] * 3}, learning_rate=True).axes) == 3
    assert len(plots.training_curves(base).axes) == 2  # no rate logged: no panel


def test_report_style_predictions_mark_the_wrong_ones(scripted):
    images, labels, predicted, _, wrong = scripted
    fig = plots.labelled_images(images, labels, range(9), predicted=predicted)
    axes = [ax for ax in fig.axes if ax.images]
    for i, ax in enumerate(axes):
        assert ax.get_title() == f"Actual: {labels[i]}, Predicted: {predicted[i]}"
        assert (ax.title.get_color() == "red") == (i in wrong)
