"""Plots and host metrics as a user meets them (probe 20): a run's history.json plots, the report's
rows follow scikit-learn, label errors say what to do, channels-first and 0..255 float images, and
saving into a folder that does not exist yet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxcnn import metrics, plots
from jaxcnn.errors import ConfigError, ShapeError
from jaxcnn.train import History


def _rows(report: str) -> dict[str, list[str]]:
    return {line.split()[0] if not line.strip().startswith(("macro", "weighted")) else " ".join(line.split()[:2]):
            line.split() for line in report.splitlines()[2:] if line.strip()}


# -- 1. training_curves takes History.to_dict() (a run's history.json) ---------------------------


def test_training_curves_takes_a_run_history_json(tmp_path):
    h = History()
    for e, logs in enumerate([{"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1}, {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.9}]):
        h.append(e, logs)
    (tmp_path / "history.json").write_text(json.dumps(h.to_dict()))
    fig = plots.training_curves(json.load(open(tmp_path / "history.json")))
    loss_ax = fig.axes[0]
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [1.0, 0.5])
    np.testing.assert_allclose(loss_ax.lines[0].get_xdata(), [1, 2])
    assert any("best epoch (2)" in t.get_text() for t in loss_ax.get_legend().get_texts())


def test_training_curves_to_dict_keeps_its_epoch_numbers():
    d = {"epoch": [3, 4], "history": {"loss": [0.4, 0.3]}, "params": {}}
    fig = plots.training_curves(d)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [4, 5])  # a resumed run: epochs 4 and 5


def test_training_curves_refuses_an_unknown_mapping_saying_what_it_takes():
    with pytest.raises(ConfigError) as err:
        plots.training_curves({"foo": [1.0, 2.0]})
    msg = str(err.value)
    assert "\n" not in msg and "'foo'" in msg and "History.to_dict()" in msg and "{'loss': [...], ...}" in msg
    assert "holds no epoch" not in msg
    # an empty history still says why
    with pytest.raises(ConfigError, match="the history holds no epoch"):
        plots.training_curves({"epoch": [], "history": {}, "params": {}})


# -- 2. classification_report's rows follow scikit-learn -----------------------------------------


def test_report_rows_are_the_classes_seen_as_sklearn_unique_labels():
    rows = _rows(metrics.classification_report(y_true=[0, 2, 0, 2], y_pred=[0, 2, 0, 2]))
    assert "1" not in rows and set(rows) == {"0", "2", "accuracy", "macro avg", "weighted avg"}
    assert rows["macro avg"][2:] == ["1.000", "1.000", "1.000", "4"]
    rows = _rows(metrics.classification_report([0, 12], [0, 12]))
    assert set(rows) == {"0", "12", "accuracy", "macro avg", "weighted avg"}
    assert rows["macro avg"][2:5] == ["1.000"] * 3
    # a class only predicted has a row (support 0), as scikit-learn's union of y_true and y_pred
    rows = _rows(metrics.classification_report([0, 0, 5], [0, 3, 5]))
    assert rows["3"][1:] == ["0.000", "0.000", "0.000", "0"]
    # macro over {0, 3, 5}: precision (1 + 0 + 1) / 3, recall (0.5 + 0 + 1) / 3
    assert rows["macro avg"][2:4] == ["0.667", "0.500"]


def test_report_with_class_names_keeps_every_named_class():
    # as sklearn's classification_report(labels=range(3), target_names=names): all rows kept
    rows = _rows(metrics.classification_report([0, 2, 0, 2], [0, 2, 0, 2], class_names=["cat", "dog", "eel"]))
    assert rows["dog"][1:] == ["0.000", "0.000", "0.000", "0"]
    assert rows["macro avg"][2:5] == ["0.667"] * 3


def test_report_scores_and_weights_still_work_without_names():
    y = np.array([1, 1, 3])
    rows = _rows(metrics.classification_report(y, np.eye(4)[[1, 3, 3]], sample_weight=[1.0, 1.0, 2.0]))
    assert set(rows) == {"1", "3", "accuracy", "macro avg", "weighted avg"}
    assert rows["3"][1:] == ["0.667", "1.000", "0.800", "2"]


# -- 3. label errors say what to do --------------------------------------------------------------


def test_a_negative_label_says_labels_start_at_zero():
    for call in (lambda: metrics.confusion_matrix([-1, 0], [0, 0], 10), lambda: metrics.confusion_matrix([0, 0], [0, -2]),
                 lambda: metrics.classification_report([-1, 0], [0, 0]),
                 lambda: metrics.classification_report([-1, 0], [0, 0], ["a", "b"])):
        with pytest.raises(ShapeError) as err:
            call()
        msg = str(err.value)
        assert "0 or more" in msg and "num_classes" not in msg and "\n" not in msg


def test_report_with_too_few_names_asks_for_a_name_per_class():
    with pytest.raises(ShapeError) as err:
        metrics.classification_report([0, 1, 4], [0, 1, 1], ["a", "b"])
    msg = str(err.value)
    assert "num_classes" not in msg and "5 names" in msg and "fix the labels" in msg and "\n" not in msg
    # confusion_matrix, which has num_classes, keeps its advice
    with pytest.raises(ShapeError, match=r"y_pred holds class 5, outside 0..2; pass num_classes=6 or fix the labels"):
        metrics.confusion_matrix([0, 1, 2], [0, 1, 5], 3)


# -- 4. image layouts and 0..255 floats ----------------------------------------------------------


def test_channels_first_images_say_to_transpose():
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(ShapeError) as err:
        plots.predictions(x, [0, 1], np.eye(2))
    msg = str(err.value)
    assert "transpose(0, 2, 3, 1)" in msg and "\n" not in msg
    with pytest.raises(ShapeError, match=r"transpose\(0, 2, 3, 1\)"):
        plots.image_grid(np.zeros((2, 1, 28, 28), np.uint8))
    with pytest.raises(ShapeError, match=r"transpose\(0, 2, 3, 1\)"):
        plots.explanations(x, np.zeros((2, 32, 32)))
    assert plots.image_grid(x.transpose(0, 2, 3, 1)).axes  # channels-last draws


def test_float_images_in_0_255_are_scaled_not_clipped_to_white():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    drawn = plots.image_grid(u8.astype(np.float32)).axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn), u8[0] / 255.0, rtol=1e-6)
    gray = plots.image_grid(u8[..., 0].astype(np.float64)).axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(gray), u8[0, ..., 0] / 255.0, rtol=1e-6)
    # 0..1 floats are drawn as they are
    unit = u8.astype(np.float32) / 255
    np.testing.assert_allclose(np.asarray(plots.image_grid(unit).axes[0].images[0].get_array()), unit[0], rtol=1e-6)


# -- 5. save creates the folder ------------------------------------------------------------------


def test_save_creates_missing_folders(tmp_path):
    fig = plots.training_curves({"loss": [1.0, 0.5]})
    path = tmp_path / "missing_dir" / "deeper" / "x.png"
    assert plots.save(fig, path) == str(path)
    assert path.stat().st_size > 0


def test_confusion_matrix_plot_with_too_few_names_asks_for_a_name_per_class():
    with pytest.raises(ShapeError) as err:
        plots.confusion_matrix([0, 1, 4], [0, 1, 1], class_names=["a", "b"])
    assert "5 names" in str(err.value) and "num_classes" not in str(err.value)
    with pytest.raises(ConfigError, match="one name per class"):
        plots.confusion_matrix([0, 1, 4], [0, 1, 1], class_names=["a", "b"], num_classes=5)
    assert plots.confusion_matrix([0, 1, 1], [0, 1, 1], class_names=["a", "b", "c"]).axes  # unseen class c: a row of 0
