"""Tests for helpers.sample: the committed synthetic sample and the real-data sampler."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.sample import CLASSES, MARKER, main, make_real_sample, make_synthetic

REPO = Path(__file__).resolve().parents[1]
DATA_SAMPLE = REPO / "data_sample"
FRUITS360 = Path(__file__).resolve().parents[2] / "shared" / "data" / "fruits360"


def _hashes(root: Path, pattern: str = "*.jpg") -> dict[str, str]:
    """Map each file's path relative to ``root`` to its sha256."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }


def _files(root: Path) -> list[str]:
    """Files under ``root`` but the marker of an output folder."""
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MARKER
    )


def test_committed_sample_is_generator_output(tmp_path: Path) -> None:
    assert make_synthetic(tmp_path, 1, 1) == 16  # an earlier run: the folder is marked
    assert (tmp_path / MARKER).is_file()
    stale = tmp_path / "Training" / "Old Class" / "0_100.jpg"  # must not survive regeneration
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    assert make_synthetic(tmp_path) == 320
    assert not stale.exists()
    assert _hashes(tmp_path) == _hashes(DATA_SAMPLE), "run: python -m helpers.sample synthetic"


def test_committed_sample_layout() -> None:
    splits = {s: sorted(p.name for p in (DATA_SAMPLE / s).iterdir()) for s in ("Training", "Test")}
    assert splits["Training"] == splits["Test"] == sorted(CLASSES)
    assert len(splits["Training"]) == 8 and any(" " in c for c in splits["Training"])
    for split, minimum in (("Training", 30), ("Test", 10)):
        for cls in splits[split]:
            assert len(list((DATA_SAMPLE / split / cls).glob("*_100.jpg"))) >= minimum
    hashes = _hashes(DATA_SAMPLE)
    assert len(hashes) == 320
    assert len(set(hashes.values())) == len(hashes), "duplicate images"
    assert sum(p.stat().st_size for p in DATA_SAMPLE.rglob("*")) <= 3_000_000
    for rel in hashes:
        with Image.open(DATA_SAMPLE / rel) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (100, 100)), rel
            assert "exif" not in im.info and not im.info.get("progressive"), rel
            px = np.asarray(im, dtype=np.int16)
        corners = [px[:3, :3], px[:3, -3:], px[-3:, :3], px[-3:, -3:]]
        assert min(c.mean() for c in corners) > 240, f"{rel}: background is not white"


def test_classes_differ_in_colour() -> None:
    """Mean colour per class (mostly white background) still separates every pair of classes."""
    means = {}
    for cls in CLASSES:
        paths = sorted((DATA_SAMPLE / "Training" / cls).glob("*.jpg"))
        means[cls] = np.mean([np.asarray(Image.open(p)).mean((0, 1)) for p in paths], axis=0)
    gaps = [np.abs(means[a] - means[b]).max() for a in means for b in means if a < b]
    assert min(gaps) > 5


@pytest.fixture
def fake_fruits(tmp_path: Path) -> Path:
    """A tiny Fruits-360-like tree: 3 Training classes (one short of images), 2 Test classes."""
    root = tmp_path / "fruits-360"
    layout = {
        "Training/Apple Red": ["1_100.jpg", "2_100.jpg", "3_100.JPG", "4_100.png", "5_100.jpeg"],
        "Training/Banana": ["1_100.jpg", "2_100.jpg"],
        "Training/Kiwi": [f"{i}_100.jpg" for i in range(6)],
        "Test/Apple Red": ["7_100.jpg", "8_100.jpg", "9_100.jpg"],
        "Test/Banana": ["5_100.jpg"],
    }
    for i, (folder, names) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True)
        (root / folder / "notes.txt").write_text("not an image")
        for j, name in enumerate(names):
            fmt = "PNG" if name.endswith(".png") else "JPEG"
            Image.new("RGB", (8, 8), (10 * i, 20 * j, 100)).save(root / folder / name, fmt)
    return root


def test_real_sample_counts_layout_and_determinism(
    fake_fruits: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="helpers.sample"):
        n = make_real_sample(fake_fruits, tmp_path / "a", per_class=3, seed=7)
    assert "Banana" in caplog.text and "only 2 images" in caplog.text
    files = _files(tmp_path / "a")
    assert n == len(files) == 3 + 2 + 3 + 1 + 1  # Test default: max(1, 3 // 3) = 1
    assert Counter(f.rsplit("/", 1)[0] for f in files) == {
        "Training/Apple Red": 3,
        "Training/Banana": 2,
        "Training/Kiwi": 3,
        "Test/Apple Red": 1,
        "Test/Banana": 1,
    }
    assert not any(f.endswith(".txt") for f in files)
    for f in files:  # copied unchanged
        assert (tmp_path / "a" / f).read_bytes() == (fake_fruits / f).read_bytes()
    make_real_sample(fake_fruits, tmp_path / "b", per_class=3, seed=7)
    assert _hashes(tmp_path / "a", "*") == _hashes(tmp_path / "b", "*")
    # Re-running into the same folder replaces the class folders instead of adding to them.
    assert make_real_sample(fake_fruits, tmp_path / "a", per_class=2, test_per_class=2) == 9
    assert len(_files(tmp_path / "a")) == 9


def test_real_sample_from_single_split(fake_fruits: Path, tmp_path: Path) -> None:
    n = make_real_sample(fake_fruits / "Test", tmp_path / "out", per_class=2)
    assert n == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "Apple Red", "Banana"]


@pytest.mark.skipif(not FRUITS360.is_dir(), reason=f"real Fruits-360 not found at {FRUITS360}")
def test_real_sample_on_fruits360(tmp_path: Path) -> None:
    make_real_sample(FRUITS360, tmp_path, per_class=2)
    classes = sorted((tmp_path / "Training").iterdir())
    assert len(classes) == 103
    assert all(len(list(c.iterdir())) == 2 for c in classes)


def test_real_sample_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        make_real_sample(missing, tmp_path / "out", per_class=2)
    (tmp_path / "empty" / "Training" / "Banana").mkdir(parents=True)
    with pytest.raises(ValueError, match="per_class"):
        make_real_sample(tmp_path / "empty", tmp_path / "out", per_class=0)
    with pytest.raises(ValueError, match="test_per_class"):
        make_real_sample(tmp_path / "empty", tmp_path / "out", per_class=2, test_per_class=0)
    with pytest.raises(ValueError, match=r"'.*empty' has no images"):
        make_real_sample(tmp_path / "empty", tmp_path / "out", per_class=2)


def test_cli(fake_fruits: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["synthetic", "--out", str(tmp_path / "syn"), "--train-per-class", "1"]
    with caplog.at_level(logging.INFO, logger="helpers.sample"):
        assert main([*argv, "--test-per-class", "1"]) == 0
    assert "wrote 16 images" in caplog.text
    assert len(_files(tmp_path / "syn")) == 16
    real = ["real", "--source", str(fake_fruits), "--out", str(tmp_path / "real")]
    assert main([*real, "--per-class", "1"]) == 0
    assert len(_files(tmp_path / "real")) == 5
    assert main(["real", "--source", str(tmp_path / "nope"), "--out", "x", "--per-class", "1"]) == 2


# --- only into folders of its own ---------------------------------------------------------


def _user_images(root: Path) -> dict[str, str]:
    """A user's photos in Fruits-360 layout (names the generator uses too); their hashes."""
    for split in ("Training", "Test"):
        for i in range(2):
            path = root / split / "Banana" / f"{i}_100.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i, 50, 200)).save(path, "JPEG")
    (root / "notes.txt").write_text("my holiday fruit")
    return _hashes(root, "*")


def test_synthetic_refuses_a_folder_it_did_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """synthetic --out on a user's images: exit 2 naming the folder, every file unchanged."""
    mine = tmp_path / "my photos"
    before = _user_images(mine)
    with caplog.at_level(logging.ERROR, logger="helpers.sample"):
        assert main(["synthetic", "--out", str(mine), "--train-per-class", "1"]) == 2
    assert f"--out '{mine}' holds files helpers.sample did not write" in caplog.text
    assert _hashes(mine, "*") == before and not (mine / MARKER).exists()
    only_a_file = tmp_path / "just-a-file"
    only_a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        make_synthetic(only_a_file, 1, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_synthetic(empty, 1, 1) == 16 and (empty / MARKER).is_file()


def test_real_refuses_a_folder_it_did_not_write(fake_fruits: Path, tmp_path: Path) -> None:
    """real --out on a user's folder: refused, unchanged; its own earlier output is replaced."""
    mine = tmp_path / "mine"
    before = _user_images(mine)
    with pytest.raises(FileExistsError, match=f"'{mine}' holds files"):
        make_real_sample(fake_fruits, mine, per_class=1)
    assert _hashes(mine, "*") == before


@pytest.mark.parametrize("where", ["same", "inside", "around", "same-through-link"])
def test_real_refuses_overlapping_source_and_out(
    fake_fruits: Path, tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """--out equal to, inside or around --source (a link too): exit 2, the source unchanged,
    no folder created."""
    before = _hashes(fake_fruits, "*")
    out = {
        "same": fake_fruits,
        "inside": fake_fruits / "Training" / "sample",
        "around": tmp_path,
        "same-through-link": tmp_path / "link",
    }[where]
    if where == "same-through-link":
        out.symlink_to(fake_fruits)
    argv = ["real", "--source", str(fake_fruits), "--out", str(out), "--per-class", "1"]
    with caplog.at_level(logging.ERROR, logger="helpers.sample"):
        assert main(argv) == 2
    assert "overlap" in caplog.text and str(fake_fruits) in caplog.text
    assert _hashes(fake_fruits, "*") == before
    assert not (fake_fruits / "Training" / "sample").exists()
    assert not (out / MARKER).exists()
