"""A real Spark Connect server on 127.0.0.1 (helpers.dev.connect), started from the
installed pyspark: pyspark 4's own jar, or on pyspark 3.5 spark-connect_2.12-3.5.7 from Maven
Central. What a client sees: a Connect session (no SparkContext), ANSI SQL, pandas UDFs in
the server's Python workers importing this project; who can reach it; start, status, stop.

The shared server is conftest's ``connect_remote``; one test starts its own to stop it.
Without the client's packages or the server's jar the tests skip, naming why.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import psutil
import pytest

from helpers import PROJECT_ROOT
from helpers.dev.connect import (
    PROPERTIES_FILE,
    STATE_FILE,
    TOKEN_FILE,
    ConnectServer,
    connect_server,
    main,
    server_conf,
    start,
    stop,
    supports_binding_address,
    unavailable,
)
from helpers.env import MAVEN_REPO_ENV
from helpers.spark import jars
from helpers.spark.versions import spark_version

VERSION = spark_version()


def remote_session(url: str):
    """A Connect session on ``url`` that leaves this process's Spark state alone (not the
    builder's shared default session, which would switch pyspark to Connect for the run)."""
    from pyspark.sql.connect.session import SparkSession as RemoteSession

    return RemoteSession(connection=url)


@pytest.fixture(scope="module")
def session(connect_remote: str) -> Iterator:
    """A Connect session on the shared server, for this module."""
    remote = remote_session(connect_remote)
    yield remote
    remote.client.close()


def workers_view(remote) -> pd.DataFrame:
    """What the server's Python workers run and import, asked through ``mapInPandas``."""

    def describe(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import os
        import sys

        import helpers
        from helpers.features.models import MODELS

        for frame in frames:
            yield pd.DataFrame(
                {
                    "id": frame["id"],
                    "python": sys.executable,
                    "helpers": helpers.__file__,
                    "models": ",".join(sorted(MODELS)),
                    "pid": os.getpid(),
                }
            )

    schema = "id long, python string, helpers string, models string, pid long"
    return remote.range(4).mapInPandas(describe, schema).toPandas()


def server_pid(port: int) -> int:
    """The process listening on 127.0.0.1:``port``."""
    for connection in psutil.net_connections(kind="inet"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return connection.pid
    raise AssertionError(f"nothing listens on port {port}")


def outside_address() -> str | None:
    """An IPv4 address of this machine that is not a loopback one, if it has one."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def test_server_conf_is_serverless_like() -> None:
    """ANSI SQL, no UI, the port; 127.0.0.1 binding where Spark has the setting (4.0)."""
    conf = server_conf("local[2]", 15999, sys.executable, "4.0.2")
    assert conf["spark.sql.ansi.enabled"] == "true"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.connect.grpc.binding.port"] == "15999"
    assert conf["spark.connect.grpc.binding.address"] == "127.0.0.1"
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.pyspark.python"] == sys.executable
    assert "spark.connect.grpc.binding.address" not in server_conf("local[2]", 1, "py", "3.5.8")
    assert all("token" not in key and "secret" not in key for key in conf)


def test_server_jar_shipped_or_fetched_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyspark 4 ships the server's jar (nothing to fetch); for 3.5, fetch caches 3.5.7's
    from the Maven repository (SHA-1 checked), and a damaged copy is refused naming fetch."""
    assert jars.connect_artifact("3.5.8").file_name == "spark-connect_2.12-3.5.7.jar"
    assert jars.connect_artifact("4.0.2") is None
    monkeypatch.setenv("FRUITS_JARS_CACHE", str(tmp_path / "cache"))
    shipped = jars.shipped_connect_jar()
    if shipped is not None:
        assert jars.connect_jar(VERSION) == (shipped, False)
        assert jars.fetch_connect(VERSION) is None
        return
    repo = tmp_path / "repo"
    source = Path(jars.CONNECT_ARTIFACTS["3.5"].url(str(repo)))
    source.parent.mkdir(parents=True)
    source.write_bytes(b"connect" * 100)
    source.with_name(source.name + ".sha1").write_text(
        hashlib.sha1(source.read_bytes()).hexdigest()
    )
    monkeypatch.setenv(MAVEN_REPO_ENV, f"file://{repo}")
    with pytest.raises(FileNotFoundError, match="helpers.spark.jars fetch"):
        jars.connect_jar(VERSION)
    fetched = jars.fetch_connect(VERSION)
    assert jars.connect_jar(VERSION) == (fetched, True)
    assert fetched.read_bytes() == source.read_bytes()
    fetched.write_bytes(b"damaged" * 100)
    with pytest.raises(FileNotFoundError, match="helpers.spark.jars fetch"):
        jars.connect_jar(VERSION)


@pytest.mark.slow
def test_session_is_connect_with_ansi(session) -> None:
    """The client holds a Connect session (no SparkContext) on a server with ANSI SQL on."""
    assert session.conf.get("spark.sql.ansi.enabled") == "true"
    with pytest.raises(Exception, match="DIVIDE_BY_ZERO"):
        session.sql("SELECT 1 / 0").collect()
    with pytest.raises(Exception, match="sparkContext"):
        session.sparkContext  # noqa: B018 (the attribute's access is the test)
    assert session.version == VERSION


@pytest.mark.slow
def test_pandas_udf_runs_in_server_python_importing_helpers(session) -> None:
    """mapInPandas runs in the server's Python workers: this interpreter, this project."""
    view = workers_view(session)
    assert sorted(view["id"]) == [0, 1, 2, 3]
    assert set(view["python"]) == {sys.executable}
    assert {Path(f).parent.parent for f in view["helpers"]} == {PROJECT_ROOT}
    assert "mobilenet_v2" in view["models"].iloc[0]
    assert not set(view["pid"]) & {psutil.Process().pid}


@pytest.mark.slow
def test_only_loopback_clients_are_answered(connect_remote: str, session) -> None:
    """Spark 4: the server listens on 127.0.0.1 alone and asks for the token. Spark 3.5
    listens on every interface (no setting for it) and refuses other peers' calls."""
    port = int(connect_remote.rsplit(":", 1)[1])
    pid = server_pid(port)
    listening = {
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    outside = outside_address()
    if supports_binding_address(VERSION):
        assert listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        if outside:
            with socket.socket() as probe:
                assert probe.connect_ex((outside, port)) != 0
        tokenless = remote_session(f"{connect_remote}/;token=wrong")
        with pytest.raises(Exception, match="(?i)unauthenticated|invalid|token"):
            tokenless.range(1).count()
        tokenless.client.close()
    else:
        assert "--jars" in psutil.Process(pid).cmdline()
        if outside is None:
            pytest.skip("no address of this machine outside the loopback to call from")
        stranger = remote_session(f"sc://{outside}:{port}")
        with pytest.raises(Exception, match="loopback clients only"):
            stranger.range(1).count()
        stranger.client.close()
    assert session.range(3).count() == 3  # loopback clients still are answered


@pytest.mark.slow
def test_start_twice_refused_stop_leaves_no_process(tmp_path: Path) -> None:
    """A second start in the same state folder names the running server; stop ends the JVM
    and its Python workers and deletes the record, token and settings; stop again is a no-op."""
    if unavailable():
        pytest.skip(unavailable())
    state = tmp_path / "connect"
    server = start("local[1]", state)
    try:
        assert isinstance(server, ConnectServer)
        remote = server.session()
        workers_view(remote)  # Python workers now run under the JVM
        remote.client.close()
        processes = [psutil.Process(server.pid)]
        processes += processes[0].children(recursive=True)
        assert any("python" in p.name() for p in processes[1:]), processes
        with pytest.raises(RuntimeError, match=f"already running.*{server.url}.*{server.pid}"):
            start("local[1]", state)
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["status", "--state-dir", str(state)]) == 0
        described = json.loads(out.getvalue())
        assert described["running"] and described["url"] == server.url
        if server.token:  # kept in files of this user's only, shown nowhere
            assert server.token not in out.getvalue() + repr(server)
            assert (state / TOKEN_FILE).stat().st_mode & 0o077 == 0
        assert (state / STATE_FILE).stat().st_mode & 0o077 == 0
        assert (state / PROPERTIES_FILE).stat().st_mode & 0o077 == 0
    finally:
        assert stop(state)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0
    for name in (STATE_FILE, TOKEN_FILE, PROPERTIES_FILE):
        assert not (state / name).exists()
    assert stop(state) is False


#: ``workers_view`` in a child process: pyspark 4.0.2's client shares a class-level release
#: lock across a process's clients, and one left by an earlier server's client can hold it.
_VIEW_IN_CHILD = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from test_dev_connect import remote_session, workers_view\n"
    "remote = remote_session(sys.stdin.readline().strip())\n"
    "print(workers_view(remote).to_json(orient='records'))\n"
    "remote.client.close()\n"
)


@pytest.mark.slow
def test_server_on_the_standalone_cluster(cluster, tmp_path: Path) -> None:
    """A server whose master is this machine's standalone cluster (its secret read from the
    cluster's properties): the pandas UDF runs in the executors' Python workers."""
    if unavailable():
        pytest.skip(unavailable())
    state = tmp_path / "connect"
    with connect_server(cluster.master_url, state) as server:
        url = f"{server.url}/;token={server.token}" if server.token else server.url
        asked = subprocess.run(  # the token through stdin, on no command line
            [sys.executable, "-c", _VIEW_IN_CHILD, str(Path(__file__).parent)],
            input=url + "\n",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert asked.returncode == 0, asked.stderr[-3000:]
        view = pd.DataFrame(json.loads(asked.stdout.strip().splitlines()[-1]))
        assert set(view["python"]) == {sys.executable}
        executors = {
            p.pid
            for pid in cluster.worker_pids
            for p in psutil.Process(pid).children(recursive=True)
        }
        assert set(view["pid"]) <= executors  # under the workers, not the server's JVM
        assert cluster.secret not in (state / "connect.json").read_text()


@pytest.mark.slow
def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    """A JVM that exits at once (an invalid heap size) fails start with the tail of its log,
    and leaves no record, token or settings behind."""
    if unavailable():
        pytest.skip(unavailable())
    state = tmp_path / "connect"
    with pytest.raises(RuntimeError, match=r"(?s)connect-server .* exited.*heap size"):
        start("local[1]", state, driver_memory="1x")
    for name in (STATE_FILE, TOKEN_FILE, PROPERTIES_FILE):
        assert not (state / name).exists()
