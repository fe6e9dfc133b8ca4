"""Soak: count what s3fs and botocore retry by default, through the fault proxy.

Not collected by pytest (no ``test_`` prefix); too slow for the suite (botocore waits up to
``2**n`` s between attempts). Run from the repository root:

    .venv/bin/python tests/soak/s3_retries.py

Starts the moto S3 server on 127.0.0.1 and :class:`tests.faults.FaultProxy` in front of it,
then, for each lasting fault, saves one minibatch file (or loads one) with s3fs's default
settings and reports how many requests reached the proxy, how long the call took and what it
raised. Also prints the retry settings in force (botocore's retry mode and attempts, s3fs's
``retries``, timeouts).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for faults

from faults import FaultProxy, proxied_options  # noqa: E402

FAULTS = {
    "503 ServiceUnavailable": ("PUT", lambda p: p.fail(10**6, 503, method="PUT")),
    "500 InternalError": ("PUT", lambda p: p.fail(10**6, 500, method="PUT")),
    "503 SlowDown": ("PUT", lambda p: p.fail(10**6, 503, code="SlowDown", method="PUT")),
    "connection reset": ("PUT", lambda p: p.reset(10**6, method="PUT")),
    "answer lost (reset after the server acted)": ("PUT", lambda p: p.drop(10**6, method="PUT")),
    "server stopped (connection refused)": ("PUT", lambda p: p.stop()),
    "read timeout (read_timeout=2)": ("PUT", lambda p: p.delay(3, 10**6, method="PUT")),
    "download truncated": ("GET", lambda p: p.truncate(10**6, method="GET", path=".safet")),
    "download 503": ("GET", lambda p: p.fail(10**6, 503, method="GET", path=".safet")),
}


def main() -> int:
    import boto3
    import botocore
    import numpy as np
    import s3fs
    from botocore.configprovider import _DEFAULT_RETRY_MODE
    from moto.server import ThreadedMotoServer

    from sparkbatch import DataSet
    from sparkbatch.data import load

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials).create_bucket(
        Bucket="sparkbatch"
    )
    direct = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    data = DataSet(np.arange(20, dtype=np.float32).reshape(10, 2), np.ones((10, 1), np.float32))
    source = f"s3://sparkbatch/retries-{uuid.uuid4().hex[:8]}/source.safetensors"
    data.save(source, storage_options=direct)
    settings = {
        "botocore": botocore.__version__,
        "s3fs": s3fs.__version__,
        "botocore default retry mode": _DEFAULT_RETRY_MODE,
        "s3fs S3FileSystem.retries": s3fs.S3FileSystem.retries,
        "s3fs connect_timeout": s3fs.S3FileSystem.connect_timeout,
        "s3fs read_timeout": s3fs.S3FileSystem.read_timeout,
    }
    results = {}
    try:
        for name, (method, switch) in FAULTS.items():
            with FaultProxy((host, port)) as proxy:
                config = {"read_timeout": 2} if "read timeout" in name else {}
                options = proxied_options(direct, proxy, **config)
                url = f"s3://sparkbatch/retries-{uuid.uuid4().hex[:8]}/a.safetensors"
                switch(proxy)
                start = time.time()
                try:
                    if method == "PUT":
                        data.save(url, storage_options=options)
                    else:
                        load(source, storage_options=options)
                    outcome = "succeeded"
                except Exception as e:  # noqa: BLE001  (the error is the figure)
                    outcome = f"{type(e).__module__}.{type(e).__name__}: {str(e)[:300]}"
                elapsed = time.time() - start
                attempts = len([1 for m, p, _ in proxy.log if m == method and "safetensors" in p])
                results[name] = {
                    "requests": attempts,
                    "seconds": round(elapsed, 1),
                    "outcome": outcome,
                }
                print(name, results[name], file=sys.stderr, flush=True)
    finally:
        server.stop()
    print(json.dumps({"settings": settings, "faults": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
