"""Training statistics: sums, JSON round trip and the self-contained HTML report."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from html.parser import HTMLParser

import fsspec
import pytest

from sparkbatch.train import PhaseTiming, RoundStats, TrainingStats

T0 = 1_700_000_000.0
WORKERS = ["driver", "executor 1 / partition 0", "executor 2 / partition 1"]


def _round(r: int, epoch: int, score: float, start: float) -> RoundStats:
    return RoundStats(
        epoch=epoch,
        round=r,
        rounds_in_epoch=2,
        score=score,
        examples=100,
        workers=2,
        start=start,
        end=start + 4.0,
        broadcast_s=0.5,
        fit_s=2.5,
        aggregate_s=0.5,
    )


def _phases(r: int, start: float, workers: list[str] = WORKERS) -> list[PhaseTiming]:
    driver, *executors = workers
    out = [
        PhaseTiming(r, driver, "broadcast", start, start + 0.5),
        PhaseTiming(r, driver, "fit", start + 0.5, start + 3.0),
        PhaseTiming(r, driver, "aggregate", start + 3.0, start + 3.5),
    ]
    for executor in executors:
        out.append(PhaseTiming(r, executor, "load", start + 0.6, start + 1.0))
        out.append(PhaseTiming(r, executor, "fit", start + 1.0, start + 2.8))
    return out


def _stats(scores=(1.0, 0.75, 0.5), workers: list[str] = WORKERS) -> TrainingStats:
    stats = TrainingStats()
    for r, score in enumerate(scores):
        start = T0 + 4.0 * r
        stats.add_round(_round(r, r // 2, score, start))
        stats.add_phases(_phases(r, start, workers))
    return stats


class _Page(HTMLParser):
    """Collects tags and text, and checks that every opened element is closed in order."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == [], (parser.errors, parser.stack)
    return parser


def test_sums_and_shares():
    stats = _stats()
    assert stats.total_seconds == 12.0
    assert stats.examples == 300
    assert stats.examples_per_second == 25.0
    assert stats.scores.tolist() == [1.0, 0.75, 0.5]
    assert stats.seconds_by_phase() == {
        "broadcast": 1.5,
        "fit": 7.5,
        "aggregate": 1.5,
        "other": 1.5,
    }
    assert stats.overhead_fraction() == 0.25
    assert stats.phases[0].seconds == 0.5 and stats.rounds[0].seconds == 4.0


def test_summary_text():
    lines = _stats().summary().splitlines()
    assert lines[0].split() == ["rounds", "3", "(2", "epochs)"]
    assert lines[1].split() == ["examples", "300", "(25.0", "examples/s)"]
    assert lines[2].split() == ["wall", "time", "12.00", "s"]
    assert lines[3].split() == ["score", "1", "->", "0.5"]
    assert lines[5].split() == ["broadcast", "1.50", "12.5"]
    assert lines[6].split() == ["fit", "7.50", "62.5"]
    assert lines[8].split() == ["other", "1.50", "12.5"]


def test_empty_stats():
    stats = TrainingStats()
    assert stats.total_seconds == 0.0 and stats.overhead_fraction() == 0.0
    assert stats.examples_per_second == 0.0 and stats.scores.shape == (0,)
    assert stats.summary() == "no rounds recorded"
    page = _parse(stats.render_html())
    assert [t for t, _ in page.tags].count("svg") == 0
    assert "No rounds recorded." in "".join(page.text)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"end must not be before start.*'fit', round 3"):
        PhaseTiming(3, "driver", "fit", 2.0, 1.0)
    with pytest.raises(ValueError, match="RoundStats end must not be before start"):
        RoundStats(0, 0, 1, 0.5, 1, 1, 2.0, 1.0, 0.0, 0.0, 0.0)
    with pytest.raises(TypeError, match="add_round expects a RoundStats, got dict"):
        TrainingStats().add_round({})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="add_phases expects PhaseTiming items, got tuple"):
        TrainingStats().add_phases([(0, "driver", "fit", 0.0, 1.0)])  # type: ignore[list-item]


def test_json_round_trip():
    stats = _stats()
    text = json.dumps(stats.to_dict(), allow_nan=False)
    assert TrainingStats.from_dict(json.loads(text)) == stats


def test_json_round_trip_of_non_finite_scores():
    stats = _stats(scores=(float("nan"), float("inf"), 0.5))
    data = json.loads(json.dumps(stats.to_dict(), allow_nan=False))
    assert [r["score"] for r in data["rounds"]] == ["nan", "inf", 0.5]
    back = TrainingStats.from_dict(data)
    assert math.isnan(back.scores[0]) and back.scores[1] == math.inf
    assert back.phases == stats.phases


def test_skipped_minibatches_are_kept_shown_and_round_trip():
    stats = _stats()
    stats.rounds[1] = dataclasses.replace(stats.rounds[1], skipped=2)
    stats.skipped = 3  # the rounds' 2 and 1 of a round in which nothing was left to fit
    assert "skipped     3 minibatches (NaN or infinity)" in stats.summary()
    assert "skipped minibatches" in stats.render_html()
    back = TrainingStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert back == stats and back.rounds[1].skipped == 2
    older = stats.to_dict()  # written before skipped minibatches were counted
    del older["skipped"]
    for record in older["rounds"]:
        del record["skipped"]
    back = TrainingStats.from_dict(older)
    assert back.skipped == 0 and all(r.skipped == 0 for r in back.rounds)
    assert "skipped" not in _stats().summary()


def test_from_dict_errors_name_the_problem():
    data = _stats().to_dict()
    with pytest.raises(ValueError, match="format 'sparkbatch.train.stats' version 1, got .* 2"):
        TrainingStats.from_dict({**data, "version": 2})
    del data["rounds"][1]["fit_s"]
    with pytest.raises(ValueError, match="RoundStats 1: missing field 'fit_s'"):
        TrainingStats.from_dict(data)
    data = _stats().to_dict()
    data["phases"][2]["start"] = "soon"
    with pytest.raises(ValueError, match="PhaseTiming 2: field 'start' must be float, got 'soon'"):
        TrainingStats.from_dict(data)


def test_html_report_is_self_contained_and_well_formed():
    stats = _stats()
    page_text = stats.render_html(title="run 7")
    page = _parse(page_text)
    tags = [t for t, _ in page.tags]
    assert tags.count("svg") == 3  # score, time per phase, timeline
    assert "script" not in tags and "link" not in tags and "img" not in tags
    polylines = [a["points"] for t, a in page.tags if t == "polyline"]
    assert [len(p.split()) for p in polylines] == [3]
    text = "".join(page.text)
    for worker in WORKERS:
        assert worker in text
    for phase in ("broadcast", "load", "fit", "aggregate", "other"):
        assert phase in text
    assert "run 7" in text and "epoch 1" in text
    # Every bar of the timeline has a tooltip: 3 driver + 2 * 2 executor intervals per round.
    tooltips = [t for t in page.text if re.search(r"round \d+: ", t)]
    assert len(tooltips) == len(stats.phases) == 21
    urls = re.findall(r"https?://[^\s\"'<>]*", page_text)
    assert set(urls) <= {"http://www.w3.org/2000/svg"}, urls
    assert "url(" not in page_text and "@import" not in page_text


def test_html_escapes_every_text():
    hostile = "<script>alert('x')</script>"
    stats = _stats(workers=["driver", hostile, "executor & co"])
    stats.add_phases([PhaseTiming(0, "driver", "<b>phase</b>", T0, T0 + 0.1)])
    page_text = stats.render_html(title="<script>t</script>")
    assert "<script" not in page_text and "<b>" not in page_text
    page = _parse(page_text)
    assert "script" not in [t for t, _ in page.tags]
    text = "".join(page.text)
    assert hostile in text and "executor & co" in text and "<b>phase</b>" in text
    assert "<script>t</script>" in text


def test_long_runs_are_downsampled():
    workers = ["driver"] + [f"executor {i} / partition {i}" for i in range(8)]
    stats = _stats(scores=[1.0 / (1 + r) for r in range(1000)], workers=workers)
    assert len(stats.phases) == 19_000
    page_text = stats.render_html()
    page = _parse(page_text)
    assert "it is downsampled to" in page_text
    points = [a["points"] for t, a in page.tags if t == "polyline"]
    assert [len(p.split()) for p in points] == [1000]
    rects = [a for t, a in page.tags if t == "rect"]
    assert len(rects) <= 5000
    text = "".join(page.text)
    assert all(w in text for w in workers)
    assert len(page_text) < 2_000_000


def test_to_html_writes_files(tmp_path):
    stats = _stats()
    target = tmp_path / "report" / "stats.html"
    stats.to_html(target, title="local")
    assert target.read_text(encoding="utf-8") == stats.render_html(title="local")
    assert [p.name for p in target.parent.iterdir()] == ["stats.html"]  # no temporary left


def test_to_html_writes_to_fsspec_urls():
    stats = _stats()
    url = "memory://sparkbatch-test-train-stats/report.html"
    try:
        stats.to_html(url)
        with fsspec.open(url, "rb") as f:
            assert f.read().decode("utf-8") == stats.render_html()
    finally:
        fsspec.filesystem("memory").rm("/sparkbatch-test-train-stats", recursive=True)
