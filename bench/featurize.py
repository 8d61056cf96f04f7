"""Feature-extraction throughput: bare Keras against the project's Spark pipeline.

    python bench/featurize.py --images ../shared/data/fruits360 \\
        [--weights FILE.h5] [--image-size 224] [--batch-size 4] [--limit N] \\
        [--master spark://127.0.0.1:7077 | --remote sc://localhost:15002] \\
        [--runtime auto|keras|litert|litert-int8|onnxruntime|openvino|openvino-bf16] \\
        [--warm-runs N] [--skip-keras]

Both sides featurize the same files on this machine in one run: (a) one Python process
reading, decoding, resizing and predicting with Keras (TensorFlow using every core);
(b) the notebooks' feature step, ``helpers.features.extract.extract_features``, end to end:
binaryFile read, ``mapInArrow`` (decode, resize, model), Parquet write and publication,
including the driver's weight load and broadcast and the workers' start-up and model
builds (with a converted runtime, the conversion too unless it is cached: the
output says which); only the JVM start (and on a cluster, ``--master``, the executors'
registration) is left out. Bare Keras with stock TensorFlow stays the reference whatever
``--runtime`` the pipeline uses, at 64 images per model call as issue 14 defines it
(``--keras-batch-size``; ``--batch-size`` is the pipeline's; ``--skip-keras``: no bare
Keras run, ``nan`` there). (c) The pipeline's runtime alone, the hardware's limit: one
process per core, one thread each, the UDF's decode, resize and model calls on the same
files, no Spark. A calibrated runtime (``litert-int8``) gets the pipeline's own calibration
images for the limit, whose run converts and caches the model: the pipeline's time then
holds the calibration sample's read, not the quantization.

Where the pipeline's time goes: its CPU milliseconds per image by process kind (the
driver's Python, the JVMs, the Python workers) against the runtime alone's. The last lines
are ``pipeline_img_s=<x> keras_img_s=<y> ratio=<x/y>`` and ``limit_img_s=<l>
pipeline_img_s=<x> limit_ratio=<x/l>``, for that first, cold run.

``--warm-runs N`` then featurizes the same images N more times in the same session, each
into a new output folder, and prints their times: the executors' JVMs and Python workers
are warm by then and each worker keeps its model, so what separates those runs from the
first is the cold start, and what separates a warm cluster from a warm local session is
what a cluster costs at every run (tasks and broadcasts sent to other JVMs).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from pyspark.sql import SparkSession

from helpers.features.extract import Extraction, calibration_paths, extract_features
from helpers.features.models import (
    MODELS,
    build_model,
    driver_weights,
    preprocess,
    resolve_weights,
)
from helpers.features.runtimes import (
    CALIBRATION_SEED,
    RUNTIME_CHOICES,
    RUNTIMES,
    Calibration,
    resolve_runtime,
)
from helpers.features.spec import BATCH_SIZE, FeatureSpec
from helpers.features.store import read_features
from helpers.features.udf import featurize_batch
from helpers.images import decode_image, is_image_name
from helpers.spark.jvm import executor_cores
from helpers.spark.kind import is_connect
from helpers.spark.session import get_spark


def pick_files(root: Path, limit: int) -> list[Path]:
    """Every image under ``root``, or ``limit`` of them spread evenly over the sorted list."""
    files = sorted(p for p in root.rglob("*") if is_image_name(p.name))
    if limit and limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).astype(int)]
    return files


def copy_tree(files: list[Path], root: Path, target: Path) -> None:
    """Copy ``files`` under ``target`` keeping their paths relative to ``root``."""
    for path in files:
        destination = target / path.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def bare_keras(
    files: list[Path], weights: str, model_name: str, size: int, batch: int, cores: int
) -> float:
    """Images per second of read + decode + resize + predict in this process."""
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    prepare = getattr(keras.applications, MODELS[model_name]["module"]).preprocess_input
    model = build_model(model_name, size, weights)
    model.predict_on_batch(np.zeros((batch, size, size, 3), np.float32))  # warm-up, not timed
    started = time.perf_counter()
    for start in range(0, len(files), batch):
        pixels = np.stack(
            [decode_image(p.read_bytes(), size) for p in files[start : start + batch]]
        )
        model.predict_on_batch(prepare(pixels.astype(np.float32)))
    return len(files) / (time.perf_counter() - started)


#: The limit's worker: its inference function, preprocessing and settings (set once).
_LIMIT: dict[str, Any] = {}


def _limit_worker(spec: FeatureSpec, payload: Any, ready: Any) -> None:
    """A limit process: builds the runtime's model on one thread, then waits for the clock."""
    runtime = RUNTIMES[spec.runtime]
    built = runtime.build(spec.model_name, spec.image_size, 1)
    _LIMIT.update(
        infer=runtime.session(spec.model_name, built, payload, 1),
        prepare=preprocess(spec.model_name),
        spec=spec,
    )
    ready.wait()


def _limit_chunk(paths: list[str]) -> int:
    """Read, decode, resize and featurize ``paths`` as the UDF does; images with features."""
    spec = _LIMIT["spec"]
    contents = [Path(p).read_bytes() for p in paths]
    out = featurize_batch(
        _LIMIT["infer"], _LIMIT["prepare"], contents, spec.image_size, spec.batch_size
    )
    return out.column("error").null_count  # rows without an error


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of ``processes`` (those still running)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def calibration(files: list[Path], spec: FeatureSpec) -> Calibration | None:
    """The pipeline's calibration images among ``files``, for a calibrated runtime."""
    if not RUNTIMES[spec.runtime].calibrated:
        return None
    chosen = [Path(p) for p in calibration_paths([p.as_posix() for p in files])]
    images = [(p.read_bytes(), decode_image(p.read_bytes(), spec.image_size)) for p in chosen]
    return Calibration.of(images, CALIBRATION_SEED)


def runtime_limit(files: list[Path], spec: FeatureSpec, cores: int) -> tuple[float, float]:
    """Images per second of the runtime alone, the hardware's limit for the pipeline: one
    process per core, one thread each, the UDF's own decode, resize and model calls on the
    same files, no Spark. The models are built before the clock starts. Also its CPU
    milliseconds per image."""
    loaded = driver_weights(spec.model_name, spec.weights, spec.image_size)
    payload, _ = RUNTIMES[spec.runtime].payload(
        spec.model_name, spec.image_size, loaded, calibration(files, spec)
    )
    context = multiprocessing.get_context("spawn")  # this process has TensorFlow's threads
    ready = context.Barrier(cores + 1)
    chunk = 64
    chunks = [[str(p) for p in files[i : i + chunk]] for i in range(0, len(files), chunk)]
    with context.Pool(cores, _limit_worker, (spec, payload, ready)) as pool:
        ready.wait()
        workers = psutil.Process().children()  # the pool's (no Spark yet)
        before = cpu_seconds(workers)
        started = time.perf_counter()
        done = sum(pool.imap_unordered(_limit_chunk, chunks))
        elapsed = time.perf_counter() - started
        spent = cpu_seconds(workers) - before
    if done != len(files):
        raise SystemExit(f"the limit run featurized {done} of {len(files)} images")
    return len(files) / elapsed, 1000 * spent / len(files)


def wait_for_executors(spark: SparkSession, cores: int, timeout: float = 120.0) -> int:
    """Wait until executors with ``cores`` cores in all have registered; return their count.

    A cluster session starts its executors after the driver: like the JVM start, their
    registration is not part of the featurization. Local mode has the driver only (0).
    """
    if is_connect(spark) or spark.sparkContext.master.startswith("local"):
        return 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            executors, registered = executor_cores(spark)
        except OSError:  # the driver's UI not answering yet (a loaded machine): ask again
            executors, registered = 0, 0
        if registered >= cores:
            return executors
        if time.monotonic() > deadline:
            raise SystemExit(
                f"executors with {cores} cores did not register in {timeout:.0f} s "
                f"({registered} cores so far): is --cores above the cluster's?"
            )
        time.sleep(0.2)  # polls the driver's own count: only spares the CPU


class WorkerMemory(threading.Thread):
    """Polls the resident memory of this run's Spark Python workers; keeps the peak of their sum.

    They are the Python processes among this process's descendants (under the JVM) and, on
    a standalone cluster on this machine, those under its executors (``executors``: pids).
    """

    def __init__(self, roots: list[int] | None = None, name: str = "python") -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stopped = threading.Event()
        self.roots = roots or [os.getpid()]
        self.name = name  # counted: descendants whose process name contains it ("": all)

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            total = 0
            descendants = []
            for pid in self.roots:
                try:
                    descendants += psutil.Process(pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    continue
            for proc in descendants:
                try:
                    if self.name in proc.name():
                        total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, total)


def feature_step(
    spark: SparkSession,
    data: Path,
    out: Path,
    args: argparse.Namespace,
    weights: str,
    runtime: str,
) -> tuple[Extraction, float]:
    """The notebooks' feature step on ``data`` into ``out``, and its seconds."""
    started = time.perf_counter()
    spec = FeatureSpec(args.model_name, weights, args.image_size, args.batch_size, runtime)
    summary = extract_features(spark, str(data), str(out), spec)
    return summary, time.perf_counter() - started


class CpuTime(threading.Thread):
    """CPU seconds a run spends, by process kind: ``driver`` (this process), ``jvm`` (Java
    processes: the driver's JVM, a local cluster's executors) and ``python workers`` (the
    other descendants). Polled, so a process that ends between two polls loses its last
    half second; Spark's Python workers and JVMs live through a run."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.stopped = threading.Event()
        self.start_times = self._poll()
        self.last: dict[int, tuple[str, float]] = {}

    def _poll(self) -> dict[int, tuple[str, float]]:
        seen = {}
        processes = [psutil.Process()]
        for pid in self.roots:
            try:
                processes += psutil.Process(pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        for process in processes:
            try:
                times, name = process.cpu_times(), process.name()
            except psutil.NoSuchProcess:
                continue
            kind = "driver" if process.pid == os.getpid() else "jvm" if "java" in name else ""
            seen[process.pid] = (kind or "python workers", times.user + times.system)
        return seen

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.last.update(self._poll())

    def stop(self) -> dict[str, float]:
        """Stop polling; CPU seconds spent since creation, by kind."""
        self.stopped.set()
        self.join()
        self.last.update(self._poll())
        spent: dict[str, float] = {}
        for pid, (kind, seconds) in self.last.items():
            spent[kind] = spent.get(kind, 0.0) + seconds - self.start_times.get(pid, ("", 0.0))[1]
        return spent


def _cluster_roots(master: str, remote: str) -> list[int]:
    """This process, plus the workers of a helpers.cluster cluster, or the helpers.connect
    server, on this machine."""
    from helpers.dev import cluster, connect

    if remote:
        server = connect.read_state(connect.DEFAULT_STATE_DIR)
        return [os.getpid()] + ([server.pid] if server is not None and server.url == remote else [])
    running = cluster.read_state(cluster.DEFAULT_STATE_DIR)
    if running is not None and running.master_url == master:
        return [os.getpid(), *running.worker_pids]
    return [os.getpid()]


def payload_bytes(args: argparse.Namespace, weights: str, runtime: str, files: list[Path]) -> int:
    """Bytes of what the workers get: the broadcast (classic), or what each features query
    carries in its UDF (Spark Connect, which has no broadcasts)."""
    loaded = driver_weights(args.model_name, weights, args.image_size)
    spec = FeatureSpec(args.model_name, weights, args.image_size, args.batch_size, runtime)
    payload, _ = RUNTIMES[runtime].payload(
        args.model_name, args.image_size, loaded, calibration(files, spec)
    )
    return len(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--model-name", default="mobilenet_v2", choices=sorted(MODELS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, help="pipeline's images per model call"
    )
    parser.add_argument(
        "--keras-batch-size", type=int, default=64, help="bare Keras' images per model call"
    )
    parser.add_argument("--limit", type=int, default=0, help="use N images (0: all)")
    parser.add_argument(
        "--runtime", default="auto", choices=RUNTIME_CHOICES, help="pipeline's runtime"
    )
    parser.add_argument(
        "--warm-runs", type=int, default=0, help="featurize N more times in the same session"
    )
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="cores for both sides")
    parser.add_argument("--skip-keras", action="store_true", help="no bare Keras run")
    parser.add_argument(
        "--master",
        default="",
        help="Spark master for the pipeline side, e.g. spark://127.0.0.1:7077 "
        "(python -m helpers.cluster start); default local[--cores]",
    )
    parser.add_argument(
        "--remote",
        default="",
        help="a Spark Connect server for the pipeline side, sc://host:port (python -m "
        "helpers.connect start --master local[N]); --master is then the server's",
    )
    parser.add_argument(
        "--no-daemon",
        action="store_true",
        help="cluster only: executors start plain pyspark.daemon workers instead of "
        "helpers.daemon (the runtime pre-imported), to measure what the daemon brings",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.no_daemon:
        import helpers.spark.session

        # master_conf() reads this at session start: worker reuse stays, the daemon goes
        helpers.spark.session.executor_conf = lambda: {
            **helpers.spark.settings.executor_conf(),
            "spark.python.daemon.module": "pyspark.daemon",
        }
    weights = resolve_weights(args.weights)
    runtime = resolve_runtime(args.runtime)
    files = pick_files(args.images.resolve(), args.limit)
    print(
        f"{len(files)} images from {args.images}, {args.model_name} at {args.image_size}px, "
        f"batch {args.batch_size}"
        f" (bare Keras {args.keras_batch_size}), {args.cores} cores, pipeline runtime {runtime}"
    )

    keras_img_s = float("nan")
    if not args.skip_keras:
        keras_img_s = bare_keras(
            files, weights, args.model_name, args.image_size, args.keras_batch_size, args.cores
        )
    print(f"bare Keras:     {keras_img_s:7.1f} images/s")
    limit_spec = FeatureSpec(args.model_name, weights, args.image_size, args.batch_size, runtime)
    limit_img_s, limit_cpu_ms = runtime_limit(files, limit_spec, args.cores)
    print(f"{runtime} alone:  {limit_img_s:7.1f} images/s ({args.cores} processes x 1 thread)")

    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp, "images"), Path(tmp, "out")
        copy_tree(files, args.images.resolve(), data)
        master = args.master or f"local[{args.cores}]"
        # JVM start (or the Connect session's): not timed
        spark = get_spark("bench-featurize", master=master, remote=args.remote or None)
        executors = wait_for_executors(spark, args.cores)
        daemon = spark.conf.get("spark.python.daemon.module", "pyspark.daemon")
        where = f"Spark Connect {args.remote}" if args.remote else f"master {master}"
        print(f"{where}: {executors or 'no'} executors, {args.cores} cores, {daemon}")
        memory = WorkerMemory(_cluster_roots(master, args.remote))
        memory.start()
        cpu = CpuTime(_cluster_roots(master, args.remote))
        cpu.start()
        summary, elapsed = feature_step(spark, data, out, args, weights, runtime)
        memory.stopped.set()
        spent = cpu.stop()
        rows = read_features(spark, str(out))
        written, errors = rows.count(), rows.where("error IS NOT NULL").count()
        warm = [
            feature_step(spark, data, Path(tmp, f"warm-{run}"), args, weights, runtime)
            for run in range(args.warm_runs)
        ]
        spark.stop()
    carried = "in each features query" if args.remote else "broadcast once"
    print(
        f"model payload: {payload_bytes(args, weights, runtime, files) / 2**20:.1f} MiB {carried}"
    )
    decoded = summary.images_decoded
    assert summary.info is not None, "a fresh output folder: every image is featurized"
    pipeline_img_s = len(files) / elapsed
    print(
        f"Spark pipeline: {pipeline_img_s:7.1f} images/s ({elapsed:.1f} s, {summary.info.tasks}"
        f" tasks; rows {written}, errors {errors}, images decoded {decoded})"
    )
    print(f"peak RSS of the Python workers: {memory.peak / 2**20:.0f} MiB")
    shares = ", ".join(f"{k} {1000 * v / len(files):.2f}" for k, v in sorted(spent.items()))
    print(f"CPU ms per image: pipeline {shares}; {runtime} alone {limit_cpu_ms:.2f}")
    cached = summary.info.converted_from_cache
    if cached is not None:
        print(f"converted model from the cache (no conversion timed): {cached}")
    for number, (again, seconds) in enumerate(warm, 1):
        print(
            f"warm run {number}: {seconds:.2f} s ({len(files) / seconds:.1f} images/s, "
            f"{again.images_decoded} images decoded)"
        )
    if written != len(files) or decoded not in (len(files), None):  # None: Connect
        raise SystemExit(f"expected {len(files)} rows decoded once, got {written} / {decoded}")
    print(
        f"pipeline_img_s={pipeline_img_s:.1f} keras_img_s={keras_img_s:.1f} "
        f"ratio={pipeline_img_s / keras_img_s:.3f}"
    )
    print(
        f"limit_img_s={limit_img_s:.1f} pipeline_img_s={pipeline_img_s:.1f} "
        f"limit_ratio={pipeline_img_s / limit_img_s:.3f}"
    )


if __name__ == "__main__":
    main()
