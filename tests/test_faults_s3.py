"""Storage faults during exports to S3: the real moto server behind a fault-injecting proxy.

s3fs reaches the server through :class:`tests.faults.FaultProxy` on 127.0.0.1, which answers
chosen requests with 500/503, resets or drops connections, slows them down, truncates answers
or stops listening, in the middle of an export (the N-th upload of a minibatch file). Transient
faults must be retried away (the export completes with every example once); lasting ones must
fail the export with an error, after which every reader refuses the incomplete export until a
re-run with ``overwrite=True`` writes a complete one.

What retries: botocore's "legacy" retry mode (the default; ``AWS_RETRY_MODE`` or
``config_kwargs={"retries": ...}`` change it) makes up to 5 attempts of a request answered with
500/502/503/504, 429, throttling codes, or failing to connect or read, waiting ``rand() * 2**n``
seconds between them; s3fs repeats a whole call (up to ``S3FileSystem.retries = 5`` times,
waiting ``0.1 * 1.7**i`` s) when it ends in a read error or a closed connection, a truncated
body, or an error whose text says SlowDown / reduce your request rate. ``tests/soak/
s3_retries.py`` counts them through the proxy (too slow for the suite: up to 15 s of waiting
per request).
"""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
from tests.faults import FaultProxy, proxied_options, upstream_of

from sparkbatch.data import DataSet, FileDataSetIterator, export_datasets, load
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.storage import list_files

pytestmark = pytest.mark.s3

ITEMS = 12  # minibatches of export_datasets, 5 examples each
SIZE = 5
# Lasting faults fail after two attempts instead of five (each waits up to 2**n s): faster
# tests, the same paths.
QUICK = {"retries": {"total_max_attempts": 2, "mode": "legacy"}}


def _items(count: int = ITEMS, size: int = SIZE) -> list[DataSet]:
    """Minibatches whose one feature is the example's global index (its id)."""
    out = []
    for start in range(0, count * size, size):
        ids = np.arange(start, start + size, dtype=np.float32).reshape(-1, 1)
        out.append(DataSet(ids, np.eye(2, dtype=np.float32)[ids[:, 0].astype(int) % 2]))
    return out


def _read_ids(url: str, options: dict) -> np.ndarray:
    """Every example id of the export under ``url``, through the manifest, in order."""
    batches = FileDataSetIterator(url, storage_options=options, prefetch=0)
    return np.concatenate([d.features[:, 0] for d in batches]).astype(np.int64)


def _described(error: BaseException) -> str:
    """``module.Type: message``, as the report of what a user sees."""
    return f"{type(error).__module__}.{type(error).__name__}: {error}"


@pytest.fixture
def proxy(s3_storage):
    with FaultProxy(upstream_of(s3_storage)) as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"s3://sparkbatch/faults-{uuid.uuid4().hex[:12]}"


def _puts_of(proxy: FaultProxy, name: str) -> list[str]:
    """The actions the proxy took on uploads of ``name``."""
    return [a for m, p, a in proxy.log if m == "PUT" and p.endswith("/" + name)]


# --- export_datasets on one machine ----------------------------------------------------------


FIFTH = {"method": "PUT", "path": "/dataset_", "after": 4}  # the 5th upload of a minibatch file
TRANSIENT = {
    # fault: (switch it on, extra botocore config, actions seen on the 5th file's uploads)
    "503": (lambda p: p.fail(1, 503, **FIFTH), {}, ["fail", "forward"]),
    "503 SlowDown": (lambda p: p.fail(1, 503, code="SlowDown", **FIFTH), {}, ["fail", "forward"]),
    "reset twice": (lambda p: p.reset(2, **FIFTH), {}, ["reset", "reset", "forward"]),
    "answer lost": (lambda p: p.drop(1, **FIFTH), {}, ["drop", "forward"]),
    "past read timeout": (
        lambda p: p.delay(1.5, 1, **FIFTH),
        {"read_timeout": 1},
        ["delay", "forward"],
    ),
}


@pytest.mark.parametrize("fault", list(TRANSIENT))
def test_transient_faults_mid_export_are_retried_and_the_export_is_whole(
    s3_storage, proxy, prefix, fault
):
    switch, config, expected = TRANSIENT[fault]
    options = proxied_options(s3_storage, proxy, **config)
    switch(proxy)
    urls = export_datasets(_items(), prefix, storage_options=options)
    assert _puts_of(proxy, "dataset_000004.safetensors") == expected
    assert len(urls) == ITEMS
    np.testing.assert_array_equal(_read_ids(prefix, options), np.arange(ITEMS * SIZE))
    np.testing.assert_array_equal(_read_ids(prefix, s3_storage), np.arange(ITEMS * SIZE))


def _assert_refused(prefix: str, options: dict) -> None:
    from sparkbatch.errors import IncompleteExportError

    for reader in (
        lambda: minibatch_files(prefix, storage_options=options),
        lambda: list(FileDataSetIterator(prefix, storage_options=options)),
    ):
        with pytest.raises(IncompleteExportError, match=re.escape(prefix)):
            reader()


LASTING = {
    # fault: (switch it on, what the export raises)
    "500 on every upload from the 5th": (
        lambda p: p.fail(10**6, 500, **FIFTH),
        OSError,
    ),
    "503 on the manifest": (
        lambda p: p.fail(10**6, 503, method="PUT", path="/_manifest.json"),
        OSError,
    ),
    "server stopped at the 5th upload": (lambda p: p.stop_at(**FIFTH), Exception),
    "resets from the 5th upload": (lambda p: p.reset(10**6, **FIFTH), Exception),
}


@pytest.mark.parametrize("fault", list(LASTING))
def test_lasting_faults_fail_the_export_and_readers_refuse_it_until_rerun(
    s3_storage, proxy, prefix, fault
):
    switch, raised = LASTING[fault]
    options = proxied_options(s3_storage, proxy, **QUICK)
    switch(proxy)
    with pytest.raises(raised) as failed:
        export_datasets(_items(), prefix, storage_options=options)
    print(f"{fault}: {_described(failed.value)}")
    proxy.clear()
    proxy.resume()
    written = list_files(prefix, suffix=".safetensors", storage_options=s3_storage)
    assert len(written) >= 4  # the files before the fault are there ...
    _assert_refused(prefix, options)  # ... but no reader takes them for the data set
    _assert_refused(prefix, s3_storage)
    urls = export_datasets(_items(), prefix, storage_options=options, overwrite=True)
    assert len(urls) == ITEMS
    np.testing.assert_array_equal(_read_ids(prefix, options), np.arange(ITEMS * SIZE))


def test_an_overwrite_whose_removal_of_the_old_export_fails_is_refused_until_rerun(
    s3_storage, proxy, prefix
):
    export_datasets(_items(), prefix, storage_options=s3_storage)  # a complete export
    options = proxied_options(s3_storage, proxy, **QUICK)
    proxy.fail(10**6, 500, method="POST", path="?delete")  # s3fs removes files in one POST
    with pytest.raises(OSError):
        export_datasets(_items(4), prefix, storage_options=options, overwrite=True)
    assert "fail" in [a for m, _, a in proxy.log if m == "POST"]
    proxy.clear()
    _assert_refused(prefix, options)  # neither the old export nor the new one
    urls = export_datasets(_items(4), prefix, storage_options=options, overwrite=True)
    assert len(urls) == 4
    assert list_files(prefix, suffix=".safetensors", storage_options=options) == urls
    np.testing.assert_array_equal(_read_ids(prefix, options), np.arange(4 * SIZE))


def test_a_failed_upload_names_the_file(s3_storage, proxy, prefix):
    options = proxied_options(s3_storage, proxy, **QUICK)
    proxy.fail(10**6, 500, **FIFTH)
    with pytest.raises(OSError) as failed:
        export_datasets(_items(), prefix, storage_options=options)
    assert "dataset_000004.safetensors" in str(failed.value)


@pytest.mark.parametrize("fault", ["stopped", "reset"])
def test_a_lost_connection_fails_the_export_with_an_oserror_naming_the_file(
    s3_storage, proxy, prefix, fault
):
    options = proxied_options(s3_storage, proxy, **QUICK)
    if fault == "stopped":
        proxy.stop_at(**FIFTH)
    else:
        proxy.reset(10**6, **FIFTH)
    with pytest.raises(OSError, match=re.escape(f"{prefix}/dataset_000004.safetensors")):
        export_datasets(_items(), prefix, storage_options=options)


def test_a_truncated_download_is_retried_or_refused_never_read_as_data(s3_storage, proxy, prefix):
    export_datasets(_items(), prefix, storage_options=s3_storage)
    options = proxied_options(s3_storage, proxy, **QUICK)
    proxy.truncate(2, method="GET", path="/dataset_000003")
    np.testing.assert_array_equal(_read_ids(prefix, options), np.arange(ITEMS * SIZE))
    assert [a for m, p, a in proxy.log if "dataset_000003" in p and m == "GET"][:2] == [
        "truncate",
        "truncate",
    ]
    proxy.truncate(10**6, method="GET", path="/dataset_000003")
    with pytest.raises(OSError, match="(?i)payload|not enough data|content length") as failed:
        load(f"{prefix}/dataset_000003.safetensors", storage_options=options)
    assert failed.value.filename == f"{prefix}/dataset_000003.safetensors"
    print(f"truncated: {_described(failed.value)}")


# --- batch_and_export on local Spark ---------------------------------------------------------


def _spark_export(sc, prefix: str, options: dict, **kwargs) -> list[str]:
    from sparkbatch.spark import batch_and_export

    rdd = sc.parallelize(_items(24), 2)  # 2 partitions of 60 examples: 6 files of 10 each
    return batch_and_export(rdd, prefix, 10, storage_options=options, **kwargs)


@pytest.mark.spark
def test_spark_export_retries_transient_faults_mid_export(sc, s3_storage, proxy, prefix):
    options = proxied_options(s3_storage, proxy)
    proxy.fail(1, 503, method="PUT", path="/part-", after=5)
    proxy.reset(1, method="PUT", path="/part-", after=7)
    urls = _spark_export(sc, prefix, options)
    assert len(urls) == 12
    faults = [a for _, p, a in proxy.log if "/part-" in p and a != "forward"]
    assert sorted(faults) == ["fail", "reset"]
    np.testing.assert_array_equal(_read_ids(prefix, options), np.arange(120))


SPARK_LASTING = {
    # fault: (switch it on, what batch_and_export raises on the driver, and a regex of it)
    # s3fs's OSError on an executor is raised again as an OSError (spark.executor_errors) ...
    "500 from the 6th upload": (
        lambda p: p.fail(10**6, 500, method="PUT", path="/part-", after=5),
        OSError,
        "injected by tests/faults.py",
    ),
    # ... botocore's EndpointConnectionError is not a builtin: it stays PySpark's exception.
    "server stopped at the 6th upload": (
        lambda p: p.stop_at(method="PUT", path="/part-", after=5),
        Exception,
        "(?i)could not connect to the endpoint",
    ),
}


@pytest.mark.spark
@pytest.mark.parametrize("fault", list(SPARK_LASTING))
def test_spark_export_with_lasting_faults_fails_and_is_refused_until_rerun(
    sc, s3_storage, proxy, prefix, fault
):
    from sparkbatch.errors import IncompleteExportError
    from sparkbatch.spark import list_paths

    switch, raised, text = SPARK_LASTING[fault]
    options = proxied_options(s3_storage, proxy, **QUICK)
    switch(proxy)
    with pytest.raises(raised, match=text) as failed:
        _spark_export(sc, prefix, options)
    print(f"{fault}: {_described(failed.value)}"[:3000])
    proxy.clear()
    proxy.resume()
    assert len(list_files(prefix, suffix=".safetensors", storage_options=s3_storage)) >= 5
    with pytest.raises(IncompleteExportError, match=re.escape(prefix)):
        list_paths(sc, prefix, storage_options=options)
    _assert_refused(prefix, options)
    if "stopped" in fault:  # (one re-run is enough: each costs a Spark job)
        urls = _spark_export(sc, prefix, options, overwrite=True)
        assert len(urls) == 12
        np.testing.assert_array_equal(_read_ids(prefix, options), np.arange(120))


@pytest.mark.spark
def test_an_executor_storage_error_keeps_its_errno_and_filename(sc):
    import errno

    from sparkbatch.spark import executor_errors

    url = "s3://bucket/dir/part-00000-000003.safetensors"

    def throttled(_):
        raise OSError(errno.EBUSY, "Please reduce your request rate.", url)

    with pytest.raises(OSError) as failed, executor_errors():
        sc.parallelize([1], 1).map(throttled).collect()
    assert (failed.value.errno, failed.value.filename) == (errno.EBUSY, url)


def test_unreachable_storage_is_an_oserror_naming_the_url_everywhere():
    import socket

    from sparkbatch.storage import exists, is_directory, read_bytes

    with socket.socket() as closed:  # a port with nothing listening once closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"total_max_attempts": 1}, "connect_timeout": 2},
    }
    url = "s3://sparkbatch/nowhere"
    for call in (
        lambda: export_datasets(_items(2), url, storage_options=options),
        lambda: FileDataSetIterator(url, storage_options=options),
        lambda: minibatch_files(url, storage_options=options),
        lambda: load(f"{url}/a.safetensors", storage_options=options),
        lambda: exists(url, storage_options=options),
        lambda: is_directory(url, storage_options=options),
        lambda: read_bytes(f"{url}/a.safetensors", storage_options=options),
    ):
        with pytest.raises(OSError, match="(?i)could not connect") as failed:
            call()
        assert failed.value.filename is not None and failed.value.filename.startswith(url)
