"""Data locations: one place that turns a user's ``data_root``/``output_root`` into URIs.

Local paths may be relative to the repository root (where ``make run`` lives) or absolute;
``file:``, ``s3://``, ``s3a://``, ``dbfs:/`` and ``/Volumes/`` are kept as given for Spark
(:func:`spark_uri`). Files that are not Spark's (figures, manifest, executed notebooks,
Parquet read back with pandas) use :func:`io_uri`, the same location as fsspec, s3fs,
pandas and papermill name it: ``s3a://`` becomes ``s3://`` (one bucket, one s3fs client)
and ``dbfs:/x`` the driver's FUSE path ``/dbfs/x``. S3 credentials and an S3-compatible
endpoint come from the environment (AWS default chain, ``AWS_ENDPOINT_URL``), never from
here, and errors name the bucket and the fix. A URI holding credentials (``user:secret@`` in
any scheme, any case) is refused by every function here that looks at a URI, and no message
shows them (:func:`refuse_credentials`, :func:`redact`).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from stat import S_ISLNK, S_ISREG

import fsspec

from helpers import PROJECT_ROOT

#: Schemes of object stores and cluster file systems, matched case-insensitively.
_REMOTE_SCHEMES = ("s3", "s3a", "s3n", "gs", "abfss", "hdfs", "dbfs")
_S3_SCHEMES = ("s3", "s3a", "s3n")

#: Azure's schemes name the container where userinfo would be (``abfss://container@account``):
#: there only a ``:`` (``container:secret@``) makes it credentials.
_CONTAINER_SCHEMES = ("abfs", "abfss", "wasb", "wasbs")
_CONTAINER_RE = re.compile(r"^[a-z0-9$][a-z0-9-]*$")

#: ``scheme:`` at the start of a URI (RFC 3986), and whether ``//`` (an authority) follows.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")
_AUTHORITY_END = re.compile(r"[/?#]")

#: Unity Catalog volumes: a FUSE path on Databricks, read by Spark without a scheme.
VOLUMES_PREFIX = "/Volumes/"

#: Where Databricks mounts ``dbfs:/`` on the driver for plain file access.
DBFS_FUSE = "/dbfs"


def _credentials_span(uri: str) -> tuple[int, int] | None:
    """Where the credentials of ``scheme://user:secret@host/...`` are in ``uri``, if any.

    Credentials are userinfo (``@`` in the authority) in every scheme but Azure's, where
    ``container@`` names a container unless it holds more than a container name may; or a
    ``:`` not followed by a port (``s3://KEY:SECRET/...``; an S3 bucket name has no ``:`` at
    all). A secret holding ``/`` (AWS secret keys may) makes the span run to the first ``@``
    after it, or to the end.
    """
    match = _SCHEME_RE.match(uri)
    if match is None or not match.group(2):
        return None
    start = match.end()
    stop = _AUTHORITY_END.search(uri, start)
    end = stop.start() if stop else len(uri)
    authority = uri[start:end]
    if "@" in authority:
        userinfo = authority[: authority.rindex("@")]
        container = match.group(1).lower() in _CONTAINER_SCHEMES
        if not (container and _CONTAINER_RE.match(userinfo)):
            return start, start + len(userinfo)
        authority = authority[len(userinfo) + 1 :]
    host = authority.rsplit("]", 1)[-1]  # an IPv6 literal [::1] holds colons of its own
    _, colon, port = host.rpartition(":")
    s3 = match.group(1).lower() in _S3_SCHEMES
    if colon and (s3 or not port.isdigit()):
        at = uri.find("@", start)
        return start, at if at != -1 else len(uri)  # no @: where the secret ends is unknown
    return None


def redact(uri: str) -> str:
    """``uri`` with any credentials replaced by ``***`` (``s3://***@bucket/x``): for messages."""
    span = _credentials_span(uri.strip())
    if span is None:
        return uri
    text = uri.strip()
    return text[: span[0]] + "***" + text[span[1] :]


def refuse_credentials(uri: str, name: str = "path") -> None:
    """Raise ``ValueError`` naming ``name`` if ``uri`` holds credentials, without showing them.

    Credentials in a URI would end up in the notebooks, the manifest, Spark's settings and
    logs; they belong in the environment, ``AWS_PROFILE`` or an instance role.
    """
    if _credentials_span(uri.strip()) is None:
        return
    raise ValueError(
        f"{name} '{redact(uri)}' holds credentials in a URI (user:secret@), refused: they "
        "would end up in notebooks, the manifest, Spark's settings and logs; give it without "
        "them (e.g. s3://bucket/prefix) and provide credentials through the environment, "
        "AWS_PROFILE or an instance role"
    )


def _scheme(uri: str) -> str:
    """The lower-case scheme of a URI (``'s3'`` for ``S3://b/x``), ``''`` for a plain path."""
    match = _SCHEME_RE.match(uri.strip())
    return match.group(1).lower() if match else ""


def _lower_scheme(uri: str) -> str:
    """``uri`` with its scheme in lower case: ``S3://b/X`` is ``s3://b/X``."""
    scheme = _scheme(uri)
    return scheme + uri[len(scheme) :] if scheme else uri


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store or cluster file system rather than local disk.

    The scheme is matched in any case (``S3://`` is S3); a URI holding credentials raises.
    """
    refuse_credentials(uri, "URI")
    scheme = _scheme(uri)
    if scheme == "dbfs":
        return uri.strip()[len(scheme) + 1 :].startswith("/")
    return scheme in _REMOTE_SCHEMES and "://" in uri


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an ``s3://``, ``s3a://`` or ``s3n://`` URI (any case).

    A URI holding credentials raises.
    """
    refuse_credentials(uri, "URI")
    return _scheme(uri) in _S3_SCHEMES and "://" in uri


def bucket_of(uri: str) -> str:
    """The bucket of an S3 URI: ``'b'`` for ``s3a://b/x/y``."""
    return uri.strip().split("://", 1)[1].split("/", 1)[0]


def resolve(uri: str, name: str = "path") -> str:
    """Return ``uri`` as an absolute local path, or unchanged (minus a trailing /) if remote.

    A relative path is taken from the repository root when running from a checkout,
    so notebooks executed from ``notebooks/`` and ``make run`` agree on ``data_sample``.
    ``/Volumes/...`` is kept as given: it is a Databricks location, not this machine's.
    A remote scheme is written in lower case (``S3://b/x`` is ``s3://b/x``); a URI holding
    credentials raises ``ValueError`` naming ``name``, never showing them.
    """
    if not uri or not uri.strip():
        raise ValueError(
            f"{name} is empty: give a local path, file:, s3://, s3a://, dbfs:/ or /Volumes/"
        )
    uri = uri.strip()
    refuse_credentials(uri, name)
    if is_remote(uri):
        return _lower_scheme(uri).rstrip("/")
    if uri.startswith(VOLUMES_PREFIX):
        return uri.rstrip("/")
    if _scheme(uri) == "file":
        uri = uri[len("file:") :]
        if uri.startswith("//"):
            uri = uri[len("//") :]
    path = Path(uri).expanduser()
    if not path.is_absolute():
        base = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()
        path = base / path
    return str(path.resolve())


def spark_uri(uri: str) -> str:
    """The form Spark reads and writes: ``file:`` for local paths, remote URIs as given.

    ``s3://`` stays ``s3://``: EMRFS serves it on EMR, and :func:`helpers.spark.session.get_spark`
    maps it to S3A elsewhere. ``/Volumes/...`` stays as given for Databricks.
    """
    resolved = resolve(uri)
    if is_remote(resolved) or resolved.startswith(VOLUMES_PREFIX):
        return resolved
    return f"file://{resolved}"


def io_uri(uri: str) -> str:
    """The form fsspec, pandas and papermill use for ``uri``: local path or ``s3://`` URI.

    ``s3a://`` and ``s3n://`` name the same objects as ``s3://`` (papermill only knows
    ``s3://``); ``dbfs:/x`` is read and written through the driver's FUSE mount ``/dbfs/x``.
    """
    resolved = resolve(uri)
    scheme, sep, rest = resolved.partition("://")
    if sep and scheme.lower() in ("s3a", "s3n"):
        return f"s3://{rest}"
    if resolved.startswith("dbfs:/"):
        return DBFS_FUSE + "/" + resolved[len("dbfs:/") :].lstrip("/")
    return resolved


def join(root: str, *parts: str) -> str:
    """Join ``parts`` under ``root`` with ``/``, for local paths and URIs alike."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


@contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn S3 client errors about ``uri`` into one message naming the bucket and the fix.

    Missing bucket, missing or refused credentials and an unreachable endpoint each get
    their own message; the credentials themselves are never part of it.
    """
    try:
        yield
    except FileNotFoundError as exc:
        if is_s3(uri) and "bucket" in str(exc).lower():
            raise FileNotFoundError(_no_bucket(uri)) from exc
        raise
    except PermissionError as exc:
        if not is_s3(uri):
            raise
        raise PermissionError(
            f"S3 refused access to bucket '{bucket_of(uri)}' ({redact(uri)}): the AWS credentials "
            "found (environment, AWS_PROFILE or instance role) are invalid or lack read/write "
            "rights on it; check them with `aws s3 ls s3://" + bucket_of(uri) + "`"
        ) from exc
    except Exception as exc:
        if not is_s3(uri):
            raise
        from botocore.exceptions import (
            CredentialRetrievalError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            raise PermissionError(
                f"no AWS credentials for bucket '{bucket_of(uri)}' ({redact(uri)}): set "
                "AWS_PROFILE (after `aws configure` or `aws sso login`) or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment, or run where an instance role "
                "provides them; never put keys in notebooks or parameters"
            ) from exc
        if isinstance(exc, EndpointConnectionError):
            raise ConnectionError(
                f"cannot reach the S3 endpoint {redact(str(exc.kwargs.get('endpoint_url', '')))} "
                f"for bucket "
                f"'{bucket_of(uri)}': check the s3_endpoint parameter or $AWS_ENDPOINT_URL "
                "(unset both for AWS itself)"
            ) from exc
        raise


def _no_bucket(uri: str) -> str:
    return (
        f"S3 bucket '{bucket_of(uri)}' does not exist ({redact(uri)}): check the bucket name in "
        "data_root/output_root and the endpoint ($AWS_ENDPOINT_URL) it lives on"
    )


def check_access(uri: str) -> None:
    """Fail now, naming the bucket or the credentials, if an ``s3://`` root cannot be used.

    Called before a run so that a typo in a bucket name or an expired login costs a second,
    not a failed notebook. Local paths and other stores pass unchecked.
    """
    if not is_s3(uri):
        return
    fs, path = fsspec.core.url_to_fs(io_uri(uri))
    bucket = path.split("/", 1)[0]
    with storage_errors(uri):
        try:
            fs.ls(bucket, refresh=True)
        except FileNotFoundError as exc:
            raise FileNotFoundError(_no_bucket(uri)) from exc


def exists(uri: str) -> bool:
    """Whether a file or folder exists at ``uri`` (local or remote)."""
    with storage_errors(uri):
        fs, path = fsspec.core.url_to_fs(io_uri(uri))
        return fs.exists(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` whole: a local file is replaced atomically (temp + rename).

    An object store gets one PUT, which is atomic there; a missing bucket raises instead of
    being created.
    """
    target_uri = io_uri(uri)
    if is_remote(target_uri):
        with storage_errors(uri):
            fs, path = fsspec.core.url_to_fs(target_uri)
            try:
                fs.pipe_file(path, data)
            except FileNotFoundError as exc:  # a PUT only misses when the bucket does
                raise FileNotFoundError(_no_bucket(uri)) from exc
        return
    target = Path(target_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def list_files(uri: str, skipped: dict[str, str] | None = None) -> list[tuple[str, int, float]]:
    """Every file under the folder ``uri``, recursively, hidden names included, each real
    file once.

    Returns ``(path, size, modified)`` per file, sorted by path: ``path`` in the form
    Spark's file scans give (``file:/abs/x.jpg``, ``s3://bucket/key``, ``dbfs:/x``),
    ``modified`` in seconds since the epoch (milliseconds kept, as Hadoop does). Metadata
    only: no file is opened. Nothing is returned for a missing folder.

    On local disk links are never followed nor returned: a link to a folder is not entered
    (no loop, nothing outside the root), a link to a file is left out whether its target is
    outside the root or a file listed where it lies (read once, there). Names that are not
    valid UTF-8 are left out too (Spark cannot open them). Each of these goes into
    ``skipped``, when given: its path (undecodable bytes as ``\\xNN``) and the reason.
    """
    resolved = resolve(uri)
    target = io_uri(uri)
    if is_remote(target):
        scheme = resolved.split("://", 1)[0]
        with storage_errors(uri):
            fs, path = fsspec.core.url_to_fs(target)
            found = fs.find(path, detail=True) if fs.exists(path) else {}
        files = [
            (f"{scheme}://{name}", int(info["size"]), _seconds(info.get("LastModified")))
            for name, info in found.items()
            if info.get("type") == "file"
        ]
        return sorted(files)
    if target.startswith(DBFS_FUSE + "/"):
        prefix, strip = "dbfs:", len(DBFS_FUSE)
    else:
        prefix, strip = ("" if resolved.startswith(VOLUMES_PREFIX) else "file:"), 0
    root = os.path.realpath(target)
    left_out: dict[str, str] = {} if skipped is None else skipped
    files = []
    for folder, folders, names in os.walk(target):  # never enters a link to a folder
        for name in folders:
            local = os.path.join(folder, name)
            if os.path.islink(local):
                left_out[prefix + _shown(local[strip:])] = _link_reason(local, root)
        for name in names:
            local = os.path.join(folder, name)
            shown = prefix + _shown(local[strip:])
            try:
                stat = os.lstat(local)
            except OSError:  # removed meanwhile
                continue
            if S_ISLNK(stat.st_mode):
                left_out[shown] = _link_reason(local, root)
            elif not _is_utf8(local):
                left_out[shown] = (
                    "the name is not valid UTF-8: Spark cannot open it; rename the file "
                    "(e.g. convmv -f latin1 -t utf8)"
                )
            elif S_ISREG(stat.st_mode):
                files.append((shown, stat.st_size, stat.st_mtime_ns // 10**6 / 1000))
    return sorted(files)


def _is_utf8(local: str) -> bool:
    """Whether a path from ``os.walk`` (undecodable bytes as surrogates) is valid UTF-8."""
    try:
        local.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(local: str) -> str:
    """A path for messages and listings: undecodable bytes written as ``\\xNN``."""
    return os.fsencode(local).decode("utf-8", "backslashreplace")


def _link_reason(local: str, root: str) -> str:
    """Why the link ``local`` under ``root`` (a real path) is not read."""
    target = os.path.realpath(local)
    inside = target == root or target.startswith(root.rstrip("/") + "/")
    if not os.path.exists(target):
        return "a link to nothing (its target is missing): not read"
    if os.path.isdir(target):
        where = "inside data_root (a loop or a second path)" if inside else "outside data_root"
        return f"a link to a folder {where}: not followed"
    if inside:
        return f"a link to {_shown(target)}, a file under data_root: read there, once"
    return "a link to a file outside data_root: not followed"


def _seconds(moment: object) -> float:
    """A listing's modification time (datetime, or missing) in seconds since the epoch."""
    return moment.timestamp() if hasattr(moment, "timestamp") else 0.0


def read_bytes(uri: str) -> bytes:
    """Read the whole file at ``uri`` (local or remote)."""
    with storage_errors(uri):
        fs, path = fsspec.core.url_to_fs(io_uri(uri))
        return fs.cat_file(path)


def download(uri: str, folder: Path, missing: str = "") -> Path:
    """A local copy of the remote file ``uri`` in ``folder``, fetched unless already there.

    The copy is named after the URI's hash and file name. It is used again only while it
    matches its record (:mod:`helpers.caches`: its SHA-256, and the object's ETag, or its
    size where the store gives no ETag); otherwise, a replaced object or a damaged copy, it
    is fetched again. It appears whole or not at all (temp file + rename), its record after
    it. A missing object raises ``FileNotFoundError`` with ``missing`` (or a message naming
    ``uri``).
    """
    from helpers import caches

    with storage_errors(uri):
        fs, path = fsspec.core.url_to_fs(io_uri(uri))
        fs.invalidate_cache(path)  # s3fs answers info from an earlier listing otherwise
        try:
            info = fs.info(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(missing or f"'{uri}' does not exist") from exc
        source = {"etag": info.get("ETag") or info.get("etag"), "remote_size": info["size"]}
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        target = folder / f"{digest}-{Path(path).name}"
        if not caches.verified(target, action=f"fetched again from {uri}", **source):
            folder.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                fs.get_file(path, str(partial))
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
            caches.record(target, **source)
    return target
