"""Tests for helpers.reduce: StandardScaler + PCA with Spark ML, k chosen by explained variance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SETTINGS
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCA as SparkPCA
from pyspark.ml.feature import StandardScaler as SparkScaler
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType
from sklearn.decomposition import PCA as SklearnPCA

from helpers.features.store import read_features, write_features
from helpers.outputs import current_version, published
from helpers.paths import join, spark_uri
from helpers.reduce import (
    choose_k,
    fit_reduction,
    local_parquet_files,
    reduce_features,
    save_reduction,
    usable_features,
    variance_table,
)

ROWS = 400
#: Three latent factors drive blocks of 6, 4 and 2 of the 12 columns: after standardization
#: the spectrum is about 6/12, 4/12, 2/12, then noise.
BLOCKS = (6, 4, 2)
WIDTH = sum(BLOCKS)
FAILED = 5

SCHEMA = StructType(
    [
        StructField("path", StringType()),
        StructField("split", StringType()),
        StructField("label", StringType()),
        StructField("features", ArrayType(FloatType())),
        StructField("error", StringType()),
    ]
)


def _synthetic(seed: int = 0) -> np.ndarray:
    """ROWS x WIDTH float32: block factors plus 5% noise, columns on wildly different scales."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(ROWS, len(BLOCKS)))
    columns = np.repeat(factors, BLOCKS, axis=1) + 0.05 * rng.normal(size=(ROWS, WIDTH))
    scales = 10.0 ** rng.uniform(-2, 3, size=WIDTH)  # the scaler must undo these
    return (columns * scales + rng.normal(size=WIDTH) * 100).astype(np.float32)


@pytest.fixture(scope="module")
def matrix() -> np.ndarray:
    return _synthetic()


@pytest.fixture(scope="module")
def features(spark, matrix: np.ndarray):
    """A features DataFrame: ROWS good rows, plus FAILED error rows that must be ignored."""
    rows = [
        (f"r{i:04d}", "Training" if i % 4 else "Test", f"c{i % 3}", row.tolist(), None)
        for i, row in enumerate(matrix)
    ]
    garbage = [1e6] * WIDTH
    rows += [
        (f"bad{i}", "Training", "c0", None if i % 2 else garbage, "cannot decode image")
        for i in range(FAILED)
    ]
    return spark.createDataFrame(rows, SCHEMA).cache()


@pytest.fixture(scope="module")
def reduction(features):
    """The reduction fitted once for the module at 95% variance."""
    return fit_reduction(features, variance=0.95)


def _frame(spark, matrix: np.ndarray):
    """Good rows of ``matrix`` as a features DataFrame."""
    rows = [(f"r{i:04d}", "Training", "c0", row.tolist(), None) for i, row in enumerate(matrix)]
    return spark.createDataFrame(rows, SCHEMA)


def _read_back(spark, frame, folder: Path, files: int = 1):
    """``frame`` written as ``files`` Parquet files under ``folder``, read back as a plain
    scan: the frame :func:`fit_reduction` reads with pyarrow in its tasks."""
    frame.repartition(files).write.parquet(str(folder))
    read = spark.read.parquet(str(folder))
    assert local_parquet_files(read) is not None
    return read


@pytest.fixture(scope="module")
def feature_files(spark, features, tmp_path_factory):
    """``features`` (good and error rows) as 3 Parquet files, read back."""
    return _read_back(spark, features, tmp_path_factory.mktemp("files") / "features", files=3)


def _standardized(matrix: np.ndarray) -> np.ndarray:
    """What Spark's StandardScaler computes: centred, divided by the unbiased std."""
    x = matrix.astype(np.float64)
    return (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)


def _sklearn_spectrum(matrix: np.ndarray) -> np.ndarray:
    """scikit-learn's explained-variance ratios of the standardized ``matrix``."""
    return SklearnPCA(svd_solver="full").fit(_standardized(matrix)).explained_variance_ratio_


SPECTRUM = np.array([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize(("variance", "k"), [(0.4, 1), (0.8, 2), (0.95, 3), (1.0, 4)])
def test_choose_k_known_spectrum(variance: float, k: int) -> None:
    """choose_k returns the fewest components whose cumulative share reaches the threshold."""
    assert choose_k(SPECTRUM, variance) == k


@pytest.mark.parametrize("variance", [0, 1.5, -0.2])
def test_choose_k_rejects_out_of_range(variance: float) -> None:
    """A threshold outside (0, 1] raises ValueError naming pca_variance."""
    with pytest.raises(ValueError, match="pca_variance"):
        choose_k(SPECTRUM, variance)


def test_fit_reduction_finds_the_latent_factors(reduction, matrix: np.ndarray) -> None:
    """Three latent factors give k=3 at 95%, whatever the columns' scales; spectrum sums to 1."""
    assert reduction.k == 3
    assert reduction.rows == ROWS  # the error rows are left out
    assert reduction.excluded == FAILED
    assert reduction.dim == WIDTH
    explained = reduction.explained_variance
    assert explained.shape == (WIDTH,)
    assert explained.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.diff(explained) <= 1e-12)
    expected = np.linalg.eigvalsh(np.corrcoef(matrix.astype(np.float64), rowvar=False))[::-1]
    np.testing.assert_allclose(explained, expected / WIDTH, atol=1e-9)
    assert reduction.variance_at(3) > 0.95 > reduction.variance_at(2)


@pytest.mark.parametrize(("variance", "k"), [(0.4, 1), (0.8, 2)])
def test_fit_reduction_threshold_sets_k(features, variance: float, k: int) -> None:
    """A lower threshold keeps fewer components."""
    assert fit_reduction(features, variance=variance).k == k


def test_fit_reduction_explicit_k(features) -> None:
    """A positive pca_k is used as given, ignoring the variance threshold."""
    reduction = fit_reduction(features, variance=0.95, k=5)
    assert reduction.k == 5
    pca = reduce_features(reduction, features).first()["pca"]
    assert len(pca) == 5


def test_fit_reduction_rejects_k_above_width(features) -> None:
    """pca_k larger than the feature width raises ValueError naming pca_k."""
    with pytest.raises(ValueError, match=f"pca_k={WIDTH + 1}"):
        fit_reduction(features, k=WIDTH + 1)


def test_reduce_features_schema(reduction, features) -> None:
    """reduce_features gives path, split, label and a float array of length k per good row."""
    reduced = reduce_features(reduction, features)
    assert reduced.columns == ["path", "split", "label", "pca"]
    assert reduced.schema["pca"].dataType.elementType == FloatType()
    rows = reduced.collect()
    assert len(rows) == ROWS
    assert not any(r["path"].startswith("bad") for r in rows)
    assert {len(r["pca"]) for r in rows} == {reduction.k}


def test_truncated_model_matches_sklearn(reduction, features, matrix: np.ndarray) -> None:
    """The kept model equals the first k components of a full PCA on standardized data."""
    reduced = reduce_features(reduction, features).toPandas().sort_values("path")
    spark_pca = np.stack(reduced["pca"].to_numpy()).astype(np.float64)
    reference = SklearnPCA(n_components=reduction.k, svd_solver="full")
    expected = reference.fit_transform(_standardized(matrix))
    signs = np.sign(np.sum(spark_pca * expected, axis=0))  # components are defined up to sign
    np.testing.assert_allclose(spark_pca * signs, expected, atol=1e-3)


def test_variance_table_marks_chosen_k(reduction) -> None:
    """variance_table lists the chosen k, flagged, and only k that fit the feature width."""
    table = variance_table(reduction)
    assert table["k"].tolist() == [2, 3, 10]
    assert table.loc[table["chosen"], "k"].tolist() == [3]
    assert table["variance_kept"].is_monotonic_increasing
    chosen = table.loc[table["chosen"], "variance_kept"].item()
    assert chosen == pytest.approx(reduction.variance_at(3))


def test_save_reduction_round_trip(spark, reduction, features, tmp_path: Path) -> None:
    """save_reduction writes pca/ and pca_model/, and both load back to the same projection."""
    output_root = str(tmp_path / "out")
    reduced = reduce_features(reduction, features)
    uri = save_reduction(reduction, reduced, output_root)
    version = current_version(output_root, "pca")
    assert uri == spark_uri(join(output_root, "pca", f"v={version}"))
    assert (tmp_path / "out" / "pca_model" / f"v={version}" / "metadata").is_dir()

    saved = spark.read.parquet(uri).toPandas().sort_values("path")
    loaded = PipelineModel.load(published(output_root, "pca_model", via="pca"))
    assert loaded.stages[-1].pc.numCols == reduction.k
    again_pd = reduce_features(replace(reduction, model=loaded), features).toPandas()
    again_pd = again_pd.sort_values("path")
    expected = reduced.toPandas().sort_values("path")
    assert saved["path"].tolist() == expected["path"].tolist()
    np.testing.assert_allclose(np.stack(saved["pca"]), np.stack(expected["pca"]))
    np.testing.assert_allclose(np.stack(again_pd["pca"]), np.stack(expected["pca"]), atol=1e-5)


def test_excluded_counts_rows_with_an_error(spark, features) -> None:
    """Every row with an error, or without features, is left out of the fit and counted."""
    no_features = spark.createDataFrame([("nofeat", "Test", "c1", None, None)], SCHEMA)
    reduction = fit_reduction(features.unionByName(no_features), variance=0.95)
    assert (reduction.rows, reduction.excluded) == (ROWS, FAILED + 1)
    assert reduction.k == 3
    assert reduce_features(reduction, features.unionByName(no_features)).count() == ROWS


def test_all_rows_failed_names_the_count(spark, features) -> None:
    """With fewer than 2 usable rows the error says how many rows were left out."""
    failed = features.where("error IS NOT NULL")
    with pytest.raises(ValueError, match=f"found 0 .*{FAILED} rows with an error"):
        fit_reduction(failed)


def test_reduction_summary_for_the_manifest(reduction) -> None:
    """The manifest gets rows used and left out, k, variance kept, table and spectrum."""
    summary = reduction.to_manifest()
    assert summary["rows"] == ROWS and summary["excluded"] == FAILED
    assert summary["dim"] == WIDTH and summary["k"] == 3
    assert summary["variance_kept"] == pytest.approx(reduction.variance_at(3))
    assert [row["k"] for row in summary["variance_table"]] == [2, 3, 10]
    assert len(summary["explained_variance"]) == WIDTH


def test_constant_column_has_no_variance(spark, matrix: np.ndarray) -> None:
    """A constant column adds a zero to the spectrum and no NaN anywhere, as in scikit-learn."""
    constant = np.column_stack([matrix, np.full(ROWS, 7.0, dtype=np.float32)])
    frame = _frame(spark, constant)
    reduction = fit_reduction(frame, variance=0.95)
    explained = reduction.explained_variance
    assert explained.shape == (WIDTH + 1,) and np.isfinite(explained).all()
    assert explained[-1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(explained[:WIDTH], _sklearn_spectrum(matrix), atol=1e-9)
    pca = np.stack(reduce_features(reduction, frame).toPandas()["pca"])
    assert np.isfinite(pca).all()


def test_all_but_one_column_constant(spark) -> None:
    """With one varying column among constant ones, that column is the whole spectrum."""
    rng = np.random.default_rng(1)
    rows = [
        (f"r{i}", "Training", "c0", [float(x), 3.0, -1.0], None)
        for i, x in enumerate(rng.normal(size=50))
    ]
    reduction = fit_reduction(spark.createDataFrame(rows, SCHEMA), variance=0.95)
    np.testing.assert_allclose(reduction.explained_variance, [1.0, 0.0, 0.0], atol=1e-12)
    assert reduction.k == 1


def test_refits_give_the_same_model(features) -> None:
    """Component signs are fixed, so two fits project every row identically."""
    first, second = (
        np.stack(
            reduce_features(fit_reduction(features, k=3), features)
            .toPandas()
            .sort_values("path")["pca"]
        )
        for _ in range(2)
    )
    np.testing.assert_array_equal(first, second)


def test_same_model_as_spark_ml_fit(reduction, features) -> None:
    """Mean, std and spectrum equal what Spark ML's StandardScaler.fit + PCA.fit compute."""
    vectors = usable_features(features)
    scaler = SparkScaler(withMean=True, withStd=True, inputCol="vector", outputCol="scaled")
    scaler_model = scaler.fit(vectors)
    pca = SparkPCA(k=WIDTH, inputCol="scaled", outputCol="pca")
    spark_ev = pca.fit(scaler_model.transform(vectors)).explainedVariance.toArray()
    ours = reduction.model.stages[0]
    np.testing.assert_allclose(ours.mean.toArray(), scaler_model.mean.toArray(), rtol=1e-9)
    np.testing.assert_allclose(ours.std.toArray(), scaler_model.std.toArray(), rtol=1e-9)
    np.testing.assert_allclose(reduction.explained_variance, spark_ev, atol=1e-12)


def test_partitions_combine_to_the_same_fit(spark, features, reduction) -> None:
    """Rows spread over many partitions, one holding only error rows, give the same fit."""
    good = features.where("error IS NULL").coalesce(1)
    bad = features.where("error IS NOT NULL").coalesce(1)
    for frame in (good.unionByName(bad), features.repartition(7)):
        refit = fit_reduction(frame, variance=0.95)
        assert (refit.rows, refit.excluded) == (ROWS, FAILED)
        np.testing.assert_allclose(
            refit.explained_variance, reduction.explained_variance, atol=1e-12
        )


def test_large_offsets_keep_their_precision(spark) -> None:
    """Columns whose mean dwarfs their spread get the std numpy computes in float64."""
    rng = np.random.default_rng(2)
    matrix = (rng.normal(size=(300, 4)) + [1e4, -3e4, 5e3, 1e2]).astype(np.float32)
    reduction = fit_reduction(_frame(spark, matrix), variance=0.95)
    expected = matrix.astype(np.float64).std(axis=0, ddof=1)
    np.testing.assert_allclose(reduction.model.stages[0].std.toArray(), expected, rtol=1e-9)


@pytest.mark.parametrize("files", [0, 1, 2])
def test_ragged_features_name_the_file(spark, matrix: np.ndarray, files, tmp_path) -> None:
    """A row whose features have another width fails, naming its path: in one partition or
    file, or in another file than the other rows (``files``: 0 for no files)."""
    frame = _frame(spark, matrix[:20]).unionByName(
        spark.createDataFrame([("odd.jpg", "Training", "c0", [1.0, 2.0], None)], SCHEMA)
    )
    frame = _read_back(spark, frame, tmp_path / "f", files) if files else frame.coalesce(1)
    with pytest.raises(Exception, match=r"odd\.jpg have 2 values where other rows have 12"):
        fit_reduction(frame)


@pytest.mark.parametrize("files", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_non_finite_features_name_the_file(spark, matrix: np.ndarray, bad, files, tmp_path):
    """A NaN, infinite or null value in a row's features fails, naming its path."""
    odd = [1.0] * (WIDTH - 1) + [bad]
    frame = _frame(spark, matrix[:20]).unionByName(
        spark.createDataFrame([("odd.jpg", "Training", "c0", odd, None)], SCHEMA)
    )
    if files:
        frame = _read_back(spark, frame, tmp_path / "f", 2)
    with pytest.raises(ValueError, match=r"odd\.jpg contain NaN, infinite or null values"):
        fit_reduction(frame)


def test_feature_files_are_read_in_the_tasks(spark, feature_files, reduction) -> None:
    """A plain scan of local Parquet files, cached or not, is fitted from the files (pyarrow
    in the tasks): the same rows left out, mean, std and spectrum as the Arrow pass."""
    folder = Path(feature_files.inputFiles()[0].removeprefix("file:")).parent
    files = local_parquet_files(feature_files)
    assert sorted(files) == sorted(str(p) for p in folder.glob("*.parquet")) and len(files) == 3
    cached = feature_files.cache()
    cached.count()
    assert local_parquet_files(cached) == files  # DataFrame.inputFiles() is empty once cached
    expected = reduction.model.stages[0]
    for frame in (feature_files, cached):
        refit = fit_reduction(frame, variance=0.95)
        assert (refit.rows, refit.excluded, refit.k) == (ROWS, FAILED, reduction.k)
        scaler = refit.model.stages[0]
        np.testing.assert_allclose(scaler.mean.toArray(), expected.mean.toArray(), rtol=1e-12)
        np.testing.assert_allclose(scaler.std.toArray(), expected.std.toArray(), rtol=1e-12)
        np.testing.assert_allclose(
            refit.explained_variance, reduction.explained_variance, atol=1e-12
        )
    cached.unpersist()


def test_committed_run_is_fitted_from_its_files(spark, features, tmp_path) -> None:
    """Notebook 03's frame, ``read_features`` of one committed run, is a plain scan of that
    run's files; filtered, projected or combined frames go through Spark's Arrow pass."""
    write_features(spark, features, str(tmp_path), SETTINGS)
    committed = read_features(spark, str(tmp_path))
    files = local_parquet_files(committed)
    assert files and all(f"{tmp_path}/features/run=" in path for path in files)
    assert fit_reduction(committed).rows == ROWS
    others = (
        committed.where("error IS NULL"),
        committed.select("path", "features", "error"),
        committed.unionByName(committed),
        features,
    )
    assert [local_parquet_files(frame) for frame in others] == [None] * len(others)
