"""A Network that records every construction from a configuration, for the warm-worker test.

Each ``from_config`` (what an executor's Python worker does to build its model) appends this
process's id to the file its configuration names, so a test can count how many times each
Python worker built the model over several fits.
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
