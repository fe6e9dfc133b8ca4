"""Soak: every kill of ``tests/test_faults_cluster.py`` on a standalone cluster, with timings.

Not collected by pytest. The suite kills Python workers only; this also kills an executor JVM
during an export (the standalone worker starts a new one) and a worker of a socket-exchange
fit. Run from the repository root:

    .venv/bin/python tests/soak/cluster_kills.py

Prints the driver script's steps (seconds since it began) and "ok" when every check passed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.*
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests/: cluster, faults

from tests.cluster import standalone_cluster  # noqa: E402
from tests.test_faults_cluster import check, run  # noqa: E402


def main() -> int:
    began = time.time()
    with standalone_cluster(workers=2, cores_per_worker=1, memory="1g") as cluster:
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="sparkbatch-soak-kills-") as tmp:
            result = run(cluster, Path(tmp), ("worker", "executor"), ("spark", "socket"))
            check(result, cluster, Path(tmp))
    print(f"cluster start {started - began:.1f} s; driver steps: {result['laps']}")
    print(f"ok: {time.time() - began:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
