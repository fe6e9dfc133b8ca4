"""The command line: ``sparkbatch info`` and ``sparkbatch inspect``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import sparkbatch
from sparkbatch import DataSet
from sparkbatch.cli import main


def test_info_reports_version_native_features_and_dependencies(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("sparkbatch", "native crc32c", "native threads", "cuda module", "numpy", "pyspark"):
        assert key in out
    assert sparkbatch.__version__ in out
    assert "not built" in out  # no CUDA module in the CPU build


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
