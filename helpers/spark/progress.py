"""How far a running job is: the rows its Python UDFs have returned, from the driver's REST API.

Spark updates the SQL metrics of running tasks with each executor heartbeat (every 10 s by
default), so a job of minutes can show images done / total while it runs, in the notebook,
not only in the Spark UI. Without a UI (``spark.ui.enabled=false``) nothing is reported
until the end.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: The SQL metric of a Python UDF's node (``ArrowEvalPython``...) counting its rows.
ROWS_METRIC = "number of output rows"

Report = Callable[[int, int], None]


def _executions(spark: SparkSession, offset: int, details: bool) -> list[dict[str, Any]] | None:
    """The SQL executions of this application from ``offset`` on (ids count up from 0), with
    their plan metrics if ``details`` (None: no UI)."""
    url = spark.sparkContext.uiWebUrl
    if not url:
        return None
    app = spark.sparkContext.applicationId
    query = (
        f"{url}/api/v1/applications/{app}/sql?details={str(details).lower()}"
        f"&planDescription=false&offset={offset}&length=1000000"
    )
    try:
        with urllib.request.urlopen(query, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        log.debug("no progress from %s: %s", query, exc)
        return None


def python_rows(
    spark: SparkSession, after: tuple[int, int] | None = None
) -> tuple[int, tuple[int, int]] | None:
    """Rows returned by Python UDF nodes in the executions with an id above ``after[0]``, and
    ``(highest id, executions listed)``, the ``after`` of the next call (None: no REST API).

    The UI keeps the last executions only (``spark.sql.ui.retainedExecutions``): the list is
    read from a little before where the previous call ended, and filtered by id.
    """
    last, listed = after or (-1, 0)
    executions = _executions(spark, max(0, listed - 100), details=after is not None)
    if executions is None:
        return None
    rows = 0
    for execution in executions:
        if int(execution["id"]) <= last:
            continue
        for node in execution.get("nodes", []):
            if "EvalPython" not in node.get("nodeName", ""):
                continue
            for metric in node.get("metrics", []):
                if metric.get("name") == ROWS_METRIC:
                    rows += int(str(metric.get("value", "0")).replace(",", "") or 0)
    ids = [int(e["id"]) for e in executions]
    return rows, (max([last, *ids]), max(0, listed - 100) + len(executions))


@contextmanager
def udf_progress(
    spark: SparkSession, total: int, report: Report, every: float = 2.0
) -> Iterator[None]:
    """Call ``report(done, total)`` while the block's jobs run, whenever the rows their Python
    UDFs returned change, and ``report(total, total)`` when the block ends without error."""
    start = python_rows(spark)
    stopped = threading.Event()

    def watch() -> None:
        shown = -1
        while start is not None and not stopped.wait(every):
            found = python_rows(spark, start[1])
            if found is not None and found[0] != shown:
                shown = found[0]
                report(min(shown, total), total)

    watcher = threading.Thread(target=watch, name="fruits-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stopped.set()
        watcher.join()
    report(total, total)
