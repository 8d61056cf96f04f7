"""File operations on the storage Spark writes to, for a classic or a Connect session.

A classic session goes through Hadoop's FileSystem in the driver's JVM (:mod:`helpers.spark.jvm`:
S3A, EMRFS, HDFS and DBFS as Spark itself sees them, with the session's credentials). A Spark
Connect client has no JVM: it goes through fsspec (local paths, ``/Volumes/...``,
``s3://`` with s3fs and the client's own credentials), which must reach what the server
writes.
"""

from __future__ import annotations

from typing import Any

import fsspec
from pyspark.sql import SparkSession

from helpers.paths import io_uri
from helpers.spark import jvm
from helpers.spark.kind import is_connect


def _fs(uri: str) -> tuple[Any, str]:
    return fsspec.core.url_to_fs(io_uri(uri))


def fs_scheme(spark: SparkSession, uri: str) -> str:
    """The scheme of the file system that holds ``uri`` (``file``, ``s3a``, ``hdfs``...)."""
    if not is_connect(spark):
        return jvm.fs_scheme(spark, uri)
    protocol = _fs(uri)[0].protocol
    return str(protocol if isinstance(protocol, str) else protocol[0])


def fs_delete(spark: SparkSession, uri: str, recursive: bool = True) -> None:
    """Delete ``uri`` (and, ``recursive``, everything under it) if it exists."""
    if not is_connect(spark):
        return jvm.fs_delete(spark, uri, recursive)
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def fs_move(spark: SparkSession, source: str, target: str) -> None:
    """Rename ``source`` to ``target``, replacing ``target``; its parent is created.

    One rename on local disk (atomic); a copy and a delete per file on S3.
    """
    if not is_connect(spark):
        return jvm.fs_move(spark, source, target)
    fs, origin = _fs(source)
    _, destination = _fs(target)
    fs.makedirs(destination.rsplit("/", 1)[0], exist_ok=True)
    if fs.exists(destination):
        fs.rm(destination, recursive=True)
    fs.mv(origin, destination, recursive=True)


def fs_write(spark: SparkSession, uri: str, data: bytes) -> None:
    """Create (or replace) the file ``uri`` holding ``data``: one create-write-close."""
    if not is_connect(spark):
        return jvm.fs_write(spark, uri, data)
    fs, path = _fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as stream:
        stream.write(data)


def fs_read_text(spark: SparkSession, uri: str) -> str:
    """The text (UTF-8) of the file ``uri``."""
    if not is_connect(spark):
        return jvm.fs_read_text(spark, uri)
    fs, path = _fs(uri)
    with fs.open(path, "rb") as stream:
        return stream.read().decode("utf-8")


def fs_children(spark: SparkSession, uri: str) -> list[tuple[str, bool, int]]:
    """Name, is-folder and size of each entry directly under ``uri`` (none if missing)."""
    if not is_connect(spark):
        return jvm.fs_children(spark, uri)
    fs, path = _fs(uri)
    if not fs.isdir(path):
        return []
    return [
        (entry["name"].rstrip("/").rsplit("/", 1)[-1], is_dir, 0 if is_dir else int(entry["size"]))
        for entry in fs.ls(path, detail=True)
        for is_dir in [entry["type"] == "directory"]
    ]
