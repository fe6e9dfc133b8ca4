"""Progress bars on the driver (sparkbatch._progress): a tqdm bar on a terminal, nothing else."""

from __future__ import annotations

import io

import pytest

from sparkbatch._progress import Progress, wanted


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_only_on_a_terminal_unless_forced():
    assert wanted(None, _Terminal()) and not wanted(None, io.StringIO())
    assert wanted(True, io.StringIO()) and not wanted(False, _Terminal())
    closed = io.StringIO()
    closed.close()
    assert not wanted(None, closed)


def test_no_terminal_no_output(capsys):
    with Progress(total=3, desc="quiet") as bar:  # stderr is captured: not a terminal
        bar.update(3, postfix="3 examples")
        assert not bar.shown
    assert capsys.readouterr().err == ""


def test_forced_or_on_a_terminal_tqdm_draws_the_bar():
    out = _Terminal()
    with Progress(total=4, desc="files", unit=" files", file=out) as bar:
        bar.update(4)
    assert "files: 100%" in out.getvalue() and "4/4" in out.getvalue()
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(total=5, desc="export", enabled=True, file=out) as bar:
            bar.update(2, postfix="64 examples")
            raise RuntimeError("stops half way")
    text = out.getvalue()
    assert "export:  40%" in text and "2/5" in text and "64 examples" in text
    assert text.endswith("\n")  # closed on the error: the next line starts on its own
