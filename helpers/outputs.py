"""What notebooks 03 and 04 publish: versioned folders behind one pointer, written last.

Layout::

    <output_root>/pca_model/v=<id>/            the fitted scaler + PCA (Spark ML)
    <output_root>/pca/v=<id>/part-*.parquet     the reduced rows
    <output_root>/pca/_current.json             {"version": "<id>", ...}: readers follow it
    <output_root>/pipeline_model/v=<id>/        notebook 04's PipelineModel
    <output_root>/pipeline_model/_current.json

A publish writes its new version beside the old ones, then the pointer (one PUT on S3, a
temporary file renamed locally), then removes the versions the pointer no longer names. A
reader sees the old version or the new one, whole, whichever step a writer is killed at; on
S3 no rename is involved. ``pca_model`` and ``pca`` are published together under one id and
``pca``'s pointer is written last: readers of the pair follow it (:func:`published`).

A folder to publish into that holds anything else than versions and a pointer (a user's
files, an output of a version of this pipeline that had no pointers) is refused, naming it:
the pipeline deletes only ``v=<id>`` folders under its own pointer. ``python -m helpers.outputs
clean DIR`` (``make clean``) removes what the pipeline wrote under a local ``output_root`` and
nothing else.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import SparkSession

from helpers.features.store import COMMITS, FEATURES, RUN_ID, new_run_id, write_whole
from helpers.lease import LEASE, check_free, writer_lease
from helpers.paths import exists, is_remote, join, read_bytes, resolve, spark_uri
from helpers.spark.files import fs_children, fs_delete

POINTER = "_current.json"
VERSION = re.compile(rf"^v=({RUN_ID.pattern.strip('^$')})$")
#: Temporary files of :func:`helpers.features.store.write_whole`, left by a killed writer.
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
#: Folders where a Spark Connect session stages fitted models for its server to load
#: (:func:`staging_folder`), left by a killed notebook 03.
STAGING = re.compile(r"^\.pca-fit\.[0-9a-f]{8}\.tmp$")


def staging_folder(output_root: str) -> str:
    """A new hidden folder of ``output_root`` for models the server loads, then removed."""
    return join(output_root, f".pca-fit.{uuid.uuid4().hex[:8]}.tmp")


#: The figures the notebooks save under ``figures/`` (``helpers.plots.save_figure``).
FIGURES = (
    "class_balance",
    "sample_grid",
    "class_variability",
    "class_mean_extremes",
    "class_means",
    "pca_variance",
    "tsne",
)
#: The notebooks, in order: ``python -m helpers.run`` writes their executed copies to
#: ``notebooks/``.
NOTEBOOKS = (
    "01_eda.ipynb",
    "02_feature_extraction.ipynb",
    "03_pca_tsne.ipynb",
    "04_classifier.ipynb",
)
PUBLISHED = ("pca_model", "pca", "pipeline_model")


def _checked(name: str) -> str:
    """The file whose checksum Hadoop's local file system keeps in ``name`` (``.<file>.crc``),
    else ``name``."""
    return name[1 : -len(".crc")] if name.startswith(".") and name.endswith(".crc") else name


def _our_file(name: str) -> bool:
    """Whether a file of a published folder is ours: the pointer, a temporary one, or the
    checksum of either."""
    return _checked(name) == POINTER or bool(TEMPORARY.match(_checked(name)))


def _foreign(entries: list[tuple[str, bool, int]]) -> list[str]:
    """The entries of a published folder this pipeline did not write."""
    return sorted(
        name
        for name, is_dir, _ in entries
        if not (VERSION.match(name) if is_dir else _our_file(name))
    )


def _check_ours(spark: SparkSession, folder: str) -> None:
    """Refuse to publish into ``folder`` if it holds anything this pipeline did not write."""
    foreign = _foreign(fs_children(spark, folder))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{folder} holds files this pipeline did not write ({shown}): it only publishes "
            f"into a folder of its own (v=<id>/ versions and {POINTER}). Move them elsewhere "
            "or choose another output_root; an output of a version of this pipeline older "
            "than its pointers can be deleted and made again"
        )


def publish(
    spark: SparkSession,
    output_root: str,
    writers: dict[str, Callable[[str], None]],
    *,
    purpose: str,
) -> str:
    """Publish one new version of each folder of ``writers`` (name -> write(uri)); its id.

    Every version is written before any pointer, and the pointers in ``writers``' order:
    the last is the one readers of the set follow. Older versions are removed after.
    """
    version = new_run_id()
    with writer_lease(output_root, purpose):
        for name in writers:
            _check_ours(spark, join(output_root, name))
        for name, write in writers.items():
            write(spark_uri(join(output_root, name, f"v={version}")))
        record = {
            "version": version,
            "together": list(writers),
            "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for name in writers:
            write_whole(spark, join(output_root, name, POINTER), json.dumps(record).encode())
        for name in writers:
            folder = join(output_root, name)
            for entry, is_dir, _ in fs_children(spark, folder):
                if (is_dir and VERSION.match(entry) and entry != f"v={version}") or (
                    not is_dir and TEMPORARY.match(_checked(entry))
                ):
                    fs_delete(spark, join(folder, entry))
    return version


def current_version(output_root: str, name: str) -> str:
    """The version ``name``'s pointer names; ``FileNotFoundError`` when there is none yet."""
    pointer = join(output_root, name, POINTER)
    if not exists(pointer):
        raise FileNotFoundError(
            f"nothing published in {join(output_root, name)} (no {POINTER}): run the notebook "
            "that writes it first"
        )
    try:
        version = json.loads(read_bytes(pointer))["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{pointer} was not written by this pipeline: {exc}") from exc
    if not isinstance(version, str) or not RUN_ID.match(version):
        raise ValueError(f"{pointer} names version {version!r}, not one this pipeline writes")
    return version


def published(output_root: str, name: str, *, via: str = "") -> str:
    """The Spark URI of ``name``'s current version (of ``via``'s version, if given)."""
    version = current_version(output_root, via or name)
    return spark_uri(join(output_root, name, f"v={version}"))


def model_folder(path: str) -> str:
    """A saved model's folder for Spark: the version ``path``'s pointer names, else ``path``
    itself (a model saved by ``PipelineModel.save``)."""
    if exists(join(path, POINTER)):
        parent, name = resolve(path).rsplit("/", 1)
        return published(parent, name)
    return spark_uri(path)


def clean(output_root: str) -> list[str]:
    """Remove what the pipeline wrote under the local ``output_root``; return what is left.

    Committed feature runs and their records, published versions and their pointers, the
    notebooks' figures, executed notebooks and manifest, then those folders if empty: a
    user's file or folder anywhere under it stays.
    """
    root = Path(resolve(output_root))
    if is_remote(str(root)):
        raise ValueError(f"clean takes a local output_root, not '{output_root}'")
    if not root.is_dir():
        return []
    check_free(str(root))
    features = root / FEATURES
    commits = features / COMMITS
    if commits.is_dir():
        for record in commits.iterdir():
            name = record.name.removeprefix("run=").removesuffix(".json")
            if RUN_ID.match(name) and record.name == f"run={name}.json":
                shutil.rmtree(features / f"run={name}", ignore_errors=True)
                record.unlink()
            elif TEMPORARY.match(record.name):
                record.unlink()
    for entry in features.glob("run=*") if features.is_dir() else ():
        if RUN_ID.match(entry.name.removeprefix("run=")):  # a killed run's, never committed
            shutil.rmtree(entry)
    for name in PUBLISHED:
        folder = root / name
        if (folder / POINTER).is_file():
            for entry in folder.iterdir():
                if entry.is_dir() and VERSION.match(entry.name):
                    shutil.rmtree(entry)
                elif not entry.is_dir() and _our_file(entry.name):
                    entry.unlink()
    for entry in root.iterdir():
        if entry.is_dir() and STAGING.match(entry.name):
            shutil.rmtree(entry)
    for path in [
        *(root / "figures" / f"{name}.png" for name in FIGURES),
        *(root / "notebooks" / name for name in NOTEBOOKS),
        root / "manifest.json",
        root / LEASE,
    ]:
        path.unlink(missing_ok=True)
    ours = [commits, features, *(root / n for n in (*PUBLISHED, "figures", "notebooks")), root]
    for folder in ours:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.is_dir() else []


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.outputs clean DIR``: remove what the pipeline wrote under DIR."""
    parser = argparse.ArgumentParser(prog="python -m helpers.outputs", description=clean.__doc__)
    parser.add_argument("command", choices=["clean"])
    parser.add_argument("output_root")
    args = parser.parse_args(argv)
    left = clean(args.output_root)
    if left:
        print(f"kept {len(left)} entries this pipeline did not write under {args.output_root}:")
        print("\n".join(f"  {p}" for p in left[:20]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
