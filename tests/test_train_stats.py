"""Training statistics: sums, JSON round trip and the self-contained HTML report."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from html.parser import HTMLParser

import fsspec
import numpy as np
import pytest

from sparkbatch.train import PhaseTiming, RoundStats, TrainingStats
from sparkbatch.train.plan import FitPlan, PlannedRound
from sparkbatch.train.runner import FitRunner

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
        "average": 0.0,
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
    assert lines[8].split() == ["average", "0.00", "0.0"]
    assert lines[9].split() == ["other", "1.50", "12.5"]
    assert len(lines) == 10  # no exchange, bytes or steps recorded: none shown


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
    assert tags.count("svg") == 4  # score, throughput, time per phase, timeline
    assert "script" not in tags and "link" not in tags and "img" not in tags
    polylines = [a["points"] for t, a in page.tags if t == "polyline"]
    assert [len(p.split()) for p in polylines] == [3]
    bars = [a for t, a in page.tags if t == "rect" and a.get("fill") == "#2a9d8f"]
    assert len(bars) == 3  # a throughput bar per round
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
    assert [len(p.split()) for p in points] == [1000, 1000]  # score, throughput
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


# --- configuration, evaluation and the report's sections -----------------------------------------


def _evaluation():
    from sparkbatch.evaluation import Evaluation

    ev = Evaluation(labels=["cat", "dog", "eel"])
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.eye(3)[[0, 0, 1, 1, 1, 0]]  # eel never predicted: precision 0, recall 0
    ev.eval(labels, predicted)
    return ev


def _configured() -> TrainingStats:
    stats = _stats()
    stats.set_configuration(
        "model", {"class": "Net", "parameters": np.int64(58), "layers": [{"type": "Dense"}]}
    )
    stats.set_configuration("averaging", {"workers": 2, "averaging_frequency": 5})
    stats.add_fit({"source": "files", "epochs": 2, "rounds per epoch": (2,), "first round": 0})
    stats.set_evaluation(_evaluation())
    return stats


def test_configuration_and_evaluation_are_plain_data_and_round_trip():
    stats = _configured()
    assert stats.configuration["model"]["parameters"] == 58
    assert type(stats.configuration["model"]["parameters"]) is int
    assert stats.fits == [
        {"source": "files", "epochs": 2, "rounds per epoch": [2], "first round": 0}
    ]
    ev = stats.evaluation
    assert ev["kind"] == "classification" and ev["examples"] == 6
    assert ev["classes"] == ["cat", "dog", "eel"] and ev["count"] == [3, 2, 1]
    assert ev["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert ev["accuracy"] == pytest.approx(4 / 6)
    assert ev["precision"] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert ev["recall"] == pytest.approx([2 / 3, 1.0, 0.0])
    assert ev["macro_f1"] == pytest.approx(_evaluation().f1())
    text = json.dumps(stats.to_dict(), allow_nan=False)
    assert TrainingStats.from_dict(json.loads(text)) == stats
    older = stats.to_dict()  # written before configuration, fits and evaluation were kept
    for key in ("configuration", "fits", "evaluation"):
        del older[key]
    back = TrainingStats.from_dict(older)
    assert back.configuration == {} and back.fits == [] and back.evaluation is None
    assert back.rounds == stats.rounds


def test_regression_figures_keep_non_finite_values_through_json():
    from sparkbatch.evaluation import RegressionEvaluation

    ev = RegressionEvaluation(column_names=["price", "flat"])
    ev.eval(np.array([[1.0, 2.0], [3.0, 2.0]]), np.array([[2.0, 2.5], [3.0, 1.5]]))
    stats = _stats()
    stats.set_evaluation(ev)
    assert stats.evaluation["mse"] == [0.5, 0.25] and math.isnan(stats.evaluation["r2"][1])
    data = json.loads(json.dumps(stats.to_dict(), allow_nan=False))
    assert data["evaluation"]["r2"] == [0.5, "nan"]
    back = TrainingStats.from_dict(data).evaluation
    assert back["r2"][0] == 0.5 and math.isnan(back["r2"][1]) and back["columns"][1] == "flat"
    page = _parse(stats.render_html())
    text = "".join(page.text)
    assert "Evaluation" in text and "price" in text and "R\u00b2" in text and "0.2500" in text
    assert "held-out MSE" in text and "0.3750 on 2 examples" in text


def test_an_evaluation_followed_by_more_training_says_it_is_of_an_earlier_model():
    stats = _stats(scores=(1.0, 0.75))
    stats.set_evaluation(_evaluation())
    assert stats.evaluation["after rounds"] == 2
    text = " ".join(_parse(stats.render_html()).text)
    assert "0.6667 on 6 examples" in text and "Evaluated after" not in text
    stats.add_round(_round(2, 1, 0.5, T0 + 8.0))  # trained on after the evaluation
    back = TrainingStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    text = " ".join(_parse(back.render_html()).text)
    assert "0.6667 on 6 examples, after 2 of the 3 rounds" in text
    assert "Evaluated after 2 of the 3 rounds: the model was trained 1 more round " in text


def test_configuration_and_evaluation_refuse_what_they_cannot_keep():
    stats = TrainingStats()
    with pytest.raises(TypeError, match=r"configuration 'model'\['layer'\] must hold plain"):
        stats.set_configuration("model", {"layer": object()})
    with pytest.raises(TypeError, match="set_evaluation expects an Evaluation or Regression"):
        stats.set_evaluation({"accuracy": 1.0})  # type: ignore[arg-type]
    data = _stats().to_dict()
    with pytest.raises(ValueError, match="evaluation must be an object of kind"):
        TrainingStats.from_dict({**data, "evaluation": {"kind": "ranking"}})
    with pytest.raises(ValueError, match="fits must be a list of objects"):
        TrainingStats.from_dict({**data, "fits": {"source": "files"}})


def test_report_shows_configuration_evaluation_and_confusion_heat_map():
    stats = _configured()
    page = _parse(stats.render_html())
    text = " ".join(page.text)
    for title in ("Configuration", "Model", "Averaging", "Data", "Evaluation", "Per class"):
        assert title in text
    assert "Confusion matrix" in text and "averaging_frequency" in text
    assert "held-out accuracy" in text and "0.6667 on 6 examples" in text
    cells = [a for t, a in page.tags if t == "td" and "background:" in (a.get("style") or "")]
    assert len(cells) == 9
    shades = [re.search(r"background:(#[0-9a-f]{6})", c["style"]).group(1) for c in cells]
    assert shades[3 + 1] == "#1f4e79"  # dog: every example right, the darkest shade
    assert shades[3 + 0] == "#ffffff"  # nothing
    # the fit's minibatches and examples per epoch are measured from its rounds
    assert "200" in text  # 2 rounds of 100 examples in epoch 0 (and one in epoch 1: 100)
    assert "100\u2013200" in text


@pytest.mark.parametrize(
    "scores, label, note",
    [
        ([2.0 / (1 + r) ** 2 for r in range(12)], "score (log scale)", "Log scale"),
        ([2.3, 1.2] + [0.5 - 0.01 * r for r in range(10)], "score (zoomed)", "Zoomed in"),
        ([2.3] + [0.5 - 0.01 * r for r in range(3)], "score", "Linear scale"),  # too few
        ([0.9 - 0.01 * r for r in range(12)], "score", "Linear scale"),
        ([0.5, -0.2, 0.1], "score", "Linear scale"),  # not all positive: never log
    ],
    ids=["log", "zoom", "linear", "few", "negative"],
)
def test_score_chart_scale_shows_progress_after_the_first_rounds(scores, label, note):
    page = _parse(_stats(scores=scores).render_html())
    text = page.text
    assert label in text
    assert any(t.startswith(note) for t in text)
    if label == "score (zoomed)":
        triangles = [a for t, a in page.tags if t == "polygon"]
        assert len(triangles) == 2  # rounds 0 and 1 lie above the zoomed axis


@pytest.mark.spark
def test_a_fit_records_its_configuration_and_evaluate_its_figures(sc, tmp_path):
    from sparkbatch.data import DataSet, Standardize, export_datasets
    from sparkbatch.nn import SGD, Dense, Network, Output
    from sparkbatch.train import ParameterAveraging, SparkNetwork

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    files = str(tmp_path / "files")
    export_datasets(DataSet(x, y).split(20), files)  # 4 files: one round of 2 workers an epoch
    net = Network([Dense(4, 8, "tanh"), Output(8, 2)], SGD(0.5), seed=0)
    master = ParameterAveraging(
        batch_size_per_worker=20,
        averaging_frequency=2,
        workers=2,
        storage_options={"auto_mkdir": True},  # left out of the report: it may hold secrets
    )
    spark_net = SparkNetwork(sc, net, master)
    spark_net.fit(files, epochs=2, preprocessor=Standardize().fit(DataSet(x, y)))
    stats = spark_net.stats
    model = stats.configuration["model"]
    assert model["parameters"] == 58 and model["updater"] == "SGD(learning_rate=0.5)"
    assert [layer["type"] for layer in model["layers"]] == ["Dense", "Output"]
    averaging = stats.configuration["averaging"]
    assert averaging["averaging_frequency"] == 2 and averaging["exchange"] == "spark"
    assert "storage_options" not in averaging
    assert stats.configuration["spark"]["default parallelism"] == sc.defaultParallelism
    assert stats.fits == [
        {
            "source": "minibatch files read by SerializedDataSetLoader, preprocessed by "
            "Standardize",
            "epochs": 2,
            "first epoch": 0,
            "rounds per epoch": [1],
            "workers": 2,
            "first round": 0,
        }
    ]
    assert [(r.minibatches, r.examples) for r in stats.rounds] == [(4, 80), (4, 80)]
    evaluation = spark_net.evaluate(files)
    assert stats.evaluation["examples"] == 80
    assert stats.evaluation["accuracy"] == evaluation.accuracy()
    page = stats.render_html()
    assert "auto_mkdir" not in page and "SerializedDataSetLoader" in page
    assert "Confusion matrix" in page


class _NoJobs(FitPlan):
    """A plan of one round that runs nothing: what FitRunner.describe reads of a plan."""

    def round_view(self, g):
        raise AssertionError("no job here")

    def worker_view(self):
        raise AssertionError("no job here")


def _unchanged(ds):
    return ds


@pytest.mark.spark
def test_a_fits_data_names_its_preprocessor(sc):
    from sparkbatch.data import PreprocessingLoader, SerializedDataSetLoader, Standardize
    from sparkbatch.nn import SGD, Dense, Network, Output
    from sparkbatch.train import ParameterAveraging
    from sparkbatch.train.model import ModelAccess

    net = Network([Dense(4, 8, "tanh"), Output(8, 2)], SGD(0.5), seed=0)
    stats = TrainingStats()
    runner = FitRunner(sc, ParameterAveraging(), ModelAccess(net), stats, first_round=0)
    rounds = [PlannedRound(0, 0, 0, 1, 1)]
    loader = PreprocessingLoader(SerializedDataSetLoader(), _unchanged)
    files = _NoJobs(sc, rounds, 2, loader=loader)
    runner.describe(files)
    rdd = _NoJobs(sc, rounds, 2, loader=None)  # fit(rdd, preprocessor=), approach="direct"
    rdd.preprocessor = Standardize()
    runner.describe(rdd)
    assert [f["source"] for f in stats.fits] == [
        "minibatch files read by SerializedDataSetLoader, preprocessed by _unchanged",
        "RDD partitions (approach='direct'), preprocessed by Standardize",
    ]


@pytest.mark.spark
def test_an_evaluation_of_one_of_a_graphs_outputs_names_it(sc):
    from sparkbatch.data import MultiDataSet
    from sparkbatch.nn import SGD, Dense, Graph, Output
    from sparkbatch.train import ParameterAveraging, SparkNetwork

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3))
    labels = [np.eye(2)[(x[:, 0] > 0).astype(int)], x[:, 1:2]]
    vertices = {
        "h": (Dense(3, 4, "tanh"), "x"),
        "class": (Output(4, 2, "softmax", "cross_entropy"), "h"),
        "value": (Output(4, 1, "identity", "mse"), "h"),
    }
    graph = Graph(["x"], vertices, ["class", "value"], SGD(0.1), seed=0)
    spark_net = SparkNetwork(sc, graph, ParameterAveraging(workers=2))
    rdd = sc.parallelize(MultiDataSet([x], labels).split(4), 2)
    spark_net.evaluate_regression(rdd, output_index=1)
    assert spark_net.stats.evaluation["output"] == "value"
    text = " ".join(_parse(spark_net.stats.render_html()).text)
    assert "held-out MSE of output 'value'" in text and "8 examples of output 'value'." in text
    spark_net.stats.evaluation["output"] = "<b>"  # a name is text, escaped
    page = spark_net.stats.render_html()
    assert "of output &#x27;&lt;b&gt;&#x27;" in page and "<b>" not in page


def test_bytes_steps_and_averaging_are_summed_shown_and_round_trip():
    from sparkbatch.train import AggregationStep

    stats = _stats()
    steps = (AggregationStep("receive", 0.25, 800), AggregationStep("sum", 0.125, 0))
    stats.rounds[1] = dataclasses.replace(
        stats.rounds[1],
        distribute_bytes=800,
        aggregate_bytes=800,
        average_s=0.25,
        steps=steps,
        exchange="socket",
    )
    assert stats.seconds_by_phase() == {
        "broadcast": 1.5,
        "fit": 7.5,
        "aggregate": 1.25,
        "average": 0.25,
        "other": 1.5,
    }
    assert stats.overhead_fraction() == 0.25  # averaging was in aggregate_s before
    assert stats.bytes_by_phase() == {"distribute": 800, "aggregate": 800}
    assert stats.steps_by_name() == {s.name: s for s in steps}
    assert stats.exchanges == ["socket"]
    lines = stats.summary().splitlines()
    assert lines[4].split() == ["exchange", "socket"]
    assert [line.split() for line in lines[-6:]] == [
        ["moved", "bytes", "a", "round"],
        ["distribute", "800", "B", "267", "B"],
        ["aggregate", "800", "B", "267", "B"],
        ["step", "seconds", "bytes"],
        ["receive", "0.25", "800", "B"],
        ["sum", "0.12", "0", "B"],
    ]
    page = _parse(stats.render_html())
    cells = [t.strip() for t in page.text if t.strip()]
    assert cells[cells.index("exchange") + 1] == "socket"
    assert cells[cells.index("bytes moved") + 1] == "800 B to the workers, 800 B back"
    receive = cells.index("step: receive")  # total, median and slowest round, bytes
    assert cells[receive : receive + 6] == ["step: receive", "0.250", "250.0 ms"] + [
        "250.0 ms",
        "800 B",
        "800 B",
    ]
    assert cells[cells.index("average (driver)") + 1] == "0.250"
    record = json.loads(json.dumps(stats.to_dict()))
    assert record["rounds"][1]["steps"][0] == {"name": "receive", "seconds": 0.25, "bytes": 800}
    assert TrainingStats.from_dict(record) == stats
    # statistics written before these fields were measured read with their defaults
    for r in record["rounds"]:
        for key in ("distribute_bytes", "aggregate_bytes", "average_s", "steps", "exchange"):
            r.pop(key)
    old = TrainingStats.from_dict(record)
    assert old.rounds[1].steps == () and old.rounds[1].average_s == 0.0
    assert old.bytes_by_phase() == {"distribute": 0, "aggregate": 0} and old.exchanges == []
    assert "moved" not in old.summary() and "step" not in old.summary()
    assert "bytes moved" not in old.render_html() and "step:" not in old.render_html()
    record["rounds"][1]["steps"] = [{"name": "sum", "seconds": "soon", "bytes": 0}]
    with pytest.raises(
        ValueError,
        match="RoundStats 1: field 'steps': AggregationStep 0: field 'seconds' must be float",
    ):
        TrainingStats.from_dict(record)
    with pytest.raises(TypeError, match="steps must be AggregationSteps"):
        dataclasses.replace(stats.rounds[0], steps=({"name": "sum"},))


@pytest.mark.spark
@pytest.mark.parametrize("exchange", ["spark", "socket"])
def test_a_fit_measures_the_bytes_and_steps_of_every_round(sc, exchange):
    from sparkbatch.data import DataSet
    from sparkbatch.nn import Adam, Dense, Network, Output
    from sparkbatch.train import ParameterAveraging, SparkNetwork

    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    net = Network([Dense(4, 8, "tanh"), Output(8, 2)], Adam(0.01), seed=0)
    master = ParameterAveraging(
        batch_size_per_worker=8,
        averaging_frequency=1,
        workers=2,
        exchange=exchange,
        collect_stats=True,
    )
    spark_net = SparkNetwork(sc, net, master)
    spark_net.fit(sc.parallelize(DataSet(x, y).split(8), 2), epochs=1)
    rounds = spark_net.stats.rounds
    arrays = net.params().nbytes + net.updater_state().nbytes  # save_updater: both travel
    assert len(rounds) == 2 and all(r.workers == 2 for r in rounds)
    for r in rounds:
        assert r.exchange == exchange
        assert r.distribute_bytes == r.aggregate_bytes == 2 * arrays
        assert 0 < r.average_s <= r.aggregate_s
        if exchange == "spark":
            assert [s.name for s in r.steps] == ["treeAggregate"]
            assert r.steps[0].bytes == 2 * arrays
        else:  # local Spark: shared memory where /dev/shm allows, else TCP
            assert [s.name for s in r.steps][-1] == "sum" and r.steps[-1].seconds > 0
            assert r.steps[0].name in ("shared memory", "receive")
            assert r.steps[0].bytes == 2 * arrays
        assert all(s.seconds >= 0 for s in r.steps)
    driver = [p.phase for p in spark_net.stats.phases if p.worker == "driver"]
    assert driver.count("average") == 2 and driver.count("aggregate") == 2
    by_phase = spark_net.stats.seconds_by_phase()
    assert sum(by_phase.values()) == pytest.approx(spark_net.stats.total_seconds)
