"""Peak memory of the feature step on a hostile folder: large photos, bombs, other formats.

    python bench/hostile.py [--weights FILE.h5] [--jpegs 24] [--pngs 8] [--cores 2] \\
        [--size 8000x6000] [--keep DIR]

Builds, in a temporary folder (or ``--keep DIR``), ``Training/<class>/`` with ``--jpegs``
photo-like JPEGs and ``--pngs`` PNGs at ``--size`` (one PNG 16-bit), a PNG whose header
claims 20000x20000 pixels, a real PNG of 12000x12000 black pixels (144 M: between Pillow's
warning and error limits, 0.4 MB on disk), EPS, TIFF and GIF content named ``.jpg``, a
loop link and a file name that is not UTF-8. Then runs the feature step as notebook 02
does (``list_images``, ``featurize``, ``write_features``) with a local Spark, and reports
the rows, the error rows by reason, the wall time, and the peak resident memory of the
driver (this Python process and its JVM) and of the Python workers (sum over the workers,
polled every 0.2 s). ``--no-links`` leaves out the link and the odd name, so Spark's own
scan reads the files. Runs under an older checkout too (``PYTHONPATH=...``), to compare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from helpers.features.extract import featurize
from helpers.features.spec import FeatureSpec
from helpers.features.store import read_features, write_features
from helpers.images import list_images
from helpers.spark.session import get_spark


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like RGB array: smooth shapes plus sensor noise (JPEGs of realistic size)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    pixels = np.empty((height, width, 3), np.uint8)
    for channel in range(3):
        a, b, c = rng.uniform(1, 6, 3)
        wave = 127 + 60 * np.sin(a * 6.3 * x + c) * np.cos(b * 6.3 * y)
        wave += rng.normal(0, 6, (height, width)).astype(np.float32)
        pixels[..., channel] = np.clip(wave, 0, 255)
    return pixels


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 1024))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def build(root: Path, jpegs: int, pngs: int, width: int, height: int, links: bool) -> int:
    """The hostile folder under ``root``; returns the number of image files in it."""
    folder = root / "Training" / "Big"
    folder.mkdir(parents=True)
    for i in range(jpegs):  # 3 distinct photos, copied: decoding cost is per file anyway
        target = folder / f"photo{i:02d}.jpg"
        if i < 3:
            Image.fromarray(photo(width, height, i)).save(target, quality=92)
        else:
            shutil.copyfile(folder / f"photo{i % 3:02d}.jpg", target)
    for i in range(pngs):
        target = folder / f"scan{i:02d}.png"
        if i == 0:
            gray = photo(width, height, 50)[..., 0].astype(np.uint16) * 257
            Image.fromarray(gray).save(target, compress_level=1)  # 16-bit grayscale
        elif i == 1:
            Image.fromarray(photo(width, height, 51)).save(target, compress_level=1)
        else:
            shutil.copyfile(folder / f"scan{1:02d}.png", target)
    odd = root / "Training" / "Odd"
    odd.mkdir()
    (odd / "bomb.png").write_bytes(png_header(20000, 20000))
    black = Image.new("L", (12000, 12000))  # 144 M pixels, between Pillow's two limits
    black.save(odd / "black.png", optimize=False, compress_level=9)
    (odd / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 600 800\n")
    Image.fromarray(photo(600, 800, 7)).save(odd / "tiff.jpg", format="TIFF")
    Image.fromarray(photo(600, 800, 8)).save(odd / "gif.jpg", format="GIF")
    if links:
        (odd / "loop").symlink_to("..")
        with open(os.path.join(os.fsencode(odd), b"caf\xe9.jpg"), "wb") as bad:
            bad.write((folder / "photo00.jpg").read_bytes())
    return jpegs + pngs + 5


class Peak(threading.Thread):
    """Polls resident memory: this process, its JVM, and the sum of Spark's Python workers."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.driver = self.jvm = self.workers = 0

    def run(self) -> None:
        me = psutil.Process()
        while not self.stopped.wait(0.2):
            jvm = workers = 0
            for proc in me.children(recursive=True):
                try:
                    rss = proc.memory_info().rss
                    name = proc.name()
                except psutil.NoSuchProcess:
                    continue
                if name == "java":
                    jvm += rss
                elif "python" in name:
                    workers += rss
            self.driver = max(self.driver, me.memory_info().rss)
            self.jvm, self.workers = max(self.jvm, jvm), max(self.workers, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--jpegs", type=int, default=24)
    parser.add_argument("--pngs", type=int, default=8)
    parser.add_argument("--size", default="8000x6000", help="WIDTHxHEIGHT of the photos")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--no-links", action="store_true")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the folder here")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="fruits-hostile-"))
    root = args.keep or work / "images"
    try:
        started = time.perf_counter()
        if not root.exists():
            build(root, args.jpegs, args.pngs, width, height, not args.no_links)
        on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(
            f"folder: {root} ({on_disk / 2**20:.0f} MiB, built in "
            f"{time.perf_counter() - started:.0f} s)"
        )
        spark = get_spark("fruits-hostile", master=f"local[{args.cores}]")  # 4g, as notebooks
        peak = Peak()
        peak.start()
        started = time.perf_counter()
        listing = list_images(spark, str(root))
        spec = FeatureSpec(weights=args.weights, runtime=args.runtime)
        largest = getattr(listing, "largest", 0)  # an older checkout has none
        extra = {"largest": largest} if largest else {}
        run = featurize(spark, listing.images, spec, count=listing.files, **extra)
        out = work / "out"
        write_features(spark, run.features, str(out))
        seconds = time.perf_counter() - started
        peak.stopped.set()
        rows = read_features(spark, str(out)).select("path", "error").collect()
        errors = Counter(
            r["error"].split(":")[0] + ": " + r["error"].split(":")[1][:40]
            for r in rows
            if r["error"]
        )
        arrow = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
        print(
            f"image files listed: {listing.files} (largest {listing.largest / 2**20:.1f} MiB); "
            f"Arrow rows per batch: {arrow}; Spark's scan: {getattr(listing, 'scanned', True)}"
        )
        print(f"ignored: {sorted(p.rsplit('/', 1)[1] for p in listing.ignored)}")
        print(f"rows: {len(rows)}, error rows: {sum(errors.values())}, wall {seconds:.1f} s")
        for reason, n in sorted(errors.items()):
            print(f"  {n} x {reason}")
        print(
            f"peak RSS: driver Python {peak.driver / 2**20:.0f} MiB, JVM {peak.jvm / 2**20:.0f} "
            f"MiB, Python workers (sum) {peak.workers / 2**20:.0f} MiB"
        )
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
