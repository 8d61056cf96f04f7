"""Scale curve: the four notebooks at growing image counts, on one machine.

    python bench/scale.py --images ../shared/data/fruits360 [--sizes 2500,23175,100000] \\
        [--classes 155] [--master local[2]] [--master spark://127.0.0.1:7077] [--weights FILE.h5]

For each size, a data set of that many images is made under ``--work`` as hard links to the
real set, spread evenly over ``--classes`` class folders (155 by default, as Fruits-360 has
today): the real classes, then copies of them named ``<class> copy<k>`` whose colour
channels are rotated (written once, JPEG quality 95: fruits that look like none of the real
ones, so every class can be told apart); a class that needs more images than its source has
repeats them (``<stem>_copy<k><ext>``, same split: the same pixels, as a dataset's
near-duplicates are). Each notebook then runs in its own process,
``python -m helpers.run --only <notebook>``, as users run them, timed from that process's
start to its end (kernel and Spark session start included). Its peak memory is the largest
sum of resident memory over that process and its descendants, plus, on a ``helpers.cluster``
cluster of this machine, its workers' trees; and apart, the peak of each kind: the kernel
(the driver's Python, with ``helpers.run``), the JVMs, the Python workers under them. Each
run ends by checking that the manifest accounts for every image. ``--notebooks`` runs some
of them again on the outputs already there.

The table gives, per master, size and notebook: seconds, milliseconds per image, and the
marginal milliseconds per image between consecutive sizes ((t2 - t1) / (n2 - n1): the cost
that grows with the data, without the fixed start-up). Linear cost means a flat marginal
column; bounded memory means a peak that does not grow with the images.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from helpers.features.models import resolve_weights
from helpers.images import is_image_name
from helpers.outputs import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]


def recoloured(path: Path, copy: int, folder: Path) -> Path:
    """``path`` with its colour channels rotated ``copy`` times (RGB -> GBR -> BRG), written
    once under ``folder``: a class of fruit that looks like none of the real ones."""
    from PIL import Image

    written = folder / f"rgb{copy % 3}" / path.parent.parent.name / path.parent.name / path.name
    if not written.exists():
        with Image.open(path) as image:
            channels = image.convert("RGB").split()
        shift = copy % 3
        written.parent.mkdir(parents=True, exist_ok=True)
        Image.merge("RGB", channels[shift:] + channels[:shift]).save(written, quality=95)
    return written


def make_dataset(source: Path, target: Path, size: int, classes: int, work: Path) -> int:
    """Link ``size`` images under ``target``, spread evenly over ``classes`` class folders:
    the real classes, then recoloured copies of them (``<class> copy<k>``, written once under
    ``work``) up to ``classes``; a class needing more images than its source has repeats
    them (``<stem>_copy<k><ext>``, seeded order so both splits keep their share)."""
    rng = np.random.default_rng(0)
    by_class: dict[str, list[Path]] = {}
    for path in sorted(p for p in source.rglob("*") if is_image_name(p.name)):
        by_class.setdefault(path.parent.name, []).append(path)
    names = sorted(by_class)
    made = 0
    for index in range(classes):
        name, copy = names[index % len(names)], index // len(names)
        folder = f"{name} copy{copy}" if copy else name
        files = by_class[name]
        quota = size // classes + (index < size % classes)
        if quota <= len(files):
            picked = [(files[int(i * len(files) / quota)], 0) for i in range(quota)]
        else:
            order = [files[i] for i in rng.permutation(len(files))]
            picked = [(order[i % len(files)], i // len(files)) for i in range(quota)]
        for path, repeat in picked:
            stem = f"{path.stem}_copy{repeat}" if repeat else path.stem
            destination = target / path.parent.parent.name / folder / f"{stem}{path.suffix}"
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(recoloured(path, copy, work / "recoloured") if copy else path, destination)
            made += 1
    return made


def cluster_workers(master: str) -> list[int]:
    """The worker pids of a ``helpers.cluster`` cluster on this machine serving ``master``."""
    from helpers.dev.cluster import DEFAULT_STATE_DIR, read_state

    cluster = read_state(DEFAULT_STATE_DIR)
    if cluster is not None and cluster.master_url == master:
        return list(cluster.worker_pids)
    return []


#: What a notebook run's processes are: its JVMs, the Python workers under them, and the
#: rest (``helpers.run``, papermill's kernel: the driver's Python).
KINDS = ("kernel", "jvm", "workers")


class TreeMemory(threading.Thread):
    """Polls the resident memory of the process trees of ``roots`` (them included); keeps
    the peak of their sum and, apart, of each kind's (:data:`KINDS`)."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.stopped = threading.Event()
        self.peak = dict.fromkeys(("total", *KINDS), 0)

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            now = dict.fromkeys(KINDS, 0)
            for pid in self.roots:
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for process in tree:
                    try:
                        name, rss = process.name(), process.memory_info().rss
                        under_jvm = any("java" in p.name() for p in process.parents())
                    except psutil.NoSuchProcess:
                        continue
                    kind = "jvm" if "java" in name else "workers" if under_jvm else "kernel"
                    now[kind] += rss
            for kind, rss in (("total", sum(now.values())), *now.items()):
                self.peak[kind] = max(self.peak[kind], rss)


def run_notebook(
    notebook: str, data: Path, out: Path, master: str, weights: str
) -> tuple[float, dict[str, int]]:
    """Seconds and peak bytes (total, and by kind) of one notebook run in its own process."""
    command = [
        sys.executable, "-m", "helpers.run", "--only", notebook, "--data-root", str(data),
        "--output-root", str(out), "--spark-master", master, "--weights", weights,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    memory = TreeMemory([process.pid, *cluster_workers(master)])
    memory.start()
    output, _ = process.communicate()
    elapsed = time.perf_counter() - started
    memory.stopped.set()
    if process.returncode:
        sys.stdout.write(output.decode(errors="replace")[-4000:])
        raise SystemExit(f"{notebook} failed on {data} ({master}): exit {process.returncode}")
    return elapsed, memory.peak


def check_accounted(out: Path, size: int, notebooks: list[str]) -> None:
    """Fail unless the manifest counts every image in the EDA and in the features (those of
    ``notebooks`` that ran)."""
    manifest = json.loads((out / "manifest.json").read_text())
    counted = {}
    if "01_eda.ipynb" in notebooks:
        counted["eda"] = manifest["eda"]["images"]
    if "02_feature_extraction.ipynb" in notebooks:
        counted["features"] = manifest["features"]["rows"]
    if any(count != size for count in counted.values()):
        raise SystemExit(f"{out}: {counted} of {size} images accounted for")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--sizes", default="2500,23175,100000", help="image counts, comma-sep.")
    parser.add_argument("--classes", type=int, default=155, help="class folders of each data set")
    parser.add_argument(
        "--master", action="append", help="Spark master, repeatable (default: local[2])"
    )
    parser.add_argument(
        "--notebooks",
        default=",".join(NOTEBOOKS),
        help="comma-separated; without 02 the outputs of an earlier run are used again",
    )
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fruits-scale"))
    args = parser.parse_args()
    weights = resolve_weights(args.weights)
    sizes = [int(s) for s in args.sizes.split(",")]
    masters = args.master or ["local[2]"]
    notebooks = [n.strip() for n in args.notebooks.split(",")]
    unknown = sorted(set(notebooks) - set(NOTEBOOKS))
    if unknown:
        raise SystemExit(f"--notebooks: unknown {unknown}; choose among {list(NOTEBOOKS)}")
    rows = []
    for size in sizes:
        data = args.work / f"images-{size}-{args.classes}"
        if not data.exists():
            made = make_dataset(args.images.resolve(), data, size, args.classes, args.work)
            print(f"{made} images linked under {data}", flush=True)
        for master in masters:
            out = args.work / f"out-{size}-{re.sub(r'[^A-Za-z0-9]+', '_', master)}"
            if "02_feature_extraction.ipynb" in notebooks:
                shutil.rmtree(out, ignore_errors=True)  # a features run from scratch
            for notebook in notebooks:
                seconds, peak = run_notebook(notebook, data, out, master, weights)
                rows.append((master, size, notebook, seconds, peak))
                shares = ", ".join(f"{k} {peak[k] / 2**30:.2f}" for k in KINDS)
                print(
                    f"{master} {size} {notebook}: {seconds:.1f} s, {peak['total'] / 2**30:.2f}"
                    f" GiB ({shares})",
                    flush=True,
                )
            check_accounted(out, size, notebooks)
    print(
        "\n| master | images | notebook | seconds | ms/image | marginal ms/image | peak GiB "
        "| kernel | JVMs | workers |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    previous: dict[tuple[str, str], tuple[int, float]] = {}
    for master, size, notebook, seconds, peak in rows:
        before = previous.get((master, notebook))
        marginal = f"{1000 * (seconds - before[1]) / (size - before[0]):.2f}" if before else ""
        previous[(master, notebook)] = (size, seconds)
        print(
            f"| {master} | {size} | {notebook} | {seconds:.1f} | {1000 * seconds / size:.2f} "
            f"| {marginal} | "
            + " | ".join(f"{peak[k] / 2**30:.2f}" for k in ("total", *KINDS))
            + " |"
        )


if __name__ == "__main__":
    main()
