"""Small image samples in Fruits-360 layout, so the pipeline can run without the full download.

``make_synthetic`` draws a tiny deterministic set of fruit-like pictures (committed as
``data_sample/``) so tests, CI and notebooks work offline; ``make_real_sample`` copies a seeded,
stratified subset of a real Fruits-360 download for quick experiments on real photos. CLI::

    python -m helpers.sample synthetic [--out data_sample] [--train-per-class 30] ...
    python -m helpers.sample real --source DIR --out DIR --per-class N [--test-per-class M]

Both write only into a folder of their own: a new or empty ``--out``, which they mark with
``.fruits-sample.json``, or one marked so by an earlier run; any other is refused, naming it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from helpers.config import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

SPLITS = ("Training", "Test")

#: Written into every output folder: only a folder holding it is replaced or added to.
MARKER = ".fruits-sample.json"
SIZE = 100  # Fruits-360 images are 100x100
_S = 200  # drawing canvas (2x, downscaled at the end for anti-aliasing)

Rng = np.random.Generator
Draw = ImageDraw.ImageDraw
Ellipse = tuple[float, float, float, float]


def _jit(rng: Rng, rgb: tuple[int, int, int], spread: int = 18) -> tuple[int, int, int]:
    """Return ``rgb`` with a small random tint, so images of one class differ slightly."""
    r, g, b = (int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in rgb)
    return r, g, b


def _ellipse(d: Draw, cx: float, cy: float, rx: float, ry: float, fill: tuple) -> None:
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def _dots(d: Draw, rng: Rng, ell: Ellipse, n: int, r: float, fill: tuple) -> None:
    """Scatter ``n`` dots of radius ``r`` uniformly inside the ellipse ``(cx, cy, rx, ry)``."""
    cx, cy, rx, ry = ell
    rad, ang = np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
    for x, y in zip(cx + rx * rad * np.cos(ang), cy + ry * rad * np.sin(ang), strict=True):
        _ellipse(d, x, y, r, r, fill)


def _apple(d: Draw, rng: Rng) -> None:
    red = _jit(rng, (190, 25, 35))
    _ellipse(d, 82, 108, 50, 56, red)
    _ellipse(d, 118, 108, 50, 56, red)
    d.line((100, 58, 106, 30), fill=(90, 55, 25), width=6)
    d.polygon([(106, 44), (134, 30), (122, 50)], fill=_jit(rng, (60, 150, 40)))


def _banana(d: Draw, rng: Rng) -> None:
    t = np.linspace(np.pi * 0.18, np.pi * 0.82, 30)
    outer = [(100 + 95 * np.cos(a), 20 + 120 * np.sin(a)) for a in t]
    inner = [(100 + 80 * np.cos(a), 50 + 62 * np.sin(a)) for a in t[::-1]]
    d.polygon(outer + inner, fill=_jit(rng, (235, 205, 45)))
    for x, y in (outer[0], outer[-1]):
        _ellipse(d, x - 2, y - 6, 7, 7, (85, 60, 25))


def _lemon(d: Draw, rng: Rng) -> None:
    yellow = _jit(rng, (245, 225, 60))
    _ellipse(d, 100, 100, 62, 46, yellow)
    d.polygon([(44, 88), (22, 100), (44, 112)], fill=yellow)
    d.polygon([(156, 88), (178, 100), (156, 112)], fill=yellow)


def _orange(d: Draw, rng: Rng) -> None:
    base = _jit(rng, (245, 135, 20))
    _ellipse(d, 100, 100, 62, 62, base)
    pore = tuple(max(c - 45, 0) for c in base)
    _dots(d, rng, (100, 100, 58, 58), 200, 1.5, pore)
    _ellipse(d, 100, 44, 5, 4, (90, 110, 40))


def _kiwi(d: Draw, rng: Rng) -> None:
    brown = _jit(rng, (135, 95, 55), 10)
    _ellipse(d, 100, 100, 64, 46, brown)
    for delta in (-35, 30):
        fuzz = tuple(int(np.clip(c + delta, 0, 255)) for c in brown)
        _dots(d, rng, (100, 100, 62, 44), 300, 1.0, fuzz)


def _grape(d: Draw, rng: Rng) -> None:
    d.line((100, 50, 96, 22), fill=(95, 80, 40), width=5)
    for row, n in enumerate((5, 4, 4, 3, 2, 1)):
        for i in range(n):
            cx = 100 + (i - (n - 1) / 2) * 24 + rng.uniform(-3, 3)
            cy = 62 + row * 21 + rng.uniform(-3, 3)
            _ellipse(d, cx, cy, 13, 13, _jit(rng, (85, 35, 110), 12))


def _strawberry(d: Draw, rng: Rng) -> None:
    red = _jit(rng, (215, 30, 45))
    _ellipse(d, 78, 82, 38, 34, red)
    _ellipse(d, 122, 82, 38, 34, red)
    d.polygon([(42, 90), (158, 90), (108, 168), (92, 168)], fill=red)
    _dots(d, rng, (100, 105, 42, 45), 40, 2.2, (245, 215, 80))
    green = _jit(rng, (40, 140, 45))
    for a in np.linspace(-0.9, 0.9, 5):  # leaves of the calyx
        x, y = 100 + 48 * np.sin(a), 54 + 24 * np.cos(a)
        d.polygon([(100, 50), (x - 9, y - 2), (x + 9, y + 2)], fill=green)


def _pear(d: Draw, rng: Rng) -> None:
    green = _jit(rng, (150, 190, 60))
    _ellipse(d, 100, 125, 50, 50, green)
    _ellipse(d, 100, 70, 28, 32, green)
    d.polygon([(72, 72), (128, 72), (150, 120), (50, 120)], fill=green)
    d.line((100, 40, 108, 18), fill=(95, 70, 35), width=5)


CLASSES: dict[str, Callable[[Draw, Rng], None]] = {
    "Apple Red": _apple,
    "Banana": _banana,
    "Grape Blue": _grape,
    "Kiwi": _kiwi,
    "Lemon": _lemon,
    "Orange": _orange,
    "Pear": _pear,
    "Strawberry": _strawberry,
}


def _render(draw_fruit: Callable[[Draw, Rng], None], rng: Rng) -> Image.Image:
    """Draw one fruit, then light, rotate, scale, move and add noise, on a white background."""
    layer = Image.new("RGBA", (_S, _S), (0, 0, 0, 0))
    draw_fruit(ImageDraw.Draw(layer), rng)
    blur = ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2))
    layer = layer.convert("RGBa").filter(blur).convert("RGBA")  # premultiplied: no dark fringe
    px = np.asarray(layer, dtype=np.float32)
    # Lighting: a directional gradient plus a soft highlight, and overall brightness.
    yy, xx = np.mgrid[-1 : 1 : _S * 1j, -1 : 1 : _S * 1j]
    a = rng.uniform(0, 2 * np.pi)
    hx, hy = 0.45 * np.cos(a), 0.45 * np.sin(a)
    shade = rng.uniform(0.85, 1.1) * (1 + 0.25 * (xx * np.cos(a) + yy * np.sin(a)))
    shade += 0.35 * np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / 0.05)
    px[..., :3] *= shade[..., None]
    px[..., :3] += rng.normal(0, 4, px[..., :3].shape)
    layer = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), "RGBA")
    layer = layer.rotate(rng.uniform(-180, 180), Image.Resampling.BICUBIC)
    side = int(_S * rng.uniform(0.8, 0.98))
    layer = layer.resize((side, side), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (_S, _S), (255, 255, 255))
    slack = _S - side
    pos = (int(rng.integers(0, slack + 1)), int(rng.integers(0, slack + 1)))
    canvas.paste(layer, pos, layer)
    return canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _claim(out: Path, command: str) -> None:
    """Make ``out`` ours to write into, or raise ``FileExistsError`` naming it.

    Ours: missing or empty (then marked now), or marked by an earlier run. A folder with
    anything else may hold someone's images, which the sample would replace or mix with.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"--out '{out}' is not a folder: give a new or empty folder")
    marker = out / MARKER
    if marker.is_file():
        return
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"--out '{out}' holds files helpers.sample did not write (no {MARKER} in it): "
            "they are neither replaced nor added to; give a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"written_by": "helpers.sample", "command": command}) + "\n"
    marker.write_text(text)


def make_synthetic(
    out: Path, train_per_class: int = 30, test_per_class: int = 10, seed: int = 0
) -> int:
    """Write a deterministic synthetic fruit sample in Fruits-360 layout; return the image count.

    Each image gets its own rng derived from ``(seed, split, class, n)``, so the output is
    byte-identical across runs and independent of the other counts. ``out/Training`` and
    ``out/Test`` are deleted first, so regeneration yields exactly the same file set; ``out``
    must be new, empty or written by this module (its marker), else ``FileExistsError``.
    """
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("train_per_class and test_per_class must be >= 1")
    out = Path(out)
    _claim(out, "synthetic")
    counts = {"Training": train_per_class, "Test": test_per_class}
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    seen: dict[str, Path] = {}
    for s, split in enumerate(SPLITS):
        for c, (name, draw_fruit) in enumerate(CLASSES.items()):
            folder = out / split / name
            folder.mkdir(parents=True)
            for n in range(counts[split]):
                rng = np.random.default_rng((seed, s, c, n))
                path = folder / f"{n}_100.jpg"
                _render(draw_fruit, rng).save(path, "JPEG", quality=90)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest in seen:
                    raise RuntimeError(f"generated duplicate images: {seen[digest]} and {path}")
                seen[digest] = path
    return len(seen)


def _images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so sampling is deterministic."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def make_real_sample(
    source: Path, out: Path, per_class: int, test_per_class: int | None = None, seed: int = 0
) -> int:
    """Copy a seeded, stratified sample of a Fruits-360 download to ``out``; return files copied.

    ``source`` is either the dataset root (with ``Training/`` and/or ``Test/``) or one split
    folder of class folders. Each class keeps ``per_class`` images (``test_per_class`` for Test,
    default ``max(1, per_class // 3)``), picked with an rng derived from ``seed`` and the class
    path, so one class's sample does not depend on which other classes exist. Existing output
    class folders are replaced, so re-running never mixes samples: ``out`` must be new, empty
    or written by this module (its marker), else ``FileExistsError``; ``out`` equal to,
    inside or around ``source`` raises ``ValueError``.
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        hint = "point it at a Fruits-360 folder (with Training/ and Test/)"
        raise FileNotFoundError(f"source '{source}' does not exist: {hint}")
    real_source, real_out = source.resolve(), out.resolve()
    if (
        real_out == real_source
        or real_source in real_out.parents
        or real_out in real_source.parents
    ):
        raise ValueError(
            f"--out '{out}' and --source '{source}' overlap (the same folder, or one inside "
            "the other): the sample would replace or re-read the images it copies; give an "
            "--out outside the source"
        )
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    test_n = max(1, per_class // 3) if test_per_class is None else test_per_class
    if test_n < 1:
        raise ValueError(f"test_per_class must be >= 1, got {test_per_class}")
    splits = [s for s in SPLITS if (source / s).is_dir()] or [""]
    jobs = []  # (relative class folder, images, wanted)
    for split in splits:
        wanted = test_n if split == "Test" else per_class
        for cls in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            images = _images(cls)
            if images:
                jobs.append((cls.relative_to(source), images, wanted))
    if not jobs:
        raise ValueError(
            f"source '{source}' has no images (looked for "
            f"{', '.join('*' + ext for ext in IMAGE_EXTENSIONS)} in <Split>/<Class>/ folders)"
        )
    _claim(out, "real")
    copied = 0
    for rel, images, wanted in jobs:
        if len(images) < wanted:
            log.warning(
                "%s has only %d images (asked for %d): copying all", rel, len(images), wanted
            )
        rng = np.random.default_rng((seed, zlib.crc32(rel.as_posix().encode())))
        picks = sorted(rng.choice(len(images), size=min(wanted, len(images)), replace=False))
        target = out / rel
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for i in picks:
            shutil.copyfile(images[i], target / images[i].name)
        copied += len(picks)
    return copied


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m helpers.sample``); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic", help="draw the small synthetic sample (data_sample/)")
    syn.add_argument("--out", type=Path, default=Path("data_sample"))
    syn.add_argument("--train-per-class", type=int, default=30)
    syn.add_argument("--test-per-class", type=int, default=10)
    syn.add_argument("--seed", type=int, default=0)
    real = sub.add_parser("real", help="copy a stratified sample of a Fruits-360 download")
    real.add_argument("--source", type=Path, required=True, help="Fruits-360 root or split")
    real.add_argument("--out", type=Path, required=True)
    real.add_argument("--per-class", type=int, required=True, help="images per Training class")
    real.add_argument("--test-per-class", type=int, help="default: max(1, per-class // 3)")
    real.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "synthetic":
            n = make_synthetic(args.out, args.train_per_class, args.test_per_class, args.seed)
            log.info("wrote %d images to %s", n, args.out)
        else:
            n = make_real_sample(
                args.source, args.out, args.per_class, args.test_per_class, args.seed
            )
            log.info("copied %d images from %s to %s", n, args.source, args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
