"""Tests for helpers.outputs: versioned publishes behind a pointer, refusals, ``clean``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_script

from helpers.outputs import POINTER, clean, current_version, publish, published
from helpers.paths import io_uri

#: A writer publishing ``pca_model`` and ``pca`` (``n`` rows in each) with a fault:
#: SIGKILLed before any pointer, between the two pointers, or after both before tidying up.
PUBLISH = """
import os, signal, sys
from helpers import outputs
from helpers.spark.session import get_spark
root, n, fault = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kill = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
write_whole, fs_delete = outputs.write_whole, outputs.fs_delete
if fault == "versions-written":
    outputs.write_whole = kill
elif fault == "first-pointer":
    outputs.write_whole = lambda spark, uri, data: (
        write_whole(spark, uri, data), kill() if "/pca_model/" in uri else None
    )
elif fault == "pointers-written":
    outputs.fs_delete = kill
spark = get_spark("publish-kill", master="local[1]", driver_memory="1g", output_root=root)
rows = spark.range(n).selectExpr("id", f"{n} AS run")
outputs.publish(
    spark,
    root,
    {
        "pca_model": lambda uri: rows.limit(1).write.parquet(uri),
        "pca": lambda uri: rows.write.parquet(uri),
    },
    purpose="test",
)
print("DONE", flush=True)
"""


def _publish(root: str, n: int, fault: str, log: Path) -> int:
    return run_script(PUBLISH, root, str(n), fault, log=log)


def _visible(root: str) -> tuple[int, int]:
    """The run number of the ``pca`` rows readers see, and of the ``pca_model`` paired with it."""
    pca = pd.read_parquet(io_uri(published(root, "pca")))
    model = pd.read_parquet(io_uri(published(root, "pca_model", via="pca")))
    assert len(pca) == pca["run"].iloc[0]  # whole: every row of that version
    return int(pca["run"].iloc[0]), int(model["run"].iloc[0])


def publish_kill_chain(root: str, tmp_path: Path) -> None:
    """Publish, then kill a writer before any pointer, between ``pca_model``'s and ``pca``'s,
    and after both; then publish again. Readers see a whole pair at every step."""
    assert _publish(root, 3, "", tmp_path / "3.log") == 0
    for n, fault, seen in [
        (4, "versions-written", (3, 3)),
        (5, "first-pointer", (3, 3)),
        (6, "pointers-written", (6, 6)),
    ]:
        log = tmp_path / f"{n}.log"
        assert _publish(root, n, fault, log) == -9, log.read_text()[-3000:]
        assert _visible(root) == seen, fault
    assert _publish(root, 7, "", tmp_path / "7.log") == 0, (tmp_path / "7.log").read_text()[-3000:]
    assert _visible(root) == (7, 7)


@pytest.mark.slow
def test_publish_killed_at_every_step_leaves_the_previous_pair(tmp_path: Path) -> None:
    """A writer SIGKILLed before any pointer, between ``pca_model``'s and ``pca``'s, or after
    both: readers see the previous pair whole (or the new one once ``pca``'s pointer is
    written), and the next publish completes and leaves one version of each."""
    root = tmp_path / "out"
    publish_kill_chain(str(root), tmp_path)
    for name in ("pca", "pca_model"):
        entries = sorted(p.name for p in (root / name).iterdir() if p.suffix != ".crc")
        assert entries == [POINTER, f"v={current_version(str(root), 'pca')}"], entries


def test_a_users_files_in_a_published_folder_are_refused_and_kept(spark, tmp_path: Path) -> None:
    """``pca/`` or ``pca_model/`` holding a file this pipeline did not write: the publish is
    refused naming the folder and the file, and nothing is deleted."""
    root = tmp_path / "out"
    (root / "pca_model").mkdir(parents=True)
    (root / "pca_model" / "notes.txt").write_text("mine")
    rows = spark.range(3)
    with pytest.raises(FileExistsError, match=r"pca_model holds files .*notes\.txt"):
        publish(spark, str(root), {"pca_model": rows.write.parquet}, purpose="test")
    assert (root / "pca_model" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (root / "pca_model").iterdir()) == ["notes.txt"]
    with pytest.raises(FileNotFoundError, match="nothing published"):
        published(str(root), "pca_model")


def test_a_pointer_naming_a_path_is_refused(spark, tmp_path: Path) -> None:
    """A pointer whose version is not a run id is never followed."""
    root = tmp_path / "out"
    publish(spark, str(root), {"pca": spark.range(2).write.parquet}, purpose="test")
    (root / "pca" / POINTER).write_text(json.dumps({"version": "../../elsewhere"}))
    with pytest.raises(ValueError, match="not one this pipeline writes"):
        published(str(root), "pca")


def test_clean_removes_only_what_the_pipeline_wrote(spark, tmp_path: Path) -> None:
    """``clean`` (make clean) removes published versions, pointers, figures, notebooks and
    the manifest; a user's files and folders stay."""
    root = tmp_path / "out"
    publish(spark, str(root), {"pca": spark.range(2).write.parquet}, purpose="test")
    for name in (
        "figures/tsne.png",
        "notebooks/01_eda.ipynb",
        "manifest.json",
        ".pca-fit.0123abcd.tmp/pca/metadata/part-00000",  # a killed Connect notebook 03's
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    for name in ("figures/my_plot.png", "pca/notes.txt", "mine/data.csv", ".pca-fit.mine/x"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("mine")
    (root / "empty_mine").mkdir()
    left = clean(str(root))
    assert left == [".pca-fit.mine", ".pca-fit.mine/x", "empty_mine", "figures",
                    "figures/my_plot.png", "mine", "mine/data.csv", "pca",
                    "pca/notes.txt"]  # fmt: skip
    assert clean(str(tmp_path / "missing")) == []
    only_ours = tmp_path / "ours"
    publish(spark, str(only_ours), {"pca": spark.range(2).write.parquet}, purpose="test")
    assert clean(str(only_ours)) == [] and not only_ours.exists()
