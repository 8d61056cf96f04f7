"""The features dataset: incremental re-runs, atomic publication, worker crashes retried."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SETTINGS, crash_first_attempt, run_script, write_jpeg
from pyspark.sql import Observation
from pyspark.sql import functions as F

from helpers.features import store
from helpers.features.extract import Extraction, extract_features
from helpers.features.spec import FeatureSpec
from helpers.features.store import COMMITS, read_features, write_features
from helpers.images import list_images


def _add_images(root: Path, label: str, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        write_jpeg(root / "Training" / label / f"{i}_100.jpg", (30, 160, 40), seed=1000 + i)


def _extract(spark, root: Path, out: Path, weights: str, **kwargs) -> Extraction:
    spec = FeatureSpec(weights=weights, batch_size=8)
    return extract_features(spark, str(root), str(out), spec, **kwargs)


def _rows(spark, out: Path):
    return read_features(spark, str(out)).toPandas().set_index("path").sort_index()


def _run_folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "features").glob("run=*"))


def _records(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "features" / COMMITS).glob("run=*.json"))


def test_rerun_featurizes_only_new_and_changed_images(spark, weights, tiny_root, tmp_path):
    """Run, add 5 images, run again: exactly 5 featurized, no duplicates; then a changed file."""
    out = tmp_path / "out"
    first = _extract(spark, tiny_root, out, weights)
    assert first.featurized == first.images_decoded == 10

    _add_images(tiny_root, "Kiwi", 5)
    second = _extract(spark, tiny_root, out, weights)
    assert (second.featurized, second.images_decoded, second.skipped) == (5, 5, 10)
    rows = _rows(spark, out)
    assert len(rows) == rows.index.nunique() == 15

    changed = tiny_root / "Training" / "Kiwi" / "0_100.jpg"
    write_jpeg(changed, (90, 60, 20), size=120, seed=7)  # new content and size
    third = _extract(spark, tiny_root, out, weights)
    assert third.featurized == 1
    rows_after = _rows(spark, out)
    assert len(rows_after) == 15
    assert rows_after.loc[f"file:{changed}", "size"] == changed.stat().st_size

    nothing = _extract(spark, tiny_root, out, weights)
    assert nothing.featurized == 0 and nothing.run_id is None


def test_overwrite_recomputes_everything_and_keeps_one_run(spark, weights, tiny_root, tmp_path):
    """overwrite featurizes every image again and leaves a single published run."""
    out = tmp_path / "out"
    _extract(spark, tiny_root, out, weights)
    again = _extract(spark, tiny_root, out, weights, overwrite=True)
    assert again.featurized == 10
    assert _run_folders(out) == [f"run={again.run_id}"]
    assert _records(out) == [f"run={again.run_id}.json"]
    assert len(_rows(spark, out)) == 10


def test_crashed_worker_is_retried_and_result_identical(
    spark, weights, tiny_root, tmp_path, monkeypatch
):
    """A Python worker killed mid-task on its first attempt: Spark retries, same features."""
    _extract(spark, tiny_root, tmp_path / "clean", weights)
    crash_first_attempt(monkeypatch)
    spark.sparkContext.setJobGroup("crash-test", "worker crash injected")
    crashed = _extract(spark, tiny_root, tmp_path / "crashed", weights)
    spark.sparkContext.setJobGroup("", "")
    tracker = spark.sparkContext.statusTracker()
    stages = [
        tracker.getStageInfo(stage)
        for job in tracker.getJobIdsForGroup("crash-test")
        for stage in tracker.getJobInfo(job).stageIds
    ]
    assert sum(s.numFailedTasks for s in stages if s) >= 1  # the worker did crash
    # accumulators count successful attempts only: still one decode per image
    assert crashed.featurized == crashed.images_decoded == 10
    expected, got = _rows(spark, tmp_path / "clean"), _rows(spark, tmp_path / "crashed")
    assert list(got.index) == list(expected.index)
    np.testing.assert_array_equal(np.stack(got["features"]), np.stack(expected["features"]))


# The driver kills itself from a worker at task 0's first batch: a run interrupted mid-write.
KILLED_RUN = """
import os, signal, sys
import helpers.features.udf as udf
from helpers.features.extract import extract_features
from helpers.features.spec import FeatureSpec
from helpers.spark.session import get_spark
original, driver = udf.featurize_batch, os.getpid()
def killing(*args, **kwargs):
    from pyspark import TaskContext
    if TaskContext.get().partitionId() == 0:
        os.kill(driver, signal.SIGKILL)
    return original(*args, **kwargs)
udf.featurize_batch = killing
spark = get_spark("killed-run", master="local[2]", driver_memory="1g")
spec = FeatureSpec(weights=sys.argv[3], batch_size=8)
extract_features(spark, sys.argv[1], sys.argv[2], spec)
"""


@pytest.mark.slow
def test_run_killed_mid_write_leaves_previous_outputs(spark, weights, tiny_root, tmp_path):
    """The driver killed while writing: previous features intact; the next run completes."""
    out = tmp_path / "out"
    _extract(spark, tiny_root, out, weights)
    before = _rows(spark, out)
    _add_images(tiny_root, "Kiwi", 3)

    log = tmp_path / "killed.log"
    killed = run_script(KILLED_RUN, str(tiny_root), str(out), weights, log=log)
    assert killed == -9, log.read_text()[-2000:]
    assert len(_run_folders(out)) == 2 and len(_records(out)) == 1  # killed while writing

    after = _rows(spark, out)
    assert list(after.index) == list(before.index)
    resumed = _extract(spark, tiny_root, out, weights)
    assert resumed.featurized == 3
    assert len(_rows(spark, out)) == 13
    assert [f"{name}.json" for name in _run_folders(out)] == _records(out)  # debris gone


def test_empty_file_gets_a_row_with_an_error(spark, weights, tiny_root, tmp_path):
    """Spark's scan skips 0-byte files; the pipeline still gives them a row and a reason."""
    empty = tiny_root / "Test" / "Banana" / "empty.jpg"
    empty.write_bytes(b"")
    summary = _extract(spark, tiny_root, tmp_path / "out", weights)
    rows = _rows(spark, tmp_path / "out")
    assert summary.files == len(rows) == 11
    assert rows.loc[f"file:{empty}", "error"] == "empty file"
    assert rows.loc[f"file:{empty}", "features"] is None


def test_feature_values_are_written_without_a_dictionary(spark, tmp_path):
    """The writer makes no dictionary of the feature values (floats that never repeat: it
    would hash them and fall back anyway); other columns keep Parquet's defaults. Repeated
    values make the contrast: Parquet would encode both columns with a dictionary."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    rows = spark.range(64).selectExpr(
        "'same' AS path", "array_repeat(CAST(1.5 AS FLOAT), 8) AS features", "id AS size"
    )
    write_features(spark, rows, str(out), SETTINGS)
    encodings = {}
    for file in out.glob("features/run=*/*.parquet"):
        metadata = pq.ParquetFile(file).metadata
        if not metadata.num_row_groups:
            continue
        group = metadata.row_group(0)
        for i in range(group.num_columns):
            column = group.column(i)
            encodings.setdefault(column.path_in_schema, set()).update(column.encodings)
    assert not any("DICTIONARY" in e for e in encodings["features.list.element"])
    assert any("DICTIONARY" in e for e in encodings["path"])


def _record_rows(out: Path) -> list[int]:
    return [json.loads((out / "features" / COMMITS / n).read_text())["rows"] for n in _records(out)]


def test_commit_record_counts_the_rows_the_write_observed(spark, tmp_path):
    """The record's row count comes from the write itself (several files, or none); an
    observation no action completes gives no count once the wait is over."""
    out = tmp_path / "out"
    rows = spark.range(64).selectExpr("concat('p-', id) AS path", "id AS size", "id AS modified")
    write_features(spark, rows.repartition(3), str(out), SETTINGS)
    write_features(spark, rows.where("id < 0"), str(out), SETTINGS)
    assert sorted(_record_rows(out)) == [0, 64]
    assert read_features(spark, str(out)).count() == 64

    pending = Observation("never-run")
    spark.range(3).observe(pending, F.count(F.lit(1)).alias("rows"))  # no action: no count
    assert store._observed_rows(pending, timeout=0.2) is None


def test_commit_record_counts_the_files_when_the_observed_count_is_missing(
    spark, tmp_path, monkeypatch, caplog
):
    """Without the observed count, the written files are counted with Spark, saying so."""
    out = tmp_path / "out"
    monkeypatch.setattr(store, "_observed_rows", lambda observation: None)
    rows = spark.range(5).selectExpr("concat('p-', id) AS path", "id AS size", "id AS modified")
    with caplog.at_level("WARNING", logger="helpers.features.store"):
        write_features(spark, rows.repartition(2), str(out), SETTINGS)
    assert "counting" in caplog.text and _record_rows(out) == [5]


def test_a_crafted_commit_record_is_ignored_and_never_followed(spark, tmp_path, caplog):
    """A record whose ``run`` climbs out of ``features/`` (or names odd files) is named in a
    warning and ignored: an overwrite run deletes nothing outside its own runs."""
    out = tmp_path / "out"
    canary = tmp_path / "canary"
    (canary / "keep").mkdir(parents=True)
    rows = spark.range(3).selectExpr("concat('p-', id) AS path", "id AS size", "id AS modified")
    write_features(spark, rows, str(out), SETTINGS)
    commits = out / "features" / COMMITS
    crafted = {"run": "x/../../../canary", "files": [], "rows": 0, "overwrite": False}
    (commits / "run=x.json").write_text(json.dumps(crafted))
    odd_file = {**crafted, "run": "20990101T000000Z-abcdef", "files": [{"name": "../../x"}]}
    (commits / "run=20990101T000000Z-abcdef.json").write_text(json.dumps(odd_file))
    (commits / "run=20990101T000000Z-000000.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="helpers.features.store"):
        assert read_features(spark, str(out)).count() == 3
        write_features(spark, rows, str(out), SETTINGS, overwrite=True)
    assert (canary / "keep").is_dir()
    for name in ("run=x.json", "run=20990101T000000Z-abcdef.json", "not valid JSON"):
        assert name in caplog.text
    assert read_features(spark, str(out)).count() == 3


def test_a_users_files_in_features_are_refused_and_kept(spark, tmp_path):
    """``features/`` holding a file or folder this pipeline did not write: refused, kept."""
    out = tmp_path / "out"
    (out / "features" / "mine").mkdir(parents=True)
    rows = spark.range(2).selectExpr("concat('p-', id) AS path", "id AS size", "id AS modified")
    with pytest.raises(FileExistsError, match="features holds files .*mine"):
        write_features(spark, rows, str(out), SETTINGS)
    assert sorted(p.name for p in (out / "features").iterdir()) == ["mine"]


def test_other_settings_are_refused_unless_overwrite(spark, weights, tiny_root, tmp_path):
    """Features made at 224 px, two new images, a re-run at 100 px without ``overwrite``:
    refused naming both settings and ``overwrite``, nothing written; with ``overwrite`` every
    image is featurized again and the records name 100 px."""
    out = tmp_path / "out"
    _extract(spark, tiny_root, out, weights)
    _add_images(tiny_root, "Kiwi", 2)
    at_100 = FeatureSpec(weights=weights, batch_size=8, image_size=100)
    with pytest.raises(ValueError, match=r"image_size 224.*image_size 100.*overwrite=True"):
        extract_features(spark, str(tiny_root), str(out), at_100)
    assert len(_records(out)) == 1
    again = extract_features(spark, str(tiny_root), str(out), at_100, overwrite=True)
    assert again.featurized == 12
    assert store.committed_settings(spark, str(out))["image_size"] == 100


def test_runs_of_mixed_settings_are_refused_by_readers(spark, tmp_path):
    """Two committed runs of different settings (or one without settings): readers refuse."""
    out = tmp_path / "out"
    rows = spark.range(2).selectExpr("concat('p-', id) AS path", "id AS size", "id AS modified")
    write_features(spark, rows, str(out), SETTINGS)
    record = out / "features" / COMMITS / _records(out)[0]
    changed = json.loads(record.read_text())
    changed["run"] = "20990101T000000Z-abcdef"
    changed["settings"]["image_size"] = 100
    (record.parent / f"run={changed['run']}.json").write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="mix runs of different settings"):
        read_features(spark, str(out))
    del changed["settings"]
    (record.parent / f"run={changed['run']}.json").write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="committed before settings were recorded"):
        read_features(spark, str(out))


def test_a_file_vanishing_after_the_listing_is_named(
    spark, weights, tiny_root, tmp_path, monkeypatch
):
    """A file deleted between the driver's listing and Spark's scan: the run completes and
    the extraction (the manifest's ``features`` section) names it."""
    from helpers.features import extract

    gone = tiny_root / "Training" / "Banana" / "0_100.jpg"

    def listing_then_delete(spark, data_root):
        listing = list_images(spark, data_root)
        gone.unlink()
        return listing

    monkeypatch.setattr(extract, "list_images", listing_then_delete)
    done = _extract(spark, tiny_root, tmp_path / "out", weights)
    assert done.files == 10 and done.vanished == [f"file:{gone}"]
    assert done.to_manifest()["vanished"] == 1 and len(_rows(spark, tmp_path / "out")) == 9
