"""The features dataset on storage: incremental, and a run is published all at once or not at all.

Layout::

    <output_root>/features/run=<id>/part-*.parquet     a run's rows (written in place)
    <output_root>/features/_commits/run=<id>.json      its commit record, written last

Each run writes only the images that are new or changed since the last one (same path,
size and modification time means unchanged) straight into its ``run=`` folder, then writes
its commit record: one small object naming every Parquet file of the run and its row
count. On S3 that is a single PUT, which appears whole or not at all; on a local or HDFS
file system a temporary file renamed into place. Readers (:func:`read_features`,
:func:`pending_images`) trust only committed runs and read exactly the files their records
name, keeping the newest row per path. A run killed before its record is written is
invisible; its folder is removed by the next run. No rename of data is involved, so this
holds on S3A (where a rename is a copy plus a delete per file) as on local disk.

``overwrite`` featurizes everything again; its record says so, and readers ignore every
run committed before it (the older folders are then removed, which is only tidying up).

Each record carries the feature settings (model, weights SHA-256, image size; the exact
runtimes give the same features and count as one; an int8 run adds its calibration). A run
whose settings differ from the committed ones is refused unless ``overwrite``, and readers
refuse runs of mixed settings: features of two CNNs or two sizes never meet in one dataset.
A record that is not valid (not JSON, a run id or file name not of this pipeline's form) is
named in a warning and ignored: no path is ever built from it. The writer holds
``output_root``'s lease (:mod:`helpers.lease`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F

from helpers.lease import writer_lease
from helpers.paths import join, spark_uri
from helpers.spark.files import fs_children, fs_delete, fs_move, fs_read_text, fs_scheme, fs_write
from helpers.spark.kind import is_connect

log = logging.getLogger(__name__)

FEATURES = "features"
COMMITS = "_commits"  # under features/; hidden from Spark and pyarrow readers alike
LAYOUT_VERSION = 3
#: A run id as :func:`new_run_id` makes it; nothing else is taken from a record into a path.
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
#: The Parquet files a run's record may name: Spark's part files, a plain name.
PART_FILE = re.compile(r"^part-[\w.=-]+\.parquet$")
#: The settings that decide the features, recorded per run.
SETTINGS = ("model_name", "weights_sha256", "image_size")
#: Settings recorded only when a run has them: a quantized runtime's calibration images.
OPTIONAL_SETTINGS = ("int8_calibration",)
#: Parquet writer option: no dictionary attempt on the feature values. CNN floats almost
#: never repeat, so the writer hashed every value of each row group's first page and then
#: fell back to plain encoding anyway: same files, less CPU beside the inference.
NO_FEATURES_DICTIONARY = "parquet.enable.dictionary#features.list.element"

#: Seconds :func:`write_features` waits for the row count the write observed. Spark delivers
#: it through a listener, milliseconds after the write returns; a plan that lost its
#: observation (an optimization, a connector) never delivers it, and the run's files are
#: counted with a Spark read instead.
OBSERVED_WAIT_S = 30.0

#: File systems where one create-write-close is one PUT: visible whole or not at all.
OBJECT_STORES = ("s3", "s3a", "s3n", "gs", "wasb", "wasbs", "abfs", "abfss")


def write_whole(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write the small file ``uri`` so that readers see all of ``data`` or nothing.

    On an object store one create-close is one PUT; elsewhere a hidden temporary file is
    renamed over the target (atomic on local disk and HDFS).
    """
    if fs_scheme(spark, uri) in OBJECT_STORES:
        fs_write(spark, uri, data)
        return
    parent, name = uri.rstrip("/").rsplit("/", 1)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    fs_write(spark, tmp, data)
    fs_move(spark, tmp, uri)


def _data_files(spark: SparkSession, run_uri: str) -> list[dict[str, Any]]:
    """The Parquet files of one run folder (hidden and marker files left out)."""
    return [
        {"name": name, "size": size}
        for name, is_dir, size in sorted(fs_children(spark, run_uri))
        if not is_dir and not name.startswith(("_", ".")) and name.endswith(".parquet")
    ]


def _invalid(name: str, record: Any) -> str:
    """Why the record in file ``name`` is not one this pipeline wrote; ``''`` if it is."""
    if not isinstance(record, dict):
        return "not a JSON object"
    run = record.get("run")
    if not isinstance(run, str) or not RUN_ID.match(run) or name != f"run={run}.json":
        return f"its run {run!r} is not a run id matching its file name"
    files = record.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) and PART_FILE.match(f["name"])
        for f in files
    ):
        return "its files are not plain Parquet part-file names"
    if not isinstance(record.get("rows"), int) or not isinstance(record.get("overwrite"), bool):
        return "its rows or overwrite field is missing"
    return ""


def _commit_records(spark: SparkSession, output_root: str) -> list[dict[str, Any]]:
    """The valid commit records under ``features/_commits/``, by run id (oldest first).

    An invalid one is named in a warning and ignored: nothing it says is followed.
    """
    commits = join(output_root, FEATURES, COMMITS)
    names = [name for name, is_dir, _ in fs_children(spark, commits) if not is_dir]
    records = []
    for name in sorted(n for n in names if n.startswith("run=") and n.endswith(".json")):
        uri = join(commits, name)
        try:
            record = json.loads(fs_read_text(spark, uri))
            reason = _invalid(name, record)
        except ValueError as exc:
            reason = f"not valid JSON ({exc})"
        if reason:
            log.warning(
                "ignoring commit record %s: %s; it was not written by this pipeline (remove it)",
                uri,
                reason,
            )
            continue
        records.append(record)
    return records


def _committed(spark: SparkSession, output_root: str) -> list[dict[str, Any]]:
    """The records of the runs readers see: the newest overwrite run and those after it."""
    records = _commit_records(spark, output_root)
    bases = [i for i, r in enumerate(records) if r.get("overwrite")]
    return records[bases[-1] :] if bases else records


def committed_rows(spark: SparkSession, output_root: str, run_id: str) -> int:
    """The rows committed run ``run_id`` wrote, from its record (0 if it has none)."""
    return sum(r["rows"] for r in _commit_records(spark, output_root) if r["run"] == run_id)


def _settings_text(settings: dict[str, Any] | None) -> str:
    if not settings:
        return "unknown settings (committed before settings were recorded)"
    sha = str(settings.get("weights_sha256", ""))[:12]
    calibration = settings.get("int8_calibration")
    quantized = (
        f", int8 calibrated on {calibration.get('count')} images (digest "
        f"{str(calibration.get('digest'))[:12]}...)"
        if isinstance(calibration, dict)
        else ""
    )
    return (
        f"model_name {settings.get('model_name')}, image_size {settings.get('image_size')}, "
        f"weights sha256 {sha}...{quantized}"
    )


def _recorded(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a record keeps: :data:`SETTINGS`, and those of :data:`OPTIONAL_SETTINGS`
    the run has."""
    optional = {k: settings[k] for k in OPTIONAL_SETTINGS if k in settings}
    return {**{k: settings[k] for k in SETTINGS}, **optional}


def committed_settings(spark: SparkSession, output_root: str) -> dict[str, Any] | None:
    """The feature settings of the committed runs (``None`` before the first run).

    Raises ``ValueError`` when the runs readers see were made with different settings, or
    before settings were recorded: their features cannot be compared with each other.
    """
    records = _committed(spark, output_root)
    if not records:
        return None
    found = {json.dumps(r.get("settings"), sort_keys=True) for r in records}
    first = records[0].get("settings")
    if len(found) > 1 or not first:
        kinds = "; ".join(sorted(_settings_text(json.loads(f)) for f in found))
        raise ValueError(
            f"features under {join(output_root, FEATURES)} mix runs of different settings "
            f"({kinds}): run 02_feature_extraction again with overwrite=True"
        )
    return dict(first)


def check_settings(
    spark: SparkSession, output_root: str, settings: dict[str, Any], *, overwrite: bool = False
) -> None:
    """Refuse a run whose ``settings`` differ from the committed features' (unless
    ``overwrite``, which featurizes everything again), naming both."""
    if overwrite:
        return
    try:
        committed = committed_settings(spark, output_root)
    except ValueError as exc:
        raise ValueError(f"{exc}; this run asks for {_settings_text(settings)}") from exc
    wanted = _recorded(settings)
    if committed is not None and committed != wanted:
        raise ValueError(
            f"features under {join(output_root, FEATURES)} were made with "
            f"{_settings_text(committed)}; this run asks for {_settings_text(wanted)}. Pass "
            "overwrite=True to featurize every image again with the new settings, or the "
            "committed settings to add new images to them"
        )


def new_run_id() -> str:
    """A run id that sorts by time: ``20261121T230102Z-1a2b3c``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def read_features(spark: SparkSession, output_root: str) -> DataFrame:
    """The current features: the newest row per path over all committed runs.

    Exactly the files the commit records name are read: an uncommitted run's files, or a
    stray file in a run folder, are never part of the result. Runs of different settings
    are refused (:func:`committed_settings`).
    """
    committed_settings(spark, output_root)  # runs of mixed settings are refused
    records = _committed(spark, output_root)
    features = join(output_root, FEATURES)
    files = [
        spark_uri(join(features, f"run={r['run']}", f["name"])) for r in records for f in r["files"]
    ]
    if not files:
        raise FileNotFoundError(
            f"no features under output_root '{output_root}': run 02_feature_extraction first"
        )
    rows = spark.read.option("basePath", spark_uri(features)).parquet(*files)
    if len(records) == 1:
        return rows
    newest = Window.partitionBy("path").orderBy(F.desc("run"))
    return rows.withColumn("_rank", F.row_number().over(newest)).where("_rank = 1").drop("_rank")


def pending_images(
    spark: SparkSession, images: DataFrame, output_root: str, *, overwrite: bool = False
) -> DataFrame:
    """The images of ``images`` that still need features: new, or changed since featurized."""
    if overwrite or not _committed(spark, output_root):
        return images
    done = read_features(spark, output_root).select(
        "path", F.col("size").alias("length"), F.col("modified").alias("modificationTime")
    )
    return images.join(done, ["path", "length", "modificationTime"], "left_anti")


def _record(
    run_id: str, files: list[dict[str, Any]], rows: int, overwrite: bool, settings: dict[str, Any]
) -> bytes:
    return json.dumps(
        {
            "run": run_id,
            "files": files,
            "rows": rows,
            "overwrite": overwrite,
            "settings": _recorded(settings),
            "committed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "layout": LAYOUT_VERSION,
        },
        indent=1,
    ).encode()


def _tmp_record(name: str) -> bool:
    """Whether ``name`` is a temporary commit record :func:`write_whole` left behind."""
    match = re.match(r"^\.run=(.+)\.json\.[0-9a-f]{8}\.tmp$", name)
    return bool(match and RUN_ID.match(match.group(1)))


def _prepare(spark: SparkSession, output_root: str) -> set[str]:
    """Make ``features/`` ready for a new run; return the committed run ids.

    ``run=`` folders without a record (left by a killed run) are removed, and so are the
    runs an overwrite run made obsolete, and records a killed run did not rename. A
    ``features/`` holding anything else is refused, naming it.
    """
    features = join(output_root, FEATURES)
    commits = join(features, COMMITS)
    entries = fs_children(spark, features)
    foreign = sorted(
        name
        for name, is_dir, _ in entries
        if not (is_dir and (name == COMMITS or RUN_ID.match(name.removeprefix("run="))))
    )
    if foreign:
        raise FileExistsError(
            f"{features} holds files this pipeline did not write ({', '.join(foreign[:5])}): "
            "move them elsewhere or choose another output_root"
        )
    records = _commit_records(spark, output_root)
    for name, is_dir, _ in fs_children(spark, commits):
        if not is_dir and _tmp_record(name):
            fs_delete(spark, join(commits, name))
    visible = {r["run"] for r in _committed(spark, output_root)}
    for record in records:
        if record["run"] not in visible:  # made obsolete by a later overwrite run
            fs_delete(spark, join(features, f"run={record['run']}"))
            fs_delete(spark, join(commits, f"run={record['run']}.json"))
    for name, is_dir, _ in entries:
        run = name.removeprefix("run=")
        if is_dir and name.startswith("run=") and RUN_ID.match(run) and run not in visible:
            log.info("removing %s, left by a run that did not commit", name)
            fs_delete(spark, join(features, name))
    return visible


def _observed_rows(observation: Observation, timeout: float = OBSERVED_WAIT_S) -> int | None:
    """The rows the write observed, or ``None`` if they do not arrive within ``timeout``
    seconds. ``Observation.get`` has no timeout of its own: it waits in a daemon thread,
    which only a plan that lost its observation leaves blocked."""
    got: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: got.update(observation.get), name="fruits-observed-rows", daemon=True
    )
    waiter.start()
    waiter.join(timeout)
    return int(got["rows"]) if "rows" in got else None


def _observable(spark: SparkSession) -> bool:
    """Whether ``spark`` returns a write's observed metrics (Spark Connect only from 4.0)."""
    return not is_connect(spark) or int(spark.version.split(".")[0]) >= 4


def write_features(
    spark: SparkSession,
    features: DataFrame,
    output_root: str,
    settings: dict[str, Any],
    *,
    overwrite: bool = False,
) -> str:
    """Write ``features`` as a new run made with ``settings`` and commit it; return its id.

    The rows go straight into ``features/run=<id>/``; the run exists for readers from the
    moment its commit record is written. With ``overwrite`` the older runs are hidden by
    that record and then removed. The record's row count is observed by the write itself
    (``DataFrame.observe``): no second job reads the files back to count them. The whole
    write holds ``output_root``'s lease.
    """
    with writer_lease(output_root, "02_feature_extraction: features/"):
        check_settings(spark, output_root, settings, overwrite=overwrite)
        visible = _prepare(spark, output_root)
        run_id = new_run_id()
        folder = join(output_root, FEATURES, f"run={run_id}")
        observation = Observation(f"fruits-features-{run_id}")
        if _observable(spark):
            features = features.observe(observation, F.count(F.lit(1)).alias("rows"))
        features.write.option(NO_FEATURES_DICTIONARY, "false").parquet(spark_uri(folder))
        files = _data_files(spark, folder)
        rows = _observed_rows(observation) if _observable(spark) else None
        if rows is None:
            if _observable(spark):
                log.warning("the write's row count did not arrive: counting %s with Spark", folder)
            # the schema is known: no job reading a footer to infer it, only the count's
            reader = spark.read.schema(features.schema)
            rows = int(reader.parquet(*[spark_uri(join(folder, f["name"])) for f in files]).count())
        record = _record(run_id, files, rows, overwrite, settings)
        write_whole(spark, join(output_root, FEATURES, COMMITS, f"run={run_id}.json"), record)
        if overwrite:
            for old in sorted(visible):
                fs_delete(spark, join(output_root, FEATURES, COMMITS, f"run={old}.json"))
                fs_delete(spark, join(output_root, FEATURES, f"run={old}"))
    log.info("features run %s committed under %s (%d rows)", run_id, folder, rows)
    return run_id


@dataclass(frozen=True)
class FeatureCounts:
    """Rows of the features dataset: in all, with features (``ok``), with an ``error``; per
    split (``{split: {"rows": n, "ok": n}}``); up to 100 sample errors by path."""

    rows: int
    ok: int
    errors: int
    by_split: dict[str, dict[str, int]]
    error_examples: dict[str, str]

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's keys for these counts."""
        return asdict(self)

    def table(self) -> pd.DataFrame:
        """Rows, with features and with an error, per split and in all: a small table."""
        table = pd.DataFrame(
            [
                {"split": split, "rows": c["rows"], "ok": c["ok"], "errors": c["rows"] - c["ok"]}
                for split, c in sorted(self.by_split.items())
            ]
            + [{"split": "total", "rows": self.rows, "ok": self.ok, "errors": self.errors}]
        )
        return table.set_index("split")


def feature_counts(features: DataFrame) -> FeatureCounts:
    """Rows with features and rows with an error, in total and per split, plus sample errors."""
    by_split = (
        features.groupBy(F.coalesce("split", F.lit("(none)")).alias("split"))
        .agg(F.count("*").alias("rows"), F.count("features").alias("ok"))
        .collect()
    )
    errors = features.where(F.col("error").isNotNull()).select("path", "error").limit(100).collect()
    rows = sum(r["rows"] for r in by_split)
    ok = sum(r["ok"] for r in by_split)
    return FeatureCounts(
        rows=rows,
        ok=ok,
        errors=rows - ok,
        by_split={r["split"]: {"rows": r["rows"], "ok": r["ok"]} for r in by_split},
        error_examples={r["path"]: r["error"] for r in errors},
    )
