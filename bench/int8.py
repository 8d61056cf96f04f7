"""int8 against float32 for the default runtime (LiteRT): speed on this CPU, and what it costs
the linear probe on real images.

    python bench/int8.py --images ../shared/data/fruits360 --weights FILE.h5 \\
        [--image-size 224] [--train-per-class 20] [--calibration 200] [--speed-images 600]

The float32 model is the pipeline's own conversion (``helpers.features.runtimes.LiteRT``),
the int8 one the pipeline's ``litert-int8`` (``LiteRTInt8``): TensorFlow's post-training
full-integer quantization of the same model (weights and activations int8, float32 in and
out), calibrated here on ``--calibration`` seeded Training images outside the probe's
Training rows (never a Test image). Both run on LiteRT's XNNPACK, one image per call, one
thread per process, one process per core, as the UDF runs them.

Speed: images per second of decode + resize + model over ``--speed-images`` images, for
each model in turn (models built and warmed up before the clock). Probe: the features of
``--train-per-class`` Training images per class and every Test image, then the linear
probe of notebook 03 (standardized logistic regression, Training -> Test) on each model's
features; also the features' relative gap (max |a-b| / max |b|, as the runtime tests).
Ends with ``int8_img_s=... float32_img_s=... speedup=... probe_float32=... probe_int8=...
probe_change_points=...``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.features.models import driver_weights, preprocess, resolve_weights
from helpers.features.runtimes import RUNTIMES, Calibration, LiteRT
from helpers.images import decode_image, is_image_name

MODEL = "mobilenet_v2"


def class_files(root: Path, split: str) -> dict[str, list[Path]]:
    """The images of ``split`` by class, sorted."""
    return {
        folder.name: sorted(p for p in folder.iterdir() if is_image_name(p.name))
        for folder in sorted((root / split).iterdir())
        if folder.is_dir()
    }


def pick(by_class: dict[str, list[Path]], per_class: int, rng: np.random.Generator) -> list:
    """``per_class`` seeded images of each class (all when it has fewer)."""
    chosen = []
    for files in by_class.values():
        order = rng.permutation(len(files))[:per_class]
        chosen += [files[i] for i in sorted(order)]
    return chosen


def int8_model(weights: Any, size: int, calibration: list[Path], seed: int) -> bytes:
    """The pipeline's ``litert-int8`` model (:class:`helpers.features.runtimes.LiteRTInt8`),
    calibrated on ``calibration`` (cached by their digest, as the pipeline caches it)."""
    images = [(p.read_bytes(), decode_image(p.read_bytes(), size)) for p in calibration]
    found = Calibration.of(images, seed)
    return RUNTIMES["litert-int8"].converted(MODEL, size, weights, found).data


_WORKER: dict[str, Any] = {}


def _start(model: bytes, size: int, ready: Any) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=1)
    (source,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(source["index"], [1, size, size, 3])
    interpreter.allocate_tensors()
    (target,) = interpreter.get_output_details()
    _WORKER.update(
        interpreter=interpreter, source=source, target=target, size=size, prepare=preprocess(MODEL)
    )
    interpreter.set_tensor(source["index"], np.zeros((1, size, size, 3), np.float32))
    interpreter.invoke()  # warm-up, before the clock
    ready.wait()


def _features(paths: list[str]) -> np.ndarray:
    worker = _WORKER
    interpreter, out = worker["interpreter"], []
    for path in paths:
        pixels = np.array(
            decode_image(Path(path).read_bytes(), worker["size"])[np.newaxis], np.float32
        )
        interpreter.set_tensor(worker["source"]["index"], worker["prepare"](pixels))
        interpreter.invoke()
        out.append(interpreter.get_tensor(worker["target"]["index"])[0].copy())
    return np.stack(out)


def run(model: bytes, size: int, files: list[Path], cores: int) -> tuple[np.ndarray, float]:
    """Features of ``files`` in order, and images per second, one process per core."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(cores + 1)
    chunks = [[str(p) for p in files[i : i + 32]] for i in range(0, len(files), 32)]
    with context.Pool(cores, _start, (model, size, ready)) as pool:
        ready.wait()
        started = time.perf_counter()
        parts = pool.map(_features, chunks)
        elapsed = time.perf_counter() - started
    return np.concatenate(parts), len(files) / elapsed


def probe(features: np.ndarray, labels: list[str], train: int) -> float:
    """Test accuracy of notebook 03's probe: standardized logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features[:train])
    model = LogisticRegression(max_iter=1000, C=1.0, random_state=42)
    model.fit(scaler.transform(features[:train]), labels[:train])
    predicted = model.predict(scaler.transform(features[train:]))
    return float(np.mean(predicted == np.array(labels[train:])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=200, help="Training images")
    parser.add_argument("--speed-images", type=int, default=600)
    parser.add_argument("--cores", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size, root = args.image_size, args.images.resolve()
    rng = np.random.default_rng(args.seed)
    training, test = class_files(root, "Training"), class_files(root, "Test")
    train = pick(training, args.train_per_class, rng)
    rest = [p for p in sorted(set(sum(training.values(), [])) - set(train))]
    calibration = [rest[i] for i in rng.permutation(len(rest))[: args.calibration]]
    probe_files = train + sum(test.values(), [])
    labels = [p.parent.name for p in probe_files]
    weights = driver_weights(MODEL, resolve_weights(args.weights), size)
    started = time.perf_counter()
    models = {
        "float32": LiteRT().converted(MODEL, size, weights).data,
        "int8": int8_model(weights, size, calibration, args.seed),
    }
    print(
        f"int8 conversion: {time.perf_counter() - started:.0f} s, calibrated on "
        f"{len(calibration)} Training images; sizes "
        + ", ".join(f"{k} {len(v) / 2**20:.1f} MiB" for k, v in models.items())
    )
    speed_files = [probe_files[i] for i in rng.permutation(len(probe_files))[: args.speed_images]]
    speeds, features, scores = {}, {}, {}
    for name, model in models.items():
        _, speeds[name] = run(model, size, speed_files, args.cores)
        features[name], _ = run(model, size, probe_files, args.cores)
        scores[name] = probe(features[name], labels, len(train))
        print(
            f"{name:>8}: {speeds[name]:6.1f} img/s ({args.cores} x 1 thread), probe "
            f"{scores[name]:.4f} on {len(probe_files) - len(train)} Test images"
        )
    gap = np.abs(features["int8"] - features["float32"]).max() / np.abs(features["float32"]).max()
    table = pd.Series({"features max relative gap": gap})
    print(table.to_string())
    change = 100 * (scores["int8"] - scores["float32"])
    print(
        f"int8_img_s={speeds['int8']:.1f} float32_img_s={speeds['float32']:.1f} "
        f"speedup={speeds['int8'] / speeds['float32']:.2f} probe_float32={scores['float32']:.4f} "
        f"probe_int8={scores['int8']:.4f} probe_change_points={change:+.2f}"
    )


if __name__ == "__main__":
    main()
