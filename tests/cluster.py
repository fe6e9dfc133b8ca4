"""A real Spark standalone cluster on 127.0.0.1 for tests, and a way to run jobs on it.

A Python process holds at most one SparkContext and the test session already has its ``local[2]``
one (``tests/conftest.py``), so a job on the cluster runs in a child Python process:

    from tests.cluster import run_on_cluster, standalone_cluster

    with standalone_cluster(workers=2) as cluster:
        result = run_on_cluster(cluster, '''
            import json
            from cluster import cluster_session
            spark = cluster_session()
            print(json.dumps({"n": spark.sparkContext.parallelize(range(10), 2).count()}))
        ''')
    assert result == {"n": 10}

NOTE [cluster scripts]: :func:`run_on_cluster` puts this folder (``tests/``) in front of the
child's ``PYTHONPATH`` (the rest stays as it was) and sets ``SPARKBATCH_TEST_MASTER`` to the
master URL, so a script does ``from cluster import cluster_session`` and gets a session with the
cluster's settings. The workers get the same ``PYTHONPATH`` (so their Python workers can import
``cluster`` and the installed ``sparkbatch``) and ``PYSPARK_PYTHON=sys.executable``. The script's
last line of standard output must be one JSON document: the result. Spark logs to standard
error, which is shown when the script fails.

The master, the workers and everything they start (executors, Python workers) run in their own
process groups, which are terminated, then killed, when the ``with`` block ends however it ends.
Test modules import this file as ``tests.cluster`` (pytest's importlib mode resolves it).

NOTE [shared driver]: a driver costs a JVM and, worse, two executor JVMs that the workers start
for its application (about 12 s of a 2-core machine before its first job). :class:`ClusterDriver`
is one long-lived driver process whose SparkSession every script sent to it shares: the scripts
run one after another in that process (``exec``, standard output captured per script), so
``cluster_session()`` there returns the driver's session, and a script must not stop it. The
suite's ``cluster_driver`` fixture (``tests/conftest.py``) is one such driver on the suite's one
shared cluster (fixture ``cluster``), with ``spark.task.maxFailures=2`` (:data:`DRIVER_CONF`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparkbatch.spark import recommended_conf

__all__ = [
    "FAST_START_JAVA_OPTS",
    "SESSION_CONF",
    "ClusterDriver",
    "DRIVER_CONF",
    "StandaloneCluster",
    "cluster_session",
    "processes_mentioning",
    "partition_info",
    "run_on_cluster",
    "spark_class",
    "standalone_cluster",
]

HOST = "127.0.0.1"
TESTS_DIR = str(Path(__file__).resolve().parent)
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
LOG_TAIL_CHARS = 4000
STOP_GRACE_S = 15.0
# NOTE [fast start]: on a 2-core machine six JVMs start at once (master, two workers, driver,
# two executors) and compete for the CPU with their JIT compilers. With the client compiler only
# and the serial collector the cluster starts in about 8 s instead of 14 s, and a driver has
# both executors about 12 s after it starts instead of 20 to 30 s. Tests run little JVM code, so
# the slower steady state costs nothing; cluster_session(conf=...) overrides the settings.
FAST_START_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
SESSION_CONF = {
    "spark.executor.cores": "1",
    "spark.cores.max": "2",
    "spark.executor.memory": "1g",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": HOST,
    "spark.driver.bindAddress": HOST,
    "spark.driver.extraJavaOptions": FAST_START_JAVA_OPTS,
    "spark.executor.extraJavaOptions": FAST_START_JAVA_OPTS,
    # SparkContext() waits until every executor asked for (cores.max / executor.cores) is there.
    "spark.scheduler.minRegisteredResourcesRatio": "1.0",
    "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
    # Unix domain sockets to the Python workers (NOTE [python task latency])
    **recommended_conf(),
}
# The shared driver's session (NOTE [shared driver]): a failed task is tried once more, as on the
# test session's local[2,2] master (the standalone default is 4 tries).
DRIVER_CONF = {"spark.task.maxFailures": "2"}
# The master's REST submission server would take the fixed port 6066; tests never submit there.
_DAEMON_CONF = "spark.master.rest.enabled false\n"


@dataclass
class StandaloneCluster:
    """A running cluster: its master URL, web UI and log files."""

    url: str
    webui_url: str
    root: Path
    master_log: Path
    worker_logs: list[Path]
    work_dirs: list[Path]
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def logs(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The tail of every daemon log and of every executor's stderr, for error messages."""
        paths = [self.master_log, *self.worker_logs]
        for work_dir in self.work_dirs:
            paths += sorted(work_dir.glob("*/*/stderr"))  # app-id/executor-id/stderr
        return "\n".join(f"--- {p} ---\n{_tail(p, chars)}" for p in paths)

    def status(self) -> dict[str, Any]:
        """The master's status JSON (``/json/``): ``status``, ``aliveworkers``, ``workers``, ..."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=5) as response:
            return json.load(response)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text`` (Linux ``/proc``).

    Every JVM of a cluster has its private conf folder on its class path, so
    ``processes_mentioning(str(cluster.root))`` lists what is left of it.
    """
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def spark_class() -> str:
    """Path of the ``spark-class`` script shipped inside the installed pyspark."""
    import pyspark

    path = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-class")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{path} is missing or not executable: the cluster tests need the spark-class "
            "script of a pip-installed pyspark"
        )
    return path


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read: {e})"


def _free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (held together so that they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pythonpath() -> str:
    rest = os.environ.get("PYTHONPATH", "")
    return TESTS_DIR + (os.pathsep + rest if rest else "")


def _daemon_env(root: Path) -> dict[str, str]:
    """Environment of the master and workers: private conf, log, work and scratch folders."""
    import pyspark

    env = dict(os.environ)
    for key in ("SPARK_MASTER_OPTS", "SPARK_WORKER_OPTS", "SPARK_DAEMON_JAVA_OPTS"):
        env.pop(key, None)  # a user's settings must not change the test cluster
    env.update(
        SPARK_HOME=os.path.dirname(pyspark.__file__),
        SPARK_CONF_DIR=str(root / "conf"),
        SPARK_LOG_DIR=str(root / "logs"),
        SPARK_WORKER_DIR=str(root / "work"),
        SPARK_LOCAL_DIRS=str(root / "local"),
        SPARK_LOCAL_IP=HOST,
        PYSPARK_PYTHON=sys.executable,
        PYTHONPATH=_pythonpath(),
        SPARK_DAEMON_JAVA_OPTS=FAST_START_JAVA_OPTS,
    )
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: executors and Python workers too
        )


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every process group, wait, then SIGKILL whatever is left (members included)."""
    for p in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    for p in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the group outlives its leader
        p.wait()


def _wait_until_listening(cluster: StandaloneCluster, port: int, deadline: float) -> None:
    """Wait until the master accepts connections on ``port``."""
    master = cluster.processes[0]
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        if master.poll() is not None or time.monotonic() > deadline:
            _wait_until_alive(cluster, 0, deadline)  # raises with the reason and the logs
            return
        time.sleep(0.1)


def _wait_until_alive(cluster: StandaloneCluster, workers: int, deadline: float) -> None:
    """Poll the master's status JSON until it and ``workers`` workers are ALIVE."""
    names = ["master"] + [f"worker {i}" for i in range(len(cluster.processes) - 1)]
    state = "no answer from the master's web UI yet"
    while True:
        for p, name in zip(cluster.processes, names, strict=True):
            if p.poll() is not None:
                raise RuntimeError(
                    f"the Spark {name} exited with code {p.returncode} while the cluster "
                    f"started\n{cluster.logs()}"
                )
        try:
            status = cluster.status()
            alive = [w for w in status.get("workers", []) if w.get("state") == "ALIVE"]
            if status.get("status") == "ALIVE" and len(alive) >= workers:
                return
            state = f"master {status.get('status')}, {len(alive)} of {workers} workers ALIVE"
        except (OSError, ValueError) as e:  # not listening yet, or a half-written answer
            state = f"master web UI not answering ({e})"
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the Spark standalone cluster did not start in time: {state}\n{cluster.logs()}"
            )
        time.sleep(0.25)


@contextlib.contextmanager
def standalone_cluster(
    workers: int = 2,
    cores_per_worker: int = 1,
    memory: str = "1g",
    *,
    timeout: float = 90.0,
) -> Iterator[StandaloneCluster]:
    """Start a standalone master and ``workers`` workers on 127.0.0.1; stop them on exit.

    Each worker offers ``cores_per_worker`` cores and ``memory`` (a Spark size such as ``"1g"``)
    to executors. Waits until the master reports every worker ALIVE (at most ``timeout``
    seconds; the error shows the logs' tails). All files live in a temporary folder that is
    removed afterwards, and no JVM outlives the block, even when it raises.
    """
    launcher = spark_class()
    with tempfile.TemporaryDirectory(prefix="sparkbatch-cluster-") as tmp:
        root = Path(tmp)
        for name in ("conf", "logs", "work", "local"):
            (root / name).mkdir()
        (root / "conf" / "spark-defaults.conf").write_text(_DAEMON_CONF)
        env = _daemon_env(root)
        port, webui, *worker_webuis = _free_ports(2 + workers)
        cluster = StandaloneCluster(
            url=f"spark://{HOST}:{port}",
            webui_url=f"http://{HOST}:{webui}",
            root=root,
            master_log=root / "logs" / "master.log",
            worker_logs=[root / "logs" / f"worker-{i}.log" for i in range(workers)],
            work_dirs=[root / "work" / f"worker-{i}" for i in range(workers)],
        )
        try:
            master = [launcher, MASTER_CLASS, "--host", HOST, "--port", str(port)]
            master += ["--webui-port", str(webui)]
            cluster.processes.append(_start(master, env, cluster.master_log))
            # NOTE: a worker that finds no master retries only after 5 to 15 s, so the workers
            # start once the master listens (a worker needs several seconds more to connect).
            deadline = time.monotonic() + timeout
            _wait_until_listening(cluster, port, deadline)
            for i in range(workers):
                worker = [launcher, WORKER_CLASS, cluster.url, "--host", HOST]
                worker += ["--cores", str(cores_per_worker), "--memory", memory]
                worker += ["--webui-port", str(worker_webuis[i])]
                worker += ["--work-dir", str(cluster.work_dirs[i])]
                cluster.processes.append(_start(worker, env, cluster.worker_logs[i]))
            _wait_until_alive(cluster, workers, deadline)
            yield cluster
        finally:
            _stop(cluster.processes[1:])  # workers first: they stop their executors
            _stop(cluster.processes[:1])


def cluster_session(
    url: str | None = None,
    app_name: str = "sparkbatch-cluster-test",
    conf: dict[str, str] | None = None,
) -> Any:
    """A SparkSession on the test cluster, for scripts run by :func:`run_on_cluster`.

    ``url`` defaults to ``$SPARKBATCH_TEST_MASTER``. Two executors of one core and 1 GiB, no UI,
    the driver on 127.0.0.1 (:data:`SESSION_CONF`, updated with ``conf``). Creating the session
    waits (up to 60 s) until both executors have registered, so the first job really is spread
    over two executor JVMs.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:  # a script run by a ClusterDriver: its session, if the settings agree
        settings = active.sparkContext.getConf()
        differ = {k: v for k, v in (conf or {}).items() if settings.get(k) != v}
        if differ:
            raise RuntimeError(
                f"the driver's session was started without the settings {differ}: "
                "give them to ClusterDriver(conf=...)"
            )
        return active
    builder = SparkSession.builder.master(url or os.environ["SPARKBATCH_TEST_MASTER"])
    for key, value in {**SESSION_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.appName(app_name).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def partition_info(index: int, rows: Iterator[Any]) -> Iterator[dict[str, Any]]:
    """For ``mapPartitionsWithIndex``: which executor ran the partition, and its rows' sum.

    An executor runs in ``<work dir>/<app id>/<executor id>``, and so do its Python workers.
    """
    values = list(rows)
    time.sleep(0.5)  # hold the core, so the scheduler hands other partitions to other executors
    return iter([{"partition": index, "cwd": os.getcwd(), "pid": os.getpid(), "sum": sum(values)}])


def _driver_env(cluster: StandaloneCluster) -> dict[str, str]:
    """Environment of a driver process (NOTE [cluster scripts])."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY_")}
    env.update(
        SPARKBATCH_TEST_MASTER=cluster.url,
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOCAL_IP=HOST,
        PYTHONPATH=_pythonpath(),
    )
    return env


def _result(out: str, err: str) -> Any:
    """The JSON document on the last line of a script's standard output."""
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"the cluster script printed nothing\n--- stderr ---\n{err[-2000:]}")
    try:
        return json.loads(lines[-1])
    except ValueError as e:
        raise AssertionError(
            f"the last line of the cluster script's output is not JSON: {lines[-1]!r}"
        ) from e


def run_on_cluster(cluster: StandaloneCluster, script: str, timeout: float = 300) -> Any:
    """Run a Python script (text, dedented) in a child process against ``cluster``.

    See NOTE [cluster scripts]: the child finds ``cluster`` on its path and the master URL in
    ``$SPARKBATCH_TEST_MASTER``. Returns the JSON document on the last line of its standard
    output. Raises AssertionError with the exit code and the tails of its output and of the
    cluster's logs if it fails or runs past ``timeout`` seconds (then its process group is
    killed, its JVM included).
    """
    env = _driver_env(cluster)
    with tempfile.TemporaryDirectory(prefix="sparkbatch-driver-") as tmp:
        path = Path(tmp) / "job.py"
        path.write_text(textwrap.dedent(script))
        child = subprocess.Popen(
            [sys.executable, str(path)],
            cwd=tmp,  # spark-warehouse and friends land here, not in the repository
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop([child])
            stdout, stderr = child.communicate()
            problem = f"ran past its timeout of {timeout} s"
        else:
            problem = f"exited with code {child.returncode}" if child.returncode else ""
        finally:
            if child.poll() is None:
                _stop([child])
    out = stdout.decode("utf-8", "replace")
    err = stderr.decode("utf-8", "replace")
    if problem:
        raise AssertionError(
            f"the cluster script {problem}\n--- stdout ---\n{out[-LOG_TAIL_CHARS:]}\n"
            f"--- stderr ---\n{err[-LOG_TAIL_CHARS:]}\n{cluster.logs(1500)}"
        )
    return _result(out, err)


# The shared driver's loop (NOTE [shared driver]): one script a line (JSON text) on standard
# input; for each, one reply line of JSON on the reply pipe (the process's original standard
# output; descriptor 1 is standard error from then on, so nothing else, the JVM's output
# included, can land among the replies).
_DRIVER_LOOP = """
import contextlib, io, json, os, sys, traceback
reply = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
from cluster import cluster_session
spark = cluster_session(conf=json.loads(sys.argv[1]))
reply.write(json.dumps({"ready": spark.sparkContext.applicationId}) + "\\n")
reply.flush()
for line in sys.stdin:
    out, error = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(json.loads(line), "job.py", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        error = f"exited with code {e.code}"
    except BaseException:
        error = traceback.format_exc()
    reply.write(json.dumps({"stdout": out.getvalue(), "error": error}) + "\\n")
    reply.flush()
spark.stop()  # standard input closed: the application ends, its executors with it
"""


class ClusterDriver:
    """One driver process on ``cluster`` whose SparkSession the scripts sent to it share.

    See NOTE [shared driver]. The session starts with :data:`SESSION_CONF` updated with
    ``conf`` (a script's ``cluster_session(conf=...)`` must ask for no other settings).
    :meth:`run` is :func:`run_on_cluster` without a new driver; :meth:`close` ends the process
    (its application and executors with it). A script that fails or runs past its timeout
    raises AssertionError with its output and the logs; after a timeout the driver is gone.
    """

    def __init__(
        self, cluster: StandaloneCluster, conf: dict[str, str] | None = None, timeout: float = 300
    ) -> None:
        self.cluster = cluster
        self._dir = tempfile.TemporaryDirectory(prefix="sparkbatch-driver-")
        self._log = Path(self._dir.name) / "driver.log"
        (Path(self._dir.name) / "loop.py").write_text(_DRIVER_LOOP)
        self._replies: queue.Queue[str | None] = queue.Queue()
        with open(self._log, "wb") as log:
            self._child: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "loop.py", json.dumps(conf or {})],
                cwd=self._dir.name,  # spark-warehouse and friends land here
                env=_driver_env(cluster),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, args=(self._child.stdout,), daemon=True)
        self._reader.start()
        try:
            self.application_id = self._reply("start its session", timeout)["ready"]
        except BaseException:
            self.close()
            raise

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            self._replies.put(line)
        self._replies.put(None)  # the process closed its end: it exited

    def _reply(self, what: str, timeout: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            line, problem = None, f"did not {what} in {timeout} s"
        else:
            problem = f"exited while it should {what}"
        if line is None:
            log = _tail(self._log, LOG_TAIL_CHARS)
            self.close()
            raise AssertionError(
                f"the shared cluster driver {problem}\n--- its log ---\n{log}\n"
                f"{self.cluster.logs(1500)}"
            )
        return json.loads(line)

    def run(self, script: str, timeout: float = 300) -> Any:
        """Run ``script`` (text, dedented) in the driver; return the JSON of its last line."""
        if self._child is None:
            raise RuntimeError("the shared cluster driver is closed (an earlier script hung)")
        assert self._child.stdin is not None
        self._child.stdin.write(json.dumps(textwrap.dedent(script)) + "\n")
        self._child.stdin.flush()
        reply = self._reply("answer a script", timeout)
        if reply["error"]:
            raise AssertionError(
                f"the cluster script failed in the shared driver:\n{reply['error']}\n"
                f"--- stdout ---\n{reply['stdout'][-LOG_TAIL_CHARS:]}\n--- driver log ---\n"
                f"{_tail(self._log, LOG_TAIL_CHARS)}\n{self.cluster.logs(1500)}"
            )
        return _result(reply["stdout"], _tail(self._log, 2000))

    def close(self) -> None:
        """End the driver: its session ends when its standard input closes; killed if late."""
        child, self._child = self._child, None
        if child is not None:
            assert child.stdin is not None
            with contextlib.suppress(OSError):
                child.stdin.close()
            try:
                child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _stop([child])
            self._reader.join(timeout=5)
            assert child.stdout is not None
            child.stdout.close()
            _stop([child])  # its process group: whatever it started and left
        self._dir.cleanup()
