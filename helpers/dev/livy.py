"""An Apache Livy server on 127.0.0.1 for the notebooks under sparkmagic's PySpark kernel.

EMR's JupyterHub runs notebooks in sparkmagic's PySpark kernel: each cell goes to Apache
Livy, which runs it in a PySpark session on the cluster. This module reproduces that chain
on one machine with the pip-installed Spark::

    python -m helpers.livy install                  # the Livy distribution, once (cached)
    python -m helpers.livy start [--master spark://127.0.0.1:7077]
    export SPARKMAGIC_CONF_DIR=.livy/sparkmagic     # start prints it
    python -m helpers.run --kernel pysparkkernel --data-root data_sample --output-root outputs
    python -m helpers.livy status
    python -m helpers.livy stop

Where Livy comes from: Maven Central serves ``livy-server`` and ``livy-rsc`` only up to
0.7.1-incubating (Scala 2.11, Spark 2) and no ``livy-repl`` jar at all, so a Livy for
Spark 3.5 cannot be put together from Maven Central jars. :func:`install` takes, in this
order: a Livy binary distribution already unpacked (``$FRUITS_LIVY_HOME``), the cached one
(``~/.cache/fruits/livy/``, ``$FRUITS_LIVY_CACHE``), a binary zip (``--dist``,
``$FRUITS_LIVY_DIST``, or ``../shared/livy/<name>.zip`` beside the repository: the official
``apache-livy-0.9.0-incubating_2.12-bin.zip`` from livy.apache.org). Nothing of it is
committed.

Livy 0.9.0 is used: 0.8.0 (EMR 7's) was built for Spark 3.2 and marks Spark >= 3.1 as not
verified; 0.9.0 is built for Spark 3.5 (3.5.6, Scala 2.12).

``start`` writes ``livy.conf`` (127.0.0.1, a free port, ``livy.spark.master``, the repl and
rsc jars, no Hive context, CSRF protection: a POST, PUT or DELETE without an
``X-Requested-By`` header is refused, so a web page cannot drive Livy through a browser), a
``spark-defaults.conf`` carrying the project's Python
(``spark.pyspark.python``, the worker daemon) to every session, and sparkmagic's
``config.json`` with EMR's settings (``all_errors_are_fatal``, startup and heartbeat
timeouts) and the ``X-Requested-By`` header (``custom_headers``: sparkmagic 0.23 sends none
of its own) into ``$SPARKMAGIC_CONF_DIR`` or ``.livy/sparkmagic``; it installs sparkmagic's
``pysparkkernel`` into this environment (``sys.prefix``, through jupyter_client) and
returns once Livy answers. Tests use :func:`livy_server`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers import env
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
from helpers.spark.jars import Artifact, maven_repo
from helpers.spark.session import cluster_properties
from helpers.spark.settings import LOCAL_CONF, executor_conf

log = logging.getLogger(__name__)

LIVY_VERSION = "0.9.0-incubating"
SCALA_VERSION = "2.12"
#: The name of Livy's binary distribution (folder in the zip, and the zip's stem).
DIST_NAME = f"apache-livy-{LIVY_VERSION}_{SCALA_VERSION}-bin"

#: The Spark line Livy 0.9.0's repl is built for (its ``_2.12`` distribution).
SPARK_LINE = "3"


def unsupported_spark(spark_version: str | None = None) -> str:
    """Why Livy cannot run sessions on ``spark_version`` (the installed pyspark), or ``""``.

    Livy 0.9.0's repl is compiled for Spark 3 and Scala 2.12; Spark 4 is Scala 2.13 only
    and no Livy release runs it yet, so its sessions would die at start.
    """
    if spark_version is None:
        import pyspark

        spark_version = pyspark.__version__
    if spark_version.split(".")[0] == SPARK_LINE:
        return ""
    return (
        f"Livy {LIVY_VERSION} is built for Spark 3 / Scala {SCALA_VERSION}, and this pyspark "
        f"is {spark_version} (Spark 4 is Scala 2.13 only): no Livy release runs it; use a "
        f"pyspark 3.5 environment (constraints.txt) for Livy"
    )


#: A distribution zip beside the repository (this project's offline machines).
SHARED_DIST = PROJECT_ROOT.parent / "shared" / "livy" / f"{DIST_NAME}.zip"

#: Where ``start`` records the server unless told otherwise (ignored by git).
DEFAULT_STATE_DIR = PROJECT_ROOT / ".livy"
STATE_FILE = "livy.json"
SERVER_CLASS = "org.apache.livy.server.LivyServer"
#: The server's name in error messages and its log's (``logs/livy-server.out``).
PROCESS = "livy-server"
KERNEL = "pysparkkernel"
#: The header Livy's CSRF protection asks of every POST, PUT and DELETE (any value).
CSRF_HEADER = {"X-Requested-By": "fruits"}

#: A jar each folder must hold.
KEY_JARS = {
    "jars": "livy-server-",
    "rsc-jars": "livy-rsc-",
    f"repl_{SCALA_VERSION}-jars": f"livy-repl_{SCALA_VERSION}-",
}

#: sparkmagic settings as EMR's JupyterHub sets them: a failed statement fails the cell
#: (and papermill), generous session start-up, heartbeats that keep a session alive.
SPARKMAGIC_SETTINGS: dict[str, Any] = {
    "all_errors_are_fatal": True,
    "livy_session_startup_timeout_seconds": 300,
    "wait_for_idle_timeout_seconds": 15,
    "heartbeat_refresh_seconds": 30,
    "heartbeat_retry_seconds": 10,
    "livy_server_heartbeat_timeout_seconds": 0,
    "shutdown_session_on_spark_statement_errors": True,
    "cleanup_all_sessions_on_exit": True,
    "use_auto_viz": False,
    "coerce_dataframe": True,
}


def cache_dir() -> Path:
    """The folder holding the Livy distribution (``$FRUITS_LIVY_CACHE`` moves it)."""
    return env.cache_dir("livy")


def livy_home() -> Path:
    """The Livy distribution the server runs: ``$FRUITS_LIVY_HOME`` or the cached one."""
    given = env.get(env.LIVY_HOME_ENV)
    return Path(given).expanduser() if given else cache_dir() / DIST_NAME


def missing_parts(home: Path) -> list[str]:
    """The folders of ``home`` that lack their Livy jar (empty: a usable distribution)."""
    return [
        folder
        for folder, prefix in KEY_JARS.items()
        if not any(home.joinpath(folder).glob(f"{prefix}*.jar"))
    ]


def _maven_has_repl() -> str:
    """Whether the Maven repository serves the livy-repl jar, in words (for error messages)."""
    repo = maven_repo()
    url = Artifact("org.apache.livy", f"livy-repl_{SCALA_VERSION}", LIVY_VERSION).url(repo)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=20):
            return f"{url} exists, but the other Livy modules are not assembled from Maven"
    except urllib.error.HTTPError as exc:
        return f"{url} answers {exc.code}: Maven Central has no livy-repl jar"
    except OSError as exc:
        return f"{url} cannot be reached ({exc})"


def check_digest(archive: Path) -> str:
    """Check ``archive`` against the digests published beside it; what was checked.

    ``SHA256SUMS`` (``<sha256>  <name>`` lines, as ``../shared/livy/`` has) or Apache's
    ``<name>.sha512`` (the official download's). A mismatch, or a ``SHA256SUMS`` that does
    not list the archive, raises ``ValueError`` naming both digests: nothing is unpacked.
    """
    sums, sha512 = archive.with_name("SHA256SUMS"), archive.with_name(archive.name + ".sha512")
    if sums.is_file():
        listed = {
            parts[-1].lstrip("*"): parts[0].lower()
            for parts in (line.split() for line in sums.read_text().splitlines())
            if len(parts) >= 2
        }
        if archive.name not in listed:
            raise ValueError(f"{sums} does not list {archive.name}: cannot check it")
        expected, algorithm = listed[archive.name], "sha256"
    elif sha512.is_file():
        expected, algorithm = sha512.read_text().split()[0].lower(), "sha512"
    else:
        return "no published digest beside it"
    digest = hashlib.new(algorithm)
    with archive.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ValueError(
            f"{archive} has {algorithm} {digest.hexdigest()}, not the {expected} published "
            f"beside it: a damaged or different download; fetch {DIST_NAME}.zip again"
        )
    return f"{algorithm} matches the published digest"


def _unpack(archive: Path, target: Path) -> None:
    """Unpack a Livy binary zip so that ``target`` is its top folder (whole or nothing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)
        tops = [p for p in Path(tmp).iterdir() if p.is_dir()]
        top = tops[0] if len(tops) == 1 else Path(tmp)
        if missing_parts(top):
            raise FileNotFoundError(
                f"{archive} is not a Livy {SCALA_VERSION} binary distribution (no "
                f"{', '.join(missing_parts(top))}): use {DIST_NAME}.zip"
            )
        shutil.rmtree(target, ignore_errors=True)
        top.rename(target)


def install(dist: str | Path | None = None) -> Path:
    """The Livy distribution to run, made ready once; returns its folder (``LIVY_HOME``).

    See the module's docstring for where it comes from. Fails naming every way to get one.
    """
    home = livy_home()
    if not missing_parts(home):
        return home
    if env.get(env.LIVY_HOME_ENV):
        raise FileNotFoundError(
            f"${env.LIVY_HOME_ENV}={home} is not a Livy {SCALA_VERSION} distribution (no "
            f"{', '.join(missing_parts(home))}): unpack {DIST_NAME}.zip there or unset it"
        )
    dist = dist or env.get(env.LIVY_DIST_ENV) or (SHARED_DIST if SHARED_DIST.is_file() else None)
    if dist:
        checked = check_digest(Path(dist))
        log.info("unpacking %s into %s (%s)", dist, home, checked)
        _unpack(Path(dist), home)
        return home
    raise FileNotFoundError(
        f"no Livy {LIVY_VERSION} distribution in {home}, and none can be assembled from Maven "
        f"Central ({_maven_has_repl()}; livy-server and livy-rsc stop at 0.7.1, Scala 2.11). "
        f"Download {DIST_NAME}.zip from https://livy.apache.org/download/ and run python -m "
        f"helpers.livy install --dist FILE (or set ${env.LIVY_DIST_ENV}, or put it at "
        f"{SHARED_DIST})"
    )


@dataclass
class LivyServer:
    """A running Livy server: its URL, process, and the files ``start`` wrote."""

    url: str
    pid: int
    master: str
    state_dir: str
    livy_home: str
    sparkmagic_conf_dir: str
    #: ``str(pid)`` -> :func:`helpers.dev.process.identity` of the server process.
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save(self) -> None:
        """Write this server's record to ``<state_dir>/livy.json``."""
        write_record(self.state_dir, STATE_FILE, asdict(self))

    def sessions(self) -> list[dict[str, Any]]:
        """Livy's sessions (id, state, kind)."""
        with urllib.request.urlopen(f"{self.url}/sessions", timeout=10) as response:  # noqa: S310
            return json.loads(response.read()).get("sessions", [])

    def _request(self, path: str, body: dict[str, Any] | None = None, method: str = "") -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **CSRF_HEADER},
            method=method or ("GET" if body is None else "POST"),
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (127.0.0.1)
            return json.loads(response.read() or b"null")

    def run_code(self, code: str, timeout: float = 300.0) -> dict[str, Any]:
        """Run ``code`` in a new PySpark session, as sparkmagic does; Livy's output dict.

        The session is deleted afterwards. Fails with the session's log if it dies first.
        """
        session = self._request("/sessions", {"kind": "pyspark"})["id"]
        try:

            def started() -> str | None:
                state = self._request(f"/sessions/{session}")["state"]
                return None if state in STARTING else state

            state = wait_until(
                started,
                f"Livy session {session} to start",
                timeout,
                {PROCESS: self.pid},
                Path(self.state_dir),
            )
            if state != "idle":
                log_lines = self._request(f"/sessions/{session}/log?size=40")["log"]
                raise RuntimeError(f"Livy session {session} is {state}:\n" + "\n".join(log_lines))
            statement = self._request(f"/sessions/{session}/statements", {"code": code})["id"]
            path = f"/sessions/{session}/statements/{statement}"

            def finished() -> dict[str, Any] | None:
                reply = self._request(path)
                return reply["output"] if reply["state"] == "available" else None

            return wait_until(
                finished,
                f"statement {statement} of Livy session {session}",
                timeout,
                {PROCESS: self.pid},
                Path(self.state_dir),
            )
        finally:
            self._request(f"/sessions/{session}", method="DELETE")


#: Livy session states before it can take code.
STARTING = ("not_started", "starting")


def _jar_list(folder: Path) -> str:
    return ",".join(str(jar) for jar in sorted(folder.glob("*.jar")))


def livy_conf(home: Path, port: int, master: str) -> dict[str, str]:
    """``livy.conf``: 127.0.0.1:``port``, sessions on ``master`` (client mode), no Hive."""
    return {
        "livy.server.host": HOST,
        "livy.server.port": str(port),
        "livy.spark.master": master,
        "livy.spark.deploy-mode": "client",
        "livy.repl.enable-hive-context": "false",
        "livy.repl.jars": _jar_list(home / f"repl_{SCALA_VERSION}-jars"),
        "livy.rsc.jars": _jar_list(home / "rsc-jars"),
        # sparkmagic heartbeats keep a notebook's session; one left alone is closed
        "livy.server.session.timeout-check": "true",
        "livy.server.session.timeout": "1h",
        "livy.ui.enabled": "false",
        "livy.server.csrf-protection.enabled": "true",
    }


def spark_defaults(master: str, python: str) -> dict[str, str]:
    """Settings of every Livy session: the project's Python and worker daemon, as on EMR;
    on the standalone cluster of this machine, its authentication and secret too."""
    conf = {**executor_conf(python), "spark.driver.memory": "2g"}
    if master.startswith("local"):
        conf.update(LOCAL_CONF)
    else:  # a cluster on this machine (helpers.cluster): executors reach the driver here
        conf["spark.driver.host"] = conf["spark.driver.bindAddress"] = HOST
        properties = cluster_properties(master)
        if properties is not None:
            conf.update(_read_properties(properties))
    return conf


def _read_properties(path: Path) -> dict[str, str]:
    """The ``key value`` (or ``key = value``) lines of a Java properties file."""
    pairs = (line.replace("=", " ", 1).split(None, 1) for line in path.read_text().splitlines())
    return {p[0]: p[1].strip() for p in pairs if len(p) == 2 and not p[0].startswith("#")}


def sparkmagic_config(url: str) -> dict[str, Any]:
    """sparkmagic's ``config.json`` for the Livy at ``url`` (no authentication on 127.0.0.1;
    the header its CSRF protection asks for)."""
    credentials = {"username": "", "password": "", "url": url, "auth": "None"}
    return {
        "kernel_python_credentials": credentials,
        "kernel_scala_credentials": credentials,
        "kernel_r_credentials": credentials,
        "custom_headers": dict(CSRF_HEADER),
        **SPARKMAGIC_SETTINGS,
    }


#: Beside sparkmagic's config.json: which server ``start`` wrote it for, and that server's log.
SERVER_POINTER = "fruits-livy.json"
#: What sparkmagic says when the session under a cell has gone (killed driver, lost node).
SESSION_LOST = ("Session isn't active", "unexpectedly reached final status")
#: Where the server's log is when this project did not start it (EMR's primary node).
EMR_LIVY_LOG = "/var/log/livy/livy-livy-server.out on the primary node (EMR)"


def session_lost_note(error: str, sparkmagic_conf_dir: str | Path) -> str | None:
    """A line for a failed cell whose Livy session died, naming Livy's log; else ``None``.

    The log is the one ``start`` recorded for the server in ``sparkmagic_conf_dir``'s
    config, with its last errors (e.g. ``spark-submit exited with code 137``).
    """
    if not any(sign in error for sign in SESSION_LOST):
        return None
    conf_dir = Path(sparkmagic_conf_dir)
    try:
        pointer = read_record(conf_dir, SERVER_POINTER) or {}
        config = json.loads((conf_dir / "config.json").read_text())
        url = config["kernel_python_credentials"]["url"]
    except (OSError, ValueError, KeyError, TypeError):
        pointer, url = {}, None
    if url is None or pointer.get("url") != url:
        return f"The Livy session died. Livy's log: {EMR_LIVY_LOG}; the session's: %%logs"
    server_log = Path(pointer["log"])
    lines = log_tail(server_log, 400).splitlines()
    errors = [line for line in lines if " ERROR " in line or "exited with code" in line]
    return f"The Livy session died. Livy's log: {server_log}" + "".join(
        f"\n  {line}" for line in errors[-3:]
    )


def install_kernel() -> Path:
    """Install sparkmagic's ``pysparkkernel`` into this environment (not the user's home).

    Through jupyter_client's API, not ``python -m jupyter kernelspec``: that command runs
    the first ``jupyter-kernelspec`` on ``$PATH``, which in a shell with another virtual
    environment activated installed the kernel into that one.
    """
    import sparkmagic
    from jupyter_client.kernelspec import KernelSpecManager

    spec = Path(sparkmagic.__file__).parent / "kernels" / KERNEL
    prefix = Path(sys.prefix, "share", "jupyter", "kernels", KERNEL)
    if not (prefix / "kernel.json").is_file():
        KernelSpecManager().install_kernel_spec(str(spec), KERNEL, prefix=sys.prefix)
        log.info("installed the %s kernel into %s", KERNEL, prefix)
    return prefix


def _write_properties(path: Path, values: dict[str, str]) -> None:
    """Write a properties file readable by this user only (it may hold a cluster's secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, "".join(f"{key} = {value}\n" for key, value in values.items()))


def read_state(state_dir: Path | str = DEFAULT_STATE_DIR) -> LivyServer | None:
    """The server recorded in ``state_dir``, or ``None`` if none was started there."""
    record = read_record(state_dir, STATE_FILE)
    return None if record is None else LivyServer(**record)


def start(
    master: str = "local[2]",
    state_dir: Path | str = DEFAULT_STATE_DIR,
    port: int = 0,
    python: str | None = None,
    sparkmagic_conf_dir: str | Path | None = None,
    timeout: float = 120.0,
) -> LivyServer:
    """Start Livy on 127.0.0.1 (``port``, 0: a free one) with sessions on ``master``.

    Sessions run ``python`` (default: this interpreter) and import the installed
    ``helpers``. Writes sparkmagic's config into ``sparkmagic_conf_dir`` (default
    ``$SPARKMAGIC_CONF_DIR``, else ``<state_dir>/sparkmagic``), installs the kernel, and
    returns once Livy answers; fails with the server's log if it exits first.
    """
    if shutil.which("java") is None and env.java_home() is None:
        raise FileNotFoundError("Livy needs Java 17: apt-get install openjdk-17-jre-headless")
    master = check_master(master)  # a malformed URL fails here, not in each session
    if unsupported_spark():
        raise RuntimeError(unsupported_spark())
    state_dir = Path(state_dir).resolve()
    running = read_state(state_dir)
    if running is not None and same_process(asdict(running), running.pid):
        raise RuntimeError(
            f"a Livy server is already running from {state_dir} ({running.url}): "
            f"python -m helpers.livy stop --state-dir {state_dir}"
        )
    home = install()
    port = port or free_port()
    python = python or env.get(env.PYSPARK_PYTHON_ENV) or sys.executable
    conf_dir, spark_conf_dir = state_dir / "conf", state_dir / "spark-conf"
    _write_properties(conf_dir / "livy.conf", livy_conf(home, port, master))
    _write_properties(conf_dir / "log4j.properties", LOG4J)
    # the server and its sessions' drivers talk over 127.0.0.1, not the host's public name
    _write_properties(
        conf_dir / "livy-client.conf",
        {"livy.rsc.launcher.address": HOST, "livy.rsc.rpc.server.address": HOST},
    )
    defaults = spark_defaults(master, python)
    _write_properties(spark_conf_dir / "spark-defaults.conf", defaults)
    url = f"http://{HOST}:{port}"
    magic_dir = Path(
        sparkmagic_conf_dir or env.get(env.SPARKMAGIC_CONF_ENV) or state_dir / "sparkmagic"
    )
    magic_dir.mkdir(parents=True, exist_ok=True)
    (magic_dir / "config.json").write_text(json.dumps(sparkmagic_config(url), indent=2))
    # lets a failed run name this server's log (session_lost_note)
    write_record(magic_dir, SERVER_POINTER, {"url": url, "log": str(log_path(state_dir, PROCESS))})
    install_kernel()

    child_env = {
        **os.environ,
        "LIVY_HOME": str(home),
        "LIVY_CONF_DIR": str(conf_dir),
        "LIVY_LOG_DIR": str(state_dir / "logs"),
        "SPARK_HOME": str(spark_home()),
        "SPARK_CONF_DIR": str(spark_conf_dir),
        "PYSPARK_PYTHON": python,
        "SPARK_LOCAL_IP": HOST,
    }
    home_java = env.java_home()
    java = str(home_java / "bin" / "java") if home_java else "java"
    classpath = f"{home / 'jars'}/*:{conf_dir}:{spark_conf_dir}"
    command = [java, "-Xmx512m", *JAVA_OPENS, "-cp", classpath, SERVER_CLASS]
    pid = spawn(state_dir, PROCESS, command, child_env, cwd=state_dir)
    server = LivyServer(url, pid, master, str(state_dir), str(home), str(magic_dir))
    server.processes[str(pid)] = identity(pid, command)
    server.save()
    try:
        wait_until(
            lambda: server.sessions() is not None,
            f"Livy answering at {url}",
            timeout,
            {PROCESS: pid},
            state_dir,
        )
    except BaseException:
        stop(state_dir)
        raise
    log.info(
        "Livy %s at %s, sessions on %s (log %s)",
        LIVY_VERSION,
        url,
        master,
        log_path(state_dir, PROCESS),
    )
    return server


#: Java 17 modules Livy's Kryo (its RPC to the sessions) reflects into: Spark's own list
#: (``org.apache.spark.launcher.JavaModuleOptions``), which its drivers get from spark-submit.
JAVA_OPENS = [
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in (
        "java.lang",
        "java.lang.invoke",
        "java.lang.reflect",
        "java.io",
        "java.net",
        "java.nio",
        "java.util",
        "java.util.concurrent",
        "java.util.concurrent.atomic",
        "jdk.internal.ref",
        "sun.nio.ch",
        "sun.nio.cs",
        "sun.security.action",
        "sun.util.calendar",
    )
]

#: Livy's own log: warnings and its session lifecycle, into livy-server.out.
LOG4J = {
    "log4j.rootCategory": "WARN, console",
    "log4j.appender.console": "org.apache.log4j.ConsoleAppender",
    "log4j.appender.console.target": "System.err",
    "log4j.appender.console.layout": "org.apache.log4j.PatternLayout",
    "log4j.appender.console.layout.ConversionPattern": "%d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n",
    "log4j.logger.org.apache.livy": "INFO",
    "log4j.logger.org.eclipse.jetty": "WARN",
}


def stop(state_dir: Path | str = DEFAULT_STATE_DIR, timeout: float = 20.0) -> bool:
    """Stop the server recorded in ``state_dir`` and its sessions' processes. Safe twice."""
    record = stop_recorded(state_dir, STATE_FILE, lambda r: ([r["pid"]],), timeout)
    if record is None:
        return False
    log.info("stopped the Livy server %s", record["url"])
    return True


def status(state_dir: Path | str = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """What the server recorded in ``state_dir`` says: URL, master, sessions."""
    return recorded_status(state_dir, STATE_FILE, _describe, "url")


def _describe(record: dict[str, Any]) -> dict[str, Any]:
    """The server's URL, master and sessions, asked of it (OSError: it is gone)."""
    server = LivyServer(**record)
    sessions = server.sessions()
    return {
        "url": server.url,
        "master": server.master,
        "sparkmagic_conf_dir": server.sparkmagic_conf_dir,
        "sessions": [{"id": s["id"], "kind": s.get("kind"), "state": s["state"]} for s in sessions],
    }


@contextmanager
def livy_server(
    master: str = "local[2]",
    state_dir: Path | str = DEFAULT_STATE_DIR,
    sparkmagic_conf_dir: str | Path | None = None,
) -> Iterator[LivyServer]:
    """A Livy server for the ``with`` block (tests' session fixture): always stopped after."""
    server = start(master, state_dir, sparkmagic_conf_dir=sparkmagic_conf_dir)
    try:
        yield server
    finally:
        stop(state_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.livy install|start|stop|status``."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.livy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=("install", "start", "stop", "status"))
    parser.add_argument(
        "--master", default="local[2]", help="sessions' master (local[N], spark://)"
    )
    parser.add_argument("--port", type=int, default=0, help="Livy's port (default: a free one)")
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="config, logs, record")
    parser.add_argument("--dist", help=f"install: a Livy binary zip ({DIST_NAME}.zip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.action == "install":
            sys.stdout.write(f"{install(args.dist)}\n")
        elif args.action == "start":
            server = start(args.master, args.state_dir, args.port)
            sys.stdout.write(
                f"{server.url}\nexport {env.SPARKMAGIC_CONF_ENV}={server.sparkmagic_conf_dir}\n"
                f"python -m helpers.run --kernel {KERNEL} ...\n"
            )
        elif args.action == "stop":
            if not stop(args.state_dir):
                log.info("no Livy server recorded in %s", args.state_dir)
        else:
            sys.stdout.write(json.dumps(status(args.state_dir), indent=2) + "\n")
    except (FileNotFoundError, RuntimeError, TimeoutError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
