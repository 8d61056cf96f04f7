"""Run the four notebooks in order with papermill, with one set of parameters.

    python -m helpers.run --data-root data_sample --output-root outputs [--weights PATH] \\
        [-p name value]...
    python -m helpers.run --data-root s3://bucket/fruits --output-root s3://bucket/out
    python -m helpers.run --data-root data_sample --spark-master spark://127.0.0.1:7077
    python -m helpers.run --kernel pysparkkernel ...   # through sparkmagic + Livy (helpers.livy)

Each notebook gets the parameters its ``parameters`` cell declares; executed copies go to
``<output_root>/notebooks/`` (papermill writes ``s3://`` itself). ``s3_endpoint`` and
``hadoop_aws_jars`` reach the notebooks' kernels through the environment, where
:func:`helpers.spark.session.get_spark` and every S3 client read them.

``kernel`` is the Jupyter kernel the notebooks run in: ``python3`` (the code runs in the
kernel), or ``pysparkkernel``, sparkmagic's PySpark kernel as on EMR's JupyterHub: each cell
runs in an Apache Livy session (``python -m helpers.livy start``), whose driver writes the
outputs; the kernel finds Livy through ``$SPARKMAGIC_CONF_DIR`` (default: the config of
the server ``helpers.livy`` started). The kernel's environment does not reach that session.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import papermill as pm
from papermill.exceptions import PapermillExecutionError

from helpers import env
from helpers.config import PARAMETERS, add_parameter_option, coerce, defaults, validate
from helpers.evaluate import probe_summary
from helpers.features.models import resolve_weights
from helpers.images import EXTENSIONS_TEXT, is_image_name
from helpers.lease import LeaseHeld, check_free
from helpers.manifest import read_manifest
from helpers.outputs import NOTEBOOKS
from helpers.paths import PROJECT_ROOT, check_access, io_uri, is_remote, join, resolve
from helpers.spark.settings import resolve_hadoop_aws_jars, resolve_s3_endpoint, storage_env

log = logging.getLogger(__name__)

#: The plain Python kernel, and sparkmagic's PySpark kernel (cells run in Apache Livy).
KERNELS = ("python3", "pysparkkernel")


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in this process's environment (kernels inherit it), then restore it."""
    saved = {name: os.environ[name] for name in values if name in os.environ}
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            if name in saved:
                os.environ[name] = saved[name]
            else:
                os.environ.pop(name, None)


def run_notebooks(
    params: dict[str, Any],
    notebooks: tuple[str, ...] = NOTEBOOKS,
    *,
    notebook_dir: Path = PROJECT_ROOT / "notebooks",
    kernel: str = "python3",
) -> list[str]:
    """Execute ``notebooks`` in order in ``kernel``; return the URIs of the executed copies.

    Parameters are checked first, so a typo fails in a second rather than mid-run; so are
    the buckets of ``s3://`` roots and the credentials that reach them, and the kernel.
    """
    kernel_env = _kernel_env(kernel)
    values = validate({**defaults(), **params})
    resolve_weights(values["weights"])  # a missing weights file fails before any notebook
    resolve_s3_endpoint(values["s3_endpoint"])  # a malformed endpoint too
    resolve_hadoop_aws_jars(values["hadoop_aws_jars"])  # and a missing jar
    values["data_root"] = resolve(values["data_root"], "data_root")
    values["output_root"] = resolve(values["output_root"], "output_root")
    env = {**storage_env(values["s3_endpoint"], values["hadoop_aws_jars"]), **kernel_env}
    with _environment(env):
        for root in (values["data_root"], values["output_root"]):
            check_access(root)
        if not is_remote(values["data_root"]):
            _check_local_roots(values["data_root"], values["output_root"])
        check_free(values["output_root"])  # another run writing there: refused now, named
        return _execute(values, notebooks, notebook_dir, kernel)


def _kernel_env(kernel: str) -> dict[str, str]:
    """Check that ``kernel`` can run; the environment variables it needs.

    sparkmagic's kernel needs its kernel spec and a ``config.json`` naming a Livy server.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel '{kernel}' is not one of {', '.join(KERNELS)}")
    if kernel == "python3":
        return {}
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from helpers.dev.livy import read_state  # sparkmagic's kernels only

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise ValueError(
            f"kernel '{kernel}' is not installed: python -m helpers.livy start installs it "
            "(sparkmagic's, into this environment)"
        ) from None
    conf_dir = env.get(env.SPARKMAGIC_CONF_ENV)
    if not conf_dir:
        server = read_state()
        conf_dir = server.sparkmagic_conf_dir if server is not None else ""
    if not conf_dir or not Path(conf_dir, "config.json").is_file():
        raise ValueError(
            f"kernel '{kernel}' needs a Livy server: python -m helpers.livy start, then "
            f"export {env.SPARKMAGIC_CONF_ENV}=<the folder it prints> (no sparkmagic "
            f"config.json in '{conf_dir or '$' + env.SPARKMAGIC_CONF_ENV}')"
        )
    return {env.SPARKMAGIC_CONF_ENV: conf_dir}


def _check_local_roots(data_root: str, output_root: str) -> None:
    """Fail before any notebook on a local ``data_root`` without images or an unwritable output.

    Spark would say the same only minutes later, inside a notebook.
    """
    root = Path(data_root)
    if not root.exists():
        raise FileNotFoundError(f"data_root '{data_root}' does not exist")
    images = (p for p in root.rglob("*") if is_image_name(p.name))
    if next(images, None) is None:
        raise FileNotFoundError(
            f"data_root '{data_root}' has no images (looked for {EXTENSIONS_TEXT})"
        )
    if is_remote(output_root):
        return
    try:
        Path(output_root).mkdir(parents=True, exist_ok=True)
        probe = Path(output_root, ".write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(
            f"output_root '{output_root}' cannot be written ({exc.strerror}): "
            "choose another output_root"
        ) from exc


def _execute(
    values: dict[str, Any], notebooks: tuple[str, ...], notebook_dir: Path, kernel: str
) -> list[str]:
    """Run ``notebooks`` with checked ``values`` in ``kernel``; copies under ``output_root``."""
    output_dir = io_uri(join(values["output_root"], "notebooks"))
    if not is_remote(output_dir):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    executed = []
    for name in notebooks:
        source = notebook_dir / name
        declared = pm.inspect_notebook(str(source))
        given = {k: v for k, v in values.items() if k in declared}
        target = join(output_dir, name)
        started = time.perf_counter()
        log.info("running %s", name)
        try:
            pm.execute_notebook(
                str(source),
                target,
                parameters=given,
                cwd=str(notebook_dir),
                progress_bar=False,
                kernel_name=kernel,
            )
        except PapermillExecutionError as exc:
            if kernel == "python3":
                raise
            raise _with_livy_log(exc) from None
        log.info("%s done in %.0f s -> %s", name, time.perf_counter() - started, target)
        executed.append(target)
    return executed


def _with_livy_log(exc: PapermillExecutionError) -> PapermillExecutionError:
    """``exc``, with a last line naming Livy's log when the cell's Livy session died."""
    from helpers.dev.livy import session_lost_note  # sparkmagic's kernels only

    note = session_lost_note(str(exc), env.get(env.SPARKMAGIC_CONF_ENV) or "")
    if note is None:
        return exc
    return PapermillExecutionError(
        exc.cell_index, exc.exec_count, exc.source, exc.ename, exc.evalue, [*exc.traceback, note]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.run",
        description=__doc__.split("\n\n")[0],
        epilog="parameters: "
        + "; ".join(f"{p.name} ({p.default!r}): {p.help}" for p in PARAMETERS),
    )
    parser.add_argument("--data-root", help="images root (default: data_sample)")
    parser.add_argument("--output-root", help="outputs root (default: outputs)")
    parser.add_argument("--weights", help="'imagenet' or a local .h5 file")
    parser.add_argument(
        "--s3-endpoint", help="S3-compatible store URL (default: $AWS_ENDPOINT_URL, else AWS)"
    )
    parser.add_argument(
        "--spark-master",
        help="spark://host:7077 (python -m helpers.cluster start), yarn, local[N] "
        "(default: local[*,3], or the cluster's own session on EMR/Databricks)",
    )
    parser.add_argument(
        "--spark-remote",
        help="a Spark Connect server, sc://host:port (python -m helpers.connect start); "
        "default: $SPARK_REMOTE, else a classic session",
    )
    parser.add_argument(
        "--hadoop-aws-jars",
        help="local Spark on S3 offline: comma-separated hadoop-aws + AWS SDK bundle jars",
    )
    add_parameter_option(parser, "any other parameter, repeatable")
    parser.add_argument("--only", nargs="+", choices=NOTEBOOKS, help="run only these notebooks")
    parser.add_argument(
        "--kernel",
        default="python3",
        choices=KERNELS,
        help="python3, or pysparkkernel: sparkmagic through Apache Livy (python -m helpers.livy)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints where the outputs are."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    params = {name: coerce(name, value) for name, value in args.parameter}
    for name in (
        "data_root",
        "output_root",
        "weights",
        "spark_master",
        "spark_remote",
        "s3_endpoint",
        "hadoop_aws_jars",
    ):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    try:
        executed = run_notebooks(params, tuple(args.only or NOTEBOOKS), kernel=args.kernel)
    except (ValueError, FileNotFoundError, PermissionError, ConnectionError, LeaseHeld) as exc:
        log.error("%s", exc)
        return 2
    output_root = resolve(params.get("output_root", defaults()["output_root"]))
    env = storage_env(params.get("s3_endpoint", ""), params.get("hadoop_aws_jars", ""))
    with _environment(env):
        manifest = read_manifest(output_root)
    print(f"\nOutputs in {output_root}:")
    for sub, what in [
        ("features", "features Parquet"),
        ("pca", "PCA-reduced Parquet"),
        ("pca_model", "fitted scaler + PCA"),
        ("pipeline_model", "image bytes -> features, pca, predicted_label (PipelineModel)"),
        ("figures", "figures (PNG)"),
        ("manifest.json", "manifest"),
        ("notebooks", "executed notebooks"),
    ]:
        print(f"  {join(output_root, sub):<60} {what}")
    if "pca" in manifest:
        probe = probe_summary(manifest["pca"].get("probe") or {})
        print(f"  k = {manifest['pca'].get('k')}; Test probe: {probe or 'none'}")
    if "classifier" in manifest:
        classifier = probe_summary({"spark_lr": manifest["classifier"]})
        print(f"  Test accuracy of the Spark ML classifier: {classifier}")
    print(f"  ({len(executed)} notebooks run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
