"""Run the three notebooks in order with papermill, with one set of parameters.

    python -m helpers.run --data-root data_sample --output-root outputs [--weights PATH] \\
        [-p name value]...

Each notebook gets the parameters its ``parameters`` cell declares; executed copies go to
``<output_root>/notebooks/``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import papermill as pm

from helpers.config import PARAMETERS, coerce, defaults, resolve_weights, validate
from helpers.manifest import read_manifest
from helpers.paths import PROJECT_ROOT, is_remote, join, resolve

log = logging.getLogger(__name__)

NOTEBOOKS = ("01_eda.ipynb", "02_feature_extraction.ipynb", "03_pca_tsne.ipynb")


def run_notebooks(
    params: dict[str, Any],
    notebooks: tuple[str, ...] = NOTEBOOKS,
    notebook_dir: Path = PROJECT_ROOT / "notebooks",
) -> list[str]:
    """Execute ``notebooks`` in order; return the URIs of the executed copies.

    Parameters are checked first, so a typo fails in a second rather than mid-run.
    """
    values = validate({**defaults(), **params})
    resolve_weights(values["weights"])  # a missing weights file fails before any notebook
    values["data_root"] = resolve(values["data_root"])
    values["output_root"] = resolve(values["output_root"])
    if not is_remote(values["output_root"]):
        Path(values["output_root"], "notebooks").mkdir(parents=True, exist_ok=True)
    executed = []
    for name in notebooks:
        source = notebook_dir / name
        declared = pm.inspect_notebook(str(source))
        given = {k: v for k, v in values.items() if k in declared}
        target = join(values["output_root"], "notebooks", name)
        started = time.perf_counter()
        log.info("running %s", name)
        pm.execute_notebook(
            str(source),
            target,
            parameters=given,
            cwd=str(notebook_dir),
            progress_bar=False,
            kernel_name="python3",
        )
        log.info("%s done in %.0f s -> %s", name, time.perf_counter() - started, target)
        executed.append(target)
    return executed


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
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="any other parameter, repeatable",
    )
    parser.add_argument("--only", nargs="+", choices=NOTEBOOKS, help="run only these notebooks")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints where the outputs are."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    params = {name: coerce(name, value) for name, value in args.parameter}
    for name in ("data_root", "output_root", "weights"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    try:
        executed = run_notebooks(params, tuple(args.only or NOTEBOOKS))
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    output_root = resolve(params.get("output_root", defaults()["output_root"]))
    manifest = read_manifest(output_root)
    print(f"\nOutputs in {output_root}:")
    for sub, what in [
        ("features", "features Parquet"),
        ("pca", "PCA-reduced Parquet"),
        ("pca_model", "fitted scaler + PCA"),
        ("figures", "figures (PNG)"),
        ("manifest.json", "manifest"),
        ("notebooks", "executed notebooks"),
    ]:
        print(f"  {join(output_root, sub):<60} {what}")
    if "pca" in manifest:
        print(f"  k = {manifest['pca'].get('k')}, probe accuracy: {manifest['pca'].get('probe')}")
    print(f"  ({len(executed)} notebooks run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
