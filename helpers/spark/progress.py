"""How far a long job is, for the notebook rather than only the Spark UI.

Read from the status tracker, by finished tasks: Spark's status store does not show a
running task's rows (its input and SQL metrics stayed at 0 until the task ended, even with
2 s heartbeats), so the count moves one task at a time.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from helpers.spark.kind import is_connect

#: ``report(done, total)``.
Report = Callable[[int, int], None]

_GROUP = "spark.jobGroup.id"


def _finished_share(spark: SparkSession, group: str) -> float:
    """The share of finished tasks in the last stage of the group's jobs (the one that
    writes: earlier stages only read and shuffle)."""
    tracker = spark.sparkContext.statusTracker()
    stages = [
        stage
        for job in tracker.getJobIdsForGroup(group)
        for stage in (tracker.getJobInfo(job).stageIds if tracker.getJobInfo(job) else [])
    ]
    info = tracker.getStageInfo(max(stages)) if stages else None
    return info.numCompletedTasks / info.numTasks if info and info.numTasks else 0.0


@contextmanager
def task_progress(
    spark: SparkSession, total: int, report: Report, every: float = 2.0
) -> Iterator[None]:
    """Call ``report(done, total)`` while the block's jobs run, ``done`` estimated from their
    finished tasks, whenever it changes; ``report(total, total)`` when the block ends.

    A Spark Connect client has no status tracker: only the end is reported.
    """
    if is_connect(spark):
        yield
        report(total, total)
        return
    context = spark.sparkContext
    previous = context.getLocalProperty(_GROUP)
    group = f"fruits-progress-{uuid.uuid4().hex[:8]}"
    context.setLocalProperty(_GROUP, group)  # the block's jobs, in this thread
    stopped = threading.Event()

    def watch() -> None:
        shown = -1
        while not stopped.wait(every):
            done = int(total * _finished_share(spark, group))
            if done != shown:
                shown = done
                report(done, total)

    watcher = threading.Thread(target=watch, name="fruits-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stopped.set()
        watcher.join()
        context.setLocalProperty(_GROUP, previous)
    report(total, total)
