"""Parameter averaging on bad input and faults, on a real local Spark, with both exchanges:
NaN and infinity in minibatches, diverging training, failing loaders, and what a fit leaves
behind in the driver (sockets, threads, shared memory, temporary directories)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading

import numpy as np
import pytest

from sparkbatch import DivergenceError, NonFiniteError
from sparkbatch.data import DataSet, Source, load
from sparkbatch.nn import SGD, Adam, Dense, Network, Output
from sparkbatch.train import ParameterAveraging, SparkNetwork

EXCHANGES = ["spark", "socket", "ring"]
SKIP_HINT = "fix the data, or skip such minibatches with ParameterAveraging(non_finite='skip')"


def _data(n: int = 120, seed: int = 0) -> DataSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3], axis=1)]
    return DataSet(x, y)


def _network(updater=None) -> Network:
    return Network(
        [Dense(4, 8, "tanh"), Output(8, 3, "softmax", "cross_entropy")],
        updater or SGD(0.2),
        seed=1,
    )


def _master(exchange: str, **kwargs) -> ParameterAveraging:
    settings = dict(batch_size_per_worker=10, averaging_frequency=2, workers=2, shuffle=False)
    return ParameterAveraging(exchange=exchange, **{**settings, **kwargs})


def _spoil(data: DataSet, example: int, array: str, value: float) -> DataSet:
    features, labels = data.features.copy(), data.labels.copy()
    {"features": features, "labels": labels}[array][example, 1] = value
    return DataSet(features, labels)


def _files(directory, data: DataSet) -> list[str]:
    """``data`` as files of 10 examples, in order: m-00 ... m-11."""
    paths = []
    for i, part in enumerate(data.split(10)):
        paths.append(os.path.join(directory, f"m-{i:02d}.safetensors"))
        part.save(paths[-1])
    return paths


# --- NaN and infinity in the minibatches ---------------------------------------------------------


@pytest.mark.spark
@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize(
    ("array", "value", "shown"),
    [("features", np.nan, "nan"), ("features", np.inf, "inf"), ("labels", np.nan, "nan")],
    ids=["nan-feature", "inf-feature", "nan-label"],
)
def test_a_non_finite_value_in_a_file_is_an_error_naming_the_round_worker_and_file(
    sc, tmp_path, exchange, array, value, shown
):
    files = _files(tmp_path, _spoil(_data(), 47, array, value))  # file 4, its example 7
    net = _network()
    with pytest.raises(NonFiniteError) as info:
        SparkNetwork(sc, net, _master(exchange)).fit(str(tmp_path))
    # Round 0 fits files 0-3; in round 1 worker 0 has files 4 and 5.
    expected = (
        f"round 1 (epoch 0), worker 0, {files[4]}: {array} hold {shown} at example 7, column 1; "
        f"{SKIP_HINT}"
    )
    assert str(info.value) == expected
    assert net.iteration == 2 and np.isfinite(net.params()).all()  # round 0 is kept


@pytest.mark.spark
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_non_finite_value_in_an_rdd_names_its_partition_and_examples(sc, exchange):
    # Partition 1 holds examples 60-119; example 83 is its 23rd: minibatch 2 (20-29), row 3.
    rdd = sc.parallelize(_spoil(_data(), 83, "labels", np.nan).split(30), 2)
    where = "RDD partition 1, minibatch 2 (examples 20-29 of the partition)"
    detail = f"labels hold nan at example 3, column 1; {SKIP_HINT}"
    for approach in ("direct", "export"):
        master = _master(exchange, approach=approach)
        with pytest.raises(NonFiniteError) as info:
            SparkNetwork(sc, _network(), master).fit(rdd)
        assert re.fullmatch(
            rf"round \d+ \(epoch 0\), worker \d, {re.escape(where)}: {re.escape(detail)}",
            str(info.value),
        ), (approach, str(info.value))


@pytest.mark.spark
def test_skip_mode_counts_the_skipped_minibatches_and_both_exchanges_agree(sc, tmp_path):
    _files(tmp_path, _spoil(_data(), 47, "features", np.nan))
    fitted = {}
    for exchange in EXCHANGES:
        spark_net = SparkNetwork(sc, _network(Adam(0.01)), _master(exchange, non_finite="skip"))
        spark_net.fit(str(tmp_path), epochs=2)
        stats = spark_net.stats
        assert stats.skipped == 2 and sum(r.skipped for r in stats.rounds) == 2
        assert [r.skipped for r in stats.rounds] == [0, 1, 0] * 2
        assert stats.examples == 2 * 110
        assert "skipped     2 minibatches" in stats.summary()
        assert np.isfinite(spark_net.model.params()).all()
        fitted[exchange] = spark_net.model.params()
    np.testing.assert_allclose(fitted["socket"], fitted["spark"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fitted["ring"], fitted["spark"], rtol=0, atol=1e-6)


@pytest.mark.spark
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_worker_whose_minibatches_are_all_skipped_sits_the_round_out(sc, tmp_path, exchange):
    data = _data(40)
    data.features[20:40, 0] = np.inf  # files 2 and 3: worker 1's in the only round
    _files(tmp_path, data)
    spark_net = SparkNetwork(sc, _network(), _master(exchange, non_finite="skip"))
    spark_net.fit(str(tmp_path))
    [round_stats] = spark_net.stats.rounds
    assert (round_stats.workers, round_stats.examples, round_stats.skipped) == (1, 20, 2)
    assert spark_net.stats.skipped == 2


# --- divergence -----------------------------------------------------------------------------------


def _regression_files(directory, n: int = 120) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    _files(directory, DataSet(x, x @ np.ones((4, 1), np.float32) * 10))


def _regression_network(lr: float) -> Network:
    return Network([Dense(4, 8, "identity"), Output(8, 1, "identity", "mse")], SGD(lr), seed=1)


@pytest.mark.spark
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_diverging_fit_stops_naming_the_round_the_worker_and_the_minibatch(
    sc, tmp_path, exchange
):
    _regression_files(tmp_path)
    net = _regression_network(lr=5.0)
    with pytest.raises(DivergenceError) as info:
        SparkNetwork(sc, net, _master(exchange)).fit(str(tmp_path), epochs=5)
    message = str(info.value)
    assert re.fullmatch(
        rf"round (\d+) \(epoch \d\), worker \d, {re.escape(str(tmp_path))}/m-\d\d\.safetensors, "
        r"iteration \d+: training diverged: the score is nan and the gradient holds nan at "
        r"parameter \d+ \(layer \d's (weights, row \d+, column \d+|bias, column \d+)\); the "
        r"driver's model keeps its parameters of before this round: lower the learning rate "
        r"\(or check the data\)",
        message,
    ), message
    assert net.iteration == 2 * int(re.match(r"round (\d+)", message).group(1))
    assert np.isfinite(net.params()).all()


@pytest.mark.spark
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_an_average_that_overflows_is_caught_on_the_driver(sc, tmp_path, exchange):
    # One step takes each worker's parameters to about 2e38 (finite); their sum is inf.
    x = np.ones((20, 2), np.float32)
    _files(tmp_path, DataSet(x, np.full((20, 1), 1000, np.float32)))
    net = Network([Output(2, 1, "identity", "mse")], SGD(1e35), seed=0)
    before = net.params().copy()
    master = _master(exchange, averaging_frequency=1)
    with pytest.raises(DivergenceError) as info:
        SparkNetwork(sc, net, master).fit(str(tmp_path))
    assert str(info.value) == (
        "round 0 (epoch 0; epoch 1/1, round 1/1 of this fit): training diverged: the sum of the "
        "2 workers' parameters holds inf at index 0; the model keeps its parameters of before "
        "this round: lower the learning rate (or check the data)"
    )
    np.testing.assert_array_equal(net.params(), before)


# --- loaders ------------------------------------------------------------------------------------


class _BrokenLoader:
    """Fails on ``victim`` with an error that does not name the file."""

    def __init__(self, victim: str) -> None:
        self.victim = victim

    def load(self, source: Source) -> DataSet:
        if source.url == self.victim:
            raise ValueError("bad bytes in the header")
        return load(source.url)


@pytest.mark.spark
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_loaders_error_names_the_file_and_keeps_its_type(sc, tmp_path, exchange):
    files = _files(tmp_path, _data())
    with pytest.raises(ValueError) as info:
        SparkNetwork(sc, _network(), _master(exchange)).fit_paths(files, _BrokenLoader(files[5]))
    assert str(info.value).startswith(f"{files[5]}: bad bytes in the header\n")


def test_a_loader_error_that_cannot_take_a_message_gets_a_note_naming_the_file():
    from sparkbatch.data.loaders import load_named

    class Undecodable:
        def load(self, source):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    class Named:
        def load(self, source):
            raise FileNotFoundError(2, "No such file or directory", source.url)

    with pytest.raises(UnicodeDecodeError) as info:
        load_named(Undecodable(), Source("/data/x.bin"))
    if sys.version_info >= (3, 11):  # exception notes
        assert info.value.__notes__ == ["while loading /data/x.bin"]
    with pytest.raises(FileNotFoundError) as missing:
        load_named(Named(), Source("/data/y.bin"))
    assert missing.value.filename == "/data/y.bin" and missing.value.__cause__ is None


# --- what a fit leaves behind in the driver ------------------------------------------------------


def _listening_ports() -> set[int]:
    """The TCP ports this process listens on (its sockets in LISTEN state, from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, gone
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _driver_resources(servers: list) -> dict[str, object]:
    """What the socket exchange creates in the driver, and must not leave behind: its threads
    (all named sparkbatch-...), its listening sockets and socket pairs, sparkbatch shared
    memory and the export approach's temporary directories. Only these: py4j's connection
    pool and Spark's own threads grow lazily, whatever sparkbatch does."""
    ports = {server.address[1] for server in servers}
    shm = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return {
        "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("sparkbatch")),
        "listening": sorted(_listening_ports() & ports),
        "open sockets": sum(
            sock.fileno() >= 0 for server in servers for sock in server._connections.sockets()
        ),
        "connections": sum(server._connections.connections for server in servers),
        "shared memory": sorted(n for n in shm if n.startswith("sparkbatch")),
        "temporary": sorted(
            n for n in os.listdir(tempfile.gettempdir()) if n.startswith("sparkbatch-export")
        ),
    }


@pytest.fixture
def exchange_servers(monkeypatch) -> list:
    """Every AveragingServer started while the test runs."""
    from sparkbatch.train.socket_exchange import AveragingServer

    servers: list = []
    start = AveragingServer.__init__

    def recording(self, *args, **kwargs):
        start(self, *args, **kwargs)
        servers.append(self)

    monkeypatch.setattr(AveragingServer, "__init__", recording)
    return servers


class _FailingLoader:
    def load(self, source: Source) -> DataSet:
        raise RuntimeError("injected failure")


@pytest.mark.spark
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_socket_fit_leaves_no_socket_thread_shared_memory_or_directory_behind(
    sc, tmp_path, exchange_servers
):
    files = _files(tmp_path, _data())
    rdd = sc.parallelize(_data().split(30), 2)
    master = _master("socket")
    SparkNetwork(sc, _network(), master).fit_paths(files)  # Spark's own start-up first
    before = _driver_resources([])
    SparkNetwork(sc, _network(), master).fit_paths(files, epochs=2)
    SparkNetwork(sc, _network(), master).fit(rdd)  # the export approach's temporary files
    assert len(exchange_servers) == 3
    assert _driver_resources(exchange_servers) == before
    with pytest.raises(RuntimeError, match="injected failure"):
        SparkNetwork(sc, _network(), master).fit_paths(files, _FailingLoader())
    spoiled = sc.parallelize(_spoil(_data(), 3, "features", np.nan).split(30), 2)
    with pytest.raises(NonFiniteError):
        SparkNetwork(sc, _network(), master).fit(spoiled)
    assert len(exchange_servers) == 5
    assert _driver_resources(exchange_servers) == before


@pytest.mark.spark
@pytest.mark.parametrize("approach", ["export", "direct"])
def test_an_rdd_element_that_is_not_a_dataset_is_named_by_partition(sc, approach):
    ds = DataSet(np.zeros((8, 3), np.float32), np.eye(2, dtype=np.float32)[np.zeros(8, int)])
    net = Network([Dense(3, 4, "relu"), Output(4, 2)], SGD(0.1), seed=0)
    master = ParameterAveraging(
        batch_size_per_worker=4, averaging_frequency=1, workers=2, approach=approach
    )
    rdd = sc.parallelize([ds, {"features": 1}, ds], 2)
    with pytest.raises(TypeError, match=r"partition 1, element 0: expected a DataSet .* got dict"):
        SparkNetwork(sc, net, master).fit(rdd)
