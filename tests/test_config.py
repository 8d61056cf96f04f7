"""Tests for helpers.config: defaults, the $FRUITS_WEIGHTS override, coercion and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.config import PARAMETERS, coerce, defaults, validate
from helpers.env import WEIGHTS_ENV
from helpers.features.models import MODELS, resolve_weights


def test_defaults_cover_every_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    """defaults() has exactly one value per PARAMETERS entry, equal to its declared default."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    values = defaults()
    assert list(values) == [p.name for p in PARAMETERS]
    assert values == {p.name: p.default for p in PARAMETERS}
    for p in PARAMETERS:
        assert isinstance(p.default, p.type), p.name


def test_weights_env_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """$FRUITS_WEIGHTS replaces the 'weights' default and nothing else."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert defaults()["weights"] == "imagenet"
    monkeypatch.setenv(WEIGHTS_ENV, "/models/offline.h5")
    values = defaults()
    assert values["weights"] == "/models/offline.h5"
    assert {k: v for k, v in values.items() if k != "weights"} == {
        p.name: p.default for p in PARAMETERS if p.name != "weights"
    }


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("image_size", "128", 128),
        ("pca_variance", "0.9", 0.9),
        ("tsne_perplexity", "5", 5.0),
        ("data_root", "s3://bucket/fruits", "s3://bucket/fruits"),
        ("seed", 7, 7),
    ],
)
def test_coerce_converts_strings(name: str, text: str, expected: object) -> None:
    """coerce() turns command-line strings into the parameter's declared type."""
    value = coerce(name, text)
    assert value == expected
    assert type(value) is type(expected)


def test_coerce_bad_value_names_parameter() -> None:
    """A value that does not convert raises ValueError naming the parameter and the value."""
    with pytest.raises(ValueError, match=r"image_size.*int.*'big'"):
        coerce("image_size", "big")


def test_coerce_unknown_name_lists_known_ones() -> None:
    """An unknown parameter name raises ValueError naming it and the known parameters."""
    with pytest.raises(ValueError, match=r"unknown parameter 'pca_components'.*pca_variance"):
        coerce("pca_components", "3")


def test_validate_accepts_defaults_and_coerces() -> None:
    """validate() passes the defaults and returns values converted to their types."""
    assert validate(defaults()) == defaults()
    values = validate({"image_size": "96", "pca_variance": "1", "pca_k": "0"})
    assert values == {"image_size": 96, "pca_variance": 1.0, "pca_k": 0}


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"pca_variance": 0}, "pca_variance"),
        ({"pca_variance": -0.1}, "pca_variance"),
        ({"pca_variance": 1.5}, "pca_variance"),
        ({"model_name": "vgg16"}, "model_name"),
        ({"image_size": 0}, "image_size"),
        ({"batch_size": -4}, "batch_size"),
        ({"tsne_sample": 0}, "tsne_sample"),
        ({"pca_k": -1}, "pca_k"),
        ({"grid_per_class": 0}, "grid_per_class"),
        ({"grid_classes": -1}, "grid_classes"),
        ({"eda_sample_per_class": -2}, "eda_sample_per_class"),
        ({"eda_image_size": 0}, "eda_image_size"),
        ({"seed": "x"}, "seed"),
        ({"data_root": "/data/fruits[1]"}, r"data_root '/data/fruits\[1\]' contains \[ \]"),
        ({"output_root": "s3://b/out*"}, r"output_root .* contains \*: Spark reads"),
        ({"output_root": "/tmp/{a,b}"}, "output_root"),
    ],
)
def test_validate_rejects_bad_values(params: dict, name: str) -> None:
    """validate() rejects out-of-range values with a message naming the parameter."""
    with pytest.raises(ValueError, match=name):
        validate(params)


def test_validate_model_names_are_the_known_models() -> None:
    """Every model in MODELS validates as model_name."""
    for name in MODELS:
        assert validate({"model_name": name})["model_name"] == name


@pytest.mark.parametrize("weights", ["imagenet", "random"])
def test_resolve_weights_passes_keywords_through(
    weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'imagenet' and 'random' reach Keras unchanged when $FRUITS_WEIGHTS is unset."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert resolve_weights(weights) == weights


def test_resolve_weights_env_overrides_imagenet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$FRUITS_WEIGHTS replaces 'imagenet' with its file; 'random' and explicit paths stay."""
    env_file = tmp_path / "offline.h5"
    env_file.write_bytes(b"h5")
    other = tmp_path / "other.h5"
    other.write_bytes(b"h5")
    monkeypatch.setenv(WEIGHTS_ENV, str(env_file))
    assert resolve_weights("imagenet") == str(env_file.resolve())
    assert resolve_weights("random") == "random"
    assert resolve_weights(str(other)) == str(other.resolve())


@pytest.mark.parametrize("via_env", [False, True])
def test_resolve_weights_missing_file(
    via_env: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing weights file raises FileNotFoundError naming 'weights' and $FRUITS_WEIGHTS."""
    missing = str(tmp_path / "nowhere.h5")
    if via_env:
        monkeypatch.setenv(WEIGHTS_ENV, missing)
        given = "imagenet"
    else:
        monkeypatch.delenv(WEIGHTS_ENV, raising=False)
        given = missing
    with pytest.raises(FileNotFoundError) as info:
        resolve_weights(given)
    message = str(info.value)
    assert "nowhere.h5" in message
    assert "'weights'" in message
    assert WEIGHTS_ENV in message


@pytest.mark.parametrize(
    ("data_root", "output_root"),
    [
        ("/data/fruits", "/data/fruits"),
        ("/data/fruits", "/data/fruits/outputs"),
        ("/data/fruits/", "file:/data"),
        ("s3://b/fruits", "s3a://b/fruits/out"),
        ("S3A://b/fruits/out", "s3://b/fruits"),
    ],
)
def test_validate_refuses_equal_or_nested_roots(data_root: str, output_root: str) -> None:
    """Outputs inside the data would be read as images by the next run: refused up front."""
    with pytest.raises(ValueError, match="data_root .* output_root .* (same folder|nested)"):
        validate({"data_root": data_root, "output_root": output_root})


def test_validate_accepts_sibling_roots(tmp_path) -> None:
    """Siblings, even with one name a prefix of the other, are fine."""
    validate({"data_root": str(tmp_path / "fruits"), "output_root": str(tmp_path / "fruits2")})
    validate({"data_root": "s3://b/fruits", "output_root": "s3://b/fruits-out"})


def test_validate_resolves_links_before_comparing_roots(tmp_path) -> None:
    """An output_root reached through a link into the data is nested all the same."""
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(ValueError, match="nested"):
        validate({"data_root": str(tmp_path / "data"), "output_root": str(tmp_path / "link/out")})
