"""``python -m experiments.report``: the --quick report built once from a fresh directory and parsed
(every section, table row and embedded image), reuse of finished runs, the CIFAR-10 sections with
the data present (tiny files in the official binary format, runs reused), a failing task, the
comparison rules, the reference values' own arithmetic, and a headless Chromium render.

Cost: the --quick report, built once for the module (about 75 s of CPU time on 2 cores, mostly
compiling: the MNIST run and two search trials); everything else reuses it or takes a second."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from experiments import report
from experiments import report_reference as ref

SECTION_IDS = ["mnist", "search", "cifar1", "cifar2", "cifar3", "cifar4", "manual"]
CHROMIUM = Path("/usr/bin/chromium")


class Page(HTMLParser):
    """The report's structure: sections, their tables (caption, rows) and images."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.header_tables: list[dict] = []
        self.current: dict | None = None
        self.table: dict | None = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.in_caption = False
        self.external: list[str] = []
        self.images_outside: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = self.sections.setdefault(a["id"], {"tables": [], "images": [], "text": []})
        elif tag == "table":
            self.table = {"caption": "", "rows": [], "classes": [], "kind": a.get("class", "")}
        elif tag == "caption":
            self.in_caption = True
        elif tag == "tr":
            self.row, self.row_class = [], a.get("class", "")
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "img":
            (self.current["images"] if self.current is not None else self.images_outside).append(a)
        elif tag in ("script", "link", "iframe"):
            self.external.append(tag)
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "file:", "//")):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None
        elif tag == "caption":
            self.in_caption = False
        elif tag in ("td", "th") and self.row is not None:
            self.row.append("".join(self.cell or []).strip())
            self.cell = None
        elif tag == "tr" and self.table is not None:
            if self.row and not all(c == "" for c in self.row):
                self.table["rows"].append(self.row)
                self.table["classes"].append(self.row_class)
            self.row = None
        elif tag == "table" and self.table is not None:
            self.table["rows"] = self.table["rows"][1:]  # the header
            self.table["classes"] = self.table["classes"][1:]
            (self.current["tables"] if self.current is not None else self.header_tables).append(self.table)
            self.table = None

    def handle_data(self, data):
        if self.in_caption and self.table is not None:
            self.table["caption"] += data
        elif self.cell is not None:
            self.cell.append(data)
        if self.current is not None:
            self.current["text"].append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def compare_rows(section: dict) -> dict[str, list[str]]:
    """quantity -> row of the section's comparison table(s)."""
    return {row[0]: row for t in section["tables"] if t["kind"] == "compare" for row in t["rows"]}


@pytest.fixture(scope="module")
def quick():
    """The --quick report, built once into a fresh directory, offline with an empty data cache
    (so no CIFAR-10). RBG keys: the same outputs to check for about half the compile time. A
    directory of its own (not pytest's tmp_path, which a concurrent pytest session may rotate
    away during the minute or two this takes)."""
    import tempfile

    import jax

    from jaxcnn import data

    with tempfile.TemporaryDirectory(prefix="jaxcnn-report-") as tmp:
        root = Path(tmp)
        with pytest.MonkeyPatch.context() as mp, jax.default_prng_impl("rbg"):
            mp.setenv("JAXCNN_DATA", str(root / "cache"))
            mp.setenv("JAXCNN_OFFLINE", "1")
            data.clear_memo()
            result = report.main(["--quick", "--out", str(root / "out")])
        data.clear_memo()
        yield result


@pytest.mark.slow
def test_quick_report_sections_tables_and_images(quick):
    index = json.loads((quick["html"].parent / "report-runs.json").read_text())
    assert quick["failed"] == 0, index
    assert [r.status for r in quick["results"]] == ["trained", "trained"] + ["missing data"] * 4 + ["trained"]
    page = parse(quick["html"])
    assert list(page.sections) == SECTION_IDS
    assert page.external == [], "the report must be self-contained"
    overview = page.header_tables[0]
    assert overview["caption"] == "Overview" and len(overview["rows"]) == len(SECTION_IDS)

    # Every image is embedded and decodes to a PNG; every expected figure is there.
    files = {}
    for sid, sec in page.sections.items():
        for img in sec["images"]:
            assert img["src"].startswith("data:image/png;base64,")
            assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
            assert img.get("alt")
        files[sid] = [img["data-file"] for img in sec["images"]]
    assert files["mnist"] == ["digits.png", "history.png", "predictions.png"]
    assert files["search"][:2] == ["history.png", "params.png"]  # then the optional ones
    assert files["search"][-1] == "random_search-best-predictions.png"
    assert files["manual"] == list(report.MANUAL_FILES.values())
    for n in (1, 2, 3, 4):
        assert files[f"cifar{n}"] == []

    # Every row of every comparison table, with its verdict.
    mnist = compare_rows(page.sections["mnist"])
    layers = [r for q, r in mnist.items() if q.startswith(("conv2d", "max_pooling2d", "flatten", "dense"))]
    assert [r[2] for r in layers] == [f"{layer.params:,}" for layer in ref.MNIST_CNN.layers]
    assert all(r[1] == r[2] and r[3] == "match" for r in layers), layers
    assert mnist["total parameters"][1:4] == ["258,090", "258,090", "match"]
    assert mnist["size as float32"][1:4] == ["1008.16 KB", "1008.16 KB", "match"]
    assert mnist["first layer's parameters explained (1.3)"][3] == "match"
    assert "(3x3x1 + 1) x 32 = 320" in mnist["first layer's parameters explained (1.3)"][5]
    assert mnist["best epoch (lowest val_loss)"][3] == "not comparable (quick run)"
    assert float(mnist["test accuracy (10,000 test images)"][1]) > 0.1
    assert "time" in mnist
    assert len(mnist) == 1 + 6 + 2 + 7

    search = compare_rows(page.sections["search"])
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert search[f"best trial's last-epoch {key}" + (" (L2 included)" if key == "loss" else "")][3] == "not comparable (quick run)"
    assert search["best trial's kernel size k"][2] == "7"
    assert search["k = 7 model: total parameters"][1:4] == ["77,770", "77,770", "match"]
    assert "one search of 10 random draws" in search["best trial's last-epoch val_accuracy"][5]
    assert "mean of 2 runs" in search["val_accuracy over our valid trials"][1]
    assert search["invalid trials (kernel too large)"][1] == "2"
    assert 0.0 < float(search["best trial's test accuracy (experiments.predict)"][1]) <= 1.0
    trials = next(t for t in page.sections["search"]["tables"] if t["caption"] == "Every trial (last epoch)")
    assert [r[0] for r in trials["rows"]] == ["1", "2", "3"] and trials["rows"][1][4] == "invalid"

    for n in (1, 2, 3, 4):
        sec = page.sections[f"cifar{n}"]
        rows = compare_rows(sec)
        assert rows["total parameters"][1:4] == [f"{ref.CIFAR_MODELS[n].total:,}"] * 2 + ["match"]
        text = " ".join(sec["text"])
        assert "CIFAR-10 was not found" in text and "--data-dir" in text and "--download" in text
        assert f"python -m experiments.report --quick --out {quick['html'].parent}" in text
        assert all(r[3] in ("match", "no result", "info") for r in rows.values()), rows
    assert compare_rows(page.sections["cifar4"])["non-trainable parameters"][1:4] == ["512", "512", "match"]
    assert compare_rows(page.sections["cifar1"])["first layer's parameters explained (1.8)"][3] == "match"

    manual = compare_rows(page.sections["manual"])
    for r in ref.MANUAL.values():
        assert manual[r.what][3] == "match", manual[r.what]
    assert manual[ref.MANUAL["convolution"].what][1] == "[[-1, 27], [-36, -36]]"
    assert manual["lax functions agree with plain-loop references"][1] == "yes"


@pytest.mark.slow
def test_markdown_twin_links_every_figure(quick):
    md = quick["markdown"].read_text()
    page = parse(quick["html"])
    for sid, sec in page.sections.items():
        assert f'<a id="{sid}"></a>' in md
    links = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) == sum(len(s["images"]) for s in page.sections.values())
    for link in links:
        assert not os.path.isabs(link) and (quick["markdown"].parent / link).is_file(), link
    assert "| total parameters | 258,090 | 258,090 | match |" in md


@pytest.mark.slow
def test_finished_runs_are_found_again_and_other_settings_are_not(quick):
    out = quick["html"].parent
    for spec, result in zip(report.plan(quick=True), quick["results"]):
        if result.status == "missing data":
            continue
        assert report.find_run(spec, [out], set()) == (result.path, True), spec.task
    mnist = report.plan(quick=True)[0]
    mnist.expect["epochs"] = 3
    assert report.find_run(mnist, [out], set()) == (None, False)
    # Not under --out but under a --reuse folder: found too.
    assert report.find_run(report.plan(quick=True)[0], [out / "elsewhere", out], set())[0] == out / "mnist"


# ----------------------------------------------------------------------------------------------
# CIFAR-10 present: tiny files in the official binary format, the runs already there (reused)

BIN_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def write_cifar(folder: Path, per_batch: int = 8, n_test: int = 10) -> None:
    """The six binary batches: each record one label byte, then the R, G and B planes of 32x32."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in BIN_NAMES:
        n = n_test if name == "test_batch.bin" else per_batch
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], planes.reshape(n, -1)], axis=1).tobytes())


def fake_cifar_run(path: Path, spec: report.RunSpec, figures_from: Path, val_acc: float, skip: tuple[str, ...] = ()) -> None:
    """A finished run of ``spec`` as experiments.cifar10 writes it (the files the report reads)."""
    path.mkdir(parents=True)
    config = {"name": "cifar10", "optimizer": "adamax", "validation_split": 0.0, "lr_decay": [1500, 0.96],
              "lr_schedule_after": None, "out": str(path), **spec.expect}
    (path / "config.json").write_text(json.dumps(config))
    last = {"loss": 2.1, "accuracy": 0.2, "val_loss": 2.2, "val_accuracy": val_acc}
    metrics = {"test_loss": 2.2, "test_accuracy": val_acc, "epochs_run": 1, "best_epoch": 1, "wall_time_s": 12.5,
               "steady_epoch_time_s": 3.0, "last_epoch": last}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "history.json").write_text(json.dumps({"epoch": [0], "history": {k: [v] for k, v in last.items()}}))
    for name in ("figure4.png", "digits.png", "history.png", "predictions.png"):
        if name not in skip:
            shutil.copy(figures_from / ("digits.png" if name == "figure4.png" else name), path / name)


@pytest.mark.slow
def test_cifar_sections_with_the_data_present(quick, tmp_path, monkeypatch, isolated_data):
    """With CIFAR-10 found and finished runs of every task to reuse, nothing trains and the
    CIFAR-10 sections fill in; a run missing a figure says so; two seeds show their spread."""
    from jaxcnn.data import cifar10

    # The loader checks each batch holds its official 10,000 records: the tiny set's counts instead.
    monkeypatch.setattr(cifar10, "RECORDS", {**{n: 8 for n in BIN_NAMES[:5]}, "test_batch.bin": 10})
    first = quick["html"].parent
    cifar = tmp_path / "cifar"
    write_cifar(cifar)
    out = tmp_path / "out"
    specs = [s for s in report.plan(quick=True, seeds=2, data_dir=str(cifar)) if s.task.startswith("cifar")]
    for i, spec in enumerate(specs):
        skip = ("predictions.png",) if spec.task == "cifar2" else ()
        fake_cifar_run(out / spec.dirname, spec, first / "mnist", val_acc=0.30 + 0.02 * i, skip=skip)
    trained = []
    monkeypatch.setattr(report, "call_main", lambda module, argv, log, verbose: trained.append(module) or ({}, ""))
    result = report.main(["--quick", "--seeds", "2", "--out", str(out), "--data-dir", str(cifar), "--reuse", str(first)])
    # The MNIST run with seed 1 is the only one without a finished run to reuse (predict reloads
    # the search's best model for the new report).
    assert [m for m in trained if m != "experiments.predict"] == ["experiments.mnist"]
    statuses = {(r.spec.task, r.spec.seed): r.status for r in result["results"]}
    assert all(statuses[(f"cifar{n}", s)] == "reused" for n in (1, 2, 3, 4) for s in (0, 1))
    assert statuses[("search", 0)] == statuses[("manual", 0)] == "reused"

    page = parse(result["html"])
    c1 = page.sections["cifar1"]
    assert [img["data-file"] for img in c1["images"]] == ["figure4.png", "digits.png", "history.png", "predictions.png"]
    rows = compare_rows(c1)
    acc = rows["last epoch's accuracy on the test split"]
    assert acc[1].startswith("0.3100 (mean of 2 runs; sd 0.0141, 0.3000 to 0.3200)")
    assert acc[2] == "0.6481" and acc[3] == "not comparable (quick run)" and acc[4] == "-0.3381"
    assert "one run in the original" in acc[5]
    assert rows["seconds per epoch"][3] == "not comparable (other hardware)"
    assert "2 runs (seeds 0 to 1)" in " ".join(c1["text"])
    c2 = page.sections["cifar2"]
    assert "predictions.png" in " ".join(c2["text"]) and "Not found in" in " ".join(c2["text"])
    assert [img["data-file"] for img in c2["images"]] == ["digits.png", "history.png"]
    assert "CIFAR-10 was not found" not in " ".join(page.sections["cifar3"]["text"])


def test_a_failing_task_gets_its_own_message(tmp_path):
    spec = report.RunSpec("manual", "experiments.no_such_experiment", [], {}, "manual_conv", "x.png")
    [result] = report.execute([spec], tmp_path, say=lambda s: None)
    assert result.status == "failed" and "ModuleNotFoundError" in result.error
    sec = report.manual_section(result)
    text = " ".join(b.text for b in sec.blocks if isinstance(b, report.Para) and b.kind == "warn")
    assert "experiments.no_such_experiment" in text and "failed" in text
    # The hand computations do not depend on the run: they still match.
    rows = {b.rows[i][0]: b.rows[i] for b in sec.blocks if isinstance(b, report.Table) and b.kind == "compare" for i in range(len(b.rows))}
    assert rows[ref.MANUAL["maxpool"].what][3] == "match"


def test_bad_flags_exit_with_status_2(tmp_path, capsys):
    assert report._cli(["--seeds", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--seeds must be a positive integer" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert report._cli(["--out", str(tmp_path / "file")]) == 2
    # a --data-dir that is not there ran the whole report and exited 0, its CIFAR-10 sections "not found"
    assert report._cli(["--quick", "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "--data-dir" in capsys.readouterr().err and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------------------------
# The comparison rules and the reference values


def test_exact_and_noisy_comparisons():
    assert report.compare_exact("n", 320, 320)[1] == "match"
    row, cls = report.compare_exact("n", 321, 320)
    assert cls == "differs" and row[4] == "+1"
    assert report.compare_exact("m", np.array([[-1.0, 27.0]]), [[-1, 27]])[1] == "match"
    assert report.compare_exact("m", None, 3)[1] == "na"
    r = ref.Reference(0.70, "1.9", "acc", noisy=True)
    assert report.compare_noisy("a", 0.71, r, tol=0.02, quick=False)[0][3] == "close (within 0.02)"
    row, cls = report.compare_noisy("a", 0.75, r, tol=0.02, quick=False)
    assert row[3] == "higher" and cls == "better" and row[4] == "+0.0500"
    row, cls = report.compare_noisy("l", 0.75, ref.Reference(0.70, "1.9", "loss", noisy=True), tol=0.02, quick=False, higher_is_better=False)
    assert row[3] == "higher" and cls == "worse"
    assert report.compare_noisy("a", 0.60, r, tol=0.02, quick=False)[0][3] == "lower"
    assert report.compare_noisy("a", 0.71, r, tol=0.02, quick=True)[0][3] == "not comparable (quick run)"
    assert report.Spread([0.5, 0.7]).text() == "0.6000 (mean of 2 runs; sd 0.1414, 0.5000 to 0.7000)"
    # Early stopping's epochs: a difference, never "better" or "worse".
    best = ref.Reference(4, "1.4", "best epoch", noisy=True)
    assert report.compare_epochs("e", report.Spread([4.0]), best, quick=False)[0][3] == "close (within 1)"
    row, cls = report.compare_epochs("e", report.Spread([8.0]), best, quick=False)
    assert row[3].startswith("differs") and cls == "na" and row[4] == "+4"


def test_ctrl_c_in_an_experiment_stops_the_report(monkeypatch):
    """The experiments turn Ctrl-C into exit status 130; the report must stop, not go on to the
    next task (and a plain failure must not stop it)."""
    import sys
    import types

    def interrupted(argv):
        raise SystemExit(130)

    monkeypatch.setitem(sys.modules, "experiments.fake_interrupted", types.SimpleNamespace(main=interrupted))
    with pytest.raises(KeyboardInterrupt):
        report.call_main("experiments.fake_interrupted", [], None, verbose=False)
    monkeypatch.setitem(sys.modules, "experiments.fake_bad_flag", types.SimpleNamespace(main=lambda argv: sys.exit(2)))
    assert "exited with status 2" in report.call_main("experiments.fake_bad_flag", [], None, verbose=False)[1]


def test_reference_counts_add_up():
    """The transcribed summaries are consistent: layers sum to the total, trainable + frozen."""
    for model in (ref.MNIST_CNN, ref.SEARCH_CNN_K7, *ref.CIFAR_MODELS.values()):
        assert sum(layer.params for layer in model.layers) == model.total, model.name
        assert model.trainable + model.non_trainable == model.total, model.name
        kb = model.total * 4 / 1024
        shown = f"{kb:.2f} KB" if kb < 1024 else f"{kb / 1024:.2f} MB"
        assert shown == model.size, model.name
    x = np.array(ref.MANUAL["patch"].value, float)
    k = np.array(ref.MANUAL["kernel"].value, float)
    conv = [[float((x[i:i + 3, j:j + 3] * k).sum()) for j in range(2)] for i in range(2)]
    assert conv == ref.MANUAL["convolution"].value
    assert (np.maximum(np.array(conv) + 100, 0) == ref.MANUAL["conv_layer"].value).all()
    assert x.reshape(2, 2, 2, 2).max(axis=(1, 3)).tolist() == ref.MANUAL["maxpool"].value


# ----------------------------------------------------------------------------------------------
# A real browser


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (Debian's chromium) is not installed")
def test_chromium_renders_the_report(quick, tmp_path):
    from matplotlib.image import imread

    png = tmp_path / "page.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,2400",
         quick["html"].resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    img = imread(png)[..., :3]
    assert img.shape[:2] == (2400, 1200)
    ink = (img.mean(axis=2) < 0.85).mean()  # not white
    assert ink > 0.03, f"only {ink:.1%} of the page is drawn"
    assert img.std() > 0.1
    # The figures are drawn too: the MNIST digits are large black squares.
    assert (img.mean(axis=2) < 0.1).mean() > 0.01


def test_full_settings_rows_say_close_higher_or_lower(tmp_path):
    """Runs at the report's settings (written here) are judged: within the tolerance 'close',
    else 'higher'/'lower' with the difference; early stopping's epochs only differ."""
    [mnist] = [s for s in report.plan(quick=False) if s.task == "mnist"]
    [cnn3] = [s for s in report.plan(quick=False) if s.task == "cifar3"]
    for spec, last, epochs_run, best_epoch in (
        (mnist, {"val_accuracy": 0.988}, 10, 8),
        (cnn3, {"loss": 0.70, "accuracy": 0.70, "val_loss": 0.9, "val_accuracy": 0.73}, 14, 9),
    ):
        path = tmp_path / spec.dirname
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"validation_split": 0.2 if spec is mnist else 0.0, **spec.expect}))
        (path / "metrics.json").write_text(json.dumps({
            "test_accuracy": 0.988, "test_loss": 0.04, "epochs_run": epochs_run, "best_epoch": best_epoch,
            "wall_time_s": 60.0, "steady_epoch_time_s": 122.0, "last_epoch": last}))
    rows = compare_rows({"tables": [
        {"kind": b.kind, "rows": b.rows} for b in report.mnist_section(
            [report.RunResult(mnist, tmp_path / mnist.dirname, "reused")], quick=False).blocks
        if isinstance(b, report.Table)]})
    assert rows["best epoch (lowest val_loss)"][3] == "differs (early stopping is noisy)"
    assert rows["best epoch (lowest val_loss)"][4] == "+4"
    assert rows["stopped early"][1] == "no"
    sec = report.cifar_section(3, [report.RunResult(cnn3, tmp_path / cnn3.dirname, "reused")], False, "", "")
    rows = compare_rows({"tables": [{"kind": b.kind, "rows": b.rows} for b in sec.blocks if isinstance(b, report.Table)]})
    assert rows["last epoch's accuracy on the test split"][3:5] == ["close (within 0.02)", "+0.0070"]
    assert rows["last epoch's training accuracy"][3:5] == ["lower", "-0.0688"]
    assert rows["last epoch's training loss"][3] == "close (within 0.05)"
    assert rows["last epoch's loss on the test split"][3:5] == ["higher", "+0.0818"]
    assert rows["stopped early"][1].startswith("yes") and rows["stopped early"][2] == "yes"
    assert "x2.00 of the original's" in rows["seconds per epoch"][5]
    assert sec.headline == ("test-split accuracy 0.7300", "0.723")
