"""Networks for the training tests that run on executors (importable there by reference).

:class:`CountedNetwork` records every construction from a configuration: each ``from_config``
(what an executor's Python worker does to build its model) appends the process's id to the file
its configuration names, so a test can count how often each Python worker built the model.
:class:`FailsOnceNetwork` fails one step of one task, once, so a test can check that Spark's
retry loses and doubles nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sparkbatch.nn import Network


class CountedNetwork(Network):
    """A :class:`~sparkbatch.nn.Network` whose ``from_config`` appends its pid to ``log``."""

    log: str = ""

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "log": self.log}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str) -> CountedNetwork:
        import json

        config = json.loads(config) if isinstance(config, str) else dict(config)
        log = config.pop("log", "")
        net = super().from_config(config)
        net.log = log
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        return net


class FailsOnceNetwork(Network):
    """A :class:`~sparkbatch.nn.Network` whose ``fail_at``-th ``fit_batch`` in a process raises
    RuntimeError, once over all processes: the first to fail creates the file ``marker``."""

    marker: str = ""
    fail_at: int = 3

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "marker": self.marker, "fail_at": self.fail_at}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str) -> FailsOnceNetwork:
        import json

        config = json.loads(config) if isinstance(config, str) else dict(config)
        marker, fail_at = config.pop("marker", ""), config.pop("fail_at", 3)
        net = super().from_config(config)
        net.marker, net.fail_at, net.steps = marker, fail_at, 0
        return net

    def fit_batch(self, batch: Any) -> float:
        self.steps = getattr(self, "steps", 0) + 1
        if self.marker and self.steps == self.fail_at:
            try:
                with open(self.marker, "x"):
                    pass
            except FileExistsError:
                pass
            else:
                raise RuntimeError("this task fails once, for the test")
        return super().fit_batch(batch)
