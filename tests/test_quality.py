"""The features are judged by what they do: a linear probe on real Fruits-360 photos.

A stratified subset of the real data (20 Training and 8 Test images per class, every
class) goes through the whole pipeline with the real ImageNet weights: binaryFile,
the featurizing pandas UDF, the features dataset, StandardScaler + PCA at 95% variance,
then a logistic regression trained on Training and scored on Test. Three broken files in
the subset must come out as error rows, left out of the PCA and counted. Skipped, with
the reason, where ../shared holds no Fruits-360 images or no weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.evaluate import linear_probe
from helpers.features.extract import extract_features
from helpers.features.spec import FeatureSpec
from helpers.features.store import read_features
from helpers.reduce import fit_reduction, reduce_features
from helpers.sample import make_real_sample

#: Starts notebooks, a cluster, a server or a Spark driver of its own: `make test` only.
pytestmark = pytest.mark.slow


TRAIN_PER_CLASS = 20
TEST_PER_CLASS = 8
#: Files that cannot be decoded, dropped into the subset: each must give one error row.
BROKEN = {
    "not_an_image.jpg": b"this is not a JPEG",
    "noise.png": bytes(range(256)) * 8,
    "empty.jpg": b"",
}


@pytest.fixture(scope="module")
def subset(fruits360: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The stratified subset plus the broken files; returns its root and its good images."""
    root = tmp_path_factory.mktemp("fruits360_subset")
    good = make_real_sample(fruits360, root, TRAIN_PER_CLASS, TEST_PER_CLASS)
    first_class = sorted(p for p in (root / "Training").iterdir() if p.is_dir())[0]
    for name, data in BROKEN.items():
        (first_class / name).write_bytes(data)
    return root, good


@pytest.fixture(scope="module")
def real_features(spark, weights: str, subset: tuple[Path, int], tmp_path_factory):
    """Features of the subset with the real weights, made and read back as notebook 02 does."""
    root, _ = subset
    output_root = str(tmp_path_factory.mktemp("quality_out"))
    extract_features(spark, str(root), output_root, FeatureSpec(weights=weights))
    return read_features(spark, output_root)


@pytest.fixture(scope="module")
def reduction(real_features):
    """StandardScaler + PCA at 95% variance on the subset."""
    return fit_reduction(real_features, variance=0.95)


def test_broken_files_are_excluded_and_counted(reduction, subset: tuple[Path, int]) -> None:
    """Each undecodable file is an error row: left out of the PCA, counted in ``excluded``."""
    _, good = subset
    assert reduction.excluded == len(BROKEN)
    assert reduction.rows == good
    assert reduction.dim == 1280


def test_reduced_features_linear_probe(reduction, real_features) -> None:
    """A logistic regression on the PCA-reduced features scores >= 95% on the Test split."""
    reduced = reduce_features(reduction, real_features)
    result = linear_probe(reduced, "pca", standardize=False)
    assert result.skipped is None
    assert result.test_rows == TEST_PER_CLASS * reduced.select("label").distinct().count()
    assert result.accuracy >= 0.95, result
