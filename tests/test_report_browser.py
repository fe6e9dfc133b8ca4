"""The training report as a person sees it: rendered by headless Chromium (Debian's ``chromium``,
which ``.ci/run`` installs), the screenshot decoded and every chart checked for drawn pixels.

Each chart's plot area has its own background colour (``report.PLOT_BACKGROUNDS``): the test finds
the area by that colour, then counts the pixels of the chart's own ink inside it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sparkbatch.evaluation import Evaluation
from sparkbatch.train import PhaseTiming, RoundStats, TrainingStats
from sparkbatch.train.report import PLOT_BACKGROUNDS

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
T0 = 1_700_000_000.0


def _stats() -> TrainingStats:
    """Three epochs of ten rounds, two workers with phase timings, a configuration and an
    evaluation of three classes (one of them always right: the darkest confusion cell)."""
    stats = TrainingStats()
    t = T0
    for g in range(30):
        seconds = 0.2 + 0.01 * (g % 3)
        score = 0.3 + 2.0 * np.exp(-g / 2.0)
        stats.add_round(
            RoundStats(g // 10, g, 10, score, 640, 2, t, t + seconds, 0.01, 0.15, 0.03, 0, 10)
        )
        stats.add_phases(
            [
                PhaseTiming(g, "driver", "broadcast", t, t + 0.01),
                PhaseTiming(g, "worker 0", "load", t + 0.01, t + 0.03),
                PhaseTiming(g, "worker 0", "fit", t + 0.03, t + 0.16),
                PhaseTiming(g, "worker 1", "fit", t + 0.02, t + 0.15),
                PhaseTiming(g, "driver", "aggregate", t + 0.16, t + seconds),
            ]
        )
        t += seconds + 0.01
    stats.set_configuration(
        "model",
        {"class": "Network", "parameters": 3300, "layers": [{"type": "Dense", "n_in": 16}]},
    )
    stats.set_configuration("averaging", {"batch_size_per_worker": 64, "workers": 2})
    stats.add_fit({"source": "minibatch files", "epochs": 3, "workers": 2, "first round": 0})
    evaluation = Evaluation(labels=["cat", "dog", "eel"])
    labels = np.repeat([0, 1, 2], 20)
    predicted = labels.copy()
    predicted[20:25] = 2  # dog is sometimes eel; cat is always right
    evaluation.eval(labels, np.eye(3)[predicted])
    stats.set_evaluation(evaluation)
    return stats


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _count(pixels: np.ndarray, colour: str) -> int:
    return int(np.all(pixels == _rgb(colour), axis=-1).sum())


def _screenshot(page: Path, tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Chromium's 1200x3000 screenshot of ``page`` and its run (stdout: the DOM it built)."""
    shot = page.with_suffix(".png")
    run = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,3000",
            f"--screenshot={shot}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    return shot, run


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)"
)


@needs_chromium
def test_report_renders_every_section_and_chart_in_chromium(tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    _stats().to_html(page, title="browser check")
    html = page.read_text(encoding="utf-8")
    # self-contained: nothing to fetch from anywhere
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"\b(src|href)=|url\(|@import|<script|<link", html)

    shot, run = _screenshot(page, tmp_path)

    titles = re.findall(r"<h2>(.*?)</h2>", run.stdout)  # the DOM as Chromium built it
    assert titles == [
        "Configuration",
        "Evaluation",
        "Score per round",
        "Throughput per round",
        "Time per phase (driver)",
        "Timeline",
    ]

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (3000, 1200, 3)
    ink = {"score": "#4e79a7", "throughput": "#2a9d8f", "timeline": "#59a14f"}  # fit's green
    boxes = {}
    for chart, background in PLOT_BACKGROUNDS.items():
        area = np.all(pixels == _rgb(background), axis=-1)
        assert area.sum() > 5000, f"the {chart} chart's plot area is not on the page"
        rows, cols = np.nonzero(area)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        boxes[chart] = (top, bottom)
        inside = pixels[top:bottom, left:right]
        drawn = ~np.all(inside == _rgb(background), axis=-1)
        assert drawn.mean() > 0.02, f"the {chart} chart is nearly blank"
        assert _count(inside, ink[chart]) > 50, f"the {chart} chart's data is not drawn"
    # the charts are in the page's order, one below the other
    assert boxes["score"][1] < boxes["throughput"][0] < boxes["timeline"][0]
    # the confusion matrix: cat's row is all right (the darkest shade), and it is above the charts
    darkest = np.all(pixels == _rgb("#1f4e79"), axis=-1)
    assert darkest.sum() > 200
    assert np.nonzero(darkest)[0].max() < boxes["score"][0]


@needs_chromium
def test_a_confusion_matrix_of_many_classes_fits_the_page(tmp_path):
    """40 classes, each always right: all 40 diagonal cells (the darkest shade) are on the
    1200-pixel-wide page, not beyond its right edge."""
    from PIL import Image

    classes = 40
    evaluation = Evaluation(labels=[f"class number {i}" for i in range(classes)])
    labels = np.arange(classes).repeat(2)
    evaluation.eval(labels, np.eye(classes)[labels])
    stats = TrainingStats()
    stats.set_evaluation(evaluation)
    page = tmp_path / "classes.html"
    stats.to_html(page)
    shot, _ = _screenshot(page, tmp_path)
    darkest = np.all(np.asarray(Image.open(shot).convert("RGB")) == _rgb("#1f4e79"), axis=-1)
    rows = np.flatnonzero(darkest.any(axis=1))
    lefts = {int(np.flatnonzero(darkest[r]).min()) for r in rows}  # one per diagonal cell
    assert len(lefts) == classes and np.flatnonzero(darkest.any(axis=0)).max() < 1150
