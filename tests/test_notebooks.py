"""The notebooks: committed clean, parameters that mirror helpers.config, and an
end-to-end papermill run on data_sample with the real weights."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
from conftest import (
    DATA_SAMPLE,
    ODD_IGNORED,
    ODD_IMAGE_NAMES,
    ODD_NOT_IMAGES,
    write_jpeg,
    write_odd_names,
)
from PIL import Image

from helpers.config import PARAMETERS
from helpers.paths import PROJECT_ROOT
from helpers.run import NOTEBOOKS, main, run_notebooks

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
DEFAULTS = {p.name: p.default for p in PARAMETERS}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs_and_with_parameters_cell(name):
    """No outputs, execution counts or papermill metadata; one cell tagged `parameters`."""
    notebook = json.loads((NOTEBOOK_DIR / name).read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert "papermill" not in notebook["metadata"]
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_mirror_config(name):
    """Each parameter a notebook declares exists in helpers.config with the same default."""
    declared = pm.inspect_notebook(str(NOTEBOOK_DIR / name))
    assert declared, f"{name} declares no parameters"
    for param, info in declared.items():
        assert param in DEFAULTS, f"{name}: '{param}' is not in helpers.config.PARAMETERS"
        assert eval(info["default"]) == DEFAULTS[param], f"{name}: default of '{param}'"
        assert info["help"], f"{name}: '{param}' has no comment"


def test_bad_parameter_fails_before_any_notebook(tmp_path, capsys):
    """A bad value stops the run with one message naming the parameter, nothing executed."""
    assert main(["--output-root", str(tmp_path), "-p", "pca_variance", "1.5"]) == 2
    assert not (tmp_path / "notebooks" / NOTEBOOKS[0]).exists()
    with pytest.raises(ValueError, match="unknown parameter 'colour'"):
        run_notebooks({"colour": "red"})


@pytest.mark.slow
def test_eda_notebook_validates_its_parameters(tmp_path):
    """Notebook 01 run on its own (papermill, Databricks) checks its parameters before Spark
    starts, like 02 and 03: a bad value fails naming the parameter."""
    with pytest.raises(pm.PapermillExecutionError, match="grid_per_class must be a positive"):
        pm.execute_notebook(
            str(NOTEBOOK_DIR / NOTEBOOKS[0]),
            str(tmp_path / "01.ipynb"),
            parameters={"output_root": str(tmp_path), "grid_per_class": 0},
            cwd=str(NOTEBOOK_DIR),
            progress_bar=False,
        )
    assert not (tmp_path / "figures").exists()


BAD = ("empty.jpg", "text.jpg", "truncated.jpg", *ODD_NOT_IMAGES)  # a row with an error each


def _odd_and_bad_files(folder: Path) -> int:
    """One file of each awkward kind: 3 unreadable, 7 readable in unusual forms."""
    folder.mkdir(parents=True)
    jpeg = next(DATA_SAMPLE.rglob("*.jpg")).read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    base = Image.open(io.BytesIO(jpeg)).convert("RGB")
    base.convert("L").save(folder / "gray.jpg")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    base.convert("RGBA").save(folder / "rgba.png")
    base.convert("P").save(folder / "palette.png")
    Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 256).save(folder / "16bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(folder / "rotated.jpg", exif=exif.tobytes())
    base.resize((3000, 2000)).save(folder / "large.jpg")
    return 10


@pytest.fixture(scope="module")
def outputs(weights, tmp_path_factory) -> tuple[Path, int]:
    """Run the notebooks on data_sample plus odd and bad files into a fresh output_root."""
    data = tmp_path_factory.mktemp("data") / "fruits"
    shutil.copytree(DATA_SAMPLE, data)
    files = len(list(DATA_SAMPLE.rglob("*.jpg"))) + _odd_and_bad_files(data / "Training" / "Odd")
    write_odd_names(data / "Training" / "Odd")  # names Spark's listing hides, URI specials
    files += len(ODD_IMAGE_NAMES) + len(ODD_NOT_IMAGES)
    root = tmp_path_factory.mktemp("outputs")
    run_notebooks(
        {"data_root": str(data), "output_root": str(root), "weights": weights, "tsne_sample": 200}
    )
    return root, files


@pytest.mark.slow
def test_end_to_end_outputs(outputs):
    """Every file has a row; features, PCA, model, figures, manifest, notebooks are there."""
    outputs, files = outputs
    features = pd.read_parquet(outputs / "features")
    assert len(features) == files == features["path"].nunique()
    failed = features[features["error"].notna()]
    assert sorted(p.rsplit("/", 1)[1] for p in failed["path"]) == sorted(BAD)
    ok = features[features["error"].isna()]
    matrix = np.stack(ok["features"].to_numpy())
    assert matrix.shape == (files - len(BAD), 1280) and np.isfinite(matrix).all()

    odd = {p.split("/Training/Odd/", 1)[1] for p in features["path"] if "/Training/Odd/" in p}
    assert {*ODD_IMAGE_NAMES, *ODD_NOT_IMAGES} <= odd

    manifest = json.loads((outputs / "manifest.json").read_text())
    for section in (manifest["eda"], manifest["features"]):  # the files not read, named
        ignored = section["listing"]["ignored"]
        names = sorted(p.rsplit("/", 1)[1] for p in ignored)
        # data_sample's README and sample marker too
        assert names == sorted([*ODD_IGNORED, "README.md", ".fruits-sample.json"])
    k = manifest["pca"]["k"]
    assert 1 <= k <= 1280 and manifest["pca"]["variance_kept"] >= 0.95
    assert manifest["features"]["rows"] == files and manifest["features"]["errors"] == len(BAD)
    assert manifest["eda"]["images"] == files
    assert manifest["features"]["images_decoded"] == files  # each image decoded once
    assert manifest["pca"]["probe"]["full"]["accuracy"] >= 0.9

    reduced = pd.read_parquet(outputs / "pca")
    assert len(reduced) == files - len(BAD) and len(reduced["pca"].iloc[0]) == k
    assert len(list((outputs / "pca_model").glob("v=*/metadata"))) == 1
    classifier = manifest["classifier"]
    assert classifier["accuracy"] >= 0.9 and len(classifier["worst_classes"]) == 5
    assert classifier["check"]["max_relative_pca_difference"] <= 1e-4
    assert classifier["weights_sha256"] == manifest["features"]["weights_sha256"]
    assert len(list((outputs / "pipeline_model").glob("v=*/metadata"))) == 1

    for figure in ("class_balance", "sample_grid", "pca_variance", "tsne"):
        png = (outputs / "figures" / f"{figure}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, figure
    for name in NOTEBOOKS:
        executed = json.loads((outputs / "notebooks" / name).read_text())
        assert executed["metadata"]["papermill"]["exception"] in (None, False)


def test_bad_roots_fail_before_any_notebook(tmp_path):
    """Missing or image-less data_root, unwritable output_root: one clear error, no notebook."""
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="data_root '.*missing' does not exist"):
        run_notebooks({"data_root": str(tmp_path / "missing"), "output_root": str(out)})
    (tmp_path / "empty" / "Training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no images"):
        run_notebooks({"data_root": str(tmp_path / "empty"), "output_root": str(out)})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="output_root .* cannot be written"):
        run_notebooks({"data_root": str(DATA_SAMPLE), "output_root": str(blocker / "out")})
    assert not out.exists()


# what it checks is Python (the probe and the classifier skipped, with their reason); notebooks
# 02-04 on Spark 4 run in test_end_to_end_outputs
@pytest.mark.slow
@pytest.mark.spark_neutral
def test_one_class_splits_degrade(weights, tmp_path):
    """Training with one class, Test with another: PCA, t-SNE and outputs are written, and
    the probe is skipped with its reason in the manifest and in the notebook."""
    for i in range(4):
        write_jpeg(tmp_path / "data" / "Training" / "Apple" / f"{i}.jpg", (200, 30, 30), seed=i)
    write_jpeg(tmp_path / "data" / "Test" / "Pear" / "0.jpg", (200, 200, 60), seed=9)
    out = tmp_path / "out"
    params = {"data_root": str(tmp_path / "data"), "output_root": str(out), "weights": weights}
    run_notebooks(params, NOTEBOOKS[1:])
    probe = json.loads((out / "manifest.json").read_text())["pca"]["probe"]
    reason = "Training holds a single class ('Apple'); a probe needs at least two"
    assert probe["full"] == {"skipped": reason}
    assert len(pd.read_parquet(out / "pca")) == 5 and (out / "figures" / "tsne.png").is_file()
    assert f"skipped: {reason}" in (out / "notebooks" / NOTEBOOKS[2]).read_text()
    classifier = json.loads((out / "manifest.json").read_text())["classifier"]
    assert classifier["skipped"].startswith("Training holds a single class ('Apple')")
    assert classifier["stages"][-2:] == ["PCAModel", "NullOnError"]  # features -> pca only
