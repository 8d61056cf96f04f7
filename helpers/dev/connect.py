"""A Spark Connect server on 127.0.0.1, run from the installed pyspark: the session kind
Databricks serverless and standard access mode give a notebook, on one machine::

    python -m helpers.connect start [--master spark://127.0.0.1:7077]
    export SPARK_CONNECT_AUTHENTICATE_TOKEN="$(cat .connect/token)"   # Spark 4: start prints it
    python -m helpers.run --spark-remote sc://localhost:PORT ...      # the URL start prints
    python -m helpers.connect status
    python -m helpers.connect stop

The server is Spark's own ``org.apache.spark.sql.connect.service.SparkConnectServer``,
started by ``spark-submit`` (pip's pyspark has no ``start-connect-server.sh``) on ``--master``
(``local[2]`` by default, or a ``spark://`` master such as :mod:`helpers.dev.cluster`'s).
pyspark 4 carries its jar; pyspark 3.5 does not, and ``python -m helpers.spark.jars fetch``
caches ``spark-connect_2.12-3.5.7`` from Maven Central (3.5.8 is not published there), which
goes on ``--jars``.

Its settings (a properties file, mode 0600, in the state folder: a cluster's secret and the
token stay off every command line): ANSI SQL on (serverless' default), the project's session
settings (:data:`helpers.spark.settings.SESSION_CONF`) and those :func:`get_spark` gives a
driver on that master (:func:`helpers.spark.session.master_conf`: loopback, class archive,
C1 JIT, Python worker daemon), the Python workers running this interpreter, no UI, the
warehouse in the state folder. It runs in the caller's working folder, so that relative
paths mean the same files to the client and the server.

Who may connect:

- Spark 4.0 binds to 127.0.0.1 (``spark.connect.grpc.binding.address``) and requires a
  token (``spark.connect.authenticate.token``), generated at ``start``, kept in the record
  and in ``<state_dir>/token`` (both 0600). A client passes it in
  ``$SPARK_CONNECT_AUTHENTICATE_TOKEN`` (pyspark reads it): pyspark 4's client then sends it
  over gRPC's local credentials only when the URL's host is ``localhost``, hence the
  ``sc://localhost:PORT`` URL (the server listens on 127.0.0.1 alone).
- Spark 3.5 has neither setting: its server listens on every interface
  (``NettyServerBuilder.forPort``) and its client sends a token only over TLS. So on 3.5
  :data:`LOOPBACK_INTERCEPTOR` (compiled once with the JDK's ``javac`` against the Connect
  jar, cached beside it) refuses every call whose peer is not a loopback address; the port
  is still open on the other interfaces, and any local user can connect. Without ``javac``
  the 3.5 server is not started unless ``allow_any_peer`` says so.

Tests use :func:`connect_server`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from helpers import caches, env
from helpers.config import check_master
from helpers.dev.cluster import spark_home
from helpers.dev.process import (
    HOST,
    free_port,
    identity,
    log_path,
    log_tail,
    read_record,
    recorded_status,
    same_process,
    spawn,
    stop_recorded,
    wait_until,
    write_private,
    write_record,
)
from helpers.paths import PROJECT_ROOT
from helpers.spark.jars import CONNECT_SERVER_CLASS, cache_dir, connect_jar, fetch_connect
from helpers.spark.session import cluster_properties, master_conf
from helpers.spark.settings import SESSION_CONF, executor_conf
from helpers.spark.versions import spark_version

log = logging.getLogger(__name__)

#: Where ``start`` records the server unless told otherwise (ignored by git).
DEFAULT_STATE_DIR = PROJECT_ROOT / ".connect"
STATE_FILE = "connect.json"
#: The server's settings (0600: a cluster's secret, the token).
PROPERTIES_FILE = "connect.properties"
#: The token alone (0600), for ``export SPARK_CONNECT_AUTHENTICATE_TOKEN="$(cat ...)"``.
TOKEN_FILE = "token"
#: The variable pyspark 4's client (and server) read the token from.
TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"
#: The server's name in error messages and its log's (``logs/connect-server.out``).
PROCESS = "connect-server"

#: Settings every server gets: serverless' ANSI SQL, no UI (a headless server).
SERVER_CONF = {
    "spark.sql.ansi.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.app.name": "fruits-connect",
}

#: The server's log (``<state_dir>/log4j2.properties``): warnings, and the line naming
#: its address; Spark's INFO lines print each query's plan.
LOG4J2 = {
    "rootLogger.level": "warn",
    "rootLogger.appenderRef.stdout.ref": "console",
    "appender.console.type": "Console",
    "appender.console.name": "console",
    "appender.console.target": "SYSTEM_ERR",
    "appender.console.layout.type": "PatternLayout",
    "appender.console.layout.pattern": "%d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex",
    "logger.connect.name": "org.apache.spark.sql.connect.service.SparkConnectServer",
    "logger.connect.level": "info",
}

#: A gRPC server interceptor refusing calls from other hosts: Spark 3.5's Connect server
#: binds every interface and has no authentication (see the module's docstring).
LOOPBACK_INTERCEPTOR = "FruitsLoopbackOnly"
_INTERCEPTOR_SOURCE = """\
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import org.sparkproject.connect.grpc.Grpc;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;
import org.sparkproject.connect.grpc.Status;

/** Refuses every call whose peer is not a loopback address (written by helpers.dev.connect). */
public class FruitsLoopbackOnly implements ServerInterceptor {
  @Override
  public <Q, R> ServerCall.Listener<Q> interceptCall(
      ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
    SocketAddress peer = call.getAttributes().get(Grpc.TRANSPORT_ATTR_REMOTE_ADDR);
    if (peer instanceof InetSocketAddress
        && ((InetSocketAddress) peer).getAddress().isLoopbackAddress()) {
      return next.startCall(call, headers);
    }
    call.close(Status.PERMISSION_DENIED.withDescription("loopback clients only"), new Metadata());
    return new ServerCall.Listener<Q>() {};
  }
}
"""


@dataclass
class ConnectServer:
    """A running Spark Connect server: its URL, process and the files ``start`` wrote."""

    url: str
    pid: int
    port: int
    master: str
    state_dir: str
    spark_version: str
    #: ``str(pid)`` -> :func:`helpers.dev.process.identity` of the server's JVM.
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token: str = field(default="", repr=False)  # never in a log line or a repr

    def save(self) -> None:
        """Write this server's record to ``<state_dir>/connect.json`` (0600: the token)."""
        write_record(self.state_dir, STATE_FILE, asdict(self))

    def client_env(self) -> dict[str, str]:
        """The environment a client process needs besides the URL: the token (Spark 4)."""
        return {TOKEN_ENV: self.token} if self.token else {}

    def session(self) -> Any:
        """A Connect session of this process on the server (the token passed, not exported).

        Not :meth:`SparkSession.builder.remote`'s shared default session: nothing of this
        process's Spark state changes, so a classic session may run beside it.
        """
        from pyspark.sql.connect.session import SparkSession as RemoteSession

        url = f"{self.url}/;token={self.token}" if self.token else self.url
        return RemoteSession(connection=url)


def supports_binding_address(version: str) -> bool:
    """Whether Spark ``version``'s Connect server binds to a given address and checks a
    token (``spark.connect.grpc.binding.address``, ``spark.connect.authenticate.token``:
    Spark 4.0)."""
    return int(version.split(".")[0]) >= 4


def interceptor_jar(connect: Path) -> Path | None:
    """The jar of :data:`LOOPBACK_INTERCEPTOR` built against ``connect`` (cached beside the
    jars, recorded by its SHA-256), or ``None`` without a ``javac``."""
    target = cache_dir() / f"fruits-loopback-{connect.stem}.jar"
    if target.is_file() and caches.verified(target, quick=True, action="built again"):
        return target
    javac = _jdk_tool("javac")
    jar_tool = _jdk_tool("jar")
    if javac is None or jar_tool is None:
        return None
    build = target.with_name(f".{target.stem}.{os.getpid()}.build")
    classes = build / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    try:
        source = build / f"{LOOPBACK_INTERCEPTOR}.java"
        source.write_text(_INTERCEPTOR_SOURCE)
        jars = ":".join([str(connect), *map(str, sorted((spark_home() / "jars").glob("*.jar")))])
        for command in (
            [javac, "--release", "17", "-cp", jars, "-d", str(classes), str(source)],
            [jar_tool, "cf", str(build / "out.jar"), "-C", str(classes), "."],
        ):
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode:
                raise RuntimeError(f"{' '.join(command[:1])} failed: {done.stderr[-2000:]}")
        (build / "out.jar").replace(target)
        caches.record(target)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def _jdk_tool(name: str) -> str | None:
    """A JDK tool of the Java that runs Spark (``$JAVA_HOME``), else the one on the PATH."""
    home = env.java_home()
    if home is not None and (home / "bin" / name).is_file():
        return str(home / "bin" / name)
    return shutil.which(name)


def unavailable(version: str | None = None) -> str:
    """Why no Connect server and client can run here for pyspark ``version`` (default: the
    installed one), or ``""``: the client's packages (the ``connect`` extra), the server's
    jar (fetched if missing), and on Spark 3.5 the ``javac`` of its loopback check."""
    from pyspark.sql.connect.utils import check_dependencies

    version = version or spark_version()
    try:
        check_dependencies("pyspark.sql.connect.session")
    except ImportError as exc:
        return f"the Spark Connect client cannot run ({exc}): pip install -e '.[connect]'"
    try:
        jar, _ = connect_jar(version)
    except FileNotFoundError as exc:
        try:
            fetch_connect(version)
            jar, _ = connect_jar(version)
        except OSError:
            return str(exc)
    if not supports_binding_address(version) and interceptor_jar(jar) is None:
        return f"Spark {version}'s Connect server needs javac for its loopback check (a JDK 17)"
    return ""


def server_conf(
    master: str, port: int, python: str, version: str, driver_memory: str = "4g"
) -> dict[str, str]:
    """The server's settings on ``master`` (see the module's docstring); no secret in them."""
    conf = {
        **executor_conf(python),
        **master_conf(master, driver_memory),
        **SESSION_CONF,
        **SERVER_CONF,
        "spark.connect.grpc.binding.port": str(port),
    }
    if supports_binding_address(version):
        conf["spark.connect.grpc.binding.address"] = HOST
    return conf


def _read_properties(path: Path) -> dict[str, str]:
    """The ``key value`` (or ``key = value``) lines of a Java properties file."""
    pairs = (line.replace("=", " ", 1).split(None, 1) for line in path.read_text().splitlines())
    return {p[0]: p[1].strip() for p in pairs if len(p) == 2 and not p[0].startswith("#")}


def read_state(state_dir: Path | str = DEFAULT_STATE_DIR) -> ConnectServer | None:
    """The server recorded in ``state_dir``, or ``None`` if none was started there."""
    record = read_record(state_dir, STATE_FILE)
    return None if record is None else ConnectServer(**record)


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((HOST, port)) == 0


def _jvm_identity(pid: int, timeout: float) -> dict[str, Any]:
    """The identity of ``pid`` once ``spark-submit`` has exec'd the JVM (same pid): its own
    command line, which the launcher rewrote from ours."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            command = psutil.Process(pid).cmdline()
        except psutil.NoSuchProcess:
            break
        if command and Path(command[0]).name == "java":
            return identity(pid, command)
        time.sleep(0.05)
    return identity(pid, [])  # start time alone (a launcher that failed: stop still works)


def start(
    master: str = "local[2]",
    state_dir: Path | str = DEFAULT_STATE_DIR,
    port: int = 0,
    python: str | None = None,
    driver_memory: str = "4g",
    allow_any_peer: bool = False,
    timeout: float = 180.0,
) -> ConnectServer:
    """Start a Spark Connect server on 127.0.0.1:``port`` (0: a free one) over ``master``.

    Returns once a Connect client has run a query on it; fails with the server's log if it
    exits or does not answer in ``timeout`` s, and, naming the running one, if a server
    recorded in ``state_dir`` still runs. ``python`` runs the Python workers (default:
    ``$PYSPARK_PYTHON`` or this interpreter). ``allow_any_peer``: start a Spark 3.5 server
    without the loopback check when no ``javac`` can build it.
    """
    master = check_master(master)
    state_dir = Path(state_dir).resolve()
    running = read_state(state_dir)
    if running is not None and same_process(asdict(running), running.pid):
        raise RuntimeError(
            f"a Spark Connect server is already running from {state_dir} ({running.url}, "
            f"pid {running.pid}): python -m helpers.connect stop --state-dir {state_dir}"
        )
    version = spark_version()
    jar, on_jars = connect_jar(version)
    extra_jars = [jar] if on_jars else []
    conf: dict[str, str] = {}
    if not supports_binding_address(version):
        guard = interceptor_jar(jar)
        if guard is not None:
            extra_jars.append(guard)
            conf["spark.connect.grpc.interceptor.classes"] = LOOPBACK_INTERCEPTOR
        elif not allow_any_peer:
            raise RuntimeError(
                f"Spark {version}'s Connect server listens on every interface without "
                f"authentication, and no javac is here to build its loopback check: install "
                f"a JDK 17 (apt-get install openjdk-17-jdk-headless), use pyspark 4, or pass "
                f"--allow-any-peer on a machine no one else can reach"
            )
    port = free_port(port)
    python = python or env.get(env.PYSPARK_PYTHON_ENV) or sys.executable
    state_dir.mkdir(parents=True, exist_ok=True)
    conf.update(server_conf(master, port, python, version, driver_memory))
    log4j = state_dir / "log4j2.properties"
    log4j.write_text("".join(f"{k} = {v}\n" for k, v in LOG4J2.items()))
    # not SPARK_CONF_DIR: it heads the class path, and the class archive wants pyspark's own
    options = conf.get("spark.driver.extraJavaOptions", "")
    conf["spark.driver.extraJavaOptions"] = f"{options} -Dlog4j2.configurationFile={log4j}".strip()
    conf["spark.sql.warehouse.dir"] = str(state_dir / "spark-warehouse")
    token = secrets.token_urlsafe(32) if supports_binding_address(version) else ""
    if token:
        conf["spark.connect.authenticate.token"] = token
    properties = cluster_properties(master)
    if properties is not None:  # the secret of this machine's cluster (helpers.dev.cluster)
        conf = {**_read_properties(properties), **conf}
    properties_file = state_dir / PROPERTIES_FILE
    write_private(properties_file, "".join(f"{k} {v}\n" for k, v in conf.items()))
    if token:
        write_private(state_dir / TOKEN_FILE, token + "\n")
    command = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        master,
        "--properties-file",
        str(properties_file),
        *(["--jars", ",".join(map(str, extra_jars))] if extra_jars else []),
        "--class",
        CONNECT_SERVER_CLASS,
    ]
    child_env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "PYSPARK_PYTHON": python,
        "SPARK_LOCAL_IP": HOST,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    child_env.pop("SPARK_REMOTE", None)  # spark-submit would start a client of it instead
    child_env.pop("PYSPARK_SUBMIT_ARGS", None)
    child_env.pop(TOKEN_ENV, None)  # the properties file holds this server's token
    host = "localhost" if token else HOST  # pyspark 4 sends a token to localhost only
    began = time.monotonic()
    pid = spawn(state_dir, PROCESS, command, child_env, cwd=Path.cwd())
    server = ConnectServer(f"sc://{host}:{port}", pid, port, master, str(state_dir), version)
    server.token = token
    server.processes[str(pid)] = _jvm_identity(pid, 30.0)
    server.save()
    try:
        wait_until(
            lambda: _listening(port),
            f"Spark Connect listening on {HOST}:{port}",
            timeout,
            {PROCESS: pid},
            state_dir,
        )
        _check_answers(server)
    except BaseException:
        stop(state_dir)
        raise
    log.info(
        "Spark Connect %s at %s on %s, up in %.1f s (log %s)",
        version,
        server.url,
        master,
        time.monotonic() - began,
        log_path(state_dir, PROCESS),
    )
    return server


#: The readiness query, in a child process: pyspark's Connect client shares a class-level
#: lock and thread pool across a process's clients, and a release left pending by one
#: stopped server's client once held them while the next server's check waited forever.
_CHECK = (
    "import sys\n"
    "from pyspark.sql.connect.session import SparkSession\n"
    "spark = SparkSession(connection=sys.stdin.readline().strip())\n"
    "print(spark.range(1).count())\n"
    "spark.client.close()\n"
)


def _check_answers(server: ConnectServer, timeout: float = 120.0) -> None:
    """Run a query through a Connect client (its own process); raise with the server's log
    if it fails."""
    url = f"{server.url}/;token={server.token}" if server.token else server.url
    path = log_path(Path(server.state_dir), PROCESS)
    try:
        done = subprocess.run(  # the URL (its token) through stdin: no command line shows it
            [sys.executable, "-c", _CHECK],
            input=url + "\n",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"the Spark Connect server at {server.url} did not answer in {timeout:.0f} s; its "
            f"log ({path}):\n{log_tail(path)}"
        ) from None
    if done.returncode != 0 or done.stdout.strip().splitlines()[-1:] != ["1"]:
        raise RuntimeError(
            f"the Spark Connect server at {server.url} does not answer "
            f"({done.stderr.strip().splitlines()[-1:] or done.stdout.strip()}); its log "
            f"({path}):\n{log_tail(path)}"
        )


def stop(state_dir: Path | str = DEFAULT_STATE_DIR, timeout: float = 20.0) -> bool:
    """Stop the server recorded in ``state_dir`` and its Python workers; delete its token and
    settings. Returns whether there was one. Safe twice."""
    record = stop_recorded(state_dir, STATE_FILE, lambda r: ([r["pid"]],), timeout)
    for name in (TOKEN_FILE, PROPERTIES_FILE):
        Path(state_dir, name).unlink(missing_ok=True)
    if record is None:
        return False
    log.info("stopped the Spark Connect server %s", record["url"])
    return True


def status(state_dir: Path | str = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """What the server recorded in ``state_dir`` says: URL, master, Spark version."""
    return recorded_status(state_dir, STATE_FILE, _describe, "url")


def _describe(record: dict[str, Any]) -> dict[str, Any]:
    """The server's URL and master, once its port answers (OSError: it is gone)."""
    if not _listening(record["port"]):
        raise ConnectionRefusedError(record["url"])
    described = {k: record[k] for k in ("url", "master", "spark_version", "pid")}
    if record.get("token"):
        described["token_file"] = str(Path(record["state_dir"], TOKEN_FILE))
    return described


@contextmanager
def connect_server(
    master: str = "local[2]", state_dir: Path | str = DEFAULT_STATE_DIR, **options: Any
) -> Iterator[ConnectServer]:
    """A Spark Connect server for the ``with`` block (tests' session fixture): always
    stopped after. ``options`` go to :func:`start`."""
    server = start(master, state_dir, **options)
    try:
        yield server
    finally:
        stop(state_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.connect start|stop|status``."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.connect", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--master", default="local[2]", help="the server's master")
    parser.add_argument("--port", type=int, default=0, help="its port (default: a free one)")
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="settings, logs")
    parser.add_argument(
        "--allow-any-peer",
        action="store_true",
        help="Spark 3.5 without javac: start with no loopback check (all interfaces)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.action == "start":
            server = start(
                args.master, args.state_dir, args.port, allow_any_peer=args.allow_any_peer
            )
            lines = [server.url]
            if server.token:
                token_file = Path(server.state_dir, TOKEN_FILE)
                lines.append(f'export {TOKEN_ENV}="$(cat {token_file})"')
            lines.append(f"python -m helpers.run --spark-remote {server.url} ...")
            sys.stdout.write("\n".join(lines) + "\n")
        elif args.action == "stop":
            if not stop(args.state_dir):
                log.info("no Spark Connect server recorded in %s", args.state_dir)
        else:
            sys.stdout.write(json.dumps(status(args.state_dir), indent=2) + "\n")
    except (FileNotFoundError, RuntimeError, TimeoutError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
