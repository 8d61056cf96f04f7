"""A Spark standalone cluster on this machine: one master and N workers on 127.0.0.1.

Cluster mode without a cloud account: the executors run in their own JVMs, as on EMR or
Databricks, started by Spark's own standalone master and workers (the classes of the
pip-installed pyspark, ``bin/spark-class org.apache.spark.deploy.master.Master`` and
``...deploy.worker.Worker``). Then point the pipeline at it::

    python -m helpers.cluster start --workers 2 --cores 1 --memory 2g
    python -m helpers.run --data-root data_sample --output-root outputs --spark-master spark://127.0.0.1:7077
    python -m helpers.cluster status
    python -m helpers.cluster stop

``start`` returns once every worker is registered with the master (read from the master's
JSON page), and records the processes and ports in a state folder (``.cluster/`` in the
repository by default) that ``status`` and ``stop`` read. Tests use :func:`standalone_cluster`.

The cluster authenticates (``spark.authenticate``) with a secret generated at ``start``: it is
kept in the record (mode 0600) and in ``auth.properties`` (0600), which the master and
workers read through ``--properties-file`` (the secret is on no command line) and which
:func:`helpers.spark.session.get_spark` hands to a driver of that master. A driver without
it cannot register.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers.dev.process import (
    HOST,
    free_port,
    identity,
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
from helpers.spark import versions

log = logging.getLogger(__name__)

#: Where ``start`` records the cluster unless told otherwise (ignored by git).
DEFAULT_STATE_DIR = PROJECT_ROOT / ".cluster"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
STATE_FILE = "cluster.json"
#: The daemons' (and drivers') properties: authentication and its secret (mode 0600).
AUTH_FILE = "auth.properties"


@dataclass
class Cluster:
    """A running standalone cluster: its master URL, web UI and processes."""

    master_url: str
    webui_url: str
    state_dir: str
    master_pid: int
    worker_pids: list[int] = field(default_factory=list)
    worker_ports: list[int] = field(default_factory=list)
    cores: int = 1
    memory: str = "2g"
    #: ``str(pid)`` -> :func:`helpers.dev.process.identity` of each process started.
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    secret: str = field(default="", repr=False)  # never in a log line or a repr

    @property
    def auth_file(self) -> Path:
        """The properties file holding the secret, which every JVM of the cluster reads."""
        return Path(self.state_dir, AUTH_FILE)

    def running(self, pid: int) -> bool:
        """Whether ``pid`` is a process this cluster started, still running."""
        return same_process(asdict(self), pid)

    def save(self) -> None:
        """Write this cluster's record to ``<state_dir>/cluster.json``."""
        write_record(self.state_dir, STATE_FILE, asdict(self))

    def master_state(self) -> dict[str, Any]:
        """The master's JSON page: workers, cores, applications."""
        return _get_json(f"{self.webui_url}/json")


def spark_home() -> Path:
    """The Spark installation whose classes the cluster runs (pip pyspark's, or $SPARK_HOME)."""
    home = versions.spark_home()
    if not (home / "bin" / "spark-class").is_file():
        raise FileNotFoundError(
            f"no bin/spark-class under Spark home {home}: install pyspark "
            f'(pip install -e ".[spark]") or point SPARK_HOME at a full Spark'
        )
    return home


def _get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1)
        return json.loads(response.read())


def _daemon_env(state_dir: Path) -> dict[str, str]:
    """Environment of the master and workers: this Python for executors, logs in state_dir."""
    env = dict(os.environ)
    env.update(
        {
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOG_DIR": str(state_dir / "logs"),
            "SPARK_LOCAL_DIRS": str(state_dir / "tmp"),
            "SPARK_NO_DAEMONIZE": "1",
            # executors' Python workers: this interpreter unless a session says otherwise
            "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON", sys.executable),
            "SPARK_LOCAL_IP": HOST,
        }
    )
    return env


def auth_properties(secret: str) -> dict[str, str]:
    """The settings of every JVM of a cluster: authentication with ``secret``; no killing
    of applications from the web UI (any local user can reach it)."""
    return {
        "spark.authenticate": "true",
        "spark.authenticate.secret": secret,
        "spark.ui.killEnabled": "false",
    }


def _launch(cluster: Cluster, name: str, main_class: str, args: list[str]) -> int:
    """Start ``spark-class main_class args`` (it execs the JVM: the pid is the JVM's) with
    the cluster's properties file, and record the process's identity."""
    state_dir = Path(cluster.state_dir)
    (state_dir / "tmp").mkdir(parents=True, exist_ok=True)
    command = [
        str(spark_home() / "bin" / "spark-class"),
        main_class,
        *args,
        "--properties-file",
        str(cluster.auth_file),
    ]
    pid = spawn(state_dir, name, command, _daemon_env(state_dir))
    cluster.processes[str(pid)] = identity(pid, command)
    return pid


def alive_workers(webui_url: str) -> list[dict[str, Any]]:
    """The workers the master at ``webui_url`` lists as ALIVE."""
    state = _get_json(f"{webui_url}/json")
    return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]


def start(
    workers: int = 2,
    cores: int = 1,
    memory: str = "2g",
    state_dir: Path | str = DEFAULT_STATE_DIR,
    master_port: int = 0,
    webui_port: int = 0,
    timeout: float = 120.0,
) -> Cluster:
    """Start a master and ``workers`` workers (``cores`` and ``memory`` each) on 127.0.0.1.

    Returns once all workers are registered. A port that is 0 or taken becomes a free one.
    Fails, naming the state folder, if a cluster recorded there is still running.
    """
    if workers < 1 or cores < 1:
        raise ValueError(f"workers and cores must be >= 1, got workers={workers} cores={cores}")
    state_dir = Path(state_dir).resolve()
    running = read_state(state_dir)
    if running is not None and running.running(running.master_pid):
        raise RuntimeError(
            f"a cluster is already running from {state_dir} ({running.master_url}): "
            f"python -m helpers.cluster stop --state-dir {state_dir}"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    master_port, webui_port = free_port(master_port), free_port(webui_port)
    master_url = f"spark://{HOST}:{master_port}"
    webui_url = f"http://{HOST}:{webui_port}"
    secret = secrets.token_hex(32)
    cluster = Cluster(master_url, webui_url, str(state_dir), 0, cores=cores, memory=memory)
    cluster.secret = secret
    properties = auth_properties(secret)
    write_private(cluster.auth_file, "".join(f"{k} {v}\n" for k, v in properties.items()))
    master_pid = cluster.master_pid = _launch(
        cluster,
        "master",
        MASTER_CLASS,
        ["--host", HOST, "--port", str(master_port), "--webui-port", str(webui_port)],
    )
    cluster.save()  # recorded at once: stop() works even if a worker fails to start
    try:
        wait_until(
            lambda: cluster.master_state().get("status") == "ALIVE",
            f"master at {webui_url}",
            timeout,
            {"master": master_pid},
            state_dir,
        )
        for _ in range(workers):
            add_worker(cluster)
        pids = {"master": master_pid}
        pids.update({f"worker-{i}": pid for i, pid in enumerate(cluster.worker_pids)})
        wait_until(
            lambda: len(alive_workers(webui_url)) >= workers,
            f"{workers} registered workers at {webui_url}",
            timeout,
            pids,
            state_dir,
        )
    except BaseException:
        stop(state_dir)
        raise
    log.info(
        "Spark standalone cluster %s: %d workers x %d cores, %s; UI %s",
        master_url,
        workers,
        cores,
        memory,
        webui_url,
    )
    return cluster


def add_worker(cluster: Cluster) -> int:
    """Start one more worker for ``cluster`` (not waiting for it to register); its pid."""
    state_dir = Path(cluster.state_dir)
    index = 0  # a new name: a lost worker's logs and work folder stay
    while (state_dir / f"work-{index}").exists():
        index += 1
    work_dir = state_dir / f"work-{index}"
    work_dir.mkdir()  # now, not when the JVM gets to it: the next worker gets the next name
    port = free_port()
    pid = _launch(
        cluster,
        f"worker-{index}",
        WORKER_CLASS,
        [
            "--host",
            HOST,
            "--port",
            str(port),
            "--webui-port",
            str(free_port()),
            "--cores",
            str(cluster.cores),
            "--memory",
            cluster.memory,
            "--work-dir",
            str(work_dir),
            cluster.master_url,
        ],
    )
    cluster.worker_pids.append(pid)
    cluster.worker_ports.append(port)
    cluster.save()
    return pid


def ensure_workers(cluster: Cluster, timeout: float = 120.0) -> Cluster:
    """Replace ``cluster``'s workers whose process is gone; return once all are registered."""
    state_dir = Path(cluster.state_dir)
    wanted = len(cluster.worker_pids)
    running = [pid for pid in cluster.worker_pids if cluster.running(pid)]
    if len(running) < wanted:
        log.info("restarting %d lost workers of %s", wanted - len(running), cluster.master_url)
        survivors = [
            (pid, port)
            for pid, port in zip(cluster.worker_pids, cluster.worker_ports)
            if pid in running
        ]
        cluster.worker_pids = [pid for pid, _ in survivors]  # in order
        cluster.worker_ports = [port for _, port in survivors]
        for pid in set(map(int, cluster.processes)) - {cluster.master_pid, *running}:
            del cluster.processes[str(pid)]
        while len(cluster.worker_pids) < wanted:
            add_worker(cluster)
    wait_until(
        lambda: len(alive_workers(cluster.webui_url)) >= wanted,
        f"{wanted} registered workers at {cluster.webui_url}",
        timeout,
        {"master": cluster.master_pid},
        state_dir,
    )
    return cluster


def read_state(state_dir: Path | str = DEFAULT_STATE_DIR) -> Cluster | None:
    """The cluster recorded in ``state_dir``, or ``None`` if none was started there."""
    record = read_record(state_dir, STATE_FILE)
    return None if record is None else Cluster(**record)


def stop(state_dir: Path | str = DEFAULT_STATE_DIR, timeout: float = 20.0) -> bool:
    """Stop the cluster recorded in ``state_dir``: workers (and their executors), then master.

    Returns whether there was one. Safe to call twice. A recorded pid that now belongs to
    another process is left alone (:func:`helpers.dev.process.stop_recorded`). The record
    and ``auth.properties`` (the secret) are deleted.
    """
    record = stop_recorded(
        state_dir, STATE_FILE, lambda r: (r["worker_pids"], [r["master_pid"]]), timeout
    )
    if record is None:
        return False
    Path(state_dir, AUTH_FILE).unlink(missing_ok=True)
    log.info("stopped the Spark cluster %s", record["master_url"])
    return True


def status(state_dir: Path | str = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """What the master says about the cluster recorded in ``state_dir``."""
    return recorded_status(state_dir, STATE_FILE, _describe, "master_url")


def _describe(record: dict[str, Any]) -> dict[str, Any]:
    """The master's account of its workers, cores and applications (OSError: it is gone)."""
    cluster = Cluster(**record)
    state = cluster.master_state()
    return {
        "master_url": cluster.master_url,
        "webui_url": cluster.webui_url,
        "workers": [
            {"id": w["id"], "state": w["state"], "cores": w["cores"], "memory_mb": w["memory"]}
            for w in state.get("workers", [])
        ],
        "cores": state.get("cores"),
        "applications": [a["name"] for a in state.get("activeapps", [])],
    }


@contextmanager
def standalone_cluster(
    workers: int = 2, cores: int = 1, memory: str = "2g", state_dir: Path | str = DEFAULT_STATE_DIR
) -> Iterator[Cluster]:
    """A cluster for the ``with`` block (tests' session fixture): always stopped after it."""
    cluster = start(workers, cores, memory, state_dir)
    try:
        yield cluster
    finally:
        stop(state_dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--workers", type=int, default=2, help="number of workers (2)")
    parser.add_argument("--cores", type=int, default=1, help="cores per worker (1)")
    parser.add_argument("--memory", default="2g", help="memory per worker for executors (2g)")
    parser.add_argument(
        "--port", type=int, default=7077, help="master port (7077, else a free one)"
    )
    parser.add_argument(
        "--webui-port", type=int, default=8080, help="master web UI port (8080, else a free one)"
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "start":
        try:
            cluster = start(
                args.workers, args.cores, args.memory, args.state_dir, args.port, args.webui_port
            )
        except (RuntimeError, TimeoutError, ValueError, FileNotFoundError) as exc:
            log.error("%s", exc)
            return 2
        print(f"master {cluster.master_url}  (web UI {cluster.webui_url})")
        print(f"use it: python -m helpers.run ... --spark-master {cluster.master_url}")
    elif args.command == "stop":
        if not stop(args.state_dir):
            print(f"no cluster recorded in {args.state_dir}")
    else:
        print(json.dumps(status(args.state_dir), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
