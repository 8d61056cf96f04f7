"""Scale curve: the EDA, features and PCA notebooks at growing image counts.

    python bench/scale.py --images ../shared/data/fruits360 [--sizes 2575,7725,23175] \\
        [--master local[2]] [--master spark://127.0.0.1:7077] [--weights FILE.h5]

For each size, a data set of that many images is made under ``--work``: spread evenly over
the real set when it has enough, else the whole real set repeated (hard links named
``<stem>_copy<k><ext>`` next to the original: same class, same split). Each notebook then
runs in its own process, ``python -m helpers.run --only <notebook>``, as users run them,
timed from that process's start to its end (kernel and Spark session start included). Its
peak memory is the largest sum of resident memory over that process's descendants (kernel,
JVM, Python workers), plus, on a ``helpers.cluster`` cluster of this machine, its workers' trees.

The table gives, per master, size and notebook: seconds, milliseconds per image, and the
marginal milliseconds per image between consecutive sizes ((t2 - t1) / (n2 - n1): the cost
that grows with the data, without the fixed start-up). Linear cost means a flat marginal
column; bounded memory means a peak that does not grow with the images.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from featurize import WorkerMemory  # bench/ is this script's folder

from helpers.features.models import resolve_weights
from helpers.images import is_image_name

NOTEBOOKS = ("01_eda.ipynb", "02_feature_extraction.ipynb", "03_pca_tsne.ipynb")
ROOT = Path(__file__).resolve().parents[1]


def make_dataset(source: Path, target: Path, size: int) -> int:
    """Link ``size`` images of ``source`` under ``target`` (repeating the set if needed)."""
    files = sorted(p for p in source.rglob("*") if is_image_name(p.name))
    if size < len(files):
        step = len(files) / size
        files = [files[int(i * step)] for i in range(size)]
    made = 0
    for copy in range(-(-size // len(files))):
        for path in files[: size - made]:
            relative = path.relative_to(source)
            if copy:
                relative = relative.with_name(f"{path.stem}_copy{copy}{path.suffix}")
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, destination)
            made += 1
    return made


def cluster_workers(master: str) -> list[int]:
    """The worker pids of a ``helpers.cluster`` cluster on this machine serving ``master``."""
    from helpers.dev.cluster import DEFAULT_STATE_DIR, read_state

    cluster = read_state(DEFAULT_STATE_DIR)
    if cluster is not None and cluster.master_url == master:
        return list(cluster.worker_pids)
    return []


def run_notebook(
    notebook: str, data: Path, out: Path, master: str, weights: str
) -> tuple[float, int]:
    """Seconds and peak bytes of one notebook run in its own process."""
    command = [
        sys.executable, "-m", "helpers.run", "--only", notebook, "--data-root", str(data),
        "--output-root", str(out), "--spark-master", master, "--weights", weights,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    memory = WorkerMemory([process.pid, *cluster_workers(master)], name="")
    memory.start()
    output, _ = process.communicate()
    elapsed = time.perf_counter() - started
    memory.stopped.set()
    if process.returncode:
        sys.stdout.write(output.decode(errors="replace")[-4000:])
        raise SystemExit(f"{notebook} failed on {data} ({master}): exit {process.returncode}")
    return elapsed, memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--sizes", default="2575,7725,23175", help="image counts, comma-separated")
    parser.add_argument(
        "--master", action="append", help="Spark master, repeatable (default: local[2])"
    )
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fruits-scale"))
    args = parser.parse_args()
    weights = resolve_weights(args.weights)
    sizes = [int(s) for s in args.sizes.split(",")]
    masters = args.master or ["local[2]"]
    rows = []
    for size in sizes:
        data = args.work / f"images-{size}"
        if not data.exists():
            made = make_dataset(args.images.resolve(), data, size)
            print(f"{made} images linked under {data}", flush=True)
        for master in masters:
            out = args.work / f"out-{size}-{re.sub(r'[^A-Za-z0-9]+', '_', master)}"
            shutil.rmtree(out, ignore_errors=True)  # a features run from scratch
            for notebook in NOTEBOOKS:
                seconds, peak = run_notebook(notebook, data, out, master, weights)
                rows.append((master, size, notebook, seconds, peak))
                print(
                    f"{master} {size} {notebook}: {seconds:.1f} s, {peak / 2**30:.2f} GiB",
                    flush=True,
                )
    print("\n| master | images | notebook | seconds | ms/image | marginal ms/image | peak GiB |")
    print("|---|---:|---|---:|---:|---:|---:|")
    previous: dict[tuple[str, str], tuple[int, float]] = {}
    for master, size, notebook, seconds, peak in rows:
        before = previous.get((master, notebook))
        marginal = f"{1000 * (seconds - before[1]) / (size - before[0]):.2f}" if before else ""
        previous[(master, notebook)] = (size, seconds)
        print(
            f"| {master} | {size} | {notebook} | {seconds:.1f} | {1000 * seconds / size:.2f} "
            f"| {marginal} | {peak / 2**30:.2f} |"
        )


if __name__ == "__main__":
    main()
