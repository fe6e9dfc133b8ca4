"""The command line: ``sparkbatch info`` and ``sparkbatch inspect``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.cluster import FAST_START_JAVA_OPTS

import sparkbatch
import sparkbatch.nn
from sparkbatch import DataSet
from sparkbatch.cli import main


def test_info_reports_version_native_features_and_dependencies(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("sparkbatch", "native crc32c", "native threads", "cuda module", "numpy", "pyspark"):
        assert key in out
    assert sparkbatch.__version__ in out
    # The CUDA module is optional: either way the line says so, and no driver is needed.
    cuda_line = next(line for line in out.splitlines() if line.startswith("cuda module"))
    assert "not built" in cuda_line or "built for " in cuda_line
    if "built for " in cuda_line:
        assert "cuda devices" in out


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "sparkbatch", "info"], capture_output=True, text=True, check=True
    )
    assert "native crc32c" in result.stdout


def test_inspect_describes_good_files_and_names_bad_ones(tmp_path, capsys):
    good = tmp_path / "good.safetensors"
    DataSet(np.zeros((3, 2), np.float32), np.ones((3, 1), np.float32)).save(good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a minibatch file")
    assert main(["inspect", str(good)]) == 0
    assert (
        "DataSet of 3 examples: features float32[3, 2], labels float32[3, 1]"
        in capsys.readouterr().out
    )
    assert main(["inspect", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: ERROR" in out


# NOTE [demo runs]: both demos run in one child process, one after the other (the demo starts
# and stops its own local Spark, so not in this one, which holds the session's): the second
# SparkContext reuses the child's JVM, which saves a JVM start-up and the imports, about a third
# of what two children cost. Each run's exit status and output are its own. The child's JVMs
# start with the cluster tests' FAST_START_JAVA_OPTS (tests/cluster.py, NOTE [fast start]): the
# demo's Spark starts in about half the time on a 2-core machine.
_DEMO_RUNS = """
import contextlib, io, json, sys
from sparkbatch.cli import main
runs = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    runs.append({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(runs))
"""


def _mine(out: Path) -> list[Path]:
    """A user's files beside and inside the demo's export directories under ``out``."""
    return [out / "minibatches" / "mine.safetensors", out / "minibatches" / "train" / "notes.txt"]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> dict:
    """The demo on a CSV with a bad line, then on generated data (NOTE [demo runs]): for each,
    its folder (``tmp``), exit ``status``, ``stdout`` and ``stderr``."""
    bad, whole = tmp_path_factory.mktemp("bad-csv"), tmp_path_factory.mktemp("demo")
    csv = bad / "bad.csv"
    csv.write_text("".join(f"{i % 7}.5,{i % 3}.0,{i % 2}\n" for i in range(40)) + "1.0,oops,1\n")
    # a user's files beside and inside the demo's export directories are kept
    out = whole / "demo"
    for path in _mine(out):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    argvs = [
        ["demo", "--csv", str(csv), "--label-index", "2", "--num-classes", "2", "--epochs", "1",
         "--workers", "1", "--out", str(bad / "o")],
        ["demo", "--rows", "3000", "--epochs", "2", "--workers", "2", "--out", str(out)],
    ]
    java_options = f"{os.environ.get('JAVA_TOOL_OPTIONS', '')} {FAST_START_JAVA_OPTS}".strip()
    child = subprocess.run(
        [sys.executable, "-c", _DEMO_RUNS, json.dumps(argvs)],
        env={**os.environ, "JAVA_TOOL_OPTIONS": java_options},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert child.returncode == 0, child.stderr[-3000:]  # a traceback would end up here
    runs = json.loads(child.stdout.splitlines()[-1])
    return {"bad csv": {"tmp": bad, **runs[0]}, "generated": {"tmp": whole, **runs[1]}}


@pytest.mark.spark
def test_demo_runs_the_whole_pipeline(demo_runs):
    result = demo_runs["generated"]
    out = result["tmp"] / "demo"
    mine = _mine(out)
    assert result["status"] == 0, result["stderr"][-3000:]
    assert "Test accuracy" in result["stdout"] and "Where the time went" in result["stdout"]
    accuracy = float(result["stdout"].split("Test accuracy ")[1].split()[0])
    assert accuracy > 0.9
    assert (out / "report.html").read_text().count("<svg") >= 2
    report = (out / "report.html").read_text()
    assert "<h2>Configuration</h2>" in report and "<h2>Evaluation</h2>" in report
    assert "\r" not in result["stderr"]  # no progress bar where stderr is not a terminal
    assert list((out / "minibatches" / "train").glob("*.safetensors"))
    assert [path.read_text() for path in mine] == ["mine", "mine"]
    assert sparkbatch.nn.Network.load(out / "network.safetensors").num_outputs == 4


def test_demo_with_a_csv_needs_its_label_column(capsys):
    assert main(["demo", "--csv", "data.csv"]) == 2
    assert "--label-index" in capsys.readouterr().err


def test_the_native_thread_pool_follows_sparkbatch_num_threads():
    def pool(value: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "SPARKBATCH_NUM_THREADS"}
        if value is not None:
            env["SPARKBATCH_NUM_THREADS"] = value
        code = "from sparkbatch import _native; print(_native.build_info()['pool_threads'])"
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    default = pool(None)
    assert default == max(1, os.cpu_count() or 1)
    assert pool("1") == 1 and pool("3") == 3
    assert pool("zero") == default and pool("-2") == default  # ignored, not an error


@pytest.mark.spark
def test_demo_with_bad_csv_says_where_without_a_traceback(demo_runs):
    result = demo_runs["bad csv"]
    csv = result["tmp"] / "bad.csv"
    assert result["status"] == 1, result["stderr"][-3000:]
    lines = result["stderr"].strip().splitlines()
    error = next(line for line in lines if line.startswith("sparkbatch demo: "))
    assert error.startswith(f"sparkbatch demo: CsvError: {csv}, line 41, column 1: expected"), error
    assert lines[-1] == "(raised in a Spark task; PySpark's exception is chained as the cause)"
